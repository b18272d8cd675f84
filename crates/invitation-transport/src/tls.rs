//! TLS for the network transports (feature `tls`, on with `ws`): which
//! server certificates a client trusts, as a rustls client configuration.
//!
//! [`ClientTls`] is transport-neutral: the WebSocket transport dials
//! `wss://` with it, and an HTTP client (reqwest's preconfigured TLS) can
//! take the same [`ClientTls::config`]. The crypto comes from rustls' *ring*
//! provider, set explicitly, so no process-wide default provider has to be
//! installed and the build needs no CMake.
//!
//! ```
//! use invitation_transport::tls::ClientTls;
//!
//! // A private deployment: trust only the deployment's own CA.
//! let ca = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
//! let err = ClientTls::with_ca_pem(ca.as_bytes(), "ca.pem").unwrap_err();
//! assert!(err.to_string().starts_with("ca.pem:"), "{err}");
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::{TransportError, TransportErrorKind};

/// Why a [`ClientTls`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The system's trust store holds no usable certificate.
    #[error("no trusted root certificate found on this system{}", detail_suffix(.detail))]
    NoSystemRoots {
        /// What failed while loading them, if anything.
        detail: String,
    },
    /// A CA file could not be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM holds no certificate.
    #[error("{origin}: no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate {
        /// Where the PEM came from (a file name, or what the caller said).
        origin: String,
    },
    /// The PEM is damaged, or a certificate in it cannot be a trust anchor.
    #[error("{origin}: {detail}")]
    BadCertificate {
        /// Where the PEM came from.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration (no protocol version in common
    /// with the provider: a build problem, not an input one).
    #[error("the TLS configuration is not usable: {0}")]
    Config(rustls::Error),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// The server certificates a client trusts, ready as a rustls client
/// configuration (ring provider, TLS 1.2 and 1.3). Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// What it trusts, for `Debug` and logs.
    trusts: Arc<str>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("trusts", &self.trusts)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the system's root certificates (the operating system's store,
    /// or the files named by `SSL_CERT_FILE` / `SSL_CERT_DIR`). Fails only
    /// when none at all can be loaded; unreadable extra entries are skipped
    /// with a warning.
    pub fn system() -> Result<Self, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        if !errors.is_empty() {
            tracing::warn!(?errors, "some system root certificates could not be loaded");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system root certificates rustls cannot use");
        }
        if added == 0 {
            return Err(TlsError::NoSystemRoots {
                detail: errors.join("; "),
            });
        }
        Self::from_roots(roots, format!("the system's {added} root certificates"))
    }

    /// Trusts exactly the CA certificates in `pem` (one or more
    /// `BEGIN CERTIFICATE` blocks): a private deployment's own CA, or a
    /// self-signed server certificate. `origin` names the input in errors
    /// (a file name, "the configured CA").
    pub fn with_ca_pem(pem: &[u8], origin: &str) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut count = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsError::BadCertificate {
                origin: origin.to_owned(),
                detail: format!("unreadable PEM: {e}"),
            })?;
            count += 1;
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                origin: origin.to_owned(),
                detail: format!("certificate {count} cannot be a trust anchor: {e}"),
            })?;
        }
        if count == 0 {
            return Err(TlsError::NoCertificate {
                origin: origin.to_owned(),
            });
        }
        Self::from_roots(roots, format!("{count} CA certificate(s) from {origin}"))
    }

    /// [`with_ca_pem`](Self::with_ca_pem) on the contents of a file.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: path.to_owned(),
            source,
        })?;
        Self::with_ca_pem(&pem, &path.display().to_string())
    }

    /// Trusts the roots in a store the caller filled.
    pub fn with_root_store(roots: RootCertStore) -> Result<Self, TlsError> {
        let n = roots.len();
        Self::from_roots(roots, format!("{n} given root certificate(s)"))
    }

    fn from_roots(roots: RootCertStore, trusts: String) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            trusts: trusts.into(),
        })
    }

    /// The rustls client configuration (for `wss://`, or for an HTTP client:
    /// reqwest built with `rustls-no-provider` takes
    /// `.tls_backend_preconfigured((*tls.config()).clone())`).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// What it trusts, in words ("1 CA certificate(s) from ca.pem").
    pub fn trusts(&self) -> &str {
        &self.trusts
    }
}

/// The system's roots, loaded once per process (reading the store on
/// every reconnection would cost file I/O for nothing).
#[cfg(any(feature = "ws", feature = "http"))]
pub(crate) fn system_roots() -> Result<ClientTls, String> {
    static SYSTEM: std::sync::OnceLock<Result<ClientTls, String>> = std::sync::OnceLock::new();
    SYSTEM
        .get_or_init(|| ClientTls::system().map_err(|e| e.to_string()))
        .clone()
}

