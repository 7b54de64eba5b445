//! The task service's configuration, read from the environment (or flags).

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use taskgate_common::telemetry::LogFormat;

/// Everything the task service reads at start-up. `task-service --help` lists
/// each variable with its default.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "task-service", about = "taskgate task service (gRPC)")]
pub struct Settings {
    /// Address the gRPC server listens on: loopback by default, since only the
    /// gateway calls it; set an internal interface (with MTLS_* set) to reach
    /// it from other hosts.
    #[arg(long, env = "TASK_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,
    /// Address of the admin listener serving Prometheus metrics at
    /// `/metrics` (plain HTTP): loopback by default; a deployment sets an
    /// interface its Prometheus reaches (the manifests use 0.0.0.0:9092).
    #[arg(long, env = "TASK_ADMIN_ADDR", default_value = "127.0.0.1:9092")]
    pub admin_addr: SocketAddr,
    /// PostgreSQL URL; the service uses (and migrates) the `task` schema in it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub database_url: SecretString,
    /// Most Postgres connections this process holds.
    #[arg(long, env = "TASK_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// Redis URL, for the list cache and the revocation check.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub redis_url: SecretString,
    /// Prefix of every Redis key; shared with the auth service, whose
    /// revocation records live under it.
    #[arg(long, env = "REDIS_PREFIX", default_value = "taskgate:", value_parser = taskgate_common::keys::parse_prefix)]
    pub redis_prefix: String,
    /// The auth service's replicas, where the JWKS comes from: comma-separated
    /// URLs and/or a URL whose host is a DNS name re-resolved every 5 s.
    #[arg(long, env = "AUTH_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    pub auth_url: String,
    /// The only accepted token issuer (`iss`).
    #[arg(long, env = "JWT_ISSUER", default_value = "taskgate")]
    pub jwt_issuer: String,
    /// The only accepted token audience (`aud`).
    #[arg(long, env = "JWT_AUDIENCE", default_value = "taskgate")]
    pub jwt_audience: String,
    /// How long a cached list page lives in Redis, in seconds.
    #[arg(long, env = "TASK_CACHE_TTL_SECONDS", default_value_t = 300)]
    pub cache_ttl_seconds: u64,
    /// The largest cached list page, in bytes of JSON; larger lists are read
    /// from Postgres every time, so a user's cache stays within 8 x this.
    #[arg(long, env = "TASK_CACHE_MAX_ENTRY_BYTES", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1024..))]
    pub cache_max_entry_bytes: u64,
    /// Open WatchTasks streams allowed per user, across every replica.
    #[arg(long, env = "WATCH_MAX_STREAMS_PER_USER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_max_streams_per_user: u32,
    /// Seconds between heartbeat events on an idle WatchTasks stream.
    #[arg(long, env = "WATCH_HEARTBEAT_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_heartbeat_seconds: u64,
    /// Seconds between a stream's checks for a revoked session (and for
    /// wake-ups lost with a Redis reconnect).
    #[arg(long, env = "WATCH_CHECK_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_check_seconds: u64,
    /// Seconds a stream whose buffer is full waits for its reader before it
    /// is ended with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WATCH_SEND_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_send_timeout_seconds: u64,
    /// Events kept per user for WatchTasks resume (approximately: Redis trims
    /// whole blocks).
    #[arg(long, env = "WATCH_EVENT_LOG_LENGTH", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_event_log_length: u64,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Whether the service applies its database migrations when it starts.
    /// Turn off when a deployment runs `<service> migrate` as a job before
    /// the rollout; either way, many replicas migrating at once is safe.
    #[arg(long, env = "MIGRATE_AT_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_at_start: bool,
    /// How often the JWKS is fetched again so that a withdrawn key stops
    /// being trusted, in seconds.
    #[arg(long, env = "JWKS_REFRESH_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refresh_seconds: u64,
    /// Mutual TLS with the gateway and the auth service.
    #[command(flatten)]
    pub mtls: taskgate_common::mtls::MtlsSettings,
    /// Test hook, never set in production: a pause between loading a list
    /// from Postgres and offering it to the cache, which widens the race the
    /// cache's check-and-set closes so tests can show it is closed.
    #[arg(skip)]
    pub cache_fill_delay: Duration,
    /// Test hook, never set in production: a pause between a write's commit
    /// and its cache invalidation, so tests can drop the call in between.
    #[arg(skip)]
    pub cache_invalidate_delay: Duration,
}

impl Settings {
    /// Settings for an in-process test server on 127.0.0.1:0.
    pub fn for_tests(database_url: String, redis_url: String, redis_prefix: String, auth_url: String) -> Self {
        Settings {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: SecretString::from(database_url),
            db_max_connections: 10,
            redis_url: redis_url.into(),
            redis_prefix,
            auth_url,
            jwt_issuer: "taskgate".into(),
            jwt_audience: "taskgate".into(),
            cache_ttl_seconds: 300,
            cache_max_entry_bytes: 262_144,
            watch_max_streams_per_user: 5,
            watch_heartbeat_seconds: 15,
            watch_check_seconds: 2,
            watch_send_timeout_seconds: 10,
            watch_event_log_length: 1000,
            log_format: LogFormat::Pretty,
            migrate_at_start: true,
            jwks_refresh_seconds: 300,
            mtls: taskgate_common::mtls::MtlsSettings::default(),
            cache_fill_delay: Duration::ZERO,
            cache_invalidate_delay: Duration::ZERO,
        }
    }

    /// The WatchTasks limits.
    pub fn watch(&self) -> crate::watch::WatchConfig {
        crate::watch::WatchConfig {
            max_streams_per_user: self.watch_max_streams_per_user,
            heartbeat: Duration::from_secs(self.watch_heartbeat_seconds),
            check_interval: Duration::from_secs(self.watch_check_seconds),
            send_timeout: Duration::from_secs(self.watch_send_timeout_seconds),
        }
    }

    /// The cache TTL as a duration (at least one second).
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::try_parse_from(["task-service", "--database-url", "postgres://x/y"]).expect("parse");
        assert_eq!(s.listen_addr, SocketAddr::from(([127, 0, 0, 1], 50052)));
        assert_eq!(s.redis_prefix, "taskgate:");
        assert_eq!(s.cache_ttl_seconds, 300);
        assert_eq!(s.auth_url, "http://127.0.0.1:50051");
        assert_eq!(s.watch_max_streams_per_user, 5);
        assert_eq!(s.watch_event_log_length, 1000);
    }

    #[test]
    fn the_database_url_is_not_printed() {
        let s =
            Settings::for_tests("postgres://u:hunter2@h/d".into(), "redis://r".into(), "p:".into(), "http://a".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
