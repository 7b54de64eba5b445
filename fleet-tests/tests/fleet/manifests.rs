//! The Kubernetes manifests set only environment variables the services read: a misspelt or
//! removed setting would otherwise be silently ignored in production.

use std::{collections::BTreeMap, collections::BTreeSet, path::PathBuf};

use clap::{Args as _, CommandFactory as _};

/// The variables a service reads, from its clap settings (the list `<binary> --help` prints).
fn settings_env(command: clap::Command) -> BTreeSet<String> {
    command.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// Every service's variables, by container name.
fn services() -> BTreeMap<&'static str, BTreeSet<String>> {
    BTreeMap::from([
        ("auth-service", settings_env(auth_service::Settings::command())),
        ("task-service", settings_env(task_service::Settings::command())),
        ("gateway", settings_env(gateway::Settings::augment_args(clap::Command::new("gateway")))),
    ])
}

/// `(file, container, variable)` for every `env:` entry of every container in `deploy/kubernetes`.
fn manifest_env() -> Vec<(String, String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files = Vec::new();
    let mut folders = vec![root];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("reading deploy/kubernetes").flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a manifest");
        let name = file.display().to_string();
        // Containers are `- name: <service>` items; variables are `- name: UPPER_CASE` items under
        // `env:`. The manifests use no other `- name:` item in capitals.
        let mut container: Option<String> = None;
        for line in text.lines() {
            let Some(value) = line.trim().strip_prefix("- name: ") else { continue };
            let value = value.trim().trim_matches('"');
            if ["auth-service", "task-service", "gateway"].contains(&value) {
                container = Some(value.to_owned());
            } else if !value.is_empty()
                && value.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                let container = container.clone().unwrap_or_else(|| panic!("{name}: {value} outside any container"));
                found.push((name.clone(), container, value.to_owned()));
            }
        }
    }
    found
}

#[test]
fn every_variable_the_manifests_set_is_one_the_service_reads() {
    let services = services();
    let set = manifest_env();
    assert!(set.len() > 20, "the manifests set the services' variables: {set:?}");
    for (file, container, variable) in &set {
        let reads = services.get(container.as_str()).unwrap_or_else(|| panic!("{file}: unknown container {container}"));
        assert!(reads.contains(variable), "{file}: {container} does not read {variable} (it reads {reads:?})");
    }
    // And the ones a fleet depends on are really set.
    for (container, variable) in [
        ("auth-service", "MIGRATE_AT_START"),
        ("task-service", "MIGRATE_AT_START"),
        ("task-service", "AUTH_SERVICE_URL"),
        ("gateway", "TASK_SERVICE_URL"),
        ("gateway", "AUTH_SERVICE_URL"),
        ("gateway", "REDIS_URL"),
    ] {
        assert!(
            set.iter().any(|(_, c, v)| c == container && v == variable),
            "no manifest sets {variable} for {container}"
        );
    }
}

#[test]
fn the_settings_lists_know_the_new_fleet_settings() {
    let services = services();
    assert!(services["auth-service"].contains("MIGRATE_AT_START"));
    assert!(services["task-service"].contains("MIGRATE_AT_START"));
    assert!(services["gateway"].contains("TASK_SERVICE_URL"));
}

/// `(variable, services)` for every row of the README's settings table; a row may name several
/// variables (`` `A`, `B` ``) and its "used by" column says `auth`, `task`, `gateway` or `all`.
fn readme_settings() -> Vec<(String, BTreeSet<&'static str>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).expect("reading README.md");
    let table = text
        .lines()
        .skip_while(|line| !line.starts_with("| variable | used by |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    let mut rows = Vec::new();
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, used_by) = (cells[1], cells[2]);
        let users: BTreeSet<&'static str> = used_by
            .split(',')
            .flat_map(|who| match who.trim() {
                "all" => vec!["auth-service", "task-service", "gateway"],
                "auth" => vec!["auth-service"],
                "task" => vec!["task-service"],
                "gateway" => vec!["gateway"],
                other => panic!("README settings table: unknown service {other:?} in {line:?}"),
            })
            .collect();
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            rows.push((name.to_owned(), users.clone()));
        }
    }
    rows
}

#[test]
fn the_readme_settings_table_lists_every_variable_each_service_reads() {
    let services = services();
    let rows = readme_settings();
    assert!(rows.len() > 30, "the README's settings table was found: {rows:?}");
    for (service, reads) in &services {
        for variable in reads {
            assert!(
                rows.iter().any(|(name, users)| name == variable && users.contains(service)),
                "README.md: the settings table does not list {variable} as read by {service}"
            );
        }
    }
    for (variable, users) in &rows {
        // The OpenTelemetry SDK reads its own OTEL_* variables; clap does not see them.
        if variable.starts_with("OTEL_") {
            continue;
        }
        for service in users {
            assert!(
                services[service].contains(variable),
                "README.md lists {variable} for {service}, which does not read it"
            );
        }
    }
}
