//! `[data.coco]` and `[data.yolo]`: where a dataset in COCO's or YOLO's layout keeps each
//! split. Reading the files is `crate::data::coco`'s and `crate::data::yolo`'s.

use serde::{Deserialize, Serialize};

use super::Synthetic;

/// `[data.coco]`: `train = { json = "annotations/instances_train2017.json", images =
/// "train2017" }`, paths under `data.root`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoConfig {
    #[serde(default = "default_coco_train")]
    pub train: CocoSplit,
    #[serde(default = "default_coco_test")]
    pub test: CocoSplit,
    /// Write a synthetic set in COCO's layout into the folder when it is missing (as
    /// `runner data synth shapes --format coco`): `"shapes"`, `"single_shapes"`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Synthetic>,
    /// Read each image's class mask from the annotations' segmentations (polygons or RLE)
    /// instead of boxes; set for `[task.segment]`. The classes are then `background`
    /// followed by the categories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<bool>,
}

impl CocoConfig {
    pub fn masks(&self) -> bool {
        self.masks == Some(true)
    }

    /// The split names `generate` writes for `train` and `test`: a split `s` is
    /// `annotations/instances_<s>.json` with its images in `<s>/`, as a conversion writes it.
    pub fn generated_names(&self) -> Result<[String; 2], String> {
        let name = |key: &str, s: &CocoSplit| -> Result<String, String> {
            match s.json.strip_prefix("annotations/instances_").and_then(|n| n.strip_suffix(".json")) {
                Some(n) if n == s.images && !n.is_empty() && !n.contains('/') => Ok(n.to_string()),
                _ => Err(format!(
                    "`generate` writes a split as annotations/instances_<name>.json and <name>/; \
                     data.coco.{key} = {{ json = {:?}, images = {:?} }} is not of that form",
                    s.json, s.images
                )),
            }
        };
        Ok([name("train", &self.train)?, name("test", &self.test)?])
    }
}

/// One split: its instances JSON and its image folder, relative to `data.root`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoSplit {
    pub json: String,
    pub images: String,
}

impl Default for CocoConfig {
    fn default() -> Self {
        CocoConfig { train: default_coco_train(), test: default_coco_test(), generate: None, masks: None }
    }
}

fn default_coco_train() -> CocoSplit {
    CocoSplit { json: "annotations/instances_train2017.json".into(), images: "train2017".into() }
}
fn default_coco_test() -> CocoSplit {
    CocoSplit { json: "annotations/instances_val2017.json".into(), images: "val2017".into() }
}

/// `[data.yolo]`: Ultralytics' layout. Each split is an image folder under `data.root`;
/// its labels are the same path with the last `images` folder named `labels`
/// (`images/train/a.jpg` -> `labels/train/a.txt`), one `class cx cy w h` line per box,
/// normalised to the image's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YoloConfig {
    #[serde(default = "default_yolo_train")]
    pub train: String,
    #[serde(default = "default_yolo_test")]
    pub test: String,
    /// The class names in index order; when absent, the `names` of `data.yaml` under
    /// `data.root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Write a synthetic set in YOLO's layout into the folder when it is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Synthetic>,
}

impl YoloConfig {
    /// The split names `generate` writes for `train` and `test`: a split `s` is `images/<s>`.
    pub fn generated_names(&self) -> Result<[String; 2], String> {
        let name = |key: &str, path: &str| -> Result<String, String> {
            match path.strip_prefix("images/") {
                Some(n) if !n.is_empty() && !n.contains('/') => Ok(n.to_string()),
                _ => Err(format!(
                    "`generate` writes a split as images/<name> and labels/<name>; data.yolo.{key} = {path:?} is not"
                )),
            }
        };
        Ok([name("train", &self.train)?, name("test", &self.test)?])
    }
}

impl Default for YoloConfig {
    fn default() -> Self {
        YoloConfig { train: default_yolo_train(), test: default_yolo_test(), classes: None, generate: None }
    }
}

fn default_yolo_train() -> String {
    "images/train".into()
}
fn default_yolo_test() -> String {
    "images/val".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_split_names_follow_the_configured_paths() {
        assert_eq!(CocoConfig::default().generated_names().unwrap(), ["train2017", "val2017"]);
        assert_eq!(YoloConfig::default().generated_names().unwrap(), ["train", "val"]);
        let odd = CocoConfig {
            test: CocoSplit { json: "annotations/instances_val.json".into(), images: "pics/val".into() },
            ..Default::default()
        };
        assert!(odd.generated_names().unwrap_err().contains("data.coco.test"));
        let odd = YoloConfig { train: "train/images".into(), ..Default::default() };
        assert!(odd.generated_names().unwrap_err().contains("data.yolo.train = \"train/images\""));
    }
}
