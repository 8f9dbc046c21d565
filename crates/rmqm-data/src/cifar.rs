//! CIFAR-10 and CIFAR-100 in the publishers' binary formats (`cifar-10-batches-bin`,
//! `cifar-100-binary`). CIFAR-100 uses the fine labels (100 classes).

use crate::{DataError, ImageSet};
use std::path::{Path, PathBuf};

/// The two CIFAR binary record layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarLayout {
    /// CIFAR-10: 1 label byte, then 3072 pixel bytes (R, G, B planes of 32x32).
    Cifar10,
    /// CIFAR-100: coarse label byte, fine label byte, then 3072 pixel bytes.
    Cifar100,
}

impl CifarLayout {
    fn label_bytes(self) -> usize {
        match self {
            CifarLayout::Cifar10 => 1,
            CifarLayout::Cifar100 => 2,
        }
    }
    fn n_classes(self) -> usize {
        match self {
            CifarLayout::Cifar10 => 10,
            CifarLayout::Cifar100 => 100,
        }
    }
}

const PIXELS: usize = 3 * 32 * 32;

/// Parses the records of one CIFAR binary file into (pixels in [0,1] CHW, labels); checks length and labels.
pub fn parse_cifar_records(
    path: &Path,
    bytes: &[u8],
    layout: CifarLayout,
) -> Result<(Vec<f32>, Vec<i32>), DataError> {
    let record = layout.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        let whole = bytes.len() / record;
        return Err(DataError::Truncated {
            path: path.into(),
            expected: (whole + 1) * record,
            found: bytes.len(),
        });
    }
    let n = bytes.len() / record;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[layout.label_bytes() - 1] as usize;
        if label >= layout.n_classes() {
            return Err(DataError::Format {
                path: path.into(),
                reason: format!(
                    "record {i} has label {label}, outside 0..{}",
                    layout.n_classes()
                ),
            });
        }
        labels.push(label as i32);
        pixels.extend(
            rec[layout.label_bytes()..]
                .iter()
                .map(|&b| b as f32 / 255.0),
        );
    }
    Ok((pixels, labels))
}

fn find_folder(dir: &Path, inner: &str, probe: &str) -> PathBuf {
    let nested = dir.join(inner);
    if nested.join(probe).is_file() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn read_names(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn load_files(
    files: &[PathBuf],
    layout: CifarLayout,
    dataset: &str,
    split: &str,
) -> Result<ImageSet, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        let (p, l) = parse_cifar_records(f, &bytes, layout)?;
        pixels.extend(p);
        labels.extend(l);
    }
    let n = labels.len();
    Ok(ImageSet {
        dataset: dataset.into(),
        split: split.into(),
        channels: 3,
        height: 32,
        width: 32,
        pixels,
        labels,
        ids: (0..n as u32).collect(),
        class_names: Vec::new(),
    })
}

/// Loads CIFAR-10 `train` (data_batch_1..5, 50,000) or `test` (test_batch, 10,000) from `dir`
/// (the `cifar10/` folder, holding `cifar-10-batches-bin/` or the batch files themselves).
pub fn load_cifar10(dir: &Path, split: &str) -> Result<ImageSet, DataError> {
    let folder = find_folder(dir, "cifar-10-batches-bin", "test_batch.bin");
    let files: Vec<PathBuf> = match split {
        "train" => (1..=5)
            .map(|i| folder.join(format!("data_batch_{i}.bin")))
            .collect(),
        "test" => vec![folder.join("test_batch.bin")],
        other => {
            return Err(DataError::Request(format!(
                "cifar10 has splits train and test, not {other:?}"
            )));
        }
    };
    let mut set = load_files(&files, CifarLayout::Cifar10, "cifar10", split)?;
    set.class_names = read_names(&folder.join("batches.meta.txt"));
    Ok(set)
}

/// Loads CIFAR-100 `train` (50,000) or `test` (10,000) with fine labels from `dir`
/// (the `cifar100/` folder, holding `cifar-100-binary/` or `train.bin`/`test.bin` themselves).
pub fn load_cifar100(dir: &Path, split: &str) -> Result<ImageSet, DataError> {
    let folder = find_folder(dir, "cifar-100-binary", "test.bin");
    let file = match split {
        "train" => folder.join("train.bin"),
        "test" => folder.join("test.bin"),
        other => {
            return Err(DataError::Request(format!(
                "cifar100 has splits train and test, not {other:?}"
            )));
        }
    };
    let mut set = load_files(&[file], CifarLayout::Cifar100, "cifar100", split)?;
    set.class_names = read_names(&folder.join("fine_label_names.txt"));
    Ok(set)
}
