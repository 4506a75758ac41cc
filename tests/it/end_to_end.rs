//! Tiny end-to-end runs of the binary on generated IDX data: the run folder, its parquet
//! tables read back, determinism, and bad data files.

use std::path::Path;

use arrow_array::{Array, Float64Array, Int32Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{run_folder, runner, write_toy_mnist};

fn read(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    if batches.is_empty() {
        // A table with no rows yet (a run's metrics before its first epoch).
        return RecordBatch::new_empty(schema);
    }
    arrow_select_concat(&batches)
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "small tables come back as one batch");
    batches[0].clone()
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).as_any().downcast_ref::<T>().unwrap()
}

/// The value of `metric` for `split` at `epoch` (from 0) in a run folder's metrics.parquet.
fn metric_at(dir: &Path, epoch: i32, split: &str, metric: &str) -> f64 {
    let m = read(&dir.join("metrics.parquet"));
    let (e, s, n, v) = (
        col::<Int32Array>(&m, "epoch"),
        col::<StringArray>(&m, "split"),
        col::<StringArray>(&m, "metric"),
        col::<Float64Array>(&m, "value"),
    );
    (0..m.num_rows())
        .find(|&i| e.value(i) == epoch && s.value(i) == split && n.value(i) == metric)
        .map(|i| v.value(i))
        .unwrap_or_else(|| panic!("{}: no row {epoch} {split} {metric}", dir.display()))
}

/// Writes toy data and a small experiment into `dir`; returns the experiment path.
pub fn setup(dir: &Path, epochs: usize) -> std::path::PathBuf {
    write_toy_mnist(&dir.join("data/toy"), 300, 100);
    let exp = dir.join("tiny.toml");
    std::fs::write(
        &exp,
        format!(
            r#"
[experiment]
name = "tiny"
seed = 3
device = "cpu"

[data]
dataset = "mnist"
root = "data/toy"
batch_size = 20
eval_batch_size = 50

[[augment.train]]
normalize = {{ mean = [0.2], std = [0.3] }}
[[augment.test]]
normalize = {{ mean = [0.2], std = [0.3] }}

[model]
input = [1, 28, 28]
[[model.groups]]
name = "features"
layers = [{{ conv2d = {{ out = 4, kernel = 5, stride = 2 }} }}, "relu", {{ maxpool = {{ kernel = 2 }} }}]
[[model.groups]]
name = "classifier"
layers = ["flatten", {{ dropout = {{ p = 0.1 }} }}, {{ linear = {{ out = 10 }} }}]

[metrics]
test = ["loss", "accuracy", "error_rate", "balanced_error_rate", "per_class_error", "top2_accuracy", "roc_auc", "confusion_matrix", "roc"]

[train]
epochs = {epochs}
optimizer = {{ sgd = {{ lr = 0.05, momentum = 0.9 }} }}
log_every = 5
"#
        ),
    )
    .unwrap();
    exp
}

