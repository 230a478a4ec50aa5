//! Postgres Changes filters (PROTOCOL.md 6.2): the text grammar, the checks against the columns
//! of a table, and the evaluation on a row.
//!
//! Three steps, all pure:
//! 1. [`Filter::parse`] reads the client's text (`id=eq.5,status=not.in.(a,"b,c")`) into
//!    [`Condition`]s, exactly as the original splits and unquotes it, with bounds of its own
//!    (length, NUL bytes, at most 100 `in` values).
//! 2. [`Filter::compile`] checks each condition against the table's columns (exists, readable by
//!    the subscriber's role, value of the column's type, operator applicable) and casts the
//!    values into typed comparands: a [`CompiledFilter`].
//! 3. [`CompiledFilter::matches`] evaluates it on a row given as Postgres text values, with SQL's
//!    three-valued logic: a condition holds only when it is true, never when it is NULL.

mod like;
#[cfg(test)]
mod pg_tests;
#[cfg(test)]
mod tests;
mod typed;

use std::fmt;

use regex::{Regex, RegexBuilder};

use super::inspect::inspect_str_list;
use crate::error::{ErrorCode, OperationalError};
use like::LikePattern;
use typed::{ColType, RowValue, Scalar, TextKind};

/// Longest filter text accepted, in bytes.
pub(crate) const MAX_FILTER_BYTES: usize = 16 * 1024;
/// Most values an `in` list may hold (the original's limit).
pub(crate) const MAX_IN_VALUES: usize = 100;
/// Most `match`/`imatch` conditions one filter may hold.
pub(crate) const MAX_REGEX_CONDITIONS: usize = 10;
/// Compiled size limit of one regular expression, and of its lazy DFA cache.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// The operators of the grammar, by their names in the filter text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Is,
    Match,
    Imatch,
    IsDistinct,
}

impl Op {
    /// Every operator.
    pub(crate) const ALL: [Op; 13] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Like,
        Op::Ilike,
        Op::Is,
        Op::Match,
        Op::Imatch,
        Op::IsDistinct,
    ];

    /// Returns the operator's name in the filter text.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    /// Reads an operator name (case-sensitive, as the original).
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of a condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FilterValue {
    /// Every operator but `in`: the text after `op.`, unquoted.
    Text(String),
    /// `in`: the list items; `None` is an unquoted `NULL`.
    List(Vec<Option<String>>),
}

/// One `column=[not.]op.value` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Condition {
    column: String,
    op: Op,
    negate: bool,
    value: FilterValue,
}

#[cfg(test)]
impl Condition {
    /// Builds a condition; the value must be a list exactly when `op` is `in`.
    pub(crate) fn new(
        column: impl Into<String>,
        op: Op,
        negate: bool,
        value: FilterValue,
    ) -> Option<Condition> {
        let list = matches!(value, FilterValue::List(_));
        (list == (op == Op::In)).then(|| Condition {
            column: column.into(),
            op,
            negate,
            value,
        })
    }

    /// The column name, as written (not trimmed, not unquoted).
    pub(crate) fn column(&self) -> &str {
        &self.column
    }

    pub(crate) fn op(&self) -> Op {
        self.op
    }

    /// Whether the condition had the `not.` prefix.
    pub(crate) fn negate(&self) -> bool {
        self.negate
    }

    pub(crate) fn value(&self) -> &FilterValue {
        &self.value
    }
}

/// A parsed filter: the conjunction of one or more conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    conditions: Vec<Condition>,
}

