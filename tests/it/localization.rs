//! Localization end to end (Overfeat's recipe): a classification run on a single-object
//! shapes set, then `experiments/overfeat_shapes.toml` starting from it (features and
//! classifier frozen, `init = { run = ... }`), with pyarrow recomputing the logged
//! localization error and mean IoU from `localizations.parquet` and the XML.

use crate::common::{repo, run_folder, runner};

fn exp(name: &str) -> String {
    repo().join("experiments").join(name).display().to_string()
}

#[test]
fn overfeat_starts_from_a_classification_run_and_its_scores_recompute() {
    let d = tempfile::tempdir().unwrap();
    let args = [
        "data",
        "synth",
        "shapes",
        "--out",
        "single",
        "--train",
        "32",
        "--test",
        "8",
        "--size",
        "128",
        "--objects",
        "1",
        "--min-size",
        "30",
        "--max-size",
        "100",
    ];
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("wrote 40 images (32 train, 8 test) with 40 objects"), "{}", out.stdout);
    let sets = ["--set", "data.root=single", "--set", "data.batch_size=8", "--set", "train.epochs=1"];

    // Before the classification run: check warns, a run stops naming the folder.
    let out = runner(d.path(), &[&["check", &exp("overfeat_shapes.toml")][..], &sets[..]].concat());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no completed run in or under runs/shapes_classify"), "{}", out.stderr);
    let out = runner(d.path(), &[&[exp("overfeat_shapes.toml").as_str()][..], &sets[..]].concat());
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("group `features` init: no completed run"), "{}", out.stderr);

    // Step 1: classification, each image labelled with its object's class.
    let out = runner(d.path(), &[&[exp("shapes_classify.toml").as_str()][..], &sets[..]].concat());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let acc = |text: &str| text.lines().find_map(|l| l.strip_prefix("test.accuracy = ")).map(|v| v[..6].to_string());
    let classify_acc = acc(&out.stdout).unwrap_or_else(|| panic!("{}", out.stdout));
    let classify_run = run_folder(d.path(), &out);

    // Step 2: the regressor on the frozen features and classifier.
    let out = runner(d.path(), &[&[exp("overfeat_shapes.toml").as_str()][..], &sets[..]].concat());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out_train = out.stdout.clone();
    assert!(out.stderr.contains("group features: 25 tensors from"), "{}", out.stderr);
    let id = classify_run.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.stderr.contains(&format!("runs/shapes_classify/{id}/model.safetensors")), "{}", out.stderr);
    for m in ["localization_error", "mean_iou", "box_l2", "accuracy"] {
        assert!(out.stdout.contains(&format!("test.{m} = ")), "{m}: {}", out.stdout);
    }
    // The frozen classifier (batch norm in eval mode) gives the classification run's test
    // accuracy again.
    assert_eq!(acc(&out.stdout), Some(classify_acc));
    let run = run_folder(d.path(), &out);
    assert!(run.join("localizations.parquet").is_file() && run.join("plots/localizations.png").is_file());
    let year = d.path().join("single/VOCdevkit/VOC2007");
    crate::common::pyarrow_check(
        "tests/check_localizations.py",
        &[run.as_os_str(), year.as_os_str(), "test".as_ref()],
        "ok localization_error",
    );

    // Dense application (experiments/overfeat_shapes_dense.toml): at the window's own size
    // the map is one position, and the merged box is that position's box: the same scores
    // as the run's own evaluation.
    let dense = exp("overfeat_shapes_dense.toml");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", run.to_str().unwrap(), "--config", dense.as_str()];
        args.extend(["--set", "data.root=single", "--set", "data.batch_size=8"]);
        args.extend(extra);
        runner(d.path(), &args)
    };
    let metric = |text: &str, split: &str, m: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{split}.{m} = ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{split}.{m}: {text}"))
    };
    let single = |m: &str| metric(&out_train, "test", m);
    let out = eval(&["--set", "augment.test=[{ resize = { size = [128, 128] } }]"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for m in ["localization_error", "mean_iou", "accuracy"] {
        assert!((metric(&out.stdout, "test_overfeat_shapes_dense", m) - single(m)).abs() < 1e-4, "{m}: {}", out.stdout);
    }
    // At 160x160 a 3x3 map of windows 16 pixels apart; both merges give scores in range.
    for merge in ["weighted", "nms"] {
        let out = eval(&[
            "--set",
            "augment.test=[{ resize = { size = [160, 160] } }]",
            "--set",
            &format!("task.localize.merge=\"{merge}\""),
        ]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let miou = metric(&out.stdout, "test_overfeat_shapes_dense", "mean_iou");
        assert!((0.0..=1.0).contains(&miou), "{merge}: {}", out.stdout);
    }
    // predict slides the window too.
    let image = year.join("JPEGImages/000033.jpg");
    let weights = run.join("model.safetensors");
    let out =
        runner(d.path(), &["predict", dense.as_str(), image.to_str().unwrap(), "--weights", weights.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().nth(1).unwrap_or_default().split_whitespace().count(), 6, "{}", out.stdout);

    // predict: the class and its box.
    let image = year.join("JPEGImages/000033.jpg");
    let out = runner(d.path(), &["predict", run.to_str().unwrap(), image.to_str().unwrap(), "--out", "drawn"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.lines().nth(1).unwrap_or_default();
    assert_eq!(line.split_whitespace().count(), 6, "{}", out.stdout);
    assert!(d.path().join("drawn/000033.png").is_file());
}

#[test]
fn images_without_objects_are_named() {
    let d = tempfile::tempdir().unwrap();
    let args =
        ["data", "synth", "shapes", "--out", "empty", "--train", "4", "--test", "2", "--size", "128", "--objects", "0"];
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for exp_name in ["shapes_classify.toml", "overfeat_shapes.toml"] {
        let out = runner(d.path(), &[&exp(exp_name), "--set", "data.root=empty", "--set", "train.epochs=1"]);
        assert_ne!(out.code, 0);
        let task = if exp_name.starts_with("shapes") { "classify" } else { "localize" };
        assert!(
            out.stderr.contains("000001.jpg: the image holds no object")
                && out.stderr.contains(&format!("the {task} task labels each image with its largest object"))
                && out.stderr.contains("(4 such images in the train split)"),
            "{}",
            out.stderr
        );
    }
}
