//! Weights in files: safetensors (what runner writes) and PyTorch state dicts (`.pth`, the
//! zip format of `torch.save` since PyTorch 1.6, read by candle's pickle reader: no Python
//! code is executed).
//!
//! A group's `init = { file, prefix, rename, strict }` loads the file's tensors named
//! `<prefix>.<rest>` into the group's parameters `<group>.<rest>` (after `rename`, which
//! replaces leading dotted parts of `<rest>`). Strict loading reports, in one error, every
//! parameter of the group that is missing, every tensor of the group's layers the model does
//! not have, and every shape that differs. Tensors under the prefix for layers the group does
//! not have (the rest of a pretrained `features` when the group takes its first conv) are
//! left in the file and listed in the log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::Model;
use crate::config::InitConfig;
use crate::data::download;
use crate::data::download::Checksum;
use crate::runlog;
use crate::runlog::{files, RunLog, Status};

/// Every tensor in a weights file, as f32 on `device`, by name.
pub fn read(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read weights file {}", path.display()))?;
    let head = &head[..n];
    let tensors: Vec<(String, Tensor)> = if head.starts_with(b"PK\x03\x04") {
        read_pth(path)?
    } else if head.len() >= 9 && head[8] == b'{' {
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?
            .into_iter()
            .collect()
    } else if head.first() == Some(&0x80) {
        bail!(
            "{}: a PyTorch file in the legacy format (before PyTorch 1.6, or saved with \
             _use_new_zipfile_serialization=False); save it again with `torch.save(model.state_dict(), path)`",
            path.display()
        );
    } else {
        bail!(
            "{}: neither a safetensors file nor a PyTorch state dict (a zip written by torch.save); it starts with {:02x?}",
            path.display(),
            head
        );
    };
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? };
        out.insert(name, t.to_device(device)?);
    }
    Ok(out)
}

/// Keys under which training scripts commonly nest a state dict in a checkpoint dict.
const NESTED_KEYS: &[&str] = &["state_dict", "model", "model_state_dict", "net"];

fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use candle_core::pickle::PthTensors;
    let open = |key: Option<&str>| -> Result<Option<PthTensors>> {
        let p = PthTensors::new(path, key).with_context(|| format!("{}: cannot read the PyTorch file", path.display()));
        match (p, key) {
            (Ok(p), _) if !p.tensor_infos().is_empty() => Ok(Some(p)),
            (Ok(_), _) | (Err(_), Some(_)) => Ok(None),
            (Err(e), None) => Err(e),
        }
    };
    let mut found = open(None)?;
    for key in NESTED_KEYS {
        if found.is_some() {
            break;
        }
        found = open(Some(key))?;
    }
    let Some(pth) = found else {
        bail!("{}: {}", path.display(), describe_pickle(path));
    };
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let t = pth
            .get(name)
            .with_context(|| format!("{}: cannot read tensor `{name}`", path.display()))?
            .with_context(|| format!("{}: tensor `{name}` vanished", path.display()))?;
        out.push((name.clone(), t));
    }
    Ok(out)
}

/// What a PyTorch file without tensors holds instead, for the error message.
fn describe_pickle(path: &Path) -> String {
    use candle_core::pickle::{Object, Stack};
    let object = || -> Result<Object> {
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(std::fs::File::open(path)?))?;
        let name = (0..zip.len())
            .filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| n.to_string()))
            .find(|n| n.ends_with("data.pkl"))
            .context("no data.pkl inside")?;
        let mut reader = std::io::BufReader::new(zip.by_name(&name)?);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader)?;
        Ok(stack.finalize()?)
    };
    let fix = "save a state dict with `torch.save(model.state_dict(), path)`";
    match object() {
        Err(e) => format!("holds a pickle this reader cannot parse ({e}); {fix}"),
        Ok(obj) => {
            fn class_of(o: &Object) -> Option<String> {
                match o {
                    Object::Class { module_name, class_name } => Some(format!("{module_name}.{class_name}")),
                    Object::Reduce { callable, .. } | Object::Build { callable, .. } => class_of(callable),
                    _ => None,
                }
            }
            match &obj {
                Object::Dict(kv) => {
                    let keys: Vec<String> = kv
                        .iter()
                        .map(|(k, _)| match k {
                            Object::Unicode(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .take(12)
                        .collect();
                    format!(
                        "holds a dict without tensors that runner reads (keys: {}): tensors of dtype bool or \
                         complex are not read; or it is not a state dict: {fix}",
                        keys.join(", ")
                    )
                }
                o => match class_of(o) {
                    Some(class) => format!(
                        "holds a whole pickled model object (`{class}`), not a state dict; runner does not run \
                         pickled code: {fix}"
                    ),
                    None => format!("holds no tensors; {fix}"),
                },
            }
        }
    }
}

/// Every parameter and buffer of `model` by dotted name, on the CPU (what safetensors saves).
pub fn cpu_tensors(model: &Model) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut all = std::collections::HashMap::new();
    for (n, v) in model.params.iter().chain(model.buffers.iter()) {
        all.insert(n.clone(), v.as_tensor().to_device(&Device::Cpu)?);
    }
    Ok(all)
}

/// Writes every parameter and buffer of `model` as safetensors with its dotted name, through
/// a temporary file renamed into place (a crash leaves the previous file).
pub fn save(model: &Model, path: &Path) -> Result<()> {
    let all = cpu_tensors(model)?;
    runlog::atomic_write(path, |tmp| Ok(candle_core::safetensors::save(&all, tmp)?))
}

/// What a load did: tensors set, and the file's tensors under the prefix left unused.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub unused: Vec<String>,
    /// Non-strict loads: the problems a strict load would have refused.
    pub problems: Vec<String>,
}

