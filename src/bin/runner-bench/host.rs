//! The bench's host-side cases: the data loaders, image resizing, detection scoring and the
//! board's run table. They run on the CPU whatever `RUNNER_BENCH_DEVICE` says.

use std::time::Instant;

use anyhow::{bail, Result};
use runner::config::DetectConfig;
use runner::metrics::detection::{Detection, DetectionStats, Truth};
use runner::rng::Rng;
use runner::runlog::files;
use runner::task::Yolo;

/// Generated once into bench/out: CIFAR-10 binary records and a folder of 256x256 JPEGs.
fn bench_data(case: &str) -> Result<std::path::PathBuf> {
    let root = std::path::PathBuf::from("bench/out");
    match case {
        "cifar" => {
            let dir = root.join("cifar");
            let file = dir.join("data_batch_1.bin");
            if !file.is_file() {
                std::fs::create_dir_all(&dir)?;
                let mut r = Rng::new(1);
                let recs: Vec<(u8, Vec<u8>)> = (0..10_000)
                    .map(|i| ((i % 10) as u8, (0..3072).map(|_| (r.next_u64() >> 56) as u8).collect()))
                    .collect();
                std::fs::write(&file, runner::data::cifar::encode(&recs))?;
            }
            Ok(file)
        }
        _ => {
            let dir = root.join("jpeg/train");
            if !dir.join("c9").is_dir() {
                let mut r = Rng::new(2);
                for i in 0..500usize {
                    let class_dir = dir.join(format!("c{}", i % 10));
                    std::fs::create_dir_all(&class_dir)?;
                    let (a, b) = ((r.next_u64() % 200) as u32, (r.next_u64() % 200) as u32);
                    let img = image::RgbImage::from_fn(256, 256, |x, y| {
                        let n = (r.next_u64() >> 59) as u32;
                        image::Rgb([((x + a) % 256) as u8, ((y + b) % 256) as u8, ((x + y + n) % 256) as u8])
                    });
                    img.save(class_dir.join(format!("{i}.jpg")))?;
                }
            }
            Ok(dir)
        }
    }
}

