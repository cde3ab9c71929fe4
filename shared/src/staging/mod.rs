//! The staging database on Kubernetes (`deploy-staging-db`): parameters → typed manifests →
//! validation → server-side apply → readiness → optional masking and migration Jobs → outputs;
//! and deleting staging namespaces (teardown, TTL sweep).
//!
//! [`step`] picks the mode: with no `cluster` configured, or `dryRun: true`, a deploy only plans
//! ([`plan()`] renders and validates everything and says exactly which requests applying would
//! send; no cluster is contacted). Otherwise [`run`] applies, waits through continuations and
//! publishes the outputs.
//!
//! The modules in pipeline order; each uses only the ones above it (and the [`crate::kube`]
//! layer below the whole module), so there is no import cycle:
//!
//! | module | what |
//! | --- | --- |
//! | [`engine`] | per engine: image, port, data directory, probe, credentials' env, isolation options |
//! | [`objects`] | the fixed names of the staging objects; the CSI drivers a staging volume comes from |
//! | [`credentials`] | generated once, when the Secret does not exist; never logged |
//! | [`readiness`] | what PVC, StatefulSet, pod and Job status mean |
//! | [`params`] | the parameters as the user writes them ([`params::template`], [`params::network`] sections) |
//! | [`apps`] | the built-in templates of the CI applications (Jenkins, Nexus) |
//! | [`spec`] | the parameters checked together into a [`Spec`], what rendering needs |
//! | [`render`] | the typed objects: Namespace, Secret, PV, PVC, Service, StatefulSet ([`render::parts`]); the credentials reset ([`render::reset`]), NetworkPolicies ([`render::network`]), masking and migration Jobs ([`render::jobs`]), the user's template ([`render::template`]) |
//! | [`validate`] | cross-object references and the built-in objects' rules (each object's own checks: [`crate::kube::object`]) |
//! | [`apply`] | the server-side apply requests a plan lists (kube-core's request builder) |
//! | [`mod@plan`] | the [`Plan`]: spec, rendered objects, apply requests, plan-mode outputs |
//! | [`guard`] | the production interlock on the imported volume, before any apply and in plan mode |
//! | [`artifact`] | a template file inside a CodePipeline input artifact (zip in S3) |
//! | [`teardown`] | deleting one staging namespace and its volumes, sweeping expired ones |
//! | [`rollback`] | healthy marks, and the previous healthy environment of a pipeline |
//! | [`deploy`] | apply, then one readiness check per invocation, then the Jobs |
//!
//! Credentials: the planned Secret has no data; its values are generated at apply time and
//! never appear in outputs or logs.

use k8s_openapi::jiff::Timestamp;

use crate::error::{Error, Result};
use crate::interlock::VolumeMarks;
use crate::job::contract::{Execution, Outcome, Step};

// In pipeline order: each module uses only the ones above it.
pub mod apply;
pub mod apps;
pub mod artifact;
pub mod credentials;
pub mod deploy;
pub mod engine;
pub mod guard;
pub mod objects;
pub mod params;
pub mod plan;
pub mod readiness;
pub mod render;
pub mod rollback;
pub mod spec;
pub mod teardown;
pub mod validate;

pub use apply::ApplyRequest;
pub use deploy::{DeployState, MODE_APPLIED};
pub use engine::Engine;
pub use params::{Action, OnFailure, Params, VolumeBackend, VolumeSource};
pub use plan::{DRY_RUN, MODE_PLAN, NO_CLUSTER, Plan, plan};
pub use render::Rendered;
pub use spec::Spec;

/// Why a run without a cluster fails when `requireCluster` is set (the stack sets it).
pub const CLUSTER_REQUIRED: &str = "no cluster is configured, and requireCluster is true (the stack sets it so that a pipeline never passes without a database): set the cluster parameter (the stack's EksClusterName) to deploy, or ask for a plan explicitly with dryRun: true (the stack's StagingDbPlanOnly)";

