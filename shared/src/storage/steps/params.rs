//! The parameters of the two storage steps and what can be checked of them without the backend
//! (ids are checked by the backend: [`Backend::check_source`](crate::storage::Backend::check_source)).

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::storage::csi::CsiParams;
use crate::storage::hooks::HookParams;
use crate::storage::open::{BackendChoice, ChoosesBackend, FlashArrayParams};
use crate::storage::{BackendKind, CopyTarget};

/// `snapshot-production` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotParams {
    /// The production volume(s) to snapshot, as one group: `vol-…` (EBS), array volume names
    /// (FlashArray). Or give `selector`.
    #[serde(default, alias = "volumes")]
    pub volume_ids: Vec<String>,
    /// A label selector that picks the production volumes (backends with labels).
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub backend: BackendKind,
    /// How to reach a FlashArray / Cloud Block Store (`backend: "flasharray"`).
    #[serde(default)]
    pub flasharray: Option<FlashArrayParams>,
    /// The cluster and production namespace (`backend: "csi"`).
    #[serde(default)]
    pub csi: Option<CsiParams>,
    /// Commands run in the database's pod around snapshot creation (app-consistent snapshots).
    #[serde(default)]
    pub hooks: Option<HookParams>,
    /// Several volumes at one point in time. `true`: required; one call cuts them all (EBS:
    /// CreateSnapshots of the one instance they are attached to) or the step fails saying why.
    /// `false`: each volume on its own. Unset: one point in time when the backend can, otherwise
    /// each volume on its own and the summary says so (`PointInTime` output).
    #[serde(default)]
    pub consistent_group: Option<bool>,
    /// Snapshot description; defaults to one naming the run.
    #[serde(default)]
    pub description: Option<String>,
    /// Copy each completed snapshot to another region (EBS), e.g. for a second site.
    #[serde(default)]
    pub copy_to: Option<CopyTarget>,
    /// Keep the newest N snapshots snapstage made of each volume (this run's included) and
    /// delete older ones that carry snapstage's tags. Unset: delete nothing.
    #[serde(default)]
    pub retain: Option<u32>,
    /// Report what would be done; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

pub const MAX_VOLUMES: usize = 16;
pub const MAX_RETAIN: u32 = 1000;

