//! Deleting staging databases: one namespace on request (`action: "teardown"`), every expired
//! one (`action: "sweep"`, by the `snapstage.io/expires-at` annotation), and the namespace a
//! failed deploy created (`onFailure: "teardown"`).
//!
//! Only namespaces labelled `app.kubernetes.io/managed-by=snapstage` and not labelled production
//! are deleted, each with a UID precondition (exactly the namespace that was checked). The static
//! PersistentVolumes of a run are cluster-scoped and `Retain`: selected by the run's
//! `snapstage.io/execution` label and reserved for a claim in that namespace.
//!
//! Teardown and the sweep also delete the staging volume behind each of those PVs ([`Storage`]),
//! when and only when [`crate::interlock::deletable`] allows it, its tags read again right
//! before: snapstage's staging mark, no production marker, no `snapstage:deletion-protection=true`;
//! and no other PersistentVolume mounts it. EBS: DeleteVolume once it is `available`; FlashArray
//! (`pure-csi`, with `flasharray`): destroyed once no host is connected, eradicated by the array
//! after its own delay. The PV object is the record of the volume's id: it is deleted only once
//! the volume is deleted, gone or kept for good, so a retry (or the next sweep, which also takes
//! the PVs whose namespace no longer exists) finds every volume still to delete. An attached
//! volume is never waited for in a sleep: teardown continues (a continuation) for up to
//! [`WAIT_FOR_DETACH`], the sweep leaves it to its next run. A failed deploy's teardown
//! (`onFailure`) deletes PV objects only: a retried deploy imports the same volume again.
//!
//! A PVC restored by the `csi` backend (`snapshotName`, or `pvcName` that snapstage made) is
//! deleted with the namespace; its volume follows its StorageClass's `reclaimPolicy`.
//!
//! A namespace whose database mounted an existing PVC (`pvcName`, annotation
//! `snapstage.io/existing-claim`) is deleted only when that PVC carries snapstage's label too:
//! deleting a namespace deletes its PVCs, and snapstage deletes nothing it did not make.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::error::{Error, Result};
use crate::interlock::{ArrayAccess, DELETION_PROTECTION_TAG, Deletion, VolumeMarks, VolumeRef};
use crate::job::contract::{Deadline, Outcome};
use crate::kube::api;
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{
    ANNOTATION_EXISTING_CLAIM, ANNOTATION_EXPIRES_AT, LABEL_EXECUTION, LABEL_MANAGED_BY,
};
use crate::kube::ownership;
use crate::staging::objects::{EBS_CSI_DRIVER, PURE_CSI_DRIVER};
use crate::staging::params::{Action, Params};

/// Time kept back before the deadline while sweeping.
const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(20);
/// Namespaces named in the sweep's output.
const MAX_LISTED: usize = 40;

/// How long teardown goes on checking (through continuations) for attached staging volumes to
/// be detached before it leaves them, with their PV objects, to the sweep.
pub const WAIT_FOR_DETACH: SignedDuration = SignedDuration::from_mins(30);

/// Where teardown and the sweep delete the staging volumes behind a run's PVs: the interlock's
/// access (EC2; the array `flasharray` names, for `pure-csi` PVs).
#[derive(Clone, Copy)]
pub struct Storage<'a> {
    pub volumes: &'a dyn VolumeMarks,
    pub array: Option<&'a ArrayAccess>,
}

/// What happened to the staging volume behind one PersistentVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOutcome {
    /// The PersistentVolume object.
    pub pv: String,
    /// `ebs`, `flasharray`, or the CSI driver.
    pub backend: String,
    /// The volume id / array volume name (the PV's `volumeHandle`).
    pub id: String,
    pub deletion: Deletion,
}

impl VolumeOutcome {
    fn what(&self) -> String {
        match self.backend.as_str() {
            "ebs" => format!("EBS volume {}", self.id),
            "flasharray" => format!("FlashArray volume {}", self.id),
            other => format!("{other} volume {}", self.id),
        }
    }

