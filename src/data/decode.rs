//! Decoding and resizing every image once, in parallel, into one uint8 NCHW buffer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use rayon::prelude::*;

use super::Skipped;
use crate::config::{DataConfig, ImageSize, Intensity, Interpolation};

/// How a file becomes the model's input: its size, the resampling and the levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    /// The size every image is resized to.
    pub size: ImageSize,
    /// The resampling filter.
    pub interpolation: Interpolation,
    /// How values become 8-bit levels.
    pub intensity: Intensity,
}

impl Decoding {
    /// As an experiment's `data:` says.
    pub fn of(data: &DataConfig) -> Decoding {
        Decoding {
            size: data.image_size,
            interpolation: data.interpolation,
            intensity: data.intensity,
        }
    }
}

/// Images whose header claims more pixels than this per side are refused (decompression bombs).
pub const MAX_SIDE: u32 = 16_384;
/// The most memory a single decode may allocate.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Decoded images: `pixels` holds `count` images of 3 x height x width bytes, in order.
pub struct Decoded {
    pub pixels: Vec<u8>,
    /// For each input file, its image index in `pixels`, or None when it was skipped.
    pub index: Vec<Option<usize>>,
    pub skipped: Vec<Skipped>,
    /// (width, height) of the originals, with how many had that size.
    pub sizes_seen: Vec<((u32, u32), usize)>,
}

fn filter(i: Interpolation) -> FilterType {
    match i {
        Interpolation::Nearest => FilterType::Nearest,
        Interpolation::Bilinear => FilterType::Triangle,
        Interpolation::Bicubic => FilterType::CatmullRom,
    }
}

/// Why one image file cannot be used. The messages are the words shown to people
/// (beside the file's path, which the caller adds); an inner error that is part of the
/// message is not also its `source`, so that a chain (`{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file cannot be opened or read.
    #[error("unreadable: {0}")]
    Unreadable(std::io::Error),
    /// The file is larger than [`MAX_DECODE_BYTES`].
    #[error("file is {len} bytes; the limit is {MAX_DECODE_BYTES}")]
    FileTooBig { len: u64 },
    /// The file has no bytes.
    #[error("empty file (0 bytes)")]
    Empty,
    /// The content is no image format the decoder knows.
    #[error("not an image (unrecognised content)")]
    NotAnImage,
    /// The image is larger than [`MAX_SIDE`] per side, or would allocate more than
    /// [`MAX_DECODE_BYTES`].
    #[error("too large to decode safely: {0}")]
    TooLargeToDecode(image::error::LimitError),
    /// A format or feature of it the decoder does not support.
    #[error("unsupported format: {0}")]
    Unsupported(image::error::UnsupportedError),
    /// Decoding failed.
    #[error("corrupt or truncated: {0}")]
    Corrupt(image::ImageError),
    /// A DICOM file that cannot be decoded (an unsupported transfer syntax, missing or
    /// broken pixel data), in the DICOM library's words.
    #[error("DICOM: {0}")]
    Dicom(String),
    /// After resizing, the image is smaller than the centre crop.
    #[error("image too small to crop {crop}x{crop}")]
    TooSmallToCrop { crop: u32 },
}

