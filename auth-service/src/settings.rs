//! The service's configuration, read once at start-up from the environment
//! (or flags); `auth-service --help` lists every variable with its default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;
use taskgate_common::telemetry::LogFormat;

/// Everything the auth service can be configured with. `Debug` is safe: the
/// URLs and the admin password are [`SecretString`]s and print redacted.
///
/// Lifetimes are [`Duration`]s parsed from minutes or seconds, so tests can
/// set them to a few seconds directly.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "auth-service", about = "taskgate's accounts, tokens and sessions")]
pub struct Settings {
    /// Address the gRPC server listens on: loopback by default, since only the
    /// gateway and the task service call it; set an internal interface (with
    /// MTLS_* set) to reach it from other hosts.
    #[arg(long, env = "AUTH_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Address of the admin listener serving Prometheus metrics at
    /// `/metrics` (plain HTTP): loopback by default; a deployment sets an
    /// interface its Prometheus reaches (the manifests use 0.0.0.0:9091).
    #[arg(long, env = "AUTH_ADMIN_ADDR", default_value = "127.0.0.1:9091")]
    pub admin_addr: SocketAddr,

    /// PostgreSQL URL; the service uses the `auth` schema in it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub database_url: SecretString,

    /// Most Postgres connections this replica opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Redis URL for sessions, revocation records and the login throttle.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub redis_url: SecretString,

    /// Prefix of every Redis key, shared with the verifiers (gateway, task service).
    #[arg(long, env = "REDIS_PREFIX", default_value = "taskgate:", value_parser = taskgate_common::keys::parse_prefix)]
    pub redis_prefix: String,

    /// Access-token lifetime, in minutes.
    #[arg(long = "access-token-expire-minutes", env = "ACCESS_TOKEN_EXPIRE_MINUTES", default_value = "15", value_parser = parse_minutes)]
    pub access_token_ttl: Duration,

    /// Refresh-token lifetime, in minutes.
    #[arg(long = "refresh-token-expire-minutes", env = "REFRESH_TOKEN_EXPIRE_MINUTES", default_value = "10080", value_parser = parse_minutes)]
    pub refresh_token_ttl: Duration,

    /// Absolute session lifetime in minutes: after it, refreshing stops and
    /// the user must log in again.
    #[arg(long = "session-max-lifetime-minutes", env = "SESSION_MAX_LIFETIME_MINUTES", default_value = "43200", value_parser = parse_minutes)]
    pub session_max_lifetime: Duration,

    /// How long, in seconds, the immediate predecessor of a session's refresh
    /// token still returns the same successor pair (a client retrying after a
    /// lost response).
    #[arg(long = "refresh-grace-seconds", env = "REFRESH_GRACE_SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub refresh_grace: Duration,

    /// The `iss` of every token.
    #[arg(long, env = "JWT_ISSUER", default_value = "taskgate")]
    pub jwt_issuer: String,

    /// The `aud` of every token.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "taskgate")]
    pub jwt_audience: String,

    /// A PKCS#8 PEM Ed25519 private key to sign with. Without it, keys live
    /// in Postgres and are shared by every replica.
    #[arg(long, env = "SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// 32 bytes (base64 or hex) that seal the private signing keys stored in
    /// Postgres (ChaCha20-Poly1305); without it they are stored in the clear.
    #[arg(long, env = "KEY_ENCRYPTION_KEY", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub key_encryption_key: Option<SecretString>,

    /// Seconds between publishing a new key (rotate-keys) and signing with it,
    /// so every verifier and replica has it first.
    #[arg(long = "key-publish-delay-seconds", env = "KEY_PUBLISH_DELAY_SECONDS", default_value = "600", value_parser = parse_seconds)]
    pub key_publish_delay: Duration,

    /// Seconds between reloads of the signing keys from Postgres (a key with
    /// an unknown `kid` also triggers a reload).
    #[arg(long = "key-reload-seconds", env = "KEY_RELOAD_SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub key_reload_interval: Duration,

