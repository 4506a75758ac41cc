#!/usr/bin/env bash
# The prepared GPU check (issue 14), one command on the GPU machine, from the repository
# root with the CUDA binaries built here by `make build-cuda` carried along:
#
#   bash gpu/check.sh OUT_DIR [BIN_DIR]      # BIN_DIR: target/cuda/release
#
# Writes into OUT_DIR: nvidia-smi.txt; parity.txt (runner-parity: every layer kind and the
# course's models on the GPU against the CPU); bench.txt (runner-bench and
# bench/torch_bench.py on the GPU, same cases and batches, eager and, time allowing,
# torch.compile, with the GPU memory peak of each side); train_<experiment>.log (short runs
# on the synthetic shapes sets written on the spot: metrics, time per epoch and the share
# of it spent waiting for the loader); summary.txt, written as it goes. Stages run in
# that order and a stage is skipped once CHECK_SECONDS (default 420) have passed, so that
# what was measured comes back inside the GPU machine's time limit.
# Without a GPU it says "no GPU" and exits 0.
set -uo pipefail
out=${1:?usage: gpu/check.sh OUT_DIR [BIN_DIR]}
bin=${2:-target/cuda/release}
budget=${CHECK_SECONDS:-420}
# CHECK_DEVICE=cpu (with a stand-in nvidia-smi on the PATH) dry-runs the whole script here.
device=${CHECK_DEVICE:-cuda:0}
torch_device=cpu
case $device in cuda*) torch_device=cuda ;; esac
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
# A stage's own time limit, cut to what is left before budget + 120 s (the last stage started
# in time still ends inside the machine's limit).
cap() { local left=$((budget + 120 - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
in_time() {
  if [ "$SECONDS" -ge "$budget" ]; then say "skipped $1: ${SECONDS}s of ${budget}s spent"; return 1; fi
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU: nvidia-smi finds none; nothing checked"
  exit 0
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
say "gpu: $(nvidia-smi -L | head -n1); $(nproc) CPUs"

. "$(dirname "$0")/env.sh"
if ! "$bin/runner" --version > "$out/version.txt" 2>&1; then
  say "FAIL: $bin/runner does not start:"; tee -a "$summary" < "$out/version.txt"
  ldd "$bin/runner" 2>&1 | grep -i 'not found' | tee -a "$summary"
  exit 1
fi
say "torch: $("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -n1)"

# Runs "$@" with its output into the file $1, polling the GPU's used memory meanwhile;
# sets PEAK_MIB to the peak above what was in use before it started.
PEAK_MIB=na
with_peak() {
  local log=$1; shift
  local base peak now pid
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -n1)
  peak=${base:-0}
  "$@" > "$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    now=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -n1)
    [ -n "$now" ] && [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.2
  done
  wait "$pid"
  local rc=$?
  PEAK_MIB=na
  [ -n "$base" ] && PEAK_MIB=$((peak - base))
  return $rc
}

status=0
# 1. Parity with the CPU.
if timeout "$(cap 180)" "$bin/runner-parity" "$device" > "$out/parity.txt" 2>&1; then
  say "parity: ok ($(grep -c ' ok$' "$out/parity.txt") cases, ${SECONDS}s)"
else
  say "parity: FAIL"; grep -E 'FAIL|Error|error|panick' "$out/parity.txt" | head -n 20 | tee -a "$summary"; status=1
fi

# 2. The bench beside the machine's PyTorch, eager fp32, same cases and batches.
torch_case() { # case, extra env
  local case=$1; shift
  env TORCH_BENCH_DEVICE=$torch_device "$@" timeout "$(cap 150)" "$py" - "$case" <<'EOF'
import runpy, sys, torch
case = sys.argv[1]
sys.argv = ["torch_bench.py", case, "1"]
try:
    runpy.run_path("bench/torch_bench.py", run_name="__main__")
finally:
    if torch.cuda.is_available():
        print(f"torch_allocated_peak_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}")
EOF
}
# Beside each: the launches of one step on each side, runner's counted on this machine's
# CPU (runner-bench --count: this build's GPU branches) and PyTorch's from its profiler on
# the GPU (TORCH_BENCH_COUNT=1).
cases="resnet20_train resnet_cifar_train alexnet_forward alexnet_forward_b1 yolo_shapes_train fcn_shapes_train lenet5_train conv2d_forward conv2d_backward conv_transpose2d_forward conv_transpose2d_backward op_overhead"
: > "$out/bench.txt"
echo "case runner_img_s torch_img_s ratio runner_peak_mib torch_peak_mib torch_allocated_mib runner_launches torch_launches" >> "$out/bench.txt"
launches() { sed -n 's/^count launches=\([0-9]*\).*/\1/p' | head -n1; }
for case in $cases; do
  in_time "bench $case" || break
  with_peak "$out/bench_runner_$case.log" env RUNNER_BENCH_DEVICE=$device timeout "$(cap 120)" "$bin/runner-bench" "$case"
  rpeak=$PEAK_MIB
  r=$(sed -n 's/^images_per_s=//p' "$out/bench_runner_$case.log")
  with_peak "$out/bench_torch_$case.log" torch_case "$case"
  tpeak=$PEAK_MIB
  t=$(sed -n 's/^images_per_s=//p' "$out/bench_torch_$case.log")
  talloc=$(sed -n 's/^torch_allocated_peak_mib=//p' "$out/bench_torch_$case.log")
  ratio=na
  [ -n "$r" ] && [ -n "$t" ] && ratio=$(awk -v a="$r" -v b="$t" 'BEGIN { printf "%.2f", a / b }')
  rl=$(env -u RUNNER_BENCH_DEVICE timeout "$(cap 60)" "$bin/runner-bench" --count "$case" 2>/dev/null | launches)
  tl=$(torch_case "$case" TORCH_BENCH_COUNT=1 2>/dev/null | launches)
  line="$case ${r:-na} ${t:-na} $ratio $rpeak $tpeak ${talloc:-na} ${rl:-na} ${tl:-na}"
  echo "$line" >> "$out/bench.txt"
  say "bench $line"
  [ -n "$r" ] || tail -n 3 "$out/bench_runner_$case.log" | tee -a "$summary"
done
cat "$out"/bench_*.log > "$out/bench_logs.txt" 2>/dev/null && rm -f "$out"/bench_*_*.log

# 3. Short training runs on data made here, with -v for the loader's share of each epoch.
work=$(mktemp -d)
for exp in fcn_shapes yolo_shapes; do
  in_time "train $exp" || break
  log=$out/train_$exp.log
  start=$SECONDS
  if timeout "$(cap 200)" "$bin/runner" -v "experiments/$exp.toml" --set experiment.device="\"$device\"" \
      --set train.epochs=2 --set experiment.output_dir="\"$work/runs\"" --set data.root="\"$work/shapes\"" \
      2>&1 | grep -v ' batch [0-9]*/[0-9]*: ' > "$log"; then
    say "train $exp ($((SECONDS - start))s with the data written): $(grep -E '^test\.(miou|map50|pixel_accuracy) = ' "$log" | tr '\n' ' ')"
    grep -E 'epoch [0-9]+/[0-9]+:|waiting for the loader' "$log" | sed 's/^.*\(INFO\|DEBUG\) //' >> "$summary"
  else
    say "train $exp: FAIL (see train_$exp.log)"; tail -n 5 "$log" | tee -a "$summary"; status=1
  fi
done
rm -rf "$work"

# 4. torch.compile, time allowing (CHECK_COMPILE=0 skips it): PyTorch's best effort on the
# training cases.
compile_cases="resnet_cifar_train fcn_shapes_train yolo_shapes_train"
[ "${CHECK_COMPILE:-1}" = 0 ] && compile_cases=
for case in $compile_cases; do
  in_time "torch.compile $case" || break
  t=$(torch_case "$case" TORCH_BENCH_COMPILE=1 2>>"$out/compile.err" | sed -n 's/^images_per_s=//p')
  say "bench-compiled $case torch_compile_img_s=${t:-na}"
done
say "done in ${SECONDS}s"
exit $status
