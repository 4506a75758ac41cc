#!/usr/bin/env bash
# Everything the GPU machine is asked, in one call inside its 10-minute limit, from the
# repository root with both CUDA builds carried along (or their archives, unpacked here):
#
#   bash gpu/all.sh OUT_DIR
#
# Prepared here: `make build-cuda` and `make build-cuda CUDA_FEATURES=cudnn` (22 min on 2
# cores); carried: target/cuda/runner-cuda.tar.xz and target/cudnn/runner-cudnn.tar.xz
# (about 55 MB with the working tree, under the 64 MiB a call may carry).
#
# 1. gpu/check.sh on the cuDNN build (parity, the bench beside PyTorch, short training runs),
# 2. gpu/conv-paths.sh on both builds (each alternative, bf16 included, against each
#    default; PyTorch without TF32 and under autocast to bf16),
# 3. gpu/profile.sh on the faster build's conv2d_forward and ResNet (kernel times, ncu).
# Budgets: ALL_CHECK_SECONDS (200), ALL_PATHS_SECONDS (220), ALL_PROFILE_SECONDS (100): 520 s of a call's 600.
set -uo pipefail
out=${1:?usage: gpu/all.sh OUT_DIR}
here=$(dirname "$0")
mkdir -p "$out"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: nvidia-smi finds none; nothing run" | tee "$out/all.txt"
  exit 0
fi
for features in cuda cudnn; do
  dir=target/$features/release
  if [ ! -x "$dir/runner" ] && [ -f "target/$features/runner-$features.tar.xz" ]; then
    mkdir -p "$dir" && tar -C "$dir" -xJf "target/$features/runner-$features.tar.xz"
  fi
done
CHECK_SECONDS=${ALL_CHECK_SECONDS:-200} CHECK_COMPILE=0 bash "$here/check.sh" "$out/check" target/cudnn/release
echo "check: rc=$?" | tee "$out/all.txt"
CONV_SECONDS=${ALL_PATHS_SECONDS:-220} bash "$here/conv-paths.sh" "$out/paths" target/cudnn/release target/cuda/release
echo "conv-paths: rc=$?" | tee -a "$out/all.txt"
PROFILE_SECONDS=${ALL_PROFILE_SECONDS:-100} bash "$here/profile.sh" "$out/profile" target/cudnn/release
echo "profile: rc=$? (${SECONDS}s in all)" | tee -a "$out/all.txt"
