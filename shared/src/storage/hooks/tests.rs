//! The hooks against a real local server speaking the Kubernetes exec websocket protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::exec_server::{ExecServer, Script};
use super::*;
use crate::error::FailureKind;

fn params(v: serde_json::Value) -> HookParams {
    serde_json::from_value(v).unwrap()
}

fn freeze() -> HookParams {
    params(json!({"pod": "orders-db-0", "container": "postgres",
        "pre": ["fsfreeze", "-f", "/data"], "post": ["fsfreeze", "-u", "/data"],
        "timeoutSeconds": 5, "namespace": "prod", "cluster": "inCluster"}))
}

fn hooks(server: &ExecServer, p: HookParams) -> Hooks {
    p.validate(None).unwrap();
    Hooks::new(server.client(), "prod".into(), p)
}

const PRE: &str = "/api/v1/namespaces/prod/pods/orders-db-0/exec?&stdout=true&stderr=true&container=postgres&command=fsfreeze&command=-f&command=%2Fdata";
const POST: &str = "/api/v1/namespaces/prod/pods/orders-db-0/exec?&stdout=true&stderr=true&container=postgres&command=fsfreeze&command=-u&command=%2Fdata";

#[tokio::test]
async fn pre_then_work_then_post_with_the_exact_commands() {
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let server = ExecServer::start(protocol, vec![Script::Exit(0), Script::Exit(0)]).await;
        let h = hooks(&server, freeze());
        let ran = AtomicUsize::new(0);
        let out = h
            .around(async {
                // The pre hook has been run by now, the post hook not yet.
                assert_eq!(server.seen(), [PRE]);
                ran.fetch_add(1, Ordering::SeqCst);
                Ok("snap-1")
            })
            .await
            .unwrap();
        assert_eq!(out, "snap-1");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(server.seen(), [PRE, POST], "{protocol}");
    }
}

#[tokio::test]
async fn post_runs_when_creating_the_snapshot_fails() {
    let server =
        ExecServer::start("v5.channel.k8s.io", vec![Script::Exit(0), Script::Exit(0)]).await;
    let h = hooks(&server, freeze());
    let e = h
        .around(async {
            Err::<(), _>(Error::Permission {
                backend: "ebs",
                message: "CreateSnapshot: UnauthorizedOperation".into(),
                source: None,
            })
        })
        .await
        .unwrap_err();
    assert_eq!(server.seen(), [PRE, POST]);
    assert_eq!(e.failure_kind(), FailureKind::PermissionError, "{e}");
    assert!(e.to_string().contains("the post hook ran"), "{e}");
}

#[tokio::test]
async fn a_failing_pre_hook_takes_no_snapshot_and_still_runs_post() {
    let server =
        ExecServer::start("v5.channel.k8s.io", vec![Script::Exit(1), Script::Exit(0)]).await;
    let h = hooks(&server, freeze());
    let ran = AtomicUsize::new(0);
    let e = h
        .around(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no snapshot after a failed pre"
    );
    assert_eq!(server.seen(), [PRE, POST]);
    assert_eq!(e.failure_kind(), FailureKind::JobFailed);
    let e = e.to_string();
    assert!(
        e.starts_with(
            "hooks: pre hook [\"fsfreeze\", \"-f\", \"/data\"] in pod prod/orders-db-0 failed: exit code 1; stderr: fsfreeze: /data: Device or resource busy"
        ),
        "{e}"
    );
    assert!(
        e.contains("no snapshot was taken") && e.contains("the post hook ran"),
        "{e}"
    );
}

#[tokio::test]
async fn a_failing_post_hook_fails_the_step_and_says_the_app_may_be_paused() {
    let server =
        ExecServer::start("v4.channel.k8s.io", vec![Script::Exit(0), Script::Exit(3)]).await;
    let h = hooks(&server, freeze());
    let e = h.around(async { Ok(()) }).await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::JobFailed);
    let e = e.to_string();
    assert!(
        e.contains("snapshot(s) created, but the post hook failed"),
        "{e}"
    );
    assert!(
        e.contains("exit code 3") && e.contains("may still be paused"),
        "{e}"
    );
}

