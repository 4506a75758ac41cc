//! `runner compare` and `runner diff`: runs side by side from their folders' tables.
//!
//! A run is a folder with `run.parquet`; folders given are searched for runs below them.
//! `compare` prints one row per run: the run, its status, the parameters that differ between
//! the runs (all with `--all-params`; a key missing from a run shows empty) and the final
//! metrics. The threads and CPU kernel level a run ran with (`run.parquet`) count as
//! parameters `threads` and `kernels`. A folder whose tables cannot be read is reported and
//! skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};

use crate::config::{load, Mode};
use crate::runlog::{files, RunLock, RunLog, Status};
use crate::{plots, runlog};

#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub run_id: String,
    pub experiment: String,
    pub status: String,
    pub sweep_id: Option<String>,
    pub params: BTreeMap<String, String>,
    /// Final metrics, `test.accuracy` -> value.
    pub finals: BTreeMap<String, f64>,
    /// Start and end, microseconds since the Unix epoch (no end while running).
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
}

fn micros(b: &RecordBatch, name: &str) -> Option<i64> {
    let c = b.column_by_name(name)?.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    (!c.is_null(0)).then(|| c.value(0))
}

fn text(b: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let c = b.column_by_name(name)?.as_any().downcast_ref::<StringArray>()?;
    (!c.is_null(row)).then(|| c.value(row).to_string())
}

/// One run's `run.parquet` and `params.parquet`.
pub fn read_run(dir: &Path) -> Result<RunInfo> {
    let path = dir.join(files::RUN);
    if !path.is_file() {
        bail!("{}: not a run folder (no run.parquet)", dir.display());
    }
    let batches = runlog::read_parquet(&path)?;
    let b = batches.first().with_context(|| format!("{}: empty table", path.display()))?;
    if b.num_rows() != 1 {
        bail!("{}: expected one row, found {}", path.display(), b.num_rows());
    }
    let run_id = text(b, "run_id", 0).with_context(|| format!("{}: no run_id: not a runner table", path.display()))?;
    let mut finals = BTreeMap::new();
    for (i, f) in b.schema().fields().iter().enumerate() {
        if let Some(v) = b.column(i).as_any().downcast_ref::<Float64Array>() {
            if !v.is_null(0) {
                finals.insert(f.name().clone(), v.value(0));
            }
        }
    }
    let mut params = BTreeMap::new();
    let ppath = dir.join(files::PARAMS);
    if ppath.is_file() {
        for p in runlog::read_parquet(&ppath)? {
            for i in 0..p.num_rows() {
                if let (Some(k), Some(v)) = (text(&p, "key", i), text(&p, "value", i)) {
                    params.insert(k, v);
                }
            }
        }
    }
    // What the run ran with beside its config: results depend on both (kernels.rs). Keys
    // without a dot, so no config key can take them; shown where runs differ, as the rest.
    if let Some(c) = b.column_by_name("threads").and_then(|c| c.as_any().downcast_ref::<UInt32Array>()) {
        if !c.is_null(0) {
            params.insert("threads".into(), c.value(0).to_string());
        }
    }
    if let Some(k) = text(b, "kernels", 0) {
        params.insert("kernels".into(), k);
    }
    Ok(RunInfo {
        dir: dir.to_path_buf(),
        run_id,
        experiment: text(b, "experiment", 0).unwrap_or_default(),
        status: match text(b, "status", 0).unwrap_or_default() {
            // Its process is gone (killed): `runner resume` continues it.
            s if s == Status::Running.as_str() && !RunLock::is_held(dir) => "stale".into(),
            s => s,
        },
        sweep_id: text(b, "sweep_id", 0),
        params,
        finals,
        started_at_us: micros(b, "started_at"),
        finished_at_us: micros(b, "finished_at"),
    })
}

