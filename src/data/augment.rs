//! Augmentation ops on one sample: the image `[c, h, w]` and, for detection and
//! segmentation, its targets (boxes and a class mask), moved by the same geometry.
//!
//! Each op draws its randomness from the sample's own stream (see the loader), in the same
//! order with or without targets.

use crate::config;
use crate::config::{AugmentOp, PadMode};
use crate::ops::upsample::{resample, UpsampleMode};
use crate::rng::Rng;

/// The mask value of pixels that carry no label (padding), as VOC's 255.
pub const IGNORE: u8 = 255;

/// What moves with an image: boxes `[x0, y0, x1, y1]` in pixels (x1, y1 exclusive edges)
/// and a class mask `[h, w]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub boxes: Vec<[f32; 4]>,
    /// Which of the sample's objects each box is (kept in step when boxes are dropped).
    pub ids: Vec<usize>,
    pub mask: Option<Vec<u8>>,
}

impl Targets {
    /// Keeps the window `(top, left, ch, cw)` of an `[h, w]` image (which may reach into
    /// padding): boxes shift and are clipped, boxes left empty are dropped; the mask is
    /// cut, with `IGNORE` where the window is padding.
    fn crop(&mut self, [h, w]: [usize; 2], top: isize, left: isize, ch: usize, cw: usize) {
        for b in self.boxes.iter_mut() {
            b[0] = (b[0] - left as f32).clamp(0.0, cw as f32);
            b[2] = (b[2] - left as f32).clamp(0.0, cw as f32);
            b[1] = (b[1] - top as f32).clamp(0.0, ch as f32);
            b[3] = (b[3] - top as f32).clamp(0.0, ch as f32);
        }
        let keep: Vec<bool> = self.boxes.iter().map(|b| b[2] > b[0] && b[3] > b[1]).collect();
        let mut flags = keep.iter();
        self.boxes.retain(|_| flags.next() == Some(&true));
        if self.ids.len() == keep.len() {
            let mut flags = keep.iter();
            self.ids.retain(|_| flags.next() == Some(&true));
        }
        if let Some(m) = &self.mask {
            self.mask = Some(crop(m, [1, h, w], top, left, ch, cw, IGNORE));
        }
    }

    fn hflip(&mut self, w: usize) {
        for b in self.boxes.iter_mut() {
            let (x0, x1) = (w as f32 - b[2], w as f32 - b[0]);
            (b[0], b[2]) = (x0, x1);
        }
        if let Some(m) = &mut self.mask {
            m.chunks_mut(w).for_each(|row| row.reverse());
        }
    }

    fn vflip(&mut self, h: usize, w: usize) {
        for b in self.boxes.iter_mut() {
            let (y0, y1) = (h as f32 - b[3], h as f32 - b[1]);
            (b[1], b[3]) = (y0, y1);
        }
        if let Some(m) = &mut self.mask {
            vflip_plane(m, h, w);
        }
    }

    /// Scales boxes; the mask is resized by nearest neighbour (labels are not blended).
    fn resize(&mut self, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) {
        let (sy, sx) = (oh as f32 / h as f32, ow as f32 / w as f32);
        for b in self.boxes.iter_mut() {
            *b = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
        }
        if let Some(m) = &self.mask {
            let as_f32: Vec<f32> = m.iter().map(|v| *v as f32).collect();
            let r = resample(UpsampleMode::Nearest, &as_f32, 1, (h, w), (oh, ow));
            self.mask = Some(r.into_iter().map(|v| v as u8).collect());
        }
    }
}