/// Why a filter was refused. The `Display` text is what the client sees in the `system` error
/// (3.5): parse errors as the original words them (``Error parsing `filter` params: ...``), and
/// the checks against the table as the original's trigger words them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FilterError {
    #[error("Error parsing `filter` params: filter is longer than {MAX_FILTER_BYTES} bytes")]
    TooLong,
    #[error("Error parsing `filter` params: filter must not contain NUL bytes")]
    NulByte,
    #[error(
        "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
    )]
    EmptySegment,
    /// A condition that does not fit the grammar or names an unknown operator; holds the
    /// inspected parts, e.g. `["foo", "hey"]`.
    #[error("Error parsing `filter` params: {0}")]
    Unparsable(String),
    #[error("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")]
    InNotParenthesised,
    #[error(
        "Error parsing `filter` params: too many values for `in` filter. Maximum {MAX_IN_VALUES}"
    )]
    TooManyInValues,
    /// Holds the array literal the list makes, `{...}`.
    #[error("Error parsing `filter` params: malformed array literal: \"{0}\"")]
    MalformedInList(String),
    #[error("invalid column for filter {0}")]
    InvalidColumn(String),
    /// The value does not cast to the column's type; holds Postgres's message.
    #[error("{0}")]
    InvalidValue(String),
    #[error("invalid value for is filter: must be null, true, false, or unknown")]
    InvalidIsValue,
    #[error("is {value} filter requires a boolean column, got {type_name}")]
    IsNeedsBoolean { value: String, type_name: String },
    #[error("operator {op} requires a text-compatible column type, got {type_name}")]
    NeedsText { op: Op, type_name: String },
    #[error("operator {op} is not supported on column {column} of type {type_name}")]
    Unsupported {
        op: Op,
        column: String,
        type_name: String,
    },
    #[error("LIKE pattern must not end with escape character")]
    LikeTrailingEscape,
    #[error("invalid regular expression for {op} filter: {reason}")]
    InvalidRegex { op: Op, reason: String },
    #[error("too many match/imatch conditions in filter. Maximum {MAX_REGEX_CONDITIONS}")]
    TooManyRegexConditions,
}

impl OperationalError for FilterError {
    fn code(&self) -> ErrorCode {
        ErrorCode::UnableToSubscribeToPostgres
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl Filter {
    /// Parses a filter. `Ok(None)` for an empty or blank text (no filter).
    pub(crate) fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong);
        }
        if text.contains('\0') {
            return Err(FilterError::NulByte);
        }
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let conditions = split_top_level(text)
            .into_iter()
            .map(parse_condition)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Filter { conditions }))
    }

    /// Builds a filter from conditions; `None` when there are none.
    #[cfg(test)]
    pub(crate) fn from_conditions(conditions: Vec<Condition>) -> Option<Filter> {
        (!conditions.is_empty()).then_some(Filter { conditions })
    }

    #[cfg(test)]
    pub(crate) fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Checks the filter against a table's columns and compiles it for evaluation.
    ///
    /// # Errors
    /// The first condition that fails: unknown or unreadable column, a value that is not of the
    /// column's type, an operator that does not apply to it, a bad pattern.
    pub(crate) fn compile(&self, columns: &[ColumnInfo]) -> Result<CompiledFilter, FilterError> {
        let regexes = self
            .conditions
            .iter()
            .filter(|c| matches!(c.op, Op::Match | Op::Imatch))
            .count();
        if regexes > MAX_REGEX_CONDITIONS {
            return Err(FilterError::TooManyRegexConditions);
        }
        let conditions = self
            .conditions
            .iter()
            .map(|condition| compile_condition(condition, columns))
            .collect::<Result<_, _>>()?;
        Ok(CompiledFilter { conditions })
    }
}

