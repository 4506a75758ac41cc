"""`make bench`: runner's throughput beside PyTorch's, same machine, same thread count.

For each case and thread count the two run in turn, three times (runner, torch, runner,
torch, ...), so machine noise hits both; the best of each side's three is reported:

    bench <case> threads=<n> runner=<images/s> torch=<images/s> ratio=<runner/torch>

torch=na where Debian's python3-torch is not installed. Loader cases run one epoch with
`threads` workers against torchvision's DataLoader (python3-torchvision) on the same files.
"""
import os
import subprocess
import sys

CASES = ["lenet5_train", "resnet_cifar_train", "alexnet_forward", "conv2d_forward", "conv2d_backward",
         "loader_cifar10_crop_flip_norm", "loader_jpeg_256_crop224_flip_pca", "yolo_shapes_train",
         "detect_eval_5000", "fcn_shapes_train", "conv_transpose2d_forward", "conv_transpose2d_backward",
         "resize_voc_antialias", "resize_voc_plain"]
# Cases without a PyTorch counterpart (torch=na): runner's evaluation alone.
RUNNER_ONLY = {"detect_eval_5000", "resize_voc_antialias", "resize_voc_plain"}
RUNNER = os.environ.get("RUNNER_BENCH", "target/release/runner-bench")
TORCH_PY = os.environ.get("TORCH_PYTHON", "/usr/bin/python3")
HERE = os.path.dirname(os.path.abspath(__file__))


def measure(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return None
    for line in out.stdout.splitlines():
        if line.startswith("images_per_s="):
            return float(line.split("=", 1)[1])
    return None


def have_torch():
    try:
        return subprocess.run([TORCH_PY, "-c", "import torch"], capture_output=True).returncode == 0
    except OSError:
        return False


def main():
    cases = sys.argv[1:] or CASES
    torch_ok = have_torch()
    for case in cases:
        for threads in (1, 2):
            runner, torch = [], []
            for _ in range(3):
                runner.append(measure([RUNNER, case], threads))
                if torch_ok and case not in RUNNER_ONLY:
                    # Loader cases: torchvision's DataLoader with `threads` worker processes.
                    script = "torch_loader_bench.py" if case.startswith("loader_") else "torch_bench.py"
                    torch.append(measure([TORCH_PY, os.path.join(HERE, script), case, str(threads)], threads))
            r = max((v for v in runner if v is not None), default=None)
            t = max((v for v in torch if v is not None), default=None)
            rs = f"{r:.1f}" if r is not None else "na"
            ts = f"{t:.1f}" if t is not None else "na"
            ratio = f"{r / t:.2f}" if r is not None and t else "na"
            print(f"bench {case} threads={threads} runner={rs} torch={ts} ratio={ratio}", flush=True)


if __name__ == "__main__":
    main()
