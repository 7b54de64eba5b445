//! Shared plumbing: the error type, where the repository is, running child commands, and the flag
//! that Ctrl-C or SIGTERM raises.
//!
//! Every subcommand ends with [`Error`], whose `code` becomes xtask's exit code, so `cargo xtask test`
//! can exit with cargo's own code.

use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

/// How often loops that wait on a child look at it and at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Raised by the Ctrl-C/SIGTERM handler; loops that wait on children read it.
static STOP: AtomicBool = AtomicBool::new(false);

/// Why a subcommand failed, and the exit code xtask ends with.
#[derive(Debug)]
pub struct Error {
    /// What went wrong, lowercase, with the context that makes it useful.
    pub message: String,
    /// The process exit code, never 0.
    pub code: u8,
}

impl Error {
    /// An error that makes xtask exit with code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(1, message)
    }

    /// An error that makes xtask exit with `code` (0 becomes 1).
    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self { message: message.into(), code: code.max(1) }
    }

    /// An error for a command that exited with `status`, carrying its exit code.
    pub fn failed(what: &str, status: ExitStatus) -> Self {
        Self::exited(&format!("{what} failed"), status)
    }

    /// "`what` (exit code N)", carrying the exit code of a process that ended with `status`.
    pub fn exited(what: &str, status: ExitStatus) -> Self {
        Self::with_code(exit_code(status), format!("{what} ({})", describe_status(status)))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result every subcommand returns.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// The repository root (the folder above `xtask/`).
pub fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when set, else `target/` in the repository.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}

/// A `cargo` command run from the repository root, using the cargo that started xtask.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(project_root());
    cmd
}

/// Whether an environment variable is set to something non-empty.
pub fn env_is_set(name: &str) -> bool {
    env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether xtask runs as root (`id -u` keeps us free of libc).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command for `program` that runs as root: directly when we are root, else through `sudo`.
///
/// `DEBIAN_FRONTEND=noninteractive` keeps apt from asking questions either way.
pub fn privileged(program: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.args(["DEBIAN_FRONTEND=noninteractive", program]);
        cmd
    }
}

/// Installs the Ctrl-C/SIGTERM/SIGHUP handler that raises the stop flag instead of killing xtask,
/// so the servers xtask started are always stopped.
pub fn catch_stop_signals() -> Result {
    ctrlc::set_handler(|| {
        if !STOP.swap(true, Ordering::SeqCst) {
            devstack::say("xtask: stopping (signal received)");
        }
    })
    .map_err(|e| Error::new(format!("installing the ctrl-c handler: {e}")))
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The error to return once a stop was requested.
pub fn interrupted() -> Error {
    Error::with_code(130, "interrupted")
}

/// Prints `cmd` as a shell would show it.
pub fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            parts.push(format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            parts.push(arg.into_owned());
        }
    }
    parts.join(" ")
}

/// Runs `cmd` to the end, printing it first, and returns how it exited.
///
/// When a stop is requested meanwhile, the child gets SIGTERM (it usually got the terminal's
/// SIGINT already) and we keep waiting, so nothing outlives xtask.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    devstack::say(&format!("$ {}", show(cmd)));
    let mut child = cmd.spawn().map_err(|e| Error::new(format!("starting `{}`: {e}", show(cmd))))?;
    let mut signalled = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(Error::new(format!("waiting for `{}`: {e}", show(cmd)))),
        }
        if stop_requested() && !signalled {
            terminate(&child);
            signalled = true;
        }
        thread::sleep(POLL);
    }
}

/// Runs `cmd` and fails unless it exits 0 (with its exit code, or 130 after Ctrl-C).
pub fn check(cmd: &mut Command) -> Result {
    let status = status(cmd)?;
    if stop_requested() {
        Err(interrupted())
    } else if status.success() {
        Ok(())
    } else {
        Err(Error::failed(&format!("`{}`", show(cmd)), status))
    }
}

/// Sends SIGTERM to `child` with the `kill` command; a child that already exited is not an error.
pub fn terminate(child: &Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// The exit code that mirrors `status`: its own code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    let raw = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(raw).ok().filter(|c| *c != 0).unwrap_or(1)
}

/// "exit code 3" or "killed by signal 15".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit status".to_owned(),
    }
}

/// A duration as people read it: "850ms", "12.3s", "4m05s".
pub fn human(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", elapsed.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = elapsed.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn exit_code_mirrors_the_child_or_its_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 1, "a failure is never reported as 0");
    }

    #[test]
    fn show_quotes_arguments_a_shell_would_split() {
        let mut cmd = Command::new("psql");
        cmd.args(["-c", "SELECT 1", "it's", ""]);
        assert_eq!(show(&cmd), r"psql -c 'SELECT 1' 'it'\''s' ''");
    }

    #[test]
    fn human_durations_read_naturally() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
    }
}
