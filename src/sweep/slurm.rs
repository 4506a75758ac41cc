//! `--launcher slurm`: the sweep's points as one Slurm job array. The batch script (kept in
//! the sweep folder as `sweep.sbatch`) runs point `$SLURM_ARRAY_TASK_ID` with `runner sweep
//! point`; the scheduler decides where and when. runner talks to Slurm only through its
//! commands: `sbatch` to submit, `squeue` to ask what is pending or running, `scancel`.
//!
//! Time limits: the script asks Slurm for `USR1` `stop_before` seconds before the limit
//! (`--signal=B:USR1@N`) and passes it on to the point as SIGTERM, so the point stops at its
//! next batch with a checkpoint; with `requeue` the script then requeues its own array task,
//! and the point resumes from that checkpoint when Slurm starts it again (Slurm holds a
//! requeued job about two minutes first). `scancel` (SIGTERM) stops the point the same way,
//! without the requeue.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::runlog;

/// The launcher's settings: the sweep file's `[launcher.slurm]` under the command line's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Slurm's time limit per point: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or
    /// `D-HH:MM:SS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_task: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Points running at once (`--array=...%K`); absent: as many as Slurm gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
    /// Any other `sbatch` option, as written on its command line (`--account=lab`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
    /// A point stopped before its time limit is requeued and resumes from its checkpoint.
    #[serde(default)]
    pub requeue: bool,
    /// Seconds before the time limit at which a point is asked to stop (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_before: Option<u64>,
}

impl SlurmOptions {
    /// `self` with every setting `over` has replaced (the command line over the file).
    pub fn merged(mut self, over: SlurmOptions) -> SlurmOptions {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(partition, time, cpus_per_task, gpus_per_task, mem, max_parallel, stop_before);
        self.sbatch_args.extend(over.sbatch_args);
        self.requeue |= over.requeue;
        self
    }

    pub fn stop_before(&self) -> u64 {
        self.stop_before.unwrap_or(120)
    }

    /// Settings Slurm would refuse, or that would stop a point before it can start.
    pub fn check(&self) -> Result<()> {
        if let Some(t) = &self.time {
            let limit = time_limit_seconds(t).with_context(|| format!("--time {t}"))?;
            if self.stop_before() >= limit {
                bail!(
                    "--stop-before {} (seconds) is not shorter than --time {t} ({limit} s): every point would be \
                     stopped as it starts",
                    self.stop_before()
                );
            }
        }
        for (flag, v) in [("--cpus-per-task", self.cpus_per_task), ("--max-parallel", self.max_parallel)] {
            if v == Some(0) {
                bail!("{flag} 0: at least 1");
            }
        }
        Ok(())
    }
}

