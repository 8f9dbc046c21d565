//! Readers for Parquet files and Arrow IPC (stream or file), from a path or stdin, detected by
//! their first bytes. Batches are read lazily, so memory is bounded by the batch size.

use crate::{ArtifactError, Input, Provenance};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

/// The container format of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC stream (what tools write to stdout).
    IpcStream,
    /// Arrow IPC file (`ARROW1` magic).
    IpcFile,
}

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, arrow_schema::ArrowError>> + Send>;

/// An open artifact: its schema, provenance and a lazy iterator over its record batches.
pub struct ArtifactReader {
    path: PathBuf,
    format: Format,
    schema: SchemaRef,
    provenance: Provenance,
    batches: BatchIter,
    rows: Option<usize>,
}

fn detect(path: &PathBuf, head: &[u8]) -> Result<Format, ArtifactError> {
    if head.starts_with(b"PAR1") {
        Ok(Format::Parquet)
    } else if head.starts_with(b"ARROW1") {
        Ok(Format::IpcFile)
    } else if head.starts_with(&[0xff, 0xff, 0xff, 0xff]) {
        Ok(Format::IpcStream)
    } else if head.is_empty() {
        Err(ArtifactError::corrupt(
            path,
            "empty input (expected a Parquet file or an Arrow IPC stream)",
        ))
    } else {
        Err(ArtifactError::corrupt(
            path,
            "not a Parquet file or an Arrow IPC stream",
        ))
    }
}

impl ArtifactReader {
    /// Opens `input` reading batches of about `batch_rows` rows (Parquet; IPC keeps the writer's batches).
    pub fn open(input: &Input, batch_rows: usize) -> Result<Self, ArtifactError> {
        Self::open_with_stdin(input, batch_rows, || Box::new(std::io::stdin()))
    }

    /// Like [`ArtifactReader::open`], with the stream that `-` means given by `stdin` (tests, pipes).
    pub fn open_with_stdin(
        input: &Input,
        batch_rows: usize,
        stdin: impl FnOnce() -> Box<dyn Read + Send>,
    ) -> Result<Self, ArtifactError> {
        let path = input.display_path();
        match input {
            Input::Path(p) => {
                let mut file = File::open(p).map_err(|e| ArtifactError::io(p, e))?;
                let mut head = [0u8; 8];
                let n = read_up_to(&mut file, &mut head).map_err(|e| ArtifactError::io(p, e))?;
                let format = detect(&path, &head[..n])?;
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| ArtifactError::io(p, e))?;
                match format {
                    Format::Parquet => {
                        Self::parquet(path, ParquetSource::File(p.clone()), file, batch_rows)
                    }
                    Format::IpcFile => {
                        let r = arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None)
                            .map_err(|e| ArtifactError::corrupt(&path, e))?;
                        let schema = r.schema();
                        Ok(Self::assemble(
                            path,
                            Format::IpcFile,
                            schema,
                            Box::new(r),
                            None,
                        ))
                    }
                    Format::IpcStream => Self::ipc_stream(path, Box::new(file)),
                }
            }
            Input::Stdin => {
                let mut stream = stdin();
                let mut head = [0u8; 8];
                let n =
                    read_up_to(&mut stream, &mut head).map_err(|e| ArtifactError::io(&path, e))?;
                let format = detect(&path, &head[..n])?;
                let chained: Box<dyn Read + Send> =
                    Box::new(std::io::Cursor::new(head[..n].to_vec()).chain(stream));
                match format {
                    Format::IpcStream => Self::ipc_stream(path, chained),
                    _ => {
                        // Parquet and IPC files need random access: buffer the input.
                        let mut bytes = Vec::new();
                        let mut chained = chained;
                        chained
                            .read_to_end(&mut bytes)
                            .map_err(|e| ArtifactError::io(&path, e))?;
                        let bytes = bytes::Bytes::from(bytes);
                        if format == Format::Parquet {
                            Self::parquet(
                                path,
                                ParquetSource::Bytes(bytes.clone()),
                                bytes,
                                batch_rows,
                            )
                        } else {
                            let r = arrow_ipc::reader::FileReader::try_new(
                                std::io::Cursor::new(bytes),
                                None,
                            )
                            .map_err(|e| ArtifactError::corrupt(&path, e))?;
                            let schema = r.schema();
                            Ok(Self::assemble(
                                path,
                                Format::IpcFile,
                                schema,
                                Box::new(r),
                                None,
                            ))
                        }
                    }
                }
            }
        }
    }

    fn parquet<T: parquet::file::reader::ChunkReader + 'static>(
        path: PathBuf,
        source: ParquetSource,
        first: T,
        batch_rows: usize,
    ) -> Result<Self, ArtifactError> {
        let metadata = ArrowReaderMetadata::load(&first, Default::default())
            .map_err(|e| ArtifactError::corrupt(&path, e))?;
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        let mut schema = metadata.schema().clone();
        // Parquet key-value metadata may hold entries the Arrow schema lacks (files from other writers).
        if let Some(kv) = metadata.metadata().file_metadata().key_value_metadata() {
            let mut md = schema.metadata().clone();
            for e in kv {
                if e.key.starts_with(crate::METADATA_PREFIX) {
                    if let Some(v) = &e.value {
                        if !md.contains_key(&e.key) {
                            md.insert(e.key.clone(), v.clone());
                        }
                    }
                }
            }
            schema = std::sync::Arc::new(schema.as_ref().clone().with_metadata(md));
        }
        let row_groups = metadata.metadata().num_row_groups();
        let workers = decode_threads().min(row_groups);
        let batches: BatchIter = if workers > 1 {
            Box::new(ParallelRowGroups::start(
                source,
                metadata,
                batch_rows.max(1),
                workers,
            ))
        } else {
            Box::new(
                ParquetRecordBatchReaderBuilder::new_with_metadata(first, metadata)
                    .with_batch_size(batch_rows.max(1))
                    .build()
                    .map_err(|e| ArtifactError::corrupt(&path, e))?,
            )
        };
        Ok(Self::assemble(
            path,
            Format::Parquet,
            schema,
            batches,
            Some(rows),
        ))
    }

    fn ipc_stream(path: PathBuf, source: Box<dyn Read + Send>) -> Result<Self, ArtifactError> {
        let r = arrow_ipc::reader::StreamReader::try_new(
            BufReader::with_capacity(1 << 20, source),
            None,
        )
        .map_err(|e| ArtifactError::corrupt(&path, e))?;
        let schema = r.schema();
        Ok(Self::assemble(
            path,
            Format::IpcStream,
            schema,
            Box::new(r),
            None,
        ))
    }

    fn assemble(
        path: PathBuf,
        format: Format,
        schema: SchemaRef,
        batches: BatchIter,
        rows: Option<usize>,
    ) -> Self {
        let provenance = Provenance::from_metadata(schema.metadata());
        ArtifactReader {
            path,
            format,
            schema,
            provenance,
            batches,
            rows,
        }
    }

    /// The path shown in messages (`-` for stdin).
    pub fn path(&self) -> &PathBuf {
        &self.path
    }
    /// The container format.
    pub fn format(&self) -> Format {
        self.format
    }
    /// The Arrow schema (with metadata).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// The `rmqm.` provenance entries.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
    /// Total rows when the format records it up front (Parquet), for progress bars.
    pub fn total_rows(&self) -> Option<usize> {
        self.rows
    }
    /// The next record batch, `None` at the end; errors name the file.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, ArtifactError> {
        match self.batches.next() {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(ArtifactError::corrupt(&self.path, e)),
        }
    }
}

