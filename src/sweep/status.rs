//! A sweep folder after the command that started it: `runner sweep status DIR` (one line
//! per point), `resume DIR` (the points not completed, each from its checkpoint), `cancel
//! DIR` (Slurm's jobs), and `point DIR I`, what each Slurm array task runs.
//!
//! Where a point stands is read from what it leaves, never from a process that may be gone:
//! its run folder (`run.parquet`'s status and the run's lock), `point_NNN.run` (the run
//! folder, written by `sweep point` as the run starts), its log, and for a Slurm sweep
//! `squeue` (pending or running array tasks).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::early_stop::{self, Decision};
use super::slurm::{self, Queued, SlurmOptions};
use super::{run_points, write_state, Point, PointStatus, Request, SlurmState, State};
use crate::config::{EarlyStop, LoadOptions, Mode};
use crate::runlog::{self, files, RunLock, RunLog, Status};
use crate::train::{self, AfterEpoch, Hooks, Outcome};
use crate::{config, plan};

/// The state file of the sweep folder `dir` (`sweeps/<id>`), or `dir` itself when it is the
/// state file (`sweeps/<id>.toml`).
fn state_path(dir: &Path) -> PathBuf {
    if dir.extension().is_some_and(|e| e == "toml") {
        dir.to_path_buf()
    } else {
        PathBuf::from(format!("{}.toml", dir.display()))
    }
}

fn folder(dir: &Path) -> PathBuf {
    let s = state_path(dir);
    PathBuf::from(s.display().to_string().trim_end_matches(".toml"))
}

fn read_state(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("{}: not a sweep folder (its state file {} cannot be read)", dir.display(), path.display())
    })?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))
}

fn marker(dir: &Path, i: usize) -> PathBuf {
    folder(dir).join(format!("point_{i:03}.run"))
}

fn log_path(dir: &Path, i: usize) -> PathBuf {
    folder(dir).join(format!("point_{i:03}.log"))
}

/// The point's run folder: the one `sweep point` recorded, else the local sweep's.
fn run_dir_of(dir: &Path, i: usize, p: &Point) -> Option<PathBuf> {
    std::fs::read_to_string(marker(dir, i))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
        .or_else(|| p.run_dir.as_ref().map(PathBuf::from))
        .filter(|d| d.join(files::RUN).is_file())
}

/// `1 point`, `4 points`.
fn points(n: usize) -> String {
    format!("{n} point{}", if n == 1 { "" } else { "s" })
}

/// One point as `status` shows it.
#[derive(Debug, Clone)]
pub struct PointView {
    pub index: usize,
    pub status: PointStatus,
    pub run_dir: Option<PathBuf>,
    pub log: PathBuf,
    pub overrides: Vec<String>,
}

fn views(dir: &Path, state: &State) -> Vec<PointView> {
    let queued = state.slurm.as_ref().map(|s| slurm::queued(&s.jobs)).unwrap_or_default();
    let submitted = state.slurm.as_ref().is_some_and(|s| !s.jobs.is_empty());
    state
        .point
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let run_dir = run_dir_of(dir, i, p);
            let run = run_dir.as_ref().and_then(|d| RunLog::open(d, None).ok().map(|l| l.status()));
            let held = run_dir.as_ref().is_some_and(|d| RunLock::is_held(d));
            let log = log_path(dir, i);
            let status = match (run, queued.get(&i)) {
                (Some(Status::Completed), _) => PointStatus::Completed,
                (Some(Status::Stopped), _) => PointStatus::Stopped,
                (_, Some(Queued::Pending)) => PointStatus::Pending,
                (_, Some(Queued::Running)) => PointStatus::Running,
                (Some(Status::Running), _) if held => PointStatus::Running,
                (Some(Status::Failed), _) => PointStatus::Failed(None),
                // Interrupted, or stopped without a word (killed): resumable.
                (Some(_), _) => PointStatus::Interrupted,
                (None, _) if state.slurm.is_none() => match &p.status {
                    PointStatus::Completed | PointStatus::Interrupted => PointStatus::Pending,
                    other => other.clone(),
                },
                // Handed to Slurm, not queued and no run: it failed as it started (its log
                // says why), or was cancelled before it started.
                (None, _) if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) => PointStatus::Failed(None),
                (None, _) if submitted => PointStatus::Cancelled,
                (None, _) => PointStatus::Pending,
            };
            PointView { index: i, status, run_dir, log, overrides: p.overrides.clone() }
        })
        .collect()
}

