//! COCO's segmentations as pixel masks, decoded as pycocotools' `annToMask` decodes them:
//! a polygon (or a list of polygons) is rasterised by its `rleFrPoly` (the outline traced
//! at 5x, then the pixel centres under it), an RLE's counts alternate 0 and 1 runs down
//! the columns (column-major), and the compressed RLE string is its 6-bits-per-character
//! code with each count after the second stored as the difference to the count two before.
//! The rules are pycocotools' (`common/maskApi.c`), written again here; the tests compare
//! every pixel with `annToMask` on generated polygons and RLEs.

use serde_json::Value;

/// Run lengths down the columns of an `h x w` mask, starting with a run of 0s.
struct Rle {
    counts: Vec<u32>,
}

/// `rleFrPoly`: the polygon `xy` (x0, y0, x1, y1, ...) in an `h x w` image.
fn rle_from_polygon(xy: &[f64], h: usize, w: usize) -> Rle {
    let scale = 5.0;
    let k = xy.len() / 2;
    // C's `(int)(v + .5)`: truncation toward zero.
    let x: Vec<i64> = (0..=k).map(|j| (scale * xy[(j % k) * 2] + 0.5) as i32 as i64).collect();
    let y: Vec<i64> = (0..=k).map(|j| (scale * xy[(j % k) * 2 + 1] + 0.5) as i32 as i64).collect();
    // The outline, densely: one point per step along the longer axis of each edge.
    let (mut u, mut v) = (Vec::new(), Vec::new());
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let (dx, dy) = ((xe - xs).abs(), (ys - ye).abs());
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        if dx >= dy {
            let s = if dx == 0 { 0.0 } else { (ye - ys) as f64 / dx as f64 };
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push((ys as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        }
    }
    // Where the outline crosses a pixel column's centre: the first pixel below it.
    let mut starts: Vec<u64> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
        let xd = (xd + 0.5) / scale - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
            continue;
        }
        let yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
        let yd = ((yd + 0.5) / scale - 0.5).clamp(0.0, h as f64).ceil();
        starts.push(xd as u64 * h as u64 + yd as u64);
    }
    starts.push((h * w) as u64);
    starts.sort_unstable();
    // Differences, zero-length runs folded into the run after them.
    let mut prev = 0;
    let diffs: Vec<u64> = starts
        .iter()
        .map(|&a| {
            let d = a - prev;
            prev = a;
            d
        })
        .collect();
    let mut counts: Vec<u32> = vec![diffs[0] as u32];
    let mut j = 1;
    while j < diffs.len() {
        if diffs[j] > 0 {
            counts.push(diffs[j] as u32);
            j += 1;
        } else {
            j += 1;
            if j < diffs.len() {
                if let Some(last) = counts.last_mut() {
                    *last += diffs[j] as u32;
                }
                j += 1;
            }
        }
    }
    Rle { counts }
}

/// `rleFrString`: the compressed counts of COCO's JSON.
fn rle_from_string(s: &str) -> Result<Rle, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k, mut more) = (0i64, 0u32, true);
        while more {
            let Some(&b) = bytes.get(p) else {
                return Err("the compressed counts end inside a number".into());
            };
            let c = b as i64 - 48;
            if !(0..64).contains(&c) {
                return Err(format!("{:?} is not a character of COCO's compressed RLE", b as char));
            }
            x |= (c & 0x1f) << (5 * k);
            more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more && (c & 0x10) != 0 {
                x |= -1i64 << (5 * k);
            }
        }
        if counts.len() > 2 {
            x += counts[counts.len() - 2] as i64;
        }
        if x < 0 {
            return Err("the compressed counts decode to a negative run".into());
        }
        counts.push(x as u32);
    }
    Ok(Rle { counts })
}

/// The RLE's pixels, row-major `h x w` (0 or 1), or'ed into `out`.
fn paint(rle: &Rle, h: usize, w: usize, out: &mut [u8]) -> Result<(), String> {
    let total: u64 = rle.counts.iter().map(|&c| c as u64).sum();
    if total != (h * w) as u64 {
        return Err(format!("the counts cover {total} pixels, the {w}x{h} image has {}", h * w));
    }
    let mut pos = 0usize;
    for (k, &c) in rle.counts.iter().enumerate() {
        if k % 2 == 1 {
            for q in pos..pos + c as usize {
                // Column-major position q: column q / h, row q % h.
                out[(q % h) * w + q / h] = 1;
            }
        }
        pos += c as usize;
    }
    Ok(())
}

/// An annotation's `segmentation` as a row-major `h x w` mask of 0 and 1, as
/// `COCO.annToMask` gives it: polygons (a list of `[x0, y0, x1, y1, ...]`, united), an
/// uncompressed RLE (`{"counts": [..], "size": [h, w]}`) or a compressed one (`counts` a
/// string). An RLE of another size than the image is an error.
pub fn segmentation_mask(seg: &Value, h: usize, w: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; h * w];
    match seg {
        Value::Array(polys) => {
            for (k, p) in polys.iter().enumerate() {
                let xy: Vec<f64> = p
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                    .ok_or_else(|| format!("polygon {k} is not a list of numbers"))?;
                if xy.len() < 6 || !xy.len().is_multiple_of(2) {
                    return Err(format!("polygon {k} has {} numbers (at least 3 points, x y pairs)", xy.len()));
                }
                paint(&rle_from_polygon(&xy, h, w), h, w, &mut out)?;
            }
        }
        Value::Object(rle) => {
            let size: Vec<u64> = rle
                .get("size")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            if size != [h as u64, w as u64] {
                return Err(format!("the RLE's size is {size:?}, the image is [{h}, {w}]"));
            }
            let rle = match rle.get("counts") {
                Some(Value::String(s)) => rle_from_string(s)?,
                Some(Value::Array(c)) => Rle {
                    counts: c
                        .iter()
                        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                        .collect::<Option<Vec<u32>>>()
                        .ok_or("the RLE's counts are not whole numbers")?,
                },
                _ => return Err("the RLE has no counts".into()),
            };
            paint(&rle, h, w, &mut out)?;
        }
        _ => return Err("segmentation is neither a list of polygons nor an RLE".into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_runs_go_down_the_columns() {
        // A 2x3 image; counts 1 0, 2 1, 3 0: column-major positions 1-2 are set, i.e.
        // (row 1, col 0) and (row 0, col 1).
        let m = segmentation_mask(&serde_json::json!({"counts": [1, 2, 3], "size": [2, 3]}), 2, 3).unwrap();
        assert_eq!(m, vec![0, 1, 0, 1, 0, 0]);
        let e = segmentation_mask(&serde_json::json!({"counts": [1, 2], "size": [2, 3]}), 2, 3).unwrap_err();
        assert!(e.contains("cover 3 pixels"), "{e}");
    }

    #[test]
    fn compressed_counts_decode_with_the_differences() {
        // pycocotools' encode of counts [1, 2, 3, 5] (an 11x1 mask with rows 1-2 and 6-10
        // set): the first three as they are, then 5 - 2 = 3: "1233".
        let r = rle_from_string("1233").unwrap();
        assert_eq!(r.counts, vec![1, 2, 3, 5]);
        assert!(rle_from_string("1\u{7f}").is_err());
    }

    #[test]
    fn an_axis_aligned_square_covers_its_pixel_centres() {
        // The square [1, 3] x [1, 3] covers pixels 1-2 in both directions (pycocotools'
        // `decode(merge(frPyObjects(...)))` gives the same).
        let m = segmentation_mask(&serde_json::json!([[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]), 4, 4).unwrap();
        let want = [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]];
        assert_eq!(m, want.concat());
    }
}
