//! The training loop, read top to bottom in `Session::epochs`. Per epoch: train on every
//! batch (forward, the task's loss, backward, an optimizer step every `accumulate` batches at
//! the plan's learning rate), evaluate on the test split, log the metrics, rewrite the run's
//! tables, write `model.safetensors` and a checkpoint.
//!
//! Ctrl-C (or SIGTERM) stops at the next batch: the epochs already finished stay in the
//! tables and checkpoints, and the run is marked `interrupted`; `runner resume RUN_DIR`
//! continues from the last finished epoch and gives the same per-epoch metrics as a run
//! that was never stopped. An error marks the run `failed`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::checkpoint::{self, Sidecar};
use crate::config::OnError;
use crate::config::{Loaded, Mode};
use crate::data::loader::{self, Batch, LoaderSpec};
use crate::device::device_name;
use crate::model::weights;
use crate::model::{Model, Pass};
use crate::ops::kernels;
use crate::optim::{add_grads, clip_grad_norm, Optimizer};
use crate::plan::Plan;
use crate::runlog::{files, MetricRow, RunLog, Status};
use crate::schedule::Position;
use crate::step::{self, Step};
use crate::task::{Stats, TrainOutputs};
use crate::{data, ops, progress};

pub mod ema;
mod eval;
mod resume;
use ema::Ema;
use eval::draw_plots;
pub use eval::{eval_run, evaluate, log_metrics, EvalOverrides};
pub use resume::{resume, resume_with};

pub struct Outcome {
    pub run_dir: PathBuf,
    pub status: Status,
    /// `test.<metric>` -> value after the last epoch.
    pub final_metrics: BTreeMap<String, f64>,
    /// Why the run failed (status `failed`); its folder and tables are kept.
    pub error: Option<anyhow::Error>,
}

/// Where training stands between epochs: what a checkpoint restores.
#[derive(Debug, Clone, Default)]
struct State {
    next_epoch: usize,
    step: i64,
    best: Option<(f64, usize)>,
    early_best: Option<f64>,
    bad_epochs: usize,
}

/// Trains and evaluates `plan`, writing a run folder (a point of the sweep `sweep_id` when
/// given). `stop` is set by Ctrl-C.
pub fn run(loaded: &Loaded, plan: &Plan, stop: Arc<AtomicBool>, sweep_id: Option<&str>) -> Result<Outcome> {
    run_with(loaded, plan, stop, sweep_id, Hooks::default())
}

/// Called with the run folder, as soon as it exists (before the first epoch).
pub type Started<'h> = Box<dyn FnOnce(&std::path::Path) -> Result<()> + 'h>;

/// Called after each epoch's tables and checkpoint, with the epoch (from 0) and its values
/// (`test.accuracy` -> value): `true` ends the run there, `stopped`.
pub type AfterEpoch<'h> = Box<dyn FnMut(usize, &BTreeMap<String, f64>) -> Result<bool> + 'h>;

/// What a caller of the loop (a sweep's point) does at its moments.
#[derive(Default)]
pub struct Hooks<'h> {
    pub started: Option<Started<'h>>,
    pub after_epoch: Option<AfterEpoch<'h>>,
}