/// PIL's bilinear resampling (`Image.resize(..., BILINEAR)`, which torchvision's `Resize`
/// runs): output pixel `i` is centred at `(i + 0.5) * scale` of the input; its triangle
/// filter is stretched to the scale when shrinking, so that it averages every input pixel
/// it covers (no aliasing), and its weights are renormalised over the pixels inside the
/// image. Rows first, then columns, in f32 (PIL rounds to 8 bits between the two passes:
/// the two differ by at most one grey level, a test).
pub fn resample_antialiased(img: &[f32], c: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    /// For each output index, the first input index and the weights from there on.
    fn taps(n: usize, on: usize) -> Vec<(usize, Vec<f32>)> {
        let scale = n as f64 / on as f64;
        let stretch = scale.max(1.0);
        let support = stretch; // the triangle's half-width, 1 input pixel at scale 1
        (0..on)
            .map(|i| {
                let centre = (i as f64 + 0.5) * scale;
                let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((centre + support + 0.5).floor() as usize).min(n);
                let ws: Vec<f64> =
                    (lo..hi).map(|x| (1.0 - ((x as f64 - centre + 0.5) / stretch).abs()).max(0.0)).collect();
                let total: f64 = ws.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                (lo, ws.iter().map(|v| (v / total) as f32).collect())
            })
            .collect()
    }
    let (tx, ty) = (taps(w, ow), taps(h, oh));
    let mut out = vec![0f32; c * oh * ow];
    let mut rows = vec![0f32; h * ow];
    for p in 0..c {
        let src = &img[p * h * w..(p + 1) * h * w];
        // Rows: each output column is a short dot product over a contiguous run of pixels.
        for (row, line) in rows.chunks_exact_mut(ow).zip(src.chunks_exact(w)) {
            for (o, (lo, ws)) in row.iter_mut().zip(&tx) {
                *o = ws.iter().zip(&line[*lo..]).map(|(a, b)| a * b).sum();
            }
        }
        // Columns: each output row is a weighted sum of whole rows (contiguous, vectorised).
        for (dst, (lo, ws)) in out[p * oh * ow..(p + 1) * oh * ow].chunks_exact_mut(ow).zip(&ty) {
            for (k, wt) in ws.iter().enumerate() {
                let line = &rows[(lo + k) * ow..(lo + k + 1) * ow];
                dst.iter_mut().zip(line).for_each(|(d, v)| *d += wt * v);
            }
        }
    }
    out
}

/// PIL's bilinear filter on 8-bit planes, `[c, h, w]` -> `[c, oh, ow]`, as torchvision's
/// `Resize` runs it on a PIL image, by fast_image_resize (SIMD where the CPU has it; integer
/// arithmetic, so the same bytes on every CPU). Its fixed-point weights are not PIL's to
/// the bit: within one grey level of PIL (6% of the bytes off by one on the fixture, a
/// test), as the float path is. The loader takes this path for a first `resize` of decoded
/// images: 1140 images/s against 760 for the float path (500x375 photos, 1 thread).
pub fn resize_u8_pil(
    img: &[u8],
    c: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Result<Vec<u8>, String> {
    use fast_image_resize::{images::TypedImage, images::TypedImageRef, pixels::U8};
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let mut resizer = Resizer::new();
    let mut out = Vec::with_capacity(c * oh * ow);
    for plane in img.chunks_exact(h * w).take(c) {
        let mut dst = TypedImage::<U8>::new(ow as u32, oh as u32);
        let src = TypedImageRef::<U8>::from_buffer(w as u32, h as u32, plane)
            .map_err(|e| format!("resizing {h}x{w} to {oh}x{ow}: {e}"))?;
        resizer.resize_typed(&src, &mut dst, &options).map_err(|e| format!("resizing {h}x{w} to {oh}x{ow}: {e}"))?;
        out.extend(dst.pixels().iter().map(|p| p.0));
    }
    Ok(out)
}

/// A first op that `resize_u8_pil` can run on the decoded bytes: an antialiased bilinear
/// `resize` (the pixels differ from resizing the floats by rounding only: rounded to 8 bits
/// as PIL does). Returns the bytes resized, with `dims` and the targets
/// following, or `None` for any other op.
pub fn resize_decoded(
    op: &AugmentOp,
    img: &[u8],
    t: &mut Targets,
    dims: &mut [usize; 3],
) -> Result<Option<Vec<u8>>, String> {
    let AugmentOp::Resize { size, shorter, mode, antialias: true } = op else { return Ok(None) };
    let [c, h, w] = *dims;
    let (oh, ow) = resize_target(*size, *shorter, (h, w));
    if *mode == UpsampleMode::Nearest || oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Ok(None); // `apply` reports the empty image
    }
    let out = if (oh, ow) == (h, w) { img.to_vec() } else { resize_u8_pil(img, c, (h, w), (oh, ow))? };
    t.resize([h, w], [oh, ow]);
    *dims = [c, oh, ow];
    Ok(Some(out))
}

