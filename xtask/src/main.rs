//! `cargo xtask`: taskgate's project automation, written in Rust so it runs wherever cargo does.
//!
//! # Layout
//! - [`cmd`]: the error type, running child commands, and the Ctrl-C/SIGTERM flag.
//! - [`deps`]: installs PostgreSQL and Redis on Debian/Ubuntu when they are missing.
//! - [`stores`]: the PostgreSQL and Redis that `run` and `migrate` use.
//! - [`services`]: the three service binaries, their build and their settings.
//! - [`manifests`]: the Kubernetes manifests check of `lint`.
//! - [`observability`]: the alerting rules and dashboard check of `lint`.
//! - [`run`], [`test`], [`lint`], [`migrate`]: one module per subcommand.

mod bench;
mod clients;
mod cmd;
mod deps;
mod lint;
mod manifests;
mod migrate;
mod observability;
mod run;
mod services;
mod stores;
mod test;

use std::process::ExitCode;

use crate::cmd::Error;

/// What `cargo xtask --help` prints.
const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  deps                      install PostgreSQL and Redis with apt-get when they are missing
  run [--debug|--fast] [--replicas N]
                            start PostgreSQL, Redis and the three services (release build by default;
                            --debug or --release=false for a debug build, --fast for the release
                            build optimised for speed throughout); with --replicas N, N
                            replicas of each backend on a local Redis Cluster behind the one gateway
                            port; Ctrl-C stops everything
  test [cargo test args]    run the test stages against throwaway PostgreSQL and Redis servers, then
                            the Redis-touching test modules again on a Redis Cluster
                            (--skip-cluster, --skip-clients leave stages out)
  lint                      cargo fmt --check, clippy -D warnings, buf lint, docker-compose config,
                            kubernetes-validate --strict on deploy/kubernetes
  bench [--fast] [REQUESTS] [CONCURRENCY]
                            build the release (or fast) binaries, start throwaway PostgreSQL and Redis servers
                            and measure: lists through the gateway against direct, create, login
                            against the argon2id ceiling, reads during a login flood, and each
                            service's memory idle, at the flood's peak and a minute later
  migrate [--debug]         apply the auth and task database migrations to DATABASE_URL

environment:
  DATABASE_URL, REDIS_URL   when both are set, `run` and `migrate` use them instead of local servers
  TASKGATE_PG_PORT          port for the local PostgreSQL under .local/pg (default: a free port)
  TASKGATE_REDIS_PORT       port for the local Redis (default: a free port)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            devstack::say(&format!("xtask: error: {}", err.message));
            ExitCode::from(err.code)
        }
    }
}

/// Runs the subcommand that `args` names.
fn dispatch(args: &[String]) -> Result<(), Error> {
    let Some((command, rest)) = args.split_first() else {
        devstack::say(USAGE);
        return Err(Error::with_code(2, "no command given"));
    };
    match command.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "deps" => {
            no_arguments(command, rest)?;
            deps::ensure()
        }
        "run" => {
            cmd::catch_stop_signals()?;
            run::run(run::RunOptions::from_args(rest)?)
        }
        "test" => {
            cmd::catch_stop_signals()?;
            test::test(rest)
        }
        "lint" => {
            no_arguments(command, rest)?;
            cmd::catch_stop_signals()?;
            lint::lint()
        }
        "bench" => {
            cmd::catch_stop_signals()?;
            bench::bench(rest)
        }
        "migrate" => {
            cmd::catch_stop_signals()?;
            migrate::migrate(services::Profile::from_args(rest)?)
        }
        other => {
            devstack::say(USAGE);
            Err(Error::with_code(2, format!("unknown command `{other}`")))
        }
    }
}

/// Rejects arguments for a subcommand that takes none.
fn no_arguments(command: &str, rest: &[String]) -> Result<(), Error> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(Error::with_code(2, format!("`{command}` takes no arguments, got `{arg}`"))),
    }
}
