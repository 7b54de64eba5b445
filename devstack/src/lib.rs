//! Starts project-local PostgreSQL and Redis servers for development and tests.
//!
//! Used by `cargo xtask run`/`cargo xtask test` (one pair for the whole run)
//! and by the test-support crate (private servers a test may stop and start
//! again). It depends on nothing but `std`, so `xtask` stays light.
//!
//! # Layout
//! - [`Postgres`]: an `initdb` cluster under a folder, run with `pg_ctl`.
//! - [`Redis`]: a `redis-server`, without persistence for tests, with an
//!   append-only file for `cargo xtask run`.
//! - [`RedisCluster`]: a Redis Cluster of `redis-server --cluster-enabled yes`
//!   nodes (3 primaries and 3 replicas by default) built with
//!   `redis-cli --cluster create`.
//! - [`free_port`]: asks the kernel for an unused loopback port.
//!
//! Both servers stop when dropped, so a panicking caller leaves no strays.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where Debian installs the PostgreSQL 15 server binaries, which are not on `PATH`.
const PG_BIN_DIRS: &[&str] =
    &["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"];

/// Returns a TCP port on 127.0.0.1 that nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds a PostgreSQL server binary such as `initdb`, on `PATH` or in Debian's folders.
pub fn pg_binary(name: &str) -> Option<PathBuf> {
    PG_BIN_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.exists()).or_else(|| which(name))
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!("nothing listened on port {port} after {timeout:?}")))
}

/// How many free ports a server start tries (see [`Redis::launch`]).
const PORT_ATTEMPTS: usize = 5;

/// Waits until the server on `port` is `child` itself: it answers `INFO server`
/// with `child`'s process id. A server that exits first (its port was taken)
/// is an error, and so is a port held by some other server.
fn wait_for_own_redis(child: &mut Child, port: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("redis-server for port {port} exited ({status}); see its log")));
        }
        if served_pid(port).is_ok_and(|pid| pid == child.id()) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!("redis-server did not serve port {port} after {timeout:?}")))
}

/// The process id the Redis server on `port` reports in `INFO server`.
fn served_pid(port: u16) -> io::Result<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"INFO server\r\n")?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 || reply.len() > 64 * 1024 {
            return Err(io::Error::other("no process_id in the INFO reply"));
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((pid, _)) = text.split("process_id:").nth(1).and_then(|rest| rest.split_once("\r\n")) {
            return pid.trim().parse().map_err(io::Error::other);
        }
    }
}

/// A PostgreSQL cluster owned by this process, listening on 127.0.0.1.
///
/// The superuser is `postgres` with trust authentication on loopback only.
#[derive(Debug)]
pub struct Postgres {
    /// The cluster's data folder (`PGDATA`).
    data_dir: PathBuf,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The user the server runs as (`postgres` refuses to run as root).
    run_as: Option<String>,
    /// False once [`Postgres::stop`] ran, so drop does not stop it twice.
    running: bool,
}

