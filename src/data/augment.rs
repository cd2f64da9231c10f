//! Keras `ImageDataGenerator` augmentation, on whole batches, as libtorch tensor ops.
//!
//! Pixels stay on the 0..255 scale throughout; `rescale` and the backbone's own
//! normalisation are applied afterwards by [`super::Normalisation`].
//!
//! Per image, parameters are drawn exactly as Keras draws them: rotation uniform in
//! [-r, r] degrees, shifts uniform in [-f, f] times the size, zoom uniform in [1-z, 1+z]
//! per axis, a flip with probability 0.5. Positive shifts move content right/down.
//! The transform is one affine map per image (bilinear sampling, `fill_mode` for points
//! outside); the flip is an exact mirror. Draws come from the caller's seeded
//! generator, so a seed reproduces the augmentation exactly.

use rand::Rng;
use tch::{Kind, Tensor};

use crate::config::{AugmentConfig, FillMode};

/// One image's random transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub rotation_deg: f64,
    /// Shift in pixels (x right, y down).
    pub shift_x: f64,
    pub shift_y: f64,
    pub zoom_x: f64,
    pub zoom_y: f64,
    pub flip: bool,
    /// Mirrored top-bottom (Keras `vertical_flip`).
    pub vflip: bool,
}

impl Transform {
    /// The identity transform.
    pub const IDENTITY: Transform = Transform {
        rotation_deg: 0.0,
        shift_x: 0.0,
        shift_y: 0.0,
        zoom_x: 1.0,
        zoom_y: 1.0,
        flip: false,
        vflip: false,
    };

    /// Draws a transform for an image of `width` x `height` pixels.
    pub fn draw(cfg: &AugmentConfig, width: i64, height: i64, rng: &mut impl Rng) -> Transform {
        let mut sym = |r: f64| if r > 0.0 { rng.gen_range(-r..=r) } else { 0.0 };
        let rotation_deg = sym(cfg.rotation_range);
        let shift_x = sym(cfg.width_shift_range) * width as f64;
        let shift_y = sym(cfg.height_shift_range) * height as f64;
        let (zoom_x, zoom_y) = if cfg.zoom_range > 0.0 {
            (1.0 + sym(cfg.zoom_range), 1.0 + sym(cfg.zoom_range))
        } else {
            (1.0, 1.0)
        };
        let flip = cfg.horizontal_flip && rng.gen_bool(0.5);
        // Drawn only when on, so runs without it draw exactly as before.
        let vflip = cfg.vertical_flip && rng.gen_bool(0.5);
        Transform {
            rotation_deg,
            shift_x,
            shift_y,
            zoom_x,
            zoom_y,
            flip,
            vflip,
        }
    }

    fn is_geometric(&self) -> bool {
        self.rotation_deg != 0.0
            || self.shift_x != 0.0
            || self.shift_y != 0.0
            || self.zoom_x != 1.0
            || self.zoom_y != 1.0
    }

    /// The 2x3 matrix mapping output to input in `affine_grid`'s normalised coordinates.
    fn theta(&self, width: i64, height: i64) -> [f32; 6] {
        let (sx, sy) = (width as f64 / 2.0, height as f64 / 2.0);
        let (sin, cos) = self.rotation_deg.to_radians().sin_cos();
        // In pixels, about the centre: p_in = R(theta) Z p_out - shift.
        let m = [
            [cos * self.zoom_x, -sin * self.zoom_y],
            [sin * self.zoom_x, cos * self.zoom_y],
        ];
        // Normalised coordinates: n = p / s, so A = S^-1 M S and t = -shift / s.
        [
            m[0][0] as f32,
            (m[0][1] * sy / sx) as f32,
            (-self.shift_x / sx) as f32,
            (m[1][0] * sx / sy) as f32,
            m[1][1] as f32,
            (-self.shift_y / sy) as f32,
        ]
    }
}

