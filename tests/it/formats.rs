//! COCO and YOLO folders, written here in the real formats, each train through the
//! detection experiments; a COCO run's 12 summary numbers equal pycocotools' on the run's
//! own `detections.json` (pycocotools and pyarrow from the package index, in the tests'
//! venv: tests/check_coco_run.py); `runner data convert` keeps every box and class on
//! round trips; bad label files name the file and line, or are counted with `on_error`.

use std::path::Path;
use std::process::Command;

use runner::data::convert::{self, Format};
use runner::data::synth::{write_shapes, ShapesOptions};
use serde_json::{json, Value};

use crate::common::{printed, python_or, repo, run_folder, runner, skip};

fn exp(name: &str) -> String {
    repo().join("experiments").join(name).display().to_string()
}

fn small_shapes(dir: &Path) {
    let opts = ShapesOptions { train: 24, test: 8, size: 64, ..Default::default() };
    write_shapes(dir, &opts).unwrap();
}

/// The COCO set of `dir` (written by `runner data convert`), edited here the way real COCO
/// files differ from a converted VOC set: category ids not contiguous and listed out of
/// order, `area` fields that are not the boxes' areas, crowd regions, and an image
/// without annotations. Returns the number of crowd regions added.
fn make_it_real_coco(dir: &Path) -> usize {
    let mut crowds = 0;
    for split in ["train", "test"] {
        let path = dir.join(format!("annotations/instances_{split}.json"));
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // ids 1..5 -> 90, 3, 44, 17, 62; listed as the file has them, then reversed.
        let new_id = |id: u64| [90u64, 3, 44, 17, 62][id as usize - 1];
        let cats = doc["categories"].as_array_mut().unwrap();
        for c in cats.iter_mut() {
            c["id"] = json!(new_id(c["id"].as_u64().unwrap()));
        }
        cats.reverse();
        let anns = doc["annotations"].as_array_mut().unwrap();
        for a in anns.iter_mut() {
            a["category_id"] = json!(new_id(a["category_id"].as_u64().unwrap()));
            let area = a["area"].as_f64().unwrap();
            a["area"] = json!(area * 0.8);
        }
        // A box reaching 0.4 px past the right edge (COCO allows half a pixel), and one of
        // no height (COCO 2017's train set holds two): a ground truth, never a target.
        let x = anns[0]["bbox"][0].as_f64().unwrap();
        anns[0]["bbox"][2] = json!(64.0 - x + 0.4);
        anns[1]["bbox"][3] = json!(0.0);
        // A crowd region over the left half of every third image.
        let images: Vec<(u64, f64, f64)> = doc["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_u64().unwrap(), i["width"].as_f64().unwrap(), i["height"].as_f64().unwrap()))
            .collect();
        let next = doc["annotations"].as_array().unwrap().len() as u64 + 1;
        for (k, (id, w, h)) in images.iter().enumerate().filter(|(k, _)| k % 3 == 0) {
            let ann = json!({"id": next + k as u64, "image_id": id, "category_id": 44, "iscrowd": 1,
                             "bbox": [0.0, 0.0, w / 2.0, *h], "area": w * h / 3.0,
                             "segmentation": {"counts": [0, 10], "size": [*h as u64, *w as u64]}});
            doc["annotations"].as_array_mut().unwrap().push(ann);
            crowds += 1;
        }
        // The last image loses its objects: an image without annotations.
        let last = images.last().unwrap().0;
        doc["annotations"].as_array_mut().unwrap().retain(|a| a["image_id"].as_u64() != Some(last));
        std::fs::write(&path, doc.to_string()).unwrap();
    }
    crowds
}

/// Runs tests/check_coco_run.py on `run` against `gt`; skipped where pycocotools or pyarrow
/// is missing (a failure under `make test`, which installs them).
fn pycocotools_agrees(run: &Path, gt: &Path) -> Option<Value> {
    let python = python_or("python3");
    let out = Command::new(&python).arg(repo().join("tests/check_coco_run.py")).arg(run).arg(gt).output();
    let what = "formats::coco_run_equals_pycocotools";
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(text.contains("coco equal"), "{text}");
            serde_json::from_str(text.lines().rev().find(|l| l.starts_with('{')).unwrap()).ok()
        }
        Ok(o) if o.status.code() == Some(3) => {
            skip(what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_PYCOCOTOOLS");
            None
        }
        Ok(o) => panic!(
            "check_coco_run.py disagrees or failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_PYCOCOTOOLS");
            None
        }
    }
}

