//! alter and embed end to end: identical noise whatever the batching, subset or thread count; PGD
//! raises the model's loss and respects its bounds; `alter | embed` equals the file route and PGD's
//! own embeddings; clear errors for mismatched shapes and unknown ids.

use rmqm::*;
use rmqm_artifacts::{Input, VectorBatch, VectorKind, VectorReader, keys};
use rmqm_cli::Stdio;
use std::collections::BTreeMap;
use std::path::Path;

fn read_all(path: &Path, kind: VectorKind) -> (VectorBatch, rmqm_artifacts::Provenance) {
    let mut r = VectorReader::open(&Input::Path(path.into()), kind, 1 << 16).unwrap();
    let p = r.provenance().clone();
    (r.read_all().unwrap(), p)
}

/// `embed --model model --input images --batch-size pass -o out`, read back.
fn embed_file(
    model: &Path,
    images: &Path,
    pass: &str,
    out: &Path,
) -> (VectorBatch, rmqm_artifacts::Provenance) {
    embed_tool::run(argv(
        "embed",
        &[
            "--model",
            s(model),
            "--input",
            s(images),
            "--batch-size",
            pass,
            "-o",
            s(out),
        ],
    ))
    .unwrap();
    read_all(out, VectorKind::Embedding)
}

/// A file's metadata without the keys naming the tool that wrote it and its command line.
fn facts(p: &rmqm_artifacts::Provenance) -> BTreeMap<&str, &str> {
    p.iter()
        .filter(|(k, _)| !matches!(*k, "tool" | "command"))
        .collect()
}

/// A fixture data folder with synthetic MNIST train (240) and test (40) splits.
fn data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_idx_split(dir.path(), "mnist", "train", 240, 10);
    write_idx_split(dir.path(), "mnist", "test", 40, 10);
    dir
}

fn train_tiny(data: &Path, out: &Path, method: &str, epochs: &str) {
    train_encoder_tool::run(argv(
        "train-encoder",
        &[
            "--data-dir",
            s(data),
            "--method",
            method,
            "--dim",
            "8",
            "--epochs",
            epochs,
            "--batch-size",
            "32",
            "--accumulate",
            "1",
            "--lr",
            "0.003",
            "-o",
            s(out),
        ],
    ))
    .unwrap();
}

#[test]
fn noise_is_identical_across_batch_sizes_subsets_and_threads() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a.parquet");
    let b = out.path().join("b.parquet");
    let c = out.path().join("c.parquet");
    let common = [
        "--method",
        "noise",
        "--data-dir",
        s(d.path()),
        "--steps",
        "5",
        "--seed",
        "9",
    ];
    let run = |extra: &[&str], threads: usize| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        let v = argv("alter", &args);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| alter_tool::run(v))
            .unwrap();
    };
    run(&["--limit", "12", "--batch-size", "5", "-o", s(&a)], 1);
    run(&["--limit", "12", "--batch-size", "64", "-o", s(&b)], 2);
    run(&["--ids", "3,7,11", "--batch-size", "2", "-o", s(&c)], 2);
    let (ra, pa) = read_all(&a, VectorKind::Pixels);
    let (rb, _) = read_all(&b, VectorKind::Pixels);
    let (rc, _) = read_all(&c, VectorKind::Pixels);
    assert_eq!(ra, rb, "batch size and threads change nothing");
    assert_eq!(ra.len(), 12 * 6);
    for (k, id) in [3u32, 7, 11].iter().enumerate() {
        for step in 0..6 {
            let row_c = k * 6 + step;
            let row_a = *id as usize * 6 + step;
            assert_eq!(rc.image_ids[row_c], *id);
            assert_eq!(
                rc.row(row_c),
                ra.row(row_a),
                "subset: image {id} step {step}"
            );
        }
    }
    // Keys sorted, steps 0..J, clean step 0, eps_j = j/J, values in [0,1].
    assert_eq!(&ra.steps[..6], &[0, 1, 2, 3, 4, 5]);
    assert!((ra.epsilons[5] - 1.0).abs() < 1e-6);
    assert!(ra.values.iter().all(|v| (0.0..=1.0).contains(v)));
    for (k, v) in [
        (keys::KIND, "altered"),
        (keys::ALTERATION, "noise"),
        (keys::STEPS, "5"),
        (keys::SEED, "9"),
        (keys::CHANNELS, "1"),
        (keys::DATASET, "mnist"),
        (keys::SPLIT, "test"),
    ] {
        assert_eq!(pa.get(k), Some(v), "{k}");
    }
    assert!(pa.get(keys::COMMAND).unwrap().contains("--seed 9"));
}

