//! Upsampling `[n, c, h, w]` to `[n, c, oh, ow]`, nearest and bilinear (`align_corners =
//! false`, PyTorch's default), as one custom op with a backward: candle 0.11's
//! `upsample_bilinear2d` has none, and its nearest backward only takes integer factors.
//! Other devices run the same taps as two matrix products ([`upsample2d_composed`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, cpu_slices, Elem};

/// How an upsample layer or a resize fills the new pixels (`"nearest"`, `"bilinear"` in a
/// config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsampleMode {
    Nearest,
    Bilinear,
}

/// Source taps along one axis: for each output index, `(i0, i1, weight of i1)`.
/// Nearest (PyTorch): `src = floor(dst * in / out)`, computed in f32 as PyTorch does.
/// Bilinear (PyTorch): `src = (dst + 0.5) * in / out - 0.5`, clamped at 0.
fn taps(mode: UpsampleMode, input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    if mode == UpsampleMode::Nearest {
        let scale = input as f32 / output as f32;
        return (0..output)
            .map(|o| ((o as f32 * scale).floor() as usize).min(input - 1))
            .map(|i| (i, i, 0.0))
            .collect();
    }
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// Nearest upsampling's source index along one axis for each output index (PyTorch's rule,
/// as [`upsample2d`] computes it).
pub fn nearest_sources(input: usize, output: usize) -> Vec<usize> {
    taps(UpsampleMode::Nearest, input, output).into_iter().map(|(i, _, _)| i).collect()
}

pub(crate) fn resample<T: Elem>(
    mode: UpsampleMode,
    x: &[T],
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<T> {
    let (ty, tx) = (taps(mode, h, oh), taps(mode, w, ow));
    let mut out = vec![T::default(); planes * oh * ow];
    let one = |(p, o): (usize, &mut [T])| {
        let src = &x[p * h * w..(p + 1) * h * w];
        for (y, &(y0, y1, ly)) in ty.iter().enumerate() {
            for (xo, &(x0, x1, lx)) in tx.iter().enumerate() {
                let v = |r: usize, c: usize| src[r * w + c].to_f64();
                let top = v(y0, x0) * (1.0 - lx) + v(y0, x1) * lx;
                let bottom = v(y1, x0) * (1.0 - lx) + v(y1, x1) * lx;
                o[y * ow + xo] = T::from_f64(top * (1.0 - ly) + bottom * ly);
            }
        }
    };
    if super::parallel(out.len()) {
        out.par_chunks_mut(oh * ow).enumerate().for_each(one);
    } else {
        out.chunks_mut(oh * ow).enumerate().for_each(one);
    }
    out
}

fn resample_grad<T: Elem>(
    mode: UpsampleMode,
    dy: &[T],
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<T> {
    let (ty, tx) = (taps(mode, h, oh), taps(mode, w, ow));
    let mut dx = vec![T::default(); planes * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, g)| {
        let d = &dy[p * oh * ow..(p + 1) * oh * ow];
        for (y, &(y0, y1, ly)) in ty.iter().enumerate() {
            for (xo, &(x0, x1, lx)) in tx.iter().enumerate() {
                let v = d[y * ow + xo].to_f64();
                let mut add = |r: usize, c: usize, wgt: f64| g[r * w + c] += T::from_f64(v * wgt);
                add(y0, x0, (1.0 - ly) * (1.0 - lx));
                add(y0, x1, (1.0 - ly) * lx);
                add(y1, x0, ly * (1.0 - lx));
                add(y1, x1, ly * lx);
            }
        }
    });
    dx
}

struct Upsample(UpsampleMode, usize, usize);
struct UpsampleGrad(UpsampleMode, usize, usize);

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "runner-upsample-bilinear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else { candle_core::bail!("upsample expects [n, c, h, w], got {:?}", l.dims()) };
        let (oh, ow) = (self.1, self.2);
        let shape = Shape::from((n, c, oh, ow));
        Ok(match s {
            CpuStorage::F32(_) => {
                (CpuStorage::F32(resample(self.0, contiguous::<f32>(s, l)?, n * c, (h, w), (oh, ow))), shape)
            }
            CpuStorage::F64(_) => {
                (CpuStorage::F64(resample(self.0, contiguous::<f64>(s, l)?, n * c, (h, w), (oh, ow))), shape)
            }
            _ => candle_core::bail!("runner upsampling supports f32 and f64"),
        })
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // (x, dy) -> dx; x only supplies the input size.
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &UpsampleGrad(self.0, self.1, self.2))?))
    }
}

impl CustomOp2 for UpsampleGrad {
    fn name(&self) -> &'static str {
        "runner-upsample-bilinear-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l1.dims() else { candle_core::bail!("upsample expects [n, c, h, w]") };
        let hw = (h, w);
        let o = (self.1, self.2);
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (_, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(resample_grad(self.0, dy, n * c, hw, o)), l1.shape().clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (_, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(resample_grad(self.0, dy, n * c, hw, o)), l1.shape().clone())
            }
            _ => candle_core::bail!("runner upsampling supports f32 and f64 of one dtype"),
        })
    }
}

