//! The plan's checks by section: training values, and metrics against the task and classes.
//! Each task's own checks are its file's, under `src/task/`.

// `!(x > 0.0)` is written on purpose: it rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::Problems;
use crate::config::{load, metric_names, ClassRef, Config, MetricName, OptimizerConfig, TrainConfig};
use crate::metrics::Binary;
use crate::schedule;
use crate::task::Task;

/// The training section's values: epochs, the optimizer's hyper-parameters, the schedule,
/// accumulation, clipping, smoothing and checkpoints.
pub(super) fn check_train(p: &mut Problems, train: &TrainConfig) {
    if train.epochs == 0 {
        p.add("train.epochs", "must be > 0");
    }
    match train.optimizer {
        OptimizerConfig::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            let k = "train.optimizer.sgd";
            if !(lr > 0.0 && lr.is_finite()) {
                p.add(&format!("{k}.lr"), format!("must be > 0, is {lr}"));
            }
            if !(0.0..1.0).contains(&momentum) {
                p.add(&format!("{k}.momentum"), format!("must be in [0, 1), is {momentum}"));
            }
            if nesterov && (momentum == 0.0 || dampening != 0.0) {
                p.add(&format!("{k}.nesterov"), "needs momentum > 0 and dampening = 0 (as in PyTorch)");
            }
            if weight_decay < 0.0 {
                p.add(&format!("{k}.weight_decay"), format!("must be >= 0, is {weight_decay}"));
            }
        }
        OptimizerConfig::Adam { lr, betas, eps, weight_decay }
        | OptimizerConfig::Adamw { lr, betas, eps, weight_decay } => {
            let k = match train.optimizer {
                OptimizerConfig::Adamw { .. } => "train.optimizer.adamw",
                _ => "train.optimizer.adam",
            };
            if !(lr > 0.0 && lr.is_finite()) {
                p.add(&format!("{k}.lr"), format!("must be > 0, is {lr}"));
            }
            if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                p.add(&format!("{k}.betas"), format!("each must be in [0, 1), are {betas:?}"));
            }
            if eps <= 0.0 {
                p.add(&format!("{k}.eps"), format!("must be > 0, is {eps}"));
            }
            if weight_decay < 0.0 {
                p.add(&format!("{k}.weight_decay"), format!("must be >= 0, is {weight_decay}"));
            }
        }
    }
    for (key, msg) in schedule::validate(train) {
        p.add(&key, msg);
    }
    if train.accumulate == 0 {
        p.add("train.accumulate", "must be >= 1");
    }
    if let Some(ema) = &train.ema {
        if !(ema.decay > 0.0 && ema.decay < 1.0) {
            p.add("train.ema.decay", format!("must be in (0, 1), is {}", ema.decay));
        }
        if !(ema.tau > 0.0 && ema.tau.is_finite()) {
            p.add("train.ema.tau", format!("must be > 0 (optimizer steps), is {}", ema.tau));
        }
    }
    if !(train.clip_grad_norm >= 0.0) {
        p.add("train.clip_grad_norm", format!("must be >= 0 (0 = off), is {}", train.clip_grad_norm));
    }
    if !(0.0..1.0).contains(&train.label_smoothing) {
        p.add("train.label_smoothing", format!("must be in [0, 1), is {}", train.label_smoothing));
    }
    if train.checkpoint.keep_last == 0 {
        p.add("train.checkpoint.keep_last", "must be >= 1 (resume needs the last checkpoint)");
    }
}

/// The metric lists against the task and the classes (`n_classes` the model's or the
/// dataset's, `classes` their names), the positive class and threshold of binary metrics,
/// and the metrics that checkpoints and early stopping watch. Returns the binary settings.
pub(super) fn check_metrics(
    p: &mut Problems,
    cfg: &Config,
    task: &Task,
    n_classes: usize,
    classes: &[String],
    warnings: &mut Vec<String>,
) -> Binary {
    let positive = positive_class(p, cfg, n_classes, classes);
    metric_lists(p, cfg, task, n_classes);
    binary_settings(p, cfg, n_classes, classes, warnings);
    watched_metrics(p, cfg);
    listed_twice(p, cfg);
    Binary { positive, threshold: cfg.metrics.threshold }
}