#[test]
fn pipe_equals_files_and_trajectories_carry_provenance() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("m.safetensors");
    train_tiny(d.path(), &model, "ntxent", "0");
    let altered = out.path().join("alt.parquet");
    let traj_file = out.path().join("traj-file.parquet");
    let traj_pipe = out.path().join("traj-pipe.parquet");
    let alter_args = [
        "--method",
        "noise",
        "--data-dir",
        s(d.path()),
        "--limit",
        "6",
        "--steps",
        "4",
        "--batch-size",
        "4",
    ];
    let mut a1: Vec<&str> = alter_args.to_vec();
    a1.extend_from_slice(&["-o", s(&altered)]);
    alter_tool::run(argv("alter", &a1)).unwrap();
    embed_tool::run(argv(
        "embed",
        &[
            "--model",
            s(&model),
            "--input",
            s(&altered),
            "--batch-size",
            "7",
            "-o",
            s(&traj_file),
        ],
    ))
    .unwrap();

    // The same through an OS pipe, each tool on its own thread and in its own rayon pool, as two
    // processes would be: in rayon's shared global pool a worker waiting in one tool's parallel
    // loop may take up the other tool's job, and then the reader waits on the writer beneath it
    // (this test hung that way once while other tests ran beside it).
    let own_pool = || {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
    };
    let (reader, writer) = std::io::pipe().unwrap();
    let mut a2: Vec<String> = argv("alter", &alter_args);
    a2.extend(["-o".to_string(), "-".to_string()]);
    let producer_pool = own_pool();
    let producer = std::thread::spawn(move || {
        producer_pool.install(|| {
            alter_tool::run_with(
                a2,
                Stdio {
                    stdin: Box::new(std::io::empty()),
                    stdout: Box::new(writer),
                    stdout_is_terminal: false,
                },
            )
            .unwrap()
        });
    });
    let e = argv(
        "embed",
        &["--model", s(&model), "--input", "-", "-o", s(&traj_pipe)],
    );
    own_pool()
        .install(|| {
            embed_tool::run_with(
                e,
                Stdio {
                    stdin: Box::new(reader),
                    stdout: Box::new(std::io::sink()),
                    stdout_is_terminal: false,
                },
            )
        })
        .unwrap();
    producer.join().unwrap();

    let (f, pf) = read_all(&traj_file, VectorKind::Embedding);
    let (p, _) = read_all(&traj_pipe, VectorKind::Embedding);
    assert_eq!(f, p);
    assert_eq!(f.len(), 6 * 5);
    assert_eq!(f.width, 8);
    for (k, v) in [
        (keys::KIND, "trajectories"),
        (keys::MODEL, "m"),
        (keys::METHOD, "ntxent"),
        (keys::DIM, "8"),
        (keys::ALTERATION, "noise"),
        (keys::DATASET, "mnist"),
        (keys::STEPS, "4"),
    ] {
        assert_eq!(pf.get(k), Some(v), "{k}");
    }
}

