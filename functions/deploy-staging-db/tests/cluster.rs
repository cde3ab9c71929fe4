//! deploy-staging-db against a Kubernetes API server double (HTTP-level fixtures): each named
//! scenario drives the step function directly, with a fixed clock, and asserts the exact
//! requests — method, path, query (fieldManager, force=true, selectors) and key parts of the
//! body — answered with the JSON a real API server sends.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;

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

#[tokio::test]
async fn apply_fresh_creates_everything_with_new_credentials_and_waits() {
    let password = Arc::new(Mutex::new(String::new()));
    let seen_password = Arc::clone(&password);
    let ns = ns();
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()).body(|b| {
            assert_eq!(b["kind"], "Namespace");
            let labels = &b["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/managed-by"], "snapstage");
            assert_eq!(labels["snapstage.io/execution"], label());
            assert_eq!(
                b["metadata"]["annotations"]["snapstage.io/expires-at"],
                EXPIRES
            );
        }),
        // Closed before anything runs in it: only snapstage's Jobs may connect.
        X::apply(&p_np("staging-db-isolation")).body(|b| {
            assert_eq!(b["spec"]["podSelector"], json!({}));
            assert_eq!(b["spec"]["policyTypes"], json!(["Ingress"]));
            let from = &b["spec"]["ingress"][0]["from"][0]["podSelector"];
            assert_eq!(
                from["matchExpressions"][0]["values"],
                json!(["masking", "migration"])
            );
        }),
        X::apply(&p_np("staging-db-egress")).body(|b| {
            assert_eq!(b["spec"]["policyTypes"], json!(["Egress"]));
            assert_eq!(b["spec"]["egress"][0]["ports"][0]["port"], 53);
        }),
        // The namespace is new: no Secret can exist, credentials are generated.
        X::apply(&p_in("secrets", "staging-db-credentials")).body(move |b| {
            assert_eq!(b["data"]["username"], "cG9zdGdyZXM=", "base64 of postgres");
            let pw = b["data"]["password"].as_str().unwrap();
            assert_eq!(pw.len(), 44, "32 random bytes of password, base64: {pw}");
            *seen_password.lock().unwrap() = pw.to_string();
        }),
    ];
    exchanges.extend(apply_rest());
    let (r, seen) = play(request(json!({})), None, exchanges).await;
    let (summary, percent, state) = continued(r.unwrap());
    assert_eq!(seen.len(), 10, "{seen:#?}");
    assert!(
        seen[2].ends_with("?&force=true&fieldManager=snapstage-deploy-staging-db"),
        "{seen:#?}"
    );
    assert!(
        summary.contains(&format!("in namespace {ns}"))
            && summary.contains("new credentials")
            && summary.contains("waiting up to 15 minutes"),
        "{summary}"
    );
    assert_eq!(percent, 10);
    assert_eq!(state, self::state("ready", now().as_second(), true));
    let pw = password.lock().unwrap().clone();
    assert!(!summary.contains(&pw) && !state.to_string().contains(&pw));
}

#[tokio::test]
async fn existing_secret_is_never_regenerated() {
    let ns = ns();
    let mut exchanges = vec![
        X::get(&p_ns()).ok(o::staging_namespace(&ns, &label(), EXPIRES)),
        X::get(&p_pv()).ok(o::persistent_volume(&format!("{ns}-data"), &ns, &label())),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        // A retry: the Secret is read and kept; no apply of it follows.
        X::get(&p_in("secrets", "staging-db-credentials")).ok(o::secret(&ns)),
    ];
    exchanges.extend(apply_rest());
    let (r, seen) = play(request(json!({})), None, exchanges).await;
    let (summary, _, state) = continued(r.unwrap());
    assert!(
        !seen
            .iter()
            .any(|s| s.starts_with("PATCH") && s.contains("/secrets/")),
        "{seen:#?}"
    );
    assert!(
        summary.contains("the existing Secret kept as it is"),
        "{summary}"
    );
    assert_eq!(
        state["c"], true,
        "the namespace carries this run's execution: it is ours to tear down"
    );
}

/// The namespace, Secret read and the other applies of a deploy into an existing namespace
/// whose `snapstage.io/execution` is `execution` and whose expiry is `expires`; the namespace's
/// apply must carry `want_expiry`.
fn redeploy_exchanges(execution: &str, expires: &str, want_expiry: &'static str) -> Vec<X> {
    let ns = ns();
    let mut exchanges = vec![
        X::get(&p_ns()).ok(o::staging_namespace(&ns, execution, expires)),
        X::get(&p_pv()).ok(o::persistent_volume(&format!("{ns}-data"), &ns, execution)),
        X::apply(&p_ns()).body(move |b| {
            assert_eq!(
                b["metadata"]["annotations"]["snapstage.io/expires-at"],
                want_expiry
            );
            assert_eq!(b["metadata"]["labels"]["snapstage.io/execution"], label());
        }),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::get(&p_in("secrets", "staging-db-credentials")).ok(o::secret(&ns)),
    ];
    exchanges.extend(apply_rest());
    exchanges
}

#[tokio::test]
async fn a_retry_of_the_same_run_keeps_the_namespace_expiry() {
    // The first invocation applied at 10:00 and expires at 10:00 tomorrow; Lambda retries at 12:00.
    let first = "2025-06-02T10:00:00Z";
    let (r, _) = play(
        request(json!({})),
        None,
        redeploy_exchanges(&label(), first, "2025-06-02T10:00:00Z"),
    )
    .await;
    let (_, _, state) = continued(r.unwrap());
    let first_ts: Timestamp = first.parse().unwrap();
    assert_eq!(state["x"], first_ts.as_second(), "ExpiresAt stays {first}");
}

#[tokio::test]
async fn a_new_run_into_a_reused_namespace_gets_a_new_expiry() {
    let (r, _) = play(
        request(json!({})),
        None,
        redeploy_exchanges("0ldexecution0", "2025-06-01T13:00:00Z", EXPIRES),
    )
    .await;
    let (_, _, state) = continued(r.unwrap());
    assert_eq!(
        state["x"],
        EXPIRES.parse::<Timestamp>().unwrap().as_second()
    );
    assert_eq!(state["c"], false, "an earlier run made the namespace");
}

fn existing_pvc_request() -> Value {
    json!({"backend": "csi", "pvcName": "restored-db", "namespace": "team-a-staging",
           "resetCredentials": false})
}

/// The PVC restore-to-staging made for this run (a direct request with the same executionId):
/// managed-by snapstage, role staging, the run in `snapstage.io/execution-key`.
fn restored_claim(ns: &str, execution_key: &str) -> Value {
    let mut c = o::labelled_claim(
        ns,
        "restored-db",
        json!({"app.kubernetes.io/managed-by": "snapstage",
               "snapstage.io/execution": names::execution_label(execution_key),
               "snapstage.io/role": "staging"}),
    );
    c["metadata"]["annotations"] = json!({"snapstage.io/execution-key": execution_key});
    c
}

