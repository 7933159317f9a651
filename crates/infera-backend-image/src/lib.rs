//! Image preprocessing as a model (`backend: "image_preprocess"`), so it runs natively inside
//! the server and composes with other models, instead of in a Python step.
//!
//! Input `IMAGE` (BYTES, one encoded PNG/JPEG/BMP/GIF/WebP per row), output `PIXELS`
//! ([N, C, H, W] or [N, H, W, C], FP32 or UINT8). Configured by config.pbtxt `parameters`:
//! `width`, `height` (required), `color` (gray | rgb), `resize` (stretch | fit | fill | pad |
//! crop | shorter: `crop` center-crops without scaling, `shorter` scales the shorter side to
//! `shorter_side` then center-crops, like torchvision's Resize + CenterCrop),
//! `filter` (nearest | triangle | catmullrom | gaussian | lanczos3), `scale`, `mean`, `std`
//! (comma-separated per channel), `layout` (NCHW | NHWC), `output_type` (FP32 | UINT8),
//! `max_pixels` (decoded size limit, against decompression bombs), `input_name`, `output_name`.
//!
//! Memory is bounded whatever the image claims: the decoded image may hold at most
//! `max_pixels` pixels of 4 bytes, and every resize step is planned before it runs, so an
//! image whose aspect ratio would make a scaling buffer larger than that is refused (400).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use infera_core::backend::{
    Backend, BackendError, InlineRuns, IoSpec, LoadOptions, Session, Signature,
};
use infera_core::{DataType, Tensor, TensorData};

pub struct ImageBackend;

/// A request of encoded images runs on the caller's thread (see [`Session::fits_inline`]) up
/// to this many pixels in all (128×128) and this many bytes per image.
const INLINE_MAX_PIXELS: u64 = 128 * 128;
const INLINE_MAX_BYTES: usize = 64 * 1024;

/// Default `max_pixels`: a 40-megapixel photo.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// The largest `max_pixels` a config may set (a decoded image then takes up to 512 MiB).
pub const MAX_MAX_PIXELS: u64 = 1 << 27;
/// The largest output image (`width` × `height`).
pub const MAX_OUTPUT_PIXELS: u64 = 1 << 24;
/// `max_pixels` of the shipped `fashion_preprocess` model (and of [`Pipeline::raw_pixels`]).
pub const SHIPPED_MAX_PIXELS: u64 = 1 << 24;
/// The largest image file read from disk (a 40-megapixel photo is ~15 MB as JPEG).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// The largest output of one batch (`max_batch_size` × channels × height × width values).
pub const MAX_BATCH_OUTPUT_VALUES: u64 = 1 << 28;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    Stretch,
    Fit,
    Fill,
    Pad,
    Crop,
    /// Shorter side to this many pixels (aspect kept), then center-crop.
    Shorter(u32),
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    gray: bool,
    width: u32,
    height: u32,
    resize: Resize,
    filter: FilterType,
    scale: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
    nchw: bool,
    dtype: DataType,
    max_pixels: u64,
}

fn param<T: std::str::FromStr>(
    p: &BTreeMap<String, String>,
    key: &str,
    default: Option<T>,
) -> Result<T, String> {
    match p.get(key).map(|v| v.trim()) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("parameter '{key}': cannot read '{v}'")),
        None => default.ok_or_else(|| format!("parameter '{key}' is required")),
    }
}

fn floats(
    p: &BTreeMap<String, String>,
    key: &str,
    channels: usize,
    default: f32,
) -> Result<Vec<f32>, String> {
    let Some(v) = p.get(key) else {
        return Ok(vec![default; channels]);
    };
    let vals: Vec<f32> = v
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!("parameter '{key}': '{v}' is not a comma-separated list of numbers")
        })?;
    match vals.len() {
        1 => Ok(vec![vals[0]; channels]),
        n if n == channels => Ok(vals),
        n => Err(format!(
            "parameter '{key}' has {n} values for {channels} channels"
        )),
    }
}

