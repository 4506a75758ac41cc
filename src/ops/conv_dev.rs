//! Convolutions off the CPU (the CUDA build). candle's `conv2d` runs the forward, and in a
//! cuDNN build (`--features cudnn`) candle's own backward is replaced: there it runs the
//! input gradient through candle's transposed-convolution kernel (a direct loop) and the
//! weight gradient as a convolution whose kernel is a transposed view, which candle's cuDNN
//! path refuses and hands to another direct loop. Here both gradients are convolutions of
//! contiguous tensors (cuDNN's):
//!
//! - input gradient: the output gradient, spread out with `stride - 1` zeros between its
//!   values, convolved with the kernel flipped in space and with its two channel axes
//!   swapped (stride 1, padding `dilation * (k - 1) - padding`);
//! - weight gradient: candle's formulation (the input and the output gradient with batch
//!   and channels swapped, stride and dilation swapped), made contiguous first.
//!
//! The transposed convolution's forward is the same input-gradient convolution. Without
//! cuDNN, candle's path (im2col and cuBLAS for every convolution) measured faster and is
//! the default ([`conv_path`]); a cuDNN build's default is runner's own cuDNN calls
//! (`super::cudnn`), with this module's formulations where those do not apply. The ops are device-generic, so the CPU tests check both
//! formulations (`Dev`, `Mixed`) against the CPU kernels of `conv.rs`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::conv::ConvGeom;
use super::cudnn::{self, ConvShapes, Direction};

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

/// Which formulation runs: the default is the one measured fastest for the build (below),
/// `RUNNER_CONV_PATH` (`candle`, `mixed`, `dev`, `cudnn`; read once) chooses another, for measuring
/// them on a GPU (gpu/conv-paths.sh); not a user setting.
///
/// Measured on the H200 (2026-12-04, images/s; docs/gpu.md): without cuDNN, candle's path
/// (im2col and cuBLAS) trained fcn_shapes at 1275 and yolo_shapes at 1152; with cuDNN,
/// `dev` gave 625 and 545 (`candle` 376 and 395: its weight gradient's transposed kernel
/// falls to a direct-loop kernel there) but ResNet 7707 against 6740 and AlexNet's forward
/// 10921 against 6076.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPath {
    /// candle's conv2d and conv_transpose2d with candle's backward.
    Candle,
    /// This module's gradients, every convolution with contiguous operands (cuDNN's, in a
    /// cuDNN build).
    Dev,
    /// This module's input gradient; the weight gradient as candle computes it (a kernel
    /// that is a transposed view, which a cuDNN build hands to candle's direct loop).
    Mixed,
    /// cuDNN's forward, backward-data and backward-filter calls with their descriptors,
    /// algorithms and workspace kept (`super::cudnn`); a cuDNN build's default. Elsewhere,
    /// and for what cuDNN does not run here (groups, other dtypes), `Dev`.
    Cudnn,
}

pub fn conv_path() -> ConvPath {
    static PATH: std::sync::OnceLock<ConvPath> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("RUNNER_CONV_PATH").as_deref() {
        Ok("candle") => ConvPath::Candle,
        Ok("mixed") => ConvPath::Mixed,
        Ok("dev") => ConvPath::Dev,
        Ok("cudnn") => ConvPath::Cudnn,
        _ if cfg!(feature = "cudnn") => ConvPath::Cudnn,
        _ => ConvPath::Candle,
    })
}

/// `x [n, c, h, w]`, `weight [o, c / groups, k, k]` -> `[n, o, oh, ow]`, with the gradients
/// above (grouped convolutions keep candle's own backward).
pub fn conv2d(x: &Tensor, weight: &Tensor, g: ConvGeom) -> Result<Tensor> {
    conv2d_via(x, weight, g, conv_path())
}

