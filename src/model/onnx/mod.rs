//! The model's eval-mode forward as an ONNX graph (`runner export --format onnx`).
//!
//! Every layer of the layer language has its ONNX operator: `conv2d` is `Conv`,
//! `conv_transpose2d` `ConvTranspose`, the poolings `MaxPool`, `AveragePool`
//! (`count_include_pad`, as runner and PyTorch count; a `Slice` after a `ceil_mode` pooling
//! whose last window PyTorch drops) and `GlobalAveragePool`, `batchnorm`
//! `BatchNormalization` (or folded into the convolution before it), `linear` `Gemm` (or
//! `Conv` in a fully convolutional model), `upsample` `Resize` (or two `Gather`s, see
//! `Builder::resize`), `crop` `Slice`, `concat`
//! and `add` (and a residual sum) `Concat` and `Add`; dropout is left out and `flatten` is
//! `Flatten`. The walk over groups, blocks and layers is the one `Model::forward` makes.
//!
//! Names: the graph's input is `input` (`[batch, c, h, w]`), its output `output`; each
//! node's output is its layer's path (`features.0`), and each weight its state-dict name
//! (`features.0.weight`), so a graph viewer shows the names of the config and the
//! checkpoints. Each node's `doc_string` is its config key.
//!
//! The messages (`onnx.proto`: `ModelProto`, `GraphProto`, `NodeProto`, `AttributeProto`,
//! `TensorProto`, `ValueInfoProto`) are written with [`crate::protobuf`]: the dozen fields
//! this needs did not warrant a protobuf compiler in the build.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::RangeInclusive;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device};

use super::graph::{PlannedGroup, INPUT};
use super::{Model, PlannedLayer};
use crate::config::LayerKind;
use crate::ops::upsample::UpsampleMode;
use crate::protobuf::Proto;
use messages::{attr_int, ir_version, tensor, tensor_external, value_info, FLOAT, INT64};

mod layers;
mod messages;

/// The opsets the export writes: 13 made `Resize`'s unused inputs optional; 21 is the
/// newest that onnxruntime and `onnx.checker` of the tests know.
pub const OPSETS: RangeInclusive<i64> = 13..=21;
pub const DEFAULT_OPSET: i64 = 17;

/// Protobuf's limit on one message: an ONNX file without external data.
const MAX_BYTES: usize = (1 << 31) - 1;

pub struct Options {
    pub opset: i64,
    /// The batch dimension is `batch` (any size) instead of 1.
    pub dynamic_batch: bool,
    /// The input's height and width are `height` and `width` (any size): for models whose
    /// every layer works at any size ([`size_free`]). The output is then always a map.
    pub dynamic_size: bool,
    /// Fold each batch norm that follows a convolution into that convolution.
    pub fold_bn: bool,
    /// `ModelProto.metadata_props`, e.g. the preprocessing.
    pub metadata: Vec<(String, String)>,
    pub graph_name: String,
    /// ONNX's external data: the weights go to this file, named relative to the ONNX
    /// file's folder (`write`'s `data`), each at an offset that is a multiple of 4096.
    pub external_data: Option<String>,
}

/// What was written.
#[derive(Debug, Default)]
pub struct Summary {
    pub nodes: usize,
    pub initializers: usize,
    pub bytes: usize,
    /// Batch norms folded into their convolutions.
    pub folded: usize,
    /// Batch norms written as `BatchNormalization` (by path): nothing to fold them into, or
    /// no `--fold-bn`.
    pub batch_norms: Vec<String>,
    /// The output's shape (`batch`, `out_height`, `out_width` where dynamic).
    pub output_shape: Vec<Dim>,
}

/// A tensor dimension in the file: a size, or a name that stands for any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
        }
    }
}

