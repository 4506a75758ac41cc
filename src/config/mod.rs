//! The experiment configuration as written by the user: serde structs, one per TOML section.
//!
//! Every section denies unknown keys; defaults live here, in one place. Loading, merging
//! (`extends`, environment, `--set`) and error reporting live in [`load`]. Nothing here
//! validates values against each other: that is the plan's job (`crate::plan`).

pub mod load;

use serde::{Deserialize, Serialize};

pub use load::{load, LoadOptions, Loaded};

/// The whole experiment: what `runner EXP` reads after merging every file and override.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Files merged before this one, relative to the file that names them. Consumed while
    /// loading; kept here so that a merged config still deserializes.
    #[serde(default)]
    pub extends: Vec<String>,
    pub experiment: ExperimentConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// How the test split is evaluated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default)]
    pub tta: Tta,
}

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// One forward pass per test image.
    #[default]
    None,
    /// The four corner crops and the centre crop of the model's input size, and the same of
    /// the mirror image; the ten softmax outputs are averaged (AlexNet, the course).
    TenCrop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Names the run folder `runs/<name>/<run-id>/`.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    /// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Where run folders go.
    #[serde(default = "default_output_dir")]
    pub output_dir: String,
    /// Published results to print beside ours, e.g. `{ "test.accuracy" = 0.91 }`.
    #[serde(default)]
    pub reference: std::collections::BTreeMap<String, f64>,
    /// Where `reference` comes from (a paper, a course, a PyTorch run).
    #[serde(default)]
    pub reference_source: Option<String>,
}

fn default_device() -> String {
    "auto".into()
}
fn default_output_dir() -> String {
    "runs".into()
}

/// Which dataset: each kind knows its files, classes and where to fetch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    /// `root/<train_dir>/<class>/<image>` and `root/<test_dir>/<class>/<image>`.
    ImageFolder,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Folder holding the dataset's files. When absent, the usual places are searched
    /// (`data/<dataset>`, then system packages), and a download goes to `data/<dataset>`.
    #[serde(default)]
    pub root: Option<String>,
    /// Fetch missing files from the dataset's official address (or `mirror`).
    #[serde(default)]
    pub download: bool,
    /// A base URL that serves the same files under the same names, used instead of the
    /// official address. Checksums are still verified.
    #[serde(default)]
    pub mirror: Option<String>,
    pub batch_size: usize,
    /// Batch size for evaluation; defaults to `batch_size`.
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub drop_last: bool,
    /// `image_folder`: the training split's folder under `root`.
    #[serde(default = "default_train_dir")]
    pub train_dir: String,
    /// `image_folder`: the test split's folder under `root`.
    #[serde(default = "default_test_dir")]
    pub test_dir: String,
    /// `image_folder`: decode images to 1 (grey) or 3 (RGB) channels.
    #[serde(default = "three")]
    pub channels: usize,
    /// Threads that decode and augment batches (results do not depend on it).
    #[serde(default = "one")]
    pub num_workers: usize,
    /// Ready batches kept ahead of the model.
    #[serde(default = "two")]
    pub prefetch: usize,
    /// What a sample that cannot be read does: stop the run (`fail`) or be left out and
    /// counted (`skip`).
    #[serde(default)]
    pub on_error: OnError,
    /// Accepted for PyTorch familiarity; batches are staged for the device either way.
    #[serde(default)]
    pub pin_memory: bool,
    /// Use only the first N training samples (quick experiments, tests). 0 = all.
    #[serde(default)]
    pub train_limit: usize,
    /// Use only the first N test samples. 0 = all.
    #[serde(default)]
    pub test_limit: usize,
}

fn three() -> usize {
    3
}
fn default_train_dir() -> String {
    "train".into()
}
fn default_test_dir() -> String {
    "val".into()
}