impl Pipeline {
    pub fn from_parameters(p: &BTreeMap<String, String>) -> Result<Pipeline, String> {
        let gray = match param(p, "color", Some("rgb".to_string()))?
            .to_ascii_lowercase()
            .as_str()
        {
            "gray" | "grey" | "grayscale" | "l" => true,
            "rgb" => false,
            other => return Err(format!("parameter 'color': '{other}' is not gray or rgb")),
        };
        let channels = if gray { 1 } else { 3 };
        let resize = match param(p, "resize", Some("stretch".to_string()))?.as_str() {
            "stretch" => Resize::Stretch,
            "fit" => Resize::Fit,
            "fill" => Resize::Fill,
            "pad" => Resize::Pad,
            "crop" | "center_crop" => Resize::Crop,
            "shorter" => {
                let s: u32 = param(p, "shorter_side", None)?;
                if s == 0 || s > 1 << 14 {
                    return Err(format!("parameter 'shorter_side': {s} is out of range"));
                }
                Resize::Shorter(s)
            }
            other => {
                return Err(format!(
                    "parameter 'resize': '{other}' is not stretch, fit, fill, pad, crop or shorter"
                ));
            }
        };
        let filter = match param(p, "filter", Some("triangle".to_string()))?.as_str() {
            "nearest" => FilterType::Nearest,
            "triangle" | "bilinear" => FilterType::Triangle,
            "catmullrom" | "bicubic" => FilterType::CatmullRom,
            "gaussian" => FilterType::Gaussian,
            "lanczos3" => FilterType::Lanczos3,
            other => return Err(format!("parameter 'filter': unknown filter '{other}'")),
        };
        let std = floats(p, "std", channels, 1.0)?;
        if std.contains(&0.0) {
            return Err("parameter 'std' must not contain 0".into());
        }
        let width: u32 = param(p, "width", None)?;
        let height: u32 = param(p, "height", None)?;
        if width == 0 || height == 0 || u64::from(width) * u64::from(height) > MAX_OUTPUT_PIXELS {
            return Err(format!(
                "output size {width}x{height} is out of range (1 to {MAX_OUTPUT_PIXELS} pixels)"
            ));
        }
        let max_pixels: u64 = param(p, "max_pixels", Some(DEFAULT_MAX_PIXELS))?;
        if max_pixels == 0 || max_pixels > MAX_MAX_PIXELS {
            return Err(format!(
                "parameter 'max_pixels': {max_pixels} is out of range (1 to {MAX_MAX_PIXELS})"
            ));
        }
        Ok(Pipeline {
            gray,
            width,
            height,
            resize,
            filter,
            scale: param(p, "scale", Some(1.0))?,
            mean: floats(p, "mean", channels, 0.0)?,
            std,
            nchw: match param(p, "layout", Some("NCHW".to_string()))?
                .to_ascii_uppercase()
                .as_str()
            {
                "NCHW" => true,
                "NHWC" => false,
                other => return Err(format!("parameter 'layout': '{other}' is not NCHW or NHWC")),
            },
            dtype: match param(p, "output_type", Some("FP32".to_string()))?
                .to_ascii_uppercase()
                .as_str()
            {
                "FP32" | "TYPE_FP32" => DataType::F32,
                "UINT8" | "TYPE_UINT8" => DataType::U8,
                other => {
                    return Err(format!(
                        "parameter 'output_type': '{other}' is not FP32 or UINT8"
                    ));
                }
            },
            max_pixels,
        })
    }

