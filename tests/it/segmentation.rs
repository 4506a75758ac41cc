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

/// A VOC2012 folder in the real format (JPEG, XML, ImageSets/Segmentation, palette PNG
/// masks with VOC's colour map and a void border) with `train` and `val` lists.
fn write_voc_masks(root: &std::path::Path) {
    let dir = root.join("VOCdevkit/VOC2012");
    for sub in ["JPEGImages", "Annotations", "ImageSets/Segmentation", "ImageSets/Main", "SegmentationClass"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let palette = runner::plots::voc_palette();
    for (set, range) in [("train", 0..3), ("val", 3..5)] {
        let ids: Vec<String> = range.map(|i| format!("2012_{i:06}")).collect();
        std::fs::write(dir.join(format!("ImageSets/Segmentation/{set}.txt")), ids.join("\n") + "\n").unwrap();
        for (k, id) in ids.iter().enumerate() {
            let (w, h) = (80 + 8 * k, 60);
            let img =
                image::RgbImage::from_fn(w as u32, h as u32, |x, y| image::Rgb([(x * 3) as u8, (y * 4) as u8, 90]));
            img.save(dir.join(format!("JPEGImages/{id}.jpg"))).unwrap();
            // A person (15) in a box, a dog (12) beside it, each with a 1-pixel void border.
            let mut mask = vec![0u8; w * h];
            for (class, [x0, y0, x1, y1]) in [(15u8, [10, 10, 30, 50]), (12, [40, 20, 70, 45])] {
                for y in y0 - 1..=y1 {
                    for x in x0 - 1..=x1 {
                        let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
                        mask[y * w + x] = if inside { class } else { 255 };
                    }
                }
            }
            let png = runner::data::synth::encode_mask_png(&mask, [h, w], &palette).unwrap();
            std::fs::write(dir.join(format!("SegmentationClass/{id}.png")), png).unwrap();
            let xml = format!(
                "<annotation><folder>VOC2012</folder><filename>{id}.jpg</filename><size><width>{w}</width>\
                 <height>{h}</height><depth>3</depth></size><segmented>1</segmented><object><name>person</name>\
                 <difficult>0</difficult><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>30</xmax><ymax>50</ymax>\
                 </bndbox></object></annotation>"
            );
            std::fs::write(dir.join(format!("Annotations/{id}.xml")), xml).unwrap();
        }
    }
}

#[test]
fn fcn_voc_plans_without_data_and_trains_on_a_vocdevkit_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = runner(d.path(), &["check", &exp("fcn_voc.toml")]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // By hand: VGG16 without its last layer (134,260,544) and the three 1x1 scorers
    // (4096 * 21 + 21, 512 * 21 + 21, 256 * 21 + 21); the bilinear kernels (21 * 21 * 4 * 4
    // twice, 21 * 21 * 16 * 16) are frozen.
    assert!(out.stdout.contains("params: 134489759"), "{}", out.stdout);
    assert!(out.stdout.contains("trainable: 134362751"), "{}", out.stdout);
    assert!(out.stdout.contains("score_pool3.4") && out.stdout.contains("[21, 500, 500]"), "{}", out.stdout);
    // The groups start from torchvision's VGG16, fetched when the run starts.
    let cached = d.path().join("cache/weights/vgg16-397923af.pth");
    let fetch = format!(
        "model.inits.pool3.url: https://download.pytorch.org/models/vgg16-397923af.pth will be fetched into {}",
        cached.display()
    );
    assert!(out.stderr.contains(&fetch), "{}", out.stderr);

    write_voc_masks(&d.path().join("voc"));
    // The same experiment on 64x64 inputs, one epoch, from random weights (offline).
    let out = runner(
        d.path(),
        &[
            &exp("fcn_voc.toml"),
            "--set",
            "model.pretrained=false",
            "--set",
            "data.root=voc",
            "--set",
            "train.epochs=1",
            "--set",
            "model.input=[3, 64, 64]",
            "--set",
            "augment.train=[{ hflip = { p = 0.5 } }, { resize = { size = [64, 64] } }]",
            "--set",
            "augment.test=[{ resize = { size = [64, 64] } }]",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("3 train / 2 test"), "{}", out.stderr);
    let run = run_folder(d.path(), &out);
    assert!(run.join("segmentation.parquet").is_file());
    let miou: f64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("test.miou = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!((0.0..=1.0).contains(&miou), "{miou}");
}

#[test]
fn bad_task_and_layer_values_name_their_keys() {
    let d = tempfile::tempdir().unwrap();
    let check = |exp_name: &str, sets: &[&str]| {
        let mut args = vec!["check".to_string(), exp(exp_name)];
        for s in sets {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        runner(d.path(), &args)
    };
    let out = check(
        "fcn_shapes.toml",
        &["task.segment.class_weights=[1.0, 2.0]", "task.segment.ignore_index=3", "train.label_smoothing=0.1"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    for want in [
        "key `task.segment.class_weights`: has 2 values for 6 classes",
        "key `task.segment.ignore_index`: (3) is a class's index",
        "key `train.label_smoothing`: is for classification's cross-entropy, not segmentation",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    let out = check("overfeat_shapes.toml", &["task.localize.box_weight=-1.0", "task.localize.per_class=true"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("key `task.localize.box_weight`: must be >= 0, is -1"), "{}", out.stderr);
    assert!(out.stderr.contains("[5 + 4 x 5 = 20] = [25]"), "{}", out.stderr);

    // Overfeat's dense application needs a model whose map steps evenly over the image:
    // global average pooling makes every image one position.
    let model = std::fs::read_to_string(repo().join("configs/models/overfeat_shapes.toml")).unwrap();
    let bad = model.replace("{ maxpool = { kernel = 8, stride = 1 } }", "\"global_avgpool\"");
    assert_ne!(bad, model);
    std::fs::write(d.path().join("global.toml"), bad).unwrap();
    let dense = format!("extends = [{:?}, \"global.toml\"]\n", exp("overfeat_shapes_dense.toml"));
    std::fs::write(d.path().join("dense.toml"), dense).unwrap();
    let out = runner(d.path(), &["check", "dense.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("key `model.fully_convolutional`: test samples are [3, 192, 192], larger than the input [3, 128, 128], but the model cannot slide: model.groups[1].layers[0] (global_avgpool) does not slide"),
        "{}",
        out.stderr
    );
    let out = check("overfeat_shapes.toml", &["model.inits.featurs={ file = \"w.safetensors\" }"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("key `model.inits.featurs`: names no group (the groups: features, classifier, regressor, output), did you mean `features`?"),
        "{}",
        out.stderr
    );
    let out = check("overfeat_shapes_dense.toml", &["task.localize.merge=\"mean\""]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("task.localize.merge") && out.stderr.contains("weighted"), "{}", out.stderr);

    // A crop window that does not fit, and an init naming two sources.
    let model = std::fs::read_to_string(repo().join("configs/models/fcn_shapes.toml")).unwrap();
    let bad = model.replace("{ add = { with = [\"stage3\"] } },", "{ crop = { like = \"stage1\", offset = [1, 1] } },");
    std::fs::write(d.path().join("bad.toml"), bad).unwrap();
    let out = runner(d.path(), &["check", "bad.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("a 40x40 window at offset [1, 1] does not fit the 20x20 map"), "{}", out.stderr);
    let out = runner(
        d.path(),
        &[
            "check",
            &exp("fcn_shapes.toml"),
            "--set",
            "model.groups=[{ name = \"g\", init = { file = \"w.safetensors\", run = \"runs/x\" }, layers = [\"relu\"] }]",
        ],
    );
    assert!(
        out.stderr.contains("key `model.groups[0].init`: names more than one of `file`, `run` and `url`"),
        "{}",
        out.stderr
    );
}