#[tokio::test]
async fn an_existing_pvc_from_restore_is_mounted_not_created() {
    let ns = "team-a-staging";
    let earlier = "4e570e0000000000000a";
    let exchanges = vec![
        // The interlock reads the PVC first: this run's staging PVC.
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(restored_claim(ns, KEY)),
        // The namespace was made by an earlier run (its own execution label).
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(o::staging_namespace(ns, earlier, EXPIRES)),
        X::apply(&format!("/api/v1/namespaces/{ns}")).body(|b| {
            let ann = &b["metadata"]["annotations"];
            assert_eq!(ann["snapstage.io/existing-claim"], "restored-db");
            assert_eq!(ann["snapstage.io/source"], "csi-pvc:restored-db");
        }),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-isolation"
        )),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-egress"
        )),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        ))
        .not_found(),
        X::apply(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        )),
        // No PersistentVolume, no PersistentVolumeClaim: straight to the Service.
        X::apply(&format!("/api/v1/namespaces/{ns}/services/staging-db")),
        X::apply(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/staging-db"
        ))
        .body(|b| {
            let vol = &b["spec"]["template"]["spec"]["volumes"][0];
            assert_eq!(vol["persistentVolumeClaim"]["claimName"], "restored-db");
        }),
    ];
    let (r, seen) = play(existing_pvc_request(), None, exchanges).await;
    let (summary, _, state) = continued(r.unwrap());
    assert!(
        !seen
            .iter()
            .any(|s| s.starts_with("PATCH") && s.contains("persistentvolume")),
        "{seen:#?}"
    );
    assert!(
        summary.contains("mounting the existing PVC restored-db (snapstage's)")
            && summary
                .contains("interlock: PVC team-a-staging/restored-db is this run's staging volume"),
        "{summary}"
    );
    assert_eq!(state["c"], false, "an earlier run made the namespace");

    // Readiness reads that PVC.
    let exchanges = vec![
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(o::labelled_claim(
            ns,
            "restored-db",
            json!({"app.kubernetes.io/managed-by": "snapstage"}),
        )),
        X::get(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/staging-db"
        ))
        .ok(o::stateful_set(ns, 1, 1, 1)),
        X::get(&format!("/api/v1/namespaces/{ns}/pods/staging-db-0"))
            .ok(o::pod(ns, o::running_pod_status(true))),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-access"
        )),
    ];
    let (r, _) = play(existing_pvc_request(), Some(state), exchanges).await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Namespace"], ns);
    assert!(summary.contains("from csi restored-db"), "{summary}");
}

#[tokio::test]
async fn a_missing_existing_pvc_fails_before_anything_is_applied() {
    let ns = "team-a-staging";
    let exchanges = vec![
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .not_found(),
    ];
    let (r, seen) = play(existing_pvc_request(), None, exchanges).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("PVC team-a-staging/restored-db (pvcName) does not exist"),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[tokio::test]
async fn an_existing_pvc_without_this_runs_staging_mark_is_refused_unless_named() {
    let ns = "team-a-staging";
    let pvc_path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db");
    let another_runs = restored_claim(ns, "direct/another-run");
    let velero = o::labelled_claim(
        ns,
        "restored-db",
        json!({"app.kubernetes.io/managed-by": "velero"}),
    );
    for (claim, why) in [
        (
            another_runs.clone(),
            "is a snapstage staging volume of another run (direct/another-run)",
        ),
        (
            velero.clone(),
            "does not carry snapstage's staging mark of this run",
        ),
    ] {
        let (r, seen) = play(
            existing_pvc_request(),
            None,
            vec![X::get(&pvc_path).ok(claim)],
        )
        .await;
        let (kind, msg) = failure(r);
        assert_eq!(kind, FailureKind::ConfigurationError);
        assert!(
            msg.starts_with("refused: PVC team-a-staging/restored-db (pvcName)")
                && msg.contains(why)
                && msg.contains("allowUnmanagedVolume: \"restored-db\""),
            "{msg}"
        );
        assert_eq!(seen.len(), 1, "nothing but the PVC is read: {seen:#?}");
    }

    // Labelled production: refused even when the override names it.
    let prod = o::labelled_claim(
        ns,
        "restored-db",
        json!({"app.kubernetes.io/managed-by": "snapstage", "snapstage.io/role": "staging",
               "app.kubernetes.io/environment": "production"}),
    );
    let mut named = existing_pvc_request();
    named["allowUnmanagedVolume"] = json!("restored-db");
    let (r, seen) = play(named.clone(), None, vec![X::get(&pvc_path).ok(prod)]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is marked production (label app.kubernetes.io/environment=production)"),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");

    // Named by the override, velero's PVC is mounted (and teardown will leave its namespace).
    let exchanges = vec![
        X::get(&pvc_path).ok(velero),
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(o::staging_namespace(ns, "4e570e", EXPIRES)),
        X::apply(&format!("/api/v1/namespaces/{ns}")),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-isolation"
        )),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-egress"
        )),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        ))
        .not_found(),
        X::apply(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        )),
        X::apply(&format!("/api/v1/namespaces/{ns}/services/staging-db")),
        X::apply(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/staging-db"
        )),
    ];
    let (r, _) = play(named, None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("not labelled app.kubernetes.io/managed-by=snapstage: teardown will not delete this namespace")
            && summary.contains("imported because allowUnmanagedVolume names it"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_production_ebs_volume_is_refused_before_any_kubernetes_request() {
    let mut prod = this_runs_volume();
    prod.0[0].1.markers.push(Marker::new("tag", "env", "prod"));
    for extra in [
        json!({}),
        json!({"allowUnmanagedVolume": "vol-0123456789abcdef0"}),
        json!({"dryRun": true}),
    ] {
        let (r, seen) = play_on(&prod, request(extra.clone()), None, vec![]).await;
        let (kind, msg) = failure(r);
        assert_eq!(kind, FailureKind::ConfigurationError, "{extra}");
        assert!(
            msg.starts_with(
                "refused: EBS volume vol-0123456789abcdef0 (volumeId) is marked production (tag env=prod)"
            ),
            "{extra}: {msg}"
        );
        assert!(seen.is_empty(), "{extra}: {seen:#?}");
    }
}

#[tokio::test]
async fn another_runs_ebs_volume_is_refused_and_imported_only_when_named() {
    let theirs = KnownVolumes::staging_ebs("vol-0123456789abcdef0", "direct/another-run");
    let (r, seen) = play_on(&theirs, request(json!({})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is a snapstage staging volume of another run (direct/another-run), not of this one (direct/fixture)"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");
    // A volume EC2 does not know.
    let (r, seen) = play_on(&KnownVolumes::default(), request(json!({})), None, vec![]).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("volumeId \"vol-0123456789abcdef0\" does not exist"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");

    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
    ];
    exchanges.extend(apply_rest());
    let (r, _) = play_on(
        &theirs,
        request(json!({"allowUnmanagedVolume": "vol-0123456789abcdef0"})),
        None,
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("interlock: EBS volume vol-0123456789abcdef0 has no staging mark of this run; imported because allowUnmanagedVolume names it"),
        "{summary}"
    );
}

/// A VolumeSnapshot restore-to-staging made in the staging namespace for run `execution_key`.
fn staging_snapshot(name: &str, execution_key: &str) -> Value {
    json!({
        "kind": "VolumeSnapshot", "apiVersion": "snapshot.storage.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns(), "uid": "uid-vs", "resourceVersion": "77",
                     "labels": {"app.kubernetes.io/managed-by": "snapstage",
                                "snapstage.io/execution": names::execution_label(execution_key),
                                "snapstage.io/role": "staging"},
                     "annotations": {"snapstage.io/execution-key": execution_key}},
        "spec": {"source": {"volumeSnapshotContentName": "snapcontent-staging"}},
        "status": {"readyToUse": true, "restoreSize": "20Gi"}
    })
}

#[tokio::test]
async fn a_volume_snapshot_must_be_this_runs_staging_snapshot() {
    let snap_path = format!(
        "/apis/snapshot.storage.k8s.io/v1/namespaces/{}/volumesnapshots/orders-staging",
        ns()
    );
    let req =
        || json!({"backend": "csi", "snapshotName": "orders-staging", "resetCredentials": false});
    let (r, seen) = play(
        req(),
        None,
        vec![X::get(&snap_path).ok(staging_snapshot("orders-staging", "direct/earlier"))],
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.starts_with(&format!(
            "refused: VolumeSnapshot {}/orders-staging (snapshotName) is a snapstage staging volume of another run (direct/earlier)",
            ns()
        )),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");

    // This run's: the deploy goes on to its applies (a PVC restoring it; no PV).
    let exchanges = vec![
        X::get(&snap_path).ok(staging_snapshot("orders-staging", KEY)),
        X::get(&p_ns()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")).body(|b| {
            assert_eq!(b["spec"]["dataSource"]["name"], "orders-staging");
        }),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()),
    ];
    let (r, _) = play(req(), None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains(&format!(
            "interlock: VolumeSnapshot {}/orders-staging is this run's staging volume",
            ns()
        )),
        "{summary}"
    );
}

/// A PersistentVolume of pure-csi that mounts array volume `handle`, with `labels`.
fn pure_pv(name: &str, handle: &str, labels: Value) -> Value {
    json!({
        "kind": "PersistentVolume", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1",
                     "labels": labels},
        "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": "pure-csi", "volumeHandle": handle},
                 "claimRef": {"namespace": "orders", "name": "orders-db-data"}},
        "status": {"phase": "Bound"}
    })
}

