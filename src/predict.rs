//! `runner predict EXP_OR_RUN_DIR IMAGE...`: class scores for image files, printed in the
//! course's format `#<rank> <score:.2f> <class name>`; for a detector, one line per box
//! `<class> <score:.2f> <xmin> <ymin> <xmax> <ymax>` (pixels of the image) and, with
//! `--out DIR`, the image with its boxes drawn as `DIR/<stem>.png`.
//!
//! The weights come from `--weights FILE`, else from the run folder's `model.safetensors`,
//! else from the experiment's group `init` files. Each image goes through the experiment's
//! test augmentations. The score is the model's output for the class (the logit, as the
//! course prints it); with ten-crop TTA it is the mean softmax probability of the ten crops;
//! a fully convolutional model on a larger image gives a map, averaged over its positions.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};

use crate::config::{AugmentOp, LoadOptions, Tta};
use crate::model::{weights, Model, Pass};
use crate::rng::Rng;

pub struct Request {
    pub target: PathBuf,
    pub images: Vec<PathBuf>,
    pub weights: Option<PathBuf>,
    pub topk: usize,
    pub classes: Option<PathBuf>,
    pub sets: Vec<String>,
    /// Detection: where to write the images with their boxes drawn.
    pub out: Option<PathBuf>,
    /// Detection: the lowest score shown (default: the config's `score_min`).
    pub score_min: Option<f64>,
}

/// One image's answer: ranked classes `(class index, score)`, best first, or boxes.
pub struct Prediction {
    pub image: PathBuf,
    pub ranked: Vec<(usize, f32)>,
    /// Detection: the boxes found, best first.
    pub boxes: Vec<crate::task::detect::Found>,
    /// Segmentation: each class's share of the image's pixels, largest first (classes
    /// with no pixel left out).
    pub shares: Vec<(usize, f64)>,
    /// How the scores were made, for the header line.
    pub note: String,
}

