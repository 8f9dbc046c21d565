//! The training loop: seeded shuffling, the method's loss per batch, gradients summed over
//! `accumulate` batches (as `loss.backward()` accumulates in PyTorch), then one optimizer step.
//! For encoders without batch statistics (LeNet) the batches of one step are embedded in one
//! forward pass and each batch's loss is taken on its own rows: the same gradient, computed at a
//! batch size where the kernels keep every core busy.

use crate::augment::{Augmentation, augment_batch};
use crate::losses::{BatchEmbeddings, BatchInput, embedding_loss, method_loss};
use crate::optim::{Adam, NesterovSgd, Optimizer};
use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rmqm_data::ImageSet;
use rmqm_models::{Encoder, Method, OptimizerKind};
use std::time::Instant;

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Batches whose gradients are summed before each optimizer step.
    pub accumulate: usize,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub learning_rate: f64,
    /// Embed the batches of one optimizer step in one forward pass when the encoder has no batch
    /// statistics (the same gradient, faster); false computes one batch at a time.
    pub group_batches: bool,
}

/// One optimizer step's record.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Optimizer step (0-based, over the whole run).
    pub step: usize,
    /// Mean loss of the batches in this step.
    pub loss: f64,
    /// Seconds since training started.
    pub seconds: f64,
    /// Images per second over this step.
    pub examples_per_second: f64,
    /// Images seen so far.
    pub examples: usize,
}

/// The images at `indices` as an (n, c, h, w) f32 tensor.
pub fn batch_tensor(set: &ImageSet, indices: &[usize], device: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(indices.len() * set.image_size());
    for &i in indices {
        v.extend_from_slice(set.image(i));
    }
    Tensor::from_vec(
        v,
        (indices.len(), set.channels, set.height, set.width),
        device,
    )
}

/// What one optimizer step needs: the model, its data and the options, fixed for the run.
struct Stepper<'a> {
    model: &'a Encoder,
    data: &'a ImageSet,
    opts: &'a TrainOptions,
    method: Method,
    vars: Vec<candle_core::Var>,
    device: Device,
    aug: Augmentation,
}

/// The summed gradient of one optimizer step and each batch's loss.
struct StepGradients {
    /// Per variable, the gradient summed over the step's batches (None where none flowed).
    gradients: Vec<Option<Tensor>>,
    /// Each batch's loss value.
    losses: Vec<f64>,
}

/// Where a step is, for error messages.
#[derive(Clone, Copy)]
struct StepPosition {
    epoch: usize,
    step: usize,
    first_batch: usize,
}

