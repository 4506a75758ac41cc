//! Classification: one class per image, the model's output `[classes]` logits, trained
//! with cross-entropy (optionally label-smoothed), evaluated from the softmax
//! probabilities (with AlexNet's ten-crop averaging as test-time augmentation).

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::config::Tta;
use crate::data::loader::Batch;
use crate::data::tta::ten_crop;
use crate::metrics::EpochStats;
use crate::model::{argmax, Model, Pass};

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
            let n = batch.len();
            let [c, size, _] = input;
            let (_, _, h, w) = xs.dims4()?;
            let crops = ten_crop(&batch.images, n, [c, h, w], size);
            let xs = Tensor::from_vec(crops, (n * 10, c, size, size), device)?; // [10 n, c, s, s]
            let probs = candle_nn::ops::softmax_last_dim(&model.forward(&xs, Pass::eval())?)?;
            let probs = probs.reshape((n, 10, ()))?.mean(1)?; // [n, classes]
            let picked = probs.gather(&ys.unsqueeze(1)?, 1)?; // [n, 1]
            (probs, picked.log()?.neg()?.mean_all()?.to_scalar::<f32>()? as f64)
        }
    };
    let flat: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    stats.update(loss, Some(&flat), &argmax(&probs)?, &batch.labels);
    stats.samples.extend(batch.indices.iter().map(|&i| i as i64));
    Ok(())
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
