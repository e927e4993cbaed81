//! Image and label files: TIFF (8/16/32-bit integer, float32/64, multi-page = channels, multi-sample)
//! and PNG, read into `[C, H, W]` float32 images or `[H, W]` label images; TIFF writing for flows and
//! masks. Errors always name the file.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView2, Axis};
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::encoder::{colortype, TiffEncoder};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ImageError {
    pub path: PathBuf,
    pub kind: ImageErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageErrorKind {
    #[error("cannot open: {0}")]
    Io(#[from] std::io::Error),
    #[error("unreadable TIFF: {0}")]
    Tiff(String),
    #[error("unreadable image: {0}")]
    Image(String),
    #[error("unsupported file type `{0}` (use .tif/.tiff or .png)")]
    UnsupportedType(String),
    #[error("pages have different sizes ({0}x{1} then {2}x{3}); a multi-page TIFF is read as channels of one image")]
    PageSizeMismatch(u32, u32, u32, u32),
    #[error(
        "not a label image: {0}. A mask must be one channel of non-negative integer labels (0 = background)"
    )]
    NotLabels(String),
}

fn err(path: &Path, kind: ImageErrorKind) -> ImageError {
    ImageError { path: path.to_path_buf(), kind }
}

/// One decoded page/sample plane set, kept in its stored type until converted.
struct Plane {
    height: usize,
    width: usize,
    samples: usize,
    data: PlaneData,
}

enum PlaneData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

impl Plane {
    fn is_float(&self) -> bool {
        matches!(self.data, PlaneData::Float(_))
    }
    fn value(&self, i: usize) -> f64 {
        match &self.data {
            PlaneData::Int(v) => v[i] as f64,
            PlaneData::Float(v) => v[i],
        }
    }
}

