//! Localization as Overfeat does it (Sermanet et al. 2014, and the course): a class and
//! one box per image. The model's output is `[classes + 4]` (the class scores, then one box
//! shared by the classes) or, with `per_class = true`, `[classes + 4 * classes]` (a box per
//! class). A box is `x0, y0, x1, y1` relative to the model input's width and height (0 to
//! 1, no activation applied).
//!
//! The target of an image is its largest object after the augmentations (by area, the
//! first listed on ties): its class and its box. Loss per batch: the cross-entropy of the
//! class scores plus `box_weight` x the mean over images of the summed squared error of the
//! four coordinates (the true class's box when boxes are per class). An image whose objects
//! the augmentations cut away counts in the cross-entropy only (its class is the largest
//! object's before the augmentations).
//!
//! Evaluation reads the predicted class's box. The metrics follow ImageNet's rule for one
//! guess: an image is a localization error when its class is wrong or its box overlaps the
//! true box by IoU < 0.5.
//!
//! Dense application (Overfeat's): a model with `fully_convolutional = true` given test
//! images larger than its input slides its input-sized window over them and outputs a map
//! `[depth, mh, mw]`; position `(i, j)` is the window whose top-left corner is
//! `(i * stride, j * stride)` (`stride`: the product of the strides on the way,
//! `PlannedGraph::output_stride`), and its box is relative to that window. The image's
//! class is the one with the highest mean probability over the positions; each position's
//! box for that class, scored with its probability of the class, is merged into one box as
//! `[task.localize] merge` says ([`Merge`]). The loss of a merged answer is the
//! cross-entropy of the mean probabilities plus `box_weight` x the merged box's squared
//! error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::{Float32Array, Float64Array, Int64Array, StringArray};
use candle_core::{DType, Tensor, D};

use crate::config::{LocalizeConfig, Merge, MetricName};
use crate::data::loader::Batch;
use crate::data::voc::main_object;
use crate::data::{folder, Split};
use crate::metrics::detection::iou;
use crate::metrics::EpochStats;
use crate::model::{Model, Pass};
use crate::plots;
use crate::plots::Labelled;
use crate::runlog::Table;
use crate::task::detect::Found;
use crate::task::{PlotSpec, PredictImage, PredictSetup, Prediction};

/// The localization head's settings, resolved by the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Localizer {
    pub cfg: LocalizeConfig,
    pub classes: usize,
}

/// How a fully convolutional model's output map lies over a larger image: windows of the
/// model's input `[h, w]`, `stride` pixels apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slide {
    pub window: [usize; 2],
    pub stride: usize,
}

/// One image's answer merged from a map.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The mean class probabilities over the positions.
    pub probs: Vec<f32>,
    pub class: u32,
    /// `probs[class]`.
    pub score: f32,
    /// Relative to the image (0 to 1).
    pub bbox: [f32; 4],
}

/// An epoch's sums: the class statistics and, per image, the box's IoU and squared error.
#[derive(Debug, Clone)]
pub struct LocStats {
    pub class: EpochStats,
    /// Per evaluated image: split index, predicted box (model-input pixels), true box, IoU.
    pub boxes: Vec<LocRow>,
    l2_sum: f64,
    l2_count: usize,
}

/// One evaluated image.
#[derive(Debug, Clone)]
pub struct LocRow {
    pub sample: usize,
    pub label: u32,
    pub pred: u32,
    pub score: f32,
    /// Relative to the model's input (0 to 1).
    pub pred_box: [f32; 4],
    pub true_box: Option<[f32; 4]>,
    pub iou: f64,
    /// The image's `[height, width]` before the augmentations.
    pub size: [usize; 2],
}

impl LocStats {
    pub fn new(classes: usize, keep_probs: bool) -> Self {
        LocStats { class: EpochStats::new(classes, keep_probs), boxes: Vec::new(), l2_sum: 0.0, l2_count: 0 }
    }

