//! Max and average pooling with kernel, stride, padding and `ceil_mode`, any kernel/stride
//! combination (AlexNet's 3/2 included), with exact gradients, as PyTorch defines them:
//! max pooling sends each window's gradient to its first maximum; average pooling counts
//! padding in the divisor (`count_include_pad = true`).
//!
//! candle 0.11's `max_pool2d` scales its gradient by 1/(k*k) and cannot train when the
//! kernel differs from the stride (see `../shared/reference/findings.md`); it is not used.
//! On a GPU of a CUDA build the same op runs runner's kernels (`fused.cu`: one launch
//! forward, one backward); on other devices pooling is built from candle's own ops with
//! the same values and gradients ([`pool2d_composed`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::ops::{contiguous, cpu_slices, Elem};
use windows::{max2x2_plane, max_plane};

mod windows;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub ceil_mode: bool,
}

impl PoolGeom {
    pub fn new(kernel: usize, stride: usize) -> Self {
        PoolGeom { kernel, stride, padding: 0, ceil_mode: false }
    }

    /// Checks PyTorch's rules; the error says what is wrong.
    pub fn validate(&self, h: usize, w: usize) -> std::result::Result<(), String> {
        if self.kernel == 0 || self.stride == 0 {
            return Err("kernel and stride must be > 0".into());
        }
        if self.padding * 2 > self.kernel {
            return Err(format!("padding {} must be at most half the kernel {}", self.padding, self.kernel));
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            return Err(format!(
                "kernel {} is larger than the padded input {}x{}",
                self.kernel,
                h + 2 * self.padding,
                w + 2 * self.padding
            ));
        }
        Ok(())
    }

    /// Output size along one side, PyTorch's formula: floor (or ceil) of
    /// `(size + 2p - k) / s` plus one; with `ceil_mode` a last window must start inside
    /// the input or its left padding.
    pub fn out_size(&self, size: usize) -> usize {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let span = size + 2 * p - k;
        let mut out = if self.ceil_mode { span.div_ceil(s) } else { span / s } + 1;
        if self.ceil_mode && (out - 1) * s >= size + p {
            out -= 1;
        }
        out
    }
}

#[derive(Clone, Copy)]
struct Dims {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    g: PoolGeom,
}

impl Dims {
    fn new(dims: &[usize], g: PoolGeom) -> Result<Dims> {
        let &[n, c, h, w] = dims else { candle_core::bail!("pooling expects [n, c, h, w], got {dims:?}") };
        g.validate(h, w).map_err(candle_core::Error::Msg)?;
        Ok(Dims { planes: n * c, h, w, oh: g.out_size(h), ow: g.out_size(w), g })
    }

    /// `[planes, h, w, oh, ow]`, for the GPU kernels.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn sizes(&self) -> [usize; 5] {
        [self.planes, self.h, self.w, self.oh, self.ow]
    }

    /// `[kernel, stride, padding]`, for the GPU kernels.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn geom(&self) -> [usize; 3] {
        [self.g.kernel, self.g.stride, self.g.padding]
    }

    /// The window of output `(y, x)`: rows `y0..y1`, columns `x0..x1` inside the input,
    /// and the divisor of average pooling (the window clipped to the padded input).
    fn window(&self, y: usize, x: usize) -> (usize, usize, usize, usize, usize) {
        let (k, s, p) = (self.g.kernel as isize, self.g.stride as isize, self.g.padding as isize);
        let (ys, xs) = (y as isize * s - p, x as isize * s - p);
        let (ye, xe) = ((ys + k).min(self.h as isize + p), (xs + k).min(self.w as isize + p));
        let divisor = ((ye - ys) * (xe - xs)) as usize;
        let clip = |v: isize, hi: usize| v.clamp(0, hi as isize) as usize;
        (clip(ys, self.h), clip(ye, self.h), clip(xs, self.w), clip(xe, self.w), divisor)
    }
}

