//! Typed errors. Every refusal the switchboard or the decoder can give has a
//! variant here and a stable wire [`ErrorCode`].

use serde::{Deserialize, Serialize};

use crate::id::RequestId;
use crate::model::Reason;

/// A value broke its documented grammar or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The field must not be empty.
    #[error("{field} must not be empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// The field is longer than its limit.
    #[error("{field} is {len} long, the limit is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What was given.
        len: usize,
    },
    /// The value is reserved for the server (a device id clients may not
    /// use, such as [`crate::BACKEND_DEVICE`]).
    #[error("{field} {value:?} is reserved for the server")]
    Reserved {
        /// Which field.
        field: &'static str,
        /// The reserved value.
        value: &'static str,
    },
    /// The field contains a character outside its grammar.
    #[error("{field} contains a forbidden character (byte {byte:#04x})")]
    BadCharacter {
        /// Which field.
        field: &'static str,
        /// The first offending byte (or 0xff for a non-ASCII character).
        byte: u8,
    },
    /// No callees, or more than the configured maximum.
    #[error("an invitation needs 1 to {max} callees, got {got}")]
    CalleeCount {
        /// The configured maximum.
        max: usize,
        /// What was given (after removing duplicates).
        got: usize,
    },
    /// The caller listed themself as a callee.
    #[error("the caller cannot be one of the callees")]
    CallerAmongCallees,
    /// Ring timeout outside the configured bounds.
    #[error("ring timeout must be {min_s}..={max_s} s, got {got_s} s")]
    RingTimeout {
        /// Lower bound in seconds.
        min_s: u32,
        /// Upper bound in seconds.
        max_s: u32,
        /// What was given.
        got_s: u32,
    },
}

/// Why the switchboard refused a command. The refused command changed
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No such call, or the call exists but the user is not part of it: the
    /// two are deliberately indistinguishable (no probing of call ids).
    #[error("no such call")]
    NotFound,
    /// The user is part of the call but not in the role this command needs
    /// (the callee cancels, the caller accepts its own call).
    #[error("not allowed in your role in this call")]
    WrongRole,
    /// The invitation (for this user) already ended, with this reason: the
    /// loser of a race learns who won.
    #[error("the invitation already ended: {reason}")]
    Ended {
        /// How it ended.
        reason: Reason,
    },
    /// The caller is already in a call or has an invitation still ringing.
    #[error("you are already in a call or inviting")]
    CallerBusy,
    /// A value in the command broke its grammar or limit.
    #[error("invalid: {0}")]
    Invalid(#[from] ValidationError),
    /// The connection is unknown to the switchboard (never connected or
    /// already gone).
    #[error("not connected")]
    NotConnected,
    /// A `hello` on a connection that already said hello.
    #[error("hello is only valid as a connection's first message")]
    Misplaced,
    /// Client side: the server refused the command with a code that has no
    /// variant of its own here (invalid input seen by the server, auth ...).
    #[error("refused by the server ({code:?}): {message}")]
    Rejected {
        /// The wire code.
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// Client side: no answer within the command deadline. The command will
    /// not be sent again; an invite the server had taken is canceled.
    #[error("no answer in time; the command was given up")]
    TimedOut,
    /// Too many requests: try again after this long.
    #[error("rate limited, retry after {retry_after_ms} ms")]
    RateLimited {
        /// How long to wait before retrying.
        retry_after_ms: u64,
    },
    /// The server is overloaded and sheds new invitations (calls already
    /// set up go on): try again after this long. Nothing was created.
    #[error("server overloaded, retry after {retry_after_ms} ms")]
    Unavailable {
        /// How long to wait before retrying.
        retry_after_ms: u64,
    },
    /// The contact policy does not let you call this user; nothing was
    /// created. Said the same whether or not the user exists or is online.
    #[error("you may not call {callee}")]
    Forbidden {
        /// The first callee the policy refused.
        callee: crate::id::UserId,
    },
    /// `add` named a user who is already in the call, already ringing for
    /// it, or its caller; nothing was changed.
    #[error("{user} is already in this call or ringing for it")]
    AlreadyInCall {
        /// The first such user.
        user: crate::id::UserId,
    },
}

impl CommandError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::NotFound => ErrorCode::NotFound,
            CommandError::WrongRole => ErrorCode::WrongRole,
            CommandError::Ended { .. } => ErrorCode::Ended,
            CommandError::CallerBusy => ErrorCode::CallerBusy,
            CommandError::Invalid(_) | CommandError::Misplaced => ErrorCode::Invalid,
            CommandError::NotConnected => ErrorCode::NotConnected,
            CommandError::RateLimited { .. } => ErrorCode::RateLimited,
            // Never on the wire: the client gave up waiting for the server.
            CommandError::Unavailable { .. } | CommandError::TimedOut => ErrorCode::Unavailable,
            CommandError::Forbidden { .. } => ErrorCode::Forbidden,
            CommandError::AlreadyInCall { .. } => ErrorCode::AlreadyInCall,
            CommandError::Rejected { code, .. } => *code,
        }
    }
}