/// Every run folder (a folder holding `run.parquet`) at or below `path`, four levels deep
/// at most, sorted.
pub fn run_dirs(path: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if p.join(files::RUN).is_file() {
            out.push(p.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(p) {
            let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
            dirs.sort();
            for d in dirs {
                walk(&d, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(path, 4, &mut out);
    out
}

/// Every run folder at or below `paths`, sorted; unreadable ones are returned as warnings.
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<RunInfo>, Vec<String>)> {
    // Each run folder, with the sweep it must belong to where a sweep folder named it.
    let mut dirs: Vec<(PathBuf, Option<String>)> = Vec::new();
    for p in paths {
        if let Some((experiment_dir, id)) = sweep_folder(p) {
            dirs.extend(run_dirs(&experiment_dir).into_iter().map(|d| (d, Some(id.clone()))));
            continue;
        }
        if p.is_file() {
            bail!("{}: a file; give run folders, folders holding runs or sweep folders", p.display());
        }
        if !p.is_dir() {
            bail!("{}: no such folder", p.display());
        }
        dirs.extend(run_dirs(p).into_iter().map(|d| (d, None)));
    }
    dirs.sort();
    dirs.dedup_by(|a, b| a.0 == b.0);
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    for (d, sweep) in dirs {
        match read_run(&d) {
            Ok(r) if sweep.is_some() && r.sweep_id != sweep => {}
            Ok(r) => runs.push(r),
            Err(e) => warnings.push(format!("skipped {}: {e:#}", d.display())),
        }
    }
    Ok((runs, warnings))
}

/// `<output_dir>/<experiment>/sweeps/<id>` (or its state file `<id>.toml`) ->
/// (`<output_dir>/<experiment>`, `<id>`): a sweep's runs are the experiment's runs that
/// carry its id.
fn sweep_folder(p: &Path) -> Option<(PathBuf, String)> {
    let p = match p.extension() {
        Some(e) if e == "toml" => p.with_extension(""),
        _ => p.to_path_buf(),
    };
    let parent = p.parent()?;
    let state = PathBuf::from(format!("{}.toml", p.display()));
    if parent.file_name()? != "sweeps" || !state.is_file() {
        return None;
    }
    Some((parent.parent()?.to_path_buf(), p.file_name()?.to_string_lossy().into_owned()))
}

/// The parameter keys whose values differ between `runs` (missing counts as a value).
pub fn differing_keys(runs: &[RunInfo]) -> Vec<String> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    keys.into_iter()
        .filter(|k| {
            let first = runs.first().and_then(|r| r.params.get(*k));
            runs.iter().any(|r| r.params.get(*k) != first)
        })
        .cloned()
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "markdown" | "md" => Ok(Format::Markdown),
            _ => Err(format!("--format {s}: expected table, csv or markdown")),
        }
    }
}

pub struct Options {
    pub all_params: bool,
    pub sort: Option<String>,
    pub filters: Vec<(String, String)>,
    pub metrics: Option<Vec<String>>,
    pub format: Format,
}

/// Parses `key=value` filters.
pub fn parse_filters(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.trim_matches('"').to_string())),
            _ => bail!("--where {w}: expected key=value"),
        })
        .collect()
}

