//! Batch normalization over `[n, c, h, w]` per channel (Ioffe and Szegedy, 2015), as
//! PyTorch's `BatchNorm2d`.
//!
//! Training mode normalizes with the batch's mean and biased variance and has a fused
//! backward (candle's generic reductions over three dimensions made a ResBlock step 3-4x
//! slower than PyTorch's). The batch statistics are returned too, for the running averages.
//! Evaluation mode uses given running statistics and is built from candle's broadcast ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

use rayon::prelude::*;

use super::{contiguous, Elem};

pub(super) fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => candle_core::bail!("batch norm expects [n, c, h, w], got {d:?}"),
    }
}

/// Partial sums per plane run in this many lanes of the element type (vectorised; each
/// lane sums `hw / LANES` values), then add up in f64.
const LANES: usize = 16;

#[inline(always)]
fn lanes_to_f64<T: Elem>(acc: &[T; LANES], rem: impl Iterator<Item = T>) -> f64 {
    acc.iter().map(|v| v.to_f64()).sum::<f64>() + rem.map(|v| v.to_f64()).sum::<f64>()
}

/// `sum p` and `sum (p - mean)^2` over one plane.
#[inline(always)]
fn plane_moments_body<T: Elem>(p: &[T], mean: T) -> (f64, f64) {
    let (mut s, mut q) = ([T::zero(); LANES], [T::zero(); LANES]);
    let chunks = p.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            s[l] += c[l];
            q[l] += (c[l] - mean) * (c[l] - mean);
        }
    }
    (lanes_to_f64(&s, rem.iter().copied()), lanes_to_f64(&q, rem.iter().map(|&v| (v - mean) * (v - mean))))
}

/// The normalised value `0 x + scale (x - mean) + beta`, computed exactly as the forward
/// pass computes it (see [`plane_affine_body`]), so a fused ReLU's mask is the same.
#[inline(always)]
fn normalised<T: Elem>(x: T, mean: T, (scale, beta): (T, T)) -> T {
    T::zero() * x + scale * (x - mean) + beta
}

/// `dy` through a (leaky) ReLU fused after the normalisation (`mask`: scale, beta, slope):
/// `dy` where the normalised value is positive, else `slope * dy` (0 for a ReLU).
#[inline(always)]
fn through_relu<T: Elem>(x: T, dy: T, mean: T, mask: Option<(T, T, T)>) -> T {
    match mask {
        Some((sc, b, _)) if normalised(x, mean, (sc, b)) > T::zero() => dy,
        Some((_, _, s)) if s == T::zero() => T::zero(),
        Some((_, _, s)) => dy * s,
        None => dy,
    }
}

/// `sum dy` and `sum dy * (x - mean)` over one plane (`dy` through the fused ReLU, if any).
#[inline(always)]
fn plane_dots_body<T: Elem>(x: &[T], dy: &[T], mean: T, mask: Option<(T, T, T)>) -> (f64, f64) {
    let (mut s, mut q) = ([T::zero(); LANES], [T::zero(); LANES]);
    let (xc, dc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xr, dr) = (xc.remainder(), dc.remainder());
    for (a, d) in xc.zip(dc) {
        for l in 0..LANES {
            let d = through_relu(a[l], d[l], mean, mask);
            s[l] += d;
            q[l] += d * (a[l] - mean);
        }
    }
    let rem = || xr.iter().zip(dr).map(|(&a, &d)| (a, through_relu(a, d, mean, mask)));
    (lanes_to_f64(&s, rem().map(|(_, d)| d)), lanes_to_f64(&q, rem().map(|(a, d)| d * (a - mean))))
}

