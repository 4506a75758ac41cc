//! Plan-time bounds: sizes no machine holds are refused by `runner check`, naming the key,
//! before a run allocates (and aborts with its folder left `running`).
//!
//! 1. Every whole number in a layer and in `model.input` is at most [`MAX_SIZE`]: beyond
//!    it a shape could overflow the planner's arithmetic (a padding near 2^63 wrapped
//!    around, and the model trained).
//! 2. The model's memory, estimated in f64: parameters four times over (weights, gradients
//!    and two optimizer slots) and each layer's output for a training batch twice (the
//!    activation and its gradient), against this machine's memory (`/proc/meminfo`
//!    `MemTotal`; no bound where it cannot be read): above it a warning, above twice it an
//!    error. Both name the largest layer.
//! 3. The loader's prefetched batches must fit too.

use crate::config::{Config, Layer};
use crate::device;
use crate::device::DeviceChoice;
use crate::model::graph::{PlannedGraph, PlannedLayer};

/// The largest channel count, kernel, stride, padding or image side accepted.
pub const MAX_SIZE: u64 = 1 << 24;

/// `(key, message)` for each whole number of the model config above [`MAX_SIZE`].
pub fn oversized(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, &v) in cfg.model.input.iter().enumerate() {
        if v as u64 > MAX_SIZE {
            out.push((format!("model.input[{i}]"), format!("{v} is larger than {MAX_SIZE}")));
        }
    }
    for (g, group) in cfg.model.groups.iter().enumerate() {
        if group.repeat.is_some_and(|r| r as u64 > MAX_SIZE) {
            out.push((format!("model.groups[{g}].repeat"), format!("is larger than {MAX_SIZE}")));
        }
        for (l, Layer(kind)) in group.layers.iter().enumerate() {
            let Ok(value) = toml::Value::try_from(kind) else { continue };
            let mut found = Vec::new();
            integers(&value, String::new(), &mut found);
            for (path, v) in found {
                // `conv2d.padding` -> `padding`: the layer's name is already in the message.
                let path = path.split_once('.').map(|(_, rest)| rest.to_string()).unwrap_or(path);
                if v > MAX_SIZE as i64 || v < 0 {
                    out.push((
                        format!("model.groups[{g}].layers[{l}]"),
                        format!("{} `{path}` = {v}: at most {MAX_SIZE}", kind.name()),
                    ));
                }
            }
        }
    }
    out
}

fn integers(v: &toml::Value, path: String, out: &mut Vec<(String, i64)>) {
    match v {
        toml::Value::Integer(i) => out.push((path, *i)),
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                integers(v, p, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                integers(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// This machine's memory in bytes, where it can be read (`RUNNER_MEMORY_GIB` overrides it:
/// to plan for a smaller machine).
pub fn machine_memory() -> Option<f64> {
    if let Some(gib) = std::env::var("RUNNER_MEMORY_GIB").ok().and_then(|v| v.parse::<f64>().ok()) {
        return Some(gib * (1u64 << 30) as f64);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

fn gib(bytes: f64) -> String {
    if bytes < (1u64 << 30) as f64 {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
    }
}

/// The model's training memory against `memory` bytes: `(key, message, refuse)` when the
/// estimate is above it; `refuse` when it is more than twice above (the estimate is rough:
/// between the two the plan only warns).
pub fn model_memory(graph: &PlannedGraph, batch: usize, memory: f64) -> Option<(String, String, bool)> {
    let f = |shape: &[usize]| shape.iter().map(|&d| d as f64).product::<f64>();
    let params: f64 = graph.layers().map(|l| l.params.iter().map(|(_, s)| f(s)).sum::<f64>()).sum();
    let acts: f64 = graph.layers().map(|l| f(&l.out_shape)).sum::<f64>() * batch as f64;
    let need = params * 4.0 * 4.0 + acts * 4.0 * 2.0;
    if need <= memory {
        return None;
    }
    // The layer that weighs most: its parameters or its batch of outputs.
    let weight = |l: &PlannedLayer| {
        l.params.iter().map(|(_, s)| f(s)).sum::<f64>() * 16.0 + f(&l.out_shape) * batch as f64 * 8.0
    };
    let worst = graph.layers().max_by(|a, b| weight(a).total_cmp(&weight(b)))?;
    let refuse = need > 2.0 * memory;
    Some((
        worst.key.clone(),
        format!(
            "training this model needs about {} ({} parameters x 16 bytes, {} activations per batch of \
             {batch} x 8 bytes), more than this machine's {}; the largest part is {} ({}, output {:?}: {})",
            gib(need),
            params,
            acts,
            gib(memory),
            worst.path,
            worst.kind.name(),
            worst.out_shape,
            gib(weight(worst))
        ),
        refuse,
    ))
}

/// The loader's prefetched batches against `memory` bytes.
pub fn prefetch_memory(cfg: &Config, sample: &[usize], memory: f64) -> Option<(String, String)> {
    let batch: f64 = sample.iter().map(|&d| d as f64).product::<f64>() * 4.0 * cfg.data.batch_size as f64;
    // `num_workers = 0` chooses for the device (train::loader_workers): 1 on the CPU, at
    // most 8 on a GPU.
    let gpu = cfg!(feature = "cuda") && device::parse_device(&cfg.experiment.device) != Ok(DeviceChoice::Cpu);
    let workers = match cfg.data.num_workers {
        0 if gpu => 8,
        0 => 1,
        n => n,
    };
    let need = batch * (cfg.data.prefetch as f64 + workers as f64);
    (need > memory).then(|| {
        (
            "data.prefetch".to_string(),
            format!(
                "{} batches in flight ({} prefetched, {} being made) of {} each need {}, more than this machine's {}",
                cfg.data.prefetch + workers,
                cfg.data.prefetch,
                workers,
                gib(batch),
                gib(need),
                gib(memory)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupConfig, LayerKind, ModelConfig};
    use crate::model::plan_model;

    #[test]
    fn a_model_that_cannot_fit_names_its_largest_layer() {
        // By hand: 10 * 1e6 + 1e6 params x 16 bytes = 176 MB; outputs (10 + 1e6) x 8
        // images x 8 bytes = 64 MB: 240 MB in all.
        let cfg = ModelConfig {
            input: vec![10, 1, 1],
            groups: vec![GroupConfig::new(
                "head",
                vec![Layer(LayerKind::Flatten {}), Layer(LayerKind::Linear { inp: None, out: 1_000_000, bias: true })],
            )],
            ..Default::default()
        };
        let g = plan_model(&cfg).unwrap();
        assert!(model_memory(&g, 8, 1e9).is_none());
        let (key, msg, refuse) = model_memory(&g, 8, 1e8).unwrap();
        assert_eq!(key, "model.groups[0].layers[1]");
        assert!(refuse, "240 MB against 100 MB");
        assert!(!model_memory(&g, 8, 2e8).unwrap().2, "240 MB against 200 MB: a warning");
        assert!(msg.contains("11000000 parameters") && msg.contains("head.1 (linear"), "{msg}");
    }
}
