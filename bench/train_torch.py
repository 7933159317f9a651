#!/usr/bin/env python3
"""PyTorch reference for bench/train_bench.sh: the baseline CNN and recipe of
configs/fashion_mnist.toml (conv-bn-relu-pool x2 -> fc 128 -> dropout -> fc 10, AdamW,
cosine LR, batch 128, 55,000 training images), timed per epoch on the same machine.
Augmentation off on both sides so the comparison is framework against framework.

Usage: train_torch.py DATA_DIR EPOCHS  -> prints one JSON line per epoch."""
import gzip, json, math, struct, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(2)
torch.manual_seed(42)


def idx(path):
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(d, name):
    for cand in (Path(d) / name, Path(d) / (name + ".gz")):
        if cand.exists():
            return cand
    raise SystemExit(f"{name} not in {d}")


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x * (1 / (255 * 0.353)) - 0.286 / 0.353))


def main():
    data_dir, epochs = sys.argv[1], int(sys.argv[2])
    x = torch.from_numpy(idx(find(data_dir, "train-images-idx3-ubyte")).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(idx(find(data_dir, "train-labels-idx1-ubyte")).astype(np.int64))
    x, y = x[:55000], y[:55000]
    model = Cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    steps = math.ceil(len(x) / 128)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        start = time.perf_counter()
        for s in range(steps):
            lr = 0.002 * 0.5 * (1 + math.cos(math.pi * (epoch + s / steps) / epochs))
            for g in opt.param_groups:
                g["lr"] = lr
            i = order[s * 128:(s + 1) * 128]
            opt.zero_grad()
            loss = loss_fn(model(x[i]), y[i])
            loss.backward()
            opt.step()
        print(json.dumps({"framework": "pytorch", "epoch": epoch + 1, "seconds": time.perf_counter() - start,
                          "loss": float(loss)}), flush=True)


main()