/// [`run`] with `hooks`.
pub fn run_with(
    loaded: &Loaded,
    plan: &Plan,
    stop: Arc<AtomicBool>,
    sweep_id: Option<&str>,
    mut hooks: Hooks,
) -> Result<Outcome> {
    let dataset = load_data(plan)?;
    let device = plan.open_device()?;
    let mut model = plan.model(&device)?;
    weights::load_group_inits(&model, &plan.inits)?;
    let mut optimizer = Optimizer::new(&plan.train.optimizer);

    let resolved = loaded.resolved_toml();
    let hash = config_hash(&resolved);
    let output_dir = PathBuf::from(&loaded.config.experiment.output_dir);
    let mut log = RunLog::create(&output_dir, &plan.experiment, &hash, plan.seed, &device_name(&device))?
        .with_sweep_id(sweep_id)
        .with_events(plan.tensorboard);
    log.write_text(files::CONFIG, &config_file_text(loaded, &resolved))?;
    log.write_params(&loaded.flat_params())?;
    log.flush()?;
    log.publish()?;
    log.sync_events();
    tracing::info!("run {} in {}", log.run_id, log.dir.display());
    if let Some(started) = hooks.started.take() {
        started(&log.dir)?;
    }
    let ema = plan.train.ema.as_ref().map(|c| Ema::new(c, &model)).transpose()?;
    let session = Session {
        plan,
        dataset: &dataset,
        model: &mut model,
        optimizer: &mut optimizer,
        ema,
        device,
        log,
        stop: &stop,
        after_epoch: hooks.after_epoch,
    };
    finish(session, State::default())
}

pub(crate) fn load_data(plan: &Plan) -> Result<data::Dataset> {
    let dataset = data::load(&plan.data)?;
    check_labels(plan, &dataset)?;
    tracing::info!(
        "{}: {} train / {} test samples from {}",
        dataset.name,
        dataset.train.len,
        dataset.test.len,
        dataset.root.display()
    );
    Ok(dataset)
}

/// Classification and localization on a detection set label each image with its largest
/// object: an image without objects is an error naming it.
pub fn check_labels(plan: &Plan, dataset: &data::Dataset) -> Result<()> {
    if !plan.task.labels_each_sample() {
        return Ok(());
    }
    for (name, split) in [("train", &dataset.train), ("test", &dataset.test)] {
        let empty: Vec<usize> = (0..split.len).filter(|&i| split.labels.get(i) == Some(&data::NO_LABEL)).collect();
        if let Some(&first) = empty.first() {
            let file = split.files.get(first).map(|f| f.display().to_string()).unwrap_or_default();
            anyhow::bail!(
                "{file}: the image holds no object, and the {} task labels each image with its largest object \
                 ({} such images in the {name} split); list only images with objects",
                plan.task.name(),
                empty.len()
            );
        }
    }
    Ok(())
}

/// What the epochs work with: the plan, the data, the model and its optimizer, the device,
/// the run's tables, and the stop flag set by Ctrl-C / SIGTERM.
struct Session<'a> {
    plan: &'a Plan,
    dataset: &'a data::Dataset,
    model: &'a mut Model,
    optimizer: &'a mut Optimizer,
    /// `[train] ema`: the average of the weights that evaluation uses.
    ema: Option<Ema>,
    device: Device,
    log: RunLog,
    stop: &'a AtomicBool,
    after_epoch: Option<AfterEpoch<'a>>,
}

/// How the epochs ended.
enum Ended {
    Finished,
    Interrupted,
    /// By the caller's `after_epoch`.
    Stopped,
}

/// Runs the epochs from `state` and writes the run's final status, whatever happened.
fn finish(mut session: Session, state: State) -> Result<Outcome> {
    let result = session.epochs(state);
    let log = &mut session.log;
    let status = match &result {
        Ok(Ended::Finished) => Status::Completed,
        Ok(Ended::Interrupted) => Status::Interrupted,
        Ok(Ended::Stopped) => Status::Stopped,
        Err(_) => Status::Failed,
    };
    log.set_status(status);
    let flushed = log.flush();
    let error =
        result.with_context(|| format!("run {} failed; tables so far are in {}", log.run_id, log.dir.display())).err();
    if error.is_none() {
        flushed?;
    }
    Ok(Outcome { run_dir: log.dir.clone(), status, final_metrics: log.final_metrics.clone(), error })
}

