//! Every custom op against the plain candle op (forward) and finite differences (backward), on odd
//! shapes too; and every model's parameter and input gradients against finite differences in f64.

use candle_core::{DType, Device, Tensor, Var};
use rmqm_models::testing::check_gradients;
use rmqm_models::*;

fn rand_tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn conv_forward_matches_candle_on_odd_shapes() {
    for (i, &(n, c_in, h, w, c_out, k, stride, pad)) in [
        (2, 1, 28, 28, 6, 5, 1, 0),
        (3, 3, 9, 7, 5, 3, 2, 1),
        (1, 4, 6, 6, 2, 1, 2, 0),
        (2, 2, 5, 8, 3, 3, 1, 2),
        (4, 6, 12, 12, 16, 5, 1, 0),
        (1, 2, 7, 9, 3, 3, 2, 2),
        (2, 1, 4, 5, 2, 3, 3, 2),
        (1, 3, 3, 3, 2, 3, 1, 3),
    ]
    .iter()
    .enumerate()
    {
        let x = rand_tensor(&[n, c_in, h, w], i as u64, DType::F32);
        let wt = rand_tensor(&[c_out, c_in, k, k], 100 + i as u64, DType::F32);
        let b = rand_tensor(&[c_out], 200 + i as u64, DType::F32);
        let ours = ops::conv2d(&x, &wt, Some(&b), stride, pad, false).unwrap();
        let theirs = x
            .conv2d(&wt, pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, c_out, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_abs_diff(&ours, &theirs) < 1e-4, "case {i}");
        let ours_relu = ops::conv2d(&x, &wt, Some(&b), stride, pad, true).unwrap();
        assert!(max_abs_diff(&ours_relu, &theirs.relu().unwrap()) < 1e-4);
    }
}

#[test]
fn pool_and_linear_forward_match_candle() {
    let x = rand_tensor(&[3, 5, 9, 6], 1, DType::F32);
    let ours = ops::max_pool2x2(&x).unwrap();
    let theirs = x.max_pool2d(2).unwrap();
    assert_eq!(ours.dims(), &[3, 5, 4, 3]);
    assert!(max_abs_diff(&ours, &theirs) == 0.0);
    let x = rand_tensor(&[7, 13], 2, DType::F32);
    let w = rand_tensor(&[5, 13], 3, DType::F32);
    let b = rand_tensor(&[5], 4, DType::F32);
    let ours = ops::linear(&x, &w, Some(&b), true).unwrap();
    let theirs = x
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .relu()
        .unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-5);
}

/// Loss = sum(op(...) * r) for a fixed random r: its gradient is the op's backward applied to r.
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = rand_tensor(y.dims(), seed, DType::F64);
    (y * r).unwrap().sum_all().unwrap()
}

#[test]
fn conv_backward_matches_finite_differences() {
    for (i, &(n, c_in, h, w, c_out, k, stride, pad, relu)) in [
        (2, 2, 7, 6, 3, 3, 1, 1, false),
        (2, 3, 9, 7, 2, 3, 2, 0, true),
        (1, 2, 5, 5, 4, 1, 2, 0, false),
        (2, 1, 8, 8, 3, 5, 1, 2, true),
        (1, 2, 7, 9, 2, 3, 2, 2, false),
        (2, 1, 4, 5, 2, 3, 3, 2, false),
    ]
    .iter()
    .enumerate()
    {
        let x =
            Var::from_tensor(&rand_tensor(&[n, c_in, h, w], 10 + i as u64, DType::F64)).unwrap();
        let wt = Var::from_tensor(&rand_tensor(
            &[c_out, c_in, k, k],
            20 + i as u64,
            DType::F64,
        ))
        .unwrap();
        let b = Var::from_tensor(&rand_tensor(&[c_out], 30 + i as u64, DType::F64)).unwrap();
        let loss = || {
            Ok(weighted_sum(
                &ops::conv2d(
                    x.as_tensor(),
                    wt.as_tensor(),
                    Some(b.as_tensor()),
                    stride,
                    pad,
                    relu,
                )?,
                99,
            ))
        };
        let r = check_gradients(
            &[x.clone(), wt.clone(), b.clone()],
            &loss,
            40,
            1e-6,
            1e-8,
            1,
        )
        .unwrap();
        assert!(r.max_relative_error < 1e-6, "case {i}: {r:?}");
    }
}

