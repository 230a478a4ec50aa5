//! Column values of a change as typed JSON: the text output form of a value and its type become
//! the JSON text `to_jsonb(value)` gives (PROTOCOL.md 6.4), written straight into a `String`.
//!
//! Pure and synchronous. Nothing here allocates per value beyond growing the output, except
//! for the rare quoted array element with backslash escapes of a non-text element type (json
//! arrays), which is unescaped into a temporary buffer.
//!
//! # What the text looks like, and who decides
//!
//! pgoutput sends each value through the type's output function in the session that decodes
//! the WAL: the walsender of a replication connection, or the backend calling
//! `pg_logical_slot_get_binary_changes`. pgoutput sets nothing itself, so the text follows that
//! session's `DateStyle`, `IntervalStyle`, `TimeZone`, `extra_float_digits` and `bytea_output`
//! (PostgreSQL's own subscribers pass `-c datestyle=ISO -c intervalstyle=postgres
//! -c extra_float_digits=3` in the startup packet for the same reason). This module expects
//! `DateStyle` `ISO` (the default) and `bytea_output` `hex` (the default); the replication
//! connection should also set `TimeZone=UTC`. The output then equals `to_jsonb(value)` run with
//! the same settings: a `timestamptz` carries the offset of that session's `TimeZone`, written
//! `+HH:MM` (or `+HH:MM:SS` for old local mean times) as `to_jsonb` writes it, where the text
//! form drops `:00` minutes. Intervals stay in the `IntervalStyle` of the session.
//!
//! # Conversions (checked against PostgreSQL 15 `to_jsonb`)
//!
//! * `int2`, `int4`, `int8`: the number as written.
//! * `float4`, `float8`: a number; `NaN`, `Infinity`, `-Infinity` become those strings.
//!   `to_jsonb` passes the float's text through `numeric`, so the exponent form is expanded
//!   (`1e+30` → `1000000000000000000000000000000`, `1.5e-10` → `0.00000000015`) and `-0` is `0`;
//!   the text written here is exactly the one `to_jsonb` gives.
//! * `numeric`: the number exactly as written, trailing zeros kept (`1.50`); `NaN`,
//!   `Infinity`, `-Infinity` as strings.
//! * `bool`: `true` / `false`.
//! * `json`, `jsonb`: the JSON itself, validated and written without insignificant whitespace.
//!   For `json` the keys stay in their order and duplicates are kept (`to_jsonb` sorts them and
//!   keeps the last duplicate, which is also what a JSON parser keeps).
//! * `timestamp`: `YYYY-MM-DDTHH:MM:SS[.ffffff]`; `timestamptz` the same with the offset
//!   (`+05:45`, `+00:00`); ` BC` and `infinity` / `-infinity` stay as Postgres writes them.
//! * `date`, `time`, `timetz`, `interval`, `uuid`, `bytea` (`\x0102`), `oid` (`to_jsonb` gives
//!   a string for it, unlike the other integers), text-like types, enums and every other type:
//!   a JSON string of the text.
//! * Arrays (`_<elem>`): the array literal is parsed (quoting, backslash escapes, `NULL`,
//!   nested dimensions, a `[1:3]=` bounds prefix, `box`'s `;` delimiter) into nested JSON arrays
//!   whose elements are converted by the element type; `{}` is `[]`. `int2vector` and
//!   `oidvector` (space-separated) become arrays of numbers and of strings.
//! * Domains take the conversion of their base type, as in `to_jsonb`. pgoutput's Type message
//!   names a domain by its base type, so a domain over a built-in type is recognised without
//!   help. Other user types (enums, composites, ranges) are strings, and a user type whose name
//!   starts with `_` is an array of strings. A catalog lookup ([`TypeRegistry::learn`]) adds
//!   what Type messages cannot say: a domain's own `typname` (Type messages give the base's)
//!   and the element type of an array of domains (`_posint` gives numbers once it is known).
//!
//! Known differences from `to_jsonb`: composite values stay strings (`to_jsonb` makes objects of
//! them) and arrays of `int2vector`/`oidvector` have string elements.

use std::collections::HashMap;

use crate::error::{ErrorCode, OperationalError};

/// How the text of one scalar type becomes JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JsonKind {
    /// `int2`, `int4`, `int8`: the number as written.
    Integer,
    /// `float4`, `float8`: a number with the exponent expanded; NaN and infinities as strings.
    Float,
    /// `numeric`: the number as written; NaN and infinities as strings.
    Numeric,
    /// `bool`: `t` / `f`.
    Bool,
    /// `json` and `jsonb`: the JSON text itself.
    Json,
    /// `timestamp`: the space between date and time becomes `T`.
    Timestamp,
    /// `timestamptz`: like `Timestamp`, and the offset gets its minutes.
    Timestamptz,
    /// Everything else: a JSON string.
    String,
}

/// How a value of one column type becomes JSON: a scalar, an array of scalars, or one of the
/// space-separated vector types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgType {
    /// A single value.
    Scalar(JsonKind),
    /// An array literal (`{...}`) of `elem` values separated by `delim` (`,`, or `;` for `box`).
    Array {
        /// The conversion of each element.
        elem: JsonKind,
        /// The element type's `typdelim`.
        delim: u8,
    },
    /// `int2vector` / `oidvector`: elements separated by single spaces.
    Vector(JsonKind),
}

/// A value's text could not be read as its type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The text is not UTF-8 (the database encoding must be UTF8).
    #[error("value text is not utf-8")]
    NotUtf8,
    /// The text does not have the shape of its type's output.
    #[error("invalid {kind} text at byte {offset}")]
    Invalid {
        /// What the text was read as: `integer`, `float`, `numeric`, `bool`, `json`,
        /// `timestamp`, `array`.
        kind: &'static str,
        /// Byte offset in the value's text where reading stopped.
        offset: usize,
    },
}

impl OperationalError for ValueError {
    fn code(&self) -> ErrorCode {
        ErrorCode::ReplicationError
    }

    fn client_message(&self) -> String {
        "unable to read a changed column value".to_owned()
    }
}

fn invalid(kind: &'static str, offset: usize) -> ValueError {
    ValueError::Invalid { kind, offset }
}

/// The OIDs of the built-in types whose conversion is not a plain string.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT2VECTOR: u32 = 22;
    pub(super) const INT4: u32 = 23;
    pub(super) const OIDVECTOR: u32 = 30;
    pub(super) const JSON: u32 = 114;
    pub(super) const BOX: u32 = 603;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const JSONB: u32 = 3802;
}

/// The built-in row of `oid`: its typname and, for a true array type, its element OID (else 0).
pub fn builtin_type(oid: u32) -> Option<(&'static str, u32)> {
    BUILTIN_TYPES
        .binary_search_by_key(&oid, |&(o, _, _)| o)
        .ok()
        .map(|i| (BUILTIN_TYPES[i].1, BUILTIN_TYPES[i].2))
}

fn builtin_kind(oid: u32) -> JsonKind {
    match oid {
        oid::INT2 | oid::INT4 | oid::INT8 => JsonKind::Integer,
        oid::FLOAT4 | oid::FLOAT8 => JsonKind::Float,
        oid::NUMERIC => JsonKind::Numeric,
        oid::BOOL => JsonKind::Bool,
        oid::JSON | oid::JSONB => JsonKind::Json,
        oid::TIMESTAMP => JsonKind::Timestamp,
        oid::TIMESTAMPTZ => JsonKind::Timestamptz,
        _ => JsonKind::String,
    }
}

