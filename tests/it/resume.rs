//! Checkpoints and `runner resume`: a run continued from any finished epoch ends with the
//! same per-epoch metrics, bit for bit, as the run that was never stopped; bad folders and
//! checkpoints are errors that leave the folder as it was. Also the NaN guard.

use std::path::{Path, PathBuf};

use arrow_array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{run_folder, runner};

pub fn rows(path: &Path) -> Vec<(i32, i64, String, String, u64)> {
    let f = std::fs::File::open(path).unwrap();
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().map(|b| b.unwrap()).collect();
    let mut out = Vec::new();
    for b in batches {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let (e, s, sp, m, v) = (col("epoch"), col("step"), col("split"), col("metric"), col("value"));
        let e = e.as_any().downcast_ref::<Int32Array>().unwrap();
        let s = s.as_any().downcast_ref::<Int64Array>().unwrap();
        let sp = sp.as_any().downcast_ref::<StringArray>().unwrap();
        let m = m.as_any().downcast_ref::<StringArray>().unwrap();
        let v = v.as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..b.num_rows() {
            // Timings differ between any two runs; everything else must not.
            if ["epoch_time_s", "images_per_s"].contains(&m.value(i)) {
                continue;
            }
            out.push((e.value(i), s.value(i), sp.value(i).to_string(), m.value(i).to_string(), v.value(i).to_bits()));
        }
    }
    out
}

/// Rewrites the run's status, as a process that stopped at some moment would have left it.
fn set_status(dir: &Path, status: runner::runlog::Status) {
    let mut log = runner::runlog::RunLog::open(dir, None).unwrap();
    log.set_status(status);
    log.flush().unwrap();
}

pub fn status(dir: &Path) -> String {
    let f = std::fs::File::open(dir.join("run.parquet")).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().next().unwrap().unwrap();
    b.column_by_name("status").unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string()
}

/// A tiny experiment with dropout, momentum, a schedule with warm-up and a freeze that ends
/// at epoch 1: everything resume must restore.
pub fn setup(dir: &Path) -> PathBuf {
    let exp = crate::end_to_end::setup(dir, 3);
    let mut text = std::fs::read_to_string(&exp).unwrap();
    text += r#"
schedule = { cosine = { eta_min = 0.001 } }
warmup = { epochs = 0.5, start_factor = 0.2 }
accumulate = 2
clip_grad_norm = 5.0
label_smoothing = 0.1

[train.checkpoint]
keep_last = 3
best = "test.accuracy"

[[train.freeze]]
groups = ["features"]
until_epoch = 1
"#;
    std::fs::write(&exp, text).unwrap();
    exp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// Copies the finished 3-epoch run `full` to `copy` as a stop after epoch `after` leaves
/// it: the later checkpoints gone, no final weights (resume must write them), status
/// interrupted.
pub(crate) fn stopped_copy(full: &Path, copy: &Path, after: usize) {
    copy_dir(full, copy);
    for later in after + 1..=3 {
        for ext in ["safetensors", "toml"] {
            std::fs::remove_file(copy.join(format!("checkpoints/epoch_{later:04}.{ext}"))).unwrap();
        }
    }
    std::fs::remove_file(copy.join("model.safetensors")).unwrap();
    let mut log = runner::runlog::RunLog::open(copy, None).unwrap();
    log.set_status(runner::runlog::Status::Interrupted);
    log.flush().unwrap();
}

/// A bf16 run (`experiment.precision`, kept in the run's config.toml) resumes in bf16:
/// stopped after epoch 2 and resumed, the same rows and final weights, bit for bit.
#[test]
fn a_bf16_run_resumes_in_bf16_exactly() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = runner(d.path(), &["tiny.toml", "--set", "experiment.precision=bf16"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);
    let copy = d.path().join("runs/tiny/stopped");
    stopped_copy(&full, &copy, 2);
    let resumed = runner(d.path(), &["resume", copy.to_str().unwrap()]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains("precision bf16"), "{}", resumed.stderr);
    assert_eq!(rows(&copy.join("metrics.parquet")), rows(&full.join("metrics.parquet")));
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(copy.join("model.safetensors")).unwrap(), a, "final weights");
}

