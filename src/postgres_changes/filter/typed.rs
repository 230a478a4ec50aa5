//! Column types a filter understands, the typed comparands compiled from filter values (the
//! cast of PROTOCOL.md 6.2), and the parsing of a row's text values at evaluation.
//!
//! Row values arrive in Postgres's text output form (what pgoutput sends), with `DateStyle`
//! ISO. Parsing them allocates nothing except for `json`/`jsonb` and for case-folding non-ASCII
//! `citext`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

/// Integer column types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IntKind {
    Int2,
    Int4,
    Int8,
    Oid,
}

/// Text-like column types: all compare byte-wise (C collation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TextKind {
    /// `text`, `varchar`.
    Text,
    /// `bpchar` (`char(n)`): trailing spaces do not count.
    Bpchar,
    /// `name`: values longer than 63 bytes are cut, as Postgres does on input.
    Name,
    /// `citext`: compared, matched and searched ignoring case.
    Citext,
}

/// What a filter knows about a column's type (from `pg_type.typname`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ColType {
    Int(IntKind),
    Float4,
    Float8,
    Numeric,
    Bool,
    Text(TextKind),
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    /// `json` and `jsonb`: equality of the parsed values only.
    Json,
    /// Every other type (enums, arrays, domains, ...): equality of the exact text form only.
    Other,
}

impl ColType {
    pub(super) fn from_type_name(type_name: &str) -> ColType {
        match type_name {
            "int2" => ColType::Int(IntKind::Int2),
            "int4" => ColType::Int(IntKind::Int4),
            "int8" => ColType::Int(IntKind::Int8),
            "oid" => ColType::Int(IntKind::Oid),
            "float4" => ColType::Float4,
            "float8" => ColType::Float8,
            "numeric" => ColType::Numeric,
            "bool" => ColType::Bool,
            "text" | "varchar" => ColType::Text(TextKind::Text),
            "bpchar" => ColType::Text(TextKind::Bpchar),
            "name" => ColType::Text(TextKind::Name),
            "citext" => ColType::Text(TextKind::Citext),
            "uuid" => ColType::Uuid,
            "date" => ColType::Date,
            "timestamp" => ColType::Timestamp,
            "timestamptz" => ColType::Timestamptz,
            "time" => ColType::Time,
            "json" | "jsonb" => ColType::Json,
            _ => ColType::Other,
        }
    }

    pub(super) fn is_text(self) -> bool {
        matches!(self, ColType::Text(_))
    }

    /// Whether `lt`..`gte` apply.
    pub(super) fn is_ordered(self) -> bool {
        !matches!(self, ColType::Json | ColType::Other)
    }

    /// The type name Postgres uses in `invalid input syntax for type ...` messages.
    fn input_name(self) -> &'static str {
        match self {
            ColType::Int(IntKind::Int2) => "smallint",
            ColType::Int(IntKind::Int4) => "integer",
            ColType::Int(IntKind::Int8) => "bigint",
            ColType::Int(IntKind::Oid) => "oid",
            ColType::Float4 => "real",
            ColType::Float8 => "double precision",
            ColType::Numeric => "numeric",
            ColType::Bool => "boolean",
            ColType::Text(_) | ColType::Other => "text",
            ColType::Uuid => "uuid",
            ColType::Date => "date",
            ColType::Timestamp => "timestamp",
            ColType::Timestamptz => "timestamp with time zone",
            ColType::Time => "time",
            ColType::Json => "json",
        }
    }
}

/// The name Postgres prints for a type (`regtype` text), for error messages.
pub(super) fn display_type_name(type_name: &str) -> String {
    if let Some(element) = type_name.strip_prefix('_') {
        return format!("{}[]", display_type_name(element));
    }
    match type_name {
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "varchar" => "character varying",
        "bpchar" => "character",
        "varbit" => "bit varying",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "time" => "time without time zone",
        "timetz" => "time with time zone",
        other => other,
    }
    .to_string()
}

/// A filter value cast to its column's type.
#[derive(Clone, Debug)]
pub(super) enum Scalar {
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    Bool(bool),
    /// Text-like and other types; `citext` stored lower-cased, `bpchar` without trailing spaces.
    Text(Box<str>),
    Uuid(u128),
    /// Days for `date`, microseconds for the others; infinities are the extremes.
    Instant(i128),
    Json(Value),
}

