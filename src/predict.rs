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

use crate::checkpoint;
use crate::config::{AugmentOp, LoadOptions, Loaded};
use crate::data::augment::Targets;
use crate::data::{augment, folder, synth};
use crate::model::{weights, Model};
use crate::ops::upsample::UpsampleMode;
use crate::plan::Plan;
use crate::plots::{class_name, Labelled};
use crate::rng::Rng;
use crate::runlog::files;
use crate::task::{PredictImage, PredictSetup, Prediction};
use crate::{config, plan, plots, runlog};
use anyhow::{bail, Context, Result};

pub struct Request {
    pub target: PathBuf,
    pub images: Vec<PathBuf>,
    pub weights: Option<PathBuf>,
    pub topk: usize,
    pub classes: Option<PathBuf>,
    pub sets: Vec<String>,
    /// Detection: where to write the images with their boxes drawn.
    pub out: Option<PathBuf>,
    /// Detection: the lowest score shown (default [`DISPLAY_SCORE_MIN`]).
    pub score_min: Option<f64>,
}

/// Detection's display threshold: the boxes `runner predict` prints and draws score at
/// least this (Ultralytics' `conf` default). The mAP keeps the config's lower `score_min`.
pub const DISPLAY_SCORE_MIN: f64 = 0.25;

/// One image's answer.
pub struct Predicted {
    pub image: PathBuf,
    pub answer: Prediction,
}

pub fn run(req: &Request) -> Result<(Vec<Predicted>, Vec<String>)> {
    if req.images.is_empty() {
        bail!("no image given: runner predict EXP_OR_RUN_DIR IMAGE...");
    }
    if req.topk == 0 {
        bail!("--topk 0: nothing to print");
    }
    let (plan, model) = open_model(&req.target, req.weights.as_deref(), &req.sets, false)?;
    let classes = match &req.classes {
        Some(f) => read_class_names(f)?,
        None => plan.classes.clone(),
    };

    let c = plan.input[0];
    let setup = PredictSetup {
        input: plan.input,
        tta: plan.tta,
        test_shape: plan.test_shape,
        score_min: req.score_min.unwrap_or(DISPLAY_SCORE_MIN) as f32,
    };
    let mut out = Vec::new();
    for image in &req.images {
        let (bytes, h, w) = folder::decode(image, c)?;
        let mut dims = [c, h, w];
        let mut rng = Rng::derive(plan.seed, &["predict".into()]);
        let mut targets = Targets::default();
        let values = augment::apply_bytes(&plan.augment_test, &bytes, &mut targets, &mut dims, &mut rng)
            .map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
        let mut answer = plan.task.predict(&model, &setup, PredictImage { values, dims, size: [h, w], path: image })?;
        if let Prediction::Classes { ranked, .. } = &mut answer {
            if !classes.is_empty() && classes.len() != ranked.len() {
                let source = match &req.classes {
                    Some(f) => format!("{} holds", f.display()),
                    None => "the dataset has".into(),
                };
                bail!("the model gives {} scores but {source} {} class names", ranked.len(), classes.len());
            }
            ranked.truncate(req.topk);
        }
        if let Some(dir) = &req.out {
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let rgb = if c == 3 { bytes } else { bytes.repeat(3) };
            draw(dir, &stem, &answer, &rgb, [h, w], &classes)?;
        }
        out.push(Predicted { image: image.clone(), answer });
    }
    Ok((out, classes))
}

/// The model of a run folder (its config.toml and model.safetensors), or of an experiment or
/// model file with `weights`, its groups' `init` files, or (with `random`) its seeded
/// initialisation; planned without data.
pub fn open_model(target: &Path, weights: Option<&Path>, sets: &[String], random: bool) -> Result<(Plan, Model)> {
    let (config_path, run_weights) = if target.is_dir() {
        let cfg = target.join(files::CONFIG);
        if !cfg.is_file() {
            bail!("{}: not a run folder (no config.toml) and not an experiment file", target.display());
        }
        (cfg, Some(target.join(files::MODEL)))
    } else {
        (target.to_path_buf(), None)
    };
    let weights_file = weights.map(Path::to_path_buf).or(run_weights);
    let mut loaded = load_for_predict(&config_path, sets)?;
    loaded.keep_resize_of_older_run();
    if weights_file.is_some() {
        // The whole model comes from the weights file: the groups' own files are not needed.
        loaded.config.model.drop_inits();
    }
    let plan = plan::plan_without_data(&loaded)?;
    let device = plan.open_device()?;
    let model = plan.model(&device)?;
    match &weights_file {
        Some(f) => {
            if !f.is_file() {
                bail!("no weights file {} (a run writes model.safetensors after its first epoch)", f.display());
            }
            weights::load_into(&model, f, "", "", &Default::default(), true)
                .with_context(|| format!("loading {} into the model of {}", f.display(), config_path.display()))?;
            // A checkpoint of a run with `[train] ema`: its average, as model.safetensors holds.
            checkpoint::load_average(f, &model)?;
        }
        None if !plan.inits.is_empty() => weights::load_group_inits(&model, &plan.inits)?,
        None if random => {
            tracing::info!("{}: no weights given: the model's seeded initialisation (seed {})", config_path.display(), plan.seed)
        }
        None => bail!(
            "{}: no weights to predict with: pass --weights FILE (safetensors or a PyTorch state dict), or a run folder",
            config_path.display()
        ),
    }
    Ok((plan, model))
}

