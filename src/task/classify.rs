//! Classification: one class per image, the model's output `[classes]` logits, trained
//! with cross-entropy (optionally label-smoothed), evaluated from the softmax
//! probabilities (with AlexNet's ten-crop averaging as test-time augmentation).

use std::path::Path;

use anyhow::Result;
use arrow_array::{Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray};
use candle_core::{Device, Tensor, D};

use crate::config::{MetricName, Tta};
use crate::data::loader::Batch;
use crate::data::tta::ten_crop;
use crate::metrics::{EpochStats, RocCurve};
use crate::model::{argmax, Model, Pass};
use crate::plots;
use crate::runlog::Table;
use crate::task::{PlotSpec, PredictImage, PredictSetup, Prediction};

/// Cross-entropy, with PyTorch's label smoothing `e`: `(1 - e) * nll + e * mean_c(-log p_c)`.
pub fn loss(logits: &Tensor, ys: &Tensor, smoothing: f64) -> Result<Tensor> {
    if smoothing == 0.0 {
        return Ok(candle_nn::loss::cross_entropy(logits, ys)?);
    }
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let nll = logp.gather(&ys.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    let uniform = logp.mean(candle_core::D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// The batch's labels as a `[b]` tensor.
pub fn labels(batch: &Batch, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(&batch.labels, batch.len(), device)?)
}

/// One evaluation batch into `stats`: the loss and the class probabilities, of one forward
/// pass or (ten-crop TTA) the mean of the ten crops' softmax outputs, the loss then being
/// the mean of `-ln p[label]` under those probabilities.
pub fn eval_batch(
    model: &Model,
    batch: &Batch,
    xs: Tensor,
    tta: Tta,
    input: [usize; 3],
    device: &Device,
    stats: &mut EpochStats,
) -> Result<()> {
    let ys = labels(batch, device)?; // [n]
    let (probs, loss) = match tta {
        Tta::None => {
            let logits = model.forward(&xs, Pass::eval())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?.to_scalar::<f32>()? as f64;
            (candle_nn::ops::softmax_last_dim(&logits)?, loss)
        }
        Tta::TenCrop => {
            let (n, c, h, w) = xs.dims4()?;
            let probs = ten_crop_probs(model, &batch.images, n, [c, h, w], input[1], device)?;
            let loss = averaged_loss(&probs, &ys)?;
            (probs, loss)
        }
    };
    let flat: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    stats.update(loss, Some(&flat), &argmax(&probs)?, &batch.labels);
    stats.samples.extend(batch.indices.iter().map(|&i| i as i64));
    Ok(())
}

/// The loss under averaged probabilities `[n, classes]`: the mean of `-ln p[label]`.
pub fn averaged_loss(probs: &Tensor, labels: &Tensor) -> Result<f64> {
    let picked = probs.gather(&labels.unsqueeze(1)?, 1)?; // [n, 1]
    Ok(picked.log()?.neg()?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// AlexNet's test-time averaging: the mean softmax probabilities `[n, classes]` of the
/// ten `size x size` crops (corners, centre, and their mirrors) of `n` images `dims` large.
pub fn ten_crop_probs(
    model: &Model,
    images: &[f32],
    n: usize,
    dims: [usize; 3],
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    let crops = ten_crop(images, n, dims, size);
    let xs = Tensor::from_vec(crops, (n * 10, dims[0], size, size), device)?; // [10 n, c, s, s]
    let probs = candle_nn::ops::softmax_last_dim(&model.forward(&xs, Pass::eval())?)?;
    Ok(probs.reshape((n, 10, ()))?.mean(1)?) // [n, classes]
}

/// `predictions.parquet`: the test split's samples after the latest epoch: `sample`
/// (index in the split), `label`, `pred`, `scores` (class probabilities).
pub fn write_predictions(run_id: &str, stats: &EpochStats, path: &Path) -> Result<()> {
    let n = stats.labels.len();
    let per = if stats.has_probs() { stats.classes() } else { 0 };
    let item = std::sync::Arc::new(arrow_schema::Field::new("item", arrow_schema::DataType::Float32, true));
    let offsets = arrow_buffer::OffsetBuffer::<i32>::from_lengths(std::iter::repeat_n(per, n));
    let values = std::sync::Arc::new(Float32Array::from(stats.probs.clone()));
    let scores = ListArray::try_new(item, offsets, values, None)?;
    let samples: Vec<i64> = if stats.samples.len() == n { stats.samples.clone() } else { (0..n as i64).collect() };
    Table::new(run_id, n)
        .col("sample", Int64Array::from(samples))
        .col("label", Int32Array::from_iter_values(stats.labels.iter().map(|&l| l as i32)))
        .col("pred", Int32Array::from_iter_values(stats.preds.iter().map(|&p| p as i32)))
        .col("scores", scores)
        .write(path)
}

/// `confusion_matrix_<split>.parquet` after the latest epoch: one row per (true, predicted) class.
pub fn write_confusion(
    run_id: &str,
    epoch: usize,
    split: &str,
    m: &[Vec<u64>],
    names: &[String],
    path: &Path,
) -> Result<()> {
    let name = |c: usize| plots::class_name(names, c);
    let (mut t, mut p, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in m.iter().enumerate() {
        for (j, count) in row.iter().enumerate() {
            t.push(name(i));
            p.push(name(j));
            n.push(*count as i64);
        }
    }
    Table::new(run_id, n.len())
        .constant_i32("epoch", epoch as i32)
        .constant_str("split", split)
        .col("true_class", StringArray::from(t))
        .col("pred_class", StringArray::from(p))
        .col("count", Int64Array::from(n))
        .write(path)
}

/// `roc_<split>.parquet` after the latest epoch: per class (one vs rest) its curve.
pub fn write_roc(run_id: &str, epoch: usize, split: &str, curves: &[RocCurve], path: &Path) -> Result<()> {
    let (mut class, mut thr, mut fpr, mut tpr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (c, points) in curves {
        for (t, f, p) in points {
            class.push(c.clone());
            thr.push(*t);
            fpr.push(*f);
            tpr.push(*p);
        }
    }
    Table::new(run_id, class.len())
        .constant_i32("epoch", epoch as i32)
        .constant_str("split", split)
        .col("class", StringArray::from(class))
        .col("threshold", Float64Array::from(thr))
        .col("fpr", Float64Array::from(fpr))
        .col("tpr", Float64Array::from(tpr))
        .write(path)
}

/// Classification's plots: the ROC curves and the confusion matrix, where the test metrics
/// ask for them.
pub fn plots(dir: &Path, spec: &PlotSpec, s: &EpochStats) -> Result<()> {
    if spec.wants(MetricName::Roc) {
        plots::roc(&dir.join("roc.png"), &s.roc_curves(spec.binary, spec.classes))?;
    }
    if spec.wants(MetricName::ConfusionMatrix) {
        plots::confusion(&dir.join("confusion_matrix.png"), &s.confusion(), spec.classes)?;
    }
    Ok(())
}

/// Every class's score for one image, best first: the logits (averaged over the map of a
/// fully convolutional model on a larger image), or with ten-crop TTA the mean softmax
/// probability of the ten crops.
pub fn predict(model: &Model, setup: &PredictSetup, image: PredictImage) -> Result<Prediction> {
    let device = model.device();
    let (input, dims) = (setup.input, image.dims);
    let (scores, note): (Vec<f32>, String) = if setup.tta == Tta::TenCrop && dims == setup.test_shape {
        let probs = ten_crop_probs(model, &image.values, 1, dims, input[1], device)?.squeeze(0)?;
        (probs.to_vec1()?, "mean softmax probability of ten crops".into())
    } else {
        let larger = dims[0] == input[0] && dims[1] >= input[1] && dims[2] >= input[2];
        if dims != input && !(model.graph().fully_convolutional && larger) {
            anyhow::bail!(
                "{}: after the test augmentations the image is {dims:?}, the model takes {input:?}; \
                 add a resize and crop to [augment.test] (or make the model fully_convolutional)",
                image.path.display()
            );
        }
        let xs = Tensor::from_vec(image.values, (1, dims[0], dims[1], dims[2]), device)?;
        let y = model.forward(&xs, Pass::eval())?;
        match y.rank() {
            2 => (y.squeeze(0)?.to_vec1()?, "logits".into()),
            4 => {
                let (_, _, mh, mw) = y.dims4()?;
                let mean = y.mean(D::Minus1)?.mean(D::Minus1)?.squeeze(0)?;
                (mean.to_vec1()?, format!("logits, mean over a {mh}x{mw} map"))
            }
            _ => anyhow::bail!("the model's output has shape {:?}, not class scores", y.dims()),
        }
    };
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Prediction::Classes { ranked, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_smoothing_matches_pytorch() {
        // PyTorch 1.13: F.cross_entropy(tensor([[1., 2, 3], [0.5, -1, 2]]), tensor([2, 0]),
        // label_smoothing=0.1) = 1.1244585514068604.
        let logits = Tensor::new(&[[1f32, 2., 3.], [0.5, -1., 2.]], &Device::Cpu).unwrap();
        let ys = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let l = loss(&logits, &ys, 0.1).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - 1.124_458_6).abs() < 1e-6, "{l}");
        // Without smoothing, plain cross-entropy.
        let plain = candle_nn::loss::cross_entropy(&logits, &ys).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(loss(&logits, &ys, 0.0).unwrap().to_scalar::<f32>().unwrap(), plain);
    }
}
