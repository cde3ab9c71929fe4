//! Hostile inputs: a corpus of several hundred malformed events, derived deterministically from
//! every sample in events/, run through the job contract with each function's real parameter
//! parsing and validation. Each payload with a job id yields exactly one typed result; none
//! panics or hangs; no credential from the event shows up in a result or in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use snapstage::codepipeline::{JobReporter, JobResult, PipelineContext};
use snapstage::contract::{Contract, Handled, InvocationMeta, Settings};
use snapstage::invocation::job_id;
use snapstage::storage::steps::{RestoreParams, SnapshotParams};
use snapstage::{Function, Outcome, Result, Step};

const SECRET_KEY: &str = "HOSTILEsecretKEYwJalrXUtnFEMI0123456789";
const SESSION_TOKEN: &str = "HOSTILEsessionTOKENFwoGZXIvYXdzEXAMPLE";

#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<(String, JobResult)>>>,
}

impl JobReporter for Recorder {
    async fn report(&self, job_id: &str, result: &JobResult) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push((job_id.to_string(), result.clone()));
        Ok(())
    }
    async fn pipeline_context(&self, _job_id: &str) -> Result<PipelineContext> {
        Ok(PipelineContext::default())
    }
}

/// A function that does everything the real one does before touching a backend.
trait Check: DeserializeOwned + Send + 'static {
    fn check(self, step_key: &str) -> Result<()>;
}
impl Check for SnapshotParams {
    fn check(self, _: &str) -> Result<()> {
        self.validate()
    }
}
impl Check for RestoreParams {
    fn check(self, _: &str) -> Result<()> {
        self.validate()
    }
}
impl Check for snapstage::staging::Params {
    fn check(self, key: &str) -> Result<()> {
        let ex = snapstage::Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        };
        snapstage::staging::check_request(self, &ex, k8s_openapi::jiff::Timestamp::now())
    }
}
impl Check for snapstage::replicate::Params {
    fn check(self, _: &str) -> Result<()> {
        self.validate().map(|_| ())
    }
}

struct Validating<P>(&'static str, std::marker::PhantomData<fn() -> P>);

impl<P: Check> Function for Validating<P> {
    const NAME: &'static str = "validating";
    type Params = P;
    async fn step(&self, step: Step<P>) -> Result<Outcome> {
        step.params.check(&step.execution.key)?;
        Ok(Outcome::Done {
            summary: format!("{} ok", self.0),
            outputs: Default::default(),
        })
    }
}

/// Logs go here so the test can scan them.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);
impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn samples() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut out = vec![];
    for sub in ["codepipeline", "codecommit", "direct"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            if let Some(creds) = v.pointer_mut("/CodePipeline.job/data/artifactCredentials") {
                creds["secretAccessKey"] = json!(SECRET_KEY);
                creds["sessionToken"] = json!(SESSION_TOKEN);
            }
            out.push(v);
        }
    }
    out
}

fn hostile_values() -> Vec<Value> {
    let mut deep = json!(0);
    for _ in 0..64 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(42),
        json!(-1),
        json!(1e308),
        json!(true),
        json!(""),
        json!("x".repeat(5000)),
        json!("\u{0000}\u{202e}🎉"),
        json!([]),
        json!({}),
        deep,
    ]
}

