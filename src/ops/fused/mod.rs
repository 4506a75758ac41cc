//! runner's own GPU kernels (`fused.cu`, compiled to PTX by build.rs in a CUDA build):
//! one launch each where candle's ops took several. Batch norm's training forward (the
//! statistics, then the normalisation with a fused (leaky) ReLU: 2 launches, was ~15) and
//! backward (the per-channel sums, then the input gradient: 2, was ~35), ReLU and add +
//! ReLU forward and backward (1 each; candle's ReLU backward is 4 launches and a memset),
//! max and average pooling forward and backward (1 each, any kernel, stride, padding and
//! `ceil_mode`; AlexNet's overlapping 3x3 windows took ~25 ops and 12 uploads each way),
//! and the optimizers' updates (1 per parameter; SGD with momentum and weight decay was 6
//! and a copy, Adam 14).
//!
//! Each op's CPU forward is its reference, which the tests compare with runner's CPU
//! kernels; on the GPU the kernel runs. While `candle_core::counting` counts, the CPU
//! runs the reference and the count records the kernel's launches ([`declare_costs`]), so
//! `runner-bench --count` gives what the GPU issues. f32 on a GPU; the references also
//! take f64 (tests).

use candle_core::counting::{self, Cost};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use super::batchnorm;
use super::contiguous;

/// Whether `x`'s ops take these kernels: f32 on a GPU of a CUDA build, or while counting
/// (which runs the CPU references and counts the kernels).
pub fn applies(x: &Tensor) -> bool {
    let on_gpu = cfg!(feature = "cuda") && x.device().is_cuda();
    x.dtype() == DType::F32 && (on_gpu || counting::enabled()) && std::env::var_os("RUNNER_NO_FUSED").is_none()
}

/// While counting: records `cost` for the GPU's kernel `op` and runs `reference`, its CPU
/// twin, uncounted (an update that reaches the GPU without a candle op).
pub fn counted_as<R>(op: &str, cost: Cost, reference: impl FnOnce() -> R) -> R {
    counting::add_op(op, cost);
    counting::paused(reference)
}

/// Declares to the counter what each op below issues on the GPU per call, where that is
/// not one launch and one output.
fn declare_costs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Two kernels (the per-channel sums, then dx) into one output.
        counting::declare(BN_GRAD, Cost::launch(2, 1));
    });
}

const BN_STATS: &str = "runner-fused-bn-stats";
const BN_TRAIN: &str = "runner-fused-bn-train";
const BN_GRAD: &str = "runner-fused-bn-grad";

/// The contiguous data of `t`'s CPU storage, read without the counter seeing a copy (an
/// operand a CPU reference needs beside its inputs).
fn cpu_values(t: &Tensor) -> Result<Vec<f64>> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s @ CpuStorage::F32(_)) => Ok(contiguous::<f32>(s, layout)?.iter().map(|&v| v as f64).collect()),
        Storage::Cpu(s @ CpuStorage::F64(_)) => Ok(contiguous::<f64>(s, layout)?.to_vec()),
        _ => candle_core::bail!("runner fused op: expected an f32 or f64 CPU tensor"),
    }
}

/// The `(mean, var)` pairs of a `[2, c]` statistics tensor on the CPU.
fn cpu_stats(stats: &Tensor) -> Result<Vec<(f64, f64)>> {
    let v = cpu_values(stats)?;
    let c = v.len() / 2;
    Ok((0..c).map(|ch| (v[ch], v[c + ch])).collect())
}

/// The batch's per-channel mean and biased variance, `[2, c]` f64 (no gradient), as the
/// CPU's statistics op gives them: the same statistics reach both paths' normalisation.
struct BnStats;

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        BN_STATS
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = batchnorm::dims(l)?;
        let flat = |st: Vec<(f64, f64)>| st.iter().map(|p| p.0).chain(st.iter().map(|p| p.1)).collect::<Vec<f64>>();
        let out = match s {
            CpuStorage::F32(_) => flat(batchnorm::stats(contiguous::<f32>(s, l)?, d)),
            CpuStorage::F64(_) => flat(batchnorm::stats(contiguous::<f64>(s, l)?, d)),
            _ => candle_core::bail!("{BN_STATS} supports f32 and f64"),
        };
        let out = CpuStorage::F64(out);
        Ok((out, Shape::from((2, d.1))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, hw) = batchnorm::dims(l)?;
        let out = gpu::bn_stats(s, l, (n, c, hw))?;
        Ok((out, Shape::from((2, c))))
    }
}

