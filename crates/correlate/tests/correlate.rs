//! correlate end to end on a two-track fixture whose model ids collide (the same six ids trained
//! on MNIST and on CIFAR-10). The expected values were computed independently with NumPy and
//! SciPy 1.16 (pearsonr, kendalltau (tau-b), spearmanr) from the same numbers; the script is in
//! the comment at the end of this file.

use rmqm_artifacts::{Column, Input, Output, Provenance, Table, read_table, write_table};
use std::path::{Path, PathBuf};

const METHODS: [&str; 6] = [
    "cross-entropy",
    "triplet-entropy",
    "triplet-supervised",
    "triplet-ss",
    "ntxent",
    "cross-entropy",
];
const DIMS: [i64; 6] = [16, 16, 16, 16, 16, 32];

/// One track's numbers: D, 1/D_RC, 1/P_RC, RMQM per model, and accuracies per (downstream, task).
struct Track {
    name: &'static str,
    d: [f64; 6],
    inv_d_rc: [f64; 6],
    inv_p_rc: [f64; 6],
    rmqm: [f64; 6],
    accuracy: Vec<(&'static str, &'static str, [f64; 6])>,
}

fn tracks() -> Vec<Track> {
    vec![
        Track {
            name: "mnist",
            d: [0.30, 0.45, 0.52, 0.95, 1.02, 0.33],
            inv_d_rc: [2.0, 1.6, 1.4, 3.1, 3.3, 2.2],
            inv_p_rc: [1.5, 1.2, 1.1, 2.6, 2.9, 1.4],
            rmqm: [1.55, 1.42, 1.38, 2.05, 2.11, 1.60],
            accuracy: vec![
                ("kmnist", "knn", [0.80, 0.78, 0.75, 0.88, 0.90, 0.82]),
                ("omniglot", "knn", [0.40, 0.35, 0.33, 0.52, 0.55, 0.42]),
                ("kmnist", "linear", [0.70, 0.69, 0.66, 0.74, 0.77, 0.71]),
                ("fashion", "knn", [0.70, 0.71, 0.69, 0.68, 0.72, 0.70]),
            ],
        },
        Track {
            name: "cifar10",
            d: [0.20, 0.25, 0.28, 0.60, 0.66, 0.22],
            inv_d_rc: [1.0, 0.9, 0.8, 2.0, 2.4, 1.1],
            inv_p_rc: [0.9, 0.8, 0.7, 1.6, 1.9, 0.95],
            rmqm: [1.10, 1.05, 0.98, 1.70, 1.80, 1.15],
            accuracy: vec![
                ("cifar100", "knn", [0.30, 0.28, 0.27, 0.36, 0.38, 0.31]),
                ("caltech101", "knn", [0.45, 0.44, 0.40, 0.52, 0.55, 0.47]),
                ("cifar100", "linear", [0.40, 0.41, 0.37, 0.44, 0.47, 0.42]),
            ],
        },
    ]
}

fn id(i: usize) -> String {
    format!("{}_d{}_adam_s0", METHODS[i], DIMS[i])
}

fn text(v: &[String]) -> Column {
    Column::Str(v.to_vec())
}

fn repeat<T: Clone>(v: T, n: usize) -> Vec<T> {
    vec![v; n]
}

/// One stats file per (track, alteration): six rows, one per model.
fn write_stats(path: &Path, t: &Track, alteration: &str) {
    let n = 6;
    let ids: Vec<String> = (0..n).map(id).collect();
    let mut table = Table::new()
        .with("model", text(&ids))
        .with("method", text(&METHODS.map(String::from)))
        .with("arch", text(&repeat("lenet5".into(), n)))
        .with("dim", Column::I64(DIMS.to_vec()))
        .with("optimizer", text(&repeat("adam".into(), n)))
        .with("epochs", Column::I64(repeat(7, n)))
        .with("train_dataset", text(&repeat(t.name.into(), n)))
        .with("alteration", text(&repeat(alteration.into(), n)))
        .with("convention", text(&repeat("paper".into(), n)))
        .with("label", text(&repeat("all".into(), n)));
    let f = |v: Vec<f64>| Column::F64(v);
    table.push("D", f(t.d.to_vec()));
    table.push("D_RC", f(t.inv_d_rc.iter().map(|x| 1.0 / x).collect()));
    table.push("P_RC", f(t.inv_p_rc.iter().map(|x| 1.0 / x).collect()));
    table.push("RMQM", f(t.rmqm.to_vec()));
    table.push("RMQM_weighted", f(t.rmqm.iter().map(|x| x * 0.9).collect()));
    table.push("inv_D_RC", f(t.inv_d_rc.to_vec()));
    table.push("inv_P_RC", f(t.inv_p_rc.to_vec()));
    table.push("n_images", Column::I64(repeat(100, n)));
    table.push("n_steps", Column::I64(repeat(100, n)));
    table.push("seconds", f(repeat(2.0, n)));
    table.push("rankme", f((0..n).map(|i| 5.0 + i as f64).collect()));
    table.push(
        "alpha_req",
        f((0..n).map(|i| 2.0 - 0.1 * i as f64).collect()),
    );
    table.push(
        "lidar",
        f((0..n)
            .map(|i| {
                if alteration == "augment" {
                    7.0 + i as f64
                } else {
                    f64::NAN
                }
            })
            .collect()),
    );
    write_table(&Output::Path(path.into()), &table, &Provenance::new()).unwrap();
}

