//! A strided convolution as a stride-1 one over the input's `s x s` blocks (space to depth),
//! so that Winograd can take it.
//!
//! With stride `s`, input pixel `(s y' + di, s x' + dj)` of channel `c` (counted in the
//! padded input) becomes pixel `(y', x')` of channel `(c s + di) s + dj`, and kernel tap
//! `(s ki' + di, s kj' + dj)` becomes tap `(ki', kj')` of that channel, 0 where it lies past
//! the kernel. Output `(y, x)` then reads pixels `y .. y + k'` of the new input: the same
//! sum, term for term, with zero terms added. A kernel spanning 3 strides (AlexNet's 11x11
//! at stride 4: 12 / 4) becomes a 3x3 stride-1 one over `s^2` times the channels (48 for an
//! RGB image), where im2col gathered every 4th pixel into a matrix 11 x 11 rows deep.
//!
//! Gradients: every padded input pixel is one pixel of the new input (or none, past the
//! last window), and every kernel tap one tap of the new kernel, so the adjoints are the
//! same maps read backwards.

use rayon::prelude::*;

use super::winograd::Geo;
use super::Elem;

/// A strided convolution's sizes (`kh x kw` kernel, stride `s`, padding `p`) and its
/// stride-1 form: a `3 x 3` kernel over `c s^2` channels of `(oh + 2) x (ow + 2)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fold {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub p: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Fold {
    /// Whether the kernel spans exactly 3 strides each way (so the stride-1 form is 3x3).
    pub(crate) fn fits(kh: usize, kw: usize, s: usize) -> bool {
        s >= 2 && kh.div_ceil(s) == 3 && kw.div_ceil(s) == 3
    }

    /// The stride-1, unpadded 3x3 convolution this one becomes.
    pub(crate) fn geo(&self) -> Geo {
        let (h, w) = (self.oh + 2, self.ow + 2);
        Geo { n: self.n, c: self.c * self.s * self.s, h, w, o: self.o, pad: 0, oh: self.oh, ow: self.ow }
    }

    /// For each new channel `(c, di, dj)` and new row `y'`: the source row in the input,
    /// if inside it; `f(new plane, y', source plane, source row)` per such row.
    fn rows(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (s, hn) = (self.s, self.oh + 2);
        for c in 0..self.c {
            for di in 0..s {
                for dj in 0..s {
                    let q = (c * s + di) * s + dj;
                    for y in 0..hn {
                        let iy = (s * y + di) as isize - self.p as isize;
                        if iy >= 0 && (iy as usize) < self.h {
                            f(q, y, c, iy as usize);
                        }
                    }
                }
            }
        }
    }

    /// For new channel `q`'s column offset `dj`: the new columns `x'` whose source column
    /// `s x' + dj - p` lies inside the input, and that source column for the first.
    fn cols(&self, dj: usize) -> (std::ops::Range<usize>, usize) {
        let (s, p, wn) = (self.s, self.p, self.ow + 2);
        // s x' + dj >= p  and  s x' + dj - p < w
        let lo = p.saturating_sub(dj).div_ceil(s);
        let hi = (self.w + p).saturating_sub(dj).div_ceil(s).min(wn);
        let lo = lo.min(hi);
        (lo..hi, s * lo + dj - p.min(s * lo + dj))
    }

    /// `x [n][c][h][w]` -> the new input `[n][c s^2][oh + 2][ow + 2]` (0 outside the input).
    pub(crate) fn input<T: Elem>(&self, x: &[T]) -> Vec<T> {
        let g = self.geo();
        let (plane, new_plane) = (self.h * self.w, g.h * g.w);
        let mut out = vec![T::zero(); self.n * g.c * new_plane];
        out.par_chunks_mut(g.c * new_plane).zip(x.par_chunks(self.c * plane)).for_each(|(out, xs)| {
            self.rows(|q, y, c, iy| {
                let (xr, start) = self.cols(q % self.s);
                let src = &xs[c * plane + iy * self.w..][..self.w];
                let dst = &mut out[q * new_plane + y * g.w..][..g.w];
                for (i, v) in dst[xr].iter_mut().enumerate() {
                    *v = src[start + i * self.s];
                }
            });
        });
        out
    }

    /// The adjoint of [`Fold::input`]: the gradient `[n][c][h][w]` from the new input's.
    pub(crate) fn input_adjoint<T: Elem>(&self, dnew: &[T]) -> Vec<T> {
        let g = self.geo();
        let (plane, new_plane) = (self.h * self.w, g.h * g.w);
        let mut dx = vec![T::zero(); self.n * self.c * plane];
        dx.par_chunks_mut(self.c * plane).zip(dnew.par_chunks(g.c * new_plane)).for_each(|(dx, dn)| {
            self.rows(|q, y, c, iy| {
                let (xr, start) = self.cols(q % self.s);
                let src = &dn[q * new_plane + y * g.w..][..g.w];
                let dst = &mut dx[c * plane + iy * self.w..][..self.w];
                for (i, v) in src[xr].iter().enumerate() {
                    dst[start + i * self.s] = *v;
                }
            });
        });
        dx
    }

    /// `wt [o][c][kh][kw]` -> the new kernel `[o][c s^2][3][3]`.
    pub(crate) fn weight<T: Elem>(&self, wt: &[T]) -> Vec<T> {
        let s = self.s;
        let mut out = vec![T::zero(); self.o * self.c * s * s * 9];
        for (i, &v) in wt.iter().enumerate() {
            out[self.new_tap(i)] = v;
        }
        out
    }

    /// The adjoint of [`Fold::weight`]: the gradient `[o][c][kh][kw]` from the new kernel's.
    pub(crate) fn weight_adjoint<T: Elem>(&self, dnew: &[T]) -> Vec<T> {
        (0..self.o * self.c * self.kh * self.kw).map(|i| dnew[self.new_tap(i)]).collect()
    }

    /// Where tap `i` of the kernel `[o][c][kh][kw]` lies in the new kernel `[o][c s^2][3][3]`.
    fn new_tap(&self, i: usize) -> usize {
        let s = self.s;
        let (kj, ki, c, o) =
            (i % self.kw, i / self.kw % self.kh, i / (self.kw * self.kh) % self.c, i / (self.kw * self.kh * self.c));
        let q = (c * s + ki % s) * s + kj % s;
        ((o * self.c * s * s + q) * 3 + ki / s) * 3 + kj / s
    }
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

    /// A strided convolution by its definition, in f64.
    fn direct(x: &[f64], wt: &[f64], f: &Fold) -> Vec<f64> {
        conv_by_definition(x, wt, [f.n, f.c, f.h, f.w], [f.o, f.kh, f.kw], f.s, f.p)
    }

    /// The same sum over the new input and kernel, as a plain 3x3 stride-1 convolution.
    fn direct_new(xn: &[f64], wn: &[f64], g: &Geo) -> Vec<f64> {
        conv_by_definition(xn, wn, [g.n, g.c, g.h, g.w], [g.o, 3, 3], 1, 0)
    }

    fn folds() -> Vec<Fold> {
        let mk = |n, c, h, w, o, kh, kw, s, p| {
            let (oh, ow) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
            Fold { n, c, h, w, o, kh, kw, s, p, oh, ow }
        };
        vec![
            // AlexNet's first layer, small: 11x11 stride 4 padding 2.
            mk(2, 3, 31, 27, 4, 11, 11, 4, 2),
            // Input sizes that leave pixels past the last window, no padding.
            mk(1, 2, 17, 18, 3, 9, 9, 4, 0),
            // 5x5 and 6x5 stride 2, padding wider than a stride.
            mk(2, 2, 12, 11, 2, 5, 5, 2, 3),
            mk(1, 3, 10, 13, 2, 6, 5, 2, 1),
        ]
    }

    #[test]
    fn the_stride_one_form_is_the_same_convolution() {
        for f in folds() {
            assert!(Fold::fits(f.kh, f.kw, f.s), "{f:?}");
            let (x, wt) = (rand(f.n * f.c * f.h * f.w, 1), rand(f.o * f.c * f.kh * f.kw, 2));
            let ours = direct_new(&f.input(&x), &f.weight(&wt), &f.geo());
            let want = direct(&x, &wt, &f);
            let err = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "{f:?}: max error {err}");
        }
    }

    /// The adjoints: <input(x), a> = <x, input_adjoint(a)> and likewise for the kernel.
    #[test]
    fn the_adjoints_are_the_maps_read_backwards() {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        for f in folds() {
            let g = f.geo();
            let (x, a) = (rand(f.n * f.c * f.h * f.w, 3), rand(g.n * g.c * g.h * g.w, 4));
            let (lhs, rhs) = (dot(&f.input(&x), &a), dot(&x, &f.input_adjoint(&a)));
            assert!((lhs - rhs).abs() < 1e-9, "{f:?}: {lhs} vs {rhs}");
            let (wt, b) = (rand(f.o * f.c * f.kh * f.kw, 5), rand(g.o * g.c * 9, 6));
            let (lhs, rhs) = (dot(&f.weight(&wt), &b), dot(&wt, &f.weight_adjoint(&b)));
            assert!((lhs - rhs).abs() < 1e-9, "{f:?}: {lhs} vs {rhs}");
        }
    }
}