#[test]
fn pool_backward_matches_finite_differences_not_scaled() {
    // candle 0.11.1's max_pool2d backward scales the gradient by 1/(k*k); ours must not.
    // even and odd sides (the backward writes every input position, uncovered ones as 0)
    for (shape, outputs) in [
        ([2, 3, 6, 5], 2 * 3 * 3 * 2),
        ([1, 2, 7, 5], 2 * 3 * 2),
        ([1, 1, 1, 4], 0),
    ] {
        let x = Var::from_tensor(&rand_tensor(&shape, 5, DType::F64)).unwrap();
        let loss = || weighted_sum(&ops::max_pool2x2(x.as_tensor())?, 6).sum_all();
        let r = check_gradients(std::slice::from_ref(&x), &loss, 1000, 1e-6, 1e-8, 2).unwrap();
        assert!(r.max_relative_error < 1e-6, "{shape:?}: {r:?}");
        let count = || ops::max_pool2x2(x.as_tensor())?.sum_all();
        let g = count().unwrap().backward().unwrap();
        let dx = g.get(x.as_tensor()).unwrap();
        assert_eq!(dx.dims(), &shape);
        let values: Vec<f64> = dx.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|&v| v == 0.0 || v == 1.0), "{shape:?}");
        assert_eq!(
            values.iter().sum::<f64>(),
            outputs as f64,
            "one unit of gradient per pooled output"
        );
    }
}

#[test]
fn linear_backward_matches_finite_differences_and_skips_frozen_args() {
    let x = Var::from_tensor(&rand_tensor(&[6, 5], 7, DType::F64)).unwrap();
    let w = Var::from_tensor(&rand_tensor(&[4, 5], 8, DType::F64)).unwrap();
    let b = Var::from_tensor(&rand_tensor(&[4], 9, DType::F64)).unwrap();
    for relu in [false, true] {
        let loss = || {
            Ok(weighted_sum(
                &ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), relu)?,
                3,
            ))
        };
        let r = check_gradients(
            &[x.clone(), w.clone(), b.clone()],
            &loss,
            100,
            1e-6,
            1e-8,
            3,
        )
        .unwrap();
        assert!(r.max_relative_error < 1e-6, "{r:?}");
    }
    // A frozen weight gets no gradient (PGD needs only the input gradient).
    let frozen_w = rand_tensor(&[4, 5], 8, DType::F64);
    let g = weighted_sum(
        &ops::linear(x.as_tensor(), &frozen_w, None, false).unwrap(),
        3,
    )
    .backward()
    .unwrap();
    assert!(g.get(&frozen_w).is_none());
    assert!(g.get(x.as_tensor()).is_some());
}

#[test]
fn batch_norm_ops_match_candle_and_finite_differences() {
    use rmqm_models::ParamStore;
    use rmqm_models::layers::BatchNorm2d;
    let x = Var::from_tensor(&rand_tensor(&[3, 4, 5, 3], 21, DType::F64)).unwrap();
    let gamma = Var::from_tensor(&(rand_tensor(&[4], 22, DType::F64) + 1.5).unwrap()).unwrap();
    let beta = Var::from_tensor(&rand_tensor(&[4], 23, DType::F64)).unwrap();
    // Forward against the same normalisation on candle's ops, in both modes.
    let mut store = ParamStore::init(0, DType::F64, &Device::Cpu, false);
    let bn = BatchNorm2d::new(&mut store, "bn", 4).unwrap();
    for train in [true, false] {
        let ours = bn.forward(x.as_tensor(), train).unwrap();
        let theirs = bn.forward_candle_ops(x.as_tensor(), train).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-12, "train {train}");
    }
    // With ReLU fused, against the layer followed by candle's ReLU.
    for train in [true, false] {
        let ours = bn.forward_relu(x.as_tensor(), train).unwrap();
        let theirs = bn
            .forward_candle_ops(x.as_tensor(), train)
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-12, "relu, train {train}");
    }
    // Backward of the fused training op and of the per-channel affine, with and without ReLU, by
    // finite differences.
    for relu in [false, true] {
        let loss = || {
            Ok(weighted_sum(
                &ops::batch_norm_train(
                    x.as_tensor(),
                    gamma.as_tensor(),
                    beta.as_tensor(),
                    1e-5,
                    relu,
                )?
                .0,
                31,
            ))
        };
        let r = check_gradients(
            &[x.clone(), gamma.clone(), beta.clone()],
            &loss,
            200,
            1e-6,
            1e-8,
            4,
        )
        .unwrap();
        assert!(r.max_relative_error < 1e-6, "relu {relu}: {r:?}");
        let loss = || {
            Ok(weighted_sum(
                &ops::channel_affine(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), relu)?,
                32,
            ))
        };
        let r = check_gradients(
            &[x.clone(), gamma.clone(), beta.clone()],
            &loss,
            200,
            1e-6,
            1e-8,
            5,
        )
        .unwrap();
        assert!(r.max_relative_error < 1e-6, "relu {relu}: {r:?}");
    }
    // The statistics the op reports are the batch's.
    let (_, state) = ops::batch_norm_train(
        x.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        1e-5,
        true,
    )
    .unwrap();
    let mean = x
        .as_tensor()
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let mean: Vec<f64> = mean.flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in state.mean.iter().zip(&mean) {
        assert!((a - b).abs() < 1e-12);
    }
}

