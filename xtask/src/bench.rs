//! `cargo xtask bench [REQUESTS] [CONCURRENCY]`: the benchmark of `fleet-tests/examples/bench.rs`
//! on a release build, against throwaway PostgreSQL and Redis servers that it starts and removes.

use std::process;

use devstack::{Postgres, Redis};

use crate::{
    cmd::{self, Error, Result},
    deps,
    services::{Profile, SERVICES},
    test::Scratch,
};

/// Builds the release binaries and the benchmark, starts the servers, runs it, stops them.
pub fn bench(args: &[String]) -> Result {
    check_args(args)?;
    deps::ensure()?;
    Profile::Release.build(&SERVICES.map(|s| s.name))?;
    cmd::check(cmd::cargo().args(["build", "--release", "-p", "fleet-tests", "--example", "bench"]))?;

    let scratch = Scratch::create(std::env::temp_dir().join(format!("taskgate-bench-{}", process::id())))?;
    let postgres = Postgres::start(&scratch.path.join("pg"), None)
        .map_err(|e| Error::new(format!("starting postgres under {}: {e}", scratch.path.display())))?;
    let redis = Redis::start(&scratch.path.join("redis"), None)
        .map_err(|e| Error::new(format!("starting redis under {}: {e}", scratch.path.display())))?;
    let release = cmd::target_dir().join("release");
    let mut run = process::Command::new(release.join("examples").join("bench"));
    run.args(args)
        .env("TASKGATE_TEST_DATABASE_URL", postgres.url("postgres"))
        .env("TASKGATE_TEST_REDIS_URL", format!("redis://127.0.0.1:{}", redis.port()))
        .env("TASKGATE_BIN_DIR", &release);
    let outcome = cmd::check(&mut run);
    drop(redis);
    drop(postgres);
    drop(scratch);
    outcome
}

/// Accepts `[REQUESTS] [CONCURRENCY]`, each a positive number, before anything is built.
fn check_args(args: &[String]) -> Result {
    if args.len() > 2 {
        return Err(Error::with_code(2, "bench takes at most two arguments: [REQUESTS] [CONCURRENCY]"));
    }
    match args.iter().find(|a| a.parse::<usize>().map_or(true, |n| n == 0)) {
        Some(bad) => {
            Err(Error::with_code(2, format!("bench takes [REQUESTS] [CONCURRENCY], positive numbers; got `{bad}`")))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_concurrency_must_be_positive_numbers() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_args(&[]).is_ok());
        assert!(check_args(&args(&["5000", "32"])).is_ok());
        assert!(check_args(&args(&["0"])).is_err());
        assert!(check_args(&args(&["many"])).is_err());
        assert!(check_args(&args(&["10", "-1"])).is_err());
        assert!(check_args(&args(&["1", "2", "3"])).is_err());
    }
}
