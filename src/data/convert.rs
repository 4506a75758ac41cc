//! `runner data convert`: a detection set from one layout to another (Pascal VOC, COCO,
//! YOLO), every box and class kept. Each layout is read into a [`Collection`] (the splits,
//! each image's size and boxes as corners in pixels) and written from it.
//!
//! What each layout can hold, and so what a conversion carries:
//! - VOC: integer pixel edges (`xmin..=xmax`, 1-based), `difficult`; no crowds (a crowd
//!   region becomes a difficult object, which VOC's metrics ignore as COCO's ignore crowds).
//!   Non-integer corners are rounded to the nearest pixel edge.
//! - COCO: `[x, y, w, h]` in pixels, `iscrowd`, `area`; VOC's `difficult` is kept in
//!   runner's own `difficult` field of the annotation (pycocotools ignores it).
//! - YOLO: normalised centres and sizes, written with every digit (`{}` of f64), no flags:
//!   crowd regions are left out and counted, difficult objects become ordinary ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::coco::{read_instances, CocoAnnotation, CocoCategory, CocoImage};
use super::voc;
use crate::config::VocSplit;
use crate::data::synth::{write_shapes, ShapesOptions, ShapesSummary};
use crate::data::voc::VOC_CLASSES;
use crate::data::yolo;

/// A layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Voc,
    Coco,
    Yolo,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "voc" => Format::Voc,
            "coco" => Format::Coco,
            "yolo" => Format::Yolo,
            _ => return None,
        })
    }
}

/// A box: corners `[x0, y0, x1, y1]` in pixels and the flags of the layouts that have them.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub class: usize,
    pub bbox: [f64; 4],
    pub difficult: bool,
    pub crowd: bool,
    /// COCO's `area` (of the segmentation), where the source gives one.
    pub area: Option<f64>,
}

/// An image: its file, its size and its boxes; `id`: COCO's image id, where the source is COCO.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub image: PathBuf,
    pub id: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub boxes: Vec<Labelled>,
}

/// A whole set: class names (and COCO's category ids where the source has them) and the
/// splits in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    pub classes: Vec<String>,
    pub category_ids: Option<Vec<u64>>,
    pub splits: Vec<(String, Vec<Item>)>,
}

/// What a conversion wrote, and what the target could not hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub images: usize,
    pub boxes: usize,
    /// Crowd regions YOLO cannot hold, left out.
    pub crowds_left_out: usize,
    /// Boxes of no size YOLO cannot hold (a label of width or height 0 is no box), left out.
    pub empty_left_out: usize,
    /// Flags the target has no place for (difficult in YOLO, crowd in VOC).
    pub flags_lost: usize,
}

/// Reads the set in `src`. `classes`: the class names in index order, where the layout
/// does not name them (VOC; default: the `classes` of a synthetic set's `shapes.toml`,
/// else VOC's 20) or to override `data.yaml` (YOLO).
pub fn read(format: Format, src: &Path, classes: Option<Vec<String>>) -> Result<Collection> {
    match format {
        Format::Voc => read_voc(src, classes),
        Format::Coco => read_coco(src),
        Format::Yolo => read_yolo(src, classes),
    }
}

/// Writes `c` into `dst` in `format`; image files are hard-linked where the filesystem
/// allows, else copied (VOC's JPEGImages re-encode other formats as JPEG).
pub fn write(format: Format, c: &Collection, dst: &Path) -> Result<Written> {
    match format {
        Format::Voc => write_voc(c, dst),
        Format::Coco => write_coco(c, dst),
        Format::Yolo => write_yolo(c, dst),
    }
}

