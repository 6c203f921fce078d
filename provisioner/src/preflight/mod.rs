//! Host checks: what `lab doctor` reports and what `lab up` verifies before it
//! creates anything.
//!
//! Each check gives a `Finding`: ok, a warning (the lab can start, something will
//! be slower or limited), or a failure (the lab must not start), with the exact
//! command that fixes it. The machine backend says what it needs itself (its
//! programs, root, kernel links); this module adds what every lab needs from the
//! host: disk, memory, bridged traffic through iptables, and above all lab ranges
//! that no existing host route already uses. A lab range that overlaps a host
//! route could send lab traffic out of the host's own interfaces, which the lab
//! must never do.
//!
//! `build_findings` adds what `lab up` needs to build its artifacts on the host:
//! the Debian packages of the offline Kubernetes build, a deb-src entry for
//! `apt-get source kubernetes`, and cargo for the lab-dns server. A cache that
//! already holds the Kubernetes binaries makes the build's packages unnecessary.
//!
//! The host-wide checks are in `host_checks`, the build's in `build_checks`, and
//! the fixes (apt-get and the deb-src entry) in `install`. Nothing here prints:
//! the CLI prints the report, and the fixes tell the caller's `say` what they are
//! about to do.

use std::fmt;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::machines::Requirement;
use crate::system::LocalSystem;
use crate::topology::Topology;

mod apt_sources;
mod build_checks;
mod host_checks;
mod install;
mod nextest;

pub use build_checks::{build_findings, DEB_SRC_CHECK};
pub use install::{set_up_host, HostSetup};
pub use nextest::finding as nextest_finding;

