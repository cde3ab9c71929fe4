//! The production interlock for a volume a step imports: never a production-marked volume, and
//! only the staging volume snapstage made for this run unless the user names another one
//! explicitly.
//!
//! The storage backends and the staging step both see this module; neither reaches into the
//! other. A backend answers "what marks does this volume carry" ([`VolumeMarks`]: EBS tags from
//! DescribeVolumes, FlashArray tags of the volume and of its protection groups); the staging step
//! adds what the cluster says (the PVC's or VolumeSnapshot's labels, PVs that mount the same
//! array volume); [`decide`] applies one rule to both:
//!
//! 1. a production marker anywhere ([`is_production`]: `env=production`, ...,
//!    and `SNAPSTAGE_PRODUCTION_MARKERS`) refuses, whatever else is said;
//! 2. a snapstage staging volume of this run ([`same_run`]) is accepted;
//! 3. anything else is accepted only when the override parameter names exactly that volume.
//!
//! Refusals are [`Error::Refused`] (a CodePipeline `ConfigurationError`) saying why and what to
//! pass instead.

use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::job::contract::Execution;

pub mod markers;

pub use markers::{execution_tag, is_production};

/// The parameter that names a volume without this run's staging mark, to import it anyway.
pub const OVERRIDE_PARAM: &str = "allowUnmanagedVolume";

/// A boxed future, for the object-safe traits here.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One tag, label or annotation, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// `tag`, `label`, `protection group pg-orders tag`, `PersistentVolume pv-1 label`, ...
    pub on: String,
    pub key: String,
    pub value: String,
}

impl Marker {
    pub fn new(on: impl Into<String>, key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            on: on.into(),
            key: key.into(),
            value: value.into(),
        }
    }
}

/// What a backend (or the cluster) says about a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// The volume as messages name it: `EBS volume vol-0123…`, `PVC ns/name`.
    pub what: String,
    /// Every tag/label that may mark it production: its own and those of what it belongs to.
    pub markers: Vec<Marker>,
    /// Made by snapstage as a staging volume (managed-by snapstage, role staging): the run it
    /// records, an execution key or its tag form ([`execution_tag`]).
    pub staging_run: Option<String>,
}

impl Marks {
    /// The first marker that says production, if any.
    pub fn production_marker(&self) -> Option<&Marker> {
        self.markers
            .iter()
            .find(|m| is_production([(m.key.as_str(), m.value.as_str())]))
    }

    /// Adds what the cluster (or another source) says about the same volume.
    pub fn merge(&mut self, other: Marks) {
        self.markers.extend(other.markers);
        if self.staging_run.is_none() {
            self.staging_run = other.staging_run;
        }
    }
}

/// How to reach the FlashArray / Cloud Block Store that holds an imported array volume (the
/// `flasharray` parameter of deploy-staging-db): read-only, to check the volume's tags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArrayAccess {
    /// `https://array.example.com`.
    pub endpoint: String,
    /// Secrets Manager secret (name or ARN) with the API token (plain, or `{"apiToken"}`).
    pub api_token_secret: String,
    /// Extra trusted CA certificates (PEM) for an array with an internal CA.
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

/// A volume a backend can read the marks of.
#[derive(Debug, Clone, Copy)]
pub enum VolumeRef<'a> {
    /// An EBS volume id.
    Ebs(&'a str),
    /// A FlashArray volume name (`[realm::][pod::]volume`) on the array `access` reaches.
    FlashArray {
        volume: &'a str,
        access: &'a ArrayAccess,
    },
}

/// Reads the marks of a volume from its backend; `None` when it does not exist. Teardown and
/// the sweep delete a staging volume through the same access ([`VolumeMarks::delete_staging`]).
pub trait VolumeMarks: Send + Sync {
    fn marks<'a>(&'a self, volume: VolumeRef<'a>) -> BoxFuture<'a, Result<Option<Marks>>>;

