//! A synthetic detection and segmentation dataset, written in Pascal VOC 2007's on-disk layout.
//!
//! `write_shapes` draws filled shapes (circle, square, triangle, star, cross) in random colours
//! over cluttered backgrounds (gradients, soft colour blobs, pixel noise) and writes JPEGs, VOC
//! XML annotations, image sets and palette-PNG class masks with VOC's 255 "void" outlines, so
//! the VOC reader, the detection and the segmentation pipelines can be tried in minutes without
//! downloading VOC. Later objects occlude earlier ones; boxes are the tight boxes of the visible
//! pixels. Image k draws only from `Rng::derive(seed, ["shapes", k])`: the same seed and options
//! give the same bytes, whatever the thread count.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::config::voc::Synthetic;
use crate::plots::voc_palette;
use crate::rng::Rng;

/// The class names, in class-index order (mask value = index + 1).
pub const SHAPE_CLASSES: [&str; 5] = ["circle", "square", "triangle", "star", "cross"];

/// Bumped whenever the same options would give different files.
const GENERATOR_VERSION: u32 = 1;
const JPEG_QUALITY: u8 = 92;
/// Tries at a new position before an object that truncates or hides too much is dropped.
const PLACEMENT_TRIES: usize = 30;
/// The least share of a shape's pixels that must fall inside the image.
const MIN_INSIDE: f64 = 0.4;
/// Colour draws before settling for the one most unlike the background under the object.
const COLOUR_TRIES: usize = 8;
/// The wanted RGB distance (0..441) between an object and the mean background under it.
const MIN_CONTRAST: f64 = 90.0;
/// Width of the void band around objects, VOC's ~2 px outlines.
const VOID_BAND: usize = 2;

/// What to generate. `Default` is the standard set: 4000 train and 500 test images of
/// 160x160 px, 1-5 objects each, 12-80 px in size, difficult under 14 px, seed 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesOptions {
    pub train: usize,
    pub test: usize,
    /// The side of the square images, in pixels.
    pub size: usize,
    pub seed: u64,
    /// Objects per image, drawn uniformly in `min_objects..=max_objects` (one that cannot be
    /// placed is dropped, so an image may hold fewer).
    pub min_objects: usize,
    pub max_objects: usize,
    /// The bounding side of a shape in pixels, drawn log-uniformly in `[min_size, max_size]`.
    pub min_size: f64,
    pub max_size: f64,
    /// An object whose visible box's larger side is under this many pixels is `difficult`.
    pub difficult_below: f64,
}

impl ShapesOptions {
    /// The options that write the synthetic set `set` (`[data.voc] generate`).
    pub fn of(set: Synthetic) -> ShapesOptions {
        let default = ShapesOptions::default();
        match set {
            Synthetic::Shapes => default,
            Synthetic::SingleShapes => {
                ShapesOptions { size: 128, min_objects: 1, max_objects: 1, min_size: 30.0, max_size: 100.0, ..default }
            }
            Synthetic::SingleShapes192 => ShapesOptions { size: 192, ..ShapesOptions::of(Synthetic::SingleShapes) },
        }
    }
}

impl Default for ShapesOptions {
    fn default() -> Self {
        ShapesOptions {
            train: 4000,
            test: 500,
            size: 160,
            seed: 0,
            min_objects: 1,
            max_objects: 5,
            min_size: 12.0,
            max_size: 80.0,
            difficult_below: 14.0,
        }
    }
}

/// What `write_shapes` wrote: image and object counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapesSummary {
    pub images: usize,
    pub objects: usize,
    pub difficult: usize,
    pub truncated: usize,
}

