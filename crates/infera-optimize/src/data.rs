//! Images for calibration and accuracy: the Fashion-MNIST set or a folder of images, brought
//! to the model's input through the server's own image pipeline (infera-backend-image), so a
//! model is calibrated on the pixels it is served.

use std::path::{Path, PathBuf};

use infera_backend_image::Pipeline;
use infera_core::tensor::Tensor;
use infera_train::data::{self, Part};

use crate::OptimizeError;

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The IDX files in `dir`.
    FashionMnist { dir: PathBuf, part: Part },
    /// Image files, in class subfolders (`DIR/<class>/*.png`) or flat (no labels).
    Folder(PathBuf),
}

impl Source {
    /// `fashion-mnist[:train|:test]`, or a folder of images.
    pub fn parse(s: &str, fashion_dir: &Path, default_part: Part) -> Source {
        let part = match s {
            "fashion-mnist" | "fashion_mnist" => Some(default_part),
            "fashion-mnist:train" | "fashion_mnist:train" | "train" => Some(Part::Train),
            "fashion-mnist:test" | "fashion_mnist:test" | "test" => Some(Part::Test),
            _ => None,
        };
        match part {
            Some(part) => Source::FashionMnist {
                dir: fashion_dir.to_path_buf(),
                part,
            },
            None => Source::Folder(PathBuf::from(s)),
        }
    }
}

/// Images as one flat FP32 buffer of `count` items of `item` = [C, H, W] values each.
pub struct Images {
    pub pixels: Vec<f32>,
    pub labels: Option<Vec<usize>>,
    pub item: Vec<usize>,
    pub count: usize,
}

impl Images {
    pub fn item_len(&self) -> usize {
        self.item.iter().product()
    }

    /// Items `start..end` as a batch tensor [n, C, H, W].
    pub fn batch(&self, start: usize, end: usize) -> Result<Tensor, OptimizeError> {
        let k = self.item_len();
        let mut shape = vec![end - start];
        shape.extend(&self.item);
        Tensor::from_slice(shape, &self.pixels[start * k..end * k])
            .map_err(|e| OptimizeError::Data(e.to_string()))
    }
}

/// Loads up to `limit` images shaped `item` ([C, H, W] with C = 1 or 3). Fashion-MNIST
/// needs `item` to be [1, 28, 28]; folder images go through the serving image pipeline:
/// `preprocess` (a served `image_preprocess` model's), or by default the shipped
/// `fashion_preprocess` settings at the model's size ([`Pipeline::raw_pixels`]).
pub fn load(
    source: &Source,
    item: &[usize],
    preprocess: Option<&Pipeline>,
    limit: Option<usize>,
) -> Result<Images, OptimizeError> {
    let [c, h, w] = item else {
        return Err(OptimizeError::Data(format!(
            "the model's input is {item:?} per image; images need [channels, height, width]"
        )));
    };
    match source {
        Source::FashionMnist { dir, part } => {
            if (*c, *h, *w) != (1, 28, 28) {
                return Err(OptimizeError::Data(format!(
                    "Fashion-MNIST images are [1, 28, 28] but the model takes {item:?}; use a folder of images"
                )));
            }
            let mut set = data::load(dir, *part).map_err(|e| OptimizeError::Data(e.to_string()))?;
            if let Some(n) = limit {
                set = set.take(n);
            }
            Ok(Images {
                pixels: set.images.iter().map(|&p| p as f32).collect(),
                labels: Some(set.labels.iter().map(|&l| l as usize).collect()),
                item: item.to_vec(),
                count: set.len(),
            })
        }
        Source::Folder(root) => {
            let pipeline = match preprocess {
                Some(p) => p.clone(),
                None => {
                    let side = |d: usize| {
                        u32::try_from(d).map_err(|_| {
                            OptimizeError::Data(format!("the model's input {item:?} is too large"))
                        })
                    };
                    Pipeline::raw_pixels(side(*w)?, side(*h)?, *c).map_err(OptimizeError::Data)?
                }
            };
            load_folder(root, &pipeline, [*c, *h, *w], limit)
        }
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, OptimizeError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| OptimizeError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn load_folder(
    root: &Path,
    pipeline: &Pipeline,
    [c, h, w]: [usize; 3],
    limit: Option<usize>,
) -> Result<Images, OptimizeError> {
    let entries = read_dir_sorted(root)?;
    let classes: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let mut files: Vec<(PathBuf, Option<usize>)> = Vec::new();
    if classes.is_empty() {
        files.extend(
            entries
                .iter()
                .filter(|p| p.is_file())
                .map(|p| (p.clone(), None)),
        );
    } else {
        for (k, dir) in classes.iter().enumerate() {
            for f in read_dir_sorted(dir)?.into_iter().filter(|p| p.is_file()) {
                files.push((f, Some(k)));
            }
        }
    }
    if let Some(n) = limit.filter(|&n| n < files.len()) {
        // Evenly spaced, so a limited set still covers every class folder.
        let step = files.len() as f64 / n as f64;
        files = (0..n)
            .map(|i| files[(i as f64 * step) as usize].clone())
            .collect();
    }
    if files.is_empty() {
        return Err(OptimizeError::Data(format!(
            "no images in {} (expected image files, or class folders of them)",
            root.display()
        )));
    }
    if (pipeline.channels(), pipeline.output_shape()) != (c, vec![c, h, w]) {
        return Err(OptimizeError::Data(format!(
            "the preprocessing gives {:?} per image but the model takes [{c}, {h}, {w}]",
            pipeline.output_shape()
        )));
    }
    let mut pixels = Vec::with_capacity(files.len() * c * h * w);
    for (path, _) in &files {
        pipeline
            .process_file(path, &mut pixels)
            .map_err(|e| OptimizeError::Data(format!("image {}: {e}", path.display())))?;
    }
    let labels = if classes.is_empty() {
        None
    } else {
        Some(files.iter().map(|(_, l)| l.unwrap_or(0)).collect())
    };
    Ok(Images {
        pixels,
        labels,
        item: vec![c, h, w],
        count: files.len(),
    })
}
