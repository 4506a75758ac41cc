//! 3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), forward and backward.
//!
//! Each 2x2 output tile is `Y = A^T [ sum_c (G g G^T) ⊙ (B^T d B) ] A` for the 4x4 input
//! tile `d`: 16 multiplications per tile and channel pair where im2col + gemm spends 36. The
//! 16 element-wise products over channels are 16 matrix products (`M[ξ] = U[ξ] V[ξ]`,
//! `U[ξ]`: out x in, `V[ξ]`: in x tiles), run by `gemm`.
//!
//! The backward pass is the exact adjoint of that forward (transposed transforms and
//! products), so gradients are those of the function the forward computes:
//! `dM = A dY A^T`, `dV[ξ] = U[ξ]^T dM[ξ]`, `dx += B dV B^T` (tiles overlap by two pixels),
//! `dU[ξ] = sum dM[ξ] V[ξ]^T`, `dg = G^T dU G`.
//!
//! Per sample, tiles are taken a band of tile rows at a time, so the transformed operands of
//! a band stay in the core's cache; images too small for a band of 16 tiles are taken whole,
//! several samples to a product (see [`Walk`]).

use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::{plan_threads, sum_over_batch, threads, Elem};

/// Sizes of one 3x3, stride-1, dilation-1, ungrouped convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geo {
    /// Tile rows and columns.
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }
    /// Tile rows per band: the band's transformed input and products (16 x channels x
    /// tiles each) kept near `elems` values. Measured at 64 channels, 32x32, batch 64:
    /// the forward is fastest near 64 Ki values (256 KiB of f32, in L2 beside the
    /// weights), the backward's wider products near 128 Ki (forward 1.55 vs 1.60 k img/s,
    /// backward 0.64 vs 0.59 k img/s for 128 Ki against 64 Ki).
    fn band(&self, elems: usize) -> usize {
        let (th, tw) = self.tiles();
        let per_row = 16 * self.c.max(self.o) * tw;
        (elems / per_row.max(1)).clamp(1, th)
    }
}

/// Whether Winograd beats im2col + gemm for this convolution: the products must be large
/// enough to amortise the transforms (measured: `make bench` conv2d cases). Small images
/// are walked several samples at a time ([`Walk`]), so that a band's products stay wide.
pub(crate) fn worth_it(c: usize, o: usize, oh: usize, ow: usize) -> bool {
    c >= 16 && o >= 16 && oh >= 4 && ow >= 4
}

/// Per-thread scratch: transformed input / gradient band and row buffers.
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
    rows: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new() -> Self {
        Scratch { v: Vec::new(), m: Vec::new(), rows: Vec::new() }
    }
    fn size(&mut self, g: &Geo, tiles: usize) {
        self.v.resize(16 * g.c * tiles, T::zero());
        self.m.resize(16 * g.o * tiles, T::zero());
        // Row buffers of the transforms: at most 16 rows of tw + 1 (the input transform), or
        // 16 rows of tw and one padded row of 2 tw + 2 (its adjoint).
        let (_, tw) = g.tiles();
        self.rows.resize(18 * (tw + 1), T::zero());
    }
}

fn half<T: Elem>() -> T {
    T::from_f64(0.5)
}

/// `U = G g G^T` for every (out, in) pair: `[16][o][c]`.
fn weight_transform<T: Elem>(wt: &[T], g: &Geo) -> Vec<T> {
    let (o, c) = (g.o, g.c);
    let mut u = vec![T::zero(); 16 * o * c];
    let h = half::<T>();
    for k in 0..o {
        for ci in 0..c {
            let f = &wt[(k * c + ci) * 9..][..9];
            // G g: rows [g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2], each of 3.
            let mut t = [[T::zero(); 3]; 4];
            for j in 0..3 {
                let (a, b, cc) = (f[j], f[3 + j], f[6 + j]);
                t[0][j] = a;
                t[1][j] = (a + b + cc) * h;
                t[2][j] = (a - b + cc) * h;
                t[3][j] = cc;
            }
            for (i, r) in t.iter().enumerate() {
                let vals = [r[0], (r[0] + r[1] + r[2]) * h, (r[0] - r[1] + r[2]) * h, r[2]];
                for (j, v) in vals.into_iter().enumerate() {
                    u[((i * 4 + j) * o + k) * c + ci] = v;
                }
            }
        }
    }
    u
}