    /// Deletes `volume` if [`deletable`] allows it, its marks read again right before; once it
    /// is detached (EBS `available`; FlashArray: no host connection). FlashArray destroys it (the
    /// array eradicates it after its own delay). `dry_run`: reads, deletes nothing. What cannot
    /// delete keeps every volume.
    fn delete_staging<'a>(
        &'a self,
        volume: VolumeRef<'a>,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Deletion>> {
        let _ = (volume, dry_run);
        Box::pin(async {
            Ok(Deletion::Kept(
                "nothing here can delete volumes (no EC2 or array access)".into(),
            ))
        })
    }
}

/// The tag (on the volume, or on a protection group that holds it) that keeps a staging volume
/// from being deleted by teardown and the sweep: value `true`.
pub const DELETION_PROTECTION_TAG: &str = "snapstage:deletion-protection";

/// What teardown / the sweep did with a staging volume (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted (EBS), or destroyed (FlashArray: eradicated by the array after its delay).
    Deleted,
    /// Dry run: it would be deleted.
    WouldDelete,
    /// It no longer exists (or is already being deleted / destroyed).
    Gone,
    /// Still attached: deleted by a later teardown invocation or sweep. Says how it is attached.
    Waiting(String),
    /// Kept, and why (not snapstage's staging volume, production, deletion-protected, ...).
    Kept(String),
}

/// The rule for deleting a volume teardown removes: it carries snapstage's staging mark
/// (managed-by snapstage, role staging, a run), no production marker anywhere, and no
/// [`DELETION_PROTECTION_TAG`]. `Err` says why it is kept.
pub fn deletable(marks: &Marks) -> std::result::Result<(), String> {
    if let Some(m) = marks.production_marker() {
        return Err(format!(
            "it is marked production ({} {}={}); snapstage never deletes a production volume",
            m.on, m.key, m.value
        ));
    }
    if let Some(m) = marks
        .markers
        .iter()
        .find(|m| m.key == DELETION_PROTECTION_TAG && m.value.eq_ignore_ascii_case("true"))
    {
        return Err(format!(
            "deletion-protected ({} {}={}); remove the tag to let teardown delete it",
            m.on, m.key, m.value
        ));
    }
    if marks.staging_run.is_none() {
        return Err(
            "it does not carry snapstage's staging mark (snapstage:managed-by=snapstage, snapstage:role=staging, snapstage:execution): snapstage deletes only volumes restore-to-staging made".into(),
        );
    }
    Ok(())
}

/// Reads nothing: every volume is unknown (plan-only tools that have no AWS access).
pub struct NoVolumeMarks;

impl VolumeMarks for NoVolumeMarks {
    fn marks<'a>(&'a self, volume: VolumeRef<'a>) -> BoxFuture<'a, Result<Option<Marks>>> {
        let what = match volume {
            VolumeRef::Ebs(id) => format!("EBS volume {id}"),
            VolumeRef::FlashArray { volume, .. } => format!("FlashArray volume {volume}"),
        };
        Box::pin(async move {
            Err(Error::Configuration(format!(
                "{what}: nothing here can read its tags, so the production interlock cannot check it"
            )))
        })
    }
}

/// Answers from a list known beforehand (tests; tools that already read the volumes): a volume
/// not in it does not exist.
#[derive(Debug, Clone, Default)]
pub struct KnownVolumes(pub Vec<(String, Marks)>);

impl KnownVolumes {
    /// An EBS volume as restore-to-staging tags it for the run `execution_key`.
    pub fn staging_ebs(id: &str, execution_key: &str) -> Self {
        Self(vec![(
            id.to_string(),
            Marks {
                what: format!("EBS volume {id}"),
                markers: vec![
                    Marker::new("tag", "snapstage:managed-by", "snapstage"),
                    Marker::new("tag", "snapstage:role", "staging"),
                    Marker::new("tag", "snapstage:execution", execution_key),
                ],
                staging_run: Some(execution_key.to_string()),
            },
        )])
    }

    /// The same list with one more volume.
    pub fn with(mut self, id: &str, marks: Marks) -> Self {
        self.0.push((id.to_string(), marks));
        self
    }
}

impl VolumeMarks for KnownVolumes {
    fn marks<'a>(&'a self, volume: VolumeRef<'a>) -> BoxFuture<'a, Result<Option<Marks>>> {
        let id = match volume {
            VolumeRef::Ebs(id) => id,
            VolumeRef::FlashArray { volume, .. } => volume,
        };
        let found = self.0.iter().find(|(v, _)| v == id).map(|(_, m)| m.clone());
        Box::pin(async move { Ok(found) })
    }

