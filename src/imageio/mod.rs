//! Image and label files: TIFF (every layout the `tiff` crate decodes: strips or tiles, samples
//! interleaved or in planes, multi-page; 8/16/32/64-bit integers, float16/32/64, 1-bit) and PNG,
//! read into `[C, H, W]` float32 images or `[H, W]` label images the way tifffile reads them
//! (pages and samples become channels); TIFF writing for flows and masks. Errors always name
//! the file; sizes from a file's header are checked against [`crate::limits`] before anything
//! is allocated, and a Z-stack or time series is refused rather than read as channels.

mod axes;
mod tiff_read;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView2, Axis};
use tiff::decoder::DecodingResult;
use tiff::encoder::{colortype, TiffEncoder};

use tiff_read::Page;

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
    #[error("too large to read: {0}")]
    TooLarge(String),
    #[error(
        "{0}: only 2-D images (with channels) are read, and its planes would all become channels; \
         save one z-slice / time point per file (Fiji: Image > Duplicate..., or tifffile: imwrite(path, stack[t, z]))"
    )]
    Stack(String),
}

fn err(path: &Path, kind: ImageErrorKind) -> ImageError {
    ImageError { path: path.to_path_buf(), kind }
}

fn read_tiff_pages(path: &Path) -> Result<Vec<Page>, ImageError> {
    let file = File::open(path).map_err(|e| err(path, e.into()))?;
    tiff_read::read_pages(BufReader::new(file)).map_err(|k| err(path, k))
}

/// Decodes TIFF bytes (a file's contents) as [`read_image`] does; `name` is used in errors.
/// The fuzz target of the TIFF reader calls this.
pub fn decode_tiff_image(bytes: &[u8], name: &str) -> Result<Array3<f32>, ImageError> {
    let pages = tiff_read::read_pages(std::io::Cursor::new(bytes)).map_err(|k| err(Path::new(name), k))?;
    pages_to_image(&pages).map_err(|k| err(Path::new(name), k))
}

/// PNG (and other formats the `image` crate knows) the way cellpose's `io.imread` reads them with
/// OpenCV: grey stays one channel, colour becomes RGB and alpha is dropped.
fn read_png_pages(path: &Path) -> Result<Vec<Page>, ImageError> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| err(path, e.into()))?;
    let (w, h) = reader.into_dimensions().map_err(|e| err(path, ImageErrorKind::Image(e.to_string())))?;
    crate::limits::image_samples(u64::from(h), u64::from(w), 3)
        .map_err(|m| err(path, ImageErrorKind::TooLarge(m)))?;
    let img = image::open(path).map_err(|e| err(path, ImageErrorKind::Image(e.to_string())))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let page =
        |samples: usize, data: DecodingResult| Page { height: h, width: w, samples, planar: false, data };
    Ok(vec![match img {
        image::DynamicImage::ImageLuma8(b) => page(1, DecodingResult::U8(b.into_raw())),
        image::DynamicImage::ImageLuma16(b) => page(1, DecodingResult::U16(b.into_raw())),
        image::DynamicImage::ImageLumaA8(_) => page(1, DecodingResult::U8(img.to_luma8().into_raw())),
        image::DynamicImage::ImageLumaA16(_) => page(1, DecodingResult::U16(img.to_luma16().into_raw())),
        image::DynamicImage::ImageRgb16(_) | image::DynamicImage::ImageRgba16(_) => {
            page(3, DecodingResult::U16(img.to_rgb16().into_raw()))
        }
        image::DynamicImage::ImageRgb32F(_) | image::DynamicImage::ImageRgba32F(_) => {
            page(3, DecodingResult::F32(img.to_rgb32f().into_raw()))
        }
        _ => page(3, DecodingResult::U8(img.to_rgb8().into_raw())),
    }])
}

fn read_pages(path: &Path) -> Result<Vec<Page>, ImageError> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "tif" | "tiff" => read_tiff_pages(path),
        "png" => read_png_pages(path),
        other => Err(err(path, ImageErrorKind::UnsupportedType(other.to_string()))),
    }
}

/// Copies sample `s` of every pixel of `page` into `dst` (one channel, row-major), converted by
/// `conv`; `None` when the page holds fewer values than its size says.
fn copy_sample<T: Copy>(
    v: &[T],
    page: &Page,
    s: usize,
    dst: &mut [f32],
    conv: impl Fn(T) -> f32,
) -> Option<()> {
    let n = page.height * page.width;
    if page.planar {
        let plane = v.get(s * n..(s + 1) * n)?;
        dst.iter_mut().zip(plane).for_each(|(d, &x)| *d = conv(x));
    } else {
        if v.len() < n * page.samples {
            return None;
        }
        dst.iter_mut().enumerate().for_each(|(i, d)| *d = conv(v[i * page.samples + s]));
    }
    Some(())
}

