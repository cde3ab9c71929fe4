//! The user's own workload template, and the credentials reset on the restored data.

use super::*;

/// A user template: a ConfigMap, a Service and a Deployment mounting the restored PVC.
pub(crate) const TEMPLATE: &str = r#"
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

pub(crate) fn template_request() -> Value {
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

pub(crate) fn reset_request(extra: Value) -> Value {
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
