//! Datasets: where their files live, how to fetch them, how to read them.
//!
//! Each [`DatasetKind`] has a [`DatasetSpec`] (file layout, checksums, official address,
//! classes, sample shape). [`locate`] finds a folder that holds the files without reading
//! them (for `runner check`); [`load`] reads them, downloading first when allowed.

pub mod augment;
pub mod cifar;
pub mod coco;
pub mod coco_download;
pub mod coco_mask;
pub mod convert;
pub mod download;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod preview;
pub mod stats;
pub mod synth;
pub mod tta;
pub mod voc;
pub mod yolo;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{DataConfig, DatasetKind, OnError, Synthetic, VocSplit};
use crate::metrics::coco::CocoTruth;
use download::Checksum;

/// How a dataset's files are laid out.
pub enum Files {
    /// MNIST's IDX files, `(file name, published checksum)`: train images, train labels,
    /// test images, test labels; each may also be present without `.gz`.
    Idx([(&'static str, Checksum); 4]),
    /// `root/<train_dir>/<class>/<image>`: no fixed size, classes from the folders, no download.
    Folder,
    /// Pascal VOC's `VOCdevkit/VOC<year>/` folders; years, image sets and classes from `[data.voc]`.
    Voc,
    /// COCO's instances JSON and image folder per split, from `[data.coco]`.
    Coco,
    /// YOLO's `images/<split>/` and `labels/<split>/`, from `[data.yolo]`.
    Yolo,
    /// CIFAR's binary version: one archive holding `folder/` with the batch files.
    Cifar {
        archive: &'static str,
        checksum: Checksum,
        folder: &'static str,
        train: &'static [&'static str],
        test: &'static str,
    },
}

/// What the program knows about a dataset.
pub struct DatasetSpec {
    pub name: &'static str,
    pub files: Files,
    pub base_url: &'static str,
    /// Folders searched after `data/<name>`, e.g. where a system package installs the files.
    pub system_dirs: &'static [&'static str],
    pub classes: &'static [&'static str],
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
}

// Checksums: the MD5 sums the datasets' authors publish (the same ones torchvision checks).
static MNIST: DatasetSpec = DatasetSpec {
    name: "mnist",
    files: Files::Idx([
        ("train-images-idx3-ubyte.gz", Checksum::Md5("f68b3c2dcbeaaa9fbdd348bbdeb94873")),
        ("train-labels-idx1-ubyte.gz", Checksum::Md5("d53e105ee54ea40749a09fcbcd1e9432")),
        ("t10k-images-idx3-ubyte.gz", Checksum::Md5("9fb629c4189551a2d022fa330f9573f3")),
        ("t10k-labels-idx1-ubyte.gz", Checksum::Md5("ec29112dd5afa0611ce80d1b7f02629c")),
    ]),
    base_url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
    system_dirs: &["/usr/share/datasets/mnist"],
    classes: &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    shape: [1, 28, 28],
};

