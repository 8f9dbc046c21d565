//! The probe tool end to end on small embeddings files.

use rmqm_artifacts::*;
use rmqm_cli::Stdio;
use std::path::Path;

fn write(path: &Path, dim: usize, rows: &[(i32, Vec<f32>)], model: &str) {
    let mut b = VectorBatchBuilder::new(dim, rows.len());
    for (i, (l, v)) in rows.iter().enumerate() {
        b.push(i as u32, *l, 0, 0.0, v);
    }
    let p = Provenance::new()
        .with(keys::MODEL, model)
        .with(keys::DATASET, "toyset")
        .with(keys::DIM, dim);
    let mut w =
        VectorWriter::create(&Output::Path(path.into()), VectorKind::Embedding, dim, &p).unwrap();
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
}

fn clusters(n: usize, dim: usize, shift: f32) -> Vec<(i32, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let class = (i % 3) as i32;
            let v = (0..dim)
                .map(|d| {
                    if d == class as usize {
                        5.0
                    } else {
                        ((i * 7 + d) % 5) as f32 * 0.1 + shift
                    }
                })
                .collect();
            (class, v)
        })
        .collect()
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let mut argv = vec!["probe".to_string()];
    argv.extend(args.iter().cloned());
    probe_tool::run_with(argv, Stdio::default())
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn knn_and_linear_on_separable_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, out) = (
        dir.path().join("tr.parquet"),
        dir.path().join("te.parquet"),
        dir.path().join("p.parquet"),
    );
    write(&tr, 4, &clusters(60, 4, 0.0), "m");
    write(&te, 4, &clusters(30, 4, 0.05), "m");
    run(&[
        "--train".into(),
        s(&tr),
        "--test".into(),
        s(&te),
        "--knn".into(),
        "1,3".into(),
        "--linear".into(),
        "-o".into(),
        s(&out),
    ])
    .unwrap();
    let (t, prov) = read_table(&Input::Path(out)).unwrap();
    assert_eq!(t.strings("task").unwrap(), vec!["knn", "knn", "linear"]);
    assert_eq!(t.f64s("k").unwrap(), vec![1.0, 3.0, 0.0]);
    assert_eq!(t.f64s("accuracy").unwrap(), vec![1.0, 1.0, 1.0]);
    assert_eq!(t.strings("downstream").unwrap()[0], "toyset");
    assert_eq!(t.f64s("n_classes").unwrap()[0], 3.0);
    assert_eq!(t.f64s("n_train").unwrap()[0], 60.0);
    assert_eq!(prov.get(keys::KIND), Some("probe"));

    // One file, split 80/20, stratified.
    let all = dir.path().join("all.parquet");
    write(&all, 4, &clusters(100, 4, 0.0), "m");
    let out2 = dir.path().join("p2.parquet");
    run(&[
        "--input".into(),
        s(&all),
        "--split".into(),
        "0.8".into(),
        "-o".into(),
        s(&out2),
    ])
    .unwrap();
    let (t, _) = read_table(&Input::Path(out2)).unwrap();
    assert_eq!(
        t.f64s("n_train").unwrap()[0] + t.f64s("n_test").unwrap()[0],
        100.0
    );
    // Classes of 34, 33, 33 keep round(0.8 n) = 27, 26, 26 for training: 21 test rows.
    assert_eq!(t.f64s("n_test").unwrap()[0], 21.0);
}

#[test]
fn mismatches_and_empty_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.parquet");
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    let c = dir.path().join("c.parquet");
    write(&a, 4, &clusters(10, 4, 0.0), "m");
    write(&b, 3, &clusters(10, 3, 0.0), "m");
    write(&c, 4, &clusters(10, 4, 0.0), "other");
    let e = run(&[
        "--train".into(),
        s(&a),
        "--test".into(),
        s(&b),
        "-o".into(),
        s(&out),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("4-dimensional") && e.contains("b.parquet"),
        "{e}"
    );
    let e = run(&[
        "--train".into(),
        s(&a),
        "--test".into(),
        s(&c),
        "-o".into(),
        s(&out),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("model"), "{e}");
    let empty = dir.path().join("empty.parquet");
    write(&empty, 4, &[], "m");
    let e = run(&[
        "--train".into(),
        s(&a),
        "--test".into(),
        s(&empty),
        "-o".into(),
        s(&out),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty.parquet") && e.contains("no rows"), "{e}");
    let one = dir.path().join("one.parquet");
    write(&one, 4, &clusters(1, 4, 0.0), "m");
    let e = run(&["--input".into(), s(&one), "-o".into(), s(&out)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(!out.exists());
}
