//! A shorter decode for the canonical vector column (`FixedSizeList<Float32, width>`, the list and
//! its items both non-null, as our writer and arrow-rs write it). arrow-rs assembles such a column
//! by walking the definition and repetition level of every value (a quarter of manifold-stats'
//! time on a 2,000 x 101 x 512 trajectory, perf). Here the leaf column's values are read straight
//! into one buffer with parquet's column reader, and the levels are checked once per row: the
//! values are as many as the levels (so no list is empty and no item null) and every row starts
//! exactly `width` values after the previous one (its first repetition level is 0, and there are
//! as many rows as 0s). The key columns still go through arrow-rs, with the same row selection
//! and batch size, and the two are joined row for row.

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{ArrowError, DataType, FieldRef, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReaderImpl;
use parquet::data_type::FloatType;
use parquet::file::properties::ReaderProperties;
use parquet::file::reader::ChunkReader;
use parquet::file::serialized_reader::SerializedPageReader;
use std::collections::VecDeque;
use std::sync::Arc;

/// Where a file's canonical vector column is, when it has one and every other column is flat.
#[derive(Debug, Clone)]
pub(crate) struct FlatVectorColumn {
    /// Its index among the Arrow fields, and its leaf's among the Parquet columns (every field
    /// is one leaf, so the two are the same).
    field: usize,
    /// Values per row.
    width: usize,
    /// The list's item field.
    item: FieldRef,
}

impl FlatVectorColumn {
    /// The file's canonical vector column: one non-null `FixedSizeList` of non-null Float32 whose
    /// Parquet leaf has definition and repetition levels of at most 1, every other field a
    /// primitive column of its own (at least one). `None` otherwise (the generic reader handles those files).
    pub(crate) fn find(metadata: &ArrowReaderMetadata) -> Option<Self> {
        let schema = metadata.schema();
        let leaves = metadata.metadata().file_metadata().schema_descr();
        if leaves.num_columns() != schema.fields().len() || schema.fields().len() < 2 {
            return None;
        }
        let mut found = None;
        for (field, f) in schema.fields().iter().enumerate() {
            if let DataType::FixedSizeList(item, width) = f.data_type() {
                if found.is_some()
                    || f.is_nullable()
                    || item.is_nullable()
                    || item.data_type() != &DataType::Float32
                    || *width <= 0
                {
                    return None;
                }
                found = Some((field, item.clone(), *width as usize));
            } else if f.data_type().is_nested() {
                return None;
            }
        }
        let (field, item, width) = found?;
        // With one leaf per field, the leaves are in the fields' order.
        let leaf = leaves.column(field);
        let canonical = leaf.path().parts().first() == Some(schema.field(field).name())
            && leaf.physical_type() == PhysicalType::FLOAT
            && leaf.max_def_level() == 1
            && leaf.max_rep_level() == 1;
        canonical.then_some(FlatVectorColumn { field, width, item })
    }
}

/// Batches of selected rows of one row group: the key columns from arrow-rs, the vector column
/// from the leaf's values.
pub(crate) struct FlatVectorBatches {
    keys: ParquetRecordBatchReader,
    values: ColumnReaderImpl<FloatType>,
    /// What is left of the row selection: runs of rows to skip or read, in order.
    selection: VecDeque<RowSelector>,
    column: FlatVectorColumn,
    schema: SchemaRef,
    repetition: Vec<i16>,
    definition: Vec<i16>,
}

impl FlatVectorBatches {
    /// A reader of row group `rg`'s rows picked by `selection` (every row when `None`), in batches
    /// of `batch_rows`; `keys_chunks` and `values_chunks` are two handles on the same bytes.
    pub(crate) fn new<R: ChunkReader + 'static>(
        keys_chunks: R,
        values_chunks: Arc<R>,
        metadata: &ArrowReaderMetadata,
        column: &FlatVectorColumn,
        rg: usize,
        selection: Option<RowSelection>,
        batch_rows: usize,
    ) -> Result<Self, ArrowError> {
        let file = metadata.metadata();
        let leaves = file.file_metadata().schema_descr();
        let rg_rows = file.row_group(rg).num_rows().max(0) as usize;
        let key_leaves = (0..leaves.num_columns()).filter(|&c| c != column.field);
        let mut keys =
            ParquetRecordBatchReaderBuilder::new_with_metadata(keys_chunks, metadata.clone())
                .with_row_groups(vec![rg])
                .with_projection(ProjectionMask::leaves(leaves, key_leaves))
                .with_batch_size(batch_rows);
        if let Some(s) = &selection {
            keys = keys.with_row_selection(s.clone());
        }
        let keys = keys.build().map_err(parquet_error)?;
        let pages = SerializedPageReader::new_with_properties(
            values_chunks,
            file.row_group(rg).column(column.field),
            rg_rows,
            file.page_index_for_row_group(rg)
                .page_locations(column.field)
                .cloned(),
            Arc::new(ReaderProperties::builder().build()),
        )
        .map_err(parquet_error)?;
        let values =
            ColumnReaderImpl::<FloatType>::new(leaves.column(column.field), Box::new(pages));
        let selection = match selection {
            Some(s) => Vec::<RowSelector>::from(s).into(),
            None => VecDeque::from([RowSelector::select(rg_rows)]),
        };
        Ok(FlatVectorBatches {
            keys,
            values,
            selection,
            column: column.clone(),
            schema: metadata.schema().clone(),
            repetition: Vec::new(),
            definition: Vec::new(),
        })
    }

    /// The vectors of the next `rows` selected rows, `rows * width` values.
    fn read_selected(&mut self, rows: usize) -> Result<Vec<f32>, ArrowError> {
        let width = self.column.width;
        let mut values = Vec::with_capacity(rows * width);
        let mut left = rows;
        while left > 0 {
            let Some(run) = self.selection.front_mut() else {
                return Err(ArrowError::ComputeError(format!(
                    "the vector column's row selection ended {left} rows early"
                )));
            };
            if run.skip {
                let skipped = self
                    .values
                    .skip_records(run.row_count)
                    .map_err(parquet_error)?;
                if skipped != run.row_count {
                    return Err(ArrowError::ComputeError(format!(
                        "the vector column ended {} rows before its row group",
                        run.row_count - skipped
                    )));
                }
                self.selection.pop_front();
                continue;
            }
            let take = left.min(run.row_count);
            self.repetition.clear();
            self.definition.clear();
            let before = values.len();
            let (records, read, levels) = self
                .values
                .read_records(
                    take,
                    Some(&mut self.definition),
                    Some(&mut self.repetition),
                    &mut values,
                )
                .map_err(parquet_error)?;
            check_rows(
                take,
                width,
                records,
                read,
                levels,
                values.len() - before,
                &self.repetition,
            )?;
            run.row_count -= take;
            if run.row_count == 0 {
                self.selection.pop_front();
            }
            left -= take;
        }
        Ok(values)
    }

    /// The next batch with every column, in the file's column order.
    fn next_batch(&mut self, keys: RecordBatch) -> Result<RecordBatch, ArrowError> {
        let rows = keys.num_rows();
        let values = self.read_selected(rows)?;
        let vectors = FixedSizeListArray::try_new(
            self.column.item.clone(),
            self.column.width as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )?;
        let mut columns: Vec<ArrayRef> = keys.columns().to_vec();
        columns.insert(self.column.field, Arc::new(vectors));
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// A parquet error as the Arrow error the batch iterators carry.
fn parquet_error(e: parquet::errors::ParquetError) -> ArrowError {
    ArrowError::ExternalError(Box::new(e))
}

/// Checks one read of `rows` rows of `width` values: as many rows, values and levels as asked
/// (so no row is empty or null), and each row's first repetition level 0 (with one 0 per row,
/// every row is exactly `width` long).
fn check_rows(
    rows: usize,
    width: usize,
    records: usize,
    values: usize,
    levels: usize,
    appended: usize,
    repetition: &[i16],
) -> Result<(), ArrowError> {
    let misaligned = |what: String| {
        Err(ArrowError::ComputeError(format!(
            "vector column: {what} (every row must hold {width} values)"
        )))
    };
    if records != rows {
        return misaligned(format!("{records} rows read where {rows} were selected"));
    }
    if values != rows * width || levels != values || appended != values {
        return misaligned(format!(
            "{rows} rows hold {values} values and {levels} levels"
        ));
    }
    if let Some(row) = (0..rows).find(|&r| repetition.get(r * width) != Some(&0)) {
        return misaligned(format!(
            "a row boundary is not where row {row} should start"
        ));
    }
    Ok(())
}

impl Iterator for FlatVectorBatches {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let keys = match self.keys.next()? {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        Some(self.next_batch(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::check_rows;

    #[test]
    fn rows_of_the_wrong_length_are_refused() {
        // Two rows of 3: boundaries at 0 and 3.
        assert!(check_rows(2, 3, 2, 6, 6, 6, &[0, 1, 1, 0, 1, 1]).is_ok());
        // Rows of 4 and 2: as many values, the second boundary misplaced.
        let e = check_rows(2, 3, 2, 6, 6, 6, &[0, 1, 1, 1, 0, 1]).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        // An empty or null row: fewer values than levels.
        assert!(check_rows(2, 3, 2, 5, 6, 5, &[0, 1, 1, 0, 1, 1]).is_err());
        // Fewer rows than selected.
        assert!(check_rows(2, 3, 1, 3, 3, 3, &[0, 1, 1]).is_err());
    }
}