/// One epoch of the loader with `threads` workers; images per second.
pub(crate) fn loader(case: &str) -> Result<f64> {
    use runner::config::AugmentOp;
    use runner::data::loader::{batches, LoaderSpec};
    let workers = runner::ops::threads();
    let norm = AugmentOp::Normalize { mean: vec![0.5; 3], std: vec![0.25; 3] };
    let (split, shape, out_shape, augment) = if case == "loader_cifar10_crop_flip_norm" {
        let split = runner::data::cifar::read_split(&[bench_data("cifar")?], 10)?;
        let ops = vec![
            AugmentOp::RandomCrop { size: 32, padding: 4, pad_mode: Default::default() },
            AugmentOp::Hflip { p: 0.5 },
            norm,
        ];
        (split, [3, 32, 32], [3, 32, 32], ops)
    } else {
        let listing = runner::data::folder::scan(&bench_data("jpeg")?)?;
        let labels = listing.files.iter().map(|(_, l)| *l).collect();
        let files: Vec<_> = listing.files.into_iter().map(|(p, _)| p).collect();
        let split = runner::data::Split { len: files.len(), labels, files, ..Default::default() };
        let pca = AugmentOp::PcaColorJitter {
            std: 0.1,
            eigval: [0.2175, 0.0188, 0.0045],
            eigvec: [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
        };
        let ops = vec![
            AugmentOp::RandomCrop { size: 224, padding: 0, pad_mode: Default::default() },
            AugmentOp::Hflip { p: 0.5 },
            pca,
            norm,
        ];
        (split, [3, 0, 0], [3, 224, 224], ops)
    };
    let n = split.len;
    let spec = LoaderSpec {
        batch_size: 64,
        shuffle: true,
        drop_last: false,
        seed: 0,
        shape,
        out_shape,
        augment,
        prefetch: 2 * workers,
        workers,
        skip_errors: false,
    };
    let split = std::sync::Arc::new(split);
    // A short warm-up epoch prefix, then one timed epoch.
    for b in batches(split.clone(), &spec, 0).take(2) {
        b?;
    }
    let t = Instant::now();
    for b in batches(split, &spec, 1) {
        b?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Evaluation of 5,000 images: decoding a 7x7x30 output each (YOLOv1 on VOC: 98 boxes x 20
/// classes scored), per-class NMS keeping the 100 best boxes, and mAP (area and VOC07)
/// against three objects per image. Images per second over the whole.
pub(crate) fn detect_eval_5000() -> Result<f64> {
    let (n, classes) = (5000, 20);
    let yolo = Yolo { cfg: DetectConfig { grid: 7, boxes: 2, ..Default::default() }, classes };
    let out = super::rand(&[n, 7 * 7 * 30], 8, 1.0)?.affine(0.5, 0.5)?; // values in [0, 1]
    let t = Instant::now();
    let found = runner::task::detect::decode_batch(&yolo, &out, [448, 448], &vec![[375, 500]; n])?;
    let mut stats = DetectionStats::new(classes);
    for (i, boxes) in found.into_iter().enumerate() {
        for f in boxes {
            let det = Detection { image: i, score: f.score as f64, bbox: f.bbox.map(f64::from) };
            stats.detections.push((f.class, det));
        }
        for k in 0..3 {
            let x0 = ((i * 37 + k * 101) % 400) as f64;
            let bbox = [x0, x0 * 0.5, x0 + 90.0, x0 * 0.5 + 120.0];
            stats.truths.push((((i + k) % classes) as u32, Truth { image: i, bbox, difficult: k == 2 && i % 7 == 0 }));
        }
    }
    let (voc07, area) = stats.map50();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{n} images, {} boxes: {secs:.3} s (map50 {area:.4}, voc07 {voc07:.4})", stats.detections.len());
    Ok(n as f64 / secs)
}

/// The data-side `resize` of a 500x375 RGB photo (VOC's usual size) to YOLO's 448x448 and
/// to 224x168 (shrinking), antialiased (PIL's filter) or not (`F.interpolate`'s four taps);
/// the same pixels every call.
pub(crate) fn resize_case(antialias: bool) -> Result<f64> {
    use runner::config::AugmentOp;
    let (h, w) = (375, 500);
    let mut r = Rng::new(3);
    let img: Vec<f32> = (0..3 * h * w).map(|_| r.next_f64() as f32).collect();
    let ops = [[448, 448], [168, 224]].map(|size| AugmentOp::Resize {
        size: Some(size),
        shorter: None,
        mode: runner::ops::upsample::UpsampleMode::Bilinear,
        antialias,
    });
    let n = 20;
    let t = Instant::now();
    for i in 0..n {
        let mut dims = [3, h, w];
        let mut rng = Rng::new(i as u64);
        runner::data::augment::apply(&ops[i % 2], img.clone(), &mut dims, &mut rng).map_err(anyhow::Error::msg)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The loader's path for a first resize of a decoded photo: the 8-bit planes through
/// PIL's arithmetic (fast_image_resize), then to floats; the same sizes as `resize_case`.
pub(crate) fn resize_decoded_case() -> Result<f64> {
    use runner::config::AugmentOp;
    let (h, w) = (375, 500);
    let mut r = Rng::new(3);
    let img: Vec<u8> = (0..3 * h * w).map(|_| (r.next_f64() * 255.0) as u8).collect();
    let ops = [[448, 448], [168, 224]].map(|size| AugmentOp::Resize {
        size: Some(size),
        shorter: None,
        mode: runner::ops::upsample::UpsampleMode::Bilinear,
        antialias: true,
    });
    let n = 20;
    let t = Instant::now();
    for i in 0..n {
        let mut dims = [3, h, w];
        let mut targets = runner::data::augment::Targets::default();
        let out = runner::data::augment::resize_decoded(&ops[i % 2], &img, &mut targets, &mut dims)
            .map_err(anyhow::Error::msg)?;
        let floats: Vec<f32> = out.unwrap_or_default().iter().map(|&p| p as f32 / 255.0).collect();
        std::hint::black_box(floats);
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// `runner board`'s runs table over 1,000 runs of 100 epochs (8 metrics a epoch, 40
/// parameters, 4 of them differing): runs listed per second by `/api/runs`, best of 5 (a
/// table in under a second is above 1,000). The runs are written once into the system's
/// temporary folder and kept for later calls.
pub(crate) fn board_runs_1000() -> Result<f64> {
    use runner::runlog::{MetricRow, RunLog, Status};
    let root = std::env::temp_dir().join("runner-bench-board-1000x100");
    let done = root.join("complete");
    if !done.is_file() {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        eprintln!("writing 1000 runs of 100 epochs into {}", root.display());
        for i in 0..1000usize {
            let mut log = RunLog::create(&root, &format!("exp{}", i % 4), "hash", i as u64, "cpu")?;
            let mut params: std::collections::BTreeMap<String, String> =
                (0..36).map(|k| (format!("group{}.key{k}", k % 6), format!("value{k}"))).collect();
            params.insert("train.lr".into(), format!("{}", 0.1 / (1 + i % 10) as f64));
            params.insert("seed".into(), (i % 3).to_string());
            params.insert("train.batch_size".into(), (32 << (i % 3)).to_string());
            params.insert("model.width".into(), (16 * (1 + i % 5)).to_string());
            log.write_text(files::CONFIG, "# bench\n")?;
            log.write_params(&params)?;
            for epoch in 0..100 {
                for split in ["train", "test"] {
                    for metric in ["loss", "accuracy", "error_rate", "balanced_error_rate"] {
                        let value = 1.0 / (1.0 + epoch as f64 + i as f64 * 1e-3);
                        let wall_time_s = epoch as f64;
                        let row = MetricRow {
                            epoch,
                            step: epoch as i64 * 100,
                            split: split.into(),
                            metric: metric.into(),
                            class: None,
                            value,
                            wall_time_s,
                        };
                        log.push(row);
                    }
                }
            }
            log.final_metrics = [("test.accuracy".to_string(), 0.9), ("test.loss".to_string(), 0.3)].into();
            log.set_status(Status::Completed);
            log.flush()?;
            log.publish()?;
        }
        std::fs::write(&done, "")?;
    }
    let board = runner::board::Board::new(vec![root])?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let reply = board.handle("/api/runs");
        let s = t.elapsed().as_secs_f64();
        if reply.status != 200 || !String::from_utf8_lossy(&reply.body).contains("test.accuracy") {
            bail!("/api/runs answered {}", reply.status);
        }
        best = best.min(s);
    }
    eprintln!("board_runs_1000: the table of 1000 runs in {:.0} ms", best * 1e3);
    Ok(1000.0 / best)
}
