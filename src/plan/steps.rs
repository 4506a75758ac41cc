//! The plan's steps, in the order [`super::plan`] takes them: the experiment's name and
//! device, the data, each split's augmentations, the model, its groups' initial weights, the
//! freeze schedule, and the model's input against the samples. Each adds what it finds
//! wrong to the problems (with the file of each key) and what may go wrong to the warnings.

use super::{bounds, Problems};
use crate::config::{load, AugmentOp, Config, DatasetKind, InitConfig, Tta};
use crate::data::{self, DataInfo, Located};
use crate::device::{parse_device, DeviceChoice};
use crate::model::{plan_model, weights, PlannedGraph};
use crate::task::Task;

/// The experiment's name (a plain folder name) and device (one this build can open).
pub(super) fn experiment(p: &mut Problems, cfg: &Config) -> DeviceChoice {
    if cfg.experiment.name.is_empty()
        || cfg.experiment.name.contains(['/', '\\'])
        || cfg.experiment.name.starts_with('.')
    {
        p.add("experiment.name", format!("must be a plain folder name, is {:?}", cfg.experiment.name));
    }
    let device = parse_device(&cfg.experiment.device).unwrap_or_else(|e| {
        p.add("experiment.device", e);
        DeviceChoice::Auto
    });
    if let (DeviceChoice::Cuda(n), false) = (device, candle_core::utils::cuda_is_available()) {
        p.add(
            "experiment.device",
            format!("cuda:{n} needs a CUDA build of runner (`make build-cuda`); this one runs on the CPU only"),
        );
    }

    device
}

/// The dataset: its classes and sample shape (`need_data`: its files must be on disk, or
/// be fetched or written when the run starts), where it is, and the loader's settings.
pub(super) fn data(p: &mut Problems, warnings: &mut Vec<String>, cfg: &Config, need_data: bool) -> (DataInfo, Located) {
    // Data.
    let spec = match data::describe(&cfg.data) {
        Ok(info) => info,
        Err(e) => {
            if need_data {
                p.add("data.root", e);
            }
            data::DataInfo {
                name: data::spec(cfg.data.dataset).name,
                classes: Vec::new(),
                shape: [cfg.data.channels, 0, 0],
            }
        }
    };
    if cfg.data.dataset == DatasetKind::ImageFolder && ![1, 3].contains(&cfg.data.channels) {
        p.add("data.channels", format!("must be 1 or 3, is {}", cfg.data.channels));
    }
    let located = data::locate(&cfg.data);
    let folder = cfg.data.dataset == DatasetKind::ImageFolder;
    // An image folder cannot be downloaded; its missing folder is reported under data.root.
    if let (Located::Missing { searched, download_to }, false) = (&located, folder) {
        let msg = data::missing_message(data::spec(cfg.data.dataset), searched, download_to);
        let boxes = matches!(cfg.data.dataset, DatasetKind::Voc | DatasetKind::Coco | DatasetKind::Yolo);
        if cfg.data.generate().is_some() {
            warnings.push(format!(
                "the synthetic set is not on disk yet; it will be written into {} when the run starts",
                download_to.display()
            ));
        } else if cfg.data.download {
            warnings.push(format!(
                "dataset {} is not on disk yet; it will be downloaded into {} when the run starts",
                spec.name,
                download_to.display()
            ));
        } else if boxes && !cfg.data.download {
            // The plan stands without the data (`runner check`); a run stops at loading.
            warnings.push(msg);
        } else if need_data {
            p.add("data.dataset", msg);
        }
    }
    if cfg.data.batch_size == 0 {
        p.add("data.batch_size", "must be > 0");
    }
    if cfg.data.num_workers > 64 {
        p.add("data.num_workers", format!("must be in 0..=64 (0: chosen for the device), is {}", cfg.data.num_workers));
    }
    if cfg.data.prefetch == 0 {
        p.add("data.prefetch", "must be > 0");
    }
    if cfg.data.eval_batch_size == Some(0) {
        p.add("data.eval_batch_size", "must be > 0");
    }
    (spec, located)
}

