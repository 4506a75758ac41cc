//! Detection metrics: IoU of boxes and the Pascal VOC average precision at IoU >= 1/2.
//!
//! The procedure is the VOC devkit's (`VOCevaldet`): detections of a class are sorted by
//! score; each is a true positive when its best-overlapping ground-truth box of the same
//! image has IoU >= 0.5 and was not matched before, a false positive otherwise; a match with
//! a `difficult` box counts as neither, and difficult boxes are not in the number of
//! positives. Precision / recall then give AP two ways: VOC2007's 11-point interpolation
//! (`map50_voc07`) and the area under the interpolated curve used since VOC2010
//! (`map50`). Boxes are `[x1, y1, x2, y2]` in continuous coordinates (no +1 pixel).

use crate::metrics::coco::{coco_eval, CocoDetection, CocoTruth};

/// `[x1, y1, x2, y2]`.
pub type BoxXyxy = [f64; 4];

/// Intersection over union; 0 for boxes that do not overlap (or have no area).
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// A ground-truth box of one class in one image.
#[derive(Debug, Clone)]
pub struct Truth {
    pub image: usize,
    pub bbox: BoxXyxy,
    pub difficult: bool,
}

/// A detection of one class.
#[derive(Debug, Clone)]
pub struct Detection {
    pub image: usize,
    pub score: f64,
    pub bbox: BoxXyxy,
}

/// Precision and recall after each detection (difficult matches skipped), by score.
pub fn precision_recall(dets: &[Detection], truths: &[Truth], min_iou: f64) -> (Vec<f64>, Vec<f64>) {
    let npos = truths.iter().filter(|t| !t.difficult).count() as f64;
    let mut order: Vec<usize> = (0..dets.len()).collect();
    // Stable: equal scores keep their input order (the devkit's sort).
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    let mut by_image: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for (j, t) in truths.iter().enumerate() {
        by_image.entry(t.image).or_default().push(j);
    }
    let mut used = vec![false; truths.len()];
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut prec, mut rec) = (Vec::new(), Vec::new());
    for i in order {
        let d = &dets[i];
        // The best overlap, the first on ties (MATLAB's `max`, as the devkit).
        let mut best: Option<(usize, f64)> = None;
        for &j in by_image.get(&d.image).map(Vec::as_slice).unwrap_or_default() {
            let o = iou(&d.bbox, &truths[j].bbox);
            if best.is_none_or(|(_, b)| o > b) {
                best = Some((j, o));
            }
        }
        match best {
            Some((j, o)) if o >= min_iou => {
                if truths[j].difficult {
                    continue;
                }
                if used[j] {
                    fp += 1.0;
                } else {
                    used[j] = true;
                    tp += 1.0;
                }
            }
            _ => fp += 1.0,
        }
        prec.push(tp / (tp + fp));
        rec.push(if npos > 0.0 { tp / npos } else { 0.0 });
    }
    (prec, rec)
}

/// VOC2007: the mean over recall thresholds 0, 0.1, ..., 1 of the best precision at a recall
/// at least that.
pub fn ap_voc07(prec: &[f64], rec: &[f64]) -> f64 {
    (0..=10)
        .map(|i| {
            let t = i as f64 / 10.0;
            prec.iter().zip(rec).filter(|(_, r)| **r >= t).map(|(p, _)| *p).fold(0.0, f64::max)
        })
        .sum::<f64>()
        / 11.0
}

/// VOC2010 and later: the area under the precision / recall curve after making precision
/// monotonically decreasing.
pub fn ap_area(prec: &[f64], rec: &[f64]) -> f64 {
    let mut mrec = vec![0.0];
    mrec.extend_from_slice(rec);
    mrec.push(1.0);
    let mut mpre = vec![0.0];
    mpre.extend_from_slice(prec);
    mpre.push(0.0);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (1..mrec.len()).filter(|&i| mrec[i] != mrec[i - 1]).map(|i| (mrec[i] - mrec[i - 1]) * mpre[i]).sum()
}

/// AP at IoU 0.5 of one class: `(voc07, area)`.
pub fn ap50(dets: &[Detection], truths: &[Truth]) -> (f64, f64) {
    let (p, r) = precision_recall(dets, truths, 0.5);
    (ap_voc07(&p, &r), ap_area(&p, &r))
}

