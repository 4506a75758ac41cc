//! runner's conv2d and pooling against PyTorch on fixed inputs: outputs and gradients.
//! The fixture is made by
//!     /usr/bin/python3 tests/fixtures/make_ops_fixture.py > tests/fixtures/ops_torch.toml
//! (Debian's python3-torch 1.13, float64).

use candle_core::{Device, Tensor, Var};
use runner::ops::bias::add_channel_bias;
use runner::ops::conv::{conv2d, ConvGeom};
use runner::ops::pool::{pool2d, PoolGeom, PoolKind};

fn fixture() -> toml::Table {
    let path = crate::common::repo().join("tests/fixtures/ops_torch.toml");
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor(case: &toml::Table, name: &str) -> Tensor {
    let shape: Vec<usize> =
        case[&format!("{name}_shape")].as_array().unwrap().iter().map(|v| v.as_integer().unwrap() as usize).collect();
    let data: Vec<f64> = case[name].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn int(case: &toml::Table, name: &str) -> usize {
    case[name].as_integer().unwrap() as usize
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(diff < 1e-10, "{what}: max abs difference {diff}");
}

#[test]
fn conv2d_matches_pytorch() {
    let f = fixture();
    let cases = f["conv"].as_array().unwrap();
    // Cases 7 and 8 have 16+ channels, 3x3, stride 1: runner's Winograd kernels; 9 and 10
    // are strided convs it runs as 3x3 stride-1 ones over the input's blocks (Winograd too).
    assert_eq!(cases.len(), 10);
    for (i, case) in cases.iter().enumerate() {
        let case = case.as_table().unwrap();
        let g = ConvGeom {
            stride: int(case, "stride"),
            padding: int(case, "padding"),
            dilation: int(case, "dilation"),
            groups: int(case, "groups"),
        };
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let w = Var::from_tensor(&tensor(case, "w")).unwrap();
        let b = Var::from_tensor(&tensor(case, "b")).unwrap();
        let y = add_channel_bias(&conv2d(&x, &w, g).unwrap(), &b).unwrap();
        let what = format!("conv case {i} {g:?}");
        assert_close(&y, &tensor(case, "y"), &format!("{what} output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} dx"));
        assert_close(grads.get(&w).unwrap(), &tensor(case, "dw"), &format!("{what} dw"));
        assert_close(grads.get(&b).unwrap(), &tensor(case, "db"), &format!("{what} db"));
        // The fused conv + bias op, as the model graph runs a conv layer with its bias.
        let y = runner::ops::conv::conv2d_bias(&x, &w, Some(&b), g).unwrap();
        assert_close(&y, &tensor(case, "y"), &format!("{what} fused output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} fused dx"));
        assert_close(grads.get(&w).unwrap(), &tensor(case, "dw"), &format!("{what} fused dw"));
        assert_close(grads.get(&b).unwrap(), &tensor(case, "db"), &format!("{what} fused db"));
    }
}

#[test]
fn pooling_matches_pytorch() {
    let f = fixture();
    let cases = f["pool"].as_array().unwrap();
    // The last two: integer inputs, so windows hold ties; the gradient goes to the first
    // maximum of each window, as PyTorch's.
    assert_eq!(cases.len(), 9);
    for (i, case) in cases.iter().enumerate() {
        let case = case.as_table().unwrap();
        let kind = if case["kind"].as_str() == Some("max") { PoolKind::Max } else { PoolKind::Avg };
        let g = PoolGeom {
            kernel: int(case, "kernel"),
            stride: int(case, "stride"),
            padding: int(case, "padding"),
            ceil_mode: case["ceil_mode"].as_bool().unwrap(),
        };
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let y = pool2d(&x, kind, g).unwrap();
        let what = format!("pool case {i} {kind:?} {g:?}");
        assert_close(&y, &tensor(case, "y"), &format!("{what} output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} dx"));
    }
}

#[test]
fn upsampling_matches_pytorch() {
    use runner::ops::upsample::{upsample2d, UpsampleMode};
    let f = fixture();
    let cases = f["upsample"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, case) in cases.iter().enumerate() {
        let case = case.as_table().unwrap();
        let mode =
            if case["mode"].as_str() == Some("bilinear") { UpsampleMode::Bilinear } else { UpsampleMode::Nearest };
        let expected = tensor(case, "y");
        let (oh, ow) = (expected.dim(2).unwrap(), expected.dim(3).unwrap());
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let y = upsample2d(&x, mode, (oh, ow)).unwrap();
        let what = format!("upsample case {i} {mode:?} to {oh}x{ow}");
        assert_close(&y, &expected, &format!("{what} output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} dx"));
    }
}

#[test]
fn batchnorm_training_mode_matches_pytorch() {
    use runner::ops::batchnorm::batch_norm_train;
    let f = fixture();
    let cases = f["batchnorm"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for (i, case) in cases.iter().enumerate() {
        let case = case.as_table().unwrap();
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let g = Var::from_tensor(&tensor(case, "g")).unwrap();
        let b = Var::from_tensor(&tensor(case, "b")).unwrap();
        let (y, _, _) = batch_norm_train(&x, &g, &b, 1e-5).unwrap();
        let what = format!("batchnorm case {i}");
        assert_close(&y, &tensor(case, "y"), &format!("{what} output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} dx"));
        assert_close(grads.get(&g).unwrap(), &tensor(case, "dg"), &format!("{what} dgamma"));
        assert_close(grads.get(&b).unwrap(), &tensor(case, "db"), &format!("{what} dbeta"));
    }
}

#[test]
fn conv_transpose2d_matches_pytorch() {
    use runner::ops::conv::conv_transpose2d;
    let f = fixture();
    let cases = f["conv_transpose"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for (i, case) in cases.iter().enumerate() {
        let case = case.as_table().unwrap();
        let g = ConvGeom {
            stride: int(case, "stride"),
            padding: int(case, "padding"),
            dilation: int(case, "dilation"),
            groups: int(case, "groups"),
        };
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let w = Var::from_tensor(&tensor(case, "w")).unwrap();
        let y = conv_transpose2d(&x, &w, g, int(case, "output_padding")).unwrap();
        let what = format!("conv_transpose case {i} {g:?}");
        assert_close(&y, &tensor(case, "y"), &format!("{what} output"));
        let grads = (y * tensor(case, "r")).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(grads.get(&x).unwrap(), &tensor(case, "dx"), &format!("{what} dx"));
        assert_close(grads.get(&w).unwrap(), &tensor(case, "dw"), &format!("{what} dw"));
    }
}

/// runner's optimizers against PyTorch's for fixed gradients and learning rates, with
/// parameter groups (lr and weight-decay multipliers) and a parameter without a gradient at
/// the first step. Fixture: `/usr/bin/python3 tests/fixtures/make_optim_fixture.py >
/// tests/fixtures/optim_torch.toml` (python3-torch 1.13, float64).
#[test]
fn optimizer_updates_match_pytorch() {
    use runner::config::OptimizerConfig;
    use runner::optim::{Hyper, Optimizer};
    use std::collections::BTreeMap;
    let path = crate::common::repo().join("tests/fixtures/optim_torch.toml");
    let f: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let floats =
        |v: &toml::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_float().unwrap()).collect() };
    let lists = |v: &toml::Value| -> Vec<Vec<f64>> { v.as_array().unwrap().iter().map(floats).collect() };
    let (a0, b0) = (floats(&f["a0"]), floats(&f["b0"]));
    let (grads_a, grads_b, lrs) = (lists(&f["grads_a"]), lists(&f["grads_b"]), floats(&f["lrs"]));
    let mult_b = floats(&f["mult_b"]);
    let cases = f["case"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let c = case.as_table().unwrap();
        let num = |k: &str| c[k].as_float().unwrap();
        let betas = || {
            let b = floats(&c["betas"]);
            [b[0], b[1]]
        };
        let cfg = match c["kind"].as_str().unwrap() {
            "sgd" => OptimizerConfig::Sgd {
                lr: lrs[0],
                momentum: num("momentum"),
                dampening: num("dampening"),
                nesterov: c["nesterov"].as_bool().unwrap(),
                weight_decay: num("weight_decay"),
            },
            "adam" => {
                OptimizerConfig::Adam { lr: lrs[0], betas: betas(), eps: num("eps"), weight_decay: num("weight_decay") }
            }
            _ => OptimizerConfig::Adamw {
                lr: lrs[0],
                betas: betas(),
                eps: num("eps"),
                weight_decay: num("weight_decay"),
            },
        };
        let a = Var::from_tensor(&Tensor::from_vec(a0.clone(), (2, 3), &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::from_vec(b0.clone(), 3, &Device::Cpu).unwrap()).unwrap();
        let (na, nb) = ("a".to_string(), "b".to_string());
        let hyper = BTreeMap::from([(nb.clone(), Hyper { lr_mult: mult_b[0], wd_mult: mult_b[1] })]);
        let mut opt = Optimizer::new(&cfg);
        let (want_a, want_b) = (lists(&c["a"]), lists(&c["b"]));
        for t in 0..lrs.len() {
            let mut grads =
                BTreeMap::from([(na.clone(), Tensor::from_vec(grads_a[t].clone(), (2, 3), &Device::Cpu).unwrap())]);
            if !grads_b[t].is_empty() {
                grads.insert(nb.clone(), Tensor::from_vec(grads_b[t].clone(), 3, &Device::Cpu).unwrap());
            }
            opt.step(lrs[t], [(&na, &a), (&nb, &b)], &grads, &hyper).unwrap();
            for (v, want, n) in [(&a, &want_a[t], "a"), (&b, &want_b[t], "b")] {
                let got: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let d = got.iter().zip(want).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(d < 1e-12, "{cfg:?} step {} param {n}: max abs difference {d}", t + 1);
            }
        }
    }
}

/// The ten crops of test-time augmentation against torchvision's `TenCrop` (the corners,
/// the centre with its half-to-even rounding, then the same of the mirror image), on
/// images of distinct values (tests/fixtures/make_tta_fixture.py).
#[test]
fn ten_crop_matches_torchvision() {
    let path = crate::common::repo().join("tests/fixtures/tta_torchvision.toml");
    let f: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = f["ten_crop"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let case = case.as_table().unwrap();
        let dims: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_integer().unwrap() as usize).collect();
        let size = case["size"].as_integer().unwrap() as usize;
        let want: Vec<f32> = case["crops"].as_array().unwrap().iter().map(|v| v.as_float().unwrap() as f32).collect();
        let image: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| i as f32).collect();
        let got = runner::data::tta::ten_crop(&image, 1, [dims[0], dims[1], dims[2]], size);
        assert_eq!(got, want, "ten crops of {dims:?}, size {size}");
    }
}

/// The `resize` augmentation against PIL's bilinear resize (torchvision's `Resize` on PIL
/// images) of a textured image (tests/fixtures/make_resize_fixture.py): within one grey
/// level, shrinking by 2, by 3.2, by 9, enlarging, at the same size and on one side only.
/// Without antialiasing, shrinking the 1-pixel stripes misses PIL by far more. The loader's
/// 8-bit path (a first resize of decoded images, fast_image_resize) is within one level too.
#[test]
fn resize_matches_pil_within_one_grey_level() {
    use runner::config::AugmentOp;
    let path = crate::common::repo().join("tests/fixtures/resize_pil.toml");
    let f: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bytes = |t: &toml::Table| -> Vec<f64> {
        t["pixels"].as_array().unwrap().iter().map(|v| v.as_integer().unwrap() as f64).collect()
    };
    let (w, h) = (f["width"].as_integer().unwrap() as usize, f["height"].as_integer().unwrap() as usize);
    // PIL's interleaved RGB -> runner's [3, h, w] in [0, 1].
    let rgb = bytes(&f);
    let image: Vec<f32> = (0..3 * h * w).map(|i| (rgb[(i % (h * w)) * 3 + i / (h * w)] / 255.0) as f32).collect();
    let cases = f["case"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let case = case.as_table().unwrap();
        let (ow, oh) = (case["width"].as_integer().unwrap() as usize, case["height"].as_integer().unwrap() as usize);
        let want = bytes(case);
        let run = |antialias: bool| -> f64 {
            let op = AugmentOp::Resize {
                size: Some([oh, ow]),
                shorter: None,
                mode: runner::ops::upsample::UpsampleMode::Bilinear,
                antialias,
            };
            let mut dims = [3, h, w];
            let mut rng = runner::rng::Rng::new(0);
            let out = runner::data::augment::apply(&op, image.clone(), &mut dims, &mut rng).unwrap();
            assert_eq!(dims, [3, oh, ow]);
            (0..3 * oh * ow)
                .map(|i| ((out[i] as f64 * 255.0).round() - want[(i % (oh * ow)) * 3 + i / (oh * ow)]).abs())
                .fold(0.0, f64::max)
        };
        let d = run(true);
        assert!(d <= 1.0, "{ow}x{oh}: {d} grey levels from PIL");
        // The loader's path for decoded images: PIL's own 8-bit arithmetic, the same bytes.
        let planar: Vec<u8> = (0..3 * h * w).map(|i| (image[i] * 255.0).round() as u8).collect();
        let got = runner::data::augment::resize_u8_pil(&planar, 3, (h, w), (oh, ow)).unwrap();
        let diffs: Vec<f64> =
            (0..3 * oh * ow).map(|i| (got[i] as f64 - want[(i % (oh * ow)) * 3 + i / (oh * ow)]).abs()).collect();
        let off = diffs.iter().filter(|&&d| d > 0.0).count();
        let most = diffs.iter().cloned().fold(0.0, f64::max);
        eprintln!("{ow}x{oh}: float path {d}, 8-bit path {most} grey levels, {off} of {} bytes off", diffs.len());
        assert!(most <= 1.0, "{ow}x{oh}: the 8-bit path is {most} grey levels from PIL");
        if ow * 2 <= w {
            let plain = run(false);
            assert!(plain > 20.0, "{ow}x{oh}: without antialiasing only {plain} grey levels from PIL");
        }
    }
}

/// Colour jitter's three adjustments against torchvision's on a textured RGB image (not a
/// flat grey one, which contrast and saturation leave unchanged whatever the factor):
/// factors below, at and above 1 (tests/fixtures/make_jitter_fixture.py).
#[test]
fn colour_jitter_adjustments_match_torchvision() {
    use runner::data::augment::{adjust_brightness, adjust_contrast, adjust_saturation};
    let path = crate::common::repo().join("tests/fixtures/jitter_torchvision.toml");
    let f: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let floats =
        |v: &toml::Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_float().unwrap() as f32).collect() };
    let image = floats(&f["image"]);
    let hw = 6 * 7;
    let cases = f["case"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let (kind, factor) = (case["kind"].as_str().unwrap(), case["factor"].as_float().unwrap() as f32);
        let mut img = image.clone();
        match kind {
            "brightness" => adjust_brightness(&mut img, factor),
            "contrast" => adjust_contrast(&mut img, 3, hw, factor),
            _ => adjust_saturation(&mut img, 3, hw, factor),
        }
        let want = floats(&case["out"]);
        let d = img.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-6, "{kind} {factor}: {d} from torchvision");
    }
    // The test can tell: the image is not left as it was by contrast 0.3.
    let mut img = image.clone();
    adjust_contrast(&mut img, 3, hw, 0.3);
    assert!(img.iter().zip(&image).any(|(a, b)| (a - b).abs() > 0.1));
}

