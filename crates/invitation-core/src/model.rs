//! Domain values carried by invitations: users, call types, custom data and
//! the reason every ending has.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::id::UserId;

/// Longest display name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Default cap on [`CustomData`], in bytes (Agora caps invitation content at
/// 8 KB; the switchboard's limit is configurable).
pub const DEFAULT_MAX_CUSTOM_DATA: usize = 8 * 1024;

/// The ring timeouts any configuration may allow, in seconds (1 s to
/// 10 min: the origin's range). Every layer that checks a ring timeout
/// takes its bounds from here.
pub const RING_TIMEOUT_BOUNDS_S: std::ops::RangeInclusive<u32> = 1..=600;

/// Hard cap on [`CustomData`] whatever the configuration: the whole message
/// must fit the 64 KiB frame.
pub const HARD_MAX_CUSTOM_DATA: usize = 60 * 1024;

/// A user as shown to others: id plus display name. The name is whatever the
/// authentication layer vouches for (a token's `name` claim).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// Stable identity.
    pub id: UserId,
    /// Display name: at most [`MAX_NAME_CHARS`] characters, no control
    /// characters; may be empty.
    #[serde(default, deserialize_with = "de_name")]
    pub name: Arc<str>,
}

fn de_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    let s = String::deserialize(d)?;
    validate_name(&s).map_err(serde::de::Error::custom)?;
    Ok(name_of(&s))
}

/// The name as a shared string; every empty name is one allocation for the
/// whole process (`Arc::from("")` allocates, and a million offline
/// callees known only by id would pay 32 bytes each).
pub(crate) fn name_of(s: &str) -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    if s.is_empty() {
        EMPTY.clone()
    } else {
        Arc::from(s)
    }
}

fn validate_name(s: &str) -> Result<(), ValidationError> {
    let chars = s.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(ValidationError::TooLong {
            field: "name",
            max: MAX_NAME_CHARS,
            len: chars,
        });
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ValidationError::BadCharacter {
            field: "name",
            byte: u8::try_from(u32::from(c)).unwrap_or(u8::MAX),
        });
    }
    Ok(())
}

impl User {
    /// A user with a validated display name.
    pub fn new(id: UserId, name: impl AsRef<str>) -> Result<Self, ValidationError> {
        let name = name.as_ref();
        validate_name(name)?;
        Ok(Self {
            id,
            name: name_of(name),
        })
    }

    /// Shorthand for tests and examples: panics on an invalid id or name.
    pub fn named(id: &str, name: &str) -> Self {
        Self::new(UserId::new(id).expect("valid user id"), name).expect("valid name")
    }
}

/// Voice or video: what the callee's UI shows, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    /// Audio only.
    Voice,
    /// Audio and video.
    Video,
}

/// Opaque application data travelling with an invitation (a room name, a
/// media token, JSON of the app's own ...). Shared, so fan-out to many
/// devices does not copy it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomData(Arc<str>);

impl CustomData {
    /// Checks `s` against [`DEFAULT_MAX_CUSTOM_DATA`].
    pub fn new(s: impl AsRef<str>) -> Result<Self, ValidationError> {
        Self::with_limit(s, DEFAULT_MAX_CUSTOM_DATA)
    }

    /// Checks `s` against `max` bytes (itself capped at
    /// [`HARD_MAX_CUSTOM_DATA`]).
    pub fn with_limit(s: impl AsRef<str>, max: usize) -> Result<Self, ValidationError> {
        let s = s.as_ref();
        let max = max.min(HARD_MAX_CUSTOM_DATA);
        if s.len() > max {
            return Err(ValidationError::TooLong {
                field: "custom_data",
                max,
                len: s.len(),
            });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The data as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for CustomData {
    fn default() -> Self {
        Self(Arc::from(""))
    }
}

impl TryFrom<String> for CustomData {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        Self::with_limit(s, HARD_MAX_CUSTOM_DATA)
    }
}

impl From<CustomData> for String {
    fn from(d: CustomData) -> String {
        d.0.to_string()
    }
}

impl fmt::Debug for CustomData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 64 {
            write!(f, "CustomData({:?})", &*self.0)
        } else {
            write!(f, "CustomData({} bytes)", self.0.len())
        }
    }
}