/// Opens and decodes one image file with size and allocation limits; the error says
/// why in words (empty, not an image, corrupt, too large).
pub fn open_image(path: &Path) -> Result<DynamicImage, DecodeError> {
    let mut file = std::fs::File::open(path).map_err(DecodeError::Unreadable)?;
    let len = file.metadata().map_err(DecodeError::Unreadable)?.len();
    if len > MAX_DECODE_BYTES {
        return Err(DecodeError::FileTooBig { len });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(DecodeError::Unreadable)?;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    // DICOM Part 10: a 128-byte preamble, then "DICM".
    if bytes.get(128..132) == Some(b"DICM") {
        return decode_dicom(&bytes);
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DecodeError::Unreadable)?;
    if reader.format().is_none() {
        return Err(DecodeError::NotAnImage);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let why = |e| match e {
        image::ImageError::Limits(l) => DecodeError::TooLargeToDecode(l),
        image::ImageError::Unsupported(u) => DecodeError::Unsupported(u),
        other => DecodeError::Corrupt(other),
    };
    // A camera's JPEG (or a TIFF) says in its EXIF how it was held: the image is
    // turned upright, as a photo viewer shows it. A missing or unreadable tag leaves
    // it as stored.
    let mut decoder = reader.into_decoder().map_err(why)?;
    // `ImageReader::decode` checks the decoded size against the allocation limit;
    // going through the decoder (for its orientation), the check is made here.
    if decoder.total_bytes() > MAX_DECODE_BYTES {
        return Err(DecodeError::TooLargeToDecode(
            image::error::LimitError::from_kind(image::error::LimitErrorKind::InsufficientMemory),
        ));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(why)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Decodes a DICOM file's first frame with `dicom-pixeldata`: the modality rescale
/// and the file's own VOI window (or VOI LUT) applied when it has one, else min-max
/// normalised, as 8-bit grayscale (MONOCHROME1 inverted) or RGB. The declared size is
/// checked against [`MAX_SIDE`] before any pixel is decoded.
fn decode_dicom(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    use dicom_dictionary_std::tags;
    use dicom_object::file::ReadPreamble;
    use dicom_pixeldata::{BitDepthOption, ConvertOptions, PixelDecoder};
    let dicom = |e: &dyn std::fmt::Display| DecodeError::Dicom(e.to_string());
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| dicom(&e))?;
    let side = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let (rows, columns) = (side(tags::ROWS), side(tags::COLUMNS));
    if rows == 0 || columns == 0 {
        return Err(DecodeError::Dicom("no Rows/Columns: not an image".into()));
    }
    if rows > MAX_SIDE || columns > MAX_SIDE {
        return Err(DecodeError::Dicom(format!(
            "declares {columns}x{rows} pixels; the limit is {MAX_SIDE} a side"
        )));
    }
    let pixels = obj.decode_pixel_data_frame(0).map_err(|e| dicom(&e))?;
    let options = ConvertOptions::new().with_bit_depth(BitDepthOption::Force8Bit);
    pixels
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| dicom(&e))
}

/// Resizes `img` to `size` and writes it into `out` (3 x h x w bytes, channel-major).
/// Grayscale (8 or 16 bits, as X-rays come) becomes three equal channels; 16-bit
/// values are scaled over their whole range (v / 257, rounded), not cut to a byte;
/// alpha is dropped.
fn write_chw(img: DynamicImage, size: ImageSize, interp: Interpolation, out: &mut [u8]) {
    let original = (img.width(), img.height());
    let (w, h) = (size.width, size.height);
    let plane = (w * h) as usize;
    let f = filter(interp);
    let img = match img {
        gray @ (DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_)) => {
            DynamicImage::ImageLuma8(gray.to_luma8())
        }
        DynamicImage::ImageLumaA8(gray) => {
            DynamicImage::ImageLuma8(DynamicImage::ImageLumaA8(gray).to_luma8())
        }
        other => other,
    };
    match img {
        DynamicImage::ImageLuma8(gray) => {
            let gray = if original == (w, h) {
                gray
            } else {
                image::imageops::resize(&gray, w, h, f)
            };
            for c in 0..3 {
                out[c * plane..(c + 1) * plane].copy_from_slice(gray.as_raw());
            }
        }
        other => {
            let rgb = other.to_rgb8();
            let rgb = if original == (w, h) {
                rgb
            } else {
                image::imageops::resize(&rgb, w, h, f)
            };
            for (i, px) in rgb.pixels().enumerate() {
                out[i] = px[0];
                out[plane + i] = px[1];
                out[2 * plane + i] = px[2];
            }
        }
    }
}

/// Decodes one file into `out` (3 x h x w bytes, channel-major), resized to `size`;
/// returns the original size.
pub fn decode_into(
    path: &Path,
    decoding: &Decoding,
    out: &mut [u8],
) -> Result<(u32, u32), DecodeError> {
    let img = open_image(path)?;
    let original = (img.width(), img.height());
    let img = match decoding.intensity {
        Intensity::Full => img,
        Intensity::Stretch => stretch(img),
    };
    write_chw(img, decoding.size, decoding.interpolation, out);
    Ok(original)
}

/// Each image's own lowest..highest value (over its colour channels, alpha left out)
/// to 0..255, computed at the file's own depth; a flat image keeps its levels.
pub fn stretch(img: DynamicImage) -> DynamicImage {
    let gray = img.color().channel_count() <= 2;
    let (w, h) = (img.width(), img.height());
    let raw: Vec<u16> = if gray {
        img.to_luma16().into_raw()
    } else {
        img.to_rgb16().into_raw()
    };
    let (lo, hi) = raw
        .iter()
        .fold((u16::MAX, 0u16), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if hi <= lo {
        return img;
    }
    let range = (hi - lo) as u32;
    let levels: Vec<u8> = raw
        .iter()
        .map(|&v| (((v - lo) as u32 * 255 + range / 2) / range) as u8)
        .collect();
    if gray {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, levels).expect("w x h values"))
    } else {
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, levels).expect("3 x w x h values"))
    }
}