/// One probe file per track: every model's accuracy on every (downstream, task).
fn write_probes(path: &Path, t: &Track) {
    let mut rows: Vec<(String, &str, &str, f64)> = Vec::new();
    for (downstream, task, acc) in &t.accuracy {
        for (i, a) in acc.iter().enumerate() {
            rows.push((id(i), downstream, task, *a));
        }
    }
    let n = rows.len();
    let table = Table::new()
        .with(
            "model",
            text(&rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()),
        )
        .with("train_dataset", text(&repeat(t.name.into(), n)))
        .with(
            "downstream",
            text(&rows.iter().map(|r| r.1.to_string()).collect::<Vec<_>>()),
        )
        .with(
            "task",
            text(&rows.iter().map(|r| r.2.to_string()).collect::<Vec<_>>()),
        )
        .with(
            "k",
            Column::I64(
                rows.iter()
                    .map(|r| if r.2 == "knn" { 1 } else { 0 })
                    .collect(),
            ),
        )
        .with("metric", text(&repeat("cosine".into(), n)))
        .with("accuracy", Column::F64(rows.iter().map(|r| r.3).collect()));
    write_table(&Output::Path(path.into()), &table, &Provenance::new()).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    stats: Vec<String>,
    probes: Vec<String>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (mut stats, mut probes) = (Vec::new(), Vec::new());
    for t in tracks() {
        for a in ["noise", "augment"] {
            let p = root.join(format!("{}-{a}.parquet", t.name));
            write_stats(&p, &t, a);
            stats.push(p.to_str().unwrap().to_string());
        }
        let p = root.join(format!("{}-probes.parquet", t.name));
        write_probes(&p, &t);
        probes.push(p.to_str().unwrap().to_string());
    }
    Fixture {
        _dir: dir,
        root,
        stats,
        probes,
    }
}

