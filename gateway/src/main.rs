//! The gateway binary: `gateway serve` (the default) runs the public port;
//! `gateway healthcheck` asks a running gateway's grpc.health.v1 service, for
//! container health checks.

use clap::{Parser, Subcommand};
use gateway::{Application, Settings};

/// taskgate's public edge: gRPC, gRPC-web and REST/JSON on one port.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings, from flags or the environment.
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until Ctrl-C or SIGTERM.
    Serve,
    /// Exit 0 if the gateway on GATEWAY_LISTEN_ADDR's port answers SERVING.
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An optional `.env` beside the binary fills in variables not set in the environment.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    taskgate_common::telemetry::init(cli.settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.settings).await?;
            app.run_until_stopped(taskgate_common::shutdown::signal()).await
        }
        Command::Healthcheck => {
            let url = format!("http://127.0.0.1:{}", cli.settings.listen_addr.port());
            taskgate_common::grpc::probe(&url, "").await
        }
    }
}
