//! TensorBoard's event files, written by hand: a run's `tb/events.out.tfevents.<start>.runner`
//! holds every scalar of `metrics.parquet` (tag `<split>/<metric>`, per-class values
//! `<split>/<metric>/<class>`) at its optimizer step and wall time, the resolved config as
//! text (tag `config`), and the run's plots as images (tag `plots/<name>`) after each
//! evaluated epoch. `tensorboard --logdir runs` shows them.
//!
//! The format: TFRecord framing (a little-endian u64 length, its masked CRC-32C, the
//! bytes, their masked CRC-32C) around `tensorflow.Event` protobuf messages, the first one
//! `file_version = "brain.Event:2"`, encoded with `crate::protobuf`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::MetricRow;
use crate::protobuf::Proto;

/// CRC-32C (Castagnoli), reflected, as TFRecord uses it.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 and offset, so that a CRC of CRCs differs.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One `Summary.Value`'s content.
pub enum Value<'a> {
    Scalar(f32),
    /// Markdown, shown by TensorBoard's text plugin.
    Text(&'a str),
    /// An encoded PNG of `[height, width]` pixels.
    Png(&'a [u8], [u32; 2]),
}

/// An `Event` with one summary value: `tag`, at `step` and `wall_time` (seconds since 1970).
fn event(wall_time: f64, step: i64, tag: &str, value: &Value) -> Vec<u8> {
    let mut v = Proto::default();
    v.bytes(1, tag.as_bytes()); // Summary.Value.tag
    match value {
        Value::Scalar(x) => v.float(2, *x), // simple_value
        Value::Text(text) => {
            // metadata.plugin_data.plugin_name = "text"; tensor = a scalar DT_STRING.
            let mut plugin = Proto::default();
            plugin.bytes(1, b"text");
            let mut meta = Proto::default();
            meta.message(1, plugin);
            v.message(9, meta);
            let mut tensor = Proto::default();
            tensor.int(1, 7); // dtype DT_STRING
            tensor.message(2, Proto::default()); // tensor_shape: a scalar
            tensor.bytes(8, text.as_bytes()); // string_val
            v.message(8, tensor);
        }
        Value::Png(png, [h, w]) => {
            let mut image = Proto::default();
            image.int(1, *h as i64);
            image.int(2, *w as i64);
            image.int(3, colorspace(png)); // 1 grey, 3 RGB, 4 RGBA
            image.bytes(4, png); // encoded_image_string
            v.message(4, image);
        }
    }
    let mut summary = Proto::default();
    summary.message(1, v);
    let mut e = Proto::default();
    e.double(1, wall_time);
    e.int(2, step);
    e.message(5, summary);
    e.0
}

fn file_version(wall_time: f64) -> Vec<u8> {
    let mut e = Proto::default();
    e.double(1, wall_time);
    e.bytes(3, b"brain.Event:2");
    e.0
}

/// Appends one TFRecord holding `data` to `out`.
fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// A run's event file and how many of its metric rows it holds.
#[derive(Debug, Clone)]
pub struct EventLog {
    started_s: f64,
    /// Metric rows already in the file; `None`: the file is to be written anew.
    written: Option<usize>,
}

impl EventLog {
    /// The event file of a run that started at `started_s` (seconds since 1970).
    pub fn new(started_s: f64) -> EventLog {
        EventLog { started_s, written: None }
    }

    /// The file in the run folder `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join("tb").join(format!("events.out.tfevents.{}.runner", self.started_s as u64))
    }

    /// The next write starts the file again (rows were removed: a resumed run, an eval).
    pub fn rewrite(&mut self) {
        self.written = None;
    }

    /// Brings the file up to `rows`: appends the rows it lacks (and, when one of them is a
    /// test row, the plots in `plots` at their step), or writes it anew with the config's
    /// text first. The new file goes through a temporary one renamed into place.
    pub fn sync(&mut self, dir: &Path, rows: &[MetricRow], config: Option<&str>, plots: &Path) -> Result<()> {
        let result = self.write(dir, rows, config, plots);
        if result.is_err() {
            // A part of a record may have landed: the next sync writes the file anew.
            self.written = None;
        }
        result
    }

    fn write(&mut self, dir: &Path, rows: &[MetricRow], config: Option<&str>, plots: &Path) -> Result<()> {
        let path = self.path(dir);
        let from = self.written.unwrap_or(0).min(rows.len());
        let new = &rows[from..];
        if new.is_empty() && self.written.is_some() {
            return Ok(());
        }
        let mut out = Vec::new();
        if self.written.is_none() {
            record(&mut out, &file_version(self.started_s));
            if let Some(text) = config {
                let md = format!("```toml\n{text}\n```");
                record(&mut out, &event(self.started_s, 0, "config", &Value::Text(&md)));
            }
        }
        for r in new {
            let tag = match &r.class {
                Some(c) => format!("{}/{}/{c}", r.split, r.metric),
                None => format!("{}/{}", r.split, r.metric),
            };
            record(&mut out, &event(self.started_s + r.wall_time_s, r.step, &tag, &Value::Scalar(r.value as f32)));
        }
        if let Some(last) = new.iter().filter(|r| r.split == "test").max_by_key(|r| r.step) {
            for (name, png) in plot_files(plots) {
                if let Some(size) = png_size(&png) {
                    let tag = format!("plots/{name}");
                    record(
                        &mut out,
                        &event(self.started_s + last.wall_time_s, last.step, &tag, &Value::Png(&png, size)),
                    );
                }
            }
        }
        let tb = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(tb).with_context(|| format!("cannot create {}", tb.display()))?;
        if self.written.is_none() {
            super::atomic_write(&path, |tmp| {
                std::fs::write(tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))
            })?;
        } else {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot append to {}", path.display()))?;
            f.write_all(&out).with_context(|| format!("cannot append to {}", path.display()))?;
        }
        self.written = Some(rows.len());
        Ok(())
    }
}

/// The PNG files of `dir` by file stem, sorted.
fn plot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), std::fs::read(&p).ok()?)))
        .collect();
    out.sort();
    out
}

/// TensorBoard's colorspace of a PNG, from its IHDR colour type.
fn colorspace(png: &[u8]) -> i64 {
    match png.get(25) {
        Some(0) => 1,
        Some(4) => 2,
        Some(6) => 4,
        _ => 3,
    }
}

/// A PNG's `[height, width]` from its IHDR chunk.
fn png_size(png: &[u8]) -> Option<[u32; 2]> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some([h, w])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_the_standard_check_string() {
        // The CRC-32C catalogue's check value: crc32c("123456789") = 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