    /// Username of an admin account created at start if missing.
    #[arg(long, env = "ADMIN_USERNAME")]
    pub admin_username: Option<String>,

    /// Email of the bootstrap admin account.
    #[arg(long, env = "ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// Password of the bootstrap admin account: used to create it, or to
    /// prove that an existing account of that name is the operator's.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub admin_password: Option<SecretString>,

    /// Failed logins per account (all of its login names together) allowed
    /// within the throttle window; attempts in flight count as failures.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_account: u32,

    /// Failed logins per client address (IPv4, or IPv6 /64) allowed within
    /// the throttle window. Kept below the per-account limit, so one
    /// attacking address runs out before the account it attacks does.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_IP", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_ip: u32,

    /// Length of the sliding window failed logins are counted in, in seconds.
    #[arg(long = "login-failure-window-seconds", env = "LOGIN_FAILURE_WINDOW_SECONDS", default_value = "900", value_parser = parse_positive_seconds)]
    pub login_failure_window: Duration,

    /// Extra delay per earlier failure on the account, in milliseconds (capped
    /// at 2 s), before the hard limit answers RESOURCE_EXHAUSTED.
    #[arg(long = "login-delay-step-ms", env = "LOGIN_DELAY_STEP_MS", default_value = "250", value_parser = parse_millis)]
    pub login_delay_step: Duration,

    /// Registrations per client address allowed within the registration window.
    #[arg(long, env = "REGISTER_MAX_PER_IP", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub register_max_per_ip: u32,

    /// Length of the sliding window registrations are counted in, in seconds.
    #[arg(long = "register-window-seconds", env = "REGISTER_WINDOW_SECONDS", default_value = "3600", value_parser = parse_positive_seconds)]
    pub register_window: Duration,

    /// Most live sessions per user; a login beyond it ends the user's oldest session.
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_sessions_per_user: u32,

    /// Password hashing threads (= hashes that may run at once), each keeping
    /// one 19 MiB argon2 memory block; 0 means one per core but one (at least one).
    #[arg(long, env = "HASH_THREADS", default_value_t = 0)]
    pub hash_threads: usize,

    /// Most password hashes that may wait for a thread; one more is refused
    /// at once with RESOURCE_EXHAUSTED and a retry time.
    #[arg(long, env = "HASH_QUEUE_CAPACITY", default_value_t = 32)]
    pub hash_queue_capacity: usize,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Whether the service applies its database migrations when it starts.
    /// Turn off when a deployment runs `<service> migrate` as a job before
    /// the rollout; either way, many replicas migrating at once is safe.
    #[arg(long, env = "MIGRATE_AT_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_at_start: bool,

    /// Mutual TLS with the gateway and the task service.
    #[command(flatten)]
    pub mtls: taskgate_common::mtls::MtlsSettings,
}

impl Settings {
    /// The failed-login and registration limits these settings give.
    pub fn throttle(&self) -> crate::throttle::ThrottleConfig {
        crate::throttle::ThrottleConfig {
            max_per_account: self.login_max_failures_per_account,
            max_per_ip: self.login_max_failures_per_ip,
            window: self.login_failure_window,
            delay_step: self.login_delay_step,
            max_registrations_per_ip: self.register_max_per_ip,
            register_window: self.register_window,
        }
    }

