//! The Kubernetes manifests check of `cargo xtask lint`: every manifest under `deploy/kubernetes`
//! validated offline, in strict mode (unknown fields are errors), against the Kubernetes
//! [`KUBERNETES_VERSION`] schemas, with `kubernetes-validate` from PyPI (no cluster needed).
//!
//! Validated: every resource file a kustomization lists under `resources:` (the base and the
//! overlays' own files; patches are partial by nature and are checked through the built overlay),
//! and, when `kubectl` is on `PATH`, each overlay as `kubectl kustomize` builds it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use devstack::which;

use crate::cmd::{self, Error, Result};

/// The oldest Kubernetes the manifests support.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// The `kubernetes-validate` release CI installs (`.ci/run` pins the same).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";

/// The virtualenv xtask (and `.ci/run`) install the validator into when it is not on `PATH`.
fn venv() -> PathBuf {
    cmd::project_root().join(".local/k8s-venv")
}

/// `kubernetes-validate --strict -k <version> --quiet <files>`, installing the validator first when
/// it is missing, with every resource file and every built overlay.
pub fn validate() -> Result<Command> {
    let validator = find_validator().map_or_else(install_validator, Ok)?;
    let root = cmd::project_root().join("deploy/kubernetes");
    let mut files = Vec::new();
    let mut overlays = Vec::new();
    for kustomization in kustomizations(&root)? {
        let dir = kustomization.parent().unwrap_or(&root).to_owned();
        let text = fs::read_to_string(&kustomization)
            .map_err(|e| Error::new(format!("reading {}: {e}", kustomization.display())))?;
        files.extend(resource_files(&text).into_iter().map(|f| dir.join(f)));
        if dir.parent().is_some_and(|p| p.ends_with("overlays")) {
            overlays.push(dir);
        }
    }
    if let Some(kubectl) = which("kubectl") {
        let built_dir = cmd::target_dir().join("kustomize");
        fs::create_dir_all(&built_dir).map_err(|e| Error::new(format!("creating {}: {e}", built_dir.display())))?;
        for overlay in overlays {
            let name = overlay.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let out = Command::new(&kubectl)
                .arg("kustomize")
                .arg(&overlay)
                .output()
                .map_err(|e| Error::new(format!("running kubectl kustomize: {e}")))?;
            if !out.status.success() {
                return Err(Error::new(format!(
                    "kubectl kustomize {} failed: {}",
                    overlay.display(),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            let built = built_dir.join(format!("{name}.yaml"));
            fs::write(&built, out.stdout).map_err(|e| Error::new(format!("writing {}: {e}", built.display())))?;
            files.push(built);
        }
    } else {
        devstack::say("xtask lint: kubectl not found; the overlays are checked file by file only");
    }
    let mut command = Command::new(validator);
    command.args(["--strict", "--quiet", "-k", KUBERNETES_VERSION]).args(files);
    Ok(command)
}

/// Every `kustomization.yaml` under `root`.
fn kustomizations(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = fs::read_dir(&folder).map_err(|e| Error::new(format!("reading {}: {e}", folder.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The `.yaml` files a kustomization lists under `resources:` (folders are other kustomizations,
/// checked on their own).
fn resource_files(kustomization: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut in_resources = false;
    for line in kustomization.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.trim_end() == "resources:";
            continue;
        }
        if let Some(item) = line.trim().strip_prefix("- ").filter(|_| in_resources) {
            let item = item.trim().trim_matches(['"', '\'']);
            if item.ends_with(".yaml") || item.ends_with(".yml") {
                files.push(item.to_owned());
            }
        }
    }
    files
}

/// `kubernetes-validate` on `PATH` or in xtask's virtualenv.
fn find_validator() -> Option<PathBuf> {
    which("kubernetes-validate").or_else(|| {
        let local = venv().join("bin/kubernetes-validate");
        local.is_file().then_some(local)
    })
}

/// Installs [`VALIDATOR`] into a project-local virtualenv (Debian's Python refuses system-wide pip
/// installs).
fn install_validator() -> Result<PathBuf> {
    let python = which("python3").ok_or_else(|| Error::new("python3 not found (to install kubernetes-validate)"))?;
    let venv = venv();
    cmd::check(Command::new(python).arg("-m").arg("venv").arg(&venv))?;
    cmd::check(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VALIDATOR,
    ]))?;
    find_validator().ok_or_else(|| Error::new("installed kubernetes-validate, but it is not in the virtualenv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_resource_files_are_validated() {
        let text = "kind: Kustomization\nresources:\n  - namespace.yaml\n  - ../../base\n  - \"jobs.yaml\"\npatches:\n  - path: patch.yaml\n";
        assert_eq!(resource_files(text), ["namespace.yaml", "jobs.yaml"]);
    }

    #[test]
    fn every_kustomization_of_the_project_is_found() {
        let found = kustomizations(&cmd::project_root().join("deploy/kubernetes")).expect("read deploy/kubernetes");
        assert!(found.iter().any(|k| k.ends_with("base/kustomization.yaml")));
        assert!(found.iter().any(|k| k.ends_with("overlays/local/kustomization.yaml")));
    }
}
