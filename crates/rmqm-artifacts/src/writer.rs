//! Atomic artifact writers: Parquet to a temporary file beside the target, renamed into place by
//! `finish`; or an Arrow IPC stream on stdout. A writer dropped without `finish` (an error, a
//! panic) removes its temporary file, so a failed run leaves nothing at the target path. A target
//! that is a device or a FIFO (`/dev/null`, `>(...)`) is written in place, never replaced
//! ([`rmqm_outfile`]).

use crate::{ArtifactError, Output, Provenance, VectorKind};
use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rmqm_outfile::OutFile;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Target size of one Parquet row group: large enough to read fast, small enough to bound memory.
const ROW_GROUP_BYTES: usize = 32 << 20;

enum Sink {
    Parquet {
        writer: ArrowWriter<BufWriter<OutFile>>,
        target: PathBuf,
    },
    Ipc(arrow_ipc::writer::StreamWriter<BufWriter<Box<dyn Write + Send>>>),
}

/// Writes record batches of one schema to an [`Output`], with provenance in the metadata.
pub struct ArtifactWriter {
    sink: Option<Sink>,
    schema: SchemaRef,
    path: PathBuf,
    rows: usize,
}

impl ArtifactWriter {
    /// Opens `output` for batches of `schema`; `provenance` goes into the schema metadata (and, for
    /// Parquet, the file's key-value metadata too, where DuckDB and `pyarrow.parquet.read_metadata` see it).
    pub fn create(
        output: &Output,
        schema: &Schema,
        provenance: &Provenance,
    ) -> Result<Self, ArtifactError> {
        Self::create_with_stdout(output, schema, provenance, || Box::new(std::io::stdout()))
    }

    /// Like [`ArtifactWriter::create`], with the stream that `-` means given by `stdout` (tests, pipes).
    pub fn create_with_stdout(
        output: &Output,
        schema: &Schema,
        provenance: &Provenance,
        stdout: impl FnOnce() -> Box<dyn Write + Send>,
    ) -> Result<Self, ArtifactError> {
        let mut metadata = schema.metadata().clone();
        metadata.extend(provenance.to_metadata());
        let schema = Arc::new(schema.clone().with_metadata(metadata.clone()));
        let path = output.display_path();
        let sink = match output {
            Output::Stdout => {
                let w = BufWriter::with_capacity(1 << 20, stdout());
                let writer = arrow_ipc::writer::StreamWriter::try_new(w, &schema)
                    .map_err(|e| ArtifactError::corrupt(&path, e))?;
                Sink::Ipc(writer)
            }
            Output::Path(target) => {
                let tmp = OutFile::create(target).map_err(|e| ArtifactError::io(target, e))?;
                let mut kv: Vec<KeyValue> = provenance
                    .to_metadata()
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect();
                kv.sort_by(|a, b| a.key.cmp(&b.key));
                let mut props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_dictionary_enabled(false)
                    .set_statistics_enabled(EnabledStatistics::None)
                    .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
                    .set_key_value_metadata(Some(kv));
                // Statistics only on the small key columns, where they help readers skip.
                for f in schema.fields() {
                    if !matches!(f.data_type(), arrow_schema::DataType::FixedSizeList(..)) {
                        props = props.set_column_statistics_enabled(
                            ColumnPath::from(f.name().as_str()),
                            EnabledStatistics::Chunk,
                        );
                    }
                }
                // Embeddings are dense floats that snappy shrinks by under 1% (0.2-0.9% on the
                // grid's files), while a reader pays a zeroed buffer and a copy per page to undo it:
                // their leaf column is written uncompressed.
                let leaves = parquet::arrow::ArrowSchemaConverter::new()
                    .convert(&schema)
                    .map_err(|e| ArtifactError::corrupt(target, e))?;
                for leaf in leaves.columns() {
                    if leaf.path().parts().first().map(String::as_str)
                        == Some(VectorKind::Embedding.column())
                    {
                        props = props
                            .set_column_compression(leaf.path().clone(), Compression::UNCOMPRESSED);
                    }
                }
                let writer = ArrowWriter::try_new(
                    BufWriter::with_capacity(1 << 20, tmp),
                    schema.clone(),
                    Some(props.build()),
                )
                .map_err(|e| ArtifactError::corrupt(target, e))?;
                Sink::Parquet {
                    writer,
                    target: target.clone(),
                }
            }
        };
        Ok(ArtifactWriter {
            sink: Some(sink),
            schema,
            path,
            rows: 0,
        })
    }

    /// The schema batches must have (with the metadata attached).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The output's path (`-` for stdout).
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends one batch (its schema's fields must equal the writer's).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArtifactError> {
        let batch = if batch.schema().metadata() == self.schema.metadata() {
            batch.clone()
        } else {
            batch
                .clone()
                .with_schema(self.schema.clone())
                .map_err(|e| ArtifactError::Schema {
                    path: self.path.clone(),
                    reason: format!("batch does not match the output schema: {e}"),
                })?
        };
        self.rows += batch.num_rows();
        match self.sink.as_mut().expect("writer used after finish") {
            Sink::Parquet { writer, .. } => writer
                .write(&batch)
                .map_err(|e| ArtifactError::corrupt(&self.path, e)),
            Sink::Ipc(w) => w
                .write(&batch)
                .map_err(|e| ArtifactError::corrupt(&self.path, e)),
        }
    }

    /// Completes the file: flushes, then renames the temporary file onto the target (or ends the stream).
    pub fn finish(mut self) -> Result<usize, ArtifactError> {
        match self.sink.take().expect("finish called twice") {
            Sink::Parquet { writer, target } => {
                let buffered = writer
                    .into_inner()
                    .map_err(|e| ArtifactError::corrupt(&target, e))?;
                let out = buffered
                    .into_inner()
                    .map_err(|e| ArtifactError::io(&target, e.into_error()))?;
                out.commit().map_err(|e| ArtifactError::io(&target, e))?;
            }
            Sink::Ipc(mut w) => {
                w.finish()
                    .map_err(|e| ArtifactError::corrupt(&self.path, e))?;
                let mut inner = w
                    .into_inner()
                    .map_err(|e| ArtifactError::corrupt(&self.path, e))?;
                if let Err(e) = inner.flush() {
                    // A closed pipe downstream is the reader's choice, not our failure.
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(ArtifactError::io(&self.path, e));
                    }
                }
            }
        }
        Ok(self.rows)
    }
}