/// The whole step of `deploy-staging-db`: plan mode without a cluster (any action) or with
/// `dryRun` (deploy); otherwise connect to the configured cluster (fresh credentials every
/// invocation) and [`run`]. `volumes` reads the imported volume's tags for the production
/// interlock ([`guard`]), in plan mode too.
pub async fn step(
    sdk: &aws_config::SdkConfig,
    volumes: &dyn VolumeMarks,
    mut step: Step<Params>,
) -> Result<Outcome> {
    if step.params.action == Action::Deploy
        && let Some(crate::staging::params::template::TemplateParam::Artifact(file)) =
            &step.params.template
    {
        let text = artifact::fetch(sdk, file, step.artifacts.as_ref()).await?;
        step.params.fetched_template = Some(text);
    }
    let Some(cluster) = step.params.cluster.clone() else {
        if step.params.require_cluster && !step.params.dry_run {
            return Err(Error::Configuration(CLUSTER_REQUIRED.into()));
        }
        return match step.params.action {
            Action::Deploy => plan_step(step, NO_CLUSTER, volumes, None).await,
            Action::Teardown | Action::Sweep => teardown::plan_only(&step.params),
        };
    };
    if step.params.action == Action::Deploy && step.params.dry_run {
        // The cluster is read (never changed) only when the imported volume lives there.
        let client = match step.params.backend {
            VolumeBackend::Ebs => None,
            _ => Some(crate::kube::client::connect(&cluster, sdk).await?),
        };
        return plan_step(step, DRY_RUN, volumes, client.as_ref()).await;
    }
    let client = crate::kube::client::connect(&cluster, sdk).await?;
    tracing::info!(cluster = %cluster.describe(), action = step.params.action.as_str(), "connected");
    run(&client, step, Timestamp::now(), volumes).await
}

/// Checks a request as the step does before contacting anything (samples, tests): a deploy
/// plans, a teardown needs its namespace.
pub fn check_request(params: Params, execution: &Execution, now: Timestamp) -> Result<()> {
    match params.action {
        Action::Deploy => plan(params, execution, now).map(|_| ()),
        Action::Teardown | Action::Sweep => teardown::plan_only(&params).map(|_| ()),
    }
}

/// One step against a cluster: deploy (or resume one), teardown, or sweep. `now` is the clock;
/// `volumes` reads the imported volume's tags for the production interlock ([`guard`]), and
/// deletes the staging volumes teardown and the sweep remove ([`teardown`]).
pub async fn run(
    client: &kube::Client,
    step: Step<Params>,
    now: Timestamp,
    volumes: &dyn VolumeMarks,
) -> Result<Outcome> {
    match step.params.action {
        Action::Deploy if step.params.dry_run => {
            plan_step(step, DRY_RUN, volumes, Some(client)).await
        }
        Action::Deploy => {
            let state = step
                .state
                .filter(|v| !v.is_null())
                .map(DeployState::from_value)
                .transpose()?;
            let plan = plan(step.params, &step.execution, now)?;
            if state.is_none() {
                plan.log_requests();
            }
            let first = deploy::First {
                volumes,
                execution: &step.execution,
            };
            deploy::deploy(client, &plan, state, now, first).await
        }
        Action::Teardown | Action::Sweep => {
            let storage = teardown::Storage {
                volumes,
                array: step.params.flasharray.as_ref(),
            };
            match step.params.action {
                Action::Teardown => {
                    teardown::teardown(client, &step.params, storage, step.state, now).await
                }
                _ => {
                    let dry_run = step.params.dry_run;
                    teardown::sweep(client, storage, dry_run, now, step.deadline, step.state).await
                }
            }
        }
    }
}

