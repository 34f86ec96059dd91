//! The serde `Deserializer` over a [`Node`] tree: errors carry the path and line of the node
//! they were found at.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::{Kind, Node};

/// A deserialization error with where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// What is wrong.
    pub message: String,
    /// The path of the node it was found at, once known.
    pub path: Option<String>,
    /// The line of that node, once known.
    pub line: Option<usize>,
}

impl Error {
    /// An error found at `path`, line `line`.
    pub fn at(path: &str, line: usize, message: impl Into<String>) -> Self {
        Error { message: message.into(), path: Some(path.to_owned()), line: Some(line) }
    }

    /// Attaches a location unless one is already attached (the innermost wins).
    fn locate(mut self, path: &str, line: usize) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
            self.line = Some(line);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error { message: msg.to_string(), path: None, line: None }
    }
}

/// Deserializes `T` from `node`, whose path is `path`.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node, path: &str) -> Result<T, Error> {
    T::deserialize(De { node, path: path.to_owned() }).map_err(|e| e.locate(path, node.line))
}

/// A deserializer for one node.
pub struct De<'a> {
    node: &'a Node,
    path: String,
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

impl<'a> De<'a> {
    fn unexpected(&self) -> de::Unexpected<'a> {
        match &self.node.kind {
            // A plain `-1` or `2.5` was written as a number: say so, not "string".
            Kind::Scalar { text, plain: true } => match (text.parse::<i64>(), text.parse::<f64>()) {
                (Ok(i), _) => de::Unexpected::Signed(i),
                (_, Ok(f)) => de::Unexpected::Float(f),
                _ if text == "true" || text == "false" => de::Unexpected::Bool(text == "true"),
                _ => de::Unexpected::Str(text),
            },
            Kind::Scalar { text, .. } => de::Unexpected::Str(text),
            Kind::Seq(_) => de::Unexpected::Seq,
            Kind::Map(_) => de::Unexpected::Map,
        }
    }

    fn scalar(&self) -> Option<&'a str> {
        match &self.node.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    fn parse<T: std::str::FromStr, V: Visitor<'a>>(&self, visitor: &V) -> Result<T, Error> {
        self.scalar().and_then(|s| s.parse().ok()).ok_or_else(|| de::Error::invalid_type(self.unexpected(), visitor))
    }

    fn at<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        r.map_err(|e| e.locate(&self.path, self.node.line))
    }
}

macro_rules! number {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let v: $ty = self.parse(&visitor)?;
            let r = visitor.$visit(v);
            self.at(r)
        }
    };
}

impl<'de> Deserializer<'de> for De<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Map(_) => return self.deserialize_map(visitor),
            Kind::Seq(_) => return self.deserialize_seq(visitor),
            _ if self.node.is_null() => visitor.visit_unit(),
            Kind::Scalar { text, plain: true } => {
                if let Ok(i) = text.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = text.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if let Ok(f) = text.parse::<f64>() {
                    visitor.visit_f64(f)
                } else if text == "true" || text == "false" {
                    visitor.visit_bool(text == "true")
                } else {
                    visitor.visit_str(text)
                }
            }
            Kind::Scalar { text, .. } => visitor.visit_str(text),
        };
        self.at(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.scalar() {
            Some("true") => visitor.visit_bool(true),
            Some("false") => visitor.visit_bool(false),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.at(r)
    }

    number!(deserialize_i8, visit_i8, i8);
    number!(deserialize_i16, visit_i16, i16);
    number!(deserialize_i32, visit_i32, i32);
    number!(deserialize_i64, visit_i64, i64);
    number!(deserialize_u8, visit_u8, u8);
    number!(deserialize_u16, visit_u16, u16);
    number!(deserialize_u32, visit_u32, u32);
    number!(deserialize_u64, visit_u64, u64);
    number!(deserialize_f32, visit_f32, f32);
    number!(deserialize_f64, visit_f64, f64);

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.scalar() {
            Some(s) => visitor.visit_str(s),
            None => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.at(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(De { node: self.node, path: self.path.clone() })
        };
        self.at(r)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &visitor))
        };
        self.at(r)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let r = visitor.visit_newtype_struct(De { node: self.node, path });
        self.at(r)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Seq(items) => visitor.visit_seq(Seq { items: items.iter().enumerate(), path: &self.path }),
            _ if self.node.is_null() => visitor.visit_seq(Seq { items: [].iter().enumerate(), path: &self.path }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.at(r)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Map(entries) => visitor.visit_map(Map { entries: entries.iter(), value: None, path: &self.path }),
            // `options:` with nothing after it reads as an empty mapping.
            _ if self.node.is_null() => visitor.visit_map(Map { entries: [].iter(), value: None, path: &self.path }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.at(r)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let r = match self.scalar() {
            Some(s) => visitor.visit_enum(s.into_deserializer()),
            None => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.at(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { char bytes byte_buf }
}

struct Seq<'a, I> {
    items: I,
    path: &'a str,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'de Node)>> SeqAccess<'de> for Seq<'a, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => {
                let path = format!("{}[{i}]", self.path);
                seed.deserialize(De { node, path: path.clone() }).map(Some).map_err(|e| e.locate(&path, node.line))
            }
        }
    }
}

struct Map<'a, 'de, I> {
    entries: I,
    value: Option<(String, &'de Node)>,
    path: &'a str,
}

impl<'de, 'a, I: Iterator<Item = &'de (Node, Node)>> MapAccess<'de> for Map<'a, 'de, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((k, v)) = self.entries.next() else { return Ok(None) };
        let name = k.as_str().unwrap_or("?");
        let path = child_path(self.path, name);
        self.value = Some((path.clone(), v));
        // An unknown field is refused here, by the key: point at the key's line.
        seed.deserialize(De { node: k, path: path.clone() }).map(Some).map_err(|e| e.locate(&path, k.line))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((path, node)) = self.value.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        seed.deserialize(De { node, path: path.clone() }).map_err(|e| e.locate(&path, node.line))
    }
}

impl Error {
    /// This error with a location attached if it has none yet.
    pub fn located(self, path: &str, line: usize) -> Self {
        self.locate(path, line)
    }
}