fn config(arch: Arch, method: Method, channels: usize, side: usize, dim: usize) -> ModelConfig {
    ModelConfig {
        model_id: "test".into(),
        arch,
        method,
        dim,
        optimizer: OptimizerKind::Adam,
        dataset: "test".into(),
        epochs: 0,
        seed: 3,
        channels,
        height: side,
        width: side,
        mean: vec![0.5; channels],
        std: vec![0.25; channels],
        classes: 4,
        batch_size: 4,
        accumulate: 1,
        learning_rate: 1e-3,
        temperature: 0.07,
        margin: 0.5,
    }
}

/// Checks parameter and input gradients of `sum(embedding * r) + sum(logits * r2)` for a model.
/// Entries smaller than `floor` are judged by their absolute error, `1e-4 * floor`.
fn check_model(cfg: ModelConfig, n: usize, samples: usize, floor: f64) {
    let model = Encoder::init(cfg.clone(), DType::F64, &Device::Cpu, true).unwrap();
    let x = Var::from_tensor(
        &((rand_tensor(&[n, cfg.channels, cfg.height, cfg.width], 60, DType::F64) + 1.0).unwrap()
            * 0.5)
            .unwrap(),
    )
    .unwrap();
    let loss = || {
        let e = model.embed(x.as_tensor(), true)?;
        let mut l = weighted_sum(&e, 51);
        if let Some(logits) = model.logits(&e)? {
            l = (l + weighted_sum(&logits, 52))?;
        }
        Ok(l)
    };
    let mut vars: Vec<Var> = model.vars().to_vec();
    vars.push(x.clone());
    // ReLU and max pooling make the loss piecewise smooth: a fixed input keeps every probe away
    // from a kink (a kink within h of the point shows as a large error, not a small one).
    let r = check_gradients(&vars, &loss, samples, 1e-6, floor, 7).unwrap();
    assert!(
        r.max_relative_error < 1e-4,
        "{:?} {:?}: {r:?}",
        cfg.arch,
        cfg.method
    );
}

#[test]
fn lenet_gradients_match_finite_differences() {
    check_model(
        config(Arch::Lenet5, Method::CrossEntropy, 1, 28, 8),
        3,
        12,
        1e-5,
    );
    check_model(
        config(Arch::Lenet5Classic, Method::Ntxent, 1, 28, 8),
        2,
        12,
        1e-5,
    );
}

#[test]
fn resnet_gradients_match_finite_differences_at_a_tiny_size() {
    // Central differences through 18 layers resolve a gradient entry only to about 1e-8 (f64
    // round-off of the loss, divided by h): an entry of -7.03e-8 (analytic) came out as -7.22e-8
    // at h = 1e-6 and -6.22e-8 at h = 5e-7. On an Intel Xeon (family 6, model 207) an entry whose
    // analytic gradient is exactly 0 (an off-centre tap of a layer4 3x3 kernel: on the 1x1 maps of
    // an 8x8 image it only multiplies padding, and the Winograd transforms cancel it only up to
    // rounding) came out as -1.04e-8, the largest absolute error of the 15 entries below 1e-4;
    // the 123 larger entries agreed to a relative 4.7e-5 or better. A larger h does not help: at
    // 2e-6 probes already cross ReLU and max-pooling kinks (relative errors of 4%). So entries
    // below 5e-4 are judged by an absolute error of 5e-8, larger ones by a relative error of 1e-4
    // as everywhere.
    check_model(
        config(Arch::Resnet18, Method::TripletEntropy, 3, 8, 6),
        2,
        2,
        5e-4,
    );
}

