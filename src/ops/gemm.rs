//! A safe row-major matrix product over the `gemm` crate (the one candle uses), for the
//! project's CPU kernels.

use gemm::Parallelism;

/// A matrix operand: a row-major buffer, read as stored or transposed.
#[derive(Clone, Copy)]
pub enum Mat<'a, T> {
    /// `rows x cols`, row-major.
    N(&'a [T]),
    /// The transpose of a row-major `cols x rows` buffer.
    T(&'a [T]),
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)`, all row-major. `accumulate` adds to `dst`.
pub fn matmul<T: Copy + 'static + num_one::One>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    threads: usize,
) {
    assert!(dst.len() >= m * n); // ok: callers size buffers from the same dims
    let (a_ptr, a_cs, a_rs) = match a {
        Mat::N(s) => {
            assert!(s.len() >= m * k); // ok: as above
            (s.as_ptr(), 1isize, k as isize)
        }
        Mat::T(s) => {
            assert!(s.len() >= m * k); // ok: as above
            (s.as_ptr(), m as isize, 1isize)
        }
    };
    let (b_ptr, b_cs, b_rs) = match b {
        Mat::N(s) => {
            assert!(s.len() >= k * n); // ok: as above
            (s.as_ptr(), 1isize, n as isize)
        }
        Mat::T(s) => {
            assert!(s.len() >= k * n); // ok: as above
            (s.as_ptr(), k as isize, 1isize)
        }
    };
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: every pointer covers the extents asserted above; dst does not alias a or b
    // (a &mut and two & borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a_ptr,
            a_cs,
            a_rs,
            b_ptr,
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// The multiplicative identity, for the element types the kernels support.
pub mod num_one {
    pub trait One {
        fn one() -> Self;
    }
    impl One for f32 {
        fn one() -> Self {
            1.0
        }
    }
    impl One for f64 {
        fn one() -> Self {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_by_hand() {
        // a = [[1,2,3],[4,5,6]], b = [[1,0],[0,1],[1,1]]: a*b = [[4,5],[10,11]].
        let a = [1f32, 2., 3., 4., 5., 6.];
        let b = [1f32, 0., 0., 1., 1., 1.];
        let mut d = [0f32; 4];
        matmul((2, 2, 3), &mut d, Mat::N(&a), Mat::N(&b), false, 1);
        assert_eq!(d, [4., 5., 10., 11.]);
        // Accumulate: d += a*b.
        matmul((2, 2, 3), &mut d, Mat::N(&a), Mat::N(&b), true, 1);
        assert_eq!(d, [8., 10., 20., 22.]);
        // a^T (3x2) * [[1],[1]] = column sums... as a (3x2) stored as 2x3: [[1,4],[2,5],[3,6]] * [1,1]^T.
        let mut d = [0f32; 3];
        matmul((3, 1, 2), &mut d, Mat::T(&a), Mat::N(&[1f32, 1.]), false, 1);
        assert_eq!(d, [5., 7., 9.]);
        // a * b^T with b stored 2x3: [[1,2,3],[4,5,6]] * [[1,1,1],[0,1,0]]^T = [[6,2],[15,5]].
        let bt = [1f32, 1., 1., 0., 1., 0.];
        let mut d = [0f32; 4];
        matmul((2, 2, 3), &mut d, Mat::N(&a), Mat::T(&bt), false, 1);
        assert_eq!(d, [6., 2., 15., 5.]);
    }
}
