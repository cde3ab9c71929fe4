//! The handful of REST 2.x operations snapstage uses, on a logged-in [`Session`]: volumes,
//! volume snapshots, protection groups, their snapshots and transfers, tags.

use super::client::{Query, Session};
use super::model::{
    ProtectionGroupMember, ProtectionGroupSnapshot, ProtectionGroupSnapshotPost, Reference, Tag,
    TagBatch, Transfer, Volume, VolumeCopyPost, VolumeSnapshot, VolumeSnapshotPost,
};
use crate::error::Result;

impl Session {
    // -- volumes --

    /// `GET /volumes?names=...` (each name must exist: a missing one is [`Error::NotFound`](crate::Error::NotFound)).
    pub async fn volumes(&self, names: &[&str]) -> Result<Vec<Volume>> {
        self.get_page("/volumes", &vec![("names", names.join(","))])
            .await
    }

    /// `GET /volumes?filter=...&destroyed=false`, every page.
    pub async fn volumes_matching(&self, filter: &str) -> Result<Vec<Volume>> {
        self.get_all(
            "/volumes",
            &vec![
                ("filter", filter.to_string()),
                ("destroyed", "false".into()),
            ],
        )
        .await
    }

    /// Copies a snapshot (or volume) into `target`: `POST /volumes?names=T&overwrite=B` with
    /// `{"source": {"name": SOURCE}}`.
    pub async fn copy_volume(&self, target: &str, source: &str, overwrite: bool) -> Result<Volume> {
        let items = self
            .post(
                "/volumes",
                &vec![
                    ("names", target.to_string()),
                    ("overwrite", overwrite.to_string()),
                ],
                &VolumeCopyPost {
                    source: Reference::named(source),
                },
            )
            .await?;
        Self::one(items, "POST /volumes")
    }

    /// `PATCH /volumes?names=V` with `{"destroyed": true}`: destroys the volume. The array keeps
    /// it recoverable for its eradication delay (24 h by default); nothing is eradicated here.
    pub async fn destroy_volume(&self, name: &str) -> Result<Volume> {
        let items = self
            .patch(
                "/volumes",
                &vec![("names", name.to_string())],
                &serde_json::json!({"destroyed": true}),
            )
            .await?;
        Self::one(items, "PATCH /volumes")
    }

    /// `PATCH /volumes?names=V` with `{"destroyed": false}`: recovers a destroyed volume.
    pub async fn recover_volume(&self, name: &str) -> Result<Volume> {
        let items = self
            .patch(
                "/volumes",
                &vec![("names", name.to_string())],
                &serde_json::json!({"destroyed": false}),
            )
            .await?;
        Self::one(items, "PATCH /volumes")
    }

    // -- tags, protection group membership --

    /// `GET /volumes/tags?resource_names=...`: every tag of those volumes, any namespace.
    pub async fn volume_tags(&self, names: &[&str]) -> Result<Vec<Tag>> {
        self.get_all("/volumes/tags", &vec![("resource_names", names.join(","))])
            .await
    }

