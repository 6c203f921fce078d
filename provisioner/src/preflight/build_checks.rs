//! What `lab up` needs from the host to build its artifacts: the Debian packages of
//! the offline Kubernetes build, a deb-src entry for `apt-get source kubernetes`,
//! and cargo for the lab-dns server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::apt_sources;
use super::install::{deb_src_command, install_command};
use super::{Finding, Status};
use crate::artifacts::build;
use crate::topology::{DnsAddon, Topology};

/// The name of the finding about `apt-get source kubernetes`.
pub const DEB_SRC_CHECK: &str = "deb-src for bookworm";

/// A Debian package that `build::ensure` needs on the host for one topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BuildPackage {
    name: &'static str,
    /// Needed only to build the Kubernetes binaries and pause, which a filled
    /// cache already holds.
    for_kubernetes: bool,
    /// The build works without it, with a larger result.
    optional: bool,
}

/// Every package whose programs `build::ensure` runs for `topology`, in the order
/// the build uses them: `build::required_packages` (the Kubernetes and pause
/// build), apt and dpkg for `apt-get source`, `apt-get download busybox-static`
/// and `dpkg-deb`, and with the lab-dns server, libc-bin for `ldd` and binutils for
/// `strip`. The busybox-static package itself is downloaded, never installed.
fn build_packages(topology: &Topology) -> Vec<BuildPackage> {
    let package = |name, for_kubernetes, optional| BuildPackage { name, for_kubernetes, optional };
    let mut packages = vec![package("apt", false, false), package("dpkg", false, false)];
    packages.extend(build::required_packages(topology).into_iter().map(|name| package(name, true, false)));
    if topology.addons.dns == DnsAddon::LabDns {
        packages.extend([package("libc-bin", false, false), package("binutils", false, true)]);
    }
    packages
}

/// What the build uses a package for, to name its check.
fn package_purpose(package: &str) -> &'static str {
    match package {
        "apt" => "apt-get fetches Debian's kubernetes source and busybox-static",
        "dpkg" => "dpkg-deb unpacks busybox-static for the web image",
        "dpkg-dev" => "dpkg-source unpacks Debian's kubernetes source",
        "gcc" => "compiles the static pause binary",
        "libc6-dev" => "the static C library of the pause binary",
        "golang-go" => "compiles Kubernetes",
        "libc-bin" => "ldd finds the lab-dns server's libraries",
        "binutils" => "strip shrinks the lab-dns server",
        _ => "builds the lab's artifacts",
    }
}

/// What `lab up` needs from the host to build the artifacts of `topology` into
/// `cache_dir`: its Debian packages, Debian's kubernetes source and cargo. Asks
/// dpkg-query and `apt-get source --print-uris`, which download nothing.
pub fn build_findings(topology: &Topology, cache_dir: &Path) -> Vec<Finding> {
    // The pause binary lives beside the Kubernetes binaries, but `dir` binaries
    // count as cached without it, and it is built from the same source tree.
    let kubernetes_dir = build::kubernetes_dir(topology, cache_dir);
    let cached = build::kubernetes_cached(topology, cache_dir) && build::pause_binary(topology, cache_dir).is_file();
    let cached_in = cached.then_some(kubernetes_dir.as_path());
    let names: Vec<&str> = build_packages(topology).iter().map(|package| package.name).collect();
    let cargo = (topology.addons.dns == DnsAddon::LabDns).then(cargo_path);
    let source_probe = || {
        print_kubernetes_source_uris().map_err(|error| {
            // The fix is the entry for the host's own mirror, or why there is none.
            let entry = apt_sources::host_deb_src_entry(Path::new(build::DEB_SRC_LIST_PATH));
            (error, entry.map(|entry| deb_src_command(&entry)).unwrap_or_else(|reason| reason))
        })
    };
    build_findings_from(topology, cached_in, &installed_packages(&names), source_probe, cargo)
}

/// The findings of `build_findings` from what was measured: the directory that
/// holds the cached Kubernetes binaries if any, the installed packages (or why
/// dpkg-query could not tell), the deb-src probe (run only when the source is
/// needed), and for the lab-dns server where cargo is.
fn build_findings_from(
    topology: &Topology,
    cached_in: Option<&Path>,
    installed: &Result<BTreeSet<String>, String>,
    print_source_uris: impl FnOnce() -> Result<(), (String, String)>,
    cargo: Option<Option<PathBuf>>,
) -> Vec<Finding> {
    let mut findings: Vec<Finding> =
        build_packages(topology).iter().map(|package| package_finding(package, installed, cached_in)).collect();
    findings.push(deb_src_finding(cached_in, print_source_uris));
    if let Some(cargo) = cargo {
        findings.push(cargo_finding(cargo));
    }
    findings
}

