//! HTTPS termination: loads the PEM certificate chain and key for the public listener, offers
//! HTTP/2 and HTTP/1.1 by ALPN, and swaps in a renewed certificate on reload.
//!
//! The certificate is served through a [`ResolvesServerCert`] that holds the current
//! [`CertifiedKey`] in an [`ArcSwap`]: a reload replaces it for every handshake that starts
//! afterwards, while established connections keep the one they were made with. So a renewed
//! certificate (Let's Encrypt, cert-manager) needs a SIGHUP, not a restart.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// ALPN protocols offered to clients, in order of preference (RFC 7301): HTTP/2, then
/// HTTP/1.1. The server detects the protocol from the connection preface either way, so a
/// client that sends no ALPN still gets HTTP/1.1.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the certificate or key did not load; each message names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("server.tls_key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("server.tls_cert/tls_key: {0}")]
    Mismatch(String),
}

/// The HTTPS side of the public listener: the acceptor every connection uses and the handle
/// that swaps its certificate. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<ReloadableCert>,
}

impl Tls {
    /// Loads the certificate and key and builds the acceptor.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = provider();
        let key = load_key(files, &provider)?;
        let resolver = Arc::new(ReloadableCert { current: ArcSwap::new(key) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), resolver })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads `files` again. On success the new certificate is served to every new handshake;
    /// on error the running one stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let key = load_key(files, &provider())?;
        self.resolver.current.store(key);
        Ok(())
    }
}

/// Checks that the certificate chain and key load and belong together, without building an
/// acceptor: what `--check` calls.
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    load_key(files, &provider()).map(drop)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM chain (leaf first) and the key (PKCS#8, PKCS#1 RSA or SEC1 EC) and checks that
/// the key is the leaf certificate's.
fn load_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_error = |reason: String| TlsError::Cert { path: files.cert.display().to_string(), reason };
    let key_error = |reason: String| TlsError::Key { path: files.key.display().to_string(), reason };

    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_error(pem_reason(&e, CERT_EXPECTED)))?;
    if certs.is_empty() {
        return Err(cert_error(format!("no certificate in the file ({CERT_EXPECTED})")));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_error(pem_reason(&e, KEY_EXPECTED)))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("the key does not load ({e}); {KEY_EXPECTED}")))?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // A key type whose public half the provider cannot show is accepted, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch(
                "the key does not belong to the first certificate of the chain".into(),
            ))
        }
        Err(e) => return Err(cert_error(e.to_string())),
    }
    Ok(Arc::new(certified))
}

/// What `server.tls_cert` must hold, for messages about a file that does not.
const CERT_EXPECTED: &str = "expected PEM certificates, leaf first: -----BEGIN CERTIFICATE-----";
/// What `server.tls_key` must hold.
const KEY_EXPECTED: &str =
    "expected a PEM private key: PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 RSA (BEGIN RSA PRIVATE KEY) or SEC1 EC (BEGIN EC PRIVATE KEY)";

/// Why a PEM file did not load, in plain words.
fn pem_reason(e: &rustls::pki_types::pem::Error, expected: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => crate::io_error::reading(io),
        Error::NoItemsFound => format!("nothing usable in the file ({expected})"),
        other => format!("the file is not valid PEM ({other}); {expected}"),
    }
}

/// Serves whichever certificate was loaded last, whatever the client's SNI.
struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A self-signed certificate for localhost: (certificate PEM, key PEM).
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let files = write(dir.path(), &cert, &key);
        check(&files).unwrap();
        assert!(Tls::load(&files).is_ok());
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();

        let missing = TlsFiles { cert: dir.path().join("none.pem"), key: dir.path().join("key.pem") };
        let message = check(&missing).unwrap_err().to_string();
        assert!(message.starts_with("server.tls_cert ") && message.contains("none.pem"), "{message}");
        assert!(message.ends_with("there is no such file"), "plain words, no os error code: {message}");

        let files = write(dir.path(), "not a certificate\n", &key);
        let message = check(&files).unwrap_err().to_string();
        assert!(message.contains("server.tls_cert") && message.contains("no certificate"), "{message}");

        let files =
            write(dir.path(), &cert, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let message = check(&files).unwrap_err().to_string();
        assert!(message.starts_with("server.tls_key ") && message.contains("key.pem"), "{message}");

        let files = write(dir.path(), &cert, &cert);
        let message = check(&files).unwrap_err().to_string();
        assert!(message.starts_with("server.tls_key "), "a certificate is not a key: {message}");
    }

    #[test]
    fn a_key_from_another_certificate_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let message = check(&write(dir.path(), &cert, &other_key)).unwrap_err().to_string();
        assert!(message.starts_with("server.tls_cert/tls_key"), "{message}");
    }

    #[test]
    fn a_failed_reload_keeps_the_served_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let files = write(dir.path(), &cert, &key);
        let tls = Tls::load(&files).unwrap();
        let served = || tls.resolver.current.load().cert[0].clone();
        let first = served();

        std::fs::write(&files.key, "garbage").unwrap();
        assert!(tls.reload(&files).is_err());
        assert_eq!(served(), first);

        let (cert, key) = self_signed();
        let files = write(dir.path(), &cert, &key);
        tls.reload(&files).unwrap();
        assert_ne!(served(), first);
    }
}
