//! TLS on the public port: gRPC over h2 and plain HTTP/1.1, both chosen by ALPN.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, ServerName},
    },
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::spawn_gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_port_speaks_tls_for_grpc_and_http1() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, certified.cert.pem()).expect("writing the certificate");
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).expect("writing the key");
    let (addr, _stop) = spawn_gateway(|s| {
        s.tls_cert_file = Some(cert_file.clone());
        s.tls_key_file = Some(key_file.clone());
    })
    .await;

    // gRPC: h2 by ALPN.
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(certified.cert.pem())).domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("a TLS connection");
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health over TLS")
        .into_inner();
    assert_eq!(reply.status, 1);

    // HTTP/1.1 by ALPN.
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(certified.cert.der().to_vec())).expect("a root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let server_name = ServerName::try_from("localhost").expect("a name");
    let mut tls = TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.expect("a TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.expect("write");
    let mut reply = Vec::new();
    // The server may close without close_notify; what was read is kept.
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Plaintext is refused on a TLS port.
    let plain = reqwest::Client::new().get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
}