impl Postgres {
    /// Creates a cluster under `dir` (if it has none yet) and starts it on `port`,
    /// or on a free port when `port` is `None`.
    pub fn start(dir: &Path, port: Option<u16>) -> io::Result<Self> {
        let initdb = pg_binary("initdb").ok_or_else(|| io::Error::other("initdb not found: install postgresql"))?;
        let data_dir = dir.join("pgdata");
        // PostgreSQL refuses to run as root; run it as the `postgres` system user then.
        let run_as = if is_root() { Some("postgres".to_owned()) } else { None };
        fs::create_dir_all(dir)?;
        if let Some(user) = &run_as {
            run(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(dir))?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            run(as_user(&run_as, &initdb).arg("-D").arg(&data_dir).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]))?;
        }
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut pg = Postgres { data_dir, port, run_as, running: false };
        pg.start_again()?;
        Ok(pg)
    }

    /// Starts the server again after [`Postgres::stop`] (same port and data).
    pub fn start_again(&mut self) -> io::Result<()> {
        let pg_ctl = pg_binary("pg_ctl").ok_or_else(|| io::Error::other("pg_ctl not found"))?;
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 -c shared_buffers=128MB",
            self.port
        );
        run(as_user(&self.run_as, &pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-o", &opts, "-l"])
            .arg(self.data_dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]))?;
        self.running = true;
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let pg_ctl = pg_binary("pg_ctl").ok_or_else(|| io::Error::other("pg_ctl not found"))?;
        run(as_user(&self.run_as, &pg_ctl).arg("-D").arg(&self.data_dir).args(["-m", "fast", "-w", "stop"]))
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `database` unless it exists, using `psql`.
    pub fn create_database(&self, database: &str) -> io::Result<()> {
        let psql = pg_binary("psql").ok_or_else(|| io::Error::other("psql not found"))?;
        let exists = Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-tAc"])
            .arg(format!("SELECT 1 FROM pg_database WHERE datname = '{database}'"))
            .arg("postgres")
            .output()?;
        if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
            return Ok(());
        }
        run(Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{database}\""))
            .arg("postgres"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A `redis-server` owned by this process, on 127.0.0.1: without persistence
/// ([`Redis::start`]) or with an append-only file ([`Redis::start_persistent`]).
#[derive(Debug)]
pub struct Redis {
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The folder of the append-only file when the server persists its data.
    data: Option<PathBuf>,
    /// The server process while it runs.
    child: Option<Child>,
    /// Where the server's log goes.
    log: PathBuf,
    /// Set for a cluster node; `None` for a stand-alone server.
    cluster: Option<ClusterNode>,
}

/// What a cluster node needs besides its client port.
#[derive(Debug)]
struct ClusterNode {
    /// The folder of its `nodes.conf`, which keeps its identity across a restart.
    dir: PathBuf,
    /// The cluster bus port (asked for explicitly: the default, port + 10000,
    /// may be out of range for a port from the kernel's ephemeral range).
    bus_port: u16,
}

impl Redis {
    /// Starts `redis-server` on `port`, or on a free port when `port` is `None`;
    /// its log goes under `dir`.
    pub fn start(dir: &Path, port: Option<u16>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Redis::launch(port, |port| {
            Ok(Redis { port, data: None, child: None, log: dir.join("redis.log"), cluster: None })
        })
    }

    /// Like [`Redis::start`], but the server keeps its data in an append-only
    /// file under `dir/data` (`appendfsync everysec`), so stopping and
    /// starting it again, even killed, keeps every acknowledged write: the
    /// sessions and revocations of a development stack survive a restart.
    pub fn start_persistent(dir: &Path, port: Option<u16>) -> io::Result<Self> {
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        Redis::launch(port, |port| {
            Ok(Redis { port, data: Some(data.clone()), child: None, log: dir.join("redis.log"), cluster: None })
        })
    }

    /// Starts the server `make` describes on `port`, or on a free port when
    /// `port` is `None`. Another process may take a free port between the
    /// kernel naming it and the server binding it (the server then exits),
    /// so a start on a free port tries [`PORT_ATTEMPTS`] fresh ports.
    fn launch(port: Option<u16>, make: impl Fn(u16) -> io::Result<Redis>) -> io::Result<Redis> {
        if let Some(port) = port {
            let mut redis = make(port)?;
            redis.start_again()?;
            return Ok(redis);
        }
        let mut attempt = 1;
        loop {
            let mut redis = make(free_port()?)?;
            match redis.start_again() {
                Ok(()) => return Ok(redis),
                Err(e) if attempt >= PORT_ATTEMPTS => return Err(e),
                Err(_) => attempt += 1,
            }
        }
    }

    /// Starts the server again after [`Redis::stop`], on the same port.
    pub fn start_again(&mut self) -> io::Result<()> {
        let bin =
            which("redis-server").ok_or_else(|| io::Error::other("redis-server not found: install redis-server"))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(bin);
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]).args([
            "--daemonize",
            "no",
            "--maxclients",
            "2000",
        ]);
        match &self.data {
            Some(data) => {
                command.args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"]).arg(data);
            }
            None => {
                command.args(["--appendonly", "no"]);
            }
        }
        if let Some(ClusterNode { dir, bus_port }) = &self.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus_port.to_string(), "--cluster-config-file"])
                .arg(dir.join("nodes.conf"))
                .args(["--cluster-node-timeout", &CLUSTER_NODE_TIMEOUT_MS.to_string()])
                // Healthy primaries keep serving their slots while another is down.
                .args(["--cluster-require-full-coverage", "no"])
                // A replica may always take over, however long its primary was silent.
                .args(["--cluster-replica-validity-factor", "0"])
                // A new replica syncs at once (Redis 7 waits 5 s by default for
                // more replicas to share a diskless transfer), so a test that
                // kills a primary right after start finds a replica with the data.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(dir);
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        let child = self.child.insert(child);
        wait_for_own_redis(child, self.port, Duration::from_secs(10))
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP): its connections stay open and new ones
    /// are still accepted by the kernel, but nothing is answered until
    /// [`Redis::thaw`]: a hung Redis, as opposed to a dead one. (Stopping or
    /// dropping a frozen server still kills it.)
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// Lets a [`Redis::freeze`]d server run again (SIGCONT); it answers
    /// everything sent meanwhile.
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("CONT")
    }

    /// Sends signal `name` to the server with `kill(1)` (this crate has no
    /// `unsafe`, hence no `libc`).
    fn signal(&self, name: &str) -> io::Result<()> {
        let pid =
            self.pid().ok_or_else(|| io::Error::other(format!("redis-server on port {} is not running", self.port)))?;
        run(Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()))
    }

    /// A `redis://` URL for database `db`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How long a cluster node may be unreachable before its replica takes over.