/// Why an incoming message could not be decoded. The connection may stay
/// open: the peer gets an `error` reply with the request id when it could be
/// read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The message is larger than the configured cap.
    #[error("message of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or not a JSON object.
    #[error("malformed JSON: {detail}")]
    Malformed {
        /// What the parser said.
        detail: String,
    },
    /// Nesting, array length or object size over the caps.
    #[error("structure over limits: {detail}")]
    OverLimits {
        /// Which cap.
        detail: String,
    },
    /// A JSON object repeats a key.
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// `v` is not a version this side speaks.
    #[error("unsupported protocol version {got}, this side speaks {supported}")]
    UnsupportedVersion {
        /// What was received (0 when absent).
        got: u64,
        /// What this side speaks.
        supported: u32,
    },
    /// `type` names no known message.
    #[error("unknown message type {ty:?}")]
    UnknownType {
        /// The type given.
        ty: String,
        /// The request id, when one could be read.
        request: Option<RequestId>,
    },
    /// Missing or mistyped fields, or a value breaking its grammar.
    #[error("invalid message: {detail}")]
    Invalid {
        /// What serde said.
        detail: String,
        /// The request id, when one could be read.
        request: Option<RequestId>,
    },
}

impl ProtocolError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::Malformed { .. } => ErrorCode::Malformed,
            ProtocolError::OverLimits { .. } => ErrorCode::OverLimits,
            ProtocolError::DuplicateKey { .. } => ErrorCode::DuplicateKey,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtocolError::UnknownType { .. } => ErrorCode::UnknownType,
            ProtocolError::Invalid { .. } => ErrorCode::Invalid,
        }
    }

    /// The request id the error refers to, when it could be read.
    pub fn request(&self) -> Option<&RequestId> {
        match self {
            ProtocolError::UnknownType { request, .. } | ProtocolError::Invalid { request, .. } => {
                request.as_ref()
            }
            _ => None,
        }
    }
}

/// Stable, documented error codes of protocol v1 (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Unknown call, or not yours.
    NotFound,
    /// Not allowed in your role.
    WrongRole,
    /// Already ended; `reason` says how.
    Ended,
    /// You are already in a call or inviting.
    CallerBusy,
    /// A field broke its grammar or limit, or is missing / mistyped.
    Invalid,
    /// Command before `hello`, or on a connection the server dropped.
    NotConnected,
    /// Slow down; `retry_after_ms` says for how long.
    RateLimited,
    /// Message over the size cap.
    TooLarge,
    /// Not a JSON object.
    Malformed,
    /// Nesting / array / object caps exceeded.
    OverLimits,
    /// A JSON key repeated.
    DuplicateKey,
    /// `v` not supported.
    UnsupportedVersion,
    /// `type` unknown.
    UnknownType,
    /// Authentication failed (bad, expired or missing token).
    Unauthorized,
    /// The server is overloaded or shutting down.
    Unavailable,
    /// The contact policy does not let you call that user.
    Forbidden,
    /// `add` named someone already in the call or ringing for it.
    AlreadyInCall,
}

impl ErrorCode {
    /// The wire name (`"not_found"` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::Ended => "ended",
            ErrorCode::CallerBusy => "caller_busy",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Malformed => "malformed",
            ErrorCode::OverLimits => "over_limits",
            ErrorCode::DuplicateKey => "duplicate_key",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadyInCall => "already_in_call",
        }
    }
}
