//! Config loading: merge order, overrides, provenance, and errors that name file and key.

use std::path::Path;

use runner::config::{load, LoadOptions};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"
[data]
dataset = "mnist"
batch_size = 32

[model]
input = [1, 28, 28]
[[model.groups]]
name = "head"
layers = ["flatten", { linear = { out = 10 } }]

[train]
epochs = 3
optimizer = { sgd = { lr = 0.1 } }
"#;

fn opts(sets: &[&str]) -> LoadOptions {
    LoadOptions { sets: sets.iter().map(|s| s.to_string()).collect(), env: false }
}

#[test]
fn extends_merge_in_order_then_set_wins() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "configs/base.toml", BASE);
    write(d.path(), "configs/fast.toml", "[train]\nepochs = 5\n");
    let exp = write(
        d.path(),
        "experiments/e.toml",
        "extends = [\"../configs/base.toml\", \"../configs/fast.toml\"]\n[experiment]\nname = \"e\"\n[data]\nbatch_size = 16\n",
    );
    let l = load(&exp, &opts(&[])).unwrap();
    assert_eq!(l.config.train.epochs, 5, "later extended file wins");
    assert_eq!(l.config.data.batch_size, 16, "the experiment wins over what it extends");
    assert_eq!(l.files.len(), 3);

    let l = load(&exp, &opts(&["train.epochs=2", "train.optimizer.sgd.lr=0.05", "experiment.name=other"])).unwrap();
    assert_eq!(l.config.train.epochs, 2);
    assert_eq!(l.config.experiment.name, "other", "an unquoted string is taken as a string");
    let prov = l.provenance();
    let src = |k: &str| prov.iter().find(|(key, _, _)| key == k).map(|(_, _, s)| s.clone()).unwrap();
    assert_eq!(src("train.epochs"), "--set train.epochs=2");
    assert!(src("data.batch_size").ends_with("experiments/e.toml"), "{}", src("data.batch_size"));
    assert!(src("data.dataset").ends_with("configs/base.toml"), "{}", src("data.dataset"));
    assert_eq!(src("data.shuffle"), "default");
}

#[test]
fn three_misspelled_keys_are_all_reported_with_files_and_suggestions() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", &BASE.replace("batch_size = 32", "batch_sise = 32\nbatch_size = 32"));
    let exp = write(
        d.path(),
        "e.toml",
        "extends = [\"base.toml\"]\n[experiment]\nname = \"e\"\nsed = 1\n[train]\noptimizer = { sgd = { lr = 0.1, weight_decy = 0.1 } }\n",
    );
    let e = load(&exp, &opts(&[])).err().expect("must fail").to_string();
    assert!(e.starts_with("3 problems"), "{e}");
    assert!(e.contains("base.toml: unknown key `data.batch_sise`, did you mean `batch_size`?"), "{e}");
    assert!(e.contains("e.toml: unknown key `experiment.sed`, did you mean `seed`?"), "{e}");
    assert!(e.contains("e.toml: unknown key `train.optimizer.sgd.weight_decy`, did you mean `weight_decay`?"), "{e}");
}

#[test]
fn unknown_key_from_set_names_the_override() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\n{BASE}"));
    let e = load(&exp, &opts(&["train.epochz=3"])).err().unwrap().to_string();
    assert!(e.contains("--set train.epochz=3: unknown key `train.epochz`, did you mean `epochs`?"), "{e}");
}

#[test]
fn wrong_type_names_key_file_and_expected_type() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(
        d.path(),
        "e.toml",
        &format!("[experiment]\nname = \"e\"\n{}", BASE.replace("epochs = 3", "epochs = \"ten\"")),
    );
    let e = load(&exp, &opts(&[])).err().unwrap().to_string();
    assert!(e.contains("e.toml: key `train.epochs`"), "{e}");
    // In a user's words, not serde's `usize`.
    assert!(e.contains("ten") && e.contains("expected a whole number >= 0"), "{e}");
    let e = load(&exp, &opts(&["train.epochs=3", "data.batch_size=-3"])).err().unwrap().to_string();
    assert!(e.contains("key `data.batch_size`") && e.contains("`-3`, expected a whole number >= 0"), "{e}");
    let e = load(&exp, &opts(&["train.epochs=3", "data.shuffle=7"])).err().unwrap().to_string();
    assert!(e.contains("key `data.shuffle`") && e.contains("expected true or false"), "{e}");
}