    /// Adds a batch's box squared error summed over its `n` images with a box.
    pub fn add_l2(&mut self, sum: f64, n: usize) {
        self.l2_sum += sum;
        self.l2_count += n;
    }

    pub fn box_l2(&self) -> f64 {
        if self.l2_count == 0 {
            f64::NAN
        } else {
            self.l2_sum / self.l2_count as f64
        }
    }

    /// The share of evaluated images whose class is wrong or whose IoU is under 0.5.
    pub fn localization_error(&self) -> f64 {
        if self.boxes.is_empty() {
            return f64::NAN;
        }
        let wrong = self.boxes.iter().filter(|r| r.pred != r.label || r.iou < 0.5).count();
        wrong as f64 / self.boxes.len() as f64
    }

    pub fn mean_iou(&self) -> f64 {
        if self.boxes.is_empty() {
            return f64::NAN;
        }
        self.boxes.iter().map(|r| r.iou).sum::<f64>() / self.boxes.len() as f64
    }
}

/// Each image's target: its class and its main object's box relative to `[h, w]` (none when
/// the augmentations left no object).
pub fn targets(batch: &Batch, [h, w]: [usize; 2]) -> Vec<(u32, Option<[f32; 4]>)> {
    (0..batch.len())
        .map(|k| {
            let objects = batch.objects.get(k).map(Vec::as_slice).unwrap_or_default();
            match main_object(objects) {
                Some(m) => {
                    let [x0, y0, x1, y1] = objects[m].bbox;
                    (objects[m].class, Some([x0 / w as f32, y0 / h as f32, x1 / w as f32, y1 / h as f32]))
                }
                None => (batch.labels.get(k).copied().unwrap_or(0), None),
            }
        })
        .collect()
}

impl Localizer {
    /// The output's length: the classes, then 4 or 4 x classes box values.
    pub fn depth(&self) -> usize {
        self.classes + if self.cfg.per_class { 4 * self.classes } else { 4 }
    }

    /// The class scores `[b, classes]` and the boxes `[b, 4]` of class `pick[i]` (or the
    /// shared box).
    fn split(&self, out: &Tensor, pick: &[u32]) -> Result<(Tensor, Tensor)> {
        let (b, d) = out.dims2()?;
        if d != self.depth() {
            bail!("the model gives {d} values per image; localization reads {}", self.depth());
        }
        let c = self.classes;
        let logits = out.narrow(1, 0, c)?;
        let boxes = if self.cfg.per_class {
            let all = out.narrow(1, c, 4 * c)?.reshape((b, c, 4))?;
            let idx =
                Tensor::from_vec(pick.to_vec(), (b, 1, 1), out.device())?.broadcast_as((b, 1, 4))?.contiguous()?;
            all.gather(&idx, 1)?.squeeze(1)?
        } else {
            out.narrow(1, c, 4)?
        };
        Ok((logits, boxes))
    }

    /// The batch's loss and its box part (summed squared error over the images with a box,
    /// and their count): `out` is `[b, depth]`.
    pub fn loss(&self, out: &Tensor, batch: &Batch, hw: [usize; 2]) -> Result<(Tensor, f64, usize)> {
        let t = targets(batch, hw);
        let labels: Vec<u32> = t.iter().map(|(c, _)| *c).collect();
        let (logits, boxes) = self.split(out, &labels)?;
        let ys = Tensor::from_vec(labels, t.len(), out.device())?;
        let ce = candle_nn::loss::cross_entropy(&logits, &ys)?;
        let with_box = t.iter().filter(|(_, b)| b.is_some()).count();
        let target: Vec<f32> = t.iter().flat_map(|(_, b)| b.unwrap_or([0.0; 4])).collect();
        let present: Vec<f32> = t.iter().map(|(_, b)| if b.is_some() { 1.0 } else { 0.0 }).collect();
        let target = Tensor::from_vec(target, (t.len(), 4), out.device())?;
        let present = Tensor::from_vec(present, (t.len(), 1), out.device())?;
        let sq = (boxes - target)?.sqr()?.broadcast_mul(&present)?.sum_all()?; // summed over images
        let l2_sum = sq.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let loss = (ce + (sq * (self.cfg.box_weight / t.len() as f64))?)?;
        Ok((loss, l2_sum, with_box))
    }

