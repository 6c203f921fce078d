//! Makes the files `Artifacts::expected` names exist: the Kubernetes binaries, the
//! static pause binary and the container image archives the pods run.
//!
//! Everything lands in the lab's cache directory and is reused by every later run:
//!
//! - `kubernetes/SOURCE-vVERSION/` holds `bin/` (the six binaries and `pause`),
//!   `build.log`, `SHA256SUMS` and a `complete` marker written last, so that an
//!   interrupted build or download is never taken for a finished one;
//! - `src/` holds Debian's `kubernetes` source package, which also carries the
//!   pause binary's source (`build/pause/linux/pause.c`);
//! - `busybox/` holds the static busybox the web image is made of;
//! - `lab-dns/` holds the lab's DNS server: `target/` is the cargo target directory
//!   it is built in from the workspace's `dns/` crate, `lab-dns` the stripped binary
//!   its image is made of, `build.log` cargo's output;
//! - `images/NAME.tar` are OCI archives for `ctr images import`, each with a
//!   `NAME.tar.json` stamp of its inputs' digest: an archive is rewritten only when
//!   what it is made from changes.
//!
//! The Kubernetes binaries come from one of three sources (`kubernetes.source`):
//! `debian-source` builds v1.20.2 offline from Debian 12's source package with
//! Debian's Go (about 7 minutes on 2 cores), `release` downloads the official
//! binaries and verifies their published checksums, `dir` takes prebuilt binaries
//! from a local directory as they are.

use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use super::oci::{self, ImageSpec, LayerFile, OciError};
use super::{images, Artifacts, KUBERNETES_BINARIES};
use crate::topology::{ArtifactSource, DnsAddon, Topology};

/// The only Kubernetes release Debian carries with its full server source: Debian 12's
/// `kubernetes` source package 1.20.5+really1.20.2 (later Debian releases ship the
/// client only, without `vendor/`).
pub const DEBIAN_SOURCE_VERSION: &str = "1.20.2";
/// The directory `apt-get source kubernetes` unpacks on Debian 12.
const DEBIAN_SOURCE_TREE: &str = "kubernetes-1.20.5+really1.20.2";
/// A deb-src entry that lets `apt-get source kubernetes` work on a Debian 12 host
/// whose apt sources have none; the doctor writes it to `DEB_SRC_LIST_PATH` and runs
/// `apt-get update`.
pub const DEB_SRC_ENTRY: &str = "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
pub const DEB_SRC_LIST_PATH: &str = "/etc/apt/sources.list.d/k8s-lab-debian-src.sources";
/// `build/pause/Makefile` of Kubernetes 1.20.2 builds pause 3.4 with
/// `-DVERSION=v$(TAG)-$(REV)`; the revision says who built it.
const PAUSE_VERSION: &str = "v3.4-debian";
/// Where `release` binaries come from: `BASE/release/vVERSION/bin/linux/amd64/NAME`
/// with `NAME.sha256` (or `NAME.sha512`) beside each.
pub const RELEASE_BASE_URL: &str = "https://dl.k8s.io";
/// How often a long build reports that it is still alive.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);

/// A command the build runs, and the Debian package that installs it.
#[derive(Debug, Clone, Copy)]
struct Tool {
    command: &'static str,
    package: &'static str,
}

