//! A run's predictions for the board: the task's table read into columns, and the test
//! split's images (and true masks) where the run's dataset is on disk.
//!
//! The run's task (from its `config.toml`, as its plan resolves it) names its table:
//! `predictions.parquet` (classification, with `roc_test.parquet`), `detections.parquet`
//! (with `precision_recall_test.parquet`), `segmentation.parquet` (with `masks/*.png`) or
//! `localizations.parquet`; a run whose config no longer plans shows the table it holds.
//! The images come
//! from the run's dataset, found through its `config.toml` as `runner eval` finds it, but
//! never downloaded or generated; a sample is named by its index in the test split, so the
//! files served are only those the dataset lists.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use arrow_array::{Array, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray};
use serde_json::{json, Value};

use crate::config::{LoadOptions, COCO_METRICS};
use crate::data::{folder, Split};
use crate::plan::Plan;
use crate::runlog::{column, files};
use crate::{config, data, plan, plots, runlog};

/// How many images a page of detections, localizations or masks holds at most.
pub const PAGE: usize = 12;

/// What the board knows of a run's data: its class names and its test split (or why not).
pub struct RunData {
    classes: Vec<String>,
    /// The predictions table of the run's task (none when its config does not plan).
    table: Option<&'static str>,
    /// `[channels, height, width]` of in-memory samples.
    shape: [usize; 3],
    test: std::result::Result<Arc<Split>, String>,
}

/// A dataset as the board keeps it: the samples' `[c, h, w]` and the test split.
type Loaded = ([usize; 3], Arc<Split>);

/// The runs' data, read once per run folder (a dataset is shared by the runs whose data
/// tables are equal).
#[derive(Default)]
pub struct Datasets {
    by_run: Mutex<HashMap<PathBuf, Arc<RunData>>>,
    /// The loaded samples' shape and test split, by the data table that made them.
    by_config: Mutex<HashMap<String, Loaded>>,
}

impl Datasets {
    /// The data of the run in `dir`. A run whose config does not plan has no class names;
    /// one whose dataset is not here has its reason instead of a split.
    pub fn get(&self, dir: &Path) -> Arc<RunData> {
        if let Some(d) = self.by_run.lock().unwrap_or_else(|e| e.into_inner()).get(dir) {
            return d.clone();
        }
        let plan = match plan_of(dir) {
            Ok(plan) => plan,
            Err(e) => {
                let test = Err(format!("{e:#}"));
                return Arc::new(RunData { classes: Vec::new(), table: None, shape: [0; 3], test });
            }
        };
        let (classes, table) = (plan.classes.clone(), Some(plan.task.predictions_table()));
        // The loader's settings do not change the samples: runs that differ only there
        // share one copy.
        let mut data_cfg = plan.data.clone();
        (data_cfg.batch_size, data_cfg.eval_batch_size, data_cfg.shuffle, data_cfg.drop_last) = (0, None, false, false);
        (data_cfg.num_workers, data_cfg.prefetch, data_cfg.pin_memory, data_cfg.train_limit) = (0, 0, false, 0);
        let key = format!("{data_cfg:?}");
        let cached = self.by_config.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let (shape, test) = match cached {
            Some(d) => d,
            None => match data::load_present(&plan.data) {
                Ok(d) => {
                    self.by_config.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (d.shape, d.test.clone()));
                    (d.shape, d.test)
                }
                // Not kept: the dataset may appear later (a download, a mounted disk).
                Err(e) => return Arc::new(RunData { classes, table, shape: [0; 3], test: Err(format!("{e:#}")) }),
            },
        };
        let data = Arc::new(RunData { classes, table, shape, test: Ok(test) });
        self.by_run.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_path_buf(), data.clone());
        data
    }
}

/// The run's plan, from its resolved `config.toml` (as `runner eval` reads it).
fn plan_of(dir: &Path) -> Result<Plan> {
    let opts = LoadOptions { sets: Vec::new(), env: false };
    let mut loaded = config::load(&dir.join(files::CONFIG), &opts)?;
    loaded.keep_resize_of_older_run();
    loaded.config.model.drop_inits();
    plan::plan(&loaded)
}