/// The size `resize` gives an `(h, w)` image: `size`, or the shorter side at `shorter`.
fn resize_target(size: Option<[usize; 2]>, shorter: Option<usize>, (h, w): (usize, usize)) -> (usize, usize) {
    match (size, shorter) {
        (Some([rh, rw]), _) => (rh, rw),
        (None, Some(s)) => config::resized_shorter(h, w, s),
        (None, None) => (h, w),
    }
}

/// An 8-bit image `[c, h, w]` (decoded or from a dataset's records) through `ops`, into
/// floats in [0, 1]: a first antialiased `resize` runs on the bytes (`resize_decoded`, as
/// torchvision's `Resize` on a PIL image), the others on the floats. Errors name the op.
pub fn apply_bytes(
    ops: &[AugmentOp],
    bytes: &[u8],
    t: &mut Targets,
    dims: &mut [usize; 3],
    rng: &mut Rng,
) -> Result<Vec<f32>, String> {
    let resized = match ops.first() {
        Some(op) => resize_decoded(op, bytes, t, dims).map_err(|e| format!("{}: {e}", op.name()))?,
        None => None,
    };
    let rest = if resized.is_some() { &ops[1..] } else { ops };
    let mut img: Vec<f32> = resized.as_deref().unwrap_or(bytes).iter().map(|&p| p as f32 / 255.0).collect();
    for op in rest {
        img = apply_with_targets(op, img, t, dims, rng).map_err(|e| format!("{}: {e}", op.name()))?;
    }
    Ok(img)
}

