//! The model at run time: planned layers turned into candle tensors and a forward pass.
//!
//! Weights live in one map keyed by dotted path (`features.0.weight`), the names that
//! checkpoints, freezing rules and log rows share. They are initialised from the project's
//! seeded RNG the way PyTorch initialises `Conv2d` and `Linear` by default, so one seed gives
//! one set of weights on every machine.

pub mod graph;
pub mod onnx;
pub mod pth;
pub mod weights;

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Result, Tensor, Var, D};

use crate::config::{KernelInit, LayerKind, Precision};
use crate::ops::activation::relu_op;
use crate::ops::batchnorm::{batch_norm_eval, batch_norm_relu_train, batch_norm_train};
use crate::ops::bias::add_channel_bias;
use crate::ops::conv::{conv2d, conv2d_bias, conv_transpose2d, ConvGeom};
use crate::ops::pool::pool2d;
use crate::ops::upsample::upsample2d;
use crate::ops::{activation, batchnorm, linear};
use crate::rng::Rng;
pub use graph::{plan_model, PlannedGraph, PlannedLayer};

pub struct Model {
    graph: PlannedGraph,
    /// Every parameter by dotted path.
    pub params: BTreeMap<String, Var>,
    /// State that is not trained: batch norm's `running_mean` and `running_var`.
    pub buffers: BTreeMap<String, Var>,
    /// Parameters that are not trained now: used detached (no gradient reaches them or
    /// anything before them through them), their batch norms in evaluation mode.
    frozen: BTreeSet<String>,
    device: Device,
    /// What convolutions and linear layers compute in (`[experiment] precision`).
    precision: Precision,
}

/// Per-forward context: whether this is training (dropout on) and which step, for masks.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub train: bool,
    pub seed: u64,
    pub epoch: usize,
    pub step: usize,
}

impl Pass {
    pub fn eval() -> Self {
        Pass { train: false, seed: 0, epoch: 0, step: 0 }
    }
}

/// PyTorch's default init for conv and linear layers: `kaiming_uniform_(a = sqrt(5))` for the
/// weight, i.e. U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)), which
/// is b = 1 / sqrt(fan_in); and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias.
pub fn init_param(seed: u64, path: &str, shape: &[usize], fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut rng = Rng::derive(seed, &["init".into(), path.into()]);
    let n: usize = shape.iter().product();
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
}

/// The FCN authors' bilinear upsampling filter (`surgery.upsample_filt`), `k x k` row by
/// row: `factor = (k + 1) / 2` (integer division), `center = factor - 1` for odd `k` and
/// `factor - 0.5` for even, `(1 - |y - center| / factor) * (1 - |x - center| / factor)`.
pub fn bilinear_kernel(k: usize) -> Vec<f32> {
    let factor = k.div_ceil(2) as f64;
    let center = if k % 2 == 1 { factor - 1.0 } else { factor - 0.5 };
    let one = |i: usize| 1.0 - (i as f64 - center).abs() / factor;
    (0..k * k).map(|p| (one(p / k) * one(p % k)) as f32).collect()
}

