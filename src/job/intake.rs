//! Stage 1, intake: everything a user could get wrong is checked before any heavy work. The
//! raw interface values become typed [`JobParams`]; the user, their models, the dataset's image
//! and the base model are looked up once, and the [`Plan`] carries them to the later stages.

use std::time::Instant;

use super::dataset::{self, DatasetImage};
use super::error::JobError;
use super::events::Events;
use super::family::Family;
use super::request::JobRequest;
use super::store;
use super::validate::JobParams;
use super::JobContext;
use crate::control::Control;
use crate::girder::User;

/// What the intake established: enough for every later stage to run without asking again.
pub struct Plan {
    pub params: JobParams,
    pub user: User,
    pub dataset_id: String,
    pub image: DatasetImage,
    /// When the job started (the report's wall time).
    pub started: Instant,
}

/// Validates the request and loads what the job needs, returning the plan and the base
/// network (loaded and checked); fails before any image is downloaded.
pub async fn intake<F: Family>(
    family: &F,
    ctx: &JobContext,
    request: &JobRequest,
    events: &Events,
    control: &Control,
) -> Result<(Plan, F::Net), JobError> {
    let started = Instant::now();
    // no progress line yet: as the reference worker, a job refused here prints only its error
    let client = &ctx.client;
    let dataset_id = request
        .dataset()
        .map_err(|e| JobError::Dataset { dataset: "(none)".into(), detail: e.to_string() })?
        .to_string();
    let user = match &ctx.user {
        Some(u) => u.clone(),
        None => control.race(client.users().me()).await??,
    };
    let root = family.root_folder();
    let mut user_models = control.race(store::list_models(client, &user.id, root)).await??;
    user_models.retain(|i| !family.reserves(&i.name));
    let known = |m: &str| family.is_builtin(m) || user_models.iter().any(|i| i.name == m);
    let (params, warnings) = family.validate(&request.values, &ctx.settings, &known)?;
    for w in warnings {
        events.warning(w, "");
    }
    let image = control.race(dataset::open_dataset(client, &dataset_id)).await??;
    dataset::check_channels(&image, &params)?;

    let name = &params.base_model;
    let base = match user_models.iter().find(|i| &i.name == name) {
        Some(item) => {
            let bytes = control.race(store::download_model(client, item)).await??;
            let origin = format!("your model `{name}`");
            let (device, f) = (ctx.device, family.clone());
            // parsing a 100 MB to 1 GB file is CPU work: off the async threads, in the job's span
            let load = crate::telemetry::spawn_blocking_in_span("loading the base model", move || {
                f.load_file(&bytes, &origin, device)
            });
            control.race(load).await???
        }
        None => family.load_builtin(name, &ctx.settings, ctx.device)?,
    };
    family.check_base(&base, &params)?;
    Ok((Plan { params, user, dataset_id, image, started }, base))
}
