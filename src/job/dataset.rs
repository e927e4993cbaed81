//! Fetch and rasterize: the dataset's annotations become training (and validation) examples.
//!
//! As NimbusImage's reference worker: all polygons and rectangles of the dataset; training
//! annotations are those with any Training Tag, regions those with any Training Region tag;
//! per location (Time, Z, XY) the frame of each chosen channel is read (one crop channel per
//! slot), each training annotation becomes a label (later ones overwrite earlier ones), and each
//! region's bounding box is a sample.
//! Unlike the reference, only each region's box is fetched (losslessly, numpy pickle) and
//! rasterized, so cost follows the regions and polygons, not the frames.

use std::collections::BTreeMap;

use ndarray::{s, Array3};
use serde_json::Value;

use super::error::JobError;
use super::events::Events;
use super::validate::JobParams;
use crate::annotations::{self, Annotation, Location};
use crate::control::Control;
use crate::girder::{AnnotationQuery, FrameMap, GirderClient, Window};
use crate::rasterize::{self, Region};
use crate::train::RawExample;

/// The dataset's image: its large-image item, frame map and frame size.
pub struct DatasetImage {
    pub item_id: String,
    pub frames: FrameMap,
    /// (height, width) of a frame.
    pub frame_shape: (usize, usize),
}

/// Finds the dataset's large image and reads its frame list.
pub async fn open_dataset(client: &GirderClient, dataset_id: &str) -> Result<DatasetImage, JobError> {
    let item = client.tiles().dataset_image(dataset_id).await.map_err(|e| match e {
        crate::girder::GirderError::NoLargeImage { .. } => JobError::Dataset {
            dataset: dataset_id.into(),
            detail:
                "the dataset folder has no large image (no item with `largeImage`); upload the image first"
                    .into(),
        },
        other => other.into(),
    })?;
    let meta = client.tiles().metadata(&item.id).await?;
    Ok(DatasetImage {
        item_id: item.id,
        frames: meta.frame_map(),
        frame_shape: (meta.size_y as usize, meta.size_x as usize),
    })
}

/// Checks the chosen channels exist in the dataset (each slot's field is named in the message).
pub(crate) fn check_channels(img: &DatasetImage, params: &JobParams) -> Result<(), JobError> {
    let channels = img.frames.channels();
    let list = || channels.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    for slot in &params.slots {
        if let Some(c) = slot.channel.filter(|c| !channels.contains(c)) {
            return Err(JobError::Channel(format!(
                "{} {c} is not in the dataset (its channels are {}).",
                slot.field,
                list()
            )));
        }
    }
    Ok(())
}

/// The trainable annotations of a dataset (polygons and rectangles, cursor-paged) that carry any
/// of `tags` (the training, region and validation tags), how many documents were listed, and the
/// distinct tags those carry (sorted; for the message when no annotation has a training tag).
/// Documents without such a tag are not parsed: a malformed annotation the job does not use must
/// not fail it (the reference worker never looks at them either).
pub async fn load_annotations(
    client: &GirderClient,
    dataset_id: &str,
    tags: &[String],
) -> Result<(Vec<Annotation>, usize, Vec<String>), JobError> {
    let mut docs = Vec::new();
    for shape in ["polygon", "rectangle"] {
        let q = AnnotationQuery { shape: Some(shape.into()), ..Default::default() };
        docs.extend(client.annotations().list(dataset_id, &q).await?);
    }
    let wanted = |doc: &&Value| {
        doc.get("tags")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().filter_map(Value::as_str).any(|t| tags.iter().any(|w| w == t)))
    };
    let parsed = annotations::parse_trainable(docs.iter().filter(wanted))?;
    let mut seen: Vec<String> = docs
        .iter()
        .filter_map(|d| d.get("tags").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    seen.sort();
    seen.dedup();
    Ok((parsed.annotations, docs.len(), seen))
}

/// Training and validation crops from the annotations, before preparation.
pub struct RawSamples {
    pub train: Vec<RawExample>,
    pub validation: Vec<RawExample>,
}

fn by_location<'a>(v: &[&'a Annotation]) -> BTreeMap<Location, Vec<&'a Annotation>> {
    let mut m: BTreeMap<Location, Vec<&'a Annotation>> = BTreeMap::new();
    for a in v {
        m.entry(a.location).or_default().push(*a);
    }
    m
}

