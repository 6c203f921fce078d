//! The Kubernetes binaries from the `debian-source` and `dir` sources, the pause
//! binary every source needs, and the version check every source's binaries pass.
//! (The `release` source downloads in `artifacts::release`.)

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::build::{ArtifactError, Result};
use super::cache::{
    create_dir, empty_dir, install_file, io_error, is_complete, kubernetes_dir, mark_complete, partial_path,
    pause_binary, remove_dir_if_present, rename, set_mode,
};
use super::commands::{format_elapsed, require, run, run_logged, APT_GET, DPKG_SOURCE, GCC, GO, JQ, MAKE, RSYNC};
use super::{Artifacts, KUBERNETES_BINARIES};
use crate::system;
use crate::topology::Topology;

/// The only Kubernetes release Debian carries with its full server source: Debian 12's
/// `kubernetes` source package 1.20.5+really1.20.2 (later Debian releases ship the
/// client only, without `vendor/`).
pub const DEBIAN_SOURCE_VERSION: &str = "1.20.2";
/// The directory `apt-get source kubernetes` unpacks on Debian 12.
const DEBIAN_SOURCE_TREE: &str = "kubernetes-1.20.5+really1.20.2";
/// `build/pause/Makefile` of Kubernetes 1.20.2 builds pause 3.4 with
/// `-DVERSION=v$(TAG)-$(REV)`; the revision says who built it.
const PAUSE_VERSION: &str = "v3.4-debian";

pub(super) fn using_cached(topology: &Topology, dir: &Path, progress: &dyn Fn(&str)) {
    progress(&format!(
        "using cached Kubernetes v{} binaries ({}) from {}",
        topology.kubernetes.version,
        topology.kubernetes.source,
        dir.join("bin").display()
    ));
}

pub(super) fn debian_source_binaries(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "building Kubernetes from Debian's source";
    let dir = kubernetes_dir(topology, cache_dir);
    if is_complete(&dir) {
        using_cached(topology, &dir, progress);
        return Ok(());
    }
    for tool in [GO, MAKE, RSYNC, JQ] {
        require(STEP, tool)?;
    }
    let tree = ensure_source_tree(cache_dir, progress)?;
    build_kubernetes(&tree, &dir, progress)?;
    build_pause(&tree, &dir.join("bin").join("pause"))?;
    let binaries = KUBERNETES_BINARIES.iter().map(|name| (*name, dir.join("bin").join(name)));
    check_versions(binaries, &topology.kubernetes.version)?;
    mark_complete(&dir)?;
    progress(&format!("Kubernetes v{DEBIAN_SOURCE_VERSION} binaries are in {}", dir.join("bin").display()));
    Ok(())
}