/// PyTorch's batch norm counter: kept in state dicts, not a runner tensor.
const IGNORED: &[&str] = &["num_batches_tracked"];

/// Loads `file` into the parameters and buffers under `target` (a group name, or `""` for
/// the whole model) from the file's names under `prefix` (`""`: all names).
pub fn load_into(
    model: &Model,
    file: &Path,
    target: &str,
    prefix: &str,
    rename: &BTreeMap<String, String>,
    strict: bool,
) -> Result<LoadReport> {
    let tensors = read(file, model.device())?;
    let under = |name: &str, p: &str| -> Option<String> {
        if p.is_empty() {
            Some(name.to_string())
        } else {
            name.strip_prefix(p).and_then(|r| r.strip_prefix('.')).map(str::to_string)
        }
    };
    // The model's side: `<rest>` -> tensor, for the target.
    let mut slots: BTreeMap<String, &candle_core::Var> = BTreeMap::new();
    for (n, v) in model.params.iter().chain(model.buffers.iter()) {
        if let Some(rest) = under(n, target) {
            slots.insert(rest, v);
        }
    }
    if slots.is_empty() {
        bail!("no parameters under `{target}` in the model");
    }
    // The file's side, renamed.
    // A name a rule produced wins over a file name that is already that name: with
    // `{ "17" = "0" }`, `features.17.weight` fills `0.weight`, not `features.0.weight`.
    let mut offered: BTreeMap<String, (&String, &Tensor)> = BTreeMap::new();
    let mut by_rule = Vec::new();
    for (n, t) in &tensors {
        if let Some(rest) = under(n, prefix) {
            if IGNORED.iter().any(|i| rest.ends_with(i)) {
                continue;
            }
            match renamed(&rest, rename) {
                Some(to) => by_rule.push((to, (n, t))),
                None => {
                    offered.insert(rest, (n, t));
                }
            }
        }
    }
    offered.extend(by_rule);
    if offered.is_empty() {
        let mut tops: Vec<String> = tensors.keys().map(|n| top_names(n)).collect::<BTreeSet<_>>().into_iter().collect();
        tops.truncate(20);
        bail!(
            "{}: no tensor is named `{prefix}.*` ({} tensors, under: {})",
            file.display(),
            tensors.len(),
            tops.join(", ")
        );
    }
    let first = |s: &str| s.split('.').next().unwrap_or("").to_string();
    let layers: BTreeSet<String> = slots.keys().map(|k| first(k)).collect();
    let full = |rest: &str| if target.is_empty() { rest.to_string() } else { format!("{target}.{rest}") };
    let mut problems = Vec::new();
    let mut report = LoadReport::default();
    let mut assign = Vec::new();
    for (rest, var) in &slots {
        match offered.get(rest) {
            None => problems.push(format!(
                "missing: `{}` (no `{}` in the file)",
                full(rest),
                file_name(prefix, rest, rename)
            )),
            // The course's convolutionize (FCN's `surgery.transplant`): a linear layer's
            // weight `[out, c*kh*kw]` is the kernel `[out, c, kh, kw]` of a convolution.
            Some((_, t))
                if t.rank() == 2
                    && var.rank() == 4
                    && t.dims()[0] == var.dims()[0]
                    && t.elem_count() == var.elem_count() =>
            {
                assign.push((*var, t.reshape(var.dims())?))
            }
            Some((name, t)) if t.dims() != var.dims() => problems.push(format!(
                "shape: `{}` is {:?} in the model, `{name}` is {:?} in the file",
                full(rest),
                var.dims(),
                t.dims()
            )),
            Some((_, t)) => assign.push((*var, (*t).clone())),
        }
    }
    for (rest, (name, _)) in &offered {
        if slots.contains_key(rest) {
            continue;
        }
        if layers.contains(&first(rest)) {
            problems.push(format!("unexpected: `{name}` has no place in the model (would be `{}`)", full(rest)));
        } else {
            report.unused.push((*name).clone());
        }
    }
    if strict && !problems.is_empty() {
        bail!(
            "{}: {} problem(s) loading into `{}` (set strict = false to load what matches):\n  {}",
            file.display(),
            problems.len(),
            if target.is_empty() { "the model" } else { target },
            problems.join("\n  ")
        );
    }
    for (var, t) in assign {
        var.set(&t.to_dtype(var.dtype())?)?;
        report.loaded += 1;
    }
    report.problems = problems;
    Ok(report)
}