/// `dg = G^T dU G` for `dU` laid out `[16][o][c]`: the weight gradient `[o][c][3][3]`.
fn weight_transform_adjoint<T: Elem>(du: &[T], g: &Geo) -> Vec<T> {
    let (o, c) = (g.o, g.c);
    let h = half::<T>();
    let mut dw = vec![T::zero(); o * c * 9];
    for k in 0..o {
        for ci in 0..c {
            let at = |xi: usize| du[(xi * o + k) * c + ci];
            // G^T dU, column j of 4: [a + (b + c) / 2, (b - c) / 2, (b + c) / 2 + d].
            let cols: [[T; 3]; 4] = std::array::from_fn(|j| {
                let (a, b, cc, d) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                [a + (b + cc) * h, (b - cc) * h, (b + cc) * h + d]
            });
            let f = &mut dw[(k * c + ci) * 9..][..9];
            for i in 0..3 {
                let r = [cols[0][i], cols[1][i], cols[2][i], cols[3][i]];
                f[i * 3] = r[0] + (r[1] + r[2]) * h;
                f[i * 3 + 1] = (r[1] - r[2]) * h;
                f[i * 3 + 2] = (r[1] + r[2]) * h + r[3];
            }
        }
    }
    dw
}

with_avx2!(input_transform = input_transform_body(xs: &[T], g: &Geo, band: (usize, usize), v: &mut [T], rows: &mut [T]));
with_avx2!(input_transform_adjoint = input_transform_adjoint_body(v: &[T], g: &Geo, band: (usize, usize), dxs: &mut [T], rows: &mut [T]));
with_avx2!(output_transform = output_transform_body(m: &[T], g: &Geo, band: (usize, usize), ys: &mut [T], rows: &mut [T]));
with_avx2!(output_transform_adjoint = output_transform_adjoint_body(dys: &[T], g: &Geo, band: (usize, usize), m: &mut [T], rows: &mut [T]));

/// `out[x] = f(a[x], b[x])`: zipped slices, the form the compiler vectorises.
#[inline(always)]
fn map2<T: Elem>(out: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `out[x] = f(a[x], b[x], c[x])`.
#[inline(always)]
fn map3<T: Elem>(out: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(a, b, c);
    }
}

/// Splits `buf` into `N` consecutive slices of `len`.
#[inline(always)]
fn split<const N: usize, T>(buf: &mut [T], len: usize) -> [&mut [T]; N] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        head
    })
}

/// Even and odd entries of `src` into `e` and `o` (a missing last odd entry is left as is).
#[inline(always)]
fn deinterleave<T: Elem>(src: &[T], e: &mut [T], o: &mut [T]) {
    let pairs = src.chunks_exact(2);
    let tail = pairs.remainder().first().copied();
    let n = pairs.len();
    for ((p, e), o) in pairs.zip(e.iter_mut()).zip(o.iter_mut()) {
        *e = p[0];
        *o = p[1];
    }
    if let Some(t) = tail {
        e[n] = t;
    }
}

/// Even and odd columns of `src` placed `pad` columns in on a zero background:
/// `e[m] = row[2m - pad]`, `o[m] = row[2m + 1 - pad]`, 0 outside the row. Element loops,
/// no library calls: this runs once per input row and tile row, thousands of times a sample.
#[inline(always)]
fn deinterleave_padded<T: Elem>(src: &[T], pad: usize, e: &mut [T], o: &mut [T]) {
    // src[2k] sits on padded column 2k + pad: an even column when pad is even.
    let (first, second, f0, s0) =
        if pad.is_multiple_of(2) { (e, o, pad / 2, pad / 2) } else { (o, e, pad / 2, pad / 2 + 1) };
    let (f0, s0) = (f0.min(first.len()), s0.min(second.len()));
    let nf = src.len().div_ceil(2).min(first.len() - f0);
    let ns = (src.len() / 2).min(second.len() - s0);
    let zero = |buf: &mut [T]| buf.iter_mut().for_each(|v| *v = T::zero());
    zero(&mut first[..f0]);
    zero(&mut first[f0 + nf..]);
    zero(&mut second[..s0]);
    zero(&mut second[s0 + ns..]);
    let pairs = src.chunks_exact(2);
    let tail = pairs.remainder().first().copied();
    for ((p, a), b) in pairs.zip(first[f0..f0 + nf].iter_mut()).zip(second[s0..s0 + ns].iter_mut()) {
        *a = p[0];
        *b = p[1];
    }
    if let (Some(t), true) = (tail, src.len() / 2 < nf) {
        first[f0 + src.len() / 2] = t;
    }
}

