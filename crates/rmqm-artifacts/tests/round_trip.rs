//! Parquet and IPC round trips with metadata, atomic writes and every reader check.

use rmqm_artifacts::*;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

fn sample(width: usize, images: u32, steps: u16) -> VectorBatch {
    let mut b = VectorBatchBuilder::new(width, (images as usize) * (steps as usize + 1));
    for id in 0..images {
        for s in 0..=steps {
            let v: Vec<f32> = (0..width)
                .map(|k| id as f32 + s as f32 * 0.1 + k as f32 * 0.01)
                .collect();
            b.push(id, (id % 3) as i32, s, s as f32 / steps.max(1) as f32, &v);
        }
    }
    b.finish()
}

fn provenance() -> Provenance {
    Provenance::new()
        .with(keys::KIND, "trajectories")
        .with(keys::MODEL, "m1")
        .with(keys::DIM, 4)
        .with(keys::SEED, 7)
}

/// A `Write` that appends into shared memory, standing in for stdout.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn parquet_round_trip_keeps_rows_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/traj.parquet");
    let batch = sample(4, 5, 3);
    let mut w = VectorWriter::create(
        &Output::Path(path.clone()),
        VectorKind::Embedding,
        4,
        &provenance(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.write(&batch).unwrap();
    assert_eq!(w.finish().unwrap(), 40);
    // No temporary file is left beside the result.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    let mut r = VectorReader::open(&Input::Path(path.clone()), VectorKind::Embedding, 7).unwrap();
    assert_eq!(r.width(), 4);
    assert_eq!(r.total_rows(), Some(40));
    assert_eq!(r.provenance().get(keys::MODEL), Some("m1"));
    assert_eq!(r.provenance().get(keys::SEED), Some("7"));
    let all = r.read_all().unwrap();
    assert_eq!(all.len(), 40);
    assert_eq!(&all.row(0), &batch.row(0));
    assert_eq!(&all.row(39), &batch.row(19));
    assert_eq!(all.steps[..4], [0, 1, 2, 3]);
    // The wrong kind is rejected with the column named.
    let e = VectorReader::open(&Input::Path(path.clone()), VectorKind::Pixels, 7)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("pixels") && e.to_string().contains("traj.parquet"),
        "{e}"
    );
}

