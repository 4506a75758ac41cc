//! `[sweep.early_stop]`: a point that does badly stops at the end of an epoch, judged
//! against the other points of the sweep. Each point appends its metric after every epoch
//! to `rungs.tsv` in the sweep folder and decides there, under an exclusive lock on
//! `rungs.lock`: no server, so it works the same for local points and Slurm's array tasks
//! (on a filesystem whose locks every node sees).
//!
//! - `asha` (asynchronous successive halving, Li et al. 2020, as Ray Tune's
//!   `ASHAScheduler` decides it): rungs at `min_epochs x reduction^k` epochs; a point at a
//!   rung continues when its value is at least the `1 - 1/reduction` quantile of the values
//!   the points before it recorded at that rung (the first point at a rung always continues).
//! - `median` (Golovin et al. 2017, Google Vizier): from `min_epochs` on, a point stops when
//!   the running mean of its values is worse than the median of the other points' running
//!   means at the same epoch, once `min_points` others have reached it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{EarlyStop, Mode, StopRule};

/// A line of the table: `point`'s metric after `epoch` (counting from 1), and what was
/// decided then.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub point: usize,
    pub epoch: usize,
    pub value: f64,
    pub stop: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    Stop(String),
}

/// ASHA's rung index of `epoch`, if it is a rung.
pub fn rung(rule: &EarlyStop, epoch: usize) -> Option<usize> {
    let mut at = rule.min_epochs.max(1);
    let mut k = 0;
    while at <= epoch {
        if at == epoch {
            return Some(k);
        }
        at *= rule.reduction.max(2);
        k += 1;
    }
    None
}

/// The `q` quantile of `xs` (not empty), interpolated linearly as NumPy's `percentile`.
fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
}

/// What `point`, after `epoch` with `value`, does, given the records of the points before
/// it (`table`, its own earlier epochs included).
pub fn decide(rule: &EarlyStop, mode: Mode, table: &[Record], point: usize, epoch: usize, value: f64) -> Decision {
    // Higher is better from here on.
    let reward = |v: f64| if mode == Mode::Max { v } else { -v };
    let metric = &rule.metric;
    match rule.rule {
        StopRule::Asha => {
            let Some(k) = rung(rule, epoch) else { return Decision::Continue };
            let before: Vec<f64> = table
                .iter()
                .filter(|r| r.epoch == epoch && r.point != point && r.value.is_finite())
                .map(|r| reward(r.value))
                .collect();
            if before.is_empty() {
                return Decision::Continue;
            }
            let n = before.len();
            let cutoff = quantile(before, 1.0 - 1.0 / rule.reduction.max(2) as f64);
            if reward(value) >= cutoff {
                return Decision::Continue;
            }
            Decision::Stop(format!(
                "rung {k} (epoch {epoch}): {metric} {value:.4} is not in the best 1/{} of the {n} point(s) there \
                 before it (cutoff {:.4})",
                rule.reduction,
                reward(cutoff)
            ))
        }
        StopRule::Median => {
            if epoch < rule.min_epochs {
                return Decision::Continue;
            }
            let mean = |p: usize| -> Option<f64> {
                let v: Vec<f64> = table.iter().filter(|r| r.point == p && r.epoch <= epoch).map(|r| r.value).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let mut others: Vec<usize> =
                table.iter().filter(|r| r.epoch == epoch && r.point != point).map(|r| r.point).collect();
            others.sort_unstable();
            others.dedup();
            if others.len() < rule.min_points {
                return Decision::Continue;
            }
            let means: Vec<f64> = others.iter().filter_map(|&p| mean(p)).map(reward).collect();
            let mine: Vec<f64> =
                table.iter().filter(|r| r.point == point && r.epoch < epoch).map(|r| r.value).chain([value]).collect();
            let own = mine.iter().sum::<f64>() / mine.len() as f64;
            let median = quantile(means, 0.5);
            if reward(own) >= median {
                return Decision::Continue;
            }
            Decision::Stop(format!(
                "epoch {epoch}: the running mean of {metric}, {own:.4}, is worse than the median of the {} other \
                 point(s)' ({:.4})",
                others.len(),
                reward(median)
            ))
        }
    }
}

fn read(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let parsed = (|| -> Option<Record> {
            Some(Record {
                point: f.first()?.parse().ok()?,
                epoch: f.get(1)?.parse().ok()?,
                value: f.get(2)?.parse().ok()?,
                stop: *f.get(3)? == "stop",
            })
        })();
        // A line cut short by a process killed while writing it is not a record.
        match parsed {
            Some(r) => out.push(r),
            None => tracing::warn!("{} line {}: not a record, ignored: {line:?}", path.display(), n + 1),
        }
    }
    Ok(out)
}

