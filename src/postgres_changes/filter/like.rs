//! SQL `LIKE` / `ILIKE` (PROTOCOL.md 6.2): `%` matches any run of characters, `_` exactly one
//! character, and a backslash makes the next character literal.
//!
//! The pattern is cut at its `%` runs into segments of fixed length (literal text and `_`). The
//! first segment must be a prefix, the last a suffix, and each one between is taken at its
//! leftmost place, which is optimal for such patterns; no backtracking.

/// A piece of a segment: literal text or a run of `_`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    AnyChars(usize),
}

/// Pattern text between two `%` runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Segment {
    pieces: Vec<Piece>,
    /// Length in characters.
    chars: usize,
}

impl Segment {
    fn push_char(&mut self, c: char) {
        self.chars += 1;
        if let Some(Piece::Literal(text)) = self.pieces.last_mut() {
            text.push(c);
        } else {
            self.pieces.push(Piece::Literal(c.to_string()));
        }
    }

    fn push_any(&mut self) {
        self.chars += 1;
        if let Some(Piece::AnyChars(n)) = self.pieces.last_mut() {
            *n += 1;
        } else {
            self.pieces.push(Piece::AnyChars(1));
        }
    }

    /// Matches the segment at byte `start` (a char boundary); returns where it ends.
    /// With `fold`, `text` is ASCII and literals compare ignoring ASCII case.
    fn match_at(&self, text: &str, start: usize, fold: bool) -> Option<usize> {
        let mut at = start;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => {
                    let end = at + literal.len();
                    let slice = text.as_bytes().get(at..end)?;
                    let equal = if fold {
                        slice.eq_ignore_ascii_case(literal.as_bytes())
                    } else {
                        slice == literal.as_bytes()
                    };
                    if !equal {
                        return None;
                    }
                    at = end;
                }
                Piece::AnyChars(n) => {
                    for _ in 0..*n {
                        at += text[at..].chars().next()?.len_utf8();
                    }
                }
            }
        }
        Some(at)
    }

    /// Finds the leftmost match starting at or after `from` and ending at or before `limit`;
    /// returns where it ends.
    fn find(&self, text: &str, from: usize, limit: usize, fold: bool) -> Option<usize> {
        let first_literal = match self.pieces.first() {
            Some(Piece::Literal(literal)) if !fold => Some(literal.as_str()),
            _ => None,
        };
        let mut start = from;
        while start <= limit {
            if let Some(literal) = first_literal {
                start += text[start..limit].find(literal)?;
            }
            if let Some(end) = self.match_at(text, start, fold) {
                // Segments have a fixed length, so later starts end later still.
                return (end <= limit).then_some(end);
            }
            start += text[start..].chars().next()?.len_utf8();
        }
        None
    }
}

/// A compiled `LIKE` or `ILIKE` pattern.
#[derive(Clone, Debug)]
pub(super) struct LikePattern {
    /// One more than the number of `%` runs; never empty.
    segments: Vec<Segment>,
    case_insensitive: bool,
}

/// A pattern ending in a lone backslash.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TrailingEscape;

impl LikePattern {
    /// Compiles a pattern; `case_insensitive` gives `ILIKE` (both sides lower-cased).
    pub(super) fn compile(
        pattern: &str,
        case_insensitive: bool,
    ) -> Result<LikePattern, TrailingEscape> {
        let source = if case_insensitive {
            pattern.to_lowercase()
        } else {
            pattern.to_owned()
        };
        let mut segments = vec![Segment::default()];
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            // Always at least one segment: the vec starts with one and only grows.
            let Some(current) = segments.last_mut() else {
                break;
            };
            match c {
                '%' => {
                    // `%%` is one `%`.
                    if !(current.pieces.is_empty() && segments.len() > 1) {
                        segments.push(Segment::default());
                    }
                }
                '_' => current.push_any(),
                '\\' => current.push_char(chars.next().ok_or(TrailingEscape)?),
                c => current.push_char(c),
            }
        }
        Ok(LikePattern {
            segments,
            case_insensitive,
        })
    }

    /// Whether `text` matches the whole pattern.
    pub(super) fn matches(&self, text: &str) -> bool {
        if !self.case_insensitive {
            self.run(text, false)
        } else if text.is_ascii() {
            self.run(text, true)
        } else {
            self.run(&text.to_lowercase(), false)
        }
    }

    fn run(&self, text: &str, fold: bool) -> bool {
        let (first, rest) = match self.segments.split_first() {
            Some(split) => split,
            None => return text.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            return first.match_at(text, 0, fold) == Some(text.len());
        };
        let Some(mut at) = first.match_at(text, 0, fold) else {
            return false;
        };
        let Some(suffix_start) = start_of_last_chars(text, last.chars) else {
            return false;
        };
        if suffix_start < at || last.match_at(text, suffix_start, fold) != Some(text.len()) {
            return false;
        }
        for segment in middle {
            match segment.find(text, at, suffix_start, fold) {
                Some(end) => at = end,
                None => return false,
            }
        }
        true
    }
}

/// The byte index where the last `n` characters of `text` begin.
fn start_of_last_chars(text: &str, n: usize) -> Option<usize> {
    let mut at = text.len();
    for _ in 0..n {
        at -= text[..at].chars().next_back()?.len_utf8();
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(pattern: &str, text: &str) -> bool {
        LikePattern::compile(pattern, false).unwrap().matches(text)
    }

    fn ilike(pattern: &str, text: &str) -> bool {
        LikePattern::compile(pattern, true).unwrap().matches(text)
    }

    #[test]
    fn like_basics() {
        assert!(like("abc", "abc"));
        assert!(!like("abc", "abcd"));
        assert!(!like("abc", "ABC"));
        assert!(like("", ""));
        assert!(!like("", "a"));
        assert!(like("%", ""));
        assert!(like("%", "anything"));
        assert!(like("a%", "abc"));
        assert!(!like("a%", "bac"));
        assert!(like("%c", "abc"));
        assert!(like("%b%", "abc"));
        assert!(!like("%d%", "abc"));
        assert!(like("a_c", "abc"));
        assert!(!like("a_c", "ac"));
        assert!(like("___", "äöü"));
        assert!(!like("__", "äöü"));
        assert!(like("a%b%c", "a-b-c"));
        assert!(like("a%b%c", "abc"));
        assert!(!like("a%b%c", "acb"));
        assert!(like("%ab%ab%", "xabyabz"));
        assert!(!like("%ab%ab%", "xaby"));
        assert!(like("%%a%%", "ba"));
        // Prefix and suffix must not overlap.
        assert!(!like("ab%ba", "aba"));
        assert!(like("ab%ba", "abba"));
        assert!(like("%_%", "x"));
        assert!(!like("%_%", ""));
    }

    #[test]
    fn like_escapes() {
        assert!(like(r"100\%", "100%"));
        assert!(!like(r"100\%", "1000"));
        assert!(like(r"a\_b", "a_b"));
        assert!(!like(r"a\_b", "axb"));
        assert!(like(r"a\\b", r"a\b"));
        assert!(like(r"\a", "a"));
        assert_eq!(
            LikePattern::compile(r"abc\", false).unwrap_err(),
            TrailingEscape
        );
    }

    #[test]
    fn ilike_folds_case() {
        assert!(ilike("ABC%", "abcdef"));
        assert!(ilike("abc%", "ABCDEF"));
        assert!(ilike("%É%", "café"));
        assert!(ilike("CAFÉ", "café"));
        assert!(!ilike("cafe", "café"));
        assert!(ilike("_a_", "BAB"));
    }
}
