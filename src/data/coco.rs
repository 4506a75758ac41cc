//! COCO's instances JSON (`annotations/instances_train2017.json`): images, categories and
//! box annotations, read and checked. Category ids are not contiguous (COCO 2017's 80 of
//! 1-90): runner's class index is the category's position in the file's `categories`, and
//! the id is kept beside it. Boxes stay `[x, y, w, h]` in pixels, as COCO writes them; the
//! box runner's detection code uses is `[x, y, x + w, y + h]` ([`CocoAnnotation::xyxy`]).
//! `area` is read as the file gives it (for COCO, the segmentation's area), not recomputed.
//!
//! Bad input is an error naming the file and what is wrong: the JSON's line and column,
//! or the annotation's id (an image or category id not listed, a box outside its image or
//! of no size, an id used twice).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{CocoIds, Split};
use crate::config::CocoSplit;
use crate::data::coco_mask::segmentation_mask;
use crate::data::synth::encode_mask_png;
use crate::data::voc::{main_object, Object};
use crate::data::NO_LABEL;
use crate::plots::voc_palette;

use crate::metrics::coco::CocoTruth;

/// COCO 2017's 80 category names in the order of its instances files' `categories` (ids
/// 1-90 with gaps): runner's class indices 0-79. For the plan while the files are not on
/// disk; a run reads them from the file.
pub const COCO2017_CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    #[serde(default)]
    pub iscrowd: u8,
    /// runner's extension, written by `runner data convert` from VOC's `difficult` flag
    /// (pycocotools ignores it): not a training target, and left out of VOC's metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub difficult: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl CocoAnnotation {
    /// `[x0, y0, x1, y1]`: the corners, as runner's boxes are.
    pub fn xyxy(&self) -> [f64; 4] {
        let [x, y, w, h] = self.bbox;
        [x, y, x + w, y + h]
    }
}

#[derive(Debug, Deserialize)]
struct File {
    images: Vec<CocoImage>,
    categories: Vec<CocoCategory>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
}

/// An instances file, checked: every annotation on a listed image, of a listed category,
/// inside its image (half a pixel of slack, as COCO's own boxes round), of positive size.
#[derive(Debug, Clone)]
pub struct CocoSet {
    pub path: PathBuf,
    pub images: Vec<CocoImage>,
    pub categories: Vec<CocoCategory>,
    pub annotations: Vec<CocoAnnotation>,
    /// Annotations left out (`on_error = "skip"`), with the first reason.
    pub skipped: usize,
}

impl CocoSet {
    /// runner's class index of a COCO category id: its position in `categories`.
    pub fn class_of(&self, category_id: u64) -> Option<usize> {
        self.categories.iter().position(|c| c.id == category_id)
    }

    /// The category names, in class-index order.
    pub fn class_names(&self) -> Vec<String> {
        self.categories.iter().map(|c| c.name.clone()).collect()
    }

    /// The annotations as COCOeval's ground truths (`area` from the file, else `w * h`).
    pub fn truths(&self) -> Vec<CocoTruth> {
        self.annotations
            .iter()
            .map(|a| CocoTruth {
                id: a.id,
                image: a.image_id,
                category: a.category_id,
                bbox: a.bbox,
                area: a.area.unwrap_or(a.bbox[2] * a.bbox[3]),
                iscrowd: a.iscrowd == 1,
            })
            .collect()
    }
}

