//! The PostgreSQL and Redis that `cargo xtask run` and `cargo xtask migrate` talk to.
//!
//! `DATABASE_URL` and `REDIS_URL` win when set; whichever is unset is served by a project-local
//! server: PostgreSQL with its data kept under `.local/pg` (so a second run finds its data again) and
//! a throwaway Redis logging under `.local/redis` (or, for a fleet of replicas, a throwaway Redis
//! Cluster of 3 primaries and 3 replicas under `.local/redis-cluster`). The local servers stop when
//! [`Stores`] drops.

use std::{env, path::Path, process::Command};

use devstack::{Postgres, Redis, RedisCluster, pg_binary};

use crate::cmd::{self, Error, Result};

/// The database the services use on the local PostgreSQL.
const DATABASE: &str = "taskgate";

/// Where the services' PostgreSQL and Redis are, and the local servers started for them.
#[derive(Debug)]
pub struct Stores {
    /// The URL the services get as `DATABASE_URL`.
    pub database_url: String,
    /// The URL the services get as `REDIS_URL`.
    pub redis_url: String,
    /// The local PostgreSQL, when `DATABASE_URL` was unset; it stops on drop.
    postgres: Option<Postgres>,
    /// The local Redis, when `REDIS_URL` was unset; it stops on drop.
    redis: Option<Redis>,
    /// The local Redis Cluster, when `REDIS_URL` was unset and a cluster was asked for.
    cluster: Option<RedisCluster>,
}

impl Stores {
    /// Uses `DATABASE_URL` and `REDIS_URL` from the environment, starting a local server for each
    /// one that is unset (a Redis Cluster instead of one Redis when `cluster` is set).
    pub fn from_env_or_local(cluster: bool) -> Result<Self> {
        let local = cmd::project_root().join(".local");
        let (database_url, postgres) = match env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
            Some(url) => (url, None),
            None => {
                let pg = start_local_postgres(&local.join("pg"))?;
                (pg.url(DATABASE), Some(pg))
            }
        };
        let mut local_cluster = None;
        let (redis_url, redis) = match env::var("REDIS_URL").ok().filter(|v| !v.is_empty()) {
            Some(url) => (url, None),
            None if cluster => {
                let dir = local.join("redis-cluster");
                devstack::say(&format!(
                    "xtask: starting a Redis Cluster, 3 primaries + 3 replicas (files in {})",
                    dir.display()
                ));
                let _ = std::fs::remove_dir_all(&dir);
                let started = RedisCluster::start(&dir, 3, 1)
                    .map_err(|e| Error::new(format!("starting a redis cluster: {e}")))?;
                let url = started.url();
                local_cluster = Some(started);
                (url, None)
            }
            None => {
                let dir = local.join("redis");
                devstack::say(&format!("xtask: starting Redis with an append-only file (in {})", dir.display()));
                // Persistent, so stopping and starting the stack keeps every session and revocation.
                let redis = Redis::start_persistent(&dir, port_from_env("TASKGATE_REDIS_PORT")?)
                    .map_err(|e| Error::new(format!("starting redis: {e}")))?;
                (redis.url(0), Some(redis))
            }
        };
        Ok(Stores { database_url, redis_url, postgres, redis, cluster: local_cluster })
    }

    /// Rows for the table `cargo xtask run` prints: what, where, and where it came from.
    pub fn rows(&self) -> Vec<[String; 3]> {
        let origin = |local: bool, dir: &str, var: &str| {
            if local { format!("local, {dir}") } else { format!("from {var}") }
        };
        vec![
            [
                "postgres".to_owned(),
                self.database_url.clone(),
                origin(self.postgres.is_some(), ".local/pg", "DATABASE_URL"),
            ],
            match &self.cluster {
                Some(_) => {
                    ["redis cluster".to_owned(), self.redis_url.clone(), "local, .local/redis-cluster".to_owned()]
                }
                None => [
                    "redis".to_owned(),
                    self.redis_url.clone(),
                    origin(self.redis.is_some(), ".local/redis", "REDIS_URL"),
                ],
            },
        ]
    }

    /// Stops the local servers, Redis first, saying so.
    pub fn stop(mut self) {
        if let Some(cluster) = self.cluster.take() {
            devstack::say("xtask: stopping the Redis Cluster");
            drop(cluster);
        }
        if let Some(mut redis) = self.redis.take() {
            devstack::say("xtask: stopping Redis");
            if let Err(e) = redis.stop() {
                devstack::say(&format!("xtask: stopping redis: {e}"));
            }
        }
        if let Some(mut pg) = self.postgres.take() {
            devstack::say("xtask: stopping PostgreSQL");
            if let Err(e) = pg.stop() {
                devstack::say(&format!("xtask: stopping postgres: {e}"));
            }
        }
    }
}

