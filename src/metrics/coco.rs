//! COCO's detection metrics, computed as pycocotools' `COCOeval` (iouType `bbox`) computes
//! them: the 12 numbers of its summary (mAP over IoU 0.50:0.95, at 0.50 and 0.75, by object
//! size; recall at 1, 10 and 100 detections, by size). Its rules, kept here one for one:
//! - boxes are `[x, y, w, h]` in pixels; IoU from the boxes' own `w * h`; against a crowd
//!   region the IoU is the intersection over the detection's area;
//! - per image and category, detections by score (stable on ties), the best 100 evaluated;
//!   a ground truth is ignored when it is a crowd or its `area` field is outside the area
//!   range; at each IoU threshold each detection takes the best unmatched ground truth with
//!   an IoU at least the threshold, preferring ones not ignored; a detection matched to an
//!   ignored one, or unmatched with its own area outside the range, is ignored;
//! - precision at 101 recall points, made monotone from the right; a category without a
//!   ground truth not ignored is left out of the means.
//!
//! The tests compare the 12 numbers with pycocotools' to 1e-9 on generated sets.

use crate::config::COCO_METRICS;

/// A ground-truth object: `bbox` is `[x, y, w, h]`; `area` as the annotation gives it (COCO
/// reads it, not recomputes it); `id` at least 1.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoTruth {
    pub id: u64,
    pub image: u64,
    pub category: u64,
    pub bbox: [f64; 4],
    pub area: f64,
    pub iscrowd: bool,
}

/// A detection, `bbox` `[x, y, w, h]`, in the order of the results file (its id is its
/// position + 1, as `loadRes` numbers them).
#[derive(Debug, Clone, PartialEq)]
pub struct CocoDetection {
    pub image: u64,
    pub category: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// The summary's names, in `COCOeval.stats` order (`map50_coco` is its AP at IoU 0.5).
pub const COCO_STATS: [&str; 12] = COCO_METRICS;

const MAX_DETS: [usize; 3] = [1, 10, 100];
/// all, small, medium, large (`areaRng`).
const AREAS: [[f64; 2]; 4] = [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];

/// NumPy's `linspace(start, stop, n)`: `start + i * step`, the last exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { stop } else { i as f64 * step + start }).collect()
}

/// pycocotools' `bbIou` for one pair.
fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// One image and category at one area range: `evaluateImg`'s result.
struct ImageEval {
    /// Per IoU threshold, per detection (by score, at most 100): matched, ignored.
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    scores: Vec<f64>,
    /// Ground truths not ignored.
    counted: usize,
}

fn evaluate_image(
    truths: &[&CocoTruth],
    dets: &[(u64, &CocoDetection)],
    area: [f64; 2],
    thresholds: &[f64],
) -> Option<ImageEval> {
    if truths.is_empty() && dets.is_empty() {
        return None;
    }
    let outside = |a: f64| a < area[0] || a > area[1];
    // Ground truths not ignored first (stable).
    let mut gt: Vec<(&CocoTruth, bool)> = truths.iter().map(|g| (*g, g.iscrowd || outside(g.area))).collect();
    gt.sort_by_key(|(_, ig)| *ig);
    let mut dt: Vec<&(u64, &CocoDetection)> = dets.iter().collect();
    dt.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    dt.truncate(100);
    let ious: Vec<Vec<f64>> =
        dt.iter().map(|(_, d)| gt.iter().map(|(g, _)| iou(&d.bbox, &g.bbox, g.iscrowd)).collect()).collect();
    let (t_n, g_n, d_n) = (thresholds.len(), gt.len(), dt.len());
    let mut matched = vec![vec![false; d_n]; t_n];
    let mut ignored = vec![vec![false; d_n]; t_n];
    for (ti, &t) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; g_n];
        for di in 0..d_n {
            let mut best = t.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for gi in 0..g_n {
                if gt_taken[gi] && !gt[gi].0.iscrowd {
                    continue;
                }
                if m.is_some_and(|m| !gt[m].1) && gt[gi].1 {
                    break;
                }
                if ious[di][gi] < best {
                    continue;
                }
                best = ious[di][gi];
                m = Some(gi);
            }
            if let Some(m) = m {
                ignored[ti][di] = gt[m].1;
                matched[ti][di] = true;
                gt_taken[m] = true;
            }
        }
        // Unmatched detections outside the area range are ignored.
        for di in 0..d_n {
            let d = dt[di].1;
            if !matched[ti][di] && outside(d.bbox[2] * d.bbox[3]) {
                ignored[ti][di] = true;
            }
        }
    }
    Some(ImageEval {
        matched,
        ignored,
        scores: dt.iter().map(|(_, d)| d.score).collect(),
        counted: gt.iter().filter(|(_, ig)| !ig).count(),
    })
}

