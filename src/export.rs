//! `runner export`: a run's (or an experiment's) model for other tools: as an ONNX graph
//! (`model::onnx`, with the test preprocessing in its metadata), or its weights for
//! PyTorch, as a state dict with PyTorch's names and layouts. The zoo's names are torchvision's (`features.0.weight`) and
//! runner keeps PyTorch's layouts (convolutions `[out, in, kh, kw]`, linear `[out, in]`), so
//! `torchvision.models.alexnet()` loads an AlexNet run's file with `strict=True`. Batch
//! norm's `num_batches_tracked`, which PyTorch's state dicts hold and runner does not keep,
//! is written as 0 (it only matters to PyTorch's `momentum=None`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::config::{AugmentOp, Tta};
use crate::model::{onnx, pth, weights, Model};
use crate::plan::Plan;
use crate::predict::open_model;
use crate::runlog;

/// The file formats `runner export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A `torch.save` zip of the state dict (`torch.load(path)`).
    Pth,
    /// The state dict as safetensors (`safetensors.torch.load_file(path)`).
    Safetensors,
    /// The eval-mode forward as an ONNX graph (`onnxruntime.InferenceSession(path)`).
    Onnx,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s {
            "pth" | "pt" => Format::Pth,
            "safetensors" => Format::Safetensors,
            "onnx" => Format::Onnx,
            other => bail!("--format {other}: expected onnx, pth or safetensors"),
        })
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Pth => "pth",
            Format::Safetensors => "safetensors",
            Format::Onnx => "onnx",
        }
    }
}

pub struct Request {
    /// A run folder, or an experiment or model file.
    pub target: PathBuf,
    pub format: Format,
    pub out: Option<PathBuf>,
    /// Weights for the whole model instead of the run's (or the experiment's seeded ones).
    pub weights: Option<PathBuf>,
    pub sets: Vec<String>,
    pub onnx: OnnxRequest,
}

/// The options of `--format onnx`.
#[derive(Debug, Clone, Copy)]
pub struct OnnxRequest {
    pub opset: i64,
    pub dynamic_batch: bool,
    pub dynamic_size: bool,
    pub fold_bn: bool,
    /// The weights go to `<file>.data` beside the ONNX file (ONNX's external data).
    pub external_data: bool,
}

impl Default for OnnxRequest {
    fn default() -> Self {
        OnnxRequest {
            opset: onnx::DEFAULT_OPSET,
            dynamic_batch: false,
            dynamic_size: false,
            fold_bn: false,
            external_data: false,
        }
    }
}

/// What an export wrote.
pub struct Exported {
    pub path: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// `--format onnx`: the graph's summary.
    pub onnx: Option<onnx::Summary>,
}

/// The model's state dict as PyTorch holds it, by name.
pub fn state_dict(model: &Model) -> Result<BTreeMap<String, Tensor>> {
    let mut out: BTreeMap<String, Tensor> = weights::cpu_tensors(model)?.into_iter().collect();
    let norms: Vec<String> = out
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean").map(|p| format!("{p}.num_batches_tracked")))
        .collect();
    for k in norms {
        out.insert(k, Tensor::new(0i64, &Device::Cpu)?);
    }
    Ok(out)
}

pub fn run(req: &Request) -> Result<Exported> {
    if req.format == Format::Onnx {
        onnx::check_opset(req.onnx.opset)?;
    }
    let path = match &req.out {
        Some(p) => p.clone(),
        None => default_out(&req.target, req.format),
    };
    if path.is_dir() {
        bail!("--out {}: a folder; give the file to write", path.display());
    }
    let (plan, model) = open_model(&req.target, req.weights.as_deref(), &req.sets, true)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let parameters = model.num_params();
    let (tensors, onnx) = match req.format {
        Format::Onnx => {
            let summary = write_onnx(req, &plan, &model, &path)?;
            (summary.initializers, Some(summary))
        }
        Format::Pth => {
            let dict = state_dict(&model)?;
            pth::save(&dict.iter().map(|(k, t)| (k.clone(), t.clone())).collect::<Vec<_>>(), &path)?;
            (dict.len(), None)
        }
        Format::Safetensors => {
            let map: std::collections::HashMap<String, Tensor> = state_dict(&model)?.into_iter().collect();
            runlog::atomic_write(&path, |tmp| Ok(candle_core::safetensors::save(&map, tmp)?))?;
            (map.len(), None)
        }
    };
    Ok(Exported { path, tensors, parameters, onnx })
}

