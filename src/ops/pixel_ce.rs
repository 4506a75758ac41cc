//! Per-pixel cross-entropy as one custom op (CPU, f32): the loss of `[n, c, h, w]` logits
//! against a class per pixel with a weight per pixel, in one pass forward and one pass
//! backward, instead of candle's log-softmax over the class axis (max, subtract, exp, sum,
//! log, subtract, gather: each a pass with strided reads, and as many backward).
//!
//! `loss = scale * sum_p w_p * (logsumexp_c x[c, p] - x[target_p, p])`; its gradient is
//! `dy * scale * w_p * (softmax(x)[c, p] - [c == target_p])`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous;

/// The targets and weights of every pixel, `[n, h, w]` row-major, and the factor applied
/// to the weighted sum.
#[derive(Clone)]
struct PixelCe {
    targets: Arc<Vec<u32>>,
    weights: Arc<Vec<f32>>,
    scale: f32,
}

/// `(n, c, hw)` of a contiguous `[n, c, h, w]` layout.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [n, c, h, w] => Ok((*n, *c, h * w)),
        d => candle_core::bail!("pixel cross-entropy expects [n, c, h, w] logits, got {d:?}"),
    }
}

/// Pixel `p`'s largest logit over the `c` classes of one `[c, hw]` image, and the sum of
/// `exp(x - max)`: `logsumexp = max + ln(sum)`, `softmax_k = exp(x_k - max) / sum`.
fn max_and_sum_exp(img: &[f32], c: usize, hw: usize, p: usize) -> (f32, f32) {
    let max = (0..c).map(|k| img[k * hw + p]).fold(f32::NEG_INFINITY, f32::max);
    (max, (0..c).map(|k| (img[k * hw + p] - max).exp()).sum())
}

impl PixelCe {
    /// Per image: the weighted loss sum (forward).
    fn loss(&self, x: &[f32], (n, c, hw): (usize, usize, usize)) -> f64 {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let img = &x[i * c * hw..(i + 1) * c * hw];
                let mut sum = 0f64;
                for p in 0..hw {
                    let w = self.weights[i * hw + p];
                    if w == 0.0 {
                        continue;
                    }
                    let (max, se) = max_and_sum_exp(img, c, hw, p);
                    let t = self.targets[i * hw + p] as usize;
                    sum += (w * (max + se.ln() - img[t * hw + p])) as f64;
                }
                sum
            })
            .sum()
    }

    /// The gradient with respect to the logits for an upstream gradient `dy`.
    fn grad(&self, x: &[f32], (n, c, hw): (usize, usize, usize), dy: f32) -> Vec<f32> {
        let mut g = vec![0f32; n * c * hw];
        g.par_chunks_mut(c * hw).enumerate().for_each(|(i, gi)| {
            let img = &x[i * c * hw..(i + 1) * c * hw];
            for p in 0..hw {
                let w = self.weights[i * hw + p];
                if w == 0.0 {
                    continue;
                }
                let (max, se) = max_and_sum_exp(img, c, hw, p);
                let f = dy * self.scale * w / se;
                for k in 0..c {
                    gi[k * hw + p] = f * (img[k * hw + p] - max).exp();
                }
                gi[self.targets[i * hw + p] as usize * hw + p] -= dy * self.scale * w;
            }
        });
        g
    }
}

impl CustomOp1 for PixelCe {
    fn name(&self) -> &'static str {
        "runner-pixel-cross-entropy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(_) = s else { candle_core::bail!("runner pixel cross-entropy supports f32") };
        let x = contiguous::<f32>(s, l)?;
        let loss = self.loss(x, dims(l)?) * self.scale as f64;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.to_scalar::<f32>()?;
        let x = x.contiguous()?;
        let (n, c, h, w) = x.dims4()?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let g = self.grad(&values, (n, c, h * w), dy);
        Ok(Some(Tensor::from_vec(g, (n, c, h, w), x.device())?))
    }
}

/// `scale x sum_p weights[p] x nll_p` of `[n, c, h, w]` f32 logits on the CPU, `targets`
/// and `weights` one per pixel (`[n, h, w]`); pixels of weight 0 are skipped (their
/// target is not read).
pub fn pixel_cross_entropy(logits: &Tensor, targets: Vec<u32>, weights: Vec<f32>, scale: f32) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(PixelCe { targets: Arc::new(targets), weights: Arc::new(weights), scale })
}
