//! The model zoo in configs/models/, and loading PyTorch weights into it.
//!
//! Parity: `tests/fixtures/make_zoo_parity.py` (run here with Debian's python3-torch and
//! python3-torchvision, `/usr/bin/python3 tests/fixtures/make_zoo_parity.py OUT_DIR`)
//! builds torchvision's `alexnet()` and the course's Monster with `torch.manual_seed`, and
//! saves their state dicts and eval-mode logits for fixed inputs. runner loads the `.pth`
//! files into the committed TOML models and must give the same logits. `make test` sets
//! RUNNER_REQUIRE_TORCH=1 after installing torch, so a missing torch fails there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use runner::config::{InitConfig, ModelConfig};
use runner::model::weights::{load_group_inits, load_into, read};
use runner::model::{plan_model, Model, Pass};

fn zoo(name: &str) -> ModelConfig {
    #[derive(serde::Deserialize)]
    struct File {
        model: ModelConfig,
    }
    let path = crate::common::repo().join(format!("configs/models/{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str::<File>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())).model
}

#[test]
fn zoo_parameter_counts() {
    // Sources: LeNet5 and Monster as the course writes them (44,426 by hand; Monster 621,002
    // in the course); torchvision's documentation for AlexNet (61,100,840 parameters,
    // 0.71 GFLOPS); ResNet-20 with projection shortcuts (option A's 269,722 plus the two
    // projections 16*32 + 2*32 and 32*64 + 2*64, by hand), 40.8 M multiply-adds
    // (the "41M FLOPs" usually quoted).
    let count = |name: &str| {
        let g = plan_model(&zoo(name)).unwrap();
        (g.num_params(), g.macs())
    };
    assert_eq!(count("lenet5").0, 44_426);
    // The FCNs by hand: VGG16 without its last layer (138,357,544 - 4,097,000) plus the 1x1
    // scorers (4096 * 21 + 21; 512 * 21 + 21; 256 * 21 + 21) plus the fixed bilinear
    // kernels (21 * 21 * k * k: 64 for FCN-32s; 4 and 32 for FCN-16s; 4, 4 and 16 for
    // FCN-8s); FCN-AlexNet: AlexNet's features (2,469,696), fc6 as a 6x6 conv
    // (4096 * 256 * 36 + 4096), fc7 (4096 * 4096 + 4096), the scorer and a 64x64 kernel.
    let vgg_body = 138_357_544 - 4_097_000;
    let (score_fr, score_pool4, score_pool3) = (4096 * 21 + 21, 512 * 21 + 21, 256 * 21 + 21);
    let kernel = |k: usize| 21 * 21 * k * k;
    assert_eq!(count("fcn32s").0, vgg_body + score_fr + kernel(64));
    assert_eq!(count("fcn16s").0, vgg_body + score_fr + score_pool4 + kernel(4) + kernel(32));
    assert_eq!(count("fcn8s").0, vgg_body + score_fr + score_pool4 + score_pool3 + 2 * kernel(4) + kernel(16));
    assert_eq!(count("fcn_alexnet").0, 2_469_696 + 4096 * 256 * 36 + 4096 + 4096 * 4096 + 4096 + score_fr + kernel(64));
    // torchvision's documentation for VGG16: 138,357,544 parameters, 15.47 GFLOPS.
    let (vgg16, vgg16_macs) = count("vgg16");
    assert_eq!(vgg16, 138_357_544);
    assert_eq!((vgg16_macs as f64 / 1e9 * 100.0).round() / 100.0, 15.47, "{vgg16_macs}");
    let (alexnet, alexnet_macs) = count("alexnet");
    assert_eq!(alexnet, 61_100_840);
    assert_eq!((alexnet_macs as f64 / 1e9 * 100.0).round() / 100.0, 0.71, "{alexnet_macs}");
    assert_eq!(count("monster").0, 621_002);
    let (resnet20, resnet20_macs) = count("resnet20");
    assert_eq!(resnet20, 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64));
    assert_eq!((resnet20_macs as f64 / 1e6).round(), 41.0, "{resnet20_macs}");
    // alexnet_cifar, by hand: convs 1,792 + 110,784 + 663,936 + 884,992 + 590,080;
    // linears 1024*4096+4096 + 4096*4096+4096 + 4096*10+10.
    let convs = 1_792 + 110_784 + 663_936 + 884_992 + 590_080;
    assert_eq!(count("alexnet_cifar").0, convs + 4_198_400 + 16_781_312 + 40_970);
}

#[test]
fn monster_paths_follow_the_graph() {
    let g = plan_model(&zoo("monster")).unwrap();
    let names = g.param_shapes();
    assert_eq!(names["features.0.weight"], vec![64, 3, 11, 11]);
    assert_eq!(names["resblocks.7.3.weight"], vec![64, 64, 3, 3]);
    assert_eq!(names["fc.0.weight"], vec![10, 64]);
    // Group, repetition and layer paths address parameters; an unknown one is an error.
    assert_eq!(g.params_under("resblocks").unwrap().len(), 8 * 8);
    assert_eq!(g.params_under("resblocks.2").unwrap().len(), 8);
    assert_eq!(g.params_under("features.0").unwrap(), vec!["features.0.bias", "features.0.weight"]);
    let e = g.params_under("featurs").unwrap_err();
    assert!(e.contains("did you mean `features`?"), "{e}");
}

/// The parity files, made once per test process; `None` when torch is missing and not required.
fn torch_files(test: &str) -> Option<&'static Path> {
    // The files, or why they could not be made (the same for every test of the process).
    static DIR: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let required = std::env::var("RUNNER_REQUIRE_TORCH").is_ok_and(|v| v == "1");
        let dir = tempfile::tempdir().unwrap();
        let script = crate::common::repo().join("tests/fixtures/make_zoo_parity.py");
        let python = crate::common::python_or("/usr/bin/python3");
        let out = std::process::Command::new(&python).arg(&script).arg(dir.path()).output();
        match out {
            Ok(o) if o.status.success() => Ok(dir),
            Ok(o) if required => panic!("make_zoo_parity.py failed: {}", String::from_utf8_lossy(&o.stderr)),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(format!("no {} ({e})", python.display())),
        }
    });
    match dir {
        Ok(d) => Some(d.path()),
        Err(why) => {
            // One counted skip per test that needed the files.
            crate::common::skip(test, why, "RUNNER_REQUIRE_TORCH");
            None
        }
    }
}

