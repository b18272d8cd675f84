//! Bearer tokens: JWT signed with HS256 (pinned: no other algorithm is
//! accepted), `sub` = user id, `name` = display name, `exp` and `aud`
//! required. The caller identity always comes from here, never from a
//! message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invitation_core::{User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token looked at; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an invitation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The display name.
    #[serde(default)]
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Audience.
    pub aud: String,
    /// Issuer, when the server requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a token was refused. Deliberately coarse on the wire (`unauthorized`);
/// the detail goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in `hello`.
    #[error("no token")]
    Missing,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("token too long")]
    TooLong,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Not valid yet (`nbf` in the future).
    #[error("token not valid yet")]
    NotYetValid,
    /// Wrong audience or issuer.
    #[error("token for another audience or issuer")]
    WrongAudience,
    /// Bad signature, wrong algorithm, malformed.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `sub` or `name` break the id / name grammar.
    #[error("invalid identity in token: {0}")]
    BadIdentity(String),
}

/// Who a valid token names, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: User,
    /// When the token expires.
    pub expires: SystemTime,
}

/// Mints and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Authority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: String,
    issuer: Option<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authority {
    /// An authority for `secret`, requiring `audience` (and `issuer`, if set).
    pub fn new(secret: &[u8], audience: &str, issuer: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
        }
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            audience: audience.to_owned(),
            issuer: issuer.map(str::to_owned),
        }
    }

    /// A token for `user` valid for `ttl`.
    pub fn mint(&self, user: &UserId, name: &str, ttl: Duration) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            name: name.to_owned(),
            exp: now + ttl.as_secs().max(1),
            iat: now,
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            nbf: None,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (for tests of refusals).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks a token: size first (cheap), then signature, algorithm,
    /// expiry, not-before, audience, issuer, identity grammar.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let id = UserId::new(&claims.sub).map_err(|e| AuthError::BadIdentity(e.to_string()))?;
        let user =
            User::new(id, &claims.name).map_err(|e| AuthError::BadIdentity(e.to_string()))?;
        Ok(Identity {
            user,
            expires: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

/// A random secret for a server started without one.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority::new(b"0123456789abcdef0123456789abcdef", "invitation", None)
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            name: "Alice".into(),
            exp: unix_now() + 3600,
            iat: unix_now(),
            aud: "invitation".into(),
            iss: None,
            nbf: None,
        }
    }

    #[test]
    fn a_minted_token_verifies() {
        let a = authority();
        let token = a.mint(
            &UserId::new("alice").unwrap(),
            "Alice",
            Duration::from_secs(60),
        );
        let id = a.verify(&token).unwrap();
        assert_eq!(id.user, User::named("alice", "Alice"));
        assert!(id.expires > SystemTime::now());
    }

    #[test]
    fn d5_expired_and_not_yet_valid_are_refused() {
        let a = authority();
        let mut c = claims();
        c.exp = unix_now() - 10;
        assert_eq!(a.verify(&a.sign(&c)), Err(AuthError::Expired));
        let mut c = claims();
        c.nbf = Some(unix_now() + 600);
        assert_eq!(a.verify(&a.sign(&c)), Err(AuthError::NotYetValid));
    }

    #[test]
    fn d7_forged_and_malformed_tokens_are_refused() {
        let a = authority();
        let good = a.sign(&claims());
        // alg: none
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let body = good.split('.').nth(1).unwrap();
        assert!(matches!(
            a.verify(&format!("{header}.{body}.")),
            Err(AuthError::Invalid(_))
        ));
        // HS512 with the same secret: wrong algorithm
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(a.verify(&hs512), Err(AuthError::Invalid(_))));
        // bit-flipped signature
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(a.verify(std::str::from_utf8(&flipped).unwrap()).is_err());
        // truncated, non-base64, huge
        assert!(a.verify(&good[..good.len() - 5]).is_err());
        assert!(a.verify("!!!.@@@.###").is_err());
        assert_eq!(a.verify(&"a".repeat(1 << 20)), Err(AuthError::TooLong));
        assert_eq!(a.verify(""), Err(AuthError::Missing));
        // another secret
        let other = Authority::new(b"another-secret-of-32-bytes-long!", "invitation", None);
        assert!(a.verify(&other.sign(&claims())).is_err());
    }

    #[test]
    fn d8_wrong_audience_or_issuer_is_refused() {
        let a = authority();
        let mut c = claims();
        c.aud = "someone-else".into();
        assert_eq!(a.verify(&a.sign(&c)), Err(AuthError::WrongAudience));
        let strict = Authority::new(
            b"0123456789abcdef0123456789abcdef",
            "invitation",
            Some("idp"),
        );
        let mut c = claims();
        c.iss = Some("evil".into());
        assert_eq!(
            strict.verify(&strict.sign(&c)),
            Err(AuthError::WrongAudience)
        );
        assert!(
            strict.verify(&strict.sign(&claims())).is_err(),
            "issuer required"
        );
    }

    #[test]
    fn identities_obey_the_grammar() {
        let a = authority();
        let mut c = claims();
        c.sub = "bad user".into();
        assert!(matches!(
            a.verify(&a.sign(&c)),
            Err(AuthError::BadIdentity(_))
        ));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1y").is_err());
    }
}