/// `[n, c, h, w]` -> `[n, c, oh, ow]`.
pub fn upsample2d(x: &Tensor, mode: UpsampleMode, (oh, ow): (usize, usize)) -> Result<Tensor> {
    if super::cpu_kernels(x) {
        return x.contiguous()?.apply_op1(Upsample(mode, oh, ow));
    }
    upsample2d_composed(x, mode, (oh, ow))
}

/// One axis's taps as a matrix `[output, input]`: row o holds its weights.
fn tap_matrix(mode: UpsampleMode, input: usize, output: usize) -> Vec<f64> {
    let mut m = vec![0f64; output * input];
    for (o, (i0, i1, l)) in taps(mode, input, output).into_iter().enumerate() {
        m[o * input + i0] += 1.0 - l;
        m[o * input + i1] += l;
    }
    m
}

/// The tap matrix of one axis on `dev` in `dt` (`[output, input]`, or its transpose), made
/// and uploaded once per shape: a GPU step would otherwise upload two per upsampling.
fn tap_tensor(
    mode: UpsampleMode,
    (input, output): (usize, usize),
    dev: &candle_core::Device,
    dt: candle_core::DType,
    transposed: bool,
) -> Result<Tensor> {
    type Key = (UpsampleMode, usize, usize, candle_core::DType, bool);
    static MADE: std::sync::Mutex<Vec<(Key, Tensor)>> = std::sync::Mutex::new(Vec::new());
    let key = (mode, input, output, dt, transposed);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    // The device itself, not its ordinal: two CUDA devices opened on one GPU are two.
    if let Some((_, t)) = made.iter().find(|(k, t)| *k == key && t.device().same_device(dev)) {
        return Ok(t.clone());
    }
    let t = Tensor::from_vec(tap_matrix(mode, input, output), (output, input), dev)?.to_dtype(dt)?;
    let t = if transposed { t.t()?.contiguous()? } else { t };
    made.push((key, t.clone()));
    Ok(t)
}

/// Upsampling from candle's own ops, for devices without the custom op: the CPU kernel's
/// taps as matrices, `A_h x A_w^T` (two matrix products, whose gradients are exact). The
/// values equal the CPU kernel's up to float rounding (the tests compare them).
pub fn upsample2d_composed(x: &Tensor, mode: UpsampleMode, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (dev, dt) = (x.device(), x.dtype());
    let aw = tap_tensor(mode, (w, ow), dev, dt, true)?;
    let ah = tap_tensor(mode, (h, oh), dev, dt, false)?;
    let y = x.contiguous()?.reshape((n * c * h, w))?.matmul(&aw)?.reshape((n * c, h, ow))?;
    ah.broadcast_left(n * c)?.contiguous()?.matmul(&y)?.reshape((n, c, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Device, Var};

    #[test]
    fn bilinear_2x_by_hand() {
        // PyTorch: F.interpolate([[1, 2]], size=(1, 4), mode="bilinear") = [1, 1.25, 1.75, 2]
        // (src = (o + 0.5) / 2 - 0.5: -0.25 -> 0, 0.25, 0.75, 1.25 -> clamped tap).
        let x = Tensor::new(&[[[[1f32, 2.]]]], &Device::Cpu).unwrap();
        let y = upsample2d(&x, UpsampleMode::Bilinear, (1, 4)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.25, 1.75, 2.0]);
    }

    #[test]
    fn gradients_by_finite_differences() {
        for (oh, ow) in [(8, 10), (5, 3), (4, 4)] {
            let x = Var::from_tensor(&rand_tensor(&[2, 2, 4, 5], 11, DType::F64)).unwrap();
            check_grads(&[&x], |v| upsample2d(v[0], UpsampleMode::Bilinear, (oh, ow)), "bilinear");
            check_grads(&[&x], |v| upsample2d(v[0], UpsampleMode::Nearest, (oh, ow)), "nearest");
        }
    }

    #[test]
    fn composed_upsampling_equals_the_cpu_kernel() {
        // What other devices run, checked here against the CPU kernel: values and the
        // gradient of sum(y * r), for FCN's x2 / x4 and sizes that are not multiples.
        for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
            for (hw, out) in [((5, 4), (10, 8)), ((5, 4), (20, 16)), ((5, 4), (7, 9)), ((3, 3), (2, 2))] {
                let x = rand_tensor(&[2, 3, hw.0, hw.1], 7, DType::F64);
                let (cpu, other) =
                    (|x: &Tensor| upsample2d(x, mode, out), |x: &Tensor| upsample2d_composed(x, mode, out));
                testing::same_values_and_grads(&x, cpu, other, 1e-12, &format!("{mode:?} {hw:?} -> {out:?}"));
            }
        }
    }
}
