//! grpc.health.v1 and server reflection for every server, and the client side
//! of the health protocol used by `<binary> healthcheck`.

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, health_check_response,
        health_client::HealthClient,
        health_server::{Health, HealthServer},
    },
    server::HealthReporter,
};

/// A health reporter with `services` (and the overall "" service) marked
/// SERVING, and the gRPC service that answers health checks.
pub async fn health(services: &[&str]) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in services {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    reporter.set_service_status("", ServingStatus::Serving).await;
    (reporter, service)
}

/// Server reflection (v1 and v1alpha, for older grpcurl) over every taskgate
/// proto, so `grpcurl`/`buf curl` work without proto files.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service (v1)")?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection service (v1alpha)")?;
    Ok((v1, v1alpha))
}

/// Asks the grpc.health.v1 service at `url` (such as `http://127.0.0.1:50051`)
/// whether `service` is SERVING; used by container health checks.
pub async fn probe(url: &str, service: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid health-check url {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .context("health check call")?
        .into_inner();
    anyhow::ensure!(
        response.status == health_check_response::ServingStatus::Serving as i32,
        "service {service:?} is not serving"
    );
    Ok(())
}
