//! What every service's settings have in common: how the command line is
//! read, and how a secret setting is parsed so it never shows in `Debug`
//! output, logs or `--help`.

use std::convert::Infallible;

use secrecy::SecretString;

use crate::telemetry::{self, LogFormat, Telemetry};

/// A service binary's command line: a subcommand (`serve` when none is
/// given, by each binary's choice) and its settings, from flags or the
/// environment.
#[derive(clap::Parser)]
pub struct Cli<S: clap::Args, C: clap::Subcommand> {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<C>,
    /// Settings, from flags or the environment.
    #[command(flatten)]
    pub settings: S,
}

/// Starts a service binary: reads its command line, naming it `binary`
/// with `about` in `--help` (an optional `.env` file in the working
/// directory fills in variables the environment does not set; real
/// environment variables win; `--help` lists every variable with its
/// default), then starts telemetry (logs in the
/// format `log_format` reads from the settings; traces when `OTEL_*` asks).
/// Hold the returned guard to the end of `main`: dropping it sends the spans
/// still queued.
pub fn start<S: clap::Args, C: clap::Subcommand>(
    binary: &'static str,
    about: &'static str,
    log_format: impl FnOnce(&S) -> LogFormat,
) -> (Cli<S, C>, Telemetry) {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let _ = dotenvy::dotenv();
    let matches = Cli::<S, C>::command()
        .name(binary)
        .bin_name(binary)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = Cli::<S, C>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let guard = telemetry::init(log_format(&cli.settings), binary);
    (cli, guard)
}

/// The value parser of every secret setting (URLs that may carry a password,
/// keys): the value is wrapped at once, so `Debug` prints it redacted. Pair
/// it with `hide_env_values = true` so `--help` does not show it either.
pub fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}
