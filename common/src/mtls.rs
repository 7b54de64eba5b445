//! Mutual TLS between taskgate's services, and who may speak for a client.
//!
//! Every service gets one certificate from a private CA, used both as its
//! server certificate and as its client certificate when it calls another
//! service. A backend with [`MtlsSettings`] set serves only TLS and accepts
//! only peers presenting a certificate of that CA, so nothing but the
//! gateway and the other services can call it.
//!
//! The gateway's certificate names [`GATEWAY_NAME`]. Identity metadata that
//! the gateway sets for a client (`x-client-ip`) is believed only from a
//! peer presenting that certificate ([`from_gateway`]); without mutual TLS
//! (plain-HTTP development) only from a loopback peer, which the default
//! listen address of 127.0.0.1 makes the only kind of peer there is.

use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name in the gateway's certificate; backends believe client
/// metadata only from a peer whose certificate is valid for it.
pub const GATEWAY_NAME: &str = "gateway.taskgate.internal";

/// Where a service finds its mutual-TLS material (all three or none).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MtlsSettings {
    /// PEM certificate of the private CA every service's certificate comes
    /// from; with MTLS_CERT_FILE and MTLS_KEY_FILE, calls between services
    /// use mutual TLS and a backend refuses peers without such a certificate.
    #[arg(long = "mtls-ca-file", env = "MTLS_CA_FILE", requires_all = ["mtls_cert_file", "mtls_key_file"])]
    pub mtls_ca_file: Option<PathBuf>,

    /// PEM certificate of this service, from the CA in MTLS_CA_FILE (server
    /// certificate and client certificate alike).
    #[arg(long = "mtls-cert-file", env = "MTLS_CERT_FILE", requires = "mtls_ca_file")]
    pub mtls_cert_file: Option<PathBuf>,

    /// PEM private key of MTLS_CERT_FILE.
    #[arg(long = "mtls-key-file", env = "MTLS_KEY_FILE", requires = "mtls_ca_file")]
    pub mtls_key_file: Option<PathBuf>,
}

/// Loaded mutual-TLS material.
#[derive(Debug, Clone)]
pub struct Mtls {
    /// The private CA: the only issuer accepted from a peer.
    ca: Certificate,
    /// This service's certificate and key.
    identity: Identity,
}

impl MtlsSettings {
    /// The material the settings name, or `None` when mutual TLS is off.
    pub fn load(&self) -> anyhow::Result<Option<Mtls>> {
        let (Some(ca), Some(cert), Some(key)) = (&self.mtls_ca_file, &self.mtls_cert_file, &self.mtls_key_file) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, name: &str| {
            std::fs::read(path).with_context(|| format!("reading {name} {}", path.display()))
        };
        Ok(Some(Mtls {
            ca: Certificate::from_pem(read(ca, "MTLS_CA_FILE")?),
            identity: Identity::from_pem(read(cert, "MTLS_CERT_FILE")?, read(key, "MTLS_KEY_FILE")?),
        }))
    }
}

impl Mtls {
    /// A server that requires a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// A client that trusts only the CA and presents this service's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }
}

/// `url` with `https` for `http` when mutual TLS is on (the settings keep
/// one form of backend URL whichever way the services talk).
pub fn backend_url(url: &str, mtls: Option<&Mtls>) -> String {
    match (mtls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_owned(),
    }
}

/// Whether `request` came from the gateway: over mutual TLS, a peer whose
/// (CA-verified) certificate is valid for [`GATEWAY_NAME`]; over plain HTTP,
/// a loopback peer.
pub fn from_gateway<T>(request: &tonic::Request<T>) -> bool {
    match request.peer_certs() {
        Some(certs) => certs.first().is_some_and(|leaf| names_gateway(leaf)),
        None => request.remote_addr().is_some_and(|addr| addr.ip().is_loopback()),
    }
}

/// Whether the certificate `leaf` is valid for [`GATEWAY_NAME`].
fn names_gateway(leaf: &rustls_pki_types::CertificateDer<'_>) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return false };
    let Ok(name) = rustls_pki_types::ServerName::try_from(GATEWAY_NAME) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// A private CA and a certificate for each service, written as PEM files,
/// for `cargo xtask run` and the test harness.
#[cfg(feature = "certgen")]
pub mod generate {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        path::{Path, PathBuf},
    };

    use anyhow::Context as _;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    use super::MtlsSettings;

    /// The files [`write`] made.
    #[derive(Debug, Clone)]
    pub struct Bundle {
        /// The CA certificate.
        pub ca_file: PathBuf,
        /// The folder holding every file.
        pub dir: PathBuf,
    }

    impl Bundle {
        /// The settings of service `name` (`gateway`, `auth`, `task`, or any
        /// other name [`write`] was given).
        pub fn settings(&self, name: &str) -> MtlsSettings {
            MtlsSettings {
                mtls_ca_file: Some(self.ca_file.clone()),
                mtls_cert_file: Some(self.dir.join(format!("{name}.pem"))),
                mtls_key_file: Some(self.dir.join(format!("{name}-key.pem"))),
            }
        }
    }

    /// Writes `ca.pem` and, for each of `names`, `<name>.pem` and
    /// `<name>-key.pem` into `dir`. Every certificate is valid for
    /// `localhost`, 127.0.0.1, ::1 and `<name>.taskgate.internal` (so
    /// the `gateway` one is valid for [`super::GATEWAY_NAME`]), for server and client use. The CA key
    /// is not kept: nothing can be added later without a new CA.
    pub fn write(dir: &Path, names: &[&str]) -> anyhow::Result<Bundle> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "taskgate private CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).context("writing ca.pem")?;
        for name in names {
            let dns = format!("{name}.taskgate.internal");
            let mut params = CertificateParams::new(vec!["localhost".to_owned(), dns.clone()])?;
            params.distinguished_name.push(DnType::CommonName, dns);
            params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).context("writing a certificate")?;
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).context("writing a key")?;
        }
        Ok(Bundle { ca_file, dir: dir.to_owned() })
    }
}
