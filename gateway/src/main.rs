//! The gateway binary: `gateway serve` (the default) runs the public port;
//! `gateway healthcheck` asks a running gateway's grpc.health.v1 service, for
//! container health checks.

use clap::Subcommand;
use gateway::{Application, Settings};
use taskgate_common::{grpc, settings, shutdown};

/// The subcommands.
#[derive(Subcommand)]
enum Command {
    /// Serve until Ctrl-C or SIGTERM.
    Serve,
    /// Exit 0 if the gateway on GATEWAY_LISTEN_ADDR's port answers SERVING.
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, _telemetry) = settings::start::<Settings, Command>(
        "gateway",
        "taskgate's public edge: gRPC, gRPC-web and REST/JSON on one port",
        |s| s.log_format,
    );
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(cli.settings).await?.run_until_stopped(shutdown::signal()).await,
        Command::Healthcheck => grpc::healthcheck(cli.settings.listen_addr, "", None).await,
    }
}
