//! The command line: `runner EXP` trains; `runner check EXP` and `runner config EXP` stop
//! after the plan and after the merge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

mod data;

use crate::board::Board;
use crate::config::{self, DatasetKind, LoadOptions, Tta};
use crate::data::{spec, Located};
use crate::ops::kernels;
use crate::plan::Plan;
use crate::runlog::{files, Status};
use crate::schedule::Position;
use crate::sweep::Request;
use crate::train::{EvalOverrides, Outcome};
use crate::{board, compare, export, model, plan, predict, progress, signals, sweep, train};

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "Declarative deep-learning experiments for computer vision",
    subcommand_precedence_over_arg = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: ExpArgs,
    /// Less output: warnings and errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Args, Debug, Default)]
struct ExpArgs {
    /// The experiment file, e.g. experiments/lenet5_fashion_mnist.toml.
    experiment: Option<PathBuf>,
    /// Override a config key: --set train.epochs=2 (value in TOML syntax). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The sweep this run is a point of (set by `runner sweep` for each point it starts).
    #[arg(long, hide = true, value_name = "ID")]
    sweep_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train and evaluate an experiment (the default command).
    Run(ExpArgs),
    /// Validate an experiment and print its plan and model summary; trains nothing.
    Check(ExpArgs),
    /// Print the merged config and, per key, the file or override that set it.
    Config(ExpArgs),
    /// Dataset tools.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Class scores for image files (`#<rank> <score> <class>`), or a detector's boxes
    /// (`<class> <score> <xmin> <ymin> <xmax> <ymax>`, drawn into --out).
    Predict(PredictArgs),
    /// A run's (or an experiment's) model as an ONNX graph for onnxruntime, or its weights as
    /// a PyTorch state dict (torchvision's names and layouts, for `load_state_dict(...,
    /// strict=True)`).
    Export(ExportArgs),
    /// Continue an interrupted or failed run in its folder, from its last checkpoint.
    Resume(ResumeArgs),
    /// One row per run: status, the parameters that differ, final metrics.
    Compare(CompareArgs),
    /// The config keys that differ between two runs, side by side.
    Diff(DiffArgs),
    /// Run an experiment over a grid, zipped lists or random draws of overrides, each point an ordinary run, here or on Slurm.
    Sweep(Box<SweepArgs>),
    /// Evaluate a run's saved model again and append the metrics to its tables.
    Eval(EvalArgs),
    /// A local web page of the runs: table, curves (live while training), configs, plots.
    Board(BoardArgs),
}

