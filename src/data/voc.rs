//! Pascal VOC's layout: `VOCdevkit/VOC<year>/` with `JPEGImages/<id>.jpg`,
//! `Annotations/<id>.xml` and `ImageSets/Main/<image_set>.txt` (the ids of a split).
//!
//! Coordinates: VOC's `xmin..xmax` are 1-based pixel indices, both inclusive. They become
//! continuous 0-based edges `[xmin - 1, xmax)`: a box on pixel columns 1..=3 is `[0, 3)`,
//! 3 pixels wide. IoU on these edges equals the devkit's (which adds 1 to each width).
//! The same layout serves any VOC-format set (`classes = [...]`), such as the synthetic
//! shapes set (`runner data synth shapes`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use crate::config::voc::VOC_CLASSES;
use crate::config::{VocConfig, VocSplit};
use crate::data::download::Checksum;
use crate::data::{download, folder};

/// One labelled object: its class index, box `[x0, y0, x1, y1]` in continuous pixel
/// coordinates of its image, and VOC's flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub class: u32,
    pub bbox: [f32; 4],
    /// Hard to recognise: neither a training target nor counted by the metrics.
    pub difficult: bool,
    /// Cut by the image edge.
    pub truncated: bool,
}

/// An image's annotation: its size as the XML states it and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub width: usize,
    pub height: usize,
    pub objects: Vec<Object>,
    /// Objects of classes not in the list, left out with `on_error = "skip"`.
    pub skipped: usize,
}

/// The image's main object, for classification and localization: the largest box (by
/// area; the first listed on ties), difficult or not. `None` without objects.
pub fn main_object(objects: &[Object]) -> Option<usize> {
    let area = |o: &Object| (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]);
    let mut best: Option<usize> = None;
    for (k, o) in objects.iter().enumerate() {
        if best.is_none_or(|b| area(o) > area(&objects[b])) {
            best = Some(k);
        }
    }
    best
}

/// The `VOC<year>` folder under `root`: `root/VOCdevkit/VOC<year>`, or `root/VOC<year>`
/// when `root` is the devkit folder itself.
pub fn year_dir(root: &Path, year: u32) -> Option<PathBuf> {
    // A segmentation set may come without Annotations.
    [root.join("VOCdevkit").join(format!("VOC{year}")), root.join(format!("VOC{year}"))]
        .into_iter()
        .find(|d| d.join("Annotations").is_dir() || d.join("SegmentationClass").is_dir())
}

/// Whether `root` holds every split of `cfg`: for each year its `Annotations` and the
/// split's `ImageSets/Main/<image_set>.txt` (written last, so a partial tree does not count).
pub fn holds(root: &Path, cfg: &VocConfig) -> bool {
    let lists = Path::new("ImageSets").join(cfg.lists());
    [&cfg.train, &cfg.test].iter().all(|split| {
        split.years.iter().all(|&y| {
            year_dir(root, y).is_some_and(|d| d.join(&lists).join(format!("{}.txt", split.image_set)).is_file())
        })
    })
}

/// Whether `root` holds what `archive` would bring (its year with one of its image sets).
pub fn holds_archive(root: &Path, archive: &Archive) -> bool {
    year_dir(root, archive.year)
        .is_some_and(|d| archive.image_sets.iter().any(|s| d.join("ImageSets/Main").join(format!("{s}.txt")).is_file()))
}

/// Moves every file under `from` to the same place under `to` (files already there kept),
/// then removes `from`. A folder that `to` lacks moves whole, in one rename, so that an
/// interrupted merge never leaves a half-filled folder that looks complete.
pub fn merge_into(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", from.display()))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() && !dst.exists() {
            std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move {} to {}", src.display(), dst.display()))?;
        } else if src.is_dir() {
            merge_into(&src, &dst)?;
        } else if !dst.exists() {
            std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move {} to {}", src.display(), dst.display()))?;
        }
    }
    std::fs::remove_dir_all(from).with_context(|| format!("cannot remove {}", from.display()))
}

/// A working folder beside `path` (`<parent>/<name>.<tag>`), for writing a set aside
/// before it moves into place. An error where `path` names no folder of its own (`.`,
/// `..`, `/`), whose staging folder would be `path` itself or above it.
pub fn beside(path: &Path, tag: &str) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let normal = abs.components().collect::<PathBuf>();
    let named = path.components().next_back().is_some_and(|c| matches!(c, std::path::Component::Normal(_)));
    match (normal.file_name(), normal.parent(), named) {
        (Some(name), Some(parent), true) => Ok(parent.join(format!("{}.{tag}", name.to_string_lossy()))),
        _ => bail!("{}: name a folder of its own (not `.`, `..` or `/`)", path.display()),
    }
}

