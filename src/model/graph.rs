//! The model graph at plan time: groups of layers with their repetitions, residual
//! shortcuts and skip inputs, every layer with its dotted path, shapes, parameters and
//! multiply-adds, inferred from `[model] input` without building a tensor.
//!
//! Paths follow PyTorch's `nn.Sequential` naming inside a named module:
//! - a plain group: `<group>.<layer>` (`features.0`);
//! - a group with `repeat`: `<group>.<rep>.<layer>` (`res.3.0`);
//! - a residual block's projection: `<block>.shortcut.0` (1x1 conv), `<block>.shortcut.1`
//!   (batch norm), where `<block>` is `res.3` (or `res` without `repeat`).
//!
//! A layer's weights are `<path>.weight` and `<path>.bias`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};

use crate::config::{load, GroupConfig, Layer, LayerKind, ModelConfig};
use crate::ops::conv;
use crate::ops::conv::ConvGeom;

/// A layer resolved against its input shape. Shapes exclude the batch dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// `features.0`, `res.3.0`, `res.3.shortcut.0`
    pub path: String,
    /// Where it was written: `model.groups[0].layers[0]`.
    pub key: String,
    /// The group it belongs to.
    pub group: String,
    pub kind: LayerKind,
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// `(name, shape)` of each parameter, e.g. `("weight", [6, 1, 5, 5])`.
    pub params: Vec<(String, Vec<usize>)>,
    /// Multiply-adds per image.
    pub macs: u64,
    /// Fully convolutional models: a `linear` layer run as a convolution with this kernel
    /// (its weight keeps the linear shape `[out, c * kh * kw]`).
    pub conv_kernel: Option<[usize; 2]>,
}

