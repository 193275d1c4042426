//! An incremental Server-Sent Events reader: bytes split anywhere in, whole events out.
//!
//! Owns: line splitting across chunks, `event:` and `data:` fields, multi-line data, and the
//! bound on how much of an unfinished event is kept ([`MAX_EVENT`]).
//! Must not: interpret an event's data.

use super::StreamError;

/// Largest event (its `data` lines together) kept while waiting for its end.
pub const MAX_EVENT: usize = 1024 * 1024;

/// One complete event: its `event:` name (empty when absent) and its joined `data:` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug, Default)]
pub struct SseReader {
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
    name: String,
    data: Vec<u8>,
    /// Whether the event being read had a `data:` line (an empty one counts).
    has_data: bool,
}

impl SseReader {
    pub fn new() -> SseReader {
        SseReader::default()
    }

    /// Feeds bytes, calling `on_event` for each event they complete, in order.
    pub fn push<F>(&mut self, bytes: &[u8], on_event: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(Event<'_>) -> Result<(), StreamError> + ?Sized,
    {
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.pending.is_empty() {
                self.line(line, on_event)?;
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(line);
                self.line(&joined, on_event)?;
            }
        }
        if self.pending.len().saturating_add(rest.len()) > MAX_EVENT {
            return Err(StreamError::Malformed(format!("an event is longer than {MAX_EVENT} bytes")));
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: a last event without its closing blank line still counts.
    pub fn finish<F>(&mut self, on_event: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(Event<'_>) -> Result<(), StreamError> + ?Sized,
    {
        let line = std::mem::take(&mut self.pending);
        if !line.is_empty() {
            self.line(&line, on_event)?;
        }
        self.line(b"", on_event)
    }

    fn line<F>(&mut self, line: &[u8], on_event: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(Event<'_>) -> Result<(), StreamError> + ?Sized,
    {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.has_data {
                self.name.clear();
                return Ok(());
            }
            let name = std::mem::take(&mut self.name);
            let data = std::mem::take(&mut self.data);
            self.has_data = false;
            return on_event(Event { name: &name, data: &data });
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return Ok(()), // a comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len().saturating_add(value.len()) > MAX_EVENT {
                    return Err(StreamError::Malformed(format!("an event is longer than {MAX_EVENT} bytes")));
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.name = String::from_utf8_lossy(value).into_owned(),
            _ => {} // id, retry and fields added later
        }
        Ok(())
    }
}

/// Appends `event: NAME\ndata: JSON\n\n`.
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serialising plain JSON values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut reader = SseReader::new();
        let mut seen = Vec::new();
        let mut on = |e: Event<'_>| {
            seen.push((e.name.to_owned(), String::from_utf8_lossy(e.data).into_owned()));
            Ok(())
        };
        for chunk in chunks {
            reader.push(chunk, &mut on).unwrap();
        }
        reader.finish(&mut on).unwrap();
        seen
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let want = vec![("a".to_owned(), "1".to_owned()), (String::new(), "x\ny".to_owned())];
        assert_eq!(events(&[b"event: a\ndata: 1\n\ndata: x\ndata: y\n\n"]), want);
        assert_eq!(events(&[b"event: a\r\nda", b"ta: 1\r\n", b"\r\n: comment\ndata: x\nda", b"ta:y"]), want);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut reader = SseReader::new();
        let big = vec![b'x'; MAX_EVENT + 1];
        let err = reader.push(&big, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, StreamError::Malformed(_)));
    }
}
