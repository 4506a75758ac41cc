//! `runner sweep EXP --grid KEY=V1,V2 ... [--zip KEY=V1,V2 ...] [--jobs N]`: an experiment
//! over a grid of overrides. The grids (and the experiment's `[sweep]` table) give every
//! combination; `--zip` lists of one length are taken together and crossed with the grid.
//!
//! Each point is an ordinary run (`runner EXP --set ...` in its own process) whose
//! `config.toml` records its overrides, with the sweep's id in `run.parquet` (`sweep_id`).
//! Every point is planned before the first one starts, so a value that does not fit its key
//! stops the sweep before any run. A failing point is marked and the others go on. The
//! sweep's state is kept in `<output_dir>/<experiment>/sweeps/<sweep-id>.toml`; the same
//! command again skips the points already completed. The compare table ends the sweep.
//!
//! `--launcher slurm` hands the same points to Slurm as one job array and returns
//! (`slurm.rs`); `runner sweep status|resume|cancel DIR` work on either launcher's sweep
//! folder (`status.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::compare::{Format, Options};
use crate::config::{Distribution, EarlyStop, LoadOptions, Loaded, Mode, SweepConfig};
use crate::rng::Rng;
use crate::runlog::Status;
use crate::{compare, config, device, plan, runlog, signals, train};

mod early_stop;
pub mod slurm;
mod status;
pub use slurm::SlurmOptions;
pub use status::{cancel, point, resume, status, PointView};

#[derive(Clone)]
pub struct Request {
    pub experiment: PathBuf,
    pub grids: Vec<String>,
    pub zips: Vec<String>,
    pub jobs: usize,
    pub sets: Vec<String>,
    /// `--file SWEEP.toml`: `[sweep]` grid and zip, `[launcher.slurm]`.
    pub file: Option<PathBuf>,
    /// `--launcher`: `local` (the default) or `slurm`.
    pub launcher: Option<String>,
    /// The command line's Slurm settings (over the file's).
    pub slurm: SlurmOptions,
    /// `--random N`: N points drawn from the `[sweep.space]` distributions.
    pub random: Option<usize>,
    /// `--devices cuda:0,cuda:1`: one local point per device at a time.
    pub devices: Vec<String>,
}

/// Where the points run.
enum Launcher {
    Local,
    Slurm(SlurmOptions),
}

/// A sweep file: `[sweep]` as in an experiment, and the launcher's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    #[serde(default)]
    sweep: Option<config::SweepConfig>,
    #[serde(default)]
    launcher: Option<LauncherTables>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LauncherTables {
    #[serde(default)]
    slurm: Option<SlurmOptions>,
}

fn read_sweep_file(path: Option<&Path>) -> Result<SweepFile> {
    let Some(path) = path else { return Ok(SweepFile::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read sweep file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))
}

/// `--launcher` and its settings; Slurm settings on the command line without `--launcher
/// slurm` are refused (a sweep file's `[launcher.slurm]` waits for it).
fn launcher(req: &Request, file: &SweepFile) -> Result<Launcher> {
    let from_file = file.launcher.as_ref().and_then(|l| l.slurm.clone());
    match req.launcher.as_deref().unwrap_or("local") {
        "local" => {
            if req.slurm != SlurmOptions::default() {
                bail!("Slurm options (--partition, --time, ...) need --launcher slurm");
            }
            Ok(Launcher::Local)
        }
        "slurm" => {
            if req.jobs != 1 {
                bail!("--jobs is the local launcher's; with Slurm, --max-parallel K runs K points at once");
            }
            let opts = from_file.unwrap_or_default().merged(req.slurm.clone());
            opts.check()?;
            Ok(Launcher::Slurm(opts))
        }
        other => bail!("--launcher {other}: expected local or slurm"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// `key=value` overrides, as for `--set`.
    pub overrides: Vec<String>,
    pub status: PointStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}

/// Where a point stands; in the state file `pending`, `completed`, `interrupted`, `failed`
/// or `failed: <why>` (the point could not be started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointStatus {
    Pending,
    /// Running now (its run folder locked, or Slurm says so).
    Running,
    Completed,
    Interrupted,
    /// Handed to Slurm and cancelled before it started.
    Cancelled,
    /// Ended early by `[sweep.early_stop]`.
    Stopped,
    Failed(Option<String>),
}

impl PointStatus {
    /// Completed, or stopped early by the sweep: nothing left to run.
    pub fn is_done(&self) -> bool {
        matches!(self, PointStatus::Completed | PointStatus::Stopped)
    }

    /// The status without the reason a failure may carry.
    pub fn word(&self) -> &'static str {
        match self {
            PointStatus::Pending => "pending",
            PointStatus::Running => Status::Running.as_str(),
            PointStatus::Completed => Status::Completed.as_str(),
            PointStatus::Interrupted => Status::Interrupted.as_str(),
            PointStatus::Cancelled => "cancelled",
            PointStatus::Stopped => Status::Stopped.as_str(),
            PointStatus::Failed(_) => Status::Failed.as_str(),
        }
    }
}