/// The pooled values and, for max pooling, the index (within its plane) of each window's
/// first maximum, which the backward pass scatters to.
fn forward<T: Elem>(x: &[T], d: &Dims, kind: PoolKind) -> (Vec<T>, Vec<u32>) {
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let mut out = vec![T::default(); d.planes * ohw];
    let mut arg = vec![0u32; if kind == PoolKind::Max { d.planes * ohw } else { 0 }];
    // Max over windows that all lie inside the input (no padding, no ceil overhang), the
    // common case (2x2 stride 2): direct indices, the same first maximum and NaN rule.
    let inside =
        d.g.padding == 0 && (d.oh - 1) * d.g.stride + d.g.kernel <= d.h && (d.ow - 1) * d.g.stride + d.g.kernel <= d.w;
    if kind == PoolKind::Max && inside && d.g.kernel == 2 && d.g.stride == 2 {
        // 2x2 stride 2 (LeNet's, VGG's, FCN's): `max2x2_plane`, with scratch for its first pass.
        let scratch = || (Vec::new(), Vec::new());
        let two = |(m, i): &mut (Vec<T>, Vec<u32>), (pl, (o, a)): (usize, (&mut [T], &mut [u32]))| {
            max2x2_plane(&x[pl * hw..(pl + 1) * hw], d.w, d.ow, o, a, m, i)
        };
        if super::parallel(out.len() * 4) {
            out.par_chunks_mut(ohw).zip(arg.par_chunks_mut(ohw)).enumerate().for_each_init(scratch, two);
        } else {
            let mut buf = scratch();
            out.chunks_mut(ohw).zip(arg.chunks_mut(ohw)).enumerate().for_each(|item| two(&mut buf, item));
        }
        return (out, arg);
    }
    if kind == PoolKind::Max && inside {
        // Any other window inside the input (AlexNet's 3x3 stride 2): `max_plane`.
        let scratch = || (Vec::new(), Vec::new());
        let oks = (d.ow, d.g.kernel, d.g.stride);
        let any = |(m, i): &mut (Vec<T>, Vec<u32>), (pl, (o, a)): (usize, (&mut [T], &mut [u32]))| {
            max_plane(&x[pl * hw..(pl + 1) * hw], d.w, oks, o, a, m, i)
        };
        if super::parallel(out.len() * d.g.kernel * d.g.kernel) {
            out.par_chunks_mut(ohw).zip(arg.par_chunks_mut(ohw)).enumerate().for_each_init(scratch, any);
        } else {
            let mut buf = scratch();
            out.chunks_mut(ohw).zip(arg.chunks_mut(ohw)).enumerate().for_each(|item| any(&mut buf, item));
        }
        return (out, arg);
    }
    let one = |(pl, (o, a)): (usize, (&mut [T], &mut [u32]))| {
        let plane = &x[pl * hw..(pl + 1) * hw];
        for y in 0..d.oh {
            for xo in 0..d.ow {
                let (y0, y1, x0, x1, divisor) = d.window(y, xo);
                let i = y * d.ow + xo;
                o[i] = match kind {
                    PoolKind::Max => {
                        let mut best = y0 * d.w + x0;
                        for r in y0..y1 {
                            for j in r * d.w + x0..r * d.w + x1 {
                                let v = plane[j];
                                if v > plane[best] || v.to_f64().is_nan() {
                                    best = j;
                                }
                            }
                        }
                        a[i] = best as u32;
                        plane[best]
                    }
                    PoolKind::Avg => {
                        let mut sum = 0f64;
                        for r in y0..y1 {
                            sum += plane[r * d.w + x0..r * d.w + x1].iter().map(|v| v.to_f64()).sum::<f64>();
                        }
                        T::from_f64(sum / divisor as f64)
                    }
                };
            }
        }
    };
    // Average pooling keeps no indices: give each plane an empty slice.
    let arg_chunk = if kind == PoolKind::Max { ohw } else { 1 };
    let mut empty = vec![0u32; if kind == PoolKind::Max { 0 } else { d.planes }];
    let args: &mut [u32] = if kind == PoolKind::Max { &mut arg } else { &mut empty };
    if super::parallel(out.len() * d.g.kernel * d.g.kernel) {
        out.par_chunks_mut(ohw).zip(args.par_chunks_mut(arg_chunk)).enumerate().for_each(one);
    } else {
        out.chunks_mut(ohw).zip(args.chunks_mut(arg_chunk)).enumerate().for_each(one);
    }
    (out, arg)
}

/// Max pooling's backward from the forward's arg-max indices: `dx[plane, arg] += dy`.
fn scatter<T: Elem>(dy: &[T], arg: &[u32], planes: usize, hw: usize, ohw: usize) -> Vec<T> {
    let mut dx = vec![T::default(); planes * hw];
    let one = |((g, d), a): ((&mut [T], &[T]), &[u32])| {
        for (v, i) in d.iter().zip(a) {
            g[*i as usize] += *v;
        }
    };
    if super::parallel(dx.len()) {
        dx.par_chunks_mut(hw).zip(dy.par_chunks(ohw)).zip(arg.par_chunks(ohw)).for_each(one);
    } else {
        dx.chunks_mut(hw).zip(dy.chunks(ohw)).zip(arg.chunks(ohw)).for_each(one);
    }
    dx
}

