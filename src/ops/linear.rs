//! A fully connected layer, `y = x w^T + b`, as one op on the CPU.
//!
//! Training batches go through gemm with the bias already in the output (one pass over `y`
//! fewer than a product followed by a broadcast add, and the same numbers: gemm adds its
//! sum to the bias with one rounding, as the add did). Small inference batches (AlexNet's
//! top-k demo at batch 1 to 8) take a different path: gemm packs the whole weight matrix
//! into its panel layout on every call (151 MB for AlexNet's first classifier layer) and
//! fills a 16-row AVX-512 kernel with 8 rows, so reading each weight row once and taking
//! its dot products with the few input rows is several times faster there.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::Elem;

/// Batches up to this size take the dot-product path in the forward pass.
const SMALL_BATCH: usize = 8;

struct Linear;

fn dims(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    match (x.dims(), w.dims(), b.dims()) {
        (&[m, k], &[n, k2], &[n2]) if k == k2 && n == n2 => Ok((m, n, k)),
        (x, w, b) => candle_core::bail!("linear: input {x:?}, weight {w:?} and bias {b:?} do not fit"),
    }
}

/// `dot(x, w)` in 16 independent lanes, then summed: the compiler keeps the lanes in
/// vector registers (a single running sum would serialise every addition).
#[inline(always)]
fn dot<T: Elem>(x: &[T], w: &[T]) -> T {
    let mut lanes = [T::default(); 16];
    let body = w.len() - w.len() % 16;
    for (xc, wc) in x[..body].chunks_exact(16).zip(w[..body].chunks_exact(16)) {
        for i in 0..16 {
            lanes[i] += xc[i] * wc[i];
        }
    }
    let mut out = T::default();
    for v in lanes {
        out += v;
    }
    for (a, b) in x[body..].iter().zip(&w[body..]) {
        out += *a * *b;
    }
    out
}

/// `out[j * m + i] = b[j] + dot(x[i], w[j])` for the weight rows `w` (`rows x k`): each row
/// is read from memory once for all `m` inputs, and each 16 of its weights are loaded once
/// for all `m` inputs (`M` const, so the `M x 16` running sums stay in registers). The sums
/// are [`dot`]'s, lane by lane and in the same order: the same bits.
#[inline(always)]
fn rows_body<T: Elem>(x: &[T], w: &[T], b: &[T], k: usize, m: usize, out: &mut [T]) {
    match m {
        1 => rows_m::<T, 1>(x, w, b, k, out),
        2 => rows_m::<T, 2>(x, w, b, k, out),
        3 => rows_m::<T, 3>(x, w, b, k, out),
        4 => rows_m::<T, 4>(x, w, b, k, out),
        5 => rows_m::<T, 5>(x, w, b, k, out),
        6 => rows_m::<T, 6>(x, w, b, k, out),
        7 => rows_m::<T, 7>(x, w, b, k, out),
        8 => rows_m::<T, 8>(x, w, b, k, out),
        _ => {
            for ((wj, bj), oj) in w.chunks_exact(k).zip(b).zip(out.chunks_exact_mut(m)) {
                for (xi, o) in x.chunks_exact(k).zip(oj.iter_mut()) {
                    *o = *bj + dot(xi, wj);
                }
            }
        }
    }
}

/// Asks the CPU to bring the cache line at `p` closer (a hint: never faults, any address).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
}

/// The inputs' columns `rows_m` takes at a time: `M x K_TILE` inputs (8 KiB for 8 f32
/// rows) stay in the first-level cache while the block's weight rows pass by.
const K_TILE: usize = 256;

#[inline(always)]
fn rows_m<T: Elem, const M: usize>(x: &[T], w: &[T], b: &[T], k: usize, out: &mut [T]) {
    let body = k - k % 16;
    let xs: [&[T]; M] = std::array::from_fn(|i| &x[i * k..(i + 1) * k]);
    let mut sums = vec![[[T::default(); 16]; M]; w.len() / k.max(1)];
    for t in (0..body).step_by(K_TILE) {
        let end = (t + K_TILE).min(body);
        for (wj, lanes_j) in w.chunks_exact(k).zip(sums.iter_mut()) {
            let mut lanes = *lanes_j;
            for (c, wc) in (t..end).step_by(16).zip(wj[t..end].chunks_exact(16)) {
                let wc: &[T; 16] = wc.try_into().unwrap(); // ok: chunks_exact(16) yields 16
                prefetch(wc.as_ptr().wrapping_add(k));
                for (acc, xi) in lanes.iter_mut().zip(&xs) {
                    let xc: &[T; 16] = xi[c..c + 16].try_into().unwrap(); // ok: a range of 16
                    for l in 0..16 {
                        acc[l] += xc[l] * wc[l];
                    }
                }
            }
            *lanes_j = lanes;
        }
    }
    for (((wj, bj), oj), lanes) in w.chunks_exact(k).zip(b).zip(out.chunks_exact_mut(M)).zip(&sums) {
        for ((acc, xi), o) in lanes.iter().zip(&xs).zip(oj.iter_mut()) {
            let mut sum = T::default();
            for v in acc {
                sum += *v;
            }
            for (a, b) in xi[body..].iter().zip(&wj[body..]) {
                sum += *a * *b;
            }
            *o = *bj + sum;
        }
    }
}
with_avx512!(rows = rows_body(x: &[T], w: &[T], b: &[T], k: usize, m: usize, out: &mut [T]));

