//! Resumable checkpoints of a running job, kept in Girder under the job owner's
//! `Private/.cellpose/checkpoints/<jobId>` so that any worker on any machine can resume the job.
//!
//! Each checkpoint is a new item `epoch-NNNNNN` holding one file; older items are removed only
//! after the new one is stored, so a crash mid-upload leaves the previous checkpoint usable.

use bytes::Bytes;

use crate::girder::{GirderClient, GirderError, Item};
use crate::job::store::cellpose_folder;

const MIME: &str = "application/octet-stream";

/// Where a checkpoint stands: epochs completed and steps of the next one (see
/// [`crate::job::events::Checkpoint`]); ordered by progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point {
    pub epoch: usize,
    pub step: usize,
}

/// `epoch-000014`, or `epoch-000014-step-000003` mid-epoch: a shutdown checkpoint taken during
/// epoch 15 must not take the name of the periodic one after epoch 14 (Girder would rename it
/// `... (1)`).
fn item_name(p: Point) -> String {
    match p.step {
        0 => format!("epoch-{:06}", p.epoch),
        s => format!("epoch-{:06}-step-{s:06}", p.epoch),
    }
}

fn point_of(item: &Item) -> Option<Point> {
    let rest = item.name.strip_prefix("epoch-")?;
    let (epoch, step) = match rest.split_once("-step-") {
        Some((e, s)) => (e, s.parse().ok()?),
        None => (rest, 0),
    };
    Some(Point { epoch: epoch.parse().ok()?, step })
}

/// The checkpoint folder of `job_id` for `user_id`, created when missing.
async fn folder(
    client: &GirderClient,
    user_id: &str,
    job_id: &str,
) -> Result<crate::girder::Folder, GirderError> {
    cellpose_folder(client, user_id, &["checkpoints", job_id]).await
}

/// Stores `bytes` (shared, not copied: a Cellpose-SAM checkpoint is 3.65 GB) as the checkpoint
/// at `point`, then removes older ones.
pub async fn save(
    client: &GirderClient,
    user_id: &str,
    job_id: &str,
    point: Point,
    bytes: impl Into<Bytes>,
) -> Result<(), GirderError> {
    let bytes = bytes.into();
    let folder = folder(client, user_id, job_id).await?;
    let name = item_name(point);
    let old = client.items().list(&folder.id).await?;
    // A shutdown checkpoint at an epoch boundary is the periodic one of that epoch again: the
    // same training state. Storing it twice would make Girder rename the second `... (1)`, and
    // deleting the first would then leave no checkpoint a resume can find.
    if old.iter().any(|i| i.name == name) {
        tracing::debug!(checkpoint = %name, "already stored");
        return Ok(());
    }
    let size = bytes.len() as u64;
    let item = client.items().create(&folder.id, &format!("{name}.partial"), None).await?;
    let stored = client.files().upload_to_item(&item.id, "checkpoint.cpwt", bytes, MIME).await;
    match stored {
        Ok(f) if f.size == size => {}
        Ok(f) => {
            let _ = client.items().delete(&item.id).await;
            return Err(GirderError::Invalid(format!("checkpoint upload stored {} of {size} bytes", f.size)));
        }
        Err(e) => {
            let _ = client.items().delete(&item.id).await;
            return Err(e);
        }
    }
    client.items().rename(&item.id, &name).await?;
    for stale in old {
        client.items().delete(&stale.id).await?;
    }
    Ok(())
}

/// The newest stored checkpoint of `job_id` and where it stands, if any.
pub async fn latest(
    client: &GirderClient,
    user_id: &str,
    job_id: &str,
) -> Result<Option<(Point, Bytes)>, GirderError> {
    let folder = folder(client, user_id, job_id).await?;
    let items = client.items().list(&folder.id).await?;
    let Some((point, item)) =
        items.iter().filter_map(|i| point_of(i).map(|p| (p, i))).max_by_key(|(p, _)| *p)
    else {
        return Ok(None);
    };
    Ok(Some((point, client.items().download(&item.id).await?)))
}

/// Removes the job's checkpoints (the job has ended): every item first, which Girder deletes
/// synchronously, then the folder, tried once. Girder 5 deletes folders in a Celery task on its
/// `local` queue and answers 503 `No local worker is available` without one; that refusal is
/// not transient (the client does not retry it) and leaves only an empty folder, so it is
/// logged and tolerated. Returns whether the folder itself went.
pub async fn remove(client: &GirderClient, user_id: &str, job_id: &str) -> Result<bool, GirderError> {
    let private = client.folders().user_folder(user_id, "Private").await?;
    let Some(cellpose) =
        client.folders().find(crate::girder::ParentType::Folder, &private.id, ".cellpose").await?
    else {
        return Ok(true);
    };
    let Some(checkpoints) =
        client.folders().find(crate::girder::ParentType::Folder, &cellpose.id, "checkpoints").await?
    else {
        return Ok(true);
    };
    let Some(f) = client.folders().find(crate::girder::ParentType::Folder, &checkpoints.id, job_id).await?
    else {
        return Ok(true);
    };
    for item in client.items().list(&f.id).await? {
        client.items().delete(&item.id).await?;
    }
    match client.folders().delete(&f.id).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_no_local_worker() => {
            tracing::info!(folder = %f.id, "checkpoints removed; Girder has no local worker to delete their empty folder");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
