//! Augmentation ops as written in `[[augment.train]]` and `[[augment.test]]`, with their
//! output shapes for plan-time checks. What they do to pixels lives in `crate::data::augment`.

use serde::{Deserialize, Serialize};

use super::half;

use crate::config;
use crate::ops::upsample::UpsampleMode;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    #[default]
    Constant,
    Edge,
    Reflect,
}

/// Per-split lists of sample transforms, applied in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    #[serde(default)]
    pub train: Vec<AugmentOp>,
    #[serde(default)]
    pub test: Vec<AugmentOp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AugmentOp {
    /// `(x / 255 - mean[c]) / std[c]` per channel.
    Normalize { mean: Vec<f64>, std: Vec<f64> },
    /// Pad each side with `padding` zeros, then cut a random `size x size` window.
    RandomCrop {
        size: usize,
        #[serde(default)]
        padding: usize,
        /// How the padding is filled: `constant` (zeros), `edge` (repeat the border pixel)
        /// or `reflect` (mirror without repeating the border), as torchvision's `padding_mode`.
        #[serde(default)]
        pad_mode: PadMode,
    },
    /// Mirror left-right with probability `p`.
    Hflip {
        #[serde(default = "half")]
        p: f64,
    },
    /// Mirror top-bottom with probability `p`.
    Vflip {
        #[serde(default = "half")]
        p: f64,
    },
    /// Cut the central `size x size` window (torchvision's rounding).
    CenterCrop { size: usize },
    /// torchvision's `RandomResizedCrop`: a random window of `scale` of the area and
    /// `ratio` aspect, resized (bilinear) to `size x size`.
    RandomResizedCrop {
        size: usize,
        #[serde(default = "default_rrc_scale")]
        scale: [f64; 2],
        #[serde(default = "default_rrc_ratio")]
        ratio: [f64; 2],
    },
    /// torchvision's `ColorJitter` (brightness, contrast, saturation), factors uniform in
    /// `[max(0, 1 - x), 1 + x]`, applied in a random order, values clamped to [0, 1].
    ColorJitter {
        #[serde(default)]
        brightness: f64,
        #[serde(default)]
        contrast: f64,
        #[serde(default)]
        saturation: f64,
    },
    /// Resize to `size = [h, w]`, or so that the shorter side is `shorter` (the longer side
    /// scaled and truncated, as torchvision), by `mode` (`"bilinear"`, antialiased as PIL
    /// and torchvision's `Resize` unless `antialias = false`; or `"nearest"`).
    Resize {
        #[serde(default)]
        size: Option<[usize; 2]>,
        #[serde(default)]
        shorter: Option<usize>,
        #[serde(default = "default_resize_mode")]
        mode: UpsampleMode,
        /// Bilinear only: each output pixel averages the input pixels it covers when
        /// shrinking (PIL's and torchvision `Resize`'s antialiasing); `false`: the four
        /// nearest pixels, as `F.interpolate(..., antialias=False)`.
        #[serde(default = "config::yes")]
        antialias: bool,
    },
    /// YOLO's (Darknet's `jitter`) random scale and translation: each side of the image
    /// moves in or out by up to `amount` of its size (uniform, drawn per side), the new
    /// window is cut (the outside filled with grey 0.5), and boxes follow. The size varies:
    /// follow it with a resize. Use it before `normalize`.
    RandomJitter {
        #[serde(default = "default_jitter")]
        amount: f64,
    },
    /// YOLO's exposure and saturation jitter in HSV: V and S are multiplied by a factor
    /// drawn uniformly in [1, x] and inverted with probability 1/2 (Darknet's
    /// `rand_scale`), then clamped to [0, 1]. RGB images in [0, 1]: before `normalize`.
    Hsv {
        #[serde(default = "default_hsv")]
        exposure: f64,
        #[serde(default = "default_hsv")]
        saturation: f64,
    },
    /// AlexNet's PCA colour augmentation: add `sum_j eigvec[c][j] * alpha_j * eigval[j]` to
    /// channel `c` of every pixel, `alpha_j ~ N(0, std)` drawn per image.
    PcaColorJitter {
        #[serde(default = "default_pca_std")]
        std: f64,
        #[serde(default = "imagenet_eigval")]
        eigval: [f64; 3],
        #[serde(default = "imagenet_eigvec")]
        eigvec: [[f64; 3]; 3],
    },
}

/// torchvision's shorter-side resize: the short side becomes `s`, the long side
/// `floor(s * long / short)`.
pub fn resized_shorter(h: usize, w: usize, s: usize) -> (usize, usize) {
    if h <= w {
        (s, s * w / h)
    } else {
        (s * h / w, s)
    }
}

fn default_rrc_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_rrc_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

fn default_resize_mode() -> UpsampleMode {
    UpsampleMode::Bilinear
}

fn default_jitter() -> f64 {
    0.2
}
fn default_hsv() -> f64 {
    1.5
}

fn default_pca_std() -> f64 {
    0.1
}

/// The ImageNet RGB covariance's eigenvalues and eigenvectors (one column per component)
/// used by AlexNet-style training (as in fb.resnet.torch), for pixels scaled to [0, 1].
fn imagenet_eigval() -> [f64; 3] {
    [0.2175, 0.0188, 0.0045]
}
fn imagenet_eigvec() -> [[f64; 3]; 3] {
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
}

