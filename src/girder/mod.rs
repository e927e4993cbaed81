//! Async REST client for Girder 5 with the jobs, worker, large_image and NimbusImage annotation
//! plugins, written to the requests and answers recorded from a live server
//! (`shared/girder-api/API_EXAMPLES.md`). Nothing here knows about the mock.
//!
//! ```no_run
//! # async fn f() -> Result<(), cellpose_train_worker::girder::GirderError> {
//! use cellpose_train_worker::girder::{Auth, GirderClient, GirderConfig, Secret};
//! let client = GirderClient::new(GirderConfig::new("https://girder.example/api/v1"), Auth::ApiKey(Secret::new("...")))?;
//! let me = client.users().me().await?;
//! let private = client.folders().user_folder(&me.id, "Private").await?;
//! let models = client.folders().ensure_path(&private.id, &[".cellpose", "models"]).await?;
//! # let _ = models; Ok(()) }
//! ```
//!
//! Calls are grouped per resource: `client.users()`, `folders()`, `items()`, `files()`, `jobs()`,
//! `annotations()`, `tiles()`, `resources()`, `worker_interfaces()`. Every request has a timeout;
//! idempotent ones are retried with jittered exponential backoff on timeouts, connection errors,
//! 429 and 5xx; non-idempotent POSTs only when the connection was never made (uploads resume
//! through `GET /file/offset` instead).

mod annotations;
mod auth;
mod client;
mod error;
mod files;
mod folders;
mod items;
mod jobs;
mod path;
mod resource;
mod retry;
mod tiles;
mod users;
mod worker_interface;

pub use annotations::{AnnotationQuery, Annotations};
pub use auth::{Auth, AuthToken, Secret};
pub use client::{GirderClient, GirderConfig, DEFAULT_CHUNK_SIZE};
pub use error::GirderError;
pub use files::{FileDoc, Files};
pub use folders::{Folder, Folders, ParentType};
pub use items::{Item, Items, LargeImageInfo};
pub use jobs::{Job, JobFilter, JobInfoHeaders, JobInfoSpec, JobStatus, JobUpdate, Jobs, NewJob, Progress};
pub use path::{InvalidId, ObjectId};
pub use resource::{Resource, Resources};
pub use retry::RetryPolicy;
pub use tiles::{Frame, FrameKey, FrameMap, Tiles, TilesMetadata, Window};
pub use users::{ApiKey, NewUser, User, Users};
pub use worker_interface::WorkerInterfaces;
