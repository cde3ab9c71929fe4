//! The labels and annotations snapstage puts on Kubernetes objects: `app.kubernetes.io/*` for
//! who made an object, `snapstage.io/*` for the run, role and lifecycle. Defined once for the
//! storage backends (CSI snapshots, staging PVCs) and the staging environment.

/// `app.kubernetes.io/managed-by` value on everything snapstage makes (the tag value as well).
pub use crate::interlock::markers::MANAGED_BY;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_EXECUTION: &str = "snapstage.io/execution";
pub const LABEL_COMMIT: &str = "snapstage.io/commit";
pub const LABEL_ROLE: &str = "snapstage.io/role";
/// On the namespace: a hash of the pipeline it belongs to (rollback finds its siblings).
pub const LABEL_PIPELINE: &str = "snapstage.io/pipeline";
/// On the namespace: `"true"` once the deploy succeeded; `"false"` from each apply until then.
pub const LABEL_HEALTHY: &str = "snapstage.io/healthy";
/// When the namespace's database was published (RFC 3339).
pub const ANNOTATION_HEALTHY_AT: &str = "snapstage.io/healthy-at";
/// What was published: `{"Namespace", "Service", "Endpoint", "Port", "SecretName"}` as JSON.
pub const ANNOTATION_OUTPUTS: &str = "snapstage.io/outputs";
pub const ANNOTATION_EXPIRES_AT: &str = "snapstage.io/expires-at";
pub const ANNOTATION_TTL_HOURS: &str = "snapstage.io/ttl-hours";
pub const ANNOTATION_EXECUTION_KEY: &str = "snapstage.io/execution-key";
pub const ANNOTATION_SOURCE: &str = "snapstage.io/source";
/// On the namespace when the database mounts an existing PVC (`pvcName`): teardown checks it.
pub const ANNOTATION_EXISTING_CLAIM: &str = "snapstage.io/existing-claim";
pub const ANNOTATION_CREDENTIALS: &str = "snapstage.io/credentials";
pub const ANNOTATION_PX_PURE_VOLUME: &str = "portworx.io/pure-volume-name";
/// The PVC a snapshot was made of (a label value: the name, or a hashed form of a long name).
pub const LABEL_SOURCE: &str = "snapstage.io/source";
pub const ROLE_SNAPSHOT: &str = "snapshot";
pub const ROLE_STAGING: &str = "staging";