impl PlannedLayer {
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

/// One repetition of a group: its layers, then the residual sum if the group has one.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBlock {
    pub layers: Vec<PlannedLayer>,
    pub residual: Option<Residual>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    /// Empty: the identity. Else a 1x1 convolution (no bias) and a batch norm.
    pub shortcut: Vec<PlannedLayer>,
    /// Applied after the sum.
    pub activation: Option<PlannedLayer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedGroup {
    pub name: String,
    /// The group whose output this one reads; `None`: the previous group (or the image).
    pub from: Option<String>,
    pub blocks: Vec<PlannedBlock>,
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// A later group reads this output (`from`, `concat`, `add`): keep it during forward.
    pub keep: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedGraph {
    pub input: Vec<usize>,
    pub groups: Vec<PlannedGroup>,
    pub fully_convolutional: bool,
}

/// The name a group's `from` uses for the image.
pub const INPUT: &str = "input";

impl PlannedGraph {
    /// Every layer in execution order (a block's layers, then its shortcut and activation).
    pub fn layers(&self) -> impl Iterator<Item = &PlannedLayer> {
        self.groups.iter().flat_map(|g| {
            g.blocks.iter().flat_map(|b| {
                let res = b.residual.iter().flat_map(|r| r.shortcut.iter().chain(r.activation.iter()));
                b.layers.iter().chain(res)
            })
        })
    }

    /// The parameters of layers that never train (`trainable = false`).
    pub fn fixed_params(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for layer in self.layers() {
            if let LayerKind::ConvTranspose2d { trainable: false, .. } = layer.kind {
                out.extend(layer.params.iter().map(|(name, _)| format!("{}.{name}", layer.path)));
            }
        }
        out
    }

    pub fn out_shape(&self) -> &[usize] {
        self.groups.last().map(|g| g.out_shape.as_slice()).unwrap_or(&self.input)
    }

    /// A fully convolutional model's step over a larger image: how many input pixels one
    /// position of its output map moves its window (the product of the strides of the
    /// convolutions and poolings on the way; a `linear` layer runs as a convolution with
    /// stride 1). `Err` names the first layer that cannot slide (a global pooling, an
    /// upsampling, a fixed-size crop) or the groups whose steps disagree.
    pub fn output_stride(&self) -> std::result::Result<usize, String> {
        let mut strides: BTreeMap<&str, usize> = BTreeMap::from([(INPUT, 1)]);
        let mut s = 1usize;
        for g in &self.groups {
            if let Some(from) = &g.from {
                s = strides.get(from.as_str()).copied().unwrap_or(1);
            }
            for b in &g.blocks {
                for l in &b.layers {
                    let joined = match &l.kind {
                        LayerKind::Conv2d { stride, .. } => {
                            s *= stride;
                            None
                        }
                        LayerKind::Maxpool { kernel, stride, .. } | LayerKind::Avgpool { kernel, stride, .. } => {
                            s *= stride.unwrap_or(*kernel);
                            None
                        }
                        LayerKind::GlobalAvgpool {}
                        | LayerKind::Upsample { .. }
                        | LayerKind::ConvTranspose2d { .. }
                        | LayerKind::Crop { .. } => {
                            return Err(format!("{} ({}) does not slide over a larger image", l.key, l.kind.name()))
                        }
                        LayerKind::Concat { with } | LayerKind::Add { with } => Some(with),
                        _ => None,
                    };
                    for other in joined.into_iter().flatten() {
                        let o = strides.get(other.as_str()).copied().unwrap_or(1);
                        if o != s {
                            return Err(format!(
                                "{} ({}) joins `{other}`, whose map steps {o} pixels, with a map that steps {s}",
                                l.key,
                                l.kind.name()
                            ));
                        }
                    }
                }
            }
            strides.insert(&g.name, s);
        }
        Ok(s)
    }

    pub fn num_params(&self) -> usize {
        self.layers().map(|l| l.num_params()).sum()
    }

    pub fn macs(&self) -> u64 {
        self.layers().map(|l| l.macs).sum()
    }

    /// Every parameter name with its shape, in path order.
    pub fn param_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.layers().flat_map(|l| l.params.iter().map(move |(n, s)| (format!("{}.{n}", l.path), s.clone()))).collect()
    }

    /// Every path a user can name: groups, repetitions, layers (`res`, `res.3`, `res.3.0`).
    pub fn addressable_paths(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for l in self.layers() {
            let parts: Vec<&str> = l.path.split('.').collect();
            for n in 1..=parts.len() {
                out.insert(parts[..n].join("."));
            }
        }
        out
    }

    /// The parameter names under `path` (a group, a repetition or a layer). An unknown
    /// path is an error with the closest known one.
    pub fn params_under(&self, path: &str) -> std::result::Result<Vec<String>, String> {
        let known = self.addressable_paths();
        if !known.contains(path) {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = load::did_you_mean(path, &list).map(|s| format!("; did you mean `{s}`?")).unwrap_or_else(|| {
                let groups: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
                format!("; the groups are {}", groups.join(", "))
            });
            return Err(format!("no group or layer `{path}` in the model{hint}"));
        }
        let prefix = format!("{path}.");
        Ok(self.param_shapes().into_keys().filter(|n| n.starts_with(&prefix)).collect())
    }
}

fn fmt_shape(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Infers every layer's shapes; a mismatch is an error naming the key, the group, the
/// repetition and the layer: `key `model.groups[2].layers[0]` (res[3].layers[0] conv2d): ...`.
pub fn plan_graph(cfg: &ModelConfig) -> Result<PlannedGraph> {
    if cfg.input.len() != 3 || cfg.input.contains(&0) {
        bail!("key `model.input`: expected [channels, height, width] with each > 0, is {}", fmt_shape(&cfg.input));
    }
    if cfg.groups.is_empty() {
        bail!("key `model.groups`: the model has no groups");
    }
    let fc = cfg.fully_convolutional;
    // Outputs so far, by name, for `from`, `concat` and `add`.
    let mut outputs: BTreeMap<String, Vec<usize>> = BTreeMap::from([(INPUT.to_string(), cfg.input.clone())]);
    let mut shape = cfg.input.clone();
    let mut groups: Vec<PlannedGroup> = Vec::new();
    for (g, group) in cfg.groups.iter().enumerate() {
        let gkey = format!("model.groups[{g}]");
        let name = &group.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("key `{gkey}.name`: a group name is letters, digits and '_', is {name:?}");
        }
        if name == INPUT {
            bail!("key `{gkey}.name`: `{INPUT}` names the image (for `from`); call the group something else");
        }
        if outputs.contains_key(name) {
            bail!("key `{gkey}.name`: group name `{name}` is used twice");
        }
        if group.layers.is_empty() {
            bail!("key `{gkey}.layers`: group `{name}` has no layers");
        }
        if let Some(from) = &group.from {
            shape = lookup(&outputs, from).map_err(|e| anyhow!("key `{gkey}.from` (group {name}): {e}"))?.clone();
        }
        let in_shape = shape.clone();
        let reps = match group.repeat {
            Some(0) => bail!("key `{gkey}.repeat`: must be >= 1"),
            Some(n) => n,
            None => 1,
        };
        if group.activation.is_some() && !group.residual {
            bail!(
                "key `{gkey}.activation`: applies after a residual sum; set `residual = true` or move it into `layers`"
            );
        }
        let mut blocks = Vec::new();
        for r in 0..reps {
            let block_path = if group.repeat.is_some() { format!("{name}.{r}") } else { name.clone() };
            let site = |i: usize| {
                if group.repeat.is_some() {
                    format!("{name}[{r}].layers[{i}]")
                } else {
                    format!("{name}.layers[{i}]")
                }
            };
            let block_in = shape.clone();
            let mut layers = Vec::new();
            for (i, Layer(kind)) in group.layers.iter().enumerate() {
                let key = format!("{gkey}.layers[{i}]");
                let path = format!("{block_path}.{i}");
                let l = plan_layer(kind, &shape, path, key.clone(), name, fc, &outputs)
                    .map_err(|e| anyhow!("key `{key}` ({} {}): {e}", site(i), kind.name()))?;
                shape = l.out_shape.clone();
                layers.push(l);
            }
            let residual = if group.residual {
                Some(
                    residual(group, &block_path, &block_in, &shape, &gkey)
                        .map_err(|e| anyhow!("key `{gkey}.residual` (group {name}, repetition {r}): {e}"))?,
                )
            } else {
                None
            };
            if let Some(a) = residual.as_ref().and_then(|r| r.activation.as_ref()) {
                shape = a.out_shape.clone();
            }
            blocks.push(PlannedBlock { layers, residual });
        }
        outputs.insert(name.clone(), shape.clone());
        groups.push(PlannedGroup {
            name: name.clone(),
            from: group.from.clone(),
            blocks,
            in_shape,
            out_shape: shape.clone(),
            keep: false,
        });
    }
    Ok(PlannedGraph { input: cfg.input.clone(), groups, fully_convolutional: fc })
}

/// The output shape of an earlier group, or the image's.
fn lookup<'a>(outputs: &'a BTreeMap<String, Vec<usize>>, name: &str) -> std::result::Result<&'a Vec<usize>, String> {
    match outputs.get(name) {
        Some(s) => Ok(s),
        None => {
            let known: Vec<&str> = outputs.keys().map(String::as_str).collect();
            let hint = load::did_you_mean(name, &known).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default();
            Err(format!(
                "no earlier group `{name}`; {hint}a group can read `{INPUT}` or a group above it: {}",
                known.join(", ")
            ))
        }
    }
}