/// Debian's `kubernetes` source package unpacked under `cache_dir/src`. It is
/// fetched into a staging directory and renamed into place, so a tree that exists is
/// whole.
fn ensure_source_tree(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "fetching Debian's kubernetes source package";
    let src = cache_dir.join("src");
    let tree = src.join(DEBIAN_SOURCE_TREE);
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    require(STEP, APT_GET)?;
    require(STEP, DPKG_SOURCE)?;
    let staging = src.join(".staging");
    empty_dir(STEP, &staging)?;
    progress(&format!("fetching Debian's kubernetes source package (34 MB) into {}", src.display()));
    let mut command = Command::new(APT_GET.command);
    command.args(["source", "kubernetes"]).current_dir(&staging);
    match run(STEP, &mut command) {
        Err(ArtifactError::Command { failure, .. }) if failure.message.contains("deb-src") => {
            return Err(ArtifactError::NoDebSrc { step: STEP });
        }
        other => other?,
    };
    let unpacked = staging.join(DEBIAN_SOURCE_TREE);
    if !unpacked.join("Makefile").is_file() {
        let found = fs::read_dir(&staging)
            .map(|entries| {
                entries.filter_map(|entry| entry.ok()).map(|entry| entry.file_name().to_string_lossy().into_owned())
            })
            .map(|names| names.collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        return Err(ArtifactError::Missing {
            what: "the Kubernetes 1.20.2 source tree".to_string(),
            path: unpacked,
            hint: format!(
                "apt-get source kubernetes unpacked something else ({found}); is this host's apt on Debian 12?"
            ),
        });
    }
    remove_dir_if_present(STEP, &tree)?;
    rename(STEP, &unpacked, &tree)?;
    remove_dir_if_present(STEP, &staging)?;
    Ok(tree)
}

/// Runs Kubernetes' own `make` for the six binaries in the source tree and copies
/// them to `dir/bin`. The tree must sit in a GOPATH layout; a plain
/// `go build -mod=vendor` fails on go.mod consistency.
fn build_kubernetes(tree: &Path, dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "building Kubernetes from Debian's source";
    let gopath = tree.join(".go");
    let link = gopath.join("src/k8s.io/kubernetes");
    if fs::symlink_metadata(&link).is_err() {
        create_dir(STEP, link.parent().expect("the link has a parent"))?;
        std::os::unix::fs::symlink("../../..", &link).map_err(io_error(STEP, &link))?;
    }
    // A build that stops half way leaves empty generator binaries in _output/ that
    // break the next attempt; this marker tells the next run to start clean.
    let in_progress = tree.join(".lab-build-in-progress");
    let output = tree.join("_output");
    if in_progress.exists() {
        progress(&format!("removing {} left by an interrupted build", output.display()));
        remove_dir_if_present(STEP, &output)?;
    }
    create_dir(STEP, dir)?;
    fs::write(&in_progress, b"").map_err(io_error(STEP, &in_progress))?;
    let log = dir.join("build.log");
    progress(&format!(
        "building Kubernetes v{DEBIAN_SOURCE_VERSION} from Debian's source in {} (about 7 minutes on 2 cores; log: {})",
        tree.display(),
        log.display()
    ));
    let targets: Vec<String> = KUBERNETES_BINARIES.iter().map(|name| format!("cmd/{name}")).collect();
    let mut make = Command::new(MAKE.command);
    make.current_dir(tree)
        .arg(format!("WHAT={}", targets.join(" ")))
        .env("GOPATH", &gopath)
        .env("CGO_ENABLED", "0")
        .env("KUBE_GIT_VERSION", format!("v{DEBIAN_SOURCE_VERSION}"))
        .env("KUBE_GIT_TREE_STATE", "clean");
    let started = Instant::now();
    let built = run_logged(STEP, &mut make, &log, "building Kubernetes", progress);
    if built.is_err() {
        remove_dir_if_present(STEP, &output)?;
    }
    fs::remove_file(&in_progress).map_err(io_error(STEP, &in_progress))?;
    built?;
    progress(&format!("built Kubernetes in {}", format_elapsed(started.elapsed())));
    let bin = dir.join("bin");
    create_dir(STEP, &bin)?;
    for name in KUBERNETES_BINARIES {
        install_file(STEP, &output.join("bin").join(name), &bin.join(name), 0o755)?;
    }
    Ok(())
}

/// Compiles the pause binary statically from the source tree, as Kubernetes'
/// `build/pause/Makefile` does.
fn build_pause(tree: &Path, destination: &Path) -> Result<()> {
    const STEP: &str = "compiling the pause binary";
    require(STEP, GCC)?;
    let libc = run(STEP, Command::new(GCC.command).arg("-print-file-name=libc.a"))?;
    if !libc.trim().starts_with('/') {
        return Err(ArtifactError::MissingTool {
            step: STEP,
            what: "the static C library (libc.a)".to_string(),
            package: "libc6-dev",
        });
    }
    create_dir(STEP, destination.parent().expect("the pause binary has a parent"))?;
    let partial = partial_path(destination);
    let mut gcc = Command::new(GCC.command);
    gcc.args(["-Os", "-Wall", "-Werror", "-static", &format!("-DVERSION={PAUSE_VERSION}"), "-o"])
        .arg(&partial)
        .arg(tree.join("build/pause/linux/pause.c"));
    run(STEP, &mut gcc)?;
    set_mode(STEP, &partial, 0o755)?;
    rename(STEP, &partial, destination)
}

/// The pause binary for the `release` and `dir` sources, compiled from Debian's
/// source tree once.
pub(super) fn ensure_pause(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    let destination = pause_binary(topology, cache_dir);
    if destination.is_file() {
        return Ok(());
    }
    let tree = ensure_source_tree(cache_dir, progress)?;
    progress(&format!("compiling the pause binary into {}", destination.display()));
    build_pause(&tree, &destination)
}

/// `source = "dir"`: the binaries are used where they are, after checking that each
/// one is there, runs, and is the configured version.
pub(super) fn directory_binaries(
    topology: &Topology,
    cache_dir: &Path,
    artifacts: &Artifacts,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let dir = topology.kubernetes.dir.as_ref().ok_or(ArtifactError::DirNotSet)?;
    let binaries = artifacts.binaries.iter().map(|(name, path)| (name.as_str(), path.clone()));
    check_versions(binaries, &topology.kubernetes.version)?;
    progress(&format!(
        "using Kubernetes v{} binaries from {} (each reports v{})",
        topology.kubernetes.version,
        dir.display(),
        topology.kubernetes.version
    ));
    ensure_pause(topology, cache_dir, progress)
}

/// Checks that each binary exists, is executable and reports `version`.
pub(super) fn check_versions<'a>(binaries: impl Iterator<Item = (&'a str, PathBuf)>, version: &str) -> Result<()> {
    let expected = format!("v{version}");
    for (name, path) in binaries {
        let executable = fs::metadata(&path).map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        match executable {
            Err(_) => {
                return Err(ArtifactError::Missing {
                    what: format!("the Kubernetes binary {name}"),
                    path,
                    hint: "put every Kubernetes binary into kubernetes.dir".to_string(),
                })
            }
            Ok(false) => return Err(ArtifactError::NotExecutable { path }),
            Ok(true) => {}
        }
        // kubectl has no --version flag; `version --client` does not contact a server.
        let args: &[&str] = if name == "kubectl" { &["version", "--client"] } else { &["--version"] };
        let mut command = Command::new(&path);
        command.args(args);
        let output = run("checking the Kubernetes binaries' versions", &mut command)?;
        let reported = reported_version(&output).ok_or_else(|| ArtifactError::VersionUnknown {
            path: path.clone(),
            command: system::command_line(&command),
            output: output.trim().chars().take(200).collect(),
        })?;
        if reported != expected {
            return Err(ArtifactError::VersionMismatch { path, reported, expected: version.to_string() });
        }
    }
    Ok(())
}

