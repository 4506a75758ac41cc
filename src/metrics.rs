//! The course's metrics. Classification here (per epoch, from labels, predictions and class
//! probabilities); detection in [`detection`]; segmentation in [`segmentation`].
//!
//! Definitions (the course's, with scikit-learn's conventions where it has one):
//! - error rate: the fraction of samples whose predicted class is not the label; accuracy is
//!   1 - error rate; top-k accuracy: the label is among the k highest scores (ties go to the
//!   higher class index, as scikit-learn's `top_k_accuracy_score`).
//! - balanced error rate: 1 - the mean over classes (present among the labels) of
//!   TP_c / (TP_c + FN_c); per-class error: FN_c / (TP_c + FN_c).
//! - true-positive rate TP / (TP + FN) and false-positive rate FP / (FP + TN) of the positive
//!   class against the rest, predicted positive when its probability >= the threshold.
//! - ROC: (FPR, TPR) at every distinct score, from (0, 0) (threshold +inf) to (1, 1); its
//!   area by the trapezoid rule (scikit-learn's `roc_curve(drop_intermediate=False)` and
//!   `roc_auc_score`); macro: the mean of the one-vs-rest areas; micro: one curve over
//!   every (sample, class) pair.

pub mod coco;
pub mod detection;
pub mod segmentation;

use crate::config::MetricName;

/// Sums over an epoch; `update` per batch, the metrics at the end. Class probabilities are
/// kept when a metric needs them (`keep_probs`).
#[derive(Debug, Clone, Default)]
pub struct EpochStats {
    loss_sum: f64,
    classes: usize,
    keep_probs: bool,
    pub labels: Vec<u32>,
    pub preds: Vec<u32>,
    /// Each sample's index in its split (evaluation only).
    pub samples: Vec<i64>,
    /// `[n, classes]`, row-major, when kept.
    pub probs: Vec<f32>,
}

/// A class's ROC curve: its name and `(threshold, fpr, tpr)` points.
pub type RocCurve = (String, Vec<(f64, f64, f64)>);

/// What the scalar metrics need besides the samples.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    pub positive: usize,
    pub threshold: f64,
}

impl EpochStats {
    pub fn new(classes: usize, keep_probs: bool) -> Self {
        EpochStats { classes, keep_probs, ..Default::default() }
    }

    /// `mean_loss` is the batch's mean loss; `probs` its `[b, classes]` probabilities (used
    /// when kept); `preds` and `labels` its predicted and true classes.
    pub fn update(&mut self, mean_loss: f64, probs: Option<&[f32]>, preds: &[u32], labels: &[u32]) {
        self.loss_sum += mean_loss * labels.len() as f64;
        self.preds.extend_from_slice(preds);
        self.labels.extend_from_slice(labels);
        if self.keep_probs {
            if let Some(p) = probs {
                self.probs.extend_from_slice(p);
            }
        }
    }

    pub fn count(&self) -> usize {
        self.labels.len()
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count().max(1) as f64
    }

    pub fn has_probs(&self) -> bool {
        !self.labels.is_empty() && self.probs.len() == self.labels.len() * self.classes
    }