/// `Err` names the first layer whose output size is fixed at plan time, so that the graph
/// cannot take any input size: an upsampling to a `size` (or nearest by a factor that is
/// not a power of two), a `ceil_mode` pooling that may drop a window, a `linear` or
/// `flatten` outside a fully convolutional model. A crop takes its size from the map it is
/// `like`.
pub fn size_free(graph: &super::PlannedGraph) -> std::result::Result<(), String> {
    for l in graph.layers() {
        let fixed = match &l.kind {
            LayerKind::Upsample { size: Some(_), .. } => "it upsamples to a fixed size (use `scale`)",
            LayerKind::Upsample { mode: UpsampleMode::Nearest, scale: Some(s), .. } if !s.is_power_of_two() => {
                "onnxruntime's nearest Resize by a factor that is not a power of two picks other pixels than PyTorch's rule at some sizes; export at a fixed size"
            }
            LayerKind::Maxpool { ceil_mode: true, .. } | LayerKind::Avgpool { ceil_mode: true, .. }
                if l.kind.pool().is_some_and(|(_, g)| g.padding > 0 || g.stride > g.kernel) =>
            {
                "with ceil_mode and padding (or a stride over the kernel), PyTorch drops a last window that ONNX's shape rule keeps, at some sizes; export at a fixed size"
            }
            LayerKind::Linear { .. } if l.conv_kernel.is_none() => {
                "a linear layer needs a fixed size (set model.fully_convolutional = true to run it as a convolution)"
            }
            LayerKind::Flatten {} if !graph.fully_convolutional => {
                "flatten needs a fixed size (set model.fully_convolutional = true to run the linear layers after it as convolutions)"
            }
            _ => continue,
        };
        return Err(format!("{} ({}): {fixed}", l.key, l.kind.name()));
    }
    Ok(())
}

/// `Err` when `opset` is not one runner writes.
pub fn check_opset(opset: i64) -> Result<()> {
    if !OPSETS.contains(&opset) {
        bail!("--opset {opset}: runner writes opsets {} to {}", OPSETS.start(), OPSETS.end());
    }
    Ok(())
}

/// `Err` when the file cannot be written as asked: an opset out of range, weights past
/// protobuf's 2 GiB, or `dynamic_size` on a model that needs a fixed size (naming the layer).
pub fn check(model: &Model, opts: &Options) -> Result<()> {
    check_opset(opts.opset)?;
    let weight_bytes: usize = model.params.values().chain(model.buffers.values()).map(|v| v.elem_count() * 4).sum();
    if weight_bytes > MAX_BYTES - (16 << 20) && opts.external_data.is_none() {
        bail!(
            "the model's weights take {:.2} GiB: an ONNX file holds at most 2 GiB (protobuf's limit); --external-data writes them beside it",
            weight_bytes as f64 / (1u64 << 30) as f64
        );
    }
    if opts.dynamic_size {
        size_free(model.graph()).map_err(|e| anyhow!("--dynamic-size: {e}"))?;
    }
    Ok(())
}

/// Writes `model` as an ONNX `ModelProto` to `out`, and its weights to `data` when
/// `opts.external_data` names a file for them.
pub fn write(model: &Model, opts: &Options, out: &mut impl Write, data: Option<&mut dyn Write>) -> Result<Summary> {
    check(model, opts)?;
    let mut b = Builder::new(model, opts);
    let graph = b.graph()?;
    match (b.external.take(), data) {
        (Some(bytes), Some(data)) => data.write_all(&bytes)?,
        (None, None) => {}
        _ => bail!("external data: a file to write the weights into is needed with external_data, and only then"),
    }

    let mut m = Proto::default();
    m.int(1, ir_version(opts.opset));
    m.string(2, "runner");
    m.string(3, env!("CARGO_PKG_VERSION"));
    let mut opset = Proto::default();
    opset.string(1, "");
    opset.int(2, opts.opset);
    m.message(8, opset);
    for (k, v) in &opts.metadata {
        let mut e = Proto::default();
        e.string(1, k);
        e.string(2, v);
        m.message(14, e);
    }
    // The graph last, its length prefix written here, its bytes straight from the parts.
    m.key(7, 2);
    m.varint(graph.iter().map(|p| p.len()).sum::<usize>() as u64);
    let bytes = m.0.len() + graph.iter().map(|p| p.len()).sum::<usize>();
    if bytes > MAX_BYTES {
        bail!("the ONNX file would take {bytes} bytes: protobuf's limit is 2 GiB");
    }
    out.write_all(&m.0)?;
    for part in &graph {
        out.write_all(part)?;
    }
    b.summary.bytes = bytes;
    Ok(b.summary)
}