pub fn run(req: &Request) -> Result<(Vec<Prediction>, Vec<String>)> {
    if req.images.is_empty() {
        bail!("no image given: runner predict EXP_OR_RUN_DIR IMAGE...");
    }
    if req.topk == 0 {
        bail!("--topk 0: nothing to print");
    }
    let (config_path, run_weights) = if req.target.is_dir() {
        let cfg = req.target.join("config.toml");
        if !cfg.is_file() {
            bail!("{}: not a run folder (no config.toml) and not an experiment file", req.target.display());
        }
        (cfg, Some(req.target.join("model.safetensors")))
    } else {
        (req.target.clone(), None)
    };
    let weights_file = req.weights.clone().or(run_weights);
    let mut loaded = load_for_predict(&config_path, &req.sets)?;
    loaded.keep_resize_of_older_run();
    if weights_file.is_some() {
        // The whole model comes from the weights file: the groups' own files are not needed.
        loaded.config.model.drop_inits();
    }
    let mut plan = crate::plan::plan_without_data(&loaded)?;
    if let (crate::task::Task::Detect(yolo), Some(min)) = (&mut plan.task, req.score_min) {
        yolo.cfg.score_min = min;
    }
    let device = plan.open_device()?;
    let model = plan.model(&device)?;
    match &weights_file {
        Some(f) => {
            if !f.is_file() {
                bail!("no weights file {} (a run writes model.safetensors after its first epoch)", f.display());
            }
            weights::load_into(&model, f, "", "", &Default::default(), true)
                .with_context(|| format!("loading {} into the model of {}", f.display(), config_path.display()))?;
        }
        None if !plan.inits.is_empty() => weights::load_group_inits(&model, &plan.inits)?,
        None => bail!(
            "{}: no weights to predict with: pass --weights FILE (safetensors or a PyTorch state dict), or a run folder",
            config_path.display()
        ),
    }
    let classes = match &req.classes {
        Some(f) => read_class_names(f)?,
        None => plan.classes.clone(),
    };

    let [c, _, _] = plan.input;
    let mut out = Vec::new();
    for image in &req.images {
        let (bytes, h, w) = crate::data::folder::decode(image, c)?;
        let mut dims = [c, h, w];
        let mut rng = Rng::derive(plan.seed, &["predict".into()]);
        let mut targets = crate::data::augment::Targets::default();
        let img = crate::data::augment::apply_bytes(&plan.augment_test, &bytes, &mut targets, &mut dims, &mut rng)
            .map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
        let found = match &plan.task {
            crate::task::Task::Detect(yolo) => Some(detect(&model, yolo, &plan, img.clone(), dims, [h, w], image)?),
            crate::task::Task::Localize(loc) => {
                Some(vec![localize(&model, loc, &plan, img.clone(), dims, [h, w], image)?])
            }
            _ => None,
        };
        if let Some(boxes) = found {
            if let Some(dir) = &req.out {
                let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let drawn: Vec<crate::plots::Labelled> = boxes
                    .iter()
                    .map(|b| crate::plots::Labelled {
                        text: format!("{} {:.2}", class_name(&classes, b.class as usize), b.score),
                        bbox: b.bbox,
                        colour: b.class as usize,
                        truth: false,
                    })
                    .collect();
                let path = dir.join(format!("{stem}.png"));
                let rgb = if c == 3 { bytes } else { bytes.repeat(3) };
                crate::plots::boxes_on_image(&path, &rgb, [h, w], &drawn)?;
            }
            out.push(Prediction {
                image: image.clone(),
                ranked: Vec::new(),
                boxes,
                shares: Vec::new(),
                note: "boxes".into(),
            });
            continue;
        }
        if let crate::task::Task::Segment(_) = &plan.task {
            let y = forward_one(&model, &plan, img, dims, image)?;
            let mask = crate::task::Segmenter::decode(&y)?;
            let mask = crate::task::segment::resize_mask(&mask, [dims[1], dims[2]], [h, w]);
            let mut counts = vec![0usize; plan.num_classes().max(1)];
            for &m in &mask {
                if let Some(n) = counts.get_mut(m as usize) {
                    *n += 1;
                }
            }
            let mut shares: Vec<(usize, f64)> = counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(c, &n)| (c, n as f64 / mask.len() as f64))
                .collect();
            shares.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if let Some(dir) = &req.out {
                let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let palette = crate::plots::voc_palette();
                let png = crate::data::synth::encode_mask_png(&mask, [h, w], &palette)?;
                let path = dir.join(format!("{stem}.png"));
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                crate::runlog::atomic_write(&path, |tmp| Ok(std::fs::write(tmp, &png)?))?;
                let rgb = if c == 3 { bytes } else { bytes.repeat(3) };
                let overlay = crate::plots::mask_overlay(&rgb, &mask, [h, w]);
                crate::plots::boxes_on_image(&dir.join(format!("{stem}_overlay.png")), &overlay, [h, w], &[])?;
            }
            let note = "share of the pixels per class".into();
            out.push(Prediction { image: image.clone(), ranked: Vec::new(), boxes: Vec::new(), shares, note });
            continue;
        }
        let (scores, note) = scores(&model, &plan, img, dims, image)?;
        if !classes.is_empty() && classes.len() != scores.len() {
            let source = match &req.classes {
                Some(f) => format!("{} holds", f.display()),
                None => "the dataset has".into(),
            };
            bail!("the model gives {} scores but {source} {} class names", scores.len(), classes.len());
        }
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(req.topk);
        out.push(Prediction { image: image.clone(), ranked, boxes: Vec::new(), shares: Vec::new(), note });
    }
    Ok((out, classes))
}

/// Loads the experiment, or a model file alone (`configs/models/alexnet.toml` with
/// `--weights`): each of `[experiment]`, `[data]` and `[train]` that the file lacks gets
/// what prediction needs (a name, a one-image batch with no dataset behind it, a stand-in
/// optimizer that never runs), and without `[data]` and `[augment] test` the test pipeline
/// is the default one: the image resized (bilinear) to the model's input, pixels in [0, 1],
/// no normalization (add the training's with `--set augment.test=[...]`).
fn load_for_predict(path: &Path, sets: &[String]) -> Result<crate::config::Loaded> {
    const DEFAULTS: [(&str, &str); 3] = [
        ("experiment", "experiment={ name = \"predict\" }"),
        ("data", "data={ dataset = \"image_folder\", batch_size = 1 }"),
        ("train", "train={ epochs = 1, optimizer = { sgd = { lr = 0.1 } } }"),
    ];
    let mut added: Vec<&str> = Vec::new();
    loop {
        let mut all: Vec<String> =
            DEFAULTS.iter().filter(|(k, _)| added.contains(k)).map(|(_, set)| set.to_string()).collect();
        all.extend(sets.iter().cloned());
        match crate::config::load(path, &LoadOptions { sets: all, env: true }) {
            Ok(mut loaded) => {
                let input = loaded.config.model.input.clone();
                if let (true, &[c, h, w]) = (added.contains(&"data"), &input[..]) {
                    // Images decoded with the model's channels; both pipelines end at its size
                    // (the training one is only checked, never run).
                    loaded.config.data.channels = c;
                    let resize = AugmentOp::Resize {
                        size: Some([h, w]),
                        shorter: None,
                        mode: "bilinear".into(),
                        antialias: true,
                    };
                    for ops in [&mut loaded.config.augment.test, &mut loaded.config.augment.train] {
                        if ops.is_empty() {
                            ops.push(resize.clone());
                        }
                    }
                }
                if !added.is_empty() {
                    tracing::info!(
                        "{}: no [{}]: predicting with the model and weights alone",
                        path.display(),
                        added.join("], [")
                    );
                }
                return Ok(loaded);
            }
            Err(e) => {
                let missing = DEFAULTS.iter().map(|(k, _)| *k).find(|k| {
                    !added.contains(k) && e.problems.iter().any(|p| p.starts_with(&format!("missing key `{k}`:")))
                });
                match missing {
                    Some(k) => added.push(k),
                    None => return Err(e.into()),
                }
            }
        }
    }
}