/// The training split's loader: the plan's batches and training augmentations.
pub(crate) fn train_spec(plan: &Plan, shape: [usize; 3], device: &Device) -> LoaderSpec {
    LoaderSpec {
        batch_size: plan.data.batch_size,
        shuffle: plan.data.shuffle,
        drop_last: plan.data.drop_last,
        seed: plan.seed,
        shape,
        out_shape: plan.input,
        augment: plan.augment_train.clone(),
        prefetch: plan.data.prefetch,
        workers: loader_workers(plan.data.num_workers, device),
        skip_errors: plan.data.on_error == OnError::Skip,
    }
}

/// `data.num_workers`, where 0 (the default) means: 1 on the CPU, whose cores the model's
/// own threads use; on a GPU, one per core but one, at most 8 (on the H200 machine one
/// worker kept the GPU waiting for 35-49% of each shapes epoch). The batches are the same
/// for any number.
pub fn loader_workers(configured: usize, device: &Device) -> usize {
    match configured {
        0 if device.is_cpu() => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 8),
        n => n,
    }
}

/// Evaluation: in order, every sample, the test augmentations.
pub(crate) fn eval_spec(train: &LoaderSpec, plan: &Plan) -> LoaderSpec {
    LoaderSpec {
        batch_size: plan.data.eval_batch_size.unwrap_or(plan.data.batch_size),
        shuffle: false,
        drop_last: false,
        out_shape: plan.test_shape,
        augment: plan.augment_test.clone(),
        ..train.clone()
    }
}

/// One epoch's training: its sums, the learning rate of each optimizer step, the samples
/// skipped, its duration and the last learning rate.
struct Trained {
    stats: Stats,
    lr_rows: Vec<MetricRow>,
    skipped: usize,
    seconds: f64,
    lr: f64,
}