impl std::fmt::Display for PointStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            PointStatus::Failed(Some(why)) => write!(f, "{}: {why}", self.word()),
            other => f.write_str(other.word()),
        }
    }
}

impl std::str::FromStr for PointStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "pending" => PointStatus::Pending,
            "cancelled" => PointStatus::Cancelled,
            s if s == Status::Stopped.as_str() => PointStatus::Stopped,
            s if s == Status::Running.as_str() => PointStatus::Running,
            s if s == Status::Completed.as_str() => PointStatus::Completed,
            s if s == Status::Interrupted.as_str() => PointStatus::Interrupted,
            s if s == Status::Failed.as_str() => PointStatus::Failed(None),
            s => match s.strip_prefix("failed: ") {
                Some(why) => PointStatus::Failed(Some(why.to_string())),
                None => return Err(format!("unknown point status {s:?}")),
            },
        })
    }
}

impl Serialize for PointStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PointStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The sweep's file, `<output_dir>/<experiment>/sweeps/<sweep-id>.toml`, beside its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    sweep_id: String,
    experiment: String,
    /// `--set` overrides of every point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sets: Vec<String>,
    point: Vec<Point>,
    /// `[sweep.early_stop]`, with the direction of its metric decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    early_stop: Option<EarlyStop>,
    /// A sweep handed to Slurm: its settings and the jobs submitted, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slurm: Option<SlurmState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlurmState {
    options: SlurmOptions,
    jobs: Vec<String>,
}

/// `seed` is short for `experiment.seed`.
fn full_key(k: &str) -> String {
    if k == "seed" {
        "experiment.seed".into()
    } else {
        k.to_string()
    }
}

