//! The run folder `runs/<experiment>/<run-id>/` and its parquet tables.
//!
//! `run.parquet` (one row), `params.parquet` (the flattened config) and `metrics.parquet`
//! (long format). Tables are rewritten whole after each epoch through a temporary file and a
//! rename, so a crash leaves the last complete epoch and never a half-written file.
//! The files open in pandas, polars and DuckDB without this program. The tasks write their
//! own tables (predictions, detections, ROC, confusion) through [`table::Table`].

pub mod table;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arrow_array::{
    Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};

use crate::ops;
use crate::ops::kernels;
pub use table::{atomic_write, column, read_parquet, Table};
use tensorboard::EventLog;

/// One row of `metrics.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub epoch: i32,
    /// Optimizer steps taken when the value was measured.
    pub step: i64,
    pub split: String,
    pub metric: String,
    /// Set for per-class metrics.
    pub class: Option<String>,
    pub value: f64,
    /// Seconds since the run started.
    pub wall_time_s: f64,
}

/// The run folder's file names, in one place: every module that reads or writes a run
/// folder names its files through these (a test keeps the literals here).
pub mod files {
    /// The resolved config and the overrides that made it.
    pub const CONFIG: &str = "config.toml";
    /// One row: the run's identity, status and final metrics.
    pub const RUN: &str = "run.parquet";
    /// The flattened config, a row per key.
    pub const PARAMS: &str = "params.parquet";
    /// A row per epoch, step, split, metric and class.
    pub const METRICS: &str = "metrics.parquet";
    /// The weights after the latest epoch (with `[train] ema`, their average).
    pub const MODEL: &str = "model.safetensors";
    /// With `[train] ema`: the raw weights after the latest epoch.
    pub const MODEL_RAW: &str = "model_raw.safetensors";
    /// The folder of per-epoch checkpoints.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// The task's predictions table on the test split: classification's, detection's,
    /// segmentation's, localization's.
    pub const PREDICTIONS: &str = "predictions.parquet";
    pub const DETECTIONS: &str = "detections.parquet";
    /// COCO data: the same boxes in COCO's results format (pycocotools' `loadRes`).
    pub const DETECTIONS_JSON: &str = "detections.json";
    pub const SEGMENTATION: &str = "segmentation.parquet";
    pub const LOCALIZATIONS: &str = "localizations.parquet";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Completed,
    Failed,
    Interrupted,
    /// Ended early by its sweep's `[sweep.early_stop]`.
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::Stopped => "stopped",
        }
    }
}

pub struct RunLog {
    pub dir: PathBuf,
    pub run_id: String,
    experiment: String,
    config_hash: String,
    git_commit: Option<String>,
    seed: u64,
    device: String,
    /// The threads and the CPU kernel level (`ops::kernels`) of the process that started
    /// the run: results depend on both. `None` in runs written before they were recorded,
    /// and the level on a GPU (whose own kernels do the model's arithmetic).
    threads: Option<u32>,
    kernels: Option<String>,
    /// Set for the points of a sweep (`runner sweep` runs each point with `--sweep-id`).
    sweep_id: Option<String>,
    status: Status,
    started_at_us: i64,
    finished_at_us: Option<i64>,
    /// Final test metrics, `test.<metric>` -> value.
    pub final_metrics: BTreeMap<String, f64>,
    metrics: Vec<MetricRow>,
    /// Held while this process writes the folder ([`RunLock`]).
    lock: Option<RunLock>,
    /// The TensorBoard event file, where the run writes one (`[log] tensorboard`).
    events: Option<EventLog>,
}

