//! Optimizers with PyTorch's update rules: `torch.optim.SGD` (momentum, dampening,
//! Nesterov, L2 weight decay), `torch.optim.Adam` (L2 weight decay added to the gradient)
//! and `torch.optim.AdamW` (decoupled weight decay).
//!
//! Each parameter's state (momentum buffer or moments, and its own step count, as PyTorch
//! keeps `state[p]["step"]`) is kept by its dotted path, so state survives a change in which
//! parameters are trained, and a parameter frozen for a while starts Adam's bias correction
//! from its own first step, as in PyTorch.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::counting::{self, Cost};
use candle_core::{Result, Tensor, Var};

use crate::config::OptimizerConfig;
use crate::ops::fused;

/// Per-parameter multipliers from `[[train.param_groups]]` and `no_weight_decay_on`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    pub lr_mult: f64,
    pub wd_mult: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper { lr_mult: 1.0, wd_mult: 1.0 }
    }
}

#[derive(Debug, Clone)]
pub struct ParamState {
    pub step: u64,
    /// SGD: the momentum buffer. Adam and AdamW: first and second moments.
    pub slots: Vec<Tensor>,
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    state: BTreeMap<String, ParamState>,
}

/// The gradients of `params` in `grads`, detached, by name.
pub fn collect_grads<'a>(
    grads: &GradStore,
    params: impl IntoIterator<Item = (&'a String, &'a Var)>,
) -> BTreeMap<String, Tensor> {
    params.into_iter().filter_map(|(n, v)| grads.get(v).map(|g| (n.clone(), g.detach()))).collect()
}

/// Adds `grads` into `sum`, parameter by parameter (a parameter new to `sum` is moved in).
pub fn add_grads(sum: &mut BTreeMap<String, Tensor>, grads: BTreeMap<String, Tensor>) -> Result<()> {
    for (name, g) in grads {
        let g = match sum.remove(&name) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        sum.insert(name, g);
    }
    Ok(())
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Optimizer { cfg: cfg.clone(), state: BTreeMap::new() }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// One update at learning rate `lr` of every parameter in `params` that has a gradient
    /// in `grads`; `hyper` holds multipliers by name (absent: 1).
    pub fn step<'a>(
        &mut self,
        lr: f64,
        params: impl IntoIterator<Item = (&'a String, &'a Var)>,
        grads: &BTreeMap<String, Tensor>,
        hyper: &BTreeMap<String, Hyper>,
    ) -> Result<()> {
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let h = hyper.get(name).copied().unwrap_or_default();
            let lr = lr * h.lr_mult;
            // Detached: the update and the kept state must not hold this step's graph, or
            // every step's activations stay alive through the momentum buffers.
            let g = g.detach();
            let p = var.as_tensor().detach();
            let prev = self.state.get(name);
            let t = prev.map(|s| s.step).unwrap_or(0) + 1;
            let set = |(new, slots): (Tensor, Vec<Tensor>)| -> Result<Vec<Tensor>> {
                var.set(&new)?;
                Ok(slots)
            };
            let slots = match (fused::applies(&p), counting::enabled()) {
                (true, false) => fused_update(&self.cfg, &p, &g, prev, t, lr, h)?,
                (true, true) => {
                    // Counting: the values from the update below, the count from the GPU's
                    // kernel (its state zeroed on the first step, then one launch).
                    if prev.is_none() {
                        for _ in 0..self.slots() {
                            counting::add_op("zeros", Cost { memsets: 1, allocs: 1, ..Cost::default() });
                        }
                    }
                    fused::counted_as("custom:runner-fused-update", Cost::launch(1, 0), || {
                        set(update(&self.cfg, p, g, prev, t, lr, h)?)
                    })?
                }
                (false, _) => set(update(&self.cfg, p, g, prev, t, lr, h)?)?,
            };
            self.state.insert(name.clone(), ParamState { step: t, slots });
        }
        Ok(())
    }

    /// The number of state tensors per parameter.
    fn slots(&self) -> usize {
        match self.cfg {
            OptimizerConfig::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            _ => 2,
        }
    }

    /// The state as named tensors (`<param>/<slot>`) and per-parameter step counts, for
    /// checkpoints. On a GPU the update writes the state in place: these share its storage
    /// and show later steps' values unless copied (`checkpoint::save` writes them at once).
    pub fn export(&self) -> (BTreeMap<String, Tensor>, BTreeMap<String, u64>) {
        let mut tensors = BTreeMap::new();
        let mut steps = BTreeMap::new();
        for (name, s) in &self.state {
            steps.insert(name.clone(), s.step);
            for (i, t) in s.slots.iter().enumerate() {
                tensors.insert(format!("{name}/{i}"), t.clone());
            }
        }
        (tensors, steps)
    }

    /// Restores what [`Optimizer::export`] gave.
    pub fn import(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
    ) -> std::result::Result<(), String> {
        let slots = self.slots();
        self.state.clear();
        for (name, step) in steps {
            let mut v = Vec::new();
            for i in 0..slots {
                let t =
                    tensors.get(&format!("{name}/{i}")).ok_or_else(|| format!("no optimizer state `{name}/{i}`"))?;
                v.push(t.clone());
            }
            self.state.insert(name.clone(), ParamState { step: *step, slots: v });
        }
        Ok(())
    }
}