/// The model's eval-mode output for one image `dims` large after the test augmentations,
/// which must be the model's input.
fn forward_one(
    model: &Model,
    plan: &crate::plan::Plan,
    img: Vec<f32>,
    dims: [usize; 3],
    image: &Path,
) -> Result<Tensor> {
    if dims != plan.input {
        bail!(
            "{}: after the test augmentations the image is {dims:?}, the model takes {:?}",
            image.display(),
            plan.input
        );
    }
    let xs = Tensor::from_vec(img, (1, dims[0], dims[1], dims[2]), model.device())?;
    Ok(model.forward(&xs, Pass::eval())?)
}

/// A localizer's class and box for one image (the predicted class's box), in the pixels of
/// its `[h, w]`; the score is the class's probability.
fn localize(
    model: &Model,
    loc: &crate::task::Localizer,
    plan: &crate::plan::Plan,
    img: Vec<f32>,
    dims: [usize; 3],
    [h, w]: [usize; 2],
    image: &Path,
) -> Result<crate::task::detect::Found> {
    let input = plan.input;
    let larger = dims[0] == input[0] && dims[1] >= input[1] && dims[2] >= input[2];
    if plan.graph.fully_convolutional && larger && dims != input {
        // Overfeat's dense application: the windows' classes and boxes merged.
        let xs = Tensor::from_vec(img, (1, dims[0], dims[1], dims[2]), model.device())?;
        let out = model.forward(&xs, Pass::eval())?;
        let (_, _, mh, mw) = out.dims4()?;
        let stride = model.graph().output_stride().map_err(anyhow::Error::msg)?;
        let slide = crate::task::localize::Slide { window: [input[1], input[2]], stride };
        let m = loc
            .merge_map(&out.flatten_all()?.to_vec1::<f32>()?, [mh, mw], slide, [dims[1], dims[2]])
            .with_context(|| format!("{}: dense application", image.display()))?;
        let b = m.bbox;
        let bbox = [b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32];
        return Ok(crate::task::detect::Found { class: m.class, score: m.score, bbox });
    }
    let y = forward_one(model, plan, img, dims, image)?.flatten_all()?.to_vec1::<f32>()?;
    if y.len() != loc.depth() {
        bail!("the model gives {} values; localization reads {}", y.len(), loc.depth());
    }
    let c = loc.classes;
    let probs = candle_nn::ops::softmax_last_dim(&Tensor::new(&y[..c], model.device())?)?.to_vec1::<f32>()?;
    let (class, score) = probs.iter().enumerate().fold((0, f32::MIN), |b, (k, &p)| if p > b.1 { (k, p) } else { b });
    let at = c + if loc.cfg.per_class { 4 * class } else { 0 };
    let b = &y[at..at + 4];
    let bbox = [b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32];
    Ok(crate::task::detect::Found { class: class as u32, score, bbox })
}

/// A detector's boxes for one image, in the pixels of its `[h, w]`.
fn detect(
    model: &Model,
    yolo: &crate::task::Yolo,
    plan: &crate::plan::Plan,
    img: Vec<f32>,
    dims: [usize; 3],
    size: [usize; 2],
    image: &Path,
) -> Result<Vec<crate::task::detect::Found>> {
    let y = forward_one(model, plan, img, dims, image)?;
    let mut found = crate::task::detect::decode_batch(yolo, &y, [dims[1], dims[2]], &[size])?;
    Ok(found.pop().unwrap_or_default())
}

fn class_name(classes: &[String], c: usize) -> String {
    classes.get(c).cloned().unwrap_or_else(|| c.to_string())
}