impl Session<'_> {
    /// The epochs from `state.next_epoch`, read top to bottom: freeze, train, evaluate, log,
    /// checkpoint. `Ok(false)` when stopped early by `stop`.
    fn epochs(&mut self, mut state: State) -> Result<Ended> {
        let plan = self.plan;
        let epochs = plan.train.epochs;
        let test_spec = eval_spec(&train_spec(plan, self.dataset.shape, &self.device), plan);
        let test_split = self.dataset.test.clone();
        for epoch in state.next_epoch..epochs {
            self.freeze(epoch, state.next_epoch);
            let Some(trained) = self.train_epoch(epoch, &mut state)? else {
                tracing::warn!("interrupted during epoch {}; keeping the {} finished epochs", epoch + 1, epoch);
                return Ok(Ended::Interrupted);
            };
            // With `[train] ema`, the average is evaluated and saved as model.safetensors; the
            // raw weights (model_raw.safetensors) go on training.
            if let Some(ema) = &mut self.ema {
                ema.swap(self.model)?;
            }
            let (test, test_skipped) = evaluate(plan, self.model, &test_split, &test_spec, &self.device)?;
            let values = self.log_epoch(epoch, state.step, &trained, &test, test_skipped)?;
            if let Some(ema) = &mut self.ema {
                ema.swap(self.model)?;
                weights::save(self.model, &self.log.dir.join(files::MODEL_RAW))?;
            }
            let early_stop = self.checkpoint(epoch, &mut state, &values)?;
            tracing::info!(
                "epoch {}/{epochs}: train {} | test {} | lr {:.3e} | {:.1} s, {:.0} img/s",
                epoch + 1,
                trained.stats.summary(),
                test.summary(),
                trained.lr,
                trained.seconds,
                trained.stats.count() as f64 / trained.seconds
            );
            // The caller hears of every epoch, the last included (a sweep's later points are
            // judged against it).
            let stopped = match self.after_epoch.as_mut() {
                Some(after) => after(epoch, &values)? && epoch + 1 < epochs,
                None => false,
            };
            if early_stop {
                let es =
                    plan.train.early_stopping.as_ref().map(|e| (e.metric.as_str(), e.patience)).unwrap_or_default();
                tracing::info!(
                    "early stopping after epoch {}: {} has not improved for {} epochs",
                    epoch + 1,
                    es.0,
                    es.1
                );
                return Ok(Ended::Finished);
            }
            if stopped {
                return Ok(Ended::Stopped);
            }
        }
        Ok(Ended::Finished)
    }

    /// The freezing schedule of `epoch`, logged when it changes (and at the first epoch).
    fn freeze(&mut self, epoch: usize, first: usize) {
        let frozen = self.plan.frozen_at(epoch);
        if epoch == first || frozen != *self.model.frozen() {
            let model = &*self.model;
            let n: usize = model.params.iter().filter(|(k, _)| frozen.contains(*k)).map(|(_, v)| v.elem_count()).sum();
            if n > 0 || epoch > first {
                tracing::info!("epoch {}: {} parameters frozen, {} trainable", epoch + 1, n, model.num_params() - n);
            }
            self.model.set_frozen(frozen);
        }
    }

    /// One pass over the training split: per batch forward, the task's loss, backward; an
    /// optimizer step every `accumulate` batches (and at the end) at the plan's learning
    /// rate. `None` when stopped by `stop`.
    fn train_epoch(&mut self, epoch: usize, state: &mut State) -> Result<Option<Trained>> {
        let plan = self.plan;
        let spec = train_spec(plan, self.dataset.shape, &self.device);
        let split = self.dataset.train.clone();
        let n_batches = spec.num_batches(split.len);
        if n_batches == 0 {
            bail!("the training split has {} samples: not one batch of {}", split.len, spec.batch_size);
        }
        let mut pass = EpochPass::new(plan, epoch, n_batches, &self.device, self.model);
        let started = std::time::Instant::now();
        let bar = progress::batch_bar(n_batches, &format!("epoch {}/{}", epoch + 1, plan.train.epochs));
        // `-v`: per batch, the time spent waiting for the loader and the step's own time.
        let (mut waited, mut asked) = (std::time::Duration::ZERO, std::time::Instant::now());
        for (b, batch) in loader::batches(split.clone(), &spec, epoch).enumerate() {
            let batch = batch?;
            let wait = asked.elapsed();
            waited += wait;
            let step_started = std::time::Instant::now();
            pass.skipped += batch.skipped.len();
            if self.stop.load(Ordering::SeqCst) {
                // A diverged batch among the unread still fails the run, not an interruption.
                read_losses(&mut pass.unread, &mut pass.stats, plan, epoch)?;
                return Ok(None);
            }
            let samples = batch.labels.len().max(batch.indices.len());
            if !batch.is_empty() {
                self.learn_batch(&mut pass, b, batch, state)?;
            }
            // A step every `accumulate` batches, and at the end of the epoch.
            if pass.pending > 0 && (pass.pending == pass.accumulate || b + 1 == n_batches) {
                self.optimizer_step(&mut pass, state)?;
            }
            tracing::debug!(
                "epoch {} batch {}/{n_batches}: {:.1} ms waiting for data, {:.1} ms computing, {samples} samples",
                epoch + 1,
                b + 1,
                wait.as_secs_f64() * 1e3,
                step_started.elapsed().as_secs_f64() * 1e3,
            );
            asked = std::time::Instant::now();
            pass.report(b, &bar, started)?;
        }
        read_losses(&mut pass.unread, &mut pass.stats, plan, epoch)?;
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        tracing::debug!(
            "epoch {}: {:.1} s, of which {:.1} s ({:.1}%) waiting for the loader",
            epoch + 1,
            seconds,
            waited.as_secs_f64(),
            100.0 * waited.as_secs_f64() / seconds.max(1e-9)
        );
        let EpochPass { stats, lr_rows, skipped, lr, .. } = pass;
        Ok(Some(Trained { stats, lr_rows, skipped, seconds, lr }))
    }

    /// One batch's forward and backward: its gradients summed into `pass`, its loss and
    /// predictions read (at once on the CPU, before the update, so the weights never take a
    /// step from a NaN; every 50 batches on a GPU, so that a step does not wait for it).
    fn learn_batch(&mut self, pass: &mut EpochPass, b: usize, batch: Batch, state: &State) -> Result<()> {
        let plan = self.plan;
        let epoch = pass.epoch;
        if pass.pending == 0 {
            pass.lr = plan.lr(Position { epoch, batch: b, batches: pass.n_batches });
        }
        let xs = images(&batch, plan.input, &self.device)?;
        let step = state.step as usize * pass.accumulate + pass.pending;
        let model_pass = Pass { train: true, seed: plan.seed, epoch, step };
        let slices = if pass.sliceable { step::slices(self.model, batch.len(), &self.device) } else { 1 };
        let Step { out, loss, grads } =
            step::forward_backward(self.model, &xs, model_pass, slices, pass.accumulate, |out, range| {
                plan.task.slice_loss(out, &batch, range, plan.input)
            })?;
        let outputs = plan.task.train_outputs(&out, pass.keep_probs)?;
        let read = Unread { step: state.step + 1, loss, outputs };
        if pass.read_at_once {
            read.into_stats(&mut pass.stats, plan, epoch, &batch)?;
        } else {
            pass.unread.push((read, batch.without_pixels()));
            if pass.unread.len() >= 50 {
                read_losses(&mut pass.unread, &mut pass.stats, plan, epoch)?;
            }
        }
        add_grads(&mut pass.summed, grads)?;
        pass.pending += 1;
        Ok(())
    }

    /// The optimizer's step over the summed gradients (clipped where the plan says), and the
    /// step's learning rate as a row of the epoch's table.
    fn optimizer_step(&mut self, pass: &mut EpochPass, state: &mut State) -> Result<()> {
        let plan = self.plan;
        if plan.train.clip_grad_norm > 0.0 {
            clip_grad_norm(&mut pass.summed, plan.train.clip_grad_norm)?;
        }
        self.optimizer.step(pass.lr, self.model.trainable(), &pass.summed, &plan.hypers)?;
        if let Some(ema) = &mut self.ema {
            ema.update(self.model)?;
        }
        pass.summed.clear();
        pass.pending = 0;
        state.step += 1;
        pass.lr_rows.push(MetricRow {
            epoch: pass.epoch as i32,
            step: state.step,
            split: "train".into(),
            metric: "lr".into(),
            class: None,
            value: pass.lr,
            wall_time_s: self.log.elapsed_s(),
        });
        Ok(())
    }

    /// The epoch's rows and tables: the learning rates, the train and test metrics, the
    /// timings, the test split's predictions, `model.safetensors` and the plots. Returns
    /// the scalar values by `split.metric`.
    fn log_epoch(
        &mut self,
        epoch: usize,
        step: i64,
        trained: &Trained,
        test: &Stats,
        test_skipped: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let (plan, log) = (self.plan, &mut self.log);
        let wall = log.elapsed_s();
        let row = |split: &str, metric: &str, value: f64| MetricRow {
            epoch: epoch as i32,
            step,
            split: split.into(),
            metric: metric.into(),
            class: None,
            value,
            wall_time_s: wall,
        };
        for r in &trained.lr_rows {
            log.push(r.clone());
        }
        let mut values = log_metrics(log, plan, "train", plan.metrics.train(), &trained.stats, epoch, step)?;
        let trainable: usize = self.model.trainable().map(|(_, v)| v.elem_count()).sum();
        log.push(row("train", "epoch_time_s", trained.seconds));
        log.push(row("train", "images_per_s", trained.stats.count() as f64 / trained.seconds));
        log.push(row("train", "trainable_params", trainable as f64));
        if plan.data.on_error == OnError::Skip {
            log.push(row("train", "skipped_samples", trained.skipped as f64));
            log.push(row("test", "skipped_samples", test_skipped as f64));
            if trained.skipped + test_skipped > 0 {
                tracing::warn!(
                    "epoch {}: skipped {} train and {test_skipped} test samples",
                    epoch + 1,
                    trained.skipped
                );
            }
        }
        let test_values = log_metrics(log, plan, "test", plan.metrics.test(), test, epoch, step)?;
        values.extend(test_values.clone());
        let test_split = &self.dataset.test;
        test.write_predictions(log, epoch, &plan.classes, test_split)?;
        log.final_metrics = test_values;
        log.flush()?;
        weights::save(self.model, &log.dir.join(files::MODEL))?;
        if let Err(e) = draw_plots(log, plan, test, test_split) {
            tracing::warn!("plots not drawn: {e:#}");
        }
        log.sync_events();
        Ok(values)
    }

    /// The best checkpoint and early stopping by their metrics, then the epoch's
    /// checkpoint. Returns whether early stopping ends the run.
    fn checkpoint(&mut self, epoch: usize, state: &mut State, values: &BTreeMap<String, f64>) -> Result<bool> {
        let plan = self.plan;
        let ck = &plan.train.checkpoint;
        let mut is_best = false;
        if let Some(metric) = &ck.best {
            let v = values[metric];
            let mode = ck.mode.unwrap_or_else(|| Mode::for_metric(metric));
            if state.best.is_none_or(|(b, _)| mode.better(v, b, 0.0)) {
                state.best = Some((v, epoch));
                is_best = true;
            }
        }
        let mut early_stop = false;
        if let Some(es) = &plan.train.early_stopping {
            let v = values[&es.metric];
            let mode = es.mode.unwrap_or_else(|| Mode::for_metric(&es.metric));
            if state.early_best.is_none_or(|b| mode.better(v, b, es.min_delta)) {
                state.early_best = Some(v);
                state.bad_epochs = 0;
            } else {
                state.bad_epochs += 1;
                early_stop = state.bad_epochs >= es.patience;
            }
        }
        let (_, optimizer_steps) = self.optimizer.export();
        let side = Sidecar {
            epoch,
            step: state.step,
            best: state.best,
            early_best: state.early_best,
            bad_epochs: state.bad_epochs,
            config_hash: self.log.config_hash().to_string(),
            threads: ops::threads(),
            kernels: kernels::level_on(&self.device).map(|l| l.to_string()).unwrap_or_default(),
            optimizer_steps,
            ema_updates: self.ema.as_ref().map(|e| e.updates),
        };
        checkpoint::save(
            &self.log.dir.join(files::CHECKPOINTS),
            self.model,
            self.optimizer,
            self.ema.as_ref().map(|e| e.tensors()),
            &side,
            ck.keep_last,
            is_best,
        )?;
        Ok(early_stop)
    }
}

