//! ImageNet-style image folders: `root/<split>/<class>/<image>` with JPEG and PNG files,
//! class names from the folder names, sorted. Images are decoded when a batch needs them,
//! greyscale or colour, into the configured number of channels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// A split's listing: class names (sorted folder names) and `(file, class index)` for every
/// image, in order.
pub struct Listing {
    pub classes: Vec<String>,
    pub files: Vec<(PathBuf, u32)>,
}

pub fn scan(dir: &Path) -> Result<Listing> {
    let mut classes: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read image folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!("{}: no class folders (expected {}/<class>/<image>)", dir.display(), dir.display());
    }
    let mut files = Vec::new();
    for (i, (name, path)) in classes.iter().enumerate() {
        let mut images: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read class folder {}", path.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .map(|x| EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str()))
                    .unwrap_or(false)
            })
            .collect();
        images.sort();
        if images.is_empty() {
            bail!("{}: class folder `{name}` holds no .jpg, .jpeg or .png images", path.display());
        }
        files.extend(images.into_iter().map(|p| (p, i as u32)));
    }
    Ok(Listing { classes: classes.into_iter().map(|(n, _)| n).collect(), files })
}

/// The most pixels an image may declare: `RUNNER_MAX_IMAGE_PIXELS`, by default PIL's
/// decompression-bomb limit (2 x 89,478,485). A header declaring more is refused before
/// anything is allocated.
pub fn max_image_pixels() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("RUNNER_MAX_IMAGE_PIXELS").ok().and_then(|v| v.parse().ok()).unwrap_or(2 * 89_478_485)
    })
}

/// Decodes an image into planar `[channels, h, w]` bytes (1 = grey, 3 = RGB).
pub fn decode(path: &Path, channels: usize) -> Result<(Vec<u8>, usize, usize)> {
    let unreadable = || format!("{}: not a readable JPEG or PNG image (corrupt or truncated?)", path.display());
    let (w, h) = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_dimensions()
        .with_context(unreadable)?;
    let limit = max_image_pixels();
    if w as u64 * h as u64 > limit {
        anyhow::bail!(
            "{}: declares {w}x{h} pixels, more than the limit of {limit} (RUNNER_MAX_IMAGE_PIXELS raises it)",
            path.display()
        );
    }
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .decode()
        .with_context(unreadable)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let interleaved = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    let mut planar = vec![0u8; interleaved.len()];
    for (p, px) in interleaved.chunks(channels).enumerate() {
        for (c, v) in px.iter().enumerate() {
            planar[c * h * w + p] = *v;
        }
    }
    Ok((planar, h, w))
}