fn backward<T: Elem>(x: &[T], dy: &[T], d: &Dims, kind: PoolKind) -> Vec<T> {
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let mut dx = vec![T::default(); d.planes * hw];
    let one = |(pl, g): (usize, &mut [T])| {
        let plane = &x[pl * hw..(pl + 1) * hw];
        let dys = &dy[pl * ohw..(pl + 1) * ohw];
        for y in 0..d.oh {
            for xo in 0..d.ow {
                let (y0, y1, x0, x1, divisor) = d.window(y, xo);
                let grad = dys[y * d.ow + xo];
                match kind {
                    PoolKind::Max => {
                        // The first maximum in row-major order, as PyTorch's CPU kernel.
                        let mut best = y0 * d.w + x0;
                        for r in y0..y1 {
                            for i in r * d.w + x0..r * d.w + x1 {
                                if plane[i] > plane[best] || plane[i].to_f64().is_nan() {
                                    best = i;
                                }
                            }
                        }
                        g[best] += grad;
                    }
                    PoolKind::Avg => {
                        let share = T::from_f64(grad.to_f64() / divisor as f64);
                        for r in y0..y1 {
                            g[r * d.w + x0..r * d.w + x1].iter_mut().for_each(|v| *v += share);
                        }
                    }
                }
            }
        }
    };
    if super::parallel(dx.len()) {
        dx.par_chunks_mut(hw).enumerate().for_each(one);
    } else {
        dx.chunks_mut(hw).enumerate().for_each(one);
    }
    dx
}

/// The forward op; a max pool keeps its arg-max indices for the backward pass.
struct PoolOp(PoolKind, PoolGeom, Mutex<Option<Arc<Vec<u32>>>>);
/// `(x, dy) -> dx`, recomputing the windows (average pooling, or max without indices).
struct PoolGrad(PoolKind, PoolGeom);
/// `dy -> dx` for max pooling from stored indices.
struct PoolScatter(Arc<Vec<u32>>, Shape);

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "runner-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l.dims(), self.1)?;
        let shape = Shape::from((l.dims()[0], l.dims()[1], d.oh, d.ow));
        let (storage, arg) = match s {
            CpuStorage::F32(_) => {
                let (y, a) = forward(contiguous::<f32>(s, l)?, &d, self.0);
                (CpuStorage::F32(y), a)
            }
            CpuStorage::F64(_) => {
                let (y, a) = forward(contiguous::<f64>(s, l)?, &d, self.0);
                (CpuStorage::F64(y), a)
            }
            _ => candle_core::bail!("runner pooling supports f32 and f64"),
        };
        if self.0 == PoolKind::Max {
            if let Ok(mut slot) = self.2.lock() {
                *slot = Some(Arc::new(arg));
            }
        }
        Ok((storage, shape))
    }
    /// One kernel (`fused.cu`), which keeps no indices: the backward recomputes the windows.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = Dims::new(l.dims(), self.1)?;
        let shape = Shape::from((l.dims()[0], l.dims()[1], d.oh, d.ow));
        let y = super::fused::gpu::pool((s, l), d.sizes(), d.geom(), self.0 == PoolKind::Max)?;
        Ok((y, shape))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let stored = self.2.lock().ok().and_then(|s| s.clone());
        Ok(Some(match stored {
            Some(arg) => dy.apply_op1_no_bwd(&PoolScatter(arg, x.shape().clone()))?,
            None => x.apply_op2_no_bwd(&dy, &PoolGrad(self.0, self.1))?,
        }))
    }
}

impl CustomOp1 for PoolScatter {
    fn name(&self) -> &'static str {
        "runner-maxpool-scatter"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, hw) = match self.1.dims() {
            &[n, c, h, w] => (n * c, h * w),
            d => candle_core::bail!("pooling expects [n, c, h, w], got {d:?}"),
        };
        let ohw = l.shape().elem_count() / planes.max(1);
        if self.0.len() != l.shape().elem_count() {
            candle_core::bail!("max-pool indices do not match the gradient's shape {:?}", l.dims());
        }
        Ok(match s {
            CpuStorage::F32(_) => {
                (CpuStorage::F32(scatter(contiguous::<f32>(s, l)?, &self.0, planes, hw, ohw)), self.1.clone())
            }
            CpuStorage::F64(_) => {
                (CpuStorage::F64(scatter(contiguous::<f64>(s, l)?, &self.0, planes, hw, ohw)), self.1.clone())
            }
            _ => candle_core::bail!("runner pooling supports f32 and f64"),
        })
    }
}