/// A type that is not built in, as Type messages and catalog lookups describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct UserType {
    namespace: String,
    name: String,
    /// `typbasetype` of a domain.
    base: Option<u32>,
    /// `typelem` of an array type.
    elem: Option<u32>,
    /// Whether this came from the catalog ([`TypeRegistry::learn`]), which Type messages
    /// then no longer overwrite.
    from_catalog: bool,
}

/// A user type's `pg_type` row, for [`TypeRegistry::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogType<'a> {
    /// The schema (`pg_namespace.nspname`).
    pub namespace: &'a str,
    /// `typname`.
    pub name: &'a str,
    /// `typbasetype`: the type a domain is over, 0 for other types.
    pub base: u32,
    /// `typelem` of an array type (`typcategory` `A`), 0 for other types.
    pub elem: u32,
}

/// Returns the OID of the built-in type called `name`.
fn builtin_oid_by_name(name: &str) -> Option<u32> {
    BUILTIN_TYPES
        .iter()
        .find(|&&(_, n, _)| n == name)
        .map(|&(oid, _, _)| oid)
}

/// Domains over domains over arrays: more levels than this are treated as unknown.
const MAX_TYPE_DEPTH: u32 = 16;

/// The names and conversions of column types: the built-in table plus what pgoutput's Type
/// messages (and, optionally, catalog lookups) said about user types.
#[derive(Clone, Debug, Default)]
pub struct TypeRegistry {
    user: HashMap<u32, UserType>,
}

impl TypeRegistry {
    /// Returns an empty registry (built-in types are always known).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Type message: `oid` is `namespace.name`.
    ///
    /// pgoutput names a domain by its *base* type (`getBaseType`): a domain over `int4` comes
    /// as `oid` = the domain, namespace empty (`pg_catalog`), name `int4`. Such a message is
    /// read as a domain over that built-in type, which gives the right conversion; the name
    /// stays the base type's until [`learn`](Self::learn) gives the domain's own. A type the
    /// catalog described is left as it is.
    pub fn record(&mut self, oid: u32, namespace: &str, name: &str) {
        let entry = self.user.entry(oid).or_default();
        if entry.from_catalog {
            return;
        }
        namespace.clone_into(&mut entry.namespace);
        name.clone_into(&mut entry.name);
        entry.base = if namespace.is_empty() {
            builtin_oid_by_name(name)
        } else {
            None
        };
    }

    /// Records a user type's catalog row: its real name, the base of a domain (which then
    /// converts like its base, as `to_jsonb` does) and the element of an array. Type messages
    /// alone cannot tell an array of a domain from an array of text, nor a domain's name.
    pub fn learn(&mut self, oid: u32, row: CatalogType<'_>) {
        self.user.insert(
            oid,
            UserType {
                namespace: row.namespace.to_owned(),
                name: row.name.to_owned(),
                base: (row.base != 0).then_some(row.base),
                elem: (row.elem != 0).then_some(row.elem),
                from_catalog: true,
            },
        );
    }

    /// Returns `pg_type.typname` of `oid`, as `columns[].type` shows it (PROTOCOL.md 6.4), or
    /// `None` for a user type no Type message described.
    pub fn name(&self, oid: u32) -> Option<&str> {
        match builtin_type(oid) {
            Some((name, _)) => Some(name),
            None => self
                .user
                .get(&oid)
                .map(|t| t.name.as_str())
                .filter(|n| !n.is_empty()),
        }
    }

    /// Returns the schema of a user type described by a Type message.
    pub fn namespace(&self, oid: u32) -> Option<&str> {
        self.user.get(&oid).map(|t| t.namespace.as_str())
    }

    /// Returns how values of type `oid` become JSON.
    pub fn resolve(&self, oid: u32) -> PgType {
        self.resolve_at(oid, 0)
    }

    fn resolve_at(&self, oid: u32, depth: u32) -> PgType {
        if depth > MAX_TYPE_DEPTH {
            return PgType::Scalar(JsonKind::String);
        }
        if let Some((_, elem)) = builtin_type(oid) {
            return match oid {
                oid::INT2VECTOR => PgType::Vector(JsonKind::Integer),
                oid::OIDVECTOR => PgType::Vector(JsonKind::String),
                _ if elem != 0 => self.array_of(elem, depth),
                _ => PgType::Scalar(builtin_kind(oid)),
            };
        }
        match self.user.get(&oid) {
            Some(UserType {
                base: Some(base), ..
            }) => self.resolve_at(*base, depth + 1),
            Some(UserType {
                elem: Some(elem), ..
            }) => self.array_of(*elem, depth),
            Some(t) if t.name.starts_with('_') => PgType::Array {
                elem: JsonKind::String,
                delim: b',',
            },
            _ => PgType::Scalar(JsonKind::String),
        }
    }

    fn array_of(&self, elem: u32, depth: u32) -> PgType {
        let elem_kind = match self.resolve_at(elem, depth + 1) {
            PgType::Scalar(kind) => kind,
            PgType::Array { .. } | PgType::Vector(_) => JsonKind::String,
        };
        // Only `box` has a delimiter other than a comma among the types that can be elements.
        let delim = if self.base_of(elem, depth) == oid::BOX {
            b';'
        } else {
            b','
        };
        PgType::Array {
            elem: elem_kind,
            delim,
        }
    }

    /// The type a chain of domains ends at.
    fn base_of(&self, mut oid: u32, mut depth: u32) -> u32 {
        while let Some(UserType {
            base: Some(base), ..
        }) = self.user.get(&oid)
        {
            if depth > MAX_TYPE_DEPTH {
                break;
            }
            oid = *base;
            depth += 1;
        }
        oid
    }
}

/// Appends the JSON of one value to `out`: `text` is the value's text output form (a `t` column
/// of a pgoutput tuple) and `ty` its type's conversion.
///
/// # Errors
///
/// [`ValueError`] when the text is not UTF-8 or not shaped like the type's output; `out` is then
/// left as it was.
pub fn write_json(out: &mut String, ty: PgType, text: &[u8]) -> Result<(), ValueError> {
    let start = out.len();
    let result = std::str::from_utf8(text)
        .map_err(|_| ValueError::NotUtf8)
        .and_then(|text| match ty {
            PgType::Scalar(kind) => write_scalar(out, kind, text),
            PgType::Array { elem, delim } => write_array(out, elem, delim, text),
            PgType::Vector(elem) => write_vector(out, elem, text),
        });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_scalar(out: &mut String, kind: JsonKind, text: &str) -> Result<(), ValueError> {
    match kind {
        JsonKind::Integer => write_integer(out, text),
        JsonKind::Float => write_float(out, text),
        JsonKind::Numeric => write_numeric(out, text),
        JsonKind::Bool => match text {
            "t" => {
                out.push_str("true");
                Ok(())
            }
            "f" => {
                out.push_str("false");
                Ok(())
            }
            _ => Err(invalid("bool", 0)),
        },
        JsonKind::Json => write_json_text(out, text),
        JsonKind::Timestamp => write_timestamp(out, text, false),
        JsonKind::Timestamptz => write_timestamp(out, text, true),
        JsonKind::String => {
            write_string(out, text);
            Ok(())
        }
    }
}

/// Appends `s` as a JSON string, escaped as Postgres's `escape_json` does: `"`, `\`, and the
/// control characters below U+0020 (`\b \f \n \r \t`, else `\u00XX`); nothing else.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    write_string_body(out, s);
    out.push('"');
}

