//! `probe`: downstream task accuracy from frozen embeddings: exact k-NN and a linear probe.

use anyhow::{Context, Result, bail};
use clap::Parser;
use rmqm_artifacts::{
    Column, Input, Output, Provenance, Table, VectorBatch, VectorKind, VectorReader, keys,
    write_table,
};
use rmqm_cli::{Stdio, Summary, base_provenance};
use rmqm_probe::{LinearProbeConfig, Metric, accuracy, fit_linear_probe, knn_predict_many};
use std::time::Instant;

/// Command-line arguments of `probe`.
#[derive(Debug, Parser)]
#[command(
    name = "probe",
    version,
    about = "k-NN and linear-probe accuracy on frozen embeddings",
    long_about = "Measures how well frozen embeddings of a downstream dataset serve a task: exact k-NN \
(cosine by default: Euclidean distance between L2-normalised embeddings; majority vote, ties to the class \
of the nearest tied neighbour) and a linear probe (multinomial logistic regression on standardised \
embeddings, L2 penalty chosen on a stratified validation part of the train split, then refit; L-BFGS). \
Either give --train and --test files, or one --input file split with --split and --seed (stratified).",
    after_help = "Examples:\n  probe --train kmnist-train.parquet --test kmnist-test.parquet --knn 1,5 --linear -o probe.parquet\n  \
probe --input omniglot.parquet --split 0.8 --seed 0 --knn 1 --linear -o probe.parquet\n  \
embed --model m.safetensors --dataset kmnist --split test -o kmnist.parquet && probe --input kmnist.parquet -o p.parquet"
)]
pub struct Args {
    /// Embeddings of the probe's train split (the k-NN gallery).
    #[arg(long, value_parser = rmqm_cli::parse_input, requires = "test", conflicts_with = "input")]
    pub train: Option<Input>,
    /// Embeddings of the probe's test split (the queries).
    #[arg(long, value_parser = rmqm_cli::parse_input, requires = "train")]
    pub test: Option<Input>,
    /// One embeddings file to split into train and test (stratified by label).
    #[arg(long, value_parser = rmqm_cli::parse_input, required_unless_present = "train")]
    pub input: Option<Input>,
    /// Train fraction when splitting --input.
    #[arg(long, default_value_t = 0.8)]
    pub split: f64,
    /// Seed of the split (and of the linear probe's validation split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Values of k for k-NN, comma separated (empty to skip k-NN).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub knn: Vec<usize>,
    /// k-NN distance: cosine (Euclidean on L2-normalised embeddings) or euclidean (raw).
    #[arg(long, default_value = "cosine")]
    pub metric: Metric,
    /// Also fit and score the linear probe.
    #[arg(long)]
    pub linear: bool,
    /// Candidate L2 penalties of the linear probe.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1e-5,1e-4,1e-3,1e-2,1e-1"
    )]
    pub lambdas: Vec<f64>,
    /// L-BFGS iterations of the final linear fit (a third of it per candidate during the search).
    #[arg(long, default_value_t = 300)]
    pub linear_iterations: usize,
    /// Which step's rows to use (0 = clean images).
    #[arg(long, default_value_t = 0)]
    pub step: u16,
    /// Name of the downstream task (default: the dataset named in the input's metadata).
    #[arg(long)]
    pub downstream: Option<String>,
    /// Output table, one row per task.
    #[arg(short, long, value_parser = rmqm_cli::parse_output)]
    pub output: Output,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

struct Embeddings {
    values: Vec<f32>,
    labels: Vec<i32>,
    dim: usize,
    provenance: Provenance,
}

fn load(input: &Input, step: u16, stdio: &mut Stdio) -> Result<Embeddings> {
    let stdin = stdio.take_stdin();
    let mut r = VectorReader::open_with_stdin(input, VectorKind::Embedding, 65_536, move || stdin)?;
    let all: VectorBatch = r.read_all()?;
    let dim = r.width();
    let mut values = Vec::with_capacity(all.values.len());
    let mut labels = Vec::with_capacity(all.len());
    for i in 0..all.len() {
        if all.steps[i] == step {
            values.extend_from_slice(all.row(i));
            labels.push(all.labels[i]);
        }
    }
    if labels.is_empty() {
        bail!(
            "{input}: no rows at step {step} ({} rows in all)",
            all.len()
        );
    }
    Ok(Embeddings {
        values,
        labels,
        dim,
        provenance: r.provenance().clone(),
    })
}

