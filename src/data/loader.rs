//! Batches: per-epoch shuffling from the experiment seed, `drop_last`, the split's
//! augmentation pipeline, and a background thread that prepares the next batches while the
//! model trains on this one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Result};

use crate::config::AugmentOp;
use crate::data::Split;
use crate::ops::upsample::{resample, UpsampleMode};
use crate::rng::Rng;

/// A batch ready for the model: `images` is `[n, c, h, w]` row-major, as f32.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Index of each sample in its split.
    pub indices: Vec<usize>,
    /// Samples that could not be read and were left out (`on_error = "skip"`).
    pub skipped: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct LoaderSpec {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// `[channels, height, width]` of the stored samples.
    pub shape: [usize; 3],
    /// The same after the augmentation ops: what the model sees.
    pub out_shape: [usize; 3],
    pub augment: Vec<AugmentOp>,
    /// Ready batches kept ahead of the model.
    pub prefetch: usize,
    /// Threads that decode and augment batches.
    pub workers: usize,
    /// Leave out samples that fail to load instead of stopping.
    pub skip_errors: bool,
}

impl LoaderSpec {
    pub fn num_batches(&self, len: usize) -> usize {
        if self.drop_last {
            len / self.batch_size
        } else {
            len.div_ceil(self.batch_size)
        }
    }
}

/// The order in which an epoch visits the split: shuffled from `(seed, epoch)` or in order.
pub fn epoch_order(len: usize, spec: &LoaderSpec, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if spec.shuffle {
        Rng::derive(spec.seed, &["shuffle".into(), epoch.into()]).shuffle(&mut order);
    }
    order
}

