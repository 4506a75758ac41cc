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
use serde::Deserialize;

use crate::metrics::coco::CocoTruth;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    #[serde(default)]
    pub area: Option<f64>,
    #[serde(default)]
    pub iscrowd: u8,
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

/// Reads and checks the instances file at `path`.
pub fn read_instances(path: &Path) -> Result<CocoSet> {
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
    for a in &file.annotations {
        let ann = |what: String| at(format!("annotation id {}: {what}", a.id));
        if !ann_ids.insert(a.id) {
            return Err(ann("the id is used twice".into()));
        }
        let Some(img) = image_ids.get(&a.image_id) else {
            return Err(ann(format!("image_id {} is not among the file's images", a.image_id)));
        };
        if !cat_ids.contains(&a.category_id) {
            let listed: Vec<String> = file.categories.iter().map(|c| c.id.to_string()).collect();
            return Err(ann(format!(
                "category_id {} is not among the categories ({})",
                a.category_id,
                listed.join(", ")
            )));
        }
        let [x, y, w, h] = a.bbox;
        let sized = w > 0.0 && h > 0.0 && a.bbox.iter().all(|v| v.is_finite());
        if !sized {
            return Err(ann(format!("bbox {:?} has no size (expected [x, y, width, height])", a.bbox)));
        }
        let slack = 0.5;
        if x < -slack || y < -slack || x + w > img.width as f64 + slack || y + h > img.height as f64 + slack {
            return Err(ann(format!(
                "bbox [x {x}, y {y}, w {w}, h {h}] reaches outside its image {} ({}x{})",
                img.file_name, img.width, img.height
            )));
        }
        if a.iscrowd > 1 {
            bail!("{}: annotation id {}: iscrowd {} (expected 0 or 1)", path.display(), a.id, a.iscrowd);
        }
    }
    Ok(CocoSet {
        path: path.to_path_buf(),
        images: file.images,
        categories: file.categories,
        annotations: file.annotations,
    })
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

    #[test]
    fn reads_classes_by_position_and_boxes_as_written() {
        let d = tempfile::tempdir().unwrap();
        let set = read_instances(&write(d.path(), GOOD)).unwrap();
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
                GOOD.replace("[10, 20, 30, 40]", "[10, 20, 0, 40]"),
                "annotation id 1: bbox [10.0, 20.0, 0.0, 40.0] has no size",
            ),
            (GOOD.replace("{\"id\": 2,", "{\"id\": 1,"), "annotation id 1: the id is used twice"),
            (GOOD.replace("[10, 20, 30, 40]", "[10, 20, 30]"), "line 6 column"),
        ];
        for (text, want) in cases {
            let e = read_instances(&write(d.path(), &text)).unwrap_err().to_string();
            assert!(e.contains("instances.json: ") && e.contains(want), "want {want:?} in: {e}");
        }
    }
}
