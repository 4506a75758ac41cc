//! `runner sweep --launcher slurm` on a real one-node Slurm (Debian's slurmctld, slurmd,
//! slurm-client and munge), started on 127.0.0.1 by tests/slurm/cluster.sh and stopped by
//! pid when the test ends. No mock: sbatch, squeue, scancel and requeue are Slurm's own.
//!
//! The module is named so that its one test starts among the first of the suite (it waits
//! more than it computes). One test, so that one cluster serves every case and the waits
//! overlap: a 4-point array
//! with `%2` whose tables equal the same sweep run locally (two points fail: status names
//! their logs); `scancel` of a running array task, then `sweep resume`; a point whose time
//! limit is shorter than its run, requeued, that ends bitwise equal to an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Output};
use crate::resume::rows;

const PORT: u16 = 16817;

struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the cluster; `Err` when Slurm is not installed (then the test is skipped).
    /// Installed but not starting is a failure.
    fn start() -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let script = common::repo().join("tests/slurm/cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .arg(PORT.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        let cluster = Cluster { dir };
        if out.status.code() == Some(3) {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        if !out.status.success() {
            panic!(
                "cluster.sh start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cluster)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = common::repo().join("tests/slurm/cluster.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(self.dir.path()).status();
    }
}

/// `runner ARGS` in `cwd` with the cluster's config, one thread per process.
fn run(cluster: &Cluster, cwd: &Path, args: &[&str]) -> Output {
    let conf = cluster.conf();
    common::runner_with(cwd, args, &[("SLURM_CONF", conf.as_os_str()), ("RAYON_NUM_THREADS", "1".as_ref())])
}

/// `sweep ... submitted to Slurm as job N (array ...)` -> (N, the sweep folder).
fn submitted(out: &Output) -> (String, String) {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let job = out
        .stdout
        .split("submitted to Slurm as job ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {}", out.stdout));
    let dir = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("status: runner sweep status "))
        .unwrap_or_else(|| panic!("no status command in {}", out.stdout));
    (job.to_string(), dir.to_string())
}

/// `sweep status`'s point lines: index -> (status, run folder or log).
fn statuses(cluster: &Cluster, cwd: &Path, dir: &str) -> (Vec<(String, String)>, String) {
    let out = run(cluster, cwd, &["sweep", "status", dir]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let points = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let status = w.next().unwrap_or_default().to_string();
            let mut place = w.next().unwrap_or_default().to_string();
            if place == "log" {
                place = w.next().unwrap_or_default().to_string();
            }
            // Shown relative to the folder the command ran in.
            (status, if place == "-" { place } else { cwd.join(place).to_string_lossy().into_owned() })
        })
        .collect();
    (points, out.stdout)
}

