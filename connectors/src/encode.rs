//! The row encoders sinks share, straight from the Arrow columns (no per-row values built):
//! JSON lines and CSV. An encoder that fails was handed something it was built to encode, so
//! its failure is a bug in sluice, never retried.

use arrow_array::RecordBatch;
use sluice_engine::error::ConnectorError;

/// Encodes batches as JSON lines (nulls written out), appending to `out`. arrow-json escapes
/// newlines inside strings, so each line is exactly one row.
pub fn json_lines(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<(), ConnectorError> {
    let mut w =
        arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow_json::writer::LineDelimited>(out);
    for b in batches {
        w.write(b).map_err(|e| ConnectorError::internal("encoding rows as JSON", e.to_string()))?;
    }
    w.finish().map_err(|e| ConnectorError::internal("encoding rows as JSON", e.to_string()))
}

/// Encodes batches as CSV with a header line, appending to `out`.
pub fn csv(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<(), ConnectorError> {
    let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(out);
    for b in batches {
        w.write(b).map_err(|e| ConnectorError::internal("encoding rows as CSV", e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    #[test]
    fn rows_become_lines_with_nulls_written_out() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec![Some("a\nb"), None])) as ArrayRef),
        ])
        .unwrap();
        let mut out = Vec::new();
        json_lines(std::slice::from_ref(&batch), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":1,\"name\":\"a\\nb\"}\n{\"id\":2,\"name\":null}\n");
        let mut out = Vec::new();
        csv(&[batch], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,name\n1,\"a\nb\"\n2,\n");
    }
}
