//! `[sweep]`: what `runner sweep` varies (a grid, zipped lists, random samples of a space)
//! and when it stops a bad point early. A plain run ignores the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Mode;

/// `[sweep]`: `grid = { "train.optimizer.sgd.lr" = [0.1, 0.01], seed = [0, 1] }` (every
/// combination), `zip = { ... }` (lists of one length, taken together), `random = N` points
/// drawn from `space` (seeded by `seed`), crossed with the grid; `early_stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub zip: BTreeMap<String, Vec<toml::Value>>,
    /// How many points to draw from `space`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<usize>,
    /// The draws' seed: the same seed gives the same points in the same order.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub space: BTreeMap<String, Distribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
}

/// One key's distribution: `{ uniform = [0.8, 0.99] }`, `{ log_uniform = [1e-4, 0.1] }`,
/// `{ int_uniform = [16, 128] }` (both ends included), `{ choice = [0.1, 0.3, 0.5] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    Uniform([f64; 2]),
    LogUniform([f64; 2]),
    IntUniform([i64; 2]),
    Choice(Vec<toml::Value>),
}

impl Distribution {
    /// Why the distribution cannot be drawn from, if it cannot.
    pub fn problem(&self) -> Option<String> {
        match self {
            Distribution::Uniform([lo, hi]) if !(lo < hi && lo.is_finite() && hi.is_finite()) => {
                Some(format!("uniform [{lo}, {hi}]: expected [low, high] with low < high"))
            }
            Distribution::LogUniform([lo, hi]) if !(*lo > 0.0 && lo < hi && hi.is_finite()) => {
                Some(format!("log_uniform [{lo}, {hi}]: expected [low, high] with 0 < low < high"))
            }
            Distribution::IntUniform([lo, hi]) if lo > hi => {
                Some(format!("int_uniform [{lo}, {hi}]: expected [low, high] with low <= high"))
            }
            Distribution::Choice(v) if v.is_empty() => Some("choice []: expected at least one value".into()),
            _ => None,
        }
    }

    /// A value drawn with `u` uniform in [0, 1), as `--set` text (TOML).
    pub fn draw(&self, u: f64) -> String {
        match self {
            Distribution::Uniform([lo, hi]) => toml::Value::Float(lo + (hi - lo) * u).to_string(),
            Distribution::LogUniform([lo, hi]) => {
                toml::Value::Float((lo.ln() + (hi.ln() - lo.ln()) * u).exp().clamp(*lo, *hi)).to_string()
            }
            Distribution::IntUniform([lo, hi]) => {
                let n = (hi - lo + 1) as f64;
                (lo + ((u * n) as i64).min(hi - lo)).to_string()
            }
            Distribution::Choice(v) => v[((u * v.len() as f64) as usize).min(v.len() - 1)].to_string(),
        }
    }
}

/// `[sweep.early_stop]`: points that do badly stop at their rungs, decided from a table all
/// points of the sweep share (`rungs.tsv` in the sweep folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    /// `asha` (asynchronous successive halving) or `median` (the median stopping rule).
    #[serde(default = "asha")]
    pub rule: StopRule,
    /// The metric a point is judged by, as in the tables: `test.accuracy`.
    pub metric: String,
    /// `max` or `min`; absent: the metric's own direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The first rung (ASHA), or the first epoch judged (median), counting from 1.
    #[serde(default = "one")]
    pub min_epochs: usize,
    /// ASHA: rungs at min_epochs x reduction^k epochs; at each, a point continues if it is in
    /// the best 1/reduction of the points that reached the rung before it.
    #[serde(default = "three")]
    pub reduction: usize,
    /// Median rule: other points needed at an epoch before a point is judged there.
    #[serde(default = "three")]
    pub min_points: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopRule {
    Asha,
    Median,
}

fn asha() -> StopRule {
    StopRule::Asha
}
fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
