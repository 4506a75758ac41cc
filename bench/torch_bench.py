"""PyTorch reference for `make bench`: the same cases, models and batch sizes as
src/bin/runner-bench/. Run with Debian's python3-torch:

    /usr/bin/python3 bench/torch_bench.py lenet5_train 2

Prints one line `images_per_s=<x>`.
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# TORCH_BENCH_DEVICE=cuda runs the cases on the GPU (torch >= 2.0: set_default_device).
DEVICE = os.environ.get("TORCH_BENCH_DEVICE", "cpu")


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


# TORCH_BENCH_COMPILE=1 runs the model cases through torch.compile (the GPU check's second
# PyTorch column); the default is eager.
COMPILE = os.environ.get("TORCH_BENCH_COMPILE") == "1"


def compiled(m):
    return torch.compile(m) if COMPILE else m


def sized(cpu, gpu):
    """(batch, warmup, iters) of a case on the CPU or on the GPU, as runner-bench's `sized`."""
    return gpu if DEVICE.startswith("cuda") else cpu


# TORCH_BENCH_COUNT=1 (on a GPU): instead of the speed, the CUDA runtime calls of the third
# step from PyTorch's profiler, as runner-bench --count prints runner's:
# `count launches=.. memsets=.. dtod=.. h2d=.. d2h=.. syncs=..` (kernel launches, cuBLAS's and
# cuDNN's included; memcpy kinds by direction).
COUNT = os.environ.get("TORCH_BENCH_COUNT") == "1"


def count_step(step):
    from torch.profiler import profile, ProfilerActivity
    if not DEVICE.startswith("cuda"):
        print("count launches=na (PyTorch's launches are counted on a GPU)")
        return 0.0
    step()
    step()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    calls = {}
    for e in prof.events():
        calls[e.name] = calls.get(e.name, 0) + 1
    launches = sum(n for k, n in calls.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    kinds = {"HtoD": 0, "DtoH": 0, "DtoD": 0}
    for e in prof.events():
        for kind in kinds:
            if e.name.startswith("Memcpy " + kind):
                kinds[kind] += 1
    memsets = sum(n for k, n in calls.items() if k.startswith("Memset"))
    syncs = sum(n for k, n in calls.items() if k in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
    print(f"count launches={launches} memsets={memsets} dtod={kinds['DtoD']} h2d={kinds['HtoD']} "
          f"d2h={kinds['DtoH']} syncs={syncs}")
    return 0.0


def timed(batch, warmup, iters, step):
    if COUNT:
        return count_step(step)
    for _ in range(warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - t)


def lenet5_train():
    m = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    m = compiled(m)
    n, warmup, iters = sized((100, 5, 60), (100, 10, 200))
    x, y = torch.rand(n, 1, 28, 28) * 2 - 1, torch.arange(n) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return timed(n, warmup, iters, step)


class ResNetBench(nn.Module):
    """conv 3->64, one ResBlock (conv-bn-relu-conv-bn, add, relu), global avg pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.c1 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        r = self.bn2(self.c2(F.relu(self.bn1(self.c1(h)))))
        h = F.relu(h + r)
        return self.fc(h.mean((2, 3)))


def resnet_cifar_train():
    m = ResNetBench()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m = compiled(m)
    n, warmup, iters = sized((64, 2, 8), (256, 5, 50))
    x, y = torch.rand(n, 3, 32, 32) * 2 - 1, torch.arange(n) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return timed(n, warmup, iters, step)


class BasicBlock(nn.Module):
    """ResNet-20's block as configs/models/resnet20.toml has it: conv-bn-relu-conv-bn, the
    shortcut (identity, or a 1x1 conv + bn projection where the shape changes), add, relu."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.c1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.shortcut = (nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                         if (i, stride) != (o, 1) else nn.Identity())

    def forward(self, x):
        r = self.bn2(self.c2(F.relu(self.bn1(self.c1(x)))))
        return F.relu(self.shortcut(x) + r)


def resnet20():
    """The zoo's resnet20 (272,474 parameters): stem conv-bn-relu, 3 stages of 3 blocks
    (16, 32, 64 channels), global average pool, linear 64->10."""
    blocks, i = [], 16
    for o, stride in [(16, 1)] * 3 + [(32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1)]:
        blocks.append(BasicBlock(i, o, stride))
        i = o
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def resnet20_train():
    """ResNet-20 at the paper's recipe: batch 128, SGD lr 0.1, momentum 0.9, weight decay 1e-4."""
    m = resnet20()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    m = compiled(m)
    n, warmup, iters = sized((128, 1, 4), (128, 10, 100))
    x, y = torch.rand(n, 3, 32, 32) * 2 - 1, torch.arange(n) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return timed(n, warmup, iters, step)


def alexnet_forward(batch=None):
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 1000))
    m = compiled(nn.Sequential(features, nn.Flatten(), classifier).eval())
    n, warmup, iters = sized((8, 1, 5), (128, 3, 20))
    if batch == 1:
        n, warmup, iters = 1, 2, 20
    x = torch.rand(n, 3, 224, 224) * 2 - 1

    def step():
        with torch.no_grad():
            m(x).sum().item()
    return timed(n, warmup, iters, step)