/// `out = a * x + b * (y - m) + c`, then through the activation `act` (a slope: 0 for a
/// ReLU, else leaky) when given (centred first: `b * y` and `b * m` can be large and cancel
/// where the centred value is small).
#[inline(always)]
fn plane_affine_body<T: Elem>(out: &mut [T], x: &[T], y: &[T], (a, b, m, c): (T, T, T, T), act: Option<T>) {
    match act {
        None => out.iter_mut().zip(x).zip(y).for_each(|((o, &x), &y)| *o = a * x + b * (y - m) + c),
        Some(s) if s == T::zero() => {
            for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                let v = a * x + b * (y - m) + c;
                *o = if v > T::zero() { v } else { T::zero() };
            }
        }
        Some(s) => {
            for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                let v = a * x + b * (y - m) + c;
                *o = if v > T::zero() { v } else { v * s };
            }
        }
    }
}

/// `dx = k dy' + k1 (x - mean) + k0`, `dy'` being `dy` through the fused ReLU, if any.
#[inline(always)]
fn plane_grad_body<T: Elem>(
    out: &mut [T],
    dy: &[T],
    x: &[T],
    (k, k1, mean, k0): (T, T, T, T),
    mask: Option<(T, T, T)>,
) {
    for ((o, &d), &x) in out.iter_mut().zip(dy).zip(x) {
        *o = k * through_relu(x, d, mean, mask) + k1 * (x - mean) + k0;
    }
}

with_avx2!(plane_moments = plane_moments_body(p: &[T], mean: T) -> (f64, f64));
with_avx2!(plane_dots = plane_dots_body(x: &[T], dy: &[T], mean: T, mask: Option<(T, T, T)>) -> (f64, f64));
with_avx2!(plane_affine = plane_affine_body(out: &mut [T], x: &[T], y: &[T], k: (T, T, T, T), act: Option<T>));
with_avx2!(plane_grad = plane_grad_body(out: &mut [T], dy: &[T], x: &[T], k: (T, T, T, T), mask: Option<(T, T, T)>));

/// Per channel: (mean, biased variance). The mean is summed first (in lanes, then f64);
/// the variance is the mean of squared deviations from it.
pub(super) fn stats<T: Elem>(x: &[T], (n, c, hw): (usize, usize, usize)) -> Vec<(f64, f64)> {
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let mean = planes().map(|p| plane_moments(p, T::zero()).0).sum::<f64>() / m;
            let var = planes().map(|p| plane_moments(p, T::from_f64(mean)).1).sum::<f64>() / m;
            (mean, var)
        })
        .collect()
}

/// `scale = gamma / sqrt(var + eps)` per channel, as the forward pass and the fused ReLU's
/// mask both compute it.
fn scale<T: Elem>(gamma: T, (_, var): (f64, f64), eps: f64) -> T {
    T::from_f64(gamma.to_f64() / (var + eps).sqrt())
}

fn forward<T: Elem>(
    x: &[T],
    g: &[T],
    b: &[T],
    d: (usize, usize, usize),
    st: &[(f64, f64)],
    eps: f64,
    act: Option<f64>,
) -> Vec<T> {
    let act = act.map(T::from_f64);
    let (_, c, hw) = d;
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).for_each(|(ys, xs)| {
        for (ch, (yp, xp)) in ys.chunks_mut(hw).zip(xs.chunks(hw)).enumerate() {
            let k = (T::zero(), scale(g[ch], st[ch], eps), T::from_f64(st[ch].0), b[ch]);
            plane_affine(yp, xp, xp, k, act);
        }
    });
    y
}

