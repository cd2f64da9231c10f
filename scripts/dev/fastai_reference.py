#!/usr/bin/env python3
"""fastai's `fine_tune` on a tlcap run's split, for the issue #27 comparison.

A development script: the product never runs Python. It needs the venv of
`pytorch_reference.py` (torch 2.13, torchvision 0.28) plus fastai 2.8 without spaCy
(only its text part needs it):

    /tmp/ref/bin/pip download --no-deps 'fastai>=2.8,<2.9' -d /tmp/fa
    /tmp/ref/bin/pip install --no-deps /tmp/fa/fastai-*.whl
    /tmp/ref/bin/pip install fastdownload fastcore fasttransform matplotlib pandas \
        requests pyyaml fastprogress scikit-learn scipy packaging 'plum-dispatch<2.10' \
        cloudpickle

What it runs, fastai's own defaults except where said: `vision_learner(dls,
mobilenet_v2, metrics=accuracy)` with the ImageNet weights tlcap uses
(`~/.cache/tlcap/weights/mobilenet_v2-b0353104.pth`, loaded here since nothing can be
downloaded; body cut at `features`, fastai's head: concat pooling, BatchNorm,
dropout, two linear layers), `Resize(224)` and `aug_transforms()` (flips, rotation 10,
zoom 1.1, lighting 0.2, warp 0.2), ImageNet normalisation, batch 32, then
`learn.fine_tune(EPOCHS, freeze_epochs=1)`: one frozen one-cycle epoch at 2e-3, then
the whole network for EPOCHS epochs with one-cycle and discriminative rates
`slice(1e-5, 1e-3)`, BatchNorm training (fastai's default). The split is a tlcap
run's `split.json`, so both see the same training and validation files. One JSON
line per epoch on stdout (fastai's validation accuracy, no test-time augmentation).
"""

import argparse
import json
import os
import time

import torch
import torchvision
from fastai.callback.core import Callback
from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    FuncSplitter,
    ImageBlock,
    Resize,
    accuracy,
    aug_transforms,
    default_split,
    imagenet_stats,
    model_meta,
    set_seed,
    vision_learner,
)


class EpochLines(Callback):
    """Prints one JSON line per epoch: phase (fine_tune's first fit is the frozen
    one), epoch, losses, accuracy, seconds."""

    def __init__(self):
        self.fits = 0

    def before_fit(self):
        self.fits += 1

    def before_epoch(self):
        self.start = time.time()

    def after_epoch(self):
        train_loss, valid_loss, acc = self.recorder.log[1:4]
        print(
            json.dumps(
                {
                    "phase": "frozen" if self.fits == 1 else "finetune",
                    "epoch": self.epoch + 1,
                    "loss": float(train_loss),
                    "val_loss": float(valid_loss),
                    "val_accuracy": float(acc),
                    "seconds": time.time() - self.start,
                }
            ),
            flush=True,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", required=True, help="a tlcap run's split.json")
    p.add_argument(
        "--weights",
        default=os.path.expanduser("~/.cache/tlcap/weights/mobilenet_v2-b0353104.pth"),
    )
    p.add_argument("--epochs", type=int, default=10, help="fine_tune's unfrozen epochs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    set_seed(a.seed, reproducible=True)
    split = json.load(open(a.split))
    names = ["defective", "functional"] if split["classes"] == 2 else None
    labels = {}
    for path, label in split["train"] + split["val"]:
        labels[os.path.realpath(path)] = names[label] if names else str(label)
    val = {os.path.realpath(path) for path, _ in split["val"]}
    items = sorted(labels)

    def mobilenet_v2(pretrained=True, **_):
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(torch.load(a.weights, map_location="cpu"))
        return model

    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=lambda _: items,
        get_y=lambda p: labels[p],
        splitter=FuncSplitter(lambda p: p in val),
        item_tfms=Resize(224),
        batch_tfms=aug_transforms(),
    )
    dls = block.dataloaders("/", bs=32)
    # fastai 2.8.12's vision_learner drops its `cut` argument: say it in model_meta,
    # as fastai does for the architectures it knows.
    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    learn = vision_learner(dls, mobilenet_v2, metrics=accuracy)
    start = time.time()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(a.epochs, freeze_epochs=1, cbs=EpochLines())
    print(json.dumps({"wall_seconds": time.time() - start}), flush=True)


if __name__ == "__main__":
    main()
