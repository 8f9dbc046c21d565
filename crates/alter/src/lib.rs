//! `alter`: sequentially stronger alterations of a dataset's images (white noise, PGD, augmented
//! views), written as an altered-image stream, or with `--emit embeddings` as a model's
//! trajectories: for every image, steps 0..=J (0 = clean), rows sorted by (image_id, step).

use anyhow::{Context, Result, bail};
use candle_core::DType;
use clap::Parser;
use rayon::prelude::*;
use rmqm_alter::{
    AugmentConfig, NoiseConfig, NoiseDirection, PgdConfig, PgdStep, PgdWalk, augment_view,
    noise_image, pgd_walk,
};
use rmqm_artifacts::{Output, VectorBatch, VectorBatchBuilder, VectorKind, VectorWriter, keys};
use rmqm_cli::{
    DataDirArg, EMBED_PASS_ROWS, SelectionArgs, Stdio, Summary, ThreadsArg, base_provenance,
};
use rmqm_data::{Dataset, ImageSet, LoadOptions, load};
use rmqm_models::Encoder;
use rmqm_vocab::Alteration;
use std::ops::Range;
use std::path::PathBuf;

/// The alteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlterMethod {
    /// White noise of growing variance (needs no model).
    Noise,
    /// PGD with the model's own loss (needs --model).
    Pgd,
    /// Q views of each image from the training augmentation (needs no model; LiDAR's input).
    Augment,
    /// The images themselves (step 0 only): a dataset split as pixels, for encoders outside rmqm.
    Clean,
}

/// A named set of PGD settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PgdPreset {
    /// The authors' public code: level j restarts j iterations from the clean image, projected
    /// onto the L-infinity ball of radius 0.3, step 2/255 on grey images (MNIST) and 1/255 on
    /// colour images (CIFAR-10); recorded as the alteration `pgd-reference`.
    Reference,
}

/// The rows of `embed`'s last forward pass over `rows` rows (passes of [`EMBED_PASS_ROWS`]) when
/// they are fewer than the `needed` of a row-invariant product; `None` when every pass has enough.
fn short_last_pass(rows: usize, needed: usize) -> Option<usize> {
    let last = rows % EMBED_PASS_ROWS;
    (last > 0 && last < needed).then_some(last)
}

/// With `--emit embeddings`, warns when `embed` would forward the same `rows` rows with a last pass
/// too short for row-invariant products, where `alter | embed` would differ in the last bits.
fn warn_of_a_short_embed_pass(run: &Run, rows: usize) {
    let Some(model) = run.embedding_model() else {
        return;
    };
    let needed = model.row_invariant_rows();
    if let Some(last) = short_last_pass(rows, needed) {
        eprintln!(
            "alter: warning: {rows} rows leave embed a last forward pass of {last} rows (passes of \
{EMBED_PASS_ROWS}), fewer than the {needed} a row-invariant product needs at dim {}: alter | embed \
would differ from these embeddings in the last bits of those rows",
            model.config().dim
        );
    }
}