/// `(dx, dgamma, dbeta)`: dbeta = sum dy, dgamma = sum dy * xhat,
/// dx = gamma / sqrt(var + eps) * (dy - dbeta / m - xhat * dgamma / m). With `act` (beta,
/// and the slope of a (leaky) ReLU fused after the normalisation), `dy` first goes back
/// through it.
fn backward<T: Elem>(
    x: &[T],
    g: &[T],
    dy: &[T],
    d: (usize, usize, usize),
    st: &[(f64, f64)],
    eps: f64,
    act: Option<(&[f64], f64)>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (n, c, hw) = d;
    let m = (n * hw) as f64;
    let mask = |ch: usize| act.map(|(b, s)| (scale(g[ch], st[ch], eps), T::from_f64(b[ch]), T::from_f64(s)));
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = st[ch];
            let inv = 1.0 / (var + eps).sqrt();
            let (mut sdy, mut sdyx) = (0.0, 0.0);
            for i in 0..n {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (a, b) = plane_dots(&x[r.clone()], &dy[r], T::from_f64(mean), mask(ch));
                sdy += a;
                sdyx += b * inv;
            }
            (sdy, sdyx)
        })
        .collect();
    // dx = k dy + k1 (x - mean) + k0 with k = gamma * inv, k1 = -k inv sdyx / m,
    // k0 = -k sdy / m.
    let coef: Vec<(T, T, T, T)> = (0..c)
        .map(|ch| {
            let ((mean, var), (sdy, sdyx)) = (st[ch], sums[ch]);
            let inv = 1.0 / (var + eps).sqrt();
            let k = g[ch].to_f64() * inv;
            let k1 = -k * inv * sdyx / m;
            (T::from_f64(k), T::from_f64(k1), T::from_f64(mean), T::from_f64(-k * sdy / m))
        })
        .collect();
    let mut dx = vec![T::default(); x.len()];
    dx.par_chunks_mut(c * hw).enumerate().for_each(|(i, sample)| {
        for (ch, plane) in sample.chunks_mut(hw).enumerate() {
            let base = (i * c + ch) * hw;
            plane_grad(plane, &dy[base..base + hw], &x[base..base + hw], coef[ch], mask(ch));
        }
    });
    let dgamma = sums.iter().map(|s| T::from_f64(s.1)).collect();
    let dbeta = sums.iter().map(|s| T::from_f64(s.0)).collect();
    (dx, dgamma, dbeta)
}

/// Training mode's forward on CPU storages `[x, gamma, beta]` with the batch's statistics
/// `st`: the body of this module's op and of the fused GPU op's CPU reference (`what`
/// names the op in errors).
pub(super) fn train_storage(
    what: &str,
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CpuStorage, &Layout); 3],
    st: &[(f64, f64)],
    eps: f64,
    act: Option<f64>,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(l1)?;
    check_stats(st, d)?;
    Ok((dispatch3!(what, s1, l1, s2, l2, s3, l3, |x, g, b| forward(x, g, b, d, st, eps, act)), l1.shape().clone()))
}

/// The backward on CPU storages `[x, gamma, dy]` -> `[dx (flattened) ++ dgamma ++ dbeta]`;
/// `act`: beta and the slope of a (leaky) ReLU fused after the normalisation.
pub(super) fn grad_storage(
    what: &str,
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CpuStorage, &Layout); 3],
    st: &[(f64, f64)],
    eps: f64,
    act: Option<(&[f64], f64)>,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(l1)?;
    check_stats(st, d)?;
    if act.is_some_and(|(b, _)| b.len() != d.1) {
        candle_core::bail!("batch norm: beta does not have {} channels", d.1);
    }
    let total = l1.shape().elem_count() + 2 * d.1;
    let out = dispatch3!(what, s1, l1, s2, l2, s3, l3, |x, g, dy| {
        let (mut dx, dg, db) = backward(x, g, dy, d, st, eps, act);
        dx.extend(dg);
        dx.extend(db);
        dx
    });
    Ok((out, Shape::from(total)))
}

/// The batch's statistics are computed once, before the op, and shared by its forward and
/// backward passes (and returned for the running averages).
fn check_stats(st: &[(f64, f64)], (_, c, _): (usize, usize, usize)) -> Result<()> {
    if st.len() != c {
        candle_core::bail!("batch norm: statistics for {} channels, input has {c}", st.len());
    }
    Ok(())
}

