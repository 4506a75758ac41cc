#!/usr/bin/env bash
# The prepared GPU check (issue 14), one command on the GPU machine, from the repository
# root with the CUDA binaries built here by `make build-cuda` carried along:
#
#   bash gpu/check.sh OUT_DIR [BIN_DIR]      # BIN_DIR: target/cuda/release
#
# Writes into OUT_DIR: nvidia-smi.txt; parity.txt (runner-parity: every layer kind and the
# course's models on the GPU against the CPU); train_<experiment>.log (short runs on the
# synthetic shapes sets written on the spot: metrics and time per epoch); bench.txt
# (runner-bench and bench/torch_bench.py on the GPU, same cases and batches, with the
# peak GPU memory of each side); summary.txt. Without a GPU it says "no GPU" and exits 0.
set -uo pipefail
out=${1:?usage: gpu/check.sh OUT_DIR [BIN_DIR]}
bin=${2:-target/cuda/release}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU: nvidia-smi finds none; nothing checked"
  exit 0
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
say "gpu: $(nvidia-smi -L | head -n1)"

# The CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC, the runtime) come from the
# machine's Python NVIDIA wheels; the driver (libcuda.so.1) from the system.
py=${PYTHON:-python3}
nv=$("$py" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)/nvidia
for d in "$nv"/cu13/lib "$nv"/*/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
if ! "$bin/runner" --version > "$out/version.txt" 2>&1; then
  say "FAIL: $bin/runner does not start:"; cat "$out/version.txt" | tee -a "$summary"; exit 1
fi

status=0
# 1. Parity with the CPU.
if timeout 300 "$bin/runner-parity" cuda:0 > "$out/parity.txt" 2>&1; then
  say "parity: ok ($(grep -c ' ok$' "$out/parity.txt") cases)"
else
  say "parity: FAIL"; grep -E 'FAIL|Error|error' "$out/parity.txt" | head -n 20 | tee -a "$summary"; status=1
fi

# 2. Short training runs on data made here.
work=$(mktemp -d)
for exp in fcn_shapes yolo_shapes; do
  log=$out/train_$exp.log
  if timeout 240 "$bin/runner" "experiments/$exp.toml" --set experiment.device='"cuda:0"' \
      --set train.epochs=2 --set experiment.output_dir="\"$work/runs\"" --set data.root="\"$work/shapes\"" > "$log" 2>&1; then
    say "train $exp: $(grep -E '^test\.(miou|map50|pixel_accuracy) = ' "$log" | tr '\n' ' ')"
    grep -E 'epoch [0-9]+/[0-9]+:' "$log" | sed 's/^.*INFO //' >> "$summary"
  else
    say "train $exp: FAIL (see train_$exp.log)"; tail -n 5 "$log" | tee -a "$summary"; status=1
  fi
done

# 3. The bench beside the machine's PyTorch, eager fp32, same cases and batches.
: > "$out/bench.txt"
for case in resnet_cifar_train alexnet_forward yolo_shapes_train fcn_shapes_train conv2d_forward conv2d_backward; do
  r=$(RUNNER_BENCH_DEVICE=cuda:0 timeout 120 "$bin/runner-bench" "$case" 2>>"$out/bench.err" | sed -n 's/^images_per_s=//p')
  t=$(TORCH_BENCH_DEVICE=cuda timeout 120 "$py" - "$case" <<'EOF' 2>>"$out/bench.err"
import runpy, sys, torch
case = sys.argv[1]
sys.argv = ["torch_bench.py", case, "1"]
try:
    runpy.run_path("bench/torch_bench.py", run_name="__main__")
finally:
    print(f"peak_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}")
EOF
)
  ips=$(echo "$t" | sed -n 's/^images_per_s=//p'); mib=$(echo "$t" | sed -n 's/^peak_mib=//p')
  ratio=na
  [ -n "$r" ] && [ -n "$ips" ] && ratio=$(awk -v a="$r" -v b="$ips" 'BEGIN { printf "%.2f", a / b }')
  echo "bench $case device=cuda runner=${r:-na} torch=${ips:-na} ratio=$ratio torch_peak_mib=${mib:-na}" | tee -a "$out/bench.txt" >> "$summary"
done
rm -rf "$work"
exit $status
