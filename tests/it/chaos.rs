//! kill -9 at random moments: whatever moment the process dies at (in a batch, in the
//! evaluation, while tables or checkpoints are written), every table and checkpoint left
//! in the folder opens, and `runner resume` ends with the metrics and the final weights of
//! the run that was never killed, bit for bit. Likewise a run stopped by a file-size limit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{run_folder, runner};
use crate::resume::{rows, setup, status};

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every parquet table, safetensors checkpoint and TOML sidecar in `dir` reads whole.
fn all_files_open(dir: &Path, moment: &str) {
    for p in files(dir) {
        let name = p.display().to_string();
        match p.extension().and_then(|e| e.to_str()) {
            Some("parquet") => {
                let f = std::fs::File::open(&p).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                    .unwrap_or_else(|e| panic!("{moment}: {name} does not open: {e}"));
                for b in reader.build().unwrap() {
                    b.unwrap_or_else(|e| panic!("{moment}: {name} does not read: {e}"));
                }
            }
            Some("safetensors") => {
                candle_core::safetensors::load(&p, &candle_core::Device::Cpu)
                    .unwrap_or_else(|e| panic!("{moment}: {name} does not open: {e}"));
            }
            Some("toml") => {
                let text = std::fs::read_to_string(&p).unwrap();
                text.parse::<toml::Table>().unwrap_or_else(|e| panic!("{moment}: {name} does not parse: {e}"));
            }
            _ => {}
        }
    }
}

#[test]
fn kill_9_at_ten_random_moments_then_resume_equals_one_run() {
    // The uninterrupted run (resume's tiny experiment, 24 epochs: about a second here): the
    // rows and weights every killed run must end with, and its length, over which the kills
    // are spread.
    let d = tempfile::tempdir().unwrap();
    let exp = setup(d.path());
    let epochs = ["--set", "train.epochs=24"];
    let started = Instant::now();
    let out = runner(d.path(), &[&[exp.to_str().unwrap(), "-q"][..], &epochs].concat());
    let length = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);
    let want_rows = rows(&full.join("metrics.parquet"));
    let want_weights = std::fs::read(full.join("model.safetensors")).unwrap();

    // Ten moments drawn from a fixed seed, one in each tenth of the run (its start, with
    // the folder being made, included).
    let mut rng = runner::rng::Rng::new(15);
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let at = length.mul_f64((i as f64 + rng.next_f64()) / 10.0);
        let moment = format!("kill {} at {:.0} ms of {:.0}", i + 1, at.as_secs_f64() * 1e3, length.as_secs_f64() * 1e3);
        let cwd = tempfile::tempdir().unwrap();
        let exp = setup(cwd.path());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args([exp.to_str().unwrap(), "-q"])
            .args(epochs)
            .current_dir(cwd.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let runs = cwd.path().join("runs/tiny");
        let published: Vec<PathBuf> = std::fs::read_dir(&runs)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        let Some(dir) = published.first() else {
            // Killed before the folder was published: nothing of the run to keep; a rerun
            // starts it again beside the hidden `.part` folder.
            outcomes.push(format!("{moment}: before the folder was published"));
            let out = runner(cwd.path(), &[&[exp.to_str().unwrap(), "-q"][..], &epochs].concat());
            assert_eq!(out.code, 0, "{moment}: {}", out.stderr);
            let dir = run_folder(cwd.path(), &out);
            assert_eq!(rows(&dir.join("metrics.parquet")), want_rows, "{moment}: metrics of the rerun");
            continue;
        };
        all_files_open(dir, &moment);
        let st = status(dir);
        outcomes.push(format!("{moment}: {st}"));
        if st != "completed" {
            let out = runner(cwd.path(), &["resume", dir.to_str().unwrap()]);
            assert_eq!(out.code, 0, "{moment} ({st}): {}", out.stderr);
            let how = out.stderr.lines().find(|l| l.contains("resuming") || l.contains("were finished"));
            outcomes.push(format!("  {}", how.map_or("resumed", |l| l.split("INFO ").last().unwrap_or(l))));
        }
        assert_eq!(status(dir), "completed", "{moment}");
        all_files_open(dir, &moment);
        assert_eq!(rows(&dir.join("metrics.parquet")), want_rows, "{moment}: metrics");
        assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), want_weights, "{moment}: final weights");
    }
    // Visible in the test output (cargo test -- --nocapture) and in a failure message.
    eprintln!("chaos: {}", outcomes.join("; "));
}

/// A file-size limit (`ulimit -f`, as on a full disk) while the first epoch's tables and
/// checkpoint are written: the run fails with an error naming the file (without the
/// SIGXFSZ handler the process was killed, leaving `roc_test.parquet.tmp`), leaves no
/// partial file, and resumes, without the limit, to the run that never failed.
#[test]
fn a_file_size_limit_fails_the_run_cleanly_and_resume_finishes_it() {
    let epochs = ["--set", "train.epochs=4"];
    let d = tempfile::tempdir().unwrap();
    let exp = setup(d.path());
    let out = runner(d.path(), &[&[exp.to_str().unwrap(), "-q"][..], &epochs].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);

    let cwd = tempfile::tempdir().unwrap();
    let exp = setup(cwd.path());
    // 8 blocks: 4 KiB where `sh` counts 512-byte blocks (dash), 8 KiB where it counts
    // 1024 (bash); the ROC table (10 KB) and the checkpoint (13 KB) are larger either way.
    let limited = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f 8 && exec \"$0\" \"$1\" -q {}", epochs.join(" ")))
        .args([env!("CARGO_BIN_EXE_runner"), exp.to_str().unwrap()])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&limited.stderr);
    assert_eq!(limited.status.code(), Some(2), "{:?}: {stderr}", limited.status);
    assert!(stderr.contains("File too large") && stderr.contains("cannot write runs/tiny/"), "{stderr}");
    let runs = cwd.path().join("runs/tiny");
    let leftovers: Vec<PathBuf> = files(&runs).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "partial files: {leftovers:?}");
    let dir = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    all_files_open(&dir, "after the limit");
    assert_eq!(status(&dir), "failed");

    let out = runner(cwd.path(), &["resume", dir.to_str().unwrap(), "-q"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(&dir), "completed");
    assert_eq!(rows(&dir.join("metrics.parquet")), rows(&full.join("metrics.parquet")));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(full.join("model.safetensors")).unwrap()
    );
}