/// Mean AP50 over classes that have non-difficult boxes: `(map50_voc07, map50)`.
pub fn map50(per_class: &[(Vec<Detection>, Vec<Truth>)]) -> (f64, f64) {
    let aps: Vec<(f64, f64)> =
        per_class.iter().filter(|(_, t)| t.iter().any(|t| !t.difficult)).map(|(d, t)| ap50(d, t)).collect();
    let n = aps.len().max(1) as f64;
    (aps.iter().map(|a| a.0).sum::<f64>() / n, aps.iter().map(|a| a.1).sum::<f64>() / n)
}

/// A detection split's sums over an epoch: the mean loss, every image's detections and
/// ground truth (in the pixels of the original image), per class for the metrics.
#[derive(Debug, Clone, Default)]
pub struct DetectionStats {
    loss_sum: f64,
    images: usize,
    classes: usize,
    /// `(class, detection)`.
    pub detections: Vec<(u32, Detection)>,
    /// `(class, truth)`.
    pub truths: Vec<(u32, Truth)>,
    /// The per-class APs, computed once when first asked (after the sums are complete).
    aps: std::cell::OnceCell<Vec<(f64, f64)>>,
    /// The same images as COCOeval reads them, for COCO's metrics.
    pub coco: CocoParts,
    /// COCO's 12 numbers, computed once when first asked.
    coco_stats: std::cell::OnceCell<[f64; 12]>,
}

/// What COCO's metrics read: the ids of the images evaluated and of the categories, the
/// ground truths (crowds, areas) and the detections in the order a results file lists them.
#[derive(Debug, Clone, Default)]
pub struct CocoParts {
    pub images: Vec<u64>,
    pub categories: Vec<u64>,
    pub truths: Vec<CocoTruth>,
    pub detections: Vec<CocoDetection>,
}

impl DetectionStats {
    pub fn new(classes: usize) -> Self {
        DetectionStats { classes, ..Default::default() }
    }

    /// A batch's mean loss over `images` images.
    pub fn add_loss(&mut self, mean_loss: f64, images: usize) {
        self.loss_sum += mean_loss * images as f64;
        self.images += images;
    }

    pub fn count(&self) -> usize {
        self.images
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    /// Per class: its detections and truths.
    fn per_class(&self, min_score: f64) -> Vec<(Vec<Detection>, Vec<Truth>)> {
        let mut out = vec![(Vec::new(), Vec::new()); self.classes];
        for (c, d) in self.detections.iter().filter(|(_, d)| d.score >= min_score) {
            if let Some(slot) = out.get_mut(*c as usize) {
                slot.0.push(d.clone());
            }
        }
        for (c, t) in &self.truths {
            if let Some(slot) = out.get_mut(*c as usize) {
                slot.1.push(t.clone());
            }
        }
        out
    }

    /// Per class `(ap_voc07, ap_area)`; NaN for a class without (non-difficult) objects.
    /// Matched once: later calls (each metric, the log line) reuse the result.
    pub fn ap50(&self) -> Vec<(f64, f64)> {
        self.aps
            .get_or_init(|| {
                self.per_class(f64::NEG_INFINITY)
                    .iter()
                    .map(|(d, t)| if t.iter().any(|t| !t.difficult) { ap50(d, t) } else { (f64::NAN, f64::NAN) })
                    .collect()
            })
            .clone()
    }

    /// Per class with objects: its index, area AP, and precision and recall after each
    /// counted detection (for the precision / recall plot).
    pub fn curves(&self) -> Vec<(usize, f64, Vec<f64>, Vec<f64>)> {
        self.per_class(f64::NEG_INFINITY)
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| t.iter().any(|t| !t.difficult))
            .map(|(c, (d, t))| {
                let (p, r) = precision_recall(d, t, 0.5);
                (c, ap_area(&p, &r), p, r)
            })
            .collect()
    }

    /// `(map50_voc07, map50)`: the means over the classes with (non-difficult) objects.
    pub fn map50(&self) -> (f64, f64) {
        let aps: Vec<(f64, f64)> = self.ap50().into_iter().filter(|a| !a.0.is_nan()).collect();
        let n = aps.len().max(1) as f64;
        (aps.iter().map(|a| a.0).sum::<f64>() / n, aps.iter().map(|a| a.1).sum::<f64>() / n)
    }