/// Every path to a leaf or object member, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn corpus() -> Vec<Value> {
    let mut out = vec![];
    let values = hostile_values();
    for sample in samples() {
        let mut ptrs = vec![];
        pointers(&sample, String::new(), &mut ptrs);
        for (i, p) in ptrs.iter().enumerate() {
            // Replace the member with one hostile value (rotating through them) ...
            let mut m = sample.clone();
            *m.pointer_mut(p).unwrap() = values[i % values.len()].clone();
            out.push(m);
            // ... and remove it.
            let (parent, key) = p.rsplit_once('/').unwrap();
            let mut m = sample.clone();
            let target = if parent.is_empty() {
                Some(&mut m)
            } else {
                m.pointer_mut(parent)
            };
            match target {
                Some(Value::Object(o)) => {
                    o.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    a.remove(key.parse::<usize>().unwrap());
                }
                _ => {}
            }
            out.push(m);
        }
        // Hostile UserParameters and continuation tokens on job events.
        if sample.get("CodePipeline.job").is_some() {
            let ups = [
                "",
                "{",
                "[]",
                "null",
                "\"text\"",
                "{\"volumeIds\": \"vol-1\"}",
                "{\"dryRun\": \"yes\"}",
                "{\"__proto__\": {}}",
                &format!("{{\"k\": \"{}\"}}", "a".repeat(990)),
                &format!("{{\"k\": \"{}\"}}", "a".repeat(2000)),
            ];
            for up in ups {
                let mut m = sample.clone();
                m["CodePipeline.job"]["data"]["actionConfiguration"]["configuration"]["UserParameters"] =
                    json!(up);
                out.push(m);
            }
            for token in [
                "",
                "ss1.",
                "ss1.!!!!",
                "ss1.e30",
                "token_ID",
                &"ss1.A".repeat(700),
            ] {
                let mut m = sample.clone();
                m["CodePipeline.job"]["data"]["continuationToken"] = json!(token);
                out.push(m);
            }
        }
    }
    // Whole-payload shapes.
    out.extend(hostile_values());
    out.push(json!({"CodePipeline.job": null}));
    out.push(json!({"CodePipeline.job": {"id": 7}}));
    out.push(json!({"CodePipeline.job": {"id": "only-an-id"}}));
    out.push(json!({"detail-type": "CodeCommit Repository State Change", "source": "aws.codecommit", "detail": null}));
    out.push(json!({"Records": [{"s3": {}}]}));
    out
}

async fn run_all<P: Check>(name: &'static str, corpus: &[Value]) -> usize {
    let recorder = Recorder::default();
    let contract = Contract::new(
        Validating::<P>(name, std::marker::PhantomData),
        recorder.clone(),
        Settings::from_env(|_| None),
    );
    let mut jobs = 0;
    for (i, raw) in corpus.iter().enumerate() {
        let before = recorder.calls.lock().unwrap().len();
        let meta = InvocationMeta {
            request_id: format!("req-{i}"),
            deadline: SystemTime::now() + Duration::from_secs(30),
        };
        let handled =
            tokio::time::timeout(Duration::from_secs(20), contract.handle(raw.clone(), meta))
                .await
                .unwrap_or_else(|_| panic!("{name}: payload {i} hung"));
        let after = recorder.calls.lock().unwrap().len();
        let out = handled.to_json(name).to_string();
        assert!(
            !out.contains(SECRET_KEY) && !out.contains(SESSION_TOKEN),
            "{name}: payload {i} echoed a credential: {out}"
        );
        match job_id(raw) {
            Some(id) => {
                jobs += 1;
                assert_eq!(
                    after - before,
                    1,
                    "{name}: payload {i} must get exactly one result"
                );
                assert_eq!(recorder.calls.lock().unwrap()[before].0, id);
                assert!(
                    matches!(handled, Handled::Job { .. }),
                    "{name}: payload {i}"
                );
            }
            None => {
                assert_eq!(
                    after, before,
                    "{name}: payload {i} has no job id but called CodePipeline"
                );
                if let Handled::Rejected(e) = &handled {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    jobs
}

#[tokio::test]
async fn every_hostile_payload_gets_one_typed_answer_and_leaks_nothing() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .try_init();

    let corpus = corpus();
    assert!(corpus.len() >= 200, "corpus has {} payloads", corpus.len());
    let mut jobs = 0;
    jobs += run_all::<SnapshotParams>("snapshot-production", &corpus).await;
    jobs += run_all::<RestoreParams>("restore-to-staging", &corpus).await;
    jobs += run_all::<snapstage::staging::Params>("deploy-staging-db", &corpus).await;
    jobs += run_all::<snapstage::replicate::Params>("replicate-artifacts-back", &corpus).await;
    assert!(jobs > 100, "the corpus exercises job events ({jobs})");

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(!text.is_empty(), "logs were captured");
    assert!(
        !text.contains(SECRET_KEY) && !text.contains(SESSION_TOKEN),
        "a credential reached the logs"
    );
    eprintln!(
        "hostile corpus: {} payloads × 4 functions, {jobs} job invocations",
        corpus.len()
    );
}
