//! Vector artifacts: embeddings, trajectories and altered-image streams. Key columns
//! `image_id, label, step, epsilon`, then a `FixedSizeList<Float32, width>` of values.

use crate::{ArtifactError, ArtifactReader, ArtifactWriter, Input, Output, Provenance, keys};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, UInt16Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, UInt16Array,
    UInt32Array,
};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, Schema};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// The key columns every vector artifact starts with, in order.
pub const KEY_COLUMNS: [&str; 4] = ["image_id", "label", "step", "epsilon"];

/// Which vector column an artifact holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// `embedding`: encoder outputs (embeddings files and trajectories).
    Embedding,
    /// `pixels`: altered images, C*H*W values each.
    Pixels,
}

impl VectorKind {
    /// The column name.
    pub fn column(self) -> &'static str {
        match self {
            VectorKind::Embedding => "embedding",
            VectorKind::Pixels => "pixels",
        }
    }
}

/// The schema of a vector artifact with vectors of `width` values.
pub fn vector_schema(kind: VectorKind, width: usize) -> Schema {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Schema::new(vec![
        Field::new("image_id", DataType::UInt32, false),
        Field::new("label", DataType::Int32, false),
        Field::new("step", DataType::UInt16, false),
        Field::new("epsilon", DataType::Float32, false),
        Field::new(
            kind.column(),
            DataType::FixedSizeList(item, width as i32),
            false,
        ),
    ])
}

/// A batch of rows of a vector artifact; buffers are shared with Arrow, not copied.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorBatch {
    /// Image id of each row.
    pub image_ids: ScalarBuffer<u32>,
    /// Label of each row.
    pub labels: ScalarBuffer<i32>,
    /// Step of each row (0 = clean input).
    pub steps: ScalarBuffer<u16>,
    /// Alteration strength of each row.
    pub epsilons: ScalarBuffer<f32>,
    /// Row-major values, `width` per row.
    pub values: ScalarBuffer<f32>,
    /// Values per row.
    pub width: usize,
}

impl VectorBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.image_ids.len()
    }
    /// True when the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.image_ids.is_empty()
    }
    /// The values of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// The batch as an Arrow record batch of `kind`'s schema.
    pub fn to_record_batch(&self, kind: VectorKind) -> RecordBatch {
        let schema = Arc::new(vector_schema(kind, self.width));
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Float32Array::new(self.values.clone(), None);
        let list = FixedSizeListArray::new(item, self.width as i32, Arc::new(values), None);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::new(self.image_ids.clone(), None)),
            Arc::new(Int32Array::new(self.labels.clone(), None)),
            Arc::new(UInt16Array::new(self.steps.clone(), None)),
            Arc::new(Float32Array::new(self.epsilons.clone(), None)),
            Arc::new(list),
        ];
        RecordBatch::try_new(schema, columns).expect("columns match the vector schema")
    }

    /// Concatenates batches of the same width.
    pub fn concat(batches: &[VectorBatch], width: usize) -> VectorBatch {
        let mut b = VectorBatchBuilder::new(width, batches.iter().map(|b| b.len()).sum());
        for batch in batches {
            for i in 0..batch.len() {
                b.push(
                    batch.image_ids[i],
                    batch.labels[i],
                    batch.steps[i],
                    batch.epsilons[i],
                    batch.row(i),
                );
            }
        }
        b.finish()
    }
}

/// Collects rows into a [`VectorBatch`].
#[derive(Debug, Clone)]
pub struct VectorBatchBuilder {
    image_ids: Vec<u32>,
    labels: Vec<i32>,
    steps: Vec<u16>,
    epsilons: Vec<f32>,
    values: Vec<f32>,
    width: usize,
}

