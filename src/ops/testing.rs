//! Test helpers: seeded random tensors and a finite-difference gradient check in f64.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::rng::Rng;

/// Uniform in [-1, 1) from `seed`.
pub fn rand_tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.next_f64() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// A convolution by its definition, in f64: `x [n][c][h][w]`, `wt [o][c][kh][kw]`, stride
/// `s`, padding `p` (0 outside the input) -> `[n][o][oh][ow]`. The reference of the Winograd
/// and strided kernels' tests.
pub fn conv_by_definition(
    x: &[f64],
    wt: &[f64],
    [n, c, h, w]: [usize; 4],
    [o, kh, kw]: [usize; 3],
    s: usize,
    p: usize,
) -> Vec<f64> {
    let (oh, ow) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
    let mut y = vec![0.0; n * o * oh * ow];
    for ni in 0..n {
        for k in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0;
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = ((oy * s + i) as isize - p as isize, (ox * s + j) as isize - p as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    sum += x[((ni * c + ci) * h + iy as usize) * w + ix as usize]
                                        * wt[((k * c + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    y[((ni * o + k) * oh + oy) * ow + ox] = sum;
                }
            }
        }
    }
    y
}

/// Compares the backward pass of `f` with central differences of `L = sum(f(vars) * R)`
/// for a fixed random `R`, on up to 40 elements of each variable. Vars must be f64.
pub fn check_grads(vars: &[&Var], f: impl Fn(&[&Tensor]) -> Result<Tensor>, what: &str) {
    let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let y = f(&tensors).unwrap();
    let r = rand_tensor(y.dims(), 99, DType::F64);
    let loss =
        |vs: &[&Tensor]| -> f64 { (f(vs).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() };
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    for (vi, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var)
            .unwrap_or_else(|| panic!("{what}: no gradient for input {vi}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let step = (base.len() / 40).max(1);
        for i in (0..base.len()).step_by(step) {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                let mut ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                ts[vi] = t;
                let refs: Vec<&Tensor> = ts.iter().collect();
                loss(&refs)
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (numeric - analytic[i]).abs();
            assert!(
                err <= 1e-6 * (1.0 + numeric.abs()),
                "{what}: input {vi} element {i}: analytic {} vs numeric {numeric}",
                analytic[i]
            );
        }
    }
}

/// Asserts that `a` and `b` give `x` the same values and the same gradient of `sum(y * r)`
/// (a fixed random `r`) to within `tol`: a CPU kernel against its composition of candle ops.
pub fn same_values_and_grads(
    x: &Tensor,
    a: impl Fn(&Tensor) -> Result<Tensor>,
    b: impl Fn(&Tensor) -> Result<Tensor>,
    tol: f64,
    what: &str,
) {
    let x = Var::from_tensor(x).unwrap();
    let ya = a(x.as_tensor()).unwrap();
    let r = rand_tensor(ya.dims(), 5, DType::F64).to_dtype(ya.dtype()).unwrap();
    let ga = (&ya * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let yb = b(x.as_tensor()).unwrap();
    let gb = (&yb * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let max_diff = |p: &Tensor, q: &Tensor| {
        (p - q).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    };
    let d = max_diff(&ya, &yb);
    assert!(d < tol, "{what}: values differ by {d}");
    let d = max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap());
    assert!(d < tol, "{what}: gradients differ by {d}");
}
