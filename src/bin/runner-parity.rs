//! Every layer kind and the course's models on a device against the CPU, for the GPU check
//! (`gpu/check.sh`):
//!
//!     runner-parity cuda:0
//!
//! Each case builds the same model (same seed, same weights) on the CPU and on the device,
//! feeds both the same batch, and compares the training-mode output and the gradients of
//! `mean(y * r)` (a fixed random `r`) with respect to the input and every parameter; the
//! models then take three SGD steps on both, and the losses of each step are compared. Each
//! optimizer rule updates the same parameter by the same gradients on both (the GPU's fused
//! update kernels against the CPU's update, 1e-6).
//! Prints one line per case, `parity <case> out=<max abs diff> grad=<max abs diff>
//! tol=<tolerance> ok|FAIL`, relative to the largest CPU value of each; exits 1 when a case
//! fails. `runner-parity cpu` compares the CPU with itself: a dry run of the cases.
//!
//! `runner-parity gpu-path` runs the device's side on the CPU through the ops' GPU branches
//! (`candle_core::counting` on: candle's compositions, and the CPU references of runner's
//! fused CUDA kernels in their places): what a GPU computes, checked without one.
//!
//! The models' three steps run again with `precision = "bf16"`: the device's bf16 kernels
//! against the CPU's rounding around its f32 kernels, within [`BF16_TOL`].

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use runner::config::{GroupConfig, Layer, LayerKind, ModelConfig, OptimizerConfig, Precision};
use runner::model::{plan_model, Model, Pass};
use runner::ops::upsample::UpsampleMode;
use runner::optim::{collect_grads, Optimizer};
use runner::rng::Rng;

/// Relative tolerance: the device's float sums run in other orders than the CPU's.
const TOL: f64 = 1e-4;

/// Relative tolerance of the bf16 model cases: a sum in another order can round a product's
/// output to the neighbouring bf16 value (2^-8 = 3.9e-3 relative), and that moves what follows.
const BF16_TOL: f64 = 1e-2;

/// Relative tolerance of the optimizer cases: the same update of the same numbers, one
/// rounding apart (the 1e-6).
const OPTIM_TOL: f64 = 1e-6;

/// `runner-parity gpu-path`: the device side runs on the CPU through the GPU's branches.
static GPU_PATH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `f` as the device's side: with `gpu-path`, counting (the ops' GPU branches) on meanwhile.
fn device_side<R>(f: impl FnOnce() -> R) -> R {
    if !GPU_PATH.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    candle_core::counting::start();
    let r = f();
    candle_core::counting::stop();
    r
}

fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// The largest absolute difference between `a` and `b` over the largest absolute value of `a`.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    rel_diff_floor(a, b, 0.0)
}