/// `V = B^T d B` for the tiles of tile rows `ty0..ty1` of one sample: `v[16][c][tiles]`.
#[inline(always)]
fn input_transform_body<T: Elem>(xs: &[T], g: &Geo, band: (usize, usize), v: &mut [T], rows: &mut [T]) {
    let ((ty0, ty1), (_, tw)) = (band, g.tiles());
    let ns = xs.len() / (g.c * g.h * g.w);
    let nt = ns * (ty1 - ty0) * tw;
    let hw = tw + 1;
    // Even and odd padded columns of the tile row's 4 input rows, then of B^T d.
    let [e0, e1, e2, e3, o0, o1, o2, o3, re0, re1, re2, re3, ro0, ro1, ro2, ro3] = split::<16, T>(rows, hw);
    for (ci, si) in (0..g.c).flat_map(|ci| (0..ns).map(move |si| (ci, si))) {
        let plane = &xs[(si * g.c + ci) * g.h * g.w..][..g.h * g.w];
        for ty in ty0..ty1 {
            let t0 = (si * (ty1 - ty0) + ty - ty0) * tw;
            for (i, (e, o)) in [(&mut *e0, &mut *o0), (&mut *e1, &mut *o1), (&mut *e2, &mut *o2), (&mut *e3, &mut *o3)]
                .into_iter()
                .enumerate()
            {
                let iy = (2 * ty + i) as isize - g.pad as isize;
                if iy < 0 || iy as usize >= g.h {
                    e.fill(T::zero());
                    o.fill(T::zero());
                    continue;
                }
                deinterleave_padded(&plane[iy as usize * g.w..(iy as usize + 1) * g.w], g.pad, e, o);
            }
            // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3, on even and odd columns.
            map2(re0, e0, e2, |a, b| a - b);
            map2(re1, e1, e2, |a, b| a + b);
            map2(re2, e2, e1, |a, b| a - b);
            map2(re3, e1, e3, |a, b| a - b);
            map2(ro0, o0, o2, |a, b| a - b);
            map2(ro1, o1, o2, |a, b| a + b);
            map2(ro2, o2, o1, |a, b| a - b);
            map2(ro3, o1, o3, |a, b| a - b);
            // (B^T d) B per row, tile x reading columns 2x .. 2x + 3 = e[x], o[x], e[x + 1],
            // o[x + 1]: [e0 - e1, o0 + e1, e1 - o0, o0 - o1].
            for (i, (e, o)) in [(&*re0, &*ro0), (&*re1, &*ro1), (&*re2, &*ro2), (&*re3, &*ro3)].into_iter().enumerate()
            {
                let at = |j: usize| (4 * i + j) * g.c * nt + ci * nt + t0;
                map2(&mut v[at(0)..at(0) + tw], &e[..tw], &e[1..], |a, b| a - b);
                map2(&mut v[at(1)..at(1) + tw], &o[..tw], &e[1..], |a, b| a + b);
                map2(&mut v[at(2)..at(2) + tw], &e[1..], &o[..tw], |a, b| a - b);
                map2(&mut v[at(3)..at(3) + tw], &o[..tw], &o[1..], |a, b| a - b);
            }
        }
    }
}

