//! Provenance: the `rmqm.`-prefixed key-value metadata every artifact carries, so a table can be
//! traced back to the run that made it.

use crate::ArtifactError;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The prefix of every rmqm metadata key.
pub const METADATA_PREFIX: &str = "rmqm.";

/// The metadata keys rmqm writes (without the prefix).
pub mod keys {
    /// The artifact's kind: `embeddings`, `trajectories`, `altered`, `stats`, `curves`, `probe`, ...
    pub const KIND: &str = "kind";
    /// The tool that wrote it.
    pub const TOOL: &str = "tool";
    /// The tool's version.
    pub const VERSION: &str = "version";
    /// The full command line.
    pub const COMMAND: &str = "command";
    /// Model id (file stem of the model, or `none`).
    pub const MODEL: &str = "model";
    /// Training method of the model.
    pub const METHOD: &str = "method";
    /// Embedding dimension.
    pub const DIM: &str = "dim";
    /// Optimizer the model was trained with.
    pub const OPTIMIZER: &str = "optimizer";
    /// Architecture of the model.
    pub const ARCH: &str = "arch";
    /// Epochs the model was trained for.
    pub const EPOCHS: &str = "epochs";
    /// Dataset the images come from.
    pub const DATASET: &str = "dataset";
    /// Split of that dataset.
    pub const SPLIT: &str = "split";
    /// Dataset the model was trained on.
    pub const TRAIN_DATASET: &str = "train_dataset";
    /// Alteration: `none`, `noise`, `pgd`.
    pub const ALTERATION: &str = "alteration";
    /// Random seed.
    pub const SEED: &str = "seed";
    /// Number of alteration steps J (steps are 0..=J).
    pub const STEPS: &str = "steps";
    /// Image channels (altered-image streams).
    pub const CHANNELS: &str = "channels";
    /// Image height (altered-image streams).
    pub const HEIGHT: &str = "height";
    /// Image width (altered-image streams).
    pub const WIDTH: &str = "width";
}

/// An ordered map of provenance entries, stored without the `rmqm.` prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    entries: BTreeMap<String, String>,
}

impl Provenance {
    /// An empty set of entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (without prefix) to `value`, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.entries.insert(key.to_string(), value.to_string());
        self
    }

    /// Builder-style `set`.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.set(key, value);
        self
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The value of `key`, or an error naming the file and the key.
    pub fn require(&self, key: &str, path: &Path) -> Result<&str, ArtifactError> {
        self.get(key).ok_or_else(|| ArtifactError::Metadata {
            path: path.into(),
            reason: format!("missing key {METADATA_PREFIX}{key}"),
        })
    }

    /// The value of `key` parsed as a number, or an error naming the file and the key.
    pub fn require_usize(&self, key: &str, path: &Path) -> Result<usize, ArtifactError> {
        let v = self.require(key, path)?;
        v.parse().map_err(|_| ArtifactError::Metadata {
            path: path.into(),
            reason: format!("{METADATA_PREFIX}{key} = {v:?} is not a whole number"),
        })
    }

    /// Checks that `key` equals `expected`.
    pub fn expect(&self, key: &str, expected: &str, path: &Path) -> Result<(), ArtifactError> {
        let v = self.require(key, path)?;
        if v == expected {
            Ok(())
        } else {
            Err(ArtifactError::Metadata {
                path: path.into(),
                reason: format!("{METADATA_PREFIX}{key} is {v:?}, expected {expected:?}"),
            })
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Copies every entry of `other` that is not yet set here.
    pub fn inherit(&mut self, other: &Provenance) -> &mut Self {
        for (k, v) in other.iter() {
            self.entries
                .entry(k.to_string())
                .or_insert_with(|| v.to_string());
        }
        self
    }

    /// Entries with the `rmqm.` prefix, as stored in a file's metadata.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        self.entries
            .iter()
            .map(|(k, v)| (format!("{METADATA_PREFIX}{k}"), v.clone()))
            .collect()
    }

    /// Reads the `rmqm.` entries of a file's metadata (other keys are ignored).
    pub fn from_metadata<'a>(metadata: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let entries = metadata
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(METADATA_PREFIX)
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        Provenance { entries }
    }
}
