//! The run folder `runs/<experiment>/<run-id>/` and its parquet tables.
//!
//! `run.parquet` (one row), `params.parquet` (the flattened config) and `metrics.parquet`
//! (long format). Tables are rewritten whole after each epoch through a temporary file and a
//! rename, so a crash leaves the last complete epoch and never a half-written file.
//! The files open in pandas, polars and DuckDB without this program.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arrow_array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Completed,
    Failed,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
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
    /// Set for the points of a sweep (`RUNNER_SWEEP_ID`, set by `runner sweep`).
    sweep_id: Option<String>,
    status: Status,
    started_at_us: i64,
    finished_at_us: Option<i64>,
    /// Final test metrics, `test.<metric>` -> value.
    pub final_metrics: BTreeMap<String, f64>,
    metrics: Vec<MetricRow>,
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
    /// Creates `<output_dir>/<experiment>/<run-id>/`. The id is the start time to the
    /// millisecond plus a counter, claimed with `create_dir` so two runs never share one.
    pub fn create(output_dir: &Path, experiment: &str, config_hash: &str, seed: u64, device: &str) -> Result<Self> {
        let parent = output_dir.join(experiment);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create run folder parent {}", parent.display()))?;
        let started_at_us = now_us();
        let stamp = timestamp_id(started_at_us);
        let mut n = 0;
        let (run_id, dir) = loop {
            let id = format!("{stamp}-{n:02}");
            let dir = parent.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 99 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("cannot create run folder {}", dir.display())),
            }
        };
        Ok(RunLog {
            dir,
            run_id,
            experiment: experiment.to_string(),
            config_hash: config_hash.to_string(),
            git_commit: git_commit(),
            seed,
            device: device.to_string(),
            sweep_id: std::env::var("RUNNER_SWEEP_ID").ok().filter(|s| !s.is_empty()),
            status: Status::Running,
            started_at_us,
            finished_at_us: None,
            final_metrics: BTreeMap::new(),
            metrics: Vec::new(),
        })
    }

    /// Opens an existing run folder (`runner resume`, `runner eval`): its `run.parquet` and
    /// `metrics.parquet` are read back (status included); rows of epochs after
    /// `keep_through` are dropped (`None`: all kept).
    pub fn open(dir: &Path, keep_through: Option<i32>) -> Result<Self> {
        use arrow_array::Array;
        let run = read_parquet(&dir.join("run.parquet"))?.into_iter().next().context("run.parquet is empty")?;
        let s = |name: &str| -> Result<Option<String>> {
            let c = run.column_by_name(name).with_context(|| format!("run.parquet has no column `{name}`"))?;
            let c = c
                .as_any()
                .downcast_ref::<StringArray>()
                .with_context(|| format!("run.parquet: `{name}` is not text"))?;
            Ok((!c.is_null(0)).then(|| c.value(0).to_string()))
        };
        if run.num_rows() != 1 {
            anyhow::bail!("{}: expected one row, found {}", dir.join("run.parquet").display(), run.num_rows());
        }
        let started = run
            .column_by_name("started_at")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>().map(|a| a.value(0)))
            .context("run.parquet has no started_at")?;
        let seed = run
            .column_by_name("seed")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().map(|a| a.value(0)))
            .context("run.parquet has no seed")?;
        let mut metrics = Vec::new();
        let mpath = dir.join("metrics.parquet");
        if mpath.is_file() {
            for m in read_parquet(&mpath)? {
                let col = |name: &str| {
                    m.column_by_name(name).with_context(|| format!("{}: no column `{name}`", mpath.display()))
                };
                let epoch = col("epoch")?.as_any().downcast_ref::<Int32Array>().context("epoch is not int32")?.clone();
                let step = col("step")?.as_any().downcast_ref::<Int64Array>().context("step is not int64")?.clone();
                let split = col("split")?.as_any().downcast_ref::<StringArray>().context("split is not text")?.clone();
                let metric =
                    col("metric")?.as_any().downcast_ref::<StringArray>().context("metric is not text")?.clone();
                let class = col("class")?.as_any().downcast_ref::<StringArray>().context("class is not text")?.clone();
                let value =
                    col("value")?.as_any().downcast_ref::<Float64Array>().context("value is not float64")?.clone();
                let wall = col("wall_time_s")?.as_any().downcast_ref::<Float64Array>().context("wall_time_s")?.clone();
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
            run_id: s("run_id")?.context("run.parquet has no run_id")?,
            experiment: s("experiment")?.unwrap_or_default(),
            config_hash: s("config_hash")?.unwrap_or_default(),
            git_commit: s("git_commit")?,
            seed,
            device: s("device")?.unwrap_or_default(),
            status: match s("status")?.as_deref() {
                Some("completed") => Status::Completed,
                Some("failed") => Status::Failed,
                Some("interrupted") => Status::Interrupted,
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
        })
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
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); params.len()])),
            Arc::new(StringArray::from_iter_values(params.keys())),
            Arc::new(StringArray::from_iter_values(params.values())),
        ];
        write_parquet(&self.dir.join("params.parquet"), RecordBatch::try_new(schema, columns)?)
    }

    pub fn push(&mut self, row: MetricRow) {
        self.metrics.push(row);
    }

    pub fn retain(&mut self, keep: impl FnMut(&MetricRow) -> bool) {
        self.metrics.retain(keep);
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

    /// `predictions.parquet`: the test split's samples after the latest epoch: `sample`
    /// (index in the split), `label`, `pred`, `scores` (class probabilities).
    pub fn write_predictions(&self, stats: &crate::metrics::EpochStats) -> Result<()> {
        use arrow_array::{Float32Array, ListArray};
        let n = stats.labels.len();
        let c = stats.classes();
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("sample", DataType::Int64, false),
            Field::new("label", DataType::Int32, false),
            Field::new("pred", DataType::Int32, false),
            Field::new("scores", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
        ]));
        let values = Arc::new(Float32Array::from(stats.probs.clone()));
        let offs = arrow_buffer_offsets(n, if stats.has_probs() { c } else { 0 });
        let scores = ListArray::try_new(Arc::new(Field::new("item", DataType::Float32, true)), offs, values, None)?;
        let samples: Vec<i64> = if stats.samples.len() == n { stats.samples.clone() } else { (0..n as i64).collect() };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); n])),
            Arc::new(Int64Array::from(samples)),
            Arc::new(Int32Array::from_iter_values(stats.labels.iter().map(|&l| l as i32))),
            Arc::new(Int32Array::from_iter_values(stats.preds.iter().map(|&p| p as i32))),
            Arc::new(scores),
        ];
        write_parquet(&self.dir.join("predictions.parquet"), RecordBatch::try_new(schema, columns)?)
    }

    /// `detections.parquet`: the test split's boxes after the latest epoch, one row per box:
    /// `epoch`, `sample` (index in the split), `image` (its file's stem, VOC's id), `class`,
    /// `score`, `xmin, ymin, xmax, ymax` (continuous edges in the original image's pixels).
    pub fn write_detections(
        &self,
        epoch: usize,
        stats: &crate::metrics::detection::DetectionStats,
        names: &[String],
        images: &[PathBuf],
    ) -> Result<()> {
        use arrow_array::Float32Array;
        let rows = &stats.detections;
        let n = rows.len();
        let name = |c: u32| names.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
        let image = |i: usize| {
            images.get(i).and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
        };
        let coord = |k: usize| Arc::new(Float32Array::from_iter_values(rows.iter().map(|(_, d)| d.bbox[k] as f32)));
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("epoch", DataType::Int32, false),
            Field::new("sample", DataType::Int64, false),
            Field::new("image", DataType::Utf8, false),
            Field::new("class", DataType::Utf8, false),
            Field::new("score", DataType::Float32, false),
            Field::new("xmin", DataType::Float32, false),
            Field::new("ymin", DataType::Float32, false),
            Field::new("xmax", DataType::Float32, false),
            Field::new("ymax", DataType::Float32, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); n])),
            Arc::new(Int32Array::from(vec![epoch as i32; n])),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, d)| d.image as i64))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, d)| image(d.image)))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(c, _)| name(*c)))),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|(_, d)| d.score as f32))),
            coord(0),
            coord(1),
            coord(2),
            coord(3),
        ];
        write_parquet(&self.dir.join("detections.parquet"), RecordBatch::try_new(schema, columns)?)
    }

    /// `confusion_matrix_<split>.parquet` after the latest epoch: one row per (true, predicted) class.
    pub fn write_confusion(&self, epoch: usize, split: &str, m: &[Vec<u64>], names: &[String]) -> Result<()> {
        let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let (mut t, mut p, mut n) = (Vec::new(), Vec::new(), Vec::new());
        for (i, row) in m.iter().enumerate() {
            for (j, count) in row.iter().enumerate() {
                t.push(name(i));
                p.push(name(j));
                n.push(*count as i64);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("epoch", DataType::Int32, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("true_class", DataType::Utf8, false),
            Field::new("pred_class", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
        ]));
        let rows = n.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); rows])),
            Arc::new(Int32Array::from(vec![epoch as i32; rows])),
            Arc::new(StringArray::from(vec![split; rows])),
            Arc::new(StringArray::from(t)),
            Arc::new(StringArray::from(p)),
            Arc::new(Int64Array::from(n)),
        ];
        write_parquet(
            &self.dir.join(format!("confusion_matrix_{split}.parquet")),
            RecordBatch::try_new(schema, columns)?,
        )
    }

    /// `roc_<split>.parquet` after the latest epoch: per class (one vs rest) its curve.
    pub fn write_roc(&self, epoch: usize, split: &str, curves: &[crate::metrics::RocCurve]) -> Result<()> {
        let (mut class, mut thr, mut fpr, mut tpr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (c, points) in curves {
            for (t, f, p) in points {
                class.push(c.clone());
                thr.push(*t);
                fpr.push(*f);
                tpr.push(*p);
            }
        }
        let rows = class.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("epoch", DataType::Int32, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("class", DataType::Utf8, false),
            Field::new("threshold", DataType::Float64, false),
            Field::new("fpr", DataType::Float64, false),
            Field::new("tpr", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); rows])),
            Arc::new(Int32Array::from(vec![epoch as i32; rows])),
            Arc::new(StringArray::from(vec![split; rows])),
            Arc::new(StringArray::from(class)),
            Arc::new(Float64Array::from(thr)),
            Arc::new(Float64Array::from(fpr)),
            Arc::new(Float64Array::from(tpr)),
        ];
        write_parquet(&self.dir.join(format!("roc_{split}.parquet")), RecordBatch::try_new(schema, columns)?)
    }

    /// Rewrites `metrics.parquet` and `run.parquet`.
    pub fn flush(&self) -> Result<()> {
        self.write_metrics()?;
        self.write_run()
    }

    fn write_metrics(&self) -> Result<()> {
        let m = &self.metrics;
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("epoch", DataType::Int32, false),
            Field::new("step", DataType::Int64, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("class", DataType::Utf8, true),
            Field::new("value", DataType::Float64, false),
            Field::new("wall_time_s", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); m.len()])),
            Arc::new(Int32Array::from_iter_values(m.iter().map(|r| r.epoch))),
            Arc::new(Int64Array::from_iter_values(m.iter().map(|r| r.step))),
            Arc::new(StringArray::from_iter_values(m.iter().map(|r| r.split.as_str()))),
            Arc::new(StringArray::from_iter_values(m.iter().map(|r| r.metric.as_str()))),
            Arc::new(StringArray::from(m.iter().map(|r| r.class.as_deref()).collect::<Vec<_>>())),
            Arc::new(Float64Array::from_iter_values(m.iter().map(|r| r.value))),
            Arc::new(Float64Array::from_iter_values(m.iter().map(|r| r.wall_time_s))),
        ];
        write_parquet(&self.dir.join("metrics.parquet"), RecordBatch::try_new(schema, columns)?)
    }

    fn write_run(&self) -> Result<()> {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("experiment", DataType::Utf8, false),
            Field::new("config_hash", DataType::Utf8, false),
            Field::new("git_commit", DataType::Utf8, true),
            Field::new("seed", DataType::UInt64, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("sweep_id", DataType::Utf8, true),
            Field::new("status", DataType::Utf8, false),
            Field::new("started_at", ts.clone(), false),
            Field::new("finished_at", ts, true),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str()])),
            Arc::new(StringArray::from(vec![self.experiment.as_str()])),
            Arc::new(StringArray::from(vec![self.config_hash.as_str()])),
            Arc::new(StringArray::from(vec![self.git_commit.as_deref()])),
            Arc::new(UInt64Array::from(vec![self.seed])),
            Arc::new(StringArray::from(vec![self.device.as_str()])),
            Arc::new(StringArray::from(vec![self.sweep_id.as_deref()])),
            Arc::new(StringArray::from(vec![self.status.as_str()])),
            Arc::new(TimestampMicrosecondArray::from(vec![self.started_at_us]).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(vec![self.finished_at_us]).with_timezone("UTC")),
        ];
        for (name, value) in &self.final_metrics {
            fields.push(Field::new(name, DataType::Float64, true));
            columns.push(Arc::new(Float64Array::from(vec![*value])));
        }
        write_parquet(&self.dir.join("run.parquet"), RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }
}

/// Offsets of `n` lists of `len` values each.
fn arrow_buffer_offsets(n: usize, len: usize) -> arrow_buffer::OffsetBuffer<i32> {
    arrow_buffer::OffsetBuffer::<i32>::from_lengths(std::iter::repeat_n(len, n))
}

/// Every record batch of a parquet file, with the file named in errors.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    reader.collect::<std::result::Result<_, _>>().with_context(|| format!("cannot read {}", path.display()))
}

/// Writes through `<path>.tmp` and renames, so readers see the old or the new file, whole.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    write(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn write_parquet(path: &Path, batch: RecordBatch) -> Result<()> {
    atomic_write(path, |tmp| {
        let file = std::fs::File::create(tmp)?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    })
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
    fn timestamps_format_as_utc() {
        // 2026-11-28T07:05:12.345Z = 1795849512 s (by `date -u -d 2026-11-28T07:05:12Z +%s`).
        assert_eq!(timestamp_id(1_795_849_512_345_000), "20261128-070512-345");
        assert_eq!(timestamp_id(0), "19700101-000000-000");
        // 2000-02-29 (a leap day): 951782400 s.
        assert_eq!(timestamp_id(951_782_400_000_000), "20000229-000000-000");
    }
}
