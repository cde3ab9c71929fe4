//! [`Backend`] for Kubernetes CSI snapshots (`snapshot.storage.k8s.io/v1`): any CSI driver with
//! snapshot support (EBS CSI, Portworx, Pure PX-CSI/PSO, ...), reached through the Kubernetes API
//! only.
//!
//! - A source is a PersistentVolumeClaim in the production namespace (`csi.namespace`); a
//!   selector lists PVCs by label (sorted by name, so a run is stable).
//! - Snapshot: one VolumeSnapshot per PVC, named `<pvc>-snapstage-<run hash>` and labelled with
//!   the run, created with POST (a retry gets 409 AlreadyExists and reads the one it made).
//!   Ready when `status.readyToUse`, failed with `status.error.message`, pending otherwise.
//!   Snapshots taken back to back are crash-consistent *per volume*; with `groupSnapshotClass`
//!   and a `selector`, one `VolumeGroupSnapshot` (`groupsnapshot.storage.k8s.io/v1beta1`, beta:
//!   needs external-snapshotter ≥ 8.0 with its group snapshot feature gate and a driver that
//!   supports it) cuts every selected PVC at one instant; its snapshot ids are
//!   `<group>/<pvc>`.
//! - Restore, the portable cross-namespace path (no alpha `dataSourceRef.namespace`): the
//!   production VolumeSnapshot's bound VolumeSnapshotContent gives the storage snapshot handle and
//!   driver; in the staging namespace snapstage creates a pre-bound VolumeSnapshotContent
//!   (`deletionPolicy: Retain`, so deleting staging never deletes the storage snapshot), a
//!   VolumeSnapshot bound to it, and a PVC restoring from that VolumeSnapshot. The staging
//!   VolumeSnapshot and the PVC share one name, `<source pvc>-staging-<run hash>`.
//! - Production-safety interlock: the staging namespace is never the production namespace nor a
//!   namespace labelled production or not made by snapstage; an existing PVC of the name is
//!   refused unless snapstage made it, and a PVC mounted by a pod that is not a snapstage
//!   staging pod is refused.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::model::{
    SNAPSHOT_GROUP, SnapshotRef, VolumeGroupSnapshot, VolumeGroupSnapshotSource,
    VolumeGroupSnapshotSpec, VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotContentSpec,
    VolumeSnapshotSource, VolumeSnapshotSpec,
};
use super::{
    Backend, RestoreOutputs, Retention, Selection, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec, VolumeState,
};
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::client::{ClusterConfig, kube_error};
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{
    ANNOTATION_EXECUTION_KEY, LABEL_EXECUTION, LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_ROLE,
};
use crate::kube::labels::{LABEL_SOURCE, ROLE_SNAPSHOT, ROLE_STAGING};
use crate::kube::names::{MAX_SUBDOMAIN, execution_label, is_dns1123_subdomain, quantity_bytes};
use crate::kube::ownership;

pub mod model;

const B: &str = "csi";
/// The field manager of the server-side applies this backend makes (the staging namespace).
pub const FIELD_MANAGER: &str = "snapstage-restore-to-staging";
const GIB: f64 = 1_073_741_824.0;
const MAX_LABEL: usize = 63;

/// How to reach the cluster and where things are (`csi` parameter section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsiParams {
    /// The cluster that runs production (`{"eks": {"name": "prod"}}`, `{"kubeconfigSecret":
    /// "..."}`, `{"kubeconfigFile": "..."}` or `"inCluster"`).
    pub cluster: ClusterConfig,
    /// The production namespace: its PVCs are the sources, its VolumeSnapshots the snapshots.
    pub namespace: String,
    /// VolumeSnapshotClass of the snapshots (default: the cluster's default class for the driver).
    #[serde(default)]
    pub snapshot_class: Option<String>,
    /// VolumeGroupSnapshotClass: snapshot the PVCs a `selector` picks as one group (beta API).
    /// Also give it to restore-to-staging to restore the newest group member by
    /// `sourceVolumeId`; retention (`retain`) then counts and deletes whole group snapshots.
    #[serde(default)]
    pub group_snapshot_class: Option<String>,
    /// restore-to-staging: the namespace the staging PVC is made in (created if missing).
    #[serde(default)]
    pub staging_namespace: Option<String>,
    /// restore-to-staging: StorageClass of the staging PVC (default: the cluster's default; it
    /// must use the same CSI driver as the snapshot).
    #[serde(default)]
    pub storage_class: Option<String>,
}

