//! Metric names as configs write them, and the direction each one improves in.

use serde::{Deserialize, Serialize};

/// A classification metric computed per epoch on a split. In TOML its name: `"loss"`,
/// `"accuracy"`, `"top5_accuracy"` (any k), `"balanced_error_rate"`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricName {
    Loss,
    Accuracy,
    ErrorRate,
    /// The label is among the k highest scores.
    TopK(usize),
    /// 1 - the mean over classes of each class's recall (scikit-learn's
    /// `1 - balanced_accuracy_score`).
    BalancedErrorRate,
    /// Per class: the fraction of its samples predicted as another class (rows with `class`).
    PerClassError,
    /// `metrics.positive` vs the rest at `metrics.threshold` on its probability.
    TpRate,
    FpRate,
    /// The ROC curve of `metrics.positive` vs the rest (binary) or of each class (one vs
    /// rest), stored in `roc_<split>.parquet`.
    Roc,
    /// Area under the ROC curve: binary (`metrics.positive`), else the macro mean of the
    /// one-vs-rest areas.
    RocAuc,
    RocAucMacro,
    /// One-vs-rest with every (sample, class) pair pooled.
    RocAucMicro,
    /// Counts per (true, predicted) class in `confusion_matrix_<split>.parquet`.
    ConfusionMatrix,
    /// Detection: the mean over classes of the VOC average precision at IoU >= 0.5, as the
    /// area under the precision envelope (VOC2010 on).
    Map50,
    /// The same with VOC2007's 11-point interpolation.
    Map50Voc07,
    /// Per class: the area AP at IoU >= 0.5 (rows with `class`).
    Ap50,
    /// Detection: of the boxes scoring at least `metrics.threshold`, the share that match
    /// an object (IoU >= 0.5, each object once).
    Precision,
    /// Detection: the share of (not difficult) objects matched by a box scoring at least
    /// `metrics.threshold`.
    Recall,
    /// Segmentation: the share of labelled pixels whose class is right.
    PixelAccuracy,
    /// Segmentation: the mean over classes of the share of the class's pixels found.
    MeanAccuracy,
    /// Segmentation: the mean over classes of TP / (TP + FP + FN) (the course's
    /// segmentation accuracy), background included, classes absent from both the truth
    /// and the prediction left out (the FCN authors' `nanmean`).
    Miou,
    /// Segmentation: the per-class IoU weighted by each class's share of the pixels.
    FrequencyWeightedIou,
    /// Segmentation, per class: TP / (TP + FP + FN) (rows with `class`).
    Iou,
    /// Localization: the share of images whose class is wrong or whose box overlaps the
    /// true box by IoU < 0.5 (ImageNet's rule, one guess).
    LocalizationError,
    /// Localization: the mean IoU of the predicted box with the true box.
    MeanIou,
    /// Localization: the mean over images of the squared error of the box's four
    /// coordinates (relative to the image's width and height): the loss's L2 term.
    BoxL2,
    /// Detection: one of the 12 numbers of COCO's summary (pycocotools' `COCOeval`,
    /// `iouType = "bbox"`), the index into [`COCO_METRICS`].
    Coco(usize),
}

/// COCO's summary in `COCOeval.stats` order: `map` is the AP averaged over IoU 0.50:0.95,
/// `map50_coco` its AP at IoU 0.5 (101-point interpolation, crowd rules: not VOC's
/// `map50`), then AP at 0.75, AP by object size, AR at 1, 10 and 100 detections per image,
/// AR by size.
pub const COCO_METRICS: [&str; 12] = [
    "map",
    "map50_coco",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
];

