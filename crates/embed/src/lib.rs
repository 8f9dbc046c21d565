//! `embed`: pushes images through an encoder. From an altered-image stream it writes trajectories
//! (the same keys, an embedding per row); from a dataset split it writes that split's embeddings.
//! Streams batch by batch: memory is bounded by the batch size.

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;
use rmqm_artifacts::{
    Input, Output, Provenance, VectorBatch, VectorKind, VectorReader, VectorWriter, keys,
};
use rmqm_cli::{DataDirArg, SelectionArgs, Stdio, Summary, ThreadsArg, base_provenance};
use rmqm_data::{Dataset, ImageSet, LoadOptions, load};
use rmqm_models::{Encoder, ModelConfig};
use std::path::PathBuf;

/// Command-line arguments of `embed`.
#[derive(Debug, Parser)]
#[command(
    name = "embed",
    version,
    about = "Embed clean or altered images with an encoder; store embeddings or trajectories",
    long_about = "Reads an altered-image stream (Parquet, or Arrow IPC on stdin with --input -) and writes \
trajectories: every row's raw embedding under the same image_id, label, step and epsilon. Or, with \
--dataset, embeds a dataset split (the downstream sets of the probes). Output is Parquet, or an Arrow IPC \
stream on stdout with -o -. Normalising embeddings is the stats stage's job: rows hold raw embeddings.",
    after_help = "Examples:\n  embed --model m.safetensors --input noise.parquet -o traj.parquet\n  \
alter --method noise --dataset mnist --limit 1000 -o - | embed --model m.safetensors -o traj.parquet\n  \
embed --model m.safetensors --dataset omniglot --split background -o omniglot.parquet"
)]
pub struct Args {
    /// The encoder (safetensors written by train-encoder).
    #[arg(long)]
    pub model: PathBuf,
    /// Altered-image stream to embed (`-` for stdin; the default when --dataset is not given).
    #[arg(long, value_parser = rmqm_cli::parse_input, conflicts_with = "dataset")]
    pub input: Option<Input>,
    /// Embed this dataset split instead of a stream.
    #[arg(long)]
    pub dataset: Option<Dataset>,
    /// Where the datasets are.
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Split of --dataset (default: the dataset's held-out split).
    #[arg(long)]
    pub split: Option<String>,
    /// Which images of --dataset (labels kept).
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Omniglot: keep strokes dark on white (default: inverted, strokes bright like MNIST).
    #[arg(long)]
    pub no_invert: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = rmqm_cli::EMBED_PASS_ROWS)]
    pub batch_size: usize,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Output: a Parquet file, or - for Arrow IPC on stdout.
    #[arg(short, long, value_parser = rmqm_cli::parse_output)]
    pub output: Output,
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

/// The model's facts every embeddings file carries.
fn model_provenance(prov: &mut Provenance, model: &Encoder) {
    for (k, v) in model.config().embedding_facts() {
        prov.set(&k, v);
    }
}

/// What an embedding run wrote.
struct Written {
    rows: usize,
    /// The input, in words.
    what: String,
}

/// The dataset split the arguments select, checked against the model's input shape.
fn dataset_images(args: &Args, dataset: Dataset, mc: &ModelConfig) -> Result<(ImageSet, String)> {
    let split = args
        .split
        .clone()
        .unwrap_or_else(|| dataset.default_split().to_string());
    let options = LoadOptions {
        invert_omniglot: !args.no_invert,
        ..Default::default()
    };
    let set = args
        .selection
        .apply(load(dataset, &args.data_dir.data_dir, &split, &options)?)?;
    mc.check_image_shape((set.channels, set.height, set.width))
        .map_err(|e| anyhow::anyhow!("{}: {e} ({dataset} {split})", args.model.display()))?;
    Ok((set, split))
}

/// Embeds a dataset split (the probes' input): one row per image, step 0.
fn embed_dataset(
    args: &Args,
    model: &Encoder,
    dataset: Dataset,
    mut prov: Provenance,
    stdout: Box<dyn std::io::Write + Send>,
) -> Result<Written> {
    let mc = model.config();
    let (dim, batch) = (mc.dim, args.batch_size.max(1));
    let (set, split) = dataset_images(args, dataset, mc)?;
    prov.set(keys::KIND, "embeddings")
        .set(keys::DATASET, dataset.name())
        .set(keys::SPLIT, &split)
        .set(keys::ALTERATION, "none");
    model_provenance(&mut prov, model);
    let mut writer = VectorWriter::create_with_stdout(
        &args.output,
        VectorKind::Embedding,
        dim,
        &prov,
        move || stdout,
    )?;
    let bar = rmqm_cli::progress(Some(set.len() as u64), "embed", "images");
    let size = set.image_size();
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let e = model.embed_pixels(&set.pixels[start * size..end * size], end - start, batch)?;
        let n = end - start;
        writer.write(&VectorBatch::from_columns(
            set.ids[start..end].to_vec(),
            set.labels[start..end].to_vec(),
            vec![0; n],
            vec![0.0; n],
            e,
            dim,
        ))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(Written {
        rows: writer.finish()?,
        what: format!("{} {split}", dataset.name()),
    })
}

