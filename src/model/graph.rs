//! The model graph at plan time: every layer with its dotted path, input and output shapes
//! and parameter count, inferred from `[model] input` without building a tensor.
//!
//! A layer's path is `<group>.<index>` (`features.0`), as in a PyTorch `nn.Sequential`
//! inside a named module; its weights are `<path>.weight` and `<path>.bias`.

use anyhow::{bail, Result};

use crate::config::{LayerKind, ModelConfig};

/// A layer resolved against its input shape. Shapes exclude the batch dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// `features.0`
    pub path: String,
    /// Where it was written: `model.groups[0].layers[0]`.
    pub key: String,
    pub kind: LayerKind,
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// `(name, shape)` of each parameter, e.g. `("weight", [6, 1, 5, 5])`.
    pub params: Vec<(String, Vec<usize>)>,
}

impl PlannedLayer {
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

fn fmt_shape(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Infers every layer's shapes; a mismatch is an error naming the group, layer and key.
pub fn plan_layers(cfg: &ModelConfig) -> Result<Vec<PlannedLayer>> {
    if cfg.input.len() != 3 || cfg.input.contains(&0) {
        bail!("key `model.input`: expected [channels, height, width] with each > 0, is {}", fmt_shape(&cfg.input));
    }
    if cfg.groups.is_empty() {
        bail!("key `model.groups`: the model has no groups");
    }
    let mut names = std::collections::BTreeSet::new();
    let mut shape = cfg.input.clone();
    let mut out = Vec::new();
    for (g, group) in cfg.groups.iter().enumerate() {
        let gkey = format!("model.groups[{g}]");
        if group.name.is_empty() || !group.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("key `{gkey}.name`: a group name is letters, digits and '_', is {:?}", group.name);
        }
        if !names.insert(group.name.clone()) {
            bail!("key `{gkey}.name`: group name `{}` is used twice", group.name);
        }
        for (i, layer) in group.layers.iter().enumerate() {
            let path = format!("{}.{i}", group.name);
            let key = format!("{gkey}.layers[{i}]");
            let kind = layer.0.clone();
            let (out_shape, params) =
                infer(&kind, &shape).map_err(|e| anyhow::anyhow!("key `{key}` ({path} {}): {e}", kind.name()))?;
            out.push(PlannedLayer { path, key, kind, in_shape: shape.clone(), out_shape: out_shape.clone(), params });
            shape = out_shape;
        }
    }
    Ok(out)
}

type Params = Vec<(String, Vec<usize>)>;

fn infer(kind: &LayerKind, input: &[usize]) -> Result<(Vec<usize>, Params)> {
    let spatial = |what: &str| -> Result<(usize, usize, usize)> {
        match input {
            [c, h, w] => Ok((*c, *h, *w)),
            _ => bail!("{what} expects a [channels, height, width] input, gets {}", fmt_shape(input)),
        }
    };
    Ok(match kind {
        LayerKind::Conv2d { out, kernel, stride, padding, dilation, groups, bias } => {
            let (c, h, w) = spatial("conv2d")?;
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
            (vec![*out, oh, ow], params)
        }
        LayerKind::ConvTranspose2d { out, kernel, stride, padding, output_padding, dilation, groups, bias } => {
            let (c, h, w) = spatial("conv_transpose2d")?;
            if *out == 0 || *kernel == 0 || *stride == 0 || *dilation == 0 || *groups == 0 {
                bail!("out, kernel, stride, dilation and groups must be > 0");
            }
            if c % groups != 0 || out % groups != 0 {
                bail!("groups = {groups} must divide the input channels ({c}) and out ({out})");
            }
            if output_padding >= stride.max(dilation) {
                bail!("output_padding ({output_padding}) must be smaller than stride or dilation");
            }
            let g =
                crate::ops::conv::ConvGeom { stride: *stride, padding: *padding, dilation: *dilation, groups: *groups };
            let size = |s| crate::ops::conv::conv_transpose_out(s, *kernel, g, *output_padding).filter(|o| *o > 0);
            let (Some(oh), Some(ow)) = (size(h), size(w)) else {
                bail!("padding {padding} is too large for a {h}x{w} input");
            };
            let mut params = vec![("weight".to_string(), vec![c, out / groups, *kernel, *kernel])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            (vec![*out, oh, ow], params)
        }
        LayerKind::Maxpool { .. } | LayerKind::Avgpool { .. } => {
            let (c, h, w) = spatial(kind.name())?;
            let Some((_, g)) = kind.pool() else { bail!("not a pooling layer") };
            g.validate(h, w).map_err(anyhow::Error::msg)?;
            (vec![c, g.out_size(h), g.out_size(w)], vec![])
        }
        LayerKind::Batchnorm { eps, momentum } => {
            let (c, _, _) = spatial("batchnorm")?;
            if *eps <= 0.0 || eps.is_nan() {
                bail!("eps must be > 0, is {eps}");
            }
            if !(0.0..=1.0).contains(momentum) {
                bail!("momentum must be in [0, 1], is {momentum}");
            }
            (input.to_vec(), vec![("weight".to_string(), vec![c]), ("bias".to_string(), vec![c])])
        }
        LayerKind::GlobalAvgpool {} => {
            let (c, _, _) = spatial("global_avgpool")?;
            (vec![c, 1, 1], vec![])
        }
        LayerKind::Upsample { .. } => {
            let (c, h, w) = spatial("upsample")?;
            match kind.upsample(h, w) {
                Some(Ok((_, (oh, ow)))) => (vec![c, oh, ow], vec![]),
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
            (input.to_vec(), vec![])
        }
        LayerKind::Flatten {} => (vec![input.iter().product()], vec![]),
        LayerKind::Linear { out, bias } => {
            let [inp] = input else {
                bail!("linear expects a flat input, gets {}; add \"flatten\" before it", fmt_shape(input));
            };
            if *out == 0 {
                bail!("out must be > 0");
            }
            let mut params = vec![("weight".to_string(), vec![*out, *inp])];
            if *bias {
                params.push(("bias".into(), vec![*out]));
            }
            (vec![*out], params)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupConfig, Layer};

    fn model(layers: Vec<LayerKind>) -> ModelConfig {
        ModelConfig {
            input: vec![1, 28, 28],
            groups: vec![GroupConfig { name: "features".into(), layers: layers.into_iter().map(Layer).collect() }],
        }
    }

    #[test]
    fn conv_and_pool_shapes() {
        // Hand computation: (28 - 5)/1 + 1 = 24; 24 / 2 = 12; 12*12*6 = 864.
        let layers = plan_layers(&model(vec![
            LayerKind::Conv2d { out: 6, kernel: 5, stride: 1, padding: 0, dilation: 1, groups: 1, bias: true },
            LayerKind::Maxpool { kernel: 2, stride: None, padding: 0, ceil_mode: false },
            LayerKind::Flatten {},
            LayerKind::Linear { out: 10, bias: true },
        ]))
        .unwrap();
        assert_eq!(layers[0].out_shape, vec![6, 24, 24]);
        assert_eq!(layers[0].num_params(), 6 * 25 + 6);
        assert_eq!(layers[1].out_shape, vec![6, 12, 12]);
        assert_eq!(layers[2].out_shape, vec![864]);
        assert_eq!(layers[3].num_params(), 864 * 10 + 10);
        assert_eq!(layers[3].path, "features.3");
    }

    #[test]
    fn mismatches_name_the_layer() {
        let e = plan_layers(&model(vec![LayerKind::Linear { out: 10, bias: true }])).unwrap_err().to_string();
        assert!(e.contains("model.groups[0].layers[0]") && e.contains("flatten"), "{e}");
        let e = plan_layers(&model(vec![LayerKind::Conv2d {
            out: 6,
            kernel: 29,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("features.0 conv2d") && e.contains("larger than the padded input 28x28"), "{e}");
        let conv = LayerKind::Conv2d { out: 6, kernel: 3, stride: 1, padding: 0, dilation: 1, groups: 4, bias: true };
        let e = plan_layers(&model(vec![conv])).unwrap_err().to_string();
        assert!(e.contains("groups = 4 must divide the input channels (1)"), "{e}");
        let pool = LayerKind::Maxpool { kernel: 3, stride: Some(2), padding: 2, ceil_mode: false };
        let e = plan_layers(&model(vec![pool])).unwrap_err().to_string();
        assert!(e.contains("features.0 maxpool") && e.contains("at most half the kernel"), "{e}");
        let bn = LayerKind::Batchnorm { eps: 1e-5, momentum: 1.5 };
        let e = plan_layers(&model(vec![bn])).unwrap_err().to_string();
        assert!(e.contains("features.0 batchnorm") && e.contains("momentum must be in [0, 1], is 1.5"), "{e}");
    }
}