/// The fixed views test-time augmentation averages for `tta: n` on `width` x `height`
/// images: the image itself first, then its mirrors (left-right with
/// `horizontal_flip`, top-bottom with `vertical_flip`, both with both: the user said
/// those keep the label), then shifts by half the configured shift ranges (4% of the
/// side where a range is 0), each with the mirrors too.
pub fn tta_views(cfg: &AugmentConfig, n: u32, width: i64, height: i64) -> Vec<Transform> {
    let half = |range: f64| if range > 0.0 { range / 2.0 } else { 0.04 };
    let dx = half(cfg.width_shift_range) * width as f64;
    let dy = half(cfg.height_shift_range) * height as f64;
    let mut mirrors = vec![(false, false)];
    if cfg.horizontal_flip {
        mirrors.push((true, false));
    }
    if cfg.vertical_flip {
        mirrors.push((false, true));
    }
    if cfg.horizontal_flip && cfg.vertical_flip {
        mirrors.push((true, true));
    }
    let shifts = [
        (0.0, 0.0),
        (dx, 0.0),
        (-dx, 0.0),
        (0.0, dy),
        (0.0, -dy),
        (dx, dy),
        (-dx, -dy),
        (dx, -dy),
    ];
    shifts
        .iter()
        .flat_map(|&(shift_x, shift_y)| {
            mirrors.iter().map(move |&(flip, vflip)| Transform {
                shift_x,
                shift_y,
                flip,
                vflip,
                ..Transform::IDENTITY
            })
        })
        .take(n.max(1) as usize)
        .collect()
}

/// Applies one transform per image to a batch `[B, 3, H, W]` (uint8 or float, 0..255)
/// and returns float32 on the 0..255 scale.
pub fn apply(batch: &Tensor, transforms: &[Transform], fill: FillMode, cval: f64) -> Tensor {
    let (b, _, h, w) = batch.size4().expect("a [B, 3, H, W] batch");
    assert_eq!(b as usize, transforms.len(), "one transform per image");
    let mut x = batch.to_kind(Kind::Float);
    if transforms.iter().any(Transform::is_geometric) {
        let theta: Vec<f32> = transforms.iter().flat_map(|t| t.theta(w, h)).collect();
        let theta = Tensor::from_slice(&theta)
            .view([b, 2, 3])
            .to_device(x.device());
        let grid = Tensor::affine_grid_generator(&theta, [b, 3, h, w], false);
        let padding = match fill {
            FillMode::Nearest => 1,
            FillMode::Constant => 0,
            FillMode::Reflect => 2,
        };
        x = if fill == FillMode::Constant {
            // Zero padding around (x - cval) is constant padding with cval.
            (x - cval).grid_sampler(&grid, 0, padding, false) + cval
        } else {
            x.grid_sampler(&grid, 0, padding, false)
        };
    }
    let x = mirror(x, transforms, 3, |t| t.flip);
    mirror(x, transforms, 2, |t| t.vflip)
}

