//! Loading an experiment: follow `extends`, merge the files with figment, then environment
//! variables (`RUNNER__SECTION__KEY=value`), then `--set key.path=value` overrides.
//!
//! Tables merge key by key and arrays replace. Errors are collected rather than stopped at:
//! every unknown key is reported at once with its path, the file (or override) it came from
//! and a "did you mean" where a known key is close.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::Config;
use crate::config::AugmentOp;

/// Prefix of environment variables that override config keys; `__` separates key parts:
/// `RUNNER__TRAIN__EPOCHS=3` sets `train.epochs`.
pub const ENV_PREFIX: &str = "RUNNER__";

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `key.path=value` overrides, applied last, in order.
    pub sets: Vec<String>,
    /// Read `RUNNER__*` environment variables.
    pub env: bool,
}

/// A loaded experiment: the typed config and what it was made from.
pub struct Loaded {
    pub config: Config,
    /// The experiment file as named by the user.
    pub path: PathBuf,
    /// Every file merged, in merge order (extended files first, the experiment last).
    pub files: Vec<PathBuf>,
    pub sets: Vec<String>,
    figment: Figment,
}

/// Everything wrong with a config, reported together.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the config:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn one_problem(msg: String) -> ConfigError {
    ConfigError { problems: vec![msg] }
}

/// Loads `path` with its `extends` chain and the overrides in `opts`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    collect_extends(path, None, &mut Vec::new(), &mut files)?;

    let mut figment = Figment::new();
    for file in &files {
        figment = figment.merge(Toml::file_exact(file));
    }
    if opts.env {
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    }
    for raw in &opts.sets {
        figment = figment.merge(SetOverride::parse(raw)?);
    }

    let mut value = figment.find_value("").map_err(|e| one_problem(format!("{}: {e}", path.display())))?;
    one_optimizer(&figment, &mut value, &files)?;
    let mut config = deserialize_reporting_all(&figment, &mut value)?;
    config.metrics.fill_defaults(&config.task);
    if config.task.reads_masks() && config.data.dataset == super::DatasetKind::Voc {
        config.data.voc.get_or_insert_with(Default::default).masks.get_or_insert(true);
    }
    if config.task.reads_masks() && config.data.dataset == super::DatasetKind::Coco {
        config.data.coco.get_or_insert_with(Default::default).masks.get_or_insert(true);
    }
    Ok(Loaded { config, path: path.to_path_buf(), files, sets: opts.sets.clone(), figment })
}

/// `[train] optimizer` names one optimizer. Tables merge key by key, so an experiment that
/// sets `optimizer = { adam = ... }` over an extended file's `{ sgd = ... }` would hold
/// both: the optimizer of the latest source (file in merge order, then the environment,
/// then `--set`) replaces the earlier ones. Two optimizers from the same source are an
/// error naming them.
fn one_optimizer(figment: &Figment, value: &mut Value, files: &[PathBuf]) -> Result<(), ConfigError> {
    let Value::Dict(_, root) = value else { return Ok(()) };
    let Some(Value::Dict(_, train)) = root.get_mut("train") else { return Ok(()) };
    let Some(Value::Dict(_, opt)) = train.get_mut("optimizer") else { return Ok(()) };
    if opt.len() < 2 {
        return Ok(());
    }
    // Where each named optimizer was set: its place in the merge order and a description.
    let rank = |v: &Value| -> (usize, String) {
        match figment.get_metadata(v.tag()) {
            Some(md) => {
                let r = match &md.source {
                    Some(Source::File(p)) => files.iter().position(|f| f == p).unwrap_or(0),
                    Some(Source::Custom(_)) => files.len() + 1,
                    _ => files.len(),
                };
                (r, describe_metadata(md))
            }
            None => (0, "config".into()),
        }
    };
    let ranked: Vec<(String, usize, String)> = opt
        .iter()
        .map(|(k, v)| {
            let (r, src) = rank(v);
            (k.clone(), r, src)
        })
        .collect();
    let top = ranked.iter().map(|r| r.1).max().unwrap_or(0);
    let latest: Vec<&(String, usize, String)> = ranked.iter().filter(|r| r.1 == top).collect();
    // Several --set overrides share one rank: two names from --set are an error too.
    if latest.len() > 1 {
        let names: Vec<String> = latest.iter().map(|(k, _, src)| format!("`{k}` ({src})")).collect();
        return Err(one_problem(format!(
            "key `train.optimizer`: names {} optimizers, {}: keep one",
            names.len(),
            names.join(" and ")
        )));
    }
    let keep = latest[0].0.clone();
    opt.retain(|k, _| *k == keep);
    Ok(())
}