/// A deploy in plan mode: plan now, check the imported volume (the interlock; the cluster is
/// read only when `client` is given), log the requests, finish. `why` says why nothing is
/// applied. Idempotent: the same execution plans the same namespace and objects (only
/// `expires-at` moves).
pub async fn plan_step(
    step: Step<Params>,
    why: &str,
    volumes: &dyn VolumeMarks,
    client: Option<&kube::Client>,
) -> Result<Outcome> {
    let plan = plan(step.params, &step.execution, Timestamp::now())?;
    let view = client.map(|client| guard::ClusterView { client });
    let checked = guard::check(&plan.spec, &step.execution, volumes, view).await?;
    if let VolumeSource::Ebs {
        zone: None,
        volume_id,
    } = &plan.spec.volume
    {
        tracing::warn!(volume_id = %volume_id, "no availabilityZone: the pod may be scheduled in a zone where the EBS volume cannot attach");
    }
    tracing::info!(
        namespace = %plan.spec.namespace,
        engine = %plan.spec.engine,
        manifests = plan.manifest_count(),
        "plan only: no cluster is contacted"
    );
    plan.log_requests();
    let Outcome::Done { summary, outputs } = plan.outcome(why) else {
        return Err(Error::Internal("a plan finishes in one step".into()));
    };
    Ok(Outcome::Done {
        summary: crate::job::codepipeline::truncate(&format!("{summary} {}.", checked.note), 2000),
        outputs,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::job::params::{Layer, merge};
    use serde_json::Value;

    pub const NOW: &str = "2025-06-01T12:00:00Z";

    pub fn execution(key: &str) -> Execution {
        Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        }
    }

    pub fn try_plan(request: Value) -> Result<Plan> {
        let Value::Object(values) = request else {
            panic!("not an object")
        };
        let params: Params = merge(&[Layer {
            source: "request",
            values,
        }])?;
        plan(params, &execution("direct/fixture"), NOW.parse().unwrap())
    }

    pub fn plan_for(request: Value) -> Plan {
        try_plan(request).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_outputs_say_where_the_database_will_be() {
        let p = plan_for(
            json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a"}),
        );
        let ns = crate::kube::names::derived_namespace("direct/fixture");
        let o = p.outputs();
        assert_eq!(o["Namespace"], ns);
        assert_eq!(o["Service"], "staging-db");
        assert_eq!(
            o["Endpoint"],
            format!("staging-db.{ns}.svc.cluster.local:5432")
        );
        assert_eq!(o["Port"], "5432");
        assert_eq!(o["SecretName"], "staging-db-credentials");
        assert_eq!(o["Engine"], "postgresql");
        assert_eq!(o["Mode"], "plan");
        assert_eq!(o["ManifestCount"], "9");
        assert_eq!(o["ExpiresAt"], "2025-06-02T12:00:00Z");
        crate::job::codepipeline::validate_output_variables(&o).unwrap();
        let Outcome::Done { summary, outputs } = p.outcome(NO_CLUSTER) else {
            panic!("plan mode finishes in one step")
        };
        assert_eq!(outputs, o);
        assert!(
            summary.starts_with("PLAN ONLY — no cluster changed: 9 manifests rendered and validated (no cluster is configured: set the cluster parameter"),
            "{summary}"
        );
        assert!(summary.contains("vol-0123456789abcdef0"), "{summary}");
        let dry = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "dryRun": true}));
        assert!(dry.summary(DRY_RUN).contains("(dryRun is true)"));
    }

    #[test]
    fn ttl_sets_the_expiry_annotation() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "ttlHours": 720}));
        let ann = p.rendered.namespace.metadata.annotations.clone().unwrap();
        assert_eq!(
            ann[crate::kube::labels::ANNOTATION_EXPIRES_AT],
            "2025-07-01T12:00:00Z"
        );
        assert_eq!(p.expires_at, "2025-07-01T12:00:00Z");
    }

    #[test]
    fn manifest_count_follows_the_backend() {
        let count = |v| plan_for(v).outputs()["ManifestCount"].clone();
        assert_eq!(
            count(json!({"backend": "pure-csi", "volumeId": "staging-db-01"})),
            "9"
        );
        assert_eq!(
            count(json!({"backend": "csi", "snapshotName": "prod-snap"})),
            "8"
        );
        assert_eq!(
            count(json!({"backend": "px-csi", "volumeId": "pod::vol"})),
            "8"
        );
    }

    #[test]
    fn each_engine_gets_its_port_in_every_output() {
        for (engine, port) in [("postgresql", 5432), ("mysql", 3306), ("mongodb", 27017)] {
            let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": engine}));
            let o = p.outputs();
            assert_eq!(o["Engine"], engine);
            assert_eq!(o["Port"], port.to_string());
            assert!(
                o["Endpoint"].ends_with(&format!(".svc.cluster.local:{port}")),
                "{o:?}"
            );
        }
    }

    #[test]
    fn yaml_stream_parses_back_into_the_same_objects() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": "mongodb"}));
        let yaml = p.to_yaml().unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 9);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "NetworkPolicy",
                "NetworkPolicy",
                "Secret",
                "PersistentVolume",
                "PersistentVolumeClaim",
                "Service",
                "StatefulSet",
                "NetworkPolicy"
            ]
        );
        let sts: k8s_openapi::api::apps::v1::StatefulSet =
            serde_json::from_value(docs[7].clone()).unwrap();
        assert_eq!(sts, p.rendered.b().stateful_set);
    }

    #[test]
    fn no_credential_reaches_outputs_or_requests() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0"}));
        let secret = p.requests.iter().find(|r| r.kind == "Secret").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&secret.body).unwrap();
        assert!(
            body.get("data").is_none() && body.get("stringData").is_none(),
            "{body}"
        );
        for r in &p.requests {
            assert!(
                !format!("{r:?}").contains("apiVersion"),
                "Debug shows no body: {r:?}"
            );
        }
    }
}