static FASHION_MNIST: DatasetSpec = DatasetSpec {
    name: "fashion_mnist",
    files: Files::Idx([
        ("train-images-idx3-ubyte.gz", Checksum::Md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d")),
        ("train-labels-idx1-ubyte.gz", Checksum::Md5("25c81989df183df01b3e8a0aad5dffbe")),
        ("t10k-images-idx3-ubyte.gz", Checksum::Md5("bef4ecab320f06d8554ea6380940ec79")),
        ("t10k-labels-idx1-ubyte.gz", Checksum::Md5("bb300cfdad3c16e7a12a480ee83cd310")),
    ]),
    base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    // Debian's package `dataset-fashion-mnist`.
    system_dirs: &["/usr/share/datasets/fashion-mnist"],
    classes: &[
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    shape: [1, 28, 28],
};

// Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images"; the MD5 is the
// one on the dataset's page for the binary version.
static CIFAR10: DatasetSpec = DatasetSpec {
    name: "cifar10",
    files: Files::Cifar {
        archive: "cifar-10-binary.tar.gz",
        checksum: Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530"),
        folder: "cifar-10-batches-bin",
        train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
        test: "test_batch.bin",
    },
    base_url: "https://www.cs.toronto.edu/~kriz/",
    system_dirs: &[],
    classes: &["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    shape: [3, 32, 32],
};

static IMAGE_FOLDER: DatasetSpec = DatasetSpec {
    name: "image_folder",
    files: Files::Folder,
    base_url: "",
    system_dirs: &[],
    classes: &[],
    // Channels come from `data.channels`; height and width vary (0 = not fixed).
    shape: [3, 0, 0],
};

// Everingham et al. (2010), "The PASCAL Visual Object Classes (VOC) Challenge". Classes
// and splits come from `[data.voc]`; the archives and their checksums are `voc::ARCHIVES`.
static VOC: DatasetSpec =
    DatasetSpec { name: "voc", files: Files::Voc, base_url: "", system_dirs: &[], classes: &[], shape: [3, 0, 0] };

static COCO: DatasetSpec =
    DatasetSpec { name: "coco", files: Files::Coco, base_url: "", system_dirs: &[], classes: &[], shape: [3, 0, 0] };

static YOLO: DatasetSpec =
    DatasetSpec { name: "yolo", files: Files::Yolo, base_url: "", system_dirs: &[], classes: &[], shape: [3, 0, 0] };

pub fn spec(kind: DatasetKind) -> &'static DatasetSpec {
    match kind {
        DatasetKind::Mnist => &MNIST,
        DatasetKind::FashionMnist => &FASHION_MNIST,
        DatasetKind::Cifar10 => &CIFAR10,
        DatasetKind::ImageFolder => &IMAGE_FOLDER,
        DatasetKind::Voc => &VOC,
        DatasetKind::Coco => &COCO,
        DatasetKind::Yolo => &YOLO,
    }
}

/// What the plan needs to know of a dataset: its name, classes and sample shape
/// (`[c, 0, 0]` where images vary in size). Image folders are listed (not decoded).
pub struct DataInfo {
    pub name: &'static str,
    pub classes: Vec<String>,
    pub shape: [usize; 3],
}

pub fn describe(cfg: &DataConfig) -> std::result::Result<DataInfo, String> {
    let spec = spec(cfg.dataset);
    match spec.files {
        Files::Folder => {
            let Located::Found(root) = locate(cfg) else {
                return Err(folder_missing(cfg));
            };
            let listing = folder::scan(&root.join(&cfg.train_dir)).map_err(|e| format!("{e:#}"))?;
            Ok(DataInfo { name: spec.name, classes: listing.classes, shape: [cfg.channels, 0, 0] })
        }
        Files::Voc => Ok(DataInfo { name: spec.name, classes: cfg.voc().label_names(), shape: [3, 0, 0] }),
        Files::Coco | Files::Yolo => Ok(DataInfo { name: spec.name, classes: box_classes(cfg)?, shape: [3, 0, 0] }),
        _ => Ok(DataInfo {
            name: spec.name,
            classes: spec.classes.iter().map(|c| c.to_string()).collect(),
            shape: spec.shape,
        }),
    }
}

/// The class names of a COCO or YOLO set, for the plan: from the config (`[data.yolo]
/// classes`), the files (the test split's categories, `data.yaml`), or the synthetic set
/// that `generate` will write. Empty where the files are not there yet.
fn box_classes(cfg: &DataConfig) -> std::result::Result<Vec<String>, String> {
    if let Some(c) = cfg.yolo.as_ref().and_then(|y| y.classes.clone()).filter(|_| cfg.dataset == DatasetKind::Yolo) {
        return Ok(c);
    }
    let Located::Found(root) = locate(cfg) else {
        let coco2017 = cfg.dataset == DatasetKind::Coco && cfg.coco().test.json.ends_with("instances_val2017.json");
        let mut names: Vec<String> = match cfg.generate() {
            Some(_) => synth::SHAPE_CLASSES.iter().map(|c| c.to_string()).collect(),
            None if coco2017 => coco::COCO2017_CLASSES.iter().map(|c| c.to_string()).collect(),
            None => return Ok(Vec::new()),
        };
        if cfg.dataset == DatasetKind::Coco && cfg.coco().masks() {
            names.insert(0, "background".into());
        }
        return Ok(names);
    };
    let read = match cfg.dataset {
        DatasetKind::Coco => coco::read_class_names(&root.join(&cfg.coco().test.json)),
        _ => yolo::class_names(&root, None),
    };
    let mut names = read.map_err(|e| format!("{e:#}"))?;
    if cfg.dataset == DatasetKind::Coco && cfg.coco().masks() {
        names.insert(0, "background".into());
    }
    Ok(names)
}

fn folder_missing(cfg: &DataConfig) -> String {
    let root = cfg.root.clone().unwrap_or_else(|| "data/image_folder".into());
    format!(
        "image folder {root} needs `{}/` and `{}/` holding <class>/<image> files (set data.root, data.train_dir, data.test_dir)",
        cfg.train_dir, cfg.test_dir
    )
}

/// Where a dataset's files are, or where they would be downloaded to.
#[derive(Debug, Clone)]
pub enum Located {
    Found(PathBuf),
    Missing { searched: Vec<PathBuf>, download_to: PathBuf },
}

/// A file of the spec in `dir`: the gzipped name, or the same name without `.gz`.
fn file_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let gz = dir.join(name);
    if gz.is_file() {
        return Some(gz);
    }
    let raw = dir.join(name.trim_end_matches(".gz"));
    raw.is_file().then_some(raw)
}

/// The folder under `dir` that holds every file of the spec, if any.
fn holding_folder(dir: &Path, spec: &DatasetSpec, cfg: &DataConfig) -> Option<PathBuf> {
    match &spec.files {
        Files::Folder => {
            (dir.join(&cfg.train_dir).is_dir() && dir.join(&cfg.test_dir).is_dir()).then(|| dir.to_path_buf())
        }
        Files::Idx(files) => files.iter().all(|(name, _)| file_in(dir, name).is_some()).then(|| dir.to_path_buf()),
        Files::Voc => voc::holds(dir, &cfg.voc()).then(|| dir.to_path_buf()),
        Files::Coco => {
            let c = cfg.coco();
            [&c.train, &c.test]
                .iter()
                .all(|s| dir.join(&s.json).is_file() && dir.join(&s.images).is_dir())
                .then(|| dir.to_path_buf())
        }
        Files::Yolo => {
            let y = cfg.yolo();
            (dir.join(&y.train).is_dir() && dir.join(&y.test).is_dir()).then(|| dir.to_path_buf())
        }
        Files::Cifar { folder, train, test, .. } => [dir.join(folder), dir.to_path_buf()]
            .into_iter()
            .find(|d| train.iter().chain([test]).all(|f| d.join(f).is_file())),
    }
}

/// Finds the dataset's folder: `[data] root` if set, else `data/<name>`, then system folders.
pub fn locate(cfg: &DataConfig) -> Located {
    let spec = spec(cfg.dataset);
    let candidates: Vec<PathBuf> = match &cfg.root {
        Some(root) => vec![PathBuf::from(root)],
        None => std::iter::once(PathBuf::from("data").join(spec.name))
            .chain(spec.system_dirs.iter().map(PathBuf::from))
            .collect(),
    };
    match candidates.iter().find_map(|d| holding_folder(d, spec, cfg)) {
        Some(d) => Located::Found(d),
        None => Located::Missing { download_to: candidates[0].clone(), searched: candidates },
    }
}

/// The label of a VOC image without objects (classification cannot use it).
pub const NO_LABEL: u32 = u32::MAX;

/// One split: `len` samples, either in memory (`pixels`, all of the dataset's shape, as
/// bytes) or as image files decoded when a batch needs them (`files`). The targets: a class
/// per sample (`labels`, classification) or the objects of each image (`objects`, detection).
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub len: usize,
    pub files: Vec<PathBuf>,
    pub objects: Vec<Vec<voc::Object>>,
    /// Segmentation: each image's class mask file (a palette PNG, `voc::read_mask`).
    pub masks: Vec<PathBuf>,
    /// Segmentation: the classes a mask value may name (0..mask_classes, and 255 for void).
    pub mask_classes: usize,
    /// COCO data: the ids of the images and categories, and each image's annotations as
    /// COCOeval reads them (areas, crowds).
    pub coco: Option<CocoIds>,
}

