#!/usr/bin/env python3
"""PyTorch reference for `make bench`: the same LeNet-5 variants and ResNet-18 as rmqm, the same
batch sizes and work (forward; one PGD step = forward + loss + gradient to the input; one training
step = forward + cross-entropy + backward + Adam), images/s as the median of N timed repeats after
one warm-up. Run with the threads rmqm uses:  python3 pipelines/bench_pytorch.py --threads 2
Needs torch (CPU is enough); it is not a dependency of rmqm."""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self, classic: bool, dim: int = 128, classes: int = 10):
        super().__init__()
        pad = 2 if classic else 0
        self.conv1 = nn.Conv2d(1, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        sizes = [400, 120, 84, dim] if classic else [256, 512, 512, 512, dim]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = (x - 0.1307) / 0.3081
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        for i, layer in enumerate(self.fc):
            x = layer(x)
            if i + 1 < len(self.fc):
                x = F.relu(x)
        return x

    def logits(self, e):
        return self.head(F.relu(e))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (self.sc(x) if self.sc is not None else x))


class ResNet18(nn.Module):
    def __init__(self, dim=128, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, cin = [], 64
        for i, c in enumerate([64, 128, 256, 512]):
            for b in range(2):
                blocks.append(Block(cin, c, 2 if i > 0 and b == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.mlp = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.mlp(self.blocks(self.stem(x)).mean((2, 3)))

    def logits(self, e):
        return self.head(F.relu(e))


def rate(batch, repeats, fn):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="run the models whose name contains this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, make, batch, shape in [
        ("lenet5", lambda: LeNet(False), 256, (1, 28, 28)),
        ("lenet5-classic", lambda: LeNet(True), 256, (1, 28, 28)),
        ("resnet18", ResNet18, 128, (3, 32, 32)),
    ]:
        if args.only not in name:
            continue
        torch.manual_seed(0)
        model = make()
        x = torch.rand(batch, *shape)
        y = torch.arange(batch) % 10
        reps = args.repeats if name != "resnet18" else min(3, args.repeats)

        model.eval()
        with torch.no_grad():
            fwd = rate(batch, reps, lambda: model(x).sum().item())

        for p in model.parameters():
            p.requires_grad_(False)

        def pgd():
            xv = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model.logits(model(xv)), y)
            (g,) = torch.autograd.grad(loss, xv)
            (xv + 2 / 255 * g.sign()).clamp(0, 1).sum().item()

        pgd_rate = rate(batch, reps, pgd)
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train():
            opt.zero_grad()
            F.cross_entropy(model.logits(model(x)), y).backward()
            opt.step()

        train_rate = rate(batch, reps, train)
        print(f"{name}: forward {fwd:.0f} images/s, pgd {pgd_rate:.0f} images/s, train (cross-entropy) {train_rate:.0f} images/s")


if __name__ == "__main__":
    main()
