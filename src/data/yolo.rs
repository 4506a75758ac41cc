//! Ultralytics' YOLO layout: a split is a folder of images (`images/train/`), and each
//! image's labels are the text file at the same path with the last `images` folder named
//! `labels` and the extension `.txt` (`labels/train/a.txt`). One line per box:
//! `class cx cy w h`, the centre and size normalised to the image's width and height. An
//! image without a label file, or with an empty one, has no objects. The class names come
//! from `[data.yolo] classes` or the `names` of `data.yaml` in the dataset's folder.
//!
//! A box `cx cy w h` of a `W x H` image becomes runner's corners
//! `[(cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H]`, clipped to the image (label
//! files written with 6 decimals reach past an edge by up to a millionth of the image).

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::voc::{main_object, Object};
use super::{Split, NO_LABEL};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp"];

/// The images under `dir` (every level), sorted by path.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let p = e.with_context(|| format!("cannot read {}", dir.display()))?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str())) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// The label file of `image`: its last `images` folder named `labels`, extension `.txt`.
pub fn label_path(image: &Path) -> Option<PathBuf> {
    let parts: Vec<Component> = image.components().collect();
    let k = parts.iter().rposition(|c| c.as_os_str() == "images")?;
    let mut p = PathBuf::new();
    for (i, c) in parts.iter().enumerate() {
        p.push(if i == k { std::ffi::OsStr::new("labels") } else { c.as_os_str() });
    }
    Some(p.with_extension("txt"))
}

/// Parses a label file's text for an image of `[w, h]` pixels and `classes` classes. A
/// line that is not 5 numbers, a class out of range, or a box outside `[0, 1]` (1e-6 of
/// slack) is an error naming the line.
pub fn parse_labels(text: &str, size: [u32; 2], classes: usize) -> std::result::Result<Vec<Object>, String> {
    Ok(parse_boxes(text, size, classes)?.into_iter().map(|(class, bbox)| object(class, bbox)).collect())
}

fn object(class: usize, bbox: [f64; 4]) -> Object {
    Object { class: class as u32, bbox: bbox.map(|x| x as f32), difficult: false, truncated: false }
}

/// The boxes of `image` from its label file ([`parse_boxes`], the image's size from its
/// header); `None` where it has no label file. Errors name the label file and line.
pub fn read_boxes(image: &Path, classes: usize) -> Result<Option<Vec<ClassBox>>> {
    let Some(labels) = label_path(image).filter(|p| p.is_file()) else { return Ok(None) };
    let (w, h) =
        image::image_dimensions(image).with_context(|| format!("{}: not a readable image", image.display()))?;
    let text = std::fs::read_to_string(&labels).with_context(|| format!("cannot read {}", labels.display()))?;
    parse_boxes(&text, [w, h], classes).map(Some).map_err(|e| anyhow::anyhow!("{}: {e}", labels.display()))
}

/// A box: its class and corners `[x0, y0, x1, y1]` in pixels.
pub type ClassBox = (usize, [f64; 4]);

/// [`parse_labels`]' boxes as `(class, corners)` in f64.
pub fn parse_boxes(text: &str, [w, h]: [u32; 2], classes: usize) -> std::result::Result<Vec<ClassBox>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", n + 1);
        if fields.len() != 5 {
            return Err(at(format!(
                "{} numbers, expected 5 (class cx cy w h; polygon labels are not read)",
                fields.len()
            )));
        }
        let class: usize = fields[0].parse().map_err(|_| at(format!("class {:?} is not a whole number", fields[0])))?;
        if class >= classes {
            return Err(at(format!("class {class} is out of range (the set has {classes} classes)")));
        }
        let mut v = [0f64; 4];
        for (k, f) in fields[1..].iter().enumerate() {
            v[k] = f.parse().map_err(|_| at(format!("{f:?} is not a number")))?;
        }
        let [cx, cy, bw, bh] = v;
        let eps = 1e-6;
        let inside = v.iter().all(|x| x.is_finite())
            && bw > 0.0
            && bh > 0.0
            && cx - bw / 2.0 >= -eps
            && cy - bh / 2.0 >= -eps
            && cx + bw / 2.0 <= 1.0 + eps
            && cy + bh / 2.0 <= 1.0 + eps;
        if !inside {
            return Err(at(format!("box cx {cx} cy {cy} w {bw} h {bh} is empty or outside the image (0..1)")));
        }
        let (w, h) = (w as f64, h as f64);
        // Clipped to the image: rounded label files reach past an edge by a hair.
        let bbox = [
            ((cx - bw / 2.0) * w).max(0.0),
            ((cy - bh / 2.0) * h).max(0.0),
            ((cx + bw / 2.0) * w).min(w),
            ((cy + bh / 2.0) * h).min(h),
        ];
        out.push((class, bbox));
    }
    Ok(out)
}