/// Where a Parquet file's bytes are, so each decoding thread can read them on its own: a path to
/// open again (one file offset per thread), or the bytes of stdin.
#[derive(Clone)]
enum ParquetSource {
    File(PathBuf),
    Bytes(bytes::Bytes),
}

/// Threads that decode Parquet row groups: the tool's thread count (`RAYON_NUM_THREADS`, which
/// every tool sets from `--threads`), else the cores, at most 4.
fn decode_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 4)
}

type RowGroupBatches = Result<Vec<RecordBatch>, arrow_schema::ArrowError>;

/// Row groups decoded on several threads and yielded in file order: worker k decodes row groups
/// k, k + K, k + 2K, ... and hands each to the reader through its own one-slot channel, so at most
/// two row groups per worker are in memory and the order needs no buffer.
struct ParallelRowGroups {
    receivers: Vec<std::sync::mpsc::Receiver<RowGroupBatches>>,
    next_row_group: usize,
    row_groups: usize,
    ready: std::collections::VecDeque<RecordBatch>,
}

impl ParallelRowGroups {
    fn start(
        source: ParquetSource,
        metadata: ArrowReaderMetadata,
        batch_rows: usize,
        workers: usize,
    ) -> Self {
        let row_groups = metadata.metadata().num_row_groups();
        let receivers = (0..workers)
            .map(|k| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<RowGroupBatches>(1);
                let (source, metadata) = (source.clone(), metadata.clone());
                std::thread::spawn(move || {
                    for rg in (k..row_groups).step_by(workers) {
                        let decoded = decode_row_group(&source, &metadata, rg, batch_rows);
                        let failed = decoded.is_err();
                        if tx.send(decoded).is_err() || failed {
                            return;
                        }
                    }
                });
                rx
            })
            .collect();
        ParallelRowGroups {
            receivers,
            next_row_group: 0,
            row_groups,
            ready: Default::default(),
        }
    }
}

fn decode_row_group(
    source: &ParquetSource,
    metadata: &ArrowReaderMetadata,
    row_group: usize,
    batch_rows: usize,
) -> RowGroupBatches {
    fn read<T: parquet::file::reader::ChunkReader + 'static>(
        chunks: T,
        metadata: &ArrowReaderMetadata,
        row_group: usize,
        batch_rows: usize,
    ) -> RowGroupBatches {
        ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, metadata.clone())
            .with_row_groups(vec![row_group])
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?
            .collect()
    }
    match source {
        ParquetSource::File(p) => {
            let file =
                File::open(p).map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?;
            read(file, metadata, row_group, batch_rows)
        }
        ParquetSource::Bytes(b) => read(b.clone(), metadata, row_group, batch_rows),
    }
}

impl Iterator for ParallelRowGroups {
    type Item = Result<RecordBatch, arrow_schema::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(Ok(b));
            }
            if self.next_row_group >= self.row_groups {
                return None;
            }
            let worker = self.next_row_group % self.receivers.len();
            self.next_row_group += 1;
            match self.receivers[worker].recv() {
                Ok(Ok(batches)) => self.ready.extend(batches),
                Ok(Err(e)) => {
                    // Nothing after a failed row group.
                    self.next_row_group = self.row_groups;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.next_row_group = self.row_groups;
                    return Some(Err(arrow_schema::ArrowError::ComputeError(
                        "a Parquet decoding thread ended early".into(),
                    )));
                }
            }
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
