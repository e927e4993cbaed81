//! The user's model folder in Girder (`Private/.cellpose/models` for CPnet; each family has its
//! own root), reports (`<root>/reports`) and checkpoints (`Private/.cellpose/checkpoints/<jobId>`).
//!
//! Replacing a model never loses it: see the protocol in [`super::upload`], carried out by
//! [`super::replace`].

use bytes::Bytes;

use super::error::JobError;
use super::replace::{replace, Left, Step, UploadFailure, UPLOADING};
use crate::girder::{Folder, GirderClient, GirderError, Item};

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
/// that name only once the new file is stored, by the protocol of [`super::upload`]. `tag` (the
/// job id) goes into the temporary item's name. A failure is [`JobError::Upload`], which says
/// what Girder holds for the name afterwards.
pub async fn upload_model_in(
    client: &GirderClient,
    user_id: &str,
    root: &str,
    name: &str,
    bytes: Bytes,
    tag: &str,
) -> Result<Item, JobError> {
    let folder = family_folder(client, user_id, root, &["models"]).await.map_err(|source| {
        JobError::Upload(Box::new(UploadFailure { step: Step::Folder, source, left: Left::untouched(name) }))
    })?;
    replace(client, &folder.id, name, bytes, tag).await.map_err(|f| JobError::Upload(Box::new(f)))
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
