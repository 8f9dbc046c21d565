//! The benchmarks. Model benchmarks time our custom ops and candle's default ops on the same model
//! (the reference column); stream benchmarks run at the paper's workload sizes.

use crate::Measure;
use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rmqm_artifacts::{
    Input, Output, Provenance, VectorBatchBuilder, VectorKind, VectorReader, VectorWriter, keys,
};
use rmqm_models::{Arch, Encoder, Method, ModelConfig, OptimizerKind, dataset_normalisation, ops};
use rmqm_train::{Adam, Augmentation, BatchInput, Optimizer, augment_batch, method_loss};
use std::path::Path;
use std::time::Instant;

/// Every benchmark, in the order `make bench` runs them.
pub const NAMES: &[&str] = &[
    "lenet5-forward",
    "lenet5-pgd",
    "lenet5-train-cross-entropy",
    "lenet5-train-triplet-entropy",
    "lenet5-train-triplet-supervised",
    "lenet5-train-triplet-ss",
    "lenet5-train-ntxent",
    "lenet5-classic-forward",
    "lenet5-classic-pgd",
    "lenet5-classic-train-cross-entropy",
    "resnet18-forward",
    "resnet18-pgd",
    "resnet18-train-cross-entropy",
    "alter-noise",
    "manifold-stats-decode",
    "manifold-stats",
    "manifold-stats-zstd",
    "manifold-stats-list-f64",
    "probe-knn",
    "probe-linear",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config(arch: Arch, method: Method) -> ModelConfig {
    let (c, side, dataset) = if arch == Arch::Resnet18 {
        (3, 32, "cifar10")
    } else {
        (1, 28, "mnist")
    };
    let (mean, std) = dataset_normalisation(dataset, c);
    ModelConfig {
        model_id: "bench".into(),
        arch,
        method,
        dim: 128,
        optimizer: OptimizerKind::Adam,
        dataset: dataset.into(),
        epochs: 0,
        seed: 0,
        channels: c,
        height: side,
        width: side,
        mean,
        std,
        classes: 10,
        batch_size: 256,
        accumulate: 1,
        learning_rate: 1e-3,
        temperature: 0.07,
        margin: 0.5,
    }
}

fn pixels(n: usize, size: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n * size).map(|_| rng.random::<f32>()).collect()
}

/// Median images/s of `iteration` (which processes `batch` images), after one warm-up.
fn images_per_second(
    batch: usize,
    repeats: usize,
    mut iteration: impl FnMut() -> Result<()>,
) -> Result<f64> {
    iteration()?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        iteration()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(batch as f64 / median(times))
}