/// The adjoint of [`input_transform`]: `dx += B dV B^T` over the band's tiles.
#[inline(always)]
fn input_transform_adjoint_body<T: Elem>(v: &[T], g: &Geo, band: (usize, usize), dxs: &mut [T], rows: &mut [T]) {
    let ((ty0, ty1), (_, tw)) = (band, g.tiles());
    let ns = dxs.len() / (g.c * g.h * g.w);
    let nt = ns * (ty1 - ty0) * tw;
    let wp = 2 * tw + 2;
    let (s, rest) = rows.split_at_mut(12 * tw);
    let (r, rest) = rest.split_at_mut(4 * tw);
    let (acc, _) = rest.split_at_mut(wp);
    let z = T::zero();
    let n = g.w.min(wp.saturating_sub(g.pad));
    for (ci, si) in (0..g.c).flat_map(|ci| (0..ns).map(move |si| (ci, si))) {
        let plane = &mut dxs[(si * g.c + ci) * g.h * g.w..][..g.h * g.w];
        for ty in ty0..ty1 {
            let t0 = (si * (ty1 - ty0) + ty - ty0) * tw;
            let at = |xi: usize| &v[xi * g.c * nt + ci * nt + t0..][..tw];
            // Columns first, per tile row i of dV: [q0, q1 - q2 + q3, q1 + q2 - q0, -q3]
            // (q0 read in place, the other three into s).
            for i in 0..4 {
                let (q0, q1, q2, q3) = (at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3));
                let [s1, s2, s3] = split::<3, T>(&mut s[3 * i * tw..3 * (i + 1) * tw], tw);
                map3(s1, q1, q2, q3, |a, b, c| a - b + c);
                map3(s2, q1, q2, q0, |a, b, c| a + b - c);
                map2(s3, q3, q3, |a, _| z - a);
            }
            let sr = |row: usize, j: usize| if j == 0 { at(4 * row) } else { &s[(3 * row + j - 1) * tw..][..tw] };
            // Then rows: input row i of the tile gets [s0, s1 - s2 + s3, s1 + s2 - s0, -s3][i].
            for i in 0..4 {
                let iy = (2 * ty + i) as isize - g.pad as isize;
                if iy < 0 || iy as usize >= g.h || n == 0 {
                    continue;
                }
                let [r0, r1, r2, r3]: [&[T]; 4] = if i == 0 {
                    [sr(0, 0), sr(0, 1), sr(0, 2), sr(0, 3)]
                } else {
                    let [r0, r1, r2, r3] = split::<4, T>(r, tw);
                    for (j, rj) in [&mut *r0, &mut *r1, &mut *r2, &mut *r3].into_iter().enumerate() {
                        let (a, b, c, d) = (sr(0, j), sr(1, j), sr(2, j), sr(3, j));
                        match i {
                            1 => map3(rj, b, c, d, |b, c, d| b - c + d),
                            2 => map3(rj, b, c, a, |b, c, a| b + c - a),
                            _ => map2(rj, d, d, |d, _| z - d),
                        }
                    }
                    [r0, r1, r2, r3]
                };
                // Tile x's column j lands on padded column 2x + j: even columns take
                // r0[x] + r2[x - 1], odd ones r1[x] + r3[x - 1].
                acc[0] = r0[0];
                acc[1] = r1[0];
                for ((p, (&a0, &a1)), (&b2, &b3)) in
                    acc[2..2 * tw].chunks_exact_mut(2).zip(r0[1..].iter().zip(&r1[1..])).zip(r2.iter().zip(r3))
                {
                    p[0] = a0 + b2;
                    p[1] = a1 + b3;
                }
                acc[2 * tw] = r2[tw - 1];
                acc[2 * tw + 1] = r3[tw - 1];
                let dst = &mut plane[iy as usize * g.w..][..n];
                for (a, b) in dst.iter_mut().zip(&acc[g.pad..g.pad + n]) {
                    *a += *b;
                }
            }
        }
    }
}

/// `Y = A^T M A` for the band's tiles into one sample's output `[o][oh][ow]`.
#[inline(always)]
fn output_transform_body<T: Elem>(m: &[T], g: &Geo, band: (usize, usize), ys: &mut [T], rows: &mut [T]) {
    let ((ty0, ty1), (_, tw)) = (band, g.tiles());
    let ns = ys.len() / (g.o * g.oh * g.ow);
    let nt = ns * (ty1 - ty0) * tw;
    let [t0, t1, t2, t3, even, odd] = split::<6, T>(rows, tw);
    for (k, si) in (0..g.o).flat_map(|k| (0..ns).map(move |si| (k, si))) {
        let plane = &mut ys[(si * g.o + k) * g.oh * g.ow..][..g.oh * g.ow];
        for ty in ty0..ty1 {
            let base = (si * (ty1 - ty0) + ty - ty0) * tw;
            let at = |xi: usize| &m[xi * g.o * nt + k * nt + base..][..tw];
            for r in 0..2 {
                let y = 2 * ty + r;
                if y >= g.oh {
                    break;
                }
                // A^T over the tile's rows: r = 0: m0 + m1 + m2; r = 1: m1 - m2 - m3.
                for (j, tj) in [&mut *t0, &mut *t1, &mut *t2, &mut *t3].into_iter().enumerate() {
                    if r == 0 {
                        map3(tj, at(j), at(4 + j), at(8 + j), |a, b, c| a + b + c);
                    } else {
                        map3(tj, at(4 + j), at(8 + j), at(12 + j), |b, c, d| b - c - d);
                    }
                }
                // Then A over its columns: [t0 + t1 + t2, t1 - t2 - t3].
                map3(even, t0, t1, t2, |a, b, c| a + b + c);
                map3(odd, t1, t2, t3, |b, c, d| b - c - d);
                let row = &mut plane[y * g.ow..(y + 1) * g.ow];
                let (pairs, last) = row.split_at_mut(g.ow / 2 * 2);
                for ((p, e), o) in pairs.chunks_exact_mut(2).zip(&*even).zip(&*odd) {
                    p[0] = *e;
                    p[1] = *o;
                }
                if let Some(l) = last.first_mut() {
                    *l = even[tw - 1];
                }
            }
        }
    }
}

