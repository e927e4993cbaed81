//! A mock Girder 5 server (with the jobs, worker, large_image and NimbusImage annotation plugins)
//! that answers like the live server recorded in `shared/girder-api/API_EXAMPLES.md`: the same
//! paths, status codes, error JSON, headers and state machines, with in-memory state.
//!
//! Tests start it in-process with [`spawn_mock`] and seed it through the REST API exactly as a real
//! Girder is seeded (`POST /user`, `GET /user/authentication`, `POST /api_key`, folders, uploads,
//! `POST /upenn_annotation/multiple`, ...); `cellpose-train-worker mock-girder --port P` runs it
//! standalone. Fault injection and a request log live under `/mock` (see [`faults`]).
//!
//! Like a plain Girder 5 (no Celery worker on its `local` queue): a body-less POST/PUT without
//! `Content-Length` is answered 411, and `DELETE /folder/{id}` 503 unless
//! [`MockConfig::local_worker`] is set; one `PUT /job/{id}?log=` is one log entry.
//!
//! Known deviations from Girder, on purpose (tests/it/girder_differential.rs holds the rest of the
//! mock to a real Girder 5.0.21, call by call):
//! - `PUT /job/{id}/cancel` on a running worker job gives CANCELING as if a Celery task existed.
//! - Access control is reduced to: site admin, owner of the user's tree, `public` folders.
//! - Only TIFF uploads become large images; JPEG region encoding is not offered; scaled regions
//!   (`width`/`height`) are resampled nearest-neighbour; tile sizes and levels are approximate.

mod faults;
mod http;
mod large_image;
mod ordered_json;
mod routes;
mod server;
mod state;

pub use server::{serve, spawn_mock, MockHandle};
pub use state::MockConfig;
