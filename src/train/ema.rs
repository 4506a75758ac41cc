//! An exponential moving average of the model's weights (`[train] ema`), as timm's
//! ModelEmaV2 and Ultralytics' ModelEMA keep it: after every optimizer step each parameter
//! and batch-norm buffer's shadow becomes `d * shadow + (1 - d) * value`, with
//! `d = decay * (1 - exp(-updates / tau))` while warming up (Ultralytics' ramp: the average
//! follows the early, fast-changing weights) or `d = decay` without. Evaluation, the run's
//! `model.safetensors` and predictions use the shadow; the raw weights go on training.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::config::EmaConfig;
use crate::model::Model;

pub struct Ema {
    cfg: EmaConfig,
    /// Optimizer steps averaged so far.
    pub updates: u64,
    /// By dotted name: the average, or (between two [`Ema::swap`]s) the raw weights.
    shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Starts the average at the model's weights.
    pub fn new(cfg: &EmaConfig, model: &Model) -> Result<Ema> {
        let mut shadow = BTreeMap::new();
        for (n, v) in model.params.iter().chain(model.buffers.iter()) {
            shadow.insert(n.clone(), v.as_tensor().copy()?);
        }
        Ok(Ema { cfg: cfg.clone(), updates: 0, shadow })
    }

    /// The decay of update number `updates` (from 1).
    pub fn decay_at(&self, updates: u64) -> f64 {
        match self.cfg.warmup {
            true => self.cfg.decay * (1.0 - (-(updates as f64) / self.cfg.tau).exp()),
            false => self.cfg.decay,
        }
    }

    /// One step of the average, after an optimizer step.
    pub fn update(&mut self, model: &Model) -> Result<()> {
        self.updates += 1;
        let d = self.decay_at(self.updates);
        for (n, v) in model.params.iter().chain(model.buffers.iter()) {
            let Some(s) = self.shadow.get_mut(n) else { continue };
            *s = (s.affine(d, 0.0)? + v.as_tensor().affine(1.0 - d, 0.0)?)?;
        }
        Ok(())
    }

    /// Exchanges the model's weights with the shadow: the first call puts the average in
    /// the model (and keeps the raw weights here), the second puts the raw weights back.
    pub fn swap(&mut self, model: &Model) -> Result<()> {
        for (n, v) in model.params.iter().chain(model.buffers.iter()) {
            let Some(s) = self.shadow.get_mut(n) else { continue };
            let raw = v.as_tensor().copy()?;
            v.set(s)?;
            *s = raw;
        }
        Ok(())
    }

    /// The shadow by name (what a checkpoint keeps).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    /// Restores a checkpoint's shadow and update count; every tensor's shape is checked.
    pub fn restore(&mut self, tensors: &BTreeMap<String, Tensor>, updates: u64) -> Result<()> {
        for (n, s) in &self.shadow {
            match tensors.get(n) {
                Some(t) if t.dims() == s.dims() => {}
                Some(t) => bail!("ema/{n} is {:?} in the checkpoint, {:?} in the model", t.dims(), s.dims()),
                None => bail!("the checkpoint holds no ema/{n} (was it written without [train] ema?)"),
            }
        }
        for (n, s) in self.shadow.iter_mut() {
            *s = tensors[n].to_device(s.device())?.to_dtype(s.dtype())?;
        }
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::plan_model;

    /// The shadow equals the recursion `s_k = d_k s_(k-1) + (1 - d_k) x_k` from `s_0 = x_0`,
    /// `d_k = decay (1 - exp(-k / tau))`, computed here in f64 over five updates of a
    /// linear layer's weights; and two swaps give the raw weights back.
    #[test]
    fn the_shadow_follows_the_closed_form_recursion() {
        let cfg: ModelConfig = toml::from_str(
            "input = [3, 1, 1]\ngroups = [{ name = \"g\", layers = [\"flatten\", { linear = { out = 2 } }] }]",
        )
        .unwrap();
        let graph = plan_model(&cfg).unwrap();
        let model = Model::new(&graph, 0, &candle_core::Device::Cpu).unwrap();
        let ema_cfg = EmaConfig { decay: 0.9, warmup: true, tau: 3.0 };
        let mut ema = Ema::new(&ema_cfg, &model).unwrap();
        let w = &model.params["g.1.weight"];
        let mut want: Vec<f64> =
            w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as f64).collect();
        for k in 1..=5u64 {
            let x: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * k as f32 * 0.3).collect();
            w.set(&Tensor::from_vec(x.clone(), (2, 3), &candle_core::Device::Cpu).unwrap()).unwrap();
            ema.update(&model).unwrap();
            let d = 0.9 * (1.0 - (-(k as f64) / 3.0).exp());
            for (s, xi) in want.iter_mut().zip(&x) {
                *s = d * *s + (1.0 - d) * *xi as f64;
            }
        }
        let got = ema.tensors()["g.1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(ema.updates, 5);
        let raw = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        ema.swap(&model).unwrap();
        assert_eq!(w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), got, "the average in the model");
        ema.swap(&model).unwrap();
        assert_eq!(w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), raw, "the raw weights back");
    }
}