/// Records `point`'s `value` after `epoch` in the sweep folder `dir`'s table and decides,
/// under the table's lock. Asked again for an epoch already recorded (a point resumed after
/// a stop between the record and its checkpoint), the recorded decision stands.
pub fn report(dir: &Path, rule: &EarlyStop, mode: Mode, point: usize, epoch: usize, value: f64) -> Result<Decision> {
    let lock_path = dir.join("rungs.lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let path = dir.join("rungs.tsv");
    let table = read(&path)?;
    if let Some(r) = table.iter().find(|r| r.point == point && r.epoch == epoch) {
        return Ok(if r.stop {
            Decision::Stop(format!("stopped at epoch {epoch} before"))
        } else {
            Decision::Continue
        });
    }
    let decision = decide(rule, mode, &table, point, epoch, value);
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    if table.is_empty() && f.metadata()?.len() == 0 {
        writeln!(f, "point\tepoch\t{}\tdecision", rule.metric)?;
    }
    let word = if decision == Decision::Continue { "continue" } else { "stop" };
    writeln!(f, "{point}\t{epoch}\t{value:?}\t{word}")?;
    f.sync_data()?;
    Ok(decision)
}

/// Point -> the epoch it was stopped at, from the sweep folder's table (read once).
pub fn stops(dir: &Path) -> std::collections::HashMap<usize, usize> {
    read(&dir.join("rungs.tsv")).unwrap_or_default().iter().filter(|r| r.stop).map(|r| (r.point, r.epoch)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: StopRule) -> EarlyStop {
        EarlyStop { rule: r, metric: "test.accuracy".into(), mode: None, min_epochs: 1, reduction: 3, min_points: 3 }
    }

    /// A synthetic objective with a known ranking: point p's metric at epoch e is
    /// `quality(p) * e / (e + 1)`, so the ranking is the same at every epoch (point 26 best).
    /// The points run one after another in `order` (a sweep with --jobs 1: each sees all the
    /// records before it), 9 epochs each unless stopped (ASHA's rungs: 1, 3, 9). Returns the
    /// epoch each point was stopped at (0: never).
    fn simulate(r: &EarlyStop, mode: Mode, order: &[usize]) -> Vec<usize> {
        let quality = |p: usize| if mode == Mode::Max { (p + 1) as f64 } else { -((p + 1) as f64) };
        let mut table = Vec::new();
        let mut stopped_at = vec![0usize; order.len()];
        for &p in order {
            for e in 1..=9 {
                let v = quality(p) * e as f64 / (e as f64 + 1.0);
                let stop = decide(r, mode, &table, p, e, v) != Decision::Continue;
                table.push(Record { point: p, epoch: e, value: v, stop });
                if stop {
                    stopped_at[p] = e;
                    break;
                }
            }
        }
        stopped_at
    }

    fn shuffled(seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..27).collect();
        crate::rng::Rng::new(seed).shuffle(&mut order);
        order
    }

    #[test]
    fn asha_keeps_the_best_and_stops_at_rungs() {
        let r = rule(StopRule::Asha);
        for mode in [Mode::Max, Mode::Min] {
            // By hand: worst first, each point is the best so far at every rung: none stops.
            let up: Vec<usize> = (0..27).collect();
            assert!(simulate(&r, mode, &up).iter().all(|&e| e == 0), "{mode:?}");
            // Best first, each later point is below every value before it: all but the
            // first stop at the first rung.
            let down: Vec<usize> = (0..27).rev().collect();
            let s = simulate(&r, mode, &down);
            assert_eq!((s[26], s[..26].iter().filter(|&&e| e == 1).count()), (0, 26), "{mode:?}: {s:?}");
            // A shuffled order: the best point is never stopped, stops happen only at rungs,
            // and at each rung no more than 1 - 1/3 of the points reaching it stop. This seed
            // (measured): 14 of 27 stop at rung 1, 5 of 13 at rung 3, 3 of 8 at rung 9.
            let s = simulate(&r, mode, &shuffled(7));
            assert_eq!(s[26], 0, "{mode:?}: {s:?}");
            assert!(s.iter().all(|&e| [0, 1, 3, 9].contains(&e)), "{s:?}");
            let at = |e: usize| s.iter().filter(|&&x| x == e).count();
            assert_eq!((at(1), at(3), at(9)), (14, 5, 3), "{mode:?}: {s:?}");
            let mut reaching = 27;
            for e in [1, 3, 9] {
                assert!(3 * at(e) <= 2 * reaching, "rung at epoch {e}: {} of {reaching} stopped", at(e));
                reaching -= at(e);
            }
        }
    }

    #[test]
    fn asha_cutoff_is_numpys_percentile() {
        // numpy.percentile([1, 2, 3, 4], 100 * (1 - 1/3)) = 3.0 (linear interpolation, by hand:
        // position 2/3 * 3 = 2, the value 3).
        assert_eq!(quantile(vec![4.0, 1.0, 3.0, 2.0], 1.0 - 1.0 / 3.0), 3.0);
        assert!((quantile(vec![1.0, 2.0], 0.5) - 1.5).abs() < 1e-12);
        let r = rule(StopRule::Asha);
        let rec = |point, value| Record { point, epoch: 1, value, stop: false };
        let table = [rec(0, 0.1), rec(1, 0.2), rec(2, 0.3), rec(3, 0.4)];
        assert_eq!(decide(&r, Mode::Max, &table, 9, 1, 0.3), Decision::Continue);
        assert!(matches!(decide(&r, Mode::Max, &table, 9, 1, 0.29), Decision::Stop(_)));
        // Not a rung (2): no decision; the first at a rung continues.
        assert_eq!(decide(&r, Mode::Max, &table, 9, 2, 0.0), Decision::Continue);
        assert_eq!(decide(&r, Mode::Max, &[], 9, 1, 0.0), Decision::Continue);
        assert_eq!([1, 2, 3, 4, 9, 27].map(|e| rung(&r, e)), [Some(0), None, Some(1), None, Some(2), Some(3)]);
    }

    #[test]
    fn median_rule_keeps_the_best_and_waits_for_min_points() {
        let r = rule(StopRule::Median);
        // By hand: worst first, each running mean is above the median of those before: none
        // stops. Best first: the first three are never judged (fewer than min_points = 3
        // others before them); every later one is below the median at its first epoch.
        let up: Vec<usize> = (0..27).collect();
        assert!(simulate(&r, Mode::Max, &up).iter().all(|&e| e == 0));
        let down: Vec<usize> = (0..27).rev().collect();
        let s = simulate(&r, Mode::Max, &down);
        assert!(s[24..].iter().all(|&e| e == 0) && s[..24].iter().all(|&e| e == 1), "{s:?}");
        // Shuffled: the best never stops, nor the first three to arrive.
        let order = shuffled(7);
        let s = simulate(&r, Mode::Max, &order);
        assert_eq!(s[26], 0, "{s:?}");
        assert!(order[..3].iter().all(|&p| s[p] == 0), "{order:?} {s:?}");
    }

    #[test]
    fn the_shared_table_records_and_remembers() {
        let d = tempfile::tempdir().unwrap();
        let r = rule(StopRule::Asha);
        assert_eq!(report(d.path(), &r, Mode::Max, 0, 1, 0.9).unwrap(), Decision::Continue);
        assert_eq!(report(d.path(), &r, Mode::Max, 1, 1, 0.95).unwrap(), Decision::Continue);
        let d2 = report(d.path(), &r, Mode::Max, 2, 1, 0.5).unwrap();
        assert!(matches!(&d2, Decision::Stop(w) if w.contains("rung 0 (epoch 1)")), "{d2:?}");
        // The same epoch again keeps its decision; the stop is found by point.
        assert!(matches!(report(d.path(), &r, Mode::Max, 2, 1, 0.99).unwrap(), Decision::Stop(_)));
        assert_eq!((stops(d.path()).get(&2), stops(d.path()).get(&0)), (Some(&1), None));
        let text = std::fs::read_to_string(d.path().join("rungs.tsv")).unwrap();
        assert_eq!(text.lines().next(), Some("point\tepoch\ttest.accuracy\tdecision"));
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