/// `KEY=V1,V2` with commas inside brackets or quotes kept: `k=[1,2],[3,4]` is two values.
pub fn parse_list(raw: &str, flag: &str) -> Result<(String, Vec<String>)> {
    let Some((k, v)) = raw.split_once('=') else { bail!("{flag} {raw}: expected KEY=V1,V2,...") };
    if k.is_empty() || v.is_empty() {
        bail!("{flag} {raw}: expected KEY=V1,V2,...");
    }
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for ch in v.chars() {
        match ch {
            '"' | '\'' if quote == Some(ch) => quote = None,
            '"' | '\'' if quote.is_none() => quote = Some(ch),
            '[' | '{' if quote.is_none() => depth += 1,
            ']' | '}' if quote.is_none() => depth -= 1,
            ',' if quote.is_none() && depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur.trim().to_string());
    if out.iter().any(|s| s.is_empty()) {
        bail!("{flag} {raw}: an empty value");
    }
    Ok((full_key(k.trim()), out))
}

/// A TOML value as `--set` text.
fn value_text(v: &toml::Value) -> String {
    v.to_string()
}

/// A key swept twice (in the grid and the zip, or also set for every point), an empty list
/// or a repeated value would give duplicate or silently overridden runs: refused.
fn check_keys(grids: &[(String, Vec<String>)], zips: &[(String, Vec<String>)], sets: &[String]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in grids.iter().chain(zips) {
        if !seen.insert(k.clone()) {
            bail!("`{k}` is both in the grid and in the zip: sweep each key once");
        }
        if v.is_empty() {
            bail!("`{k}` lists no value");
        }
        let distinct: std::collections::BTreeSet<&String> = v.iter().collect();
        if distinct.len() != v.len() {
            bail!("`{k}` lists a value twice ({}): the points would repeat", v.join(", "));
        }
    }
    for s in sets {
        let key = s.split_once('=').map(|(k, _)| full_key(k.trim())).unwrap_or_default();
        if seen.contains(&key) {
            bail!("--set {s}: `{key}` is also swept; the sweep's values would replace it");
        }
    }
    Ok(())
}

/// Every point's overrides: the grid's combinations (first key slowest), each crossed with
/// the zipped lists.
pub fn points(grids: &[(String, Vec<String>)], zips: &[(String, Vec<String>)]) -> Result<Vec<Vec<String>>> {
    let zip_len = zips.first().map(|(_, v)| v.len());
    for (k, v) in zips {
        if Some(v.len()) != zip_len {
            bail!("zip `{k}`: {} values, but zip `{}` has {}", v.len(), zips[0].0, zip_len.unwrap_or(0));
        }
    }
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for (k, values) in grids {
        out = out
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push(format!("{k}={v}"));
                    q
                })
            })
            .collect();
    }
    if let Some(n) = zip_len {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..n).map(move |i| {
                    let mut q = p.clone();
                    q.extend(zips.iter().map(|(k, v)| format!("{k}={}", v[i])));
                    q
                })
            })
            .collect();
    }
    Ok(out)
}

/// Runs the sweep; returns how many points failed.
pub fn run(req: &Request, stop: Arc<AtomicBool>) -> Result<usize> {
    if req.jobs == 0 {
        bail!("--jobs 0: at least one run at a time");
    }
    let req = &with_devices(req)?;
    let file = read_sweep_file(req.file.as_deref())?;
    let launcher = launcher(req, &file)?;
    let base = config::load(&req.experiment, &LoadOptions { sets: req.sets.clone(), env: true })?;
    let all = sweep_points(req, &base, &file)?;
    let early_stop = early_stop(req, &base, &file)?;
    plan_every_point(req, &all)?;
    let experiment = base.config.experiment.name.clone();
    // The id covers the resolved experiment too: an edited file is another sweep.
    let mut id_text = base.resolved_toml();
    if let Some(rule) = &early_stop {
        id_text += &format!("\n{rule:?}");
    }
    let id = sweep_id(&experiment, &id_text, &req.sets, &all);
    let dir = PathBuf::from(&base.config.experiment.output_dir).join(&experiment).join("sweeps");
    std::fs::create_dir_all(dir.join(&id)).with_context(|| format!("cannot create {}", dir.display()))?;
    let state_path = dir.join(format!("{id}.toml"));
    if let Launcher::Slurm(opts) = launcher {
        status::submit(req, &id, &dir.join(&id), &all, opts, early_stop)?;
        return Ok(0);
    }
    let state = start_state(req, &id, &all, &state_path, early_stop)?;
    let state = run_points(req, &id, &dir.join(&id), &state_path, state, &stop)?;
    let failed = state.point.iter().filter(|p| !p.status.is_done()).count();
    print_table(&state)?;
    let stopped = state.point.iter().filter(|p| p.status == PointStatus::Stopped).count();
    let stopped = if stopped > 0 { format!(", {stopped} stopped early") } else { String::new() };
    println!(
        "sweep {id}: {} completed{stopped}, {failed} not; state in {}",
        state.point.iter().filter(|p| p.status == PointStatus::Completed).count(),
        state_path.display()
    );
    Ok(failed)
}

