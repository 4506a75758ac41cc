"""PyTorch reference for `make bench`: the same cases, models and batch sizes as
src/bin/runner-bench.rs. Run with Debian's python3-torch:

    /usr/bin/python3 bench/torch_bench.py lenet5_train 2

Prints one line `images_per_s=<x>`.
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timed(batch, warmup, iters, step):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t)


def lenet5_train():
    m = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(100, 1, 28, 28) * 2 - 1, torch.arange(100) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return timed(100, 5, 60, step)


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
    x, y = torch.rand(64, 3, 32, 32) * 2 - 1, torch.arange(64) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return timed(64, 2, 8, step)


def alexnet_forward():
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 1000))
    m = nn.Sequential(features, nn.Flatten(), classifier).eval()
    x = torch.rand(8, 3, 224, 224) * 2 - 1

    def step():
        with torch.no_grad():
            m(x).sum().item()
    return timed(8, 1, 5, step)


def conv_op(backward):
    x = (torch.rand(64, 64, 32, 32) * 2 - 1).requires_grad_(True)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    if backward:
        def step():
            y = conv(x)
            t = time.perf_counter()
            y.sum().backward()
            return time.perf_counter() - t
        step()
        total = sum(step() for _ in range(3))
        return 64 * 3 / total

    def fwd():
        with torch.no_grad():
            conv(x)
    return timed(64, 1, 3, fwd)


CASES = {
    "lenet5_train": lenet5_train,
    "resnet_cifar_train": resnet_cifar_train,
    "alexnet_forward": alexnet_forward,
    "conv2d_forward": lambda: conv_op(False),
    "conv2d_backward": lambda: conv_op(True),
}

if __name__ == "__main__":
    case, threads = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    print(f"images_per_s={CASES[case]():.1f}")
