//! COCO's mAP@[.5:.95] and the rest of `COCOeval`'s summary against pycocotools itself (from
//! the package index, in the tests' venv): the 12 numbers equal to 1e-9 on generated sets of
//! 300 images with crowds, ties, empty images, every area range and images with more than
//! 100 detections (tests/fixtures/check_coco.py writes the set and pycocotools' numbers).

use std::process::Command;

use runner::metrics::coco::{coco_eval, CocoDetection, CocoTruth, COCO_STATS};
use serde_json::Value;

use crate::common::{python_or, repo, skip};

fn bbox(v: &Value) -> [f64; 4] {
    let b: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    [b[0], b[1], b[2], b[3]]
}

/// Runs `tests/fixtures/<script> DIR SEED`, which writes its cases and pycocotools' answers
/// into `dir`. False, with the test counted as skipped, where pycocotools (exit status 3)
/// or Python is missing; a failure under `make test`, which installs them.
fn pycocotools_fixture(script: &str, dir: &std::path::Path, seed: u64, what: &str) -> bool {
    let python = python_or("python3");
    let out =
        Command::new(&python).arg(repo().join("tests/fixtures").join(script)).arg(dir).arg(seed.to_string()).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) if o.status.code() == Some(3) => {
            skip(what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_PYCOCOTOOLS");
            false
        }
        Ok(o) => panic!("{script}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            skip(what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_PYCOCOTOOLS");
            false
        }
    }
}

#[test]
fn coco_summary_equals_pycocotools() {
    for seed in [1, 2] {
        let d = tempfile::tempdir().unwrap();
        if !pycocotools_fixture("check_coco.py", d.path(), seed, "coco::coco_summary_equals_pycocotools") {
            return;
        }
        let read = |name: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(d.path().join(name)).unwrap()).unwrap()
        };
        let (gt, dt, stats) = (read("gt.json"), read("dt.json"), read("stats.json"));
        let images: Vec<u64> = gt["images"].as_array().unwrap().iter().map(|i| i["id"].as_u64().unwrap()).collect();
        let cats: Vec<u64> = gt["categories"].as_array().unwrap().iter().map(|c| c["id"].as_u64().unwrap()).collect();
        let truths: Vec<CocoTruth> = gt["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| CocoTruth {
                id: a["id"].as_u64().unwrap(),
                image: a["image_id"].as_u64().unwrap(),
                category: a["category_id"].as_u64().unwrap(),
                bbox: bbox(&a["bbox"]),
                area: a["area"].as_f64().unwrap(),
                iscrowd: a["iscrowd"].as_u64().unwrap() == 1,
            })
            .collect();
        let dets: Vec<CocoDetection> = dt
            .as_array()
            .unwrap()
            .iter()
            .map(|r| CocoDetection {
                image: r["image_id"].as_u64().unwrap(),
                category: r["category_id"].as_u64().unwrap(),
                bbox: bbox(&r["bbox"]),
                score: r["score"].as_f64().unwrap(),
            })
            .collect();
        // The set is what the test says it is.
        assert!(truths.iter().any(|t| t.iscrowd) && images.len() == 300, "seed {seed}");
        let mut per_image = std::collections::HashMap::<u64, usize>::new();
        for d in &dets {
            *per_image.entry(d.image).or_default() += 1;
        }
        assert!(per_image.values().any(|&n| n > 100), "seed {seed}: an image with more than 100 detections");
        let want: Vec<f64> = stats.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got = coco_eval(&images, &cats, &truths, &dets);
        for (k, name) in COCO_STATS.iter().enumerate() {
            assert!(
                (got[k] - want[k]).abs() <= 1e-9,
                "seed {seed}: {name} is {} here, {} in pycocotools\nall: {got:?}\npycocotools: {want:?}",
                got[k],
                want[k]
            );
        }
        // Not a degenerate set: every number defined and the small ones unlike the large.
        assert!(want.iter().all(|&x| x > 0.0 && x < 1.0), "seed {seed}: {want:?}");
        eprintln!(
            "coco seed {seed}: map {:.4} map50 {:.4} ar100 {:.4} (pycocotools: the same to 1e-9)",
            got[0], got[1], got[8]
        );
    }
}

/// Every pixel of `data::coco_mask::segmentation_mask` equals pycocotools' `annToMask` on
/// 240 generated segmentations per seed: polygons (fractional corners, concave, outside the
/// image, two-part, sub-pixel slivers), uncompressed and compressed RLEs
/// (tests/fixtures/check_coco_masks.py).
#[test]
fn masks_equal_pycocotools_ann_to_mask() {
    for seed in [1, 2] {
        let d = tempfile::tempdir().unwrap();
        if !pycocotools_fixture("check_coco_masks.py", d.path(), seed, "coco::masks_equal_pycocotools_ann_to_mask") {
            return;
        }
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("masks.json")).unwrap()).unwrap();
        let cases = cases.as_array().unwrap();
        assert_eq!(cases.len(), 240);
        let (mut set, mut kinds) = (0usize, std::collections::BTreeSet::new());
        for (k, c) in cases.iter().enumerate() {
            let (h, w) = (c["h"].as_u64().unwrap() as usize, c["w"].as_u64().unwrap() as usize);
            let seg = &c["segmentation"];
            kinds.insert(match seg {
                Value::Array(p) => format!("{} polygons", p.len()),
                _ if seg["counts"].is_string() => "compressed RLE".to_string(),
                _ => "RLE".to_string(),
            });
            let want: Vec<u8> = c["mask"].as_str().unwrap().bytes().map(|b| b - b'0').collect();
            let got = runner::data::coco_mask::segmentation_mask(seg, h, w).unwrap();
            assert_eq!(got, want, "seed {seed} case {k} ({w}x{h}): {seg}");
            set += got.iter().filter(|&&v| v == 1).count();
        }
        assert!(set > 10_000 && kinds.len() == 4, "seed {seed}: {set} pixels set, kinds {kinds:?}");
    }
}