/// What the array says about `volume`: this run's staging volume (as restore-to-staging tags it).
fn array_staging(volume: &str) -> KnownVolumes {
    KnownVolumes(vec![(
        volume.to_string(),
        Marks {
            what: format!("FlashArray volume {volume}"),
            markers: vec![Marker::new("tag", "snapstage:role", "staging")],
            staging_run: Some(KEY.to_string()),
        },
    )])
}

#[tokio::test]
async fn an_array_volume_is_read_on_the_array_and_in_the_cluster() {
    let array = json!({"endpoint": "https://fa.example.com", "apiTokenSecret": "fa-token"});
    let pure = |extra: Value| {
        let mut r = json!({"backend": "pure-csi", "volumeId": "orders-db-staging-0a1b",
                           "resetCredentials": false});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let volumes = array_staging("orders-db-staging-0a1b");
    let list_pvs = || X::list("/api/v1/persistentvolumes", &[]);

    // Without the array its mark cannot be read: refused before anything is sent.
    let (r, seen) = play_on(&volumes, pure(json!({})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("its staging mark cannot be read without the array; give flasharray"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");

    // The array says staging of this run, but production's PV in the cluster mounts the same
    // volume: refused, whatever the override says.
    for extra in [
        json!({"flasharray": array}),
        json!({"flasharray": array, "allowUnmanagedVolume": "orders-db-staging-0a1b"}),
    ] {
        let exchanges = vec![list_pvs().ok(o::list(
            "PersistentVolume",
            "v1",
            vec![
                pure_pv("other", "orders-db", json!({"env": "production"})),
                pure_pv(
                    "orders-prod",
                    "orders-db-staging-0a1b",
                    json!({"app.kubernetes.io/environment": "production"}),
                ),
            ],
        ))];
        let (r, seen) = play_on(&volumes, pure(extra), None, exchanges).await;
        let (_, msg) = failure(r);
        assert!(
            msg.contains("is marked production (PersistentVolume orders-prod label app.kubernetes.io/environment=production)"),
            "{msg}"
        );
        assert_eq!(seen.len(), 1, "{seen:#?}");
    }

    // A PV snapstage did not make mounts it (no production label): in use, refused.
    let exchanges = vec![list_pvs().ok(o::list(
        "PersistentVolume",
        "v1",
        vec![pure_pv("legacy", "orders-db-staging-0a1b", json!({}))],
    ))];
    let (r, _) = play_on(
        &volumes,
        pure(json!({"flasharray": array})),
        None,
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is mounted by PersistentVolume legacy, which snapstage did not make"),
        "{msg}"
    );

    // The array's own production tag (or its protection group's) refuses it.
    let mut tagged = volumes.clone();
    tagged.0[0].1.markers.push(Marker::new(
        "protection group pg-orders tag",
        "environment",
        "prod",
    ));
    let (r, seen) = play_on(&tagged, pure(json!({"flasharray": array})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is marked production (protection group pg-orders tag environment=prod)"),
        "{msg}"
    );
    assert!(
        seen.is_empty(),
        "the array is read before the cluster: {seen:#?}"
    );

    // Staging on the array, no other PV in the cluster: applied.
    let ns = ns();
    let exchanges = vec![
        list_pvs().ok(o::list(
            "PersistentVolume",
            "v1",
            vec![pure_pv("other", "orders-db", json!({"env": "production"}))],
        )),
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_pv()).body(|b| {
            assert_eq!(b["spec"]["csi"]["driver"], "pure-csi");
            assert_eq!(b["spec"]["csi"]["volumeHandle"], "orders-db-staging-0a1b");
        }),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()),
    ];
    let (r, _) = play_on(
        &volumes,
        pure(json!({"flasharray": array})),
        None,
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("interlock: FlashArray volume orders-db-staging-0a1b is this run's staging volume (read the array's tags (https://fa.example.com) and the cluster's PersistentVolumes)"),
        "{summary}"
    );
    assert!(summary.contains(&format!("in namespace {ns}")), "{summary}");
}

#[tokio::test]
async fn teardown_leaves_a_namespace_whose_existing_pvc_snapstage_did_not_make() {
    let ns = "team-a-staging";
    let mut namespace = o::staging_namespace(ns, "4e570e", EXPIRES);
    namespace["metadata"]["annotations"]["snapstage.io/existing-claim"] = json!("restored-db");
    let exchanges = vec![
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(namespace.clone()),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(o::labelled_claim(
            ns,
            "restored-db",
            json!({"app.kubernetes.io/managed-by": "velero"}),
        )),
    ];
    let (r, seen) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("holds PVC restored-db") && msg.contains("snapstage did not make"),
        "{msg}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("DELETE")), "{seen:#?}");

    // The same PVC with snapstage's label: the namespace (and so the PVC) is deleted.
    let exchanges = vec![
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(namespace),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(o::labelled_claim(
            ns,
            "restored-db",
            json!({"app.kubernetes.io/managed-by": "snapstage"}),
        )),
        X::list(
            "/api/v1/persistentvolumes",
            &[(
                "labelSelector",
                "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution=4e570e",
            )],
        )
        .ok(o::list("PersistentVolume", "v1", vec![])),
        X::delete(&format!("/api/v1/namespaces/{ns}")),
    ];
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "true");
}

/// A user template: a ConfigMap, a Service and a Deployment mounting the restored PVC.
const TEMPLATE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: ${IMAGE}
          envFrom: [{configMapRef: {name: db-settings}}]
          env:
            - name: POSTGRES_PASSWORD
              valueFrom: {secretKeyRef: {name: "${SECRET_NAME}", key: "${SECRET_PASSWORD_KEY}"}}
          volumeMounts: [{name: data, mountPath: "${MOUNT_PATH}"}]
      volumes:
        - name: data
          persistentVolumeClaim: {claimName: "${PVC_NAME}"}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-settings}
data: {PGDATA: "${MOUNT_PATH}/pgdata"}
"#;

fn template_request() -> Value {
    request(json!({"template": {"inline": TEMPLATE}}))
}

#[tokio::test]
async fn a_user_template_is_applied_after_snapstage_s_objects() {
    let ns = ns();
    let (ns1, ns2) = (ns.clone(), ns.clone());
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
    ];
    exchanges.extend(apply_rest().into_iter().take(2)); // PV, PVC
    exchanges.extend([
        X::apply(&p_in("configmaps", "db-settings")).body(move |b| {
            assert_eq!(b["metadata"]["namespace"], ns1.as_str());
            assert_eq!(
                b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "snapstage"
            );
            assert_eq!(b["data"]["PGDATA"], "/var/lib/postgresql/data/pgdata");
        }),
        X::apply(&p_in("services", "db")).body(|b| {
            assert_eq!(b["spec"]["selector"], json!({"app": "db"}));
            assert_eq!(b["metadata"]["labels"]["snapstage.io/execution"], label());
        }),
        X::apply(&format!("/apis/apps/v1/namespaces/{ns}/deployments/db")).body(move |b| {
            assert_eq!(b["metadata"]["namespace"], ns2.as_str());
            let pod = &b["spec"]["template"];
            assert_eq!(pod["metadata"]["labels"]["app"], "db");
            assert_eq!(
                pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "snapstage"
            );
            let spec = &pod["spec"];
            assert_eq!(spec["containers"][0]["image"], "postgres:17");
            assert_eq!(
                spec["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
                "staging-db-credentials"
            );
            assert_eq!(
                spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
                "staging-db-data"
            );
        }),
    ]);
    let (r, _) = play(template_request(), None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("PersistentVolumeClaim, ConfigMap db-settings, Service db, Deployment db"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_user_template_is_ready_when_its_workload_and_pods_are() {
    let ns = ns();
    let pods_of_db = || {
        X::list(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &[("labelSelector", "app=db")],
        )
    };
    let waiting = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/db"))
            .ok(o::deployment(&ns, "db", 0)),
        pods_of_db().ok(o::list(
            "Pod",
            "v1",
            vec![o::pod(&ns, o::running_pod_status(false))],
        )),
    ];
    let (r, _) = play(
        template_request(),
        Some(state("ready", minutes_ago(2), true)),
        waiting,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("Deployment db: 0/1 replicas available"),
        "{summary}"
    );

    let ready = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/db"))
            .ok(o::deployment(&ns, "db", 1)),
        pods_of_db().ok(o::list(
            "Pod",
            "v1",
            vec![o::pod(&ns, o::running_pod_status(true))],
        )),
        // A template's pods and ports are the user's: the policy opens every pod.
        X::apply(&p_np("staging-db-access")).body(|b| {
            assert_eq!(b["spec"]["podSelector"], json!({}));
            assert!(b["spec"]["ingress"][0].get("ports").is_none(), "{b}");
        }),
    ];
    let (r, _) = play(
        template_request(),
        Some(state("ready", minutes_ago(3), true)),
        ready,
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Service"], "db");
    assert_eq!(
        outputs["Endpoint"],
        format!("db.{ns}.svc.cluster.local:5432")
    );
    assert_eq!(outputs["ManifestCount"], "9");
    assert!(
        summary.starts_with(&format!("staging postgresql ready: db.{ns}")),
        "{summary}"
    );

    let crashing = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/db"))
                .ok(o::deployment(&ns, "db", 0)),
            pods_of_db().ok(o::list("Pod", "v1", vec![crash_looping_pod(&ns)])),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        template_request(),
        Some(state("ready", minutes_ago(3), true)),
        crashing,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is crash-looping (CrashLoopBackOff, 4 restarts)"),
        "{msg}"
    );
}

fn reset_request(extra: Value) -> Value {
    let mut r = request(json!({"resetCredentials": true, "databaseUser": "app"}));
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

#[tokio::test]
async fn the_reset_needs_no_production_secret_and_adminsecret_is_refused() {
    // adminSecret (production's admin, once copied into the namespace) is refused before anything
    // is sent, with what to do instead.
    let (r, seen) = play(
        reset_request(json!({"adminSecret": "arn:aws:secretsmanager:us-east-1:111122223333:secret:prod/db/admin-AbCdEf"})),
        None,
        vec![],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.starts_with(
            "adminSecret: no longer used: the credentials reset starts the engine local-only"
        ),
        "{msg}"
    );
    assert!(msg.contains("remove adminSecret"), "{msg}");
    assert!(seen.is_empty(), "{seen:#?}");

    // The reset is on: the same objects as without it, no second Secret, and the StatefulSet's
    // pod resets the password itself before the server starts.
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")).body(|b| {
            assert_eq!(
                b["data"]["username"], "YXBw",
                "base64 of the databaseUser app"
            );
        }),
    ];
    let mut rest = apply_rest();
    rest.pop(); // the StatefulSet, checked here for its init container
    rest.push(X::apply(&p_sts()).body(|b| {
        let pod = &b["spec"]["template"]["spec"];
        let init = pod["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1, "{init:#?}");
        let c = &init[0];
        assert_eq!(c["name"], "credentials-reset");
        assert_eq!(c["image"], "postgres:17", "the database image");
        assert_eq!(c["volumeMounts"], pod["containers"][0]["volumeMounts"]);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        let script = c["command"][2].as_str().unwrap();
        assert!(
            script.contains("-c listen_addresses= ")
                && script.contains("local all all trust")
                && script.contains("ALTER ROLE :\"new_user\" WITH LOGIN PASSWORD :'new_password'"),
            "{script}"
        );
        for e in c["env"].as_array().unwrap() {
            if let Some(from) = e.get("valueFrom") {
                assert_eq!(
                    from["secretKeyRef"]["name"], "staging-db-credentials",
                    "only the generated credentials: {e}"
                );
            }
        }
        assert!(
            !b.to_string().contains("staging-db-admin") && !b.to_string().contains("ADMIN_"),
            "{b}"
        );
    }));
    exchanges.extend(rest);
    let (r, seen) = play(reset_request(json!({})), None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert_eq!(seen.len(), 10, "no other object: {seen:#?}");
    assert!(
        !seen.iter().any(|s| s.contains("staging-db-admin")),
        "{seen:#?}"
    );
    assert!(!summary.contains("staging-db-admin"), "{summary}");
}

#[tokio::test]
async fn ready_after_the_reset_masks_then_publishes() {
    // The pod is Ready: its init container reset the password. Masking starts (nothing published).
    let exchanges = then(
        ready_exchanges(),
        vec![X::apply(&p_job("staging-db-masking"))],
    );
    let (r, seen) = play(
        reset_request(masking()),
        Some(state("ready", minutes_ago(3), true)),
        exchanges,
    )
    .await;
    let (summary, _, next) = continued(r.unwrap());
    assert_eq!(next["p"], "masking");
    assert!(
        summary
            .contains("the database is ready, its password reset; started Job staging-db-masking"),
        "{summary}"
    );
    assert!(
        !seen.iter().any(|s| s.contains("credentials-reset")),
        "no reset Job: {seen:#?}"
    );

    // Without masking, readiness publishes, and says the password was reset.
    let (r, _) = play(
        reset_request(json!({})),
        Some(state("ready", minutes_ago(3), true)),
        then(ready_exchanges(), vec![open_access()]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["CredentialsReset"], "true");
    assert!(
        summary.contains("password of database user app reset to the generated one in Secret staging-db-credentials before the server started (production's passwords no longer log in)"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_failed_reset_fails_the_step_with_its_words_and_publishes_nothing() {
    let ns = ns();
    let mut status = o::running_pod_status(false);
    status["phase"] = json!("Pending");
    status["initContainerStatuses"] = json!([o::container_status(
        "credentials-reset",
        "postgres:17",
        false,
        4,
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}}),
        json!({"terminated": {"exitCode": 3, "reason": "Error",
            "message": format!("{}\ncredentials reset: cannot log in as app (databaseUser) on the restored data: it must be a PostgreSQL role that can log in",
                               "2025-06-01 12:00:51.204 UTC [31] LOG:  database system is shut down\n".repeat(8)),
            "startedAt": "2025-06-01T12:00:50Z", "finishedAt": "2025-06-01T12:00:52Z"}}),
    )]);
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, status)),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        reset_request(json!({})),
        Some(state("ready", minutes_ago(2), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("container credentials-reset is crash-looping (CrashLoopBackOff, 4 restarts); last exit code 3 (Error)"),
        "{msg}"
    );
    // The end of a long log is what is kept: the reset's own last words.
    assert!(
        msg.contains("cannot log in as app (databaseUser) on the restored data: it must be a PostgreSQL role that can log in"),
        "{msg}"
    );
    assert!(msg.contains("deleted namespace"), "{msg}");
}

const PIPELINE: &str = "shop-api-staging";

fn pipeline_label() -> String {
    names::execution_label(PIPELINE)
}

/// A continuation state of a run whose pipeline is known.
fn pipeline_state(phase: &str, since: i64) -> Value {
    let mut s = state(phase, since, true);
    s["pl"] = json!(pipeline_label());
    s
}

#[tokio::test]
async fn a_known_pipeline_labels_the_namespace_not_healthy_until_published() {
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()).body(|b| {
            let labels = &b["metadata"]["labels"];
            assert_eq!(labels["snapstage.io/pipeline"], pipeline_label());
            assert_eq!(labels["snapstage.io/healthy"], "false");
        }),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
    ];
    exchanges.extend(apply_rest());
    let (r, _) = play(request(json!({"pipeline": PIPELINE})), None, exchanges).await;
    let (_, _, state) = continued(r.unwrap());
    assert_eq!(
        state["pl"],
        pipeline_label(),
        "carried to the continuations"
    );

    // Published: the namespace is marked healthy with what it published.
    let ns = ns();
    let exchanges = then(
        ready_exchanges(),
        vec![
            open_access(),
            X::merge(&p_ns()).body(move |b| {
                assert_eq!(
                    b["metadata"]["labels"],
                    json!({"snapstage.io/healthy": "true"})
                );
                let ann = &b["metadata"]["annotations"];
                assert_eq!(ann["snapstage.io/healthy-at"], NOW);
                let published: Value =
                    serde_json::from_str(ann["snapstage.io/outputs"].as_str().unwrap()).unwrap();
                assert_eq!(
                    published,
                    json!({"Namespace": ns, "Service": "staging-db", "Port": "5432",
                       "Endpoint": format!("staging-db.{ns}.svc.cluster.local:5432"),
                       "SecretName": "staging-db-credentials"})
                );
            }),
        ],
    );
    let (r, _) = play(
        request(json!({})),
        Some(pipeline_state("ready", minutes_ago(3))),
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
}

fn healthy_namespace(name: &str, healthy_at: &str, expires: &str) -> Value {
    let mut n = o::staging_namespace(name, "0123456789abcdef0123", expires);
    n["metadata"]["labels"]["snapstage.io/pipeline"] = json!(pipeline_label());
    n["metadata"]["labels"]["snapstage.io/healthy"] = json!("true");
    n["metadata"]["annotations"]["snapstage.io/healthy-at"] = json!(healthy_at);
    n["metadata"]["annotations"]["snapstage.io/outputs"] = json!(
        json!({
        "Namespace": name, "Service": "staging-db", "Port": "5432",
        "Endpoint": format!("staging-db.{name}.svc.cluster.local:5432"),
        "SecretName": "staging-db-credentials"})
        .to_string()
    );
    n
}

#[tokio::test]
async fn rollback_deletes_the_failed_database_and_names_the_previous_healthy_one() {
    let ns = ns();
    let previous = "snapstage-aaaaaaaaaa";
    let older = "snapstage-bbbbbbbbbb";
    let expired = "snapstage-cccccccccc";
    let prod = "snapstage-dddddddddd";
    let mut production = healthy_namespace(prod, "2025-06-01T11:00:00Z", "2025-06-02T00:00:00Z");
    production["metadata"]["labels"]["env"] = json!("production");
    let mut failed_itself = healthy_namespace(&ns, "2025-06-01T11:30:00Z", EXPIRES);
    failed_itself["metadata"]["labels"]["snapstage.io/healthy"] = json!("true");
    let selector = format!(
        "app.kubernetes.io/managed-by=snapstage,snapstage.io/pipeline={},snapstage.io/healthy=true",
        pipeline_label()
    );
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
        ],
        then(
            teardown_exchanges(),
            vec![
                X::list(
                    "/api/v1/namespaces",
                    &[("labelSelector", selector.as_str())],
                )
                .ok(o::list(
                    "Namespace",
                    "v1",
                    vec![
                        healthy_namespace(older, "2025-05-31T09:00:00Z", "2025-06-01T20:00:00Z"),
                        healthy_namespace(previous, "2025-06-01T08:00:00Z", "2025-06-02T08:00:00Z"),
                        healthy_namespace(expired, "2025-06-01T09:00:00Z", "2025-06-01T11:59:00Z"),
                        production,
                        failed_itself,
                    ],
                )),
            ],
        ),
    );
    let (r, seen) = play(
        request(json!({"onFailure": "rollback"})),
        Some(pipeline_state("ready", minutes_ago(4))),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(
        kind,
        FailureKind::JobFailed,
        "the new database is not healthy"
    );
    assert!(msg.contains("CrashLoopBackOff"), "{msg}");
    assert!(
        msg.contains(&format!("deleted namespace {ns} and deleted PersistentVolume object(s) {ns}-data (Retain: the volumes stay) (onFailure: rollback)")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "rolled back to the previous healthy staging database of this pipeline (healthy since 2025-06-01T08:00:00Z, expires 2025-06-02T08:00:00Z), which still stands: Namespace={previous}, Service=staging-db, Endpoint=staging-db.{previous}.svc.cluster.local:5432, Port=5432, SecretName=staging-db-credentials"
        )),
        "{msg}"
    );
    assert_eq!(
        seen.iter().filter(|s| s.starts_with("DELETE")).count(),
        2,
        "only the failed namespace and its PV: {seen:#?}"
    );
}

#[tokio::test]
async fn rollback_without_a_known_pipeline_says_there_is_nothing_to_roll_back_to() {
    let ns = ns();
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        request(json!({"onFailure": "rollback"})),
        Some(state("ready", minutes_ago(4), true)),
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(msg.contains("no pipeline is known"), "{msg}");
}

#[tokio::test]
async fn rollout_progressing_continues_with_what_is_missing() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(false))),
    ];
    let s = state("ready", minutes_ago(2), true);
    let (r, _) = play(request(json!({})), Some(s.clone()), exchanges).await;
    let (summary, percent, next) = continued(r.unwrap());
    assert_eq!(next, s, "the state is unchanged while waiting");
    assert!(summary.contains("0/1 replicas ready"), "{summary}");
    assert!(
        summary.contains("readiness probe not passing yet"),
        "{summary}"
    );
    assert!(summary.contains("2m00s of 15m00s"), "{summary}");
    assert!((10..=60).contains(&percent), "{percent}");
}

