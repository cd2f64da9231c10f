#!/usr/bin/env python3
"""The seed recipe in plain PyTorch eager, for parity and speed comparisons (#18).

A development script: the product never runs Python. It needs torch and torchvision
(2.13 / 0.28) with numpy and pillow, e.g. in a venv:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install --no-deps \
        ~/.cache/tlcap/downloads/torch-2.13.0-*.whl ~/.cache/tlcap/downloads/nvidia_*.whl
    /tmp/ref/bin/pip install numpy pillow filelock typing-extensions sympy networkx \
        jinja2 fsspec && /tmp/ref/bin/pip install --no-deps torchvision==0.28.0

The recipe (issue #18): MobileNetV2 ImageNet weights, 224 px (PIL bilinear), batch
32, dropout 0.2, one sigmoid unit, augmentation rotation 20 / width shift 0.2 /
horizontal flip / nearest fill (affine_grid + grid_sample per batch), frozen 4 epochs
Adam 1e-3, then features.16-18 (the last 14 layers) at Adam 1e-5 for 4 epochs,
BatchNorm in inference mode, validation every epoch. `--split` takes a tlcap run's
split.json so both sides see the same files. One JSON line per epoch on stdout.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def load_images(files, size):
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(img).transpose(2, 0, 1)
    return torch.from_numpy(out)


def stratified_split(data_dir, val_split, seed):
    classes = sorted(d for d in os.listdir(data_dir) if not d.startswith("."))
    rng = random.Random(seed)
    train, val = [], []
    for label, c in enumerate(classes):
        files = sorted(os.path.join(data_dir, c, f) for f in os.listdir(os.path.join(data_dir, c)))
        rng.shuffle(files)
        n_val = round(len(files) * val_split)
        val += [(f, label) for f in files[:n_val]]
        train += [(f, label) for f in files[n_val:]]
    return classes, train, val


def augment(x, gen, rotation=20.0, width_shift=0.2, flip=True):
    """Keras-style random rotation, width shift and horizontal flip, nearest fill."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    shift = (torch.rand(n, generator=gen) * 2 - 1) * width_shift * 2  # grid units: [-1, 1]
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * sign, -sin, shift], 1), torch.stack([sin * sign, cos, torch.zeros(n)], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True, help="torchvision mobilenet_v2 state_dict (.pth)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split", help="a tlcap run's split.json (same files on both sides)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--frozen-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only this many images (a quick check)")
    a = p.parse_args()
    import torchvision

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.split:
        s = json.load(open(a.split))
        classes, train, val = s["classes"], [tuple(t) for t in s["train"]], [tuple(v) for v in s["val"]]
    else:
        classes, train, val = stratified_split(a.data, 0.2, a.seed)
    if a.limit:
        random.Random(a.seed).shuffle(train)
        random.Random(a.seed).shuffle(val)
        train, val = train[: a.limit], val[: max(8, a.limit // 4)]
    t0 = time.time()
    xt, yt = load_images([f for f, _ in train], a.size), torch.tensor([l for _, l in train])
    xv, yv = load_images([f for f, _ in val], a.size), torch.tensor([l for _, l in val])
    print(f"decoded {len(train)}+{len(val)} images in {time.time() - t0:.1f} s", file=sys.stderr)

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    backbone = net.features
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, 1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def forward(x, train_mode):
        x = (x / 255.0 - mean) / std
        backbone.eval()  # BatchNorm in inference mode in both phases
        head.train(train_mode)
        f = F.adaptive_avg_pool2d(backbone(x), 1).flatten(1)
        return head(f).view(-1)

    def set_trainable(phase):
        for p_ in backbone.parameters():
            p_.requires_grad = False
        if phase == "finetune":
            for i in (16, 17, 18):
                for p_ in backbone[i].parameters():
                    p_.requires_grad = True

    gen = torch.Generator().manual_seed(a.seed)
    epoch = 0
    for phase, epochs, lr in (("frozen", a.frozen_epochs, 1e-3), ("finetune", a.finetune_epochs, 1e-5)):
        set_trainable(phase)
        params = [p_ for p_ in list(backbone.parameters()) + list(head.parameters()) if p_.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            epoch += 1
            start = time.time()
            order = torch.randperm(len(train), generator=gen)
            loss_sum, right = 0.0, 0
            for b in range(0, len(train), 32):
                idx = order[b : b + 32]
                x = augment(xt[idx].float(), gen)
                y = yt[idx].float()
                logits = forward(x, True)
                loss = F.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                right += int(((logits > 0).float() == y).sum())
            train_seconds = time.time() - start
            with torch.no_grad():
                vl, vr = 0.0, 0
                for b in range(0, len(val), 64):
                    logits = forward(xv[b : b + 64].float(), False)
                    y = yv[b : b + 64].float()
                    vl += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
                    vr += int(((logits > 0).float() == y).sum())
            print(
                json.dumps(
                    {
                        "epoch": epoch,
                        "phase": phase,
                        "loss": loss_sum / len(train),
                        "accuracy": right / len(train),
                        "val_loss": vl / len(val),
                        "val_accuracy": vr / len(val),
                        "seconds": time.time() - start,
                        "train_images_per_sec": len(train) / train_seconds,
                        "seed": a.seed,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