/// Starts (creating on first use) the PostgreSQL cluster under `dir` and creates the database.
fn start_local_postgres(dir: &Path) -> Result<Postgres> {
    refuse_if_already_running(&dir.join("pgdata"))?;
    devstack::say(&format!("xtask: starting PostgreSQL (data in {})", dir.display()));
    let pg = Postgres::start(dir, port_from_env("TASKGATE_PG_PORT")?)
        .map_err(|e| Error::new(format!("starting postgres under {}: {e}", dir.display())))?;
    pg.create_database(DATABASE).map_err(|e| Error::new(format!("creating database {DATABASE}: {e}")))?;
    Ok(pg)
}

/// Fails with the command to run when a server from an earlier xtask that was killed outright
/// still holds the data folder: starting a second one would only fail less clearly.
fn refuse_if_already_running(data_dir: &Path) -> Result {
    if !data_dir.join("postmaster.pid").exists() {
        return Ok(());
    }
    let Some(pg_ctl) = pg_binary("pg_ctl") else {
        return Ok(());
    };
    let mut status = pg_ctl_command(&pg_ctl);
    status.arg("status").arg("-D").arg(data_dir);
    let running = status.output().map(|o| o.status.success()).unwrap_or(false);
    if !running {
        // A stale pid file from a crash: PostgreSQL removes it itself on start.
        return Ok(());
    }
    let mut stop = pg_ctl_command(&pg_ctl);
    stop.arg("stop").arg("-m").arg("fast").arg("-D").arg(data_dir);
    Err(Error::new(format!(
        "a postgres server already runs from {} (another `cargo xtask run`, or one that was killed); \
         stop it with: {}",
        data_dir.display(),
        cmd::show(&stop)
    )))
}

/// `pg_ctl`, run as the `postgres` user when we are root, as devstack runs it.
fn pg_ctl_command(pg_ctl: &Path) -> Command {
    if cmd::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        Command::new(pg_ctl)
    }
}

/// Reads a port number from `var`; unset means "pick a free one".
fn port_from_env(var: &str) -> Result<Option<u16>> {
    match env::var(var) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => parse_port(var, &v).map(Some),
        Err(env::VarError::NotPresent) => Ok(None),
        Err(env::VarError::NotUnicode(_)) => Err(Error::new(format!("{var} is not valid unicode"))),
    }
}

/// Parses `value` of `var` as a TCP port.
fn parse_port(var: &str, value: &str) -> Result<u16> {
    match value.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(Error::new(format!("{var} must be a port number between 1 and 65535, got `{value}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_must_be_real_port_numbers() {
        assert_eq!(parse_port("TASKGATE_PG_PORT", "5433").ok(), Some(5433));
        assert!(parse_port("TASKGATE_PG_PORT", "0").is_err());
        assert!(parse_port("TASKGATE_PG_PORT", "70000").is_err());
        let err = parse_port("TASKGATE_PG_PORT", "five").err().map(|e| e.message);
        assert_eq!(err.as_deref(), Some("TASKGATE_PG_PORT must be a port number between 1 and 65535, got `five`"));
    }
}
