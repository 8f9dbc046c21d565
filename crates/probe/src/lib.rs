//! `probe`: downstream task accuracy from frozen embeddings: exact k-NN and a linear probe.

use anyhow::{Context, Result, bail};
use clap::Parser;
use rmqm_artifacts::{
    Column, Input, KeyNeeds, Output, Provenance, Table, VectorBatch, VectorKind, VectorReader,
    keys, write_table,
};
use rmqm_cli::{ModelIdentity, Stdio, Summary, ThreadsArg, base_provenance};
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
Either give --train and --test files, or one --input file split with --split and --seed (stratified). \
Inputs need only image_id, label and embedding (any integer key types; the embedding as a fixed-size or \
variable list of float16/32/64, as pyarrow and polars write them); a step column, when present, selects \
--step.",
    after_help = "Examples:\n  probe --train kmnist-train.parquet --test kmnist-test.parquet --knn 1,5 --linear -o probe.parquet\n  \
probe --input omniglot.parquet --split 0.8 --seed 0 --knn 1 --linear -o probe.parquet\n  \
embed --model m.safetensors --dataset kmnist --split test -o kmnist.parquet && probe --input kmnist.parquet -o p.parquet\n  \
probe --input my_resnet_kmnist.parquet --model-id resnet50 --train-dataset imagenet --downstream kmnist --knn 1 -o p.parquet"
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
    /// Who the embeddings belong to, for files without rmqm metadata.
    #[command(flatten)]
    pub identity: ModelIdentity,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

/// One file's embeddings at the chosen step.
struct Embeddings {
    values: Vec<f32>,
    labels: Vec<i32>,
    dim: usize,
    provenance: Provenance,
}

