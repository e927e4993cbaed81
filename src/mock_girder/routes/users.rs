//! `/user`, `/user/me`, `/user/authentication`, `/api_key`, `/api_key/token`.

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{json, Value};

use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{check_id, now, random_token, ApiKeyRec, FolderRec, State, UserRec};

/// Girder's default login cookie lifetime, also the cap for API-key tokens without their own.
const COOKIE_LIFETIME_DAYS: f64 = 180.0;

pub(crate) fn user_doc(user: &UserRec, viewer: Option<&UserRec>) -> Value {
    let level = match viewer {
        Some(v) if v.admin || v.id == user.id => 2,
        _ => 0,
    };
    json!({
        "_accessLevel": level, "_id": user.id, "_modelType": "user", "admin": user.admin,
        "created": user.created, "email": user.email, "emailVerified": user.admin,
        "firstName": user.first_name, "groupInvites": [], "groups": [], "lastName": user.last_name,
        "login": user.login, "otp": false, "public": false, "size": 0, "status": "enabled",
    })
}

fn valid_login(login: &str) -> bool {
    let mut chars = login.chars();
    login.len() >= 4
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// `POST /user`: the first user on an empty server becomes site admin; an anonymous caller is
/// logged in as the new user (`authToken` in the answer). Each user gets `Public` and `Private`.
pub(crate) async fn create(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let login = ctx.required("login")?.trim().to_lowercase();
    let email = ctx.required("email")?.trim().to_lowercase();
    let password = ctx.required("password")?.to_string();
    let (first, last) = (ctx.required("firstName")?.to_string(), ctx.required("lastName")?.to_string());
    let wants_admin = ctx.flag("admin", false)?;
    let mut st = app.state();
    if !valid_login(&login) {
        return Err(ApiError::validation(
            "Login must be at least 4 characters, start with a letter, and may only contain letters, numbers, dashes, and dots.",
        )
        .field("login"));
    }
    if !email.contains('@') {
        return Err(ApiError::validation("Invalid email address.").field("email"));
    }
    if password.len() < 6 {
        return Err(ApiError::validation("Password must be at least 6 characters.").field("password"));
    }
    if st.users.values().any(|u| u.login == login) {
        return Err(ApiError::validation("That login is already registered.").field("login"));
    }
    if st.users.values().any(|u| u.email == email) {
        return Err(ApiError::validation("That email is already registered.").field("email"));
    }
    let caller = st.user(ctx.token()).map(|u| (u.id.clone(), u.admin));
    let admin = st.users.is_empty() || (wants_admin && caller.as_ref().is_some_and(|(_, a)| *a));
    let id = st.new_id();
    let created = now();
    st.users.insert(
        id.clone(),
        UserRec {
            id: id.clone(),
            login,
            email,
            first_name: first,
            last_name: last,
            password,
            admin,
            created: created.clone(),
        },
    );
    for (name, public) in [("Public", true), ("Private", false)] {
        let fid = st.new_id();
        st.folders.insert(fid.clone(), user_folder(&fid, name, public, &id, &created));
    }
    let user = st.users.get(&id).ok_or_else(|| ApiError::rest("user vanished"))?;
    let mut doc = user_doc(user, Some(user));
    if caller.is_none() {
        let (token, expires) =
            st.issue_token(Some(id.clone()), vec!["core.user_auth".into()], COOKIE_LIFETIME_DAYS);
        doc["authToken"] = json!({"token": token, "expires": expires});
    }
    Ok(json_response(doc))
}

fn user_folder(id: &str, name: &str, public: bool, user_id: &str, created: &str) -> FolderRec {
    FolderRec {
        id: id.to_string(),
        name: name.to_string(),
        description: String::new(),
        parent_id: user_id.to_string(),
        parent_collection: "user".into(),
        base_parent_id: user_id.to_string(),
        creator_id: user_id.to_string(),
        meta: Default::default(),
        public,
        created: created.to_string(),
        updated: created.to_string(),
        size: 0,
    }
}

/// `GET /user/me`: the user, or `null` without a valid token (not a 401).
pub(crate) async fn me(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    Ok(json_response(st.user(ctx.token()).map(|u| user_doc(u, Some(u))).unwrap_or(Value::Null)))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    check_id(&id)?;
    let st = app.state();
    let user = st.users.get(&id).ok_or_else(|| ApiError::rest(format!("Invalid user id ({id}).")))?;
    Ok(json_response(user_doc(user, st.user(ctx.token()))))
}

/// `GET /user/authentication` with HTTP Basic; login by login name or email.
pub(crate) async fn authenticate(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let failed = || ApiError::new(StatusCode::UNAUTHORIZED, "access", "Login failed.");
    let header = ctx.headers.get("Authorization").and_then(|v| v.to_str().ok()).ok_or_else(failed)?;
    let encoded = header.strip_prefix("Basic ").ok_or_else(failed)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| failed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| failed())?;
    let (login, password) = decoded.split_once(':').ok_or_else(failed)?;
    let login = login.trim().to_lowercase();
    let mut st = app.state();
    let user_id = st
        .users
        .values()
        .find(|u| (u.login == login || u.email == login) && u.password == password)
        .map(|u| u.id.clone())
        .ok_or_else(failed)?;
    let (token, expires) =
        st.issue_token(Some(user_id.clone()), vec!["core.user_auth".into()], COOKIE_LIFETIME_DAYS);
    let user = st.users.get(&user_id).ok_or_else(failed)?;
    Ok(json_response(json!({
        "authToken": {"token": token, "expires": expires, "scope": ["core.user_auth"]},
        "message": "Login succeeded.",
        "user": user_doc(user, Some(user)),
    })))
}

