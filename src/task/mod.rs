//! What the model learns: the one place where classification, detection and segmentation differ (the
//! design's tasks table). [`Task`] is resolved by the plan from `[task]`; each of its
//! methods is one `match`: the loss of a training batch, an evaluation batch, the sums an
//! epoch keeps ([`Stats`]) and the metrics computed from them. The loop, checkpoints,
//! resume, sweeps and the run folder never look at the variant.

mod checks;
pub mod classify;
pub mod detect;
pub mod localize;
pub mod segment;

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::config::{Config, MetricName, TaskConfig, Tta};
use crate::data::loader::Batch;
use crate::data::Split;
use crate::metrics::detection::{Detection, DetectionStats, Truth};
use crate::metrics::segmentation::SegStats;
use crate::metrics::{Binary, EpochStats};
use crate::model::{predicted, Model, Pass};
use crate::runlog::{files, RunLog};

use crate::{metrics, plots};
pub use detect::Yolo;
pub use localize::{LocStats, Localizer};
pub use segment::Segmenter;

#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Cross-entropy with label smoothing `label_smoothing`.
    Classify {
        label_smoothing: f64,
    },
    Detect(Yolo),
    Segment(Segmenter),
    Localize(Localizer),
}

/// The model's last layer, for a task's check of its output: its key in the config, its
/// path in the model and its output shape.
#[derive(Debug, Clone)]
pub struct Head {
    pub key: String,
    pub path: String,
    pub shape: Vec<usize>,
}

/// One thing a task's plan-time checks found wrong; the plan names the file of each.
#[derive(Debug, Clone)]
pub enum Problem {
    /// A config key and what is wrong with its value.
    Key(String, String),
    /// What is wrong with the model's last layer.
    Head(Head, String),
}

/// The problems a task's checks found, in the order found.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    fn key(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(Problem::Key(key.to_string(), msg.to_string()));
    }

    fn head(&mut self, head: &Head, msg: impl std::fmt::Display) {
        self.0.push(Problem::Head(head.clone(), msg.to_string()));
    }
}

/// One image's answer from `runner predict`.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// Every class's score, best first, and how the scores were made.
    Classes { ranked: Vec<(usize, f32)>, note: String },
    /// Boxes in the image's pixels, best first (a localizer's one box).
    Boxes(Vec<detect::Found>),
    /// Each pixel's class at the image's own size, and each class's share of the pixels,
    /// largest first (classes with no pixel left out).
    Mask { mask: Vec<u8>, size: [usize; 2], shares: Vec<(usize, f64)> },
}

/// What `runner predict` takes from the plan for one model.
#[derive(Debug, Clone, Copy)]
pub struct PredictSetup {
    /// The model's input `[c, h, w]`.
    pub input: [usize; 3],
    /// Ten-crop TTA, with the size the test augmentations give before the crops.
    pub tta: Tta,
    pub test_shape: [usize; 3],
    /// Detection: the lowest score shown (the mAP path keeps the config's `score_min`).
    pub score_min: f32,
}

/// One image after the test augmentations: its values and `[c, h, w]`, the file's own
/// `[h, w]` (boxes and masks come back at that size) and its path (for messages).
pub struct PredictImage<'a> {
    pub values: Vec<f32>,
    pub dims: [usize; 3],
    pub size: [usize; 2],
    pub path: &'a Path,
}

impl PredictImage<'_> {
    /// The model's eval-mode output for this image, which must be the model's input size.
    fn forward(self, model: &Model, input: [usize; 3]) -> Result<Tensor> {
        if self.dims != input {
            anyhow::bail!(
                "{}: after the test augmentations the image is {:?}, the model takes {input:?}",
                self.path.display(),
                self.dims
            );
        }
        let [c, h, w] = self.dims;
        let xs = Tensor::from_vec(self.values, (1, c, h, w), model.device())?;
        Ok(model.forward(&xs, Pass::eval())?)
    }
}

/// An epoch's sums for the metrics.
#[derive(Debug, Clone)]
pub enum Stats {
    Classify(EpochStats),
    Detect(DetectionStats),
    Segment(SegStats),
    Localize(LocStats),
}