#[tokio::test]
async fn generation_not_observed_is_not_ready() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 2, 1, 1)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(true))),
    ];
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("generation 2 not observed yet"),
        "{summary}"
    );
}

/// `staging-db-access`: the database published (after masking, or at once without it).
fn open_access() -> X {
    X::apply(&p_np("staging-db-access")).body(|b| {
        assert_eq!(b["kind"], "NetworkPolicy");
        let rule = &b["spec"]["ingress"][0];
        assert_eq!(rule["ports"][0]["port"], 5432);
        assert!(rule.get("from").is_none(), "from anywhere by default: {b}");
        assert_eq!(
            b["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "database"
        );
    })
}

fn ready_exchanges() -> Vec<X> {
    let ns = ns();
    vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 1)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(true))),
    ]
}

#[tokio::test]
async fn ready_is_done_with_the_outputs() {
    let ns = ns();
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(3), true)),
        then(ready_exchanges(), vec![open_access()]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
    assert_eq!(outputs["NetworkAccess"], "networkpolicy");
    assert!(
        summary.contains(
            "reachable from anywhere in the cluster's network (NetworkPolicy staging-db-access)"
        ),
        "{summary}"
    );
    assert_eq!(outputs["Namespace"], ns);
    assert_eq!(outputs["Service"], "staging-db");
    assert_eq!(
        outputs["Endpoint"],
        format!("staging-db.{ns}.svc.cluster.local:5432")
    );
    assert_eq!(outputs["Port"], "5432");
    assert_eq!(outputs["SecretName"], "staging-db-credentials");
    assert_eq!(outputs["Engine"], "postgresql");
    assert_eq!(outputs["ExpiresAt"], EXPIRES);
    assert!(!outputs.contains_key("MigrationResult"));
    snapstage::job::codepipeline::validate_output_variables(&outputs).unwrap();
    assert!(
        summary.starts_with("staging postgresql ready: staging-db."),
        "{summary}"
    );
}

