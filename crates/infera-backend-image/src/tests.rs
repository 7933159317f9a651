//! The pipeline on real encoded images: decoding, resizing modes, normalisation, and the
//! refusals (corrupt data, too many pixels, extreme shapes, oversized configs).

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
    let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 10, image::Luma([255])));
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

#[test]
fn extreme_shapes_are_refused_before_scaling_buffers_are_allocated() {
    // A 1-pixel-high strip: every mode that scales it needs a buffer of width × height
    // far beyond max_pixels, so each is a clear error.
    let strip = png(&DynamicImage::ImageLuma8(image::GrayImage::new(100_000, 1)));
    let tall = png(&DynamicImage::ImageLuma8(image::GrayImage::new(1, 100_000)));
    let pipeline = |resize: &str| {
        Pipeline::from_parameters(&params(&[
            ("width", "28"),
            ("height", "28"),
            ("color", "gray"),
            ("resize", resize),
            ("shorter_side", "28"),
            ("max_pixels", "500000"),
        ]))
        .unwrap()
    };
    let mut out = Vec::new();
    for (resize, img) in [
        ("stretch", &strip),
        ("fill", &strip),
        ("fill", &tall),
        ("shorter", &strip),
        ("shorter", &tall),
    ] {
        let e = pipeline(resize).process(img, &mut out).unwrap_err();
        assert!(e.contains("aspect ratio is too extreme"), "{resize}: {e}");
        assert!(out.is_empty());
    }
    // Fitting inside the target keeps the buffers small: allowed.
    for img in [&strip, &tall] {
        out.clear();
        pipeline("fit").process(img, &mut out).unwrap();
        assert_eq!(out.len(), 784);
    }
    // Crop and pad never scale.
    for resize in ["crop", "pad"] {
        out.clear();
        pipeline(resize).process(&tall, &mut out).unwrap();
        assert_eq!(out.len(), 784);
    }
}

#[test]
fn configs_that_would_need_huge_buffers_are_refused() {
    let load = |kv: &[(&str, &str)], batch: usize| {
        let o = LoadOptions {
            parameters: params(kv),
            max_batch_size: batch,
            ..Default::default()
        };
        ImageBackend
            .load(Path::new(""), &o)
            .err()
            .map(|e| e.to_string())
    };
    assert!(load(&[("width", "28"), ("height", "28")], 64).is_none());
    let e = load(&[("width", "4096"), ("height", "4096")], 64).unwrap();
    assert!(e.contains("lower max_batch_size"), "{e}");
    let e = load(&[("width", "8192"), ("height", "8192")], 1).unwrap();
    assert!(e.contains("out of range"), "{e}");
    let e = load(
        &[
            ("width", "8"),
            ("height", "8"),
            ("max_pixels", "99999999999"),
        ],
        1,
    )
    .unwrap();
    assert!(e.contains("max_pixels"), "{e}");
}

#[test]
fn only_small_images_run_on_the_callers_thread() {
    let o = LoadOptions {
        parameters: params(&[("width", "28"), ("height", "28")]),
        max_batch_size: 8,
        ..Default::default()
    };
    let session = ImageBackend.load(Path::new(""), &o).unwrap();
    let images = |imgs: Vec<Vec<u8>>| {
        let n = imgs.len();
        vec![Tensor::from_strings(vec![n, 1], imgs.into_iter().map(Into::into).collect()).unwrap()]
    };
    let square = |side| png(&DynamicImage::ImageLuma8(image::GrayImage::new(side, side)));
    assert_eq!(ImageBackend.inline_runs(), InlineRuns::WhenSmall);
    assert!(session.fits_inline(&images(vec![square(28)])));
    assert!(session.fits_inline(&images(vec![square(64); 4])));
    // Over 128×128 pixels in all, one image or several: a worker's job.
    assert!(!session.fits_inline(&images(vec![square(129)])));
    assert!(!session.fits_inline(&images(vec![square(64); 5])));
    // A header that cannot be read goes to a worker, which gives the error.
    assert!(!session.fits_inline(&images(vec![b"not an image".to_vec()])));
    assert!(!session.fits_inline(&[]));
}
