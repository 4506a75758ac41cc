//! Learning-rate schedules: pure functions of the position in training.
//!
//! The position is `(epoch, batch, batches_per_epoch)`, epochs counted from 0. Step,
//! multistep, exponential, cosine and polynomial schedules follow PyTorch's closed forms
//! and, as PyTorch's schedulers are usually stepped once per epoch, see the integer epoch
//! (`schedule_per_step = true`: the fractional epoch `epoch + batch / batches_per_epoch`).
//! `piecewise` and the warm-up always see the fractional epoch.

// `!(x > 0.0)` is written on purpose: it rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::config::{Interpolate, ScheduleConfig, TrainConfig, WarmupConfig};

/// Where training is: the epoch (from 0), the batch within it, and the batches per epoch.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
}

impl Position {
    /// `epoch + batch / batches`.
    pub fn fractional(self) -> f64 {
        self.epoch as f64 + self.batch as f64 / self.batches.max(1) as f64
    }
}

/// The learning rate at `pos` for a base `lr` over `epochs` epochs.
pub fn lr_at(train: &TrainConfig, base_lr: f64, pos: Position) -> f64 {
    let t = if train.schedule_per_step { pos.fractional() } else { pos.epoch as f64 };
    let lr = scheduled(&train.schedule.0, base_lr, t, pos.fractional(), train.epochs as f64);
    lr * warmup_factor(train.warmup.as_ref(), pos.fractional())
}

/// The schedule alone: `t` for the epoch-stepped kinds, `frac` for `piecewise`.
pub fn scheduled(s: &ScheduleConfig, lr: f64, t: f64, frac: f64, epochs: f64) -> f64 {
    match s {
        ScheduleConfig::Constant => lr,
        ScheduleConfig::Step { step_size, gamma } => lr * gamma.powf((t / *step_size as f64).floor()),
        ScheduleConfig::Multistep { milestones, gamma } => {
            let passed = milestones.iter().filter(|m| **m as f64 <= t).count();
            lr * gamma.powi(passed as i32)
        }
        ScheduleConfig::Exponential { gamma } => lr * gamma.powf(t),
        ScheduleConfig::Cosine { t_max, eta_min } => {
            let t_max = t_max.unwrap_or(epochs);
            let x = (t / t_max).min(1.0);
            eta_min + (lr - eta_min) * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0
        }
        ScheduleConfig::Polynomial { power, total, end_lr } => {
            let total = total.unwrap_or(epochs);
            let x = (t.min(total) / total).min(1.0);
            (lr - end_lr) * (1.0 - x).powf(*power) + end_lr
        }
        ScheduleConfig::Piecewise { points, interpolate } => piecewise(points, *interpolate, frac),
    }
}

fn piecewise(points: &[[f64; 2]], interpolate: Interpolate, t: f64) -> f64 {
    let Some(first) = points.first() else { return 0.0 };
    if t < first[0] {
        return first[1];
    }
    // The last point at or before t; with repeated epochs, the later one (a jump).
    let i = points.iter().rposition(|p| p[0] <= t).unwrap_or(0);
    let [e0, v0] = points[i];
    match (interpolate, points.get(i + 1)) {
        (Interpolate::Linear, Some(&[e1, v1])) if e1 > e0 => v0 + (v1 - v0) * (t - e0) / (e1 - e0),
        _ => v0,
    }
}

/// PyTorch's `LinearLR`: from `start_factor` to 1 over `epochs`.
pub fn warmup_factor(w: Option<&WarmupConfig>, t: f64) -> f64 {
    match w {
        Some(w) if w.epochs > 0.0 && t < w.epochs => w.start_factor + (1.0 - w.start_factor) * t / w.epochs,
        _ => 1.0,
    }
}