impl Model {
    pub fn new(graph: &PlannedGraph, seed: u64, device: &Device) -> Result<Self> {
        let mut params = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        for layer in graph.layers() {
            if let LayerKind::Batchnorm { .. } = layer.kind {
                // PyTorch: weight 1, bias 0, running mean 0, running variance 1.
                let c = layer.in_shape[0];
                let p = &layer.path;
                params.insert(format!("{p}.weight"), Var::ones(c, DType::F32, device)?);
                params.insert(format!("{p}.bias"), Var::zeros(c, DType::F32, device)?);
                buffers.insert(format!("{p}.running_mean"), Var::zeros(c, DType::F32, device)?);
                buffers.insert(format!("{p}.running_var"), Var::ones(c, DType::F32, device)?);
                continue;
            }
            if let LayerKind::ConvTranspose2d { init: Some(KernelInit::Bilinear), kernel, .. } = layer.kind {
                // The FCN authors' fixed upsampling: the bilinear filter from channel i to i.
                let c = layer.in_shape[0];
                let filt = bilinear_kernel(kernel);
                let mut w = vec![0f32; c * c * kernel * kernel];
                for i in 0..c {
                    w[(i * c + i) * kernel * kernel..][..kernel * kernel].copy_from_slice(&filt);
                }
                for (name, shape) in &layer.params {
                    let data = if name == "weight" { w.clone() } else { vec![0f32; shape.iter().product()] };
                    let t = Tensor::from_vec(data, shape.as_slice(), device)?;
                    params.insert(format!("{}.{name}", layer.path), Var::from_tensor(&t)?);
                }
                continue;
            }
            // fan_in: everything in the weight but the output dimension.
            let fan_in = layer.params.first().map(|(_, s)| s[1..].iter().product::<usize>()).unwrap_or(1);
            for (name, shape) in &layer.params {
                let path = format!("{}.{name}", layer.path);
                let data = init_param(seed, &path, shape, fan_in);
                let t = Tensor::from_vec(data, shape.as_slice(), device)?;
                params.insert(path, Var::from_tensor(&t)?);
            }
        }
        Ok(Model {
            graph: graph.clone(),
            params,
            buffers,
            frozen: BTreeSet::new(),
            device: device.clone(),
            precision: Precision::F32,
        })
    }

    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn graph(&self) -> &PlannedGraph {
        &self.graph
    }

    pub fn num_params(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Freezes exactly these parameters (by name); the others train.
    pub fn set_frozen(&mut self, names: BTreeSet<String>) {
        self.frozen = names;
    }

    pub fn frozen(&self) -> &BTreeSet<String> {
        &self.frozen
    }

    /// Whether each sample's output and gradient depend on that sample alone in training:
    /// no batch norm (batch statistics) and no dropout (masks drawn per batch position).
    /// Such a batch can be run in slices (`step::forward_backward`).
    pub fn samples_independent(&self) -> bool {
        !self.graph.layers().any(|l| match l.kind {
            LayerKind::Batchnorm { .. } => true,
            LayerKind::Dropout { p } => p > 0.0,
            _ => false,
        })
    }

    /// The parameters that train now.
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.params.iter().filter(|(n, _)| !self.frozen.contains(*n))
    }

    fn param(&self, layer: &PlannedLayer, name: &str) -> Option<Tensor> {
        let key = format!("{}.{name}", layer.path);
        let v = self.params.get(&key)?;
        Some(if self.frozen.contains(&key) { v.as_tensor().detach() } else { v.as_tensor().clone() })
    }

    fn required(&self, layer: &PlannedLayer, name: &str) -> Result<Tensor> {
        self.param(layer, name).ok_or_else(|| missing(layer, name))
    }

    /// `y + bias` per channel when the layer has a bias.
    fn channel_bias(&self, layer: &PlannedLayer, y: Tensor) -> Result<Tensor> {
        match self.param(layer, "bias") {
            Some(b) => add_channel_bias(&y, &b),
            None => Ok(y),
        }
    }

    /// `op(x, w)`, a convolution or product, in the model's precision. With bf16 its operands
    /// are rounded to bf16 and its bf16 output goes back to f32 (a bias is added after, in
    /// f32); the casts pass the gradients back in the operands' own dtypes, so the f32 weight
    /// gets an f32 gradient of bf16 precision.
    fn product(&self, x: &Tensor, w: &Tensor, op: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        product_in(self.precision, x, w, op)
    }