/// `runner sweep status DIR`: one line per point; returns the points.
pub fn status(dir: &Path) -> Result<Vec<PointView>> {
    let state = read_state(dir)?;
    let views = views(dir, &state);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for v in &views {
        *counts.entry(v.status.word().to_string()).or_default() += 1;
    }
    let launcher = match &state.slurm {
        Some(s) => format!("Slurm job{} {}", if s.jobs.len() == 1 { "" } else { "s" }, s.jobs.join(", ")),
        None => "local".into(),
    };
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!("sweep {} ({launcher}): {} points, {}", state.sweep_id, views.len(), summary.join(", "));
    let cwd = std::env::current_dir().unwrap_or_default();
    let shown = |p: &Path| p.strip_prefix(&cwd).unwrap_or(p).display().to_string();
    let stops = early_stop::stops(&folder(dir));
    for v in &views {
        let place = match (&v.status, &v.run_dir) {
            (PointStatus::Failed(_), _) => format!("log {}", shown(&v.log)),
            (PointStatus::Stopped, Some(d)) => match stops.get(&v.index) {
                Some(e) => format!("{} (after epoch {e})", shown(d)),
                None => shown(d),
            },
            (_, Some(d)) => shown(d),
            (_, None) => "-".into(),
        };
        println!("{:>5}  {:<11}  {place}  {}", v.index, v.status.word(), v.overrides.join(" "));
    }
    Ok(views)
}

/// `runner sweep cancel DIR`: `scancel` of the sweep's jobs.
pub fn cancel(dir: &Path) -> Result<()> {
    let state = read_state(dir)?;
    let Some(s) = &state.slurm else {
        bail!("{}: a local sweep; stop it with Ctrl-C (or SIGTERM) where it runs", dir.display());
    };
    slurm::cancel(&s.jobs)?;
    println!(
        "cancelled Slurm job{} {}; `runner sweep resume {}` runs the points not completed",
        if s.jobs.len() == 1 { "" } else { "s" },
        s.jobs.join(", "),
        dir.display()
    );
    Ok(())
}

/// `runner sweep resume DIR`: the points neither completed nor pending nor running, each
/// from its checkpoint: submitted again to Slurm (a Slurm sweep), or run here `jobs` at a
/// time, or one per device of `devices` (a local one). Returns how many points are not completed at the end (0 after a
/// submission).
pub fn resume(dir: &Path, jobs: usize, devices: Vec<String>, stop: Arc<AtomicBool>) -> Result<usize> {
    let mut state = read_state(dir)?;
    let views = views(dir, &state);
    // Slurm's pending points will run; a local sweep's pending points are what is left.
    let on_slurm = state.slurm.is_some();
    let busy = |s: &PointStatus| *s == PointStatus::Running || (on_slurm && *s == PointStatus::Pending);
    let todo: Vec<usize> = views.iter().filter(|v| !v.status.is_done() && !busy(&v.status)).map(|v| v.index).collect();
    let waiting = views.iter().filter(|v| busy(&v.status)).count();
    if todo.is_empty() {
        println!("sweep {}: nothing to resume ({waiting} pending or running)", state.sweep_id);
        return Ok(0);
    }
    if let Some(slurm_state) = &mut state.slurm {
        let script = folder(dir).join("sweep.sbatch");
        let array = slurm::array_spec(&todo, slurm_state.options.max_parallel);
        let job = slurm::submit(&script, &array)?;
        slurm_state.jobs.push(job.clone());
        write_state(&state_path(dir), &state)?;
        println!("sweep {}: {} submitted again as Slurm job {job} (array {array})", state.sweep_id, points(todo.len()));
        return Ok(0);
    }
    if waiting > 0 {
        bail!("{}: {waiting} point(s) still running; resume when the sweep has stopped", dir.display());
    }
    for v in &views {
        let p = &mut state.point[v.index];
        p.status = if v.status.is_done() { v.status.clone() } else { PointStatus::Interrupted };
        p.run_dir = v.run_dir.as_ref().map(|d| d.display().to_string());
        if p.run_dir.is_none() && p.status == PointStatus::Interrupted {
            p.status = PointStatus::Pending;
        }
    }
    let req = Request {
        experiment: PathBuf::from(&state.experiment),
        grids: Vec::new(),
        zips: Vec::new(),
        jobs,
        sets: state.sets.clone(),
        file: None,
        launcher: None,
        slurm: SlurmOptions::default(),
        random: None,
        devices,
    };
    let req = super::with_devices(&req)?;
    let id = state.sweep_id.clone();
    let state = run_points(&req, &id, &folder(dir), &state_path(dir), state, &stop)?;
    super::print_table(&state)?;
    Ok(state.point.iter().filter(|p| !p.status.is_done()).count())
}

