//! A structural pre-check of untrusted JSON, run before typed decoding.
//!
//! serde's derived decoders already reject wrong types and repeated *known*
//! fields, but they skip unknown fields without looking at them, keep the
//! last of two equal map keys, and accept any nesting up to serde_json's
//! recursion limit. This pass walks the whole document once, without
//! building it, and enforces: no duplicate key in any object, bounded depth,
//! bounded array length and object size. It also picks out the top-level
//! `v`, `type` and `id` so that a later typed error can name the request.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::ProtocolError;

/// Caps for untrusted input. The defaults fit every v1 message with room to
/// spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest message, in bytes (64 KiB: Matrix's event cap).
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects.
    pub max_depth: usize,
    /// Most elements in one array.
    pub max_array: usize,
    /// Most keys in one object.
    pub max_keys: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 16,
            max_array: 256,
            max_keys: 64,
        }
    }
}

/// The top-level fields every message has, read during the guard pass.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) v: Option<u64>,
    pub(crate) ty: Option<String>,
    pub(crate) id: Option<String>,
}

/// Runs the guard pass over `input`.
pub(crate) fn check(input: &str, limits: &DecodeLimits) -> Result<Head, ProtocolError> {
    if input.len() > limits.max_bytes {
        return Err(ProtocolError::TooLarge {
            len: input.len(),
            max: limits.max_bytes,
        });
    }
    let mut de = serde_json::Deserializer::from_str(input);
    let mut head = Head::default();
    let result = de
        .deserialize_any(TopVisitor {
            limits,
            head: &mut head,
        })
        .and_then(|()| de.end());
    match result {
        Ok(()) => Ok(head),
        Err(e) => Err(classify(e)),
    }
}

const DUP: &str = "\u{1}dup:";
const CAP: &str = "\u{1}cap:";

fn classify(e: serde_json::Error) -> ProtocolError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix(DUP) {
        let key = rest.split(" at line ").next().unwrap_or(rest);
        return ProtocolError::DuplicateKey {
            key: key.to_owned(),
        };
    }
    if let Some(rest) = msg.strip_prefix(CAP) {
        let detail = rest.split(" at line ").next().unwrap_or(rest);
        return ProtocolError::OverLimits {
            detail: detail.to_owned(),
        };
    }
    if msg.starts_with("recursion limit exceeded") {
        return ProtocolError::OverLimits {
            detail: "nesting too deep".to_owned(),
        };
    }
    ProtocolError::Malformed { detail: msg }
}

fn over<E: de::Error>(what: fmt::Arguments<'_>) -> E {
    E::custom(format_args!("{CAP}{what}"))
}

/// A key, borrowed from the input when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v))
    }
}

/// Tracks the keys of one object; small objects use a linear scan.
struct KeySet<'de> {
    keys: Vec<Key<'de>>,
}

impl<'de> KeySet<'de> {
    fn insert<E: de::Error>(&mut self, key: Key<'de>, limits: &DecodeLimits) -> Result<(), E> {
        if self.keys.iter().any(|k| k.as_str() == key.as_str()) {
            return Err(E::custom(format_args!("{DUP}{}", key.as_str())));
        }
        if self.keys.len() >= limits.max_keys {
            return Err(over(format_args!(
                "object with more than {} keys",
                limits.max_keys
            )));
        }
        self.keys.push(key);
        Ok(())
    }
}

/// Walks any value at a given depth.
#[derive(Clone, Copy)]
struct Walk<'l> {
    depth: usize,
    limits: &'l DecodeLimits,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Walk<'_> {
    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= self.limits.max_depth {
            return Err(over(format_args!(
                "nesting deeper than {}",
                self.limits.max_depth
            )));
        }
        Ok(Walk {
            depth: self.depth + 1,
            limits: self.limits,
        })
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut n = 0usize;
        while seq.next_element_seed(inner)?.is_some() {
            n += 1;
            if n > self.limits.max_array {
                return Err(over(format_args!(
                    "array longer than {}",
                    self.limits.max_array
                )));
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut keys = KeySet { keys: Vec::new() };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.insert(key, self.limits)?;
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// The top level must be an object; it also records `v`, `type` and `id`.
struct TopVisitor<'a> {
    limits: &'a DecodeLimits,
    head: &'a mut Head,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = Walk {
            depth: 1,
            limits: self.limits,
        };
        let mut keys = KeySet { keys: Vec::new() };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key.as_str() {
                "v" | "type" | "id" => {
                    let value = map.next_value_seed(HeadSeed(inner))?;
                    match (key.as_str(), value) {
                        ("v", HeadValue::U64(v)) => self.head.v = Some(v),
                        ("type", HeadValue::Str(t)) => self.head.ty = Some(t),
                        ("id", HeadValue::Str(i)) => self.head.id = Some(i),
                        _ => {}
                    }
                }
                _ => map.next_value_seed(inner)?,
            }
            keys.insert(key, self.limits)?;
        }
        Ok(())
    }
}

/// A top-level value of interest: kept when it is a number or a string,
/// walked (and checked) like any other value otherwise.
enum HeadValue {
    U64(u64),
    Str(String),
    Other,
}

struct HeadSeed<'l>(Walk<'l>);

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = HeadValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HeadValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = HeadValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<HeadValue, E> {
        Ok(HeadValue::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<HeadValue, E> {
        Ok(HeadValue::Other)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HeadValue, E> {
        Ok(HeadValue::U64(v))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<HeadValue, E> {
        Ok(HeadValue::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<HeadValue, E> {
        Ok(HeadValue::Str(v.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<HeadValue, E> {
        Ok(HeadValue::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<HeadValue, A::Error> {
        self.0.visit_seq(seq).map(|()| HeadValue::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeadValue, A::Error> {
        self.0.visit_map(map).map(|()| HeadValue::Other)
    }
}