/// The adjoint of [`output_transform`]: `dM = A dY A^T` for the band's tiles, `[16][o][tiles]`.
#[inline(always)]
fn output_transform_adjoint_body<T: Elem>(dys: &[T], g: &Geo, band: (usize, usize), m: &mut [T], rows: &mut [T]) {
    let ((ty0, ty1), (_, tw)) = (band, g.tiles());
    let ns = dys.len() / (g.o * g.oh * g.ow);
    let nt = ns * (ty1 - ty0) * tw;
    let [a, b, c, d, u1, v1, u2, v2, u3, v3] = split::<10, T>(rows, tw);
    let z = T::zero();
    for (k, si) in (0..g.o).flat_map(|k| (0..ns).map(move |si| (k, si))) {
        let plane = &dys[(si * g.o + k) * g.oh * g.ow..][..g.oh * g.ow];
        for ty in ty0..ty1 {
            let t0 = (si * (ty1 - ty0) + ty - ty0) * tw;
            // Even and odd columns of the tile's two dY rows (0 past the edge): a b / c d.
            for (r, (e, o)) in [(&mut *a, &mut *b), (&mut *c, &mut *d)].into_iter().enumerate() {
                let y = 2 * ty + r;
                if y >= g.oh {
                    e.fill(z);
                    o.fill(z);
                    continue;
                }
                if g.ow % 2 == 1 {
                    o[tw - 1] = z;
                }
                deinterleave(&plane[y * g.ow..(y + 1) * g.ow], e, o);
            }
            // A dY: rows (u, v) = (a, b), (a + c, b + d), (a - c, b - d), (-c, -d).
            map2(u1, a, c, |a, c| a + c);
            map2(v1, b, d, |b, d| b + d);
            map2(u2, a, c, |a, c| a - c);
            map2(v2, b, d, |b, d| b - d);
            map2(u3, c, c, |c, _| z - c);
            map2(v3, d, d, |d, _| z - d);
            // Each row (u, v) times A^T: [u, u + v, u - v, -v].
            // The four rows ξ = 4i .. 4i + 3 lie g.o * nt apart in m.
            for (i, (u, v)) in [(&*a, &*b), (&*u1, &*v1), (&*u2, &*v2), (&*u3, &*v3)].into_iter().enumerate() {
                let rest = &mut m[4 * i * g.o * nt + k * nt + t0..];
                let (m0, rest) = rest.split_at_mut(g.o * nt);
                let (m1, rest) = rest.split_at_mut(g.o * nt);
                let (m2, m3) = rest.split_at_mut(g.o * nt);
                let outs = m0[..tw].iter_mut().zip(&mut m1[..tw]).zip(&mut m2[..tw]).zip(&mut m3[..tw]);
                for ((((w0, w1), w2), w3), (&u, &v)) in outs.zip(u.iter().zip(v)) {
                    *w0 = u;
                    *w1 = u + v;
                    *w2 = u - v;
                    *w3 = z - v;
                }
            }
        }
    }
}

/// Band sizes (values) for the forward and the backward passes.
const FORWARD_BAND: usize = 1 << 16;
const BACKWARD_BAND: usize = 1 << 17;
/// The fewest tiles a band of one sample may hold: the width of gemm's AVX-512 kernel.
const MIN_BAND_TILES: usize = 16;
/// Tiles per product when small images are taken whole, several samples at a time: about
/// as many columns as im2col + gemm's product has for one AlexNet sample (169). Measured on
/// AlexNet's 13x13 layers at batch 8, 1 and 2 threads: 98, 196 and 392 within noise.
const GROUP_TILES: usize = 196;

