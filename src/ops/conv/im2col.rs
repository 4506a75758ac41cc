//! im2col and its adjoint col2im: the column matrix of one sample, for the convolutions
//! that take neither Winograd path.

use super::{Dims, Elem};

/// The output columns `xo` whose input column `xo * s - p + kj * d` lies inside `0..w`.
pub(super) fn valid_cols(d: &Dims, kj: usize) -> (usize, usize) {
    let (s, off) = (d.g.stride as isize, kj as isize * d.g.dilation as isize - d.g.padding as isize);
    // xo * s + off >= 0  and  xo * s + off < w
    let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s as usize) };
    let hi = if (d.w as isize) <= off { 0 } else { ((d.w as isize - off) as usize).div_ceil(s as usize) };
    (lo.min(d.ow), hi.min(d.ow).max(lo.min(d.ow)))
}

/// `col[(ci, ki, kj), (y, x)] = x[ci, y * s - p + ki * d, x * s - p + kj * d]` (0 outside).
pub(super) fn im2col<T: Elem>(x: &[T], d: &Dims, col: &mut [T]) {
    let (s, p, dil) = (d.g.stride as isize, d.g.padding as isize, d.g.dilation as isize);
    let pp = d.p();
    if (s, p, dil) == (1, 0, 1) {
        // No padding, stride 1 (LeNet's convolutions): every row of a column row is a
        // whole run of input pixels, with no bounds to clip (16% of a LeNet5 step was the
        // general loop below).
        for ci in 0..d.c {
            let plane = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
            for ki in 0..d.kh {
                for kj in 0..d.kw {
                    let row = &mut col[((ci * d.kh + ki) * d.kw + kj) * pp..][..pp];
                    for y in 0..d.oh {
                        copy_short(&mut row[y * d.ow..][..d.ow], &plane[(y + ki) * d.w + kj..][..d.ow]);
                    }
                }
            }
        }
        return;
    }
    for ci in 0..d.c {
        let plane = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let row = &mut col[((ci * d.kh + ki) * d.kw + kj) * pp..][..pp];
                let (lo, hi) = valid_cols(d, kj);
                let off = kj as isize * dil - p;
                for y in 0..d.oh {
                    let iy = y as isize * s - p + ki as isize * dil;
                    let out = &mut row[y * d.ow..(y + 1) * d.ow];
                    if iy < 0 || iy >= d.h as isize {
                        out.fill(T::default());
                        continue;
                    }
                    let src = &plane[iy as usize * d.w..(iy as usize + 1) * d.w];
                    out[..lo].fill(T::default());
                    out[hi..].fill(T::default());
                    let start = (lo as isize * s + off) as usize;
                    if s == 1 {
                        copy_short(&mut out[lo..hi], &src[start..start + (hi - lo)]);
                    } else {
                        for (i, v) in out[lo..hi].iter_mut().enumerate() {
                            *v = src[start + i * s as usize];
                        }
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows of im2col (LeNet's are 8 and 24 values),
/// in blocks of 8 that compile to vector moves instead of a `memcpy` call per row: the last
/// block overlaps the one before where the length is not a multiple of 8, so the copy is a
/// few fixed-size moves with no loop over single values for the compiler to turn into a
/// call.
#[inline]
pub(super) fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    if !(8..=64).contains(&n) || src.len() != n {
        return dst.copy_from_slice(src);
    }
    let mut block = |at: usize| {
        let s: [T; 8] = src[at..at + 8].try_into().expect("8 values"); // ok: at + 8 <= n
        dst[at..at + 8].copy_from_slice(&s);
    };
    let mut at = 0;
    while at + 8 < n {
        block(at);
        at += 8;
    }
    block(n - 8);
}

/// The adjoint of [`im2col`]: adds each column entry back into its input pixel.
pub(super) fn col2im<T: Elem>(col: &[T], d: &Dims, x: &mut [T]) {
    let (s, p, dil) = (d.g.stride as isize, d.g.padding as isize, d.g.dilation as isize);
    let pp = d.p();
    if (s, p, dil) == (1, 0, 1) {
        // As im2col's: whole rows, no bounds to clip (and no divisions to find them: 150 of
        // them for each sample of LeNet's second conv).
        for ci in 0..d.c {
            let plane = &mut x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
            for ki in 0..d.kh {
                for kj in 0..d.kw {
                    let row = &col[((ci * d.kh + ki) * d.kw + kj) * pp..][..pp];
                    for y in 0..d.oh {
                        let dst = &mut plane[(y + ki) * d.w + kj..][..d.ow];
                        dst.iter_mut().zip(&row[y * d.ow..][..d.ow]).for_each(|(a, b)| *a += *b);
                    }
                }
            }
        }
        return;
    }
    for ci in 0..d.c {
        let plane = &mut x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let row = &col[((ci * d.kh + ki) * d.kw + kj) * pp..][..pp];
                let (lo, hi) = valid_cols(d, kj);
                let off = kj as isize * dil - p;
                for y in 0..d.oh {
                    let iy = y as isize * s - p + ki as isize * dil;
                    if iy < 0 || iy >= d.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * d.w..(iy as usize + 1) * d.w];
                    let src = &row[y * d.ow + lo..y * d.ow + hi];
                    let start = (lo as isize * s + off) as usize;
                    if s == 1 {
                        dst[start..start + src.len()].iter_mut().zip(src).for_each(|(a, b)| *a += *b);
                    } else {
                        for (i, v) in src.iter().enumerate() {
                            dst[start + i * s as usize] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// The column matrix of one sample: the input itself for a pointwise conv, else im2col
/// into `buf`.
pub(super) fn columns<'a, T: Elem>(xs: &'a [T], d: &Dims, buf: &'a mut Vec<T>) -> &'a [T] {
    if d.is_pointwise() {
        return xs;
    }
    buf.resize(d.c * d.kh * d.kw * d.p(), T::default());
    im2col(xs, d, buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short-row copy, its overlapping last block included, for every length up to and
    /// past its 64-value limit.
    #[test]
    fn copy_short_copies_every_length() {
        let src: Vec<f32> = (0..80).map(|i| i as f32).collect();
        for n in 0..77 {
            let mut dst = vec![-1f32; n];
            copy_short(&mut dst, &src[3..3 + n]);
            assert_eq!(dst, src[3..3 + n], "length {n}");
        }
    }
}