    /// Deletes nothing: answers what teardown does with a detached volume of these marks
    /// ([`deletable`]), for tests of what teardown says and sends to the cluster.
    fn delete_staging<'a>(
        &'a self,
        volume: VolumeRef<'a>,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Deletion>> {
        let marks = self.marks(volume);
        Box::pin(async move {
            Ok(match marks.await? {
                None => Deletion::Gone,
                Some(m) => match deletable(&m) {
                    Err(why) => Deletion::Kept(why),
                    Ok(()) if dry_run => Deletion::WouldDelete,
                    Ok(()) => Deletion::Deleted,
                },
            })
        })
    }
}

/// The CodePipeline pipeline execution a job's key belongs to, `pipeline/execution/`, when the
/// key is `pipeline/execution/action` (see `contract`); `None` for other keys.
fn pipeline_execution_prefix(execution: &Execution) -> Option<String> {
    let pipeline = execution.pipeline.as_deref()?;
    if execution.origin != "codepipeline" || pipeline.is_empty() {
        return None;
    }
    let rest = execution.key.strip_prefix(pipeline)?.strip_prefix('/')?;
    let (run, action) = rest.rsplit_once('/')?;
    (!run.is_empty() && !action.is_empty() && !run.contains('/'))
        .then(|| format!("{pipeline}/{run}/"))
}

/// True when `recorded` (the run a staging volume records: an execution key, or its tag form)
/// is this run: the same key; or, for a CodePipeline job, another action of the same pipeline
/// execution (restore-to-staging is one action, deploy-staging-db the next).
pub fn same_run(recorded: &str, execution: &Execution) -> bool {
    if recorded == execution.key || recorded == execution_tag(execution) {
        return true;
    }
    let Some(prefix) = pipeline_execution_prefix(execution) else {
        return false;
    };
    if recorded.starts_with(&prefix) {
        return true;
    }
    // A key longer than a tag allows is recorded as its first 100 characters, `…` and a hash:
    // the retained head must then be a prefix of the pipeline execution (or cover it).
    match recorded.split_once('…') {
        Some((head, _)) if head.chars().count() == 100 => {
            prefix.starts_with(head) || head.starts_with(&prefix)
        }
        _ => false,
    }
}

/// The volume a step is about to import, as the user named it.
#[derive(Debug, Clone, Copy)]
pub struct Import<'a> {
    /// The parameter that names it: `volumeId`, `pvcName`, `snapshotName`.
    pub field: &'a str,
    pub id: &'a str,
    /// The override parameter's value, if given.
    pub allow_unmanaged: Option<&'a str>,
    /// Where it is looked up, for a "not found": `ebs`, `flasharray`, `kubernetes`.
    pub backend: &'static str,
}

/// Why a volume was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// It carries this run's staging mark.
    ThisRun,
    /// The override names it (it is not production-marked).
    Override,
}

/// The interlock's rule. `marks` is what was read about the volume (`None`: it does not exist).
pub fn decide(
    import: Import<'_>,
    marks: Option<&Marks>,
    execution: &Execution,
) -> Result<Accepted> {
    let Import {
        field,
        id,
        allow_unmanaged,
        backend,
    } = import;
    if let Some(o) = allow_unmanaged
        && o != id
    {
        return Err(Error::parameter(
            OVERRIDE_PARAM,
            format!(
                "names {o:?}, but the volume to import is {id:?} ({field}); it must name exactly the volume it allows, or be removed"
            ),
        ));
    }
    let Some(marks) = marks else {
        return Err(Error::NotFound {
            backend,
            message: format!(
                "{field} {id:?} does not exist; pass the volume restore-to-staging made for this run (its VolumeId / PvcName output)"
            ),
            source: None,
        });
    };
    let what = &marks.what;
    if let Some(m) = marks.production_marker() {
        return Err(Error::Refused(format!(
            "{what} ({field}) is marked production ({} {}={}): snapstage never imports a production volume into staging, and {OVERRIDE_PARAM} cannot allow it; pass the staging volume restore-to-staging made for this run (its VolumeId / PvcName output)",
            m.on, m.key, m.value
        )));
    }
    match &marks.staging_run {
        Some(run) if same_run(run, execution) => Ok(Accepted::ThisRun),
        _ if allow_unmanaged.is_some() => Ok(Accepted::Override),
        Some(run) => Err(Error::Refused(format!(
            "{what} ({field}) is a snapstage staging volume of another run ({run}), not of this one ({}); pass this run's restore-to-staging output, or set {OVERRIDE_PARAM}: {id:?} to import it anyway",
            execution.key
        ))),
        None => Err(Error::Refused(format!(
            "{what} ({field}) does not carry snapstage's staging mark of this run ({}: restore-to-staging tags the volumes it makes); pass the volume restore-to-staging made for this run, or set {OVERRIDE_PARAM}: {id:?} if you are sure it is not production",
            execution.key
        ))),
    }
}