/// Depth-first: a file's extended files come before it, in the order listed.
fn collect_extends(
    path: &Path,
    named_by: Option<&Path>,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        one_problem(match named_by {
            Some(parent) => format!("{}: cannot read {} named in `extends`: {e}", parent.display(), path.display()),
            None => format!("cannot read config {}: {e}", path.display()),
        })
    })?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if stack.contains(&canonical) {
        let cycle: Vec<String> = stack.iter().chain([&canonical]).map(|p| p.display().to_string()).collect();
        return Err(one_problem(format!("`extends` forms a cycle: {}", cycle.join(" -> "))));
    }
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| one_problem(format!("{}: invalid TOML: {e}", path.display())))?;
    let extends = match table.get("extends") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(one_problem(format!(
                    "{}: key `extends`: expected a list of file paths (strings), found {}",
                    path.display(),
                    other.type_str()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(one_problem(format!(
                "{}: key `extends`: expected a list of file paths, found {}",
                path.display(),
                other.type_str()
            )))
        }
    };
    stack.push(canonical.clone());
    let dir = path.parent().unwrap_or(Path::new("."));
    for rel in extends {
        collect_extends(&normalize(&dir.join(rel)), Some(path), stack, out)?;
    }
    stack.pop();
    if !out.iter().any(|p| p.canonicalize().map(|c| c == canonical).unwrap_or(false)) {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Removes `.` and `name/..` parts without touching the file system, so that messages say
/// `configs/data/x.toml` rather than `experiments/../configs/data/x.toml`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Deserializes, collecting every unknown key (removing each and retrying), then the first
/// other error (a wrong type or a missing key), which ends the attempt.
fn deserialize_reporting_all(figment: &Figment, value: &mut Value) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    // Each pass removes one unknown key; the bound only guards against a loop.
    for _ in 0..1000 {
        match value.deserialize::<Config>() {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => {
                let key = display_path(&e.path);
                let source = source_of(figment, value, &e.path);
                match &e.kind {
                    Kind::UnknownField(field, expected) => {
                        let mut msg = format!("{source}: unknown key `{key}`");
                        if let Some(s) = did_you_mean(field, expected) {
                            msg += &format!(", did you mean `{s}`?");
                        } else if !expected.is_empty() {
                            msg += &format!(" (expected one of: {})", expected.join(", "));
                        }
                        problems.push(msg);
                        if !remove_path(value, &e.path) {
                            break;
                        }
                    }
                    Kind::UnknownVariant(name, expected) => {
                        let mut msg = format!("{source}: key `{key}`: unknown name `{name}`");
                        match did_you_mean(name, expected) {
                            Some(s) => msg += &format!(", did you mean `{s}`?"),
                            None => msg += &format!(" (expected one of: {})", expected.join(", ")),
                        }
                        problems.push(msg);
                        break;
                    }
                    Kind::MissingField(field) => {
                        let full = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
                        problems.push(format!(
                            "missing key `{full}`: set it in the experiment file, a file it extends, or with --set {full}=..."
                        ));
                        break;
                    }
                    other => {
                        let at = if key.is_empty() { String::new() } else { format!(" key `{key}`:") };
                        problems.push(format!("{source}:{at} {}", plain_types(&other.to_string())));
                        break;
                    }
                }
            }
        }
    }
    Err(ConfigError { problems })
}

/// serde's names for the expected type in a user's words: `expected usize` -> `expected a
/// whole number >= 0`.
fn plain_types(msg: &str) -> String {
    let Some((head, expected)) = msg.rsplit_once("expected ") else { return msg.to_string() };
    let plain = match expected.trim_end_matches('.') {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number >= 0",
        "i64" | "i32" | "i16" | "i8" | "isize" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        "a string" => "a string in quotes",
        other => other,
    };
    format!("{head}expected {plain}")
}

/// Where the value at `path` (or its nearest existing parent) came from: a file path,
/// `--set ...`, or the environment.
fn source_of(figment: &Figment, value: &Value, path: &[String]) -> String {
    let mut cur = value;
    for part in path {
        let next = match cur {
            Value::Dict(_, d) => d.get(part),
            Value::Array(_, a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => break,
        }
    }
    match figment.get_metadata(cur.tag()) {
        Some(md) => describe_metadata(md),
        None => "config".into(),
    }
}

fn describe_metadata(md: &Metadata) -> String {
    match &md.source {
        Some(Source::File(p)) => relative_to_cwd(p),
        Some(Source::Custom(s)) => s.clone(),
        _ => md.name.to_string(),
    }
}

fn relative_to_cwd(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

/// `["model", "groups", "0", "layers"]` -> `model.groups[0].layers`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out += &format!("[{part}]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out += part;
        }
    }
    out
}