/// Turns samples into a batch: bytes to [0, 1] floats, then the augmentation ops in order.
/// Each sample's random draws come from `(seed, epoch, sample index)`, so a batch does not
/// depend on which thread made it.
pub fn make_batch(split: &Split, spec: &LoaderSpec, indices: &[usize], epoch: usize) -> Result<Batch> {
    let mut images = Vec::with_capacity(indices.len() * spec.out_shape.iter().product::<usize>());
    let (mut labels, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for &i in indices {
        match make_sample(split, spec, i, epoch) {
            Ok(img) => {
                images.extend_from_slice(&img);
                labels.push(split.labels[i]);
                kept.push(i);
            }
            Err(e) if spec.skip_errors => {
                tracing::warn!("skipped: {e:#}");
                skipped.push(i);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Batch { images, labels, indices: kept, skipped })
}

/// One sample, from memory or decoded from its file (image folders), through the ops.
fn make_sample(split: &Split, spec: &LoaderSpec, i: usize, epoch: usize) -> Result<Vec<f32>> {
    let [c, h, w] = spec.shape;
    let sample = c * h * w;
    let what = || match split.files.get(i) {
        Some(path) => path.display().to_string(),
        None => format!("sample {i}"),
    };
    let (mut img, mut dims): (Vec<f32>, [usize; 3]) = match split.files.get(i) {
        Some(path) => {
            let (bytes, fh, fw) = super::folder::decode(path, c)?;
            (bytes.iter().map(|&p| p as f32 / 255.0).collect(), [c, fh, fw])
        }
        None => (split.pixels[i * sample..(i + 1) * sample].iter().map(|&p| p as f32 / 255.0).collect(), spec.shape),
    };
    let mut rng = Rng::derive(spec.seed, &["augment".into(), epoch.into(), i.into()]);
    for op in &spec.augment {
        img = apply(op, img, &mut dims, &mut rng).map_err(|e| anyhow::anyhow!("{}: {}: {e}", what(), op.name()))?;
    }
    if dims != spec.out_shape {
        bail!("{}: after the augmentations the image is {dims:?}, the model takes {:?}", what(), spec.out_shape);
    }
    Ok(img)
}

/// Ops that need a minimum size fail on smaller images (only images of varying size reach
/// that: fixed sizes are checked at plan time).
pub fn apply(op: &AugmentOp, mut img: Vec<f32>, dims: &mut [usize; 3], rng: &mut Rng) -> Result<Vec<f32>, String> {
    let [c, h, w] = *dims;
    Ok(match op {
        AugmentOp::Normalize { mean, std } => {
            for (ch, plane) in img.chunks_mut(h * w).enumerate() {
                let (m, s) = (mean[ch] as f32, std[ch] as f32);
                plane.iter_mut().for_each(|x| *x = (*x - m) / s);
            }
            img
        }
        AugmentOp::RandomCrop { size, padding } => {
            let (ph, pw) = (h + 2 * padding, w + 2 * padding);
            if *size > ph || *size > pw {
                return Err(format!("a {size}x{size} crop does not fit the padded {ph}x{pw} image"));
            }
            let top = rng.below((ph - size + 1) as u64) as usize;
            let left = rng.below((pw - size + 1) as u64) as usize;
            let mut out = vec![0f32; c * size * size];
            for ch in 0..c {
                for y in 0..*size {
                    // Row `top + y` of the padded image is row `top + y - padding` of the image.
                    let Some(sy) = (top + y).checked_sub(*padding).filter(|r| *r < h) else { continue };
                    for x in 0..*size {
                        if let Some(sx) = (left + x).checked_sub(*padding).filter(|col| *col < w) {
                            out[(ch * size + y) * size + x] = img[(ch * h + sy) * w + sx];
                        }
                    }
                }
            }
            *dims = [c, *size, *size];
            out
        }
        AugmentOp::Hflip { p } => {
            if rng.next_f64() < *p {
                img.chunks_mut(w).for_each(|row| row.reverse());
            }
            img
        }
        AugmentOp::Vflip { p } => {
            if rng.next_f64() < *p {
                for plane in img.chunks_mut(h * w) {
                    for y in 0..h / 2 {
                        let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                        top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
                    }
                }
            }
            img
        }
        AugmentOp::Resize { size, shorter, mode } => {
            let (oh, ow) = match (size, shorter) {
                (Some([rh, rw]), _) => (*rh, *rw),
                (None, Some(s)) => crate::config::resized_shorter(h, w, *s),
                (None, None) => (h, w),
            };
            let m = if mode == "nearest" { UpsampleMode::Nearest } else { UpsampleMode::Bilinear };
            *dims = [c, oh, ow];
            if oh == 0 || ow == 0 {
                return Err(format!("resizing {h}x{w} gives an empty image"));
            }
            resample(m, &img, c, (h, w), (oh, ow))
        }
        AugmentOp::RandomResizedCrop { size, scale, ratio } => {
            let (top, left, ch, cw) = resized_crop_window(h, w, *scale, *ratio, rng);
            let mut window = Vec::with_capacity(c * ch * cw);
            for plane in img.chunks(h * w) {
                for y in top..top + ch {
                    window.extend_from_slice(&plane[y * w + left..y * w + left + cw]);
                }
            }
            *dims = [c, *size, *size];
            resample(UpsampleMode::Bilinear, &window, c, (ch, cw), (*size, *size))
        }
        AugmentOp::ColorJitter { brightness, contrast, saturation } => {
            let factor = |x: f64, rng: &mut Rng| (1.0 - x).max(0.0) + rng.next_f64() * ((1.0 + x) - (1.0 - x).max(0.0));
            let mut order = [0usize, 1, 2];
            rng.shuffle(&mut order);
            for k in order {
                let amount = [*brightness, *contrast, *saturation][k];
                if amount == 0.0 {
                    continue;
                }
                let f = factor(amount, rng) as f32;
                match k {
                    0 => img.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0)),
                    1 => {
                        // Blend with the mean of the greyscale image.
                        let mean = grey(&img, c, h * w).iter().sum::<f32>() / (h * w) as f32;
                        img.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
                    }
                    _ => {
                        // Blend each pixel with its grey value.
                        let g = grey(&img, c, h * w);
                        for plane in img.chunks_mut(h * w) {
                            for (v, gv) in plane.iter_mut().zip(&g) {
                                *v = (f * *v + (1.0 - f) * gv).clamp(0.0, 1.0);
                            }
                        }
                    }
                }
            }
            img
        }
        AugmentOp::CenterCrop { size } => {
            if *size > h || *size > w {
                return Err(format!("a {size}x{size} crop does not fit the {h}x{w} image"));
            }
            // torchvision: top = round((h - size) / 2), Python's round (half to even).
            let offset = |d: usize| (d as f64 / 2.0).round_ties_even() as usize;
            let (top, left) = (offset(h - size), offset(w - size));
            let mut out = Vec::with_capacity(c * size * size);
            for ch in 0..c {
                for y in top..top + size {
                    out.extend_from_slice(&img[(ch * h + y) * w + left..(ch * h + y) * w + left + size]);
                }
            }
            *dims = [c, *size, *size];
            out
        }
        AugmentOp::PcaColorJitter { std, eigval, eigvec } => {
            let alpha: Vec<f64> = (0..3).map(|_| rng.next_normal() * std).collect();
            for (ch, plane) in img.chunks_mut(h * w).enumerate() {
                let shift: f64 = (0..3).map(|j| eigvec[ch][j] * alpha[j] * eigval[j]).sum();
                plane.iter_mut().for_each(|v| *v += shift as f32);
            }
            img
        }
    })
}

/// ITU-R 601-2 luma, as PIL's and torchvision's `rgb_to_grayscale`; a 1-channel image is
/// its own grey.
fn grey(img: &[f32], c: usize, hw: usize) -> Vec<f32> {
    if c != 3 {
        return img[..hw].to_vec();
    }
    (0..hw).map(|p| 0.299 * img[p] + 0.587 * img[hw + p] + 0.114 * img[2 * hw + p]).collect()
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a window with a random
/// area fraction in `scale` and log-uniform aspect in `ratio`; else the centre window of the
/// whole image with its aspect clamped to `ratio`. Returns `(top, left, height, width)`.
pub fn resized_crop_window(
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * (scale[0] + rng.next_f64() * (scale[1] - scale[0]));
        let aspect = (lr0 + rng.next_f64() * (lr1 - lr0)).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio[0] {
        (((w as f64) / ratio[0]).round() as usize, w)
    } else if in_ratio > ratio[1] {
        (h, ((h as f64) * ratio[1]).round() as usize)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// An epoch's batches, prepared by `workers` background threads: batch `b` is made by
/// worker `b % workers` and read back in order, so the sequence is the same for any number
/// of workers.
pub struct Batches {
    rxs: Vec<Receiver<Result<Batch>>>,
    next: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        let n = self.rxs.len();
        let batch = self.rxs[self.next % n].recv().ok()?;
        self.next += 1;
        Some(batch)
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Dropping the receivers ends each worker at its next send.
        self.rxs.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

pub fn batches(split: Arc<Split>, spec: &LoaderSpec, epoch: usize) -> Batches {
    let n_workers = spec.workers.max(1);
    let order = Arc::new(epoch_order(split.len, spec, epoch));
    let total = spec.num_batches(split.len);
    let mut rxs = Vec::with_capacity(n_workers);
    let mut workers = Vec::with_capacity(n_workers);
    // Ready batches in flight across all workers: about `prefetch`.
    let per_worker = spec.prefetch.div_ceil(n_workers).max(1);
    for w in 0..n_workers {
        let (tx, rx) = sync_channel(per_worker);
        let (split, spec, order) = (split.clone(), spec.clone(), order.clone());
        workers.push(std::thread::spawn(move || {
            for b in (w..total).step_by(n_workers) {
                let end = ((b + 1) * spec.batch_size).min(order.len());
                let batch = make_batch(&split, &spec, &order[b * spec.batch_size..end], epoch);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        }));
        rxs.push(rx);
    }
    Batches { rxs, next: 0, workers }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Split {
        Split {
            pixels: (0..n * 4).map(|i| (i % 256) as u8).collect(),
            labels: (0..n as u32).collect(),
            len: n,
            ..Default::default()
        }
    }

    fn spec(bs: usize, shuffle: bool, drop_last: bool) -> LoaderSpec {
        LoaderSpec {
            batch_size: bs,
            shuffle,
            drop_last,
            seed: 5,
            shape: [1, 2, 2],
            out_shape: [1, 2, 2],
            augment: vec![],
            prefetch: 2,
            workers: 1,
            skip_errors: false,
        }
    }

    #[test]
    fn batch_counts_and_drop_last() {
        let s = Arc::new(split(10));
        let sizes: Vec<usize> = batches(s.clone(), &spec(4, false, false), 0).map(|b| b.unwrap().len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let sizes: Vec<usize> = batches(s, &spec(4, false, true), 0).map(|b| b.unwrap().len()).collect();
        assert_eq!(sizes, vec![4, 4]);
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_only() {
        let s = Arc::new(split(50));
        let labels = |epoch| -> Vec<u32> {
            batches(s.clone(), &spec(7, true, false), epoch).flat_map(|b| b.unwrap().labels).collect()
        };
        let (e0, e0_again, e1) = (labels(0), labels(0), labels(1));
        assert_eq!(e0, e0_again);
        assert_ne!(e0, e1);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
    }

    #[test]
    fn crop_and_flip_by_hand() {
        // A 1x2x3 image [[1,2,3],[4,5,6]]; hflip with p = 1 gives [[3,2,1],[6,5,4]].
        let img: Vec<f32> = vec![1., 2., 3., 4., 5., 6.];
        let mut rng = Rng::new(0);
        let mut dims = [1, 2, 3];
        let out = apply(&AugmentOp::Hflip { p: 1.0 }, img.clone(), &mut dims, &mut rng).unwrap();
        assert_eq!(out, vec![3., 2., 1., 6., 5., 4.]);
        assert_eq!(apply(&AugmentOp::Hflip { p: 0.0 }, img.clone(), &mut dims, &mut rng).unwrap(), img);
        // random_crop size 2, padding 1: the padded image is 4x5; every window is one of
        // (top 0..=2) x (left 0..=3); each must equal that window of the padded image.
        let padded = |y: usize, x: usize| -> f32 {
            if (1..=2).contains(&y) && (1..=3).contains(&x) {
                img[(y - 1) * 3 + (x - 1)]
            } else {
                0.0
            }
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut dims = [1, 2, 3];
            let out = apply(&AugmentOp::RandomCrop { size: 2, padding: 1 }, img.clone(), &mut dims, &mut rng).unwrap();
            assert_eq!(dims, [1, 2, 2]);
            let window = (0..3)
                .flat_map(|t| (0..4).map(move |l| (t, l)))
                .find(|&(t, l)| (0..2).all(|y| (0..2).all(|x| out[y * 2 + x] == padded(t + y, l + x))));
            seen.insert(window.expect("the crop is a window of the padded image"));
        }
        assert!(seen.len() >= 10, "200 seeds reach most of the 12 windows: {seen:?}");
    }

    #[test]
    fn vflip_center_crop_and_pca_by_hand() {
        // 1x3x2 [[1,2],[3,4],[5,6]] flipped top-bottom: [[5,6],[3,4],[1,2]].
        let mut rng = Rng::new(0);
        let out = apply(&AugmentOp::Vflip { p: 1.0 }, vec![1., 2., 3., 4., 5., 6.], &mut [1, 3, 2], &mut rng).unwrap();
        assert_eq!(out, vec![5., 6., 3., 4., 1., 2.]);
        // center_crop 2 of a 5x5 ramp: (5 - 2) / 2 = 1.5 rounds to 2 (half to even, as
        // torchvision): rows 2..4, columns 2..4.
        let img: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let mut dims = [1, 5, 5];
        let out = apply(&AugmentOp::CenterCrop { size: 2 }, img, &mut dims, &mut rng).unwrap();
        assert_eq!((out, dims), (vec![12., 13., 17., 18.], [1, 2, 2]));
        // PCA jitter: the shift of channel c is sum_j eigvec[c][j] * alpha_j * eigval[j]
        // with alpha_j the stream's first three normal draws times std (hand formula).
        let (std, eigval) = (0.1, [0.2175, 0.0188, 0.0045]);
        let eigvec = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]];
        let mut draws = Rng::new(5);
        let alpha: Vec<f64> = (0..3).map(|_| draws.next_normal() * std).collect();
        let out = apply(
            &AugmentOp::PcaColorJitter { std, eigval, eigvec },
            vec![0.5; 3 * 4],
            &mut [3, 2, 2],
            &mut Rng::new(5),
        )
        .unwrap();
        for ch in 0..3 {
            let shift: f64 = (0..3).map(|j| eigvec[ch][j] * alpha[j] * eigval[j]).sum();
            for v in &out[ch * 4..(ch + 1) * 4] {
                assert!((*v as f64 - (0.5 + shift)).abs() < 1e-6);
            }
            assert!(shift != 0.0);
        }
    }

    #[test]
    fn resize_by_hand() {
        // Bilinear [1, 2] to width 4 = [1, 1.25, 1.75, 2] (F.interpolate, align_corners=False).
        let mut dims = [1, 1, 2];
        let op = AugmentOp::Resize { size: Some([1, 4]), shorter: None, mode: "bilinear".into() };
        let out = apply(&op, vec![1., 2.], &mut dims, &mut Rng::new(0)).unwrap();
        assert_eq!((out, dims), (vec![1.0, 1.25, 1.75, 2.0], [1, 1, 4]));
        // Shorter side 2 of a 4x6 image: 2 x floor(2 * 6 / 4) = 2x3 (torchvision's rule);
        // nearest picks rows 0, 2 and columns 0, 2, 4.
        let img: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut dims = [1, 4, 6];
        let op = AugmentOp::Resize { size: None, shorter: Some(2), mode: "nearest".into() };
        let out = apply(&op, img, &mut dims, &mut Rng::new(0)).unwrap();
        assert_eq!((out, dims), (vec![0., 2., 4., 12., 14., 16.], [1, 2, 3]));
    }

    #[test]
    fn random_resized_crop_windows() {
        // Every window respects the bounds, the area fraction and the aspect range.
        for seed in 0..200 {
            let (t, l, ch, cw) = resized_crop_window(40, 60, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut Rng::new(seed));
            assert!(t + ch <= 40 && l + cw <= 60 && ch > 0 && cw > 0);
            let frac = (ch * cw) as f64 / 2400.0;
            assert!((0.06..=1.0).contains(&frac), "{frac}");
        }
        // Impossible aspect ranges fall back to torchvision's centre window: a 10x100 image
        // with ratio <= 2 gives height 10, width round(10 * 2) = 20, left (100 - 20) / 2.
        let win = resized_crop_window(10, 100, [0.9, 1.0], [1.0, 2.0], &mut Rng::new(1));
        assert_eq!(win, (0, 40, 10, 20));
        let mut dims = [1, 10, 100];
        let op = AugmentOp::RandomResizedCrop { size: 8, scale: [0.9, 1.0], ratio: [1.0, 2.0] };
        let out = apply(&op, vec![0.5; 1000], &mut dims, &mut Rng::new(1)).unwrap();
        assert_eq!((out.len(), dims), (64, [1, 8, 8]));
        assert!(out.iter().all(|v| (*v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn color_jitter_by_hand() {
        // Brightness only: the factor is 1 - b + u * 2b for the stream's draw u after the
        // order shuffle; pixels multiply by it (then clamp).
        let b = 0.4;
        let mut draws = Rng::new(9);
        draws.shuffle(&mut [0usize, 1, 2]);
        let f = (1.0 - b + draws.next_f64() * 2.0 * b) as f32;
        let op = AugmentOp::ColorJitter { brightness: b, contrast: 0.0, saturation: 0.0 };
        let out = apply(&op, vec![0.1, 0.5, 0.9], &mut [1, 1, 3], &mut Rng::new(9)).unwrap();
        for (o, x) in out.iter().zip([0.1f32, 0.5, 0.9]) {
            assert!((o - (x * f).clamp(0.0, 1.0)).abs() < 1e-6, "{out:?} {f}");
        }
        // Saturation 0 factor leaves an image; a grey image is unchanged by saturation and
        // contrast whatever the factor (grey = R = G = B, its mean blend is itself when flat).
        let op = AugmentOp::ColorJitter { brightness: 0.0, contrast: 0.9, saturation: 0.9 };
        let out = apply(&op, vec![0.3; 12], &mut [3, 2, 2], &mut Rng::new(2)).unwrap();
        assert!(out.iter().all(|v| (*v - 0.3).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn augmented_batches_do_not_depend_on_batching() {
        // The same sample gets the same crop whatever batch it lands in.
        let s = Arc::new(Split {
            pixels: (0..40 * 16).map(|i| (i % 256) as u8).collect(),
            labels: vec![0; 40],
            len: 40,
            ..Default::default()
        });
        let mut sp = spec(4, false, false);
        sp.shape = [1, 4, 4];
        sp.out_shape = [1, 3, 3];
        sp.augment = vec![AugmentOp::RandomCrop { size: 3, padding: 1 }, AugmentOp::Hflip { p: 0.5 }];
        let a: Vec<f32> = batches(s.clone(), &sp, 2).flat_map(|b| b.unwrap().images).collect();
        sp.batch_size = 7;
        let b: Vec<f32> = batches(s.clone(), &sp, 2).flat_map(|b| b.unwrap().images).collect();
        assert_eq!(a, b);
        // And whatever the number of workers.
        for workers in [2, 3, 4] {
            sp.workers = workers;
            let c: Vec<f32> = batches(s.clone(), &sp, 2).flat_map(|b| b.unwrap().images).collect();
            assert_eq!(a, c, "{workers} workers");
        }
    }

    #[test]
    fn normalize_applies_per_channel() {
        // Hand computation: pixel 51 -> 0.2; (0.2 - 0.1) / 0.5 = 0.2.
        let s = Split { pixels: vec![51, 0, 255, 102], labels: vec![0], len: 1, ..Default::default() };
        let mut sp = spec(1, false, false);
        sp.augment = vec![AugmentOp::Normalize { mean: vec![0.1], std: vec![0.5] }];
        let b = make_batch(&s, &sp, &[0], 0).unwrap();
        let expect = [0.2, -0.2, 1.8, 0.6];
        for (a, e) in b.images.iter().zip(expect) {
            assert!((a - e).abs() < 1e-6, "{:?}", b.images);
        }
    }
}
