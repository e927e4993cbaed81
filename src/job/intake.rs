//! Stage 1, intake: everything a user could get wrong is checked before any heavy work. The
//! raw interface values become typed [`JobParams`]; the user, their models, the dataset's image
//! and the base model are looked up once, and the [`Plan`] carries them to the later stages.

use std::time::Instant;

use super::context::JobContext;
use super::dataset::{self, DatasetImage};
use super::error::JobError;
use super::events::Events;
use super::family::Family;
use super::request::JobRequest;
use super::store;
use super::validate::JobParams;
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

    let name = params.base_model.clone();
    let user_file = match user_models.iter().find(|i| i.name == name) {
        Some(item) => Some(control.race(store::download_model(client, item)).await??),
        None => None,
    };
    let (device, settings, f) = (ctx.device, ctx.settings.clone(), family.clone());
    // reading and parsing a 100 MB to 1.2 GB file is blocking work: off the async threads, in
    // the job's span
    let load = crate::telemetry::spawn_blocking_in_span("loading the base model", move || match user_file {
        Some(bytes) => f.load_file(&bytes, &format!("your model `{name}`"), device),
        None => f.load_builtin(&name, &settings, device),
    });
    let base = control.race(load).await???;
    family.check_base(&base, &params)?;
    Ok((Plan { params, user, dataset_id, image, started }, base))
}
