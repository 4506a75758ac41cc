//! Throughput of the course's models on runner's ops, for `make bench`.
//!
//!     RAYON_NUM_THREADS=2 runner-bench lenet5_train
//!
//! Prints `images_per_s=<x>` and `kernels=<level>`, the CPU kernels it ran with (the
//! widest the CPU has; `RUNNER_KERNELS=portable` for the AVX2 kernels, `ops::kernels`).
//!
//!     runner-bench --count resnet20_train
//!
//! counts instead what one step of a model case issues on a GPU (candle's CUDA backend,
//! f32): the case runs on the CPU through the ops' GPU branches (`candle_core::counting`)
//! and prints `count launches=.. memsets=.. dtod=.. h2d=.. h2d_params=.. d2h=.. allocs=..`
//! for the third step (the first two fill the optimizer's state and any caches), then one
//! line per op, most launches first. The counts do not depend on the batch size. `RUNNER_BENCH_DEVICE=cuda` runs the model cases on
//! the GPU (the host-side cases, host.rs, stay on the CPU); `RUNNER_BENCH_PRECISION=bf16`
//! runs the models' products in bf16 (`[experiment] precision`). The same cases, models and batch sizes are in
//! `bench/torch_bench.py` for the PyTorch reference; `bench/run.py` runs both, alternating.

mod host;

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use runner::config::DetectConfig;
use runner::config::{GroupConfig, Layer, LayerKind, ModelConfig, OptimizerConfig, Precision};
use runner::data::voc::Object;
use runner::model::{plan_model, product_in, Model, Pass};
use runner::ops::activation::relu_op;
use runner::ops::conv::{conv2d, ConvGeom};
use runner::optim::Optimizer;
use runner::rng::Rng;
use runner::task::Yolo;

/// The device the cases run on: `RUNNER_BENCH_DEVICE` (`cpu`, the default; `cuda`, `cuda:N`).
fn dev() -> Device {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEV.get_or_init(|| {
        let name = std::env::var("RUNNER_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
        let device = runner::device::parse_device(&name).map_err(anyhow::Error::msg).and_then(|c| c.open());
        device.unwrap_or_else(|e| {
            eprintln!("error: RUNNER_BENCH_DEVICE={name}: {e:#}");
            std::process::exit(2)
        })
    })
    .clone()
}

/// The models' precision: `RUNNER_BENCH_PRECISION` (`f32`, the default; `bf16`).
fn precision() -> Precision {
    static PRECISION: std::sync::OnceLock<Precision> = std::sync::OnceLock::new();
    *PRECISION.get_or_init(|| match std::env::var("RUNNER_BENCH_PRECISION").as_deref() {
        Err(_) | Ok("f32") => Precision::F32,
        Ok("bf16") => Precision::Bf16,
        Ok(other) => {
            eprintln!("error: RUNNER_BENCH_PRECISION={other}: expected f32 or bf16");
            std::process::exit(2)
        }
    })
}

/// `graph`'s model on the bench's device in the bench's precision.
fn new_model(graph: &runner::model::PlannedGraph) -> Result<Model> {
    Ok(Model::new(graph, 0, &dev())?.with_precision(precision()))
}

/// The model of `configs/models/<file>`, as [`new_model`] makes it.
fn committed_model(file: &str) -> Result<Model> {
    #[derive(serde::Deserialize)]
    struct ModelFile {
        model: ModelConfig,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models").join(file);
    let file: ModelFile = toml::from_str(&std::fs::read_to_string(path)?)?;
    new_model(&plan_model(&file.model)?)
}

fn rand(shape: &[usize], seed: u64, scale: f64) -> Result<Tensor> {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| ((r.next_f64() * 2.0 - 1.0) * scale) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &dev())?)
}

fn labels(n: usize, classes: u32) -> Result<Tensor> {
    Ok(Tensor::from_vec((0..n as u32).map(|i| i % classes).collect::<Vec<u32>>(), n, &dev())?)
}

fn conv(out: usize, kernel: usize, stride: usize, padding: usize) -> Layer {
    Layer(LayerKind::Conv2d { inp: None, out, kernel, stride, padding, dilation: 1, groups: 1, bias: true })
}
fn maxpool(kernel: usize, stride: usize) -> Layer {
    Layer(LayerKind::Maxpool { kernel, stride: Some(stride), padding: 0, ceil_mode: false })
}
fn linear(out: usize) -> Layer {
    Layer(LayerKind::Linear { inp: None, out, bias: true })
}
fn relu() -> Layer {
    Layer(LayerKind::Relu {})
}

