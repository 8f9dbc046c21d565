//! Small result tables (stats summaries, curves, probe results, reports): named columns of floats,
//! integers or strings, written as Parquet with provenance and read back by name.

use crate::{ArtifactError, ArtifactReader, ArtifactWriter, Input, Output, Provenance};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use std::sync::Arc;

/// One column of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Float64 values; NaN stands for "not available".
    F64(Vec<f64>),
    /// Int64 values.
    I64(Vec<i64>),
    /// UTF-8 strings.
    Str(Vec<String>),
}

impl Column {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Column::F64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::Str(v) => v.len(),
        }
    }
    /// True when the column is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Value `i` rendered as text (floats with up to 6 significant decimals).
    pub fn text(&self, i: usize) -> String {
        match self {
            Column::F64(v) => format_float(v[i]),
            Column::I64(v) => v[i].to_string(),
            Column::Str(v) => v[i].clone(),
        }
    }
    fn to_array(&self) -> ArrayRef {
        match self {
            Column::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Column::Str(v) => Arc::new(StringArray::from(v.clone())),
        }
    }
    fn data_type(&self) -> DataType {
        match self {
            Column::F64(_) => DataType::Float64,
            Column::I64(_) => DataType::Int64,
            Column::Str(_) => DataType::Utf8,
        }
    }
}

/// Formats a float for tables: NaN as `NA`, otherwise up to 4 decimals (or scientific when tiny).
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        "NA".into()
    } else if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// A table of named, equally long columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// (name, values) in column order.
    pub columns: Vec<(String, Column)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a column (builder style); panics if its length differs from the others.
    pub fn with(mut self, name: &str, column: Column) -> Self {
        self.push(name, column);
        self
    }
    /// Appends a column; panics if its length differs from the others.
    pub fn push(&mut self, name: &str, column: Column) {
        if let Some((_, first)) = self.columns.first() {
            assert_eq!(first.len(), column.len(), "column {name} length");
        }
        self.columns.push((name.to_string(), column));
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }
    /// The column called `name`.
    pub fn get(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
    /// Float values of column `name` (integers converted), if it exists and is numeric.
    pub fn f64s(&self, name: &str) -> Option<Vec<f64>> {
        match self.get(name)? {
            Column::F64(v) => Some(v.clone()),
            Column::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Column::Str(_) => None,
        }
    }
    /// String values of column `name` (numbers rendered as text), if it exists.
    pub fn strings(&self, name: &str) -> Option<Vec<String>> {
        let c = self.get(name)?;
        Some((0..c.len()).map(|i| c.text(i)).collect())
    }
    /// The table as one Arrow record batch.
    pub fn to_record_batch(&self) -> RecordBatch {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(n, c)| Field::new(n, c.data_type(), false))
            .collect();
        let arrays: Vec<ArrayRef> = self.columns.iter().map(|(_, c)| c.to_array()).collect();
        if fields.is_empty() {
            return RecordBatch::new_empty(Arc::new(Schema::empty()));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("columns have equal length")
    }
    /// Appends the rows of `other`, which must have the same column names and types.
    pub fn append(&mut self, other: &Table) -> Result<(), String> {
        if self.columns.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        let names: Vec<&String> = self.columns.iter().map(|(n, _)| n).collect();
        let other_names: Vec<&String> = other.columns.iter().map(|(n, _)| n).collect();
        if names != other_names {
            return Err(format!(
                "columns differ: [{}] vs [{}]",
                join(&names),
                join(&other_names)
            ));
        }
        for ((name, a), (_, b)) in self.columns.iter_mut().zip(&other.columns) {
            match (a, b) {
                (Column::F64(a), Column::F64(b)) => a.extend_from_slice(b),
                (Column::I64(a), Column::I64(b)) => a.extend_from_slice(b),
                (Column::Str(a), Column::Str(b)) => a.extend_from_slice(b),
                _ => return Err(format!("column {name} has different types")),
            }
        }
        Ok(())
    }
    /// The table as a GitHub-flavoured Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        s.push_str(&format!("| {} |\n", names.join(" | ")));
        s.push_str(&format!("|{}\n", "---|".repeat(names.len())));
        for r in 0..self.rows() {
            let cells: Vec<String> = self.columns.iter().map(|(_, c)| c.text(r)).collect();
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        s
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Writes `table` to `output` with `provenance` (atomic for files).
pub fn write_table(
    output: &Output,
    table: &Table,
    provenance: &Provenance,
) -> Result<(), ArtifactError> {
    let batch = table.to_record_batch();
    let mut w = ArtifactWriter::create(output, &batch.schema(), provenance)?;
    w.write(&batch)?;
    w.finish()?;
    Ok(())
}

fn column_from_array(
    path: &std::path::Path,
    name: &str,
    a: &ArrayRef,
) -> Result<Column, ArtifactError> {
    let col = match a.data_type() {
        DataType::Float64 => Column::F64(
            a.as_primitive::<Float64Type>()
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
        ),
        DataType::Float32 => Column::F64(
            a.as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.map_or(f64::NAN, f64::from))
                .collect(),
        ),
        DataType::Int64 => Column::I64(
            a.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
        ),
        DataType::Int32 => Column::I64(
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.unwrap_or(0) as i64)
                .collect(),
        ),
        DataType::UInt32 => Column::I64(
            a.as_primitive::<UInt32Type>()
                .iter()
                .map(|v| v.unwrap_or(0) as i64)
                .collect(),
        ),
        DataType::UInt16 => Column::I64(
            a.as_primitive::<UInt16Type>()
                .iter()
                .map(|v| v.unwrap_or(0) as i64)
                .collect(),
        ),
        DataType::UInt64 => Column::I64(
            a.as_primitive::<UInt64Type>()
                .iter()
                .map(|v| v.unwrap_or(0) as i64)
                .collect(),
        ),
        DataType::Utf8 => Column::Str(
            a.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect(),
        ),
        DataType::LargeUtf8 => Column::Str(
            a.as_string::<i64>()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect(),
        ),
        other => {
            return Err(ArtifactError::Schema {
                path: path.into(),
                reason: format!("column {name} has type {other}, which tables do not hold"),
            });
        }
    };
    Ok(col)
}

