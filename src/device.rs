//! Which device runs (`[experiment] device`), and what runner sets on a GPU when it opens
//! one.
//!
//! candle allocates through cudarc with `cuMemAllocAsync`, from the device's memory pool.
//! That pool's release threshold is 0 by default: at every synchronisation (a loss read to
//! the host, a metric, the end of a step) it hands all its free memory back to the driver,
//! and the next step maps it again. PyTorch's caching allocator keeps freed blocks, and its
//! `cudaMallocAsync` backend sets the same threshold to the maximum. So does runner: freed
//! memory stays in the pool for the next allocation; the pool's size is the step's peak.
//!
//! `RUNNER_CUDA_POOL=trim` (read when a device opens) leaves the driver's default, for measuring the
//! difference on a GPU (gpu/conv-paths.sh); not a user setting. A GPU without memory-pool
//! support (cudarc then frees synchronously) is named in a warning when it opens.
//!
//! Two more per-op host costs are removed when a GPU opens ([`gpu_setup`]):
//! - cudarc's event tracking: two CUDA events created with every allocation and destroyed
//!   with every free, which only a context with several streams uses; runner issues all of
//!   its work on the device's one stream.
//! - the dims and strides a kernel over a strided layout (a broadcast, a transposed view,
//!   every reduction) needs were uploaded from pageable host memory before each such launch
//!   (an allocation and a copy the host waits for; 481 of a ResNet-20 step's 483 uploads):
//!   they are uploaded once per distinct vector and kept (the vendored candle's
//!   `counting::cache_params`, PATCH.md).

use anyhow::Result;
use candle_core::Device;

/// `auto` picks CUDA when built with it and a GPU answers, else the CPU.
pub fn parse_device(s: &str) -> std::result::Result<DeviceChoice, String> {
    match s {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
            _ => Err(format!("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", is {s:?}")),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; a GPU's memory pool is set up as this module says.
    pub fn open(self) -> Result<Device> {
        let device = match self {
            DeviceChoice::Cpu => return Ok(Device::Cpu),
            DeviceChoice::Auto => Device::cuda_if_available(0).unwrap_or(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    anyhow::bail!("device cuda:{n} asked for, but this runner was built without CUDA (build with `--features cuda`)");
                }
                Device::new_cuda(n).map_err(|e| anyhow::anyhow!("device cuda:{n}: the GPU did not answer: {e}"))?
            }
        };
        if !device.is_cpu() {
            gpu_setup();
        }
        // Not fatal: the GPU works with the driver's default pool, only slower.
        if let Err(e) = configure(&device) {
            tracing::warn!("device {}: could not set its memory pool to keep freed memory: {e}", device_name(&device));
        }
        Ok(device)
    }
}

/// `cpu`, or `cuda:N` with the GPU's ordinal (`metal:N`): what the run folder records.
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Whether `device` can run `precision = "bf16"`: the CPU can (it rounds around its f32
/// kernels); a GPU needs compute capability 8.0 or newer, for cuDNN's bf16 convolutions and
/// candle's bf16 kernels (compiled for 8.0 and up). An error names the GPU and what to do.
pub fn check_bf16(device: &Device) -> std::result::Result<(), String> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => match d.cuda_stream().context().compute_capability() {
            Ok(cap) => bf16_refusal(&device_name(device), cap).map_or(Ok(()), Err),
            Err(e) => Err(format!("{}: could not read its compute capability: {e}", device_name(device))),
        },
        _ => Ok(()),
    }
}

/// The refusal of bf16 on a GPU of compute capability `(major, minor)`, if it is one.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the CUDA build's and the tests'
fn bf16_refusal(name: &str, (major, minor): (i32, i32)) -> Option<String> {
    (major < 8).then(|| {
        format!(
            "precision = \"bf16\" needs a GPU of compute capability 8.0 or newer (A100, RTX 30xx, H100); \
             {name} is {major}.{minor}: set [experiment] precision = \"f32\""
        )
    })
}

/// The settings of a GPU that are the process's, not the device's (the module's docs):
/// called when a GPU opens, and by runner-bench's `--count`, which counts the GPU's step as
/// runner sets it up.
pub fn gpu_setup() {
    candle_core::counting::cache_params(true);
}

/// Sets up `device`'s GPU as the module's docs say: event tracking off, and its memory
/// pool keeping freed memory unless `RUNNER_CUDA_POOL=trim`. Nothing on the CPU; a GPU
/// without memory pools (cudarc then allocates synchronously) is named in a warning.
fn configure(device: &Device) -> candle_core::Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            // SAFETY: events are only needed to order work across streams; runner issues all
            // of its work on this device's one stream (module docs).
            unsafe { d.disable_event_tracking() };
            if !d.cuda_stream().context().has_async_alloc() {
                tracing::warn!(
                    "device {}: no memory-pool support (cuMemAllocAsync): every free waits for the GPU, which slows each step",
                    device_name(device)
                );
                return Ok(());
            }
            if std::env::var("RUNNER_CUDA_POOL").as_deref() == Ok("trim") {
                return Ok(());
            }
            cuda::keep_pool(d)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(parse_device("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        let e = parse_device("gpu").unwrap_err();
        assert!(e.contains("\"cuda:N\"") && e.contains("\"gpu\""), "{e}");
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(device_name(&Device::Cpu), "cpu");
        // bf16: the CPU always; a GPU from compute capability 8.0 (a V100 is 7.0, a T4 7.5).
        assert_eq!(check_bf16(&Device::Cpu), Ok(()));
        assert_eq!(bf16_refusal("cuda:0", (8, 0)), None);
        assert_eq!(bf16_refusal("cuda:0", (9, 0)), None);
        let e = bf16_refusal("cuda:1", (7, 5)).unwrap();
        assert!(e.contains("cuda:1 is 7.5") && e.contains("precision = \"f32\""), "{e}");
        // Without the `cuda` feature (as built here), asking for CUDA is a clear error.
        if !candle_core::utils::cuda_is_available() {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