impl CsiParams {
    /// Checks names and the production/staging split without the cluster.
    pub fn validate(&self) -> Result<()> {
        check_label_name("csi.namespace", &self.namespace)?;
        for (field, v) in [
            ("csi.snapshotClass", &self.snapshot_class),
            ("csi.groupSnapshotClass", &self.group_snapshot_class),
            ("csi.storageClass", &self.storage_class),
        ] {
            if let Some(v) = v {
                check_name(field, v)?;
            }
        }
        if let Some(s) = &self.staging_namespace {
            check_label_name("csi.stagingNamespace", s)?;
            if *s == self.namespace {
                return Err(Error::parameter(
                    "csi.stagingNamespace",
                    format!(
                        "{s:?} is the production namespace (csi.namespace); restore-to-staging never writes into production: name a separate staging namespace"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_name(field: &str, value: &str) -> Result<()> {
    if is_dns1123_subdomain(value) {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253), got {value:?}"
            ),
        ))
    }
}

fn check_label_name(field: &str, value: &str) -> Result<()> {
    if crate::kube::names::is_dns1123_label(value) {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a namespace name (lowercase letters, digits and '-', at most 63), got {value:?}"
            ),
        ))
    }
}

/// `<base><tail>`, the base cut so the whole stays a valid name of at most 253 characters.
fn name_with_tail(base: &str, tail: &str) -> String {
    let mut b: String = base.chars().take(MAX_SUBDOMAIN - tail.len()).collect();
    while b.ends_with(['-', '.']) {
        b.pop();
    }
    if b.is_empty() {
        b.push_str(MANAGED_BY);
    }
    format!("{b}{tail}")
}

/// The VolumeSnapshot a run makes of `pvc`: `<pvc>-snapstage-<run hash>`.
pub fn snapshot_name(pvc: &str, execution: &Execution) -> String {
    name_with_tail(
        pvc,
        &format!("-snapstage-{}", execution_label(&execution.key)),
    )
}

/// The VolumeGroupSnapshot a run makes: `snapstage-<run hash>`.
pub fn group_snapshot_name(execution: &Execution) -> String {
    format!("snapstage-{}", execution_label(&execution.key))
}

/// The staging VolumeSnapshot and PVC a run makes from a snapshot of `pvc`.
pub fn staging_name(pvc: &str, execution: &Execution) -> String {
    name_with_tail(
        pvc,
        &format!("-staging-{}", execution_label(&execution.key)),
    )
}

/// The cluster-scoped VolumeSnapshotContent bound to the staging VolumeSnapshot `name` in `ns`.
pub fn staging_content_name(ns: &str, name: &str) -> String {
    let h = crate::digest::sha256_hex(format!("{ns}/{name}").as_bytes());
    name_with_tail(&format!("snapstage-{ns}-{name}"), &format!("-{}", &h[..8]))
}

/// The `snapstage.io/source` label value for a PVC: its name, or for a name longer than a label
/// allows, a prefix and a hash.
pub fn source_label(pvc: &str) -> String {
    if pvc.len() <= MAX_LABEL {
        return pvc.to_string();
    }
    let h = crate::digest::sha256_hex(pvc.as_bytes());
    let mut b: String = pvc.chars().take(MAX_LABEL - 17).collect();
    while b.ends_with(['-', '.']) {
        b.pop();
    }
    format!("{b}-{}", &h[..16])
}

fn labels(execution: &Execution, role: &str, source: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_PART_OF.to_string(), MANAGED_BY.to_string()),
        (LABEL_EXECUTION.to_string(), execution_label(&execution.key)),
        (LABEL_ROLE.to_string(), role.to_string()),
    ]);
    if let Some(s) = source {
        l.insert(LABEL_SOURCE.to_string(), source_label(s));
    }
    l
}

fn meta(
    name: &str,
    namespace: Option<&str>,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(execution, role, source)),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_EXECUTION_KEY.to_string(),
            execution.key.clone(),
        )])),
        ..Default::default()
    }
}

fn label_of<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn gib(bytes: f64) -> i64 {
    (bytes / GIB).ceil() as i64
}