fn fill_channel(page: &Page, s: usize, dst: &mut [f32]) -> Option<()> {
    match &page.data {
        DecodingResult::U8(v) => copy_sample(v, page, s, dst, f32::from),
        DecodingResult::U16(v) => copy_sample(v, page, s, dst, f32::from),
        DecodingResult::U32(v) => copy_sample(v, page, s, dst, |x| x as f32),
        DecodingResult::U64(v) => copy_sample(v, page, s, dst, |x| x as f32),
        DecodingResult::I8(v) => copy_sample(v, page, s, dst, f32::from),
        DecodingResult::I16(v) => copy_sample(v, page, s, dst, f32::from),
        DecodingResult::I32(v) => copy_sample(v, page, s, dst, |x| x as f32),
        DecodingResult::I64(v) => copy_sample(v, page, s, dst, |x| x as f32),
        DecodingResult::F16(v) => copy_sample(v, page, s, dst, |x| x.to_f32()),
        DecodingResult::F32(v) => copy_sample(v, page, s, dst, |x| x),
        DecodingResult::F64(v) => copy_sample(v, page, s, dst, |x| x as f32),
    }
}

fn pages_to_image(pages: &[Page]) -> Result<Array3<f32>, ImageErrorKind> {
    let Some(first) = pages.first() else { return Err(ImageErrorKind::Tiff("no page".into())) };
    let (h, w) = (first.height, first.width);
    let nchan: usize = pages.iter().map(|p| p.samples).sum();
    let mut out = Array3::<f32>::zeros((nchan, h, w));
    let mut c0 = 0;
    for (i, p) in pages.iter().enumerate() {
        for s in 0..p.samples {
            let mut ch = out.index_axis_mut(Axis(0), c0 + s);
            let dst =
                ch.as_slice_mut().ok_or_else(|| ImageErrorKind::Tiff("channel not contiguous".into()))?;
            fill_channel(p, s, dst).ok_or_else(|| {
                ImageErrorKind::Tiff(format!(
                    "page {i} decoded to {} values, fewer than its {w}x{h} pixels x {} sample(s)",
                    p.len(),
                    p.samples
                ))
            })?;
        }
        c0 += p.samples;
    }
    Ok(out)
}

/// Reads an image as `[C, H, W]` float32. Pages of a multi-page TIFF and samples of a colour
/// image become channels (tifffile's order: page by page, each page's samples in turn).
pub fn read_image(path: &Path) -> Result<Array3<f32>, ImageError> {
    let pages = read_pages(path)?;
    pages_to_image(&pages).map_err(|k| err(path, k))
}

/// One label value as stored: a whole number in 0..=u32::MAX, else why not.
fn label_of(x: f64, is_float: bool) -> Result<u32, String> {
    if x < 0.0 || x.fract() != 0.0 || !x.is_finite() || x > u32::MAX as f64 {
        let kind = if is_float {
            "a non-integer value"
        } else if x < 0.0 {
            "a negative value"
        } else {
            "a value"
        };
        return Err(format!("{kind} {x}"));
    }
    Ok(x as u32)
}

fn labels_from<T: Copy>(
    v: &[T],
    out: &mut [u32],
    is_float: bool,
    conv: impl Fn(T) -> f64,
) -> Result<(), (usize, String)> {
    for (i, (o, &x)) in out.iter_mut().zip(v).enumerate() {
        *o = label_of(conv(x), is_float).map_err(|m| (i, m))?;
    }
    Ok(())
}

/// Reads a label image: one channel of non-negative integers (floats are accepted when every value
/// is a whole number, as cellpose's GUI sometimes saves them).
pub fn read_labels(path: &Path) -> Result<Array2<u32>, ImageError> {
    let pages = read_pages(path)?;
    let p = &pages[0];
    if pages.len() > 1 || p.samples > 1 {
        let n = pages.len().max(p.samples);
        return Err(err(path, ImageErrorKind::NotLabels(format!("it has {n} channels/pages"))));
    }
    let n = p.height * p.width;
    if p.len() < n {
        return Err(err(path, ImageErrorKind::Tiff(format!("decoded {} values for {n} pixels", p.len()))));
    }
    let mut out = Array2::<u32>::zeros((p.height, p.width));
    let dst =
        out.as_slice_mut().ok_or_else(|| err(path, ImageErrorKind::Tiff("labels not contiguous".into())))?;
    let r = match &p.data {
        DecodingResult::U8(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::U16(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::U32(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::U64(v) => labels_from(v, dst, false, |x| x as f64),
        DecodingResult::I8(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::I16(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::I32(v) => labels_from(v, dst, false, f64::from),
        DecodingResult::I64(v) => labels_from(v, dst, false, |x| x as f64),
        DecodingResult::F16(v) => labels_from(v, dst, true, |x| f64::from(x.to_f32())),
        DecodingResult::F32(v) => labels_from(v, dst, true, f64::from),
        DecodingResult::F64(v) => labels_from(v, dst, true, |x| x),
    };
    r.map_err(|(i, what)| {
        let (row, col) = (i / p.width, i % p.width);
        err(path, ImageErrorKind::NotLabels(format!("{what} at row {row}, column {col}")))
    })?;
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