#[test]
fn a_word_that_is_neither_a_command_nor_a_file_says_so() {
    let d = tempfile::tempdir().unwrap();
    let out = crate::common::runner(d.path(), &["chek", "X.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("`chek` is neither an experiment file nor a command (did you mean `check`?)"),
        "{}",
        out.stderr
    );
    // A path that does not exist is still a missing experiment file.
    let out = crate::common::runner(d.path(), &["nothere.toml"]);
    assert_eq!(out.code, 2);
    assert!(!out.stderr.contains("neither"), "{}", out.stderr);
}

#[test]
fn check_refuses_a_cuda_device_on_a_cpu_build() {
    if candle_core::utils::cuda_is_available() {
        return crate::common::skip(
            "check_refuses_a_cuda_device_on_a_cpu_build",
            "this is a CUDA build",
            "RUNNER_NEVER",
        );
    }
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\ndevice = \"cuda\"\n{BASE}"));
    let out = crate::common::runner(d.path(), &["check", exp.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("e.toml: key `experiment.device`: cuda:0 needs a CUDA build of runner"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("is valid"), "{}", out.stdout);
    // On the CPU it checks, and prints the optimizer as the config writes it.
    let out = crate::common::runner(
        d.path(),
        &["check", exp.to_str().unwrap(), "--set", "experiment.device=\"cpu\"", "--set", "data.download=true"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("train: 3 epochs, batch 32, optimizer = { sgd = { "), "{}", out.stdout);
    assert!(out.stdout.contains("lr = 0.1") && !out.stdout.contains("Sgd {"), "{}", out.stdout);
}

#[test]
fn a_training_list_that_drops_the_inherited_normalize_is_flagged() {
    let d = tempfile::tempdir().unwrap();
    let norm = "[[augment.train]]\nnormalize = { mean = [0.5], std = [0.5] }\n[[augment.test]]\nnormalize = { mean = [0.5], std = [0.5] }\n";
    write(d.path(), "base.toml", &format!("{BASE}{norm}"));
    let exp = write(
        d.path(),
        "e.toml",
        "extends = [\"base.toml\"]\n[experiment]\nname = \"e\"\n[[augment.train]]\nhflip = {}\n",
    );
    let plan = runner::plan::plan_without_data(&load(&exp, &opts(&[])).unwrap()).unwrap();
    let w =
        plan.warnings.iter().find(|w| w.contains("has no normalize")).unwrap_or_else(|| panic!("{:?}", plan.warnings));
    assert!(w.starts_with("augment.train (set in ") && w.contains("e.toml) has no normalize"), "{w}");
    assert!(w.contains("but augment.test (set in ") && w.contains("base.toml) has"), "{w}");
    // `runner config` shows the list that replaced an inherited one, and where that was.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["config", "e.toml"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert!(line("augment.train[0].hflip").ends_with("# e.toml, replacing the list of base.toml"), "{text}");
    assert!(line("augment.test[0].normalize").ends_with("# base.toml"), "{text}");
    assert!(line("model.input").ends_with("# base.toml"), "a plain list set once: {text}");
    // Both lists normalizing (or neither): nothing to say.
    let plan =
        runner::plan::plan_without_data(&load(&d.path().join("base.toml"), &opts(&["experiment.name=\"b\""])).unwrap())
            .unwrap();
    assert!(!plan.warnings.iter().any(|w| w.contains("normalize")), "{:?}", plan.warnings);
}

#[test]
fn unknown_layer_name_suggests_the_closest() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(
        d.path(),
        "e.toml",
        &format!("[experiment]\nname = \"e\"\n{}", BASE.replace("\"flatten\"", "\"flaten\"")),
    );
    let e = load(&exp, &opts(&[])).err().unwrap().to_string();
    assert!(e.contains("model.groups[0].layers[0]") && e.contains("did you mean `flatten`?"), "{e}");
}

#[test]
fn missing_extended_file_and_cycles() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", "extends = [\"nope.toml\"]\n");
    let e = load(&exp, &opts(&[])).err().unwrap().to_string();
    assert!(e.contains("e.toml: cannot read") && e.contains("nope.toml") && e.contains("extends"), "{e}");

    write(d.path(), "a.toml", "extends = [\"b.toml\"]\n");
    write(d.path(), "b.toml", "extends = [\"a.toml\"]\n");
    let e = load(&d.path().join("a.toml"), &opts(&[])).err().unwrap().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn bad_set_syntax_and_missing_key() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\n{BASE}"));
    let e = load(&exp, &opts(&["train.epochs"])).err().unwrap().to_string();
    assert!(e.contains("--set train.epochs: no `=`"), "{e}");
    let exp = write(d.path(), "f.toml", &BASE.replace("epochs = 3\n", ""));
    let e = load(&exp, &opts(&["experiment.name=x"])).err().unwrap().to_string();
    assert!(e.contains("missing key `train.epochs`"), "{e}");
}