    /// A scalar metric; NaN when it is undefined here (no probabilities kept, one class).
    pub fn compute(&self, metric: MetricName, b: Binary) -> f64 {
        let accuracy = accuracy(&self.labels, &self.preds);
        let probs = || self.has_probs().then_some(self.probs.as_slice());
        let column =
            |c: usize| -> Vec<f64> { self.probs.iter().skip(c).step_by(self.classes).map(|&p| p as f64).collect() };
        let is = |c: usize| -> Vec<bool> { self.labels.iter().map(|&l| l as usize == c).collect() };
        match metric {
            MetricName::Loss => self.mean_loss(),
            MetricName::Accuracy => accuracy,
            MetricName::ErrorRate => 1.0 - accuracy,
            MetricName::TopK(k) => probs().map_or(f64::NAN, |p| top_k_accuracy(&self.labels, p, self.classes, k)),
            MetricName::BalancedErrorRate => balanced_error_rate(&self.labels, &self.preds, self.classes),
            MetricName::TpRate | MetricName::FpRate => {
                if !self.has_probs() {
                    return f64::NAN;
                }
                let (tpr, fpr) = rates_at(&column(b.positive), &is(b.positive), b.threshold);
                if metric == MetricName::TpRate {
                    tpr
                } else {
                    fpr
                }
            }
            MetricName::RocAuc if self.classes == 2 => {
                if !self.has_probs() {
                    return f64::NAN;
                }
                roc_auc(&column(b.positive), &is(b.positive))
            }
            MetricName::RocAuc | MetricName::RocAucMacro => {
                probs().map_or(f64::NAN, |p| roc_auc_macro(&self.labels, p, self.classes))
            }
            MetricName::RocAucMicro => probs().map_or(f64::NAN, |p| roc_auc_micro(&self.labels, p, self.classes)),
            MetricName::PerClassError | MetricName::Roc | MetricName::ConfusionMatrix => f64::NAN,
            // Detection metrics: `detection::DetectionStats`.
            MetricName::Map50
            | MetricName::Map50Voc07
            | MetricName::Ap50
            | MetricName::Precision
            | MetricName::Recall
            | MetricName::Coco(_) => f64::NAN,
            // Segmentation metrics: `segmentation::SegStats`.
            MetricName::PixelAccuracy
            | MetricName::MeanAccuracy
            | MetricName::Miou
            | MetricName::FrequencyWeightedIou
            | MetricName::Iou => f64::NAN,
            // Localization metrics: `task::localize::LocStats`.
            MetricName::LocalizationError | MetricName::MeanIou | MetricName::BoxL2 => f64::NAN,
        }
    }

    pub fn per_class_error(&self) -> Vec<f64> {
        per_class_error(&self.labels, &self.preds, self.classes)
    }

    pub fn confusion(&self) -> Vec<Vec<u64>> {
        confusion_matrix(&self.labels, &self.preds, self.classes)
    }

    /// The positive class's curve with two classes, else every class's against the rest.
    pub fn roc_curves(&self, b: Binary, names: &[String]) -> Vec<RocCurve> {
        let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
        if self.classes == 2 {
            vec![(name(b.positive), self.roc(b.positive))]
        } else {
            (0..self.classes).map(|c| (name(c), self.roc(c))).collect()
        }
    }

    /// The ROC curve of `class` against the rest: `(threshold, fpr, tpr)`.
    pub fn roc(&self, class: usize) -> Vec<(f64, f64, f64)> {
        if !self.has_probs() {
            return Vec::new();
        }
        let scores: Vec<f64> = self.probs.iter().skip(class).step_by(self.classes).map(|&p| p as f64).collect();
        let pos: Vec<bool> = self.labels.iter().map(|&l| l as usize == class).collect();
        roc_curve(&scores, &pos)
    }
}

pub fn accuracy(labels: &[u32], preds: &[u32]) -> f64 {
    let right = labels.iter().zip(preds).filter(|(l, p)| l == p).count();
    right as f64 / labels.len().max(1) as f64
}

/// `m[true][pred]` counts.
pub fn confusion_matrix(labels: &[u32], preds: &[u32], classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; classes]; classes];
    for (&l, &p) in labels.iter().zip(preds) {
        if (l as usize) < classes && (p as usize) < classes {
            m[l as usize][p as usize] += 1;
        }
    }
    m
}

/// Per class, FN / (TP + FN); NaN for a class without samples.
pub fn per_class_error(labels: &[u32], preds: &[u32], classes: usize) -> Vec<f64> {
    let m = confusion_matrix(labels, preds, classes);
    (0..classes)
        .map(|c| {
            let n: u64 = m[c].iter().sum();
            if n == 0 {
                f64::NAN
            } else {
                1.0 - m[c][c] as f64 / n as f64
            }
        })
        .collect()
}

/// 1 - the mean recall over the classes that have samples.
pub fn balanced_error_rate(labels: &[u32], preds: &[u32], classes: usize) -> f64 {
    let errors: Vec<f64> = per_class_error(labels, preds, classes).into_iter().filter(|e| !e.is_nan()).collect();
    if errors.is_empty() {
        return f64::NAN;
    }
    errors.iter().sum::<f64>() / errors.len() as f64
}

