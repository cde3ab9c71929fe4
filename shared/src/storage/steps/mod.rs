//! The two storage steps, written once over [`Backend`](super::Backend) and its capability
//! traits: `snapshot-production` and `restore-to-staging`. Long waits never sleep: a step starts
//! or checks the work once and returns `Outcome::Continue` with the ids it is waiting for (its
//! state, read back by `resume` on the next invocation).
//!
//! | where | what |
//! | --- | --- |
//! | [`params`] | [`SnapshotParams`], [`RestoreParams`] and their checks without the backend |
//! | [`snapshot`] | [`snapshot_step`]: sources, one point in time or per volume, hooks, region copies, retention |
//! | [`restore`] | [`restore_step`]: a new staging volume from a snapshot, never a production one |
//! | `targets.rs` | `restore_step` with `targets`: several volumes of one group snapshot to chosen names, all or nothing |

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

pub mod params;
pub mod restore;
pub mod snapshot;
mod targets;

pub use params::{
    MAX_RETAIN, MAX_TARGETS, MAX_VOLUMES, RestoreParams, RestoreTarget, SnapshotParams,
};
pub use restore::restore_step;
pub use snapshot::{needs_hooks, snapshot_step, snapshot_step_with_hooks};

/// A step's state from its continuation token (`None` on the first invocation of a run).
fn resume<T: for<'de> Deserialize<'de>>(state: Option<Value>) -> Result<Option<T>> {
    state
        .filter(|v| !v.is_null())
        .map(|v| {
            serde_json::from_value(v).map_err(|e| {
                Error::Configuration(format!("continuationToken: state unreadable: {e}"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests;