/// The 12 numbers of `COCOeval.summarize()` for `dets` against `truths` over `images` and
/// `categories` (those of the ground-truth file; detections elsewhere are not counted).
/// A number without anything to average is -1, as pycocotools prints it.
pub fn coco_eval(images: &[u64], categories: &[u64], truths: &[CocoTruth], dets: &[CocoDetection]) -> [f64; 12] {
    let thresholds = linspace(0.5, 0.95, 10);
    let rec_thresholds = linspace(0.0, 1.0, 101);
    let mut images = images.to_vec();
    images.sort_unstable();
    images.dedup();
    let mut cats = categories.to_vec();
    cats.sort_unstable();
    cats.dedup();
    use std::collections::HashMap;
    let mut gts: HashMap<(u64, u64), Vec<&CocoTruth>> = HashMap::new();
    for g in truths {
        gts.entry((g.image, g.category)).or_default().push(g);
    }
    let mut dts: HashMap<(u64, u64), Vec<(u64, &CocoDetection)>> = HashMap::new();
    for (k, d) in dets.iter().enumerate() {
        dts.entry((d.image, d.category)).or_default().push((k as u64 + 1, d));
    }
    let (t_n, r_n, k_n) = (thresholds.len(), rec_thresholds.len(), cats.len());
    // precision[t][r][k][a][m], recall[t][k][a][m]; -1 where undefined.
    let mut precision = vec![vec![vec![[[-1.0f64; 3]; 4]; k_n]; r_n]; t_n];
    let mut recall = vec![vec![[[-1.0f64; 3]; 4]; k_n]; t_n];
    for (ki, cat) in cats.iter().enumerate() {
        for (ai, area) in AREAS.iter().enumerate() {
            let evals: Vec<ImageEval> = images
                .iter()
                .filter_map(|img| {
                    let g = gts.get(&(*img, *cat)).map(Vec::as_slice).unwrap_or_default();
                    let d = dts.get(&(*img, *cat)).map(Vec::as_slice).unwrap_or_default();
                    evaluate_image(g, d, *area, &thresholds)
                })
                .collect();
            if evals.is_empty() {
                continue;
            }
            let counted: usize = evals.iter().map(|e| e.counted).sum();
            if counted == 0 {
                continue;
            }
            for (mi, &max_det) in MAX_DETS.iter().enumerate() {
                // Every image's best `max_det`, in image order, then by score (stable).
                let mut all: Vec<(f64, usize, usize)> = Vec::new();
                for (ei, e) in evals.iter().enumerate() {
                    for di in 0..e.scores.len().min(max_det) {
                        all.push((e.scores[di], ei, di));
                    }
                }
                all.sort_by(|a, b| b.0.total_cmp(&a.0));
                for ti in 0..t_n {
                    let (mut tp, mut fp) = (0.0f64, 0.0f64);
                    let mut rc = Vec::with_capacity(all.len());
                    let mut pr = Vec::with_capacity(all.len());
                    for &(_, ei, di) in &all {
                        let e = &evals[ei];
                        if e.ignored[ti][di] {
                            // Neither: the sums stay, but the point is on the curve.
                        } else if e.matched[ti][di] {
                            tp += 1.0;
                        } else {
                            fp += 1.0;
                        }
                        rc.push(tp / counted as f64);
                        pr.push(tp / (fp + tp + f64::EPSILON));
                    }
                    recall[ti][ki][ai][mi] = rc.last().copied().unwrap_or(0.0);
                    for i in (1..pr.len()).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    for (ri, &r) in rec_thresholds.iter().enumerate() {
                        // `searchsorted(rc, r, side='left')`; past the end the rest stay 0.
                        let pi = rc.partition_point(|&x| x < r);
                        precision[ti][ri][ki][ai][mi] = if pi < pr.len() { pr[pi] } else { 0.0 };
                    }
                }
            }
        }
    }
    let mean = |xs: Vec<f64>| -> f64 {
        let v: Vec<f64> = xs.into_iter().filter(|x| *x > -1.0).collect();
        if v.is_empty() {
            -1.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let ap = |t: Option<usize>, a: usize, m: usize| {
        let mut v = Vec::new();
        for (ti, per_t) in precision.iter().enumerate() {
            if t.is_some_and(|t| t != ti) {
                continue;
            }
            for per_r in per_t {
                for per_k in per_r {
                    v.push(per_k[a][m]);
                }
            }
        }
        mean(v)
    };
    let ar = |a: usize, m: usize| mean(recall.iter().flat_map(|per_t| per_t.iter().map(|per_k| per_k[a][m])).collect());
    [
        ap(None, 0, 2),
        ap(Some(0), 0, 2),
        ap(Some(5), 0, 2),
        ap(None, 1, 2),
        ap(None, 2, 2),
        ap(None, 3, 2),
        ar(0, 0),
        ar(0, 1),
        ar(0, 2),
        ar(1, 2),
        ar(2, 2),
        ar(3, 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        let g = |id, image, bbox: [f64; 4]| CocoTruth {
            id,
            image,
            category: 1,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: false,
        };
        let d = |image, bbox, score| CocoDetection { image, category: 1, bbox, score };
        // One large object found exactly: every AP and AR of `all` and `large` is 1 (precision
        // 1 / (1 + eps), as pycocotools divides), small and medium have nothing to count (-1).
        let s = coco_eval(&[1], &[1], &[g(1, 1, [0.0, 0.0, 100.0, 100.0])], &[d(1, [0.0, 0.0, 100.0, 100.0], 0.9)]);
        let want = [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0];
        assert!(s.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{s:?}");
        // IoU 0.5748 (a 100x100 box against one shifted by 27: 73*100 / (2*10000 - 7300)):
        // matched at thresholds 0.50 and 0.55 only, so AP = 2/10, AP50 = 1, AP75 = 0.
        let s = coco_eval(&[1], &[1], &[g(1, 1, [0.0, 0.0, 100.0, 100.0])], &[d(1, [27.0, 0.0, 100.0, 100.0], 0.9)]);
        assert!((s[0] - 0.2).abs() < 1e-12 && (s[1] - 1.0).abs() < 1e-12 && s[2] == 0.0, "{s:?}");
        // A false positive scored above the true one: precision 1/2 at recall 1, so AP50 =
        // 0.5 (every recall point takes the interpolated 0.5).
        let s = coco_eval(
            &[1],
            &[1],
            &[g(1, 1, [0.0, 0.0, 100.0, 100.0])],
            &[d(1, [300.0, 300.0, 50.0, 50.0], 0.95), d(1, [0.0, 0.0, 100.0, 100.0], 0.9)],
        );
        assert!((s[1] - 0.5).abs() < 1e-12, "{s:?}");
        assert_eq!(s[6], 0.0, "AR@1 sees the false positive only");
    }
}