/// Every point's overrides: the grids (the experiment's `[sweep]` table, then `--grid`,
/// which replaces a key of the table) crossed, beside the zips.
fn sweep_points(req: &Request, base: &Loaded, sweep_file: &SweepFile) -> Result<Vec<Vec<String>>> {
    let file = sweep_table(base, sweep_file);
    let mut grids: Vec<(String, Vec<String>)> =
        file.grid.iter().map(|(k, v)| (full_key(k), v.iter().map(value_text).collect())).collect();
    for g in &req.grids {
        let (k, v) = parse_list(g, "--grid")?;
        grids.retain(|(x, _)| *x != k);
        grids.push((k, v));
    }
    let mut zips: Vec<(String, Vec<String>)> =
        file.zip.iter().map(|(k, v)| (full_key(k), v.iter().map(value_text).collect())).collect();
    for z in &req.zips {
        let (k, v) = parse_list(z, "--zip")?;
        zips.retain(|(x, _)| *x != k);
        zips.push((k, v));
    }
    let random = req.random.or(file.random);
    if grids.is_empty() && zips.is_empty() && random.is_none() {
        bail!(
            "nothing to sweep: give --grid KEY=V1,V2, or --random N with a [sweep.space] (or a [sweep] table in {})",
            req.experiment.display()
        );
    }
    check_keys(&grids, &zips, &req.sets)?;
    let mut all = points(&grids, &zips)?;
    if let Some(n) = random {
        let draws = random_points(&file, n, &grids, &zips, &req.sets)?;
        all = all.into_iter().flat_map(|p| draws.iter().map(move |d| [p.clone(), d.clone()].concat())).collect();
    }
    Ok(all)
}

/// `n` points drawn from the space's distributions, seeded by `[sweep] seed`: point by
/// point, the keys in name order. The same seed gives the same points in the same order.
fn random_points(
    file: &SweepConfig,
    n: usize,
    grids: &[(String, Vec<String>)],
    zips: &[(String, Vec<String>)],
    sets: &[String],
) -> Result<Vec<Vec<String>>> {
    if n == 0 {
        bail!("--random 0: at least one point");
    }
    if file.space.is_empty() {
        bail!("--random {n}: no [sweep.space] to draw from (e.g. \"train.optimizer.sgd.lr\" = {{ log_uniform = [1e-4, 0.1] }})");
    }
    let space: Vec<(String, &Distribution)> = file.space.iter().map(|(k, d)| (full_key(k), d)).collect();
    for (k, d) in &space {
        if let Some(why) = d.problem() {
            bail!("[sweep.space] `{k}`: {why}");
        }
        if grids.iter().chain(zips).any(|(g, _)| g == k) {
            bail!("[sweep.space] `{k}` is also in the grid or the zip: sweep each key once");
        }
        if sets.iter().any(|s| s.split_once('=').is_some_and(|(x, _)| full_key(x.trim()) == *k)) {
            bail!("[sweep.space] `{k}` is also set with --set; the drawn values would replace it");
        }
    }
    let mut rng = Rng::new(file.seed);
    Ok((0..n).map(|_| space.iter().map(|(k, d)| format!("{k}={}", d.draw(rng.next_f64()))).collect()).collect())
}

/// The experiment's `[sweep]` with the sweep file's keys over it.
fn sweep_table(base: &Loaded, sweep_file: &SweepFile) -> SweepConfig {
    let mut file = base.config.sweep.clone().unwrap_or_default();
    if let Some(from) = &sweep_file.sweep {
        file.grid.extend(from.grid.clone());
        file.zip.extend(from.zip.clone());
        file.space.extend(from.space.clone());
        file.random = from.random.or(file.random);
        if from.seed != 0 {
            file.seed = from.seed;
        }
        file.early_stop = from.early_stop.clone().or(file.early_stop);
    }
    file
}

/// `[sweep.early_stop]`, checked against the points' plan: its metric is one the runs log
/// every epoch, and its direction is decided (`mode`, else the metric's own).
fn early_stop(req: &Request, base: &Loaded, sweep_file: &SweepFile) -> Result<Option<EarlyStop>> {
    let Some(mut rule) = sweep_table(base, sweep_file).early_stop else { return Ok(None) };
    let plan = plan::plan(base)?;
    let logged: Vec<String> = plan
        .metrics
        .test()
        .iter()
        .filter(|m| m.is_scalar())
        .map(|m| format!("test.{}", m.as_str()))
        .chain(plan.metrics.train().iter().filter(|m| m.is_scalar()).map(|m| format!("train.{}", m.as_str())))
        .collect();
    if !logged.contains(&rule.metric) {
        bail!(
            "[sweep.early_stop] metric `{}`: not a metric the runs of {} log every epoch ({})",
            rule.metric,
            req.experiment.display(),
            logged.join(", ")
        );
    }
    if rule.min_epochs == 0 || rule.reduction < 2 {
        bail!(
            "[sweep.early_stop]: min_epochs >= 1 and reduction >= 2 (got {} and {})",
            rule.min_epochs,
            rule.reduction
        );
    }
    rule.mode = Some(rule.mode.unwrap_or_else(|| Mode::for_metric(&rule.metric)));
    Ok(Some(rule))
}

