//! Reading JSON without copying: a string borrowed from the body it was read from, and
//! lenient fields for views of what upstreams send.
//!
//! Owns: [`JsonStr`]. serde's own `Cow<str>` always copies when read as a map's key or a
//! sequence's item (it borrows only through `#[serde(borrow)]` on a derived field), which
//! puts an allocation on the request path for every field name.
//! The lenient fields ([`Text`], [`Uint`], [`List`], [`Obj`]) read a value in the same pass
//! as the object that holds it, and read a value of another JSON type than the one expected
//! as none, skipping it, instead of failing the object: an upstream's `null` where a string
//! was, or a field that changed type, must not lose the event around it. Kept raw and parsed
//! again field by field, a stream event was read four times over.
//! Must not: hold anything but what was read, or take malformed JSON (that still fails).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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

/// A string field; `None` for any other JSON type (or when absent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Option<Cow<'a, str>>);

/// An unsigned integer field; `None` for any other JSON type, a negative or a fraction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Uint(pub Option<u64>);

/// A list field's items, each read as `T` (itself lenient); no items for any other type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

/// An object field read as `T`; `None` for any other JSON type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj<T>(pub Option<T>);

impl<T> List<Obj<T>> {
    /// The items that are objects, skipping those of another type.
    pub fn objects(&self) -> impl Iterator<Item = &T> {
        self.0.iter().filter_map(|item| item.0.as_ref())
    }
}

impl<T> Default for List<T> {
    fn default() -> List<T> {
        List(Vec::new())
    }
}

impl<T> Default for Obj<T> {
    fn default() -> Obj<T> {
        Obj(None)
    }
}

/// What a lenient field takes of each JSON type; what it does not take reads as its default
/// (lists and objects are skipped to their end).
trait Lenient<'de>: Default {
    fn borrowed_str(_: &'de str) -> Self {
        Self::default()
    }

    fn str(_: &str) -> Self {
        Self::default()
    }

    fn u64(_: u64) -> Self {
        Self::default()
    }

    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }

    fn map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

impl<'de: 'a, 'a> Lenient<'de> for Text<'a> {
    fn borrowed_str(value: &'de str) -> Self {
        Text(Some(Cow::Borrowed(value)))
    }

    fn str(value: &str) -> Self {
        Text(Some(Cow::Owned(value.to_owned())))
    }
}

impl Lenient<'_> for Uint {
    fn u64(value: u64) -> Self {
        Uint(Some(value))
    }
}

impl<'de, T: Deserialize<'de>> Lenient<'de> for List<T> {
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
        while let Some(item) = seq.next_element::<T>()? {
            items.push(item);
        }
        Ok(List(items))
    }
}

impl<'de, T: Deserialize<'de>> Lenient<'de> for Obj<T> {
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(|value| Obj(Some(value)))
    }
}

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_u64<E>(self, value: u64) -> Result<T, E> {
        Ok(T::u64(value))
    }

    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<T, E> {
        Ok(T::borrowed_str(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<T, E> {
        Ok(T::str(value))
    }

    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::map(map)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for Uint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct View<'a> {
        #[serde(borrow)]
        name: Text<'a>,
        count: Uint,
        #[serde(borrow)]
        items: List<Obj<View<'a>>>,
    }

    #[test]
    fn lenient_fields_read_their_type_and_skip_any_other() {
        let view: View<'_> = serde_json::from_str(
            r#"{"name":"a","count":2,"items":[{"name":"b"},"odd",{"count":-1,"name":{"x":[1]}}],"more":[{}]}"#,
        )
        .unwrap();
        assert!(matches!(view.name.0, Some(Cow::Borrowed("a"))));
        assert_eq!(view.count, Uint(Some(2)));
        let items: Vec<_> = view.items.0.iter().map(|item| item.0.as_ref().map(|v| (&v.name.0, v.count))).collect();
        assert_eq!(items, [Some((&Some("b".into()), Uint(None))), None, Some((&None, Uint(None)))]);
        for odd in [r#"{"name":1,"count":"2","items":{}}"#, r#"{"name":null,"count":1.5,"items":"x"}"#] {
            assert_eq!(serde_json::from_str::<View<'_>>(odd).unwrap(), View::default(), "{odd}");
        }
        let escaped: View<'_> = serde_json::from_str(r#"{"name":"a\u0062"}"#).unwrap();
        assert_eq!(escaped.name.0.as_deref(), Some("ab"));
        assert!(serde_json::from_str::<View<'_>>(r#"{"name":"a","items":[{]}"#).is_err(), "malformed still fails");
    }

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
