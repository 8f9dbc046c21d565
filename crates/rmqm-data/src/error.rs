use std::path::PathBuf;

/// Everything that can go wrong while loading a dataset; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder the loader needs does not exist.
    #[error("{path}: missing ({what})")]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file should have held.
        what: String,
    },
    /// An I/O error while reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's magic number is not the one its format requires.
    #[error(
        "{path}: wrong magic number {found:#010x} (expected {expected:#010x}); not an IDX {what} file"
    )]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The magic number found.
        found: u32,
        /// The magic number required.
        expected: u32,
        /// "images" or "labels".
        what: &'static str,
    },
    /// A file ends before the data its header promises.
    #[error("{path}: truncated: header promises {expected} bytes of data, file has {found}")]
    Truncated {
        /// The file being read.
        path: PathBuf,
        /// Bytes promised.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// Images and labels disagree on how many items there are.
    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The labels file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// An image inside a folder or archive cannot be decoded.
    #[error("{path}: unreadable image: {reason}")]
    BadImage {
        /// The image (or archive member) at fault.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// The file's content is not what the format says (other than magic and length).
    #[error("{path}: {reason}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request that makes no sense for the dataset (unknown name or split, bad fraction).
    #[error("{0}")]
    Request(String),
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path,
                what: "file not found".into(),
            }
        } else {
            DataError::Io { path, source }
        }
    }
}