/// `act`: a ReLU (slope 0) or leaky ReLU (its slope) fused after the normalisation (one
/// pass and one backprop node fewer).
struct BatchNormTrain {
    eps: f64,
    stats: Arc<Vec<(f64, f64)>>,
    act: Option<f64>,
}
/// `(x, gamma, dy)` -> `[dx (flattened) ++ dgamma ++ dbeta]`, split by the caller;
/// `relu_beta`: beta, when a ReLU was fused after the normalisation.
struct BatchNormGrad {
    eps: f64,
    stats: Arc<Vec<(f64, f64)>>,
    relu_beta: Option<Vec<f64>>,
    slope: f64,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "runner-batchnorm-train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        train_storage("batch norm", [(s1, l1), (s2, l2), (s3, l3)], &self.stats, self.eps, self.act)
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let relu_beta = match self.act {
            Some(_) => Some(beta.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?),
            None => None,
        };
        let op = BatchNormGrad { eps: self.eps, stats: self.stats.clone(), relu_beta, slope: self.act.unwrap_or(0.0) };
        let all = x.apply_op3_no_bwd(gamma, &dy.contiguous()?, &op)?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = all.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = all.narrow(0, len, c)?;
        let dbeta = all.narrow(0, len + c, c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "runner-batchnorm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let act = self.relu_beta.as_deref().map(|b| (b, self.slope));
        grad_storage("batch norm", [(s1, l1), (s2, l2), (s3, l3)], &self.stats, self.eps, act)
    }
}

/// The batch's per-channel mean and biased variance (no gradient), for running averages.
struct BatchStats;

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "runner-batchnorm-stats"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = dims(l)?;
        let flat = |st: Vec<(f64, f64)>| -> Vec<f64> { st.iter().map(|p| p.0).chain(st.iter().map(|p| p.1)).collect() };
        let out = match s {
            CpuStorage::F32(_) => flat(stats(contiguous::<f32>(s, l)?, d)),
            CpuStorage::F64(_) => flat(stats(contiguous::<f64>(s, l)?, d)),
            _ => candle_core::bail!("batch norm supports f32 and f64"),
        };
        Ok((CpuStorage::F64(out), Shape::from((2, d.1))))
    }
}

/// Training mode: `y = gamma * (x - mean_b) / sqrt(var_b + eps) + beta` with the batch's
/// statistics. Returns `y` and the batch's `(mean, biased variance)` per channel (f64,
/// no gradient).
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    norm_train(x, gamma, beta, eps, None)
}

/// [`batch_norm_train`] followed by a ReLU, in one op on the CPU: one pass fewer forward and
/// backward, and one gradient fewer for candle to accumulate.
pub fn batch_norm_relu_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    norm_train(x, gamma, beta, eps, Some(0.0))
}

/// [`batch_norm_train`] followed by a leaky ReLU of `slope`, in one op on the CPU.
pub fn batch_norm_leaky_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    slope: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    norm_train(x, gamma, beta, eps, Some(slope))
}

/// `act`: a fused ReLU (slope 0) or leaky ReLU (its slope) after the normalisation.
fn norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<f64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    if super::cpu_kernels(x) {
        let x = x.contiguous()?;
        let st = x.detach().apply_op1_no_bwd(&BatchStats)?;
        let (mean, var) = (st.get(0)?, st.get(1)?);
        let pairs = Arc::new(mean.to_vec1::<f64>()?.into_iter().zip(var.to_vec1::<f64>()?).collect());
        let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BatchNormTrain { eps, stats: pairs, act })?;
        return Ok((y, mean, var));
    }
    if super::fused::applies(x) {
        return super::fused::batch_norm_train(x, gamma, beta, eps, act);
    }
    norm_train_composed(x, gamma, beta, eps, act)
}

