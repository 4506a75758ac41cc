//! The experiment configuration as written by the user: serde structs, one per TOML section.
//!
//! Every section denies unknown keys; defaults live here, in one place. Loading, merging
//! (`extends`, environment, `--set`) and error reporting live in [`load`]. Nothing here
//! validates values against each other: that is the plan's job (`crate::plan`).

pub mod augment;
pub mod coco;
pub mod layers;
pub mod load;
pub mod metric_name;
pub mod sweep;
pub mod task;
pub mod voc;

use serde::{Deserialize, Serialize};

pub use augment::{resized_shorter, AugmentConfig, AugmentOp, PadMode};
pub use coco::{CocoConfig, CocoSplit, YoloConfig};
pub use layers::{KernelInit, Layer, LayerKind, UpsamplePlan, LAYER_NAMES};
pub use load::{load, LoadOptions, Loaded};
pub use metric_name::{metric_names, MetricName, Mode, COCO_METRICS};
pub use sweep::{Distribution, EarlyStop, StopRule, SweepConfig};
pub use task::{DetectConfig, LocalizeConfig, Merge, Reduction, SegmentConfig, TaskConfig};
pub use voc::{Synthetic, VocConfig, VocSplit};

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
    /// What the model learns: classes (the default), boxes, ... (`[task.detect]`).
    #[serde(default, skip_serializing_if = "TaskConfig::is_classify")]
    pub task: TaskConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `runner sweep`'s grid; a plain run ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepConfig>,
    /// `[log]`: what a run writes beside its tables.
    #[serde(default, skip_serializing_if = "LogConfig::is_default")]
    pub log: LogConfig,
}

/// `[train] ema = { decay = 0.9999, warmup = true }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// The average's decay per optimizer step, in (0, 1).
    #[serde(default = "default_ema_decay")]
    pub decay: f64,
    /// Ultralytics' ramp: `decay * (1 - exp(-updates / tau))`.
    #[serde(default = "yes")]
    pub warmup: bool,
    /// The ramp's time constant in optimizer steps.
    #[serde(default = "default_ema_tau")]
    pub tau: f64,
}

fn default_ema_decay() -> f64 {
    0.9999
}
fn default_ema_tau() -> f64 {
    2000.0
}

/// `[log]`: what a run writes beside its tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// TensorBoard event files in `tb/` of the run folder: every scalar of metrics.parquet,
    /// the config as text, the plots as images (`tensorboard --logdir runs`).
    #[serde(default = "yes")]
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { tensorboard: true }
    }
}

impl LogConfig {
    pub fn is_default(&self) -> bool {
        *self == LogConfig::default()
    }
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
    /// What the convolutions and linear layers compute in (absent from the resolved config
    /// when f32, so configs written before it keep their hash).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Which CPU kernels run (absent from the resolved config when `auto`, so configs
    /// written before it keep their hash).
    #[serde(default, skip_serializing_if = "Kernels::is_auto")]
    pub kernels: Kernels,
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

/// The arithmetic of the model's products (`[experiment] precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed: convolutions, transposed convolutions and linear layers take their input and
    /// weight rounded to bf16 and give a bf16 output (sums in f32, as a GPU's tensor cores
    /// do), which goes back to f32 for the next layer. Weights, the optimizer, batch norm,
    /// pooling and the loss stay f32; the weights' gradients are f32 of bf16 precision. bf16
    /// has f32's exponent range: no loss scaling.
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

/// The CPU kernels a run asks for (`[experiment] kernels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// The widest the CPU has, chosen at run time: AVX-512 where present, else AVX2+FMA.
    /// Results are the same bits on the same machine, not across CPUs of other levels.
    #[default]
    Auto,
    /// AVX2+FMA on every x86-64 CPU: the same bits on all of them (slower where the CPU
    /// has AVX-512). `RUNNER_KERNELS=portable` forces it for every run of a process.
    Portable,
}

