//! Training on tiny synthetic data: every method's loss decreases with both optimizers and stays
//! finite, and every method's loss has gradients that match finite differences in f64.

use candle_core::{DType, Device, Tensor, Var};
use rmqm_data::ImageSet;
use rmqm_models::testing::check_gradients;
use rmqm_models::*;
use rmqm_train::*;

/// Four classes: a bright 8x8 square in one of four quadrants, plus seeded speckle.
fn synthetic(n: usize, seed: u64) -> ImageSet {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::new();
    for i in 0..n {
        let class = (i % 4) as i32;
        let (oy, ox) = [(3, 3), (3, 16), (16, 3), (16, 16)][class as usize];
        for y in 0..28 {
            for x in 0..28 {
                let inside = y >= oy && y < oy + 9 && x >= ox && x < ox + 9;
                let v: f32 = if inside { 0.9 } else { 0.0 } + rng.random::<f32>() * 0.2;
                pixels.push(v.min(1.0));
            }
        }
        labels.push(class);
    }
    ImageSet {
        dataset: "toy".into(),
        split: "train".into(),
        channels: 1,
        height: 28,
        width: 28,
        pixels,
        labels,
        ids: (0..n as u32).collect(),
        class_names: vec![],
    }
}

fn config(method: Method, optimizer: OptimizerKind, seed: u64) -> ModelConfig {
    ModelConfig {
        model_id: format!("{method}"),
        arch: Arch::Lenet5,
        method,
        dim: 16,
        optimizer,
        dataset: "toy".into(),
        epochs: 0,
        seed,
        channels: 1,
        height: 28,
        width: 28,
        mean: vec![0.2],
        std: vec![0.3],
        classes: 4,
        batch_size: 16,
        accumulate: 1,
        learning_rate: 1e-3,
        temperature: 0.5,
        margin: 0.5,
    }
}

#[test]
fn every_method_and_optimizer_lowers_its_loss() {
    let data = synthetic(96, 1);
    for &method in Method::ALL {
        for optimizer in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let cfg = config(method, optimizer, 5);
            let model = Encoder::init(cfg, DType::F32, &Device::Cpu, true).unwrap();
            // SGD at the paper's lr 1e-3 barely moves in 8 tiny epochs; larger steps show the trend
            // (NT-Xent at 0.02 overshoots into collapse on this toy set, so it gets 0.01).
            let lr = match (optimizer, method) {
                (OptimizerKind::Adam, _) => 1e-3,
                (_, Method::Ntxent) => 0.01,
                _ => 0.02,
            };
            let opts = TrainOptions {
                epochs: 8,
                batch_size: 16,
                accumulate: 1,
                seed: 2,
                optimizer,
                learning_rate: lr,
                group_batches: true,
            };
            // The semihard losses average over a shrinking set of triplets, so progress is judged by
            // the batch-all triplet loss on the whole set; the others by their own loss per epoch.
            let monitor = |model: &Encoder| -> f64 {
                let all: Vec<usize> = (0..data.len()).collect();
                let x = batch_tensor(&data, &all, &Device::Cpu).unwrap();
                let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
                batch_all_triplet(&model.embed(&x, false).unwrap(), &labels, 0.5).unwrap()
            };
            let before = monitor(&model);
            let logs = train(&model, &data, &opts, &mut |_| {}).unwrap();
            assert!(logs.iter().all(|l| l.loss.is_finite()));
            if matches!(method, Method::TripletSupervised | Method::TripletSs) {
                let after = monitor(&model);
                assert!(
                    after < 0.9 * before,
                    "{method} {optimizer}: batch-all triplet {before} -> {after}"
                );
            } else {
                let per_epoch: Vec<f64> = (0..8)
                    .map(|e| {
                        let l: Vec<f64> = logs
                            .iter()
                            .filter(|l| l.epoch == e)
                            .map(|l| l.loss)
                            .collect();
                        l.iter().sum::<f64>() / l.len() as f64
                    })
                    .collect();
                assert!(
                    per_epoch[7] < 0.9 * per_epoch[0],
                    "{method} {optimizer}: {per_epoch:?}"
                );
            }
        }
    }
}