#[derive(Args, Debug)]
struct BoardArgs {
    /// Folders holding run folders (default: runs).
    dirs: Vec<PathBuf>,
    /// The port to listen on (0: any free one).
    #[arg(long, default_value_t = 6006)]
    port: u16,
    /// The address to listen on; anything but a loopback address lets other machines read
    /// the runs.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[derive(Args, Debug)]
struct EvalArgs {
    run_dir: PathBuf,
    /// best, last, or a weights file.
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// test or train (through the test augmentations).
    #[arg(long, default_value = "test")]
    split: String,
    /// none or ten_crop.
    #[arg(long)]
    tta: Option<String>,
    /// Evaluate the weights under this experiment file instead of the run's config (the same
    /// parameters; e.g. experiments/overfeat_shapes_dense.toml). Rows go to split
    /// `<split>_<file stem>`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config key for the evaluation. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Run folders, or folders holding runs (searched below), e.g. runs/ or runs/lenet5_mnist.
    #[arg(default_value = "runs")]
    paths: Vec<PathBuf>,
    /// Show every parameter, not only those that differ.
    #[arg(long)]
    all_params: bool,
    /// Sort by this final metric, best first (lowest for loss and error metrics).
    #[arg(long)]
    sort: Option<String>,
    /// Keep runs whose parameter KEY has VALUE. Repeatable.
    #[arg(long = "where", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// The metric columns, comma-separated (default: every final metric).
    #[arg(long, value_delimiter = ',')]
    metrics: Option<Vec<String>>,
    /// table, csv or markdown.
    #[arg(long, default_value = "table")]
    format: String,
    /// Also draw the runs' curves of --metric into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The metric to plot, as split.metric (default: the task's: test.map50 for detection,
    /// test.miou for segmentation, test.localization_error for localization, else
    /// test.accuracy).
    #[arg(long)]
    metric: Option<String>,
}

#[derive(Args, Debug)]
struct DiffArgs {
    run_a: PathBuf,
    run_b: PathBuf,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SweepArgs {
    #[command(subcommand)]
    action: Option<SweepAction>,
    /// The experiment file; its `[sweep]` table (grid, zip) adds to the options.
    #[arg(required = true)]
    experiment: Option<PathBuf>,
    /// N points drawn from the `[sweep.space]` distributions (seeded by `[sweep] seed`),
    /// crossed with the grid.
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// A sweep file: `[sweep]` (grid, zip, random, space, early_stop; over the experiment's)
    /// and `[launcher.slurm]`.
    #[arg(long, value_name = "SWEEP.toml")]
    file: Option<PathBuf>,
    /// Where the points run: `local` (here, --jobs at a time) or `slurm` (one job array;
    /// the command returns once it is submitted).
    #[arg(long, value_name = "local|slurm")]
    launcher: Option<String>,
    #[command(flatten)]
    slurm: SlurmArgs,
    /// KEY=V1,V2,...: every combination with the other grids. Repeatable.
    #[arg(long = "grid", value_name = "KEY=V1,V2")]
    grids: Vec<String>,
    /// KEY=V1,V2,...: zipped with the other --zip lists (same length), crossed with the grids.
    #[arg(long = "zip", value_name = "KEY=V1,V2")]
    zips: Vec<String>,
    /// Runs at a time, each a separate process (threads per run: cores / jobs).
    #[arg(long, alias = "parallel", default_value_t = 1)]
    jobs: usize,
    /// Local points side by side, one per device: cuda:0,cuda:1 (the run records its device).
    #[arg(long, value_delimiter = ',', value_name = "DEVICES")]
    devices: Vec<String>,
    /// Overrides for every point (as for a run). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// `--launcher slurm`'s settings (also `[launcher.slurm]` in a sweep file).
#[derive(Args, Debug)]
struct SlurmArgs {
    /// Slurm partition.
    #[arg(long, help_heading = "Slurm")]
    partition: Option<String>,
    /// Time limit per point (MM, HH:MM:SS, D-HH:MM, ...).
    #[arg(long, help_heading = "Slurm")]
    time: Option<String>,
    /// CPUs per point; the point runs that many threads (1 without it).
    #[arg(long, help_heading = "Slurm")]
    cpus_per_task: Option<usize>,
    /// GPUs per point.
    #[arg(long, help_heading = "Slurm")]
    gpus_per_task: Option<usize>,
    /// Memory per node, as sbatch takes it (16G).
    #[arg(long, help_heading = "Slurm")]
    mem: Option<String>,
    /// Points running at once (`--array=...%K`).
    #[arg(long, help_heading = "Slurm")]
    max_parallel: Option<usize>,
    /// Any other sbatch option, e.g. --sbatch-arg=--account=lab. Repeatable.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true, help_heading = "Slurm")]
    sbatch_args: Vec<String>,
    /// A point stopped near its time limit is requeued and resumes from its checkpoint.
    #[arg(long, help_heading = "Slurm")]
    requeue: bool,
    /// Seconds before the time limit at which a point stops with a checkpoint (default 120).
    #[arg(long, value_name = "SECONDS", help_heading = "Slurm")]
    stop_before: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum SweepAction {
    /// One line per point: pending, running, completed, stopped (early), failed (with its
    /// log), interrupted or cancelled.
    Status {
        /// The sweep folder, e.g. runs/tiny/sweeps/tiny-1a2b3c4d.
        dir: PathBuf,
    },
    /// The points not completed, each from its checkpoint: submitted to Slurm again, or run
    /// here.
    Resume {
        dir: PathBuf,
        /// Runs at a time, for a local sweep.
        #[arg(long, alias = "parallel", default_value_t = 1)]
        jobs: usize,
        /// For a local sweep: one point per device at a time (cuda:0,cuda:1).
        #[arg(long, value_delimiter = ',', value_name = "DEVICES")]
        devices: Vec<String>,
    },
    /// Cancels a Slurm sweep's jobs (`scancel`); running points stop with a checkpoint.
    Cancel { dir: PathBuf },
    /// Runs point INDEX of the sweep in DIR: what each Slurm array task runs.
    #[command(hide = true)]
    Point { dir: PathBuf, index: usize },
}

#[derive(Args, Debug)]
struct ResumeArgs {
    /// The run folder, e.g. runs/lenet5_fashion_mnist/20261128-094002-148-00.
    run_dir: PathBuf,
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// An experiment file (with --weights or group `init` files) or a run folder (its
    /// config.toml and model.safetensors).
    target: PathBuf,
    /// JPEG or PNG images; each goes through the experiment's test augmentations.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Weights for the whole model: safetensors or a PyTorch state dict (.pth).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Class names: one per line, or the {0: 'name', ...} format of imagenet1000_clsid_to_human.txt.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Override a config key (as for a run). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Detection: write each image with its boxes drawn into this folder (`<stem>.png`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Detection: print and draw the boxes scoring at least this (default 0.25; the mAP
    /// keeps `task.detect.score_min`). Higher scores are drawn over lower ones.
    #[arg(long)]
    score_min: Option<f64>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// A run folder (its config.toml and model.safetensors), or an experiment or model file
    /// (with --weights, its groups' `init` files, or else its seeded initialisation).
    target: PathBuf,
    /// `onnx` (the eval-mode graph, for onnxruntime), `pth` (torch.save's zip of the state
    /// dict, for torch.load) or `safetensors` (the state dict).
    #[arg(long, default_value = "pth")]
    format: String,
    /// ONNX: the opset to write, 13 to 21 [default: 17].
    #[arg(long)]
    opset: Option<i64>,
    /// ONNX: the batch dimension is any size (`batch`) instead of 1.
    #[arg(long)]
    dynamic_batch: bool,
    /// ONNX: the height and width are any size (models whose every layer allows it: fully
    /// convolutional, upsampling by a scale); the output is then always a map.
    #[arg(long)]
    dynamic_size: bool,
    /// ONNX: the weights go to `<out>.data` beside the file (ONNX's external data; needed
    /// past 2 GiB of weights). Keep the two files together.
    #[arg(long)]
    external_data: bool,
    /// ONNX: fold each batch norm that follows a convolution into that convolution.
    #[arg(long)]
    fold_bn: bool,
    /// The file to write; default `<run id or file stem>.<format>` here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Weights for the whole model: safetensors or a PyTorch state dict (.pth).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Override a config key (as for a run). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

pub fn main() -> Result<ExitCode> {
    if let Some(msg) = std::env::args().nth(1).and_then(|first| not_a_command(&first)) {
        anyhow::bail!(msg);
    }
    let cli = Cli::parse();
    progress::init_logging(if cli.quiet { -1 } else { cli.verbose.min(2) as i8 });
    kernels::from_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        None => train(cli.run),
        Some(Command::Run(args)) => train(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Config(args)) => show_config(args),
        Some(Command::Data(cmd)) => data::run(cmd),
        Some(Command::Predict(args)) => predict(args),
        Some(Command::Export(args)) => export(args),
        Some(Command::Resume(args)) => resume(args),
        Some(Command::Compare(args)) => compare(args),
        Some(Command::Diff(args)) => diff(args),
        Some(Command::Sweep(args)) => sweep(*args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Board(args)) => {
            let dirs = if args.dirs.is_empty() { vec![PathBuf::from("runs")] } else { args.dirs };
            board::serve(Board::new(dirs)?, &args.host, args.port)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The first argument when it is neither a command nor an experiment file, and does not
/// look like a path: `runner chek X.toml` says so (clap would say "unexpected argument
/// 'X.toml'", about the wrong word), with the nearest command.
fn not_a_command(first: &str) -> Option<String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
    names.push("help");
    if first.starts_with('-') || first.contains(['.', '/']) || names.contains(&first) || Path::new(first).exists() {
        return None;
    }
    let hint = config::load::did_you_mean(first, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
    Some(format!("`{first}` is neither an experiment file nor a command{hint}; the commands: {}", names.join(", ")))
}

fn eval(args: EvalArgs) -> Result<ExitCode> {
    let tta = match args.tta.as_deref() {
        None => None,
        Some("none") => Some(Tta::None),
        Some("ten_crop") => Some(Tta::TenCrop),
        Some(other) => anyhow::bail!("--tta {other}: expected none or ten_crop"),
    };
    let other = EvalOverrides { config: args.config, sets: args.sets };
    let (split, values) = train::eval_run(&args.run_dir, &args.checkpoint, &args.split, tta, &other)?;
    for (k, v) in &values {
        println!("{k} = {v:.4}");
    }
    println!("appended to {} as split {split}", args.run_dir.join(files::METRICS).display());
    Ok(ExitCode::SUCCESS)
}

fn compare(args: CompareArgs) -> Result<ExitCode> {
    let format: compare::Format = args.format.parse().map_err(anyhow::Error::msg)?;
    let (runs, warnings) = compare::collect(&args.paths)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if runs.is_empty() {
        anyhow::bail!(
            "no runs found under {}",
            args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(png) = &args.plot {
        // The task's headline metric, classification's accuracy (curves read better rising).
        let default = match compare::headline(&runs) {
            Some("test.error_rate" | "test.loss") | None => "test.accuracy",
            Some(m) => m,
        };
        compare::compare_curves(&runs, args.metric.as_deref().unwrap_or(default), png)?;
        tracing::info!("wrote {}", png.display());
    }
    let opts = compare::Options {
        all_params: args.all_params,
        sort: args.sort,
        filters: compare::parse_filters(&args.filters)?,
        metrics: args.metrics,
        format,
    };
    print!("{}", compare::table(runs, &opts)?);
    Ok(ExitCode::SUCCESS)
}

fn diff(args: DiffArgs) -> Result<ExitCode> {
    let a = compare::read_run(&args.run_a)?;
    let b = compare::read_run(&args.run_b)?;
    print!("{}", compare::diff(&a, &b));
    Ok(ExitCode::SUCCESS)
}

fn sweep(args: SweepArgs) -> Result<ExitCode> {
    let code = |failed: usize| if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS };
    match args.action {
        Some(SweepAction::Status { dir }) => {
            sweep::status(&dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(SweepAction::Resume { dir, jobs, devices }) => {
            return Ok(code(sweep::resume(&dir, jobs, devices, signals::stop_flag())?));
        }
        Some(SweepAction::Cancel { dir }) => {
            sweep::cancel(&dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(SweepAction::Point { dir, index }) => {
            return match sweep::point(&dir, index, signals::stop_flag())? {
                Some(mut outcome) => report(&mut outcome, &BTreeMap::new(), None),
                None => Ok(ExitCode::SUCCESS),
            };
        }
        None => {}
    }
    let s = args.slurm;
    let req = Request {
        experiment: args.experiment.unwrap_or_default(),
        grids: args.grids,
        zips: args.zips,
        jobs: args.jobs,
        sets: args.sets,
        file: args.file,
        launcher: args.launcher,
        random: args.random,
        devices: args.devices,
        slurm: sweep::SlurmOptions {
            partition: s.partition,
            time: s.time,
            cpus_per_task: s.cpus_per_task,
            gpus_per_task: s.gpus_per_task,
            mem: s.mem,
            max_parallel: s.max_parallel,
            sbatch_args: s.sbatch_args,
            requeue: s.requeue,
            stop_before: s.stop_before,
        },
    };
    Ok(code(sweep::run(&req, signals::stop_flag())?))
}

fn resume(args: ResumeArgs) -> Result<ExitCode> {
    let stop = signals::stop_flag();
    let mut outcome = train::resume(&args.run_dir, stop)?;
    report(&mut outcome, &BTreeMap::new(), None)
}

/// The final metrics beside their references, then `run folder: <path>`; the exit status.
fn report(outcome: &mut Outcome, reference: &BTreeMap<String, f64>, source: Option<&str>) -> Result<ExitCode> {
    for (name, value) in &outcome.final_metrics {
        match reference.get(name) {
            Some(r) => println!(
                "{name} = {value:.4}   (reference {r:.4}{})",
                source.map(|s| format!(", {s}")).unwrap_or_default()
            ),
            None => println!("{name} = {value:.4}"),
        }
    }
    println!("run folder: {}", outcome.run_dir.display());
    if let Some(e) = outcome.error.take() {
        return Err(e);
    }
    Ok(match outcome.status {
        Status::Interrupted if signals::term_seen() => ExitCode::from(143),
        Status::Interrupted => ExitCode::from(130),
        _ => ExitCode::SUCCESS,
    })
}

fn predict(args: PredictArgs) -> Result<ExitCode> {
    let req = predict::Request {
        target: args.target,
        images: args.images,
        weights: args.weights,
        topk: args.topk,
        classes: args.classes,
        sets: args.sets,
        out: args.out,
        score_min: args.score_min,
    };
    let (predictions, classes) = predict::run(&req)?;
    for p in &predictions {
        print!("{}", predict::format(p, &classes));
    }
    Ok(ExitCode::SUCCESS)
}

fn load(args: &ExpArgs) -> Result<config::Loaded> {
    let Some(path) = &args.experiment else {
        anyhow::bail!("no experiment file given; try: runner experiments/lenet5_fashion_mnist.toml");
    };
    Ok(config::load(path, &LoadOptions { sets: args.sets.clone(), env: true })?)
}

fn check(args: ExpArgs) -> Result<ExitCode> {
    if let Some(text) = args.experiment.as_ref().and_then(|p| model_only(p)) {
        return check_model(args.experiment.as_deref().unwrap_or(std::path::Path::new("")), &text);
    }
    let loaded = load(&args)?;
    let plan = plan::plan(&loaded)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let precision = if plan.precision.is_f32() { "" } else { ", precision bf16" };
    println!("experiment: {}  (seed {}, device {}{precision})", plan.experiment, plan.seed, plan.device);
    let data = match &plan.located {
        Located::Found(d) => format!("found in {}", d.display()),
        Located::Missing { download_to, .. } => match plan.data.dataset {
            _ if plan.data.generate().is_some() => {
                format!("will be written into {}", download_to.display())
            }
            DatasetKind::Voc | DatasetKind::Coco | DatasetKind::Yolo if !plan.data.download => {
                format!("not found in {} (see the warning)", download_to.display())
            }
            _ => format!("will be downloaded into {}", download_to.display()),
        },
    };
    println!("data: {} ({} classes), {data}", spec(plan.data.dataset).name, plan.classes.len());
    // The optimizer as the config writes it: `optimizer = { sgd = { lr = 0.005, ... } }`.
    let optimizer = toml::Value::try_from(&plan.train.optimizer)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| format!("{:?}", plan.train.optimizer));
    println!("train: {} epochs, batch {}, optimizer = {optimizer}", plan.train.epochs, plan.data.batch_size);
    println!("lr at the start of each epoch: {}", lr_summary(&plan));
    println!();
    print!("{}", plan.summary());
    println!("ok: {} is valid", loaded.path.display());
    Ok(ExitCode::SUCCESS)
}

/// A model file of the zoo (a `[model]` table and no `[experiment]`): its text.
fn model_only(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    (table.contains_key("model") && !table.contains_key("experiment")).then_some(text)
}

/// `runner check configs/models/resnet20.toml`: the model table alone.
fn check_model(path: &std::path::Path, text: &str) -> Result<ExitCode> {
    #[derive(serde::Deserialize)]
    struct ModelFile {
        model: config::ModelConfig,
    }
    let file: ModelFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let graph = model::plan_model(&file.model).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("model: {} (input {:?}; a model file: no data, training or freezing)", path.display(), file.model.input);
    println!();
    print!("{}", plan::graph_table(&graph, &[]));
    println!("ok: {} is a valid model", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `1-82: 0.1, 83-123: 0.01, 124-164: 0.001` (epochs from 1), or samples when it keeps changing.
fn lr_summary(plan: &Plan) -> String {
    let n = plan.train.epochs;
    let lrs: Vec<f64> = (0..n).map(|e| plan.lr(Position { epoch: e, batch: 0, batches: 1 })).collect();
    let mut runs: Vec<(usize, usize, f64)> = Vec::new();
    for (e, lr) in lrs.iter().enumerate() {
        match runs.last_mut() {
            Some((_, end, v)) if v == lr => *end = e,
            _ => runs.push((e, e, *lr)),
        }
    }
    if runs.len() <= 6 {
        let part = |(a, b, v): &(usize, usize, f64)| {
            if a == b {
                format!("{}: {v:.4e}", a + 1)
            } else {
                format!("{}-{}: {v:.4e}", a + 1, b + 1)
            }
        };
        runs.iter().map(part).collect::<Vec<_>>().join(", ")
    } else {
        let picks: std::collections::BTreeSet<usize> = [0, n / 4, n / 2, 3 * n / 4, n - 1].into_iter().collect();
        picks.iter().map(|e| format!("{}: {:.4e}", e + 1, lrs[*e])).collect::<Vec<_>>().join(", ")
            + " (changing every epoch)"
    }
}

fn show_config(args: ExpArgs) -> Result<ExitCode> {
    let loaded = load(&args)?;
    let rows = loaded.provenance();
    let width = rows.iter().map(|(k, v, _)| k.len() + v.len() + 3).filter(|w| *w <= 60).max().unwrap_or(20);
    for (key, value, source) in rows {
        let line = format!("{key} = {value}");
        println!("{line:<width$}  # {source}");
    }
    Ok(ExitCode::SUCCESS)
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    let format = export::Format::parse(&args.format)?;
    if format != export::Format::Onnx
        && (args.opset.is_some() || args.dynamic_batch || args.dynamic_size || args.fold_bn || args.external_data)
    {
        bail!(
            "--opset, --dynamic-batch, --dynamic-size, --fold-bn and --external-data apply to --format onnx, not --format {}",
            args.format
        );
    }
    let defaults = export::OnnxRequest::default();
    let req = export::Request {
        format,
        target: args.target,
        out: args.out,
        weights: args.weights,
        sets: args.sets,
        onnx: export::OnnxRequest {
            opset: args.opset.unwrap_or(defaults.opset),
            dynamic_batch: args.dynamic_batch,
            dynamic_size: args.dynamic_size,
            fold_bn: args.fold_bn,
            external_data: args.external_data,
        },
    };
    let done = export::run(&req)?;
    if let Some(g) = &done.onnx {
        let shape: Vec<String> = g.output_shape.iter().map(|d| d.to_string()).collect();
        println!(
            "wrote {} (ONNX opset {}, {} nodes, {} initializers, {} parameters, output [{}]{}): onnxruntime.InferenceSession(path); the preprocessing is in its metadata",
            done.path.display(),
            req.onnx.opset,
            g.nodes,
            g.initializers,
            done.parameters,
            shape.join(", "),
            match (req.onnx.fold_bn, g.folded, g.batch_norms.len()) {
                (true, f, 0) => format!(", {f} batch norms folded"),
                (true, f, n) => format!(", {f} batch norms folded, {n} kept (not after a convolution: {})", g.batch_norms.join(", ")),
                (false, _, _) => String::new(),
            }
        );
        if req.onnx.external_data {
            println!("its weights are in {}.data: keep the two files together", done.path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "wrote {} ({} tensors, {} parameters): {} it and load_state_dict(..., strict=True)",
        done.path.display(),
        done.tensors,
        done.parameters,
        if req.format == export::Format::Pth { "torch.load" } else { "safetensors.torch.load_file" }
    );
    Ok(ExitCode::SUCCESS)
}

fn train(args: ExpArgs) -> Result<ExitCode> {
    let loaded = load(&args)?;
    let plan = plan::plan(&loaded)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let stop = signals::stop_flag();
    let mut outcome = train::run(&loaded, &plan, stop, args.sweep_id.as_deref())?;
    let reference: BTreeMap<String, f64> = loaded.config.experiment.reference.clone().into_iter().collect();
    report(&mut outcome, &reference, loaded.config.experiment.reference_source.as_deref())
}