fn crash_looping_pod(ns: &str) -> Value {
    o::pod(
        ns,
        json!({
            "phase": "Running",
            "conditions": [o::condition("PodScheduled", "True", None, None),
                           o::condition("Ready", "False", Some("ContainersNotReady"), Some("containers with unready status: [db]"))],
            "containerStatuses": [o::container_status("db", "docker.io/library/postgres:17", false, 4,
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=db pod=staging-db-0_x(uid)"}}),
                json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "FATAL:  database files are incompatible with server",
                    "startedAt": "2025-06-01T12:02:00Z", "finishedAt": "2025-06-01T12:02:01Z"}}))]
        }),
    )
}

#[tokio::test]
async fn crash_looping_fails_with_the_exit_code_and_tears_down() {
    let ns = ns();
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(4), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("CrashLoopBackOff, 4 restarts"), "{msg}");
    assert!(
        msg.contains("last exit code 1 (Error): FATAL:  database files are incompatible"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("deleted namespace {ns}")) && msg.contains("onFailure: teardown"),
        "{msg}"
    );
}

#[tokio::test]
async fn image_pull_failure_names_the_image_and_keep_leaves_the_namespace() {
    let ns = ns();
    let pod = o::pod(
        &ns,
        json!({
            "phase": "Pending",
            "conditions": [o::condition("PodScheduled", "True", None, None)],
            "containerStatuses": [o::container_status("db", "postgres:99", false, 0,
                json!({"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"postgres:99\": ErrImagePull: docker.io/library/postgres:99: not found"}}),
                json!({}))]
        }),
    );
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(pod),
    ];
    let (r, _) = play(
        request(json!({"image": "postgres:99", "onFailure": "keep"})),
        Some(state("ready", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("image \"postgres:99\"") && msg.contains("ImagePullBackOff"),
        "{msg}"
    );
    assert!(
        msg.contains("kept for debugging (onFailure: keep)"),
        "{msg}"
    );
}

fn unschedulable_pod(ns: &str) -> Value {
    o::pod(
        ns,
        json!({
            "phase": "Pending",
            "conditions": [o::condition("PodScheduled", "False", Some("Unschedulable"),
                Some("0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 Insufficient memory. preemption: 0/3 nodes are available"))]
        }),
    )
}

#[tokio::test]
async fn unschedulable_waits_with_the_scheduler_message_then_times_out() {
    let ns = ns();
    let exchanges = || {
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(unschedulable_pod(&ns)),
        ]
    };
    // Autoscaling may still add a node: keep waiting, say why.
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(5), true)),
        exchanges(),
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("pod staging-db-0 cannot be scheduled (Unschedulable): 0/3 nodes are available: 1 node(s) had volume node affinity conflict"),
        "{summary}"
    );
    // Past readyTimeoutMinutes the same answer fails the step, with the reason.
    let (r, _) = play(
        request(json!({"readyTimeoutMinutes": 10, "onFailure": "keep"})),
        Some(state("ready", minutes_ago(11), true)),
        exchanges(),
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("was not ready after 10 minutes (readyTimeoutMinutes)"),
        "{msg}"
    );
    assert!(msg.contains("2 Insufficient memory"), "{msg}");
}

