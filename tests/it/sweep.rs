//! `runner sweep`, `runner compare` and `runner diff` on tiny runs.

use crate::common::runner;

#[test]
fn a_sweep_of_3_lrs_by_2_seeds() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    let args =
        ["sweep", "tiny.toml", "--grid", "train.optimizer.sgd.lr=0.1,0.03,0.01", "--grid", "seed=0,1", "--jobs", "2"];
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let runs: Vec<_> = std::fs::read_dir(d.path().join("runs/tiny"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("run.parquet").is_file())
        .collect();
    assert_eq!(runs.len(), 6, "six run folders");
    // The table: header, 6 rows, the summary; only the swept keys as parameters.
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(&header[..4], ["run", "status", "experiment.seed", "train.optimizer.sgd.lr"], "{}", out.stdout);
    assert!(header[4..].iter().all(|h| h.starts_with("test.")), "{header:?}");
    let err_col = header.iter().position(|h| *h == "test.error_rate").unwrap();
    let errors: Vec<f64> =
        lines[1..7].iter().map(|l| l.split_whitespace().nth(err_col).unwrap().parse().unwrap()).collect();
    assert!(errors.windows(2).all(|w| w[0] <= w[1]), "sorted by test error: {errors:?}");
    assert!(lines[1..7].iter().all(|l| l.contains("completed")));
    assert!(lines[7].contains("6 completed, 0 not"), "{}", out.stdout);
    // Each point's config.toml records its overrides; run.parquet its sweep id.
    let one = &runs[0].path();
    let cfg = std::fs::read_to_string(one.join("config.toml")).unwrap();
    assert!(cfg.contains("# override: train.optimizer.sgd.lr="), "{cfg}");
    let info = runner::compare::read_run(one).unwrap();
    assert!(info.sweep_id.as_deref().is_some_and(|s| s.starts_with("tiny-")), "{:?}", info.sweep_id);

    // The same command again: every point is done, nothing runs.
    let again = runner(d.path(), &args);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("(6 already completed)"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_dir(d.path().join("runs/tiny"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("run.parquet").is_file())
            .count(),
        6
    );

    // compare: formats, filters, sorting; diff of two points.
    let md = runner(
        d.path(),
        &["compare", "runs/tiny", "--format", "markdown", "--where", "experiment.seed=1", "--metrics", "test.accuracy"],
    );
    assert_eq!(md.code, 0, "{}", md.stderr);
    let md_lines: Vec<&str> = md.stdout.lines().collect();
    assert_eq!(md_lines.len(), 2 + 3, "{}", md.stdout);
    assert!(md_lines[0].starts_with("| run | status |") && md_lines[0].ends_with("| test.accuracy |"), "{}", md.stdout);
    // Filters compare numbers by value; unknown sort keys and parameters are errors.
    let num = runner(d.path(), &["compare", "runs/tiny", "--where", "train.optimizer.sgd.lr=1e-1"]);
    assert_eq!(num.stdout.lines().count(), 1 + 2, "{}", num.stdout);
    let bad = runner(d.path(), &["compare", "runs/tiny", "--sort", "test.acuracy"]);
    assert!(bad.code != 0 && bad.stderr.contains("did you mean `test.accuracy`?"), "{}", bad.stderr);
    let bad = runner(d.path(), &["compare", "runs/tiny", "--where", "train.lr=0.1"]);
    assert!(bad.code != 0 && bad.stderr.contains("--where train.lr: no run has this parameter"), "{}", bad.stderr);
    let csv = runner(d.path(), &["compare", "runs", "--format", "csv", "--sort", "test.loss"]);
    assert_eq!(csv.stdout.lines().count(), 7, "{}", csv.stdout);
    let plot = runner(d.path(), &["compare", "runs/tiny", "--plot", "curves.png", "--metric", "test.loss"]);
    assert_eq!(plot.code, 0, "{}", plot.stderr);
    let img = image::open(d.path().join("curves.png")).unwrap().to_rgb8();
    assert!(img.width() == 800 && img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
    let dirs: Vec<String> = runs.iter().map(|e| e.path().to_string_lossy().into_owned()).collect();
    let diff = runner(d.path(), &["diff", &dirs[0], &dirs[1]]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert!(
        diff.stdout
            .lines()
            .skip(1)
            .all(|l| l.starts_with("experiment.seed") || l.starts_with("train.optimizer.sgd.lr")),
        "{}",
        diff.stdout
    );
}

#[test]
fn bad_sweeps_stop_before_any_run() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    let out = runner(d.path(), &["sweep", "tiny.toml", "--grid", "train.epochs=1,many"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("train.epochs") && out.stderr.contains("the sweep was not started"), "{}", out.stderr);
    assert!(
        !d.path().join("runs/tiny").exists() || std::fs::read_dir(d.path().join("runs/tiny")).unwrap().count() == 0
    );
    let out = runner(d.path(), &["sweep", "tiny.toml", "--zip", "seed=0,1", "--zip", "train.epochs=1"]);
    assert!(out.stderr.contains("zip `train.epochs`: 1 values"), "{}", out.stderr);
}

#[test]
fn a_failing_point_is_marked_and_the_others_go_on() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    // lr 1e30 diverges at the first step: that point fails, the other completes.
    let out = runner(d.path(), &["sweep", "tiny.toml", "--grid", "train.optimizer.sgd.lr=1e30,0.05"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 completed, 1 not"), "{}", out.stdout);
    assert!(out.stdout.contains("failed") && out.stdout.contains("completed"), "{}", out.stdout);
}

#[test]
fn compare_skips_foreign_tables_and_unions_parameters() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    assert_eq!(runner(d.path(), &["tiny.toml"]).code, 0);
    // A second experiment with a key the first does not have.
    let text =
        std::fs::read_to_string(d.path().join("tiny.toml")).unwrap().replace("name = \"tiny\"", "name = \"other\"");
    std::fs::write(d.path().join("other.toml"), text + "\nlabel_smoothing = 0.1\n").unwrap();
    let o = runner(d.path(), &["other.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // A half-written table in a third folder.
    std::fs::create_dir_all(d.path().join("runs/broken/x")).unwrap();
    std::fs::write(d.path().join("runs/broken/x/run.parquet"), b"PAR1 not really").unwrap();
    let out = runner(d.path(), &["compare", "runs"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("skipped") && out.stderr.contains("broken"), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert!(out.stdout.lines().next().unwrap().contains("train.label_smoothing"), "{}", out.stdout);
}

#[test]
fn eval_appends_a_split_and_matches_the_run() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 2);
    let out = runner(d.path(), &["tiny.toml", "--set", "train.checkpoint.best=\"test.loss\""]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = crate::common::run_folder(d.path(), &out);
    let arg = dir.to_string_lossy().into_owned();
    let loss = |text: &str, key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let final_loss = loss(&out.stdout, "test.loss");
    // The last checkpoint is the final model: the same numbers (to the printed digits).
    let e = runner(d.path(), &["eval", &arg]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(loss(&e.stdout, "test_eval.loss"), final_loss, "{}", e.stdout);
    let info = || {
        let m = std::fs::File::open(dir.join("metrics.parquet")).unwrap();
        let b: Vec<arrow_array::RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(m)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        let split =
            b[0].column_by_name("split").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
        let count = |name: &str| (0..arrow_array::Array::len(&split)).filter(|&i| split.value(i) == name).count();
        (count("test_eval"), count("test"))
    };
    let (n, test_rows) = info();
    assert!(n > 0);
    // Regression: the run's own rows stay (an early version kept only the new ones).
    assert!(test_rows >= 2 * 3, "the run's test rows are kept: {test_rows}");
    // Again: the rows are replaced, not doubled; the status stays.
    let e = runner(d.path(), &["eval", &arg]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(info(), (n, test_rows));
    // Other weights get their own split, at their own epoch (regression: they replaced the
    // last weights' rows and were stamped with the last epoch).
    let e = runner(d.path(), &["eval", &arg, "--checkpoint", "best"]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stdout.contains("test_eval_best.loss = "), "{}", e.stdout);
    assert_eq!(info(), (n, test_rows));
    assert_eq!(runner::compare::read_run(&dir).unwrap().status, "completed");
    let e = runner(d.path(), &["eval", &arg, "--split", "val"]);
    assert!(e.stderr.contains("--split val"), "{}", e.stderr);
}

#[test]
fn a_sigterm_reaches_the_points_and_the_same_command_resumes_them() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 40);
    let args = ["sweep", "tiny.toml", "--grid", "seed=0,1", "--jobs", "1"];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .current_dir(d.path())
        .env("RUNNER_CACHE", d.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first point's log grows while it runs: wait for a checkpoint line in it.
    let sweeps = d.path().join("runs/tiny/sweeps");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let log = loop {
        let found = std::fs::read_dir(&sweeps)
            .ok()
            .and_then(|it| it.flatten().find(|e| e.path().is_dir()))
            .map(|e| e.path().join("point_000.log"))
            .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("epoch 2/40")));
        if let Some(p) = found {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no point log grew in time");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(child.try_wait().unwrap().is_none(), "the log was read while the point ran");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("point 1 (experiment.seed=0): interrupted"), "{stderr}");
    assert!(!stderr.contains("point 2"), "no point starts after the stop: {stderr}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("run folder: "));
    // `sweep status` of the folder: the stopped point interrupted, the other pending.
    let dir = log.parent().unwrap().to_string_lossy().into_owned();
    let st = runner(d.path(), &["sweep", "status", &dir]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    let word = |i: usize| st.stdout.lines().nth(1 + i).and_then(|l| l.split_whitespace().nth(1)).map(str::to_string);
    assert_eq!((word(0).as_deref(), word(1).as_deref()), (Some("interrupted"), Some("pending")), "{}", st.stdout);
    assert!(st.stdout.contains("(local): 2 points, 1 interrupted, 1 pending"), "{}", st.stdout);
    // The same command again: the interrupted point resumes in its folder, the other starts.
    let again = runner(d.path(), &args);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("2 completed, 0 not"), "{}", again.stdout);
    let runs = std::fs::read_dir(d.path().join("runs/tiny"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("run.parquet").is_file())
        .count();
    assert_eq!(runs, 2, "the interrupted point went on in its own folder");
    let resumed = std::fs::read_to_string(&log).unwrap();
    assert!(resumed.contains("resuming after epoch"), "{resumed}");
    let st = runner(d.path(), &["sweep", "status", &dir]);
    assert!(st.stdout.contains("2 points, 2 completed"), "{}", st.stdout);
    // Nothing left for `sweep resume`; a local sweep has no jobs to cancel.
    let r = runner(d.path(), &["sweep", "resume", &dir]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = runner(d.path(), &["sweep", "cancel", &dir]);
    assert!(c.code != 0 && c.stderr.contains("a local sweep; stop it with Ctrl-C"), "{}", c.stderr);
    let bad = runner(d.path(), &["sweep", "status", "runs/tiny"]);
    assert!(bad.code != 0 && bad.stderr.contains("not a sweep folder"), "{}", bad.stderr);
}

/// `[sweep.early_stop]` over points whose ranking is known: lr 1e-4 and 1e-6 learn next to
/// nothing in an epoch, lr 0.1 and 0.05 do. Run one after another (`--jobs 1`), ASHA with
/// reduction 2 stops a point at epoch 1 whose accuracy is below the median of the points
/// before it: the two that do not learn. `--random` draws its points from the sweep file's
/// space, the same ones again for the same seed.
#[test]
fn early_stopping_stops_the_points_that_do_not_learn_and_random_points_repeat() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 3);
    std::fs::write(
        d.path().join("stop.toml"),
        "[sweep.early_stop]\nrule = \"asha\"\nmetric = \"test.accuracy\"\nmin_epochs = 1\nreduction = 2\n",
    )
    .unwrap();
    let args =
        ["sweep", "tiny.toml", "--grid", "train.optimizer.sgd.lr=0.1,0.05,0.0001,0.000001", "--file", "stop.toml"];
    let out = runner(d.path(), &args);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 completed, 2 stopped early, 0 not"), "{}", out.stdout);
    let dir = out.stdout.lines().last().and_then(|l| l.split("state in ").nth(1)).unwrap().trim().to_string();
    let st = runner(d.path(), &["sweep", "status", &dir]);
    let lines: Vec<&str> = st.stdout.lines().collect();
    assert!(lines[0].ends_with("4 points, 2 completed, 2 stopped"), "{}", st.stdout);
    for (i, want) in [(0, "completed"), (1, "completed"), (2, "stopped"), (3, "stopped")] {
        assert_eq!(lines[1 + i].split_whitespace().nth(1), Some(want), "{}", st.stdout);
    }
    assert!(lines[3].contains("(after epoch 1)") && lines[4].contains("(after epoch 1)"), "{}", st.stdout);
    // A stopped run holds its one epoch and says `stopped`; resume has nothing to do.
    let run = std::path::PathBuf::from(lines[3].split_whitespace().nth(2).unwrap());
    let run = d.path().join(run);
    assert_eq!(crate::resume::status(&run), "stopped");
    assert!(crate::resume::rows(&run.join("metrics.parquet")).iter().all(|r| r.0 == 0));
    let again = runner(d.path(), &["resume", run.to_str().unwrap()]);
    assert!(again.code != 0 && again.stderr.contains("stopped by its sweep's early stopping"), "{}", again.stderr);
    // compare: the stopped points after those that ran to the end.
    let cmp = runner(d.path(), &["compare", &dir.replace(".toml", ""), "--sort", "test.accuracy"]);
    let statuses: Vec<&str> = cmp.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(statuses, ["completed", "completed", "stopped", "stopped"], "{}", cmp.stdout);
    // The shared table: every epoch of every point, and the two stops.
    let table = std::fs::read_to_string(d.path().join(dir.replace(".toml", "")).join("rungs.tsv")).unwrap();
    assert_eq!(table.lines().filter(|l| l.ends_with("\tstop")).count(), 2, "{table}");
    assert_eq!(table.lines().count(), 1 + 3 + 3 + 1 + 1, "{table}");

    // Random points: seeded, so the same command is the same sweep (nothing runs again).
    std::fs::write(
        d.path().join("space.toml"),
        "[sweep]\nseed = 5\n[sweep.space]\n\"train.optimizer.sgd.lr\" = { log_uniform = [0.001, 0.1] }\n",
    )
    .unwrap();
    let args = ["sweep", "tiny.toml", "--random", "2", "--file", "space.toml", "--set", "train.epochs=1"];
    let first = runner(d.path(), &args);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(first.stdout.contains("2 completed, 0 not"), "{}", first.stdout);
    let again = runner(d.path(), &args);
    assert!(again.stderr.contains("(2 already completed)"), "{}", again.stderr);
    let bad = runner(d.path(), &["sweep", "tiny.toml", "--random", "2"]);
    assert!(bad.code != 0 && bad.stderr.contains("no [sweep.space] to draw from"), "{}", bad.stderr);
}

/// `--devices`: one point per device at a time, the device in each run's config. On this
/// machine (no GPU, no CUDA build) the devices are `cpu` and `auto` (which finds no GPU:
/// the CPU), told apart in the runs' configs; a CUDA device is refused before any point
/// runs, as the plan refuses it for a run.
#[test]
fn devices_run_points_side_by_side_and_are_planned_first() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    let out = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=0,1,2", "--devices", "cpu,auto"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("3 completed, 0 not"), "{}", out.stdout);
    let on = |d: &str| out.stderr.matches(&format!(" on {d} (experiment.seed=")).count();
    assert!(on("cpu") >= 1 && on("auto") >= 1 && on("cpu") + on("auto") == 3, "{}", out.stderr);
    assert!(out.stderr.contains("3 points, 2 at a time"), "{}", out.stderr);
    let cuda = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=3,4", "--devices", "cuda:0,cuda:1"]);
    assert!(cuda.code != 0, "{}", cuda.stdout);
    assert!(
        cuda.stderr.contains("--devices cuda:0: ") && cuda.stderr.contains("needs a CUDA build"),
        "{}",
        cuda.stderr
    );
    let bad = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=3,4", "--devices", "gpu"]);
    assert!(bad.code != 0 && bad.stderr.contains("--devices gpu: expected"), "{}", bad.stderr);
    let twice = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=3,4", "--devices", "cuda:1,cuda:1"]);
    assert!(twice.code != 0 && twice.stderr.contains("lists cuda:1 twice"), "{}", twice.stderr);
    let runs = std::fs::read_dir(d.path().join("runs/tiny")).unwrap().flatten();
    let mut devices: Vec<String> = runs
        .filter_map(|e| runner::compare::read_run(&e.path()).ok())
        .map(|r| r.params.get("experiment.device").cloned().unwrap_or_default())
        .collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices, ["\"auto\"", "\"cpu\""], "each worker's device in its runs' configs");
}

/// A sweep file's `[launcher.slurm]` and `[sweep]` tables: a misspelt key, settings Slurm
/// would refuse and a bad distribution are errors naming the file (before any submission,
/// so no Slurm is needed here).
#[test]
fn sweep_file_errors_name_the_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 1);
    let write = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
    write("typo.toml", "[launcher.slurm]\npartiton = \"gpu\"\n");
    let e = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=0,1", "--file", "typo.toml"]);
    assert!(e.code != 0 && e.stderr.contains("typo.toml") && e.stderr.contains("partiton"), "{}", e.stderr);
    write("limit.toml", "[launcher.slurm]\ntime = \"2\"\nstop_before = 200\n");
    let e =
        runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=0,1", "--file", "limit.toml", "--launcher", "slurm"]);
    assert!(e.code != 0 && e.stderr.contains("limit.toml [launcher.slurm]"), "{}", e.stderr);
    assert!(e.stderr.contains("--stop-before 200 (seconds) is not shorter than --time 2 (120 s)"), "{}", e.stderr);
    write("space.toml", "[sweep.space]\n\"train.optimizer.sgd.lr\" = { log_uniform = [0.0, 0.1] }\n");
    let e = runner(d.path(), &["sweep", "tiny.toml", "--random", "2", "--file", "space.toml"]);
    assert!(e.code != 0 && e.stderr.contains("space.toml") && e.stderr.contains("0 < low < high"), "{}", e.stderr);
    write("stop.toml", "[sweep.early_stop]\nmetric = \"test.acuracy\"\n");
    let e = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=0,1", "--file", "stop.toml"]);
    assert!(
        e.code != 0 && e.stderr.contains("stop.toml") && e.stderr.contains("metric `test.acuracy`"),
        "{}",
        e.stderr
    );
    // The settings of a sweep file without --launcher slurm wait for it; on the command line
    // they are refused.
    let e = runner(d.path(), &["sweep", "tiny.toml", "--grid", "seed=0,1", "--partition", "gpu"]);
    assert!(e.code != 0 && e.stderr.contains("need --launcher slurm"), "{}", e.stderr);
}
