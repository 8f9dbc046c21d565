//! Readers for Parquet files and Arrow IPC (stream or file), from a path or stdin, detected by
//! their first bytes. Batches are read lazily, so memory is bounded by the batch size.

use crate::flat_vectors::{FlatVectorBatches, FlatVectorColumn};
use crate::{ArtifactError, Input, Provenance};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::file::metadata::PageIndexPolicy;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

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
        let metadata = ArrowReaderMetadata::load(&first, reader_options())
            .map_err(|e| ArtifactError::corrupt(&path, e))?;
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        let mut schema = metadata.schema().clone();
        // Parquet key-value metadata may hold entries the Arrow schema lacks (files from other writers).
        if let Some(kv) = metadata.metadata().file_metadata().key_value_metadata() {
            let mut md = schema.metadata().clone();
            for e in kv {
                if e.key.starts_with(crate::METADATA_PREFIX)
                    && let Some(v) = &e.value
                    && !md.contains_key(&e.key)
                {
                    md.insert(e.key.clone(), v.clone());
                }
            }
            schema = std::sync::Arc::new(schema.as_ref().clone().with_metadata(md));
        }
        let batch_rows = decode_batch_rows(metadata.metadata(), batch_rows);
        let threads = decode_threads();
        let pieces = plan_pieces(metadata.metadata(), threads, MIN_SHARED_BYTES);
        let workers = threads.min(pieces.len());
        let flat = FlatVectorColumn::find(&metadata);
        let batches: BatchIter = if workers > 1 {
            Box::new(ParallelPieces::start(
                source,
                metadata,
                flat,
                pieces,
                batch_rows.max(1),
                workers,
            ))
        } else if flat.is_some() {
            // One thread: the row groups one after another, each through the flat decode.
            let groups: Vec<Piece> = pieces_by_row_group(metadata.metadata());
            Box::new(groups.into_iter().flat_map(move |group| -> BatchIter {
                match row_group_batches(
                    &source,
                    &metadata,
                    flat.as_ref(),
                    &[group],
                    batch_rows.max(1),
                ) {
                    Ok(batches) => batches,
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }))
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

/// Uncompressed bytes of one decoded Parquet batch. arrow-rs grows a list column's value buffer
/// page by page with exact reservations, so the copying grows with the square of the batch
/// (37% of a List<Float64> run at 8,192 rows, perf). Measured with manifold-stats on the bench's
/// 10,000 x 101 x 512 files: 8,192 rows took 3.8-4.9 s, 1,024 rows 2.3-2.9 s; for List<Float64>
/// 13.9-18.3 s against 8.1-8.3 s.
const DECODE_BATCH_BYTES: usize = 1 << 20;

/// Rows per decoded batch: about [`DECODE_BATCH_BYTES`] of the file's uncompressed rows, at most
/// `batch_rows` (the caller's), at least one.
fn decode_batch_rows(
    metadata: &parquet::file::metadata::ParquetMetaData,
    batch_rows: usize,
) -> usize {
    let (rows, bytes) = metadata
        .row_groups()
        .iter()
        .fold((0usize, 0usize), |(r, b), g| {
            (
                r + g.num_rows().max(0) as usize,
                b + g.total_byte_size().max(0) as usize,
            )
        });
    let per_row = bytes.div_ceil(rows.max(1)).max(1);
    (DECODE_BATCH_BYTES / per_row).clamp(1, batch_rows.max(1))
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

/// Uncompressed bytes of a row group one decoding thread takes at a time: row groups larger than
/// this (pyarrow and polars write up to a million rows in one; ours hold 32 MB) are cut into row
/// ranges, so that several threads share them and memory stays bounded. Measured with
/// manifold-stats on a 10,000 x 101 x 512 file of ours (5 alternated rounds, 2 threads, together
/// with manifold-stats' 1 MB chunks): 4 MB ranges took 1.54-1.69 s and peaked at 120-138 MiB,
/// whole 32 MB row groups with 512-image chunks 1.93-2.30 s and 400-424 MiB.
const PIECE_BYTES: usize = 4 << 20;

/// Rows `first_row..first_row + rows` of one row group: the unit one decoding thread decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    row_group: usize,
    first_row: usize,
    rows: usize,
}

/// Uncompressed bytes below which a row group is not cut for the threads' sake alone: small files
/// read whole, in one piece, as before.
const MIN_SHARED_BYTES: usize = 4 << 20;

/// The pieces of a file, in file order: each row group cut into about `bytes / PIECE_BYTES`
/// equal row ranges (at least one), and into at least `workers` when the file has fewer row
/// groups than threads and the row group holds at least `min_shared_bytes`.
fn plan_pieces(
    metadata: &parquet::file::metadata::ParquetMetaData,
    workers: usize,
    min_shared_bytes: usize,
) -> Vec<Piece> {
    let row_groups = metadata.row_groups();
    let mut pieces = Vec::new();
    for (rg, meta) in row_groups.iter().enumerate() {
        let rows = meta.num_rows().max(0) as usize;
        let bytes = meta.total_byte_size().max(0) as usize;
        let mut n = ((bytes + PIECE_BYTES / 2) / PIECE_BYTES).max(1);
        if row_groups.len() < workers && bytes >= min_shared_bytes {
            n = n.max(workers);
        }
        let n = n.min(rows).max(1);
        let starts = page_starts(metadata, rg);
        let mut first_row = 0;
        for i in 1..=n {
            let mut end = rows * i / n;
            if let (Some(starts), true) = (&starts, i < n) {
                end = nearest(starts, end);
            }
            if end > first_row {
                pieces.push(Piece {
                    row_group: rg,
                    first_row,
                    rows: end - first_row,
                });
                first_row = end;
            }
        }
    }
    pieces
}

/// The first rows of the pages of row group `rg`'s largest column, where the file has an offset
/// index. Cutting there gives no page of that column to two threads: with 1 MB pages and 4 MB
/// pieces, cuts inside pages had both neighbours decompress a page per cut (zstd and
/// List<Float64> files ran 7-11% slower than with 32 MB pieces).
fn page_starts(
    metadata: &parquet::file::metadata::ParquetMetaData,
    rg: usize,
) -> Option<Vec<usize>> {
    let meta = metadata.row_group(rg);
    let largest = (0..meta.num_columns()).max_by_key(|&c| meta.column(c).compressed_size())?;
    let page_index = metadata.page_index_for_row_group(rg);
    let pages = page_index.page_locations(largest)?;
    Some(
        pages
            .iter()
            .map(|p| p.first_row_index.max(0) as usize)
            .collect(),
    )
}

/// The value of `sorted` (ascending) nearest to `target`, the lower one on a tie; `target` when
/// `sorted` is empty.
fn nearest(sorted: &[usize], target: usize) -> usize {
    let i = sorted.partition_point(|&s| s < target);
    match (i.checked_sub(1).map(|j| sorted[j]), sorted.get(i)) {
        (Some(below), Some(&above)) if target - below <= above - target => below,
        (_, Some(&above)) => above,
        (Some(below), None) => below,
        (None, None) => target,
    }
}

/// How Parquet files are opened: with the offset index where the writer left one (a thread then
/// skips the pages of rows another thread decodes, and pieces are cut at page starts).
fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional)
}