/// The label is among the k highest of its row of `probs` (`[n, classes]`); among equal
/// scores the higher class index ranks first (scikit-learn's stable-sort convention).
pub fn top_k_accuracy(labels: &[u32], probs: &[f32], classes: usize, k: usize) -> f64 {
    let mut hits = 0;
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * classes..(i + 1) * classes];
        let s = row[l as usize];
        let rank = row.iter().enumerate().filter(|(c, &v)| v > s || (v == s && *c > l as usize)).count();
        if rank < k {
            hits += 1;
        }
    }
    hits as f64 / labels.len().max(1) as f64
}

/// (TPR, FPR) predicting positive when `score >= threshold`.
pub fn rates_at(scores: &[f64], positive: &[bool], threshold: f64) -> (f64, f64) {
    let (mut tp, mut fn_, mut fp, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &p) in scores.iter().zip(positive) {
        match (s >= threshold, p) {
            (true, true) => tp += 1,
            (false, true) => fn_ += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
        }
    }
    let ratio = |a: usize, b: usize| if a + b == 0 { f64::NAN } else { a as f64 / (a + b) as f64 };
    (ratio(tp, fn_), ratio(fp, tn))
}

/// `(threshold, fpr, tpr)` at +inf and then at every distinct score, descending.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let p = positive.iter().filter(|x| **x).count() as f64;
    let n = positive.len() as f64 - p;
    let mut out = vec![(f64::INFINITY, 0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if positive[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        out.push((s, if n > 0.0 { fp / n } else { f64::NAN }, if p > 0.0 { tp / p } else { f64::NAN }));
    }
    out
}

/// Trapezoid area under the ROC curve; NaN with one class only.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    curve_area(&roc_curve(scores, positive))
}

/// Trapezoid area under `(threshold, fpr, tpr)` points; NaN when a rate is undefined.
pub fn curve_area(curve: &[(f64, f64, f64)]) -> f64 {
    if curve.iter().any(|(_, f, t)| f.is_nan() || t.is_nan()) {
        return f64::NAN;
    }
    curve.windows(2).map(|w| (w[1].1 - w[0].1) * (w[1].2 + w[0].2) / 2.0).sum()
}

/// The mean over classes of the one-vs-rest areas (classes without samples are skipped).
pub fn roc_auc_macro(labels: &[u32], probs: &[f32], classes: usize) -> f64 {
    let areas: Vec<f64> = (0..classes)
        .map(|c| {
            let s: Vec<f64> = probs.iter().skip(c).step_by(classes).map(|&p| p as f64).collect();
            let pos: Vec<bool> = labels.iter().map(|&l| l as usize == c).collect();
            roc_auc(&s, &pos)
        })
        .filter(|a| !a.is_nan())
        .collect();
    if areas.is_empty() {
        return f64::NAN;
    }
    areas.iter().sum::<f64>() / areas.len() as f64
}