fn write_string_body(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        // Every byte that ends a run is ASCII, so `run..i` is on char boundaries.
        out.push_str(&s[run..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

fn is_special_float(text: &str) -> bool {
    matches!(text, "NaN" | "Infinity" | "-Infinity")
}

fn write_integer(out: &mut String, text: &str) -> Result<(), ValueError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Err(invalid("integer", 0));
    }
    out.push_str(text);
    Ok(())
}

fn write_numeric(out: &mut String, text: &str) -> Result<(), ValueError> {
    if is_special_float(text) {
        write_string(out, text);
        return Ok(());
    }
    match scan_json_number(text.as_bytes(), 0) {
        Some(end) if end == text.len() => {
            out.push_str(text);
            Ok(())
        }
        Some(end) => Err(invalid("numeric", end)),
        None => Err(invalid("numeric", 0)),
    }
}

/// Longest exponent a float's text can carry (`float8` reaches about ±324).
const MAX_FLOAT_EXPONENT: i32 = 400;

/// Writes a float's text the way `to_jsonb` does: through `numeric`, so without an exponent,
/// with as many fractional digits as the text implied, and without the sign of a zero.
fn write_float(out: &mut String, text: &str) -> Result<(), ValueError> {
    if is_special_float(text) {
        write_string(out, text);
        return Ok(());
    }
    let bytes = text.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &text[int_start..i];
    let mut frac_digits = "";
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &text[start..i];
        if frac_digits.is_empty() {
            return Err(invalid("float", i));
        }
    }
    if int_digits.is_empty() {
        return Err(invalid("float", int_start));
    }
    let mut exponent: i32 = 0;
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        let exp_negative = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            if exponent > MAX_FLOAT_EXPONENT {
                return Err(invalid("float", i));
            }
            exponent = exponent * 10 + i32::from(bytes[i] - b'0');
            i += 1;
        }
        if i == start || exponent > MAX_FLOAT_EXPONENT {
            return Err(invalid("float", i));
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        return Err(invalid("float", i));
    }

    // The digits are `int_digits ++ frac_digits` with the decimal point after `point` of them.
    let digits = Digits(int_digits, frac_digits);
    let total = digits.len();
    let leading_zeros = digits.leading_zeros();
    if leading_zeros == total {
        // numeric has no negative zero, and a float's zero text has no fraction.
        out.push('0');
        return Ok(());
    }
    let point = i64::try_from(int_digits.len()).unwrap_or(i64::MAX) + i64::from(exponent);
    // Drop leading zeros; the point moves with them.
    let first = leading_zeros;
    let point = point - i64::try_from(leading_zeros).unwrap_or(0);
    let significant = total - first;
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        push_zeros(out, point.unsigned_abs());
        digits.write(out, first, total);
    } else {
        // `point` is at most the digit count plus MAX_FLOAT_EXPONENT: it fits.
        let point = usize::try_from(point).unwrap_or(usize::MAX);
        if point >= significant {
            digits.write(out, first, total);
            push_zeros(out, (point - significant) as u64);
        } else {
            digits.write(out, first, first + point);
            out.push('.');
            digits.write(out, first + point, total);
        }
    }
    Ok(())
}

fn push_zeros(out: &mut String, n: u64) {
    for _ in 0..n {
        out.push('0');
    }
}

/// The concatenation of two runs of ASCII digits, without copying them.
struct Digits<'a>(&'a str, &'a str);

impl Digits<'_> {
    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    fn leading_zeros(&self) -> usize {
        let first = self.0.bytes().take_while(|&b| b == b'0').count();
        if first < self.0.len() {
            first
        } else {
            first + self.1.bytes().take_while(|&b| b == b'0').count()
        }
    }

    /// Appends digits `from..to` of the concatenation.
    fn write(&self, out: &mut String, from: usize, to: usize) {
        let split = self.0.len();
        if from < split {
            out.push_str(&self.0[from..to.min(split)]);
        }
        if to > split {
            out.push_str(&self.1[from.max(split) - split..to - split]);
        }
    }
}

/// Scans a JSON number starting at `i`; returns the offset after it, or `None` if none starts
/// there.
fn scan_json_number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(i)
}

/// Writes `timestamp` / `timestamptz` text (DateStyle ISO) as `to_jsonb` does: `T` between
/// date and time, and for `timestamptz` an offset with minutes (`+05` → `+05:00`).
fn write_timestamp(out: &mut String, text: &str, with_zone: bool) -> Result<(), ValueError> {
    let bytes = text.as_bytes();
    // `infinity` / `-infinity` (no digits first) are written as they are.
    if !bytes.first().is_some_and(u8::is_ascii_digit) {
        if text == "infinity" || text == "-infinity" {
            write_string(out, text);
            return Ok(());
        }
        return Err(invalid("timestamp", 0));
    }
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return Err(invalid("timestamp", bytes.len()));
    };
    let date = &text[..space];
    let rest = &text[space + 1..];
    let valid = |s: &str| {
        s.bytes().all(|b| {
            b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+' | b' ' | b'B' | b'C')
        })
    };
    if !valid(date) || !valid(rest) {
        return Err(invalid("timestamp", space));
    }
    out.push('"');
    out.push_str(date);
    out.push('T');
    if with_zone {
        // The offset is the first sign after the time; it ends at the ` BC` suffix if any.
        let Some(sign) = rest.bytes().position(|b| b == b'+' || b == b'-') else {
            // `write_json` restores `out` on errors.
            return Err(invalid("timestamp", text.len()));
        };
        let zone_end = rest[sign..].find(' ').map_or(rest.len(), |i| sign + i);
        out.push_str(&rest[..zone_end]);
        if !rest[sign..zone_end].contains(':') {
            out.push_str(":00");
        }
        out.push_str(&rest[zone_end..]);
    } else {
        out.push_str(rest);
    }
    out.push('"');
    Ok(())
}

