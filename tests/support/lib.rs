//! Fixtures shared by the end-to-end tests: tiny datasets written in the publishers' formats, and
//! a helper that runs a tool's entry point in-process.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// A synthetic 28x28 "digit" of class `class` (0..10): a bright bar whose position and angle
/// depend on the class, plus seeded speckle. Deterministic in (class, index).
pub fn synthetic_digit(class: u8, index: usize) -> Vec<u8> {
    let mut img = vec![0u8; 784];
    let angle = class as f64 * std::f64::consts::PI / 10.0;
    let (dx, dy) = (angle.cos(), angle.sin());
    let offset = (class as f64 - 4.5) * 1.2;
    for y in 0..28 {
        for x in 0..28 {
            let (u, v) = (x as f64 - 13.5, y as f64 - 13.5);
            // Distance from the line through the centre (shifted by the class offset).
            let d = (-dy * u + dx * v - offset).abs();
            let speckle = ((index * 7919 + y * 131 + x * 31) % 97) as f64 / 97.0;
            let value = if d < 2.5 && (dx * u + dy * v).abs() < 10.0 {
                230.0
            } else {
                0.0
            } + 25.0 * speckle;
            img[y * 28 + x] = value.min(255.0) as u8;
        }
    }
    img
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes an IDX dataset split (gzip) under `root/<dataset>/` with `n` synthetic digits of `classes` classes.
pub fn write_idx_split(root: &Path, dataset: &str, split: &str, n: usize, classes: u8) {
    let prefix = if split == "train" { "train" } else { "t10k" };
    let dir = root.join(dataset);
    std::fs::create_dir_all(&dir).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    for i in 0..n {
        let class = (i % classes as usize) as u8;
        images.extend(synthetic_digit(
            class,
            i + if split == "train" { 0 } else { 100_000 },
        ));
        labels.push(class);
    }
    std::fs::write(
        dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        gz(&images),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        gz(&labels),
    )
    .unwrap();
}

/// An argument vector: the tool name followed by `args`.
pub fn argv(tool: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(tool)
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

/// Path as a `&str` for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
