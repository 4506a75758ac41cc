//! Tensor operations for the model graph with exact gradients, fast on the CPU.
//!
//! CPU kernels are candle custom ops (forward and backward); on other devices each op falls
//! back to a formulation from candle's own ops, so one graph runs everywhere.

/// Defines `$name`, which runs `$body` compiled for AVX2 where the CPU has it. The crate is
/// built for baseline x86-64, whose 4-wide SSE leaves half of each vector unit idle in the
/// element-wise kernels (gemm picks its own kernels at run time already).
macro_rules! with_avx2 {
    ($vis:vis $name:ident = $body:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $vis fn $name<T: Elem>($($arg: $ty),*) $(-> $ret)? {
            variant!("avx2", std::arch::is_x86_feature_detected!("avx2"), $body($($arg: $ty),*) $(-> $ret)?);
            $body($($arg),*)
        }
    };
}

/// [`with_avx2`], and compiled for AVX-512 too, taken where the kernels run at that level
/// (`kernels::level()`): for the kernels whose wider variant pays. Only where `$body`'s
/// sums run in an order its source fixes (no reduction the compiler may reorder: it may
/// not, without fast-math), so both variants give the same bits.
macro_rules! with_avx512 {
    ($vis:vis $name:ident = $body:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $vis fn $name<T: Elem>($($arg: $ty),*) $(-> $ret)? {
            // The level is AVX-512 only where the CPU has AVX-512F.
            variant!(
                "avx512f",
                $crate::ops::kernels::level() == $crate::ops::kernels::Level::Avx512,
                $body($($arg: $ty),*) $(-> $ret)?
            );
            variant!("avx2", std::arch::is_x86_feature_detected!("avx2"), $body($($arg: $ty),*) $(-> $ret)?);
            $body($($arg),*)
        }
    };
}

