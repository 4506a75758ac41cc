//! Adding a per-channel bias to `[n, c, h, w]`, with a backward that sums the gradient per
//! channel in one pass (candle's broadcast-add backward reduces over three strided
//! dimensions, which cost 14% of a LeNet5 training step on the CPU).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, cpu_slices, Elem};

struct ChannelBias;
struct ChannelBiasGrad;

fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => candle_core::bail!("channel bias expects [n, c, h, w], got {d:?}"),
    }
}

fn add<T: Elem>(y: &[T], b: &[T], c: usize, hw: usize) -> Vec<T> {
    let mut out = y.to_vec();
    add_in_place(&mut out, b, c, hw);
    out
}

/// `y[n, c, :] += b[c]` over `[n, c, hw]` data, split across threads for large inputs.
pub(crate) fn add_in_place<T: Elem>(y: &mut [T], b: &[T], c: usize, hw: usize) {
    let f = |sample: &mut [T]| {
        for (plane, bias) in sample.chunks_mut(hw).zip(b) {
            plane.iter_mut().for_each(|v| *v += *bias);
        }
    };
    if super::parallel(y.len()) {
        y.par_chunks_mut(c * hw).for_each(f);
    } else {
        y.chunks_mut(c * hw).for_each(f);
    }
}

/// A plane's sum in f64, in 8 lanes added pairwise at the end: one f64 sum in order waited
/// on each addition (5% of a LeNet5 step was the bias gradients' sums).
#[inline(always)]
fn plane_sum_body<T: Elem>(p: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut blocks = p.chunks_exact(8);
    for b in &mut blocks {
        for (a, v) in acc.iter_mut().zip(b) {
            *a += v.to_f64();
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in blocks.remainder() {
        s += v.to_f64();
    }
    s
}

with_avx2!(plane_sum = plane_sum_body(p: &[T]) -> f64);

/// Per channel, the sum over samples and pixels (each plane summed in f64, the planes'
/// sums added in the element type, in sample order); channels split across threads. The
/// arithmetic is that of the serial version, so results are the same bit for bit.
fn channel_sums<T: Elem>(dy: &[T], c: usize, hw: usize) -> Vec<T> {
    let n = dy.len() / (c * hw).max(1);
    let sum = |ch: usize| {
        let mut o = T::default();
        for i in 0..n {
            o += T::from_f64(plane_sum(&dy[(i * c + ch) * hw..][..hw]));
        }
        o
    };
    if super::parallel(dy.len()) {
        (0..c).into_par_iter().map(sum).collect()
    } else {
        (0..c).map(sum).collect()
    }
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "runner-channel-bias"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l1)?;
        if l2.dims() != [c] {
            candle_core::bail!("channel bias of shape {:?} for {c} channels", l2.dims());
        }
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (y, b) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(add(y, b, c, hw)), l1.shape().clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (y, b) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(add(y, b, c, hw)), l1.shape().clone())
            }
            _ => candle_core::bail!("channel bias supports f32 and f64 of one dtype"),
        })
    }
    fn bwd(&self, y: &Tensor, _b: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ChannelBiasGrad)?;
        Ok((y.track_op().then(|| dy.clone()), Some(db)))
    }
}

impl candle_core::CustomOp1 for ChannelBiasGrad {
    fn name(&self) -> &'static str {
        "runner-channel-bias-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l)?;
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(channel_sums(contiguous::<f32>(s, l)?, c, hw)), Shape::from(c)),
            CpuStorage::F64(_) => (CpuStorage::F64(channel_sums(contiguous::<f64>(s, l)?, c, hw)), Shape::from(c)),
            _ => candle_core::bail!("channel bias supports f32 and f64"),
        })
    }
}

/// The bias gradient for `dy [n, c, h, w]`: its sum per channel (no gradient of its own).
pub(crate) fn channel_bias_grad(dy: &Tensor) -> Result<Tensor> {
    if super::cpu_kernels(dy) {
        dy.contiguous()?.apply_op1_no_bwd(&ChannelBiasGrad)
    } else {
        dy.sum(3)?.sum(2)?.sum(0)
    }
}

/// `y[n, c, h, w] + b[c]`.
pub fn add_channel_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::cpu_kernels(y) {
        y.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias)
    } else {
        y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn matches_broadcast_add_and_gradients() {
        let y = rand_tensor(&[2, 3, 4, 5], 1, DType::F64);
        let b = rand_tensor(&[3], 2, DType::F64);
        let ours = add_channel_bias(&y, &b).unwrap();
        let theirs = y.broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(diff, 0.0);
        let (y, b) = (Var::from_tensor(&y).unwrap(), Var::from_tensor(&b).unwrap());
        check_grads(&[&y, &b], |v| add_channel_bias(v[0], v[1]), "channel bias");
    }
}
