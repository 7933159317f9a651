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

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use infera_core::backend::{Backend, BackendError, IoSpec, LoadOptions, Session, Signature};
use infera_core::{DataType, Tensor, TensorData};

pub struct ImageBackend;

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
        if width == 0 || height == 0 || u64::from(width) * u64::from(height) > 1 << 26 {
            return Err(format!("output size {width}x{height} is out of range"));
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
            max_pixels: param(p, "max_pixels", Some(40_000_000))?,
        })
    }

    fn channels(&self) -> usize {
        if self.gray { 1 } else { 3 }
    }

    pub fn output_shape(&self) -> Vec<usize> {
        let (c, h, w) = (self.channels(), self.height as usize, self.width as usize);
        if self.nchw {
            vec![c, h, w]
        } else {
            vec![h, w, c]
        }
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
        let mut limits = Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8));
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
        let orientation = decoder.orientation().ok();
        let mut img = DynamicImage::from_decoder(decoder)
            .map_err(|e| format!("cannot decode the image: {e}"))?;
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        let img = if self.gray {
            DynamicImage::ImageLuma8(img.to_luma8())
        } else {
            DynamicImage::ImageRgb8(img.to_rgb8())
        };
        let img = self.resize(img);
        let raw = img.as_bytes();
        let (c, hw) = (self.channels(), (self.width * self.height) as usize);
        let value = |px: usize, ch: usize| {
            (f32::from(raw[px * c + ch]) * self.scale - self.mean[ch]) / self.std[ch]
        };
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

    fn resize(&self, img: DynamicImage) -> DynamicImage {
        let (tw, th) = (self.width, self.height);
        if img.width() == tw && img.height() == th {
            return img;
        }
        // Center-crops where the image is larger and pads (black) where it is smaller.
        let centered = |inner: DynamicImage| {
            let mut canvas = DynamicImage::new(tw, th, inner.color());
            let x = (i64::from(tw) - i64::from(inner.width())) / 2;
            let y = (i64::from(th) - i64::from(inner.height())) / 2;
            image::imageops::overlay(&mut canvas, &inner, x, y);
            canvas
        };
        match self.resize {
            Resize::Stretch => img.resize_exact(tw, th, self.filter),
            Resize::Fit => centered(img.resize(tw, th, self.filter)),
            Resize::Fill => img.resize_to_fill(tw, th, self.filter),
            Resize::Pad | Resize::Crop => centered(img),
            Resize::Shorter(side) => {
                let (w, h) = (u64::from(img.width()), u64::from(img.height()));
                let short = w.min(h).max(1);
                let nw = (w * u64::from(side)).div_ceil(short).max(1) as u32;
                let nh = (h * u64::from(side)).div_ceil(short).max(1) as u32;
                centered(img.resize_exact(nw, nh, self.filter))
            }
        }
    }
}

