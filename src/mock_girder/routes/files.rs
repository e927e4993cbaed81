//! `/file`: the upload protocol (init, chunks, offset, cancel), file documents and download.
//!
//! Rules as recorded: a non-final chunk under `core.upload_minimum_chunk_size` is a 400
//! `Chunk is smaller than the minimum size.`; a chunk at the wrong offset is a 400
//! `Server has received N bytes, but client sent offset M.`; the chunk that completes an upload
//! returns the file document, and with `parentType=folder` an item named after the file is made.
//! A TIFF is made a large image synchronously (large_image's auto-set). `POST /file` with a raw
//! body uploads it in the same request, as `girder_client` does for small files.

use axum::extract::{Path, State as AxState};
use axum::http::header;
use bytes::Bytes;
use serde_json::{json, Value};

use super::items::{file_doc, new_item};
use super::tiles::auto_set_large_image;
use crate::mock_girder::http::{bytes_response, json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{check_id, now, FileRec, Level, State, UploadRec};

fn upload_doc(u: &UploadRec) -> Value {
    json!({
        "_id": u.id, "assetstoreId": "000000000000000000000001", "created": u.created, "mimeType": u.mime_type,
        "name": u.name, "parentId": u.parent_id, "parentType": u.parent_type, "received": u.data.len(),
        "sha512state": "", "size": u.size, "tempFile": format!("<mock>/temp/{}", u.id), "updated": u.updated,
        "userId": u.user_id,
    })
}

/// A MIME type from the file name, as Python's `mimetypes.guess_type` would give for these.
fn guess_mime(name: &str) -> &'static str {
    match name.rsplit('.').next().map(str::to_lowercase).as_deref() {
        Some("txt") => "text/plain",
        Some("json") => "application/json",
        Some("tif") | Some("tiff") => "image/tiff",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("zip") => "application/zip",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    }
}

pub(crate) async fn init_upload(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let parent_type = ctx.required("parentType")?.to_string();
    let parent_id = ctx.required("parentId")?.to_string();
    let name = ctx.required("name")?.to_string();
    let size = ctx.int("size")?.ok_or_else(|| ApiError::rest("Parameter 'size' is required."))?;
    let size = u64::try_from(size).map_err(|_| ApiError::rest("Parameter 'size' must not be negative."))?;
    let mime = ctx.param("mimeType").filter(|m| !m.is_empty()).unwrap_or(guess_mime(&name)).to_string();
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let user_id = user.id.clone();
    match parent_type.as_str() {
        "folder" => {
            st.folder(&parent_id, Some(user), Level::Write)?;
        }
        "item" => {
            st.item(&parent_id, Some(user), Level::Write)?;
        }
        other => {
            return Err(ApiError::validation(format!("Invalid parentType: {other}.")).field("parentType"))
        }
    }
    let id = st.new_id();
    let t = now();
    let upload = UploadRec {
        id: id.clone(),
        name,
        size,
        mime_type: mime,
        parent_type,
        parent_id,
        user_id,
        data: Vec::new(),
        created: t.clone(),
        updated: t,
    };
    st.uploads.insert(id.clone(), upload);
    if size == 0 {
        return Ok(json_response(finalize(&mut st, &id)?));
    }
    // Girder treats a non-form body as the first chunk (girder_client's one-request upload).
    let form_body = ctx.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("multipart/")
    });
    if !ctx.body.is_empty() && !form_body {
        return add_chunk(&mut st, &id, 0, &ctx.body).map(json_response);
    }
    let doc = st.uploads.get(&id).map(upload_doc).unwrap_or(Value::Null);
    Ok(json_response(doc))
}

pub(crate) async fn chunk(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let upload_id = ctx.required("uploadId")?.to_string();
    let offset = ctx.int("offset")?.unwrap_or(0);
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    let upload = upload(&st, &upload_id)?;
    if upload.user_id != user_id {
        return Err(ApiError::access(true, "You did not initiate this upload."));
    }
    add_chunk(&mut st, &upload_id, offset, &ctx.body).map(json_response)
}