const APT_GET: Tool = Tool { command: "apt-get", package: "apt" };
const DPKG_SOURCE: Tool = Tool { command: "dpkg-source", package: "dpkg-dev" };
const DPKG_DEB: Tool = Tool { command: "dpkg-deb", package: "dpkg" };
const GCC: Tool = Tool { command: "gcc", package: "gcc" };
const GO: Tool = Tool { command: "go", package: "golang-go" };
const MAKE: Tool = Tool { command: "make", package: "make" };
const RSYNC: Tool = Tool { command: "rsync", package: "rsync" };
const JQ: Tool = Tool { command: "jq", package: "jq" };
const LDD: Tool = Tool { command: "ldd", package: "libc-bin" };
const MMDEBSTRAP: Tool = Tool { command: "mmdebstrap", package: "mmdebstrap" };
/// Optional: without it the lab-dns binary goes into its image with its symbols.
const STRIP: Tool = Tool { command: "strip", package: "binutils" };

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "kubernetes.version = {requested:?} cannot be built with source = \"debian-source\": Debian 12 carries \
         the server source of Kubernetes {DEBIAN_SOURCE_VERSION} only (package kubernetes 1.20.5+really1.20.2); \
         set kubernetes.version = \"{DEBIAN_SOURCE_VERSION}\", or use source = \"release\" on a host with internet access"
    )]
    UnsupportedVersion { requested: String },
    #[error("kubernetes.dir must be set with kubernetes.source = \"dir\"")]
    DirNotSet,
    #[error("{step} needs {what}, which is not installed (apt-get install {package})")]
    MissingTool { step: &'static str, what: String, package: &'static str },
    #[error(
        "{step} needs cargo, which is not on PATH: install Rust with rustup (dns/Cargo.toml's rust-version \
         names the oldest Rust that builds the server; Debian 12's cargo is older)"
    )]
    NoCargo { step: &'static str },
    #[error(
        "{step}: apt-get source found no deb-src entry for Debian 12; write this to {DEB_SRC_LIST_PATH} \
         and run apt-get update (cargo lab doctor does both):\n{DEB_SRC_ENTRY}"
    )]
    NoDebSrc { step: &'static str },
    #[error("{step}: cannot run `{command}`: {source}")]
    Spawn { step: &'static str, command: String, source: io::Error },
    #[error("{step}: `{command}` failed ({status}){output}")]
    CommandFailed { step: &'static str, command: String, status: String, output: String },
    #[error("{step}: {}: {source}", path.display())]
    Io { step: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot download {url}: {reason} (this host has no internet access; use source = \"debian-source\")")]
    Offline { url: String, reason: String },
    #[error("cannot download {url}: the server answered HTTP {status} (is kubernetes.version a released version?)")]
    DownloadStatus { url: String, status: u16 },
    #[error("{url} does not hold a {algorithm} checksum: {content:?}")]
    BadChecksumFile { url: String, algorithm: &'static str, content: String },
    #[error("{url} does not match its published {algorithm} checksum: expected {expected}, got {actual}")]
    ChecksumMismatch { url: String, algorithm: &'static str, expected: String, actual: String },
    /// An input that should be there is not.
    #[error("{what} is missing at {}: {hint}", path.display())]
    Missing { what: String, path: PathBuf, hint: String },
    #[error("{} is not an executable file", path.display())]
    NotExecutable { path: PathBuf },
    #[error("{} reports no version in the output of `{command}`: {output:?}", path.display())]
    VersionUnknown { path: PathBuf, command: String, output: String },
    #[error("{} reports Kubernetes {reported} but kubernetes.version is {expected:?}", path.display())]
    VersionMismatch { path: PathBuf, reported: String, expected: String },
    #[error("the artifacts manifest names an image this build does not know: {reference}")]
    UnknownImage { reference: String },
    #[error(transparent)]
    Image(#[from] OciError),
}

type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// The Debian packages `ensure` needs on the host for `topology`, for the doctor to
/// install: a C compiler and static libc for the pause binary and dpkg-dev to unpack
/// Kubernetes' source for every source, Go and the Kubernetes build's helpers for
/// `debian-source`. (The web image's busybox is downloaded with `apt-get download`,
/// not installed.)
pub fn required_packages(topology: &Topology) -> Vec<&'static str> {
    let mut packages = vec![DPKG_SOURCE.package, GCC.package, "libc6-dev"];
    if topology.kubernetes.source == ArtifactSource::DebianSource {
        packages.extend([GO.package, MAKE.package, RSYNC.package, JQ.package]);
    }
    packages.sort_unstable();
    packages
}

/// Makes every artifact of `topology` exist under `cache_dir`, building, downloading
/// or reusing them, and returns their manifest. `workspace_dir` is the lab's own Cargo
/// workspace, whose `dns/` crate is built for the lab-dns image. `progress` receives
/// one line per step (and one every 15 s while a long build runs).
pub fn ensure(
    topology: &Topology,
    cache_dir: &Path,
    workspace_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Artifacts> {
    let kubernetes = &topology.kubernetes;
    if kubernetes.source == ArtifactSource::DebianSource && kubernetes.version != DEBIAN_SOURCE_VERSION {
        return Err(ArtifactError::UnsupportedVersion { requested: kubernetes.version.clone() });
    }
    let artifacts = Artifacts::expected(topology, cache_dir);
    let _lock = CacheLock::acquire(cache_dir, progress)?;
    match kubernetes.source {
        ArtifactSource::DebianSource => debian_source_binaries(topology, cache_dir, progress)?,
        ArtifactSource::Release => release_binaries(topology, cache_dir, RELEASE_BASE_URL, progress)?,
        ArtifactSource::Dir => directory_binaries(topology, cache_dir, &artifacts, progress)?,
    }
    ensure_images(topology, cache_dir, workspace_dir, &artifacts, progress)?;
    Ok(artifacts)
}

/// Whether the Kubernetes binaries of `topology` are already in the cache, so that
/// `ensure` will not build or download them (`dir` binaries are never cached).
pub fn kubernetes_cached(topology: &Topology, cache_dir: &Path) -> bool {
    match topology.kubernetes.source {
        ArtifactSource::Dir => true,
        ArtifactSource::DebianSource | ArtifactSource::Release => is_complete(&kubernetes_dir(topology, cache_dir)),
    }
}

/// `cache_dir/kubernetes/SOURCE-vVERSION`: for `debian-source` and `release`, the
/// `bin/` below it is the manifest's binary directory; for `dir` it holds only pause.
pub fn kubernetes_dir(topology: &Topology, cache_dir: &Path) -> PathBuf {
    let kubernetes = &topology.kubernetes;
    cache_dir.join("kubernetes").join(format!("{}-v{}", kubernetes.source, kubernetes.version))
}

/// The static pause binary the pause image is made of.
pub fn pause_binary(topology: &Topology, cache_dir: &Path) -> PathBuf {
    kubernetes_dir(topology, cache_dir).join("bin").join("pause")
}

/// The lab's DNS server binary its image is made of, built and stripped by `ensure`.
pub fn lab_dns_binary(cache_dir: &Path) -> PathBuf {
    cache_dir.join("lab-dns").join("lab-dns")
}

/// The cargo target directory of the lab-dns build. It is the cache's own rather than
/// the workspace's `target/`: that one is shared with whoever develops the lab, who may
/// clean it, build it with other flags or hold its lock with a long build, and none of
/// that should cost a `lab up` a rebuild or a wait.
pub fn lab_dns_target_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("lab-dns").join("target")
}

// ---------------------------------------------------------------------------------
// Kubernetes binaries
// ---------------------------------------------------------------------------------

/// A build or download is finished only once its marker exists; the marker is
/// written after every binary and the checksum list.
fn is_complete(dir: &Path) -> bool {
    let bin = dir.join("bin");
    dir.join("complete").is_file()
        && KUBERNETES_BINARIES.iter().chain(["pause"].iter()).all(|name| bin.join(name).is_file())
}

fn using_cached(topology: &Topology, dir: &Path, progress: &dyn Fn(&str)) {
    progress(&format!(
        "using cached Kubernetes v{} binaries ({}) from {}",
        topology.kubernetes.version,
        topology.kubernetes.source,
        dir.join("bin").display()
    ));
}

fn debian_source_binaries(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
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
    remove_dir_if_present(STEP, &staging)?;
    create_dir(STEP, &staging)?;
    progress(&format!("fetching Debian's kubernetes source package (34 MB) into {}", src.display()));
    let mut command = Command::new(APT_GET.command);
    command.args(["source", "kubernetes"]).current_dir(&staging);
    match run_captured(STEP, &mut command) {
        Err(ArtifactError::CommandFailed { output, .. }) if output.contains("deb-src") => {
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
    let libc = run_captured(STEP, Command::new(GCC.command).arg("-print-file-name=libc.a"))?;
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
    run_captured(STEP, &mut gcc)?;
    set_mode(STEP, &partial, 0o755)?;
    rename(STEP, &partial, destination)
}

/// The pause binary for the `release` and `dir` sources, compiled from Debian's
/// source tree once.
fn ensure_pause(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    let destination = pause_binary(topology, cache_dir);
    if destination.is_file() {
        return Ok(());
    }
    let tree = ensure_source_tree(cache_dir, progress)?;
    progress(&format!("compiling the pause binary into {}", destination.display()));
    build_pause(&tree, &destination)
}

fn release_binaries(topology: &Topology, cache_dir: &Path, base_url: &str, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "downloading Kubernetes release binaries";
    let dir = kubernetes_dir(topology, cache_dir);
    if is_complete(&dir) {
        using_cached(topology, &dir, progress);
        return Ok(());
    }
    let version = &topology.kubernetes.version;
    let bin = dir.join("bin");
    create_dir(STEP, &bin)?;
    let agent = http_agent();
    for (index, name) in KUBERNETES_BINARIES.iter().enumerate() {
        // Files are renamed into place only once verified, so one that exists is good.
        if bin.join(name).is_file() {
            continue;
        }
        let url = release_url(base_url, version, name);
        progress(&format!("downloading {url} ({}/{})", index + 1, KUBERNETES_BINARIES.len()));
        download_verified(&agent, &url, &bin.join(name))?;
    }
    ensure_pause(topology, cache_dir, progress)?;
    check_versions(KUBERNETES_BINARIES.iter().map(|name| (*name, bin.join(name))), version)?;
    mark_complete(&dir)?;
    progress(&format!("Kubernetes v{version} release binaries are in {}", bin.display()));
    Ok(())
}

fn release_url(base_url: &str, version: &str, binary: &str) -> String {
    format!("{base_url}/release/v{version}/bin/linux/amd64/{binary}")
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_connect(Some(Duration::from_secs(20))).build().into()
}

/// A published checksum: `URL.sha256`, or `URL.sha512` where no sha256 file exists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checksum {
    Sha256(String),
    Sha512(String),
}

impl Checksum {
    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    fn expected(&self) -> &str {
        match self {
            Checksum::Sha256(hex) | Checksum::Sha512(hex) => hex,
        }
    }
}

/// The hex digest of a checksum file: either the bare digest or `DIGEST  NAME`.
fn parse_checksum(url: &str, algorithm: &'static str, content: &str) -> Result<Checksum> {
    let hex_len = if algorithm == "sha256" { 64 } else { 128 };
    let digest = content.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    if digest.len() != hex_len || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        let content = content.chars().take(200).collect();
        return Err(ArtifactError::BadChecksumFile { url: url.to_string(), algorithm, content });
    }
    Ok(if algorithm == "sha256" { Checksum::Sha256(digest) } else { Checksum::Sha512(digest) })
}

fn download_error(url: &str, error: ureq::Error) -> ArtifactError {
    match error {
        ureq::Error::StatusCode(status) => ArtifactError::DownloadStatus { url: url.to_string(), status },
        other => ArtifactError::Offline { url: url.to_string(), reason: other.to_string() },
    }
}

fn fetch_checksum(agent: &ureq::Agent, url: &str) -> Result<Checksum> {
    let mut last_error = None;
    for algorithm in ["sha256", "sha512"] {
        let checksum_url = format!("{url}.{algorithm}");
        match agent.get(&checksum_url).call() {
            Ok(mut response) => {
                let content =
                    response.body_mut().read_to_string().map_err(|error| download_error(&checksum_url, error))?;
                return parse_checksum(&checksum_url, algorithm, &content);
            }
            // Older releases publish only one of the two files.
            Err(ureq::Error::StatusCode(404)) => {
                last_error = Some(ArtifactError::DownloadStatus { url: checksum_url, status: 404 });
            }
            Err(error) => return Err(download_error(&checksum_url, error)),
        }
    }
    Err(last_error.expect("two checksum files were tried"))
}

/// Downloads `url` to `destination` (through a temporary file, renamed into place
/// only once it matches the published checksum) and makes it executable.
fn download_verified(agent: &ureq::Agent, url: &str, destination: &Path) -> Result<()> {
    const STEP: &str = "downloading Kubernetes release binaries";
    let checksum = fetch_checksum(agent, url)?;
    let response = agent.get(url).call().map_err(|error| download_error(url, error))?;
    let mut body = response.into_body().into_reader();
    let partial = partial_path(destination);
    let mut file = fs::File::create(&partial).map_err(io_error(STEP, &partial))?;
    let (mut sha256, mut sha512) = (Sha256::new(), Sha512::new());
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = body.read(&mut buffer).map_err(|error| ArtifactError::Offline {
            url: url.to_string(),
            reason: format!("the transfer broke off: {error}"),
        })?;
        if read == 0 {
            break;
        }
        sha256.update(&buffer[..read]);
        sha512.update(&buffer[..read]);
        file.write_all(&buffer[..read]).map_err(io_error(STEP, &partial))?;
    }
    drop(file);
    let actual = match checksum {
        Checksum::Sha256(_) => hex::encode(sha256.finalize()),
        Checksum::Sha512(_) => hex::encode(sha512.finalize()),
    };
    if actual != checksum.expected() {
        let _ = fs::remove_file(&partial);
        return Err(ArtifactError::ChecksumMismatch {
            url: url.to_string(),
            algorithm: checksum.algorithm(),
            expected: checksum.expected().to_string(),
            actual,
        });
    }
    set_mode(STEP, &partial, 0o755)?;
    rename(STEP, &partial, destination)
}

/// `source = "dir"`: the binaries are used where they are, after checking that each
/// one is there, runs, and is the configured version.
fn directory_binaries(
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
fn check_versions<'a>(binaries: impl Iterator<Item = (&'a str, PathBuf)>, version: &str) -> Result<()> {
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
        let output = run_captured("checking the Kubernetes binaries' versions", &mut command)?;
        let reported = reported_version(&output).ok_or_else(|| ArtifactError::VersionUnknown {
            path: path.clone(),
            command: describe(&command),
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

/// Writes `SHA256SUMS` of everything in `dir/bin`, then the `complete` marker.
fn mark_complete(dir: &Path) -> Result<()> {
    const STEP: &str = "recording the finished Kubernetes binaries";
    let bin = dir.join("bin");
    let mut names: Vec<String> = fs::read_dir(&bin)
        .map_err(io_error(STEP, &bin))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".partial"))
        .collect();
    names.sort();
    let mut sums = String::new();
    for name in &names {
        let path = bin.join(name);
        let mut file = fs::File::open(&path).map_err(io_error(STEP, &path))?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_error(STEP, &path))?;
        sums.push_str(&format!("{}  {name}\n", hex::encode(hasher.finalize())));
    }
    write_atomically(STEP, &dir.join("SHA256SUMS"), sums.as_bytes())?;
    write_atomically(STEP, &dir.join("complete"), b"every binary in bin/ is built and listed in SHA256SUMS\n")
}

// ---------------------------------------------------------------------------------
// Container images
// ---------------------------------------------------------------------------------

/// The stamp beside each image archive: what it was made from.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct ImageStamp {
    reference: String,
    inputs_sha256: String,
    manifest_digest: String,
}

fn ensure_images(
    topology: &Topology,
    cache_dir: &Path,
    workspace_dir: &Path,
    artifacts: &Artifacts,
    progress: &dyn Fn(&str),
) -> Result<()> {
    for archive in &artifacts.images {
        let spec = match archive.reference.as_str() {
            images::PAUSE => pause_image(&pause_binary(topology, cache_dir)),
            images::WEB => {
                let busybox = ensure_busybox(cache_dir, progress)?;
                web_image(&busybox, &busybox_applets(&busybox)?)
            }
            images::LAB_DNS if topology.addons.dns != DnsAddon::LabDns => continue,
            images::LAB_DNS => {
                let binary = ensure_lab_dns_binary(workspace_dir, cache_dir, progress)?;
                lab_dns_image(&binary, &shared_libraries(&binary)?)
            }
            images::DNSUTILS => {
                let root = ensure_dnsutils_root(cache_dir, progress)?;
                dnsutils_image(&root)?
            }
            other => return Err(ArtifactError::UnknownImage { reference: other.to_string() }),
        };
        ensure_archive(&spec, &archive.path, progress)?;
    }
    Ok(())
}

/// Writes the archive of `spec` unless the stamp beside it says it was made from
/// the same inputs.
fn ensure_archive(spec: &ImageSpec, archive: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "writing an image archive";
    let inputs_sha256 = oci::inputs_digest(spec)?;
    let stamp_path = stamp_path(archive);
    let stamp: Option<ImageStamp> = fs::read(&stamp_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let current = stamp.is_some_and(|stamp| stamp.reference == spec.reference && stamp.inputs_sha256 == inputs_sha256);
    if current && archive.is_file() {
        progress(&format!("using cached image {} from {}", spec.reference, archive.display()));
        return Ok(());
    }
    progress(&format!("writing image {} to {}", spec.reference, archive.display()));
    let digests = oci::write_archive(spec, archive)?;
    let stamp = ImageStamp { reference: spec.reference.clone(), inputs_sha256, manifest_digest: digests.manifest };
    let json = serde_json::to_vec_pretty(&stamp).expect("the stamp serializes to JSON");
    write_atomically(STEP, &stamp_path, &json)
}

fn stamp_path(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    archive.with_file_name(name)
}

/// The sandbox image: the static pause binary alone.
fn pause_image(pause: &Path) -> ImageSpec {
    let mut spec = ImageSpec::new(images::PAUSE);
    spec.entrypoint = vec!["/pause".to_string()];
    spec.files = vec![LayerFile::local("/pause", 0o755, pause)];
    spec
}

/// Busybox's httpd runs `/cgi-bin/index.cgi` for `/` when there is no index.html;
/// answering with the hostname, which is the pod's name, lets a test tell which pod
/// behind a Service or NodePort served a request.
const WEB_INDEX_CGI: &str = "#!/bin/sh\n\
# Answers with the name of the pod that served the request.\n\
printf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
/bin/hostname\n";

/// The web image: Debian's static busybox with a link for each applet (so `sh`,
/// `wget` and `nslookup` work inside the pod for checks) and httpd serving
/// `/www` on `images::WEB_PORT`.
fn web_image(busybox: &Path, applets: &[String]) -> ImageSpec {
    let mut spec = ImageSpec::new(images::WEB);
    let port = images::WEB_PORT.to_string();
    spec.entrypoint = ["/bin/busybox", "httpd", "-f", "-v", "-p", &port, "-h", "/www"].map(String::from).to_vec();
    spec.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    spec.exposed_ports = vec![format!("{}/tcp", images::WEB_PORT)];
    spec.files = vec![
        LayerFile::local("/bin/busybox", 0o755, busybox),
        LayerFile::bytes("/www/cgi-bin/index.cgi", 0o755, WEB_INDEX_CGI),
    ];
    spec.files.extend(
        applets
            .iter()
            .filter(|applet| applet.as_str() != "bin/busybox")
            .map(|applet| LayerFile::symlink(format!("/{applet}"), "/bin/busybox")),
    );
    spec
}

/// The lab's DNS server image: the binary and the shared libraries it loads, each at
/// the path the dynamic loader looks it up at, and nothing else.
fn lab_dns_image(binary: &Path, libraries: &[PathBuf]) -> ImageSpec {
    let mut spec = ImageSpec::new(images::LAB_DNS);
    spec.entrypoint = vec!["/lab-dns".to_string()];
    spec.files = vec![LayerFile::local("/lab-dns", 0o755, binary)];
    spec.files.extend(
        libraries.iter().map(|library| LayerFile::local(library.to_string_lossy().into_owned(), 0o755, library)),
    );
    spec
}

/// Debian packages of the dnsutils image: the DNS tools of BIND (`nslookup`, `dig`,
/// `host`), which resolve through the C library's rules for the search path and
/// `ndots` as every application in a pod does, and a static busybox for `sh` and
/// `sleep`. busybox's own `nslookup` applies the search path to dotless names only,
/// so it cannot show what `kubernetes.default` resolves to for a pod.
const DNSUTILS_PACKAGES: &str = "bind9-dnsutils,busybox-static";

/// The dnsutils image, as the Kubernetes documentation's DNS debugging page uses one:
/// a pod that sleeps, for `kubectl exec dnsutils -- nslookup kubernetes.default`.
/// Its files are the extracted packages as they are; busybox gives only the three
/// applets the pod itself needs, so that no applet hides a BIND tool of the same name.
fn dnsutils_image(root: &Path) -> Result<ImageSpec> {
    let mut spec = ImageSpec::new(images::DNSUTILS);
    spec.entrypoint = ["/bin/busybox", "sleep", "infinity"].map(String::from).to_vec();
    spec.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    spec.files = oci::tree_files(root).map_err(io_error("reading the dnsutils root", root))?;
    for applet in ["sh", "sleep", "cat"] {
        let path = format!("/bin/{applet}");
        if !spec.files.iter().any(|file| file.path == path) {
            spec.files.push(LayerFile::symlink(path, "/bin/busybox"));
        }
    }
    Ok(spec)
}

/// The dnsutils image's root: `DNSUTILS_PACKAGES` and their dependencies extracted
/// (not installed: no maintainer scripts run, none are needed to run the tools) by
/// mmdebstrap from Debian's mirror into `CACHE/dnsutils/rootfs`, once. The `complete`
/// marker is written last, so an interrupted extraction is done again.
fn ensure_dnsutils_root(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "extracting the dnsutils image's packages";
    let dir = cache_dir.join("dnsutils");
    let root = dir.join("rootfs");
    let marker = dir.join("complete");
    if marker.is_file() && root.is_dir() {
        return Ok(root);
    }
    let mmdebstrap = require(STEP, MMDEBSTRAP)?;
    let partial = dir.join("rootfs.partial");
    remove_dir_if_present(STEP, &partial)?;
    remove_dir_if_present(STEP, &root)?;
    create_dir(STEP, &dir)?;
    progress(&format!(
        "extracting {DNSUTILS_PACKAGES} from {} into {} (about 15 s)",
        crate::machines::image::DEFAULT_MIRROR,
        root.display()
    ));
    let mut command = Command::new(mmdebstrap);
    command.args(["--quiet", "--variant=extract", &format!("--include={DNSUTILS_PACKAGES}")]);
    for option in ["path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*"]
    {
        command.arg(format!("--dpkgopt={option}"));
    }
    command.arg(crate::machines::image::RELEASE).arg(&partial).arg(crate::machines::image::DEFAULT_MIRROR);
    run_captured(STEP, &mut command)?;
    rename(STEP, &partial, &root)?;
    write_atomically(STEP, &marker, format!("{DNSUTILS_PACKAGES} extracted by mmdebstrap\n").as_bytes())?;
    Ok(root)
}

/// Builds the workspace's `lab-dns` package in release mode and installs the binary,
/// stripped, at `lab_dns_binary`. Cargo decides what to rebuild, so when nothing
/// changed this costs about a second; the image archive is then reused because its
/// stamp records the digests of the binary and libraries it holds.
fn ensure_lab_dns_binary(workspace_dir: &Path, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "building the lab-dns server";
    // Under `cargo run` or `cargo test`, CARGO names the cargo of the toolchain that
    // built the lab; cargo holds no lock once it has started the program, so running it
    // again from here is safe.
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).or_else(|| find_on_path("cargo"));
    let cargo = cargo.ok_or(ArtifactError::NoCargo { step: STEP })?;
    let target_dir = lab_dns_target_dir(cache_dir);
    let destination = lab_dns_binary(cache_dir);
    let log = destination.with_file_name("build.log");
    create_dir(STEP, &target_dir)?;
    if !destination.is_file() {
        progress(&format!(
            "building the lab-dns server from {} with cargo (about 4 minutes on 2 cores the first time; log: {})",
            workspace_dir.join("dns").display(),
            log.display()
        ));
    }
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_dir)
        .args(["build", "--release", "--locked", "--package", "lab-dns", "--target-dir"])
        .arg(&target_dir);
    let started = Instant::now();
    run_logged(STEP, &mut command, &log, "building lab-dns", progress)?;
    let compiled = fs::read_to_string(&log)
        .map_err(io_error(STEP, &log))?
        .lines()
        .any(|line| line.trim_start().starts_with("Compiling "));
    install_stripped(STEP, &target_dir.join("release").join("lab-dns"), &destination)?;
    if compiled {
        progress(&format!(
            "built the lab-dns server in {}: {}",
            format_elapsed(started.elapsed()),
            destination.display()
        ));
    } else {
        progress(&format!("using cached lab-dns server {} (cargo found it up to date)", destination.display()));
    }
    Ok(destination)
}