/// `value` as a filter sees it: numbers by value (`5e-2` is `0.05`), the rest as text.
fn same_value(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_matches('"'), b.trim_matches('"'));
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The compare table as text. A sort key, filter key or metric that no run has is an
/// error naming what the runs do have.
pub fn table(mut runs: Vec<RunInfo>, o: &Options) -> Result<String> {
    let all_metrics: BTreeSet<String> = runs.iter().flat_map(|r| r.finals.keys().cloned()).collect();
    let known = |what: &str, name: &str| -> Result<()> {
        if all_metrics.contains(name) {
            return Ok(());
        }
        let list: Vec<&str> = all_metrics.iter().map(String::as_str).collect();
        let hint = load::did_you_mean(name, &list).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default();
        bail!("{what} {name}: no run has this final metric; {hint}they have {}", list.join(", "))
    };
    if let Some(key) = &o.sort {
        known("--sort", key)?;
    }
    for m in o.metrics.iter().flatten() {
        known("--metrics", m)?;
    }
    for (k, _) in &o.filters {
        if !runs.iter().any(|r| r.params.contains_key(k)) {
            let keys: BTreeSet<&str> = runs.iter().flat_map(|r| r.params.keys().map(String::as_str)).collect();
            let list: Vec<&str> = keys.into_iter().collect();
            let hint = load::did_you_mean(k, &list).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
            bail!("--where {k}: no run has this parameter{hint}");
        }
    }
    runs.retain(|r| o.filters.iter().all(|(k, v)| r.params.get(k).is_some_and(|x| same_value(x, v))));
    let metrics: Vec<String> = match &o.metrics {
        Some(m) => m.clone(),
        None => all_metrics.into_iter().collect(),
    };
    if let Some(key) = &o.sort {
        let mode = Mode::for_metric(key);
        runs.sort_by(|a, b| {
            let (x, y) =
                (a.finals.get(key).copied().unwrap_or(f64::NAN), b.finals.get(key).copied().unwrap_or(f64::NAN));
            // Points a sweep stopped early come after those that ran to the end.
            let stopped = |r: &RunInfo| r.status == Status::Stopped.as_str();
            if stopped(a) != stopped(b) {
                return stopped(a).cmp(&stopped(b));
            }
            // Best first; runs without the metric last.
            match (x.is_nan(), y.is_nan()) {
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if mode == Mode::Min => x.total_cmp(&y),
                _ => y.total_cmp(&x),
            }
        });
    }
    let params: Vec<String> = if o.all_params {
        runs.iter().flat_map(|r| r.params.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
    } else {
        differing_keys(&runs)
    };
    let mut header = vec!["run".to_string(), "status".to_string()];
    header.extend(params.iter().cloned());
    header.extend(metrics.iter().cloned());
    let mut rows = Vec::new();
    for r in &runs {
        let mut row = vec![format!("{}/{}", r.experiment, r.run_id), r.status.clone()];
        row.extend(params.iter().map(|k| r.params.get(k).cloned().unwrap_or_default()));
        row.extend(metrics.iter().map(|m| r.finals.get(m).map(|v| format!("{v:.4}")).unwrap_or_default()));
        rows.push(row);
    }
    Ok(render(&header, &rows, o.format))
}

pub fn render(header: &[String], rows: &[Vec<String>], format: Format) -> String {
    let mut s = String::new();
    match format {
        Format::Csv => {
            let q = |f: &String| {
                if f.contains([',', '"', '\n']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.clone()
                }
            };
            for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
                s += &r.iter().map(q).collect::<Vec<_>>().join(",");
                s.push('\n');
            }
        }
        Format::Markdown => {
            let line = |r: &[String]| {
                format!("| {} |\n", r.iter().map(|f| f.replace('|', "\\|")).collect::<Vec<_>>().join(" | "))
            };
            s += &line(header);
            s += &format!("|{}\n", " --- |".repeat(header.len()));
            for r in rows {
                s += &line(r);
            }
        }
        Format::Table => {
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    std::iter::once(header)
                        .chain(rows.iter().map(|r| r.as_slice()))
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
                let cells: Vec<String> = r.iter().zip(&widths).map(|(f, w)| format!("{f:<w$}")).collect();
                s += cells.join("  ").trim_end();
                s.push('\n');
            }
        }
    }
    s
}

/// `runner diff A B`: the config keys that differ, side by side.
pub fn diff(a: &RunInfo, b: &RunInfo) -> String {
    let keys: BTreeSet<&String> = a.params.keys().chain(b.params.keys()).collect();
    let header = vec!["key".to_string(), a.run_id.clone(), b.run_id.clone()];
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .filter(|k| a.params.get(*k) != b.params.get(*k))
        .map(|k| {
            vec![
                k.clone(),
                a.params.get(k).cloned().unwrap_or_else(|| "(absent)".into()),
                b.params.get(k).cloned().unwrap_or_else(|| "(absent)".into()),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "the two runs have the same config\n".into();
    }
    render(&header, &rows, Format::Table)
}

/// The task's headline test metric among the runs' final metrics: detection's mAP (COCO's
/// mAP@[.5:.95] where the runs have it, else VOC's), segmentation's mean IoU, localization's
/// error, classification's error rate (then the loss, the accuracy).
pub const HEADLINE: [&str; 7] =
    ["test.map", "test.map50", "test.miou", "test.localization_error", "test.error_rate", "test.loss", "test.accuracy"];

pub fn headline(runs: &[RunInfo]) -> Option<&'static str> {
    HEADLINE.into_iter().find(|m| runs.iter().any(|r| r.finals.contains_key(*m)))
}

/// `runner compare --plot`: the per-epoch `split.metric` of each run, overlaid.
pub fn compare_curves(runs: &[RunInfo], metric: &str, png: &Path) -> Result<()> {
    let Some((split, name)) = metric.split_once('.') else {
        anyhow::bail!("--metric {metric}: expected split.metric, e.g. test.accuracy");
    };
    let mut series = Vec::new();
    for r in runs {
        let log = RunLog::open(&r.dir, None)?;
        let pts: Vec<(f64, f64)> = log
            .metrics()
            .iter()
            .filter(|m| m.split == split && m.metric == name && m.class.is_none())
            .map(|m| (m.epoch as f64 + 1.0, m.value))
            .collect();
        if !pts.is_empty() {
            series.push((r.run_id.clone(), pts));
        }
    }
    if series.is_empty() {
        anyhow::bail!("no run logged {metric}");
    }
    plots::line_chart(png, metric, "epoch", metric, &series)
}
