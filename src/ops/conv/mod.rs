//! 2-D convolution with stride, padding, dilation and groups, as candle custom ops.
//!
//! On the CPU: 3x3 stride-1 convs with 16+ channels by Winograd (`winograd.rs`), strided
//! convs whose kernel spans 3 strides (AlexNet's 11x11 stride 4) by Winograd over the
//! input's blocks (`strided.rs`), the rest by im2col (`conv/im2col.rs`) per sample feeding
//! `gemm`, with samples split across threads.
//! Backward computes the weight gradient always and the input gradient only when the input
//! takes part in the gradient (not for the image itself). On other devices, candle's own
//! `conv2d` runs (its gradients are exact there).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::strided::Fold;
use super::winograd::{self, Geo};
use super::{cpu_slices, plan_threads, sum_over_batch, Elem};
use im2col::{col2im, columns};

mod im2col;

/// Geometry of a convolution (square kernels are the common case but not required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvGeom {
    fn default() -> Self {
        ConvGeom { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

/// All sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    g: ConvGeom,
}

impl Dims {
    fn new(x: &[usize], wt: &[usize], g: ConvGeom) -> Result<Dims> {
        let (&[n, c, h, w], &[o, cg, kh, kw]) = (x, wt) else {
            candle_core::bail!(
                "conv2d expects [n, c, h, w] input and [o, c/groups, kh, kw] weight, got {x:?} and {wt:?}"
            )
        };
        if g.groups == 0 || c % g.groups != 0 || o % g.groups != 0 || cg * g.groups != c {
            candle_core::bail!(
                "conv2d: {c} input channels, {o} outputs and weight {wt:?} do not fit groups = {}",
                g.groups
            );
        }
        let ekh = g.dilation * (kh - 1) + 1;
        let ekw = g.dilation * (kw - 1) + 1;
        if h + 2 * g.padding < ekh || w + 2 * g.padding < ekw || g.stride == 0 {
            candle_core::bail!("conv2d: kernel {kh}x{kw} (dilation {}) is larger than the padded input", g.dilation);
        }
        let oh = (h + 2 * g.padding - ekh) / g.stride + 1;
        let ow = (w + 2 * g.padding - ekw) / g.stride + 1;
        Ok(Dims { n, c, h, w, o, kh, kw, oh, ow, g })
    }
    /// Rows of the column matrix per group: (c / groups) * kh * kw.
    fn kg(&self) -> usize {
        self.c / self.g.groups * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// The Winograd F(2x2, 3x3) sizes when this conv takes that path: 3x3, stride 1, no
    /// dilation or groups, and channels enough for it to beat im2col + gemm.
    fn winograd(&self) -> Option<Geo> {
        let g = self.g;
        // An empty input (0 rows, padding making the output) stays with im2col, which fills
        // the output with the bias alone.
        let fits =
            self.kh == 3 && self.kw == 3 && g.stride == 1 && g.dilation == 1 && g.groups == 1 && self.h * self.w > 0;
        (fits && winograd::worth_it(self.c, self.o, self.oh, self.ow)).then_some(Geo {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            pad: g.padding,
            oh: self.oh,
            ow: self.ow,
        })
    }
    /// The stride-1 form of a strided conv whose kernel spans 3 strides (AlexNet's 11x11 at
    /// stride 4), when that form (3x3 over `c s^2` channels) takes the Winograd path.
    fn folded(&self) -> Option<Fold> {
        let g = self.g;
        let s = g.stride;
        let fits = Fold::fits(self.kh, self.kw, s) && g.dilation == 1 && g.groups == 1 && self.h * self.w > 0;
        (fits && winograd::worth_it(self.c * s * s, self.o, self.oh, self.ow)).then_some(Fold {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            kh: self.kh,
            kw: self.kw,
            s,
            p: g.padding,
            oh: self.oh,
            ow: self.ow,
        })
    }
    /// A 1x1, stride-1, unpadded conv reads the input itself as the column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.g.stride == 1 && self.g.padding == 0
    }
}

fn forward<T: Elem>(x: &[T], wt: &[T], d: &Dims) -> Vec<T> {
    if let Some(g) = d.winograd() {
        return winograd::forward(x, wt, &g);
    }
    if let Some(f) = d.folded() {
        return winograd::forward(&f.input(x), &f.weight(wt), &f.geo());
    }
    let (per_sample, gemm_threads) = plan_threads(d.n);
    let (c_in, pp, kg, og) = (d.c * d.h * d.w, d.p(), d.kg(), d.o / d.g.groups);
    let mut out = vec![T::default(); d.n * d.o * pp];
    // `buf`: the im2col buffer, reused across the samples a thread takes.
    let one = |buf: &mut Vec<T>, (i, y): (usize, &mut [T])| {
        let xs = &x[i * c_in..(i + 1) * c_in];
        let col = columns(xs, d, buf);
        for g in 0..d.g.groups {
            // y_g (og x P) = W_g (og x kg) * col_g (kg x P)
            matmul(
                (og, pp, kg),
                &mut y[g * og * pp..(g + 1) * og * pp],
                Mat::N(&wt[g * og * kg..(g + 1) * og * kg]),
                Mat::N(&col[g * kg * pp..(g + 1) * kg * pp]),
                false,
                gemm_threads,
            );
        }
    };
    if per_sample {
        out.par_chunks_mut(d.o * pp).enumerate().for_each_init(Vec::new, one);
    } else {
        let mut buf = Vec::new();
        out.chunks_mut(d.o * pp).enumerate().for_each(|item| one(&mut buf, item));
    }
    out
}

/// `dW = sum_n dY[n] (o x P) * col[n]^T (P x kg)`, per group.
fn grad_weight<T: Elem>(x: &[T], dy: &[T], d: &Dims) -> Vec<T> {
    if let Some(g) = d.winograd() {
        return winograd::grad_weight(x, dy, &g);
    }
    if let Some(f) = d.folded() {
        return f.weight_adjoint(&winograd::grad_weight(&f.input(x), dy, &f.geo()));
    }
    let (per_sample, gemm_threads) = plan_threads(d.n);
    let (c_in, pp, kg, og) = (d.c * d.h * d.w, d.p(), d.kg(), d.o / d.g.groups);
    let wlen = d.o * kg;
    let acc = |(mut dw, mut buf): (Vec<T>, Vec<T>), i: usize| {
        let xs = &x[i * c_in..(i + 1) * c_in];
        let col = columns(xs, d, &mut buf);
        let dys = &dy[i * d.o * pp..(i + 1) * d.o * pp];
        for g in 0..d.g.groups {
            // Accumulated transposed, dW_g^T (kg x og) += col_g (kg x P) * dY_g^T (P x og):
            // the large operand (col) is then read along its rows when gemm packs it.
            matmul(
                (kg, og, pp),
                &mut dw[g * og * kg..(g + 1) * og * kg],
                Mat::N(&col[g * kg * pp..(g + 1) * kg * pp]),
                Mat::T(&dys[g * og * pp..(g + 1) * og * pp]),
                true,
                gemm_threads,
            );
        }
        (dw, buf)
    };
    // Each group's kg x og block back to og x kg.
    let untranspose = |t: Vec<T>| -> Vec<T> {
        let mut out = vec![T::default(); wlen];
        for g in 0..d.g.groups {
            let (src, dst) = (&t[g * og * kg..(g + 1) * og * kg], &mut out[g * og * kg..(g + 1) * og * kg]);
            for r in 0..kg {
                for c in 0..og {
                    dst[c * kg + r] = src[r * og + c];
                }
            }
        }
        out
    };
    if per_sample {
        untranspose(sum_over_batch(d.n, |r| r.fold((vec![T::default(); wlen], Vec::new()), acc).0))
    } else {
        untranspose((0..d.n).fold((vec![T::default(); wlen], Vec::new()), acc).0)
    }
}

/// `dX[n] = col2im(W^T (kg x o) * dY[n] (o x P))`, per group.
fn grad_input<T: Elem>(wt: &[T], dy: &[T], d: &Dims) -> Vec<T> {
    if let Some(g) = d.winograd() {
        return winograd::grad_input(wt, dy, &g);
    }
    if let Some(f) = d.folded() {
        return f.input_adjoint(&winograd::grad_input(&f.weight(wt), dy, &f.geo()));
    }
    let (per_sample, gemm_threads) = plan_threads(d.n);
    let (c_in, pp, kg, og) = (d.c * d.h * d.w, d.p(), d.kg(), d.o / d.g.groups);
    let mut dx = vec![T::default(); d.n * c_in];
    // `col`: reused across the samples a thread takes; gemm overwrites it (no accumulate),
    // so it is zeroed only when first made.
    let one = |col: &mut Vec<T>, (i, dxs): (usize, &mut [T])| {
        let dys = &dy[i * d.o * pp..(i + 1) * d.o * pp];
        col.resize(d.c * d.kh * d.kw * pp, T::default());
        for g in 0..d.g.groups {
            matmul(
                (kg, pp, og),
                &mut col[g * kg * pp..(g + 1) * kg * pp],
                Mat::T(&wt[g * og * kg..(g + 1) * og * kg]),
                Mat::N(&dys[g * og * pp..(g + 1) * og * pp]),
                false,
                gemm_threads,
            );
        }
        if d.is_pointwise() {
            dxs.copy_from_slice(col);
        } else {
            col2im(col, d, dxs);
        }
    };
    if per_sample {
        dx.par_chunks_mut(c_in).enumerate().for_each_init(Vec::new, one);
    } else {
        let mut col = Vec::new();
        dx.chunks_mut(c_in).enumerate().for_each(|item| one(&mut col, item));
    }
    dx
}

/// Forward: `(x, weight) -> y`.
pub(super) struct Conv2dOp(pub(super) ConvGeom);
/// Backward pieces: `(x, dy) -> dW` and `(weight, dy) -> dX`.
pub(super) struct Conv2dGradWeight(pub(super) ConvGeom, pub(super) Shape);
pub(super) struct Conv2dGradInput(pub(super) ConvGeom, pub(super) Shape);

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "runner-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims(), self.0)?;
        let shape = Shape::from((d.n, d.o, d.oh, d.ow));
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, w) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(forward(x, w, &d)), shape)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, w) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(forward(x, w, &d)), shape)
            }
            _ => candle_core::bail!("runner conv2d supports f32 and f64 tensors of one dtype"),
        })
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_grads(self.0, x, w, &dy.contiguous()?)
    }
}