impl CustomOp2 for PoolGrad {
    fn name(&self) -> &'static str {
        "runner-pool2d-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), self.1)?;
        let shape = l1.shape().clone();
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(backward(x, dy, &d, self.0)), shape)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(backward(x, dy, &d, self.0)), shape)
            }
            _ => candle_core::bail!("runner pooling supports f32 and f64 of one dtype"),
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = Dims::new(l1.dims(), self.1)?;
        let dx = super::fused::gpu::pool_grad((s1, l1), (s2, l2), d.sizes(), d.geom(), self.0 == PoolKind::Max)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// `[n, c, h, w]` -> `[n, c, oh, ow]`.
pub fn pool2d(x: &Tensor, kind: PoolKind, g: PoolGeom) -> Result<Tensor> {
    if super::cpu_kernels(x) || super::fused::applies(x) {
        return x.contiguous()?.apply_op1(PoolOp(kind, g, Mutex::new(None)));
    }
    pool2d_composed(x, kind, g)
}

/// Pooling from candle's own ops, for devices without the custom op (any kernel, stride,
/// padding and `ceil_mode`), with the CPU kernel's values and gradients (the tests compare
/// them). Windows that tile the input are a reshape; otherwise the input is padded (the
/// lowest value for max, zeros for average) to cover every window and each of the k x k
/// offsets gathered by `index_select` (whose gradient is a scatter-add). Max takes the
/// first maximum, average the sum over the CPU kernel's divisor.
pub fn pool2d_composed(x: &Tensor, kind: PoolKind, g: PoolGeom) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    g.validate(h, w).map_err(candle_core::Error::Msg)?;
    if g.stride == g.kernel && g.padding == 0 && h % g.kernel == 0 && w % g.kernel == 0 {
        // Non-overlapping windows that tile the input: a reshape and a reduction.
        let (n, c, k) = (x.dim(0)?, x.dim(1)?, g.kernel);
        let x = x.reshape((n, c, h / k, k, w / k, k))?;
        return match kind {
            PoolKind::Max => {
                let windows = x.permute((0, 1, 2, 4, 3, 5))?.reshape((n, c, h / k, w / k, k * k))?;
                let slices: Vec<Tensor> =
                    (0..k * k).map(|i| windows.narrow(4, i, 1)?.squeeze(4)).collect::<Result<_>>()?;
                first_max(&slices)
            }
            PoolKind::Avg => x.mean(5)?.mean(3),
        };
    }
    gathered(x, kind, g)
}

/// The element-wise maximum of `slices` whose gradient goes to the first slice holding it
/// (candle's `maximum` would split it between ties): `sum_k slice_k * first_k`, where
/// `first_k` (no gradient) marks where slice k is the first maximum.
fn first_max(slices: &[Tensor]) -> Result<Tensor> {
    let Some((head, rest)) = slices.split_first() else {
        candle_core::bail!("pooling: a window of no values");
    };
    let mut m = head.detach();
    for s in rest {
        m = m.maximum(&s.detach())?;
    }
    let mut taken = m.zeros_like()?;
    let mut out = m.zeros_like()?;
    for s in slices {
        let first = (s.detach().eq(&m)?.to_dtype(m.dtype())? * (1.0 - &taken)?)?;
        taken = (taken + &first)?;
        out = (out + (s * first)?)?;
    }
    Ok(out)
}

