//! Each layer's nodes: the ONNX operators of one planned layer (the graph walk that calls
//! them is in `mod.rs`), and where runner's rule and ONNX's differ, the nodes that give
//! runner's values.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

use super::messages::{attr_float, attr_int, attr_ints, attr_string, FLOAT};
use super::{Builder, Weight};
use crate::config::LayerKind;
use crate::model::PlannedLayer;
use crate::ops::pool::PoolKind;
use crate::ops::upsample::{nearest_sources, UpsampleMode};
use crate::protobuf::Proto;

impl Builder<'_> {
    /// A convolution with the batch norm after it folded in:
    /// `w' = w * s`, `b' = (b - mean) * s + beta` per output channel, `s = gamma / sqrt(var + eps)`
    /// (computed in f64).
    pub(super) fn conv_bn(&mut self, conv: &PlannedLayer, bn: &PlannedLayer, eps: f64, x: String) -> Result<String> {
        let mut w = self.param(conv, "weight")?;
        let out = w.dims[0];
        let bias = match self.has(conv, "bias") {
            true => self.param(conv, "bias")?.data,
            false => vec![0.0; out],
        };
        let [gamma, beta, mean, var] =
            ["weight", "bias", "running_mean", "running_var"].map(|n| self.weight(&format!("{}.{n}", bn.path)));
        let (gamma, beta, mean, var) = (gamma?.data, beta?.data, mean?.data, var?.data);
        let per = w.data.len() / out;
        let mut b = Vec::with_capacity(out);
        for o in 0..out {
            let s = gamma[o] as f64 / (var[o] as f64 + eps).sqrt();
            for v in &mut w.data[o * per..(o + 1) * per] {
                *v = (*v as f64 * s) as f32;
            }
            b.push(((bias[o] as f64 - mean[o] as f64) * s + beta[o] as f64) as f32);
        }
        w.name = format!("{}.weight", conv.path);
        let b = Weight { name: format!("{}.bias", conv.path), dims: vec![out], data: b };
        self.summary.folded += 1;
        let doc = format!("{} with {} ({}) folded in", doc(conv), bn.key, bn.path);
        self.conv(conv, x, w, Some(b), &doc)
    }

    fn conv(&mut self, l: &PlannedLayer, x: String, w: Weight, b: Option<Weight>, doc: &str) -> Result<String> {
        let (stride, padding, dilation, groups) = match l.kind {
            LayerKind::Conv2d { stride, padding, dilation, groups, .. } => (stride, padding, dilation, groups),
            // A linear layer run as a convolution over the map it was trained on.
            _ => (1, 0, 1, 1),
        };
        let attrs = vec![
            attr_ints("kernel_shape", &[w.dims[2] as i64, w.dims[3] as i64]),
            attr_ints("strides", &[stride as i64; 2]),
            attr_ints("pads", &[padding as i64; 4]),
            attr_ints("dilations", &[dilation as i64; 2]),
            attr_int("group", groups as i64),
        ];
        Ok(self.weighted("Conv", l, x, (w, b), attrs, doc))
    }

    /// A node of `op` over `x`, a weight and an optional bias (`Conv`, `ConvTranspose`,
    /// `Gemm`), the weights added as initializers.
    fn weighted(
        &mut self,
        op: &str,
        l: &PlannedLayer,
        x: String,
        (w, b): (Weight, Option<Weight>),
        attrs: Vec<Proto>,
        doc: &str,
    ) -> String {
        let w = self.init_f32(w);
        let b = b.map(|b| self.init_f32(b));
        let mut inputs = vec![x.as_str(), w.as_str()];
        inputs.extend(b.as_deref());
        self.node(op, &l.path, &inputs, attrs, doc)
    }

    fn bias(&self, l: &PlannedLayer) -> Result<Option<Weight>> {
        Ok(match self.has(l, "bias") {
            true => Some(self.param(l, "bias")?),
            false => None,
        })
    }

    pub(super) fn layer(&mut self, l: &PlannedLayer, x: String, kept: &BTreeMap<String, String>) -> Result<String> {
        let doc = doc(l);
        let path = l.path.as_str();
        Ok(match &l.kind {
            LayerKind::Conv2d { .. } => {
                let (w, b) = (self.param(l, "weight")?, self.bias(l)?);
                self.conv(l, x, w, b, &doc)?
            }
            LayerKind::ConvTranspose2d { stride, padding, output_padding, dilation, groups, .. } => {
                let (w, b) = (self.param(l, "weight")?, self.bias(l)?);
                let attrs = vec![
                    attr_ints("kernel_shape", &[w.dims[2] as i64, w.dims[3] as i64]),
                    attr_ints("strides", &[*stride as i64; 2]),
                    attr_ints("pads", &[*padding as i64; 4]),
                    attr_ints("output_padding", &[*output_padding as i64; 2]),
                    attr_ints("dilations", &[*dilation as i64; 2]),
                    attr_int("group", *groups as i64),
                ];
                self.weighted("ConvTranspose", l, x, (w, b), attrs, &doc)
            }
            LayerKind::Maxpool { .. } | LayerKind::Avgpool { .. } => self.pool(l, x, &doc)?,
            LayerKind::Batchnorm { eps, .. } => {
                let names = ["weight", "bias", "running_mean", "running_var"];
                let mut inputs = vec![x.clone()];
                for n in names {
                    let w = self.param(l, n)?;
                    inputs.push(self.init_f32(w));
                }
                self.summary.batch_norms.push(l.path.clone());
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.node("BatchNormalization", path, &inputs, vec![attr_float("epsilon", *eps as f32)], &doc)
            }
            LayerKind::GlobalAvgpool {} => self.node("GlobalAveragePool", path, &[&x], vec![], &doc),
            LayerKind::Relu {} => self.node("Relu", path, &[&x], vec![], &doc),
            LayerKind::LeakyRelu { slope } => {
                self.node("LeakyRelu", path, &[&x], vec![attr_float("alpha", *slope as f32)], &doc)
            }
            LayerKind::Sigmoid {} => self.node("Sigmoid", path, &[&x], vec![], &doc),
            LayerKind::Upsample { .. } => self.resize(l, x, &doc)?,
            LayerKind::Flatten {} if self.model.graph().fully_convolutional => x,
            LayerKind::Flatten {} => self.node("Flatten", path, &[&x], vec![attr_int("axis", 1)], &doc),
            LayerKind::Linear { .. } => {
                let mut w = self.param(l, "weight")?;
                let b = self.bias(l)?;
                if let Some([kh, kw]) = l.conv_kernel {
                    // The linear weight seen as a kernel over the whole map (convolutionize).
                    w.dims = vec![w.dims[0], l.in_shape[0], kh, kw];
                    return self.conv(l, x, w, b, &format!("{doc}, as a convolution"));
                }
                self.weighted("Gemm", l, x, (w, b), vec![attr_int("transB", 1)], &doc)
            }
            // Evaluation: dropout is the identity.
            LayerKind::Dropout { .. } => x,
            LayerKind::Crop { like, offset: [oy, ox] } => self.crop(l, x, like, [*oy, *ox], kept, &doc)?,
            LayerKind::Concat { with } | LayerKind::Add { with } => self.join(l, x, with, kept, &doc)?,
        })
    }

    /// `crop`: a `Slice` of the height and width from `offset`, to the planned size, or
    /// under `dynamic_size` to the size of the map it is `like` (read with `Shape`).
    fn crop(
        &mut self,
        l: &PlannedLayer,
        x: String,
        like: &str,
        [oy, ox]: [usize; 2],
        kept: &BTreeMap<String, String>,
        doc: &str,
    ) -> Result<String> {
        let [_, h, w] = shape3(l, &l.out_shape)?;
        let path = l.path.as_str();
        let starts = self.init_i64(&format!("{path}.starts"), &[oy as i64, ox as i64]);
        let ends = if self.opts.dynamic_size {
            let like = kept.get(like).cloned().ok_or_else(|| anyhow!("{doc}: no output `{like}`"))?;
            let hw = self.dims_of(&like, [2, 4], &format!("{path}.like_hw"), doc);
            self.node("Add", &format!("{path}.ends"), &[&hw, &starts], vec![], doc)
        } else {
            self.init_i64(&format!("{path}.ends"), &[(oy + h) as i64, (ox + w) as i64])
        };
        let axes = self.init_i64(&format!("{path}.axes"), &[2, 3]);
        Ok(self.node("Slice", path, &[&x, &starts, &ends, &axes], vec![], doc))
    }

    /// `maxpool` and `avgpool`; the average counts the padding in its divisor, as runner's.
    /// With `ceil_mode`, PyTorch (and runner, and onnxruntime) drop a last window that would
    /// start in the right padding; ONNX's shape inference keeps it, so a `Slice` to the
    /// planned size follows where the two disagree (onnxruntime's result passes unchanged).
    fn pool(&mut self, l: &PlannedLayer, x: String, doc: &str) -> Result<String> {
        let Some((kind, g)) = l.kind.pool() else { bail!("{doc}: not a pooling") };
        let mut attrs = vec![
            attr_ints("kernel_shape", &[g.kernel as i64; 2]),
            attr_ints("strides", &[g.stride as i64; 2]),
            attr_ints("pads", &[g.padding as i64; 4]),
            attr_int("ceil_mode", g.ceil_mode as i64),
        ];
        let op = match kind {
            PoolKind::Max => "MaxPool",
            PoolKind::Avg => {
                attrs.push(attr_int("count_include_pad", 1));
                "AveragePool"
            }
        };
        let [_, h, w] = shape3(l, &l.in_shape)?;
        let [_, oh, ow] = shape3(l, &l.out_shape)?;
        // ONNX's rule: ceil((in + 2p - k) / s) + 1, no window dropped.
        let onnx = |n: usize| (n + 2 * g.padding - g.kernel).div_ceil(g.stride) + 1;
        if !g.ceil_mode || self.opts.dynamic_size || (onnx(h), onnx(w)) == (oh, ow) {
            return Ok(self.node(op, &l.path, &[&x], attrs, doc));
        }
        let y = self.node(op, &format!("{}.pool", l.path), &[&x], attrs, doc);
        let starts = self.init_i64(&format!("{}.starts", l.path), &[0, 0]);
        let ends = self.init_i64(&format!("{}.ends", l.path), &[oh as i64, ow as i64]);
        let axes = self.init_i64(&format!("{}.axes", l.path), &[2, 3]);
        let doc = format!("{doc}: the last window, which starts in the padding, dropped as PyTorch does");
        Ok(self.node("Slice", &l.path, &[&y, &starts, &ends, &axes], vec![], &doc))
    }

    /// `concat` (along the channels, `[x, with...]`) and `add` of kept group outputs.
    fn join(
        &mut self,
        l: &PlannedLayer,
        x: String,
        with: &[String],
        kept: &BTreeMap<String, String>,
        doc: &str,
    ) -> Result<String> {
        let mut inputs = vec![x];
        for name in with {
            inputs.push(kept.get(name).cloned().ok_or_else(|| anyhow!("{doc}: no output `{name}` kept"))?);
        }
        if let LayerKind::Concat { .. } = l.kind {
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            return Ok(self.node("Concat", &l.path, &inputs, vec![attr_int("axis", 1)], doc));
        }
        let mut sum = inputs[0].clone();
        for other in &inputs[1..] {
            sum = self.node("Add", &l.path, &[&sum, other], vec![], doc);
        }
        Ok(sum)
    }

    /// `upsample` as `Resize` to the planned size: nearest as PyTorch's (`asymmetric`,
    /// `floor`), bilinear as PyTorch's `align_corners = False` (`half_pixel`: PyTorch's rule
    /// at every size; `pytorch_half_pixel` reads coordinate 0 for an output side of 1).
    /// Nearest by other factors than powers of two is two `Gather`s of the source rows and
    /// columns runner computes: `Resize` divides by the scale where PyTorch multiplies by
    /// its inverse, which rounds to another pixel at times (2 -> 82 pixels: output column 41
    /// reads column 1 in onnxruntime 1.32, column 0 in PyTorch).
    fn resize(&mut self, l: &PlannedLayer, x: String, doc: &str) -> Result<String> {
        let LayerKind::Upsample { mode, .. } = l.kind else { bail!("{doc}: not an upsampling") };
        let [c, h, w] = shape3(l, &l.in_shape)?;
        let [_, oh, ow] = shape3(l, &l.out_shape)?;
        let path = l.path.as_str();
        let pow2 = |o: usize, i: usize| o.is_multiple_of(i) && (o / i).is_power_of_two();
        if mode == UpsampleMode::Nearest && !(pow2(oh, h) && pow2(ow, w)) && !self.opts.dynamic_size {
            let to_i64 = |v: Vec<usize>| v.into_iter().map(|i| i as i64).collect::<Vec<_>>();
            let rows = self.init_i64(&format!("{path}.rows"), &to_i64(nearest_sources(h, oh)));
            let cols = self.init_i64(&format!("{path}.cols"), &to_i64(nearest_sources(w, ow)));
            let y = self.node("Gather", &format!("{path}.gather_rows"), &[&x, &rows], vec![attr_int("axis", 2)], doc);
            return Ok(self.node("Gather", path, &[&y, &cols], vec![attr_int("axis", 3)], doc));
        }
        let (scales, sizes) = if self.opts.dynamic_size {
            // Any input size (size_free: an upsampling by `scale`): Resize by the factor.
            let scales = [1.0, 1.0, (oh / h) as f32, (ow / w) as f32];
            let name = self.fresh(&format!("{path}.scales"));
            let raw: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.initializer(&name, &[4], FLOAT, &raw);
            (name, String::new())
        } else if self.opts.dynamic_batch {
            // [batch, c] from the input's shape, then the planned height and width.
            let nc = self.dims_of(&x, [0, 2], &format!("{path}.nc"), doc);
            let hw = self.init_i64(&format!("{path}.hw"), &[oh as i64, ow as i64]);
            (String::new(), self.node("Concat", &format!("{path}.sizes"), &[&nc, &hw], vec![attr_int("axis", 0)], doc))
        } else {
            (String::new(), self.init_i64(&format!("{path}.sizes"), &[1, c as i64, oh as i64, ow as i64]))
        };
        let attrs = match mode {
            UpsampleMode::Nearest => vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
            UpsampleMode::Bilinear => {
                vec![attr_string("mode", "linear"), attr_string("coordinate_transformation_mode", "half_pixel")]
            }
        };
        let inputs: &[&str] = match sizes.is_empty() {
            true => &[&x, "", &scales],
            false => &[&x, "", "", &sizes],
        };
        Ok(self.node("Resize", path, inputs, attrs, doc))
    }
}

fn shape3(l: &PlannedLayer, s: &[usize]) -> Result<[usize; 3]> {
    <[usize; 3]>::try_from(s).map_err(|_| anyhow!("{}: expected a [c, h, w] map, not {s:?}", l.key))
}

/// A node's `doc_string`: where its layer was written (`model.groups[0].layers[3] (conv2d)`).
pub(super) fn doc(l: &PlannedLayer) -> String {
    format!("{} ({})", l.key, l.kind.name())
}
