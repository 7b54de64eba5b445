//! `cargo xtask test`: every test stage, against a PostgreSQL and a Redis started for this run only.
//!
//! The servers listen on free loopback ports and keep their files in a fresh folder under the
//! system's temp folder, which is deleted afterwards, so runs never see each other's data. The
//! stages reach them through `TASKGATE_TEST_DATABASE_URL` and `TASKGATE_TEST_REDIS_URL`.
//!
//! Besides the single Redis, a Redis Cluster (3 primaries, 3 replicas) is started, and the
//! cluster pass runs the Redis-touching integration test modules ([`CLUSTER_FILTERS`]) again with
//! `TASKGATE_TEST_REDIS_URL` naming it (`redis-cluster://...`). `--skip-cluster` leaves it out.

use std::{
    fs, io,
    path::PathBuf,
    process::{self, Command},
    time::{Duration, Instant},
};

use devstack::{Postgres, Redis, RedisCluster};

use crate::{
    clients,
    cmd::{self, Error, Result},
    deps,
};

/// Where the stages find the throwaway servers.
struct TestEnv {
    /// A superuser URL to the `postgres` database; tests create their own databases from it.
    database_url: String,
    /// The Redis server's URL, without a database number.
    redis_url: String,
    /// The Redis Cluster's URL (every node named), when the cluster pass runs.
    cluster_url: Option<String>,
    /// The file every ERROR line the tests log is appended to ([`check_error_log`]).
    error_log: PathBuf,
}

impl TestEnv {
    /// Gives `command` the variables the tests read.
    fn apply(&self, command: &mut Command) {
        command
            .env("TASKGATE_TEST_DATABASE_URL", &self.database_url)
            .env("TASKGATE_TEST_REDIS_URL", &self.redis_url)
            .env(ERROR_LOG_VAR, &self.error_log);
    }
}

/// The variable naming the file the tests append their ERROR lines to (test-support's
/// `ERROR_LOG_VAR`).
const ERROR_LOG_VAR: &str = "TASKGATE_TEST_ERROR_LOG";

/// One step of the test run.
struct Stage {
    /// What the progress lines call it.
    name: &'static str,
    /// What it does.
    action: Action,
}

/// What a stage does.
enum Action {
    /// Runs a command, with its environment already set; passes when it exits 0.
    Command(Command),
    /// Starts the real stack from the built binaries and runs the client proofs of
    /// `clients/run-all.sh` (generated Python stubs, buf curl, the browser page, schemathesis)
    /// against it.
    ClientProofs,
    /// Fails when a test run logged an ERROR line for an error a client caused ([`check_error_log`]).
    ErrorLog,
}

/// The flag that leaves the client proofs out (for a quick Rust-only run).
const SKIP_CLIENTS: &str = "--skip-clients";

/// The flag that leaves the Redis Cluster pass out.
const SKIP_CLUSTER: &str = "--skip-cluster";

/// Our flags, which cargo never sees.
const OWN_FLAGS: &[&str] = &[SKIP_CLIENTS, SKIP_CLUSTER];

/// The cluster pass runs these integration test binaries of every crate that has one: each
/// crate's `api` binary, and `fleet-tests`' `cluster` binary (a whole fleet and a failover, on
/// private clusters of their own; it runs only here).
///
/// One `cargo test --workspace` command, so the build is the one the first stage made (a `-p`
/// per crate would unify features differently and rebuild most dependencies).
pub const CLUSTER_TESTS: &[&str] = &["api", "cluster"];

