#!/usr/bin/env python3
"""Checks that rmqm checkpoints are PyTorch state dicts: for LeNet-5, LeNet-5 classic and ResNet-18,
trains a model for a few steps with rmqm's tools (so that batch-norm statistics and counters move),
builds the matching PyTorch module from the file's metadata, loads the file with
`load_state_dict(strict=True)` (with the module's own state-dict version, so that a missing
`num_batches_tracked` is refused as `safetensors.torch.load_model` refuses it), and compares PyTorch's embedding of some test images with what
`embed` wrote for the same images (eval mode). Prints the largest absolute difference per
architecture and fails above --tolerance.

    python3 pipelines/check_pytorch.py --bin target/release --data-dir data/demo

Needs the release tools (`make build`), torch (CPU is enough) and pyarrow; without torch it says so
and exits 0, since torch is not a dependency of rmqm. Modules here use rmqm's tensor names (README,
"Models"); pipelines/bench_pytorch.py holds the benchmark's own copies of the architectures."""
import argparse
import json
import subprocess
from collections import OrderedDict
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("check_pytorch: torch is not installed; nothing checked")
    sys.exit(0)
import pyarrow.parquet as pq

SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    """The tensors (as torch tensors) and the metadata of a safetensors file."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(body[a:b], dtype=SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return tensors, meta


def mlp(sizes):
    """encoder.fc1, fc2, ...: Linear layers with ReLU between them (not after the last)."""
    return {f"fc{i + 1}": nn.Linear(a, b) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}


def run_mlp(enc, x, layers):
    for i in range(layers):
        x = getattr(enc, f"fc{i + 1}")(x)
        if i + 1 < layers:
            x = F.relu(x)
    return x


class LeNetEncoder(nn.Module):
    def __init__(self, classic, channels, height, width, dim):
        super().__init__()
        pad = 2 if classic else 0
        side = lambda s, k, p: (s + 2 * p + 1 - k) // 2
        h = side(side(height, 5, pad), 5, 0)
        w = side(side(width, 5, pad), 5, 0)
        self.pad = pad
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        sizes = [16 * h * w] + ([120, 84] if classic else [512, 512, 512]) + [dim]
        for k, v in mlp(sizes).items():
            setattr(self, k, v)
        self.layers = len(sizes) - 1

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return run_mlp(self, x.flatten(1), self.layers)


class ConvBn(nn.Module):
    """`conv` + `bn`: the stem and the shortcut."""

    def __init__(self, cin, cout, k, stride, pad):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = ConvBn(cin, cout, 1, stride, 0)
        else:
            self.shortcut = None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNetEncoder(nn.Module):
    """CIFAR ResNet-18: 3x3 stem without max pool, four stages of two blocks, average pool, MLP."""

    def __init__(self, channels, dim):
        super().__init__()
        self.stem = ConvBn(channels, 64, 3, 1, 1)
        cin = 64
        for stage, cout in enumerate([64, 128, 256, 512]):
            blocks = []
            for b in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        for k, v in mlp([512, 1024, 1024, dim]).items():
            setattr(self, k, v)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return run_mlp(self, x.mean((2, 3)), 3)


class Model(nn.Module):
    """`encoder.*` and, for the methods with a classifier, `head`; normalisation as rmqm does it."""

    def __init__(self, meta):
        super().__init__()
        arch, c, h, w, dim = (meta["rmqm.arch"], int(meta["rmqm.channels"]), int(meta["rmqm.height"]),
                              int(meta["rmqm.width"]), int(meta["rmqm.dim"]))
        if arch == "resnet18":
            self.encoder = ResNetEncoder(c, dim)
        else:
            self.encoder = LeNetEncoder(arch == "lenet5-classic", c, h, w, dim)
        if meta["rmqm.method"] in ("cross-entropy", "triplet-entropy"):
            self.head = nn.Linear(dim, int(meta["rmqm.classes"]))
        floats = lambda k: torch.tensor([float(v) for v in meta[k].split(",")], dtype=torch.float32)
        self.register_buffer("mean", floats("rmqm.mean").reshape(1, c, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / floats("rmqm.std")).reshape(1, c, 1, 1), persistent=False)

    def forward(self, x):
        return self.encoder((x - self.mean) * self.inv_std)


def as_state_dict(tensors, net):
    """The tensors as a state dict with `net`'s own version metadata, as `net.state_dict()` has it:
    without it PyTorch treats the dict as written before version 2 of BatchNorm and fills in a
    missing `num_batches_tracked` instead of refusing the file under strict=True."""
    state = OrderedDict(tensors)
    state._metadata = net.state_dict()._metadata
    return state


def run(cmd):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"check_pytorch: {' '.join(str(c) for c in cmd)} failed:\n{done.stderr}")


def check(arch, args, work):
    model = work / f"{arch}.safetensors"
    run([args.bin / "train-encoder", "--dataset", args.dataset, "--data-dir", args.data_dir, "--arch", arch,
         "--method", "cross-entropy", "--dim", 16, "--epochs", 1, "--limit", 64, "--batch-size", 32,
         "--accumulate", 1, "--seed", 0, "-o", model])
    pixels = work / "clean.parquet"
    if not pixels.exists():
        run([args.bin / "alter", "--method", "clean", "--dataset", args.dataset, "--data-dir", args.data_dir,
             "--split", "test", "--limit", args.images, "-o", pixels])
    embedded = work / f"{arch}-embeddings.parquet"
    run([args.bin / "embed", "--model", model, "--input", pixels, "-o", embedded])

    tensors, meta = read_safetensors(model)
    net = Model(meta)
    net.load_state_dict(as_state_dict(tensors, net), strict=True)
    net.eval()
    images = pq.read_table(pixels).sort_by([("image_id", "ascending"), ("step", "ascending")])
    theirs = pq.read_table(embedded).sort_by([("image_id", "ascending"), ("step", "ascending")])
    c, h, w = (int(meta[f"rmqm.{k}"]) for k in ("channels", "height", "width"))
    x = torch.tensor(np.stack(images.column("pixels").to_numpy(zero_copy_only=False)), dtype=torch.float32)
    with torch.no_grad():
        ours = net(x.reshape(-1, c, h, w)).numpy()
    want = np.stack(theirs.column("embedding").to_numpy(zero_copy_only=False))
    tracked = [int(t) for k, t in tensors.items() if k.endswith("num_batches_tracked")]
    diff = float(np.abs(ours - want).max())
    print(f"{arch}: {len(tensors)} tensors loaded strictly ({len(tracked)} num_batches_tracked, "
          f"values {sorted(set(tracked))}), {len(want)} images, max |torch - rmqm| = {diff:.3g}")
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=Path("target/release"), help="folder of the rmqm tools")
    ap.add_argument("--data-dir", type=Path, default=Path("data/demo"))
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--arch", nargs="+", default=["lenet5", "lenet5-classic", "resnet18"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for tool in ("train-encoder", "alter", "embed"):
        if not (args.bin / tool).exists():
            sys.exit(f"check_pytorch: no {args.bin / tool}; build the tools first (make build)")
    worst = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            worst[arch] = check(arch, args, Path(tmp))
    bad = {a: d for a, d in worst.items() if not d <= args.tolerance}
    if bad:
        sys.exit(f"check_pytorch: embeddings differ by more than {args.tolerance}: {bad}")
    print(f"check_pytorch: every architecture loads strictly and agrees within {args.tolerance}")


if __name__ == "__main__":
    main()