/// Reads and checks the instances file at `path`: a bad annotation is an error, or with
/// `skip` left out, counted and warned of (a malformed file is always an error).
pub fn read_instances(path: &Path, skip: bool) -> Result<CocoSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{}: line {} column {}: {}", path.display(), e.line(), e.column(), without_position(&e))
    })?;
    let at = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let mut image_ids: HashMap<u64, &CocoImage> = HashMap::new();
    for img in &file.images {
        if image_ids.insert(img.id, img).is_some() {
            return Err(at(format!("image id {} is listed twice", img.id)));
        }
    }
    let mut cat_ids = HashSet::new();
    for c in &file.categories {
        if !cat_ids.insert(c.id) {
            return Err(at(format!("category id {} is listed twice", c.id)));
        }
    }
    if file.categories.is_empty() {
        return Err(at("no categories".into()));
    }
    let mut ann_ids = HashSet::new();
    let mut kept = Vec::with_capacity(file.annotations.len());
    let mut skipped = 0;
    for a in file.annotations {
        match check_annotation(&a, &mut ann_ids, &image_ids, &file.categories, &cat_ids) {
            Ok(()) => kept.push(a),
            Err(e) if skip => {
                if skipped == 0 {
                    tracing::warn!("skipped: {}: annotation id {}: {e}", path.display(), a.id);
                }
                skipped += 1;
            }
            Err(e) => return Err(at(format!("annotation id {}: {e}", a.id))),
        }
    }
    if skipped > 0 {
        tracing::warn!(
            "{}: skipped {skipped} annotations (on_error = \"skip\"; the first is named above)",
            path.display()
        );
    }
    Ok(CocoSet {
        path: path.to_path_buf(),
        images: file.images,
        categories: file.categories,
        annotations: kept,
        skipped,
    })
}

/// What is wrong with one annotation, if anything.
fn check_annotation(
    a: &CocoAnnotation,
    ann_ids: &mut HashSet<u64>,
    image_ids: &HashMap<u64, &CocoImage>,
    categories: &[CocoCategory],
    cat_ids: &HashSet<u64>,
) -> std::result::Result<(), String> {
    if !ann_ids.insert(a.id) {
        return Err("the id is used twice".into());
    }
    let Some(img) = image_ids.get(&a.image_id) else {
        return Err(format!("image_id {} is not among the file's images", a.image_id));
    };
    if !cat_ids.contains(&a.category_id) {
        let listed: Vec<String> = categories.iter().map(|c| c.id.to_string()).collect();
        return Err(format!("category_id {} is not among the categories ({})", a.category_id, listed.join(", ")));
    }
    let [x, y, w, h] = a.bbox;
    // A box of no size is allowed (COCO 2017's train set holds some): never a training
    // target, but a ground truth for COCO's metrics, as pycocotools counts it.
    let sized = w >= 0.0 && h >= 0.0 && a.bbox.iter().all(|v| v.is_finite());
    if !sized {
        return Err(format!("bbox {:?} is not [x, y, width, height] with a width and height >= 0", a.bbox));
    }
    let slack = 0.5;
    if x < -slack || y < -slack || x + w > img.width as f64 + slack || y + h > img.height as f64 + slack {
        return Err(format!(
            "bbox [x {x}, y {y}, w {w}, h {h}] reaches outside its image {} ({}x{})",
            img.file_name, img.width, img.height
        ));
    }
    if a.iscrowd > 1 {
        return Err(format!("iscrowd {} (expected 0 or 1)", a.iscrowd));
    }
    Ok(())
}

/// The class names of the instances file at `path`, in class-index order, without
/// checking the rest (for the plan; the run reads the whole file).
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Categories {
        categories: Vec<CocoCategory>,
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let c: Categories = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
        anyhow::anyhow!("{}: line {} column {}: {}", path.display(), e.line(), e.column(), without_position(&e))
    })?;
    Ok(c.categories.into_iter().map(|c| c.name).collect())
}

