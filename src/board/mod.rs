//! `runner board`: one local web page over run folders: the runs table, curves of any
//! metric for the selected runs (updating while a run trains), and a run's config and plots.
//!
//! The server only reads. Each request finds the run folders under the given roots again,
//! so runs written while the page is open appear. A run is named by a key, its folder
//! relative to its root with the root's index in front (`0/lenet5_fashion_mnist/2026...`),
//! and requests are answered by looking the key up among the folders found, never by
//! joining a requested path onto a folder: nothing outside the runs can be named. A run's
//! files are those listed in its folder (`config.toml`, `plots/*.png`), each checked after
//! resolving links to lie inside the run folder. A run whose tables cannot be read is a row
//! with its error.
//!
//! A run's predictions (`predictions.rs`) come from its task's table; the test images
//! shown beside them from its dataset where that is on disk, named by their index in the
//! split, read once per dataset.
//!
//! The page and its script are embedded in the binary (`index.html`, no CDN).

mod http;
mod predictions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compare;
use crate::runlog::{files, RunLog};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The page: HTML, CSS and its main script.
const INDEX: &str = include_str!("index.html");
/// The run page's predictions and the sweep view.
const PREDICTIONS_JS: &str = include_str!("predictions.js");

/// An answer: status code, content type and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(v: &Value) -> Reply {
        Reply { status: 200, content_type: "application/json", body: v.to_string().into_bytes() }
    }
    fn error(status: u16, msg: &str) -> Reply {
        let body = json!({ "error": msg }).to_string().into_bytes();
        Reply { status, content_type: "application/json", body }
    }
}

/// The folders the board shows.
pub struct Board {
    roots: Vec<PathBuf>,
    datasets: predictions::Datasets,
}

impl Board {
    pub fn new(roots: Vec<PathBuf>) -> Result<Board> {
        for r in &roots {
            if !r.is_dir() {
                anyhow::bail!("{}: no such folder (give folders holding run folders, e.g. runs/)", r.display());
            }
        }
        Ok(Board { roots, datasets: predictions::Datasets::default() })
    }

    /// Every run folder under the roots, with its key.
    fn runs(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for (i, root) in self.roots.iter().enumerate() {
            for dir in compare::run_dirs(root) {
                let rel = dir.strip_prefix(root).unwrap_or(&dir);
                let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push((format!("{i}/{}", rel.join("/")).trim_end_matches('/').to_string(), dir));
            }
        }
        out
    }

    /// The folder of the run named `key`, if there is one.
    fn find(&self, key: &str) -> Option<PathBuf> {
        self.runs().into_iter().find(|(k, _)| k == key).map(|(_, d)| d)
    }

    /// Answers a GET of `target` (path and query, as sent).
    pub fn handle(&self, target: &str) -> Reply {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let q = parse_query(query);
        let run = || -> std::result::Result<(String, PathBuf), Reply> {
            let key = q.get("run").ok_or_else(|| Reply::error(400, "missing ?run="))?;
            let dir = self.find(key).ok_or_else(|| Reply::error(404, &format!("no run {key:?}")))?;
            Ok((key.clone(), dir))
        };
        let result = match path {
            "/" | "/index.html" => {
                return Reply { status: 200, content_type: "text/html; charset=utf-8", body: INDEX.as_bytes().to_vec() }
            }
            "/predictions.js" => {
                let body = PREDICTIONS_JS.as_bytes().to_vec();
                return Reply { status: 200, content_type: "text/javascript; charset=utf-8", body };
            }
            "/api/runs" => Ok(Reply::json(&self.runs_json())),
            "/api/metrics" => run().map(|(key, dir)| match metrics_json(&dir) {
                Ok(v) => Reply::json(&v),
                Err(e) => Reply::error(500, &format!("{key}: {e:#}")),
            }),
            "/api/predictions" => run().map(|(key, dir)| {
                let from = q.get("from").and_then(|f| f.parse().ok()).unwrap_or(0);
                match predictions::predictions(&dir, &self.datasets.get(&dir), from) {
                    Ok(v) => Reply::json(&v),
                    Err(e) => Reply::error(500, &format!("{key}: {e:#}")),
                }
            }),
            "/api/image" => run().and_then(|(key, dir)| {
                let sample = q
                    .get("sample")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Reply::error(400, "missing &sample=N"))?;
                Ok(
                    match predictions::image(&self.datasets.get(&dir), sample, q.get("mask").is_some_and(|m| m == "1"))
                    {
                        Ok((content_type, body)) => Reply { status: 200, content_type, body },
                        Err(e) => Reply::error(404, &format!("{key}: {e:#}")),
                    },
                )
            }),
            // A mask to lay over its image: a predicted one (`name=masks/...`, a file of the
            // run) or the true one of `sample`, its background transparent.
            "/api/overlay" => run().map(|(key, dir)| {
                let png = match (q.get("name"), q.get("sample").and_then(|s| s.parse().ok())) {
                    (Some(name), _) if !name.starts_with("masks/") => {
                        return Reply::error(404, &format!("{name:?}: overlays are the run's masks/*.png"))
                    }
                    (Some(name), _) => match file(&dir, name) {
                        r if r.status != 200 => return r,
                        r => Ok(r.body),
                    },
                    (None, Some(sample)) => predictions::image(&self.datasets.get(&dir), sample, true).map(|(_, b)| b),
                    (None, None) => return Reply::error(400, "missing &name=masks/... or &sample=N"),
                };
                match png.and_then(|b| predictions::clear_background(&b)) {
                    Ok(body) => Reply { status: 200, content_type: "image/png", body },
                    Err(e) => Reply::error(404, &format!("{key}: {e:#}")),
                }
            }),
            "/api/files" => run().map(|(_, dir)| Reply::json(&json!({ "files": files(&dir) }))),
            "/api/file" => run().map(|(_, dir)| match q.get("name") {
                None => Reply::error(400, "missing &name="),
                Some(name) => file(&dir, name),
            }),
            _ => Err(Reply::error(404, &format!("no page {path:?}"))),
        };
        result.unwrap_or_else(|e| e)
    }

    /// The runs table: one entry per run (an `error` where its tables cannot be read) and
    /// the parameter keys that differ between the readable runs.
    fn runs_json(&self) -> Value {
        let mut infos = Vec::new();
        let mut rows = Vec::new();
        for (key, dir) in self.runs() {
            match compare::read_run(&dir) {
                Ok(r) => {
                    rows.push(json!({
                        "key": key,
                        "experiment": r.experiment,
                        "run_id": r.run_id,
                        "status": r.status,
                        "sweep_id": r.sweep_id,
                        "started_at_us": r.started_at_us,
                        "finished_at_us": r.finished_at_us,
                        "params": r.params,
                        "finals": r.finals,
                    }));
                    infos.push(r);
                }
                Err(e) => rows.push(json!({ "key": key, "error": format!("{e:#}") })),
            }
        }
        json!({ "runs": rows, "differing": compare::differing_keys(&infos) })
    }
}

