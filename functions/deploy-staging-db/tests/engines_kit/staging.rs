//! What snapstage renders and applies for a request, as the engine tests run it: the plan, the
//! Secret with credentials generated as the apply generates them, the database pod, the Jobs, and
//! the world around the pods.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use snapstage::job::contract::Execution;
use snapstage::job::params::{Layer, merge};
use snapstage::staging::credentials::Credentials;
use snapstage::staging::plan::Plan;
use snapstage::staging::render::jobs::{self, JobKind};
use snapstage::staging::{self, Params};

use super::pod::{self, Ran, World};
use super::{Engines, TempDir, chown_db};

pub const NOW: &str = "2025-06-01T12:00:00Z";
pub const KEY: &str = "direct/engines";

pub fn now() -> Timestamp {
    NOW.parse().unwrap()
}

pub fn params(request: &Value) -> Params {
    let Value::Object(values) = request.clone() else {
        panic!("not an object")
    };
    merge(&[Layer {
        source: "request",
        values,
    }])
    .unwrap()
}

pub fn execution() -> Execution {
    Execution {
        key: KEY.into(),
        origin: "direct".into(),
        pipeline: None,
        commit: None,
    }
}

/// What snapstage renders and applies for `request`: the plan, and the Secret with the credentials
/// generated as the apply generates them.
pub struct Staging {
    pub request: Value,
    pub plan: Plan,
    pub secret: Secret,
    pub password: String,
}

impl Staging {
    pub fn new(request: Value) -> Self {
        let plan = staging::plan(params(&request), &execution(), now()).unwrap();
        let secret = Credentials::generate(&plan.spec.database_user)
            .unwrap()
            .into_secret(
                plan.rendered
                    .secret
                    .as_ref()
                    .expect("a database has a credentials Secret"),
            );
        let password =
            String::from_utf8(secret.data.as_ref().unwrap()["password"].0.clone()).unwrap();
        Self {
            request,
            plan,
            secret,
            password,
        }
    }

    /// The database pod's spec, and its init container `credentials-reset`.
    pub fn database_pod(&self) -> (PodSpec, Container) {
        let pod = self
            .plan
            .rendered
            .builtin()
            .unwrap()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        let reset = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "credentials-reset")
            .expect("the database pod's init container credentials-reset")
            .clone();
        (pod, reset)
    }

    /// A Job's pod spec and its one container.
    pub fn job(&self, kind: JobKind) -> (PodSpec, Container) {
        let job = jobs::render(&self.plan.spec, kind).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let c = pod.containers[0].clone();
        (pod, c)
    }

    /// Everything snapstage would put into the staging namespace, as JSON text.
    pub fn every_object(&self) -> String {
        let mut all = self.plan.to_yaml().unwrap();
        all.push_str(&serde_json::to_string(&self.secret).unwrap());
        for kind in [JobKind::Masking, JobKind::Migration] {
            all.push_str(&serde_json::to_string(&jobs::render(&self.plan.spec, kind)).unwrap());
        }
        all
    }

    /// The cluster around the pods: the Secret, the restored volume, the ConfigMaps, the image's
    /// environment and, once it runs, the Service in front of the staging server.
    pub fn world(&self, e: &Engines, volume: &Path, config_maps: &[(&str, &Path)]) -> World {
        World {
            secrets: BTreeMap::from([(
                self.secret.metadata.name.clone().unwrap(),
                self.secret.clone(),
            )]),
            claims: BTreeMap::from([(self.plan.rendered.claim_name.clone(), volume.to_path_buf())]),
            config_maps: config_maps
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
            image_env: vec![
                ("PATH".into(), e.image_path()),
                ("HOME".into(), "/".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            service: None,
        }
    }

    pub fn with_service(&self, mut world: World, local_port: u16) -> World {
        let host = format!(
            "{}.{}.svc.cluster.local",
            self.plan.service_name(),
            self.plan.spec.namespace
        );
        world.service = Some((host, self.plan.port().to_string(), local_port));
        world
    }
}

/// A ConfigMap's files in a directory readable by the pods' user.
pub fn config_map(root: &TempDir, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = root.dir(&format!("configmap-{name}"));
    for (file, text) in files {
        fs::write(dir.join(file), text).unwrap();
        chown_db(&dir.join(file));
    }
    dir
}

pub fn run(pod: &PodSpec, c: &Container, world: &World) -> Ran {
    pod::run(pod, c, world, Duration::from_secs(300))
}