impl Task {
    /// The task `[task]` asks for, over a dataset named `dataset` with these `classes`,
    /// after its own checks (dataset, head, settings, test augmentations); what they find
    /// goes into `problems`. The one place outside this module that turns `[task]` into a
    /// task: the plan calls it.
    pub fn resolve(
        cfg: &Config,
        dataset: &str,
        classes: &[String],
        head: Option<&Head>,
        problems: &mut Problems,
    ) -> Task {
        let n = classes.len();
        match &cfg.task {
            TaskConfig::Classify {} => {
                checks::classify(problems, cfg, dataset, n, head);
                Task::Classify { label_smoothing: cfg.train.label_smoothing }
            }
            TaskConfig::Detect(d) => {
                let yolo = Yolo { cfg: d.clone(), classes: n };
                checks::detect(problems, cfg, &yolo, head);
                Task::Detect(yolo)
            }
            TaskConfig::Segment(c) => {
                let seg = Segmenter { cfg: c.clone(), classes: n };
                checks::segment(problems, cfg, &seg, head);
                Task::Segment(seg)
            }
            TaskConfig::Localize(c) => {
                let loc = Localizer { cfg: c.clone(), classes: n };
                checks::localize(problems, cfg, &loc, head);
                Task::Localize(loc)
            }
        }
    }

    /// The classes the metrics count: the model's outputs (`model_outputs`) for
    /// classification, the dataset's for the others.
    pub fn num_classes(&self, model_outputs: usize) -> usize {
        match self {
            Task::Classify { .. } => model_outputs,
            Task::Detect(yolo) => yolo.classes,
            Task::Segment(seg) => seg.classes,
            Task::Localize(loc) => loc.classes,
        }
    }

    /// Whether each sample is labelled with one class (classification, and localization's
    /// largest object): an image without objects cannot be.
    pub fn labels_each_sample(&self) -> bool {
        matches!(self, Task::Classify { .. } | Task::Localize(_))
    }

    /// Whether a fully convolutional model may meet test images larger than its input,
    /// sliding over them (Overfeat's dense application; localization only).
    pub fn slides_over_larger_images(&self) -> bool {
        matches!(self, Task::Localize(_))
    }

    /// Whether metrics other than the loss can be logged on the training split (the others
    /// compute theirs on the test split only).
    pub fn logs_train_metrics(&self) -> bool {
        self.labels_each_sample()
    }

    /// `runner predict`'s answer for one image.
    pub fn predict(&self, model: &Model, setup: &PredictSetup, image: PredictImage) -> Result<Prediction> {
        match self {
            Task::Classify { .. } => classify::predict(model, setup, image),
            Task::Detect(yolo) => detect::predict(model, yolo, setup, image),
            Task::Segment(seg) => segment::predict(model, seg, setup, image),
            Task::Localize(loc) => localize::predict(model, loc, setup, image),
        }
    }

