#!/usr/bin/env bash
# Measures the CUDA builds' alternatives on the bench's cases, one setting changed at a
# time against each build's default, and PyTorch's side with and without TF32. On the GPU
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
# PyTorch first (its default is in check.sh): without TF32, and under autocast to bf16.
for setting in TORCH_BENCH_PRECISION=bf16 TORCH_BENCH_TF32=0; do
  for case in $cases; do
    lim=$(cap 60) || continue
    t=$(env TORCH_BENCH_DEVICE=$torch_device $setting timeout "$lim" "$py" bench/torch_bench.py "$case" 1 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
    echo "torch $setting $case ${t:-na}" | tee -a "$out/paths.txt"
  done
done
for bin in "${bins[@]}"; do
  if [ ! -x "$bin/runner-bench" ]; then
    echo "skipped $bin: no runner-bench there" | tee -a "$out/paths.txt"
    continue
  fi
  variants=("default" "RUNNER_BENCH_PRECISION=bf16" "RUNNER_CUDA_POOL=trim" "RUNNER_CONV_PATH=candle")
  case $bin in *cudnn*) variants+=("RUNNER_CONV_PATH=dev" "RUNNER_CUDNN_TF32=1") ;; *) variants+=("RUNNER_CONV_PATH=dev") ;; esac
  for variant in "${variants[@]}"; do
    setting=()
    [ "$variant" = default ] || setting=("$variant")
    for case in $cases; do
      t=$(cap 60) || continue
      r=$(env ${setting[@]+"${setting[@]}"} RUNNER_BENCH_DEVICE=$device timeout "$t" "$bin/runner-bench" "$case" 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
      echo "runner $bin $variant $case ${r:-na}" | tee -a "$out/paths.txt"
    done
  done
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