impl Kernels {
    pub fn is_auto(&self) -> bool {
        *self == Kernels::Auto
    }
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
    /// Pascal VOC's `VOCdevkit/VOC<year>/` folders (or any set in that layout): boxes from
    /// `Annotations/*.xml`, splits from `ImageSets/Main/<image_set>.txt`.
    Voc,
    /// COCO's layout: an instances JSON and an image folder per split (`[data.coco]`).
    Coco,
    /// Ultralytics' YOLO layout: `images/<split>/` and `labels/<split>/*.txt` (`[data.yolo]`).
    Yolo,
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
    /// Threads that decode and augment batches (results do not depend on it); 0, the
    /// default, chooses for the device (`train::loader_workers`).
    #[serde(default)]
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
    /// `voc`: the years and image sets of each split, and the class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voc: Option<VocConfig>,
    /// `coco`: each split's instances JSON and image folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coco: Option<CocoConfig>,
    /// `yolo`: each split's image folder, and the class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yolo: Option<YoloConfig>,
}

impl DataConfig {
    /// `[data.voc]` as configured, or its defaults.
    pub fn voc(&self) -> std::borrow::Cow<'_, VocConfig> {
        match &self.voc {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(VocConfig::default()),
        }
    }

    /// `[data.coco]` as configured, or its defaults (COCO 2017's files).
    pub fn coco(&self) -> std::borrow::Cow<'_, CocoConfig> {
        match &self.coco {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(CocoConfig::default()),
        }
    }

    /// `[data.yolo]` as configured, or its defaults.
    pub fn yolo(&self) -> std::borrow::Cow<'_, YoloConfig> {
        match &self.yolo {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(YoloConfig::default()),
        }
    }

    /// The synthetic set written into a missing folder (`generate` of `[data.voc]`,
    /// `[data.coco]` or `[data.yolo]`, whichever is the dataset's).
    pub fn generate(&self) -> Option<Synthetic> {
        match self.dataset {
            DatasetKind::Voc => self.voc().generate,
            DatasetKind::Coco => self.coco().generate,
            DatasetKind::Yolo => self.yolo().generate,
            _ => None,
        }
    }
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
    /// An `init` per group name, used instead of the group's own: how an experiment starts
    /// a model file's groups from pretrained weights without copying the groups
    /// (`[model.inits] features = { url = "..." }`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inits: std::collections::BTreeMap<String, InitConfig>,
    /// `false`: every group starts from its random initialisation, the groups' `init` and
    /// `model.inits` ignored (training from scratch, to compare with a pretrained start).
    #[serde(default = "yes")]
    pub pretrained: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            input: Vec::new(),
            groups: Vec::new(),
            fully_convolutional: false,
            inits: std::collections::BTreeMap::new(),
            pretrained: true,
        }
    }
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

impl InitConfig {
    /// For `url`: the SHA-256 (prefix) the file must have, from `sha256` or from the file
    /// name's `-<hex>.` part (torchvision's convention: at least 8 hex digits).
    pub fn expected_sha256(&self) -> Option<String> {
        if let Some(h) = &self.sha256 {
            return Some(h.to_ascii_lowercase());
        }
        let name = self.url.as_deref()?.rsplit('/').next()?;
        let stem = name.split('.').next()?;
        let hex = stem.rsplit('-').next()?;
        (hex.len() >= 8 && stem.contains('-') && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase())
    }

    /// Where `url`'s file is kept: `<cache>/weights/<file name>`.
    pub fn cached_path(&self) -> Option<std::path::PathBuf> {
        let name = self.url.as_deref()?.rsplit('/').next().filter(|n| !n.is_empty())?;
        let cache = match std::env::var_os("RUNNER_CACHE") {
            Some(dir) => std::path::PathBuf::from(dir),
            None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/runner"),
        };
        Some(cache.join("weights").join(name))
    }
}