    /// The run folder's predictions table this task writes for the test split.
    pub fn predictions_table(&self) -> &'static str {
        match self {
            Task::Classify { .. } => files::PREDICTIONS,
            Task::Detect(_) => files::DETECTIONS,
            Task::Segment(_) => files::SEGMENTATION,
            Task::Localize(_) => files::LOCALIZATIONS,
        }
    }

    /// The short name used in messages and tables: `classify`, `detect`.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Classify { .. } => "classify",
            Task::Detect(_) => "detect",
            Task::Segment(_) => "segment",
            Task::Localize(_) => "localize",
        }
    }

    /// The task's `[task.*]` keys as the plan resolved them (the ONNX file's metadata).
    pub fn config_json(&self) -> serde_json::Value {
        match self {
            Task::Classify { label_smoothing } => serde_json::json!({ "label_smoothing": label_smoothing }),
            Task::Detect(y) => serde_json::json!(y.cfg),
            Task::Segment(s) => serde_json::json!(s.cfg),
            Task::Localize(l) => serde_json::json!(l.cfg),
        }
    }

    /// What the model's output holds, in words, for a user of an exported model (the ONNX
    /// file's metadata).
    pub fn output_layout(&self) -> String {
        match self {
            Task::Classify { .. } => "[batch, classes] logits (no softmax)".into(),
            Task::Segment(s) => format!(
                "[batch, {}, h, w] class scores per pixel (no softmax); a pixel's class is the argmax over dimension 1",
                s.classes
            ),
            Task::Detect(y) => format!(
                "[batch, {d}, {s}, {s}] (or [batch, {}]), read as [batch, {s}, {s}, {d}] (cells by row, then column): per cell {b} boxes of (x, y, sqrt w, sqrt h, confidence), x and y the centre's offset in the cell in cell sizes, w and h relative to the image, then {c} class scores; a box's score is its confidence times the class score (YOLOv1)",
                y.cfg.grid * y.cfg.grid * y.depth(),
                d = y.depth(),
                s = y.cfg.grid,
                b = y.cfg.boxes,
                c = y.classes
            ),
            Task::Localize(l) => format!(
                "[batch, {} + {}]: the class logits (no softmax), then {}: x0, y0, x1, y1 relative to the input's width and height",
                l.classes,
                if l.cfg.per_class { 4 * l.classes } else { 4 },
                if l.cfg.per_class { "a box per class, in class order" } else { "one box" }
            ),
        }
    }

    /// Whether a training batch's loss is the mean of per-sample losses, so that the batch
    /// can be run in slices whose losses are weighted by their sizes (`step`): classification.
    /// A segmentation loss is a mean over the labelled pixels, which the slices do not share.
    pub fn loss_is_per_sample(&self) -> bool {
        matches!(self, Task::Classify { .. })
    }

    /// The mean training loss of the samples `range` of `batch`, whose images gave `out`: the
    /// whole batch ([`Task::loss`]), or for a per-sample loss any slice of it.
    pub fn slice_loss(
        &self,
        out: &Tensor,
        batch: &Batch,
        range: std::ops::Range<usize>,
        input: [usize; 3],
    ) -> Result<Tensor> {
        if range == (0..batch.len()) {
            return self.loss(out, batch, input);
        }
        match self {
            Task::Classify { label_smoothing } => {
                let labels = Tensor::from_slice(&batch.labels[range.clone()], range.len(), out.device())?;
                classify::loss(out, &labels, *label_smoothing)
            }
            _ => anyhow::bail!("the {} loss is not a mean over samples: a batch cannot be run in slices", self.name()),
        }
    }

    /// The training loss of a batch whose images gave `out`.
    pub fn loss(&self, out: &Tensor, batch: &Batch, input: [usize; 3]) -> Result<Tensor> {
        match self {
            Task::Classify { label_smoothing } => {
                classify::loss(out, &classify::labels(batch, out.device())?, *label_smoothing)
            }
            Task::Detect(yolo) => yolo.loss(out, &batch.objects, [input[1], input[2]]),
            Task::Segment(seg) => seg.loss(out, &batch.masks),
            Task::Localize(loc) => Ok(loc.loss(out, batch, [input[1], input[2]])?.0),
        }
    }

    /// Empty sums for an epoch; `classes` of the dataset; `keep_probs`: classification keeps
    /// each sample's probabilities (for metrics that need them).
    pub fn stats(&self, classes: usize, keep_probs: bool) -> Stats {
        match self {
            Task::Classify { .. } => Stats::Classify(EpochStats::new(classes, keep_probs)),
            Task::Detect(_) => Stats::Detect(DetectionStats::new(classes)),
            Task::Segment(_) => Stats::Segment(SegStats::new(classes)),
            Task::Localize(_) => Stats::Localize(LocStats::new(classes, keep_probs)),
        }
    }

    /// What a training batch's statistics need of the model's output `out`, computed on its
    /// device and kept there until [`Task::update_train`] reads it: the predicted classes
    /// (classification, localization) and, with `keep_probs`, the class probabilities.
    pub fn train_outputs(&self, out: &Tensor, keep_probs: bool) -> Result<TrainOutputs> {
        Ok(match self {
            Task::Classify { .. } => TrainOutputs {
                pred: Some(predicted(out)?),
                probs: if keep_probs { Some(candle_nn::ops::softmax_last_dim(out)?.detach()) } else { None },
            },
            Task::Localize(loc) => {
                TrainOutputs { pred: Some(predicted(&out.narrow(1, 0, loc.classes)?.contiguous()?)?), probs: None }
            }
            Task::Detect(_) | Task::Segment(_) => TrainOutputs::default(),
        })
    }

    /// Adds a training batch to `stats`: its loss, and (classification) its predictions from
    /// `outs` (read here from the device).
    pub fn update_train(&self, stats: &mut Stats, loss: f64, outs: &TrainOutputs, batch: &Batch) -> Result<()> {
        let pred = || -> Result<Vec<u32>> {
            match &outs.pred {
                Some(p) => Ok(p.to_vec1::<u32>()?),
                None => anyhow::bail!("the {} task's statistics need the predicted classes", self.name()),
            }
        };
        match stats {
            Stats::Classify(s) => {
                let probs = match &outs.probs {
                    Some(p) => Some(p.flatten_all()?.to_vec1::<f32>()?),
                    None => None,
                };
                s.update(loss, probs.as_deref(), &pred()?, &batch.labels);
            }
            Stats::Detect(s) => s.add_loss(loss, batch.len()),
            Stats::Segment(s) => s.add_loss(loss, batch.len()),
            Stats::Localize(s) => {
                let labels: Vec<u32> = localize::targets(batch, [1, 1]).iter().map(|t| t.0).collect();
                s.class.update(loss, None, &pred()?, &labels);
            }
        }
        Ok(())
    }

    /// Evaluates one batch of `split` into `stats` (eval mode): `xs` is its images.
    #[allow(clippy::too_many_arguments)]
    pub fn eval_batch(
        &self,
        model: &Model,
        batch: &Batch,
        xs: Tensor,
        split: &Split,
        tta: Tta,
        input: [usize; 3],
        device: &Device,
        stats: &mut Stats,
    ) -> Result<()> {
        match (self, stats) {
            (Task::Classify { .. }, Stats::Classify(s)) => {
                classify::eval_batch(model, batch, xs, tta, input, device, s)
            }
            (Task::Detect(yolo), Stats::Detect(s)) => {
                let out = model.forward(&xs, Pass::eval())?;
                let hw = [input[1], input[2]];
                let loss = yolo.loss(&out, &batch.objects, hw)?.to_scalar::<f32>()? as f64;
                s.add_loss(loss, batch.len());
                let found = detect::decode_batch(yolo, &out, hw, &batch.sizes)?;
                for (&i, boxes) in batch.indices.iter().zip(found) {
                    detect::add_coco(&mut s.coco, split, i, &boxes, yolo.classes);
                    for f in boxes {
                        let bbox = f.bbox.map(f64::from);
                        s.detections.push((f.class, Detection { image: i, score: f.score as f64, bbox }));
                    }
                    // The ground truth as annotated, in the original image's pixels.
                    for o in split.objects.get(i).map(Vec::as_slice).unwrap_or_default() {
                        let t = Truth { image: i, bbox: o.bbox.map(f64::from), difficult: o.difficult };
                        s.truths.push((o.class, t));
                    }
                }
                Ok(())
            }
            (Task::Segment(seg), Stats::Segment(s)) => {
                let out = model.forward(&xs, Pass::eval())?;
                let loss = seg.loss(&out, &batch.masks)?.to_scalar::<f32>()? as f64;
                s.add_loss(loss, batch.len());
                let pred = Segmenter::decode(&out)?;
                let (_, _, h, w) = out.dims4()?;
                segment::update(s, &pred, &batch.masks, [h, w], seg.cfg.ignore_index, &batch.indices, true);
                Ok(())
            }
            (Task::Localize(loc), Stats::Localize(s)) => {
                let out = model.forward(&xs, Pass::eval())?;
                if out.rank() == 4 {
                    // Dense application: a fully convolutional model over larger images.
                    let (_, _, h, w) = xs.dims4()?;
                    let stride = model.graph().output_stride().map_err(anyhow::Error::msg)?;
                    let slide = localize::Slide { window: [input[1], input[2]], stride };
                    return loc.eval_map(&out, batch, [h, w], slide, s);
                }
                loc.eval_batch(&out, batch, [input[1], input[2]], s)
            }
            _ => anyhow::bail!("the statistics do not belong to the {} task", self.name()),
        }
    }
}