/// Copies `from` to `to` without its symbols when `strip` is installed (the lab-dns
/// binary shrinks from 14 to 11 MB), as it is otherwise.
fn install_stripped(step: &'static str, from: &Path, to: &Path) -> Result<()> {
    let Some(strip) = find_on_path(STRIP.command) else { return install_file(step, from, to, 0o755) };
    let partial = partial_path(to);
    run_captured(step, Command::new(strip).arg("-o").arg(&partial).arg(from))?;
    set_mode(step, &partial, 0o755)?;
    rename(step, &partial, to)
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this host, the
/// dynamic loader included; none for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    const STEP: &str = "finding the lab-dns server's shared libraries";
    let ldd = require(STEP, LDD)?;
    let listing = match run_captured(STEP, Command::new(ldd).arg(binary)) {
        Err(ArtifactError::CommandFailed { output, .. }) if output.contains("not a dynamic executable") => {
            return Ok(Vec::new())
        }
        other => other?,
    };
    parse_ldd(&listing).map_err(|library| ArtifactError::Missing {
        what: format!("the shared library {library}"),
        path: binary.to_path_buf(),
        hint: "ldd finds no file for it on this host".to_string(),
    })
}

/// The absolute library paths in `ldd` output, e.g. from
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`. The kernel's vDSO has no file and is left
/// out. A library ldd could not find is the error.
fn parse_ldd(listing: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in listing.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (name, resolved) = match line.split_once(" => ") {
            Some((name, resolved)) => (name, resolved),
            None => (line, line),
        };
        if resolved.starts_with("not found") {
            return Err(name.to_string());
        }
        let path = resolved.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Debian's static busybox, downloaded once with `apt-get download` and unpacked
/// with `dpkg-deb` (nothing is installed on the host).
fn ensure_busybox(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "fetching busybox-static for the web image";
    let dir = cache_dir.join("busybox");
    let busybox = dir.join("busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    require(STEP, APT_GET)?;
    require(STEP, DPKG_DEB)?;
    let staging = dir.join(".download");
    remove_dir_if_present(STEP, &staging)?;
    create_dir(STEP, &staging)?;
    progress(&format!("downloading Debian's busybox-static package into {}", dir.display()));
    run_captured(STEP, Command::new(APT_GET.command).args(["download", "busybox-static"]).current_dir(&staging))?;
    let deb = fs::read_dir(&staging)
        .map_err(io_error(STEP, &staging))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .ok_or_else(|| ArtifactError::Missing {
            what: "the downloaded busybox-static package".to_string(),
            path: staging.clone(),
            hint: "apt-get download busybox-static wrote no .deb file".to_string(),
        })?;
    let root = staging.join("root");
    run_captured(STEP, Command::new(DPKG_DEB.command).arg("-x").arg(&deb).arg(&root))?;
    install_file(STEP, &root.join("bin/busybox"), &busybox, 0o755)?;
    let package = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    write_atomically(STEP, &dir.join("SOURCE"), format!("{package}\n").as_bytes())?;
    remove_dir_if_present(STEP, &staging)?;
    Ok(busybox)
}

/// The applet paths busybox installs links for, e.g. `bin/sh`, `usr/bin/wget`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let listing = run_captured("listing busybox applets", Command::new(busybox).arg("--list-full"))?;
    let mut applets: Vec<String> =
        listing.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

// ---------------------------------------------------------------------------------
// Commands, files and the cache lock
// ---------------------------------------------------------------------------------

/// An exclusive lock on the cache directory for the whole of `ensure`, so that two lab
/// processes never build into the same directories at once. The kernel releases it
/// when the file is closed, also when the process dies.
struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    fn acquire(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<Self> {
        const STEP: &str = "locking the artifacts cache";
        create_dir(STEP, cache_dir)?;
        let path = cache_dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(STEP, &path))?;
        let lock = |operation| {
            // SAFETY: flock only reads the descriptor, which `file` keeps open.
            let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
            if result == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        if lock(libc::LOCK_EX | libc::LOCK_NB).is_err() {
            progress(&format!(
                "waiting for another lab process that is preparing artifacts in {}",
                cache_dir.display()
            ));
            lock(libc::LOCK_EX).map_err(io_error(STEP, &path))?;
        }
        Ok(CacheLock { _file: file })
    }
}

fn find_on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|candidate| {
        fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

fn require(step: &'static str, tool: Tool) -> Result<PathBuf> {
    find_on_path(tool.command).ok_or_else(|| ArtifactError::MissingTool {
        step,
        what: format!("the command `{}`", tool.command),
        package: tool.package,
    })
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `count` non-empty lines of `text`, indented, after a newline.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    tail.iter().map(|line| format!("\n  {line}")).collect()
}

/// Runs a short command to completion; returns its stdout, or an error carrying the
/// last lines of its output.
fn run_captured(step: &'static str, command: &mut Command) -> Result<String> {
    let output = command.stdin(Stdio::null()).output().map_err(|source| ArtifactError::Spawn {
        step,
        command: describe(command),
        source,
    })?;
    if !output.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        return Err(ArtifactError::CommandFailed {
            step,
            command: describe(command),
            status: output.status.to_string(),
            output: last_lines(&text, 15),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a long command with its output going to `log`, reporting every 15 s how
/// long it has run and the last line it logged.
fn run_logged(
    step: &'static str,
    command: &mut Command,
    log: &Path,
    label: &str,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let file = fs::File::create(log).map_err(io_error(step, log))?;
    let stderr = file.try_clone().map_err(io_error(step, log))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .map_err(|source| ArtifactError::Spawn { step, command: describe(command), source })?;
    let started = Instant::now();
    let mut last_report = started;
    let status = loop {
        let waited =
            child.try_wait().map_err(|source| ArtifactError::Spawn { step, command: describe(command), source })?;
        if let Some(status) = waited {
            break status;
        }
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            last_report = Instant::now();
            let line = last_log_line(log).unwrap_or_else(|| "(nothing logged yet)".to_string());
            progress(&format!("{label}: {} elapsed; {line}", format_elapsed(started.elapsed())));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        let tail = fs::read_to_string(log).map(|text| last_lines(&text, 15)).unwrap_or_default();
        return Err(ArtifactError::CommandFailed {
            step,
            command: describe(command),
            status: status.to_string(),
            output: format!("; the whole log is {}{tail}", log.display()),
        });
    }
    Ok(())
}

/// The last non-empty line of a log file, shortened for a progress line.
fn last_log_line(log: &Path) -> Option<String> {
    let mut file = fs::File::open(log).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|line| !line.is_empty())?;
    let mut short: String = line.chars().take(120).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    Some(short)
}

/// `95 s` -> `1m35s`.
fn format_elapsed(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

fn io_error(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { step, path, source }
}

fn create_dir(step: &'static str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_error(step, dir))
}

fn remove_dir_if_present(step: &'static str, dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(step, dir)(error)),
        _ => Ok(()),
    }
}

fn rename(step: &'static str, from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(io_error(step, to))
}

fn set_mode(step: &'static str, path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(step, path))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Copies `from` to `to` through a temporary file renamed into place.
fn install_file(step: &'static str, from: &Path, to: &Path, mode: u32) -> Result<()> {
    let partial = partial_path(to);
    fs::copy(from, &partial).map_err(io_error(step, from))?;
    set_mode(step, &partial, mode)?;
    rename(step, &partial, to)
}

fn write_atomically(step: &'static str, path: &Path, content: &[u8]) -> Result<()> {
    let partial = partial_path(path);
    fs::write(&partial, content).map_err(io_error(step, &partial))?;
    rename(step, &partial, path)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::{BufRead as _, BufReader};
    use std::net::TcpListener;

    use super::*;

    fn topology() -> Topology {
        Topology::parse(include_str!("../../../lab.toml"), Path::new("lab.toml")).unwrap().topology
    }

    /// Collects progress lines for assertions.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl Recorder {
        fn record(&self, line: &str) {
            self.0.borrow_mut().push(line.to_string());
        }

        fn lines(self) -> Vec<String> {
            self.0.into_inner()
        }
    }

    #[test]
    fn debian_source_needs_go_and_the_build_helpers() {
        let mut topology = topology();
        assert_eq!(required_packages(&topology), ["dpkg-dev", "gcc", "golang-go", "jq", "libc6-dev", "make", "rsync"]);
        topology.kubernetes.source = ArtifactSource::Release;
        assert_eq!(required_packages(&topology), ["dpkg-dev", "gcc", "libc6-dev"]);
    }

    #[test]
    fn debian_source_refuses_other_versions_before_any_work() {
        let cache = tempfile::tempdir().unwrap();
        let mut topology = topology();
        topology.kubernetes.version = "1.29.0".to_string();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let error =
            ensure(&topology, cache.path(), workspace, &|line| panic!("no progress expected: {line}")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("kubernetes.version = \"1.29.0\""), "{message}");
        assert!(message.contains("Kubernetes 1.20.2"), "{message}");
        assert!(message.contains("source = \"release\""), "{message}");
        assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 0, "nothing was written");
    }

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
    fn the_manifest_binaries_live_in_the_kubernetes_dir() {
        let cache = Path::new("/cache");
        let topology = topology();
        let artifacts = Artifacts::expected(&topology, cache);
        let bin = kubernetes_dir(&topology, cache).join("bin");
        for path in artifacts.binaries.values() {
            assert_eq!(path.parent(), Some(bin.as_path()));
        }
        assert_eq!(pause_binary(&topology, cache), bin.join("pause"));
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

    #[test]
    fn checksum_files_hold_a_bare_or_named_digest() {
        let sha256 = "a".repeat(64);
        assert_eq!(parse_checksum("u", "sha256", &sha256).unwrap(), Checksum::Sha256(sha256.clone()));
        assert_eq!(
            parse_checksum("u", "sha256", &format!("{}  kubelet\n", sha256.to_uppercase())).unwrap(),
            Checksum::Sha256(sha256)
        );
        assert_eq!(parse_checksum("u", "sha512", &"0".repeat(128)).unwrap(), Checksum::Sha512("0".repeat(128)));
        let error = parse_checksum("u.sha256", "sha256", "<html>not found</html>").unwrap_err().to_string();
        assert!(error.contains("u.sha256 does not hold a sha256 checksum"), "{error}");
    }

    /// A loopback HTTP server answering each path from `routes` (404 otherwise), for
    /// as many requests as the test makes.
    fn serve(routes: Vec<(&'static str, Vec<u8>)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut request_line).unwrap();
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|read| read > 2) {
                    header.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                let response = match routes.iter().find(|(route, _)| *route == path) {
                    Some((_, body)) => [
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .into_bytes(),
                        body.clone(),
                    ]
                    .concat(),
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = stream.write_all(&response);
            }
        });
        format!("http://{address}")
    }

    #[test]
    fn downloads_are_verified_against_the_published_checksum() {
        let binary = b"\x7fELF kubelet".to_vec();
        let good_sha256 = hex::encode(Sha256::digest(&binary));
        let good_sha512 = hex::encode(Sha512::digest(&binary));
        let base = serve(vec![
            ("/release/v1.20.2/bin/linux/amd64/kubelet", binary.clone()),
            ("/release/v1.20.2/bin/linux/amd64/kubelet.sha256", format!("{good_sha256}  kubelet\n").into_bytes()),
            ("/release/v1.20.2/bin/linux/amd64/kubectl", binary.clone()),
            ("/release/v1.20.2/bin/linux/amd64/kubectl.sha512", good_sha512.into_bytes()),
            ("/release/v1.20.2/bin/linux/amd64/kube-proxy", binary.clone()),
            ("/release/v1.20.2/bin/linux/amd64/kube-proxy.sha256", "b".repeat(64).into_bytes()),
        ]);
        let agent = http_agent();
        let dir = tempfile::tempdir().unwrap();

        let kubelet = dir.path().join("kubelet");
        download_verified(&agent, &release_url(&base, "1.20.2", "kubelet"), &kubelet).unwrap();
        assert_eq!(fs::read(&kubelet).unwrap(), binary);
        assert_eq!(fs::metadata(&kubelet).unwrap().permissions().mode() & 0o777, 0o755);

        let kubectl = dir.path().join("kubectl");
        download_verified(&agent, &release_url(&base, "1.20.2", "kubectl"), &kubectl).unwrap();
        assert_eq!(fs::read(&kubectl).unwrap(), binary, "verified with the sha512 file when there is no sha256 file");

        let proxy = dir.path().join("kube-proxy");
        let error = download_verified(&agent, &release_url(&base, "1.20.2", "kube-proxy"), &proxy).unwrap_err();
        assert!(matches!(error, ArtifactError::ChecksumMismatch { algorithm: "sha256", .. }), "{error}");
        assert!(!proxy.exists() && !partial_path(&proxy).exists(), "a mismatching download is not kept");

        let error = download_verified(&agent, &release_url(&base, "9.9.9", "kubelet"), &kubelet).unwrap_err();
        assert!(error.to_string().contains("answered HTTP 404"), "{error}");
    }

    #[test]
    fn an_unreachable_server_says_the_host_is_offline() {
        // A port nobody listens on: bind one, note it, close it.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = release_url(&format!("http://127.0.0.1:{port}"), "1.20.2", "kubelet");
        let dir = tempfile::tempdir().unwrap();
        let error = download_verified(&http_agent(), &url, &dir.path().join("kubelet")).unwrap_err().to_string();
        assert!(error.starts_with(&format!("cannot download {url}.sha256: ")), "{error}");
        assert!(error.ends_with("(this host has no internet access; use source = \"debian-source\")"), "{error}");
    }

    #[test]
    fn the_web_image_serves_its_hostname_through_busybox() {
        let applets = vec!["bin/sh".to_string(), "bin/hostname".to_string(), "usr/bin/wget".to_string()];
        let spec = web_image(Path::new("/cache/busybox/busybox"), &applets);
        assert_eq!(spec.reference, images::WEB);
        assert_eq!(spec.entrypoint, ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]);
        assert_eq!(spec.exposed_ports, ["8080/tcp"]);
        let file = |path: &str| spec.files.iter().find(|file| file.path == path).unwrap().source.clone();
        assert_eq!(file("/bin/busybox"), oci::FileSource::Local(PathBuf::from("/cache/busybox/busybox")));
        assert_eq!(file("/bin/sh"), oci::FileSource::Symlink("/bin/busybox".to_string()));
        assert_eq!(file("/usr/bin/wget"), oci::FileSource::Symlink("/bin/busybox".to_string()));
        let oci::FileSource::Bytes(cgi) = file("/www/cgi-bin/index.cgi") else { panic!("the CGI is inline") };
        let cgi = String::from_utf8(cgi).unwrap();
        assert!(cgi.starts_with("#!/bin/sh\n") && cgi.ends_with("/bin/hostname\n"), "{cgi}");
    }

    #[test]
    fn the_pause_image_runs_the_pause_binary() {
        let spec = pause_image(Path::new("/cache/pause"));
        assert_eq!(spec.reference, images::PAUSE);
        assert_eq!(spec.entrypoint, ["/pause"]);
        assert_eq!(spec.files, [LayerFile::local("/pause", 0o755, "/cache/pause")]);
    }

    #[test]
    fn the_lab_dns_image_holds_the_server_and_its_libraries_at_their_paths() {
        let cache = Path::new("/cache");
        assert_eq!(lab_dns_binary(cache), Path::new("/cache/lab-dns/lab-dns"));
        assert_eq!(lab_dns_target_dir(cache), Path::new("/cache/lab-dns/target"));
        let libraries =
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")];
        let spec = lab_dns_image(&lab_dns_binary(cache), &libraries);
        assert_eq!(spec.reference, images::LAB_DNS);
        assert_eq!(spec.entrypoint, ["/lab-dns"]);
        assert_eq!(
            spec.files,
            [
                LayerFile::local("/lab-dns", 0o755, "/cache/lab-dns/lab-dns"),
                LayerFile::local("/lib/x86_64-linux-gnu/libc.so.6", 0o755, "/lib/x86_64-linux-gnu/libc.so.6"),
                LayerFile::local("/lib64/ld-linux-x86-64.so.2", 0o755, "/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_dnsutils_image_holds_the_extracted_tree_and_sleeps() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        fs::create_dir_all(root.path().join("bin")).unwrap();
        fs::write(root.path().join("usr/bin/nslookup"), b"elf").unwrap();
        fs::set_permissions(root.path().join("usr/bin/nslookup"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.path().join("bin/busybox"), b"elf").unwrap();
        std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
        let spec = dnsutils_image(root.path()).unwrap();
        assert_eq!(spec.reference, images::DNSUTILS);
        assert_eq!(spec.entrypoint, ["/bin/busybox", "sleep", "infinity"]);
        let paths: Vec<(&str, u32)> = spec.files.iter().map(|file| (file.path.as_str(), file.mode)).collect();
        assert_eq!(
            paths,
            [
                ("/bin/busybox", 0o644),
                ("/bin/sh", 0o777),
                ("/usr/bin/nslookup", 0o755),
                ("/bin/sleep", 0o777),
                ("/bin/cat", 0o777)
            ]
        );
        let sh = spec.files.iter().find(|file| file.path == "/bin/sh").unwrap();
        assert_eq!(sh.source, oci::FileSource::Symlink("busybox".to_string()), "links are kept as they are");
    }

    #[test]
    fn ldd_output_names_each_library_but_the_vdso() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd5a9d2000)\n\
                       \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f03296b2000)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f032893e000)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f03296e5000)\n";
        assert_eq!(
            parse_ldd(listing).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tlibssl.so.3 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            Err("libssl.so.3".into())
        );
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(Vec::new()));
    }

    #[test]
    fn a_dynamic_binary_needs_libc_and_the_loader() {
        // This test's own executable links against glibc as the lab-dns server does.
        let libraries = shared_libraries(&std::env::current_exe().unwrap()).unwrap();
        let names: Vec<String> =
            libraries.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|name| name == "libc.so.6"), "{libraries:?}");
        assert!(names.iter().any(|name| name.starts_with("ld-linux")), "{libraries:?}");
        assert!(libraries.iter().all(|path| path.is_absolute() && path.is_file()), "{libraries:?}");
    }

    #[test]
    fn archives_are_rewritten_only_when_their_inputs_change() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("images/sample-1.tar");
        let mut spec = ImageSpec::new("k8s-lab.local/sample:1");
        spec.files = vec![LayerFile::bytes("/hello", 0o644, "one")];
        let recorder = Recorder::default();
        let progress = |line: &str| recorder.record(line);

        ensure_archive(&spec, &archive, &progress).unwrap();
        let stamp: ImageStamp = serde_json::from_slice(&fs::read(stamp_path(&archive)).unwrap()).unwrap();
        assert_eq!(stamp.reference, spec.reference);
        assert_eq!(stamp.inputs_sha256, oci::inputs_digest(&spec).unwrap());

        fs::write(&archive, b"left alone").unwrap();
        ensure_archive(&spec, &archive, &progress).unwrap();
        assert_eq!(fs::read(&archive).unwrap(), b"left alone", "unchanged inputs do not rewrite the archive");

        spec.files = vec![LayerFile::bytes("/hello", 0o644, "two")];
        ensure_archive(&spec, &archive, &progress).unwrap();
        assert_ne!(fs::read(&archive).unwrap(), b"left alone", "changed inputs rewrite it");
        let lines = recorder.lines();
        assert!(lines[0].starts_with("writing image k8s-lab.local/sample:1"), "{lines:?}");
        assert!(lines[1].starts_with("using cached image k8s-lab.local/sample:1"), "{lines:?}");
        assert!(lines[2].starts_with("writing image"), "{lines:?}");
    }

    #[test]
    fn long_builds_report_time_and_the_last_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        fs::write(&log, "+++ Building go targets\n    cmd/kubelet\n\n").unwrap();
        assert_eq!(last_log_line(&log).as_deref(), Some("cmd/kubelet"));
        assert_eq!(format_elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(format_elapsed(Duration::from_secs(415)), "6m55s");

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo compiling; echo 'broken: no such package' >&2; exit 3"]);
        let error = run_logged("building", &mut failing, &log, "building", &|_| {}).unwrap_err().to_string();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains(&format!("the whole log is {}", log.display())), "{error}");
        assert!(error.contains("broken: no such package"), "{error}");
    }

    #[test]
    fn a_missing_command_names_its_package() {
        let error = require("building Kubernetes", Tool { command: "lab-no-such-command", package: "lab-pkg" })
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "building Kubernetes needs the command `lab-no-such-command`, which is not installed (apt-get install lab-pkg)"
        );
    }
}
