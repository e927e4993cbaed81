//! Decoding a TIFF into pages of samples, as tifffile reads them: every layout the `tiff` crate
//! decodes (strips or tiles; samples interleaved or in separate planes; one or many pages;
//! 8/16/32/64-bit integers, float16/32/64, 1-bit) or a clear error naming what is not supported.
//!
//! Sizes come from the file's header, so each page's size is checked against
//! [`crate::limits::MAX_IMAGE_SAMPLES`] (all pages together) before its buffer is allocated, and
//! the page count against [`crate::limits::MAX_TIFF_PAGES`].

use std::io::{Read, Seek};

use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::{PhotometricInterpretation, PlanarConfiguration, Tag};
use tiff::{ColorType, TiffError};

use super::ImageErrorKind;
use crate::limits;

/// One decoded page: `samples` values per pixel, interleaved (`[H, W, S]`) or in separate
/// planes (`[S, H, W]`, TIFF PlanarConfiguration 2).
pub(crate) struct Page {
    pub height: usize,
    pub width: usize,
    pub samples: usize,
    pub planar: bool,
    pub data: DecodingResult,
}

impl Page {
    pub(crate) fn len(&self) -> usize {
        match &self.data {
            DecodingResult::U8(v) => v.len(),
            DecodingResult::U16(v) => v.len(),
            DecodingResult::U32(v) => v.len(),
            DecodingResult::U64(v) => v.len(),
            DecodingResult::I8(v) => v.len(),
            DecodingResult::I16(v) => v.len(),
            DecodingResult::I32(v) => v.len(),
            DecodingResult::I64(v) => v.len(),
            DecodingResult::F16(v) => v.len(),
            DecodingResult::F32(v) => v.len(),
            DecodingResult::F64(v) => v.len(),
        }
    }
}

fn tiff_error(e: TiffError) -> ImageErrorKind {
    match e {
        TiffError::LimitsExceeded => ImageErrorKind::TooLarge(format!(
            "a tag or a compressed strip exceeds the reader's limits ({} MiB per tag value, {} MiB per strip)",
            IFD_VALUE_LIMIT >> 20,
            INTERMEDIATE_LIMIT >> 20
        )),
        e => ImageErrorKind::Tiff(e.to_string()),
    }
}

/// Largest tag value read (strip offset tables, descriptions): 64 MiB.
const IFD_VALUE_LIMIT: usize = 64 << 20;
/// Largest compressed strip or tile held at once: 1 GiB.
const INTERMEDIATE_LIMIT: usize = 1 << 30;

/// Decodes every page of a TIFF (pages of the first page's size become channels).
pub(crate) fn read_pages<R: Read + Seek>(reader: R) -> Result<Vec<Page>, ImageErrorKind> {
    let mut limits = Limits::default();
    // the image-size limit is ours (checked below with the file's numbers); the crate's own is
    // set just above it so a page within ours is always decoded whole, every plane included
    limits.decoding_buffer_size = (limits::MAX_IMAGE_SAMPLES as usize).saturating_mul(8);
    limits.ifd_value_size = IFD_VALUE_LIMIT;
    limits.intermediate_buffer_size = INTERMEDIATE_LIMIT;
    let mut dec = Decoder::new(reader).map_err(tiff_error)?.with_limits(limits);
    let description = dec.get_tag_ascii_string(Tag::ImageDescription).ok();
    let mut pages: Vec<Page> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let (w, h) = dec.dimensions().map_err(tiff_error)?;
        if let Some(first) = pages.first() {
            if (first.width, first.height) != (w as usize, h as usize) {
                return Err(ImageErrorKind::PageSizeMismatch(first.width as u32, first.height as u32, w, h));
            }
        } else if let Some(d) = &description {
            super::axes::check(d, (h as usize, w as usize)).map_err(ImageErrorKind::Stack)?;
        }
        if w == 0 || h == 0 {
            return Err(ImageErrorKind::Tiff(format!("page {} is {w}x{h} pixels (empty)", pages.len())));
        }
        let color = dec.colortype().map_err(tiff_error)?;
        let samples = color_samples(color);
        total = total.saturating_add(u64::from(w) * u64::from(h) * samples as u64);
        limits::image_samples(u64::from(h), u64::from(w), total / (u64::from(w) * u64::from(h)))
            .map_err(ImageErrorKind::TooLarge)?;
        let planar = samples > 1
            && dec.find_tag_unsigned::<u16>(Tag::PlanarConfiguration).map_err(tiff_error)?
                == Some(PlanarConfiguration::Planar as u16);
        let bits = color.bit_depth();
        let white_is_zero =
            dec.find_tag_unsigned::<u16>(Tag::PhotometricInterpretation).map_err(tiff_error)?
                == Some(PhotometricInterpretation::WhiteIsZero as u16);
        let tiled_planes = planar && dec.get_chunk_type() == ChunkType::Tile;
        let (h, w) = (h as usize, w as usize);
        let page = match bits {
            8 | 16 | 32 | 64 if tiled_planes => read_tiled_planes(&mut dec, h, w, samples)?,
            8 | 16 | 32 | 64 => read_page(&mut dec, h, w, samples, planar)?,
            1 if samples == 1 => read_page(&mut dec, h, w, 1, false)?,
            _ => {
                return Err(ImageErrorKind::Tiff(format!(
                    "{bits}-bit samples ({samples} per pixel) are not supported; save it with 8, 16 or 32 bits per sample"
                )))
            }
        };
        let page = if white_is_zero { stored_values(page)? } else { page };
        let page = if bits == 1 { unpack_bits(page)? } else { page };
        pages.push(page);
        if !dec.more_images() {
            break;
        }
        if pages.len() >= limits::MAX_TIFF_PAGES {
            return Err(ImageErrorKind::TooLarge(format!(
                "it has more than {} pages; the limit is {} pages (read as channels of one image)",
                limits::MAX_TIFF_PAGES,
                limits::MAX_TIFF_PAGES
            )));
        }
        dec.next_image().map_err(tiff_error)?;
    }
    Ok(pages)
}