#[test]
fn tiny_run_writes_readable_tables_and_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 3);
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let dir = run_folder(d.path(), &out);
    assert!(dir.starts_with(d.path().join("runs/tiny")), "{}", dir.display());
    // Not a terminal: a plain progress line every `log_every` (5) of the 15 batches.
    assert!(
        out.stderr.contains("epoch 1/3 batch 5/15") && out.stderr.contains("epoch 3/3 batch 15/15"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("batch 4/15"), "{}", out.stderr);
    for f in ["config.toml", "run.parquet", "params.parquet", "metrics.parquet"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // metrics.parquet: exact columns and one row per (epoch, split, metric).
    let m = read(&dir.join("metrics.parquet"));
    let names: Vec<String> = m.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["run_id", "epoch", "step", "split", "metric", "class", "value", "wall_time_s"]);
    let (epoch, split, metric, value) = (
        col::<Int32Array>(&m, "epoch"),
        col::<StringArray>(&m, "split"),
        col::<StringArray>(&m, "metric"),
        col::<Float64Array>(&m, "value"),
    );
    // Per-class rows carry the class name (MNIST's digits); the rest have no class.
    let class = col::<StringArray>(&m, "class");
    let per_class: Vec<usize> = (0..m.num_rows()).filter(|&i| !class.is_null(i)).collect();
    assert_eq!(per_class.len(), 3 * 10, "per_class_error for 10 classes, 3 epochs");
    assert!(per_class.iter().all(|&i| col::<StringArray>(&m, "metric").value(i) == "per_class_error"));
    assert!(dir.join("predictions.parquet").is_file() && dir.join("confusion_matrix_test.parquet").is_file());
    assert!(dir.join("roc_test.parquet").is_file());
    // Plots: decodable PNGs with something drawn on them.
    for name in ["loss", "accuracy", "balanced_error_rate", "roc", "confusion_matrix"] {
        let path = dir.join(format!("plots/{name}.png"));
        let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
        let coloured = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(coloured > 1000, "{name}.png is nearly blank ({coloured} pixels drawn)");
    }
    let get = |e: i32, s: &str, name: &str| -> f64 {
        (0..m.num_rows())
            .find(|&i| epoch.value(i) == e && split.value(i) == s && metric.value(i) == name)
            .map(|i| value.value(i))
            .unwrap_or_else(|| panic!("no row {e} {s} {name}"))
    };
    for e in 0..3 {
        let (acc, err) = (get(e, "test", "accuracy"), get(e, "test", "error_rate"));
        assert!((acc + err - 1.0).abs() < 1e-12);
        // Accuracy is a count over 100 test samples.
        assert!((acc * 100.0 - (acc * 100.0).round()).abs() < 1e-9, "{acc}");
    }
    let final_acc = get(2, "test", "accuracy");
    assert!(final_acc >= 0.9, "the toy classes are separable; got test accuracy {final_acc}");
    assert!(get(2, "train", "loss") < get(0, "train", "loss"), "training lowers the loss");

    // run.parquet: one completed row whose final metrics match the last epoch and stdout.
    let r = read(&dir.join("run.parquet"));
    assert_eq!(r.num_rows(), 1);
    assert_eq!(col::<StringArray>(&r, "status").value(0), "completed");
    assert_eq!(col::<StringArray>(&r, "experiment").value(0), "tiny");
    assert_eq!(col::<Float64Array>(&r, "test.accuracy").value(0), final_acc);
    assert!(out.stdout.contains(&format!("test.accuracy = {final_acc:.4}")), "{}", out.stdout);
    for c in ["run_id", "config_hash", "seed", "device", "started_at", "finished_at"] {
        assert!(r.column_by_name(c).is_some(), "run.parquet lacks {c}");
    }

    // params.parquet: the flattened config.
    let p = read(&dir.join("params.parquet"));
    let keys = col::<StringArray>(&p, "key");
    let vals = col::<StringArray>(&p, "value");
    let lr = (0..p.num_rows()).find(|&i| keys.value(i) == "train.optimizer.sgd.lr").map(|i| vals.value(i));
    assert_eq!(lr, Some("0.05"));

    // The resolved config.toml runs again as an experiment, and the same seed gives the
    // same numbers; `-v` adds the per-batch timings and changes nothing else.
    let again = runner(d.path(), &["-v", dir.join("config.toml").to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("epoch 1 batch 1/15: ") && again.stderr.contains("ms waiting for data"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("waiting for the loader"), "{}", again.stderr);
    assert!(!out.stderr.contains("waiting for data"), "{}", out.stderr);
    let m2 = read(&run_folder(d.path(), &again).join("metrics.parquet"));
    let values = |b: &RecordBatch| -> Vec<(i32, String, String, f64)> {
        let (e, s, n, v) = (
            col::<Int32Array>(b, "epoch"),
            col::<StringArray>(b, "split"),
            col::<StringArray>(b, "metric"),
            col::<Float64Array>(b, "value"),
        );
        (0..b.num_rows())
            .filter(|&i| !n.value(i).ends_with("_s") && n.value(i) != "images_per_s")
            .map(|i| (e.value(i), s.value(i).to_string(), n.value(i).to_string(), v.value(i)))
            .collect()
    };
    assert_eq!(values(&m), values(&m2), "same config and seed, same metrics");

    check_with_pyarrow(&dir);
}

/// The tables open in pyarrow (Python), without this program. `make test` sets
/// RUNNER_REQUIRE_PYARROW=1 after installing pyarrow, so a missing module fails there.
fn check_with_pyarrow(dir: &Path) {
    crate::common::pyarrow_check("tests/read_run.py", &[dir.as_os_str()], "ok");
}

#[test]
fn corrupt_data_file_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 1);
    // Truncate the test labels: 100 images but 99 labels.
    let labels = runner::data::idx::encode_labels(&[0u8; 99]);
    let p = d.path().join("data/toy/t10k-labels-idx1-ubyte.gz");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(d.path().join("data/toy/t10k-labels-idx1-ubyte"), labels).unwrap();
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("t10k-labels-idx1-ubyte") && out.stderr.contains("99 labels"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn check_prints_the_summary_and_errors_exit_2() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 1);
    let out = runner(d.path(), &["check", "tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // conv 4x1x5x5 + 4 = 104; linear (4*6*6=144)*10 + 10 = 1450. Total 1554 by hand.
    assert!(out.stdout.contains("params: 1554"), "{}", out.stdout);
    assert!(!d.path().join("runs").exists(), "check trains nothing and writes no run folder");

    let out = runner(d.path(), &["check", "tiny.toml", "--set", "data.root=\"elsewhere\""]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("key `data.dataset`") && out.stderr.contains("data.download = true"), "{}", out.stderr);

    let out =
        runner(d.path(), &["check", "tiny.toml", "--set", "data.root=\"elsewhere\"", "--set", "data.download=true"]);
    assert_eq!(out.code, 0, "absent but downloadable data is a warning: {}", out.stderr);
    assert!(out.stderr.contains("will be downloaded"), "{}", out.stderr);

    // Environment overrides come after the files and before --set.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["config", "tiny.toml", "--set", "data.batch_size=8"])
        .current_dir(d.path())
        .env("RUNNER__TRAIN__EPOCHS", "7")
        .env("RUNNER__DATA__BATCH_SIZE", "9")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert!(line("train.epochs = 7").contains("RUNNER__"), "{text}");
    assert!(line("data.batch_size = 8").contains("--set data.batch_size=8"), "{text}");

    let out = runner(d.path(), &["no_such.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no_such.toml"), "{}", out.stderr);
}

#[test]
fn ctrl_c_keeps_finished_epochs_and_marks_the_run_interrupted() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 500);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["tiny.toml", "-q"])
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until at least one epoch is in metrics.parquet, then send SIGINT.
    let runs = d.path().join("runs/tiny");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let metrics = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut it| it.next())
            .map(|e| e.unwrap().path().join("metrics.parquet"));
        if let Some(m) = found.filter(|m| m.exists()) {
            if read(&m).num_rows() > 0 {
                break m;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no epoch finished in time");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = metrics.parent().unwrap();
    let r = read(&dir.join("run.parquet"));
    assert_eq!(col::<StringArray>(&r, "status").value(0), "interrupted");
    assert!(col::<arrow_array::TimestampMicrosecondArray>(&r, "finished_at").is_valid(0));
    let m = read(&metrics);
    let epochs: std::collections::BTreeSet<i32> = col::<Int32Array>(&m, "epoch").iter().flatten().collect();
    assert!(!epochs.is_empty() && epochs.len() < 500, "{epochs:?}");
    // Every logged epoch is complete: each has the test accuracy row.
    let (e, s, n) = (col::<Int32Array>(&m, "epoch"), col::<StringArray>(&m, "split"), col::<StringArray>(&m, "metric"));
    for ep in &epochs {
        assert!((0..m.num_rows()).any(|i| e.value(i) == *ep && s.value(i) == "test" && n.value(i) == "accuracy"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().last().unwrap_or_default().starts_with("run folder: "), "{stdout}");
}

#[test]
fn data_preview_writes_a_labelled_grid() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 1);
    let out = runner(d.path(), &["data", "preview", "tiny.toml", "--split", "test", "--n", "5", "--out", "grid.png"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Test split in order: labels 0..4 (the toy data cycles through the classes).
    assert!(out.stdout.contains("0: 0") && out.stdout.contains("4: 4"), "{}", out.stdout);
    let img = image::open(d.path().join("grid.png")).unwrap().to_rgb8();
    // 5 samples -> 3 columns x 2 rows of (28 + 2) x (28 + 8 + 2) cells, plus a 2-pixel margin.
    assert_eq!(img.dimensions(), (3 * 30 + 2, 2 * 38 + 2));
    // The first label digit is drawn in yellow under the first image.
    let yellow = (30..36).any(|y| (2..6).any(|x| img.get_pixel(x, y).0 == [255, 255, 0]));
    assert!(yellow);
    let out = runner(d.path(), &["data", "preview", "tiny.toml", "--split", "val"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--split val"), "{}", out.stderr);
}

/// `[[train.freeze]]`: a frozen group keeps its initial weights bit for bit while the rest
/// trains; the trainable count is logged per epoch; `runner check` shows the schedule.
#[test]
fn frozen_groups_do_not_move() {
    let d = tempfile::tempdir().unwrap();
    let exp = setup(d.path(), 2);
    let mut text = std::fs::read_to_string(&exp).unwrap();
    text += "\n[[train.freeze]]\ngroups = [\"features\"]\nuntil_epoch = 2\n";
    // A batch norm in the frozen group: its running statistics must not move either.
    text = text.replace("\"relu\", { maxpool", "\"batchnorm\", \"relu\", { maxpool");
    assert!(text.contains("batchnorm"));
    std::fs::write(&exp, &text).unwrap();
    let check = runner(d.path(), &["check", "tiny.toml"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    // features.0: 4 * 1 * 5 * 5 + 4 = 104 parameters, features.1 (batch norm) 8; the
    // classifier 4*6*6*10 + 10 = 1450.
    assert!(check.stdout.contains("params: 1562") && check.stdout.contains("trainable: 1450"), "{}", check.stdout);
    let row = check.stdout.lines().find(|l| l.starts_with("features.0 ")).unwrap();
    assert!(row.ends_with("frozen"), "{row}");

    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = run_folder(d.path(), &out);
    // The initial weights: same config, same seed (the data root made absolute, as the
    // test process runs elsewhere).
    let abs = text.replace("root = \"data/toy\"", &format!("root = {:?}", d.path().join("data/toy")));
    std::fs::write(d.path().join("abs.toml"), abs).unwrap();
    let loaded = runner::config::load(&d.path().join("abs.toml"), &Default::default()).unwrap();
    let plan = runner::plan::plan(&loaded).unwrap();
    let init = runner::model::Model::new(&plan.graph, plan.seed, &candle_core::Device::Cpu).unwrap();
    let trained = runner::model::weights::read(&dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let same = |name: &str| {
        let a = init.params[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = trained[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    assert!(same("features.0.weight") && same("features.0.bias"), "frozen weights moved");
    assert!(same("features.1.weight") && same("features.1.bias"), "frozen batch norm moved");
    let rm = trained["features.1.running_mean"].to_vec1::<f32>().unwrap();
    let rv = trained["features.1.running_var"].to_vec1::<f32>().unwrap();
    assert!(rm.iter().all(|v| *v == 0.0) && rv.iter().all(|v| *v == 1.0), "frozen running statistics moved");
    assert!(!same("classifier.2.weight"), "the classifier trains");
    let m = read(&dir.join("metrics.parquet"));
    let (metric, value) = (col::<StringArray>(&m, "metric"), col::<Float64Array>(&m, "value"));
    let counts: Vec<f64> =
        (0..m.num_rows()).filter(|&i| metric.value(i) == "trainable_params").map(|i| value.value(i)).collect();
    assert_eq!(counts, [1450.0, 1450.0]);

    // An unknown group in the schedule is a plan error with a suggestion.
    std::fs::write(&exp, text.replace("groups = [\"features\"]", "groups = [\"feature\"]")).unwrap();
    let e = runner(d.path(), &["check", "tiny.toml"]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(
        e.stderr.contains("train.freeze[0].groups") && e.stderr.contains("did you mean `features`?"),
        "{}",
        e.stderr
    );
}

/// A group's `init` file is found relative to the config file that names it; a missing one
/// is a plan error naming the key.
#[test]
fn group_init_files_resolve_relative_to_their_config() {
    let d = tempfile::tempdir().unwrap();
    let exp = setup(d.path(), 1);
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let weights = run_folder(d.path(), &out).join("model.safetensors");
    std::fs::create_dir_all(d.path().join("exps/w")).unwrap();
    std::fs::copy(&weights, d.path().join("exps/w/tiny.safetensors")).unwrap();
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("name = \"features\"\n", "name = \"features\"\ninit = { file = \"w/tiny.safetensors\" }\n");
    assert!(text.contains("init = "));
    // Data roots are relative to the working folder, weight files to the config file.
    std::fs::write(d.path().join("exps/pre.toml"), text).unwrap();
    let out = runner(d.path(), &["exps/pre.toml", "--set", "train.epochs=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("group features: 2 tensors from"), "{}", out.stderr);
    std::fs::remove_file(d.path().join("exps/w/tiny.safetensors")).unwrap();
    let e = runner(d.path(), &["check", "exps/pre.toml"]);
    assert_eq!(e.code, 2);
    assert!(e.stderr.contains("model.groups[0].init.file") && e.stderr.contains("tiny.safetensors"), "{}", e.stderr);
}

/// `accumulate = 2` over batches of 10 takes the same steps as batches of 20 (SGD, no
/// dropout or batch norm): the mean gradient of 20 samples is the mean of two halves' means.
#[test]
fn gradient_accumulation_equals_a_larger_batch() {
    let d = tempfile::tempdir().unwrap();
    let exp = setup(d.path(), 2);
    let text = std::fs::read_to_string(&exp).unwrap().replace("{ dropout = { p = 0.1 } }, ", "");
    assert!(!text.contains("dropout"));
    std::fs::write(&exp, text).unwrap();
    let big = runner(d.path(), &["tiny.toml", "--set", "data.batch_size=20"]);
    let acc = runner(d.path(), &["tiny.toml", "--set", "data.batch_size=10", "--set", "train.accumulate=2"]);
    assert_eq!(big.code, 0, "{}", big.stderr);
    assert_eq!(acc.code, 0, "{}", acc.stderr);
    let loss = |out: &crate::common::Output| metric_at(&run_folder(d.path(), out), 1, "train", "loss");
    let (a, b) = (loss(&big), loss(&acc));
    assert!((a - b).abs() < 1e-4 * a.abs().max(1e-3), "train loss of epoch 2: batch 20 {a}, 10 x 2 {b}");
}

/// `--set experiment.precision=bf16` trains the tiny model with its convolution and linear
/// layer in bf16 (the model's unit test checks the rounding): it learns the toy classes as
/// the f32 run does, its numbers are not the f32 run's, `runner check` and the run folder
/// say bf16, and the
/// weights it saves are f32 (the master weights).
#[test]
fn a_bf16_run_learns_and_keeps_f32_weights() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), 2);
    let f32_run = runner(d.path(), &["tiny.toml"]);
    assert_eq!(f32_run.code, 0, "{}", f32_run.stderr);
    let check = runner(d.path(), &["check", "tiny.toml", "--set", "experiment.precision=bf16"]);
    assert!(check.stdout.contains("(seed 3, device cpu, precision bf16)"), "{}{}", check.stdout, check.stderr);
    let out = runner(d.path(), &["tiny.toml", "--set", "experiment.precision=bf16"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("bf16"), "{}", out.stderr);
    let dir = run_folder(d.path(), &out);
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");

    let f32_dir = run_folder(d.path(), &f32_run);
    let acc = metric_at(&dir, 1, "test", "accuracy");
    assert!(acc >= 0.9, "the toy classes are separable in bf16 too; got test accuracy {acc}");
    let (loss16, loss32) = (metric_at(&dir, 1, "train", "loss"), metric_at(&f32_dir, 1, "train", "loss"));
    assert_ne!(loss16, loss32, "the bf16 run computed as the f32 one did");
    assert!((loss16 - loss32).abs() < 0.1 * loss32, "bf16 train loss {loss16}, f32 {loss32}");

    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(!weights.is_empty());
    for (name, t) in &weights {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
    }
}