/// The shortcut of a residual block from `input` to `output`.
fn residual(group: &GroupConfig, block: &str, input: &[usize], output: &[usize], gkey: &str) -> Result<Residual> {
    let mut shortcut = Vec::new();
    if input != output {
        let ([_, h, w], [oc, oh, ow]) = (input, output) else {
            bail!(
                "the block maps {} to {}: a projection shortcut needs [channels, height, width] maps",
                fmt_shape(input),
                fmt_shape(output)
            );
        };
        let stride = h.div_ceil(*oh);
        if (h - 1) / stride + 1 != *oh || (w - 1) / stride + 1 != *ow {
            bail!(
                "the block maps {} to {}: no 1x1 convolution stride gives that size",
                fmt_shape(input),
                fmt_shape(output)
            );
        }
        let conv = LayerKind::Conv2d {
            inp: None,
            out: *oc,
            kernel: 1,
            stride,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: false,
        };
        let key = format!("{gkey}.residual");
        let none = BTreeMap::new();
        let first = plan_layer(&conv, input, format!("{block}.shortcut.0"), key.clone(), &group.name, false, &none)?;
        let bn = LayerKind::Batchnorm { eps: 1e-5, momentum: 0.1 };
        let second = plan_layer(&bn, output, format!("{block}.shortcut.1"), key, &group.name, false, &none)?;
        shortcut = vec![first, second];
    }
    let activation = match &group.activation {
        Some(Layer(kind)) => {
            if !matches!(kind, LayerKind::Relu {} | LayerKind::LeakyRelu { .. } | LayerKind::Sigmoid {}) {
                bail!("`activation` is relu, leaky_relu or sigmoid, is {}", kind.name());
            }
            let none = BTreeMap::new();
            let key = format!("{gkey}.activation");
            Some(plan_layer(kind, output, format!("{block}.act"), key, &group.name, false, &none)?)
        }
        None => None,
    };
    Ok(Residual { shortcut, activation })
}

