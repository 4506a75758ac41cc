"""`make bench`: runner's throughput beside PyTorch's, same machine, same thread count.

Two references where they are installed: Debian's python3-torch (`torch`, /usr/bin/python3,
or TORCH_PYTHON) and the newest PyTorch from the package index (`torch_new`, the venv that
`make bench-torch` makes in .bench-venv, or TORCH_NEW_PYTHON). For each case and thread
count the sides run in turn, three times (runner, torch, torch_new, runner, ...), so
machine noise hits all; the best of each side's three is reported:

    bench <case> threads=<n> kernels=<level> runner=<images/s> torch=<images/s> ratio=<runner/torch>
          runner_peak_mib=<MiB> torch_peak_mib=<MiB>
          torch_new=<images/s> ratio_new=<runner/torch_new> torch_new_peak_mib=<MiB>

(kernels: the CPU kernel level runner-bench ran with, the widest the CPU has, or avx2 with
RUNNER_KERNELS=portable; the peak resident memory of each side's process, the largest of its three runs; the
torch_new fields only where the venv exists). `na` where a side is not installed.
Loader cases run one epoch with `threads` workers against torchvision's DataLoader on the
same files.
"""
import os
import subprocess
import sys
import tempfile

CASES = ["lenet5_train", "resnet20_train", "resnet_cifar_train", "alexnet_forward", "alexnet_forward_b1", "alexnet_classifier", "conv2d_forward", "conv2d_backward",
         "loader_cifar10_crop_flip_norm", "loader_jpeg_256_crop224_flip_pca", "yolo_shapes_train",
         "detect_eval_5000", "fcn_shapes_train", "conv_transpose2d_forward", "conv_transpose2d_backward",
         "resize_voc_antialias", "resize_voc_decoded", "resize_voc_plain", "board_runs_1000"]
# Cases without a PyTorch counterpart (torch=na): runner's evaluation alone.
# board_runs_1000: runs per second of `runner board`'s runs table over 1,000 runs of 100
# epochs (above 1000: the table in under a second).
RUNNER_ONLY = {"detect_eval_5000", "resize_voc_antialias", "resize_voc_decoded", "resize_voc_plain", "board_runs_1000"}
RUNNER = os.environ.get("RUNNER_BENCH", "target/release/runner-bench")
# The model cases whose GPU step runner-bench --count counts (launches, copies, syncs,
# allocations; candle's CUDA backend as runner drives it, counted on the CPU), and the
# targets of a step (issue 30): the batch and its labels the only uploads, nothing read back.
COUNTED = ["lenet5_train", "resnet20_train", "resnet_cifar_train", "alexnet_forward", "alexnet_forward_b1",
           "yolo_shapes_train", "fcn_shapes_train"]
TARGETS = {case: {"h2d": 2, "d2h": 0} for case in COUNTED}
TARGETS["resnet20_train"]["launches"] = 350
# alexnet_forward reads its output back by design (the case is a forward and its result).
for case in ("alexnet_forward", "alexnet_forward_b1"):
    TARGETS[case]["d2h"] = 1
# The CPU kernel levels runner-bench reported (`kernels=`) for the case being measured.
KERNELS = set()
HERE = os.path.dirname(os.path.abspath(__file__))
# (field name, interpreter): Debian's PyTorch, then the newest from the package index.
REFERENCES = [
    ("torch", os.environ.get("TORCH_PYTHON", "/usr/bin/python3")),
    ("torch_new", os.environ.get("TORCH_NEW_PYTHON", os.path.join(HERE, "..", ".bench-venv", "bin", "python"))),
]


def measure(cmd, threads):
    """(images per second, peak resident memory of the process in MiB); None for either
    when the command fails. The memory is the measured process's own (os.wait4's
    ru_maxrss): for the loader cases, torchvision's worker processes are not in it."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace"))
            return None, None
    mib = usage.ru_maxrss / 1024  # KiB on Linux
    for line in stdout.splitlines():
        if line.startswith("kernels="):
            KERNELS.add(line.split("=", 1)[1])
    for line in stdout.splitlines():
        if line.startswith("images_per_s="):
            return float(line.split("=", 1)[1]), mib
    return None, mib


def count_line(case, build):
    """`count <case> build=<cuda|cudnn> launches=.. ... target_..:met|NOT_MET` from
    runner-bench --count: the plain CUDA build (candle's im2col convolutions) or the cuDNN
    build (runner's cuDNN calls, RUNNER_CONV_PATH=cudnn)."""
    env = dict(os.environ)
    env.pop("RUNNER_CONV_PATH", None)
    env.pop("RUNNER_BENCH_DEVICE", None)
    if build == "cudnn":
        env["RUNNER_CONV_PATH"] = "cudnn"
    p = subprocess.run([RUNNER, "--count", case], capture_output=True, text=True, env=env)
    counts = {}
    for line in p.stdout.splitlines():
        if line.startswith("count "):
            counts = dict(kv.split("=") for kv in line.split()[1:])
    if p.returncode != 0 or not counts:
        sys.stderr.write(p.stderr)
        return f"count {case} build={build} failed"
    line = f"count {case} build={build} " + " ".join(f"{k}={v}" for k, v in counts.items())
    for key, limit in TARGETS.get(case, {}).items():
        got = int(counts[key])
        line += f" target_{key}<={limit}:{'met' if got <= limit else 'NOT_MET'}"
    return line


def torch_version(python):
    """The interpreter's torch version, or None where it has none."""
    try:
        out = subprocess.run([python, "-c", "import torch, torchvision; print(torch.__version__)"],
                             capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def best(results):
    """(the best throughput, the largest memory peak) of a side's runs."""
    return (max((v for v, _ in results if v is not None), default=None),
            max((m for _, m in results if m is not None), default=None))


def main():
    cases = sys.argv[1:] or CASES
    refs = []
    for name, python in REFERENCES:
        version = torch_version(python)
        print(f"reference {name}: " + (f"PyTorch {version} ({python})" if version else f"not installed ({python})"),
              flush=True)
        if version:
            refs.append((name, python))
    names = [n for n, _ in REFERENCES]
    fmt = lambda v, f: f.format(v) if v is not None else "na"
    for case in cases:
        if case in COUNTED:
            for build in ("cuda", "cudnn"):
                print(count_line(case, build), flush=True)
        for threads in (1, 2):
            KERNELS.clear()
            runs = {"runner": []}
            runs.update({n: [] for n in names})
            for _ in range(3):
                runs["runner"].append(measure([RUNNER, case], threads))
                if case in RUNNER_ONLY:
                    continue
                for name, python in refs:
                    # Loader cases: torchvision's DataLoader with `threads` worker processes.
                    script = "torch_loader_bench.py" if case.startswith("loader_") else "torch_bench.py"
                    runs[name].append(measure([python, os.path.join(HERE, script), case, str(threads)], threads))
            r, rm = best(runs["runner"])
            line = f"bench {case} threads={threads} kernels={'+'.join(sorted(KERNELS)) or 'na'} runner={fmt(r, '{:.1f}')}"
            for name in names:
                t, tm = best(runs[name])
                ratio = f"{r / t:.2f}" if r is not None and t else "na"
                if name == "torch":
                    line += f" torch={fmt(t, '{:.1f}')} ratio={ratio} runner_peak_mib={fmt(rm, '{:.0f}')}"
                    line += f" torch_peak_mib={fmt(tm, '{:.0f}')}"
                elif any(n == name for n, _ in refs):
                    line += f" {name}={fmt(t, '{:.1f}')} ratio_new={ratio} {name}_peak_mib={fmt(tm, '{:.0f}')}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