/// `--devices`: each a device runner knows, listed once, and one point at a time on each
/// (`--jobs` is their number). The points are planned on each device in `plan_every_point`.
fn with_devices(req: &Request) -> Result<Request> {
    let mut out = req.clone();
    if req.devices.is_empty() {
        return Ok(out);
    }
    if req.launcher.as_deref() == Some("slurm") {
        bail!("--devices is the local launcher's; with Slurm, ask for GPUs with --gpus-per-task");
    }
    if req.jobs != 1 && req.jobs != req.devices.len() {
        bail!("--jobs {} with --devices {}: one point per device at a time", req.jobs, req.devices.join(","));
    }
    for (k, d) in req.devices.iter().enumerate() {
        device::parse_device(d).map_err(|e| anyhow::anyhow!("--devices {d}: {e}"))?;
        if req.devices[..k].contains(d) && d != "cpu" {
            bail!("--devices lists {d} twice: two points at once on one GPU");
        }
    }
    out.jobs = req.devices.len();
    Ok(out)
}

/// Every point must plan before any runs: the sweep is refused with all their problems.
fn plan_every_point(req: &Request, all: &[Vec<String>]) -> Result<()> {
    let mut problems = Vec::new();
    // A point may run on any of --devices: each plans on the first point.
    for d in &req.devices {
        let mut sets = req.sets.clone();
        sets.extend(all.first().into_iter().flatten().cloned());
        sets.push(format!("experiment.device=\"{d}\""));
        if let Err(e) = config::load(&req.experiment, &LoadOptions { sets, env: true })
            .map_err(anyhow::Error::from)
            .and_then(|l| plan::plan(&l).map(|_| ()))
        {
            problems.push(format!("--devices {d}: {e:#}"));
        }
    }
    for p in all {
        let mut sets = req.sets.clone();
        sets.extend(p.iter().cloned());
        let plan = config::load(&req.experiment, &LoadOptions { sets, env: true })
            .map_err(anyhow::Error::from)
            .and_then(|l| plan::plan(&l).map(|_| ()));
        if let Err(e) = plan {
            problems.push(format!("point {}: {e:#}", p.join(" ")));
        }
    }
    if !problems.is_empty() {
        bail!("the sweep was not started:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// The sweep's state: every point pending, except those an earlier run of the same sweep
/// completed (skipped) or left interrupted (resumed from their checkpoints).
fn start_state(
    req: &Request,
    id: &str,
    all: &[Vec<String>],
    state_path: &Path,
    early_stop: Option<EarlyStop>,
) -> Result<State> {
    let mut state = State {
        sweep_id: id.to_string(),
        experiment: req.experiment.display().to_string(),
        sets: req.sets.clone(),
        slurm: None,
        early_stop,
        point: all
            .iter()
            .map(|p| Point { overrides: p.clone(), status: PointStatus::Pending, run_dir: None })
            .collect(),
    };
    if let Ok(text) = std::fs::read_to_string(state_path) {
        if let Ok(old) = toml::from_str::<State>(&text) {
            for (new, old) in state.point.iter_mut().zip(old.point) {
                let same = new.overrides == old.overrides;
                let done = matches!(old.status, PointStatus::Completed | PointStatus::Stopped);
                if same && done && completed(old.run_dir.as_deref()) {
                    *new = old;
                } else if same && old.status == PointStatus::Interrupted && old.run_dir.is_some() {
                    // Resumed from its checkpoint rather than started again.
                    *new = old;
                }
            }
        }
    }
    let done = state.point.iter().filter(|p| p.status.is_done()).count();
    tracing::info!(
        "sweep {id}: {} points{}, {} at a time",
        state.point.len(),
        if done > 0 { format!(" ({done} already completed)") } else { String::new() },
        req.jobs
    );
    write_state(state_path, &state)?;
    Ok(state)
}

/// The points not completed, `req.jobs` at a time, each in its own process (logs in
/// `logs`), the state file rewritten as each ends; stops taking points when `stop` is set.
fn run_points(
    req: &Request,
    id: &str,
    logs: &Path,
    state_path: &Path,
    state: State,
    stop: &AtomicBool,
) -> Result<State> {
    let threads = std::env::var("RAYON_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores / req.jobs).max(1).to_string()
    });
    let todo: Vec<usize> = (0..state.point.len()).filter(|&i| !state.point[i].status.is_done()).collect();
    let state = Arc::new(Mutex::new(state));
    let next = AtomicUsize::new(0);
    let (state, next, todo, threads) = (&state, &next, &todo, &threads);
    std::thread::scope(|s| {
        for worker in 0..req.jobs.min(todo.len()) {
            // With --devices, each worker runs its points on its own device.
            let device = req.devices.get(worker).map(String::as_str);
            s.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = todo.get(k) else { break };
                let (overrides, resume) = state
                    .lock()
                    .map(|s| {
                        let p = &s.point[i];
                        (p.overrides.clone(), p.run_dir.clone().filter(|_| p.status == PointStatus::Interrupted))
                    })
                    .unwrap_or_default();
                let log = logs.join(format!("point_{i:03}.log"));
                let (status, run_dir) = run_point(logs, i, threads, device, resume.as_deref(), &log, stop);
                let on = device.map(|d| format!(" on {d}")).unwrap_or_default();
                tracing::info!("sweep {id}: point {}{on} ({}): {status}", i + 1, overrides.join(" "));
                if let Ok(mut st) = state.lock() {
                    st.point[i].status = status;
                    st.point[i].run_dir = run_dir;
                    if let Err(e) = write_state(state_path, &st) {
                        tracing::warn!("{e:#}");
                    }
                }
            });
        }
    });
    let state = state.lock().map(|s| s.clone()).map_err(|_| anyhow::anyhow!("sweep state poisoned"))?;
    Ok(state)
}