impl Accepted {
    /// Says why the volume was imported, for the step's summary.
    pub fn describe(&self, marks: &Marks) -> String {
        match self {
            Self::ThisRun => format!("{} is this run's staging volume", marks.what),
            Self::Override => format!(
                "{} has no staging mark of this run; imported because {OVERRIDE_PARAM} names it (no production marker found)",
                marks.what
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(key: &str, origin: &str, pipeline: Option<&str>) -> Execution {
        Execution {
            key: key.into(),
            origin: origin.into(),
            pipeline: pipeline.map(str::to_string),
            commit: None,
        }
    }

    fn job() -> Execution {
        ex(
            "shop/0b6c1e7a-6f8e-4a57-a1c4-3d2f8e9b7a11/DeployStagingDb",
            "codepipeline",
            Some("shop"),
        )
    }

    fn staging(run: &str) -> Marks {
        Marks {
            what: "EBS volume vol-1".into(),
            markers: vec![Marker::new("tag", "snapstage:role", "staging")],
            staging_run: Some(run.into()),
        }
    }

    fn import(allow: Option<&str>) -> Import<'_> {
        Import {
            field: "volumeId",
            id: "vol-1",
            allow_unmanaged: allow,
            backend: "ebs",
        }
    }

    #[test]
    fn another_action_of_the_same_pipeline_execution_is_this_run() {
        let e = job();
        assert!(same_run(
            "shop/0b6c1e7a-6f8e-4a57-a1c4-3d2f8e9b7a11/RestoreToStaging",
            &e
        ));
        assert!(same_run(&e.key, &e));
        assert!(!same_run(
            "shop/11111111-6f8e-4a57-a1c4-3d2f8e9b7a11/RestoreToStaging",
            &e
        ));
        assert!(!same_run(
            "shopfront/0b6c1e7a-6f8e-4a57-a1c4-3d2f8e9b7a11/RestoreToStaging",
            &e
        ));
        // A job keyed by its id (no pipeline execution known) matches only itself.
        let by_id = ex("job/2e43b5ce", "codepipeline", None);
        assert!(same_run("job/2e43b5ce", &by_id));
        assert!(!same_run("job/99", &by_id));
        // Direct requests and CodeCommit events: the same key only.
        let direct = ex("demo-1", "direct", None);
        assert!(same_run("demo-1", &direct));
        assert!(!same_run("demo-2", &direct));
        let prefixed = ex("a/b/c", "direct", None);
        assert!(
            !same_run("a/b/d", &prefixed),
            "only CodePipeline keys have actions"
        );
    }

    #[test]
    fn shortened_tags_match_by_their_head() {
        let pipeline = "p".repeat(90);
        let e = ex(
            &format!(
                "{pipeline}/0b6c1e7a-6f8e-4a57-a1c4-3d2f8e9b7a11/{}",
                "D".repeat(90)
            ),
            "codepipeline",
            Some(&pipeline),
        );
        let restore = ex(
            &format!(
                "{pipeline}/0b6c1e7a-6f8e-4a57-a1c4-3d2f8e9b7a11/{}",
                "R".repeat(90)
            ),
            "codepipeline",
            Some(&pipeline),
        );
        let tag = execution_tag(&restore);
        assert!(tag.contains('…'), "{tag}");
        assert!(same_run(&tag, &e));
        let other = ex(
            &format!("{}/x/{}", "q".repeat(120), "R".repeat(90)),
            "codepipeline",
            Some(&"q".repeat(120)),
        );
        assert!(!same_run(&execution_tag(&other), &e));
    }

    #[test]
    fn production_is_refused_even_when_named_by_the_override() {
        let mut m = staging(&job().key);
        m.markers
            .push(Marker::new("tag", "Environment", "Production"));
        for allow in [None, Some("vol-1")] {
            let e = decide(import(allow), Some(&m), &job()).unwrap_err();
            assert_eq!(e.failure_kind(), crate::FailureKind::ConfigurationError);
            let msg = e.to_string();
            assert!(
                msg.contains("is marked production (tag Environment=Production)")
                    && msg.contains("allowUnmanagedVolume cannot allow it"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_protection_group_marker_counts_as_the_volume_s() {
        let mut m = staging(&job().key);
        m.markers
            .push(Marker::new("protection group pg-orders tag", "env", "prod"));
        let msg = decide(import(None), Some(&m), &job())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("(protection group pg-orders tag env=prod)"),
            "{msg}"
        );
    }

    #[test]
    fn this_run_is_accepted_another_run_or_none_only_by_name() {
        let this = job();
        let restore = this.key.replace("DeployStagingDb", "RestoreToStaging");
        assert_eq!(
            decide(import(None), Some(&staging(&restore)), &this).unwrap(),
            Accepted::ThisRun
        );
        let other = staging("shop/another-execution/RestoreToStaging");
        let msg = decide(import(None), Some(&other), &this)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("a snapstage staging volume of another run (shop/another-execution/RestoreToStaging)")
                && msg.contains("allowUnmanagedVolume: \"vol-1\""),
            "{msg}"
        );
        assert_eq!(
            decide(import(Some("vol-1")), Some(&other), &this).unwrap(),
            Accepted::Override
        );
        let bare = Marks {
            what: "EBS volume vol-1".into(),
            ..Marks::default()
        };
        let e = decide(import(None), Some(&bare), &this).unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("does not carry snapstage's staging mark of this run"),
            "{e}"
        );
        assert_eq!(
            decide(import(Some("vol-1")), Some(&bare), &this).unwrap(),
            Accepted::Override
        );
    }

    #[test]
    fn the_override_must_name_the_imported_volume() {
        let e = decide(import(Some("vol-2")), Some(&staging("x")), &job()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "allowUnmanagedVolume: names \"vol-2\", but the volume to import is \"vol-1\""
            ),
            "{e}"
        );
    }

    #[test]
    fn only_an_unprotected_staging_volume_without_production_marker_is_deletable() {
        let run = job().key;
        assert_eq!(deletable(&staging(&run)), Ok(()));
        let mut prod = staging(&run);
        prod.markers
            .push(Marker::new("protection group pg-orders tag", "env", "prod"));
        assert!(deletable(&prod).unwrap_err().contains("marked production"));
        let mut protected = staging(&run);
        protected
            .markers
            .push(Marker::new("tag", DELETION_PROTECTION_TAG, "True"));
        assert!(
            deletable(&protected)
                .unwrap_err()
                .starts_with("deletion-protected (tag snapstage:deletion-protection=True)")
        );
        let mut off = staging(&run);
        off.markers
            .push(Marker::new("tag", DELETION_PROTECTION_TAG, "false"));
        assert_eq!(deletable(&off), Ok(()));
        let bare = Marks {
            what: "EBS volume vol-1".into(),
            ..Marks::default()
        };
        assert!(
            deletable(&bare)
                .unwrap_err()
                .contains("does not carry snapstage's staging mark")
        );
    }

    #[test]
    fn a_missing_volume_is_a_configuration_error() {
        let e = decide(import(Some("vol-1")), None, &job()).unwrap_err();
        assert_eq!(e.failure_kind(), crate::FailureKind::ConfigurationError);
        assert!(
            e.to_string().contains("volumeId \"vol-1\" does not exist"),
            "{e}"
        );
    }
}