/// POST `obj` (retried when the API server may answer later); when it exists already, read the
/// one there — this run's own create whose answer was lost, or an earlier invocation's — and
/// take it only when it carries this run's execution label: an object of the name from another
/// run, or not labelled at all, is refused rather than adopted.
async fn create_or_read<K>(api: &Api<K>, obj: &K) -> Result<(K, bool)>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let what = api::describe::<K>(api.namespace(), &name);
    let params = PostParams::default();
    match api::retrying(|| api.create(&params, obj)).await {
        Ok(k) => {
            tracing::info!(object = %what, "created");
            Ok((k, true))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let k = api::retrying(|| api.get(&name))
                .await
                .map_err(|e| kube_error(&format!("reading {what} (it exists already)"), e))?;
            let mine = ownership::execution_of(obj.meta());
            let theirs = ownership::execution_of(k.meta());
            if ownership::is_managed(k.meta()) && theirs != mine {
                return Err(Error::Refused(format!(
                    "{what} exists and was made by another snapstage run ({LABEL_EXECUTION}={}, this run is {}); it will not be taken over",
                    theirs.unwrap_or("none"),
                    mine.unwrap_or("none")
                )));
            }
            Ok((k, false))
        }
        Err(e) => Err(kube_error(&format!("creating {what}"), e)),
    }
}

/// The state a VolumeSnapshot's status gives.
fn snapshot_state(s: &VolumeSnapshot) -> SnapshotState {
    let status = s.status.as_ref();
    if let Some(e) = status.and_then(|s| s.error.as_ref()) {
        return SnapshotState::Failed(
            e.message
                .clone()
                .unwrap_or_else(|| "the snapshot controller reported an error".into()),
        );
    }
    if status.and_then(|s| s.ready_to_use) == Some(true) {
        SnapshotState::Ready
    } else {
        SnapshotState::Pending { percent: 0 }
    }
}

fn snapshot_info(id: &str, s: &VolumeSnapshot) -> SnapshotInfo {
    let status = s.status.as_ref();
    SnapshotInfo {
        id: id.to_string(),
        source: s
            .spec
            .source
            .persistent_volume_claim_name
            .clone()
            .unwrap_or_default(),
        state: snapshot_state(s),
        started: status.and_then(|s| s.creation_time.clone()).or_else(|| {
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        }),
        size_gib: status
            .and_then(|s| s.restore_size.as_deref())
            .and_then(quantity_bytes)
            .map(gib),
    }
}

/// Whether `s` is the member VolumeSnapshot the snapshot controller made of `pvc` for the
/// VolumeGroupSnapshot `group` (named in its status or its owner reference).
fn is_member(s: &VolumeSnapshot, group: &str, pvc: &str) -> bool {
    let of_group = s
        .status
        .as_ref()
        .and_then(|st| st.volume_group_snapshot_name.as_deref())
        == Some(group)
        || s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "VolumeGroupSnapshot" && o.name == group);
    of_group && s.spec.source.persistent_volume_claim_name.as_deref() == Some(pvc)
}

/// A snapshot id: a VolumeSnapshot name, or `<group>/<pvc>` for a member of a group snapshot.
enum SnapshotId<'a> {
    Single(&'a str),
    Member { group: &'a str, pvc: &'a str },
}

fn parse_id(id: &str) -> SnapshotId<'_> {
    match id.split_once('/') {
        Some((group, pvc)) => SnapshotId::Member { group, pvc },
        None => SnapshotId::Single(id),
    }
}

/// An equality-only label selector (`a=b,c==d`) as `matchLabels`, for a VolumeGroupSnapshot.
fn match_labels(selector: &str) -> Result<LabelSelector> {
    let mut m = BTreeMap::new();
    for part in selector.split(',').map(str::trim) {
        let (k, v) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(k, v)| !k.trim().is_empty() && !v.contains(['!', '=']) && !k.contains('!'))
            .ok_or_else(|| {
                Error::parameter(
                    "selector",
                    format!(
                        "with csi.groupSnapshotClass the selector must be label=value pairs (a group snapshot selects by matchLabels), got {selector:?}"
                    ),
                )
            })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(LabelSelector {
        match_labels: Some(m),
        match_expressions: None,
    })
}

/// Kubernetes CSI snapshots through the API server.
pub struct Csi {
    client: kube::Client,
    params: CsiParams,
    /// The selector that picked the sources in this invocation: the group snapshot's selector.
    selector: std::sync::Mutex<Option<String>>,
}

impl Csi {
    pub fn new(client: kube::Client, params: CsiParams) -> Self {
        Self {
            client,
            params,
            selector: std::sync::Mutex::new(None),
        }
    }

    fn snapshots(&self) -> Api<VolumeSnapshot> {
        Api::namespaced(self.client.clone(), &self.params.namespace)
    }

    fn groups(&self) -> Api<VolumeGroupSnapshot> {
        Api::namespaced(self.client.clone(), &self.params.namespace)
    }

