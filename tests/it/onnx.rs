//! `runner export --format onnx` checked by ONNX's own tools (tests/check_onnx.py):
//! `onnx.checker` with full shape inference, and onnxruntime's outputs against runner's
//! eval-mode forward on the same seeded input, within 1e-5 of the output's scale. Every
//! model in configs/models/ (seeded weights; batch norms given seeded statistics, so that
//! folding them is tested on something other than the identity), at its input size, and the
//! fully convolutional ones at a second size; every layer of the layer language in one
//! model; a `yolo_shapes` run folder (tests/it/detection.rs); torchvision's AlexNet
//! weights against torchvision's own logits.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use runner::model::{Model, Pass};
use runner::predict::open_model;

use crate::common::{python_or, repo, runner, skip};

/// What tests/check_onnx.py printed.
pub struct Checked {
    pub abs: f64,
    pub relative: f64,
    pub input_dims: String,
    pub output_dims: String,
    pub metadata: serde_json::Value,
}

/// Runs tests/check_onnx.py on `onnx` with `input` and the `output` it must give; `None`
/// when onnx or onnxruntime is missing (a visible SKIPPED line, or a failure under
/// RUNNER_REQUIRE_ONNX=1).
pub fn check_onnx(dir: &Path, onnx: &Path, input: Tensor, output: Tensor, what: &str) -> Option<Checked> {
    let io = dir.join(format!("{what}.io.safetensors").replace(['/', ' '], "_"));
    let tensors = std::collections::HashMap::from([("input".to_string(), input), ("output".to_string(), output)]);
    candle_core::safetensors::save(&tensors, &io).unwrap();
    let python = python_or("python3");
    let out = Command::new(&python).arg(repo().join("tests/check_onnx.py")).arg(onnx).arg(&io).output();
    let what = format!("onnx::{what}");
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) if o.status.code() == Some(3) => {
            skip(&what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_ONNX");
            return None;
        }
        Ok(o) => panic!(
            "{what}: check_onnx.py: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(&what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_ONNX");
            return None;
        }
    };
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {text}"))
            .to_string()
    };
    let diff = line("onnx max abs difference ");
    let words: Vec<&str> = diff.split_whitespace().collect();
    let checked = Checked {
        abs: words[0].parse().unwrap(),
        relative: words[2].parse().unwrap(),
        input_dims: line("onnx input dims "),
        output_dims: line("onnx output dims "),
        metadata: serde_json::from_str(&line("onnx metadata ")).unwrap(),
    };
    eprintln!(
        "ONNX {what}: max abs difference {:.2e}, relative {:.2e} (scale {})",
        checked.abs, checked.relative, words[4]
    );
    Some(checked)
}

