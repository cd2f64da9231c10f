#!/usr/bin/env python3
"""PyTorch eager's whole-network fine-tune step, beside `tlcap-tui bench --only whole` (#28).

A development script: the product never runs Python. The step it times is the one the
bench's `whole network` rows time: a synthetic batch (no augmentation), every layer
trainable, BatchNorm in inference mode (`model.eval()`), dropout off, forward through
the backbone, global average pooling and a one-unit head, binary cross-entropy, backward,
Adam (lr 1e-4). Images/s is the best of three timings of at least `--seconds` each,
after two warm-up steps. Random weights: speed does not depend on the values.

Set-up (torch 2.13 from PyPI is a CUDA build; its Python module needs the CUDA wheels
even on a CPU):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install ~/.cache/tlcap/downloads/torch-2.13.0-*.whl \
        && /tmp/ref/bin/pip install --no-deps torchvision==0.28.0
    /tmp/ref/bin/python scripts/dev/finetune_step.py --backbones mobilenet_v2,resnet50,efficientnet_lite0

`--variants` also times the changes tlcap's trainable path makes, one at a time, in
PyTorch itself (channels-last, BatchNorm folded into the convolution inside the graph,
in-place ReLU6), to see which are worth having before writing them in Rust.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_pad(x, k, s):
    """TensorFlow SAME padding (EfficientNet-Lite)."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]) if ph or pw else x


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, s, groups=1, act=True, same=False):
        super().__init__()
        self.k, self.s, self.same = k, s, same
        self.conv = nn.Conv2d(cin, cout, k, s, 0 if same else (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x):
        if self.same:
            x = same_pad(x, self.k, self.s)
        return self.act(self.bn(self.conv(x)))


class MbConv(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        hidden = cin * e
        layers = [ConvBn(cin, hidden, 1, 1, same=True)] if e != 1 else []
        layers += [ConvBn(hidden, hidden, k, s, groups=hidden, same=True),
                   ConvBn(hidden, cout, 1, 1, act=False, same=True)]
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return y + x if self.residual else y


def efficientnet_lite0():
    """EfficientNet-Lite0 without its classifier (as efficientnet-lite-pytorch builds it;
    drop-connect is left out, as it is off in inference-mode steps' cost anyway)."""
    blocks = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
    layers = [ConvBn(3, 32, 3, 2, same=True)]
    for n, k, s, e, cin, cout in blocks:
        for r in range(n):
            layers.append(MbConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
    layers.append(ConvBn(320, 1280, 1, 1, same=True))
    return nn.Sequential(*layers), 1280


def backbone(name):
    import torchvision

    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2().features, 1280
    if name == "resnet50":
        m = torchvision.models.resnet50()
        return nn.Sequential(*list(m.children())[:-2]), 2048
    if name == "resnet18":
        m = torchvision.models.resnet18()
        return nn.Sequential(*list(m.children())[:-2]), 512
    if name == "efficientnet_lite0":
        return efficientnet_lite0()
    raise SystemExit(f"unknown backbone {name}")


class FoldedConvBn(nn.Module):
    """Conv + inference-mode BatchNorm as one convolution whose weight is scaled per
    output channel inside the graph: exact gradients for the conv weight, gamma and beta."""

    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        bn, conv = self.bn, self.conv
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        w = conv.weight * scale.view(-1, 1, 1, 1)
        b = bn.bias - bn.running_mean * scale
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def fold_in_graph(module):
    """Returns `module` with every Conv2d directly followed by a BatchNorm2d (inside a
    Sequential, torchvision's Conv2dNormActivation included, or as ResNet's convN/bnN
    attributes, or in ConvBn) replaced by FoldedConvBn, bottom-up."""
    for name, child in list(module.named_children()):
        new = fold_in_graph(child)
        if new is not child:
            setattr(module, name, new)
    if isinstance(module, ConvBn):
        module.conv, module.bn = FoldedConvBn(module.conv, module.bn), nn.Identity()
    for i in (1, 2, 3):
        conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f"conv{i}", FoldedConvBn(conv, bn))
            setattr(module, f"bn{i}", nn.Identity())
    if isinstance(module, nn.Sequential):
        items, out, i = list(module.children()), [], 0
        while i < len(items):
            if i + 1 < len(items) and isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
                out.append(FoldedConvBn(items[i], items[i + 1]))
                i += 2
            else:
                out.append(items[i])
                i += 1
        if len(out) != len(items):
            return nn.Sequential(*out)
    return module


class Net(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.features, dim = backbone(name)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def measure(name, batch, size, seconds, channels_last=False, fold=False, relu_inplace=True, micro=None):
    torch.manual_seed(0)
    net = Net(name)
    if fold:
        net.features = fold_in_graph(net.features)
    if not relu_inplace:
        for m in net.modules():
            if isinstance(m, nn.ReLU6) or isinstance(m, nn.ReLU):
                m.inplace = False
    net.eval()  # BatchNorm in inference mode, dropout off
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = (torch.rand(batch, 3, size, size) * 2 - 1).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        opt.zero_grad(set_to_none=True)
        # Micro-batches: the same gradient (BatchNorm in inference mode makes images
        # independent), accumulated pass by pass with each pass's share of the mean.
        for xs, ys in zip(x.split(micro or batch), y.split(micro or batch)):
            loss = F.binary_cross_entropy_with_logits(net(xs).view(-1), ys, reduction="sum") / batch
            loss.backward()
        opt.step()

    for _ in range(2):
        step()
    best = 0.0
    for _ in range(3):
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            step()
            done += batch
        best = max(best, done / (time.perf_counter() - start))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="mobilenet_v2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=None, help="default: torch's (one per core)")
    p.add_argument("--variants", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    head = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "batch": a.batch_size, "size": a.size}
    print(json.dumps(head), flush=True)
    variants = [("eager", {})]
    if a.variants:
        variants += [
            ("relu6 not in place", {"relu_inplace": False}),
            ("channels-last", {"channels_last": True}),
            ("BatchNorm folded in graph", {"fold": True}),
            ("channels-last + folded", {"channels_last": True, "fold": True}),
        ] + [(f"channels-last + folded, passes of {m}", {"channels_last": True, "fold": True, "micro": m})
             for m in (2, 4, 8, 16)]
    for name in a.backbones.split(","):
        for label, kw in variants:
            ips = measure(name, a.batch_size, a.size, a.seconds, **kw)
            print(json.dumps({"backbone": name, "variant": label, "images_per_sec": round(ips, 2)}), flush=True)


if __name__ == "__main__":
    main()
