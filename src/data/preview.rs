//! `runner data preview`: a PNG grid of samples as the model sees them (after the split's
//! augmentations), each with its class index under it (the index -> name legend is
//! printed), or, for a dataset with boxes, each box drawn with its class name, or, with
//! class masks, the mask laid over the image in VOC's colours (void in white).

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::AugmentOp;
use crate::data::loader::{epoch_order, make_batch, LoaderSpec};
use crate::data::Split;
use crate::plots;
use crate::plots::Labelled;

/// 3x5 bitmaps of the digits 0-9, one row per `u8`, high bits left.
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

const PAD: usize = 2;
const LABEL: usize = 8;

/// Writes the first `n` samples of `split` in epoch-0 order as a grid to `out`; returns the
/// classes shown (a label per sample, or the class of every box drawn).
pub fn write_grid(split: &Split, spec: &LoaderSpec, n: usize, classes: &[String], out: &Path) -> Result<Vec<u32>> {
    let order = epoch_order(split.len, spec, 0);
    let picked: Vec<usize> = order.into_iter().take(n).collect();
    let batch = make_batch(split, spec, &picked, 0)?;
    let [c, h, w] = spec.out_shape;
    let count = batch.len();
    let cols = (count as f64).sqrt().ceil().max(1.0) as usize;
    let rows = count.div_ceil(cols);
    let (cell_w, cell_h) = (w + PAD, h + LABEL + PAD);
    let mut img = image::RgbImage::new((cols * cell_w + PAD) as u32, (rows * cell_h + PAD) as u32);
    let mut boxes = Vec::new();
    // Undo a final normalize so that colours look as in the file.
    let unnormalize = match spec.augment.last() {
        Some(AugmentOp::Normalize { mean, std }) => Some((mean.clone(), std.clone())),
        _ => None,
    };
    let palette = plots::voc_palette();
    for (k, sample) in batch.images.chunks(c * h * w).enumerate() {
        let (x0, y0) = (PAD + (k % cols) * cell_w, PAD + (k / cols) * cell_h);
        let mask = batch.masks.get(k * h * w..(k + 1) * h * w);
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let mut v = sample[(ch.min(c - 1) * h + y) * w + x] as f64;
                    if let Some((m, s)) = &unnormalize {
                        v = v * s[ch.min(c - 1)] + m[ch.min(c - 1)];
                    }
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                };
                let mut rgb = [px(0), px(1), px(2)];
                match mask.map(|m| m[y * w + x]) {
                    None | Some(0) => {}
                    Some(m) => {
                        for (ch, v) in rgb.iter_mut().enumerate() {
                            let colour = if m == 255 { 255 } else { palette[3 * m as usize + ch] };
                            *v = ((*v as u16 + colour as u16) / 2) as u8;
                        }
                    }
                }
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
            }
        }
        if let Some(&label) = batch.labels.get(k) {
            draw_number(&mut img, label, x0, y0 + h + 2);
        }
        for o in batch.objects.get(k).map(Vec::as_slice).unwrap_or_default() {
            let [bx0, by0, bx1, by1] = o.bbox;
            let name = plots::class_name(classes, o.class as usize);
            boxes.push(Labelled {
                text: if o.difficult { format!("{name} (difficult)") } else { name },
                bbox: [bx0 + x0 as f32, by0 + y0 as f32, bx1 + x0 as f32, by1 + y0 as f32],
                colour: o.class as usize,
                truth: false,
            });
        }
    }
    if !batch.masks.is_empty() {
        img.save(out).with_context(|| format!("cannot write {}", out.display()))?;
        let mut shown: Vec<u32> = batch.masks.iter().filter(|&&m| m != 255).map(|&m| m as u32).collect();
        shown.sort_unstable();
        shown.dedup();
        return Ok(shown);
    }
    if batch.objects.is_empty() {
        img.save(out).with_context(|| format!("cannot write {}", out.display()))?;
        return Ok(batch.labels);
    }
    let (gw, gh) = (img.width() as usize, img.height() as usize);
    let mut planar = vec![0u8; 3 * gw * gh];
    for (p, px) in img.pixels().enumerate() {
        for ch in 0..3 {
            planar[ch * gw * gh + p] = px.0[ch];
        }
    }
    plots::boxes_on_image(out, &planar, [gh, gw], &boxes)?;
    Ok(batch.objects.iter().flatten().map(|o| o.class).collect())
}

fn draw_number(img: &mut image::RgbImage, n: u32, x0: usize, y0: usize) {
    for (d, ch) in n.to_string().bytes().enumerate() {
        let glyph = DIGITS[(ch - b'0') as usize];
        for (r, bits) in glyph.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    let (x, y) = ((x0 + d * 4 + col) as u32, (y0 + r) as u32);
                    if x < img.width() && y < img.height() {
                        img.put_pixel(x, y, image::Rgb([255, 255, 0]));
                    }
                }
            }
        }
    }
}
