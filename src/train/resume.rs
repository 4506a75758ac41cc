//! `runner resume RUN_DIR`: a stopped run continues from its last checkpoint in its own
//! folder, after checking everything before the folder is touched.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::ema::Ema;
use super::{config_hash, finish, load_data, Hooks, Outcome, Session, State};
use crate::checkpoint::{self, Sidecar};
use crate::config::LoadOptions;
use crate::model::weights;
use crate::ops::kernels;
use crate::ops::kernels::Level;
use crate::optim::Optimizer;
use crate::runlog::{files, RunLock, RunLog, Status};
use crate::{config, ops, plan};

/// Continues the run in `dir` from its last checkpoint, in the same folder: its tables keep
/// the finished epochs (rows of a later, unfinished epoch are dropped) and grow from there.
/// Everything is checked before the folder is touched.
pub fn resume(dir: &Path, stop: Arc<AtomicBool>) -> Result<Outcome> {
    resume_with(dir, stop, Hooks::default())
}

/// [`resume`] with `hooks` (`started` is not called: the folder exists).
pub fn resume_with(dir: &Path, stop: Arc<AtomicBool>, hooks: Hooks) -> Result<Outcome> {
    let config_path = dir.join(files::CONFIG);
    if !dir.is_dir() || !config_path.is_file() || !dir.join(files::RUN).is_file() {
        bail!(
            "{}: not a run folder (it needs config.toml and run.parquet, as `runner EXP` writes them)",
            dir.display()
        );
    }
    let mut loaded = config::load(&config_path, &LoadOptions { sets: Vec::new(), env: false })?;
    loaded.keep_resize_of_older_run();
    let latest = checkpoint::latest(&dir.join(files::CHECKPOINTS))?;
    if latest.is_some() {
        // The weights come from the checkpoint: the groups' own files are not needed.
        loaded.config.model.drop_inits();
    }
    let plan = plan::plan(&loaded)?;
    let probe = RunLog::open(dir, None)?;
    let side = latest.as_ref().map(|(_, side)| side);
    check_resumable(dir, &probe, side, &config_hash(&loaded.resolved_toml()))?;
    let dataset = load_data(&plan)?;
    let device = plan.open_device()?;
    let mut model = plan.model(&device)?;
    let mut optimizer = Optimizer::new(&plan.train.optimizer);
    let state = match &latest {
        Some((path, side)) => {
            checkpoint::restore(path, side, &model, &mut optimizer)?;
            tracing::info!("resuming after epoch {} (step {}) from {}", side.epoch + 1, side.step, path.display());
            warn_if_another_machine(side, &device);
            State {
                next_epoch: side.epoch + 1,
                step: side.step,
                best: side.best,
                early_best: side.early_best,
                bad_epochs: side.bad_epochs,
            }
        }
        None => {
            weights::load_group_inits(&model, &plan.inits)?;
            tracing::info!("no checkpoint in {}: starting again from epoch 1", dir.display());
            State::default()
        }
    };
    if state.next_epoch >= plan.train.epochs {
        // The process stopped after the last checkpoint but before it recorded the end (the
        // completed case failed the checks): nothing to train, the run is marked completed.
        tracing::info!(
            "{}: all {} epochs were finished before the process stopped; marking the run completed",
            dir.display(),
            plan.train.epochs
        );
    }
    let log = reopen(dir, &probe, &state, plan.tensorboard)?;
    let mut ema = plan.train.ema.as_ref().map(|c| Ema::new(c, &model)).transpose()?;
    if let (Some(ema), Some((path, side))) = (&mut ema, &latest) {
        let Some(updates) = side.ema_updates else {
            bail!("{}: written without [train] ema, which the config now asks for", path.display());
        };
        ema.restore(&checkpoint::ema_tensors(path, &device)?, updates)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let session = Session {
        plan: &plan,
        dataset: &dataset,
        model: &mut model,
        optimizer: &mut optimizer,
        ema,
        device,
        log,
        stop: &stop,
        after_epoch: hooks.after_epoch,
    };
    finish(session, state)
}

/// What must hold before the run's folder is touched: the run did not complete, no live
/// process holds it, the tables hold no more than the checkpoint (or, without one, than the
/// first epoch), and the checkpoint was written by the run's config. A config.toml edited
/// since the start is a warning.
fn check_resumable(dir: &Path, probe: &RunLog, side: Option<&Sidecar>, hash: &str) -> Result<()> {
    if probe.status() == Status::Completed {
        bail!("{}: the run completed; nothing to resume", dir.display());
    }
    if probe.status() == Status::Stopped {
        bail!("{}: the run was stopped by its sweep's early stopping; nothing to resume", dir.display());
    }
    if RunLock::is_held(dir) {
        // Fails naming the process that holds it (without writing to the folder).
        RunLock::acquire(dir)?;
    }
    let finished = probe.metrics().iter().map(|r| r.epoch).max();
    if side.is_none() {
        // Only the first epoch's rows and no checkpoint: the process stopped between the
        // two writes of epoch 1, which is trained again (the same seed gives the same rows).
        if let Some(e) = finished.filter(|&e| e > 0) {
            bail!(
                "{}: no checkpoint in checkpoints/, but the tables hold {} finished epoch(s); resuming would \
                 train again from epoch 1 and replace them",
                dir.display(),
                e + 1
            );
        }
    }
    if let Some(side) = side {
        if side.config_hash != probe.config_hash() {
            bail!(
                "{}: the checkpoint was written by another config (hash {}, the run's is {})",
                dir.display(),
                side.config_hash,
                probe.config_hash()
            );
        }
    }
    if hash != probe.config_hash() {
        tracing::warn!("{}: config.toml differs from the one the run started with", dir.display());
    }
    Ok(())
}

/// The run's log, opened for writing with the rows of epochs after the checkpoint's dropped,
/// locked and marked running.
fn reopen(dir: &Path, probe: &RunLog, state: &State, events: bool) -> Result<RunLog> {
    let keep = state.next_epoch as i32 - 1;
    let mut log = RunLog::open(dir, Some(keep))?.with_events(events);
    if keep >= 0 && !log.metrics().iter().any(|r| r.epoch == keep) {
        bail!(
            "{}: holds no rows of epoch {} though the checkpoint comes after it (the file was deleted or \
             replaced?): resuming would finish the run without the earlier epochs' metrics; restore it, \
             or start a new run",
            dir.join(files::METRICS).display(),
            keep + 1
        );
    }
    log.lock()?;
    if probe.status() == Status::Running {
        tracing::info!("{}: its status says running, but no process holds it: resuming a stale run", dir.display());
    }
    log.set_status(Status::Running);
    log.flush()?;
    // The event file again from the rows kept: none of a later epoch stays twice.
    log.sync_events();
    Ok(log)
}

/// A warning when this process's thread count or CPU kernel level differs from those the
/// checkpoint was written with: the resumed run then differs slightly from one never
/// stopped, and the warning says how to get them back.
fn warn_if_another_machine(side: &Sidecar, device: &candle_core::Device) {
    if side.threads != 0 && side.threads != ops::threads() {
        tracing::warn!(
            "the run used {} threads, this process {}: results will differ slightly from an uninterrupted run \
             (set RAYON_NUM_THREADS={} for bitwise-equal results)",
            side.threads,
            ops::threads(),
            side.threads
        );
    }
    let level = kernels::level_on(device);
    if let Some(level) = level.filter(|l| !side.kernels.is_empty() && side.kernels != l.as_str()) {
        let how = if level == Level::Avx512 && side.kernels == "avx2" {
            "set RUNNER_KERNELS=portable for the kernels it used".to_string()
        } else {
            format!("resume on a CPU with {} (without RUNNER_KERNELS=portable) for the kernels it used", side.kernels)
        };
        tracing::warn!(
            "the run used the {} CPU kernels, this process {level}: results will differ slightly from an \
             uninterrupted run ({how})",
            side.kernels
        );
    }
}