/// How a pass walks the batch: the threads take `chunk` samples at a time, and walk them
/// `ns` samples at a time, each sample in bands of `rows` tile rows.
#[derive(Debug, Clone, Copy)]
struct Walk {
    chunk: usize,
    ns: usize,
    rows: usize,
}

impl Walk {
    /// A sample whose band (kept near `elems` values) holds [`MIN_BAND_TILES`] or more is
    /// walked band by band, one sample at a time, its transformed operands in cache; the
    /// threads take one sample at a time. A smaller image (AlexNet's 13x13 layers with 192
    /// to 384 channels: 7 tiles a band, 49 a sample) is taken whole, several samples at a
    /// time, so that each transformed weight serves about [`GROUP_TILES`] tiles; the
    /// threads then take equal shares of the batch (`chunk` samples; a share is walked in
    /// groups of `ns`, the last one shorter), so that no thread waits for a larger group.
    fn new(g: &Geo, elems: usize) -> Walk {
        let (th, tw) = g.tiles();
        let rows = g.band(elems);
        if rows * tw >= MIN_BAND_TILES {
            return Walk { chunk: 1, ns: 1, rows };
        }
        let chunk = g.n.div_ceil(threads()).max(1);
        let groups = (chunk * th * tw).div_ceil(GROUP_TILES).max(1);
        Walk { chunk, ns: chunk.div_ceil(groups), rows: th }
    }
    /// The tile-row bands of a sample.
    fn bands(&self, g: &Geo) -> impl Iterator<Item = (usize, usize)> {
        let ((th, _), b) = (g.tiles(), self.rows);
        (0..th.div_ceil(b)).map(move |i| (i * b, ((i + 1) * b).min(th)))
    }
    /// The groups of `ns` samples in `samples`.
    fn groups(&self, samples: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (end, ns) = (samples.end, self.ns);
        samples.step_by(ns).map(move |s| s..(s + ns).min(end))
    }
    /// `f(s, samples, out)` for each group, `out` the group's part of `[n][per_sample]`, over
    /// the threads by chunks where the batch has a sample for every thread (as
    /// `sum_over_batch` splits it for the weight gradient); with fewer samples than threads,
    /// in turn, with `spread` telling `f` to share its products among the threads.
    fn each<T: Elem>(
        &self,
        out: &mut [T],
        per_sample: usize,
        f: impl Fn(&mut Scratch<T>, std::ops::Range<usize>, &mut [T], bool) + Sync,
    ) {
        // Not by the count of chunks: 9 samples on 8 threads make 5 chunks of 2, which the
        // threads still take at once.
        let (per_chunk, threads) = plan_threads(out.len() / per_sample.max(1));
        let run = |s: &mut Scratch<T>, (i, part): (usize, &mut [T]), spread: bool| {
            let first = i * self.chunk;
            for (j, group) in part.chunks_mut(self.ns * per_sample).enumerate() {
                let start = first + j * self.ns;
                f(s, start..start + group.len() / per_sample, group, spread);
            }
        };
        if per_chunk {
            out.par_chunks_mut(self.chunk * per_sample)
                .enumerate()
                .for_each_init(Scratch::new, |s, item| run(s, item, false));
        } else {
            let mut s = Scratch::new();
            out.chunks_mut(self.chunk * per_sample).enumerate().for_each(|item| run(&mut s, item, threads > 1));
        }
    }
}

/// `f(ξ, dst[ξ])` for the 16 equal parts of `dst`: with `spread`, over the threads (where
/// the batch leaves threads idle each takes whole products, which pays more than gemm's
/// threads over one small product: AlexNet at batch 1, 49 tiles). Each product runs on one
/// thread either way, so the bits are the same.
fn sixteen<T: Elem>(dst: &mut [T], spread: bool, f: impl Fn(usize, &mut [T]) + Sync) {
    let len = dst.len() / 16;
    if spread {
        dst[..16 * len].par_chunks_mut(len).enumerate().for_each(|(xi, d)| f(xi, d));
    } else {
        dst[..16 * len].chunks_mut(len).enumerate().for_each(|(xi, d)| f(xi, d));
    }
}