/// `embed ... --output >(...)` or `--output /dev/null`: a FIFO or device at the output path is
/// written in place. Renaming a temporary file onto it (what regular files get) would replace it:
/// as root, `/dev/null` became an ordinary file that later readers of `/dev/null` read.
#[cfg(target_os = "linux")]
#[test]
fn parquet_to_a_fifo_goes_through_it_and_leaves_it_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.parquet");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs")
            .success()
    );
    let (sent, received) = std::sync::mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || sent.send(std::fs::read(&reader_path).unwrap()).unwrap());
    let batch = sample(4, 5, 3);
    let mut w = VectorWriter::create(
        &Output::Path(fifo.clone()),
        VectorKind::Embedding,
        4,
        &provenance(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    assert_eq!(w.finish().unwrap(), 20);
    let bytes = received
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("nothing came through the FIFO: it was replaced");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let copy = dir.path().join("copy.parquet");
    std::fs::write(&copy, &bytes).unwrap();
    let mut r = VectorReader::open(&Input::Path(copy), VectorKind::Embedding, 7).unwrap();
    let all = r.read_all().unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(&all.row(19), &batch.row(19));
}

#[test]
fn ipc_stream_round_trip_through_a_pipe() {
    let sink = Shared::default();
    let s2 = sink.clone();
    let mut w = VectorWriter::create_with_stdout(
        &Output::Stdout,
        VectorKind::Embedding,
        4,
        &provenance(),
        move || Box::new(s2),
    )
    .unwrap();
    let batch = sample(4, 3, 2);
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let bytes = sink.0.lock().unwrap().clone();
    let mut r =
        VectorReader::open_with_stdin(&Input::Stdin, VectorKind::Embedding, 1024, move || {
            Box::new(Cursor::new(bytes))
        })
        .unwrap();
    assert_eq!(r.provenance().get(keys::KIND), Some("trajectories"));
    assert_eq!(r.read_all().unwrap(), batch);
}

#[test]
fn parquet_on_stdin_is_buffered_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let batch = sample(4, 2, 1);
    let mut w = VectorWriter::create(
        &Output::Path(path.clone()),
        VectorKind::Embedding,
        4,
        &provenance(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut r =
        VectorReader::open_with_stdin(&Input::Stdin, VectorKind::Embedding, 1024, move || {
            Box::new(Cursor::new(bytes))
        })
        .unwrap();
    assert_eq!(r.read_all().unwrap(), batch);
}

#[test]
fn a_writer_dropped_before_finish_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.parquet");
    {
        let mut w = VectorWriter::create(
            &Output::Path(path.clone()),
            VectorKind::Embedding,
            4,
            &provenance(),
        )
        .unwrap();
        w.write(&sample(4, 2, 1)).unwrap();
        // Dropped here, as on an error.
    }
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file removed"
    );
    // An existing file is only replaced when the new one is complete.
    std::fs::write(&path, b"old").unwrap();
    {
        let mut w = VectorWriter::create(
            &Output::Path(path.clone()),
            VectorKind::Embedding,
            4,
            &provenance(),
        )
        .unwrap();
        w.write(&sample(4, 2, 1)).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
}

#[test]
fn reader_rejects_bad_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = dir.path().join("nope.parquet");
    let e = VectorReader::open(&Input::Path(missing), VectorKind::Embedding, 16)
        .err()
        .unwrap();
    assert!(e.to_string().contains("nope.parquet"), "{e}");
    // Not parquet.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"hello world").unwrap();
    let e = VectorReader::open(&Input::Path(junk), VectorKind::Embedding, 16)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("junk.parquet") && e.to_string().contains("not a Parquet"),
        "{e}"
    );
    // Truncated parquet.
    let good = dir.path().join("good.parquet");
    let mut w = VectorWriter::create(
        &Output::Path(good.clone()),
        VectorKind::Embedding,
        4,
        &provenance(),
    )
    .unwrap();
    w.write(&sample(4, 5, 3)).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = VectorReader::open(&Input::Path(cut), VectorKind::Embedding, 16)
        .err()
        .unwrap();
    assert!(e.to_string().contains("cut.parquet"), "{e}");
    // Wrong schema: a table that is not a vector artifact.
    let table = dir.path().join("table.parquet");
    write_table(
        &Output::Path(table.clone()),
        &Table::new().with("x", Column::F64(vec![1.0])),
        &Provenance::new(),
    )
    .unwrap();
    let e = VectorReader::open(&Input::Path(table), VectorKind::Embedding, 16)
        .err()
        .unwrap();
    assert!(e.to_string().contains("wrong schema"), "{e}");
    // NaN values.
    let nan = dir.path().join("nan.parquet");
    let mut b = VectorBatchBuilder::new(2, 2);
    b.push(0, 0, 0, 0.0, &[0.0, 1.0]);
    b.push(0, 0, 1, 0.1, &[f32::NAN, 1.0]);
    let mut w = VectorWriter::create(
        &Output::Path(nan.clone()),
        VectorKind::Embedding,
        2,
        &provenance(),
    )
    .unwrap();
    w.write(&b.finish()).unwrap();
    w.finish().unwrap();
    let mut r = VectorReader::open(&Input::Path(nan), VectorKind::Embedding, 16).unwrap();
    let e = r.next_batch().err().unwrap();
    assert!(
        e.to_string().contains("non-finite") && e.to_string().contains("step 1"),
        "{e}"
    );
    // Width mismatch on write.
    let mut w = VectorWriter::create(
        &Output::Path(dir.path().join("w.parquet")),
        VectorKind::Embedding,
        3,
        &provenance(),
    )
    .unwrap();
    assert!(w.write(&sample(4, 1, 1)).is_err());
}