/// Reads a TLS failure out of an error's source chain (an `io::Error` from
/// a TLS stream, a reqwest or tungstenite error ...) and says it in words:
/// `None` when no rustls error is in the chain. `at` is `host:port`, `host`
/// the name the certificate was checked against.
///
/// A certificate the client does not accept (unknown issuer, another name,
/// expired) is [`TransportErrorKind::Certificate`]; any other handshake
/// failure (the peer does not speak TLS, no common cipher) is
/// [`TransportErrorKind::Protocol`]. Neither is retryable.
pub fn tls_failure(
    err: &(dyn std::error::Error + 'static),
    at: &str,
    host: &str,
) -> Option<TransportError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls, at, host));
        }
        // An io::Error's `source` is its payload's source, skipping the
        // payload itself (which may be another io::Error wrapping the
        // rustls error, as hyper's are): step into the payload instead.
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn describe(e: &rustls::Error, at: &str, host: &str) -> TransportError {
    let certificate = |message: String| {
        TransportError::with_source(TransportErrorKind::Certificate, message, e.clone())
    };
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => certificate(format!(
                "the certificate of {at} is not trusted: it is not signed by a trusted CA"
            )),
            // A trusted CA of the issuer's name exists, but its key does
            // not verify the certificate (another CA of the same name).
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                certificate(format!(
                    "the certificate of {at} is not trusted: its signature does not verify \
                     against the trusted CA of that name"
                ))
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                certificate(format!(
                    "the certificate of {at} is not valid for the name {host:?}"
                ))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                certificate(format!("the certificate of {at} has expired"))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                certificate(format!("the certificate of {at} is not valid yet"))
            }
            CertificateError::Revoked => certificate(format!("the certificate of {at} is revoked")),
            // webpki's reason travels as an opaque `Other`; this one is
            // common enough to say in words (a self-signed certificate made
            // with `basicConstraints = CA:TRUE`, openssl's default).
            other if format!("{other:?}").contains("CaUsedAsEndEntity") => certificate(format!(
                "the certificate of {at} is refused: it is a CA certificate used as a server \
                 certificate (make the server's certificate with CA:FALSE, signed by the CA)"
            )),
            other => certificate(format!("the certificate of {at} is refused: {other}")),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TransportError::with_source(
                TransportErrorKind::Protocol,
                format!("the TLS handshake with {at} failed (does it serve TLS?): {e}"),
                e.clone(),
            )
        }
        _ => TransportError::with_source(
            TransportErrorKind::Protocol,
            format!("the TLS handshake with {at} failed: {e}"),
            e.clone(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_pem_is_trusted_and_said() {
        let pem = format!("{}{}", ca_pem(), ca_pem());
        let tls = ClientTls::with_ca_pem(pem.as_bytes(), "ca.pem").unwrap();
        assert_eq!(tls.trusts(), "2 CA certificate(s) from ca.pem");
        assert!(format!("{tls:?}").contains("from ca.pem"));
    }

    #[test]
    fn bad_ca_input_has_its_own_errors() {
        match ClientTls::with_ca_pem(b"hello", "ca.pem") {
            Err(TlsError::NoCertificate { origin }) => assert_eq!(origin, "ca.pem"),
            other => panic!("expected NoCertificate, got {other:?}"),
        }
        let damaged = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let e = ClientTls::with_ca_pem(damaged.as_bytes(), "ca.pem").unwrap_err();
        assert!(
            matches!(&e, TlsError::BadCertificate { origin, .. } if origin == "ca.pem"),
            "{e:?}"
        );
        let dir = std::env::temp_dir().join(format!("no-such-ca-{}", std::process::id()));
        let e = ClientTls::with_ca_file(dir.join("ca.pem")).unwrap_err();
        assert!(matches!(e, TlsError::ReadCa { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read the CA file "), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }

    #[test]
    fn tls_failures_are_found_in_the_chain_and_named() {
        let untrusted = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let e = tls_failure(&untrusted, "h:443", "h").unwrap();
        assert_eq!(e.kind(), TransportErrorKind::Certificate);
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "the certificate of h:443 is not trusted: it is not signed by a trusted CA"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let e = tls_failure(&name, "h:443", "h").unwrap();
        assert_eq!(e.kind(), TransportErrorKind::Certificate);
        assert_eq!(
            e.to_string(),
            "the certificate of h:443 is not valid for the name \"h\""
        );
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = tls_failure(&plain, "h:443", "h").unwrap();
        assert_eq!(e.kind(), TransportErrorKind::Protocol);
        assert!(e.to_string().contains("does it serve TLS?"), "{e}");
        let other = std::io::Error::other("refused");
        assert!(tls_failure(&other, "h:443", "h").is_none());
        // Nested I/O errors, as an HTTP client's connector makes them.
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        ));
        let e = tls_failure(&nested, "h:443", "h").unwrap();
        assert_eq!(e.to_string(), "the certificate of h:443 has expired");
    }
}