/// What one epoch's pass over the training split carries from batch to batch.
struct EpochPass<'p> {
    plan: &'p Plan,
    epoch: usize,
    n_batches: usize,
    accumulate: usize,
    /// The loss is a sum over samples and the model treats them apart: a batch may run in
    /// slices.
    sliceable: bool,
    /// A training metric needs the predicted probabilities.
    keep_probs: bool,
    /// A batch's loss and predictions are read at once on the CPU; on a GPU they stay on
    /// the device until the log points (at least every 50 batches).
    read_at_once: bool,
    stats: Stats,
    unread: Vec<(Unread, Batch)>,
    skipped: usize,
    /// The gradients summed since the last optimizer step, over `pending` batches.
    summed: BTreeMap<String, Tensor>,
    pending: usize,
    lr: f64,
    /// The learning rate of each step; logged with the epoch, so that the tables only ever
    /// hold finished epochs.
    lr_rows: Vec<MetricRow>,
}

impl<'p> EpochPass<'p> {
    fn new(plan: &'p Plan, epoch: usize, n_batches: usize, device: &Device, model: &Model) -> Self {
        let keep_probs = plan.metrics.train().iter().any(|m| m.needs_probabilities());
        EpochPass {
            plan,
            epoch,
            n_batches,
            accumulate: plan.train.accumulate.max(1),
            sliceable: plan.task.loss_is_per_sample() && model.samples_independent(),
            keep_probs,
            read_at_once: ops::cpu_kernels_on(device),
            stats: plan.task.stats(plan.num_classes(), keep_probs),
            unread: Vec::new(),
            skipped: 0,
            summed: BTreeMap::new(),
            pending: 0,
            lr: plan.lr(Position { epoch, batch: 0, batches: n_batches }),
            lr_rows: Vec::new(),
        }
    }

