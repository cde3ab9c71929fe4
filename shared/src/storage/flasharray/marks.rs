//! The production interlock's reads and teardown's deletes of array volumes
//! ([`crate::interlock::VolumeMarks`], through [`crate::storage::open::ImportMarks`]), and the
//! tags restore puts on a staging volume.

use super::FlashArray;
use super::model::TagBatch;
use super::model::tag_pairs;
use super::names::{TAG_NAMESPACE, staging_tags};
use crate::error::{Error, Result};
use crate::interlock::markers::{MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE};
use crate::interlock::{Deletion, Marker, Marks};
use crate::job::contract::Execution;

impl FlashArray {
    /// Tags `volume` as this run's staging volume (`PUT /volumes/tags/batch`, idempotent) unless
    /// it already is; returns its tags.
    pub(super) async fn tag_staging(
        &self,
        volume: &str,
        execution: &Execution,
    ) -> Result<Vec<(String, String)>> {
        let s = self.session().await?;
        let mut tags = tag_pairs(&s.volume_tags(&[volume]).await?);
        let want = staging_tags(execution);
        let missing = want
            .iter()
            .any(|(k, v)| !tags.iter().any(|(tk, tv)| tk == k && tv == v));
        if missing {
            let batch: Vec<TagBatch> = want
                .iter()
                .map(|(k, v)| TagBatch {
                    key: k,
                    value: v,
                    namespace: TAG_NAMESPACE,
                    copyable: false,
                })
                .collect();
            s.put_volume_tags(volume, &batch).await?;
            tracing::info!(volume, "tagged the staging volume with this run");
            tags.retain(|(k, _)| !want.iter().any(|(w, _)| w == k));
            tags.extend(want.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
        Ok(tags)
    }

    /// The production interlock's read of `volume` (deploy-staging-db imports it): its tags
    /// and the tags of every protection group that holds it. `None` when it does not exist or
    /// is destroyed.
    pub async fn marks(&self, volume: &str) -> Result<Option<Marks>> {
        Ok(self.marks_of(volume, false).await?.map(|(marks, _)| marks))
    }

    /// [`FlashArray::marks`], and with `destroyed_too` also of a destroyed volume (its name is
    /// taken until eradicated); says whether it is destroyed.
    pub(super) async fn marks_of(
        &self,
        volume: &str,
        destroyed_too: bool,
    ) -> Result<Option<(Marks, bool)>> {
        let s = self.session().await?;
        let found = match s.volumes(&[volume]).await {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(destroyed) = found
            .iter()
            .find(|v| v.name == volume && (destroyed_too || v.destroyed != Some(true)))
            .map(|v| v.destroyed == Some(true))
        else {
            return Ok(None);
        };
        let tags = tag_pairs(&s.volume_tags(&[volume]).await?);
        let mut markers: Vec<Marker> = tags.iter().map(|(k, v)| Marker::new("tag", k, v)).collect();
        let groups: Vec<String> = s
            .pgroups_of_volume(volume)
            .await?
            .into_iter()
            .filter_map(|m| m.group.and_then(|g| g.name))
            .collect();
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            for t in s.pgroup_tags(&names).await? {
                let group = t
                    .resource
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                if let Some(k) = t.key {
                    markers.push(Marker::new(
                        format!("protection group {group} tag"),
                        k,
                        t.value.unwrap_or_default(),
                    ));
                }
            }
        }
        let tag = |k: &str| {
            tags.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let staging = tag(TAG_MANAGED_BY).as_deref() == Some(MANAGED_BY)
            && tag(TAG_ROLE).as_deref() == Some("staging");
        Ok(Some((
            Marks {
                what: format!("FlashArray volume {volume}"),
                markers,
                staging_run: tag(TAG_EXECUTION).filter(|_| staging),
            },
            destroyed,
        )))
    }

    /// Teardown's deletion of a staging volume ([`crate::interlock::VolumeMarks::delete_staging`]):
    /// its tags (and its protection groups') read again now; destroyed only when
    /// [`crate::interlock::deletable`] allows it and no host is connected. Destroyed, not
    /// eradicated: the array eradicates it after its own delay (recoverable until then).
    pub async fn delete_staging(&self, volume: &str, dry_run: bool) -> Result<Deletion> {
        let s = self.session().await?;
        let found = match s.volumes(&[volume]).await {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(Deletion::Gone),
            Err(e) => return Err(e),
        };
        let Some(v) = found
            .into_iter()
            .find(|v| v.name == volume && v.destroyed != Some(true))
        else {
            return Ok(Deletion::Gone);
        };
        let Some(marks) = self.marks(volume).await? else {
            return Ok(Deletion::Gone);
        };
        if let Err(why) = crate::interlock::deletable(&marks) {
            return Ok(Deletion::Kept(why));
        }
        if let Some(n) = v.connection_count.filter(|n| *n > 0) {
            return Ok(Deletion::Waiting(format!(
                "connected to {n} host(s) or host group(s)"
            )));
        }
        if dry_run {
            return Ok(Deletion::WouldDelete);
        }
        s.destroy_volume(volume).await?;
        tracing::info!(
            volume,
            "destroyed staging FlashArray volume (teardown; recoverable until the array eradicates it)"
        );
        Ok(Deletion::Deleted)
    }
}