/// Every built-in type of PostgreSQL 15 (`pg_type` rows with an OID below 10000, which pgoutput
/// never describes with a Type message): `(oid, typname, element oid for true arrays or 0)`,
/// sorted by OID. Read from `pg_type` of a fresh PostgreSQL 15.
const BUILTIN_TYPES: &[(u32, &str, u32)] = &[
    (16, "bool", 0),
    (17, "bytea", 0),
    (18, "char", 0),
    (19, "name", 0),
    (20, "int8", 0),
    (21, "int2", 0),
    (22, "int2vector", 0),
    (23, "int4", 0),
    (24, "regproc", 0),
    (25, "text", 0),
    (26, "oid", 0),
    (27, "tid", 0),
    (28, "xid", 0),
    (29, "cid", 0),
    (30, "oidvector", 0),
    (32, "pg_ddl_command", 0),
    (71, "pg_type", 0),
    (75, "pg_attribute", 0),
    (81, "pg_proc", 0),
    (83, "pg_class", 0),
    (114, "json", 0),
    (142, "xml", 0),
    (143, "_xml", 142),
    (194, "pg_node_tree", 0),
    (199, "_json", 114),
    (210, "_pg_type", 71),
    (269, "table_am_handler", 0),
    (270, "_pg_attribute", 75),
    (271, "_xid8", 5069),
    (272, "_pg_proc", 81),
    (273, "_pg_class", 83),
    (325, "index_am_handler", 0),
    (600, "point", 0),
    (601, "lseg", 0),
    (602, "path", 0),
    (603, "box", 0),
    (604, "polygon", 0),
    (628, "line", 0),
    (629, "_line", 628),
    (650, "cidr", 0),
    (651, "_cidr", 650),
    (700, "float4", 0),
    (701, "float8", 0),
    (705, "unknown", 0),
    (718, "circle", 0),
    (719, "_circle", 718),
    (774, "macaddr8", 0),
    (775, "_macaddr8", 774),
    (790, "money", 0),
    (791, "_money", 790),
    (829, "macaddr", 0),
    (869, "inet", 0),
    (1000, "_bool", 16),
    (1001, "_bytea", 17),
    (1002, "_char", 18),
    (1003, "_name", 19),
    (1005, "_int2", 21),
    (1006, "_int2vector", 22),
    (1007, "_int4", 23),
    (1008, "_regproc", 24),
    (1009, "_text", 25),
    (1010, "_tid", 27),
    (1011, "_xid", 28),
    (1012, "_cid", 29),
    (1013, "_oidvector", 30),
    (1014, "_bpchar", 1042),
    (1015, "_varchar", 1043),
    (1016, "_int8", 20),
    (1017, "_point", 600),
    (1018, "_lseg", 601),
    (1019, "_path", 602),
    (1020, "_box", 603),
    (1021, "_float4", 700),
    (1022, "_float8", 701),
    (1027, "_polygon", 604),
    (1028, "_oid", 26),
    (1033, "aclitem", 0),
    (1034, "_aclitem", 1033),
    (1040, "_macaddr", 829),
    (1041, "_inet", 869),
    (1042, "bpchar", 0),
    (1043, "varchar", 0),
    (1082, "date", 0),
    (1083, "time", 0),
    (1114, "timestamp", 0),
    (1115, "_timestamp", 1114),
    (1182, "_date", 1082),
    (1183, "_time", 1083),
    (1184, "timestamptz", 0),
    (1185, "_timestamptz", 1184),
    (1186, "interval", 0),
    (1187, "_interval", 1186),
    (1231, "_numeric", 1700),
    (1248, "pg_database", 0),
    (1263, "_cstring", 2275),
    (1266, "timetz", 0),
    (1270, "_timetz", 1266),
    (1560, "bit", 0),
    (1561, "_bit", 1560),
    (1562, "varbit", 0),
    (1563, "_varbit", 1562),
    (1700, "numeric", 0),
    (1790, "refcursor", 0),
    (2201, "_refcursor", 1790),
    (2202, "regprocedure", 0),
    (2203, "regoper", 0),
    (2204, "regoperator", 0),
    (2205, "regclass", 0),
    (2206, "regtype", 0),
    (2207, "_regprocedure", 2202),
    (2208, "_regoper", 2203),
    (2209, "_regoperator", 2204),
    (2210, "_regclass", 2205),
    (2211, "_regtype", 2206),
    (2249, "record", 0),
    (2275, "cstring", 0),
    (2276, "any", 0),
    (2277, "anyarray", 0),
    (2278, "void", 0),
    (2279, "trigger", 0),
    (2280, "language_handler", 0),
    (2281, "internal", 0),
    (2283, "anyelement", 0),
    (2287, "_record", 2249),
    (2776, "anynonarray", 0),
    (2842, "pg_authid", 0),
    (2843, "pg_auth_members", 0),
    (2949, "_txid_snapshot", 2970),
    (2950, "uuid", 0),
    (2951, "_uuid", 2950),
    (2970, "txid_snapshot", 0),
    (3115, "fdw_handler", 0),
    (3220, "pg_lsn", 0),
    (3221, "_pg_lsn", 3220),
    (3310, "tsm_handler", 0),
    (3361, "pg_ndistinct", 0),
    (3402, "pg_dependencies", 0),
    (3500, "anyenum", 0),
    (3614, "tsvector", 0),
    (3615, "tsquery", 0),
    (3642, "gtsvector", 0),
    (3643, "_tsvector", 3614),
    (3644, "_gtsvector", 3642),
    (3645, "_tsquery", 3615),
    (3734, "regconfig", 0),
    (3735, "_regconfig", 3734),
    (3769, "regdictionary", 0),
    (3770, "_regdictionary", 3769),
    (3802, "jsonb", 0),
    (3807, "_jsonb", 3802),
    (3831, "anyrange", 0),
    (3838, "event_trigger", 0),
    (3904, "int4range", 0),
    (3905, "_int4range", 3904),
    (3906, "numrange", 0),
    (3907, "_numrange", 3906),
    (3908, "tsrange", 0),
    (3909, "_tsrange", 3908),
    (3910, "tstzrange", 0),
    (3911, "_tstzrange", 3910),
    (3912, "daterange", 0),
    (3913, "_daterange", 3912),
    (3926, "int8range", 0),
    (3927, "_int8range", 3926),
    (4066, "pg_shseclabel", 0),
    (4072, "jsonpath", 0),
    (4073, "_jsonpath", 4072),
    (4089, "regnamespace", 0),
    (4090, "_regnamespace", 4089),
    (4096, "regrole", 0),
    (4097, "_regrole", 4096),
    (4191, "regcollation", 0),
    (4192, "_regcollation", 4191),
    (4451, "int4multirange", 0),
    (4532, "nummultirange", 0),
    (4533, "tsmultirange", 0),
    (4534, "tstzmultirange", 0),
    (4535, "datemultirange", 0),
    (4536, "int8multirange", 0),
    (4537, "anymultirange", 0),
    (4538, "anycompatiblemultirange", 0),
    (4600, "pg_brin_bloom_summary", 0),
    (4601, "pg_brin_minmax_multi_summary", 0),
    (5017, "pg_mcv_list", 0),
    (5038, "pg_snapshot", 0),
    (5039, "_pg_snapshot", 5038),
    (5069, "xid8", 0),
    (5077, "anycompatible", 0),
    (5078, "anycompatiblearray", 0),
    (5079, "anycompatiblenonarray", 0),
    (5080, "anycompatiblerange", 0),
    (6101, "pg_subscription", 0),
    (6150, "_int4multirange", 4451),
    (6151, "_nummultirange", 4532),
    (6152, "_tsmultirange", 4533),
    (6153, "_tstzmultirange", 4534),
    (6155, "_datemultirange", 4535),
    (6157, "_int8multirange", 4536),
];

/// Open containers of a JSON text being scanned: a bit per level (set for an object), inline
/// for the first 128 levels, so only absurdly deep documents allocate.
#[derive(Default)]
struct Containers {
    depth: usize,
    inline: u128,
    spill: Vec<bool>,
}

impl Containers {
    fn push(&mut self, object: bool) {
        if self.depth < 128 {
            let bit = 1u128 << self.depth;
            if object {
                self.inline |= bit;
            } else {
                self.inline &= !bit;
            }
        } else {
            self.spill.push(object);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= 128 {
            self.spill.pop();
        }
    }

    /// Whether the innermost open container is an object; `None` at the top level.
    fn top_is_object(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 128 => Some(self.inline & (1u128 << (d - 1)) != 0),
            _ => self.spill.last().copied(),
        }
    }
}

fn skip_json_whitespace(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Scans a JSON string whose opening quote is at `i`; returns the offset after the closing
/// quote. Escapes must be valid; raw control characters are refused.
fn scan_json_string(b: &[u8], mut i: usize) -> Result<usize, ValueError> {
    debug_assert_eq!(b.get(i), Some(&b'"'));
    i += 1;
    loop {
        match b.get(i) {
            None => return Err(invalid("json", i)),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6).ok_or(invalid("json", i))?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(invalid("json", i));
                    }
                    i += 6;
                }
                _ => return Err(invalid("json", i)),
            },
            Some(&c) if c < 0x20 => return Err(invalid("json", i)),
            Some(_) => i += 1,
        }
    }
}