/// The run's predictions as JSON; `from`: the first image of the page (detection,
/// localization, segmentation).
pub fn predictions(dir: &Path, data: &RunData, from: usize) -> Result<Value> {
    // The run's task says which table (a run whose config does not plan: the table there is).
    let tables = [files::PREDICTIONS, files::DETECTIONS, files::LOCALIZATIONS, files::SEGMENTATION];
    let table = data.table.or_else(|| tables.into_iter().find(|t| dir.join(t).is_file()));
    let mut out = match table.filter(|t| dir.join(t).is_file()) {
        Some(files::PREDICTIONS) => classify(dir)?,
        Some(t @ (files::DETECTIONS | files::LOCALIZATIONS)) => boxes(dir, data, from, t)?,
        Some(files::SEGMENTATION) => segment(dir, data, from)?,
        _ => json!({ "task": null }),
    };
    out["classes"] = json!(data.classes);
    match &data.test {
        Ok(split) => {
            out["count"] = json!(split.len);
            out["images"] = json!(true);
        }
        Err(e) => {
            out["images"] = json!(false);
            out["images_error"] = json!(e);
        }
    }
    Ok(out)
}

/// Classification: every sample's label, prediction and top five classes with their
/// probabilities (flattened `[class, p, class, p, ...]`), and the ROC curves when logged.
fn classify(dir: &Path) -> Result<Value> {
    let path = dir.join(files::PREDICTIONS);
    let (mut sample, mut label, mut pred, mut top) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in runlog::read_parquet(&path)? {
        let s = column::<Int64Array>(&b, "sample", "int64", &path)?;
        let l = column::<Int32Array>(&b, "label", "int32", &path)?;
        let p = column::<Int32Array>(&b, "pred", "int32", &path)?;
        let scores = column::<ListArray>(&b, "scores", "list of float", &path)?;
        for i in 0..b.num_rows() {
            sample.push(s.value(i));
            label.push(l.value(i));
            pred.push(p.value(i));
            let v = scores.value(i);
            let v = v.as_any().downcast_ref::<Float32Array>().context("predictions.parquet: scores are not float")?;
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v.value(b).total_cmp(&v.value(a)));
            top.push(order.iter().take(5).flat_map(|&c| [c as f64, v.value(c) as f64]).collect::<Vec<f64>>());
        }
    }
    let mut roc = BTreeMap::<String, [Vec<f64>; 3]>::new();
    let path = dir.join("roc_test.parquet");
    if path.is_file() {
        for b in runlog::read_parquet(&path)? {
            let c = column::<StringArray>(&b, "class", "text", &path)?;
            let t = column::<Float64Array>(&b, "threshold", "float64", &path)?;
            let f = column::<Float64Array>(&b, "fpr", "float64", &path)?;
            let p = column::<Float64Array>(&b, "tpr", "float64", &path)?;
            for i in 0..b.num_rows() {
                let e = roc.entry(c.value(i).to_string()).or_default();
                e[0].push(t.value(i));
                e[1].push(f.value(i));
                e[2].push(p.value(i));
            }
        }
    }
    let roc: BTreeMap<String, Value> =
        roc.into_iter().map(|(c, [t, f, p])| (c, json!({ "threshold": t, "fpr": f, "tpr": p }))).collect();
    Ok(json!({ "task": "classify", "sample": sample, "label": label, "pred": pred, "top": top, "roc": roc }))
}

