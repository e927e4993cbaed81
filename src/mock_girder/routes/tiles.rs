//! large_image endpoints: `GET/POST/DELETE /item/{id}/tiles`, `GET /item/{id}/tiles/region`,
//! `GET /item/{id}/tiles/pixel`, and the auto-set that makes an uploaded TIFF a large image.
//!
//! Region quirks kept from the record: `encoding=pickle:N` answers a numpy `(H, W, 1)` array in
//! the native dtype under `Content-Type: image/jpeg`; `encoding=TIFF` is 8-bit; a missing frame is
//! a 400 with a JSON body but `Content-Type: image/tiff`. JPEG (large_image's default) is not
//! encoded by the mock.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::mock_girder::http::{bytes_response, json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::large_image::{self, LargeImage};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{Level, State};
use crate::numpy::{encode_pickle5, Array2};

/// Sets `largeImage` on the item when the new file is a TIFF the mock can read (large_image's
/// `auto_set`, which happens before the final chunk's answer).
pub(crate) fn auto_set_large_image(st: &mut State, item_id: &str, file_id: &str) {
    let Some(file) = st.files.get(file_id) else { return };
    let is_tiff = file.name.to_lowercase().ends_with(".tif") || file.name.to_lowercase().ends_with(".tiff");
    let has_one = st.items.get(item_id).is_some_and(|i| i.large_image.is_some());
    if !is_tiff || has_one {
        return;
    }
    if let Ok(image) = large_image::open(&file.data) {
        set(st, item_id, file_id, image);
    }
}

fn set(st: &mut State, item_id: &str, file_id: &str, image: LargeImage) {
    if let Some(item) = st.items.get_mut(item_id) {
        item.large_image = Some(json!({"fileId": file_id, "sourceName": image.source_name}));
    }
    st.large_images.insert(item_id.to_string(), Arc::new(image));
}

fn image(st: &State, item_id: &str, ctx: &Ctx) -> Result<Arc<LargeImage>, ApiError> {
    st.item(item_id, st.user(ctx.token()), Level::Read)?;
    st.large_images.get(item_id).cloned().ok_or_else(|| ApiError::rest("No large image file in this item."))
}

pub(crate) async fn metadata(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    Ok(json_response(image(&st, &id, &ctx)?.metadata.clone()))
}

/// `POST /item/{id}/tiles[?fileId=]`: answers `null` when the file is read directly.
pub(crate) async fn create(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let item = st.item(&id, Some(user), Level::Write)?;
    if item.large_image.is_some() {
        return Err(ApiError::rest("Item already has largeImage set."));
    }
    let file = match ctx.param("fileId") {
        Some(fid) => st.file(fid, Some(user), Level::Read)?,
        None => {
            let mut files: Vec<_> = st.files.values().filter(|f| f.item_id == id).collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            files.into_iter().next().ok_or_else(|| ApiError::rest("Missing \"fileId\" parameter."))?
        }
    };
    if file.item_id != id {
        return Err(ApiError::rest("The provided file must be in the provided item."));
    }
    let file_id = file.id.clone();
    let image = large_image::open(&file.data)
        .map_err(|e| ApiError::rest(format!("No large image file in this item ({e}).")))?;
    set(&mut st, &id, &file_id, image);
    Ok(json_response(Value::Null))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    st.item(&id, Some(user), Level::Write)?;
    st.large_images.remove(&id);
    let removed = st.items.get_mut(&id).and_then(|i| i.large_image.take()).is_some();
    Ok(json_response(json!({"deleted": removed})))
}

/// A region request: `[left, right) x [top, bottom)` clamped to the image, and the output size
/// when `width`/`height` shrink it (keeping the aspect ratio).
struct Crop {
    left: u32,
    top: u32,
    right: u32,
    bottom: u32,
    out: Option<(usize, usize)>,
}

