//! What a model is: architecture, training method, sizes, normalisation and how it was trained.
//! Stored as the safetensors metadata of every saved model.

use std::collections::HashMap;
use std::str::FromStr;

pub use rmqm_vocab::{Arch, Method, OptimizerKind};

/// Everything that defines a model and its training run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model id (the file stem unless given).
    pub model_id: String,
    /// Architecture.
    pub arch: Arch,
    /// Training method.
    pub method: Method,
    /// Embedding dimension.
    pub dim: usize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Dataset trained on.
    pub dataset: String,
    /// Epochs trained (0 = random initialisation).
    pub epochs: usize,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Per-channel mean subtracted from pixels in `[0, 1]` (part of the model).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation pixels are divided by (part of the model).
    pub std: Vec<f32>,
    /// Classes of the classifier head (and of the training labels).
    pub classes: usize,
    /// Batch size used in training.
    pub batch_size: usize,
    /// Batches whose gradients are summed before each optimizer step.
    pub accumulate: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// NT-Xent temperature.
    pub temperature: f64,
    /// Triplet margin.
    pub margin: f64,
}

/// The standard per-channel normalisation of a dataset (mean, std), for pixels in `[0, 1]`.
pub fn dataset_normalisation(dataset: &str, channels: usize) -> (Vec<f32>, Vec<f32>) {
    match dataset {
        "mnist" => (vec![0.1307], vec![0.3081]),
        "fashion-mnist" => (vec![0.2860], vec![0.3530]),
        "kmnist" => (vec![0.1918], vec![0.3483]),
        "cifar10" => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        "cifar100" => (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762]),
        _ => (vec![0.5; channels], vec![0.5; channels]),
    }
}

fn list(v: &[f32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ModelConfig {
    /// Ok when the model takes images of `(channels, height, width)`; else what it takes instead.
    pub fn check_image_shape(&self, shape: (usize, usize, usize)) -> Result<(), String> {
        if (self.channels, self.height, self.width) == shape {
            Ok(())
        } else {
            Err(format!(
                "the model takes {}x{}x{} images, not {}x{}x{}",
                self.channels, self.height, self.width, shape.0, shape.1, shape.2
            ))
        }
    }

    /// The config as `rmqm.`-prefixed metadata entries.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("rmqm.{k}"), v);
        };
        put("kind", "model".into());
        put("version", env!("CARGO_PKG_VERSION").into());
        put("model", self.model_id.clone());
        put("arch", self.arch.name().into());
        put("method", self.method.name().into());
        put("dim", self.dim.to_string());
        put("optimizer", self.optimizer.name().into());
        put("train_dataset", self.dataset.clone());
        put("epochs", self.epochs.to_string());
        put("seed", self.seed.to_string());
        put("channels", self.channels.to_string());
        put("height", self.height.to_string());
        put("width", self.width.to_string());
        put("mean", list(&self.mean));
        put("std", list(&self.std));
        put("classes", self.classes.to_string());
        put("batch_size", self.batch_size.to_string());
        put("accumulate", self.accumulate.to_string());
        put("learning_rate", self.learning_rate.to_string());
        put("temperature", self.temperature.to_string());
        put("margin", self.margin.to_string());
        m
    }

    /// The model's facts an embeddings file carries, as (key without `rmqm.`, value): its
    /// metadata but the file's own keys (kind, version), the input shape and the seed, which is
    /// the walk's in such a file; the model's seed goes under `model_seed`.
    pub fn embedding_facts(&self) -> Vec<(String, String)> {
        let mut facts: Vec<(String, String)> = self
            .to_metadata()
            .into_iter()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix("rmqm.")?;
                let own = matches!(
                    k,
                    "kind" | "version" | "seed" | "channels" | "height" | "width"
                );
                (!own).then(|| (k.to_string(), v))
            })
            .collect();
        facts.push(("model_seed".into(), self.seed.to_string()));
        facts
    }

    /// Reads a config back from metadata written by [`ModelConfig::to_metadata`].
    pub fn from_metadata(m: &HashMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| {
            m.get(&format!("rmqm.{k}"))
                .cloned()
                .ok_or_else(|| format!("missing metadata key rmqm.{k}"))
        };
        fn num<T: FromStr>(k: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("metadata rmqm.{k} = {v:?} is not a number"))
        }
        let floats = |k: &str| -> Result<Vec<f32>, String> {
            get(k)?.split(',').map(|x| num(k, x.to_string())).collect()
        };
        Ok(ModelConfig {
            model_id: get("model")?,
            arch: get("arch")?.parse()?,
            method: get("method")?.parse()?,
            dim: num("dim", get("dim")?)?,
            optimizer: get("optimizer")?.parse()?,
            dataset: get("train_dataset")?,
            epochs: num("epochs", get("epochs")?)?,
            seed: num("seed", get("seed")?)?,
            channels: num("channels", get("channels")?)?,
            height: num("height", get("height")?)?,
            width: num("width", get("width")?)?,
            mean: floats("mean")?,
            std: floats("std")?,
            classes: num("classes", get("classes")?)?,
            batch_size: num("batch_size", get("batch_size")?)?,
            accumulate: num("accumulate", get("accumulate")?)?,
            learning_rate: num("learning_rate", get("learning_rate")?)?,
            temperature: num("temperature", get("temperature")?)?,
            margin: num("margin", get("margin")?)?,
        })
    }
}
