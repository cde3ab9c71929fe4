//! deploy-staging-db's Kubernetes calls against the Kubernetes API server double (its simulated
//! StatefulSet rollout and PV/PVC binding), through the fault-injecting proxy: transient
//! answers are retried, and a deploy cut short after any call converges when re-run with the
//! same execution on exactly one namespace, Secret, PV, PVC and StatefulSet — with the
//! credentials of the first run, never regenerated — counted in the double's state.
//!
//! Needs `.venv/bin/python`; prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use snapstage::Result;
use snapstage::interlock::KnownVolumes;
use snapstage::job::contract::{Deadline, Execution, Outcome, Step};
use snapstage::job::params::{Layer, merge};
use snapstage::kube::names;
use snapstage::staging;
use snapstage_localenv::faults::{Crash, Fault, FaultProxy, Rule};
use snapstage_localenv::kube_double::KubeDouble;
use snapstage_localenv::testkit::unique;

struct Env {
    double: KubeDouble,
    proxy: FaultProxy,
    client: kube::Client,
}

async fn env() -> Option<Env> {
    let double = KubeDouble::start()?;
    // The StatefulSet's pod is up on the second look: the step waits through a continuation.
    double.configure(json!({"ready_after_reads": 2})).await;
    let proxy = FaultProxy::start(&double.url()).unwrap();
    let client = KubeDouble::client_for(&proxy.url);
    Some(Env {
        double,
        proxy,
        client,
    })
}

fn step(key: &str, state: Option<Value>) -> Step<staging::Params> {
    let Value::Object(values) = json!({"volumeId": "vol-0123456789abcdef0",
        "availabilityZone": "us-east-1a", "resetCredentials": false})
    else {
        unreachable!()
    };
    Step {
        params: merge(&[Layer {
            source: "request",
            values,
        }])
        .unwrap(),
        execution: Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        },
        state,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(300)),
        artifacts: None,
    }
}

/// What EC2 says about the step's volume: the staging volume restore-to-staging made for the
/// run `key` (a direct request with the same executionId).
fn this_runs_volume(key: &str) -> KnownVolumes {
    KnownVolumes::staging_ebs("vol-0123456789abcdef0", key)
}

impl Env {
    /// Runs the deploy to completion as the job contract does (continuations fed back).
    async fn deploy(&self, key: &str) -> Result<BTreeMap<String, String>> {
        let mut state = None;
        let mut last = String::new();
        for _ in 0..20 {
            match staging::run(
                &self.client,
                step(key, state.take()),
                Timestamp::now(),
                &this_runs_volume(key),
            )
            .await?
            {
                Outcome::Done { outputs, .. } => return Ok(outputs),
                Outcome::Continue {
                    state: s, summary, ..
                } => {
                    last = summary;
                    state = Some(s)
                }
            }
        }
        panic!("{key}: not done after 20 invocations; last: {last}")
    }

    /// The run of a process that dies: at most `invocations` invocations, stopping at the
    /// first error. (While waiting, the deploy step rides out an API server it cannot reach,
    /// "checking again" until its timeout; the process dying ends that.)
    async fn cut_short(&self, key: &str, invocations: usize) {
        let mut state = None;
        for _ in 0..invocations {
            match staging::run(
                &self.client,
                step(key, state.take()),
                Timestamp::now(),
                &this_runs_volume(key),
            )
            .await
            {
                Ok(Outcome::Continue { state: s, .. }) => state = Some(s),
                Ok(Outcome::Done { .. }) | Err(_) => return,
            }
        }
    }

    /// (namespaces, secrets, PVs, PVCs, StatefulSets) of the run, by the double's state.
    async fn counts(&self, key: &str) -> [usize; 5] {
        let ns = names::derived_namespace(key);
        let pv = format!("{ns}-data");
        [
            self.double
                .names("namespaces", None)
                .await
                .iter()
                .filter(|n| **n == ns)
                .count(),
            self.double.names("secrets", Some(&ns)).await.len(),
            self.double
                .names("persistentvolumes", None)
                .await
                .iter()
                .filter(|n| **n == pv)
                .count(),
            self.double
                .names("persistentvolumeclaims", Some(&ns))
                .await
                .len(),
            self.double.names("statefulsets", Some(&ns)).await.len(),
        ]
    }

    async fn password(&self, key: &str) -> Option<String> {
        let ns = names::derived_namespace(key);
        self.double
            .objects("secrets", Some(&ns))
            .await
            .first()
            .and_then(|s| s["data"]["password"].as_str().map(String::from))
    }
}

#[tokio::test]
async fn a_deploy_on_the_double_waits_for_the_rollout_then_publishes() {
    let Some(env) = env().await else {
        return;
    };
    let key = unique("deploy-clean");
    let out = env.deploy(&key).await.unwrap();
    let ns = names::derived_namespace(&key);
    assert_eq!(out["Namespace"], ns, "{out:?}");
    assert_eq!(env.counts(&key).await, [1, 1, 1, 1, 1]);
    let pvc = &env
        .double
        .objects("persistentvolumeclaims", Some(&ns))
        .await[0];
    assert_eq!(pvc["status"]["phase"], "Bound", "the static PV bound it");
    let pods = env.double.names("pods", Some(&ns)).await;
    assert_eq!(pods, ["staging-db-0"]);
}

#[tokio::test]
async fn transient_faults_at_deploy_calls_are_retried() {
    let Some(env) = env().await else {
        return;
    };
    for fault in [
        Fault::kubernetes_too_many_requests(1),
        Fault::kubernetes(503, "ServiceUnavailable", "unavailable"),
        Fault::kubernetes(500, "InternalError", "etcdserver: request timed out"),
        Fault::Reset,
        Fault::LoseAnswer,
    ] {
        for op in [
            "PATCH /api/v1/namespaces/",
            "PATCH /apis/apps/v1/",
            "GET /apis/apps/v1/",
            "GET /api/v1/namespaces/",
        ] {
            let key = unique("deploy-transient");
            env.proxy.heal();
            env.proxy.add(Rule::new(op, fault.clone(), 2));
            env.deploy(&key)
                .await
                .unwrap_or_else(|e| panic!("{fault:?} at {op}: {e}"));
            assert_eq!(env.counts(&key).await, [1, 1, 1, 1, 1], "{fault:?} at {op}");
        }
    }
}

#[tokio::test]
async fn a_deploy_cut_short_after_any_call_converges_with_its_first_credentials() {
    let Some(env) = env().await else {
        return;
    };
    env.proxy.heal();
    let before = env.proxy.seen().len();
    env.deploy(&unique("deploy-count")).await.unwrap();
    let n_calls = env.proxy.seen().len() - before;
    assert!(n_calls >= 8, "a deploy makes several calls ({n_calls})");
    for n in 1..=n_calls {
        let key = unique("deploy-crash");
        env.proxy.heal();
        env.proxy.crash_after(n, Crash::LoseAnswer);
        env.cut_short(&key, 3).await;
        env.proxy.heal();
        let first = env.password(&key).await;
        env.deploy(&key)
            .await
            .unwrap_or_else(|e| panic!("re-run after a crash at call {n}: {e}"));
        assert_eq!(
            env.counts(&key).await,
            [1, 1, 1, 1, 1],
            "crash after call {n}: one of each"
        );
        if let Some(first) = first {
            assert_eq!(
                env.password(&key).await.unwrap(),
                first,
                "crash after call {n}: the credentials were kept"
            );
        }
    }
}
