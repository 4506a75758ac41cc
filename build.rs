//! With `--features cuda`: runner's own kernels (src/ops/fused.cu) to PTX with nvcc, for
//! compute capability `CUDA_COMPUTE_CAP` (else this machine's GPU's, else 90: H100 / H200), into
//! `$OUT_DIR/fused.ptx`, which src/ops/fused/gpu.rs embeds. `make build-cuda` puts NVIDIA's
//! nvcc (from its Python wheels) on the PATH. Without the feature this does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ops/fused.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    // ok: cargo always sets OUT_DIR for a build script.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    // As candle's kernels: CUDA_COMPUTE_CAP, else the GPU nvidia-smi reports, else 9.0.
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().or_else(gpu_cap).unwrap_or_else(|| "90".into());
    let nvcc = match std::env::var_os("CUDA_ROOT") {
        Some(root) if PathBuf::from(&root).join("bin/nvcc").exists() => PathBuf::from(root).join("bin/nvcc"),
        _ => PathBuf::from("nvcc"),
    };
    // --fmad=false: each multiply and add rounded as the CPU's update rounds them (the
    // optimizers match the CPU to the last bit where the formula allows).
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", &format!("-arch=sm_{cap}"), "-o"])
        .arg(&out)
        .arg("src/ops/fused.cu")
        .status();
    // ok: a build script fails the build by panicking; the message names the file and the fix.
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) compiling src/ops/fused.cu", nvcc.display()),
        Err(e) => panic!(
            "could not run {} to compile src/ops/fused.cu: {e} (`make build-cuda` installs it; or set CUDA_ROOT)",
            nvcc.display()
        ),
    }
}

/// The first GPU's compute capability as nvidia-smi reports it (`9.0` -> `90`).
fn gpu_cap() -> Option<String> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output().ok()?;
    let cap = String::from_utf8(out.stdout).ok()?.lines().next()?.trim().replace('.', "");
    (out.status.success() && !cap.is_empty() && cap.chars().all(|c| c.is_ascii_digit())).then_some(cap)
}