/// The node image, the Kubernetes build and the container images in the cache.
pub const CACHE_BYTES: u64 = 4 << 30;
/// One node's writable copy of the image, its container images and logs.
pub const NODE_DISK_BYTES: u64 = 1 << 30;
/// What one node (systemd, etcd or the control plane, containerd) uses at rest.
pub const NODE_MEMORY_BYTES: u64 = 1 << 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The lab can start; something may be slow or limited.
    Warn,
    /// The lab cannot start until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One checked thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, e.g. `free disk (state)` or `systemd-nspawn (runs the nodes)`.
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The exact command or change that fixes it (only when not ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The Debian package that provides what is missing, for `install_missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding { check: check.to_string(), status: Status::Ok, detail: detail.into(), fix: None, package: None }
    }

    fn problem(check: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check: check.to_string(), status, detail: detail.into(), fix: Some(fix.into()), package: None }
    }

    /// A backend's requirement as a finding; an unmet one fails.
    pub fn from_requirement(requirement: &Requirement) -> Finding {
        if requirement.met {
            return Finding {
                check: requirement.what.clone(),
                status: Status::Ok,
                detail: "present".into(),
                fix: None,
                package: None,
            };
        }
        let (detail, fix) = match &requirement.package {
            Some(package) => {
                (format!("missing (Debian package {package})"), install::install_command(&[package.as_str()]))
            }
            None => ("missing".to_string(), requirement.fix.clone()),
        };
        Finding {
            check: requirement.what.clone(),
            status: Status::Fail,
            detail,
            fix: Some(fix),
            package: requirement.package.clone(),
        }
    }
}

/// Every finding of one preflight run, in the order they were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst status of all findings.
    pub fn status(&self) -> Status {
        self.findings.iter().map(|finding| finding.status).max().unwrap_or(Status::Ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> + '_ {
        self.findings.iter().filter(|finding| finding.status == Status::Fail)
    }

    /// The Debian packages that would fix failed findings, each once.
    pub fn missing_packages(&self) -> Vec<String> {
        install::missing_packages(&self.findings)
    }

    /// Whether `apt-get source kubernetes` needs the deb-src entry `set_up_host` writes.
    pub fn deb_src_missing(&self) -> bool {
        self.failures().any(|finding| finding.check == DEB_SRC_CHECK)
    }

    /// Whether `set_up_host` would change something: a missing package, the deb-src
    /// entry or cargo-nextest.
    pub fn fixable(&self) -> bool {
        install::fixable(self)
    }
}

/// Why installing packages did not work.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("installing {packages} needs root; run `sudo {command}`")]
    NotRoot { packages: String, command: String },
    #[error("apt-get is not on this host; install {packages} with the host's package manager")]
    NoApt { packages: String },
    #[error("`{command}` failed: {message}")]
    Apt { command: String, message: String },
    #[error(
        "installing {packages} would make apt remove {removed}, and the lab removes nothing of the host's; decide \
         yourself, e.g. `{command}` and then reinstall what it removed"
    )]
    WouldRemove { packages: String, removed: String, command: String },
    #[error("adding the deb-src entry for bookworm needs root; as root run: {command}")]
    DebSrcNotRoot { command: String },
    #[error("the deb-src entry for bookworm: {0}")]
    NoDebianSource(String),
    #[error("cannot write the deb-src entry to {path}: {message}")]
    WriteDebSrc { path: String, message: String },
    #[error("`{command}` failed: {message}")]
    Cargo { command: String, message: String },
}

/// Runs every host check for `topology`, with `requirements` from its machine
/// backend. Safe to run at any time: it creates nothing that outlives the call
/// (the backend's own probes clean up after themselves) and only loads the
/// `br_netfilter` kernel module when that is missing.
pub fn run(topology: &Topology, state_dir: &Path, cache_dir: &Path, requirements: &[Requirement]) -> Report {
    let mut findings: Vec<Finding> = requirements.iter().map(Finding::from_requirement).collect();
    let nodes = topology.nodes.len() as u64;
    findings.extend(host_checks::disk_findings(state_dir, cache_dir, nodes));
    let (memory_needed, memory_basis) = host_checks::memory_need(topology);
    findings.push(host_checks::memory_finding(host_checks::available_memory(), memory_needed, &memory_basis));
    findings.push(host_checks::bridge_netfilter_finding());
    findings.extend(host_checks::route_findings(&LocalSystem, topology));
    Report { findings }
}

/// The lab's address ranges, each with the topology field it comes from.
pub fn lab_ranges(topology: &Topology) -> Vec<(&'static str, Ipv4Net)> {
    let network = &topology.network;
    vec![
        ("network.node_subnet", network.node_subnet),
        ("network.vip", Ipv4Net::from(network.vip)),
        ("network.pod_cidr", network.pod_cidr),
        ("network.service_cidr", network.service_cidr),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's default topology.
    pub(super) fn lab_topology() -> Topology {
        Topology::parse(include_str!("../../../lab.toml"), Path::new("lab.toml")).expect("lab.toml").topology
    }

    #[test]
    fn unmet_requirements_name_their_package_once() {
        let requirement = |what: &str, met: bool, package: Option<&str>| Requirement {
            what: what.into(),
            met,
            package: package.map(str::to_string),
            fix: "apt-get install x".into(),
        };
        let report = Report {
            findings: vec![
                Finding::from_requirement(&requirement("ssh-keygen", false, Some("openssh-client"))),
                Finding::from_requirement(&requirement("ssh", false, Some("openssh-client"))),
                Finding::from_requirement(&requirement("ip", true, Some("iproute2"))),
                Finding::from_requirement(&requirement("root", false, None)),
            ],
        };
        assert_eq!(report.missing_packages(), ["openssh-client"]);
        assert_eq!(report.status(), Status::Fail);
        assert_eq!(
            report.findings[0].fix.as_deref(),
            Some("apt-get install -y --no-install-recommends openssh-client")
        );
        assert_eq!(report.findings[3].fix.as_deref(), Some("apt-get install x"));
        let json = serde_json::to_value(&report.findings[2]).expect("json");
        assert_eq!(json, serde_json::json!({"check": "ip", "status": "ok", "detail": "present"}));
    }
}