/// The metric names but COCO's.
pub const METRIC_NAMES: &[&str] = &[
    "loss",
    "accuracy",
    "error_rate",
    "top5_accuracy",
    "balanced_error_rate",
    "per_class_error",
    "tp_rate",
    "fp_rate",
    "roc",
    "roc_auc",
    "roc_auc_macro",
    "roc_auc_micro",
    "confusion_matrix",
    "map50",
    "map50_voc07",
    "ap50",
    "precision",
    "recall",
    "pixel_accuracy",
    "mean_accuracy",
    "miou",
    "frequency_weighted_iou",
    "iou",
    "localization_error",
    "mean_iou",
    "box_l2",
];

/// Every metric name, for messages: [`METRIC_NAMES`], then [`COCO_METRICS`].
pub fn metric_names() -> &'static [&'static str] {
    static ALL: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| METRIC_NAMES.iter().chain(&COCO_METRICS).copied().collect());
    &ALL
}

impl MetricName {
    pub fn as_str(self) -> String {
        match self {
            MetricName::Loss => "loss".into(),
            MetricName::Accuracy => "accuracy".into(),
            MetricName::ErrorRate => "error_rate".into(),
            MetricName::TopK(k) => format!("top{k}_accuracy"),
            MetricName::BalancedErrorRate => "balanced_error_rate".into(),
            MetricName::PerClassError => "per_class_error".into(),
            MetricName::TpRate => "tp_rate".into(),
            MetricName::FpRate => "fp_rate".into(),
            MetricName::Roc => "roc".into(),
            MetricName::RocAuc => "roc_auc".into(),
            MetricName::RocAucMacro => "roc_auc_macro".into(),
            MetricName::RocAucMicro => "roc_auc_micro".into(),
            MetricName::ConfusionMatrix => "confusion_matrix".into(),
            MetricName::Map50 => "map50".into(),
            MetricName::Map50Voc07 => "map50_voc07".into(),
            MetricName::Ap50 => "ap50".into(),
            MetricName::Precision => "precision".into(),
            MetricName::Recall => "recall".into(),
            MetricName::PixelAccuracy => "pixel_accuracy".into(),
            MetricName::MeanAccuracy => "mean_accuracy".into(),
            MetricName::Miou => "miou".into(),
            MetricName::FrequencyWeightedIou => "frequency_weighted_iou".into(),
            MetricName::Iou => "iou".into(),
            MetricName::LocalizationError => "localization_error".into(),
            MetricName::MeanIou => "mean_iou".into(),
            MetricName::BoxL2 => "box_l2".into(),
            MetricName::Coco(k) => COCO_METRICS[k].into(),
        }
    }

    pub fn parse(s: &str) -> Option<MetricName> {
        Some(match s {
            "loss" => MetricName::Loss,
            "accuracy" => MetricName::Accuracy,
            "error_rate" => MetricName::ErrorRate,
            "balanced_error_rate" => MetricName::BalancedErrorRate,
            "per_class_error" => MetricName::PerClassError,
            "tp_rate" => MetricName::TpRate,
            "fp_rate" => MetricName::FpRate,
            "roc" => MetricName::Roc,
            "roc_auc" => MetricName::RocAuc,
            "roc_auc_macro" => MetricName::RocAucMacro,
            "roc_auc_micro" => MetricName::RocAucMicro,
            "confusion_matrix" => MetricName::ConfusionMatrix,
            "map50" => MetricName::Map50,
            "map50_voc07" => MetricName::Map50Voc07,
            "ap50" => MetricName::Ap50,
            "precision" => MetricName::Precision,
            "recall" => MetricName::Recall,
            "pixel_accuracy" => MetricName::PixelAccuracy,
            "mean_accuracy" => MetricName::MeanAccuracy,
            "miou" => MetricName::Miou,
            "frequency_weighted_iou" => MetricName::FrequencyWeightedIou,
            "iou" => MetricName::Iou,
            "localization_error" => MetricName::LocalizationError,
            "mean_iou" => MetricName::MeanIou,
            "box_l2" => MetricName::BoxL2,
            other if COCO_METRICS.contains(&other) => MetricName::Coco(COCO_METRICS.iter().position(|m| *m == other)?),
            other => {
                let digits = other.strip_prefix("top")?.strip_suffix("_accuracy")?;
                if digits.starts_with('0') {
                    return None;
                }
                let k = digits.parse().ok()?;
                MetricName::TopK(k)
            }
        })
    }