fn package_finding(
    package: &BuildPackage,
    installed: &Result<BTreeSet<String>, String>,
    cached_in: Option<&Path>,
) -> Finding {
    let check = format!("package {} ({})", package.name, package_purpose(package.name));
    let missing = match installed {
        Ok(installed) if installed.contains(package.name) => return Finding::ok(&check, "installed"),
        Ok(_) => "not installed".to_string(),
        Err(error) => format!("cannot tell whether it is installed: {error}"),
    };
    if let Some(dir) = cached_in.filter(|_| package.for_kubernetes) {
        return Finding::ok(&check, format!("{missing}; not needed while {} holds the built binaries", dir.display()));
    }
    let (status, detail) = if package.optional {
        (Status::Warn, format!("{missing}; the lab-dns server goes into its image with its symbols"))
    } else {
        (Status::Fail, missing)
    };
    Finding {
        package: Some(package.name.to_string()),
        ..Finding::problem(&check, status, detail, install_command(&[package.name]))
    }
}

/// The packages among `names` that dpkg has installed.
fn installed_packages(names: &[&str]) -> Result<BTreeSet<String>, String> {
    // dpkg-query exits 1 when it knows one of the names not at all, but still
    // lists the others, so its output counts rather than its exit status.
    let output = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Package} ${db:Status-Status}\n"])
        .args(names)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run dpkg-query: {error}"))?;
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&output.stdout)))
}

/// The installed packages in lines of `PACKAGE STATUS`; a package whose status is
/// not `installed` (removed with its configuration kept, half installed) counts as
/// missing.
fn parse_dpkg_status(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "installed")
        .map(|(package, _)| package.to_string())
        .collect()
}

/// `apt-get source kubernetes` needs a deb-src entry that the default apt
/// sources of Debian 12 lack; it is needed for every Kubernetes source, since the
/// pause binary is compiled from the same tree.
/// `print_source_uris` fails with apt's complaint and the fix.
fn deb_src_finding(
    cached_in: Option<&Path>,
    print_source_uris: impl FnOnce() -> Result<(), (String, String)>,
) -> Finding {
    if let Some(dir) = cached_in {
        return Finding::ok(DEB_SRC_CHECK, format!("not needed while {} holds the built binaries", dir.display()));
    }
    match print_source_uris() {
        Ok(()) => Finding::ok(DEB_SRC_CHECK, "apt-get source finds Debian's kubernetes source package"),
        Err((error, fix)) => Finding::problem(
            DEB_SRC_CHECK,
            Status::Fail,
            format!("`apt-get source --print-uris kubernetes` failed: {error}"),
            fix,
        ),
    }
}

/// Asks apt where Debian's kubernetes source package is; this reads apt's lists
/// and downloads nothing.
fn print_kubernetes_source_uris() -> Result<(), String> {
    let output = Command::new("apt-get")
        .args(["source", "--print-uris", "kubernetes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run apt-get: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").trim().to_string())
}

/// The lab-dns server is built with the cargo that runs the lab (`CARGO` under
/// `cargo run`), else the one on PATH.
pub(super) fn cargo_path() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return Some(PathBuf::from(cargo));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("cargo")).find(|candidate| candidate.is_file())
}