impl SnapshotParams {
    /// Checks what can be checked without the backend (ids are checked by the backend).
    pub fn validate(&self) -> Result<()> {
        self.choice().validate()?;
        match (&self.selector, self.volume_ids.is_empty()) {
            (Some(_), false) => {
                return Err(Error::parameter(
                    "selector",
                    "give either volumeIds or selector, not both",
                ));
            }
            (Some(sel), true) => {
                if sel.trim().is_empty() || sel.len() > 1024 {
                    return Err(Error::parameter(
                        "selector",
                        format!("expected a label selector like \"app=orders-db\", got {sel:?}"),
                    ));
                }
            }
            (None, true) if self.protection_group().is_some() => {
                if self.retain.is_some() {
                    return Err(Error::parameter(
                        "retain",
                        "a protection group keeps snapshots by its own retention policy; remove retain or snapshot volumes",
                    ));
                }
            }
            (None, false) if self.protection_group().is_some() => {
                return Err(Error::parameter(
                    "volumeIds",
                    "give either volumeIds or flasharray.protectionGroup (which snapshots all of its volumes as one group), not both",
                ));
            }
            (None, _) => check_count(self.volume_ids.len())?,
        }
        for (i, v) in self.volume_ids.iter().enumerate() {
            if self.volume_ids[..i].contains(v) {
                return Err(Error::parameter(
                    format!("volumeIds[{i}]"),
                    format!("{v} is listed twice"),
                ));
            }
        }
        if let Some(d) = &self.description
            && d.len() > 255
        {
            return Err(Error::parameter("description", "at most 255 characters"));
        }
        if let Some(c) = &self.copy_to {
            c.validate()?;
        }
        if let Some(n) = self.retain
            && !(1..=MAX_RETAIN).contains(&n)
        {
            return Err(Error::parameter(
                "retain",
                format!("expected 1 to {MAX_RETAIN} snapshots to keep per volume, got {n}"),
            ));
        }
        if let Some(csi) = &self.csi
            && csi.group_snapshot_class.is_some()
            && self.selector.is_none()
        {
            return Err(Error::parameter(
                "selector",
                "missing: csi.groupSnapshotClass snapshots the PVCs a label selector picks as one group; give selector (e.g. \"app=orders-db\") instead of volumeIds",
            ));
        }
        if let Some(h) = &self.hooks {
            h.validate(self.csi.as_ref())?;
        }
        match (self.consistent_group, self.native_group()) {
            (Some(false), Some(group)) => {
                return Err(Error::parameter(
                    "consistentGroup",
                    format!(
                        "false asks for one snapshot per volume, but {group} snapshots as one group; remove one of them"
                    ),
                ));
            }
            (Some(true), None) if self.backend == BackendKind::FlashArray => {
                return Err(Error::parameter(
                    "consistentGroup",
                    "backend \"flasharray\" cuts several volumes at one point in time through a protection group: give flasharray.protectionGroup instead of volumeIds",
                ));
            }
            (Some(true), None) if self.backend == BackendKind::Csi => {
                return Err(Error::parameter(
                    "consistentGroup",
                    "backend \"csi\" cuts several PVCs at one point in time with a VolumeGroupSnapshot: give csi.groupSnapshotClass and a selector instead of volumeIds",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn protection_group(&self) -> Option<&str> {
        self.flasharray.as_ref()?.protection_group.as_deref()
    }

    /// The parameter that makes the backend cut its own group (one point in time), if any.
    pub(super) fn native_group(&self) -> Option<&'static str> {
        if self.protection_group().is_some() {
            Some("flasharray.protectionGroup")
        } else if self
            .csi
            .as_ref()
            .is_some_and(|c| c.group_snapshot_class.is_some())
        {
            Some("csi.groupSnapshotClass")
        } else {
            None
        }
    }
}

pub(super) fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > MAX_VOLUMES {
        return Err(Error::parameter(
            "volumeIds",
            format!("expected 1 to {MAX_VOLUMES} volume ids (or a selector), got {n}"),
        ));
    }
    Ok(())
}

/// `restore-to-staging` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreParams {
    /// The snapshot to restore (e.g. `#{Snapshot.SnapshotId}`); or give `sourceVolumeId`.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Restore the newest completed snapstage snapshot of this production volume.
    #[serde(default)]
    pub source_volume_id: Option<String>,
    /// EBS: where the staging volume is made (must match the staging nodes' zone).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// EBS: the staging volume's type (default gp3).
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub flasharray: Option<FlashArrayParams>,
    /// The cluster, production namespace and staging namespace (`backend: "csi"`).
    #[serde(default)]
    pub csi: Option<CsiParams>,
    /// Several volumes of one group snapshot, each restored to a name the user chose, in one
    /// action and all or nothing (instead of `sourceVolumeId`).
    #[serde(default)]
    pub targets: Option<Vec<RestoreTarget>>,
    /// With `targets`: a target name that holds a staging volume of an earlier run (snapstage's
    /// staging mark, no production marker) is overwritten. Never a volume without the mark.
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// One entry of `targets`: a volume of the group snapshot and the name of its staging copy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreTarget {
    /// A volume of the group snapshot (`jenkins-home`; `vol-…` on EBS).
    pub source_volume_id: String,
    /// The staging volume's name (FlashArray volume name, EBS `Name` tag).
    pub name: String,
    /// Reports this target's volume id as the output variable `<output>VolumeId`.
    #[serde(default)]
    pub output: Option<String>,
}

/// At most this many targets in one action.
pub const MAX_TARGETS: usize = 16;

const VOLUME_TYPES: [&str; 6] = ["gp3", "gp2", "io1", "io2", "st1", "sc1"];

impl RestoreParams {
    /// Checks what can be checked without the backend (ids are checked by the backend).
    pub fn validate(&self) -> Result<()> {
        self.choice().validate()?;
        self.validate_targets()?;
        if self.snapshot_id.is_none() && self.source_volume_id.is_none() && self.targets.is_none() {
            return Err(Error::parameter(
                "snapshotId",
                "missing: give snapshotId (e.g. \"#{Snapshot.SnapshotId}\") or sourceVolumeId to restore its newest snapshot",
            ));
        }
        if let Some(csi) = &self.csi
            && self.backend == BackendKind::Csi
            && csi.staging_namespace.is_none()
        {
            return Err(Error::parameter(
                "csi.stagingNamespace",
                "missing: the namespace restore-to-staging makes the staging PVC in, e.g. \"snapstage-staging\" (never the production namespace)",
            ));
        }
        if self.backend != BackendKind::Ebs {
            for (field, given) in [
                ("availabilityZone", self.availability_zone.is_some()),
                ("volumeType", self.volume_type.is_some()),
            ] {
                if given {
                    return Err(Error::parameter(
                        field,
                        "only for backend \"ebs\"; an array volume lands on the array that holds the snapshot",
                    ));
                }
            }
            return Ok(());
        }
        let Some(az) = &self.availability_zone else {
            return Err(Error::parameter(
                "availabilityZone",
                "missing: the zone of the staging nodes, e.g. \"us-east-1a\" (required for backend \"ebs\")",
            ));
        };
        if az.len() < 4
            || !az
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::parameter(
                "availabilityZone",
                format!("expected a zone like \"us-east-1a\", got {az:?}"),
            ));
        }
        if !VOLUME_TYPES.contains(&self.volume_type()) {
            return Err(Error::parameter(
                "volumeType",
                format!(
                    "expected one of {}, got {:?}",
                    VOLUME_TYPES.join(", "),
                    self.volume_type()
                ),
            ));
        }
        Ok(())
    }