/// Validates a JSON text and appends it without insignificant whitespace. Strings and numbers
/// are copied as written (escapes included).
fn write_json_text(out: &mut String, text: &str) -> Result<(), ValueError> {
    let b = text.as_bytes();
    let mut open = Containers::default();
    let mut i = skip_json_whitespace(b, 0);
    'value: loop {
        // A value starts at `i` (whitespace skipped).
        match b.get(i) {
            Some(b'{') => {
                out.push('{');
                i = skip_json_whitespace(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    out.push('}');
                    i += 1;
                } else {
                    open.push(true);
                    i = write_json_key(out, text, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                out.push('[');
                i = skip_json_whitespace(b, i + 1);
                if b.get(i) == Some(&b']') {
                    out.push(']');
                    i += 1;
                } else {
                    open.push(false);
                    continue 'value;
                }
            }
            Some(b'"') => {
                let end = scan_json_string(b, i)?;
                out.push_str(&text[i..end]);
                i = end;
            }
            Some(b'-' | b'0'..=b'9') => {
                let end = scan_json_number(b, i).ok_or(invalid("json", i))?;
                out.push_str(&text[i..end]);
                i = end;
            }
            Some(b't' | b'f' | b'n') => {
                let word = ["true", "false", "null"]
                    .into_iter()
                    .find(|w| b[i..].starts_with(w.as_bytes()))
                    .ok_or(invalid("json", i))?;
                out.push_str(word);
                i += word.len();
            }
            _ => return Err(invalid("json", i)),
        }
        // A value ended at `i`: close containers, or go on after a comma.
        loop {
            i = skip_json_whitespace(b, i);
            match (open.top_is_object(), b.get(i)) {
                (None, None) => return Ok(()),
                (None, Some(_)) => return Err(invalid("json", i)),
                (Some(object), Some(b',')) => {
                    out.push(',');
                    i = skip_json_whitespace(b, i + 1);
                    if object {
                        i = write_json_key(out, text, i)?;
                    }
                    continue 'value;
                }
                (Some(true), Some(b'}')) | (Some(false), Some(b']')) => {
                    out.push(char::from(b[i]));
                    open.pop();
                    i += 1;
                }
                (Some(_), _) => return Err(invalid("json", i)),
            }
        }
    }
}

/// Writes an object key and its colon; returns the offset of the value (whitespace skipped).
fn write_json_key(out: &mut String, text: &str, i: usize) -> Result<usize, ValueError> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return Err(invalid("json", i));
    }
    let end = scan_json_string(b, i)?;
    out.push_str(&text[i..end]);
    let colon = skip_json_whitespace(b, end);
    if b.get(colon) != Some(&b':') {
        return Err(invalid("json", colon));
    }
    out.push(':');
    Ok(skip_json_whitespace(b, colon + 1))
}

/// Most dimensions an array can have (PostgreSQL's `MAXDIM`).
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Writes an array literal (`array_out` text) as nested JSON arrays.
fn write_array(out: &mut String, elem: JsonKind, delim: u8, text: &str) -> Result<(), ValueError> {
    let b = text.as_bytes();
    let mut i = 0;
    // `[1:3]={...}` or `[0:1][1:2]={{...}}` when a lower bound is not 1: JSON has no bounds.
    if b.first() == Some(&b'[') {
        let eq = b
            .iter()
            .position(|&c| c == b'=')
            .ok_or(invalid("array", 0))?;
        let bounds_ok = b[..eq]
            .iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'[' | b']' | b':' | b'-' | b'+'));
        if !bounds_ok {
            return Err(invalid("array", 0));
        }
        i = eq + 1;
    }
    if b.get(i) != Some(&b'{') {
        return Err(invalid("array", i));
    }
    let end = write_array_level(out, elem, delim, text, i, 1)?;
    if end != b.len() {
        return Err(invalid("array", end));
    }
    Ok(())
}

/// Writes the `{...}` starting at `i`; returns the offset after its `}`.
fn write_array_level(
    out: &mut String,
    elem: JsonKind,
    delim: u8,
    text: &str,
    mut i: usize,
    dimension: usize,
) -> Result<usize, ValueError> {
    let b = text.as_bytes();
    debug_assert_eq!(b.get(i), Some(&b'{'));
    out.push('[');
    i += 1;
    if b.get(i) == Some(&b'}') {
        out.push(']');
        return Ok(i + 1);
    }
    loop {
        match b.get(i) {
            Some(b'{') => {
                if dimension == MAX_ARRAY_DIMENSIONS {
                    return Err(invalid("array", i));
                }
                i = write_array_level(out, elem, delim, text, i, dimension + 1)?;
            }
            Some(b'"') => {
                let start = i + 1;
                let mut escaped = false;
                i = start;
                loop {
                    match b.get(i) {
                        None => return Err(invalid("array", i)),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => i += 1,
                    }
                }
                if i > b.len() {
                    return Err(invalid("array", b.len()));
                }
                write_array_element(out, elem, &text[start..i], escaped)?;
                i += 1;
            }
            Some(_) => {
                let start = i;
                while b.get(i).is_some_and(|&c| c != delim && c != b'}') {
                    if matches!(b[i], b'{' | b'"' | b'\\') {
                        return Err(invalid("array", i));
                    }
                    i += 1;
                }
                let element = &text[start..i];
                if element.is_empty() {
                    return Err(invalid("array", i));
                }
                if element.eq_ignore_ascii_case("NULL") {
                    out.push_str("null");
                } else {
                    write_scalar(out, elem, element).map_err(|e| offset_error(e, start))?;
                }
            }
            None => return Err(invalid("array", i)),
        }
        match b.get(i) {
            Some(&c) if c == delim => {
                out.push(',');
                i += 1;
            }
            Some(b'}') => {
                out.push(']');
                return Ok(i + 1);
            }
            _ => return Err(invalid("array", i)),
        }
    }
}

/// Moves the offset of an element's error to the array text's coordinates.
fn offset_error(error: ValueError, base: usize) -> ValueError {
    match error {
        ValueError::Invalid { kind, offset } => ValueError::Invalid {
            kind,
            offset: base + offset,
        },
        other => other,
    }
}

/// Writes one quoted element (the text between its quotes, backslash escapes still in).
fn write_array_element(
    out: &mut String,
    elem: JsonKind,
    raw: &str,
    escaped: bool,
) -> Result<(), ValueError> {
    if !escaped {
        return write_scalar(out, elem, raw);
    }
    if elem == JsonKind::String {
        // Unescape while escaping for JSON: a backslash takes the next character literally.
        // Every cut is next to an ASCII backslash, so the pieces stay on char boundaries.
        out.push('"');
        let b = raw.as_bytes();
        let (mut run, mut i) = (0, 0);
        while i < b.len() {
            if b[i] == b'\\' {
                write_string_body(out, &raw[run..i]);
                run = i + 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        write_string_body(out, &raw[run..]);
        out.push('"');
        return Ok(());
    }
    // Rare: a quoted element with escapes of another type (a json element holding quotes).
    let mut unescaped = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                unescaped.push(next);
            }
        } else {
            unescaped.push(c);
        }
    }
    write_scalar(out, elem, &unescaped)
}

/// Writes `int2vector` / `oidvector` text (`1 2 3`) as a JSON array.
fn write_vector(out: &mut String, elem: JsonKind, text: &str) -> Result<(), ValueError> {
    out.push('[');
    if !text.is_empty() {
        let mut offset = 0;
        for (n, part) in text.split(' ').enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_scalar(out, elem, part).map_err(|e| offset_error(e, offset))?;
            offset += part.len() + 1;
        }
    }
    out.push(']');
    Ok(())
}

