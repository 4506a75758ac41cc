//! The training loop: one function, read top to bottom. Per epoch: train on every batch
//! (forward, cross-entropy, backward, optimizer step), evaluate on the test split, log the
//! metrics and rewrite the run's tables.
//!
//! Ctrl-C (or SIGTERM) stops at the next batch: the epochs already finished stay in the
//! tables and the run is marked `interrupted`. An error marks it `failed`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::config::{Loaded, MetricName, Tta};
use crate::data::loader::{self, Batch, LoaderSpec};
use crate::data::tta::ten_crop;
use crate::data::{self, Split};
use crate::metrics::EpochStats;
use crate::model::{argmax, Model, Pass};
use crate::optim::Optimizer;
use crate::plan::{device_name, parse_device, Plan};
use crate::progress;
use crate::runlog::{MetricRow, RunLog, Status};

pub struct Outcome {
    pub run_dir: PathBuf,
    pub status: Status,
    /// `test.<metric>` -> value after the last epoch.
    pub final_metrics: std::collections::BTreeMap<String, f64>,
}

/// Trains and evaluates `plan`, writing a run folder. `stop` is set by Ctrl-C.
pub fn run(loaded: &Loaded, plan: &Plan, stop: Arc<AtomicBool>) -> Result<Outcome> {
    let dataset = data::load(&plan.data)?;
    tracing::info!(
        "{}: {} train / {} test samples from {}",
        dataset.name,
        dataset.train.len,
        dataset.test.len,
        dataset.root.display()
    );
    let device = parse_device(&plan.device).map_err(anyhow::Error::msg)?.open()?;
    let mut model = Model::new(&plan.graph, plan.seed, &device)?;
    crate::model::weights::load_group_inits(&model, &plan.inits)?;
    let mut optimizer = Optimizer::new(&plan.train.optimizer);

    let resolved = loaded.resolved_toml();
    let hash = config_hash(&resolved);
    let output_dir = PathBuf::from(&loaded.config.experiment.output_dir);
    let mut log = RunLog::create(&output_dir, &plan.experiment, &hash, plan.seed, &device_name(&device))?;
    log.write_text("config.toml", &config_file_text(loaded, &resolved))?;
    log.write_params(&loaded.flat_params())?;
    log.flush()?;
    tracing::info!("run {} in {}", log.run_id, log.dir.display());

    let result = epochs(plan, &dataset, &mut model, &mut optimizer, &device, &mut log, &stop);
    let status = match &result {
        Ok(true) => Status::Completed,
        Ok(false) => Status::Interrupted,
        Err(_) => Status::Failed,
    };
    log.set_status(status);
    let flushed = log.flush();
    result.with_context(|| format!("run {} failed; tables so far are in {}", log.run_id, log.dir.display()))?;
    flushed?;
    Ok(Outcome { run_dir: log.dir.clone(), status, final_metrics: log.final_metrics.clone() })
}