fn pending_pvc_exchanges(ns: &str) -> Vec<X> {
    vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(ns, "Pending")),
        X::get(&p_sts()).ok(o::stateful_set(ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(
            ns,
            json!({"phase": "Pending", "conditions": [o::condition("PodScheduled", "False", Some("Unschedulable"),
                Some("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."))]}),
        )),
        X::list(
            &format!("/api/v1/namespaces/{ns}/events"),
            &[(
                "fieldSelector",
                "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=staging-db-data",
            )],
        )
        .ok(o::list(
            "Event",
            "v1",
            vec![
                o::event(ns, "PersistentVolumeClaim", "staging-db-data", "Normal", "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding", "2025-06-01T11:58:00Z"),
                o::event(ns, "PersistentVolumeClaim", "staging-db-data", "Warning", "VolumeMismatch",
                    "Cannot bind to requested volume \"snapstage-x-data\": storageClassName does not match", "2025-06-01T11:59:00Z"),
            ],
        )),
    ]
}

#[tokio::test]
async fn pvc_pending_reports_its_warning_events() {
    let ns = ns();
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(3), true)),
        pending_pvc_exchanges(&ns),
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains(
            "PVC staging-db-data is Pending (VolumeMismatch: Cannot bind to requested volume"
        ),
        "{summary}"
    );
    assert!(
        !summary.contains("WaitForFirstConsumer"),
        "only warnings: {summary}"
    );
}

#[tokio::test]
async fn timeout_fails_with_the_reason_and_deletes_the_namespace() {
    let ns = ns();
    let exchanges = then(pending_pvc_exchanges(&ns), teardown_exchanges());
    let (r, seen) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(16), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("was not ready after 15 minutes"), "{msg}");
    assert!(
        msg.contains("PVC staging-db-data is Pending (VolumeMismatch"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "deleted namespace {ns} and deleted PersistentVolume object(s) {ns}-data"
        )),
        "{msg}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("DELETE /api/v1/namespaces/")),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn namespace_from_an_earlier_run_is_never_deleted_on_failure() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
    ];
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(2), false)),
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("existed before this run and is left as it is"),
        "{msg}"
    );
}

#[tokio::test]
async fn conflict_on_apply_is_reported_clearly_and_cleaned_up() {
    let ns = ns();
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_pv()),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()).reply(
            409,
            fixtures::status_json(
                409,
                "Conflict",
                "Operation cannot be fulfilled on statefulsets.apps \"staging-db\": the object has been modified; please apply your changes to the latest version and try again",
            ),
        ),
    ];
    exchanges.extend(teardown_exchanges());
    let (r, _) = play(request(json!({})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.starts_with(&format!("kubernetes: applying StatefulSet {ns}/staging-db: 409 Conflict: Operation cannot be fulfilled")),
        "{msg}"
    );
    assert!(
        msg.contains("conflict: the object was changed or is owned by someone else"),
        "{msg}"
    );
    assert!(msg.contains(&format!("deleted namespace {ns}")), "{msg}");
}

