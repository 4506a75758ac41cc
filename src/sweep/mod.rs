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
use crate::config::{EarlyStop, LoadOptions};
use crate::runlog::Status;
use crate::{compare, config, device, plan, runlog, signals, train};

mod early_stop;
mod points;
pub mod slurm;
mod status;
use points::{early_stop, sweep_points};
pub use points::{parse_list, points};
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
            let in_file = from_file.is_some();
            let opts = from_file.unwrap_or_default().merged(req.slurm.clone());
            opts.check().with_context(|| match (&req.file, in_file) {
                (Some(f), true) => format!("Slurm settings ({} [launcher.slurm] and the command line)", f.display()),
                _ => "Slurm settings".to_string(),
            })?;
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
