//! Detection as YOLOv1 does it (Redmon et al. 2016, and the course): the image is an
//! `S x S` grid; each cell predicts `B` boxes with a confidence and one set of `C` class
//! scores; a cell is responsible for the objects whose centre falls in it.
//!
//! The model's output, per image, is read as `[S, S, B*5 + C]` (row, column, values): a
//! flat `[S*S*(B*5+C)]` output (a linear head) in that order, or a `[B*5+C, S, S]` map (a
//! convolutional head), channels first. Per cell, box `b` is values `5b..5b+5`:
//! `x, y` (the centre's offset in the cell, in cell sizes), `sqrt(w), sqrt(h)` (the square
//! roots of the size relative to the image, as Darknet predicts them with `sqrt = 1`) and
//! the confidence; then the `C` class scores. No activation is applied: the course's loss
//! is a squared error on every value.
//!
//! Loss, per image, summed, then averaged over the batch:
//! `lambda_coord` x the squared errors of `x, y, sqrt w, sqrt h` of the responsible
//! predictor in each cell with an object; `lambda_obj` x its squared confidence error, the
//! target being its IoU with the object (no gradient through the IoU); `lambda_noobj` x the
//! squared confidence of every other predictor (all of an empty cell's); `lambda_class` x the
//! squared errors of the class scores against the one-hot class in cells with an object.
//! The responsible predictor is the one whose box has the highest IoU with the object (the
//! first on ties, so box 0 while nothing overlaps). One object per cell: when several
//! centres fall in one cell, the largest object (by area) is the target, the first listed
//! on ties; the others are not targets. Difficult objects are never targets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use arrow_array::{Float32Array, Float64Array, Int64Array, StringArray};
use candle_core::{Device, Tensor};

use crate::config::DetectConfig;
use crate::data::voc::Object;
use crate::data::{folder, Split};
use crate::metrics::coco::{CocoDetection, CocoTruth};
use crate::metrics::detection::{iou, BoxXyxy, CocoParts, DetectionStats};
use crate::model::Model;
use crate::plots;
use crate::plots::Labelled;
use crate::runlog::Table;
use crate::task::{PlotSpec, PredictImage, PredictSetup, Prediction};

/// The YOLOv1 head's geometry and loss weights, resolved by the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Yolo {
    pub cfg: DetectConfig,
    /// Classes.
    pub classes: usize,
}

/// A box found in an image: class, score (confidence x class score) and edges in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub class: u32,
    pub score: f32,
    pub bbox: [f32; 4],
}

impl Yolo {
    /// Values per cell: `B*5 + C`.
    pub fn depth(&self) -> usize {
        self.cfg.boxes * 5 + self.classes
    }

    /// The model's output as `[n, S, S, B*5+C]`.
    pub fn cells(&self, out: &Tensor) -> Result<Tensor> {
        let (s, d) = (self.cfg.grid, self.depth());
        let n = out.dim(0)?;
        Ok(match out.dims() {
            [_, c, h, w] if (*c, *h, *w) == (d, s, s) => out.permute((0, 2, 3, 1))?.contiguous()?, // [n, s, s, d]
            [_, rest] if *rest == s * s * d => out.reshape((n, s, s, d))?,
            other => {
                bail!("the model's output is {other:?}; the detect task reads [n, {d}, {s}, {s}] or [n, {}]", s * s * d)
            }
        })
    }

    /// The loss of a batch: `out` as the model gives it, `objects` per image in the pixels of
    /// the `[h, w]` input.
    pub fn loss(&self, out: &Tensor, objects: &[Vec<Object>], [h, w]: [usize; 2]) -> Result<Tensor> {
        let cells = self.cells(out)?;
        let n = cells.dim(0)?;
        if objects.len() != n {
            bail!("{} images but {} target lists", n, objects.len());
        }
        let values: Vec<f64> = cells.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let (target, weight) = self.targets(&values, objects, [h, w]);
        let (shape, device, dtype) = (cells.shape().clone(), cells.device(), cells.dtype());
        let target = Tensor::from_vec(target, &shape, device)?.to_dtype(dtype)?;
        let weight = Tensor::from_vec(weight, &shape, device)?.to_dtype(dtype)?;
        Ok(((cells - target)?.sqr()? * weight)?.sum_all()?.affine(1.0 / n as f64, 0.0)?)
    }

