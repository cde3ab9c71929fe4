//! Raw event bytes through the whole job contract (`Contract::handle`) with the real parameter
//! parsing and validation of snapshot-production and restore-to-staging, and a reporter that
//! counts. Invariant: a payload with a job id gets exactly one result for that id; one without
//! gets none; nothing panics.
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use snapstage::job::codepipeline::{JobReporter, JobResult, PipelineContext};
use snapstage::job::contract::{Contract, Handled, InvocationMeta, Settings};
use snapstage::storage::steps::{RestoreParams, SnapshotParams};
use snapstage::{Function, Outcome, Result, Step};

#[derive(Clone, Default)]
struct Counter {
    calls: Arc<Mutex<Vec<String>>>,
}

impl JobReporter for Counter {
    async fn report(&self, job_id: &str, _result: &JobResult) -> Result<()> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(job_id.to_string());
        }
        Ok(())
    }
    async fn pipeline_context(&self, _job_id: &str) -> Result<PipelineContext> {
        Ok(PipelineContext::default())
    }
}

struct Snap;
impl Function for Snap {
    const NAME: &'static str = "snapshot-production";
    type Params = SnapshotParams;
    async fn step(&self, step: Step<SnapshotParams>) -> Result<Outcome> {
        step.params.validate()?;
        Ok(Outcome::Done {
            summary: "ok".into(),
            outputs: Default::default(),
        })
    }
}

struct Restore;
impl Function for Restore {
    const NAME: &'static str = "restore-to-staging";
    type Params = RestoreParams;
    async fn step(&self, step: Step<RestoreParams>) -> Result<Outcome> {
        step.params.validate()?;
        Ok(Outcome::Continue {
            summary: "waiting".into(),
            percent: 50,
            state: serde_json::json!({"snapshot": "snap-0123456789abcdef0"}),
        })
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    snap: Contract<Snap, Counter>,
    restore: Contract<Restore, Counter>,
    counter: Counter,
}

fn world() -> Option<&'static World> {
    static W: OnceLock<Option<World>> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok()?;
        let counter = Counter::default();
        let settings = || Settings::from_env(|_| None);
        Some(World {
            snap: Contract::new(Snap, counter.clone(), settings()),
            restore: Contract::new(Restore, counter.clone(), settings()),
            rt,
            counter,
        })
    })
    .as_ref()
}

static N: AtomicUsize = AtomicUsize::new(0);

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Some(w) = world() else { return };
    let id = snapstage::job::invocation::job_id(&raw).map(str::to_string);
    let meta = || InvocationMeta {
        request_id: format!("fuzz-{}", N.fetch_add(1, Ordering::Relaxed)),
        deadline: SystemTime::now() + Duration::from_secs(60),
    };
    for which in 0..2 {
        let before = w.counter.calls.lock().map(|c| c.len()).unwrap_or(0);
        let handled = w.rt.block_on(async {
            if which == 0 {
                w.snap.handle(raw.clone(), meta()).await
            } else {
                w.restore.handle(raw.clone(), meta()).await
            }
        });
        let calls = w.counter.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let new = &calls[before..];
        match &id {
            Some(id) => {
                assert_eq!(new, [id.clone()], "exactly one result for the job");
                assert!(matches!(handled, Handled::Job { .. }));
            }
            None => assert!(new.is_empty(), "no job id, yet a result was reported"),
        }
        let _ = handled.to_json("fuzz").to_string();
    }
});