/// What a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The altered images: an altered-image stream, `embed`'s input.
    Images,
    /// The embeddings of every row by `--model`: the trajectories `alter | embed --model` (the
    /// same model) writes, bit for bit while embed's passes have the rows a row-invariant product
    /// needs. PGD takes them from its own forward passes (a third less CPU); the other walks embed
    /// their images as they make them, never encoding or decoding them.
    Embeddings,
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
an altered-image stream (Parquet, or Arrow IPC on stdout with -o -), or with --emit embeddings the embeddings \
of those images by --model, as alter | embed --model writes them. Noise: x_ij = clip(x_i + a_ij, 0, 1), \
a_ij ~ N(0, eps_j^2), eps_j = eps_max j / J; each (image id, step) draws from its own seeded stream, so the \
noise is identical whatever the batch size, subset, thread count or model. PGD: x_j = clip(x_(j-1) + alpha \
sign(grad L), 0, 1) with L the model's own training loss (the relative weights of its terms as in \
training), gradients with respect to the input only. Augment: step 0 the clean image, steps 1..Q views \
drawn with the training augmentation of the data's kind, each from a stream keyed by (seed, image id, view); \
epsilon is 0 for the clean image and 1 for every view.",
    after_help = "Examples:\n  alter --method noise --dataset mnist --data-dir ../shared/data --split test --limit 1000 -o noise.parquet\n  \
alter --method pgd --model m.safetensors --dataset mnist --limit 1000 -o pgd.parquet\n  \
alter --method pgd --preset reference --model m.safetensors --dataset mnist --limit 1000 -o pgd-ref.parquet\n  \
alter --method pgd --model m.safetensors --emit embeddings --limit 1000 -o - | manifold-stats - -o pgd-stats.parquet\n  \
alter --method augment --views 10 --dataset mnist --limit 1000 -o - | embed --model m.safetensors -o - | manifold-stats - -o lidar.parquet\n  \
alter --method noise --dataset mnist --limit 1000 -o - | embed --model m.safetensors -o traj.parquet\n  \
alter --method noise --model m.safetensors --emit embeddings --limit 1000 -o traj.parquet   # the same, in one process\n  \
alter --method clean --dataset kmnist --split test -o kmnist-pixels.parquet   # for an encoder outside rmqm"
)]
pub struct Args {
    /// noise, pgd, augment, or clean (the images alone).
    #[arg(long, value_enum)]
    pub method: AlterMethod,
    /// Dataset whose images are altered.
    #[arg(long, default_value = "mnist")]
    pub dataset: Dataset,
    /// Where the datasets are.
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Split (default: the dataset's held-out split).
    #[arg(long)]
    pub split: Option<String>,
    /// Which images (labels kept; the paper walks the whole test set).
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// J, the number of steps after the clean image (default 100 for noise, 30 for PGD).
    #[arg(long, conflicts_with = "views")]
    pub steps: Option<usize>,
    /// Augment: Q, the number of views per image (steps 1..=Q).
    #[arg(long)]
    pub views: Option<usize>,
    /// Noise: eps at step J.
    #[arg(long, default_value_t = 1.0)]
    pub eps_max: f64,
    /// Noise: fresh (a new draw every step) or fixed (one direction, a straight ray).
    #[arg(long, default_value = "fresh")]
    pub direction: NoiseDirection,
    /// PGD: the model to attack. With --emit embeddings, the model whose embeddings are written
    /// (for PGD the attacked one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PGD: a named set of settings instead of --alpha, --walk and --radius.
    #[arg(long, value_enum, conflicts_with_all = ["alpha", "walk", "radius", "step"])]
    pub preset: Option<PgdPreset>,
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
    /// images (an altered-image stream), or embeddings by --model (its trajectories, as
    /// `alter | embed` with the same model writes them: bit for bit while embed's forward passes,
    /// its last one included, have the rows a row-invariant product needs, for lenet5 17 at dim 16,
    /// 9 at 32, 5 at 64, 3 at 128, 2 from 256 (33 at 8, 129 at 2); a warning names a last pass
    /// that falls short).
    #[arg(long, value_enum, default_value = "images")]
    pub emit: Emit,
    /// Images processed together.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of the noise, of the augment walk's views and of PGD's augmented views.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Output stream: a Parquet file, or - for Arrow IPC on stdout.
    #[arg(short, long, value_parser = rmqm_cli::parse_output)]
    pub output: Output,
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

/// The walk a run makes, with its settings.
enum Walk {
    /// White noise of growing variance.
    Noise(NoiseConfig),
    /// PGD on a model's own loss; `name` is the alteration recorded (pgd or pgd-reference);
    /// `embed`: write the model's embeddings of the levels instead of the images.
    Pgd {
        model: Box<Encoder>,
        config: PgdConfig,
        name: Alteration,
        embed: bool,
    },
    /// Views of the training augmentation.
    Augment(AugmentConfig),
    /// The clean images only.
    Clean,
}

impl Walk {
    /// The walk the arguments ask for, checked against the images' shape.
    fn from_args(args: &Args, set: &ImageSet) -> Result<Walk> {
        if args.method != AlterMethod::Augment && args.views.is_some() {
            bail!("--views is for --method augment (use --steps for noise and PGD)");
        }
        if args.method != AlterMethod::Pgd && args.preset.is_some() {
            bail!("--preset is for --method pgd");
        }
        if args.method != AlterMethod::Pgd && args.emit == Emit::Images && args.model.is_some() {
            bail!(
                "--model is for --method pgd, or with --emit embeddings for the model that embeds the rows"
            );
        }
        if args.method == AlterMethod::Clean {
            if args.steps.is_some() {
                bail!("--method clean writes step 0 only: it takes no --steps");
            }
            return Ok(Walk::Clean);
        }
        let steps = match args.method {
            AlterMethod::Clean => 0,
            AlterMethod::Noise => args.steps.unwrap_or(100),
            AlterMethod::Pgd => args.steps.unwrap_or(30),
            AlterMethod::Augment => {
                if args.steps.is_some() {
                    bail!("--method augment takes --views, not --steps");
                }
                args.views.unwrap_or(10)
            }
        };
        if args.method == AlterMethod::Augment && steps < 2 {
            bail!("--views must be at least 2 (LiDAR needs a within-image covariance)");
        }
        if steps < 2 {
            bail!("--steps must be at least 2 (the spike metrics need steps 0..2)");
        }
        if steps > u16::MAX as usize {
            bail!("--steps must fit the step column (at most {})", u16::MAX);
        }
        Ok(match args.method {
            AlterMethod::Clean => Walk::Clean,
            AlterMethod::Noise => Walk::Noise(NoiseConfig {
                steps,
                eps_max: args.eps_max,
                direction: args.direction,
                seed: args.seed,
            }),
            AlterMethod::Augment => Walk::Augment(AugmentConfig {
                views: steps,
                seed: args.seed,
            }),
            AlterMethod::Pgd => {
                let path = args.model.as_ref().context("--method pgd needs --model")?;
                let model = load_model(path, set)?;
                let c = set.channels;
                let (config, name) = match args.preset {
                    None => (
                        PgdConfig {
                            steps,
                            alpha: args.alpha,
                            step: args.step,
                            walk: args.walk,
                            radius: args.radius,
                            seed: args.seed,
                        },
                        Alteration::Pgd,
                    ),
                    Some(PgdPreset::Reference) => (
                        PgdConfig {
                            steps,
                            alpha: if c == 1 { 2.0 / 255.0 } else { 1.0 / 255.0 },
                            step: PgdStep::Sign,
                            walk: PgdWalk::Restart,
                            radius: Some(0.3),
                            seed: args.seed,
                        },
                        Alteration::PgdReference,
                    ),
                };
                Walk::Pgd {
                    model: Box::new(model),
                    config,
                    name,
                    embed: args.emit == Emit::Embeddings,
                }
            }
        })
    }

    /// J: the steps after the clean image.
    fn steps(&self) -> usize {
        match self {
            Walk::Noise(n) => n.steps,
            Walk::Pgd { config, .. } => config.steps,
            Walk::Augment(a) => a.views,
            Walk::Clean => 0,
        }
    }

    /// PGD's model when the walk embeds its own levels (`--emit embeddings`), else `None`.
    fn embedding_model(&self) -> Option<&Encoder> {
        match self {
            Walk::Pgd {
                model, embed: true, ..
            } => Some(model),
            _ => None,
        }
    }

    /// Values per row the walk makes: PGD's model's dim when it embeds its own levels, else the
    /// image size (a row embedder replaces them after).
    fn row_width(&self, set: &ImageSet) -> usize {
        self.embedding_model()
            .map_or(set.image_size(), |m| m.config().dim)
    }

    /// The alteration recorded in the output's metadata.
    fn alteration(&self) -> Alteration {
        match self {
            Walk::Noise(_) => Alteration::Noise,
            Walk::Pgd { name, .. } => *name,
            Walk::Augment(_) => Alteration::Augment,
            Walk::Clean => Alteration::Clean,
        }
    }

    /// The walk's own metadata keys.
    fn describe(&self, prov: &mut rmqm_artifacts::Provenance) {
        prov.set(keys::ALTERATION, self.alteration().name());
        match self {
            Walk::Noise(n) => {
                prov.set("eps_max", n.eps_max).set("direction", n.direction);
            }
            Walk::Augment(a) => {
                prov.set("views", a.views)
                    .set("epsilon", "0 for the clean image, 1 for every view");
            }
            Walk::Clean => {}
            Walk::Pgd { model, config, .. } => {
                let mc = model.config();
                for (k, v) in mc.to_metadata() {
                    if let Some(k) = k.strip_prefix("rmqm.")
                        && !matches!(
                            k,
                            "kind"
                                | "version"
                                | "seed"
                                | "epochs"
                                | "channels"
                                | "height"
                                | "width"
                        )
                    {
                        prov.set(k, v);
                    }
                }
                prov.set(keys::EPOCHS, mc.epochs)
                    .set("alpha", config.alpha)
                    .set("pgd_step", config.step)
                    .set("walk", config.walk)
                    .set(
                        "radius",
                        config.radius.map_or("none".to_string(), |r| r.to_string()),
                    );
            }
        }
    }

    /// The rows of images `range` of `set`: every image's steps 0..=J, in (image_id, step) order.
    fn rows(&self, set: &ImageSet, range: Range<usize>) -> Result<VectorBatch> {
        let size = set.image_size();
        let shape = (set.channels, set.height, set.width);
        let steps = self.steps();
        let mut out = VectorBatchBuilder::new(self.row_width(set), range.len() * (steps + 1));
        match self {
            Walk::Noise(noise) => {
                let images = per_image(range.clone(), steps, |i, j| {
                    noise_image(set.image(i), set.ids[i], j, noise)
                });
                push_rows(
                    &mut out,
                    set,
                    range,
                    steps,
                    |j| noise.epsilon(j),
                    |k, j| &images[k][j][..],
                );
            }
            Walk::Augment(aug) => {
                let images = per_image(range.clone(), steps, |i, j| {
                    augment_view(set.image(i), set.ids[i], j, shape, aug)
                });
                push_rows(
                    &mut out,
                    set,
                    range,
                    steps,
                    |j| aug.epsilon(j),
                    |k, j| &images[k][j][..],
                );
            }
            Walk::Clean => {
                let first = range.start;
                push_rows(
                    &mut out,
                    set,
                    range,
                    0,
                    |_| 0.0,
                    |k, _| set.image(first + k),
                );
            }
            Walk::Pgd {
                model,
                config,
                embed,
                ..
            } => {
                let clean = &set.pixels[range.start * size..range.end * size];
                let labels: Vec<i64> = set.labels[range.clone()]
                    .iter()
                    .map(|&l| l as i64)
                    .collect();
                let walked = pgd_walk(
                    model,
                    clean,
                    &labels,
                    &set.ids[range.clone()],
                    config,
                    *embed,
                )
                .with_context(|| format!("PGD on images {}..{}", range.start, range.end))?;
                let (levels, width) = if *embed {
                    (&walked.embeddings, model.config().dim)
                } else {
                    (&walked.images, size)
                };
                push_rows(
                    &mut out,
                    set,
                    range,
                    steps,
                    |j| config.alpha * j as f64,
                    |k, j| &levels[j][k * width..(k + 1) * width],
                );
            }
        }
        Ok(out.finish())
    }
}

/// What a run makes: the walk, and for a noise, augment or clean walk that writes embeddings
/// (`--emit embeddings`), the model that embeds its rows (PGD embeds its levels itself).
struct Run {
    /// The alteration and its settings.
    walk: Walk,
    /// Embeds the rows the walk makes, as `embed` would.
    row_embedder: Option<Box<Encoder>>,
}

impl Run {
    /// The run the arguments ask for, checked against the images' shape.
    fn from_args(args: &Args, set: &ImageSet) -> Result<Run> {
        let walk = Walk::from_args(args, set)?;
        let row_embedder = if args.emit == Emit::Embeddings && args.method != AlterMethod::Pgd {
            let path = args
                .model
                .as_ref()
                .context("--emit embeddings needs --model (the model that embeds the rows)")?;
            Some(Box::new(load_model(path, set)?))
        } else {
            None
        };
        Ok(Run { walk, row_embedder })
    }

    /// The model whose embeddings the run writes instead of images, if any.
    fn embedding_model(&self) -> Option<&Encoder> {
        self.walk.embedding_model().or(self.row_embedder.as_deref())
    }

    /// Values per output row: the model's dim when writing embeddings, else the image size.
    fn row_width(&self, set: &ImageSet) -> usize {
        self.embedding_model()
            .map_or(set.image_size(), |m| m.config().dim)
    }

    /// Writes the output rows of every image of `set`, `batch` images at a time, calling
    /// `done(images)` after each batch. The walk's rows are made and written in turn; with a row
    /// embedder, each batch's images are made on threads of their own (one per
    /// [`EMBEDDING_OVER_DRAWING`] workers, at least one) while the previous batch is embedded,
    /// one batch ahead, so drawing the noise does not add to the wall time.
    fn write_all(
        &self,
        set: &ImageSet,
        batch: usize,
        writer: &mut VectorWriter,
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<()> {
        let batches = (0..set.len())
            .step_by(batch)
            .map(move |start| start..(start + batch).min(set.len()));
        let Some(model) = &self.row_embedder else {
            return rmqm_cli::on_workers(|| {
                for range in batches {
                    let images = range.len();
                    writer.write(&self.walk.rows(set, range)?)?;
                    done(images);
                }
                Ok(())
            });
        };
        std::thread::scope(|scope| {
            // A rendezvous: the next batch is made while one is embedded, and handed over when
            // the embedding side takes it (one batch ahead, not more).
            let (made, to_embed) = std::sync::mpsc::sync_channel::<Result<(usize, VectorBatch)>>(0);
            let makers = rayon::current_num_threads().div_ceil(EMBEDDING_OVER_DRAWING);
            scope.spawn(move || {
                let maker = match rayon::ThreadPoolBuilder::new().num_threads(makers).build() {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _ =
                            made.send(Err(anyhow::anyhow!("a thread for the walk's images: {e}")));
                        return;
                    }
                };
                for range in batches {
                    let images = range.len();
                    let rows = maker.install(|| self.walk.rows(set, range));
                    let failed = rows.is_err();
                    // A closed channel: the embedding side stopped on an error of its own.
                    if made.send(rows.map(|r| (images, r))).is_err() || failed {
                        return;
                    }
                }
            });
            rmqm_cli::on_workers(move || {
                for batch in to_embed {
                    let (images, rows) = batch?;
                    let embeddings = embed_rows(model, &rows.values, rows.len())?;
                    writer.write(&rows.with_values(embeddings, model.config().dim))?;
                    done(images);
                }
                Ok(())
            })
        })
    }
}

/// Embedding a noise walk's images takes about this many times the CPU of drawing them: 48 s
/// against 7 s for the MNIST walk (10,000 images x 101 steps, lenet5, one thread; perf profiles of
/// `embed` and `alter --method noise`; the augment walk's views cost about three times more to
/// draw). A run with a row embedder draws on one thread per that many workers.
const EMBEDDING_OVER_DRAWING: usize = 7;

/// The embeddings of `n` images in `embed`'s forward passes of [`EMBED_PASS_ROWS`] rows, a last
/// shorter pass padded to the rows a row-invariant product needs: each embedding equals the one
/// `embed` writes for the same image whenever embed's own passes have those rows.
fn embed_rows(model: &Encoder, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
    let size = pixels.len() / n.max(1);
    let full = n / EMBED_PASS_ROWS * EMBED_PASS_ROWS;
    let mut out = model.embed_pixels(&pixels[..full * size], full, EMBED_PASS_ROWS)?;
    if full < n {
        out.extend(model.embed_pixels_padded(&pixels[full * size..], n - full)?);
    }
    Ok(out)
}

/// The model at `path`, checked against the images' shape.
fn load_model(path: &std::path::Path, set: &ImageSet) -> Result<Encoder> {
    let model = Encoder::load(path, DType::F32, &rmqm_models::device(), false)?;
    model
        .config()
        .check_image_shape((set.channels, set.height, set.width))
        .map_err(|e| anyhow::anyhow!("{}: {e} ({} {})", path.display(), set.dataset, set.split))?;
    Ok(model)
}

/// Steps 0..=J of every image in `range` (`image_step(i, j)`), in parallel over images.
fn per_image(
    range: Range<usize>,
    steps: usize,
    image_step: impl Fn(usize, usize) -> Vec<f32> + Sync,
) -> Vec<Vec<Vec<f32>>> {
    range
        .into_par_iter()
        .map(|i| (0..=steps).map(|j| image_step(i, j)).collect())
        .collect()
}

/// Appends steps 0..=J of every image in `range`, image by image; `row(k, j)` is step j of the
/// range's k-th image.
fn push_rows<'a>(
    out: &mut VectorBatchBuilder,
    set: &ImageSet,
    range: Range<usize>,
    steps: usize,
    epsilon: impl Fn(usize) -> f64,
    row: impl Fn(usize, usize) -> &'a [f32],
) {
    for (k, i) in range.enumerate() {
        for j in 0..=steps {
            out.push(
                set.ids[i],
                set.labels[i],
                j as u16,
                epsilon(j) as f32,
                row(k, j),
            );
        }
    }
}

/// The output's metadata: the walk's facts; for an altered-image stream the images' shape, for
/// embeddings the keys `embed` writes on a trajectories stream (the model's facts, its seed, the
/// attacked model).
fn output_provenance(
    argv: &[String],
    args: &Args,
    set: &ImageSet,
    run: &Run,
) -> rmqm_artifacts::Provenance {
    let walk = &run.walk;
    let mut prov = base_provenance("alter", argv);
    prov.set(keys::DATASET, args.dataset.name())
        .set(keys::SPLIT, &set.split)
        .set(keys::SEED, args.seed)
        .set(keys::STEPS, walk.steps());
    walk.describe(&mut prov);
    match (walk.embedding_model(), &run.row_embedder) {
        (Some(model), _) => {
            let mc = model.config();
            prov.set(keys::KIND, "trajectories")
                .set("altered_with_model", &mc.model_id)
                .set("model_seed", mc.seed);
        }
        (None, Some(model)) => {
            // the keys embed writes on this walk's trajectories
            prov.set(keys::KIND, "trajectories");
            for (k, v) in model.config().embedding_facts() {
                prov.set(&k, v);
            }
        }
        (None, None) => {
            prov.set(keys::KIND, "altered")
                .set(keys::CHANNELS, set.channels)
                .set(keys::HEIGHT, set.height)
                .set(keys::WIDTH, set.width);
        }
    }
    prov
}

/// Loads the split the arguments name and selects its images.
fn load_images(args: &Args) -> Result<ImageSet> {
    let split = args
        .split
        .clone()
        .unwrap_or_else(|| args.dataset.default_split().to_string());
    let set = args.selection.apply(load(
        args.dataset,
        &args.data_dir.data_dir,
        &split,
        &LoadOptions::default(),
    )?)?;
    if set.is_empty() {
        bail!("no images selected");
    }
    Ok(set)
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, mut stdio: Stdio) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    rmqm_cli::check_binary_output(&args.output, &stdio)?;
    let summary = Summary::start("alter");
    let set = load_images(&args)?;
    let run = Run::from_args(&args, &set)?;
    let walk = &run.walk;
    let steps = walk.steps();
    warn_of_a_short_embed_pass(&run, set.len() * (steps + 1));

