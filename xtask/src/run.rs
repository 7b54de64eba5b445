//! `cargo xtask run`: the whole system on one machine until Ctrl-C.
//!
//! `--replicas N` runs a fleet instead: N auth-service and N task-service replicas (the first on
//! the usual ports, the others on free ones) on a local Redis Cluster, behind the one gateway port,
//! whose `AUTH_SERVICE_URL` and `TASK_SERVICE_URL` list every replica so it balances over them.
//! They all start at once, and all apply the migrations at start (one does, under a lock).
//!
//! Order matters both ways: the build first, then PostgreSQL and Redis, then auth-service,
//! task-service and the gateway, each only once the one before accepts TCP; on the way down the
//! services get SIGTERM in reverse order and the stores stop last.

use std::{
    io::{self, BufRead as _, BufReader, Read},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    cmd::{self, Error, Result},
    deps,
    services::{self, Profile, SERVICES, Service},
    stores::Stores,
};

/// How long a service may take from spawn to accepting TCP (it applies migrations first).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the services get to finish after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Most replicas `--replicas` accepts (each is a process on this one machine).
const MAX_REPLICAS: usize = 8;

/// What `cargo xtask run` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Which build to run.
    pub profile: Profile,
    /// Replicas of each backend; more than one also puts Redis in cluster mode.
    pub replicas: usize,
}

impl RunOptions {
    /// Reads `--replicas N` (or `--replicas=N`) and the profile flags of [`Profile::from_args`].
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut replicas = 1;
        let mut rest = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let value = match arg.strip_prefix("--replicas") {
                Some("") => args.next().cloned(),
                Some(v) if v.starts_with('=') => Some(v[1..].to_owned()),
                _ => {
                    rest.push(arg.clone());
                    continue;
                }
            };
            replicas = value
                .as_deref()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .ok_or_else(|| Error::with_code(2, format!("--replicas takes a number from 1 to {MAX_REPLICAS}")))?;
        }
        Ok(RunOptions { profile: Profile::from_args(&rest)?, replicas })
    }
}

/// Builds and starts everything, waits for Ctrl-C/SIGTERM or for a service to exit, then stops
/// everything.
pub fn run(options: RunOptions) -> Result {
    deps::ensure()?;
    let profile = options.profile;
    // Build before starting the stores: a release build takes minutes, and a failed one then
    // leaves nothing to clean up.
    profile.build(&SERVICES.map(|s| s.name))?;
    let stores = Stores::from_env_or_local(options.replicas > 1)?;

    let mtls = mutual_tls()?;
    let mtls_of = |name: &str| mtls.as_ref().map(|bundle| mtls_settings(bundle, name)).unwrap_or_default();

    // Declared after `stores`, so on an early return the services stop before the stores do.
    let mut fleet = Fleet::default();
    if options.replicas == 1 {
        for service in SERVICES {
            fleet.start(profile, service, &stores.database_url, &stores.redis_url, &mtls_of(service.name))?;
        }
    } else {
        start_replicated(&mut fleet, profile, &stores, options.replicas, &mtls_of)?;
    }
    println!("{}", status_table(&stores, &fleet));
    let outcome = fleet.watch();
    fleet.stop();
    stores.stop();
    outcome
}