/// Reads a whole table (Parquet or IPC) and its provenance.
pub fn read_table(input: &Input) -> Result<(Table, Provenance), ArtifactError> {
    let mut reader = ArtifactReader::open(input, 65_536)?;
    let path = reader.path().clone();
    let schema = reader.schema().clone();
    let mut table = Table::new();
    let mut first = true;
    while let Some(batch) = reader.next_batch()? {
        let mut part = Table::new();
        for (f, a) in schema.fields().iter().zip(batch.columns()) {
            part.push(f.name(), column_from_array(&path, f.name(), a)?);
        }
        if first {
            table = part;
            first = false;
        } else {
            table
                .append(&part)
                .map_err(|reason| ArtifactError::Schema {
                    path: path.clone(),
                    reason,
                })?;
        }
    }
    if first {
        for f in schema.fields() {
            let empty: ArrayRef = arrow_array::new_empty_array(f.data_type());
            table.push(f.name(), column_from_array(&path, f.name(), &empty)?);
        }
    }
    Ok((table, reader.provenance().clone()))
}

/// Reads several tables with the same columns and stacks them; also returns each file's provenance.
pub fn read_tables(inputs: &[Input]) -> Result<(Table, Vec<Provenance>), ArtifactError> {
    let mut all = Table::new();
    let mut provs = Vec::new();
    for input in inputs {
        let (t, p) = read_table(input)?;
        all.append(&t).map_err(|reason| ArtifactError::Schema {
            path: input.display_path(),
            reason,
        })?;
        provs.push(p);
    }
    Ok((all, provs))
}