/// Casts a filter value to the column's type, as `'value'::type` would; the error is the
/// message Postgres gives.
pub(super) fn cast(ty: ColType, text: &str) -> Result<Scalar, String> {
    let syntax = || {
        format!(
            "invalid input syntax for type {}: \"{text}\"",
            ty.input_name()
        )
    };
    let range = || {
        format!(
            "value \"{text}\" is out of range for type {}",
            ty.input_name()
        )
    };
    let field_range = || format!("date/time field value out of range: \"{text}\"");
    let dt = |e: DtError| match e {
        DtError::Syntax => syntax(),
        DtError::Range => field_range(),
    };
    Ok(match ty {
        ColType::Int(kind) => Scalar::Int(cast_int(kind, text).map_err(|e| match e {
            IntError::Syntax => syntax(),
            IntError::Range => range(),
        })?),
        ColType::Float4 | ColType::Float8 => {
            let t = trim_pg(text);
            let value = parse_float(ty, t).ok_or_else(syntax)?;
            let literal_infinity = t
                .trim_start_matches(['+', '-'])
                .to_ascii_lowercase()
                .starts_with("inf");
            let underflow = value == 0.0 && mantissa_has_nonzero_digit(t);
            if (value.is_infinite() && !literal_infinity) || underflow {
                return Err(format!(
                    "\"{text}\" is out of range for type {}",
                    ty.input_name()
                ));
            }
            Scalar::Float(value)
        }
        ColType::Numeric => {
            Scalar::Numeric(Numeric::from_view(Decimal::parse(text).ok_or_else(syntax)?))
        }
        ColType::Bool => Scalar::Bool(parse_bool(text).ok_or_else(syntax)?),
        ColType::Text(TextKind::Text) | ColType::Other => Scalar::Text(text.into()),
        ColType::Text(TextKind::Bpchar) => Scalar::Text(text.trim_end_matches(' ').into()),
        ColType::Text(TextKind::Name) => {
            let mut end = text.len().min(63);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Scalar::Text(text[..end].into())
        }
        ColType::Text(TextKind::Citext) => Scalar::Text(text.to_lowercase().into()),
        ColType::Uuid => Scalar::Uuid(parse_uuid(text).ok_or_else(syntax)?),
        ColType::Date => Scalar::Instant(parse_date(text).map_err(dt)?),
        ColType::Timestamp => Scalar::Instant(parse_timestamp(text, false).map_err(dt)?),
        ColType::Timestamptz => Scalar::Instant(parse_timestamp(text, true).map_err(dt)?),
        ColType::Time => Scalar::Instant(parse_time(text).map_err(dt)?),
        ColType::Json => Scalar::Json(
            serde_json::from_str(text)
                .map_err(|_| "invalid input syntax for type json".to_string())?,
        ),
    })
}

