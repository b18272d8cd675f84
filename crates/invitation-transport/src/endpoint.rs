//! A server URL, and the transport its scheme picks: `ws://` and `wss://`
//! take the WebSocket backend (feature `ws`), `http://` and `https://` the
//! HTTP backend (feature `http`: requests and long polls). The in-process
//! [`memory`](crate::memory) hub has no URL: it is always given explicitly.
//!
//! ```
//! use invitation_transport::endpoint::{Backend, Endpoint, EndpointError};
//!
//! let e = Endpoint::new("ftp://example.org/").backend().unwrap_err();
//! assert!(matches!(e, EndpointError::UnsupportedScheme { ref scheme, .. } if scheme == "ftp"));
//! assert_eq!(Endpoint::new("wss://example.org/").backend().unwrap(), Backend::WebSocket);
//! assert_eq!(Endpoint::new("https://example.org/").backend().unwrap(), Backend::Http);
//! assert_eq!(
//!     Endpoint::new("https://example.org/").force(Backend::WebSocket).backend().unwrap(),
//!     Backend::WebSocket
//! );
//! ```

use std::time::Duration;

use crate::BoxTransport;

/// A transport backend a URL can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// WebSocket (`ws://`, `wss://`), feature `ws`.
    WebSocket,
    /// HTTP requests and long polls (`http://`, `https://`), feature `http`.
    Http,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::WebSocket => "WebSocket",
            Backend::Http => "HTTP",
        })
    }
}

/// Why a URL picks no transport. Found before any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not `scheme://rest`, or nothing after the scheme.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No transport for this scheme (or none for it under the forced
    /// backend).
    #[error("unsupported scheme {scheme:?} in {url:?}: expected {expected}")]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme, lowercased.
        scheme: String,
        /// The schemes that would be taken.
        expected: &'static str,
    },
    /// The backend the URL picks is not compiled in.
    #[error("the {backend} transport is not built in: turn on the `{feature}` feature")]
    NotBuilt {
        /// The backend.
        backend: Backend,
        /// The cargo feature of `invitation-transport` that brings it.
        feature: &'static str,
    },
}

/// A server's URL, and how to reach it: the backend its scheme picks
/// (unless [forced](Endpoint::force)), the trusted TLS roots, the connect
/// timeout.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    force: Option<Backend>,
    connect_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTls>,
}

/// What a URL picks: the backend, and the URL that backend dials.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Choice {
    backend: Backend,
    url: String,
}

impl Endpoint {
    /// The server at `url`, e.g. `wss://signal.example.org/`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            force: None,
            connect_timeout: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Uses `backend` whatever the scheme says, when the URL can be said in
    /// its terms: with [`Backend::WebSocket`], `http://` dials `ws://` and
    /// `https://` dials `wss://`; with [`Backend::Http`], the other way
    /// round (the same host, port and path).
    pub fn force(mut self, backend: Backend) -> Self {
        self.force = Some(backend);
        self
    }

    /// How long one connection attempt may take (the backend's default
    /// otherwise).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The certificates trusted for TLS (`wss://`, `https://`); the
    /// system's roots otherwise.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backend this endpoint picks (no I/O).
    pub fn backend(&self) -> Result<Backend, EndpointError> {
        self.choose().map(|c| c.backend)
    }

    fn choose(&self) -> Result<Choice, EndpointError> {
        let url = self.url.trim();
        let invalid = |reason: &str| EndpointError::InvalidUrl {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("no scheme (expected scheme://host/)"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(invalid("the scheme is not a scheme"));
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid("no host"));
        }
        let scheme = scheme.to_ascii_lowercase();
        let with = |backend: Backend, scheme: &str| Choice {
            backend,
            url: format!("{scheme}://{rest}"),
        };
        // One arm per (scheme, forced backend) pair taken.
        match (scheme.as_str(), self.force) {
            ("ws" | "wss", None | Some(Backend::WebSocket)) => {
                Ok(with(Backend::WebSocket, &scheme))
            }
            ("http", Some(Backend::WebSocket)) => Ok(with(Backend::WebSocket, "ws")),
            ("https", Some(Backend::WebSocket)) => Ok(with(Backend::WebSocket, "wss")),
            ("http" | "https", None | Some(Backend::Http)) => Ok(with(Backend::Http, &scheme)),
            ("ws", Some(Backend::Http)) => Ok(with(Backend::Http, "http")),
            ("wss", Some(Backend::Http)) => Ok(with(Backend::Http, "https")),
            _ => Err(EndpointError::UnsupportedScheme {
                url: self.url.clone(),
                scheme,
                expected: "ws://, wss://, http:// or https://",
            }),
        }
    }

