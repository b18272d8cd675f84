//! Certificates made at test time (rcgen): a CA, and a server certificate
//! it signs, written as PEM files to a temporary directory.

use std::path::PathBuf;

use invitation::transport::tls::ClientTls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::TempDir;

/// A CA and one server certificate (and its key) signed by it.
pub struct TestPki {
    /// Holds the files; removed on drop.
    pub dir: TempDir,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

impl TestPki {
    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Self {
        let dir = TempDir::new("tls");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a client trusting another test CA must see an
        // unknown issuer, not a same-named CA whose signature fails.
        let name = dir.0.file_name().unwrap().to_string_lossy().into_owned();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {name}"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let pki = Self {
            cert: dir.0.join("server.pem"),
            key: dir.0.join("server.key"),
            ca: dir.0.join("ca.pem"),
            dir,
        };
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
        pki
    }

    /// For a server on 127.0.0.1 (also named `localhost`).
    pub fn loopback() -> Self {
        Self::new(&["127.0.0.1", "localhost"])
    }

    /// A client that trusts this CA only.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::with_ca_file(&self.ca).unwrap()
    }

    /// Puts the certificate and key in a server's settings.
    pub fn serve(&self, config: &mut invitation_server::Config) {
        config.tls_cert = Some(self.cert.clone());
        config.tls_key = Some(self.key.clone());
    }
}