    /// After batch `b`: the losses read every `log_every` batches, the progress bar, and
    /// without a bar a log line.
    fn report(&mut self, b: usize, bar: &progress::Bar, started: std::time::Instant) -> Result<()> {
        let (plan, epoch, n_batches) = (self.plan, self.epoch, self.n_batches);
        let every = plan.train.log_every;
        let log_point = every > 0 && (b + 1).is_multiple_of(every);
        if log_point {
            read_losses(&mut self.unread, &mut self.stats, plan, epoch)?;
        }
        bar.inc(1);
        let rate = self.stats.count() as f64 / started.elapsed().as_secs_f64();
        let epochs = plan.train.epochs;
        bar.set_message(&format!("epoch {}/{epochs} loss {:.4} {rate:.0} img/s", epoch + 1, self.stats.mean_loss()));
        if !progress::bars_enabled() && log_point {
            tracing::info!(
                "epoch {}/{epochs} batch {}/{n_batches} loss {:.4} {rate:.0} img/s",
                epoch + 1,
                b + 1,
                self.stats.mean_loss()
            );
        }
        Ok(())
    }
}

/// A trained batch whose loss and predictions may still be on the device.
struct Unread {
    /// The optimizer step the batch belongs to (1-based, as the messages count).
    step: i64,
    loss: step::BatchLoss,
    outputs: TrainOutputs,
}

