//! `/folder`: list by parent (with `name`), create (`reuseExisting`, JSON `metadata` whose
//! `null` values are dropped), get, update, metadata, delete.

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::paging::Paging;
use crate::mock_girder::http::{json_response, list_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{check_id, denied, now, FolderRec, Level, State, UserRec};

pub(crate) fn folder_doc(st: &State, f: &FolderRec, viewer: Option<&UserRec>) -> Value {
    json!({
        "_accessLevel": st.folder_level(f, viewer).map_or(-1, |l| l as i64),
        "_id": f.id, "_modelType": "folder", "baseParentId": f.base_parent_id, "baseParentType": "user",
        "created": f.created, "creatorId": f.creator_id, "description": f.description, "meta": f.meta,
        "name": f.name, "parentCollection": f.parent_collection, "parentId": f.parent_id,
        "public": f.public, "size": f.size, "updated": f.updated,
    })
}

/// Metadata as Girder stores it: an object, keys with `null` values removed.
pub(crate) fn clean_metadata(value: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(mut m)) => {
            m.retain(|_, v| !v.is_null());
            Ok(m)
        }
        Some(_) => Err(ApiError::rest("Parameter metadata must be a JSON object.")),
    }
}

/// The parent named by `parentType`/`parentId`, checked for `level`: (parent id, collection, owner).
fn parent(
    st: &State,
    ctx: &Ctx,
    user: Option<&UserRec>,
    level: Level,
) -> Result<(String, String, String), ApiError> {
    let parent_type = ctx.required("parentType")?.to_string();
    let parent_id = ctx.required("parentId")?.to_string();
    match parent_type.as_str() {
        "folder" => {
            let f = st.folder(&parent_id, user, level)?;
            Ok((f.id.clone(), "folder".into(), f.base_parent_id.clone()))
        }
        "user" => {
            check_id(&parent_id)?;
            if !st.users.contains_key(&parent_id) {
                return Err(ApiError::rest(format!("Invalid user id ({parent_id}).")));
            }
            let allowed = user.is_some_and(|u| u.admin || u.id == parent_id);
            if level > Level::Read && !allowed {
                return Err(denied(level, "user", &parent_id, user));
            }
            Ok((parent_id.clone(), "user".into(), parent_id))
        }
        other => Err(ApiError::validation(format!("Invalid parentType: {other}.")).field("parentType")),
    }
}

pub(crate) async fn list(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let user = st.user(ctx.token());
    let (parent_id, _, _) = parent(&st, &ctx, user, Level::Read)?;
    let name = ctx.param("name");
    let docs: Vec<Value> = st
        .folders
        .values()
        .filter(|f| f.parent_id == parent_id && name.is_none_or(|n| n == f.name))
        .filter(|f| st.folder_level(f, user).is_some())
        .map(|f| folder_doc(&st, f, user))
        .collect();
    let total = docs.len();
    Ok(list_response(Paging::from(&ctx, "lowerName", false)?.apply(docs), total))
}

pub(crate) async fn create(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let name = ctx.required("name")?.trim().to_string();
    let description = ctx.param("description").unwrap_or("").to_string();
    let reuse = ctx.flag("reuseExisting", false)?;
    let meta = clean_metadata(ctx.json_param("metadata")?)?;
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let user_id = user.id.clone();
    let (parent_id, collection, owner) = parent(&st, &ctx, Some(user), Level::Write)?;
    if name.is_empty() {
        return Err(ApiError::validation("Folder name must not be empty.").field("name"));
    }
    if let Some(existing) = st.folders.values().find(|f| f.parent_id == parent_id && f.name == name) {
        if reuse {
            return Ok(json_response(folder_doc(&st, existing, st.users.get(&user_id))));
        }
        return Err(ApiError::validation("A folder with that name already exists here.").field("name"));
    }
    if st.items.values().any(|i| i.folder_id == parent_id && i.name == name) {
        return Err(ApiError::validation("An item with that name already exists here.").field("name"));
    }
    let inherited = st.folders.get(&parent_id).is_some_and(|p| p.public);
    let public = ctx.flag("public", inherited)?;
    let id = st.new_id();
    let t = now();
    let folder = FolderRec {
        id: id.clone(),
        name,
        description,
        parent_id,
        parent_collection: collection,
        base_parent_id: owner,
        creator_id: user_id.clone(),
        meta,
        public,
        created: t.clone(),
        updated: t,
        size: 0,
    };
    let doc = folder_doc(&st, &folder, st.users.get(&user_id));
    st.folders.insert(id, folder);
    Ok(json_response(doc))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let user = st.user(ctx.token());
    let folder = st.folder(&id, user, Level::Read)?;
    Ok(json_response(folder_doc(&st, folder, user)))
}

/// `PUT /folder/{id}`: `name`, `description`, `metadata`.
pub(crate) async fn update(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let meta = ctx.json_param("metadata")?.map(|m| clean_metadata(Some(m))).transpose()?;
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    st.folder(&id, st.users.get(&user_id), Level::Write)?;
    if let Some(folder) = st.folders.get_mut(&id) {
        if let Some(name) = ctx.param("name") {
            folder.name = name.trim().to_string();
        }
        if let Some(description) = ctx.param("description") {
            folder.description = description.to_string();
        }
        if let Some(meta) = meta {
            folder.meta.extend(meta);
        }
        folder.updated = now();
    }
    let folder = st.folder(&id, st.users.get(&user_id), Level::Read)?;
    Ok(json_response(folder_doc(&st, folder, st.users.get(&user_id))))
}

/// `PUT /folder/{id}/metadata` with a JSON object body; `null` deletes a key.
pub(crate) async fn set_metadata(
    AxState(app): AxState<Shared>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> ApiResult {
    let Value::Object(body) = ctx.json_body()? else {
        return Err(ApiError::rest("The request body must be a JSON object."));
    };
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    st.folder(&id, st.users.get(&user_id), Level::Write)?;
    if let Some(folder) = st.folders.get_mut(&id) {
        for (k, v) in body {
            if v.is_null() {
                folder.meta.remove(&k);
            } else {
                folder.meta.insert(k, v);
            }
        }
    }
    let folder = st.folder(&id, st.users.get(&user_id), Level::Read)?;
    Ok(json_response(folder_doc(&st, folder, st.users.get(&user_id))))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let name = st.folder(&id, Some(user), Level::Admin)?.name.clone();
    if !st.local_worker {
        // Girder 5 deletes a folder in a Celery task on its `local` queue
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rest",
            "No local worker is available to process this request.",
        ));
    }
    st.remove_folder(&id);
    Ok(json_response(json!({"message": format!("Deleted folder {name}.")})))
}