fn model(input: [usize; 3], groups: Vec<(&str, Vec<Layer>)>) -> Result<Model> {
    let cfg = ModelConfig {
        input: input.to_vec(),
        groups: groups.into_iter().map(|(n, l)| GroupConfig::new(n, l)).collect(),
        fully_convolutional: false,
        ..Default::default()
    };
    new_model(&plan_model(&cfg)?)
}

/// The (batch, warmup, iters) of a case: the CPU's, or the GPU's, where a step takes
/// well under a millisecond and only a larger batch and many steps give a steady rate
/// (`bench/torch_bench.py` sizes its cases the same way).
fn sized(cpu: (usize, usize, usize), gpu: (usize, usize, usize)) -> (usize, usize, usize) {
    if dev().is_cpu() {
        cpu
    } else {
        gpu
    }
}

/// Whether `--count` asked for counts instead of speed.
fn counting() -> bool {
    candle_core::counting::enabled()
}

/// Times `iters` calls of `step` after `warmup` calls; returns images per second. With
/// `--count`: prints the counts of the third call instead (returns 0).
fn time(batch: usize, warmup: usize, iters: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    if counting() {
        step()?;
        step()?;
        candle_core::counting::take();
        step()?;
        print_counts(&candle_core::counting::take());
        return Ok(0.0);
    }
    for _ in 0..warmup {
        step()?;
    }
    dev().synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    dev().synchronize()?;
    Ok((batch * iters) as f64 / t.elapsed().as_secs_f64())
}

/// The `count ...` line and one line per op, most launches first.
fn print_counts(c: &candle_core::counting::Counts) {
    let t = c.total();
    println!(
        "count launches={} memsets={} dtod={} h2d={} h2d_params={} d2h={} allocs={}",
        t.launches, t.memsets, t.dtod, t.h2d, t.h2d_params, t.d2h, t.allocs
    );
    let mut ops: Vec<_> = c.by_op.iter().collect();
    ops.sort_by_key(|(name, (_, c))| (std::cmp::Reverse(c.launches + c.memsets + c.dtod + c.h2d + c.d2h), *name));
    for (name, (calls, c)) in ops {
        println!(
            "  {name:<28} calls={calls:<5} launches={:<5} memsets={:<3} dtod={:<3} h2d={:<4} d2h={:<3} allocs={}",
            c.launches, c.memsets, c.dtod, c.h2d, c.d2h, c.allocs
        );
    }
}

fn lenet5_train() -> Result<f64> {
    let m = model(
        [1, 28, 28],
        vec![
            ("features", vec![conv(6, 5, 1, 0), relu(), maxpool(2, 2), conv(16, 5, 1, 0), relu(), maxpool(2, 2)]),
            ("classifier", vec![Layer(LayerKind::Flatten {}), linear(120), relu(), linear(84), relu(), linear(10)]),
        ],
    )?;
    let mut opt = Optimizer::new(&OptimizerConfig::Sgd {
        lr: 0.01,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    });
    let (n, warmup, iters) = sized((100, 5, 60), (100, 10, 200));
    let (x, y) = (rand(&[n, 1, 28, 28], 1, 1.0)?, labels(n, 10)?);
    // As training runs it: the batch in one slice per thread (runner::step).
    let slices = runner::step::slices(&m, n, &dev());
    time(n, warmup, iters, || {
        let step = runner::step::forward_backward(&m, &x, Pass::eval(), slices, 1, |out, r| {
            Ok(candle_nn::loss::cross_entropy(out, &y.narrow(0, r.start, r.len())?)?)
        })?;
        opt.step(opt.config().lr(), m.params.iter(), &step.grads, &Default::default())?;
        Ok(())
    })
}

fn batchnorm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    Ok(runner::ops::batchnorm::batch_norm_train(x, gamma, beta, 1e-5)?.0)
}