type PieceBatches = Result<Vec<RecordBatch>, arrow_schema::ArrowError>;

/// A file's pieces decoded on several threads and yielded in file order: worker k decodes pieces
/// k, k + K, k + 2K, ... (one reader per row group, selecting its own row ranges; with an offset
/// index the others' pages are not even read) and hands each piece to the reader through its own
/// one-slot channel, so at most two pieces per worker are in memory and the order needs no
/// buffer.
struct ParallelPieces {
    receivers: Vec<std::sync::mpsc::Receiver<PieceBatches>>,
    next_piece: usize,
    pieces: usize,
    ready: std::collections::VecDeque<RecordBatch>,
}

impl ParallelPieces {
    fn start(
        source: ParquetSource,
        metadata: ArrowReaderMetadata,
        flat: Option<FlatVectorColumn>,
        pieces: Vec<Piece>,
        batch_rows: usize,
        workers: usize,
    ) -> Self {
        let count = pieces.len();
        let receivers = (0..workers)
            .map(|k| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<PieceBatches>(1);
                let (source, metadata, flat) = (source.clone(), metadata.clone(), flat.clone());
                let mine: Vec<Piece> = pieces.iter().skip(k).step_by(workers).copied().collect();
                std::thread::spawn(move || {
                    decode_pieces(&source, &metadata, flat.as_ref(), &mine, batch_rows, &tx);
                });
                rx
            })
            .collect();
        ParallelPieces {
            receivers,
            next_piece: 0,
            pieces: count,
            ready: Default::default(),
        }
    }
}

