//! The gateway's configuration, read once at start-up from the environment
//! (or flags); `gateway --help` lists every variable with its default.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use taskgate_common::telemetry::LogFormat;

/// Everything the gateway is told from outside.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address of the one public port (gRPC, gRPC-web and REST).
    #[arg(long, env = "GATEWAY_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// The auth service's replicas: comma-separated URLs and/or a URL whose
    /// host is a DNS name re-resolved every 5 s (one replica per address);
    /// calls are balanced over them.
    #[arg(long, env = "AUTH_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    pub auth_url: String,

    /// The task service's replicas, in the same forms as `AUTH_SERVICE_URL`.
    #[arg(long, env = "TASK_SERVICE_URL", default_value = "http://127.0.0.1:50052")]
    pub task_url: String,

    /// Redis, shared by every replica: rate-limit windows and revocation records.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub redis_url: secrecy::SecretString,

    /// Prefix of every Redis key; must equal the auth service's so the
    /// revocation records it writes are the ones the gateway reads.
    #[arg(long, env = "REDIS_PREFIX", default_value = "taskgate:", value_parser = taskgate_common::keys::parse_prefix)]
    pub redis_prefix: String,

    /// Accepted requests per subject (user or client address) in any rolling
    /// minute, across every replica and protocol.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_minute: u32,

    /// The only accepted `iss` claim.
    #[arg(long, env = "JWT_ISSUER", default_value = "taskgate")]
    pub jwt_issuer: String,

    /// The only accepted `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "taskgate")]
    pub jwt_audience: String,

    /// PEM certificate chain; with `TLS_KEY_FILE`, the port speaks TLS (h2 and http/1.1).
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for `TLS_CERT_FILE`.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// `*` to reflect any origin (then without credentials), or a comma-separated
    /// list of origins that may also send cookies.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,

    /// Whether session cookies carry the `Secure` attribute (turn off only for
    /// plain-HTTP local development).
    #[arg(long, env = "COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,

    /// Comma-separated addresses of load balancers in front of the gateway whose
    /// `X-Forwarded-For` is believed; from anyone else it is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,

    /// Most WatchTasks streams (gRPC, gRPC-web and SSE together) this replica
    /// serves at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_WATCH_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watch_streams: u32,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Longest time a request may take at the gateway before it answers
    /// DEADLINE_EXCEEDED / 504 (a shorter `grpc-timeout` wins).
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_seconds: u64,

    /// Folder of the browser demo, served under `/demo` when it exists.
    #[arg(long, env = "DEMO_DIR", default_value = "clients/web/dist")]
    pub demo_dir: PathBuf,

    /// Address of the admin listener serving `/metrics` (keep it off the
    /// public interface; `/metrics` is not served on the public port).
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Most open client connections; further clients wait in the kernel's
    /// accept queue until one closes.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most requests in progress at once; past it requests are shed at once
    /// with RESOURCE_EXHAUSTED / 503 and `Retry-After: 1` instead of queuing.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Time a new connection has to send its first bytes (or finish its TLS
    /// handshake), and an HTTP/1.1 client to send a request head, in milliseconds.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// Time a connection (HTTP/1.1 keep-alive or HTTP/2) may stay open with no
    /// request in progress before the gateway closes it, in milliseconds.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// Accepted signed-in requests per client address per minute, counted by
    /// each replica on its own (in memory, no Redis call), so many accounts
    /// from one address cannot multiply `RATE_LIMIT_PER_MINUTE`.
    #[arg(long, env = "RATE_LIMIT_PER_ADDRESS_PER_MINUTE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_address_per_minute: u32,

    /// Most slots one Redis call may lease to this replica (from a limit of
    /// 200 a minute, a lease is 1% of `RATE_LIMIT_PER_MINUTE`, at most this);
    /// 1 turns leases off: every request asks Redis, and the gateway itself
    /// checks the session on every request.
    #[arg(long, env = "RATE_LIMIT_MAX_LEASE", default_value_t = crate::ratelimit::DEFAULT_MAX_LEASE, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::ratelimit::MAX_LEASE)))]
    pub rate_limit_max_lease: u32,

    /// How often the JWKS is fetched again so that a withdrawn key stops
    /// being trusted, in seconds.
    #[arg(long, env = "JWKS_REFRESH_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refresh_seconds: u64,

    /// Key of the CSRF tokens (an HMAC of the session id); every replica
    /// must have the same one. Without it a random key is made at start-up,
    /// which is only right for a single replica.
    #[arg(long, env = "CSRF_SECRET", hide_env_values = true, value_parser = taskgate_common::settings::secret)]
    pub csrf_secret: Option<secrecy::SecretString>,

    /// Mutual TLS to the backends.
    #[command(flatten)]
    pub mtls: taskgate_common::mtls::MtlsSettings,
}

impl Settings {
    /// The rate limits these settings give.
    pub fn limits(&self) -> crate::ratelimit::Limits {
        crate::ratelimit::Limits {
            per_subject: self.rate_limit_per_minute,
            per_address: self.rate_limit_per_address_per_minute,
            max_lease: self.rate_limit_max_lease,
        }
    }

    /// Settings for an in-process gateway in tests: port 0 on 127.0.0.1,
    /// no TLS, the default limit, plain-HTTP cookies.
    pub fn for_tests(auth_url: String, task_url: String, redis_url: String, redis_prefix: String) -> Settings {
        Settings {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_url,
            task_url,
            redis_url: redis_url.into(),
            redis_prefix,
            rate_limit_per_minute: 100,
            jwt_issuer: "taskgate".into(),
            jwt_audience: "taskgate".into(),
            tls_cert_file: None,
            tls_key_file: None,
            cors_allowed_origins: "*".into(),
            cookie_secure: true,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Pretty,
            request_timeout_seconds: 30,
            max_watch_streams: 10_000,
            demo_dir: PathBuf::from("clients/web/dist"),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: 8192,
            max_in_flight: 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            rate_limit_per_address_per_minute: 1000,
            rate_limit_max_lease: crate::ratelimit::DEFAULT_MAX_LEASE,
            jwks_refresh_seconds: 300,
            csrf_secret: Some(secrecy::SecretString::from("taskgate test csrf secret")),
            mtls: taskgate_common::mtls::MtlsSettings::default(),
        }
    }

    /// [`Self::header_timeout_ms`] as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// [`Self::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`Self::request_timeout_seconds`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// The settings as the binary parses them.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: super::Settings,
    }

    #[test]
    fn the_lease_ceiling_is_one_to_a_thousand_and_a_hundred_by_default() {
        let parse = |v: &str| {
            Cli::try_parse_from(["gateway", "--rate-limit-max-lease", v]).map(|c| c.settings.rate_limit_max_lease)
        };
        assert_eq!(parse("1").ok(), Some(1));
        assert_eq!(parse("1000").ok(), Some(1000));
        assert!(parse("0").is_err());
        assert!(parse("1001").is_err());
        let default = Cli::try_parse_from(["gateway"]).map(|c| c.settings.rate_limit_max_lease);
        assert_eq!(default.ok(), Some(crate::ratelimit::DEFAULT_MAX_LEASE));
    }
}