    /// Raw pixels 0..255 of a `channels`-channel (1: gray, 3: RGB) `width`×`height` model
    /// input, NCHW FP32, the image fitted inside (aspect kept, black borders) with a triangle
    /// filter: the settings of the shipped `fashion_preprocess` model, which programs use
    /// when no served preprocessing model is named, so they see what the server feeds.
    pub fn raw_pixels(width: u32, height: u32, channels: usize) -> Result<Pipeline, String> {
        let color = match channels {
            1 => "gray",
            3 => "rgb",
            c => {
                return Err(format!(
                    "the model takes {c} channels per image; images give 1 (gray) or 3 (RGB)"
                ));
            }
        };
        let p: BTreeMap<String, String> = [
            ("width", width.to_string()),
            ("height", height.to_string()),
            ("color", color.to_string()),
            ("resize", "fit".to_string()),
            ("filter", "triangle".to_string()),
            ("max_pixels", SHIPPED_MAX_PIXELS.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Pipeline::from_parameters(&p)
    }

    /// The pipeline of a served `image_preprocess` model: its folder or its config.pbtxt.
    pub fn from_model_config(path: &Path) -> Result<Pipeline, String> {
        let file = if path.is_dir() {
            path.join("config.pbtxt")
        } else {
            path.to_path_buf()
        };
        let text = infera_core::repository::files::read_bounded(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("{}: the config is not UTF-8 text", file.display()))?;
        let cfg = infera_core::config::parse_pbtxt(&text)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if cfg.backend != "image_preprocess" {
            return Err(format!(
                "{} is not an image_preprocess model (its backend is '{}')",
                file.display(),
                cfg.backend
            ));
        }
        let p = cfg
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.string_value.clone()))
            .collect();
        Pipeline::from_parameters(&p).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// [`Pipeline::process`] on a file, read only up to [`MAX_IMAGE_FILE_BYTES`].
    pub fn process_file(&self, path: &Path, out: &mut Vec<f32>) -> Result<(), String> {
        let bytes = infera_core::repository::files::read_limited(path, MAX_IMAGE_FILE_BYTES)?;
        self.process(&bytes, out)
    }

    /// 1 (gray) or 3 (RGB).
    pub fn channels(&self) -> usize {
        if self.gray { 1 } else { 3 }
    }

    /// Whether the output is raw pixels 0..255 (no scale, mean or std applied).
    pub fn is_raw(&self) -> bool {
        self.scale == 1.0
            && self.mean.iter().all(|&m| m == 0.0)
            && self.std.iter().all(|&s| s == 1.0)
    }

    pub fn output_shape(&self) -> Vec<usize> {
        let (c, h, w) = (self.channels(), self.height as usize, self.width as usize);
        if self.nchw {
            vec![c, h, w]
        } else {
            vec![h, w, c]
        }
    }

    /// The pixel count an encoded image's header announces (no decoding); `None` when the
    /// header cannot be read.
    pub fn header_pixels(bytes: &[u8]) -> Option<u64> {
        let (w, h) = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()?;
        Some(u64::from(w) * u64::from(h))
    }

    /// Decodes one encoded image and turns it into the output layout (row-major values).
    pub fn process(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        if bytes.is_empty() {
            return Err("empty image".into());
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read the image: {e}"))?;
        use image::ImageFormat as F;
        match reader.format() {
            None => {
                return Err(
                    "not an image in a supported format (PNG, JPEG, BMP, GIF, WebP)".into(),
                );
            }
            Some(F::Png | F::Jpeg | F::Bmp | F::Gif | F::WebP) => {}
            Some(other) => {
                return Err(format!(
                    "{other:?} images are not a supported format: send PNG, JPEG, BMP, GIF or WebP"
                ));
            }
        }
        // A decoded pixel takes up to 4 bytes here (16-bit images count double).
        let mut limits = Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(4));
        limits.max_image_width = Some(u32::try_from(self.max_pixels).unwrap_or(u32::MAX));
        limits.max_image_height = limits.max_image_width;
        reader.limits(limits);
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| format!("cannot decode the image: {e}"))?;
        let (w, h) = decoder.dimensions();
        if u64::from(w) * u64::from(h) > self.max_pixels {
            return Err(format!(
                "image is {w}x{h} = {} pixels, over the limit of {} (max_pixels)",
                u64::from(w) * u64::from(h),
                self.max_pixels
            ));
        }
        if w == 0 || h == 0 {
            return Err(format!("image is {w}x{h}: it has no pixels"));
        }
        let orientation = decoder.orientation().ok();
        let (ow, oh) = match orientation {
            Some(o) if turns(o) => (h, w),
            _ => (w, h),
        };
        // Plan the resize before decoding, so an impossible one costs nothing.
        let plan = self.plan(ow, oh)?;
        let img = DynamicImage::from_decoder(decoder)
            .map_err(|e| format!("cannot decode the image: {e}"))?;
        let mut img = if self.gray {
            DynamicImage::ImageLuma8(img.into_luma8())
        } else {
            DynamicImage::ImageRgb8(img.into_rgb8())
        };
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        let img = self.resize(img, plan);
        let raw = img.as_bytes();
        let (c, hw) = (self.channels(), (self.width * self.height) as usize);
        if raw.len() != c * hw {
            return Err("the resized image has an unexpected size".into());
        }
        let value = |px: usize, ch: usize| {
            (f32::from(raw[px * c + ch]) * self.scale - self.mean[ch]) / self.std[ch]
        };
        out.reserve(c * hw);
        if self.nchw {
            for ch in 0..c {
                out.extend((0..hw).map(|px| value(px, ch)));
            }
        } else {
            for px in 0..hw {
                out.extend((0..c).map(|ch| value(px, ch)));
            }
        }
        Ok(())
    }

