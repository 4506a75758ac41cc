#!/usr/bin/env bash
# Makes a CUDA build tree in .cuda/ from NVIDIA's Python wheels, with no GPU and no CUDA
# toolkit installed: `make build-cuda` runs it, then builds `--features cuda` against it.
#
#   .cuda/wheels/  the pinned wheels (pip install --target), about 1.2 GB (1.7 with cuDNN)
#   .cuda/root/    CUDA_ROOT for candle's build: bin, include, nvvm from the wheels, and a
#                  lib/ of unversioned links to their libraries (what the linker looks for)
#   .cuda/root/lib/stubs/libcuda.so
#                  a link-time stand-in for the driver library (soname libcuda.so.1, every
#                  driver function cudarc names, none of them callable). Only the linker
#                  sees it; at run time the GPU machine's real driver is loaded.
#
# The versions are CUDA 13.0's, the line of the GPU machine's driver (580) and PyTorch:
# PTX from a newer compiler does not load on an older driver. Prints the CUDA_ROOT.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$here/.cuda
python=${PYTHON:-python3}
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
)
# `gpu/cuda-root.sh cudnn`: cuDNN too (9.19, the GPU machine's PyTorch's), 370 MB more.
libs="cublas cublasLt curand nvrtc cudart"
if [ "${1:-cuda}" = cudnn ]; then
  wheels+=(nvidia-cudnn-cu13==9.19.0.56)
  libs="$libs cudnn"
fi
cu=$dir/wheels/nvidia/cu13
stamp=$dir/wheels/.pinned
# Installed already when every wanted wheel is in the stamp (a cuDNN tree serves both).
have=" $(cat "$stamp" 2>/dev/null || true) "
missing=0
for w in "${wheels[@]}"; do
  case $have in *" $w "*) ;; *) missing=1 ;; esac
done
if [ "$missing" = 1 ] || [ ! -x "$cu/bin/nvcc" ]; then
  echo "cuda-root: installing ${wheels[*]} into $dir/wheels" >&2
  rm -rf "$dir/wheels"
  "$python" -m pip install --quiet --no-deps --target "$dir/wheels" "${wheels[@]}"
  echo "${wheels[*]}" > "$stamp"
fi

root=$dir/root
rm -rf "$root"
mkdir -p "$root/lib/stubs"
for d in bin include nvvm; do ln -s "$cu/$d" "$root/$d"; done
for lib in $libs; do
  real=
  for f in "$cu/lib/lib$lib.so."* "$dir/wheels/nvidia/cudnn/lib/lib$lib.so."*; do
    case $f in *builtins*) ;; *) [ -e "$f" ] && [ -z "$real" ] && real=$f ;; esac
  done
  [ -n "$real" ] || { echo "cuda-root: no lib$lib.so.* in $cu/lib or nvidia/cudnn/lib" >&2; exit 1; }
  ln -s "$real" "$root/lib/lib$lib.so"
done

# The driver stub: every cu* function cudarc's driver bindings declare.
# (`|| true`: on a fresh machine the registry has no cudarc yet, and `ls` failing would end
# the script here under pipefail.)
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$cudarc" ]; then
  (cd "$here" && cargo fetch --quiet)
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -n1)
fi
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u |
  awk '{print "void " $1 "(void) {}"}' > "$root/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda_stub.c"
echo "$root"