    /// The loss as `sum(weight * (value - target)^2) / n`: per value of `[n, S, S, D]` its
    /// target and weight, from the predicted boxes (which pick the responsible predictors
    /// and give the confidence targets) and the objects.
    pub fn targets(&self, values: &[f64], objects: &[Vec<Object>], [h, w]: [usize; 2]) -> (Vec<f64>, Vec<f64>) {
        let DetectConfig { grid: s, boxes: nb, lambda_coord, lambda_obj, lambda_noobj, lambda_class, .. } = self.cfg;
        let d = self.depth();
        let mut target = vec![0f64; values.len()];
        let mut weight = vec![0f64; values.len()];
        // Every predictor's confidence is pushed to 0 unless it is responsible.
        for cell in 0..values.len() / d {
            for b in 0..nb {
                weight[cell * d + 5 * b + 4] = lambda_noobj;
            }
        }
        for (img, objs) in objects.iter().enumerate() {
            for (cell, t) in self.cell_targets(objs, [h, w]) {
                let base = (img * s * s + cell) * d;
                let (i, j) = (cell / s, cell % s);
                let truth = t.corners();
                let ious: Vec<f64> = (0..nb)
                    .map(|b| iou(&pred_corners(&values[base + 5 * b..base + 5 * b + 4], i, j, s), &truth))
                    .collect();
                let mut best = 0;
                for b in 1..nb {
                    if ious[b] > ious[best] {
                        best = b;
                    }
                }
                let o = base + 5 * best;
                target[o..o + 4].copy_from_slice(&[t.x, t.y, t.sqrt_w, t.sqrt_h]);
                weight[o..o + 4].fill(lambda_coord);
                target[o + 4] = ious[best];
                weight[o + 4] = lambda_obj;
                let cls = base + 5 * nb;
                weight[cls..cls + self.classes].fill(lambda_class);
                target[cls + t.class as usize] = 1.0;
            }
        }
        (target, weight)
    }

    /// The cells with an object: `(row * S + column, target)`, one object per cell (the
    /// largest; the first on ties), difficult objects left out.
    pub fn cell_targets(&self, objects: &[Object], [h, w]: [usize; 2]) -> Vec<(usize, CellTarget)> {
        let s = self.cfg.grid;
        let mut cells: Vec<Option<CellTarget>> = vec![None; s * s];
        for o in objects.iter().filter(|o| !o.difficult) {
            let [x0, y0, x1, y1] = o.bbox.map(f64::from);
            let (cx, cy) = ((x0 + x1) / 2.0 / w as f64, (y0 + y1) / 2.0 / h as f64);
            let (bw, bh) = ((x1 - x0) / w as f64, (y1 - y0) / h as f64);
            let j = ((cx * s as f64).floor() as usize).min(s - 1);
            let i = ((cy * s as f64).floor() as usize).min(s - 1);
            let t = CellTarget {
                x: cx * s as f64 - j as f64,
                y: cy * s as f64 - i as f64,
                sqrt_w: bw.max(0.0).sqrt(),
                sqrt_h: bh.max(0.0).sqrt(),
                class: o.class,
                i,
                j,
                s,
            };
            let slot = &mut cells[i * s + j];
            if slot.is_none_or(|prev| t.area() > prev.area()) {
                *slot = Some(t);
            }
        }
        cells.into_iter().enumerate().filter_map(|(c, t)| Some((c, t?))).collect()
    }

