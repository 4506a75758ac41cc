//! What runner sets on a CUDA device when it opens one.
//!
//! candle allocates through cudarc with `cuMemAllocAsync`, from the device's memory pool.
//! That pool's release threshold is 0 by default: at every synchronisation (a loss read to
//! the host, a metric, the end of a step) it hands all its free memory back to the driver,
//! and the next step maps it again. PyTorch's caching allocator keeps freed blocks, and its
//! `cudaMallocAsync` backend sets the same threshold to the maximum. So does runner: freed
//! memory stays in the pool for the next allocation; the pool's size is the step's peak.
//!
//! `RUNNER_CUDA_POOL=trim` (read once) leaves the driver's default, for measuring the
//! difference on a GPU (gpu/conv-paths.sh); not a user setting.

use candle_core::Device;

/// Whether the pool keeps freed memory (the default) or `RUNNER_CUDA_POOL=trim` asked for
/// the driver's default.
pub fn keep_freed_memory() -> bool {
    static KEEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KEEP.get_or_init(|| std::env::var("RUNNER_CUDA_POOL").as_deref() != Ok("trim"))
}

/// Sets the memory pool of `device`'s GPU to keep freed memory (above). Nothing on the CPU,
/// or where the GPU has no memory pools (cudarc then allocates synchronously).
pub fn configure(device: &Device) -> candle_core::Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) if keep_freed_memory() => cuda::keep_pool(d),
        _ => Ok(()),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::cuda_backend::CudaDevice;

    pub(super) fn keep_pool(d: &CudaDevice) -> candle_core::Result<()> {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        if !ctx.has_async_alloc() {
            return Ok(());
        }
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the device is the context's own; the attribute takes a u64 (cuda docs,
        // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD), which `threshold` is.
        unsafe {
            let pool = result::device::get_mem_pool(ctx.cu_device()).map_err(candle_core::Error::wrap)?;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .map_err(candle_core::Error::wrap)
        }
    }
}
