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
//! - `go-build/` is Go's build cache for the Kubernetes build;
//! - `busybox/` holds the static busybox the web image is made of;
//! - `lab-dns/` holds the lab's DNS server, built from the workspace's `dns/` crate in
//!   the workspace's own target directory: `lab-dns` the stripped binary its image is
//!   made of, `build.log` cargo's output;
//! - `images/NAME.tar` are OCI archives for `ctr images import`, each with a
//!   `NAME.tar.json` stamp of its inputs' digest: an archive is rewritten only when
//!   what it is made from changes.
//!
//! The Kubernetes binaries come from one of three sources (`kubernetes.source`):
//! `debian-source` builds v1.20.2 offline from Debian 12's source package with
//! Debian's Go (about 6 minutes on 2 cores; under a minute again with `go-build/`,
//! Go's build cache, warm), `release` downloads the official binaries and verifies
//! their published checksums, `dir` takes prebuilt binaries from a local directory
//! as they are.
//!
//! The work is split by what it makes: `kubernetes` and `release` for the binaries,
//! `image_archives` for the images, `cache` for the layout and its lock, `commands`
//! for the host programs the steps run. This module is their entry point.

use std::io;
use std::path::{Path, PathBuf};

use super::cache::{is_complete, CacheLock};
pub use super::cache::{kubernetes_dir, lab_dns_binary, pause_binary};
use super::commands::{DPKG_SOURCE, GCC, GO};
use super::image_archives::ensure_images;
use super::kubernetes::{debian_source_binaries, directory_binaries, DEBIAN_SOURCE_VERSION};
use super::oci::OciError;
use super::release::{release_binaries, RELEASE_BASE_URL};
use super::Artifacts;
use crate::system::CommandFailure;
use crate::topology::{ArtifactSource, Topology};

/// Where `lab doctor` and `lab up` write the deb-src entry that lets `apt-get source
/// kubernetes` work on a Debian 12 host whose apt sources have none (the entry
/// names the host's own Debian mirror).
pub const DEB_SRC_LIST_PATH: &str = "/etc/apt/sources.list.d/k8s-lab-debian-src.sources";

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
        "{step}: the lab-dns server is built from the lab's source checkout, and {} is gone; run the lab from \
         its checkout (`cargo lab up`), or reinstall it from one", .dns_dir.display()
    )]
    NoDnsSource { step: &'static str, dns_dir: PathBuf },
    #[error(
        "{step}: apt-get source found no deb-src entry for Debian 12; `cargo lab doctor` writes one for the \
         host's Debian mirror to {DEB_SRC_LIST_PATH} and runs apt-get update"
    )]
    NoDebSrc { step: &'static str },
    /// A program the build runs failed, or could not be started.
    #[error("{step}: {failure}")]
    Command { step: &'static str, failure: CommandFailure },
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

pub(super) type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// The Debian packages `ensure` needs on the host for `topology`, for the doctor to
/// install: a C compiler and static libc for the pause binary and dpkg-dev to unpack
/// Kubernetes' source for every source, and Go for `debian-source`. (The web image's
/// busybox is downloaded with `apt-get download`, not installed.)
pub fn required_packages(topology: &Topology) -> Vec<&'static str> {
    let mut packages = vec![DPKG_SOURCE.package, GCC.package, "libc6-dev"];
    if topology.kubernetes.source == ArtifactSource::DebianSource {
        packages.push(GO.package);
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::artifacts::test_support::topology;

    #[test]
    fn debian_source_needs_go() {
        let mut topology = topology();
        assert_eq!(required_packages(&topology), ["dpkg-dev", "gcc", "golang-go", "libc6-dev"]);
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
}