    /// COCO's 12 numbers ([`coco_eval`]), NaN where pycocotools gives -1 (nothing to
    /// average). Computed once.
    pub fn coco_stats(&self) -> [f64; 12] {
        *self.coco_stats.get_or_init(|| {
            let c = &self.coco;
            coco_eval(&c.images, &c.categories, &c.truths, &c.detections).map(|v| if v == -1.0 { f64::NAN } else { v })
        })
    }

    /// Precision and recall of the detections scoring at least `threshold`, over all
    /// classes (each class matched on its own, as for AP). 0 where nothing is counted.
    pub fn precision_recall_at(&self, threshold: f64) -> (f64, f64) {
        let (mut tp, mut counted, mut npos) = (0.0, 0.0, 0.0);
        for (d, t) in self.per_class(threshold) {
            let class_pos = t.iter().filter(|t| !t.difficult).count() as f64;
            // One entry per counted detection (matches of difficult objects are not counted).
            let (p, r) = precision_recall(&d, &t, 0.5);
            counted += p.len() as f64;
            tp += (r.last().copied().unwrap_or(0.0) * class_pos).round();
            npos += class_pos;
        }
        let precision = if counted > 0.0 { tp / counted } else { 0.0 };
        let recall = if npos > 0.0 { tp / npos } else { 0.0 };
        (precision, recall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/fixtures/map_voc.toml`: an independent Python implementation of the devkit's
    /// procedure (checked there against py-faster-rcnn's `voc_eval`) on generated sets of
    /// hundreds of images with ties, IoU exactly 0.5, duplicates and difficult boxes
    /// (`/usr/bin/python3 tests/fixtures/make_map_fixture.py`).
    #[test]
    fn ap_equals_the_reference_implementation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/map_voc.toml");
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let num = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).unwrap();
        let rows = |v: &toml::Value| -> Vec<Vec<f64>> {
            v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(num).collect()).collect()
        };
        let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() < 1e-9;
        for set in doc["set"].as_array().unwrap() {
            let t = set.as_table().unwrap();
            let mut stats = DetectionStats::new(t["classes"].as_integer().unwrap() as usize);
            for r in rows(&t["truths"]) {
                let truth = Truth { image: r[0] as usize, bbox: [r[2], r[3], r[4], r[5]], difficult: r[6] != 0.0 };
                stats.truths.push((r[1] as u32, truth));
            }
            for r in rows(&t["detections"]) {
                let det = Detection { image: r[0] as usize, score: r[2], bbox: [r[3], r[4], r[5], r[6]] };
                stats.detections.push((r[1] as u32, det));
            }
            let name = t["name"].as_str().unwrap();
            let want07: Vec<f64> = t["ap_voc07"].as_array().unwrap().iter().map(num).collect();
            let want_area: Vec<f64> = t["ap_area"].as_array().unwrap().iter().map(num).collect();
            for (c, (v07, area)) in stats.ap50().into_iter().enumerate() {
                assert!(same(v07, want07[c]) && same(area, want_area[c]), "{name} class {c}: {v07} {area}");
            }
            let (m07, marea) = stats.map50();
            assert!(same(m07, num(&t["map_voc07"])) && same(marea, num(&t["map_area"])), "{name}: {m07} {marea}");
        }
    }

    #[test]
    fn precision_and_recall_at_a_threshold_by_hand() {
        // Class 0: truths A, B in image 0; detections 0.9 on A (TP), 0.8 on A (duplicate,
        // FP), 0.3 on B (TP, under the threshold). Class 1: one truth, no detection.
        // At 0.5: 2 counted, 1 TP -> precision 1/2; 3 objects, 1 found -> recall 1/3.
        let mut s = DetectionStats::new(2);
        let t = |image, bbox| Truth { image, bbox, difficult: false };
        s.truths.push((0, t(0, [0., 0., 10., 10.])));
        s.truths.push((0, t(0, [20., 20., 30., 30.])));
        s.truths.push((1, t(1, [0., 0., 5., 5.])));
        let d = |score, bbox| Detection { image: 0, score, bbox };
        s.detections.push((0, d(0.9, [0., 0., 10., 10.])));
        s.detections.push((0, d(0.8, [1., 0., 10., 10.])));
        s.detections.push((0, d(0.3, [20., 20., 30., 30.])));
        let (p, r) = s.precision_recall_at(0.5);
        assert!((p - 0.5).abs() < 1e-12 && (r - 1.0 / 3.0).abs() < 1e-12, "{p} {r}");
        let (p, r) = s.precision_recall_at(0.0);
        assert!((p - 2.0 / 3.0).abs() < 1e-12 && (r - 2.0 / 3.0).abs() < 1e-12, "{p} {r}");
    }

    #[test]
    fn iou_by_hand() {
        // Two 2x2 squares overlapping in a 1x2 strip: 2 / (4 + 4 - 2) = 1/3.
        assert!((iou(&[0., 0., 2., 2.], &[1., 0., 3., 2.]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(&[0., 0., 1., 1.], &[2., 2., 3., 3.]), 0.0);
        assert_eq!(iou(&[0., 0., 1., 1.], &[0., 0., 1., 1.]), 1.0);
        // The course's detection threshold: a shifted box with IoU exactly 1/2 counts.
        // [0,0,3,2] vs [1,0,4,2]: 4 / (6 + 6 - 4) = 1/2.
        assert_eq!(iou(&[0., 0., 3., 2.], &[1., 0., 4., 2.]), 0.5);
    }

    /// A hand-made set, counted by hand with the devkit's procedure: image 0 has two boxes
    /// (A, B), image 1 one box C and one difficult box D. Five detections by score:
    /// 0.9 on A (TP), 0.8 on A again (FP, duplicate), 0.7 on D (difficult: skipped),
    /// 0.6 on nothing (FP), 0.5 on C (TP). npos = 3.
    /// After each counted detection: (p, r) = (1, 1/3), (1/2, 1/3), (1/3, 1/3), (1/2, 2/3).
    /// VOC07: recall thresholds 0..0.3 -> 1 (4 points), 0.4..0.6 -> 1/2 (3 points), 0.7..1 -> 0:
    /// (4 + 1.5) / 11 = 0.5. Area: monotone precision [1, 1, 1/2, 1/2, 1/2, 0] over recall
    /// [0, 1/3, 1/3, 1/3, 2/3, 1]: 1/3 * 1 + 1/3 * 1/2 = 1/2.
    #[test]
    fn voc_ap_by_hand() {
        let truths = vec![
            Truth { image: 0, bbox: [0., 0., 10., 10.], difficult: false },
            Truth { image: 0, bbox: [20., 20., 30., 30.], difficult: false },
            Truth { image: 1, bbox: [0., 0., 10., 10.], difficult: false },
            Truth { image: 1, bbox: [50., 50., 60., 60.], difficult: true },
        ];
        let d = |image, score, bbox| Detection { image, score, bbox };
        let dets = vec![
            d(0, 0.6, [100., 100., 110., 110.]),
            d(0, 0.9, [0., 0., 10., 11.]),
            d(1, 0.5, [1., 0., 10., 10.]),
            d(0, 0.8, [0., 1., 10., 10.]),
            d(1, 0.7, [50., 50., 60., 61.]),
        ];
        let (p, r) = precision_recall(&dets, &truths, 0.5);
        let want_p = [1.0, 0.5, 1.0 / 3.0, 0.5];
        let want_r = [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0];
        assert_eq!(p.len(), 4);
        for i in 0..4 {
            assert!((p[i] - want_p[i]).abs() < 1e-12 && (r[i] - want_r[i]).abs() < 1e-12, "{p:?} {r:?}");
        }
        let (voc07, area) = ap50(&dets, &truths);
        assert!((voc07 - 0.5).abs() < 1e-12, "{voc07}");
        assert!((area - 0.5).abs() < 1e-12, "{area}");
        // A perfect detector: AP 1 both ways; a class without boxes is left out of the mean.
        let perfect: Vec<Detection> = truths[..3].iter().map(|t| d(t.image, 1.0, t.bbox)).collect();
        assert_eq!(ap50(&perfect, &truths), (1.0, 1.0));
        let m = map50(&[(perfect, truths.clone()), (dets.clone(), truths), (vec![], vec![])]);
        assert!((m.0 - 0.75).abs() < 1e-12 && (m.1 - 0.75).abs() < 1e-12, "{m:?}");
    }
}