#[tokio::test]
async fn a_hook_that_hangs_is_stopped_by_the_timeout_and_post_still_runs() {
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Hang, Script::Exit(0)]).await;
    let mut p = freeze();
    p.timeout_seconds = Some(1);
    let h = hooks(&server, p);
    let e = h.around(async { Ok(()) }).await.unwrap_err();
    assert_eq!(server.seen(), [PRE, POST]);
    assert!(
        e.to_string()
            .contains("did not finish within 1 s (hooks.timeoutSeconds)"),
        "{e}"
    );
    assert!(e.to_string().contains("no snapshot was taken"), "{e}");
}

#[tokio::test]
async fn a_pod_selector_picks_the_running_pods_in_name_order() {
    use crate::kube::fixture::{Exchange as X, serve};
    let pod = |name: &str, phase: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "prod"},
            "status": {"phase": phase}})
    };
    let (client, server) = serve("snapstage-snapshot-production", vec![
        X::list("/api/v1/namespaces/prod/pods", &[("labelSelector", "app=orders-db")]).ok(json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {},
            "items": [pod("orders-db-1", "Running"), pod("orders-db-2", "Pending"), pod("orders-db-0", "Running")]})),
        X::list("/api/v1/namespaces/prod/pods", &[("labelSelector", "app=none")])
            .ok(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})),
    ]);
    let mut p = freeze();
    p.pod = None;
    p.pod_selector = Some("app=orders-db".into());
    let h = Hooks::new(client.clone(), "prod".into(), p.clone());
    assert_eq!(h.pods().await.unwrap(), ["orders-db-0", "orders-db-1"]);
    p.pod_selector = Some("app=none".into());
    let h2 = Hooks::new(client, "prod".into(), p);
    let e = h2.pods().await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "hooks.podSelector: \"app=none\" selects no running pod in namespace prod"
        ),
        "{e}"
    );
    drop((h, h2));
    server.finish().await;
}

#[test]
fn parameters_are_checked_with_field_names() {
    let err = |v| params(v).validate(None).unwrap_err().to_string();
    assert!(
        err(json!({"pre": ["sync"], "post": ["true"], "namespace": "p", "cluster": "inCluster"}))
            .starts_with("hooks.pod: missing")
    );
    assert!(
        err(json!({"pod": "db-0", "pre": ["fsfreeze", "-f", "/data"], "namespace": "p", "cluster": "inCluster"}))
            .starts_with("hooks.post: missing: a pre hook")
    );
    assert!(
        err(json!({"pod": "db-0", "pre": ["a"], "post": ["b"], "timeoutSeconds": 0, "namespace": "p", "cluster": "inCluster"}))
            .starts_with("hooks.timeoutSeconds")
    );
    assert!(
        err(json!({"pod": "db-0", "pre": ["a"], "post": ["b"]}))
            .starts_with("hooks.namespace: missing")
    );
    assert!(
        err(json!({"pod": "db-0", "pre": ["a"], "post": ["b"], "namespace": "p"}))
            .starts_with("hooks.cluster: missing")
    );
    assert!(
        serde_json::from_value::<HookParams>(json!({"pod": "db-0", "pre": "fsfreeze -f /data"}))
            .is_err(),
        "a command is a list, never a shell string"
    );
    assert_eq!(freeze().timeout(), Duration::from_secs(5));
}

fn sh_session(freeze: &str, timeout: u32) -> HookParams {
    params(
        json!({"pod": "orders-db-0", "namespace": "prod", "cluster": "inCluster",
        "timeoutSeconds": timeout,
        "session": {"command": ["sh"], "freeze": freeze, "thaw": "echo thawed >&2",
            "marker": "echo snapstage-marker-{nonce}"}}),
    )
}

