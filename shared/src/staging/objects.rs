//! The fixed names of a staging environment's objects, and the CSI drivers and API groups the
//! staging volume may come from. No dependencies: every other staging module may use them.

pub const INSTANCE: &str = "staging-db";
pub const SERVICE_NAME: &str = INSTANCE;
pub const STATEFULSET_NAME: &str = INSTANCE;
pub const PVC_NAME: &str = "staging-db-data";
pub const SECRET_NAME: &str = "staging-db-credentials";
pub const CONTAINER_NAME: &str = "db";
pub const DATA_VOLUME: &str = "data";

pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";
pub const EBS_ZONE_KEY: &str = "topology.ebs.csi.aws.com/zone";
pub const PURE_CSI_DRIVER: &str = "pure-csi";
pub const SNAPSHOT_API_GROUP: &str = "snapshot.storage.k8s.io";
