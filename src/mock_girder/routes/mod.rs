//! The `/api/v1` routes, one file per Girder resource.

use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;

use super::http::{ApiError, Ctx};
use super::server::Shared;

mod annotations;
mod files;
mod folders;
mod items;
mod jobs;
mod paging;
mod resource;
mod system;
mod tiles;
mod users;
mod worker_interface;

pub(crate) fn router() -> Router<Shared> {
    let api = Router::new()
        .route("/system/version", get(system::version))
        .route("/system/setting", put(system::set_setting))
        .route("/user", post(users::create))
        .route("/user/me", get(users::me))
        .route("/user/authentication", get(users::authenticate))
        .route("/user/{id}", get(users::get))
        .route("/api_key", post(users::create_api_key))
        .route("/api_key/token", post(users::api_key_token))
        .route("/folder", get(folders::list).post(folders::create))
        .route("/folder/{id}", get(folders::get).put(folders::update).delete(folders::remove))
        .route("/folder/{id}/metadata", put(folders::set_metadata))
        .route("/item", get(items::list).post(items::create))
        .route("/item/{id}", get(items::get).put(items::update).delete(items::remove))
        .route("/item/{id}/files", get(items::files))
        .route("/item/{id}/download", get(items::download))
        .route("/item/{id}/metadata", put(items::set_metadata))
        .route("/item/{id}/tiles", get(tiles::metadata).post(tiles::create).delete(tiles::remove))
        .route("/item/{id}/tiles/region", get(tiles::region))
        .route("/item/{id}/tiles/pixel", get(tiles::pixel))
        .route("/file", post(files::init_upload))
        .route("/file/chunk", post(files::chunk))
        .route("/file/offset", get(files::offset))
        .route("/file/upload/{id}", delete(files::cancel_upload))
        .route("/file/{id}", get(files::get).delete(files::remove))
        .route("/file/{id}/download", get(files::download))
        .route("/resource/lookup", get(resource::lookup))
        .route("/job", get(jobs::list).post(jobs::create))
        .route("/job/all", get(jobs::list_all))
        .route("/job/{id}", get(jobs::get).put(jobs::update).delete(jobs::remove))
        .route("/job/{id}/cancel", put(jobs::cancel))
        .route("/dev_support/job_token", post(jobs::dev_job_token))
        .route("/dev_support/local_worker", put(jobs::dev_local_worker))
        .route("/upenn_annotation", get(annotations::list).post(annotations::create))
        .route("/upenn_annotation/multiple", post(annotations::create_many))
        .route("/upenn_annotation/count", get(annotations::count))
        .route(
            "/upenn_annotation/{id}",
            get(annotations::get).put(annotations::update).delete(annotations::remove),
        )
        .route("/worker_interface", get(worker_interface::get).post(worker_interface::post))
        .fallback(no_route);
    Router::new().nest("/api/v1", api)
}

/// Girder's answer for a path or method it has no route for.
async fn no_route(ctx: Ctx) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "rest",
        format!("No matching route for \"{} {}\"", ctx.method, ctx.path),
    )
}
