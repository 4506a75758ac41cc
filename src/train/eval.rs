//! Evaluation outside the training loop's step: a whole split through the task's evaluation
//! (`evaluate`), its metrics into the run's tables (`log_metrics`) and plots
//! (`draw_plots`), and `runner eval RUN_DIR` (`eval_run`), which evaluates a saved model of a
//! finished run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;

use super::{eval_spec, images, load_data, train_spec};
use crate::config::{LoadOptions, MetricName, Tta};
use crate::data::loader::{self, LoaderSpec};
use crate::data::Split;
use crate::model::{weights, Model};
use crate::plan::Plan;
use crate::runlog::{files, MetricRow, RunLog};
use crate::task::{classify, PlotSpec, Stats};
use crate::{checkpoint, config, plan, plots};

/// `runner eval --config FILE --set KEY=VALUE`: what the evaluation reads instead of the
/// run's own config.
#[derive(Debug, Clone, Default)]
pub struct EvalOverrides {
    pub config: Option<PathBuf>,
    pub sets: Vec<String>,
}

/// `runner eval RUN_DIR`: evaluates a saved model of the run again (`checkpoint`: `best`,
/// `last` or a weights file) on `split` (`test` or `train`, through the test
/// augmentations), optionally with other test-time augmentation, and appends the metrics to
/// the run's tables under the split `<split>_eval` (`<split>_tta` with ten-crop TTA), at the
/// run's last epoch. `other.config`: the weights evaluated under another experiment file
/// (the same parameters; e.g. the model made fully convolutional over larger test images),
/// the split then named `<split>_<file stem>`; `other.sets`: overrides of either config.
/// Returns that split name and the scalar values.
pub fn eval_run(
    dir: &Path,
    checkpoint: &str,
    split: &str,
    tta: Option<Tta>,
    other: &EvalOverrides,
) -> Result<(String, BTreeMap<String, f64>)> {
    if !dir.join(files::CONFIG).is_file() || !dir.join(files::RUN).is_file() {
        bail!("{}: not a run folder (it needs config.toml and run.parquet)", dir.display());
    }
    if !["test", "train"].contains(&split) {
        bail!("--split {split}: expected test or train");
    }
    let config_path = other.config.clone().unwrap_or_else(|| dir.join(files::CONFIG));
    let mut loaded = config::load(&config_path, &LoadOptions { sets: other.sets.clone(), env: false })?;
    loaded.keep_resize_of_older_run();
    loaded.config.model.drop_inits();
    if let Some(t) = tta {
        loaded.config.eval.tta = t;
    }
    let plan = plan::plan(&loaded)?;
    let (weights, tag) = match checkpoint {
        "best" => (dir.join("checkpoints/best.safetensors"), "best".to_string()),
        "last" => match checkpoint::latest(&dir.join(files::CHECKPOINTS))? {
            Some((p, _)) => (p, String::new()),
            None => (dir.join(files::MODEL), String::new()),
        },
        path => {
            let p = PathBuf::from(path);
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let tag: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            (p, tag)
        }
    };
    if !weights.is_file() {
        let hint = match checkpoint {
            "best" => " (--checkpoint best needs [train.checkpoint] best = \"<metric>\" in the run's config)",
            "last" => " (a run writes its weights after its first finished epoch)",
            _ => "",
        };
        bail!("no weights {}{hint}", weights.display());
    }
    let device = plan.open_device()?;
    let model = plan.model(&device)?;
    weights::load_into(&model, &weights, "", "", &BTreeMap::new(), true)?;
    if checkpoint::load_average(&weights, &model)? {
        tracing::info!("{}: evaluating the weights' average ([train] ema), as training did", weights.display());
    }
    let dataset = load_data(&plan)?;
    let data = if split == "test" { dataset.test.clone() } else { dataset.train.clone() };
    let spec = eval_spec(&train_spec(&plan, dataset.shape, &device), &plan);
    let (stats, _) = evaluate(&plan, &model, &data, &spec, &device)?;
    // `test_eval`, `test_eval_best`, `test_tta_epoch_0001`: one set of rows per weights.
    let kind = match (&other.config, plan.tta) {
        (Some(f), _) => f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "config".into()),
        (None, Tta::TenCrop) => "tta".into(),
        (None, _) => "eval".into(),
    };
    let mut name = format!("{split}_{kind}");
    if !tag.is_empty() {
        name = format!("{name}_{tag}");
    }
    let mut log = RunLog::open(dir, None)?.with_events(plan.tensorboard);
    log.lock()?;
    // The epoch and step the weights come from: the checkpoint's sidecar, else the last.
    let side = std::fs::read_to_string(weights.with_extension("toml"))
        .ok()
        .and_then(|t| toml::from_str::<checkpoint::Sidecar>(&t).ok());
    let epoch = match &side {
        Some(sc) => sc.epoch,
        None => log.metrics().iter().map(|r| r.epoch).max().unwrap_or(0).max(0) as usize,
    };
    let step = match &side {
        Some(sc) => sc.step,
        None => log.metrics().iter().map(|r| r.step).max().unwrap_or(0),
    };
    // Rows of an earlier evaluation under the same name are replaced.
    log.retain(|r| r.split != name);
    let values = log_metrics(&mut log, &plan, &name, plan.metrics.test(), &stats, epoch, step)?;
    log.flush()?;
    log.sync_events();
    Ok((name, values))
}

