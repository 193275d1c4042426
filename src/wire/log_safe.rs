//! Client text made safe for a log line.
//!
//! Owns: [`LogSafe`], the `Display` wrapper every log field that carries client (or
//! upstream) text goes through, so a model name or an error quoting a request cannot split an
//! access line or forge one: control characters (CR, LF, tab, escape, ...) and the Unicode
//! line separators are written as escapes, and a backslash is doubled so an escape in the
//! output always means one in the input.
//! Must not: truncate or otherwise change printable text.

use std::fmt::{self, Write as _};

/// Displays `self.0` with control characters and line separators escaped.
#[derive(Debug, Clone, Copy)]
pub struct LogSafe<'a>(pub &'a str);

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if !text.chars().any(needs_escape) {
            return f.write_str(text);
        }
        for c in text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        let forged = "gpt\r\n2026-01-01T00:00:00Z INFO weir::access: request_id=forged\u{1b}[31m\u{2028}";
        let shown = LogSafe(forged).to_string();
        assert!(!shown.contains(['\r', '\n', '\u{1b}', '\u{2028}']), "{shown}");
        assert_eq!(shown, "gpt\\r\\n2026-01-01T00:00:00Z INFO weir::access: request_id=forged\\u{001b}[31m\\u{2028}");
    }

    #[test]
    fn plain_text_is_unchanged_and_backslashes_are_unambiguous() {
        assert_eq!(LogSafe("gpt-4o mini é").to_string(), "gpt-4o mini é");
        // A literal `\n` in the input cannot pass for an escaped line break.
        assert_eq!(LogSafe("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(LogSafe("a\nb").to_string(), "a\\nb");
    }
}
