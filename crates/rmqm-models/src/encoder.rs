//! The encoders: LeNet-5 (two variants) and CIFAR ResNet-18, each with an MLP to the embedding,
//! per-dataset input normalisation inside the model, and an optional classifier head.

use crate::config::{Arch, ModelConfig};
use crate::layers::{BatchNorm2d, Conv2d, Dense, global_average_pool};
use crate::ops;
use crate::params::ParamStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// LeNet-5 body (both variants): two conv/pool stages and an MLP.
#[derive(Debug, Clone)]
struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    mlp: Vec<Dense>,
}

/// CIFAR ResNet-18 basic block.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(
        s: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Self> {
        let shortcut = if stride != 1 || c_in != c_out {
            Some((
                Conv2d::new(
                    s,
                    &format!("{name}.shortcut.conv"),
                    c_in,
                    c_out,
                    1,
                    stride,
                    0,
                    false,
                )?,
                BatchNorm2d::new(s, &format!("{name}.shortcut.bn"), c_out)?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: Conv2d::new(
                s,
                &format!("{name}.conv1"),
                c_in,
                c_out,
                3,
                stride,
                1,
                false,
            )?,
            bn1: BatchNorm2d::new(s, &format!("{name}.bn1"), c_out)?,
            conv2: Conv2d::new(s, &format!("{name}.conv2"), c_out, c_out, 3, 1, 1, false)?,
            bn2: BatchNorm2d::new(s, &format!("{name}.bn2"), c_out)?,
            shortcut,
        })
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self
            .bn1
            .forward_relu(&self.conv1.forward(x, false)?, train)?;
        let y = self.bn2.forward(&self.conv2.forward(&y, false)?, train)?;
        let s = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(x, false)?, train)?,
            None => x.clone(),
        };
        ops::add_relu(&y, &s)
    }
}

/// CIFAR ResNet-18 body: 3x3 stem (no max pool), four stages of two blocks, average pool, MLP.
#[derive(Debug, Clone)]
struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    mlp: Vec<Dense>,
}

#[derive(Debug, Clone)]
enum Body {
    LeNet(LeNet),
    ResNet(ResNet),
}

/// An encoder: normalisation, body, embedding; plus the classifier head of label-using methods.
pub struct Encoder {
    config: ModelConfig,
    mean: Tensor,
    inv_std: Tensor,
    body: Body,
    head: Option<Dense>,
    store: ParamStore,
}

fn mlp(s: &mut ParamStore, sizes: &[usize]) -> Result<Vec<Dense>> {
    sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| Dense::new(s, &format!("encoder.fc{}", i + 1), w[0], w[1]))
        .collect()
}

/// Side of a LeNet feature map after conv(k, padding) and a 2x2 pool.
fn lenet_side(side: usize, k: usize, padding: usize) -> usize {
    (side + 2 * padding + 1 - k) / 2
}

impl Encoder {
    /// Builds the encoder described by `config` with parameters from `store`.
    pub fn new(config: ModelConfig, mut store: ParamStore) -> Result<Self> {
        let c = config.channels;
        if config.mean.len() != c || config.std.len() != c {
            candle_core::bail!(
                "normalisation has {} means and {} stds for {c} channels",
                config.mean.len(),
                config.std.len()
            );
        }
        let s = &mut store;
        let body = match config.arch {
            Arch::Lenet5 | Arch::Lenet5Classic => {
                let (pad, sizes): (usize, &[usize]) = if config.arch == Arch::Lenet5 {
                    (0, &[512, 512, 512])
                } else {
                    (2, &[120, 84])
                };
                let (h, w) = (
                    lenet_side(lenet_side(config.height, 5, pad), 5, 0),
                    lenet_side(lenet_side(config.width, 5, pad), 5, 0),
                );
                if h == 0 || w == 0 {
                    candle_core::bail!(
                        "{}x{} images are too small for {}",
                        config.height,
                        config.width,
                        config.arch
                    );
                }
                let mut dims = vec![16 * h * w];
                dims.extend_from_slice(sizes);
                dims.push(config.dim);
                Body::LeNet(LeNet {
                    conv1: Conv2d::new(s, "encoder.conv1", c, 6, 5, 1, pad, true)?,
                    conv2: Conv2d::new(s, "encoder.conv2", 6, 16, 5, 1, 0, true)?,
                    mlp: mlp(s, &dims)?,
                })
            }
            Arch::Resnet18 => {
                let stem = Conv2d::new(s, "encoder.stem.conv", c, 64, 3, 1, 1, false)?;
                let stem_bn = BatchNorm2d::new(s, "encoder.stem.bn", 64)?;
                let mut blocks = Vec::new();
                let mut c_in = 64;
                for (stage, &c_out) in [64usize, 128, 256, 512].iter().enumerate() {
                    for b in 0..2 {
                        let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                        blocks.push(BasicBlock::new(
                            s,
                            &format!("encoder.layer{}.{b}", stage + 1),
                            c_in,
                            c_out,
                            stride,
                        )?);
                        c_in = c_out;
                    }
                }
                Body::ResNet(ResNet {
                    stem,
                    stem_bn,
                    blocks,
                    mlp: mlp(s, &[512, 1024, 1024, config.dim])?,
                })
            }
        };
        let head = if config.method.has_head() {
            Some(Dense::new(s, "head", config.dim, config.classes)?)
        } else {
            None
        };
        let shape = (1, c, 1, 1);
        let mean = Tensor::from_vec(config.mean.clone(), shape, store.device())?
            .to_dtype(store.dtype())?;
        let inv: Vec<f32> = config.std.iter().map(|s| 1.0 / s).collect();
        let inv_std = Tensor::from_vec(inv, shape, store.device())?.to_dtype(store.dtype())?;
        Ok(Encoder {
            config,
            mean,
            inv_std,
            body,
            head,
            store,
        })
    }

