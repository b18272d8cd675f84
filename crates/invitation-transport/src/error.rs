//! Typed transport errors.

use std::fmt;

/// What kind of failure a [`TransportError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The link is closed (by us, the peer, or the hub).
    Closed,
    /// The peer did not answer in time (connect, handshake).
    Timeout,
    /// The peer refused us (authentication, Origin, policy): retrying the
    /// same way will not help.
    Rejected,
    /// The peer broke the protocol (undecodable message, wrong version).
    Protocol,
    /// An I/O error below the protocol.
    Io,
    /// The server's TLS certificate was not accepted: not signed by a
    /// trusted CA, made for another name, expired. Retrying will not help
    /// until the server's certificate or the client's trusted roots change.
    Certificate,
}

/// A transport failure, with a [`kind`](TransportError::kind) to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Shows the message alone ("connection refused at 127.0.0.1:7699"); the
/// kind is for code ([`TransportError::kind`]) and the underlying cause stays
/// reachable through [`std::error::Error::source`].
impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl TransportError {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same, keeping the underlying cause.
    pub fn with_source(
        kind: TransportErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Shorthand for a `Closed` error.
    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Closed, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// True when trying again (a new connection, after a backoff) may work:
    /// closed links, timeouts and I/O errors. Rejections and protocol
    /// violations will repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            TransportErrorKind::Closed | TransportErrorKind::Timeout | TransportErrorKind::Io
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(TransportError::closed("x").is_retryable());
        assert!(TransportError::new(TransportErrorKind::Io, "x").is_retryable());
        assert!(TransportError::new(TransportErrorKind::Timeout, "x").is_retryable());
        assert!(!TransportError::new(TransportErrorKind::Rejected, "x").is_retryable());
        assert!(!TransportError::new(TransportErrorKind::Protocol, "x").is_retryable());
        assert!(!TransportError::new(TransportErrorKind::Certificate, "x").is_retryable());
        let e = TransportError::with_source(
            TransportErrorKind::Io,
            "read",
            std::io::Error::other("boom"),
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "read");
    }
}