/// [`rel_diff`] with the scale at least `floor`.
fn rel_diff_floor(a: &Tensor, b: &Tensor, floor: f64) -> Result<f64> {
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let scale = abs_max(&a)?.max(floor).max(1e-12);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

fn abs_max(a: &Tensor) -> Result<f64> {
    Ok(a.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

/// The output and the gradients (input first, then each parameter by name) of `mean(y * r)`.
fn run(cfg: &ModelConfig, x: &Tensor, device: &Device) -> Result<(Tensor, Vec<Tensor>)> {
    let model = Model::new(&plan_model(cfg)?, 0, device)?;
    let x = Var::from_tensor(&x.to_device(device)?)?;
    let y = model.forward(x.as_tensor(), Pass { train: true, seed: 0, epoch: 0, step: 0 })?;
    let r = rand(y.dims(), 99)?.to_device(device)?;
    let grads = (&y * &r)?.mean_all()?.backward()?;
    let mut out = vec![grads.get(&x).context("no gradient for the input")?.clone()];
    for (name, v) in &model.params {
        out.push(grads.get(v).with_context(|| format!("no gradient for {name}"))?.clone());
    }
    Ok((y, out))
}

fn layer_case(name: &str, input: [usize; 4], layers: Vec<LayerKind>, device: &Device) -> Result<bool> {
    let cfg = ModelConfig {
        input: input[1..].to_vec(),
        groups: vec![GroupConfig::new("g", layers.into_iter().map(Layer).collect())],
        ..Default::default()
    };
    let x = rand(&input, 7)?;
    let (y0, g0) = run(&cfg, &x, &Device::Cpu)?;
    let (y1, g1) = device_side(|| run(&cfg, &x, device))?;
    let out = rel_diff(&y0, &y1)?;
    let mut grad = 0f64;
    // Each gradient against the larger of its own largest value and 1% of the case's
    // largest: a gradient that is zero by the math (a conv bias before batch norm) holds
    // only rounding noise (9e-10 in batchnorm_relu, beside 6e-3 for the conv weight).
    let mut floor = 0f64;
    for a in &g0 {
        floor = floor.max(0.01 * abs_max(a)?);
    }
    for (a, b) in g0.iter().zip(&g1) {
        grad = grad.max(rel_diff_floor(a, b, floor)?);
    }
    Ok(report(name, out, Some(grad)))
}

/// `out`: the output's (or the losses') relative difference; `grad`: the gradients', where
/// compared (the model cases compare the losses of three steps, which the gradients drive).
fn report(name: &str, out: f64, grad: Option<f64>) -> bool {
    report_within(name, out, grad, TOL)
}

fn report_within(name: &str, out: f64, grad: Option<f64>, tol: f64) -> bool {
    let ok = out <= tol && grad.unwrap_or(0.0) <= tol;
    let grad = grad.map_or("-".to_string(), |g| format!("{g:.2e}"));
    println!("parity {name} out={out:.2e} grad={grad} tol={tol:.0e} {}", if ok { "ok" } else { "FAIL" });
    ok
}

/// Three SGD steps of a committed model on both devices: the losses of each step (one
/// step with `gpu-path`, see [`model_steps`]).
fn model_case(file: &str, batch: usize, precision: Precision, device: &Device) -> Result<bool> {
    #[derive(serde::Deserialize)]
    struct ModelFile {
        model: ModelConfig,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut cfg = toml::from_str::<ModelFile>(&text).with_context(|| path.display().to_string())?.model;
    cfg.drop_inits();
    let mut input = vec![batch];
    input.extend(&cfg.input);
    let x = rand(&input, 3)?;
    let losses = |device: &Device| -> Result<Vec<f64>> {
        let model = Model::new(&plan_model(&cfg)?, 0, device)?.with_precision(precision);
        let x = x.to_device(device)?;
        let mut opt = Optimizer::new(&OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
        });
        let mut out = Vec::new();
        for step in 0..model_steps() {
            let y = model.forward(&x, Pass { train: true, seed: 0, epoch: 0, step })?;
            let r = rand(y.dims(), 99)?.to_device(device)?;
            let loss = (&y * &r)?.mean_all()?;
            out.push(loss.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            let grads = collect_grads(&loss.backward()?, model.params.iter());
            opt.step(0.01, model.params.iter(), &grads, &Default::default())?;
        }
        Ok(out)
    };
    let (a, b) = (losses(&Device::Cpu)?, device_side(|| losses(device))?);
    let scale = a.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale;
    let (suffix, tol) = if precision.is_f32() { ("", TOL) } else { ("_bf16", BF16_TOL) };
    println!("parity {file}{suffix} losses cpu={a:?} device={b:?}");
    Ok(report_within(&format!("{file}_{}_steps{suffix}", model_steps()), d, None, tol))
}

/// The model cases' steps: 3; 1 with `gpu-path`, where candle's CPU convolutions stand in
/// for the GPU's: in the batch-norm models the gradients that are near zero by the math
/// (a batch norm's beta before another batch norm) differ by 1% between two f32 paths, and
/// three steps amplify that to 2e-4 of the loss (measured here with the composed GPU path
/// before runner's fused kernels, and with them).
fn model_steps() -> usize {
    if GPU_PATH.load(std::sync::atomic::Ordering::Relaxed) {
        1
    } else {
        3
    }
}

/// Three updates of each optimizer on both devices from the same parameter, gradients and
/// state: the parameter and the state after each step against the CPU's update (the fused
/// GPU kernels: one launch per parameter), within [`OPTIM_TOL`].
fn optimizer_case(opt: &OptimizerConfig, device: &Device) -> Result<bool> {
    let run = |device: &Device| -> Result<Vec<Tensor>> {
        let name = "w".to_string();
        let var = Var::from_tensor(&rand(&[64, 33], 5)?.to_device(device)?)?;
        let mut o = Optimizer::new(opt);
        let mut out = Vec::new();
        for step in 0..3u64 {
            let g = rand(&[64, 33], 10 + step)?.to_device(device)?;
            let grads = std::iter::once((name.clone(), g)).collect();
            o.step(opt.lr(), [(&name, &var)], &grads, &Default::default())?;
            // Copies: the GPU's update writes the parameter and the state in place.
            out.push(var.as_tensor().copy()?);
            for t in o.export().0.into_values() {
                out.push(t.copy()?);
            }
        }
        Ok(out)
    };
    let (a, b) = (run(&Device::Cpu)?, device_side(|| run(device))?);
    let mut d = 0f64;
    for (p, q) in a.iter().zip(&b) {
        d = d.max(rel_diff(p, q)?);
    }
    Ok(report_within(&format!("optimizer_{}", opt_name(opt)), d, None, OPTIM_TOL))
}

fn opt_name(opt: &OptimizerConfig) -> &'static str {
    match opt {
        OptimizerConfig::Sgd { nesterov: true, .. } => "sgd_nesterov",
        OptimizerConfig::Sgd { momentum, .. } if *momentum == 0.0 => "sgd_plain",
        OptimizerConfig::Sgd { dampening, .. } if *dampening != 0.0 => "sgd_dampening",
        OptimizerConfig::Sgd { .. } => "sgd_momentum",
        OptimizerConfig::Adam { .. } => "adam",
        OptimizerConfig::Adamw { .. } => "adamw",
    }
}

/// A residual block (conv-bn-relu-conv-bn, the sum and its ReLU: the fused add + ReLU).
fn resblock_case(device: &Device) -> Result<bool> {
    let conv = |out| {
        Layer(LayerKind::Conv2d {
            inp: None,
            out,
            kernel: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
            bias: false,
        })
    };
    let bn = || Layer(LayerKind::Batchnorm { eps: 1e-5, momentum: 0.1 });
    let mut block = GroupConfig::new("res", vec![conv(8), bn(), Layer(LayerKind::Relu {}), conv(8), bn()]);
    block.residual = true;
    block.activation = Some(Layer(LayerKind::Relu {}));
    let cfg = ModelConfig { input: vec![8, 10, 10], groups: vec![block], ..Default::default() };
    let x = rand(&[4, 8, 10, 10], 7)?;
    let (y0, g0) = run(&cfg, &x, &Device::Cpu)?;
    let (y1, g1) = device_side(|| run(&cfg, &x, device))?;
    let mut grad = 0f64;
    for (a, b) in g0.iter().zip(&g1) {
        grad = grad.max(rel_diff(a, b)?);
    }
    Ok(report("resblock_add_relu", rel_diff(&y0, &y1)?, Some(grad)))
}

fn main() -> Result<()> {
    runner::ops::kernels::from_env().map_err(anyhow::Error::msg)?;
    let which = std::env::args().nth(1).unwrap_or_else(|| "cuda:0".into());
    let which = if which == "gpu-path" {
        GPU_PATH.store(true, std::sync::atomic::Ordering::Relaxed);
        runner::device::gpu_setup();
        "cpu".to_string()
    } else {
        which
    };
    let device = match runner::device::parse_device(&which).map_err(anyhow::Error::msg)? {
        runner::device::DeviceChoice::Cpu => Device::Cpu,
        choice => choice.open()?,
    };
    let path = if GPU_PATH.load(std::sync::atomic::Ordering::Relaxed) { " (the GPU's ops, on the CPU)" } else { "" };
    println!("parity device {}{path}", runner::device::device_name(&device));
    let conv = |out, kernel, stride, padding, dilation, groups| LayerKind::Conv2d {
        inp: None,
        out,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        bias: true,
    };
    let conv_t = |out, kernel, stride, padding, output_padding| LayerKind::ConvTranspose2d {
        inp: None,
        out,
        kernel,
        stride,
        padding,
        output_padding,
        dilation: 1,
        groups: 1,
        bias: true,
        init: None,
        trainable: true,
    };
    let pool = |max: bool, kernel, stride, padding, ceil_mode| {
        if max {
            LayerKind::Maxpool { kernel, stride: Some(stride), padding, ceil_mode }
        } else {
            LayerKind::Avgpool { kernel, stride: Some(stride), padding, ceil_mode }
        }
    };
    let up = |mode: &str, scale| LayerKind::Upsample {
        mode: if mode == "nearest" { UpsampleMode::Nearest } else { UpsampleMode::Bilinear },
        scale: Some(scale),
        size: None,
    };
    let bn = || LayerKind::Batchnorm { eps: 1e-5, momentum: 0.1 };
    let cases: Vec<(&str, [usize; 4], Vec<LayerKind>)> = vec![
        ("conv3x3", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 1)]),
        ("conv3x3_stride2", [4, 8, 12, 12], vec![conv(16, 3, 2, 1, 1, 1)]),
        // An odd width: the stride leaves the last input column unused.
        ("conv3x3_stride2_odd", [4, 8, 9, 9], vec![conv(16, 3, 2, 1, 1, 1)]),
        // Padding beyond the kernel's reach (the input gradient's own padding is negative).
        ("conv1x1_pad1", [4, 8, 6, 6], vec![conv(16, 1, 1, 1, 1, 1)]),
        ("conv5x5_dilation2", [4, 8, 12, 12], vec![conv(16, 5, 1, 4, 2, 1)]),
        ("conv3x3_groups2", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 2)]),
        ("conv11x11_stride4", [2, 3, 35, 35], vec![conv(8, 11, 4, 2, 1, 1)]),
        ("conv_transpose4x4_stride2", [4, 6, 9, 9], vec![conv_t(6, 4, 2, 0, 0)]),
        ("conv_transpose3x3_stride2_pad1_outpad1", [4, 6, 9, 9], vec![conv_t(5, 3, 2, 1, 1)]),
        ("maxpool2", [4, 8, 12, 12], vec![pool(true, 2, 2, 0, false)]),
        ("maxpool3_stride2", [4, 8, 13, 13], vec![pool(true, 3, 2, 0, false)]),
        ("maxpool3_stride2_pad1_ceil", [4, 8, 12, 12], vec![pool(true, 3, 2, 1, true)]),
        ("maxpool8_stride1", [4, 8, 12, 12], vec![pool(true, 8, 1, 0, false)]),
        ("avgpool3_stride1_pad1", [4, 8, 12, 12], vec![pool(false, 3, 1, 1, false)]),
        ("global_avgpool", [4, 8, 12, 12], vec![LayerKind::GlobalAvgpool {}]),
        ("upsample_bilinear2", [4, 6, 10, 10], vec![up("bilinear", 2)]),
        ("upsample_bilinear4", [4, 6, 10, 10], vec![up("bilinear", 4)]),
        ("upsample_nearest2", [4, 6, 10, 10], vec![up("nearest", 2)]),
        ("batchnorm_relu", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 1), bn(), LayerKind::Relu {}]),
        ("batchnorm", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 1), bn()]),
        ("batchnorm_leaky", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 1), bn(), LayerKind::LeakyRelu { slope: 0.1 }]),
        ("relu", [4, 8, 6, 6], vec![LayerKind::Relu {}]),
        ("leaky_relu", [4, 8, 12, 12], vec![conv(16, 3, 1, 1, 1, 1), LayerKind::LeakyRelu { slope: 0.1 }]),
        ("sigmoid", [4, 8, 6, 6], vec![LayerKind::Sigmoid {}]),
        (
            "linear_dropout",
            [4, 8, 6, 6],
            vec![
                LayerKind::Flatten {},
                LayerKind::Linear { inp: None, out: 32, bias: true },
                LayerKind::Dropout { p: 0.5 },
            ],
        ),
    ];
    // A case that fails to run is reported and the others still run: the GPU machine's
    // time is short, and one call should say everything that is wrong.
    let mut ok = true;
    let mut check = |name: &str, result: Result<bool>| match result {
        Ok(same) => ok &= same,
        Err(e) => {
            println!("parity {name} ERROR {e:#}");
            ok = false;
        }
    };
    for (name, input, layers) in cases {
        check(name, layer_case(name, input, layers, &device));
    }
    check("resblock_add_relu", resblock_case(&device));
    // Every rule of the fused optimizer kernels: momentum with and without dampening,
    // Nesterov, none; Adam with L2 decay; AdamW.
    let sgd = |momentum, dampening, nesterov| OptimizerConfig::Sgd {
        lr: 0.05,
        momentum,
        dampening,
        nesterov,
        weight_decay: 1e-3,
    };
    for opt in [
        sgd(0.9, 0.0, false),
        sgd(0.9, 0.1, false),
        sgd(0.9, 0.0, true),
        sgd(0.0, 0.0, false),
        OptimizerConfig::Adam { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 1e-3 },
        OptimizerConfig::Adamw { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 1e-2 },
    ] {
        check(opt_name(&opt), optimizer_case(&opt, &device));
    }
    // `gpu-path` is f32: on the CPU, bf16 products would run candle's bf16 CPU kernels
    // (bf16 sums), not a GPU's (f32 sums).
    let precisions: &[Precision] = if GPU_PATH.load(std::sync::atomic::Ordering::Relaxed) {
        &[Precision::F32]
    } else {
        &[Precision::F32, Precision::Bf16]
    };
    for &precision in precisions {
        for (file, batch) in [
            ("lenet5.toml", 8),
            ("monster.toml", 8),
            ("resnet20.toml", 8),
            ("fcn_shapes.toml", 2),
            ("yolo_shapes.toml", 2),
        ] {
            check(file, model_case(file, batch, precision, &device));
        }
    }
    if !ok {
        bail!("some cases failed or differ from the CPU by more than their tolerance ({TOL:.0e}; bf16 {BF16_TOL:.0e})");
    }
    Ok(())
}