/// Parses one `Annotations/<id>.xml`. An object whose class is not in `classes` is an
/// error naming the file and the name, or (with `skip_unknown`) left out and counted.
pub fn parse_annotation(path: &Path, classes: &[String], skip_unknown: bool) -> Result<Annotation> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_annotation_text(&text, classes, skip_unknown).with_context(|| format!("{}", path.display()))
}

fn parse_annotation_text(text: &str, classes: &[String], skip_unknown: bool) -> Result<Annotation> {
    let doc = roxmltree::Document::parse(text).context("malformed XML")?;
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        bail!("the root element is <{}>, expected <annotation>", root.tag_name().name());
    }
    let size = child(root, "size").context("no <size>")?;
    let width: usize = number(size, "width")?;
    let height: usize = number(size, "height")?;
    if width == 0 || height == 0 {
        bail!("<size> is {width}x{height}");
    }
    let mut objects = Vec::new();
    let mut skipped = 0;
    for (k, obj) in root.children().filter(|n| n.has_tag_name("object")).enumerate() {
        let name = text_of(obj, "name").with_context(|| format!("object {k}: no <name>"))?;
        let Some(class) = classes.iter().position(|c| c == name.trim()) else {
            if skip_unknown {
                skipped += 1;
                continue;
            }
            bail!(
                "object {k}: class `{}` is not one of the {} classes ({})",
                name.trim(),
                classes.len(),
                classes.join(", ")
            );
        };
        let flag = |tag: &str| -> Result<bool> {
            Ok(match text_of(obj, tag) {
                None => false,
                Some(t) => t.trim().parse::<f64>().with_context(|| format!("object {k}: <{tag}> is {t:?}"))? != 0.0,
            })
        };
        let bnd = child(obj, "bndbox").with_context(|| format!("object {k} ({}): no <bndbox>", name.trim()))?;
        let coord = |tag: &str| -> Result<f64> {
            let t = text_of(bnd, tag).with_context(|| format!("object {k}: no <bndbox><{tag}>"))?;
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| format!("object {k}: <{tag}> is {t:?}"))
        };
        let [xmin, ymin, xmax, ymax] = [coord("xmin")?, coord("ymin")?, coord("xmax")?, coord("ymax")?];
        if xmin > xmax || ymin > ymax {
            bail!("object {k} ({}): xmin {xmin} > xmax {xmax} or ymin {ymin} > ymax {ymax}", name.trim());
        }
        if xmin < 1.0 || ymin < 1.0 || xmax > width as f64 || ymax > height as f64 {
            bail!(
                "object {k} ({}): box ({xmin}, {ymin}, {xmax}, {ymax}) lies outside the {width}x{height} image \
                 (VOC's coordinates are 1-based pixels)",
                name.trim()
            );
        }
        objects.push(Object {
            class: class as u32,
            bbox: [(xmin - 1.0) as f32, (ymin - 1.0) as f32, xmax as f32, ymax as f32],
            difficult: flag("difficult")?,
            truncated: flag("truncated")?,
        });
    }
    Ok(Annotation { width, height, objects, skipped })
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children().find(|n| n.has_tag_name(tag))
}

fn text_of<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> Option<&'a str> {
    child(node, tag).map(|n| n.text().unwrap_or(""))
}

fn number(node: roxmltree::Node, tag: &str) -> Result<usize> {
    let t = text_of(node, tag).with_context(|| format!("no <{tag}> in <{}>", node.tag_name().name()))?;
    t.trim().parse().with_context(|| format!("<{tag}> is {t:?}"))
}

