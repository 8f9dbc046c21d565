//! `manifold-stats`: D, D_RC, P_RC and RMQM (both conventions), per-step curves, per-image terms and
//! the peer metrics RankMe and alpha-ReQ, from a trajectories file, streamed image by image.

use anyhow::{Context, Result, bail};
use clap::Parser;
use rayon::prelude::*;
use rmqm_artifacts::{
    ArtifactWriter, Column, Input, KeyNeeds, Output, Provenance, Table, VectorBatch, VectorKind,
    VectorReader, keys, write_table,
};
use rmqm_cli::{ModelIdentity, Stdio, Summary, ThreadsArg, base_provenance};
use rmqm_manifold::{
    AlphaReq, CURVE_NAMES, Convention, ConventionSummary, CurveAccumulator, ImageTerms,
    ImageTrajectory, Lidar, LidarAccumulator, LidarConfig, SpectrumAccumulator, StatsAccumulator,
    TrajectoryGrouper, Weights, image_terms,
};
use std::collections::BTreeMap;
use std::sync::mpsc;

/// Which conventions to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConventionChoice {
    /// The paper's printed equations (2)-(6).
    Paper,
    /// As the authors' public code computes it.
    Reference,
    /// One row for each.
    Both,
}

/// Command-line arguments of `manifold-stats`.
#[derive(Debug, Parser)]
#[command(
    name = "manifold-stats",
    version,
    about = "D, D_RC, P_RC and RMQM from a trajectories file, streamed image by image",
    long_about = "Reads a trajectories file (embeddings of every image at steps 0..J of an alteration, rows \
sorted by image_id then step), L2-normalises every embedding, and measures for each image the distance \
to the clean embedding (d0_j) and to the previous step (dp_j). These give D (eq. 2), D_RC (eq. 3), P_RC \
(eq. 4), RMQM (eq. 5) and the weighted RMQM (eq. 6), in the paper's convention or the authors' code's \
(see README). Also RankMe and alpha-ReQ of the clean embeddings, and on an augment walk (steps 1..Q are \
views of the image) LiDAR (Thilak et al., ICLR 2024) of the first --lidar-images images' views.",
    after_help = "Examples:\n  manifold-stats traj.parquet -o summary.parquet --curves curves.parquet\n  \
alter --method noise --dataset mnist --limit 1000 -o - | embed --model m.safetensors -o - | manifold-stats - -o summary.parquet\n  \
manifold-stats --convention both --by-label --per-image images.parquet traj.parquet -o summary.parquet\n  \
alter --method augment --views 10 --limit 1000 -o - | embed --model m.safetensors -o - | manifold-stats - -o lidar.parquet"
)]
pub struct Args {
    /// Trajectories file (Parquet or Arrow IPC), `-` for stdin.
    #[arg(value_parser = rmqm_cli::parse_input)]
    pub input: Input,
    /// Summary table: one row per (model, alteration, convention[, label]).
    #[arg(short, long, value_parser = rmqm_cli::parse_output)]
    pub output: Output,
    /// Which equations to use.
    #[arg(long, value_enum, default_value = "paper")]
    pub convention: ConventionChoice,
    /// Weights w1,w2,w3 of the weighted RMQM, ln(1 + w1 D + w2/D_RC + w3/P_RC).
    #[arg(long, default_value = "0.95,0.74,0.11")]
    pub weights: Weights,
    /// Also write each image's terms to this file.
    #[arg(long, value_parser = rmqm_cli::parse_output)]
    pub per_image: Option<Output>,
    /// Also write per-step means and standard errors (d0, dp, relative changes) to this file.
    #[arg(long, value_parser = rmqm_cli::parse_output)]
    pub curves: Option<Output>,
    /// Add one summary row per class label.
    #[arg(long)]
    pub by_label: bool,
    /// Most rows decoded per batch (Parquet is decoded in batches of about 1 MB below this).
    #[arg(long, default_value_t = 8192)]
    pub batch_rows: usize,
    /// LiDAR of the views (steps 1..Q) of each image; on by default when the input's metadata
    /// says it is an augment walk, an error for any other walk.
    #[arg(long)]
    pub lidar: bool,
    /// LiDAR: n, the images (surrogate classes) that enter, the first n of the stream.
    #[arg(long, default_value_t = 1000)]
    pub lidar_images: usize,
    /// LiDAR: delta, added to the diagonal of the within-class covariance.
    #[arg(long, default_value_t = 1e-4)]
    pub lidar_delta: f64,
    /// LiDAR: eps, added to every eigenvalue before the entropy.
    #[arg(long, default_value_t = 1e-8)]
    pub lidar_eps: f64,
    /// Who the trajectories belong to, for files without rmqm metadata.
    #[command(flatten)]
    pub identity: ModelIdentity,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// Whether LiDAR is measured: asked for, or implied by an augment walk's metadata; asking for it
/// on a walk that says it is something else is an error.
fn lidar_config(
    args: &Args,
    prov: &Provenance,
    path: &std::path::Path,
) -> Result<Option<LidarConfig>> {
    let alteration = prov.get(keys::ALTERATION);
    let augment = alteration == Some("augment");
    if args.lidar
        && !augment
        && let Some(other) = alteration
    {
        bail!(
            "{}: LiDAR needs an augment walk (alter --method augment), but this is a {other} walk",
            path.display()
        );
    }
    if !(args.lidar || augment) {
        return Ok(None);
    }
    if args.lidar_images < 2 {
        bail!("--lidar-images must be at least 2");
    }
    Ok(Some(LidarConfig {
        delta: args.lidar_delta,
        eps: args.lidar_eps,
        max_images: args.lidar_images,
    }))
}

/// Entry point with the process's stdio.
pub fn run(args: Vec<String>) -> Result<()> {
    run_with(args, Stdio::default())
}

/// What a run measured, for callers in the same process (tests, benches).
pub struct Outcome {
    /// The summary rows written.
    pub summaries: Vec<ConventionSummary>,
    /// Images measured.
    pub n_images: u64,
}

/// Entry point with explicit stdio.
pub fn run_with(argv: Vec<String>, stdio: Stdio) -> Result<()> {
    run_outcome(argv, stdio).map(|_| ())
}

/// Bytes of trajectories (whole images, at least one) measured together on the worker threads.
/// Small enough to stay in cache between grouping and measuring: against 512 images a chunk
/// (106 MB at dim 512), it cut manifold-stats' peak memory by 100-150 MB and its time on a
/// 2,000 x 101 x 512 file from 0.50-0.52 s to 0.45-0.51 s (with 4 MB reader pieces: 0.41-0.45 s).
const CHUNK_BYTES: usize = 1 << 20;

/// The input, opened and checked.
struct OpenInput {
    reader: VectorReader,
    path: std::path::PathBuf,
    dim: usize,
    /// The input's provenance with the --model-id / --train-dataset / --method flags applied.
    provenance: Provenance,
    steps: Option<usize>,
    lidar: Option<LidarConfig>,
}

fn open_input(args: &Args, stdio: &mut Stdio) -> Result<OpenInput> {
    let stdin = stdio.take_stdin();
    let needs = KeyNeeds {
        label: false,
        step: true,
    };
    let reader = VectorReader::open_with(
        &args.input,
        VectorKind::Embedding,
        args.batch_rows,
        needs,
        move || stdin,
    )?;
    let path = reader.path().clone();
    let dim = reader.width();
    let provenance = args
        .identity
        .apply(reader.provenance().clone(), &args.input);
    if let Some(meta_dim) = provenance
        .get(keys::DIM)
        .and_then(|d| d.parse::<usize>().ok())
        && meta_dim != dim
    {
        bail!(
            "{}: metadata says dim {meta_dim} but the embedding column holds {dim} values",
            path.display()
        );
    }
    Ok(OpenInput {
        steps: provenance.get(keys::STEPS).and_then(|s| s.parse().ok()),
        lidar: lidar_config(args, &provenance, &path)?,
        reader,
        path,
        dim,
        provenance,
    })
}

/// Everything the stream was measured into.
struct Measured {
    total: StatsAccumulator,
    by_label: BTreeMap<i32, StatsAccumulator>,
    curves: CurveAccumulator,
    spectrum: SpectrumAccumulator,
    lidar: Option<LidarAccumulator>,
    first_epsilons: Vec<f32>,
}

/// Streams the input image by image (decoding on its own thread while the others measure) into
/// the accumulators; each chunk's per-image terms go to `per_image` when given.
fn measure(
    input: OpenInput,
    args: &Args,
    per_image: &mut Option<ArtifactWriter>,
) -> Result<Measured> {
    let OpenInput {
        mut reader,
        path,
        dim,
        steps,
        lidar,
        ..
    } = input;
    let bar = rmqm_cli::progress(
        reader.total_rows().map(|r| r as u64),
        "manifold-stats",
        "rows",
    );
    let (tx, rx) = mpsc::sync_channel::<Result<VectorBatch, rmqm_artifacts::ArtifactError>>(4);
    let decoder = std::thread::spawn(move || {
        loop {
            let next = reader.next_batch().transpose();
            let Some(batch) = next else { return };
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    });
    let mut m = Measured {
        total: StatsAccumulator::new(),
        by_label: BTreeMap::new(),
        curves: CurveAccumulator::new(),
        spectrum: SpectrumAccumulator::new(dim),
        lidar: lidar.map(|c| LidarAccumulator::new(dim, c)),
        first_epsilons: Vec::new(),
    };
    let mut grouper = TrajectoryGrouper::new(dim, steps);
    let mut pending: Vec<ImageTrajectory> = Vec::new();
    let mut pending_bytes = 0;
    for batch in rx {
        let batch = batch?;
        bar.inc(batch.len() as u64);
        let closed_before = pending.len();
        grouper
            .push(&batch, &mut pending)
            .with_context(|| format!("{}", path.display()))?;
        pending_bytes += pending[closed_before..]
            .iter()
            .map(|t| std::mem::size_of_val(t.rows.as_slice()))
            .sum::<usize>();
        if pending_bytes >= CHUNK_BYTES {
            m.add_chunk(&mut pending, dim, args.by_label, per_image, &path)?;
            pending_bytes = 0;
        }
    }
    decoder
        .join()
        .map_err(|_| anyhow::anyhow!("decoder thread panicked"))?;
    if let Some(last) = grouper
        .finish()
        .with_context(|| format!("{}", path.display()))?
    {
        pending.push(last);
    }
    m.add_chunk(&mut pending, dim, args.by_label, per_image, &path)?;
    bar.finish_and_clear();
    if m.total.n_images() == 0 {
        bail!("{}: no rows: nothing to measure", path.display());
    }
    Ok(m)
}

impl Measured {
    /// Measures a chunk of whole images (terms in parallel) and empties it.
    fn add_chunk(
        &mut self,
        images: &mut Vec<ImageTrajectory>,
        dim: usize,
        by_label: bool,
        per_image: &mut Option<ArtifactWriter>,
        path: &std::path::Path,
    ) -> Result<()> {
        if images.is_empty() {
            return Ok(());
        }
        if self.first_epsilons.is_empty() {
            self.first_epsilons = images[0].epsilons.clone();
        }
        let terms: Vec<ImageTerms> = images
            .par_iter()
            .map(|img| image_terms(img.image_id, img.label, &img.rows, dim))
            .collect();
        for (img, t) in images.iter().zip(&terms) {
            self.spectrum.add(&img.rows[..dim]);
            if let Some(l) = self.lidar.as_mut().filter(|l| l.wants_more()) {
                l.add_image(&img.rows[dim..])
                    .with_context(|| format!("{}: image_id {}", path.display(), img.image_id))?;
            }
            self.total.add(t);
            self.curves.add(t);
            if by_label {
                self.by_label.entry(t.label).or_default().add(t);
            }
        }
        if let Some(w) = per_image.as_mut() {
            w.write(&per_image_table(&terms).to_record_batch())?;
        }
        images.clear();
        Ok(())
    }
}

/// Runs the tool and returns what it measured.
pub fn run_outcome(argv: Vec<String>, mut stdio: Stdio) -> Result<Outcome> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    for out in [
        Some(&args.output),
        args.curves.as_ref(),
        args.per_image.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        rmqm_cli::check_binary_output(out, &stdio)?;
    }
    let summary_line = Summary::start("manifold-stats");
    let input = open_input(&args, &mut stdio)?;
    let input_prov = input.provenance.clone();
    let path = input.path.clone();
    let dim = input.dim;
    let mut out_prov = base_provenance("manifold-stats", &argv);
    out_prov.inherit(&input_prov.clone().with(keys::KIND, "stats"));
    out_prov.set(keys::KIND, "stats");
    let mut per_image_writer = match &args.per_image {
        Some(o) => Some(ArtifactWriter::create(
            o,
            &per_image_table(&[]).to_record_batch().schema(),
            &out_prov.clone().with(keys::KIND, "per-image"),
        )?),
        None => None,
    };
    let mut measured = measure(input, &args, &mut per_image_writer)?;
    let spectrum = measured.spectrum.peers();
    let peers = PeerMetrics {
        rankme: spectrum.rankme,
        alpha_req: spectrum.alpha_req,
        lidar: measured
            .lidar
            .take()
            .map(|l| l.finish())
            .transpose()
            .with_context(|| format!("{}: LiDAR", path.display()))?,
    };
    let rows = summary_rows(&args, &measured);
    let seconds = summary_line.elapsed().as_secs_f64();
    let table = summary_table(
        &rows,
        &input_prov,
        dim,
        &args.weights,
        &peers,
        &args.input,
        seconds,
    );
    if let Some(w) = per_image_writer {
        w.finish()?;
    }
    if let Some(out) = &args.curves {
        write_table(
            out,
            &curves_table(&measured.curves, &measured.first_epsilons, &input_prov, dim),
            &out_prov.clone().with(keys::KIND, "curves"),
        )?;
    }
    write_table(&args.output, &table, &out_prov)?;
    let head = &rows[0].1;
    summary_line.finish(&format!(
        "{} images x {} steps, dim {dim}: D {:.4}, D_RC {:.4}, P_RC {:.4}, RMQM {:.4} ({}){}, wrote {}",
        rmqm_cli::thousands(measured.total.n_images()),
        head.n_steps,
        head.d,
        head.d_rc,
        head.p_rc,
        head.rmqm,
        head.convention,
        peers.lidar.as_ref().map_or(String::new(), |l| format!(
            ", LiDAR {:.3} ({} images x {} views)",
            l.value, l.images, l.views
        )),
        args.output
    ));
    Ok(Outcome {
        summaries: rows.into_iter().map(|(_, s)| s).collect(),
        n_images: measured.total.n_images(),
    })
}

/// One summary row per convention (label "all"), and per label with --by-label.
fn summary_rows(args: &Args, m: &Measured) -> Vec<(String, ConventionSummary)> {
    let conventions: &[Convention] = match args.convention {
        ConventionChoice::Paper => &[Convention::Paper],
        ConventionChoice::Reference => &[Convention::Reference],
        ConventionChoice::Both => &[Convention::Paper, Convention::Reference],
    };
    let mut rows = Vec::new();
    for &c in conventions {
        rows.push(("all".into(), m.total.summary(c, &args.weights)));
        for (label, acc) in &m.by_label {
            rows.push((label.to_string(), acc.summary(c, &args.weights)));
        }
    }
    rows
}

/// The provenance columns every stats table starts with, from the input's metadata.
fn provenance_columns(t: &mut Table, prov: &Provenance, dim: usize, n: usize) {
    let text = |k: &str| vec![prov.get(k).unwrap_or("unknown").to_string(); n];
    t.push("model", Column::Str(text(keys::MODEL)));
    t.push("method", Column::Str(text(keys::METHOD)));
    t.push("arch", Column::Str(text(keys::ARCH)));
    let dim = prov
        .get(keys::DIM)
        .and_then(|d| d.parse().ok())
        .unwrap_or(dim as i64);
    t.push("dim", Column::I64(vec![dim; n]));
    t.push("optimizer", Column::Str(text(keys::OPTIMIZER)));
    let epochs = prov
        .get(keys::EPOCHS)
        .and_then(|e| e.parse().ok())
        .unwrap_or(-1i64);
    t.push("epochs", Column::I64(vec![epochs; n]));
    t.push("train_dataset", Column::Str(text(keys::TRAIN_DATASET)));
    t.push("dataset", Column::Str(text(keys::DATASET)));
    t.push("alteration", Column::Str(text(keys::ALTERATION)));
}

/// The label-free metrics of a run: RankMe and alpha-ReQ of the clean embeddings, LiDAR of the
/// views when the walk is an augment walk.
struct PeerMetrics {
    rankme: f64,
    alpha_req: AlphaReq,
    lidar: Option<Lidar>,
}

fn summary_table(
    rows: &[(String, ConventionSummary)],
    prov: &Provenance,
    dim: usize,
    weights: &Weights,
    peers: &PeerMetrics,
    input: &Input,
    seconds: f64,
) -> Table {
    let n = rows.len();
    let mut t = Table::new();
    provenance_columns(&mut t, prov, dim, n);
    let f = |g: &dyn Fn(&ConventionSummary) -> f64| {
        Column::F64(rows.iter().map(|(_, s)| g(s)).collect())
    };
    let i = |g: &dyn Fn(&ConventionSummary) -> u64| {
        Column::I64(rows.iter().map(|(_, s)| g(s) as i64).collect())
    };
    t.push(
        "convention",
        Column::Str(
            rows.iter()
                .map(|(_, s)| s.convention.name().to_string())
                .collect(),
        ),
    );
    t.push(
        "label",
        Column::Str(rows.iter().map(|(l, _)| l.clone()).collect()),
    );
    t.push("D", f(&|s| s.d));
    t.push("D_RC", f(&|s| s.d_rc));
    t.push("P_RC", f(&|s| s.p_rc));
    t.push("RMQM", f(&|s| s.rmqm));
    t.push("RMQM_weighted", f(&|s| s.rmqm_weighted));
    t.push("inv_D_RC", f(&|s| 1.0 / s.d_rc));
    t.push("inv_P_RC", f(&|s| 1.0 / s.p_rc));
    t.push("mean_dp", f(&|s| s.mean_dp));
    t.push("distance_term", f(&|s| s.distance_term));
    t.push("n_images", i(&|s| s.n_images));
    t.push("n_steps", i(&|s| s.n_steps));
    t.push("D_RC_zero_over_zero", i(&|s| s.d_rc_zero_over_zero));
    t.push("D_RC_left_out", i(&|s| s.d_rc_left_out));
    t.push("P_RC_zero_over_zero", i(&|s| s.p_rc_zero_over_zero));
    t.push("P_RC_left_out", i(&|s| s.p_rc_left_out));
    t.push("D_RC_dropped_images", i(&|s| s.d_rc_dropped_images));
    t.push("P_RC_dropped_images", i(&|s| s.p_rc_dropped_images));
    t.push("weights", Column::Str(vec![weights.to_string(); n]));
    t.push("rankme", Column::F64(vec![peers.rankme; n]));
    t.push("alpha_req", Column::F64(vec![peers.alpha_req.alpha; n]));
    t.push(
        "alpha_req_r2",
        Column::F64(vec![peers.alpha_req.r_squared; n]),
    );
    let lidar = peers.lidar.as_ref();
    t.push(
        "lidar",
        Column::F64(vec![lidar.map_or(f64::NAN, |l| l.value); n]),
    );
    t.push(
        "lidar_images",
        Column::I64(vec![lidar.map_or(0, |l| l.images as i64); n]),
    );
    t.push(
        "lidar_views",
        Column::I64(vec![lidar.map_or(0, |l| l.views as i64); n]),
    );
    t.push("source", Column::Str(vec![input.to_string(); n]));
    // Wall time of the run; when piped, it includes the upstream tools' work (they run alongside).
    t.push("seconds", Column::F64(vec![seconds; n]));
    t
}

fn per_image_table(terms: &[ImageTerms]) -> Table {
    let f = |g: &dyn Fn(&ImageTerms) -> f64| Column::F64(terms.iter().map(g).collect());
    let mut t = Table::new();
    t.push(
        "image_id",
        Column::I64(terms.iter().map(|t| t.image_id as i64).collect()),
    );
    t.push(
        "label",
        Column::I64(terms.iter().map(|t| t.label as i64).collect()),
    );
    t.push("D", f(&|t| t.paper.d));
    t.push("D_RC", f(&|t| t.paper.d_rc));
    t.push("P_RC", f(&|t| t.paper.p_rc));
    t.push("mean_dp", f(&|t| t.reference.mean_dp));
    t.push(
        "spike_orig",
        f(&|t| t.reference.spike_orig.unwrap_or(f64::NAN)),
    );
    t.push(
        "spike_prev",
        f(&|t| t.reference.spike_prev.unwrap_or(f64::NAN)),
    );
    t.push(
        "D_RC_left_out",
        Column::I64(terms.iter().map(|t| t.paper.d_rc_left_out as i64).collect()),
    );
    t.push(
        "P_RC_left_out",
        Column::I64(terms.iter().map(|t| t.paper.p_rc_left_out as i64).collect()),
    );
    t
}

fn curves_table(
    curves: &CurveAccumulator,
    epsilons: &[f32],
    prov: &Provenance,
    dim: usize,
) -> Table {
    let n = curves.len();
    let mut t = Table::new();
    provenance_columns(&mut t, prov, dim, n);
    t.push("step", Column::I64((0..n as i64).collect()));
    t.push(
        "epsilon",
        Column::F64(
            (0..n)
                .map(|j| epsilons.get(j).map_or(f64::NAN, |&e| e as f64))
                .collect(),
        ),
    );
    let points: Vec<_> = (0..n).map(|j| curves.points(j)).collect();
    for (k, name) in CURVE_NAMES.iter().enumerate() {
        t.push(
            &format!("{name}_mean"),
            Column::F64(points.iter().map(|p| p[k].mean).collect()),
        );
        t.push(
            &format!("{name}_se"),
            Column::F64(points.iter().map(|p| p[k].se).collect()),
        );
        t.push(
            &format!("{name}_n"),
            Column::I64(points.iter().map(|p| p[k].n as i64).collect()),
        );
    }
    t
}