/// Renders the filter back into the grammar; values are quoted where needed, so parsing the
/// text gives the same conditions (for column names without `=`, `,`, parentheses, quotes or
/// surrounding white space).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, condition) in self.conditions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let not = if condition.negate { "not." } else { "" };
            write!(f, "{}={not}{}.", condition.column, condition.op)?;
            match &condition.value {
                FilterValue::Text(text) if is_plain(text) => f.write_str(text)?,
                FilterValue::Text(text) => write_quoted(f, text)?,
                FilterValue::List(items) => {
                    f.write_str("(")?;
                    for (j, item) in items.iter().enumerate() {
                        if j > 0 {
                            f.write_str(",")?;
                        }
                        match item {
                            Some(text) => write_quoted(f, text)?,
                            None => f.write_str("NULL")?,
                        }
                    }
                    f.write_str(")")?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a value survives the grammar unquoted.
fn is_plain(text: &str) -> bool {
    !text.contains([',', '(', ')', '"', '\\']) && text.trim_end() == text
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Splits at commas outside parentheses and double quotes, as the original does: a quote opens
/// only right after `.`, `(` or `,`, a backslash inside quotes keeps the next byte, and a `)`
/// never takes the depth below zero.
fn split_top_level(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let (mut depth, mut quoted, mut prev, mut start, mut i) = (0usize, false, 0u8, 0usize, 0usize);
    while let Some(&c) = bytes.get(i) {
        if quoted {
            match c {
                b'\\' if i + 1 < bytes.len() => {
                    prev = bytes[i + 1];
                    i += 2;
                    continue;
                }
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match c {
                b'"' if matches!(prev, b'.' | b'(' | b',') => quoted = true,
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    // Commas are ASCII, so both slices are on character boundaries.
                    segments.push(&text[start..i]);
                    start = i + 1;
                    prev = 0;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        prev = c;
        i += 1;
    }
    segments.push(&text[start..]);
    segments
}

fn parse_condition(segment: &str) -> Result<Condition, FilterError> {
    let segment = segment.trim();
    if segment.is_empty() {
        return Err(FilterError::EmptySegment);
    }
    let Some((column, rest)) = segment.split_once('=') else {
        return Err(FilterError::Unparsable(inspect_str_list(&[segment])));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(op_value) => (true, op_value),
        None => (false, rest),
    };
    let Some((name, value)) = op_value.split_once('.') else {
        return Err(FilterError::Unparsable(inspect_str_list(&[op_value])));
    };
    let Some(op) = Op::from_name(name) else {
        return Err(FilterError::Unparsable(inspect_str_list(&[name, value])));
    };
    let value = match op {
        Op::In => FilterValue::List(parse_in_list(value)?),
        _ => FilterValue::Text(unquote(value)),
    };
    Ok(Condition {
        column: column.to_owned(),
        op,
        negate,
        value,
    })
}

/// A value in double quotes loses them and its backslash escapes, when the closing quote ends
/// the value; anything else is taken literally.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(next) => out.push(next),
                None => return value.to_owned(),
            },
            b'"' if bytes.len() == 0 => {
                // Only ASCII bytes were dropped, so this is still UTF-8.
                return String::from_utf8(out).unwrap_or_else(|_| value.to_owned());
            }
            b'"' => return value.to_owned(),
            b => out.push(b),
        }
    }
    value.to_owned()
}

/// White space Postgres's array input skips.
fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{0B}' | '\u{0C}')
}

/// Reads `(a, "b,c", NULL)` as Postgres reads the array literal `{a, "b,c", NULL}`: items split
/// at commas outside quotes, quotes and backslashes removed, white space around unquoted text
/// dropped, an unquoted `NULL` (any case) is a null item. Stops at the 101st item.
fn parse_in_list(value: &str) -> Result<Vec<Option<String>>, FilterError> {
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or(FilterError::InNotParenthesised)?;
    let malformed = || FilterError::MalformedInList(format!("{{{inner}}}"));
    let mut items = Vec::new();
    if inner.chars().all(is_array_space) {
        return Ok(items);
    }
    let mut chars = inner.chars();
    loop {
        let mut item = String::new();
        let mut literal = false; // quoted or escaped text seen: never NULL, never empty
        let mut in_quotes = false;
        let mut keep = 0; // length of `item` up to its last character that must stay
        let mut ended = true; // the input ran out (rather than a comma)
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    item.push(chars.next().ok_or_else(malformed)?);
                    literal = true;
                    keep = item.len();
                }
                '"' => {
                    in_quotes = !in_quotes;
                    literal = true;
                    keep = item.len();
                }
                c if in_quotes => {
                    item.push(c);
                    keep = item.len();
                }
                ',' => {
                    ended = false;
                    break;
                }
                '{' | '}' => return Err(malformed()),
                c if is_array_space(c) => {
                    if !item.is_empty() {
                        item.push(c);
                    }
                }
                c => {
                    item.push(c);
                    keep = item.len();
                }
            }
        }
        if in_quotes {
            return Err(malformed());
        }
        item.truncate(keep);
        if item.is_empty() && !literal {
            return Err(malformed());
        }
        let null = !literal && item.eq_ignore_ascii_case("null");
        items.push((!null).then_some(item));
        if items.len() > MAX_IN_VALUES {
            return Err(FilterError::TooManyInValues);
        }
        if ended {
            return Ok(items);
        }
    }
}

/// A column of the table a filter is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    /// `pg_type.typname`: `int4`, `text`, `_int4` for an `int4[]`, ...
    pub(crate) type_name: String,
    /// Whether the subscriber's role may `SELECT` the column.
    pub(crate) selectable: bool,
}

