//! `runner predict` on a trained tiny run: the course's output format, the weight sources,
//! class-name files and bad input.

use std::path::Path;

use crate::common::{run_folder, runner};

/// A 28x28 grey PNG of the toy dataset's class `k` (the bright square of
/// `common::write_toy_mnist`, without noise).
fn toy_png(path: &Path, k: usize) {
    let mut img = image::GrayImage::new(28, 28);
    let (r0, c0) = (2 + (k / 5) * 14, 2 + (k % 5) * 5);
    for r in r0..r0 + 6 {
        for c in c0..(c0 + 6).min(28) {
            img.put_pixel(c as u32, r as u32, image::Luma([230]));
        }
    }
    img.save(path).unwrap();
}

#[test]
fn predict_prints_ranked_classes_from_a_run() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 3);
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = run_folder(d.path(), &out);
    assert!(run.join("model.safetensors").is_file());
    toy_png(&d.path().join("three.png"), 3);
    toy_png(&d.path().join("seven.png"), 7);
    let run_arg = run.to_string_lossy().into_owned();

    let out = runner(d.path(), &["predict", &run_arg, "three.png", "seven.png", "--topk", "3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}", out.stdout);
    assert_eq!(lines[0], "three.png (logits)");
    // `#<rank> <score:.2f> <class name>`; MNIST's class names are the digits.
    let top = |line: &str| -> (String, String) {
        let parts: Vec<&str> = line.splitn(3, ' ').collect();
        assert!(parts[1].parse::<f32>().is_ok() && parts[1].split('.').nth(1).map(str::len) == Some(2), "{line}");
        (parts[0].to_string(), parts[2].to_string())
    };
    assert_eq!(top(lines[1]), ("#1".into(), "3".into()), "{}", out.stdout);
    assert_eq!(top(lines[3]).0, "#3");
    assert_eq!(top(lines[5]), ("#1".into(), "7".into()), "{}", out.stdout);

    // The experiment with --weights gives the same lines; without weights it is an error.
    let weights = run.join("model.safetensors").to_string_lossy().into_owned();
    let again =
        runner(d.path(), &["predict", "tiny.toml", "three.png", "seven.png", "--topk", "3", "--weights", &weights]);
    assert_eq!(again.stdout, out.stdout, "{}", again.stderr);
    let e = runner(d.path(), &["predict", "tiny.toml", "three.png"]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("no weights to predict with") && e.stderr.contains("--weights"), "{}", e.stderr);

    // Class names from a file in the imagenet1000_clsid_to_human.txt format.
    let names: Vec<String> = (0..10).map(|i| format!("{i}: 'digit {i}'")).collect();
    std::fs::write(d.path().join("names.txt"), format!("{{{}}}", names.join(",\n "))).unwrap();
    let out = runner(d.path(), &["predict", &run_arg, "three.png", "--topk", "1", "--classes", "names.txt"]);
    assert!(out.stdout.lines().nth(1).unwrap().ends_with(" digit 3"), "{}", out.stdout);

    // An image of the wrong size names the image and the sizes; a missing image names it.
    image::GrayImage::new(32, 30).save(d.path().join("big.png")).unwrap();
    let e = runner(d.path(), &["predict", &run_arg, "big.png"]);
    assert!(
        e.stderr.contains("big.png") && e.stderr.contains("[1, 30, 32]") && e.stderr.contains("[1, 28, 28]"),
        "{}",
        e.stderr
    );
    let e = runner(d.path(), &["predict", &run_arg, "nothere.png"]);
    assert!(e.stderr.contains("nothere.png"), "{}", e.stderr);
    // A folder that is not a run.
    let e = runner(d.path(), &["predict", "data", "three.png"]);
    assert!(e.stderr.contains("not a run folder"), "{}", e.stderr);
}

/// A model file alone (`configs/models/lenet5.toml`, no `[experiment]`, `[data]` or
/// `[train]`) and a weights file predict: the printed ranking and scores are those of the
/// model's own forward pass on the image's pixels in [0, 1] (a 28x28 image: the default
/// resize to the model's input leaves it as it is).
#[test]
fn a_model_file_and_weights_predict_without_an_experiment() {
    use runner::model::{plan_model, Model, Pass};
    let d = tempfile::tempdir().unwrap();
    #[derive(serde::Deserialize)]
    struct ModelFile {
        model: runner::config::ModelConfig,
    }
    let models = crate::common::repo().join("configs/models/lenet5.toml");
    let file: ModelFile = toml::from_str(&std::fs::read_to_string(&models).unwrap()).unwrap();
    let model = Model::new(&plan_model(&file.model).unwrap(), 11, &candle_core::Device::Cpu).unwrap();
    runner::model::weights::save(&model, &d.path().join("w.safetensors")).unwrap();
    toy_png(&d.path().join("seven.png"), 7);

    let out = runner(
        d.path(),
        &["predict", models.to_str().unwrap(), "seven.png", "--weights", "w.safetensors", "--topk", "3"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("no [experiment], [data], [train]: the model and its weights alone"), "{}", out.stderr);

    let img = image::open(d.path().join("seven.png")).unwrap().to_luma8();
    let x: Vec<f32> = img.as_raw().iter().map(|&p| p as f32 / 255.0).collect();
    let x = candle_core::Tensor::from_vec(x, (1, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
    let logits: Vec<f32> = model.forward(&x, Pass::eval()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut ranked: Vec<(usize, f32)> = logits.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let want: Vec<String> =
        ranked[..3].iter().enumerate().map(|(i, (c, s))| format!("#{} {s:.2} {c}", i + 1)).collect();
    let got: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(got, want, "{}", out.stdout);
}