    /// The size the image is scaled to (before centering / cropping to the output), checked
    /// against `max_pixels`: the scaler's scratch holds source width × scaled height pixels
    /// of 16 bytes, the scaled image scaled width × height.
    fn plan(&self, w: u32, h: u32) -> Result<Option<(u32, u32)>, String> {
        let (tw, th) = (self.width, self.height);
        // image's resize_dimensions: keep the aspect, fit inside (or, filling, cover) the target.
        let fit = |fill: bool| {
            let wratio = f64::from(tw) / f64::from(w);
            let hratio = f64::from(th) / f64::from(h);
            let ratio = if fill {
                wratio.max(hratio)
            } else {
                wratio.min(hratio)
            };
            let nw = ((f64::from(w) * ratio).round() as u64).max(1);
            let nh = ((f64::from(h) * ratio).round() as u64).max(1);
            (nw, nh)
        };
        let scaled: Option<(u64, u64)> = if (w, h) == (tw, th) {
            None
        } else {
            match self.resize {
                Resize::Stretch => Some((u64::from(tw), u64::from(th))),
                Resize::Fit => Some(fit(false)),
                Resize::Fill => Some(fit(true)),
                Resize::Pad | Resize::Crop => None,
                Resize::Shorter(side) => {
                    let (w, h) = (u64::from(w), u64::from(h));
                    let short = w.min(h).max(1);
                    Some((
                        (w * u64::from(side)).div_ceil(short).max(1),
                        (h * u64::from(side)).div_ceil(short).max(1),
                    ))
                }
            }
        };
        let Some((nw, nh)) = scaled else {
            return Ok(None);
        };
        let budget = self.max_pixels;
        let scratch = u64::from(w).saturating_mul(nh).saturating_mul(4);
        if nw.saturating_mul(nh) > budget || scratch > budget {
            return Err(format!(
                "a {w}x{h} image would be scaled to {nw}x{nh} for a {tw}x{th} output; its aspect ratio is too extreme for the limit of {budget} pixels (max_pixels)"
            ));
        }
        Ok(Some((nw as u32, nh as u32)))
    }

    fn resize(&self, img: DynamicImage, plan: Option<(u32, u32)>) -> DynamicImage {
        let (tw, th) = (self.width, self.height);
        if img.width() == tw && img.height() == th {
            return img;
        }
        // Center-crops where the image is larger and pads (black) where it is smaller.
        let centered = |inner: DynamicImage| {
            if inner.width() == tw && inner.height() == th {
                return inner;
            }
            let mut canvas = DynamicImage::new(tw, th, inner.color());
            let x = (i64::from(tw) - i64::from(inner.width())) / 2;
            let y = (i64::from(th) - i64::from(inner.height())) / 2;
            image::imageops::overlay(&mut canvas, &inner, x, y);
            canvas
        };
        match plan {
            None => centered(img),
            Some((nw, nh)) => centered(img.resize_exact(nw, nh, self.filter)),
        }
    }
}