/// One split of a COCO set under `root`: per image, in the file's order, its file in
/// `split.images`, its objects (crowd regions and runner's `difficult` ones are never
/// training targets) and COCO's truths for COCO's metrics. Returns the class names too.
/// With `masks`, each image's class mask is made from the segmentations ([`class_mask`])
/// and the class names start with `background`. An image file that is missing, or a
/// segmentation that cannot be read, is an error naming it, or skipped with `skip`.
pub fn read_split(root: &Path, split: &CocoSplit, skip: bool, masks: bool) -> Result<(Vec<String>, Split)> {
    let set = read_instances(&root.join(&split.json), skip)?;
    let dir = root.join(&split.images);
    let mut by_image: HashMap<u64, Vec<&CocoAnnotation>> = HashMap::new();
    for a in &set.annotations {
        by_image.entry(a.image_id).or_default().push(a);
    }
    let mut truths_of: HashMap<u64, Vec<CocoTruth>> = HashMap::new();
    for t in set.truths() {
        truths_of.entry(t.image).or_default().push(t);
    }
    let mut problems = Vec::new();
    let mut present = Vec::new();
    for img in &set.images {
        let file = dir.join(&img.file_name);
        if file.is_file() {
            present.push((img, file));
        } else {
            problems.push(format!("{}: image id {}: {} is missing", set.path.display(), img.id, file.display()));
        }
    }
    let mask_files = if masks {
        let all_present = problems.is_empty();
        let files = write_class_masks(root, &set, &present, &by_image, all_present)?;
        let mut kept = Vec::new();
        for (p, m) in present.into_iter().zip(files) {
            match m {
                Ok(path) => kept.push((p, Some(path))),
                Err(e) => problems.push(e),
            }
        }
        kept
    } else {
        present.into_iter().map(|p| (p, None)).collect()
    };
    if let Some(first) = problems.first() {
        if !skip {
            bail!("{first}");
        }
        tracing::warn!("skipped: {first}");
        tracing::warn!("{}: skipped {} images (the first is named above)", set.path.display(), problems.len());
    }
    let mut out = Split::default();
    let mut ids = CocoIds { categories: set.categories.iter().map(|c| c.id).collect(), ..Default::default() };
    for ((img, file), mask) in mask_files {
        let objects: Vec<Object> = by_image
            .get(&img.id)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| Object {
                class: set.class_of(a.category_id).unwrap_or_default() as u32,
                // Clipped to the image (COCO's boxes may reach half a pixel past an edge); COCO's
                // metrics read the box as written.
                bbox: {
                    let [x0, y0, x1, y1] = a.xyxy();
                    let (w, h) = (img.width as f64, img.height as f64);
                    [x0.max(0.0), y0.max(0.0), x1.min(w), y1.min(h)].map(|v| v as f32)
                },
                difficult: a.iscrowd == 1 || a.difficult == 1 || a.bbox[2] <= 0.0 || a.bbox[3] <= 0.0,
                truncated: false,
            })
            .collect();
        out.labels.push(main_object(&objects).map_or(NO_LABEL, |k| objects[k].class));
        out.objects.push(objects);
        out.files.push(file);
        out.masks.extend(mask);
        ids.images.push(img.id);
        ids.truths.push(truths_of.remove(&img.id).unwrap_or_default());
    }
    out.len = out.files.len();
    let mut names = set.class_names();
    if masks {
        names.insert(0, "background".into());
    }
    out.mask_classes = names.len();
    out.coco = Some(ids);
    Ok((names, out))
}

/// An image's class mask, row-major `h x w`: 0 background, `class + 1` where one object's
/// segmentation covers the pixel, 255 (void, left out of the loss and the metrics) where
/// two or more objects overlap (torchvision's COCO segmentation reference does the same)
/// and under crowd regions.
pub fn class_mask(img: &CocoImage, anns: &[(&CocoAnnotation, usize, &Value)]) -> std::result::Result<Vec<u8>, String> {
    let (h, w) = (img.height as usize, img.width as usize);
    let mut out = vec![0u8; h * w];
    let mut crowd = vec![false; h * w];
    for (a, class, seg) in anns {
        let m = segmentation_mask(seg, h, w).map_err(|e| format!("annotation id {}: segmentation: {e}", a.id))?;
        for (p, _) in m.iter().enumerate().filter(|(_, v)| **v == 1) {
            if a.iscrowd == 1 {
                crowd[p] = true;
            } else if out[p] == 0 {
                out[p] = (*class + 1) as u8;
            } else {
                out[p] = 255;
            }
        }
    }
    for (o, c) in out.iter_mut().zip(crowd) {
        if c {
            *o = 255;
        }
    }
    Ok(out)
}

