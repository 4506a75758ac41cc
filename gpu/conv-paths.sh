#!/usr/bin/env bash
# Measures the CUDA build's convolution formulations (RUNNER_CONV_PATH: candle, dev, mixed;
# src/ops/conv_dev.rs) on the bench's convolution cases, checks whether cuDNN's TF32 is
# what separates the GPU from the CPU in runner-parity (NVIDIA_TF32_OVERRIDE=0 turns it
# off), and runs PyTorch's side without TF32. On the GPU machine, from the repository root:
#
#   bash gpu/conv-paths.sh OUT_DIR [BIN_DIR]
#
# CONV_SECONDS (default 420) bounds the whole script: each command's time limit is cut to
# what is left, and a command with less than 5 s left is skipped and says so.
set -uo pipefail
out=${1:?usage: gpu/conv-paths.sh OUT_DIR [BIN_DIR]}
bin=${2:-target/cuda/release}
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
cases="conv2d_forward conv2d_backward conv_transpose2d_forward conv_transpose2d_backward fcn_shapes_train yolo_shapes_train resnet_cifar_train alexnet_forward"
for path in candle mixed dev; do
  for case in $cases; do
    t=$(cap 60) || continue
    r=$(RUNNER_CONV_PATH=$path RUNNER_BENCH_DEVICE=$device timeout "$t" "$bin/runner-bench" "$case" 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
    echo "runner path=$path $case ${r:-na}" | tee -a "$out/paths.txt"
  done
done
for tf32 in on off; do
  extra=()
  [ "$tf32" = off ] && extra=(NVIDIA_TF32_OVERRIDE=0)
  t=$(cap 60) || continue
  env ${extra[@]+"${extra[@]}"} RUNNER_CONV_PATH=dev timeout "$t" "$bin/runner-parity" "$device" > "$out/parity_tf32_$tf32.txt" 2>&1
  echo "parity dev tf32=$tf32 rc=$? $(grep -c ' ok$' "$out/parity_tf32_$tf32.txt") ok, failing: $(grep FAIL "$out/parity_tf32_$tf32.txt" | awk '{print $2, $4}' | tr '\n' ';')" | tee -a "$out/paths.txt"
done
for case in $cases; do
  lim=$(cap 60) || continue
  t=$(TORCH_BENCH_DEVICE=$torch_device TORCH_BENCH_TF32=0 timeout "$lim" "$py" bench/torch_bench.py "$case" 1 2>>"$out/errors.txt" | sed -n 's/^images_per_s=//p')
  echo "torch tf32=off $case ${t:-na}" | tee -a "$out/paths.txt"
done
echo "done in ${SECONDS}s" | tee -a "$out/paths.txt"
