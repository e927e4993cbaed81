//! `GET /system/version` (girder_client asks it before uploading) and `PUT /system/setting` for
//! `core.upload_minimum_chunk_size`, the one setting the mock honours.

use axum::extract::State as AxState;
use serde_json::{json, Value};

use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;

pub(crate) async fn version() -> ApiResult {
    Ok(json_response(json!({"apiVersion": "5.0.21", "release": "5.0.21", "serverStartDate": null})))
}

pub(crate) async fn set_setting(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let key = ctx.required("key")?.to_string();
    let value = ctx.required("value")?.to_string();
    let mut st = app.state();
    if !st.require_user(ctx.token())?.admin {
        return Err(ApiError::access(true, "Administrator access required."));
    }
    match key.as_str() {
        "core.upload_minimum_chunk_size" => {
            let v: Value = serde_json::from_str(&value).unwrap_or(Value::String(value.clone()));
            st.min_chunk = v.as_u64().ok_or_else(|| {
                ApiError::validation("Upload minimum chunk size must be an integer >= 0.").field("value")
            })?;
            Ok(json_response(Value::Bool(true)))
        }
        _ => Err(ApiError::validation(format!("Invalid setting key \"{key}\".")).field("key")),
    }
}
