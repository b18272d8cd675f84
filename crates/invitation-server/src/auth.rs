//! Bearer tokens: JWT signed with HS256 (pinned: no other algorithm is
//! accepted), `sub` = user id, `name` = display name, `exp` and `aud`
//! required (`aud` may be one string or an array of them, RFC 7519 4.1.3).
//! The caller identity always comes from here, never from a message.
//!
//! Every time value comes from the client: they are read as plain numbers
//! and turned into clock values with checked arithmetic, so no claim (an
//! `exp` of 2^64 - 1, say) can make the server panic. An `exp` further than
//! [`MAX_SESSION_LIFETIME`] away counts as that far away.
//!
//! Signatures are computed by an HS256-only [`jsonwebtoken`] crypto provider
//! built on the `hmac` and `sha2` crates ([`install_hs256_provider`]), so the
//! dependency tree carries no RSA or elliptic-curve code the server never
//! uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invitation_core::{User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token looked at; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The furthest a session's expiry is set: a token whose `exp` lies further
/// in the future (up to 2^64 - 1 seconds) is treated as expiring this long
/// after it was checked. A `renew` or a reconnect starts a new period.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// The claims of an invitation token, as minted by [`Authority::mint`].
///
/// Verification reads only what it needs (`sub`, `name`, `exp`) after
/// [`jsonwebtoken`] checked signature, `exp`, `nbf`, `aud` (a string or an
/// array) and `iss`, so tokens from other issuers with extra or differently
/// shaped claims are accepted when valid.
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

/// Why a token was refused. The detail is for the log only: a client is told
/// [`AuthError::public_message`] whatever the reason, so a refusal reveals
/// nothing (an `expired` answer would prove the signature was valid).
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

impl AuthError {
    /// What the client is told, for every reason: `unauthorized`.
    pub fn public_message(&self) -> &'static str {
        "unauthorized"
    }
}

/// The claims verification reads (the rest were checked by `jsonwebtoken`).
#[derive(Debug, Deserialize)]
struct Checked {
    sub: String,
    #[serde(default)]
    name: String,
    exp: u64,
}

/// Who a valid token names, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: User,
    /// When the token expires, at most [`MAX_SESSION_LIFETIME`] after it
    /// was checked.
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
        install_hs256_provider();
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
        self.mint_expiring(user, name, ttl).0
    }

    /// A token for `user` valid for `ttl`, with its expiry (unix seconds,
    /// the token's `exp`).
    pub fn mint_expiring(&self, user: &UserId, name: &str, ttl: Duration) -> (String, u64) {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            name: name.to_owned(),
            exp: now.saturating_add(ttl.as_secs().max(1)),
            iat: now,
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            nbf: None,
        };
        (self.sign(&claims), claims.exp)
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
        let data = jsonwebtoken::decode::<Checked>(token, &self.decoding, &self.validation)
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
            expires: session_expiry(claims.exp, SystemTime::now()),
        })
    }
}

/// The session expiry for a token's `exp` checked at `now`: `exp` as a clock
/// value, but no later than [`MAX_SESSION_LIFETIME`] after `now`. Checked
/// arithmetic throughout: no `exp` can overflow the clock.
fn session_expiry(exp: u64, now: SystemTime) -> SystemTime {
    let cap = now.checked_add(MAX_SESSION_LIFETIME).unwrap_or(now);
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .map_or(cap, |at| at.min(cap))
}

/// Makes the HS256-only provider [`jsonwebtoken`]'s crypto for this process,
/// unless one is installed already (any provider computes HS256).
/// [`Authority::new`] calls it; harmless to call again.
///
/// `jsonwebtoken` is built without its `rust_crypto` and `aws_lc_rs`
/// features, so an application that uses it elsewhere with RSA or EC keys
/// in the same process must install a full provider before it creates an
/// [`Authority`].
pub fn install_hs256_provider() {
    let _ = hs256::PROVIDER.install_default();
}

mod hs256 {
    //! HMAC-SHA-256 signing and verifying for `jsonwebtoken`, and nothing else.

    use hmac::{Hmac, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
    use sha2::Sha256;

    type HmacSha256 = Hmac<Sha256>;

    pub(super) static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory,
        verifier_factory,
        key_utils: KeyUtils::new_unimplemented(),
    };

    struct Hs256(HmacSha256);

