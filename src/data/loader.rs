//! Batches: per-epoch shuffling from the experiment seed, `drop_last`, the split's
//! augmentation pipeline, and a background thread that prepares the next batches while the
//! model trains on this one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::AugmentOp;
use crate::data::Split;
use crate::rng::Rng;

/// A batch ready for the model: `images` is `[n, c, h, w]` row-major, as f32.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Index of each sample in its split.
    pub indices: Vec<usize>,
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
pub fn make_batch(split: &Split, spec: &LoaderSpec, indices: &[usize], epoch: usize) -> Batch {
    let [c, h, w] = spec.shape;
    let sample = c * h * w;
    let mut images = Vec::with_capacity(indices.len() * spec.out_shape.iter().product::<usize>());
    for &i in indices {
        let mut img: Vec<f32> = split.pixels[i * sample..(i + 1) * sample].iter().map(|&p| p as f32 / 255.0).collect();
        let mut dims = spec.shape;
        let mut rng = Rng::derive(spec.seed, &["augment".into(), epoch.into(), i.into()]);
        for op in &spec.augment {
            img = apply(op, img, &mut dims, &mut rng);
        }
        images.extend_from_slice(&img);
    }
    Batch { images, labels: indices.iter().map(|&i| split.labels[i]).collect(), indices: indices.to_vec() }
}

/// One op on one `[c, h, w]` image; `dims` is updated to the output's.
pub fn apply(op: &AugmentOp, mut img: Vec<f32>, dims: &mut [usize; 3], rng: &mut Rng) -> Vec<f32> {
    let [c, h, w] = *dims;
    match op {
        AugmentOp::Normalize { mean, std } => {
            for (ch, plane) in img.chunks_mut(h * w).enumerate() {
                let (m, s) = (mean[ch] as f32, std[ch] as f32);
                plane.iter_mut().for_each(|x| *x = (*x - m) / s);
            }
            img
        }
        AugmentOp::RandomCrop { size, padding } => {
            let (ph, pw) = (h + 2 * padding, w + 2 * padding);
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
    }
}

/// An epoch's batches, prepared on a background thread.
pub struct Batches {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Dropping the receiver ends the worker at its next send.
        let (_tx, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

pub fn batches(split: Arc<Split>, spec: &LoaderSpec, epoch: usize) -> Batches {
    let spec = spec.clone();
    let (tx, rx) = sync_channel(spec.prefetch.max(1));
    let worker = std::thread::spawn(move || {
        let order = epoch_order(split.len, &spec, epoch);
        for b in 0..spec.num_batches(split.len) {
            let end = ((b + 1) * spec.batch_size).min(order.len());
            let batch = make_batch(&split, &spec, &order[b * spec.batch_size..end], epoch);
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    Batches { rx, worker: Some(worker) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Split {
        Split { pixels: (0..n * 4).map(|i| (i % 256) as u8).collect(), labels: (0..n as u32).collect(), len: n }
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
        }
    }

    #[test]
    fn batch_counts_and_drop_last() {
        let s = Arc::new(split(10));
        let sizes: Vec<usize> = batches(s.clone(), &spec(4, false, false), 0).map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let sizes: Vec<usize> = batches(s, &spec(4, false, true), 0).map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4]);
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_only() {
        let s = Arc::new(split(50));
        let labels =
            |epoch| -> Vec<u32> { batches(s.clone(), &spec(7, true, false), epoch).flat_map(|b| b.labels).collect() };
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
        let out = apply(&AugmentOp::Hflip { p: 1.0 }, img.clone(), &mut dims, &mut rng);
        assert_eq!(out, vec![3., 2., 1., 6., 5., 4.]);
        assert_eq!(apply(&AugmentOp::Hflip { p: 0.0 }, img.clone(), &mut dims, &mut rng), img);
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
            let out = apply(&AugmentOp::RandomCrop { size: 2, padding: 1 }, img.clone(), &mut dims, &mut rng);
            assert_eq!(dims, [1, 2, 2]);
            let window = (0..3)
                .flat_map(|t| (0..4).map(move |l| (t, l)))
                .find(|&(t, l)| (0..2).all(|y| (0..2).all(|x| out[y * 2 + x] == padded(t + y, l + x))));
            seen.insert(window.expect("the crop is a window of the padded image"));
        }
        assert!(seen.len() >= 10, "200 seeds reach most of the 12 windows: {seen:?}");
    }

    #[test]
    fn augmented_batches_do_not_depend_on_batching() {
        // The same sample gets the same crop whatever batch it lands in.
        let s =
            Arc::new(Split { pixels: (0..40 * 16).map(|i| (i % 256) as u8).collect(), labels: vec![0; 40], len: 40 });
        let mut sp = spec(4, false, false);
        sp.shape = [1, 4, 4];
        sp.out_shape = [1, 3, 3];
        sp.augment = vec![AugmentOp::RandomCrop { size: 3, padding: 1 }, AugmentOp::Hflip { p: 0.5 }];
        let a: Vec<f32> = batches(s.clone(), &sp, 2).flat_map(|b| b.images).collect();
        sp.batch_size = 7;
        let b: Vec<f32> = batches(s, &sp, 2).flat_map(|b| b.images).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn normalize_applies_per_channel() {
        // Hand computation: pixel 51 -> 0.2; (0.2 - 0.1) / 0.5 = 0.2.
        let s = Split { pixels: vec![51, 0, 255, 102], labels: vec![0], len: 1 };
        let mut sp = spec(1, false, false);
        sp.augment = vec![AugmentOp::Normalize { mean: vec![0.1], std: vec![0.5] }];
        let b = make_batch(&s, &sp, &[0], 0);
        let expect = [0.2, -0.2, 1.8, 0.6];
        for (a, e) in b.images.iter().zip(expect) {
            assert!((a - e).abs() < 1e-6, "{:?}", b.images);
        }
    }
}