/// Starts `replicas` replicas of each backend, all at once, then the gateway in front of them.
/// `mtls_of` gives a service's `MTLS_*` settings (none when mutual TLS is off).
fn start_replicated(
    fleet: &mut Fleet,
    profile: Profile,
    stores: &Stores,
    replicas: usize,
    mtls_of: &dyn Fn(&str) -> Vec<(&'static str, String)>,
) -> Result {
    let [auth, task, gateway] = SERVICES;
    let mut urls = Vec::new();
    for service in [auth, task] {
        let first = services::setting(service.listen_var)
            .ok_or_else(|| Error::new(format!("{} is not set", service.listen_var)))?;
        let first = services::probe_addr(&first)?;
        let mut addrs = vec![first];
        for _ in 1..replicas {
            let port = devstack::free_port().map_err(|e| Error::new(format!("finding a free port: {e}")))?;
            addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        urls.push(addrs.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(","));
        let overrides: Vec<Vec<(&str, String)>> = addrs
            .iter()
            .map(|addr| {
                let mut overrides = vec![(service.listen_var, addr.to_string())];
                overrides.extend(mtls_of(service.name));
                if service.name == task.name {
                    // Every task replica balances over every auth replica.
                    overrides.push(("AUTH_SERVICE_URL", urls[0].clone()));
                }
                overrides
            })
            .collect();
        fleet.start_all(profile, service, &stores.database_url, &stores.redis_url, &overrides)?;
    }
    let mut overrides = vec![("AUTH_SERVICE_URL", urls[0].clone()), ("TASK_SERVICE_URL", urls[1].clone())];
    overrides.extend(mtls_of(gateway.name));
    fleet.start(profile, gateway, &stores.database_url, &stores.redis_url, &overrides)?;
    Ok(())
}

/// A fresh private CA and a certificate per service under `.local/mtls`, so
/// the services talk over mutual TLS as a deployment should; `None` when the
/// user set `MTLS_CA_FILE` (their own CA and certificates are used as given).
fn mutual_tls() -> Result<Option<taskgate_common::mtls::generate::Bundle>> {
    if crate::cmd::env_is_set("MTLS_CA_FILE") {
        return Ok(None);
    }
    let dir = cmd::project_root().join(".local").join("mtls");
    let names = SERVICES.map(|s| s.name);
    let bundle = taskgate_common::mtls::generate::write(&dir, &names)
        .map_err(|e| Error::new(format!("making the private CA in {}: {e:#}", dir.display())))?;
    devstack::say(&format!("xtask: mutual TLS between the services, private CA in {}", dir.display()));
    Ok(Some(bundle))
}

/// The `MTLS_*` settings of service `name` from `bundle`.
fn mtls_settings(bundle: &taskgate_common::mtls::generate::Bundle, name: &str) -> Vec<(&'static str, String)> {
    let settings = bundle.settings(name);
    let show = |p: Option<std::path::PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    vec![
        ("MTLS_CA_FILE", show(settings.mtls_ca_file)),
        ("MTLS_CERT_FILE", show(settings.mtls_cert_file)),
        ("MTLS_KEY_FILE", show(settings.mtls_key_file)),
    ]
}

/// A service process we started.
struct Running {
    /// Which service it is.
    service: Service,
    /// The process; it runs in its own process group so the terminal's Ctrl-C reaches only xtask,
    /// which then stops the services in order.
    child: Child,
    /// Its listen address as configured.
    listen: String,
}

/// The services started so far, in start order; they get SIGTERM when the fleet drops.
#[derive(Default)]
pub struct Fleet {
    /// Started services, in start order.
    running: Vec<Running>,
}

impl Fleet {
    /// Starts `service` against the given stores and waits until it accepts TCP connections.
    /// `overrides` are settings that win over both the user's environment and the local defaults
    /// (the test run uses them to put a throwaway stack on free ports).
    pub fn start(
        &mut self,
        profile: Profile,
        service: Service,
        database_url: &str,
        redis_url: &str,
        overrides: &[(&str, String)],
    ) -> Result {
        self.start_all(profile, service, database_url, redis_url, &[overrides.to_vec()])
    }

    /// Starts one process of `service` per entry of `overrides`, all at once, then waits until
    /// every one accepts TCP connections.
    pub fn start_all(
        &mut self,
        profile: Profile,
        service: Service,
        database_url: &str,
        redis_url: &str,
        overrides: &[Vec<(&str, String)>],
    ) -> Result {
        let first = self.running.len();
        let mut addrs = Vec::new();
        for overrides in overrides {
            addrs.push(self.spawn(profile, service, database_url, redis_url, overrides)?);
        }
        for (running, addr) in self.running[first..].iter_mut().zip(addrs) {
            wait_until_listening(running, addr)?;
        }
        Ok(())
    }

    /// Spawns one process of `service`; returns the address it will accept connections on.
    fn spawn(
        &mut self,
        profile: Profile,
        service: Service,
        database_url: &str,
        redis_url: &str,
        overrides: &[(&str, String)],
    ) -> Result<SocketAddr> {
        let listen = overrides
            .iter()
            .find(|(var, _)| *var == service.listen_var)
            .map(|(_, value)| value.clone())
            .or_else(|| services::setting(service.listen_var))
            .ok_or_else(|| Error::new(format!("{} is not set", service.listen_var)))?;
        let addr = services::probe_addr(&listen)?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return Err(Error::new(format!(
                "something already listens on {addr}, where {} should go; stop it or set {}",
                service.name, service.listen_var
            )));
        }

        let mut command = services::command(profile, service.name, database_url, redis_url);
        command.envs(overrides.iter().map(|(var, value)| (*var, value.as_str())));
        command.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        devstack::say(&format!("xtask: starting {} on {listen}", service.name));
        let mut child = command.spawn().map_err(|e| Error::new(format!("starting {}: {e}", cmd::show(&command))))?;
        if let Some(out) = child.stdout.take() {
            prefix_lines(service.name, out, io::stdout);
        }
        if let Some(err) = child.stderr.take() {
            prefix_lines(service.name, err, io::stderr);
        }
        // Kept even when it fails to start, so the fleet stops it with the rest.
        self.running.push(Running { service, child, listen });
        Ok(addr)
    }

    /// Waits for a stop request (returning `Ok`) or for a service to exit on its own (an error).
    fn watch(&mut self) -> Result {
        loop {
            if cmd::stop_requested() {
                return Ok(());
            }
            for running in &mut self.running {
                if let Ok(Some(status)) = running.child.try_wait() {
                    // A terminal's Ctrl-C can reach a service a moment before our own handler runs.
                    thread::sleep(Duration::from_millis(300));
                    if cmd::stop_requested() {
                        return Ok(());
                    }
                    let name = running.service.name;
                    devstack::say(&format!("xtask: {name} exited on its own; stopping the rest"));
                    return Err(Error::exited(&format!("{name} exited on its own"), status));
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM to every service still running, last started first, and waits for them; any
    /// that outlives [`STOP_TIMEOUT`] is killed.
    pub fn stop(&mut self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while let Some(mut running) = self.running.pop() {
            let name = running.service.name;
            if let Ok(Some(_)) = running.child.try_wait() {
                continue;
            }
            devstack::say(&format!("xtask: stopping {name}"));
            cmd::terminate(&running.child);
            let left = deadline.saturating_duration_since(Instant::now());
            if cmd::wait_with_timeout(&mut running.child, left).is_none() {
                devstack::say(&format!("xtask: {name} ignored SIGTERM for {}; killing it", cmd::human(STOP_TIMEOUT)));
                let _ = running.child.kill();
                let _ = running.child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `running` accepts TCP on `addr`, failing early if it exits or a stop is requested.
fn wait_until_listening(running: &mut Running, addr: SocketAddr) -> Result {
    let name = running.service.name;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if cmd::stop_requested() {
            return Err(cmd::interrupted());
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(Error::exited(&format!("{name} exited during start-up"), status));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "{name} did not accept connections on {addr} within {}",
                cmd::human(START_TIMEOUT)
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Copies `source` line by line to `sink`, each line prefixed with the service's name, on a thread
/// of its own; the thread ends when the service closes the stream.
fn prefix_lines<R, W>(name: &'static str, source: R, sink: fn() -> W)
where
    R: Read + Send + 'static,
    W: io::Write + 'static,
{
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(sink(), "{name:>12} | {}", text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    });
}

/// The table printed once everything is up.
fn status_table(stores: &Stores, fleet: &Fleet) -> String {
    let mut rows = vec![["what".to_owned(), "where".to_owned(), "notes".to_owned()]];
    rows.extend(stores.rows());
    for running in &fleet.running {
        let (service, listen) = (running.service, &running.listen);
        let notes = match services::probe_addr(listen) {
            Ok(addr) if service.protocol == "http" => {
                format!("http, open http://{addr}, pid {}", running.child.id())
            }
            _ => format!("{}, pid {}", service.protocol, running.child.id()),
        };
        rows.push([service.name.to_owned(), listen.clone(), notes]);
    }
    format!("\ntaskgate is up; Ctrl-C stops everything.\n\n{}", format_table(&rows))
}

/// Lays out rows in left-aligned columns, two spaces apart, each line indented by two.
fn format_table(rows: &[[String; 3]]) -> String {
    let mut widths = [0usize; 3];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line = format!("  {:w0$}  {:w1$}  {}", row[0], row[1], row[2], w0 = widths[0], w1 = widths[1]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_beside_the_profile_flags() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let parsed = RunOptions::from_args(&args(&["--replicas", "3", "--debug"])).ok();
        assert_eq!(parsed, Some(RunOptions { profile: Profile::Debug, replicas: 3 }));
        let parsed = RunOptions::from_args(&args(&["--replicas=2"])).ok();
        assert_eq!(parsed, Some(RunOptions { profile: Profile::Release, replicas: 2 }));
        assert_eq!(RunOptions::from_args(&[]).ok().map(|o| o.replicas), Some(1));
        assert_eq!(RunOptions::from_args(&args(&["--fast"])).ok().map(|o| o.profile), Some(Profile::Fast));
        assert!(RunOptions::from_args(&args(&["--replicas", "0"])).is_err());
        assert!(RunOptions::from_args(&args(&["--replicas"])).is_err());
        assert!(RunOptions::from_args(&args(&["--replicas", "many"])).is_err());
    }

    #[test]
    fn table_columns_line_up() {
        let row = |a: &str, b: &str, c: &str| [a.to_owned(), b.to_owned(), c.to_owned()];
        let table = format_table(&[row("what", "where", "notes"), row("gateway", "0.0.0.0:8080", "")]);
        assert_eq!(table, "  what     where         notes\n  gateway  0.0.0.0:8080\n");
    }
}