/// ImageNet evaluation preprocessing (torchvision `Resize(shorter)` then
/// `CenterCrop(crop)`): scales the shorter side to `shorter` pixels, crops the centre
/// `crop` x `crop`, and returns 3 x crop x crop bytes, channel-major.
pub fn decode_center_crop(
    path: &Path,
    shorter: u32,
    crop: u32,
    interp: Interpolation,
) -> Result<Vec<u8>, DecodeError> {
    let img = open_image(path)?;
    let (w, h) = (img.width(), img.height());
    // torchvision: the long side is int(long * shorter / short).
    let (rw, rh) = if w <= h {
        (shorter, (h as u64 * shorter as u64 / w as u64) as u32)
    } else {
        ((w as u64 * shorter as u64 / h as u64) as u32, shorter)
    };
    if rw < crop || rh < crop {
        return Err(DecodeError::TooSmallToCrop { crop });
    }
    let resized = DynamicImage::ImageRgb8(image::imageops::resize(
        &img.to_rgb8(),
        rw,
        rh,
        filter(interp),
    ));
    let left = ((rw - crop) as f64 / 2.0).round() as u32;
    let top = ((rh - crop) as f64 / 2.0).round() as u32;
    let cropped = resized.crop_imm(left, top, crop, crop);
    let mut out = vec![0u8; 3 * (crop * crop) as usize];
    let size = ImageSize {
        width: crop,
        height: crop,
    };
    write_chw(cropped, size, interp, &mut out);
    Ok(out)
}

/// Decodes all files on all cores. `progress(done, total)` is called as files finish.
/// Broken files are skipped with their reason, never fatal.
pub fn decode_all(
    files: &[PathBuf],
    decoding: &Decoding,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Decoded {
    let size = decoding.size;
    let per_image = 3 * (size.height * size.width) as usize;
    let mut pixels = vec![0u8; per_image * files.len()];
    let done = AtomicUsize::new(0);
    let total = files.len();
    let results: Vec<Result<(u32, u32), DecodeError>> = pixels
        .par_chunks_mut(per_image.max(1))
        .zip(files.par_iter())
        .map(|(out, path)| {
            let r = decode_into(path, decoding, out);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n == total || n.is_multiple_of(64) {
                progress(n, total);
            }
            r
        })
        .collect();
    // Compact: move every good image down over the skipped ones.
    let mut index = Vec::with_capacity(total);
    let mut skipped = Vec::new();
    let mut sizes: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    let mut next = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(orig) => {
                if next != i {
                    pixels.copy_within(i * per_image..(i + 1) * per_image, next * per_image);
                }
                *sizes.entry(orig).or_default() += 1;
                index.push(Some(next));
                next += 1;
            }
            Err(reason) => {
                skipped.push(Skipped {
                    path: files[i].clone(),
                    reason: reason.to_string(),
                });
                index.push(None);
            }
        }
    }
    pixels.truncate(next * per_image);
    pixels.shrink_to_fit();
    Decoded {
        pixels,
        index,
        skipped,
        sizes_seen: sizes.into_iter().collect(),
    }
}