    /// `xs`: `[batch, c, h, w]` -> the last group's output: logits `[batch, classes]`
    /// (a fully convolutional model gives `[batch, classes, h, w]`, flattened when 1x1).
    pub fn forward(&self, xs: &Tensor, pass: Pass) -> Result<Tensor> {
        let mut kept: BTreeMap<&str, Tensor> = BTreeMap::new();
        kept.insert(graph::INPUT, xs.clone());
        let mut x = xs.clone();
        for group in &self.graph.groups {
            if let Some(from) = &group.from {
                x = kept
                    .get(from.as_str())
                    .ok_or_else(|| candle_core::Error::Msg(format!("group {}: no output `{from}`", group.name)))?
                    .clone();
            }
            for block in &group.blocks {
                let block_in = x.clone();
                let mut layers = block.layers.iter().peekable();
                while let Some(layer) = layers.next() {
                    // Batch norm then a ReLU or leaky ReLU run as one op (one pass and one
                    // backprop node fewer): the activation's slope (0 for a ReLU).
                    let act_next = layers.peek().and_then(|l| match l.kind {
                        LayerKind::Relu {} => Some(0.0),
                        LayerKind::LeakyRelu { slope } => Some(slope),
                        _ => None,
                    });
                    x = match (&layer.kind, act_next) {
                        (LayerKind::Batchnorm { eps, momentum }, Some(slope)) => {
                            layers.next();
                            self.batchnorm(layer, x, pass, (*eps, *momentum), Some(slope))?
                        }
                        _ => self.apply(layer, x, pass, &kept)?,
                    };
                }
                if let Some(res) = &block.residual {
                    let mut s = block_in;
                    for layer in &res.shortcut {
                        s = self.apply(layer, s, pass, &kept)?;
                    }
                    x = match &res.activation {
                        // The sum and its ReLU as one op: one pass, one backprop node fewer.
                        Some(act) if matches!(act.kind, LayerKind::Relu {}) => activation::add_relu_op(&x, &s)?,
                        Some(act) => self.apply(act, (x + s)?, pass, &kept)?,
                        None => (x + s)?,
                    };
                }
            }
            if group.keep {
                kept.insert(group.name.as_str(), x.clone());
            }
        }
        if self.graph.fully_convolutional && x.rank() == 4 && x.dim(2)? == 1 && x.dim(3)? == 1 {
            x = x.flatten_from(1)?;
        }
        Ok(x)
    }

    /// A batch-norm layer (`act`: with the ReLU, slope 0, or leaky ReLU that follows it
    /// fused in).
    fn batchnorm(
        &self,
        layer: &PlannedLayer,
        x: Tensor,
        pass: Pass,
        (eps, momentum): (f64, f64),
        act: Option<f64>,
    ) -> Result<Tensor> {
        let w = self.required(layer, "weight")?;
        let b = self.required(layer, "bias")?;
        let buffer = |n: &str| self.buffers.get(&format!("{}.{n}", layer.path)).ok_or_else(|| missing(layer, n));
        let (rm, rv) = (buffer("running_mean")?, buffer("running_var")?);
        let frozen = self.frozen.contains(&format!("{}.weight", layer.path));
        if pass.train && !frozen {
            let (y, mean, var) = match act {
                None => batch_norm_train(&x, &w, &b, eps)?,
                Some(0.0) => batch_norm_relu_train(&x, &w, &b, eps)?,
                Some(s) => batchnorm::batch_norm_leaky_train(&x, &w, &b, eps, s)?,
            };
            // PyTorch: running = (1 - momentum) * running + momentum * batch,
            // the variance unbiased (n / (n - 1)) over n = batch * h * w values.
            let n = (x.elem_count() / x.dim(1)?) as f64;
            batchnorm::update_running(rm, rv, &mean, &var, n, momentum)?;
            Ok(y)
        } else {
            let y = batch_norm_eval(&x, &w, &b, rm.as_tensor(), rv.as_tensor(), eps)?;
            match act {
                None => Ok(y),
                Some(0.0) => relu_op(&y),
                Some(s) => activation::leaky_relu_op(&y, s),
            }
        }
    }

