//! A certificate for measuring TLS: one self-signed certificate for
//! 127.0.0.1, made once per process (rcgen) and written where the server
//! can read it; the generator's clients trust exactly that certificate.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use invitation_transport::tls::ClientTls;

/// The server's certificate and key files, and the clients' trust.
pub(crate) struct BenchPki {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client: ClientTls,
}

/// The process's certificate (made on first use, in the temporary
/// directory; removed with it).
pub(crate) fn get() -> Result<&'static BenchPki> {
    static PKI: OnceLock<Result<BenchPki, String>> = OnceLock::new();
    PKI.get_or_init(|| make().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot make the benchmark's certificate: {e}"))
}

fn make() -> Result<BenchPki> {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let dir = std::env::temp_dir().join(format!("invitation-bench-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    let client = ClientTls::with_ca_pem(made.cert.pem().as_bytes(), "the benchmark's certificate")
        .context("trusting the benchmark's certificate")?;
    Ok(BenchPki { cert, key, client })
}