/// The course's CIFAR-10 ResBlock net at bench size: conv 3->64, one ResBlock
/// (conv-bn-relu-conv-bn, add, relu), global average pool, linear 64->10. Adam.
fn resnet_cifar_train() -> Result<f64> {
    let var = |shape: &[usize], seed: u64, fan_in: usize| -> Result<Var> {
        Ok(Var::from_tensor(&rand(shape, seed, 1.0 / (fan_in as f64).sqrt())?)?)
    };
    let ones = || -> Result<Var> { Ok(Var::from_tensor(&Tensor::ones(64, DType::F32, &dev())?)?) };
    let zeros = || -> Result<Var> { Ok(Var::from_tensor(&Tensor::zeros(64, DType::F32, &dev())?)?) };
    let params: Vec<(String, Var)> = vec![
        ("stem.w".into(), var(&[64, 3, 3, 3], 1, 27)?),
        ("stem.b".into(), zeros()?),
        ("c1.w".into(), var(&[64, 64, 3, 3], 2, 576)?),
        ("bn1.g".into(), ones()?),
        ("bn1.b".into(), zeros()?),
        ("c2.w".into(), var(&[64, 64, 3, 3], 3, 576)?),
        ("bn2.g".into(), ones()?),
        ("bn2.b".into(), zeros()?),
        ("fc.w".into(), var(&[10, 64], 4, 64)?),
        ("fc.b".into(), var(&[10], 5, 64)?),
    ];
    let p = |i: usize| params[i].1.as_tensor();
    let mut opt =
        Optimizer::new(&OptimizerConfig::Adam { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 });
    let (n, warmup, iters) = sized((64, 2, 8), (256, 5, 50));
    let (x, y) = (rand(&[n, 3, 32, 32], 6, 1.0)?, labels(n, 10)?);
    let same = ConvGeom { padding: 1, ..Default::default() };
    // The products in the bench's precision, as the model graph runs them.
    let conv = |x: &Tensor, w: &Tensor| product_in(precision(), x, w, |x, w| conv2d(x, w, same));
    time(n, warmup, iters, || {
        // Conv + bias and batch norm + ReLU each as one op, as the model graph runs them.
        let stem = match precision() {
            Precision::F32 => runner::ops::conv::conv2d_bias(&x, p(0), Some(p(1)), same)?,
            Precision::Bf16 => runner::ops::bias::add_channel_bias(&conv(&x, p(0))?, p(1))?,
        };
        let h = relu_op(&stem)?; // [64, 64, 32, 32]
        let r = runner::ops::batchnorm::batch_norm_relu_train(&conv(&h, p(2))?, p(3), p(4), 1e-5)?.0;
        let r = batchnorm(&conv(&r, p(5))?, p(6), p(7))?;
        let h = runner::ops::activation::add_relu_op(&h, &r)?;
        let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?; // [64, 64]
        let logits = product_in(precision(), &pooled, p(8), |a, w| a.matmul(&w.t()?))?.broadcast_add(p(9))?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = runner::optim::collect_grads(&loss.backward()?, params.iter().map(|(n, v)| (n, v)));
        opt.step(opt.config().lr(), params.iter().map(|(n, v)| (n, v)), &grads, &Default::default())?;
        Ok(())
    })
}

/// The zoo's ResNet-20 (configs/models/resnet20.toml) at the paper's recipe: batch 128 of
/// 3x32x32, SGD lr 0.1, momentum 0.9, weight decay 1e-4. Each step does what the training
/// loop does with a batch (`train_epoch`): the images and labels uploaded from the host,
/// forward, loss and backward (`step::forward_backward`), the predicted classes for the
/// epoch's accuracy (`Task::train_outputs`, read by `Task::update_train` at once on the CPU,
/// at log points on a GPU), the optimizer's update.
fn resnet20_train() -> Result<f64> {
    let m = committed_model("resnet20.toml")?;
    let mut opt = Optimizer::new(&OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 1e-4,
    });
    let (n, warmup, iters) = sized((128, 1, 4), (128, 10, 100));
    let mut r = Rng::new(1);
    let batch = runner::data::loader::Batch {
        images: (0..n * 3 * 32 * 32).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
        indices: (0..n).collect(),
        ..Default::default()
    };
    let task = runner::task::Task::Classify { label_smoothing: 0.0 };
    let mut stats = task.stats(10, false);
    time(n, warmup, iters, || {
        let xs = Tensor::from_slice(&batch.images, (n, 3, 32, 32), &dev())?;
        let pass = Pass { train: true, seed: 0, epoch: 0, step: 0 };
        let slices = runner::step::slices(&m, n, &dev());
        let step = runner::step::forward_backward(&m, &xs, pass, slices, 1, |out, range| {
            task.slice_loss(out, &batch, range, [3, 32, 32])
        })?;
        let outputs = task.train_outputs(&step.out, false)?;
        // The loop reads the loss and predictions at once on the CPU; on a GPU at its log
        // points, which a step in between (the one counted) does not reach.
        if runner::ops::cpu_kernels_on(&dev()) {
            task.update_train(&mut stats, step.loss.read()?, &outputs, &batch)?;
        }
        opt.step(opt.config().lr(), m.params.iter(), &step.grads, &Default::default())?;
        Ok(())
    })
}

