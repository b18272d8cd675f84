//! Bearer tokens as the client sees them: the token provider an app gives
//! the builder, and a look at a token's claims without verifying it (to
//! show who it names, and to renew it before it expires). Only the server
//! verifies tokens; nothing here is a reason to trust one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// Renew a token this far through its lifetime (80 %).
const RENEW_AT: f64 = 0.8;

/// A boxed future returned by the token provider.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// The app's token source, as the driver holds it.
pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Wraps an app's async callback.
pub(crate) fn provider<F, Fut, E>(f: F) -> TokenProvider
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: std::fmt::Display,
{
    Arc::new(move || {
        let fut = f();
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    })
}

/// What a JWT says about itself, read **without** checking its signature:
/// for display ("connected as bob") and for scheduling renewal, never for
/// trust.
///
/// ```
/// use invitation_handler::UnverifiedClaims;
/// // header {"alg":"HS256"}, payload {"sub":"bob","name":"Bob","exp":2000000000}
/// let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IiLCJuYW1lIjoiQm9iIiwiZXhwIjoyMDAwMDAwMDAwfQ.sig";
/// let claims = UnverifiedClaims::peek(token).unwrap();
/// assert_eq!(claims.sub.as_deref(), Some("bob"));
/// assert_eq!(claims.exp, Some(2_000_000_000));
/// assert!(UnverifiedClaims::peek("garbage").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnverifiedClaims {
    /// `sub`: the user id the token names.
    pub sub: Option<String>,
    /// `name`: the display name.
    pub name: Option<String>,
    /// `exp`: expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// `iat`: issued at, seconds since the Unix epoch.
    pub iat: Option<u64>,
}

/// Why a token's claims could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenPeekError {
    /// Not three dot-separated parts.
    #[error("not a JWT: expected three dot-separated parts")]
    NotJwt,
    /// The payload is not base64url.
    #[error("the token's payload is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The payload is not a JSON object.
    #[error("the token's payload is not a JSON object")]
    NotJson,
}

impl UnverifiedClaims {
    /// Reads the payload of a JWT (`header.payload.signature`).
    pub fn peek(token: &str) -> Result<Self, TokenPeekError> {
        let mut parts = token.trim().split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenPeekError::NotJwt);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| TokenPeekError::NotJson)?;
        let object = value.as_object().ok_or(TokenPeekError::NotJson)?;
        let text = |k: &str| object.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let secs = |k: &str| {
            object
                .get(k)
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        };
        Ok(Self {
            sub: text("sub"),
            name: text("name"),
            exp: secs("exp"),
            iat: secs("iat"),
        })
    }

    /// When the token expires, if it says.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.exp.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    /// How long from `now` until the token should be renewed: 80 % through
    /// its lifetime (from `iat`, or from `now` without one). `None` when
    /// the token states no expiry.
    pub fn renew_in(&self, now: SystemTime) -> Option<Duration> {
        let exp = self.expires_at()?;
        let start = self
            .iat
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .filter(|iat| *iat <= now && *iat < exp)
            .unwrap_or(now);
        let lifetime = exp.duration_since(start).unwrap_or(Duration::ZERO);
        let at = start + lifetime.mul_f64(RENEW_AT);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    #[test]
    fn renews_at_eighty_percent_of_the_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let c = UnverifiedClaims::peek(&jwt(r#"{"sub":"a","iat":1000,"exp":1100}"#)).unwrap();
        assert_eq!(c.renew_in(now), Some(Duration::from_secs(80)));
        // Later in its life: what is left of the 80 %.
        let later = now + Duration::from_secs(50);
        assert_eq!(c.renew_in(later), Some(Duration::from_secs(30)));
        // Past the 80 % mark: now.
        let late = now + Duration::from_secs(95);
        assert_eq!(c.renew_in(late), Some(Duration::ZERO));
        // No iat: 80 % of what is left.
        let c = UnverifiedClaims::peek(&jwt(r#"{"sub":"a","exp":1010}"#)).unwrap();
        assert_eq!(c.renew_in(now), Some(Duration::from_secs(8)));
        // No exp: nothing to schedule.
        let c = UnverifiedClaims::peek(&jwt(r#"{"sub":"a"}"#)).unwrap();
        assert_eq!(c.renew_in(now), None);
    }

    #[test]
    fn refuses_what_is_not_a_jwt() {
        assert!(matches!(
            UnverifiedClaims::peek("a.b"),
            Err(TokenPeekError::NotJwt)
        ));
        assert!(matches!(
            UnverifiedClaims::peek("a.!!!.c"),
            Err(TokenPeekError::Base64(_))
        ));
        assert!(matches!(
            UnverifiedClaims::peek(&jwt("[1]")),
            Err(TokenPeekError::NotJson)
        ));
        let c = UnverifiedClaims::peek(&jwt(r#"{"sub":"bob","name":"Bob"}"#)).unwrap();
        assert_eq!(
            (c.sub.as_deref(), c.name.as_deref()),
            (Some("bob"), Some("Bob"))
        );
    }
}