fn run(f: &Fixture, out: &Path, extra_stats: &[String]) -> anyhow::Result<()> {
    let mut argv: Vec<String> = vec!["correlate".into(), "--stats".into()];
    argv.extend(f.stats.iter().cloned());
    argv.extend(extra_stats.iter().cloned());
    argv.push("--probes".into());
    argv.extend(f.probes.iter().cloned());
    argv.extend(
        [
            "--resamples",
            "200",
            "--no-loo",
            "-o",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    correlate_tool::run(argv)
}

/// The row of `table` where each (column, value) of `key` matches.
fn find(table: &Table, key: &[(&str, &str)]) -> usize {
    let cols: Vec<Vec<String>> = key.iter().map(|(c, _)| table.strings(c).unwrap()).collect();
    (0..table.rows())
        .find(|&i| key.iter().zip(&cols).all(|((_, v), c)| c[i] == *v))
        .unwrap_or_else(|| panic!("no row {key:?}"))
}

fn value(table: &Table, row: usize, column: &str) -> f64 {
    table.f64s(column).unwrap()[row]
}

#[test]
fn two_tracks_with_colliding_ids_pool_into_the_paper_pool() {
    let f = fixture();
    let out = f.root.join("report");
    run(&f, &out, &[]).unwrap();
    let (corr, _) = read_table(&Input::Path(out.join("correlations.parquet"))).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // (pool, pairs, Pearson, Kendall tau-b, Spearman) from SciPy.
    for (pool, n, r, tau, rho) in [
        (
            "paper/knn",
            24.0,
            0.718237673197,
            0.661672838549,
            0.784965034965,
        ),
        (
            "paper/linear",
            12.0,
            0.895278548067,
            0.870254363587,
            0.952715996940,
        ),
        (
            "paper/both",
            36.0,
            0.699302190794,
            0.687740558467,
            0.816046793561,
        ),
    ] {
        let i = find(
            &corr,
            &[("alteration", "noise"), ("metric", "RMQM"), ("group", pool)],
        );
        assert_eq!(value(&corr, i, "n"), n, "{pool}");
        assert_eq!(
            value(&corr, i, "models"),
            12.0,
            "{pool}: both tracks' models"
        );
        assert!(
            close(value(&corr, i, "pearson"), r),
            "{pool}: {}",
            value(&corr, i, "pearson")
        );
        assert!(close(value(&corr, i, "kendall_tau_b"), tau), "{pool}");
        assert!(close(value(&corr, i, "spearman"), rho), "{pool}");
    }
    // Fashion-MNIST is in the all-tasks pool only.
    let all = find(&corr, &[("metric", "RMQM"), ("group", "all/knn")]);
    assert_eq!(value(&corr, all, "n"), 30.0);
    let (ablation, _) = read_table(&Input::Path(out.join("ablation.parquet"))).unwrap();
    for (pool, terms, r) in [
        ("paper/knn", "D", 0.636868291628),
        ("paper/knn", "1/D_RC + 1/P_RC", 0.714747107236),
        ("paper/both", "D", 0.611209320636),
    ] {
        let i = find(&ablation, &[("pool", pool), ("terms", terms)]);
        assert!(close(value(&ablation, i, "pearson"), r), "{pool} {terms}");
    }
    // LiDAR from the augment walks joins every model; the leaderboard holds it.
    let (board, _) = read_table(&Input::Path(out.join("leaderboard.parquet"))).unwrap();
    let i = find(&board, &[("pool", "paper/both"), ("metric", "LiDAR")]);
    assert_eq!(value(&board, i, "n"), 36.0);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("cifar10 (6 models), mnist (6 models)"),
        "{report}"
    );
    assert!(report.contains("| 0.75 |") && report.contains("`paper/knn`"));
    let (models, _) = read_table(&Input::Path(out.join("models.parquet"))).unwrap();
    assert_eq!(models.rows(), 12);
}

#[test]
fn refused_inputs_name_both_files_and_write_nothing() {
    let f = fixture();
    let out = f.root.join("refused");
    // A second file claiming mnist's noise stats of the same models.
    let t = &tracks()[0];
    let twin = f.root.join("twin.parquet");
    write_stats(&twin, t, "noise");
    let err = run(&f, &out, &[twin.to_str().unwrap().to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mnist-noise.parquet") && err.contains("twin.parquet"),
        "{err}"
    );
    assert!(err.contains("mnist/cross-entropy_d16_adam_s0"), "{err}");
    assert!(
        !out.exists(),
        "nothing is written when the inputs are refused"
    );
}

#[test]
fn stats_without_probes_are_named_in_models() {
    let mut f = fixture();
    f.probes.retain(|p| !p.contains("cifar10"));
    let out = f.root.join("partial");
    run(&f, &out, &[]).unwrap();
    let models = std::fs::read_to_string(out.join("models.md")).unwrap();
    assert!(
        models.contains("| cifar10 | ntxent_d16_adam_s0 |"),
        "{models}"
    );
    assert_eq!(models.matches("| missing |").count(), 6, "{models}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("stats without probe results: cifar10/"),
        "{report}"
    );
}

// The expected values, from this script (NumPy 2, SciPy 1.16):
//
// import numpy as np; from scipy import stats
// tr = {"mnist": dict(D=[...], idrc=[...], iprc=[...], rmqm=[...], acc={(ds, task): [...]}),
//       "cifar10": ...}                               # the numbers of tracks() above
// def pool(sel):                                       # pairs of a pool, accuracy / max per (ds, task)
//     for t, v in tr.items():
//         for (ds, task), acc in v["acc"].items():
//             if sel(ds, task): for i in range(6): x.append(v["rmqm"][i]); y.append(acc[i] / max(acc))
// knn  = lambda ds, t: t == "knn-1" and ds in ("omniglot", "kmnist", "caltech101", "cifar100")
// lin  = lambda ds, t: t == "linear" and ds in ("kmnist", "caltech101", "cifar100")
// stats.pearsonr(x, y), stats.kendalltau(x, y), stats.spearmanr(x, y)
// ablation "D": stats.pearsonr(np.log1p(D), y); "1/D_RC + 1/P_RC": stats.pearsonr(np.log1p(idrc + iprc), y)
