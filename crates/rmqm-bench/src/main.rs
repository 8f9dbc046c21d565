//! `rmqm-bench`: runs every stage's benchmark, each in its own process (so its peak memory is its
//! own), and prints one table (also written as bench.md and bench.parquet).
//!
//! Usage: `rmqm-bench [--out DIR] [--only SUBSTRING] [--repeats N]`; `rmqm-bench run NAME` runs one.
//! With `RMQM_BENCH_NO_REFERENCE` set, model benchmarks skip the candle-default reference run (for
//! quick before/after timing of a kernel change).

mod benches;

use anyhow::{Context, Result, bail};
use rmqm_artifacts::{Column, Output, Provenance, Table, write_table};
use std::path::PathBuf;
use std::process::Command;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured figure.
pub struct Measure {
    /// Stage (train, embed, pgd, alter, manifold-stats, probe).
    pub stage: String,
    /// What was run.
    pub name: String,
    /// The workload in words.
    pub workload: String,
    /// The figure (median over repeats).
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// A second figure for comparison (candle's default ops, or decode-only speed), NaN if none.
    pub reference: f64,
    /// What the reference is.
    pub reference_label: String,
}

fn main() {
    rmqm_cli::prepare_process();
    if let Err(e) = real_main() {
        eprintln!("rmqm-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut out = PathBuf::from("out/bench");
    let mut only: Option<String> = None;
    let mut repeats = 5usize;
    let mut i = 1;
    if args.get(1).map(String::as_str) == Some("run") {
        let name = args.get(2).context("run NAME")?;
        if let Some(p) = args.iter().position(|a| a == "--out") {
            out = PathBuf::from(&args[p + 1]);
        }
        if let Some(p) = args.iter().position(|a| a == "--repeats") {
            repeats = args[p + 1].parse()?;
        }
        let measures = benches::run(name, &out, repeats)?;
        let mem = rmqm_cli::peak_memory_mib().unwrap_or(f64::NAN);
        for m in measures {
            println!(
                "RESULT\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{mem}",
                m.stage, m.name, m.workload, m.value, m.unit, m.reference, m.reference_label
            );
        }
        return Ok(());
    }
    while i < args.len() {
        match args[i].as_str() {
            "--out" => {
                out = PathBuf::from(&args[i + 1]);
                i += 1;
            }
            "--only" => {
                only = Some(args[i + 1].clone());
                i += 1;
            }
            "--repeats" => {
                repeats = args[i + 1].parse()?;
                i += 1;
            }
            "-h" | "--help" => {
                println!(
                    "rmqm-bench [--out DIR] [--only SUBSTRING] [--repeats N]\nBenchmarks: {}",
                    benches::NAMES.join(", ")
                );
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
        i += 1;
    }
    std::fs::create_dir_all(&out)?;
    let exe = std::env::current_exe()?;
    let mut rows: Vec<(Measure, f64)> = Vec::new();
    for name in benches::NAMES {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        eprintln!("rmqm-bench: {name} ...");
        let output = Command::new(&exe)
            .args(["run", name, "--out"])
            .arg(&out)
            .args(["--repeats", &repeats.to_string()])
            .output()?;
        if !output.status.success() {
            bail!("{name} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 9 && f[0] == "RESULT" {
                let m = Measure {
                    stage: f[1].into(),
                    name: f[2].into(),
                    workload: f[3].into(),
                    value: f[4].parse().unwrap_or(f64::NAN),
                    unit: f[5].into(),
                    reference: f[6].parse().unwrap_or(f64::NAN),
                    reference_label: f[7].into(),
                };
                eprintln!("  {} {}: {:.1} {}", m.stage, m.name, m.value, m.unit);
                rows.push((m, f[8].parse().unwrap_or(f64::NAN)));
            }
        }
    }
    let t = Table::new()
        .with(
            "stage",
            Column::Str(rows.iter().map(|r| r.0.stage.clone()).collect()),
        )
        .with(
            "benchmark",
            Column::Str(rows.iter().map(|r| r.0.name.clone()).collect()),
        )
        .with(
            "workload",
            Column::Str(rows.iter().map(|r| r.0.workload.clone()).collect()),
        )
        .with(
            "value",
            Column::F64(rows.iter().map(|r| r.0.value).collect()),
        )
        .with(
            "unit",
            Column::Str(rows.iter().map(|r| r.0.unit.clone()).collect()),
        )
        .with(
            "reference",
            Column::F64(rows.iter().map(|r| r.0.reference).collect()),
        )
        .with(
            "reference_is",
            Column::Str(rows.iter().map(|r| r.0.reference_label.clone()).collect()),
        )
        .with(
            "speedup",
            // Only where the reference is the same work on candle's default ops.
            Column::F64(
                rows.iter()
                    .map(|r| {
                        if r.0.reference_label == "candle default ops" {
                            r.0.value / r.0.reference
                        } else {
                            f64::NAN
                        }
                    })
                    .collect(),
            ),
        )
        .with(
            "peak_memory_mib",
            Column::F64(rows.iter().map(|r| r.1).collect()),
        );
    let md = format!(
        "# rmqm benchmarks\n\n{} threads; medians of {repeats} repeats; peak memory is the benchmark process's.\n\n{}",
        rayon::current_num_threads(),
        t.to_markdown()
    );
    println!("{md}");
    std::fs::write(out.join("bench.md"), &md)?;
    write_table(
        &Output::Path(out.join("bench.parquet")),
        &t,
        &Provenance::new().with("kind", "bench"),
    )?;
    Ok(())
}
