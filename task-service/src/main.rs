//! The `task-service` binary: `serve` (the default), `migrate`, `healthcheck`.

use secrecy::ExposeSecret as _;
use task_service::{Application, Settings};
use taskgate_common::{db, grpc, settings, shutdown, telemetry};

/// Command line: settings from the environment, and what to do.
#[derive(clap::Parser)]
#[command(name = "task-service", version, about = "taskgate task service (gRPC)")]
struct Cli {
    /// What to do; `serve` when not given.
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

/// The subcommands.
#[derive(clap::Subcommand)]
enum Command {
    /// Serve gRPC until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the `task` schema migrations and exit.
    Migrate,
    /// Ask the running server's grpc.health.v1 whether it is SERVING.
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = settings::load();
    let settings = cli.settings;
    // Held to the end of `main`: dropping it sends the spans still queued.
    let _telemetry = telemetry::init(settings.log_format, "task-service");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(settings).await?.run_until_stopped(shutdown::signal()).await,
        Command::Migrate => {
            let pool = db::pool(settings.database_url.expose_secret(), db::TASK_SCHEMA, 1)?;
            db::migrate(&pool, db::TASK_SCHEMA, &db::TASK_MIGRATOR).await?;
            tracing::info!("task schema is up to date");
            Ok(())
        }
        Command::Healthcheck => {
            let mtls = settings.mtls.load()?;
            grpc::healthcheck(settings.listen_addr, taskgate_proto::service_names::TASK, mtls.as_ref()).await
        }
    }
}
