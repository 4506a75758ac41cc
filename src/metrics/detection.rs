//! Detection metrics: IoU of boxes and the Pascal VOC average precision at IoU >= 1/2.
//!
//! The procedure is the VOC devkit's (`VOCevaldet`): detections of a class are sorted by
//! score; each is a true positive when its best-overlapping ground-truth box of the same
//! image has IoU >= 0.5 and was not matched before, a false positive otherwise; a match with
//! a `difficult` box counts as neither, and difficult boxes are not in the number of
//! positives. Precision / recall then give AP two ways: VOC2007's 11-point interpolation
//! (`map50_voc07`) and the area under the interpolated curve used since VOC2010
//! (`map50_area`). Boxes are `[x1, y1, x2, y2]` in continuous coordinates (no +1 pixel).

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
    let mut used = vec![false; truths.len()];
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut prec, mut rec) = (Vec::new(), Vec::new());
    for i in order {
        let d = &dets[i];
        let best = truths
            .iter()
            .enumerate()
            .filter(|(_, t)| t.image == d.image)
            .map(|(j, t)| (j, iou(&d.bbox, &t.bbox)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
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

/// Mean AP50 over classes that have non-difficult boxes: `(map50_voc07, map50_area)`.
pub fn map50(per_class: &[(Vec<Detection>, Vec<Truth>)]) -> (f64, f64) {
    let aps: Vec<(f64, f64)> =
        per_class.iter().filter(|(_, t)| t.iter().any(|t| !t.difficult)).map(|(d, t)| ap50(d, t)).collect();
    let n = aps.len().max(1) as f64;
    (aps.iter().map(|a| a.0).sum::<f64>() / n, aps.iter().map(|a| a.1).sum::<f64>() / n)
}

#[cfg(test)]
mod tests {
    use super::*;

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