    /// A batch evaluated into `stats`: classes, then the predicted class's box against the
    /// true box, per image.
    pub fn eval_batch(&self, out: &Tensor, batch: &Batch, hw: [usize; 2], stats: &mut LocStats) -> Result<()> {
        let (loss, l2_sum, with_box) = self.loss(out, batch, hw)?;
        let t = targets(batch, hw);
        let logits = out.narrow(1, 0, self.classes)?.contiguous()?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let preds: Vec<u32> = probs.argmax(D::Minus1)?.to_vec1()?;
        let labels: Vec<u32> = t.iter().map(|(c, _)| *c).collect();
        let flat: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        stats.class.update(loss.to_scalar::<f32>()? as f64, Some(&flat), &preds, &labels);
        stats.class.samples.extend(batch.indices.iter().map(|&i| i as i64));
        stats.add_l2(l2_sum, with_box);
        let (_, boxes) = self.split(out, &preds)?;
        let boxes: Vec<Vec<f32>> = boxes.to_vec2()?;
        for (k, ((&i, (label, truth)), b)) in batch.indices.iter().zip(&t).zip(boxes).enumerate() {
            let pred_box = [b[0], b[1], b[2], b[3]];
            let iou = truth.map_or(0.0, |tb| iou(&pred_box.map(f64::from), &tb.map(f64::from)));
            let score = flat[k * self.classes + preds[k] as usize];
            let size = batch.sizes.get(k).copied().unwrap_or([1, 1]);
            stats.boxes.push(LocRow {
                sample: i,
                label: *label,
                pred: preds[k],
                score,
                pred_box,
                true_box: *truth,
                iou,
                size,
            });
        }
        Ok(())
    }

    /// A batch's maps (`out` is `[b, depth, mh, mw]`) evaluated into `stats` by dense
    /// application: `hw` is the test images' `[h, w]`.
    pub fn eval_map(
        &self,
        out: &Tensor,
        batch: &Batch,
        hw: [usize; 2],
        slide: Slide,
        stats: &mut LocStats,
    ) -> Result<()> {
        let (b, d, mh, mw) = out.dims4()?;
        if d != self.depth() {
            bail!("the model gives {d} values per position; localization reads {}", self.depth());
        }
        let values: Vec<f32> = out.flatten_all()?.to_vec1()?;
        let t = targets(batch, hw);
        let (mut loss, mut l2_sum, mut with_box) = (0.0f64, 0.0f64, 0usize);
        let (mut preds, mut flat) = (Vec::with_capacity(b), Vec::with_capacity(b * self.classes));
        let mut rows = Vec::with_capacity(b);
        for (k, (label, truth)) in t.iter().enumerate() {
            let m = self.merge_map(&values[k * d * mh * mw..(k + 1) * d * mh * mw], [mh, mw], slide, hw)?;
            loss -= f64::from(m.probs[*label as usize].max(f32::MIN_POSITIVE)).ln();
            let iou_k = match truth {
                Some(tb) => {
                    let sq: f64 = (0..4).map(|c| f64::from(m.bbox[c] - tb[c]).powi(2)).sum();
                    loss += self.cfg.box_weight * sq;
                    l2_sum += sq;
                    with_box += 1;
                    iou(&m.bbox.map(f64::from), &tb.map(f64::from))
                }
                None => 0.0,
            };
            let size = batch.sizes.get(k).copied().unwrap_or([1, 1]);
            let sample = batch.indices.get(k).copied().unwrap_or(k);
            rows.push(LocRow {
                sample,
                label: *label,
                pred: m.class,
                score: m.score,
                pred_box: m.bbox,
                true_box: *truth,
                iou: iou_k,
                size,
            });
            preds.push(m.class);
            flat.extend_from_slice(&m.probs);
        }
        let labels: Vec<u32> = t.iter().map(|(c, _)| *c).collect();
        stats.class.update(loss / b.max(1) as f64, Some(&flat), &preds, &labels);
        stats.class.samples.extend(batch.indices.iter().map(|&i| i as i64));
        stats.add_l2(l2_sum, with_box);
        stats.boxes.extend(rows);
        Ok(())
    }