/// `(dx, dW)` of a convolution; dx only where the input takes part in the gradient (not
/// for the image, a tensor with no history).
fn conv_grads(g: ConvGeom, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dw = x.apply_op2_no_bwd(dy, &Conv2dGradWeight(g, w.shape().clone()))?;
    let dx = if x.track_op() { Some(w.apply_op2_no_bwd(dy, &Conv2dGradInput(g, x.shape().clone()))?) } else { None };
    Ok((dx, Some(dw)))
}

/// A convolution and its per-channel bias as one op, `(x, weight, bias) -> y`: the bias is
/// added to the fresh output in place, one backprop node (and one gradient for candle to
/// accumulate) fewer than conv then bias.
struct Conv2dBiasOp(ConvGeom);

fn forward_bias<T: Elem>(x: &[T], wt: &[T], b: &[T], d: &Dims) -> Vec<T> {
    let mut y = forward(x, wt, d);
    super::bias::add_in_place(&mut y, b, d.o, d.p());
    y
}

impl CustomOp3 for Conv2dBiasOp {
    fn name(&self) -> &'static str {
        "runner-conv2d-bias"
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
        let d = Dims::new(l1.dims(), l2.dims(), self.0)?;
        if l3.dims() != [d.o] {
            candle_core::bail!("conv2d bias of shape {:?} for {} output channels", l3.dims(), d.o);
        }
        let shape = Shape::from((d.n, d.o, d.oh, d.ow));
        Ok((dispatch3!("runner conv2d", s1, l1, s2, l2, s3, l3, |x, w, b| forward_bias(x, w, b, &d)), shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dx, dw) = conv_grads(self.0, x, w, &dy)?;
        Ok((dx, dw, Some(super::bias::channel_bias_grad(&dy)?)))
    }
}