#[test]
fn frozen_models_read_dense_weights_by_columns_to_the_same_embeddings() {
    // A frozen model's dense layers read a column-major copy of their weights; a trainable one
    // the weights themselves. Same seed, same images: the same embeddings and head logits, bit for
    // bit, in passes of the row-invariant rows or more (LeNet-5 at a narrow and a wide dim, and
    // ResNet-18's MLP).
    for cfg in [
        config(Arch::Lenet5, Method::CrossEntropy, 1, 28, 16),
        config(Arch::Lenet5, Method::CrossEntropy, 1, 28, 128),
        config(Arch::Resnet18, Method::CrossEntropy, 3, 8, 8),
    ] {
        let frozen = Encoder::init(cfg.clone(), DType::F32, &Device::Cpu, false).unwrap();
        let trainable = Encoder::init(cfg.clone(), DType::F32, &Device::Cpu, true).unwrap();
        let n = frozen.row_invariant_rows() + 3;
        let shape = [n, cfg.channels, cfg.height, cfg.width];
        let x = ((rand_tensor(&shape, 6, DType::F32) + 1.0).unwrap() * 0.5).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let (a, b) = (
            frozen.embed(&x, false).unwrap(),
            trainable.embed(&x, false).unwrap(),
        );
        assert_eq!(bits(&a), bits(&b), "{} dim {}", cfg.arch, cfg.dim);
        let logits = |m: &Encoder, e: &Tensor| m.logits(e).unwrap().unwrap();
        assert_eq!(bits(&logits(&frozen, &a)), bits(&logits(&trainable, &b)));
    }
}

#[test]
fn saved_models_reload_to_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        config(Arch::Lenet5, Method::CrossEntropy, 1, 28, 16),
        config(Arch::Resnet18, Method::Ntxent, 3, 8, 8),
    ] {
        let model = Encoder::init(cfg.clone(), DType::F32, &Device::Cpu, true).unwrap();
        let x = ((rand_tensor(&[3, cfg.channels, cfg.height, cfg.width], 1, DType::F32) + 1.0)
            .unwrap()
            * 0.5)
            .unwrap();
        // A training-mode pass moves the batch-norm running statistics, so they must be saved too.
        model.embed(&x, true).unwrap();
        let path = dir.path().join(format!("{}.safetensors", cfg.arch));
        model.save(&path).unwrap();
        let back = Encoder::load(&path, DType::F32, &Device::Cpu, false).unwrap();
        assert_eq!(back.config(), model.config());
        let a = model.embed(&x, false).unwrap();
        let b = back.embed(&x, false).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        assert!(back.vars().is_empty());
    }
    // A file that is not a model names itself.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"nope").unwrap();
    let e = Encoder::load(&junk, DType::F32, &Device::Cpu, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
}