/// A region to cut out of a frame, with where it came from.
struct Cut {
    region: Region,
    name: String,
    validation: bool,
}

/// The cuts of one location and the frames they are read from (see [`frames_at`]).
struct Planned {
    loc: Location,
    frames: Vec<(usize, u32)>,
    /// Channels of each crop ([`JobParams::slots`]).
    n_slots: usize,
    cuts: Vec<Cut>,
}

fn describe(l: &Location) -> String {
    format!("Time {}, Z {}, XY {}", l.time, l.z, l.xy)
}

/// Builds the examples: per location, each region (or the whole frame) becomes one sample.
pub async fn collect_samples(
    client: &GirderClient,
    img: &DatasetImage,
    params: &JobParams,
    all: &[Annotation],
    max_region_pixels: u64,
    events: &Events,
    control: &Control,
) -> Result<RawSamples, JobError> {
    let training = annotations::with_any_tag(all, &params.training_tags);
    if training.is_empty() {
        return Err(JobError::NoTrainingAnnotations {
            tags: params.training_tags.clone(),
            total: all.len(),
            seen: Vec::new(),
        });
    }
    let regions = annotations::with_any_tag(all, &params.region_tags);
    if params.region_tags.is_empty() {
        events.warning(
            "No training regions selected.",
            "Training will be performed on entire image that the annotations are in.",
        );
    } else if regions.is_empty() {
        events.warning(
            "No region annotations found.",
            "No annotations with the training region tag were found; training on entire images.",
        );
    }
    let validation = annotations::with_any_tag(all, &params.validation_tags);
    if !params.validation_tags.is_empty() && validation.is_empty() {
        events.warning(
            "No validation region annotations found.",
            "The model is trained but not scored on held-out regions.",
        );
    }
    let (train_at, region_at, val_at) =
        (by_location(&training), by_location(&regions), by_location(&validation));
    let use_regions = !regions.is_empty();
    let mut locations: Vec<Location> = train_at.keys().copied().collect();
    locations.extend(val_at.keys().copied());
    locations.sort();
    locations.dedup();

    // plan every cut (regions, pixel budget, frames) before fetching anything, so that a bad
    // region or a missing frame fails the job before any download
    let mut plan: Vec<Planned> = Vec::new();
    for loc in locations {
        let mut cuts = Vec::new();
        if train_at.contains_key(&loc) {
            if use_regions {
                for r in region_at.get(&loc).map(Vec::as_slice).unwrap_or_default() {
                    let region = Region::from_annotation(r, img.frame_shape)?;
                    region.check_budget(&r.id, max_region_pixels)?;
                    cuts.push(Cut {
                        region,
                        name: format!("{}, region {}", describe(&loc), r.id),
                        validation: false,
                    });
                }
            } else {
                let region = Region::full(img.frame_shape);
                region.check_budget(&format!("(whole frame at {})", describe(&loc)), max_region_pixels)?;
                cuts.push(Cut {
                    region,
                    name: format!("{}, whole frame", describe(&loc)),
                    validation: false,
                });
                if val_at.contains_key(&loc) {
                    events.warning(
                        format!(
                            "Validation regions at {} lie inside a whole-frame training image.",
                            describe(&loc)
                        ),
                        "Use Training Region tags so that training and validation areas are separate.",
                    );
                }
            }
        }
        let training_regions: Vec<(&str, Region)> = if use_regions && train_at.contains_key(&loc) {
            let rs = region_at.get(&loc).map(Vec::as_slice).unwrap_or_default();
            rs.iter().zip(&cuts).map(|(r, c)| (r.id.as_str(), c.region)).collect()
        } else {
            Vec::new()
        };
        for r in val_at.get(&loc).map(Vec::as_slice).unwrap_or_default() {
            let region = Region::from_annotation(r, img.frame_shape)?;
            if let Some((id, _)) = training_regions.iter().find(|(_, t)| t.overlaps(&region)) {
                return Err(JobError::RegionOverlap { validation: r.id.clone(), training: id.to_string() });
            }
            region.check_budget(&r.id, max_region_pixels)?;
            cuts.push(Cut {
                region,
                name: format!("{}, validation region {}", describe(&loc), r.id),
                validation: true,
            });
        }
        if !cuts.is_empty() {
            plan.push(Planned {
                loc,
                frames: frames_at(img, params, &loc)?,
                n_slots: params.slots.len(),
                cuts,
            });
        }
    }

    let mut out = RawSamples { train: Vec::new(), validation: Vec::new() };
    let (mut dropped, mut dropped_val) = (0usize, 0usize);
    for Planned { loc, frames, n_slots, cuts } in plan {
        let labels_from: Vec<&Annotation> = train_at.get(&loc).cloned().unwrap_or_default();
        for cut in cuts {
            // a stop ends the job within one region request
            let image = control.race(fetch_region(client, img, &frames, n_slots, &cut.region)).await??;
            check_finite(&image, &cut.name)?;
            let labels = rasterize::rasterize_region(&cut.region, &labels_from)?;
            if labels.iter().all(|&l| l == 0) {
                if cut.validation {
                    dropped_val += 1
                } else {
                    dropped += 1
                }
                continue;
            }
            let ex = RawExample { name: cut.name, image, labels };
            if cut.validation {
                out.validation.push(ex)
            } else {
                out.train.push(ex)
            }
        }
    }
    if dropped > 0 {
        events.warning(
            format!("{dropped} training sample(s) had no training annotation and were dropped."),
            "Regions without annotated cells teach nothing; draw regions around annotated cells.",
        );
    }
    if dropped_val > 0 {
        events.warning(
            format!("{dropped_val} validation region(s) contain no annotated cell and are not scored."),
            "Annotate the cells inside validation regions with the training tag.",
        );
    }
    if out.train.is_empty() {
        return Err(JobError::NoSamples { dropped });
    }
    Ok(out)
}

