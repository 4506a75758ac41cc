"""torchvision reference for the loader cases of `make bench`, on the files runner-bench
generates in bench/out (run runner-bench first). Same ops, batch 64, shuffled, one epoch:

    /usr/bin/python3 bench/torch_loader_bench.py loader_cifar10_crop_flip_norm 2

`workers` DataLoader worker processes, each with one torch thread. Prints images_per_s=<x>.
"""
import glob
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


class Lighting:
    """AlexNet's PCA colour augmentation (as fb.resnet.torch), on a [3, h, w] tensor."""

    def __call__(self, img):
        alpha = torch.randn(3) * 0.1
        rgb = (EIGVEC * alpha * EIGVAL).sum(1)
        return img + rgb.view(3, 1, 1)


class CifarBin(Dataset):
    def __init__(self, path, transform):
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
        self.labels = raw[:, 0].astype(np.int64)
        self.images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC for PIL
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class Folder(Dataset):
    def __init__(self, root, transform):
        classes = sorted(os.listdir(root))
        self.items = [(f, k) for k, c in enumerate(classes) for f in sorted(glob.glob(os.path.join(root, c, "*.jpg")))]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


def worker_init(_):
    torch.set_num_threads(1)


def main():
    case, workers = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    norm = T.Normalize([0.5] * 3, [0.25] * 3)
    if case == "loader_cifar10_crop_flip_norm":
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        ds = CifarBin("bench/out/cifar/data_batch_1.bin", tf)
    else:
        tf = T.Compose([T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), Lighting(), norm])
        ds = Folder("bench/out/jpeg/train", tf)
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, worker_init_fn=worker_init,
                        persistent_workers=True)
    for i, _ in enumerate(loader):  # warm-up: start the workers
        if i == 1:
            break
    t = time.perf_counter()
    for _ in loader:
        pass
    print(f"images_per_s={len(ds) / (time.perf_counter() - t):.1f}")


if __name__ == "__main__":
    main()