/// Each split's augmentations, in order, from the stored sample shape to what the model
/// sees: `(split, shape)` for `train` and `test`.
pub(super) fn augment_shapes(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    cfg: &Config,
    spec: &DataInfo,
) -> Vec<(&'static str, [usize; 3])> {
    // A list replaces an inherited one whole: an experiment that sets its own training ops
    // over a file that normalizes both splits easily drops `normalize` from training only.
    let normalizes = |ops: &[AugmentOp]| ops.iter().any(|op| matches!(op, AugmentOp::Normalize { .. }));
    if normalizes(&cfg.augment.test) != normalizes(&cfg.augment.train) {
        let (with, without) = if normalizes(&cfg.augment.test) { ("test", "train") } else { ("train", "test") };
        warnings.push(format!(
            "augment.{without} (set in {}) has no normalize but augment.{with} (set in {}) has: the model sees \
             other pixel values in {without} than in {with}. A list replaces the inherited one whole: list its \
             normalize again",
            p.loaded.source_of_key(&format!("augment.{without}")),
            p.loaded.source_of_key(&format!("augment.{with}")),
        ));
    }
    // Each split's ops, in order, from the stored sample shape to what the model sees.
    let mut split_shapes = Vec::new();
    for (split, ops) in [("train", &cfg.augment.train), ("test", &cfg.augment.test)] {
        let mut shape = spec.shape;
        for (i, op) in ops.iter().enumerate() {
            match op.out_shape(shape) {
                Ok(next) => shape = next,
                Err(e) => p.add(&format!("augment.{split}[{i}].{}", op.name()), e),
            }
        }
        if shape[1] == 0 || shape[2] == 0 {
            p.add(
                &format!("augment.{split}"),
                "images vary in size: end the augmentations with a crop or a resize to size = [h, w]",
            );
        }
        split_shapes.push((split, shape));
    }
    split_shapes
}

/// The model's graph (none when a size is beyond any machine or a layer does not fit),
/// and whether a batch of it fits this machine's memory.
pub(super) fn model(p: &mut Problems, warnings: &mut Vec<String>, cfg: &Config) -> Option<PlannedGraph> {
    // Model: sizes no machine holds first, so that the shape arithmetic cannot overflow.
    let oversized = bounds::oversized(cfg);
    for (key, msg) in &oversized {
        p.add(key, msg);
    }
    let graph = match plan_model(&cfg.model) {
        _ if !oversized.is_empty() => None,
        Ok(graph) => Some(graph),
        Err(e) => {
            p.list.push(format!("{}: {e}", p.loaded.source_of_key("model.groups")));
            None
        }
    };
    if let Some(memory) = bounds::machine_memory() {
        match graph.as_ref().and_then(|g| bounds::model_memory(g, cfg.data.batch_size, memory)) {
            Some((key, msg, true)) => p.add(&key, msg),
            Some((key, msg, false)) => warnings.push(format!("{key}: {msg}; the run may run out of memory")),
            None => {}
        }
        if oversized.is_empty() {
            if let Some((key, msg)) = bounds::prefetch_memory(cfg, &cfg.model.input, memory) {
                p.add(&key, msg);
            }
        }
    }
    graph
}

/// The groups' initial weights: a file, a run folder or an address each, `(group, init,
/// path)`.
pub(super) fn inits(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    cfg: &Config,
) -> Vec<(String, InitConfig, std::path::PathBuf)> {
    let mut inits = Vec::new();
    let names: Vec<&str> = cfg.model.groups.iter().map(|g| g.name.as_str()).collect();
    for name in cfg.model.inits.keys() {
        if !names.contains(&name.as_str()) {
            let hint = load::did_you_mean(name, &names).map(|s| format!(", did you mean `{s}`?")).unwrap_or_default();
            p.add(&format!("model.inits.{name}"), format!("names no group (the groups: {}){hint}", names.join(", ")));
        }
    }
    for (g, key, init) in cfg.model.group_inits() {
        let group = &cfg.model.groups[g];
        let sources = [!init.file.is_empty(), init.run.is_some(), init.url.is_some()];
        if sources.iter().filter(|&&s| s).count() > 1 {
            p.add(&key, "names more than one of `file`, `run` and `url`: give one");
        }
        if let Some(url) = &init.url {
            if init.expected_sha256().is_none() {
                p.add(
                    &format!("{key}.sha256"),
                    format!("is needed for {url} (its name carries no `-<hex>` SHA-256 prefix as torchvision's do)"),
                );
            }
            match init.cached_path() {
                Some(path) if path.is_file() => inits.push((group.name.clone(), init.clone(), path)),
                Some(path) => {
                    warnings
                        .push(format!("{key}.url: {url} will be fetched into {} when the run starts", path.display()));
                    inits.push((group.name.clone(), init.clone(), path));
                }
                None => p.add(
                    &format!("{key}.url"),
                    format!("{url}: no file name in the address, or no HOME / RUNNER_CACHE for the cache"),
                ),
            }
            continue;
        }
        if let Some(run) = &init.run {
            let dir = std::path::PathBuf::from(run);
            if let Err(e) = weights::run_weights(&dir) {
                warnings.push(format!("{key}.run: {e:#}; a run would stop there"));
            }
            inits.push((group.name.clone(), init.clone(), dir));
            continue;
        }
        if init.file.is_empty() {
            p.add(&key, "names none of `file`, `run` and `url`");
            continue;
        }
        let file = std::path::Path::new(&init.file);
        let set_by = if key.starts_with("model.inits") { "model.inits" } else { "model.groups" };
        let file = match p.loaded.file_of_key(set_by) {
            Some(cfg_file) if file.is_relative() => cfg_file.parent().unwrap_or(std::path::Path::new(".")).join(file),
            _ => file.to_path_buf(),
        };
        if !file.is_file() {
            p.add(&format!("{key}.file"), format!("no file {}", file.display()));
        }
        inits.push((group.name.clone(), init.clone(), file));
    }
    inits
}

