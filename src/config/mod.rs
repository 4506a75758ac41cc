//! The experiment configuration as written by the user: serde structs, one per TOML section.
//!
//! Every section denies unknown keys; defaults live here, in one place. Loading, merging
//! (`extends`, environment, `--set`) and error reporting live in [`load`]. Nothing here
//! validates values against each other: that is the plan's job (`crate::plan`).

pub mod augment;
pub mod layers;
pub mod load;

use serde::{Deserialize, Serialize};

pub use augment::{resized_shorter, AugmentConfig, AugmentOp, PadMode};
pub use layers::{Layer, LayerKind, UpsamplePlan, LAYER_NAMES};
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

pub(crate) fn one() -> usize {
    1
}
pub(crate) fn half() -> f64 {
    0.5
}
pub(crate) fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input shape `[channels, height, width]`.
    pub input: Vec<usize>,
    pub groups: Vec<GroupConfig>,
    /// Run each `linear` layer that follows a spatial map as the equivalent convolution
    /// (kernel = that map's size; the course's `convolutionize`): the same weights and logits
    /// at the input size, a map of class scores on a larger image.
    #[serde(default)]
    pub fully_convolutional: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name: the first part of each weight's dotted path (`features.0.weight`).
    pub name: String,
    pub layers: Vec<Layer>,
    /// The group's layers N times in a row; weight paths become `<name>.<rep>.<layer>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<usize>,
    /// Each repetition is a residual block: its output plus its input (through a 1x1
    /// convolution and batch norm when the shape changes).
    #[serde(default, skip_serializing_if = "is_false")]
    pub residual: bool,
    /// A layer applied after the residual sum (`"relu"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Layer>,
    /// Take the output of an earlier group (or `"input"`, the image) instead of the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Weights from a file for this group's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitConfig>,
}

impl GroupConfig {
    pub fn new(name: &str, layers: Vec<Layer>) -> Self {
        GroupConfig {
            name: name.into(),
            layers,
            repeat: None,
            residual: false,
            activation: None,
            from: None,
            init: None,
        }
    }
}

/// `init = { file = "alexnet.pth", prefix = "features.0", rename = { ... } }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A safetensors file or a PyTorch state dict (`.pth`, `.pt`, `.bin`), relative to the
    /// config file that names it.
    pub file: String,
    /// The name prefix in the file that stands for this group (default: the group's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Names in the file (after the prefix) mapped to names in the group: `{ "0" = "0" }`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Every parameter of the group must be found with its shape, and nothing else under the
    /// prefix may be left over; `false` logs the differences and loads what matches.
    #[serde(default = "yes")]
    pub strict: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub optimizer: OptimizerConfig,
    /// Log a progress line every N batches when the output is not a terminal (0 = per epoch).
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// `[[train.freeze]]`: groups (or repetitions or layers, by dotted path) not trained
    /// during a range of epochs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<FreezeConfig>,
}

/// `{ groups = ["features"], from_epoch = 0, until_epoch = 25 }`: frozen for epochs
/// `from_epoch <= e < until_epoch` (counted from 0; no `until_epoch`: to the end).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FreezeConfig {
    pub groups: Vec<String>,
    #[serde(default)]
    pub from_epoch: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_epoch: Option<usize>,
}

impl FreezeConfig {
    pub fn active(&self, epoch: usize) -> bool {
        epoch >= self.from_epoch && self.until_epoch.is_none_or(|u| epoch < u)
    }
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
