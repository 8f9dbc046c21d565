#!/usr/bin/env python3
"""Rebuilds the demo's embedded data (data/demo/fashion-mnist/) from Debian's dataset-fashion-mnist
package: the first TRAIN images of the training split and the first TEST images of the test split,
as gzip IDX files that the rmqm loaders read like the full dataset.

    apt-get download dataset-fashion-mnist
    dpkg-deb -x dataset-fashion-mnist_*.deb pkg
    python3 data/make-demo.py pkg/usr/share/datasets/fashion-mnist data/demo/fashion-mnist
"""
import gzip
import struct
import sys
from pathlib import Path

TRAIN = 4000
TEST = 1000


def subset(src: Path, dst: Path, prefix: str, n: int) -> None:
    images = gzip.open(src / f"{prefix}-images-idx3-ubyte.gz").read()
    labels = gzip.open(src / f"{prefix}-labels-idx1-ubyte.gz").read()
    magic, count, rows, cols = struct.unpack(">IIII", images[:16])
    assert magic == 2051 and count >= n
    lmagic, lcount = struct.unpack(">II", labels[:8])
    assert lmagic == 2049 and lcount == count
    size = rows * cols
    out_images = struct.pack(">IIII", 2051, n, rows, cols) + images[16 : 16 + n * size]
    out_labels = struct.pack(">II", 2049, n) + labels[8 : 8 + n]
    # mtime=0 keeps the files byte-identical from run to run.
    for name, data in ((f"{prefix}-images-idx3-ubyte.gz", out_images), (f"{prefix}-labels-idx1-ubyte.gz", out_labels)):
        with open(dst / name, "wb") as f:
            with gzip.GzipFile(filename=name, mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
                g.write(data)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    subset(src, dst, "train", TRAIN)
    subset(src, dst, "t10k", TEST)


if __name__ == "__main__":
    main()