/// Decodes `mine` (pieces in file order) and sends each piece's batches; stops at the first error
/// (after sending it) or when the reader has gone.
fn decode_pieces(
    source: &ParquetSource,
    metadata: &ArrowReaderMetadata,
    flat: Option<&FlatVectorColumn>,
    mine: &[Piece],
    batch_rows: usize,
    tx: &std::sync::mpsc::SyncSender<PieceBatches>,
) {
    let mut start = 0;
    while start < mine.len() {
        let rg = mine[start].row_group;
        let end = start + mine[start..].partition_point(|p| p.row_group == rg);
        let group = &mine[start..end];
        start = end;
        let mut batches = match row_group_batches(source, metadata, flat, group, batch_rows) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        // Cut the stream of selected rows back into pieces (a batch may span two of them).
        let mut carry: Option<RecordBatch> = None;
        for piece in group {
            let mut out = Vec::new();
            let mut left = piece.rows;
            while left > 0 {
                let batch = match carry.take().map(Ok).or_else(|| batches.next()) {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    None => {
                        let _ = tx.send(Err(arrow_schema::ArrowError::ComputeError(format!(
                            "row group {rg} ended {left} rows before its metadata says"
                        ))));
                        return;
                    }
                };
                if batch.num_rows() > left {
                    carry = Some(batch.slice(left, batch.num_rows() - left));
                    out.push(batch.slice(0, left));
                    left = 0;
                } else {
                    left -= batch.num_rows();
                    out.push(batch);
                }
            }
            if tx.send(Ok(out)).is_err() {
                return;
            }
        }
    }
}

/// A reader over the rows of `group` (pieces of one row group, in order), without a selection
/// when they cover the whole row group; through the flat decode where the file's vector column
/// allows it.
fn row_group_batches(
    source: &ParquetSource,
    metadata: &ArrowReaderMetadata,
    flat: Option<&FlatVectorColumn>,
    group: &[Piece],
    batch_rows: usize,
) -> Result<BatchIter, arrow_schema::ArrowError> {
    let rg = group[0].row_group;
    let rg_rows = metadata.metadata().row_group(rg).num_rows().max(0) as usize;
    let mut selectors = Vec::new();
    let mut at = 0;
    for p in group {
        if p.first_row > at {
            selectors.push(RowSelector::skip(p.first_row - at));
        }
        selectors.push(RowSelector::select(p.rows));
        at = p.first_row + p.rows;
    }
    let whole = selectors.len() == 1 && at == rg_rows;
    if at < rg_rows {
        selectors.push(RowSelector::skip(rg_rows - at));
    }
    fn build<T: parquet::file::reader::ChunkReader + 'static>(
        chunks: T,
        metadata: &ArrowReaderMetadata,
        rg: usize,
        selection: Option<RowSelection>,
        batch_rows: usize,
    ) -> Result<BatchIter, arrow_schema::ArrowError> {
        let mut builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, metadata.clone())
                .with_row_groups(vec![rg])
                .with_batch_size(batch_rows);
        if let Some(s) = selection {
            builder = builder.with_row_selection(s);
        }
        let reader = builder
            .build()
            .map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?;
        Ok(Box::new(reader))
    }
    let selection = (!whole).then(|| RowSelection::from(selectors));
    let io_err = |e: std::io::Error| arrow_schema::ArrowError::ExternalError(Box::new(e));
    match (source, flat) {
        (ParquetSource::File(p), Some(flat)) => {
            let keys = File::open(p).map_err(io_err)?;
            let values = Arc::new(File::open(p).map_err(io_err)?);
            let batches =
                FlatVectorBatches::new(keys, values, metadata, flat, rg, selection, batch_rows)?;
            Ok(Box::new(batches))
        }
        (ParquetSource::Bytes(b), Some(flat)) => {
            let values = Arc::new(b.clone());
            let batches = FlatVectorBatches::new(
                b.clone(),
                values,
                metadata,
                flat,
                rg,
                selection,
                batch_rows,
            )?;
            Ok(Box::new(batches))
        }
        (ParquetSource::File(p), None) => {
            let file = File::open(p).map_err(io_err)?;
            build(file, metadata, rg, selection, batch_rows)
        }
        (ParquetSource::Bytes(b), None) => build(b.clone(), metadata, rg, selection, batch_rows),
    }
}

/// Every row group of a file as one piece.
fn pieces_by_row_group(metadata: &parquet::file::metadata::ParquetMetaData) -> Vec<Piece> {
    metadata
        .row_groups()
        .iter()
        .enumerate()
        .map(|(row_group, meta)| Piece {
            row_group,
            first_row: 0,
            rows: meta.num_rows().max(0) as usize,
        })
        .collect()
}

