//! What a sweep varies: the grids and zips of `--grid`, `--zip` and `[sweep]` (every
//! combination, lists taken together), the random draws of `--random` from
//! `[sweep.space]`, and the checked `[sweep.early_stop]`: each point as its `--set`
//! overrides.

use anyhow::{bail, Context, Result};

use super::{Request, SweepFile};
use crate::config::{Distribution, EarlyStop, Loaded, Mode, SweepConfig};
use crate::plan;
use crate::rng::Rng;

/// `seed` is short for `experiment.seed`.
pub(super) fn full_key(k: &str) -> String {
    if k == "seed" {
        "experiment.seed".into()
    } else {
        k.to_string()
    }
}

/// `KEY=V1,V2` with commas inside brackets or quotes kept: `k=[1,2],[3,4]` is two values.
pub fn parse_list(raw: &str, flag: &str) -> Result<(String, Vec<String>)> {
    let Some((k, v)) = raw.split_once('=') else { bail!("{flag} {raw}: expected KEY=V1,V2,...") };
    if k.is_empty() || v.is_empty() {
        bail!("{flag} {raw}: expected KEY=V1,V2,...");
    }
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for ch in v.chars() {
        match ch {
            '"' | '\'' if quote == Some(ch) => quote = None,
            '"' | '\'' if quote.is_none() => quote = Some(ch),
            '[' | '{' if quote.is_none() => depth += 1,
            ']' | '}' if quote.is_none() => depth -= 1,
            ',' if quote.is_none() && depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur.trim().to_string());
    if out.iter().any(|s| s.is_empty()) {
        bail!("{flag} {raw}: an empty value");
    }
    Ok((full_key(k.trim()), out))
}

/// A TOML value as `--set` text.
fn value_text(v: &toml::Value) -> String {
    v.to_string()
}

/// A key swept twice (in the grid and the zip, or also set for every point), an empty list
/// or a repeated value would give duplicate or silently overridden runs: refused.
fn check_keys(grids: &[(String, Vec<String>)], zips: &[(String, Vec<String>)], sets: &[String]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in grids.iter().chain(zips) {
        if !seen.insert(k.clone()) {
            bail!("`{k}` is both in the grid and in the zip: sweep each key once");
        }
        if v.is_empty() {
            bail!("`{k}` lists no value");
        }
        let distinct: std::collections::BTreeSet<&String> = v.iter().collect();
        if distinct.len() != v.len() {
            bail!("`{k}` lists a value twice ({}): the points would repeat", v.join(", "));
        }
    }
    for s in sets {
        let key = s.split_once('=').map(|(k, _)| full_key(k.trim())).unwrap_or_default();
        if seen.contains(&key) {
            bail!("--set {s}: `{key}` is also swept; the sweep's values would replace it");
        }
    }
    Ok(())
}

/// Every point's overrides: the grid's combinations (first key slowest), each crossed with
/// the zipped lists.
pub fn points(grids: &[(String, Vec<String>)], zips: &[(String, Vec<String>)]) -> Result<Vec<Vec<String>>> {
    let zip_len = zips.first().map(|(_, v)| v.len());
    for (k, v) in zips {
        if Some(v.len()) != zip_len {
            bail!("zip `{k}`: {} values, but zip `{}` has {}", v.len(), zips[0].0, zip_len.unwrap_or(0));
        }
    }
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for (k, values) in grids {
        out = out
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push(format!("{k}={v}"));
                    q
                })
            })
            .collect();
    }
    if let Some(n) = zip_len {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..n).map(move |i| {
                    let mut q = p.clone();
                    q.extend(zips.iter().map(|(k, v)| format!("{k}={}", v[i])));
                    q
                })
            })
            .collect();
    }
    Ok(out)
}

/// Every point's overrides: the grids (the experiment's `[sweep]` table, then `--grid`,
/// which replaces a key of the table) crossed, beside the zips.
pub(super) fn sweep_points(req: &Request, base: &Loaded, sweep_file: &SweepFile) -> Result<Vec<Vec<String>>> {
    let file = sweep_table(base, sweep_file);
    let mut grids: Vec<(String, Vec<String>)> =
        file.grid.iter().map(|(k, v)| (full_key(k), v.iter().map(value_text).collect())).collect();
    for g in &req.grids {
        let (k, v) = parse_list(g, "--grid")?;
        grids.retain(|(x, _)| *x != k);
        grids.push((k, v));
    }
    let mut zips: Vec<(String, Vec<String>)> =
        file.zip.iter().map(|(k, v)| (full_key(k), v.iter().map(value_text).collect())).collect();
    for z in &req.zips {
        let (k, v) = parse_list(z, "--zip")?;
        zips.retain(|(x, _)| *x != k);
        zips.push((k, v));
    }
    let random = req.random.or(file.random);
    if grids.is_empty() && zips.is_empty() && random.is_none() {
        bail!(
            "nothing to sweep: give --grid KEY=V1,V2, or --random N with a [sweep.space] (or a [sweep] table in {})",
            req.experiment.display()
        );
    }
    check_keys(&grids, &zips, &req.sets)?;
    let mut all = points(&grids, &zips)?;
    if let Some(n) = random {
        let draws = random_points(&file, n, &grids, &zips, &req.sets)
            .with_context(|| table_source(req, sweep_file.sweep.as_ref().is_some_and(|s| !s.space.is_empty())))?;
        all = all.into_iter().flat_map(|p| draws.iter().map(move |d| [p.clone(), d.clone()].concat())).collect();
    }
    Ok(all)
}