/// `--format onnx`: the options checked against the model before anything is written.
fn write_onnx(req: &Request, plan: &Plan, model: &Model, path: &Path) -> Result<onnx::Summary> {
    if !plan.precision.is_f32() {
        tracing::warn!(
            "{}: runner computes this model's convolutions and products in bf16 ([experiment] precision); the ONNX file computes in f32, so its outputs differ from runner's by bf16's rounding",
            req.target.display()
        );
    }
    let opts = onnx::Options {
        opset: req.onnx.opset,
        dynamic_batch: req.onnx.dynamic_batch,
        dynamic_size: req.onnx.dynamic_size,
        fold_bn: req.onnx.fold_bn,
        metadata: metadata(plan),
        graph_name: plan.experiment.clone(),
        external_data: req.onnx.external_data.then(|| external_data_name(path)),
    };
    onnx::check(model, &opts)?;
    let create = |p: &Path| -> Result<std::io::BufWriter<std::fs::File>> {
        let file = std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(std::io::BufWriter::new(file))
    };
    let close = |w: std::io::BufWriter<std::fs::File>| -> Result<()> {
        Ok(w.into_inner().map_err(|e| e.into_error())?.sync_all()?)
    };
    let mut summary = None;
    match &opts.external_data {
        None => runlog::atomic_write(path, |tmp| {
            let mut out = create(tmp)?;
            summary = Some(onnx::write(model, &opts, &mut out, None)?);
            close(out)
        })?,
        // The data file is in place before the file that names it.
        Some(name) => runlog::atomic_write(path, |tmp| {
            runlog::atomic_write(&path.with_file_name(name), |data_tmp| {
                let (mut out, mut data) = (create(tmp)?, create(data_tmp)?);
                summary = Some(onnx::write(model, &opts, &mut out, Some(&mut data))?);
                close(data).and_then(|_| close(out))
            })
        })?,
    }
    summary.ok_or_else(|| anyhow::anyhow!("{}: nothing written", path.display()))
}

/// `--external-data`: the weights' file beside `path`, `<file name>.data`.
fn external_data_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
    format!("{name}.data")
}

/// What a user of the ONNX file needs to feed it and read it as runner does
/// (`ModelProto.metadata_props`, values as JSON where not words): `input_size` `[c, h, w]`;
/// `mean` and `std` of the test augmentation's `normalize` (pixels are divided by 255
/// first: `(x / 255 - mean) / std`); `classes`; `task` and `task_config` (its `[task]`
/// keys); `output`, the output's layout in words; the whole `augment_test` list; `tta`; and
/// `preprocess`, those steps in words.
pub fn metadata(plan: &Plan) -> Vec<(String, String)> {
    let json = |v: serde_json::Value| v.to_string();
    let mut out = vec![
        ("runner.experiment".to_string(), plan.experiment.clone()),
        ("task".to_string(), plan.task.name().to_string()),
        ("task_config".to_string(), json(plan.task.config_json())),
        ("output".to_string(), plan.task.output_layout()),
        ("input_size".to_string(), json(serde_json::json!(plan.graph.input))),
        ("classes".to_string(), json(serde_json::json!(plan.classes))),
        ("augment_test".to_string(), json(serde_json::json!(plan.augment_test))),
        ("tta".to_string(), json(serde_json::json!(plan.tta))),
    ];
    let norm = plan.augment_test.iter().find_map(|op| match op {
        AugmentOp::Normalize { mean, std } => Some((mean, std)),
        _ => None,
    });
    let layout = "NCHW float32, channels in the image's order (RGB, or one grey channel)";
    let mut preprocess = match norm {
        Some((mean, std)) => {
            out.push(("mean".to_string(), json(serde_json::json!(mean))));
            out.push(("std".to_string(), json(serde_json::json!(std))));
            format!("{layout}; x = (pixel / 255 - mean[c]) / std[c] after the test augmentation's other steps (augment_test)")
        }
        None => format!("{layout}; x = pixel / 255 after the test augmentation's steps (augment_test); no normalize"),
    };
    if plan.tta == Tta::TenCrop {
        let [_, h, w] = plan.test_shape;
        preprocess.push_str(&format!(
            "; tta ten_crop: augment_test gives {h}x{w} images, of which runner runs the four corner crops and the centre crop of input_size and their mirror images, and averages the ten softmax outputs"
        ));
    }
    out.push(("preprocess".to_string(), preprocess));
    out
}

/// `<run id>.<ext>` for a run folder, `<file stem>.<ext>` for a file, in the current folder.
fn default_out(target: &Path, format: Format) -> PathBuf {
    let stem = match target.is_dir() {
        true => target.file_name(),
        false => target.file_stem(),
    };
    let stem = stem.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    PathBuf::from(format!("{stem}.{}", format.extension()))
}