/// `x` with the images for which `flipped` holds mirrored along `dim` (3: left-right,
/// 2: top-bottom).
fn mirror(
    x: Tensor,
    transforms: &[Transform],
    dim: i64,
    flipped: fn(&Transform) -> bool,
) -> Tensor {
    if !transforms.iter().any(flipped) {
        return x;
    }
    let mask: Vec<bool> = transforms.iter().map(flipped).collect();
    let mask = Tensor::from_slice(&mask)
        .view([transforms.len() as i64, 1, 1, 1])
        .to_device(x.device());
    x.flip([dim]).where_self(&mask, &x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tta_views_start_with_the_image_and_mirror_only_when_allowed() {
        let mut cfg = AugmentConfig {
            width_shift_range: 0.1,
            ..Default::default()
        };
        let plain = tta_views(&cfg, 3, 200, 100);
        assert_eq!(plain[0], Transform::IDENTITY);
        assert!(plain.iter().all(|v| !v.flip));
        assert_eq!((plain[1].shift_x, plain[2].shift_x), (10.0, -10.0));
        cfg.horizontal_flip = true;
        let mirrored = tta_views(&cfg, 8, 200, 100);
        assert_eq!(mirrored.len(), 8);
        assert!(mirrored[1].flip && !mirrored[1].is_geometric());
        // No height range: 4% of the side.
        assert_eq!(mirrored[6].shift_y, 4.0);
        assert_eq!(tta_views(&cfg, 1, 200, 100), [Transform::IDENTITY]);
        cfg.vertical_flip = true;
        let four: Vec<(bool, bool)> = tta_views(&cfg, 5, 200, 100)
            .iter()
            .map(|v| (v.flip, v.vflip))
            .collect();
        assert_eq!(
            four,
            [
                (false, false),
                (true, false),
                (false, true),
                (true, true),
                (false, false)
            ]
        );
    }

    fn ramp(h: i64, w: i64) -> Tensor {
        Tensor::arange(3 * h * w, (Kind::Float, tch::Device::Cpu))
            .remainder(251)
            .view([1, 3, h, w])
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn identity_and_zero_ranges_change_nothing() {
        let x = ramp(20, 30);
        assert_eq!(
            max_abs_diff(
                &apply(&x, &[Transform::IDENTITY], FillMode::Nearest, 0.0),
                &x
            ),
            0.0
        );
        // A batch where another image is transformed: the identity one still matches.
        let two = Tensor::cat(&[&x, &x], 0);
        let t = Transform {
            rotation_deg: 10.0,
            ..Transform::IDENTITY
        };
        let out = apply(&two, &[Transform::IDENTITY, t], FillMode::Nearest, 0.0);
        assert!(max_abs_diff(&out.get(0), &x.get(0)) < 1e-3);
        assert!(max_abs_diff(&out.get(1), &x.get(0)) > 1.0);
    }

    #[test]
    fn flip_mirrors_exactly() {
        let x = ramp(8, 9);
        let t = Transform {
            flip: true,
            ..Transform::IDENTITY
        };
        let out = apply(&x, &[t], FillMode::Nearest, 0.0);
        assert!(out.equal(&x.flip([3])));
        assert!(apply(&out, &[t], FillMode::Nearest, 0.0).equal(&x));
        let v = Transform {
            vflip: true,
            ..Transform::IDENTITY
        };
        assert!(apply(&x, &[v], FillMode::Nearest, 0.0).equal(&x.flip([2])));
        let both = Transform { flip: true, ..v };
        assert!(apply(&x, &[both], FillMode::Nearest, 0.0).equal(&x.flip([2, 3])));
    }

    #[test]
    fn shift_moves_content_by_whole_pixels() {
        let x = ramp(16, 20);
        let t = Transform {
            shift_x: 3.0,
            shift_y: -2.0,
            ..Transform::IDENTITY
        };
        let out = apply(&x, &[t], FillMode::Constant, 7.0);
        // out[y, x] = in[y + 2, x - 3] where that exists.
        let moved = out.narrow(2, 0, 14).narrow(3, 3, 17);
        let source = x.narrow(2, 2, 14).narrow(3, 0, 17);
        assert!(max_abs_diff(&moved, &source) < 1e-3);
        // Uncovered pixels take cval with fill_mode constant.
        assert!(
            max_abs_diff(
                &out.narrow(3, 0, 3),
                &Tensor::full_like(&out.narrow(3, 0, 3), 7.0)
            ) < 1e-3
        );
    }

    #[test]
    fn draws_are_reproducible_and_within_range() {
        use rand::SeedableRng;
        let cfg = AugmentConfig {
            rotation_range: 20.0,
            width_shift_range: 0.1,
            height_shift_range: 0.2,
            zoom_range: 0.1,
            horizontal_flip: true,
            ..AugmentConfig::default()
        };
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..200)
                .map(|_| Transform::draw(&cfg, 100, 50, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        assert!(a.iter().all(|t| t.rotation_deg.abs() <= 20.0
            && t.shift_x.abs() <= 10.0
            && t.shift_y.abs() <= 10.0));
        assert!(a.iter().all(|t| (0.9..=1.1).contains(&t.zoom_x)));
        let flips = a.iter().filter(|t| t.flip).count();
        assert!((60..140).contains(&flips), "{flips}");
    }
}