/// Writes the dataset under `out/VOCdevkit/VOC2007/` (ids `000001`.. with train first, then
/// test) and a `shapes.toml` there recording what made it. Existing files are overwritten.
pub fn write_shapes(out: &Path, opts: &ShapesOptions) -> Result<ShapesSummary> {
    validate(opts)?;
    let root = out.join("VOCdevkit").join("VOC2007");
    for dir in ["JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    let palette = voc_palette();
    let per_image: Vec<ShapesSummary> = (0..opts.train + opts.test)
        .into_par_iter()
        .map(|index| write_image(&root, opts, index, &palette))
        .collect::<Result<_>>()?;
    let summary = per_image.iter().fold(ShapesSummary::default(), |a, b| ShapesSummary {
        images: a.images + b.images,
        objects: a.objects + b.objects,
        difficult: a.difficult + b.difficult,
        truncated: a.truncated + b.truncated,
    });
    let ids: Vec<String> = (0..opts.train + opts.test).map(image_id).collect();
    let (train, test) = ids.split_at(opts.train);
    for (set, list) in [("train", train), ("test", test)] {
        let text: String = list.iter().map(|id| format!("{id}\n")).collect();
        for task in ["Main", "Segmentation"] {
            write_file(&root.join("ImageSets").join(task).join(format!("{set}.txt")), text.as_bytes())?;
        }
    }
    write_file(&root.join("shapes.toml"), manifest(opts, &summary).as_bytes())?;
    Ok(summary)
}

fn validate(o: &ShapesOptions) -> Result<()> {
    if o.size < 8 || o.size > 8192 {
        bail!("shapes: image size must be 8..=8192 px, is {}", o.size);
    }
    if o.train + o.test > 999_999 {
        bail!("shapes: at most 999999 images fit six-digit ids, asked for {}", o.train + o.test);
    }
    if o.min_objects > o.max_objects || o.max_objects > 254 {
        bail!("shapes: objects per image must satisfy min <= max <= 254, are {}..={}", o.min_objects, o.max_objects);
    }
    if !(o.min_size >= 1.0 && o.min_size <= o.max_size && o.max_size.is_finite()) {
        bail!("shapes: object sizes must satisfy 1 <= min <= max, are {}..={}", o.min_size, o.max_size);
    }
    if !o.difficult_below.is_finite() {
        bail!("shapes: difficult_below must be finite, is {}", o.difficult_below);
    }
    Ok(())
}

fn image_id(index: usize) -> String {
    format!("{:06}", index + 1)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Renders image `index` and writes its JPEG, annotation and mask; returns its counts.
fn write_image(root: &Path, opts: &ShapesOptions, index: usize, palette: &[u8]) -> Result<ShapesSummary> {
    let id = image_id(index);
    let scene = render_scene(opts, index);
    let file = |dir: &str, ext: &str| -> PathBuf { root.join(dir).join(format!("{id}.{ext}")) };
    let jpg = file("JPEGImages", "jpg");
    write_file(&jpg, &encode_jpeg(&scene.rgb, opts.size).with_context(|| format!("encoding {}", jpg.display()))?)?;
    write_file(&file("Annotations", "xml"), annotation_xml(&id, opts.size, &scene.objects).as_bytes())?;
    let png = file("SegmentationClass", "png");
    let mask = encode_mask_png(&scene.mask, [opts.size, opts.size], palette)
        .with_context(|| format!("encoding {}", png.display()))?;
    write_file(&png, &mask)?;
    Ok(ShapesSummary {
        images: 1,
        objects: scene.objects.len(),
        difficult: scene.objects.iter().filter(|o| o.difficult).count(),
        truncated: scene.objects.iter().filter(|o| o.truncated).count(),
    })
}

/// A shape class; the discriminant is the index into `SHAPE_CLASSES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Circle, Kind::Square, Kind::Triangle, Kind::Star, Kind::Cross];

    /// A rotation: small for the axis-aligned kinds, any for the triangle and star.
    fn draw_angle(self, rng: &mut Rng) -> f64 {
        let tau = std::f64::consts::TAU;
        match self {
            Kind::Circle => 0.0,
            Kind::Square | Kind::Cross => (rng.next_f64() - 0.5) * 0.4,
            Kind::Triangle => rng.next_f64() * tau / 3.0,
            Kind::Star => rng.next_f64() * tau / 5.0,
        }
    }
}

/// A placed shape: its kind, centre, bounding side and rotation (as cos, sin).
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    cx: f64,
    cy: f64,
    size: f64,
    cos: f64,
    sin: f64,
}

impl Shape {
    /// Whether the point (x, y), in pixel units, lies inside the shape.
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (u, v) = (dx * self.cos + dy * self.sin, dy * self.cos - dx * self.sin);
        let h = self.size / 2.0;
        match self.kind {
            Kind::Circle => u * u + v * v <= h * h,
            Kind::Square => u.abs() <= h && v.abs() <= h,
            Kind::Triangle => {
                // Equilateral, side = size, centred on its centroid: three half-planes at the
                // inradius size / (2 sqrt 3), outward normals at 90, 210 and 330 degrees.
                let r = self.size / (2.0 * 3f64.sqrt());
                let s = 3f64.sqrt() / 2.0;
                v <= r && -s * u - v / 2.0 <= r && s * u - v / 2.0 <= r
            }
            Kind::Star => in_star(u, v, h),
            Kind::Cross => {
                let t = h / 3.0; // half the arm thickness: arms are size / 3 thick
                (u.abs() <= h && v.abs() <= t) || (u.abs() <= t && v.abs() <= h)
            }
        }
    }

    /// A radius around the centre that holds the whole shape.
    fn reach(&self) -> f64 {
        self.size * 0.75
    }
}