/// [`conv2d`] by the formulation `path`.
fn conv2d_via(x: &Tensor, weight: &Tensor, g: ConvGeom, path: ConvPath) -> Result<Tensor> {
    if g.groups != 1 || path == ConvPath::Candle {
        return x.conv2d(weight, g.padding, g.stride, g.dilation, g.groups);
    }
    let path = match path {
        ConvPath::Cudnn if cudnn::applies(x, g) => {
            let s = ConvShapes::new(dims4(x)?, dims4(weight)?, g)?;
            return cudnn::run(Direction::Forward, s, x, weight);
        }
        ConvPath::Cudnn => ConvPath::Dev,
        p => p,
    };
    let y = x.detach().conv2d(&weight.detach(), g.padding, g.stride, g.dilation, 1)?;
    if !x.track_op() && !weight.track_op() {
        return Ok(y);
    }
    y.apply_op3(x, weight, WithConvGrads(g, path))
}

/// The transposed convolution: `x [n, cin, h, w]`, `weight [cin, cout, k, k]` -> `[n, cout,
/// oh, ow]` (see `conv::conv_transpose2d`), as the input gradient of the convolution that
/// maps its output back to `x`; its gradients flow through [`conv2d`].
pub fn conv_transpose2d(x: &Tensor, weight: &Tensor, g: ConvGeom, out_hw: (usize, usize)) -> Result<Tensor> {
    conv_transpose2d_via(x, weight, g, out_hw, conv_path())
}

/// [`conv_transpose2d`] by the formulation `path`.
fn conv_transpose2d_via(
    x: &Tensor,
    weight: &Tensor,
    g: ConvGeom,
    out_hw: (usize, usize),
    path: ConvPath,
) -> Result<Tensor> {
    if path == ConvPath::Cudnn && cudnn::applies(x, g) {
        // The convolution this one is the input gradient of: [n, cout, oh, ow] by weight
        // [cin, cout, k, k] to x's [n, cin, h, w]. An output padding of the stride or more
        // (dilation > stride) does not map back: the formulation below.
        let s = ConvShapes::new([x.dim(0)?, weight.dim(1)?, out_hw.0, out_hw.1], dims4(weight)?, g)?;
        if s.y() == dims4(x)? {
            return cudnn::run(Direction::BackwardData, s, x, weight);
        }
    }
    let path = if path == ConvPath::Cudnn { ConvPath::Dev } else { path };
    if path == ConvPath::Candle {
        let span = g.dilation * (weight.dim(2)? - 1);
        let out_padding = out_hw.0 + 2 * g.padding - ((x.dim(2)? - 1) * g.stride + span + 1);
        return x.conv_transpose2d(weight, g.padding, out_padding, g.stride, g.dilation);
    }
    input_grad(x, weight, out_hw, g, Some(path))
}

/// Passes `y` (the convolution's output, computed already) through and gives `x` and `w`
/// their gradients in the backward pass. The forward is one copy of `y`.
struct WithConvGrads(ConvGeom, ConvPath);

impl WithConvGrads {
    fn copy<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("runner conv2d: the convolution's output is not a fresh contiguous tensor");
        }
        Ok((s.try_clone(l)?, l.shape().clone()))
    }
}

impl CustomOp3 for WithConvGrads {
    fn name(&self) -> &'static str {
        "runner-conv2d-grads"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::copy(s1, l1)
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Self::copy(s1, l1)
    }
    fn bwd(
        &self,
        _y: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let dx = if x.track_op() { Some(input_grad(dy, &w.detach(), (h, wd), self.0, None)?) } else { None };
        let dw = if w.track_op() { Some(weight_grad(&x.detach(), dy, w.dims(), self.0, self.1)?) } else { None };
        Ok((None, dx, dw))
    }
}

