//! `[data.voc]`: the years, image sets and classes of a dataset in Pascal VOC's layout, and
//! the synthetic set written when it is missing. Reading the files is `crate::data::voc`'s.

use serde::{Deserialize, Serialize};

/// `[data.voc]`: `train = { years = [2007, 2012], image_set = "trainval" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocConfig {
    #[serde(default = "default_voc_train")]
    pub train: VocSplit,
    #[serde(default = "default_voc_test")]
    pub test: VocSplit,
    /// The class names in index order; default: VOC's 20 classes in the devkit's order.
    #[serde(default = "default_voc_classes")]
    pub classes: Vec<String>,
    /// Write a synthetic set into the folder when it is missing: `"shapes"` (the default
    /// set of `runner data synth shapes`), `"single_shapes"` (one object per 128 px image)
    /// or `"single_shapes192"` (one object per 192 px image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Synthetic>,
    /// Read class masks (`SegmentationClass/<id>.png`, the ids of
    /// `ImageSets/Segmentation/<image_set>.txt`) instead of boxes; set for `[task.segment]`.
    /// The classes are then `background` followed by `classes` (mask value 0, 1, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<bool>,
}

impl VocConfig {
    pub fn masks(&self) -> bool {
        self.masks == Some(true)
    }

    /// The folder of `ImageSets` that lists the split's ids: `Segmentation` or `Main`.
    pub fn lists(&self) -> &'static str {
        if self.masks() {
            "Segmentation"
        } else {
            "Main"
        }
    }

    /// The names of the model's classes: for masks, `background` first.
    pub fn label_names(&self) -> Vec<String> {
        let background = self.masks().then(|| "background".to_string());
        background.into_iter().chain(self.classes.iter().cloned()).collect()
    }
}

/// The synthetic datasets runner can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synthetic {
    /// The default shapes set: 4,000 / 500 images of 160 px, 1-5 objects of 12-80 px.
    Shapes,
    /// One object per image, 30-100 px on 128 px images, 4,000 / 500 images: the
    /// localization set (`runner data synth shapes --objects 1 --size 128 --min-size 30
    /// --max-size 100`).
    SingleShapes,
    /// The localization set's objects (one, 30-100 px) on larger 192 px images, 4,000 / 500:
    /// Overfeat's dense application slides the 128 px window over them at the scale it
    /// was trained on (`runner data synth shapes --objects 1 --size 192 --min-size 30
    /// --max-size 100`).
    SingleShapes192,
}

impl Default for VocConfig {
    fn default() -> Self {
        VocConfig {
            train: default_voc_train(),
            test: default_voc_test(),
            classes: default_voc_classes(),
            generate: None,
            masks: None,
        }
    }
}

/// The images of one split: the ids in `VOC<year>/ImageSets/Main/<image_set>.txt` per year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocSplit {
    pub years: Vec<u32>,
    pub image_set: String,
}

fn default_voc_train() -> VocSplit {
    VocSplit { years: vec![2007, 2012], image_set: "trainval".into() }
}
fn default_voc_test() -> VocSplit {
    VocSplit { years: vec![2007], image_set: "test".into() }
}
/// VOC's 20 classes in the devkit's order (`VOCinit.m`).
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

fn default_voc_classes() -> Vec<String> {
    VOC_CLASSES.iter().map(|c| c.to_string()).collect()
}
