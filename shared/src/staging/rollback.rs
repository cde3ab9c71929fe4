//! Rolling back to the previous healthy staging database (`onFailure: "rollback"`).
//!
//! A deploy that succeeds marks its namespace `snapstage.io/healthy=true` (with
//! `snapstage.io/healthy-at` and the published outputs in `snapstage.io/outputs`), next to the
//! `snapstage.io/pipeline` label every namespace of a known pipeline carries. Each new apply sets
//! the mark back to `false` until it succeeds. When a deploy fails, rollback deletes the failed
//! namespace (as `teardown` does) and names the newest other namespace of the same pipeline
//! that is healthy, snapstage's, not production, not being deleted and not expired: its
//! outputs are what the pipeline can still use. Nothing else is touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::error::Result;
use crate::kube::api;
use crate::kube::client::kube_error;
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{
    ANNOTATION_HEALTHY_AT, ANNOTATION_OUTPUTS, LABEL_HEALTHY, LABEL_MANAGED_BY, LABEL_PIPELINE,
};
use crate::kube::ownership;
use crate::staging::plan::Plan;
use crate::staging::teardown;

/// The outputs a healthy environment published and a rollback re-publishes.
pub const PUBLISHED: [&str; 6] = [
    "Namespace",
    "Service",
    "Endpoint",
    "Port",
    "SecretName",
    "Url",
];

/// A previous healthy staging database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub namespace: String,
    pub healthy_at: String,
    pub expires_at: Option<String>,
    pub outputs: BTreeMap<String, String>,
}

impl Previous {
    /// The note a failed deploy's message ends with.
    pub fn describe(&self) -> String {
        let values: Vec<String> = PUBLISHED
            .iter()
            .filter_map(|k| self.outputs.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        format!(
            "rolled back to the previous healthy staging database of this pipeline (healthy since {}{}), which still stands: {}",
            self.healthy_at,
            self.expires_at
                .as_ref()
                .map(|e| format!(", expires {e}"))
                .unwrap_or_default(),
            values.join(", ")
        )
    }
}

/// Marks the plan's namespace healthy and records what it published (a merge patch of
/// labels and annotations only).
pub async fn mark_healthy(
    client: &kube::Client,
    plan: &Plan,
    outputs: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<()> {
    let published: BTreeMap<&str, &String> = PUBLISHED
        .iter()
        .filter_map(|k| outputs.get(*k).map(|v| (*k, v)))
        .collect();
    let published = serde_json::to_string(&published).unwrap_or_default();
    let patch = json!({"metadata": {
        "labels": {LABEL_HEALTHY: "true"},
        "annotations": {ANNOTATION_HEALTHY_AT: now.to_string(), ANNOTATION_OUTPUTS: published}
    }});
    let name = plan.spec.namespace.as_str();
    let api: Api<Namespace> = Api::all(client.clone());
    let params = PatchParams {
        field_manager: Some(plan.spec.field_manager.clone()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(&format!("marking Namespace {name} healthy"), e))?;
    Ok(())
}

/// The newest healthy namespace of `pipeline` other than `failed`.
pub async fn previous_healthy(
    client: &kube::Client,
    pipeline: &str,
    failed: &str,
    now: Timestamp,
) -> Result<Option<Previous>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector =
        format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_PIPELINE}={pipeline},{LABEL_HEALTHY}=true");
    let found = api::list(&api, &ListParams::default().labels(&selector)).await?;
    let mut candidates: Vec<Previous> = found
        .iter()
        .filter(|ns| {
            ns.metadata.name.as_deref() != Some(failed)
                && ownership::is_managed(&ns.metadata)
                && !ownership::is_production(&ns.metadata)
                && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
                && teardown::expires_at(ns).is_none_or(|t| t > now)
        })
        .filter_map(|ns| {
            let ann = ns.metadata.annotations.as_ref()?;
            let outputs: BTreeMap<String, String> =
                serde_json::from_str(ann.get(ANNOTATION_OUTPUTS)?).ok()?;
            Some(Previous {
                namespace: ns.metadata.name.clone()?,
                healthy_at: ann.get(ANNOTATION_HEALTHY_AT)?.clone(),
                expires_at: teardown::expires_at(ns).map(|t| t.to_string()),
                outputs,
            })
        })
        .collect();
    candidates.sort_by(|a, b| {
        let at = |p: &Previous| p.healthy_at.parse::<Timestamp>().ok();
        at(b).cmp(&at(a))
    });
    Ok(candidates.into_iter().next())
}
