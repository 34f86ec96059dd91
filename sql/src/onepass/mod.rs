//! One pass from JSON payloads into the decode schema's Arrow columns, for a batch whose
//! payloads are all well-formed and plainly typed — nearly every batch.
//!
//! The general path reads each payload three times: [`crate::precheck`] walks it for what
//! arrow-json would change without a word, arrow-json's tape decoder copies it into a tape,
//! and arrow-json's column decoders walk the tape. On ≈ 1 KB nested records that was most of
//! the SQL stage's time. This decoder parses each payload once, straight into column builders,
//! doing the pre-check's work as it goes (integers must be whole, decimals must fit, nesting is
//! bounded, row-level fields the row does not declare are noted).
//!
//! It never judges a record. Whatever it is not sure to read exactly as the general path
//! would — malformed or lenient JSON, a number where text is declared, a fraction in an
//! integer field, an escaped key, a duplicate field, a decimal that does not fit — makes it
//! step aside for the whole batch ([`Unsure`]), and the general path decodes that batch and
//! names the bad record. So its output, when it gives one, is what the general path gives:
//! the property the tests check against arrow-json itself. Scalars are parsed by the same
//! functions arrow-json calls (arrow-cast's timestamp, date, time and decimal parsers).
//!
//! Types it builds: booleans, 32/64-bit integers, floats, text, timestamps (any unit, with or
//! without zone), dates, times, decimals up to 38 digits, and structs, lists and maps of them. A
//! schema with anything else (wider decimals, `json` columns) keeps to the general path.

use std::sync::Arc;

use arrow_array::types::{Date32Type, Decimal128Type, Time64MicrosecondType};
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, ListArray, MapArray,
    RecordBatch, StringArray, StructArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use arrow_buffer::{BooleanBufferBuilder, NullBufferBuilder, OffsetBuffer};
use arrow_cast::parse::{Parser as _, parse_decimal, string_to_datetime};
use arrow_schema::{DataType, Fields, SchemaRef, TimeUnit};

use sluice_core::names::column::HIDDEN;

use crate::number_text::decimal_fits;
use crate::precheck::note_new_field;

mod cursor;
use cursor::Json;

/// This decoder cannot vouch for the batch; the general path decodes it.
#[derive(Debug, PartialEq)]
pub(crate) struct Unsure;

type Step<T = ()> = Result<T, Unsure>;

/// The decoder of one stage: what to build, fixed when the stage is planned.
pub(crate) struct OnePass {
    schema: SchemaRef,
    /// Whether payloads are Debezium envelopes (the row is their `after`/`before` image).
    envelope: bool,
}

impl OnePass {
    /// The decoder for `schema` (the stage's decode schema), if it builds every type in it.
    pub(crate) fn new(schema: &SchemaRef, envelope: bool) -> Option<OnePass> {
        schema.fields().iter().all(|f| supported(f.data_type())).then(|| OnePass { schema: schema.clone(), envelope })
    }

    /// Decodes one payload per row; `Err(Unsure)` leaves the batch to the general path.
    /// Row-level fields the row does not declare are added to `unknown`, once each.
    pub(crate) fn decode(&self, payloads: &[&[u8]], unknown: &mut Vec<String>) -> Step<RecordBatch> {
        let bytes: usize = payloads.iter().map(|p| p.len()).sum();
        let per_row = bytes / payloads.len().max(1);
        let mut root = Col::new_struct(self.schema.fields(), payloads.len(), per_row, !self.envelope);
        if self.envelope
            && let Kind::Struct { children, .. } = &mut root.kind
        {
            for (c, f) in children.iter_mut().zip(self.schema.fields().iter()) {
                if let Kind::Struct { row, .. } = &mut c.kind {
                    *row = matches!(f.name().as_str(), "after" | "before");
                }
            }
        }
        let mut cx = Cx { unknown, scratch: Vec::new() };
        for payload in payloads {
            // The general path refuses a payload that is not UTF-8 anywhere in its strings;
            // checked whole here, every slice copied below is text.
            if std::str::from_utf8(payload).is_err() {
                return Err(Unsure);
            }
            let mut p = Json { bytes: payload, at: 0 };
            p.ws();
            if p.peek() != Some(b'{') {
                return Err(Unsure);
            }
            root.object(&mut p, &mut cx, 0)?;
            p.ws();
            if p.at != payload.len() {
                return Err(Unsure);
            }
        }
        let Kind::Struct { children, .. } = root.kind else { return Err(Unsure) };
        let columns = children
            .into_iter()
            .zip(self.schema.fields().iter())
            .map(|(c, f)| c.finish(f.data_type()))
            .collect::<Step<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|_| Unsure)
    }
}