fn upload<'a>(st: &'a State, id: &str) -> Result<&'a UploadRec, ApiError> {
    check_id(id)?;
    st.uploads.get(id).ok_or_else(|| ApiError::rest(format!("Invalid upload id ({id}).")))
}

fn add_chunk(st: &mut State, upload_id: &str, offset: i64, data: &[u8]) -> Result<Value, ApiError> {
    let min_chunk = st.min_chunk;
    let up = st
        .uploads
        .get_mut(upload_id)
        .ok_or_else(|| ApiError::rest(format!("Invalid upload id ({upload_id}).")))?;
    let received = up.data.len() as u64;
    if i64::try_from(received) != Ok(offset) {
        return Err(ApiError::rest(format!(
            "Server has received {received} bytes, but client sent offset {offset}."
        )));
    }
    let chunk = data.len() as u64;
    if received + chunk > up.size {
        return Err(ApiError::validation("Received too many bytes."));
    }
    if received + chunk != up.size && chunk < min_chunk {
        return Err(ApiError::validation("Chunk is smaller than the minimum size."));
    }
    up.data.extend_from_slice(data);
    up.updated = now();
    if up.data.len() as u64 == up.size {
        finalize(st, upload_id)
    } else {
        Ok(upload_doc(up))
    }
}

/// Turns a complete upload into a file (and an item when uploaded into a folder).
fn finalize(st: &mut State, upload_id: &str) -> Result<Value, ApiError> {
    let up = st
        .uploads
        .remove(upload_id)
        .ok_or_else(|| ApiError::rest(format!("Invalid upload id ({upload_id}).")))?;
    let item_id = if up.parent_type == "folder" {
        new_item(st, &up.parent_id, &up.name, &up.user_id)
    } else {
        up.parent_id.clone()
    };
    let id = st.new_id();
    let size = up.data.len() as i64;
    let file = FileRec {
        id: id.clone(),
        name: up.name,
        item_id: item_id.clone(),
        mime_type: up.mime_type,
        creator_id: up.user_id,
        created: now(),
        data: Bytes::from(up.data),
    };
    let doc = file_doc(&file);
    st.files.insert(id.clone(), file);
    st.propagate_size(&item_id, size);
    auto_set_large_image(st, &item_id, &id);
    Ok(doc)
}

pub(crate) async fn offset(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let upload_id = ctx.required("uploadId")?.to_string();
    let st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    let up = upload(&st, &upload_id)?;
    if up.user_id != user_id {
        return Err(ApiError::access(true, "You did not initiate this upload."));
    }
    Ok(json_response(json!({"offset": up.data.len()})))
}

pub(crate) async fn cancel_upload(
    AxState(app): AxState<Shared>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> ApiResult {
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    if upload(&st, &id)?.user_id != user_id {
        return Err(ApiError::access(true, "You did not initiate this upload."));
    }
    st.uploads.remove(&id);
    Ok(json_response(json!({"message": "Upload deleted."})))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    Ok(json_response(file_doc(st.file(&id, st.user(ctx.token()), Level::Read)?)))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let file = st.file(&id, Some(user), Level::Write)?;
    let (item_id, size) = (file.item_id.clone(), file.data.len() as i64);
    st.files.remove(&id);
    st.propagate_size(&item_id, -size);
    Ok(json_response(Value::Null))
}

/// `GET /file/{id}/download[?offset=&endByte=]`.
pub(crate) async fn download(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let file = st.file(&id, st.user(ctx.token()), Level::Read)?;
    let len = file.data.len();
    let clamp =
        |v: Option<i64>, default: usize| v.map_or(default, |v| usize::try_from(v).unwrap_or(0).min(len));
    let start = clamp(ctx.int("offset")?, 0);
    let end = clamp(ctx.int("endByte")?, len).max(start);
    Ok(bytes_response(file.data.slice(start..end), &file.mime_type, Some(&file.name)))
}
