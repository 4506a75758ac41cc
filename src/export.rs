//! `runner export`: a run's (or an experiment's) weights for PyTorch, as a state dict with
//! PyTorch's names and layouts. The zoo's names are torchvision's (`features.0.weight`) and
//! runner keeps PyTorch's layouts (convolutions `[out, in, kh, kw]`, linear `[out, in]`), so
//! `torchvision.models.alexnet()` loads an AlexNet run's file with `strict=True`. Batch
//! norm's `num_batches_tracked`, which PyTorch's state dicts hold and runner does not keep,
//! is written as 0 (it only matters to PyTorch's `momentum=None`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::model::{pth, weights, Model};
use crate::predict::open_model;
use crate::runlog;

/// The file formats `runner export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A `torch.save` zip of the state dict (`torch.load(path)`).
    Pth,
    /// The state dict as safetensors (`safetensors.torch.load_file(path)`).
    Safetensors,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s {
            "pth" | "pt" => Format::Pth,
            "safetensors" => Format::Safetensors,
            "onnx" => bail!("--format onnx: ONNX export is not built yet (issue 35); pth and safetensors are"),
            other => bail!("--format {other}: expected pth or safetensors"),
        })
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Pth => "pth",
            Format::Safetensors => "safetensors",
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
}

/// What an export wrote.
pub struct Exported {
    pub path: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
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
    let (_, model) = open_model(&req.target, req.weights.as_deref(), &req.sets, true)?;
    let path = match &req.out {
        Some(p) => p.clone(),
        None => default_out(&req.target, req.format),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let dict = state_dict(&model)?;
    let parameters = model.num_params();
    match req.format {
        Format::Pth => pth::save(&dict.iter().map(|(k, t)| (k.clone(), t.clone())).collect::<Vec<_>>(), &path)?,
        Format::Safetensors => {
            let map: std::collections::HashMap<String, Tensor> = dict.clone().into_iter().collect();
            runlog::atomic_write(&path, |tmp| Ok(candle_core::safetensors::save(&map, tmp)?))?;
        }
    }
    Ok(Exported { path, tensors: dict.len(), parameters })
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
