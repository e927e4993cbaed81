//! Seeding a Girder (the mock, or a scratch real server) with a NimbusImage-style training set,
//! through the same REST calls a real deployment sees: an admin (whose API key the queue worker
//! uses), a user, a 2-channel OME-TIFF dataset of synthetic cells with nuclei, polygon and
//! rectangle annotations tagged `cell`, three training regions, one validation region, and a base
//! model in the user's `Private/.cellpose/models`.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::girder::{Auth, GirderClient, GirderConfig, GirderError, NewUser, ParentType, Secret};
use crate::job::store;
use crate::model::{torch_file, CpnetConfig, Model};
use crate::synthetic::{synth_scene, SynthSpec};

/// Tags the demo's annotations carry.
pub const CELL_TAG: &str = "cell";
pub const REGION_TAG: &str = "training region";
pub const VALIDATION_TAG: &str = "validation region";

/// What to seed.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Image width and height.
    pub size: usize,
    pub cells: usize,
    pub seed: u64,
    /// Channels per level of the base model uploaded as the user's model `base_model_name`.
    pub base_nbase: Vec<i64>,
    pub base_model_name: String,
}

impl Default for DemoSpec {
    fn default() -> Self {
        DemoSpec {
            size: 384,
            cells: 70,
            seed: 7,
            base_nbase: vec![32, 64, 128, 256],
            base_model_name: "demo-base".into(),
        }
    }
}

/// Handles to what was seeded.
pub struct DemoWorld {
    pub admin: GirderClient,
    /// Service-account key for the queue worker (admin: `GET /job/all` needs it).
    pub admin_api_key: Secret,
    pub user: GirderClient,
    pub user_id: String,
    pub user_token: Secret,
    /// The user with a token that may `POST /job` (no login token may on Girder; NimbusImage
    /// makes jobs server-side): minted by the admin through `dev_support/job_token`.
    pub creator: GirderClient,
    pub dataset_id: String,
    pub image_item_id: String,
    pub base_model: String,
    pub n_cells: usize,
}

fn new_user(login: &str, password: &str) -> NewUser {
    NewUser {
        login: login.into(),
        email: format!("{login}@example.org"),
        first_name: login.into(),
        last_name: "Demo".into(),
        password: Secret::new(password),
    }
}

/// A NimbusImage annotation document.
fn annotation(dataset: &str, shape: &str, tag: &str, points: &[(f64, f64)]) -> Value {
    let coords: Vec<Value> = points.iter().map(|&(x, y)| json!({"x": x, "y": y, "z": 0})).collect();
    json!({
        "tags": [tag], "shape": shape, "channel": 0,
        "location": {"XY": 0, "Z": 0, "Time": 0},
        "coordinates": coords, "datasetId": dataset, "name": "", "color": null
    })
}

fn rectangle(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<(f64, f64)> {
    vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
}

/// Seeds an empty Girder at `config.api_url`. The first user created becomes the site admin.
pub async fn seed(config: GirderConfig, spec: &DemoSpec) -> Result<DemoWorld, GirderError> {
    let anonymous = GirderClient::new(config.clone(), Auth::Anonymous)?;
    let (_, admin_token) = anonymous.users().create(&new_user("admin", "adminpass1")).await?;
    let admin = match admin_token {
        Some(t) => anonymous.with_token(t),
        None => GirderClient::login(config.clone(), "admin", &Secret::new("adminpass1")).await?.0,
    };
    let admin_api_key = admin.users().create_api_key("cellpose-worker", None).await?.key;
    admin.users().create(&new_user("alice", "alicepass1")).await?;
    let (user, me) = GirderClient::login(config.clone(), "alice", &Secret::new("alicepass1")).await?;
    let user_token = user.token().await?.ok_or_else(|| GirderError::Invalid("login gave no token".into()))?;
    let creator = user.with_token(admin.jobs().creator_token(&me.id).await?);

    let private = user.folders().user_folder(&me.id, "Private").await?;
    let meta = json!({"subtype": "contrastDataset"});
    let dataset =
        user.folders().create(ParentType::Folder, &private.id, "demo dataset", Some(&meta), false).await?;

    let scene = synth_scene(&SynthSpec {
        height: spec.size,
        width: spec.size,
        n_cells: spec.cells,
        radius: (9.0, 14.0),
        seed: spec.seed,
    });
    let planes = scene.image.mapv(|v| v.round().clamp(0.0, 65535.0) as u16);
    let tiff = crate::imageio::ome_tiff_bytes(&planes, &["cytoplasm", "nuclei"])
        .map_err(|e| GirderError::Invalid(format!("encoding the demo image: {e}")))?;
    let (item, _) =
        user.files().upload_item(&dataset.id, "cells.ome.tif", Bytes::from(tiff), "image/tiff").await?;

    // every cell annotated: most as polygons, every seventh as its bounding rectangle
    let mut docs = Vec::new();
    for (i, c) in scene.cells.iter().enumerate() {
        if i % 7 == 6 {
            let (x0, y0, x1, y1) = c.bbox();
            docs.push(annotation(&dataset.id, "rectangle", CELL_TAG, &rectangle(x0, y0, x1, y1)));
        } else {
            docs.push(annotation(&dataset.id, "polygon", CELL_TAG, &c.polygon(24)));
        }
    }
    // three training quadrants, the fourth held out for validation
    let h = spec.size as f64 / 2.0;
    for (x, y) in [(0.0, 0.0), (h, 0.0), (0.0, h)] {
        docs.push(annotation(&dataset.id, "rectangle", REGION_TAG, &rectangle(x, y, x + h, y + h)));
    }
    docs.push(annotation(&dataset.id, "rectangle", VALIDATION_TAG, &rectangle(h, h, 2.0 * h, 2.0 * h)));
    user.annotations().create_many(&docs).await?;

    // the base model: a freshly initialised CPnet stored as the user's own model
    tch::manual_seed(spec.seed as i64);
    let base = Model::new(
        CpnetConfig { nbase: [vec![2], spec.base_nbase.clone()].concat(), ..Default::default() },
        tch::Device::Cpu,
    )
    .map_err(|e| GirderError::Invalid(format!("creating the demo base model: {e}")))?;
    let bytes = torch_file::state_dict_to_bytes(&base.state_dict())
        .map_err(|e| GirderError::Invalid(e.to_string()))?;
    store::upload_model(&user, &me.id, &spec.base_model_name, Bytes::from(bytes), "seed")
        .await
        .map_err(|e| GirderError::Invalid(format!("storing the demo base model: {e}")))?;

    Ok(DemoWorld {
        admin,
        admin_api_key,
        user,
        user_id: me.id,
        user_token,
        creator,
        dataset_id: dataset.id,
        image_item_id: item.id,
        base_model: spec.base_model_name.clone(),
        n_cells: scene.cells.len(),
    })
}

/// The `workerInterface` values a user would submit for the demo dataset.
pub fn interface_values(base_model: &str, output_name: &str, epochs: usize) -> Value {
    json!({
        "Base Model": base_model,
        "Nuclear Model?": false,
        "Output Model Name": output_name,
        "Primary Channel": 0,
        "Secondary Channel": 1,
        "Training Tag": [CELL_TAG],
        "Training Region": [REGION_TAG],
        "Validation Region": [VALIDATION_TAG],
        "Learning Rate": 0.05,
        "Epochs": epochs,
        "Weight Decay": 0.0001
    })
}
