//! Deleting staging databases: one namespace on request (`action: "teardown"`), every expired
//! one (`action: "sweep"`, by the `snapstage.io/expires-at` annotation), and the namespace a
//! failed deploy created (`onFailure: "teardown"`).
//!
//! Only namespaces labelled `app.kubernetes.io/managed-by=snapstage` and not labelled production
//! are deleted, each with a UID precondition (exactly the namespace that was checked). The static
//! PersistentVolumes of a run are cluster-scoped and `Retain`: their objects are deleted too
//! (selected by the run's `snapstage.io/execution` label and reserved for a claim in that
//! namespace); the volumes behind them are left to their owner.
//!
//! A namespace whose database mounted an existing PVC (`pvcName`, annotation
//! `snapstage.io/existing-claim`) is deleted only when that PVC carries snapstage's label too:
//! deleting a namespace deletes its PVCs, and snapstage deletes nothing it did not make.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::kubeapi;
use super::ownership;
use super::params::{Action, Params};
use super::render::{
    ANNOTATION_EXISTING_CLAIM, ANNOTATION_EXPIRES_AT, LABEL_EXECUTION, LABEL_MANAGED_BY, MANAGED_BY,
};
use crate::contract::{Deadline, Outcome};
use crate::error::{Error, Result};

/// Time kept back before the deadline while sweeping.
const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(20);
/// Namespaces named in the sweep's output.
const MAX_LISTED: usize = 40;

/// What removing one staging namespace did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub namespace: String,
    /// False when it was already being deleted.
    pub namespace_deleted: bool,
    pub volumes: Vec<String>,
}

impl Removal {
    pub fn describe(&self, dry_run: bool) -> String {
        let verb = if dry_run { "would delete" } else { "deleted" };
        let ns = if self.namespace_deleted {
            format!("{verb} namespace {}", self.namespace)
        } else {
            format!("namespace {} is already being deleted", self.namespace)
        };
        if self.volumes.is_empty() {
            ns
        } else {
            format!(
                "{ns} and {verb} PersistentVolume object(s) {} (Retain: the volumes stay)",
                self.volumes.join(", ")
            )
        }
    }
}

/// The PersistentVolumes of the run that made `ns`: labelled with its execution, reserved for a
/// claim in `ns`, managed by snapstage and not production.
async fn volumes_of(client: &kube::Client, ns: &Namespace) -> Result<Vec<PersistentVolume>> {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let Some(execution) = ownership::execution_of(&ns.metadata) else {
        return Ok(Vec::new());
    };
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXECUTION}={execution}");
    let pvs = kubeapi::list(&api, &ListParams::default().labels(&selector)).await?;
    Ok(pvs
        .into_iter()
        .filter(|pv| {
            let reserved_here = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|c| c.namespace.as_deref() == Some(name));
            reserved_here
                && ownership::is_managed(&pv.metadata)
                && !ownership::is_production(&pv.metadata)
        })
        .collect())
}

/// Refuses to delete a namespace that holds an existing PVC (`pvcName`) snapstage did not make.
async fn check_existing_claim(client: &kube::Client, ns: &Namespace) -> Result<()> {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let Some(claim) = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_EXISTING_CLAIM))
    else {
        return Ok(());
    };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), name);
    match kubeapi::get_opt(&api, claim).await? {
        Some(pvc)
            if !ownership::is_managed(&pvc.metadata) || ownership::is_production(&pvc.metadata) =>
        {
            Err(Error::Refused(format!(
                "namespace {name} holds PVC {claim}, which the staging database mounted (pvcName) but snapstage did not make (it is not labelled {LABEL_MANAGED_BY}={MANAGED_BY}, or it is production): deleting the namespace would delete it, so snapstage leaves both; delete them yourself"
            )))
        }
        _ => Ok(()),
    }
}

