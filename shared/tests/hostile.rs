//! Hostile inputs: a corpus of several hundred malformed events, derived deterministically from
//! every sample in events/, run through the job contract with each function's real parameter
//! parsing and validation. Each payload with a job id yields exactly one typed result; none
//! panics or hangs; no credential from the event shows up in a result or in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;
use snapstage::job::codepipeline::{JobReporter, JobResult, PipelineContext};
use snapstage::job::contract::{Contract, Handled, InvocationMeta, Settings};
use snapstage::job::invocation::job_id;
use snapstage::storage::steps::{RestoreParams, SnapshotParams};
use snapstage::{Function, Outcome, Result, Step};

mod corpus;

use corpus::{SECRET_KEY, SESSION_TOKEN, corpus};

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