#[tokio::test]
async fn expired_token_is_a_permission_error() {
    let exchanges = vec![X::get(&p_ns()).reply(
        401,
        fixtures::status_json(401, "Unauthorized", "Unauthorized"),
    )];
    let (r, seen) = play(request(json!({})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::PermissionError);
    assert!(
        msg.contains(&format!("reading Namespace {}: 401 Unauthorized", ns())),
        "{msg}"
    );
    assert!(msg.contains("rejected the credentials"), "{msg}");
    assert_eq!(seen.len(), 1, "nothing is applied or deleted: {seen:#?}");
}

#[tokio::test]
async fn foreign_namespace_is_refused() {
    let exchanges = vec![X::get("/api/v1/namespaces/team-a-staging").ok(o::namespace(
        "team-a-staging",
        json!({"kubernetes.io/metadata.name": "team-a-staging", "team": "a"}),
        json!({}),
    ))];
    let (r, seen) = play(
        request(json!({"namespace": "team-a-staging"})),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("Namespace team-a-staging exists and is not labelled app.kubernetes.io/managed-by=snapstage"),
        "{msg}"
    );
    assert!(msg.contains("will not deploy into it"), "{msg}");
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[tokio::test]
async fn production_namespace_is_refused_even_if_snapstage_labelled() {
    let exchanges = vec![X::get("/api/v1/namespaces/db").ok(o::namespace(
        "db",
        json!({"app.kubernetes.io/managed-by": "snapstage", "environment": "production"}),
        json!({}),
    ))];
    let (r, _) = play(request(json!({"namespace": "db"})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(msg.contains("labelled production"), "{msg}");
}

fn masking() -> Value {
    json!({"masking": {"image": "postgres:17", "command": ["psql", "-v", "ON_ERROR_STOP=1", "-f", "/scripts/mask.sql"],
                       "scriptsConfigMap": "mask-sql"}})
}

#[tokio::test]
async fn ready_starts_the_masking_job_before_publishing() {
    let ns = ns();
    let ns2 = ns.clone();
    let exchanges = then(
        ready_exchanges(),
        vec![X::apply(&p_job("staging-db-masking")).body(move |b| {
            assert_eq!(b["kind"], "Job");
            let pod = &b["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            assert_eq!(c["image"], "postgres:17");
            assert_eq!(c["command"][4], "/scripts/mask.sql");
            let env = c["env"].as_array().unwrap();
            let var = |n: &str| env.iter().find(|e| e["name"] == n).unwrap().clone();
            assert_eq!(
                var("DB_HOST")["value"],
                format!("staging-db.{ns2}.svc.cluster.local")
            );
            assert_eq!(
                var("PGPASSWORD")["valueFrom"]["secretKeyRef"]["key"],
                "password"
            );
            assert_eq!(pod["volumes"][0]["configMap"]["name"], "mask-sql");
            assert_eq!(pod["restartPolicy"], "Never");
        })],
    );
    let (r, _) = play(
        request(masking()),
        Some(state("ready", minutes_ago(3), true)),
        exchanges,
    )
    .await;
    let (summary, _, next) = continued(r.unwrap());
    assert_eq!(next, state("masking", now().as_second(), true));
    assert!(
        summary.contains("started Job staging-db-masking"),
        "{summary}"
    );
    assert!(
        summary.starts_with(&format!("masking the staging data in {ns}")),
        "{summary}"
    );
}

#[tokio::test]
async fn masking_job_succeeded_publishes() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_job("staging-db-masking")).ok(o::job(
            &ns,
            "staging-db-masking",
            vec![
                o::condition(
                    "SuccessCriteriaMet",
                    "True",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods"),
                ),
                o::condition(
                    "Complete",
                    "True",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods"),
                ),
            ],
            1,
            0,
        )),
        open_access(),
    ];
    let (r, _) = play(
        request(masking()),
        Some(state("masking", minutes_ago(2), true)),
        exchanges,
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
    assert!(summary.contains("data masked"), "{summary}");
}

#[tokio::test]
async fn masking_job_failed_fails_the_step_with_its_reason() {
    let ns = ns();
    let exchanges = then(
        vec![
            X::get(&p_job("staging-db-masking")).ok(o::job(
                &ns,
                "staging-db-masking",
                vec![
                    o::condition(
                        "FailureTarget",
                        "True",
                        Some("BackoffLimitExceeded"),
                        Some("Job has reached the specified backoff limit"),
                    ),
                    o::condition(
                        "Failed",
                        "True",
                        Some("BackoffLimitExceeded"),
                        Some("Job has reached the specified backoff limit"),
                    ),
                ],
                0,
                2,
            )),
            X::list(
                &format!("/api/v1/namespaces/{ns}/pods"),
                &[(
                    "labelSelector",
                    "batch.kubernetes.io/job-name=staging-db-masking",
                )],
            )
            .ok(o::list(
                "Pod",
                "v1",
                vec![o::job_pod(
                    &ns,
                    "staging-db-masking",
                    3,
                    "Error",
                    "psql:/scripts/mask.sql:12: ERROR:  relation \"customers\" does not exist",
                )],
            )),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        request(masking()),
        Some(state("masking", minutes_ago(2), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("the masking Job"), "{msg}");
    assert!(msg.contains("BackoffLimitExceeded: Job has reached the specified backoff limit; exit code 3 (Error): psql:/scripts/mask.sql:12"), "{msg}");
    assert!(
        msg.contains("the staging database is not published"),
        "{msg}"
    );
    assert!(msg.contains("deleted namespace"), "{msg}");
}

fn failed_migration_exchanges(ns: &str) -> Vec<X> {
    vec![
        X::get(&p_job("staging-db-migration")).ok(o::job(
            ns,
            "staging-db-migration",
            vec![o::condition(
                "Failed",
                "True",
                Some("BackoffLimitExceeded"),
                Some("Job has reached the specified backoff limit"),
            )],
            0,
            2,
        )),
        X::list(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &[(
                "labelSelector",
                "batch.kubernetes.io/job-name=staging-db-migration",
            )],
        )
        .ok(o::list(
            "Pod",
            "v1",
            vec![o::job_pod(
                ns,
                "staging-db-migration",
                1,
                "Error",
                "Validate failed: Migrations have failed validation",
            )],
        )),
    ]
}

#[tokio::test]
async fn migration_result_is_reported_and_fails_unless_allowed() {
    let ns = ns();
    let migration = |allow: bool| {
        request(
            json!({"onFailure": "keep", "migration": {"image": "flyway/flyway:10", "command": ["flyway", "validate"], "allowFailure": allow}}),
        )
    };
    let (r, _) = play(
        migration(true),
        Some(state("migration", minutes_ago(1), true)),
        failed_migration_exchanges(&ns),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["MigrationResult"], "failed");
    assert!(
        summary.contains(
            "migration check failed: Job staging-db-migration failed: BackoffLimitExceeded"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("exit code 1 (Error): Validate failed"),
        "{summary}"
    );

    let (r, _) = play(
        migration(false),
        Some(state("migration", minutes_ago(1), true)),
        failed_migration_exchanges(&ns),
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("the migration check Job") && msg.contains("set migration.allowFailure"),
        "{msg}"
    );
}

#[tokio::test]
async fn migration_success_is_an_output() {
    let ns = ns();
    let exchanges = vec![X::get(&p_job("staging-db-migration")).ok(o::job(
        &ns,
        "staging-db-migration",
        vec![o::condition("Complete", "True", None, None)],
        1,
        0,
    ))];
    let req = request(
        json!({"migration": {"image": "flyway/flyway:10", "command": ["flyway", "validate"]}}),
    );
    let (r, _) = play(
        req,
        Some(state("migration", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["MigrationResult"], "succeeded");
}

#[tokio::test]
async fn teardown_refuses_a_namespace_snapstage_did_not_make() {
    let exchanges = vec![X::get("/api/v1/namespaces/payments").ok(o::namespace(
        "payments",
        json!({"kubernetes.io/metadata.name": "payments", "app.kubernetes.io/managed-by": "Helm"}),
        json!({}),
    ))];
    let (r, seen) = play(
        json!({"action": "teardown", "namespace": "payments"}),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("not labelled app.kubernetes.io/managed-by=snapstage")
            && msg.contains("will not delete it"),
        "{msg}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("DELETE")), "{seen:#?}");
}

/// `teardown_exchanges` with the list of every PV (is the volume mounted elsewhere?) before the
/// PV object is deleted: the staging volume is deleted first, then the PV that records its id.
fn teardown_with_volume_exchanges(others: Vec<Value>) -> Vec<X> {
    let mut x = teardown_exchanges();
    let pv = o::persistent_volume(&format!("{}-data", ns()), &ns(), &label());
    let mut all = vec![pv];
    all.extend(others);
    x.insert(
        3,
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", all)),
    );
    x
}

#[tokio::test]
async fn teardown_deletes_a_snapstage_namespace_and_its_volumes() {
    let ns = ns();
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        teardown_with_volume_exchanges(vec![]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "true");
    assert_eq!(outputs["PersistentVolumesDeleted"], "1");
    assert_eq!(outputs["VolumesDeleted"], "1");
    assert_eq!(outputs["Namespace"], ns);
    assert!(
        summary.contains("deleted EBS volume vol-0123456789abcdef0"),
        "{summary}"
    );
}

#[tokio::test]
async fn teardown_keeps_a_production_or_protected_volume_and_one_mounted_elsewhere() {
    let ns = ns();
    let staging = this_runs_volume().0.remove(0).1;
    let with = |key: &str, value: &str| {
        let mut m = staging.clone();
        m.markers.push(Marker::new("tag", key, value));
        KnownVolumes(vec![("vol-0123456789abcdef0".into(), m)])
    };
    for (volumes, why) in [
        (
            with("Environment", "Production"),
            "it is marked production (tag Environment=Production)",
        ),
        (
            with("snapstage:deletion-protection", "true"),
            "deletion-protected (tag snapstage:deletion-protection=true)",
        ),
    ] {
        let (r, _) = play_on(
            &volumes,
            json!({"action": "teardown", "namespace": ns}),
            None,
            teardown_with_volume_exchanges(vec![]),
        )
        .await;
        let (summary, outputs) = done(r.unwrap());
        assert_eq!(outputs["VolumesDeleted"], "0", "{summary}");
        assert_eq!(outputs["VolumesKept"], "1", "{summary}");
        assert!(
            summary.contains(&format!("kept EBS volume vol-0123456789abcdef0: {why}")),
            "{summary}"
        );
    }
    // Another PV (here: one snapstage did not make) mounts the same EBS volume: kept.
    let mut foreign = o::persistent_volume("orders-db", "shop", "x");
    foreign["metadata"]["labels"] = json!({"app": "orders"});
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        teardown_with_volume_exchanges(vec![foreign]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["VolumesKept"], "1", "{summary}");
    assert!(
        summary.contains(
            "kept EBS volume vol-0123456789abcdef0: PersistentVolume orders-db mounts it too"
        ),
        "{summary}"
    );
}

/// EC2 as it answers while the staging volume is still attached to the node.
struct Attached(KnownVolumes);

impl VolumeMarks for Attached {
    fn marks<'a>(
        &'a self,
        volume: snapstage::interlock::VolumeRef<'a>,
    ) -> snapstage::interlock::BoxFuture<'a, Result<Option<Marks>>> {
        self.0.marks(volume)
    }

    fn delete_staging<'a>(
        &'a self,
        _: snapstage::interlock::VolumeRef<'a>,
        _: bool,
    ) -> snapstage::interlock::BoxFuture<'a, Result<Deletion>> {
        Box::pin(async { Ok(Deletion::Waiting("in-use: i-0abc attached".into())) })
    }
}

#[tokio::test]
async fn teardown_continues_while_the_volume_is_attached_keeping_its_pv_object() {
    let ns = ns();
    let mut exchanges = teardown_with_volume_exchanges(vec![]);
    exchanges.pop(); // no DELETE of the PV: it records the volume's id until the volume is deleted
    let (r, seen) = play_on(
        &Attached(this_runs_volume()),
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (summary, _, state) = continued(r.unwrap());
    assert!(
        summary.contains(
            "waiting for EBS volume vol-0123456789abcdef0 to be detached (in-use: i-0abc attached)"
        ),
        "{summary}"
    );
    assert_eq!(state["waitingSince"], NOW);
    assert!(
        !seen
            .iter()
            .any(|s| s.contains("DELETE /api/v1/persistentvolumes")),
        "{seen:#?}"
    );
    // Half an hour later the namespace is gone and the volume still attached: teardown finishes
    // and leaves the volume and its PV object to the sweep.
    let leftover = vec![
        X::get(&p_ns()).not_found(),
        X::list(
            "/api/v1/persistentvolumes",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(&format!("{ns}-data"), &ns, &label())],
        )),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(&format!("{ns}-data"), &ns, &label())],
        )),
    ];
    let (r, _) = play_on(
        &Attached(this_runs_volume()),
        json!({"action": "teardown", "namespace": ns}),
        Some(json!({"waitingSince": "2025-06-01T11:29:00Z"})),
        leftover,
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["VolumesWaiting"], "1");
    assert!(
        summary.contains(
            "still attached after 30 min: the sweep deletes vol-0123456789abcdef0 once detached"
        ),
        "{summary}"
    );
}

#[tokio::test]
async fn teardown_of_a_missing_namespace_is_done() {
    let (r, _) = play(
        json!({"action": "teardown", "namespace": "snapstage-0000000000"}),
        None,
        vec![
            X::get("/api/v1/namespaces/snapstage-0000000000").not_found(),
            // PVs an earlier teardown left for a volume that was still attached: none.
            X::list(
                "/api/v1/persistentvolumes",
                &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
            )
            .ok(o::list("PersistentVolume", "v1", vec![])),
        ],
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "false");
    assert!(summary.contains("does not exist"), "{summary}");
}

#[tokio::test]
async fn sweep_deletes_only_expired_snapstage_namespaces() {
    let expired = "snapstage-aaaaaaaaaa";
    let fresh = "snapstage-bbbbbbbbbb";
    let prod = "snapstage-cccccccccc";
    let mut production = o::staging_namespace(prod, "c0ffee", "2025-05-01T00:00:00Z");
    production["metadata"]["labels"]["env"] = json!("production");
    let exchanges = vec![
        X::list(
            "/api/v1/namespaces",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "Namespace",
            "v1",
            vec![
                o::staging_namespace(expired, "a11ce", "2025-06-01T11:00:00Z"),
                o::staging_namespace(fresh, "b0b", "2025-06-01T13:00:00Z"),
                production,
            ],
        )),
        X::list(
            "/api/v1/persistentvolumes",
            &[(
                "labelSelector",
                "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution=a11ce",
            )],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![
                o::persistent_volume(&format!("{expired}-data"), expired, "a11ce"),
                // Same execution label but reserved for a claim elsewhere: not this namespace's.
                o::persistent_volume("other-data", "elsewhere", "a11ce"),
            ],
        )),
        X::delete(&format!("/api/v1/namespaces/{expired}"))
            .body(move |b| assert_eq!(b["preconditions"]["uid"], format!("uid-{expired}"))),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(
                &format!("{expired}-data"),
                expired,
                "a11ce",
            )],
        )),
        X::delete(&format!("/api/v1/persistentvolumes/{expired}-data")),
        // Then the PVs whose namespace is gone: this one's namespace is being deleted.
        X::list(
            "/api/v1/persistentvolumes",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(
                &format!("{expired}-data"),
                expired,
                "a11ce",
            )],
        )),
        X::get(&format!("/api/v1/namespaces/{expired}")).ok(o::staging_namespace(
            expired,
            "a11ce",
            "2025-06-01T11:00:00Z",
        )),
    ];
    let (r, _) = play(json!({"action": "sweep"}), None, exchanges).await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "1");
    // This run's volume (the scripted one): deleted with its namespace.
    assert_eq!(outputs["VolumesDeleted"], "1", "{summary}");
    assert_eq!(outputs["Kept"], "1");
    assert_eq!(outputs["Namespaces"], expired);
    assert!(
        summary.contains(&format!("skipped {prod} (not deletable by snapstage)")),
        "{summary}"
    );
}

#[tokio::test]
async fn sweep_dry_run_deletes_nothing() {
    let expired = "snapstage-aaaaaaaaaa";
    let exchanges = vec![
        X::list(
            "/api/v1/namespaces",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "Namespace",
            "v1",
            vec![o::staging_namespace(
                expired,
                "a11ce",
                "2025-06-01T11:00:00Z",
            )],
        )),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", vec![])),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", vec![])),
    ];
    let (r, _) = play(json!({"action": "sweep", "dryRun": true}), None, exchanges).await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "dry-run");
    assert!(
        summary.contains("would delete 1 expired staging namespace(s)"),
        "{summary}"
    );
}

#[test]
fn teardown_needs_a_namespace() {
    let p = step(json!({"action": "teardown"}), None).params;
    let e: Error = staging::teardown::plan_only(&p).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("namespace: expected the staging namespace to delete"),
        "{e}"
    );
}