impl ModelConfig {
    /// Forgets every group's `init`: for work whose whole model comes from one weights file
    /// (a checkpoint, `--weights`), where the groups' own files are not needed.
    pub fn drop_inits(&mut self) {
        for g in &mut self.groups {
            g.init = None;
        }
        self.inits.clear();
    }

    /// Each group's `init` as the run uses it: `(group index, the key that set it, init)`;
    /// none when `pretrained = false`.
    pub fn group_inits(&self) -> Vec<(usize, String, &InitConfig)> {
        if !self.pretrained {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            match (self.inits.get(&group.name), &group.init) {
                (Some(init), _) => out.push((g, format!("model.inits.{}", group.name), init)),
                (None, Some(init)) => out.push((g, format!("model.groups[{g}].init"), init)),
                (None, None) => {}
            }
        }
        out
    }
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Instead of `file`: the `model.safetensors` of the newest completed run under this
    /// folder (`runs/<experiment>`, from the working folder, as `output_dir`), or of this
    /// run folder itself: a later step of a recipe starting from an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Instead of `file`: weights fetched once from this address into the cache folder
    /// (`RUNNER_CACHE`, else `~/.cache/runner`, `weights/<file name>`), checked against
    /// `sha256` or, without it, the SHA-256 prefix a torchvision-style name carries
    /// (`vgg16-397923af.pth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The SHA-256 of the file at `url` (or its first hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
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
    /// The learning rate over training, as a factor of (or, for `piecewise`, instead of)
    /// the optimizer's `lr`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Evaluate step, multistep, exponential, cosine and polynomial schedules at every
    /// step (fractional epochs) instead of once per epoch (PyTorch's usual `scheduler.step()`
    /// after each epoch).
    #[serde(default)]
    pub schedule_per_step: bool,
    /// Linear warm-up, multiplied with the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfig>,
    /// An exponential moving average of the weights, used for evaluation, `model.safetensors`
    /// and prediction (`optim::ema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
    /// `[[train.param_groups]]`: learning-rate and weight-decay multipliers by dotted path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_groups: Vec<ParamGroupConfig>,
    /// No weight decay for these: `"bias"` (every bias), `"batchnorm"` (batch norm weights
    /// and biases), or dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_weight_decay_on: Vec<String>,
    /// Sum the gradients of N batches before each optimizer step (Darknet's subdivisions).
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Scale the gradients so that their global L2 norm is at most this (0 = off).
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Cross-entropy against (1 - e) * one-hot + e / classes (PyTorch's `label_smoothing`).
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingConfig>,
}

/// A schedule as written: a table `{ cosine = { eta_min = 0.001 } }`, or the bare name of a
/// kind whose keys all have defaults: `"constant"`, `"cosine"`, `"polynomial"`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule(pub ScheduleConfig);

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Schedule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a schedule such as \"cosine\" or { multistep = { milestones = [30, 60] } }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Schedule, E> {
                if s == "constant" {
                    return Ok(Schedule(ScheduleConfig::Constant));
                }
                // The short form is the table form with every key at its default.
                let mut table = figment::value::Dict::new();
                table.insert(s.to_string(), figment::value::Dict::new().into());
                figment::value::Value::from(table).deserialize::<ScheduleConfig>().map(Schedule).map_err(|e| {
                    E::custom(format!("schedule \"{s}\": {} (kinds with required keys are tables)", e.kind))
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Schedule, A::Error> {
                ScheduleConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Schedule)
            }
        }
        d.deserialize_any(V)
    }
}