    pub fn volume_type(&self) -> &str {
        self.volume_type.as_deref().unwrap_or("gp3")
    }

    /// `targets` and `overwrite`, as far as they can be checked without the backend.
    fn validate_targets(&self) -> Result<()> {
        let Some(targets) = &self.targets else {
            if self.overwrite {
                return Err(Error::parameter(
                    "overwrite",
                    "only with targets (staging volumes named as you choose); a single restore makes a new volume each run",
                ));
            }
            return Ok(());
        };
        if self.source_volume_id.is_some() {
            return Err(Error::parameter(
                "sourceVolumeId",
                "give either sourceVolumeId (one volume, named by snapstage) or targets (several volumes to names you choose, each with its own sourceVolumeId), not both",
            ));
        }
        if targets.is_empty() || targets.len() > MAX_TARGETS {
            return Err(Error::parameter(
                "targets",
                format!(
                    "expected 1 to {MAX_TARGETS} targets like {{\"sourceVolumeId\": \"jenkins-home\", \"name\": \"ci-jenkins-home\"}}, got {}",
                    targets.len()
                ),
            ));
        }
        for (i, t) in targets.iter().enumerate() {
            if t.source_volume_id.trim().is_empty() {
                return Err(Error::parameter(
                    format!("targets[{i}].sourceVolumeId"),
                    "missing: the volume of the group snapshot to restore",
                ));
            }
            if t.name.trim().is_empty() {
                return Err(Error::parameter(
                    format!("targets[{i}].name"),
                    "missing: the name of the staging volume to restore into",
                ));
            }
            if let Some(j) = targets[..i].iter().position(|o| o.name == t.name) {
                return Err(Error::parameter(
                    format!("targets[{i}].name"),
                    format!(
                        "{:?} is also the name of targets[{j}]; each target needs its own name",
                        t.name
                    ),
                ));
            }
            if let Some(s) = targets.iter().find(|o| o.source_volume_id == t.name) {
                return Err(Error::parameter(
                    format!("targets[{i}].name"),
                    format!(
                        "{:?} is a source volume (targets with sourceVolumeId {:?}); restore-to-staging never writes over a source",
                        t.name, s.source_volume_id
                    ),
                ));
            }
            if let Some(o) = &t.output {
                if o.is_empty() || o.len() > 100 || !o.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(Error::parameter(
                        format!("targets[{i}].output"),
                        format!(
                            "expected letters and digits like \"Jenkins\" (reported as JenkinsVolumeId), got {o:?}"
                        ),
                    ));
                }
                if targets[..i].iter().any(|p| p.output.as_deref() == Some(o)) {
                    return Err(Error::parameter(
                        format!("targets[{i}].output"),
                        format!("{o:?} is used by another target; each output label once"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ChoosesBackend for SnapshotParams {
    fn choice(&self) -> BackendChoice<'_> {
        BackendChoice {
            kind: self.backend,
            flasharray: self.flasharray.as_ref(),
            csi: self.csi.as_ref(),
        }
    }
}

impl ChoosesBackend for RestoreParams {
    fn choice(&self) -> BackendChoice<'_> {
        BackendChoice {
            kind: self.backend,
            flasharray: self.flasharray.as_ref(),
            csi: self.csi.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::params::{Layer, merge};
    use serde_json::{Value, json};

    fn parse<P: serde::de::DeserializeOwned>(v: Value) -> Result<P> {
        let Value::Object(values) = v else { panic!() };
        merge(&[Layer {
            source: "UserParameters",
            values,
        }])
    }

    #[test]
    fn snapshot_params_are_checked_with_field_names() {
        let p: SnapshotParams = parse(json!({"volumeIds": ["vol-0abc"]})).unwrap();
        p.validate().unwrap();
        let p: SnapshotParams = parse(json!({"volumeIds": []})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("volumeIds:")
        );
        let p: SnapshotParams = parse(json!({"volumeIds": ["vol-0abc", "vol-0abc"]})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "backend": "netapp"}))
            .unwrap_err();
        assert!(e.to_string().starts_with("UserParameters.backend"), "{e}");
    }

    #[test]
    fn backend_sections_and_retention_are_checked() {
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["db"], "backend": "flasharray"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("flasharray: missing"), "{e}");
        let p: SnapshotParams = parse(json!({"volumeIds": ["db"], "backend": "flasharray",
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "fa-token"}}))
        .unwrap();
        p.validate().unwrap();
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"],
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "t"}}))
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("backend is \"ebs\""), "{e}");
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "retain": 0}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("retain:"), "{e}");
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "selector": "app=db"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        // An array restore has no zone; an EBS-only field is refused, naming it.
        let e = parse::<RestoreParams>(
            json!({"snapshotId": "db.snapstage-1", "backend": "flasharray",
            "availabilityZone": "us-east-1a",
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "t"}}),
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("availabilityZone: only for backend"),
            "{e}"
        );
    }

    #[test]
    fn restore_needs_a_snapshot_or_a_source_and_a_zone() {
        let p: RestoreParams = parse(json!({"availabilityZone": "us-east-1a"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("snapshotId: missing")
        );
        let p: RestoreParams =
            parse(json!({"snapshotId": "snap-0abc", "availabilityZone": "US EAST"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("availabilityZone")
        );
        let p: RestoreParams =
            parse(json!({"sourceVolumeId": "vol-0abc", "availabilityZone": "us-east-1a"})).unwrap();
        p.validate().unwrap();
        assert_eq!(p.volume_type(), "gp3");
        let p: RestoreParams = parse(json!({"snapshotId": "snap-0abc"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("availabilityZone: missing"),
        );
        let p: RestoreParams =
            parse(json!({"snapshotId": "snap-0abc", "availabilityZone": "us-east-1a", "volumeType": "standard"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("volumeType")
        );
    }

    #[test]
    fn targets_are_checked_with_field_names() {
        let fa = json!({"endpoint": "https://cbs", "apiTokenSecret": "t",
            "replicatedFrom": {"array": "fa-onprem", "protectionGroup": "pg-ci"}});
        let check = |v: Value| {
            let mut v = v;
            v["backend"] = json!("flasharray");
            v["flasharray"] = fa.clone();
            parse::<RestoreParams>(v).and_then(|p| p.validate())
        };
        let two = json!([
            {"sourceVolumeId": "jenkins-home", "name": "ci-jenkins-home", "output": "Jenkins"},
            {"sourceVolumeId": "nexus-blobs", "name": "ci-nexus-blobs"}
        ]);
        check(json!({"targets": two})).unwrap();
        check(json!({"targets": two, "snapshotId": "fa-onprem:pg-ci.42", "overwrite": true}))
            .unwrap();
        let err = |v: Value| check(v).unwrap_err().to_string();
        assert!(
            err(json!({"targets": two, "sourceVolumeId": "jenkins-home"}))
                .starts_with("sourceVolumeId: give either sourceVolumeId"),
        );
        assert!(err(json!({"targets": []})).starts_with("targets: expected 1 to 16 targets"));
        let many: Vec<Value> = (0..17)
            .map(|i| json!({"sourceVolumeId": "v", "name": format!("t{i}")}))
            .collect();
        assert!(err(json!({"targets": many})).starts_with("targets: expected 1 to 16"));
        assert_eq!(
            err(json!({"targets": [{"sourceVolumeId": "a", "name": "x"},
                                   {"sourceVolumeId": "b", "name": "x"}]})),
            "targets[1].name: \"x\" is also the name of targets[0]; each target needs its own name"
        );
        assert!(
            err(json!({"targets": [{"sourceVolumeId": "a", "name": "b"},
                                   {"sourceVolumeId": "b", "name": "c"}]}))
            .starts_with("targets[0].name: \"b\" is a source volume"),
        );
        assert!(
            err(json!({"targets": [{"sourceVolumeId": "a", "name": ""}]}))
                .starts_with("targets[0].name: missing")
        );
        assert!(
            err(json!({"targets": [{"sourceVolumeId": " ", "name": "x"}]}))
                .starts_with("targets[0].sourceVolumeId: missing")
        );
        assert!(
            err(json!({"targets": [{"sourceVolumeId": "a", "name": "x", "output": "ci-home"}]}))
                .starts_with("targets[0].output: expected letters and digits")
        );
        assert!(
            err(
                json!({"targets": [{"sourceVolumeId": "a", "name": "x", "output": "A"},
                                   {"sourceVolumeId": "b", "name": "y", "output": "A"}]})
            )
            .starts_with("targets[1].output: \"A\" is used by another target"),
        );
        assert!(
            err(json!({"sourceVolumeId": "a", "overwrite": true}))
                .starts_with("overwrite: only with targets")
        );
        // Unknown fields of a target are named.
        let e =
            parse::<RestoreParams>(json!({"targets": [{"sourceVolumeId": "a", "volume": "x"}]}))
                .unwrap_err();
        assert!(e.to_string().contains("targets"), "{e}");
        // EBS still needs its zone.
        let p: RestoreParams =
            parse(json!({"targets": [{"sourceVolumeId": "vol-0abc", "name": "ci-home"}]})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("availabilityZone: missing")
        );
    }
}