/// The advisory lock a process holds on a run folder while it writes it: `run.lock`, which
/// names that process (`pid 1234 on host`). The operating system drops the lock when the
/// process ends, however it ends, so a folder whose status says `running` but whose lock is
/// free belongs to a process that died (the OOM killer, kill -9): it is `stale`.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use std::io::Write;
        let path = dir.join("run.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder =
                    if holder.trim().is_empty() { "another process".to_string() } else { holder.trim().to_string() };
                anyhow::bail!(
                    "{}: another runner process ({holder}) is writing this run; wait for it to end or stop it",
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| writeln!(file, "pid {} on {}", std::process::id(), host()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Whether a live process holds the folder's lock.
    pub fn is_held(dir: &Path) -> bool {
        match std::fs::File::open(dir.join("run.lock")) {
            Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".into())
}

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `20261128-070512-123`: UTC date, time and milliseconds; sorts by time.
pub fn timestamp_id(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}-{:03}",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        us.rem_euclid(1_000_000) / 1000
    )
}

impl RunLog {
    /// Marks a new run as a point of the sweep `id` (written with the run's row).
    pub fn with_sweep_id(mut self, id: Option<&str>) -> Self {
        self.sweep_id = id.filter(|s| !s.is_empty()).map(str::to_string);
        self
    }

    /// Creates `<output_dir>/<experiment>/<run-id>/`. The id is the start time to the
    /// millisecond plus a counter, claimed with `create_dir` so two runs never share one.
    pub fn create(output_dir: &Path, experiment: &str, config_hash: &str, seed: u64, device: &str) -> Result<Self> {
        let parent = output_dir.join(experiment);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create run folder parent {}", parent.display()))?;
        let started_at_us = now_us();
        let stamp = timestamp_id(started_at_us);
        let mut n = 0;
        // Made as `.<id>.part` and renamed into place by `publish` once config.toml and the
        // tables are written: a process killed before that leaves no half-made run folder.
        let (run_id, dir) = loop {
            let id = format!("{stamp}-{n:02}");
            let dir = parent.join(format!(".{id}.part"));
            if parent.join(&id).exists() && n < 99 {
                n += 1;
                continue;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 99 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("cannot create run folder {}", dir.display())),
            }
        };
        let lock = Some(RunLock::acquire(&dir)?);
        Ok(RunLog {
            dir,
            run_id,
            experiment: experiment.to_string(),
            config_hash: config_hash.to_string(),
            git_commit: git_commit(),
            seed,
            device: device.to_string(),
            threads: Some(ops::threads() as u32),
            // The model's arithmetic on a GPU is the GPU's: no CPU level to record.
            kernels: (device == "cpu").then(|| kernels::level().to_string()),
            sweep_id: None,
            status: Status::Running,
            started_at_us,
            finished_at_us: None,
            final_metrics: BTreeMap::new(),
            metrics: Vec::new(),
            lock,
            events: None,
        })
    }

    /// Opens an existing run folder (`runner resume`, `runner eval`): its `run.parquet` and
    /// `metrics.parquet` are read back (status included); rows of epochs after
    /// `keep_through` are dropped (`None`: all kept).
    pub fn open(dir: &Path, keep_through: Option<i32>) -> Result<Self> {
        let rpath = dir.join(files::RUN);
        let run = read_parquet(&rpath)?.into_iter().next().with_context(|| format!("{} is empty", rpath.display()))?;
        if run.num_rows() != 1 {
            anyhow::bail!("{}: expected one row, found {}", rpath.display(), run.num_rows());
        }
        let s = |name: &str| -> Result<Option<String>> {
            let c = table::column::<StringArray>(&run, name, "text", &rpath)?;
            Ok((!c.is_null(0)).then(|| c.value(0).to_string()))
        };
        let started = table::column::<TimestampMicrosecondArray>(&run, "started_at", "timestamp", &rpath)?.value(0);
        let seed = table::column::<UInt64Array>(&run, "seed", "uint64", &rpath)?.value(0);
        let mut metrics = Vec::new();
        let mpath = dir.join(files::METRICS);
        if mpath.is_file() {
            for m in read_parquet(&mpath)? {
                let epoch = table::column::<Int32Array>(&m, "epoch", "int32", &mpath)?;
                let step = table::column::<Int64Array>(&m, "step", "int64", &mpath)?;
                let split = table::column::<StringArray>(&m, "split", "text", &mpath)?;
                let metric = table::column::<StringArray>(&m, "metric", "text", &mpath)?;
                let class = table::column::<StringArray>(&m, "class", "text", &mpath)?;
                let value = table::column::<Float64Array>(&m, "value", "float64", &mpath)?;
                let wall = table::column::<Float64Array>(&m, "wall_time_s", "float64", &mpath)?;
                for i in 0..m.num_rows() {
                    if keep_through.is_some_and(|k| epoch.value(i) > k) {
                        continue;
                    }
                    metrics.push(MetricRow {
                        epoch: epoch.value(i),
                        step: step.value(i),
                        split: split.value(i).to_string(),
                        metric: metric.value(i).to_string(),
                        class: (!class.is_null(i)).then(|| class.value(i).to_string()),
                        value: value.value(i),
                        wall_time_s: wall.value(i),
                    });
                }
            }
        }
        let last = metrics.iter().map(|r| r.epoch).max();
        let final_metrics = match keep_through.or(last) {
            Some(k) => metrics
                .iter()
                .filter(|r| r.epoch == k && r.split == "test" && r.class.is_none())
                .map(|r| (format!("test.{}", r.metric), r.value))
                .filter(|(k, _)| !k.ends_with("skipped_samples"))
                .collect(),
            None => BTreeMap::new(),
        };
        Ok(RunLog {
            dir: dir.to_path_buf(),
            run_id: s("run_id")?.with_context(|| format!("{}: run_id is null", rpath.display()))?,
            experiment: s("experiment")?.unwrap_or_default(),
            config_hash: s("config_hash")?.unwrap_or_default(),
            git_commit: s("git_commit")?,
            seed,
            device: s("device")?.unwrap_or_default(),
            threads: run
                .column_by_name("threads")
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>().filter(|a| !a.is_null(0)).map(|a| a.value(0))),
            kernels: run.column_by_name("kernels").and_then(|c| {
                c.as_any().downcast_ref::<StringArray>().filter(|a| !a.is_null(0)).map(|a| a.value(0).to_string())
            }),
            status: match s("status")?.as_deref() {
                Some("completed") => Status::Completed,
                Some("failed") => Status::Failed,
                Some("interrupted") => Status::Interrupted,
                Some("stopped") => Status::Stopped,
                _ => Status::Running,
            },
            finished_at_us: run.column_by_name("finished_at").and_then(|c| {
                c.as_any().downcast_ref::<TimestampMicrosecondArray>().filter(|a| !a.is_null(0)).map(|a| a.value(0))
            }),
            sweep_id: run.column_by_name("sweep_id").and_then(|c| {
                c.as_any().downcast_ref::<StringArray>().filter(|a| !a.is_null(0)).map(|a| a.value(0).to_string())
            }),
            started_at_us: started,
            final_metrics,
            metrics,
            lock: None,
            events: None,
        })
    }

    /// Moves a new run's folder from `.<id>.part` to `<id>`, once it holds config.toml and
    /// its tables (a no-op for an opened run).
    pub fn publish(&mut self) -> Result<()> {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else { return Ok(()) };
        if !(name.starts_with('.') && name.ends_with(".part")) {
            return Ok(());
        }
        let to = self.dir.with_file_name(&self.run_id);
        std::fs::rename(&self.dir, &to)
            .with_context(|| format!("cannot move {} to {}", self.dir.display(), to.display()))?;
        self.dir = to;
        Ok(())
    }

    /// Takes the folder's lock before this process writes to it (resume, eval).
    pub fn lock(&mut self) -> Result<()> {
        if self.lock.is_none() {
            self.lock = Some(RunLock::acquire(&self.dir)?);
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    pub fn elapsed_s(&self) -> f64 {
        (now_us() - self.started_at_us) as f64 / 1e6
    }

    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        atomic_write(&self.dir.join(name), |p| std::fs::write(p, text).map_err(Into::into))
    }

    pub fn write_params(&self, params: &BTreeMap<String, String>) -> Result<()> {
        Table::new(&self.run_id, params.len())
            .col("key", StringArray::from_iter_values(params.keys()))
            .col("value", StringArray::from_iter_values(params.values()))
            .write(&self.dir.join(files::PARAMS))
    }

    pub fn push(&mut self, row: MetricRow) {
        self.metrics.push(row);
    }

    pub fn retain(&mut self, keep: impl FnMut(&MetricRow) -> bool) {
        self.metrics.retain(keep);
        if let Some(e) = &mut self.events {
            e.rewrite();
        }
    }

    /// Writes TensorBoard event files (`tb/`) from now on, when `on`: the whole file again
    /// at the first [`RunLog::sync_events`] (a resumed run's rows after its checkpoint are
    /// gone from it too), then appends.
    pub fn with_events(mut self, on: bool) -> Self {
        self.events = on.then(|| EventLog::new(self.started_at_us as f64 / 1e6));
        self
    }

    /// Brings `tb/` up to the metrics rows (and the plots drawn so far). A failure is
    /// warned of, never the run's end: the tables hold everything.
    pub fn sync_events(&mut self) {
        let Some(events) = &mut self.events else { return };
        let config = std::fs::read_to_string(self.dir.join(files::CONFIG)).ok();
        if let Err(e) = events.sync(&self.dir, &self.metrics, config.as_deref(), &self.dir.join("plots")) {
            tracing::warn!("TensorBoard events not written: {e:#}");
        }
    }

    pub fn metrics(&self) -> &[MetricRow] {
        &self.metrics
    }

    pub fn set_status(&mut self, status: Status) {
        self.status = status;
        if status != Status::Running {
            self.finished_at_us = Some(now_us());
        }
    }

    /// Rewrites `metrics.parquet` and `run.parquet`.
    pub fn flush(&self) -> Result<()> {
        self.write_metrics()?;
        self.write_run()
    }

    fn write_metrics(&self) -> Result<()> {
        let m = &self.metrics;
        Table::new(&self.run_id, m.len())
            .col("epoch", Int32Array::from_iter_values(m.iter().map(|r| r.epoch)))
            .col("step", Int64Array::from_iter_values(m.iter().map(|r| r.step)))
            .col("split", StringArray::from_iter_values(m.iter().map(|r| r.split.as_str())))
            .col("metric", StringArray::from_iter_values(m.iter().map(|r| r.metric.as_str())))
            .nullable("class", StringArray::from(m.iter().map(|r| r.class.as_deref()).collect::<Vec<_>>()))
            .col("value", Float64Array::from_iter_values(m.iter().map(|r| r.value)))
            .col("wall_time_s", Float64Array::from_iter_values(m.iter().map(|r| r.wall_time_s)))
            .write(&self.dir.join(files::METRICS))
    }

    fn write_run(&self) -> Result<()> {
        let stamp = |us: Option<i64>| TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC");
        let mut t = Table::new(&self.run_id, 1)
            .col("experiment", StringArray::from(vec![self.experiment.as_str()]))
            .col("config_hash", StringArray::from(vec![self.config_hash.as_str()]))
            .nullable("git_commit", StringArray::from(vec![self.git_commit.as_deref()]))
            .col("seed", UInt64Array::from(vec![self.seed]))
            .col("device", StringArray::from(vec![self.device.as_str()]))
            .nullable("threads", UInt32Array::from(vec![self.threads]))
            .nullable("kernels", StringArray::from(vec![self.kernels.as_deref()]))
            .nullable("sweep_id", StringArray::from(vec![self.sweep_id.as_deref()]))
            .col("status", StringArray::from(vec![self.status.as_str()]))
            .col("started_at", stamp(Some(self.started_at_us)))
            .nullable("finished_at", stamp(self.finished_at_us));
        for (name, value) in &self.final_metrics {
            t = t.nullable(name, Float64Array::from(vec![*value]));
        }
        t.write(&self.dir.join(files::RUN))
    }
}

/// The commit of the git checkout in the current folder, if any.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_folder_appears_whole_and_locked() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RunLog::create(d.path(), "e", "hash", 0, "cpu").unwrap();
        // Until published, the folder is hidden and nothing lists it as a run.
        let name = log.dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!(".{}.part", log.run_id));
        assert!(!d.path().join("e").join(&log.run_id).exists());
        log.flush().unwrap();
        log.publish().unwrap();
        assert_eq!(log.dir, d.path().join("e").join(&log.run_id));
        assert!(log.dir.join("run.parquet").is_file() && !d.path().join("e").join(&name).exists());
        // The lock moved with the folder and is still held by this process.
        assert!(RunLock::is_held(&log.dir));
        let e = RunLock::acquire(&log.dir).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {} on ", std::process::id())), "{e}");
    }

    #[test]
    fn timestamps_format_as_utc() {
        // 2026-11-28T07:05:12.345Z = 1795849512 s (by `date -u -d 2026-11-28T07:05:12Z +%s`).
        assert_eq!(timestamp_id(1_795_849_512_345_000), "20261128-070512-345");
        assert_eq!(timestamp_id(0), "19700101-000000-000");
        // 2000-02-29 (a leap day): 951782400 s.
        assert_eq!(timestamp_id(951_782_400_000_000), "20000229-000000-000");
    }
}
