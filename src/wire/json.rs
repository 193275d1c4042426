//! Reading JSON without copying: a string borrowed from the body it was read from.
//!
//! Owns: [`JsonStr`]. serde's own `Cow<str>` always copies when read as a map's key or a
//! sequence's item (it borrows only through `#[serde(borrow)]` on a derived field), which
//! puts an allocation on the request path for every field name.
//! Must not: hold anything but the text.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A JSON string: borrowed from the input when it has no escapes, owned when it had to be
/// unescaped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JsonStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(JsonStrVisitor)
    }
}

struct JsonStrVisitor;

impl<'de> Visitor<'de> for JsonStrVisitor {
    type Value = JsonStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Owned(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_unless_unescaping() {
        let plain: JsonStr<'_> = serde_json::from_str(r#""model""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("model")));
        let escaped: JsonStr<'_> = serde_json::from_str(r#""mo\u0064el""#).unwrap();
        assert!(matches!(escaped.0, Cow::Owned(ref s) if s == "model"));
        let keys: Vec<(JsonStr<'_>, u8)> =
            serde_json::from_str::<std::collections::BTreeMap<JsonStr<'_>, u8>>(r#"{"a":1,"b":2}"#)
                .unwrap()
                .into_iter()
                .collect();
        assert!(keys.iter().all(|(key, _)| matches!(key.0, Cow::Borrowed(_))));
    }
}
