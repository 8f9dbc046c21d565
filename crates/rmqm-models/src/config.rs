//! What a model is: architecture, training method, sizes, normalisation and how it was trained.
//! Stored as the safetensors metadata of every saved model.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }
        impl $name {
            /// Every value, in a stable order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The name used on the command line, in metadata and in tables.
            pub fn name(self) -> &'static str { match self { $($name::$variant => $text),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} {s:?}; known: {}", stringify!($name).to_lowercase(), names.join(", "))
                })
            }
        }
    };
}

named_enum!(
    /// Encoder architectures.
    Arch {
        /// conv 6@5x5, pool, conv 16@5x5, pool, MLP 512-512-512-dim (default for 28x28).
        Lenet5 => "lenet5",
        /// conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, 120, 84, dim.
        Lenet5Classic => "lenet5-classic",
        /// CIFAR ResNet-18 (3x3 stem, no max pool), average pool, MLP 512-1024-1024-dim.
        Resnet18 => "resnet18",
    }
);

named_enum!(
    /// Training methods.
    Method {
        /// Cross-entropy through a classifier head.
        CrossEntropy => "cross-entropy",
        /// Cross-entropy plus a semihard triplet loss on the embedding, weights 1:1.
        TripletEntropy => "triplet-entropy",
        /// Semihard triplet loss with triplets mined from labels in the batch.
        TripletSupervised => "triplet-supervised",
        /// Semihard triplet loss on two augmented views (positive = the other view).
        TripletSs => "triplet-ss",
        /// SimCLR's NT-Xent over 2N augmented views.
        Ntxent => "ntxent",
    }
);

impl Method {
    /// True when the method trains a classifier head (and needs labels for it).
    pub fn has_head(self) -> bool {
        matches!(self, Method::CrossEntropy | Method::TripletEntropy)
    }
    /// True when the method uses two augmented views of each image.
    pub fn uses_views(self) -> bool {
        matches!(self, Method::TripletSs | Method::Ntxent)
    }
}

named_enum!(
    /// Optimizers.
    OptimizerKind {
        /// SGD with Nesterov momentum 0.9 (PyTorch's update).
        Sgd => "sgd",
        /// Adam (PyTorch defaults), no weight decay.
        Adam => "adam",
    }
);

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
