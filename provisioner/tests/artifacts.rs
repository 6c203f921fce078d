//! `artifacts::build::ensure` against the real cache of this host
//! (`${XDG_CACHE_HOME:-$HOME/.cache}/k8s-lab`) with the default topology: the
//! binaries report the configured version, the image archives exist, a second run
//! only reuses the cache, the web image serves its hostname in a container and the
//! lab-dns server starts in its otherwise empty image.
//!
//! A cold cache means a Kubernetes build of about 6 minutes and a release build of
//! the lab-dns server of about 4, which a unit-test run must never start by surprise:
//! these tests skip, saying so, unless the cache is warm or `LAB_BUILD_ARTIFACTS=1`
//! asks for the builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use provisioner::artifacts::build;
use provisioner::artifacts::images::{self, WEB_PORT};
use provisioner::artifacts::Artifacts;
use provisioner::topology::{DnsAddon, Topology};

/// Both tests use the one real cache; `ensure` locks it across processes, this
/// keeps the two tests of this binary from interleaving their progress output.
static CACHE: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    base.join("k8s-lab")
}

fn default_topology() -> Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lab.toml");
    Topology::load(&path).expect("the default lab.toml is valid").topology
}

/// The workspace whose dns/ crate `ensure` builds.
fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("provisioner/ has a parent")
}

/// Why this test must not run `ensure` here, if it must not.
fn cold_cache(topology: &Topology) -> Option<String> {
    let asked = std::env::var_os("LAB_BUILD_ARTIFACTS").is_some_and(|value| !value.is_empty() && value != "0");
    if asked {
        None
    } else if !build::kubernetes_cached(topology, &cache_dir()) {
        Some(format!(
            "the Kubernetes binaries are not in {} yet and building them takes about 6 minutes; \
             run with LAB_BUILD_ARTIFACTS=1 to build them",
            cache_dir().display()
        ))
    } else if topology.addons.dns == DnsAddon::LabDns && !build::lab_dns_binary(&cache_dir()).is_file() {
        Some(format!(
            "the lab-dns server is not in {} yet and its first release build takes about 4 minutes; \
             run with LAB_BUILD_ARTIFACTS=1 to build it",
            cache_dir().display()
        ))
    } else {
        None
    }
}

/// Runs `ensure`, echoing its progress, and returns the manifest and the lines.
fn ensure(topology: &Topology) -> (Artifacts, Vec<String>) {
    let lines = std::cell::RefCell::new(Vec::new());
    let artifacts = build::ensure(topology, &cache_dir(), workspace_dir(), &|line| {
        eprintln!("{line}");
        lines.borrow_mut().push(line.to_string());
    })
    .unwrap_or_else(|error| panic!("ensure failed: {error}"));
    (artifacts, lines.into_inner())
}

#[test]
fn ensure_builds_or_reuses_every_artifact() {
    let topology = default_topology();
    if let Some(reason) = cold_cache(&topology) {
        eprintln!("skipping ensure_builds_or_reuses_every_artifact: {reason}");
        return;
    }
    let _cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    let (artifacts, _) = ensure(&topology);

    for (name, path) in &artifacts.binaries {
        let args: &[&str] = if name == "kubectl" { &["version", "--client"] } else { &["--version"] };
        let output = Command::new(path).args(args).output().unwrap_or_else(|error| panic!("run {name}: {error}"));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && text.contains("v1.20.2"), "{name} does not report v1.20.2: {text}");
    }
    for image in &artifacts.images {
        assert!(image.path.is_file(), "no archive for {} at {}", image.reference, image.path.display());
    }

    let (_, second) = ensure(&topology);
    let bin = artifacts.binary("kubelet").parent().unwrap().display().to_string();
    assert_eq!(second[0], format!("using cached Kubernetes v1.20.2 binaries (debian-source) from {bin}"));
    let lab_dns = format!("using cached lab-dns server {} ", build::lab_dns_binary(&cache_dir()).display());
    assert!(second.iter().any(|line| line.starts_with(&lab_dns)), "cargo rebuilt lab-dns: {second:#?}");
    for reference in [images::PAUSE, images::WEB, images::LAB_DNS, images::DNSUTILS] {
        assert!(
            second.iter().any(|line| line.starts_with(&format!("using cached image {reference} from "))),
            "{reference} was not reused: {second:#?}"
        );
    }
    let work: Vec<&String> = second.iter().filter(|line| !line.starts_with("using cached")).collect();
    assert!(work.is_empty(), "the second run did more than reuse the cache: {work:#?}");
}