    /// One image's boxes from its `[S, S, D]` values: score = confidence x class score for
    /// every (predictor, class), those below `score_min` dropped, per-class greedy NMS, the
    /// `max_detections` best; edges in the pixels of an `[h, w]` input.
    pub fn decode(&self, values: &[f32], [h, w]: [usize; 2]) -> Vec<Found> {
        let (s, nb, d) = (self.cfg.grid, self.cfg.boxes, self.depth());
        let mut found = Vec::new();
        for cell in 0..s * s {
            let v = &values[cell * d..(cell + 1) * d];
            let (i, j) = (cell / s, cell % s);
            for b in 0..nb {
                let c = pred_corners(&[0, 1, 2, 3].map(|k| v[5 * b + k] as f64), i, j, s);
                let bbox = [
                    (c[0] * w as f64).clamp(0.0, w as f64) as f32,
                    (c[1] * h as f64).clamp(0.0, h as f64) as f32,
                    (c[2] * w as f64).clamp(0.0, w as f64) as f32,
                    (c[3] * h as f64).clamp(0.0, h as f64) as f32,
                ];
                // Both factors are probabilities: a linear head's negative values count as 0
                // (two negatives must not make a positive score).
                let conf = v[5 * b + 4].max(0.0);
                for class in 0..self.classes {
                    let score = conf * v[5 * nb + class].max(0.0);
                    if score as f64 >= self.cfg.score_min && bbox[2] > bbox[0] && bbox[3] > bbox[1] {
                        found.push(Found { class: class as u32, score, bbox });
                    }
                }
            }
        }
        nms(found, self.cfg.nms_iou, self.cfg.max_detections)
    }
}

/// A predictor's box `[x, y, sqrt w, sqrt h]` in cell `(i, j)` as relative corners.
fn pred_corners(v: &[f64], i: usize, j: usize, s: usize) -> BoxXyxy {
    let cx = (j as f64 + v[0]) / s as f64;
    let cy = (i as f64 + v[1]) / s as f64;
    let (bw, bh) = (v[2].powi(2), v[3].powi(2));
    [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0]
}

/// What a cell with an object is trained towards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellTarget {
    pub x: f64,
    pub y: f64,
    pub sqrt_w: f64,
    pub sqrt_h: f64,
    pub class: u32,
    i: usize,
    j: usize,
    s: usize,
}

impl CellTarget {
    fn area(&self) -> f64 {
        self.sqrt_w.powi(2) * self.sqrt_h.powi(2)
    }

    /// The object's box as relative corners.
    fn corners(&self) -> BoxXyxy {
        pred_corners(&[self.x, self.y, self.sqrt_w, self.sqrt_h], self.i, self.j, self.s)
    }
}

/// Greedy non-maximum suppression per class: by score (stable), a box is kept unless it
/// overlaps a kept box of its class by IoU > `max_iou`; the first `max_keep` kept, sorted by
/// score. (A box's fate depends only on the higher-scoring boxes of its class, so stopping
/// at `max_keep` gives the best `max_keep` of the full suppression.)
pub fn nms(mut found: Vec<Found>, max_iou: f64, max_keep: usize) -> Vec<Found> {
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut by_class: std::collections::HashMap<u32, Vec<BoxXyxy>> = std::collections::HashMap::new();
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        if kept.len() == max_keep {
            break;
        }
        let b = f.bbox.map(f64::from);
        let same = by_class.entry(f.class).or_default();
        if same.iter().all(|k| iou(k, &b) <= max_iou) {
            same.push(b);
            kept.push(f);
        }
    }
    kept
}

/// Runs on the CPU: the detections of a batch's `[n, ...]` output, each image's boxes in the
/// pixels of its original `[h, w]` (`sizes`), from an `[in_h, in_w]` input (the test
/// augmentations only resize, so the scale is exact).
pub fn decode_batch(yolo: &Yolo, out: &Tensor, input: [usize; 2], sizes: &[[usize; 2]]) -> Result<Vec<Vec<Found>>> {
    let cells = yolo.cells(&out.to_device(&Device::Cpu)?)?;
    let values: Vec<f32> = cells.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let per = yolo.cfg.grid * yolo.cfg.grid * yolo.depth();
    use rayon::prelude::*;
    Ok(values
        .par_chunks(per)
        .zip(sizes)
        .map(|(v, &[h, w])| {
            let (sx, sy) = (w as f32 / input[1] as f32, h as f32 / input[0] as f32);
            let mut found = yolo.decode(v, input);
            for f in &mut found {
                f.bbox = [f.bbox[0] * sx, f.bbox[1] * sy, f.bbox[2] * sx, f.bbox[3] * sy];
            }
            found
        })
        .collect())
}

