//! The user's model folder in Girder (`Private/.cellpose/models` for CPnet; each family has its
//! own root), reports (`<root>/reports`) and checkpoints (`Private/.cellpose/checkpoints/<jobId>`).
//!
//! Replacing a model never loses it: the new file is uploaded in full into a new item under a
//! temporary name, and only then is the old item deleted and the new one renamed. A failed upload
//! leaves the old model untouched (and removes its own half-made item).

use bytes::Bytes;

use super::error::JobError;
use crate::girder::{Folder, GirderClient, GirderError, Item};

const MODEL_MIME: &str = "application/octet-stream";

fn upload_error(e: GirderError) -> JobError {
    JobError::Upload(Box::new(e))
}

/// Marks items that are uploads in progress; never offered as models.
const UPLOADING: &str = ".uploading-";

/// The CPnet family's folder under `Private` (what NimbusImage's Cellpose workers list).
pub const CELLPOSE: &str = ".cellpose";

/// `Private/<root>/<sub...>` of the user, created when missing (`root` is a model family's
/// folder, see [`crate::job::family::Family::root_folder`]).
pub async fn family_folder(
    client: &GirderClient,
    user_id: &str,
    root: &str,
    sub: &[&str],
) -> Result<Folder, GirderError> {
    let private = client.folders().user_folder(user_id, "Private").await?;
    let mut path = vec![root];
    path.extend_from_slice(sub);
    client.folders().ensure_path(&private.id, &path).await
}

/// `Private/.cellpose/<sub...>` of the user, created when missing.
pub async fn cellpose_folder(
    client: &GirderClient,
    user_id: &str,
    sub: &[&str],
) -> Result<Folder, GirderError> {
    family_folder(client, user_id, CELLPOSE, sub).await
}

/// The user's saved models of a family (item names in `Private/<root>/models`).
pub async fn list_models(client: &GirderClient, user_id: &str, root: &str) -> Result<Vec<Item>, GirderError> {
    let folder = family_folder(client, user_id, root, &["models"]).await?;
    let items = client.items().list(&folder.id).await?;
    Ok(items.into_iter().filter(|i| !i.name.contains(UPLOADING)).collect())
}

/// The user's saved CPnet models (`Private/.cellpose/models`).
pub async fn list_user_models(client: &GirderClient, user_id: &str) -> Result<Vec<Item>, GirderError> {
    list_models(client, user_id, CELLPOSE).await
}

/// Downloads a user model's bytes (the item's single file).
pub async fn download_model(client: &GirderClient, item: &Item) -> Result<Bytes, JobError> {
    let files = client.items().files(&item.id).await?;
    let file = match files.as_slice() {
        [one] => one,
        [] => {
            return Err(JobError::Dataset {
                dataset: item.id.clone(),
                detail: format!("model item `{}` has no file", item.name),
            })
        }
        many => many.iter().max_by_key(|f| f.size).unwrap_or(&many[0]),
    };
    Ok(client.files().download(&file.id).await?)
}

/// [`upload_model_in`] the CPnet folder.
pub async fn upload_model(
    client: &GirderClient,
    user_id: &str,
    name: &str,
    bytes: Bytes,
    tag: &str,
) -> Result<Item, JobError> {
    upload_model_in(client, user_id, CELLPOSE, name, bytes, tag).await
}

/// Uploads `bytes` as model `name` into `Private/<root>/models`, replacing an older model of
/// that name only once the new file is stored. `tag` makes the temporary name unique (the job id).
pub async fn upload_model_in(
    client: &GirderClient,
    user_id: &str,
    root: &str,
    name: &str,
    bytes: Bytes,
    tag: &str,
) -> Result<Item, JobError> {
    let folder = family_folder(client, user_id, root, &["models"]).await?;
    let items = client.items().list(&folder.id).await?;
    // leftovers of an interrupted earlier upload of this model
    for stale in items.iter().filter(|i| i.name.starts_with(&format!("{name}{UPLOADING}"))) {
        if let Err(e) = client.items().delete(&stale.id).await {
            tracing::warn!(item = %stale.name, error = %e, "could not remove a stale partial upload");
        }
    }
    let temp = format!("{name}{UPLOADING}{tag}");
    let size = bytes.len() as u64;
    let item = client.items().create(&folder.id, &temp, None).await.map_err(upload_error)?;
    let stored = match client.files().upload_to_item(&item.id, name, bytes, MODEL_MIME).await {
        Ok(f) => f,
        Err(e) => {
            let _ = client.items().delete(&item.id).await;
            return Err(upload_error(e));
        }
    };
    if stored.size != size {
        let _ = client.items().delete(&item.id).await;
        return Err(upload_error(GirderError::Invalid(format!(
            "the server stored {} bytes of the {size}-byte model; the old model was kept",
            stored.size
        ))));
    }
    // the new model is safely stored: now the old one may go
    // (every item of that name: the model folder must end with exactly one)
    for old in items.iter().filter(|i| i.name == name) {
        client.items().delete(&old.id).await.map_err(upload_error)?;
    }
    let renamed = client.items().rename(&item.id, name).await.map_err(|e| {
        upload_error(GirderError::Invalid(format!(
            "the new model is stored as `{temp}` but renaming it to `{name}` failed ({e}); rename it in Girder"
        )))
    })?;
    Ok(renamed)
}

/// Stores a training report as a new item `<name> report <time>` in `Private/<root>/reports`.
pub async fn upload_report(
    client: &GirderClient,
    user_id: &str,
    root: &str,
    name: &str,
    files: Vec<(String, Bytes, &'static str)>,
) -> Result<Item, JobError> {
    let folder = family_folder(client, user_id, root, &["reports"]).await?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let item = client.items().create(&folder.id, &format!("{name} report {stamp}"), None).await?;
    for (file, data, mime) in files {
        client.files().upload_to_item(&item.id, &file, data, mime).await?;
    }
    Ok(item)
}