#[test]
fn plan_errors_name_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    let text =
        format!("[experiment]\nname = \"e\"\n{}", BASE.replace("out = 10", "out = 7").replace("lr = 0.1", "lr = -1.0"));
    let exp = write(d.path(), "e.toml", &text);
    let l = load(&exp, &opts(&["data.root=\"nowhere\"", "data.download=true"])).unwrap();
    let e = runner::plan::plan(&l).err().unwrap().to_string();
    assert!(e.contains("e.toml: key `train.optimizer.sgd.lr`: must be > 0, is -1"), "{e}");
    assert!(e.contains("model.groups[0].layers[1]") && e.contains("10 classes"), "{e}");

    // Keys inside arrays name the file that set the array.
    let text = format!(
        "[experiment]\nname = \"e\"\n{BASE}\n[[augment.train]]\nnormalize = {{ mean = [0.1, 0.2], std = [1.0] }}\n"
    );
    let exp = write(d.path(), "g.toml", &text);
    let l = load(&exp, &opts(&["data.root=\"nowhere\"", "data.download=true"])).unwrap();
    let e = runner::plan::plan(&l).err().unwrap().to_string();
    assert!(e.contains("g.toml: key `augment.train[0].normalize`: mean and std need 1 values"), "{e}");
}

#[test]
fn committed_configs_check_cleanly() {
    // Every committed experiment loads and plans (data may be absent: download is on; image
    // folders cannot be downloaded, so those plan without data, as `runner predict` does).
    let repo = crate::common::repo();
    for entry in std::fs::read_dir(repo.join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        let l = load(&path, &opts(&[])).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let plan = if l.config.data.dataset == runner::config::DatasetKind::ImageFolder {
            runner::plan::plan_without_data(&l)
        } else {
            runner::plan::plan(&l)
        };
        let plan = plan.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            !plan.warnings.iter().any(|w| w.contains("has no normalize")),
            "{}: {:?}",
            path.display(),
            plan.warnings
        );
        if path.file_name().unwrap().to_string_lossy().starts_with("lenet5") {
            assert_eq!(plan.num_params(), 44_426, "the course's LeNet5 has 44,426 parameters");
        }
    }
}

#[test]
fn param_groups_weight_decay_and_positive_class() {
    // Hand-checked against the model: head.1 is the linear layer (weight and bias).
    let d = tempfile::tempdir().unwrap();
    let base = BASE.replace("[train]\nepochs = 3", "[train]\nepochs = 3\nno_weight_decay_on = [\"bias\"]");
    let text = format!(
        "[experiment]\nname = \"e\"\n{base}\n[[train.param_groups]]\npaths = [\"head.1\"]\nlr_mult = 0.1\n\
         [metrics]\ntest = [\"tp_rate\"]\npositive = \"7\"\n"
    );
    let exp = write(d.path(), "e.toml", &text);
    let sets = ["data.root=\"nowhere\"", "data.download=true"];
    let plan = runner::plan::plan(&load(&exp, &opts(&sets)).unwrap()).unwrap();
    let w = plan.hypers["head.1.weight"];
    let b = plan.hypers["head.1.bias"];
    assert_eq!((w.lr_mult, w.wd_mult), (0.1, 1.0));
    assert_eq!((b.lr_mult, b.wd_mult), (0.1, 0.0), "biases get no weight decay");
    assert_eq!(plan.binary.positive, 7, "MNIST's class \"7\" by name");
    // Bad values name the key and the file.
    let bad = |from: &str, to: &str| -> String {
        let exp = write(d.path(), "bad.toml", &text.replace(from, to));
        runner::plan::plan(&load(&exp, &opts(&sets)).unwrap()).err().unwrap().to_string()
    };
    let e = bad("paths = [\"head.1\"]", "paths = [\"haed\"]");
    assert!(e.contains("bad.toml: key `train.param_groups[0].paths`") && e.contains("did you mean `head`?"), "{e}");
    let e = bad("no_weight_decay_on = [\"bias\"]", "no_weight_decay_on = [\"biases\"]");
    assert!(e.contains("key `train.no_weight_decay_on`") && e.contains("`bias`, `batchnorm` or a path"), "{e}");
    let e = bad("positive = \"7\"", "positive = 12");
    assert!(e.contains("key `metrics.positive`") && e.contains("nor an index below 10"), "{e}");
    let e = bad("lr_mult = 0.1", "lr_mult = -1.0");
    assert!(e.contains("key `train.param_groups[0]`") && e.contains("must be >= 0"), "{e}");
}