    /// The staging namespace, checked against production without the cluster.
    fn staging_namespace(&self) -> Result<&str> {
        let Some(ns) = self.params.staging_namespace.as_deref() else {
            return Err(Error::parameter(
                "csi.stagingNamespace",
                "missing: the namespace restore-to-staging makes the staging PVC in, e.g. \"snapstage-staging\" (never the production namespace)",
            ));
        };
        if ns == self.params.namespace {
            return Err(Error::Refused(format!(
                "staging namespace {ns} is the production namespace (csi.namespace); restore-to-staging never writes into production"
            )));
        }
        Ok(ns)
    }

    fn staging<K>(&self) -> Result<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Ok(Api::namespaced(
            self.client.clone(),
            self.staging_namespace()?,
        ))
    }

    fn source_selector(source: &str) -> String {
        format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SOURCE}={}",
            source_label(source)
        )
    }

    /// The production VolumeSnapshot behind an id (for a group member: the member the snapshot
    /// controller made, once it exists).
    async fn resolve(&self, id: &str) -> Result<Option<VolumeSnapshot>> {
        match parse_id(id) {
            SnapshotId::Single(name) => {
                let s = api::get_opt(&self.snapshots(), name).await?;
                s.map(Some).ok_or_else(|| Error::NotFound {
                    backend: B,
                    message: format!(
                        "VolumeSnapshot {}/{name} does not exist",
                        self.params.namespace
                    ),
                })
            }
            SnapshotId::Member { group, pvc } => {
                let all = api::list(&self.snapshots(), &ListParams::default()).await?;
                Ok(all.into_iter().find(|s| is_member(s, group, pvc)))
            }
        }
    }

    async fn group_info(&self, group: &str, pvc: &str) -> Result<SnapshotInfo> {
        let id = format!("{group}/{pvc}");
        let g = api::get_opt(&self.groups(), group)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "VolumeGroupSnapshot {}/{group} does not exist",
                    self.params.namespace
                ),
            })?;
        let status = g.status.as_ref();
        let pending = SnapshotInfo {
            id: id.clone(),
            source: pvc.to_string(),
            state: SnapshotState::Pending { percent: 0 },
            started: status.and_then(|s| s.creation_time.clone()),
            size_gib: None,
        };
        if let Some(e) = status.and_then(|s| s.error.as_ref()) {
            return Ok(SnapshotInfo {
                state: SnapshotState::Failed(format!(
                    "group snapshot {group}: {}",
                    e.message.as_deref().unwrap_or("error")
                )),
                ..pending
            });
        }
        if status.and_then(|s| s.ready_to_use) != Some(true) {
            return Ok(pending);
        }
        match self.resolve(&id).await? {
            Some(member) => Ok(snapshot_info(&id, &member)),
            None => Ok(SnapshotInfo {
                state: SnapshotState::Failed(format!(
                    "group snapshot {group} is ready but has no member snapshot of PVC {pvc}; does the selector pick it?"
                )),
                ..pending
            }),
        }
    }

    /// The members of `source` in the VolumeGroupSnapshots snapstage made in the production
    /// namespace, as `<group>/<pvc>` ids with the group's creation time. A group without a
    /// member of `source` (another selector, or not cut yet) is not one of its snapshots.
    async fn managed_group_members(
        &self,
        source: &str,
    ) -> Result<Vec<(Option<Time>, String, SnapshotInfo)>> {
        let groups = api::list(
            &self.groups(),
            &ListParams::default().labels(&format!(
                "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ROLE}={ROLE_SNAPSHOT}"
            )),
        )
        .await?;
        let groups: Vec<VolumeGroupSnapshot> = groups
            .into_iter()
            .filter(|g| ownership::is_managed(&g.metadata))
            .collect();
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let all = api::list(&self.snapshots(), &ListParams::default()).await?;
        Ok(groups
            .into_iter()
            .filter_map(|g| {
                let group = g.metadata.name.clone()?;
                let member = all.iter().find(|s| is_member(s, &group, source))?;
                let id = format!("{group}/{source}");
                let mut info = snapshot_info(&id, member);
                if let Some(e) = g.status.as_ref().and_then(|s| s.error.as_ref()) {
                    info.state = SnapshotState::Failed(format!(
                        "group snapshot {group}: {}",
                        e.message.as_deref().unwrap_or("error")
                    ));
                }
                Some((g.metadata.creation_timestamp, id, info))
            })
            .collect())
    }

    /// Retention of a group snapshot: the whole VolumeGroupSnapshot, only if snapstage took it.
    async fn delete_group(&self, group: &str) -> Result<()> {
        let Some(g) = api::get_opt(&self.groups(), group).await? else {
            return Ok(());
        };
        ownership::require_managed("VolumeGroupSnapshot", &g.metadata, "delete")?;
        if label_of(&g.metadata, LABEL_ROLE) != Some(ROLE_SNAPSHOT) {
            return Err(Error::Refused(format!(
                "VolumeGroupSnapshot {group} is not labelled {LABEL_ROLE}={ROLE_SNAPSHOT}; retention deletes only production snapshots snapstage took"
            )));
        }
        api::delete(&self.groups(), group, g.metadata.uid.clone()).await?;
        tracing::info!(group, "retention: deleted group snapshot and its members");
        Ok(())
    }

    /// A PVC in the staging namespace is usable only if snapstage made it and no pod other than a
    /// snapstage staging pod mounts it.
    async fn check_claim(&self, pvc: &PersistentVolumeClaim) -> Result<()> {
        ownership::require_managed("PersistentVolumeClaim", &pvc.metadata, "restore into")?;
        if ownership::is_production(&pvc.metadata) {
            return Err(Error::Refused(format!(
                "PersistentVolumeClaim {} is labelled production; restore-to-staging never writes to production",
                pvc.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let pods = api::list(&self.staging::<Pod>()?, &ListParams::default()).await?;
        for pod in pods {
            let mounts = pod
                .spec
                .as_ref()
                .map(|s| s.volumes.iter().flatten())
                .into_iter()
                .flatten()
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == name)
                });
            let staging_pod = ownership::is_managed(&pod.metadata)
                && label_of(&pod.metadata, LABEL_ROLE) == Some(ROLE_STAGING);
            if mounts && !staging_pod {
                return Err(Error::Refused(format!(
                    "PersistentVolumeClaim {name} is mounted by pod {}, which is not a snapstage staging pod ({LABEL_MANAGED_BY}={MANAGED_BY}, {LABEL_ROLE}={ROLE_STAGING}); restore-to-staging will not touch a volume someone else uses",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The staging namespace: refused if it is production or not snapstage's, created (server-
    /// side apply) if missing.
    async fn ensure_staging_namespace(&self, execution: &Execution) -> Result<()> {
        let ns = self.staging_namespace()?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api::get_opt(&api, ns).await? {
            Some(existing) => {
                if ownership::is_production(&existing.metadata) {
                    return Err(Error::Refused(format!(
                        "staging namespace {ns} is labelled production; restore-to-staging never writes into production"
                    )));
                }
                ownership::require_managed("Namespace", &existing.metadata, "restore into")
            }
            None => {
                let obj = Namespace {
                    metadata: meta(ns, None, execution, ROLE_STAGING, None),
                    ..Default::default()
                };
                api::apply(&api, &obj, FIELD_MANAGER).await?;
                tracing::info!(namespace = ns, "created the staging namespace");
                Ok(())
            }
        }
    }

    async fn volume_info(&self, pvc: &PersistentVolumeClaim) -> Result<VolumeInfo> {
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let spec = pvc.spec.as_ref();
        let source = spec
            .and_then(|s| s.data_source.as_ref())
            .map(|d| d.name.clone());
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
        let state = if phase == Some("Lost") {
            VolumeState::Failed(format!("PVC {name} is Lost (its volume is gone)"))
        } else {
            match &source {
                Some(snap) => match api::get_opt(&self.staging::<VolumeSnapshot>()?, snap).await? {
                    None => VolumeState::Failed(format!(
                        "the staging VolumeSnapshot {snap} of PVC {name} is gone"
                    )),
                    Some(s) => match snapshot_state(&s) {
                        SnapshotState::Ready => VolumeState::Available,
                        SnapshotState::Pending { .. } => VolumeState::Creating,
                        SnapshotState::Failed(why) => {
                            VolumeState::Failed(format!("staging VolumeSnapshot {snap}: {why}"))
                        }
                    },
                },
                None => VolumeState::Failed(format!("PVC {name} has no dataSource")),
            }
        };
        let size = spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .map(gib);
        Ok(VolumeInfo {
            id: name,
            state,
            zone: None,
            snapshot: source,
            size_gib: size,
            tags: pvc
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl Backend for Csi {
    fn name(&self) -> &'static str {
        B
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }

    fn selection(&self) -> Option<&dyn Selection> {
        Some(self)
    }

    fn restore_outputs(&self) -> Option<&dyn RestoreOutputs> {
        Some(self)
    }

    async fn describe_source(&self, source: &str) -> Result<Option<i64>> {
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.params.namespace);
        let pvc = api::get_opt(&api, source)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "PersistentVolumeClaim {}/{source} does not exist",
                    self.params.namespace
                ),
            })?;
        let status = pvc.status.as_ref().and_then(|s| s.capacity.as_ref());
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref());
        Ok(status
            .or(requested)
            .and_then(|c| c.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .map(gib))
    }

    async fn find_snapshot(
        &self,
        source: &str,
        execution: &Execution,
    ) -> Result<Option<SnapshotInfo>> {
        if self.params.group_snapshot_class.is_some() {
            let group = group_snapshot_name(execution);
            return match api::get_opt(&self.groups(), &group).await? {
                Some(_) => Ok(Some(self.group_info(&group, source).await?)),
                None => Ok(None),
            };
        }
        let name = snapshot_name(source, execution);
        match api::get_opt(&self.snapshots(), &name).await? {
            Some(s) => {
                ownership::require_managed("VolumeSnapshot", &s.metadata, "reuse")?;
                Ok(Some(snapshot_info(&name, &s)))
            }
            None => Ok(None),
        }
    }

    async fn create_snapshot(
        &self,
        source: &str,
        execution: &Execution,
        description: &str,
    ) -> Result<SnapshotInfo> {
        if let Some(class) = &self.params.group_snapshot_class {
            let selector = self
                .selector
                .lock()
                .map_err(|_| Error::Internal("selector lock poisoned".into()))?
                .clone()
                .ok_or_else(|| {
                    Error::parameter(
                        "selector",
                        "missing: csi.groupSnapshotClass snapshots the PVCs a label selector picks as one group; give selector (e.g. \"app=orders-db\") instead of volumeIds",
                    )
                })?;
            let name = group_snapshot_name(execution);
            let mut m = meta(
                &name,
                Some(&self.params.namespace),
                execution,
                ROLE_SNAPSHOT,
                None,
            );
            m.annotations
                .get_or_insert_default()
                .insert("snapstage.io/description".into(), description.into());
            let group = VolumeGroupSnapshot {
                api_version: format!(
                    "{}/{}",
                    model::GROUP_SNAPSHOT_GROUP,
                    model::GROUP_SNAPSHOT_VERSION
                ),
                kind: "VolumeGroupSnapshot".into(),
                metadata: m,
                spec: VolumeGroupSnapshotSpec {
                    source: VolumeGroupSnapshotSource {
                        selector: Some(match_labels(&selector)?),
                        volume_group_snapshot_content_name: None,
                    },
                    volume_group_snapshot_class_name: Some(class.clone()),
                },
                status: None,
            };
            let (g, _) = create_or_read(&self.groups(), &group).await?;
            ownership::require_managed("VolumeGroupSnapshot", &g.metadata, "reuse")?;
            return self.group_info(&name, source).await;
        }
        let name = snapshot_name(source, execution);
        let mut m = meta(
            &name,
            Some(&self.params.namespace),
            execution,
            ROLE_SNAPSHOT,
            Some(source),
        );
        m.annotations
            .get_or_insert_default()
            .insert("snapstage.io/description".into(), description.into());
        let snap = VolumeSnapshot {
            api_version: format!("{SNAPSHOT_GROUP}/{}", model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshot".into(),
            metadata: m,
            spec: VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(source.to_string()),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: self.params.snapshot_class.clone(),
            },
            status: None,
        };
        let (s, _) = create_or_read(&self.snapshots(), &snap).await?;
        ownership::require_managed("VolumeSnapshot", &s.metadata, "reuse")?;
        Ok(snapshot_info(&name, &s))
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        match parse_id(id) {
            SnapshotId::Member { group, pvc } => self.group_info(group, pvc).await,
            SnapshotId::Single(name) => match self.resolve(name).await? {
                Some(s) => Ok(snapshot_info(id, &s)),
                None => Err(Error::NotFound {
                    backend: B,
                    message: format!("VolumeSnapshot {}/{name}", self.params.namespace),
                }),
            },
        }
    }

    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        Ok(self
            .managed_snapshots(source)
            .await?
            .into_iter()
            .find(|s| s.state == SnapshotState::Ready))
    }

    async fn find_volume(&self, execution: &Execution) -> Result<Option<VolumeInfo>> {
        let api = self.staging::<PersistentVolumeClaim>()?;
        let selector = format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXECUTION}={},{LABEL_ROLE}={ROLE_STAGING}",
            execution_label(&execution.key)
        );
        let mut found = api::list(&api, &ListParams::default().labels(&selector)).await?;
        found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        match found.first() {
            Some(pvc) => {
                self.check_claim(pvc).await?;
                Ok(Some(self.volume_info(pvc).await?))
            }
            None => Ok(None),
        }
    }

    async fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        _spec: &VolumeSpec,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        let ns = self.staging_namespace()?.to_string();
        // The production side: the bound content gives the storage snapshot and its driver.
        let prod = self
            .resolve(&snapshot.id)
            .await?
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!("snapshot {} has no VolumeSnapshot yet", snapshot.id),
            })?;
        let prod_name = prod.metadata.name.clone().unwrap_or_default();
        let status = prod.status.clone().unwrap_or_default();
        let content_name = status
            .bound_volume_snapshot_content_name
            .clone()
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshot {}/{prod_name} is not bound to a VolumeSnapshotContent yet",
                    self.params.namespace
                ),
            })?;
        let contents: Api<VolumeSnapshotContent> = Api::all(self.client.clone());
        let content = api::get_opt(&contents, &content_name)
            .await?
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshotContent {content_name} (bound to {prod_name}) does not exist"
                ),
            })?;
        let handle = content
            .status
            .as_ref()
            .and_then(|s| s.snapshot_handle.clone())
            .or_else(|| content.spec.source.snapshot_handle.clone())
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!("VolumeSnapshotContent {content_name} has no snapshot handle yet"),
            })?;
        let restore_size = status
            .restore_size
            .clone()
            .or_else(|| {
                content
                    .status
                    .as_ref()
                    .and_then(|s| s.restore_size)
                    .map(|b| b.to_string())
            })
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshot {prod_name} reports no restoreSize; cannot size the staging PVC"
                ),
            })?;

        let source_pvc = if snapshot.source.is_empty() {
            prod_name.clone()
        } else {
            snapshot.source.clone()
        };
        let name = staging_name(&source_pvc, execution);

        // Interlock first: nothing is created when the target is refused.
        self.ensure_staging_namespace(execution).await?;
        let claims = self.staging::<PersistentVolumeClaim>()?;
        if let Some(existing) = api::get_opt(&claims, &name).await? {
            self.check_claim(&existing).await?;
            return self.volume_info(&existing).await;
        }

        let staged_content_name = staging_content_name(&ns, &name);
        let staged_content = VolumeSnapshotContent {
            api_version: format!("{SNAPSHOT_GROUP}/{}", model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshotContent".into(),
            metadata: meta(
                &staged_content_name,
                None,
                execution,
                ROLE_STAGING,
                Some(&source_pvc),
            ),
            spec: VolumeSnapshotContentSpec {
                deletion_policy: "Retain".into(),
                driver: content.spec.driver.clone(),
                source: model::ContentSource {
                    snapshot_handle: Some(handle.clone()),
                    volume_handle: None,
                },
                source_volume_mode: content.spec.source_volume_mode.clone(),
                volume_snapshot_class_name: None,
                volume_snapshot_ref: SnapshotRef {
                    api_version: None,
                    kind: Some("VolumeSnapshot".into()),
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                },
            },
            status: None,
        };
        let (c, _) = create_or_read(&contents, &staged_content).await?;
        ownership::require_managed("VolumeSnapshotContent", &c.metadata, "bind")?;
        if c.spec.source.snapshot_handle.as_deref() != Some(handle.as_str()) {
            return Err(Error::Refused(format!(
                "VolumeSnapshotContent {staged_content_name} exists with another snapshot handle; it is not this run's"
            )));
        }

        let staged = VolumeSnapshot {
            api_version: format!("{SNAPSHOT_GROUP}/{}", model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshot".into(),
            metadata: meta(&name, Some(&ns), execution, ROLE_STAGING, Some(&source_pvc)),
            spec: VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: None,
                    volume_snapshot_content_name: Some(staged_content_name.clone()),
                },
                volume_snapshot_class_name: None,
            },
            status: None,
        };
        let (s, _) = create_or_read(&self.staging::<VolumeSnapshot>()?, &staged).await?;
        ownership::require_managed("VolumeSnapshot", &s.metadata, "restore from")?;

        let claim = PersistentVolumeClaim {
            metadata: meta(&name, Some(&ns), execution, ROLE_STAGING, Some(&source_pvc)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: self.params.storage_class.clone(),
                volume_mode: content.spec.source_volume_mode.clone(),
                data_source: Some(TypedLocalObjectReference {
                    api_group: Some(SNAPSHOT_GROUP.into()),
                    kind: "VolumeSnapshot".into(),
                    name: name.clone(),
                }),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(restore_size),
                    )])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        };
        let (pvc, created) = create_or_read(&claims, &claim).await?;
        if !created {
            self.check_claim(&pvc).await?;
        }
        // The PVC itself may stay Pending under WaitForFirstConsumer until the staging database's
        // pod uses it: the volume counts as available once the staging VolumeSnapshot is ready.
        self.volume_info(&pvc).await
    }

    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        let api = self.staging::<PersistentVolumeClaim>()?;
        let pvc = api::get_opt(&api, id)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "PersistentVolumeClaim {}/{id} does not exist (deleted while restoring?)",
                    self.staging_namespace().unwrap_or_default()
                ),
            })?;
        self.check_claim(&pvc).await?;
        self.volume_info(&pvc).await
    }

    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        check_name(field, source).map_err(|_| {
            Error::parameter(
                field,
                format!(
                    "expected the name of a PersistentVolumeClaim in namespace {} (lowercase letters, digits, '-' and '.'), got {source:?}",
                    self.params.namespace
                ),
            )
        })
    }

    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        let ok = match parse_id(id) {
            SnapshotId::Single(name) => is_dns1123_subdomain(name),
            SnapshotId::Member { group, pvc } => {
                is_dns1123_subdomain(group) && is_dns1123_subdomain(pvc)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::parameter(
                field,
                format!(
                    "expected the name of a VolumeSnapshot in namespace {} (or <group snapshot>/<pvc>), got {id:?}",
                    self.params.namespace
                ),
            ))
        }
    }
}