/// forward, pgd or train-<method> on `arch`; with candle's default ops when `candle`.
fn model_bench(arch: Arch, kind: &str, candle: bool, repeats: usize) -> Result<f64> {
    ops::use_candle_default_ops(candle);
    let batch = if arch == Arch::Resnet18 { 128 } else { 256 };
    let method = match kind.strip_prefix("train-") {
        Some(m) => m.parse::<Method>().map_err(anyhow::Error::msg)?,
        None => Method::CrossEntropy,
    };
    let cfg = config(arch, method);
    let (c, h, w) = (cfg.channels, cfg.height, cfg.width);
    let size = c * h * w;
    let device = Device::Cpu;
    let x = pixels(batch, size, 1);
    let labels: Vec<i64> = (0..batch).map(|i| (i % 10) as i64).collect();
    let xt = Tensor::from_vec(x.clone(), (batch, c, h, w), &device)?;
    let result = match kind {
        "forward" => {
            let model = Encoder::init(cfg, DType::F32, &device, false)?;
            images_per_second(batch, repeats, || {
                let e = model.embed(&xt, false)?;
                e.flatten_all()?.sum_all()?.to_scalar::<f32>()?;
                Ok(())
            })?
        }
        "pgd" => {
            // One PGD step: forward, the model's loss, gradient to the input only, sign update.
            let model = Encoder::init(cfg, DType::F32, &device, false)?;
            let y = Tensor::new(
                labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
                &device,
            )?;
            images_per_second(batch, repeats, || {
                let v = Var::from_tensor(&xt)?;
                let e = model.embed(v.as_tensor(), false)?;
                let loss = rmqm_train::cross_entropy(&model.logits(&e)?.unwrap(), &y)?;
                let g = loss.backward()?;
                let step = g.get(v.as_tensor()).unwrap().sign()?;
                (v.as_tensor() + (step * (2.0 / 255.0))?)?
                    .clamp(0.0, 1.0)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                Ok(())
            })?
        }
        _ => {
            let model = Encoder::init(cfg, DType::F32, &device, true)?;
            let mut opt = Adam::new(model.vars().to_vec(), 1e-3);
            let aug = Augmentation::for_images(c);
            let imgs: Vec<&[f32]> = x.chunks(size).collect();
            let ids: Vec<u32> = (0..batch as u32).collect();
            let mut epoch = 0u64;
            images_per_second(batch, repeats, || {
                epoch += 1;
                let loss = if method.uses_views() {
                    let v1 = Tensor::from_vec(
                        augment_batch(aug, &imgs, &ids, c, h, w, 0, epoch, 0),
                        (batch, c, h, w),
                        &device,
                    )?;
                    let v2 = Tensor::from_vec(
                        augment_batch(aug, &imgs, &ids, c, h, w, 0, epoch, 1),
                        (batch, c, h, w),
                        &device,
                    )?;
                    method_loss(
                        &model,
                        method,
                        &BatchInput::Views {
                            first: &v1,
                            second: &v2,
                        },
                        true,
                    )?
                } else {
                    method_loss(
                        &model,
                        method,
                        &BatchInput::Labelled {
                            images: &xt,
                            labels: &labels,
                        },
                        true,
                    )?
                };
                let grads = loss.backward()?;
                let g: Vec<Option<Tensor>> = model
                    .vars()
                    .iter()
                    .map(|v| grads.get(v.as_tensor()).cloned())
                    .collect();
                opt.step(&g)?;
                Ok(())
            })?
        }
    };
    ops::use_candle_default_ops(false);
    Ok(result)
}