/// The freeze schedule: each rule names groups of the model and a span of epochs.
pub(super) fn freeze(p: &mut Problems, warnings: &mut Vec<String>, cfg: &Config, graph: Option<&PlannedGraph>) {
    if let Some(graph) = graph {
        for (f, rule) in cfg.train.freeze.iter().enumerate() {
            let key = format!("train.freeze[{f}]");
            if rule.groups.is_empty() {
                p.add(&format!("{key}.groups"), "lists no group");
            }
            for path in &rule.groups {
                if let Err(e) = graph.params_under(path) {
                    p.add(&format!("{key}.groups"), e);
                }
            }
            if rule.from_epoch >= cfg.train.epochs {
                warnings.push(format!(
                    "train.freeze[{f}]: from_epoch {} is not before the last epoch ({} epochs): it never applies",
                    rule.from_epoch, cfg.train.epochs
                ));
            }
            if let Some(until) = rule.until_epoch {
                if until <= rule.from_epoch {
                    p.add(
                        &format!("{key}.until_epoch"),
                        format!("({until}) must be after from_epoch ({})", rule.from_epoch),
                    );
                }
            }
        }
    }
}

/// The model's input against each split's samples after the augmentations (ten-crop
/// testing cuts crops of the input's size; a fully convolutional model may slide over
/// larger test images where the task allows it).
pub(super) fn input_shapes(
    p: &mut Problems,
    cfg: &Config,
    spec: &DataInfo,
    split_shapes: &[(&'static str, [usize; 3])],
    graph: Option<&PlannedGraph>,
    task: &Task,
) {
    let tta = cfg.eval.tta == Tta::TenCrop;
    for (split, shape) in split_shapes {
        if shape[1] == 0 || shape[2] == 0 {
            continue; // reported above: the images vary in size
        }
        if tta && *split == "test" {
            let [c, h, w] = *shape;
            if cfg.model.input.len() == 3
                && (c != cfg.model.input[0] || h < cfg.model.input[1] || w < cfg.model.input[2])
            {
                p.add(
                    "eval.tta",
                    format!(
                        "ten_crop cuts {:?} crops, but test samples after the augmentations are {shape:?}",
                        cfg.model.input
                    ),
                );
            }
            if cfg.model.input.len() == 3 && cfg.model.input[1] != cfg.model.input[2] {
                p.add("eval.tta", "ten_crop needs a square model input");
            }
            continue;
        }
        let input = &cfg.model.input;
        let larger = input.len() == 3 && shape[0] == input[0] && shape[1] >= input[1] && shape[2] >= input[2];
        if cfg.model.fully_convolutional
            && task.slides_over_larger_images()
            && *split == "test"
            && larger
            && input != shape
        {
            // Dense application: the model slides its input-sized window over the image.
            if let Some(Err(e)) = graph.as_ref().map(|g| g.output_stride()) {
                p.add(
                    "model.fully_convolutional",
                    format!(
                        "test samples are {shape:?}, larger than the input {input:?}, but the model cannot slide: {e}"
                    ),
                );
            }
            continue;
        }
        if cfg.model.input != shape {
            p.add(
                "model.input",
                format!(
                    "is {:?} but {} samples after the {split} augmentations are {:?}",
                    cfg.model.input, spec.name, shape
                ),
            );
        }
    }
}