/// [`norm_train`] on other devices: the same formula from candle's ops, few of them (on a
/// GPU each is a kernel launch and an allocation, forward and again backward). A channel's
/// mean is two sums, over each plane (`[n, c, h * w]`, one reduction per plane: all the
/// GPU's blocks busy) and then over the batch, and one scaling; the variance the same of
/// the centred squares; then one scale (`gamma / sqrt(var + eps)`, per channel) and one
/// shift per element. The CPU tests check it against the CPU kernel.
fn norm_train_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<f64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let per_channel = (1, c, 1, 1);
    let mean_of = |t: &Tensor| -> Result<Tensor> {
        t.reshape((n, c, h * w))?
            .sum_keepdim(2)?
            .sum_keepdim(0)?
            .affine(1.0 / (n * h * w) as f64, 0.0)?
            .reshape(per_channel)
    };
    let x = x.contiguous()?;
    let mean = mean_of(&x)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = mean_of(&xc.sqr()?)?;
    let scale = (&var + eps)?.sqrt()?.recip()?.mul(&gamma.reshape(per_channel)?)?;
    let y = xc.broadcast_mul(&scale)?.broadcast_add(&beta.reshape(per_channel)?)?;
    let y = match act {
        None => y,
        Some(0.0) => y.relu()?,
        Some(s) => candle_nn::ops::leaky_relu(&y, s)?,
    };
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

/// PyTorch's running statistics after a training batch, in place: `running = (1 -
/// momentum) * running + momentum * batch`, the variance unbiased (`n / (n - 1)` over the
/// `n` values per channel, batch * h * w). `mean` and `var` are the batch's, from the
/// training forward. On a GPU one kernel (`fused`); candle's ops otherwise, which are its
/// reference.
pub fn update_running(
    rm: &candle_core::Var,
    rv: &candle_core::Var,
    mean: &Tensor,
    var: &Tensor,
    n: f64,
    momentum: f64,
) -> Result<()> {
    use candle_core::counting;
    use candle_core::DType::F32;
    let unbias = n / (n - 1.0).max(1.0);
    let fused = super::fused::applies(rm.as_tensor());
    if fused && !counting::enabled() {
        // The kernel reads the batch's statistics in f64 (the fused batch norm's own).
        let (mean, var) = (mean.to_dtype(candle_core::DType::F64)?, var.to_dtype(candle_core::DType::F64)?);
        return super::fused::update_running(rm, rv, &mean, &var, 1.0 - momentum, momentum, unbias);
    }
    let update = || -> Result<()> {
        let unbiased = (var * unbias)?.to_dtype(F32)?;
        let mean = mean.to_dtype(F32)?;
        rm.set(&((rm.as_tensor() * (1.0 - momentum))? + (mean * momentum)?)?)?;
        rv.set(&((rv.as_tensor() * (1.0 - momentum))? + (unbiased * momentum)?)?)
    };
    if fused {
        // Counting: the values from candle's ops, the count from the GPU's kernel.
        return super::fused::counted_as("custom:runner-fused-bn-running", counting::Cost::launch(1, 0), update);
    }
    update()
}

