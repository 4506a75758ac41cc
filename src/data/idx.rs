//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or raw.
//!
//! A file is a big-endian header: two zero bytes, a type code (0x08 = unsigned byte), the
//! number of dimensions, one u32 per dimension; then the data. Images are `idx3` (count,
//! rows, cols) with magic 0x00000803; labels are `idx1` (count) with magic 0x00000801.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Images as bytes, row-major `[count, rows, cols]`.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads a whole file, un-gzipping when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt or truncated gzip data", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(bytes: &[u8], path: &Path, dims: usize) -> Result<Vec<usize>> {
    let magic = 0x0800 + dims as u32;
    let len = 4 + 4 * dims;
    if bytes.len() < 4 {
        bail!("{}: too short for an IDX header ({} bytes)", path.display(), bytes.len());
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        bail!(
            "{}: bad IDX magic number {found:#010x}, expected {magic:#010x} ({})",
            path.display(),
            if dims == 3 { "unsigned-byte images" } else { "unsigned-byte labels" }
        );
    }
    if bytes.len() < len {
        bail!("{}: too short for an IDX header ({} bytes)", path.display(), bytes.len());
    }
    Ok((0..dims).map(|d| word(4 + 4 * d) as usize).collect())
}

pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let dims = header(bytes, path, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let expected = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .with_context(|| format!("{}: header sizes overflow: {count}x{rows}x{cols}", path.display()))?;
    let body = &bytes[16..];
    if body.len() != expected {
        bail!(
            "{}: header says {count} images of {rows}x{cols} ({expected} bytes) but the file holds {} bytes of pixels{}",
            path.display(),
            body.len(),
            if body.len() < expected { " (truncated?)" } else { "" }
        );
    }
    Ok(IdxImages { count, rows, cols, pixels: body.to_vec() })
}

pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let dims = header(bytes, path, 1)?;
    let body = &bytes[8..];
    if body.len() != dims[0] {
        bail!(
            "{}: header says {} labels but the file holds {}{}",
            path.display(),
            dims[0],
            body.len(),
            if body.len() < dims[0] { " (truncated?)" } else { "" }
        );
    }
    Ok(body.to_vec())
}

/// Encodes images in IDX format (for tests and generated datasets).
pub fn encode_images(count: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    for w in [0x0803u32, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels in IDX format (for tests and generated datasets).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&0x0801u32.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = Path::new("x.idx");
        let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let img = parse_images(&encode_images(2, 3, 4, &px), p).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels, px);
        assert_eq!(parse_labels(&encode_labels(&[3, 1, 4]), p).unwrap(), vec![3, 1, 4]);

        let mut truncated = encode_images(2, 3, 4, &px);
        truncated.pop();
        let e = parse_images(&truncated, p).unwrap_err().to_string();
        assert!(e.contains("x.idx") && e.contains("truncated"), "{e}");

        let e = parse_images(&encode_labels(&[1]), p).unwrap_err().to_string();
        assert!(e.contains("bad IDX magic number 0x00000801"), "{e}");

        let e = parse_labels(&[0, 0, 8, 1, 0], p).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }
}