/// Loads the experiment, or a model file alone (`configs/models/alexnet.toml` with
/// `--weights`): each of `[experiment]`, `[data]` and `[train]` that the file lacks gets
/// what prediction needs (a name, a one-image batch with no dataset behind it, a stand-in
/// optimizer that never runs), and without `[data]` and `[augment] test` the test pipeline
/// is the default one: the image resized (bilinear) to the model's input, pixels in [0, 1],
/// no normalization (add the training's with `--set augment.test=[...]`).
fn load_for_predict(path: &Path, sets: &[String]) -> Result<Loaded> {
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
        match config::load(path, &LoadOptions { sets: all, env: true }) {
            Ok(mut loaded) => {
                let input = loaded.config.model.input.clone();
                if let (true, &[c, h, w]) = (added.contains(&"data"), &input[..]) {
                    // Images decoded with the model's channels; both pipelines end at its size
                    // (the training one is only checked, never run).
                    loaded.config.data.channels = c;
                    let resize = AugmentOp::Resize {
                        size: Some([h, w]),
                        shorter: None,
                        mode: UpsampleMode::Bilinear,
                        antialias: true,
                    };
                    for ops in [&mut loaded.config.augment.test, &mut loaded.config.augment.train] {
                        if ops.is_empty() {
                            ops.push(resize.clone());
                        }
                    }
                }
                if !added.is_empty() {
                    tracing::info!("{}: no [{}]: the model and its weights alone", path.display(), added.join("], ["));
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

/// `--out DIR`: the image (`rgb`, planar, `[h, w]`) with its boxes drawn (`<stem>.png`,
/// higher scores drawn over lower ones), or its mask (`<stem>.png`, VOC's colours) and the
/// mask laid over it (`<stem>_overlay.png`); nothing for classes.
fn draw(dir: &Path, stem: &str, answer: &Prediction, rgb: &[u8], [h, w]: [usize; 2], classes: &[String]) -> Result<()> {
    match answer {
        Prediction::Classes { .. } => {}
        Prediction::Boxes(boxes) => {
            let drawn: Vec<Labelled> = boxes
                .iter()
                .rev()
                .map(|b| Labelled {
                    text: format!("{} {:.2}", class_name(classes, b.class as usize), b.score),
                    bbox: b.bbox,
                    colour: b.class as usize,
                    truth: false,
                })
                .collect();
            plots::boxes_on_image(&dir.join(format!("{stem}.png")), rgb, [h, w], &drawn)?;
        }
        Prediction::Mask { mask, size, .. } => {
            let png = synth::encode_mask_png(mask, *size, &plots::voc_palette())?;
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            runlog::atomic_write(&dir.join(format!("{stem}.png")), |tmp| Ok(std::fs::write(tmp, &png)?))?;
            plots::overlay_with_legend(&dir.join(format!("{stem}_overlay.png")), rgb, mask, [h, w], classes)?;
        }
    }
    Ok(())
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

/// The course's lines: `#1 12.34 tench, Tinca tinca`; a box per line,
/// `<class> <score> <xmin> <ymin> <xmax> <ymax>`; a class's share of the pixels per line.
pub fn format(p: &Predicted, classes: &[String]) -> String {
    let note = match &p.answer {
        Prediction::Classes { note, .. } => note.as_str(),
        Prediction::Boxes(_) => "boxes",
        Prediction::Mask { .. } => "share of the pixels per class",
    };
    let mut s = format!("{} ({note})\n", p.image.display());
    match &p.answer {
        Prediction::Classes { ranked, .. } => {
            for (rank, (class, score)) in ranked.iter().enumerate() {
                s += &format!("#{} {score:.2} {}\n", rank + 1, class_name(classes, *class));
            }
        }
        Prediction::Boxes(boxes) => {
            for b in boxes {
                let [x0, y0, x1, y1] = b.bbox;
                let name = class_name(classes, b.class as usize);
                s += &format!("{name} {:.2} {x0:.0} {y0:.0} {x1:.0} {y1:.0}\n", b.score);
            }
        }
        Prediction::Mask { shares, .. } => {
            for (class, share) in shares {
                s += &format!("{} {share:.4}\n", class_name(classes, *class));
            }
        }
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
        let p = Predicted {
            image: "dog.jpg".into(),
            answer: Prediction::Classes { ranked: vec![(1, 12.346), (0, -3.0)], note: "logits".into() },
        };
        let s = format(&p, &["cat".into(), "dog".into()]);
        assert_eq!(s, "dog.jpg (logits)\n#1 12.35 dog\n#2 -3.00 cat\n");
    }
}