/// `x [n][c][h][w]`, `wt [o][c][3][3]` -> `y [n][o][oh][ow]`.
pub(crate) fn forward<T: Elem>(x: &[T], wt: &[T], g: &Geo) -> Vec<T> {
    let walk = Walk::new(g, FORWARD_BAND);
    let u = weight_transform(wt, g);
    let (c_in, c_out) = (g.c * g.h * g.w, g.o * g.oh * g.ow);
    let (_, tw) = g.tiles();
    let mut out = vec![T::zero(); g.n * c_out];
    walk.each(&mut out, c_out, |s, r, ys, spread| {
        let xs = &x[r.start * c_in..r.end * c_in];
        for band in walk.bands(g) {
            let nt = r.len() * (band.1 - band.0) * tw;
            s.size(g, nt);
            input_transform(xs, g, band, &mut s.v, &mut s.rows);
            let v = &s.v;
            sixteen(&mut s.m, spread, |xi, m| {
                matmul(
                    (g.o, nt, g.c),
                    m,
                    Mat::N(&u[xi * g.o * g.c..(xi + 1) * g.o * g.c]),
                    Mat::N(&v[xi * g.c * nt..(xi + 1) * g.c * nt]),
                    false,
                    1,
                );
            });
            output_transform(&s.m, g, band, ys, &mut s.rows);
        }
    });
    out
}

/// The input gradient `[n][c][h][w]` from `wt [o][c][3][3]` and `dy [n][o][oh][ow]`.
pub(crate) fn grad_input<T: Elem>(wt: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let walk = Walk::new(g, BACKWARD_BAND);
    let u = weight_transform(wt, g);
    let (c_in, c_out) = (g.c * g.h * g.w, g.o * g.oh * g.ow);
    let (_, tw) = g.tiles();
    let mut dx = vec![T::zero(); g.n * c_in];
    walk.each(&mut dx, c_in, |s, r, dxs, spread| {
        let dys = &dy[r.start * c_out..r.end * c_out];
        for band in walk.bands(g) {
            let nt = r.len() * (band.1 - band.0) * tw;
            s.size(g, nt);
            output_transform_adjoint(dys, g, band, &mut s.m, &mut s.rows);
            let m = &s.m;
            sixteen(&mut s.v, spread, |xi, v| {
                // dV[ξ] (c x tiles) = U[ξ]^T (c x o) dM[ξ] (o x tiles).
                matmul(
                    (g.c, nt, g.o),
                    v,
                    Mat::T(&u[xi * g.o * g.c..(xi + 1) * g.o * g.c]),
                    Mat::N(&m[xi * g.o * nt..(xi + 1) * g.o * nt]),
                    false,
                    1,
                );
            });
            input_transform_adjoint(&s.v, g, band, dxs, &mut s.rows);
        }
    });
    dx
}