    impl Hs256 {
        fn new(algorithm: Algorithm, family: AlgorithmFamily, key: &[u8]) -> Result<Self> {
            if algorithm != Algorithm::HS256 {
                return Err(ErrorKind::InvalidAlgorithm.into());
            }
            if family != AlgorithmFamily::Hmac {
                return Err(ErrorKind::InvalidKeyFormat.into());
            }
            HmacSha256::new_from_slice(key)
                .map(Self)
                .map_err(|_| ErrorKind::InvalidKeyFormat.into())
        }
    }

    fn signer_factory(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        Ok(Box::new(Hs256::new(
            *algorithm,
            key.family(),
            key.as_bytes(),
        )?))
    }

    fn verifier_factory(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        Ok(Box::new(Hs256::new(
            *algorithm,
            key.family(),
            key.try_get_as_bytes()?,
        )?))
    }

    impl signature::Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl signature::Verifier<Vec<u8>> for Hs256 {
        fn verify(
            &self,
            msg: &[u8],
            signature: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            // Constant-time comparison.
            mac.verify_slice(signature)
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
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
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    let secs = n
        .checked_mul(per)
        .ok_or_else(|| format!("duration too long: {s:?}"))?;
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
        // HS512: wrong algorithm (the header says so; refused before any
        // signature is computed)
        let hs512_header = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS512","typ":"JWT"}
        let (_, rest) = good.split_once('.').unwrap();
        assert!(matches!(
            a.verify(&format!("{hs512_header}.{rest}")),
            Err(AuthError::Invalid(_))
        ));
        // The provider itself refuses to sign or verify anything but HS256.
        assert!(
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims(),
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            )
            .is_err()
        );
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

    /// Time values from the wire never panic: an `exp` past the end of the
    /// clock is accepted as "far away" and capped; huge `iat` / `nbf` are
    /// plain numbers.
    #[test]
    fn huge_time_claims_do_not_panic() {
        let a = authority();
        for exp in [u64::MAX, 1 << 63, (1 << 63) - 1, u64::from(u32::MAX) * 1000] {
            let mut c = claims();
            c.exp = exp;
            c.iat = u64::MAX;
            let id = a.verify(&a.sign(&c)).expect("valid, far-future token");
            let left = id.expires.duration_since(SystemTime::now()).unwrap();
            assert!(left <= MAX_SESSION_LIFETIME, "capped: {left:?}");
            assert!(left > MAX_SESSION_LIFETIME - Duration::from_secs(60));
        }
        let mut c = claims();
        c.nbf = Some(u64::MAX);
        assert_eq!(a.verify(&a.sign(&c)), Err(AuthError::NotYetValid));
        // The capping itself, at the clock's edges.
        let now = SystemTime::now();
        assert_eq!(session_expiry(0, now), UNIX_EPOCH);
        assert_eq!(session_expiry(u64::MAX, now), now + MAX_SESSION_LIFETIME);
        // Minting with an absurd lifetime saturates instead of overflowing.
        let token = a.mint(&UserId::new("alice").unwrap(), "", Duration::MAX);
        assert!(a.verify(&token).is_ok());
        assert!(parse_ttl("18446744073709551615d").is_err());
    }

    /// RFC 7519: `aud` may be an array; one matching member is enough.
    #[test]
    fn audience_may_be_an_array() {
        let a = authority();
        let sign = |aud: serde_json::Value| {
            let claims = serde_json::json!({
                "sub": "alice", "name": "Alice", "exp": unix_now() + 60, "aud": aud,
            });
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            )
            .unwrap()
        };
        let id = a
            .verify(&sign(serde_json::json!(["other", "invitation"])))
            .expect("one member matches");
        assert_eq!(id.user, User::named("alice", "Alice"));
        assert_eq!(
            a.verify(&sign(serde_json::json!(["other", "another"]))),
            Err(AuthError::WrongAudience)
        );
        assert!(a.verify(&sign(serde_json::json!([]))).is_err());
    }

    /// Every refusal reads the same to the client.
    #[test]
    fn the_public_message_says_nothing_more() {
        let a = authority();
        let mut expired = claims();
        expired.exp = unix_now() - 10;
        let other = Authority::new(b"another-secret-of-32-bytes-long!", "invitation", None);
        for err in [
            a.verify(&a.sign(&expired)).unwrap_err(),
            a.verify(&other.sign(&claims())).unwrap_err(),
            a.verify("x.y.z").unwrap_err(),
            a.verify("").unwrap_err(),
        ] {
            assert_eq!(err.public_message(), "unauthorized", "{err}");
        }
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
