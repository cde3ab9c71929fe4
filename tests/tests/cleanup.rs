//! Cleanup deletes what snapstage made and nothing else: deploy-staging-db's teardown and TTL
//! sweep delete the staging namespace, the run's PersistentVolume object and the staging EBS
//! volume restore-to-staging made; a production volume, a staging volume marked production after
//! the deploy and a deletion-protected one survive; a volume still attached waits (its PV object
//! kept, the record of its id) until a later sweep finds it detached.
//!
//! The real function binaries, through the pipeline driver, against moto (EC2) and the local
//! Kubernetes control plane (`scripts/localkube.sh`), deploy-staging-db as its own RBAC user.
//! Needs moto, the control plane and the function binaries (`cargo build --workspace --bins`);
//! prints SKIP otherwise (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Tag;
use common::{bin_dir, moto};
use serde_json::{Value, json};
use snapstage_localenv::invoker::{CliInvoker, Functions};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::pipeline::{self, Action, Options, Pipeline, Run, RunStatus};
use snapstage_localenv::seed::{self, AVAILABILITY_ZONE, Clients};

const WAIT: Duration = Duration::from_secs(90);

struct Env<'a> {
    kube: &'a LocalKube,
    clients: &'a Clients,
    jobs: &'a JobService,
    invoker: &'a CliInvoker,
    production: String,
}

/// A staging environment: its namespace and its staging EBS volume.
struct Staged {
    namespace: String,
    volume: String,
}

fn options() -> Options {
    Options {
        max_rounds: 400,
        poll_delay: Duration::from_millis(250),
    }
}

impl Env<'_> {
    fn cluster(&self) -> Value {
        json!({"kubeconfigFile": self.kube.kubeconfig("deploy-staging-db")})
    }

    async fn run(&self, actions: Vec<Action>) -> Run {
        let p = Pipeline {
            name: "cleanup".into(),
            actions,
        };
        let run = pipeline::run(&p, self.jobs, self.invoker, &options())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
        run
    }

    /// Snapshot, restore and deploy, as one pipeline execution: a staging namespace on a new
    /// staging EBS volume.
    async fn stage(&self) -> Staged {
        let snapshot = json!({"volumeIds": [self.production]});
        let restore = format!(
            r##"{{"snapshotId": "#{{Snapshot.SnapshotId}}", "availabilityZone": "{AVAILABILITY_ZONE}"}}"##
        );
        let deploy = json!({"volumeId": "#{Restore.VolumeId}", "engine": "postgresql",
                            "availabilityZone": AVAILABILITY_ZONE, "cluster": self.cluster()});
        let run = self
            .run(vec![
                Action::new(
                    "Snapshot",
                    "Snapshot",
                    "snapshot-production",
                    &snapshot.to_string(),
                ),
                Action::new("Restore", "Restore", "restore-to-staging", &restore),
                Action::new(
                    "Deploy",
                    "StagingDb",
                    "deploy-staging-db",
                    &deploy.to_string(),
                ),
            ])
            .await;
        let staged = Staged {
            namespace: run.variable("StagingDb", "Namespace").unwrap().to_string(),
            volume: run.variable("Restore", "VolumeId").unwrap().to_string(),
        };
        let pv = self
            .kube
            .get_json("pv", None, &format!("{}-data", staged.namespace))
            .unwrap();
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], staged.volume.as_str());
        staged
    }

    /// One deploy-staging-db action (teardown, sweep): its summary and outputs.
    async fn step(&self, params: Value) -> (String, Run) {
        let run = self
            .run(vec![Action::new(
                "Cleanup",
                "Cleanup",
                "deploy-staging-db",
                &params.to_string(),
            )])
            .await;
        let summary = run
            .timeline
            .entries
            .last()
            .map(|e| e.summary.clone())
            .unwrap_or_default();
        (summary, run)
    }

    async fn teardown(&self, namespace: &str) -> (String, Run) {
        self.step(json!({"action": "teardown", "namespace": namespace, "cluster": self.cluster()}))
            .await
    }

    async fn sweep(&self) -> (String, Run) {
        self.step(json!({"action": "sweep", "cluster": self.cluster()}))
            .await
    }

    async fn tag(&self, volume: &str, key: &str, value: &str) {
        self.clients
            .ec2
            .create_tags()
            .resources(volume)
            .tags(Tag::builder().key(key).value(value).build())
            .send()
            .await
            .unwrap();
    }

    /// The volume's state in moto; `None` once it is deleted.
    async fn volume_state(&self, volume: &str) -> Option<String> {
        match self
            .clients
            .ec2
            .describe_volumes()
            .volume_ids(volume)
            .send()
            .await
        {
            Ok(out) => out.volumes().first().map(|v| {
                v.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default()
            }),
            Err(e) if e.code() == Some("InvalidVolume.NotFound") => None,
            Err(e) => panic!("DescribeVolumes {volume}: {e:?}"),
        }
    }

    /// The namespace is deleted (gone, or terminating) and the run's PV object is gone.
    fn assert_removed(&self, staged: &Staged) {
        let ns = self.kube.get_json("namespace", None, &staged.namespace);
        assert!(
            ns.as_ref()
                .is_none_or(|n| n["status"]["phase"] == "Terminating"),
            "{ns:?}"
        );
        let pv = format!("{}-data", staged.namespace);
        self.kube.eventually(&format!("PV {pv} deleted"), WAIT, || {
            self.kube.get_json("pv", None, &pv).is_none().then_some(())
        });
    }

    /// Makes `staged`'s namespace expired, as time would.
    fn expire(&self, staged: &Staged) {
        self.kube.kubectl(
            &[
                "annotate",
                "--overwrite",
                "namespace",
                &staged.namespace,
                "snapstage.io/expires-at=2020-01-01T00:00:00Z",
            ],
            None,
        );
    }
}