#[tokio::test]
async fn a_session_hook_is_one_exec_with_stdin_open_around_the_work() {
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = hooks(&server, sh_session("echo frozen", 5));
    let out = h
        .around(async {
            // The freeze was confirmed and the session is still open: one exec so far.
            assert_eq!(server.seen().len(), 1);
            Ok("snap-1")
        })
        .await
        .unwrap();
    assert_eq!(out, "snap-1");
    assert_eq!(
        server.seen(),
        [
            "/api/v1/namespaces/prod/pods/orders-db-0/exec?&stdin=true&stdout=true&stderr=true&command=sh"
        ]
    );
}

#[tokio::test]
async fn a_freeze_that_never_confirms_takes_no_snapshot_and_says_production_may_be_locked() {
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    // The freeze blocks past the timeout (as FLUSH TABLES WITH READ LOCK behind a long query).
    let h = hooks(&server, sh_session("sleep 4", 1));
    let ran = AtomicUsize::new(0);
    let e = h
        .around(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no snapshot without a confirmed freeze"
    );
    assert_eq!(e.failure_kind(), FailureKind::JobFailed);
    let e = e.to_string();
    assert!(
        e.starts_with("hooks: the freeze of the session hook [\"sh\"] in pod prod/orders-db-0 was not confirmed within 1 s (hooks.timeoutSeconds); no snapshot was taken; the thaw in pod prod/orders-db-0 was not confirmed within 1 s"),
        "{e}"
    );
    assert!(
        e.contains("production may still be locked — check it now"),
        "{e}"
    );
}

#[tokio::test]
async fn a_password_in_the_session_command_stays_out_of_the_message() {
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let mut p = sh_session("exit 3", 5);
    p.session.as_mut().unwrap().command = vec![
        "sh".into(),
        "-c".into(),
        "exec sh".into(),
        "-pS3cret".into(),
        "--password=S3cret".into(),
    ];
    let e = hooks(&server, p)
        .around(async { Ok(()) })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("hooks: the session hook [\"sh\", \"-c\", \"exec sh\", \"-p…\", \"--password=…\"] in pod prod/orders-db-0 ended before its freeze was confirmed: exit code 3"),
        "{e}"
    );
    assert!(!e.contains("S3cret"), "{e}");
}

#[test]
fn session_parameters_are_checked_with_field_names() {
    let base = || {
        json!({"pod": "db-0", "namespace": "p", "cluster": "inCluster",
            "session": {"command": ["mariadb", "--batch"], "freeze": "FLUSH TABLES WITH READ LOCK;", "thaw": "UNLOCK TABLES;"}})
    };
    params(base()).validate(None).unwrap();
    let err = |v| params(v).validate(None).unwrap_err().to_string();
    let mut both = base();
    both["pre"] = json!(["sync"]);
    assert!(
        err(both).starts_with("hooks.session: give either hooks.session"),
        "the two forms are exclusive"
    );
    let mut no_command = base();
    no_command["session"]["command"] = json!([]);
    assert!(err(no_command).starts_with("hooks.session.command: missing"));
    let mut no_freeze = base();
    no_freeze["session"]["freeze"] = json!(" ");
    assert!(err(no_freeze).starts_with("hooks.session.freeze: missing"));
    let mut no_thaw = base();
    no_thaw["session"]["thaw"] = json!("");
    assert!(err(no_thaw).starts_with("hooks.session.thaw: missing"));
    let mut bad_marker = base();
    bad_marker["session"]["marker"] = json!("SELECT 'done';");
    assert!(err(bad_marker).starts_with("hooks.session.marker: expected a statement that prints \"snapstage-marker-\" followed by {nonce}"));
    let mut unknown = base();
    unknown["session"]["frozenWhen"] = json!("x");
    assert!(serde_json::from_value::<HookParams>(unknown).is_err());
    assert_eq!(
        params(base()).describe(None),
        "would hold a session [\"mariadb\", \"--batch\"] in pod p/db-0: freeze \"FLUSH TABLES WITH READ LOCK;\" until the snapshots are cut, then thaw \"UNLOCK TABLES;\" (at most 30 s)"
    );
}
