//! Checkpoints in a run's `checkpoints/`: after each epoch `epoch_NNNN.safetensors` (the
//! model's parameters and batch-norm statistics by dotted name, and the optimizer's state
//! as `optimizer/<param>/<slot>`) with a TOML sidecar `epoch_NNNN.toml` (position, step
//! counts, best metric, early-stopping count, config hash). The last `keep_last` are kept,
//! and `best.*` for the configured metric. Every file is written through a temporary file
//! and a rename.
//!
//! Nothing else is needed to continue exactly: data order, augmentation and dropout draw
//! from the project's RNG derived from (seed, epoch, index / step), not from a running state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::OptimizerConfig;
use crate::model::{weights, Model};
use crate::optim::Optimizer;
use crate::runlog;

/// The sidecar: where training stood after a finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The finished epoch, counted from 0.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: i64,
    /// The configured `best` metric's best value and its epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<(f64, usize)>,
    /// Early stopping: the best value so far and the epochs since it improved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_best: Option<f64>,
    #[serde(default)]
    pub bad_epochs: usize,
    pub config_hash: String,
    /// The threads the kernels used: results depend on it (summation order).
    #[serde(default)]
    pub threads: usize,
    /// The CPU kernel level (`ops::kernels`): results depend on it too (AVX-512's sums run
    /// in another order). Empty in checkpoints written before it was recorded.
    #[serde(default)]
    pub kernels: String,
    /// Per-parameter optimizer step counts.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// `[train] ema`: the average's update count (its tensors are `ema/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_updates: Option<u64>,
}

fn name(epoch: usize) -> String {
    format!("epoch_{:04}", epoch + 1)
}

/// Writes the checkpoint of `side.epoch`; keeps the last `keep_last`; copies it to `best`
/// when `is_best`.
pub fn save(
    dir: &Path,
    model: &Model,
    optimizer: &Optimizer,
    ema: Option<&BTreeMap<String, Tensor>>,
    side: &Sidecar,
    keep_last: usize,
    is_best: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut all = weights::cpu_tensors(model)?;
    let (state, _) = optimizer.export();
    for (n, t) in state {
        all.insert(format!("optimizer/{n}"), t.to_device(&Device::Cpu)?);
    }
    for (n, t) in ema.into_iter().flatten() {
        all.insert(format!("ema/{n}"), t.to_device(&Device::Cpu)?);
    }
    let base = dir.join(name(side.epoch));
    let tensors = base.with_extension("safetensors");
    runlog::atomic_write(&tensors, |tmp| Ok(candle_core::safetensors::save(&all, tmp)?))?;
    let text = toml::to_string(side).context("cannot write the checkpoint sidecar")?;
    runlog::atomic_write(&base.with_extension("toml"), |tmp| Ok(std::fs::write(tmp, &text)?))?;
    if is_best {
        for ext in ["safetensors", "toml"] {
            let from = base.with_extension(ext);
            runlog::atomic_write(&dir.join(format!("best.{ext}")), |tmp| {
                std::fs::copy(&from, tmp)?;
                Ok(())
            })?;
        }
    }
    let mut epochs = list(dir)?;
    while epochs.len() > keep_last {
        let (_, old) = epochs.remove(0);
        for ext in ["safetensors", "toml"] {
            let _ = std::fs::remove_file(old.with_extension(ext));
        }
    }
    Ok(())
}

/// `(epoch, path without extension)` of every epoch checkpoint with both files, oldest first.
fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    for e in entries.flatten() {
        let p = e.path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else { continue };
        let Some(n) = stem.strip_prefix("epoch_").and_then(|n| n.parse::<usize>().ok()) else { continue };
        if p.extension().is_some_and(|x| x == "toml") && p.with_extension("safetensors").is_file() {
            out.push((n, p.with_extension("")));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir` and its sidecar, if any.
pub fn latest(dir: &Path) -> Result<Option<(PathBuf, Sidecar)>> {
    let Some((_, base)) = list(dir)?.pop() else { return Ok(None) };
    let side_path = base.with_extension("toml");
    let text = std::fs::read_to_string(&side_path).with_context(|| format!("cannot read {}", side_path.display()))?;
    let side: Sidecar =
        toml::from_str(&text).with_context(|| format!("{}: not a runner checkpoint sidecar", side_path.display()))?;
    Ok(Some((base.with_extension("safetensors"), side)))
}

/// The `ema/<name>` tensors of a checkpoint, by name.
pub fn ema_tensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let file = weights::read(path, device).with_context(|| format!("{}: not a readable checkpoint", path.display()))?;
    Ok(file.into_iter().filter_map(|(n, t)| n.strip_prefix("ema/").map(|k| (k.to_string(), t))).collect())
}

/// With `[train] ema`, the checkpoint at `path` holds the weights' average beside the raw
/// weights: puts the average into `model` (what training evaluated and chose `best` by).
/// False, and nothing changed, for a file without one (no sidecar, or no `ema_updates`).
pub fn load_average(path: &Path, model: &Model) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(path.with_extension("toml")) else { return Ok(false) };
    let Ok(side) = toml::from_str::<Sidecar>(&text) else { return Ok(false) };
    if side.ema_updates.is_none() {
        return Ok(false);
    }
    let avg = ema_tensors(path, model.device())?;
    let mut assign = Vec::new();
    for (n, v) in model.params.iter().chain(model.buffers.iter()) {
        match avg.get(n) {
            Some(t) if t.dims() == v.dims() => assign.push((v, t)),
            _ => bail!("{}: its sidecar names an average, but ema/{n} is missing or of another shape", path.display()),
        }
    }
    for (v, t) in assign {
        v.set(t)?;
    }
    Ok(true)
}

/// Loads a checkpoint into `model` and `optimizer`. Every tensor is checked (names and
/// shapes) before anything is set, so a mismatch leaves both as they were.
pub fn restore(path: &Path, side: &Sidecar, model: &Model, optimizer: &mut Optimizer) -> Result<()> {
    let file = weights::read(path, model.device())
        .with_context(|| format!("{}: not a readable checkpoint", path.display()))?;
    let mut problems = Vec::new();
    let mut assign = Vec::new();
    for (n, v) in model.params.iter().chain(model.buffers.iter()) {
        match file.get(n) {
            None => problems.push(format!("missing `{n}`")),
            Some(t) if t.dims() != v.dims() => {
                problems.push(format!("`{n}` is {:?} in the checkpoint, {:?} in the model", t.dims(), v.dims()))
            }
            Some(t) => assign.push((v, t)),
        }
    }
    if !problems.is_empty() {
        problems.truncate(10);
        bail!(
            "{}: the checkpoint does not fit this config's model (was it written by another config?):\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    let state: BTreeMap<String, Tensor> =
        file.iter().filter_map(|(n, t)| n.strip_prefix("optimizer/").map(|k| (k.to_string(), t.clone()))).collect();
    let mut trial = Optimizer::new(&optimizer_config(optimizer));
    trial.import(&state, &side.optimizer_steps).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for (v, t) in assign {
        v.set(t)?;
    }
    *optimizer = trial;
    Ok(())
}

fn optimizer_config(o: &Optimizer) -> OptimizerConfig {
    o.config().clone()
}