#[test]
fn the_web_image_answers_with_its_hostname() {
    let topology = default_topology();
    if let Some(reason) = cold_cache(&topology) {
        eprintln!("skipping the_web_image_answers_with_its_hostname: {reason}");
        return;
    }
    if let Some(reason) = common::containerd_unavailable()
        .or_else(|| common::on_path("runc").is_none().then(|| "`runc` is not installed".to_string()))
    {
        eprintln!("skipping the_web_image_answers_with_its_hostname: {reason}");
        return;
    }
    let artifacts = {
        let _cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        ensure(&topology).0
    };
    let web = artifacts.images.iter().find(|image| image.reference == images::WEB).unwrap();

    let mut containerd = common::PrivateContainerd::start();
    containerd.ctr_ok("test", &["images", "import", web.path.to_str().unwrap()]);
    containerd.run_detached("test", images::WEB, "lab-web-test");
    // The container has its own network namespace; its httpd is reached from inside.
    let url = format!("http://127.0.0.1:{WEB_PORT}/");
    let exec = |id: &str, args: &[&str]| {
        let mut command = vec!["task", "exec", "--exec-id", id, "lab-web-test"];
        command.extend(args);
        containerd.ctr("test", &command)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let output = exec("fetch", &["/bin/busybox", "wget", "-q", "-O", "-", &url]);
        if output.status.success() {
            break String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the web container did not answer on {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let hostname = exec("hostname", &["/bin/hostname"]);
    assert!(hostname.status.success());
    assert_eq!(answer.trim(), String::from_utf8_lossy(&hostname.stdout).trim(), "the answer is the hostname");
}

#[test]
fn the_lab_dns_server_starts_in_its_image() {
    let topology = default_topology();
    if let Some(reason) = cold_cache(&topology) {
        eprintln!("skipping the_lab_dns_server_starts_in_its_image: {reason}");
        return;
    }
    if let Some(reason) = common::containerd_unavailable()
        .or_else(|| common::on_path("runc").is_none().then(|| "`runc` is not installed".to_string()))
    {
        eprintln!("skipping the_lab_dns_server_starts_in_its_image: {reason}");
        return;
    }
    let artifacts = {
        let _cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        ensure(&topology).0
    };
    let lab_dns = artifacts.images.iter().find(|image| image.reference == images::LAB_DNS).unwrap();

    let containerd = common::PrivateContainerd::start();
    containerd.ctr_ok("test", &["images", "import", lab_dns.path.to_str().unwrap()]);
    // `--help` only: the binary, its libraries and the loader must all be in the image
    // for it to print anything, and it talks to no network. The container gets its own
    // network namespace and, as in the pod, a read-only root.
    let help = containerd
        .ctr_ok("test", &["run", "--rm", "--read-only", images::LAB_DNS, "lab-dns-help", "/lab-dns", "--help"]);
    for flag in ["--domain", "--listen", "--probe-listen", "--reverse-cidr", "--ttl", "--upstream"] {
        assert!(help.contains(flag), "lab-dns --help in its image does not mention {flag}:\n{help}");
    }
}

/// `source = "dir"` with the cached binaries as the directory and an empty cache:
/// the binaries are used in place, and the cold paths that fetch Debian's source
/// package (for pause) and busybox run for real. It downloads about 35 MB from the
/// Debian archive, so it runs only when `LAB_BUILD_ARTIFACTS=1` asks for builds.
#[test]
fn dir_source_uses_the_binaries_in_place_and_fills_an_empty_cache() {
    let debian = default_topology();
    if std::env::var_os("LAB_BUILD_ARTIFACTS").is_none() || !build::kubernetes_cached(&debian, &cache_dir()) {
        eprintln!(
            "skipping dir_source_uses_the_binaries_in_place_and_fills_an_empty_cache: it needs the cached \
             debian-source binaries and LAB_BUILD_ARTIFACTS=1 (it downloads Debian's kubernetes source package)"
        );
        return;
    }
    let binaries = build::kubernetes_dir(&debian, &cache_dir()).join("bin");
    let mut topology = debian.clone();
    topology.kubernetes.source = provisioner::topology::ArtifactSource::Dir;
    topology.kubernetes.dir = Some(binaries.clone());
    // The lab-dns build is the other tests' subject; in an empty cache it would be a
    // second full release build of about 4 minutes.
    topology.addons.dns = DnsAddon::Coredns;
    let empty_cache = tempfile::tempdir().unwrap();

    let lines = std::cell::RefCell::new(Vec::new());
    let artifacts = build::ensure(&topology, empty_cache.path(), workspace_dir(), &|line| {
        eprintln!("{line}");
        lines.borrow_mut().push(line.to_string());
    })
    .unwrap_or_else(|error| panic!("ensure failed: {error}"));
    assert_eq!(artifacts.binary("kubelet"), binaries.join("kubelet"));
    let lines = lines.into_inner();
    assert!(
        lines[0].starts_with(&format!("using Kubernetes v1.20.2 binaries from {}", binaries.display())),
        "{lines:#?}"
    );
    assert!(build::pause_binary(&topology, empty_cache.path()).is_file());
    for image in artifacts.images.iter().filter(|image| image.reference != images::LAB_DNS) {
        assert!(image.path.is_file(), "no archive for {}", image.reference);
    }
    assert!(!build::lab_dns_binary(empty_cache.path()).exists(), "CoreDNS needs no lab-dns build");
}