impl Retention for Csi {
    fn managed_snapshots<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(async move {
            let found = api::list(
                &self.snapshots(),
                &ListParams::default().labels(&Self::source_selector(source)),
            )
            .await?;
            let mut found: Vec<(Option<Time>, String, SnapshotInfo)> = found
                .into_iter()
                .filter(|s| {
                    ownership::is_managed(&s.metadata)
                        && s.spec.source.persistent_volume_claim_name.as_deref() == Some(source)
                })
                .map(|s| {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    let info = snapshot_info(&name, &s);
                    (s.metadata.creation_timestamp, name, info)
                })
                .collect();
            if self.params.group_snapshot_class.is_some() {
                found.extend(self.managed_group_members(source).await?);
            }
            found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
            Ok(found.into_iter().map(|(_, _, info)| info).collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = match parse_id(id) {
                SnapshotId::Single(name) => name,
                // A member goes with its group: the snapshot controller refuses to delete a member
                // on its own, and deletes the members (owned by the group) with the group.
                SnapshotId::Member { group, .. } => return self.delete_group(group).await,
            };
            let Some(s) = api::get_opt(&self.snapshots(), name).await? else {
                return Ok(());
            };
            ownership::require_managed("VolumeSnapshot", &s.metadata, "delete")?;
            if label_of(&s.metadata, LABEL_ROLE) != Some(ROLE_SNAPSHOT) {
                return Err(Error::Refused(format!(
                    "VolumeSnapshot {name} is not labelled {LABEL_ROLE}={ROLE_SNAPSHOT}; retention deletes only production snapshots snapstage took"
                )));
            }
            api::delete(&self.snapshots(), name, s.metadata.uid.clone()).await?;
            tracing::info!(snapshot = name, "retention: deleted");
            Ok(())
        })
    }
}

impl Selection for Csi {
    fn select_sources<'a>(&'a self, selector: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            if self.params.group_snapshot_class.is_some() {
                match_labels(selector)?;
            }
            if let Ok(mut s) = self.selector.lock() {
                *s = Some(selector.to_string());
            }
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &self.params.namespace);
            let found = api::list(&api, &ListParams::default().labels(selector)).await?;
            let mut names: Vec<String> =
                found.into_iter().filter_map(|p| p.metadata.name).collect();
            names.sort();
            Ok(names)
        })
    }
}

impl RestoreOutputs for Csi {
    fn outputs(&self, volume: &VolumeInfo) -> Vec<(String, String)> {
        vec![
            ("PvcName".into(), volume.id.clone()),
            (
                "SnapshotName".into(),
                volume.snapshot.clone().unwrap_or_default(),
            ),
            (
                "Namespace".into(),
                self.params.staging_namespace.clone().unwrap_or_default(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