/// Test name filters (and `--skip` pairs) of the cluster pass, applied to every binary of
/// [`CLUSTER_TESTS`]: the modules whose services run Redis scripts, pipelines and sharded pub/sub
/// (sessions, the login throttle, tokens, the rate-limit window and revocation check, the task
/// cache, WatchTasks) and the `cluster` binary's fleet and failover. Every script keeps to one
/// hash slot (docs/redis-keys.md), so these run unchanged. Left out: a test that lists keys with
/// `KEYS` (one node sees only its own slots), one that stops a private single-node Redis (nothing
/// about the cluster), and every module that never touches Redis.
pub const CLUSTER_FILTERS: &[&str] = &[
    "sessions::",
    "login::",
    "tokens::",
    "cache::",
    "watch::",
    "ratelimit::",
    "edge_auth::",
    "fleet::",
    "failover::",
    "--skip",
    "every_redis_key_has_a_ttl_and_no_token_is_stored",
    "--skip",
    "without_redis_each_replica_limits_locally_and_recovers",
];

/// The stages, in the order they run; the first failure ends the run.
fn test_stages(env: &TestEnv, args: &[String]) -> Vec<Stage> {
    let cargo_args: Vec<&String> = args.iter().filter(|a| !OWN_FLAGS.contains(&a.as_str())).collect();
    let mut cargo_test = cmd::cargo();
    cargo_test.args(["test", "--workspace"]).args(&cargo_args);
    env.apply(&mut cargo_test);

    let mut stages = vec![Stage { name: "cargo test", action: Action::Command(cargo_test) }];
    if let Some(cluster_url) = &env.cluster_url {
        let mut cluster_test = cmd::cargo();
        cluster_test.args(["test", "--workspace"]);
        for test in CLUSTER_TESTS {
            cluster_test.args(["--test", test]);
        }
        cluster_test.arg("--").args(CLUSTER_FILTERS);
        env.apply(&mut cluster_test);
        cluster_test.env("TASKGATE_TEST_REDIS_URL", cluster_url);
        stages.push(Stage { name: "redis cluster", action: Action::Command(cluster_test) });
    }
    stages.push(Stage { name: "error log", action: Action::ErrorLog });
    if !args.iter().any(|a| a == SKIP_CLIENTS) {
        stages.push(Stage { name: "client proofs", action: Action::ClientProofs });
    }
    stages
}

/// Starts the throwaway servers, runs every stage, stops the servers and deletes their files.
/// Fails with the exit code of the first stage that failed.
pub fn test(cargo_args: &[String]) -> Result {
    deps::ensure()?;
    let scratch = Scratch::create(std::env::temp_dir().join(format!("taskgate-test-{}", process::id())))?;
    let postgres = Postgres::start(&scratch.path.join("pg"), None)
        .map_err(|e| Error::new(format!("starting postgres under {}: {e}", scratch.path.display())))?;
    let redis = Redis::start(&scratch.path.join("redis"), None)
        .map_err(|e| Error::new(format!("starting redis under {}: {e}", scratch.path.display())))?;
    let cluster = if cargo_args.iter().any(|a| a == SKIP_CLUSTER) {
        None
    } else {
        Some(
            RedisCluster::start(&scratch.path.join("redis-cluster"), 3, 1)
                .map_err(|e| Error::new(format!("starting a redis cluster under {}: {e}", scratch.path.display())))?,
        )
    };
    let env = TestEnv {
        database_url: postgres.url("postgres"),
        redis_url: format!("redis://127.0.0.1:{}", redis.port()),
        cluster_url: cluster.as_ref().map(RedisCluster::url),
        error_log: scratch.path.join("errors.log"),
    };
    devstack::say(&format!(
        "xtask test: postgres at {}, redis at {}, redis cluster at {}, files in {}",
        env.database_url,
        env.redis_url,
        env.cluster_url.as_deref().unwrap_or("(none)"),
        scratch.path.display()
    ));

    let outcome = run_stages(test_stages(&env, cargo_args), &postgres, &env);

    // Servers first, then their folder (which is `scratch`'s drop).
    drop(cluster);
    drop(redis);
    drop(postgres);
    drop(scratch);
    outcome
}

