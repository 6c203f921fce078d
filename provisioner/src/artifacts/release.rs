//! The `release` source: the official Kubernetes binaries downloaded from
//! `RELEASE_BASE_URL`, each verified against its published checksum before it is
//! renamed into place.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};

use super::build::{ArtifactError, Result};
use super::cache::{create_dir, io_error, is_complete, kubernetes_dir, mark_complete, partial_path, rename, set_mode};
use super::kubernetes::{check_versions, ensure_pause, using_cached};
use super::KUBERNETES_BINARIES;
use crate::topology::Topology;

/// Where `release` binaries come from: `BASE/release/vVERSION/bin/linux/amd64/NAME`
/// with `NAME.sha256` (or `NAME.sha512`) beside each.
pub const RELEASE_BASE_URL: &str = "https://dl.k8s.io";

pub(super) fn release_binaries(
    topology: &Topology,
    cache_dir: &Path,
    base_url: &str,
    progress: &dyn Fn(&str),
) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

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
}