#[test]
fn resumed_runs_equal_uninterrupted_runs() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);
    let want = rows(&full.join("metrics.parquet"));
    let ck = full.join("checkpoints");
    for f in ["epoch_0001", "epoch_0002", "epoch_0003", "best"] {
        assert!(ck.join(format!("{f}.safetensors")).is_file() && ck.join(format!("{f}.toml")).is_file(), "{f}");
    }
    // One lr row per optimizer step: 15 batches per epoch, accumulate 2 -> 8 steps.
    assert_eq!(want.iter().filter(|r| r.3 == "lr").count(), 3 * 8);

    // Stopped after epoch 1 or 2 (the later checkpoints and table rows are what a stop
    // leaves or what resume drops), then resumed: the same rows, bit for bit.
    for after in [1, 2] {
        let copy = d.path().join(format!("runs/tiny/stopped_after_{after}"));
        stopped_copy(&full, &copy, after);
        let copy_arg = copy.to_string_lossy().into_owned();
        let out = runner(d.path(), &["resume", &copy_arg]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stderr.contains(&format!("resuming after epoch {after}")), "{}", out.stderr);
        assert_eq!(rows(&copy.join("metrics.parquet")), want, "resumed after epoch {after}");
        assert_eq!(status(&copy), "completed");
        let a = std::fs::read(full.join("model.safetensors")).unwrap();
        assert_eq!(std::fs::read(copy.join("model.safetensors")).unwrap(), a, "final weights after {after}");
    }

    // A finished run has nothing to resume, even without its checkpoints (regression: it
    // used to train again from epoch 1 over the finished tables).
    let full_arg = full.to_string_lossy().into_owned();
    let e = runner(d.path(), &["resume", &full_arg]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("nothing to resume"), "{}", e.stderr);
    let bare = d.path().join("runs/tiny/no_checkpoints");
    copy_dir(&full, &bare);
    std::fs::remove_dir_all(bare.join("checkpoints")).unwrap();
    let mut log = runner::runlog::RunLog::open(&bare, None).unwrap();
    log.set_status(runner::runlog::Status::Failed);
    log.flush().unwrap();
    let before = std::fs::read(bare.join("metrics.parquet")).unwrap();
    let e = runner(d.path(), &["resume", bare.to_str().unwrap()]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("no checkpoint") && e.stderr.contains("3 finished epoch(s)"), "{}", e.stderr);
    assert_eq!(std::fs::read(bare.join("metrics.parquet")).unwrap(), before, "tables untouched");
}

