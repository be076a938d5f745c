//! Shortening text to a vendor's limit with a visible marker, never a body the vendor refuses for
//! length. Each vendor counts differently (Telegram UTF-16 code units, WeCom bytes, Discord
//! characters), so the unit is part of every limit.

/// How a vendor counts the length of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Unicode scalar values (Rust `char`s).
    Chars,
    /// UTF-8 bytes.
    Bytes,
    /// UTF-16 code units (Telegram counts these).
    Utf16,
}

impl Measure {
    /// The length of `text` in this unit.
    pub fn of(self, text: &str) -> usize {
        match self {
            Measure::Chars => text.chars().count(),
            Measure::Bytes => text.len(),
            Measure::Utf16 => text.encode_utf16().count(),
        }
    }

    fn of_char(self, c: char) -> usize {
        match self {
            Measure::Chars => 1,
            Measure::Bytes => c.len_utf8(),
            Measure::Utf16 => c.len_utf16(),
        }
    }
}

/// The marker that ends a shortened text (plain text; dialects escape it where needed).
pub const MARKER: &str = "… (truncated)";

/// `text` capped at `max` characters; a cut one ends with `…`.
pub fn chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` within `limit` (in `measure`'s unit). A text over it is cut at the last line break
/// that keeps at least half of what fits (else mid-line, at a character boundary) and ends with
/// a line `marker`. When not even the marker fits, the first characters that fit.
pub fn text(text: &str, limit: usize, measure: Measure, marker: &str) -> String {
    if measure.of(text) <= limit {
        return text.to_owned();
    }
    let tail = format!("\n{marker}");
    let Some(budget) = limit.checked_sub(measure.of(&tail)) else {
        return prefix(marker, limit, measure).to_owned();
    };
    let kept = prefix(text, budget, measure);
    let kept = match kept.rfind('\n') {
        Some(at) if at >= kept.len() / 2 => &kept[..at],
        _ => kept,
    };
    format!("{kept}{tail}")
}

/// The longest prefix of `text` (at a character boundary) within `budget`.
pub fn prefix(text: &str, budget: usize, measure: Measure) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += measure.of_char(c);
        if used > budget {
            return &text[..at];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures() {
        assert_eq!(Measure::Chars.of("é👍"), 2);
        assert_eq!(Measure::Bytes.of("é👍"), 6);
        assert_eq!(Measure::Utf16.of("é👍"), 3);
    }

    #[test]
    fn short_text_is_kept() {
        assert_eq!(text("abc", 3, Measure::Chars, MARKER), "abc");
    }

    #[test]
    fn long_text_is_cut_at_a_line_and_marked() {
        let input = "line one\nline two\nline three\nline four";
        let out = text(input, 30, Measure::Chars, "…");
        assert_eq!(out, "line one\nline two\n…");
        assert!(Measure::Chars.of(&out) <= 30);
    }

    #[test]
    fn a_single_long_line_is_cut_mid_line_at_a_char_boundary() {
        for measure in [Measure::Chars, Measure::Bytes, Measure::Utf16] {
            let input = "é👍x".repeat(100);
            for limit in [20, 21, 22, 23, 50, 101] {
                let out = text(&input, limit, measure, MARKER);
                assert!(measure.of(&out) <= limit, "{measure:?} {limit} {out}");
                assert!(out.ends_with(MARKER));
            }
        }
    }

    #[test]
    fn a_limit_below_the_marker_still_fits() {
        assert_eq!(text("abcdef", 3, Measure::Chars, MARKER), "… (");
    }

    #[test]
    fn chars_caps_with_an_ellipsis() {
        assert_eq!(chars("abcdef", 4), "abc…");
        assert_eq!(chars("abcd", 4), "abcd");
    }
}