/// The gradient of a convolution's input `[n, c, h, w]` (`hw`) from its output's `dy [n, o,
/// oh, ow]` and `w [o, c, k, k]`. `keep_graph`: build it from differentiable ops, its
/// convolution by that formulation (the transposed convolution's forward); `None`: nothing
/// is tracked.
fn input_grad(
    dy: &Tensor,
    w: &Tensor,
    hw: (usize, usize),
    g: ConvGeom,
    keep_graph: Option<ConvPath>,
) -> Result<Tensor> {
    let (n, o, oh, ow) = dy.dims4()?;
    let (_, _, k, kw) = w.dims4()?;
    let back = (g.dilation * (k - 1)) as isize - g.padding as isize;
    // The spread-out gradient's size: what the stride-1 convolution needs to give `hw`.
    let (lh, lw) = (hw.0 + 2 * g.padding, hw.1 + 2 * g.padding);
    let span = g.dilation * (k - 1);
    let s = g.stride;
    // The spread gradient holds `o * s` values; a transposed convolution's output padding of
    // `stride` or more (allowed when dilation > stride) asks for more.
    let fits = |l: usize, o: usize| l >= span && l - span <= o * s;
    if k != kw || back < 0 || g.groups != 1 || !fits(lh, oh) || !fits(lw, ow) {
        // Not this formulation's case (padding beyond the kernel's reach, or the output
        // padding above): candle's kernel.
        let out_padding = |size: usize, o: usize| size + 2 * g.padding - ((o - 1) * g.stride + span + 1);
        return dy.conv_transpose2d(w, g.padding, out_padding(hw.0, oh), g.stride, g.dilation);
    }
    let (lh, lw) = (lh - span, lw - span);
    let spread = if s > 1 {
        dy.reshape((n, o, oh, 1, ow, 1))?
            .pad_with_zeros(3, 0, s - 1)?
            .pad_with_zeros(5, 0, s - 1)?
            .reshape((n, o, oh * s, ow * s))?
            .narrow(2, 0, lh)?
            .narrow(3, 0, lw)?
    } else {
        dy.clone()
    };
    let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<u32>>(), k, w.device())?;
    let flipped = w.index_select(&rev, 2)?.index_select(&rev, 3)?.transpose(0, 1)?.contiguous()?;
    let geom = ConvGeom { stride: 1, padding: back as usize, dilation: g.dilation, groups: 1 };
    if let Some(path) = keep_graph {
        conv2d_via(&spread.contiguous()?, &flipped, geom, path)
    } else {
        spread.detach().contiguous()?.conv2d(&flipped.detach(), geom.padding, 1, geom.dilation, 1)
    }
}