/// The compare table of the sweep's runs, best first.
fn print_table(state: &State) -> Result<()> {
    let dirs: Vec<PathBuf> = state.point.iter().filter_map(|p| p.run_dir.as_ref().map(PathBuf::from)).collect();
    let mut runs = Vec::new();
    for d in &dirs {
        match compare::read_run(d) {
            Ok(r) => runs.push(r),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    let sort = compare::headline(&runs).map(str::to_string);
    let opts = Options { all_params: false, sort, filters: Vec::new(), metrics: None, format: Format::Table };
    if !runs.is_empty() {
        print!("{}", compare::table(runs, &opts)?);
    }
    Ok(())
}

/// The run finished: completed, or stopped by the sweep's early stopping.
fn completed(run_dir: Option<&str>) -> bool {
    run_dir
        .and_then(|d| compare::read_run(Path::new(d)).ok())
        .is_some_and(|r| r.status == Status::Completed.as_str() || r.status == Status::Stopped.as_str())
}

/// `<experiment>-<first 8 hex digits of the SHA-256 of the resolved experiment, shared
/// overrides and points>`:
/// the same sweep gets the same id, so running it again resumes it.
fn sweep_id(experiment: &str, resolved: &str, sets: &[String], points: &[Vec<String>]) -> String {
    let text = format!("{resolved}\n{sets:?}\n{points:?}");
    format!("{experiment}-{}", &train::config_hash(&text)[..8])
}

fn write_state(path: &Path, state: &State) -> Result<()> {
    let text = toml::to_string(state).context("cannot write the sweep state")?;
    runlog::atomic_write(path, |tmp| Ok(std::fs::write(tmp, &text)?))
}

/// One point as its own process (or `runner resume` of its interrupted run folder); its
/// output goes to `log` as it runs. A SIGTERM to the sweep is passed on to the point, which
/// ends it `interrupted` at its next batch (Ctrl-C in a terminal reaches it directly).
/// Returns its status and run folder.
fn run_point(
    sweep_dir: &Path,
    i: usize,
    threads: &str,
    device: Option<&str>,
    resume: Option<&str>,
    log: &Path,
    stop: &AtomicBool,
) -> (PointStatus, Option<String>) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return (PointStatus::Failed(Some(e.to_string())), None),
    };
    // `runner sweep point`, as a Slurm array task runs it: a new run, or the resumed one.
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("sweep").arg("point").arg(sweep_dir).arg(i.to_string());
    cmd.env("RAYON_NUM_THREADS", threads).env("CANDLE_NUM_THREADS", threads);
    if let Some(d) = device {
        // An environment override, so the run's config records the device it ran on.
        cmd.env("RUNNER__EXPERIMENT__DEVICE", d);
    }
    let file = match std::fs::File::create(log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(f) => f,
        Err(e) => return (PointStatus::Failed(Some(format!("cannot write {}: {e}", log.display()))), None),
    };
    cmd.stdout(file.0).stderr(file.1).stdin(std::process::Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (PointStatus::Failed(Some(e.to_string())), None),
    };
    let mut passed_on = false;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) => {}
            Err(e) => return (PointStatus::Failed(Some(e.to_string())), None),
        }
        // Ctrl-C in a terminal reaches the points itself (the process group); a SIGTERM
        // sent to the sweep alone is passed on, once.
        if stop.load(Ordering::SeqCst) && signals::term_seen() && !passed_on {
            passed_on = true;
            let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let run_dir = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(str::to_string)
        .or_else(|| resume.map(str::to_string));
    let stopped = || {
        run_dir
            .as_deref()
            .and_then(|d| compare::read_run(Path::new(d)).ok())
            .is_some_and(|r| r.status == Status::Stopped.as_str())
    };
    let status = match code {
        Some(0) if stopped() => PointStatus::Stopped,
        Some(0) => PointStatus::Completed,
        Some(130) | Some(143) => PointStatus::Interrupted,
        _ => PointStatus::Failed(None),
    };
    (status, run_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_points() {
        let (k, v) = parse_list("train.optimizer.sgd.lr=0.1,0.03,0.01", "--grid").unwrap();
        assert_eq!((k.as_str(), v.len()), ("train.optimizer.sgd.lr", 3));
        let (k, v) = parse_list("seed=0,1", "--grid").unwrap();
        assert_eq!((k.as_str(), v), ("experiment.seed", vec!["0".to_string(), "1".into()]));
        let (_, v) = parse_list("model.input=[1,28,28],[1, 32, 32]", "--grid").unwrap();
        assert_eq!(v, ["[1,28,28]", "[1, 32, 32]"]);
        assert!(parse_list("lr", "--grid").is_err() && parse_list("lr=0.1,", "--grid").is_err());
        let grids = vec![
            ("a".to_string(), vec!["1".to_string(), "2".into()]),
            ("b".into(), vec!["x".into(), "y".into(), "z".into()]),
        ];
        let p = points(&grids, &[]).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0], ["a=1", "b=x"]);
        assert_eq!(p[5], ["a=2", "b=z"]);
        let zips =
            vec![("c".to_string(), vec!["1".to_string(), "2".into()]), ("d".into(), vec!["p".into(), "q".into()])];
        let p = points(&grids[..1], &zips).unwrap();
        assert_eq!(
            p,
            vec![
                vec!["a=1", "c=1", "d=p"],
                vec!["a=1", "c=2", "d=q"],
                vec!["a=2", "c=1", "d=p"],
                vec!["a=2", "c=2", "d=q"]
            ]
        );
        let bad = vec![("c".to_string(), vec!["1".to_string()]), ("d".into(), vec!["p".into(), "q".into()])];
        assert!(points(&[], &bad).unwrap_err().to_string().contains("zip `d`: 2 values"));
        let g = |k: &str, v: &[&str]| (k.to_string(), v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(check_keys(&[g("a", &["1", "2"])], &[g("a", &["1", "2"])], &[])
            .unwrap_err()
            .to_string()
            .contains("both"));
        assert!(check_keys(&[g("a", &["1", "1"])], &[], &[]).unwrap_err().to_string().contains("twice"));
        assert!(check_keys(&[g("a", &[])], &[], &[]).unwrap_err().to_string().contains("no value"));
        assert!(check_keys(&[g("a", &["1"])], &[], &["a=3".into()]).unwrap_err().to_string().contains("also swept"));
    }

    #[test]
    fn random_points_are_seeded_and_in_their_ranges() {
        let file: SweepConfig = toml::from_str(
            r#"
random = 50
seed = 7
[space]
"train.optimizer.sgd.lr" = { log_uniform = [1e-4, 0.1] }
"train.optimizer.sgd.momentum" = { uniform = [0.8, 0.99] }
"data.batch_size" = { int_uniform = [16, 18] }
"model.dropout" = { choice = ["a", 0.3] }
"#,
        )
        .unwrap();
        let a = random_points(&file, 50, &[], &[], &[]).unwrap();
        assert_eq!(a, random_points(&file, 50, &[], &[], &[]).unwrap(), "the same seed, the same points");
        let other = SweepConfig { seed: 8, ..file.clone() };
        assert_ne!(a, random_points(&other, 50, &[], &[], &[]).unwrap());
        // Keys in name order; every value in its range; both ends of int_uniform and every
        // choice drawn in 50 points (each misses with probability (2/3)^50 or (1/2)^50).
        let value =
            |p: &Vec<String>, k: &str| p.iter().find_map(|s| s.strip_prefix(&format!("{k}="))).unwrap().to_string();
        assert!(a[0][0].starts_with("data.batch_size=") && a[0][3].starts_with("train.optimizer.sgd.momentum="));
        let mut sizes = std::collections::BTreeSet::new();
        let mut choices = std::collections::BTreeSet::new();
        for p in &a {
            let lr: f64 = value(p, "train.optimizer.sgd.lr").parse().unwrap();
            let m: f64 = value(p, "train.optimizer.sgd.momentum").parse().unwrap();
            assert!((1e-4..=0.1).contains(&lr) && (0.8..0.99).contains(&m), "{p:?}");
            sizes.insert(value(p, "data.batch_size"));
            choices.insert(value(p, "model.dropout"));
        }
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), ["16", "17", "18"]);
        assert_eq!(choices.into_iter().collect::<Vec<_>>(), ["\"a\"", "0.3"]);
        // log_uniform spreads over decades: about a third of 50 below 1e-3 (by hand: 1/3).
        let low = a.iter().filter(|p| value(p, "train.optimizer.sgd.lr").parse::<f64>().unwrap() < 1e-3).count();
        assert!((8..=26).contains(&low), "{low} of 50 below 1e-3");
        let bad =
            SweepConfig { space: [("x".to_string(), Distribution::LogUniform([0.0, 1.0]))].into(), ..file.clone() };
        assert!(random_points(&bad, 2, &[], &[], &[]).unwrap_err().to_string().contains("0 < low < high"));
        let g = vec![("data.batch_size".to_string(), vec!["8".to_string()])];
        assert!(random_points(&file, 2, &g, &[], &[]).unwrap_err().to_string().contains("also in the grid"));
    }

    #[test]
    fn point_statuses_keep_the_state_files_words() {
        // The words sweep state files of earlier versions hold, and back.
        for word in [
            "pending",
            "running",
            "completed",
            "interrupted",
            "cancelled",
            "stopped",
            "failed",
            "failed: cannot write log.txt: disk full",
        ] {
            let status: PointStatus = word.parse().unwrap();
            assert_eq!(status.to_string(), word);
        }
        assert_eq!("failed: x".parse::<PointStatus>().unwrap(), PointStatus::Failed(Some("x".into())));
        assert!("done".parse::<PointStatus>().is_err());
        let p = Point { overrides: vec!["seed=1".into()], status: PointStatus::Interrupted, run_dir: None };
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("status = \"interrupted\""), "{text}");
        assert_eq!(toml::from_str::<Point>(&text).unwrap().status, PointStatus::Interrupted);
    }
}