    pub fn describe(&self) -> String {
        let what = self.what();
        let array = self.backend == "flasharray";
        match &self.deletion {
            Deletion::Deleted if array => format!(
                "destroyed {what} (the array eradicates it after its eradication delay; recoverable until then)"
            ),
            Deletion::Deleted => format!("deleted {what}"),
            Deletion::WouldDelete if array => format!("would destroy {what}"),
            Deletion::WouldDelete => format!("would delete {what}"),
            Deletion::Gone => format!("{what} is already deleted"),
            Deletion::Waiting(how) => format!(
                "waiting for {what} to be detached ({how}); PersistentVolume {} is kept until it is deleted",
                self.pv
            ),
            Deletion::Kept(why) => format!("kept {what}: {why}"),
        }
    }
}

/// What removing one staging namespace did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub namespace: String,
    /// False when it was already being deleted, or no longer exists.
    pub namespace_deleted: bool,
    /// True when the namespace no longer exists (teardown finishing what an earlier one began).
    pub namespace_missing: bool,
    /// The PersistentVolume objects deleted.
    pub volumes: Vec<String>,
    /// The staging volumes behind them (teardown and the sweep; not `onFailure`).
    pub storage: Vec<VolumeOutcome>,
}

impl Removal {
    pub fn describe(&self, dry_run: bool) -> String {
        let verb = if dry_run { "would delete" } else { "deleted" };
        let ns = if self.namespace_missing {
            format!("namespace {} does not exist", self.namespace)
        } else if self.namespace_deleted {
            format!("{verb} namespace {}", self.namespace)
        } else {
            format!("namespace {} is already being deleted", self.namespace)
        };
        let mut out = if self.volumes.is_empty() {
            ns
        } else if self.storage.is_empty() {
            format!(
                "{ns} and {verb} PersistentVolume object(s) {} (Retain: the volumes stay)",
                self.volumes.join(", ")
            )
        } else {
            format!(
                "{ns} and {verb} PersistentVolume object(s) {}",
                self.volumes.join(", ")
            )
        };
        for v in &self.storage {
            out.push_str("; ");
            out.push_str(&v.describe());
        }
        out
    }

    fn count(&self, f: impl Fn(&Deletion) -> bool) -> usize {
        self.storage.iter().filter(|v| f(&v.deletion)).count()
    }

    /// The volumes still attached.
    pub fn waiting(&self) -> Vec<&str> {
        self.storage
            .iter()
            .filter(|v| matches!(v.deletion, Deletion::Waiting(_)))
            .map(|v| v.id.as_str())
            .collect()
    }
}

/// The PersistentVolumes of the run that made `ns`: labelled with its execution, reserved for a
/// claim in `ns`, managed by snapstage and not production.
async fn volumes_of(client: &kube::Client, ns: &Namespace) -> Result<Vec<PersistentVolume>> {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let Some(execution) = ownership::execution_of(&ns.metadata) else {
        return Ok(Vec::new());
    };
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXECUTION}={execution}");
    pvs_reserved_in(client, &selector, |n| n == name).await
}

/// snapstage's PersistentVolumes (selected by `selector`, managed by snapstage, not production)
/// reserved for a claim in a namespace `claimed_in` accepts.
async fn pvs_reserved_in(
    client: &kube::Client,
    selector: &str,
    claimed_in: impl Fn(&str) -> bool,
) -> Result<Vec<PersistentVolume>> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let pvs = api::list(&api, &ListParams::default().labels(selector)).await?;
    Ok(pvs
        .into_iter()
        .filter(|pv| {
            claim_namespace(pv).is_some_and(&claimed_in)
                && ownership::is_managed(&pv.metadata)
                && !ownership::is_production(&pv.metadata)
        })
        .collect())
}

fn claim_namespace(pv: &PersistentVolume) -> Option<&str> {
    pv.spec.as_ref()?.claim_ref.as_ref()?.namespace.as_deref()
}

