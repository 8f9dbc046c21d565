//! manifold-stats on hand-computed trajectories with known answers, and its error messages.

use manifold_stats_tool::run_outcome;
use rmqm_artifacts::*;
use rmqm_cli::Stdio;
use std::path::Path;

/// Chord length between unit vectors `t` radians apart.
fn chord(t: f64) -> f64 {
    2.0 * (t / 2.0).sin()
}

/// Writes one image per angle list: embedding j of image i is (cos, sin) of angle j, scaled by 3.
fn write_walks(path: &Path, walks: &[Vec<f64>], prov: Provenance) {
    let mut b = VectorBatchBuilder::new(2, 64);
    for (i, angles) in walks.iter().enumerate() {
        for (j, &a) in angles.iter().enumerate() {
            b.push(
                i as u32,
                i as i32 % 2,
                j as u16,
                j as f32 / 10.0,
                &[3.0 * a.cos() as f32, 3.0 * a.sin() as f32],
            );
        }
    }
    let mut w =
        VectorWriter::create(&Output::Path(path.into()), VectorKind::Embedding, 2, &prov).unwrap();
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
}

fn run(args: &[&str]) -> anyhow::Result<manifold_stats_tool::Outcome> {
    let mut argv = vec!["manifold-stats".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_outcome(argv, Stdio::default())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

#[test]
fn hand_computed_walks_in_both_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let traj = dir.path().join("traj.parquet");
    // Image 0 speeds up: increments 0.1, 0.2, 0.3, 0.4.
    // Image 1 stops moving after one step (0/0 and x/0 in P_RC).
    // Image 2 returns to its start (x/0 in D_RC).
    let walks = vec![
        vec![0.0, 0.1, 0.3, 0.6, 1.0],
        vec![0.0, 0.2, 0.2, 0.2, 0.2],
        vec![0.0, 0.3, 0.0, 0.3, 0.0],
    ];
    let prov = Provenance::new()
        .with(keys::MODEL, "toy")
        .with(keys::METHOD, "ntxent")
        .with(keys::DIM, 2)
        .with(keys::ALTERATION, "noise");
    write_walks(&traj, &walks, prov);
    let summary = dir.path().join("summary.parquet");
    let curves = dir.path().join("curves.parquet");
    let per_image = dir.path().join("images.parquet");
    let out = run(&[
        traj.to_str().unwrap(),
        "-o",
        summary.to_str().unwrap(),
        "--convention",
        "both",
        "--curves",
        curves.to_str().unwrap(),
        "--per-image",
        per_image.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(out.n_images, 3);
    let j = 4.0;

    // Image 0 by hand.
    let th = [0.0, 0.1, 0.3, 0.6, 1.0];
    let d0: Vec<f64> = th.iter().map(|&t| chord(t)).collect();
    let dp: Vec<f64> = (0..5)
        .map(|k| {
            if k == 0 {
                0.0
            } else {
                chord(th[k] - th[k - 1])
            }
        })
        .collect();
    let d_0 = d0[1..].iter().sum::<f64>() / j;
    let drc_0 = (1..5)
        .map(|k| (d0[k] - d0[k - 1]).abs() / d0[k])
        .sum::<f64>()
        / j;
    let prc_0 = (2..5)
        .map(|k| (dp[k] - dp[k - 1]).abs() / dp[k])
        .sum::<f64>()
        / j;
    // Image 1: d0 = [0,c,c,c,c]; D_RC terms 1,0,0,0; P_RC terms x/0 (left out), 0/0, 0/0.
    let c2 = chord(0.2);
    let d_1 = c2;
    let drc_1 = 1.0 / j;
    let prc_1 = 0.0;
    // Image 2: d0 = [0,c,0,c,0]; D_RC terms 1, x/0, 1, x/0; dp constant: P_RC 0.
    let c3 = chord(0.3);
    let d_2 = 2.0 * c3 / j;
    let drc_2 = 2.0 / j;
    let prc_2 = 0.0;

    let paper = &out.summaries[0];
    assert_eq!(paper.n_steps, 4);
    let d = (d_0 + d_1 + d_2) / 3.0;
    let drc = (drc_0 + drc_1 + drc_2) / 3.0;
    let prc = (prc_0 + prc_1 + prc_2) / 3.0;
    assert!(close(paper.d, d), "{} {}", paper.d, d);
    assert!(close(paper.d_rc, drc));
    assert!(close(paper.p_rc, prc));
    assert!(close(paper.rmqm, (1.0 + d + 1.0 / drc + 1.0 / prc).ln()));
    assert!(close(
        paper.rmqm_weighted,
        (1.0 + 0.95 * d + 0.74 / drc + 0.11 / prc).ln()
    ));
    assert_eq!(paper.d_rc_left_out, 2);
    assert_eq!(paper.p_rc_left_out, 1);
    assert_eq!(paper.p_rc_zero_over_zero, 2);
    assert_eq!(paper.d_rc_zero_over_zero, 0);

    // Reference: image 1 dropped from spike_prev (0/0), image 2 dropped from spike_orig (c/0).
    let r = &out.summaries[1];
    let s0_0 = (2..5).map(|k| (d0[k] / d0[k - 1] - 1.0).abs()).sum::<f64>() / 3.0;
    let sp_0 = (2..5).map(|k| (dp[k] / dp[k - 1] - 1.0).abs()).sum::<f64>() / 3.0;
    let s0_1 = 0.0; // constant d0 after step 1
    let sp_2 = 0.0; // constant dp
    assert_eq!(r.d_rc_dropped_images, 1);
    assert_eq!(r.p_rc_dropped_images, 1);
    assert!(close(r.d_rc, (s0_0 + s0_1) / 2.0));
    assert!(close(r.p_rc, (sp_0 + sp_2) / 2.0));
    let mean_dp = (dp[1..].iter().sum::<f64>() / j + c2 / j + c3) / 3.0;
    assert!(close(r.distance_term, d + mean_dp));
    assert!(close(
        r.rmqm,
        (1.0 + d + mean_dp + 1.0 / r.d_rc + 1.0 / r.p_rc).ln()
    ));

    // The summary file carries provenance columns and both rows.
    let (t, prov) = read_table(&Input::Path(summary)).unwrap();
    assert_eq!(t.rows(), 2);
    assert_eq!(t.strings("model").unwrap(), vec!["toy", "toy"]);
    assert_eq!(t.strings("convention").unwrap(), vec!["paper", "reference"]);
    assert_eq!(t.f64s("dim").unwrap(), vec![2.0, 2.0]);
    assert_eq!(prov.get(keys::KIND), Some("stats"));
    assert!(
        prov.get(keys::COMMAND)
            .unwrap()
            .contains("--convention both")
    );

    // Curves: step 1 of d0 is the mean of the three first steps.
    let (c, _) = read_table(&Input::Path(curves)).unwrap();
    assert_eq!(c.rows(), 5);
    let m = c.f64s("d0_mean").unwrap();
    assert!(close(m[1], (chord(0.1) + c2 + c3) / 3.0));
    let n_rc0 = c.f64s("rc0_n").unwrap();
    assert_eq!(n_rc0[2], 2.0, "image 2's x/0 at step 2 is left out");
    assert!(close(c.f64s("epsilon").unwrap()[3], 0.3));

    // Per image.
    let (p, _) = read_table(&Input::Path(per_image)).unwrap();
    assert_eq!(p.rows(), 3);
    assert!(close(p.f64s("D").unwrap()[0], d_0));
    assert!(p.f64s("spike_prev").unwrap()[1].is_nan());
}

#[test]
fn constant_steps_on_a_ray_give_no_spikes() {
    // Constant angular steps: dp constant, so P_RC = 0 and RMQM is infinite, as the equations say.
    let dir = tempfile::tempdir().unwrap();
    let traj = dir.path().join("ray.parquet");
    let walk: Vec<f64> = (0..11).map(|k| k as f64 * 0.05).collect();
    write_walks(&traj, &[walk.clone(), walk], Provenance::new());
    let out = run(&[
        traj.to_str().unwrap(),
        "-o",
        dir.path().join("s.parquet").to_str().unwrap(),
    ])
    .unwrap();
    let s = &out.summaries[0];
    let d = (1..11).map(|k| chord(k as f64 * 0.05)).sum::<f64>() / 10.0;
    let drc = (1..11)
        .map(|k| (chord(k as f64 * 0.05) - chord((k - 1) as f64 * 0.05)) / chord(k as f64 * 0.05))
        .sum::<f64>()
        / 10.0;
    assert!(close(s.d, d));
    assert!(close(s.d_rc, drc));
    assert!(s.p_rc.abs() < 1e-5);
    assert!(s.rmqm > 10.0);
}

#[test]
fn by_label_adds_a_row_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let traj = dir.path().join("t.parquet");
    let walks = vec![
        vec![0.0, 0.1, 0.3],
        vec![0.0, 0.2, 0.3],
        vec![0.0, 0.1, 0.4],
    ];
    write_walks(&traj, &walks, Provenance::new());
    let summary = dir.path().join("s.parquet");
    run(&[
        traj.to_str().unwrap(),
        "-o",
        summary.to_str().unwrap(),
        "--by-label",
    ])
    .unwrap();
    let (t, _) = read_table(&Input::Path(summary)).unwrap();
    assert_eq!(t.strings("label").unwrap(), vec!["all", "0", "1"]);
    assert_eq!(t.f64s("n_images").unwrap(), vec![3.0, 2.0, 1.0]);
}

fn write_rows(path: &Path, rows: &[(u32, u16, [f32; 2])], prov: Provenance) {
    let mut b = VectorBatchBuilder::new(2, rows.len());
    for &(id, step, v) in rows {
        b.push(id, 0, step, 0.0, &v);
    }
    let mut w =
        VectorWriter::create(&Output::Path(path.into()), VectorKind::Embedding, 2, &prov).unwrap();
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
}

#[test]
fn bad_inputs_give_clear_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.parquet");
    let o = out.to_str().unwrap();
    let case = |name: &str, rows: &[(u32, u16, [f32; 2])], prov: Provenance| -> String {
        let p = dir.path().join(name);
        write_rows(&p, rows, prov);
        let e = run(&[p.to_str().unwrap(), "-o", o])
            .err()
            .expect("must fail");
        let msg = format!("{e:#}");
        assert!(msg.contains(name), "{msg}");
        msg
    };
    let v = [1.0, 0.0];
    assert!(
        case(
            "missing.parquet",
            &[(0, 0, v), (0, 1, v), (0, 3, v)],
            Provenance::new()
        )
        .contains("missing")
    );
    assert!(
        case(
            "dup.parquet",
            &[(0, 0, v), (0, 1, v), (0, 1, v), (0, 2, v)],
            Provenance::new()
        )
        .contains("twice")
    );
    assert!(
        case(
            "split.parquet",
            &[
                (0, 0, v),
                (0, 1, v),
                (0, 2, v),
                (1, 0, v),
                (1, 1, v),
                (1, 2, v),
                (0, 0, v),
                (0, 1, v),
                (0, 2, v)
            ],
            Provenance::new()
        )
        .contains("contiguous")
    );
    assert!(
        case(
            "nan.parquet",
            &[(0, 0, v), (0, 1, [f32::NAN, 0.0]), (0, 2, v)],
            Provenance::new()
        )
        .contains("non-finite")
    );
    assert!(
        case(
            "dims.parquet",
            &[(0, 0, v), (0, 1, v), (0, 2, v)],
            Provenance::new().with(keys::DIM, 3)
        )
        .contains("dim")
    );
    // Wrong schema: a table.
    let table = dir.path().join("table.parquet");
    write_table(
        &Output::Path(table.clone()),
        &Table::new().with("x", Column::F64(vec![1.0])),
        &Provenance::new(),
    )
    .unwrap();
    let e = run(&[table.to_str().unwrap(), "-o", o]).err().unwrap();
    assert!(format!("{e:#}").contains("wrong schema"));
    // Missing file.
    let e = run(&[dir.path().join("nope.parquet").to_str().unwrap(), "-o", o])
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("nope.parquet"));
    assert!(!out.exists(), "no partial output");
}