#[test]
fn gradient_accumulation_sums_batches_into_one_step() {
    let data = synthetic(64, 3);
    let model = Encoder::init(
        config(Method::CrossEntropy, OptimizerKind::Adam, 1),
        DType::F32,
        &Device::Cpu,
        true,
    )
    .unwrap();
    let opts = TrainOptions {
        epochs: 1,
        batch_size: 8,
        accumulate: 4,
        seed: 0,
        optimizer: OptimizerKind::Adam,
        learning_rate: 1e-3,
        group_batches: true,
    };
    let logs = train(&model, &data, &opts, &mut |_| {}).unwrap();
    assert_eq!(logs.len(), 2, "8 batches / 4 per step");
    assert_eq!(logs[1].examples, 64);
}

#[test]
fn every_loss_matches_finite_differences_in_f64() {
    let data = synthetic(8, 4);
    let device = Device::Cpu;
    let images = Tensor::from_vec(data.pixels.clone(), (8, 1, 28, 28), &device)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
    let aug = Augmentation::for_images(1);
    let imgs: Vec<&[f32]> = (0..8).map(|i| data.image(i)).collect();
    let v1 = Tensor::from_vec(
        augment_batch(aug, &imgs, &data.ids, 1, 28, 28, 0, 0, 0),
        (8, 1, 28, 28),
        &device,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    let v2 = Tensor::from_vec(
        augment_batch(aug, &imgs, &data.ids, 1, 28, 28, 0, 0, 1),
        (8, 1, 28, 28),
        &device,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    for &method in Method::ALL {
        let mut cfg = config(method, OptimizerKind::Adam, 11);
        cfg.dim = 6;
        // A wide margin keeps many triplets semihard, so the triplet terms are exercised.
        cfg.margin = 1.5;
        let model = Encoder::init(cfg, DType::F64, &device, true).unwrap();
        let x = Var::from_tensor(&images).unwrap();
        let loss = || {
            let input = if method.uses_views() {
                BatchInput::Views {
                    first: &v1,
                    second: &v2,
                }
            } else {
                BatchInput::Labelled {
                    images: x.as_tensor(),
                    labels: &labels,
                }
            };
            method_loss(&model, method, &input, true)
        };
        let value = loss().unwrap().to_scalar::<f64>().unwrap();
        assert!(value > 0.0, "{method}: loss {value}");
        let mut vars = model.vars().to_vec();
        if !method.uses_views() {
            vars.push(x.clone());
        }
        let r = check_gradients(&vars, &loss, 6, 1e-6, 1e-5, 13).unwrap();
        assert!(r.max_relative_error < 1e-4, "{method}: {r:?}");
    }
}

#[test]
fn grouped_batches_give_the_per_batch_updates_for_every_method() {
    // 28 images in batches of 8 (the last of 4), 3 batches per step: steps of 24 and 4 images.
    // (Over many steps f32 rounding differences grow through the triplet mining, so one epoch.)
    let data = synthetic(28, 7);
    for &method in Method::ALL {
        let run = |group_batches: bool| {
            let cfg = config(method, OptimizerKind::Sgd, 11);
            let model = Encoder::init(cfg, DType::F32, &Device::Cpu, true).unwrap();
            let opts = TrainOptions {
                epochs: 1,
                batch_size: 8,
                accumulate: 3,
                seed: 3,
                optimizer: OptimizerKind::Sgd,
                learning_rate: 0.05,
                group_batches,
            };
            let logs = train(&model, &data, &opts, &mut |_| {}).unwrap();
            let init = Encoder::init(
                config(method, OptimizerKind::Sgd, 11),
                DType::F32,
                &Device::Cpu,
                true,
            )
            .unwrap();
            let moves: Vec<Vec<f32>> = model
                .vars()
                .iter()
                .zip(init.vars())
                .map(|(v, v0)| {
                    (v.as_tensor() - v0.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect();
            (logs, moves)
        };
        let (grouped_logs, grouped) = run(true);
        let (single_logs, single) = run(false);
        assert_eq!(grouped_logs.len(), 2, "{method}");
        for (a, b) in grouped_logs.iter().zip(&single_logs) {
            assert_eq!(a.examples, b.examples, "{method}");
            assert!(
                (a.loss - b.loss).abs() < 1e-5 * b.loss.abs().max(1.0),
                "{method}: {a:?} {b:?}"
            );
        }
        // the parameters moved, and by the same amounts
        let largest = single.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            largest > 1e-3,
            "{method}: training did not move the parameters"
        );
        for (a, b) in grouped.iter().zip(&single) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-4 * largest, "{method}: moved {x} vs {y}");
            }
        }
    }
}