    /// `PUT /volumes/tags/batch?resource_names=V`: creates or updates `tags` on volume `name`.
    pub async fn put_volume_tags(&self, name: &str, tags: &[TagBatch<'_>]) -> Result<Vec<Tag>> {
        self.put(
            "/volumes/tags/batch",
            &vec![("resource_names", name.to_string())],
            &tags,
        )
        .await
    }

    /// `GET /protection-groups/volumes?member_names=V`: the protection groups holding `volume`.
    pub async fn pgroups_of_volume(&self, volume: &str) -> Result<Vec<ProtectionGroupMember>> {
        self.get_all(
            "/protection-groups/volumes",
            &vec![("member_names", volume.to_string())],
        )
        .await
    }

    /// `GET /protection-groups/tags?resource_names=...`.
    pub async fn pgroup_tags(&self, names: &[&str]) -> Result<Vec<Tag>> {
        self.get_all(
            "/protection-groups/tags",
            &vec![("resource_names", names.join(","))],
        )
        .await
    }

    // -- volume snapshots --

    /// `GET /volume-snapshots?names=...`.
    pub async fn volume_snapshots(&self, names: &[&str]) -> Result<Vec<VolumeSnapshot>> {
        self.get_page("/volume-snapshots", &vec![("names", names.join(","))])
            .await
    }

    /// Every volume snapshot that is not destroyed and matches `filter` (e.g. the volumes' parts
    /// of a protection group snapshot, `name='PG.SUFFIX.*'`), by name.
    pub async fn volume_snapshots_matching(&self, filter: &str) -> Result<Vec<VolumeSnapshot>> {
        let mut all: Vec<VolumeSnapshot> = self
            .get_all(
                "/volume-snapshots",
                &vec![
                    ("filter", filter.to_string()),
                    ("destroyed", "false".into()),
                ],
            )
            .await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Every snapshot of `source` that is not destroyed and matches `filter`, newest first.
    pub async fn volume_snapshots_of(
        &self,
        source: &str,
        filter: Option<&str>,
    ) -> Result<Vec<VolumeSnapshot>> {
        let mut q: Query = vec![
            ("source_names", source.to_string()),
            ("destroyed", "false".into()),
        ];
        if let Some(f) = filter {
            q.push(("filter", f.to_string()));
        }
        let mut all: Vec<VolumeSnapshot> = self.get_all("/volume-snapshots", &q).await?;
        all.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
        Ok(all)
    }

    /// `PATCH /volume-snapshots?names=N` with `{"destroyed": true}`: destroys the snapshot. The
    /// array keeps it recoverable for its eradication delay (24 h by default); nothing is
    /// eradicated here.
    pub async fn destroy_volume_snapshot(&self, name: &str) -> Result<VolumeSnapshot> {
        let items = self
            .patch(
                "/volume-snapshots",
                &vec![("names", name.to_string())],
                &serde_json::json!({"destroyed": true}),
            )
            .await?;
        Self::one(items, "PATCH /volume-snapshots")
    }

    /// `POST /volume-snapshots?source_names=V` with `{"suffix": S}`: makes `V.S`.
    pub async fn create_volume_snapshot(
        &self,
        source: &str,
        suffix: &str,
    ) -> Result<VolumeSnapshot> {
        let items = self
            .post(
                "/volume-snapshots",
                &vec![("source_names", source.to_string())],
                &VolumeSnapshotPost { suffix },
            )
            .await?;
        Self::one(items, "POST /volume-snapshots")
    }

    // -- protection groups --

    /// `POST /protection-group-snapshots?source_names=PG&apply_retention=true[&replicate_now=true]`
    /// with `{"suffix": S}`: makes `PG.S` (and `PG.S.VOL` for each volume), replicating it to
    /// the group's targets now when asked.
    pub async fn create_pgroup_snapshot(
        &self,
        pgroup: &str,
        suffix: &str,
        replicate_now: bool,
    ) -> Result<ProtectionGroupSnapshot> {
        let mut q: Query = vec![
            ("source_names", pgroup.to_string()),
            ("apply_retention", "true".into()),
        ];
        if replicate_now {
            q.push(("replicate_now", "true".into()));
        }
        let items = self
            .post(
                "/protection-group-snapshots",
                &q,
                &ProtectionGroupSnapshotPost { suffix },
            )
            .await?;
        Self::one(items, "POST /protection-group-snapshots")
    }

    /// `GET /protection-group-snapshots?names=...`.
    pub async fn pgroup_snapshots(&self, names: &[&str]) -> Result<Vec<ProtectionGroupSnapshot>> {
        self.get_page(
            "/protection-group-snapshots",
            &vec![("names", names.join(","))],
        )
        .await
    }

    /// The newest `limit` snapshots of a protection group (`SOURCE_ARRAY:PG` for a replica on a
    /// target) that are not destroyed, newest first: `sort=created-` (one page by the spec).
    pub async fn pgroup_snapshots_of(
        &self,
        pgroup: &str,
        filter: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProtectionGroupSnapshot>> {
        let mut q: Query = vec![
            ("source_names", pgroup.to_string()),
            ("destroyed", "false".into()),
            ("sort", "created-".into()),
            ("limit", limit.max(1).to_string()),
        ];
        if let Some(f) = filter {
            q.push(("filter", f.to_string()));
        }
        self.get_page("/protection-group-snapshots", &q).await
    }

    /// `GET /protection-group-snapshots/transfer?names=...`: replication progress.
    pub async fn pgroup_transfers(&self, names: &[&str]) -> Result<Vec<Transfer>> {
        self.get_page(
            "/protection-group-snapshots/transfer",
            &vec![("names", names.join(","))],
        )
        .await
    }
}