impl AugmentOp {
    /// The op's name in config files.
    pub fn name(&self) -> &'static str {
        match self {
            AugmentOp::Normalize { .. } => "normalize",
            AugmentOp::RandomCrop { .. } => "random_crop",
            AugmentOp::Hflip { .. } => "hflip",
            AugmentOp::Vflip { .. } => "vflip",
            AugmentOp::CenterCrop { .. } => "center_crop",
            AugmentOp::Resize { .. } => "resize",
            AugmentOp::RandomResizedCrop { .. } => "random_resized_crop",
            AugmentOp::ColorJitter { .. } => "color_jitter",
            AugmentOp::PcaColorJitter { .. } => "pca_color_jitter",
            AugmentOp::RandomJitter { .. } => "random_jitter",
            AugmentOp::Hsv { .. } => "hsv",
        }
    }

    /// The image shape `[c, h, w]` after this op, or why the op cannot take `input`.
    pub fn out_shape(&self, input: [usize; 3]) -> std::result::Result<[usize; 3], String> {
        let [c, h, w] = input;
        match self {
            AugmentOp::Normalize { mean, std } => {
                if mean.len() != c || std.len() != c {
                    return Err(format!(
                        "mean and std need {c} values (one per channel), have {} and {}",
                        mean.len(),
                        std.len()
                    ));
                }
                if std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
                    return Err(format!("std values must be > 0, are {std:?}"));
                }
                Ok(input)
            }
            AugmentOp::RandomCrop { size, padding, pad_mode } => {
                if *pad_mode == PadMode::Reflect && ((h > 0 && *padding >= h) || (w > 0 && *padding >= w)) {
                    return Err(format!("reflect padding {padding} must be smaller than the image {h}x{w}"));
                }
                // h or w = 0: images of varying size, checked per image when loaded.
                let fits = |d: usize| d == 0 || *size <= d + 2 * padding;
                if *size == 0 || !fits(h) || !fits(w) {
                    return Err(format!(
                        "size {size} does not fit the padded image {}x{}",
                        h + 2 * padding,
                        w + 2 * padding
                    ));
                }
                Ok([c, *size, *size])
            }
            AugmentOp::Hflip { p } | AugmentOp::Vflip { p } => {
                if !(0.0..=1.0).contains(p) {
                    return Err(format!("p must be in [0, 1], is {p}"));
                }
                Ok(input)
            }
            AugmentOp::Resize { size, shorter, .. } => match (size, shorter) {
                (Some([rh, rw]), None) if *rh > 0 && *rw > 0 => Ok([c, *rh, *rw]),
                (None, Some(s)) if *s > 0 => {
                    if h == 0 || w == 0 {
                        return Ok([c, 0, 0]);
                    }
                    let (nh, nw) = resized_shorter(h, w, *s);
                    Ok([c, nh, nw])
                }
                _ => Err("give exactly one of size = [h, w] or shorter (both > 0)".into()),
            },
            AugmentOp::RandomResizedCrop { size, scale, ratio } => {
                if *size == 0 {
                    return Err("size must be > 0".into());
                }
                if !(0.0 < scale[0] && scale[0] <= scale[1] && scale[1] <= 1.0) {
                    return Err(format!("scale must be 0 < min <= max <= 1, is {scale:?}"));
                }
                if !(0.0 < ratio[0] && ratio[0] <= ratio[1]) {
                    return Err(format!("ratio must be 0 < min <= max, is {ratio:?}"));
                }
                Ok([c, *size, *size])
            }
            AugmentOp::ColorJitter { brightness, contrast, saturation } => {
                if [brightness, contrast, saturation].iter().any(|v| !(**v >= 0.0 && v.is_finite())) {
                    return Err("brightness, contrast and saturation must be >= 0".into());
                }
                if *saturation > 0.0 && c != 3 {
                    return Err(format!("saturation needs 3 (RGB) channels, the image has {c}"));
                }
                Ok(input)
            }
            AugmentOp::CenterCrop { size } => {
                let fits = |d: usize| d == 0 || *size <= d;
                if *size == 0 || !fits(h) || !fits(w) {
                    return Err(format!("size {size} does not fit the image {h}x{w}"));
                }
                Ok([c, *size, *size])
            }
            AugmentOp::RandomJitter { amount } => {
                if !(0.0..0.5).contains(amount) {
                    return Err(format!("amount must be in [0, 0.5), is {amount}"));
                }
                Ok([c, 0, 0])
            }
            AugmentOp::Hsv { exposure, saturation } => {
                if c != 3 {
                    return Err(format!("needs 3 (RGB) channels, the image has {c}"));
                }
                if !(*exposure >= 1.0 && exposure.is_finite() && *saturation >= 1.0 && saturation.is_finite()) {
                    return Err(format!("exposure and saturation must be >= 1, are {exposure} and {saturation}"));
                }
                Ok(input)
            }
            AugmentOp::PcaColorJitter { std, .. } => {
                if c != 3 {
                    return Err(format!("needs 3 (RGB) channels, the image has {c}"));
                }
                if !(*std >= 0.0 && std.is_finite()) {
                    return Err(format!("std must be >= 0, is {std}"));
                }
                Ok(input)
            }
        }
    }
}
