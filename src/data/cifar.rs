//! CIFAR's binary version: files of 3,073-byte records, a label byte then 32x32 red, green
//! and blue planes (Krizhevsky, 2009). The archive is a gzipped tar; only the named member
//! files are extracted, so nothing in it can write outside the dataset folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Split;

pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads and concatenates batch files into one split.
pub fn read_split(paths: &[PathBuf], classes: usize) -> Result<Split> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            bail!(
                "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR records (truncated or not CIFAR-10 binary?)",
                path.display(),
                bytes.len()
            );
        }
        for (i, rec) in bytes.chunks(RECORD).enumerate() {
            if rec[0] as usize >= classes {
                bail!("{}: record {i} has label {}, outside 0..{classes}", path.display(), rec[0]);
            }
            labels.push(rec[0] as u32);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Split { len: labels.len(), pixels, labels, ..Default::default() })
}

/// Extracts `members` (paths inside the archive) from a `.tar.gz` into `dir`, each written
/// through a temporary name. A member missing from the archive is an error naming it.
pub fn extract(archive: &Path, dir: &Path, members: &[String]) -> Result<()> {
    let file = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = vec![false; members.len()];
    let entries = tar.entries().with_context(|| format!("{}: not a tar.gz archive", archive.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", archive.display()))?;
        let name = entry.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
        let Some(i) = members.iter().position(|m| *m == name) else { continue };
        let dest = dir.join(&members[i]);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let tmp = dest.with_extension("part");
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).with_context(|| format!("{}: corrupt member {name}", archive.display()))?;
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {}", tmp.display()))?;
        found[i] = true;
    }
    if let Some(i) = found.iter().position(|f| !f) {
        bail!("{}: the archive has no member {}", archive.display(), members[i]);
    }
    Ok(())
}

/// Encodes records (for tests and generated datasets): `(label, 3x32x32 pixels)`.
pub fn encode(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD);
    for (label, px) in records {
        out.push(*label);
        out.extend_from_slice(px);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_errors() {
        let dir = std::env::temp_dir().join(format!("runner-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let px: Vec<u8> = (0..3072).map(|i| (i % 251) as u8).collect();
        let a = dir.join("a.bin");
        std::fs::write(&a, encode(&[(3, px.clone()), (9, px.clone())])).unwrap();
        let s = read_split(&[a.clone(), a.clone()], 10).unwrap();
        assert_eq!((s.len, s.labels.clone()), (4, vec![3, 9, 3, 9]));
        assert_eq!(&s.pixels[..3072], &px[..]);

        let bad = dir.join("bad.bin");
        std::fs::write(&bad, &encode(&[(3, px.clone())])[..3000]).unwrap();
        let e = read_split(&[bad], 10).unwrap_err().to_string();
        assert!(e.contains("bad.bin") && e.contains("3000 bytes"), "{e}");
        let e = read_split(&[a], 3).unwrap_err().to_string();
        assert!(e.contains("record 0 has label 3"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
