//! The keys expected at each place of the file, read from the raw schema itself.
//!
//! A walker deserializer drives `RawConfig`'s derived `Deserialize` once, answering every
//! struct with all of its fields, every map with one entry and every list with one item, and
//! records the field list of each struct it meets. Unknown-key messages list those fields, so
//! they cannot drift from `raw.rs`.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, Error};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::deserialize::Seg;
use crate::config::raw::RawConfig;
use crate::config::yaml::join_key;

/// What a place in the schema holds. Scalars are not recorded.
enum Shape {
    Struct(&'static [&'static str]),
    Map,
    List,
}

/// Shapes by pattern: struct fields by name, `*` for any map key, `[]` for any list item.
static SCHEMA: LazyLock<HashMap<String, Shape>> = LazyLock::new(|| {
    let mut shapes = HashMap::new();
    // Should the walk fail part-way (a field type it cannot answer), the places after it just
    // lose their hint; `schema_covers_the_last_section` guards against that.
    let _ = RawConfig::deserialize(Walker { shapes: &mut shapes, path: String::new() });
    shapes
});

/// The keys allowed in the mapping at `parent`, in schema order; `None` where any key goes.
pub(super) fn expected_keys(parent: &[Seg]) -> Option<&'static [&'static str]> {
    let mut pattern = String::new();
    for seg in parent {
        pattern = match (SCHEMA.get(&pattern)?, seg) {
            (Shape::Struct(_), Seg::Key(key)) => join_key(&pattern, key),
            (Shape::Map, Seg::Key(_)) => join_key(&pattern, "*"),
            (Shape::List, Seg::Index(_)) => format!("{pattern}[]"),
            _ => return None,
        };
    }
    match SCHEMA.get(&pattern)? {
        Shape::Struct(fields) => Some(fields),
        Shape::Map | Shape::List => None,
    }
}

// === impl Walker ===

struct Walker<'s> {
    shapes: &'s mut HashMap<String, Shape>,
    path: String,
}

impl Walker<'_> {
    fn child(&mut self, path: String) -> Walker<'_> {
        Walker { shapes: self.shapes, path }
    }
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.shapes.insert(self.path.clone(), Shape::List);
        visitor.visit_seq(OneItem { walker: Some(self) })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.shapes.insert(self.path.clone(), Shape::Map);
        visitor.visit_map(Fields { walker: self, keys: ["*"].iter(), next: None })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.shapes.insert(self.path.clone(), Shape::Struct(fields));
        visitor.visit_map(Fields { walker: self, keys: fields.iter(), next: None })
    }

    // Scalars get a neutral value of the type asked for; the rest has no use in the schema.
    serde::forward_to_deserialize_any! {
        unit unit_struct bytes byte_buf newtype_struct tuple tuple_struct enum ignored_any
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char(' ')
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
}

/// A map whose keys are the given names, each value walked at its own path.
struct Fields<'w, 's> {
    walker: Walker<'s>,
    keys: std::slice::Iter<'w, &'static str>,
    next: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(&key) = self.keys.next() else { return Ok(None) };
        self.next = Some(key);
        seed.deserialize(BorrowedStrDeserializer::<Error>::new(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let path = join_key(&self.walker.path, self.next.unwrap_or_default());
        seed.deserialize(self.walker.child(path))
    }
}

/// A list of exactly one item.
struct OneItem<'s> {
    walker: Option<Walker<'s>>,
}

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some(mut walker) = self.walker.take() else { return Ok(None) };
        let path = format!("{}[]", walker.path);
        seed.deserialize(walker.child(path)).map(Some)
    }
}
