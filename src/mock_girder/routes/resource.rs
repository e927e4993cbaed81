//! `GET /resource/lookup?path=/user/<login>/<folder>/.../[<item>]`. A missing path is a 400
//! `Path not found: <path without the leading slash>` (Girder 5 has no soft `test` mode).

use axum::extract::State as AxState;

use super::folders::folder_doc;
use super::items::item_doc;
use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::Level;

pub(crate) async fn lookup(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let path = ctx.required("path")?.to_string();
    let not_found = || ApiError::validation(format!("Path not found: {}", path.trim_start_matches('/')));
    let st = app.state();
    let viewer = st.user(ctx.token());
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let [kind, login, rest @ ..] = parts.as_slice() else { return Err(not_found()) };
    if *kind != "user" {
        return Err(not_found());
    }
    let user = st.users.values().find(|u| u.login == *login).ok_or_else(not_found)?;
    if rest.is_empty() {
        return Ok(json_response(super::users::user_doc(user, viewer)));
    }
    let (mut parent, mut collection) = (user.id.clone(), "user");
    for (i, name) in rest.iter().enumerate() {
        if let Some(folder) = st
            .folders
            .values()
            .find(|f| f.parent_id == parent && f.parent_collection == collection && f.name == *name)
        {
            let folder = st.folder(&folder.id, viewer, Level::Read)?;
            if i + 1 == rest.len() {
                return Ok(json_response(folder_doc(&st, folder, viewer)));
            }
            parent = folder.id.clone();
            collection = "folder";
            continue;
        }
        if i + 1 == rest.len() && collection == "folder" {
            if let Some(item) = st.items.values().find(|it| it.folder_id == parent && it.name == *name) {
                return Ok(json_response(item_doc(item)));
            }
        }
        return Err(not_found());
    }
    Err(not_found())
}