def alexnet_classifier():
    """AlexNet's three linear layers alone at batch 8, as runner-bench's case: the products
    in a chain (no ReLU), forward only."""
    m = compiled(nn.Sequential(nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)).eval())
    x = torch.rand(8, 9216) * 2 - 1

    def step():
        with torch.no_grad():
            m(x).sum().item()
    return timed(8, 2, 20, step)


def conv_op(backward):
    """runner-bench's conv2d case: RUNNER_BENCH_CONV=batch,in,side,out[,kernel,stride,padding]
    (default 64,64,32,64,3,1,1)."""
    dims = [int(v) for v in os.environ.get("RUNNER_BENCH_CONV", "64,64,32,64").split(",")]
    n, c, side, o, k, stride, pad = dims + [3, 1, 1][len(dims) - 4:]
    x = (torch.rand(n, c, side, side) * 2 - 1).requires_grad_(True)
    return op_rate(nn.Conv2d(c, o, k, stride=stride, padding=pad, bias=False), x, backward)


def op_rate(op, x, backward):
    """Images per second of `op` on the batch `x`: forward alone, or backward alone (the
    forward outside the timed part), after one warm-up, over three calls (on the GPU five
    and fifty)."""
    n = x.shape[0]
    _, warmup, iters = sized((n, 1, 3), (n, 5, 50))
    if backward:
        def step():
            y = op(x)
            t = time.perf_counter()
            y.sum().backward()
            sync()
            return time.perf_counter() - t
        for _ in range(warmup):
            step()
        total = sum(step() for _ in range(iters))
        return n * iters / total

    def fwd():
        with torch.no_grad():
            op(x)
    return timed(n, warmup, iters, fwd)


def cbl(i, o, k, s=1):
    return [nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.1)]


def yolo_targets(p, objects, s, b, c, size, lambdas):
    """Per value of p [n, s, s, b*5+c] its target and weight, as runner's (src/task/detect.rs):
    the responsible predictor by IoU of the detached boxes, one object per cell (largest).
    Built on the CPU from one copy of p (as runner does), then moved to p's device."""
    lc, lo, ln, lcl = lambdas
    n = p.shape[0]
    d = b * 5 + c
    v = p.detach().cpu()
    t = torch.zeros_like(v)
    w = torch.zeros_like(v)
    w[..., 4:5 * b:5] = ln
    for i, objs in enumerate(objects):
        cells = {}
        for cls, (x0, y0, x1, y1) in objs:
            cx, cy, bw, bh = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
            col, row = min(int(cx * s), s - 1), min(int(cy * s), s - 1)
            if (row, col) not in cells or bw * bh > cells[(row, col)][3] * cells[(row, col)][4]:
                cells[(row, col)] = (cx * s - col, cy * s - row, cls, bw, bh)
        for (row, col), (tx, ty, cls, bw, bh) in cells.items():
            truth = ((col + tx) / s - bw / 2, (row + ty) / s - bh / 2, (col + tx) / s + bw / 2, (row + ty) / s + bh / 2)
            best, best_iou = 0, -1.0
            for k in range(b):
                px, py, sw, sh = v[i, row, col, 5 * k:5 * k + 4].tolist()
                pcx, pcy, pw, ph = (col + px) / s, (row + py) / s, sw * sw, sh * sh
                box = (pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2)
                iw = max(min(box[2], truth[2]) - max(box[0], truth[0]), 0)
                ih = max(min(box[3], truth[3]) - max(box[1], truth[1]), 0)
                union = pw * ph + bw * bh - iw * ih
                iou = iw * ih / union if union > 0 else 0.0
                if iou > best_iou:
                    best, best_iou = k, iou
            o = 5 * best
            t[i, row, col, o:o + 4] = torch.tensor([tx, ty, bw ** 0.5, bh ** 0.5], device=t.device)
            w[i, row, col, o:o + 4] = lc
            t[i, row, col, o + 4] = best_iou
            w[i, row, col, o + 4] = lo
            w[i, row, col, 5 * b:] = lcl
            t[i, row, col, 5 * b + cls] = 1.0
    return t.to(p.device), w.to(p.device)


