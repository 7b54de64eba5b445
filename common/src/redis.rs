//! The Redis connection every service uses: a small fred pool that reconnects
//! by itself and fails commands quickly while Redis is away.

use std::time::Duration;

use anyhow::Context as _;
use fred::prelude::*;

/// How long a command may wait for Redis before failing; bounds the latency a
/// Redis outage adds to a request.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects a pool of `size` clients to `url`.
///
/// It does not wait for Redis to be reachable: the pool keeps reconnecting in
/// the background (exponential back-off up to 2 s), and callers check
/// [`is_up`] to skip Redis work during an outage.
pub async fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config = Config::from_url(url).context("REDIS_URL is not a valid redis url")?;
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