fn read_voc(src: &Path, classes: Option<Vec<String>>) -> Result<Collection> {
    let years: Vec<u32> = [src.join("VOCdevkit"), src.to_path_buf()]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("VOC")?.parse().ok())
        .collect();
    let year = match years.as_slice() {
        [y] => *y,
        [] => bail!("{}: no VOCdevkit/VOC<year> folder", src.display()),
        more => bail!("{}: holds VOC years {more:?}; convert one folder per year", src.display()),
    };
    let dir = voc::year_dir(src, year).with_context(|| format!("{}: no VOC{year}/Annotations", src.display()))?;
    let classes = match classes {
        Some(c) => c,
        None => manifest_classes(&dir).unwrap_or_else(|| VOC_CLASSES.iter().map(|c| c.to_string()).collect()),
    };
    // The split lists: ImageSets/Main/<set>.txt, not the per-class `<class>_<set>.txt`.
    let lists = dir.join("ImageSets/Main");
    let mut sets: Vec<String> = std::fs::read_dir(&lists)
        .with_context(|| format!("cannot read {}", lists.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".txt").map(str::to_string))
        .filter(|s| !s.contains('_'))
        .collect();
    sets.sort();
    let mut splits = Vec::new();
    for set in sets {
        let which = VocSplit { years: vec![year], image_set: set.clone() };
        let read = voc::read_split(src, &which, &classes, false, false)?;
        let items = read
            .files
            .into_iter()
            .zip(read.annotations)
            .map(|(image, a)| Item {
                image,
                id: None,
                width: a.width as u32,
                height: a.height as u32,
                boxes: a
                    .objects
                    .iter()
                    .map(|o| Labelled {
                        class: o.class as usize,
                        bbox: o.bbox.map(f64::from),
                        difficult: o.difficult,
                        crowd: false,
                        area: None,
                    })
                    .collect(),
            })
            .collect();
        splits.push((set, items));
    }
    Ok(Collection { classes, category_ids: None, splits })
}

/// The `classes` list of `dir`'s `classes.toml` (written by a conversion to VOC) or
/// `shapes.toml` (a synthetic set's record), if either has one.
fn manifest_classes(dir: &Path) -> Option<Vec<String>> {
    ["classes.toml", "shapes.toml"].iter().find_map(|f| {
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()?;
        let list = doc.get("classes")?.as_array()?;
        let names: Vec<String> = list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        (names.len() == list.len() && !names.is_empty()).then_some(names)
    })
}

fn read_coco(src: &Path) -> Result<Collection> {
    let ann = src.join("annotations");
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&ann)
        .with_context(|| format!("cannot read {} (COCO keeps annotations/instances_<split>.json)", ann.display()))?
        .filter_map(|e| {
            let p = e.ok()?.path();
            let split = p.file_name()?.to_str()?.strip_prefix("instances_")?.strip_suffix(".json")?.to_string();
            Some((split, p))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no instances_<split>.json", ann.display());
    }
    let mut classes: Option<(Vec<String>, Vec<u64>, PathBuf)> = None;
    let mut splits = Vec::new();
    for (split, path) in files {
        let set = read_instances(&path, false)?;
        let ids: Vec<u64> = set.categories.iter().map(|c| c.id).collect();
        match &classes {
            Some((names, cids, first)) if (names, cids) != (&set.class_names(), &ids) => bail!(
                "{}: its categories differ from those of {}; one class list serves every split",
                path.display(),
                first.display()
            ),
            Some(_) => {}
            None => classes = Some((set.class_names(), ids, path.clone())),
        }
        let dir = [src.join(&split), src.join("images").join(&split)]
            .into_iter()
            .find(|d| d.is_dir())
            .with_context(|| format!("{}: no image folder {split}/ or images/{split}/ beside it", path.display()))?;
        let mut by_image: BTreeMap<u64, Vec<Labelled>> = BTreeMap::new();
        for a in &set.annotations {
            by_image.entry(a.image_id).or_default().push(Labelled {
                class: set.class_of(a.category_id).unwrap_or_default(),
                bbox: a.xyxy(),
                difficult: a.difficult == 1,
                crowd: a.iscrowd == 1,
                area: a.area,
            });
        }
        let items = set
            .images
            .iter()
            .map(|img| Item {
                image: dir.join(&img.file_name),
                id: Some(img.id),
                width: img.width,
                height: img.height,
                boxes: by_image.remove(&img.id).unwrap_or_default(),
            })
            .collect();
        splits.push((split, items));
    }
    let (classes, ids, _) = classes.context("no split")?;
    Ok(Collection { classes, category_ids: Some(ids), splits })
}