    fn apply(&self, layer: &PlannedLayer, x: Tensor, pass: Pass, kept: &BTreeMap<&str, Tensor>) -> Result<Tensor> {
        Ok(match &layer.kind {
            LayerKind::Conv2d { stride, padding, dilation, groups, .. } => {
                let w = self.required(layer, "weight")?;
                let geom = ConvGeom { stride: *stride, padding: *padding, dilation: *dilation, groups: *groups };
                // [b, out, oh, ow]
                if self.precision.is_f32() {
                    conv2d_bias(&x, &w, self.param(layer, "bias").as_ref(), geom)?
                } else {
                    let y = self.product(&x, &w, |x, w| conv2d(x, w, geom))?;
                    self.channel_bias(layer, y)?
                }
            }
            LayerKind::ConvTranspose2d { stride, padding, output_padding, dilation, groups, .. } => {
                let w = self.required(layer, "weight")?;
                let geom = ConvGeom { stride: *stride, padding: *padding, dilation: *dilation, groups: *groups };
                let y = self.product(&x, &w, |x, w| conv_transpose2d(x, w, geom, *output_padding))?; // [b, out, oh, ow]
                self.channel_bias(layer, y)?
            }
            LayerKind::Maxpool { .. } | LayerKind::Avgpool { .. } => match layer.kind.pool() {
                Some((kind, geom)) => pool2d(&x, kind, geom)?,
                None => x,
            },
            LayerKind::Batchnorm { eps, momentum } => self.batchnorm(layer, x, pass, (*eps, *momentum), None)?,
            LayerKind::GlobalAvgpool {} => x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?, // [b, c, 1, 1]
            LayerKind::Relu {} => relu_op(&x)?,
            LayerKind::LeakyRelu { slope } => activation::leaky_relu_op(&x, *slope)?,
            LayerKind::Sigmoid {} => candle_nn::ops::sigmoid(&x)?,
            LayerKind::Upsample { .. } => {
                let (_, _, h, w) = x.dims4()?;
                match layer.kind.upsample(h, w) {
                    Some(Ok((mode, size))) => upsample2d(&x, mode, size)?,
                    Some(Err(e)) => return Err(candle_core::Error::Msg(format!("{}: {e}", layer.key))),
                    None => x,
                }
            }
            LayerKind::Flatten {} if self.graph.fully_convolutional => x,
            LayerKind::Flatten {} => x.flatten_from(1)?,
            LayerKind::Linear { out, .. } => {
                let w = self.required(layer, "weight")?;
                match layer.conv_kernel {
                    Some([kh, kw]) => {
                        // The course's `convolutionize`: the linear weight seen as a
                        // convolution kernel over the whole map it was trained on.
                        let c = layer.in_shape[0];
                        let w = w.reshape((*out, c, kh, kw))?;
                        let geom = ConvGeom { stride: 1, padding: 0, dilation: 1, groups: 1 };
                        let y = self.product(&x, &w, |x, w| conv2d(x, w, geom))?;
                        self.channel_bias(layer, y)?
                    }
                    None if self.precision.is_f32() => {
                        let b = self.param(layer, "bias");
                        linear::linear(&x, &w, b.as_ref())? // [b, out]
                    }
                    None => {
                        let y = self.product(&x, &w, |x, w| linear::linear(x, w, None))?;
                        match self.param(layer, "bias") {
                            Some(b) => y.broadcast_add(&b)?,
                            None => y,
                        }
                    }
                }
            }
            LayerKind::Dropout { p } => {
                if pass.train && *p > 0.0 {
                    let rng = Rng::derive(
                        pass.seed,
                        &["dropout".into(), layer.path.as_str().into(), pass.epoch.into(), pass.step.into()],
                    );
                    dropout(&x, *p, rng)?
                } else {
                    x
                }
            }
            LayerKind::Crop { offset: [oy, ox], .. } => {
                let [_, h, w] = layer.out_shape[..] else {
                    return Err(candle_core::Error::Msg(format!("{}: crop needs a map", layer.key)));
                };
                x.narrow(2, *oy, h)?.narrow(3, *ox, w)?
            }
            LayerKind::Concat { with } | LayerKind::Add { with } => {
                let mut parts = vec![x];
                for name in with {
                    let t = kept
                        .get(name.as_str())
                        .ok_or_else(|| candle_core::Error::Msg(format!("{}: no output `{name}` kept", layer.key)))?;
                    parts.push(t.clone());
                }
                if let LayerKind::Concat { .. } = layer.kind {
                    Tensor::cat(&parts, 1)?
                } else {
                    let mut sum = parts[0].clone();
                    for p in &parts[1..] {
                        sum = (sum + p)?;
                    }
                    sum
                }
            }
        })
    }
}