/// Writes the class masks of `images` as palette PNGs under
/// `root/runner_masks/<json's path under root>/<image id>.png`, kept for later runs while
/// the JSON's size and modification time are those recorded in the folder's `.complete`
/// (written only when every image of the file was `all_present` and got its mask). Per
/// image: its PNG, or what is wrong with its segmentations.
fn write_class_masks(
    root: &Path,
    set: &CocoSet,
    images: &[(&CocoImage, PathBuf)],
    by_image: &HashMap<u64, Vec<&CocoAnnotation>>,
    all_present: bool,
) -> Result<Vec<std::result::Result<PathBuf, String>>> {
    #[derive(Deserialize)]
    struct Segs<'a> {
        #[serde(borrow, default)]
        annotations: Vec<Seg<'a>>,
    }
    #[derive(Deserialize)]
    struct Seg<'a> {
        id: u64,
        #[serde(borrow, default)]
        segmentation: Option<&'a RawValue>,
    }
    if set.categories.len() > 254 {
        bail!("{}: {} categories; class masks hold at most 254", set.path.display(), set.categories.len());
    }
    // Named after the whole path: Roboflow's exports name every split's file
    // `<split>/_annotations.coco.json`.
    let rel = set.path.strip_prefix(root).unwrap_or(&set.path).with_extension("");
    let name: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let dir = root.join("runner_masks").join(name.join("__"));
    let meta = std::fs::metadata(&set.path).with_context(|| format!("cannot read {}", set.path.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos());
    let stamp = format!("{} {}\n", meta.len(), mtime.unwrap_or_default());
    let path_of = |id: u64| dir.join(format!("{id}.png"));
    let marker = dir.join(".complete");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return Ok(images.iter().map(|(img, _)| Ok(path_of(img.id))).collect());
    }
    tracing::info!("writing the class masks of {} images into {}", images.len(), dir.display());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = std::fs::read_to_string(&set.path).with_context(|| format!("cannot read {}", set.path.display()))?;
    let segs: Segs = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", set.path.display()))?;
    let seg_of: HashMap<u64, &RawValue> =
        segs.annotations.iter().filter_map(|s| s.segmentation.map(|v| (s.id, v))).collect();
    let palette = voc_palette();
    let results: Vec<std::result::Result<PathBuf, String>> = images
        .par_iter()
        .map(|(img, _)| {
            let at = |e: String| format!("{}: image id {}: {e}", set.path.display(), img.id);
            let mut parsed = Vec::new();
            for a in by_image.get(&img.id).map(Vec::as_slice).unwrap_or_default() {
                let raw = seg_of.get(&a.id).ok_or_else(|| at(format!("annotation id {} has no segmentation", a.id)))?;
                let v: Value =
                    serde_json::from_str(raw.get()).map_err(|e| at(format!("annotation id {}: {e}", a.id)))?;
                parsed.push((*a, set.class_of(a.category_id).unwrap_or_default(), v));
            }
            let refs: Vec<(&CocoAnnotation, usize, &Value)> = parsed.iter().map(|(a, c, v)| (*a, *c, v)).collect();
            let mask = class_mask(img, &refs).map_err(at)?;
            let png = encode_mask_png(&mask, [img.height as usize, img.width as usize], &palette)
                .map_err(|e| at(format!("{e:#}")))?;
            let path = path_of(img.id);
            std::fs::write(&path, png).map_err(|e| at(format!("cannot write {}: {e}", path.display())))?;
            Ok(path)
        })
        .collect();
    if all_present && results.iter().all(|r| r.is_ok()) {
        std::fs::write(&marker, stamp).with_context(|| format!("cannot write {}", marker.display()))?;
    }
    Ok(results)
}

