//! The plan: a loaded config checked as a whole before any tensor exists.
//!
//! Shapes are inferred, the dataset is located, the device resolved, and every value that
//! can be wrong is checked here with the file and key it came from. `runner check` stops
//! after the plan and prints it.

// `!(x > 0.0)` is written on purpose: it rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::fmt::Write as _;

use anyhow::Result;

use crate::config::load::ConfigError;
use crate::config::{
    AugmentOp, DataConfig, InitConfig, Kernels, LayerKind, Loaded, MetricsConfig, Precision, TrainConfig, Tta,
};
use crate::data::Located;
use crate::device::DeviceChoice;
use crate::metrics::Binary;
use crate::model::{Model, PlannedGraph};
use crate::ops::kernels;
use crate::optim::Hyper;
use crate::schedule::Position;
use crate::task::{self, Head, Problem, Task};
use crate::{device, schedule};

pub struct Plan {
    pub experiment: String,
    pub seed: u64,
    /// Parsed from `experiment.device`: `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: DeviceChoice,
    /// `experiment.precision`: what the model's products compute in.
    pub precision: Precision,
    /// `experiment.kernels`: the widest CPU kernels or the portable ones.
    pub kernels: Kernels,
    /// `[log] tensorboard`: the run also writes TensorBoard event files (`tb/`).
    pub tensorboard: bool,
    pub data: DataConfig,
    pub located: Located,
    pub classes: Vec<String>,
    pub augment_train: Vec<AugmentOp>,
    pub augment_test: Vec<AugmentOp>,
    pub graph: PlannedGraph,
    /// Each group's `init`, with its file resolved: `(group, init, file)`.
    pub inits: Vec<(String, InitConfig, std::path::PathBuf)>,
    /// The positive class and threshold of binary metrics.
    pub binary: Binary,
    /// Learning-rate and weight-decay multipliers by parameter name (absent: 1).
    pub hypers: std::collections::BTreeMap<String, Hyper>,
    /// The model's input `[c, h, w]`: what the training augmentations produce.
    pub input: [usize; 3],
    /// Test samples after the test augmentations: the input, or larger for ten-crop TTA.
    pub test_shape: [usize; 3],
    pub tta: Tta,
    pub train: TrainConfig,
    pub metrics: MetricsConfig,
    /// What the model learns, with its loss and metrics.
    pub task: Task,
    /// Things that will not stop a run but that a user should know.
    pub warnings: Vec<String>,
}

mod bounds;
mod checks;
mod steps;

use checks::{check_metrics, check_train};

/// Collects problems with the file each key came from.
pub(crate) struct Problems<'a> {
    loaded: &'a Loaded,
    list: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, key: &str, msg: impl std::fmt::Display) {
        let source = self.loaded.source_of_key(key);
        let source = if source == "default" { "default value".to_string() } else { source };
        self.list.push(format!("{source}: key `{key}`: {msg}"));
    }

    /// The task's own problems, each with the file of its key (the model's for its head).
    fn task(&mut self, found: task::Problems) {
        for problem in found.0 {
            match problem {
                Problem::Key(key, msg) => self.add(&key, msg),
                Problem::Head(head, msg) => self.list.push(format!(
                    "{}: key `{}` ({}): {msg}",
                    self.loaded.source_of_key("model.groups"),
                    head.key,
                    head.path
                )),
            }
        }
    }
}

pub fn plan(loaded: &Loaded) -> Result<Plan> {
    plan_with(loaded, true)
}

/// The plan for work that needs the model but not the dataset (`runner predict`): a missing
/// dataset is not a problem, and an image folder's class names are then unknown.
pub fn plan_without_data(loaded: &Loaded) -> Result<Plan> {
    plan_with(loaded, false)
}