/// Starts a run of `exp` in `cwd` and waits until it has written a checkpoint (one
/// `checkpoints/epoch_NNNN.toml` at a time with keep_last = 1, renamed into place).
// The caller waits on the returned child.
#[allow(clippy::zombie_processes)]
fn start_and_wait(cwd: &Path, exp: &Path) -> (std::process::Child, PathBuf) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([exp.to_str().unwrap(), "-q"])
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = cwd.join("runs/tiny");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let has_checkpoint = |p: &PathBuf| {
        std::fs::read_dir(p.join("checkpoints"))
            .map(|it| it.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".toml")))
            .unwrap_or(false)
    };
    loop {
        let found = std::fs::read_dir(&runs).ok().and_then(|mut it| it.next()).map(|e| e.unwrap().path());
        if let Some(dir) = found.filter(has_checkpoint) {
            return (child, dir);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no epoch finished in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts a run of `epochs` epochs, waits for its first checkpoint and sends `signals` (in
/// order, e.g. `["-INT"]`); returns its folder, output and the folder it ran in. A run that
/// ended before the signals could act (`too_late`) is tried again four times longer; after
/// three tries the test fails, since on a machine that fast these tests would check nothing.
fn interrupted_run(
    signals: &[&str],
    too_late: impl Fn(&std::process::Output) -> bool,
) -> (tempfile::TempDir, PathBuf, std::process::Output) {
    let mut epochs = 200;
    for _ in 0..3 {
        let d = tempfile::tempdir().unwrap();
        let exp = crate::end_to_end::setup(d.path(), epochs);
        let (child, dir) = start_and_wait(d.path(), &exp);
        for sig in signals {
            std::process::Command::new("kill").args([*sig, &child.id().to_string()]).status().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        if !too_late(&out) {
            return (d, dir, out);
        }
        eprintln!("a run of {epochs} epochs ended before the signals {signals:?}; again, 4x longer");
        epochs *= 4;
    }
    panic!("three runs, up to {} epochs, each ended before the signals {signals:?} could stop it", epochs / 4);
}

#[test]
fn ctrl_c_then_resume_equals_one_run() {
    // Interrupted wherever the signal lands (after some epoch, or in the middle of one):
    // resume continues from the last finished epoch.
    let (d, dir, out) = interrupted_run(&["-INT"], |o| o.status.code() == Some(0));
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(status(&dir), "interrupted");
    let out = runner(d.path(), &["resume", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = runner(d.path(), &["tiny.toml"]);
    let reference = run_folder(d.path(), &again);
    assert_eq!(rows(&dir.join("metrics.parquet")), rows(&reference.join("metrics.parquet")));
}

#[test]
fn bad_resumes_leave_the_folder_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = runner(d.path(), &["tiny.toml", "--set", "train.epochs=2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = run_folder(d.path(), &out);
    // Make it resumable: drop the second epoch's checkpoint, mark it interrupted.
    for ext in ["safetensors", "toml"] {
        std::fs::remove_file(run.join(format!("checkpoints/epoch_0002.{ext}"))).unwrap();
    }
    set_status(&run, runner::runlog::Status::Interrupted);
    let snapshot = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<(PathBuf, Vec<u8>)> =
            walk(p).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
        v.sort();
        v
    };
    let arg = run.to_string_lossy().into_owned();

    // Not a run folder.
    let e = runner(d.path(), &["resume", "data"]);
    assert!(e.code != 0 && e.stderr.contains("not a run folder"), "{}", e.stderr);

    // A corrupt checkpoint: named, and nothing written.
    let ck = run.join("checkpoints/epoch_0001.safetensors");
    let good = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &good[..good.len() / 2]).unwrap();
    let before = snapshot(&run);
    let e = runner(d.path(), &["resume", &arg]);
    assert!(e.code != 0 && e.stderr.contains("epoch_0001.safetensors"), "{}", e.stderr);
    assert!(snapshot(&run) == before, "the folder changed");
    std::fs::write(&ck, &good).unwrap();

    // A checkpoint from another config (the model's shapes differ): refused, nothing written.
    let cfg = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("out = 4", "out = 5")).unwrap();
    let before = snapshot(&run);
    let e = runner(d.path(), &["resume", &arg]);
    assert!(e.code != 0, "{}", e.stderr);
    assert!(e.stderr.contains("another config") || e.stderr.contains("does not fit"), "{}", e.stderr);
    assert!(snapshot(&run) == before, "the folder changed");
    std::fs::write(&cfg, text).unwrap();

    // metrics.parquet deleted: resuming would finish without the first epoch's rows.
    let metrics = run.join("metrics.parquet");
    let kept = std::fs::read(&metrics).unwrap();
    std::fs::remove_file(&metrics).unwrap();
    let before = snapshot(&run);
    let e = runner(d.path(), &["resume", &arg]);
    assert!(e.code != 0, "{}", e.stderr);
    assert!(e.stderr.contains("metrics.parquet") && e.stderr.contains("no rows of epoch 1"), "{}", e.stderr);
    assert!(snapshot(&run) == before, "the folder changed");
    std::fs::write(&metrics, kept).unwrap();

    // Restored, it resumes.
    let out = runner(d.path(), &["resume", &arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_diverging_run_fails_naming_epoch_and_step() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 3);
    let out = runner(d.path(), &["tiny.toml", "--set", "train.optimizer.sgd.lr=1e30"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("training diverged") && out.stderr.contains("at epoch 1 step"), "{}", out.stderr);
    let run = std::fs::read_dir(d.path().join("runs/tiny")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(status(&run), "failed");
    assert!(run.join("metrics.parquet").is_file() && run.join("config.toml").is_file());
}

#[test]
fn same_seed_same_tables_and_early_stopping() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 6);
    // The toy data is learnt after one epoch: the test loss stops improving by 0.5 at once.
    let args = ["tiny.toml", "--set", "train.early_stopping={ metric = \"test.loss\", patience = 2, min_delta = 0.5 }"];
    let a = runner(d.path(), &args);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert!(a.stderr.contains("early stopping after epoch 3"), "{}", a.stderr);
    let b = runner(d.path(), &args);
    let (ra, rb) = (run_folder(d.path(), &a), run_folder(d.path(), &b));
    let rows_a = rows(&ra.join("metrics.parquet"));
    assert_eq!(rows_a, rows(&rb.join("metrics.parquet")));
    assert_eq!(rows_a.iter().map(|r| r.0).max(), Some(2), "epochs 0-2 ran");
    assert_eq!(status(&ra), "completed");
}

#[test]
fn sigterm_stops_like_ctrl_c_with_status_143() {
    let (_d, dir, out) = interrupted_run(&["-TERM"], |o| o.status.code() == Some(0));
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&dir), "interrupted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("run folder: "), "{stdout}");
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_leaves_whole_tables() {
    // Too late: the run ended, or stopped cleanly after the first signal before the second.
    let (_d, dir, out) = interrupted_run(&["-INT", "-INT"], |o| {
        o.status.code() == Some(0) || String::from_utf8_lossy(&o.stdout).contains("run folder: ")
    });
    // Exit 130 (128 + SIGINT) without the closing report; the tables written so far open.
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!rows(&dir.join("metrics.parquet")).is_empty());
    // Left before recording anything (`running`), or just after the first signal's clean
    // stop recorded `interrupted` and before its report: either way a readable folder.
    let st = status(&dir);
    assert!(st == "running" || st == "interrupted", "{st}");
}

#[test]
fn a_run_killed_after_its_last_checkpoint_resumes_to_completed() {
    // Killed between the last checkpoint and the final status: the folder says `running`.
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = runner(d.path(), &["tiny.toml", "--set", "train.epochs=2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = run_folder(d.path(), &out);
    let before = rows(&run.join("metrics.parquet"));
    set_status(&run, runner::runlog::Status::Running);
    let out = runner(d.path(), &["resume", run.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("all 2 epochs were finished before the process stopped"), "{}", out.stderr);
    assert_eq!(status(&run), "completed");
    assert_eq!(rows(&run.join("metrics.parquet")), before, "no epoch ran again");
}

#[test]
fn a_live_run_is_locked_and_a_killed_one_is_stale_then_resumes() {
    let d = tempfile::tempdir().unwrap();
    let exp = crate::end_to_end::setup(d.path(), 40);
    let (mut child, dir) = start_and_wait(d.path(), &exp);
    let arg = dir.to_string_lossy().into_owned();
    // While the run lives, a second process is refused, naming the first.
    let e = runner(d.path(), &["resume", &arg]);
    let pid = format!("pid {} on ", child.id());
    if child.try_wait().unwrap().is_none() {
        assert!(e.code != 0 && e.stderr.contains("another runner process") && e.stderr.contains(&pid), "{}", e.stderr);
        let c = runner(d.path(), &["compare", "runs"]);
        if child.try_wait().unwrap().is_none() {
            assert!(c.stdout.contains("running"), "{}", c.stdout);
        }
    }
    // kill -9: the folder still says running, but nothing holds it.
    child.kill().unwrap();
    child.wait().unwrap();
    if status(&dir) != "running" {
        return crate::common::skip(
            "a_live_run_is_locked_and_a_killed_one_is_stale_then_resumes (its stale half)",
            "the run ended before the kill",
            "RUNNER_REQUIRE_SLOW_MACHINE",
        );
    }
    let c = runner(d.path(), &["compare", "runs"]);
    assert!(c.stdout.contains("stale"), "{}", c.stdout);
    let out = runner(d.path(), &["resume", &arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("resuming a stale run"), "{}", out.stderr);
    assert_eq!(status(&dir), "completed");
}

#[test]
fn a_run_killed_between_its_first_tables_and_checkpoint_resumes() {
    // The first epoch's rows are written, then its checkpoint: killed in between, the
    // folder has the rows and no checkpoint. Resume trains epoch 1 again, to the same rows.
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = runner(d.path(), &["tiny.toml", "--set", "train.epochs=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = run_folder(d.path(), &out);
    let before = rows(&run.join("metrics.parquet"));
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    set_status(&run, runner::runlog::Status::Running);
    let out = runner(d.path(), &["resume", run.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(&run), "completed");
    assert_eq!(rows(&run.join("metrics.parquet")), before);
}

/// `keep_last = 2` over five epochs keeps the checkpoints of epochs 4 and 5 (and `best`);
/// a resume with another thread count than the run's says that the results will differ
/// and how to get the same bits.
#[test]
fn keep_last_prunes_and_resume_warns_about_thread_counts() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let run_with = |threads: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .current_dir(d.path())
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) =
        run_with("1", &["tiny.toml", "--set", "train.epochs=5", "--set", "train.checkpoint.keep_last=2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let dir = stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).map(|p| d.path().join(p)).unwrap();
    let mut kept: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["best.safetensors", "epoch_0004.safetensors", "epoch_0005.safetensors"]);

    // Stopped after epoch 4 (what a stop leaves), resumed with two threads.
    for ext in ["safetensors", "toml"] {
        std::fs::remove_file(dir.join(format!("checkpoints/epoch_0005.{ext}"))).unwrap();
    }
    set_status(&dir, runner::runlog::Status::Interrupted);
    let (code, _, stderr) = run_with("2", &["resume", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the run used 1 threads, this process 2") && stderr.contains("RAYON_NUM_THREADS=1"),
        "{stderr}"
    );
}

/// The CPU kernel level a run ran with (`ops::kernels`) is in its `run.parquet`, beside its
/// thread count, and in each checkpoint; `RUNNER_KERNELS=portable` and `[experiment]
/// kernels = "portable"` both give the AVX2 kernels; a resume at another level than the
/// run's says so; `runner compare` shows the level where runs differ. On a CPU without
/// AVX-512 the two levels are the same, and the test checks that nothing warns.
#[test]
fn runs_record_their_kernel_level_and_resume_warns_when_it_changes() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let run_with = |kernels: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .current_dir(d.path())
            .env("RAYON_NUM_THREADS", "1")
            .env("RUNNER_KERNELS", kernels)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        (stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).map(|p| d.path().join(p)), stdout, stderr)
    };
    let native = runner::ops::kernels::detected();
    let portable = native.min(runner::ops::kernels::Level::Avx2);
    let level_of = |run: &Path| -> (u32, String) {
        let f = std::fs::File::open(run.join("run.parquet")).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().next().unwrap().unwrap();
        let threads = b.column_by_name("threads").unwrap().as_any().downcast_ref::<arrow_array::UInt32Array>().unwrap();
        let kernels = b.column_by_name("kernels").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        (threads.value(0), kernels.value(0).to_string())
    };

    let (a, _, _) = run_with("auto", &["tiny.toml", "--set", "train.epochs=2"]);
    let a = a.unwrap();
    assert_eq!(level_of(&a), (1, native.to_string()));
    let side = std::fs::read_to_string(a.join("checkpoints/epoch_0002.toml")).unwrap();
    assert!(side.contains(&format!("kernels = \"{native}\"")) && side.contains("threads = 1"), "{side}");

    // Stopped after epoch 1, resumed with the portable kernels forced from outside.
    for ext in ["safetensors", "toml"] {
        std::fs::remove_file(a.join(format!("checkpoints/epoch_0002.{ext}"))).unwrap();
    }
    set_status(&a, runner::runlog::Status::Interrupted);
    let (_, _, stderr) = run_with("portable", &["resume", a.to_str().unwrap()]);
    let warned = stderr.contains(&format!("the run used the {native} CPU kernels, this process {portable}"));
    assert_eq!(warned, native != portable, "{stderr}");
    // The record is the starting process's; the new checkpoint says what made it.
    assert_eq!(level_of(&a), (1, native.to_string()));
    let side = std::fs::read_to_string(a.join("checkpoints/epoch_0002.toml")).unwrap();
    assert!(side.contains(&format!("kernels = \"{portable}\"")), "{side}");

    // The config's key asks for the same; compare shows the level where the runs differ.
    let (b, _, _) =
        run_with("auto", &["tiny.toml", "--set", "train.epochs=1", "--set", "experiment.kernels=\"portable\""]);
    let b = b.unwrap();
    assert_eq!(level_of(&b), (1, portable.to_string()));
    let (_, table, _) = run_with("auto", &["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let header = table.lines().next().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns.contains(&"kernels"), native != portable, "{table}");
    assert!(columns.contains(&"experiment.kernels") && !columns.contains(&"threads"), "{table}");
}

/// `[train] ema`: the run saves the average as model.safetensors and the raw weights
/// beside it (they differ), and a run stopped after epoch 1 resumes to the same rows, the
/// same average and the same raw weights, bit for bit (the checkpoint carries the average).
#[test]
fn an_ema_run_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let ema = ["--set", "train.ema={ decay = 0.9, tau = 4.0 }"];
    let out = runner(d.path(), &["tiny.toml", ema[0], ema[1]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);
    let (avg, raw) = (
        std::fs::read(full.join("model.safetensors")).unwrap(),
        std::fs::read(full.join("model_raw.safetensors")).unwrap(),
    );
    assert_ne!(avg, raw, "the average is not the raw weights");
    let side = std::fs::read_to_string(full.join("checkpoints/epoch_0003.toml")).unwrap();
    assert!(side.contains("ema_updates = 24"), "3 epochs of 8 steps: {side}");
    let trained = out.stdout.clone();
    let copy = d.path().join("runs/tiny/stopped_ema");
    stopped_copy(&full, &copy, 1);
    std::fs::remove_file(copy.join("model_raw.safetensors")).unwrap();
    let out = runner(d.path(), &["resume", copy.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(rows(&copy.join("metrics.parquet")), rows(&full.join("metrics.parquet")));
    assert_eq!(std::fs::read(copy.join("model.safetensors")).unwrap(), avg, "the average");
    assert_eq!(std::fs::read(copy.join("model_raw.safetensors")).unwrap(), raw, "the raw weights");
    // `runner eval` on the last checkpoint scores the average, as training did: the same loss.
    let value = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key}: {text}"))
            .to_string()
    };
    let e = runner(d.path(), &["eval", full.to_str().unwrap()]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stderr.contains("evaluating the weights' average"), "{}", e.stderr);
    assert_eq!(value(&e.stdout, "test_eval.loss"), value(&trained, "test.loss"));
}