/// `0.weight` with `{ "0" = "3" }` -> `3.weight`: the rule matching the most leading dotted
/// parts wins; `*` in a rule matches one part and is put back where the target has `*`
/// (`{ "*.conv1" = "*.0" }` maps `3.conv1.weight` to `3.0.weight`).
fn apply_rename(rest: &str, rename: &BTreeMap<String, String>) -> String {
    renamed(rest, rename).unwrap_or_else(|| rest.to_string())
}

/// `rest` renamed by the longest matching rule; `None` when no rule matches.
fn renamed(rest: &str, rename: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = rest.split('.').collect();
    let mut best: Option<(usize, String)> = None;
    for (from, to) in rename {
        let pattern: Vec<&str> = from.split('.').collect();
        if pattern.len() > parts.len() || best.as_ref().is_some_and(|(n, _)| *n >= pattern.len()) {
            continue;
        }
        let mut captured = Vec::new();
        let matched = pattern.iter().zip(&parts).all(|(p, part)| {
            if *p == "*" {
                captured.push(*part);
                true
            } else {
                p == part
            }
        });
        if !matched {
            continue;
        }
        let mut captured = captured.into_iter();
        let head: Vec<&str> =
            to.split('.').map(|t| if t == "*" { captured.next().unwrap_or("*") } else { t }).collect();
        let mut out = head.join(".");
        for tail in &parts[pattern.len()..] {
            out.push('.');
            out.push_str(tail);
        }
        best = Some((pattern.len(), out));
    }
    best.map(|(_, s)| s)
}

/// The file-side name that would fill `rest` (undoing `rename`), for messages.
fn file_name(prefix: &str, rest: &str, rename: &BTreeMap<String, String>) -> String {
    let inverse: BTreeMap<String, String> = rename.iter().map(|(k, v)| (v.clone(), k.clone())).collect();
    let r = apply_rename(rest, &inverse);
    if prefix.is_empty() {
        r
    } else {
        format!("{prefix}.{r}")
    }
}

/// The weights an `init = { run = ... }` names: `dir/model.safetensors` when `dir` is a
/// completed run, else that of the newest completed run under `dir` (run ids sort by time).
pub fn run_weights(dir: &Path) -> Result<PathBuf> {
    let completed = |d: &Path| {
        d.join(files::MODEL).is_file() && RunLog::open(d, None).is_ok_and(|l| l.status() == Status::Completed)
    };
    if completed(dir) {
        return Ok(dir.join(files::MODEL));
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    runs.sort();
    match runs.into_iter().rev().find(|d| completed(d)) {
        Some(d) => Ok(d.join(files::MODEL)),
        None => bail!("no completed run in or under {} (run that experiment first)", dir.display()),
    }
}

/// `features.0.weight` -> `features`; `fc.weight` -> `fc`.
fn top_names(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    parts[..parts.len().saturating_sub(2).max(1)].join(".")
}

/// Loads every group's `init` file; relative paths are taken from `base`.
pub fn load_group_inits(model: &Model, inits: &[(String, InitConfig, PathBuf)]) -> Result<()> {
    for (group, init, file) in inits {
        let resolved;
        let file = if init.run.is_some() {
            resolved = run_weights(file).with_context(|| format!("group `{group}` init"))?;
            &resolved
        } else {
            file
        };
        if let (Some(url), false) = (&init.url, file.is_file()) {
            let expected =
                init.expected_sha256().with_context(|| format!("group `{group}` init: no sha256 for {url}"))?;
            download::fetch(url, file, Checksum::Sha256Prefix(expected))
                .with_context(|| format!("group `{group}` init"))?;
        }
        let prefix = init.prefix.clone().unwrap_or_else(|| group.clone());
        let r = load_into(model, file, group, &prefix, &init.rename, init.strict)
            .with_context(|| format!("group `{group}` init"))?;
        tracing::info!("group {group}: {} tensors from {} (prefix `{prefix}`)", r.loaded, file.display());
        if !r.unused.is_empty() {
            tracing::info!(
                "group {group}: {} tensors under `{prefix}` left unused: {}",
                r.unused.len(),
                r.unused.join(", ")
            );
        }
        for p in &r.problems {
            tracing::warn!("group {group} (strict = false): {p}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rules() {
        let r: BTreeMap<String, String> = [("*.conv1", "*.0"), ("*.bn1", "*.1"), ("weight", "0.weight"), ("3", "7")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(apply_rename("3.conv1.weight", &r), "3.0.weight");
        assert_eq!(apply_rename("5.bn1.running_mean", &r), "5.1.running_mean");
        assert_eq!(apply_rename("weight", &r), "0.weight");
        assert_eq!(apply_rename("3.bias", &r), "7.bias");
        assert_eq!(apply_rename("bias", &r), "bias");
    }
}
