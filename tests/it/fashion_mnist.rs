//! One real run on Fashion-MNIST (Debian's `dataset-fashion-mnist`, or data/fashion_mnist):
//! the committed recipe, cut to 2 epochs. Skipped, with the reason printed, where the data
//! is absent, unless `make test` set RUNNER_REQUIRE_FASHION_MNIST=1 (apt could install it).

use runner::config::{load, LoadOptions};
use runner::data::{locate, Located};

use crate::common::{repo, run_folder, runner};

#[test]
fn lenet5_learns_fashion_mnist() {
    let repo = repo();
    let exp = repo.join("experiments/lenet5_fashion_mnist.toml");
    let loaded = load(&exp, &LoadOptions::default()).unwrap();
    if let Located::Missing { searched, .. } = locate(&loaded.config.data) {
        let reason = format!("Fashion-MNIST not found in {searched:?}; apt-get install dataset-fashion-mnist");
        crate::common::skip("lenet5_learns_fashion_mnist", &reason, "RUNNER_REQUIRE_FASHION_MNIST");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = runner(
        &repo,
        &[
            exp.to_str().unwrap(),
            "--set",
            "train.epochs=2",
            "--set",
            &format!("experiment.output_dir={:?}", out_dir.path().display().to_string()),
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let dir = run_folder(&repo, &out);
    assert!(dir.starts_with(out_dir.path()));
    let acc = crate::common::test_accuracy(&out);
    // Measured with this recipe (seed 0, batch 32, SGD lr 0.005, momentum 0.9, cosine over
    // the 2 epochs, 2 threads): 0.8651 after epoch 2 when first written, 0.8675 since
    // (2026-12-07, the portable level). 0.84 leaves margin for other thread counts and CPUs.
    assert!(acc >= 0.84, "test accuracy after 2 epochs is {acc}, expected >= 0.84");
}

#[test]
fn data_stats_reproduce_the_usual_fashion_mnist_normalization() {
    let repo = repo();
    let exp = repo.join("experiments/lenet5_fashion_mnist.toml");
    let loaded = load(&exp, &LoadOptions::default()).unwrap();
    if let Located::Missing { searched, .. } = locate(&loaded.config.data) {
        let reason = format!("Fashion-MNIST not found in {searched:?}");
        crate::common::skip(
            "data_stats_reproduce_the_usual_fashion_mnist_normalization",
            &reason,
            "RUNNER_REQUIRE_FASHION_MNIST",
        );
        return;
    }
    let out = runner(&repo, &["data", "stats", exp.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The mean and std commonly used for Fashion-MNIST (and in configs/data/fashion_mnist.toml).
    assert!(out.stdout.contains("normalize = { mean = [0.2860], std = [0.3530] }"), "{}", out.stdout);
}

/// `kernels = "portable"` gives the same bits on every x86-64 CPU: this 2-epoch run at 2
/// threads must end with the weights that the build before AVX-512 became the default
/// (commit 6d1c83d, AVX2 matrix kernels only) gave: its model.safetensors digest, recorded
/// by running that build on an AVX-512 EPYC (2026-12-07; this build's portable level gave
/// the same there). On an AVX-512 CPU this checks that the portable level really is the
/// AVX2 arithmetic; on any CPU, CI's or a user's, that it is the same bits.
#[test]
fn the_portable_kernels_give_the_same_bits_on_every_cpu() {
    use sha2::Digest;
    let repo = repo();
    let exp = repo.join("experiments/lenet5_fashion_mnist.toml");
    let loaded = load(&exp, &LoadOptions::default()).unwrap();
    if let Located::Missing { searched, .. } = locate(&loaded.config.data) {
        let reason = format!("Fashion-MNIST not found in {searched:?}; apt-get install dataset-fashion-mnist");
        crate::common::skip(
            "the_portable_kernels_give_the_same_bits_on_every_cpu",
            &reason,
            "RUNNER_REQUIRE_FASHION_MNIST",
        );
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([exp.to_str().unwrap(), "--set", "train.epochs=2", "--set", "experiment.kernels=\"portable\""])
        .args(["--set", &format!("experiment.output_dir={:?}", out_dir.path().display().to_string())])
        .current_dir(&repo)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUNNER_KERNELS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap();
    let weights = std::fs::read(repo.join(dir).join("model.safetensors")).unwrap();
    let digest: String = sha2::Sha256::digest(&weights).iter().take(8).map(|b| format!("{b:02x}")).collect();
    assert!(stdout.contains("test.accuracy = 0.8675"), "{stdout}");
    assert_eq!(digest, "b3d89e4e1b24c94f", "the portable kernels' weights changed");
}
