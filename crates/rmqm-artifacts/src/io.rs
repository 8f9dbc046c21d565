use std::fmt;
use std::path::{Path, PathBuf};

/// Where a tool reads from: a file path or standard input (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Read from this file.
    Path(PathBuf),
    /// Read from standard input.
    Stdin,
}

impl Input {
    /// Parses a command-line value: `-` is stdin, anything else a path.
    pub fn parse(s: &str) -> Input {
        if s == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(s))
        }
    }
    /// The path to show in messages (`-` for stdin).
    pub fn display_path(&self) -> PathBuf {
        match self {
            Input::Path(p) => p.clone(),
            Input::Stdin => PathBuf::from("-"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.display_path().display())
    }
}

impl From<&Path> for Input {
    fn from(p: &Path) -> Self {
        Input::Path(p.to_path_buf())
    }
}

/// Where a tool writes: a Parquet file (atomically) or standard output as an Arrow IPC stream (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write a Parquet file at this path.
    Path(PathBuf),
    /// Write an Arrow IPC stream to standard output.
    Stdout,
}

impl Output {
    /// Parses a command-line value: `-` is stdout, anything else a path.
    pub fn parse(s: &str) -> Output {
        if s == "-" {
            Output::Stdout
        } else {
            Output::Path(PathBuf::from(s))
        }
    }
    /// The path to show in messages (`-` for stdout).
    pub fn display_path(&self) -> PathBuf {
        match self {
            Output::Path(p) => p.clone(),
            Output::Stdout => PathBuf::from("-"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.display_path().display())
    }
}

impl From<&Path> for Output {
    fn from(p: &Path) -> Self {
        Output::Path(p.to_path_buf())
    }
}
