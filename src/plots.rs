//! PNG plots, drawn with plotters into memory and encoded with `image`; text in DejaVu Sans
//! embedded in the binary (no system font packages).
//!
//! In each run's `plots/` after every epoch: `<metric>.png` (train and test per epoch),
//! `roc.png` (the test split's ROC curves with their areas, when `roc` is configured) and
//! `confusion_matrix.png` (a labelled heat map, when `confusion_matrix` is configured).
//! `runner compare --plot` overlays the curves of several runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::metrics::RocCurve;
use crate::runlog::MetricRow;
use crate::{metrics, runlog};

const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn init_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            tracing::warn!("the embedded font did not load: plots will have no text");
        }
    });
}

/// Draws into a `w x h` RGB buffer and writes it as a PNG (through a temporary file).
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    render_over(path, (w, h), vec![255u8; (w * h * 3) as usize], draw)
}

/// Draws over `buf` (`w x h` interleaved RGB, e.g. a photo) and writes it as a PNG.
fn render_over(
    path: &Path,
    (w, h): (u32, u32),
    mut buf: Vec<u8>,
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    init_font();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(root.clone())?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    runlog::atomic_write(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)?;
        Ok(())
    })
}

/// An epoch axis's label: the whole epoch, or nothing between epochs.
fn epoch_tick(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

/// Lines of `(x, y)` points with their labels, on one chart.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|(_, p)| p).filter(|(_, y)| y.is_finite()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in &points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    render(path, (800, 500), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow!("{e}"))?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label).y_desc(y_label).label_style((FONT, 14));
        if x_label == "epoch" {
            // Whole epochs: 1, 2, 3, not 1.0, 1.5, 2.0.
            mesh.x_labels(((x1 - x0).round() as usize + 1).clamp(2, 12)).x_label_formatter(&epoch_tick);
        }
        mesh.draw().map_err(|e| anyhow!("{e}"))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(_, y)| y.is_finite()).collect();
            // Markers too, so that a one-epoch run still shows.
            if pts.len() <= 60 {
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    })
}

/// Per-epoch curves of every scalar metric logged for `train` or `test` (one PNG each).
pub fn metric_curves(dir: &Path, rows: &[MetricRow], metrics: &[String]) -> Result<()> {
    for metric in metrics {
        let mut by_split: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for r in rows.iter().filter(|r| &r.metric == metric && r.class.is_none()) {
            if r.split == "train" || r.split == "test" {
                by_split.entry(r.split.as_str()).or_default().push((r.epoch as f64 + 1.0, r.value));
            }
        }
        let series: Vec<(String, Vec<(f64, f64)>)> = by_split.into_iter().map(|(s, p)| (s.to_string(), p)).collect();
        line_chart(&dir.join(format!("{metric}.png")), metric, "epoch", metric, &series)?;
    }
    Ok(())
}

/// ROC curves `(class, [(threshold, fpr, tpr)])` with their areas in the legend.
pub fn roc(path: &Path, curves: &[RocCurve]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(name, c)| {
            let auc = metrics::curve_area(c);
            (format!("{name} (AUC {auc:.3})"), c.iter().map(|(_, f, t)| (*f, *t)).collect())
        })
        .collect();
    line_chart(path, "ROC (test)", "false-positive rate", "true-positive rate", &series)
}

/// The first `n` characters of a label (not bytes: a class may be named `café` or `猫`).
fn shorten(name: &str, n: usize) -> String {
    name.chars().take(n).collect()
}

