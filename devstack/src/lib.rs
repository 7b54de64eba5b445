//! Starts project-local PostgreSQL and Redis servers for development and tests.
//!
//! Used by `cargo xtask run`/`cargo xtask test` (one pair for the whole run)
//! and by the test-support crate (private servers a test may stop and start
//! again). It depends on nothing but `std`, so `xtask` stays light.
//!
//! # Layout
//! - [`Postgres`]: an `initdb` cluster under a folder, run with `pg_ctl`.
//! - [`Redis`]: a `redis-server` with no persistence.
//! - [`free_port`]: asks the kernel for an unused loopback port.
//!
//! Both servers stop when dropped, so a panicking caller leaves no strays.

use std::{
    fs,
    io::{self, Write as _},
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

/// A `redis-server` owned by this process, on 127.0.0.1, without persistence.
#[derive(Debug)]
pub struct Redis {
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The server process while it runs.
    child: Option<Child>,
    /// Where the server's log goes.
    log: PathBuf,
}

impl Redis {
    /// Starts `redis-server` on `port`, or on a free port when `port` is `None`;
    /// its log goes under `dir`.
    pub fn start(dir: &Path, port: Option<u16>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut redis = Redis { port, child: None, log: dir.join("redis.log") };
        redis.start_again()?;
        Ok(redis)
    }

    /// Starts the server again after [`Redis::stop`], on the same port.
    pub fn start_again(&mut self) -> io::Result<()> {
        let bin =
            which("redis-server").ok_or_else(|| io::Error::other("redis-server not found: install redis-server"))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--maxclients", "2000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
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
    fn free_port_is_bindable() {
        let port = free_port().expect("a free port");
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