/// Embeds an altered-image stream into a trajectories stream: the same keys, one embedding a row.
fn embed_stream(
    args: &Args,
    model: &Encoder,
    mut prov: Provenance,
    stdin: Box<dyn std::io::Read + Send>,
    stdout: Box<dyn std::io::Write + Send>,
) -> Result<Written> {
    let mc = model.config();
    let (dim, batch) = (mc.dim, args.batch_size.max(1));
    let input = args.input.clone().unwrap_or(Input::Stdin);
    let mut reader =
        VectorReader::open_with_stdin(&input, VectorKind::Pixels, batch, move || stdin)?;
    let ip = reader.provenance().clone();
    let shape = (
        ip.require_usize(keys::CHANNELS, reader.path())?,
        ip.require_usize(keys::HEIGHT, reader.path())?,
        ip.require_usize(keys::WIDTH, reader.path())?,
    );
    mc.check_image_shape(shape)
        .map_err(|e| anyhow::anyhow!("{}: {e} ({input})", args.model.display()))?;
    // The stream's facts (dataset, alteration, seed, steps) carry over; the model's replace any
    // the stream had (a PGD stream names the attacked model, which may differ).
    for (k, v) in ip.iter() {
        if !matches!(
            k,
            "tool" | "version" | "command" | "kind" | "channels" | "height" | "width"
        ) {
            prov.set(k, v);
        }
    }
    if let Some(attacked) = ip.get(keys::MODEL) {
        prov.set("altered_with_model", attacked);
    }
    model_provenance(&mut prov, model);
    prov.set(keys::KIND, "trajectories");
    let mut writer = VectorWriter::create_with_stdout(
        &args.output,
        VectorKind::Embedding,
        dim,
        &prov,
        move || stdout,
    )?;
    let bar = rmqm_cli::progress(reader.total_rows().map(|r| r as u64), "embed", "rows");
    // The reader's batches are as the file or stream makes them (Parquet about 1 MB); forward
    // passes take `batch` rows each, whatever they were read in.
    let mut pending = PendingRows::default();
    loop {
        let next = reader.next_batch()?;
        let done = next.is_none();
        if let Some(b) = next {
            pending.push(b);
        }
        while let Some(b) = pending.take(batch, done) {
            let e = model
                .embed_pixels(&b.values, b.len(), batch)
                .with_context(|| format!("embedding rows of {input}"))?;
            bar.inc(b.len() as u64);
            // The keys are shared with the input batch; only the vectors are new.
            writer.write(&b.with_values(e, dim))?;
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(Written {
        rows: writer.finish()?,
        what: format!("{input}"),
    })
}

/// Read rows waiting to fill a forward pass.
#[derive(Default)]
struct PendingRows {
    batches: Vec<VectorBatch>,
    rows: usize,
}

impl PendingRows {
    /// Queues a batch as read.
    fn push(&mut self, b: VectorBatch) {
        self.rows += b.len();
        self.batches.push(b);
    }

    /// The next `n` rows when that many wait (one batch, without a copy when one batch holds them),
    /// or the rest when `last` and some wait; `None` otherwise.
    fn take(&mut self, n: usize, last: bool) -> Option<VectorBatch> {
        if self.rows == 0 || (self.rows < n && !last) {
            return None;
        }
        let width = self.batches[0].width;
        let all = if self.batches.len() == 1 {
            self.batches.pop().expect("one batch waits")
        } else {
            VectorBatch::concat(&std::mem::take(&mut self.batches), width)
        };
        let take = n.min(all.len());
        if take < all.len() {
            self.batches = vec![all.slice(take, all.len() - take)];
        } else {
            self.batches.clear();
        }
        self.rows = all.len() - take;
        Some(all.slice(0, take))
    }
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, mut stdio: Stdio) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    rmqm_cli::check_binary_output(&args.output, &stdio)?;
    let summary = Summary::start("embed");
    let model = Encoder::load(&args.model, DType::F32, &rmqm_models::device(), false)?;
    let prov = base_provenance("embed", &argv);
    let stdout = stdio.take_stdout();
    let stdin = stdio.take_stdin();
    let written = rmqm_cli::on_workers(|| match args.dataset {
        Some(dataset) => embed_dataset(&args, &model, dataset, prov, stdout),
        None => embed_stream(&args, &model, prov, stdin, stdout),
    })?;
    let mc = model.config();
    let secs = summary.elapsed().as_secs_f64().max(1e-9);
    summary.finish(&format!(
        "{} rows of {} through {} ({} {} dim {}, {:.0} rows/s); wrote {}",
        rmqm_cli::thousands(written.rows as u64),
        written.what,
        mc.model_id,
        mc.arch,
        mc.method,
        mc.dim,
        written.rows as f64 / secs,
        args.output
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(first: u32, n: usize) -> VectorBatch {
        let ids: Vec<u32> = (first..first + n as u32).collect();
        let values: Vec<f32> = ids.iter().flat_map(|&i| [i as f32, -(i as f32)]).collect();
        VectorBatch::from_columns(ids.clone(), vec![1; n], vec![0; n], vec![0.0; n], values, 2)
    }

    #[test]
    fn pending_rows_come_out_in_forward_passes_of_the_batch_size_in_order() {
        // Read batches of 3, 5 and 1 rows, forward passes of 4: 4, 4, then the last 1.
        let mut p = PendingRows::default();
        let mut out = Vec::new();
        for (first, n, last) in [(0, 3, false), (3, 5, false), (8, 1, true)] {
            p.push(rows(first, n));
            while let Some(b) = p.take(4, last) {
                out.push(b);
            }
        }
        assert_eq!(
            out.iter().map(VectorBatch::len).collect::<Vec<_>>(),
            vec![4, 4, 1]
        );
        let all = VectorBatch::concat(&out, 2);
        assert_eq!(all, rows(0, 9));
        assert!(p.take(4, true).is_none());
        // A read batch larger than a pass is cut without a copy.
        let mut p = PendingRows::default();
        p.push(rows(0, 10));
        let a = p.take(4, false).unwrap();
        let b = p.take(4, false).unwrap();
        assert!(p.take(4, false).is_none(), "2 rows wait for more");
        let c = p.take(4, true).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (4, 4, 2));
        assert_eq!(VectorBatch::concat(&[a, b, c], 2), rows(0, 10));
    }
}
