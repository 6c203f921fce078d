//! The layout of the artifacts cache, the lock that keeps two lab processes from
//! building into it at once, and the file operations every build step uses: each
//! writes through a `.partial` file renamed into place, so a file that exists is
//! whole.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::build::{ArtifactError, Result};
use super::kubernetes::debian_source_build_variant;
use super::KUBERNETES_BINARIES;
use crate::system;
use crate::topology::{ArtifactSource, Topology};

/// `cache_dir/kubernetes/SOURCE-vVERSION`: for `debian-source` and `release`, the
/// `bin/` below it is the manifest's binary directory; for `dir` it holds only pause.
/// The name of a `debian-source` build also says the build tags it was built with
/// (`debian-source-v1.20.2-selinux-notest-dockerless`), so that binaries an older lab
/// built with other tags are built again rather than taken for these.
pub fn kubernetes_dir(topology: &Topology, cache_dir: &Path) -> PathBuf {
    let kubernetes = &topology.kubernetes;
    let build_variant = match kubernetes.source {
        ArtifactSource::DebianSource => debian_source_build_variant(),
        ArtifactSource::Release | ArtifactSource::Dir => String::new(),
    };
    cache_dir.join("kubernetes").join(format!("{}-v{}{build_variant}", kubernetes.source, kubernetes.version))
}

/// The static pause binary the pause image is made of.
pub fn pause_binary(topology: &Topology, cache_dir: &Path) -> PathBuf {
    kubernetes_dir(topology, cache_dir).join("bin").join("pause")
}

/// Go's build cache for the Kubernetes build: kept in the lab's cache rather than the
/// user's, so that a rebuild (a removed `kubernetes/` directory, a fresh source tree)
/// compiles nothing again, and a cache copied to another machine carries it. The build
/// uses `-trimpath`, so its entries do not depend on where the source tree lies.
pub fn go_build_cache(cache_dir: &Path) -> PathBuf {
    cache_dir.join("go-build")
}

/// The lab's DNS server binary its image is made of, built and stripped by `ensure`.
pub fn lab_dns_binary(cache_dir: &Path) -> PathBuf {
    cache_dir.join("lab-dns").join("lab-dns")
}

/// A build or download is finished only once its marker exists; the marker is
/// written after every binary and the checksum list.
pub(super) fn is_complete(dir: &Path) -> bool {
    let bin = dir.join("bin");
    dir.join("complete").is_file()
        && KUBERNETES_BINARIES.iter().chain(["pause"].iter()).all(|name| bin.join(name).is_file())
}

/// Writes `SHA256SUMS` of everything in `dir/bin`, then the `complete` marker.
pub(super) fn mark_complete(dir: &Path) -> Result<()> {
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

/// An exclusive lock on the cache directory for the whole of `ensure`, so that two lab
/// processes never build into the same directories at once. The kernel releases it
/// when the file is closed, also when the process dies.
pub(super) struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    pub(super) fn acquire(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<Self> {
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

pub(super) fn io_error(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { step, path, source }
}

pub(super) fn create_dir(step: &'static str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_error(step, dir))
}

pub(super) fn remove_dir_if_present(step: &'static str, dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(step, dir)(error)),
        _ => Ok(()),
    }
}

/// An empty directory at `dir`, whatever an earlier, interrupted run left there.
pub(super) fn empty_dir(step: &'static str, dir: &Path) -> Result<()> {
    remove_dir_if_present(step, dir)?;
    create_dir(step, dir)
}

pub(super) fn rename(step: &'static str, from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(io_error(step, to))
}

pub(super) fn set_mode(step: &'static str, path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(step, path))
}

/// Where a file is written before it is renamed to `path`.
pub(super) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Copies `from` to `to` through a temporary file renamed into place.
pub(super) fn install_file(step: &'static str, from: &Path, to: &Path, mode: u32) -> Result<()> {
    let partial = partial_path(to);
    fs::copy(from, &partial).map_err(io_error(step, from))?;
    set_mode(step, &partial, mode)?;
    rename(step, &partial, to)
}

/// Writes a small text file of the cache (a marker, a stamp, a checksum list) whole
/// or not at all.
pub(super) fn write_atomically(step: &'static str, path: &Path, content: &[u8]) -> Result<()> {
    system::write_atomically(path, content, 0o644).map_err(io_error(step, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::test_support::topology;
    use crate::artifacts::Artifacts;

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
}
