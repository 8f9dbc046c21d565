use std::path::PathBuf;

/// Everything that can go wrong reading or writing an artifact; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// An I/O error on a named file (or `-` for stdin/stdout).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a readable Parquet or Arrow IPC file.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file's columns are not the ones the reader needs.
    #[error("{path}: wrong schema: {reason}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Metadata the reader relies on is missing or does not match.
    #[error("{path}: metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data breaks a rule of the format (nulls, NaN, ordering).
    #[error("{path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ArtifactError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArtifactError::Io {
            path: path.into(),
            source,
        }
    }
    /// A corrupt-file error from any displayable cause.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        ArtifactError::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