/// A heat map of `m[true][pred]` with the counts written in the cells.
pub fn confusion(path: &Path, m: &[Vec<u64>], names: &[String]) -> Result<()> {
    let n = m.len();
    if n == 0 {
        return Ok(());
    }
    let max = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let cell = (640 / n as u32).clamp(12, 80);
    let side = cell * n as u32;
    let label = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
    render(path, (side + 180, side + 150), |root| {
        let title_font = (FONT, 20).into_font();
        root.draw(&Text::new("confusion matrix (rows: true, columns: predicted)", (10, 8), title_font))
            .map_err(|e| anyhow!("{e}"))?;
        let (ox, oy) = (160i32, 110i32);
        let font_size = (cell as f64 * 0.35).clamp(8.0, 16.0);
        for (i, row) in m.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let t = v as f64 / max;
                let shade = (255.0 * (1.0 - t)) as u8;
                let color = RGBColor(shade, shade, 255);
                let (x, y) = (ox + (j as u32 * cell) as i32, oy + (i as u32 * cell) as i32);
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], color.filled()))
                    .map_err(|e| anyhow!("{e}"))?;
                let text_color = if t > 0.5 { WHITE } else { BLACK };
                let style = (FONT, font_size).into_font().color(&text_color);
                root.draw(&Text::new(v.to_string(), (x + 3, y + cell as i32 / 3), style))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            let style = (FONT, font_size).into_font();
            let y = oy + (i as u32 * cell) as i32 + cell as i32 / 3;
            let name = shorten(&label(i), 18);
            root.draw(&Text::new(name, (8, y), style)).map_err(|e| anyhow!("{e}"))?;
        }
        for j in 0..n {
            let style = (FONT, font_size).into_font().transform(FontTransform::Rotate270);
            let x = ox + (j as u32 * cell) as i32 + cell as i32 / 3;
            let name = shorten(&label(j), 12);
            root.draw(&Text::new(name, (x, oy - 6), style)).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    })
}

/// Class `c`'s name in `classes`, or its number where the list has none.
pub fn class_name(classes: &[String], c: usize) -> String {
    classes.get(c).cloned().unwrap_or_else(|| c.to_string())
}

/// VOC's colour map: entry i spreads its bits over the high bits of r, g and b.
pub fn voc_palette() -> Vec<u8> {
    let mut palette = Vec::with_capacity(768);
    for i in 0..256usize {
        let mut rgb = [0u8; 3];
        let mut c = i;
        for j in 0..8 {
            for (k, channel) in rgb.iter_mut().enumerate() {
                *channel |= (((c >> k) & 1) as u8) << (7 - j);
            }
            c >>= 3;
        }
        palette.extend_from_slice(&rgb);
    }
    palette
}

/// A labelled box to draw: the text above it, edges in pixels, and the colour's index;
/// ground truth (`truth`) is drawn as a thin white outline without text.
pub struct Labelled {
    pub text: String,
    pub bbox: [f32; 4],
    pub colour: usize,
    pub truth: bool,
}

/// An image (planar `[3, h, w]` bytes) with its boxes drawn and labelled, as a PNG.
pub fn boxes_on_image(path: &Path, planar: &[u8], hw: [usize; 2], boxes: &[Labelled]) -> Result<()> {
    draw_image(path, planar, hw, boxes, &[])
}