/// The window `(top, left, ch, cw)` of a `[c, h, w]` image, `fill` outside it.
fn crop<T: Copy>(img: &[T], [c, h, w]: [usize; 3], top: isize, left: isize, ch: usize, cw: usize, fill: T) -> Vec<T> {
    let mut out = vec![fill; c * ch * cw];
    for plane in 0..c {
        for y in 0..ch {
            let sy = top + y as isize;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..cw {
                let sx = left + x as isize;
                if sx >= 0 && sx < w as isize {
                    out[(plane * ch + y) * cw + x] = img[(plane * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    out
}

/// A window that reaches into `edge` or `reflect` padding: each coordinate outside the
/// image maps to the border pixel (edge) or its mirror image without the border (reflect).
fn crop_padded(img: &[f32], [c, h, w]: [usize; 3], top: isize, left: isize, size: usize, mode: PadMode) -> Vec<f32> {
    let map = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let j = match mode {
            PadMode::Reflect if i < 0 => -i,
            PadMode::Reflect if i >= n => 2 * (n - 1) - i,
            _ => i,
        };
        j.clamp(0, n - 1) as usize
    };
    let mut out = Vec::with_capacity(c * size * size);
    for plane in img.chunks(h * w).take(c) {
        for y in 0..size {
            let sy = map(top + y as isize, h);
            out.extend((0..size).map(|x| plane[sy * w + map(left + x as isize, w)]));
        }
    }
    out
}

fn vflip_plane<T>(plane: &mut [T], h: usize, w: usize) {
    for y in 0..h / 2 {
        let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
        top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
    }
}

/// RGB in [0, 1] -> (hue in [0, 6), saturation, value), as Darknet's `rgb_to_hsv`.
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if max <= 0.0 || delta <= 0.0 {
        return (0.0, 0.0, max);
    }
    let hue = if r == max {
        (g - b) / delta
    } else if g == max {
        2.0 + (b - r) / delta
    } else {
        4.0 + (r - g) / delta
    };
    (if hue < 0.0 { hue + 6.0 } else { hue }, delta / max, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    if s == 0.0 {
        return (v, v, v);
    }
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// One op on one image without targets.
pub fn apply(op: &AugmentOp, img: Vec<f32>, dims: &mut [usize; 3], rng: &mut Rng) -> Result<Vec<f32>, String> {
    apply_with_targets(op, img, &mut Targets::default(), dims, rng)
}

/// One op on one `[c, h, w]` image and its targets; `dims` is updated to the output's. The
/// random draws are the same with or without targets. Ops that need a minimum size fail on
/// smaller images (only images of varying size reach that: fixed sizes are checked at plan
/// time).
pub fn apply_with_targets(
    op: &AugmentOp,
    mut img: Vec<f32>,
    t: &mut Targets,
    dims: &mut [usize; 3],
    rng: &mut Rng,
) -> Result<Vec<f32>, String> {
    let [c, h, w] = *dims;
    Ok(match op {
        AugmentOp::Normalize { mean, std } => {
            for (ch, plane) in img.chunks_mut(h * w).enumerate() {
                let (m, s) = (mean[ch] as f32, std[ch] as f32);
                plane.iter_mut().for_each(|x| *x = (*x - m) / s);
            }
            img
        }
        AugmentOp::RandomCrop { size, padding, pad_mode } => {
            let (ph, pw) = (h + 2 * padding, w + 2 * padding);
            if *size > ph || *size > pw {
                return Err(format!("a {size}x{size} crop does not fit the padded {ph}x{pw} image"));
            }
            let top = rng.below((ph - size + 1) as u64) as isize - *padding as isize;
            let left = rng.below((pw - size + 1) as u64) as isize - *padding as isize;
            *dims = [c, *size, *size];
            t.crop([h, w], top, left, *size, *size);
            match pad_mode {
                PadMode::Constant => crop(&img, [c, h, w], top, left, *size, *size, 0.0),
                mode => crop_padded(&img, [c, h, w], top, left, *size, *mode),
            }
        }
        AugmentOp::Hflip { p } => {
            if rng.next_f64() < *p {
                img.chunks_mut(w).for_each(|row| row.reverse());
                t.hflip(w);
            }
            img
        }
        AugmentOp::Vflip { p } => {
            if rng.next_f64() < *p {
                for plane in img.chunks_mut(h * w) {
                    vflip_plane(plane, h, w);
                }
                t.vflip(h, w);
            }
            img
        }
        AugmentOp::Resize { size, shorter, mode, antialias } => {
            let (oh, ow) = resize_target(*size, *shorter, (h, w));
            let m = *mode;
            *dims = [c, oh, ow];
            if oh == 0 || ow == 0 {
                return Err(format!("resizing {h}x{w} gives an empty image"));
            }
            t.resize([h, w], [oh, ow]);
            // Enlarging, PIL's filter is the plain bilinear one (at the borders too: its
            // renormalised weights there equal the clamped coordinate), which is faster.
            if *antialias && m == UpsampleMode::Bilinear && (oh < h || ow < w) {
                resample_antialiased(&img, c, (h, w), (oh, ow))
            } else {
                resample(m, &img, c, (h, w), (oh, ow))
            }
        }
        AugmentOp::RandomResizedCrop { size, scale, ratio } => {
            let (top, left, ch, cw) = resized_crop_window(h, w, *scale, *ratio, rng);
            let window = crop(&img, [c, h, w], top as isize, left as isize, ch, cw, 0.0);
            t.crop([h, w], top as isize, left as isize, ch, cw);
            t.resize([ch, cw], [*size, *size]);
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
                    0 => adjust_brightness(&mut img, f),
                    1 => adjust_contrast(&mut img, c, h * w, f),
                    _ => adjust_saturation(&mut img, c, h * w, f),
                }
            }
            img
        }
        AugmentOp::CenterCrop { size } => {
            if *size > h || *size > w {
                return Err(format!("a {size}x{size} crop does not fit the {h}x{w} image"));
            }
            // torchvision: top = round((h - size) / 2), Python's round (half to even).
            let offset = |d: usize| (d as f64 / 2.0).round_ties_even() as isize;
            let (top, left) = (offset(h - size), offset(w - size));
            *dims = [c, *size, *size];
            t.crop([h, w], top, left, *size, *size);
            crop(&img, [c, h, w], top, left, *size, *size, 0.0)
        }
        AugmentOp::RandomJitter { amount } => {
            let mut side = |d: usize| {
                let m = (*amount * d as f64) as i64;
                rng.below((2 * m + 1) as u64) as i64 - m
            };
            let (left, right, top, bottom) = (side(w), side(w), side(h), side(h));
            let cw = (w as i64 - left - right).max(1) as usize;
            let ch = (h as i64 - top - bottom).max(1) as usize;
            *dims = [c, ch, cw];
            t.crop([h, w], top as isize, left as isize, ch, cw);
            crop(&img, [c, h, w], top as isize, left as isize, ch, cw, 0.5)
        }
        AugmentOp::Hsv { exposure, saturation } => {
            let mut scale = |x: f64| {
                let f = 1.0 + rng.next_f64() * (x - 1.0);
                if rng.next_f64() < 0.5 {
                    f
                } else {
                    1.0 / f
                }
            };
            let (s_factor, v_factor) = (scale(*saturation) as f32, scale(*exposure) as f32);
            let n = h * w;
            for p in 0..n {
                let (hue, sat, val) = rgb_to_hsv(img[p], img[n + p], img[2 * n + p]);
                let (r, g, b) = hsv_to_rgb(hue, (sat * s_factor).clamp(0.0, 1.0), (val * v_factor).clamp(0.0, 1.0));
                (img[p], img[n + p], img[2 * n + p]) = (r, g, b);
            }
            img
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

/// torchvision's `rgb_to_grayscale` of a tensor image, `0.2989 R + 0.587 G + 0.114 B`
/// (PIL's ITU-R 601-2 weights are 0.299, 0.587, 0.114); a 1-channel image is its own grey.
fn grey(img: &[f32], c: usize, hw: usize) -> Vec<f32> {
    if c != 3 {
        return img[..hw].to_vec();
    }
    (0..hw).map(|p| 0.2989 * img[p] + 0.587 * img[hw + p] + 0.114 * img[2 * hw + p]).collect()
}

/// torchvision's `adjust_brightness` of a tensor image in [0, 1]: `f x`, clamped.
pub fn adjust_brightness(img: &mut [f32], f: f32) {
    img.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
}

/// torchvision's `adjust_contrast`: each value blended with the mean of the greyscale
/// image, `f x + (1 - f) mean`, clamped.
pub fn adjust_contrast(img: &mut [f32], c: usize, hw: usize, f: f32) {
    let mean = grey(img, c, hw).iter().sum::<f32>() / hw as f32;
    img.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
}

/// torchvision's `adjust_saturation`: each pixel blended with its grey value, clamped.
pub fn adjust_saturation(img: &mut [f32], c: usize, hw: usize, f: f32) {
    let g = grey(img, c, hw);
    for plane in img.chunks_mut(hw) {
        for (v, gv) in plane.iter_mut().zip(&g) {
            *v = (f * *v + (1.0 - f) * gv).clamp(0.0, 1.0);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let out = apply(
                &AugmentOp::RandomCrop { size: 2, padding: 1, pad_mode: PadMode::Constant },
                img.clone(),
                &mut dims,
                &mut rng,
            )
            .unwrap();
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
        let op =
            AugmentOp::Resize { size: Some([1, 4]), shorter: None, mode: UpsampleMode::Bilinear, antialias: false };
        let out = apply(&op, vec![1., 2.], &mut dims, &mut Rng::new(0)).unwrap();
        assert_eq!((out, dims), (vec![1.0, 1.25, 1.75, 2.0], [1, 1, 4]));
        // Shorter side 2 of a 4x6 image: 2 x floor(2 * 6 / 4) = 2x3 (torchvision's rule);
        // nearest picks rows 0, 2 and columns 0, 2, 4.
        let img: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut dims = [1, 4, 6];
        let op = AugmentOp::Resize { size: None, shorter: Some(2), mode: UpsampleMode::Nearest, antialias: true };
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
        // A grey image is unchanged by saturation and contrast whatever the factor (grey =
        // R = G = B, its mean blend is itself when flat), up to torchvision's grey weights,
        // which sum to 0.9999: 0.3 becomes at most 0.3 - 3e-5.
        let op = AugmentOp::ColorJitter { brightness: 0.0, contrast: 0.9, saturation: 0.9 };
        let out = apply(&op, vec![0.3; 12], &mut [3, 2, 2], &mut Rng::new(2)).unwrap();
        assert!(out.iter().all(|v| (*v - 0.3).abs() < 4e-5), "{out:?}");
    }
    #[test]
    fn pad_modes_by_hand() {
        // Row [1, 2, 3] padded by 2 (torchvision's padding modes):
        // constant 0 0 1 2 3 0 0, edge 1 1 1 2 3 3 3, reflect 3 2 1 2 3 2 1.
        let row = vec![1f32, 2., 3.];
        let full = |mode| crop_padded(&row, [1, 1, 3], 0, -2, 7, mode);
        assert_eq!(crop(&row, [1, 1, 3], 0, -2, 1, 7, 0.0), vec![0., 0., 1., 2., 3., 0., 0.]);
        // crop_padded takes square windows; check the middle row of a 1x3 image.
        let edge = full(PadMode::Edge);
        let reflect = full(PadMode::Reflect);
        assert_eq!(&edge[..7], &[1., 1., 1., 2., 3., 3., 3.]);
        assert_eq!(&reflect[..7], &[3., 2., 1., 2., 3., 2., 1.]);
    }

    #[test]
    fn hsv_round_trips_and_jitter_moves_boxes() {
        // RGB -> HSV -> RGB is the identity (to float precision), by hand on a few colours.
        for (r, g, b) in [(1.0, 0.0, 0.0), (0.2, 0.4, 0.6), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (0.9, 0.1, 0.8)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6, "{r} {g} {b}");
        }
        // Pure red: hue 0, saturation 1, value 1; a saturation factor keeps it red.
        assert_eq!(rgb_to_hsv(1.0, 0.0, 0.0), (0.0, 1.0, 1.0));
        // random_jitter: the window moves each side by at most 20%; the box moves with it.
        let img: Vec<f32> = (0..3 * 10 * 10).map(|i| i as f32 / 300.0).collect();
        for seed in 0..20 {
            let mut t = Targets { boxes: vec![[4., 4., 6., 6.]], ids: vec![0], mask: None };
            let mut dims = [3, 10, 10];
            let mut rng = Rng::new(seed);
            let out =
                apply_with_targets(&AugmentOp::RandomJitter { amount: 0.2 }, img.clone(), &mut t, &mut dims, &mut rng)
                    .unwrap();
            assert!((6..=14).contains(&dims[1]) && (6..=14).contains(&dims[2]), "{dims:?}");
            assert_eq!(out.len(), 3 * dims[1] * dims[2]);
            // The box keeps its 2x2 size (it is never cut: it sits in the middle).
            let b = t.boxes[0];
            assert_eq!((b[2] - b[0], b[3] - b[1]), (2.0, 2.0), "{b:?}");
        }
    }

    #[test]
    fn boxes_and_masks_follow_the_geometry() {
        // A 1x4x6 image with one box [1, 1, 3, 2] (x0, y0, x1, y1) and a mask marking the
        // same pixels with class 7.
        let mut mask = vec![0u8; 24];
        mask[6 + 1] = 7;
        mask[6 + 2] = 7;
        let base = Targets { boxes: vec![[1., 1., 3., 2.]], mask: Some(mask), ..Default::default() };
        let img = vec![0f32; 24];

        // hflip (p = 1): x -> 6 - x: [3, 1, 5, 2]; the mask row reverses.
        let mut t = base.clone();
        apply_with_targets(&AugmentOp::Hflip { p: 1.0 }, img.clone(), &mut t, &mut [1, 4, 6], &mut Rng::new(0))
            .unwrap();
        assert_eq!(t.boxes, vec![[3., 1., 5., 2.]]);
        assert_eq!(&t.mask.as_ref().unwrap()[6..12], &[0, 0, 0, 7, 7, 0]);

        // vflip (p = 1): y -> 4 - y: [1, 2, 3, 3]; row 1 moves to row 2.
        let mut t = base.clone();
        apply_with_targets(&AugmentOp::Vflip { p: 1.0 }, img.clone(), &mut t, &mut [1, 4, 6], &mut Rng::new(0))
            .unwrap();
        assert_eq!(t.boxes, vec![[1., 2., 3., 3.]]);
        assert_eq!(&t.mask.as_ref().unwrap()[12..18], &[0, 7, 7, 0, 0, 0]);

        // center_crop 2 of 4x6: top 1, left 2: box [1,1,3,2] -> [0, 0, 1, 1] (clipped).
        let mut t = base.clone();
        let mut dims = [1, 4, 6];
        apply_with_targets(&AugmentOp::CenterCrop { size: 2 }, img.clone(), &mut t, &mut dims, &mut Rng::new(0))
            .unwrap();
        assert_eq!((t.boxes.clone(), dims), (vec![[0., 0., 1., 1.]], [1, 2, 2]));
        assert_eq!(t.mask.unwrap(), vec![7, 0, 0, 0]);

        // resize to 8x12 doubles the box; the mask is resized by nearest neighbour.
        let mut t = base.clone();
        let op =
            AugmentOp::Resize { size: Some([8, 12]), shorter: None, mode: UpsampleMode::Bilinear, antialias: false };
        apply_with_targets(&op, img.clone(), &mut t, &mut [1, 4, 6], &mut Rng::new(0)).unwrap();
        assert_eq!(t.boxes, vec![[2., 2., 6., 4.]]);
        let m = t.mask.unwrap();
        assert_eq!((m[2 * 12 + 2], m[3 * 12 + 5], m[2 * 12 + 6], m[0]), (7, 7, 0, 0));

        // random_crop with padding: the same draws move image, box and mask alike, and
        // padded mask pixels are IGNORE. Check the box against the crop's own pixels.
        for seed in 0..20 {
            let mut t = base.clone();
            let marked: Vec<f32> = base.mask.as_ref().unwrap().iter().map(|v| *v as f32).collect();
            let mut dims = [1, 4, 6];
            let op = AugmentOp::RandomCrop { size: 4, padding: 2, pad_mode: PadMode::Constant };
            let out = apply_with_targets(&op, marked, &mut t, &mut dims, &mut Rng::new(seed)).unwrap();
            let m = t.mask.as_ref().unwrap();
            for (v, mv) in out.iter().zip(m) {
                assert!(*mv == IGNORE || *v == *mv as f32, "seed {seed}");
            }
            let inside = out.iter().filter(|v| **v == 7.0).count();
            let area: f32 = t.boxes.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).sum();
            assert_eq!(inside as f32, area, "seed {seed}: box {:?}", t.boxes);
        }
        // The same seed gives the same image with or without targets.
        let a = apply(
            &AugmentOp::RandomCrop { size: 4, padding: 2, pad_mode: PadMode::Constant },
            img.clone(),
            &mut [1, 4, 6],
            &mut Rng::new(3),
        );
        let b = apply_with_targets(
            &AugmentOp::RandomCrop { size: 4, padding: 2, pad_mode: PadMode::Constant },
            img,
            &mut base.clone(),
            &mut [1, 4, 6],
            &mut Rng::new(3),
        );
        assert_eq!(a, b);
    }
}
