//! Fetching dataset files: streamed to `<name>.part` with a progress bar, checked against
//! the published checksum, then renamed into place. A failed or corrupt download never
//! leaves a file under the final name.

use std::io::{Read, Write};
use std::path::Path;

use crate::progress;
use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};

/// A published checksum of a file, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(&'static str),
    /// Where the dataset's authors publish only MD5 (MNIST, Fashion-MNIST).
    Md5(&'static str),
    /// The SHA-256 digest must start with these hex digits (a whole digest, or the prefix
    /// that torchvision's weight file names carry: `vgg16-397923af.pth`).
    Sha256Prefix(String),
}

impl Checksum {
    fn hasher(&self) -> Hasher {
        match self {
            Checksum::Sha256(_) | Checksum::Sha256Prefix(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
        }
    }
    fn expected(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Md5(h) => h,
            Checksum::Sha256Prefix(h) => h,
        }
    }
    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "SHA-256",
            Checksum::Sha256Prefix(_) => "SHA-256 (prefix)",
            Checksum::Md5(_) => "MD5",
        }
    }
    /// Whether a hex digest satisfies this checksum.
    pub fn matches(&self, digest: &str) -> bool {
        match self {
            Checksum::Sha256Prefix(p) => !p.is_empty() && digest.starts_with(&p.to_ascii_lowercase()),
            other => digest == other.expected(),
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Md5(Md5),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Md5(h) => h.update(bytes),
        }
    }
    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Md5(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The hex digest of a file already on disk.
pub fn file_digest(path: &Path, checksum: &Checksum) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.hex())
}

/// Downloads `url` to `dest`, verifying `checksum`. Shows a progress bar on a terminal.
pub fn fetch(url: &str, dest: &Path, checksum: Checksum) -> Result<()> {
    let checksum = &checksum;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let part = dest.with_file_name(format!(
        "{}.part",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let result = fetch_to(url, &part, checksum);
    match result {
        Ok(()) => std::fs::rename(&part, dest)
            .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn fetch_to(url: &str, part: &Path, checksum: &Checksum) -> Result<()> {
    tracing::info!("downloading {url}");
    let response = ureq::get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => {
            anyhow::anyhow!("download of {url} failed: HTTP status {code}")
        }
        other => anyhow::anyhow!("download of {url} failed: {other}"),
    })?;
    let total: Option<u64> =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bar = progress::bytes_bar(total, url);
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::create(part).with_context(|| format!("cannot create {}", part.display()))?;
    let mut hasher = checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    let mut got: u64 = 0;
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("download of {url} broke off after {got} bytes"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", part.display()))?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    file.sync_all().with_context(|| format!("cannot write {}", part.display()))?;
    if let Some(t) = total {
        if got != t {
            bail!("download of {url} is truncated: got {got} of {t} bytes");
        }
    }
    let digest = hasher.hex();
    if !checksum.matches(&digest) {
        bail!(
            "download of {url}: {} checksum mismatch: expected {}, got {digest} ({got} bytes); the file was not kept",
            checksum.algorithm(),
            checksum.expected()
        );
    }
    Ok(())
}