impl Stepper<'_> {
    /// The epoch's batches in its seeded order (single-image batches dropped for the pair methods).
    fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let needs_pairs = self.method != Method::CrossEntropy;
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.opts.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        order
            .chunks(self.opts.batch_size)
            .filter(|b| !(needs_pairs && b.len() < 2))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// View `view` of each image of `batch` in `epoch`'s augmentation stream.
    fn views(&self, batch: &[usize], epoch: usize, view: u8) -> Result<Tensor> {
        let (c, h, w) = (self.data.channels, self.data.height, self.data.width);
        let imgs: Vec<&[f32]> = batch.iter().map(|&i| self.data.image(i)).collect();
        let ids: Vec<u32> = batch.iter().map(|&i| self.data.ids[i]).collect();
        Tensor::from_vec(
            augment_batch(
                self.aug,
                &imgs,
                &ids,
                c,
                h,
                w,
                self.opts.seed,
                epoch as u64,
                view,
            ),
            (batch.len(), c, h, w),
            &self.device,
        )
    }

    fn labels(&self, batch: &[usize]) -> Vec<i64> {
        batch.iter().map(|&i| self.data.labels[i] as i64).collect()
    }

    /// The gradient of `loss` for every variable, detached: a variable's gradient can still
    /// reference this batch's forward graph, which would otherwise live on through the
    /// optimizer's state.
    fn gradients(&self, loss: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let grads = loss.backward()?;
        Ok(self
            .vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).map(Tensor::detach))
            .collect())
    }

    /// A batch's loss value, checked finite.
    fn checked(loss: &Tensor, at: StepPosition, k: usize) -> Result<f64> {
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            candle_core::bail!(
                "loss became {value} at epoch {}, step {} (batch {})",
                at.epoch,
                at.step,
                at.first_batch + k
            );
        }
        Ok(value)
    }

    /// One forward over the whole group, the loss of each batch on its own rows, one backward of
    /// their sum: the same summed gradient, at a batch size where the kernels keep both cores
    /// busy (encoders without batch statistics only).
    fn grouped(&self, group: &[Vec<usize>], at: StepPosition) -> Result<StepGradients> {
        let all: Vec<usize> = group.iter().flat_map(|b| b.iter().copied()).collect();
        let (model, method) = (self.model, self.method);
        let embedded = if method.uses_views() {
            (
                model.embed(&self.views(&all, at.epoch, 0)?, true)?,
                Some(model.embed(&self.views(&all, at.epoch, 1)?, true)?),
            )
        } else {
            (
                model.embed(&batch_tensor(self.data, &all, &self.device)?, true)?,
                None,
            )
        };
        let mut losses: Vec<Tensor> = Vec::with_capacity(group.len());
        let mut values = Vec::with_capacity(group.len());
        let mut offset = 0;
        for (k, batch) in group.iter().enumerate() {
            let n = batch.len();
            let first = embedded.0.narrow(0, offset, n)?;
            let loss = match &embedded.1 {
                Some(second) => embedding_loss(
                    model,
                    method,
                    &BatchEmbeddings::Views {
                        first: &first,
                        second: &second.narrow(0, offset, n)?,
                    },
                )?,
                None => embedding_loss(
                    model,
                    method,
                    &BatchEmbeddings::Labelled {
                        embeddings: &first,
                        labels: &self.labels(batch),
                    },
                )?,
            };
            values.push(Self::checked(&loss, at, k)?);
            losses.push(loss);
            offset += n;
        }
        let total = losses
            .iter()
            .skip(1)
            .try_fold(losses[0].clone(), |sum, l| sum + l)?;
        Ok(StepGradients {
            gradients: self.gradients(&total)?,
            losses: values,
        })
    }

    /// One forward and backward per batch, gradients summed: batch statistics (ResNet's batch
    /// norm) tie each batch's embeddings to its batch.
    fn per_batch(&self, group: &[Vec<usize>], at: StepPosition) -> Result<StepGradients> {
        let mut acc: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let mut values = Vec::with_capacity(group.len());
        for (k, batch) in group.iter().enumerate() {
            let input = if self.method.uses_views() {
                BatchInput::Views {
                    first: &self.views(batch, at.epoch, 0)?,
                    second: &self.views(batch, at.epoch, 1)?,
                }
            } else {
                BatchInput::Labelled {
                    images: &batch_tensor(self.data, batch, &self.device)?,
                    labels: &self.labels(batch),
                }
            };
            let loss = method_loss(self.model, self.method, &input, true)?;
            values.push(Self::checked(&loss, at, k)?);
            for (slot, g) in acc.iter_mut().zip(self.gradients(&loss)?) {
                if let Some(g) = g {
                    *slot = Some(match slot.take() {
                        Some(s) => (s + g)?,
                        None => g,
                    });
                }
            }
        }
        Ok(StepGradients {
            gradients: acc,
            losses: values,
        })
    }

    /// Fails on a non-finite gradient, which would poison the weights silently.
    fn check_gradients(&self, gradients: &[Option<Tensor>], at: StepPosition) -> Result<()> {
        for (g, var) in gradients.iter().zip(&self.vars) {
            if let Some(g) = g {
                let total = g
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                if !total.is_finite() {
                    candle_core::bail!(
                        "non-finite gradient for a {:?} parameter at epoch {}, step {}",
                        var.dims(),
                        at.epoch,
                        at.step
                    );
                }
            }
        }
        Ok(())
    }
}

/// Trains `model` (whose parameters must be trainable) on `data`; calls `on_step` after every
/// optimizer step. Fails on a non-finite loss, naming the epoch and step.
pub fn train(
    model: &Encoder,
    data: &ImageSet,
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<Vec<StepLog>> {
    let vars = model.vars().to_vec();
    if vars.is_empty() {
        candle_core::bail!("the model has no trainable parameters");
    }
    let mut optimizer: Box<dyn Optimizer> = match opts.optimizer {
        OptimizerKind::Sgd => Box::new(NesterovSgd::new(vars.clone(), opts.learning_rate, 0.9)),
        OptimizerKind::Adam => Box::new(Adam::new(vars.clone(), opts.learning_rate)),
    };
    let stepper = Stepper {
        model,
        data,
        opts,
        method: model.config().method,
        vars,
        device: rmqm_models::device(),
        aug: Augmentation::for_images(data.channels),
    };
    let grouped = opts.group_batches && model.per_sample();
    let accumulate = opts.accumulate.max(1);
    let start = Instant::now();
    let (mut logs, mut step, mut examples) = (Vec::new(), 0, 0);
    for epoch in 0..opts.epochs {
        let batches = stepper.epoch_batches(epoch);
        // Each optimizer step sums the gradients of `accumulate` consecutive batches (fewer at
        // the epoch's end).
        for (gi, group) in batches.chunks(accumulate).enumerate() {
            let step_start = Instant::now();
            let at = StepPosition {
                epoch,
                step,
                first_batch: gi * accumulate,
            };
            let g = if grouped {
                stepper.grouped(group, at)?
            } else {
                stepper.per_batch(group, at)?
            };
            stepper.check_gradients(&g.gradients, at)?;
            optimizer.step(&g.gradients)?;
            let group_examples: usize = group.iter().map(|b| b.len()).sum();
            examples += group_examples;
            let log = StepLog {
                epoch,
                step,
                loss: g.losses.iter().sum::<f64>() / g.losses.len() as f64,
                seconds: start.elapsed().as_secs_f64(),
                examples_per_second: group_examples as f64
                    / step_start.elapsed().as_secs_f64().max(1e-9),
                examples,
            };
            on_step(&log);
            logs.push(log);
            step += 1;
        }
    }
    Ok(logs)
}