/// `schedule = { multistep = { milestones = [82, 123], gamma = 0.1 } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// The optimizer's `lr` throughout.
    #[default]
    Constant,
    /// `lr * gamma^floor(epoch / step_size)` (PyTorch's `StepLR`).
    Step {
        step_size: usize,
        #[serde(default = "tenth")]
        gamma: f64,
    },
    /// `lr * gamma^(milestones passed)` (`MultiStepLR`).
    Multistep {
        milestones: Vec<usize>,
        #[serde(default = "tenth")]
        gamma: f64,
    },
    /// `lr * gamma^epoch` (`ExponentialLR`).
    Exponential { gamma: f64 },
    /// `eta_min + (lr - eta_min) (1 + cos(pi epoch / t_max)) / 2` (`CosineAnnealingLR`;
    /// `t_max` defaults to the number of epochs).
    Cosine {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t_max: Option<f64>,
        #[serde(default)]
        eta_min: f64,
    },
    /// `(lr - end_lr) (1 - min(epoch, total) / total)^power + end_lr` (`PolynomialLR`).
    Polynomial {
        #[serde(default = "one_f")]
        power: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        #[serde(default)]
        end_lr: f64,
    },
    /// Learning rates at epochs `[[epoch, lr], ...]` (epochs not decreasing), linear or
    /// constant in between, evaluated at fractional epochs; a repeated epoch is a jump. The
    /// optimizer's `lr` is not used.
    Piecewise {
        points: Vec<[f64; 2]>,
        #[serde(default)]
        interpolate: Interpolate,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolate {
    #[default]
    Linear,
    Constant,
}

/// `warmup = { epochs = 1, start_factor = 0.1 }`: the factor goes linearly from
/// `start_factor` to 1 over `epochs` (fractional; per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    pub epochs: f64,
    #[serde(default = "default_start_factor")]
    pub start_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupConfig {
    pub paths: Vec<String>,
    #[serde(default = "one_f")]
    pub lr_mult: f64,
    #[serde(default = "one_f")]
    pub weight_decay_mult: f64,
}

/// `[train.checkpoint]`: what is kept in the run's `checkpoints/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The last N epochs' checkpoints (>= 1: resume needs the last).
    #[serde(default = "one")]
    pub keep_last: usize,
    /// Also keep `best`, by this metric (`test.accuracy`, `test.loss`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<String>,
    /// `max` or `min`; by default `min` for loss and error metrics, `max` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { keep_last: 1, best: None, mode: None }
    }
}

/// `[train.early_stopping]`: stop when `metric` has not improved for `patience` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    pub metric: String,
    pub patience: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub min_delta: f64,
}

fn tenth() -> f64 {
    0.1
}
fn one_f() -> f64 {
    1.0
}
fn default_start_factor() -> f64 {
    1.0 / 3.0
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
    /// PyTorch's `torch.optim.AdamW` (decoupled weight decay: `p -= lr * wd * p`).
    Adamw {
        #[serde(default = "default_adam_lr")]
        lr: f64,
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The configured learning rate, before any schedule.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Adamw { lr, .. } => {
                *lr
            }
        }
    }
}

fn default_adamw_wd() -> f64 {
    1e-2
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Per split; absent: the task's default ([`MetricsConfig::fill_defaults`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Vec<MetricName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<MetricName>>,
    /// The positive class for `tp_rate`, `fp_rate` and binary `roc` / `roc_auc`: a class
    /// name or index (default: index 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive: Option<ClassRef>,
    /// A sample is predicted positive when the positive class's probability is at least this.
    #[serde(default = "half_f")]
    pub threshold: f64,
}

/// A class by index (`1`) or by name (`"Shirt"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassRef {
    Index(usize),
    Name(String),
}

fn half_f() -> f64 {
    0.5
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { train: None, test: None, positive: None, threshold: 0.5 }
    }
}

impl MetricsConfig {
    /// Sets the lists left out to `task`'s defaults ([`TaskConfig::default_metrics`]).
    pub fn fill_defaults(&mut self, task: &TaskConfig) {
        let (train, test) = task.default_metrics();
        self.train.get_or_insert(train);
        self.test.get_or_insert(test);
    }

    pub fn train(&self) -> &[MetricName] {
        self.train.as_deref().unwrap_or_default()
    }

    pub fn test(&self) -> &[MetricName] {
        self.test.as_deref().unwrap_or_default()
    }
}
