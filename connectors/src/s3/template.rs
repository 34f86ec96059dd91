//! The key template language of the `s3` sink: `{flow}/{topic}/{partition}/{first_offset}.{ext}`
//! and its kin (listed in [`super::sink`]), parsed once when the sink is built.

use sluice_engine::error::ConnectorError;

/// One part of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Text(String),
    Flow,
    Topic,
    Partition,
    FirstOffset,
    LastOffset,
    Ext,
    Date,
    Hour,
    RunId,
    SchemaVersion,
    Field(String),
}

const PARTS: &str = "{flow}, {topic}, {partition}, {first_offset}, {last_offset}, {ext}, {date}, {hour}, \
                     {field:COLUMN}, {run_id}, {schema_version}";

/// Splits a key template into its parts.
pub(super) fn parse_template(path: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let Some(len) = rest[open..].find('}') else {
            return Err(format!("`path`: `{{` without a closing `}}` in `{path}`"));
        };
        let name = &rest[open + 1..open + len];
        parts.push(match name {
            "flow" => Part::Flow,
            "topic" => Part::Topic,
            "partition" => Part::Partition,
            "first_offset" => Part::FirstOffset,
            "last_offset" => Part::LastOffset,
            "ext" => Part::Ext,
            "date" => Part::Date,
            "hour" => Part::Hour,
            "run_id" => Part::RunId,
            "schema_version" => Part::SchemaVersion,
            _ => match name.strip_prefix("field:") {
                Some(column) if !column.is_empty() => Part::Field(column.to_owned()),
                _ => return Err(format!("`path`: unknown part `{{{name}}}`; expected one of {PARTS}")),
            },
        });
        rest = &rest[open + len + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Where a write's rows were read from, out of its batch id ("topic/partition:first-last").
pub(super) struct Origin<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: &'a str,
    pub(super) first: u64,
    pub(super) last: u64,
}

impl<'a> Origin<'a> {
    /// The origin named by `batch_id`. The runtime gives a per-partition sink one partition's
    /// range; anything else would name objects wrongly, so it is refused, not guessed.
    pub(super) fn of(batch_id: &'a str) -> Result<Origin<'a>, ConnectorError> {
        let bad = || ConnectorError::Internal {
            context: format!("naming the object of batch `{batch_id}`"),
            message: "not one partition's offset range (topic/partition:first-last)".into(),
        };
        let (topic, range) = batch_id.rsplit_once('/').ok_or_else(bad)?;
        let (partition, offsets) = range.split_once(':').ok_or_else(bad)?;
        let (first, last) = offsets.split_once('-').ok_or_else(bad)?;
        match (partition.parse::<i32>(), first.parse(), last.parse()) {
            (Ok(_), Ok(first), Ok(last)) => Ok(Origin { topic, partition, first, last }),
            _ => Err(bad()),
        }
    }
}

/// UTC `YYYY-MM-DD` and `HH` of a time in milliseconds (the civil-from-days algorithm).
pub(super) fn civil(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}", rem / 3600))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), ("1970-01-01".into(), "00".into()));
        assert_eq!(civil(1_798_156_800_000 + 13 * 3_600_000), ("2026-12-25".into(), "13".into()));
        assert_eq!(civil(951_782_400_000), ("2000-02-29".into(), "00".into()));
    }

    #[test]
    fn a_batch_id_is_one_partitions_range_or_an_error() {
        let o = Origin::of("sluice.orders.changes/2:100-199").unwrap();
        assert_eq!((o.topic, o.partition, o.first, o.last), ("sluice.orders.changes", "2", 100, 199));
        for bad in ["t/0:1-2,1:3-4", "t/0:x-2", "no-range", "t/0:5"] {
            assert!(Origin::of(bad).is_err(), "{bad}");
        }
    }
}
