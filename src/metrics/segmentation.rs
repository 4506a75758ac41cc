//! Segmentation metrics from a pixel confusion matrix: the course's segmentation accuracy
//! per class, TP / (TP + FP + FN) (the IoU of the class's predicted and true regions), its
//! mean over classes (`miou`), and `pixel_accuracy`. Pixels labelled `ignore` (255, VOC's
//! object borders) are left out.

pub const IGNORE: u32 = 255;

#[derive(Debug, Clone)]
pub struct SegStats {
    classes: usize,
    /// `m[true][pred]`.
    m: Vec<Vec<u64>>,
}

impl SegStats {
    pub fn new(classes: usize) -> Self {
        SegStats { classes, m: vec![vec![0; classes]; classes] }
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
}
