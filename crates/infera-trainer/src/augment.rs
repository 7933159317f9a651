//! Training-time augmentation on raw grayscale pixels: horizontal flip, a small rotation and
//! shift (one affine map, bilinear sampling, black outside), a brightness factor, and random
//! erasing. Drawn from the run's seeded generator, so a seed gives the same images every time.
//! A transform that is off draws nothing, so adding one keeps the images of older recipes.

use infera_train::data::Rng;

use crate::recipe::AugmentConfig;

/// A uniform float in [0, 1).
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn symmetric(rng: &mut Rng, half_width: f64) -> f64 {
    (unit(rng) * 2.0 - 1.0) * half_width
}

/// Writes `src` (`w`×`h` pixels, 0..255) into `out` as f32 0..255, augmented per `cfg`.
pub fn augment(
    src: &[u8],
    w: usize,
    h: usize,
    cfg: &AugmentConfig,
    rng: &mut Rng,
    out: &mut [f32],
) {
    debug_assert_eq!(src.len(), w * h);
    debug_assert_eq!(out.len(), w * h);
    if cfg.is_off() {
        for (o, &p) in out.iter_mut().zip(src) {
            *o = f32::from(p);
        }
        return;
    }
    let flip = cfg.hflip > 0.0 && unit(rng) < cfg.hflip;
    let angle = symmetric(rng, cfg.rotate_degrees).to_radians();
    let (dx, dy) = (
        symmetric(rng, cfg.shift_pixels),
        symmetric(rng, cfg.shift_pixels),
    );
    let gain = 1.0 + symmetric(rng, cfg.brightness);
    let (sin, cos) = angle.sin_cos();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let at = |x: isize, y: isize| -> f64 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            f64::from(src[y as usize * w + x as usize])
        }
    };
    for y in 0..h {
        for x in 0..w {
            // Inverse map: where in the source does this output pixel come from?
            let ox = if flip { w - 1 - x } else { x } as f64 - dx - cx;
            let oy = y as f64 - dy - cy;
            let sx = cos * ox + sin * oy + cx;
            let sy = -sin * ox + cos * oy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let v = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                + at(x0 + 1, y0) * fx * (1.0 - fy)
                + at(x0, y0 + 1) * (1.0 - fx) * fy
                + at(x0 + 1, y0 + 1) * fx * fy;
            out[y * w + x] = (v * gain).clamp(0.0, 255.0) as f32;
        }
    }
    if cfg.erase > 0.0 && unit(rng) < cfg.erase {
        erase(out, w, h, rng);
    }
}

/// Random erasing (Zhong et al., 2017): noise over a rectangle of 2–25% of the image with an
/// aspect ratio of 0.3–3.3 (log-uniform), placed wholly inside it.
fn erase(out: &mut [f32], w: usize, h: usize, rng: &mut Rng) {
    let area = (w * h) as f64 * (0.02 + unit(rng) * 0.23);
    let aspect = (0.3f64.ln() + unit(rng) * (3.3f64.ln() - 0.3f64.ln())).exp();
    let eh = ((area * aspect).sqrt().round() as usize).clamp(1, h);
    let ew = ((area / aspect).sqrt().round() as usize).clamp(1, w);
    let top = (unit(rng) * (h - eh + 1) as f64) as usize;
    let left = (unit(rng) * (w - ew + 1) as f64) as usize;
    for row in out[top * w..(top + eh) * w].chunks_exact_mut(w) {
        for p in &mut row[left..left + ew] {
            *p = (unit(rng) * 256.0).floor().min(255.0) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<u8> {
        (0..16).map(|i| (i * 10) as u8).collect()
    }

    #[test]
    fn off_is_a_plain_copy() {
        let src = ramp();
        let mut out = vec![0.0; 16];
        augment(
            &src,
            4,
            4,
            &AugmentConfig::default(),
            &mut Rng::new(1),
            &mut out,
        );
        assert_eq!(out, src.iter().map(|&p| f32::from(p)).collect::<Vec<_>>());
    }

    #[test]
    fn a_certain_flip_mirrors_each_row() {
        let src = ramp();
        let cfg = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::default()
        };
        let mut out = vec![0.0; 16];
        augment(&src, 4, 4, &cfg, &mut Rng::new(1), &mut out);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(out[y * 4 + x], f32::from(src[y * 4 + 3 - x]));
            }
        }
    }

    #[test]
    fn same_seed_same_images_and_values_stay_in_range() {
        let src: Vec<u8> = (0..28 * 28).map(|i| (i * 7 % 256) as u8).collect();
        let cfg = AugmentConfig {
            hflip: 0.5,
            rotate_degrees: 10.0,
            shift_pixels: 2.0,
            brightness: 0.2,
            erase: 0.5,
        };
        let (mut a, mut b) = (vec![0.0; 784], vec![0.0; 784]);
        augment(&src, 28, 28, &cfg, &mut Rng::new(7), &mut a);
        augment(&src, 28, 28, &cfg, &mut Rng::new(7), &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (0.0..=255.0).contains(v)));
        let mut c = vec![0.0; 784];
        augment(&src, 28, 28, &cfg, &mut Rng::new(8), &mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn erasing_replaces_one_rectangle_inside_the_image() {
        let src = vec![7u8; 28 * 28];
        let cfg = AugmentConfig {
            erase: 1.0,
            ..AugmentConfig::default()
        };
        for seed in 0..200 {
            let mut out = vec![0.0; 784];
            augment(&src, 28, 28, &cfg, &mut Rng::new(seed), &mut out);
            let changed: Vec<(usize, usize)> = (0..784)
                .filter(|&i| out[i] != 7.0)
                .map(|i| (i % 28, i / 28))
                .collect();
            assert!(out.iter().all(|v| (0.0..=255.0).contains(v)));
            // Noise can repeat the old value by chance, so bound the rectangle from its
            // changed pixels: at most 25% of the image, and most of its pixels did change.
            let (x0, x1) = (
                changed.iter().map(|c| c.0).min(),
                changed.iter().map(|c| c.0).max(),
            );
            let (y0, y1) = (
                changed.iter().map(|c| c.1).min(),
                changed.iter().map(|c| c.1).max(),
            );
            let (Some(x0), Some(x1), Some(y0), Some(y1)) = (x0, x1, y0, y1) else {
                panic!("seed {seed}: nothing erased");
            };
            let rect = (x1 - x0 + 1) * (y1 - y0 + 1);
            assert!(rect <= 784 / 4 + 28, "seed {seed}: {rect} pixels");
            assert!(changed.len() * 10 >= rect * 9, "seed {seed}");
        }
    }

    #[test]
    fn no_erasing_draws_nothing_extra() {
        // Recipes without erasing must keep their images (and so their trained weights).
        let src: Vec<u8> = (0..784).map(|i| (i % 251) as u8).collect();
        let cfg = AugmentConfig {
            hflip: 0.5,
            shift_pixels: 1.0,
            ..AugmentConfig::default()
        };
        let mut rng = Rng::new(3);
        let mut out = vec![0.0; 784];
        augment(&src, 28, 28, &cfg, &mut rng, &mut out);
        let mut expected = Rng::new(3);
        for _ in 0..5 {
            expected.next_u64();
        }
        assert_eq!(rng.next_u64(), expected.next_u64());
    }
}