/// A training batch's outputs that its statistics need ([`Task::train_outputs`]), on the
/// model's device.
#[derive(Debug, Clone, Default)]
pub struct TrainOutputs {
    /// Each sample's predicted class, `[b]` u32.
    pred: Option<Tensor>,
    /// The class probabilities `[b, classes]`.
    probs: Option<Tensor>,
}

/// What a task's plots take from the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlotSpec<'a> {
    pub classes: &'a [String],
    /// The test split's metrics: `roc` and `confusion_matrix` ask for their plots.
    pub test_metrics: &'a [MetricName],
    pub binary: Binary,
}

impl PlotSpec<'_> {
    fn wants(&self, metric: MetricName) -> bool {
        self.test_metrics.contains(&metric)
    }

    /// Class `c`'s name, or its number where the list has none.
    fn class_name(&self, c: usize) -> String {
        plots::class_name(self.classes, c)
    }
}

impl Stats {
    /// The test split's task plots in `dir`: ROC and confusion matrix (classification),
    /// precision / recall and boxes (detection), masks (segmentation), boxes (localization).
    pub fn plots(&self, dir: &Path, spec: &PlotSpec, split: &Split) -> Result<()> {
        match self {
            Stats::Classify(s) => classify::plots(dir, spec, s),
            Stats::Detect(s) => detect::plots(dir, spec, s, split),
            Stats::Segment(s) => segment::plots(dir, spec, s, split),
            Stats::Localize(s) => localize::plots(dir, spec, s, split),
        }
    }

