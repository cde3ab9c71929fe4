//! The staging step (`snapstage::staging`, what deploy-staging-db runs) against a Kubernetes API
//! server double (HTTP-level fixtures): each named
//! scenario drives the step function directly, with a fixed clock, and asserts the exact
//! requests — method, path, query (fieldManager, force=true, selectors) and key parts of the
//! body — answered with the JSON a real API server sends.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apps;
mod deploy;
mod fixtures;
mod interlock;
mod jobs;
mod readiness;
mod rollback;
mod teardown;
mod template;

#[allow(unused_imports)]
use {deploy::*, interlock::*, jobs::*, readiness::*, rollback::*, teardown::*, template::*};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fixtures::objects as o;
use fixtures::{Exchange as X, serve};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use snapstage::interlock::{Deletion, KnownVolumes, Marker, Marks, VolumeMarks};
use snapstage::job::contract::{Deadline, Execution, Outcome, Step};
use snapstage::job::params::{Layer, merge};
use snapstage::kube::names;
use snapstage::staging::{self, Params};
use snapstage::{Error, FailureKind, Result};

const NOW: &str = "2025-06-01T12:00:00Z";
const KEY: &str = "direct/fixture";
const EXPIRES: &str = "2025-06-02T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn ns() -> String {
    names::derived_namespace(KEY)
}

fn label() -> String {
    names::execution_label(KEY)
}

fn minutes_ago(m: i64) -> i64 {
    now().as_second() - m * 60
}

/// A deploy request; the credentials reset (on by default: an init container of the database pod)
/// is off except in the scenarios about it.
fn request(extra: Value) -> Value {
    let mut r = json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a",
                       "resetCredentials": false});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

/// The state a deploy continues with.
fn state(phase: &str, since: i64, created: bool) -> Value {
    let expires: Timestamp = EXPIRES.parse().unwrap();
    json!({"p": phase, "t": since, "x": expires.as_second(), "c": created})
}

fn step(request: Value, state: Option<Value>) -> Step<Params> {
    let Value::Object(values) = request else {
        panic!("not an object")
    };
    Step {
        params: merge(&[Layer {
            source: "request",
            values,
        }])
        .unwrap(),
        execution: Execution {
            key: KEY.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        },
        state,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(300)),
        artifacts: None,
    }
}

/// What EC2 says about the requests' volume: the staging volume restore-to-staging made for
/// this run (tagged `snapstage:execution` = `KEY`, managed-by snapstage, role staging).
fn this_runs_volume() -> KnownVolumes {
    KnownVolumes::staging_ebs("vol-0123456789abcdef0", KEY)
}

/// Runs one step against the scenario; returns what the step answered and the requests seen.
async fn play(
    request: Value,
    state: Option<Value>,
    exchanges: Vec<X>,
) -> (Result<Outcome>, Vec<String>) {
    play_on(&this_runs_volume(), request, state, exchanges).await
}

/// [`play`] with what the volume's backend says about it.
async fn play_on(
    volumes: &dyn VolumeMarks,
    request: Value,
    state: Option<Value>,
    exchanges: Vec<X>,
) -> (Result<Outcome>, Vec<String>) {
    let (client, server) = serve(exchanges);
    let outcome = staging::run(&client, step(request, state), now(), volumes).await;
    drop(client);
    (outcome, server.finish().await)
}

// Paths of the staging objects.
fn p_ns() -> String {
    format!("/api/v1/namespaces/{}", ns())
}
fn p_pv() -> String {
    format!("/api/v1/persistentvolumes/{}-data", ns())
}
fn p_in(resource: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{}/{resource}/{name}", ns())
}
fn p_sts() -> String {
    format!("/apis/apps/v1/namespaces/{}/statefulsets/staging-db", ns())
}
fn p_np(name: &str) -> String {
    format!(
        "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies/{name}",
        ns()
    )
}
fn p_job(name: &str) -> String {
    format!("/apis/batch/v1/namespaces/{}/jobs/{name}", ns())
}

fn continued(o: Outcome) -> (String, u8, Value) {
    match o {
        Outcome::Continue {
            summary,
            percent,
            state,
        } => (summary, percent, state),
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn done(o: Outcome) -> (String, std::collections::BTreeMap<String, String>) {
    match o {
        Outcome::Done { summary, outputs } => (summary, outputs),
        other => panic!("expected Done, got {other:?}"),
    }
}

/// The applies after the namespace and Secret: PV, PVC, Service, StatefulSet.
fn apply_rest() -> Vec<X> {
    let ns = ns();
    let ns2 = ns.clone();
    vec![
        X::apply(&p_pv()).body(move |b| {
            assert_eq!(b["kind"], "PersistentVolume");
            assert_eq!(b["spec"]["csi"]["volumeHandle"], "vol-0123456789abcdef0");
            assert_eq!(b["spec"]["persistentVolumeReclaimPolicy"], "Retain");
            assert_eq!(b["spec"]["claimRef"]["namespace"], ns.as_str());
            assert_eq!(b["metadata"]["labels"]["snapstage.io/execution"], label());
        }),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")).body(move |b| {
            assert_eq!(b["spec"]["volumeName"], format!("{ns2}-data"));
        }),
        X::apply(&p_in("services", "staging-db")).body(|b| {
            assert_eq!(b["spec"]["ports"][0]["port"], 5432);
        }),
        X::apply(&p_sts()).body(|b| {
            assert_eq!(b["kind"], "StatefulSet");
            let c = &b["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["image"], "postgres:17");
            assert_eq!(
                c["env"][1]["valueFrom"]["secretKeyRef"]["name"],
                "staging-db-credentials"
            );
        }),
    ]
}

/// What `onFailure: teardown` sends for the run's namespace: read it, find its PVs, delete both.
fn teardown_exchanges() -> Vec<X> {
    let selector = format!(
        "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution={}",
        label()
    );
    let ns = ns();
    vec![
        X::get(&p_ns()).ok(o::staging_namespace(&ns, &label(), EXPIRES)),
        X::list(
            "/api/v1/persistentvolumes",
            &[("labelSelector", selector.as_str())],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(&format!("{ns}-data"), &ns, &label())],
        )),
        X::delete(&p_ns()).body(move |b| {
            assert_eq!(b["propagationPolicy"], "Background");
            assert_eq!(
                b["preconditions"]["uid"],
                format!("uid-{}", ns),
                "deletes exactly the namespace it checked"
            );
        }),
        X::delete(&p_pv()).body(|b| {
            assert_eq!(
                b["preconditions"]["uid"],
                format!("uid-{}-data", self::ns())
            );
        }),
    ]
}

fn failure(r: Result<Outcome>) -> (FailureKind, String) {
    match r {
        Err(e) => (e.failure_kind(), e.to_string()),
        Ok(o) => panic!("expected a failure, got {o:?}"),
    }
}

fn then(mut a: Vec<X>, b: Vec<X>) -> Vec<X> {
    a.extend(b);
    a
}
