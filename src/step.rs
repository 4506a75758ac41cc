//! One training batch's forward pass, loss and gradients; on the CPU, for a model whose
//! samples do not meet inside it, in slices of the batch side by side, one per thread.
//!
//! A small model's ops are too small to split well: LeNet5's step on two threads ran 1.10x
//! its one-thread speed, the time going to each op's fork and join rather than to
//! arithmetic. Its samples never meet before the loss (no batch norm, no dropout masks that
//! are drawn per batch position), so each thread can instead run the whole graph on its
//! own slice of the batch, its kernels on that thread alone, and the gradients are added
//! afterwards: the gradient of the batch's mean loss is the sum of each slice's mean-loss
//! gradient weighted by its share of the batch. The values are those of one pass up to the
//! order of the additions (test `sliced_gradients_equal_the_whole_batch`).

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::model::{Model, Pass};
use crate::ops;
use crate::ops::serial;
use crate::optim::{add_grads, collect_grads};

/// What a batch's forward and backward give the training loop.
pub struct Step {
    /// The model's output for the whole batch, in batch order.
    pub out: Tensor,
    /// The batch's mean loss (before dividing by the accumulation count).
    pub loss: BatchLoss,
    /// Each trainable parameter's gradient of `loss / accumulate`.
    pub grads: BTreeMap<String, Tensor>,
}

/// A batch's mean loss: read on the CPU, where reading costs nothing; on a GPU still on the
/// device (a scalar), read when the training loop logs, so that a step waits for nothing.
#[derive(Debug, Clone)]
pub enum BatchLoss {
    Read(f64),
    OnDevice(Tensor),
}

impl BatchLoss {
    /// The value (a device-to-host copy, which waits for the GPU, when not yet read).
    pub fn read(&self) -> Result<f64> {
        Ok(match self {
            BatchLoss::Read(v) => *v,
            BatchLoss::OnDevice(t) => t.to_scalar::<f32>()? as f64,
        })
    }
}

/// The fewest samples a slice gets: below that the per-op cost of a second graph outweighs
/// what the second thread gives back.
const MIN_SLICE: usize = 8;

/// How many slices a batch of `n` is run in: one per kernel thread on the CPU when the
/// model's samples are independent, at least `MIN_SLICE` samples each; else 1.
pub fn slices(model: &Model, n: usize, device: &Device) -> usize {
    if !ops::cpu_kernels_on(device) || !model.samples_independent() {
        return 1;
    }
    ops::threads().min(n / MIN_SLICE).max(1)
}

/// Forward, `loss` and backward of the batch `xs` in `slices` slices (see the module's
/// comment). `loss(out, range)`: the mean loss of the samples `range` of the batch, given
/// the model's output for them. The gradients are of the loss divided by `accumulate`.
/// With one slice this is `loss(forward(xs))` and its backward, nothing more.
pub fn forward_backward(
    model: &Model,
    xs: &Tensor,
    pass: Pass,
    slices: usize,
    accumulate: usize,
    loss: impl Fn(&Tensor, Range<usize>) -> Result<Tensor> + Sync,
) -> Result<Step> {
    let n = xs.dim(0)?;
    if slices <= 1 || n < 2 {
        let out = model.forward(xs, pass)?;
        let l = loss(&out, 0..n)?;
        let value = if ops::cpu_kernels(&l) {
            BatchLoss::Read(l.to_scalar::<f32>()? as f64)
        } else {
            BatchLoss::OnDevice(l.detach())
        };
        let l = if accumulate > 1 { (l / accumulate as f64)? } else { l };
        let grads = collect_grads(&l.backward()?, model.trainable());
        return Ok(Step { out, loss: value, grads });
    }
    let ranges = split(n, slices);
    let parts: Vec<(Tensor, f64, BTreeMap<String, Tensor>)> = ranges
        .par_iter()
        .map(|r| {
            serial(|| -> Result<_> {
                let out = model.forward(&xs.narrow(0, r.start, r.len())?, pass)?;
                let l = loss(&out, r.clone())?;
                let value = l.to_scalar::<f32>()? as f64;
                let share = r.len() as f64 / (n * accumulate.max(1)) as f64;
                let grads = collect_grads(&(l * share)?.backward()?, model.trainable());
                Ok((out, value, grads))
            })
        })
        .collect::<Result<_>>()?;
    let mut outs = Vec::with_capacity(parts.len());
    let (mut value, mut grads) = (0.0, BTreeMap::new());
    // Added in slice order: the same bits on every run with the same thread count.
    for ((out, v, g), r) in parts.into_iter().zip(&ranges) {
        outs.push(out);
        value += v * r.len() as f64 / n as f64;
        add_grads(&mut grads, g)?;
    }
    Ok(Step { out: Tensor::cat(&outs, 0)?, loss: BatchLoss::Read(value), grads })
}