#[tokio::test]
async fn teardown_and_sweep_delete_the_staging_volumes_snapstage_made_and_nothing_else() {
    const TEST: &str = "teardown_and_sweep_delete_the_staging_volumes";
    let Some((cloud, onprem)) = moto(TEST) else {
        return;
    };
    let Some(kube) = LocalKube::get(TEST) else {
        return;
    };
    let clients = Clients::new(&cloud, &onprem).await;
    let demo = seed::seed(&clients).await.unwrap();
    let jobs = JobService::start().await.unwrap();
    // SNAPSTAGE_BIN_DIR: a private copy of the function binaries, when several checkouts share
    // one target directory (each build replaces `<target-dir>/debug/<function>`).
    let bins = std::env::var_os("SNAPSTAGE_BIN_DIR").map_or_else(bin_dir, Into::into);
    let invoker = CliInvoker::new(Functions::new(bins, &jobs.url).moto(&cloud));
    let env = Env {
        kube: &kube,
        clients: &clients,
        jobs: &jobs,
        invoker: &invoker,
        production: demo.production_volume_id.clone(),
    };

    // Three environments: a plain one, one whose volume is then deletion-protected, one whose
    // volume someone then marks production.
    let plain = env.stage().await;
    let protected = env.stage().await;
    env.tag(&protected.volume, "snapstage:deletion-protection", "true")
        .await;
    let marked = env.stage().await;
    env.tag(&marked.volume, "Environment", "Production").await;

    // A dry run says what teardown would do and deletes nothing.
    let (summary, _) = env
        .step(json!({"action": "teardown", "namespace": plain.namespace,
                     "cluster": env.cluster(), "dryRun": true}))
        .await;
    assert!(
        summary.contains(&format!("would delete EBS volume {}", plain.volume)),
        "{summary}"
    );
    assert_eq!(
        env.volume_state(&plain.volume).await.as_deref(),
        Some("available")
    );

    // Teardown: the namespace, the PV object and the staging volume.
    let (summary, run) = env.teardown(&plain.namespace).await;
    assert!(
        summary.contains(&format!("deleted EBS volume {}", plain.volume)),
        "{summary}"
    );
    assert_eq!(run.variable("Cleanup", "VolumesDeleted"), Some("1"));
    env.assert_removed(&plain);
    assert_eq!(
        env.volume_state(&plain.volume).await,
        None,
        "the staging volume is deleted"
    );

    // Deletion-protected, and production-marked: namespace and PV object go, the volume stays.
    for (staged, why) in [
        (
            &protected,
            "deletion-protected (tag snapstage:deletion-protection=true)",
        ),
        (
            &marked,
            "it is marked production (tag Environment=Production)",
        ),
    ] {
        let (summary, run) = env.teardown(&staged.namespace).await;
        assert!(
            summary.contains(&format!("kept EBS volume {}: {why}", staged.volume)),
            "{summary}"
        );
        assert_eq!(run.variable("Cleanup", "VolumesKept"), Some("1"));
        env.assert_removed(staged);
        assert_eq!(
            env.volume_state(&staged.volume).await.as_deref(),
            Some("available"),
            "{why}: the volume survives"
        );
    }

    // The sweep, over an expired namespace: the same, and a volume still attached waits.
    let expired = env.stage().await;
    let attached = env.stage().await;
    env.expire(&expired);
    env.expire(&attached);
    let instance = clients
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .placement(
            aws_sdk_ec2::types::Placement::builder()
                .availability_zone(AVAILABILITY_ZONE)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    clients
        .ec2
        .attach_volume()
        .volume_id(&attached.volume)
        .instance_id(&instance)
        .device("/dev/sdf")
        .send()
        .await
        .unwrap();
    let (summary, _) = env.sweep().await;
    assert!(
        summary.contains(&format!("deleted EBS volume {}", expired.volume)),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "waiting for EBS volume {} to be detached",
            attached.volume
        )),
        "{summary}"
    );
    env.assert_removed(&expired);
    assert_eq!(env.volume_state(&expired.volume).await, None);
    assert_eq!(
        env.volume_state(&attached.volume).await.as_deref(),
        Some("in-use")
    );
    let attached_pv = format!("{}-data", attached.namespace);
    assert!(
        kube.get_json("pv", None, &attached_pv).is_some(),
        "the PV object of a volume still attached is kept: it records the volume's id"
    );

    // Detached: the next sweep deletes the volume, then its PV object.
    clients
        .ec2
        .detach_volume()
        .volume_id(&attached.volume)
        .instance_id(&instance)
        .send()
        .await
        .unwrap();
    let (summary, _) = env.sweep().await;
    assert!(
        summary.contains(&format!("deleted EBS volume {}", attached.volume)),
        "{summary}"
    );
    assert_eq!(env.volume_state(&attached.volume).await, None);
    env.assert_removed(&attached);

    // Nothing else was touched: production's volume, the protected and the marked ones.
    for v in [
        &demo.production_volume_id,
        &protected.volume,
        &marked.volume,
    ] {
        assert_eq!(
            env.volume_state(v).await.as_deref(),
            Some("available"),
            "{v} survives"
        );
    }
}