/// Loss and predictions over a whole split, in eval mode (no dropout), through the test
/// augmentations and the task's evaluation (ten-crop TTA for classification). Also returns
/// how many samples were skipped as unreadable (`on_error = "skip"`).
pub fn evaluate(
    plan: &Plan,
    model: &Model,
    split: &Arc<Split>,
    spec: &LoaderSpec,
    device: &Device,
) -> Result<(Stats, usize)> {
    let mut stats = plan.task.stats(plan.num_classes(), true);
    let mut skipped = 0;
    for batch in loader::batches(split.clone(), spec, 0) {
        let batch = batch?;
        skipped += batch.skipped.len();
        if batch.is_empty() {
            continue;
        }
        let xs = images(&batch, spec.out_shape, device)?;
        plan.task.eval_batch(model, &batch, xs, split, plan.tta, plan.input, device, &mut stats)?;
    }
    Ok((stats, skipped))
}

/// The rows and tables of one split's metrics for an epoch: scalars (and per-class rows)
/// into `metrics.parquet`, the ROC curve and the confusion matrix into their tables.
/// Returns the scalar values by `split.metric`.
pub fn log_metrics(
    log: &mut RunLog,
    plan: &Plan,
    split: &str,
    metrics: &[MetricName],
    stats: &Stats,
    epoch: usize,
    step: i64,
) -> Result<BTreeMap<String, f64>> {
    let wall = log.elapsed_s();
    let row = |metric: &str, class: Option<String>, value: f64| MetricRow {
        epoch: epoch as i32,
        step,
        split: split.into(),
        metric: metric.into(),
        class,
        value,
        wall_time_s: wall,
    };
    let name = |c: usize| plots::class_name(&plan.classes, c);
    let mut values = BTreeMap::new();
    for &m in metrics {
        match m {
            m if m.is_per_class() => {
                for (c, e) in stats.per_class(m).into_iter().enumerate() {
                    log.push(row(&m.as_str(), Some(name(c)), e));
                }
            }
            MetricName::Roc => {
                let Some(stats) = stats.as_classify() else { continue };
                let path = log.dir.join(format!("roc_{split}.parquet"));
                let curves = stats.roc_curves(plan.binary, &plan.classes);
                classify::write_roc(&log.run_id, epoch, split, &curves, &path)?;
            }
            MetricName::ConfusionMatrix => {
                let Some(m) = stats.confusion() else { continue };
                let path = log.dir.join(format!("confusion_matrix_{split}.parquet"));
                classify::write_confusion(&log.run_id, epoch, split, &m, &plan.classes, &path)?;
            }
            m => {
                let v = stats.compute(m, plan.binary);
                values.insert(format!("{split}.{}", m.as_str()), v);
                log.push(row(&m.as_str(), None, v));
            }
        }
    }
    Ok(values)
}

/// The run's `plots/`: per-metric curves, and the test split's ROC and confusion matrix
/// when those metrics are configured.
pub(super) fn draw_plots(log: &RunLog, plan: &Plan, test: &Stats, split: &Split) -> Result<()> {
    let dir = log.dir.join("plots");
    let mut names: Vec<String> =
        plan.metrics.train().iter().chain(plan.metrics.test()).filter(|m| m.is_scalar()).map(|m| m.as_str()).collect();
    names.sort();
    names.dedup();
    plots::metric_curves(&dir, log.metrics(), &names)?;
    let spec = PlotSpec { classes: &plan.classes, test_metrics: plan.metrics.test(), binary: plan.binary };
    test.plots(&dir, &spec, split)?;
    Ok(())
}