/// Ten-crop test-time averaging and its loss against PyTorch: a linear classifier on the
/// ten 4x4 crops of two 6x6 images, softmax per crop, mean per image, then the mean of
/// -ln p[label] (tests/fixtures/make_tta_fixture.py).
#[test]
fn ten_crop_averaging_and_loss_match_pytorch() {
    use runner::model::{plan_model, Model};
    let path = crate::common::repo().join("tests/fixtures/tta_torchvision.toml");
    let f: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let a = f["averaging"].as_table().unwrap();
    let floats =
        |k: &str| -> Vec<f32> { a[k].as_array().unwrap().iter().map(|x| x.as_float().unwrap() as f32).collect() };
    let cfg: runner::config::ModelConfig = toml::from_str(
        "input = [1, 4, 4]\n[[groups]]\nname = \"fc\"\nlayers = [\"flatten\", { linear = { out = 3 } }]\n",
    )
    .unwrap();
    let model = Model::new(&plan_model(&cfg).unwrap(), 0, &Device::Cpu).unwrap();
    for (name, var) in &model.params {
        let t = match name.as_str() {
            "fc.1.weight" => Tensor::from_vec(floats("weight"), (3, 16), &Device::Cpu).unwrap(),
            "fc.1.bias" => Tensor::from_vec(floats("bias"), 3, &Device::Cpu).unwrap(),
            other => panic!("unexpected parameter {other}"),
        };
        var.set(&t).unwrap();
    }
    let probs =
        runner::task::classify::ten_crop_probs(&model, &floats("images"), 2, [1, 6, 6], 4, &Device::Cpu).unwrap();
    let got: Vec<f32> = probs.flatten_all().unwrap().to_vec1().unwrap();
    let d = got.iter().zip(floats("probs")).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d <= 1e-6, "averaged probabilities {d} from PyTorch: {got:?}");
    let labels = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let loss = runner::task::classify::averaged_loss(&probs, &labels).unwrap();
    let want = a["loss"].as_float().unwrap();
    assert!((loss - want).abs() <= 1e-6, "loss {loss}, PyTorch {want}");
}