    /// Images (or samples) seen.
    pub fn count(&self) -> usize {
        match self {
            Stats::Classify(s) => s.count(),
            Stats::Detect(s) => s.count(),
            Stats::Segment(s) => s.count(),
            Stats::Localize(s) => s.class.count(),
        }
    }

    pub fn mean_loss(&self) -> f64 {
        match self {
            Stats::Classify(s) => s.mean_loss(),
            Stats::Detect(s) => s.mean_loss(),
            Stats::Segment(s) => s.mean_loss(),
            Stats::Localize(s) => s.class.mean_loss(),
        }
    }

    /// A scalar metric; NaN where it does not apply.
    pub fn compute(&self, metric: MetricName, b: Binary) -> f64 {
        match self {
            Stats::Classify(s) => s.compute(metric, b),
            Stats::Detect(s) => match metric {
                MetricName::Loss => s.mean_loss(),
                MetricName::Map50 => s.map50().1,
                MetricName::Map50Voc07 => s.map50().0,
                MetricName::Precision => s.precision_recall_at(b.threshold).0,
                MetricName::Recall => s.precision_recall_at(b.threshold).1,
                MetricName::Coco(k) => s.coco_stats().get(k).copied().unwrap_or(f64::NAN),
                _ => f64::NAN,
            },
            Stats::Segment(s) => match metric {
                MetricName::Loss => s.mean_loss(),
                MetricName::PixelAccuracy => s.pixel_accuracy(),
                MetricName::MeanAccuracy => s.mean_accuracy(),
                MetricName::Miou => s.miou(),
                MetricName::FrequencyWeightedIou => s.frequency_weighted_iou(),
                _ => f64::NAN,
            },
            Stats::Localize(s) => match metric {
                MetricName::LocalizationError => s.localization_error(),
                MetricName::MeanIou => s.mean_iou(),
                MetricName::BoxL2 => s.box_l2(),
                m => s.class.compute(m, b),
            },
        }
    }