#[test]
fn resnet_files_count_batches_like_pytorch_and_old_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Arch::Resnet18, Method::Ntxent, 3, 8, 8);
    let model = Encoder::init(cfg.clone(), DType::F32, &Device::Cpu, true).unwrap();
    let x = ((rand_tensor(&[2, 3, 8, 8], 1, DType::F32) + 1.0).unwrap() * 0.5).unwrap();
    for _ in 0..3 {
        model.embed(&x, true).unwrap();
    }
    model.embed(&x, false).unwrap();
    let path = dir.path().join("resnet.safetensors");
    model.save(&path).unwrap();
    // Every batch norm saves PyTorch's int64 scalar num_batches_tracked: here 3 training passes.
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let counters: Vec<(&String, &Tensor)> = saved
        .iter()
        .filter(|(n, _)| n.ends_with(".num_batches_tracked"))
        .collect();
    let running = saved
        .keys()
        .filter(|n| n.ends_with(".running_mean"))
        .count();
    assert_eq!(counters.len(), running);
    for (name, t) in &counters {
        assert_eq!((t.dtype(), t.dims()), (DType::I64, &[][..]), "{name}");
        assert_eq!(t.to_scalar::<i64>().unwrap(), 3, "{name}");
    }
    // Loaded models count on from the saved value.
    let back = Encoder::load(&path, DType::F32, &Device::Cpu, true).unwrap();
    back.embed(&x, true).unwrap();
    let again = dir.path().join("again.safetensors");
    back.save(&again).unwrap();
    let t = &candle_core::safetensors::load(&again, &Device::Cpu).unwrap()["encoder.stem.bn.num_batches_tracked"];
    assert_eq!(t.to_scalar::<i64>().unwrap(), 4);
    // A file written before the counters were saved loads, with the same embeddings.
    let old: Vec<(String, Tensor)> = saved
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".num_batches_tracked"))
        .collect();
    let old_path = dir.path().join("old.safetensors");
    safetensors::tensor::serialize_to_file(
        old.iter().map(|(n, t)| (n.as_str(), t)),
        Some(cfg.to_metadata()),
        &old_path,
    )
    .unwrap();
    let old_model = Encoder::load(&old_path, DType::F32, &Device::Cpu, false).unwrap();
    let (a, b) = (
        model.embed(&x, false).unwrap(),
        old_model.embed(&x, false).unwrap(),
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// One fused-op case: (n, c_in, h, w, c_out, k, stride, padding, bias shift).
type ConvPoolCase = (usize, usize, usize, usize, usize, usize, usize, usize, f64);

/// Cases with odd convolution outputs (a row and a
/// column no window covers), stride 2, padding, and a negative bias that zeroes most windows.
const CONV_POOL_CASES: &[ConvPoolCase] = &[
    (2, 1, 12, 12, 3, 5, 1, 2, 0.0),
    (3, 2, 9, 8, 4, 3, 1, 0, 0.0),
    (2, 3, 11, 9, 2, 3, 2, 1, 0.0),
    (2, 2, 7, 7, 3, 3, 1, 1, -0.8),
];

fn conv_pool_inputs(i: usize, dtype: DType) -> (Tensor, Tensor, Tensor, usize, usize) {
    let (n, c_in, h, w, c_out, k, stride, pad, shift) = CONV_POOL_CASES[i];
    let x = rand_tensor(&[n, c_in, h, w], 300 + i as u64, dtype);
    let wt = rand_tensor(&[c_out, c_in, k, k], 310 + i as u64, dtype);
    let b = rand_tensor(&[c_out], 320 + i as u64, dtype)
        .affine(0.1, shift)
        .unwrap();
    (x, wt, b, stride, pad)
}

#[test]
fn fused_conv_relu_pool_forward_equals_the_unfused_ops() {
    for i in 0..CONV_POOL_CASES.len() {
        let (x, wt, b, stride, pad) = conv_pool_inputs(i, DType::F32);
        let fused = ops::conv2d_relu_pool(&x, &wt, &b, stride, pad).unwrap();
        let unfused =
            ops::max_pool2x2(&ops::conv2d(&x, &wt, Some(&b), stride, pad, true).unwrap()).unwrap();
        let candle = x
            .conv2d(&wt, pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap()
            .max_pool2d(2)
            .unwrap();
        assert_eq!(fused.dims(), unfused.dims(), "case {i}");
        assert_eq!(max_abs_diff(&fused, &unfused), 0.0, "case {i}");
        assert!(max_abs_diff(&fused, &candle) < 1e-5, "case {i}");
    }
}

/// The convolutions of lenet5 (1 -> 6 channels at 28 x 28; 6 -> 16 at 12 x 12) and of
/// lenet5-classic (padding 2 on the first; 6 -> 16 at 14 x 14), through both direct kernels
/// (output positions in lanes for 6 channels, output channels in lanes for 16, in runs of 8 and
/// of 10 positions, summing up to 150 taps), and one with two blocks of channel lanes, the
/// second partly filled (3 -> 30 with padding 1): bit for bit the unfused im2col + gemm.
#[test]
fn fused_conv_relu_pool_forward_equals_the_unfused_ops_at_lenet_sizes() {
    let cases = [
        (1, 28, 6, 0),
        (6, 12, 16, 0),
        (1, 28, 6, 2),
        (6, 14, 16, 0),
        (3, 23, 30, 1),
    ];
    for (i, (c_in, hw, c_out, pad)) in cases.into_iter().enumerate() {
        let x = rand_tensor(&[5, c_in, hw, hw], 400 + i as u64, DType::F32);
        let wt = rand_tensor(&[c_out, c_in, 5, 5], 410 + i as u64, DType::F32);
        let b = rand_tensor(&[c_out], 420 + i as u64, DType::F32);
        let fused = ops::conv2d_relu_pool(&x, &wt, &b, 1, pad).unwrap();
        let unfused =
            ops::max_pool2x2(&ops::conv2d(&x, &wt, Some(&b), 1, pad, true).unwrap()).unwrap();
        assert_eq!(fused.dims(), unfused.dims(), "case {i}");
        assert_eq!(max_abs_diff(&fused, &unfused), 0.0, "case {i}");
    }
}

#[test]
fn fused_conv_relu_pool_gradients_equal_the_unfused_ops_and_finite_differences() {
    for i in 0..CONV_POOL_CASES.len() {
        let (x, wt, b, stride, pad) = conv_pool_inputs(i, DType::F64);
        let (x, wt, b) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&wt).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let fused = || {
            Ok(weighted_sum(
                &ops::conv2d_relu_pool(x.as_tensor(), wt.as_tensor(), b.as_tensor(), stride, pad)?,
                77,
            ))
        };
        let unfused = || -> candle_core::Result<Tensor> {
            Ok(weighted_sum(
                &ops::max_pool2x2(&ops::conv2d(
                    x.as_tensor(),
                    wt.as_tensor(),
                    Some(b.as_tensor()),
                    stride,
                    pad,
                    true,
                )?)?,
                77,
            ))
        };
        let (gf, gu) = (
            fused().unwrap().backward().unwrap(),
            unfused().unwrap().backward().unwrap(),
        );
        for v in [&x, &wt, &b] {
            let (a, e) = (
                gf.get(v.as_tensor()).unwrap(),
                gu.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), e.dims(), "case {i}");
            assert!(max_abs_diff(a, e) < 1e-12, "case {i}");
        }
        let r = check_gradients(
            &[x.clone(), wt.clone(), b.clone()],
            &fused,
            60,
            1e-6,
            1e-8,
            3,
        )
        .unwrap();
        assert!(r.max_relative_error < 1e-5, "case {i}: {r:?}");
    }
}