/// Samples per pixel of each colour type (tifffile returns them all, alpha and extra samples
/// included; a palette image is its indices).
fn color_samples(c: ColorType) -> usize {
    match c {
        ColorType::Gray(_) | ColorType::Palette(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) | ColorType::YCbCr(_) | ColorType::Lab(_) => 3,
        ColorType::RGBA(_) | ColorType::CMYK(_) => 4,
        ColorType::CMYKA(_) => 5,
        ColorType::Multiband { num_samples, .. } => num_samples as usize,
        // `ColorType` is non-exhaustive; a future kind is read as what its samples say
        _ => 1,
    }
}

fn read_page<R: Read + Seek>(
    dec: &mut Decoder<R>,
    height: usize,
    width: usize,
    samples: usize,
    planar: bool,
) -> Result<Page, ImageErrorKind> {
    let mut data = DecodingResult::U8(Vec::new());
    let layout = dec.read_image_to_buffer(&mut data).map_err(tiff_error)?;
    let page = Page { height, width, samples, planar, data };
    // a planar file whose planes did not all fit would come back with its first plane only
    if page_bytes(&page) < layout.complete_len {
        return Err(ImageErrorKind::TooLarge(format!(
            "its {samples} sample planes of {width}x{height} pixels did not fit the reader's buffer"
        )));
    }
    Ok(page)
}

fn page_bytes(p: &Page) -> usize {
    p.len() * sample_size(&p.data)
}

fn sample_size(d: &DecodingResult) -> usize {
    match d {
        DecodingResult::U8(_) | DecodingResult::I8(_) => 1,
        DecodingResult::U16(_) | DecodingResult::I16(_) | DecodingResult::F16(_) => 2,
        DecodingResult::U32(_) | DecodingResult::I32(_) | DecodingResult::F32(_) => 4,
        DecodingResult::U64(_) | DecodingResult::I64(_) | DecodingResult::F64(_) => 8,
    }
}

/// `n` zero samples of the same type as `like`.
fn zeros_like(like: &DecodingResult, n: usize) -> DecodingResult {
    match like {
        DecodingResult::U8(_) => DecodingResult::U8(vec![0; n]),
        DecodingResult::U16(_) => DecodingResult::U16(vec![0; n]),
        DecodingResult::U32(_) => DecodingResult::U32(vec![0; n]),
        DecodingResult::U64(_) => DecodingResult::U64(vec![0; n]),
        DecodingResult::I8(_) => DecodingResult::I8(vec![0; n]),
        DecodingResult::I16(_) => DecodingResult::I16(vec![0; n]),
        DecodingResult::I32(_) => DecodingResult::I32(vec![0; n]),
        DecodingResult::I64(_) => DecodingResult::I64(vec![0; n]),
        DecodingResult::F16(_) => DecodingResult::F16(vec![half::f16::ZERO; n]),
        DecodingResult::F32(_) => DecodingResult::F32(vec![0.0; n]),
        DecodingResult::F64(_) => DecodingResult::F64(vec![0.0; n]),
    }
}