impl VectorBatchBuilder {
    /// An empty builder for vectors of `width` values, with room for `capacity` rows.
    pub fn new(width: usize, capacity: usize) -> Self {
        VectorBatchBuilder {
            image_ids: Vec::with_capacity(capacity),
            labels: Vec::with_capacity(capacity),
            steps: Vec::with_capacity(capacity),
            epsilons: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity * width),
            width,
        }
    }
    /// Appends one row; `values` must hold `width` numbers.
    pub fn push(&mut self, image_id: u32, label: i32, step: u16, epsilon: f32, values: &[f32]) {
        assert_eq!(values.len(), self.width, "row width");
        self.image_ids.push(image_id);
        self.labels.push(label);
        self.steps.push(step);
        self.epsilons.push(epsilon);
        self.values.extend_from_slice(values);
    }
    /// Rows collected so far.
    pub fn len(&self) -> usize {
        self.image_ids.len()
    }
    /// True when no row has been pushed.
    pub fn is_empty(&self) -> bool {
        self.image_ids.is_empty()
    }
    /// The finished batch; the builder is left empty.
    pub fn finish(&mut self) -> VectorBatch {
        VectorBatch {
            image_ids: ScalarBuffer::from(std::mem::take(&mut self.image_ids)),
            labels: ScalarBuffer::from(std::mem::take(&mut self.labels)),
            steps: ScalarBuffer::from(std::mem::take(&mut self.steps)),
            epsilons: ScalarBuffer::from(std::mem::take(&mut self.epsilons)),
            values: ScalarBuffer::from(std::mem::take(&mut self.values)),
            width: self.width,
        }
    }
}

/// Writes a vector artifact (Parquet file, or IPC stream on stdout), checking every batch's width.
pub struct VectorWriter {
    inner: ArtifactWriter,
    kind: VectorKind,
    width: usize,
}

impl VectorWriter {
    /// Opens `output` for vectors of `width` values; `provenance` must already say what the file is.
    pub fn create(
        output: &Output,
        kind: VectorKind,
        width: usize,
        provenance: &Provenance,
    ) -> Result<Self, ArtifactError> {
        let inner = ArtifactWriter::create(output, &vector_schema(kind, width), provenance)?;
        Ok(VectorWriter { inner, kind, width })
    }
    /// Like [`VectorWriter::create`], with the stream that `-` means given by `stdout`.
    pub fn create_with_stdout(
        output: &Output,
        kind: VectorKind,
        width: usize,
        provenance: &Provenance,
        stdout: impl FnOnce() -> Box<dyn Write + Send>,
    ) -> Result<Self, ArtifactError> {
        let inner = ArtifactWriter::create_with_stdout(
            output,
            &vector_schema(kind, width),
            provenance,
            stdout,
        )?;
        Ok(VectorWriter { inner, kind, width })
    }
    /// Appends a batch.
    pub fn write(&mut self, batch: &VectorBatch) -> Result<(), ArtifactError> {
        if batch.width != self.width {
            return Err(ArtifactError::Schema {
                path: self.inner.path().clone(),
                reason: format!(
                    "batch has {}-value vectors, file has {}",
                    batch.width, self.width
                ),
            });
        }
        self.inner.write(&batch.to_record_batch(self.kind))
    }
    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.inner.rows()
    }
    /// Completes the file (atomic rename) and returns the number of rows.
    pub fn finish(self) -> Result<usize, ArtifactError> {
        self.inner.finish()
    }
}

/// Reads a vector artifact, checking its schema, nulls and finiteness; lazily, batch by batch.
pub struct VectorReader {
    inner: ArtifactReader,
    kind: VectorKind,
    width: usize,
}

impl VectorReader {
    /// Opens `input` and checks that it is a vector artifact of `kind`.
    pub fn open(input: &Input, kind: VectorKind, batch_rows: usize) -> Result<Self, ArtifactError> {
        Self::from_reader(ArtifactReader::open(input, batch_rows)?, kind)
    }

    /// Like [`VectorReader::open`], with the stream that `-` means given by `stdin`.
    pub fn open_with_stdin(
        input: &Input,
        kind: VectorKind,
        batch_rows: usize,
        stdin: impl FnOnce() -> Box<dyn Read + Send>,
    ) -> Result<Self, ArtifactError> {
        Self::from_reader(
            ArtifactReader::open_with_stdin(input, batch_rows, stdin)?,
            kind,
        )
    }

