//! Reading a JSON document strictly: like `serde_json::from_slice` into a `Value`, but a key
//! given twice in one object is reported at its JSON path instead of the last one silently
//! winning.
//!
//! The path of a value is built only when a duplicate is found, so a large spec costs no more
//! than a plain parse.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Where a value sits, as a chain of parents: rendered to a JSON Pointer on demand.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => Ok(()),
            At::Key(parent, key) => write!(f, "{parent}/{}", token(key)),
            At::Index(parent, i) => write!(f, "{parent}/{i}"),
        }
    }
}

/// `key` as one reference token of a JSON Pointer (RFC 6901): `~` and `/` escaped.
pub(crate) fn token(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

/// Parses `bytes` into a `Value`. `Ok` carries the document and the JSON paths of every key
/// that an object repeats; `Err` is a syntax error.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict {
        at: At::Root,
        dups: &dups,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok((value, dups.into_inner()))
}

struct Strict<'a> {
    at: At<'a>,
    dups: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Strict {
            at: At::Index(&self.at, items.len()),
            dups: self.dups,
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = At::Key(&self.at, &key);
            let value = map.next_value_seed(Strict {
                at,
                dups: self.dups,
            })?;
            if object.contains_key(&key) {
                self.dups.borrow_mut().push(at.to_string());
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_at_their_paths_and_the_rest_parses_as_serde_json_does() {
        let text =
            br#"{"stack":"sim","stack":"qemu","a":[{"x":1},{"x":2,"x":3}],"a/b~":{"k":1,"k":2}}"#;
        let (v, dups) = parse(text).unwrap();
        assert_eq!(dups, ["/stack", "/a/1/x", "/a~1b~0/k"]);
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(v, plain);
        let (v, dups) =
            parse(br#"{"n": 1.5, "m": -3, "u": 18446744073709551615, "z": null}"#).unwrap();
        assert!(dups.is_empty());
        assert_eq!(v["u"], serde_json::json!(u64::MAX));
        assert!(parse(b"{\"a\": 1} x").is_err());
        assert!(parse(b"{\"a\": 1").is_err());
    }
}