fn io(file: &Path) -> (Tensor, Tensor) {
    let t = read(file, &Device::Cpu).unwrap();
    (t["x"].clone(), t["logits"].clone())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn vgg16_matches_torchvision() {
    let Some(dir) = torch_files("vgg16_matches_torchvision") else { return };
    let model = Model::new(&plan_model(&zoo("vgg16")).unwrap(), 0, &Device::Cpu).unwrap();
    let report = load_into(&model, &dir.join("vgg16.pth"), "", "", &BTreeMap::new(), true).unwrap();
    assert_eq!(report.loaded, 32, "16 weights and 16 biases");
    let (x, want) = io(&dir.join("vgg16_io.pth"));
    let got = model.forward(&x, Pass::eval()).unwrap();
    let d = max_diff(&got, &want);
    eprintln!("vgg16: max abs difference to torchvision {d}");
    // Measured 6.4e-7 (2026-12-04): 16 layers of f32 sums in another order. Random-init
    // logits are about 0.03, so 1e-4 would let a 0.3% scale error pass.
    assert!(d <= 2e-6, "max abs difference to torchvision's logits: {d}");
}

#[test]
fn alexnet_matches_torchvision() {
    let Some(dir) = torch_files("alexnet_matches_torchvision") else { return };
    let model = Model::new(&plan_model(&zoo("alexnet")).unwrap(), 0, &Device::Cpu).unwrap();
    let report = load_into(&model, &dir.join("alexnet.pth"), "", "", &BTreeMap::new(), true).unwrap();
    assert_eq!(report.loaded, 16, "8 weights and 8 biases");
    let (x, want) = io(&dir.join("alexnet_io.pth"));
    let got = model.forward(&x, Pass::eval()).unwrap();
    let d = max_diff(&got, &want);
    eprintln!("alexnet: max abs difference to torchvision {d}");
    // Measured 4.8e-8 (docs/zoo.md and docs/results.md give both figures).
    assert!(d <= 1e-6, "max abs difference to torchvision's logits: {d}");
}

fn init(file: &Path, prefix: &str, rename: &[(&str, &str)]) -> InitConfig {
    InitConfig {
        file: file.display().to_string(),
        run: None,
        url: None,
        sha256: None,
        prefix: Some(prefix.into()),
        rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        strict: true,
    }
}

/// The course's Monster state dict into configs/models/monster.toml, one group at a time.
fn monster_inits(file: &Path) -> Vec<(String, InitConfig, PathBuf)> {
    let one = [("weight", "0.weight"), ("bias", "0.bias")];
    let block = [("*.conv1", "*.0"), ("*.bn1", "*.1"), ("*.conv2", "*.3"), ("*.bn2", "*.4")];
    [
        ("features", init(file, "features", &[])),
        ("conv", init(file, "conv", &one)),
        ("resblocks", init(file, "resblocks", &block)),
        ("fc", init(file, "fc", &one)),
    ]
    .into_iter()
    .map(|(g, i)| (g.to_string(), i, file.to_path_buf()))
    .collect()
}

#[test]
fn monster_matches_the_course_model_in_eval_mode() {
    let Some(dir) = torch_files("monster_matches_the_course_model_in_eval_mode") else { return };
    let model = Model::new(&plan_model(&zoo("monster")).unwrap(), 0, &Device::Cpu).unwrap();
    load_group_inits(&model, &monster_inits(&dir.join("monster.pth"))).unwrap();
    // The batch-norm statistics came from the file (random there), not the defaults.
    let rm = model.buffers["resblocks.5.4.running_mean"].as_tensor().to_vec1::<f32>().unwrap();
    assert!(rm.iter().any(|v| *v != 0.0));
    let (x, want) = io(&dir.join("monster_io.pth"));
    let got = model.forward(&x, Pass::eval()).unwrap();
    let d = max_diff(&got, &want);
    eprintln!("monster: max abs difference to the course model {d}");
    // Measured 2.4e-7 (docs/zoo.md and docs/results.md give both figures).
    assert!(d <= 1e-6, "max abs difference to the course model's logits: {d}");
}

#[test]
fn a_pretrained_first_conv_from_alexnet() {
    // The course's Monster starts from AlexNet's features[0]: the group takes that conv, the
    // rest of the file's `features` is left unused (listed), not an error.
    let Some(dir) = torch_files("a_pretrained_first_conv_from_alexnet") else { return };
    let model = Model::new(&plan_model(&zoo("monster")).unwrap(), 0, &Device::Cpu).unwrap();
    let r = load_into(&model, &dir.join("alexnet.pth"), "features", "features", &BTreeMap::new(), true).unwrap();
    assert_eq!(r.loaded, 2);
    assert_eq!(r.unused.len(), 8, "{:?}", r.unused);
    let file = read(&dir.join("alexnet.pth"), &Device::Cpu).unwrap();
    let w = model.params["features.0.weight"].as_tensor();
    assert_eq!(max_diff(w, &file["features.0.weight"]), 0.0);
}

/// An experiment's model with every `init` of `[model.inits]` (and the groups' own) loaded
/// from `file` in place of the address it names, as the run would after fetching it.
fn with_experiment_inits(experiment: &str, file: &Path) -> Model {
    let path = crate::common::repo().join("experiments").join(experiment);
    let loaded = runner::config::load(&path, &runner::config::LoadOptions { sets: Vec::new(), env: false }).unwrap();
    let cfg = &loaded.config.model;
    let model = Model::new(&plan_model(cfg).unwrap(), 0, &Device::Cpu).unwrap();
    let inits = cfg.group_inits();
    assert!(!inits.is_empty(), "{experiment}: no init");
    for (g, key, init) in inits {
        let group = &cfg.groups[g].name;
        let prefix = init.prefix.clone().unwrap_or_else(|| group.clone());
        load_into(&model, file, group, &prefix, &init.rename, init.strict).unwrap_or_else(|e| panic!("{key}: {e:#}"));
    }
    model
}

#[test]
fn fcn_voc_starts_from_torchvision_vgg16() {
    // experiments/fcn_voc.toml's [model.inits] on torchvision's vgg16 state dict: each
    // convolution where the authors' surgery puts it, fc6 / fc7 reshaped into convolutions.
    let Some(dir) = torch_files("fcn_voc_starts_from_torchvision_vgg16") else { return };
    let file = read(&dir.join("vgg16.pth"), &Device::Cpu).unwrap();
    let model = with_experiment_inits("fcn_voc.toml", &dir.join("vgg16.pth"));
    let p = |n: &str| model.params[n].as_tensor().clone();
    for (ours, theirs) in [
        ("pool3.0", "features.0"),
        ("pool3.14", "features.14"),
        ("pool4.0", "features.17"),
        ("pool4.4", "features.21"),
        ("pool5.0", "features.24"),
        ("pool5.2", "features.26"),
        ("pool5.4", "features.28"),
        ("fc.3", "classifier.3"),
    ] {
        for t in ["weight", "bias"] {
            let want = file[&format!("{theirs}.{t}")].reshape(p(&format!("{ours}.{t}")).dims()).unwrap();
            assert_eq!(max_diff(&p(&format!("{ours}.{t}")), &want), 0.0, "{ours}.{t} <- {theirs}.{t}");
        }
    }
    // fc6: the linear [4096, 25088] is the 7x7 convolution [4096, 512, 7, 7].
    let w = file["classifier.0.weight"].reshape((4096, 512, 7, 7)).unwrap();
    assert_eq!(max_diff(&p("fc.0.weight"), &w), 0.0);
}

#[test]
fn monster_cifar10_starts_from_torchvision_alexnet() {
    let Some(dir) = torch_files("monster_cifar10_starts_from_torchvision_alexnet") else { return };
    let file = read(&dir.join("alexnet.pth"), &Device::Cpu).unwrap();
    let model = with_experiment_inits("monster_cifar10.toml", &dir.join("alexnet.pth"));
    for t in ["weight", "bias"] {
        let name = format!("features.0.{t}");
        assert_eq!(max_diff(model.params[&name].as_tensor(), &file[&name]), 0.0, "{name}");
    }
}

#[test]
fn bad_weight_files_say_what_they_hold() {
    let Some(dir) = torch_files("bad_weight_files_say_what_they_hold") else { return };
    let cfg = zoo("lenet5");
    let model = Model::new(&plan_model(&cfg).unwrap(), 0, &Device::Cpu).unwrap();
    let load = |file: &str, prefix: &str, strict: bool| {
        load_into(&model, &dir.join(file), "features", prefix, &BTreeMap::new(), strict)
    };
    let e = format!("{:#}", load("whole_model.pth", "", true).unwrap_err());
    assert!(e.contains("whole pickled model object") && e.contains("torch.save(model.state_dict(), path)"), "{e}");
    assert!(e.contains("whole_model.pth"), "{e}");
    let e = format!("{:#}", load("legacy.pth", "", true).unwrap_err());
    assert!(e.contains("legacy format"), "{e}");
    // A checkpoint dict with the state dict under "state_dict" is read through.
    let t = read(&dir.join("nested.pth"), &Device::Cpu).unwrap();
    assert_eq!(t.keys().collect::<Vec<_>>(), ["0.bias", "0.weight"]);
    // A prefix that matches nothing lists what the file has.
    let e = format!("{:#}", load("alexnet.pth", "backbone", true).unwrap_err());
    assert!(e.contains("no tensor is named `backbone.*`") && e.contains("features") && e.contains("classifier"), "{e}");
    // Strict: every problem in one error. AlexNet's features have other shapes than LeNet5's.
    let e = format!("{:#}", load("alexnet.pth", "features", true).unwrap_err());
    assert!(e.contains("shape: `features.0.weight` is [6, 1, 5, 5] in the model"), "{e}");
    assert!(e.contains("shape: `features.3.weight`"), "{e}");
    // Not strict: loads nothing that mismatches, keeps the problems for the log.
    let r = load("alexnet.pth", "features", false).unwrap();
    assert_eq!(r.loaded, 0);
    assert_eq!(r.problems.len(), 4, "{:?}", r.problems);
}

#[test]
fn files_that_are_not_weights() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.pth");
    std::fs::write(&f, "hello, not weights").unwrap();
    let e = format!("{:#}", read(&f, &Device::Cpu).unwrap_err());
    assert!(e.contains("notes.pth") && e.contains("neither a safetensors file nor a PyTorch state dict"), "{e}");
    let e = format!("{:#}", read(&dir.path().join("missing.safetensors"), &Device::Cpu).unwrap_err());
    assert!(e.contains("cannot read weights file") && e.contains("missing.safetensors"), "{e}");
}