/// One update of the parameter `p` (detached) by gradient `g` at its step `t`, from
/// candle's ops (the CPU's, and the reference of the GPU's fused kernels): the new value
/// and the new state.
fn update(
    cfg: &OptimizerConfig,
    p: Tensor,
    g: Tensor,
    prev: Option<&ParamState>,
    t: u64,
    lr: f64,
    h: Hyper,
) -> Result<(Tensor, Vec<Tensor>)> {
    Ok(match *cfg {
        OptimizerConfig::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
            let wd = weight_decay * h.wd_mult;
            let mut d = g;
            if wd != 0.0 {
                d = (d + (&p * wd)?)?;
            }
            let mut slots = Vec::new();
            if momentum != 0.0 {
                let buf = match prev {
                    // buf = momentum * buf + (1 - dampening) * d; d * 1 is d, bit for
                    // bit, and one pass over the parameter fewer (dampening 0, the default).
                    Some(s) if dampening == 0.0 => ((&s.slots[0] * momentum)? + &d)?,
                    Some(s) => ((&s.slots[0] * momentum)? + (&d * (1.0 - dampening))?)?,
                    None => d.clone(),
                };
                d = if nesterov { (d + (&buf * momentum)?)? } else { buf.clone() };
                slots.push(buf);
            }
            ((&p - (d * lr)?)?, slots)
        }
        OptimizerConfig::Adam { betas, eps, weight_decay, .. } => {
            let wd = weight_decay * h.wd_mult;
            let d = if wd != 0.0 { (g + (&p * wd)?)? } else { g };
            adam(&p, &d, prev, t, lr, betas, eps)?
        }
        OptimizerConfig::Adamw { betas, eps, weight_decay, .. } => {
            // PyTorch: p *= 1 - lr * wd, then the Adam step without weight decay.
            let wd = weight_decay * h.wd_mult;
            let p = if wd != 0.0 { (&p * (1.0 - lr * wd))? } else { p };
            adam(&p, &g, prev, t, lr, betas, eps)?
        }
    })
}

/// The update on a GPU: one kernel per parameter (`ops::fused`), `p` and the state written
/// in place; the state zeroed before the first step. Returns the state.
fn fused_update(
    cfg: &OptimizerConfig,
    p: &Tensor,
    g: &Tensor,
    prev: Option<&ParamState>,
    t: u64,
    lr: f64,
    h: Hyper,
) -> Result<Vec<Tensor>> {
    // The kernels write `p.elem_count()` values of each state tensor: a state that does not
    // fit (a checkpoint of another model) is refused here, not written out of bounds.
    let slots = |n: usize| -> Result<Vec<Tensor>> {
        match prev {
            Some(s) => {
                if s.slots.len() != n
                    || s.slots.iter().any(|t| t.shape() != p.shape() || t.dtype() != p.dtype() || !t.is_contiguous())
                {
                    candle_core::bail!(
                        "optimizer state of {} tensors {:?} does not fit the parameter {:?} {:?}",
                        s.slots.len(),
                        s.slots.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>(),
                        p.dims(),
                        p.dtype()
                    );
                }
                Ok(s.slots.clone())
            }
            None => (0..n).map(|_| p.zeros_like()).collect(),
        }
    };
    match *cfg {
        OptimizerConfig::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
            let s = slots(usize::from(momentum != 0.0))?;
            let wd = weight_decay * h.wd_mult;
            fused::sgd_update(p, g, s.first(), lr, momentum, dampening, wd, nesterov, prev.is_none())?;
            Ok(s)
        }
        OptimizerConfig::Adam { betas, eps, weight_decay, .. } => {
            let s = slots(2)?;
            fused::adam_update(p, g, &s[0], &s[1], t, lr, betas, eps, 1.0, weight_decay * h.wd_mult)?;
            Ok(s)
        }
        OptimizerConfig::Adamw { betas, eps, weight_decay, .. } => {
            let s = slots(2)?;
            let wd = weight_decay * h.wd_mult;
            let decay = 1.0 - lr * wd;
            fused::adam_update(p, g, &s[0], &s[1], t, lr, betas, eps, decay, 0.0)?;
            Ok(s)
        }
    }
}

