//! Names and limits every crate shares, each defined once: the hidden columns the SQL stage adds
//! to every row, the headers of a dead letter, and the default record size limit.

/// The hidden columns of every row the SQL sees: the change's operation (`c`, `u`, `d`, `r`),
/// its Kafka key as text, and its time. `SELECT *` leaves them out; a query names them to use
/// them, and a sink reads them from the output when they are there (`_key` as the message key).
pub mod column {
    /// The change's operation: `c` create, `u` update, `d` delete, `r` snapshot read.
    pub const OP: &str = "_op";
    /// The change's Kafka key, as text.
    pub const KEY: &str = "_key";
    /// The change's time (milliseconds, UTC).
    pub const TS: &str = "_ts";
    /// All three, in the order the SQL stage adds them.
    pub const HIDDEN: [&str; 3] = [OP, KEY, TS];
}

/// The headers of a dead letter: where it came from, why it was refused, and whether its payload
/// is whole. `sluice dlq show` and `replay` read them back.
pub mod dlq_header {
    /// The flow that refused it.
    pub const FLOW: &str = "sluice.flow";
    /// The stage that refused it: `source`, `transform` or `sink`.
    pub const STAGE: &str = "sluice.stage";
    /// Why.
    pub const ERROR: &str = "sluice.error";
    /// How many times it was tried (a replayed letter counts on).
    pub const ATTEMPTS: &str = "sluice.attempts";
    /// When it was dead-lettered (milliseconds since the epoch).
    pub const TS_MS: &str = "sluice.ts_ms";
    /// The topic of the message it was, when it was one.
    pub const TOPIC: &str = "sluice.topic";
    /// That message's partition.
    pub const PARTITION: &str = "sluice.partition";
    /// That message's offset.
    pub const OFFSET: &str = "sluice.offset";
    /// Where in the source it was read, for input a source could not parse (a file and line).
    pub const SOURCE: &str = "sluice.source";
    /// `true` when the payload was cut to fit the topic: such a letter cannot be replayed.
    pub const TRUNCATED: &str = "sluice.truncated";
    /// The size of the payload before it was cut.
    pub const ORIGINAL_BYTES: &str = "sluice.original_bytes";
}

/// The default record size limit: under librdkafka's and Kafka's own default limits
/// (1,000,000 and 1,048,588 bytes) with room for the record's headers and framing, so a record
/// sluice accepts is one every default cluster takes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000 - 24 * 1024;