/// Runs `stages` in order until one fails, then prints how long each took.
fn run_stages(stages: Vec<Stage>, postgres: &Postgres, env: &TestEnv) -> Result {
    let mut report: Vec<(&str, Duration, &str)> = Vec::new();
    let mut outcome = Ok(());
    for mut stage in stages {
        devstack::say(&format!("xtask test: ==> {}", stage.name));
        let started = Instant::now();
        outcome = match &mut stage.action {
            Action::Command(command) => match cmd::status(command) {
                Ok(_) if cmd::stop_requested() => Err(cmd::interrupted()),
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(Error::failed(stage.name, status)),
                Err(e) => Err(e),
            },
            Action::ClientProofs => clients::run(postgres, &env.redis_url),
            Action::ErrorLog => check_error_log(&env.error_log),
        };
        let took = started.elapsed();
        report.push((stage.name, took, if outcome.is_ok() { "ok" } else { "FAILED" }));
        if outcome.is_err() {
            break;
        }
    }
    for (name, took, verdict) in report {
        devstack::say(&format!("xtask test: stage {name}: {verdict} in {}", cmd::human(took)));
    }
    outcome
}

/// gRPC codes a client causes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
/// RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, UNIMPLEMENTED, UNAUTHENTICATED), by number and by the names tonic's
/// `Code` prints: an ERROR line naming one would page whoever watches the logs for a user's
/// mistake.
const CLIENT_CODES: [(u8, &str); 9] = [
    (3, "InvalidArgument"),
    (5, "NotFound"),
    (6, "AlreadyExists"),
    (7, "PermissionDenied"),
    (8, "ResourceExhausted"),
    (9, "FailedPrecondition"),
    (10, "Aborted"),
    (12, "Unimplemented"),
    (16, "Unauthenticated"),
];

/// Whether an ERROR line is about an error a client caused: it names a client gRPC code
/// (`code=5`, `Code: 5`, `NotFound`) or an HTTP 4xx status.
fn is_client_error(line: &str) -> bool {
    let mentions_code = |n: u8, name: &str| {
        line.split(|c: char| c.is_whitespace() || c == ',' || c == '}' || c == ')')
            .any(|word| word == format!("code={n}") || word == format!("grpc_status={n}") || word == name)
            || line.contains(&format!("Code: {n} "))
            || line.ends_with(&format!("Code: {n}"))
    };
    let http_4xx = line.split_whitespace().any(|word| {
        word.strip_prefix("status=")
            .is_some_and(|s| s.len() == 3 && s.starts_with('4') && s.bytes().all(|b| b.is_ascii_digit()))
    });
    http_4xx || CLIENT_CODES.iter().any(|(n, name)| mentions_code(*n, name))
}

/// Lists every ERROR line the test stages logged (each names its test) and fails when one is
/// about an error a client caused: those are answered, not failures, and must be logged at
/// DEBUG or INFO.
fn check_error_log(path: &std::path::Path) -> Result {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::new(format!("reading {}: {e}", path.display()))),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    devstack::say(&format!("xtask test: the tests logged {} ERROR lines (server faults they provoke)", lines.len()));
    for line in &lines {
        devstack::say(&format!("  {line}"));
    }
    let client: Vec<&&str> = lines.iter().filter(|l| is_client_error(l)).collect();
    if client.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!("{} ERROR lines for errors a client caused, listed above", client.len())))
    }
}

