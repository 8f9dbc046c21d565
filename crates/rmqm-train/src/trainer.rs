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

/// Trains `model` (whose parameters must be trainable) on `data`; calls `on_step` after every
/// optimizer step. Fails on a non-finite loss, naming the epoch and step.
pub fn train(
    model: &Encoder,
    data: &ImageSet,
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<Vec<StepLog>> {
    let method = model.config().method;
    let vars = model.vars().to_vec();
    if vars.is_empty() {
        candle_core::bail!("the model has no trainable parameters");
    }
    let mut optimizer: Box<dyn Optimizer> = match opts.optimizer {
        OptimizerKind::Sgd => Box::new(NesterovSgd::new(vars.clone(), opts.learning_rate, 0.9)),
        OptimizerKind::Adam => Box::new(Adam::new(vars.clone(), opts.learning_rate)),
    };
    let device = rmqm_models::device();
    let aug = Augmentation::for_images(data.channels);
    let (c, h, w) = (data.channels, data.height, data.width);
    let needs_pairs = method != Method::CrossEntropy;
    let start = Instant::now();
    let mut logs = Vec::new();
    let mut step = 0;
    let mut examples = 0;
    for epoch in 0..opts.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            opts.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        let batches: Vec<&[usize]> = order
            .chunks(opts.batch_size)
            .filter(|b| !(needs_pairs && b.len() < 2))
            .collect();
        // Each optimizer step sums the gradients of `accumulate` consecutive batches (fewer at
        // the epoch's end).
        for (gi, group) in batches.chunks(opts.accumulate.max(1)).enumerate() {
            let step_start = Instant::now();
            let first_batch = gi * opts.accumulate.max(1);
            let views = |batch: &[usize], view: u8| -> Result<Tensor> {
                let imgs: Vec<&[f32]> = batch.iter().map(|&i| data.image(i)).collect();
                let ids: Vec<u32> = batch.iter().map(|&i| data.ids[i]).collect();
                Tensor::from_vec(
                    augment_batch(aug, &imgs, &ids, c, h, w, opts.seed, epoch as u64, view),
                    (batch.len(), c, h, w),
                    &device,
                )
            };
            let labels_of = |batch: &[usize]| -> Vec<i64> {
                batch.iter().map(|&i| data.labels[i] as i64).collect()
            };
            // Per batch: its loss and its value (checked finite).
            let mut losses: Vec<Tensor> = Vec::with_capacity(group.len());
            let mut values: Vec<f64> = Vec::with_capacity(group.len());
            let mut check = |loss: Tensor, bi: usize| -> Result<()> {
                let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if !value.is_finite() {
                    candle_core::bail!(
                        "loss became {value} at epoch {epoch}, step {step} (batch {bi})"
                    );
                }
                losses.push(loss);
                values.push(value);
                Ok(())
            };
            let grads_of = |loss: &Tensor| -> Result<Vec<Option<Tensor>>> {
                let grads = loss.backward()?;
                // Detached: a variable's gradient can still reference this batch's forward graph,
                // which would otherwise live on through the optimizer's state.
                Ok(vars
                    .iter()
                    .map(|v| grads.get(v.as_tensor()).map(Tensor::detach))
                    .collect())
            };
            let acc: Vec<Option<Tensor>> = if opts.group_batches && model.per_sample() {
                // One forward over the whole group, the loss of each batch on its own rows, one
                // backward of their sum: the same summed gradient, at a batch size where the
                // kernels keep both cores busy.
                let all: Vec<usize> = group.iter().flat_map(|b| b.iter().copied()).collect();
                let mut offset = 0;
                if method.uses_views() {
                    let first = model.embed(&views(&all, 0)?, true)?;
                    let second = model.embed(&views(&all, 1)?, true)?;
                    for (k, batch) in group.iter().enumerate() {
                        let n = batch.len();
                        let loss = embedding_loss(
                            model,
                            method,
                            &BatchEmbeddings::Views {
                                first: &first.narrow(0, offset, n)?,
                                second: &second.narrow(0, offset, n)?,
                            },
                        )?;
                        check(loss, first_batch + k)?;
                        offset += n;
                    }
                } else {
                    let embeddings = model.embed(&batch_tensor(data, &all, &device)?, true)?;
                    for (k, batch) in group.iter().enumerate() {
                        let n = batch.len();
                        let loss = embedding_loss(
                            model,
                            method,
                            &BatchEmbeddings::Labelled {
                                embeddings: &embeddings.narrow(0, offset, n)?,
                                labels: &labels_of(batch),
                            },
                        )?;
                        check(loss, first_batch + k)?;
                        offset += n;
                    }
                }
                let total = losses
                    .iter()
                    .skip(1)
                    .try_fold(losses[0].clone(), |sum, l| sum + l)?;
                grads_of(&total)?
            } else {
                // Batch statistics (ResNet's batch norm) tie each batch's embeddings to its
                // batch: one forward and backward per batch, gradients summed.
                let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
                for (k, batch) in group.iter().enumerate() {
                    let loss = if method.uses_views() {
                        method_loss(
                            model,
                            method,
                            &BatchInput::Views {
                                first: &views(batch, 0)?,
                                second: &views(batch, 1)?,
                            },
                            true,
                        )?
                    } else {
                        method_loss(
                            model,
                            method,
                            &BatchInput::Labelled {
                                images: &batch_tensor(data, batch, &device)?,
                                labels: &labels_of(batch),
                            },
                            true,
                        )?
                    };
                    check(loss.clone(), first_batch + k)?;
                    for (slot, g) in acc.iter_mut().zip(grads_of(&loss)?) {
                        if let Some(g) = g {
                            *slot = Some(match slot.take() {
                                Some(s) => (s + g)?,
                                None => g,
                            });
                        }
                    }
                }
                acc
            };
            drop(losses);
            // A non-finite gradient would poison the weights silently: stop with a clear error.
            for (g, var) in acc.iter().zip(&vars) {
                if let Some(g) = g {
                    let total = g
                        .sum_all()?
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()?;
                    if !total.is_finite() {
                        candle_core::bail!(
                            "non-finite gradient for a {:?} parameter at epoch {epoch}, step {step}",
                            var.dims()
                        );
                    }
                }
            }
            optimizer.step(&acc)?;
            let group_examples: usize = group.iter().map(|b| b.len()).sum();
            examples += group_examples;
            let secs = step_start.elapsed().as_secs_f64();
            let log = StepLog {
                epoch,
                step,
                loss: values.iter().sum::<f64>() / values.len() as f64,
                seconds: start.elapsed().as_secs_f64(),
                examples_per_second: group_examples as f64 / secs.max(1e-9),
                examples,
            };
            on_step(&log);
            logs.push(log);
            step += 1;
        }
    }
    Ok(logs)
}
