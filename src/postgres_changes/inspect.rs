//! Elixir-style renderings of client input, for the error texts the original builds with
//! `inspect/1` (PROTOCOL.md 6.1 and 6.2): ``Error parsing `filter` params: ["foo", "hey"]`` and
//! the `No subscription params provided...` message.
//!
//! Follows Elixir's default `Inspect.Opts`: strings of printable characters are quoted with
//! escapes, other strings become `<<bytes>>`, long strings are cut at 4096 bytes (`"..." <> ...`),
//! and lists and maps show at most 50 entries. Map keys come sorted, as Elixir prints small maps.

use std::fmt::Write as _;

use serde_json::Value;

/// Strings longer than this many bytes are cut (Elixir's `printable_limit`).
const PRINTABLE_LIMIT: usize = 4096;
/// Lists and maps show at most this many entries (Elixir's `limit`).
const COLLECTION_LIMIT: usize = 50;

/// Renders a list of strings, e.g. `["foo", "hey"]`.
pub(crate) fn inspect_str_list(items: &[&str]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        inspect_str(item, &mut out);
    }
    out.push(']');
    out
}

/// Renders a JSON value as Elixir prints the term Jason decodes it to.
pub(crate) fn inspect_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => inspect_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if i == COLLECTION_LIMIT {
                    out.push_str("...");
                    break;
                }
                inspect_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push_str("%{");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if i == COLLECTION_LIMIT {
                    out.push_str("...");
                    break;
                }
                inspect_str(key, out);
                out.push_str(" => ");
                inspect_json(item, out);
            }
            out.push('}');
        }
    }
}

/// Whether Elixir's `String.printable?/1` holds for this character.
fn printable(c: char) -> bool {
    matches!(c as u32,
        0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
        || matches!(
            c,
            '\n' | '\r' | '\t' | '\u{0B}' | '\u{08}' | '\u{0C}' | '\u{1B}' | '\u{7F}' | '\u{07}'
        )
}

/// Renders one string: `"text"` with Elixir's escapes, or `<<1, 2>>` when not printable.
pub(crate) fn inspect_str(s: &str, out: &mut String) {
    let (head, cut) = match s.len() > PRINTABLE_LIMIT {
        true => {
            let mut end = PRINTABLE_LIMIT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            (&s[..end], true)
        }
        false => (s, false),
    };
    if !head.chars().all(printable) {
        out.push_str("<<");
        for (i, b) in head.bytes().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{b}");
        }
        out.push_str(if cut { ", ...>>" } else { ">>" });
        return;
    }
    out.push('"');
    let mut chars = head.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '#' if chars.peek() == Some(&'{') => out.push_str("\\#"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0B}' => out.push_str("\\v"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\u{1B}' => out.push_str("\\e"),
            '\u{7F}' => out.push_str("\\d"),
            '\u{07}' => out.push_str("\\a"),
            c => out.push(c),
        }
    }
    out.push('"');
    if cut {
        out.push_str(" <> ...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        let mut out = String::new();
        inspect_str(s, &mut out);
        out
    }

    #[test]
    fn strings_render_as_elixir_inspects_them() {
        assert_eq!(inspect_str_list(&["foo", "hey"]), r#"["foo", "hey"]"#);
        assert_eq!(inspect_str_list(&["undefined"]), r#"["undefined"]"#);
        assert_eq!(show(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(show("x#{y}"), r#""x\#{y}""#);
        assert_eq!(show("#"), r##""#""##);
        assert_eq!(show("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(show("café ☕"), "\"café ☕\"");
        assert_eq!(show("a\u{1}b"), "<<97, 1, 98>>");
        assert_eq!(show("\u{85}"), "<<194, 133>>");
    }

    #[test]
    fn long_strings_are_cut() {
        let long = "é".repeat(3000);
        let shown = show(&long);
        assert!(shown.ends_with("\" <> ..."));
        assert!(shown.len() < PRINTABLE_LIMIT + 20);
    }

    #[test]
    fn json_renders_as_the_decoded_elixir_term() {
        let value: Value =
            serde_json::from_str(r#"{"table":null,"event":"*","n":[1,2.5,true],"m":{}}"#).unwrap();
        let mut out = String::new();
        inspect_json(&value, &mut out);
        assert_eq!(
            out,
            r#"%{"event" => "*", "m" => %{}, "n" => [1, 2.5, true], "table" => nil}"#
        );
        let many = Value::Array((0..60).map(Value::from).collect());
        let mut out = String::new();
        inspect_json(&many, &mut out);
        assert!(out.ends_with("48, 49, ...]"), "{out}");
    }
}
