//! Helpers shared by the integration tests: generated IDX datasets and running the binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use runner::data::idx;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A learnable toy dataset in MNIST's layout (gzipped IDX): class `k` is a bright 6x6
/// square at one of 10 positions, plus seeded noise. Written as the four official file names.
pub fn write_toy_mnist(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = runner::rng::Rng::new(42);
    let mut make = |n: usize| {
        let mut pixels = vec![0u8; n * 28 * 28];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let k = (i % 10) as u8;
            labels[i] = k;
            let img = &mut pixels[i * 784..(i + 1) * 784];
            for p in img.iter_mut() {
                *p = (rng.next_f64() * 60.0) as u8;
            }
            let (r0, c0) = (2 + (k as usize / 5) * 14, 2 + (k as usize % 5) * 5);
            for r in r0..r0 + 6 {
                for c in c0..(c0 + 6).min(28) {
                    img[r * 28 + c] = 200 + (rng.next_f64() * 55.0) as u8;
                }
            }
        }
        (pixels, labels)
    };
    let (trp, trl) = make(n_train);
    let (tep, tel) = make(n_test);
    let gz = |name: &str, bytes: Vec<u8>| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        e.finish().unwrap();
    };
    gz("train-images-idx3-ubyte.gz", idx::encode_images(n_train, 28, 28, &trp));
    gz("train-labels-idx1-ubyte.gz", idx::encode_labels(&trl));
    gz("t10k-images-idx3-ubyte.gz", idx::encode_images(n_test, 28, 28, &tep));
    gz("t10k-labels-idx1-ubyte.gz", idx::encode_labels(&tel));
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `runner` binary in `cwd`, its download cache in `cwd/cache`.
pub fn runner(cwd: &Path, args: &[&str]) -> Output {
    runner_with(cwd, args, &[])
}

/// [`runner`] with more environment variables.
pub fn runner_with(cwd: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("RUNNER_CACHE", cwd.join("cache"))
        .envs(env.iter().copied())
        .output()
        .expect("runner binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The folder named by the last stdout line `run folder: <path>`.
pub fn run_folder(cwd: &Path, out: &Output) -> PathBuf {
    let last = out.stdout.lines().last().unwrap_or_default();
    let p = last.strip_prefix("run folder: ").unwrap_or_else(|| panic!("last line is {last:?}\n{}", out.stderr));
    cwd.join(p)
}

/// The value of the `test.<metric> = <v>` line the run printed.
pub fn printed(out: &Output, metric: &str) -> f64 {
    let prefix = format!("test.{metric} = ");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no test.{metric} line in {}\n{}", out.stdout, out.stderr))
}

/// The value of the `test.accuracy = <v>` line the run printed.
pub fn test_accuracy(out: &Output) -> f64 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("test.accuracy = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no test.accuracy line in {}\n{}", out.stdout, out.stderr))
}

/// A test that cannot run here, and why: written past the harness's capture (which hides
/// what a passing test prints), so that it shows in `cargo test`'s output, and appended to
/// `$RUNNER_SKIP_LOG`, which `make test` counts in its closing line. `required`: the
/// variable that `make test` sets where the dependency could be installed; then the
/// dependency's absence is a failure, not a skip.
pub fn skip(what: &str, reason: &str, required: &str) {
    use std::io::Write;
    if std::env::var(required).is_ok_and(|v| v == "1") {
        panic!("{what} cannot run ({reason}), but {required}=1: the dependency should have been installed");
    }
    let line = format!("SKIPPED {what}: {}", reason.trim());
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Ok(log) = std::env::var("RUNNER_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The Python the tests run: `RUNNER_PYTHON` (`make test` sets the project's venv, `.venv`,
/// made over Debian's /usr/bin/python3 with its system packages, PyTorch included), else
/// `.venv/bin/python` where it exists, else `fallback`.
pub fn python_or(fallback: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("RUNNER_PYTHON").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        fallback.into()
    }
}

/// Runs a Python script of `tests/` that reads run tables with pyarrow (as a user would)
/// with `args`, and expects `ok` in its output. Exit status 3 means pyarrow is missing:
/// skipped with a printed reason, unless `make test` set RUNNER_REQUIRE_PYARROW=1 after
/// installing it.
pub fn pyarrow_check(script: &str, args: &[&std::ffi::OsStr], ok: &str) {
    let python = python_or("python3");
    let out = Command::new(&python).arg(repo().join(script)).args(args).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.contains(ok), "{script}: {text}");
        }
        Ok(o) if o.status.code() == Some(3) => {
            skip(&format!("the pyarrow check {script}"), &String::from_utf8_lossy(&o.stderr), "RUNNER_REQUIRE_PYARROW")
        }
        Ok(o) => {
            panic!("{script} failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) => skip(
            &format!("the pyarrow check {script}"),
            &format!("no {} ({e})", python.display()),
            "RUNNER_REQUIRE_PYARROW",
        ),
    }
}