fn gathered(x: &Tensor, kind: PoolKind, g: PoolGeom) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (k, s, p) = (g.kernel, g.stride, g.padding);
    let (oh, ow) = (g.out_size(h), g.out_size(w));
    let fill = match kind {
        PoolKind::Max => match x.dtype() {
            candle_core::DType::F64 => f64::MIN,
            _ => f32::MIN as f64,
        },
        PoolKind::Avg => 0.0,
    };
    // Padded: p before, and after up to the end of the last window (at least p).
    let pad = |t: Tensor, dim: usize, size: usize, out: usize| -> Result<Tensor> {
        let after = ((out - 1) * s + k).saturating_sub(size + p).max(p);
        let mut shape = t.dims().to_vec();
        let mut parts = Vec::new();
        if p > 0 {
            shape[dim] = p;
            parts.push(Tensor::full(fill, shape.as_slice(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            shape[dim] = after;
            parts.push(Tensor::full(fill, shape.as_slice(), t.device())?.to_dtype(t.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let xp = pad(pad(x.clone(), 2, h, oh)?, 3, w, ow)?;
    let index = |i: usize, len: usize| {
        Tensor::from_vec((0..len).map(|o| (o * s + i) as u32).collect::<Vec<_>>(), len, x.device())
    };
    let mut slices = Vec::with_capacity(k * k);
    for i in 0..k {
        let rows = xp.index_select(&index(i, oh)?, 2)?;
        for j in 0..k {
            slices.push(rows.index_select(&index(j, ow)?, 3)?);
        }
    }
    match kind {
        PoolKind::Max => first_max(&slices),
        PoolKind::Avg => {
            // The CPU kernel's divisor: each window clipped to the padded input.
            let counts = |size: usize, out: usize| -> Vec<f64> {
                (0..out).map(|o| ((o * s + k).min(size + 2 * p) - o * s) as f64).collect()
            };
            let (ch, cw) = (counts(h, oh), counts(w, ow));
            let inv: Vec<f64> = ch.iter().flat_map(|a| cw.iter().map(move |b| 1.0 / (a * b))).collect();
            let inv = Tensor::from_vec(inv, (1, 1, oh, ow), x.device())?.to_dtype(x.dtype())?;
            let sum = Tensor::stack(&slices, 0)?.sum(0)?;
            sum.broadcast_mul(&inv)
        }
    }
    .map(|t| t.reshape((n, c, oh, ow)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing;
    use crate::ops::testing::{check_grads, rand_tensor};
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    #[test]
    fn gradient_goes_to_the_argmax_with_weight_one() {
        // The findings' repro: input [[1,2],[3,4]], k = 2. d(max)/dx = [0,0,0,1] by hand.
        let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = pool2d(&x, PoolKind::Max, PoolGeom::new(2, 2)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![4.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn output_sizes_follow_pytorch() {
        // torch.nn.MaxPool2d(3, 2) on 55x55 -> 27 (AlexNet); on 13 -> 6.
        assert_eq!(PoolGeom::new(3, 2).out_size(55), 27);
        assert_eq!(PoolGeom::new(3, 2).out_size(13), 6);
        // ceil_mode: MaxPool2d(2, 2, ceil_mode=True) on 5 -> 3; (3, 2, pad 1, ceil) on 6 -> 4.
        // MaxPool2d(2, 2, padding=1, ceil_mode=True) on 3: ceil(3/2)+1 = 3, but the third
        // window would start in the right padding, so 2 (PyTorch's rule).
        assert_eq!(PoolGeom { ceil_mode: true, ..PoolGeom::new(2, 2) }.out_size(5), 3);
        assert_eq!(PoolGeom { padding: 1, ceil_mode: true, ..PoolGeom::new(3, 2) }.out_size(6), 4);
        assert_eq!(PoolGeom { padding: 1, ceil_mode: true, ..PoolGeom::new(2, 2) }.out_size(3), 2);
        assert!(PoolGeom { padding: 2, ..PoolGeom::new(3, 1) }.validate(5, 5).is_err());
    }

    #[test]
    fn overlapping_max_and_padded_avg_by_hand() {
        // 1x1x3x3 = [[1,2,3],[4,5,6],[7,8,9]].
        let x = Tensor::new(&[[[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.]]]], &Device::Cpu).unwrap();
        // max k=2 s=1: [[5,6],[8,9]].
        let y = pool2d(&x, PoolKind::Max, PoolGeom::new(2, 1)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5., 6., 8., 9.]);
        // avg k=2 s=2 pad=1 (count_include_pad): windows see [1], [2,3], [4,7], [5,6,8,9]
        // each over 4 cells: [0.25, 1.25, 2.75, 7.0].
        let y = pool2d(&x, PoolKind::Avg, PoolGeom { padding: 1, ..PoolGeom::new(2, 2) }).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.25, 1.25, 2.75, 7.0]);
    }

    #[test]
    fn finite_difference_gradients() {
        let geoms = [
            PoolGeom::new(2, 2),
            PoolGeom::new(3, 2),
            PoolGeom { padding: 1, ..PoolGeom::new(3, 2) },
            PoolGeom { ceil_mode: true, ..PoolGeom::new(2, 2) },
            PoolGeom { padding: 1, ceil_mode: true, ..PoolGeom::new(3, 2) },
        ];
        for g in geoms {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                // Random values have no ties, so max is differentiable at the test point.
                let x = Var::from_tensor(&rand_tensor(&[2, 3, 7, 6], 7, DType::F64)).unwrap();
                check_grads(&[&x], |v| pool2d(v[0], kind, g), &format!("{kind:?} {g:?}"));
            }
        }
    }

    #[test]
    fn composed_pooling_equals_the_cpu_kernel() {
        // What other devices run, checked here against the CPU kernel: values and the
        // gradient of sum(y * r), ties included (ReLU zeros, a constant plane), where both
        // send the gradient to a window's first maximum.
        let geoms = [
            PoolGeom::new(2, 2),
            PoolGeom::new(3, 2),
            PoolGeom::new(3, 3),
            PoolGeom { padding: 1, ..PoolGeom::new(3, 2) },
            PoolGeom { ceil_mode: true, ..PoolGeom::new(2, 2) },
            PoolGeom { padding: 1, ceil_mode: true, ..PoolGeom::new(3, 2) },
            PoolGeom::new(8, 1),
            PoolGeom::new(4, 4),
        ];
        // 8x8: kernels 2 and 4 tile it (the reshape), the others gather.
        let base = rand_tensor(&[2, 3, 8, 8], 7, DType::F64).relu().unwrap();
        let tied = Tensor::cat(&[base.narrow(1, 0, 2).unwrap(), base.narrow(1, 2, 1).unwrap().ones_like().unwrap()], 1)
            .unwrap();
        for g in geoms {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let (cpu, other) = (|x: &Tensor| pool2d(x, kind, g), |x: &Tensor| pool2d_composed(x, kind, g));
                testing::same_values_and_grads(&tied, cpu, other, 1e-12, &format!("{kind:?} {g:?}"));
            }
        }
    }

    #[test]
    fn max_pool_paths_keep_pytorchs_first_maximum_and_nan_rule() {
        // PyTorch's CPU max pool: scanning the window row by row, a value replaces the kept
        // one when greater or NaN (so the first of tied maxima, the last NaN). Each of the
        // three paths (2x2 stride 2, other windows inside the input: 3x3 stride 2 or 1, 2x2
        // stride 1, 4x4 stride 3, 2x2 stride 3, 1x1; the general loop) on
        // small integers (many ties) with NaNs, against that rule written out here. An even
        // width and an odd one (whose last column no 2x2 window reads).
        let mut r = Rng::new(5);
        let x: Vec<f32> = (0..2 * 9 * 10)
            .map(|_| if r.next_f64() < 0.05 { f32::NAN } else { (r.next_f64() * 4.0).floor() as f32 })
            .collect();
        let geoms = [
            PoolGeom::new(2, 2),
            PoolGeom::new(3, 2),
            PoolGeom::new(3, 1),
            PoolGeom::new(2, 1),
            PoolGeom::new(4, 3),
            PoolGeom::new(2, 3),
            PoolGeom::new(1, 1),
            PoolGeom { ceil_mode: true, ..PoolGeom::new(2, 2) },
        ];
        for (g, (h, w)) in geoms.into_iter().flat_map(|g| [(g, (9, 10)), (g, (10, 9))]) {
            let d = Dims::new(&[1, 2, h, w], g).unwrap();
            let (out, arg) = forward(&x, &d, PoolKind::Max);
            for pl in 0..2 {
                for y in 0..d.oh {
                    for xo in 0..d.ow {
                        let (y0, y1, x0, x1, _) = d.window(y, xo);
                        let plane = &x[pl * 90..(pl + 1) * 90];
                        let mut best = y0 * w + x0;
                        for row in y0..y1 {
                            for j in row * w + x0..row * w + x1 {
                                if plane[j] > plane[best] || plane[j].is_nan() {
                                    best = j;
                                }
                            }
                        }
                        let i = (pl * d.oh + y) * d.ow + xo;
                        assert_eq!(arg[i] as usize, best, "{g:?} {h}x{w} plane {pl} ({y}, {xo})");
                        assert_eq!(out[i].to_bits(), plane[best].to_bits(), "{g:?} {h}x{w} plane {pl} ({y}, {xo})");
                    }
                }
            }
        }
    }
}
