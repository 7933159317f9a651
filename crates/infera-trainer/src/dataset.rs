//! Where training images come from: Fashion-MNIST's IDX files (optionally downloaded from the
//! mirror first) or a folder of the user's own photos, one sub-folder per class.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use infera_backend_image::Pipeline;
use infera_train::data::{self, CLASSES, FILES, Part, Split};

use crate::recipe::{DataConfig, DataFormat};

/// Side of the square grayscale images the models take.
pub const IMAGE_SIDE: usize = 28;

pub struct Dataset {
    pub classes: Vec<String>,
    pub train: Split,
    /// Only for the final evaluation, never for choosing a model.
    pub test: Split,
}

pub fn load(cfg: &DataConfig) -> anyhow::Result<Dataset> {
    let mut ds = match cfg.format {
        DataFormat::FashionMnist => fashion_mnist(cfg)?,
        DataFormat::ImageFolder => image_folder(&cfg.dir)?,
    };
    if cfg.train_limit > 0 && cfg.train_limit < ds.train.len() {
        ds.train = ds.train.take(cfg.train_limit);
    }
    if cfg.test_limit > 0 && cfg.test_limit < ds.test.len() {
        ds.test = ds.test.take(cfg.test_limit);
    }
    if cfg.validation >= ds.train.len() {
        bail!(
            "data.validation = {} leaves no training images (the training set has {})",
            cfg.validation,
            ds.train.len()
        );
    }
    Ok(ds)
}

fn fashion_mnist(cfg: &DataConfig) -> anyhow::Result<Dataset> {
    let missing = FILES.iter().any(|f| data::find(&cfg.dir, f.name).is_none());
    if missing && cfg.download {
        eprintln!(
            "downloading Fashion-MNIST from {} into {}",
            cfg.mirror,
            cfg.dir.display()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the download runtime")?;
        rt.block_on(infera_train::download::download(
            &cfg.mirror,
            &cfg.dir,
            &FILES,
            |_, _, _| {},
        ))?;
    } else if missing {
        bail!(
            "Fashion-MNIST is not in {} (install Debian's dataset-fashion-mnist, point data.dir at the IDX files, or set data.download=true)",
            cfg.dir.display()
        );
    }
    Ok(Dataset {
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        train: data::load(&cfg.dir, Part::Train)?,
        test: data::load(&cfg.dir, Part::Test)?,
    })
}

/// `dir/<class>/*.png|jpg` (train; a tenth held out as test, every tenth file per class), or
/// `dir/train/<class>/...` with `dir/test/<class>/...` when both exist. Images become
/// 28×28 grayscale through the served `fashion_preprocess` pipeline (fitted, not stretched).
fn image_folder(dir: &Path) -> anyhow::Result<Dataset> {
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    if train_dir.is_dir() && test_dir.is_dir() {
        let classes = class_names(&train_dir)?;
        let train = read_classes(&train_dir, &classes, |_| true)?;
        let test = read_classes(&test_dir, &classes, |_| true)?;
        return Ok(Dataset {
            classes,
            train,
            test,
        });
    }
    let classes = class_names(dir)?;
    let train = read_classes(dir, &classes, |i| i % 10 != 9)?;
    let test = read_classes(dir, &classes, |i| i % 10 == 9)?;
    Ok(Dataset {
        classes,
        train,
        test,
    })
}

fn class_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            classes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    classes.sort();
    if classes.len() < 2 {
        bail!(
            "{} needs one sub-folder per class (at least two), found {}",
            dir.display(),
            classes.len()
        );
    }
    Ok(classes)
}