/// A five-pointed star with outer radius `r`, one tip pointing up: fold the point into the
/// half-sector between a tip and the next inner vertex, where the star is a triangle.
fn in_star(u: f64, v: f64, r: f64) -> bool {
    use std::f64::consts::PI;
    let sector = 2.0 * PI / 5.0;
    let rho = (u * u + v * v).sqrt();
    let phi = (v.atan2(u) + PI / 2.0).rem_euclid(sector);
    let phi = phi.min(sector - phi);
    let (px, py) = (rho * phi.cos(), rho * phi.sin());
    let inner = 0.4 * r;
    let (ex, ey) = (inner * (PI / 5.0).cos() - r, inner * (PI / 5.0).sin());
    ex * py - ey * (px - r) >= 0.0
}

/// The pixels whose centres a shape covers: those inside the image (as row-major indices),
/// and how many there would be on an unbounded grid.
struct Footprint {
    inside: Vec<u32>,
    whole: usize,
}

fn footprint(shape: &Shape, size: usize) -> Footprint {
    let r = shape.reach();
    let (x0, x1) = ((shape.cx - r).floor() as i64, (shape.cx + r).ceil() as i64);
    let (y0, y1) = ((shape.cy - r).floor() as i64, (shape.cy + r).ceil() as i64);
    let mut fp = Footprint { inside: Vec::new(), whole: 0 };
    for y in y0..=y1 {
        for x in x0..=x1 {
            if shape.contains(x as f64 + 0.5, y as f64 + 0.5) {
                fp.whole += 1;
                if (0..size as i64).contains(&x) && (0..size as i64).contains(&y) {
                    fp.inside.push((y as usize * size + x as usize) as u32);
                }
            }
        }
    }
    fp
}

/// An object as annotated: class index, VOC box (1-based inclusive xmin, ymin, xmax, ymax).
#[derive(Debug, Clone, PartialEq)]
struct Annotated {
    class: usize,
    bbox: [usize; 4],
    truncated: bool,
    difficult: bool,
}

/// One rendered image: RGB bytes, class mask, annotations, and (for checks) each pixel's
/// visible object (0 = none, i + 1 = `shapes[i]`).
struct Scene {
    rgb: Vec<u8>,
    mask: Vec<u8>,
    objects: Vec<Annotated>,
    #[cfg_attr(not(test), allow(dead_code))] // read by the tests' independent checks
    shapes: Vec<Shape>,
    #[cfg_attr(not(test), allow(dead_code))]
    owner: Vec<u8>,
}

/// An object's pixel counts: when it was placed (all its pixels inside the image) and now,
/// after later objects covered some; and whether the image edge cut it.
struct Coverage {
    placed: usize,
    visible: usize,
    truncated: bool,
}

/// Which object shows at each pixel (0 = none, i + 1 = object i) and how much of each shows.
struct Occupancy {
    owner: Vec<u8>,
    coverage: Vec<Coverage>,
}

impl Occupancy {
    /// Puts a new object on top, unless it would leave an earlier one with less than half of
    /// the pixels it had when placed. Returns whether it was put.
    fn try_claim(&mut self, fp: &Footprint) -> bool {
        let mut taken = vec![0usize; self.coverage.len()];
        for &p in &fp.inside {
            if let Some(o) = (self.owner[p as usize] as usize).checked_sub(1) {
                taken[o] += 1;
            }
        }
        if self.coverage.iter().zip(&taken).any(|(c, &t)| 2 * (c.visible - t) < c.placed) {
            return false;
        }
        for (c, t) in self.coverage.iter_mut().zip(&taken) {
            c.visible -= t;
        }
        let id = self.coverage.len() as u8 + 1; // ok: validate caps max_objects at 254
        fp.inside.iter().for_each(|&p| self.owner[p as usize] = id);
        let n = fp.inside.len();
        self.coverage.push(Coverage { placed: n, visible: n, truncated: n < fp.whole });
        true
    }
}