/// AlexNet's three linear layers alone at batch 8 (eval): 58.6 M weights, 234 MB read per
/// batch, the memory-bound part of `alexnet_forward`.
fn alexnet_classifier() -> Result<f64> {
    let sizes = [(9216, 4096), (4096, 4096), (4096, 1000)];
    let layers: Vec<(Tensor, Tensor)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(k, n))| Ok((rand(&[n, k], 10 + i as u64, 0.01)?, rand(&[n], 20 + i as u64, 0.01)?)))
        .collect::<Result<_>>()?;
    let x = rand(&[8, 9216], 1, 1.0)?;
    time(8, 2, 20, || {
        let mut h = x.clone();
        for (w, b) in &layers {
            h = runner::ops::linear::linear(&h, w, Some(b))?;
        }
        h.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })
}

/// torchvision's AlexNet, forward only in eval mode (the course's pretrained top-k demo):
/// batch 8 of 3x224x224 on the CPU (128 on a GPU), or one image with `batch_one`.
fn alexnet_forward(batch_one: bool) -> Result<f64> {
    let m = model(
        [3, 224, 224],
        vec![
            (
                "features",
                vec![
                    conv(64, 11, 4, 2),
                    relu(),
                    maxpool(3, 2),
                    conv(192, 5, 1, 2),
                    relu(),
                    maxpool(3, 2),
                    conv(384, 3, 1, 1),
                    relu(),
                    conv(256, 3, 1, 1),
                    relu(),
                    conv(256, 3, 1, 1),
                    relu(),
                    maxpool(3, 2),
                ],
            ),
            (
                "classifier",
                vec![
                    Layer(LayerKind::Flatten {}),
                    Layer(LayerKind::Dropout { p: 0.5 }),
                    linear(4096),
                    relu(),
                    Layer(LayerKind::Dropout { p: 0.5 }),
                    linear(4096),
                    relu(),
                    linear(1000),
                ],
            ),
        ],
    )?;
    let (n, warmup, iters) = if batch_one { (1, 2, 20) } else { sized((8, 1, 5), (128, 3, 20)) };
    let x = rand(&[n, 3, 224, 224], 1, 1.0)?;
    time(n, warmup, iters, || {
        m.forward(&x, Pass::eval())?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })
}

/// The shape `conv_op` times: `[batch, in, side, out, kernel, stride, padding]`, 64
/// channels of 32x32 at batch 64, 3x3, or `RUNNER_BENCH_CONV=8,384,13,256` (AlexNet's conv4;
/// kernel 3, stride 1 and padding 1 unless given: `8,3,224,64,11,4,2` is its conv1).
fn conv_shape() -> Result<Vec<usize>> {
    let Ok(spec) = std::env::var("RUNNER_BENCH_CONV") else { return Ok(vec![64, 64, 32, 64, 3, 1, 1]) };
    let mut dims: Vec<usize> = spec.split(',').filter_map(|v| v.trim().parse().ok()).collect();
    if !(4..=7).contains(&dims.len()) || dims.len() != spec.split(',').count() || dims[..4].contains(&0) {
        anyhow::bail!("RUNNER_BENCH_CONV={spec:?}: want batch,in,side,out[,kernel,stride,padding] (integers)");
    }
    dims.extend_from_slice(&[3, 1, 1][dims.len() - 4..]);
    Ok(dims)
}

/// conv2d at the ResBlock's shape (batch 64, 64 -> 64 channels, 32x32, 3x3, padding 1), or
/// `conv_shape`'s.
fn conv_op(backward: bool) -> Result<f64> {
    let d = conv_shape()?;
    let x = Var::from_tensor(&rand(&[d[0], d[1], d[2], d[2]], 1, 1.0)?)?;
    let w = Var::from_tensor(&rand(&[d[3], d[1], d[4], d[4]], 2, 0.04)?)?;
    let g = ConvGeom { stride: d[5], padding: d[6], ..Default::default() };
    let (_, warmup, iters) = sized((d[0], 1, 3), (64, 5, 50));
    if backward {
        let y = conv2d(&x, &w, g)?;
        time(d[0], warmup, iters, || {
            // Backward alone: the forward is outside the timed call's graph reuse.
            y.sum_all()?.backward()?;
            Ok(())
        })
    } else {
        time(d[0], warmup, iters, || {
            conv2d(x.as_tensor(), &w, g)?;
            Ok(())
        })
    }
}