fn api_key_doc(k: &ApiKeyRec) -> Value {
    json!({
        "_accessLevel": 2, "_id": k.id, "_modelType": "api_key", "active": k.active, "created": k.created,
        "key": k.key, "lastUse": k.last_use, "name": k.name, "scope": null,
        "tokenDuration": k.token_duration, "userId": k.user_id,
    })
}

/// `POST /api_key` (`name`, `tokenDuration` in days, `active`).
pub(crate) async fn create_api_key(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    let token_duration = ctx.float("tokenDuration")?;
    let key = ApiKeyRec {
        id: st.new_id(),
        key: random_token(40),
        name: ctx.param("name").unwrap_or("").to_string(),
        user_id,
        active: ctx.flag("active", true)?,
        token_duration,
        created: now(),
        last_use: None,
    };
    let doc = api_key_doc(&key);
    st.api_keys.insert(key.id.clone(), key);
    Ok(json_response(doc))
}

/// `POST /api_key/token?key=&duration=`: the token lives `min(duration, key's tokenDuration)` days.
pub(crate) async fn api_key_token(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let key = ctx.required("key")?.to_string();
    let duration = ctx.float("duration")?;
    let mut st: std::sync::MutexGuard<'_, State> = app.state();
    let found = st
        .api_keys
        .values_mut()
        .find(|k| k.key == key && k.active)
        .ok_or_else(|| ApiError::validation("Invalid API key."))?;
    found.last_use = Some(now());
    let cap = found.token_duration.unwrap_or(COOKIE_LIFETIME_DAYS);
    let days = duration.map_or(cap, |d| d.min(cap));
    let user_id = found.user_id.clone();
    let (token, expires) = st.issue_token(Some(user_id.clone()), vec!["core.user_auth".into()], days);
    Ok(json_response(json!({
        "authToken": {"token": token, "expires": expires, "scope": ["core.user_auth"]},
        "user": {"_id": user_id},
    })))
}

#[cfg(test)]
mod tests {
    use super::valid_login;

    #[test]
    fn logins_follow_girders_rule() {
        assert!(valid_login("alice") && valid_login("a.b-1"));
        assert!(!valid_login("bob") && !valid_login("1abc") && !valid_login("al ice"));
    }
}
