//! `runner export` checked by PyTorch: the zoo's AlexNet and VGG16 (seeded weights) written
//! as `.pth` and `.safetensors` state dicts load into torchvision's `alexnet()` and
//! `vgg16()` with `strict=True`, and the models give runner's eval-mode logits
//! (tests/check_export.py, Debian's torch 1.13 and torchvision).

use std::process::Command;

use candle_core::{Device, Tensor};
use runner::model::Pass;
use runner::predict::open_model;

use crate::common::{python_or, repo, runner, skip};

fn exported_model_loads_into_torchvision(name: &str) {
    let d = tempfile::tempdir().unwrap();
    let model_file = repo().join(format!("configs/models/{name}.toml"));
    let (_, model) = open_model(&model_file, None, &[], true).unwrap();
    let mut rng = runner::rng::Rng::new(5);
    let values: Vec<f32> = (0..2 * 3 * 224 * 224).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
    let input = Tensor::from_vec(values, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let logits = model.forward(&input, Pass::eval()).unwrap();
    let io = d.path().join("io.safetensors");
    let tensors = std::collections::HashMap::from([("input".to_string(), input), ("logits".to_string(), logits)]);
    candle_core::safetensors::save(&tensors, &io).unwrap();
    let file = model_file.display().to_string();
    for (format, out) in [("pth", "m.pth"), ("safetensors", "m.safetensors")] {
        let o = runner(d.path(), &["export", &file, "--format", format, "--out", out]);
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains(&format!("wrote {out}")), "{}", o.stdout);
    }
    let python = python_or("/usr/bin/python3");
    let what = format!("export::{name}_loads_into_torchvision");
    let p = |f: &str| d.path().join(f);
    let out = Command::new(&python)
        .arg(repo().join("tests/check_export.py"))
        .args([std::ffi::OsStr::new(name), p("m.pth").as_os_str(), p("m.safetensors").as_os_str(), io.as_os_str()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let diff: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("export max abs difference "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{text}"));
            eprintln!("{name}: exported state dict, max abs difference to runner's logits {diff:.3e}");
            assert!(diff <= 1e-5, "{name}: {diff}");
        }
        Ok(o) if o.status.code() == Some(3) => skip(&what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_TORCH"),
        Ok(o) => {
            panic!("check_export.py: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) => skip(&what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_TORCH"),
    }
}

#[test]
fn alexnet_loads_into_torchvision() {
    exported_model_loads_into_torchvision("alexnet");
}

#[test]
fn vgg16_loads_into_torchvision() {
    exported_model_loads_into_torchvision("vgg16");
}

#[test]
fn export_refuses_what_it_cannot_write() {
    let d = tempfile::tempdir().unwrap();
    let file = repo().join("configs/models/lenet5.toml").display().to_string();
    let o = runner(d.path(), &["export", &file, "--format", "tflite"]);
    assert!(o.code != 0 && o.stderr.contains("--format tflite: expected onnx, pth or safetensors"), "{}", o.stderr);
    let o = runner(d.path(), &["export", "nowhere"]);
    assert!(o.code != 0 && o.stderr.contains("nowhere"), "{}", o.stderr);
    // The default name: the file's stem, here.
    let o = runner(d.path(), &["export", &file]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(d.path().join("lenet5.pth").is_file(), "{}", o.stdout);
}