/// A tiled page with separate planes, tile by tile. Why: the `tiff` crate's whole-image read
/// asserts on this layout (0.11.3 takes a tile's bottom padding from its index counted across
/// planes, so tiles of the later planes come back a different size than it allocated for).
/// Read alone, each tile is decoded at the size the crate reports for it and cropped here.
fn read_tiled_planes<R: Read + Seek>(
    dec: &mut Decoder<R>,
    height: usize,
    width: usize,
    samples: usize,
) -> Result<Page, ImageErrorKind> {
    let bad = |m: String| ImageErrorKind::Tiff(m);
    let tw = dec.get_tag_u32(Tag::TileWidth).map_err(tiff_error)? as usize;
    let th = dec.get_tag_u32(Tag::TileLength).map_err(tiff_error)? as usize;
    if tw == 0 || th == 0 {
        return Err(bad(format!("tiles of {tw}x{th} pixels")));
    }
    let (across, per_plane) = (width.div_ceil(tw), width.div_ceil(tw) * height.div_ceil(th));
    let count = dec.tile_count().map_err(tiff_error)? as usize;
    if count < per_plane * samples {
        return Err(bad(format!("{count} tiles for {samples} planes of {per_plane} tiles")));
    }
    let plane = height * width;
    let mut data: Option<DecodingResult> = None;
    for s in 0..samples {
        for t in 0..per_plane {
            let index = u32::try_from(s * per_plane + t).map_err(|_| bad("too many tiles".into()))?;
            let (cw, ch) = dec.chunk_data_dimensions(index);
            let (cw, ch) = (cw as usize, ch as usize);
            let mut chunk = dec.read_chunk(index).map_err(tiff_error)?;
            let out = data.get_or_insert_with(|| zeros_like(&chunk, plane * samples));
            let size = sample_size(out);
            if sample_size(&chunk) != size {
                return Err(bad(format!("tile {index} decodes to another sample type than the first")));
            }
            let (x0, y0) = ((t % across) * tw, (t / across) * th);
            let (rows, cols) = (ch.min(height - y0), cw.min(width - x0));
            let src = chunk.as_buffer(0);
            let src = src.as_bytes();
            let mut dst = out.as_buffer(0);
            let dst = dst.as_bytes_mut();
            for r in 0..rows {
                let from = r * cw * size;
                let to = (s * plane + (y0 + r) * width + x0) * size;
                let (Some(from), Some(to)) =
                    (src.get(from..from + cols * size), dst.get_mut(to..to + cols * size))
                else {
                    return Err(bad(format!(
                        "tile {index} decoded to {} bytes, fewer than its {cw}x{ch} pixels",
                        src.len()
                    )));
                };
                to.copy_from_slice(from);
            }
        }
    }
    let data = data.ok_or_else(|| bad("no tiles".into()))?;
    Ok(Page { height, width, samples, planar: true, data })
}

/// The values stored in a min-is-white page, as tifffile returns them: the `tiff` crate inverts
/// them while decoding (`max - v` for unsigned integers, which is undone exactly here; `1 - v`
/// for floats, which cannot be undone exactly, so such a file is refused).
fn stored_values(mut p: Page) -> Result<Page, ImageErrorKind> {
    match &mut p.data {
        DecodingResult::U8(v) => v.iter_mut().for_each(|x| *x = !*x),
        DecodingResult::U16(v) => v.iter_mut().for_each(|x| *x = !*x),
        DecodingResult::U32(v) => v.iter_mut().for_each(|x| *x = !*x),
        DecodingResult::U64(v) => v.iter_mut().for_each(|x| *x = !*x),
        _ => return Err(ImageErrorKind::Tiff(
            "a min-is-white (PhotometricInterpretation 0) image of signed or floating-point samples is not \
                 supported; save it min-is-black"
                .into(),
        )),
    }
    Ok(p)
}

/// A 1-bit page (rows padded to whole bytes, first pixel in the high bit) as one byte per pixel,
/// 0 or 1, as tifffile returns a bilevel image.
fn unpack_bits(p: Page) -> Result<Page, ImageErrorKind> {
    let DecodingResult::U8(packed) = &p.data else {
        return Err(ImageErrorKind::Tiff("a 1-bit page did not decode to bytes".into()));
    };
    let row = p.width.div_ceil(8);
    if packed.len() < row * p.height {
        return Err(ImageErrorKind::Tiff(format!(
            "a 1-bit page of {}x{} pixels decoded to {} bytes, {} expected",
            p.width,
            p.height,
            packed.len(),
            row * p.height
        )));
    }
    let mut out = Vec::with_capacity(p.width * p.height);
    for y in 0..p.height {
        let r = &packed[y * row..(y + 1) * row];
        out.extend((0..p.width).map(|x| (r[x / 8] >> (7 - x % 8)) & 1));
    }
    Ok(Page { data: DecodingResult::U8(out), ..p })
}