/// Draws a shape's kind, size and rotation, then tries positions until one keeps enough of it
/// inside the image and hides no earlier object too much; `None` drops the object.
fn place_object(rng: &mut Rng, opts: &ShapesOptions, occupancy: &mut Occupancy) -> Option<(Shape, Footprint)> {
    let kind = Kind::ALL[rng.below(Kind::ALL.len() as u64) as usize];
    let size = (opts.min_size.ln() + rng.next_f64() * (opts.max_size / opts.min_size).ln()).exp();
    let angle = kind.draw_angle(rng);
    for _ in 0..PLACEMENT_TRIES {
        let (cx, cy) = (rng.next_f64() * opts.size as f64, rng.next_f64() * opts.size as f64);
        let shape = Shape { kind, cx, cy, size, cos: angle.cos(), sin: angle.sin() };
        let fp = footprint(&shape, opts.size);
        let inside_enough = !fp.inside.is_empty() && fp.inside.len() as f64 >= MIN_INSIDE * fp.whole as f64;
        if inside_enough && occupancy.try_claim(&fp) {
            return Some((shape, fp));
        }
    }
    None
}

/// Draws image `index`: background, objects placed under the occlusion rule, then noise.
fn render_scene(opts: &ShapesOptions, index: usize) -> Scene {
    let mut rng = Rng::derive(opts.seed, &["shapes".into(), index.into()]);
    let size = opts.size;
    let mut canvas = background(&mut rng, size);
    let mut occupancy = Occupancy { owner: vec![0; size * size], coverage: Vec::new() };
    let mut shapes = Vec::new();
    let wanted = opts.min_objects + rng.below((opts.max_objects - opts.min_objects + 1) as u64) as usize;
    for _ in 0..wanted {
        if let Some((shape, fp)) = place_object(&mut rng, opts, &mut occupancy) {
            let colour = object_colour(&mut rng, &canvas, &fp.inside);
            paint_shape(&mut canvas, size, &shape, colour);
            shapes.push(shape);
        }
    }
    add_noise(&mut rng, &mut canvas);
    let Occupancy { owner, coverage } = occupancy;
    let truncated: Vec<bool> = coverage.iter().map(|c| c.truncated).collect();
    let objects = annotate(&owner, &shapes, &truncated, size, opts.difficult_below);
    let mask = class_mask(&owner, &shapes, size);
    let rgb = canvas.iter().map(|c| (c.clamp(0.0, 255.0) + 0.5) as u8).collect(); // rounds: c >= 0
    Scene { rgb, mask, objects, shapes, owner }
}

fn random_colour(rng: &mut Rng) -> [f32; 3] {
    [0; 3].map(|_| rng.next_f32() * 255.0)
}

/// A smooth gradient (or a flat colour) under 0-5 large soft ellipses of colour; RGB, f32.
fn background(rng: &mut Rng, size: usize) -> Vec<f32> {
    let s = size as f32;
    let c0 = random_colour(rng);
    let c1 = if rng.next_f64() < 0.8 { random_colour(rng) } else { c0 };
    let a = rng.next_f32() * std::f32::consts::TAU;
    let (gx, gy) = (a.cos() / (s * 1.42), a.sin() / (s * 1.42));
    let mut canvas = vec![0f32; size * size * 3];
    for (p, px) in canvas.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((p % size) as f32 + 0.5 - s / 2.0, (p / size) as f32 + 0.5 - s / 2.0);
        let t = (x * gx + y * gy + 0.5).clamp(0.0, 1.0);
        for c in 0..3 {
            px[c] = c0[c] + (c1[c] - c0[c]) * t;
        }
    }
    for _ in 0..rng.below(6) {
        let (cx, cy) = ((rng.next_f32() * 1.4 - 0.2) * s, (rng.next_f32() * 1.4 - 0.2) * s);
        let (rx, ry) = ((0.15 + 0.35 * rng.next_f32()) * s, (0.15 + 0.35 * rng.next_f32()) * s);
        let b = rng.next_f32() * std::f32::consts::PI;
        let (cos, sin) = (b.cos(), b.sin());
        let (colour, strength) = (random_colour(rng), 0.3 + 0.5 * rng.next_f32());
        for (p, px) in canvas.chunks_exact_mut(3).enumerate() {
            let (dx, dy) = ((p % size) as f32 + 0.5 - cx, (p / size) as f32 + 0.5 - cy);
            let (u, v) = ((dx * cos + dy * sin) / rx, (dy * cos - dx * sin) / ry);
            let t = (1.0 - (u * u + v * v)).max(0.0);
            let alpha = strength * t * t * (3.0 - 2.0 * t); // smoothstep: soft edges
            for c in 0..3 {
                px[c] += (colour[c] - px[c]) * alpha;
            }
        }
    }
    canvas
}