def yolo_shapes_train():
    m = nn.Sequential(
        *cbl(3, 16, 3, 2), *cbl(16, 32, 3), nn.MaxPool2d(2), *cbl(32, 64, 3), nn.MaxPool2d(2),
        *cbl(64, 128, 3), nn.MaxPool2d(2), *cbl(128, 256, 3), *cbl(256, 128, 1), *cbl(128, 256, 3),
        nn.Conv2d(256, 15, 1), nn.Sigmoid())
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m = compiled(m)
    _, warmup, iters = sized((32, 1, 4), (32, 5, 50))
    x = torch.rand(32, 3, 160, 160) * 2 - 1
    objects = [[((i * 3 + k) % 5, (((i * 37 + k * 53) % 120), ((i * 17 + k * 71) % 120),
                                   ((i * 37 + k * 53) % 120) + 30, ((i * 17 + k * 71) % 120) + 30))
                for k in range(3)] for i in range(32)]

    def step():
        opt.zero_grad()
        p = m(x).permute(0, 2, 3, 1)  # [n, 10, 10, 15]
        t, w = yolo_targets(p, objects, 10, 2, 5, 160, (5.0, 1.0, 0.5, 1.0))
        ((p - t) ** 2 * w).sum().div(p.shape[0]).backward()
        opt.step()
    return timed(32, warmup, iters, step)


def cbr(i, o, k=3, s=1, d=1):
    return [nn.Conv2d(i, o, k, s, d * (k // 2), dilation=d, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class FcnShapes(nn.Module):
    """configs/models/fcn_shapes.toml: stride-16 scores, x2 + stride-8 scores, x2 +
    stride-4 scores, x4 bilinear."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(*cbr(3, 16, s=2), *cbr(16, 32), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*cbr(32, 64), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(*cbr(64, 128), nn.MaxPool2d(2), *cbr(128, 256), *cbr(256, 256, d=2),
                                    nn.Conv2d(256, 6, 1))
        self.score8 = nn.Conv2d(64, 6, 1)
        self.score4 = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        up = lambda t, s: F.interpolate(t, scale_factor=s, mode="bilinear", align_corners=False)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s3 = up(self.stage3(s2), 2)
        s8 = up(self.score8(s2) + s3, 2)
        return up(self.score4(s1) + s8, 4)


def fcn_shapes_train():
    m = FcnShapes()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m = compiled(m)
    _, warmup, iters = sized((32, 1, 4), (32, 5, 50))
    x = torch.rand(32, 3, 160, 160) * 2 - 1
    masks = torch.zeros(32, 160, 160, dtype=torch.long)
    for i in range(32):
        x0, y0 = (i * 37) % 100 + 10, (i * 17) % 100 + 10
        masks[i, max(y0 - 2, 0):y0 + 42, max(x0 - 2, 0):x0 + 42] = 255
        masks[i, y0:y0 + 40, x0:x0 + 40] = i % 5 + 1

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), masks, ignore_index=255).backward()
        opt.step()
    return timed(32, warmup, iters, step)


def conv_transpose_op(backward):
    x = (torch.rand(32, 21, 34, 34) * 2 - 1).requires_grad_(True)
    return op_rate(nn.ConvTranspose2d(21, 21, 4, stride=2, bias=False), x, backward)


def op_overhead():
    """The fixed cost of one op, as runner-bench's: 1000 element-wise ops (y * 0.5, + 0.25) on
    a 64x64 tensor, in ops per second."""
    x = torch.rand(64, 64) * 2 - 1
    _, warmup, iters = sized((1, 2, 20), (1, 5, 50))

    def step():
        y = x
        for _ in range(500):
            y = y * 0.5 + 0.25

    return timed(1000, warmup, iters, step)


CASES = {
    "op_overhead": op_overhead,
    "fcn_shapes_train": fcn_shapes_train,
    "conv_transpose2d_forward": lambda: conv_transpose_op(False),
    "conv_transpose2d_backward": lambda: conv_transpose_op(True),
    "yolo_shapes_train": yolo_shapes_train,
    "lenet5_train": lenet5_train,
    "resnet_cifar_train": resnet_cifar_train,
    "resnet20_train": resnet20_train,
    "alexnet_forward": alexnet_forward,
    "alexnet_forward_b1": lambda: alexnet_forward(1),
    "alexnet_classifier": alexnet_classifier,
    "conv2d_forward": lambda: conv_op(False),
    "conv2d_backward": lambda: conv_op(True),
}

if __name__ == "__main__":
    case, threads = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    if DEVICE != "cpu":
        torch.set_default_device(DEVICE)
    # TORCH_BENCH_TF32=0: cuDNN's convolutions in plain fp32 (PyTorch's default lets them
    # use TF32 tensor cores, 10-bit mantissas).
    if os.environ.get("TORCH_BENCH_TF32") == "0":
        torch.backends.cudnn.allow_tf32 = False
    # TORCH_BENCH_PRECISION=bf16: the case under autocast to bf16 (PyTorch's mixed precision;
    # runner-bench's RUNNER_BENCH_PRECISION=bf16 is the other side).
    precision = os.environ.get("TORCH_BENCH_PRECISION", "f32")
    if precision not in ("f32", "bf16"):
        sys.exit(f"TORCH_BENCH_PRECISION={precision}: expected f32 or bf16")
    with torch.autocast(device_type=DEVICE.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
        ips = CASES[case]()
        if not COUNT:
            print(f"images_per_s={ips:.1f}")
