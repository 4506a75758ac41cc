#!/usr/bin/env bash
# Where a GPU step's time goes, kernel by kernel, for runner and for PyTorch on the same
# case: Nsight Compute (ncu) times a window of each process's kernels (after the warm-up),
# and gpu/kernels.py sums them by kernel name. On the GPU machine, from the repository root:
#
#   bash gpu/profile.sh OUT_DIR [BIN_DIR] [CASE...]   # BIN_DIR: target/cuda/release
#
# Default cases: resnet_cifar_train conv2d_forward. Writes kernels_<side>_<case>.txt (the
# summary) and ncu_<side>_<case>.csv. ncu reads the GPU's counters on Firecracker machines
# only (the device notes: on gVisor it fails with LibraryNotLoaded); where it cannot, this
# says so and exits 0. The clocks are left alone (--clock-control none). PROFILE_SECONDS
# (default 240) bounds the whole script.
set -uo pipefail
out=${1:?usage: gpu/profile.sh OUT_DIR [BIN_DIR] [CASE...]}
bin=${2:-target/cuda/release}
shift $(($# < 2 ? $# : 2))
cases=${*:-resnet_cifar_train conv2d_forward}
budget=${PROFILE_SECONDS:-240}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
. "$here/env.sh"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -V | tail -n1)
if [ -z "$ncu" ]; then
  echo "no ncu: nothing profiled" | tee "$out/profile.txt"
  exit 0
fi
# Kernels to skip (the warm-up) and to time, per case: a window of whole steps or more.
window() {
  case $1 in
    resnet_cifar_train) echo "2000 600" ;;
    conv*) echo "40 60" ;;
    *) echo "1500 600" ;;
  esac
}
for case in $cases; do
  read -r skip count <<< "$(window "$case")"
  for side in runner torch; do
    left=$((budget - SECONDS))
    if [ "$left" -lt 10 ]; then echo "skipped $side $case: ${SECONDS}s of ${budget}s spent" | tee -a "$out/profile.txt"; continue; fi
    if [ "$side" = runner ]; then
      cmd=(env RUNNER_BENCH_DEVICE=cuda:0 "$bin/runner-bench" "$case")
    else
      cmd=(env TORCH_BENCH_DEVICE=cuda "$py" bench/torch_bench.py "$case" 1)
    fi
    csv=$out/ncu_${side}_$case.csv
    timeout "$((left < 120 ? left : 120))" "$ncu" --clock-control none --launch-skip "$skip" --launch-count "$count" \
      --metrics gpu__time_duration.sum --csv --log-file "$out/ncu_${side}_$case.log" "${cmd[@]}" > "$csv" 2> "$out/ncu_${side}_$case.err"
    rc=$?
    # With --log-file, ncu writes its CSV to the log; the program's own output stays in $csv.
    if grep -q '^"ID"' "$out/ncu_${side}_$case.log" 2>/dev/null; then
      mv "$out/ncu_${side}_$case.log" "$csv"
    fi
    if "$py" "$here/kernels.py" "$csv" > "$out/kernels_${side}_$case.txt" 2>&1; then
      echo "$side $case (ncu rc=$rc, skipped $skip kernels): $(head -n1 "$out/kernels_${side}_$case.txt")" | tee -a "$out/profile.txt"
      sed -n '2,6p' "$out/kernels_${side}_$case.txt" | tee -a "$out/profile.txt"
    else
      echo "$side $case: ncu gave no kernel times (rc=$rc): $(tail -n 2 "$out/ncu_${side}_$case.err" "$out/kernels_${side}_$case.txt" | tr '\n' ' ')" | tee -a "$out/profile.txt"
    fi
  done
done
echo "done in ${SECONDS}s" | tee -a "$out/profile.txt"