    /// Wraps an open artifact after checking its schema.
    pub fn from_reader(inner: ArtifactReader, kind: VectorKind) -> Result<Self, ArtifactError> {
        let path = inner.path().clone();
        let schema = inner.schema().clone();
        let expected = [
            ("image_id", DataType::UInt32),
            ("label", DataType::Int32),
            ("step", DataType::UInt16),
            ("epsilon", DataType::Float32),
        ];
        let fields = schema.fields();
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        let schema_err = |reason: String| ArtifactError::Schema {
            path: path.clone(),
            reason,
        };
        if fields.len() < 5 {
            return Err(schema_err(format!(
                "expected columns image_id, label, step, epsilon, {}; found {}",
                kind.column(),
                names.join(", ")
            )));
        }
        for (i, (name, dt)) in expected.iter().enumerate() {
            let f = &fields[i];
            if f.name() != name || f.data_type() != dt {
                return Err(schema_err(format!(
                    "column {i} must be {name}: {dt}, found {}: {}",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let vector = &fields[4];
        if vector.name() != kind.column() {
            return Err(schema_err(format!(
                "column 4 must be {} (this tool reads {} files), found {}",
                kind.column(),
                match kind {
                    VectorKind::Embedding => "embeddings/trajectories",
                    VectorKind::Pixels => "altered-image",
                },
                vector.name()
            )));
        }
        let width = match vector.data_type() {
            DataType::FixedSizeList(item, w)
                if item.data_type() == &DataType::Float32 && *w > 0 =>
            {
                *w as usize
            }
            other => {
                return Err(schema_err(format!(
                    "column {} must be FixedSizeList<Float32, n>, found {other}",
                    kind.column()
                )));
            }
        };
        if kind == VectorKind::Pixels {
            let p = inner.provenance();
            let c = p.require_usize(keys::CHANNELS, &path)?;
            let h = p.require_usize(keys::HEIGHT, &path)?;
            let w = p.require_usize(keys::WIDTH, &path)?;
            if c * h * w != width {
                return Err(ArtifactError::Metadata {
                    path,
                    reason: format!(
                        "channels*height*width = {c}*{h}*{w} = {} but pixels has {width} values",
                        c * h * w
                    ),
                });
            }
        }
        Ok(VectorReader { inner, kind, width })
    }

    /// Values per row (embedding dim, or C*H*W).
    pub fn width(&self) -> usize {
        self.width
    }
    /// The vector column's kind.
    pub fn kind(&self) -> VectorKind {
        self.kind
    }
    /// The path shown in messages.
    pub fn path(&self) -> &PathBuf {
        self.inner.path()
    }
    /// The file's provenance.
    pub fn provenance(&self) -> &Provenance {
        self.inner.provenance()
    }
    /// Total rows when known up front (Parquet).
    pub fn total_rows(&self) -> Option<usize> {
        self.inner.total_rows()
    }

    /// The next batch, checked: no nulls, every value finite.
    pub fn next_batch(&mut self) -> Result<Option<VectorBatch>, ArtifactError> {
        let Some(rb) = self.inner.next_batch()? else {
            return Ok(None);
        };
        let path = self.inner.path().clone();
        for (i, c) in rb.columns().iter().enumerate().take(5) {
            if c.null_count() > 0 {
                return Err(ArtifactError::Data {
                    path,
                    reason: format!(
                        "column {} has {} null values",
                        rb.schema().field(i).name(),
                        c.null_count()
                    ),
                });
            }
        }
        let list = rb.column(4).as_fixed_size_list();
        let inner_values = list.values().as_primitive::<Float32Type>();
        if inner_values.null_count() > 0 {
            return Err(ArtifactError::Data {
                path,
                reason: format!("{} has null values", self.kind.column()),
            });
        }
        let start = list.offset() * self.width;
        let values = inner_values
            .values()
            .slice(start, rb.num_rows() * self.width);
        let batch = VectorBatch {
            image_ids: rb.column(0).as_primitive::<UInt32Type>().values().clone(),
            labels: rb.column(1).as_primitive::<Int32Type>().values().clone(),
            steps: rb.column(2).as_primitive::<UInt16Type>().values().clone(),
            epsilons: rb.column(3).as_primitive::<Float32Type>().values().clone(),
            values,
            width: self.width,
        };
        if let Some(bad) = batch.values.iter().position(|v| !v.is_finite()) {
            let row = bad / self.width;
            return Err(ArtifactError::Data {
                path,
                reason: format!(
                    "non-finite {} value {} at image_id {} step {}",
                    self.kind.column(),
                    batch.values[bad],
                    batch.image_ids[row],
                    batch.steps[row]
                ),
            });
        }
        Ok(Some(batch))
    }

    /// Reads every remaining row into one batch (for files that fit in memory, such as probe inputs).
    pub fn read_all(&mut self) -> Result<VectorBatch, ArtifactError> {
        let mut parts = Vec::new();
        while let Some(b) = self.next_batch()? {
            parts.push(b);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().unwrap());
        }
        Ok(VectorBatch::concat(&parts, self.width))
    }
}
