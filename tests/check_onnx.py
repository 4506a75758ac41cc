"""A `runner export --format onnx` file checked by ONNX's own tools, as a deployment would.

Usage: check_onnx.py ONNX IO
- ONNX: runner's file. `onnx.checker.check_model(full_check=True)` must pass (it runs
  ONNX's strict shape inference, so the declared output shape must be the inferred one).
- IO: a safetensors file of an `input` and the `output` it must give (runner's eval-mode
  forward, or torchvision's).
onnxruntime (CPU) runs the file on `input`; prints
`onnx max abs difference A relative R scale S` (R = A / S, S = max |output|), then
`onnx input dims [...]`, `onnx output dims [...]` (a name for a symbolic dimension) and
`onnx metadata {json}`. Exit status 3: onnx, onnxruntime or safetensors missing.
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"onnx, onnxruntime or safetensors missing: {e}", file=sys.stderr)
    sys.exit(3)

path, io = sys.argv[1:3]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
tensors = load_file(io)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
(out,) = session.run(["output"], {"input": tensors["input"]})
want = tensors["output"]
if out.shape != want.shape:
    print(f"onnxruntime gave shape {out.shape}, expected {want.shape}", file=sys.stderr)
    sys.exit(1)
diff = float(np.abs(out.astype(np.float64) - want.astype(np.float64)).max())
scale = float(np.abs(want).max())
print(f"onnx max abs difference {diff:.3e} relative {diff / scale:.3e} scale {scale:.3e}")


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


print(f"onnx input dims {json.dumps(dims(model.graph.input[0]))}")
print(f"onnx output dims {json.dumps(dims(model.graph.output[0]))}")
print(f"onnx metadata {json.dumps({p.key: p.value for p in model.metadata_props})}")
