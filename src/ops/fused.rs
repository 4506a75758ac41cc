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
        let (d, st) = (batchnorm::dims(l1)?, cpu_stats(&self.stats)?);
        let (eps, act) = (self.eps, self.act);
        Ok((
            dispatch3!(BN_TRAIN, s1, l1, s2, l2, s3, l3, |x, g, b| batchnorm::forward(x, g, b, d, &st, eps, act)),
            l1.shape().clone(),
        ))
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
        let (d, st) = (batchnorm::dims(l1)?, cpu_stats(&self.stats)?);
        let beta = match self.act {
            Some(_) => Some(cpu_values(&self.beta)?),
            None => None,
        };
        let (eps, act) = (self.eps, self.act.map(|s| (beta.as_deref().unwrap_or_default(), s)));
        let total = l1.shape().elem_count() + 2 * d.1;
        let out = dispatch3!(BN_GRAD, s1, l1, s2, l2, s3, l3, |x, g, dy| {
            let (mut dx, dg, db) = batchnorm::backward(x, g, dy, d, &st, eps, act);
            dx.extend(dg);
            dx.extend(db);
            dx
        });
        Ok((out, Shape::from(total)))
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
pub(super) mod gpu {
    //! Launching `fused.cu`'s kernels on candle's CUDA storages.

    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    /// Threads per block of the element-wise kernels.
    const BLOCK: u32 = 256;
    /// Threads per block of the per-channel kernels, as `CHANNEL_BLOCK` in fused.cu.
    const CHANNEL_BLOCK: u32 = 1024;

    /// The kernel `name` of fused.cu on `dev` (loaded with the module on first use).
    macro_rules! func {
        ($dev:expr, $name:expr) => {
            $dev.get_or_load_custom_func($name, "runner_fused", PTX)?
        };
    }