/// In f32 at LeNet's sizes (outputs of 24 x 24 and 8 x 8: every pooling window whole, so the
/// backward rewrites each image's reused gradient plane instead of zeroing it, four windows at a
/// time where AVX2 is there), seven images: the fused op's gradients equal the unfused ops' up to
/// f32 rounding (a gradient left at a stale or wrong position would be off by its own size).
#[test]
fn fused_conv_relu_pool_gradients_in_f32_at_lenet_sizes_equal_the_unfused_ops() {
    for (i, (c_in, hw, c_out)) in [(1, 28, 6), (6, 12, 16)].into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let x = Var::from_tensor(&rand_tensor(&[7, c_in, hw, hw], seed, DType::F32)).unwrap();
        let wt =
            Var::from_tensor(&rand_tensor(&[c_out, c_in, 5, 5], seed + 1, DType::F32)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[c_out], seed + 2, DType::F32)).unwrap();
        let weigh = |y: Tensor| {
            let r = rand_tensor(y.dims(), seed + 3, DType::F32);
            (y * r).unwrap().sum_all().unwrap()
        };
        let fused = weigh(
            ops::conv2d_relu_pool(x.as_tensor(), wt.as_tensor(), b.as_tensor(), 1, 0).unwrap(),
        );
        let unfused = weigh(
            ops::max_pool2x2(
                &ops::conv2d(
                    x.as_tensor(),
                    wt.as_tensor(),
                    Some(b.as_tensor()),
                    1,
                    0,
                    true,
                )
                .unwrap(),
            )
            .unwrap(),
        );
        let (gf, gu) = (fused.backward().unwrap(), unfused.backward().unwrap());
        for v in [&x, &wt, &b] {
            let (a, e) = (
                gf.get(v.as_tensor()).unwrap(),
                gu.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), e.dims(), "case {i}");
            let scale = e
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!(scale > 0.0, "case {i}: a zero gradient tests nothing");
            assert!(
                max_abs_diff(a, e) <= 1e-5 * scale,
                "case {i}: {} against {scale}",
                max_abs_diff(a, e)
            );
        }
    }
}