fn select(e: &Embeddings, idx: &[usize]) -> (Vec<f32>, Vec<i32>) {
    let mut v = Vec::with_capacity(idx.len() * e.dim);
    for &i in idx {
        v.extend_from_slice(&e.values[i * e.dim..(i + 1) * e.dim]);
    }
    (v, idx.iter().map(|&i| e.labels[i]).collect())
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, mut stdio: Stdio) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    rmqm_cli::init_threads(args.threads);
    let summary = Summary::start("probe");
    if args.knn.is_empty() && !args.linear {
        bail!("nothing to do: give --knn values or --linear");
    }
    if args.knn.contains(&0) {
        bail!("--knn values must be at least 1");
    }
    let (train_x, train_y, test_x, test_y, dim, prov, sources) =
        match (&args.train, &args.test, &args.input) {
            (Some(tr), Some(te), _) => {
                let a = load(tr, args.step, &mut stdio)?;
                let b = load(te, args.step, &mut stdio)?;
                if a.dim != b.dim {
                    bail!(
                        "{tr} has {}-dimensional embeddings but {te} has {}",
                        a.dim,
                        b.dim
                    );
                }
                if let (Some(ma), Some(mb)) =
                    (a.provenance.get(keys::MODEL), b.provenance.get(keys::MODEL))
                {
                    if ma != mb {
                        bail!("{tr} comes from model {ma} but {te} from model {mb}");
                    }
                }
                (
                    a.values,
                    a.labels,
                    b.values,
                    b.labels,
                    a.dim,
                    a.provenance,
                    (tr.to_string(), te.to_string()),
                )
            }
            (_, _, Some(input)) => {
                let e = load(input, args.step, &mut stdio)?;
                let split = rmqm_data::stratified_split(&e.labels, args.split, args.seed)
                    .with_context(|| format!("{input}"))?;
                if split.train.is_empty() || split.test.is_empty() {
                    bail!(
                        "{input}: the {} split leaves an empty part ({} rows)",
                        args.split,
                        e.labels.len()
                    );
                }
                let (a, ay) = select(&e, &split.train);
                let (b, by) = select(&e, &split.test);
                let name = format!("{input}[split {} seed {}]", args.split, args.seed);
                (a, ay, b, by, e.dim, e.provenance, (name.clone(), name))
            }
            _ => bail!("give --train and --test, or --input"),
        };
    let n_classes = {
        let mut l: Vec<i32> = train_y.iter().chain(&test_y).copied().collect();
        l.sort_unstable();
        l.dedup();
        l.len()
    };
    let downstream = args
        .downstream
        .clone()
        .or_else(|| prov.get(keys::DATASET).map(String::from))
        .unwrap_or_else(|| "unknown".into());

    // (task, k, metric, accuracy, lambda, seconds)
    let mut rows: Vec<(String, i64, String, f64, f64, f64)> = Vec::new();
    if !args.knn.is_empty() {
        let t = Instant::now();
        let preds = knn_predict_many(&train_x, &train_y, &test_x, dim, &args.knn, args.metric)?;
        let secs = t.elapsed().as_secs_f64();
        for (k, p) in args.knn.iter().zip(preds) {
            rows.push((
                "knn".into(),
                *k as i64,
                args.metric.name().into(),
                accuracy(&p, &test_y),
                f64::NAN,
                secs,
            ));
        }
    }
    if args.linear {
        let t = Instant::now();
        let config = LinearProbeConfig {
            lambdas: args.lambdas.clone(),
            seed: args.seed,
            search_iterations: (args.linear_iterations / 3).max(1),
            final_iterations: args.linear_iterations,
            ..Default::default()
        };
        let (probe, report) = fit_linear_probe(&train_x, &train_y, dim, &config)?;
        let p = probe.predict(&test_x)?;
        rows.push((
            "linear".into(),
            0,
            "standardised".into(),
            accuracy(&p, &test_y),
            report.lambda,
            t.elapsed().as_secs_f64(),
        ));
    }

    let n = rows.len();
    let text = |k: &str| Column::Str(vec![prov.get(k).unwrap_or("unknown").to_string(); n]);
    let mut table = Table::new();
    table.push("model", text(keys::MODEL));
    table.push("method", text(keys::METHOD));
    table.push("arch", text(keys::ARCH));
    let dim_meta = prov
        .get(keys::DIM)
        .and_then(|d| d.parse().ok())
        .unwrap_or(dim as i64);
    table.push("dim", Column::I64(vec![dim_meta; n]));
    table.push("optimizer", text(keys::OPTIMIZER));
    let epochs = prov
        .get(keys::EPOCHS)
        .and_then(|e| e.parse().ok())
        .unwrap_or(-1i64);
    table.push("epochs", Column::I64(vec![epochs; n]));
    table.push("train_dataset", text(keys::TRAIN_DATASET));
    table.push("downstream", Column::Str(vec![downstream.clone(); n]));
    table.push(
        "task",
        Column::Str(rows.iter().map(|r| r.0.clone()).collect()),
    );
    table.push("k", Column::I64(rows.iter().map(|r| r.1).collect()));
    table.push(
        "metric",
        Column::Str(rows.iter().map(|r| r.2.clone()).collect()),
    );
    table.push("accuracy", Column::F64(rows.iter().map(|r| r.3).collect()));
    table.push("n_train", Column::I64(vec![train_y.len() as i64; n]));
    table.push("n_test", Column::I64(vec![test_y.len() as i64; n]));
    table.push("n_classes", Column::I64(vec![n_classes as i64; n]));
    table.push("lambda", Column::F64(rows.iter().map(|r| r.4).collect()));
    table.push("seconds", Column::F64(rows.iter().map(|r| r.5).collect()));
    table.push("source_train", Column::Str(vec![sources.0.clone(); n]));
    table.push("source_test", Column::Str(vec![sources.1.clone(); n]));
    let mut out_prov = base_provenance("probe", &argv);
    out_prov.inherit(&prov);
    out_prov.set(keys::KIND, "probe").set(keys::SEED, args.seed);
    write_table(&args.output, &table, &out_prov)?;
    let results: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.0 == "knn" {
                format!("{}-NN {:.4}", r.1, r.3)
            } else {
                format!("linear {:.4} (lambda {:e})", r.3, r.4)
            }
        })
        .collect();
    summary.finish(&format!(
        "{downstream}: {} train / {} test, {n_classes} classes, dim {dim}: {}; wrote {}",
        rmqm_cli::thousands(train_y.len() as u64),
        rmqm_cli::thousands(test_y.len() as u64),
        results.join(", "),
        args.output
    ));
    Ok(())
}