/// Short, so a test that kills a primary sees the failover within seconds.
const CLUSTER_NODE_TIMEOUT_MS: u32 = 1000;

/// A local Redis Cluster owned by this process: `primaries` primaries with
/// `replicas` replicas each, every node a `redis-server --cluster-enabled yes`
/// on its own free loopback port, joined by `redis-cli --cluster create`.
///
/// The cluster keeps serving the slots of healthy primaries while one is down
/// (`cluster-require-full-coverage no`), and a replica takes over a dead
/// primary after [`CLUSTER_NODE_TIMEOUT_MS`].
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, in creation order (primaries first, as `--cluster create` assigns them).
    nodes: Vec<Redis>,
    /// Where the nodes keep their `nodes.conf` and logs.
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas)` nodes under `dir` and joins them into
    /// one cluster; returns once every node reports `cluster_state:ok`.
    pub fn start(dir: &Path, primaries: usize, replicas: usize) -> io::Result<Self> {
        let cli = which("redis-cli").ok_or_else(|| io::Error::other("redis-cli not found: install redis-server"))?;
        fs::create_dir_all(dir)?;
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let node = Redis::launch(None, |port| {
                let node_dir = dir.join(format!("node-{port}"));
                fs::create_dir_all(&node_dir)?;
                Ok(Redis {
                    data: None,
                    port,
                    child: None,
                    log: node_dir.join("redis.log"),
                    cluster: Some(ClusterNode { dir: node_dir, bus_port: free_port()? }),
                })
            })?;
            nodes.push(node);
        }
        let cluster = RedisCluster { nodes, dir: dir.to_owned() };
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        create.args(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        run(&mut create)?;
        cluster.wait_until_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every running node reports `cluster_state:ok` and knows
    /// every slot's owner, and every replica's link to its primary is up.
    pub fn wait_until_healthy(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let healthy = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let cluster_ok = cli(n.port, &["cluster", "info"])
                    .map(|info| info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"))
                    .unwrap_or(false);
                // A replica counts once its link to its primary is up (it holds the data).
                let replica_synced = cli(n.port, &["info", "replication"])
                    .map(|info| !info.contains("role:slave") || info.contains("master_link_status:up"))
                    .unwrap_or(false);
                cluster_ok && replica_synced
            });
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis cluster under {} not healthy after {timeout:?}",
                    self.dir.display()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `redis-cluster://` URL naming every node (fred's form: the first node,
    /// then `?node=host:port&node=...`).
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().unwrap_or_default();
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        if rest.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
        }
    }

    /// A `redis-cluster://` URL with one seed node only (the client discovers the rest).
    pub fn seed_url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes.first().map(|n| n.port).unwrap_or_default())
    }

    /// The ports of every node, in creation order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The index (into [`Self::ports`]) of the running primary that serves `key`'s slot.
    pub fn primary_for(&self, key: &str) -> io::Result<usize> {
        let alive = self.nodes.iter().find(|n| n.child.is_some()).ok_or_else(|| io::Error::other("no node runs"))?;
        let slot: u16 = cli(alive.port, &["cluster", "keyslot", key])?
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("cluster keyslot answered garbage: {e}")))?;
        // `cluster nodes` lines: id host:port@bus flags master ping pong epoch state slots...
        let table = cli(alive.port, &["cluster", "nodes"])?;
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            let port =
                fields[1].split(['@', ',']).next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
            if let (true, Some(port)) = (owns, port) {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .ok_or_else(|| io::Error::other(format!("slot {slot} is served by unknown port {port}")));
            }
        }
        Err(io::Error::other(format!("no healthy primary serves slot {slot}")))
    }

    /// Kills node `index` (as a crash would: no shutdown, no failover hand-off).
    pub fn kill(&mut self, index: usize) -> io::Result<()> {
        self.nodes.get_mut(index).ok_or_else(|| io::Error::other("no such node"))?.stop()
    }

    /// Starts node `index` again; it rejoins the cluster (as a replica when it was failed over).
    pub fn restart(&mut self, index: usize) -> io::Result<()> {
        self.nodes.get_mut(index).ok_or_else(|| io::Error::other("no such node"))?.start_again()
    }
}

