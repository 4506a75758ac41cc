//! Which CPU kernels run: the widest the CPU has, or the portable ones.
//!
//! One binary serves every x86-64 CPU. By default the matrix products (gemm) and runner's
//! own kernels take the widest vectors the CPU has, chosen at run time: AVX-512 where it
//! is present, AVX2+FMA otherwise. The AVX-512 matrix kernels sum in another order than the
//! AVX2 ones, so their results differ in the last bits: a run is the same bits on the same
//! machine (and thread count), not across machines. `portable` (`[experiment] kernels =
//! "portable"`, or `RUNNER_KERNELS=portable` for every process that uses runner's kernels,
//! a CI job for instance) takes the AVX2+FMA kernels on every CPU, whose results are the
//! same bits on all of them.
//!
//! The choice is process-wide and may change between runs of one process; runs record the
//! level they ran with ([`level`]) beside their thread count.

/// The widest kernels a run uses, as run tables and checkpoints name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No AVX2+FMA (or not x86-64): baseline kernels.
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F (gemm's x86-v4 kernels).
    Avx512,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The widest level this CPU has, whatever was asked.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The environment variable that forces the portable kernels in every runner process.
pub const ENV: &str = "RUNNER_KERNELS";

/// Whether `RUNNER_KERNELS` forces the portable kernels: `portable` does; unset, empty or
/// `auto` leaves the choice to the run; anything else is an error naming the variable.
pub fn env_forces_portable() -> Result<bool, String> {
    match std::env::var(ENV) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(v) => forces_portable(&v),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!("{ENV}={v:?}: expected `auto` or `portable`")),
    }
}

fn forces_portable(value: &str) -> Result<bool, String> {
    match value {
        "" | "auto" => Ok(false),
        "portable" => Ok(true),
        v => Err(format!("{ENV}={v}: expected `auto` or `portable`")),
    }
}

/// Asks for the portable kernels (`true`) or the widest (`false`, unless `RUNNER_KERNELS=
/// portable` forces them); returns the level that now runs. An invalid `RUNNER_KERNELS` is
/// an error.
pub fn set_portable(portable: bool) -> Result<Level, String> {
    let portable = portable || env_forces_portable()?;
    gemm_common::set_x86_v4(!portable);
    Ok(level())
}

/// A process's start: the widest kernels unless `RUNNER_KERNELS=portable`, whose value is
/// checked here (a wrong one is an error naming the variable); returns the level.
pub fn from_env() -> Result<Level, String> {
    set_portable(false)
}

/// The level a run on `device` records: the kernels' on the CPU, none on a GPU, whose own
/// kernels do the model's arithmetic.
pub fn level_on(device: &candle_core::Device) -> Option<Level> {
    device.is_cpu().then(level)
}

/// Whether the portable kernels run. The one switch is gemm's (vendor/gemm-common), which
/// until set takes `RUNNER_KERNELS` on its first read: runner's kernels follow it, so the
/// matrix products and runner's own kernels never run at different levels.
pub fn portable() -> bool {
    !gemm_common::get_x86_v4()
}

/// The level the kernels run at now: the CPU's widest, at most AVX2 when portable.
pub fn level() -> Level {
    capped(detected(), portable())
}

fn capped(detected: Level, portable: bool) -> Level {
    if portable {
        detected.min(Level::Avx2)
    } else {
        detected
    }
}

// The switch itself is process-wide, so it is tested in processes of its own
// (tests/it/resume.rs, tests/it/fashion_mnist.rs): flipped here, it would change the
// kernels of the tests that run beside this one.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_caps_the_level_at_avx2() {
        assert_eq!(capped(Level::Avx512, true), Level::Avx2);
        assert_eq!(capped(Level::Avx512, false), Level::Avx512);
        assert_eq!(capped(Level::Avx2, true), Level::Avx2);
        assert_eq!(capped(Level::Baseline, true), Level::Baseline);
    }

    #[test]
    fn the_environment_takes_auto_or_portable() {
        assert_eq!(forces_portable(""), Ok(false));
        assert_eq!(forces_portable("auto"), Ok(false));
        assert_eq!(forces_portable("portable"), Ok(true));
        assert_eq!(forces_portable("avx2"), Err("RUNNER_KERNELS=avx2: expected `auto` or `portable`".into()));
    }
}