/// `op(x, w)`, a convolution or product, in `precision`, as the model runs its layers (the
/// bench's hand-built models too): with bf16, `x` and `w` rounded to bf16, the output back
/// to f32.
pub fn product_in(
    precision: Precision,
    x: &Tensor,
    w: &Tensor,
    op: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match precision {
        Precision::F32 => op(x, w),
        Precision::Bf16 => op(&x.to_dtype(DType::BF16)?, &w.to_dtype(DType::BF16)?)?.to_dtype(DType::F32),
    }
}

fn missing(layer: &PlannedLayer, name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: parameter `{}.{name}` is missing", layer.key, layer.path))
}

/// Inverted dropout: zero each element with probability `p`, scale the rest by 1 / (1 - p).
fn dropout(x: &Tensor, p: f64, mut rng: Rng) -> Result<Tensor> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.next_f64() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Index of the largest logit per row.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    predicted(logits)?.to_vec1::<u32>()
}

/// Each row's predicted class (the first largest logit) as a `[b]` u32 tensor on the
/// logits' device, detached: [`argmax`] without the read to the host.
pub fn predicted(logits: &Tensor) -> Result<Tensor> {
    logits.detach().argmax(D::Minus1)?.to_dtype(DType::U32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::ops::upsample::UpsampleMode;

    /// The FCN authors' `upsample_filt` by hand: k = 4 (factor 2, centre 1.5) gives the 1-D
    /// filter [0.25, 0.75, 0.75, 0.25]; k = 3 (factor 2, centre 1) gives [0.5, 1, 0.5]; the
    /// 2-D filter is their outer product. A stride-2 transposed convolution with the k = 4
    /// filter and padding 1 doubles a map by bilinear interpolation: a ramp stays a ramp.
    #[test]
    fn bilinear_kernel_is_the_fcn_authors_filter() {
        let one4 = [0.25f32, 0.75, 0.75, 0.25];
        let k4 = bilinear_kernel(4);
        for (p, v) in k4.iter().enumerate() {
            assert_eq!(*v, one4[p / 4] * one4[p % 4], "{p}");
        }
        let one3 = [0.5f32, 1.0, 0.5];
        assert_eq!(bilinear_kernel(3), (0..9).map(|p| one3[p / 3] * one3[p % 3]).collect::<Vec<_>>());
        // Upsampling [0, 1, 2, 3] (one row repeated) by 2: the interior is linear in x,
        // step 0.5 (outputs 1..=6: away from the zero-padded border).
        let x: Vec<f32> = (0..16).map(|p| (p % 4) as f32).collect();
        let x = Tensor::from_vec(x, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(k4, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let g = ConvGeom { stride: 2, padding: 1, dilation: 1, groups: 1 };
        let y = conv_transpose2d(&x, &w, g, 0).unwrap().squeeze(0).unwrap().to_vec3::<f32>().unwrap().remove(0); // [8, 8]
        let row = &y[3];
        for xo in 1..6 {
            assert!((row[xo + 1] - row[xo] - 0.5).abs() < 1e-6, "{row:?}");
        }
    }

    /// `precision = "bf16"`: each convolution, transposed convolution and linear layer takes
    /// its input and weight rounded to bf16, rounds its output to bf16 and adds its f32 bias.
    /// The reference does that by hand with the sums in f64: at least 97% of the outputs are
    /// the same bits and all are within 2% (sums in another order can round to the
    /// neighbouring bf16 value, and that moves what follows); the f32 model's outputs are
    /// not (under 5% the same bits), so the test sees whether the rounding happens. The
    /// weights' gradients reach the f32 weights in f32, within 3% of the f32 model's and
    /// not equal to them (but the last bias's, added in f32 after every product).
    #[test]
    fn bf16_rounds_each_products_operands_and_output() {
        use crate::ops::testing::rand_tensor;
        let cfg: ModelConfig = toml::from_str(
            r#"
input = [2, 6, 6]
[[groups]]
name = "g"
layers = [{ conv2d = { out = 4, kernel = 3, padding = 1 } }, "relu",
          { conv_transpose2d = { out = 3, kernel = 2, stride = 2 } }, "flatten", { linear = { out = 5 } }]
"#,
        )
        .unwrap();
        let graph = plan_model(&cfg).unwrap();
        let f32m = Model::new(&graph, 7, &Device::Cpu).unwrap();
        let bf16m = Model::new(&graph, 7, &Device::Cpu).unwrap().with_precision(Precision::Bf16);
        let x = rand_tensor(&[3, 2, 6, 6], 8, DType::F32);

        let rounded = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F64).unwrap();
        let output = |t: Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let p = |n: &str| f32m.params.get(n).unwrap_or_else(|| panic!("no {n}")).as_tensor().clone();
        let g = |stride, padding| ConvGeom { stride, padding, dilation: 1, groups: 1 };
        let h = output(conv2d(&rounded(&x), &rounded(&p("g.0.weight")), g(1, 1)).unwrap());
        let h = add_channel_bias(&h, &p("g.0.bias")).unwrap().relu().unwrap();
        let h = output(conv_transpose2d(&rounded(&h), &rounded(&p("g.2.weight")), g(2, 0), 0).unwrap());
        let h = add_channel_bias(&h, &p("g.2.bias")).unwrap().flatten_from(1).unwrap();
        let h = output(rounded(&h).matmul(&rounded(&p("g.4.weight")).t().unwrap()).unwrap());
        let want: Vec<f32> = h.broadcast_add(&p("g.4.bias")).unwrap().flatten_all().unwrap().to_vec1().unwrap();

        let same_bits = |m: &Model| {
            let y: Vec<f32> = m.forward(&x, Pass::eval()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = y.iter().zip(&want).fold(0f32, |a, (y, w)| a.max((y - w).abs())) / scale;
            (y.iter().zip(&want).filter(|(y, w)| y.to_bits() == w.to_bits()).count() as f64 / y.len() as f64, worst)
        };
        let (bf16_same, bf16_worst) = same_bits(&bf16m);
        assert!(bf16_same >= 0.97 && bf16_worst < 0.02, "bf16: {bf16_same} the same, worst {bf16_worst}");
        let (f32_same, _) = same_bits(&f32m);
        assert!(f32_same < 0.05, "f32: {f32_same} of the outputs are bf16's");

        let r = rand_tensor(&[3, 5], 9, DType::F32);
        let grads =
            |m: &Model| (m.forward(&x, Pass::eval()).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (g32, g16) = (grads(&f32m), grads(&bf16m));
        for name in ["g.0.weight", "g.2.weight", "g.4.weight", "g.0.bias", "g.2.bias", "g.4.bias"] {
            let a = g32.get(&f32m.params[name]).unwrap();
            let b = g16.get(&bf16m.params[name]).unwrap();
            assert_eq!(b.dtype(), DType::F32, "{name}");
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
            if name == "g.4.bias" {
                // Added in f32 after the last product: its gradient is the loss's own.
                assert_eq!(diff, 0.0, "{name}");
            } else {
                assert!(diff > 0.0 && diff < 0.03, "{name}: {diff}");
            }
        }
    }

    #[test]
    fn init_bounds_follow_pytorch_default() {
        // fan_in = 25: bound 1/5 = 0.2 (hand computation of kaiming_uniform_(a=sqrt(5))).
        let w = init_param(0, "features.0.weight", &[6, 1, 5, 5], 25);
        assert!(w.iter().all(|v| v.abs() <= 0.2));
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.18, "150 draws should come near the bound, max {max}");
        // Same seed and path, same values; another path, other values.
        assert_eq!(w, init_param(0, "features.0.weight", &[6, 1, 5, 5], 25));
        assert_ne!(w, init_param(0, "features.3.weight", &[6, 1, 5, 5], 25));
    }

    #[test]
    fn activations_by_hand() {
        use crate::config::{GroupConfig, Layer, ModelConfig};
        // leaky_relu(0.1) of [-2, 3] = [-0.2, 3]; sigmoid(0) = 0.5; nearest x2 of [1, 2].
        let run = |kind: LayerKind, x: Tensor| -> Vec<f32> {
            let cfg = ModelConfig {
                input: x.dims()[1..].to_vec(),
                groups: vec![GroupConfig::new("g", vec![Layer(kind)])],
                fully_convolutional: false,
                ..Default::default()
            };
            let m = Model::new(&plan_model(&cfg).unwrap(), 0, &Device::Cpu).unwrap();
            m.forward(&x, Pass::eval()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let x = Tensor::new(&[[[[-2f32, 3.]]]], &Device::Cpu).unwrap();
        let y = run(LayerKind::LeakyRelu { slope: 0.1 }, x.clone());
        assert!((y[0] + 0.2).abs() < 1e-7 && y[1] == 3.0, "{y:?}");
        let y = run(LayerKind::Sigmoid {}, x.zeros_like().unwrap());
        assert_eq!(y, vec![0.5, 0.5]);
        let up = LayerKind::Upsample { mode: UpsampleMode::Nearest, scale: Some(2), size: None };
        assert_eq!(run(up, x), vec![-2., -2., 3., 3., -2., -2., 3., 3.]);
    }

    #[test]
    fn activation_and_global_pool_gradients() {
        use crate::ops::testing::{check_grads, rand_tensor};
        use candle_core::Var;
        let x = Var::from_tensor(&rand_tensor(&[2, 3, 4, 5], 21, DType::F64)).unwrap();
        check_grads(&[&x], |v| candle_nn::ops::leaky_relu(v[0], 0.1), "leaky_relu");
        check_grads(&[&x], |v| candle_nn::ops::sigmoid(v[0]), "sigmoid");
        check_grads(&[&x], |v| v[0].mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2), "global_avgpool");
        // Hand computation: the mean of 1..=4 is 2.5.
        let t = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let m = t.mean_keepdim(D::Minus1).unwrap().mean_keepdim(D::Minus2).unwrap();
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.5]);
    }

    #[test]
    fn batchnorm_layer_tracks_running_statistics() {
        use crate::config::{GroupConfig, Layer, ModelConfig};
        // One channel, batch of two 1x2 images [1, 3] and [5, 7]: mean 4, biased var 5,
        // unbiased var 5 * 4 / 3 = 20/3. After one training pass with momentum 0.1:
        // running_mean = 0.9 * 0 + 0.1 * 4 = 0.4; running_var = 0.9 * 1 + 0.1 * 20/3 = 1.5667.
        let cfg = ModelConfig {
            input: vec![1, 1, 2],
            groups: vec![GroupConfig::new("g", vec![Layer(LayerKind::Batchnorm { eps: 1e-5, momentum: 0.1 })])],
            fully_convolutional: false,
            ..Default::default()
        };
        let m = Model::new(&plan_model(&cfg).unwrap(), 0, &Device::Cpu).unwrap();
        assert_eq!(m.num_params(), 2, "weight and bias; running statistics are buffers");
        let x = Tensor::new(&[[[[1f32, 3.]]], [[[5., 7.]]]], &Device::Cpu).unwrap();
        let y = m.forward(&x, Pass { train: true, seed: 0, epoch: 0, step: 0 }).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let s = (5f32 + 1e-5).sqrt();
        for (a, b) in y.iter().zip([-3. / s, -1. / s, 1. / s, 3. / s]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        let rm = m.buffers["g.0.running_mean"].as_tensor().to_vec1::<f32>().unwrap();
        let rv = m.buffers["g.0.running_var"].as_tensor().to_vec1::<f32>().unwrap();
        assert!((rm[0] - 0.4).abs() < 1e-6 && (rv[0] - (0.9 + 2.0 / 3.0)).abs() < 1e-5, "{rm:?} {rv:?}");
        // Evaluation uses the running statistics: (1 - 0.4) / sqrt(1.5667 + eps).
        let e = m.forward(&Tensor::new(&[[[[1f32, 1.]]]], &Device::Cpu).unwrap(), Pass::eval()).unwrap();
        let e: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
        assert!((e[0] - 0.6 / (rv[0] + 1e-5).sqrt()).abs() < 1e-5, "{e:?}");
    }

    #[test]
    fn dropout_keeps_expectation() {
        let x = Tensor::ones((1000,), DType::F32, &Device::Cpu).unwrap();
        let y = dropout(&x, 0.5, Rng::new(1)).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count();
        assert!((400..600).contains(&zeros), "{zeros}");
        assert!(y.iter().all(|v| *v == 0.0 || *v == 2.0));
    }

    #[test]
    fn fully_convolutional_lenet_slides_the_classifier() {
        use crate::config::{GroupConfig, Layer, ModelConfig};
        use crate::ops::testing::rand_tensor;
        let conv = |out| {
            Layer(LayerKind::Conv2d {
                inp: None,
                out,
                kernel: 5,
                stride: 1,
                padding: 0,
                dilation: 1,
                groups: 1,
                bias: true,
            })
        };
        let pool = || Layer(LayerKind::Maxpool { kernel: 2, stride: None, padding: 0, ceil_mode: false });
        let linear = |out| Layer(LayerKind::Linear { inp: None, out, bias: true });
        let relu = || Layer(LayerKind::Relu {});
        let mut cfg = ModelConfig {
            input: vec![1, 28, 28],
            groups: vec![
                GroupConfig::new("features", vec![conv(6), relu(), pool(), conv(16), relu(), pool()]),
                GroupConfig::new("classifier", vec![Layer(LayerKind::Flatten {}), linear(120), relu(), linear(10)]),
            ],
            fully_convolutional: false,
            ..Default::default()
        };
        let flat = Model::new(&plan_model(&cfg).unwrap(), 3, &Device::Cpu).unwrap();
        cfg.fully_convolutional = true;
        let fc = Model::new(&plan_model(&cfg).unwrap(), 3, &Device::Cpu).unwrap();
        // Same names, shapes and values: a checkpoint of one is a checkpoint of the other.
        for (n, v) in &flat.params {
            let w = fc.params[n].as_tensor();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(v.as_tensor()), values(w), "{n}");
            assert_eq!(v.dims(), w.dims(), "{n}");
        }
        let x = rand_tensor(&[2, 1, 28, 28], 5, DType::F32);
        let a = flat.forward(&x, Pass::eval()).unwrap();
        let b = fc.forward(&x, Pass::eval()).unwrap();
        assert_eq!(b.dims(), &[2, 10]);
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "identical logits at the training size, max diff {d}");
        // A 36x36 image: the map is 3x3 (the total stride is 4), and position (i, j) holds the
        // linear model's logits for the 28x28 crop at (4i, 4j).
        let big = rand_tensor(&[2, 1, 36, 36], 6, DType::F32);
        let map = fc.forward(&big, Pass::eval()).unwrap();
        assert_eq!(map.dims(), &[2, 10, 3, 3]);
        let crop = big.narrow(2, 4, 28).unwrap().narrow(3, 8, 28).unwrap().contiguous().unwrap();
        let want = flat.forward(&crop, Pass::eval()).unwrap();
        let got = map.narrow(2, 1, 1).unwrap().narrow(3, 2, 1).unwrap().flatten_from(1).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "map position (1, 2) = the crop at (4, 8), max diff {d}");
    }
}