#[test]
fn fused_conv_relu_pool_computes_only_the_gradients_asked_for() {
    let (x, wt, b, stride, pad) = conv_pool_inputs(0, DType::F64);
    // PGD: only the image
    let xv = Var::from_tensor(&x).unwrap();
    let y = ops::conv2d_relu_pool(xv.as_tensor(), &wt, &b, stride, pad).unwrap();
    let g = weighted_sum(&y, 5).backward().unwrap();
    let dx = g.get(xv.as_tensor()).unwrap();
    assert_eq!(dx.dims(), x.dims());
    let reference = {
        let y = ops::max_pool2x2(
            &ops::conv2d(xv.as_tensor(), &wt, Some(&b), stride, pad, true).unwrap(),
        )
        .unwrap();
        weighted_sum(&y, 5).backward().unwrap()
    };
    assert!(max_abs_diff(dx, reference.get(xv.as_tensor()).unwrap()) < 1e-12);
    // training: only the parameters
    let (wv, bv) = (
        Var::from_tensor(&wt).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = ops::conv2d_relu_pool(&x, wv.as_tensor(), bv.as_tensor(), stride, pad).unwrap();
    let g = weighted_sum(&y, 5).backward().unwrap();
    assert!(g.get(&x).is_none());
    assert_eq!(g.get(wv.as_tensor()).unwrap().dims(), wt.dims());
    assert_eq!(g.get(bv.as_tensor()).unwrap().dims(), b.dims());
}

#[test]
fn add_relu_matches_candle_and_finite_differences() {
    let a = Var::from_tensor(&rand_tensor(&[2, 3, 4, 5], 41, DType::F64)).unwrap();
    let b = Var::from_tensor(&rand_tensor(&[2, 3, 4, 5], 42, DType::F64)).unwrap();
    let ours = ops::add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    assert_eq!(max_abs_diff(&ours, &theirs), 0.0);
    let loss = || {
        Ok(weighted_sum(
            &ops::add_relu(a.as_tensor(), b.as_tensor())?,
            43,
        ))
    };
    let r = check_gradients(&[a.clone(), b.clone()], &loss, 200, 1e-6, 1e-8, 6).unwrap();
    assert!(r.max_relative_error < 1e-6, "{r:?}");
    // only the argument that tracks gets a gradient
    let g = weighted_sum(
        &ops::add_relu(a.as_tensor(), &b.as_tensor().detach()).unwrap(),
        43,
    )
    .backward()
    .unwrap();
    assert!(g.get(a.as_tensor()).is_some());
}

#[test]
fn padded_passes_embed_each_image_as_a_full_pass_does() {
    // LeNet-5 at the dims where its last product is narrow (2: 129 rows needed, 16: 17) and where
    // it is not (128): padded passes of one image and of 7 give the embeddings of one pass of
    // 200, bit for bit.
    let (n, size) = (200, 28 * 28);
    for dim in [2, 16, 128] {
        let cfg = config(Arch::Lenet5, Method::CrossEntropy, 1, 28, dim);
        let model = Encoder::init(cfg, DType::F32, &Device::Cpu, false).unwrap();
        assert!(model.row_invariant_rows() <= n);
        let x = ((rand_tensor(&[n, 1, 28, 28], 5, DType::F32) + 1.0).unwrap() * 0.5).unwrap();
        let pixels: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let whole = model.embed_pixels(&pixels, n, n).unwrap();
        assert_eq!(whole.len(), n * dim);
        assert_eq!(model.embed_pixels_padded(&pixels, n).unwrap(), whole);
        for (batch, images) in [(1, 10), (7, n)] {
            let parts: Vec<f32> = pixels[..images * size]
                .chunks(batch * size)
                .flat_map(|c| model.embed_pixels_padded(c, c.len() / size).unwrap())
                .collect();
            assert!(
                parts == whole[..images * dim],
                "dim {dim}: padded passes of {batch} differ from one of {n}"
            );
        }
    }
}