/// `metrics.parquet` as columns: epoch, step, split, metric, class, value, wall_time_s.
fn metrics_json(dir: &Path) -> Result<Value> {
    let log = RunLog::open(dir, None)?;
    let m = log.metrics();
    Ok(json!({
        "epoch": m.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        "step": m.iter().map(|r| r.step).collect::<Vec<_>>(),
        "split": m.iter().map(|r| r.split.as_str()).collect::<Vec<_>>(),
        "metric": m.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
        "class": m.iter().map(|r| r.class.as_deref()).collect::<Vec<_>>(),
        "value": m.iter().map(|r| r.value).collect::<Vec<_>>(),
        "wall_time_s": m.iter().map(|r| r.wall_time_s).collect::<Vec<_>>(),
    }))
}

/// The files of a run the board serves: `config.toml` and the PNGs under `plots/` and
/// `masks/`.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if dir.join(files::CONFIG).is_file() {
        out.push(files::CONFIG.to_string());
    }
    out.extend(pngs(dir, "plots"));
    out.extend(masks(dir));
    out
}

/// The predicted masks of a segmentation run: `masks/*.png`.
fn masks(dir: &Path) -> Vec<String> {
    pngs(dir, "masks")
}

/// `sub/NAME.png` for the PNGs in `dir/sub`, sorted.
fn pngs(dir: &Path, sub: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with(".png"))
        .map(|n| format!("{sub}/{n}"))
        .collect();
    out.sort();
    out
}

/// One of `files(dir)`, read after checking that, links resolved, it lies inside `dir`.
fn file(dir: &Path, name: &str) -> Reply {
    if !files(dir).iter().any(|f| f == name) {
        return Reply::error(404, &format!("no file {name:?} in this run"));
    }
    let path = dir.join(name);
    let inside = match (path.canonicalize(), dir.canonicalize()) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => false,
    };
    if !inside {
        return Reply::error(403, &format!("{name:?} points outside the run folder"));
    }
    match std::fs::read(&path) {
        Ok(body) => {
            let content_type = if name.ends_with(".png") { "image/png" } else { "text/plain; charset=utf-8" };
            Reply { status: 200, content_type, body }
        }
        Err(e) => Reply::error(500, &format!("{}: {e}", path.display())),
    }
}

/// `a=1&b=x%2Fy` -> {a: "1", b: "x/y"} (`+` is a space; a bad escape is kept as written).
fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the board on `host:port` until the process is stopped; prints its address.
pub fn serve(board: Board, host: &str, port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind((host, port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))
        .context("runner board")?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| format!("{host}:{port}"));
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        tracing::warn!("listening on {host}: other machines can read these runs (no password)");
    }
    let n = board.runs().len();
    let roots: Vec<String> = board.roots.iter().map(|r| r.display().to_string()).collect();
    println!("runner board: http://{addr}/ ({n} runs under {})", roots.join(", "));
    http::serve(listener, loopback, move |target| board.handle(target));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("run=0%2Fa%2Fb&name=plots/x.png&x=a+b&bad=%zz%4");
        assert_eq!(q["run"], "0/a/b");
        assert_eq!(q["name"], "plots/x.png");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz%4");
    }
}
