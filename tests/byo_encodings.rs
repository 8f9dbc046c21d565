//! Bring your own encoder: trajectories and embeddings written the way pyarrow, polars, NumPy and
//! PyTorch users write them (other codecs, Arrow IPC files and streams, 64-bit keys, List and
//! LargeList vectors of float16/32/64, columns in another order, extra columns, no epsilon or no
//! step) give manifold-stats and probe the same results as the canonical encoding; malformed
//! ones are refused with the row named.

use arrow_array::builder::{
    FixedSizeListBuilder, Float16Builder, Float64Builder, LargeListBuilder, ListBuilder,
};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rmqm::*;
use rmqm_artifacts::{Output, Provenance, VectorBatchBuilder, VectorKind, VectorWriter, keys};
use rmqm_cli::Stdio;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const IMAGES: usize = 24;
const STEPS: usize = 6;
const DIM: usize = 8;

/// Row (image i, step j)'s embedding: a smooth walk away from a per-image start, exactly
/// representable in float16 (multiples of 1/64 below 8), so every encoding holds the same numbers.
fn embedding(i: usize, j: usize) -> Vec<f32> {
    (0..DIM)
        .map(|k| {
            let base = ((i * 7 + k * 3) % 11) as f32 / 4.0 - 1.0;
            let wiggle = (((i + k) * (j + 1) * 5) % 9) as f32 / 64.0;
            base + j as f32 * (0.25 + k as f32 / 32.0) + wiggle
        })
        .collect()
}

fn rows() -> Vec<(u32, i32, u16, f32, Vec<f32>)> {
    let mut r = Vec::new();
    for i in 0..IMAGES {
        for j in 0..=STEPS {
            r.push((
                i as u32 * 3,
                (i % 3) as i32,
                j as u16,
                j as f32 / 10.0,
                embedding(i, j),
            ));
        }
    }
    r
}

fn canonical(path: &Path) {
    let mut b = VectorBatchBuilder::new(DIM, IMAGES * (STEPS + 1));
    for (id, label, step, eps, v) in rows() {
        b.push(id, label, step, eps, &v);
    }
    let prov = Provenance::new()
        .with(keys::MODEL, "enc")
        .with(keys::TRAIN_DATASET, "mine");
    let mut w = VectorWriter::create(
        &Output::Path(path.into()),
        VectorKind::Embedding,
        DIM,
        &prov,
    )
    .unwrap();
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
}

/// How the vector column is encoded.
#[derive(Clone, Copy, Debug)]
enum Vectors {
    ListF64,
    LargeListF32,
    FixedF16,
}