/// A row's value for a column, in Postgres's text output form as pgoutput sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnValue<'a> {
    Null,
    Text(&'a str),
}

/// What one compiled condition tests, before `not.`.
#[derive(Clone, Debug)]
enum Test {
    Compare(Op, Scalar),
    In {
        values: Box<[Scalar]>,
        has_null: bool,
    },
    Distinct(Scalar),
    IsNull,
    IsTrue,
    IsFalse,
    IsUnknown,
    Like(LikePattern),
    Regex(Regex),
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    column: Box<str>,
    /// Position of the column in the `columns` given to [`Filter::compile`].
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by matches_at, used by the tests")
    )]
    index: usize,
    ty: ColType,
    negate: bool,
    test: Test,
}

/// A filter checked against a table, ready to evaluate rows.
#[derive(Clone, Debug)]
pub(crate) struct CompiledFilter {
    conditions: Box<[CompiledCondition]>,
}

impl CompiledFilter {
    /// Whether the row passes every condition. `row` gives a column's value by name; `None`
    /// (the row lacks the column, e.g. an old image with only the key) fails the row.
    pub(crate) fn matches<'r>(&self, row: impl Fn(&str) -> Option<ColumnValue<'r>>) -> bool {
        self.conditions
            .iter()
            .all(|c| row(&c.column).is_some_and(|value| c.holds(value)))
    }

    /// Like [`matches`](Self::matches), with columns given by their position in the `columns`
    /// slice the filter was compiled with.
    #[cfg(test)]
    pub(crate) fn matches_at<'r>(&self, row: impl Fn(usize) -> Option<ColumnValue<'r>>) -> bool {
        self.conditions
            .iter()
            .all(|c| row(c.index).is_some_and(|value| c.holds(value)))
    }

    /// The names of the columns the filter reads, in condition order (with repeats).
    #[cfg(test)]
    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| &*c.column)
    }
}

impl CompiledCondition {
    /// True only when the test is true after `not.`: NULL (unknown) never holds.
    fn holds(&self, value: ColumnValue<'_>) -> bool {
        self.evaluate(value) == Some(!self.negate)
    }

    /// SQL's three-valued result: `None` is NULL.
    fn evaluate(&self, value: ColumnValue<'_>) -> Option<bool> {
        let text = match (value, &self.test) {
            (ColumnValue::Null, Test::IsNull | Test::IsUnknown | Test::Distinct(_)) => {
                return Some(true);
            }
            (ColumnValue::Null, Test::IsTrue | Test::IsFalse) => return Some(false),
            // `NULL = any('{}')` is false, not NULL.
            (ColumnValue::Null, Test::In { values, has_null })
                if values.is_empty() && !has_null =>
            {
                return Some(false);
            }
            (ColumnValue::Null, _) => return None,
            (ColumnValue::Text(text), _) => text,
        };
        match &self.test {
            Test::IsNull => Some(false),
            Test::IsTrue | Test::IsFalse | Test::IsUnknown => {
                let RowValue::Bool(b) = RowValue::parse(self.ty, text)? else {
                    return None;
                };
                Some(match self.test {
                    Test::IsTrue => b,
                    Test::IsFalse => !b,
                    _ => false,
                })
            }
            Test::Like(pattern) => Some(pattern.matches(self.operand(text))),
            Test::Regex(regex) => Some(regex.is_match(self.operand(text))),
            Test::Distinct(key) => Some(!RowValue::parse(self.ty, text)?.equals(key)),
            Test::In { values, has_null } => {
                let row = RowValue::parse(self.ty, text)?;
                if values.iter().any(|key| row.equals(key)) {
                    Some(true)
                } else if *has_null {
                    None
                } else {
                    Some(false)
                }
            }
            Test::Compare(op, key) => {
                let row = RowValue::parse(self.ty, text)?;
                match op {
                    Op::Eq => Some(row.equals(key)),
                    Op::Neq => Some(!row.equals(key)),
                    _ => {
                        let ordering = row.compare(key)?;
                        Some(match op {
                            Op::Lt => ordering.is_lt(),
                            Op::Lte => ordering.is_le(),
                            Op::Gt => ordering.is_gt(),
                            _ => ordering.is_ge(),
                        })
                    }
                }
            }
        }
    }