/// The closest known name, if close enough to be a likely typo.
pub fn did_you_mean(given: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(given, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_string())
}

fn remove_path(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for part in parents {
        cur = match cur {
            Value::Dict(_, d) => match d.get_mut(part) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(_, a) => match part.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Dict(_, d) => d.remove(last).is_some(),
        _ => false,
    }
}

/// One `--set key.path=value` override; the value is TOML (`0.1`, `"adam"`, `[1, 2]`), and
/// anything that does not parse as TOML is taken as a string.
struct SetOverride {
    raw: String,
    data: Dict,
}

impl SetOverride {
    fn parse(raw: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| one_problem(format!("--set {raw}: {why}; expected key.path=value, e.g. train.epochs=3"));
        let (key, text) = raw.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
            return Err(bad("empty key"));
        }
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", text.trim()))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(text.trim().to_string()));
        let mut value = Value::serialize(parsed).map_err(|e| bad(&e.to_string()))?;
        for part in key.split('.').rev() {
            let mut d = Dict::new();
            d.insert(part.to_string(), value);
            value = d.into();
        }
        let Value::Dict(_, data) = value else {
            return Err(bad("empty key"));
        };
        Ok(SetOverride { raw: raw.to_string(), data })
    }
}

impl Provider for SetOverride {
    fn metadata(&self) -> Metadata {
        Metadata::from("--set", Source::Custom(format!("--set {}", self.raw)))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

impl Loaded {
    /// A run folder's `config.toml` (resolved by runner, so every key is written) from
    /// before `resize.antialias` existed has no such key: that run resized with the four
    /// nearest pixels, which is kept here so that resuming or evaluating it sees the images
    /// it trained on (the default is antialiased). Returns whether anything changed.
    pub fn keep_resize_of_older_run(&mut self) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.path) else { return false };
        let set = self.sets.iter().any(|s| s.contains("antialias"));
        if !text.starts_with("# Resolved by runner") || text.contains("antialias") || set {
            return false;
        }
        let mut changed = false;
        for op in self.config.augment.train.iter_mut().chain(self.config.augment.test.iter_mut()) {
            if let AugmentOp::Resize { antialias, .. } = op {
                changed |= std::mem::replace(antialias, false);
            }
        }
        if changed {
            tracing::info!(
                "{}: written before resizes were antialiased; keeping the run's resize (antialias = false)",
                self.path.display()
            );
        }
        changed
    }

    /// The config with `extends` consumed: what was merged is in the values themselves.
    fn resolved(&self) -> Config {
        Config { extends: Vec::new(), ..self.config.clone() }
    }

    /// The resolved config (defaults filled in) as TOML.
    pub fn resolved_toml(&self) -> String {
        toml::to_string(&self.resolved()).unwrap_or_else(|e| format!("# cannot serialize config: {e}\n"))
    }

