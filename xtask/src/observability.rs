//! The observability check of `cargo xtask lint`: the Prometheus alerting rules in
//! `deploy/observability/alerts.yml` pass `promtool check rules`, the Grafana dashboard
//! `deploy/observability/dashboard.json` is valid JSON, and every metric either of them names is
//! one the services register (a name the code spells out), so a renamed series cannot leave a
//! dashboard panel or an alert silently empty.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use devstack::which;

use crate::{
    cmd::{self, Error, Result},
    deps,
};

/// The prefixes of taskgate's series; a word in an expression that starts with one names a metric.
const PREFIXES: [&str; 6] = ["grpc_server_", "grpc_client_", "http_server_", "auth_", "task_", "gateway_"];

/// Suffixes the exposition adds to a registered name (counters, histograms).
const SUFFIXES: [&str; 4] = ["_total", "_bucket", "_sum", "_count"];

/// The crates whose sources register metrics.
const SOURCES: [&str; 4] = ["common/src", "auth-service/src", "task-service/src", "gateway/src"];

/// Checks the dashboard and the metric names in place, then returns `promtool check rules` on the
/// alerting rules, installing Debian's `prometheus` (for promtool) when it is missing.
pub fn validate() -> Result<Command> {
    let root = cmd::project_root();
    let dir = root.join("deploy/observability");
    let rules = read(&dir.join("alerts.yml"))?;
    let dashboard = read(&dir.join("dashboard.json"))?;
    let json: serde_json::Value =
        serde_json::from_str(&dashboard).map_err(|e| Error::new(format!("dashboard.json is not valid JSON: {e}")))?;
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    if exprs.is_empty() {
        return Err(Error::new("dashboard.json has no `expr` to show"));
    }
    let mut registered = BTreeSet::new();
    for source in SOURCES {
        string_literals(&root.join(source), &mut registered)?;
    }
    let mut unknown = BTreeSet::new();
    for text in exprs.iter().map(String::as_str).chain([rules.as_str()]) {
        for name in metric_names(text) {
            if !is_registered(&name, &registered) {
                unknown.insert(name);
            }
        }
    }
    if !unknown.is_empty() {
        let names = unknown.into_iter().collect::<Vec<_>>().join(", ");
        return Err(Error::new(format!("deploy/observability names metrics no service registers: {names}")));
    }
    if which("promtool").is_none() {
        deps::apt_install(&["prometheus"])?;
    }
    let mut c = Command::new("promtool");
    c.current_dir(&root).args(["check", "rules", "deploy/observability/alerts.yml"]);
    Ok(c)
}

/// The text of `path`.
fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::new(format!("reading {}: {e}", path.display())))
}

/// Every `expr` string anywhere in `value` (the panels' targets).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(s) if key == "expr" => out.push(s.clone()),
                    other => collect_exprs(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The words of `text` that start with one of [`PREFIXES`]: the metric names it uses.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| PREFIXES.iter().any(|p| word.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Whether `name`, or `name` less one of [`SUFFIXES`], is a registered name.
fn is_registered(name: &str, registered: &BTreeSet<String>) -> bool {
    registered.contains(name) || SUFFIXES.iter().any(|s| name.strip_suffix(s).is_some_and(|n| registered.contains(n)))
}

/// Adds every short string literal of the `.rs` files under `dir` to `out`.
fn string_literals(dir: &Path, out: &mut BTreeSet<String>) -> Result {
    let entries = fs::read_dir(dir).map_err(|e| Error::new(format!("reading {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            string_literals(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = read(&path)?;
            // Between every other quote: good enough to find `"grpc_server_started"`.
            out.extend(text.split('"').skip(1).step_by(2).filter(|s| s.len() < 80).map(str::to_owned));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_and_matched_with_their_suffixes() {
        let names = metric_names("sum by (grpc_code) (rate(grpc_server_handled_total{grpc_type=\"unary\"}[5m]))");
        assert_eq!(names, ["grpc_server_handled_total"]);
        let registered: BTreeSet<String> = ["grpc_server_handled".to_owned()].into();
        assert!(is_registered("grpc_server_handled_total", &registered));
        assert!(!is_registered("grpc_server_handeld_total", &registered));
    }

    #[test]
    fn the_project_dashboard_and_rules_name_only_registered_metrics() {
        // The in-process half of `validate` (promtool aside).
        let root = cmd::project_root();
        let mut registered = BTreeSet::new();
        for source in SOURCES {
            string_literals(&root.join(source), &mut registered).expect("sources");
        }
        let rules = read(&root.join("deploy/observability/alerts.yml")).expect("alerts.yml");
        let json: serde_json::Value =
            serde_json::from_str(&read(&root.join("deploy/observability/dashboard.json")).expect("dashboard"))
                .expect("valid JSON");
        let mut exprs = Vec::new();
        collect_exprs(&json, &mut exprs);
        for text in exprs.iter().chain([&rules]) {
            for name in metric_names(text) {
                assert!(is_registered(&name, &registered), "{name} is not registered");
            }
        }
    }
}