impl CustomOp2 for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        "runner-conv2d-grad-weight"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), self.1.dims(), self.0)?;
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(grad_weight(x, dy, &d)), self.1.clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(grad_weight(x, dy, &d)), self.1.clone())
            }
            _ => candle_core::bail!("runner conv2d supports f32 and f64 tensors of one dtype"),
        })
    }
}

impl CustomOp2 for Conv2dGradInput {
    fn name(&self) -> &'static str {
        "runner-conv2d-grad-input"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(self.1.dims(), l1.dims(), self.0)?;
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (w, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(grad_input(w, dy, &d)), self.1.clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (w, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(grad_input(w, dy, &d)), self.1.clone())
            }
            _ => candle_core::bail!("runner conv2d supports f32 and f64 tensors of one dtype"),
        })
    }
}

/// `x`: `[n, c, h, w]`, `weight`: `[o, c / groups, kh, kw]` -> `[n, o, oh, ow]` (no bias).
pub fn conv2d(x: &Tensor, weight: &Tensor, g: ConvGeom) -> Result<Tensor> {
    conv2d_bias(x, weight, None, g)
}

/// [`conv2d`] plus a per-channel `bias [o]` when given, in one op on the CPU.
pub fn conv2d_bias(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: ConvGeom) -> Result<Tensor> {
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        return super::bf16_via_f32(x, weight, |x, w| conv2d_bias(x, w, bias.as_ref(), g));
    }
    match bias {
        Some(b) if super::cpu_kernels(x) => {
            return x.contiguous()?.apply_op3(&weight.contiguous()?, &b.contiguous()?, Conv2dBiasOp(g))
        }
        Some(b) => return super::bias::add_channel_bias(&conv2d_bias(x, weight, None, g)?, b),
        None => {}
    }
    if super::cpu_kernels(x) {
        x.contiguous()?.apply_op2(&weight.contiguous()?, Conv2dOp(g))
    } else {
        super::conv_dev::conv2d(x, weight, g)
    }
}

