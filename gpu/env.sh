# Sourced by the GPU scripts: sets `py` (the machine's Python) and puts the CUDA libraries
# the binary links (cuBLAS, cuRAND, NVRTC, the runtime, cuDNN) on LD_LIBRARY_PATH, from
# that Python's NVIDIA wheels; the driver (libcuda.so.1) comes from the system.
py=${PYTHON:-python3}
nv=$("$py" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)/nvidia
for d in "$nv"/cu13/lib "$nv"/*/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