impl Backend for ImageBackend {
    fn name(&self) -> &'static str {
        "image_preprocess"
    }

    fn needs_model_file(&self) -> bool {
        false
    }

    fn load(&self, _: &Path, o: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        let pipeline =
            Pipeline::from_parameters(&o.parameters).map_err(|reason| BackendError::Load {
                path: "image_preprocess parameters".into(),
                reason,
            })?;
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
        let mut values =
            Vec::with_capacity(batch * self.pipeline.output_shape().iter().product::<usize>());
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
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn gray_png_round_trips_exactly() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([(x * 9 + y) as u8])
        }));
        let p = Pipeline::from_parameters(&params(&[
            ("width", "28"),
            ("height", "28"),
            ("color", "gray"),
        ]))
        .unwrap();
        let mut out = Vec::new();
        p.process(&png(&img), &mut out).unwrap();
        assert_eq!(out.len(), 784);
        assert_eq!(out[1], 9.0);
        assert_eq!(out[28], 1.0);
    }

    #[test]
    fn rgb_jpeg_of_another_size_is_resized_and_normalized() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            300,
            400,
            image::Rgb([200, 100, 0]),
        ));
        let mut jpeg = Cursor::new(Vec::new());
        img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let p = Pipeline::from_parameters(&params(&[
            ("width", "28"),
            ("height", "28"),
            ("scale", "0.00392156862"),
            ("mean", "0.5"),
            ("std", "0.5"),
            ("resize", "fill"),
        ]))
        .unwrap();
        let mut out = Vec::new();
        p.process(&jpeg.into_inner(), &mut out).unwrap();
        assert_eq!(out.len(), 3 * 784);
        assert!(
            (out[0] - (200.0 / 255.0 - 0.5) / 0.5).abs() < 0.05,
            "{}",
            out[0]
        );
        assert!((out[2 * 784] - (-1.0)).abs() < 0.05, "{}", out[2 * 784]);
    }

    #[test]
    fn center_crop_and_shorter_side_resize() {
        // Left half black, right half white; a 4-wide center crop straddles the edge.
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(20, 10, |x, _| {
            image::Luma([if x < 10 { 0 } else { 255 }])
        }));
        let crop = Pipeline::from_parameters(&params(&[
            ("width", "4"),
            ("height", "4"),
            ("color", "gray"),
            ("resize", "crop"),
        ]))
        .unwrap();
        let mut out = Vec::new();
        crop.process(&png(&img), &mut out).unwrap();
        assert_eq!(&out[..4], &[0.0, 0.0, 255.0, 255.0]);
        let shorter = Pipeline::from_parameters(&params(&[
            ("width", "4"),
            ("height", "4"),
            ("color", "gray"),
            ("resize", "shorter"),
            ("shorter_side", "5"),
            ("filter", "nearest"),
        ]))
        .unwrap();
        out.clear();
        shorter.process(&png(&img), &mut out).unwrap();
        assert_eq!(out.len(), 16);
        assert_eq!(
            (out[0], out[3]),
            (0.0, 255.0),
            "10x5 scaled, then 4x4 cut from its center"
        );
        assert!(
            Pipeline::from_parameters(&params(&[
                ("width", "4"),
                ("height", "4"),
                ("resize", "shorter")
            ]))
            .is_err(),
            "shorter needs shorter_side"
        );
    }

    #[test]
    fn fit_keeps_the_aspect_and_pads() {
        let img =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 10, image::Luma([255])));
        let p = Pipeline::from_parameters(&params(&[
            ("width", "10"),
            ("height", "10"),
            ("color", "gray"),
            ("resize", "fit"),
        ]))
        .unwrap();
        let mut out = Vec::new();
        p.process(&png(&img), &mut out).unwrap();
        assert_eq!(out[0], 0.0, "top row is padding");
        assert_eq!(out[5 * 10 + 5], 255.0, "middle is image");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let p = Pipeline::from_parameters(&params(&[
            ("width", "8"),
            ("height", "8"),
            ("max_pixels", "100"),
        ]))
        .unwrap();
        let mut out = Vec::new();
        assert!(p.process(b"", &mut out).unwrap_err().contains("empty"));
        assert!(
            p.process(b"hello, not an image", &mut out)
                .unwrap_err()
                .contains("supported format")
        );
        let big = DynamicImage::ImageLuma8(image::GrayImage::new(20, 20));
        assert!(
            p.process(&png(&big), &mut out)
                .unwrap_err()
                .contains("max_pixels")
        );
        let mut truncated = png(&DynamicImage::ImageLuma8(image::GrayImage::new(8, 8)));
        truncated.truncate(truncated.len() / 2);
        assert!(p.process(&truncated, &mut out).is_err());
        assert!(
            Pipeline::from_parameters(&params(&[("width", "8")]))
                .unwrap_err()
                .contains("height")
        );
        assert!(
            Pipeline::from_parameters(&params(&[
                ("width", "8"),
                ("height", "8"),
                ("resize", "zoom")
            ]))
            .is_err()
        );
    }
}