    /// Whether a smaller value is better: each metric declares its direction.
    pub fn lower_is_better(self) -> bool {
        match self {
            MetricName::Loss
            | MetricName::ErrorRate
            | MetricName::BalancedErrorRate
            | MetricName::PerClassError
            | MetricName::FpRate
            | MetricName::LocalizationError
            | MetricName::BoxL2 => true,
            MetricName::Accuracy
            | MetricName::TopK(_)
            | MetricName::TpRate
            | MetricName::Roc
            | MetricName::RocAuc
            | MetricName::RocAucMacro
            | MetricName::RocAucMicro
            | MetricName::ConfusionMatrix
            | MetricName::Map50
            | MetricName::Map50Voc07
            | MetricName::Ap50
            | MetricName::Precision
            | MetricName::Recall
            | MetricName::PixelAccuracy
            | MetricName::MeanAccuracy
            | MetricName::Miou
            | MetricName::FrequencyWeightedIou
            | MetricName::Iou
            | MetricName::MeanIou
            | MetricName::Coco(_) => false,
        }
    }

    /// A single number per epoch (not per class, not a curve or a table).
    pub fn is_scalar(self) -> bool {
        !matches!(
            self,
            MetricName::PerClassError
                | MetricName::Roc
                | MetricName::ConfusionMatrix
                | MetricName::Ap50
                | MetricName::Iou
        )
    }

    /// Whether computing it on the training split needs every sample's class
    /// probabilities (beyond the loss and the predicted class).
    pub fn needs_probabilities(self) -> bool {
        !matches!(self, MetricName::Loss | MetricName::Accuracy | MetricName::ErrorRate | MetricName::BalancedErrorRate)
    }

    /// A value per class (rows with `class` in `metrics.parquet`).
    pub fn is_per_class(self) -> bool {
        matches!(self, MetricName::PerClassError | MetricName::Ap50 | MetricName::Iou)
    }
}

impl Serialize for MetricName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MetricName::parse(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, metric_names()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    /// `min` for losses and error rates, `max` for the rest.
    /// The direction `metric` declares ([`MetricName::lower_is_better`]); the name may
    /// carry its split (`test.fp_rate`). A name that is no metric (a column of another
    /// tool's table) falls back to `Min` when it mentions a loss or an error.
    pub fn for_metric(metric: &str) -> Mode {
        let name = metric.rsplit('.').next().unwrap_or(metric);
        match MetricName::parse(name) {
            Some(m) if m.lower_is_better() => Mode::Min,
            Some(_) => Mode::Max,
            None if metric.contains("loss") || metric.contains("error") => Mode::Min,
            None => Mode::Max,
        }
    }

    /// Whether `new` beats `old` by more than `delta`.
    pub fn better(self, new: f64, old: f64, delta: f64) -> bool {
        match self {
            Mode::Min => new < old - delta,
            Mode::Max => new > old + delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_declares_its_direction() {
        // The name guess this replaced read fp_rate and box_l2 as "higher is better".
        for (name, want) in [
            ("test.fp_rate", Mode::Min),
            ("test.box_l2", Mode::Min),
            ("test.localization_error", Mode::Min),
            ("train.loss", Mode::Min),
            ("test.tp_rate", Mode::Max),
            ("test.top5_accuracy", Mode::Max),
            ("test.miou", Mode::Max),
            ("test.mean_iou", Mode::Max),
            ("map50", Mode::Max),
        ] {
            assert_eq!(Mode::for_metric(name), want, "{name}");
        }
        for name in metric_names() {
            assert!(MetricName::parse(name).is_some(), "{name}");
        }
    }
}