/// A fresh folder that is deleted, with everything in it, when dropped.
pub struct Scratch {
    /// The folder.
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `path` empty, removing what an earlier process with the same id left there.
    pub fn create(path: PathBuf) -> Result<Self> {
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::new(format!("removing stale {}: {e}", path.display())));
            }
        }
        fs::create_dir_all(&path).map_err(|e| Error::new(format!("creating {}: {e}", path.display())))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            devstack::say(&format!("xtask test: removing {}: {e}", self.path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_for_client_errors_are_told_from_server_faults() {
        assert!(is_client_error("ERROR grpc{method=/x}: call failed code=5 latency_ms=1"));
        assert!(is_client_error("ERROR response failed classification=Code: 3 latency=1 ms"));
        assert!(is_client_error("ERROR request failed status=404 route=/api/v1/tasks/{id}"));
        assert!(is_client_error("ERROR call failed: status: NotFound, message: \"task not found\""));
        assert!(!is_client_error("ERROR grpc{method=/x}: call failed code=13 latency_ms=1"));
        assert!(!is_client_error("ERROR unexpected error in the task service error=boom"));
        assert!(!is_client_error("ERROR request failed status=500 route=/api/v1/tasks"));
    }

    #[test]
    fn every_stage_sees_the_throwaway_servers() {
        let env = TestEnv {
            database_url: "postgres://pg".to_owned(),
            redis_url: "redis://r".to_owned(),
            cluster_url: None,
            error_log: PathBuf::from("/tmp/errors.log"),
        };
        let stages = test_stages(&env, &["-p".to_owned(), "gateway".to_owned()]);
        assert_eq!(stages[0].name, "cargo test");
        let Action::Command(command) = &stages[0].action else { panic!("cargo test is a command") };
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["test", "--workspace", "-p", "gateway"]);
        let envs: Vec<_> = command.get_envs().collect();
        assert!(envs.contains(&("TASKGATE_TEST_DATABASE_URL".as_ref(), Some("postgres://pg".as_ref()))));
        assert!(envs.contains(&("TASKGATE_TEST_REDIS_URL".as_ref(), Some("redis://r".as_ref()))));
        assert!(envs.contains(&(ERROR_LOG_VAR.as_ref(), Some("/tmp/errors.log".as_ref()))));
        assert_eq!(stages[1].name, "error log");
        assert_eq!(stages[2].name, "client proofs");
    }

    #[test]
    fn skip_clients_leaves_the_client_proofs_out_and_is_not_passed_to_cargo() {
        let env = TestEnv {
            database_url: "postgres://pg".to_owned(),
            redis_url: "redis://r".to_owned(),
            cluster_url: None,
            error_log: PathBuf::from("/tmp/errors.log"),
        };
        let stages = test_stages(&env, &[SKIP_CLIENTS.to_owned(), SKIP_CLUSTER.to_owned()]);
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[1].name, "error log");
        let Action::Command(command) = &stages[0].action else { panic!("cargo test is a command") };
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["test", "--workspace"]);
    }

    #[test]
    fn the_cluster_pass_reruns_the_redis_modules_against_the_cluster_with_the_same_build() {
        let env = TestEnv {
            database_url: "postgres://pg".to_owned(),
            redis_url: "redis://r".to_owned(),
            cluster_url: Some("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001".to_owned()),
            error_log: PathBuf::from("/tmp/errors.log"),
        };
        let stages = test_stages(&env, &[SKIP_CLIENTS.to_owned()]);
        assert_eq!(stages.len(), 3);
        let Action::Command(command) = &stages[1].action else { panic!("the cluster stage is a command") };
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[..6], ["test", "--workspace", "--test", "api", "--test", "cluster"]);
        assert_eq!(args[6], "--");
        assert_eq!(args[7..], CLUSTER_FILTERS.iter().map(|f| f.to_string()).collect::<Vec<_>>());
        let envs: Vec<_> = command.get_envs().collect();
        assert!(envs.contains(&(
            "TASKGATE_TEST_REDIS_URL".as_ref(),
            Some("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001".as_ref())
        )));
    }

    #[test]
    fn scratch_folders_disappear_when_dropped() {
        let path = std::env::temp_dir().join(format!("xtask-scratch-test-{}", process::id()));
        let scratch = Scratch::create(path.clone()).expect("scratch folder");
        fs::write(path.join("file"), "x").expect("write into scratch");
        drop(scratch);
        assert!(!path.exists());
    }
}
