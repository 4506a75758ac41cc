//! Model layers as written in `[[model.groups]]`: the full table form and the short names.

use serde::{Deserialize, Serialize};

use super::{half, one, yes};

use crate::ops::pool::{PoolGeom, PoolKind};
use crate::ops::upsample::UpsampleMode;

/// One layer. In TOML either a table `{ conv2d = { out = 6, kernel = 5 } }` or, for a layer
/// whose keys all have defaults, its bare name: `"relu"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerKind {
    Conv2d {
        /// Input channels, checked at plan time when given (inferred otherwise).
        #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
        inp: Option<usize>,
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Transposed convolution (learned upsampling, as in FCN).
    ConvTranspose2d {
        /// Input channels, checked at plan time when given (inferred otherwise).
        #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
        inp: Option<usize>,
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        output_padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
        /// `"bilinear"`: the FCN authors' fixed upsampling kernel (`surgery.interp`): channel
        /// `i` to channel `i` with the bilinear filter, zero elsewhere, bias 0 (needs
        /// in = out). Absent: PyTorch's default init.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        init: Option<KernelInit>,
        /// `false`: the layer's parameters never train (FCN's fixed bilinear upsampling).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        trainable: bool,
    },
    Maxpool {
        kernel: usize,
        /// Defaults to `kernel`.
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
    },
    Avgpool {
        kernel: usize,
        /// Defaults to `kernel`.
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
    },
    /// Batch normalization per channel (PyTorch's `BatchNorm2d`): batch statistics in
    /// training, running averages (updated with `momentum`) in evaluation.
    Batchnorm {
        #[serde(default = "default_bn_eps")]
        eps: f64,
        #[serde(default = "default_bn_momentum")]
        momentum: f64,
    },
    /// Mean over height and width: `[c, h, w]` -> `[c, 1, 1]`.
    GlobalAvgpool {},
    Relu {},
    /// `x` for x > 0, else `slope * x`.
    LeakyRelu {
        #[serde(default = "default_slope")]
        slope: f64,
    },
    Sigmoid {},
    /// Nearest or bilinear (`align_corners = false`) upsampling by an integer `scale` or to
    /// an exact `size = [h, w]`.
    Upsample {
        #[serde(default = "default_upsample_mode")]
        mode: UpsampleMode,
        #[serde(default)]
        scale: Option<usize>,
        #[serde(default)]
        size: Option<[usize; 2]>,
    },
    Flatten {},
    Linear {
        /// Input features, checked at plan time when given (inferred otherwise).
        #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
        inp: Option<usize>,
        out: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Dropout {
        #[serde(default = "half")]
        p: f64,
    },
    /// Joins the running output with the outputs of earlier groups along the channels, in
    /// the order `[this, with...]` (heights and widths must match).
    Concat {
        with: Vec<String>,
    },
    /// Adds the outputs of earlier groups to the running output (shapes must match).
    Add {
        with: Vec<String>,
    },
    /// Cuts the running map to the height and width of an earlier group's output (or of
    /// `"input"`), starting `offset = [y, x]` pixels in (Caffe's `Crop` as FCN aligns its
    /// upsampled scores).
    Crop {
        like: String,
        #[serde(default)]
        offset: [usize; 2],
    },
}

/// The layer names, for messages.
pub const LAYER_NAMES: &[&str] = &[
    "conv2d",
    "conv_transpose2d",
    "maxpool",
    "global_avgpool",
    "batchnorm",
    "avgpool",
    "relu",
    "leaky_relu",
    "sigmoid",
    "upsample",
    "flatten",
    "linear",
    "dropout",
    "concat",
    "add",
    "crop",
];

fn default_bn_eps() -> f64 {
    1e-5
}
fn default_bn_momentum() -> f64 {
    0.1
}

fn default_slope() -> f64 {
    0.01
}
fn default_upsample_mode() -> UpsampleMode {
    UpsampleMode::Nearest
}

/// An upsample layer's mode and output size, or why its keys do not work.
pub type UpsamplePlan = std::result::Result<(UpsampleMode, (usize, usize)), String>;

impl LayerKind {
    /// The mode and output size of an `upsample` layer for an input of `h x w`.
    pub fn upsample(&self, h: usize, w: usize) -> Option<UpsamplePlan> {
        let LayerKind::Upsample { mode, scale, size } = self else { return None };
        let mode = *mode;
        Some(match (scale, size) {
            (Some(s), None) if *s > 0 => Ok((mode, (h * s, w * s))),
            (None, Some([oh, ow])) if *oh > 0 && *ow > 0 => Ok((mode, (*oh, *ow))),
            _ => Err("give exactly one of scale (> 0) or size = [h, w] (> 0)".into()),
        })
    }

    /// The pooling geometry of a `maxpool` or `avgpool` layer.
    pub fn pool(&self) -> Option<(PoolKind, PoolGeom)> {
        let (kind, kernel, stride, padding, ceil_mode) = match self {
            LayerKind::Maxpool { kernel, stride, padding, ceil_mode } => {
                (PoolKind::Max, kernel, stride, padding, ceil_mode)
            }
            LayerKind::Avgpool { kernel, stride, padding, ceil_mode } => {
                (PoolKind::Avg, kernel, stride, padding, ceil_mode)
            }
            _ => return None,
        };
        Some((
            kind,
            PoolGeom { kernel: *kernel, stride: stride.unwrap_or(*kernel), padding: *padding, ceil_mode: *ceil_mode },
        ))
    }

    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::ConvTranspose2d { .. } => "conv_transpose2d",
            LayerKind::Maxpool { .. } => "maxpool",
            LayerKind::Avgpool { .. } => "avgpool",
            LayerKind::GlobalAvgpool {} => "global_avgpool",
            LayerKind::Batchnorm { .. } => "batchnorm",
            LayerKind::Relu {} => "relu",
            LayerKind::LeakyRelu { .. } => "leaky_relu",
            LayerKind::Sigmoid {} => "sigmoid",
            LayerKind::Upsample { .. } => "upsample",
            LayerKind::Flatten {} => "flatten",
            LayerKind::Linear { .. } => "linear",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Concat { .. } => "concat",
            LayerKind::Add { .. } => "add",
            LayerKind::Crop { .. } => "crop",
        }
    }
}