#[test]
fn checkpoints_round_trip_with_dotted_names() {
    let cfg = zoo("monster");
    let a = Model::new(&plan_model(&cfg).unwrap(), 1, &Device::Cpu).unwrap();
    let b = Model::new(&plan_model(&cfg).unwrap(), 2, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("model.safetensors");
    runner::model::weights::save(&a, &f).unwrap();
    let names: Vec<String> = read(&f, &Device::Cpu).unwrap().into_keys().collect();
    assert!(names.contains(&"resblocks.3.1.running_var".to_string()), "{names:?}");
    let r = load_into(&b, &f, "", "", &BTreeMap::new(), true).unwrap();
    assert_eq!(r.loaded, a.params.len() + a.buffers.len());
    for (n, v) in &a.params {
        assert_eq!(max_diff(v.as_tensor(), b.params[n].as_tensor()), 0.0, "{n}");
    }
}

/// A runner checkpoint loads into the same model written in PyTorch with
/// `safetensors.torch.load_file` + `load_state_dict(strict=True)` and gives the same logits.
#[test]
fn runner_checkpoints_load_in_pytorch() {
    let required = std::env::var("RUNNER_REQUIRE_TORCH").is_ok_and(|v| v == "1");
    let model = Model::new(&plan_model(&zoo("lenet5")).unwrap(), 7, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    runner::model::weights::save(&model, &dir.path().join("model.safetensors")).unwrap();
    let mut rng = runner::rng::Rng::new(9);
    let values: Vec<f32> = (0..2 * 28 * 28).map(|_| rng.next_f64() as f32).collect();
    let x = Tensor::from_vec(values, (2, 1, 28, 28), &Device::Cpu).unwrap();
    let logits = model.forward(&x, Pass::eval()).unwrap();
    let io: std::collections::HashMap<String, Tensor> = [("x".to_string(), x), ("logits".to_string(), logits)].into();
    candle_core::safetensors::save(&io, dir.path().join("io.safetensors")).unwrap();
    let repo = crate::common::repo();
    let python = crate::common::python_or("/usr/bin/python3");
    let out = std::process::Command::new(&python)
        .arg(repo.join("tests/fixtures/check_checkpoint.py"))
        .arg(dir.path().join("model.safetensors"))
        .arg(dir.path().join("io.safetensors"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            eprintln!("pytorch: {text}");
            assert!(text.starts_with("ok "), "{text}");
        }
        Ok(o) if o.status.code() == Some(3) && !required => crate::common::skip(
            "runner_checkpoints_load_in_pytorch",
            &String::from_utf8_lossy(&o.stderr),
            "RUNNER_REQUIRE_TORCH",
        ),
        Err(e) if !required => {
            crate::common::skip("runner_checkpoints_load_in_pytorch", &e.to_string(), "RUNNER_REQUIRE_TORCH")
        }
        Ok(o) => {
            panic!("check_checkpoint.py: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) => panic!("{} is required here: {e}", python.display()),
    }
}

#[test]
fn check_prints_a_model_file_alone() {
    let repo = crate::common::repo();
    let out = crate::common::runner(&repo, &["check", "configs/models/monster.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("params: 621002") && out.stdout.contains("resblocks.7.act"), "{}", out.stdout);
    assert!(out.stdout.contains("ok: configs/models/monster.toml is a valid model"), "{}", out.stdout);
}