fn crop(ctx: &Ctx, img: &LargeImage) -> Result<Crop, ApiError> {
    let get = |k: &str, default: u32| -> Result<u32, ApiError> {
        Ok(ctx.float(k)?.map_or(default, |v| v.max(0.0).round() as u32))
    };
    let (left, top) = (get("left", 0)?, get("top", 0)?);
    let (right, bottom) =
        (get("right", img.width)?.min(img.width), get("bottom", img.height)?.min(img.height));
    let (w, h) = (right.saturating_sub(left) as f64, bottom.saturating_sub(top) as f64);
    let max_w = ctx.float("width")?.filter(|v| *v > 0.0);
    let max_h = ctx.float("height")?.filter(|v| *v > 0.0);
    let scale = [max_w.map(|m| m / w), max_h.map(|m| m / h)].into_iter().flatten().fold(1.0f64, f64::min);
    let out =
        (scale < 1.0).then(|| (((h * scale).round() as usize).max(1), ((w * scale).round() as usize).max(1)));
    Ok(Crop { left, top, right, bottom, out })
}

pub(crate) async fn region(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let img = {
        let st = app.state();
        image(&st, &id, &ctx)?
    };
    let frame = ctx.int("frame")?.unwrap_or(0);
    let missing = || ApiError { content_type: "image/tiff", ..ApiError::rest("Frame does not exist") };
    let frame = usize::try_from(frame).map_err(|_| missing())?;
    let c = crop(&ctx, &img)?;
    let mut region = img.region(frame, c.left, c.top, c.right, c.bottom).ok_or_else(missing)?;
    if let Some((h, w)) = c.out {
        region = large_image::resize(&region, h, w);
    }
    let encoding = ctx.param("encoding").unwrap_or("JPEG").to_string();
    match encoding.as_str() {
        e if e.starts_with("pickle") => {
            Ok(bytes_response(Bytes::from(encode_pickle5(&region, true)), "image/jpeg", None))
        }
        "TIFF" => Ok(bytes_response(
            Bytes::from(large_image::write_tiff8(&large_image::to_u8(&region))),
            "image/tiff",
            None,
        )),
        "PNG" => {
            let u8s = large_image::to_u8(&region);
            let (h, w) = u8s.dim();
            let gray = image::GrayImage::from_raw(w as u32, h as u32, u8s.iter().copied().collect())
                .ok_or_else(|| ApiError::rest("region has no pixels"))?;
            let mut png = Vec::new();
            gray.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| ApiError::rest(format!("PNG encoding failed: {e}")))?;
            Ok(bytes_response(Bytes::from(png), "image/png", None))
        }
        other => Err(ApiError::rest(format!(
            "mock Girder does not encode {other} regions; ask for encoding=pickle:5, TIFF or PNG"
        ))),
    }
}

/// `GET /item/{id}/tiles/pixel?left&top&frame`: `{"l": 8-bit value, "value": [native]}`.
pub(crate) async fn pixel(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let img = {
        let st = app.state();
        image(&st, &id, &ctx)?
    };
    let frame = usize::try_from(ctx.int("frame")?.unwrap_or(0))
        .map_err(|_| ApiError::rest("Frame does not exist"))?;
    let (x, y) = (ctx.int("left")?.unwrap_or(0), ctx.int("top")?.unwrap_or(0));
    let (x, y) = (u32::try_from(x).unwrap_or(u32::MAX), u32::try_from(y).unwrap_or(u32::MAX));
    let px = img
        .region(frame, x, y, x.saturating_add(1), y.saturating_add(1))
        .ok_or_else(|| ApiError::rest("Frame does not exist"))?;
    if px.dim() != (1, 1) {
        return Ok(json_response(json!({})));
    }
    let l = large_image::to_u8(&px)[[0, 0]];
    let value = match &px {
        Array2::U8(a) => json!(a[[0, 0]]),
        Array2::U16(a) => json!(a[[0, 0]]),
        Array2::F32(a) => json!(a[[0, 0]]),
    };
    Ok(json_response(json!({"l": l, "value": [value]})))
}