fn forward<T: Elem>(x: &[T], w: &[T], b: &[T], (m, n, k): (usize, usize, usize)) -> Vec<T> {
    if m > SMALL_BATCH {
        // Sized once: collected from flat_map, the vector grew by reallocation.
        let mut y: Vec<T> = Vec::with_capacity(m * n);
        for _ in 0..m {
            y.extend_from_slice(b);
        }
        matmul((m, n, k), &mut y, Mat::N(x), Mat::T(w), true, super::threads());
        return y;
    }
    // Rows of w in blocks (about 256 KiB of weights each) across threads; the outputs come
    // out transposed, [n, m], and are turned at the end (m is small).
    let block = ((1 << 16) / k.max(1)).clamp(1, n.max(1));
    let mut yt = vec![T::default(); n * m];
    let one = |(p, out): (usize, &mut [T])| {
        let j = p * block;
        let rows_here = out.len() / m.max(1);
        rows(x, &w[j * k..(j + rows_here) * k], &b[j..j + rows_here], k, m, out);
    };
    if super::threads() > 1 && n * k >= 1 << 16 {
        yt.par_chunks_mut(block * m).enumerate().for_each(one);
    } else {
        yt.chunks_mut(block * m).enumerate().for_each(one);
    }
    let mut y = vec![T::default(); m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "runner-linear"
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
        let d = dims(l1, l2, l3)?;
        let storage = dispatch3!("linear", s1, l1, s2, l2, s3, l3, |x, w, b| forward(x, w, b, d));
        Ok((storage, Shape::from((d.0, d.1))))
    }
    /// The gradients as candle's own matmul and broadcast add give them: `dx = dy w`,
    /// `dw = (x^T dy)^T`, `db = sum over the batch of dy`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(dy.matmul(w)?) } else { None };
        let dw = if w.track_op() { Some(x.t()?.matmul(dy)?.t()?) } else { None };
        let db = if b.track_op() { Some(dy.sum(0)?) } else { None };
        Ok((dx, dw, db))
    }
}

/// `x [m, k] w[n, k]^T + b[n]` (no bias: `x w^T`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if x.dtype() == candle_core::DType::BF16 && x.device().is_cpu() {
        let b = b.map(|b| b.to_dtype(candle_core::DType::F32)).transpose()?;
        return super::bf16_via_f32(x, w, |x, w| linear(x, w, b.as_ref()));
    }
    match b {
        Some(b) if super::cpu_kernels(x) => x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Linear),
        Some(b) => x.matmul(&w.t()?)?.broadcast_add(b),
        None => x.matmul(&w.t()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Var};

    /// Both forward paths (the dot products at batch <= 8, gemm above) against candle's
    /// matmul and broadcast add, in f32 and f64; exact gradients by finite differences.
    #[test]
    fn matches_candle_and_finite_differences() {
        // k = 37: two blocks of 16 lanes and a tail of 5.
        for (m, dtype, tol) in
            [(1, DType::F64, 1e-12), (8, DType::F32, 1e-5), (9, DType::F64, 1e-12), (64, DType::F32, 1e-5)]
        {
            let x = rand_tensor(&[m, 37], 1, dtype);
            let w = rand_tensor(&[11, 37], 2, dtype);
            let b = rand_tensor(&[11], 3, dtype);
            let ours = linear(&x, &w, Some(&b)).unwrap();
            let theirs = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            assert_eq!(ours.dims(), [m, 11]);
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!(diff < tol, "batch {m}: {diff}");
        }
        for m in [2, 12] {
            let x = Var::from_tensor(&rand_tensor(&[m, 37], 4, DType::F64)).unwrap();
            let w = Var::from_tensor(&rand_tensor(&[5, 37], 5, DType::F64)).unwrap();
            let b = Var::from_tensor(&rand_tensor(&[5], 6, DType::F64)).unwrap();
            check_grads(&[&x, &w, &b], |v| linear(v[0], v[1], Some(v[2])), "linear");
        }
    }

    /// The gemm path adds the product to the bias with one rounding, as candle's product
    /// followed by its broadcast add: the same f32 values bit for bit.
    #[test]
    fn training_batches_equal_matmul_then_add_bit_for_bit() {
        let x = rand_tensor(&[64, 400], 7, DType::F32);
        let w = rand_tensor(&[120, 400], 8, DType::F32);
        let b = rand_tensor(&[120], 9, DType::F32);
        let ours: Vec<Vec<f32>> = linear(&x, &w, Some(&b)).unwrap().to_vec2().unwrap();
        let theirs: Vec<Vec<f32>> = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap().to_vec2().unwrap();
        assert_eq!(ours, theirs);
    }

    /// The small-batch path, tiled over the inputs' columns with all inputs per weight load,
    /// gives [`dot`]'s sums bit for bit (as the path computed them before the tiling), at
    /// every batch size it takes, with a tail after the 16-lane blocks and
    /// more columns than one tile.
    #[test]
    fn small_batches_give_the_dot_products_bit_for_bit() {
        fn check<T: Elem + std::fmt::Debug>(dtype: DType, k: usize) {
            let n = 13;
            for m in 1..=SMALL_BATCH {
                let x: Vec<T> = rand_tensor(&[m, k], 10 + m as u64, dtype).flatten_all().unwrap().to_vec1().unwrap();
                let w: Vec<T> = rand_tensor(&[n, k], 11, dtype).flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<T> = rand_tensor(&[n], 12, dtype).to_vec1().unwrap();
                let ours = forward(&x, &w, &b, (m, n, k));
                for i in 0..m {
                    for j in 0..n {
                        let mut want = b[j];
                        want += dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                        let same = ours[i * n + j].to_f64().to_bits() == want.to_f64().to_bits();
                        assert!(same, "{dtype:?} k {k}, batch {m}, input {i}, output {j}");
                    }
                }
            }
        }
        // Columns: a tail after two tiles, fewer than one 16-lane block, an exact multiple.
        for k in [2 * K_TILE + 40, 7, 64] {
            check::<f32>(DType::F32, k);
            check::<f64>(DType::F64, k);
        }
    }
}
