//! large_image: tile metadata, the frame map, region reads, and the image item of a dataset.
//!
//! A NimbusImage dataset is a folder; its image is the item named by `meta.selectedLargeImageId`,
//! else the first item with `largeImage` (annotation_client `getDataset`). `GET /item/{id}/tiles`
//! lists frames; the map `[channel][Time][Z][XY] -> frame` is built as annotation_client's
//! `buildMap` does (missing indices are 0, the first frame for a key wins, no frames means frame 0).
//! Regions come as numpy pickles in the native dtype (`encoding=pickle:5`); `encoding=TIFF` is a
//! fallback only, because large_image converts uint16 to uint8 there (`floor(v/256)`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::client::{Call, GirderClient};
use super::error::GirderError;
use super::items::Item;
use super::path::ApiPath;
use crate::numpy::{self, Array2};

/// `GET /item/{id}/tiles`.
#[derive(Debug, Clone, Deserialize)]
pub struct TilesMetadata {
    #[serde(rename = "sizeX")]
    pub size_x: u32,
    #[serde(rename = "sizeY")]
    pub size_y: u32,
    #[serde(rename = "tileWidth", default)]
    pub tile_width: Option<u32>,
    #[serde(rename = "tileHeight", default)]
    pub tile_height: Option<u32>,
    #[serde(default)]
    pub levels: Option<u32>,
    /// numpy dtype name, e.g. `uint16`.
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(rename = "bandCount", default)]
    pub band_count: Option<u32>,
    #[serde(default)]
    pub frames: Vec<Frame>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(rename = "IndexRange", default)]
    pub index_range: Option<Map<String, Value>>,
}

impl TilesMetadata {
    /// Sides within [`crate::limits::MAX_FRAME_SIDE`], at most [`crate::limits::MAX_FRAMES`]
    /// frames.
    pub fn check(&self) -> Result<(), String> {
        crate::limits::frame_size(u64::from(self.size_x), u64::from(self.size_y))?;
        if self.frames.len() > crate::limits::MAX_FRAMES {
            return Err(format!(
                "the tile metadata lists {} frames; the limit is {}",
                self.frames.len(),
                crate::limits::MAX_FRAMES
            ));
        }
        Ok(())
    }
}

/// One entry of `frames`.
#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    #[serde(rename = "Frame")]
    pub frame: u32,
    #[serde(rename = "IndexC", default)]
    pub index_c: Option<u32>,
    #[serde(rename = "IndexZ", default)]
    pub index_z: Option<u32>,
    #[serde(rename = "IndexT", default)]
    pub index_t: Option<u32>,
    #[serde(rename = "IndexXY", default)]
    pub index_xy: Option<u32>,
    #[serde(rename = "Channel", default)]
    pub channel: Option<String>,
}

/// A location in a NimbusImage dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameKey {
    pub channel: u32,
    pub time: u32,
    pub z: u32,
    pub xy: u32,
}

/// `[channel][Time][Z][XY] -> frame index`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameMap {
    map: BTreeMap<FrameKey, u32>,
}

impl FrameMap {
    /// annotation_client `buildMap`: the first frame seen for a key wins; no frames means one
    /// frame, 0, at the origin.
    pub fn from_frames(frames: &[Frame]) -> FrameMap {
        let mut map = BTreeMap::new();
        if frames.is_empty() {
            map.insert(FrameKey { channel: 0, time: 0, z: 0, xy: 0 }, 0);
        }
        for f in frames {
            let key = FrameKey {
                channel: f.index_c.unwrap_or(0),
                time: f.index_t.unwrap_or(0),
                z: f.index_z.unwrap_or(0),
                xy: f.index_xy.unwrap_or(0),
            };
            map.entry(key).or_insert(f.frame);
        }
        FrameMap { map }
    }

    pub fn get(&self, key: FrameKey) -> Option<u32> {
        self.map.get(&key).copied()
    }

    /// The frame for channel/time/z/xy (`coordinatesToFrameIndex`).
    pub fn frame(&self, channel: u32, time: u32, z: u32, xy: u32) -> Option<u32> {
        self.get(FrameKey { channel, time, z, xy })
    }

    pub fn channels(&self) -> BTreeSet<u32> {
        self.map.keys().map(|k| k.channel).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (FrameKey, u32)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl TilesMetadata {
    pub fn frame_map(&self) -> FrameMap {
        FrameMap::from_frames(&self.frames)
    }
}

/// A rectangle in base pixels; `right` and `bottom` are exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub left: u32,
    pub top: u32,
    pub right: u32,
    pub bottom: u32,
}

/// `client.tiles()`.
pub struct Tiles<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn tiles(&self) -> Tiles<'_> {
        Tiles { client: self }
    }
}