fn cargo_finding(cargo: Option<PathBuf>) -> Finding {
    const CHECK: &str = "cargo (builds the lab-dns server)";
    match cargo {
        Some(cargo) => Finding::ok(CHECK, cargo.display().to_string()),
        None => Finding::problem(
            CHECK,
            Status::Fail,
            "not found (neither CARGO nor PATH names it)",
            "install Rust with rustup (Debian 12's cargo is older than dns/Cargo.toml's rust-version)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::tests::lab_topology;
    use crate::preflight::Report;
    use crate::topology::ArtifactSource;

    /// Each check's name without its purpose in parentheses.
    fn checks(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|finding| finding.check.split(" (").next().unwrap_or_default()).collect()
    }

    fn installed(names: &[&str]) -> Result<BTreeSet<String>, String> {
        Ok(names.iter().map(|name| name.to_string()).collect())
    }

    fn no_probe() -> Result<(), (String, String)> {
        panic!("the deb-src probe runs only when the source is needed")
    }

    #[test]
    fn build_findings_follow_the_source_and_the_dns_addon() {
        let mut topology = lab_topology();
        let cargo = Some(Some(PathBuf::from("/root/.cargo/bin/cargo")));
        let findings = build_findings_from(&topology, None, &installed(&[]), || Ok(()), cargo.clone());
        assert_eq!(
            checks(&findings),
            [
                "package apt",
                "package dpkg",
                "package dpkg-dev",
                "package gcc",
                "package golang-go",
                "package libc6-dev",
                "package libc-bin",
                "package binutils",
                "deb-src for bookworm",
                "cargo",
            ]
        );
        topology.kubernetes.source = ArtifactSource::Release;
        topology.addons.dns = DnsAddon::Coredns;
        let findings = build_findings_from(&topology, None, &installed(&[]), || Ok(()), None);
        assert_eq!(
            checks(&findings),
            [
                "package apt",
                "package dpkg",
                "package dpkg-dev",
                "package gcc",
                "package libc6-dev",
                "deb-src for bookworm"
            ]
        );
    }

    #[test]
    fn missing_build_packages_fail_with_their_package_unless_optional_or_cached() {
        let topology = lab_topology();
        let have = installed(&["apt", "dpkg", "gcc", "libc-bin"]);
        let findings = build_findings_from(&topology, None, &have, || Ok(()), Some(None));
        let report = Report { findings };
        assert_eq!(report.missing_packages(), ["binutils", "dpkg-dev", "golang-go", "libc6-dev"]);
        let golang = report.findings.iter().find(|finding| finding.check.starts_with("package golang-go")).unwrap();
        assert_eq!(golang.check, "package golang-go (compiles Kubernetes)");
        assert_eq!(golang.status, Status::Fail);
        assert_eq!(golang.fix.as_deref(), Some("apt-get install -y --no-install-recommends golang-go"));
        let binutils = report.findings.iter().find(|finding| finding.check.starts_with("package binutils")).unwrap();
        assert_eq!(binutils.status, Status::Warn);
        let cargo = report.findings.last().unwrap();
        assert_eq!((cargo.status, cargo.package.as_deref()), (Status::Fail, None));

        // With the binaries cached, only what the images need is still required.
        let cache = Path::new("/cache/kubernetes/debian-source-v1.20.2-selinux-notest-dockerless");
        let findings = build_findings_from(&topology, Some(cache), &have, no_probe, None);
        let report = Report { findings };
        assert_eq!(report.missing_packages(), ["binutils"]);
        let go = report.findings.iter().find(|finding| finding.check.starts_with("package golang-go")).unwrap();
        assert_eq!(
            go.detail,
            "not installed; not needed while /cache/kubernetes/debian-source-v1.20.2-selinux-notest-dockerless holds the built binaries"
        );
        assert!(!report.deb_src_missing());
    }

    #[test]
    fn a_missing_deb_src_entry_fails_with_the_entry_to_write() {
        let complaint = "E: You must put some 'deb-src' URIs in your sources.list".to_string();
        let fix =
            deb_src_command("Types: deb-src\nURIs: http://mirror.local/debian\nSuites: bookworm\nComponents: main\n");
        let failed = deb_src_finding(None, || Err((complaint, fix)));
        assert_eq!(failed.status, Status::Fail);
        assert_eq!(failed.package, None);
        assert_eq!(
            failed.fix.as_deref(),
            Some(
                "printf 'Types: deb-src\\nURIs: http://mirror.local/debian\\nSuites: bookworm\\nComponents: main\\n' > \
                 /etc/apt/sources.list.d/k8s-lab-debian-src.sources && apt-get update"
            )
        );
        assert!(Report { findings: vec![failed] }.deb_src_missing());
        assert_eq!(deb_src_finding(None, || Ok(())).status, Status::Ok);
        let json = serde_json::to_value(deb_src_finding(Some(Path::new("/cache/k")), no_probe)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"check": "deb-src for bookworm", "status": "ok",
                               "detail": "not needed while /cache/k holds the built binaries"})
        );
    }

    #[test]
    fn dpkg_status_counts_only_installed_packages() {
        let listing = "gcc installed\nmake config-files\njq not-installed\nlibc6-dev installed\n";
        assert_eq!(parse_dpkg_status(listing), BTreeSet::from(["gcc".to_string(), "libc6-dev".to_string()]));
        let unknown = Err("cannot run dpkg-query: No such file or directory (os error 2)".to_string());
        let package = BuildPackage { name: "gcc", for_kubernetes: true, optional: false };
        let finding = package_finding(&package, &unknown, None);
        assert_eq!(finding.status, Status::Fail);
        assert_eq!(finding.package.as_deref(), Some("gcc"));
    }
}
