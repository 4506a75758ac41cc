//! CIFAR-10's binary format end to end: a generated archive extracted safely, then a tiny
//! training run through the committed CIFAR-10 data config (crop, flip, normalize).

use std::path::Path;

use runner::data::cifar::{encode, extract, RECORD};

use crate::common::{run_folder, runner};

/// A learnable toy CIFAR: class k has a bright square in the colour plane k % 3.
fn records(n: usize, seed: u64) -> Vec<(u8, Vec<u8>)> {
    let mut rng = runner::rng::Rng::new(seed);
    (0..n)
        .map(|i| {
            let k = (i % 10) as u8;
            let mut px: Vec<u8> = (0..3072).map(|_| (rng.next_f64() * 50.0) as u8).collect();
            let (plane, r0, c0) = (k as usize % 3, 4 + (k as usize / 3) * 6, 8);
            for r in r0..r0 + 6 {
                for c in c0..c0 + 16 {
                    px[plane * 1024 + r * 32 + c] = 230;
                }
            }
            (k, px)
        })
        .collect()
}

fn write_archive(path: &Path, files: &[(&str, Vec<u8>)]) {
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn archive_extracts_named_members_and_trains() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("data/cifar10");
    std::fs::create_dir_all(&root).unwrap();
    let mut files: Vec<(String, Vec<u8>)> =
        (1..=5).map(|i| (format!("cifar-10-batches-bin/data_batch_{i}.bin"), encode(&records(60, i)))).collect();
    files.push(("cifar-10-batches-bin/test_batch.bin".into(), encode(&records(100, 9))));
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let mut with_extra = refs.clone();
    with_extra.push(("cifar-10-batches-bin/readme.html", b"not extracted".to_vec()));
    write_archive(&root.join("cifar-10-binary.tar.gz"), &with_extra);

    let members: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    extract(&root.join("cifar-10-binary.tar.gz"), &root, &members).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("cifar-10-batches-bin/data_batch_3.bin")).unwrap().len(),
        60 * RECORD as u64
    );
    assert!(!root.join("cifar-10-batches-bin/readme.html").exists(), "only the named members are extracted");

    // A member the archive lacks is an error naming it.
    let e = extract(&root.join("cifar-10-binary.tar.gz"), &root, &["nope.bin".to_string()]).unwrap_err().to_string();
    assert!(e.contains("no member nope.bin"), "{e}");

    // Train through the committed data config (random crop with padding, flip, normalize).
    let data_cfg = crate::common::repo().join("configs/data/cifar10.toml");
    std::fs::write(
        d.path().join("tiny_cifar.toml"),
        format!(
            r#"extends = [{:?}]
[experiment]
name = "tiny_cifar"
[data]
root = "data/cifar10"
download = false
batch_size = 25
[model]
input = [3, 32, 32]
[[model.groups]]
name = "features"
layers = [{{ conv2d = {{ out = 8, kernel = 3, padding = 1 }} }}, "relu", {{ maxpool = {{ kernel = 4 }} }}]
[[model.groups]]
name = "classifier"
layers = ["flatten", {{ linear = {{ out = 10 }} }}]
[train]
epochs = 4
optimizer = {{ adam = {{ lr = 0.01 }} }}
"#,
            data_cfg.display().to_string()
        ),
    )
    .unwrap();
    let out = runner(d.path(), &["tiny_cifar.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let acc = crate::common::test_accuracy(&out);
    // The squares survive a 4-pixel shift and a flip; chance is 0.1.
    assert!(acc >= 0.6, "tiny CIFAR test accuracy {acc}");
    assert!(run_folder(d.path(), &out).join("metrics.parquet").is_file());
}

#[test]
fn ten_crop_test_time_augmentation() {
    let d = tempfile::tempdir().unwrap();
    let bins = d.path().join("data/cifar10/cifar-10-batches-bin");
    std::fs::create_dir_all(&bins).unwrap();
    for i in 1..=5 {
        std::fs::write(bins.join(format!("data_batch_{i}.bin")), encode(&records(60, i))).unwrap();
    }
    std::fs::write(bins.join("test_batch.bin"), encode(&records(100, 9))).unwrap();
    let exp = |tta: &str, test_ops: &str| {
        format!(
            r#"[experiment]
name = "tta"
[data]
dataset = "cifar10"
root = "data/cifar10"
batch_size = 25
[[augment.train]]
random_crop = {{ size = 28 }}
[[augment.train]]
hflip = {{ p = 0.5 }}
{test_ops}
[eval]
tta = "{tta}"
[model]
input = [3, 28, 28]
[[model.groups]]
name = "features"
layers = [{{ conv2d = {{ out = 8, kernel = 3, padding = 1 }} }}, "relu", {{ maxpool = {{ kernel = 4 }} }}]
[[model.groups]]
name = "classifier"
layers = ["flatten", {{ linear = {{ out = 10 }} }}]
[train]
epochs = 4
optimizer = {{ adam = {{ lr = 0.01 }} }}
"#
        )
    };
    // Test images stay 32x32; the ten 28x28 crops are averaged.
    std::fs::write(d.path().join("tta.toml"), exp("ten_crop", "")).unwrap();
    let out = runner(d.path(), &["tta.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let acc = crate::common::test_accuracy(&out);
    assert!(acc >= 0.6, "ten-crop test accuracy {acc}");

    // `runner eval --tta ten_crop` on the run's last weights gives its last epoch's test
    // rows again, bit for bit, under split `test_tta` (the loss too: the cross-entropy of
    // the ten crops' averaged probabilities).
    let run = crate::common::run_folder(d.path(), &out);
    let e = runner(d.path(), &["eval", run.to_str().unwrap(), "--tta", "ten_crop"]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let rows = crate::resume::rows(&run.join("metrics.parquet"));
    let last = rows.iter().filter(|r| r.2 == "test").map(|r| r.0).max().unwrap();
    for metric in ["accuracy", "loss"] {
        let logged: Vec<u64> =
            rows.iter().filter(|r| r.2 == "test" && r.0 == last && r.3 == metric).map(|r| r.4).collect();
        let again: Vec<u64> = rows.iter().filter(|r| r.2 == "test_tta" && r.3 == metric).map(|r| r.4).collect();
        assert_eq!(logged.len(), 1, "{metric}");
        assert_eq!(again, logged, "eval --tta ten_crop {metric}");
    }

    // Without TTA the 32x32 test images do not fit the 28x28 model: a plan error.
    std::fs::write(d.path().join("plain.toml"), exp("none", "")).unwrap();
    let out = runner(d.path(), &["check", "plain.toml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("model.input") && out.stderr.contains("after the test augmentations"),
        "{}",
        out.stderr
    );
    // With TTA, test images smaller than the crop are a plan error naming eval.tta.
    let smaller = "[[augment.test]]\ncenter_crop = { size = 24 }";
    std::fs::write(d.path().join("small.toml"), exp("ten_crop", smaller)).unwrap();
    let out = runner(d.path(), &["check", "small.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("eval.tta") && out.stderr.contains("[3, 24, 24]"), "{}", out.stderr);
}

#[test]
fn augmentation_keys_are_checked_at_plan_time() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data/cifar10")).unwrap();
    let data_cfg = crate::common::repo().join("configs/data/cifar10.toml");
    std::fs::write(
        d.path().join("e.toml"),
        format!(
            r#"extends = [{:?}]
[experiment]
name = "e"
[[augment.test]]
random_crop = {{ size = 40 }}
[model]
input = [3, 32, 32]
[[model.groups]]
name = "head"
layers = ["flatten", {{ linear = {{ out = 10 }} }}]
[train]
epochs = 1
optimizer = {{ sgd = {{ lr = 0.1 }} }}
"#,
            data_cfg.display().to_string()
        ),
    )
    .unwrap();
    let out = runner(d.path(), &["check", "e.toml", "--set", "augment.train=[{ hflip = { p = 1.5 } }]"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("augment.train[0].hflip") && out.stderr.contains("p must be in [0, 1], is 1.5"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("augment.test[0].random_crop") && out.stderr.contains("size 40 does not fit"),
        "{}",
        out.stderr
    );
}