/// `n` points drawn from the space's distributions, seeded by `[sweep] seed`: point by
/// point, the keys in name order. The same seed gives the same points in the same order.
fn random_points(
    file: &SweepConfig,
    n: usize,
    grids: &[(String, Vec<String>)],
    zips: &[(String, Vec<String>)],
    sets: &[String],
) -> Result<Vec<Vec<String>>> {
    if n == 0 {
        bail!("--random 0: at least one point");
    }
    if file.space.is_empty() {
        bail!("--random {n}: no [sweep.space] to draw from (e.g. \"train.optimizer.sgd.lr\" = {{ log_uniform = [1e-4, 0.1] }})");
    }
    let space: Vec<(String, &Distribution)> = file.space.iter().map(|(k, d)| (full_key(k), d)).collect();
    for (k, d) in &space {
        if let Some(why) = d.problem() {
            bail!("[sweep.space] `{k}`: {why}");
        }
        if grids.iter().chain(zips).any(|(g, _)| g == k) {
            bail!("[sweep.space] `{k}` is also in the grid or the zip: sweep each key once");
        }
        if sets.iter().any(|s| s.split_once('=').is_some_and(|(x, _)| full_key(x.trim()) == *k)) {
            bail!("[sweep.space] `{k}` is also set with --set; the drawn values would replace it");
        }
    }
    let mut rng = Rng::new(file.seed);
    Ok((0..n).map(|_| space.iter().map(|(k, d)| format!("{k}={}", d.draw(rng.next_f64()))).collect()).collect())
}

/// The experiment's `[sweep]` with the sweep file's keys over it.
fn sweep_table(base: &Loaded, sweep_file: &SweepFile) -> SweepConfig {
    let mut file = base.config.sweep.clone().unwrap_or_default();
    if let Some(from) = &sweep_file.sweep {
        file.grid.extend(from.grid.clone());
        file.zip.extend(from.zip.clone());
        file.space.extend(from.space.clone());
        file.random = from.random.or(file.random);
        if from.seed != 0 {
            file.seed = from.seed;
        }
        file.early_stop = from.early_stop.clone().or(file.early_stop);
    }
    file
}

/// `[sweep.early_stop]`, checked against the points' plan: its metric is one the runs log
/// every epoch, and its direction is decided (`mode`, else the metric's own).
pub(super) fn early_stop(req: &Request, base: &Loaded, sweep_file: &SweepFile) -> Result<Option<EarlyStop>> {
    let in_file = sweep_file.sweep.as_ref().is_some_and(|s| s.early_stop.is_some());
    checked_early_stop(req, base, sweep_file).with_context(|| table_source(req, in_file))
}

/// The file a `[sweep]` key came from: the sweep file when it set it, else the experiment.
fn table_source(req: &Request, in_sweep_file: bool) -> String {
    match (&req.file, in_sweep_file) {
        (Some(f), true) => f.display().to_string(),
        _ => req.experiment.display().to_string(),
    }
}

