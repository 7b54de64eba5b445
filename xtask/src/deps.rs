//! `cargo xtask deps`: installs the system packages a fresh Debian/Ubuntu machine lacks.
//!
//! Only what is missing is installed, and nothing is run at all when everything is there, so every
//! other subcommand calls [`ensure`] first at no cost.

use std::sync::atomic::{AtomicBool, Ordering};

use devstack::{pg_binary, which};

use crate::cmd::{self, Error, Result};

/// A program the dev stack needs, and the Debian package that brings it.
struct Tool {
    /// The program's name.
    name: &'static str,
    /// Whether it is installed.
    found: fn() -> bool,
    /// The Debian/Ubuntu package that installs it.
    package: &'static str,
}

/// Everything `devstack` runs to start PostgreSQL and Redis.
const TOOLS: &[Tool] = &[
    Tool { name: "redis-server", found: || which("redis-server").is_some(), package: "redis-server" },
    // The server binaries live outside `PATH` on Debian; devstack knows where.
    Tool { name: "initdb", found: || pg_binary("initdb").is_some(), package: "postgresql" },
    Tool { name: "pg_ctl", found: || pg_binary("pg_ctl").is_some(), package: "postgresql" },
    Tool { name: "psql", found: || pg_binary("psql").is_some(), package: "postgresql" },
    // PostgreSQL refuses to run as root, so devstack starts it with `runuser -u postgres`.
    Tool { name: "runuser", found: || which("runuser").is_some(), package: "util-linux" },
];

/// Set once `apt-get update` ran in this process, so it runs at most once.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs PostgreSQL and Redis (and `runuser`) when any of them is missing.
pub fn ensure() -> Result {
    let missing: Vec<&Tool> = TOOLS.iter().filter(|t| !(t.found)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|t| t.name).collect();
    devstack::say(&format!("xtask deps: missing {}", names.join(", ")));
    apt_install(&packages_for(&missing))?;
    let still: Vec<&str> = TOOLS.iter().filter(|t| !(t.found)()).map(|t| t.name).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!("still missing after apt-get install: {}", still.join(", "))))
    }
}

/// The packages that bring `tools`, each once, in a stable order.
fn packages_for(tools: &[&Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = tools.iter().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Runs `apt-get update` (once per xtask run) and `apt-get install -y <packages>`, with `sudo` when
/// we are not root.
pub fn apt_install(packages: &[&str]) -> Result {
    if which("apt-get").is_none() {
        return Err(Error::new(format!(
            "apt-get not found: install {} with this system's package manager",
            packages.join(" ")
        )));
    }
    if !cmd::is_root() && which("sudo").is_none() {
        return Err(Error::new(format!("not root and sudo not found: install {} as root", packages.join(" "))));
    }
    devstack::say(&format!("xtask deps: installing {}", packages.join(" ")));
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        cmd::check(cmd::privileged("apt-get").args(["update"]))?;
    }
    cmd::check(cmd::privileged("apt-get").args(["install", "-y", "--no-install-recommends"]).args(packages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_package_is_installed_once() {
        let missing: Vec<&Tool> = TOOLS.iter().collect();
        assert_eq!(packages_for(&missing), ["postgresql", "redis-server", "util-linux"]);
    }
}
