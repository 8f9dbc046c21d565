//! Vector artifacts: embeddings, trajectories and altered-image streams. Written strictly (key
//! columns `image_id, label, step, epsilon`, then a `FixedSizeList<Float32, width>` of values);
//! read liberally (see [`crate::columns`]).

use crate::{
    ArtifactError, ArtifactReader, ArtifactWriter, Input, Output, Provenance, columns, keys,
};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, UInt16Array, UInt32Array,
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
    /// A batch from owned columns; `values` holds `width` numbers per row.
    pub fn from_columns(
        image_ids: Vec<u32>,
        labels: Vec<i32>,
        steps: Vec<u16>,
        epsilons: Vec<f32>,
        values: Vec<f32>,
        width: usize,
    ) -> Self {
        let n = image_ids.len();
        assert!(
            labels.len() == n && steps.len() == n && epsilons.len() == n,
            "key columns of different lengths"
        );
        assert_eq!(
            values.len(),
            n * width,
            "values are not {n} rows of {width}"
        );
        VectorBatch {
            image_ids: image_ids.into(),
            labels: labels.into(),
            steps: steps.into(),
            epsilons: epsilons.into(),
            values: values.into(),
            width,
        }
    }

    /// The same rows (keys shared, not copied) with other vectors: `width` values per row.
    pub fn with_values(&self, values: Vec<f32>, width: usize) -> Self {
        assert_eq!(
            values.len(),
            self.len() * width,
            "values are not {} rows of {width}",
            self.len()
        );
        VectorBatch {
            image_ids: self.image_ids.clone(),
            labels: self.labels.clone(),
            steps: self.steps.clone(),
            epsilons: self.epsilons.clone(),
            values: values.into(),
            width,
        }
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

    /// Rows `start..start + len`, sharing the buffers (no copy).
    pub fn slice(&self, start: usize, len: usize) -> VectorBatch {
        assert!(start + len <= self.len(), "slice past the batch's end");
        VectorBatch {
            image_ids: self.image_ids.slice(start, len),
            labels: self.labels.slice(start, len),
            steps: self.steps.slice(start, len),
            epsilons: self.epsilons.slice(start, len),
            values: self.values.slice(start * self.width, len * self.width),
            width: self.width,
        }
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

/// Rewrites "row N" in a converter's message to "row N + first" (file-wide numbering).
/// The index of the first infinite or NaN value, if any. Checks a block of values at a time with
/// no early exit inside it (so the check runs in SIMD lanes), then finds the value in the first
/// block that holds one.
fn first_non_finite(values: &[f32]) -> Option<usize> {
    const BLOCK: usize = 1024;
    let block = values
        .chunks(BLOCK)
        .position(|b| !b.iter().fold(true, |finite, v| finite & v.is_finite()))?;
    let start = block * BLOCK;
    values[start..]
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| start + i)
}

fn shift_row_numbers(message: &str, first: usize) -> String {
    match message.split_once("row ") {
        Some((head, rest)) => {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            match digits.parse::<usize>() {
                Ok(n) => format!("{head}row {}{}", n + first, &rest[digits.len()..]),
                Err(_) => message.to_string(),
            }
        }
        None => message.to_string(),
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

/// Which key columns a reader needs; absent optional ones are filled in. `image_id` and the
/// vector column are always needed; `epsilon` never (absent: NaN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyNeeds {
    /// `label` required (absent: -1 in every row).
    pub label: bool,
    /// `step` required (absent: 0 in every row, as plain embeddings are).
    pub step: bool,
}

impl KeyNeeds {
    /// Every key column but epsilon.
    pub const ALL: KeyNeeds = KeyNeeds {
        label: true,
        step: true,
    };
}

/// Where the columns a reader uses are in the file's schema.
#[derive(Debug, Clone, PartialEq)]
struct ColumnIndex {
    image_id: usize,
    label: Option<usize>,
    step: Option<usize>,
    epsilon: Option<usize>,
    vector: usize,
}

/// Reads a vector artifact lazily, batch by batch, checking its schema, nulls and finiteness.
/// Liberal in what it takes (see [`crate::columns`]): columns by name in any order, keys of any
/// integer type, vectors as FixedSizeList, List or LargeList of Float16/32/64.
pub struct VectorReader {
    inner: ArtifactReader,
    kind: VectorKind,
    width: usize,
    columns: ColumnIndex,
    /// A batch read ahead to learn the width of a List column.
    pending: Option<RecordBatch>,
    /// Rows returned so far (for the row numbers in errors).
    rows_read: usize,
}

impl VectorReader {
    /// Opens `input` and checks that it is a vector artifact of `kind` with every key column.
    pub fn open(input: &Input, kind: VectorKind, batch_rows: usize) -> Result<Self, ArtifactError> {
        Self::from_reader(
            ArtifactReader::open(input, batch_rows)?,
            kind,
            KeyNeeds::ALL,
        )
    }

    /// Like [`VectorReader::open`], with the stream that `-` means given by `stdin`.
    pub fn open_with_stdin(
        input: &Input,
        kind: VectorKind,
        batch_rows: usize,
        stdin: impl FnOnce() -> Box<dyn Read + Send>,
    ) -> Result<Self, ArtifactError> {
        Self::open_with(input, kind, batch_rows, KeyNeeds::ALL, stdin)
    }

    /// Like [`VectorReader::open_with_stdin`], needing only the key columns `needs` names.
    pub fn open_with(
        input: &Input,
        kind: VectorKind,
        batch_rows: usize,
        needs: KeyNeeds,
        stdin: impl FnOnce() -> Box<dyn Read + Send>,
    ) -> Result<Self, ArtifactError> {
        Self::from_reader(
            ArtifactReader::open_with_stdin(input, batch_rows, stdin)?,
            kind,
            needs,
        )
    }

    /// Wraps an open artifact after checking its schema.
    pub fn from_reader(
        mut inner: ArtifactReader,
        kind: VectorKind,
        needs: KeyNeeds,
    ) -> Result<Self, ArtifactError> {
        let path = inner.path().clone();
        let schema = inner.schema().clone();
        let schema_err = |reason: String| ArtifactError::Schema {
            path: path.clone(),
            reason,
        };
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let wanted = format!(
            "image_id{}{}, {} (epsilon optional)",
            if needs.label { ", label" } else { "" },
            if needs.step { ", step" } else { "" },
            kind.column()
        );
        let missing = |name: &str| {
            schema_err(format!(
                "no column {name}: expected columns {wanted}; found {}",
                names.join(", ")
            ))
        };
        let key = |name: &str, required: bool| -> Result<Option<usize>, ArtifactError> {
            match columns::find(&schema, name) {
                Some(i) if columns::is_integer(schema.field(i).data_type()) => Ok(Some(i)),
                Some(i) => Err(schema_err(format!(
                    "column {name} must be an integer column, found {}",
                    schema.field(i).data_type()
                ))),
                None if required => Err(missing(name)),
                None => Ok(None),
            }
        };
        let image_id = key("image_id", true)?.expect("required");
        let label = key("label", needs.label)?;
        let step = key("step", needs.step)?;
        let epsilon = match columns::find(&schema, "epsilon") {
            Some(i) if columns::is_float(schema.field(i).data_type()) => Some(i),
            Some(i) => {
                return Err(schema_err(format!(
                    "column epsilon must be a float column, found {}",
                    schema.field(i).data_type()
                )));
            }
            None => None,
        };
        let Some(vector) = columns::find(&schema, kind.column()) else {
            return Err(schema_err(format!(
                "no column {} (this tool reads {} files): expected columns {wanted}; found {}",
                kind.column(),
                match kind {
                    VectorKind::Embedding => "embeddings/trajectories",
                    VectorKind::Pixels => "altered-image",
                },
                names.join(", ")
            )));
        };
        let encoding = columns::VectorEncoding::of(schema.field(vector).data_type())
            .map_err(|e| schema_err(format!("column {} {e}", kind.column())))?;
        let (width, pending) = match encoding {
            columns::VectorEncoding::Fixed { width, .. } => (width, None),
            _ => {
                // A List column's width is the first row's length: read ahead to it.
                let mut first = None;
                while let Some(b) = inner.next_batch()? {
                    if b.num_rows() > 0 {
                        first = Some(b);
                        break;
                    }
                }
                let width = first
                    .as_ref()
                    .and_then(|b| columns::first_row_length(b.column(vector).as_ref()))
                    .unwrap_or(0);
                if first.is_some() && width == 0 {
                    return Err(ArtifactError::Data {
                        path,
                        reason: format!("row 0 of {} is empty", kind.column()),
                    });
                }
                (width.max(1), first)
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
        Ok(VectorReader {
            inner,
            kind,
            width,
            columns: ColumnIndex {
                image_id,
                label,
                step,
                epsilon,
                vector,
            },
            pending,
            rows_read: 0,
        })
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

    /// The next batch, checked: no nulls, every row the same length, every value finite.
    pub fn next_batch(&mut self) -> Result<Option<VectorBatch>, ArtifactError> {
        let rb = match self.pending.take() {
            Some(b) => b,
            None => match self.inner.next_batch()? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let path = self.inner.path().clone();
        let first_row = self.rows_read;
        let n = rb.num_rows();
        let data_err = |name: &str, e: String| {
            // Row numbers from the converters are within the batch: make them file-wide.
            let e = shift_row_numbers(&e, first_row);
            ArtifactError::Data {
                path: path.clone(),
                reason: format!("column {name}: {e}"),
            }
        };
        let c = &self.columns;
        let image_ids = columns::integers::<u32>(rb.column(c.image_id).as_ref(), &DataType::UInt32)
            .map_err(|e| data_err("image_id", e))?;
        let labels = match c.label {
            Some(i) => columns::integers::<i32>(rb.column(i).as_ref(), &DataType::Int32)
                .map_err(|e| data_err("label", e))?,
            None => ScalarBuffer::from(vec![-1i32; n]),
        };
        let steps = match c.step {
            Some(i) => columns::integers::<u16>(rb.column(i).as_ref(), &DataType::UInt16)
                .map_err(|e| data_err("step", e))?,
            None => ScalarBuffer::from(vec![0u16; n]),
        };
        let epsilons = match c.epsilon {
            Some(i) => {
                columns::floats(rb.column(i).as_ref()).map_err(|e| data_err("epsilon", e))?
            }
            None => ScalarBuffer::from(vec![f32::NAN; n]),
        };
        let values = columns::vectors(rb.column(c.vector).as_ref(), self.width)
            .map_err(|e| data_err(self.kind.column(), e))?;
        let batch = VectorBatch {
            image_ids,
            labels,
            steps,
            epsilons,
            values,
            width: self.width,
        };
        if let Some(bad) = first_non_finite(&batch.values) {
            let row = bad / self.width;
            return Err(ArtifactError::Data {
                path,
                reason: format!(
                    "non-finite {} value {} at image_id {} step {} (row {})",
                    self.kind.column(),
                    batch.values[bad],
                    batch.image_ids[row],
                    batch.steps[row],
                    first_row + row
                ),
            });
        }
        self.rows_read += n;
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

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    #[test]
    fn the_first_non_finite_value_is_found_in_any_block() {
        assert_eq!(first_non_finite(&[]), None);
        let clean: Vec<f32> = (0..5000).map(|i| i as f32 - 2500.5).collect();
        assert_eq!(first_non_finite(&clean), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 1, 1023, 1024, 1025, 3000, 4999] {
                let mut v = clean.clone();
                v[at] = bad;
                // A later one does not hide the first.
                v[4999.min(at + 1500)] = f32::NAN;
                assert_eq!(first_non_finite(&v), Some(at), "{bad} at {at}");
            }
        }
    }
}
