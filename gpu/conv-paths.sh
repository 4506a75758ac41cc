#!/usr/bin/env bash
# Measures the CUDA builds' alternatives on the bench's cases, one setting changed at a
# time against each build's default, and PyTorch's side under autocast to bf16 and without TF32. On the GPU
# machine, from the repository root:
#
#   bash gpu/conv-paths.sh OUT_DIR [BIN_DIR...]   # default: target/cudnn/release target/cuda/release
#
# Settings (read once by the binaries; for measuring, not user settings):
#   RUNNER_CONV_PATH=candle|mixed|dev|cudnn   the convolution formulation (src/ops/conv_dev.rs);
#                                             cudnn (a cuDNN build's default) is src/ops/cudnn.rs
#   RUNNER_CUDA_POOL=trim                     the driver's memory-pool default (src/device.rs)
#   RUNNER_CUDNN_TF32=1                       TF32 in runner's cuDNN calls
#   RUNNER_BENCH_PRECISION=bf16               the models' products in bf16 (`[experiment]
#                                             precision`); PyTorch's side: autocast to bf16
# It also checks what TF32 does to parity (runner-parity with NVIDIA_TF32_OVERRIDE=0).
# CONV_SECONDS (default 420) bounds the whole script: each command's time limit is cut to
# what is left, and a command with less than 5 s left is skipped and says so.
set -uo pipefail
out=${1:?usage: gpu/conv-paths.sh OUT_DIR [BIN_DIR...]}
shift
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/cudnn/release target/cuda/release)
device=${CHECK_DEVICE:-cuda:0} # cpu: a dry run here
torch_device=cpu
case $device in cuda*) torch_device=cuda ;; esac
mkdir -p "$out"
budget=${CONV_SECONDS:-420}
# cap N: N seconds, or what is left of the budget; fails (and says so) when nothing is.
cap() {
  local left=$((budget - SECONDS))
  if [ "$left" -lt 5 ]; then echo "skipped: ${SECONDS}s of ${budget}s spent" >>"$out/paths.txt"; return 1; fi
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
. "$(dirname "$0")/env.sh"
# The model cases and the cost of one op; check.sh has every case at the defaults.
cases="resnet_cifar_train fcn_shapes_train yolo_shapes_train alexnet_forward op_overhead"
# What to measure, most wanted first (the budget cuts the tail): each build's default, then
# bf16 on both sides, then TF32 on both sides, then the other formulations.
jobs=()
for bin in "${bins[@]}"; do jobs+=("runner $bin default"); done
for bin in "${bins[@]}"; do jobs+=("runner $bin RUNNER_BENCH_PRECISION=bf16"); done
jobs+=("torch - TORCH_BENCH_PRECISION=bf16")
for bin in "${bins[@]}"; do case $bin in *cudnn*) jobs+=("runner $bin RUNNER_CUDNN_TF32=1") ;; esac; done
jobs+=("torch - TORCH_BENCH_TF32=0")
for variant in RUNNER_CUDA_POOL=trim RUNNER_CONV_PATH=candle RUNNER_CONV_PATH=dev; do
  for bin in "${bins[@]}"; do jobs+=("runner $bin $variant"); done
done
for job in "${jobs[@]}"; do
  read -r side bin variant <<<"$job"
  setting=()
  [ "$variant" = default ] || setting=("$variant")
  if [ "$side" = runner ] && [ ! -x "$bin/runner-bench" ]; then
    echo "skipped $bin $variant: no runner-bench there" | tee -a "$out/paths.txt"
    continue
  fi
  for case in $cases; do
    t=$(cap 60) || continue
    if [ "$side" = runner ]; then
      r=$(env ${setting[@]+"${setting[@]}"} RUNNER_BENCH_DEVICE=$device timeout "$t" "$bin/runner-bench" "$case" 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
      echo "runner $bin $variant $case ${r:-na}" | tee -a "$out/paths.txt"
    else
      r=$(env TORCH_BENCH_DEVICE=$torch_device "${setting[@]}" timeout "$t" "$py" bench/torch_bench.py "$case" 1 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
      echo "torch $variant $case ${r:-na}" | tee -a "$out/paths.txt"
    fi
  done
done
# Parity with TF32 allowed and forbidden, per build.
for bin in "${bins[@]}"; do
  [ -x "$bin/runner-parity" ] || continue
  for tf32 in on off; do
    extra=()
    [ "$tf32" = off ] && extra=(NVIDIA_TF32_OVERRIDE=0)
    t=$(cap 60) || continue
    f=$out/parity_$(basename "$(dirname "$bin")")_tf32_$tf32.txt
    env ${extra[@]+"${extra[@]}"} timeout "$t" "$bin/runner-parity" "$device" > "$f" 2>&1
    echo "parity $bin tf32=$tf32 rc=$? $(grep -c ' ok$' "$f") ok, failing: $(grep FAIL "$f" | awk '{print $2, $4}' | tr '\n' ';')" | tee -a "$out/paths.txt"
  done
done
echo "done in ${SECONDS}s" | tee -a "$out/paths.txt"
