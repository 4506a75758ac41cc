//! Classification metrics per epoch: mean loss, accuracy and error rate.
//!
//! Error rate is the course's: the fraction of samples whose predicted class is not the
//! label; accuracy is 1 - error rate. Loss is the mean cross-entropy over samples.

use crate::config::MetricName;

/// Sums over an epoch; `update` per batch, `compute` at the end.
#[derive(Debug, Clone, Default)]
pub struct EpochStats {
    loss_sum: f64,
    correct: usize,
    count: usize,
}

impl EpochStats {
    /// `mean_loss` is the batch's mean loss; `preds` and `labels` its predicted and true classes.
    pub fn update(&mut self, mean_loss: f64, preds: &[u32], labels: &[u32]) {
        self.loss_sum += mean_loss * labels.len() as f64;
        self.correct += preds.iter().zip(labels).filter(|(p, l)| p == l).count();
        self.count += labels.len();
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }

    pub fn compute(&self, metric: MetricName) -> f64 {
        let accuracy = self.correct as f64 / self.count.max(1) as f64;
        match metric {
            MetricName::Loss => self.mean_loss(),
            MetricName::Accuracy => accuracy,
            MetricName::ErrorRate => 1.0 - accuracy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_counted() {
        // Two batches: 2 of 3 right with mean loss 1.0, then 1 of 1 right with loss 0.2.
        // Mean loss = (3 * 1.0 + 1 * 0.2) / 4 = 0.8; accuracy 3/4; error rate 1/4.
        let mut s = EpochStats::default();
        s.update(1.0, &[1, 2, 3], &[1, 2, 0]);
        s.update(0.2, &[5], &[5]);
        assert!((s.compute(MetricName::Loss) - 0.8).abs() < 1e-12);
        assert_eq!(s.compute(MetricName::Accuracy), 0.75);
        assert_eq!(s.compute(MetricName::ErrorRate), 0.25);
    }
}
