//! Semantic segmentation as the FCN paper casts it (Long, Shelhamer and Darrell 2015, and
//! the course): a class per pixel. The model's output is `[classes, H, W]` per image, the
//! input's size (FCN's upsampling brings it back); class 0 is the background. Pixels whose
//! mask value is `ignore_index` (VOC's 255 border) count nowhere: not in the loss, not in
//! the metrics.
//!
//! Loss: per-pixel cross-entropy of the log-softmax over the class axis, weighted by
//! `class_weights` (1 when absent); `mean`: the weighted sum over the batch's labelled
//! pixels divided by the sum of their weights (PyTorch's `cross_entropy(weight=...,
//! ignore_index=255)`); `sum`: divided by the number of images instead (Caffe's
//! `SoftmaxWithLoss` with `normalize: false`, as the FCN authors trained).
//!
//! The metrics are computed at the resolution the model sees (after the test
//! augmentations) from one pixel confusion matrix over the split.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::{Int64Array, StringArray};
use candle_core::Tensor;

use crate::config::{MetricName, Reduction, SegmentConfig};
use crate::data::augment::IGNORE;
use crate::data::{folder, synth, voc, Split};
use crate::metrics::segmentation::SegStats;
use crate::model::Model;
use crate::ops::upsample::UpsampleMode;
use crate::ops::{pixel_ce, upsample};
use crate::plots::MaskedImage;
use crate::runlog::Table;
use crate::task::{segment, PlotSpec, PredictImage, PredictSetup, Prediction};
use crate::{ops, plots, runlog};

/// The segmentation head's settings, resolved by the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmenter {
    pub cfg: SegmentConfig,
    /// Classes, background included.
    pub classes: usize,
}

impl Segmenter {
    /// The batch's loss: `out` is `[n, classes, h, w]` logits, `masks` the `n` masks `[h, w]`
    /// concatenated.
    pub fn loss(&self, out: &Tensor, masks: &[u8]) -> Result<Tensor> {
        let (n, c, h, w) = out.dims4()?;
        if masks.len() != n * h * w {
            bail!("the batch holds {} mask pixels; the model's output has {n} x {h} x {w}", masks.len());
        }
        let ignore = self.cfg.ignore_index;
        let weight = |m: u8| -> f32 {
            if m == ignore || m as usize >= c {
                0.0
            } else {
                self.cfg.class_weights.as_ref().map_or(1.0, |cw| cw[m as usize] as f32)
            }
        };
        let targets: Vec<u32> =
            masks.iter().map(|&m| if m == ignore || m as usize >= c { 0 } else { m as u32 }).collect();
        let weights: Vec<f32> = masks.iter().map(|&m| weight(m)).collect();
        let total_weight: f64 = weights.iter().map(|&x| x as f64).sum();
        let denom = match self.cfg.reduction {
            Reduction::Mean if total_weight > 0.0 => total_weight,
            Reduction::Mean => 1.0, // no labelled pixel: the sum is 0
            Reduction::Sum => n as f64,
        };
        let device = out.device();
        if ops::cpu_kernels_on(device) && out.dtype() == candle_core::DType::F32 {
            // One pass forward and backward (ops::pixel_ce).
            return Ok(pixel_ce::pixel_cross_entropy(out, targets, weights, (1.0 / denom) as f32)?);
        }
        let targets = Tensor::from_vec(targets, (n, 1, h, w), device)?;
        let weights = Tensor::from_vec(weights, (n, 1, h, w), device)?.to_dtype(out.dtype())?;
        let logp = candle_nn::ops::log_softmax(out, 1)?; // [n, c, h, w]
        let picked = logp.gather(&targets, 1)?; // [n, 1, h, w]
        let nll = (picked * weights)?.sum_all()?.neg()?;
        Ok((nll / denom)?)
    }

