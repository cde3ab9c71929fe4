//! A fresh deploy, a retried one, and one onto an existing PVC: what is applied, in which order, and what is kept.

use super::*;

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
pub(crate) fn redeploy_exchanges(
    execution: &str,
    expires: &str,
    want_expiry: &'static str,
) -> Vec<X> {
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

pub(crate) fn existing_pvc_request() -> Value {
    json!({"backend": "csi", "pvcName": "restored-db", "namespace": "team-a-staging",
           "resetCredentials": false})
}

/// The PVC restore-to-staging made for this run (a direct request with the same executionId):
/// managed-by snapstage, role staging, the run in `snapstage.io/execution-key`.
pub(crate) fn restored_claim(ns: &str, execution_key: &str) -> Value {
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