fn scores(
    model: &Model,
    plan: &crate::plan::Plan,
    img: Vec<f32>,
    dims: [usize; 3],
    image: &Path,
) -> Result<(Vec<f32>, String)> {
    let device = model.device();
    let input = plan.input;
    if plan.tta == Tta::TenCrop && dims == plan.test_shape {
        let probs = crate::task::classify::ten_crop_probs(model, &img, 1, dims, input[1], device)?.squeeze(0)?;
        return Ok((probs.to_vec1()?, "mean softmax probability of ten crops".into()));
    }
    let larger = dims[0] == input[0] && dims[1] >= input[1] && dims[2] >= input[2];
    if dims != input && !(plan.graph.fully_convolutional && larger) {
        bail!(
            "{}: after the test augmentations the image is {dims:?}, the model takes {input:?}; \
             add a resize and crop to [augment.test] (or make the model fully_convolutional)",
            image.display()
        );
    }
    let xs = Tensor::from_vec(img, (1, dims[0], dims[1], dims[2]), device)?;
    let y = model.forward(&xs, Pass::eval())?;
    Ok(match y.rank() {
        2 => (y.squeeze(0)?.to_vec1()?, "logits".into()),
        4 => {
            let (_, _, mh, mw) = y.dims4()?;
            let mean = y.mean(D::Minus1)?.mean(D::Minus1)?.squeeze(0)?;
            (mean.to_vec1()?, format!("logits, mean over a {mh}x{mw} map"))
        }
        _ => bail!("the model's output has shape {:?}, not class scores", y.dims()),
    })
}

/// Class names, one per line, or the `{0: 'tench, Tinca tinca', 1: ...}` dict format of
/// `imagenet1000_clsid_to_human.txt`.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read class names {}", path.display()))?;
    let names = if text.trim_start().starts_with('{') {
        parse_class_dict(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
    };
    if names.is_empty() {
        bail!("{}: no class names", path.display());
    }
    Ok(names)
}

/// `{0: 'a', 1: "b's"}` -> `["a", "b's"]`; the ids must be 0..n.
fn parse_class_dict(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut chars = text.trim().chars().peekable();
    let mut out: Vec<(usize, String)> = Vec::new();
    if chars.next() != Some('{') {
        return Err("expected `{`".into());
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.peek() {
            Some('}') => break,
            None => return Err("missing the closing `}`".into()),
            _ => {}
        }
        let id: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_digit())).collect();
        let id: usize = id.parse().map_err(|_| format!("expected a class id after entry {}", out.len()))?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some(':') {
            return Err(format!("expected `:` after id {id}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let quote = match chars.next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a quoted name for id {id}")),
        };
        let mut name = String::new();
        loop {
            match chars.next() {
                Some('\\') => {
                    if let Some(c) = chars.next() {
                        name.push(c);
                    }
                }
                Some(c) if c == quote => break,
                Some(c) => name.push(c),
                None => return Err(format!("unterminated name for id {id}")),
            }
        }
        out.push((id, name));
    }
    out.sort_by_key(|(id, _)| *id);
    for (i, (id, _)) in out.iter().enumerate() {
        if *id != i {
            return Err(format!("class ids must be 0..{}, id {i} is missing", out.len()));
        }
    }
    Ok(out.into_iter().map(|(_, n)| n).collect())
}

/// The course's lines: `#1 12.34 tench, Tinca tinca`.
pub fn format(p: &Prediction, classes: &[String]) -> String {
    let mut s = format!("{} ({})\n", p.image.display(), p.note);
    for b in &p.boxes {
        let [x0, y0, x1, y1] = b.bbox;
        s += &format!("{} {:.2} {x0:.0} {y0:.0} {x1:.0} {y1:.0}\n", class_name(classes, b.class as usize), b.score);
    }
    for (class, share) in &p.shares {
        s += &format!("{} {share:.4}\n", class_name(classes, *class));
    }
    for (rank, (class, score)) in p.ranked.iter().enumerate() {
        let name = class_name(classes, *class);
        s += &format!("#{} {score:.2} {name}\n", rank + 1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_dict_format() {
        // The first lines of imagenet1000_clsid_to_human.txt, with a name holding a quote.
        let text = "{0: 'tench, Tinca tinca',\n 1: 'goldfish, Carassius auratus',\n 2: \"carpenter's kit\"}";
        assert_eq!(
            parse_class_dict(text).unwrap(),
            ["tench, Tinca tinca", "goldfish, Carassius auratus", "carpenter's kit"]
        );
        assert!(parse_class_dict("{0: 'a', 2: 'c'}").unwrap_err().contains("id 1 is missing"));
        assert!(parse_class_dict("{0: 'a'").unwrap_err().contains("closing"));
    }

    #[test]
    fn course_format() {
        let p = Prediction {
            image: "dog.jpg".into(),
            ranked: vec![(1, 12.346), (0, -3.0)],
            boxes: Vec::new(),
            shares: Vec::new(),
            note: "logits".into(),
        };
        let s = format(&p, &["cat".into(), "dog".into()]);
        assert_eq!(s, "dog.jpg (logits)\n#1 12.35 dog\n#2 -3.00 cat\n");
    }
}