    /// Settings for an in-process test server on 127.0.0.1:0.
    ///
    /// Keys are published and used at once, the throttle is loose (tests that
    /// exercise it tighten it) and there is no progressive delay.
    pub fn for_tests(database_url: String, redis_url: String, redis_prefix: String) -> Self {
        Settings {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            database_max_connections: 5,
            redis_url: redis_url.into(),
            redis_prefix,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            session_max_lifetime: Duration::from_secs(30 * 24 * 3600),
            refresh_grace: Duration::from_secs(5),
            jwt_issuer: "taskgate".into(),
            jwt_audience: "taskgate".into(),
            signing_key_file: None,
            key_encryption_key: None,
            key_publish_delay: Duration::ZERO,
            key_reload_interval: Duration::from_secs(60),
            admin_username: None,
            admin_email: None,
            admin_password: None,
            login_max_failures_per_account: 1000,
            login_max_failures_per_ip: 1000,
            login_failure_window: Duration::from_secs(900),
            login_delay_step: Duration::ZERO,
            register_max_per_ip: 1000,
            register_window: Duration::from_secs(3600),
            max_sessions_per_user: 50,
            hash_threads: 0,
            hash_queue_capacity: 64,
            log_format: LogFormat::Pretty,
            migrate_at_start: true,
            mtls: taskgate_common::mtls::MtlsSettings::default(),
        }
    }

    /// Hashing threads to start: `HASH_THREADS`, or when 0 one per core but
    /// one (at least one), so that a login flood always leaves a core to the
    /// cheap calls: measured on 2 cores, hashing on both kept Refresh p99 at
    /// 3x its idle value during a flood even at the lowest scheduling
    /// priority, hashing on one kept it under 2x.
    pub fn hashing_threads(&self) -> usize {
        match self.hash_threads {
            0 => default_hashing_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            n => n,
        }
    }

    /// The longest any token lives: keys stay published this long after
    /// their last use.
    pub fn longest_token_lifetime(&self) -> Duration {
        self.access_token_ttl.max(self.refresh_token_ttl.min(self.session_max_lifetime))
    }
}

fn parse_minutes(s: &str) -> Result<Duration, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of minutes"))?;
    if n == 0 {
        return Err("must be at least 1 minute".into());
    }
    Ok(Duration::from_secs(n * 60))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    Ok(Duration::from_secs(n))
}

fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        d if d.is_zero() => Err("must be at least 1 second".into()),
        d => Ok(d),
    }
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of milliseconds"))?;
    Ok(Duration::from_millis(n))
}

/// The default number of hashing threads on a machine of `cores` cores.
fn default_hashing_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::try_parse_from(["auth-service", "--database-url", "postgres://x/y"]).expect("parses");
        assert_eq!(s.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(s.refresh_token_ttl, Duration::from_secs(10080 * 60));
        assert_eq!(s.session_max_lifetime, Duration::from_secs(43200 * 60));
        assert_eq!(s.refresh_grace, Duration::from_secs(5));
        assert_eq!(s.redis_prefix, "taskgate:");
        assert_eq!(s.max_sessions_per_user, 50);
        assert_eq!((s.login_max_failures_per_account, s.login_max_failures_per_ip), (10, 5));
        assert!(s.login_max_failures_per_ip < s.login_max_failures_per_account);
        assert_eq!((s.hash_threads, s.hash_queue_capacity), (0, 32));
    }

    #[test]
    fn hashing_leaves_one_core_to_the_cheap_calls() {
        assert_eq!([1, 2, 4, 16].map(default_hashing_threads), [1, 1, 3, 15]);
        let mut s = Settings::for_tests("postgres://x/y".into(), "redis://h".into(), "p:".into());
        s.hash_threads = 2;
        assert_eq!(s.hashing_threads(), 2);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut s =
            Settings::for_tests("postgres://user:dbsecret@h/db".into(), "redis://:redissecret@h".into(), "p:".into());
        s.admin_password = Some("adminsecret".into());
        let shown = format!("{s:?}");
        for secret in ["dbsecret", "redissecret", "adminsecret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn a_zero_minute_lifetime_is_refused() {
        assert!(parse_minutes("0").is_err());
        assert!(parse_minutes("abc").is_err());
        assert!(parse_positive_seconds("0").is_err());
        let zero_limit = Settings::try_parse_from([
            "auth-service",
            "--database-url",
            "postgres://x/y",
            "--login-max-failures-per-account",
            "0",
        ]);
        assert!(zero_limit.is_err());
    }
}
