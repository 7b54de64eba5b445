//! Optional TLS on the public port (rustls with the ring provider), offering
//! h2 and http/1.1 by ALPN so gRPC, gRPC-web and REST all work over it.

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio_rustls::{TlsAcceptor, rustls};

/// An acceptor for the PEM certificate chain at `cert` and private key at `key`.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        File::open(cert).with_context(|| format!("opening TLS_CERT_FILE {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from TLS_CERT_FILE {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "TLS_CERT_FILE {} holds no certificate", cert.display());
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        File::open(key).with_context(|| format!("opening TLS_KEY_FILE {}", key.display()))?,
    ))
    .with_context(|| format!("reading TLS_KEY_FILE {}", key.display()))?
    .with_context(|| format!("TLS_KEY_FILE {} holds no private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS_CERT_FILE and TLS_KEY_FILE do not form a usable certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