/// Whether this decoder builds columns of type `t`.
fn supported(t: &DataType) -> bool {
    match t {
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float64
        | DataType::Utf8
        | DataType::Timestamp(_, None)
        | DataType::Date32
        | DataType::Time64(TimeUnit::Microsecond)
        | DataType::Decimal128(..) => true,
        DataType::Timestamp(_, Some(tz)) => tz.as_ref() == "UTC",
        DataType::Struct(fields) => fields.iter().all(|f| supported(f.data_type())),
        DataType::List(item) => supported(item.data_type()),
        DataType::Map(entries, false) => match entries.data_type() {
            DataType::Struct(kv) => {
                kv.len() == 2 && *kv[0].data_type() == DataType::Utf8 && supported(kv[1].data_type())
            }
            _ => false,
        },
        _ => false,
    }
}

/// What one batch's decoding shares across columns.
struct Cx<'u> {
    unknown: &'u mut Vec<String>,
    /// A string's text when it holds escapes.
    scratch: Vec<u8>,
}

/// A column being built.
struct Col<'s> {
    valid: NullBufferBuilder,
    kind: Kind<'s>,
}

enum Kind<'s> {
    Bool(BooleanBufferBuilder),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float64(Vec<f64>),
    Utf8 {
        offsets: Vec<i32>,
        bytes: Vec<u8>,
    },
    Timestamp(Vec<i64>, TimeUnit),
    Date32(Vec<i32>),
    Time64(Vec<i64>),
    Decimal128 {
        values: Vec<i128>,
        precision: u8,
        scale: i8,
    },
    /// `row`: whether this struct is the row (undeclared fields in it are new columns).
    Struct {
        fields: &'s Fields,
        children: Vec<Col<'s>>,
        row: bool,
    },
    List {
        offsets: Vec<i32>,
        item: Box<Col<'s>>,
    },
    /// An object's keys and values, in the order given (a key given twice is two entries, as
    /// arrow-json reads it).
    Map {
        offsets: Vec<i32>,
        keys: Box<Col<'s>>,
        values: Box<Col<'s>>,
    },
}