/// `n` samples in `k` contiguous ranges whose sizes differ by at most one.
fn split(n: usize, k: usize) -> Vec<Range<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k).map(|i| (i * n / k)..((i + 1) * n / k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::plan_model;
    use crate::ops;
    use crate::rng::Rng;

    fn model(toml_text: &str) -> Model {
        #[derive(serde::Deserialize)]
        struct File {
            model: ModelConfig,
        }
        let cfg: File = toml::from_str(toml_text).unwrap();
        Model::new(&plan_model(&cfg.model).unwrap(), 3, &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The reference is the same batch in one pass: the mean loss's gradient is the sum of
    /// the slices' mean-loss gradients weighted by their shares, so only the order of the
    /// additions differs (f32 rounding: 1e-5 of each gradient's largest entry).
    #[test]
    fn sliced_gradients_equal_the_whole_batch() {
        let m = model(include_str!("../configs/models/lenet5.toml"));
        assert!(m.samples_independent());
        let n = 11;
        let mut r = Rng::new(5);
        let xs: Vec<f32> = (0..n * 28 * 28).map(|_| r.next_f64() as f32 * 2.0 - 1.0).collect();
        let xs = Tensor::from_vec(xs, (n, 1, 28, 28), &Device::Cpu).unwrap();
        let ys = Tensor::from_vec((0..n as u32).map(|i| (i * 7) % 10).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
        let loss = |out: &Tensor, r: Range<usize>| -> Result<Tensor> {
            Ok(candle_nn::loss::cross_entropy(out, &ys.narrow(0, r.start, r.len())?)?)
        };
        let pass = Pass { train: true, seed: 0, epoch: 0, step: 0 };
        for accumulate in [1, 3] {
            let whole = forward_backward(&m, &xs, pass, 1, accumulate, loss).unwrap();
            let whole_loss = whole.loss.read().unwrap();
            for k in [2, 3] {
                let sliced = forward_backward(&m, &xs, pass, k, accumulate, loss).unwrap();
                let sliced_loss = sliced.loss.read().unwrap();
                assert!(
                    (sliced_loss - whole_loss).abs() < 1e-6 * whole_loss,
                    "{k} slices: loss {sliced_loss} vs {whole_loss}"
                );
                let d = max_abs(&(&sliced.out - &whole.out).unwrap());
                assert!(d <= 1e-6 * max_abs(&whole.out), "{k} slices: outputs differ by {d}");
                assert_eq!(sliced.grads.len(), whole.grads.len());
                assert_eq!(sliced.grads.len(), 10, "LeNet5's five weights and biases");
                for (name, g) in &whole.grads {
                    let d = max_abs(&(&sliced.grads[name] - g).unwrap());
                    let scale = max_abs(g);
                    assert!(
                        scale > 0.0 && d <= 1e-5 * scale,
                        "{k} slices, accumulate {accumulate}: {name} differs by {d} (largest {scale})"
                    );
                }
            }
        }
    }

    #[test]
    fn only_batch_independent_models_on_the_cpu_are_sliced() {
        let lenet = model(include_str!("../configs/models/lenet5.toml"));
        assert_eq!(slices(&lenet, 4, &Device::Cpu), 1, "fewer than 8 samples a slice");
        let t = ops::threads();
        assert_eq!(slices(&lenet, 64, &Device::Cpu), t.min(8));
        let bn = model(
            "[model]\ninput = [1, 8, 8]\n[[model.groups]]\nname = \"f\"\nlayers = [{ conv2d = { out = 2, kernel = 3 } }, \"batchnorm\", \"flatten\", { linear = { out = 2 } }]\n",
        );
        assert!(!bn.samples_independent());
        assert_eq!(slices(&bn, 64, &Device::Cpu), 1);
        let dropout = model(
            "[model]\ninput = [1, 2, 2]\n[[model.groups]]\nname = \"f\"\nlayers = [\"flatten\", { linear = { out = 2 } }, { dropout = { p = 0.5 } }]\n",
        );
        assert!(!dropout.samples_independent());
        // Inside a slice the kernels run on the slice's thread alone.
        assert!(!ops::in_serial());
        assert_eq!(serial(|| (ops::in_serial(), ops::threads())), (true, 1));
        assert!(!ops::in_serial());
    }

    #[test]
    fn split_covers_the_batch_in_near_equal_ranges() {
        assert_eq!(split(10, 2), vec![0..5, 5..10]);
        assert_eq!(split(7, 3), vec![0..2, 2..4, 4..7]);
        assert_eq!(split(3, 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(split(5, 1), vec![0..5]);
    }
}