/// The fixed cost of one op: a chain of 1000 element-wise ops (`y * 0.5`, `+ 0.25`, each one
/// kernel and one allocation on a GPU) on a 64x64 tensor, in ops per second. What every op
/// of a model pays besides its arithmetic (`bench/torch_bench.py` runs the same chain).
fn op_overhead() -> Result<f64> {
    let x = rand(&[64, 64], 1, 1.0)?;
    let (_, warmup, iters) = sized((1, 2, 20), (1, 5, 50));
    time(1000, warmup, iters, || {
        let mut y = x.clone();
        for _ in 0..500 {
            y = ((&y * 0.5)? + 0.25)?;
        }
        Ok(())
    })
}

/// The yolo_shapes model (configs/models/yolo_shapes.toml) training with the YOLO loss
/// (S = 10, B = 2, 5 classes): batch 32 of 3x160x160, three 30x30 objects per image, Adam.
fn yolo_shapes_train() -> Result<f64> {
    let m = committed_model("yolo_shapes.toml")?;
    let yolo = Yolo { cfg: DetectConfig { grid: 10, boxes: 2, ..Default::default() }, classes: 5 };
    let (_, warmup, iters) = sized((32, 1, 4), (32, 5, 50));
    let x = rand(&[32, 3, 160, 160], 7, 1.0)?;
    let objects: Vec<Vec<Object>> = (0..32)
        .map(|i| {
            (0..3)
                .map(|k| {
                    let (x0, y0) = (((i * 37 + k * 53) % 120) as f32, ((i * 17 + k * 71) % 120) as f32);
                    let class = ((i * 3 + k) % 5) as u32;
                    Object { class, bbox: [x0, y0, x0 + 30.0, y0 + 30.0], difficult: false, truncated: false }
                })
                .collect()
        })
        .collect();
    let mut opt =
        Optimizer::new(&OptimizerConfig::Adam { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 });
    time(32, warmup, iters, || {
        let out = m.forward(&x, Pass { train: true, seed: 0, epoch: 0, step: 0 })?;
        let loss = yolo.loss(&out, &objects, [160, 160])?;
        let grads = runner::optim::collect_grads(&loss.backward()?, m.params.iter());
        opt.step(opt.config().lr(), m.params.iter(), &grads, &Default::default())?;
        Ok(())
    })
}

/// The fcn_shapes model (configs/models/fcn_shapes.toml) training with the per-pixel
/// cross-entropy: batch 32 of 3x160x160, masks of 6 classes with a void band, Adam.
fn fcn_shapes_train() -> Result<f64> {
    let m = committed_model("fcn_shapes.toml")?;
    let seg = runner::task::Segmenter { cfg: Default::default(), classes: 6 };
    let (_, warmup, iters) = sized((32, 1, 4), (32, 5, 50));
    let x = rand(&[32, 3, 160, 160], 9, 1.0)?;
    // Square objects of class (i % 5) + 1 on background, a 2-pixel void band around them.
    let masks: Vec<u8> = (0..32 * 160 * 160)
        .map(|p| {
            let (i, y, x) = (p / (160 * 160), (p / 160) % 160, p % 160);
            let (x0, y0) = ((i * 37) % 100 + 10, (i * 17) % 100 + 10);
            let inside = |m: usize| x + m >= x0 && x < x0 + 40 + m && y + m >= y0 && y < y0 + 40 + m;
            if inside(0) && x >= x0 && y >= y0 {
                (i % 5 + 1) as u8
            } else if inside(2) {
                255
            } else {
                0
            }
        })
        .collect();
    let mut opt =
        Optimizer::new(&OptimizerConfig::Adam { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 });
    time(32, warmup, iters, || {
        let out = m.forward(&x, Pass { train: true, seed: 0, epoch: 0, step: 0 })?;
        let loss = seg.loss(&out, &masks)?;
        let grads = runner::optim::collect_grads(&loss.backward()?, m.params.iter());
        opt.step(opt.config().lr(), m.params.iter(), &grads, &Default::default())?;
        Ok(())
    })
}

