//! `alter`: sequentially stronger alterations of a dataset's images (white noise or PGD), written as
//! an altered-image stream: for every image, steps 0..=J (0 = clean), rows sorted by (image_id, step).

use anyhow::{Context, Result, bail};
use candle_core::DType;
use clap::Parser;
use rayon::prelude::*;
use rmqm_alter::{
    NoiseConfig, NoiseDirection, PgdConfig, PgdStep, PgdWalk, noise_image, pgd_batch,
};
use rmqm_artifacts::{Output, VectorBatchBuilder, VectorKind, VectorWriter, keys};
use rmqm_cli::{Stdio, Summary, base_provenance};
use rmqm_data::{Dataset, ImageSet, LoadOptions, load};
use rmqm_models::Encoder;
use std::path::PathBuf;

/// The alteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlterMethod {
    /// White noise of growing variance (needs no model).
    Noise,
    /// PGD with the model's own loss (needs --model).
    Pgd,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v = match s.split_once('/') {
        Some((a, b)) => a
            .trim()
            .parse::<f64>()
            .ok()
            .zip(b.trim().parse::<f64>().ok())
            .map(|(a, b)| a / b),
        None => s.trim().parse().ok(),
    };
    v.filter(|x: &f64| x.is_finite())
        .ok_or_else(|| format!("not a number: {s:?}"))
}

/// Command-line arguments of `alter`.
#[derive(Debug, Parser)]
#[command(
    name = "alter",
    version,
    about = "Sequentially stronger alterations of test images: white noise or PGD",
    long_about = "Writes, for every selected image, steps 0..J of an alteration (step 0 = the clean image) as \
an altered-image stream (Parquet, or Arrow IPC on stdout with -o -). Noise: x_ij = clip(x_i + a_ij, 0, 1), \
a_ij ~ N(0, eps_j^2), eps_j = eps_max j / J; each (image id, step) draws from its own seeded stream, so the \
noise is identical whatever the batch size, subset, thread count or model. PGD: x_j = clip(x_(j-1) + alpha \
sign(grad L), 0, 1) with L the model's own training loss, gradients with respect to the input only.",
    after_help = "Examples:\n  alter --method noise --dataset mnist --data-dir ../shared/data --split test --limit 1000 -o noise.parquet\n  \
alter --method pgd --model m.safetensors --dataset mnist --limit 1000 -o pgd.parquet\n  \
alter --method noise --dataset mnist --limit 1000 -o - | embed --model m.safetensors -o traj.parquet"
)]
pub struct Args {
    /// noise or pgd.
    #[arg(long, value_enum)]
    pub method: AlterMethod,
    /// Dataset whose images are altered.
    #[arg(long, default_value = "mnist")]
    pub dataset: Dataset,
    /// Folder holding the datasets (default: $DATA_DIR, then data/).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Split (default: the dataset's held-out split).
    #[arg(long)]
    pub split: Option<String>,
    /// Only the first N images of the split (the paper walks the whole test set).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these image ids (indices in the split's source order), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<u32>,
    /// Only images of these classes (labels kept), comma separated; applied before --limit.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<i32>,
    /// J, the number of steps after the clean image (default 100 for noise, 30 for PGD).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Noise: eps at step J.
    #[arg(long, default_value_t = 1.0)]
    pub eps_max: f64,
    /// Noise: fresh (a new draw every step) or fixed (one direction, a straight ray).
    #[arg(long, default_value = "fresh")]
    pub direction: NoiseDirection,
    /// PGD: the model to attack.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PGD: step size, a number or a fraction.
    #[arg(long, default_value = "2/255", value_parser = parse_fraction)]
    pub alpha: f64,
    /// PGD: sign (default) or raw gradient steps.
    #[arg(long, default_value = "sign")]
    pub step: PgdStep,
    /// PGD: continue (each level extends the previous) or restart (level j = j iterations from clean).
    #[arg(long, default_value = "continue")]
    pub walk: PgdWalk,
    /// PGD: project onto the L-infinity ball of this radius around the clean image.
    #[arg(long)]
    pub radius: Option<f64>,
    /// Images processed together.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of the noise (and of PGD's augmented views).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Output stream: a Parquet file, or - for Arrow IPC on stdout.
    #[arg(short, long, value_parser = rmqm_cli::parse_output)]
    pub output: Output,
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

/// Selects images by --ids (every id must exist), --classes, then --limit.
fn select(set: ImageSet, ids: &[u32], classes: &[i32], limit: Option<usize>) -> Result<ImageSet> {
    let set = if classes.is_empty() {
        set
    } else {
        let keep: Vec<usize> = (0..set.len())
            .filter(|&i| classes.contains(&set.labels[i]))
            .collect();
        set.select(&keep)
    };
    let mut set = if ids.is_empty() {
        set
    } else {
        let mut idx = Vec::with_capacity(ids.len());
        for &id in ids {
            match set.ids.iter().position(|&x| x == id) {
                Some(i) => idx.push(i),
                None => bail!(
                    "{} {}: unknown image id {id} (ids are 0..{})",
                    set.dataset,
                    set.split,
                    set.len()
                ),
            }
        }
        idx.sort_unstable();
        idx.dedup();
        set.select(&idx)
    };
    if let Some(n) = limit {
        set.truncate(n);
    }
    Ok(set)
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, mut stdio: Stdio) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    rmqm_cli::init_threads(args.threads);
    let summary = Summary::start("alter");
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(rmqm_data::default_data_dir);
    let split = args
        .split
        .clone()
        .unwrap_or_else(|| args.dataset.default_split().to_string());
    let set = select(
        load(args.dataset, &data_dir, &split, &LoadOptions::default())?,
        &args.ids,
        &args.classes,
        args.limit,
    )?;
    if set.is_empty() {
        bail!("no images selected");
    }
    let steps = args.steps.unwrap_or(match args.method {
        AlterMethod::Noise => 100,
        AlterMethod::Pgd => 30,
    });
    if steps < 2 {
        bail!("--steps must be at least 2 (the spike metrics need steps 0..2)");
    }
    if steps > u16::MAX as usize {
        bail!("--steps must fit the step column (at most {})", u16::MAX);
    }
    let batch = args.batch_size.max(1);
    let (c, h, w) = (set.channels, set.height, set.width);
    let size = set.image_size();