    /// The transport for this endpoint (no I/O: connecting is the
    /// transport's [`connect`](crate::Transport::connect)).
    pub fn transport(&self) -> Result<BoxTransport, EndpointError> {
        let choice = self.choose()?;
        match choice.backend {
            Backend::WebSocket => self.websocket(choice.url),
            Backend::Http => self.http(choice.url),
        }
    }

    #[cfg(feature = "http")]
    fn http(&self, url: String) -> Result<BoxTransport, EndpointError> {
        let mut http = crate::http::HttpTransport::new(url);
        if let Some(t) = self.connect_timeout {
            http = http.connect_timeout(t);
        }
        if let Some(tls) = &self.tls {
            http = http.tls(tls.clone());
        }
        Ok(std::sync::Arc::new(http))
    }

    #[cfg(not(feature = "http"))]
    fn http(&self, _url: String) -> Result<BoxTransport, EndpointError> {
        Err(EndpointError::NotBuilt {
            backend: Backend::Http,
            feature: "http",
        })
    }

    #[cfg(feature = "ws")]
    fn websocket(&self, url: String) -> Result<BoxTransport, EndpointError> {
        let mut ws = crate::ws::WsTransport::new(url);
        if let Some(t) = self.connect_timeout {
            ws = ws.connect_timeout(t);
        }
        if let Some(tls) = &self.tls {
            ws = ws.tls(tls.clone());
        }
        Ok(std::sync::Arc::new(ws))
    }

    #[cfg(not(feature = "ws"))]
    fn websocket(&self, _url: String) -> Result<BoxTransport, EndpointError> {
        Err(EndpointError::NotBuilt {
            backend: Backend::WebSocket,
            feature: "ws",
        })
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Endpoint::new(url)
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Endpoint::new(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(url: &str, force: Option<Backend>) -> Result<(Backend, String), EndpointError> {
        let mut e = Endpoint::new(url);
        if let Some(b) = force {
            e = e.force(b);
        }
        e.choose().map(|c| (c.backend, c.url))
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        let ws = |u: &str| Ok((Backend::WebSocket, u.to_owned()));
        assert_eq!(choose("ws://h:1/", None), ws("ws://h:1/"));
        assert_eq!(choose("wss://h/x", None), ws("wss://h/x"));
        assert_eq!(choose("WSS://h/", None), ws("wss://h/"));
        assert_eq!(choose(" ws://h/ ", None), ws("ws://h/"));
        let http = |u: &str| Ok((Backend::Http, u.to_owned()));
        assert_eq!(choose("http://h:7600/", None), http("http://h:7600/"));
        assert_eq!(choose("HTTPS://h/x", None), http("https://h/x"));
    }

    #[test]
    fn forcing_http_maps_websocket_schemes() {
        let h = Some(Backend::Http);
        let got = |u: &str| Ok((Backend::Http, u.to_owned()));
        assert_eq!(choose("ws://h:8/p", h), got("http://h:8/p"));
        assert_eq!(choose("wss://h/p", h), got("https://h/p"));
        assert_eq!(choose("https://h/", h), got("https://h/"));
    }

    #[test]
    fn forcing_websocket_maps_http_schemes() {
        let ws = Some(Backend::WebSocket);
        let got = |u: &str| Ok((Backend::WebSocket, u.to_owned()));
        assert_eq!(choose("http://h:8/p", ws), got("ws://h:8/p"));
        assert_eq!(choose("https://h/p", ws), got("wss://h/p"));
        assert_eq!(choose("wss://h/", ws), got("wss://h/"));
        match choose("ftp://h/", ws) {
            Err(EndpointError::UnsupportedScheme { expected, .. }) => {
                assert_eq!(expected, "ws://, wss://, http:// or https://")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_urls_have_distinct_errors() {
        match choose("ftp://h/", None) {
            Err(e @ EndpointError::UnsupportedScheme { .. }) => assert_eq!(
                e.to_string(),
                "unsupported scheme \"ftp\" in \"ftp://h/\": expected ws://, wss://, http:// or https://"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose("memory://hub", None),
            Err(EndpointError::UnsupportedScheme { .. })
        ));
        for (url, reason) in [
            ("127.0.0.1:7600", "no scheme (expected scheme://host/)"),
            ("ws:///", "no host"),
            ("w s://h/", "the scheme is not a scheme"),
        ] {
            assert_eq!(
                choose(url, None),
                Err(EndpointError::InvalidUrl {
                    url: url.to_owned(),
                    reason: reason.to_owned()
                })
            );
        }
    }

    #[cfg(feature = "ws")]
    #[test]
    fn a_websocket_url_builds_a_transport() {
        assert!(Endpoint::new("wss://h/").transport().is_ok());
        assert!(Endpoint::new("gopher://h/").transport().is_err());
    }
}
