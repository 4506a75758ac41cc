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
    for (name, cfg) in [("runner_bn_grad_sums_f32", per_channel(c)), ("runner_bn_grad_dx_f32", elementwise(total))] {
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