    let prov = output_provenance(&argv, &args, &set, &run);
    let kind = match run.embedding_model() {
        Some(_) => VectorKind::Embedding,
        None => VectorKind::Pixels,
    };
    let stdout = stdio.take_stdout();
    let mut writer = VectorWriter::create_with_stdout(
        &args.output,
        kind,
        run.row_width(&set),
        &prov,
        move || stdout,
    )?;
    let bar = rmqm_cli::progress(
        Some(set.len() as u64),
        &format!("alter {}", walk.alteration()),
        "images",
    );
    let batch = args.batch_size.max(1);
    run.write_all(&set, batch, &mut writer, &|images| bar.inc(images as u64))?;
    bar.finish_and_clear();
    let rows = writer.finish()?;

    let secs = summary.elapsed().as_secs_f64().max(1e-9);
    let what = match walk {
        Walk::Noise(n) => format!("({}, eps_max {})", n.direction, n.eps_max),
        Walk::Pgd { config, .. } => format!("walk ({})", config.walk),
        Walk::Augment(a) => format!("walk ({} views)", a.views),
        Walk::Clean => "images".into(),
    };
    let rows_are = match run.embedding_model() {
        Some(m) => format!(" of {} embeddings", m.config().model_id),
        None => String::new(),
    };
    summary.finish(&format!(
        "{} {what} of {} {} images x {} steps = {} rows{rows_are} ({:.0} images/s); wrote {}",
        walk.alteration(),
        rmqm_cli::thousands(set.len() as u64),
        set.split,
        steps + 1,
        rmqm_cli::thousands(rows as u64),
        set.len() as f64 / secs,
        args.output
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_embed_pass_too_short_for_row_invariant_products_is_named() {
        // The MNIST grid's PGD walk: 10,000 x 31 rows, a last pass of 240.
        assert_eq!(short_last_pass(310_000, 17), None);
        assert_eq!(short_last_pass(512, 17), None);
        assert_eq!(short_last_pass(272, 17), Some(16));
        assert_eq!(short_last_pass(223 * 31, 17), Some(1));
        assert_eq!(short_last_pass(272, 16), None);
    }
}