/// Runs `redis-cli -p <port> <args>` and returns what it printed.
fn cli(port: u16, args: &[&str]) -> io::Result<String> {
    let bin = which("redis-cli").ok_or_else(|| io::Error::other("redis-cli not found"))?;
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

fn is_root() -> bool {
    // `id -u` avoids libc; this runs once per server start.
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn as_user(user: &Option<String>, bin: &Path) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Writes `line` to stderr at once; used for progress messages.
pub fn say(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_redis_keeps_its_connections_but_answers_only_once_thawed() {
        let dir = std::env::temp_dir().join(format!("devstack-freeze-{}", std::process::id()));
        let redis = Redis::start(&dir, None).expect("a redis");
        let mut stream = TcpStream::connect(("127.0.0.1", redis.port())).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(300))).expect("read timeout");
        redis.freeze().expect("freeze");
        stream.write_all(b"PING\r\n").expect("a frozen server's socket takes the command");
        let mut reply = [0u8; 64];
        let early = stream.read(&mut reply);
        assert!(early.is_err(), "a frozen server answered: {early:?}");
        redis.thaw().expect("thaw");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let n = stream.read(&mut reply).expect("the thawed server answers");
        assert_eq!(&reply[..n], b"+PONG\r\n");
        drop(redis);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("a free port");
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn a_redis_whose_port_another_process_holds_fails_to_start_instead_of_pointing_at_the_stranger() {
        let dir = std::env::temp_dir().join(format!("devstack-taken-port-{}", std::process::id()));
        let stranger = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let port = stranger.local_addr().expect("its address").port();
        let err = Redis::start(&dir, Some(port)).expect_err("the port is taken");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        // Started on a free port instead, it serves its own port.
        let redis = Redis::start(&dir, None).expect("a redis on a free port");
        assert_eq!(served_pid(redis.port()).expect("INFO server"), redis.child.as_ref().expect("running").id());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_persistent_redis_keeps_its_data_across_a_kill_and_a_restart() {
        let dir = std::env::temp_dir().join(format!("devstack-aof-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut redis = Redis::start_persistent(&dir, None).expect("a persistent redis");
        assert_eq!(cli(redis.port(), &["SET", "session", "live"]).expect("set").trim(), "OK");
        redis.stop().expect("kill");
        redis.start_again().expect("start again");
        let deadline = Instant::now() + Duration::from_secs(10);
        let value = loop {
            // The server answers LOADING while it replays the file.
            match cli(redis.port(), &["GET", "session"]) {
                Ok(v) if !v.contains("LOADING") => break v,
                _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                other => panic!("no answer after the restart: {other:?}"),
            }
        };
        assert_eq!(value.trim(), "live");
        drop(redis);
        let mut plain = Redis::start(&dir.join("plain"), None).expect("a plain redis");
        assert_eq!(cli(plain.port(), &["SET", "k", "v"]).expect("set").trim(), "OK");
        plain.stop().expect("kill");
        plain.start_again().expect("start again");
        assert_eq!(cli(plain.port(), &["GET", "k"]).expect("get").trim(), "", "a test server keeps nothing");
        drop(plain);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_cluster_serves_every_slot_and_fails_a_dead_primary_over_to_its_replica() {
        let dir = std::env::temp_dir().join(format!("devstack-cluster-test-{}", std::process::id()));
        let mut cluster = RedisCluster::start(&dir, 3, 1).expect("a redis cluster");
        assert_eq!(cluster.ports().len(), 6);
        assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"));
        assert_eq!(cluster.url().matches("node=").count(), 5);
        let primary = cluster.primary_for("{u:1}:x").expect("an owner of the slot");
        assert!(primary < 3, "--cluster create makes the first nodes primaries");
        cluster.kill(primary).expect("kill the primary");
        let deadline = Instant::now() + Duration::from_secs(20);
        let new_primary = loop {
            match cluster.primary_for("{u:1}:x") {
                Ok(i) if i != primary => break i,
                _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                other => panic!("no failover after 20 s: {other:?}"),
            }
        };
        assert!(new_primary >= 3, "a replica took over");
        cluster.restart(primary).expect("restart the old primary");
        cluster.wait_until_healthy(Duration::from_secs(20)).expect("healthy again");
        drop(cluster);
        let _ = fs::remove_dir_all(dir);
    }
}