/// `--launcher slurm`: the sweep's state and batch script written into its folder `dir`,
/// then one job array of the points not completed (all, for a new sweep). Returns at once.
pub(super) fn submit(
    req: &Request,
    id: &str,
    dir: &Path,
    all: &[Vec<String>],
    opts: SlurmOptions,
    early_stop: Option<EarlyStop>,
) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let dir = cwd.join(dir);
    let path = state_path(&dir);
    let mut state = State {
        sweep_id: id.to_string(),
        experiment: std::fs::canonicalize(&req.experiment)
            .unwrap_or_else(|_| cwd.join(&req.experiment))
            .display()
            .to_string(),
        sets: req.sets.clone(),
        point: all
            .iter()
            .map(|p| Point { overrides: p.clone(), status: PointStatus::Pending, run_dir: None })
            .collect(),
        slurm: Some(SlurmState { options: opts.clone(), jobs: Vec::new() }),
        early_stop,
    };
    let mut todo: Vec<usize> = (0..all.len()).collect();
    if let Ok(old) = read_state(&dir) {
        // The same sweep again: what `sweep resume` does.
        if old.slurm.is_some() {
            let views = views(&dir, &old);
            if let Some(v) = views.iter().find(|v| matches!(v.status, PointStatus::Pending | PointStatus::Running)) {
                bail!(
                    "sweep {id} is already submitted (point {} is {}): `runner sweep status {}`",
                    v.index,
                    v.status.word(),
                    dir.display()
                );
            }
            todo = views.iter().filter(|v| !v.status.is_done()).map(|v| v.index).collect();
            state.slurm =
                Some(SlurmState { options: opts.clone(), jobs: old.slurm.map(|s| s.jobs).unwrap_or_default() });
        } else {
            todo = (0..all.len())
                .filter(|&i| {
                    let p = old.point.get(i);
                    !p.is_some_and(|p| run_dir_of(&dir, i, p).is_some() && p.status.is_done())
                })
                .collect();
        }
    }
    if todo.is_empty() {
        println!("sweep {id}: every point is completed; nothing to submit");
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find runner's own binary")?;
    let script = dir.join("sweep.sbatch");
    std::fs::write(&script, slurm::batch_script(id, &dir, &cwd, &exe, &opts))
        .with_context(|| format!("cannot write {}", script.display()))?;
    write_state(&path, &state)?;
    let array = slurm::array_spec(&todo, opts.max_parallel);
    let job = slurm::submit(&script, &array)?;
    if let Some(s) = &mut state.slurm {
        s.jobs.push(job.clone());
    }
    write_state(&path, &state)?;
    let shown = dir.strip_prefix(&cwd).unwrap_or(&dir).display().to_string();
    println!("sweep {id}: {} submitted to Slurm as job {job} (array {array})", points(todo.len()));
    println!("batch script: {shown}/sweep.sbatch");
    println!("status: runner sweep status {shown}");
    Ok(())
}

/// `runner sweep point DIR I`: point `I` of the sweep, in this process. A run folder the
/// point already has is resumed from its checkpoint (nothing to do if it completed);
/// otherwise a new run starts and its folder is recorded at once in `point_III.run`.
pub fn point(dir: &Path, i: usize, stop: Arc<AtomicBool>) -> Result<Option<Outcome>> {
    let state = read_state(dir)?;
    let Some(p) = state.point.get(i) else {
        bail!("{}: point {i} is not in this sweep of {} points", dir.display(), state.point.len());
    };
    let sweep_dir = folder(dir);
    let after_epoch = state.early_stop.clone().map(|rule| {
        let sweep_dir = sweep_dir.clone();
        Box::new(move |epoch: usize, values: &std::collections::BTreeMap<String, f64>| -> Result<bool> {
            let Some(&value) = values.get(&rule.metric) else {
                bail!("[sweep.early_stop] metric `{}` is not among the epoch's values", rule.metric);
            };
            let mode = rule.mode.unwrap_or(Mode::Max);
            match early_stop::report(&sweep_dir, &rule, mode, i, epoch + 1, value)? {
                Decision::Continue => Ok(false),
                Decision::Stop(why) => {
                    tracing::info!("point {i}: stopped by the sweep's early stopping: {why}");
                    Ok(true)
                }
            }
        }) as AfterEpoch
    });
    if let Some(run_dir) = run_dir_of(dir, i, p) {
        let status = RunLog::open(&run_dir, None)?.status();
        if matches!(status, Status::Completed | Status::Stopped) {
            println!("point {i}: {} in {}", status.as_str(), run_dir.display());
            return Ok(None);
        }
        tracing::info!("point {i}: resuming {}", run_dir.display());
        return train::resume_with(&run_dir, stop, Hooks { started: None, after_epoch }).map(Some);
    }
    let mut sets = state.sets.clone();
    sets.extend(p.overrides.iter().cloned());
    let loaded = config::load(Path::new(&state.experiment), &LoadOptions { sets, env: true })?;
    let plan = plan::plan(&loaded)?;
    let marker = marker(dir, i);
    let started = Box::new(move |run_dir: &Path| -> Result<()> {
        let abs = std::env::current_dir().map(|c| c.join(run_dir)).unwrap_or_else(|_| run_dir.to_path_buf());
        runlog::atomic_write(&marker, |tmp| Ok(std::fs::write(tmp, abs.display().to_string())?))
    });
    let hooks = Hooks { started: Some(started), after_epoch };
    let outcome = train::run_with(&loaded, &plan, stop, Some(&state.sweep_id), hooks)?;
    Ok(Some(outcome))
}