/// Transposed convolution: `x [n, cin, h, w]`, `weight [cin, cout / groups, kh, kw]` ->
/// `[n, cout, oh, ow]` with `oh = (h - 1) * stride - 2 * padding + dilation * (kh - 1) +
/// output_padding + 1`. It is the input gradient of the convolution that maps the output
/// back to `x`, so it reuses those kernels: forward is that convolution's input gradient,
/// backward is the convolution itself (for `x`) and its weight gradient (for `weight`).
struct ConvTranspose2dOp(ConvGeom, Shape);

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "runner-conv-transpose2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        // The equivalent convolution maps `self.1` (our output) to `x`, with weight `w`.
        let d = Dims::new(self.1.dims(), l2.dims(), self.0)?;
        if (d.n, d.o, d.oh, d.ow) != (l1.dims()[0], l1.dims()[1], l1.dims()[2], l1.dims()[3]) {
            candle_core::bail!("conv_transpose2d: input {:?} does not fit output {:?}", l1.dims(), self.1.dims());
        }
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, w) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(grad_input(w, x, &d)), self.1.clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, w) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(grad_input(w, x, &d)), self.1.clone())
            }
            _ => candle_core::bail!("runner conv_transpose2d supports f32 and f64 tensors of one dtype"),
        })
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dw = dy.apply_op2_no_bwd(x, &Conv2dGradWeight(self.0, w.shape().clone()))?;
        let dx = if x.track_op() { Some(dy.apply_op2_no_bwd(w, &Conv2dOp(self.0))?) } else { None };
        Ok((dx, Some(dw)))
    }
}

