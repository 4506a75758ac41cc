//! Parquet tables: one builder that declares each column with its values (so a table's
//! schema and its data cannot drift apart), atomic writes, and typed reading back with the
//! file and column named in every error.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;

/// A table under construction: `rows` rows, columns added in order.
pub struct Table {
    rows: usize,
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl Table {
    /// A table of `rows` rows whose first column is `run_id`.
    pub fn new(run_id: &str, rows: usize) -> Self {
        Table { rows, fields: Vec::new(), columns: Vec::new() }.col("run_id", StringArray::from(vec![run_id; rows]))
    }

    /// A table of `rows` rows with no columns yet.
    pub fn bare(rows: usize) -> Self {
        Table { rows, fields: Vec::new(), columns: Vec::new() }
    }

    /// A column without nulls.
    pub fn col(self, name: &str, values: impl Array + 'static) -> Self {
        self.add(name, false, values)
    }

    /// A column that may hold nulls.
    pub fn nullable(self, name: &str, values: impl Array + 'static) -> Self {
        self.add(name, true, values)
    }

    /// An int32 column holding `value` in every row (the epoch).
    pub fn constant_i32(self, name: &str, value: i32) -> Self {
        let rows = self.rows;
        self.col(name, Int32Array::from(vec![value; rows]))
    }

    /// A text column holding `value` in every row (the split).
    pub fn constant_str(self, name: &str, value: &str) -> Self {
        let rows = self.rows;
        self.col(name, StringArray::from(vec![value; rows]))
    }

    fn add(mut self, name: &str, nullable: bool, values: impl Array + 'static) -> Self {
        debug_assert_eq!(values.len(), self.rows, "column {name}");
        self.fields.push(Field::new(name, values.data_type().clone(), nullable));
        self.columns.push(Arc::new(values));
        self
    }

    /// Writes the table to `path` through a temporary file and a rename.
    pub fn write(self, path: &Path) -> Result<()> {
        let batch = RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.columns)
            .with_context(|| format!("cannot build the table for {}", path.display()))?;
        write_parquet(path, batch)
    }
}

/// Every record batch of a parquet file, with the file named in errors.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    reader.collect::<std::result::Result<_, _>>().with_context(|| format!("cannot read {}", path.display()))
}

/// Column `name` of `batch` (read from `path`) as the array type `A` (`kind` names the
/// type in the error: "int32", "text").
pub fn column<'a, A: Array + 'static>(batch: &'a RecordBatch, name: &str, kind: &str, path: &Path) -> Result<&'a A> {
    let c = batch.column_by_name(name).with_context(|| format!("{}: no column `{name}`", path.display()))?;
    c.as_any()
        .downcast_ref::<A>()
        .with_context(|| format!("{}: column `{name}` is {}, expected {kind}", path.display(), c.data_type()))
}

/// Writes through `<path>.tmp` and renames, so readers see the old or the new file, whole.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    if let Err(e) = write(&tmp) {
        // A full disk or a file-size limit: no partial file stays behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", tmp.display())));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot rename {} to {}", tmp.display(), path.display()))
    })
}

fn write_parquet(path: &Path, batch: RecordBatch) -> Result<()> {
    atomic_write(path, |tmp| {
        let file = std::fs::File::create(tmp)?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Float64Array;

    #[test]
    fn a_table_reads_back_and_a_wrong_type_names_file_and_column() {
        let dir = std::env::temp_dir().join(format!("runner-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.parquet");
        Table::new("r1", 2)
            .constant_i32("epoch", 3)
            .nullable("class", StringArray::from(vec![Some("cat"), None]))
            .col("value", Float64Array::from(vec![0.5, 1.5]))
            .write(&path)
            .unwrap();
        let batches = read_parquet(&path).unwrap();
        let b = &batches[0];
        let names: Vec<_> = b.schema().fields().iter().map(|f| (f.name().clone(), f.is_nullable())).collect();
        assert_eq!(
            names,
            [("run_id".into(), false), ("epoch".into(), false), ("class".into(), true), ("value".into(), false)]
        );
        assert_eq!(column::<Int32Array>(b, "epoch", "int32", &path).unwrap().values(), &[3, 3]);
        assert!(column::<StringArray>(b, "class", "text", &path).unwrap().is_null(1));
        let e = column::<Int32Array>(b, "value", "int32", &path).unwrap_err().to_string();
        assert!(e.contains("t.parquet") && e.contains("`value` is Float64, expected int32"), "{e}");
        let e = column::<Int32Array>(b, "nope", "int32", &path).unwrap_err().to_string();
        assert!(e.contains("t.parquet: no column `nope`"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