/// Detection or localization: the page's images with their predicted boxes (all of them:
/// the page's slider hides the low scores) and true boxes, and the precision / recall
/// curves when logged.
fn boxes(dir: &Path, data: &RunData, from: usize, table: &str) -> Result<Value> {
    let path = dir.join(table);
    let mut per: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    let mut last = 0usize;
    for b in runlog::read_parquet(&path)? {
        let s = column::<Int64Array>(&b, "sample", "int64", &path)?;
        let score = column::<Float32Array>(&b, "score", "float32", &path)?;
        let coord = |n: &str| column::<Float32Array>(&b, n, "float32", &path);
        let (x0, y0, x1, y1) = (coord("xmin")?, coord("ymin")?, coord("xmax")?, coord("ymax")?);
        let class_col = if table == files::LOCALIZATIONS { "pred" } else { "class" };
        let class = column::<StringArray>(&b, class_col, "text", &path)?;
        let truth_label =
            if table == files::LOCALIZATIONS { Some(column::<StringArray>(&b, "label", "text", &path)?) } else { None };
        for i in 0..b.num_rows() {
            let sample = usize::try_from(s.value(i)).with_context(|| format!("{}: negative sample", path.display()))?;
            last = last.max(sample + 1);
            if !(from..from.saturating_add(PAGE)).contains(&sample) {
                continue;
            }
            let mut d = json!({
                "class": class.value(i),
                "score": score.value(i),
                "box": [x0.value(i), y0.value(i), x1.value(i), y1.value(i)],
            });
            if let Some(l) = truth_label {
                d["label"] = json!(l.value(i));
            }
            per.entry(sample).or_default().push(d);
        }
    }
    let count = data.test.as_ref().map(|s| s.len).unwrap_or(last);
    let images: Vec<Value> = (from..from.saturating_add(PAGE).min(count.max(last)))
        .map(|i| {
            let truth: Vec<Value> = match &data.test {
                Ok(split) => split
                    .objects
                    .get(i)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|o| {
                        let class = plots::class_name(&data.classes, o.class as usize);
                        json!({ "class": class, "box": o.bbox, "difficult": o.difficult })
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let name = match &data.test {
                Ok(split) => split.files.get(i).and_then(|f| f.file_stem()).map(|s| s.to_string_lossy().into_owned()),
                Err(_) => None,
            };
            json!({ "sample": i, "image": name, "boxes": per.remove(&i).unwrap_or_default(), "truth": truth })
        })
        .collect();
    let mut pr = BTreeMap::<String, (f64, Vec<f64>, Vec<f64>)>::new();
    let path = dir.join("precision_recall_test.parquet");
    if path.is_file() {
        for b in runlog::read_parquet(&path)? {
            let c = column::<StringArray>(&b, "class", "text", &path)?;
            let ap = column::<Float64Array>(&b, "ap", "float64", &path)?;
            let p = column::<Float64Array>(&b, "precision", "float64", &path)?;
            let r = column::<Float64Array>(&b, "recall", "float64", &path)?;
            for i in 0..b.num_rows() {
                let e = pr.entry(c.value(i).to_string()).or_default();
                e.0 = ap.value(i);
                e.1.push(p.value(i));
                e.2.push(r.value(i));
            }
        }
    }
    let pr: BTreeMap<String, Value> =
        pr.into_iter().map(|(c, (ap, p, r))| (c, json!({ "ap": ap, "precision": p, "recall": r }))).collect();
    let task = if table == files::LOCALIZATIONS { "localize" } else { "detect" };
    // The latest epoch's mAPs, VOC's and COCO's, where the run logged them.
    let rows = runlog::RunLog::open(dir, None).map(|log| log.metrics().to_vec()).unwrap_or_default();
    let last_epoch = rows.iter().filter(|m| m.split == "test").map(|m| m.epoch).max();
    let maps: Vec<Value> = ["map50", "map50_voc07"]
        .iter()
        .chain(COCO_METRICS.iter())
        .filter_map(|name| {
            let m = rows
                .iter()
                .find(|m| Some(m.epoch) == last_epoch && m.split == "test" && m.metric == *name && m.class.is_none())?;
            Some(json!([name, m.value]))
        })
        .collect();
    Ok(
        json!({ "task": task, "from": from, "page": PAGE, "total": count.max(last), "pages": images, "pr": pr, "maps": maps }),
    )
}

/// Segmentation: the pixel confusion matrix over the split (summed from the per-image
/// counts), and the page's images with their pixel accuracy and predicted mask file.
fn segment(dir: &Path, data: &RunData, from: usize) -> Result<Value> {
    let path = dir.join(files::SEGMENTATION);
    let mut index: BTreeMap<String, usize> = data.classes.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
    let mut names = data.classes.clone();
    let mut cells: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    // Per image: its name, correct and labelled pixels.
    let mut images: BTreeMap<usize, (String, u64, u64)> = BTreeMap::new();
    for b in runlog::read_parquet(&path)? {
        let s = column::<Int64Array>(&b, "sample", "int64", &path)?;
        let image = column::<StringArray>(&b, "image", "text", &path)?;
        let t = column::<StringArray>(&b, "true_class", "text", &path)?;
        let p = column::<StringArray>(&b, "pred_class", "text", &path)?;
        let n = column::<Int64Array>(&b, "pixels", "int64", &path)?;
        let mut id = |name: &str| {
            let next = index.len();
            *index.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                next
            })
        };
        for i in 0..b.num_rows() {
            let (ti, pi, px) = (id(t.value(i)), id(p.value(i)), n.value(i).max(0) as u64);
            *cells.entry((ti, pi)).or_default() += px;
            let sample = s.value(i).max(0) as usize;
            let e = images.entry(sample).or_insert_with(|| (image.value(i).to_string(), 0, 0));
            e.2 += px;
            if ti == pi {
                e.1 += px;
            }
        }
    }
    let k = names.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for ((t, p), n) in cells {
        confusion[t][p] = n;
    }
    let total = images.keys().next_back().map_or(0, |l| l + 1);
    let masks = super::masks(dir);
    let page: Vec<Value> = images
        .range(from..from.saturating_add(PAGE))
        .map(|(i, (name, right, all))| {
            let mask = format!("masks/{name}.png");
            let has_mask = masks.contains(&mask);
            json!({
                "sample": i,
                "image": name,
                "pixel_accuracy": if *all > 0 { *right as f64 / *all as f64 } else { f64::NAN },
                "mask": if has_mask { Some(mask) } else { None },
            })
        })
        .collect();
    Ok(json!({
        "task": "segment", "confusion_classes": names, "confusion": confusion, "from": from, "page": PAGE,
        "total": total, "pages": page, "masked": masks.len(),
    }))
}

