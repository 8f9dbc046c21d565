//! The rmqm artifact format: every stage writes Parquet files (or an Arrow IPC stream on stdout) and
//! reads either. This crate holds the schemas, the `rmqm.`-prefixed provenance metadata, atomic
//! writers (temporary file, then rename) and readers that check schema and metadata.
//!
//! Vector artifacts (embeddings, trajectories, altered images) share the key columns
//! `image_id: UInt32, label: Int32, step: UInt16, epsilon: Float32`, then one
//! `FixedSizeList<Float32, width>` column: `embedding` (width = dim) or `pixels` (width = C*H*W).
//! Rows are sorted by `(image_id, step)`. Readers are liberal: files written by pyarrow, polars
//! or NumPy users (other integer key types, List/LargeList vectors of Float16/32/64, any Parquet
//! codec, Arrow IPC files and streams, compressed or not) are read as well ([`columns`]).

pub mod columns;
mod error;
mod flat_vectors;
mod io;
mod provenance;
mod reader;
mod table;
mod vectors;
mod writer;

pub use error::ArtifactError;
pub use io::{Input, Output};
pub use provenance::{METADATA_PREFIX, Provenance, keys};
pub use reader::{ArtifactReader, Format};
pub use table::{Column, Table, read_table, read_tables, write_table};
pub use vectors::{
    KEY_COLUMNS, KeyNeeds, VectorBatch, VectorBatchBuilder, VectorKind, VectorReader, VectorWriter,
    vector_schema,
};
pub use writer::ArtifactWriter;