/// serde_json's message without its own " at line L column C" (said once, first).
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
  "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
             {"id": 9, "file_name": "b.jpg", "width": 50, "height": 50}],
  "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
  "annotations": [
    {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 900.5, "iscrowd": 0},
    {"id": 2, "image_id": 7, "category_id": 18, "bbox": [0, 0, 100, 80], "iscrowd": 1}
  ]
}"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("instances.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// By hand on a 4x6 image: object A (class 0) the square over columns 0-2, rows 0-2;
    /// object B (class 2) columns 2-4, rows 1-3; a crowd region over column 5. A alone is 1,
    /// B alone 3, their overlap (column 2, rows 1-2) and the crowd's column 255.
    #[test]
    fn class_masks_mark_overlaps_and_crowds_void() {
        let img = CocoImage { id: 1, file_name: "a.jpg".into(), width: 6, height: 4 };
        let ann = |id, iscrowd| CocoAnnotation {
            id,
            image_id: 1,
            category_id: 1,
            bbox: [0.0, 0.0, 1.0, 1.0],
            area: None,
            iscrowd,
            difficult: 0,
        };
        let (a, b, c) = (ann(1, 0), ann(2, 0), ann(3, 1));
        let sa = serde_json::json!([[0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0]]);
        let sb = serde_json::json!([[2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]);
        // Column-major: 20 pixels of columns 0-4, then the 4 of column 5.
        let sc = serde_json::json!({"counts": [20, 4], "size": [4, 6]});
        let m = class_mask(&img, &[(&a, 0, &sa), (&b, 2, &sb), (&c, 1, &sc)]).unwrap();
        let want = [[1, 1, 1, 0, 0, 255], [1, 1, 255, 3, 3, 255], [1, 1, 255, 3, 3, 255], [0, 0, 3, 3, 3, 255]];
        assert_eq!(m, want.concat());
        let bad = serde_json::json!({"counts": [20, 4], "size": [4, 5]});
        let e = class_mask(&img, &[(&a, 0, &bad)]).unwrap_err();
        assert!(e.contains("annotation id 1: segmentation: the RLE's size is [4, 5], the image is [4, 6]"), "{e}");
    }

    #[test]
    fn reads_classes_by_position_and_boxes_as_written() {
        let d = tempfile::tempdir().unwrap();
        let set = read_instances(&write(d.path(), GOOD), false).unwrap();
        // Class index = position in `categories`, not the id: dog (18) is 0, person (1) is 1.
        assert_eq!((set.class_of(18), set.class_of(1), set.class_of(2)), (Some(0), Some(1), None));
        assert_eq!(set.class_names(), ["dog", "person"]);
        assert_eq!(set.annotations[0].xyxy(), [10.0, 20.0, 40.0, 60.0]);
        let t = set.truths();
        // `area` read (900.5, not 30 * 40), else the box's; image 9 has no objects: allowed.
        assert_eq!((t[0].area, t[1].area, t[1].iscrowd), (900.5, 8000.0, true));
    }

    #[test]
    fn bad_files_name_the_line_or_the_annotation() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (GOOD.replace("\"width\": 100,", "\"width\": 100"), "line 2 column"),
            (
                GOOD.replace("\"image_id\": 7, \"category_id\": 18", "\"image_id\": 8, \"category_id\": 18"),
                "annotation id 2: image_id 8 is not among",
            ),
            (
                GOOD.replace("\"category_id\": 1,", "\"category_id\": 2,"),
                "annotation id 1: category_id 2 is not among the categories (18, 1)",
            ),
            (
                GOOD.replace("[10, 20, 30, 40]", "[80, 20, 30, 40]"),
                "annotation id 1: bbox [x 80, y 20, w 30, h 40] reaches outside its image a.jpg (100x80)",
            ),
            (
                GOOD.replace("[10, 20, 30, 40]", "[10, 20, -1, 40]"),
                "annotation id 1: bbox [10.0, 20.0, -1.0, 40.0] is not [x, y, width, height] with a width and height >= 0",
            ),
            (GOOD.replace("{\"id\": 2,", "{\"id\": 1,"), "annotation id 1: the id is used twice"),
            (GOOD.replace("[10, 20, 30, 40]", "[10, 20, 30]"), "line 6 column"),
        ];
        for (text, want) in cases {
            let e = read_instances(&write(d.path(), &text), false).unwrap_err().to_string();
            assert!(e.contains("instances.json: ") && e.contains(want), "want {want:?} in: {e}");
        }
        // With `skip`, a bad annotation is left out and counted; a malformed file still fails.
        let text = GOOD.replace("\"category_id\": 1,", "\"category_id\": 2,");
        let set = read_instances(&write(d.path(), &text), true).unwrap();
        assert_eq!((set.annotations.len(), set.skipped, set.annotations[0].id), (1, 1, 2));
        let text = GOOD.replace("[10, 20, 30, 40]", "[10, 20, 30]");
        assert!(read_instances(&write(d.path(), &text), true).is_err());
    }
}