/// `metrics.positive`, a class name or index (class 1 when not given).
fn positive_class(p: &mut Problems, cfg: &Config, n_classes: usize, classes: &[String]) -> usize {
    match &cfg.metrics.positive {
        None => 1,
        Some(class) => {
            let (found, shown) = match class {
                ClassRef::Index(i) => (Some(*i), i.to_string()),
                ClassRef::Name(name) => {
                    (classes.iter().position(|c| c == name).or_else(|| name.parse::<usize>().ok()), format!("{name:?}"))
                }
            };
            match found {
                Some(i) if n_classes == 0 || i < n_classes => i,
                _ => {
                    let names = classes.join(", ");
                    p.add(
                        "metrics.positive",
                        format!("{shown} is neither a class name ({names}) nor an index below {n_classes}"),
                    );
                    1
                }
            }
        }
    }
}

/// Each split's list: metrics the task logs, the training split's only where the task
/// computes them there, top-k below the number of classes.
fn metric_lists(p: &mut Problems, cfg: &Config, task: &Task, n_classes: usize) {
    for (split, list) in [("train", cfg.metrics.train()), ("test", cfg.metrics.test())] {
        for m in list {
            if !cfg.task.logs(*m) {
                let fitting: Vec<&str> = metric_names()
                    .iter()
                    .copied()
                    .filter(|n| MetricName::parse(n).is_some_and(|x| cfg.task.logs(x)))
                    .collect();
                p.add(
                    &format!("metrics.{split}"),
                    format!(
                        "`{}` does not apply to the {} task; it logs {}",
                        m.as_str(),
                        task.name(),
                        fitting.join(", ")
                    ),
                );
            } else if split == "train" && !task.logs_train_metrics() && *m != MetricName::Loss {
                p.add(
                    "metrics.train",
                    format!("`{}` is computed on the test split only (training logs `loss`)", m.as_str()),
                );
            }
            if let MetricName::TopK(k) = m {
                if n_classes > 0 && *k >= n_classes {
                    p.add(&format!("metrics.{split}"), format!("top{k}_accuracy needs more than {k} classes; the model has {n_classes}, so it would always be 1"));
                }
            }
        }
    }
}

/// The threshold of binary metrics, and a warning when tp/fp rates on more than two
/// classes take class 1 as the positive one.
fn binary_settings(p: &mut Problems, cfg: &Config, n_classes: usize, classes: &[String], warnings: &mut Vec<String>) {
    let binary_metrics = [MetricName::TpRate, MetricName::FpRate];
    if n_classes > 2
        && cfg.metrics.positive.is_none()
        && cfg.metrics.train().iter().chain(cfg.metrics.test()).any(|m| binary_metrics.contains(m))
    {
        let name = classes.get(1).cloned().unwrap_or_else(|| "1".into());
        warnings.push(format!(
            "metrics: tp_rate / fp_rate on {n_classes} classes use class 1 (`{name}`) against the rest; set metrics.positive to choose"
        ));
    }
    if !(0.0..=1.0).contains(&cfg.metrics.threshold) {
        p.add("metrics.threshold", format!("must be in [0, 1], is {}", cfg.metrics.threshold));
    }
}

/// No metric listed twice in a split.
fn listed_twice(p: &mut Problems, cfg: &Config) {
    for (split, list) in [("train", cfg.metrics.train()), ("test", cfg.metrics.test())] {
        let mut seen = std::collections::BTreeSet::new();
        for m in list {
            if !seen.insert(m) {
                p.add(&format!("metrics.{split}"), format!("`{}` is listed twice", m.as_str()));
            }
        }
    }
}

/// The metrics that checkpoints (`best`) and early stopping watch must be logged ones.
fn watched_metrics(p: &mut Problems, cfg: &Config) {
    let logged: Vec<String> = [("train", cfg.metrics.train()), ("test", cfg.metrics.test())]
        .iter()
        .flat_map(|(split, list)| list.iter().filter(|m| m.is_scalar()).map(move |m| format!("{split}.{}", m.as_str())))
        .collect();
    let known: Vec<&str> = logged.iter().map(String::as_str).collect();
    let metric_problem = |name: &str| -> Option<String> {
        if known.contains(&name) {
            return None;
        }
        let hint = load::did_you_mean(name, &known).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default();
        Some(format!("`{name}` is not a logged metric; {hint}the run logs {}", known.join(", ")))
    };
    if let Some(best) = &cfg.train.checkpoint.best {
        if let Some(e) = metric_problem(best) {
            p.add("train.checkpoint.best", e);
        }
    }
    if let Some(es) = &cfg.train.early_stopping {
        if let Some(e) = metric_problem(&es.metric) {
            p.add("train.early_stopping.metric", e);
        }
        if es.patience == 0 {
            p.add("train.early_stopping.patience", "must be >= 1");
        }
    }
}