/// Whether an EXIF orientation swaps width and height.
fn turns(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation as O;
    matches!(
        o,
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH
    )
}

impl Backend for ImageBackend {
    fn name(&self) -> &'static str {
        "image_preprocess"
    }

    fn needs_model_file(&self) -> bool {
        false
    }

    fn inline_runs(&self) -> InlineRuns {
        InlineRuns::WhenSmall
    }

    fn load(&self, _: &Path, o: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        let fail = |reason| BackendError::Load {
            path: "image_preprocess parameters".into(),
            reason,
        };
        let pipeline = Pipeline::from_parameters(&o.parameters).map_err(fail)?;
        let per_image: u64 = pipeline.output_shape().iter().map(|&d| d as u64).product();
        let batch = o.max_batch_size.max(1) as u64;
        if batch * per_image > MAX_BATCH_OUTPUT_VALUES {
            return Err(fail(format!(
                "a batch of {batch} outputs of {per_image} values is over the limit of {MAX_BATCH_OUTPUT_VALUES} values: lower max_batch_size or the output size"
            )));
        }
        let get = |k: &str, d: &str| {
            o.parameters
                .get(k)
                .cloned()
                .unwrap_or_else(|| d.to_string())
        };
        let shape = std::iter::once(-1)
            .chain(pipeline.output_shape().iter().map(|&d| d as i64))
            .collect();
        let signature = Signature {
            inputs: vec![IoSpec {
                name: get("input_name", "IMAGE"),
                dtype: DataType::Bytes,
                shape: vec![-1, 1],
            }],
            outputs: vec![IoSpec {
                name: get("output_name", "PIXELS"),
                dtype: pipeline.dtype,
                shape,
            }],
        };
        Ok(Box::new(ImageSession {
            pipeline,
            signature,
        }))
    }
}

struct ImageSession {
    pipeline: Pipeline,
    signature: Signature,
}

impl Session for ImageSession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Small images only (a thumbnail decodes in tens of microseconds; a photo takes
    /// milliseconds, which belong on a worker thread, not on the async runtime's).
    fn fits_inline(&self, inputs: &[Tensor]) -> bool {
        let Some(TensorData::Strings(images)) = inputs.first().map(|t| &t.data) else {
            return false;
        };
        let mut pixels = 0u64;
        for img in images.iter() {
            if img.len() > INLINE_MAX_BYTES {
                return false;
            }
            match Pipeline::header_pixels(img) {
                Some(p) => pixels = pixels.saturating_add(p),
                None => return false,
            }
        }
        pixels <= INLINE_MAX_PIXELS
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let input = inputs
            .first()
            .ok_or_else(|| BackendError::Input("no image input".into()))?;
        let TensorData::Strings(images) = &input.data else {
            return Err(BackendError::Input("images must be a BYTES tensor".into()));
        };
        let batch = input.shape.first().copied().unwrap_or(1);
        if images.len() != batch {
            return Err(BackendError::Input(format!(
                "expected one image per row: {} images for a batch of {batch}",
                images.len()
            )));
        }
        // Grows image by image: a batch of corrupt images allocates nothing.
        let mut values = Vec::new();
        for (i, img) in images.iter().enumerate() {
            self.pipeline.process(img, &mut values).map_err(|e| {
                BackendError::Input(if batch > 1 {
                    format!("image {i}: {e}")
                } else {
                    e
                })
            })?;
        }
        let mut shape = vec![batch];
        shape.extend(self.pipeline.output_shape());
        let tensor = match self.pipeline.dtype {
            DataType::U8 => {
                let bytes: Vec<u8> = values
                    .iter()
                    .map(|&v| v.round().clamp(0.0, 255.0) as u8)
                    .collect();
                Tensor::from_slice(shape, &bytes)
            }
            _ => Tensor::from_slice(shape, &values),
        }
        .map_err(|e| BackendError::Run(e.to_string()))?;
        Ok(vec![tensor])
    }
}

#[cfg(test)]
mod tests;
