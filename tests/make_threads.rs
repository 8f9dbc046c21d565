//! The Makefile's thread count per tool: every core by default, one when make runs jobs side by
//! side (`make -j2`), and what the user gives with THREADS in either case. Checked on the commands
//! `make -n` prints for the MNIST grid (nothing runs).

use std::collections::BTreeSet;
use std::process::Command;

/// The distinct `--threads N` values in the commands `make -n <flags> paper-mnist` prints.
fn threads_in_grid_commands(flags: &[&str]) -> BTreeSet<String> {
    let out_dir = tempfile::tempdir().expect("temporary folder");
    let out = out_dir.path().display().to_string();
    let output = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("-n")
        .args(flags)
        .args([
            "paper-mnist",
            "DIMS=16",
            "DATA_DIR=data",
            &format!("RESULTS={out}/results"),
            &format!("OUT={out}/out"),
        ])
        .output()
        .expect("GNU make runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "make -n failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    let threads: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "--threads")
        .map(|w| w[1].to_string())
        .collect();
    assert!(
        text.contains("train-encoder") && !threads.is_empty(),
        "make -n printed no grid commands:\n{text}"
    );
    threads
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn tools_get_every_core_alone_and_one_thread_each_side_by_side() {
    assert_eq!(threads_in_grid_commands(&[]), set(&["0"]));
    assert_eq!(threads_in_grid_commands(&["-j1"]), set(&["0"]));
    assert_eq!(threads_in_grid_commands(&["-j2"]), set(&["1"]));
    assert_eq!(threads_in_grid_commands(&["-j"]), set(&["1"]));
}

#[test]
fn threads_given_by_the_user_win() {
    assert_eq!(threads_in_grid_commands(&["THREADS=3"]), set(&["3"]));
    assert_eq!(threads_in_grid_commands(&["-j2", "THREADS=2"]), set(&["2"]));
}