#[test]
fn a_coco_folder_trains_and_its_coco_metrics_equal_pycocotools() {
    let d = tempfile::tempdir().unwrap();
    small_shapes(&d.path().join("voc"));
    let out = runner(d.path(), &["data", "convert", "--from", "voc", "--to", "coco", "voc", "coco"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let crowds = make_it_real_coco(&d.path().join("coco"));
    assert!(crowds >= 4, "{crowds}");
    let out = runner(
        d.path(),
        &[
            &exp("yolo_shapes_coco.toml"),
            "--set",
            "data.root=coco",
            "--set",
            "data.batch_size=8",
            "--set",
            "train.epochs=2",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("coco: 24 train / 8 test samples"), "{}", out.stderr);
    for metric in ["map50", "map", "ar100"] {
        let v = printed(&out, metric);
        assert!(v.is_nan() || (0.0..=1.0).contains(&v), "{metric} {v}");
    }
    let run = run_folder(d.path(), &out);
    let results: Value = serde_json::from_str(&std::fs::read_to_string(run.join("detections.json")).unwrap()).unwrap();
    let cats = [90u64, 3, 44, 17, 62];
    for r in results.as_array().unwrap() {
        assert!(cats.contains(&r["category_id"].as_u64().unwrap()), "COCO's own category ids: {r}");
    }
    if let Some(report) = pycocotools_agrees(&run, &d.path().join("coco/annotations/instances_test.json")) {
        // The comparison saw detections, truths and a non-trivial summary.
        assert!(report["detections"].as_u64().unwrap() > 8, "{report}");
        let any_positive = report["pycocotools"].as_array().unwrap().iter().any(|v| v.as_f64().unwrap() > 0.0);
        assert!(any_positive, "{report}");
    }

    // COCO to YOLO leaves the crowd regions and the boxes of no size out, and says so; the
    // box past the edge is clipped, so the YOLO set reads back.
    let out = runner(d.path(), &["data", "convert", "--from", "coco", "--to", "yolo", "coco", "yolo"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("left out {crowds} crowd regions")), "{}", out.stdout);
    assert!(out.stdout.contains("left out 2 boxes of no size"), "{}", out.stdout);
    convert::read(Format::Yolo, &d.path().join("yolo"), None).unwrap();
    // A folder that is not a new one is refused, and nothing in it is touched.
    std::fs::write(d.path().join("yolo/mine.txt"), "keep").unwrap();
    let out = runner(d.path(), &["data", "convert", "--from", "coco", "--to", "yolo", "coco", "yolo"]);
    assert!(out.code != 0 && out.stderr.contains("yolo is not empty"), "{}", out.stderr);
    let out = runner(&d.path().join("yolo"), &["data", "synth", "shapes", "--format", "coco", "--out", "."]);
    assert!(out.code != 0 && out.stderr.contains(". is not empty"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(d.path().join("yolo/mine.txt")).unwrap(), "keep");
}

/// Writes a YOLO folder from the VOC set in `voc`, by hand: images/{train,val}, labels as
/// `class cx cy w h` with 6 decimals, names in data.yaml as a block list.
fn write_yolo_by_hand(voc: &Path, dst: &Path) -> usize {
    let year = voc.join("VOCdevkit/VOC2007");
    let classes = ["circle", "square", "triangle", "star", "cross"];
    let mut boxes = 0;
    for (set, split) in [("train", "train"), ("test", "val")] {
        std::fs::create_dir_all(dst.join("images").join(split)).unwrap();
        std::fs::create_dir_all(dst.join("labels").join(split)).unwrap();
        let ids = std::fs::read_to_string(year.join(format!("ImageSets/Main/{set}.txt"))).unwrap();
        for id in ids.lines() {
            std::fs::copy(year.join(format!("JPEGImages/{id}.jpg")), dst.join(format!("images/{split}/{id}.jpg")))
                .unwrap();
            let xml = std::fs::read_to_string(year.join(format!("Annotations/{id}.xml"))).unwrap();
            let doc = roxmltree::Document::parse(&xml).unwrap();
            let num = |n: roxmltree::Node, tag: &str| -> f64 {
                n.descendants().find(|c| c.has_tag_name(tag)).unwrap().text().unwrap().trim().parse().unwrap()
            };
            let size = doc.descendants().find(|n| n.has_tag_name("size")).unwrap();
            let (w, h) = (num(size, "width"), num(size, "height"));
            let mut text = String::new();
            for o in doc.descendants().filter(|n| n.has_tag_name("object")) {
                let name = o.descendants().find(|c| c.has_tag_name("name")).unwrap().text().unwrap();
                let class = classes.iter().position(|c| *c == name).unwrap();
                let (x0, y0) = (num(o, "xmin") - 1.0, num(o, "ymin") - 1.0);
                let (x1, y1) = (num(o, "xmax"), num(o, "ymax"));
                text += &format!(
                    "{class} {:.6} {:.6} {:.6} {:.6}\n",
                    (x0 + x1) / 2.0 / w,
                    (y0 + y1) / 2.0 / h,
                    (x1 - x0) / w,
                    (y1 - y0) / h
                );
                boxes += 1;
            }
            std::fs::write(dst.join(format!("labels/{split}/{id}.txt")), text).unwrap();
        }
    }
    let names: String = classes.iter().map(|c| format!("  - {c}\n")).collect();
    std::fs::write(dst.join("data.yaml"), format!("path: .\ntrain: images/train\nval: images/val\nnames:\n{names}"))
        .unwrap();
    boxes
}

#[test]
fn a_yolo_folder_trains_and_bad_labels_name_their_line() {
    let d = tempfile::tempdir().unwrap();
    small_shapes(&d.path().join("voc"));
    let boxes = write_yolo_by_hand(&d.path().join("voc"), &d.path().join("yolo"));
    assert!(boxes > 32, "{boxes}");
    let sets = ["--set", "data.dataset=\"yolo\"", "--set", "data.root=yolo", "--set", "data.batch_size=8"];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![exp("yolo_shapes.toml")];
        a.extend(sets.iter().chain(extra).map(|s| s.to_string()));
        a.extend(["--set".to_string(), "train.epochs=1".to_string()]);
        a
    };
    let run = |args: Vec<String>| runner(d.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(with(&[]));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("yolo: 24 train / 8 test samples"), "{}", out.stderr);
    let map = printed(&out, "map50");
    assert!((0.0..=1.0).contains(&map), "{map}");

    // A label line of 4 numbers: the run stops, naming the file and the line.
    let bad = d.path().join("yolo/labels/train/000003.txt");
    let text = std::fs::read_to_string(&bad).unwrap();
    let line = text.lines().count() + 1;
    std::fs::write(&bad, format!("{text}2 0.5 0.5 0.1\n")).unwrap();
    let out = run(with(&[]));
    assert_ne!(out.code, 0);
    let want = format!("labels/train/000003.txt: line {line}: 4 numbers, expected 5");
    assert!(out.stderr.contains(&want), "want {want:?} in {}", out.stderr);
    // A class out of range, likewise; with on_error = "skip" the image is left out and counted.
    std::fs::write(&bad, format!("{text}7 0.5 0.5 0.1 0.1\n")).unwrap();
    let out = run(with(&[]));
    assert!(out.stderr.contains("class 7 is out of range (the set has 5 classes)"), "{}", out.stderr);
    let out = run(with(&["--set", "data.on_error=\"skip\""]));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("skipped 1 images with bad labels"), "{}", out.stderr);
    assert!(out.stderr.contains("yolo: 23 train / 8 test samples"), "{}", out.stderr);
}

/// An image's split, file name and boxes: `(class, corners, difficult)`.
type ImageBoxes = (String, String, Vec<(usize, [f64; 4], bool)>);

/// Every image's boxes, by split and image file name.
fn boxes_of(c: &convert::Collection) -> Vec<ImageBoxes> {
    let mut out: Vec<_> = c
        .splits
        .iter()
        .flat_map(|(split, items)| {
            items.iter().map(move |i| {
                let name = i.image.file_name().unwrap().to_string_lossy().into_owned();
                (split.clone(), name, i.boxes.iter().map(|b| (b.class, b.bbox, b.difficult)).collect())
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[test]
fn conversions_keep_every_box_and_class() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    small_shapes(&p("voc"));
    let voc = convert::read(Format::Voc, &p("voc"), None).unwrap();
    assert_eq!(voc.classes, ["circle", "square", "triangle", "star", "cross"], "from the set's shapes.toml");
    assert!(voc.splits.iter().flat_map(|(_, i)| i).flat_map(|i| &i.boxes).any(|b| b.difficult));
    // VOC -> COCO -> VOC: the same boxes, classes and difficult flags, exactly.
    convert::write(Format::Coco, &voc, &p("coco")).unwrap();
    let coco = convert::read(Format::Coco, &p("coco"), None).unwrap();
    assert_eq!(boxes_of(&coco), boxes_of(&voc));
    assert_eq!(coco.category_ids, Some(vec![1, 2, 3, 4, 5]));
    convert::write(Format::Voc, &coco, &p("voc2")).unwrap();
    let voc2 = convert::read(Format::Voc, &p("voc2"), None).unwrap();
    assert_eq!(voc2.classes, voc.classes);
    assert_eq!(boxes_of(&voc2), boxes_of(&voc));
    // COCO -> YOLO -> COCO: the corners to 1e-9 (YOLO writes every digit), the difficult
    // flag lost (YOLO has none) and said.
    let w = convert::write(Format::Yolo, &coco, &p("yolo")).unwrap();
    let difficult = boxes_of(&voc).iter().flat_map(|(_, _, b)| b).filter(|b| b.2).count();
    assert_eq!(w.flags_lost, difficult);
    let yolo = convert::read(Format::Yolo, &p("yolo"), None).unwrap();
    assert_eq!(yolo.classes, voc.classes, "from the written data.yaml");
    let (a, b) = (boxes_of(&yolo), boxes_of(&voc));
    assert_eq!(a.len(), b.len());
    for ((sa, na, ba), (sb, nb, bb)) in a.iter().zip(&b) {
        assert_eq!((sa, na, ba.len()), (sb, nb, bb.len()));
        for (x, y) in ba.iter().zip(bb) {
            assert_eq!(x.0, y.0, "{na}");
            assert!(x.1.iter().zip(&y.1).all(|(u, v)| (u - v).abs() < 1e-9), "{na}: {:?} {:?}", x.1, y.1);
        }
    }
    // Two images of one name in two subfolders of a YOLO split: an error, not one file.
    std::fs::create_dir_all(p("yolo/images/train/sub")).unwrap();
    std::fs::copy(p("yolo/images/train/000001.jpg"), p("yolo/images/train/sub/000001.jpg")).unwrap();
    let twice = convert::read(Format::Yolo, &p("yolo"), None).unwrap();
    let e = format!("{:#}", convert::write(Format::Coco, &twice, &p("twice")).unwrap_err());
    assert!(e.contains("would both be 000001.jpg in the written split"), "{e}");
    // The same conversions through the command line, into a folder that must be new.
    std::fs::write(p("taken"), "").unwrap();
    let out = runner(d.path(), &["data", "convert", "--from", "voc", "--to", "coco", "voc", "coco"]);
    assert!(out.code != 0 && out.stderr.contains("coco is not empty"), "{}", out.stderr);
    let out = runner(d.path(), &["data", "convert", "--from", "voc", "--to", "cocoa", "voc", "x"]);
    assert!(out.code != 0 && out.stderr.contains("--to cocoa: expected voc, coco or yolo"), "{}", out.stderr);
}

#[test]
fn a_coco_folder_trains_segmentation_from_its_polygons() {
    let d = tempfile::tempdir().unwrap();
    small_shapes(&d.path().join("voc"));
    // The converted set's segmentations are its boxes as polygons.
    let out = runner(d.path(), &["data", "convert", "--from", "voc", "--to", "coco", "voc", "coco"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let args = [
        exp("fcn_shapes.toml"),
        "--set".into(),
        "data.dataset=\"coco\"".into(),
        "--set".into(),
        "data.root=coco".into(),
        "--set".into(),
        "data.coco={ train = { json = \"annotations/instances_train.json\", images = \"train\" }, test = { json = \"annotations/instances_test.json\", images = \"test\" } }".into(),
        "--set".into(),
        "data.batch_size=8".into(),
        "--set".into(),
        "train.epochs=1".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("writing the class masks of 8 images"), "{}", out.stderr);
    let miou = printed(&out, "miou");
    assert!((0.0..=1.0).contains(&miou), "{miou}");
    let masks = d.path().join("coco/runner_masks/annotations__instances_test");
    assert_eq!(std::fs::read_dir(&masks).unwrap().count(), 8 + 1, "8 masks and .complete");
    // A mask holds the background (0), classes 1-5 and void (255) only, at the image's size.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(masks.join("1.png")).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (64, 64));
    assert!(buf[..info.buffer_size()].iter().all(|&v| v <= 5 || v == 255));
    assert!(buf.iter().any(|&v| (1..=5).contains(&v)));
    // A second run reuses them.
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("writing the class masks"), "{}", out.stderr);
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn md5_hex(bytes: &[u8]) -> &'static str {
    use md5::Digest;
    let hex: String = md5::Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Box::leak(hex.into_boxed_str())
}

/// COCO 2017's three official archives, made here in the real layout (deflated zips of
/// `annotations/instances_{train,val}2017.json` beside a captions file runner does not
/// read, `train2017/*.jpg`, `val2017/*.jpg`), served on 127.0.0.1: fetched, checked,
/// unpacked, trained on; the published MD5s reject other bytes through a mirror.
#[test]
fn coco_2017_archives_download_check_and_unpack() {
    use runner::data::coco_download::{download, ARCHIVES};
    use runner::data::download::Checksum;
    let d = tempfile::tempdir().unwrap();
    small_shapes(&d.path().join("voc"));
    let mut c = convert::read(Format::Voc, &d.path().join("voc"), None).unwrap();
    for (name, _) in &mut c.splits {
        *name = if name == "train" { "train2017".into() } else { "val2017".into() };
    }
    convert::write(Format::Coco, &c, &d.path().join("made")).unwrap();
    let made = d.path().join("made");
    let read = |rel: &str| std::fs::read(made.join(rel)).unwrap();
    let ann = zip_of(&[
        ("annotations/instances_train2017.json".into(), read("annotations/instances_train2017.json")),
        ("annotations/instances_val2017.json".into(), read("annotations/instances_val2017.json")),
        ("annotations/captions_train2017.json".into(), b"{}".to_vec()),
    ]);
    let images = |split: &str| -> Vec<u8> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(made.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (format!("{split}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        zip_of(&files)
    };
    let bodies = [ann, images("val2017"), images("train2017")];
    let files: std::collections::BTreeMap<String, Vec<u8>> =
        ARCHIVES.iter().zip(&bodies).map(|(a, b)| (format!("/{}", a.file), b.clone())).collect();
    let base = crate::download::serve(files.clone(), 3);
    let root = d.path().join("coco");
    let archives: Vec<(&str, Checksum, &str)> =
        ARCHIVES.iter().zip(&bodies).map(|(a, b)| (a.file, Checksum::Md5(md5_hex(b)), base.as_str())).collect();
    download(&root, &archives).unwrap();
    assert!(root.join("annotations/instances_val2017.json").is_file());
    assert!(!root.join("annotations/captions_train2017.json").exists(), "files runner does not read stay packed");
    assert_eq!(std::fs::read_dir(root.join("train2017")).unwrap().count(), 24);
    assert!(!root.join("coco.part").exists());
    let out = runner(
        d.path(),
        &[
            &exp("yolo_shapes_coco.toml"),
            "--set",
            "data.root=coco",
            "--set",
            "data.coco.train={ json = \"annotations/instances_train2017.json\", images = \"train2017\" }",
            "--set",
            "data.coco.test={ json = \"annotations/instances_val2017.json\", images = \"val2017\" }",
            "--set",
            "data.batch_size=8",
            "--set",
            "train.epochs=1",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("coco: 24 train / 8 test samples"), "{}", out.stderr);

    // Through the config: a mirror serving other bytes than the official archives fails on
    // the published MD5, naming the archive, and leaves nothing unpacked.
    let base = crate::download::serve(files, 1);
    let cfg: runner::config::DataConfig = toml::from_str(&format!(
        "dataset = \"coco\"\nroot = {:?}\ndownload = true\nmirror = \"{base}\"\nbatch_size = 4\n",
        d.path().join("fresh").display().to_string()
    ))
    .unwrap();
    let e = format!("{:#}", runner::data::load(&cfg).unwrap_err());
    assert!(e.contains("annotations_trainval2017.zip") && e.contains("MD5 checksum mismatch"), "{e}");
    assert!(!d.path().join("fresh/annotations").exists());
    // Names that no official archive holds are refused when the plan is made.
    let out = runner(
        d.path(),
        &["check", &exp("yolo_coco.toml"), "--set", "data.download=true", "--set", "data.coco.test.images=\"mine\""],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("\"mine\" is in no official COCO 2017 archive"), "{}", out.stderr);
}