#[allow(clippy::too_many_arguments)]
fn plan_layer(
    kind: &LayerKind,
    input: &[usize],
    path: String,
    key: String,
    group: &str,
    fully_convolutional: bool,
    outputs: &BTreeMap<String, Vec<usize>>,
) -> Result<PlannedLayer> {
    let mut conv_kernel = None;
    let (out_shape, params, macs) = match (kind, input) {
        // Fully convolutional: flatten keeps the map, linear on a map is a convolution.
        (LayerKind::Flatten {}, _) if fully_convolutional => (input.to_vec(), vec![], 0),
        (LayerKind::Linear { inp, out, bias }, [c, h, w]) if fully_convolutional => {
            let features = c * h * w;
            if let Some(i) = inp.filter(|i| *i != features) {
                bail!("expects {i} input features, gets {features} ({})", fmt_shape(input));
            }
            conv_kernel = Some([*h, *w]);
            let mut params = vec![("weight".to_string(), vec![*out, features])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            (vec![*out, 1, 1], params, (features * out) as u64)
        }
        (LayerKind::Crop { like, offset }, _) => {
            let [c, h, w] = input else {
                bail!("crop needs a map [c, h, w], gets {}", fmt_shape(input));
            };
            let other = lookup(outputs, like).map_err(anyhow::Error::msg)?;
            let (Some(&lh), Some(&lw)) = (other.get(1), other.get(2)) else {
                bail!("`{like}`'s output {} is not a map", fmt_shape(other));
            };
            let [oy, ox] = *offset;
            if oy.checked_add(lh).is_none_or(|e| e > *h) || ox.checked_add(lw).is_none_or(|e| e > *w) {
                bail!("a {lh}x{lw} window at offset [{oy}, {ox}] does not fit the {h}x{w} map");
            }
            (vec![*c, lh, lw], vec![], 0)
        }
        (LayerKind::Concat { with } | LayerKind::Add { with }, _) => {
            if with.is_empty() {
                bail!("`with` lists no group");
            }
            let mut shape = input.to_vec();
            for name in with {
                let other = lookup(outputs, name).map_err(anyhow::Error::msg)?;
                match kind {
                    LayerKind::Concat { .. } => {
                        if other.len() != shape.len() || other[1..] != shape[1..] {
                            bail!(
                                "cannot join {} with `{name}`'s {}: all but the channels must match",
                                fmt_shape(&shape),
                                fmt_shape(other)
                            );
                        }
                        shape[0] += other[0];
                    }
                    _ => {
                        if *other != shape {
                            bail!(
                                "cannot add `{name}`'s {} to {}: shapes must match",
                                fmt_shape(other),
                                fmt_shape(&shape)
                            );
                        }
                    }
                }
            }
            (shape, vec![], 0)
        }
        _ => infer(kind, input)?,
    };
    Ok(PlannedLayer {
        path,
        key,
        group: group.to_string(),
        kind: kind.clone(),
        in_shape: input.to_vec(),
        out_shape,
        params,
        macs,
        conv_kernel,
    })
}

type Params = Vec<(String, Vec<usize>)>;

fn infer(kind: &LayerKind, input: &[usize]) -> Result<(Vec<usize>, Params, u64)> {
    let spatial = |what: &str| -> Result<(usize, usize, usize)> {
        match input {
            [c, h, w] => Ok((*c, *h, *w)),
            _ => bail!("{what} expects a [channels, height, width] input, gets {}", fmt_shape(input)),
        }
    };
    let check_in = |inp: &Option<usize>, c: usize| -> Result<()> {
        match inp {
            Some(i) if *i != c => bail!("expects {i} input channels, gets {c}"),
            _ => Ok(()),
        }
    };
    Ok(match kind {
        LayerKind::Conv2d { inp, out, kernel, stride, padding, dilation, groups, bias } => {
            let (c, h, w) = spatial("conv2d")?;
            check_in(inp, c)?;
            if *out == 0 || *kernel == 0 || *stride == 0 || *dilation == 0 || *groups == 0 {
                bail!("out, kernel, stride, dilation and groups must be > 0");
            }
            if c % groups != 0 || out % groups != 0 {
                bail!("groups = {groups} must divide the input channels ({c}) and out ({out})");
            }
            let span = dilation * (kernel - 1) + 1;
            if h + 2 * padding < span || w + 2 * padding < span {
                bail!(
                    "kernel {kernel} (dilation {dilation}) is larger than the padded input {}x{}",
                    h + 2 * padding,
                    w + 2 * padding
                );
            }
            let oh = (h + 2 * padding - span) / stride + 1;
            let ow = (w + 2 * padding - span) / stride + 1;
            let mut params = vec![("weight".to_string(), vec![*out, c / groups, *kernel, *kernel])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            let macs = (out * oh * ow * (c / groups) * kernel * kernel) as u64;
            (vec![*out, oh, ow], params, macs)
        }
        LayerKind::ConvTranspose2d {
            inp,
            out,
            kernel,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            bias,
            init,
            ..
        } => {
            let (c, h, w) = spatial("conv_transpose2d")?;
            check_in(inp, c)?;
            if init.is_some() && (c != *out || *groups != 1) {
                bail!("init = \"bilinear\" maps each channel to itself: it needs out = in ({c}) and groups = 1");
            }
            if *out == 0 || *kernel == 0 || *stride == 0 || *dilation == 0 || *groups == 0 {
                bail!("out, kernel, stride, dilation and groups must be > 0");
            }
            if c % groups != 0 || out % groups != 0 {
                bail!("groups = {groups} must divide the input channels ({c}) and out ({out})");
            }
            // PyTorch allows up to the dilation too; those extra rows hold only the bias, and
            // runner's kernels compute the convolution whose gradient this is, which has none.
            if output_padding >= stride {
                bail!("output_padding ({output_padding}) must be smaller than stride ({stride})");
            }
            let g = ConvGeom { stride: *stride, padding: *padding, dilation: *dilation, groups: *groups };
            let size = |s| conv::conv_transpose_out(s, *kernel, g, *output_padding).filter(|o| *o > 0);
            let (Some(oh), Some(ow)) = (size(h), size(w)) else {
                bail!("padding {padding} is too large for a {h}x{w} input");
            };
            let mut params = vec![("weight".to_string(), vec![c, out / groups, *kernel, *kernel])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            let macs = (c * h * w * (out / groups) * kernel * kernel) as u64;
            (vec![*out, oh, ow], params, macs)
        }
        LayerKind::Maxpool { .. } | LayerKind::Avgpool { .. } => {
            let (c, h, w) = spatial(kind.name())?;
            let Some((_, g)) = kind.pool() else { bail!("not a pooling layer") };
            g.validate(h, w).map_err(anyhow::Error::msg)?;
            (vec![c, g.out_size(h), g.out_size(w)], vec![], 0)
        }
        LayerKind::Batchnorm { eps, momentum } => {
            let (c, _, _) = spatial("batchnorm")?;
            if *eps <= 0.0 || eps.is_nan() {
                bail!("eps must be > 0, is {eps}");
            }
            if !(0.0..=1.0).contains(momentum) {
                bail!("momentum must be in [0, 1], is {momentum}");
            }
            (input.to_vec(), vec![("weight".to_string(), vec![c]), ("bias".to_string(), vec![c])], 0)
        }
        LayerKind::GlobalAvgpool {} => {
            let (c, _, _) = spatial("global_avgpool")?;
            (vec![c, 1, 1], vec![], 0)
        }
        LayerKind::Upsample { .. } => {
            let (c, h, w) = spatial("upsample")?;
            match kind.upsample(h, w) {
                Some(Ok((_, (oh, ow)))) => (vec![c, oh, ow], vec![], 0),
                Some(Err(e)) => bail!("{e}"),
                None => bail!("not an upsample layer"),
            }
        }
        LayerKind::LeakyRelu { slope } if !slope.is_finite() => bail!("slope must be a number, is {slope}"),
        LayerKind::Relu {} | LayerKind::LeakyRelu { .. } | LayerKind::Sigmoid {} | LayerKind::Dropout { .. } => {
            if let LayerKind::Dropout { p } = kind {
                if !(0.0..1.0).contains(p) {
                    bail!("p must be in [0, 1), is {p}");
                }
            }
            (input.to_vec(), vec![], 0)
        }
        LayerKind::Flatten {} => (vec![input.iter().product()], vec![], 0),
        LayerKind::Linear { inp, out, bias } => {
            let [features] = input else {
                bail!("linear expects a flat input, gets {}; add \"flatten\" before it", fmt_shape(input));
            };
            if let Some(i) = inp.filter(|i| i != features) {
                bail!("expects {i} input features, gets {features}");
            }
            if *out == 0 {
                bail!("out must be > 0");
            }
            let mut params = vec![("weight".to_string(), vec![*out, *features])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            (vec![*out], params, (out * features) as u64)
        }
        LayerKind::Concat { .. } | LayerKind::Add { .. } | LayerKind::Crop { .. } => {
            bail!("a merge or crop layer is planned with the outputs of earlier groups")
        }
    })
}

/// Marks every group whose output a later group reads.
pub fn mark_kept(graph: &mut PlannedGraph) {
    let mut read = BTreeSet::new();
    for g in &graph.groups {
        if let Some(f) = &g.from {
            read.insert(f.clone());
        }
        for l in g.blocks.iter().flat_map(|b| &b.layers) {
            if let LayerKind::Concat { with } | LayerKind::Add { with } = &l.kind {
                read.extend(with.iter().cloned());
            }
            if let LayerKind::Crop { like, .. } = &l.kind {
                read.insert(like.clone());
            }
        }
    }
    for g in &mut graph.groups {
        g.keep = read.contains(&g.name);
    }
}

/// [`plan_graph`] with the kept outputs marked: what the model is built from.
pub fn plan_model(cfg: &ModelConfig) -> Result<PlannedGraph> {
    let mut g = plan_graph(cfg)?;
    mark_kept(&mut g);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupConfig, Layer};
    use crate::ops::upsample::UpsampleMode;

    fn conv(out: usize, kernel: usize, stride: usize, padding: usize) -> LayerKind {
        LayerKind::Conv2d { inp: None, out, kernel, stride, padding, dilation: 1, groups: 1, bias: true }
    }

    fn model(layers: Vec<LayerKind>) -> ModelConfig {
        ModelConfig {
            input: vec![1, 28, 28],
            groups: vec![GroupConfig::new("features", layers.into_iter().map(Layer).collect())],
            fully_convolutional: false,
            ..Default::default()
        }
    }

    fn layers(cfg: &ModelConfig) -> Result<Vec<PlannedLayer>> {
        Ok(plan_model(cfg)?.layers().cloned().collect())
    }

    #[test]
    fn conv_and_pool_shapes() {
        // Hand computation: (28 - 5)/1 + 1 = 24; 24 / 2 = 12; 12*12*6 = 864.
        let layers = layers(&model(vec![
            conv(6, 5, 1, 0),
            LayerKind::Maxpool { kernel: 2, stride: None, padding: 0, ceil_mode: false },
            LayerKind::Flatten {},
            LayerKind::Linear { inp: None, out: 10, bias: true },
        ]))
        .unwrap();
        assert_eq!(layers[0].out_shape, vec![6, 24, 24]);
        assert_eq!(layers[0].num_params(), 6 * 25 + 6);
        // Multiply-adds: 6 * 24 * 24 outputs, 25 each.
        assert_eq!(layers[0].macs, 6 * 24 * 24 * 25);
        assert_eq!(layers[1].out_shape, vec![6, 12, 12]);
        assert_eq!(layers[2].out_shape, vec![864]);
        assert_eq!(layers[3].num_params(), 864 * 10 + 10);
        assert_eq!(layers[3].path, "features.3");
    }

    #[test]
    fn mismatches_name_the_layer() {
        let e = layers(&model(vec![LayerKind::Linear { inp: None, out: 10, bias: true }])).unwrap_err().to_string();
        assert!(e.contains("model.groups[0].layers[0]") && e.contains("flatten"), "{e}");
        let e = layers(&model(vec![conv(6, 29, 1, 0)])).unwrap_err().to_string();
        assert!(e.contains("features.layers[0] conv2d") && e.contains("larger than the padded input 28x28"), "{e}");
        let grouped = LayerKind::Conv2d {
            inp: None,
            out: 6,
            kernel: 3,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 4,
            bias: true,
        };
        let e = layers(&model(vec![grouped])).unwrap_err().to_string();
        assert!(e.contains("groups = 4 must divide the input channels (1)"), "{e}");
        let pool = LayerKind::Maxpool { kernel: 3, stride: Some(2), padding: 2, ceil_mode: false };
        let e = layers(&model(vec![pool])).unwrap_err().to_string();
        assert!(e.contains("features.layers[0] maxpool") && e.contains("at most half the kernel"), "{e}");
        let bn = LayerKind::Batchnorm { eps: 1e-5, momentum: 1.5 };
        let e = layers(&model(vec![bn])).unwrap_err().to_string();
        assert!(e.contains("features.layers[0] batchnorm") && e.contains("momentum must be in [0, 1], is 1.5"), "{e}");
    }

    fn res_model(channels: [usize; 2], repeat: usize) -> ModelConfig {
        let stem = GroupConfig::new("stem", vec![Layer(conv(channels[0], 3, 1, 1))]);
        let mut res = GroupConfig::new(
            "res",
            vec![
                Layer(LayerKind::Conv2d {
                    inp: Some(channels[1]),
                    out: channels[1],
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                    dilation: 1,
                    groups: 1,
                    bias: true,
                }),
                Layer(LayerKind::Batchnorm { eps: 1e-5, momentum: 0.1 }),
            ],
        );
        res.repeat = Some(repeat);
        res.residual = true;
        res.activation = Some(Layer(LayerKind::Relu {}));
        ModelConfig { input: vec![3, 8, 8], groups: vec![stem, res], fully_convolutional: false, ..Default::default() }
    }

    #[test]
    fn repeat_and_residual_paths() {
        let g = plan_model(&res_model([4, 4], 3)).unwrap();
        let paths: Vec<&str> = g.layers().map(|l| l.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "stem.0",
                "res.0.0",
                "res.0.1",
                "res.0.act",
                "res.1.0",
                "res.1.1",
                "res.1.act",
                "res.2.0",
                "res.2.1",
                "res.2.act"
            ]
        );
        // 3 blocks of conv (4*4*9 + 4) and batchnorm (8), no projection: shapes match.
        assert_eq!(g.num_params(), (3 * 4 * 9 + 4) + 3 * (4 * 4 * 9 + 4 + 8));
        assert!(g.groups[1].blocks.iter().all(|b| b.residual.as_ref().unwrap().shortcut.is_empty()));
        assert!(g.params_under("res.1").unwrap().contains(&"res.1.0.weight".to_string()));
        let e = g.params_under("rez").unwrap_err();
        assert!(e.contains("did you mean `res`"), "{e}");
    }

    #[test]
    fn in_channel_mismatch_names_group_repetition_and_layer() {
        let e = plan_model(&res_model([2, 4], 2)).unwrap_err().to_string();
        assert!(
            e.contains("key `model.groups[1].layers[0]` (res[0].layers[0] conv2d): expects 4 input channels, gets 2"),
            "{e}"
        );
    }

    #[test]
    fn projection_shortcut_when_the_shape_changes() {
        let mut cfg = res_model([4, 4], 1);
        cfg.groups[1].repeat = None;
        cfg.groups[1].layers[0] = Layer(conv(8, 3, 2, 1)); // [4, 8, 8] -> [8, 4, 4]
        let g = plan_model(&cfg).unwrap();
        let r = g.groups[1].blocks[0].residual.as_ref().unwrap();
        assert_eq!(r.shortcut[0].path, "res.shortcut.0");
        assert_eq!(r.shortcut[0].params, vec![("weight".to_string(), vec![8, 4, 1, 1])]);
        assert_eq!(r.shortcut[0].out_shape, vec![8, 4, 4]);
        assert_eq!(r.shortcut[1].path, "res.shortcut.1");
        assert!(matches!(r.shortcut[0].kind, LayerKind::Conv2d { stride: 2, bias: false, .. }));
    }

    #[test]
    fn skip_inputs_and_merges() {
        let a = GroupConfig::new("a", vec![Layer(conv(4, 3, 1, 1))]);
        let mut b = GroupConfig::new("b", vec![Layer(conv(2, 1, 1, 0))]);
        b.from = Some("input".into());
        let c = GroupConfig::new("c", vec![Layer(LayerKind::Concat { with: vec!["a".into(), "input".into()] })]);
        let d = GroupConfig::new("d", vec![Layer(conv(4, 1, 1, 0)), Layer(LayerKind::Add { with: vec!["a".into()] })]);
        let mut cfg = ModelConfig {
            input: vec![3, 8, 8],
            groups: vec![a, b, c, d],
            fully_convolutional: false,
            ..Default::default()
        };
        let g = plan_model(&cfg).unwrap();
        assert_eq!(g.groups[1].in_shape, vec![3, 8, 8]);
        // b's 2 channels + a's 4 + the image's 3.
        assert_eq!(g.groups[2].out_shape, vec![9, 8, 8]);
        assert!(g.groups[0].keep && !g.groups[1].keep && !g.groups[3].keep);
        cfg.groups[3].layers[1] = Layer(LayerKind::Add { with: vec!["aa".into()] });
        let e = plan_model(&cfg).unwrap_err().to_string();
        assert!(e.contains("d.layers[1] add") && e.contains("did you mean `a`?"), "{e}");
        cfg.groups[3].layers[1] = Layer(LayerKind::Add { with: vec!["b".into()] });
        let e = plan_model(&cfg).unwrap_err().to_string();
        assert!(e.contains("cannot add `b`'s [2, 8, 8] to [4, 8, 8]"), "{e}");
    }

    #[test]
    fn fully_convolutional_linear_is_a_convolution() {
        let mut cfg = model(vec![
            conv(6, 5, 1, 0),
            LayerKind::Flatten {},
            LayerKind::Linear { inp: None, out: 10, bias: true },
            LayerKind::Relu {},
            LayerKind::Linear { inp: None, out: 3, bias: true },
        ]);
        let flat = plan_model(&cfg).unwrap();
        cfg.fully_convolutional = true;
        let g = plan_model(&cfg).unwrap();
        let l: Vec<&PlannedLayer> = g.layers().collect();
        assert_eq!(l[1].out_shape, vec![6, 24, 24]);
        assert_eq!(l[2].conv_kernel, Some([24, 24]));
        assert_eq!(l[4].conv_kernel, Some([1, 1]));
        assert_eq!(g.out_shape(), &[3, 1, 1]);
        // The same parameters, by name and shape, as the linear model.
        assert_eq!(g.param_shapes(), flat.param_shapes());
    }

    #[test]
    fn output_stride_multiplies_the_strides() {
        // Hand computation: conv stride 2, maxpool 2 (stride = kernel), conv stride 1,
        // avgpool kernel 3 stride 1, then a linear run as a convolution: 2 * 2 * 1 * 1 = 4.
        let mut cfg = model(vec![
            conv(4, 3, 2, 1),
            LayerKind::Maxpool { kernel: 2, stride: None, padding: 0, ceil_mode: false },
            conv(4, 3, 1, 1),
            LayerKind::Avgpool { kernel: 3, stride: Some(1), padding: 0, ceil_mode: false },
            LayerKind::Flatten {},
            LayerKind::Linear { inp: None, out: 3, bias: true },
        ]);
        cfg.fully_convolutional = true;
        assert_eq!(plan_model(&cfg).unwrap().output_stride(), Ok(4));
        // A global pooling makes every image one position: it cannot slide.
        cfg.groups[0].layers[3] = Layer(LayerKind::GlobalAvgpool {});
        let e = plan_model(&cfg).unwrap().output_stride().unwrap_err();
        assert_eq!(e, "model.groups[0].layers[3] (global_avgpool) does not slide over a larger image");
        // An upsampling inside; adding a map that steps 1 pixel to one that steps 2.
        let a = GroupConfig::new("a", vec![Layer(conv(4, 3, 1, 1))]);
        let b = GroupConfig::new(
            "b",
            vec![
                Layer(conv(4, 3, 2, 1)),
                Layer(LayerKind::Upsample { mode: UpsampleMode::Nearest, scale: Some(2), size: None }),
                Layer(LayerKind::Add { with: vec!["a".into()] }),
            ],
        );
        let g =
            ModelConfig { input: vec![3, 8, 8], groups: vec![a, b], fully_convolutional: true, ..Default::default() };
        let e = plan_model(&g).unwrap().output_stride().unwrap_err();
        assert!(e.contains("upsample"), "{e}");
        let a = GroupConfig::new("a", vec![Layer(conv(4, 3, 2, 1))]);
        // b: (8 - 5) / 1 + 1 = 4, the shape of a's (8 + 2 - 3) / 2 + 1 = 4, at another step.
        let mut b =
            GroupConfig::new("b", vec![Layer(conv(4, 5, 1, 0)), Layer(LayerKind::Add { with: vec!["a".into()] })]);
        b.from = Some("input".into());
        let g =
            ModelConfig { input: vec![3, 8, 8], groups: vec![a, b], fully_convolutional: true, ..Default::default() };
        let e = plan_model(&g).unwrap().output_stride().unwrap_err();
        assert_eq!(e, "model.groups[1].layers[1] (add) joins `a`, whose map steps 2 pixels, with a map that steps 1");
    }
}
