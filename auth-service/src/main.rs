//! The `auth-service` binary: `serve` (default), `migrate`, `healthcheck`,
//! `rotate-keys` and `revoke-key`. Everything else lives in the library.

use auth_service::{Application, Settings};
use taskgate_common::{grpc, settings, shutdown};

/// What to do.
#[derive(clap::Subcommand, Clone)]
enum Command {
    /// Run the gRPC server until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Exit 0 if the server at AUTH_LISTEN_ADDR reports SERVING, else 1.
    Healthcheck,
    /// Introduce a new signing key (signs after KEY_PUBLISH_DELAY_SECONDS).
    RotateKeys,
    /// Withdraw a compromised signing key at once: it stops signing and is
    /// unpublished (replicas reload within KEY_RELOAD_SECONDS, verifiers
    /// refetch within JWKS_REFRESH_SECONDS), and every session it signed ends.
    RevokeKey {
        /// The `kid` of the key to withdraw.
        kid: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, _telemetry) =
        settings::start::<Settings, Command>("auth-service", "taskgate's accounts, tokens and sessions", |s| {
            s.log_format
        });
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(cli.settings).await?.run_until_stopped(shutdown::signal()).await,
        Command::Migrate => auth_service::migrate(&cli.settings).await,
        Command::Healthcheck => {
            let mtls = cli.settings.mtls.load()?;
            grpc::healthcheck(cli.settings.listen_addr, taskgate_proto::service_names::AUTH, mtls.as_ref()).await
        }
        Command::RotateKeys => {
            let kid = auth_service::rotate_keys(&cli.settings).await?;
            println!("new signing key {kid}");
            Ok(())
        }
        Command::RevokeKey { kid } => {
            match auth_service::revoke_key(&cli.settings, &kid).await? {
                Some(new) => println!("withdrew signing key {kid}; {new} signs from now on"),
                None => println!("withdrew signing key {kid}"),
            }
            Ok(())
        }
    }
}
