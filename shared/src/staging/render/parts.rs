//! Pieces every rendered object shares: the app labels, the Secret-backed env vars, the
//! restricted container security context, the PV name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, SecretKeySelector, SecurityContext,
};

use crate::kube::labels::{
    LABEL_COMMIT, LABEL_EXECUTION, LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_ROLE, MANAGED_BY,
};
use crate::kube::labels::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME};
use crate::staging::engine::Engine;
use crate::staging::objects::INSTANCE;
use crate::staging::spec::Spec;

pub fn common_labels(spec: &Spec) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_PART_OF.to_string(), MANAGED_BY.to_string()),
        (LABEL_EXECUTION.to_string(), spec.execution_label.clone()),
        (LABEL_ROLE.to_string(), "staging".to_string()),
    ]);
    if let Some(c) = &spec.commit {
        l.insert(LABEL_COMMIT.to_string(), c.clone());
    }
    l
}

/// The PersistentVolume's name: cluster-scoped, so it carries the namespace.
pub fn persistent_volume_name(namespace: &str) -> String {
    format!("{namespace}-data")
}

/// The labels that select the database pod.
pub fn selector_labels(engine: Engine) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), engine.as_str().to_string()),
        (LABEL_INSTANCE.to_string(), INSTANCE.to_string()),
    ])
}

pub fn app_labels(spec: &Spec) -> BTreeMap<String, String> {
    let mut l = common_labels(spec);
    l.extend(selector_labels(spec.engine));
    l.insert(
        LABEL_COMPONENT.to_string(),
        spec.engine.component().to_string(),
    );
    l
}

/// An environment variable from a key of a Secret (never a literal value).
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// The container security context the `restricted` Pod Security Standard asks for.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}