    /// A freshly initialised encoder (seeded by `config.seed`).
    pub fn init(
        config: ModelConfig,
        dtype: DType,
        device: &Device,
        trainable: bool,
    ) -> Result<Self> {
        let seed = config.seed;
        Self::new(config, ParamStore::init(seed, dtype, device, trainable))
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Mutable access to the config (to record training facts before saving).
    pub fn config_mut(&mut self) -> &mut ModelConfig {
        &mut self.config
    }

    /// Embeddings (n, dim) of pixels in `[0, 1]` shaped (n, c, h, w); `train` selects batch-norm mode.
    pub fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = x.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        let features = match &self.body {
            Body::LeNet(l) => {
                let y = l.conv1.forward_relu_pool(&x)?;
                let y = l.conv2.forward_relu_pool(&y)?;
                y.flatten_from(1)?
            }
            Body::ResNet(r) => {
                let mut y = r.stem_bn.forward_relu(&r.stem.forward(&x, false)?, train)?;
                for b in &r.blocks {
                    y = b.forward(&y, train)?;
                }
                global_average_pool(&y)?
            }
        };
        let mlp = match &self.body {
            Body::LeNet(l) => &l.mlp,
            Body::ResNet(r) => &r.mlp,
        };
        let mut y = features;
        for (i, layer) in mlp.iter().enumerate() {
            y = layer.forward(&y, i + 1 < mlp.len())?;
        }
        Ok(y)
    }

    /// Class logits from embeddings: Linear(ReLU(embedding)); `None` for methods without a head.
    pub fn logits(&self, embedding: &Tensor) -> Result<Option<Tensor>> {
        match &self.head {
            Some(h) => Ok(Some(h.forward(&embedding.relu()?, false)?)),
            None => Ok(None),
        }
    }

    /// The fewest images a forward pass needs for each image's embedding to be the same, bit for
    /// bit, whatever images share the pass: the MLP's products sum in another order for fewer
    /// rows ([`crate::kernels::row_invariant_rows`]; 17 for LeNet-5 with dim 16, 2 from dim 256).
    /// [`Encoder::embed_pixels_padded`] pads shorter passes to it.
    pub fn row_invariant_rows(&self) -> usize {
        let mlp = match &self.body {
            Body::LeNet(l) => &l.mlp,
            Body::ResNet(r) => &r.mlp,
        };
        mlp.iter().map(Dense::row_invariant_rows).max().unwrap_or(1)
    }

    /// True when an image's embedding depends on that image alone (no batch statistics): LeNet.
    /// Then batches can be embedded together and split afterwards with the same result, bit for
    /// bit when every pass has [`Encoder::row_invariant_rows`] images or more.
    pub fn per_sample(&self) -> bool {
        matches!(self.body, Body::LeNet(_))
    }

    /// Trainable variables (empty for a frozen model).
    pub fn vars(&self) -> &[Var] {
        self.store.vars()
    }