/// A weight as it goes into the file.
struct Weight {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

struct Builder<'a> {
    model: &'a Model,
    opts: &'a Options,
    /// Encoded `NodeProto`s, each as `GraphProto.node`.
    nodes: Proto,
    /// Encoded `TensorProto`s, each as `GraphProto.initializer`.
    inits: Proto,
    /// Every tensor name given out.
    names: BTreeSet<String>,
    summary: Summary,
    /// The external data file's bytes, with `opts.external_data`.
    external: Option<Vec<u8>>,
}

impl<'a> Builder<'a> {
    fn new(model: &'a Model, opts: &'a Options) -> Self {
        Builder {
            model,
            opts,
            nodes: Proto::default(),
            inits: Proto::default(),
            names: BTreeSet::new(),
            summary: Summary::default(),
            external: opts.external_data.as_ref().map(|_| Vec::new()),
        }
    }

    /// `base`, or `base_1`, `base_2`, ... when taken.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 0;
        while self.names.contains(&name) {
            i += 1;
            name = format!("{base}_{i}");
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a node; returns its output's name (`name`, made unique).
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<Proto>, doc: &str) -> String {
        let out = self.fresh(name);
        let mut n = Proto::default();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, &out);
        n.string(3, &out);
        n.string(4, op);
        for a in attrs {
            n.message(5, a);
        }
        if !doc.is_empty() {
            n.string(6, doc);
        }
        self.nodes.message(1, n);
        self.summary.nodes += 1;
        out
    }

    fn init_f32(&mut self, w: Weight) -> String {
        let name = self.fresh(&w.name);
        let mut raw = Vec::with_capacity(w.data.len() * 4);
        for v in &w.data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        if let (Some(location), Some(bytes)) = (&self.opts.external_data, self.external.as_mut()) {
            bytes.resize(bytes.len().next_multiple_of(4096), 0);
            let offset = bytes.len();
            bytes.extend_from_slice(&raw);
            self.inits.message(5, tensor_external(&name, &w.dims, FLOAT, location, offset, raw.len()));
            self.summary.initializers += 1;
            return name;
        }
        self.initializer(&name, &w.dims, FLOAT, &raw);
        name
    }

    fn init_i64(&mut self, name: &str, values: &[i64]) -> String {
        let name = self.fresh(name);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, &[values.len()], INT64, &raw);
        name
    }

    /// `Shape(x)[start..end]`, an int64 tensor of the graph named `name`: the sizes a
    /// dynamic dimension has when the file runs.
    fn dims_of(&mut self, x: &str, [start, end]: [i64; 2], name: &str, doc: &str) -> String {
        let shape = self.node("Shape", &format!("{name}.shape"), &[x], vec![], doc);
        let (start, end) =
            (self.init_i64(&format!("{name}.start"), &[start]), self.init_i64(&format!("{name}.end"), &[end]));
        self.node("Slice", name, &[&shape, &start, &end], vec![], doc)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data_type: i64, raw: &[u8]) {
        self.inits.message(5, tensor(name, dims, data_type, raw));
        self.summary.initializers += 1;
    }

    /// A parameter or buffer of the model by its state-dict name.
    fn weight(&self, name: &str) -> Result<Weight> {
        let var = self
            .model
            .params
            .get(name)
            .or_else(|| self.model.buffers.get(name))
            .ok_or_else(|| anyhow!("the model has no weight `{name}`"))?;
        let t = var.as_tensor().to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(Weight { name: name.to_string(), dims: t.dims().to_vec(), data: t.flatten_all()?.to_vec1::<f32>()? })
    }

    fn has(&self, l: &PlannedLayer, name: &str) -> bool {
        self.model.params.contains_key(&format!("{}.{name}", l.path))
    }

    fn param(&self, l: &PlannedLayer, name: &str) -> Result<Weight> {
        self.weight(&format!("{}.{name}", l.path))
    }

    /// The encoded graph, in parts (the initializers are most of it).
    fn graph(&mut self) -> Result<Vec<Vec<u8>>> {
        let graph = self.model.graph().clone();
        self.names.insert(INPUT.to_string());
        let mut kept: BTreeMap<String, String> = BTreeMap::from([(INPUT.to_string(), INPUT.to_string())]);
        let mut x = INPUT.to_string();
        for group in &graph.groups {
            if let Some(from) = &group.from {
                x = kept.get(from).cloned().ok_or_else(|| anyhow!("group {}: no output `{from}`", group.name))?;
            }
            x = self.group(group, x, &kept)?;
            // Every group's output by name (a name costs nothing here): joins read the kept
            // ones, and a crop under `dynamic_size` the shape of the one it is `like`.
            kept.insert(group.name.clone(), x.clone());
        }
        let mut out_shape = graph.out_shape().to_vec();
        let one_by_one = out_shape.len() == 3 && out_shape[1] == 1 && out_shape[2] == 1;
        if graph.fully_convolutional && one_by_one && !self.opts.dynamic_size {
            // As `Model::forward`: a 1x1 map of a fully convolutional model is flattened.
            x = self.node("Flatten", "flatten", &[&x], vec![attr_int("axis", 1)], "a 1x1 output map, flattened");
            out_shape.truncate(1);
        }
        self.node("Identity", "output", &[&x], vec![], "");

        let batch = if self.opts.dynamic_batch { Dim::Named("batch") } else { Dim::Fixed(1) };
        let dims = |shape: &[usize], hw: [&'static str; 2]| {
            let mut d = vec![batch];
            d.extend(shape.iter().map(|&n| Dim::Fixed(n)));
            if self.opts.dynamic_size && d.len() == 4 {
                d[2] = Dim::Named(hw[0]);
                d[3] = Dim::Named(hw[1]);
            }
            d
        };
        let (input, output) = (dims(&graph.input, ["height", "width"]), dims(&out_shape, ["out_height", "out_width"]));
        let mut tail = Proto::default();
        tail.string(2, &self.opts.graph_name);
        tail.message(11, value_info(INPUT, &input));
        tail.message(12, value_info("output", &output));
        self.summary.output_shape = output;
        Ok(vec![std::mem::take(&mut self.nodes.0), std::mem::take(&mut self.inits.0), tail.0])
    }

    fn group(&mut self, group: &PlannedGroup, mut x: String, kept: &BTreeMap<String, String>) -> Result<String> {
        for block in &group.blocks {
            let block_in = x.clone();
            x = self.layers(&block.layers, x, kept)?;
            if let Some(res) = &block.residual {
                let s = self.layers(&res.shortcut, block_in, kept)?;
                let name = block.layers.first().map(|l| parent(&l.path)).unwrap_or(&group.name).to_string();
                let sum = self.node("Add", &format!("{name}.sum"), &[&x, &s], vec![], "the residual sum");
                x = match &res.activation {
                    Some(act) => self.layer(act, sum, kept)?,
                    None => sum,
                };
            }
        }
        Ok(x)
    }

    fn layers(&mut self, layers: &[PlannedLayer], mut x: String, kept: &BTreeMap<String, String>) -> Result<String> {
        let mut i = 0;
        while i < layers.len() {
            let l = &layers[i];
            let next = layers.get(i + 1);
            if let (true, LayerKind::Conv2d { .. }, Some(bn)) = (self.opts.fold_bn, &l.kind, next) {
                if let LayerKind::Batchnorm { eps, .. } = bn.kind {
                    x = self.conv_bn(l, bn, eps, x)?;
                    i += 2;
                    continue;
                }
            }
            x = self.layer(l, x, kept)?;
            i += 1;
        }
        Ok(x)
    }
}

/// `res.3.0` -> `res.3`.
fn parent(path: &str) -> &str {
    path.rsplit_once('.').map(|(p, _)| p).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn an_opset_out_of_range_is_refused() {
        let cfg: ModelConfig =
            toml::from_str("input = [1, 4, 4]\n[[groups]]\nname = \"a\"\nlayers = [\"relu\"]\n").unwrap();
        let graph = super::super::plan_model(&cfg).unwrap();
        let model = Model::new(&graph, 0, &Device::Cpu).unwrap();
        let opts = Options {
            opset: 11,
            dynamic_batch: false,
            dynamic_size: false,
            fold_bn: false,
            metadata: vec![],
            graph_name: "g".into(),
            external_data: None,
        };
        let e = write(&model, &opts, &mut Vec::new(), None).unwrap_err().to_string();
        assert!(e.contains("--opset 11: runner writes opsets 13 to 21"), "{e}");
    }
}
