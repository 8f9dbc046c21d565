//! Writes a small embeddings file, for checking that other tools (pyarrow, DuckDB, polars) open it.
//! Usage: cargo run -p rmqm-artifacts --example write_sample -- out.parquet

use rmqm_artifacts::*;

fn main() -> Result<(), ArtifactError> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sample.parquet".into());
    let dim = 8;
    let mut b = VectorBatchBuilder::new(dim, 30);
    for id in 0..10u32 {
        for step in 0..3u16 {
            let v: Vec<f32> = (0..dim)
                .map(|k| (id * 100 + step as u32 * 10 + k as u32) as f32)
                .collect();
            b.push(id, (id % 2) as i32, step, step as f32 * 0.5, &v);
        }
    }
    let p = Provenance::new()
        .with(keys::KIND, "trajectories")
        .with(keys::MODEL, "sample")
        .with(keys::DIM, dim);
    let mut w = VectorWriter::create(&Output::parse(&path), VectorKind::Embedding, dim, &p)?;
    w.write(&b.finish())?;
    w.finish()?;
    Ok(())
}