/// Output size of a transposed convolution along one side.
pub fn conv_transpose_out(size: usize, kernel: usize, g: ConvGeom, output_padding: usize) -> Option<usize> {
    ((size - 1) * g.stride + g.dilation * (kernel - 1) + output_padding + 1).checked_sub(2 * g.padding)
}

/// `x [n, cin, h, w]`, `weight [cin, cout / groups, k, k]` -> `[n, cout, oh, ow]` (no bias).
pub fn conv_transpose2d(x: &Tensor, weight: &Tensor, g: ConvGeom, output_padding: usize) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (_, cog, kh, kw) = weight.dims4()?;
    let (Some(oh), Some(ow)) =
        (conv_transpose_out(h, kh, g, output_padding), conv_transpose_out(w, kw, g, output_padding))
    else {
        candle_core::bail!("conv_transpose2d: padding {} is too large for a {h}x{w} input", g.padding)
    };
    if output_padding >= g.stride {
        candle_core::bail!("conv_transpose2d: output_padding must be smaller than stride");
    }
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        return super::bf16_via_f32(x, weight, |x, w| conv_transpose2d(x, w, g, output_padding));
    }
    if super::cpu_kernels(x) {
        let out = Shape::from((n, cog * g.groups, oh, ow));
        x.contiguous()?.apply_op2(&weight.contiguous()?, ConvTranspose2dOp(g, out))
    } else {
        if g.groups != 1 {
            candle_core::bail!("grouped conv_transpose2d runs on the CPU only for now");
        }
        super::conv_dev::conv_transpose2d(x, weight, g, (oh, ow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bias;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Device, Var};

    fn geoms() -> Vec<(usize, usize, usize, usize, ConvGeom)> {
        // (n, c, hw, o, k) with stride, padding, dilation and groups in turn.
        vec![
            (2, 3, 7, 4, ConvGeom::default()),
            (2, 2, 8, 3, ConvGeom { stride: 2, padding: 1, ..Default::default() }),
            (1, 2, 9, 2, ConvGeom { dilation: 2, padding: 2, ..Default::default() }),
            (3, 4, 6, 6, ConvGeom { groups: 2, padding: 1, ..Default::default() }),
        ]
    }

    #[test]
    fn matches_candle_forward() {
        for (n, c, hw, o, g) in geoms() {
            for k in [1, 3] {
                let x = rand_tensor(&[n, c, hw, hw], 1, DType::F32);
                let w = rand_tensor(&[o, c / g.groups, k, k], 2, DType::F32);
                let ours = conv2d(&x, &w, g).unwrap();
                let theirs = x.conv2d(&w, g.padding, g.stride, g.dilation, g.groups).unwrap();
                let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{g:?} k={k}: max diff {diff}");
            }
        }
    }

    #[test]
    fn finite_difference_gradients() {
        for (n, c, hw, o, g) in geoms() {
            let x = Var::from_tensor(&rand_tensor(&[n, c, hw, hw], 3, DType::F64)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[o, c / g.groups, 3, 3], 4, DType::F64)).unwrap();
            check_grads(&[&x, &w], |v| conv2d(v[0], v[1], g), &format!("conv2d {g:?}"));
        }
    }

    /// 3x3 stride-1 convs with 16+ channels take the Winograd path: the same outputs as
    /// candle's conv2d (f32) and exact gradients (f64 finite differences), odd sizes included.
    #[test]
    fn winograd_path_matches_candle_and_finite_differences() {
        for (hw, pad) in [(8, 1), (7, 1), (9, 0), (6, 2)] {
            let g = ConvGeom { padding: pad, ..Default::default() };
            let d = Dims::new(&[2, 16, hw, hw], &[17, 16, 3, 3], g).unwrap();
            assert!(d.winograd().is_some(), "{hw}x{hw} pad {pad} should take the Winograd path");
            let x = rand_tensor(&[2, 16, hw, hw], 11, DType::F32);
            let w = rand_tensor(&[17, 16, 3, 3], 12, DType::F32);
            let ours = conv2d(&x, &w, g).unwrap();
            let theirs = x.conv2d(&w, pad, 1, 1, 1).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{hw}x{hw} pad {pad}: max diff {diff}");
            let x = Var::from_tensor(&rand_tensor(&[2, 16, hw, hw], 13, DType::F64)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[17, 16, 3, 3], 14, DType::F64)).unwrap();
            check_grads(&[&x, &w], |v| conv2d(v[0], v[1], g), &format!("winograd conv2d {hw}x{hw} pad {pad}"));
        }
    }

    /// Strided convs whose kernel spans 3 strides (AlexNet's 11x11 stride 4; 5x5 stride 2)
    /// take the Winograd path over the input's blocks: the same outputs as candle's conv2d
    /// (f32) and exact gradients (f64 finite differences), padding wider than a stride and
    /// pixels past the last window included.
    #[test]
    fn strided_winograd_path_matches_candle_and_finite_differences() {
        for (c, hw, k, stride, padding) in [(3, 27, 11, 4, 2), (1, 26, 11, 4, 0), (4, 12, 5, 2, 3)] {
            let g = ConvGeom { stride, padding, ..Default::default() };
            let d = Dims::new(&[2, c, hw, hw], &[16, c, k, k], g).unwrap();
            assert!(d.folded().is_some() && d.winograd().is_none(), "{d:?} should take the strided Winograd path");
            let x = rand_tensor(&[2, c, hw, hw], 21, DType::F32);
            let w = rand_tensor(&[16, c, k, k], 22, DType::F32);
            let ours = conv2d(&x, &w, g).unwrap();
            let theirs = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{d:?}: max diff {diff}");
            let x = Var::from_tensor(&rand_tensor(&[2, c, hw, hw], 23, DType::F64)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[16, c, k, k], 24, DType::F64)).unwrap();
            check_grads(&[&x, &w], |v| conv2d(v[0], v[1], g), &format!("strided winograd conv2d {d:?}"));
        }
    }

    /// An empty input whose padding alone makes the output (a review case): zeros of the
    /// planned shape, where the Winograd paths would have divided by the image's size.
    #[test]
    fn an_empty_image_with_padding_gives_zeros() {
        for (c, k, stride, padding) in [(16, 3, 1, 3), (3, 11, 4, 12)] {
            let g = ConvGeom { stride, padding, ..Default::default() };
            let x = Tensor::zeros(&[1, c, 0, 0], DType::F32, &Device::Cpu).unwrap();
            let w = rand_tensor(&[16, c, k, k], 31, DType::F32);
            let y = conv2d(&x, &w, g).unwrap();
            assert_eq!(y.dims(), [1, 16, 4, 4], "{g:?}");
            assert_eq!(y.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{g:?}");
        }
    }

    /// bf16 on the CPU (`precision = "bf16"`): the convolution of the bf16 values plus the
    /// bias, summed in f32 and rounded once to bf16. The reference sums in f64 from the same
    /// bf16 values: at least 97% of the outputs are the same bf16 number (the rest round to the
    /// neighbour). A bf16 input with an f32 weight is an error, as on a GPU.
    #[test]
    fn bf16_on_the_cpu_rounds_once_after_the_bias() {
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let (x, w, b) = (
            bf(&rand_tensor(&[2, 3, 6, 6], 31, DType::F32)),
            bf(&rand_tensor(&[4, 3, 3, 3], 32, DType::F32)),
            rand_tensor(&[4], 33, DType::F32),
        );
        let g = ConvGeom { padding: 1, ..Default::default() };
        let y = conv2d_bias(&x, &w, Some(&b), g).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let want = bf(&conv2d_bias(&f64_of(&x), &f64_of(&w), Some(&f64_of(&b)), g).unwrap());
        // bf16 -> f32 is exact: the same f32 is the same bf16.
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let (got, want) = (bits(&y), bits(&want));
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count() as f64 / got.len() as f64;
        assert!(same >= 0.97, "{same} of the outputs are the reference's");
        let err = conv2d_bias(&x, &w.to_dtype(DType::F32).unwrap(), None, g).unwrap_err().to_string();
        assert!(err.contains("both operands must be bf16"), "{err}");
    }

    /// conv2d_bias is conv2d then add_channel_bias: outputs and the three gradients (f32,
    /// im2col and Winograd paths), and exact gradients by f64 finite differences.
    #[test]
    fn bias_fused_equals_conv_then_bias() {
        for (c, o) in [(3, 4), (16, 16)] {
            let g = ConvGeom { padding: 1, ..Default::default() };
            let x = Var::from_tensor(&rand_tensor(&[2, c, 6, 6], 21, DType::F32)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[o, c, 3, 3], 22, DType::F32)).unwrap();
            let b = Var::from_tensor(&rand_tensor(&[o], 23, DType::F32)).unwrap();
            let r = rand_tensor(&[2, o, 6, 6], 24, DType::F32);
            let run = |fused: bool| {
                let y = if fused {
                    conv2d_bias(&x, &w, Some(&b), g).unwrap()
                } else {
                    bias::add_channel_bias(&conv2d(&x, &w, g).unwrap(), &b).unwrap()
                };
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [flat(&y), flat(grads.get(&x).unwrap()), flat(grads.get(&w).unwrap()), flat(grads.get(&b).unwrap())]
            };
            for (what, (p, q)) in ["y", "dx", "dw", "db"].iter().zip(run(true).iter().zip(&run(false))) {
                let err = p.iter().zip(q).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{c}->{o} {what}: max difference {err}");
            }
            let x = Var::from_tensor(&rand_tensor(&[2, c, 6, 6], 25, DType::F64)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[o, c, 3, 3], 26, DType::F64)).unwrap();
            let b = Var::from_tensor(&rand_tensor(&[o], 27, DType::F64)).unwrap();
            check_grads(&[&x, &w, &b], |v| conv2d_bias(v[0], v[1], Some(v[2]), g), "conv2d_bias");
        }
    }

    #[test]
    fn conv_transpose_finite_differences_and_shape() {
        // (4 - 1) * 2 - 2 * 1 + (3 - 1) + 1 + 1 = 8: PyTorch's ConvTranspose2d(3, 2, 3, 2, 1, 1) on 4x4.
        let g = ConvGeom { stride: 2, padding: 1, ..Default::default() };
        let x = Var::from_tensor(&rand_tensor(&[2, 3, 4, 4], 7, DType::F64)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[3, 2, 3, 3], 8, DType::F64)).unwrap();
        assert_eq!(conv_transpose2d(&x, &w, g, 1).unwrap().dims(), &[2, 2, 8, 8]);
        check_grads(&[&x, &w], |v| conv_transpose2d(v[0], v[1], g, 1), "conv_transpose2d");
    }

    #[test]
    fn no_input_gradient_for_the_image() {
        let x = rand_tensor(&[2, 1, 5, 5], 5, DType::F32);
        let w = Var::from_tensor(&rand_tensor(&[2, 1, 3, 3], 6, DType::F32)).unwrap();
        let grads = conv2d(&x, &w, ConvGeom::default()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
        let _ = Device::Cpu;
    }
}