fn checked_early_stop(req: &Request, base: &Loaded, sweep_file: &SweepFile) -> Result<Option<EarlyStop>> {
    let Some(mut rule) = sweep_table(base, sweep_file).early_stop else { return Ok(None) };
    let plan = plan::plan(base)?;
    let logged: Vec<String> = plan
        .metrics
        .test()
        .iter()
        .filter(|m| m.is_scalar())
        .map(|m| format!("test.{}", m.as_str()))
        .chain(plan.metrics.train().iter().filter(|m| m.is_scalar()).map(|m| format!("train.{}", m.as_str())))
        .collect();
    if !logged.contains(&rule.metric) {
        bail!(
            "[sweep.early_stop] metric `{}`: not a metric the runs of {} log every epoch ({})",
            rule.metric,
            req.experiment.display(),
            logged.join(", ")
        );
    }
    if rule.min_epochs == 0 || rule.reduction < 2 {
        bail!(
            "[sweep.early_stop]: min_epochs >= 1 and reduction >= 2 (got {} and {})",
            rule.min_epochs,
            rule.reduction
        );
    }
    rule.mode = Some(rule.mode.unwrap_or_else(|| Mode::for_metric(&rule.metric)));
    Ok(Some(rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_points() {
        let (k, v) = parse_list("train.optimizer.sgd.lr=0.1,0.03,0.01", "--grid").unwrap();
        assert_eq!((k.as_str(), v.len()), ("train.optimizer.sgd.lr", 3));
        let (k, v) = parse_list("seed=0,1", "--grid").unwrap();
        assert_eq!((k.as_str(), v), ("experiment.seed", vec!["0".to_string(), "1".into()]));
        let (_, v) = parse_list("model.input=[1,28,28],[1, 32, 32]", "--grid").unwrap();
        assert_eq!(v, ["[1,28,28]", "[1, 32, 32]"]);
        assert!(parse_list("lr", "--grid").is_err() && parse_list("lr=0.1,", "--grid").is_err());
        let grids = vec![
            ("a".to_string(), vec!["1".to_string(), "2".into()]),
            ("b".into(), vec!["x".into(), "y".into(), "z".into()]),
        ];
        let p = points(&grids, &[]).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0], ["a=1", "b=x"]);
        assert_eq!(p[5], ["a=2", "b=z"]);
        let zips =
            vec![("c".to_string(), vec!["1".to_string(), "2".into()]), ("d".into(), vec!["p".into(), "q".into()])];
        let p = points(&grids[..1], &zips).unwrap();
        assert_eq!(
            p,
            vec![
                vec!["a=1", "c=1", "d=p"],
                vec!["a=1", "c=2", "d=q"],
                vec!["a=2", "c=1", "d=p"],
                vec!["a=2", "c=2", "d=q"]
            ]
        );
        let bad = vec![("c".to_string(), vec!["1".to_string()]), ("d".into(), vec!["p".into(), "q".into()])];
        assert!(points(&[], &bad).unwrap_err().to_string().contains("zip `d`: 2 values"));
        let g = |k: &str, v: &[&str]| (k.to_string(), v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(check_keys(&[g("a", &["1", "2"])], &[g("a", &["1", "2"])], &[])
            .unwrap_err()
            .to_string()
            .contains("both"));
        assert!(check_keys(&[g("a", &["1", "1"])], &[], &[]).unwrap_err().to_string().contains("twice"));
        assert!(check_keys(&[g("a", &[])], &[], &[]).unwrap_err().to_string().contains("no value"));
        assert!(check_keys(&[g("a", &["1"])], &[], &["a=3".into()]).unwrap_err().to_string().contains("also swept"));
    }

    #[test]
    fn random_points_are_seeded_and_in_their_ranges() {
        let file: SweepConfig = toml::from_str(
            r#"
random = 50
seed = 7
[space]
"train.optimizer.sgd.lr" = { log_uniform = [1e-4, 0.1] }
"train.optimizer.sgd.momentum" = { uniform = [0.8, 0.99] }
"data.batch_size" = { int_uniform = [16, 18] }
"model.dropout" = { choice = ["a", 0.3] }
"#,
        )
        .unwrap();
        let a = random_points(&file, 50, &[], &[], &[]).unwrap();
        assert_eq!(a, random_points(&file, 50, &[], &[], &[]).unwrap(), "the same seed, the same points");
        let other = SweepConfig { seed: 8, ..file.clone() };
        assert_ne!(a, random_points(&other, 50, &[], &[], &[]).unwrap());
        // Keys in name order; every value in its range; both ends of int_uniform and every
        // choice drawn in 50 points (each misses with probability (2/3)^50 or (1/2)^50).
        let value =
            |p: &Vec<String>, k: &str| p.iter().find_map(|s| s.strip_prefix(&format!("{k}="))).unwrap().to_string();
        assert!(a[0][0].starts_with("data.batch_size=") && a[0][3].starts_with("train.optimizer.sgd.momentum="));
        let mut sizes = std::collections::BTreeSet::new();
        let mut choices = std::collections::BTreeSet::new();
        for p in &a {
            let lr: f64 = value(p, "train.optimizer.sgd.lr").parse().unwrap();
            let m: f64 = value(p, "train.optimizer.sgd.momentum").parse().unwrap();
            assert!((1e-4..=0.1).contains(&lr) && (0.8..0.99).contains(&m), "{p:?}");
            sizes.insert(value(p, "data.batch_size"));
            choices.insert(value(p, "model.dropout"));
        }
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), ["16", "17", "18"]);
        assert_eq!(choices.into_iter().collect::<Vec<_>>(), ["\"a\"", "0.3"]);
        // log_uniform spreads over decades: about a third of 50 below 1e-3 (by hand: 1/3).
        let low = a.iter().filter(|p| value(p, "train.optimizer.sgd.lr").parse::<f64>().unwrap() < 1e-3).count();
        assert!((8..=26).contains(&low), "{low} of 50 below 1e-3");
        let bad =
            SweepConfig { space: [("x".to_string(), Distribution::LogUniform([0.0, 1.0]))].into(), ..file.clone() };
        assert!(random_points(&bad, 2, &[], &[], &[]).unwrap_err().to_string().contains("0 < low < high"));
        let g = vec![("data.batch_size".to_string(), vec!["8".to_string()])];
        assert!(random_points(&file, 2, &g, &[], &[]).unwrap_err().to_string().contains("also in the grid"));
    }
}