/// The CSI driver and volume handle of a PV.
fn handle_of(pv: &PersistentVolume) -> Option<(&str, &str)> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    Some((csi.driver.as_str(), csi.volume_handle.as_str()))
}

/// Deletes (or keeps, or waits for) the staging volume behind `pv`. `all` is every PV in the
/// cluster: a volume another PV mounts too is kept.
async fn clean_volume(
    storage: Storage<'_>,
    pv: &PersistentVolume,
    all: &[PersistentVolume],
    dry_run: bool,
) -> Result<VolumeOutcome> {
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let (driver, handle) = handle_of(pv).unwrap_or_default();
    let backend = match driver {
        EBS_CSI_DRIVER => "ebs",
        PURE_CSI_DRIVER => "flasharray",
        "" => "unknown",
        other => other,
    };
    let outcome = |deletion| VolumeOutcome {
        pv: pv_name.clone(),
        backend: backend.to_string(),
        id: handle.to_string(),
        deletion,
    };
    let volume = match (driver, storage.array) {
        (EBS_CSI_DRIVER, _) => VolumeRef::Ebs(handle),
        (PURE_CSI_DRIVER, Some(access)) => VolumeRef::FlashArray {
            volume: handle,
            access,
        },
        (PURE_CSI_DRIVER, None) => {
            return Ok(outcome(Deletion::Kept(
                "its tags cannot be read without the array: give flasharray {\"endpoint\", \"apiTokenSecret\"} (an array user that may destroy volumes) to let teardown destroy it".into(),
            )));
        }
        _ => {
            return Ok(outcome(Deletion::Kept(
                "not an EBS or FlashArray volume restore-to-staging makes".into(),
            )));
        }
    };
    if let Some(other) = all.iter().find(|o| {
        o.metadata.name.as_deref() != Some(pv_name.as_str())
            && handle_of(o) == Some((driver, handle))
    }) {
        return Ok(outcome(Deletion::Kept(format!(
            "PersistentVolume {} mounts it too",
            other.metadata.name.as_deref().unwrap_or_default()
        ))));
    }
    Ok(outcome(
        storage.volumes.delete_staging(volume, dry_run).await?,
    ))
}

/// Deletes the staging volumes behind `pvs` (with `storage`), then each PV object whose volume
/// is settled (deleted, gone or kept): one still attached keeps its PV, the record of its id.
async fn release(
    client: &kube::Client,
    pvs: &[PersistentVolume],
    dry_run: bool,
    storage: Option<Storage<'_>>,
    removal: &mut Removal,
) -> Result<()> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let all = match (storage, pvs.is_empty()) {
        (Some(_), false) => api::list(&api, &ListParams::default()).await?,
        _ => Vec::new(),
    };
    for pv in pvs {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        if let Some(storage) = storage {
            let outcome = clean_volume(storage, pv, &all, dry_run).await?;
            let attached = matches!(outcome.deletion, Deletion::Waiting(_));
            removal.storage.push(outcome);
            if attached {
                continue;
            }
        }
        if !dry_run {
            api::delete(&api, &pv_name, pv.metadata.uid.clone()).await?;
        }
        removal.volumes.push(pv_name);
    }
    Ok(())
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
    match api::get_opt(&api, claim).await? {
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

/// Deletes a staging namespace snapstage made, its PV objects and, with `storage`, the staging
/// volumes behind them. Refuses anything else.
pub async fn remove(
    client: &kube::Client,
    ns: &Namespace,
    dry_run: bool,
    storage: Option<Storage<'_>>,
) -> Result<Removal> {
    ownership::check("Namespace", &ns.metadata, "delete")?;
    check_existing_claim(client, ns).await?;
    let name = ns.metadata.name.clone().unwrap_or_default();
    let volumes = volumes_of(client, ns).await?;
    let terminating = ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    let mut removal = Removal {
        namespace: name.clone(),
        namespace_deleted: !terminating,
        ..Removal::default()
    };
    // The namespace first: its pods go, and the volumes are detached.
    if !dry_run && !terminating {
        let api: Api<Namespace> = Api::all(client.clone());
        removal.namespace_deleted = api::delete(&api, &name, ns.metadata.uid.clone()).await?;
    }
    release(client, &volumes, dry_run, storage, &mut removal).await?;
    if !dry_run {
        tracing::info!(namespace = %name, volumes = removal.volumes.len(), "staging namespace deleted");
    }
    Ok(removal)
}

/// Reads `name` and removes it (PV objects only: `onFailure`); `None` when it does not exist.
pub async fn remove_by_name(client: &kube::Client, name: &str) -> Result<Option<Removal>> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api::get_opt(&api, name).await? {
        Some(ns) => remove(client, &ns, false, None).await.map(Some),
        None => Ok(None),
    }
}