impl Unread {
    /// Reads the loss and predictions of `batch` into `stats`. A loss that is NaN or
    /// infinite ends the run, naming its epoch and step: on the CPU before that batch's
    /// update; on a GPU at the next log point, so the weights may have taken those steps
    /// (the run is failed either way).
    fn into_stats(self, stats: &mut Stats, plan: &Plan, epoch: usize, batch: &Batch) -> Result<()> {
        let loss = self.loss.read()?;
        if !loss.is_finite() {
            bail!(
                "loss is {loss} at epoch {} step {}: training diverged (try a lower learning rate)",
                epoch + 1,
                self.step
            );
        }
        plan.task.update_train(stats, loss, &self.outputs, batch)
    }
}

/// Reads the kept batches (each with its labels and objects, without its pixels) into
/// `stats`, in batch order, and empties `unread`.
fn read_losses(unread: &mut Vec<(Unread, Batch)>, stats: &mut Stats, plan: &Plan, epoch: usize) -> Result<()> {
    for (u, batch) in unread.drain(..) {
        u.into_stats(stats, plan, epoch, &batch)?;
    }
    Ok(())
}

pub(crate) fn images(batch: &Batch, shape: [usize; 3], device: &Device) -> Result<Tensor> {
    let [c, h, w] = shape;
    Ok(Tensor::from_slice(&batch.images, (batch.len(), c, h, w), device)?) // [b, c, h, w]
}

/// The first 16 hex digits of the SHA-256 of the resolved config.
pub fn config_hash(resolved: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(resolved.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `config.toml`: comment lines naming the merged files and overrides, then the resolved
/// config, which `runner` can run again as is.
fn config_file_text(loaded: &Loaded, resolved: &str) -> String {
    let mut s = String::from("# Resolved by runner. Merged, in order:\n");
    for f in &loaded.files {
        s += &format!("# file: {}\n", f.display());
    }
    for o in &loaded.sets {
        s += &format!("# override: {o}\n");
    }
    s + "\n" + resolved
}