/// A row's value parsed for comparison with [`Scalar`]s of the same column type.
#[derive(Debug)]
pub(super) enum RowValue<'a> {
    Int(i64),
    Float(f64),
    Numeric(Decimal<'a>),
    Bool(bool),
    /// Text-like values; a non-ASCII `citext` value comes lower-cased (kind `Text`).
    Text(TextKind, Cow<'a, str>),
    Other(&'a str),
    Uuid(u128),
    Instant(i128),
    Json(Value),
}

impl<'a> RowValue<'a> {
    /// Parses a row value's text form; `None` when it is not of the type (the row then does
    /// not match).
    pub(super) fn parse(ty: ColType, text: &'a str) -> Option<RowValue<'a>> {
        Some(match ty {
            ColType::Int(_) => RowValue::Int(text.parse().ok()?),
            ColType::Float4 | ColType::Float8 => RowValue::Float(parse_float(ty, text)?),
            ColType::Numeric => RowValue::Numeric(Decimal::parse(text)?),
            ColType::Bool => RowValue::Bool(parse_bool(text)?),
            ColType::Text(TextKind::Citext) if !text.is_ascii() => {
                RowValue::Text(TextKind::Text, Cow::Owned(text.to_lowercase()))
            }
            ColType::Text(kind) => RowValue::Text(kind, Cow::Borrowed(text_operand(kind, text))),
            ColType::Other => RowValue::Other(text),
            ColType::Uuid => RowValue::Uuid(parse_uuid(text)?),
            ColType::Date => RowValue::Instant(parse_date(text).ok()?),
            ColType::Timestamp => RowValue::Instant(parse_timestamp(text, false).ok()?),
            ColType::Timestamptz => RowValue::Instant(parse_timestamp(text, true).ok()?),
            ColType::Time => RowValue::Instant(parse_time(text).ok()?),
            ColType::Json => RowValue::Json(serde_json::from_str(text).ok()?),
        })
    }

    /// `self = key`.
    pub(super) fn equals(&self, key: &Scalar) -> bool {
        match (self, key) {
            (RowValue::Json(a), Scalar::Json(b)) => json_equal(a, b),
            (RowValue::Other(a), Scalar::Text(b)) => *a == &**b,
            _ => self.compare(key) == Some(Ordering::Equal),
        }
    }

    /// Orders `self` against `key`; `None` for unordered types.
    pub(super) fn compare(&self, key: &Scalar) -> Option<Ordering> {
        Some(match (self, key) {
            (RowValue::Int(a), Scalar::Int(b)) => a.cmp(b),
            (RowValue::Float(a), Scalar::Float(b)) => compare_floats(*a, *b),
            (RowValue::Numeric(a), Scalar::Numeric(b)) => a.cmp(&b.view()),
            (RowValue::Bool(a), Scalar::Bool(b)) => a.cmp(b),
            // ASCII only (see `parse`); the key is lower-cased already.
            (RowValue::Text(TextKind::Citext, a), Scalar::Text(b)) => {
                a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes())
            }
            (RowValue::Text(_, a), Scalar::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (RowValue::Uuid(a), Scalar::Uuid(b)) => a.cmp(b),
            (RowValue::Instant(a), Scalar::Instant(b)) => a.cmp(b),
            _ => return None,
        })
    }
}

/// The text a LIKE pattern or a regex sees: `char(n)` without its padding.
pub(super) fn text_operand(kind: TextKind, text: &str) -> &str {
    match kind {
        TextKind::Bpchar => text.trim_end_matches(' '),
        _ => text,
    }
}

/// Postgres's float order: NaN equals NaN and sorts above everything; -0 equals 0.
fn compare_floats(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Structural JSON equality: objects regardless of key order, numbers by value.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Trims the characters Postgres's input functions skip (`isspace`).
fn trim_pg(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}'])
}

enum IntError {
    Syntax,
    Range,
}

fn cast_int(kind: IntKind, text: &str) -> Result<i64, IntError> {
    let t = trim_pg(text);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntError::Syntax);
    }
    let magnitude: i128 = match digits.trim_start_matches('0') {
        d if d.len() > 20 => return Err(IntError::Range),
        "" => 0,
        d => d.parse().map_err(|_| IntError::Range)?,
    };
    let value = if negative { -magnitude } else { magnitude };
    let (min, max): (i128, i128) = match kind {
        IntKind::Int2 => (i16::MIN.into(), i16::MAX.into()),
        IntKind::Int4 => (i32::MIN.into(), i32::MAX.into()),
        IntKind::Int8 => (i64::MIN.into(), i64::MAX.into()),
        IntKind::Oid => (i32::MIN.into(), u32::MAX.into()),
    };
    if value < min || value > max {
        return Err(IntError::Range);
    }
    // oid input wraps negative values around, like Postgres's `oidin`.
    let value = match (kind, value < 0) {
        (IntKind::Oid, true) => value + (1i128 << 32),
        _ => value,
    };
    i64::try_from(value).map_err(|_| IntError::Range)
}

fn parse_float(ty: ColType, text: &str) -> Option<f64> {
    let t = trim_pg(text);
    match ty {
        ColType::Float4 => t.parse::<f32>().ok().map(f64::from),
        _ => t.parse::<f64>().ok(),
    }
}

/// Whether a float literal's mantissa has a non-zero digit (so parsing to 0 means underflow).
fn mantissa_has_nonzero_digit(t: &str) -> bool {
    t.bytes()
        .take_while(|b| !matches!(b, b'e' | b'E'))
        .any(|b| matches!(b, b'1'..=b'9'))
}

/// `boolin`: `t`/`true`/`y`/`yes`/`on`/`1` and their opposites, any case, unique prefixes.
fn parse_bool(text: &str) -> Option<bool> {
    let t = trim_pg(text);
    let lower = t.as_bytes();
    let is_prefix = |word: &str, min: usize| {
        lower.len() >= min
            && lower.len() <= word.len()
            && word.as_bytes()[..lower.len()].eq_ignore_ascii_case(lower)
    };
    if is_prefix("true", 1) || is_prefix("yes", 1) || is_prefix("on", 2) || t == "1" {
        Some(true)
    } else if is_prefix("false", 1) || is_prefix("no", 1) || is_prefix("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// `uuid_in`: 32 hex digits in any case, optionally in braces, with a hyphen allowed after
/// any group of four digits.
fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    let bytes = match bytes {
        [b'{', inner @ .., b'}'] => inner,
        _ => bytes,
    };
    let (mut value, mut digits, mut hyphen) = (0u128, 0u32, false);
    for &b in bytes {
        if b == b'-' {
            if hyphen || digits == 0 || digits % 4 != 0 || digits == 32 {
                return None;
            }
            hyphen = true;
            continue;
        }
        let digit = char::from(b).to_digit(16)?;
        if digits == 32 {
            return None;
        }
        value = value << 4 | u128::from(digit);
        digits += 1;
        hyphen = false;
    }
    (digits == 32 && !hyphen).then_some(value)
}

/// An exact decimal read from numeric text, borrowing its digits.
///
/// A finite value is `0.d1d2d3... × 10^exp` where the digits are `head` followed by `tail`,
/// without leading or trailing zeros (none at all for zero).
#[derive(Clone, Copy, Debug)]
pub(super) enum Decimal<'a> {
    NegInfinity,
    Finite {
        negative: bool,
        exp: i64,
        head: &'a [u8],
        tail: &'a [u8],
    },
    Infinity,
    NaN,
}

impl<'a> Decimal<'a> {
    /// Parses `numeric` text: sign, digits with an optional point, an optional exponent, or
    /// `NaN` / `Infinity` / `inf` (any case).
    pub(super) fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let t = trim_pg(text);
        let (negative, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        if body.eq_ignore_ascii_case("nan") && body.len() == t.len() {
            return Some(Decimal::NaN);
        }
        if body.eq_ignore_ascii_case("infinity") || body.eq_ignore_ascii_case("inf") {
            return Some(if negative {
                Decimal::NegInfinity
            } else {
                Decimal::Infinity
            });
        }
        let bytes = body.as_bytes();
        let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let int = &bytes[..int_len];
        let mut rest = &bytes[int_len..];
        let mut frac: &[u8] = &[];
        if let Some((b'.', after)) = rest.split_first() {
            let frac_len = after.iter().take_while(|b| b.is_ascii_digit()).count();
            frac = &after[..frac_len];
            rest = &after[frac_len..];
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if let Some((b'e' | b'E', after)) = rest.split_first() {
            let (exp_negative, digits) = match after.split_first() {
                Some((b'-', d)) => (true, d),
                Some((b'+', d)) => (false, d),
                _ => (false, after),
            };
            if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let magnitude = digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
            exp = if exp_negative { -magnitude } else { magnitude };
            rest = &[];
        }
        if !rest.is_empty() {
            return None;
        }
        let int = strip_leading_zeros(int);
        let frac = strip_trailing_zeros(frac);
        let (head, tail, point) = if !int.is_empty() {
            // exp is bounded by 10^6 and the text by its length, so this cannot overflow.
            let point = int.len() as i64;
            if frac.is_empty() {
                (strip_trailing_zeros(int), &[][..], point)
            } else {
                (int, frac, point)
            }
        } else {
            let digits = strip_leading_zeros(frac);
            (&[][..], digits, -((frac.len() - digits.len()) as i64))
        };
        let zero = head.is_empty() && tail.is_empty();
        Some(Decimal::Finite {
            negative: negative && !zero,
            exp: if zero { 0 } else { point + exp },
            head,
            tail,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }

    /// Postgres's numeric order: -Infinity < finite < Infinity < NaN, and NaN equals NaN.
    pub(super) fn cmp(&self, other: &Decimal<'_>) -> Ordering {
        match (self, other) {
            (
                Decimal::Finite {
                    negative: an,
                    exp: ae,
                    head: ah,
                    tail: at,
                },
                Decimal::Finite {
                    negative: bn,
                    exp: be,
                    head: bh,
                    tail: bt,
                },
            ) => {
                let sign = |negative: bool, head: &[u8], tail: &[u8]| -> i8 {
                    match (head.is_empty() && tail.is_empty(), negative) {
                        (true, _) => 0,
                        (false, true) => -1,
                        (false, false) => 1,
                    }
                };
                let (sa, sb) = (sign(*an, ah, at), sign(*bn, bh, bt));
                if sa != sb || sa == 0 {
                    return sa.cmp(&sb);
                }
                let magnitude = ae
                    .cmp(be)
                    .then_with(|| ah.iter().chain(at.iter()).cmp(bh.iter().chain(bt.iter())));
                if sa < 0 {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn strip_leading_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&d| d == b'0').count();
    &digits[zeros..]
}

fn strip_trailing_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().rev().take_while(|&&d| d == b'0').count();
    &digits[..digits.len() - zeros]
}

/// An owned [`Decimal`] (a compiled `numeric` comparand).
#[derive(Clone, Debug)]
pub(super) enum Numeric {
    NegInfinity,
    Finite {
        negative: bool,
        exp: i64,
        digits: Box<[u8]>,
    },
    Infinity,
    NaN,
}

impl Numeric {
    fn from_view(d: Decimal<'_>) -> Numeric {
        match d {
            Decimal::NegInfinity => Numeric::NegInfinity,
            Decimal::Infinity => Numeric::Infinity,
            Decimal::NaN => Numeric::NaN,
            Decimal::Finite {
                negative,
                exp,
                head,
                tail,
            } => Numeric::Finite {
                negative,
                exp,
                digits: [head, tail].concat().into(),
            },
        }
    }

    fn view(&self) -> Decimal<'_> {
        match self {
            Numeric::NegInfinity => Decimal::NegInfinity,
            Numeric::Infinity => Decimal::Infinity,
            Numeric::NaN => Decimal::NaN,
            Numeric::Finite {
                negative,
                exp,
                digits,
            } => Decimal::Finite {
                negative: *negative,
                exp: *exp,
                head: digits,
                tail: &[],
            },
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum DtError {
    Syntax,
    Range,
}

const MICROS_PER_SECOND: i128 = 1_000_000;
const MICROS_PER_DAY: i128 = 86_400 * MICROS_PER_SECOND;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// A byte cursor for the ISO date/time forms.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Reads `min..=max` ASCII digits.
    fn number(&mut self, min: usize, max: usize) -> Option<u64> {
        let digits = self.s[self.at..]
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits < min {
            return None;
        }
        let value = self.s[self.at..self.at + digits]
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        self.at += digits;
        Some(value)
    }

    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }

    fn done(&self) -> bool {
        self.at == self.s.len()
    }
}

/// Microseconds since midnight, from `HH:MM[:SS[.fraction]]`.
fn time_of_day(c: &mut Cursor<'_>) -> Result<i128, DtError> {
    let hour = c.number(1, 2).ok_or(DtError::Syntax)?;
    if !c.eat(b':') {
        return Err(DtError::Syntax);
    }
    let minute = c.number(2, 2).ok_or(DtError::Syntax)?;
    let mut second = 0;
    let mut micros: i128 = 0;
    if c.eat(b':') {
        second = c.number(2, 2).ok_or(DtError::Syntax)?;
        if c.eat(b'.') {
            let start = c.at;
            let digits = c.s[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                return Err(DtError::Syntax);
            }
            let fraction = &c.s[start..start + digits];
            for i in 0..6 {
                micros = micros * 10 + fraction.get(i).map_or(0, |d| i128::from(d - b'0'));
            }
            if fraction.get(6).is_some_and(|d| *d >= b'5') {
                micros += 1;
            }
            c.at += digits;
        }
    }
    let over_midnight = hour == 24 && (minute > 0 || second > 0 || micros > 0);
    if hour > 24 || minute > 59 || second > 60 || over_midnight {
        return Err(DtError::Range);
    }
    let seconds = (hour * 60 + minute) * 60 + second;
    Ok(i128::from(seconds) * MICROS_PER_SECOND + micros)
}

/// A zone offset in seconds east of UTC: `Z`, `UTC`, `GMT`, `±HH[[:]MM[[:]SS]]`.
fn zone_offset(c: &mut Cursor<'_>) -> Result<Option<i128>, DtError> {
    let rest = &c.s[c.at..];
    if rest.eq_ignore_ascii_case(b"z") {
        c.at += 1;
        return Ok(Some(0));
    }
    if rest.eq_ignore_ascii_case(b"utc") || rest.eq_ignore_ascii_case(b"gmt") {
        c.at += 3;
        return Ok(Some(0));
    }
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok(None),
    };
    c.at += 1;
    let hours = c.number(1, 2).ok_or(DtError::Syntax)?;
    let colon = c.eat(b':');
    let minutes = match c.number(2, 2) {
        Some(m) => m,
        None if colon => return Err(DtError::Syntax),
        None => 0,
    };
    let seconds = if c.eat(b':') {
        c.number(2, 2).ok_or(DtError::Syntax)?
    } else {
        0
    };
    if hours > 15 || minutes > 59 || seconds > 59 {
        return Err(DtError::Range);
    }
    Ok(Some(
        sign * i128::from((hours * 60 + minutes) * 60 + seconds),
    ))
}

/// Splits off a trailing ` BC` / ` AD` era marker.
fn strip_era(t: &str) -> (&str, bool) {
    let bytes = t.as_bytes();
    if bytes.len() > 2 {
        let (body, era) = bytes.split_at(bytes.len() - 2);
        if era.eq_ignore_ascii_case(b"bc") || era.eq_ignore_ascii_case(b"ad") {
            let bc = era.eq_ignore_ascii_case(b"bc");
            return (t[..body.len()].trim_end_matches(' '), bc);
        }
    }
    (t, false)
}

/// The special inputs shared by `date` and the timestamps.
fn special_instant(t: &str) -> Option<i128> {
    if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("+infinity") {
        Some(i128::MAX)
    } else if t.eq_ignore_ascii_case("-infinity") {
        Some(i128::MIN)
    } else if t.eq_ignore_ascii_case("epoch") {
        Some(0)
    } else {
        None
    }
}

/// An ISO date with an optional time and zone: (days since 1970, micros of day, zone seconds).
fn date_time(t: &str) -> Result<(i128, i128, Option<i128>), DtError> {
    let (t, bc) = strip_era(t);
    let mut c = Cursor {
        s: t.as_bytes(),
        at: 0,
    };
    let year = c.number(1, 7).ok_or(DtError::Syntax)?;
    if !c.eat(b'-') {
        return Err(DtError::Syntax);
    }
    let month = c.number(1, 2).ok_or(DtError::Syntax)?;
    if !c.eat(b'-') {
        return Err(DtError::Syntax);
    }
    let day = c.number(1, 2).ok_or(DtError::Syntax)?;
    // Both fit: at most 7 and 2 digits.
    let (year, month, day) = (year as i64, month as u32, day as u32);
    let astronomical = if bc { 1 - year } else { year };
    if year == 0
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(astronomical, month)
    {
        return Err(DtError::Range);
    }
    let days = i128::from(days_from_civil(astronomical, month, day));
    let mut micros = 0;
    let mut zone = None;
    if !c.done() {
        if !(c.eat(b'T') || c.eat(b't')) {
            if c.peek() != Some(b' ') {
                return Err(DtError::Syntax);
            }
            c.skip_spaces();
        }
        micros = time_of_day(&mut c)?;
        c.skip_spaces();
        zone = zone_offset(&mut c)?;
    }
    if !c.done() {
        return Err(DtError::Syntax);
    }
    Ok((days, micros, zone))
}

/// `date`: days since 1970-01-01 (a time part is accepted and ignored, as Postgres does).
fn parse_date(text: &str) -> Result<i128, DtError> {
    let t = trim_pg(text);
    if let Some(special) = special_instant(t) {
        return Ok(special);
    }
    date_time(t).map(|(days, _, _)| days)
}

/// `timestamp` / `timestamptz`: microseconds since 1970-01-01 00:00 (UTC for `with_zone`; a
/// value without zone is taken as UTC). `timestamp` ignores a zone, as Postgres does.
fn parse_timestamp(text: &str, with_zone: bool) -> Result<i128, DtError> {
    let t = trim_pg(text);
    if let Some(special) = special_instant(t) {
        return Ok(special);
    }
    let (days, micros, zone) = date_time(t)?;
    let offset = if with_zone { zone.unwrap_or(0) } else { 0 };
    Ok(days * MICROS_PER_DAY + micros - offset * MICROS_PER_SECOND)
}

/// `time`: microseconds since midnight (a zone is accepted and ignored).
fn parse_time(text: &str) -> Result<i128, DtError> {
    let t = trim_pg(text);
    let mut c = Cursor {
        s: t.as_bytes(),
        at: 0,
    };
    let micros = time_of_day(&mut c)?;
    c.skip_spaces();
    zone_offset(&mut c)?;
    if !c.done() {
        return Err(DtError::Syntax);
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal<'_> {
        Decimal::parse(s).unwrap_or_else(|| panic!("not a numeric: {s}"))
    }

    #[test]
    fn decimals_compare_exactly() {
        let eq = |a: &str, b: &str| dec(a).cmp(&dec(b)) == Ordering::Equal;
        assert!(eq("1", "1.000"));
        assert!(eq("0010.50", "10.5"));
        assert!(eq("0", "-0.000"));
        assert!(eq("1.5e2", "150"));
        assert!(eq("12345E-4", "1.2345"));
        assert!(eq(".5", "0.5"));
        assert!(eq("NaN", "nan"));
        let lt = |a: &str, b: &str| dec(a).cmp(&dec(b)) == Ordering::Less;
        assert!(lt("0.1", "0.10000000000000000000000000001"));
        assert!(lt("-2", "-1.99999999999999999999"));
        assert!(lt("99999999999999999999", "100000000000000000000"));
        assert!(lt("0.0012", "0.012"));
        assert!(lt("-0.5", "0"));
        assert!(lt("0", "0.0000001"));
        assert!(lt("-Infinity", "-1e6"));
        assert!(lt("1e6", "Infinity"));
        assert!(lt("Infinity", "NaN"));
        // f64 would call these equal.
        assert!(lt("9007199254740992", "9007199254740993"));
        for bad in [
            "",
            ".",
            "1e",
            "1.2.3",
            "abc",
            "1e1234567",
            "--1",
            "+-1",
            "1 2",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ints_cast_with_postgres_bounds_and_messages() {
        let int4 = ColType::Int(IntKind::Int4);
        assert!(matches!(cast(int4, " 42 "), Ok(Scalar::Int(42))));
        assert!(matches!(
            cast(int4, "-2147483648"),
            Ok(Scalar::Int(-2_147_483_648))
        ));
        assert_eq!(
            cast(int4, "2147483648").unwrap_err(),
            "value \"2147483648\" is out of range for type integer"
        );
        assert_eq!(
            cast(int4, "1.5").unwrap_err(),
            "invalid input syntax for type integer: \"1.5\""
        );
        let int2 = ColType::Int(IntKind::Int2);
        assert!(cast(int2, "32768").is_err());
        let int8 = ColType::Int(IntKind::Int8);
        assert!(matches!(
            cast(int8, "-9223372036854775808"),
            Ok(Scalar::Int(i64::MIN))
        ));
        assert!(cast(int8, "9223372036854775808").is_err());
        assert!(cast(int8, &"9".repeat(400)).is_err());
        let oid = ColType::Int(IntKind::Oid);
        assert!(matches!(
            cast(oid, "4294967295"),
            Ok(Scalar::Int(4_294_967_295))
        ));
        assert!(matches!(cast(oid, "-1"), Ok(Scalar::Int(4_294_967_295))));
    }

    #[test]
    fn floats_follow_postgres() {
        assert!(
            matches!(cast(ColType::Float8, "Infinity"), Ok(Scalar::Float(f)) if f.is_infinite())
        );
        assert!(matches!(cast(ColType::Float8, "-inf"), Ok(Scalar::Float(f)) if f < 0.0));
        assert!(matches!(cast(ColType::Float8, "NaN"), Ok(Scalar::Float(f)) if f.is_nan()));
        assert_eq!(
            cast(ColType::Float8, "1e400").unwrap_err(),
            "\"1e400\" is out of range for type double precision"
        );
        assert!(cast(ColType::Float8, "1e-400").is_err());
        assert!(cast(ColType::Float4, "1e39").is_err());
        assert!(matches!(cast(ColType::Float8, "0e5"), Ok(Scalar::Float(f)) if f == 0.0));
        assert_eq!(compare_floats(f64::NAN, f64::NAN), Ordering::Equal);
        assert_eq!(compare_floats(f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(compare_floats(-0.0, 0.0), Ordering::Equal);
    }

    #[test]
    fn bools_accept_boolin_forms() {
        for t in ["t", "TRUE", "tr", "y", "Yes", "on", "1", " true "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["f", "false", "FA", "n", "no", "off", "of", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["o", "", "2", "truee", "nope"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_and_times_are_instants() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2000-03-01"), Ok(11_017));
        assert_eq!(parse_date("1969-12-31"), Ok(-1));
        assert_eq!(
            parse_date("0001-12-31 BC"),
            parse_date("0001-01-01").map(|d| d - 1)
        );
        assert_eq!(parse_date("0000-01-01"), Err(DtError::Range));
        assert_eq!(parse_date("2024-02-30"), Err(DtError::Range));
        assert_eq!(parse_date("2023-02-29"), Err(DtError::Range));
        assert!(parse_date("2024-02-29").is_ok());
        assert_eq!(parse_date("Jan 5 2024"), Err(DtError::Syntax));
        assert_eq!(parse_date("infinity"), Ok(i128::MAX));
        assert_eq!(parse_date("2024-01-05 23:59"), parse_date("2024-01-05"));

        let ts = |s| parse_timestamp(s, true).unwrap();
        assert_eq!(ts("2024-01-31 12:00:00+00"), ts("2024-01-31T12:00:00Z"));
        assert_eq!(ts("2024-01-31 17:30:00+05:30"), ts("2024-01-31 12:00:00"));
        assert_eq!(ts("2024-01-31 06:00:00-06"), ts("2024-01-31 12:00:00"));
        assert_eq!(
            ts("2024-01-31 12:00:00.5+00") - ts("2024-01-31 12:00:00+00"),
            500_000
        );
        assert_eq!(ts("2024-01-31 12:00:00.0000004"), ts("2024-01-31 12:00:00"));
        assert_eq!(
            ts("2024-01-31 12:00:00.0000005") - ts("2024-01-31 12:00:00"),
            1
        );
        assert_eq!(ts("2024-01-31 24:00:00"), ts("2024-02-01"));
        assert_eq!(
            ts("2024-01-31 12:00:00+00:53:28"),
            ts("2024-01-31 11:06:32")
        );
        assert!(parse_timestamp("2024-01-31 25:00", true).is_err());
        assert!(parse_timestamp("2024-01-31 12:00:00 +5:3", true).is_err());
        assert!(parse_timestamp("2024-01-31 12:00:00 junk", true).is_err());
        // Without zone the offset is ignored.
        assert_eq!(
            parse_timestamp("2024-01-31 12:00:00+05", false),
            parse_timestamp("2024-01-31 12:00:00", false)
        );
        assert_eq!(
            parse_time("12:34:56.789"),
            Ok(((12 * 60 + 34) * 60 + 56) * 1_000_000 + 789_000)
        );
        assert_eq!(parse_time("24:00:00"), Ok(MICROS_PER_DAY));
        assert!(parse_time("12:60").is_err());
        assert!(parse_time("1234").is_err());
    }

    #[test]
    fn type_names_print_as_regtype() {
        assert_eq!(display_type_name("int4"), "integer");
        assert_eq!(display_type_name("_int4"), "integer[]");
        assert_eq!(display_type_name("timestamptz"), "timestamp with time zone");
        assert_eq!(display_type_name("my_enum"), "my_enum");
    }

    #[test]
    fn json_equality_is_structural() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(json_equal(
            &j(r#"{"a":1,"b":[1,2]}"#),
            &j(r#"{"b":[1,2.0],"a":1.0}"#)
        ));
        assert!(!json_equal(&j(r#"{"a":1}"#), &j(r#"{"a":1,"b":2}"#)));
        assert!(!json_equal(&j("[1,2]"), &j("[2,1]")));
        assert!(!json_equal(&j(r#""1""#), &j("1")));
    }
}