/// A seeded input of `batch` images of the model's input shape (or of height and width
/// `hw`), values in [-1, 1).
fn seeded_input(model: &Model, batch: usize, hw: Option<[usize; 2]>, seed: u64) -> Tensor {
    let mut shape = vec![batch];
    shape.extend(&model.graph().input);
    if let Some([h, w]) = hw {
        shape[2..].copy_from_slice(&[h, w]);
    }
    let n: usize = shape.iter().product();
    let mut rng = runner::rng::Rng::new(seed);
    let values: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Gives every batch norm seeded statistics and affine weights (a fresh model's are the
/// identity: running mean 0, variance 1, weight 1, bias 0) and writes all the weights to
/// `file`; `false` when the model has no batch norm (nothing written).
fn perturb_batch_norms(model: &Model, seed: u64, file: &Path) -> bool {
    let norms: Vec<String> =
        model.buffers.keys().filter_map(|k| k.strip_suffix(".running_mean").map(str::to_string)).collect();
    if norms.is_empty() {
        return false;
    }
    let mut rng = runner::rng::Rng::new(seed);
    for p in &norms {
        for (name, lo, hi) in
            [("weight", 0.5, 1.5), ("bias", -0.5, 0.5), ("running_mean", -0.5, 0.5), ("running_var", 0.5, 2.0)]
        {
            let key = format!("{p}.{name}");
            let var = model.params.get(&key).or_else(|| model.buffers.get(&key)).unwrap();
            let values: Vec<f32> = (0..var.elem_count()).map(|_| (lo + rng.next_f64() * (hi - lo)) as f32).collect();
            var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let tensors = runner::model::weights::cpu_tensors(model).unwrap();
    candle_core::safetensors::save(&tensors, file).unwrap();
    true
}

/// A copy of a model file without its groups' `init` lines, in `dir`: the zoo's
/// overfeat models start from a shapes_classify run, which a test machine has not made.
fn without_inits(file: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    if !text.contains("init = {") {
        return file.to_path_buf();
    }
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("init = {")).collect();
    let copy = dir.join(file.file_name().unwrap());
    std::fs::write(&copy, kept.join("\n")).unwrap();
    copy
}

/// Exports `target` (a model or experiment file, or a run folder) with `args` and `sets`,
/// and checks onnxruntime's output on `batch` seeded images (of the model's input size, or
/// `hw`) against runner's eval-mode forward. Returns the check (`None`: skipped).
pub fn export_and_check(
    target: &Path,
    label: &str,
    sets: &[&str],
    (batch, hw): (usize, Option<[usize; 2]>),
    args: &[&str],
) -> Option<Checked> {
    let d = tempfile::tempdir().unwrap();
    let target = &match target.is_dir() {
        true => target.to_path_buf(),
        false => without_inits(target, d.path()),
    };
    let sets_owned: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let (_, model) = open_model(target, None, &sets_owned, true).unwrap();
    let weights = d.path().join("weights.safetensors");
    let perturbed = !target.is_dir() && perturb_batch_norms(&model, 11, &weights);
    let input = seeded_input(&model, batch, hw, 5);
    let output = model.forward(&input, Pass::eval()).unwrap();
    drop(model);

    let target_s = target.display().to_string();
    let weights_s = weights.display().to_string();
    let mut cmd = vec!["export", target_s.as_str(), "--format", "onnx", "--out", "m.onnx"];
    if perturbed {
        cmd.extend(["--weights", weights_s.as_str()]);
    }
    cmd.extend(args);
    for s in sets {
        cmd.extend(["--set", s]);
    }
    let o = runner(d.path(), &cmd);
    assert_eq!(o.code, 0, "{label}: {}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("wrote m.onnx (ONNX opset"), "{}", o.stdout);
    let checked = check_onnx(d.path(), &d.path().join("m.onnx"), input, output, label)?;
    assert!(
        checked.relative <= 1e-5,
        "{label}: onnxruntime differs from runner by {} of the output's scale",
        checked.relative
    );
    Some(checked)
}

fn model_file(name: &str) -> PathBuf {
    repo().join(format!("configs/models/{name}.toml"))
}

/// Each zoo model at its input size, batch 1, as written; then (the small ones) with a
/// dynamic batch of 3 and the batch norms folded.
fn zoo(names: &[&str], both: bool) {
    for name in names {
        let f = model_file(name);
        let Some(c) = export_and_check(&f, name, &[], (1, None), &[]) else { return };
        assert!(c.input_dims.starts_with("[1,"), "{name}: {}", c.input_dims);
        if both {
            let label = format!("{name} --dynamic-batch --fold-bn");
            let c = export_and_check(&f, &label, &[], (3, None), &["--dynamic-batch", "--fold-bn"]).unwrap();
            assert!(c.input_dims.starts_with("[\"batch\","), "{name}: {}", c.input_dims);
            assert!(c.output_dims.starts_with("[\"batch\","), "{name}: {}", c.output_dims);
        }
    }
}

const SMALL: [&str; 9] = [
    "lenet5",
    "alexnet_cifar",
    "monster",
    "resnet20",
    "shapes_cnn",
    "overfeat_shapes",
    "overfeat_shapes_per_class",
    "yolo_shapes",
    "fcn_shapes",
];
const IMAGENET: [&str; 2] = ["alexnet", "vgg16"];
const FCN: [&str; 4] = ["fcn8s", "fcn16s", "fcn32s", "fcn_alexnet"];
const YOLO: [&str; 3] = ["yolov1", "yolov1_tiny", "yolov1_coco"];

#[test]
fn every_zoo_model_is_checked() {
    let mut listed: Vec<&str> = [&SMALL[..], &IMAGENET, &FCN, &YOLO].concat();
    listed.sort();
    let mut zoo: Vec<String> = std::fs::read_dir(repo().join("configs/models"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .collect();
    zoo.sort();
    assert_eq!(listed, zoo, "a model in configs/models/ is not in this file's lists");
}

#[test]
fn small_zoo_models_run_in_onnxruntime() {
    zoo(&SMALL, true);
}

#[test]
fn imagenet_models_run_in_onnxruntime() {
    zoo(&IMAGENET, false);
}

#[test]
fn fcn_models_run_in_onnxruntime() {
    zoo(&FCN, false);
}

#[test]
fn yolo_models_run_in_onnxruntime() {
    zoo(&YOLO, false);
}

/// The fully convolutional models at a second size. Planned at another `model.input`
/// (the FCNs, whose crops are planned): a smaller image that is not square. With
/// `--dynamic-size` (one file for any size), run at another size than the plan's:
/// yolo_shapes, fcn_shapes, and overfeat_shapes made fully convolutional (its `linear`
/// layers run as convolutions: Overfeat's dense form, a map of class scores and boxes).
#[test]
fn fully_convolutional_models_run_at_a_second_size() {
    type Case<'a> = (&'a str, &'a [&'a str], Option<[usize; 2]>, &'a [&'a str], &'a str);
    let cases: [Case; 5] = [
        ("fcn_shapes", &["model.input=[3, 96, 128]"], None, &["--dynamic-batch"], "[\"batch\", 6, 96, 128]"),
        ("fcn32s", &["model.input=[3, 224, 288]"], None, &[], "[1, 21, 224, 288]"),
        ("fcn_shapes", &[], Some([96, 128]), &["--dynamic-size"], "[1, 6, \"out_height\", \"out_width\"]"),
        (
            "yolo_shapes",
            &[],
            Some([224, 192]),
            &["--dynamic-size", "--dynamic-batch", "--fold-bn"],
            "[\"batch\", 15, \"out_height\", \"out_width\"]",
        ),
        (
            "overfeat_shapes",
            &["model.fully_convolutional=true"],
            Some([192, 160]),
            &["--dynamic-size", "--dynamic-batch"],
            "[\"batch\", 9, \"out_height\", \"out_width\"]",
        ),
    ];
    for (name, sets, hw, args, dims) in cases {
        let label = format!("{name} {} {} {hw:?}", sets.join(" "), args.join(" "));
        let batch = if args.contains(&"--dynamic-batch") { 2 } else { 1 };
        let Some(c) = export_and_check(&model_file(name), &label, sets, (batch, hw), args) else { return };
        assert_eq!(c.output_dims.replace(' ', ""), dims.replace(' ', ""), "{label}");
    }
    // FCN-8s, one file for any size: its crops take their size from the maps they align
    // with. Exported as planned (500x500), run at 224x288 against runner's model planned at
    // 224x288 (the same seeded weights).
    let d = tempfile::tempdir().unwrap();
    let file = model_file("fcn8s");
    let (_, model) = open_model(&file, None, &["model.input=[3, 224, 288]".to_string()], true).unwrap();
    let input = seeded_input(&model, 1, None, 5);
    let output = model.forward(&input, Pass::eval()).unwrap();
    drop(model);
    let o = runner(
        d.path(),
        &["export", &file.display().to_string(), "--format", "onnx", "--dynamic-size", "--out", "f.onnx"],
    );
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let c = check_onnx(d.path(), &d.path().join("f.onnx"), input, output, "fcn8s --dynamic-size at 224x288").unwrap();
    assert!(c.relative <= 1e-5, "{}", c.relative);
    assert_eq!(c.output_dims.replace(' ', ""), "[1,21,\"out_height\",\"out_width\"]");
    // A model the file cannot take at any size is named: a ceil_mode pooling with padding.
    let p = d.path().join("pad.toml");
    std::fs::write(&p, "[model]\ninput = [3, 9, 9]\n[[model.groups]]\nname = \"g\"\nlayers = [{ maxpool = { kernel = 2, stride = 2, padding = 1, ceil_mode = true } }]\n").unwrap();
    let o = runner(d.path(), &["export", &p.display().to_string(), "--format", "onnx", "--dynamic-size"]);
    assert!(
        o.code != 0
            && o.stderr.contains("--dynamic-size: model.groups[0].layers[0] (maxpool): with ceil_mode and padding"),
        "{}",
        o.stderr
    );
}

/// Every layer kind and option of the layer language in one model: dilated and grouped
/// convolutions, batch norms after convolutions (folded) and after a pooling (kept), a
/// residual stage with a projection, max and average pooling with padding and ceil mode
/// (the last window of the average pooling starts in the padding and is dropped, as
/// PyTorch does), a grouped transposed convolution with output padding, nearest upsampling
/// by a factor and to a size that is not a multiple, bilinear upsampling to a size, a crop,
/// a concat, an add, leaky ReLU, sigmoid, global pooling, flatten, dropout and linear.
#[test]
fn every_layer_kind_runs_in_onnxruntime() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("every_layer.toml");
    std::fs::write(
        &f,
        r#"
[model]
input = [3, 21, 26]

[[model.groups]]
name = "stem"
layers = [
  { conv2d = { out = 8, kernel = 3, padding = 2, dilation = 2 } }, "batchnorm", "relu",
  { conv2d = { out = 8, kernel = 3, stride = 2, padding = 1, groups = 4, bias = false } }, "batchnorm", { leaky_relu = { slope = 0.2 } },
]

[[model.groups]]
name = "res"
repeat = 2
residual = true
activation = "relu"
layers = [
  { conv2d = { out = 12, kernel = 3, padding = 1, bias = false } }, "batchnorm", "relu",
  { conv2d = { out = 12, kernel = 3, padding = 1, bias = false } }, "batchnorm",
]

[[model.groups]]
name = "down"
layers = [
  { maxpool = { kernel = 3, stride = 2, padding = 1, ceil_mode = true } },
  "batchnorm", "sigmoid",
  { avgpool = { kernel = 2, stride = 2, padding = 1, ceil_mode = true } },
]

[[model.groups]]
name = "up"
layers = [
  { conv_transpose2d = { out = 6, kernel = 3, stride = 2, padding = 1, output_padding = 1, groups = 2 } },
  { upsample = { mode = "nearest", size = [9, 11] } },
  { upsample = { mode = "nearest", scale = 2 } },
  { upsample = { mode = "bilinear", size = [17, 23] } },
  { crop = { like = "stem", offset = [1, 2] } },
  { concat = { with = ["stem"] } },
]

[[model.groups]]
name = "skip"
from = "stem"
layers = [{ conv2d = { out = 14, kernel = 1 } }, { add = { with = ["up"] } }, "relu"]

[[model.groups]]
name = "head"
layers = ["global_avgpool", "flatten", "dropout", { linear = { out = 7 } }]
"#,
    )
    .unwrap();
    let variants: [(&str, usize, &[&str]); 4] = [
        ("every_layer", 1, &[]),
        ("every_layer --fold-bn --dynamic-batch", 2, &["--fold-bn", "--dynamic-batch"]),
        ("every_layer --opset 13", 1, &["--opset", "13"]),
        ("every_layer --opset 21 --dynamic-batch", 3, &["--opset", "21", "--dynamic-batch"]),
    ];
    for (label, batch, args) in variants {
        if export_and_check(&f, label, &[], (batch, None), args).is_none() {
            return;
        }
    }
    // Nearest upsampling by 41: onnxruntime's Resize reads column 1 for output column 41,
    // PyTorch's rule (and runner) column 0; the export's Gathers give runner's pixels.
    let n = d.path().join("nearest41.toml");
    std::fs::write(&n, "[model]\ninput = [1, 2, 2]\n[[model.groups]]\nname = \"up\"\nlayers = [{ upsample = { mode = \"nearest\", scale = 41 } }]\n").unwrap();
    let c = export_and_check(&n, "nearest x41", &[], (1, None), &[]).unwrap();
    assert_eq!(c.abs, 0.0, "a nearest upsampling copies pixels");
    let o = runner(d.path(), &["export", &n.display().to_string(), "--format", "onnx", "--dynamic-size"]);
    assert!(
        o.stderr.contains("--dynamic-size: model.groups[0].layers[0] (upsample): onnxruntime's nearest Resize"),
        "{}",
        o.stderr
    );
    // Found by a review: a ceil_mode pooling whose last window starts in the padding
    // (PyTorch drops it, ONNX's shape rule keeps it: the file failed to load before its
    // Slice), max and average; a bilinear upsampling to a side of 1 (`pytorch_half_pixel`
    // read coordinate 0 there: 0.6 off).
    let small = [
        ("ceil maxpool, then linear", "{ conv2d = { out = 4, kernel = 1 } }, { maxpool = { kernel = 2, stride = 2, padding = 1, ceil_mode = true } }, \"flatten\", { linear = { out = 5 } }"),
        ("ceil avgpool", "{ conv2d = { out = 3, kernel = 1 } }, { avgpool = { kernel = 2, stride = 2, padding = 1, ceil_mode = true } }"),
        ("bilinear to a side of 1", "{ conv2d = { out = 3, kernel = 1 } }, { upsample = { mode = \"bilinear\", size = [1, 5] } }"),
    ];
    for (i, (label, layers)) in small.iter().enumerate() {
        let f = d.path().join(format!("small{i}.toml"));
        let input = if label.starts_with("bilinear") { "[3, 4, 6]" } else { "[3, 3, 3]" };
        std::fs::write(&f, format!("[model]\ninput = {input}\n[[model.groups]]\nname = \"g\"\nlayers = [{layers}]\n"))
            .unwrap();
        export_and_check(&f, label, &[], (2, None), &["--dynamic-batch"]).unwrap();
    }

    // What the export says about the batch norms.
    let file = f.display().to_string();
    let o = runner(d.path(), &["export", &file, "--format", "onnx", "--fold-bn", "--out", "x.onnx"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("7 batch norms folded, 1 kept (not after a convolution: down.1)"), "{}", o.stdout);
}

/// torchvision's AlexNet with its own (seeded) weights: runner loads the state dict,
/// exports it, and onnxruntime gives torchvision's logits (tests/fixtures/torchvision_alexnet.py).
#[test]
fn torchvision_alexnet_weights_give_torchvisions_logits_in_onnxruntime() {
    let d = tempfile::tempdir().unwrap();
    let (pth, io) = (d.path().join("alexnet.pth"), d.path().join("torch_io.safetensors"));
    let python = python_or("/usr/bin/python3");
    let what = "onnx::torchvision_alexnet";
    let out =
        Command::new(&python).arg(repo().join("tests/fixtures/torchvision_alexnet.py")).arg(&pth).arg(&io).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) if o.status.code() == Some(3) => {
            return skip(what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_TORCH")
        }
        Ok(o) => panic!(
            "torchvision_alexnet.py: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => return skip(what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_TORCH"),
    }
    let file = model_file("alexnet").display().to_string();
    let pth_s = pth.display().to_string();
    let o = runner(
        d.path(),
        &["export", &file, "--weights", &pth_s, "--format", "onnx", "--dynamic-batch", "--out", "a.onnx"],
    );
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let tensors = candle_core::safetensors::load(&io, &Device::Cpu).unwrap();
    let (input, logits) = (tensors["input"].clone(), tensors["logits"].clone());
    let Some(c) = check_onnx(d.path(), &d.path().join("a.onnx"), input, logits, "torchvision_alexnet") else { return };
    assert!(c.relative <= 1e-5, "onnxruntime differs from torchvision by {} of the logits' scale", c.relative);
}

/// The test preprocessing, the classes and the task travel in the file's metadata.
#[test]
fn the_preprocessing_is_in_the_metadata() {
    let d = tempfile::tempdir().unwrap();
    let exp = repo().join("experiments/resnet20_cifar10.toml").display().to_string();
    let o = runner(d.path(), &["export", &exp, "--format", "onnx", "--out", "r.onnx"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let (_, model) = open_model(Path::new(&exp), None, &[], true).unwrap();
    let input = seeded_input(&model, 1, None, 3);
    let output = model.forward(&input, Pass::eval()).unwrap();
    let Some(c) = check_onnx(d.path(), &d.path().join("r.onnx"), input, output, "resnet20_cifar10") else { return };
    let m = &c.metadata;
    // configs/data/cifar10.toml's test normalize, and CIFAR-10's classes.
    let config = std::fs::read_to_string(repo().join("configs/data/cifar10.toml")).unwrap();
    let mean = m["mean"].as_str().unwrap();
    let first: f64 = serde_json::from_str::<Vec<f64>>(mean).unwrap()[0];
    assert!(config.contains(&format!("{first}")), "mean {mean} is not the config's");
    assert_eq!(m["input_size"], "[3,32,32]");
    assert_eq!(m["task"], "classify");
    let classes: Vec<String> = serde_json::from_str(m["classes"].as_str().unwrap()).unwrap();
    assert_eq!(classes.len(), 10);
    assert_eq!(classes[0], "airplane");
    assert!(m["preprocess"].as_str().unwrap().contains("(pixel / 255 - mean[c]) / std[c]"), "{m}");
    assert!(m["augment_test"].as_str().unwrap().contains("normalize"), "{m}");
    assert_eq!(m["output"], "[batch, classes] logits (no softmax)");
    assert_eq!(m["tta"], "\"none\"");
    assert_eq!(m["task_config"], "{\"label_smoothing\":0.0}");
}

/// `--external-data`: the weights in `<file>.data` beside the file, which onnx and
/// onnxruntime read from there (the way past protobuf's 2 GiB).
#[test]
fn external_data_holds_the_weights_beside_the_file() {
    let d = tempfile::tempdir().unwrap();
    let file = model_file("resnet20");
    let o = runner(
        d.path(),
        &[
            "export",
            &file.display().to_string(),
            "--format",
            "onnx",
            "--external-data",
            "--fold-bn",
            "--out",
            "sub/r.onnx",
        ],
    );
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("its weights are in sub/r.onnx.data"), "{}", o.stdout);
    let (onnx, data) = (d.path().join("sub/r.onnx"), d.path().join("sub/r.onnx.data"));
    // 272,474 parameters as f32, each tensor at a multiple of 4096: the data file holds
    // them; the ONNX file only the graph.
    let (onnx_len, data_len) = (std::fs::metadata(&onnx).unwrap().len(), std::fs::metadata(&data).unwrap().len());
    assert!(data_len >= 272_474 * 4 && onnx_len < 100_000, "{onnx_len} {data_len}");
    let names: Vec<_> = std::fs::read_dir(d.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    let (_, model) = open_model(&file, None, &[], true).unwrap();
    let input = seeded_input(&model, 1, None, 5);
    let output = model.forward(&input, Pass::eval()).unwrap();
    let Some(c) = check_onnx(d.path(), &onnx, input, output, "resnet20 --external-data") else { return };
    assert!(c.relative <= 1e-5, "{}", c.relative);
}

#[test]
fn bad_export_options_are_named() {
    let d = tempfile::tempdir().unwrap();
    let file = model_file("lenet5").display().to_string();
    let o = runner(d.path(), &["export", &file, "--format", "onnx", "--opset", "9"]);
    assert!(o.code != 0 && o.stderr.contains("--opset 9: runner writes opsets 13 to 21"), "{}", o.stderr);
    let o = runner(d.path(), &["export", &file, "--format", "pth", "--fold-bn"]);
    assert!(o.code != 0 && o.stderr.contains("apply to --format onnx, not --format pth"), "{}", o.stderr);
    assert!(!o.stderr.contains("cannot write"), "the option is refused before writing: {}", o.stderr);
    assert!(!d.path().join("lenet5.onnx").exists() && !d.path().join("lenet5.pth").exists());
    // A folder as --out is refused, and nothing is left beside it.
    std::fs::create_dir(d.path().join("adir")).unwrap();
    let o = runner(d.path(), &["export", &file, "--format", "onnx", "--out", "adir"]);
    assert!(o.code != 0 && o.stderr.contains("--out adir: a folder"), "{}", o.stderr);
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["adir"], "{names:?}");
}