/// FCN's x2 upsampling: a 4x4 stride-2 transposed convolution of 21 score maps, [32, 21,
/// 34, 34] -> [32, 21, 70, 70], forward or backward (as `conv_op`).
fn conv_transpose_op(backward: bool) -> Result<f64> {
    let x = Var::from_tensor(&rand(&[32, 21, 34, 34], 3, 1.0)?)?;
    let w = Var::from_tensor(&rand(&[21, 21, 4, 4], 4, 0.1)?)?;
    let g = ConvGeom { stride: 2, ..Default::default() };
    let (_, warmup, iters) = sized((32, 1, 3), (32, 5, 50));
    if backward {
        let y = runner::ops::conv::conv_transpose2d(&x, &w, g, 0)?;
        time(32, warmup, iters, || {
            y.sum_all()?.backward()?;
            Ok(())
        })
    } else {
        time(32, warmup, iters, || {
            runner::ops::conv::conv_transpose2d(x.as_tensor(), &w, g, 0)?;
            Ok(())
        })
    }
}

fn main() -> Result<()> {
    runner::ops::tune_allocator();
    runner::ops::kernels::from_env().map_err(anyhow::Error::msg)?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--count") {
        args.remove(0);
        if !MODEL_CASES.contains(&args.first().map(String::as_str).unwrap_or_default()) {
            bail!("--count takes a model case: {}", MODEL_CASES.join(", "));
        }
        if !dev().is_cpu() {
            bail!("--count runs on the CPU (it counts what a GPU would issue); unset RUNNER_BENCH_DEVICE");
        }
        let case = args[0].clone();
        // On the thread that runs the case: counting is per thread.
        runner::device::gpu_setup();
        return runner::ops::on_pool(|| {
            candle_core::counting::start();
            run_case(&case)
        });
    }
    let case = args.first().cloned().unwrap_or_default();
    runner::ops::on_pool(|| run_case(&case))
}

/// The cases that run a model on the bench's device: what `--count` counts.
const MODEL_CASES: &[&str] = &[
    "lenet5_train",
    "resnet20_train",
    "resnet_cifar_train",
    "alexnet_forward",
    "alexnet_forward_b1",
    "yolo_shapes_train",
    "fcn_shapes_train",
    "conv2d_forward",
    "conv2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "op_overhead",
];

fn run_case(case: &str) -> Result<()> {
    let ips = match case {
        "lenet5_train" => lenet5_train()?,
        "resnet_cifar_train" => resnet_cifar_train()?,
        "resnet20_train" => resnet20_train()?,
        "alexnet_forward" => alexnet_forward(false)?,
        "alexnet_forward_b1" => alexnet_forward(true)?,
        "conv2d_forward" => conv_op(false)?,
        "conv2d_backward" => conv_op(true)?,
        "loader_cifar10_crop_flip_norm" | "loader_jpeg_256_crop224_flip_pca" => host::loader(case)?,
        "yolo_shapes_train" => yolo_shapes_train()?,
        "fcn_shapes_train" => fcn_shapes_train()?,
        "conv_transpose2d_forward" => conv_transpose_op(false)?,
        "conv_transpose2d_backward" => conv_transpose_op(true)?,
        "detect_eval_5000" => host::detect_eval_5000()?,
        "resize_voc_antialias" => host::resize_case(true)?,
        "resize_voc_decoded" => host::resize_decoded_case()?,
        "resize_voc_plain" => host::resize_case(false)?,
        "board_runs_1000" => host::board_runs_1000()?,
        "op_overhead" => op_overhead()?,
        "alexnet_classifier" => alexnet_classifier()?,
        other => bail!(
            "unknown bench case {other:?}; cases: lenet5_train, resnet20_train, resnet_cifar_train, alexnet_forward, alexnet_forward_b1, conv2d_forward, conv2d_backward, loader_cifar10_crop_flip_norm, loader_jpeg_256_crop224_flip_pca, yolo_shapes_train, fcn_shapes_train, conv_transpose2d_forward, conv_transpose2d_backward, detect_eval_5000, resize_voc_antialias, resize_voc_decoded, resize_voc_plain, board_runs_1000, op_overhead, alexnet_classifier"
        ),
    };
    if !counting() {
        println!("images_per_s={ips:.1}");
        println!("kernels={}", runner::ops::kernels::level());
    }
    Ok(())
}
