//! The client proofs stage of `cargo xtask test`: the real system, started from the binaries the
//! test build just made, driven by clients nobody in this project wrote (grpcio stubs, `buf curl`,
//! headless Chromium, schemathesis) through `clients/run-all.sh`.

use devstack::Postgres;

use crate::{
    cmd::{self, Error, Result},
    run::Fleet,
    services::{Profile, SERVICES},
};

/// Requests per minute the stack under the client proofs allows: the proofs (schemathesis above
/// all) send far more than a person would, and the limit itself is proven by the gateway's tests.
const PROOFS_RATE_LIMIT: &str = "100000";

/// Failed logins per client address the stack under the client proofs allows before throttling:
/// schemathesis fuzzes the login route with wrong passwords from 127.0.0.1, and the proofs then
/// log in from the same address. The throttle itself is proven by the auth service's tests.
const PROOFS_LOGIN_FAILURES_PER_IP: &str = "100000";

/// Registrations per address for the proofs stack: every proof registers from 127.0.0.1
/// (schemathesis many times), so the per-address register limit is lifted here.
const PROOFS_REGISTER_PER_IP: &str = "100000";

/// Starts auth-service, task-service and the gateway on free ports against a database of their own
/// on `postgres` and on `redis_url`, runs `clients/run-all.sh` against the gateway, then stops them.
pub fn run(postgres: &Postgres, redis_url: &str) -> Result {
    // `cargo test` already built the binaries into target/debug with the test run's feature set;
    // `cargo build` would resolve features without dev-dependencies and rebuild much of the tree.
    // This is a no-op after the test stage, and builds them when that stage was narrowed.
    let mut build = cmd::cargo();
    build.args(["test", "--workspace", "--no-run", "--quiet"]);
    cmd::check(&mut build)?;
    let database = "taskgate_clients";
    postgres.create_database(database).map_err(|e| Error::new(format!("creating database {database}: {e}")))?;
    let database_url = postgres.url(database);

    let port = || devstack::free_port().map_err(|e| Error::new(format!("finding a free port: {e}")));
    let (auth, task, gateway) = (port()?, port()?, port()?);
    let overrides = [
        ("AUTH_LISTEN_ADDR", format!("127.0.0.1:{auth}")),
        ("TASK_LISTEN_ADDR", format!("127.0.0.1:{task}")),
        ("GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{gateway}")),
        ("AUTH_SERVICE_URL", format!("http://127.0.0.1:{auth}")),
        ("TASK_SERVICE_URL", format!("http://127.0.0.1:{task}")),
        ("REDIS_PREFIX", "clients:".to_owned()),
        ("RATE_LIMIT_PER_MINUTE", PROOFS_RATE_LIMIT.to_owned()),
        ("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", PROOFS_RATE_LIMIT.to_owned()),
        ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("AUTH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("TASK_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("LOGIN_MAX_FAILURES_PER_IP", PROOFS_LOGIN_FAILURES_PER_IP.to_owned()),
        ("REGISTER_MAX_PER_IP", PROOFS_REGISTER_PER_IP.to_owned()),
        ("LOGIN_DELAY_STEP_MS", "0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];

    let mut fleet = Fleet::default();
    for service in SERVICES {
        fleet.start(Profile::Debug, service, &database_url, redis_url, &overrides)?;
    }
    let mut proofs = std::process::Command::new("bash");
    proofs
        .arg(cmd::project_root().join("clients/run-all.sh"))
        .env("TASKGATE_GATEWAY_ADDR", format!("127.0.0.1:{gateway}"))
        .current_dir(cmd::project_root());
    let outcome = match cmd::status(&mut proofs) {
        Ok(_) if cmd::stop_requested() => Err(cmd::interrupted()),
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Error::failed("clients/run-all.sh", status)),
        Err(e) => Err(e),
    };
    fleet.stop();
    outcome
}