    /// Overfeat's dense application for one image of `[h, w]`: `map` holds its output
    /// `[depth, mh, mw]` (row-major). The box is relative to the image.
    pub fn merge_map(&self, map: &[f32], [mh, mw]: [usize; 2], slide: Slide, [h, w]: [usize; 2]) -> Result<Merged> {
        let (c, n) = (self.classes, mh * mw);
        if map.len() != self.depth() * n || n == 0 {
            bail!("a map of {} values is not [{}, {mh}, {mw}]", map.len(), self.depth());
        }
        let [wh, ww] = slide.window;
        if (mh - 1) * slide.stride + wh > h || (mw - 1) * slide.stride + ww > w {
            bail!("a {mh}x{mw} map of {wh}x{ww} windows {} pixels apart does not fit in a {h}x{w} image", slide.stride);
        }
        let at = |ch: usize, p: usize| map[ch * n + p];
        // Each position's class probabilities (a softmax over its scores), and their mean.
        let mut probs = vec![0f32; c * n];
        let mut mean = vec![0f64; c];
        for p in 0..n {
            let top = (0..c).map(|k| at(k, p)).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..c).map(|k| (at(k, p) - top).exp()).sum();
            for k in 0..c {
                probs[p * c + k] = (at(k, p) - top).exp() / sum;
                mean[k] += f64::from(probs[p * c + k]) / n as f64;
            }
        }
        let class = (0..c).fold(0, |b, k| if mean[k] > mean[b] { k } else { b });
        // Each window's box for that class, in the image's relative coordinates.
        let first = c + if self.cfg.per_class { 4 * class } else { 0 };
        let boxes: Vec<([f64; 4], f64)> = (0..n)
            .map(|p| {
                let (y0, x0) = ((p / mw * slide.stride) as f64, (p % mw * slide.stride) as f64);
                let v = |i: usize| f64::from(at(first + i, p));
                let bbox = [
                    (x0 + v(0) * ww as f64) / w as f64,
                    (y0 + v(1) * wh as f64) / h as f64,
                    (x0 + v(2) * ww as f64) / w as f64,
                    (y0 + v(3) * wh as f64) / h as f64,
                ];
                (bbox, f64::from(probs[p * c + class]))
            })
            .collect();
        let best = (0..n).fold(0, |b, p| if boxes[p].1 > boxes[b].1 { p } else { b });
        let bbox = match self.cfg.merge {
            Merge::Nms => boxes[best].0,
            Merge::Weighted => {
                // The box the windows agree on most: the most probability on boxes that
                // overlap it by IoU >= 0.5 (windows that cut the object disagree).
                let support = |p: usize| -> f64 {
                    boxes.iter().filter(|(b, _)| iou(b, &boxes[p].0) >= 0.5).map(|(_, s)| s).sum()
                };
                let supports: Vec<f64> = (0..n).map(support).collect();
                let best = (0..n).fold(0, |b, p| if supports[p] > supports[b] { p } else { b });
                let (mut sum, mut weight) = ([0f64; 4], 0f64);
                for (b, s) in boxes.iter().filter(|(b, _)| iou(b, &boxes[best].0) >= 0.5) {
                    for i in 0..4 {
                        sum[i] += s * b[i];
                    }
                    weight += s;
                }
                if weight > 0.0 {
                    sum.map(|v| v / weight)
                } else {
                    boxes[best].0
                }
            }
        };
        Ok(Merged {
            probs: mean.iter().map(|&p| p as f32).collect(),
            class: class as u32,
            score: mean[class] as f32,
            bbox: bbox.map(|v| v as f32),
        })
    }

    /// Checks the model's output shape.
    pub fn check_output(&self, out: &[usize]) -> std::result::Result<(), String> {
        if out == [self.depth()] || out == [self.depth(), 1, 1] {
            return Ok(()); // [depth, 1, 1]: fully convolutional, a map on larger images
        }
        let boxes =
            if self.cfg.per_class { format!("4 x {} = {}", self.classes, 4 * self.classes) } else { "4".into() };
        Err(format!(
            "the model ends in shape {out:?}, but localization reads [classes + box values] = [{} + {boxes}] = [{}]: \
             end with a classifier and a box regressor joined by {{ concat = {{ with = [...] }} }}",
            self.classes,
            self.depth()
        ))
    }
}