/// A fixed initial kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelInit {
    Bilinear,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A layer as written: the short string form or the full table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer(pub LayerKind);

impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Layer;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a layer name such as \"relu\" or a table such as { linear = { out = 10 } }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Layer, E> {
                if !LAYER_NAMES.contains(&s) {
                    return Err(E::unknown_variant(s, LAYER_NAMES));
                }
                // The short form is the table form with every key at its default.
                let mut table = figment::value::Dict::new();
                table.insert(s.to_string(), figment::value::Dict::new().into());
                figment::value::Value::from(table)
                    .deserialize::<LayerKind>()
                    .map(Layer)
                    .map_err(|e| E::custom(format!("\"{s}\" needs keys, write it as a table: {}", e.kind)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Layer, A::Error> {
                LayerKind::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Layer)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AugmentOp, PadMode};

    #[test]
    fn reflect_padding_must_be_smaller_than_the_image() {
        let op = AugmentOp::RandomCrop { size: 28, padding: 30, pad_mode: PadMode::Reflect };
        let e = op.out_shape([1, 28, 28]).unwrap_err();
        assert!(e.contains("reflect padding 30 must be smaller than the image 28x28"), "{e}");
        let op = AugmentOp::RandomCrop { size: 28, padding: 30, pad_mode: PadMode::Edge };
        assert_eq!(op.out_shape([1, 28, 28]), Ok([1, 28, 28]));
    }

    #[test]
    fn layer_names_list_every_layer_kind() {
        // Regression: `global_avgpool` was missing from LAYER_NAMES, so its short form
        // "global_avgpool" was rejected. serde's own variant list comes from an unknown name.
        let err = toml::from_str::<LayerKind>("bogus = {}").unwrap_err().to_string();
        let variants: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        let mut want: Vec<&str> = LAYER_NAMES.to_vec();
        let mut got = variants.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{err}");
    }
}