/// Adds image `i` of `split` and its `found` boxes to COCO's view: COCO's own ids on COCO
/// data; elsewhere image `i + 1` and category `class + 1`, each box's area its own, and
/// VOC's difficult objects as crowd regions (both rules ignore detections on them).
pub fn add_coco(coco: &mut CocoParts, split: &Split, i: usize, found: &[Found], classes: usize) {
    let ids = split.coco.as_ref();
    if coco.categories.is_empty() {
        coco.categories = match ids {
            Some(ids) => ids.categories.clone(),
            None => (1..=classes as u64).collect(),
        };
    }
    let image = ids.and_then(|ids| ids.images.get(i).copied()).unwrap_or(i as u64 + 1);
    coco.images.push(image);
    match ids.and_then(|ids| ids.truths.get(i)) {
        Some(truths) => coco.truths.extend(truths.iter().cloned()),
        None => {
            for o in split.objects.get(i).map(Vec::as_slice).unwrap_or_default() {
                let [x0, y0, x1, y1] = o.bbox.map(f64::from);
                coco.truths.push(CocoTruth {
                    id: coco.truths.len() as u64 + 1,
                    image,
                    category: o.class as u64 + 1,
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    area: (x1 - x0) * (y1 - y0),
                    iscrowd: o.difficult,
                });
            }
        }
    }
    for f in found {
        let [x0, y0, x1, y1] = f.bbox.map(f64::from);
        let category = coco.categories.get(f.class as usize).copied().unwrap_or(f.class as u64 + 1);
        coco.detections.push(CocoDetection {
            image,
            category,
            bbox: [x0, y0, x1 - x0, y1 - y0],
            score: f.score as f64,
        });
    }
}

