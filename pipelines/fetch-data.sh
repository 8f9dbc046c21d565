#!/usr/bin/env bash
# Downloads the datasets rmqm uses into DATA_DIR (first argument, default data/), laid out like
# ../shared/data, and verifies them: sha256 of the decompressed IDX content for MNIST, Fashion-MNIST
# and KMNIST (mirrors re-compress the same content with different gzip headers), the publishers'
# md5 of the archives for the rest. Files already present and verified are kept. Without network,
# it prints what to download where and exits non-zero.
set -euo pipefail
dir=${1:-data}
mkdir -p "$dir"
fail=0

fetch() { # url dest
  local url=$1 dest=$2
  [ -s "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  if ! curl -fsSL --retry 2 -o "$dest.part" "$url"; then
    rm -f "$dest.part"
    echo "data: could not download $url" >&2
    echo "data:   fetch it by hand and put it at $dest" >&2
    fail=1
    return 1
  fi
  mv "$dest.part" "$dest"
}

check_gunzip_sha256() { # file sha256-of-decompressed
  local got
  got=$(gunzip -c "$1" | sha256sum | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then echo "data: $1: decompressed sha256 $got, expected $2" >&2; fail=1; else echo "data: ok $1"; fi
}

check_md5() { # file md5
  local got
  got=$(md5sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then echo "data: $1: md5 $got, expected $2" >&2; fail=1; else echo "data: ok $1"; fi
}

idx() { # dataset base-url name sha256
  if fetch "$2/$3" "$dir/$1/$3"; then check_gunzip_sha256 "$dir/$1/$3" "$4"; fi
}

# MNIST (sha256 of the decompressed files; they match the publisher's md5 sums).
m=https://ossci-datasets.s3.amazonaws.com/mnist
idx mnist $m train-images-idx3-ubyte.gz ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
idx mnist $m train-labels-idx1-ubyte.gz 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
idx mnist $m t10k-images-idx3-ubyte.gz 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
idx mnist $m t10k-labels-idx1-ubyte.gz ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2

# Fashion-MNIST.
f=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com
idx fashion-mnist $f train-images-idx3-ubyte.gz c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
idx fashion-mnist $f train-labels-idx1-ubyte.gz bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
idx fashion-mnist $f t10k-images-idx3-ubyte.gz 5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
idx fashion-mnist $f t10k-labels-idx1-ubyte.gz 0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34

# KMNIST (test split: sha256 of the decompressed files; train split: the archives' md5 as torchvision lists them).
k=http://codh.rois.ac.jp/kmnist/dataset/kmnist
idx kmnist $k t10k-images-idx3-ubyte.gz 76fbd229ce87db80dd281af5e6670de4ad0e42fb30a7bd643972994c47c1f42e
idx kmnist $k t10k-labels-idx1-ubyte.gz a11dc742be8e781a40a92f53d6a4957e7b7d36df2faa097659131ebfd8fd60c6
if fetch $k/train-images-idx3-ubyte.gz "$dir/kmnist/train-images-idx3-ubyte.gz"; then check_md5 "$dir/kmnist/train-images-idx3-ubyte.gz" bdb82020997e1d708af4cf47b453dcf7; fi
if fetch $k/train-labels-idx1-ubyte.gz "$dir/kmnist/train-labels-idx1-ubyte.gz"; then check_md5 "$dir/kmnist/train-labels-idx1-ubyte.gz" e144d726b3acfaa3e44228e80efcd344; fi

# Omniglot (the original zips; md5 of the originals).
o=https://raw.githubusercontent.com/brendenlake/omniglot/master/python
if fetch $o/images_background.zip "$dir/omniglot/images_background.zip"; then check_md5 "$dir/omniglot/images_background.zip" 68d2efa1b9178cc56df9314c21c6e718; fi
if fetch $o/images_evaluation.zip "$dir/omniglot/images_evaluation.zip"; then check_md5 "$dir/omniglot/images_evaluation.zip" 6b91aef0f799c5bb55b94e3f2daec811; fi

# CIFAR-10 and CIFAR-100, binary versions (md5 of the archives), unpacked in place.
c=https://www.cs.toronto.edu/~kriz
if fetch $c/cifar-10-binary.tar.gz "$dir/cifar10/cifar-10-binary.tar.gz"; then
  check_md5 "$dir/cifar10/cifar-10-binary.tar.gz" c32a1d4ab5d03f1284b67883e8d87530
  [ -d "$dir/cifar10/cifar-10-batches-bin" ] || tar -xzf "$dir/cifar10/cifar-10-binary.tar.gz" -C "$dir/cifar10"
fi
if fetch $c/cifar-100-binary.tar.gz "$dir/cifar100/cifar-100-binary.tar.gz"; then
  check_md5 "$dir/cifar100/cifar-100-binary.tar.gz" 03b5dce01913d631647c71ecec9e9cb8
  [ -d "$dir/cifar100/cifar-100-binary" ] || tar -xzf "$dir/cifar100/cifar-100-binary.tar.gz" -C "$dir/cifar100"
fi

# Caltech-101 (101_ObjectCategories.tar.gz inside the CaltechDATA zip).
if fetch https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip "$dir/caltech101/caltech-101.zip"; then
  if [ ! -d "$dir/caltech101/101_ObjectCategories" ]; then
    (cd "$dir/caltech101" && unzip -q -o caltech-101.zip 'caltech-101/101_ObjectCategories.tar.gz' && \
      check_md5 caltech-101/101_ObjectCategories.tar.gz b224c7392d521a49829488ab0f1120d9 && \
      tar -xzf caltech-101/101_ObjectCategories.tar.gz)
  fi
fi

if [ "$fail" != 0 ]; then
  echo "data: some files are missing or failed their checks (see above). Offline? Copy the files into" >&2
  echo "data: $dir/<dataset>/ as listed in README.md (Datasets), or run with DATA_DIR=../shared/data." >&2
  exit 1
fi
echo "data: all datasets present and verified in $dir"