/// Polls `sweep status` until `done` holds for its points (at most `limit`).
fn wait_for(
    cluster: &Cluster,
    cwd: &Path,
    dir: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let (points, text) = statuses(cluster, cwd, dir);
        if done(&points) {
            return points;
        }
        if start.elapsed() > limit {
            let logs = cluster.dir.path().join("slurmctld.log");
            panic!(
                "{what}: not after {limit:?}:\n{text}\nslurmctld.log tail:\n{}",
                std::fs::read_to_string(logs).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn all(points: &[(String, String)], status: &str) -> bool {
    points.iter().all(|(s, _)| s == status)
}

/// Run folders of `root` keyed by their `experiment.seed` and learning rate.
fn by_point(root: &Path) -> std::collections::BTreeMap<(String, String), PathBuf> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let Ok(info) = runner::compare::read_run(&e.path()) else { continue };
        let p = |k: &str| info.params.get(k).cloned().unwrap_or_default();
        out.insert((p("experiment.seed"), p("train.optimizer.sgd.lr")), e.path());
    }
    out
}

#[test]
fn sweeps_on_a_one_node_slurm() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            common::skip("cluster::sweeps_on_a_one_node_slurm", &why, "RUNNER_REQUIRE_SLURM");
            return;
        }
    };
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    crate::end_to_end::setup(cwd, 2);
    // A larger set for the long points: 20000 images x 150 epochs, over a minute on one
    // thread here (the tiny model trains about 50000 images a second), longer than Slurm
    // takes to send the time-limit warning (up to 45 s after the start).
    common::write_toy_mnist(&cwd.join("data/long"), 20000, 200);
    let long = ["--set", "data.root=\"data/long\"", "--set", "train.epochs=LONG_EPOCHS", "--set", "train.log_every=0"];
    let long_epochs = std::env::var("RUNNER_SLURM_LONG_EPOCHS").unwrap_or_else(|_| "150".into());
    let long: Vec<String> = long.iter().map(|s| s.replace("LONG_EPOCHS", &long_epochs)).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();

    // 3. Submitted first, as it waits longest: one point with a one-minute limit, asked to
    // stop 45 s before it, requeued, resumed from its checkpoint (Slurm holds a requeued
    // job about two minutes).
    let mut args = vec!["sweep", "tiny.toml", "--grid", "seed=0", "--set", "experiment.output_dir=\"requeued\""];
    args.extend(&long);
    args.extend(["--launcher", "slurm", "--time", "1", "--stop-before", "45", "--requeue"]);
    let started = Instant::now();
    let (_, requeue_dir) = submitted(&run(&cluster, cwd, &args));
    let script = std::fs::read_to_string(cwd.join(&requeue_dir).join("sweep.sbatch")).unwrap();
    for line in ["#SBATCH --time=1", "#SBATCH --signal=B:USR1@45", "#SBATCH --requeue", " sweep point "] {
        assert!(script.contains(line), "{line} not in the batch script:\n{script}");
    }

    // 1. Four points, two at a time; lr 1e9 diverges, so two of them fail.
    let grid = ["--grid", "train.optimizer.sgd.lr=0.05,1e9", "--grid", "seed=0,1"];
    let mut args = vec!["sweep", "tiny.toml"];
    args.extend(grid);
    args.extend(["--launcher", "slurm", "--max-parallel", "2"]);
    let t = Instant::now();
    let out = run(&cluster, cwd, &args);
    let submit_s = t.elapsed().as_secs_f64();
    assert!(
        out.stdout.contains("4 points submitted to Slurm as job") && out.stdout.contains("(array 0-3%2)"),
        "{}",
        out.stdout
    );
    let (_, dir) = submitted(&out);
    let points = wait_for(&cluster, cwd, &dir, Duration::from_secs(300), "the 4-point sweep ends", |p| {
        p.iter().all(|(s, _)| s == "completed" || s == "failed")
    });
    let all_done_s = t.elapsed().as_secs_f64();
    let failed: Vec<&(String, String)> = points.iter().filter(|(s, _)| s == "failed").collect();
    assert_eq!(failed.len(), 2, "{points:?}");
    for (_, log) in &failed {
        let text = std::fs::read_to_string(cwd.join(log)).unwrap_or_else(|e| panic!("{log}: {e}"));
        assert!(text.contains("training diverged"), "{log}:\n{text}");
    }
    // The same sweep here, in another output folder: the same tables, bit for bit.
    let mut args = vec!["sweep", "tiny.toml", "--set", "experiment.output_dir=\"local\"", "--jobs", "2"];
    args.extend(grid);
    let local = run(&cluster, cwd, &args);
    assert_eq!(local.code, 1, "two points fail here too: {}\n{}", local.stdout, local.stderr);
    let (on_slurm, here) = (by_point(&cwd.join("runs/tiny")), by_point(&cwd.join("local/tiny")));
    assert_eq!(on_slurm.len(), 4, "{on_slurm:?}");
    assert_eq!(on_slurm.keys().collect::<Vec<_>>(), here.keys().collect::<Vec<_>>());
    for (k, a) in &on_slurm {
        let b = &here[k];
        assert_eq!(rows(&a.join("metrics.parquet")), rows(&b.join("metrics.parquet")), "point {k:?}");
        if k.1 == "0.05" {
            let w = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
            assert_eq!(w(a), w(b), "weights of point {k:?}");
        }
    }
    let cmp = run(&cluster, cwd, &["compare", &dir]);
    assert_eq!(cmp.code, 0, "{}", cmp.stderr);

    // 2. A long point; its array task cancelled once it has a checkpoint.
    let mut args = vec!["sweep", "tiny.toml", "--grid", "seed=0", "--set", "experiment.output_dir=\"cancelled\""];
    args.extend(&long);
    args.extend(["--launcher", "slurm"]);
    let (job, cancel_dir) = submitted(&run(&cluster, cwd, &args));
    let points = wait_for(&cluster, cwd, &cancel_dir, Duration::from_secs(300), "point 0 runs", |p| {
        p[0].0 == "running" && Path::new(&p[0].1).join("checkpoints").read_dir().is_ok_and(|mut r| r.next().is_some())
    });
    let out = Command::new("scancel").arg(format!("{job}_0")).env("SLURM_CONF", cluster.conf()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stopped = wait_for(&cluster, cwd, &cancel_dir, Duration::from_secs(120), "point 0 stops", |p| {
        p[0].0 == "interrupted" || p[0].0 == "cancelled"
    });
    let cancelled_run = PathBuf::from(&points[0].1);
    assert_eq!(crate::resume::status(&cancelled_run), "interrupted", "{stopped:?}");
    // Its reference meanwhile: the same point, never stopped, here.
    let mut args = vec!["tiny.toml", "--set", "experiment.seed=0", "--set", "experiment.output_dir=\"reference\""];
    args.extend(&long);
    let reference = run(&cluster, cwd, &args);
    assert_eq!(reference.code, 0, "{}", reference.stderr);
    let reference = common::run_folder(cwd, &reference);
    let out = run(&cluster, cwd, &["sweep", "resume", &cancel_dir]);
    assert!(out.stdout.contains("1 point submitted again as Slurm job"), "{}\n{}", out.stdout, out.stderr);
    let points = wait_for(&cluster, cwd, &cancel_dir, Duration::from_secs(300), "the cancelled point resumes", |p| {
        all(p, "completed")
    });
    let same = |run: &Path, what: &str| {
        assert_eq!(rows(&run.join("metrics.parquet")), rows(&reference.join("metrics.parquet")), "{what}");
        let w = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert_eq!(w(run), w(&reference), "{what}: weights");
    };
    assert_eq!(PathBuf::from(&points[0].1), cancelled_run, "resumed in its own folder");
    same(&cancelled_run, "cancelled, then resumed");

    // 3. again: the requeued point ends complete, bitwise equal.
    // Each attempt runs under a minute, then Slurm holds the requeued task about two. Slurm
    // 22.05 here sometimes sends the early warning again within a second of a requeued
    // task's start (seen in every other attempt under the whole suite's load): that attempt
    // stops after an epoch or two and is requeued once more. Five attempts took 10 min.
    let points =
        wait_for(&cluster, cwd, &requeue_dir, Duration::from_secs(1200), "the requeued point completes", |p| {
            all(p, "completed")
        });
    let log = std::fs::read_to_string(cwd.join(&requeue_dir).join("point_000.log")).unwrap();
    assert!(
        log.contains("stopped before the time limit; requeued") && log.contains("resuming after epoch"),
        "the point was not stopped by its time limit and requeued (if it ended first, raise \
         RUNNER_SLURM_LONG_EPOCHS from {long_epochs}):\n{}",
        log.lines().filter(|l| !l.contains(" batch ")).collect::<Vec<_>>().join("\n")
    );
    same(Path::new(&points[0].1), "stopped at its time limit, requeued");
    eprintln!(
        "slurm: the 4-point sweep returned in {submit_s:.2} s and ended {all_done_s:.0} s after it was submitted; \
         the requeued point ended {:.0} s after its submission",
        started.elapsed().as_secs_f64()
    );
}
