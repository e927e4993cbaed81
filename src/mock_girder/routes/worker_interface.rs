//! `/worker_interface?image=` (NimbusImage): store and read a worker image's interface.

use axum::extract::State as AxState;
use serde_json::{json, Value};

use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::WorkerInterfaceRec;

fn image(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.param("image")
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::rest("Missing 'image' parameter"))
}

pub(crate) async fn post(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    let image = image(&ctx)?;
    let interface = ctx.json_body()?;
    let id = match st.worker_interfaces.get(&image) {
        Some(existing) => existing.id.clone(),
        None => st.new_id(),
    };
    let doc = json!({
        "_id": id, "access": {"groups": [], "users": [{"flags": [], "id": user_id, "level": 2}]},
        "image": image, "interface": interface,
    });
    st.worker_interfaces.insert(image, WorkerInterfaceRec { id, interface });
    Ok(json_response(doc))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let image = image(&ctx)?;
    let st = app.state();
    Ok(json_response(st.worker_interfaces.get(&image).map(|w| w.interface.clone()).unwrap_or(Value::Null)))
}
