//! COCO 2017 from its official archives: the instances files of
//! `annotations_trainval2017.zip` and the images of `train2017.zip` and `val2017.zip`,
//! each checked against its published MD5 (the sums the COCO tooling of PaddleDetection,
//! LVIS and others check), kept in the dataset's folder, and unpacked through
//! `<root>/coco.part/` into `<root>/` (each folder moved whole, in one rename), so that an
//! interrupted unpacking leaves no half-filled folder that a later run would take for the
//! set.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::CocoConfig;
use crate::data::download::{self, Checksum};
use crate::data::voc::merge_into;

/// One official archive: its file, MD5, address, and the members runner unpacks (a name
/// ending in `/` is a folder prefix).
pub struct Archive {
    pub file: &'static str,
    pub md5: &'static str,
    pub base_url: &'static str,
    pub members: &'static [&'static str],
}

pub const ARCHIVES: [Archive; 3] = [
    Archive {
        file: "annotations_trainval2017.zip",
        md5: "f4bbac642086de4f52a3fdda2de5fa2c",
        base_url: "http://images.cocodataset.org/annotations/",
        members: &["annotations/instances_train2017.json", "annotations/instances_val2017.json"],
    },
    Archive {
        file: "val2017.zip",
        md5: "442b8da7639aecaf257c1dceb8ba8c80",
        base_url: "http://images.cocodataset.org/zips/",
        members: &["val2017/"],
    },
    Archive {
        file: "train2017.zip",
        md5: "cced6f7f71b7629ddf16f17bbcfab6b2",
        base_url: "http://images.cocodataset.org/zips/",
        members: &["train2017/"],
    },
];

/// The archive that brings `path` (a file or a folder under the dataset's root).
fn archive_of(path: &str) -> Option<&'static Archive> {
    let folder = format!("{}/", path.trim_end_matches('/'));
    ARCHIVES.iter().find(|a| a.members.iter().any(|m| *m == path || *m == folder))
}

/// The archives that bring what `cfg` names and `root` lacks, each once; an error when
/// `cfg` names files no official archive holds (only COCO 2017's train and val are fetched).
pub fn archives_for(root: &Path, cfg: &CocoConfig) -> Result<Vec<&'static Archive>> {
    let mut out: Vec<&'static Archive> = Vec::new();
    for (key, split) in [("train", &cfg.train), ("test", &cfg.test)] {
        for (what, path, present) in [
            ("json", &split.json, root.join(&split.json).is_file()),
            ("images", &split.images, root.join(&split.images).is_dir()),
        ] {
            if present {
                continue;
            }
            let a = archive_of(path).with_context(|| {
                format!(
                    "data.coco.{key}.{what} = {path:?}: no official COCO 2017 archive holds it (download = true fetches \
                     annotations/instances_{{train,val}}2017.json, train2017/ and val2017/)"
                )
            })?;
            if !out.iter().any(|o| o.file == a.file) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Whether `cfg` names only what the official archives hold (for the plan).
pub fn downloadable(cfg: &CocoConfig) -> Result<()> {
    for split in [&cfg.train, &cfg.test] {
        for path in [&split.json, &split.images] {
            if archive_of(path).is_none() {
                bail!(
                    "{path:?} is in no official COCO 2017 archive; download = true fetches COCO 2017's train and val"
                );
            }
        }
    }
    Ok(())
}

/// Fetches each `(file, checksum, base address)` into `root` (kept for later) unless it is
/// there, and unpacks the members runner reads into `root`.
pub fn download(root: &Path, archives: &[(&str, Checksum, &str)]) -> Result<()> {
    let staging = root.join("coco.part");
    for (file, checksum, base) in archives {
        let path = root.join(file);
        if !path.is_file() {
            download::fetch(&format!("{}/{file}", base.trim_end_matches('/')), &path, checksum.clone())?;
        }
        let members = ARCHIVES.iter().find(|a| a.file == *file).map(|a| a.members).unwrap_or(&[]);
        extract(&path, members, &staging)?;
    }
    if staging.exists() {
        merge_into(&staging, root)?;
    }
    Ok(())
}

/// Unpacks the members of the zip `archive` that `members` names into `dest`. Members whose
/// path would leave `dest` are refused.
fn extract(archive: &Path, members: &[&str], dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a zip archive", archive.display()))?;
    let mut count = 0usize;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).with_context(|| format!("{}: corrupt archive", archive.display()))?;
        let name =
            entry.name().with_context(|| format!("{}: a member's name is unreadable", archive.display()))?.to_string();
        let wanted = members.iter().any(|m| if m.ends_with('/') { name.starts_with(m) } else { name == *m });
        if entry.is_dir() || !wanted {
            continue;
        }
        let Some(rel) = entry.enclosed_name() else {
            bail!("{}: member {name} leaves the archive's folder", archive.display());
        };
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut out = std::fs::File::create(&target).with_context(|| format!("cannot write {}", target.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("{}: cannot extract {name}", archive.display()))?;
        count += 1;
        if count.is_multiple_of(20_000) {
            tracing::info!("{}: {count} files extracted", archive.display());
        }
    }
    if count == 0 {
        bail!("{}: none of {members:?} in it", archive.display());
    }
    tracing::info!("{}: extracted {count} files", archive.display());
    Ok(())
}