/// `localizations.parquet`: the test split after the latest epoch, one row per image:
/// `epoch`, `sample`, `image`, `label`, `pred`, `score` (the predicted class's
/// probability), `xmin, ymin, xmax, ymax` (the predicted box in the original image's
/// pixels), `iou` (with the true box; 0 without one).
pub fn write_localizations(
    run_id: &str,
    epoch: usize,
    stats: &LocStats,
    names: &[String],
    images: &[PathBuf],
    path: &Path,
) -> Result<()> {
    let rows = &stats.boxes;
    let name = |c: u32| plots::class_name(names, c as usize);
    let image = |i: usize| {
        images.get(i).and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    };
    let coord = |k: usize| {
        Float32Array::from_iter_values(rows.iter().map(|r| {
            let [h, w] = r.size;
            r.pred_box[k] * if k.is_multiple_of(2) { w as f32 } else { h as f32 }
        }))
    };
    Table::new(run_id, rows.len())
        .constant_i32("epoch", epoch as i32)
        .col("sample", Int64Array::from_iter_values(rows.iter().map(|r| r.sample as i64)))
        .col("image", StringArray::from_iter_values(rows.iter().map(|r| image(r.sample))))
        .col("label", StringArray::from_iter_values(rows.iter().map(|r| name(r.label))))
        .col("pred", StringArray::from_iter_values(rows.iter().map(|r| name(r.pred))))
        .col("score", Float32Array::from_iter_values(rows.iter().map(|r| r.score)))
        .col("xmin", coord(0))
        .col("ymin", coord(1))
        .col("xmax", coord(2))
        .col("ymax", coord(3))
        .col("iou", Float64Array::from_iter_values(rows.iter().map(|r| r.iou)))
        .write(path)
}

/// Localization's plots: the confusion matrix, and the first nine test images with the
/// predicted box (labelled with its class and probability) and the true box in white.
pub fn plots(dir: &Path, spec: &PlotSpec, s: &LocStats, split: &Split) -> Result<()> {
    if spec.wants(MetricName::ConfusionMatrix) {
        plots::confusion(&dir.join("confusion_matrix.png"), &s.class.confusion(), spec.classes)?;
    }
    let name = |c: u32| spec.class_name(c as usize);
    let mut images = Vec::new();
    for r in s.boxes.iter().filter(|r| r.sample < 9) {
        let Some(file) = split.files.get(r.sample) else { continue };
        let (bytes, h, w) = folder::decode(file, 3)?;
        let scale = |b: [f32; 4]| [b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32];
        let mut boxes = Vec::new();
        if let Some(t) = r.true_box {
            boxes.push(Labelled { text: String::new(), bbox: scale(t), colour: 0, truth: true });
        }
        let text = format!("{} {:.2}", name(r.pred), r.score);
        boxes.push(Labelled { text, bbox: scale(r.pred_box), colour: r.pred as usize, truth: false });
        images.push((bytes, [h, w], boxes));
    }
    plots::boxes_grid(&dir.join("localizations.png"), &images)
}