    /// Launches `f` with `cfg` and the arguments in the kernel's order (each a reference
    /// to a view, a buffer or a scalar of the parameter's exact type). The caller states
    /// what the kernel reads and writes (its SAFETY comment).
    macro_rules! launch {
        ($f:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
            let mut b = $f.builder();
            $(b.arg($arg);)+
            // SAFETY: the kernel's parameters are the arguments above in order and type;
            // what it reads and writes is stated at the call.
            unsafe { b.launch($cfg) }.w()?;
        }};
    }

    /// A grid-stride launch over `total` elements.
    fn elementwise(total: usize) -> LaunchConfig {
        let blocks = total.div_ceil(BLOCK as usize).clamp(1, 65535) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block per channel.
    fn per_channel(c: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (c as u32, 1, 1), block_dim: (CHANNEL_BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// The per-channel kernels count a channel's `n * hw` values in 32 bits.
    fn channel_size(n: usize, hw: usize) -> Result<()> {
        if n * hw >= 1 << 31 {
            candle_core::bail!("runner fused batch norm: {n} x {hw} values per channel, over 2^31");
        }
        Ok(())
    }

    /// The values of a contiguous layout of `s` (f32, or f64 for batch norm's statistics).
    fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("runner fused kernels expect contiguous tensors")
        };
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// The values of a contiguous tensor on the GPU, for a kernel to read or (in place)
    /// write: the guard keeps the storage alive while the view is in use.
    fn with_view<T: CudaDType, R>(t: &Tensor, f: impl FnOnce(CudaView<'_, T>) -> Result<R>) -> Result<R> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { candle_core::bail!("runner fused kernels: a tensor off the GPU") };
        f(view(s, layout)?)
    }

    pub fn bn_stats(s: &CudaStorage, l: &Layout, (n, c, hw): (usize, usize, usize)) -> Result<CudaStorage> {
        channel_size(n, hw)?;
        let dev = &s.device;
        let x = view::<f32>(s, l)?;
        let out: CudaSlice<f64> = unsafe { dev.alloc::<f64>(2 * c)? };
        let (n, ci, hw) = (n as i32, c as i32, hw as i32);
        let f = func!(dev, "runner_bn_stats_f32");
        // The kernel reads n * c * hw values of x and writes 2c of out.
        launch!(f, per_channel(c), &x, &out, &n, &ci, &hw);
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    /// `[x, stats, gamma, beta]` -> y.
    pub fn bn_train(
        ops: [(&CudaStorage, &Layout); 4],
        (n, c, hw): (usize, usize, usize),
        eps: f64,
        act: Option<f64>,
    ) -> Result<CudaStorage> {
        let dev = &ops[0].0.device;
        let (x, g, be) =
            (view::<f32>(ops[0].0, ops[0].1)?, view::<f32>(ops[2].0, ops[2].1)?, view::<f32>(ops[3].0, ops[3].1)?);
        let st = view::<f64>(ops[1].0, ops[1].1)?;
        let total = n * c * hw;
        let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let (total_l, ci, hwi) = (total as i64, c as i32, hw as i32);
        let (has_act, slope) = (act.is_some() as i32, act.unwrap_or(0.0) as f32);
        let f = func!(dev, "runner_bn_train_f32");
        // Reads `total` values of x, 2c of stats, c of gamma and beta; writes y.
        launch!(f, elementwise(total), &x, &st, &g, &be, &y, &total_l, &ci, &hwi, &eps, &has_act, &slope);
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }

    /// `[x, dy, stats, gamma, beta]` -> `[dx ++ dgamma ++ dbeta]`: the sums kernel writes
    /// the tail, then the dx kernel reads it.
    pub fn bn_grad(
        ops: [(&CudaStorage, &Layout); 5],
        (n, c, hw): (usize, usize, usize),
        eps: f64,
        act: Option<f64>,
    ) -> Result<CudaStorage> {
        let dev = &ops[0].0.device;
        channel_size(n, hw)?;
        let v = |i: usize| view::<f32>(ops[i].0, ops[i].1);
        let (x, dy, g, be) = (v(0)?, v(1)?, v(3)?, v(4)?);
        let st = view::<f64>(ops[2].0, ops[2].1)?;
        let total = n * c * hw;
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total + 2 * c)? };
        let (ni, ci, hwi) = (n as i32, c as i32, hw as i32);
        let (has_act, slope) = (act.is_some() as i32, act.unwrap_or(0.0) as f32);
        for (name, cfg) in [("runner_bn_grad_sums_f32", per_channel(c)), ("runner_bn_grad_dx_f32", elementwise(total))]
        {
            let f = func!(dev, name);
            // Reads x and dy (total), stats (2c), gamma and beta (c); writes out
            // (total + 2c), the second kernel after the first on the same stream.
            launch!(f, cfg, &x, &dy, &st, &g, &be, &out, &ni, &ci, &hwi, &eps, &has_act, &slope);
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    /// `max(a (+ b), 0)`.
    pub fn relu(a: (&CudaStorage, &Layout), b: Option<(&CudaStorage, &Layout)>) -> Result<CudaStorage> {
        let dev = &a.0.device;
        let x = view::<f32>(a.0, a.1)?;
        let total = a.1.shape().elem_count();
        let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let total_l = total as i64;
        let f = func!(dev, "runner_relu_f32");
        let mut builder = f.builder();
        builder.arg(&x);
        let other = match b {
            Some((s, l)) => Some(view::<f32>(s, l)?),
            None => None,
        };
        let null: u64 = 0;
        match &other {
            Some(o) => builder.arg(o),
            None => builder.arg(&null),
        };
        builder.arg(&y);
        builder.arg(&total_l);
        // SAFETY: reads `total` values of a (and b), writes y.
        unsafe { builder.launch(elementwise(total)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }

    /// `(y, dy)` -> `dy * (y > 0)`.
    pub fn relu_grad(y: (&CudaStorage, &Layout), dy: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
        let dev = &y.0.device;
        let (yv, dyv) = (view::<f32>(y.0, y.1)?, view::<f32>(dy.0, dy.1)?);
        let total = y.1.shape().elem_count();
        let dx: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let total_l = total as i64;
        let f = func!(dev, "runner_relu_grad_f32");
        // Reads `total` values of dy and y, writes dx.
        launch!(f, elementwise(total), &dyv, &yv, &dx, &total_l);
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    /// The running statistics `rm`, `rv` updated in place from the batch's `mean`, `var`.
    pub fn running(
        rm: &Tensor,
        rv: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        keep: f32,
        momentum: f32,
        unbias: f64,
    ) -> Result<()> {
        let c = rm.elem_count();
        let Some(dev) = rm.device().as_cuda_device().ok().cloned() else {
            candle_core::bail!("runner fused running statistics: off the GPU")
        };
        let f = func!(&dev, "runner_bn_running_f32");
        let ci = c as i32;
        with_view::<f32, _>(rm, |rmv| {
            with_view::<f32, _>(rv, |rvv| {
                with_view::<f64, _>(mean, |mv| {
                    with_view::<f64, _>(var, |vv| {
                        // Reads c values of mean and var, updates c of rm and rv in place.
                        launch!(f, elementwise(c), &rmv, &rvv, &mv, &vv, &ci, &keep, &momentum, &unbias);
                        Ok(())
                    })
                })
            })
        })
    }

    /// Pooling `[planes, h, w]` -> `[planes, oh, ow]` (`geom`: kernel, stride, padding).
    pub fn pool(
        x: (&CudaStorage, &Layout),
        [planes, h, w, oh, ow]: [usize; 5],
        [k, s, p]: [usize; 3],
        is_max: bool,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let xv = view::<f32>(x.0, x.1)?;
        let total = planes * oh * ow;
        let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let planes = planes as i64;
        let [h, w, oh, ow, k, s, p] = [h, w, oh, ow, k, s, p].map(|v| v as i32);
        let is_max = is_max as i32;
        let f = func!(dev, "runner_pool_f32");
        // Reads planes * h * w values of x, writes planes * oh * ow of y.
        launch!(f, elementwise(total), &xv, &y, &planes, &h, &w, &oh, &ow, &k, &s, &p, &is_max);
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }

    /// Pooling's input gradient from `x` and `dy`.
    pub fn pool_grad(
        x: (&CudaStorage, &Layout),
        dy: (&CudaStorage, &Layout),
        [planes, h, w, oh, ow]: [usize; 5],
        [k, s, p]: [usize; 3],
        is_max: bool,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let (xv, dyv) = (view::<f32>(x.0, x.1)?, view::<f32>(dy.0, dy.1)?);
        let total = planes * h * w;
        let dx: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let planes = planes as i64;
        let [h, w, oh, ow, k, s, p] = [h, w, oh, ow, k, s, p].map(|v| v as i32);
        let is_max = is_max as i32;
        let f = func!(dev, "runner_pool_grad_f32");
        // Reads x (planes * h * w) and dy (planes * oh * ow), writes dx.
        launch!(f, elementwise(total), &xv, &dyv, &dx, &planes, &h, &w, &oh, &ow, &k, &s, &p, &is_max);
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    pub struct SgdArgs {
        pub lr: f32,
        pub momentum: f32,
        pub omd: f32,
        pub wd: f32,
        pub nesterov: i32,
        pub first: i32,
    }

    /// SGD in place on `p` (and `buf`, the momentum buffer, when given).
    pub fn sgd(p: &Tensor, g: &Tensor, buf: Option<&Tensor>, a: SgdArgs) -> Result<()> {
        match buf {
            Some(buf) => with_view::<f32, _>(buf, |bv| sgd_with(p, g, Some(&bv), &a)),
            None => sgd_with(p, g, None, &a),
        }
    }

    fn sgd_with(p: &Tensor, g: &Tensor, buf: Option<&CudaView<'_, f32>>, a: &SgdArgs) -> Result<()> {
        let total = p.elem_count();
        let dev = p.device().as_cuda_device()?.clone();
        let f = func!(dev, "runner_sgd_f32");
        let total_l = total as i64;
        let null: u64 = 0;
        with_view::<f32, _>(p, |pv| {
            with_view::<f32, _>(g, |gv| {
                let mut b = f.builder();
                b.arg(&pv);
                b.arg(&gv);
                match buf {
                    Some(v) => b.arg(v),
                    None => b.arg(&null),
                };
                b.arg(&total_l);
                b.arg(&a.lr);
                b.arg(&a.momentum);
                b.arg(&a.omd);
                b.arg(&a.wd);
                b.arg(&a.nesterov);
                b.arg(&a.first);
                // SAFETY: reads g, updates p (and buf) in place, `total` values each; the
                // buffers are the optimizer's own and this parameter's.
                unsafe { b.launch(elementwise(total)) }.w()?;
                Ok(())
            })
        })
    }

    pub struct AdamArgs {
        pub decay: f32,
        pub wd_l2: f32,
        pub b1: f32,
        pub omb1: f32,
        pub b2: f32,
        pub omb2: f32,
        pub inv_bc2_sqrt: f32,
        pub eps: f32,
        pub step_size: f32,
    }

    /// Adam in place on `p`, `m` and `v`.
    pub fn adam(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, a: AdamArgs) -> Result<()> {
        let total = p.elem_count();
        let Some(dev) = p.device().as_cuda_device().ok().cloned() else {
            candle_core::bail!("runner fused Adam: off the GPU")
        };
        let f = func!(&dev, "runner_adam_f32");
        let total_l = total as i64;
        with_view::<f32, _>(p, |pv| {
            with_view::<f32, _>(g, |gv| {
                with_view::<f32, _>(m, |mv| {
                    with_view::<f32, _>(v, |vv| {
                        // Reads g, updates p, m and v in place, `total` values each.
                        launch!(
                            f,
                            elementwise(total),
                            &pv,
                            &gv,
                            &mv,
                            &vv,
                            &total_l,
                            &a.decay,
                            &a.wd_l2,
                            &a.b1,
                            &a.omb1,
                            &a.b2,
                            &a.omb2,
                            &a.inv_bc2_sqrt,
                            &a.eps,
                            &a.step_size
                        );
                        Ok(())
                    })
                })
            })
        })
    }
}

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