/// [`boxes_on_image`] with `captions`: white text at pixel positions (a legend's names).
fn draw_image(path: &Path, planar: &[u8], [h, w]: [usize; 2], boxes: &[Labelled], captions: &[Caption]) -> Result<()> {
    let mut rgb = vec![0u8; h * w * 3];
    for p in 0..h * w {
        for c in 0..3 {
            rgb[p * 3 + c] = planar.get(c * h * w + p).copied().unwrap_or(0);
        }
    }
    render_over(path, (w as u32, h as u32), rgb, |root| {
        let size = ((h.min(w) as f64) / 16.0).clamp(9.0, 16.0);
        for b in boxes.iter().filter(|b| b.truth) {
            let [x0, y0, x1, y1] = b.bbox.map(|v| v.round() as i32);
            root.draw(&Rectangle::new([(x0, y0), (x1 - 1, y1 - 1)], WHITE.stroke_width(1)))
                .map_err(|e| anyhow!("{e}"))?;
        }
        for b in boxes.iter().filter(|b| !b.truth) {
            let colour = PALETTE[b.colour % PALETTE.len()];
            let [x0, y0, x1, y1] = b.bbox.map(|v| v.round() as i32);
            root.draw(&Rectangle::new([(x0, y0), (x1 - 1, y1 - 1)], colour.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?;
            let style = TextStyle::from((FONT, size).into_font()).color(&WHITE);
            let (tw, th) = root.estimate_text_size(&b.text, &style).map_err(|e| anyhow!("{e}"))?;
            let top = if y0 >= th as i32 + 2 { y0 - th as i32 - 2 } else { y0 };
            root.draw(&Rectangle::new([(x0, top), (x0 + tw as i32 + 3, top + th as i32 + 2)], colour.filled()))
                .map_err(|e| anyhow!("{e}"))?;
            root.draw(&Text::new(b.text.clone(), (x0 + 2, top + 1), style)).map_err(|e| anyhow!("{e}"))?;
        }
        let style = TextStyle::from((FONT, LEGEND_TEXT).into_font()).color(&WHITE);
        for (text, at) in captions {
            root.draw(&Text::new(text.clone(), *at, style.clone())).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    })
}

/// A text and the pixel where it starts.
type Caption = (String, (i32, i32));

/// A legend's row height, swatch side and text size, in pixels.
const LEGEND_ROW: usize = 16;
const LEGEND_SWATCH: usize = 10;
const LEGEND_TEXT: f64 = 12.0;

/// `planar` (`[3, h, w]`) with a black band below it: a swatch of each class's colour in
/// VOC's colour map (class `i` in colour `i`, as the masks draw it) and room for its name,
/// left to right, wrapping to more rows as the width needs. Returns the taller image, its
/// size and the names' positions.
fn with_legend(planar: &[u8], [h, w]: [usize; 2], classes: &[(usize, String)]) -> (Vec<u8>, [usize; 2], Vec<Caption>) {
    let palette = voc_palette();
    // Place the entries: a swatch, a gap, the name (about 7 px a character), a gap.
    let mut places = Vec::new();
    let (mut x, mut row) = (4usize, 0usize);
    for (class, name) in classes {
        let width = LEGEND_SWATCH + 4 + 7 * name.chars().count() + 12;
        if x > 4 && x + width > w {
            (x, row) = (4, row + 1);
        }
        places.push((*class, name.clone(), x, row));
        x += width;
    }
    let rows = if places.is_empty() { 0 } else { row + 1 };
    let nh = h + rows * LEGEND_ROW + if rows > 0 { 4 } else { 0 };
    let mut out = vec![0u8; 3 * nh * w];
    for c in 0..3 {
        out[c * nh * w..c * nh * w + h * w].copy_from_slice(&planar[c * h * w..(c + 1) * h * w]);
    }
    let mut captions = Vec::new();
    for (class, name, x, row) in places {
        let top = h + 4 + row * LEGEND_ROW;
        let colour = &palette[3 * (class % 256)..3 * (class % 256) + 3];
        for y in top..top + LEGEND_SWATCH {
            for xx in x..(x + LEGEND_SWATCH).min(w) {
                for c in 0..3 {
                    out[(c * nh + y) * w + xx] = colour[c];
                }
            }
        }
        captions.push((name, ((x + LEGEND_SWATCH + 4) as i32, top as i32 - 1)));
    }
    (out, [nh, w], captions)
}

/// An image with a class mask laid over it ([`mask_overlay`]) and a legend of the classes
/// the mask holds (background and void left out), as a PNG.
pub fn overlay_with_legend(path: &Path, planar: &[u8], mask: &[u8], hw: [usize; 2], classes: &[String]) -> Result<()> {
    let overlay = mask_overlay(planar, mask, hw);
    let mut present: Vec<usize> = mask.iter().map(|&m| m as usize).filter(|&m| m != 0 && m != 255).collect();
    present.sort_unstable();
    present.dedup();
    let named: Vec<(usize, String)> = present.into_iter().map(|c| (c, class_name(classes, c))).collect();
    let (img, size, captions) = with_legend(&overlay, hw, &named);
    draw_image(path, &img, size, &[], &captions)
}

/// Precision against recall per class, each named with its AP: `(name, ap, precision,
/// recall)` after each counted detection, by score.
pub fn precision_recall(path: &Path, curves: &[(String, f64, Vec<f64>, Vec<f64>)]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .filter(|(_, _, p, _)| !p.is_empty())
        .map(|(name, ap, p, r)| (format!("{name} (AP {ap:.3})"), r.iter().copied().zip(p.iter().copied()).collect()))
        .collect();
    line_chart(path, "precision / recall at IoU 0.5 (test)", "recall", "precision", &series)
}

/// An image (planar `[3, h, w]` bytes) with a class mask laid over it: each labelled pixel
/// blended half and half with its class's colour in VOC's colour map (background left as
/// is, void 255 in white).
pub fn mask_overlay(planar: &[u8], mask: &[u8], [h, w]: [usize; 2]) -> Vec<u8> {
    let palette = voc_palette();
    let mut out = planar.to_vec();
    for (p, &m) in mask.iter().enumerate().take(h * w) {
        if m == 0 {
            continue;
        }
        let colour = if m == 255 {
            [255u8; 3]
        } else {
            [palette[3 * m as usize], palette[3 * m as usize + 1], palette[3 * m as usize + 2]]
        };
        for c in 0..3 {
            let v = &mut out[c * h * w + p];
            *v = ((*v as u16 + colour[c] as u16) / 2) as u8;
        }
    }
    out
}

/// An image for [`masks_grid`]: planar `[3, h, w]` bytes, its true and predicted masks.
pub struct MaskedImage {
    pub image: Vec<u8>,
    pub truth: Vec<u8>,
    pub pred: Vec<u8>,
    pub size: [usize; 2],
}

/// Rows of (image, ground truth overlay, prediction overlay) for segmentation, above a
/// legend of the classes' colours (`classes`: the names, background first and not shown).
pub fn masks_grid(path: &Path, images: &[MaskedImage], classes: &[String]) -> Result<()> {
    let mut cells = Vec::new();
    for MaskedImage { image: img, truth, pred, size: hw } in images {
        cells.push((img.clone(), *hw, Vec::new()));
        cells.push((mask_overlay(img, truth, *hw), *hw, Vec::new()));
        cells.push((mask_overlay(img, pred, *hw), *hw, Vec::new()));
    }
    let Some((planar, hw, boxes)) = grid_pixels(&cells, 3) else { return Ok(()) };
    let named: Vec<(usize, String)> = classes.iter().cloned().enumerate().skip(1).collect();
    let (img, size, captions) = with_legend(&planar, hw, &named);
    draw_image(path, &img, size, &boxes, &captions)
}

/// Images (planar `[3, h, w]` bytes and `[h, w]`) in a grid, each with its boxes.
pub fn boxes_grid(path: &Path, images: &[(Vec<u8>, [usize; 2], Vec<Labelled>)]) -> Result<()> {
    grid(path, images, (images.len() as f64).sqrt().ceil() as usize)
}

/// Images with their boxes in a grid of `cols` columns.
fn grid(path: &Path, images: &[(Vec<u8>, [usize; 2], Vec<Labelled>)], cols: usize) -> Result<()> {
    match grid_pixels(images, cols) {
        Some((planar, hw, boxes)) => boxes_on_image(path, &planar, hw, &boxes),
        None => Ok(()),
    }
}

/// The grid's pixels (planar), size and boxes; none for no image.
#[allow(clippy::type_complexity)]
fn grid_pixels(
    images: &[(Vec<u8>, [usize; 2], Vec<Labelled>)],
    cols: usize,
) -> Option<(Vec<u8>, [usize; 2], Vec<Labelled>)> {
    if images.is_empty() {
        return None;
    }
    let rows = images.len().div_ceil(cols);
    let cell_h = images.iter().map(|(_, [h, _], _)| *h).max().unwrap_or(1) + 4;
    let cell_w = images.iter().map(|(_, [_, w], _)| *w).max().unwrap_or(1) + 4;
    let (gh, gw) = (rows * cell_h, cols * cell_w);
    let mut planar = vec![0u8; 3 * gh * gw];
    let mut boxes = Vec::new();
    for (k, (img, [h, w], bs)) in images.iter().enumerate() {
        let (oy, ox) = ((k / cols) * cell_h + 2, (k % cols) * cell_w + 2);
        for c in 0..3 {
            for y in 0..*h {
                let src = &img[(c * h + y) * w..(c * h + y + 1) * w];
                let at = (c * gh + oy + y) * gw + ox;
                planar[at..at + w].copy_from_slice(src);
            }
        }
        for b in bs {
            let [x0, y0, x1, y1] = b.bbox;
            let bbox = [x0 + ox as f32, y0 + oy as f32, x1 + ox as f32, y1 + oy as f32];
            boxes.push(Labelled { text: b.text.clone(), bbox, colour: b.colour, truth: b.truth });
        }
    }
    Some((planar, [gh, gw], boxes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_plots_carry_a_legend_in_the_masks_colours() {
        // A 16x96 grey image whose mask holds classes 1 and 2: under the picture, a swatch of
        // VOC's colour 1 and one of colour 2 (the colours the overlays blend in).
        let (h, w) = (16, 96);
        let image = vec![128u8; 3 * h * w];
        let mut mask = vec![0u8; h * w];
        mask[..10].fill(1);
        mask[20..30].fill(2);
        let d = tempfile::tempdir().unwrap();
        let names = ["background".to_string(), "a".into(), "b".into(), "c".into()];
        overlay_with_legend(&d.path().join("o.png"), &image, &mask, [h, w], &names).unwrap();
        let png = image::open(d.path().join("o.png")).unwrap().to_rgb8();
        assert_eq!(png.width() as usize, w);
        assert_eq!(png.height() as usize, h + LEGEND_ROW + 4, "one legend row below the image");
        let palette = voc_palette();
        let colours: std::collections::BTreeSet<[u8; 3]> = png.pixels().skip(h * w).map(|p| p.0).collect();
        for class in [1usize, 2] {
            let c = [palette[3 * class], palette[3 * class + 1], palette[3 * class + 2]];
            assert!(colours.contains(&c), "class {class}'s colour {c:?} in the legend");
        }
        let c3 = [palette[9], palette[10], palette[11]];
        assert!(!colours.contains(&c3), "class 3 is not in the mask, so not in its legend");
        // The masks grid: every class but the background.
        let rows = [MaskedImage { image: image.clone(), truth: mask.clone(), pred: mask, size: [h, w] }];
        masks_grid(&d.path().join("m.png"), &rows, &names).unwrap();
        let png = image::open(d.path().join("m.png")).unwrap().to_rgb8();
        let grid_h = h + 4;
        assert!(png.height() as usize > grid_h, "a legend below the grid");
        let colours: std::collections::BTreeSet<[u8; 3]> =
            png.pixels().skip(grid_h * png.width() as usize).map(|p| p.0).collect();
        assert!(colours.contains(&c3), "the grid's legend lists every class");
    }

    #[test]
    fn epoch_axes_show_whole_epochs() {
        assert_eq!(epoch_tick(&1.0), "1");
        assert_eq!(epoch_tick(&12.0000001), "12");
        assert_eq!(epoch_tick(&1.5), "");
        assert_eq!(epoch_tick(&2.25), "");
    }

    #[test]
    fn long_non_ascii_class_names_are_shortened_by_characters() {
        // Cutting at byte 18 or 12 would fall inside a multi-byte character and panic.
        assert_eq!(shorten("écureuil roux d'Europe", 12), "écureuil rou");
        assert_eq!(shorten("猫猫猫猫猫猫猫猫猫猫猫猫猫", 12).chars().count(), 12);
        let d = tempfile::tempdir().unwrap();
        let names = vec!["écureuil roux d'Europe, très long".to_string(), "猫".repeat(20)];
        confusion(&d.path().join("c.png"), &[vec![3, 1], vec![0, 4]], &names).unwrap();
        assert!(d.path().join("c.png").is_file());
    }
}