/// The weight gradient `[o][c][3][3]` from `x [n][c][h][w]` and `dy [n][o][oh][ow]`.
pub(crate) fn grad_weight<T: Elem>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let walk = Walk::new(g, BACKWARD_BAND);
    let (per_sample, threads) = plan_threads(g.n);
    let (c_in, c_out) = (g.c * g.h * g.w, g.o * g.oh * g.ow);
    let (_, tw) = g.tiles();
    let ulen = 16 * g.o * g.c;
    let acc = |(mut du, mut s): (Vec<T>, Scratch<T>), r: std::ops::Range<usize>| {
        let xs = &x[r.start * c_in..r.end * c_in];
        let dys = &dy[r.start * c_out..r.end * c_out];
        for band in walk.bands(g) {
            let nt = r.len() * (band.1 - band.0) * tw;
            s.size(g, nt);
            input_transform(xs, g, band, &mut s.v, &mut s.rows);
            output_transform_adjoint(dys, g, band, &mut s.m, &mut s.rows);
            let (m, v) = (&s.m, &s.v);
            sixteen(&mut du, !per_sample && threads > 1, |xi, du| {
                // dU[ξ] (o x c) += dM[ξ] (o x tiles) V[ξ]^T (tiles x c).
                matmul(
                    (g.o, g.c, nt),
                    du,
                    Mat::N(&m[xi * g.o * nt..(xi + 1) * g.o * nt]),
                    Mat::T(&v[xi * g.c * nt..(xi + 1) * g.c * nt]),
                    true,
                    1,
                );
            });
        }
        (du, s)
    };
    let start = || (vec![T::zero(); ulen], Scratch::new());
    let du = if per_sample {
        sum_over_batch(g.n, |r| walk.groups(r).fold(start(), acc).0)
    } else {
        walk.groups(0..g.n).fold(start(), acc).0
    };
    weight_transform_adjoint(&du, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::conv_by_definition;
    use crate::rng::Rng;

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.next_f64() * 2.0 - 1.0).collect()
    }

    /// A 3x3 convolution by its definition, in f64.
    fn direct(x: &[f64], wt: &[f64], g: &Geo) -> Vec<f64> {
        conv_by_definition(x, wt, [g.n, g.c, g.h, g.w], [g.o, 3, 3], 1, g.pad)
    }

    fn geos() -> Vec<Geo> {
        // Even and odd output sizes (partial edge tiles), padding 0, 1 and 2, bands of one
        // tile row and of several, small images taken several samples at a time (groups
        // of unequal sizes; one sample, its products shared among the threads).
        let mk = |n, c, h, w, o, pad| Geo { n, c, h, w, o, pad, oh: h + 2 * pad - 2, ow: w + 2 * pad - 2 };
        vec![
            mk(2, 3, 6, 6, 4, 1),
            mk(1, 2, 7, 5, 3, 1),
            mk(3, 4, 9, 8, 2, 0),
            mk(2, 2, 5, 6, 3, 2),
            mk(2, 40, 11, 13, 48, 1),
            mk(5, 3, 5, 5, 4, 1),
            // Bands of 7 tiles: whole samples, several groups to a thread's share.
            mk(10, 600, 13, 13, 2, 1),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for g in geos() {
            let (x, wt) = (rand(g.n * g.c * g.h * g.w, 1), rand(g.o * g.c * 9, 2));
            let (ours, want) = (forward(&x, &wt, &g), direct(&x, &wt, &g));
            let err = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "{g:?}: max error {err}");
        }
    }

    /// AlexNet's 13x13 layers (7 tiles a band) are taken whole, several samples to a
    /// product; a 32x32 image with 64 channels (resnet's first stage) band by band.
    #[test]
    fn small_images_are_walked_in_groups() {
        let g = Geo { n: 8, c: 384, h: 13, w: 13, o: 256, pad: 1, oh: 13, ow: 13 };
        let w = Walk::new(&g, FORWARD_BAND);
        assert_eq!((w.rows, w.chunk), (7, 8usize.div_ceil(threads())));
        assert_eq!(w.ns, w.chunk.div_ceil((w.chunk * 49).div_ceil(GROUP_TILES)));
        let groups: Vec<_> = w.groups(0..w.chunk).collect();
        assert_eq!(groups.iter().map(|r| r.len()).sum::<usize>(), w.chunk);
        assert!(groups.iter().all(|r| r.len() * 49 <= GROUP_TILES.max(49)), "{groups:?}");
        let g = Geo { n: 8, c: 64, h: 32, w: 32, o: 64, pad: 1, oh: 32, ow: 32 };
        let w = Walk::new(&g, FORWARD_BAND);
        assert_eq!((w.chunk, w.ns), (1, 1));
        assert!(w.rows < 16 && w.rows * 16 >= MIN_BAND_TILES, "{w:?}");
    }

    /// The backward pass is the adjoint of the forward: for random dY,
    /// <dY, conv(x, w)> = <grad_input(w, dY), x> = <grad_weight(x, dY), w>.
    #[test]
    fn backward_is_the_adjoint() {
        for g in geos() {
            let (x, wt) = (rand(g.n * g.c * g.h * g.w, 3), rand(g.o * g.c * 9, 4));
            let dy = rand(g.n * g.o * g.oh * g.ow, 5);
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let lhs = dot(&dy, &direct(&x, &wt, &g));
            let via_x = dot(&grad_input(&wt, &dy, &g), &x);
            let via_w = dot(&grad_weight(&x, &dy, &g), &wt);
            assert!((lhs - via_x).abs() < 1e-9 * (1.0 + lhs.abs()), "{g:?}: {lhs} vs {via_x}");
            assert!((lhs - via_w).abs() < 1e-9 * (1.0 + lhs.abs()), "{g:?}: {lhs} vs {via_w}");
        }
    }
}