/// The first `vMAJOR.MINOR.PATCH[-suffix]` word of a `--version` output, in any of
/// the forms Kubernetes prints: `Kubernetes v1.20.2`, `GitVersion:"v1.20.2"`,
/// `Client Version: v1.28.0`.
fn reported_version(output: &str) -> Option<String> {
    let bytes = output.as_bytes();
    (0..bytes.len()).find_map(|start| {
        let at_word_start = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        if !at_word_start || bytes[start] != b'v' || !bytes.get(start + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let word: String =
            output[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')).collect();
        (word.matches('.').count() >= 2).then_some(word)
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::artifacts::build::kubernetes_cached;
    use crate::artifacts::test_support::{topology, Recorder};

    #[test]
    fn an_unfinished_build_is_not_cached() {
        let cache = tempfile::tempdir().unwrap();
        let topology = topology();
        let dir = kubernetes_dir(&topology, cache.path());
        assert_eq!(dir, cache.path().join("kubernetes/debian-source-v1.20.2"));
        fs::create_dir_all(dir.join("bin")).unwrap();
        for name in KUBERNETES_BINARIES.iter().chain(["pause"].iter()) {
            fs::write(dir.join("bin").join(name), name).unwrap();
        }
        assert!(!kubernetes_cached(&topology, cache.path()), "no marker yet");
        mark_complete(&dir).unwrap();
        assert!(kubernetes_cached(&topology, cache.path()));
        let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        assert_eq!(sums.lines().count(), 7);
        assert!(sums.contains(&format!("{}  kubelet\n", hex::encode(Sha256::digest(b"kubelet")))), "{sums}");

        let recorder = Recorder::default();
        debian_source_binaries(&topology, cache.path(), &|line| recorder.record(line)).unwrap();
        let lines = recorder.lines();
        assert_eq!(
            lines,
            [format!("using cached Kubernetes v1.20.2 binaries (debian-source) from {}", dir.join("bin").display())]
        );
    }

    #[test]
    fn versions_are_read_from_every_output_form() {
        assert_eq!(reported_version("Kubernetes v1.20.2\n").as_deref(), Some("v1.20.2"));
        let kubectl = r#"Client Version: version.Info{Major:"1", Minor:"20", GitVersion:"v1.20.2", GitCommit:"abc"}"#;
        assert_eq!(reported_version(kubectl).as_deref(), Some("v1.20.2"));
        assert_eq!(reported_version("Client Version: v1.28.0\nKustomize Version: v5.0.4").as_deref(), Some("v1.28.0"));
        assert_eq!(reported_version("Kubernetes v1.30.0-rc.1").as_deref(), Some("v1.30.0-rc.1"));
        assert_eq!(reported_version("dev1.2.3 v1 v2.0"), None);
    }

    #[test]
    fn dir_binaries_must_run_and_report_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &'static str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\necho '{text}'\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            (name, path)
        };
        let good = script("kubelet", "Kubernetes v1.20.2", 0o755);
        let kubectl = script("kubectl", r#"Client Version: version.Info{GitVersion:"v1.20.2"}"#, 0o755);
        check_versions([good.clone(), kubectl].into_iter(), "1.20.2").unwrap();

        let newer = script("kube-proxy", "Kubernetes v1.21.0", 0o755);
        let error = check_versions([good.clone(), newer].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(
            error.contains("kube-proxy reports Kubernetes v1.21.0 but kubernetes.version is \"1.20.2\""),
            "{error}"
        );

        let plain = script("kube-scheduler", "Kubernetes v1.20.2", 0o644);
        let error = check_versions([plain].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(error.contains("kube-scheduler is not an executable file"), "{error}");

        let missing = ("kube-apiserver", dir.path().join("kube-apiserver"));
        let error = check_versions([missing].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(error.contains("the Kubernetes binary kube-apiserver is missing at"), "{error}");
    }
}