/// A COCO split's ids: `images[i]` and `truths[i]` belong to sample `i`; `categories[c]`
/// is class `c`'s id.
#[derive(Debug, Clone, Default)]
pub struct CocoIds {
    pub images: Vec<u64>,
    pub categories: Vec<u64>,
    pub truths: Vec<Vec<CocoTruth>>,
}

impl Split {
    fn limited(mut self, limit: usize, sample: usize) -> Split {
        if limit > 0 && limit < self.len {
            self.len = limit;
            self.pixels.truncate(limit * sample);
            self.labels.truncate(limit);
            self.files.truncate(limit);
            self.objects.truncate(limit);
            self.masks.truncate(limit);
            if let Some(ids) = &mut self.coco {
                ids.images.truncate(limit);
                ids.truths.truncate(limit);
            }
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: &'static str,
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub shape: [usize; 3],
    /// Shared with the loader's threads.
    pub train: std::sync::Arc<Split>,
    pub test: std::sync::Arc<Split>,
}

/// Reads the dataset, downloading missing files first when `[data] download = true`.
pub fn load(cfg: &DataConfig) -> Result<Dataset> {
    let spec = spec(cfg.dataset);
    let dir = match locate(cfg) {
        Located::Found(dir) => dir,
        Located::Missing { searched, download_to } => {
            if matches!(spec.files, Files::Folder) {
                bail!("{}", folder_missing(cfg));
            }
            if let Some(set) = cfg.generate() {
                write_synthetic(cfg, set, &download_to)?;
                return finish_load(
                    cfg,
                    spec,
                    holding_folder(&download_to, spec, cfg).with_context(|| {
                        format!("{}: the shapes set does not hold the splits the config names", download_to.display())
                    })?,
                );
            }
            if !cfg.download {
                bail!("{}", missing_message(spec, &searched, &download_to));
            }
            if let Files::Coco = spec.files {
                let archives: Vec<_> = coco_download::archives_for(&download_to, &cfg.coco())?
                    .into_iter()
                    .map(|a| (a.file, Checksum::Md5(a.md5), cfg.mirror.as_deref().unwrap_or(a.base_url)))
                    .collect();
                coco_download::download(&download_to, &archives)?;
            } else if let Files::Voc = spec.files {
                let archives: Vec<_> = voc::archives_for(&cfg.voc())?
                    .into_iter()
                    .filter(|a| !voc::holds_archive(&download_to, a))
                    .map(|a| (a.file, Checksum::Md5(a.md5), cfg.mirror.as_deref().unwrap_or(a.base_url)))
                    .collect();
                voc::download(&download_to, &archives)?;
            } else {
                let base = cfg.mirror.as_deref().unwrap_or(spec.base_url).trim_end_matches('/');
                fetch_files(spec, base, &download_to)?;
            }
            holding_folder(&download_to, spec, cfg).with_context(|| {
                format!("{}: the download did not produce the dataset's files", download_to.display())
            })?
        }
    };
    finish_load(cfg, spec, dir)
}

/// Writes the synthetic set `set` into `download_to` in the dataset's layout (VOC, COCO or
/// YOLO): aside first, then moved into place whole, so that an interrupted run leaves no
/// half-written set that a later run would take for the real one.
fn write_synthetic(cfg: &DataConfig, set: Synthetic, download_to: &Path) -> Result<()> {
    // Never mixed into a folder of other files (a user's own set without the files this
    // config asks for).
    let occupied = std::fs::read_dir(download_to).is_ok_and(|mut it| it.next().is_some());
    if occupied {
        let wanted = match cfg.dataset {
            DatasetKind::Coco => {
                let c = cfg.coco();
                format!("the COCO files {} and {} that [data.coco] names", c.train.json, c.test.json)
            }
            DatasetKind::Yolo => {
                let y = cfg.yolo();
                format!("the YOLO folders {} and {} that [data.yolo] names", y.train, y.test)
            }
            _ => format!(
                "the VOC{} lists ImageSets/{}/{{{}, {}}}.txt that [data.voc] asks for",
                cfg.voc().train.years.first().copied().unwrap_or(2007),
                cfg.voc().lists(),
                cfg.voc().train.image_set,
                cfg.voc().test.image_set
            ),
        };
        bail!(
            "{} holds files but not {wanted}; `generate` writes the synthetic set only into a missing or empty \
             folder (set data.root to another folder)",
            download_to.display()
        );
    }
    tracing::info!("writing the synthetic shapes set into {}", download_to.display());
    let staging = voc::beside(download_to, "part")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove the unfinished {}", staging.display()))?;
    }
    let opts = synth::ShapesOptions::of(set);
    let (format, names) = match cfg.dataset {
        DatasetKind::Coco => (convert::Format::Coco, cfg.coco().generated_names()),
        DatasetKind::Yolo => (convert::Format::Yolo, cfg.yolo().generated_names()),
        _ => (convert::Format::Voc, Ok(Default::default())),
    };
    if format == convert::Format::Voc {
        synth::write_shapes(&staging, &opts)?;
    } else {
        let names = names.map_err(anyhow::Error::msg)?;
        convert::write_shapes_as(format, &opts, &names, &voc::beside(download_to, "voc.part")?, &staging)?;
    }
    voc::merge_into(&staging, download_to)
}

/// Reads the dataset where it is already on disk: never downloads, never writes the
/// synthetic set (for readers of finished runs, like `runner board`).
pub fn load_present(cfg: &DataConfig) -> Result<Dataset> {
    match locate(cfg) {
        Located::Found(dir) => finish_load(cfg, spec(cfg.dataset), dir),
        Located::Missing { searched, .. } => {
            let searched: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
            bail!("the {} dataset is not on disk (searched {})", spec(cfg.dataset).name, searched.join(", "))
        }
    }
}

/// Reads the dataset's files from `dir`, the folder that holds them.
fn finish_load(cfg: &DataConfig, spec: &'static DatasetSpec, dir: PathBuf) -> Result<Dataset> {
    let [c, h, w] = spec.shape;
    let mut classes: Vec<String> = spec.classes.iter().map(|s| s.to_string()).collect();
    let mut shape = spec.shape;
    let (train, test) = match &spec.files {
        Files::Folder => {
            let split = |sub: &str| -> Result<(Vec<String>, Split)> {
                let listing = folder::scan(&dir.join(sub))?;
                let labels = listing.files.iter().map(|(_, l)| *l).collect();
                let files: Vec<PathBuf> = listing.files.into_iter().map(|(p, _)| p).collect();
                Ok((listing.classes, Split { len: files.len(), labels, files, ..Default::default() }))
            };
            let (train_names, train) = split(&cfg.train_dir).context("reading the training split")?;
            let (test_names, test) = split(&cfg.test_dir).context("reading the test split")?;
            if train_names != test_names {
                bail!(
                    "{}: the test classes {test_names:?} differ from the training classes {train_names:?}",
                    dir.join(&cfg.test_dir).display()
                );
            }
            classes = train_names;
            shape = [cfg.channels, 0, 0];
            (train, test)
        }
        Files::Idx(files) => {
            let path = |i: usize| {
                file_in(&dir, files[i].0).with_context(|| format!("{}: {} is missing", dir.display(), files[i].0))
            };
            let train = read_idx_split(spec, path(0)?, path(1)?).context("reading the training split")?;
            let test = read_idx_split(spec, path(2)?, path(3)?).context("reading the test split")?;
            (train, test)
        }
        Files::Voc => {
            let voc = cfg.voc();
            let skip = cfg.on_error == OnError::Skip;
            let split = |which: &VocSplit| -> Result<Split> {
                let read = voc::read_split(&dir, which, &voc.classes, voc.masks(), skip)?;
                let objects: Vec<Vec<voc::Object>> = read.annotations.into_iter().map(|a| a.objects).collect();
                let (len, files, masks) = (read.files.len(), read.files, read.masks);
                let mask_classes = voc.label_names().len();
                // The image's class, for classification and localization: its largest object's.
                let labels = objects.iter().map(|o| voc::main_object(o).map_or(NO_LABEL, |k| o[k].class)).collect();
                Ok(Split { len, files, labels, objects, masks, mask_classes, ..Default::default() })
            };
            classes = voc.label_names();
            shape = [3, 0, 0];
            let train = split(&voc.train).context("reading the training split")?;
            let test = split(&voc.test).context("reading the test split")?;
            (train, test)
        }
        Files::Coco => {
            let c = cfg.coco();
            let skip = cfg.on_error == OnError::Skip;
            let masks = c.masks();
            let (train_names, train) =
                coco::read_split(&dir, &c.train, skip, masks).context("reading the training split")?;
            let (test_names, test) = coco::read_split(&dir, &c.test, skip, masks).context("reading the test split")?;
            if train_names != test_names {
                bail!(
                    "{}: the categories {test_names:?} differ from those of {} ({train_names:?})",
                    dir.join(&c.test.json).display(),
                    dir.join(&c.train.json).display()
                );
            }
            classes = train_names;
            shape = [3, 0, 0];
            (train, test)
        }
        Files::Yolo => {
            let y = cfg.yolo();
            let skip = cfg.on_error == OnError::Skip;
            classes = yolo::class_names(&dir, y.classes.as_deref())?;
            shape = [3, 0, 0];
            let train =
                yolo::read_split(&dir.join(&y.train), classes.len(), skip).context("reading the training split")?;
            let test = yolo::read_split(&dir.join(&y.test), classes.len(), skip).context("reading the test split")?;
            (train, test)
        }
        Files::Cifar { train, test, .. } => {
            let paths: Vec<PathBuf> = train.iter().map(|f| dir.join(f)).collect();
            let train = cifar::read_split(&paths, spec.classes.len()).context("reading the training split")?;
            let test = cifar::read_split(&[dir.join(test)], spec.classes.len()).context("reading the test split")?;
            (train, test)
        }
    };
    Ok(Dataset {
        name: spec.name,
        root: dir,
        classes,
        shape,
        train: std::sync::Arc::new(train.limited(cfg.train_limit, c * h * w)),
        test: std::sync::Arc::new(test.limited(cfg.test_limit, c * h * w)),
    })
}

/// Downloads what the spec needs into `dir` from `base` (no trailing slash).
pub fn fetch_files(spec: &DatasetSpec, base: &str, dir: &Path) -> Result<()> {
    match &spec.files {
        Files::Idx(files) => {
            for (name, checksum) in files {
                if file_in(dir, name).is_none() {
                    download::fetch(&format!("{base}/{name}"), &dir.join(name), checksum.clone())?;
                }
            }
        }
        Files::Folder => bail!("image folders are not downloaded; set data.root"),
        Files::Voc => bail!("VOC is fetched by voc::download"),
        Files::Coco => bail!("COCO is fetched by coco_download::download"),
        Files::Yolo => bail!("YOLO sets are not downloaded; set data.root to a folder that holds one"),
        Files::Cifar { archive, checksum, folder, train, test } => {
            let path = dir.join(archive);
            if !path.is_file() {
                download::fetch(&format!("{base}/{archive}"), &path, checksum.clone())?;
            }
            let members: Vec<String> = train.iter().chain([test]).map(|f| format!("{folder}/{f}")).collect();
            cifar::extract(&path, dir, &members)?;
        }
    }
    Ok(())
}

fn read_idx_split(spec: &DatasetSpec, images: PathBuf, labels: PathBuf) -> Result<Split> {
    let [_, h, w] = spec.shape;
    let img = idx::parse_images(&idx::read_maybe_gz(&images)?, &images)?;
    let lab = idx::parse_labels(&idx::read_maybe_gz(&labels)?, &labels)?;
    if (img.rows, img.cols) != (h, w) {
        bail!("{}: images are {}x{}, expected {h}x{w} for {}", images.display(), img.rows, img.cols, spec.name);
    }
    if img.count != lab.len() {
        bail!("{} holds {} images but {} holds {} labels", images.display(), img.count, labels.display(), lab.len());
    }
    if let Some((i, l)) = lab.iter().enumerate().find(|(_, l)| **l as usize >= spec.classes.len()) {
        bail!("{}: label {l} at index {i} is outside 0..{}", labels.display(), spec.classes.len());
    }
    Ok(Split {
        pixels: img.pixels,
        labels: lab.into_iter().map(u32::from).collect(),
        len: img.count,
        ..Default::default()
    })
}

pub fn missing_message(spec: &DatasetSpec, searched: &[PathBuf], download_to: &Path) -> String {
    let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    if let Files::Voc = spec.files {
        return format!(
            "dataset voc: no VOCdevkit/VOC<year>/Annotations for the years of [data.voc] in {}; set \
             `data.download = true` to fetch the official archives (about 3.6 GB) into {}, unpack them there \
             yourself, or write the synthetic set: runner data synth shapes --out {}",
            list.join(", "),
            download_to.display(),
            download_to.display()
        );
    }
    if let Files::Coco | Files::Yolo = spec.files {
        let fetch = match spec.files {
            Files::Coco => "set `data.download = true` to fetch COCO 2017's official archives (about 19 GB), ",
            _ => "",
        };
        return format!(
            "dataset {}: the files that [data.{}] names are not in {}; {fetch}set data.root to the folder that \
             holds them, or convert a set: runner data convert --from voc --to {} SRC {}",
            spec.name,
            spec.name,
            list.join(", "),
            spec.name,
            download_to.display()
        );
    }
    let mut msg = format!(
        "dataset {}: files not found (searched {}); set `data.download = true` (or --set data.download=true) to fetch them into {}",
        spec.name,
        list.join(", "),
        download_to.display()
    );
    if spec.name == "fashion_mnist" {
        msg += ", or install Debian's package: apt-get install dataset-fashion-mnist";
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_keep_the_first_samples() {
        let s = Split { pixels: (0..12).collect(), labels: vec![0, 1, 2, 3, 4, 5], len: 6, ..Default::default() };
        let l = s.clone().limited(2, 2);
        assert_eq!((l.len, l.pixels, l.labels), (2, vec![0, 1, 2, 3], vec![0, 1]));
        // 0 or a limit above the size keeps everything.
        assert_eq!(s.clone().limited(0, 2).len, 6);
        assert_eq!(s.limited(10, 2).len, 6);
    }
}