fn load(input: &Input, step: u16, stdio: &mut Stdio) -> Result<Embeddings> {
    let stdin = stdio.take_stdin();
    let needs = KeyNeeds {
        label: true,
        step: false,
    };
    let mut r =
        VectorReader::open_with(input, VectorKind::Embedding, 65_536, needs, move || stdin)?;
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

/// The probe's train and test parts, and where they came from.
struct ProbeData {
    train_x: Vec<f32>,
    train_y: Vec<i32>,
    test_x: Vec<f32>,
    test_y: Vec<i32>,
    dim: usize,
    provenance: Provenance,
    source_train: String,
    source_test: String,
}

impl ProbeData {
    fn classes(&self) -> usize {
        let mut l: Vec<i32> = self.train_y.iter().chain(&self.test_y).copied().collect();
        l.sort_unstable();
        l.dedup();
        l.len()
    }
}

/// Reads --train and --test, or splits --input.
fn probe_data(args: &Args, stdio: &mut Stdio) -> Result<ProbeData> {
    match (&args.train, &args.test, &args.input) {
        (Some(tr), Some(te), _) => {
            let a = load(tr, args.step, stdio)?;
            let b = load(te, args.step, stdio)?;
            if a.dim != b.dim {
                bail!(
                    "{tr} has {}-dimensional embeddings but {te} has {}",
                    a.dim,
                    b.dim
                );
            }
            if let (Some(ma), Some(mb)) =
                (a.provenance.get(keys::MODEL), b.provenance.get(keys::MODEL))
                && ma != mb
            {
                bail!("{tr} comes from model {ma} but {te} from model {mb}");
            }
            Ok(ProbeData {
                provenance: args.identity.apply(a.provenance, tr),
                train_x: a.values,
                train_y: a.labels,
                test_x: b.values,
                test_y: b.labels,
                dim: a.dim,
                source_train: tr.to_string(),
                source_test: te.to_string(),
            })
        }
        (_, _, Some(input)) => {
            let e = load(input, args.step, stdio)?;
            let split = rmqm_data::stratified_split(&e.labels, args.split, args.seed)
                .with_context(|| format!("{input}"))?;
            if split.train.is_empty() || split.test.is_empty() {
                bail!(
                    "{input}: the {} split leaves an empty part ({} rows)",
                    args.split,
                    e.labels.len()
                );
            }
            let (train_x, train_y) = select(&e, &split.train);
            let (test_x, test_y) = select(&e, &split.test);
            let name = format!("{input}[split {} seed {}]", args.split, args.seed);
            Ok(ProbeData {
                train_x,
                train_y,
                test_x,
                test_y,
                dim: e.dim,
                provenance: args.identity.apply(e.provenance, input),
                source_train: name.clone(),
                source_test: name,
            })
        }
        _ => bail!("give --train and --test, or --input"),
    }
}

/// One task's result.
struct TaskResult {
    task: &'static str,
    k: i64,
    metric: String,
    accuracy: f64,
    lambda: f64,
    seconds: f64,
}

/// k-NN for every --knn value, then the linear probe if asked.
fn run_tasks(args: &Args, d: &ProbeData) -> Result<Vec<TaskResult>> {
    let mut rows = Vec::new();
    if !args.knn.is_empty() {
        let t = Instant::now();
        let preds = knn_predict_many(
            &d.train_x,
            &d.train_y,
            &d.test_x,
            d.dim,
            &args.knn,
            args.metric,
        )?;
        let seconds = t.elapsed().as_secs_f64();
        for (k, p) in args.knn.iter().zip(preds) {
            rows.push(TaskResult {
                task: "knn",
                k: *k as i64,
                metric: args.metric.name().into(),
                accuracy: accuracy(&p, &d.test_y),
                lambda: f64::NAN,
                seconds,
            });
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
        let (probe, report) = fit_linear_probe(&d.train_x, &d.train_y, d.dim, &config)?;
        let p = probe.predict(&d.test_x)?;
        rows.push(TaskResult {
            task: "linear",
            k: 0,
            metric: "standardised".into(),
            accuracy: accuracy(&p, &d.test_y),
            lambda: report.lambda,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(rows)
}

/// The probe-results table: the model's provenance columns, then one row per task.
fn results_table(d: &ProbeData, downstream: &str, rows: &[TaskResult]) -> Table {
    let n = rows.len();
    let prov = &d.provenance;
    let text = |k: &str| Column::Str(vec![prov.get(k).unwrap_or("unknown").to_string(); n]);
    let int_meta =
        |k: &str, default: i64| prov.get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut table = Table::new();
    table.push("model", text(keys::MODEL));
    table.push("method", text(keys::METHOD));
    table.push("arch", text(keys::ARCH));
    table.push(
        "dim",
        Column::I64(vec![int_meta(keys::DIM, d.dim as i64); n]),
    );
    table.push("optimizer", text(keys::OPTIMIZER));
    table.push("epochs", Column::I64(vec![int_meta(keys::EPOCHS, -1); n]));
    table.push("train_dataset", text(keys::TRAIN_DATASET));
    table.push("downstream", Column::Str(vec![downstream.to_string(); n]));
    table.push(
        "task",
        Column::Str(rows.iter().map(|r| r.task.to_string()).collect()),
    );
    table.push("k", Column::I64(rows.iter().map(|r| r.k).collect()));
    table.push(
        "metric",
        Column::Str(rows.iter().map(|r| r.metric.clone()).collect()),
    );
    table.push(
        "accuracy",
        Column::F64(rows.iter().map(|r| r.accuracy).collect()),
    );
    table.push("n_train", Column::I64(vec![d.train_y.len() as i64; n]));
    table.push("n_test", Column::I64(vec![d.test_y.len() as i64; n]));
    table.push("n_classes", Column::I64(vec![d.classes() as i64; n]));
    table.push(
        "lambda",
        Column::F64(rows.iter().map(|r| r.lambda).collect()),
    );
    table.push(
        "seconds",
        Column::F64(rows.iter().map(|r| r.seconds).collect()),
    );
    table.push("source_train", Column::Str(vec![d.source_train.clone(); n]));
    table.push("source_test", Column::Str(vec![d.source_test.clone(); n]));
    table
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, mut stdio: Stdio) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    rmqm_cli::check_binary_output(&args.output, &stdio)?;
    let summary = Summary::start("probe");
    if args.knn.is_empty() && !args.linear {
        bail!("nothing to do: give --knn values or --linear");
    }
    if args.knn.contains(&0) {
        bail!("--knn values must be at least 1");
    }
    let data = probe_data(&args, &mut stdio)?;
    let downstream = args
        .downstream
        .clone()
        .or_else(|| data.provenance.get(keys::DATASET).map(String::from))
        .unwrap_or_else(|| "unknown".into());
    let rows = run_tasks(&args, &data)?;
    let mut out_prov = base_provenance("probe", &argv);
    out_prov.inherit(&data.provenance);
    out_prov.set(keys::KIND, "probe").set(keys::SEED, args.seed);
    write_table(
        &args.output,
        &results_table(&data, &downstream, &rows),
        &out_prov,
    )?;
    let results: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.task == "knn" {
                format!("{}-NN {:.4}", r.k, r.accuracy)
            } else {
                format!("linear {:.4} (lambda {:e})", r.accuracy, r.lambda)
            }
        })
        .collect();
    summary.finish(&format!(
        "{downstream}: {} train / {} test, {} classes, dim {}: {}; wrote {}",
        rmqm_cli::thousands(data.train_y.len() as u64),
        rmqm_cli::thousands(data.test_y.len() as u64),
        data.classes(),
        data.dim,
        results.join(", "),
        args.output
    ));
    Ok(())
}