fn two() -> usize {
    2
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    Skip,
}

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
    /// scaled and truncated, as torchvision), by `mode` (`"bilinear"`, align_corners = false
    /// and no antialiasing, as `F.interpolate`; or `"nearest"`).
    Resize {
        #[serde(default)]
        size: Option<[usize; 2]>,
        #[serde(default)]
        shorter: Option<usize>,
        #[serde(default = "default_resize_mode")]
        mode: String,
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

fn default_resize_mode() -> String {
    "bilinear".into()
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
            AugmentOp::Resize { size, shorter, mode } => {
                if mode != "bilinear" && mode != "nearest" {
                    return Err(format!("mode must be \"bilinear\" or \"nearest\", is {mode:?}"));
                }
                match (size, shorter) {
                    (Some([rh, rw]), None) if *rh > 0 && *rw > 0 => Ok([c, *rh, *rw]),
                    (None, Some(s)) if *s > 0 => {
                        if h == 0 || w == 0 {
                            return Ok([c, 0, 0]);
                        }
                        let (nh, nw) = resized_shorter(h, w, *s);
                        Ok([c, nh, nw])
                    }
                    _ => Err("give exactly one of size = [h, w] or shorter (both > 0)".into()),
                }
            }
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input shape `[channels, height, width]`.
    pub input: Vec<usize>,
    pub groups: Vec<GroupConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name: the first part of each weight's dotted path (`features.0.weight`).
    pub name: String,
    pub layers: Vec<Layer>,
}

/// One layer. In TOML either a table `{ conv2d = { out = 6, kernel = 5 } }` or, for a layer
/// whose keys all have defaults, its bare name: `"relu"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerKind {
    Conv2d {
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Transposed convolution (learned upsampling, as in FCN).
    ConvTranspose2d {
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        output_padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Maxpool {
        kernel: usize,
        /// Defaults to `kernel`.
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
    },
    Avgpool {
        kernel: usize,
        /// Defaults to `kernel`.
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
    },
    /// Mean over height and width: `[c, h, w]` -> `[c, 1, 1]`.
    GlobalAvgpool {},
    Relu {},
    /// `x` for x > 0, else `slope * x`.
    LeakyRelu {
        #[serde(default = "default_slope")]
        slope: f64,
    },
    Sigmoid {},
    /// Nearest or bilinear (`align_corners = false`) upsampling by an integer `scale` or to
    /// an exact `size = [h, w]`.
    Upsample {
        #[serde(default = "default_upsample_mode")]
        mode: String,
        #[serde(default)]
        scale: Option<usize>,
        #[serde(default)]
        size: Option<[usize; 2]>,
    },
    Flatten {},
    Linear {
        out: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Dropout {
        #[serde(default = "half")]
        p: f64,
    },
}

/// The layer names, for messages.
pub const LAYER_NAMES: &[&str] = &[
    "conv2d",
    "conv_transpose2d",
    "maxpool",
    "global_avgpool",
    "avgpool",
    "relu",
    "leaky_relu",
    "sigmoid",
    "upsample",
    "flatten",
    "linear",
    "dropout",
];

fn default_slope() -> f64 {
    0.01
}
fn default_upsample_mode() -> String {
    "nearest".into()
}

fn one() -> usize {
    1
}
fn half() -> f64 {
    0.5
}

/// An upsample layer's mode and output size, or why its keys do not work.
pub type UpsamplePlan = std::result::Result<(crate::ops::upsample::UpsampleMode, (usize, usize)), String>;

impl LayerKind {
    /// The mode and output size of an `upsample` layer for an input of `h x w`.
    pub fn upsample(&self, h: usize, w: usize) -> Option<UpsamplePlan> {
        use crate::ops::upsample::UpsampleMode;
        let LayerKind::Upsample { mode, scale, size } = self else { return None };
        let mode = match mode.as_str() {
            "nearest" => UpsampleMode::Nearest,
            "bilinear" => UpsampleMode::Bilinear,
            other => return Some(Err(format!("mode must be \"nearest\" or \"bilinear\", is {other:?}"))),
        };
        Some(match (scale, size) {
            (Some(s), None) if *s > 0 => Ok((mode, (h * s, w * s))),
            (None, Some([oh, ow])) if *oh > 0 && *ow > 0 => Ok((mode, (*oh, *ow))),
            _ => Err("give exactly one of scale (> 0) or size = [h, w] (> 0)".into()),
        })
    }

    /// The pooling geometry of a `maxpool` or `avgpool` layer.
    pub fn pool(&self) -> Option<(crate::ops::pool::PoolKind, crate::ops::pool::PoolGeom)> {
        use crate::ops::pool::{PoolGeom, PoolKind};
        let (kind, kernel, stride, padding, ceil_mode) = match self {
            LayerKind::Maxpool { kernel, stride, padding, ceil_mode } => {
                (PoolKind::Max, kernel, stride, padding, ceil_mode)
            }
            LayerKind::Avgpool { kernel, stride, padding, ceil_mode } => {
                (PoolKind::Avg, kernel, stride, padding, ceil_mode)
            }
            _ => return None,
        };
        Some((
            kind,
            PoolGeom { kernel: *kernel, stride: stride.unwrap_or(*kernel), padding: *padding, ceil_mode: *ceil_mode },
        ))
    }

    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::ConvTranspose2d { .. } => "conv_transpose2d",
            LayerKind::Maxpool { .. } => "maxpool",
            LayerKind::Avgpool { .. } => "avgpool",
            LayerKind::GlobalAvgpool {} => "global_avgpool",
            LayerKind::Relu {} => "relu",
            LayerKind::LeakyRelu { .. } => "leaky_relu",
            LayerKind::Sigmoid {} => "sigmoid",
            LayerKind::Upsample { .. } => "upsample",
            LayerKind::Flatten {} => "flatten",
            LayerKind::Linear { .. } => "linear",
            LayerKind::Dropout { .. } => "dropout",
        }
    }
}

/// A layer as written: the short string form or the full table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer(pub LayerKind);

impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Layer;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a layer name such as \"relu\" or a table such as { linear = { out = 10 } }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Layer, E> {
                if !LAYER_NAMES.contains(&s) {
                    return Err(E::unknown_variant(s, LAYER_NAMES));
                }
                // The short form is the table form with every key at its default.
                let mut table = figment::value::Dict::new();
                table.insert(s.to_string(), figment::value::Dict::new().into());
                figment::value::Value::from(table)
                    .deserialize::<LayerKind>()
                    .map(Layer)
                    .map_err(|e| E::custom(format!("\"{s}\" needs keys, write it as a table: {}", e.kind)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Layer, A::Error> {
                LayerKind::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Layer)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub optimizer: OptimizerConfig,
    /// Log a progress line every N batches when the output is not a terminal (0 = per epoch).
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn default_log_every() -> usize {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// PyTorch's `torch.optim.SGD`.
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        dampening: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// PyTorch's `torch.optim.Adam` (L2 weight decay added to the gradient).
    Adam {
        #[serde(default = "default_adam_lr")]
        lr: f64,
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_adam_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

/// A metric computed per epoch on a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    Loss,
    Accuracy,
    ErrorRate,
}

impl MetricName {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::Loss => "loss",
            MetricName::Accuracy => "accuracy",
            MetricName::ErrorRate => "error_rate",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics")]
    pub train: Vec<MetricName>,
    #[serde(default = "default_metrics")]
    pub test: Vec<MetricName>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { train: default_metrics(), test: default_metrics() }
    }
}

fn default_metrics() -> Vec<MetricName> {
    vec![MetricName::Loss, MetricName::Accuracy, MetricName::ErrorRate]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_list_every_layer_kind() {
        // Regression: `global_avgpool` was missing from LAYER_NAMES, so its short form
        // "global_avgpool" was rejected. serde's own variant list comes from an unknown name.
        let err = toml::from_str::<LayerKind>("bogus = {}").unwrap_err().to_string();
        let variants: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        let mut want: Vec<&str> = LAYER_NAMES.to_vec();
        let mut got = variants.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{err}");
    }
}