    /// The predicted class of each pixel, `[n, h, w]` concatenated.
    pub fn decode(out: &Tensor) -> Result<Vec<u8>> {
        let pred = out.argmax(1)?; // [n, h, w] u32
        Ok(pred.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|p| p as u8).collect())
    }

    /// Checks the model's output shape for `input` `[c, h, w]`: `[classes, h, w]`.
    pub fn check_output(&self, out: &[usize], input: [usize; 3]) -> std::result::Result<(), String> {
        let want = [self.classes, input[1], input[2]];
        if out == want {
            return Ok(());
        }
        if out.len() == 3 && out[0] == self.classes {
            return Err(format!(
                "the model ends in shape {out:?}: a segmentation model's output must be the input's size, \
                 {want:?}; upsample by {}x{} more (conv_transpose2d, upsample) or crop to the input",
                input[1] as f64 / out[1] as f64,
                input[2] as f64 / out[2] as f64
            ));
        }
        Err(format!(
            "the model ends in shape {out:?}: segmentation needs [classes, height, width] = {want:?} \
             (one score map per class, background included)"
        ))
    }
}

/// How many of a split's first images keep their predicted masks (for `masks/` and the board).
pub const EXAMPLES: usize = 24;

/// How many of those `masks.png` shows.
const PLOTTED: usize = 6;

/// Adds the batch's predicted masks (`[h, w]` each) to `stats`; `keep_images`: also keep
/// each image's counts for `segmentation.parquet` under the split indices `indices`, and
/// the masks of the split's first images.
pub fn update(
    stats: &mut SegStats,
    pred: &[u8],
    masks: &[u8],
    [h, w]: [usize; 2],
    ignore: u8,
    indices: &[usize],
    keep_images: bool,
) {
    let per = h * w;
    for (k, &i) in indices.iter().enumerate() {
        let (p, m) = (&pred[k * per..(k + 1) * per], &masks[k * per..(k + 1) * per]);
        stats.update_image(i, p, m, ignore, keep_images);
        if keep_images && i < EXAMPLES {
            stats.examples.push((i, p.to_vec(), [h, w]));
        }
    }
}