/// The gradient of a convolution's weight (`dims` `[o, c, k, k]`) from its input `x` and
/// its output's gradient `dy`, as candle's backward computes it, with contiguous operands.
fn weight_grad(x: &Tensor, dy: &Tensor, dims: &[usize], g: ConvGeom, path: ConvPath) -> Result<Tensor> {
    let xt = x.transpose(0, 1)?.contiguous()?; // [c, n, h, w]
    let dyt = dy.detach().transpose(0, 1)?; // [o, n, oh, ow]
    let dyt = if path == ConvPath::Mixed { dyt } else { dyt.contiguous()? };
    let gw = xt.conv2d(&dyt, g.padding, g.dilation, g.stride, 1)?.transpose(0, 1)?; // [o, c, k', k']
    gw.narrow(2, 0, dims[2])?.narrow(3, 0, dims[3])?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv;
    use crate::ops::testing::rand_tensor;
    use candle_core::{DType, Var};

    /// The largest difference over the largest value.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale
    }

    /// Output and both gradients of `mean(f(x, w) * r)` for the two implementations.
    fn compare(x: &[usize], w: &[usize], f: impl Fn(&Tensor, &Tensor, bool) -> Tensor, what: &str) {
        assert_ne!(what, "", "name the case");
        let x = Var::from_tensor(&rand_tensor(x, 1, DType::F64)).unwrap();
        let w = Var::from_tensor(&rand_tensor(w, 2, DType::F64)).unwrap();
        let run = |dev: bool| {
            let y = f(x.as_tensor(), w.as_tensor(), dev);
            let r = rand_tensor(y.dims(), 3, DType::F64);
            let g = (&y * &r).unwrap().mean_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
        };
        let (y0, dx0, dw0) = run(false);
        let (y1, dx1, dw1) = run(true);
        assert_eq!(y0.dims(), y1.dims(), "{what}: output shape");
        // f64 on both sides: the two formulations agree to rounding.
        for (name, a, b) in [("output", &y0, &y1), ("input grad", &dx0, &dx1), ("weight grad", &dw0, &dw1)] {
            let d = rel(a, b);
            assert!(d < 1e-12, "{what}: {name} differs by {d:e}");
        }
    }

    /// The device formulation against the CPU kernels, for strides whose output leaves input
    /// rows unused (9 wide, 3x3 stride 2: the spread gradient needs an extra zero row), dilation,
    /// padding 0, the AlexNet stem's 11x11 stride 4 and the fallback.
    #[test]
    fn conv2d_matches_cpu_kernels() {
        for (x, w, g) in [
            ([2, 3, 7, 7], [4, 3, 3, 3], ConvGeom::default()),
            ([2, 3, 9, 9], [4, 3, 3, 3], ConvGeom { stride: 2, padding: 1, ..Default::default() }),
            ([2, 3, 10, 10], [4, 3, 3, 3], ConvGeom { stride: 2, padding: 1, ..Default::default() }),
            ([1, 2, 9, 9], [3, 2, 3, 3], ConvGeom { dilation: 2, padding: 2, ..Default::default() }),
            ([2, 3, 35, 35], [5, 3, 11, 11], ConvGeom { stride: 4, padding: 2, ..Default::default() }),
            ([2, 4, 8, 8], [2, 4, 1, 1], ConvGeom::default()),
            ([2, 2, 8, 8], [3, 2, 3, 3], ConvGeom { stride: 3, ..Default::default() }),
            // Padding beyond the kernel's reach: candle's transposed kernel instead.
            ([2, 4, 6, 6], [3, 4, 1, 1], ConvGeom { padding: 1, ..Default::default() }),
        ] {
            // This module's formulations (the default on the CPU build is candle's own).
            for path in [ConvPath::Dev, ConvPath::Mixed] {
                compare(
                    &x,
                    &w,
                    |x, w, dev| {
                        if dev {
                            conv2d_via(x, w, g, path).unwrap()
                        } else {
                            conv::conv2d(x, w, g).unwrap()
                        }
                    },
                    &format!("conv2d {x:?} {w:?} {g:?} {path:?}"),
                );
            }
        }
    }

    /// FCN's x2 (4x4 stride 2) and x8 (16x16 stride 8) upsamplings, and one with padding
    /// and an output padding.
    #[test]
    fn conv_transpose2d_matches_cpu_kernels() {
        for (x, w, g, op) in [
            ([2, 3, 5, 5], [3, 3, 4, 4], ConvGeom { stride: 2, ..Default::default() }, 0),
            ([1, 2, 4, 4], [2, 2, 16, 16], ConvGeom { stride: 8, ..Default::default() }, 0),
            ([2, 3, 5, 5], [3, 2, 3, 3], ConvGeom { stride: 2, padding: 1, ..Default::default() }, 1),
            ([2, 3, 6, 6], [3, 4, 3, 3], ConvGeom { padding: 1, ..Default::default() }, 0),
        ] {
            let out = conv::conv_transpose_out(x[2], w[2], g, op).unwrap();
            for path in [ConvPath::Dev, ConvPath::Mixed] {
                compare(
                    &x,
                    &w,
                    |x, w, dev| {
                        if dev {
                            conv_transpose2d_via(x, w, g, (out, out), path).unwrap()
                        } else {
                            conv::conv_transpose2d(x, w, g, op).unwrap()
                        }
                    },
                    &format!("conv_transpose2d {x:?} {w:?} {g:?} output_padding {op} {path:?}"),
                );
            }
        }
    }
}
