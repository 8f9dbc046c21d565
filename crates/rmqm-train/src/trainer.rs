//! The training loop: seeded shuffling, the method's loss per batch, gradients summed over
//! `accumulate` batches (as `loss.backward()` accumulates in PyTorch), then one optimizer step.

use crate::augment::{Augmentation, augment_batch};
use crate::losses::{BatchInput, method_loss};
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
        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut acc_losses = Vec::new();
        let mut acc_examples = 0;
        let mut step_start = Instant::now();
        for (bi, batch) in batches.iter().enumerate() {
            let loss = if method.uses_views() {
                let imgs: Vec<&[f32]> = batch.iter().map(|&i| data.image(i)).collect();
                let ids: Vec<u32> = batch.iter().map(|&i| data.ids[i]).collect();
                let shape = (batch.len(), c, h, w);
                let v1 = Tensor::from_vec(
                    augment_batch(aug, &imgs, &ids, c, h, w, opts.seed, epoch as u64, 0),
                    shape,
                    &device,
                )?;
                let v2 = Tensor::from_vec(
                    augment_batch(aug, &imgs, &ids, c, h, w, opts.seed, epoch as u64, 1),
                    shape,
                    &device,
                )?;
                method_loss(
                    model,
                    method,
                    &BatchInput::Views {
                        first: &v1,
                        second: &v2,
                    },
                    true,
                )?
            } else {
                let images = batch_tensor(data, batch, &device)?;
                let labels: Vec<i64> = batch.iter().map(|&i| data.labels[i] as i64).collect();
                method_loss(
                    model,
                    method,
                    &BatchInput::Labelled {
                        images: &images,
                        labels: &labels,
                    },
                    true,
                )?
            };
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                candle_core::bail!(
                    "loss became {value} at epoch {epoch}, step {step} (batch {bi})"
                );
            }
            let grads = loss.backward()?;
            for (slot, var) in acc.iter_mut().zip(&vars) {
                // Detached: a variable's gradient can still reference this batch's forward graph,
                // which would otherwise live on through the optimizer's state.
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = g.detach();
                    *slot = Some(match slot.take() {
                        Some(s) => (s + g)?,
                        None => g,
                    });
                }
            }
            acc_losses.push(value);
            acc_examples += batch.len();
            if acc_losses.len() == opts.accumulate || bi + 1 == batches.len() {
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
                acc.iter_mut().for_each(|a| *a = None);
                examples += acc_examples;
                let secs = step_start.elapsed().as_secs_f64();
                let log = StepLog {
                    epoch,
                    step,
                    loss: acc_losses.iter().sum::<f64>() / acc_losses.len() as f64,
                    seconds: start.elapsed().as_secs_f64(),
                    examples_per_second: acc_examples as f64 / secs.max(1e-9),
                    examples,
                };
                on_step(&log);
                logs.push(log);
                step += 1;
                acc_losses.clear();
                acc_examples = 0;
                step_start = Instant::now();
            }
        }
    }
    Ok(logs)
}
