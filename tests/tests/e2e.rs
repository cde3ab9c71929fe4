//! The demo pipeline end to end: the four real functions against moto, driven like CodePipeline.
//!
//! The staging database is deployed for real, to the local Kubernetes control plane
//! (`scripts/localkube.sh`): the restored EBS volume imported as a static PV, bound by the real
//! PV controller, the pod scheduled and Ready (KWOK).
//!
//! Needs moto (SNAPSTAGE_MOTO_CLOUD, SNAPSTAGE_MOTO_ONPREM), the control plane, and the function
//! binaries (`cargo build --workspace --bins`; the Makefile builds them first); skipped with a
//! SKIP line when absent (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{bin_dir, lambda_invoker, moto};
use snapstage_localenv::invoker::{CliInvoker, Functions, Invoker};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::pipeline::{self, Options, RunStatus};
use snapstage_localenv::seed::{self, Clients};
use snapstage_localenv::timeline::Status;

const FUNCTIONS: [&str; 4] = [
    "snapshot-production",
    "restore-to-staging",
    "deploy-staging-db",
    "replicate-artifacts-back",
];

fn require_binaries() {
    let dir = bin_dir();
    let missing: Vec<&str> = FUNCTIONS
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "function binaries missing in {}: {}; run `cargo build --workspace --bins` first",
        dir.display(),
        missing.join(", ")
    );
}

/// Seeds, runs the demo pipeline with `invoker`, and checks what a user would look at.
async fn demo_pipeline_succeeds(
    clients: &Clients,
    kube: &LocalKube,
    jobs: &JobService,
    invoker: &impl Invoker,
) {
    let demo = seed::seed(clients).await.unwrap();
    let p = seed::demo_pipeline(
        &demo.production_volume_id,
        &demo.onprem_endpoint,
        Some(&kube.kubeconfig("deploy-staging-db")),
    );
    let run = pipeline::run(&p, jobs, invoker, &Options::default())
        .await
        .unwrap();
    eprintln!("{}", run.timeline);
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{}\n{}",
        run.timeline,
        run.summary_line(p.actions.len())
    );

    // Every action ended Succeeded.
    for a in &p.actions {
        assert_eq!(
            run.timeline.final_status(&a.name),
            Some(Status::Succeeded),
            "{}",
            a.name
        );
    }
    // Exactly one result call per job, and no rejected result.
    let calls = jobs.calls();
    for (action, ids) in &run.jobs {
        assert!(!ids.is_empty(), "{action} ran no job");
        for id in ids {
            assert_eq!(
                jobs.result_calls_for(id),
                1,
                "job {id} of {action}: {:?}",
                calls
                    .iter()
                    .filter(|c| c.job_id.as_deref() == Some(id))
                    .collect::<Vec<_>>()
            );
        }
    }
    assert!(
        calls.iter().all(|c| c.error.is_none()),
        "rejected calls: {:?}",
        calls
            .iter()
            .filter(|c| c.error.is_some())
            .collect::<Vec<_>>()
    );

    // The staging database was deployed, not planned, and publishes its endpoint; on the control
    // plane its volume is the restored EBS volume and its pod is Ready.
    assert_eq!(run.variable("StagingDb", "Mode"), Some("applied"));
    let namespace = run.variable("StagingDb", "Namespace").unwrap();
    assert_eq!(
        run.variable("StagingDb", "Endpoint"),
        Some(format!("staging-db.{namespace}.svc.cluster.local:5432").as_str()),
        "{:?}",
        run.variables
    );
    let restored_id = run.variable("Restore", "VolumeId").unwrap();
    let pvs = kube.list("pv", None);
    let pv = pvs
        .iter()
        .find(|pv| pv["spec"]["csi"]["volumeHandle"] == restored_id)
        .unwrap_or_else(|| panic!("no PV imports {restored_id}"));
    assert_eq!(pv["status"]["phase"], "Bound", "{pv}");
    let pods = kube.list("pods", Some(namespace));
    assert!(
        pods.iter().any(|p| p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")),
        "no Ready pod in {namespace}: {pods:#?}"
    );

    // The restored volume exists and is not production.
    let restored = run
        .variable("Restore", "VolumeId")
        .expect("Restore.VolumeId")
        .to_string();
    // deploy-staging-db's interlock read its tags and took it as this pipeline execution's
    // staging volume (restore-to-staging is another action of the same execution).
    // (The first Deploy invocation says it; later ones wait for the database.)
    let interlock = format!("interlock: EBS volume {restored} is this run's staging volume");
    assert!(
        run.timeline
            .entries
            .iter()
            .any(|e| e.action == "Deploy" && e.summary.contains(&interlock)),
        "{}",
        run.timeline
    );
    assert_ne!(restored, demo.production_volume_id);
    let vols = clients
        .ec2
        .describe_volumes()
        .volume_ids(&restored)
        .send()
        .await
        .unwrap();
    assert_eq!(vols.volumes().len(), 1, "{restored} not in moto");
    let snapshot = run.variable("Snapshot", "SnapshotId").unwrap();
    assert_eq!(vols.volumes()[0].snapshot_id(), Some(snapshot));

    // The on-prem bucket holds every artifact, byte for byte.
    let onprem = seed::list_keys(&clients.onprem_s3, seed::ONPREM_BUCKET, "")
        .await
        .unwrap();
    for (key, body) in seed::blob_store() {
        let tail = key.trim_start_matches(seed::ARTIFACT_PREFIX);
        let copy = onprem
            .iter()
            .find(|k| k.ends_with(tail))
            .unwrap_or_else(|| panic!("{key} not replicated; on-prem has {onprem:?}"));
        let got = clients
            .onprem_s3
            .get_object()
            .bucket(seed::ONPREM_BUCKET)
            .key(copy)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(got.as_ref(), body.as_slice(), "{copy} differs from {key}");
    }
}

#[tokio::test]
async fn demo_pipeline_with_cli_invoker() {
    let Some((cloud, onprem)) = moto("demo_pipeline_with_cli_invoker") else {
        return;
    };
    let Some(kube) = LocalKube::get("demo_pipeline_with_cli_invoker") else {
        return;
    };
    require_binaries();
    let clients = Clients::new(&cloud, &onprem).await;
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url).moto(&cloud));
    demo_pipeline_succeeds(&clients, &kube, &jobs, &invoker).await;
}

#[tokio::test]
async fn demo_pipeline_with_lambda_invoker() {
    let Some((cloud, onprem)) = moto("demo_pipeline_with_lambda_invoker") else {
        return;
    };
    let Some(kube) = LocalKube::get("demo_pipeline_with_lambda_invoker") else {
        return;
    };
    require_binaries();
    let clients = Clients::new(&cloud, &onprem).await;
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url).moto(&cloud);
    let Some(invoker) = lambda_invoker(functions, "demo_lambda").await else {
        return;
    };
    demo_pipeline_succeeds(&clients, &kube, &jobs, &invoker).await;
}
