//! The three release binaries run as separate processes, for the measurements
//! that need each service on its own (CPU time and resident memory per
//! service): the benchmark (`examples/bench.rs`) and the capacity figures
//! (`examples/capacity.rs`).

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a service may take from spawn to accepting TCP (it applies migrations first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A service process; killed when dropped.
pub struct Process {
    /// The binary's name: `auth-service`, `task-service` or `gateway` (or `nginx`, for
    /// [`ReferenceProxy`]).
    pub name: &'static str,
    /// The running binary.
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts binary `name` from [`bin_dir`] with `env` (and `RUST_LOG=warn`), and waits until it
    /// accepts TCP on `addr`.
    pub fn start(name: &'static str, addr: SocketAddr, env: &[(&str, String)]) -> anyhow::Result<Process> {
        let binary = bin_dir().join(name);
        let child = Command::new(&binary)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e} (build it with --release first)", binary.display()))?;
        let process = Process { name, child };
        process.wait_listening(addr)?;
        Ok(process)
    }

    /// Waits until the process accepts TCP on `addr`, for at most [`START_TIMEOUT`].
    fn wait_listening(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "{} did not listen on {addr}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// Resident memory now and at its peak so far (`VmRSS`, `VmHWM`), in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        (self.status_mib("VmRSS"), self.status_mib("VmHWM"))
    }

    /// The part of the resident memory that is the binary's (and its libraries') code and
    /// read-only data mapped from their files (`RssFile`), in MiB; the rest is the heap and stacks.
    pub fn code_mib(&self) -> f64 {
        self.status_mib("RssFile")
    }

    /// The `/proc/<pid>/status` field `name` (a size in kB), in MiB; 0 when it cannot be read.
    fn status_mib(&self, name: &str) -> f64 {
        taskgate_common::memory::proc_status_kib(&self.pid().to_string(), name).map_or(0.0, |kib| kib as f64 / 1024.0)
    }
}

/// Where the binaries are: `TASKGATE_BIN_DIR`, or this workspace's `target/release` (the figures
/// the docs report are of the release build).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("TASKGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release")))
}

/// The three services, each a process of its own, on free loopback ports.
pub struct Stack {
    /// auth-service, task-service and the gateway, in that order.
    pub processes: [Process; 3],
    /// Where the auth service listens.
    pub auth: SocketAddr,
    /// Where the task service listens.
    pub task: SocketAddr,
    /// Where the gateway listens.
    pub gateway: SocketAddr,
}

impl Stack {
    /// Starts the three binaries against `database_url` and `redis_url` (a fresh key prefix),
    /// with [`stack_settings`].
    pub fn start(database_url: &str, redis_url: &str) -> anyhow::Result<Stack> {
        let port = || devstack::free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let (auth, task, gateway) = (port()?, port()?, port()?);
        let settings = stack_settings(database_url, redis_url, auth, task, gateway);
        let processes = [
            Process::start("auth-service", auth, &settings)?,
            Process::start("task-service", task, &settings)?,
            Process::start("gateway", gateway, &settings)?,
        ];
        Ok(Stack { processes, auth, task, gateway })
    }
}

/// The settings every process of a benchmark stack shares: the stores, the three services on the
/// given loopback addresses, and the limits lifted that would otherwise measure refusals (every
/// call comes from 127.0.0.1, the login throttle counts attempts in flight, and each user signs in
/// more often than the session cap).
pub fn stack_settings(
    database_url: &str,
    redis_url: &str,
    auth: SocketAddr,
    task: SocketAddr,
    gateway: SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis_url.to_owned()),
        ("REDIS_PREFIX", taskgate_test_support::unique_prefix()),
        ("AUTH_LISTEN_ADDR", auth.to_string()),
        ("TASK_LISTEN_ADDR", task.to_string()),
        ("GATEWAY_LISTEN_ADDR", gateway.to_string()),
        ("AUTH_SERVICE_URL", format!("http://{auth}")),
        ("TASK_SERVICE_URL", format!("http://{task}")),
        // Metrics ports on free ports, so a stack running beside this one does not collide.
        ("AUTH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("TASK_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("RATE_LIMIT_PER_MINUTE", "1000000000".to_owned()),
        ("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "1000000000".to_owned()),
        ("REGISTER_MAX_PER_IP", "1000000".to_owned()),
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "1000000".to_owned()),
        ("LOGIN_MAX_FAILURES_PER_IP", "1000000".to_owned()),
        ("LOGIN_DELAY_STEP_MS", "0".to_owned()),
        // A login past the cap ends the user's oldest session: the seeded one whose token the paced
        // reads use, which then (rightly) fail. The benchmark signs each user in 50 times or more.
        ("MAX_SESSIONS_PER_USER", "1000".to_owned()),
    ]
}

/// CPU seconds (user + system) the process `pid` (a number, or `self`) used so far, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: utime is the 14th and stime the 15th of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// nginx in front of the task service (`grpc_pass`, HTTP/2 cleartext both ways, no token check, no
/// rate limit): what a bare proxy hop written in C costs on the same machine, the reference the
/// gateway's own hop is read against. One process (`master_process off`), killed when dropped.
pub struct ReferenceProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The running nginx.
    pub process: Process,
    /// Its configuration and temporary files, removed when dropped.
    dir: PathBuf,
}

impl ReferenceProxy {
    /// Starts nginx in front of `upstream`; `None` when no `nginx` binary is installed.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Option<ReferenceProxy>> {
        if Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_err() {
            return Ok(None);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], devstack::free_port()?));
        let dir = std::env::temp_dir().join(format!("taskgate-reference-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        // Requests per connection lifted on both sides: nginx's default of 1,000 would end the
        // bench's one HTTP/2 connection with GOAWAY part-way through a run.
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream task {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen {addr} http2;
    http2_max_concurrent_streams 1000; keepalive_requests 1000000;
    location / {{ grpc_pass grpc://task; }}
  }}
}}
"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Built first, so a failed start still stops nginx and removes its folder.
        let proxy = ReferenceProxy { addr, process: Process { name: "nginx", child }, dir };
        proxy.process.wait_listening(addr)?;
        Ok(Some(proxy))
    }
}

impl Drop for ReferenceProxy {
    fn drop(&mut self) {
        // nginx is stopped after this, when `process` drops; it has its files open already.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