    let mut prov = base_provenance("alter", &argv);
    prov.set(keys::KIND, "altered")
        .set(keys::DATASET, args.dataset.name())
        .set(keys::SPLIT, &split)
        .set(keys::SEED, args.seed)
        .set(keys::STEPS, steps)
        .set(keys::CHANNELS, c)
        .set(keys::HEIGHT, h)
        .set(keys::WIDTH, w);
    let model = match args.method {
        AlterMethod::Noise => {
            prov.set(keys::ALTERATION, "noise")
                .set("eps_max", args.eps_max)
                .set("direction", args.direction);
            None
        }
        AlterMethod::Pgd => {
            let path = args.model.as_ref().context("--method pgd needs --model")?;
            let model = Encoder::load(path, DType::F32, &rmqm_models::device(), false)
                .map_err(anyhow::Error::msg)?;
            let mc = model.config();
            if (mc.channels, mc.height, mc.width) != (c, h, w) {
                bail!(
                    "{}: the model takes {}x{}x{} images but {} {split} has {c}x{h}x{w}",
                    path.display(),
                    mc.channels,
                    mc.height,
                    mc.width,
                    args.dataset
                );
            }
            for (k, v) in mc.to_metadata() {
                if let Some(k) = k.strip_prefix("rmqm.") {
                    if !matches!(
                        k,
                        "kind" | "version" | "seed" | "epochs" | "channels" | "height" | "width"
                    ) {
                        prov.set(k, v);
                    }
                }
            }
            prov.set(keys::EPOCHS, mc.epochs)
                .set(keys::ALTERATION, "pgd")
                .set("alpha", args.alpha)
                .set("pgd_step", args.step)
                .set("walk", args.walk)
                .set(
                    "radius",
                    args.radius.map_or("none".to_string(), |r| r.to_string()),
                );
            Some(model)
        }
    };
    let stdout = stdio.take_stdout();
    let mut writer = VectorWriter::create_with_stdout(
        &args.output,
        VectorKind::Pixels,
        size,
        &prov,
        move || stdout,
    )?;
    let bar = rmqm_cli::progress(
        Some(set.len() as u64),
        &format!("alter {}", prov.get(keys::ALTERATION).unwrap_or("")),
        "images",
    );
    let noise = NoiseConfig {
        steps,
        eps_max: args.eps_max,
        direction: args.direction,
        seed: args.seed,
    };
    let pgd = PgdConfig {
        steps,
        alpha: args.alpha,
        step: args.step,
        walk: args.walk,
        radius: args.radius,
        seed: args.seed,
    };
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let mut out = VectorBatchBuilder::new(size, (end - start) * (steps + 1));
        match &model {
            None => {
                let per_image: Vec<Vec<Vec<f32>>> = (start..end)
                    .into_par_iter()
                    .map(|i| {
                        (0..=steps)
                            .map(|j| noise_image(set.image(i), set.ids[i], j, &noise))
                            .collect()
                    })
                    .collect();
                for (k, rows) in per_image.iter().enumerate() {
                    let i = start + k;
                    for (j, row) in rows.iter().enumerate() {
                        out.push(
                            set.ids[i],
                            set.labels[i],
                            j as u16,
                            noise.epsilon(j) as f32,
                            row,
                        );
                    }
                }
            }
            Some(m) => {
                let clean = &set.pixels[start * size..end * size];
                let labels: Vec<i64> = set.labels[start..end].iter().map(|&l| l as i64).collect();
                let levels = pgd_batch(m, clean, &labels, &set.ids[start..end], &pgd)
                    .with_context(|| format!("PGD on images {start}..{end}"))?;
                for k in 0..end - start {
                    let i = start + k;
                    for (j, level) in levels.iter().enumerate() {
                        out.push(
                            set.ids[i],
                            set.labels[i],
                            j as u16,
                            (args.alpha * j as f64) as f32,
                            &level[k * size..(k + 1) * size],
                        );
                    }
                }
            }
        }
        writer.write(&out.finish())?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let rows = writer.finish()?;
    let secs = summary.elapsed().as_secs_f64().max(1e-9);
    summary.finish(&format!(
        "{} {} of {} {split} images x {} steps = {} rows ({:.0} images/s); wrote {}",
        prov.get(keys::ALTERATION).unwrap_or(""),
        if model.is_some() {
            format!("walk ({})", args.walk)
        } else {
            format!("({}, eps_max {})", args.direction, args.eps_max)
        },
        rmqm_cli::thousands(set.len() as u64),
        steps + 1,
        rmqm_cli::thousands(rows as u64),
        set.len() as f64 / secs,
        args.output
    ));
    Ok(())
}