#[test]
fn a_later_optimizer_replaces_an_inherited_one_and_two_in_one_file_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    // Tables merge key by key: without the rule the config would hold sgd and adam.
    let exp = write(
        d.path(),
        "e.toml",
        "extends = [\"base.toml\"]\n[experiment]\nname = \"e\"\n[train]\noptimizer = { adam = { lr = 0.001 } }\n",
    );
    let l = load(&exp, &opts(&[])).unwrap();
    assert!(matches!(l.config.train.optimizer, runner::config::OptimizerConfig::Adam { lr, .. } if lr == 0.001));
    // An override replaces the file's choice the same way.
    let l = load(&exp, &opts(&["train.optimizer.sgd.lr=0.5"])).unwrap();
    assert!(matches!(l.config.train.optimizer, runner::config::OptimizerConfig::Sgd { lr, .. } if lr == 0.5));
    let two = write(
        d.path(),
        "two.toml",
        "extends = [\"base.toml\"]\n[experiment]\nname = \"e\"\n[train]\noptimizer = { adam = { lr = 0.001 }, sgd = { lr = 0.1 } }\n",
    );
    let e = load(&two, &opts(&[])).err().unwrap().to_string();
    assert!(
        e.contains("key `train.optimizer`: names 2 optimizers, `adam`")
            && e.contains("two.toml")
            && e.contains("keep one"),
        "{e}"
    );
}

#[test]
fn sizes_no_machine_holds_are_refused_at_plan_time() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\n{BASE}"));
    let plan = |sets: &[&str]| {
        let mut all = vec!["data.root=\"nowhere\"", "data.download=true"];
        all.extend(sets);
        runner::plan::plan(&load(&exp, &opts(&all)).unwrap()).err().map(|e| e.to_string()).unwrap_or_default()
    };
    // A padding near 2^63 used to wrap around in the shape arithmetic.
    let e = plan(&["model.groups=[{ name = \"g\", layers = [{ conv2d = { out = 6, kernel = 5, padding = 9223372036854775000 } }] }]"]);
    assert!(
        e.contains("key `model.groups[0].layers[0]`: conv2d `padding` = 9223372036854775000: at most 16777216"),
        "{e}"
    );
    // 1.6e7 channels of 26x26 for a batch of 32: 2.8e15 bytes of activations.
    let e = plan(&["model.groups=[{ name = \"g\", layers = [{ conv2d = { out = 16000000, kernel = 3 } }] }]"]);
    assert!(
        e.contains("key `model.groups[0].layers[0]`: training this model needs about") && e.contains("g.0 (conv2d"),
        "{e}"
    );
    let e = plan(&["data.prefetch=1000000000000"]);
    assert!(e.contains("key `data.prefetch`: 1000000000001 batches in flight"), "{e}");
}

#[test]
fn a_run_config_from_before_antialias_keeps_its_resize() {
    use runner::config::AugmentOp;
    let antialias = |l: &runner::config::Loaded| -> Vec<bool> {
        let ops = l.config.augment.train.iter().chain(&l.config.augment.test);
        ops.filter_map(|op| match op {
            AugmentOp::Resize { antialias, .. } => Some(*antialias),
            _ => None,
        })
        .collect()
    };
    let d = tempfile::tempdir().unwrap();
    let body = format!(
        "[experiment]\nname = \"old\"\n{BASE}\n[augment]\ntrain = [{{ resize = {{ size = [20, 20] }} }}]\n\
         test = [{{ resize = {{ size = [20, 20] }} }}]\n"
    );
    // A resolved config.toml as a run wrote it before the key existed: four-tap resizes kept.
    let old = write(d.path(), "old/config.toml", &format!("# Resolved by runner. Merged, in order:\n\n{body}"));
    let mut l = load(&old, &opts(&[])).unwrap();
    assert_eq!(antialias(&l), [true, true], "the default");
    assert!(l.keep_resize_of_older_run());
    assert_eq!(antialias(&l), [false, false]);
    // The same run asked explicitly for antialiasing: --set wins.
    let mut l = load(&old, &opts(&["augment.test=[{ resize = { size = [20, 20], antialias = true } }]"])).unwrap();
    assert!(!l.keep_resize_of_older_run());
    // An experiment file (not resolved by runner) gets the default.
    let exp = write(d.path(), "exp.toml", &body);
    let mut l = load(&exp, &opts(&[])).unwrap();
    assert!(!l.keep_resize_of_older_run());
    assert_eq!(antialias(&l), [true, true]);
    // A run written today names the key.
    let new = write(d.path(), "new/config.toml", &format!("# Resolved by runner.\n\n{}", l.resolved_toml()));
    let mut l = load(&new, &opts(&[])).unwrap();
    assert!(!l.keep_resize_of_older_run());
    assert_eq!(antialias(&l), [true, true]);
}

