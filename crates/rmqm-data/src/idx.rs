//! IDX files (MNIST, Fashion-MNIST, KMNIST), gzip-compressed or raw.
//!
//! candle-datasets reads only uncompressed IDX files under fixed names, so this reader is our own:
//! it reads `.gz` directly and reports every fault with the file name.

use crate::{DataError, ImageSet};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Decoded IDX images: count, rows, columns and the raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// count*rows*cols pixel bytes.
    pub bytes: Vec<u8>,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                reason: format!("corrupt gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks the header of an IDX file and returns its dimensions and the data after the header.
fn parse_header<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    n_dims: usize,
    what: &'static str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let header_len = 4 + 4 * n_dims;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.into(),
            found,
            expected: magic,
            what,
        });
    }
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    let data = &bytes[header_len..];
    let expected: usize = dims.iter().product();
    if data.len() < expected {
        return Err(DataError::Truncated {
            path: path.into(),
            expected,
            found: data.len(),
        });
    }
    if data.len() > expected {
        return Err(DataError::Format {
            path: path.into(),
            reason: format!(
                "{} bytes after the data the header promises ({expected})",
                data.len() - expected
            ),
        });
    }
    Ok((dims, data))
}

/// Reads an IDX images file (magic 2051), gzip or raw.
pub fn read_idx_images(path: &Path) -> Result<IdxImages, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, data) = parse_header(path, &bytes, IMAGES_MAGIC, 3, "images")?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        bytes: data.to_vec(),
    })
}

/// Reads an IDX labels file (magic 2049), gzip or raw.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse_header(path, &bytes, LABELS_MAGIC, 1, "labels")?;
    Ok(data.to_vec())
}

/// Finds `<dir>/<stem>.gz` or `<dir>/<stem>` (also the `.idx3-ubyte` dotted spelling some mirrors use).
fn find_idx_file(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    for name in [
        format!("{stem}.gz"),
        stem.to_string(),
        format!("{dotted}.gz"),
        dotted.clone(),
    ] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::Missing {
        path: dir.join(format!("{stem}.gz")),
        what: format!("IDX file {stem} (gzip or raw)"),
    })
}

/// Loads one split of an IDX dataset from `dir`: `train` reads `train-*-ubyte`, `test` reads `t10k-*-ubyte`.
pub fn load_idx_pair(dir: &Path, dataset: &str, split: &str) -> Result<ImageSet, DataError> {
    let prefix = match split {
        "train" => "train",
        "test" => "t10k",
        other => {
            return Err(DataError::Request(format!(
                "{dataset} has splits train and test, not {other:?}"
            )));
        }
    };
    let images_path = find_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images: images_path,
            n_images: images.count,
            labels: labels_path,
            n_labels: labels.len(),
        });
    }
    let pixels = images.bytes.iter().map(|&b| b as f32 / 255.0).collect();
    Ok(ImageSet {
        dataset: dataset.to_string(),
        split: split.to_string(),
        channels: 1,
        height: images.rows,
        width: images.cols,
        pixels,
        labels: labels.iter().map(|&l| l as i32).collect(),
        ids: (0..images.count as u32).collect(),
        class_names: Vec::new(),
    })
}
