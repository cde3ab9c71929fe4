//! The Jobs run against the staging database once it is ready: data masking (before anything is
//! published) and the migration check. Each is one pod, non-root under the namespace's
//! restricted Pod Security Standard, with the database's address and credentials in its
//! environment (credentials from the Secret, never literal):
//!
//! | variable | value |
//! | --- | --- |
//! | `DB_HOST`, `DB_PORT`, `DB_ENGINE` | the Service's DNS name, the port, `postgresql` / `mysql` / `mongodb` |
//! | `DB_USERNAME`, `DB_PASSWORD` | from the Secret `staging-db-credentials` |
//! | `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` | postgresql: what `psql` reads |
//! | `MYSQL_HOST`, `MYSQL_TCP_PORT`, `MYSQL_PWD` | mysql: what the `mysql` client reads |
//!
//! `scriptsConfigMap` is mounted read-only at `/scripts`.
//!
//! They connect as the staging user with the generated password: the credentials reset
//! ([`crate::staging::render::reset`]) set it on the restored data before the server started.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::kube::labels::LABEL_COMPONENT;
use crate::staging::engine::{Engine, SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME};
use crate::staging::objects::{SECRET_NAME, SERVICE_NAME};
use crate::staging::params::JobParams;
use crate::staging::spec::Spec;

pub const SCRIPTS_PATH: &str = "/scripts";
/// The label the Job controller puts on its pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// Which Job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Masking,
    Migration,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Masking => "masking",
            Self::Migration => "migration",
        }
    }

    /// Minutes it may run (its `activeDeadlineSeconds`).
    pub fn timeout_minutes(self, spec: &Spec) -> u16 {
        self.params(spec).map_or(0, JobParams::timeout_minutes)
    }

    /// True when it is configured for this deploy.
    pub fn configured(self, spec: &Spec) -> bool {
        self.params(spec).is_some()
    }

    /// `staging-db-masking`, `staging-db-migration`.
    pub fn job_name(self) -> String {
        format!("{}-{}", crate::staging::objects::INSTANCE, self.as_str())
    }

    /// Its parameters in the spec, if configured.
    pub fn params(self, spec: &Spec) -> Option<&JobParams> {
        match self {
            Self::Masking => spec.masking.as_ref(),
            Self::Migration => spec.migration.as_ref(),
        }
    }
}