/// `[experiment] precision`: "f32" (the default) leaves the resolved config, and so its hash
/// and every earlier run's resume, as it was; "bf16" is written out; anything else is an
/// error naming the file and the key, with the closest value.
#[test]
fn precision_is_f32_or_bf16_and_f32_keeps_the_config_hash() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\n{BASE}"));
    let plain = load(&exp, &opts(&[])).unwrap();
    assert_eq!(plain.config.experiment.precision, runner::config::Precision::F32);
    assert!(!plain.resolved_toml().contains("precision"), "{}", plain.resolved_toml());
    let f32 = load(&exp, &opts(&["experiment.precision=f32"])).unwrap();
    assert_eq!(f32.resolved_toml(), plain.resolved_toml(), "an explicit f32 is the same config");

    let bf16 = load(&exp, &opts(&["experiment.precision=bf16"])).unwrap();
    assert_eq!(bf16.config.experiment.precision, runner::config::Precision::Bf16);
    assert!(bf16.resolved_toml().contains("precision = \"bf16\""), "{}", bf16.resolved_toml());

    let bad = write(d.path(), "bad.toml", &format!("[experiment]\nname = \"e\"\nprecision = \"fp16\"\n{BASE}"));
    let e = load(&bad, &opts(&[])).err().unwrap().to_string();
    assert!(e.contains("bad.toml: key `experiment.precision`"), "{e}");
    assert!(e.contains("unknown name `fp16`, did you mean `bf16`?"), "{e}");
}

/// `[experiment] kernels` takes `auto` or `portable`; a wrong value names the file and key,
/// and a wrong `RUNNER_KERNELS` names the variable, before any work.
#[test]
fn kernels_take_auto_or_portable() {
    let d = tempfile::tempdir().unwrap();
    let exp = write(d.path(), "exp.toml", &format!("[experiment]\nname = \"k\"\nkernels = \"fast\"\n{BASE}"));
    let e = format!("{:#}", load(&exp, &opts(&[])).err().expect("must fail"));
    assert!(e.contains("exp.toml") && e.contains("experiment.kernels") && e.contains("auto, portable"), "{e}");
    let exp = write(d.path(), "ok.toml", &format!("[experiment]\nname = \"k\"\nkernels = \"portable\"\n{BASE}"));
    let loaded = load(&exp, &opts(&[])).unwrap();
    assert_eq!(loaded.config.experiment.kernels, runner::config::Kernels::Portable);
    // `auto`, the default, stays out of the resolved config: configs keep their hashes.
    let exp = write(d.path(), "auto.toml", &format!("[experiment]\nname = \"k\"\nkernels = \"auto\"\n{BASE}"));
    assert!(!load(&exp, &opts(&[])).unwrap().resolved_toml().contains("kernels"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["check", exp.to_str().unwrap()])
        .env("RUNNER_KERNELS", "fast")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RUNNER_KERNELS=fast: expected `auto` or `portable`"), "{stderr}");
}

/// `[train] ema` and `[log]`: bad values are plan errors naming the key; an unknown key is
/// named too.
#[test]
fn ema_and_log_keys_are_checked() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    let exp = write(d.path(), "e.toml", &format!("[experiment]\nname = \"e\"\n{BASE}"));
    let sets = ["data.root=\"nowhere\"", "data.download=true", "train.ema={ decay = 1.5, tau = 0.0 }"];
    let l = load(&exp, &opts(&sets)).unwrap();
    let e = runner::plan::plan(&l).err().unwrap().to_string();
    assert!(e.contains("key `train.ema.decay`: must be in (0, 1), is 1.5"), "{e}");
    assert!(e.contains("key `train.ema.tau`: must be > 0 (optimizer steps), is 0"), "{e}");
    let e = load(&exp, &opts(&["log.tensorbord=true"])).err().unwrap().to_string();
    assert!(e.contains("tensorbord"), "{e}");
}
