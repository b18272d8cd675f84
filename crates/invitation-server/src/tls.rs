//! The server's own TLS: a certificate chain and its private key (PEM files
//! named by `tls_cert` / `tls_key`) loaded at start, and the handshake of
//! every accepted connection, on the main port (WebSocket, `/healthz`,
//! `/metrics`) and on the API port.
//!
//! The handshake runs inside the accepted connection's task, which already
//! holds its connection slot, under the connection's handshake deadline:
//! a client that opens a socket and never finishes TLS holds one slot for
//! at most `handshake_timeout_s`, like one that never sends its HTTP head.
//! rustls' ring provider does the crypto (no CMake build, no process-wide
//! provider to install).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Why the certificate or the key cannot be used. Each names its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("{set} is set but {missing} is not: give both (PEM files) or neither")]
    Half {
        /// The setting given.
        set: &'static str,
        /// The setting missing.
        missing: &'static str,
    },
    /// A file cannot be read.
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no certificate, or no private key.
    #[error("{key} {}: no {what} found (expected a PEM {what})", path.display())]
    Missing {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The PEM is damaged.
    #[error("{key} {}: {detail}", path.display())]
    Damaged {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The roots for the server's outbound `https://` requests cannot be
    /// loaded (`outbound_ca_file`, or the system's store when an `https://`
    /// endpoint is configured and no CA file is).
    #[error("outbound TLS: {0}")]
    Outbound(#[from] invitation_transport::tls::TlsError),
    /// rustls refused the pair: the key is not the certificate's, or of a
    /// kind it cannot use.
    #[error("tls_key {} does not fit tls_cert {}: {detail}", key.display(), cert.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

/// A loaded certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// The settings' pair, if any: both paths or neither.
    pub fn from_settings(
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsSetupError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            (Some(_), None) => Err(TlsSetupError::Half {
                set: "tls_cert",
                missing: "tls_key",
            }),
            (None, Some(_)) => Err(TlsSetupError::Half {
                set: "tls_key",
                missing: "tls_cert",
            }),
        }
    }

    /// Loads a PEM certificate chain (the server's certificate first) and
    /// its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsSetupError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsSetupError::Read {
                key,
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read("tls_cert", cert_path)?;
        let key_pem = read("tls_key", key_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Damaged {
                key: "tls_cert",
                path: cert_path.to_owned(),
                detail: format!("unreadable PEM: {e}"),
            })?;
        if chain.is_empty() {
            return Err(TlsSetupError::Missing {
                key: "tls_cert",
                path: cert_path.to_owned(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::Missing {
                key: "tls_key",
                path: key_path.to_owned(),
                what: "private key",
            },
            e => TlsSetupError::Damaged {
                key: "tls_key",
                path: key_path.to_owned(),
                detail: format!("unreadable PEM: {e}"),
            },
        })?;
        let pair = |e: rustls::Error| TlsSetupError::Pair {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            detail: e.to_string(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(pair)?;
        // Both ports speak HTTP/1.1 (the WebSocket upgrade, the API).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The TLS handshake on an accepted connection. The caller bounds it
    /// in time.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self.start(tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// The handshake as a future to poll (the caller bounds it in time).
    pub(crate) fn start(&self, tcp: TcpStream) -> tokio_rustls::Accept<TcpStream> {
        self.acceptor.accept(tcp)
    }
}

/// Makes rustls' ring provider the process default, once (later calls do
/// nothing). Every rustls configuration this server makes names its
/// provider itself; the default is for clients built elsewhere in the
/// process without one (reqwest's, whose `rustls-no-provider` build
/// panics without a default), e.g. in tests and examples.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS client configuration of the server's outbound requests
/// (webhooks, push gateways): the CA certificates of `ca_file` when given,
/// else the system's roots. Without a CA file and with no system roots, an
/// error when `https_needed` (an `https://` endpoint is configured), else a
/// configuration that trusts nothing (plain `http://` endpoints only).
pub fn outbound_tls(
    ca_file: Option<&Path>,
    https_needed: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    use invitation_transport::tls::ClientTls;
    let tls = match ca_file {
        Some(path) => ClientTls::with_ca_file(path)?,
        None => match ClientTls::system() {
            Ok(tls) => tls,
            Err(e) if https_needed => return Err(e.into()),
            Err(_) => ClientTls::with_root_store(rustls::RootCertStore::empty())?,
        },
    };
    tracing::debug!(trusts = tls.trusts(), "outbound TLS roots");
    Ok(tls.config())
}

/// A reqwest client builder for the server's outbound requests, with the
/// TLS configuration of [`outbound_tls`] (the ring provider; reqwest's own
/// would bring aws-lc-rs).
pub(crate) fn http_client(tls: &rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(tls.clone())
}

/// An accepted connection, plain or TLS. The TLS state is boxed: a plain
/// connection pays one word for it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The socket below (for socket options).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

/// The handshake, if the server has TLS, under `deadline`; `None` when it
/// failed or took too long (logged at debug: scanners and health checkers
/// that speak plain HTTP to a TLS port are common).
pub(crate) async fn handshake(
    tcp: TcpStream,
    tls: Option<&ServerTls>,
    deadline: tokio::time::Instant,
    peer: std::net::SocketAddr,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Plain(tcp));
    };
    match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timeout");
            None
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!(
            "invitation-tls-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads() {
        let f = files("good");
        let (cert, key) = pair();
        std::fs::write(f.dir.join("c.pem"), cert).unwrap();
        std::fs::write(f.dir.join("k.pem"), key).unwrap();
        let tls = ServerTls::from_settings(Some(&f.dir.join("c.pem")), Some(&f.dir.join("k.pem")))
            .unwrap();
        assert!(tls.is_some());
        assert!(ServerTls::from_settings(None, None).unwrap().is_none());
    }

    /// Every bad input stops the start with an error naming the file (and
    /// the setting).
    #[test]
    fn bad_files_are_named() {
        let f = files("bad");
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let c = f.dir.join("cert.pem");
        let k = f.dir.join("key.pem");
        let wrong = f.dir.join("other-key.pem");
        let junk = f.dir.join("junk.pem");
        let damaged = f.dir.join("damaged.pem");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        std::fs::write(&wrong, &other_key).unwrap();
        std::fs::write(&junk, "not pem at all\n").unwrap();
        std::fs::write(
            &damaged,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = f.dir.join("missing.pem");
        let cases: Vec<(Option<&Path>, Option<&Path>, String)> = vec![
            (
                Some(&c),
                None,
                "tls_cert is set but tls_key is not: give both (PEM files) or neither".into(),
            ),
            (
                None,
                Some(&k),
                "tls_key is set but tls_cert is not: give both (PEM files) or neither".into(),
            ),
            (
                Some(&missing),
                Some(&k),
                format!("tls_cert {}: cannot read: ", missing.display()),
            ),
            (
                Some(&c),
                Some(&missing),
                format!("tls_key {}: cannot read: ", missing.display()),
            ),
            (
                Some(&junk),
                Some(&k),
                format!(
                    "tls_cert {}: no certificate found (expected a PEM certificate)",
                    junk.display()
                ),
            ),
            (
                Some(&c),
                Some(&junk),
                format!(
                    "tls_key {}: no private key found (expected a PEM private key)",
                    junk.display()
                ),
            ),
            (
                Some(&damaged),
                Some(&k),
                format!("tls_cert {}: unreadable PEM", damaged.display()),
            ),
            (
                Some(&c),
                Some(&wrong),
                format!(
                    "tls_key {} does not fit tls_cert {}: ",
                    wrong.display(),
                    c.display()
                ),
            ),
        ];
        for (cert, key, expected) in cases {
            let e = ServerTls::from_settings(cert, key).expect_err(&expected);
            assert!(
                e.to_string().starts_with(&expected),
                "expected {expected:?}, got {e:?}"
            );
        }
    }
}
