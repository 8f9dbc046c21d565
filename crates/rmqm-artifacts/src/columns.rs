//! Liberal reading of vector artifacts written by other tools (pyarrow, polars, NumPy, PyTorch
//! users): key columns of any integer type, range-checked; epsilon of any float type; the vector
//! column as FixedSizeList, List or LargeList of Float16, Float32 or Float64, every row the same
//! length and free of nulls. Columns are found by name, in any order; extra columns are ignored.
//! The canonical encoding (UInt32 / Int32 / UInt16 / Float32 keys, FixedSizeList<Float32>) is
//! read without a copy.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType, OffsetSizeTrait};
use arrow_buffer::{ArrowNativeType, ScalarBuffer};
use arrow_schema::{DataType, Schema};

/// A key column's values converted to `T`, or the first row (within the batch) whose value does
/// not fit, with the value.
pub fn integers<T>(a: &dyn Array, canonical: &DataType) -> Result<ScalarBuffer<T>, String>
where
    T: ArrowNativeType + TryFrom<i128>,
{
    if a.null_count() > 0 {
        let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
        return Err(format!("null at row {row}"));
    }
    if a.data_type() == canonical {
        // Same width and signedness: share the buffer.
        let data = a.to_data();
        return Ok(ScalarBuffer::new(
            data.buffers()[0].clone(),
            data.offset(),
            data.len(),
        ));
    }
    fn convert<P: ArrowPrimitiveType, T: TryFrom<i128> + ArrowNativeType>(
        a: &dyn Array,
    ) -> Result<ScalarBuffer<T>, String>
    where
        P::Native: Into<i128>,
    {
        let values = a.as_primitive::<P>().values();
        let mut out = Vec::with_capacity(values.len());
        for (row, &v) in values.iter().enumerate() {
            let wide: i128 = v.into();
            match T::try_from(wide) {
                Ok(t) => out.push(t),
                Err(_) => return Err(format!("value {wide} at row {row} is out of range")),
            }
        }
        Ok(ScalarBuffer::from(out))
    }
    match a.data_type() {
        DataType::Int8 => convert::<Int8Type, T>(a),
        DataType::Int16 => convert::<Int16Type, T>(a),
        DataType::Int32 => convert::<Int32Type, T>(a),
        DataType::Int64 => convert::<Int64Type, T>(a),
        DataType::UInt8 => convert::<UInt8Type, T>(a),
        DataType::UInt16 => convert::<UInt16Type, T>(a),
        DataType::UInt32 => convert::<UInt32Type, T>(a),
        DataType::UInt64 => convert::<UInt64Type, T>(a),
        other => Err(format!("must be an integer column, found {other}")),
    }
}

/// Whether `dt` is a type [`integers`] reads.
pub fn is_integer(dt: &DataType) -> bool {
    dt.is_integer()
}

/// Whether `dt` is a float type [`floats`] and the vector readers take.
pub fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    )
}

/// A float column as f32 (shared when it is Float32); None for the first null's row.
pub fn floats(a: &dyn Array) -> Result<ScalarBuffer<f32>, String> {
    if a.null_count() > 0 {
        let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
        return Err(format!("null at row {row}"));
    }
    Ok(match a.data_type() {
        DataType::Float32 => a.as_primitive::<Float32Type>().values().clone(),
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|&v| v as f32)
            .collect(),
        DataType::Float16 => a
            .as_primitive::<Float16Type>()
            .values()
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        other => return Err(format!("must be a float column, found {other}")),
    })
}

/// How the vector column is encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorEncoding {
    /// FixedSizeList of `width` items of the given float type.
    Fixed {
        /// Item type.
        item: DataType,
        /// Values per row.
        width: usize,
    },
    /// List (32-bit offsets) of the given float type: the width comes from the data.
    List(DataType),
    /// LargeList (64-bit offsets) of the given float type.
    LargeList(DataType),
}

impl VectorEncoding {
    /// The encoding of a column of type `dt`, or why it is not a vector column.
    pub fn of(dt: &DataType) -> Result<VectorEncoding, String> {
        let bad = || {
            format!(
                "must be a FixedSizeList, List or LargeList of Float16, Float32 or Float64, found {dt}"
            )
        };
        match dt {
            DataType::FixedSizeList(item, w) if is_float(item.data_type()) && *w > 0 => {
                Ok(VectorEncoding::Fixed {
                    item: item.data_type().clone(),
                    width: *w as usize,
                })
            }
            DataType::List(item) if is_float(item.data_type()) => {
                Ok(VectorEncoding::List(item.data_type().clone()))
            }
            DataType::LargeList(item) if is_float(item.data_type()) => {
                Ok(VectorEncoding::LargeList(item.data_type().clone()))
            }
            _ => Err(bad()),
        }
    }

    /// The canonical encoding, read without a copy.
    pub fn is_canonical(&self) -> bool {
        matches!(
            self,
            VectorEncoding::Fixed {
                item: DataType::Float32,
                ..
            }
        )
    }
}

/// The values of a vector column as row-major f32 with `width` per row; the first row that is
/// null, holds a null, or has another length is an error (its row within the batch).
pub fn vectors(a: &dyn Array, width: usize) -> Result<ScalarBuffer<f32>, String> {
    if a.null_count() > 0 {
        let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
        return Err(format!("row {row} is null"));
    }
    match a.data_type() {
        DataType::FixedSizeList(..) => {
            let list = a.as_fixed_size_list();
            let start = list.value_offset_at(0);
            let child = list.values().slice(start, a.len() * width);
            if child.null_count() > 0 {
                let at = (0..child.len()).find(|&i| child.is_null(i)).unwrap_or(0);
                return Err(format!("row {} holds a null value", at / width));
            }
            floats(child.as_ref())
        }
        DataType::List(_) => offsets_list(a.as_list::<i32>(), width),
        DataType::LargeList(_) => offsets_list(a.as_list::<i64>(), width),
        other => Err(format!("not a list column: {other}")),
    }
}

fn offsets_list<O: OffsetSizeTrait>(
    list: &arrow_array::GenericListArray<O>,
    width: usize,
) -> Result<ScalarBuffer<f32>, String> {
    let offsets = list.value_offsets();
    for row in 0..list.len() {
        let n = (offsets[row + 1] - offsets[row]).as_usize();
        if n != width {
            return Err(format!(
                "row {row} has {n} values but the first row has {width}: every row must have the same length"
            ));
        }
    }
    let start = offsets[0].as_usize();
    let end = offsets[list.len()].as_usize();
    let child = list.values().slice(start, end - start);
    if child.null_count() > 0 {
        let at = (0..child.len()).find(|&i| child.is_null(i)).unwrap_or(0);
        return Err(format!("row {} holds a null value", at / width.max(1)));
    }
    floats(child.as_ref())
}

/// The length of the first row of a List or LargeList column (None for an empty column).
pub fn first_row_length(a: &dyn Array) -> Option<usize> {
    if a.is_empty() {
        return None;
    }
    match a.data_type() {
        DataType::List(_) => Some(a.as_list::<i32>().value_length(0) as usize),
        DataType::LargeList(_) => Some(a.as_list::<i64>().value_length(0) as usize),
        DataType::FixedSizeList(_, w) => Some(*w as usize),
        _ => None,
    }
}

/// The index of the column called `name`, if any.
pub fn find(schema: &Schema, name: &str) -> Option<usize> {
    schema.fields().iter().position(|f| f.name() == name)
}
