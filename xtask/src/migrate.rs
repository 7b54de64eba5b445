//! `cargo xtask migrate`: applies auth-service's and task-service's migrations.
//!
//! Each service owns its migrations and applies them itself (`<binary> migrate`, and again at every
//! start); this only builds the binaries and runs them against `DATABASE_URL`, or against the
//! project-local PostgreSQL that `cargo xtask run` uses.

use crate::{
    cmd::{self, Result},
    deps,
    services::{self, Profile},
    stores::Stores,
};

/// The services that own database migrations, in the order they apply them.
const MIGRATING: [&str; 2] = ["auth-service", "task-service"];

/// Builds the migrating services and runs `<binary> migrate` for each.
pub fn migrate(profile: Profile) -> Result {
    deps::ensure()?;
    profile.build(&MIGRATING)?;
    let stores = Stores::from_env_or_local(false)?;
    for name in MIGRATING {
        let mut command = services::command(profile, name, &stores.database_url, &stores.redis_url);
        cmd::check(command.arg("migrate"))?;
    }
    devstack::say(&format!("xtask migrate: {} is up to date", stores.database_url));
    stores.stop();
    Ok(())
}