/// Inside a kernel's dispatcher: returns `$body` compiled with the target `$feature` when
/// `$has` (which must hold only where the CPU has the feature).
macro_rules! variant {
    ($feature:literal, $has:expr, $body:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        if $has {
            #[target_feature(enable = $feature)]
            unsafe fn compiled<T: Elem>($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            // SAFETY: the CPU has the feature, checked just above.
            return unsafe { compiled($($arg),*) };
        }
    };
}

/// A three-input kernel over f32 or f64 CPU storage: binds the three contiguous slices to
/// `a, b, c` and wraps `body`'s Vec back into storage; `what` names the op in the error for
/// mixed or other dtypes.
macro_rules! dispatch3 {
    ($what:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, $s3:expr, $l3:expr, |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            (candle_core::CpuStorage::F32(_), candle_core::CpuStorage::F32(_), candle_core::CpuStorage::F32(_)) => {
                let ($a, $b, $c) = (
                    $crate::ops::contiguous::<f32>($s1, $l1)?,
                    $crate::ops::contiguous::<f32>($s2, $l2)?,
                    $crate::ops::contiguous::<f32>($s3, $l3)?,
                );
                candle_core::CpuStorage::F32($body)
            }
            (candle_core::CpuStorage::F64(_), candle_core::CpuStorage::F64(_), candle_core::CpuStorage::F64(_)) => {
                let ($a, $b, $c) = (
                    $crate::ops::contiguous::<f64>($s1, $l1)?,
                    $crate::ops::contiguous::<f64>($s2, $l2)?,
                    $crate::ops::contiguous::<f64>($s3, $l3)?,
                );
                candle_core::CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{} supports f32 and f64 tensors of one dtype", $what),
        }
    };
}

pub mod activation;
pub mod batchnorm;
pub mod bias;
pub mod conv;
mod conv_dev;
mod cudnn;
pub mod fused;
pub mod gemm;
#[cfg(test)]
mod gpu_counts;
pub mod kernels;
pub mod linear;
pub mod pixel_ce;
pub mod pool;
mod strided;
#[cfg(test)]
pub mod testing;
pub mod upsample;
mod winograd;

use std::cell::Cell;

use candle_core::{CpuStorage, Layout, Result};

/// Whether ops on `t` run on runner's CPU kernels: on the CPU, except while
/// `candle_core::counting` counts, when the CPU runs the sequence of ops a GPU runs (each
/// op's other-device branch) so that its launches, copies and syncs can be counted.
pub fn cpu_kernels(t: &candle_core::Tensor) -> bool {
    cpu_kernels_on(t.device())
}

/// [`cpu_kernels`] for tensors on `device`.
pub fn cpu_kernels_on(device: &candle_core::Device) -> bool {
    device.is_cpu() && !candle_core::counting::enabled()
}

/// Element types the CPU kernels support.
pub trait Elem:
    Copy + Default + Send + Sync + 'static + std::ops::AddAssign + PartialOrd + gemm::num_one::One + candle_core::WithDType
{
}
impl Elem for f32 {}
impl Elem for f64 {}

/// A bf16 product (convolution, transposed convolution, matrix product) on the CPU, whose
/// kernels take f32 and f64: `op` runs in f32 on the bf16 values and its output is rounded
/// to bf16. The product of two bf16 numbers is exact in f32 and a GPU's bf16 kernels sum in
/// f32, so this gives what they give up to the order of the sums (a bias the caller passes
/// in f32 is added before the one rounding). Other dtypes and devices go to `op` as they
/// are; a bf16 operand beside one of another dtype is an error, as on a GPU.
pub(crate) fn bf16_via_f32(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
    op: impl FnOnce(&candle_core::Tensor, &candle_core::Tensor) -> Result<candle_core::Tensor>,
) -> Result<candle_core::Tensor> {
    use candle_core::DType::{BF16, F32};
    if (a.dtype() != BF16 && b.dtype() != BF16) || !a.device().is_cpu() {
        return op(a, b);
    }
    if a.dtype() != b.dtype() {
        candle_core::bail!("a bf16 product of {:?} by {:?}: both operands must be bf16", a.dtype(), b.dtype());
    }
    op(&a.to_dtype(F32)?, &b.to_dtype(F32)?)?.to_dtype(BF16)
}

/// Keeps freed memory in the process instead of returning it to the kernel after every
/// step: glibc serves large blocks with mmap and unmaps them on free, so each training step
/// paid for page faults on every fresh activation and gradient (23% of a LeNet5 step; 45%
/// of a yolo_shapes step, whose 52 MB activations were above the largest mmap threshold
/// glibc accepts, 32 MB: `M_MMAP_THRESHOLD = 1 GiB` was refused). No block is mmapped and
/// the heap is never trimmed: the process keeps its peak, as PyTorch's caching allocator.
/// Call it before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        // One arena for every thread: the steps run on a pool thread (`on_pool`), and
        // glibc's per-thread arenas grow and shrink their heaps with page-table changes
        // that interrupt every core (conv2d_backward, 2 threads: 870 -> 455 images/s).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's kernels on one thread (`ops::threads()` answers 1).
pub(crate) fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether the calling thread runs its kernels serially (inside a slice of a batch that `step::forward_backward` runs beside others).
pub(crate) fn in_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// Threads the kernels split work over: candle's setting (`RAYON_NUM_THREADS` /
/// `CANDLE_NUM_THREADS`, else every core); 1 inside a slice of a batch that
/// `step::forward_backward` runs beside others.
pub fn threads() -> usize {
    if in_serial() {
        return 1;
    }
    candle_core::utils::get_num_threads().max(1)
}

/// Runs `f` on a worker of a pool of `threads()` threads. The kernels' parallel loops then
/// start from a worker, which keeps half the work and hands the other half over; called
/// from a thread outside the pool, every loop (dozens per LeNet5 step) sent its work to the
/// pool and put the caller to sleep until it was done: two thread switches per op, which
/// ate the second thread's gain (lenet5_train 15.5k images/s with 1 thread, 11.8-16.3k
/// with 2).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new().num_threads(threads()).build() {
        Ok(pool) => pool.install(f),
        // No threads to be had (a resource limit): run here, on the global pool.
        Err(_) => f(),
    }
}

/// Splits the batch across threads when it has at least as many samples as threads;
/// otherwise runs samples in turn and lets gemm use the threads.
pub(crate) fn plan_threads(n: usize) -> (bool, usize) {
    let t = threads();
    if n >= t {
        (true, 1)
    } else {
        (false, t)
    }
}

/// `f(samples)` over fixed chunks of a batch of `n`, one per thread, summed element-wise in
/// a fixed order: the same result on every run with the same thread count (rayon's own
/// reduce splits work as it is stolen, which changes the order of additions).
pub(crate) fn sum_over_batch<T: Elem>(n: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let chunk = n.div_ceil(threads()).max(1);
    let partials: Vec<Vec<T>> =
        (0..n.div_ceil(chunk)).into_par_iter().map(|p| f(p * chunk..((p + 1) * chunk).min(n))).collect();
    let mut parts = partials.into_iter();
    let mut total = parts.next().unwrap_or_default();
    for p in parts {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Whether an element-wise pass over `len` values is worth handing to the thread pool:
/// handing work over costs microseconds, and with one thread it buys nothing.
pub fn parallel(len: usize) -> bool {
    len >= 1 << 17 && threads() > 1
}

/// The contiguous data of two CPU tensors of type `T`.
pub fn cpu_slices<'a, T: Elem>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a [T], &'a [T])> {
    Ok((contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?))
}

pub fn contiguous<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("runner ops expect contiguous tensors"),
    }
}