/// A uniform random colour, redrawn a few times until it stands out from the mean of the
/// canvas under `pixels`; failing that, the most distinct draw.
fn object_colour(rng: &mut Rng, canvas: &[f32], pixels: &[u32]) -> [f32; 3] {
    let mut mean = [0f64; 3];
    for &p in pixels {
        for c in 0..3 {
            mean[c] += canvas[p as usize * 3 + c] as f64 / pixels.len() as f64;
        }
    }
    let distance = |col: &[f32; 3]| (0..3).map(|c| (col[c] as f64 - mean[c]).powi(2)).sum::<f64>().sqrt();
    let mut best = random_colour(rng);
    for _ in 1..COLOUR_TRIES {
        if distance(&best) >= MIN_CONTRAST {
            break;
        }
        let next = random_colour(rng);
        if distance(&next) > distance(&best) {
            best = next;
        }
    }
    best
}

/// Paints a shape with 2x2 supersampled coverage (the mask uses pixel centres only).
fn paint_shape(canvas: &mut [f32], size: usize, shape: &Shape, colour: [f32; 3]) {
    let r = shape.reach();
    let lo = |c: f64| (c - r).floor().max(0.0) as usize;
    let hi = |c: f64| ((c + r).ceil().max(0.0) as usize).min(size);
    for y in lo(shape.cy)..hi(shape.cy) {
        for x in lo(shape.cx)..hi(shape.cx) {
            let (fx, fy) = (x as f64, y as f64);
            let hits = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
                .iter()
                .filter(|(dx, dy)| shape.contains(fx + dx, fy + dy))
                .count();
            let alpha = hits as f32 / 4.0;
            let px = &mut canvas[(y * size + x) * 3..][..3];
            for c in 0..3 {
                px[c] += (colour[c] - px[c]) * alpha;
            }
        }
    }
}

/// Adds Gaussian-like pixel noise (sum of four uniforms), sigma 8-20 per image.
fn add_noise(rng: &mut Rng, canvas: &mut [f32]) {
    let sigma = 8.0 + 12.0 * rng.next_f32();
    // Four 16-bit uniforms: mean 2, variance 4/12, so (sum - 2) * sqrt(3) has unit variance.
    let scale = sigma * 3f32.sqrt() / 65536.0;
    for v in canvas.iter_mut() {
        let r = rng.next_u64();
        let sum: u64 = (0..4).map(|k| (r >> (16 * k)) & 0xFFFF).sum();
        *v += (sum as f32 - 2.0 * 65536.0) * scale;
    }
}

/// Tight boxes of each object's visible pixels, with VOC's flags.
fn annotate(owner: &[u8], shapes: &[Shape], truncated: &[bool], size: usize, difficult_below: f64) -> Vec<Annotated> {
    let mut boxes = vec![[usize::MAX, usize::MAX, 0, 0]; shapes.len()];
    for (p, &o) in owner.iter().enumerate() {
        if let Some(b) = (o as usize).checked_sub(1).map(|i| &mut boxes[i]) {
            let (x, y) = (p % size + 1, p / size + 1);
            *b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
    }
    let objects = shapes.iter().zip(truncated).zip(boxes);
    objects
        .filter(|(_, b)| b[0] != usize::MAX) // every kept object keeps >= 1 pixel; be safe anyway
        .map(|((shape, &truncated), bbox)| {
            let side = (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]) + 1;
            Annotated { class: shape.kind as usize, bbox, truncated, difficult: (side as f64) < difficult_below }
        })
        .collect()
}

/// Per pixel: 0 background, class index + 1 where an object shows, 255 on the background
/// within ~2 px of an object (VOC's void outlines).
fn class_mask(owner: &[u8], shapes: &[Shape], size: usize) -> Vec<u8> {
    let objects: Vec<bool> = owner.iter().map(|&o| o != 0).collect();
    let near = dilate(&objects, size, VOID_BAND);
    owner
        .iter()
        .zip(near)
        .map(|(&o, near)| match o {
            0 if near => 255,
            0 => 0,
            o => shapes[o as usize - 1].kind as u8 + 1,
        })
        .collect()
}

/// Whether each pixel of a `size`-square image lies within `r` px (in x and in y) of a set
/// pixel: dilation by a (2r+1)-square, as a pass along rows and one along columns.
fn dilate(set: &[bool], size: usize, r: usize) -> Vec<bool> {
    let window = |i: usize| i.saturating_sub(r)..=(i + r).min(size - 1);
    let mut across = vec![false; set.len()];
    for (p, near) in across.iter_mut().enumerate() {
        let (x, row) = (p % size, p - p % size);
        *near = window(x).any(|nx| set[row + nx]);
    }
    (0..set.len()).map(|p| window(p / size).any(|ny| across[ny * size + p % size])).collect()
}