/// A record batch as a Python user would make it: int64 keys, the embedding first, an extra
/// text column, epsilon as float64 (or absent), step absent when `with_step` is false.
fn foreign_batch(vectors: Vectors, with_step: bool, with_epsilon: bool) -> RecordBatch {
    let r = rows();
    let vector: ArrayRef = match vectors {
        Vectors::ListF64 => {
            let mut b = ListBuilder::new(Float64Builder::new());
            for row in &r {
                for &v in &row.4 {
                    b.values().append_value(v as f64);
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
        Vectors::LargeListF32 => {
            let mut b = LargeListBuilder::new(arrow_array::builder::Float32Builder::new());
            for row in &r {
                b.values().append_slice(&row.4);
                b.append(true);
            }
            Arc::new(b.finish())
        }
        Vectors::FixedF16 => {
            let mut b = FixedSizeListBuilder::new(Float16Builder::new(), DIM as i32);
            for row in &r {
                for &v in &row.4 {
                    b.values().append_value(half::f16::from_f32(v));
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
    };
    let mut fields = vec![Field::new("embedding", vector.data_type().clone(), true)];
    let mut columns: Vec<ArrayRef> = vec![vector];
    fields.push(Field::new("note", arrow_schema::DataType::Utf8, true));
    columns.push(Arc::new(StringArray::from(vec!["x"; r.len()])));
    fields.push(Field::new("image_id", arrow_schema::DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from_iter_values(
        r.iter().map(|x| x.0 as i64),
    )));
    fields.push(Field::new("label", arrow_schema::DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from_iter_values(
        r.iter().map(|x| x.1 as i64),
    )));
    if with_step {
        fields.push(Field::new("step", arrow_schema::DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| x.2 as i64),
        )));
    }
    if with_epsilon {
        fields.push(Field::new("epsilon", arrow_schema::DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter_values(
            r.iter().map(|x| x.3 as f64),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn write_parquet(path: &Path, batch: &RecordBatch, codec: Compression) {
    let props = WriterProperties::builder().set_compression(codec).build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    // Two row groups, so the reader crosses a boundary.
    let half = batch.num_rows() / 2;
    w.write(&batch.slice(0, half)).unwrap();
    w.flush().unwrap();
    w.write(&batch.slice(half, batch.num_rows() - half))
        .unwrap();
    w.close().unwrap();
}

fn write_ipc(
    path: &Path,
    batch: &RecordBatch,
    file: bool,
    compression: Option<arrow_ipc::CompressionType>,
) {
    let options = IpcWriteOptions::default()
        .try_with_compression(compression)
        .unwrap();
    let out = std::fs::File::create(path).unwrap();
    if file {
        let mut w = FileWriter::try_new_with_options(out, &batch.schema(), options).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
    } else {
        let mut w = StreamWriter::try_new_with_options(out, &batch.schema(), options).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
    }
}

/// manifold-stats' summary values (D, D_RC, P_RC, RMQM of both conventions) on `path`.
fn stats(path: &Path, dir: &Path) -> anyhow::Result<Vec<[f64; 4]>> {
    let out = dir.join(format!(
        "{}-stats.parquet",
        path.file_stem().unwrap().to_str().unwrap()
    ));
    let o = manifold_stats_tool::run_outcome(
        argv(
            "manifold-stats",
            &[
                s(path),
                "--convention",
                "both",
                "--model-id",
                "enc",
                "-o",
                s(&out),
            ],
        ),
        Stdio::default(),
    )?;
    Ok(o.summaries
        .iter()
        .map(|x| [x.d, x.d_rc, x.p_rc, x.rmqm])
        .collect())
}

/// probe's accuracies (1-NN, 3-NN, linear) on `path`.
fn probe(path: &Path, dir: &Path) -> anyhow::Result<Vec<f64>> {
    let out = dir.join(format!(
        "{}-probe.parquet",
        path.file_stem().unwrap().to_str().unwrap()
    ));
    probe_tool::run_with(
        argv(
            "probe",
            &[
                "--input",
                s(path),
                "--knn",
                "1,3",
                "--linear",
                "--step",
                "0",
                "-o",
                s(&out),
            ],
        ),
        Stdio::default(),
    )?;
    let (t, _) = rmqm_artifacts::read_table(&rmqm_artifacts::Input::Path(out)).unwrap();
    Ok(t.f64s("accuracy").unwrap())
}

struct Case {
    name: String,
    path: PathBuf,
}

fn foreign_files(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let codecs = [
        ("snappy", Compression::SNAPPY),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4", Compression::LZ4_RAW),
        ("brotli", Compression::BROTLI(BrotliLevel::default())),
        ("none", Compression::UNCOMPRESSED),
    ];
    for (name, codec) in codecs {
        for vectors in [Vectors::ListF64, Vectors::LargeListF32, Vectors::FixedF16] {
            let path = dir.join(format!("{name}-{vectors:?}.parquet"));
            write_parquet(&path, &foreign_batch(vectors, true, name != "gzip"), codec);
            cases.push(Case {
                name: format!("parquet {name} {vectors:?}"),
                path,
            });
        }
    }
    for (file, compression) in [
        (true, None),
        (true, Some(arrow_ipc::CompressionType::ZSTD)),
        (false, None),
        (false, Some(arrow_ipc::CompressionType::LZ4_FRAME)),
    ] {
        let path = dir.join(format!("ipc-{file}-{compression:?}.arrow"));
        write_ipc(
            &path,
            &foreign_batch(Vectors::ListF64, true, true),
            file,
            compression,
        );
        cases.push(Case {
            name: format!("ipc file={file} {compression:?}"),
            path,
        });
    }
    cases
}

#[test]
fn every_foreign_encoding_gives_the_canonical_results() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("canonical.parquet");
    canonical(&reference);
    let want_stats = stats(&reference, dir.path()).unwrap();
    let want_probe = probe(&reference, dir.path()).unwrap();
    assert_eq!(want_stats.len(), 2);
    assert!(want_stats[0][3].is_finite());
    for case in foreign_files(dir.path()) {
        let got = stats(&case.path, dir.path()).unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        assert_eq!(got, want_stats, "{}", case.name);
        let acc = probe(&case.path, dir.path()).unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        assert_eq!(acc, want_probe, "{}", case.name);
    }
}

/// Step 0 of every image as a plain embeddings file: image_id, label, embedding only.
fn plain_batch() -> RecordBatch {
    let step0: Vec<_> = rows().into_iter().filter(|r| r.2 == 0).collect();
    let mut list = ListBuilder::new(Float64Builder::new());
    for r in &step0 {
        for &v in &r.4 {
            list.values().append_value(v as f64);
        }
        list.append(true);
    }
    RecordBatch::try_from_iter(vec![
        (
            "image_id",
            Arc::new(Int64Array::from_iter_values(
                step0.iter().map(|r| r.0 as i64),
            )) as ArrayRef,
        ),
        (
            "label",
            Arc::new(Int64Array::from_iter_values(
                step0.iter().map(|r| r.1 as i64),
            )) as ArrayRef,
        ),
        ("embedding", Arc::new(list.finish()) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn plain_embeddings_without_step_or_epsilon_probe_like_the_canonical_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.parquet");
    write_parquet(
        &path,
        &plain_batch(),
        Compression::ZSTD(ZstdLevel::default()),
    );
    let reference = dir.path().join("canonical.parquet");
    canonical(&reference);
    assert_eq!(
        probe(&path, dir.path()).unwrap(),
        probe(&reference, dir.path()).unwrap()
    );
    // manifold-stats needs steps and says so.
    let e = stats(&path, dir.path()).unwrap_err().to_string();
    assert!(e.contains("no column step"), "{e}");
}

#[test]
fn malformed_foreign_files_are_refused_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let run = |batch: RecordBatch, name: &str| -> String {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, &batch, Compression::SNAPPY);
        stats(&path, dir.path()).unwrap_err().to_string()
    };
    // A ragged list: row 9 one value short.
    let mut b = ListBuilder::new(Float64Builder::new());
    for (k, row) in rows().iter().enumerate() {
        let take = if k == 9 { DIM - 1 } else { DIM };
        for &v in &row.4[..take] {
            b.values().append_value(v as f64);
        }
        b.append(true);
    }
    let good = foreign_batch(Vectors::ListF64, true, true);
    let ragged = good.clone().with_column("embedding", Arc::new(b.finish()));
    let e = run(ragged, "ragged");
    assert!(
        e.contains("row 9 has 7 values") && e.contains("ragged.parquet"),
        "{e}"
    );
    // A null inside a vector.
    let mut b = ListBuilder::new(Float64Builder::new());
    for (k, row) in rows().iter().enumerate() {
        for (d, &v) in row.4.iter().enumerate() {
            if k == 30 && d == 2 {
                b.values().append_null();
            } else {
                b.values().append_value(v as f64);
            }
        }
        b.append(true);
    }
    let e = run(
        good.clone().with_column("embedding", Arc::new(b.finish())),
        "nulls",
    );
    assert!(e.contains("row 30 holds a null"), "{e}");
    // Keys out of range: a negative image id, a step beyond 65535.
    let mut ids: Vec<i64> = rows().iter().map(|r| r.0 as i64).collect();
    ids[40] = -1;
    let e = run(
        good.clone()
            .with_column("image_id", Arc::new(Int64Array::from(ids))),
        "neg",
    );
    assert!(
        e.contains("image_id") && e.contains("value -1 at row 40"),
        "{e}"
    );
    let mut steps: Vec<i64> = rows().iter().map(|r| r.2 as i64).collect();
    steps[3] = 70_000;
    let e = run(
        good.clone()
            .with_column("step", Arc::new(Int64Array::from(steps))),
        "step",
    );
    assert!(e.contains("value 70000 at row 3 is out of range"), "{e}");
    // Not a vector column at all.
    let e = run(
        good.with_column(
            "embedding",
            Arc::new(UInt32Array::from(vec![1u32; IMAGES * (STEPS + 1)])),
        ),
        "scalar",
    );
    assert!(e.contains("FixedSizeList, List or LargeList"), "{e}");
}

/// `with_column`: the batch with one column replaced (schema type updated).
trait WithColumn {
    fn with_column(self, name: &str, column: ArrayRef) -> RecordBatch;
}

impl WithColumn for RecordBatch {
    fn with_column(self, name: &str, column: ArrayRef) -> RecordBatch {
        let schema = self.schema();
        let i = schema.index_of(name).unwrap();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[i] = Field::new(name, column.data_type().clone(), true);
        let mut columns = self.columns().to_vec();
        columns[i] = column;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }
}
