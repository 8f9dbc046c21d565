//! `train-encoder`: trains an encoder with one of the five methods and saves it as safetensors,
//! with its config in the file's metadata and a training log as Parquet.

use anyhow::{Context, Result, bail};
use candle_core::DType;
use clap::Parser;
use rmqm_artifacts::{Column, Output, Table, keys, write_table};
use rmqm_cli::{DataDirArg, SelectionArgs, Summary, ThreadsArg, base_provenance};
use rmqm_data::{Dataset, ImageSet, LoadOptions, load};
use rmqm_models::{Arch, Encoder, Method, ModelConfig, OptimizerKind, dataset_normalisation};
use rmqm_train::{StepLog, TrainOptions, train};
use std::path::PathBuf;

/// Command-line arguments of `train-encoder`.
#[derive(Debug, Parser)]
#[command(
    name = "train-encoder",
    version,
    about = "Train an encoder (LeNet-5 or ResNet-18) with one of the five methods",
    long_about = "Trains an encoder on a dataset's training split with cross-entropy, triplet-entropy, \
triplet-supervised (semihard triplets mined from labels), triplet-ss (semihard triplets between two \
augmented views) or ntxent (SimCLR). Saves model.safetensors with the model's config in its metadata, \
and a training log (epoch, step, loss, seconds, examples per second) as Parquet. --epochs 0 writes the \
randomly initialised encoder: the baseline every comparison needs.",
    after_help = "Examples:\n  train-encoder --dataset mnist --data-dir ../shared/data --arch lenet5 --method ntxent --dim 64 --optimizer adam --epochs 1 --seed 0 -o model.safetensors\n  \
train-encoder --dataset mnist --method cross-entropy --dim 128 --epochs 7 --evaluate -o ce.safetensors\n  \
train-encoder --dataset mnist --method ntxent --epochs 0 -o random.safetensors\n  \
train-encoder --dataset fashion-mnist --classes 0,1,2,3,4 --method triplet-ss -o fm5.safetensors"
)]
pub struct Args {
    /// Dataset to train on.
    #[arg(long, default_value = "mnist")]
    pub dataset: Dataset,
    /// Where the datasets are.
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Split to train on.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Which training images (--classes are relabelled 0.. in the given order).
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Architecture (default: lenet5 for grey images, resnet18 for colour).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Training method: cross-entropy, triplet-entropy, triplet-supervised, triplet-ss, ntxent.
    #[arg(long, default_value = "cross-entropy")]
    pub method: Method,
    /// Embedding dimension.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Optimizer: sgd (Nesterov momentum 0.9) or adam.
    #[arg(long, default_value = "adam")]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// Epochs (the paper: 7 for MNIST, 100 for CIFAR-10); 0 writes the random initialisation.
    #[arg(long, default_value_t = 7)]
    pub epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Batches whose gradients are summed before each optimizer step.
    #[arg(long, default_value_t = 8)]
    pub accumulate: usize,
    /// NT-Xent temperature.
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Triplet margin.
    #[arg(long, default_value_t = 0.5)]
    pub margin: f64,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Model id recorded in every artifact (default: the output file's stem).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Training log (default: <output without .safetensors>.log.parquet).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// After training, report the head's accuracy on this split (methods with a head).
    #[arg(long)]
    pub evaluate: bool,
    /// Split used by --evaluate.
    #[arg(long, default_value = "test")]
    pub eval_split: String,
    /// Output model file.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// The training images the arguments select.
fn training_data(args: &Args, data_dir: &std::path::Path) -> Result<ImageSet> {
    let mut data = args.selection.apply(load(
        args.dataset,
        data_dir,
        &args.split,
        &LoadOptions::default(),
    )?)?;
    if !args.selection.classes.is_empty() {
        // The head has one output per selected class: labels 0.. in the order given.
        data = data.keep_classes(&args.selection.classes);
    }
    if data.len() < 2 {
        bail!(
            "{} {}: only {} training images",
            args.dataset,
            args.split,
            data.len()
        );
    }
    Ok(data)
}

/// The model's id: --model-id, else the output file's name without `.safetensors`.
fn model_id(args: &Args) -> String {
    args.model_id.clone().unwrap_or_else(|| {
        let name = args
            .output
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        name.strip_suffix(".safetensors")
            .unwrap_or(&name)
            .to_string()
    })
}

/// The model's configuration from the arguments and the training data's shape.
fn model_config(args: &Args, data: &ImageSet) -> ModelConfig {
    let arch = args.arch.unwrap_or(if data.channels == 1 {
        Arch::Lenet5
    } else {
        Arch::Resnet18
    });
    let (mean, std) = dataset_normalisation(args.dataset.name(), data.channels);
    ModelConfig {
        model_id: model_id(args),
        arch,
        method: args.method,
        dim: args.dim,
        optimizer: args.optimizer,
        dataset: args.dataset.name().to_string(),
        epochs: args.epochs,
        seed: args.seed,
        channels: data.channels,
        height: data.height,
        width: data.width,
        mean,
        std,
        classes: data.n_classes().max(args.selection.classes.len()),
        batch_size: args.batch_size,
        accumulate: args.accumulate,
        learning_rate: args.lr,
        temperature: args.temperature,
        margin: args.margin,
    }
}

/// Trains `model` on `data` with a progress bar.
fn train_model(args: &Args, model: &Encoder, data: &ImageSet) -> Result<Vec<StepLog>> {
    let model_id = &model.config().model_id;
    let total = (args.epochs * data.len()) as u64;
    let bar = rmqm_cli::progress(Some(total), &format!("train {model_id}"), "images");
    let opts = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        accumulate: args.accumulate,
        seed: args.seed,
        optimizer: args.optimizer,
        learning_rate: args.lr,
        group_batches: true,
    };
    let logs = train(model, data, &opts, &mut |log| {
        bar.set_position(log.examples as u64);
        bar.set_message(format!(
            "train {model_id} epoch {} loss {:.4}",
            log.epoch + 1,
            log.loss
        ));
    })
    .with_context(|| format!("training {model_id}"))?;
    bar.finish_and_clear();
    Ok(logs)
}

/// The head's accuracy on --eval-split (None when the method has no head).
struct HeadAccuracy {
    accuracy: Option<f64>,
}

fn evaluate(args: &Args, model: &Encoder, data_dir: &std::path::Path) -> Result<HeadAccuracy> {
    let test = load(
        args.dataset,
        data_dir,
        &args.eval_split,
        &LoadOptions::default(),
    )?;
    let test = if args.selection.classes.is_empty() {
        test
    } else {
        test.keep_classes(&args.selection.classes)
    };
    let accuracy = model
        .classify_pixels(&test.pixels, test.len(), 512)?
        .map(|pred| {
            let correct = pred
                .iter()
                .zip(&test.labels)
                .filter(|(p, l)| **p as i32 == **l)
                .count();
            correct as f64 / test.len() as f64
        });
    Ok(HeadAccuracy { accuracy })
}

/// Writes the training log (one row per optimizer step) beside the model; returns its path.
fn write_log(
    args: &Args,
    argv: &[String],
    config: &ModelConfig,
    logs: &[StepLog],
    head: Option<&HeadAccuracy>,
) -> Result<PathBuf> {
    let log_path = args.log.clone().unwrap_or_else(|| {
        let s = args.output.to_string_lossy().to_string();
        PathBuf::from(format!(
            "{}.log.parquet",
            s.strip_suffix(".safetensors").unwrap_or(&s)
        ))
    });
    let table = Table::new()
        .with(
            "epoch",
            Column::I64(logs.iter().map(|l| l.epoch as i64).collect()),
        )
        .with(
            "step",
            Column::I64(logs.iter().map(|l| l.step as i64).collect()),
        )
        .with("loss", Column::F64(logs.iter().map(|l| l.loss).collect()))
        .with(
            "seconds",
            Column::F64(logs.iter().map(|l| l.seconds).collect()),
        )
        .with(
            "examples_per_second",
            Column::F64(logs.iter().map(|l| l.examples_per_second).collect()),
        );
    let mut prov = base_provenance("train-encoder", argv);
    for (k, v) in config.to_metadata() {
        if let Some(k) = k.strip_prefix("rmqm.")
            && k != "kind"
            && k != "version"
        {
            prov.set(k, v);
        }
    }
    prov.set(keys::KIND, "training-log")
        .set(keys::DATASET, args.dataset.name())
        .set(keys::SPLIT, &args.split);
    if let Some(a) = head.and_then(|h| h.accuracy) {
        prov.set("head_accuracy", a);
    }
    write_table(&Output::Path(log_path.clone()), &table, &prov)?;
    Ok(log_path)
}

/// Entry point.
pub fn run(argv: Vec<String>) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    let summary = Summary::start("train-encoder");
    if args.dim == 0 || args.batch_size == 0 || args.accumulate == 0 {
        bail!("--dim, --batch-size and --accumulate must be at least 1");
    }
    let data_dir = args.data_dir.data_dir.clone();
    let data = training_data(&args, &data_dir)?;
    let config = model_config(&args, &data);
    let model = Encoder::init(config.clone(), DType::F32, &rmqm_models::device(), true)?;
    let (logs, head) = rmqm_cli::on_workers(|| -> Result<_> {
        let logs = train_model(&args, &model, &data)?;
        let head = if args.evaluate {
            Some(evaluate(&args, &model, &data_dir)?)
        } else {
            None
        };
        Ok((logs, head))
    })?;
    model
        .save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let log_path = write_log(&args, &argv, &config, &logs, head.as_ref())?;

    let secs = summary.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        (args.epochs * data.len()) as f64 / secs
    } else {
        0.0
    };
    let last = logs
        .last()
        .map(|l| format!(", final loss {:.4}", l.loss))
        .unwrap_or_default();
    let eval_note = match head.map(|h| h.accuracy) {
        None => String::new(),
        Some(Some(a)) => format!(
            ", head accuracy on {} {}: {a:.4}",
            args.dataset, args.eval_split
        ),
        Some(None) => format!(", no head to evaluate ({} has none)", args.method),
    };
    summary.finish(&format!(
        "{}: {} {} dim {} {} on {} {} ({} images) for {} epochs ({rate:.0} images/s){last}{eval_note}; wrote {} and {}",
        config.model_id,
        config.arch,
        args.method,
        args.dim,
        args.optimizer,
        args.dataset,
        args.split,
        rmqm_cli::thousands(data.len() as u64),
        args.epochs,
        args.output.display(),
        log_path.display()
    ));
    Ok(())
}