fn encode_jpeg(rgb: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
    encoder.encode(rgb, size as u32, size as u32, image::ExtendedColorType::Rgb8)?;
    Ok(bytes)
}

/// A class mask `[h, w]` as an 8-bit palette PNG (VOC's `SegmentationClass` format).
pub fn encode_mask_png(mask: &[u8], [h, w]: [usize; 2], palette: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w as u32, h as u32);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette.to_vec());
    let mut writer = encoder.write_header()?;
    writer.write_image_data(mask)?;
    writer.finish()?;
    Ok(bytes)
}

fn annotation_xml(id: &str, size: usize, objects: &[Annotated]) -> String {
    let mut xml = format!(
        "<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{id}.jpg</filename>\n\
         \t<source>\n\t\t<database>Synthetic shapes v{GENERATOR_VERSION}</database>\n\t</source>\n\
         \t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n\t</size>\n\
         \t<segmented>1</segmented>\n"
    );
    for o in objects {
        let [x0, y0, x1, y1] = o.bbox;
        let _ = write!(
            xml,
            "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{}</truncated>\n\
             \t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\
             \t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n",
            SHAPE_CLASSES[o.class], o.truncated as u8, o.difficult as u8
        ); // ok: writing to a String cannot fail
    }
    xml.push_str("</annotation>\n");
    xml
}