    /// Every leaf key of the resolved config with its value (as TOML) and where it was set:
    /// a file, `--set ...`, an environment variable, or `default`.
    pub fn provenance(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        if let Ok(toml::Value::Table(t)) = toml::Value::try_from(self.resolved()) {
            self.walk("", &t, None, &mut out);
        }
        out
    }

    /// `source`: set inside arrays of tables, whose elements figment cannot look up.
    fn walk(&self, prefix: &str, table: &toml::Table, source: Option<&str>, out: &mut Vec<(String, String, String)>) {
        for (k, v) in table {
            if prefix.is_empty() && k == "extends" {
                continue;
            }
            let part = if k.contains(['.', ' ', '"']) { format!("{k:?}") } else { k.clone() };
            let path = if prefix.is_empty() { part } else { format!("{prefix}.{part}") };
            let src = || source.map(str::to_string).unwrap_or_else(|| self.source_of_key(&path));
            match v {
                toml::Value::Table(t) if !t.is_empty() => self.walk(&path, t, source, out),
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| matches!(i, toml::Value::Table(_))) =>
                {
                    let s = source.map(str::to_string).unwrap_or_else(|| self.list_source(&path));
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = item {
                            self.walk(&format!("{path}[{i}]"), t, Some(&s), out);
                        }
                    }
                }
                toml::Value::Array(_) if source.is_none() => {
                    out.push((path.clone(), v.to_string(), self.list_source(&path)))
                }
                _ => out.push((path.clone(), v.to_string(), src())),
            }
        }
    }

    /// Where the list at `path` was set, and the earlier files whose lists it replaced
    /// whole (lists do not merge): `e.toml, replacing the list of configs/base.toml`.
    fn list_source(&self, path: &str) -> String {
        let source = self.source_of_key(path);
        let replaced = self.lists_replaced(path);
        if replaced.is_empty() {
            return source;
        }
        let names: Vec<String> = replaced.iter().map(|p| relative_to_cwd(p)).collect();
        format!("{source}, replacing the list of {}", names.join(" and "))
    }

    /// The files merged before the one that set the list at `path` (all of them when an
    /// override or the environment set it) that set a list there too.
    pub fn lists_replaced(&self, path: &str) -> Vec<PathBuf> {
        let Some(md) = self.figment.find_metadata(path) else { return Vec::new() };
        let before = match &md.source {
            Some(Source::File(p)) => self.files.iter().position(|f| f == p).unwrap_or(0),
            _ => self.files.len(),
        };
        let sets = |file: &Path| -> bool {
            let Ok(table) = std::fs::read_to_string(file).map(|t| t.parse::<toml::Table>()) else { return false };
            let Ok(table) = table else { return false };
            let mut at = toml::Value::Table(table);
            for key in path.split('.') {
                match at.get(key) {
                    Some(v) => at = v.clone(),
                    None => return false,
                }
            }
            at.is_array()
        };
        self.files[..before].iter().filter(|f| sets(f)).cloned().collect()
    }

    /// Where a key's value was set: a file, `--set ...`, the environment, or `default`.
    pub fn source_of_key(&self, path: &str) -> String {
        // Keys of the reference table hold dots (`test.accuracy`): ask for the table.
        let lookup = if path.starts_with("experiment.reference.") { "experiment.reference" } else { path };
        // figment cannot index arrays: `augment.train[0].normalize` was set with `augment.train`.
        let lookup = lookup.split('[').next().unwrap_or(lookup);
        if lookup.contains('"') {
            return "default".into();
        }
        match self.figment.find_metadata(lookup) {
            Some(md) => describe_metadata(md),
            None => "default".into(),
        }
    }

    /// The file that set `path` (for paths written in it, relative to it); `None` when
    /// an override or the environment set it.
    pub fn file_of_key(&self, path: &str) -> Option<PathBuf> {
        let md = self.figment.find_metadata(path)?;
        match &md.source {
            Some(Source::File(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The flattened resolved config: `(key, value)` rows for `params.parquet`.
    pub fn flat_params(&self) -> BTreeMap<String, String> {
        self.provenance().into_iter().map(|(k, v, _)| (k, v)).collect()
    }
}
