//! The few protobuf wire rules OTLP trace export needs, written straight into a byte buffer.
//!
//! Owns: varints, field keys, length-delimited fields and nested messages, and OTLP's
//! `KeyValue` attributes. A span is encoded once, on the export task, from the plain
//! [`super::spans::SpanRecord`]: no span object, attribute list or intermediate message
//! tree is built (the OpenTelemetry SDK's `SpanData` and its conversion to prost messages
//! cost about 12% of weir's CPU when every request was traced).
//! Must not: know OTLP's message layout beyond attributes; that is `spans` and `export`.

/// Wire types used here.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `AnyValue` fields.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
/// `KeyValue` and `ArrayValue` fields.
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
const ARRAY_VALUES: u32 = 1;

pub fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

pub fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, VARINT);
    varint(buf, value);
}

pub fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&value.to_le_bytes());
}

pub fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A length-delimited field: bytes, a string, or a message encoded elsewhere.
pub fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(buf, field, LEN);
    varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

pub fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    bytes(buf, field, value.as_bytes());
}

/// A string field written from parts (a span name such as `chat gpt-4o`), with no join.
pub fn string_parts(buf: &mut Vec<u8>, field: u32, parts: &[&str]) {
    key(buf, field, LEN);
    varint(buf, parts.iter().map(|part| part.len() as u64).sum());
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
    }
}

/// Bytes a length-delimited field of `len` bytes takes, for a field number under 16 (a
/// one-byte key).
pub fn field_len(len: usize) -> usize {
    let mut prefix = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        prefix += 1;
        rest >>= 7;
    }
    1 + prefix + len
}

/// The key and length of a message field whose `len` bytes the caller writes next.
pub fn message_head(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

/// A nested message written by `write`. Its length is only known afterwards: one byte is
/// kept for it, which fits most of the small messages here, and the rare longer length
/// moves the message up by the extra bytes.
pub fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    buf.push(0);
    let start = buf.len();
    write(buf);
    let len = buf.len() - start;
    if len < 0x80 {
        buf[start - 1] = len as u8;
        return;
    }
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len as u64);
    buf[start - 1] = prefix[0];
    buf.splice(start..start, prefix[1..].iter().copied());
}

/// Attributes of one message: `KeyValue`s in its repeated field `field`.
pub struct Attributes<'a> {
    buf: &'a mut Vec<u8>,
    field: u32,
}

impl<'a> Attributes<'a> {
    pub fn new(buf: &'a mut Vec<u8>, field: u32) -> Attributes<'a> {
        Attributes { buf, field }
    }

    fn pair(&mut self, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
        message(self.buf, self.field, |kv| {
            string(kv, KV_KEY, name);
            message(kv, KV_VALUE, value);
        });
    }

    pub fn str(&mut self, name: &str, value: &str) {
        self.pair(name, |any| string(any, ANY_STRING, value));
    }

    pub fn int(&mut self, name: &str, value: i64) {
        // int64 is a two's-complement varint.
        self.pair(name, |any| uint(any, ANY_INT, value as u64));
    }

    pub fn float(&mut self, name: &str, value: f64) {
        self.pair(name, |any| fixed64(any, ANY_DOUBLE, value.to_bits()));
    }

    pub fn boolean(&mut self, name: &str, value: bool) {
        self.pair(name, |any| uint(any, ANY_BOOL, u64::from(value)));
    }

    pub fn strings<'s>(&mut self, name: &str, values: impl IntoIterator<Item = &'s str>) {
        self.pair(name, |any| {
            message(any, ANY_ARRAY, |array| {
                for value in values {
                    message(array, ARRAY_VALUES, |item| string(item, ANY_STRING, value));
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_protobuf() {
        for (value, encoded) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (300, vec![0xac, 0x02]),
            (u64::MAX, {
                let mut v = vec![0xff; 9];
                v.push(1);
                v
            }),
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, value);
            assert_eq!(buf, encoded, "{value}");
        }
    }

    #[test]
    fn field_lengths_count_key_length_and_content() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 3 << 20] {
            let mut buf = Vec::new();
            bytes(&mut buf, 2, &vec![0; len]);
            assert_eq!(field_len(len), buf.len(), "{len}");
        }
    }

    #[test]
    fn a_long_nested_message_gets_its_whole_length() {
        let text = "x".repeat(300);
        let mut buf = vec![9];
        message(&mut buf, 1, |inner| string(inner, 2, &text));
        // key 1/LEN, length 303 as a varint, then key 2/LEN, length 300, the text.
        assert_eq!(&buf[..6], &[9, 0x0a, 0xaf, 0x02, 0x12, 0xac]);
        assert_eq!(buf.len(), 1 + 1 + 2 + 303);
    }
}