fn decoding_to_plane(res: DecodingResult, height: usize, width: usize, samples: usize) -> Plane {
    let data = match res {
        DecodingResult::U8(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::U16(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::U32(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::U64(v) => {
            PlaneData::Int(v.into_iter().map(|x| x.min(i64::MAX as u64) as i64).collect())
        }
        DecodingResult::I8(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::I16(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::I32(v) => PlaneData::Int(v.into_iter().map(i64::from).collect()),
        DecodingResult::I64(v) => PlaneData::Int(v),
        DecodingResult::F32(v) => PlaneData::Float(v.into_iter().map(f64::from).collect()),
        DecodingResult::F64(v) => PlaneData::Float(v),
    };
    Plane { height, width, samples, data }
}

fn read_tiff_planes(path: &Path) -> Result<Vec<Plane>, ImageError> {
    let file = File::open(path).map_err(|e| err(path, e.into()))?;
    let tiff_err = |e: tiff::TiffError| err(path, ImageErrorKind::Tiff(e.to_string()));
    let mut limits = Limits::default();
    limits.decoding_buffer_size = 4 << 30;
    limits.ifd_value_size = 64 << 20;
    limits.intermediate_buffer_size = 1 << 30;
    let mut dec = Decoder::new(BufReader::new(file)).map_err(tiff_err)?.with_limits(limits);
    let mut planes = Vec::new();
    loop {
        let (w, h) = dec.dimensions().map_err(tiff_err)?;
        let samples = match dec.colortype().map_err(tiff_err)? {
            tiff::ColorType::Gray(_) | tiff::ColorType::Palette(_) => 1,
            tiff::ColorType::GrayA(_) => 2,
            tiff::ColorType::RGB(_) | tiff::ColorType::YCbCr(_) => 3,
            tiff::ColorType::RGBA(_) | tiff::ColorType::CMYK(_) => 4,
        };
        let res = dec.read_image().map_err(tiff_err)?;
        if let Some(first) = planes.first() {
            let first: &Plane = first;
            if first.height != h as usize || first.width != w as usize {
                return Err(err(
                    path,
                    ImageErrorKind::PageSizeMismatch(first.width as u32, first.height as u32, w, h),
                ));
            }
        }
        planes.push(decoding_to_plane(res, h as usize, w as usize, samples));
        if !dec.more_images() {
            break;
        }
        dec.next_image().map_err(tiff_err)?;
    }
    Ok(planes)
}

/// PNG (and other formats the `image` crate knows) the way cellpose's `io.imread` reads them with
/// OpenCV: grey stays one channel, colour becomes RGB and alpha is dropped.
fn read_png_planes(path: &Path) -> Result<Vec<Plane>, ImageError> {
    let img = image::open(path).map_err(|e| err(path, ImageErrorKind::Image(e.to_string())))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = match img {
        image::DynamicImage::ImageLuma8(b) => Plane {
            height: h,
            width: w,
            samples: 1,
            data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
        },
        image::DynamicImage::ImageLuma16(b) => Plane {
            height: h,
            width: w,
            samples: 1,
            data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
        },
        image::DynamicImage::ImageLumaA8(_) => {
            let b = img.to_luma8();
            Plane {
                height: h,
                width: w,
                samples: 1,
                data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
            }
        }
        image::DynamicImage::ImageLumaA16(_) => {
            let b = img.to_luma16();
            Plane {
                height: h,
                width: w,
                samples: 1,
                data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
            }
        }
        image::DynamicImage::ImageRgb16(_) | image::DynamicImage::ImageRgba16(_) => {
            let b = img.to_rgb16();
            Plane {
                height: h,
                width: w,
                samples: 3,
                data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
            }
        }
        image::DynamicImage::ImageRgb32F(_) | image::DynamicImage::ImageRgba32F(_) => {
            let b = img.to_rgb32f();
            Plane {
                height: h,
                width: w,
                samples: 3,
                data: PlaneData::Float(b.into_raw().into_iter().map(f64::from).collect()),
            }
        }
        _ => {
            let b = img.to_rgb8();
            Plane {
                height: h,
                width: w,
                samples: 3,
                data: PlaneData::Int(b.into_raw().into_iter().map(i64::from).collect()),
            }
        }
    };
    Ok(vec![plane])
}

fn read_planes(path: &Path) -> Result<Vec<Plane>, ImageError> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "tif" | "tiff" => read_tiff_planes(path),
        "png" => read_png_planes(path),
        other => Err(err(path, ImageErrorKind::UnsupportedType(other.to_string()))),
    }
}

/// Reads an image as `[C, H, W]` float32. Pages of a multi-page TIFF and samples of a colour
/// image become channels.
pub fn read_image(path: &Path) -> Result<Array3<f32>, ImageError> {
    let planes = read_planes(path)?;
    let (h, w) = (planes[0].height, planes[0].width);
    let nchan: usize = planes.iter().map(|p| p.samples).sum();
    let mut out = Array3::<f32>::zeros((nchan, h, w));
    let mut c0 = 0;
    for p in &planes {
        for s in 0..p.samples {
            let mut ch = out.index_axis_mut(Axis(0), c0 + s);
            for (i, v) in ch.iter_mut().enumerate() {
                *v = p.value(i * p.samples + s) as f32;
            }
        }
        c0 += p.samples;
    }
    Ok(out)
}

/// Reads a label image: one channel of non-negative integers (floats are accepted when every value
/// is a whole number, as cellpose's GUI sometimes saves them).
pub fn read_labels(path: &Path) -> Result<Array2<u32>, ImageError> {
    let planes = read_planes(path)?;
    let p = &planes[0];
    if planes.len() > 1 || p.samples > 1 {
        let n = planes.len().max(p.samples);
        return Err(err(path, ImageErrorKind::NotLabels(format!("it has {n} channels/pages"))));
    }
    let mut out = Array2::<u32>::zeros((p.height, p.width));
    for (i, v) in out.iter_mut().enumerate() {
        let x = p.value(i);
        if x < 0.0 || x.fract() != 0.0 || !x.is_finite() || x > u32::MAX as f64 {
            let kind = if p.is_float() { "a non-integer value" } else { "a negative value" };
            let (r, c) = (i / p.width, i % p.width);
            return Err(err(path, ImageErrorKind::NotLabels(format!("{kind} {x} at row {r}, column {c}"))));
        }
        *v = x as u32;
    }
    Ok(out)
}

/// Writes `[C, H, W]` float32 as a multi-page TIFF (one page per channel), which tifffile reads as
/// an array of shape (C, H, W).
pub fn write_tiff_f32(path: &Path, data: &Array3<f32>) -> Result<(), ImageError> {
    let file = File::create(path).map_err(|e| err(path, e.into()))?;
    let tiff_err = |e: tiff::TiffError| err(path, ImageErrorKind::Tiff(e.to_string()));
    let mut enc = TiffEncoder::new(BufWriter::new(file)).map_err(tiff_err)?;
    let (_, h, w) = data.dim();
    for ch in data.axis_iter(Axis(0)) {
        let page: Vec<f32> = ch.iter().copied().collect();
        enc.write_image::<colortype::Gray32Float>(w as u32, h as u32, &page).map_err(tiff_err)?;
    }
    Ok(())
}

/// Writes a label image as 16-bit TIFF (32-bit when a label exceeds 65535), as cellpose saves masks.
pub fn write_labels_tiff(path: &Path, labels: ArrayView2<u32>) -> Result<(), ImageError> {
    write_labels_tiff_described(path, labels, None)
}

/// The ImageDescription of masks written by `segment`: how a later run tells its own output
/// (safe to replace) from a ground-truth mask of the same name (never replaced unasked).
pub const SEGMENT_MASKS_DESCRIPTION: &str = "cellpose-train-worker segment masks";

/// [`write_labels_tiff`] with an ImageDescription tag.
pub fn write_labels_tiff_described(
    path: &Path,
    labels: ArrayView2<u32>,
    description: Option<&str>,
) -> Result<(), ImageError> {
    let file = File::create(path).map_err(|e| err(path, e.into()))?;
    let tiff_err = |e: tiff::TiffError| err(path, ImageErrorKind::Tiff(e.to_string()));
    let mut enc = TiffEncoder::new(BufWriter::new(file)).map_err(tiff_err)?;
    let (h, w) = (labels.dim().0 as u32, labels.dim().1 as u32);
    if labels.iter().all(|&v| v <= u16::MAX as u32) {
        let page: Vec<u16> = labels.iter().map(|&v| v as u16).collect();
        write_page::<_, colortype::Gray16>(&mut enc, w, h, &page, description).map_err(tiff_err)
    } else {
        let page: Vec<u32> = labels.iter().copied().collect();
        write_page::<_, colortype::Gray32>(&mut enc, w, h, &page, description).map_err(tiff_err)
    }
}

/// One TIFF page, with an ImageDescription when given.
fn write_page<W: std::io::Write + std::io::Seek, C: colortype::ColorType>(
    enc: &mut TiffEncoder<W>,
    w: u32,
    h: u32,
    data: &[C::Inner],
    description: Option<&str>,
) -> Result<(), tiff::TiffError>
where
    [C::Inner]: tiff::encoder::TiffValue,
{
    let mut image = enc.new_image::<C>(w, h)?;
    if let Some(d) = description {
        image.encoder().write_tag(tiff::tags::Tag::ImageDescription, d)?;
    }
    image.write_data(data)
}

/// The first page's ImageDescription, if the file is a readable TIFF that has one.
pub fn tiff_description(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut dec = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).ok()?;
    dec.get_tag_ascii_string(tiff::tags::Tag::ImageDescription).ok()
}

/// Writes a `[C, H, W]` image as TIFF in 16-bit (values are rounded and clamped), for synthetic data.
pub fn write_image_u16(path: &Path, data: &Array3<f32>) -> Result<(), ImageError> {
    let file = File::create(path).map_err(|e| err(path, e.into()))?;
    let tiff_err = |e: tiff::TiffError| err(path, ImageErrorKind::Tiff(e.to_string()));
    let mut enc = TiffEncoder::new(BufWriter::new(file)).map_err(tiff_err)?;
    let (_, h, w) = data.dim();
    for ch in data.axis_iter(Axis(0)) {
        let page: Vec<u16> = ch.iter().map(|&v| v.round().clamp(0.0, 65535.0) as u16).collect();
        enc.write_image::<colortype::Gray16>(w as u32, h as u32, &page).map_err(tiff_err)?;
    }
    Ok(())
}

/// Encodes `[C, H, W]` uint16 planes as an OME-TIFF (one page per channel, OME-XML with
/// `DimensionOrder="XYCZT"` in the first page's ImageDescription), the layout NimbusImage
/// datasets are uploaded in and large_image's `ometiff` source reads as channels.
pub fn ome_tiff_bytes(planes: &Array3<u16>, channel_names: &[&str]) -> Result<Vec<u8>, tiff::TiffError> {
    let (c, h, w) = planes.dim();
    let mut channels = String::new();
    for i in 0..c {
        let name = channel_names.get(i).copied().unwrap_or("channel");
        channels.push_str(&format!(
            r#"<Channel ID="Channel:0:{i}" SamplesPerPixel="1" Name="{name}"><LightPath/></Channel>"#
        ));
    }
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0" Name="Image0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="{w}" SizeY="{h}" SizeC="{c}" SizeZ="1" SizeT="1">{channels}<TiffData IFD="0" PlaneCount="{c}"/></Pixels></Image></OME>"#
    );
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut enc = TiffEncoder::new(&mut out)?;
        for (i, plane) in planes.axis_iter(Axis(0)).enumerate() {
            let data: Vec<u16> = plane.iter().copied().collect();
            let mut img = enc.new_image::<colortype::Gray16>(w as u32, h as u32)?;
            if i == 0 {
                img.encoder().write_tag(tiff::tags::Tag::ImageDescription, xml.as_str())?;
            }
            img.write_data(&data)?;
        }
    }
    Ok(out.into_inner())
}