/// One curve over every (sample, class) pair: the score and whether it is the label.
pub fn roc_auc_micro(labels: &[u32], probs: &[f32], classes: usize) -> f64 {
    let scores: Vec<f64> = probs.iter().map(|&p| p as f64).collect();
    let pos: Vec<bool> = (0..probs.len()).map(|i| labels[i / classes] as usize == i % classes).collect();
    roc_auc(&scores, &pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binary = Binary { positive: 1, threshold: 0.5 };

    #[test]
    fn hand_counted() {
        // Two batches: 2 of 3 right with mean loss 1.0, then 1 of 1 right with loss 0.2.
        // Mean loss = (3 * 1.0 + 1 * 0.2) / 4 = 0.8; accuracy 3/4; error rate 1/4.
        let mut s = EpochStats::new(6, false);
        s.update(1.0, None, &[1, 2, 3], &[1, 2, 0]);
        s.update(0.2, None, &[5], &[5]);
        assert!((s.compute(MetricName::Loss, B) - 0.8).abs() < 1e-12);
        assert_eq!(s.compute(MetricName::Accuracy, B), 0.75);
        assert_eq!(s.compute(MetricName::ErrorRate, B), 0.25);
        // Classes 0, 1, 2, 5 have samples; class 0's one sample is wrong: errors 1, 0, 0, 0.
        assert_eq!(s.compute(MetricName::BalancedErrorRate, B), 0.25);
        assert!(s.compute(MetricName::TopK(2), B).is_nan(), "no probabilities kept");
    }

    fn fixture() -> toml::Table {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics_sklearn.toml");
        toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn floats(t: &toml::Table, k: &str) -> Vec<f64> {
        t[k].as_array().unwrap().iter().map(|v| v.as_float().or(v.as_integer().map(|i| i as f64)).unwrap()).collect()
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() < 1e-9, "{what}: {a} vs scikit-learn {b}");
    }

    /// Against scikit-learn (tests/fixtures/make_metrics_fixture.py): balanced accuracy,
    /// confusion matrix, top-2 accuracy, one-vs-rest macro and micro ROC AUC, the binary ROC
    /// curve and its area, and TPR / FPR at 0.5, on scores with ties.
    #[test]
    fn classification_metrics_match_scikit_learn() {
        let f = fixture();
        let c = f["classes"].as_integer().unwrap() as usize;
        let labels: Vec<u32> = floats(&f, "labels").iter().map(|v| *v as u32).collect();
        let preds: Vec<u32> = floats(&f, "preds").iter().map(|v| *v as u32).collect();
        let probs: Vec<f32> = floats(&f, "probs").iter().map(|v| *v as f32).collect();
        let mut s = EpochStats::new(c, true);
        s.update(0.0, Some(&probs), &preds, &labels);
        close(
            1.0 - s.compute(MetricName::BalancedErrorRate, B),
            f["balanced_accuracy"].as_float().unwrap(),
            "balanced",
        );
        let cm: Vec<u64> = s.confusion().into_iter().flatten().collect();
        let want: Vec<u64> = floats(&f, "confusion").iter().map(|v| *v as u64).collect();
        assert_eq!(cm, want);
        close(s.compute(MetricName::TopK(2), B), f["top2_accuracy"].as_float().unwrap(), "top2");
        // Probabilities are f32 here: areas agree to 1e-9 as ranks do not change.
        close(s.compute(MetricName::RocAucMacro, B), f["roc_auc_macro"].as_float().unwrap(), "macro");
        close(s.compute(MetricName::RocAuc, B), f["roc_auc_macro"].as_float().unwrap(), "roc_auc (3 classes)");
        close(s.compute(MetricName::RocAucMicro, B), f["roc_auc_micro"].as_float().unwrap(), "micro");

        let bl: Vec<bool> = floats(&f, "bin_labels").iter().map(|v| *v == 1.0).collect();
        let bs = floats(&f, "bin_scores");
        let curve = roc_curve(&bs, &bl);
        let (fpr, tpr, thr) = (floats(&f, "roc_fpr"), floats(&f, "roc_tpr"), floats(&f, "roc_thresholds"));
        assert_eq!(curve.len(), fpr.len());
        for (i, (t, x, y)) in curve.iter().enumerate() {
            close(*x, fpr[i], "fpr");
            close(*y, tpr[i], "tpr");
            if i > 0 {
                close(*t, thr[i], "threshold");
            }
        }
        close(roc_auc(&bs, &bl), f["bin_roc_auc"].as_float().unwrap(), "binary auc");
        let (tp, fp) = rates_at(&bs, &bl, 0.5);
        close(tp, f["tp_rate_05"].as_float().unwrap(), "tpr");
        close(fp, f["fp_rate_05"].as_float().unwrap(), "fpr");
        // The same through EpochStats with 2 classes: probabilities [1 - s, s].
        let probs2: Vec<f32> = bs.iter().flat_map(|&s| [(1.0 - s) as f32, s as f32]).collect();
        let labels2: Vec<u32> = bl.iter().map(|&b| b as u32).collect();
        let preds2: Vec<u32> = bs.iter().map(|&s| (s > 0.5) as u32).collect();
        let mut s2 = EpochStats::new(2, true);
        s2.update(0.0, Some(&probs2), &preds2, &labels2);
        close(s2.compute(MetricName::RocAuc, B), f["bin_roc_auc"].as_float().unwrap(), "binary auc via stats");
        close(s2.compute(MetricName::TpRate, B), f["tp_rate_05"].as_float().unwrap(), "tpr via stats");
    }
}
