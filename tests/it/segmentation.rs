//! Segmentation end to end: the synthetic shapes set (its SegmentationClass palette PNGs),
//! one epoch of `experiments/fcn_shapes.toml` on it (tables, pyarrow's recomputation of the
//! scores from the masks and `segmentation.parquet`), and bad masks named in errors.

use crate::common::{repo, run_folder, runner};

fn exp(name: &str) -> String {
    repo().join("experiments").join(name).display().to_string()
}

/// `--set` overrides for a 64 px shapes set in `shapes/`.
fn small(extra: &[&str]) -> Vec<String> {
    let mut args = vec![exp("fcn_shapes.toml")];
    for s in [
        "data.root=shapes",
        "data.batch_size=8",
        "train.epochs=1",
        "model.input=[3, 64, 64]",
        "augment.train=[{ hflip = { p = 0.5 } }, { resize = { size = [64, 64] } }]",
        "augment.test=[{ resize = { size = [64, 64] } }]",
    ] {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn synth(dir: &std::path::Path) {
    let args = ["data", "synth", "shapes", "--out", "shapes", "--train", "24", "--test", "8", "--size", "64"];
    let out = runner(dir, &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn fcn_trains_on_the_shapes_masks_and_its_scores_recompute() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path());
    let args = small(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("24 train / 8 test"), "{}", out.stderr);
    assert!(out.stderr.contains("pixel acc") && out.stderr.contains("mIoU"), "{}", out.stderr);
    for m in ["pixel_accuracy", "mean_accuracy", "miou", "frequency_weighted_iou"] {
        assert!(out.stdout.contains(&format!("test.{m} = ")), "{m}: {}", out.stdout);
    }
    let run = run_folder(d.path(), &out);
    for f in ["segmentation.parquet", "confusion_matrix_test.parquet", "plots/confusion_matrix.png", "plots/masks.png"]
    {
        assert!(run.join(f).is_file(), "{f} missing in {}", run.display());
    }
    assert!(!run.join("predictions.parquet").exists() && !run.join("detections.parquet").exists());
    let year = d.path().join("shapes/VOCdevkit/VOC2007");
    let classes = "circle,square,triangle,star,cross";
    let py_args = [run.as_os_str(), year.as_os_str(), "test".as_ref(), classes.as_ref()];
    crate::common::pyarrow_check("tests/check_segmentation.py", &py_args, "ok miou");
}

#[test]
fn bad_masks_and_heads_are_named() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path());
    let masks = d.path().join("shapes/VOCdevkit/VOC2007/SegmentationClass");
    let run = |extra: &[&str]| {
        let args = small(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        runner(d.path(), &args)
    };

    // A model whose output is not the input's size: the plan says by how much.
    let model = std::fs::read_to_string(repo().join("configs/models/fcn_shapes.toml")).unwrap();
    let half = model.replace("scale = 4 } }", "scale = 2 } }");
    assert_ne!(half, model);
    std::fs::write(d.path().join("half.toml"), half).unwrap();
    let exp_text = std::fs::read_to_string(repo().join("experiments/fcn_shapes.toml")).unwrap();
    let shapes = repo().join("configs/data/shapes.toml");
    let exp_text = exp_text.replace(
        r#"extends = ["../configs/data/shapes.toml", "../configs/models/fcn_shapes.toml"]"#,
        &format!("extends = [{:?}, \"half.toml\"]", shapes.display().to_string()),
    );
    std::fs::write(d.path().join("half_exp.toml"), exp_text).unwrap();
    let mut args = small(&[]);
    args[0] = "half_exp.toml".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runner(d.path(), &args);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("[6, 32, 32]") && out.stderr.contains("upsample by 2x2 more"), "{}", out.stderr);

    // A class index above the classes (6: background and five shapes), in a greyscale PNG.
    let first_test = masks.join("000025.png");
    let saved = std::fs::read(&first_test).unwrap();
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x == 10 { 9 } else { 0 }])).save(&first_test).unwrap();
    let out = run(&[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("000025.png: pixel (10, 0) has class 9 but there are 6 classes (0-5) and 255 for void"),
        "{}",
        out.stderr
    );
    // An RGB image where an indexed mask belongs.
    image::RgbImage::new(64, 64).save(&first_test).unwrap();
    let out = run(&[]);
    assert!(out.stderr.contains("000025.png: a class mask must be an 8-bit palette"), "{}", out.stderr);
    // A mask of another size than its image.
    image::GrayImage::new(32, 64).save(&first_test).unwrap();
    let out = run(&[]);
    assert!(out.stderr.contains("000025.png: the mask is 32x64 but its image"), "{}", out.stderr);
    assert!(out.stderr.contains("000025.jpg is 64x64"), "{}", out.stderr);
    // With on_error = "skip" the sample is left out and counted.
    let out = run(&["--set", "data.on_error=\"skip\""]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("skipped 0 train and 1 test samples"), "{}", out.stderr);
    std::fs::write(&first_test, saved).unwrap();
}