/// What is left of a namespace that no longer exists: snapstage's PVs reserved in it, and the
/// staging volumes behind them (an earlier teardown deleted the namespace; a volume was attached).
async fn remove_leftovers(
    client: &kube::Client,
    name: &str,
    dry_run: bool,
    storage: Storage<'_>,
) -> Result<Removal> {
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let pvs = pvs_reserved_in(client, &selector, |n| n == name).await?;
    let mut removal = Removal {
        namespace: name.to_string(),
        namespace_missing: true,
        ..Removal::default()
    };
    release(client, &pvs, dry_run, Some(storage), &mut removal).await?;
    Ok(removal)
}

fn mode(dry_run: bool) -> String {
    if dry_run { "dry-run" } else { "applied" }.to_string()
}

/// The outputs every teardown and sweep gives about staging volumes.
fn volume_outputs(outputs: &mut BTreeMap<String, String>, removals: &[&Removal]) {
    let count =
        |f: &dyn Fn(&Deletion) -> bool| -> usize { removals.iter().map(|r| r.count(f)).sum() };
    let deleted = count(&|d| matches!(d, Deletion::Deleted | Deletion::WouldDelete));
    let kept = count(&|d| matches!(d, Deletion::Kept(_)));
    let waiting: Vec<&str> = removals.iter().flat_map(|r| r.waiting()).collect();
    outputs.insert("VolumesDeleted".into(), deleted.to_string());
    outputs.insert("VolumesKept".into(), kept.to_string());
    outputs.insert("VolumesWaiting".into(), waiting.len().to_string());
}

