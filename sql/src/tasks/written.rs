//! Tasks as written in config: what each task type, operator, rule and action is, and the
//! fields a task takes. [`super::compile`] turns them into SQL.

use serde::Deserialize;

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Output one column (renamed, cast).
    Map,
    /// Output every input column.
    MapAll,
    /// Concatenate columns.
    Merge,
    /// Two operands, one operator.
    Arithmetic,
    /// Mask characters.
    Mask,
    /// Cut to a length.
    Truncate,
    /// Keep matching rows.
    Filter,
    /// Check a rule.
    Validate,
}

/// Operators of `filter` and `arithmetic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `=`
    EqualTo,
    /// `<>`
    NotEqualTo,
    /// `<`
    LessThan,
    /// `<=`
    LessThanOrEqualTo,
    /// `>`
    GreaterThan,
    /// `>=`
    GreaterThanOrEqualTo,
    /// `BETWEEN values[0] AND values[1]`
    Between,
    /// text contains `value`
    Contains,
    /// `+`
    Add,
    /// `-`
    Subtract,
    /// `*`
    Multiply,
    /// `/`
    Divide,
}

/// Validation rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Not null.
    NonNull,
    /// Not zero.
    NonZero,
    /// Zero or more.
    NonNegative,
    /// A number, or text that reads as one.
    Numeric,
    /// Within `min`..=`max` (either may be left out).
    Range,
    /// Matches the regular expression `pattern`.
    Regex,
    /// The SQL `predicate` is true.
    Sql,
}

/// What a failed validation does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Leave the row out, counted as filtered.
    Drop,
    /// Send the row to the DLQ with the rule's name as the reason.
    #[default]
    Dlq,
    /// Fail the flow.
    Fail,
}

/// Which characters `mask` hides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskMode {
    /// Every character.
    #[default]
    All,
    /// The first `n`.
    First,
    /// The last `n`.
    Last,
}

/// One task, as written in config (the fields a task type does not use must be left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// What the task does.
    #[serde(rename = "type")]
    pub kind: TaskType,
    /// The column read (map, mask, truncate, filter, validate).
    pub source: Option<String>,
    /// The columns read (merge, arithmetic).
    #[serde(default)]
    pub sources: Vec<String>,
    /// The output column written (map, merge, arithmetic).
    pub target: Option<String>,
    /// map: the type to cast to (bool, int32, int64, float64, string, timestamp, date).
    pub cast: Option<String>,
    /// merge: the text between values (default none).
    pub separator: Option<String>,
    /// merge: a layout such as `"{last}, {first}"` instead of a separator.
    pub format: Option<String>,
    /// filter, arithmetic: the operator.
    pub op: Option<Op>,
    /// filter, arithmetic: the operand.
    pub value: Option<serde_json::Value>,
    /// filter `between`: the two bounds.
    #[serde(default)]
    pub values: Vec<serde_json::Value>,
    /// mask: which characters.
    pub mode: Option<MaskMode>,
    /// mask: how many characters (first / last).
    pub n: Option<u32>,
    /// mask: the character shown instead (default `*`).
    pub char: Option<String>,
    /// truncate: the most characters kept.
    pub length: Option<u32>,
    /// validate: the rule.
    pub rule: Option<Rule>,
    /// validate `range`: the smallest value allowed.
    pub min: Option<serde_json::Value>,
    /// validate `range`: the largest value allowed.
    pub max: Option<serde_json::Value>,
    /// validate `regex`: the pattern.
    pub pattern: Option<String>,
    /// validate `sql`: a boolean SQL expression over the input columns.
    pub predicate: Option<String>,
    /// validate: what a failing row does (default `dlq`).
    pub action: Option<Action>,
    /// validate: the rule's name in DLQ reasons and errors (default from the rule and column).
    pub name: Option<String>,
}