fn literal(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn from_secret(name: &str, key: &str) -> EnvVar {
    crate::staging::render::parts::secret_env(name, SECRET_NAME, key)
}

/// The database's address and credentials, as the job's environment.
pub fn environment(spec: &Spec) -> Vec<EnvVar> {
    let host = format!("{SERVICE_NAME}.{}.svc.cluster.local", spec.namespace);
    let port = spec.engine.port().to_string();
    let mut env = vec![
        literal("DB_HOST", host.clone()),
        literal("DB_PORT", port.clone()),
        literal("DB_ENGINE", spec.engine.as_str().into()),
        from_secret("DB_USERNAME", SECRET_KEY_USERNAME),
        from_secret("DB_PASSWORD", SECRET_KEY_PASSWORD),
    ];
    match spec.engine {
        Engine::Postgresql => env.extend([
            literal("PGHOST", host),
            literal("PGPORT", port),
            from_secret("PGUSER", SECRET_KEY_USERNAME),
            from_secret("PGPASSWORD", SECRET_KEY_PASSWORD),
        ]),
        Engine::Mysql => env.extend([
            literal("MYSQL_HOST", host),
            literal("MYSQL_TCP_PORT", port),
            from_secret("MYSQL_PWD", SECRET_KEY_PASSWORD),
        ]),
        Engine::Mongodb | Engine::Jenkins | Engine::Nexus => {}
    }
    env
}

/// The Job for `kind`, or `None` when it is not configured.
pub fn render(spec: &Spec, kind: JobKind) -> Option<Job> {
    let p = kind.params(spec)?;
    Some(job(
        spec,
        kind,
        p.image.0.clone(),
        p.command.0.clone(),
        environment(spec),
        p.scripts_config_map.as_ref().map(|c| c.0.as_str()),
    ))
}

fn job(
    spec: &Spec,
    kind: JobKind,
    image: String,
    command: Vec<String>,
    env: Vec<EnvVar>,
    scripts_config_map: Option<&str>,
) -> Job {
    let name = kind.job_name();
    let mut labels = crate::staging::render::parts::app_labels(spec);
    labels.insert(LABEL_COMPONENT.into(), kind.as_str().into());
    let (volumes, mounts) = match scripts_config_map {
        Some(cm) => (
            Some(vec![Volume {
                name: "scripts".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: cm.to_string(),
                    default_mode: Some(0o555),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            Some(vec![VolumeMount {
                name: "scripts".into(),
                mount_path: SCRIPTS_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
        ),
        None => (None, None),
    };
    let uid = spec.engine.user_id();
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // One retry for a transient failure (the database restarting); then the Job fails.
            backoff_limit: Some(1),
            active_deadline_seconds: Some(i64::from(kind.timeout_minutes(spec)) * 60),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(uid),
                        run_as_group: Some(uid),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: kind.as_str().into(),
                        image: Some(image),
                        image_pull_policy: Some("IfNotPresent".into()),
                        command: Some(command),
                        env: Some(env),
                        volume_mounts: mounts,
                        resources: Some(ResourceRequirements {
                            requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
                            limits: Some(quantities(&[("cpu", "1"), ("memory", "1Gi")])),
                            ..Default::default()
                        }),
                        security_context: Some(
                            crate::staging::render::parts::restricted_container(),
                        ),
                        // A failed Job is reported with its last log lines (the check's own words).
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        ..Default::default()
                    }],
                    volumes,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::fixtures::plan_for;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> Spec {
        let mut req = json!({"volumeId": "vol-0123456789abcdef0"});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        plan_for(req).spec
    }

    #[test]
    fn masking_job_reads_credentials_from_the_secret_and_mounts_scripts() {
        let s = spec(
            json!({"masking": {"image": "postgres:17", "command": ["psql", "-f", "/scripts/mask.sql"], "scriptsConfigMap": "mask-sql"}}),
        );
        let job = render(&s, JobKind::Masking).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("staging-db-masking"));
        assert_eq!(job.metadata.namespace, Some(s.namespace.clone()));
        crate::kube::object::check_object(&job, crate::kube::object::NameRule::Dns1123Subdomain)
            .unwrap();
        let js = job.spec.unwrap();
        assert_eq!(js.active_deadline_seconds, Some(3600));
        let pod = js.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(
            c.command.clone().unwrap(),
            ["psql", "-f", "/scripts/mask.sql"]
        );
        let env = c.env.clone().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(
            get("PGHOST").value.unwrap(),
            format!("staging-db.{}.svc.cluster.local", s.namespace)
        );
        for secret in ["DB_PASSWORD", "PGPASSWORD", "DB_USERNAME"] {
            let e = get(secret);
            assert_eq!(e.value, None, "{secret} is never literal");
            assert_eq!(
                e.value_from.unwrap().secret_key_ref.unwrap().name,
                "staging-db-credentials"
            );
        }
        assert_eq!(
            pod.volumes.unwrap()[0].config_map.clone().unwrap().name,
            "mask-sql"
        );
        assert_eq!(c.volume_mounts.clone().unwrap()[0].mount_path, "/scripts");
        assert_eq!(
            pod.security_context.unwrap().run_as_non_root,
            Some(true),
            "restricted Pod Security Standard"
        );
        assert!(render(&s, JobKind::Migration).is_none());
    }

    #[test]
    fn mysql_migration_job_gets_the_mysql_client_variables() {
        let s = spec(
            json!({"engine": "mysql", "migration": {"image": "flyway/flyway:10", "command": ["flyway", "validate"], "timeoutMinutes": 5}}),
        );
        let job = render(&s, JobKind::Migration).unwrap();
        let js = job.spec.unwrap();
        assert_eq!(js.active_deadline_seconds, Some(300));
        let env = js.template.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "MYSQL_PWD" && e.value.is_none())
        );
        assert!(!env.iter().any(|e| e.name.starts_with("PG")));
    }
}