/// `action: "teardown"`: deletes the named staging namespace, its PV objects and the staging
/// volumes behind them. While a volume is still attached it continues (no sleep), for up to
/// [`WAIT_FOR_DETACH`] from the first wait (`state`), then leaves it to the sweep.
pub async fn teardown(
    client: &kube::Client,
    params: &Params,
    storage: Storage<'_>,
    state: Option<serde_json::Value>,
    now: Timestamp,
) -> Result<Outcome> {
    let name = namespace_param(params)?;
    let api: Api<Namespace> = Api::all(client.clone());
    let dry_run = params.dry_run;
    let removal = match api::get_opt(&api, name).await? {
        None => remove_leftovers(client, name, dry_run, storage).await?,
        Some(ns) => remove(client, &ns, dry_run, Some(storage)).await?,
    };
    let waiting = removal.waiting();
    let mut summary =
        if removal.namespace_missing && removal.volumes.is_empty() && waiting.is_empty() {
            format!("namespace {name} does not exist (already deleted): nothing to do")
        } else {
            removal.describe(dry_run)
        };
    if !waiting.is_empty() && !dry_run {
        let since = state
            .as_ref()
            .and_then(|s| s.get("waitingSince"))
            .and_then(serde_json::Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(now);
        if now.duration_since(since) < WAIT_FOR_DETACH {
            return Ok(Outcome::Continue {
                summary: crate::job::codepipeline::truncate(
                    &format!("{summary}; checking again"),
                    2000,
                ),
                percent: 50,
                state: json!({ "waitingSince": since.to_string() }),
            });
        }
        summary.push_str(&format!(
            "; still attached after {} min: the sweep deletes {} once detached",
            WAIT_FOR_DETACH.as_mins(),
            waiting.join(", ")
        ));
    }
    let mut outputs = BTreeMap::from([
        ("Action".into(), Action::Teardown.as_str().into()),
        ("Namespace".into(), name.to_string()),
        ("Deleted".into(), removal.namespace_deleted.to_string()),
        (
            "PersistentVolumesDeleted".into(),
            removal.volumes.len().to_string(),
        ),
        ("Mode".into(), mode(dry_run)),
    ]);
    volume_outputs(&mut outputs, &[&removal]);
    Ok(Outcome::Done {
        summary: crate::job::codepipeline::truncate(&summary, 2000),
        outputs,
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

/// `action: "sweep"`: deletes every snapstage namespace whose expiry has passed, with its PV
/// objects and staging volumes; then the PVs left by namespaces that no longer exist (volumes
/// that were still attached) and their volumes. A volume still attached waits for the next sweep.
pub async fn sweep(
    client: &kube::Client,
    storage: Storage<'_>,
    dry_run: bool,
    now: Timestamp,
    deadline: Deadline,
    state: Option<serde_json::Value>,
) -> Result<Outcome> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let all = api::list(&api, &ListParams::default().labels(&selector)).await?;
    let mut swept: u64 = state
        .as_ref()
        .and_then(|s| s.get("swept"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let continuing = |swept: u64| Outcome::Continue {
        summary: format!("sweep: {swept} expired namespace(s) deleted so far; continuing"),
        percent: 50,
        state: json!({ "swept": swept }),
    };
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
                    return Ok(continuing(swept));
                }
                let r = match remove(client, ns, dry_run, Some(storage)).await {
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
    // PVs whose namespace is gone: an earlier teardown or sweep left them for their volumes.
    let mut leftovers = Vec::new();
    let pvs = pvs_reserved_in(client, &selector, |_| true).await?;
    let mut namespaces: Vec<&str> = pvs.iter().filter_map(claim_namespace).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for name in namespaces {
        if api::get_opt(&api, name).await?.is_some() {
            continue;
        }
        if !dry_run && deadline.near(SWEEP_MARGIN) {
            return Ok(continuing(swept));
        }
        leftovers.push(remove_leftovers(client, name, dry_run, storage).await?);
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
    for r in removed.iter().chain(&leftovers) {
        for v in &r.storage {
            summary.push_str(&format!("; {}: {}", r.namespace, v.describe()));
        }
    }
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
    let every: Vec<&Removal> = removed.iter().chain(&leftovers).collect();
    volume_outputs(&mut outputs, &every);
    Ok(Outcome::Done {
        summary: crate::job::codepipeline::truncate(&summary, 2000),
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
                    "teardown would delete namespace {name}, its PersistentVolume objects and the staging volumes behind them, if it is labelled {LABEL_MANAGED_BY}={MANAGED_BY} and not production (a volume only when it carries snapstage's staging mark, no production marker and no {DELETION_PROTECTION_TAG}=true)"
                ),
                BTreeMap::from([("Namespace".to_string(), name.to_string())]),
            )
        }
        _ => (
            format!(
                "sweep would delete every namespace labelled {LABEL_MANAGED_BY}={MANAGED_BY} whose {ANNOTATION_EXPIRES_AT} has passed, its PersistentVolume objects and the staging volumes behind them (a volume only when it carries snapstage's staging mark, no production marker and no {DELETION_PROTECTION_TAG}=true)"
            ),
            BTreeMap::new(),
        ),
    };
    outputs.insert("Action".into(), params.action.as_str().into());
    outputs.insert("Mode".into(), crate::staging::plan::MODE_PLAN.into());
    Ok(Outcome::Done {
        summary: format!(
            "PLAN ONLY — no cluster changed ({}): {what}.",
            crate::staging::plan::NO_CLUSTER
        ),
        outputs,
    })
}