/// `(x, gamma, beta) -> y` with the batch statistics `stats` (`[2, c]`, computed first);
/// `act`: a fused ReLU (slope 0) or leaky ReLU.
struct BnTrain {
    eps: f64,
    act: Option<f64>,
    stats: Tensor,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        BN_TRAIN
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
        batchnorm::train_storage(BN_TRAIN, [(s1, l1), (s2, l2), (s3, l3)], &cpu_stats(&self.stats)?, self.eps, self.act)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = batchnorm::dims(l1)?;
        let (stats, sl) = self.stats.storage_and_layout();
        let Storage::Cuda(st) = &*stats else { candle_core::bail!("{BN_TRAIN}: statistics off the GPU") };
        let y = gpu::bn_train([(s1, l1), (st, sl), (s2, l2), (s3, l3)], d, self.eps, self.act)?;
        Ok((y, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BnGrad { eps: self.eps, act: self.act, stats: self.stats.clone(), beta: beta.detach() };
        let all = x.apply_op3_no_bwd(gamma, &dy.contiguous()?, &op)?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = all.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = all.narrow(0, len, c)?;
        let dbeta = all.narrow(0, len + c, c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, gamma, dy) -> [dx (flattened) ++ dgamma ++ dbeta]`, split by the caller; `beta`
/// for the fused activation's mask.
struct BnGrad {
    eps: f64,
    act: Option<f64>,
    stats: Tensor,
    beta: Tensor,
}

impl CustomOp3 for BnGrad {
    fn name(&self) -> &'static str {
        BN_GRAD
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
        let beta = match self.act {
            Some(_) => Some(cpu_values(&self.beta)?),
            None => None,
        };
        let act = self.act.map(|s| (beta.as_deref().unwrap_or_default(), s));
        batchnorm::grad_storage(BN_GRAD, [(s1, l1), (s2, l2), (s3, l3)], &cpu_stats(&self.stats)?, self.eps, act)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = batchnorm::dims(l1)?;
        let (stats, sl) = self.stats.storage_and_layout();
        let (beta, bl) = self.beta.storage_and_layout();
        let (Storage::Cuda(st), Storage::Cuda(b)) = (&*stats, &*beta) else {
            candle_core::bail!("{BN_GRAD}: statistics or beta off the GPU")
        };
        let out = gpu::bn_grad([(s1, l1), (s3, l3), (st, sl), (s2, l2), (b, bl)], d, self.eps, self.act)?;
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * d.1)))
    }
}

/// Batch norm in training mode with its statistics on the device, `act` fused after it:
/// `(y, mean, var)` as `batchnorm::batch_norm_train` gives them (the statistics `[c]` f64,
/// no gradient). Two launches forward, two backward.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<f64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    declare_costs();
    let x = x.contiguous()?;
    let stats = x.detach().apply_op1_no_bwd(&BnStats)?;
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnTrain { eps, act, stats: stats.clone() })?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}

/// Batch norm's running statistics updated in place on the GPU (one launch): see
/// `batchnorm::update_running`, whose candle ops are the reference.
pub fn update_running(
    rm: &Tensor,
    rv: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    keep: f64,
    momentum: f64,
    unbias: f64,
) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        gpu::running(rm, rv, &mean.contiguous()?, &var.contiguous()?, keep as f32, momentum as f32, unbias)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (rm, rv, mean, var, keep, momentum, unbias);
        candle_core::bail!("runner's fused running statistics run on a GPU of a CUDA build")
    }
}

/// One SGD update of `p` in place by gradient `g` (`buf`: the momentum buffer, which the
/// kernel writes; zeros before the first step): `torch.optim.SGD`'s rule, as optim.rs's.
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    wd: f64,
    nesterov: bool,
    first: bool,
) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let args = gpu::SgdArgs {
            lr: lr as f32,
            momentum: momentum as f32,
            omd: (1.0 - dampening) as f32,
            wd: wd as f32,
            nesterov: nesterov as i32,
            first: first as i32,
        };
        gpu::sgd(p, &g.contiguous()?, buf, args)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (p, g, buf, lr, momentum, dampening, wd, nesterov, first);
        candle_core::bail!("runner's fused SGD update runs on a GPU of a CUDA build")
    }
}

/// One Adam (or AdamW) update of `p` in place by gradient `g`; `m` and `v` (zeros before
/// the first step) are written by the kernel. `decay`: AdamW's `1 - lr wd` (else 1);
/// `wd_l2`: Adam's weight decay added to the gradient.
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    t: u64,
    lr: f64,
    [b1, b2]: [f64; 2],
    eps: f64,
    decay: f64,
    wd_l2: f64,
) -> Result<()> {
    let t = t as i32;
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    #[cfg(feature = "cuda")]
    {
        let args = gpu::AdamArgs {
            decay: decay as f32,
            wd_l2: wd_l2 as f32,
            b1: b1 as f32,
            omb1: (1.0 - b1) as f32,
            b2: b2 as f32,
            omb2: (1.0 - b2) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
        };
        gpu::adam(p, &g.contiguous()?, m, v, args)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (p, g, m, v, lr, eps, decay, wd_l2, bc1, bc2);
        candle_core::bail!("runner's fused Adam update runs on a GPU of a CUDA build")
    }
}

#[cfg(feature = "cuda")]
pub(super) mod gpu;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batchnorm::{batch_norm_leaky_train, batch_norm_relu_train, batch_norm_train as cpu_train};
    use crate::ops::testing::rand_tensor;
    use candle_core::Var;

    /// The fused batch norm's CPU references are the CPU kernel's own functions on the same
    /// f64 statistics: its outputs, statistics and gradients equal the CPU kernel's bit for
    /// bit, in f32 and f64, without activation, with ReLU and leaky ReLU.
    #[test]
    fn fused_batch_norm_references_equal_the_cpu_kernel() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&rand_tensor(&[3, 4, 5, 6], 21, dtype)).unwrap();
            let g = Var::from_tensor(&rand_tensor(&[4], 22, dtype)).unwrap();
            let b = Var::from_tensor(&rand_tensor(&[4], 23, dtype)).unwrap();
            let r = rand_tensor(&[3, 4, 5, 6], 24, dtype);
            for act in [None, Some(0.0), Some(0.1)] {
                let run = |fused: bool| -> Vec<Vec<f64>> {
                    let (y, mean, var) = match (fused, act) {
                        (true, _) => batch_norm_train(&x, &g, &b, 1e-5, act).unwrap(),
                        (false, None) => cpu_train(&x, &g, &b, 1e-5).unwrap(),
                        (false, Some(0.0)) => batch_norm_relu_train(&x, &g, &b, 1e-5).unwrap(),
                        (false, Some(s)) => batch_norm_leaky_train(&x, &g, &b, 1e-5, s).unwrap(),
                    };
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                    vec![
                        flat(&y),
                        flat(&mean),
                        flat(&var),
                        flat(grads.get(&x).unwrap()),
                        flat(grads.get(&g).unwrap()),
                        flat(grads.get(&b).unwrap()),
                    ]
                };
                let (fused, kernel) = (run(true), run(false));
                for (what, (p, q)) in
                    ["y", "mean", "var", "dx", "dgamma", "dbeta"].iter().zip(fused.iter().zip(&kernel))
                {
                    assert_eq!(p, q, "{dtype:?} {act:?}: {what}");
                }
            }
        }
    }

    /// What the GPU issues for them, as counted: batch norm forward = the statistics and the
    /// normalisation (2 launches, 2 outputs), backward = 2 launches into one output.
    #[test]
    fn fused_batch_norm_counts_two_launches_each_way() {
        let x = Var::from_tensor(&rand_tensor(&[2, 3, 4, 4], 1, DType::F32)).unwrap();
        let (g, b) = (rand_tensor(&[3], 2, DType::F32), rand_tensor(&[3], 3, DType::F32));
        counting::start();
        let y = batch_norm_train(&x, &g, &b, 1e-5, Some(0.0)).unwrap().0;
        let forward = counting::take().total();
        let loss = y.sum_all().unwrap();
        counting::take();
        let grads = loss.backward().unwrap();
        let backward = counting::stop();
        assert_eq!(forward, Cost::launch(2, 2));
        assert_eq!(backward.by_op["custom:runner-fused-bn-grad"], (1, Cost::launch(2, 1)), "{:?}", backward.by_op);
        assert!(grads.get(&x).is_some());
    }
}
