//! ReLU as one pass forward and one pass backward (candle's backward is a comparison, a
//! type conversion and a product: three passes and three allocations), on the CPU and, in
//! a CUDA build, on the GPU (`fused.cu`'s kernels).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, cpu_slices, parallel, Elem};

struct Relu;
/// `(y, dy) -> dy * (y > 0)`.
struct ReluGrad;

const CHUNK: usize = 1 << 14;

/// `f` over `a` (and `b`) into a new Vec in one pass (no copy or zeroing first), split
/// across threads for large inputs.
fn map_new<T: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    if parallel(a.len()) {
        a.par_iter().zip(b).with_min_len(CHUNK).map(|(&a, &b)| f(a, b)).collect()
    } else {
        a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()
    }
}

// Selects rather than branches, so the loops vectorize.
fn relu<T: Elem>(x: &[T]) -> Vec<T> {
    map_new(x, x, |v, _| if v > T::zero() { v } else { T::zero() })
}

fn relu_grad<T: Elem>(y: &[T], dy: &[T]) -> Vec<T> {
    map_new(y, dy, |y, d| if y > T::zero() { d } else { T::zero() })
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "runner-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(relu(contiguous::<f32>(s, l)?)), l.shape().clone()),
            CpuStorage::F64(_) => (CpuStorage::F64(relu(contiguous::<f64>(s, l)?)), l.shape().clone()),
            _ => candle_core::bail!("runner relu supports f32 and f64"),
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::fused::gpu::relu((s, l), None)?, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)?))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "runner-relu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (y, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(relu_grad(y, dy)), l1.shape().clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (y, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(relu_grad(y, dy)), l1.shape().clone())
            }
            _ => candle_core::bail!("runner relu supports f32 and f64 of one dtype"),
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::fused::gpu::relu_grad((s1, l1), (s2, l2))?, l1.shape().clone()))
    }
}

/// `(a, b) -> max(a + b, 0)`: a residual sum and its ReLU in one pass, one backprop node.
struct AddRelu;

fn add_relu<T: Elem>(a: &[T], b: &[T]) -> Vec<T> {
    map_new(a, b, |a, b| if a + b > T::zero() { a + b } else { T::zero() })
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "runner-add-relu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("runner add_relu: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (a, b) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(add_relu(a, b)), l1.shape().clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (a, b) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(add_relu(a, b)), l1.shape().clone())
            }
            _ => candle_core::bail!("runner add_relu supports f32 and f64 of one dtype"),
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("runner add_relu: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        Ok((super::fused::gpu::relu((s1, l1), Some((s2, l2)))?, l1.shape().clone()))
    }
    fn bwd(&self, _a: &Tensor, _b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = y.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `max(a + b, 0)` (a residual block's sum and ReLU); the same gradient flows to both.
pub fn add_relu_op(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if (super::cpu_kernels(a) || super::fused::applies(a)) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// `max(x, 0)`; the gradient is 0 where the output is 0 (as PyTorch's).
pub fn relu_op(x: &Tensor) -> Result<Tensor> {
    if super::cpu_kernels(x) || super::fused::applies(x) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

/// `x > 0 ? x : slope * x` in one pass; its gradient `dy * (x > 0 ? 1 : slope)` in one.
struct LeakyRelu(f64);
struct LeakyReluGrad(f64);

fn leaky<T: Elem>(x: &[T], slope: f64) -> Vec<T> {
    let s = T::from_f64(slope);
    map_new(x, x, |v, _| if v > T::zero() { v } else { v * s })
}

fn leaky_grad<T: Elem>(x: &[T], dy: &[T], slope: f64) -> Vec<T> {
    let s = T::from_f64(slope);
    map_new(x, dy, |x, d| if x > T::zero() { d } else { d * s })
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "runner-leaky-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(leaky(contiguous::<f32>(s, l)?, self.0)), l.shape().clone()),
            CpuStorage::F64(_) => (CpuStorage::F64(leaky(contiguous::<f64>(s, l)?, self.0)), l.shape().clone()),
            _ => candle_core::bail!("runner leaky_relu supports f32 and f64"),
        })
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &LeakyReluGrad(self.0))?))
    }
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "runner-leaky-relu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, dy) = cpu_slices::<f32>(s1, l1, s2, l2)?;
                (CpuStorage::F32(leaky_grad(x, dy, self.0)), l1.shape().clone())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, dy) = cpu_slices::<f64>(s1, l1, s2, l2)?;
                (CpuStorage::F64(leaky_grad(x, dy, self.0)), l1.shape().clone())
            }
            _ => candle_core::bail!("runner leaky_relu supports f32 and f64 of one dtype"),
        })
    }
}

/// `x > 0 ? x : slope * x` (PyTorch's `leaky_relu`; the gradient at 0 is `slope`, as there).
pub fn leaky_relu_op(x: &Tensor, slope: f64) -> Result<Tensor> {
    if super::cpu_kernels(x) {
        x.contiguous()?.apply_op1(LeakyRelu(slope))
    } else {
        candle_nn::ops::leaky_relu(x, slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check_grads, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn relu_and_its_gradient() {
        let x = Var::new(&[-1f32, 0., 2.], &candle_core::Device::Cpu).unwrap();
        let y = relu_op(&x).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0., 0., 2.]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 1.]);
        let x = Var::from_tensor(&rand_tensor(&[3, 50], 4, DType::F64)).unwrap();
        check_grads(&[&x], |v| relu_op(v[0]), "relu");
        let y = Var::from_tensor(&rand_tensor(&[3, 50], 5, DType::F64)).unwrap();
        check_grads(&[&x, &y], |v| add_relu_op(v[0], v[1]), "add_relu");
        // By hand: relu([-1 + 0.5, 2 + (-3), 1 + 1]) = [0, 0, 2].
        let a = Tensor::new(&[-1f32, 2., 1.], &candle_core::Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -3., 1.], &candle_core::Device::Cpu).unwrap();
        assert_eq!(add_relu_op(&a, &b).unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 2.]);
    }

    #[test]
    fn leaky_relu_and_its_gradient() {
        // By hand, slope 0.1: [-2, 0, 3] -> [-0.2, 0, 3]; gradient [0.1, 0.1, 1] (PyTorch's
        // leaky_relu takes the slope's branch at 0).
        let x = Var::new(&[-2f32, 0., 3.], &candle_core::Device::Cpu).unwrap();
        let y = leaky_relu_op(&x, 0.1).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![-0.2, 0., 3.]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>().unwrap(), vec![0.1, 0.1, 1.]);
        let x = Var::from_tensor(&rand_tensor(&[3, 50], 6, DType::F64)).unwrap();
        check_grads(&[&x], |v| leaky_relu_op(v[0], 0.1), "leaky_relu");
        // The same values as candle's composition.
        let want = candle_nn::ops::leaky_relu(x.as_tensor(), 0.1).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!(leaky_relu_op(&x, 0.1).unwrap().to_vec2::<f64>().unwrap(), want);
    }
}