/// The `names` of a `data.yaml`: a list (`names: [a, b]` or `- a` lines) or a map from
/// index to name (`0: a` lines, or `{0: a, 1: b}`).
pub fn parse_names(yaml: &str) -> std::result::Result<Vec<String>, String> {
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
    let mut lines = yaml.lines().enumerate().skip_while(|(_, l)| !l.starts_with("names:"));
    let Some((_, first)) = lines.next() else {
        return Err("no `names:` key".into());
    };
    let inline = first["names:".len()..].split('#').next().unwrap_or("").trim();
    let mut indexed: Vec<(usize, String)> = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    if !inline.is_empty() {
        let inner = inline
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .or_else(|| inline.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .ok_or_else(|| format!("names: {inline}: expected [a, b, ...] or {{0: a, ...}}"))?;
        for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once(':') {
                Some((k, v)) if inline.starts_with('{') => {
                    indexed.push((k.trim().parse().map_err(|_| format!("names: {k:?} is not an index"))?, unquote(v)))
                }
                _ => listed.push(unquote(item)),
            }
        }
    } else {
        for (n, line) in lines {
            if !line.starts_with([' ', '\t', '-']) || line.trim().is_empty() {
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                break;
            }
            let item = line.split(" #").next().unwrap_or("").trim();
            if let Some(name) = item.strip_prefix('-') {
                listed.push(unquote(name));
            } else if let Some((k, v)) = item.split_once(':') {
                let k = k.trim().parse().map_err(|_| format!("line {}: {k:?} is not an index", n + 1))?;
                indexed.push((k, unquote(v)));
            } else {
                return Err(format!("line {}: {item:?} is neither `- name` nor `index: name`", n + 1));
            }
        }
    }
    if !indexed.is_empty() {
        indexed.sort();
        if indexed.iter().enumerate().any(|(i, (k, _))| i != *k) {
            return Err("names: the indices are not 0, 1, 2, ...".into());
        }
        listed = indexed.into_iter().map(|(_, v)| v).collect();
    }
    if listed.is_empty() {
        return Err("names: lists no class".into());
    }
    Ok(listed)
}

/// The class names of a YOLO set in `root`: `classes` when given, else `data.yaml`'s.
pub fn class_names(root: &Path, classes: Option<&[String]>) -> Result<Vec<String>> {
    if let Some(c) = classes {
        return Ok(c.to_vec());
    }
    let path = root.join("data.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {} (the class names; or set [data.yolo] classes = [...])", path.display())
    })?;
    parse_names(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads the split whose images are in `dir`: a bad label file is an error naming it and
/// its line, or with `skip` its image is left out and counted.
pub fn read_split(dir: &Path, classes: usize, skip: bool) -> Result<Split> {
    let mut out = Split::default();
    let mut skipped = 0;
    let images = images_in(dir)?;
    if images.is_empty() {
        bail!("{}: no .jpg, .jpeg, .png or .bmp images", dir.display());
    }
    let mut labelled = 0;
    for image in images {
        let mut read = || -> Result<Vec<Object>> {
            let Some(boxes) = read_boxes(&image, classes)? else { return Ok(Vec::new()) };
            labelled += 1;
            Ok(boxes.into_iter().map(|(class, bbox)| object(class, bbox)).collect())
        };
        match read() {
            Ok(objects) => {
                out.labels.push(main_object(&objects).map_or(NO_LABEL, |k| objects[k].class));
                out.objects.push(objects);
                out.files.push(image);
            }
            Err(e) if skip => {
                if skipped == 0 {
                    tracing::warn!("skipped: {e:#}");
                }
                skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if skipped > 0 {
        tracing::warn!("{}: skipped {skipped} images with bad labels (the first is named above)", dir.display());
    }
    if labelled == 0 {
        tracing::warn!(
            "{}: no image has a label file (expected at the image's path with its last `images` folder named \
             `labels` and the extension .txt): every image is background",
            dir.display()
        );
    }
    out.len = out.files.len();
    out.mask_classes = classes;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_corners_in_pixels() {
        // A 200x100 image; a box centred at (0.5, 0.25) of size 0.2 x 0.5:
        // x 100 +- 20, y 25 +- 25 -> [80, 0, 120, 50].
        let o = parse_labels("1 0.5 0.25 0.2 0.5\n\n", [200, 100], 2).unwrap();
        assert_eq!(o, vec![Object { class: 1, bbox: [80.0, 0.0, 120.0, 50.0], difficult: false, truncated: false }]);
        for (text, want) in [
            ("0 0.5 0.5 0.1", "line 1: 4 numbers, expected 5"),
            ("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1", "line 2: class 2 is out of range (the set has 2 classes)"),
            ("0 0.95 0.5 0.2 0.1", "line 1: box cx 0.95 cy 0.5 w 0.2 h 0.1 is empty or outside"),
            ("x 0.5 0.5 0.1 0.1", "line 1: class \"x\" is not a whole number"),
        ] {
            let e = parse_labels(text, [200, 100], 2).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn names_in_every_form_of_data_yaml() {
        let want = vec!["cat".to_string(), "dog".to_string()];
        for yaml in [
            "path: .\nnames: [cat, 'dog']\n",
            "names:\n  - cat\n  - \"dog\"\ntrain: images/train\n",
            "names:\n  0: cat\n  1: dog # a comment\n",
            "nc: 2\nnames: {0: cat, 1: dog}\n",
        ] {
            assert_eq!(parse_names(yaml).unwrap(), want, "{yaml}");
        }
        assert!(parse_names("names:\n  0: cat\n  2: dog\n").unwrap_err().contains("not 0, 1, 2"));
        assert!(parse_names("train: a\n").unwrap_err().contains("no `names:`"));
    }

    #[test]
    fn labels_sit_beside_images_under_labels() {
        assert_eq!(label_path(Path::new("d/images/train/x/a.jpg")).unwrap(), Path::new("d/labels/train/x/a.txt"));
        assert_eq!(label_path(Path::new("d/images/images/a.png")).unwrap(), Path::new("d/images/labels/a.txt"));
        assert!(label_path(Path::new("d/pics/a.png")).is_none());
    }
}
