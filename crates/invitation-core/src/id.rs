//! Validated identifiers: users, devices, calls and requests.
//!
//! All four share one grammar, chosen so an id is safe in a URL path, a log
//! line, a metrics label and a JSON string without escaping:
//!
//! * 1 to 64 bytes ([`MAX_ID_LEN`]);
//! * only ASCII letters, digits and `_ - . : @ +`.
//!
//! Ids are reference counted (`Arc<str>`), so cloning one into an event, a
//! timer key or a log entry costs a counter increment, not an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'+')
}

fn validate(kind: &'static str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { field: kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(ValidationError::TooLong {
            field: kind,
            max: MAX_ID_LEN,
            len: s.len(),
        });
    }
    if let Some(bad) = s.bytes().find(|b| !is_id_byte(*b)) {
        return Err(ValidationError::BadCharacter {
            field: kind,
            byte: bad,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` against the id grammar (see the [module docs](self)).
            pub fn new(s: impl AsRef<str>) -> Result<Self, ValidationError> {
                let s = s.as_ref();
                validate($kind, s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, ValidationError> {
                validate($kind, &s)?;
                Ok(Self(Arc::from(s)))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(s: &str) -> Result<Self, ValidationError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A user: the person being called, as named by the authentication layer
    /// (the `sub` of a token). Every device of the user rings.
    UserId,
    "user_id"
);
id_type!(
    /// One device (app install, browser tab) of a user. A user may have many.
    DeviceId,
    "device_id"
);
id_type!(
    /// One call invitation. It doubles as the media room id once accepted.
    CallId,
    "call_id"
);
id_type!(
    /// A client-chosen id on every command; a retry reuses it so that the
    /// command takes effect at most once (idempotency).
    RequestId,
    "request_id"
);

/// Makes call ids. The core never draws randomness itself: the server
/// injects an unpredictable generator (call ids must not be guessable), tests
/// inject [`SequentialCallIds`].
pub trait CallIdGenerator: Send {
    /// Returns an id never returned before by this generator.
    fn next_call_id(&mut self) -> CallId;
}

/// A deterministic generator: `prefix-1`, `prefix-2`, ... For tests,
/// simulations and single-process use where guessability does not matter.
#[derive(Debug, Clone)]
pub struct SequentialCallIds {
    prefix: String,
    next: u64,
}

impl SequentialCallIds {
    /// Ids will read `{prefix}-{n}`; the prefix must itself be a valid id
    /// short enough to leave room for the counter (at most 40 bytes).
    pub fn new(prefix: &str) -> Result<Self, ValidationError> {
        validate("call_id", prefix)?;
        if prefix.len() > 40 {
            return Err(ValidationError::TooLong {
                field: "call_id",
                max: 40,
                len: prefix.len(),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            next: 1,
        })
    }
}

impl Default for SequentialCallIds {
    fn default() -> Self {
        Self {
            prefix: "call".to_owned(),
            next: 1,
        }
    }
}

impl CallIdGenerator for SequentialCallIds {
    fn next_call_id(&mut self) -> CallId {
        let id = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        CallId(Arc::from(id))
    }
}

impl<F> CallIdGenerator for F
where
    F: FnMut() -> CallId + Send,
{
    fn next_call_id(&mut self) -> CallId {
        self()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["a", "alice", "user-1_2.3:x@y+z", &"x".repeat(64)] {
            assert!(UserId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(
            UserId::new(""),
            Err(ValidationError::Empty { field: "user_id" })
        );
        assert!(matches!(
            DeviceId::new("x".repeat(65)),
            Err(ValidationError::TooLong { len: 65, .. })
        ));
        for bad in ["a b", "a\u{0}", "a\n", "é", "a/b", "a\"b"] {
            assert!(
                matches!(CallId::new(bad), Err(ValidationError::BadCharacter { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sequential_ids_are_unique_and_valid() {
        let mut g = SequentialCallIds::new("t").unwrap();
        let a = g.next_call_id();
        let b = g.next_call_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str(), "t-1");
        assert!(SequentialCallIds::new(&"p".repeat(41)).is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: UserId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"a b\"").is_err());
    }
}