/// Why an invitation, or a call, ended — for one callee or for a whole call.
/// The same enum everywhere: switchboard, wire, client events.
///
/// Decoding is lenient (additive v1 evolution): a name this version does not
/// know becomes [`Reason::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// A callee accepted (on one of their devices).
    Accepted,
    /// A callee actively declined.
    Declined,
    /// A callee was busy: decided by the server's busy policy, or declared by
    /// the callee (`decline` with `busy: true`).
    Busy,
    /// Nobody answered within the ring timeout.
    Timeout,
    /// The caller canceled before an answer.
    Canceled,
    /// The caller's device vanished and did not come back within the grace
    /// period.
    CallerGone,
    /// Another device of the same user accepted (seen by the other devices).
    AnsweredElsewhere,
    /// Another device of the same user declined (seen by the other devices).
    DeclinedElsewhere,
    /// The callee could not be reached at all (offline, with the offline
    /// policy set to reject).
    Unreachable,
    /// An accepted call was ended by a participant.
    HungUp,
    /// The outcome was lost (for example a resync could no longer tell it):
    /// the call is over, cause unknown. A reason this version does not know
    /// (a newer server's) decodes as this one.
    Failed,
    /// The server stopped and did not keep the call (a graceful stop of a
    /// server without durable state): the call is over for everyone.
    ServerShutdown,
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Reason;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reason name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Reason, E> {
                Ok(Reason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == s)
                    .unwrap_or(Reason::Failed))
            }
        }
        d.deserialize_str(Name)
    }
}

impl Reason {
    /// Number of variants (for counters indexed by [`Reason::index`]).
    pub const COUNT: usize = 12;

    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Accepted,
        Reason::Declined,
        Reason::Busy,
        Reason::Timeout,
        Reason::Canceled,
        Reason::CallerGone,
        Reason::AnsweredElsewhere,
        Reason::DeclinedElsewhere,
        Reason::Unreachable,
        Reason::HungUp,
        Reason::Failed,
        Reason::ServerShutdown,
    ];

    /// A dense index, 0..[`Reason::COUNT`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The wire name (`"answered_elsewhere"` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::Declined => "declined",
            Reason::Busy => "busy",
            Reason::Timeout => "timeout",
            Reason::Canceled => "canceled",
            Reason::CallerGone => "caller_gone",
            Reason::AnsweredElsewhere => "answered_elsewhere",
            Reason::DeclinedElsewhere => "declined_elsewhere",
            Reason::Unreachable => "unreachable",
            Reason::HungUp => "hung_up",
            Reason::Failed => "failed",
            Reason::ServerShutdown => "server_shutdown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(User::new(UserId::new("a").unwrap(), "Ann Lee").is_ok());
        assert!(User::new(UserId::new("a").unwrap(), "a\u{7}b").is_err());
        assert!(User::new(UserId::new("a").unwrap(), "é".repeat(129)).is_err());
        assert!(serde_json::from_str::<User>(r#"{"id":"a","name":"x\u0000"}"#).is_err());
        let u: User = serde_json::from_str(r#"{"id":"a"}"#).unwrap();
        assert_eq!(&*u.name, "");
    }

    #[test]
    fn custom_data_limits() {
        assert!(CustomData::new("x".repeat(8192)).is_ok());
        assert!(CustomData::new("x".repeat(8193)).is_err());
        assert!(CustomData::with_limit("x".repeat(100_000), usize::MAX).is_err());
    }

    #[test]
    fn reason_wire_names_match_serde() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }
}
