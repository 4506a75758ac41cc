//! TensorBoard event files, read by TensorBoard's own reader (from the package index, in
//! the tests' venv: tests/check_tensorboard.py): every scalar of metrics.parquet at its
//! step, the config as text, the plots as images, every record's CRC checked; a resumed
//! run's file holds no step twice; `[log] tensorboard = false` writes none.

use std::path::Path;
use std::process::Command;

use crate::common::{python_or, repo, run_folder, runner, skip};

/// tests/check_tensorboard.py on `run`: `(scalars, images)`, or `None` where tensorboard
/// or pyarrow is missing (a failure under `make test`, which installs them).
fn tensorboard_reads(run: &Path) -> Option<(usize, usize)> {
    let python = python_or("python3");
    let out = Command::new(&python).arg(repo().join("tests/check_tensorboard.py")).arg(run).output();
    let what = "tensorboard::check_tensorboard.py";
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().find_map(|l| l.strip_prefix("tensorboard ok ")).unwrap_or_else(|| panic!("{text}"));
            let n: Vec<usize> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
            Some((n[0], n[1]))
        }
        Ok(o) if o.status.code() == Some(3) => {
            skip(what, &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_TENSORBOARD");
            None
        }
        Ok(o) => panic!(
            "check_tensorboard.py on {}:\n{}{}",
            run.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(what, &format!("no {} ({e})", python.display()), "RUNNER_REQUIRE_TENSORBOARD");
            None
        }
    }
}

#[test]
fn a_runs_curves_open_in_tensorboard_and_a_resume_adds_no_step_twice() {
    let d = tempfile::tempdir().unwrap();
    crate::resume::setup(d.path());
    let out = runner(d.path(), &["tiny.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let full = run_folder(d.path(), &out);
    if let Some((scalars, images)) = tensorboard_reads(&full) {
        // 3 epochs of lr rows (8 steps each) and the per-epoch metrics, and the plots.
        assert!(scalars > 3 * 8 + 3 * 6, "{scalars}");
        assert!(images >= 2, "{images}");
    }
    // Stopped after epoch 1 with its event file holding all three epochs (as a copy of the
    // finished run leaves it), then resumed: rewritten from the kept rows, then appended.
    let copy = d.path().join("runs/tiny/stopped");
    crate::resume::stopped_copy(&full, &copy, 1);
    let out = runner(d.path(), &["resume", copy.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    tensorboard_reads(&copy);
    // Turned off: no tb/ folder.
    let out = runner(d.path(), &["tiny.toml", "--set", "log.tensorboard=false", "--set", "train.epochs=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!run_folder(d.path(), &out).join("tb").exists());
}
