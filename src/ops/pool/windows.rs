//! Max pooling over windows that all lie inside the input (no padding, no overhang): a
//! plane at a time, in passes that vectorize, with the general loop's first-maximum and
//! NaN rule. `forward` (mod.rs) takes these for the common windows.

use crate::ops::Elem;

/// A plane's 2x2 stride-2 windows, all inside it (`w`: its width, `ow`: the output's):
/// `o[y, x]` the largest of the window's four values and `a[y, x]` its index in the plane,
/// by the general loop's rule: scanning top-left, top-right, bottom-left, bottom-right, a
/// value replaces the kept one when greater or NaN. In two passes that vectorize (LeNet5's
/// rows are 12 and 4 windows wide: a pass per row of windows ran mostly scalar, 13% of a
/// LeNet5 step). First each column of two (`m`, `i`: the value the rule keeps of the top
/// and bottom value, and its index), a row pair at a time; then each pair of neighbouring
/// columns, in one run over the plane. The rule's winner of four is its winner of the two
/// columns' winners taken in scan order (the first of tied maxima, the last NaN, is the
/// earlier or later of the two), and scan order is index order.
#[inline(always)]
fn max2x2_plane_body<T: Elem>(
    plane: &[T],
    w: usize,
    ow: usize,
    o: &mut [T],
    a: &mut [u32],
    m: &mut Vec<T>,
    i: &mut Vec<u32>,
) {
    let n = o.len();
    let oh = n / ow.max(1);
    let cw = 2 * ow;
    m.resize(2 * n, T::default());
    i.resize(2 * n, 0);
    for y in 0..oh {
        let (r0, r1) = (&plane[2 * y * w..][..cw], &plane[(2 * y + 1) * w..][..cw]);
        let (mr, ir) = (&mut m[y * cw..][..cw], &mut i[y * cw..][..cw]);
        let (top, bottom) = ((2 * y * w) as u32, ((2 * y + 1) * w) as u32);
        for c in 0..cw {
            let (t, b) = (r0[c], r1[c]);
            // `b != b`: NaN. `|`, not `||`: no branch.
            #[allow(clippy::eq_op)]
            let wins = (b > t) | (b != b);
            mr[c] = if wins { b } else { t };
            ir[c] = if wins { bottom } else { top } + c as u32;
        }
    }
    let (m, i, o, a) = (&m[..2 * n], &i[..2 * n], &mut o[..n], &mut a[..n]);
    for j in 0..n {
        let (l, r, il, ir) = (m[2 * j], m[2 * j + 1], i[2 * j], i[2 * j + 1]);
        // The right column's winner comes later in the scan unless it is a top value and
        // the left one's a bottom value; the later one wins when greater or NaN.
        #[allow(clippy::eq_op)]
        let (r_beats, l_beats) = ((r > l) | (r != r), (l > r) | (l != l));
        let right = if il < ir { r_beats } else { !l_beats };
        o[j] = if right { r } else { l };
        a[j] = if right { ir } else { il };
    }
}

/// A plane's `k x k` stride-`s` windows, all inside it (`w`: its width, `ow`: the output's):
/// `o` the value the general loop's rule keeps (scanning the window row by row, a value
/// replaces the kept one when greater or NaN: the first of tied maxima, the last NaN) and
/// `a` its index in the plane. In two passes that vectorize, per row of windows: first the
/// rule's winner of each column of `k` rows (`m`, `i`: scanned top to bottom, in a run over
/// the row), then the `k` column winners of each window combined. The plane's row-major
/// index is the scan order, so of two candidates the later one wins where it is greater or
/// NaN, else the earlier: the rule's winner of their union, in any order of combining.
/// AlexNet's 3x3 stride-2 pooling took 10% of its forward pass as a scalar loop with a
/// branch per value.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn max_plane_body<T: Elem>(
    plane: &[T],
    w: usize,
    (ow, k, s): (usize, usize, usize),
    o: &mut [T],
    a: &mut [u32],
    m: &mut Vec<T>,
    i: &mut Vec<u32>,
) {
    let n = o.len();
    let oh = n / ow.max(1);
    let cw = (ow.max(1) - 1) * s + k;
    m.resize(cw, T::default());
    i.resize(cw, 0);
    let (m, i) = (&mut m[..cw], &mut i[..cw]);
    for y in 0..oh {
        let first = y * s * w;
        m.copy_from_slice(&plane[first..first + cw]);
        for (c, ic) in i.iter_mut().enumerate() {
            *ic = (first + c) as u32;
        }
        for r in y * s + 1..y * s + k {
            let row = &plane[r * w..r * w + cw];
            let base = (r * w) as u32;
            for (c, ((&v, mc), ic)) in row.iter().zip(m.iter_mut()).zip(i.iter_mut()).enumerate() {
                // `v != v`: NaN. `|`, not `||`: no branch.
                #[allow(clippy::eq_op)]
                let wins = (v > *mc) | (v != v);
                *mc = if wins { v } else { *mc };
                *ic = if wins { base + c as u32 } else { *ic };
            }
        }
        let (orow, arow) = (&mut o[y * ow..(y + 1) * ow], &mut a[y * ow..(y + 1) * ow]);
        for (xo, (ov, av)) in orow.iter_mut().zip(arow.iter_mut()).enumerate() {
            let c0 = xo * s;
            let (mut top, mut at) = (m[c0], i[c0]);
            for (&v, &iv) in m[c0 + 1..c0 + k].iter().zip(&i[c0 + 1..c0 + k]) {
                #[allow(clippy::eq_op)]
                let (v_beats, top_beats) = ((v > top) | (v != v), (top > v) | (top != top));
                let take = if at < iv { v_beats } else { !top_beats };
                top = if take { v } else { top };
                at = if take { iv } else { at };
            }
            *ov = top;
            *av = at;
        }
    }
}

with_avx512!(pub(super) max_plane = max_plane_body(plane: &[T], w: usize, oks: (usize, usize, usize), o: &mut [T], a: &mut [u32], m: &mut Vec<T>, i: &mut Vec<u32>));

with_avx2!(pub(super) max2x2_plane = max2x2_plane_body(plane: &[T], w: usize, ow: usize, o: &mut [T], a: &mut [u32], m: &mut Vec<T>, i: &mut Vec<u32>));