impl<'s> Col<'s> {
    /// A builder for `n` values of type `t`, each of about `bytes` bytes of JSON.
    fn new(t: &'s DataType, n: usize, bytes: usize) -> Col<'s> {
        let kind = match t {
            DataType::Boolean => Kind::Bool(BooleanBufferBuilder::new(n)),
            DataType::Int32 => Kind::Int32(Vec::with_capacity(n)),
            DataType::Int64 => Kind::Int64(Vec::with_capacity(n)),
            DataType::Float64 => Kind::Float64(Vec::with_capacity(n)),
            DataType::Timestamp(unit, _) => Kind::Timestamp(Vec::with_capacity(n), *unit),
            DataType::Date32 => Kind::Date32(Vec::with_capacity(n)),
            DataType::Time64(_) => Kind::Time64(Vec::with_capacity(n)),
            DataType::Decimal128(precision, scale) => {
                Kind::Decimal128 { values: Vec::with_capacity(n), precision: *precision, scale: *scale }
            }
            DataType::Struct(fields) => return Col::new_struct(fields, n, bytes, false),
            DataType::List(item) => {
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0);
                Kind::List { offsets, item: Box::new(Col::new(item.data_type(), n * 4, bytes / 4)) }
            }
            DataType::Map(entries, _) => {
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0);
                let (keys, values) = match entries.data_type() {
                    DataType::Struct(kv) if kv.len() == 2 => (kv[0].data_type(), kv[1].data_type()),
                    // `supported` admits no other entries.
                    _ => (&DataType::Utf8, &DataType::Utf8),
                };
                let keys = Box::new(Col::new(keys, n * 4, 16));
                Kind::Map { offsets, keys, values: Box::new(Col::new(values, n * 4, bytes / 4)) }
            }
            // Utf8; `supported` admits nothing else.
            _ => {
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0);
                Kind::Utf8 { offsets, bytes: Vec::with_capacity(n * bytes.min(256)) }
            }
        };
        Col { valid: NullBufferBuilder::new(n), kind }
    }

    fn new_struct(fields: &'s Fields, n: usize, bytes: usize, row: bool) -> Col<'s> {
        let each = bytes / fields.len().max(1);
        let children = fields.iter().map(|f| Col::new(f.data_type(), n, each)).collect();
        Col { valid: NullBufferBuilder::new(n), kind: Kind::Struct { fields, children, row } }
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    /// Appends a null (a struct's fields are null too, as arrow-json leaves them).
    fn push_null(&mut self) {
        self.valid.append_null();
        match &mut self.kind {
            Kind::Bool(b) => b.append(false),
            Kind::Int32(v) | Kind::Date32(v) => v.push(0),
            Kind::Int64(v) | Kind::Timestamp(v, _) | Kind::Time64(v) => v.push(0),
            Kind::Float64(v) => v.push(0.0),
            Kind::Decimal128 { values, .. } => values.push(0),
            Kind::Utf8 { offsets, bytes } => offsets.push(bytes.len() as i32),
            Kind::Struct { children, .. } => children.iter_mut().for_each(Col::push_null),
            Kind::List { offsets, item } => offsets.push(item.len() as i32),
            Kind::Map { offsets, keys, .. } => offsets.push(keys.len() as i32),
        }
    }

    /// Reads the value at `p` into this column; `depth` is how many objects and arrays
    /// enclose it.
    fn value(&mut self, p: &mut Json<'_>, cx: &mut Cx<'_>, depth: usize) -> Step {
        let Some(first) = p.peek() else { return Err(Unsure) };
        if matches!(self.kind, Kind::Struct { .. }) && first != b'n' {
            return self.object(p, cx, depth);
        }
        if first == b'n' {
            p.literal(b"null")?;
            self.push_null();
            return Ok(());
        }
        match &mut self.kind {
            Kind::Bool(b) => match first {
                b't' => p.literal(b"true").map(|()| b.append(true))?,
                b'f' => p.literal(b"false").map(|()| b.append(false))?,
                _ => return Err(Unsure),
            },
            Kind::Int32(v) => v.push(i32::try_from(p.integer()?).map_err(|_| Unsure)?),
            Kind::Int64(v) => v.push(p.integer()?),
            Kind::Float64(v) => {
                let (token, _) = p.number()?;
                v.push(std::str::from_utf8(token).ok().and_then(|t| t.parse().ok()).ok_or(Unsure)?);
            }
            Kind::Utf8 { offsets, bytes } => {
                if first != b'"' {
                    return Err(Unsure);
                }
                p.string_into(bytes)?;
                offsets.push(i32::try_from(bytes.len()).map_err(|_| Unsure)?);
            }
            Kind::Timestamp(v, unit) => {
                let value = if first == b'"' {
                    let text = p.text(&mut cx.scratch)?;
                    let at = string_to_datetime(&chrono::Utc, text).map_err(|_| Unsure)?;
                    match unit {
                        TimeUnit::Second => at.timestamp(),
                        TimeUnit::Millisecond => at.timestamp_millis(),
                        TimeUnit::Microsecond => at.timestamp_micros(),
                        TimeUnit::Nanosecond => at.timestamp_nanos_opt().ok_or(Unsure)?,
                    }
                } else {
                    p.integer()?
                };
                v.push(value);
            }
            Kind::Date32(v) => v.push(if first == b'"' {
                Date32Type::parse(p.text(&mut cx.scratch)?).ok_or(Unsure)?
            } else {
                i32::try_from(p.integer()?).map_err(|_| Unsure)?
            }),
            Kind::Time64(v) => v.push(if first == b'"' {
                Time64MicrosecondType::parse(p.text(&mut cx.scratch)?).ok_or(Unsure)?
            } else {
                p.integer()?
            }),
            Kind::Decimal128 { values, precision, scale } => {
                let text = if first == b'"' {
                    p.text(&mut cx.scratch)?
                } else {
                    std::str::from_utf8(p.number()?.0).map_err(|_| Unsure)?
                };
                // arrow-json would cut digits past the scale; the general path refuses them.
                decimal_fits(text, *precision, *scale).map_err(|_| Unsure)?;
                values.push(parse_decimal::<Decimal128Type>(text, *precision, *scale).map_err(|_| Unsure)?);
            }
            Kind::Struct { .. } => return Err(Unsure),
            Kind::List { offsets, item } => {
                p.each(b'[', depth, |p| item.value(p, cx, depth + 1))?;
                offsets.push(i32::try_from(item.len()).map_err(|_| Unsure)?);
            }
            Kind::Map { offsets, keys, values } => {
                p.each(b'{', depth, |p| {
                    keys.value(p, cx, depth + 1)?;
                    p.colon()?;
                    values.value(p, cx, depth + 1)
                })?;
                offsets.push(i32::try_from(keys.len()).map_err(|_| Unsure)?);
            }
        }
        self.valid.append_non_null();
        Ok(())
    }

    /// Reads the object at `p` into this struct column.
    fn object(&mut self, p: &mut Json<'_>, cx: &mut Cx<'_>, depth: usize) -> Step {
        let Kind::Struct { fields, children, row } = &mut self.kind else { return Err(Unsure) };
        let n = self.valid.len();
        // Fields usually come in the declared order: the one after the last is tried first.
        let mut guess = 0;
        p.each(b'{', depth, |p| {
            let key = p.key()?;
            p.colon()?;
            match find(fields, key, guess) {
                Some(i) => {
                    // A field given twice: arrow-json keeps the last, which is not worth
                    // copying here.
                    if children[i].len() != n {
                        return Err(Unsure);
                    }
                    guess = i + 1;
                    children[i].value(p, cx, depth + 1)
                }
                None => {
                    // A row-level field the row does not declare: a column added upstream
                    // (the source table's hidden columns are never new ones).
                    if *row && !HIDDEN.iter().any(|h| h.as_bytes() == key) {
                        note_new_field(cx.unknown, key);
                    }
                    p.skip(depth + 1)
                }
            }
        })?;
        for c in children.iter_mut().filter(|c| c.len() == n) {
            c.push_null();
        }
        self.valid.append_non_null();
        Ok(())
    }

    /// The finished column, of type `t` (the type it was built for).
    fn finish(self, t: &DataType) -> Step<ArrayRef> {
        let nulls = { self.valid }.finish();
        Ok(match (self.kind, t) {
            (Kind::Bool(mut b), _) => Arc::new(BooleanArray::new(b.finish(), nulls)),
            (Kind::Int32(v), _) => Arc::new(Int32Array::new(v.into(), nulls)),
            (Kind::Int64(v), _) => Arc::new(Int64Array::new(v.into(), nulls)),
            (Kind::Float64(v), _) => Arc::new(Float64Array::new(v.into(), nulls)),
            (Kind::Date32(v), _) => Arc::new(Date32Array::new(v.into(), nulls)),
            (Kind::Time64(v), _) => Arc::new(Time64MicrosecondArray::new(v.into(), nulls)),
            (Kind::Utf8 { offsets, bytes }, _) => Arc::new(
                StringArray::try_new(OffsetBuffer::new(offsets.into()), bytes.into(), nulls).map_err(|_| Unsure)?,
            ),
            (Kind::Timestamp(v, unit), DataType::Timestamp(_, tz)) => match unit {
                TimeUnit::Second => Arc::new(TimestampSecondArray::new(v.into(), nulls).with_timezone_opt(tz.clone())),
                TimeUnit::Millisecond => {
                    Arc::new(TimestampMillisecondArray::new(v.into(), nulls).with_timezone_opt(tz.clone()))
                }
                TimeUnit::Microsecond => {
                    Arc::new(TimestampMicrosecondArray::new(v.into(), nulls).with_timezone_opt(tz.clone()))
                }
                TimeUnit::Nanosecond => {
                    Arc::new(TimestampNanosecondArray::new(v.into(), nulls).with_timezone_opt(tz.clone()))
                }
            },
            (Kind::Decimal128 { values, precision, scale }, _) => Arc::new(
                Decimal128Array::new(values.into(), nulls)
                    .with_precision_and_scale(precision, scale)
                    .map_err(|_| Unsure)?,
            ),
            (Kind::Struct { fields, children, .. }, _) => {
                let columns = children
                    .into_iter()
                    .zip(fields.iter())
                    .map(|(c, f)| c.finish(f.data_type()))
                    .collect::<Step<Vec<_>>>()?;
                Arc::new(StructArray::try_new(fields.clone(), columns, nulls).map_err(|_| Unsure)?)
            }
            (Kind::List { offsets, item }, DataType::List(field)) => {
                let values = item.finish(field.data_type())?;
                Arc::new(
                    ListArray::try_new(field.clone(), OffsetBuffer::new(offsets.into()), values, nulls)
                        .map_err(|_| Unsure)?,
                )
            }
            (Kind::Map { offsets, keys, values }, DataType::Map(entries, sorted)) => {
                let DataType::Struct(kv) = entries.data_type() else { return Err(Unsure) };
                let (Some(k), Some(v)) = (kv.first(), kv.get(1)) else { return Err(Unsure) };
                let columns = vec![keys.finish(k.data_type())?, values.finish(v.data_type())?];
                let entries_array = StructArray::try_new(kv.clone(), columns, None).map_err(|_| Unsure)?;
                Arc::new(
                    MapArray::try_new(
                        entries.clone(),
                        OffsetBuffer::new(offsets.into()),
                        entries_array,
                        nulls,
                        *sorted,
                    )
                    .map_err(|_| Unsure)?,
                )
            }
            _ => return Err(Unsure),
        })
    }
}

/// The index of the field named `key`, trying `guess` first. (The length and first byte rule
/// most names out without a call to `memcmp`.)
fn find(fields: &Fields, key: &[u8], guess: usize) -> Option<usize> {
    let is = |i: usize| {
        let name = fields[i].name().as_bytes();
        name.len() == key.len() && name.first() == key.first() && name == key
    };
    if guess < fields.len() && is(guess) {
        return Some(guess);
    }
    (0..fields.len()).find(|&i| is(i))
}
