//! Each task's plan-time checks: its dataset, its head's output shape, its settings, and
//! the test augmentations it can map back to the image.

// `!(x >= 0.0)` is written on purpose: it rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::{Head, Localizer, Problems, Segmenter, Yolo};
use crate::config::{AugmentOp, Config, DatasetKind, Tta};
use crate::data;
use crate::data::voc;

/// Classification's: the model ends in one score per class of the dataset (`dataset`,
/// `classes` names); VOC's class masks are for segmentation.
pub(super) fn classify(p: &mut Problems, cfg: &Config, dataset: &str, classes: usize, head: Option<&Head>) {
    if cfg.data.dataset == DatasetKind::Voc && cfg.data.voc().masks() {
        p.key(
            "data.voc.masks",
            "class masks are for [task.segment]; classification labels each image with its largest object's class",
        );
    }
    if let Some(head) = head.filter(|_| classes > 0) {
        if head.shape != [classes] && head.shape != [classes, 1, 1] {
            p.head(
                head,
                format!(
                    "the model ends in shape {:?}, but {dataset} has {classes} classes; end with {{ linear = {{ out = {classes} }} }}",
                    head.shape
                ),
            );
        }
    }
}

/// The detection task's checks: a dataset with boxes, the head's output shape, test
/// augmentations that only resize (so boxes map back to the image exactly), no TTA.
pub(super) fn detect(p: &mut Problems, cfg: &Config, yolo: &Yolo, head: Option<&Head>) {
    let d = &yolo.cfg;
    if !has_boxes(cfg) {
        p.key(
            "task.detect",
            format!("needs a dataset with boxes (`voc`, `coco`, `yolo`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if d.grid == 0 {
        p.key("task.detect.grid", "must be >= 1");
    }
    if d.boxes == 0 {
        p.key("task.detect.boxes", "must be >= 1");
    }
    for (key, v) in [
        ("lambda_coord", d.lambda_coord),
        ("lambda_obj", d.lambda_obj),
        ("lambda_noobj", d.lambda_noobj),
        ("lambda_class", d.lambda_class),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            p.key(&format!("task.detect.{key}"), format!("must be >= 0, is {v}"));
        }
    }
    if !(0.0..=1.0).contains(&d.nms_iou) {
        p.key("task.detect.nms_iou", format!("must be in [0, 1], is {}", d.nms_iou));
    }
    if !d.score_min.is_finite() {
        p.key("task.detect.score_min", format!("must be a number, is {}", d.score_min));
    }
    if d.max_detections == 0 {
        p.key("task.detect.max_detections", "must be >= 1");
    }
    if yolo.classes == 0 {
        match cfg.data.dataset {
            DatasetKind::Coco => p.key(
                "data.coco.test.json",
                "no class names: they come from the test split's categories, and the file is not on disk",
            ),
            DatasetKind::Yolo => p.key(
                "data.yolo.classes",
                "no class names: set classes = [...] or put data.yaml with `names` in data.root",
            ),
            _ => p.key("data.voc.classes", "lists no class: detection needs at least one"),
        }
    }
    if let Some(head) = head.filter(|_| d.grid > 0) {
        let (s, depth, shape) = (d.grid, yolo.depth(), &head.shape);
        let flat = shape.iter().product::<usize>() == s * s * depth && shape.len() == 1;
        let map = shape == &[depth, s, s];
        if !flat && !map {
            p.head(
                head,
                format!(
                    "the model ends in shape {shape:?}, but the detect task with grid {s}, {} boxes and {} classes \
                     reads [S, S, B*5 + C] = [{s}, {s}, {depth}]: end with {{ linear = {{ out = {} }} }} or a conv \
                     of {depth} channels on a {s}x{s} map",
                    d.boxes,
                    yolo.classes,
                    s * s * depth
                ),
            );
        }
    }
    pixel_task(p, cfg, "detection", "so that boxes map back to the image");
}

/// The segmentation task's: a dataset with masks, the output the input's size with one
/// map per class, the class weights, and test augmentations that keep the pixel grid.
pub(super) fn segment(p: &mut Problems, cfg: &Config, seg: &Segmenter, head: Option<&Head>) {
    if !matches!(cfg.data.dataset, DatasetKind::Voc | DatasetKind::Coco) {
        p.key(
            "task.segment",
            format!("needs a dataset with class masks (`voc`, `coco`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if let Some(w) = &seg.cfg.class_weights {
        if w.len() != seg.classes {
            p.key(
                "task.segment.class_weights",
                format!("has {} values for {} classes (background first)", w.len(), seg.classes),
            );
        }
        if let Some(v) = w.iter().find(|v| !(**v >= 0.0 && v.is_finite())) {
            p.key("task.segment.class_weights", format!("must be >= 0, has {v}"));
        }
    }
    if (seg.cfg.ignore_index as usize) < seg.classes {
        p.key(
            "task.segment.ignore_index",
            format!("({}) is a class's index: there are {} classes", seg.cfg.ignore_index, seg.classes),
        );
    }
    if let (Some(head), 3) = (head, cfg.model.input.len()) {
        let input = [cfg.model.input[0], cfg.model.input[1], cfg.model.input[2]];
        if let Err(e) = seg.check_output(&head.shape, input) {
            p.head(head, e);
        }
    }
    pixel_task(p, cfg, "segmentation", "so that masks keep their pixel grid");
}

/// The localization task's: a dataset with boxes, the output `[classes + 4]` (or
/// `[classes + 4 * classes]`), a finite box weight, test augmentations that keep the boxes.
pub(super) fn localize(p: &mut Problems, cfg: &Config, loc: &Localizer, head: Option<&Head>) {
    if !has_boxes(cfg) {
        p.key(
            "task.localize",
            format!("needs a dataset with boxes (`voc`, `coco`, `yolo`), not `{}`", data::spec(cfg.data.dataset).name),
        );
    }
    if !(loc.cfg.box_weight >= 0.0 && loc.cfg.box_weight.is_finite()) {
        p.key("task.localize.box_weight", format!("must be >= 0, is {}", loc.cfg.box_weight));
    }
    if let Some(head) = head {
        if let Err(e) = loc.check_output(&head.shape) {
            p.head(head, e);
        }
    }
    pixel_task(p, cfg, "localization", "so that boxes map back to the image");
}

/// Whether the data holds boxes: VOC (without `masks`), COCO or YOLO.
fn has_boxes(cfg: &Config) -> bool {
    match cfg.data.dataset {
        DatasetKind::Voc => !cfg.data.voc().masks(),
        DatasetKind::Coco => !cfg.data.coco().masks(),
        DatasetKind::Yolo => true,
        _ => false,
    }
}

/// What detection, segmentation and localization share: test augmentations that only
/// resize (to a fixed size) and normalize, so that `why`; no test-time augmentation; no
/// label smoothing; and `[data.voc]`'s checks.
fn pixel_task(p: &mut Problems, cfg: &Config, task: &str, why: &str) {
    for (i, op) in cfg.augment.test.iter().enumerate() {
        let fits = match op {
            AugmentOp::Normalize { .. } => true,
            AugmentOp::Resize { size, .. } => size.is_some(),
            _ => false,
        };
        if !fits {
            p.key(
                &format!("augment.test[{i}].{}", op.name()),
                format!("{task}'s test augmentations may only resize (to size = [h, w]) and normalize, {why}"),
            );
        }
    }
    if cfg.eval.tta != Tta::None {
        p.key("eval.tta", "test-time augmentation is for classification");
    }
    voc(p, cfg);
    coco(p, cfg);
    if cfg.train.label_smoothing != 0.0 {
        p.key("train.label_smoothing", format!("is for classification's cross-entropy, not {task}"));
    }
}

/// `[data.voc]`: distinct classes, years and list names, archives for a download.
/// `[data.coco]`: with `download`, only what the official archives hold; with `generate`
/// (and `[data.yolo]`'s), split names the synthetic set can be written under.
fn coco(p: &mut Problems, cfg: &Config) {
    let generated = match cfg.data.dataset {
        DatasetKind::Coco if cfg.data.coco().generate.is_some() => cfg.data.coco().generated_names().err(),
        DatasetKind::Yolo if cfg.data.yolo().generate.is_some() => cfg.data.yolo().generated_names().err(),
        _ => None,
    };
    if let Some(e) = generated {
        let key = if cfg.data.dataset == DatasetKind::Coco { "data.coco.generate" } else { "data.yolo.generate" };
        p.key(key, e);
    }
    let coco = cfg.data.coco();
    if cfg.data.dataset == DatasetKind::Coco && cfg.data.download && coco.generate.is_none() {
        if let Err(e) = data::coco_download::downloadable(&coco) {
            p.key("data.download", format!("{e:#}"));
        }
    }
}

fn voc(p: &mut Problems, cfg: &Config) {
    if cfg.data.dataset != DatasetKind::Voc {
        return;
    }
    let voc = cfg.data.voc();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(c) = voc.classes.iter().find(|c| !seen.insert(c.as_str())) {
        p.key("data.voc.classes", format!("`{c}` is listed twice"));
    }
    for (key, split) in [("data.voc.train", &voc.train), ("data.voc.test", &voc.test)] {
        if split.years.is_empty() {
            p.key(&format!("{key}.years"), "lists no year");
        }
        if split.image_set.trim().is_empty() || split.image_set.contains(['/', '\\']) {
            p.key(
                &format!("{key}.image_set"),
                format!("must be a list's name (`trainval`, `test`), is {:?}", split.image_set),
            );
        }
    }
    if cfg.data.download && voc.generate.is_none() {
        if let Err(e) = voc::archives_for(&voc) {
            p.key("data.download", format!("{e:#}"));
        }
    }
}
