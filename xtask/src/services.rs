//! The three service binaries: how to build them, where cargo puts them, and the settings that
//! wire them together on one machine.

use std::{
    env,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
    process::Command,
};

use crate::cmd::{self, Error, Result};

/// One service binary and the variable that says where it listens.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The cargo package, which is also the binary's name.
    pub name: &'static str,
    /// The environment variable holding its listen address.
    pub listen_var: &'static str,
    /// What it serves, for the table `cargo xtask run` prints.
    pub protocol: &'static str,
}

/// The services in start order: auth-service, task-service, then the gateway in front of both.
pub const SERVICES: [Service; 3] = [
    Service { name: "auth-service", listen_var: "AUTH_LISTEN_ADDR", protocol: "grpc" },
    Service { name: "task-service", listen_var: "TASK_LISTEN_ADDR", protocol: "grpc" },
    Service { name: "gateway", listen_var: "GATEWAY_LISTEN_ADDR", protocol: "http" },
];

/// Local defaults for the services' settings; a variable already set in the environment wins.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    ("AUTH_LISTEN_ADDR", "127.0.0.1:50051"),
    ("TASK_LISTEN_ADDR", "127.0.0.1:50052"),
    ("GATEWAY_LISTEN_ADDR", "0.0.0.0:8080"),
    ("AUTH_SERVICE_URL", "http://127.0.0.1:50051"),
    ("TASK_SERVICE_URL", "http://127.0.0.1:50052"),
];

/// Which cargo profile to build the services with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `--profile release`, binaries in `target/release`.
    Release,
    /// `--profile dev`, binaries in `target/debug`.
    Debug,
    /// `--profile fast`, binaries in `target/fast`: the release build optimised for speed
    /// throughout (more memory, less CPU per request; see the root `Cargo.toml`).
    Fast,
}

impl Profile {
    /// Reads `--release`, `--release=true|false`, `--debug` and `--fast`; the default is release.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut profile = Profile::Release;
        for arg in args {
            profile = match arg.as_str() {
                "--release" | "--release=true" => Profile::Release,
                "--debug" | "--release=false" => Profile::Debug,
                "--fast" => Profile::Fast,
                other => {
                    return Err(Error::with_code(
                        2,
                        format!("unknown argument `{other}` (expected --debug, --fast or --release=false)"),
                    ));
                }
            };
        }
        Ok(profile)
    }

    /// The name cargo's `--profile` takes.
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "dev",
            Profile::Fast => "fast",
        }
    }

    /// The folder under `target/` the binaries land in.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
            Profile::Fast => "fast",
        }
    }

    /// Builds the binaries of `packages` with this profile.
    pub fn build(self, packages: &[&str]) -> Result {
        let mut build = cmd::cargo();
        build.args(["build", "--profile", self.cargo_name()]);
        for package in packages {
            build.args(["-p", package]);
        }
        cmd::check(&mut build)
    }

    /// Where cargo puts binary `name` for this profile.
    pub fn binary(self, name: &str) -> PathBuf {
        cmd::target_dir().join(self.dir_name()).join(name)
    }
}

/// A command for a built service binary with the local defaults for every variable the user left
/// unset, plus `DATABASE_URL` and `REDIS_URL` when given.
pub fn command(profile: Profile, name: &str, database_url: &str, redis_url: &str) -> Command {
    let mut cmd = Command::new(profile.binary(name));
    cmd.current_dir(cmd::project_root());
    for (var, value) in
        [("DATABASE_URL", database_url), ("REDIS_URL", redis_url)].into_iter().chain(DEFAULT_ENV.iter().copied())
    {
        if !cmd::env_is_set(var) {
            cmd.env(var, value);
        }
    }
    cmd
}

/// The value a service will see for `var`: the user's, else the local default.
pub fn setting(var: &str) -> Option<String> {
    env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| DEFAULT_ENV.iter().find(|(name, _)| *name == var).map(|(_, value)| (*value).to_owned()))
}

/// The address to connect to when checking that a server bound to `listen` accepts connections:
/// a wildcard bind (`0.0.0.0`, `::`) is reached through loopback.
pub fn probe_addr(listen: &str) -> Result<SocketAddr> {
    let mut addr = listen
        .to_socket_addrs()
        .map_err(|e| Error::new(format!("listen address `{listen}` is not host:port: {e}")))?
        .next()
        .ok_or_else(|| Error::new(format!("listen address `{listen}` resolves to nothing")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn release_is_the_default_and_the_flags_pick_debug_or_fast() {
        assert_eq!(Profile::from_args(&[]).ok(), Some(Profile::Release));
        assert_eq!(Profile::from_args(&args(&["--debug"])).ok(), Some(Profile::Debug));
        assert_eq!(Profile::from_args(&args(&["--release=false"])).ok(), Some(Profile::Debug));
        assert_eq!(Profile::from_args(&args(&["--release=true"])).ok(), Some(Profile::Release));
        assert_eq!(Profile::from_args(&args(&["--fast"])).ok(), Some(Profile::Fast));
        assert!(Profile::from_args(&args(&["--quick"])).is_err());
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(probe_addr("0.0.0.0:8080").ok(), Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(probe_addr("[::]:8080").ok(), Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 8080))));
        assert_eq!(probe_addr("127.0.0.1:50051").ok(), Some(SocketAddr::from(([127, 0, 0, 1], 50051))));
        assert!(probe_addr("nonsense").is_err());
    }
}
