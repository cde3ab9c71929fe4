//! The hybrid Jenkins/Nexus flow end to end (issue 15), as `make demo-hybrid` runs it
//! ([`snapstage_localenv::hybrid`]): the on-prem protection group replicated to Cloud Block
//! Store, both volumes restored there to chosen names in one action, Jenkins and Nexus Ready on
//! them in the cloud, an artifact published to the cloud Nexus, and the on-prem Nexus rehydrated
//! by the CLI as a Jenkins stage runs it: stopped, its volume overwritten, started, Ready.
//!
//! Needs moto, the local control plane, `.venv` for the FlashArray double and the function
//! binaries; prints SKIP otherwise (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::bin_dir;
use serde_json::json;
use snapstage_localenv::hybrid::{
    self, CLOUD, CLOUD_JENKINS, CLOUD_NEXUS, JENKINS_HOME, NEXUS_BLOBS, ONPREM, PUBLISHED, Site,
};
use snapstage_localenv::invoker::CliInvoker;
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::testkit;

#[tokio::test]
async fn jenkins_and_nexus_run_in_the_cloud_and_the_onprem_nexus_gets_what_the_cloud_published() {
    let Some(m) = testkit::moto("hybrid flow") else {
        return;
    };
    let Some(kube) = LocalKube::get("hybrid flow") else {
        return;
    };
    let Some(site) = Site::prepare(&m.cloud, kube).await.unwrap() else {
        return;
    };
    let before = site.arrays.files(ONPREM, NEXUS_BLOBS).await;
    let jobs = JobService::start().await.unwrap();
    let functions = hybrid::functions(&bin_dir(), &jobs, &m.cloud);
    let invoker = CliInvoker::new(functions.clone());
    let report = hybrid::run(&site, &jobs, &invoker, &functions)
        .await
        .unwrap();
    assert!(report.run.succeeded(), "{}", report.run.timeline);

    // Restore: both volumes of the one group snapshot, to the names chosen, in one action.
    let run = &report.run;
    assert_eq!(
        run.variable("Restore", "JenkinsVolumeId"),
        Some(CLOUD_JENKINS)
    );
    assert_eq!(run.variable("Restore", "NexusVolumeId"), Some(CLOUD_NEXUS));
    let cloud = site.arrays.state(CLOUD).await;
    for (copy, source) in [(CLOUD_JENKINS, JENKINS_HOME), (CLOUD_NEXUS, NEXUS_BLOBS)] {
        assert!(
            cloud["volumes"][copy].is_object(),
            "{copy} on {CLOUD}: {cloud}"
        );
        assert_eq!(
            site.arrays
                .files(CLOUD, copy)
                .await
                .get("config.xml")
                .is_some(),
            source == JENKINS_HOME,
            "{copy} holds {source}'s data"
        );
    }

    // Jenkins and Nexus Ready in their cloud namespaces, each on its restored volume, probed on
    // its HTTP health endpoint.
    for (ns, app, volume, path) in [
        (
            &report.jenkins_namespace,
            "jenkins",
            CLOUD_JENKINS,
            "/login",
        ),
        (
            &report.nexus_namespace,
            "nexus",
            CLOUD_NEXUS,
            "/service/rest/v1/status/writable",
        ),
    ] {
        let ns = ns
            .as_deref()
            .unwrap_or_else(|| panic!("{app}: no Namespace output"));
        let sts = site.kube.get_json("statefulset", Some(ns), app).unwrap();
        assert_eq!(sts["status"]["readyReplicas"], json!(1), "{app}: {sts}");
        let probe = &sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["httpGet"]["path"], json!(path), "{app}: {probe}");
        let pvs = site.kube.list("pv", None);
        assert!(
            pvs.iter()
                .any(|pv| pv["spec"]["csi"]["volumeHandle"] == json!(volume)
                    && pv["spec"]["claimRef"]["namespace"] == json!(ns)),
            "{app}: no PV of {volume} bound into {ns}"
        );
    }

    // On-prem: the rehydrate stage succeeded, Nexus is back, and its volume holds what the cloud
    // published, together with what it held before.
    assert_eq!(report.rehydrate_code, 0, "{}", report.rehydrate);
    assert_eq!(report.onprem_ready, 1);
    assert!(
        report.onprem_files.get(PUBLISHED).is_some(),
        "{}",
        report.onprem_files
    );
    for (k, _) in before.as_object().unwrap() {
        assert!(
            report.onprem_files.get(k).is_some(),
            "{k} lost: {}",
            report.onprem_files
        );
    }
    assert!(report.succeeded());
    site.arrays.assert_no_violations().await;
}