    /// The text a pattern sees.
    fn operand<'t>(&self, text: &'t str) -> &'t str {
        match self.ty {
            ColType::Text(kind) => typed::text_operand(kind, text),
            _ => text,
        }
    }
}

fn compile_condition(
    condition: &Condition,
    columns: &[ColumnInfo],
) -> Result<CompiledCondition, FilterError> {
    let (index, column) = columns
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == condition.column && c.selectable)
        .ok_or_else(|| FilterError::InvalidColumn(condition.column.clone()))?;
    let ty = ColType::from_type_name(&column.type_name);
    let type_name = || typed::display_type_name(&column.type_name);
    let cast = |text: &str| typed::cast(ty, text).map_err(FilterError::InvalidValue);
    let op = condition.op;
    let test = match (&condition.value, op) {
        (FilterValue::List(items), Op::In) => {
            let mut values = Vec::with_capacity(items.len());
            let mut has_null = false;
            for item in items {
                match item {
                    Some(text) => values.push(cast(text)?),
                    None => has_null = true,
                }
            }
            Test::In {
                values: values.into(),
                has_null,
            }
        }
        (FilterValue::Text(value), Op::Is) => match value.as_str() {
            "null" => Test::IsNull,
            "true" | "false" | "unknown" if ty != ColType::Bool => {
                return Err(FilterError::IsNeedsBoolean {
                    value: value.clone(),
                    type_name: type_name(),
                });
            }
            "true" => Test::IsTrue,
            "false" => Test::IsFalse,
            "unknown" => Test::IsUnknown,
            _ => return Err(FilterError::InvalidIsValue),
        },
        (FilterValue::Text(pattern), Op::Like | Op::Ilike) => {
            let pattern = pattern_operand(ty, pattern);
            if !ty.is_text() {
                return Err(FilterError::NeedsText {
                    op,
                    type_name: type_name(),
                });
            }
            let fold = op == Op::Ilike || ty == ColType::Text(TextKind::Citext);
            Test::Like(
                LikePattern::compile(pattern, fold).map_err(|_| FilterError::LikeTrailingEscape)?,
            )
        }
        (FilterValue::Text(pattern), Op::Match | Op::Imatch) => {
            let pattern = pattern_operand(ty, pattern);
            if !ty.is_text() {
                return Err(FilterError::NeedsText {
                    op,
                    type_name: type_name(),
                });
            }
            let fold = op == Op::Imatch || ty == ColType::Text(TextKind::Citext);
            Test::Regex(compile_regex(op, pattern, fold)?)
        }
        (FilterValue::Text(value), Op::IsDistinct) => Test::Distinct(cast(value)?),
        (FilterValue::Text(value), Op::Eq | Op::Neq) => Test::Compare(op, cast(value)?),
        (FilterValue::Text(value), Op::Lt | Op::Lte | Op::Gt | Op::Gte) if ty.is_ordered() => {
            Test::Compare(op, cast(value)?)
        }
        // Ordering on an unordered type; a list for another operator or text for `in` cannot
        // be built (`Condition::new` and the parser refuse them).
        _ => {
            return Err(FilterError::Unsupported {
                op,
                column: condition.column.clone(),
                type_name: type_name(),
            });
        }
    };
    Ok(CompiledCondition {
        column: condition.column.as_str().into(),
        index,
        ty,
        negate: condition.negate,
        test,
    })
}

/// The pattern as the original applies it: cast to the column's type, so a `char(n)` column's
/// pattern loses its trailing spaces.
fn pattern_operand(ty: ColType, pattern: &str) -> &str {
    match ty {
        ColType::Text(kind) => typed::text_operand(kind, pattern),
        _ => pattern,
    }
}

/// Compiles a `match`/`imatch` pattern: unanchored search, `.` also matches a newline (as in
/// Postgres), bounded compiled size.
fn compile_regex(op: Op, pattern: &str, case_insensitive: bool) -> Result<Regex, FilterError> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| FilterError::InvalidRegex {
            op,
            reason: match error {
                regex::Error::CompiledTooBig(limit) => {
                    format!("pattern too complex (compiled size over {limit} bytes)")
                }
                other => {
                    let text = other.to_string();
                    text.lines()
                        .find_map(|line| line.strip_prefix("error: "))
                        .unwrap_or("syntax error")
                        .to_string()
                }
            },
        })
}