#[test]
fn pgd_raises_the_loss_respects_bounds_and_restart_matches() {
    use candle_core::DType;
    use rmqm_alter::{PgdConfig, PgdStep, PgdWalk, pgd_batch};
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let model_path = out.path().join("ce.safetensors");
    train_tiny(d.path(), &model_path, "cross-entropy", "4");
    let model =
        rmqm_models::Encoder::load(&model_path, DType::F32, &candle_core::Device::Cpu, false)
            .unwrap();
    let set = rmqm_data::load(
        rmqm_data::Dataset::Mnist,
        d.path(),
        "test",
        &Default::default(),
    )
    .unwrap();
    let n = 16;
    let clean = &set.pixels[..n * 784];
    let labels: Vec<i64> = set.labels[..n].iter().map(|&l| l as i64).collect();
    let cfg = PgdConfig {
        steps: 6,
        alpha: 2.0 / 255.0,
        step: PgdStep::Sign,
        walk: PgdWalk::Continue,
        radius: Some(0.01),
        seed: 0,
    };
    let levels = pgd_batch(&model, clean, &labels, &set.ids[..n], &cfg).unwrap();
    assert_eq!(levels.len(), 7);
    let loss = |x: &[f32]| -> f64 {
        let t =
            candle_core::Tensor::from_slice(x, (n, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
        let e = model.embed(&t, false).unwrap();
        let logits = model.logits(&e).unwrap().unwrap();
        let y = candle_core::Tensor::new(
            labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        rmqm_train::cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let losses: Vec<f64> = levels.iter().map(|l| loss(l)).collect();
    let mean_later = losses[1..].iter().sum::<f64>() / 6.0;
    assert!(
        mean_later > losses[0],
        "PGD raises the loss on average: {losses:?}"
    );
    assert!(losses[6] > losses[0]);
    for level in &levels {
        for (v, c) in level.iter().zip(clean) {
            assert!((0.0..=1.0).contains(v));
            assert!((v - c).abs() <= 0.01 + 1e-6, "radius");
        }
    }
    // Restart: level j is j iterations from the clean image.
    let restart = PgdConfig {
        walk: PgdWalk::Restart,
        radius: None,
        ..cfg
    };
    let r = pgd_batch(&model, clean, &labels, &set.ids[..n], &restart).unwrap();
    let mut x = clean.to_vec();
    for t in 1..=4 {
        x = rmqm_alter::pgd_step(
            &model,
            &x,
            clean,
            &labels,
            &set.ids[..n],
            &restart,
            (4u64 << 32) | t,
        )
        .unwrap();
    }
    assert_eq!(r[4], x);
    // Cross-entropy has no randomness, so restart and continue agree level by level.
    let cont = pgd_batch(
        &model,
        clean,
        &labels,
        &set.ids[..n],
        &PgdConfig {
            walk: PgdWalk::Continue,
            ..restart
        },
    )
    .unwrap();
    assert_eq!(r, cont);

    // Through the tool, every method walks and writes 31 levels by default.
    let walked = out.path().join("pgd.parquet");
    alter_tool::run(argv(
        "alter",
        &[
            "--method",
            "pgd",
            "--model",
            s(&model_path),
            "--data-dir",
            s(d.path()),
            "--limit",
            "3",
            "--steps",
            "3",
            "-o",
            s(&walked),
        ],
    ))
    .unwrap();
    let (w, p) = read_all(&walked, VectorKind::Pixels);
    assert_eq!(w.len(), 3 * 4);
    assert_eq!(p.get(keys::ALTERATION), Some("pgd"));
    assert_eq!(p.get(keys::METHOD), Some("cross-entropy"));
}

/// `alter --method pgd --emit embeddings` writes what `alter --method pgd` then `embed` with the
/// same model writes: the same rows bit for bit, and the same metadata but for the tool and its
/// command line. For the continuing walk (a label method and a two-view one, whose updates embed
/// an augmented view too) and the restarting reference walk; walks in batches of 4 images (too few
/// for row-invariant products at dim 8: embedded apart, padded) and of 35 (embeddings from the
/// updates' own forward passes), each with an uneven last batch; `embed` in its passes of 256 rows
/// and, where every pass has the 33 rows dim 8 needs, of 40.
#[test]
fn pgd_emitting_embeddings_equals_pgd_then_embed() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    for (method, preset) in [
        ("cross-entropy", None),
        ("triplet-ss", None),
        ("cross-entropy", Some("reference")),
    ] {
        let model = out.path().join(format!("{method}.safetensors"));
        if !model.exists() {
            train_tiny(d.path(), &model, method, "1");
        }
        for (limit, batch, passes) in [("11", "4", &["256"][..]), ("40", "35", &["40", "256"])] {
            let images = out.path().join("pgd-images.parquet");
            let piped = out.path().join("pgd-embedded.parquet");
            let fused = out.path().join("pgd-fused.parquet");
            let mut walk = vec![
                "--method",
                "pgd",
                "--model",
                s(&model),
                "--data-dir",
                s(d.path()),
                "--limit",
                limit,
                "--steps",
                "3",
                "--batch-size",
                batch,
            ];
            if let Some(p) = preset {
                walk.extend_from_slice(&["--preset", p]);
            }
            let with = |extra: &[&str]| {
                let mut a = walk.clone();
                a.extend_from_slice(extra);
                argv("alter", &a)
            };
            alter_tool::run(with(&["-o", s(&images)])).unwrap();
            alter_tool::run(with(&["--emit", "embeddings", "-o", s(&fused)])).unwrap();
            let (f, pf) = read_all(&fused, VectorKind::Embedding);
            let rows = limit.parse::<usize>().unwrap() * 4;
            assert_eq!(f.len(), rows, "{method} {preset:?}");
            let mut pe = Default::default();
            for &pass in passes {
                let (e, p) = embed_file(&model, &images, pass, &piped);
                assert!(
                    f == e,
                    "{method} {preset:?} batch {batch}, embed's passes of {pass}: rows differ"
                );
                pe = p;
            }
            assert_eq!(
                facts(&pf),
                facts(&pe),
                "{method} {preset:?}: metadata differs"
            );
            assert_eq!(pf.get(keys::KIND), Some("trajectories"));
        }
    }
}

/// Noise, augment and clean walks with `--emit embeddings --model M` write what `alter | embed
/// --model M` writes: rows and metadata, with alter's batches cut anywhere (batches of 4 images
/// make passes of 4 to 44 rows, below the 33 a dim-8 lenet5 needs for row-invariant products:
/// they are padded), whenever embed's own passes (40 or 256 rows) have those 33 rows.
#[test]
fn image_walks_emitting_embeddings_equal_the_walk_then_embed() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("m.safetensors");
    train_tiny(d.path(), &model, "cross-entropy", "1");
    /// Rows a forward pass of lenet5 at dim 8 needs for row-invariant products.
    const ROW_INVARIANT_AT_DIM_8: usize = 33;
    let mut compared = 0;
    for walk in [
        &["--method", "noise", "--steps", "3"][..],
        &["--method", "noise", "--steps", "10", "--direction", "fixed"],
        &["--method", "augment", "--views", "3"],
        &["--method", "clean"],
    ] {
        for (limit, batch) in [("11", "4"), ("40", "35")] {
            let images = out.path().join("images.parquet");
            let piped = out.path().join("embedded.parquet");
            let fused = out.path().join("fused.parquet");
            let with = |extra: &[&str]| {
                let mut a = walk.to_vec();
                a.extend_from_slice(&["--data-dir", s(d.path()), "--limit", limit]);
                a.extend_from_slice(&["--batch-size", batch]);
                a.extend_from_slice(extra);
                argv("alter", &a)
            };
            alter_tool::run(with(&["-o", s(&images)])).unwrap();
            alter_tool::run(with(&[
                "--model",
                s(&model),
                "--emit",
                "embeddings",
                "-o",
                s(&fused),
            ]))
            .unwrap();
            let (f, pf) = read_all(&fused, VectorKind::Embedding);
            let (i, _) = read_all(&images, VectorKind::Pixels);
            assert_eq!(f.len(), i.len(), "{walk:?} limit {limit}");
            for pass in [40, 256] {
                // embed's last pass: the rows left after full passes, or all of them
                let last = match f.len() % pass {
                    0 => pass.min(f.len()),
                    rest => rest,
                };
                if last < ROW_INVARIANT_AT_DIM_8 {
                    continue;
                }
                compared += 1;
                let pass = pass.to_string();
                let (e, pe) = embed_file(&model, &images, &pass, &piped);
                assert!(
                    f == e,
                    "{walk:?} limit {limit} batch {batch}, embed's passes of {pass}: rows differ"
                );
                assert_eq!(facts(&pf), facts(&pe), "{walk:?}: metadata differs");
            }
        }
    }
    assert_eq!(compared, 11, "comparisons made");
    // Embeddings need a model; a model is for PGD or for embeddings.
    let never = out.path().join("never.parquet");
    let noise = |extra: &[&str]| {
        let mut a = vec!["--method", "noise", "--data-dir", s(d.path())];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["-o", s(&never)]);
        alter_tool::run(argv("alter", &a)).unwrap_err()
    };
    let e = noise(&["--emit", "embeddings"]);
    assert!(
        format!("{e:#}").contains("--emit embeddings needs --model"),
        "{e:#}"
    );
    let e = noise(&["--model", s(&model)]);
    assert!(
        format!("{e:#}").contains("--model is for --method pgd"),
        "{e:#}"
    );
    assert!(!never.exists());
}

/// Accepts `left` bytes, then fails every write as a full disk would.
struct FullAfter {
    left: usize,
}

impl std::io::Write for FullAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("no space left (test)"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A walk embedding its rows whose output fails mid-stream (after 20,000 of about 63,000 bytes:
/// the schema and some batches of 4 images x 31 rows) stops with the error while the drawing
/// thread is a batch ahead (no hang: the test gives it two minutes).
#[test]
fn an_emitting_walk_whose_output_fails_returns_the_error() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("m.safetensors");
    train_tiny(d.path(), &model, "ntxent", "0");
    let args = argv(
        "alter",
        &[
            "--method",
            "noise",
            "--data-dir",
            s(d.path()),
            "--limit",
            "40",
            "--steps",
            "30",
            "--batch-size",
            "4",
            "--model",
            s(&model),
            "--emit",
            "embeddings",
            "-o",
            "-",
        ],
    );
    let (sent, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = alter_tool::run_with(
            args,
            Stdio {
                stdin: Box::new(std::io::empty()),
                stdout: Box::new(FullAfter { left: 20_000 }),
                stdout_is_terminal: false,
            },
        );
        sent.send(r.map_err(|e| format!("{e:#}"))).unwrap();
    });
    let e = result
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("alter returned within two minutes")
        .unwrap_err();
    assert!(e.contains("no space left (test)"), "{e}");
}

#[test]
fn mismatched_shapes_and_unknown_ids_give_clear_errors() {
    let d = data();
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("m.safetensors");
    train_tiny(d.path(), &model, "ntxent", "0");
    let never = out.path().join("never.parquet");
    let e = alter_tool::run(argv(
        "alter",
        &[
            "--method",
            "noise",
            "--data-dir",
            s(d.path()),
            "--ids",
            "3,999",
            "-o",
            s(&never),
        ],
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("unknown image id 999"), "{e:#}");
    // A 3-channel stream for a 1-channel model.
    let rgb = out.path().join("rgb.parquet");
    let p = rmqm_artifacts::Provenance::new()
        .with(keys::CHANNELS, 3)
        .with(keys::HEIGHT, 2)
        .with(keys::WIDTH, 2);
    let mut w = rmqm_artifacts::VectorWriter::create(
        &rmqm_artifacts::Output::Path(rgb.clone()),
        VectorKind::Pixels,
        12,
        &p,
    )
    .unwrap();
    let mut b = rmqm_artifacts::VectorBatchBuilder::new(12, 1);
    b.push(0, 0, 0, 0.0, &[0.5; 12]);
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
    let e = embed_tool::run(argv(
        "embed",
        &["--model", s(&model), "--input", s(&rgb), "-o", s(&never)],
    ))
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("1x28x28") && format!("{e:#}").contains("3x2x2"),
        "{e:#}"
    );
    // An embeddings file where an altered-image stream is expected.
    let e = embed_tool::run(argv(
        "embed",
        &["--model", s(&model), "--input", s(&model), "-o", s(&never)],
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("m.safetensors"), "{e:#}");
    // PGD without a model.
    let e = alter_tool::run(argv(
        "alter",
        &[
            "--method",
            "pgd",
            "--data-dir",
            s(d.path()),
            "-o",
            s(&never),
        ],
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("--model"));
    assert!(!never.exists());
}