fn read_yolo(src: &Path, classes: Option<Vec<String>>) -> Result<Collection> {
    let classes = yolo::class_names(src, classes.as_deref())?;
    let images = src.join("images");
    let mut names: Vec<String> = std::fs::read_dir(&images)
        .with_context(|| format!("cannot read {} (YOLO keeps images/<split>/)", images.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    let mut splits = Vec::new();
    for name in names {
        let dir = images.join(&name);
        let mut items = Vec::new();
        for image in yolo::images_in(&dir)? {
            let (width, height) = image::image_dimensions(&image)
                .with_context(|| format!("{}: not a readable image", image.display()))?;
            let boxes = yolo::read_boxes(&image, classes.len())?
                .unwrap_or_default()
                .into_iter()
                .map(|(class, bbox)| Labelled { class, bbox, difficult: false, crowd: false, area: None })
                .collect();
            items.push(Item { image, id: None, width, height, boxes });
        }
        if items.is_empty() {
            bail!("{}: no .jpg, .jpeg, .png or .bmp images", dir.display());
        }
        splits.push((name, items));
    }
    Ok(Collection { classes, category_ids: None, splits })
}

/// Writes the synthetic shapes set of `opts` in `format` into `dst`, its `train` and `test`
/// splits under `names`: in VOC's layout into `voc_staging` first (a working folder,
/// removed afterwards), then converted. Returns what the set holds and what was written.
pub fn write_shapes_as(
    format: Format,
    opts: &ShapesOptions,
    names: &[String; 2],
    voc_staging: &Path,
    dst: &Path,
) -> Result<(ShapesSummary, Written)> {
    let clear = || -> Result<()> {
        if voc_staging.exists() {
            std::fs::remove_dir_all(voc_staging).with_context(|| format!("cannot remove {}", voc_staging.display()))?;
        }
        Ok(())
    };
    clear()?;
    let summary = write_shapes(voc_staging, opts)?;
    let mut c = read(Format::Voc, voc_staging, None)?;
    for (split, _) in &mut c.splits {
        *split = if split == "train" { names[0].clone() } else { names[1].clone() };
    }
    let written = write(format, &c, dst)?;
    clear()?;
    Ok((summary, written))
}

/// Puts `src` at `dst`: a hard link where possible, else a copy.
fn place(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if dst.exists() {
        std::fs::remove_file(dst).with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The file names a split's images take in a flat folder: two images of one name (from
/// two subfolders of the source) are an error, never one file for both.
#[derive(Default)]
struct Names(BTreeMap<String, PathBuf>);

impl Names {
    fn claim(&mut self, p: &Path) -> Result<String> {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("{}: no file name", p.display()))?;
        if let Some(other) = self.0.get(&name).filter(|o| o.as_path() != p) {
            bail!("{} and {} would both be {name} in the written split; rename one", other.display(), p.display());
        }
        self.0.insert(name.clone(), p.to_path_buf());
        Ok(name)
    }
}

fn write_coco(c: &Collection, dst: &Path) -> Result<Written> {
    let mut out = Written::default();
    let cat_ids: Vec<u64> = c.category_ids.clone().unwrap_or_else(|| (1..=c.classes.len() as u64).collect());
    let categories: Vec<CocoCategory> =
        c.classes.iter().zip(&cat_ids).map(|(name, &id)| CocoCategory { id, name: name.clone() }).collect();
    for (split, items) in &c.splits {
        let (mut images, mut annotations) = (Vec::new(), Vec::new());
        let mut names = Names::default();
        for (k, item) in items.iter().enumerate() {
            let id = item.id.unwrap_or(k as u64 + 1);
            let name = names.claim(&item.image)?;
            place(&item.image, &dst.join(split).join(&name))?;
            images.push(CocoImage { id, file_name: name, width: item.width, height: item.height });
            for b in &item.boxes {
                let [x0, y0, x1, y1] = b.bbox;
                annotations.push(CocoAnnotation {
                    id: annotations.len() as u64 + 1,
                    image_id: id,
                    category_id: cat_ids[b.class],
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    area: Some(b.area.unwrap_or((x1 - x0) * (y1 - y0))),
                    iscrowd: b.crowd as u8,
                    difficult: b.difficult as u8,
                });
            }
            out.images += 1;
        }
        out.boxes += annotations.len();
        // The box as a polygon, so that tools that draw or rasterise segmentations work.
        let annotations: Vec<serde_json::Value> = annotations
            .into_iter()
            .map(|a| {
                let [x, y, w, h] = a.bbox;
                let mut v = serde_json::to_value(&a).unwrap_or_default(); // ok: plain numbers
                v["segmentation"] = serde_json::json!([[x, y, x + w, y, x + w, y + h, x, y + h]]);
                v
            })
            .collect();
        let doc = serde_json::json!({ "images": images, "annotations": annotations, "categories": categories });
        write_text(&dst.join("annotations").join(format!("instances_{split}.json")), &doc.to_string())?;
    }
    Ok(out)
}

fn write_yolo(c: &Collection, dst: &Path) -> Result<Written> {
    let mut out = Written::default();
    for (split, items) in &c.splits {
        let mut names = Names::default();
        for item in items {
            let name = names.claim(&item.image)?;
            let image = dst.join("images").join(split).join(&name);
            place(&item.image, &image)?;
            let (w, h) = (item.width as f64, item.height as f64);
            let mut text = String::new();
            for b in &item.boxes {
                if b.crowd {
                    out.crowds_left_out += 1;
                    continue;
                }
                // Clipped to the image: COCO allows half a pixel beyond its edges.
                let [x0, y0, x1, y1] = [b.bbox[0].max(0.0), b.bbox[1].max(0.0), b.bbox[2].min(w), b.bbox[3].min(h)];
                if x1 <= x0 || y1 <= y0 {
                    out.empty_left_out += 1;
                    continue;
                }
                out.flags_lost += b.difficult as usize;
                let (cx, cy, bw, bh) = ((x0 + x1) / 2.0 / w, (y0 + y1) / 2.0 / h, (x1 - x0) / w, (y1 - y0) / h);
                text += &format!("{} {cx} {cy} {bw} {bh}\n", b.class);
                out.boxes += 1;
            }
            let labels = yolo::label_path(&image).with_context(|| format!("{}: no images folder", image.display()))?;
            write_text(&labels, &text)?;
            out.images += 1;
        }
    }
    let mut yaml = "# written by runner data convert\npath: .\n".to_string();
    let names: Vec<&String> = c.splits.iter().map(|(s, _)| s).collect();
    let train = names.iter().find(|s| s.contains("train")).or(names.first());
    let val = names.iter().find(|s| Some(*s) != train);
    if let Some(t) = train {
        yaml += &format!("train: images/{t}\n");
    }
    if let Some(v) = val.or(train) {
        yaml += &format!("val: images/{v}\n");
    }
    yaml += "names:\n";
    for (k, name) in c.classes.iter().enumerate() {
        yaml += &format!("  {k}: {name}\n");
    }
    write_text(&dst.join("data.yaml"), &yaml)?;
    Ok(out)
}

fn write_voc(c: &Collection, dst: &Path) -> Result<Written> {
    let mut out = Written::default();
    let root = dst.join("VOCdevkit").join("VOC2007");
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (split, items) in &c.splits {
        let mut ids = String::new();
        for item in items {
            let stem = item
                .image
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("{}: no file name", item.image.display()))?
                .to_string();
            if let Some(other) = seen.get(&stem).filter(|p| **p != item.image) {
                bail!(
                    "{} and {} would both be VOC image {stem}; VOC names images by their stem",
                    other.display(),
                    item.image.display()
                );
            }
            seen.insert(stem.clone(), item.image.clone());
            let jpeg = root.join("JPEGImages").join(format!("{stem}.jpg"));
            let is_jpeg = item.image.extension().is_some_and(|x| {
                let x = x.to_string_lossy().to_lowercase();
                x == "jpg" || x == "jpeg"
            });
            if is_jpeg {
                place(&item.image, &jpeg)?;
            } else {
                let img = image::open(&item.image).with_context(|| format!("cannot read {}", item.image.display()))?;
                std::fs::create_dir_all(root.join("JPEGImages"))?;
                img.to_rgb8().save(&jpeg).with_context(|| format!("cannot write {}", jpeg.display()))?;
            }
            let mut xml = format!(
                "<annotation>\n  <folder>VOC2007</folder>\n  <filename>{stem}.jpg</filename>\n  <size>\n    <width>{}</width>\n    <height>{}</height>\n    <depth>3</depth>\n  </size>\n",
                item.width, item.height
            );
            for b in &item.boxes {
                let [x0, y0, x1, y1] = b.bbox;
                // 1-based inclusive pixel indices: continuous [x0, x1) is pixels x0 + 1 ..= x1.
                let xmin = (x0.round() as i64 + 1).max(1);
                let ymin = (y0.round() as i64 + 1).max(1);
                let xmax = (x1.round() as i64).max(xmin).min(item.width as i64);
                let ymax = (y1.round() as i64).max(ymin).min(item.height as i64);
                out.flags_lost += b.crowd as usize;
                xml += &format!(
                    "  <object>\n    <name>{}</name>\n    <truncated>0</truncated>\n    <difficult>{}</difficult>\n    <bndbox>\n      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>\n",
                    xml_escape(&c.classes[b.class]),
                    (b.difficult || b.crowd) as u8
                );
                out.boxes += 1;
            }
            xml += "</annotation>\n";
            write_text(&root.join("Annotations").join(format!("{stem}.xml")), &xml)?;
            ids += &format!("{stem}\n");
            out.images += 1;
        }
        write_text(&root.join("ImageSets/Main").join(format!("{split}.txt")), &ids)?;
    }
    let classes: Vec<String> = c.classes.iter().map(|n| format!("{n:?}")).collect();
    write_text(&root.join("classes.toml"), &format!("classes = [{}]\n", classes.join(", ")))?;
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