/// The ids listed in `VOC<year>/ImageSets/<lists>/<image_set>.txt` (`lists`: `Main` or
/// `Segmentation`), in order.
pub fn image_ids(year_dir: &Path, lists: &str, image_set: &str) -> Result<Vec<String>> {
    let path = year_dir.join("ImageSets").join(lists).join(format!("{image_set}.txt"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the image set {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// One split: per image its JPEG and its annotation (boxes) or its mask file (masks),
/// over the years in order.
pub struct VocSplitFiles {
    pub files: Vec<PathBuf>,
    pub annotations: Vec<Annotation>,
    pub masks: Vec<PathBuf>,
    /// Images left out (`on_error = "skip"`): unreadable annotations or missing images.
    pub skipped_images: usize,
}

pub fn read_split(root: &Path, split: &VocSplit, classes: &[String], masks: bool, skip: bool) -> Result<VocSplitFiles> {
    let mut out = VocSplitFiles { files: Vec::new(), annotations: Vec::new(), masks: Vec::new(), skipped_images: 0 };
    let mut skipped_objects = 0;
    let lists = if masks { "Segmentation" } else { "Main" };
    for &year in &split.years {
        let dir = year_dir(root, year)
            .with_context(|| format!("{}: no VOCdevkit/VOC{year}/Annotations folder", root.display()))?;
        for id in image_ids(&dir, lists, &split.image_set)? {
            let image = dir.join("JPEGImages").join(format!("{id}.jpg"));
            if masks {
                let mask = dir.join("SegmentationClass").join(format!("{id}.png"));
                let missing = [&image, &mask].into_iter().find(|p| !p.is_file());
                match missing {
                    None => {
                        out.files.push(image);
                        out.masks.push(mask);
                    }
                    Some(p) => {
                        let e =
                            format!("{}: missing (listed in ImageSets/{lists}/{}.txt)", p.display(), split.image_set);
                        if !skip {
                            bail!(e);
                        }
                        tracing::warn!("skipped: {e}");
                        out.skipped_images += 1;
                    }
                }
                continue;
            }
            let xml = dir.join("Annotations").join(format!("{id}.xml"));
            let read = || -> Result<Annotation> {
                if !image.is_file() {
                    bail!("{}: image missing (listed in ImageSets/Main/{}.txt)", image.display(), split.image_set);
                }
                parse_annotation(&xml, classes, skip)
            };
            match read() {
                Ok(a) => {
                    skipped_objects += a.skipped;
                    out.files.push(image);
                    out.annotations.push(a);
                }
                Err(e) if skip => {
                    tracing::warn!("skipped: {e:#}");
                    out.skipped_images += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if skipped_objects > 0 || out.skipped_images > 0 {
        tracing::warn!(
            "{}: skipped {skipped_objects} objects of unlisted classes and {} unreadable images",
            root.display(),
            out.skipped_images
        );
    }
    Ok(out)
}

/// One of VOC's official archives: its file, published MD5 (the devkit page's, as
/// torchvision checks), where it is served, and the year and image sets it holds.
pub struct Archive {
    pub file: &'static str,
    pub md5: &'static str,
    pub base_url: &'static str,
    pub year: u32,
    pub image_sets: &'static [&'static str],
}

/// The archives runner can fetch. VOC2012's test set is not public.
pub const ARCHIVES: [Archive; 3] = [
    Archive {
        file: "VOCtrainval_06-Nov-2007.tar",
        md5: "c52e279531787c972589f7e41ab4ae64",
        base_url: "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
        year: 2007,
        image_sets: &["train", "val", "trainval"],
    },
    Archive {
        file: "VOCtest_06-Nov-2007.tar",
        md5: "b6e924de25625d8de591ea690078ad9f",
        base_url: "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
        year: 2007,
        image_sets: &["test"],
    },
    Archive {
        file: "VOCtrainval_11-May-2012.tar",
        md5: "6cd6e144f989b92b3379bac3b3de84fd",
        base_url: "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        year: 2012,
        image_sets: &["train", "val", "trainval"],
    },
];

/// The archives holding the splits of `cfg`, each once, in `ARCHIVES` order.
pub fn archives_for(cfg: &VocConfig) -> Result<Vec<&'static Archive>> {
    let mut out: Vec<&'static Archive> = Vec::new();
    for split in [&cfg.train, &cfg.test] {
        for &year in &split.years {
            let a = ARCHIVES
                .iter()
                .find(|a| a.year == year && a.image_sets.contains(&split.image_set.as_str()))
                .with_context(|| {
                    format!("no official VOC archive holds VOC{year}'s `{}` image set to download", split.image_set)
                })?;
            if !out.iter().any(|o| o.file == a.file) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The folders of a `VOC<year>` tree that detection and segmentation read; the rest of an
/// archive is skipped.
const USED: [&str; 5] =
    ["Annotations/", "JPEGImages/", "ImageSets/Main/", "ImageSets/Segmentation/", "SegmentationClass/"];

/// A class mask: a palette (indexed) PNG whose values are class indices, `void` (255,
/// VOC's unlabelled border) or nothing else: values in `classes..255` are an error naming
/// the file. Returns the values row by row and `[height, width]`.
pub fn read_mask(path: &Path, classes: usize, void: u8) -> Result<(Vec<u8>, [usize; 2])> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the mask {}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().with_context(|| format!("{}: not a PNG file", path.display()))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    let limit = folder::max_image_pixels();
    if w as u64 * h as u64 > limit {
        bail!(
            "{}: declares {w}x{h} pixels, more than the limit of {limit} (RUNNER_MAX_IMAGE_PIXELS raises it)",
            path.display()
        );
    }
    let grey = info.color_type == png::ColorType::Grayscale;
    if !(info.color_type == png::ColorType::Indexed || grey) || info.bit_depth != png::BitDepth::Eight {
        bail!(
            "{}: a class mask must be an 8-bit palette (or greyscale) PNG of class indices, not {:?} {:?}",
            path.display(),
            info.color_type,
            info.bit_depth
        );
    }
    let size = reader.output_buffer_size().with_context(|| format!("{}: image too large", path.display()))?;
    let mut values = vec![0u8; size];
    reader.next_frame(&mut values).with_context(|| format!("{}: corrupt PNG data", path.display()))?;
    values.truncate(w * h);
    if let Some(p) = values.iter().position(|&v| v as usize >= classes && v != void) {
        bail!(
            "{}: pixel ({}, {}) has class {} but there are {classes} classes (0-{}) and {void} for void",
            path.display(),
            p % w,
            p / w,
            values[p],
            classes - 1
        );
    }
    Ok((values, [h, w]))
}

/// Fetches `archives` into `root` (each `.tar` checked against its MD5, kept for later)
/// from `base` (a mirror serving every file name) or each archive's official address, and
/// extracts the used folders of `VOCdevkit/VOC<year>/` into `root/VOCdevkit.part/`, moved
/// into `root/VOCdevkit/` once every archive is in (next to the years already there): an
/// interrupted download or extraction leaves no half-filled `VOCdevkit/VOC<year>`.
pub fn download(root: &Path, archives: &[(&str, Checksum, &str)]) -> Result<()> {
    let staging = root.join("VOCdevkit.part");
    for (file, checksum, base) in archives {
        let path = root.join(file);
        if !path.is_file() {
            download::fetch(&format!("{}/{file}", base.trim_end_matches('/')), &path, checksum.clone())?;
        }
        extract(&path, &staging)?;
    }
    if !staging.exists() {
        return Ok(());
    }
    merge_into(&staging, &root.join("VOCdevkit"))
}

/// Extracts the used folders of an uncompressed VOC `.tar` into `dest` (which stands for
/// the archive's `VOCdevkit/`). Paths that leave `dest` are refused.
fn extract(archive: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut count = 0usize;
    let entries = tar.entries().with_context(|| format!("{}: not a tar archive", archive.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", archive.display()))?;
        let name = entry.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
        let Some(rest) = name.strip_prefix("VOCdevkit/") else { continue };
        let Some((year, inner)) = rest.split_once('/') else { continue };
        let file = entry.header().entry_type().is_file();
        if !file || !year.starts_with("VOC") || !USED.iter().any(|u| inner.starts_with(u)) {
            continue;
        }
        if name.split('/').any(|part| part == ".." || part.is_empty()) {
            bail!("{}: member {name} leaves the archive's folder", archive.display());
        }
        let target = dest.join(rest);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        entry.unpack(&target).with_context(|| format!("{}: cannot extract {name}", archive.display()))?;
        count += 1;
    }
    if count == 0 {
        bail!("{}: no VOCdevkit/VOC<year>/Annotations, JPEGImages or ImageSets/Main files in it", archive.display());
    }
    tracing::info!("{}: extracted {count} files", archive.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["cat", "dog"].iter().map(|s| s.to_string()).collect()
    }

    /// A tar of `(name, type, data, link)` members, names written raw (the tar crate's
    /// own `set_path` refuses `..`, which an archive from elsewhere may still hold).
    fn tar_of(members: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in members {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A mask whose header (valid, CRC and all) declares 100000 x 100000 pixels is refused
    /// before its 10 GB buffer is allocated.
    #[test]
    fn a_mask_declaring_ten_billion_pixels_is_refused() {
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            [&(data.len() as u32).to_be_bytes()[..], kind, data, &crc.sum().to_be_bytes()].concat()
        };
        let mut ihdr = Vec::new();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 3, 0, 0, 0]); // 8-bit palette
        let png = [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"PLTE", &[0, 0, 0]),
            &chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
            &chunk(b"IEND", &[]),
        ]
        .concat();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mask.png");
        std::fs::write(&p, png).unwrap();
        let e = format!("{:#}", read_mask(&p, 21, 255).unwrap_err());
        assert!(e.contains("declares 100000x100000 pixels, more than the limit"), "{e}");
    }

    /// Nothing lands outside the target: a member climbing out with `..` stops the
    /// extraction (without the check, this test fails: evil.txt is written beside `out`),
    /// links and absolute paths are not extracted, the VOC files are.
    #[test]
    fn archives_cannot_write_outside_their_folder() {
        let d = tempfile::tempdir().unwrap();
        let (dest, archive) = (d.path().join("out/VOCdevkit"), d.path().join("a.tar"));
        let file = tar::EntryType::Regular;
        let good = ("VOCdevkit/VOC2007/JPEGImages/000001.jpg", file, &b"jpeg"[..], None);
        std::fs::write(
            &archive,
            tar_of(&[
                good,
                ("VOCdevkit/VOC2007/JPEGImages/link.jpg", tar::EntryType::Symlink, b"", Some("/etc/passwd")),
                ("VOCdevkit/VOC2007/JPEGImages/hard.jpg", tar::EntryType::Link, b"", Some("/etc/passwd")),
                ("/VOCdevkit/VOC2007/JPEGImages/abs.jpg", file, b"abs", None),
            ]),
        )
        .unwrap();
        extract(&archive, &dest).unwrap();
        let mut found: Vec<String> = std::fs::read_dir(dest.join("VOC2007/JPEGImages"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, ["000001.jpg"]);
        assert!(!d.path().join("VOCdevkit").exists() && !Path::new("/VOCdevkit").exists());

        let climbing = ("VOCdevkit/VOC2007/Annotations/../../../../evil.txt", file, &b"evil"[..], None);
        std::fs::write(&archive, tar_of(&[good, climbing])).unwrap();
        let e = format!("{:#}", extract(&archive, &d.path().join("second/VOCdevkit")).unwrap_err());
        assert!(e.contains("leaves the archive's folder"), "{e}");
        assert!(!d.path().join("evil.txt").exists() && !d.path().join("second/evil.txt").exists());
    }

    const XML: &str = r#"<annotation><folder>VOC2007</folder><filename>000001.jpg</filename>
        <size><width>100</width><height>50</height><depth>3</depth></size>
        <object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
          <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>50</ymax></bndbox></object>
        <object><name>cat</name><difficult>1</difficult>
          <bndbox><xmin>10.5</xmin><ymin>20</ymin><xmax>100</xmax><ymax>30</ymax></bndbox></object>
        </annotation>"#;

    #[test]
    fn voc_coordinates_become_continuous_edges() {
        let a = parse_annotation_text(XML, &classes(), false).unwrap();
        assert_eq!((a.width, a.height), (100, 50));
        // Pixel columns 1..=3 (1-based) are the edges [0, 3): 3 pixels wide, as the devkit's
        // xmax - xmin + 1.
        let dog = Object { class: 1, bbox: [0., 1., 3., 50.], difficult: false, truncated: true };
        let cat = Object { class: 0, bbox: [9.5, 19., 100., 30.], difficult: true, truncated: false };
        assert_eq!(a.objects, vec![dog, cat]);
    }

    #[test]
    fn bad_annotations_name_the_problem() {
        let err = |xml: &str| format!("{:#}", parse_annotation_text(xml, &classes(), false).unwrap_err());
        assert!(err("<annotation><size>").contains("malformed XML"));
        assert!(err("<annotation></annotation>").contains("no <size>"));
        let obj = |name: &str, b: &str| {
            format!("<annotation><size><width>10</width><height>10</height></size><object><name>{name}</name>{b}</object></annotation>")
        };
        let bb = |x0, y0, x1, y1| {
            format!("<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>")
        };
        let e = err(&obj("horse", &bb(1, 1, 2, 2)));
        assert!(e.contains("class `horse`") && e.contains("cat, dog"), "{e}");
        assert!(err(&obj("cat", "")).contains("no <bndbox>"));
        assert!(err(&obj("cat", &bb(5, 1, 2, 2))).contains("xmin 5 > xmax 2"));
        assert!(err(&obj("cat", &bb(0, 1, 2, 2))).contains("outside the 10x10 image"));
        assert!(err(&obj("cat", &bb(1, 1, 11, 2))).contains("outside"));
        assert!(err(&obj("cat", "<bndbox><xmin>a</xmin></bndbox>")).contains("<xmin> is \"a\""));
        // Unknown classes skipped and counted; an image without objects is fine.
        let a = parse_annotation_text(&obj("horse", &bb(1, 1, 2, 2)), &classes(), true).unwrap();
        assert_eq!((a.objects.len(), a.skipped), (0, 1));
    }
}
