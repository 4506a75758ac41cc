//! `[task]`: what the model's output means (classification by default, `[task.detect]`
//! for YOLOv1's boxes), with the detection loss weights and decoding. The task's behaviour
//! lives in `crate::task`.

use serde::{Deserialize, Serialize};

use super::{half, one_f, MetricName};

/// `[task]`: what the model's output means. One table, one variant: `[task.detect]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskConfig {
    /// One class per image: cross-entropy over the model's `[classes]` output.
    Classify {},
    /// YOLOv1: boxes from an `S x S` grid of cells, each with `boxes` predictors.
    Detect(DetectConfig),
    /// A class per pixel (FCN): per-pixel cross-entropy over the model's `[classes, H, W]`
    /// output, the input's size.
    Segment(SegmentConfig),
    /// A class and one box per image (Overfeat): cross-entropy plus `box_weight` x the L2
    /// error of the box.
    Localize(LocalizeConfig),
}

/// `[task.localize]`: the weight of the box's L2 loss beside the class's cross-entropy, and
/// whether the box regressor is shared by the classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizeConfig {
    #[serde(default = "one_f")]
    pub box_weight: f64,
    /// `false`: one box `[4]` for every class (the course: it does as well); `true`: a box
    /// per class `[4 * classes]`, the true class's trained, the predicted class's read.
    #[serde(default)]
    pub per_class: bool,
    /// Dense application (a fully convolutional model on test images larger than its
    /// input): how the map's boxes become the image's one box.
    #[serde(default)]
    pub merge: Merge,
}

impl Default for LocalizeConfig {
    fn default() -> Self {
        LocalizeConfig { box_weight: 1.0, per_class: false, merge: Merge::Weighted }
    }
}

/// `[task.localize] merge`: the map's windows all vote for the class (mean probability);
/// their boxes for that class, each scored with that class's probability, become one box.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// The box the windows agree on: the one with the most score on boxes that overlap it
    /// by IoU >= 0.5, averaged with those boxes, their scores as weights (Overfeat's merge
    /// of overlapping boxes, whose final box is the cluster with the most confidence; kept
    /// to one box). Windows that cut the object rarely agree with each other.
    #[default]
    Weighted,
    /// Greedy non-maximum suppression kept to its first box: the best-scoring window's box.
    Nms,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig::Classify {}
    }
}

/// The config's own knowledge of each task, in one place: the metrics it logs by default
/// and those it can log, and whether its VOC data read class masks. (The plan turns
/// `[task]` into a `task::Task`, whose file under `src/task/` holds everything else.)
impl TaskConfig {
    pub fn is_classify(&self) -> bool {
        matches!(self, TaskConfig::Classify {})
    }

    /// The metric lists `[metrics]` falls back to, `(train, test)`: classification logs loss,
    /// accuracy and error rate on both splits; detection the loss while training and the
    /// loss, mAP (area and VOC07) and per-class AP on the test split; segmentation the loss
    /// while training and the FCN paper's four scores, per-class IoU and the pixel
    /// confusion matrix on the test split; localization adds the localization error, mean
    /// IoU and box L2 to classification's.
    pub fn default_metrics(&self) -> (Vec<MetricName>, Vec<MetricName>) {
        use MetricName::*;
        match self {
            TaskConfig::Classify {} => (vec![Loss, Accuracy, ErrorRate], vec![Loss, Accuracy, ErrorRate]),
            TaskConfig::Detect(_) => (vec![Loss], vec![Loss, Map50, Map50Voc07, Ap50]),
            TaskConfig::Segment(_) => {
                (vec![Loss], vec![Loss, PixelAccuracy, MeanAccuracy, Miou, FrequencyWeightedIou, Iou, ConfusionMatrix])
            }
            TaskConfig::Localize(_) => (vec![Loss, Accuracy], vec![Loss, Accuracy, LocalizationError, MeanIou, BoxL2]),
        }
    }

    /// Whether `metric` applies to this task's outputs (`loss` applies to every task).
    pub fn logs(&self, metric: MetricName) -> bool {
        use MetricName::*;
        let detection = matches!(metric, Map50 | Map50Voc07 | Ap50 | Precision | Recall | Coco(_));
        let segmentation = matches!(metric, PixelAccuracy | MeanAccuracy | Miou | FrequencyWeightedIou | Iou);
        let localization = matches!(metric, LocalizationError | MeanIou | BoxL2);
        match self {
            TaskConfig::Classify {} => !detection && !segmentation && !localization,
            TaskConfig::Localize(_) => {
                localization
                    || matches!(
                        metric,
                        Loss | Accuracy | ErrorRate | BalancedErrorRate | PerClassError | ConfusionMatrix
                    )
            }
            TaskConfig::Detect(_) => detection || metric == Loss,
            TaskConfig::Segment(_) => segmentation || metric == Loss || metric == ConfusionMatrix,
        }
    }

    /// Whether the task reads VOC's class masks (`[data.voc] masks` defaults to it).
    pub fn reads_masks(&self) -> bool {
        matches!(self, TaskConfig::Segment(_))
    }
}

/// `[task.segment]`: the mask value that carries no label and how the per-pixel losses
/// are combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Pixels with this mask value are left out of the loss and the metrics (VOC's 255,
    /// the void border around objects).
    #[serde(default = "default_ignore")]
    pub ignore_index: u8,
    /// `mean`: the loss is the mean over the labelled pixels of the batch (PyTorch's
    /// `cross_entropy(..., ignore_index=255)`); `sum`: their sum divided by the batch size,
    /// as the FCN authors' Caffe loss with `normalize: false` (with a learning rate to match).
    #[serde(default)]
    pub reduction: Reduction,
    /// Per-class weights of the loss (PyTorch's `weight`: with `mean`, the weighted sum is
    /// divided by the sum of the labelled pixels' weights). Absent: all 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f64>>,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig { ignore_index: default_ignore(), reduction: Reduction::Mean, class_weights: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
}

fn default_ignore() -> u8 {
    255
}

/// `[task.detect]`: the grid, the course's four loss weights, and how outputs become boxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// `S`: the image is an `S x S` grid of cells; a cell predicts the objects whose centre it holds.
    #[serde(default = "seven")]
    pub grid: usize,
    /// `B`: box predictors per cell.
    #[serde(default = "two_u")]
    pub boxes: usize,
    #[serde(default = "five")]
    pub lambda_coord: f64,
    #[serde(default = "one_f")]
    pub lambda_obj: f64,
    #[serde(default = "half")]
    pub lambda_noobj: f64,
    #[serde(default = "one_f")]
    pub lambda_class: f64,
    /// Boxes scoring (confidence x class score) below this are dropped before NMS.
    #[serde(default = "default_score_min")]
    pub score_min: f64,
    /// Per-class greedy non-maximum suppression: a box overlapping a higher-scoring box of
    /// its class by more than this IoU is dropped.
    #[serde(default = "half")]
    pub nms_iou: f64,
    /// At most this many boxes per image, the highest scores.
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            grid: seven(),
            boxes: two_u(),
            lambda_coord: five(),
            lambda_obj: one_f(),
            lambda_noobj: half(),
            lambda_class: one_f(),
            score_min: default_score_min(),
            nms_iou: half(),
            max_detections: default_max_detections(),
        }
    }
}

fn seven() -> usize {
    7
}
fn two_u() -> usize {
    2
}
fn five() -> f64 {
    5.0
}
fn default_score_min() -> f64 {
    0.005
}
fn default_max_detections() -> usize {
    100
}
