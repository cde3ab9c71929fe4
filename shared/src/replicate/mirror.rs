//! Mirror mode's deletions: only what is proven gone — absent from the complete source listing
//! and answered 404 by a HeadObject of the source key just before the delete — in reverse copy
//! order (`metadata.properties`, then `.properties`, then `.bytes`).

use std::sync::Arc;

use tokio::task::JoinSet;

use super::compare::{self, Listed};
use super::copy::{Ctx, DEADLINE_MARGIN};
use super::journal::Entry;
use super::object::Problem;
use super::params::Target;
use super::plan::Plan;
use super::report::checksum_of_etag;
use super::sink::Sink;
use super::source::Source;
use crate::error::{Error, Result};

/// Deletes the plan's `to_delete`, in waves. Returns false when the deadline interrupted it.
pub(super) async fn delete_gone<R: Source, W: Sink>(
    ctx: &Arc<Ctx<R, W>>,
    target: &Target,
    plan: &Plan,
) -> Result<bool> {
    let dst_prefix = ctx.sink.prefix().to_string();
    let done = ctx.journal.done_keys();
    for wave in [2u8, 1, 0] {
        let mut set: JoinSet<Result<()>> = JoinSet::new();
        for d in plan
            .to_delete
            .iter()
            .filter(|d| compare::rank(&d.key) == wave && !done.contains(&d.key))
        {
            if ctx.deadline.near(DEADLINE_MARGIN) && ctx.journal.step_done() > 0 {
                while let Some(r) = set.join_next().await {
                    r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
                }
                return Ok(false);
            }
            while set.len() >= ctx.concurrency {
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
                }
            }
            let ctx = Arc::clone(ctx);
            let d = d.clone();
            let source_key = format!(
                "{}{}",
                target.source_prefix,
                d.key.strip_prefix(&dst_prefix).unwrap_or(&d.key)
            );
            set.spawn(async move { delete_one(&ctx, &source_key, d).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
        }
    }
    Ok(true)
}

async fn delete_one<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    source_key: &str,
    d: Listed,
) -> Result<()> {
    match ctx.source.head(source_key, None, None).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            tracing::info!(key = %source_key, "back at the source since the listing: not deleted");
            return Ok(());
        }
        Err(Problem::Fatal(e)) => return Err(e),
        Err(p) => {
            return Err(Error::Internal(format!(
                "HeadObject {} (proving it gone before a delete): {p:?}",
                ctx.source.describe(source_key)
            )));
        }
    }
    ctx.sink.delete(&d.key).await?;
    tracing::info!(key = %d.key, "deleted (gone at the source)");
    ctx.journal
        .deleted(Entry {
            key: d.key.clone(),
            size: d.size,
            checksum: checksum_of_etag(&d.etag),
            action: "deleted".into(),
        })
        .await
}