impl Iterator for ParallelPieces {
    type Item = Result<RecordBatch, arrow_schema::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(Ok(b));
            }
            if self.next_piece >= self.pieces {
                return None;
            }
            let worker = self.next_piece % self.receivers.len();
            self.next_piece += 1;
            match self.receivers[worker].recv() {
                Ok(Ok(batches)) => self.ready.extend(batches),
                Ok(Err(e)) => {
                    // Nothing after a failed piece.
                    self.next_piece = self.pieces;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.next_piece = self.pieces;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float64Array, Int64Array};
    use std::sync::Arc;

    /// One row group of `rows` rows (keys and a value column), with or without an offset index,
    /// in small pages so that pieces start inside pages.
    fn one_row_group(rows: usize, offset_index: bool) -> bytes::Bytes {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
        let values: ArrayRef = Arc::new(Float64Array::from_iter_values(
            (0..rows).map(|i| (i as f64 * 0.37).sin()),
        ));
        let batch = RecordBatch::try_from_iter([("id", ids), ("value", values)]).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_data_page_row_count_limit(37)
            .set_write_batch_size(37)
            .set_offset_index_disabled(!offset_index)
            .build();
        let mut out = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        bytes::Bytes::from(out)
    }

    /// Column `i` of every batch, in order.
    fn column<P: arrow_array::ArrowPrimitiveType>(
        batches: &[RecordBatch],
        i: usize,
    ) -> Vec<P::Native> {
        use arrow_array::cast::AsArray;
        batches
            .iter()
            .flat_map(|b| b.column(i).as_primitive::<P>().values().to_vec())
            .collect()
    }

    #[test]
    fn pieces_cover_each_row_group_once_in_order() {
        let bytes = one_row_group(1000, true);
        let metadata = ArrowReaderMetadata::load(&bytes, reader_options()).unwrap();
        for workers in 1..=4 {
            let whole = plan_pieces(metadata.metadata(), workers, MIN_SHARED_BYTES);
            assert_eq!(whole.len(), 1, "a small row group stays whole");
            let pieces = plan_pieces(metadata.metadata(), workers, 0);
            assert_eq!(pieces.len(), workers, "a lone row group is cut per thread");
            let mut next = 0;
            for p in &pieces {
                assert_eq!((p.row_group, p.first_row), (0, next));
                assert!(p.rows > 0);
                assert_eq!(
                    p.first_row % 37,
                    0,
                    "cut at a page start (pages of 37 rows)"
                );
                next += p.rows;
            }
            assert_eq!(next, 1000);
        }
        // Without an offset index the cuts are even.
        let bytes = one_row_group(1000, false);
        let metadata = ArrowReaderMetadata::load(&bytes, reader_options()).unwrap();
        let firsts: Vec<usize> = plan_pieces(metadata.metadata(), 3, 0)
            .iter()
            .map(|p| p.first_row)
            .collect();
        assert_eq!(firsts, vec![0, 333, 666]);
    }

    #[test]
    fn nearest_picks_the_closest_value() {
        let s = [0, 37, 74, 111];
        assert_eq!(nearest(&s, 50), 37);
        assert_eq!(nearest(&s, 56), 74);
        assert_eq!(nearest(&s, 500), 111);
        assert_eq!(nearest(&s, 0), 0);
        assert_eq!(nearest(&[40], 10), 40);
    }

    #[test]
    fn a_lone_row_group_shared_by_threads_comes_back_whole_and_in_order() {
        // Batches of 7 rows span piece boundaries; with and without an offset index (without
        // one, each thread decodes the pages it skips).
        for offset_index in [true, false] {
            let bytes = one_row_group(1000, offset_index);
            let metadata = ArrowReaderMetadata::load(&bytes, reader_options()).unwrap();
            assert_eq!(
                metadata
                    .metadata()
                    .page_index_for_row_group(0)
                    .offset_index(0)
                    .is_some(),
                offset_index,
                "the fixture has the offset index it should"
            );
            for workers in [2, 3] {
                let source = ParquetSource::Bytes(bytes.clone());
                let pieces = plan_pieces(metadata.metadata(), workers, 0);
                assert_eq!(pieces.len(), workers);
                let batches: Vec<RecordBatch> =
                    ParallelPieces::start(source, metadata.clone(), None, pieces, 7, workers)
                        .collect::<Result<_, _>>()
                        .unwrap();
                assert!(batches.iter().all(|b| b.num_rows() <= 7));
                let ids = column::<arrow_array::types::Int64Type>(&batches, 0);
                assert_eq!(ids, (0..1000).collect::<Vec<i64>>(), "{workers} threads");
                let values = column::<arrow_array::types::Float64Type>(&batches, 1);
                assert!(
                    values
                        .iter()
                        .enumerate()
                        .all(|(i, &v)| v == (i as f64 * 0.37).sin())
                );
            }
        }
    }

    /// A canonical vector file: keys and a non-null FixedSizeList<Float32, 5> of non-null items,
    /// in row groups of 400 rows and pages of about 37 rows, with or without an offset index.
    fn vector_file(rows: usize, offset_index: bool) -> bytes::Bytes {
        let schema = Arc::new(crate::vector_schema(crate::VectorKind::Embedding, 5));
        let ids: ArrayRef = Arc::new(arrow_array::UInt32Array::from_iter_values(0..rows as u32));
        let labels: ArrayRef = Arc::new(arrow_array::Int32Array::from_iter_values(
            (0..rows as i32).map(|i| i % 3),
        ));
        let steps: ArrayRef = Arc::new(arrow_array::UInt16Array::from_iter_values(
            (0..rows).map(|i| (i % 11) as u16),
        ));
        let eps: ArrayRef = Arc::new(arrow_array::Float32Array::from_iter_values(
            (0..rows).map(|i| i as f32 * 0.5),
        ));
        let item = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            false,
        ));
        let values = arrow_array::Float32Array::from_iter_values(
            (0..rows * 5).map(|i| (i as f32 * 0.37).sin()),
        );
        let vectors: ArrayRef = Arc::new(
            arrow_array::FixedSizeListArray::try_new(item, 5, Arc::new(values), None).unwrap(),
        );
        let batch =
            RecordBatch::try_new(schema.clone(), vec![ids, labels, steps, eps, vectors]).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_data_page_row_count_limit(37)
            .set_write_batch_size(37)
            .set_max_row_group_row_count(Some(400))
            .set_offset_index_disabled(!offset_index)
            .build();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        bytes::Bytes::from(out)
    }

    #[test]
    fn the_flat_vector_decode_equals_arrow_rs_for_any_pieces_and_batches() {
        for offset_index in [true, false] {
            let bytes = vector_file(1000, offset_index);
            let metadata = ArrowReaderMetadata::load(&bytes, reader_options()).unwrap();
            let flat = FlatVectorColumn::find(&metadata);
            assert!(flat.is_some(), "our writer's layout is the canonical one");
            assert_eq!(metadata.metadata().num_row_groups(), 3);
            // Four workers cut each of the three row groups into pieces, so rows are skipped.
            for workers in [1, 2, 3, 4] {
                for batch_rows in [7, 64, 1000] {
                    let pieces = plan_pieces(metadata.metadata(), workers, 0);
                    let read = |flat: Option<FlatVectorColumn>| -> Vec<RecordBatch> {
                        let source = ParquetSource::Bytes(bytes.clone());
                        ParallelPieces::start(
                            source,
                            metadata.clone(),
                            flat,
                            pieces.clone(),
                            batch_rows,
                            workers,
                        )
                        .collect::<Result<_, _>>()
                        .unwrap()
                    };
                    let generic = read(None);
                    let fast = read(flat.clone());
                    // The same batches: the key columns' reader cuts them as arrow-rs does.
                    assert_eq!(fast.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
                    assert_eq!(
                        fast, generic,
                        "{workers} workers, batches of {batch_rows}, offset index {offset_index}"
                    );
                }
            }
            // One thread, row group after row group.
            let group = pieces_by_row_group(metadata.metadata());
            let source = ParquetSource::Bytes(bytes.clone());
            let rows: usize = group
                .iter()
                .map(|g| {
                    row_group_batches(&source, &metadata, flat.as_ref(), &[*g], 64)
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum::<usize>()
                })
                .sum();
            assert_eq!(rows, 1000);
        }
    }

    #[test]
    fn only_the_canonical_layout_takes_the_flat_decode() {
        // A nullable list (what pyarrow writes by default) goes through arrow-rs.
        let item = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            true,
        ));
        let values = arrow_array::Float32Array::from_iter_values((0..20).map(|i| i as f32));
        let vectors: ArrayRef = Arc::new(
            arrow_array::FixedSizeListArray::try_new(item, 5, Arc::new(values), None).unwrap(),
        );
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..4));
        let batch =
            RecordBatch::try_from_iter([("image_id", ids), ("embedding", vectors)]).unwrap();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let metadata =
            ArrowReaderMetadata::load(&bytes::Bytes::from(out), reader_options()).unwrap();
        assert!(FlatVectorColumn::find(&metadata).is_none());
    }
}