/// Problems with a schedule's values, as `(key, message)`.
pub fn validate(train: &TrainConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |k: &str, m: String| out.push((format!("train.schedule.{k}"), m));
    match &train.schedule.0 {
        ScheduleConfig::Constant => {}
        ScheduleConfig::Step { step_size, gamma } => {
            if *step_size == 0 {
                add("step.step_size", "must be > 0".into());
            }
            if !(*gamma > 0.0) {
                add("step.gamma", format!("must be > 0, is {gamma}"));
            }
        }
        ScheduleConfig::Multistep { milestones, gamma } => {
            if milestones.windows(2).any(|w| w[1] <= w[0]) {
                add("multistep.milestones", format!("must increase, are {milestones:?}"));
            }
            if !(*gamma > 0.0) {
                add("multistep.gamma", format!("must be > 0, is {gamma}"));
            }
        }
        ScheduleConfig::Exponential { gamma } => {
            if !(*gamma > 0.0) {
                add("exponential.gamma", format!("must be > 0, is {gamma}"));
            }
        }
        ScheduleConfig::Cosine { t_max, eta_min } => {
            if t_max.is_some_and(|t| !(t > 0.0)) {
                add("cosine.t_max", format!("must be > 0, is {}", t_max.unwrap_or(0.0)));
            }
            if *eta_min < 0.0 {
                add("cosine.eta_min", format!("must be >= 0, is {eta_min}"));
            }
        }
        ScheduleConfig::Polynomial { power, total, end_lr } => {
            if !(*power > 0.0) {
                add("polynomial.power", format!("must be > 0, is {power}"));
            }
            if total.is_some_and(|t| !(t > 0.0)) {
                add("polynomial.total", format!("must be > 0, is {}", total.unwrap_or(0.0)));
            }
            if *end_lr < 0.0 {
                add("polynomial.end_lr", format!("must be >= 0, is {end_lr}"));
            }
        }
        ScheduleConfig::Piecewise { points, .. } => {
            if points.is_empty() {
                add("piecewise.points", "lists no [epoch, lr] point".into());
            }
            if points.windows(2).any(|w| w[1][0] < w[0][0]) {
                let epochs: Vec<f64> = points.iter().map(|p| p[0]).collect();
                add("piecewise.points", format!("epochs must not decrease, are {epochs:?}"));
            }
            if points.iter().any(|p| !(p[1] >= 0.0) || !(p[0] >= 0.0)) {
                add("piecewise.points", "epochs and learning rates must be >= 0".into());
            }
        }
    }
    if let Some(w) = &train.warmup {
        if !(w.epochs >= 0.0) {
            out.push(("train.warmup.epochs".into(), format!("must be >= 0, is {}", w.epochs)));
        }
        if !(w.start_factor > 0.0 && w.start_factor <= 1.0) {
            out.push(("train.warmup.start_factor".into(), format!("must be in (0, 1], is {}", w.start_factor)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: ScheduleConfig, t: f64) -> f64 {
        scheduled(&s, 0.1, t, t, 10.0)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn closed_forms_by_hand() {
        // StepLR(step_size 3, gamma 0.5): epochs 0-2 0.1, 3-5 0.05, 6 0.025.
        let s = ScheduleConfig::Step { step_size: 3, gamma: 0.5 };
        close(at(s.clone(), 2.0), 0.1);
        close(at(s.clone(), 3.0), 0.05);
        close(at(s, 6.0), 0.025);
        // MultiStepLR([82, 123], 0.1), He et al.'s ResNet: 0.1, 0.01 from 82, 0.001 from 123.
        let s = ScheduleConfig::Multistep { milestones: vec![82, 123], gamma: 0.1 };
        close(at(s.clone(), 81.0), 0.1);
        close(at(s.clone(), 82.0), 0.01);
        close(at(s, 123.0), 0.1 * 0.1 * 0.1);
        // ExponentialLR(0.9): 0.1 * 0.9^2 = 0.081.
        close(at(ScheduleConfig::Exponential { gamma: 0.9 }, 2.0), 0.081);
        // Cosine over 10 epochs, floor 0.01: half-way (0.1 + 0.01) / 2 = 0.055; end 0.01.
        let s = ScheduleConfig::Cosine { t_max: None, eta_min: 0.01 };
        close(at(s.clone(), 0.0), 0.1);
        close(at(s.clone(), 5.0), 0.055);
        close(at(s, 10.0), 0.01);
        // Polynomial power 2 over 10: at 5, 0.1 * 0.5^2 = 0.025; past the end, end_lr.
        let s = ScheduleConfig::Polynomial { power: 2.0, total: None, end_lr: 0.0 };
        close(at(s.clone(), 5.0), 0.025);
        close(at(s, 12.0), 0.0);
    }

    #[test]
    fn piecewise_yolo_ramp_and_steps() {
        // YOLOv1 (Redmon et al. 2016): 1e-3 rising to 1e-2 over the first epochs, 1e-2 until
        // 75, 1e-3 for 30 epochs, 1e-4 for 30. A repeated epoch is a jump.
        let points = vec![[0.0, 1e-3], [5.0, 1e-2], [75.0, 1e-2], [75.0, 1e-3], [105.0, 1e-3], [105.0, 1e-4]];
        let s = ScheduleConfig::Piecewise { points: points.clone(), interpolate: Interpolate::Linear };
        close(at(s.clone(), 0.0), 1e-3);
        close(at(s.clone(), 2.5), 5.5e-3);
        close(at(s.clone(), 40.0), 1e-2);
        close(at(s.clone(), 74.99), 1e-2);
        close(at(s.clone(), 75.0), 1e-3);
        close(at(s.clone(), 120.0), 1e-4);
        let c = ScheduleConfig::Piecewise { points, interpolate: Interpolate::Constant };
        close(at(c, 2.5), 1e-3);
    }

    #[test]
    fn warmup_composes_per_step() {
        let mut train: TrainConfig = toml::from_str(
            "epochs = 10\noptimizer = { sgd = { lr = 0.1 } }\nschedule = { step = { step_size = 1, gamma = 0.5 } }\nwarmup = { epochs = 2, start_factor = 0.5 }",
        )
        .unwrap();
        // Epoch 0 batch 5 of 10: schedule 0.1 (epoch-stepped), warm-up 0.5 + 0.5 * 0.5 / 2.
        let pos = Position { epoch: 0, batch: 5, batches: 10 };
        close(lr_at(&train, 0.1, pos), 0.1 * 0.625);
        // Epoch 1 batch 0: 0.05 * (0.5 + 0.5 * 1 / 2); epoch 2: warm-up over.
        close(lr_at(&train, 0.1, Position { epoch: 1, batch: 0, batches: 10 }), 0.05 * 0.75);
        close(lr_at(&train, 0.1, Position { epoch: 2, batch: 0, batches: 10 }), 0.025);
        // Per step, the step schedule sees 0.5 epochs: 0.1 * 0.5^0.
        train.schedule_per_step = true;
        close(lr_at(&train, 0.1, Position { epoch: 1, batch: 5, batches: 10 }), 0.05 * (0.5 + 0.5 * 1.5 / 2.0));
    }

    #[test]
    fn bare_names_for_kinds_with_defaults() {
        let t: TrainConfig =
            toml::from_str("epochs = 10\noptimizer = { sgd = { lr = 0.1 } }\nschedule = \"cosine\"").unwrap();
        assert_eq!(t.schedule.0, ScheduleConfig::Cosine { t_max: None, eta_min: 0.0 });
        let t: TrainConfig =
            toml::from_str("epochs = 10\noptimizer = { sgd = { lr = 0.1 } }\nschedule = \"constant\"").unwrap();
        assert_eq!(t.schedule.0, ScheduleConfig::Constant);
        let e =
            toml::from_str::<TrainConfig>("epochs = 1\noptimizer = { sgd = { lr = 0.1 } }\nschedule = \"multistep\"")
                .unwrap_err()
                .to_string();
        assert!(e.contains("milestones"), "{e}");
    }

    #[test]
    fn validation_names_keys() {
        let train: TrainConfig = toml::from_str(
            "epochs = 10\noptimizer = { sgd = { lr = 0.1 } }\nschedule = { piecewise = { points = [[5, 0.1], [2, 0.01]] } }",
        )
        .unwrap();
        let v = validate(&train);
        assert_eq!(v[0].0, "train.schedule.piecewise.points");
        assert!(v[0].1.contains("must not decrease"), "{v:?}");
        let train: TrainConfig = toml::from_str(
            "epochs = 10\noptimizer = { sgd = { lr = 0.1 } }\nschedule = { multistep = { milestones = [5, 5] } }",
        )
        .unwrap();
        assert!(validate(&train)[0].1.contains("must increase"));
    }
}
