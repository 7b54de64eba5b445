//! The `task-service` binary: `serve` (the default), `migrate`, `healthcheck`.

use secrecy::ExposeSecret as _;
use task_service::{Application, Settings};
use taskgate_common::{db, grpc, settings, shutdown};

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
    let (cli, _telemetry) =
        settings::start::<Settings, Command>("task-service", "taskgate's task service (gRPC)", |s| s.log_format);
    let settings = cli.settings;
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