/// The trajectory file of the manifold-stats benchmark: 10,000 images x 101 steps x 512 dims,
/// random walks; written once and kept in `out`.
fn trajectory_file(out: &Path) -> Result<std::path::PathBuf> {
    let path = out.join("traj-10000x101x512.parquet");
    if path.exists() {
        return Ok(path);
    }
    let (images, steps, dim) = (10_000u32, 100u16, 512usize);
    let prov = Provenance::new()
        .with(keys::KIND, "trajectories")
        .with(keys::MODEL, "bench")
        .with(keys::DIM, dim)
        .with(keys::STEPS, steps);
    let mut w = VectorWriter::create(
        &Output::Path(path.clone()),
        VectorKind::Embedding,
        dim,
        &prov,
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for chunk in 0..images / 100 {
        let mut b = VectorBatchBuilder::new(dim, 100 * 101);
        for i in 0..100 {
            let id = chunk * 100 + i;
            let mut e: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
            for s in 0..=steps {
                b.push(id, (id % 10) as i32, s, s as f32 / 100.0, &e);
                for v in e.iter_mut() {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    *v += 0.05 * z;
                }
            }
        }
        w.write(&b.finish())?;
    }
    w.finish()?;
    Ok(path)
}

/// The bench trajectory re-encoded as a Python user would write it: `zstd` keeps our schema with
/// zstd pages (polars' default codec); `list-f64` has int64 keys and a List<Float64> embedding
/// column with snappy pages (pyarrow from NumPy rows). Written once and kept in `out`.
fn foreign_trajectory_file(out: &Path, kind: &str) -> Result<std::path::PathBuf> {
    use arrow_array::builder::{Float64Builder, ListBuilder};
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
    use parquet::basic::{Compression, ZstdLevel};
    use std::sync::Arc;
    let path = out.join(format!("traj-10000x101x512-{kind}.parquet"));
    if path.exists() {
        return Ok(path);
    }
    let canonical = trajectory_file(out)?;
    let mut reader = VectorReader::open(&Input::Path(canonical), VectorKind::Embedding, 10_100)?;
    let codec = if kind == "zstd" {
        Compression::ZSTD(ZstdLevel::default())
    } else {
        Compression::SNAPPY
    };
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(codec)
        .build();
    let tmp = path.with_extension("tmp");
    let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    while let Some(b) = reader.next_batch()? {
        let batch = if kind == "zstd" {
            b.to_record_batch(VectorKind::Embedding)
        } else {
            let mut list = ListBuilder::new(Float64Builder::with_capacity(b.values.len()));
            for i in 0..b.len() {
                list.values()
                    .append_slice(&b.row(i).iter().map(|&v| v as f64).collect::<Vec<_>>());
                list.append(true);
            }
            let int64 = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
            RecordBatch::try_from_iter(vec![
                (
                    "image_id",
                    int64(b.image_ids.iter().map(|&x| x as i64).collect()),
                ),
                ("label", int64(b.labels.iter().map(|&x| x as i64).collect())),
                ("step", int64(b.steps.iter().map(|&x| x as i64).collect())),
                (
                    "epsilon",
                    Arc::new(Float64Array::from_iter_values(
                        b.epsilons.iter().map(|&e| e as f64),
                    )) as ArrayRef,
                ),
                ("embedding", Arc::new(list.finish()) as ArrayRef),
            ])?
        };
        let w = match writer.as_mut() {
            Some(w) => w,
            None => writer.insert(parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&tmp)?,
                batch.schema(),
                Some(props.clone()),
            )?),
        };
        w.write(&batch)?;
    }
    writer.expect("the bench file has rows").close()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Seconds manifold-stats takes on `path` (both conventions, summary only).
fn manifold_stats_seconds(path: &Path, out: &Path) -> Result<f64> {
    let summary = out.join("bench-stats.parquet");
    let argv: Vec<String> = [
        "manifold-stats",
        path.to_str().unwrap(),
        "-o",
        summary.to_str().unwrap(),
        "--convention",
        "both",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = Instant::now();
    manifold_stats_tool::run_outcome(argv, rmqm_cli::Stdio::default())?;
    Ok(t.elapsed().as_secs_f64())
}

/// A measure of benchmark `name`: (stage, workload, value, unit, reference, reference label).
fn measure(name: &str) -> impl Fn(&str, String, f64, &str, f64, &str) -> Measure + '_ {
    move |stage, workload, value, unit, reference, label| Measure {
        stage: stage.into(),
        name: name.into(),
        workload,
        value,
        unit: unit.into(),
        reference,
        reference_label: label.into(),
    }
}

