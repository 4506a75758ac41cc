"""A `runner export` state dict loaded by PyTorch itself, as a PyTorch user would.

Usage: check_export.py MODEL PTH SAFETENSORS IO
- MODEL: a torchvision constructor's name (`alexnet`, `vgg16`);
- PTH: runner's `--format pth` file, read with `torch.load`; SAFETENSORS: its
  `--format safetensors` file, read with `safetensors.torch.load_file`;
- IO: a safetensors file of runner's `input` and its eval-mode `logits`.
Both state dicts must load with `strict=True` and the model, in eval mode, must give
runner's logits; prints `export max abs difference D` (the larger of the two files').
Exit status 3: torch, torchvision or safetensors missing.
"""
import sys

try:
    import torch
    import torchvision
    from safetensors.torch import load_file
except ImportError as e:
    print(f"torch, torchvision or safetensors missing: {e}", file=sys.stderr)
    sys.exit(3)

name, pth, st, io = sys.argv[1:5]
tensors = load_file(io)
worst = 0.0
for sd in (torch.load(pth), load_file(st)):
    model = getattr(torchvision.models, name)()
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(tensors["input"])
    worst = max(worst, (out - tensors["logits"]).abs().max().item())
print(f"export max abs difference {worst:.3e}")