    /// A per-class metric's values, class by class.
    pub fn per_class(&self, metric: MetricName) -> Vec<f64> {
        match (self, metric) {
            (Stats::Classify(s), MetricName::PerClassError) => s.per_class_error(),
            (Stats::Detect(s), MetricName::Ap50) => s.ap50().into_iter().map(|(_, area)| area).collect(),
            (Stats::Segment(s), MetricName::Iou) => s.class_iou(),
            (Stats::Localize(s), MetricName::PerClassError) => s.class.per_class_error(),
            _ => Vec::new(),
        }
    }

    /// The end-of-epoch summary for the log line: `loss 0.1234 acc 0.9012`.
    pub fn summary(&self) -> String {
        match self {
            Stats::Classify(s) => {
                format!("loss {:.4} acc {:.4}", s.mean_loss(), metrics::accuracy(&s.labels, &s.preds))
            }
            Stats::Detect(s) if s.detections.is_empty() && s.truths.is_empty() => format!("loss {:.4}", s.mean_loss()),
            Stats::Detect(s) => format!("loss {:.4} mAP50 {:.4}", s.mean_loss(), s.map50().1),
            Stats::Segment(s) if s.confusion().iter().flatten().all(|&n| n == 0) => {
                format!("loss {:.4}", s.mean_loss())
            }
            Stats::Segment(s) => {
                format!("loss {:.4} pixel acc {:.4} mIoU {:.4}", s.mean_loss(), s.pixel_accuracy(), s.miou())
            }
            Stats::Localize(s) if s.boxes.is_empty() => {
                format!("loss {:.4} acc {:.4}", s.class.mean_loss(), metrics::accuracy(&s.class.labels, &s.class.preds))
            }
            Stats::Localize(s) => format!(
                "loss {:.4} acc {:.4} loc err {:.4} IoU {:.4}",
                s.class.mean_loss(),
                metrics::accuracy(&s.class.labels, &s.class.preds),
                s.localization_error(),
                s.mean_iou()
            ),
        }
    }

    /// The task's predictions table for the test split after `epoch`, in the run folder:
    /// `predictions.parquet` (classification), `detections.parquet` with
    /// `precision_recall_test.parquet`, `segmentation.parquet` with `masks/*.png`, or
    /// `localizations.parquet`.
    pub fn write_predictions(&self, log: &RunLog, epoch: usize, classes: &[String], split: &Split) -> Result<()> {
        match self {
            Stats::Classify(s) => classify::write_predictions(&log.run_id, s, &log.dir.join(files::PREDICTIONS)),
            Stats::Detect(s) => {
                let path = log.dir.join(files::DETECTIONS);
                detect::write_detections(&log.run_id, epoch, s, classes, split, &path)?;
                let path = log.dir.join("precision_recall_test.parquet");
                detect::write_precision_recall(&log.run_id, epoch, s, classes, &path)?;
                if split.coco.is_some() {
                    detect::write_coco_results(s, &log.dir.join(files::DETECTIONS_JSON))?;
                }
                Ok(())
            }
            Stats::Segment(s) => {
                let path = log.dir.join(files::SEGMENTATION);
                segment::write_counts(&log.run_id, epoch, s, classes, &split.files, &path)?;
                segment::write_masks(s, split, &log.dir.join("masks"))
            }
            Stats::Localize(s) => {
                let path = log.dir.join(files::LOCALIZATIONS);
                localize::write_localizations(&log.run_id, epoch, s, classes, &split.files, &path)
            }
        }
    }

    /// The confusion matrix `m[true][pred]`: of samples (classification) or pixels
    /// (segmentation); detection has none.
    pub fn confusion(&self) -> Option<Vec<Vec<u64>>> {
        match self {
            Stats::Classify(s) => Some(s.confusion()),
            Stats::Detect(_) => None,
            Stats::Segment(s) => Some(s.confusion().to_vec()),
            Stats::Localize(s) => Some(s.class.confusion()),
        }
    }

    pub fn as_classify(&self) -> Option<&EpochStats> {
        match self {
            Stats::Classify(s) => Some(s),
            Stats::Localize(s) => Some(&s.class),
            Stats::Detect(_) | Stats::Segment(_) => None,
        }
    }
}