impl Tiles<'_> {
    /// `GET /item/{id}/tiles`.
    /// The frame size and frame count are checked against [`crate::limits`] here: every
    /// region, crop and frame map the job builds is sized from them.
    pub async fn metadata(&self, item_id: &str) -> Result<TilesMetadata, GirderError> {
        let path = ApiPath::id("item", item_id)?.then("tiles");
        let meta: TilesMetadata = self.client.json(Call::get(path.clone())).await?;
        meta.check().map_err(|m| {
            GirderError::decode("GET", &path.to_string(), format!("large image {item_id}: {m}"))
        })?;
        Ok(meta)
    }

    /// The image item of a dataset folder: `meta.selectedLargeImageId`, else the first item with
    /// `largeImage`.
    pub async fn dataset_image(&self, folder_id: &str) -> Result<Item, GirderError> {
        let folder = self.client.folders().get(folder_id).await?;
        let items = self.client.items().list(folder_id).await?;
        if let Some(selected) = folder.meta.get("selectedLargeImageId").and_then(Value::as_str) {
            return items.into_iter().find(|i| i.id == selected).ok_or_else(|| {
                GirderError::Invalid(format!(
                    "dataset folder {folder_id} selects large image {selected} (meta.selectedLargeImageId), but no such item is in the folder"
                ))
            });
        }
        items
            .into_iter()
            .find(|i| i.large_image.is_some())
            .ok_or_else(|| GirderError::NoLargeImage { folder_id: folder_id.to_string() })
    }

    /// A region of one frame in its native dtype (`encoding=pickle:5`); `None` is the whole frame.
    pub async fn region(
        &self,
        item_id: &str,
        frame: u32,
        window: Option<Window>,
    ) -> Result<Array2, GirderError> {
        let call = region_call(item_id, frame, window, "pickle:5")?;
        let fetched = self.client.fetch(&call).await?;
        numpy::decode_pickle(&fetched.body).map_err(|source| GirderError::Array {
            method: "GET".into(),
            path: call.path.clone(),
            source,
        })
    }

    /// The same region as an uncompressed TIFF. large_image converts to 8 bits here
    /// (uint16 becomes `floor(v/256)`), so this is only a fallback and says so in the log.
    pub async fn region_tiff(
        &self,
        item_id: &str,
        frame: u32,
        window: Option<Window>,
    ) -> Result<Array2, GirderError> {
        tracing::warn!(
            item_id,
            frame,
            "reading a region as TIFF: large_image sends it as 8-bit, losing precision"
        );
        let call = region_call(item_id, frame, window, "TIFF")?.query("tiffCompression", "raw");
        let fetched = self.client.fetch(&call).await?;
        decode_tiff(&fetched.body).map_err(|m| GirderError::decode("GET", &call.path, m))
    }
}

fn region_call(
    item_id: &str,
    frame: u32,
    window: Option<Window>,
    encoding: &str,
) -> Result<Call, GirderError> {
    let path = ApiPath::id("item", item_id)?.then("tiles").then("region");
    let mut call = Call::get(path).query("frame", frame).query("encoding", encoding);
    if let Some(w) = window {
        call = call
            .query("left", w.left)
            .query("top", w.top)
            .query("right", w.right)
            .query("bottom", w.bottom)
            .query("units", "base_pixels");
    }
    Ok(call)
}

fn decode_tiff(data: &[u8]) -> Result<Array2, String> {
    use tiff::decoder::{Decoder, DecodingResult};
    let mut dec =
        Decoder::new(std::io::Cursor::new(data)).map_err(|e| format!("region is not a TIFF: {e}"))?;
    let (w, h) = dec.dimensions().map_err(|e| e.to_string())?;
    let shape = (h as usize, w as usize);
    let bad = |e: ndarray::ShapeError| format!("region TIFF has an unexpected layout: {e}");
    match dec.read_image().map_err(|e| format!("region TIFF does not decode: {e}"))? {
        DecodingResult::U8(v) => Ok(Array2::U8(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?)),
        DecodingResult::U16(v) => Ok(Array2::U16(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?)),
        DecodingResult::F32(v) => Ok(Array2::F32(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?)),
        _ => Err("region TIFF has a sample type other than uint8, uint16 or float32".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame: u32, c: Option<u32>, z: Option<u32>, t: Option<u32>) -> Frame {
        Frame { frame, index_c: c, index_z: z, index_t: t, index_xy: None, channel: None }
    }

    #[test]
    fn tile_metadata_sizes_are_checked_against_the_limits() {
        let meta = |v: serde_json::Value| serde_json::from_value::<TilesMetadata>(v).unwrap();
        assert!(meta(serde_json::json!({"sizeX": 2048, "sizeY": 1024})).check().is_ok());
        let e = meta(serde_json::json!({"sizeX": 4_000_000_000u32, "sizeY": 4_000_000_000u32}))
            .check()
            .unwrap_err();
        assert!(e.contains("4000000000x4000000000") && e.contains("1048576"), "{e}");
        assert!(meta(serde_json::json!({"sizeX": 0, "sizeY": 16})).check().is_err());
    }

    #[test]
    fn frame_map_follows_annotation_client_build_map() {
        // TZCYX with T=2, Z=2, C=2 as large_image's tifffile source lists it (C fastest)
        let mut frames = Vec::new();
        for t in 0..2 {
            for z in 0..2 {
                for c in 0..2 {
                    frames.push(frame(t * 4 + z * 2 + c, Some(c), Some(z), Some(t)));
                }
            }
        }
        let map = FrameMap::from_frames(&frames);
        assert_eq!(map.frame(1, 1, 0, 0), Some(5));
        assert_eq!(map.frame(0, 1, 1, 0), Some(6));
        assert_eq!(map.frame(2, 0, 0, 0), None);
        assert_eq!(map.channels().into_iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn frames_without_indices_all_map_to_the_first_and_no_frames_to_frame_zero() {
        let map = FrameMap::from_frames(&[frame(0, None, None, None), frame(1, None, None, None)]);
        assert_eq!((map.len(), map.frame(0, 0, 0, 0)), (1, Some(0)));
        let empty = FrameMap::from_frames(&[]);
        assert_eq!((empty.len(), empty.frame(0, 0, 0, 0)), (1, Some(0)));
    }
}