/// Deletes a staging namespace snapstage made, and its PV objects. Refuses anything else.
pub async fn remove(client: &kube::Client, ns: &Namespace, dry_run: bool) -> Result<Removal> {
    ownership::check("Namespace", &ns.metadata, "delete")?;
    check_existing_claim(client, ns).await?;
    let name = ns.metadata.name.clone().unwrap_or_default();
    let volumes = volumes_of(client, ns).await?;
    let terminating = ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    let mut removal = Removal {
        namespace: name.clone(),
        namespace_deleted: !terminating,
        volumes: volumes
            .iter()
            .filter_map(|pv| pv.metadata.name.clone())
            .collect(),
    };
    if dry_run {
        return Ok(removal);
    }
    if !terminating {
        let api: Api<Namespace> = Api::all(client.clone());
        removal.namespace_deleted = kubeapi::delete(&api, &name, ns.metadata.uid.clone()).await?;
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    for pv in &volumes {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        kubeapi::delete(&api, &pv_name, pv.metadata.uid.clone()).await?;
    }
    tracing::info!(namespace = %name, volumes = removal.volumes.len(), "staging namespace deleted");
    Ok(removal)
}

/// Reads `name` and removes it; `None` when it does not exist.
pub async fn remove_by_name(client: &kube::Client, name: &str) -> Result<Option<Removal>> {
    let api: Api<Namespace> = Api::all(client.clone());
    match kubeapi::get_opt(&api, name).await? {
        Some(ns) => remove(client, &ns, false).await.map(Some),
        None => Ok(None),
    }
}

fn mode(dry_run: bool) -> String {
    if dry_run { "dry-run" } else { "applied" }.to_string()
}

/// `action: "teardown"`: deletes the named staging namespace.
pub async fn teardown(client: &kube::Client, params: &Params) -> Result<Outcome> {
    let name = namespace_param(params)?;
    let api: Api<Namespace> = Api::all(client.clone());
    let (summary, deleted, volumes) = match kubeapi::get_opt(&api, name).await? {
        None => (
            format!("namespace {name} does not exist (already deleted): nothing to do"),
            false,
            0,
        ),
        Some(ns) => {
            let r = remove(client, &ns, params.dry_run).await?;
            (
                r.describe(params.dry_run),
                r.namespace_deleted,
                r.volumes.len(),
            )
        }
    };
    Ok(Outcome::Done {
        summary,
        outputs: BTreeMap::from([
            ("Action".into(), Action::Teardown.as_str().into()),
            ("Namespace".into(), name.to_string()),
            ("Deleted".into(), deleted.to_string()),
            ("PersistentVolumesDeleted".into(), volumes.to_string()),
            ("Mode".into(), mode(params.dry_run)),
        ]),
    })
}

fn namespace_param(params: &Params) -> Result<&str> {
    params.namespace.as_ref().map(|n| n.0.as_str()).ok_or_else(|| {
        Error::parameter(
            "namespace",
            "expected the staging namespace to delete, e.g. \"#{DeployStaging.Namespace}\", got nothing",
        )
    })
}

/// When a namespace expires, from its annotation; `None` when absent or unreadable.
pub fn expires_at(ns: &Namespace) -> Option<Timestamp> {
    ns.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_EXPIRES_AT)?
        .parse()
        .ok()
}

/// `action: "sweep"`: deletes every snapstage namespace whose expiry has passed.
pub async fn sweep(
    client: &kube::Client,
    dry_run: bool,
    now: Timestamp,
    deadline: Deadline,
    state: Option<serde_json::Value>,
) -> Result<Outcome> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let all = kubeapi::list(&api, &ListParams::default().labels(&selector)).await?;
    let mut swept: u64 = state
        .as_ref()
        .and_then(|s| s.get("swept"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let (mut removed, mut kept, mut skipped) = (Vec::new(), 0usize, Vec::new());
    for ns in &all {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if !ownership::is_managed(&ns.metadata) || ownership::is_production(&ns.metadata) {
            skipped.push(format!("{name} (not deletable by snapstage)"));
            continue;
        }
        match expires_at(ns) {
            None => skipped.push(format!("{name} (no valid {ANNOTATION_EXPIRES_AT})")),
            Some(t) if t > now => kept += 1,
            Some(_) => {
                if !dry_run && deadline.near(SWEEP_MARGIN) {
                    return Ok(Outcome::Continue {
                        summary: format!(
                            "sweep: {swept} expired namespace(s) deleted so far; continuing"
                        ),
                        percent: 50,
                        state: json!({ "swept": swept }),
                    });
                }
                let r = match remove(client, ns, dry_run).await {
                    Ok(r) => r,
                    Err(Error::Refused(why)) => {
                        skipped.push(format!("{name} ({why})"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if r.namespace_deleted && !dry_run {
                    swept += 1;
                }
                removed.push(r);
            }
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let names: Vec<&str> = removed.iter().map(|r| r.namespace.as_str()).collect();
    let mut summary = format!(
        "sweep: {verb} {} expired staging namespace(s){}; {kept} not expired yet",
        removed.len(),
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    );
    if !skipped.is_empty() {
        summary.push_str(&format!("; skipped {}", skipped.join(", ")));
    }
    let mut listed: Vec<&str> = names.iter().take(MAX_LISTED).copied().collect();
    if names.len() > MAX_LISTED {
        listed.push("...");
    }
    let mut outputs = BTreeMap::from([
        ("Action".to_string(), Action::Sweep.as_str().to_string()),
        ("Deleted".to_string(), removed.len().to_string()),
        ("Kept".to_string(), kept.to_string()),
        ("Mode".to_string(), mode(dry_run)),
    ]);
    if !listed.is_empty() {
        outputs.insert("Namespaces".into(), listed.join(","));
    }
    Ok(Outcome::Done {
        summary: crate::codepipeline::truncate(&summary, 2000),
        outputs,
    })
}

/// Teardown or sweep without a cluster: what would be done.
pub fn plan_only(params: &Params) -> Result<Outcome> {
    let (what, mut outputs) = match params.action {
        Action::Teardown => {
            let name = namespace_param(params)?;
            (
                format!(
                    "teardown would delete namespace {name} and its PersistentVolume objects, if it is labelled {LABEL_MANAGED_BY}={MANAGED_BY} and not production"
                ),
                BTreeMap::from([("Namespace".to_string(), name.to_string())]),
            )
        }
        _ => (
            format!(
                "sweep would delete every namespace labelled {LABEL_MANAGED_BY}={MANAGED_BY} whose {ANNOTATION_EXPIRES_AT} has passed, and its PersistentVolume objects"
            ),
            BTreeMap::new(),
        ),
    };
    outputs.insert("Action".into(), params.action.as_str().into());
    outputs.insert("Mode".into(), super::MODE_PLAN.into());
    Ok(Outcome::Done {
        summary: format!(
            "PLAN ONLY — no cluster changed ({}): {what}.",
            super::NO_CLUSTER
        ),
        outputs,
    })
}