    /// Every named tensor, as saved.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.store.named_tensors()
    }

    /// Saves the model as safetensors (parameters and running statistics f32, batch-norm counters
    /// int64, as in a PyTorch state dict) with the config in the metadata; atomic (temp + rename; a
    /// device or FIFO such as `/dev/null` is written in place).
    pub fn save(&self, path: &Path) -> std::result::Result<(), ModelFileError> {
        self.write_file(path)
            .map_err(|e| ModelFileError::new(path, e.to_string()))
    }

    fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .named_tensors()
            .and_then(|named| {
                named
                    .into_iter()
                    .map(|(n, t)| match t.dtype().is_float() {
                        true => Ok((n, t.to_dtype(DType::F32)?)),
                        false => Ok((n, t)),
                    })
                    .collect()
            })
            .map_err(std::io::Error::other)?;
        let bytes = safetensors::tensor::serialize(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(self.config.to_metadata()),
        )
        .map_err(std::io::Error::other)?;
        let mut out = rmqm_outfile::OutFile::create(path)?;
        std::io::Write::write_all(&mut out, &bytes)?;
        out.commit()
    }

    /// Loads a model saved by [`Encoder::save`]; `trainable` makes its parameters `Var`s.
    pub fn load(
        path: &Path,
        dtype: DType,
        device: &Device,
        trainable: bool,
    ) -> std::result::Result<Self, ModelFileError> {
        let fail = |reason: String| ModelFileError::new(path, reason);
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let config = ModelConfig::from_metadata(&metadata)
            .map_err(|e| fail(format!("not an rmqm model: {e}")))?;
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device)
                .map_err(|e| fail(e.to_string()))?;
        Encoder::new(config, ParamStore::load(tensors, dtype, device, trainable))
            .map_err(|e| fail(e.to_string()))
    }
}

/// A model file that could not be read or written: the file and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFileError {
    /// The model file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl ModelFileError {
    fn new(path: &Path, reason: String) -> Self {
        ModelFileError {
            path: path.to_path_buf(),
            reason,
        }
    }
}

impl std::fmt::Display for ModelFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ModelFileError {}

impl Encoder {
    /// Embeds `n` images given as contiguous pixels (n * c * h * w, in `[0, 1]`) in eval mode, in
    /// batches of `batch_size`; returns n * dim values.
    pub fn embed_pixels(&self, pixels: &[f32], n: usize, batch_size: usize) -> Result<Vec<f32>> {
        let size = self.image_size();
        self.check_pixels(pixels, n)?;
        let mut out = Vec::with_capacity(n * self.config.dim);
        for chunk in pixels.chunks(batch_size.max(1) * size) {
            out.extend(self.embed_pass(chunk, chunk.len() / size)?);
        }
        Ok(out)
    }

    /// Embeds `n` images (contiguous pixels, as [`Encoder::embed_pixels`] takes them) in one
    /// forward pass of at least [`Encoder::row_invariant_rows`] images, padded with blank ones:
    /// each embedding equals the one any pass of that many images or more computes, bit for bit
    /// (LeNet; ResNet's grouped convolutions are not checked for that, and its passes cost up to 65
    /// images' work however few it embeds).
    pub fn embed_pixels_padded(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_pixels(pixels, n)?;
        let rows = n.max(self.row_invariant_rows());
        if rows == n {
            return self.embed_pass(pixels, n);
        }
        let mut padded = pixels.to_vec();
        padded.resize(rows * self.image_size(), 0.0);
        let mut e = self.embed_pass(&padded, rows)?;
        e.truncate(n * self.config.dim);
        Ok(e)
    }

    /// Values of one image.
    fn image_size(&self) -> usize {
        let cfg = &self.config;
        cfg.channels * cfg.height * cfg.width
    }

    /// Ok when `pixels` holds `n` images of the model's shape.
    fn check_pixels(&self, pixels: &[f32], n: usize) -> Result<()> {
        let cfg = &self.config;
        if pixels.len() != n * self.image_size() {
            candle_core::bail!(
                "{} pixel values for {n} images of {}x{}x{}",
                pixels.len(),
                cfg.channels,
                cfg.height,
                cfg.width
            );
        }
        Ok(())
    }

    /// One eval-mode forward pass of `b` images; b * dim values.
    fn embed_pass(&self, pixels: &[f32], b: usize) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let shape = (b, cfg.channels, cfg.height, cfg.width);
        let x = Tensor::from_slice(pixels, shape, &crate::device())?;
        let e = self.embed(&x.to_dtype(self.mean.dtype())?, false)?;
        e.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }

    /// Predicted classes from the head (eval mode), or `None` without a head.
    pub fn classify_pixels(
        &self,
        pixels: &[f32],
        n: usize,
        batch_size: usize,
    ) -> Result<Option<Vec<u32>>> {
        if self.head.is_none() {
            return Ok(None);
        }
        let cfg = &self.config;
        let size = cfg.channels * cfg.height * cfg.width;
        let mut out = Vec::with_capacity(n);
        let device = crate::device();
        for chunk in pixels.chunks(batch_size.max(1) * size) {
            let b = chunk.len() / size;
            let x = Tensor::from_slice(chunk, (b, cfg.channels, cfg.height, cfg.width), &device)?;
            let e = self.embed(&x.to_dtype(self.mean.dtype())?, false)?;
            let logits = self.logits(&e)?.expect("head checked above");
            out.extend(logits.argmax(1)?.to_vec1::<u32>()?);
        }
        Ok(Some(out))
    }
}
