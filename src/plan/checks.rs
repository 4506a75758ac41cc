//! The plan's checks by section: training values, metrics against the task and classes,
//! and the detection task's (its dataset, head shape, test augmentations, `[data.voc]`).

// `!(x > 0.0)` is written on purpose: it rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::Problems;
use crate::config::OptimizerConfig;
use crate::data;

/// The training section's values: epochs, the optimizer's hyper-parameters, the schedule,
/// accumulation, clipping, smoothing and checkpoints.
pub(super) fn check_train(p: &mut Problems, train: &crate::config::TrainConfig) {
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
    for (key, msg) in crate::schedule::validate(train) {
        p.add(&key, msg);
    }
    if train.accumulate == 0 {
        p.add("train.accumulate", "must be >= 1");
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
    cfg: &crate::config::Config,
    task: &crate::task::Task,
    n_classes: usize,
    classes: &[String],
    warnings: &mut Vec<String>,
) -> crate::metrics::Binary {
    let logged: Vec<String> = [("train", cfg.metrics.train()), ("test", cfg.metrics.test())]
        .iter()
        .flat_map(|(split, list)| list.iter().filter(|m| m.is_scalar()).map(move |m| format!("{split}.{}", m.as_str())))
        .collect();
    let positive = match &cfg.metrics.positive {
        None => 1,
        Some(class) => {
            let (found, shown) = match class {
                crate::config::ClassRef::Index(i) => (Some(*i), i.to_string()),
                crate::config::ClassRef::Name(name) => {
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
    };
    for (split, list) in [("train", cfg.metrics.train()), ("test", cfg.metrics.test())] {
        for m in list {
            if !m.fits(&cfg.task) {
                let fitting: Vec<&str> = crate::config::METRIC_NAMES
                    .iter()
                    .copied()
                    .filter(|n| crate::config::MetricName::parse(n).is_some_and(|x| x.fits(&cfg.task)))
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
            } else if split == "train"
                && !matches!(cfg.task, crate::config::TaskConfig::Classify {} | crate::config::TaskConfig::Localize(_))
                && *m != crate::config::MetricName::Loss
            {
                p.add(
                    "metrics.train",
                    format!("`{}` is computed on the test split only (training logs `loss`)", m.as_str()),
                );
            }
            if let crate::config::MetricName::TopK(k) = m {
                if n_classes > 0 && *k >= n_classes {
                    p.add(&format!("metrics.{split}"), format!("top{k}_accuracy needs more than {k} classes; the model has {n_classes}, so it would always be 1"));
                }
            }
        }
    }
    let binary_metrics = [crate::config::MetricName::TpRate, crate::config::MetricName::FpRate];
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
    let binary = crate::metrics::Binary { positive, threshold: cfg.metrics.threshold };
    let known: Vec<&str> = logged.iter().map(String::as_str).collect();
    let metric_problem = |name: &str| -> Option<String> {
        if known.contains(&name) {
            return None;
        }
        let hint = crate::config::load::did_you_mean(name, &known)
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
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
    for (split, list) in [("train", cfg.metrics.train()), ("test", cfg.metrics.test())] {
        let mut seen = std::collections::BTreeSet::new();
        for m in list {
            if !seen.insert(m) {
                p.add(&format!("metrics.{split}"), format!("`{}` is listed twice", m.as_str()));
            }
        }
    }
    binary
}

/// The detection task's checks: a dataset with boxes, the head's output shape, test
/// augmentations that only resize (so boxes map back to the image exactly), no TTA.
pub(super) fn check_detect(
    p: &mut Problems,
    cfg: &crate::config::Config,
    yolo: &crate::task::Yolo,
    last: Option<(String, String, Vec<usize>)>,
) {
    use crate::config::DatasetKind;
    let d = &yolo.cfg;
    if cfg.data.dataset != DatasetKind::Voc {
        p.add(
            "task.detect",
            format!("needs a dataset with boxes (`voc`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if d.grid == 0 {
        p.add("task.detect.grid", "must be >= 1");
    }
    if d.boxes == 0 {
        p.add("task.detect.boxes", "must be >= 1");
    }
    for (key, v) in [
        ("lambda_coord", d.lambda_coord),
        ("lambda_obj", d.lambda_obj),
        ("lambda_noobj", d.lambda_noobj),
        ("lambda_class", d.lambda_class),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            p.add(&format!("task.detect.{key}"), format!("must be >= 0, is {v}"));
        }
    }
    if !(0.0..=1.0).contains(&d.nms_iou) {
        p.add("task.detect.nms_iou", format!("must be in [0, 1], is {}", d.nms_iou));
    }
    if !d.score_min.is_finite() {
        p.add("task.detect.score_min", format!("must be a number, is {}", d.score_min));
    }
    if d.max_detections == 0 {
        p.add("task.detect.max_detections", "must be >= 1");
    }
    if yolo.classes == 0 {
        p.add("data.voc.classes", "lists no class: detection needs at least one");
    }
    if let Some((key, path, shape)) = last.filter(|_| d.grid > 0) {
        let (s, depth) = (d.grid, yolo.depth());
        let flat = shape.iter().product::<usize>() == s * s * depth && shape.len() == 1;
        let map = shape == [depth, s, s];
        if !flat && !map {
            p.list.push(format!(
                "{}: key `{key}` ({path}): the model ends in shape {shape:?}, but the detect task with grid {s}, \
                 {} boxes and {} classes reads [S, S, B*5 + C] = [{s}, {s}, {depth}]: end with \
                 {{ linear = {{ out = {} }} }} or a conv of {depth} channels on a {s}x{s} map",
                p.loaded.source_of_key("model.groups"),
                d.boxes,
                yolo.classes,
                s * s * depth
            ));
        }
    }
    check_pixel_task(p, cfg, "detection", "so that boxes map back to the image");
}

/// The segmentation task's: a dataset with masks, the output the input's size with one
/// map per class, the class weights, and test augmentations that keep the pixel grid.
pub(super) fn check_segment(
    p: &mut Problems,
    cfg: &crate::config::Config,
    seg: &crate::task::Segmenter,
    last: Option<(String, String, Vec<usize>)>,
) {
    if cfg.data.dataset != crate::config::DatasetKind::Voc {
        p.add(
            "task.segment",
            format!("needs a dataset with class masks (`voc`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if let Some(w) = &seg.cfg.class_weights {
        if w.len() != seg.classes {
            p.add(
                "task.segment.class_weights",
                format!("has {} values for {} classes (background first)", w.len(), seg.classes),
            );
        }
        if let Some(v) = w.iter().find(|v| !(**v >= 0.0 && v.is_finite())) {
            p.add("task.segment.class_weights", format!("must be >= 0, has {v}"));
        }
    }
    if (seg.cfg.ignore_index as usize) < seg.classes {
        p.add(
            "task.segment.ignore_index",
            format!("({}) is a class's index: there are {} classes", seg.cfg.ignore_index, seg.classes),
        );
    }
    if let (Some((key, path, shape)), 3) = (last, cfg.model.input.len()) {
        let input = [cfg.model.input[0], cfg.model.input[1], cfg.model.input[2]];
        if let Err(e) = seg.check_output(&shape, input) {
            p.list.push(format!("{}: key `{key}` ({path}): {e}", p.loaded.source_of_key("model.groups")));
        }
    }
    check_pixel_task(p, cfg, "segmentation", "so that masks keep their pixel grid");
}

/// The localization task's: a dataset with boxes, the output `[classes + 4]` (or
/// `[classes + 4 * classes]`), a finite box weight, test augmentations that keep the boxes.
pub(super) fn check_localize(
    p: &mut Problems,
    cfg: &crate::config::Config,
    loc: &crate::task::Localizer,
    last: Option<(String, String, Vec<usize>)>,
) {
    if cfg.data.dataset != crate::config::DatasetKind::Voc || cfg.data.voc().masks() {
        p.add(
            "task.localize",
            format!("needs a dataset with boxes (`voc`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if !(loc.cfg.box_weight >= 0.0 && loc.cfg.box_weight.is_finite()) {
        p.add("task.localize.box_weight", format!("must be >= 0, is {}", loc.cfg.box_weight));
    }
    if let Some((key, path, shape)) = last {
        if let Err(e) = loc.check_output(&shape) {
            p.list.push(format!("{}: key `{key}` ({path}): {e}", p.loaded.source_of_key("model.groups")));
        }
    }
    check_pixel_task(p, cfg, "localization", "so that boxes map back to the image");
}

/// What detection, segmentation and localization share: test augmentations that only
/// resize (to a fixed size) and normalize, so that `why`; no test-time augmentation; no
/// label smoothing; and `[data.voc]`'s checks.
fn check_pixel_task(p: &mut Problems, cfg: &crate::config::Config, task: &str, why: &str) {
    for (i, op) in cfg.augment.test.iter().enumerate() {
        let fits = match op {
            crate::config::AugmentOp::Normalize { .. } => true,
            crate::config::AugmentOp::Resize { size, .. } => size.is_some(),
            _ => false,
        };
        if !fits {
            p.add(
                &format!("augment.test[{i}].{}", op.name()),
                format!("{task}'s test augmentations may only resize (to size = [h, w]) and normalize, {why}"),
            );
        }
    }
    if cfg.eval.tta != crate::config::Tta::None {
        p.add("eval.tta", "test-time augmentation is for classification");
    }
    check_voc(p, cfg);
    if cfg.train.label_smoothing != 0.0 {
        p.add("train.label_smoothing", format!("is for classification's cross-entropy, not {task}"));
    }
}

/// `[data.voc]`: distinct classes, years and list names, archives for a download.
fn check_voc(p: &mut Problems, cfg: &crate::config::Config) {
    if cfg.data.dataset != crate::config::DatasetKind::Voc {
        return;
    }
    let voc = cfg.data.voc();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(c) = voc.classes.iter().find(|c| !seen.insert(c.as_str())) {
        p.add("data.voc.classes", format!("`{c}` is listed twice"));
    }
    for (key, split) in [("data.voc.train", &voc.train), ("data.voc.test", &voc.test)] {
        if split.years.is_empty() {
            p.add(&format!("{key}.years"), "lists no year");
        }
        if split.image_set.trim().is_empty() || split.image_set.contains(['/', '\\']) {
            p.add(
                &format!("{key}.image_set"),
                format!("must be a list's name (`trainval`, `test`), is {:?}", split.image_set),
            );
        }
    }
    if cfg.data.download && voc.generate.is_none() {
        if let Err(e) = crate::data::voc::archives_for(&voc) {
            p.add("data.download", format!("{e:#}"));
        }
    }
}