/// Microseconds from 1970-01-01 to 2000-01-01, the epoch of pgoutput timestamps.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Appends a pgoutput timestamp (microseconds since 2000-01-01 00:00 UTC, as in Begin and
/// Commit) as the JSON string `"YYYY-MM-DDTHH:MI:SS.mmmZ"` of `commit_timestamp`
/// (PROTOCOL.md 6.4). Microseconds are truncated to milliseconds (toward the past).
pub fn write_commit_timestamp(out: &mut String, micros_since_2000: i64) {
    let unix_ms = micros_since_2000
        .saturating_add(POSTGRES_EPOCH_UNIX_MICROS)
        .div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let unix_secs = unix_ms.div_euclid(1000);
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    out.push('"');
    if year < 0 {
        out.push('-');
    }
    push_padded(out, year.unsigned_abs(), 4);
    out.push('-');
    push_padded(out, u64::from(month), 2);
    out.push('-');
    push_padded(out, u64::from(day), 2);
    out.push('T');
    push_padded(out, (secs_of_day / 3600).unsigned_abs(), 2);
    out.push(':');
    push_padded(out, (secs_of_day / 60 % 60).unsigned_abs(), 2);
    out.push(':');
    push_padded(out, (secs_of_day % 60).unsigned_abs(), 2);
    out.push('.');
    push_padded(out, millis.unsigned_abs(), 3);
    out.push_str("Z\"");
}

/// Returns the `commit_timestamp` string (without JSON quotes) of a pgoutput timestamp.
pub fn format_commit_timestamp(micros_since_2000: i64) -> String {
    let mut out = String::with_capacity(26);
    write_commit_timestamp(&mut out, micros_since_2000);
    out.pop();
    out.remove(0);
    out
}

fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = value;
    let mut len = 0;
    loop {
        buf[19 - len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push('0');
    }
    for &digit in &buf[20 - len..] {
        out.push(char::from(digit));
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01, by whole 400-year eras
/// (146097 days each, starting on a March 1st so the leap day ends each year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn render(ty: PgType, text: &str) -> Result<String, ValueError> {
        let mut out = String::from("prefix");
        let result = write_json(&mut out, ty, text.as_bytes());
        match result {
            Ok(()) => Ok(out["prefix".len()..].to_owned()),
            Err(e) => {
                assert_eq!(out, "prefix", "a failed write leaves the output as it was");
                Err(e)
            }
        }
    }

    fn scalar(kind: JsonKind, text: &str) -> String {
        render(PgType::Scalar(kind), text).unwrap()
    }

    fn builtin(oid: u32, text: &str) -> String {
        render(TypeRegistry::new().resolve(oid), text).unwrap()
    }

    #[test]
    fn builtin_table_is_sorted_and_names_the_common_types() {
        assert!(BUILTIN_TYPES.windows(2).all(|w| w[0].0 < w[1].0));
        let registry = TypeRegistry::new();
        for (oid, name) in [
            (16, "bool"),
            (20, "int8"),
            (23, "int4"),
            (25, "text"),
            (1007, "_int4"),
            (1009, "_text"),
            (1184, "timestamptz"),
            (2950, "uuid"),
            (3802, "jsonb"),
        ] {
            assert_eq!(registry.name(oid), Some(name));
        }
        assert_eq!(builtin_type(1009), Some(("_text", 25)));
        assert_eq!(builtin_type(25), Some(("text", 0)));
        assert_eq!(registry.name(99_999), None);
    }

    #[test]
    fn builtin_types_resolve_to_their_conversions() {
        let r = TypeRegistry::new();
        assert_eq!(r.resolve(23), PgType::Scalar(JsonKind::Integer));
        assert_eq!(r.resolve(26), PgType::Scalar(JsonKind::String), "oid");
        assert_eq!(r.resolve(701), PgType::Scalar(JsonKind::Float));
        assert_eq!(r.resolve(114), PgType::Scalar(JsonKind::Json));
        assert_eq!(r.resolve(1082), PgType::Scalar(JsonKind::String), "date");
        assert_eq!(
            r.resolve(1016),
            PgType::Array {
                elem: JsonKind::Integer,
                delim: b','
            }
        );
        assert_eq!(
            r.resolve(1020),
            PgType::Array {
                elem: JsonKind::String,
                delim: b';'
            },
            "box[] uses ;"
        );
        assert_eq!(r.resolve(22), PgType::Vector(JsonKind::Integer));
        assert_eq!(r.resolve(30), PgType::Vector(JsonKind::String));
    }

    fn catalog<'a>(name: &'a str, base: u32, elem: u32) -> CatalogType<'a> {
        CatalogType {
            namespace: "public",
            name,
            base,
            elem,
        }
    }

    #[test]
    fn user_types_from_type_messages_and_the_catalog() {
        let mut r = TypeRegistry::new();
        r.record(16_400, "public", "mood");
        r.record(16_401, "public", "_mood");
        // Domains come named by their base type: posint over int4, an array of posint.
        r.record(16_402, "", "int4");
        r.record(16_403, "public", "_posint");
        r.record(16_407, "", "_int4");
        r.record(16_408, "extensions", "int4");
        assert_eq!(r.name(16_400), Some("mood"));
        assert_eq!(r.namespace(16_400), Some("public"));
        assert_eq!(r.resolve(16_400), PgType::Scalar(JsonKind::String));
        let strings = PgType::Array {
            elem: JsonKind::String,
            delim: b',',
        };
        let integers = PgType::Array {
            elem: JsonKind::Integer,
            delim: b',',
        };
        assert_eq!(r.resolve(16_401), strings);
        assert_eq!(r.resolve(16_402), PgType::Scalar(JsonKind::Integer));
        assert_eq!(
            r.name(16_402),
            Some("int4"),
            "the base's name until the catalog says"
        );
        assert_eq!(
            r.resolve(16_403),
            strings,
            "element unknown without the catalog"
        );
        assert_eq!(r.resolve(16_407), integers, "a domain over int4[]");
        assert_eq!(
            r.resolve(16_408),
            PgType::Scalar(JsonKind::String),
            "a user type called int4 outside pg_catalog"
        );
        assert_eq!(r.resolve(99_999), PgType::Scalar(JsonKind::String));
        assert_eq!(r.name(99_999), None);

        r.learn(16_402, catalog("posint", 23, 0));
        r.learn(16_403, catalog("_posint", 0, 16_402));
        assert_eq!(r.name(16_402), Some("posint"));
        assert_eq!(r.resolve(16_402), PgType::Scalar(JsonKind::Integer));
        assert_eq!(r.resolve(16_403), integers);
        // A Type message sent again does not undo what the catalog said.
        r.record(16_402, "", "int4");
        assert_eq!(r.name(16_402), Some("posint"));
        // A domain over box arrays keeps box's delimiter; a cycle of domains ends as a string.
        r.learn(16_409, catalog("boxy", 603, 0));
        r.learn(16_410, catalog("_boxy", 0, 16_409));
        assert_eq!(
            r.resolve(16_410),
            PgType::Array {
                elem: JsonKind::String,
                delim: b';'
            }
        );
        r.learn(16_405, catalog("a", 16_406, 0));
        r.learn(16_406, catalog("b", 16_405, 0));
        assert_eq!(r.resolve(16_405), PgType::Scalar(JsonKind::String));
    }

    #[test]
    fn integers_and_numerics_are_numbers_as_written() {
        assert_eq!(builtin(23, "-2147483648"), "-2147483648");
        assert_eq!(builtin(20, "9223372036854775807"), "9223372036854775807");
        assert_eq!(
            builtin(26, "4294967295"),
            "\"4294967295\"",
            "oid is a string"
        );
        assert_eq!(builtin(1700, "1.50"), "1.50");
        assert_eq!(builtin(1700, "-0.000123"), "-0.000123");
        assert_eq!(builtin(1700, "NaN"), "\"NaN\"");
        assert_eq!(builtin(1700, "-Infinity"), "\"-Infinity\"");
        for bad in ["", "-", "01", "1.", "1a", " 1", "+1"] {
            assert!(
                render(PgType::Scalar(JsonKind::Integer), bad).is_err(),
                "{bad:?}"
            );
        }
        for bad in ["", ".5", "1.", "1e", "nan", "1 "] {
            assert!(
                render(PgType::Scalar(JsonKind::Numeric), bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn floats_are_written_as_to_jsonb_writes_them() {
        // Each pair was read from PostgreSQL 15: `x::float8::text` and `to_jsonb(x::float8)`.
        for (text, json) in [
            ("1.5", "1.5"),
            ("1e+30", "1000000000000000000000000000000"),
            ("1.5e-10", "0.00000000015"),
            ("3.4e+38", "340000000000000000000000000000000000000"),
            ("1e+16", "10000000000000000"),
            ("1.2345678901234568e+20", "123456789012345680000"),
            ("-1.2345e-05", "-0.000012345"),
            ("-0", "0"),
            ("0", "0"),
            ("123.456", "123.456"),
            ("NaN", "\"NaN\""),
            ("Infinity", "\"Infinity\""),
            ("-Infinity", "\"-Infinity\""),
        ] {
            assert_eq!(scalar(JsonKind::Float, text), json, "{text}");
        }
        for bad in ["", "e5", "1e", "1.e5", "1e+", "--1", "1e99999", "inf"] {
            assert!(
                render(PgType::Scalar(JsonKind::Float), bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(builtin(16, "t"), "true");
        assert_eq!(builtin(16, "f"), "false");
        assert!(render(PgType::Scalar(JsonKind::Bool), "true").is_err());
    }

    #[test]
    fn strings_are_escaped_as_postgres_escapes_them() {
        assert_eq!(
            builtin(25, "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{7f}é"),
            "\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\u{7f}é\""
        );
        assert_eq!(builtin(17, "\\x0102"), "\"\\\\x0102\"");
        assert_eq!(
            builtin(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(
            builtin(1266, "10:00:00+05"),
            "\"10:00:00+05\"",
            "timetz as text"
        );
        assert_eq!(builtin(1186, "1 day 02:00:00"), "\"1 day 02:00:00\"");
        assert_eq!(
            render(PgType::Scalar(JsonKind::String), "").unwrap(),
            "\"\""
        );
        let mut out = String::new();
        assert_eq!(
            write_json(&mut out, PgType::Scalar(JsonKind::String), b"\xff"),
            Err(ValueError::NotUtf8)
        );
    }

    #[test]
    fn timestamps_get_a_t_and_offsets_get_minutes() {
        assert_eq!(
            builtin(1114, "2024-01-02 03:04:05.123456"),
            "\"2024-01-02T03:04:05.123456\""
        );
        assert_eq!(
            builtin(1114, "0044-03-15 10:00:00 BC"),
            "\"0044-03-15T10:00:00 BC\""
        );
        assert_eq!(builtin(1114, "infinity"), "\"infinity\"");
        assert_eq!(builtin(1184, "-infinity"), "\"-infinity\"");
        assert_eq!(
            builtin(1184, "2024-01-02 03:04:05.5+00"),
            "\"2024-01-02T03:04:05.5+00:00\""
        );
        assert_eq!(
            builtin(1184, "2024-01-02 08:49:05+05:45"),
            "\"2024-01-02T08:49:05+05:45\""
        );
        assert_eq!(
            builtin(1184, "1850-01-01 05:41:16+05:41:16"),
            "\"1850-01-01T05:41:16+05:41:16\""
        );
        assert_eq!(
            builtin(1184, "0044-03-15 10:00:00-03 BC"),
            "\"0044-03-15T10:00:00-03:00 BC\""
        );
        assert_eq!(
            builtin(1082, "2024-01-02"),
            "\"2024-01-02\"",
            "date as text"
        );
        for bad in [
            "",
            "2024-01-02",
            "2024-01-02T03:04:05",
            "soon",
            "2024-01-02 03:04:05\"",
        ] {
            assert!(
                render(PgType::Scalar(JsonKind::Timestamp), bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(render(PgType::Scalar(JsonKind::Timestamptz), "2024-01-02 03:04:05").is_err());
    }

    #[test]
    fn json_is_validated_and_compacted() {
        assert_eq!(
            builtin(
                114,
                " { \"b\" : 1 ,\n \"a\":[ 1 , 2.5e3, -0, \"x\\\"\\u00e9\" ], \"a\": {} , \"c\": [ ] }\t"
            ),
            "{\"b\":1,\"a\":[1,2.5e3,-0,\"x\\\"\\u00e9\"],\"a\":{},\"c\":[]}"
        );
        assert_eq!(
            builtin(3802, "{\"a\": [1, \"x\"], \"b\": null}"),
            "{\"a\":[1,\"x\"],\"b\":null}"
        );
        assert_eq!(builtin(3802, "\"just a string\""), "\"just a string\"");
        assert_eq!(builtin(3802, "true"), "true");
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(builtin(114, &deep), deep);
        let deep_objects = format!("{}1{}", "{\"k\":".repeat(200), "}".repeat(200));
        assert_eq!(builtin(114, &deep_objects), deep_objects);
        for bad in [
            "",
            "{",
            "}",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{\"a\":1,}",
            "01",
            "1.",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\nb\"",
            "tru",
            "nul",
            "[1]]",
            "[1] x",
            "{\"a\":1]",
            "[}",
            "\"open",
        ] {
            assert!(
                render(PgType::Scalar(JsonKind::Json), bad).is_err(),
                "{bad:?}"
            );
        }
    }

    fn text_array() -> PgType {
        TypeRegistry::new().resolve(1009)
    }

    #[test]
    fn arrays_become_nested_json_arrays() {
        assert_eq!(builtin(1007, "{1,2,3}"), "[1,2,3]");
        assert_eq!(builtin(1007, "{}"), "[]");
        assert_eq!(builtin(1007, "{{1,2},{3,NULL}}"), "[[1,2],[3,null]]");
        assert_eq!(builtin(1007, "[0:2]={1,2,3}"), "[1,2,3]");
        assert_eq!(builtin(1007, "[-1:0][1:2]={{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            render(
                text_array(),
                r#"{NULL,"a b","NULL","","x\"y","a\\b",plain,"c,d","{e}",é}"#
            )
            .unwrap(),
            r#"[null,"a b","NULL","","x\"y","a\\b","plain","c,d","{e}","é"]"#
        );
        assert_eq!(builtin(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(
            builtin(1022, "{1.5e-10,NaN,-Infinity}"),
            "[0.00000000015,\"NaN\",\"-Infinity\"]"
        );
        assert_eq!(builtin(1231, "{1.50,NaN}"), "[1.50,\"NaN\"]");
        assert_eq!(
            builtin(
                1185,
                r#"{"2024-01-02 08:49:05+05:45","2024-01-02 03:04:05+00"}"#
            ),
            r#"["2024-01-02T08:49:05+05:45","2024-01-02T03:04:05+00:00"]"#
        );
        assert_eq!(
            builtin(3807, r#"{"{\"a\": [1, \"x\\\"y\"]}",NULL,"[1, 2]"}"#),
            r#"[{"a":[1,"x\"y"]},null,[1,2]]"#
        );
        assert_eq!(
            builtin(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        assert_eq!(builtin(1001, r#"{"\\x0102"}"#), r#"["\\x0102"]"#);
        assert_eq!(builtin(22, "1 2 -3"), "[1,2,-3]");
        assert_eq!(builtin(30, "0 1"), "[\"0\",\"1\"]");
        assert_eq!(builtin(22, ""), "[]");
    }

    #[test]
    fn malformed_arrays_are_refused() {
        for bad in [
            "",
            "1,2",
            "{",
            "{1,2",
            "{1,,2}",
            "{1,}",
            "{,1}",
            "{1}}",
            "{1} ",
            "{\"a}",
            "{\"a\"x}",
            "{{1},2",
            "[1:2]{1,2}",
            "[a]={1}",
            "{1\\,2}",
            "{{{{{{{1}}}}}}}",
            "{\"a\\\"}",
        ] {
            assert!(render(text_array(), bad).is_err(), "{bad:?}");
        }
        let err = render(TypeRegistry::new().resolve(1007), "{1,x}").unwrap_err();
        assert_eq!(
            err,
            ValueError::Invalid {
                kind: "integer",
                offset: 3
            }
        );
        assert_eq!(
            builtin(1007, "{{{{{{1}}}}}}"),
            "[[[[[[1]]]]]]",
            "six dimensions"
        );
    }

    #[test]
    fn commit_timestamps_are_utc_milliseconds() {
        assert_eq!(format_commit_timestamp(0), "2000-01-01T00:00:00.000Z");
        assert_eq!(format_commit_timestamp(1_999), "2000-01-01T00:00:00.001Z");
        assert_eq!(format_commit_timestamp(-1), "1999-12-31T23:59:59.999Z");
        // 2024-02-29 12:34:56.789012 UTC.
        assert_eq!(
            format_commit_timestamp(762_525_296_789_012),
            "2024-02-29T12:34:56.789Z"
        );
        let mut out = String::from("x");
        write_commit_timestamp(&mut out, 0);
        assert_eq!(out, "x\"2000-01-01T00:00:00.000Z\"");
    }

    /// One array value: `dims` nested levels, leaves optional strings.
    #[derive(Clone, Debug)]
    enum Node {
        Leaf(Option<String>),
        List(Vec<Node>),
    }

    /// Renders as `array_out` does: quotes when empty, `NULL`-like, or holding `{},"\` or
    /// white space; backslash before `"` and `\`.
    fn render_literal(node: &Node, out: &mut String) {
        match node {
            Node::Leaf(None) => out.push_str("NULL"),
            Node::Leaf(Some(s)) => {
                let needs_quotes = s.is_empty()
                    || s.eq_ignore_ascii_case("NULL")
                    || s.chars().any(|c| {
                        matches!(
                            c,
                            '{' | '}'
                                | ','
                                | '"'
                                | '\\'
                                | ' '
                                | '\t'
                                | '\n'
                                | '\r'
                                | '\u{b}'
                                | '\u{c}'
                        )
                    });
                if needs_quotes {
                    out.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str(s);
                }
            }
            Node::List(items) => {
                out.push('{');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render_literal(item, out);
                }
                out.push('}');
            }
        }
    }

    fn to_value(node: &Node) -> Value {
        match node {
            Node::Leaf(None) => Value::Null,
            Node::Leaf(Some(s)) => Value::String(s.clone()),
            Node::List(items) => Value::Array(items.iter().map(to_value).collect()),
        }
    }

    /// A rectangular array of 1 to 3 dimensions, each 1 to 4 long.
    fn arb_array() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            1 => Just(None),
            1 => Just(Some("NULL".to_owned())),
            8 => any::<String>().prop_map(Some),
            4 => "[a-zA-Z{}\",\\\\ ]{0,6}".prop_map(Some),
        ];
        (
            prop::collection::vec(1usize..=4, 1..=3),
            prop::collection::vec(leaf, 64),
        )
            .prop_map(|(dims, leaves)| {
                fn build(
                    dims: &[usize],
                    leaves: &mut impl Iterator<Item = Option<String>>,
                ) -> Node {
                    match dims.split_first() {
                        None => Node::Leaf(leaves.next().flatten()),
                        Some((&n, rest)) => {
                            Node::List((0..n).map(|_| build(rest, leaves)).collect())
                        }
                    }
                }
                build(&dims, &mut leaves.into_iter().cycle())
            })
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// An array rendered as Postgres renders it comes back as the same nested values.
        #[test]
        fn random_arrays_survive_render_then_parse(node in arb_array(), lower in prop::option::of(-3i32..3)) {
            let mut literal = String::new();
            if let (Some(lower), Node::List(items)) = (lower, &node) {
                literal.push_str(&format!("[{}:{}]=", lower, lower + items.len() as i32 - 1));
            }
            render_literal(&node, &mut literal);
            let json = render(text_array(), &literal).unwrap();
            let parsed: Value = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(parsed, to_value(&node));
        }

        /// Any JSON, pretty-printed, is accepted and written back compactly.
        #[test]
        fn json_text_is_compacted(value in arb_json()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            prop_assert_eq!(scalar(JsonKind::Json, &pretty), serde_json::to_string(&value).unwrap());
        }

        /// A float in exponent or plain form is written as a plain JSON number of the same value.
        #[test]
        fn floats_keep_their_value(x in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            for text in [format!("{x:e}"), format!("{x:E}"), format!("{x}")] {
                let json = scalar(JsonKind::Float, &text);
                prop_assert!(!json.contains(['e', 'E']), "{json}");
                let back: f64 = json.parse().unwrap();
                prop_assert_eq!(back, if x == 0.0 { 0.0 } else { x });
            }
        }

        /// Commit timestamps agree with chrono's calendar.
        #[test]
        fn commit_timestamps_agree_with_chrono(micros in -70_000_000_000_000_000i64..250_000_000_000_000_000) {
            let unix = micros + POSTGRES_EPOCH_UNIX_MICROS;
            let expected = chrono::DateTime::from_timestamp_micros(unix)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            prop_assert_eq!(format_commit_timestamp(micros), expected);
        }

        /// No text makes a conversion panic, and a failure leaves the output untouched.
        #[test]
        fn conversions_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), pick in 0usize..11) {
            let types = [
                PgType::Scalar(JsonKind::Integer), PgType::Scalar(JsonKind::Float),
                PgType::Scalar(JsonKind::Numeric), PgType::Scalar(JsonKind::Bool),
                PgType::Scalar(JsonKind::Json), PgType::Scalar(JsonKind::Timestamp),
                PgType::Scalar(JsonKind::Timestamptz), PgType::Scalar(JsonKind::String),
                PgType::Array { elem: JsonKind::Json, delim: b',' },
                PgType::Array { elem: JsonKind::Timestamptz, delim: b';' },
                PgType::Vector(JsonKind::Integer),
            ];
            let mut out = String::from("kept");
            if write_json(&mut out, types[pick], &bytes).is_err() {
                prop_assert_eq!(out, "kept");
            } else {
                // JSON is copied as written, so only the other kinds are re-parsed here (a lone
                // surrogate escape or a huge exponent is valid JSON that serde_json refuses).
                let holds_json = matches!(types[pick], PgType::Scalar(JsonKind::Json) | PgType::Array { elem: JsonKind::Json, .. });
                prop_assert!(holds_json || serde_json::from_str::<Value>(&out["kept".len()..]).is_ok(), "{}", out);
            }
        }
    }
}
