//! `cargo xtask bench [--fast] [REQUESTS] [CONCURRENCY]`: the benchmark of
//! `fleet-tests/examples/bench.rs` on a release build (or the `fast` one), against throwaway
//! PostgreSQL and Redis servers that it starts and removes.

use std::process;

use devstack::{Postgres, Redis};

use crate::{
    cmd::{self, Error, Result},
    deps,
    services::{Profile, SERVICES},
    test::Scratch,
};

/// Builds the release (or fast) binaries and the benchmark, starts the servers, runs it, stops them.
pub fn bench(args: &[String]) -> Result {
    let (profile, args) = parse_args(args)?;
    deps::ensure()?;
    profile.build(&SERVICES.map(|s| s.name))?;
    cmd::check(cmd::cargo().args(["build", "--release", "-p", "fleet-tests", "--example", "bench"]))?;

    let scratch = Scratch::create(std::env::temp_dir().join(format!("taskgate-bench-{}", process::id())))?;
    let postgres = Postgres::start(&scratch.path.join("pg"), None)
        .map_err(|e| Error::new(format!("starting postgres under {}: {e}", scratch.path.display())))?;
    let redis = Redis::start(&scratch.path.join("redis"), None)
        .map_err(|e| Error::new(format!("starting redis under {}: {e}", scratch.path.display())))?;
    // The benchmark client is always the release build; the services are the profile's.
    let mut run = process::Command::new(cmd::target_dir().join("release").join("examples").join("bench"));
    run.args(args)
        .env("TASKGATE_TEST_DATABASE_URL", postgres.url("postgres"))
        .env("TASKGATE_TEST_REDIS_URL", format!("redis://127.0.0.1:{}", redis.port()))
        .env("TASKGATE_BIN_DIR", cmd::target_dir().join(profile.dir_name()));
    let outcome = cmd::check(&mut run);
    drop(redis);
    drop(postgres);
    drop(scratch);
    outcome
}

/// Reads `[--fast] [REQUESTS] [CONCURRENCY]` before anything is built: the profile of the services,
/// and the arguments the benchmark itself takes.
fn parse_args(args: &[String]) -> Result<(Profile, &[String])> {
    let (profile, numbers) = match args.split_first() {
        Some((first, rest)) if first == "--fast" => (Profile::Fast, rest),
        _ => (Profile::Release, args),
    };
    check_args(numbers)?;
    Ok((profile, numbers))
}

/// Accepts `[REQUESTS] [CONCURRENCY]`, each a positive number.
fn check_args(args: &[String]) -> Result {
    if args.len() > 2 {
        return Err(Error::with_code(2, "bench takes at most two arguments: [--fast] [REQUESTS] [CONCURRENCY]"));
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

    #[test]
    fn fast_comes_first_and_picks_the_fast_build() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let fast = args(&["--fast", "100", "8"]);
        assert!(matches!(parse_args(&fast), Ok((Profile::Fast, rest)) if rest == &fast[1..]));
        assert!(matches!(parse_args(&args(&["100"])), Ok((Profile::Release, _))));
        assert!(parse_args(&args(&["100", "--fast"])).is_err());
        assert!(parse_args(&args(&["--fast", "--fast"])).is_err());
    }
}
