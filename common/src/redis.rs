//! The Redis connection every service uses: a small fred pool that reconnects
//! by itself and fails commands quickly while Redis is away.
//!
//! `REDIS_URL` takes every form fred understands:
//! - `redis://[user:pass@]host:port[/db]`: one server;
//! - `rediss://...`: one server over TLS (rustls, the system's roots);
//! - `redis-cluster://host:port[?node=host:port&node=...]`: a Redis Cluster,
//!   from one or more seed nodes (one is enough: the others are discovered);
//!   `rediss-cluster://` over TLS;
//! - `redis-sentinel://host:port[/db]?sentinelServiceName=<name>&node=host:port`:
//!   the primary a group of sentinels names.
//!
//! On a cluster fred routes every command and script by its keys' slot,
//! follows MOVED/ASK redirections, and after a connection to a node drops
//! (a primary died and its replica took over) reconnects and reloads the slot
//! map, seeded from the configured nodes and from every node it last knew, so
//! losing the one seed node of the URL does not lose the cluster.

use std::time::Duration;

use anyhow::Context as _;
use fred::{prelude::*, types::config::ClusterDiscoveryPolicy};

/// How long a command may wait for Redis before failing; bounds the latency a
/// Redis outage adds to a request.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects a pool of `size` clients to `url`.
///
/// It does not wait for Redis to be reachable: the pool keeps reconnecting in
/// the background (exponential back-off up to 2 s), and callers check
/// [`is_up`] to skip Redis work during an outage.
pub async fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config = config(url)?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(1);
            c.internal_command_timeout = Duration::from_secs(1);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_pool(size.max(1))
        .context("building redis pool")?;
    pool.connect();
    // Give a healthy Redis a moment so the first requests find it connected;
    // an absent one is not an error here.
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.wait_for_connect()).await;
    Ok(pool)
}

/// The fred configuration of `url`: on a cluster, the slot map is reloaded
/// from every node last known as well as from the URL's seeds.
pub fn config(url: &str) -> anyhow::Result<Config> {
    let mut config = Config::from_url(url).context("REDIS_URL is not a valid redis url")?;
    if config.server.is_clustered() {
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)
            .context("configuring redis cluster discovery")?;
    }
    Ok(config)
}

/// True when at least one client of the pool is connected right now.
pub fn is_up(pool: &Pool) -> bool {
    pool.clients().iter().any(|c| c.is_connected())
}

/// Per-command options for calls on a request path: fail at once (a
/// cancelled command) when the connection is down or drops, instead of
/// waiting in fred's buffer for a reconnection until the command timeout, so
/// "Redis is unreachable" is told apart from "Redis is slow".
pub fn fail_fast() -> Options {
    Options { fail_fast: true, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_redis_url_form_is_accepted() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user:pass@127.0.0.1:6379/2",
            "rediss://redis.example.com:6380",
            "redis-cluster://127.0.0.1:7000",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster&node=127.0.0.1:26380",
        ] {
            assert!(config(url).is_ok(), "{url} refused");
        }
    }

    #[test]
    fn a_cluster_url_with_one_seed_is_a_cluster() {
        let config = config("redis-cluster://127.0.0.1:7000").expect("cluster url");
        assert!(config.server.is_clustered());
    }
}