#[test]
fn pixels_need_matching_shape_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alt.parquet");
    let p = provenance()
        .with(keys::CHANNELS, 1)
        .with(keys::HEIGHT, 2)
        .with(keys::WIDTH, 2);
    let mut w =
        VectorWriter::create(&Output::Path(path.clone()), VectorKind::Pixels, 4, &p).unwrap();
    w.write(&sample(4, 1, 1)).unwrap();
    w.finish().unwrap();
    assert!(VectorReader::open(&Input::Path(path.clone()), VectorKind::Pixels, 16).is_ok());
    let bad = dir.path().join("bad.parquet");
    let p = provenance()
        .with(keys::CHANNELS, 1)
        .with(keys::HEIGHT, 3)
        .with(keys::WIDTH, 2);
    let mut w =
        VectorWriter::create(&Output::Path(bad.clone()), VectorKind::Pixels, 4, &p).unwrap();
    w.write(&sample(4, 1, 1)).unwrap();
    w.finish().unwrap();
    let e = VectorReader::open(&Input::Path(bad), VectorKind::Pixels, 16)
        .err()
        .unwrap();
    assert!(e.to_string().contains("metadata"), "{e}");
}

#[test]
fn tables_round_trip_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let t = Table::new()
        .with("model", Column::Str(vec!["a".into(), "b".into()]))
        .with("RMQM", Column::F64(vec![1.5, f64::NAN]))
        .with("n_images", Column::I64(vec![10, 20]));
    let p1 = dir.path().join("t1.parquet");
    let p2 = dir.path().join("t2.parquet");
    write_table(
        &Output::Path(p1.clone()),
        &t,
        &Provenance::new().with(keys::TOOL, "x"),
    )
    .unwrap();
    write_table(&Output::Path(p2.clone()), &t, &Provenance::new()).unwrap();
    let (back, prov) = read_table(&Input::Path(p1.clone())).unwrap();
    assert_eq!(prov.get(keys::TOOL), Some("x"));
    assert_eq!(back.strings("model").unwrap(), vec!["a", "b"]);
    assert!(back.f64s("RMQM").unwrap()[1].is_nan());
    let (both, provs) = read_tables(&[Input::Path(p1), Input::Path(p2)]).unwrap();
    assert_eq!(both.rows(), 4);
    assert_eq!(provs.len(), 2);
    assert!(t.to_markdown().contains("| model | RMQM | n_images |"));
}

#[test]
fn many_row_groups_decoded_in_parallel_come_back_in_file_order() {
    // 40 row groups of 5 rows, written by parquet's own writer; read from a path (threads open the
    // file each) and from stdin (threads share the bytes).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.parquet");
    let batch = sample(3, 50, 3);
    let rb = batch.to_record_batch(VectorKind::Embedding);
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(5))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        rb.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&rb).unwrap();
    w.close().unwrap();
    let mut r = VectorReader::open(&Input::Path(path.clone()), VectorKind::Embedding, 3).unwrap();
    assert_eq!(r.read_all().unwrap(), batch);
    let bytes = std::fs::read(&path).unwrap();
    let mut r = VectorReader::open_with_stdin(&Input::Stdin, VectorKind::Embedding, 7, move || {
        Box::new(Cursor::new(bytes))
    })
    .unwrap();
    assert_eq!(r.read_all().unwrap(), batch);
}

#[test]
fn embeddings_are_stored_uncompressed_and_everything_else_snappy() {
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let codecs = |kind: VectorKind, name: &str| {
        let path = dir.path().join(name);
        let mut p = provenance();
        if kind == VectorKind::Pixels {
            p = p
                .with(keys::CHANNELS, 1)
                .with(keys::HEIGHT, 2)
                .with(keys::WIDTH, 2);
        }
        let mut w = VectorWriter::create(&Output::Path(path.clone()), kind, 4, &p).unwrap();
        w.write(&sample(4, 3, 2)).unwrap();
        w.finish().unwrap();
        let file = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let row_group = file.metadata().row_group(0);
        row_group
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), c.compression()))
            .collect::<Vec<_>>()
    };
    let embedding = codecs(VectorKind::Embedding, "e.parquet");
    assert_eq!(embedding.len(), 5);
    for (column, codec) in &embedding {
        let expected = if column.starts_with("embedding") {
            Compression::UNCOMPRESSED
        } else {
            Compression::SNAPPY
        };
        assert_eq!(*codec, expected, "{column}");
    }
    for (column, codec) in codecs(VectorKind::Pixels, "p.parquet") {
        assert_eq!(codec, Compression::SNAPPY, "{column}");
    }
}