/// The noise alteration: 1,000 MNIST-size images x 101 steps to Parquet.
fn alter_noise(name: &str, out: &Path, repeats: usize) -> Result<Vec<Measure>> {
    let m = measure(name);
    let (n, steps) = (1000usize, 100usize);
    let imgs = pixels(n, 784, 3);
    let cfg = rmqm_alter::NoiseConfig {
        steps,
        eps_max: 1.0,
        direction: rmqm_alter::NoiseDirection::Fresh,
        seed: 0,
    };
    let path = out.join("alter-noise.parquet");
    let prov = Provenance::new()
        .with(keys::CHANNELS, 1)
        .with(keys::HEIGHT, 28)
        .with(keys::WIDTH, 28);
    let mut times = Vec::new();
    for _ in 0..repeats.min(3) {
        let t = Instant::now();
        let mut w =
            VectorWriter::create(&Output::Path(path.clone()), VectorKind::Pixels, 784, &prov)?;
        for start in (0..n).step_by(256) {
            let end = (start + 256).min(n);
            use rayon::prelude::*;
            let rows: Vec<Vec<Vec<f32>>> = (start..end)
                .into_par_iter()
                .map(|i| {
                    (0..=steps)
                        .map(|j| {
                            rmqm_alter::noise_image(
                                &imgs[i * 784..(i + 1) * 784],
                                i as u32,
                                j,
                                &cfg,
                            )
                        })
                        .collect()
                })
                .collect();
            let mut b = VectorBatchBuilder::new(784, (end - start) * (steps + 1));
            for (k, r) in rows.iter().enumerate() {
                for (j, row) in r.iter().enumerate() {
                    b.push((start + k) as u32, 0, j as u16, cfg.epsilon(j) as f32, row);
                }
            }
            w.write(&b.finish())?;
        }
        w.finish()?;
        times.push(t.elapsed().as_secs_f64());
    }
    std::fs::remove_file(&path).ok();
    let s = median(times);
    Ok(vec![m(
        "alter (noise)",
        "1,000 MNIST-size images x 101 steps, to Parquet".into(),
        n as f64 / s,
        "images/s",
        (n * (steps + 1)) as f64 / s,
        "rows/s",
    )])
}

