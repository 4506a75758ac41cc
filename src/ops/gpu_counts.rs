//! The counting mode (`candle_core::counting`, runner-bench `--count`) against hand counts
//! read off candle 0.11.1's CUDA backend (`vendor/candle-core/src/cuda_backend/mod.rs`):
//! what each op launches, uploads, reads back and allocates there.

use candle_core::counting::{self, Cost, Counts};
use candle_core::{DType, Device, Tensor};

use super::conv::ConvGeom;

/// The counts of `f`, run with counting on (this thread only).
fn counted(f: impl FnOnce()) -> Counts {
    counting::start();
    f();
    counting::stop()
}

fn ones(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn each_op_as_candles_cuda_backend_issues_it() {
    let (x, b) = (ones(&[2, 3]), ones(&[3]));
    // unary_impl on a contiguous layout: one kernel, one output, no dims uploaded.
    let c = counted(|| drop(x.relu().unwrap())).total();
    assert_eq!(c, Cost { launches: 1, allocs: 1, ..Cost::default() });
    // A broadcast operand is strided (stride 0): the binary kernel uploads dims and both
    // strides (one allocation, one copy) besides its output.
    let c = counted(|| drop(x.broadcast_add(&b).unwrap())).total();
    assert_eq!(c, Cost { launches: 1, h2d: 1, h2d_params: 1, allocs: 2, ..Cost::default() });
    // A reduction always uploads its dims and strides (FastReduce).
    let c = counted(|| drop(x.sum_keepdim(1).unwrap())).total();
    assert_eq!(c, Cost { launches: 1, h2d: 1, h2d_params: 1, allocs: 2, ..Cost::default() });
    // mean = a sum and an affine; reading the scalar back is one device-to-host copy.
    let c = counted(|| {
        x.mean_all().unwrap().to_scalar::<f32>().unwrap();
    })
    .total();
    assert_eq!(c, Cost { launches: 2, h2d: 1, h2d_params: 1, d2h: 1, allocs: 3, ..Cost::default() });
    // Tensor::from_slice on the device: one allocation, one upload of the data.
    let c = counted(|| drop(Tensor::from_slice(&[1f32, 2.], 2, &Device::Cpu).unwrap())).total();
    assert_eq!(c, Cost { h2d: 1, allocs: 1, ..Cost::default() });
    // zeros: an allocation and a memset; ones: an allocation and a fill kernel.
    let c = counted(|| drop(Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap())).total();
    assert_eq!(c, Cost { memsets: 1, allocs: 1, ..Cost::default() });
    let c = counted(|| drop(ones(&[4]))).total();
    assert_eq!(c, Cost { launches: 1, allocs: 1, ..Cost::default() });
    // conv2d without cuDNN (2 output channels): im2col (its kernel, the column buffer, the
    // input's dims uploaded), cuBLAS's product (its output), and the NHWC -> NCHW copy into
    // a new output (the layout uploaded): 3 launches, 2 uploads, 5 allocations.
    let (img, w) = (ones(&[1, 1, 4, 4]), ones(&[2, 1, 3, 3]));
    let c = counted(|| drop(super::conv::conv2d(&img, &w, ConvGeom::default()).unwrap())).total();
    assert_eq!(c, Cost { launches: 3, h2d: 2, h2d_params: 2, allocs: 5, ..Cost::default() });
}

#[test]
fn cached_dims_are_uploaded_once() {
    let (x, b) = (ones(&[2, 3]), ones(&[3]));
    counting::cache_params(true);
    let c = counted(|| {
        for _ in 0..3 {
            drop(x.broadcast_add(&b).unwrap());
        }
    })
    .total();
    counting::cache_params(false);
    // Three launches and outputs; the dims and strides uploaded the first time only.
    assert_eq!(c, Cost { launches: 3, h2d: 1, h2d_params: 1, allocs: 4, ..Cost::default() });
}

#[test]
fn counting_takes_the_gpu_branch_on_its_thread_only() {
    // A convolution on the CPU is runner's custom op; counting, it is what the plain CUDA
    // build runs, candle's conv2d (im2col and a product), and no custom op runs.
    let (x, w) = (ones(&[1, 2, 6, 6]), ones(&[3, 2, 3, 3]));
    let conv = || super::conv::conv2d(&x, &w, ConvGeom::default()).unwrap();
    let counts = counted(|| {
        assert!(!super::cpu_kernels(&x));
        // Another thread meanwhile keeps the CPU kernels and is not counted.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(super::cpu_kernels(&x));
                conv();
            });
        });
        conv();
    });
    assert_eq!(counts.by_op.keys().collect::<Vec<_>>(), ["conv2d"], "{:?}", counts.by_op);
    assert_eq!(counts.by_op["conv2d"].0, 1);
    assert!(super::cpu_kernels(&x), "counting is off again");
}