/// A localizer's class and box for one image (the predicted class's box), in the pixels of
/// the image; the score is the class's probability. A fully convolutional model on a larger
/// image is applied densely, as Overfeat does: the windows' classes and boxes merged.
pub fn predict(model: &Model, loc: &Localizer, setup: &PredictSetup, image: PredictImage) -> Result<Prediction> {
    let (input, dims, [h, w]) = (setup.input, image.dims, image.size);
    let to_pixels = |b: [f32; 4]| [b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32];
    let larger = dims[0] == input[0] && dims[1] >= input[1] && dims[2] >= input[2];
    if model.graph().fully_convolutional && larger && dims != input {
        let path = image.path;
        let xs = Tensor::from_vec(image.values, (1, dims[0], dims[1], dims[2]), model.device())?;
        let out = model.forward(&xs, Pass::eval())?;
        let (_, _, mh, mw) = out.dims4()?;
        let stride = model.graph().output_stride().map_err(anyhow::Error::msg)?;
        let slide = Slide { window: [input[1], input[2]], stride };
        let m = loc
            .merge_map(&out.flatten_all()?.to_vec1::<f32>()?, [mh, mw], slide, [dims[1], dims[2]])
            .with_context(|| format!("{}: dense application", path.display()))?;
        return Ok(Prediction::Boxes(vec![Found { class: m.class, score: m.score, bbox: to_pixels(m.bbox) }]));
    }
    let y = image.forward(model, input)?.flatten_all()?.to_vec1::<f32>()?;
    if y.len() != loc.depth() {
        bail!("the model gives {} values; localization reads {}", y.len(), loc.depth());
    }
    let c = loc.classes;
    let probs = candle_nn::ops::softmax_last_dim(&Tensor::new(&y[..c], model.device())?)?.to_vec1::<f32>()?;
    let (class, score) = probs.iter().enumerate().fold((0, f32::MIN), |b, (k, &p)| if p > b.1 { (k, p) } else { b });
    let at = c + if loc.cfg.per_class { 4 * class } else { 0 };
    let bbox = to_pixels([y[at], y[at + 1], y[at + 2], y[at + 3]]);
    Ok(Prediction::Boxes(vec![Found { class: class as u32, score, bbox }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::voc::Object;
    use candle_core::Device;

    fn obj(class: u32, bbox: [f32; 4]) -> Object {
        Object { class, bbox, difficult: false, truncated: false }
    }

    /// Two 10x10 images: image 0 holds a class-1 box [2, 2, 6, 8] (target 0.2, 0.2, 0.6,
    /// 0.8); image 1 a small class-1 box and a larger class-0 box [0, 0, 10, 5], the target
    /// (0, 0, 1, 0.5). By hand: CE is the mean of ln(1 + e^(l_other - l_true)); the box term
    /// the summed squared errors over both images, divided by 2, times `box_weight`.
    #[test]
    fn loss_by_hand_shared_and_per_class() {
        let batch = Batch {
            images: Vec::new(),
            labels: vec![1, 0],
            objects: vec![vec![obj(1, [2., 2., 6., 8.])], vec![obj(1, [1., 1., 3., 3.]), obj(0, [0., 0., 10., 5.])]],
            masks: Vec::new(),
            sizes: vec![[10, 10], [10, 10]],
            indices: vec![0, 1],
            skipped: Vec::new(),
        };
        let out =
            Tensor::new(&[[0.5f32, 1.5, 0.1, 0.2, 0.5, 0.9], [2.0, -1.0, 0.0, 0.1, 0.8, 0.5]], &Device::Cpu).unwrap();
        let loc =
            Localizer { cfg: LocalizeConfig { box_weight: 2.0, per_class: false, ..Default::default() }, classes: 2 };
        let (loss, l2, n) = loc.loss(&out, &batch, [10, 10]).unwrap();
        let ce = ((1.0f64 + (-1.0f64).exp()).ln() + (1.0f64 + (-3.0f64).exp()).ln()) / 2.0;
        let sq0 = 0.1f64.powi(2) + 0.0 + 0.1f64.powi(2) + 0.1f64.powi(2);
        let sq1 = 0.0 + 0.1f64.powi(2) + 0.2f64.powi(2) + 0.0;
        assert_eq!(n, 2);
        assert!((l2 - (sq0 + sq1)).abs() < 1e-6, "{l2}");
        let want = ce + 2.0 * (sq0 + sq1) / 2.0;
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");

        // Per class: values 2..6 are class 0's box, 6..10 class 1's; each image's true class's.
        let out = Tensor::new(
            &[[0.5f32, 1.5, 9., 9., 9., 9., 0.1, 0.2, 0.5, 0.9], [2.0, -1.0, 0.0, 0.1, 0.8, 0.5, 9., 9., 9., 9.]],
            &Device::Cpu,
        )
        .unwrap();
        let loc =
            Localizer { cfg: LocalizeConfig { box_weight: 2.0, per_class: true, ..Default::default() }, classes: 2 };
        let got = loc.loss(&out, &batch, [10, 10]).unwrap().0.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Evaluation reads the predicted class's box: image 0 predicts class 1 (right),
        // image 1 class 0 (right); IoU of [0.1, 0.2, 0.5, 0.9] with [0.2, 0.2, 0.6, 0.8]:
        // intersection 0.3 x 0.6 = 0.18, union 0.28 + 0.24 - 0.18 = 0.34.
        let mut stats = LocStats::new(2, true);
        loc.eval_batch(&out, &batch, [10, 10], &mut stats).unwrap();
        assert!((stats.boxes[0].iou - 0.18 / 0.34).abs() < 1e-6, "{}", stats.boxes[0].iou);
        // Image 1: [0, 0.1, 0.8, 0.5] with [0, 0, 1, 0.5]: 0.8 x 0.4 = 0.32 over 0.5 -> 0.64.
        assert!((stats.boxes[1].iou - 0.64).abs() < 1e-6, "{}", stats.boxes[1].iou);
        assert_eq!(stats.localization_error(), 0.0);
        assert!((stats.mean_iou() - (0.18 / 0.34 + 0.64) / 2.0).abs() < 1e-6);
        assert!((stats.box_l2() - (sq0 + sq1) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn the_head_must_give_classes_and_boxes() {
        let loc =
            Localizer { cfg: LocalizeConfig { box_weight: 1.0, per_class: true, ..Default::default() }, classes: 5 };
        assert!(loc.check_output(&[25]).is_ok());
        let e = loc.check_output(&[9]).unwrap_err();
        assert!(e.contains("[5 + 4 x 5 = 20] = [25]"), "{e}");
    }

    /// A 2x2 map of 10x10 windows 5 pixels apart over a 15x15 image, two classes, one
    /// shared box; by hand. Class 1's probability per position (logits 0 and ln 3, 0 and 0,
    /// ln 3 and 0, 0 and ln 9): 0.75, 0.5, 0.25, 0.9, mean 0.6 (class 1 wins). The boxes in
    /// image pixels: position (1, 1) [5, 5, 10, 10] (the best, 0.9), (0, 0) the same box,
    /// (0, 1) [6, 6, 10, 10] (IoU 16/25 with the best: merged), (1, 0) [0, 5, 2, 7] (IoU 0:
    /// left out).
    #[test]
    fn dense_maps_merge_by_hand() {
        let (l3, l9) = (3f32.ln(), 9f32.ln());
        #[rustfmt::skip]
        let map = [
            0.0, 0.0, l3, 0.0,    // class 0's logits at (0,0) (0,1) (1,0) (1,1)
            l3, 0.0, 0.0, l9,     // class 1's
            0.5, 0.1, 0.0, 0.0,   // x0 relative to each window
            0.5, 0.6, 0.0, 0.0,   // y0
            1.0, 0.5, 0.2, 0.5,   // x1
            1.0, 1.0, 0.2, 0.5,   // y1
        ];
        let slide = Slide { window: [10, 10], stride: 5 };
        let mut loc = Localizer { cfg: LocalizeConfig { box_weight: 1.0, ..Default::default() }, classes: 2 };
        let m = loc.merge_map(&map, [2, 2], slide, [15, 15]).unwrap();
        assert_eq!(m.class, 1);
        assert!((m.score - 0.6).abs() < 1e-6 && (m.probs[0] - 0.4).abs() < 1e-6, "{m:?}");
        let x0 = (0.9 * 5.0 + 0.75 * 5.0 + 0.5 * 6.0) / 2.15 / 15.0;
        let want = [x0, x0, 10.0 / 15.0, 10.0 / 15.0];
        for i in 0..4 {
            assert!((f64::from(m.bbox[i]) - want[i]).abs() < 1e-6, "weighted {:?} vs {want:?}", m.bbox);
        }
        loc.cfg.merge = Merge::Nms;
        let m = loc.merge_map(&map, [2, 2], slide, [15, 15]).unwrap();
        let want = [5.0 / 15.0, 5.0 / 15.0, 10.0 / 15.0, 10.0 / 15.0];
        for i in 0..4 {
            assert!((f64::from(m.bbox[i]) - want[i]).abs() < 1e-6, "nms {:?} vs {want:?}", m.bbox);
        }
        // Weighted picks the box most windows agree on, NMS the most probable window's:
        // three windows 5 pixels apart along a 10x20 image (one class, every probability
        // 1), the first cutting the object [8, 2, 14, 8] at its edge (IoU 1/3 with it),
        // the other two seeing it whole.
        #[rustfmt::skip]
        let row = [
            0.0, 0.0, 0.0,
            0.8, 0.3, -0.2,   // x0: 8, 5 + 3, 10 - 2
            0.2, 0.2, 0.2,    // y0: 2
            1.0, 0.9, 0.4,    // x1: 10, 5 + 9, 10 + 4
            0.8, 0.8, 0.8,    // y1: 8
        ];
        let one = |merge| Localizer { cfg: LocalizeConfig { merge, ..Default::default() }, classes: 1 };
        let m = one(Merge::Weighted).merge_map(&row, [1, 3], slide, [10, 20]).unwrap();
        let want = [8.0 / 20.0, 0.2, 14.0 / 20.0, 0.8];
        for i in 0..4 {
            assert!((f64::from(m.bbox[i]) - want[i]).abs() < 1e-6, "weighted {:?} vs {want:?}", m.bbox);
        }
        let m = one(Merge::Nms).merge_map(&row, [1, 3], slide, [10, 20]).unwrap();
        let want = [8.0 / 20.0, 0.2, 10.0 / 20.0, 0.8];
        for i in 0..4 {
            assert!((f64::from(m.bbox[i]) - want[i]).abs() < 1e-6, "nms {:?} vs {want:?}", m.bbox);
        }

        // The windows must lie inside the image: 2 positions of 10 pixels 5 apart need 15.
        let e = loc.merge_map(&map, [2, 2], slide, [14, 15]).unwrap_err().to_string();
        assert!(e.contains("does not fit in a 14x15 image"), "{e}");

        // Evaluated as a batch of one image whose class-1 box is [5, 5, 10, 10] of 15: the
        // loss is -ln 0.6 plus the merged box's squared error (the NMS box: 0).
        let batch = Batch {
            images: Vec::new(),
            labels: vec![1],
            objects: vec![vec![obj(1, [5., 5., 10., 10.])]],
            masks: Vec::new(),
            sizes: vec![[30, 30]],
            indices: vec![7],
            skipped: Vec::new(),
        };
        let out = Tensor::from_vec(map.to_vec(), (1, 6, 2, 2), &Device::Cpu).unwrap();
        let mut stats = LocStats::new(2, true);
        loc.eval_map(&out, &batch, [15, 15], slide, &mut stats).unwrap();
        assert!((stats.class.mean_loss() + 0.6f64.ln()).abs() < 1e-6, "{}", stats.class.mean_loss());
        assert!((stats.boxes[0].iou - 1.0).abs() < 1e-6 && stats.boxes[0].sample == 7);
        assert_eq!(stats.localization_error(), 0.0);
    }
}
