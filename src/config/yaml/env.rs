//! `${VAR}` references: hidden from the YAML parser so they survive flow mappings, put back
//! per scalar, then expanded from the environment.

// `${VAR:-}` must work inside flow mappings (`{ api_key: ${KEY:-} }`), where a plain `}` would
// end the mapping. Before parsing, each reference is swapped for a run of private-use
// characters of the same length (so every position stays exact) that encodes its index; each
// scalar gets its references back before expansion.
const REF_START: char = '\u{E000}';
const REF_FILL: char = '\u{E001}';
const REF_DIGIT: u32 = 0xE100;

/// Hides every `${...}` (closed on the same line) from the YAML parser.
pub(super) fn protect_refs(text: &str) -> (String, Vec<String>) {
    if !text.contains("${") {
        return (text.to_string(), Vec::new());
    }
    let mut out = String::with_capacity(text.len());
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let escaped = rest[..at].ends_with('$');
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        match rest[..line_end].find('}') {
            Some(end) if !escaped && refs.len() < 256 * 256 * 256 => {
                let reference = &rest[..=end];
                let len = reference.chars().count();
                let index = refs.len() as u32;
                out.push(REF_START);
                for shift in [16, 8, 0] {
                    out.push(char::from_u32(REF_DIGIT + ((index >> shift) & 0xFF)).unwrap_or(REF_FILL));
                }
                out.extend(std::iter::repeat_n(REF_FILL, len - 4));
                refs.push(reference.to_string());
                rest = &rest[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = &rest[2..];
            }
        }
    }
    out.push_str(rest);
    (out, refs)
}

/// Puts back the references [`protect_refs`] hid in one scalar.
pub(super) fn restore_refs(text: String, refs: &[String]) -> String {
    if refs.is_empty() || !text.contains(REF_START) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != REF_START {
            out.push(c);
            continue;
        }
        let mut index = 0usize;
        for _ in 0..3 {
            let digit = chars.next().map_or(0, |d| (d as u32).wrapping_sub(REF_DIGIT));
            index = (index << 8) | (digit & 0xFF) as usize;
        }
        while chars.peek() == Some(&REF_FILL) {
            chars.next();
        }
        out.push_str(refs.get(index).map_or("", String::as_str));
    }
    out
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`. `:-` applies the default
/// when the variable is unset or empty, as in POSIX shells.
pub(super) fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with("$${") {
            out.push_str("${");
            rest = &rest[3..];
            continue;
        }
        if !rest.starts_with("${") {
            out.push('$');
            rest = &rest[1..];
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err(format!("unterminated `${{` in `{text}`: expected `${{VAR}}` or `${{VAR:-default}}`"));
        };
        let inner = &rest[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "invalid variable reference `${{{inner}}}`: expected `${{NAME}}` or `${{NAME:-default}}` (write `$${{` for a literal `${{`)"
            ));
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                ));
            }
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