/// `shapes.toml`: the generator, its options and the counts, so a reader knows what made the set.
/// Destructured so that a new option cannot be left out.
fn manifest(o: &ShapesOptions, s: &ShapesSummary) -> String {
    let ShapesOptions { train, test, size, seed, min_objects, max_objects, min_size, max_size, difficult_below } = o;
    let ShapesSummary { images, objects, difficult, truncated } = s;
    let classes: Vec<String> = SHAPE_CLASSES.iter().map(|c| format!("\"{c}\"")).collect();
    let classes = classes.join(", ");
    format!(
        "# Synthetic shapes in Pascal VOC 2007 layout (runner's data::synth).\n\
         generator = \"shapes\"\nversion = {GENERATOR_VERSION}\nseed = {seed}\ntrain = {train}\ntest = {test}\n\
         size = {size}\nmin_objects = {min_objects}\nmax_objects = {max_objects}\nmin_size = {min_size:?}\n\
         max_size = {max_size:?}\ndifficult_below = {difficult_below:?}\nclasses = [{classes}]\n\n\
         [summary]\nimages = {images}\nobjects = {objects}\ndifficult = {difficult}\ntruncated = {truncated}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("synth-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small(train: usize, test: usize, size: usize, seed: u64) -> ShapesOptions {
        ShapesOptions { train, test, size, seed, ..ShapesOptions::default() }
    }

    /// FNV-1a over every file's relative path and bytes, in sorted path order.
    fn hash_tree(root: &Path) -> u64 {
        fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, files)
                } else {
                    files.push(path)
                }
            }
        }
        let mut files = Vec::new();
        walk(root, &mut files);
        files.sort();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in &files {
            let name = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            for b in name.bytes().chain(std::fs::read(f).unwrap()) {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
        h
    }

    /// The text of the first `<tag>` in `xml`.
    fn tag<'a>(xml: &'a str, tag: &str) -> &'a str {
        let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
        let end = xml[start..].find(&format!("</{tag}>")).unwrap();
        &xml[start..start + end]
    }

    /// (class index, [xmin, ymin, xmax, ymax], truncated, difficult) per `<object>`.
    fn parse_objects(xml: &str) -> Vec<(usize, [usize; 4], bool, bool)> {
        xml.split("<object>")
            .skip(1)
            .map(|o| {
                let class = SHAPE_CLASSES.iter().position(|c| *c == tag(o, "name")).unwrap();
                let b = ["xmin", "ymin", "xmax", "ymax"].map(|t| tag(o, t).parse::<usize>().unwrap());
                (class, b, tag(o, "truncated") == "1", tag(o, "difficult") == "1")
            })
            .collect()
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let (a, b, c) = (Scratch::new("seed-a"), Scratch::new("seed-b"), Scratch::new("seed-c"));
        write_shapes(&a.0, &small(6, 2, 64, 5)).unwrap();
        write_shapes(&b.0, &small(6, 2, 64, 5)).unwrap();
        write_shapes(&c.0, &small(6, 2, 64, 6)).unwrap();
        assert_eq!(hash_tree(&a.0), hash_tree(&b.0));
        assert_ne!(hash_tree(&a.0), hash_tree(&c.0));
    }

    #[test]
    fn an_image_does_not_depend_on_the_set_around_it() {
        let (a, b) = (render_scene(&small(3, 0, 64, 1), 2), render_scene(&small(50, 9, 64, 1), 2));
        assert_eq!((a.rgb, a.mask), (b.rgb, b.mask));
    }

    #[test]
    fn small_set_is_consistent_voc() {
        let dir = Scratch::new("voc");
        let opts = small(12, 4, 96, 3);
        let summary = write_shapes(&dir.0, &opts).unwrap();
        let root = dir.0.join("VOCdevkit/VOC2007");
        let mut ids = Vec::new();
        for (set, n) in [("train", 12), ("test", 4)] {
            let main = std::fs::read_to_string(root.join(format!("ImageSets/Main/{set}.txt"))).unwrap();
            let seg = std::fs::read_to_string(root.join(format!("ImageSets/Segmentation/{set}.txt"))).unwrap();
            assert_eq!((main.lines().count(), &main), (n, &seg));
            ids.extend(main.lines().map(str::to_string));
        }
        assert_eq!(ids.first().map(String::as_str), Some("000001"));
        assert_eq!(ids.last().map(String::as_str), Some("000016"));
        let mut objects = 0;
        for id in &ids {
            let xml = std::fs::read_to_string(root.join(format!("Annotations/{id}.xml"))).unwrap();
            assert_eq!(tag(&xml, "filename"), format!("{id}.jpg"));
            assert_eq!((tag(&xml, "width"), tag(&xml, "height"), tag(&xml, "depth")), ("96", "96", "3"));
            let jpeg = image::open(root.join(format!("JPEGImages/{id}.jpg"))).unwrap().to_rgb8();
            let decoder = png::Decoder::new(std::io::BufReader::new(
                std::fs::File::open(root.join(format!("SegmentationClass/{id}.png"))).unwrap(),
            ));
            let mut reader = decoder.read_info().unwrap();
            let info = reader.info();
            assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Indexed, png::BitDepth::Eight));
            assert_eq!(info.palette.as_ref().map(|p| p.len()), Some(768));
            assert_eq!((info.width, info.height), jpeg.dimensions());
            let mut mask = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut mask).unwrap();
            let boxes = parse_objects(&xml);
            objects += boxes.len();
            for &(class, [x0, y0, x1, y1], _, _) in &boxes {
                assert!(
                    1 <= x0 && x0 <= x1 && x1 <= 96 && 1 <= y0 && y0 <= y1 && y1 <= 96,
                    "{id}: {x0} {y0} {x1} {y1}"
                );
                let has_class = (y0 - 1..y1).any(|y| (x0 - 1..x1).any(|x| mask[y * 96 + x] as usize == class + 1));
                assert!(has_class, "{id}: box {x0} {y0} {x1} {y1} holds no {}", SHAPE_CLASSES[class]);
            }
            for (p, &m) in mask.iter().enumerate() {
                let (x, y) = (p % 96 + 1, p / 96 + 1);
                let boxed = |&(c, b, _, _): &(usize, [usize; 4], bool, bool)| {
                    c + 1 == m as usize && b[0] <= x && x <= b[2] && b[1] <= y && y <= b[3]
                };
                assert!(m == 0 || m == 255 || boxes.iter().any(boxed), "{id}: pixel {x},{y} = {m} outside its boxes");
            }
        }
        assert_eq!((summary.images, summary.objects), (16, objects));
        assert!(std::fs::read_to_string(root.join("shapes.toml")).unwrap().contains("seed = 3\n"));
    }

    #[test]
    fn boxes_and_flags_follow_the_visible_pixels() {
        let opts = ShapesOptions { min_size: 6.0, max_size: 40.0, ..small(0, 0, 64, 9) };
        let (mut difficult, mut truncated, mut occluded) = (0, 0, 0);
        for index in 0..300 {
            let scene = render_scene(&opts, index);
            assert_eq!(scene.objects.len(), scene.shapes.len());
            for (i, (shape, object)) in scene.shapes.iter().zip(&scene.objects).enumerate() {
                let fp = footprint(shape, opts.size);
                let visible: Vec<usize> =
                    (0..scene.owner.len()).filter(|&p| scene.owner[p] as usize == i + 1).collect();
                assert!(2 * visible.len() >= fp.inside.len(), "image {index} object {i}: under half visible");
                assert!(visible.iter().all(|p| fp.inside.contains(&(*p as u32))));
                occluded += (visible.len() < fp.inside.len()) as usize;
                let xs = visible.iter().map(|p| p % 64 + 1);
                let ys = visible.iter().map(|p| p / 64 + 1);
                let tight = [xs.clone().min(), ys.clone().min(), xs.max(), ys.max()].map(Option::unwrap);
                assert_eq!(object.bbox, tight, "image {index} object {i}");
                let side = (tight[2] - tight[0]).max(tight[3] - tight[1]) + 1;
                assert_eq!(object.difficult, (side as f64) < opts.difficult_below);
                assert_eq!(object.truncated, fp.inside.len() < fp.whole);
                assert!(fp.inside.len() as f64 >= MIN_INSIDE * fp.whole as f64);
                difficult += object.difficult as usize;
                truncated += object.truncated as usize;
            }
        }
        // The rules must have been exercised, not passed vacuously.
        assert!(difficult > 20 && truncated > 20 && occluded > 20, "{difficult} {truncated} {occluded}");
    }

    #[test]
    fn shapes_have_their_textbook_areas() {
        // Pixel-centre counts against hand-computed areas for size s = 120:
        // circle pi s^2/4, square s^2, equilateral triangle sqrt(3)/4 s^2, cross 5 (s/3)^2,
        // star 5 R r sin(36 deg) with R = s/2, r = 0.4 R (ten triangles O-tip-inner vertex).
        let s: f64 = 120.0;
        let star = 5.0 * (s / 2.0) * (0.2 * s) * (std::f64::consts::PI / 5.0).sin();
        let areas = [std::f64::consts::PI * s * s / 4.0, s * s, 3f64.sqrt() / 4.0 * s * s, star, 5.0 * s * s / 9.0];
        for (kind, area) in Kind::ALL.iter().zip(areas) {
            let shape = Shape { kind: *kind, cx: 150.3, cy: 149.7, size: s, cos: 0.8, sin: 0.6 };
            let fp = footprint(&shape, 300);
            assert_eq!(fp.inside.len(), fp.whole);
            assert!((fp.whole as f64 / area - 1.0).abs() < 0.02, "{kind:?}: {} vs {area}", fp.whole);
        }
    }

    #[test]
    fn void_band_surrounds_objects_only_on_background() {
        // A 3x3 square object in an 11x11 image, touching a 1-px object of another class.
        let mut owner = vec![0u8; 121];
        for y in 4..7 {
            owner[y * 11 + 4..y * 11 + 7].fill(1);
        }
        owner[5 * 11 + 7] = 2;
        let at = |kind| Shape { kind, cx: 0.0, cy: 0.0, size: 1.0, cos: 1.0, sin: 0.0 };
        let mask = class_mask(&owner, &[at(Kind::Square), at(Kind::Star)], 11);
        assert_eq!((mask[5 * 11 + 5], mask[5 * 11 + 7]), (2, 4));
        assert_eq!((mask[5 * 11 + 2], mask[2 * 11 + 5], mask[5 * 11 + 9]), (255, 255, 255));
        // The band's diagonal corners (a square dilation).
        assert_eq!((mask[2 * 11 + 2], mask[8 * 11 + 2]), (255, 255));
        // 3 px away from any object pixel, in x or in y.
        assert_eq!((mask[5 * 11 + 1], mask[11 + 1], mask[5 * 11 + 10]), (0, 0, 0));
    }

    #[test]
    fn palette_is_vocs() {
        // Entries from VOC's devkit colour map (VOClabelcolormap.m).
        let p = voc_palette();
        let entry = |i: usize| [p[3 * i], p[3 * i + 1], p[3 * i + 2]];
        assert_eq!((p.len(), entry(0), entry(1), entry(2)), (768, [0, 0, 0], [128, 0, 0], [0, 128, 0]));
        assert_eq!((entry(15), entry(255)), ([192, 128, 128], [224, 224, 192]));
    }

    #[test]
    fn bad_options_are_refused_with_their_values() {
        let cases = [
            (ShapesOptions { min_objects: 6, ..ShapesOptions::default() }, "6..=5"),
            (ShapesOptions { min_size: 0.5, ..ShapesOptions::default() }, "0.5..=80"),
            (ShapesOptions { size: 4, ..ShapesOptions::default() }, "is 4"),
            (ShapesOptions { difficult_below: f64::NAN, ..ShapesOptions::default() }, "NaN"),
        ];
        for (opts, needle) in cases {
            let err = write_shapes(Path::new("/nonexistent/never-written"), &opts).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
