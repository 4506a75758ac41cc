//! Segmentation metrics from one pixel confusion matrix over a split, as the FCN authors'
//! `score.py` computes them: the course's segmentation accuracy per class, TP / (TP + FP +
//! FN) (the IoU of the class's predicted and true regions), its mean over classes (`miou`,
//! NaN classes left out), `pixel_accuracy`, `mean_accuracy` and `frequency_weighted_iou`.
//! Pixels labelled `ignore` (255, VOC's object borders) are left out.

pub const IGNORE: u32 = 255;

/// `(true class, predicted class, pixels)`.
pub type PixelCount = (u8, u8, u64);

#[derive(Debug, Clone)]
pub struct SegStats {
    classes: usize,
    /// `m[true][pred]`.
    m: Vec<Vec<u64>>,
    loss_sum: f64,
    images: usize,
    /// Per image (split index): its nonzero `(true, pred, pixels)` counts, when kept.
    pub per_image: Vec<(usize, Vec<PixelCount>)>,
    /// The predicted masks of the split's first images (index, mask, `[h, w]`), for the plots.
    pub examples: Vec<(usize, Vec<u8>, [usize; 2])>,
}

impl SegStats {
    pub fn new(classes: usize) -> Self {
        SegStats {
            classes,
            m: vec![vec![0; classes]; classes],
            loss_sum: 0.0,
            images: 0,
            per_image: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// Adds a batch's mean loss over its `n` images.
    pub fn add_loss(&mut self, loss: f64, n: usize) {
        self.loss_sum += loss * n as f64;
        self.images += n;
    }

    pub fn count(&self) -> usize {
        self.images
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    /// The confusion matrix `m[true][pred]` in pixels.
    pub fn confusion(&self) -> &[Vec<u64>] {
        &self.m
    }

    /// One image's predicted and true mask values; `keep`: also keep its own counts (in
    /// `per_image`, under `image`).
    pub fn update_image(&mut self, image: usize, pred: &[u8], target: &[u8], ignore: u8, keep: bool) {
        let c = self.classes;
        let mut own = vec![0u64; if keep { c * c } else { 0 }];
        for (&p, &t) in pred.iter().zip(target) {
            if t == ignore || t as usize >= c || p as usize >= c {
                continue;
            }
            self.m[t as usize][p as usize] += 1;
            if keep {
                own[t as usize * c + p as usize] += 1;
            }
        }
        if keep {
            let counts =
                own.iter().enumerate().filter(|(_, &n)| n > 0).map(|(k, &n)| ((k / c) as u8, (k % c) as u8, n));
            self.per_image.push((image, counts.collect()));
        }
    }

    /// One image (or batch): predicted and true class per pixel.
    pub fn update(&mut self, pred: &[u32], target: &[u32], ignore: u32) {
        for (&p, &t) in pred.iter().zip(target) {
            if t == ignore || t as usize >= self.classes || p as usize >= self.classes {
                continue;
            }
            self.m[t as usize][p as usize] += 1;
        }
    }

    /// Per class TP / (TP + FP + FN); NaN for a class neither present nor predicted.
    pub fn class_iou(&self) -> Vec<f64> {
        (0..self.classes)
            .map(|c| {
                let tp = self.m[c][c];
                let fn_: u64 = self.m[c].iter().sum::<u64>() - tp;
                let fp: u64 = (0..self.classes).map(|t| self.m[t][c]).sum::<u64>() - tp;
                let d = tp + fp + fn_;
                if d == 0 {
                    f64::NAN
                } else {
                    tp as f64 / d as f64
                }
            })
            .collect()
    }

    /// The mean of the defined per-class values.
    pub fn miou(&self) -> f64 {
        let v: Vec<f64> = self.class_iou().into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }

    /// The mean over classes present in the truth of the share of their pixels predicted right.
    pub fn mean_accuracy(&self) -> f64 {
        let v: Vec<f64> = (0..self.classes)
            .filter_map(|c| {
                let row: u64 = self.m[c].iter().sum();
                (row > 0).then(|| self.m[c][c] as f64 / row as f64)
            })
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }

    /// Per-class IoU weighted by the class's share of the labelled pixels.
    pub fn frequency_weighted_iou(&self) -> f64 {
        let total: u64 = self.m.iter().flatten().sum();
        if total == 0 {
            return f64::NAN;
        }
        let iou = self.class_iou();
        (0..self.classes)
            .filter_map(|c| {
                let row: u64 = self.m[c].iter().sum();
                (row > 0).then(|| row as f64 / total as f64 * iou[c])
            })
            .sum()
    }

    pub fn pixel_accuracy(&self) -> f64 {
        let total: u64 = self.m.iter().flatten().sum();
        let right: u64 = (0..self.classes).map(|c| self.m[c][c]).sum();
        if total == 0 {
            f64::NAN
        } else {
            right as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x4 image, hand-counted. Target (255 = ignore):
    ///   0 0 1 1
    ///   0 0 1 1
    ///   2 2 255 1
    /// Prediction:
    ///   0 1 1 1
    ///   0 0 1 2
    ///   2 0 0 1
    /// Counted pixels: 11 (one ignored). Class 0: TP 3, FN 1 (a 0 predicted 1), FP 1 (a 2
    /// predicted 0); the ignored pixel's prediction 0 does not count -> 3 / 5.
    /// Class 1: TP 4, FN 1 (a 1 predicted 2), FP 1 -> 4 / 6. Class 2: TP 1, FN 1, FP 1 -> 1/3.
    /// Pixel accuracy 8 / 11.
    #[test]
    fn hand_counted_pixels() {
        let target = [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 255, 1];
        let pred = [0, 1, 1, 1, 0, 0, 1, 2, 2, 0, 0, 1];
        let mut s = SegStats::new(3);
        s.update(&pred, &target, IGNORE);
        let iou = s.class_iou();
        let want = [3.0 / 5.0, 4.0 / 6.0, 1.0 / 3.0];
        for c in 0..3 {
            assert!((iou[c] - want[c]).abs() < 1e-12, "{iou:?}");
        }
        assert!((s.miou() - want.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!((s.pixel_accuracy() - 8.0 / 11.0).abs() < 1e-12);
        // A class absent from both is left out of the mean.
        let mut s4 = SegStats::new(4);
        s4.update(&pred, &target, IGNORE);
        assert!(s4.class_iou()[3].is_nan());
        assert!((s4.miou() - s.miou()).abs() < 1e-12);
    }

    /// `tests/fixtures/seg_score.toml`: the FCN authors' `score.py` procedure in numpy
    /// (`/usr/bin/python3 tests/fixtures/make_seg_fixture.py`), on generated masks with void
    /// pixels, a class only predicted and a class absent from both; images added one by one.
    #[test]
    fn scores_equal_the_fcn_authors_procedure() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seg_score.toml");
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() < 1e-9;
        for (name, case) in &doc {
            let t = case.as_table().unwrap();
            let ints = |k: &str| -> Vec<u8> {
                t[k].as_array().unwrap().iter().map(|v| v.as_integer().unwrap() as u8).collect()
            };
            let (labels, preds) = (ints("labels"), ints("preds"));
            let shape = t["shape"].as_array().unwrap();
            let per = (shape[0].as_integer().unwrap() * shape[1].as_integer().unwrap()) as usize;
            let mut s = SegStats::new(t["classes"].as_integer().unwrap() as usize);
            for (i, (l, p)) in labels.chunks(per).zip(preds.chunks(per)).enumerate() {
                s.update_image(i, p, l, 255, true);
            }
            let f = |k: &str| t[k].as_float().unwrap();
            assert!(same(s.pixel_accuracy(), f("pixel_accuracy")), "{name}: {}", s.pixel_accuracy());
            assert!(same(s.mean_accuracy(), f("mean_accuracy")), "{name}: {}", s.mean_accuracy());
            assert!(same(s.miou(), f("miou")), "{name}: {}", s.miou());
            assert!(same(s.frequency_weighted_iou(), f("frequency_weighted_iou")), "{name}");
            let want: Vec<f64> = t["iou"].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect();
            for (c, (got, want)) in s.class_iou().into_iter().zip(want).enumerate() {
                assert!(same(got, want), "{name} class {c}: {got} vs {want}");
            }
            // The kept per-image counts add up to the split's matrix.
            let mut sum = vec![vec![0u64; s.classes]; s.classes];
            for (_, counts) in &s.per_image {
                for &(t, p, n) in counts {
                    sum[t as usize][p as usize] += n;
                }
            }
            assert_eq!(sum, s.confusion());
        }
    }
}
