//! What large_image 1.35.6 makes of an uploaded TIFF: which tile source opens it, its
//! `/tiles` metadata (frames, `IndexRange`, `IndexStride`, channels) and its region pixels.
//!
//! The rules below were read off the real large_image by `tools/large_image_fixtures.py`, whose
//! outputs the tests compare against:
//! - OME-XML whose planes are channels only (Z = T = 1): the `ometiff` source; each frame is the
//!   OME `Channel` (`ID`, `Name`, `SamplesPerPixel`, `LightPath`) with `IFD` (when there are
//!   several) and `IndexC`; `channels`/`channelmap` when there are at least two distinct names.
//! - OME-XML with Z or T > 1: untiled, the `tifffile` source with `IndexC`/`IndexZ`/`IndexT` (only
//!   axes longer than 1) in page order; tiled, the `tiff` source with bare frames.
//! - Without OME-XML: one page is the `tiff` source without frames; several pages are frames
//!   `{Frame, Index}` (`tiff` source when tiled, `tifffile` when not), with no channel index.
//!
//! `Frame`, `Index`, `IndexRange` and `IndexStride` follow large_image's
//! `_addMetadataFrameInformation`. Tile sizes and levels are approximations (the client uses
//! neither).

use std::collections::BTreeMap;
use std::io::Cursor;

use serde_json::{json, Map, Value};
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use crate::numpy::Array2;

/// A decoded multi-frame image and its large_image metadata.
#[derive(Debug)]
pub(crate) struct LargeImage {
    pub source_name: &'static str,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<Array2>,
    pub metadata: Value,
}

/// Reads a TIFF as large_image would; `Err` when it is not a single-band TIFF we can decode.
pub(crate) fn open(data: &[u8]) -> Result<LargeImage, String> {
    let mut dec = Decoder::new(Cursor::new(data)).map_err(|e| format!("not a TIFF: {e}"))?;
    dec = dec.with_limits(Limits::unlimited());
    let description = dec.get_tag_ascii_string(Tag::ImageDescription).ok();
    let tile = dec.get_tag_u32(Tag::TileWidth).ok().zip(dec.get_tag_u32(Tag::TileLength).ok());
    let (width, height) = dec.dimensions().map_err(|e| e.to_string())?;
    let mut planes = Vec::new();
    loop {
        let (w, h) = dec.dimensions().map_err(|e| e.to_string())?;
        let samples = dec.get_tag_u32(Tag::SamplesPerPixel).unwrap_or(1);
        if (w, h) != (width, height) || samples != 1 {
            return Err("the mock reads single-band TIFFs whose pages all have the same size".into());
        }
        let shape = (h as usize, w as usize);
        let bad = |e: ndarray::ShapeError| e.to_string();
        planes.push(match dec.read_image().map_err(|e| e.to_string())? {
            DecodingResult::U8(v) => Array2::U8(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?),
            DecodingResult::U16(v) => Array2::U16(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?),
            DecodingResult::F32(v) => Array2::F32(ndarray::Array2::from_shape_vec(shape, v).map_err(bad)?),
            _ => return Err("sample type other than uint8, uint16 or float32".into()),
        });
        if !dec.more_images() {
            break;
        }
        dec.next_image().map_err(|e| e.to_string())?;
    }
    let dtype = planes[0].dtype();
    let ome = description.as_deref().and_then(|d| parse_ome(d).ok().flatten());
    let Layout { source_name, frames, channels } = layout(ome.as_ref(), planes.len(), tile.is_some());
    let (tw, th) = match (tile, source_name) {
        (Some(t), _) => t,
        (None, "tifffile") => {
            let t = width.max(height).next_power_of_two().clamp(128, 1024);
            (t, t)
        }
        (None, _) => (width, 256),
    };
    let ratio = (width as f64 / tw as f64).max(height as f64 / th as f64);
    let levels = if ratio <= 1.0 { 1 } else { 1 + ratio.log2().ceil() as u32 };
    let mut metadata = json!({
        "levels": levels, "sizeX": width, "sizeY": height, "tileWidth": tw, "tileHeight": th,
        "magnification": null, "mm_x": null, "mm_y": null, "dtype": dtype.to_string(), "bandCount": 1,
    });
    if let Some(frames) = frames {
        add_frame_information(&mut metadata, frames, channels);
    }
    Ok(LargeImage { source_name, width, height, planes, metadata })
}

/// The parts of OME-XML large_image's choice depends on.
#[derive(Debug)]
pub(crate) struct Ome {
    size_c: usize,
    size_z: usize,
    size_t: usize,
    dimension_order: String,
    /// Attributes of each `Channel`, with `LightPath: {}` when the element has one.
    channels: Vec<Map<String, Value>>,
    first_ifd: u32,
}

