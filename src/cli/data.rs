//! `runner data`: statistics, previews, synthetic sets and conversions between layouts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::{load, ExpArgs};
use crate::config::OnError;
use crate::data::loader::LoaderSpec;
use crate::data::synth::ShapesOptions;
use crate::data::{convert, preview, stats, synth, voc};
use crate::{data, plan};

#[derive(Subcommand, Debug)]
pub(super) enum DataCommand {
    /// Per-channel mean and std of the training split (and, for RGB, the colour covariance's
    /// eigenvalues and eigenvectors), printed as TOML to paste into `[augment]`.
    Stats(ExpArgs),
    /// A PNG grid of samples after the split's augmentations, with class indices (or boxes
    /// and class names).
    Preview(PreviewArgs),
    /// Writes a synthetic dataset.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Converts a detection set between Pascal VOC, COCO and YOLO layouts, every box and
    /// class kept (docs/data.md says what each layout can hold).
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
pub(super) struct ConvertArgs {
    /// The source layout: voc, coco or yolo.
    #[arg(long = "from")]
    from: String,
    /// The layout to write: voc, coco or yolo.
    #[arg(long = "to")]
    to: String,
    /// The source set's folder (VOC: the one holding VOCdevkit/ or VOC<year>/; COCO: the one
    /// holding annotations/; YOLO: the one holding images/ and data.yaml).
    src: PathBuf,
    /// The folder to write (created; must be empty or missing).
    dst: PathBuf,
    /// The class names in index order, comma-separated, where the source does not name them
    /// (VOC: default the set's classes.toml or shapes.toml, else VOC's 20; YOLO: instead of
    /// data.yaml's names).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
}

#[derive(Subcommand, Debug)]
pub(super) enum SynthCommand {
    /// Coloured shapes over cluttered backgrounds in Pascal VOC's layout (JPEG, XML,
    /// ImageSets, palette PNG masks): the offline detection and segmentation set.
    Shapes(ShapesArgs),
}

#[derive(Args, Debug)]
pub(super) struct ShapesArgs {
    /// The folder to write (`<out>/VOCdevkit/VOC2007/...`).
    #[arg(long)]
    out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 4000)]
    train: usize,
    /// Test images.
    #[arg(long, default_value_t = 500)]
    test: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Same seed, same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Objects per image: `N` or `MIN-MAX`.
    #[arg(long, default_value = "1-5")]
    objects: String,
    /// The smallest object's bounding side in pixels.
    #[arg(long, default_value_t = 12.0)]
    min_size: f64,
    /// The largest object's bounding side in pixels.
    #[arg(long, default_value_t = 80.0)]
    max_size: f64,
    /// The layout: voc (`<out>/VOCdevkit/VOC2007/`), coco
    /// (`<out>/annotations/instances_{train,test}.json`, `<out>/{train,test}/`) or yolo
    /// (`<out>/images/`, `<out>/labels/`, `<out>/data.yaml`); coco and yolo into a new folder.
    #[arg(long, default_value = "voc")]
    format: String,
}

#[derive(Args, Debug)]
pub(super) struct PreviewArgs {
    #[command(flatten)]
    exp: ExpArgs,
    /// `train` or `test`.
    #[arg(long, default_value = "train")]
    split: String,
    /// How many samples.
    #[arg(long, default_value_t = 16)]
    n: usize,
    /// The PNG to write.
    #[arg(long, default_value = "preview.png")]
    out: PathBuf,
}

pub(super) fn run(cmd: DataCommand) -> Result<ExitCode> {
    match cmd {
        DataCommand::Stats(args) => data_stats(args),
        DataCommand::Preview(args) => data_preview(args),
        DataCommand::Synth(SynthCommand::Shapes(args)) => synth_shapes(args),
        DataCommand::Convert(args) => data_convert(args),
    }
}

fn data_stats(args: ExpArgs) -> Result<ExitCode> {
    let loaded = load(&args)?;
    let data = data::load(&loaded.config.data)?;
    let stats = stats::pixel_stats(&data.train, data.shape)?;
    print!("{}", stats::to_toml(&stats, data.name, data.train.len));
    Ok(ExitCode::SUCCESS)
}

fn data_preview(args: PreviewArgs) -> Result<ExitCode> {
    let loaded = load(&args.exp)?;
    let plan = plan::plan(&loaded)?;
    let data = data::load(&plan.data)?;
    let (split, augment, out_shape) = match args.split.as_str() {
        "train" => (&data.train, plan.augment_train.clone(), plan.input),
        "test" => (&data.test, plan.augment_test.clone(), plan.test_shape),
        other => anyhow::bail!("--split {other}: expected train or test"),
    };
    if args.n == 0 {
        anyhow::bail!("--n 0: nothing to show");
    }
    let spec = LoaderSpec {
        batch_size: args.n,
        shuffle: plan.data.shuffle && args.split == "train",
        drop_last: false,
        seed: plan.seed,
        shape: data.shape,
        out_shape,
        augment,
        prefetch: 1,
        workers: 1,
        skip_errors: plan.data.on_error == OnError::Skip,
    };
    let labels = preview::write_grid(split, &spec, args.n, &data.classes, &args.out)?;
    let mut shown: Vec<u32> = labels.clone();
    shown.sort();
    shown.dedup();
    for l in shown {
        println!("{l}: {}", data.classes.get(l as usize).map(String::as_str).unwrap_or("?"));
    }
    println!("wrote {} ({} samples, {} split)", args.out.display(), args.n.min(split.len), args.split);
    Ok(ExitCode::SUCCESS)
}