fn read_classes(
    dir: &Path,
    classes: &[String],
    keep: impl Fn(usize) -> bool,
) -> anyhow::Result<Split> {
    let mut split = Split {
        images: Vec::new(),
        labels: Vec::new(),
        rows: IMAGE_SIDE,
        cols: IMAGE_SIDE,
    };
    let mut examples: Vec<(PathBuf, u8)> = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .with_context(|| format!("cannot read {}", class_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "png" | "jpg" | "jpeg" | "bmp" | "gif" | "webp"
                    )
                })
            })
            .collect();
        files.sort();
        let label = u8::try_from(label).context("at most 256 classes")?;
        examples.extend(
            files
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, p)| (p, label)),
        );
    }
    if examples.is_empty() {
        bail!(
            "no PNG, JPEG, BMP, GIF or WebP images under {}",
            dir.display()
        );
    }
    // Interleave classes so a limit keeps every class.
    let mut rng = data::Rng::new(0x1A6E);
    rng.shuffle(&mut examples);
    // The server's pipeline, so the model is tuned on the pixels it is served.
    let pipeline = Pipeline::raw_pixels(IMAGE_SIDE as u32, IMAGE_SIDE as u32, 1)
        .map_err(anyhow::Error::msg)?;
    let mut pixels = Vec::with_capacity(IMAGE_SIDE * IMAGE_SIDE);
    for (path, label) in examples {
        pixels.clear();
        pipeline
            .process_file(&path, &mut pixels)
            .map_err(|e| anyhow::anyhow!("image {}: {e}", path.display()))?;
        // Raw pixels are whole numbers 0..=255.
        split.images.extend(pixels.iter().map(|&v| v as u8));
        split.labels.push(label);
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, value: u8, size: u32) {
        let img = image::GrayImage::from_pixel(size, size, image::Luma([value]));
        img.save(path).unwrap();
    }

    #[test]
    fn image_folder_classes_are_sorted_subfolders_and_every_tenth_file_is_test() {
        let dir = tempfile::tempdir().unwrap();
        for (class, value) in [("boots", 200u8), ("anoraks", 50u8)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..20 {
                write_png(
                    &dir.path().join(class).join(format!("{i:02}.png")),
                    value,
                    56,
                );
            }
        }
        std::fs::write(dir.path().join("boots/readme.txt"), "not an image").unwrap();
        let ds = image_folder(dir.path()).unwrap();
        assert_eq!(ds.classes, ["anoraks", "boots"]);
        assert_eq!((ds.train.len(), ds.test.len()), (36, 4));
        assert_eq!((ds.train.rows, ds.train.cols), (28, 28));
        for i in 0..ds.train.len() {
            let expected = if ds.train.labels[i] == 0 { 50 } else { 200 };
            assert!(ds.train.image(i).iter().all(|&p| p == expected));
        }
    }

    #[test]
    fn image_folder_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("only")).unwrap();
        let e = image_folder(dir.path()).err().unwrap().to_string();
        assert!(e.contains("one sub-folder per class"), "{e}");
        std::fs::create_dir(dir.path().join("other")).unwrap();
        std::fs::write(dir.path().join("only/broken.png"), b"not a png").unwrap();
        let e = format!("{:#}", image_folder(dir.path()).err().unwrap());
        assert!(e.contains("broken.png"), "{e}");
    }

    /// A non-square RGB photo: every channel different, so a wrong channel weight, a
    /// stretch instead of a fit, or another filter changes pixels.
    fn photo_jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(90, 52, |x, y| {
            image::Rgb([
                (x * 2 + y) as u8,
                (255 - x * 2) as u8,
                (y * 4 + x / 3) as u8,
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    /// Serving (the shipped `fashion_preprocess` model's config, run by the image backend),
    /// INT8 calibration (`infera optimize`) and fine-tuning read the same photo to the same
    /// pixels.
    #[test]
    fn serving_calibration_and_fine_tuning_see_the_same_pixels() {
        use infera_core::backend::{Backend, LoadOptions};
        let photo = photo_jpeg();
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            // Ten copies: fine-tuning holds every tenth file of a class out as test.
            for i in 0..10 {
                std::fs::write(dir.path().join(class).join(format!("{i}.jpg")), &photo).unwrap();
            }
        }

        let model_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/model_repository/fashion_preprocess");
        let text = std::fs::read_to_string(model_dir.join("config.pbtxt")).unwrap();
        let cfg = infera_core::config::parse_pbtxt(&text).unwrap();
        let options = LoadOptions {
            intra_op_threads: 1,
            inter_op_threads: 1,
            parameters: cfg
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.string_value.clone()))
                .collect(),
            model_dir: model_dir.clone(),
            max_batch_size: 1,
        };
        let mut session = infera_backend_image::ImageBackend
            .load(&model_dir, &options)
            .unwrap();
        let input =
            infera_core::Tensor::from_strings(vec![1, 1], vec![photo.clone().into()]).unwrap();
        let served: Vec<f32> = session.run(&[input]).unwrap()[0].to_vec().unwrap();
        assert_eq!(served.len(), IMAGE_SIDE * IMAGE_SIDE);
        // Fitted, not stretched: a 90x52 photo leaves black rows above and below.
        assert_eq!(served[0], 0.0);
        assert!(served[IMAGE_SIDE * IMAGE_SIDE / 2] > 0.0);

        let calibration = infera_optimize::data::load(
            &infera_optimize::data::Source::Folder(dir.path().to_path_buf()),
            &[1, IMAGE_SIDE, IMAGE_SIDE],
            None,
            None,
        )
        .unwrap();
        assert_eq!(calibration.count, 20);
        assert_eq!(&calibration.pixels[..served.len()], &served[..]);

        let tuned = image_folder(dir.path()).unwrap();
        let i = tuned.train.labels.iter().position(|&l| l == 0).unwrap();
        let tuned: Vec<f32> = tuned.train.image(i).iter().map(|&p| f32::from(p)).collect();
        assert_eq!(tuned, served);
    }
}