fn parse_ome(xml: &str) -> Result<Option<Ome>, String> {
    if !xml.contains("<OME") {
        return Ok(None);
    }
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let Some(pixels) = doc.descendants().find(|n| n.has_tag_name("Pixels")) else { return Ok(None) };
    let size = |k: &str| pixels.attribute(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    let channels = pixels
        .children()
        .filter(|n| n.has_tag_name("Channel"))
        .map(|c| {
            let mut m: Map<String, Value> = c
                .attributes()
                .map(|a| (a.name().to_string(), Value::String(a.value().to_string())))
                .collect();
            if c.children().any(|n| n.has_tag_name("LightPath")) {
                m.insert("LightPath".into(), json!({}));
            }
            m
        })
        .collect();
    let first_ifd = pixels
        .children()
        .find(|n| n.has_tag_name("TiffData"))
        .and_then(|t| t.attribute("IFD"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Some(Ome {
        size_c: size("SizeC"),
        size_z: size("SizeZ"),
        size_t: size("SizeT"),
        dimension_order: pixels.attribute("DimensionOrder").unwrap_or("XYCZT").to_string(),
        channels,
        first_ifd,
    }))
}

/// Which source opens the file, its raw frames (before `Frame`/`Index`), and channel names.
struct Layout {
    source_name: &'static str,
    frames: Option<Vec<Map<String, Value>>>,
    channels: Vec<String>,
}

fn layout(ome: Option<&Ome>, pages: usize, tiled: bool) -> Layout {
    let done = |source_name, frames, channels| Layout { source_name, frames, channels };
    let bare = |n: usize| (0..n).map(|_| Map::new()).collect::<Vec<_>>();
    match ome {
        Some(o) if o.size_z * o.size_t == 1 && o.channels.len() == o.size_c && pages >= o.size_c => {
            let several = o.size_c > 1;
            let frames = o
                .channels
                .iter()
                .enumerate()
                .map(|(c, ch)| {
                    let mut f = ch.clone();
                    if several {
                        f.insert("IFD".into(), json!(o.first_ifd as usize + c));
                    }
                    f.insert("IndexC".into(), json!(c));
                    f
                })
                .collect();
            // large_image reads names only from a list of two or more channels
            let names: Vec<String> =
                o.channels.iter().filter_map(|c| c.get("Name")?.as_str().map(str::to_string)).collect();
            let unique = names.iter().collect::<std::collections::BTreeSet<_>>().len() == names.len();
            let channels = if several && names.len() == o.size_c && unique { names } else { Vec::new() };
            done("ometiff", Some(frames), channels)
        }
        Some(_) if tiled => done("tiff", Some(bare(pages)), Vec::new()),
        Some(o) => {
            let axes: Vec<(char, usize)> = o
                .dimension_order
                .chars()
                .skip(2)
                .map(|a| {
                    (
                        a,
                        match a {
                            'C' => o.size_c,
                            'Z' => o.size_z,
                            _ => o.size_t,
                        },
                    )
                })
                .collect();
            let frames = (0..pages)
                .map(|page| {
                    let mut f = Map::new();
                    let mut rest = page;
                    for (axis, size) in &axes {
                        let index = rest % size;
                        rest /= size;
                        if *size > 1 {
                            f.insert(format!("Index{axis}"), json!(index));
                        }
                    }
                    f
                })
                .collect();
            done("tifffile", Some(frames), Vec::new())
        }
        None if pages == 1 => done("tiff", None, Vec::new()),
        None => done(if tiled { "tiff" } else { "tifffile" }, Some(bare(pages)), Vec::new()),
    }
}

/// large_image `_addMetadataFrameInformation`: `Frame`, `Index` (a counter of non-channel
/// positions), `IndexRange`/`IndexStride` for axes longer than 1, `channels`/`channelmap`.
pub(crate) fn add_frame_information(
    metadata: &mut Value,
    mut frames: Vec<Map<String, Value>>,
    channels: Vec<String>,
) {
    let idx_of = |f: &Map<String, Value>, k: &str| f.get(k).and_then(Value::as_u64);
    let mut refkeys: Vec<String> = vec!["IndexC".into()];
    let mut maxref: BTreeMap<String, u64> = BTreeMap::new();
    let mut index = 0u64;
    for i in 0..frames.len() {
        for k in frames[i].keys() {
            if k.starts_with("Index") && k.len() > 5 && !refkeys.contains(k) {
                refkeys.push(k.clone());
            }
        }
        for k in &refkeys {
            if let Some(v) = idx_of(&frames[i], k) {
                let e = maxref.entry(k.clone()).or_insert(0);
                *e = (*e).max(v + 1);
            }
        }
        if i > 0 {
            let moved =
                refkeys.iter().filter(|k| *k != "IndexC").any(|k| frames[i].get(k) != frames[i - 1].get(k));
            let all_zero = refkeys.iter().all(|k| idx_of(&frames[i], k).unwrap_or(0) == 0);
            if moved || all_zero {
                index += 1;
            }
        }
        frames[i].insert("Frame".into(), json!(i));
        frames[i].insert("Index".into(), json!(index));
    }
    if maxref.values().any(|&v| v > 1) {
        let range: Map<String, Value> =
            maxref.iter().filter(|(_, &v)| v > 1).map(|(k, v)| (k.clone(), json!(v))).collect();
        let stride: Map<String, Value> = range
            .keys()
            .filter_map(|k| {
                frames.iter().position(|f| idx_of(f, k) == Some(1)).map(|p| (k.clone(), json!(p)))
            })
            .collect();
        metadata["IndexRange"] = Value::Object(range);
        metadata["IndexStride"] = Value::Object(stride);
    }
    let n_c = maxref.get("IndexC").copied().unwrap_or(1) as usize;
    if !channels.is_empty() && channels.len() >= n_c {
        let names = &channels[..n_c];
        metadata["channels"] = json!(names);
        metadata["channelmap"] =
            Value::Object(names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect());
        for f in &mut frames {
            let c = idx_of(f, "IndexC").unwrap_or(0) as usize;
            if let Some(name) = names.get(c) {
                f.insert("Channel".into(), json!(name));
            }
        }
    }
    metadata["frames"] = Value::Array(frames.into_iter().map(Value::Object).collect());
}

impl LargeImage {
    /// The crop `[left, right) x [top, bottom)` of a frame, clamped to the image.
    pub fn region(&self, frame: usize, left: u32, top: u32, right: u32, bottom: u32) -> Option<Array2> {
        let plane = self.planes.get(frame)?;
        let (r, b) = (right.min(self.width) as usize, bottom.min(self.height) as usize);
        let (l, t) = ((left as usize).min(r), (top as usize).min(b));
        let s = ndarray::s![t..b, l..r];
        Some(match plane {
            Array2::U8(a) => Array2::U8(a.slice(s).to_owned()),
            Array2::U16(a) => Array2::U16(a.slice(s).to_owned()),
            Array2::F32(a) => Array2::F32(a.slice(s).to_owned()),
        })
    }
}

/// Nearest-neighbour resize to `(h, w)` (the mock's stand-in for large_image's resampling).
pub(crate) fn resize(a: &Array2, h: usize, w: usize) -> Array2 {
    fn pick<T: Copy>(a: &ndarray::Array2<T>, h: usize, w: usize) -> ndarray::Array2<T> {
        let (ah, aw) = a.dim();
        ndarray::Array2::from_shape_fn((h, w), |(y, x)| {
            a[[(y * ah / h.max(1)).min(ah - 1), (x * aw / w.max(1)).min(aw - 1)]]
        })
    }
    match a {
        Array2::U8(x) => Array2::U8(pick(x, h, w)),
        Array2::U16(x) => Array2::U16(pick(x, h, w)),
        Array2::F32(x) => Array2::F32(pick(x, h, w)),
    }
}

/// large_image's PIL path to 8 bits: uint16 `floor(v/256)`; float scaled by the next
/// `2^k - 1` above its maximum when that exceeds 1, then `* 255`.
pub(crate) fn to_u8(a: &Array2) -> ndarray::Array2<u8> {
    match a {
        Array2::U8(x) => x.clone(),
        Array2::U16(x) => x.mapv(|v| (v / 256) as u8),
        Array2::F32(x) => {
            let max = x.iter().copied().fold(f32::MIN, f32::max);
            let scale = if max > 1.0 { (2f32.powf((max + 1.0).log2().ceil())) - 1.0 } else { 1.0 };
            x.mapv(|v| ((v / scale) * 255.0).clamp(0.0, 255.0) as u8)
        }
    }
}

/// An uncompressed single-strip little-endian 8-bit MINISBLACK TIFF, laid out as large_image's
/// (9 tags, the IFD at offset 8, pixels after it: 122 + W*H bytes).
pub(crate) fn write_tiff8(a: &ndarray::Array2<u8>) -> Vec<u8> {
    let (h, w) = a.dim();
    let data_offset = 8 + 2 + 9 * 12 + 4;
    let mut out = Vec::with_capacity(data_offset + h * w);
    out.extend_from_slice(b"II*\0");
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&9u16.to_le_bytes());
    let mut entry = |tag: u16, kind: u16, value: u32| {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        if kind == 3 {
            out.extend_from_slice(&(value as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&value.to_le_bytes());
        }
    };
    let (w32, h32) = (w as u32, h as u32);
    entry(256, 4, w32); // ImageWidth
    entry(257, 4, h32); // ImageLength
    entry(258, 3, 8); // BitsPerSample
    entry(259, 3, 1); // Compression: none
    entry(262, 3, 1); // Photometric: MINISBLACK
    entry(273, 4, data_offset as u32); // StripOffsets
    entry(277, 3, 1); // SamplesPerPixel
    entry(278, 4, h32); // RowsPerStrip
    entry(279, 4, (w * h) as u32); // StripByteCounts
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend(a.iter().copied());
    out
}