fn plan_with(loaded: &Loaded, need_data: bool) -> Result<Plan> {
    let cfg = &loaded.config;
    let mut p = Problems { loaded, list: Vec::new() };
    let mut warnings = Vec::new();
    let device = steps::experiment(&mut p, cfg);
    let (spec, located) = steps::data(&mut p, &mut warnings, cfg, need_data);
    let split_shapes = steps::augment_shapes(&mut p, &mut warnings, cfg, &spec);
    let graph = steps::model(&mut p, &mut warnings, cfg);
    let inits = steps::inits(&mut p, &mut warnings, cfg);
    steps::freeze(&mut p, &mut warnings, cfg, graph.as_ref());
    // The task, from `[task]`, the dataset's classes and the model's last layer; its own
    // checks' problems are reported after the shapes'.
    let head = graph.as_ref().and_then(|g| g.layers().last()).map(|l| Head {
        key: l.key.clone(),
        path: l.path.clone(),
        shape: l.out_shape.clone(),
    });
    let mut task_problems = task::Problems::default();
    let task = Task::resolve(cfg, spec.name, &spec.classes, head.as_ref(), &mut task_problems);
    steps::input_shapes(&mut p, cfg, &spec, &split_shapes, graph.as_ref(), &task);
    p.task(task_problems);

    check_train(&mut p, &cfg.train);
    let n_classes = task.num_classes(graph.as_ref().and_then(|g| g.out_shape().first().copied()).unwrap_or(0));
    let binary = check_metrics(&mut p, cfg, &task, n_classes, &spec.classes, &mut warnings);
    let mut hypers = std::collections::BTreeMap::new();
    if let Some(graph) = &graph {
        match param_hypers(graph, &cfg.train) {
            Ok(h) => hypers = h,
            Err((key, e)) => p.add(&key, e),
        }
    }

    if !p.list.is_empty() {
        return Err(ConfigError { problems: p.list }.into());
    }
    let mut plan = Plan {
        experiment: cfg.experiment.name.clone(),
        seed: cfg.experiment.seed,
        device,
        precision: cfg.experiment.precision,
        kernels: cfg.experiment.kernels,
        tensorboard: cfg.log.tensorboard,
        data: cfg.data.clone(),
        located,
        classes: spec.classes.clone(),
        augment_train: cfg.augment.train.clone(),
        augment_test: cfg.augment.test.clone(),
        graph: graph.ok_or_else(|| anyhow::anyhow!("the model did not plan"))?,
        inits,
        hypers,
        binary,
        input: [cfg.model.input[0], cfg.model.input[1], cfg.model.input[2]],
        test_shape: split_shapes[1].1,
        tta: cfg.eval.tta,
        train: cfg.train.clone(),
        metrics: cfg.metrics.clone(),
        task,
        warnings,
    };
    let all = plan.num_params();
    let empty: Vec<usize> = (0..plan.train.epochs)
        .filter(|&e| all > 0 && plan.frozen_at(e).len() == plan.graph.param_shapes().len())
        .collect();
    if !empty.is_empty() {
        plan.warnings.push(format!(
            "train.freeze: every parameter is frozen in {} of {} epochs: nothing trains then",
            empty.len(),
            plan.train.epochs
        ));
    }
    Ok(plan)
}

/// Each parameter's multipliers from `[[train.param_groups]]` (a later group wins) and
/// `no_weight_decay_on`; an unknown path is `(key, message)`.
fn param_hypers(
    graph: &PlannedGraph,
    train: &TrainConfig,
) -> std::result::Result<std::collections::BTreeMap<String, Hyper>, (String, String)> {
    let mut out: std::collections::BTreeMap<String, Hyper> =
        graph.param_shapes().into_keys().map(|n| (n, Hyper::default())).collect();
    for (i, g) in train.param_groups.iter().enumerate() {
        let key = format!("train.param_groups[{i}]");
        if !(g.lr_mult >= 0.0) || !(g.weight_decay_mult >= 0.0) {
            return Err((key, "lr_mult and weight_decay_mult must be >= 0".into()));
        }
        for path in &g.paths {
            for name in graph.params_under(path).map_err(|e| (format!("{key}.paths"), e))? {
                out.insert(name, Hyper { lr_mult: g.lr_mult, wd_mult: g.weight_decay_mult });
            }
        }
    }
    let batchnorm: Vec<String> = graph
        .layers()
        .filter(|l| matches!(l.kind, LayerKind::Batchnorm { .. }))
        .flat_map(|l| l.params.iter().map(move |(n, _)| format!("{}.{n}", l.path)))
        .collect();
    for what in &train.no_weight_decay_on {
        let names: Vec<String> = match what.as_str() {
            "bias" => out.keys().filter(|n| n.ends_with(".bias")).cloned().collect(),
            "batchnorm" => batchnorm.clone(),
            path => graph
                .params_under(path)
                .map_err(|e| ("train.no_weight_decay_on".to_string(), format!("`bias`, `batchnorm` or a path: {e}")))?,
        };
        for n in names {
            if let Some(h) = out.get_mut(&n) {
                h.wd_mult = 0.0;
            }
        }
    }
    Ok(out)
}

impl Plan {
    /// The plan's model (its graph, seed and precision) on `device`; a bf16 model says so
    /// (training, resuming, evaluating and predicting all make theirs here).
    pub fn model(&self, device: &candle_core::Device) -> candle_core::Result<Model> {
        if self.precision == Precision::Bf16 {
            device::check_bf16(device).map_err(candle_core::Error::Msg)?;
            tracing::info!("precision bf16: convolutions and linear layers in bf16, weights and the rest in f32");
        }
        Ok(Model::new(&self.graph, self.seed, device)?.with_precision(self.precision))
    }

