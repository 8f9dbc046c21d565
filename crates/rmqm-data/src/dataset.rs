//! Dataset names, their folders and splits, and the single `load` entry point every tool uses.

use crate::{
    DataError, ImageSet, load_caltech101, load_cifar10, load_cifar100, load_idx_pair, load_omniglot,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The datasets rmqm knows; the name is both the `--dataset` value and the folder name under `--data-dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// MNIST digits, 28x28 grey, train 60,000 / test 10,000.
    Mnist,
    /// Fashion-MNIST, 28x28 grey, train 60,000 / test 10,000.
    FashionMnist,
    /// Kuzushiji-MNIST, 28x28 grey, train 60,000 / test 10,000.
    Kmnist,
    /// Omniglot, 105x105 resized to 28x28, splits background (964 classes) and evaluation (659).
    Omniglot,
    /// CIFAR-10, 32x32 RGB, train 50,000 / test 10,000.
    Cifar10,
    /// CIFAR-100 (fine labels), 32x32 RGB, train 50,000 / test 10,000.
    Cifar100,
    /// Caltech-101, JPEGs resized to 32x32 RGB, one split `all`.
    Caltech101,
}

impl Dataset {
    /// Every dataset, in a stable order.
    pub const ALL: [Dataset; 7] = [
        Dataset::Mnist,
        Dataset::FashionMnist,
        Dataset::Kmnist,
        Dataset::Omniglot,
        Dataset::Cifar10,
        Dataset::Cifar100,
        Dataset::Caltech101,
    ];

    /// The name used by `--dataset` and as the folder name.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Kmnist => "kmnist",
            Dataset::Omniglot => "omniglot",
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::Caltech101 => "caltech101",
        }
    }

    /// The splits the publisher distributes.
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            Dataset::Omniglot => &["background", "evaluation"],
            Dataset::Caltech101 => &["all"],
            _ => &["train", "test"],
        }
    }

    /// The split a tool uses when none is given: the held-out split where there is one.
    pub fn default_split(self) -> &'static str {
        match self {
            Dataset::Omniglot => "background",
            Dataset::Caltech101 => "all",
            _ => "test",
        }
    }

    /// (channels, height, width) of the images this loader returns.
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            Dataset::Mnist | Dataset::FashionMnist | Dataset::Kmnist | Dataset::Omniglot => {
                (1, 28, 28)
            }
            Dataset::Cifar10 | Dataset::Cifar100 | Dataset::Caltech101 => (3, 32, 32),
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL
            .iter()
            .copied()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Dataset::ALL.iter().map(|d| d.name()).collect();
                DataError::Request(format!(
                    "unknown dataset {s:?}; known: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Options that change what a loader returns.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Omniglot: invert so strokes are bright on a dark background, like MNIST (default true).
    pub invert_omniglot: bool,
    /// Caltech-101: keep the `BACKGROUND_Google` clutter class (default false).
    pub include_caltech_background: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            invert_omniglot: true,
            include_caltech_background: false,
        }
    }
}

/// The data folder when `--data-dir` is not given: `$DATA_DIR`, then `data/`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Loads `split` of `dataset` from `data_dir/<dataset name>/`.
pub fn load(
    dataset: Dataset,
    data_dir: &Path,
    split: &str,
    options: &LoadOptions,
) -> Result<ImageSet, DataError> {
    let dir = data_dir.join(dataset.name());
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir,
            what: format!("folder for dataset {dataset} (run `make data` or pass --data-dir)"),
        });
    }
    if !dataset.splits().contains(&split) {
        return Err(DataError::Request(format!(
            "{dataset} has splits {}, not {split:?}",
            dataset.splits().join(", ")
        )));
    }
    match dataset {
        Dataset::Mnist | Dataset::FashionMnist | Dataset::Kmnist => {
            load_idx_pair(&dir, dataset.name(), split)
        }
        Dataset::Omniglot => load_omniglot(&dir, split, 28, options.invert_omniglot),
        Dataset::Cifar10 => load_cifar10(&dir, split),
        Dataset::Cifar100 => load_cifar100(&dir, split),
        Dataset::Caltech101 => load_caltech101(&dir, 32, options.include_caltech_background),
    }
}