/// `detections.json`: the test split's boxes after the latest epoch in COCO's results
/// format (`image_id`, `category_id`, `bbox` `[x, y, w, h]`, `score`), in the order the
/// metrics read them, for pycocotools' `loadRes` against the split's instances file.
pub fn write_coco_results(stats: &DetectionStats, path: &Path) -> Result<()> {
    let rows: Vec<serde_json::Value> = stats
        .coco
        .detections
        .iter()
        .map(
            |d| serde_json::json!({ "image_id": d.image, "category_id": d.category, "bbox": d.bbox, "score": d.score }),
        )
        .collect();
    let text = serde_json::to_string(&rows)?;
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `detections.parquet`: the test split's boxes after the latest epoch, one row per box:
/// `epoch`, `sample` (index in the split), `image` (its file's stem, VOC's id), `class`,
/// `score`, `xmin, ymin, xmax, ymax` (continuous edges in the original image's pixels); on
/// COCO data also COCO's `image_id` and `category_id`.
pub fn write_detections(
    run_id: &str,
    epoch: usize,
    stats: &DetectionStats,
    names: &[String],
    split: &Split,
    path: &Path,
) -> Result<()> {
    let images = &split.files;
    let rows = &stats.detections;
    let name = |c: u32| plots::class_name(names, c as usize);
    let image = |i: usize| {
        images.get(i).and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    };
    let coord = |k: usize| Float32Array::from_iter_values(rows.iter().map(|(_, d)| d.bbox[k] as f32));
    let table = Table::new(run_id, rows.len())
        .constant_i32("epoch", epoch as i32)
        .col("sample", Int64Array::from_iter_values(rows.iter().map(|(_, d)| d.image as i64)))
        .col("image", StringArray::from_iter_values(rows.iter().map(|(_, d)| image(d.image))))
        .col("class", StringArray::from_iter_values(rows.iter().map(|(c, _)| name(*c))))
        .col("score", Float32Array::from_iter_values(rows.iter().map(|(_, d)| d.score as f32)))
        .col("xmin", coord(0))
        .col("ymin", coord(1))
        .col("xmax", coord(2))
        .col("ymax", coord(3));
    let table = match &split.coco {
        Some(ids) => {
            let image_id = |i: usize| ids.images.get(i).copied().unwrap_or_default() as i64;
            let category_id = |c: u32| ids.categories.get(c as usize).copied().unwrap_or_default() as i64;
            table
                .col("image_id", Int64Array::from_iter_values(rows.iter().map(|(_, d)| image_id(d.image))))
                .col("category_id", Int64Array::from_iter_values(rows.iter().map(|(c, _)| category_id(*c))))
        }
        None => table,
    };
    table.write(path)
}

/// `precision_recall_test.parquet`: per class with objects, its area AP and the precision
/// and recall after each counted detection by falling score (`rank` from 1), at IoU 0.5.
pub fn write_precision_recall(
    run_id: &str,
    epoch: usize,
    stats: &DetectionStats,
    names: &[String],
    path: &Path,
) -> Result<()> {
    let name = |c: usize| plots::class_name(names, c);
    let (mut class, mut ap, mut rank, mut precision, mut recall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (c, a, p, r) in stats.curves() {
        for (k, (p, r)) in p.iter().zip(&r).enumerate() {
            class.push(name(c));
            ap.push(a);
            rank.push(k as i64 + 1);
            precision.push(*p);
            recall.push(*r);
        }
    }
    Table::new(run_id, class.len())
        .constant_i32("epoch", epoch as i32)
        .constant_str("split", "test")
        .col("class", StringArray::from(class))
        .col("ap", Float64Array::from(ap))
        .col("rank", Int64Array::from(rank))
        .col("precision", Float64Array::from(precision))
        .col("recall", Float64Array::from(recall))
        .write(path)
}

/// Detection's plots: precision / recall per class with its AP, and the first nine test
/// images with the boxes scoring at least `metrics.threshold` (ground truth in white).
pub fn plots(dir: &Path, spec: &PlotSpec, s: &DetectionStats, split: &Split) -> Result<()> {
    let name = |c: usize| spec.class_name(c);
    let curves: Vec<_> = s.curves().into_iter().map(|(c, ap, p, r)| (name(c), ap, p, r)).collect();
    plots::precision_recall(&dir.join("precision_recall.png"), &curves)?;
    let mut images = Vec::new();
    for (i, file) in split.files.iter().enumerate().take(9) {
        let (bytes, h, w) = folder::decode(file, 3)?;
        let truths = split.objects.get(i).map(Vec::as_slice).unwrap_or_default();
        let mut boxes: Vec<Labelled> =
            truths.iter().map(|o| Labelled { text: String::new(), bbox: o.bbox, colour: 0, truth: true }).collect();
        for (c, d) in s.detections.iter().filter(|(_, d)| d.image == i && d.score >= spec.binary.threshold) {
            let text = format!("{} {:.2}", name(*c as usize), d.score);
            let bbox = d.bbox.map(|v| v as f32);
            boxes.push(Labelled { text, bbox, colour: *c as usize, truth: false });
        }
        images.push((bytes, [h, w], boxes));
    }
    plots::boxes_grid(&dir.join("detections.png"), &images)
}

/// A detector's boxes for one image at or above the display threshold `setup.score_min`,
/// best first, in the pixels of the image.
pub fn predict(model: &Model, yolo: &Yolo, setup: &PredictSetup, image: PredictImage) -> Result<Prediction> {
    let (dims, size) = (image.dims, image.size);
    let y = image.forward(model, setup.input)?;
    let mut shown = yolo.clone();
    shown.cfg.score_min = shown.cfg.score_min.min(setup.score_min as f64);
    let found = decode_batch(&shown, &y, [dims[1], dims[2]], &[size])?.pop().unwrap_or_default();
    Ok(Prediction::Boxes(found.into_iter().filter(|b| b.score >= setup.score_min).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VOC or YOLO data seen by COCO's metrics, by hand: image `i` is id `i + 1`, class `c`
    /// category `c + 1`, areas the boxes', a difficult object a crowd region; boxes become
    /// `[x, y, w, h]`.
    #[test]
    fn voc_data_as_coco_sees_it() {
        let split = Split {
            len: 2,
            objects: vec![
                vec![],
                vec![
                    Object { class: 1, bbox: [10.0, 20.0, 40.0, 30.0], difficult: false, truncated: false },
                    Object { class: 0, bbox: [0.0, 0.0, 4.0, 4.0], difficult: true, truncated: false },
                ],
            ],
            ..Default::default()
        };
        let mut c = CocoParts::default();
        let found = [Found { class: 2, score: 0.5, bbox: [1.0, 2.0, 3.0, 5.0] }];
        add_coco(&mut c, &split, 1, &found, 3);
        add_coco(&mut c, &split, 0, &[], 3);
        assert_eq!((c.images.as_slice(), c.categories.as_slice()), (&[2, 1][..], &[1, 2, 3][..]));
        let t = &c.truths;
        assert_eq!(
            (t[0].image, t[0].category, t[0].bbox, t[0].area, t[0].iscrowd),
            (2, 2, [10., 20., 30., 10.], 300., false)
        );
        assert_eq!((t[1].id, t[1].category, t[1].iscrowd), (2, 1, true));
        let d = &c.detections[0];
        assert_eq!((d.image, d.category, d.bbox, d.score), (2, 3, [1., 2., 2., 3.], 0.5));
    }

    fn yolo(s: usize, b: usize, c: usize) -> Yolo {
        Yolo { cfg: DetectConfig { grid: s, boxes: b, ..Default::default() }, classes: c }
    }

    fn obj(class: u32, bbox: [f32; 4]) -> Object {
        Object { class, bbox, difficult: false, truncated: false }
    }

    /// A 2x2 grid, B = 1, C = 2, a 4x4 image, by hand. One object of class 1 at [0, 0, 2, 2]:
    /// centre (1, 1) -> relative (0.25, 0.25), cell (0, 0), x = y = 0.5, sqrt w = sqrt h =
    /// sqrt(0.5). Predictions: cell (0, 0) = [0.5, 0.5, 0.5, 0.5, conf 0.8, 0.3, 0.6]: a
    /// box of side 0.25 centred on the object's centre: IoU = 0.0625 / 0.25 = 0.25. The other
    /// three cells have confidence 0.4 and are empty.
    /// coord: 5 * 2 * (0.5 - sqrt 0.5)^2 = 10 * 0.0428932 = 0.428932
    /// obj: (0.8 - 0.25)^2 = 0.3025; noobj: 0.5 * 3 * 0.16 = 0.24
    /// class: (0.3 - 0)^2 + (0.6 - 1)^2 = 0.25. Total 1.221432.
    #[test]
    fn loss_by_hand_on_a_2x2_grid() {
        let y = yolo(2, 1, 2);
        let mut v = vec![0f32; 4 * 7];
        v[..7].copy_from_slice(&[0.5, 0.5, 0.5, 0.5, 0.8, 0.3, 0.6]);
        for cell in 1..4 {
            v[cell * 7 + 4] = 0.4;
        }
        let out = Tensor::from_vec(v, (1, 28), &Device::Cpu).unwrap();
        let objects = vec![vec![obj(1, [0., 0., 2., 2.])]];
        let loss = y.loss(&out, &objects, [4, 4]).unwrap().to_scalar::<f32>().unwrap();
        let coord = 10.0 * (0.5f64 - 0.5f64.sqrt()).powi(2);
        let want = coord + 0.3025 + 0.24 + 0.25;
        assert!((loss as f64 - want).abs() < 1e-6, "{loss} vs {want}");
        // A difficult object is no target: every confidence is then pushed to 0 alone.
        let hard = vec![vec![Object { difficult: true, ..objects[0][0] }]];
        let loss = y.loss(&out, &hard, [4, 4]).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss as f64 - 0.5 * (0.64 + 3.0 * 0.16)).abs() < 1e-6, "{loss}");
    }

    /// `tests/fixtures/yolo_torch.toml`: the loss from the paper's formula and its gradient
    /// by PyTorch's autograd (float64), on random outputs and targets
    /// (`/usr/bin/python3 tests/fixtures/make_yolo_fixture.py`).
    #[test]
    fn loss_and_gradient_equal_pytorch() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolo_torch.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let cases = doc["case"].as_array().unwrap();
        assert!(cases.len() >= 6);
        let num = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).unwrap();
        for case in cases {
            let c = case.as_table().unwrap();
            let int = |k: &str| c[k].as_integer().unwrap() as usize;
            let (s, b, classes, n) = (int("s"), int("b"), int("c"), int("n"));
            let cfg = DetectConfig {
                grid: s,
                boxes: b,
                lambda_coord: num(&c["lambda_coord"]),
                lambda_obj: num(&c["lambda_obj"]),
                lambda_noobj: num(&c["lambda_noobj"]),
                lambda_class: num(&c["lambda_class"]),
                ..Default::default()
            };
            let y = Yolo { cfg, classes };
            let output: Vec<f64> = c["output"].as_array().unwrap().iter().map(num).collect();
            let mut objects = vec![Vec::new(); n];
            for row in c["objects"].as_array().unwrap() {
                let r: Vec<f64> = row.as_array().unwrap().iter().map(num).collect();
                objects[r[0] as usize].push(Object {
                    class: r[1] as u32,
                    bbox: [r[2] as f32, r[3] as f32, r[4] as f32, r[5] as f32],
                    difficult: r[6] != 0.0,
                    truncated: false,
                });
            }
            let out = candle_core::Var::from_vec(output, (n, s * s * y.depth()), &Device::Cpu).unwrap();
            let loss = y.loss(out.as_tensor(), &objects, [int("height"), int("width")]).unwrap();
            let got = loss.to_scalar::<f64>().unwrap();
            let want = num(&c["loss"]);
            let name = c["name"].as_str().unwrap();
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{name}: loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            let g: Vec<f64> = grads.get(&out).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f64> = c["grad"].as_array().unwrap().iter().map(num).collect();
            let worst = g.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-6, "{name}: gradient off by {worst}");
        }
    }

    #[test]
    fn the_largest_object_of_a_cell_wins() {
        let y = yolo(2, 1, 3);
        // Both centres in cell (0, 0) of a 10x10 image; the second is larger.
        let t =
            y.cell_targets(&[obj(0, [0., 0., 2., 2.]), obj(2, [0., 0., 4., 4.]), obj(1, [6., 6., 10., 10.])], [10, 10]);
        let got: Vec<(usize, u32)> = t.iter().map(|(c, t)| (*c, t.class)).collect();
        assert_eq!(got, vec![(0, 2), (3, 1)]);
        // An object touching the right and bottom edges stays in the last cell.
        let t = y.cell_targets(&[obj(0, [9., 9., 10., 10.])], [10, 10]);
        assert_eq!(t[0].0, 3);
        assert!((t[0].1.x - 0.9).abs() < 1e-6);
    }

    #[test]
    fn decode_scores_nms_and_limits() {
        let mut y = yolo(1, 2, 2);
        y.cfg.score_min = 0.1;
        // One cell, two predictors on nearly the same box; class scores [0.9, 0.2].
        let v = [0.5, 0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.45, 0.5, 0.8, 0.9, 0.2];
        let found = y.decode(&v, [100, 100]);
        // Class 0: 0.81 and 0.72 overlap (IoU 0.81) -> one kept; class 1: 0.18 and 0.16 ->
        // one kept; boxes of 25x25 px centred at (50, 50).
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].class, found[1].class), (0, 1));
        assert!((found[0].score - 0.81).abs() < 1e-6 && (found[1].score - 0.18).abs() < 1e-6);
        assert_eq!(found[0].bbox, [37.5, 37.5, 62.5, 62.5]);
        // A linear head's negative confidence and class score do not make a positive score.
        let negative = [0.5, 0.5, 0.5, 0.5, -0.9, 0.5, 0.5, 0.45, 0.5, -0.8, -0.9, -0.2];
        assert!(y.decode(&negative, [100, 100]).is_empty());
        // An output of another shape is an error naming both shapes.
        let bad = Tensor::zeros((1, 13, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = y.cells(&bad).unwrap_err().to_string();
        assert!(e.contains("[1, 13, 1, 1]") && e.contains("[n, 12, 1, 1]"), "{e}");
        y.cfg.max_detections = 1;
        assert_eq!(y.decode(&v, [100, 100]).len(), 1);
        y.cfg.score_min = 0.9;
        assert!(y.decode(&v, [100, 100]).is_empty());
    }
}