/// A mask `[h, w]` resized to `[oh, ow]` by nearest neighbour (as the augmentations move it).
pub fn resize_mask(mask: &[u8], [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<u8> {
    if [h, w] == [oh, ow] {
        return mask.to_vec();
    }
    let as_f32: Vec<f32> = mask.iter().map(|&v| v as f32).collect();
    let r = upsample::resample(UpsampleMode::Nearest, &as_f32, 1, (h, w), (oh, ow));
    r.into_iter().map(|v| v as u8).collect()
}

/// `segmentation.parquet`: the test split's per-image pixel counts after the latest epoch,
/// one row per (image, true class, predicted class) pair that occurs: `epoch`, `sample`
/// (index in the split), `image` (its file's stem), `true_class`, `pred_class`, `pixels`.
/// Summing `pixels` over the images gives the split's confusion matrix, and every metric.
pub fn write_counts(
    run_id: &str,
    epoch: usize,
    stats: &SegStats,
    names: &[String],
    images: &[PathBuf],
    path: &Path,
) -> Result<()> {
    let name = |c: usize| plots::class_name(names, c);
    let image = |i: usize| {
        images.get(i).and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    };
    let rows: Vec<(usize, usize, usize, u64)> = stats
        .per_image
        .iter()
        .flat_map(|(i, counts)| counts.iter().map(move |&(t, p, n)| (*i, t as usize, p as usize, n)))
        .collect();
    Table::new(run_id, rows.len())
        .constant_i32("epoch", epoch as i32)
        .col("sample", Int64Array::from_iter_values(rows.iter().map(|r| r.0 as i64)))
        .col("image", StringArray::from_iter_values(rows.iter().map(|r| image(r.0))))
        .col("true_class", StringArray::from_iter_values(rows.iter().map(|r| name(r.1))))
        .col("pred_class", StringArray::from_iter_values(rows.iter().map(|r| name(r.2))))
        .col("pixels", Int64Array::from_iter_values(rows.iter().map(|r| r.3 as i64)))
        .write(path)
}

/// `masks/<image>.png`: the predicted masks of the test split's first `EXAMPLES` images
/// after the latest epoch, at their files' size, in VOC's `SegmentationClass` format (8-bit
/// palette PNG of class indices), each written whole.
pub fn write_masks(stats: &SegStats, split: &Split, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let palette = plots::voc_palette();
    for (i, pred, hw) in &stats.examples {
        let Some(file) = split.files.get(*i) else { continue };
        let Some(stem) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
        let (w, h) = image::image_dimensions(file).with_context(|| format!("cannot read {}", file.display()))?;
        let [h, w] = [h as usize, w as usize];
        let png = synth::encode_mask_png(&resize_mask(pred, *hw, [h, w]), [h, w], &palette)?;
        runlog::atomic_write(&dir.join(format!("{stem}.png")), |tmp| Ok(std::fs::write(tmp, &png)?))?;
    }
    Ok(())
}

/// Segmentation's plots: the pixel confusion matrix, and the first test images beside their
/// true and predicted masks laid over them (`masks.png`), at the files' size.
pub fn plots(dir: &Path, spec: &PlotSpec, s: &SegStats, split: &Split) -> Result<()> {
    if spec.wants(MetricName::ConfusionMatrix) {
        plots::confusion(&dir.join("confusion_matrix.png"), s.confusion(), spec.classes)?;
    }
    let mut rows = Vec::new();
    for (i, pred, hw) in s.examples.iter().take(PLOTTED) {
        let (Some(file), Some(mask)) = (split.files.get(*i), split.masks.get(*i)) else { continue };
        let (bytes, h, w) = folder::decode(file, 3)?;
        let (truth, _) = voc::read_mask(mask, split.mask_classes, IGNORE)?;
        let pred = segment::resize_mask(pred, *hw, [h, w]);
        rows.push(MaskedImage { image: bytes, truth, pred, size: [h, w] });
    }
    plots::masks_grid(&dir.join("masks.png"), &rows, spec.classes)
}

/// Each pixel's class for one image, at the image's own size, and the classes' shares.
pub fn predict(model: &Model, seg: &Segmenter, setup: &PredictSetup, image: PredictImage) -> Result<Prediction> {
    let (dims, size) = (image.dims, image.size);
    let y = image.forward(model, setup.input)?;
    let mask = resize_mask(&Segmenter::decode(&y)?, [dims[1], dims[2]], size);
    let mut counts = vec![0usize; seg.classes.max(1)];
    for &m in &mask {
        if let Some(n) = counts.get_mut(m as usize) {
            *n += 1;
        }
    }
    let mut shares: Vec<(usize, f64)> =
        counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, &n)| (c, n as f64 / mask.len() as f64)).collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Prediction::Mask { mask, size, shares })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    fn seg(reduction: Reduction, weights: Option<Vec<f64>>) -> Segmenter {
        Segmenter { cfg: SegmentConfig { ignore_index: 255, reduction, class_weights: weights }, classes: 3 }
    }

    /// By hand: pixel (0,0) has logits [1, .5, -1] and class 0, so its loss is
    /// ln(e + e^.5 + e^-1) - 1; pixel (0,1) [2, 0, 1], class 2; pixel (1,1) [-1, 1, 3], class 1;
    /// (1,0) is void. PyTorch 1.13 agrees:
    /// ```python
    /// x = torch.tensor([[[[1., 2], [0, -1]], [[0.5, 0], [2, 1]], [[-1, 1], [0, 3]]]])  # [1, 3, 2, 2]
    /// y = torch.tensor([[[0, 2], [255, 1]]])
    /// F.cross_entropy(x, y, ignore_index=255)                                     # 1.3684982
    /// F.cross_entropy(x, y, ignore_index=255, reduction="sum")                    # 4.1054945
    /// F.cross_entropy(x, y, ignore_index=255, weight=torch.tensor([1., 2, 3]))    # 1.5106064
    /// ```
    #[test]
    fn cross_entropy_ignores_void_and_weighs_classes_by_hand() {
        let x = Tensor::new(&[[[[1f32, 2.], [0., -1.]], [[0.5, 0.], [2., 1.]], [[-1., 1.], [0., 3.]]]], &Device::Cpu)
            .unwrap();
        let y = [0u8, 2, 255, 1];
        let lse = |v: [f64; 3]| v.iter().map(|a| a.exp()).sum::<f64>().ln();
        let l0 = lse([1., 0.5, -1.]) - 1.0;
        let l1 = lse([2., 0., 1.]) - 1.0;
        let l3 = lse([-1., 1., 3.]) - 1.0;
        let mean = seg(Reduction::Mean, None).loss(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((mean - (l0 + l1 + l3) / 3.0).abs() < 1e-6, "{mean}");
        assert!((mean - 1.3684982).abs() < 1e-6 && (l0 + l1 + l3 - 4.1054945).abs() < 1e-6);
        let sum = seg(Reduction::Sum, None).loss(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((sum - (l0 + l1 + l3)).abs() < 1e-5, "{sum}");
        let w = seg(Reduction::Mean, Some(vec![1., 2., 3.])).loss(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((w - (l0 + 3.0 * l1 + 2.0 * l3) / 6.0).abs() < 1e-6 && (w - 1.5106064).abs() < 1e-6, "{w}");
        // All void: no labelled pixel, loss 0 (not NaN).
        let none = seg(Reduction::Mean, None).loss(&x, &[255; 4]).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(none, 0.0);
    }

    /// The fused CPU op (f32) against candle's generic path (f64, the same formula through
    /// log_softmax and gather) on random logits: loss and gradient.
    #[test]
    fn fused_loss_and_gradient_equal_the_generic_path() {
        let (n, c, h, w) = (2, 5, 3, 4);
        let mut r = Rng::new(3);
        let x: Vec<f32> = (0..n * c * h * w).map(|_| (r.next_f64() * 6.0 - 3.0) as f32).collect();
        let masks: Vec<u8> = (0..n * h * w).map(|p| if p % 7 == 3 { 255 } else { (p % c) as u8 }).collect();
        let seg = Segmenter {
            cfg: SegmentConfig {
                ignore_index: 255,
                reduction: Reduction::Mean,
                class_weights: Some(vec![1., 2., 0.5, 1., 3.]),
            },
            classes: c,
        };
        let grad = |dtype: candle_core::DType| {
            let v = candle_core::Var::from_tensor(
                &Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let loss = seg.loss(v.as_tensor(), &masks).unwrap();
            let g = loss.backward().unwrap().get(v.as_tensor()).unwrap().to_dtype(candle_core::DType::F64).unwrap();
            (
                loss.to_dtype(candle_core::DType::F64).unwrap().to_scalar::<f64>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            )
        };
        let (fused, gf) = grad(candle_core::DType::F32);
        let (generic, gg) = grad(candle_core::DType::F64);
        assert!((fused - generic).abs() < 1e-5, "{fused} vs {generic}");
        for (a, b) in gf.iter().zip(&gg) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Void pixels get no gradient.
        assert!((0..c).all(|k| gf[k * h * w + 3] == 0.0));
    }

    #[test]
    fn the_output_must_be_the_input_size() {
        let s = seg(Reduction::Mean, None);
        assert!(s.check_output(&[3, 32, 32], [3, 32, 32]).is_ok());
        let e = s.check_output(&[3, 4, 4], [3, 32, 32]).unwrap_err();
        assert!(e.contains("upsample by 8x8 more"), "{e}");
        let e = s.check_output(&[10], [3, 32, 32]).unwrap_err();
        assert!(e.contains("[3, 32, 32]"), "{e}");
    }
}
