//! `/item`: list in a folder, create (Girder renames a clashing name to `name (1)`), get,
//! update, metadata, delete, files, download (one file raw, several as a zip).

use std::io::Write;

use axum::extract::{Path, State as AxState};
use bytes::Bytes;
use serde_json::{json, Value};

use super::folders::clean_metadata;
use super::paging::Paging;
use crate::mock_girder::http::{bytes_response, json_response, list_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{now, FileRec, ItemRec, Level, State};

pub(crate) fn item_doc(i: &ItemRec) -> Value {
    let mut doc = json!({
        "_id": i.id, "_modelType": "item", "baseParentId": i.base_parent_id, "baseParentType": "user",
        "created": i.created, "creatorId": i.creator_id, "description": i.description, "folderId": i.folder_id,
        "meta": i.meta, "name": i.name, "size": i.size, "updated": i.updated,
    });
    if let Some(li) = &i.large_image {
        doc["largeImage"] = li.clone();
    }
    doc
}

pub(crate) fn file_doc(f: &FileRec) -> Value {
    json!({
        "_id": f.id, "_modelType": "file", "created": f.created, "creatorId": f.creator_id,
        "exts": exts(&f.name), "itemId": f.item_id, "mimeType": f.mime_type, "name": f.name,
        "size": f.data.len(),
    })
}

/// Girder's `exts`: the lower-cased dot-separated parts after the first.
pub(crate) fn exts(name: &str) -> Vec<String> {
    name.split('.').skip(1).map(str::to_lowercase).collect()
}

/// Creates an item (renaming on a clash) and returns its id.
pub(crate) fn new_item(st: &mut State, folder_id: &str, name: &str, creator: &str) -> String {
    let name = st.unique_item_name(folder_id, name);
    let owner = st.folders.get(folder_id).map(|f| f.base_parent_id.clone()).unwrap_or_default();
    let id = st.new_id();
    let t = now();
    st.items.insert(
        id.clone(),
        ItemRec {
            id: id.clone(),
            name,
            description: String::new(),
            folder_id: folder_id.to_string(),
            base_parent_id: owner,
            creator_id: creator.to_string(),
            meta: Default::default(),
            large_image: None,
            created: t.clone(),
            updated: t,
            size: 0,
        },
    );
    id
}

pub(crate) async fn list(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let folder_id = ctx.required("folderId")?.to_string();
    let st = app.state();
    st.folder(&folder_id, st.user(ctx.token()), Level::Read)?;
    let name = ctx.param("name");
    let docs: Vec<Value> = st
        .items
        .values()
        .filter(|i| i.folder_id == folder_id && name.is_none_or(|n| n == i.name))
        .map(item_doc)
        .collect();
    let total = docs.len();
    Ok(list_response(Paging::from(&ctx, "lowerName", false)?.apply(docs), total))
}

pub(crate) async fn create(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let folder_id = ctx.required("folderId")?.to_string();
    let name = ctx.required("name")?.trim().to_string();
    let reuse = ctx.flag("reuseExisting", false)?;
    let meta = clean_metadata(ctx.json_param("metadata")?)?;
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let user_id = user.id.clone();
    st.folder(&folder_id, Some(user), Level::Write)?;
    if name.is_empty() {
        return Err(ApiError::validation("Item name must not be empty.").field("name"));
    }
    if reuse {
        if let Some(existing) = st.items.values().find(|i| i.folder_id == folder_id && i.name == name) {
            return Ok(json_response(item_doc(existing)));
        }
    }
    let id = new_item(&mut st, &folder_id, &name, &user_id);
    let item = st.items.get_mut(&id).ok_or_else(|| ApiError::rest("item vanished"))?;
    item.description = ctx.param("description").unwrap_or("").to_string();
    item.meta = meta;
    Ok(json_response(item_doc(item)))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    Ok(json_response(item_doc(st.item(&id, st.user(ctx.token()), Level::Read)?)))
}

/// `PUT /item/{id}`: `name`, `description`, `folderId` (move), `metadata`.
pub(crate) async fn update(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let meta = ctx.json_param("metadata")?.map(|m| clean_metadata(Some(m))).transpose()?;
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let folder_id = st.item(&id, Some(user), Level::Write)?.folder_id.clone();
    let target = match ctx.param("folderId") {
        Some(f) => st.folder(f, Some(user), Level::Write)?.id.clone(),
        None => folder_id,
    };
    let name = match ctx.param("name") {
        Some(n) if n.trim().is_empty() => {
            return Err(ApiError::validation("Item name must not be empty.").field("name"))
        }
        Some(n) => {
            let wanted = n.trim().to_string();
            let clash = st.items.values().any(|i| i.id != id && i.folder_id == target && i.name == wanted);
            Some(if clash { st.unique_item_name(&target, &wanted) } else { wanted })
        }
        None => None,
    };
    let item = st.items.get_mut(&id).ok_or_else(|| ApiError::rest(format!("Invalid item id ({id}).")))?;
    if let Some(name) = name {
        item.name = name;
    }
    if let Some(description) = ctx.param("description") {
        item.description = description.to_string();
    }
    if let Some(meta) = meta {
        item.meta.extend(meta);
    }
    item.folder_id = target;
    item.updated = now();
    Ok(json_response(item_doc(item)))
}

/// `PUT /item/{id}/metadata` with a JSON object body; `null` deletes a key.
pub(crate) async fn set_metadata(
    AxState(app): AxState<Shared>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> ApiResult {
    let Value::Object(body) = ctx.json_body()? else {
        return Err(ApiError::rest("The request body must be a JSON object."));
    };
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    st.item(&id, Some(user), Level::Write)?;
    let item = st.items.get_mut(&id).ok_or_else(|| ApiError::rest(format!("Invalid item id ({id}).")))?;
    for (k, v) in body {
        if v.is_null() {
            item.meta.remove(&k);
        } else {
            item.meta.insert(k, v);
        }
    }
    Ok(json_response(item_doc(item)))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    st.item(&id, Some(user), Level::Admin)?;
    let item = st.remove_item(&id).ok_or_else(|| ApiError::rest(format!("Invalid item id ({id}).")))?;
    Ok(json_response(json!({"message": format!("Deleted item {}.", item.name)})))
}

fn item_files<'a>(st: &'a State, item_id: &str) -> Vec<&'a FileRec> {
    let mut files: Vec<&FileRec> = st.files.values().filter(|f| f.item_id == item_id).collect();
    files.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    files
}

pub(crate) async fn files(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    st.item(&id, st.user(ctx.token()), Level::Read)?;
    let docs: Vec<Value> = item_files(&st, &id).into_iter().map(file_doc).collect();
    let total = docs.len();
    Ok(list_response(Paging::from(&ctx, "name", false)?.window(docs), total))
}

/// One file: its bytes with its Content-Type; several: a zip of `<item>/<file>` entries.
pub(crate) async fn download(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let item = st.item(&id, st.user(ctx.token()), Level::Read)?;
    let files = item_files(&st, &id);
    if let [file] = files.as_slice() {
        return Ok(bytes_response(file.data.clone(), &file.mime_type, Some(&file.name)));
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let zip_err = |e: &dyn std::fmt::Display| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("zip: {e}"))
    };
    for file in files {
        zip.start_file(format!("{}/{}", item.name, file.name), options).map_err(|e| zip_err(&e))?;
        zip.write_all(&file.data).map_err(|e| zip_err(&e))?;
    }
    let bytes = zip.finish().map_err(|e| zip_err(&e))?.into_inner();
    Ok(bytes_response(Bytes::from(bytes), "application/zip", Some(&format!("{}.zip", item.name))))
}