/// The test split's sample `i` as an image file: the dataset's own file (JPEG or PNG) when
/// it has one, else a PNG of the in-memory pixels; `mask`: its true class mask instead.
pub fn image(data: &RunData, i: usize, mask: bool) -> Result<(&'static str, Vec<u8>)> {
    let split = data.test.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    if i >= split.len {
        bail!("no sample {i}: the test split holds {}", split.len);
    }
    if mask {
        let file = split.masks.get(i).context("this dataset has no class masks")?;
        return Ok(("image/png", std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?));
    }
    if let Some(file) = split.files.get(i) {
        let ext = file.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let kind = match ext.as_str() {
            "jpg" | "jpeg" => Some("image/jpeg"),
            "png" => Some("image/png"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Ok((kind, std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?));
        }
        let (bytes, h, w) = folder::decode(file, 3)?;
        return Ok(("image/png", png(&bytes, [3, h, w])?));
    }
    let [c, h, w] = data.shape;
    let n = c * h * w;
    let pixels = split.pixels.get(i * n..(i + 1) * n).context("the sample's pixels are missing")?;
    // CHW bytes to interleaved rows.
    let hwc: Vec<u8> = (0..h * w).flat_map(|p| (0..c).map(move |ch| pixels[ch * h * w + p])).collect();
    Ok(("image/png", png(&hwc, [c, h, w])?))
}

/// A class mask (an 8-bit palette PNG) with its background, index 0, made transparent, to
/// lay over its image: the same PNG with a `tRNS` chunk.
pub fn clear_background(mask: &[u8]) -> Result<Vec<u8>> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(mask)).read_info().context("not a PNG")?;
    let info = reader.info();
    let (w, h) = (info.width, info.height);
    // Greyscale masks (class indices as grey levels) take VOC's palette.
    let palette = match (&info.palette, info.color_type, info.bit_depth) {
        (Some(p), png::ColorType::Indexed, png::BitDepth::Eight) => p.to_vec(),
        (_, png::ColorType::Grayscale, png::BitDepth::Eight) => plots::voc_palette(),
        _ => bail!("not an 8-bit palette or greyscale PNG"),
    };
    if w as u64 * h as u64 > 1 << 26 {
        bail!("a mask of {w} x {h} pixels is too large to show");
    }
    let mut pixels = vec![0; reader.output_buffer_size().context("the PNG is too large")?];
    let frame = reader.next_frame(&mut pixels).context("a corrupt PNG")?;
    pixels.truncate(frame.buffer_size());
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    encoder.set_trns(vec![0u8]);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Interleaved 8-bit pixels (1 or 3 channels) as a PNG.
fn png(hwc: &[u8], [c, h, w]: [usize; 3]) -> Result<Vec<u8>> {
    let kind = match c {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => bail!("cannot show {c}-channel images"),
    };
    let mut out = Vec::new();
    image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut out), hwc, w as u32, h as u32, kind)?;
    Ok(out)
}