/// Adam's update of `p` with gradient `d` at step `t`; returns the new value and moments.
fn adam(
    p: &Tensor,
    d: &Tensor,
    prev: Option<&ParamState>,
    t: u64,
    lr: f64,
    [b1, b2]: [f64; 2],
    eps: f64,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (m, v) = match prev {
        Some(s) => (((&s.slots[0] * b1)? + (d * (1.0 - b1))?)?, ((&s.slots[1] * b2)? + (d.sqr()? * (1.0 - b2))?)?),
        None => ((d * (1.0 - b1))?, (d.sqr()? * (1.0 - b2))?),
    };
    // PyTorch: denom = sqrt(v) / sqrt(1 - b2^t) + eps; p -= lr / (1 - b1^t) * m / denom
    let t = t as i32;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
    let update = (m.div(&denom)? * (lr / bc1))?;
    Ok(((p - update)?, vec![m, v]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn state_holds_no_graph() {
        // Regression: momentum buffers built from tracked gradients kept every step's graph
        // alive, and a 10-epoch Fashion-MNIST run grew to 24 GB and was killed.
        for cfg in [
            OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.1 },
            OptimizerConfig::Adam { lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.1 },
        ] {
            let p = Var::new(&[1f32, -2.], &Device::Cpu).unwrap();
            let name = "p".to_string();
            let mut opt = Optimizer::new(&cfg);
            for _ in 0..3 {
                let grads = (p.as_tensor().sqr().unwrap().sum_all().unwrap()).backward().unwrap();
                let grads = collect_grads(&grads, [(&name, &p)]);
                opt.step(0.1, [(&name, &p)], &grads, &BTreeMap::new()).unwrap();
            }
            assert!(opt.state["p"].slots.iter().all(|t| !t.track_op()), "{cfg:?}");
        }
    }

    fn run(cfg: OptimizerConfig, steps: usize) -> Vec<f32> {
        // Minimise f(p) = sum(p^2) / 2 from p = [1, -2]: the gradient is p itself.
        let p = Var::new(&[1f32, -2.], &Device::Cpu).unwrap();
        let name = "p".to_string();
        let mut opt = Optimizer::new(&cfg);
        for _ in 0..steps {
            let loss = (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            let grads = collect_grads(&loss.backward().unwrap(), [(&name, &p)]);
            opt.step(opt.config().lr(), [(&name, &p)], &grads, &BTreeMap::new()).unwrap();
        }
        p.as_tensor().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn sgd_momentum_by_hand() {
        // lr 0.1, momentum 0.9, start 1: step 1: buf = 1, p = 0.9; step 2: g = 0.9,
        // buf = 0.9 + 0.9 = 1.8, p = 0.9 - 0.18 = 0.72.
        let p =
            run(OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }, 2);
        assert!((p[0] - 0.72).abs() < 1e-6 && (p[1] + 1.44).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn sgd_nesterov_and_weight_decay_by_hand() {
        // wd 0.1: d = 1 + 0.1 = 1.1; buf = 1.1; nesterov d = 1.1 + 0.9 * 1.1 = 2.09; p = 1 - 0.209.
        let p =
            run(OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 0.1 }, 1);
        assert!((p[0] - 0.791).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // Adam's first step is lr * g / (|g| + eps') = lr * sign(g) for eps small.
        let p = run(OptimizerConfig::Adam { lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 }, 1);
        assert!((p[0] - 0.99).abs() < 1e-6 && (p[1] + 1.99).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn gradient_clipping_matches_pytorch() {
        // torch.nn.utils.clip_grad_norm_ on grads [3, 0] and [4], max 1: norm 5, grads scaled
        // by 1 / (5 + 1e-6): [0.6, 0], [0.8].
        let mut g = BTreeMap::from([
            ("a".to_string(), Tensor::new(&[3f32, 0.], &Device::Cpu).unwrap()),
            ("b".to_string(), Tensor::new(&[4f32], &Device::Cpu).unwrap()),
        ]);
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a = g["a"].to_vec1::<f32>().unwrap();
        let b = g["b"].to_vec1::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-6 && a[1] == 0.0 && (b[0] - 0.8).abs() < 1e-6, "{a:?} {b:?}");
        // Below the limit: unchanged.
        let before = g["a"].to_vec1::<f32>().unwrap();
        clip_grad_norm(&mut g, 10.0).unwrap();
        assert_eq!(g["a"].to_vec1::<f32>().unwrap(), before);
    }
}