/// All epochs; `Ok(false)` when stopped early by `stop`.
fn epochs(
    plan: &Plan,
    dataset: &data::Dataset,
    model: &mut Model,
    optimizer: &mut Optimizer,
    device: &Device,
    log: &mut RunLog,
    stop: &AtomicBool,
) -> Result<bool> {
    let shape = dataset.shape;
    let out_shape = plan.input;
    let train_spec = LoaderSpec {
        batch_size: plan.data.batch_size,
        shuffle: plan.data.shuffle,
        drop_last: plan.data.drop_last,
        seed: plan.seed,
        shape,
        out_shape,
        augment: plan.augment_train.clone(),
        prefetch: plan.data.prefetch,
        workers: plan.data.num_workers,
        skip_errors: plan.data.on_error == crate::config::OnError::Skip,
    };
    let test_spec = LoaderSpec {
        batch_size: plan.data.eval_batch_size.unwrap_or(plan.data.batch_size),
        shuffle: false,
        drop_last: false,
        out_shape: plan.test_shape,
        augment: plan.augment_test.clone(),
        ..train_spec.clone()
    };
    let train_split = dataset.train.clone();
    let test_split = dataset.test.clone();
    let n_batches = train_spec.num_batches(train_split.len);
    if n_batches == 0 {
        bail!("the training split has {} samples: not one batch of {}", train_split.len, train_spec.batch_size);
    }
    let epochs = plan.train.epochs;
    let mut step: i64 = 0;

    for epoch in 0..epochs {
        let frozen = plan.frozen_at(epoch);
        if epoch == 0 || frozen != *model.frozen() {
            let n: usize = model.params.iter().filter(|(k, _)| frozen.contains(*k)).map(|(_, v)| v.elem_count()).sum();
            if n > 0 || epoch > 0 {
                tracing::info!("epoch {}: {} parameters frozen, {} trainable", epoch + 1, n, model.num_params() - n);
            }
            model.set_frozen(frozen);
        }
        let model = &*model;
        let trainable: usize = model.trainable().map(|(_, v)| v.elem_count()).sum();
        // Train.
        let started = std::time::Instant::now();
        let bar = progress::batch_bar(n_batches, &format!("epoch {}/{epochs}", epoch + 1));
        let mut train_stats = EpochStats::default();
        let mut train_skipped = 0usize;
        for (b, batch) in loader::batches(train_split.clone(), &train_spec, epoch).enumerate() {
            let batch = batch?;
            train_skipped += batch.skipped.len();
            if batch.is_empty() {
                continue;
            }
            if stop.load(Ordering::SeqCst) {
                tracing::warn!("interrupted during epoch {}; keeping the {} finished epochs", epoch + 1, epoch);
                return Ok(false);
            }
            let (xs, ys) = to_tensors(&batch, out_shape, device)?;
            let pass = Pass { train: true, seed: plan.seed, epoch, step: step as usize };
            let logits = model.forward(&xs, pass)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
            // Checked before the update, so the weights never take a step from a NaN.
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bail!(
                    "loss is {loss_value} at epoch {} step {}: training diverged (try a lower learning rate)",
                    epoch + 1,
                    step + 1
                );
            }
            let grads = loss.backward()?;
            optimizer.step(model.trainable(), &grads)?;
            step += 1;

            train_stats.update(loss_value, &argmax(&logits)?, &batch.labels);
            bar.inc(1);
            let rate = train_stats.count() as f64 / started.elapsed().as_secs_f64();
            bar.set_message(&format!(
                "epoch {}/{epochs} loss {:.4} {rate:.0} img/s",
                epoch + 1,
                train_stats.mean_loss()
            ));
            let every = plan.train.log_every;
            if !progress::bars_enabled() && every > 0 && (b + 1) % every == 0 {
                tracing::info!(
                    "epoch {}/{epochs} batch {}/{n_batches} loss {:.4} {rate:.0} img/s",
                    epoch + 1,
                    b + 1,
                    train_stats.mean_loss()
                );
            }
        }
        bar.finish_and_clear();
        let train_time = started.elapsed().as_secs_f64();

        // Evaluate.
        let (test_stats, test_skipped) = evaluate(model, &test_split, &test_spec, plan.tta, plan.input, device)?;

        // Log.
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
        for m in &plan.metrics.train {
            log.push(row("train", m.as_str(), train_stats.compute(*m)));
        }
        log.push(row("train", "epoch_time_s", train_time));
        log.push(row("train", "images_per_s", train_stats.count() as f64 / train_time));
        log.push(row("train", "lr", optimizer.lr()));
        log.push(row("train", "trainable_params", trainable as f64));
        if plan.data.on_error == crate::config::OnError::Skip {
            log.push(row("train", "skipped_samples", train_skipped as f64));
            log.push(row("test", "skipped_samples", test_skipped as f64));
            if train_skipped + test_skipped > 0 {
                tracing::warn!("epoch {}: skipped {train_skipped} train and {test_skipped} test samples", epoch + 1);
            }
        }
        for m in &plan.metrics.test {
            log.push(row("test", m.as_str(), test_stats.compute(*m)));
        }
        log.final_metrics =
            plan.metrics.test.iter().map(|m| (format!("test.{}", m.as_str()), test_stats.compute(*m))).collect();
        log.flush()?;
        crate::model::weights::save(model, &log.dir.join("model.safetensors"))?;
        tracing::info!(
            "epoch {}/{epochs}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | {:.1} s, {:.0} img/s",
            epoch + 1,
            train_stats.mean_loss(),
            train_stats.compute(MetricName::Accuracy),
            test_stats.mean_loss(),
            test_stats.compute(MetricName::Accuracy),
            train_time,
            train_stats.count() as f64 / train_time
        );
    }
    Ok(true)
}

/// Loss and predictions over a whole split, in eval mode (no dropout). With ten-crop TTA
/// the class probabilities are the mean of the ten crops' softmax outputs, and the loss is
/// the mean of `-ln p[label]` under those probabilities. Also returns how many samples were
/// skipped as unreadable (`on_error = "skip"`).
pub fn evaluate(
    model: &Model,
    split: &Arc<Split>,
    spec: &LoaderSpec,
    tta: Tta,
    input: [usize; 3],
    device: &Device,
) -> Result<(EpochStats, usize)> {
    let mut stats = EpochStats::default();
    let mut skipped = 0;
    for batch in loader::batches(split.clone(), spec, 0) {
        let batch = batch?;
        skipped += batch.skipped.len();
        if batch.is_empty() {
            continue;
        }
        match tta {
            Tta::None => {
                let (xs, ys) = to_tensors(&batch, spec.out_shape, device)?;
                let logits = model.forward(&xs, Pass::eval())?;
                let loss = candle_nn::loss::cross_entropy(&logits, &ys)?.to_scalar::<f32>()? as f64;
                stats.update(loss, &argmax(&logits)?, &batch.labels);
            }
            Tta::TenCrop => {
                let n = batch.len();
                let [c, size, _] = input;
                let crops = ten_crop(&batch.images, n, spec.out_shape, size);
                let xs = Tensor::from_vec(crops, (n * 10, c, size, size), device)?; // [10 n, c, s, s]
                let ys = Tensor::from_slice(&batch.labels, n, device)?; // [n]
                let probs = candle_nn::ops::softmax_last_dim(&model.forward(&xs, Pass::eval())?)?;
                let probs = probs.reshape((n, 10, ()))?.mean(1)?; // [n, classes]
                let picked = probs.gather(&ys.unsqueeze(1)?, 1)?; // [n, 1]
                let loss = picked.log()?.neg()?.mean_all()?.to_scalar::<f32>()? as f64;
                stats.update(loss, &argmax(&probs)?, &batch.labels);
            }
        }
    }
    Ok((stats, skipped))
}

fn to_tensors(batch: &Batch, shape: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = shape;
    let xs = Tensor::from_slice(&batch.images, (batch.len(), c, h, w), device)?; // [b, c, h, w]
    let ys = Tensor::from_slice(&batch.labels, batch.len(), device)?; // [b]
    Ok((xs, ys))
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