/// manifold-stats (or its decoding alone) on the 10,000 x 101 x 512 trajectory file.
fn manifold_stats(name: &str, out: &Path) -> Result<Vec<Measure>> {
    let m = measure(name);
    let path = trajectory_file(out)?;
    let rows = 10_000.0 * 101.0;
    let mb = rows * 512.0 * 4.0 / 1e6;
    let t = Instant::now();
    if name == "manifold-stats-decode" {
        let mut r = VectorReader::open(&Input::Path(path), VectorKind::Embedding, 8192)?;
        let mut n = 0usize;
        while let Some(b) = r.next_batch()? {
            n += b.len();
        }
        if n != rows as usize {
            bail!("read {n} rows");
        }
        let s = t.elapsed().as_secs_f64();
        Ok(vec![m(
            "manifold-stats",
            format!("decode only, 10,000 x 101 x 512 ({mb:.0} MB of floats)"),
            rows / s,
            "rows/s",
            mb / s,
            "MB/s",
        )])
    } else {
        let summary = out.join("bench-stats.parquet");
        let argv: Vec<String> = [
            "manifold-stats",
            path.to_str().unwrap(),
            "-o",
            summary.to_str().unwrap(),
            "--convention",
            "both",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        manifold_stats_tool::run_outcome(argv, rmqm_cli::Stdio::default())?;
        let s = t.elapsed().as_secs_f64();
        Ok(vec![m(
            "manifold-stats",
            format!("10,000 images x 101 steps x 512 dims ({mb:.0} MB of floats)"),
            rows / s,
            "rows/s",
            mb / s,
            "MB/s",
        )])
    }
}

/// manifold-stats on the trajectory file written as a Python user would, beside the canonical file.
fn manifold_stats_foreign(name: &str, out: &Path, repeats: usize) -> Result<Vec<Measure>> {
    let m = measure(name);
    // The foreign file and the canonical one measured alternately in one run: the value
    // is the foreign file's speed, the reference the canonical file's.
    let kind = name.trim_start_matches("manifold-stats-");
    let foreign = foreign_trajectory_file(out, kind)?;
    let canonical = trajectory_file(out)?;
    let rows = 10_000.0 * 101.0;
    let (mut f, mut c) = (Vec::new(), Vec::new());
    for _ in 0..repeats.clamp(1, 3) {
        c.push(manifold_stats_seconds(&canonical, out)?);
        f.push(manifold_stats_seconds(&foreign, out)?);
    }
    Ok(vec![m(
        "manifold-stats",
        format!(
            "10,000 x 101 x 512 written as {} (cost vs canonical: {:.2}x)",
            if kind == "zstd" {
                "FixedSizeList<Float32> + zstd"
            } else {
                "int64 keys + List<Float64> + snappy"
            },
            median(f.clone()) / median(c.clone())
        ),
        rows / median(f),
        "rows/s",
        rows / median(c),
        "canonical rows/s",
    )])
}

/// Exact 1-NN on 8,000 x 2,000 x 512.
fn probe_knn(name: &str, repeats: usize) -> Result<Vec<Measure>> {
    let m = measure(name);
    let (ng, nq, dim) = (8000, 2000, 512);
    let g = pixels(ng, dim, 5);
    let q = pixels(nq, dim, 6);
    let labels: Vec<i32> = (0..ng).map(|i| (i % 100) as i32).collect();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        rmqm_probe::knn_predict(&g, &labels, &q, dim, 1, rmqm_probe::Metric::Cosine)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let s = median(times);
    Ok(vec![m(
        "probe",
        "1-NN, 8,000 gallery x 2,000 queries x 512 dims".into(),
        nq as f64 / s,
        "queries/s",
        s,
        "seconds",
    )])
}

/// The linear probe on 15,000 x 512 with 964 classes.
fn probe_linear(name: &str) -> Result<Vec<Measure>> {
    let m = measure(name);
    let (n, dim, classes) = (15_000, 512, 964);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let centres: Vec<f32> = (0..classes * dim)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let labels: Vec<i32> = (0..n).map(|i| (i % classes) as i32).collect();
    let mut x = Vec::with_capacity(n * dim);
    for &l in &labels {
        let c = l as usize;
        for k in 0..dim {
            let z: f32 = StandardNormal.sample(&mut rng);
            x.push(centres[c * dim + k] * 0.3 + z);
        }
    }
    let t = Instant::now();
    let (_, report) = rmqm_probe::fit_linear_probe(&x, &labels, dim, &Default::default())?;
    let s = t.elapsed().as_secs_f64();
    Ok(vec![m(
        "probe",
        format!(
            "linear probe, 15,000 x 512, 964 classes (lambda {:e}, {} final iterations)",
            report.lambda, report.iterations
        ),
        s,
        "seconds",
        f64::NAN,
        "",
    )])
}

/// Runs benchmark `name`.
pub fn run(name: &str, out: &Path, repeats: usize) -> Result<Vec<Measure>> {
    let m = measure(name);
    for (prefix, arch) in [
        ("lenet5-classic-", Arch::Lenet5Classic),
        ("lenet5-", Arch::Lenet5),
        ("resnet18-", Arch::Resnet18),
    ] {
        if let Some(kind) = name.strip_prefix(prefix) {
            let batch = if arch == Arch::Resnet18 { 128 } else { 256 };
            let reps = if arch == Arch::Resnet18 {
                repeats.min(3)
            } else {
                repeats
            };
            // On a worker of the pool, as the tools run their passes (rmqm_cli::on_workers).
            let ours = rmqm_cli::on_workers(|| model_bench(arch, kind, false, reps))?;
            let with_reference = matches!(kind, "forward" | "pgd" | "train-cross-entropy")
                && std::env::var_os("RMQM_BENCH_NO_REFERENCE").is_none();
            let reference = if with_reference {
                rmqm_cli::on_workers(|| model_bench(arch, kind, true, reps))?
            } else {
                f64::NAN
            };
            let stage = match kind {
                "forward" => "embed",
                "pgd" => "alter (pgd)",
                _ => "train",
            };
            return Ok(vec![m(
                stage,
                format!("{arch} {kind}, batch {batch}"),
                ours,
                "images/s",
                reference,
                "candle default ops",
            )]);
        }
    }
    match name {
        "alter-noise" => alter_noise(name, out, repeats),
        "manifold-stats-decode" | "manifold-stats" => manifold_stats(name, out),
        "manifold-stats-zstd" | "manifold-stats-list-f64" => {
            manifold_stats_foreign(name, out, repeats)
        }
        "probe-knn" => probe_knn(name, repeats),
        "probe-linear" => probe_linear(name),
        _ => bail!("unknown benchmark {name}; known: {}", NAMES.join(", ")),
    }
}