    /// Sets the CPU kernels the plan asks for (`experiment.kernels`, or `RUNNER_KERNELS=
    /// portable`) and opens its device: what every command that runs the model starts with.
    pub fn open_device(&self) -> anyhow::Result<candle_core::Device> {
        let portable = self.kernels == Kernels::Portable;
        let level = kernels::set_portable(portable).map_err(anyhow::Error::msg)?;
        tracing::debug!("CPU kernels: {level}");
        self.device.open()
    }

    /// The learning rate at `pos`: the optimizer's `lr` through the schedule and warm-up.
    /// The plan owns it: the loop asks here and hands the value to the optimizer's step.
    pub fn lr(&self, pos: Position) -> f64 {
        schedule::lr_at(&self.train, self.train.optimizer.lr(), pos)
    }

    /// The classes the metrics count: the model's outputs when classifying, the dataset's
    /// when detecting.
    pub fn num_classes(&self) -> usize {
        self.task.num_classes(self.graph.out_shape().first().copied().unwrap_or(0))
    }

    pub fn num_params(&self) -> usize {
        self.graph.num_params()
    }

    /// The parameters frozen during `epoch` (0-based), by name.
    pub fn frozen_at(&self, epoch: usize) -> std::collections::BTreeSet<String> {
        let mut out = self.graph.fixed_params();
        for rule in self.train.freeze.iter().filter(|r| r.active(epoch)) {
            for path in &rule.groups {
                out.extend(self.graph.params_under(path).unwrap_or_default());
            }
        }
        out
    }

    /// The model table (Darknet's start-up table) and totals: per layer its path, kind,
    /// output shape, parameters, multiply-adds per image, and whether it trains in the
    /// first epoch (with the epochs it is frozen when a freeze schedule names it).
    pub fn summary(&self) -> String {
        let frozen_by_epoch: Vec<_> = (0..self.train.epochs).map(|e| self.frozen_at(e)).collect();
        graph_table(&self.graph, &frozen_by_epoch)
    }
}

/// The model table: per layer its path, kind, output shape, parameters, multiply-adds per
/// image and whether it trains (or in which epochs it is frozen, `frozen_by_epoch[e]` being
/// the frozen parameter names of epoch e); then the totals.
pub fn graph_table(graph: &PlannedGraph, frozen_by_epoch: &[std::collections::BTreeSet<String>]) -> String {
    // A model file alone: only the layers that never train are frozen.
    let fixed = [graph.fixed_params()];
    let frozen_by_epoch = if frozen_by_epoch.is_empty() { &fixed[..] } else { frozen_by_epoch };
    let epochs = frozen_by_epoch.len();
    let shapes = graph.param_shapes();
    let count = |names: &std::collections::BTreeSet<String>| -> usize {
        shapes.iter().filter(|(n, _)| names.contains(*n)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    let mut s = String::new();
    let _ =
        writeln!(s, "{:<22} {:<16} {:<16} {:>10} {:>14}  trainable", "path", "layer", "output", "params", "mult-adds");
    for l in graph.layers() {
        let shape = format!("{:?}", l.out_shape);
        let params = l.num_params();
        let names: Vec<String> = l.params.iter().map(|(n, _)| format!("{}.{n}", l.path)).collect();
        let frozen_epochs: Vec<usize> =
            (0..epochs).filter(|e| names.iter().any(|n| frozen_by_epoch[*e].contains(n))).collect();
        let trainable = if params == 0 {
            "-".to_string()
        } else if frozen_epochs.is_empty() {
            "yes".to_string()
        } else if frozen_epochs.len() == epochs {
            "frozen".to_string()
        } else {
            format!("frozen in epochs {}", ranges(&frozen_epochs))
        };
        let kind = if l.conv_kernel.is_some() { "linear (as conv)" } else { l.kind.name() };
        let _ = writeln!(s, "{:<22} {:<16} {:<16} {:>10} {:>14}  {}", l.path, kind, shape, params, l.macs, trainable);
    }
    let n = graph.num_params();
    let _ = writeln!(s, "mult-adds per image: {}", graph.macs());
    let _ = writeln!(s, "params: {n}");
    let first: usize = frozen_by_epoch.first().map(count).unwrap_or(0);
    let _ = writeln!(s, "trainable: {}", n - first);
    let mut changes = Vec::new();
    for e in 1..epochs {
        if frozen_by_epoch[e] != frozen_by_epoch[e - 1] {
            changes.push(format!("from epoch {e}: {}", n - count(&frozen_by_epoch[e])));
        }
    }
    if !changes.is_empty() {
        let _ = writeln!(s, "trainable {}", changes.join(", "));
    }
    s
}

/// `[0, 1, 2, 5]` -> `0-2, 5`.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(", ")
}
