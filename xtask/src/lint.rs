//! `cargo xtask lint`: formatting, clippy, the proto contract, the compose file, the Kubernetes
//! manifests, and the Prometheus rules and Grafana dashboard.
//!
//! Every check runs even when an earlier one failed, so one run shows everything to fix; `buf` and
//! `docker-compose` are installed first when missing.

use std::{path::PathBuf, process::Command, time::Instant};

use devstack::which;

use crate::{
    cmd::{self, Error, Result},
    deps, manifests, observability,
};

/// One check: a name for the report and a way to build its command (which may install a tool).
struct Check {
    /// What the report calls it.
    name: &'static str,
    /// Builds the command, installing the tool it needs first.
    command: fn() -> Result<Command>,
}

/// The checks, cheapest first.
const CHECKS: &[Check] = &[
    Check { name: "rustfmt", command: rustfmt },
    Check { name: "buf lint", command: buf_lint },
    Check { name: "docker-compose config", command: compose_config },
    Check { name: "kubernetes manifests", command: manifests::validate },
    Check { name: "alerting rules and dashboard", command: observability::validate },
    Check { name: "clippy", command: clippy },
];

/// Runs every check and fails if any failed.
pub fn lint() -> Result {
    let mut failed = Vec::new();
    for check in CHECKS {
        if cmd::stop_requested() {
            return Err(cmd::interrupted());
        }
        devstack::say(&format!("xtask lint: ==> {}", check.name));
        let started = Instant::now();
        let result = (check.command)().and_then(|mut c| cmd::check(&mut c));
        let took = cmd::human(started.elapsed());
        match result {
            Ok(()) => devstack::say(&format!("xtask lint: {}: ok in {took}", check.name)),
            Err(e) => {
                devstack::say(&format!("xtask lint: {}: FAILED in {took}: {e}", check.name));
                failed.push(check.name);
            }
        }
    }
    if cmd::stop_requested() {
        Err(cmd::interrupted())
    } else if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!("lint failed: {}", failed.join(", "))))
    }
}

/// `cargo fmt --all -- --check`.
fn rustfmt() -> Result<Command> {
    let mut c = cmd::cargo();
    c.args(["fmt", "--all", "--", "--check"]);
    Ok(c)
}

/// `cargo clippy --workspace --all-targets -- -D warnings`.
fn clippy() -> Result<Command> {
    let mut c = cmd::cargo();
    c.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    Ok(c)
}

/// `buf lint proto`, installing buf from npm when it is missing.
fn buf_lint() -> Result<Command> {
    let buf = match find_buf() {
        Some(buf) => buf,
        None => {
            if which("npm").is_none() {
                return Err(Error::new("buf not found, and npm (to install @bufbuild/buf) not found either"));
            }
            // A global npm install writes under the npm prefix, which root owns on Debian.
            cmd::check(cmd::privileged("npm").args(["install", "-g", "@bufbuild/buf"]))?;
            find_buf()
                .ok_or_else(|| Error::new("installed @bufbuild/buf, but no `buf` on PATH or in npm's bin folder"))?
        }
    };
    let mut c = Command::new(buf);
    c.current_dir(cmd::project_root()).args(["lint", "proto"]);
    Ok(c)
}

/// `buf` on `PATH`, or in npm's global bin folder (which need not be on `PATH`).
fn find_buf() -> Option<PathBuf> {
    which("buf").or_else(|| {
        let out = Command::new("npm").args(["prefix", "-g"]).output().ok()?;
        let prefix = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let buf = PathBuf::from(prefix).join("bin").join("buf");
        (out.status.success() && buf.is_file()).then_some(buf)
    })
}

/// `docker-compose -f docker-compose.yml config -q`, installing Debian's docker-compose when missing.
fn compose_config() -> Result<Command> {
    if which("docker-compose").is_none() {
        deps::apt_install(&["docker-compose"])?;
    }
    let mut c = Command::new("docker-compose");
    c.current_dir(cmd::project_root()).args(["-f", "docker-compose.yml", "config", "-q"]);
    Ok(c)
}