/// The frames to read at `loc` as `(slot, frame)`, for the slots that have a channel (the
/// others stay zeros: CPnet's slot 1 without a secondary channel).
fn frames_at(img: &DatasetImage, params: &JobParams, loc: &Location) -> Result<Vec<(usize, u32)>, JobError> {
    params
        .slots
        .iter()
        .enumerate()
        .filter_map(|(slot, s)| s.channel.map(|c| (slot, c)))
        .map(|(slot, channel)| {
            let frame = img.frames.frame(channel, loc.time, loc.z, loc.xy).ok_or_else(|| JobError::Dataset {
                dataset: img.item_id.clone(),
                detail: format!(
                    "no frame for channel {channel} at {}; annotations refer to a frame the image does not have (move or delete them)",
                    describe(loc)
                ),
            })?;
            Ok((slot, frame))
        })
        .collect()
}

/// A NaN or infinite pixel would poison normalisation and every gradient after it: refuse the
/// crop by name instead (a float image with holes, a broken tile source).
fn check_finite(image: &Array3<f32>, name: &str) -> Result<(), JobError> {
    match image.iter().filter(|v| !v.is_finite()).count() {
        0 => Ok(()),
        n => Err(JobError::Dataset {
            dataset: name.to_string(),
            detail: format!(
                "{n} pixel(s) of this crop are NaN or infinite; fix the image (or move the region off those pixels)"
            ),
        }),
    }
}

/// Reads the planned frames of one region as `[n_slots, h, w]` (a slot without a frame stays
/// zeros).
async fn fetch_region(
    client: &GirderClient,
    img: &DatasetImage,
    frames: &[(usize, u32)],
    n_slots: usize,
    region: &Region,
) -> Result<Array3<f32>, JobError> {
    let window = Window {
        left: region.x0 as u32,
        top: region.y0 as u32,
        right: region.x1 as u32,
        bottom: region.y1 as u32,
    };
    let whole = *region == Region::full(img.frame_shape);
    let (h, w) = region.shape();
    let mut out = Array3::<f32>::zeros((n_slots, h, w));
    for &(slot, frame) in frames {
        let arr = client.tiles().region(&img.item_id, frame, (!whole).then_some(window)).await?.to_f32();
        if arr.dim() != (h, w) {
            return Err(JobError::Dataset {
                dataset: img.item_id.clone(),
                detail: format!(
                    "the server returned a {:?} region for a {h}x{w} request (frame {frame})",
                    arr.dim()
                ),
            });
        }
        out.slice_mut(s![slot, .., ..]).assign(&arr);
    }
    Ok(out)
}