/// Evaluation mode with running statistics.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let shape = (1, c, 1, 1);
    let scale = (gamma / (var.to_dtype(x.dtype())? + eps)?.sqrt()?)?;
    let shift = (beta - (mean.to_dtype(x.dtype())? * &scale)?)?;
    x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn normalizes_each_channel_by_hand() {
        // Channel 0 holds [1, 3] (n = 2, 1x1 each): mean 2, biased var 1, y = [-1, 1]
        // (eps = 0); gamma 2, beta 1 on channel 1 holding [5, 5]: var 0 -> y = beta = 1.
        let x = Tensor::new(&[[[[1f64]], [[5.]]], [[[3.]], [[5.]]]], &candle_core::Device::Cpu).unwrap();
        let g = Tensor::new(&[1f64, 2.], &candle_core::Device::Cpu).unwrap();
        let b = Tensor::new(&[0f64, 1.], &candle_core::Device::Cpu).unwrap();
        let (y, mean, var) = batch_norm_train(&x, &g, &b, 1e-300).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![-1., 1., 1., 1.]);
        assert_eq!(mean.to_vec1::<f64>().unwrap(), vec![2., 5.]);
        assert_eq!(var.to_vec1::<f64>().unwrap(), vec![1., 0.]);
    }

    #[test]
    fn finite_difference_gradients() {
        let x = Var::from_tensor(&rand_tensor(&[3, 4, 3, 5], 1, DType::F64)).unwrap();
        let g = Var::from_tensor(&rand_tensor(&[4], 2, DType::F64)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[4], 3, DType::F64)).unwrap();
        check_grads(&[&x, &g, &b], |v| Ok(batch_norm_train(v[0], v[1], v[2], 1e-5)?.0), "batchnorm train");
        check_grads(&[&x, &g, &b], |v| Ok(batch_norm_relu_train(v[0], v[1], v[2], 1e-5)?.0), "batchnorm + relu");
        check_grads(&[&x, &g, &b], |v| Ok(batch_norm_leaky_train(v[0], v[1], v[2], 1e-5, 0.1)?.0), "batchnorm + leaky");
    }

    /// What other devices run, against the CPU kernel: outputs, the batch's mean and
    /// variance, and the gradients of sum(y * r) for x, gamma and beta, with no activation,
    /// ReLU and leaky ReLU (f64: the two agree to rounding).
    #[test]
    fn composed_equals_the_cpu_kernel() {
        let x = Var::from_tensor(&rand_tensor(&[3, 4, 5, 6], 11, DType::F64)).unwrap();
        let g = Var::from_tensor(&rand_tensor(&[4], 12, DType::F64)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[4], 13, DType::F64)).unwrap();
        let r = rand_tensor(&[3, 4, 5, 6], 14, DType::F64);
        for act in [None, Some(0.0), Some(0.1)] {
            let run = |composed: bool| {
                let (y, mean, var) = if composed {
                    norm_train_composed(&x, &g, &b, 1e-5, act).unwrap()
                } else {
                    norm_train(&x, &g, &b, 1e-5, act).unwrap()
                };
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                [
                    y,
                    mean,
                    var,
                    grads.get(&x).unwrap().clone(),
                    grads.get(&g).unwrap().clone(),
                    grads.get(&b).unwrap().clone(),
                ]
            };
            let (composed, kernel) = (run(true), run(false));
            for (what, (p, q)) in ["y", "mean", "var", "dx", "dgamma", "dbeta"].iter().zip(composed.iter().zip(&kernel))
            {
                assert_eq!(p.dims(), q.dims(), "{act:?}: {what}");
                let d = (p - q).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(d < 1e-12, "{act:?}: {what} differs by {d:e}");
            }
        }
    }

    /// The fused op gives what batch norm then ReLU give: outputs and all three gradients.
    #[test]
    fn fused_relu_equals_batchnorm_then_relu() {
        let x = Var::from_tensor(&rand_tensor(&[4, 3, 5, 6], 4, DType::F32)).unwrap();
        let g = Var::from_tensor(&rand_tensor(&[3], 5, DType::F32)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[3], 6, DType::F32)).unwrap();
        let r = rand_tensor(&[4, 3, 5, 6], 7, DType::F32);
        let run = |fused: bool, slope: f64| {
            let plain = batch_norm_train(&x, &g, &b, 1e-5).unwrap().0;
            let y = match (fused, slope == 0.0) {
                (true, true) => batch_norm_relu_train(&x, &g, &b, 1e-5).unwrap().0,
                (true, false) => batch_norm_leaky_train(&x, &g, &b, 1e-5, slope).unwrap().0,
                (false, true) => activation::relu_op(&plain).unwrap(),
                (false, false) => activation::leaky_relu_op(&plain, slope).unwrap(),
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [flat(&y), flat(grads.get(&x).unwrap()), flat(grads.get(&g).unwrap()), flat(grads.get(&b).unwrap())]
        };
        for slope in [0.0, 0.1] {
            let (fused, plain) = (run(true, slope), run(false, slope));
            assert!(fused[0].iter().any(|v| *v <= 0.0) && fused[0].iter().any(|v| *v > 0.0));
            for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"].iter().zip(fused.iter().zip(&plain)) {
                let err = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "slope {slope}: {what}: max difference {err}");
            }
        }
    }
}
