//! Detection end to end: the synthetic shapes set written by `runner data synth shapes`,
//! one epoch of `experiments/yolo_shapes.toml` on it (tables, detections, pyarrow's
//! recomputation of the mAP, `runner predict` drawing boxes), and a VOCdevkit folder written
//! here in the real format (JPEG, XML, ImageSets) through `experiments/yolo_voc.toml`.

use std::path::Path;

use crate::common::{printed, repo, run_folder, runner};

fn exp(name: &str) -> String {
    repo().join("experiments").join(name).display().to_string()
}

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn yolo_trains_on_the_shapes_set_and_predicts_boxes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("shapes");
    // A half-written set (no image-set lists yet) does not count as the dataset.
    std::fs::create_dir_all(data.join("VOCdevkit/VOC2007/Annotations")).unwrap();
    let out = runner(d.path(), &["check", &exp("yolo_shapes.toml"), "--set", "data.root=shapes"]);
    assert!(out.stdout.contains("will be written into shapes"), "{}{}", out.stdout, out.stderr);
    std::fs::remove_dir_all(&data).unwrap();
    let args = ["data", "synth", "shapes", "--out", "shapes", "--train", "24", "--test", "8", "--size", "64"];
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("wrote 32 images (24 train, 8 test)"), "{}", out.stdout);
    // Same seed, same bytes.
    let again = runner(
        d.path(),
        &["data", "synth", "shapes", "--out", "again", "--train", "24", "--test", "8", "--size", "64"],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(tree_bytes(&data), tree_bytes(&d.path().join("again")));

    let sets = [
        "--set",
        "data.root=shapes",
        "--set",
        "data.batch_size=8",
        "--set",
        "train.epochs=2",
        "--set",
        "metrics.test=[\"loss\", \"map50\", \"map50_voc07\", \"ap50\", \"precision\", \"recall\"]",
    ];
    let mut args = vec![exp("yolo_shapes.toml")];
    args.extend(sets.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let map = printed(&out, "map50");
    assert!((0.0..=1.0).contains(&map), "{map}");
    let run = run_folder(d.path(), &out);
    for f in [
        "detections.parquet",
        "metrics.parquet",
        "run.parquet",
        "model.safetensors",
        "checkpoints/epoch_0002.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing in {}", run.display());
    }
    assert!(!run.join("predictions.parquet").exists(), "classification's table is not written for detection");

    // The trained run exported to ONNX: onnxruntime gives the run's model's outputs
    // (tests/it/onnx.rs).
    let checked =
        crate::onnx::export_and_check(&run, "yolo_shapes run", &[], (2, None), &["--dynamic-batch", "--fold-bn"]);
    if let Some(c) = checked {
        // The metadata says how to read the [15, 10, 10] map: grid 10, 2 boxes, 5 classes.
        let output = c.metadata["output"].as_str().unwrap();
        assert!(output.starts_with("[batch, 15, 10, 10] (or [batch, 1500]), read as [batch, 10, 10, 15]"), "{output}");
        assert!(
            output.contains("2 boxes of (x, y, sqrt w, sqrt h, confidence)") && output.contains("then 5 class scores"),
            "{output}"
        );
        let task: serde_json::Value = serde_json::from_str(c.metadata["task_config"].as_str().unwrap()).unwrap();
        assert_eq!((task["grid"].as_u64(), task["boxes"].as_u64()), (Some(10), Some(2)), "{task}");
    }

    // pyarrow recomputes the logged mAP from detections.parquet and the XML ground truth.
    let year = data.join("VOCdevkit/VOC2007");
    let classes = "circle,square,triangle,star,cross";
    let py_args = [run.as_os_str(), year.as_os_str(), "test".as_ref(), classes.as_ref()];
    crate::common::pyarrow_check("tests/check_detections.py", &py_args, "ok map50");

    // The preview draws the boxes with their class names over the augmented images.
    let preview = [&args[..1], &["--set", "data.root=shapes", "--n", "4", "--out", "preview.png"]].concat();
    let mut preview: Vec<&str> = preview.to_vec();
    preview.splice(0..0, ["data", "preview"]);
    let out = runner(d.path(), &preview);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("wrote preview.png (4 samples, train split)"), "{}", out.stdout);
    assert!(classes.split(',').any(|c| out.stdout.contains(c)), "the legend names classes: {}", out.stdout);
    assert!(image::open(d.path().join("preview.png")).is_ok());

    // data stats decode the training images (VOC's are files, not pixels in memory).
    let out = runner(d.path(), &["data", "stats", &exp("yolo_shapes.toml"), "--set", "data.root=shapes"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("24 images") && out.stdout.contains("pca_color_jitter"), "{}", out.stdout);

    // predict: one line per box and the image drawn.
    let image = year.join("JPEGImages/000025.jpg");
    let out = runner(
        d.path(),
        &["predict", run.to_str().unwrap(), image.to_str().unwrap(), "--out", "drawn", "--score-min", "0"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert!(!lines.is_empty(), "{}", out.stdout);
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{l}");
        assert!(classes.split(',').any(|c| c == f[0]), "{l}");
        let v: Vec<f64> = f[1..].iter().map(|x| x.parse().unwrap()).collect();
        assert!(v[1] <= v[3] && v[2] <= v[4] && v[3] <= 64.0 && v[4] <= 64.0, "{l}");
    }
    let png = image::open(d.path().join("drawn/000025.png")).unwrap();
    assert_eq!((png.width(), png.height()), (64, 64));

    // Without --score-min, only the boxes scoring at least 0.25 (the display threshold): the
    // same lines as above, those under it left out.
    let shown = runner(d.path(), &["predict", run.to_str().unwrap(), image.to_str().unwrap()]);
    assert_eq!(shown.code, 0, "{}{}", shown.stdout, shown.stderr);
    let shown: Vec<&str> = shown.stdout.lines().skip(1).collect();
    let score = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap();
    assert!(shown.iter().all(|l| lines.contains(l) && score(l) >= 0.25), "{shown:?} of {lines:?}");
    let above: Vec<&&str> = lines.iter().filter(|l| score(l) >= 0.26).collect();
    assert!(above.iter().all(|l| shown.contains(l)), "{above:?} not all in {shown:?}");
    assert!(shown.len() < lines.len(), "{} boxes at --score-min 0, {} at 0.25", lines.len(), shown.len());
}

/// A VOCdevkit folder in the real format: VOC2007 (trainval, test) and VOC2012 (trainval)
/// with JPEGs and XML of VOC's classes, as the official archives unpack.
fn write_voc(root: &Path) {
    let objects = [("dog", [3, 5, 30, 40], 0), ("person", [20, 10, 60, 60], 1), ("car", [1, 1, 8, 8], 0)];
    for (year, sets) in [(2007, vec![("trainval", 0..4), ("test", 4..6)]), (2012, vec![("trainval", 0..3)])] {
        let dir = root.join(format!("VOCdevkit/VOC{year}"));
        for sub in ["JPEGImages", "Annotations", "ImageSets/Main"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for (set, range) in sets {
            let ids: Vec<String> = range.map(|i| format!("{year}_{i:06}")).collect();
            std::fs::write(dir.join(format!("ImageSets/Main/{set}.txt")), ids.join("\n") + "\n").unwrap();
            for (k, id) in ids.iter().enumerate() {
                let (w, h) = (64 + 8 * k as u32, 64);
                let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
                img.save(dir.join(format!("JPEGImages/{id}.jpg"))).unwrap();
                let mut xml = format!(
                    "<annotation><folder>VOC{year}</folder><filename>{id}.jpg</filename>\
                     <size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                );
                for (name, [x0, y0, x1, y1], difficult) in objects.iter().take(k % 3 + 1) {
                    xml += &format!(
                        "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>\
                         <difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>\
                         <xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                    );
                }
                xml += "</annotation>";
                std::fs::write(dir.join(format!("Annotations/{id}.xml")), xml).unwrap();
            }
        }
    }
}

#[test]
fn yolo_voc_plans_without_data_and_trains_on_a_vocdevkit_folder() {
    // The paper's model: planned without data, the table ends in its parameter count.
    let d = tempfile::tempdir().unwrap();
    let out = runner(d.path(), &["check", &exp("yolo_voc.toml")]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("head.3") && out.stdout.contains("[1470]"), "{}", out.stdout);
    // By hand: the 24 convolutions hold 60,155,968 weights and biases, the two fully
    // connected layers 50176 * 4096 + 4096 + 4096 * 1470 + 1470.
    assert!(out.stdout.contains("params: 271703550"), "{}", out.stdout);

    write_voc(&d.path().join("voc"));
    // The same experiment on small images: a 64x64 input makes the last map 1x1.
    let resize = "[{ hflip = { p = 0.5 } }, { resize = { size = [64, 64] } }]";
    let out = runner(
        d.path(),
        &[
            &exp("yolo_voc.toml"),
            "--set",
            "data.root=voc",
            "--set",
            "data.batch_size=4",
            "--set",
            "train.epochs=1",
            "--set",
            "model.input=[3, 64, 64]",
            "--set",
            &format!("augment.train={resize}"),
            "--set",
            "augment.test=[{ resize = { size = [64, 64] } }]",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("7 train / 2 test"), "{}", out.stderr);
    let map = printed(&out, "map50_voc07");
    assert!((0.0..=1.0).contains(&map), "{map}");
    assert!(out.stdout.contains("reference 0.634"), "{}", out.stdout);
}

#[test]
fn detection_configs_are_checked_against_the_task() {
    let d = tempfile::tempdir().unwrap();
    // A classification metric on a detection experiment, and a head of the wrong size.
    let out = runner(
        d.path(),
        &["check", &exp("yolo_shapes.toml"), "--set", "metrics.test=[\"accuracy\"]", "--set", "task.detect.grid=7"],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("`accuracy` does not apply to the detect task"), "{}", out.stderr);
    assert!(out.stderr.contains("[7, 7, 15]"), "{}", out.stderr);
    // A crop among detection's test augmentations.
    let out = runner(
        d.path(),
        &["check", &exp("yolo_shapes.toml"), "--set", "augment.test=[{ center_crop = { size = 160 } }]"],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("may only resize"), "{}", out.stderr);
    // Detection on a classification dataset.
    let out = runner(d.path(), &["check", &exp("lenet5_fashion_mnist.toml"), "--set", "task.detect.grid=7"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("needs a dataset with boxes"), "{}", out.stderr);
    // The head's message reads as one sentence.
    let out = runner(d.path(), &["check", &exp("yolo_shapes.toml"), "--set", "task.detect.grid=5"]);
    assert!(
        out.stderr.contains("with grid 5, 2 boxes and 5 classes reads [S, S, B*5 + C] = [5, 5, 15]: end with"),
        "{}",
        out.stderr
    );
    // [data.voc]: no class, a class twice, no year, a path as the image set.
    let out = runner(
        d.path(),
        &[
            "check",
            &exp("yolo_shapes.toml"),
            "--set",
            "data.voc.classes=[\"a\", \"b\", \"a\"]",
            "--set",
            "data.voc.train.years=[]",
            "--set",
            "data.voc.test.image_set=\"../x\"",
        ],
    );
    assert_eq!(out.code, 2);
    for want in ["`a` is listed twice", "data.voc.train.years`: lists no year", "data.voc.test.image_set"] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    let out = runner(d.path(), &["check", &exp("yolo_shapes.toml"), "--set", "data.voc.classes=[]"]);
    assert!(out.stderr.contains("lists no class"), "{}", out.stderr);
    // A VOC dataset classified (each image by its largest object): the head must give the classes.
    let out = runner(d.path(), &["check", &exp("yolo_shapes.toml"), "--set", "task={ classify = {} }"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("ends in shape [15, 10, 10], but voc has 5 classes"), "{}", out.stderr);
}

fn md5_hex(bytes: &[u8]) -> &'static str {
    use md5::Digest;
    let hex: String = md5::Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Box::leak(hex.into_boxed_str())
}

/// A `.tar` holding `VOCdevkit/VOC<year>/...` from `root`, plus a folder detection does not
/// read (it must not be extracted).
fn voc_tar(root: &Path, year: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let name = format!("VOCdevkit/VOC{year}");
    b.append_dir_all(&name, root.join(&name)).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_cksum();
    b.append_data(&mut h, format!("{name}/SegmentationObject/x.png"), &b"png"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn voc_archives_download_check_and_unpack_the_used_folders() {
    let d = tempfile::tempdir().unwrap();
    write_voc(&d.path().join("made"));
    let (t07, t12) = (voc_tar(&d.path().join("made"), 2007), voc_tar(&d.path().join("made"), 2012));
    let files = std::collections::BTreeMap::from([
        ("/VOCtrainval_06-Nov-2007.tar".to_string(), t07.clone()),
        ("/VOCtest_06-Nov-2007.tar".to_string(), t07.clone()),
        ("/VOCtrainval_11-May-2012.tar".to_string(), t12.clone()),
    ]);
    let base = crate::download::serve(files.clone(), 3);
    // The official list, with this test's checksums: fetched, checked, unpacked.
    let root = d.path().join("voc");
    let archives: Vec<(&str, runner::data::download::Checksum, &str)> = runner::data::voc::ARCHIVES
        .iter()
        .zip([&t07, &t07, &t12])
        .map(|(a, bytes)| (a.file, runner::data::download::Checksum::Md5(md5_hex(bytes)), base.as_str()))
        .collect();
    runner::data::voc::download(&root, &archives).unwrap();
    for year in [2007, 2012] {
        let dir = root.join(format!("VOCdevkit/VOC{year}"));
        assert!(dir.join("ImageSets/Main/trainval.txt").is_file() && dir.join("Annotations").is_dir());
        assert!(!dir.join("SegmentationObject").exists(), "folders detection does not read stay packed");
    }
    assert!(!root.join("VOCdevkit.part").exists());
    // The experiment trains on what was unpacked.
    let out = runner(
        d.path(),
        &[
            &exp("yolo_voc.toml"),
            "--set",
            "data.root=voc",
            "--set",
            "train.epochs=1",
            "--set",
            "model.input=[3, 64, 64]",
            "--set",
            "augment.train=[{ resize = { size = [64, 64] } }]",
            "--set",
            "augment.test=[{ resize = { size = [64, 64] } }]",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // Through the config: a mirror serving other bytes than the official archives fails on
    // the published MD5, naming the archive, and leaves no VOCdevkit behind.
    let base = crate::download::serve(files, 1);
    let cfg: runner::config::DataConfig = toml::from_str(&format!(
        "dataset = \"voc\"\nroot = {:?}\ndownload = true\nmirror = \"{base}\"\nbatch_size = 4\n",
        d.path().join("fresh").display().to_string()
    ))
    .unwrap();
    let e = format!("{:#}", runner::data::load(&cfg).unwrap_err());
    assert!(e.contains("VOCtrainval_06-Nov-2007.tar") && e.contains("MD5 checksum mismatch"), "{e}");
    assert!(!d.path().join("fresh/VOCdevkit").exists());
}

/// runner's greedy per-class NMS keeps the boxes torchvision's `batched_nms` keeps, in
/// the same order of scores, on random cases with tied scores, duplicate boxes, boxes
/// touching at the threshold and more than 1,000 boxes (torchvision's other code path).
#[test]
fn nms_keeps_what_torchvisions_batched_nms_keeps() {
    use runner::task::detect::{nms, Found};
    let mut rng = runner::rng::Rng::new(31);
    let mut cases: Vec<(f64, Vec<Found>)> = Vec::new();
    for case in 0..300 {
        let n = match case {
            0 => 1,
            1 | 2 => 1200,
            _ => 1 + rng.below(60) as usize,
        };
        let thr = [0.3, 0.5, 0.7][rng.below(3) as usize];
        let mut boxes: Vec<Found> = Vec::new();
        for _ in 0..n {
            if !boxes.is_empty() && rng.below(8) == 0 {
                // An exact duplicate of an earlier box, sometimes with another score.
                let mut b = boxes[rng.below(boxes.len() as u64) as usize];
                if rng.below(2) == 0 {
                    b.score = (1 + rng.below(9)) as f32 / 10.0;
                }
                boxes.push(b);
                continue;
            }
            // Half-pixel corners: exact in f32 and f64, so both sides compute the same IoU.
            let (x0, y0) = (rng.below(120) as f32 / 2.0, rng.below(120) as f32 / 2.0);
            let (w, h) = ((1 + rng.below(60)) as f32 / 2.0, (1 + rng.below(60)) as f32 / 2.0);
            // Scores from a set of nine, so ties are common.
            let score = (1 + rng.below(9)) as f32 / 10.0;
            boxes.push(Found { class: rng.below(3) as u32, score, bbox: [x0, y0, x0 + w, y0 + h] });
        }
        cases.push((thr, boxes));
    }
    let d = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (thr, boxes) in &cases {
        text += &format!("{thr} {}", boxes.len());
        for b in boxes {
            let [x0, y0, x1, y1] = b.bbox;
            text += &format!(" {x0} {y0} {x1} {y1} {} {}", b.score, b.class);
        }
        text += "\n";
    }
    let file = d.path().join("cases.txt");
    std::fs::write(&file, text).unwrap();
    let python = crate::common::python_or("/usr/bin/python3");
    let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/check_nms.py")).arg(&file).output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        Ok(o) if o.status.code() == Some(3) => {
            return crate::common::skip(
                "nms_keeps_what_torchvisions_batched_nms_keeps",
                &String::from_utf8_lossy(&o.stderr),
                "RUNNER_REQUIRE_TORCH",
            )
        }
        Ok(o) => panic!("check_nms.py: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            return crate::common::skip(
                "nms_keeps_what_torchvisions_batched_nms_keeps",
                &format!("no {} ({e})", python.display()),
                "RUNNER_REQUIRE_TORCH",
            )
        }
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cases.len());
    // Boxes of equal score may come in either order: each side's list in (score, class, box)
    // order within a score.
    let canonical = |mut v: Vec<Found>| {
        v.sort_by(|a, b| {
            b.score.total_cmp(&a.score).then(a.class.cmp(&b.class)).then(a.bbox.partial_cmp(&b.bbox).unwrap())
        });
        v
    };
    let mut kept_total = 0;
    for ((thr, boxes), line) in cases.iter().zip(lines) {
        let theirs: Vec<Found> = line.split_whitespace().map(|i| boxes[i.parse::<usize>().unwrap()]).collect();
        let ours = nms(boxes.clone(), *thr, usize::MAX);
        kept_total += ours.len();
        assert_eq!(canonical(ours), canonical(theirs), "iou threshold {thr}, {} boxes", boxes.len());
    }
    let all: usize = cases.iter().map(|(_, b)| b.len()).sum();
    assert!(kept_total > all / 10 && kept_total < all, "kept {kept_total} of {all}: the cases suppress some, not all");
}
