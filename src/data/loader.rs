//! Batches: per-epoch shuffling from the experiment seed, `drop_last`, the split's
//! augmentation pipeline, and a background thread that prepares the next batches while the
//! model trains on this one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Result};

use super::augment::Targets;
use crate::config::AugmentOp;
use crate::data::augment::IGNORE;
use crate::data::voc::Object;
use crate::data::{augment, Split};
use crate::rng::Rng;

/// A batch ready for the model: `images` is `[n, c, h, w]` row-major, as f32.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub images: Vec<f32>,
    /// Classification: each sample's class.
    pub labels: Vec<u32>,
    /// Detection: each sample's objects, their boxes moved by the augmentations into the
    /// pixels of what the model sees (boxes left empty are dropped).
    pub objects: Vec<Vec<Object>>,
    /// Segmentation: each sample's class mask `[h, w]` after the augmentations (255 where
    /// no label), concatenated.
    pub masks: Vec<u8>,
    /// Each sample's `[height, width]` before the augmentations (its file's size).
    pub sizes: Vec<[usize; 2]>,
    /// Index of each sample in its split.
    pub indices: Vec<usize>,
    /// Samples that could not be read and were left out (`on_error = "skip"`).
    pub skipped: Vec<usize>,
}

impl Batch {
    /// The batch without its images and masks: what its statistics need after the step.
    pub fn without_pixels(&self) -> Batch {
        Batch {
            images: Vec::new(),
            masks: Vec::new(),
            labels: self.labels.clone(),
            objects: self.objects.clone(),
            sizes: self.sizes.clone(),
            indices: self.indices.clone(),
            skipped: self.skipped.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
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
    let (mut objects, mut sizes, mut masks) = (Vec::new(), Vec::new(), Vec::new());
    for &i in indices {
        match make_sample(split, spec, i, epoch) {
            Ok(sample) => {
                images.extend_from_slice(&sample.image);
                if let Some(&l) = split.labels.get(i) {
                    labels.push(l);
                }
                if let Some(objs) = split.objects.get(i) {
                    let moved = sample.targets.ids.iter().zip(&sample.targets.boxes);
                    objects.push(moved.map(|(&k, b)| Object { bbox: *b, ..objs[k] }).collect());
                }
                if let Some(m) = sample.targets.mask {
                    masks.extend_from_slice(&m);
                }
                sizes.push(sample.size);
                kept.push(i);
            }
            Err(e) if spec.skip_errors => {
                tracing::warn!("skipped: {e:#}");
                skipped.push(i);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Batch { images, labels, objects, masks, sizes, indices: kept, skipped })
}

/// A sample after the ops: the image, its boxes, and its size before the ops.
struct Sample {
    image: Vec<f32>,
    targets: Targets,
    size: [usize; 2],
}

/// One sample, from memory or decoded from its file (image folders, VOC), through the ops.
fn make_sample(split: &Split, spec: &LoaderSpec, i: usize, epoch: usize) -> Result<Sample> {
    let [c, h, w] = spec.shape;
    let sample = c * h * w;
    let what = || match split.files.get(i) {
        Some(path) => path.display().to_string(),
        None => format!("sample {i}"),
    };
    let (bytes, mut dims): (std::borrow::Cow<[u8]>, [usize; 3]) = match split.files.get(i) {
        Some(path) => {
            let (bytes, fh, fw) = super::folder::decode(path, c)?;
            (bytes.into(), [c, fh, fw])
        }
        None => (split.pixels[i * sample..(i + 1) * sample].into(), spec.shape),
    };
    let size = [dims[1], dims[2]];
    let mut targets = Targets::default();
    if let Some(objs) = split.objects.get(i) {
        targets.boxes = objs.iter().map(|o| o.bbox).collect();
        targets.ids = (0..objs.len()).collect();
        if let Some(o) = objs.iter().find(|o| o.bbox[2] > size[1] as f32 || o.bbox[3] > size[0] as f32) {
            bail!("{}: box {:?} lies outside the {}x{} image", what(), o.bbox, size[1], size[0]);
        }
    }
    if let Some(path) = split.masks.get(i) {
        let (mask, mask_size) = super::voc::read_mask(path, split.mask_classes, IGNORE)?;
        if mask_size != size {
            bail!(
                "{}: the mask is {}x{} but its image {} is {}x{}",
                path.display(),
                mask_size[1],
                mask_size[0],
                what(),
                size[1],
                size[0]
            );
        }
        targets.mask = Some(mask);
    }
    let mut rng = Rng::derive(spec.seed, &["augment".into(), epoch.into(), i.into()]);
    let img = augment::apply_bytes(&spec.augment, &bytes, &mut targets, &mut dims, &mut rng)
        .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    if dims != spec.out_shape {
        bail!("{}: after the augmentations the image is {dims:?}, the model takes {:?}", what(), spec.out_shape);
    }
    Ok(Sample { image: img, targets, size })
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
        sp.augment = vec![
            AugmentOp::RandomCrop { size: 3, padding: 1, pad_mode: Default::default() },
            AugmentOp::Hflip { p: 0.5 },
        ];
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