/// Slurm's time formats in seconds: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
/// `D-HH:MM:SS`.
pub fn time_limit_seconds(t: &str) -> Result<u64> {
    let num = |s: &str| -> Result<u64> {
        s.parse::<u64>().map_err(|_| {
            anyhow::anyhow!("`{s}` is not a whole number (formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
        })
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => bail!("`{t}`: expected MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    };
    if secs == 0 {
        bail!("`{t}`: a time limit of zero");
    }
    Ok(secs)
}

/// The environment variables runner reads that change what a point computes or where it
/// reads: config overrides (`RUNNER__SECTION__KEY`), the kernel level, the caches.
fn recorded_env(k: &str) -> bool {
    k.starts_with("RUNNER__")
        || [
            "RUNNER_KERNELS",
            "RUNNER_CACHE",
            "RUNNER_MAX_IMAGE_PIXELS",
            "RUNNER_MEMORY_GIB",
            "RUNNER_CONV_PATH",
            "RUNNER_CUDA_POOL",
            "RUNNER_NO_FUSED",
            "RUST_LOG",
        ]
        .contains(&k)
}

/// `'text'` for a POSIX shell.
fn quoted(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The batch script that runs point `$SLURM_ARRAY_TASK_ID` of the sweep in `dir` (an
/// absolute path), from the folder `workdir` the sweep was submitted in.
pub fn batch_script(id: &str, dir: &Path, workdir: &Path, exe: &Path, opts: &SlurmOptions) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("#!/bin/bash".into());
    line(format!("# runner sweep {id}: array task i runs point i of the sweep (sweep.toml beside this file)."));
    line(format!(
        "# Written by runner {} ({}) at {} UTC.",
        env!("CARGO_PKG_VERSION"),
        exe.display(),
        runlog::timestamp_id(runlog::now_us())
    ));
    line(format!("#SBATCH --job-name=runner-{id}"));
    line(format!("#SBATCH --output={}/point_%3a.log", dir.display()));
    line("#SBATCH --open-mode=append".into());
    line(format!("#SBATCH --chdir={}", workdir.display()));
    // The early warning: USR1 to this script `stop_before` seconds before the time limit.
    line(format!("#SBATCH --signal=B:USR1@{}", opts.stop_before()));
    line(format!("#SBATCH {}", if opts.requeue { "--requeue" } else { "--no-requeue" }));
    for (flag, v) in [
        ("partition", opts.partition.clone()),
        ("time", opts.time.clone()),
        ("cpus-per-task", opts.cpus_per_task.map(|n| n.to_string())),
        ("gpus-per-task", opts.gpus_per_task.map(|n| n.to_string())),
        ("mem", opts.mem.clone()),
    ] {
        if let Some(v) = v {
            line(format!("#SBATCH --{flag}={v}"));
        }
    }
    for a in &opts.sbatch_args {
        line(format!("#SBATCH {a}"));
    }
    line(String::new());
    line("# The environment the points were planned with (as at submission):".into());
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| recorded_env(k)).collect();
    if env.is_empty() {
        line("# (none set)".into());
    }
    for (k, v) in env {
        line(format!("export {k}={}", quoted(&v)));
    }
    line("# One thread per CPU Slurm gives the task (--cpus-per-task; 1 without it).".into());
    line("export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} CANDLE_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}".into());
    line(format!("requeue={}", u8::from(opts.requeue)));
    line(String::new());
    line(format!(
        "{} sweep point {} \"$SLURM_ARRAY_TASK_ID\" &",
        quoted(&exe.display().to_string()),
        quoted(&dir.display().to_string())
    ));
    line("pid=$!".into());
    line("# USR1 (the time limit is near; sent to this script alone) is passed on as TERM: the point".into());
    line("# stops at its next batch, with a checkpoint, and with requeue this task is requeued. scancel's".into());
    line("# TERM reaches the point itself (a second TERM would make it quit at once): not passed on.".into());
    line("warned=0".into());
    line("trap 'warned=1; kill -TERM $pid 2>/dev/null' USR1".into());
    line("trap : TERM".into());
    line("while :; do wait $pid; code=$?; kill -0 $pid 2>/dev/null || break; done".into());
    line("if [ $warned = 1 ] && [ $requeue = 1 ] && [ $code = 143 ]; then".into());
    line("  echo \"point $SLURM_ARRAY_TASK_ID: stopped before the time limit; requeued\"".into());
    line("  scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"".into());
    line("fi".into());
    line("exit $code".into());
    s
}

/// `0-3%2`, `1,3`: the array of `indices` (ascending), at most `max_parallel` at once.
pub fn array_spec(indices: &[usize], max_parallel: Option<usize>) -> String {
    let contiguous = indices.windows(2).all(|w| w[1] == w[0] + 1);
    let mut s = match (indices.first(), indices.last()) {
        (Some(a), Some(b)) if contiguous && indices.len() > 1 => format!("{a}-{b}"),
        _ => indices.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
    };
    if let Some(k) = max_parallel {
        s += &format!("%{k}");
    }
    s
}

/// Runs `sbatch --parsable --array=ARRAY SCRIPT`; the job id.
pub fn submit(script: &Path, array: &str) -> Result<String> {
    let out =
        Command::new("sbatch").arg("--parsable").arg(format!("--array={array}")).arg(script).output().map_err(|e| {
            anyhow::anyhow!(
                "cannot run sbatch ({e}): --launcher slurm needs Slurm's commands on the PATH (a login node)"
            )
        })?;
    if !out.status.success() {
        bail!("sbatch refused {}: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed {:?}, not a job id", text.trim());
    }
    Ok(id)
}

/// What the scheduler says of an array task it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Pending,
    Running,
}

/// The array tasks `squeue` lists for `jobs` (pending, running, completing): task index ->
/// state, the latest job's word where several hold one index. Jobs Slurm no longer holds
/// are absent.
pub fn queued(jobs: &[String]) -> BTreeMap<usize, Queued> {
    let mut out = BTreeMap::new();
    for job in jobs {
        let Ok(o) = Command::new("squeue").args(["-h", "-r", "-j", job, "-o", "%i %T"]).output() else { continue };
        if !o.status.success() {
            continue; // "Invalid job id specified": finished and forgotten
        }
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let mut it = l.split_whitespace();
            let (Some(id), Some(state)) = (it.next(), it.next()) else { continue };
            let Some(task) = id.rsplit_once('_').and_then(|(_, t)| t.parse::<usize>().ok()) else { continue };
            let q = match state {
                "RUNNING" | "COMPLETING" | "CONFIGURING" | "STOPPED" | "SUSPENDED" => Queued::Running,
                _ => Queued::Pending,
            };
            out.insert(task, q);
        }
    }
    out
}

/// `scancel` of every job of the sweep.
pub fn cancel(jobs: &[String]) -> Result<()> {
    if jobs.is_empty() {
        bail!("no Slurm job is recorded for this sweep");
    }
    let out = Command::new("scancel").args(jobs).output().context("cannot run scancel")?;
    if !out.status.success() {
        bail!("scancel {}: {}", jobs.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        // Slurm's sbatch(1) list of formats, by hand.
        for (t, s) in
            [("30", 1800), ("1:30", 90), ("2:00:10", 7210), ("1-2", 93600), ("1-2:03", 93780), ("1-0:0:5", 86405)]
        {
            assert_eq!(time_limit_seconds(t).unwrap(), s, "{t}");
        }
        for bad in ["", "x", "1:2:3:4", "0", "1-", "-5"] {
            assert!(time_limit_seconds(bad).is_err(), "{bad}");
        }
        let o = SlurmOptions { time: Some("2".into()), stop_before: Some(120), ..Default::default() };
        assert!(o.check().unwrap_err().to_string().contains("not shorter than --time 2 (120 s)"));
        let o = SlurmOptions { time: Some("3".into()), ..Default::default() };
        assert!(o.check().is_ok());
    }

    #[test]
    fn the_batch_script_is_valid_bash_and_says_what_it_runs() {
        let opts = SlurmOptions {
            time: Some("1:00:00".into()),
            cpus_per_task: Some(4),
            sbatch_args: vec!["--account=lab x".into()],
            requeue: true,
            ..Default::default()
        };
        let text = batch_script(
            "e-1234abcd",
            Path::new("/s/runs/e/sweeps/e-1234abcd"),
            Path::new("/s"),
            Path::new("/opt/runner it"),
            &opts,
        );
        for line in [
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --requeue",
            "#SBATCH --time=1:00:00",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --output=/s/runs/e/sweeps/e-1234abcd/point_%3a.log",
            "#SBATCH --chdir=/s",
            "'/opt/runner it' sweep point /s/runs/e/sweeps/e-1234abcd \"$SLURM_ARRAY_TASK_ID\" &",
            "requeue=1",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sbatch");
        std::fs::write(&path, &text).unwrap();
        let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    }

    #[test]
    fn arrays_and_options() {
        assert_eq!(array_spec(&[0, 1, 2, 3], Some(2)), "0-3%2");
        assert_eq!(array_spec(&[1, 3], None), "1,3");
        assert_eq!(array_spec(&[4], Some(2)), "4%2");
        let file = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("10".into()),
            sbatch_args: vec!["--account=a".into()],
            ..Default::default()
        };
        let cli = SlurmOptions { time: Some("20".into()), sbatch_args: vec!["--qos=b".into()], ..Default::default() };
        let m = file.merged(cli);
        assert_eq!((m.partition.as_deref(), m.time.as_deref()), (Some("gpu"), Some("20")));
        assert_eq!(m.sbatch_args, ["--account=a", "--qos=b"]);
        assert_eq!(quoted("a b'c"), r"'a b'\''c'");
        assert_eq!(quoted("/x/y-1.toml"), "/x/y-1.toml");
    }
}
