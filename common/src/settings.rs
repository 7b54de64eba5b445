//! What every service's settings have in common: how the command line is
//! read, and how a secret setting is parsed so it never shows in `Debug`
//! output, logs or `--help`.

use std::convert::Infallible;

use secrecy::SecretString;

/// Reads a service's command line: an optional `.env` file in the working
/// directory fills in variables the environment does not set (real
/// environment variables win), then clap parses flags and variables, and
/// answers `--help` (which lists every variable with its default) and
/// `--version` itself.
pub fn load<C: clap::Parser>() -> C {
    let _ = dotenvy::dotenv();
    C::parse()
}

/// The value parser of every secret setting (URLs that may carry a password,
/// keys): the value is wrapped at once, so `Debug` prints it redacted. Pair
/// it with `hide_env_values = true` so `--help` does not show it either.
pub fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}