fn synth_shapes(args: ShapesArgs) -> Result<ExitCode> {
    let count = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("--objects {}: expected N or MIN-MAX, e.g. 1-5", args.objects))
    };
    let (min_objects, max_objects) = match args.objects.split_once('-') {
        Some((a, b)) => (count(a)?, count(b)?),
        None => (count(&args.objects)?, count(&args.objects)?),
    };
    let opts = ShapesOptions {
        train: args.train,
        test: args.test,
        size: args.size,
        seed: args.seed,
        min_objects,
        max_objects,
        min_size: args.min_size,
        max_size: args.max_size,
        ..Default::default()
    };
    let format = layout(&args.format, "--format")?;
    let started = std::time::Instant::now();
    let (summary, wrote) = if format == convert::Format::Voc {
        (synth::write_shapes(&args.out, &opts)?, args.out.join("VOCdevkit/VOC2007"))
    } else {
        // Written in VOC's layout aside, then converted into a new folder.
        let out = new_folder(&args.out)?;
        let names = ["train".to_string(), "test".to_string()];
        let voc_staging = voc::beside(&args.out, "voc.part")?;
        let (summary, w) = convert::write_shapes_as(format, &opts, &names, &voc_staging, &out.staging)?;
        out.commit()?;
        if w.flags_lost > 0 {
            println!("{} difficult objects became ordinary ones: YOLO's labels have no difficult flag", w.flags_lost);
        }
        (summary, args.out.clone())
    };
    println!(
        "wrote {} images ({} train, {} test) with {} objects ({} difficult, {} truncated) into {} in {:.1} s",
        summary.images,
        args.train,
        args.test,
        summary.objects,
        summary.difficult,
        summary.truncated,
        wrote.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A layout's name on the command line.
fn layout(name: &str, flag: &str) -> Result<convert::Format> {
    convert::Format::parse(name).with_context(|| format!("{flag} {name}: expected voc, coco or yolo"))
}

/// A folder to be written whole: `staging` beside it, renamed into place by `commit`. An
/// error where the folder exists and is not empty.
struct NewFolder {
    path: PathBuf,
    staging: PathBuf,
}

fn new_folder(path: &Path) -> Result<NewFolder> {
    if std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty; write into a new folder", path.display());
    }
    let staging = voc::beside(path, "part")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    Ok(NewFolder { path: path.to_path_buf(), staging })
}

impl NewFolder {
    fn commit(self) -> Result<()> {
        if self.path.is_dir() {
            std::fs::remove_dir(&self.path).with_context(|| format!("cannot replace {}", self.path.display()))?;
        }
        std::fs::rename(&self.staging, &self.path)
            .with_context(|| format!("cannot move {} to {}", self.staging.display(), self.path.display()))
    }
}

fn data_convert(args: ConvertArgs) -> Result<ExitCode> {
    let (from, to) = (layout(&args.from, "--from")?, layout(&args.to, "--to")?);
    if from == convert::Format::Coco && args.classes.is_some() {
        bail!("--classes: a COCO set names its classes in its categories");
    }
    let out = new_folder(&args.dst)?;
    let started = std::time::Instant::now();
    let c = convert::read(from, &args.src, args.classes)?;
    let w = convert::write(to, &c, &out.staging)?;
    out.commit()?;
    let splits: Vec<String> = c.splits.iter().map(|(n, items)| format!("{n} ({})", items.len())).collect();
    println!(
        "wrote {} images with {} boxes of {} classes into {} (splits: {}) in {:.1} s",
        w.images,
        w.boxes,
        c.classes.len(),
        args.dst.display(),
        splits.join(", "),
        started.elapsed().as_secs_f64()
    );
    if w.crowds_left_out > 0 {
        println!("left out {} crowd regions: YOLO's labels have no crowd flag", w.crowds_left_out);
    }
    if w.empty_left_out > 0 {
        println!("left out {} boxes of no size: a YOLO label of width or height 0 is no box", w.empty_left_out);
    }
    if w.flags_lost > 0 {
        let what = if to == convert::Format::Yolo {
            "difficult objects became ordinary ones: YOLO's labels have no difficult flag"
        } else {
            "crowd regions became difficult objects: VOC has no crowd flag"
        };
        println!("{} {what}", w.flags_lost);
    }
    Ok(ExitCode::SUCCESS)
}
