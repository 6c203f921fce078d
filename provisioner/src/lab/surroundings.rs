//! What a `Lab` needs from the world besides its machines: the host's fitness, the
//! artifacts in the cache, SSH to the nodes and the host-side proof that the
//! cluster serves, and what `lab status` asks from the host. One trait, so that `lab
//! up`'s whole sequence and the status run in unit tests with a fake (and the
//! machines backend's fake) instead of a host and a cluster.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::status::ApiHealth;
use crate::artifacts::build::{self, ArtifactError};
use crate::host::{Host, HostError};
use crate::machines::{hostnet, Requirement};
use crate::plan::NetworkPlan;
use crate::preflight::{self, HostSetup, PreflightError, Report};
use crate::readiness::{self, ReadinessError, Steady};
use crate::ssh::{KeyPair, SshHost};
use crate::topology::Topology;

/// The lab's surroundings; `Real` is the host this process runs on.
pub trait Surroundings: Sync {
    /// Every host check for `topology`: the backend's `requirements`, the host-wide
    /// checks and what building the artifacts needs.
    fn preflight(
        &self,
        topology: &Topology,
        state_dir: &Path,
        cache_dir: &Path,
        requirements: &[Requirement],
    ) -> Report;

    /// Installs what `report` found missing on the host (`preflight::set_up_host`).
    fn set_up_host(&self, report: &Report, say: &dyn Fn(&str)) -> Result<HostSetup, PreflightError>;

    /// The Kubernetes binaries and images in the cache, built unless they are there.
    fn ensure_artifacts(
        &self,
        topology: &Topology,
        cache_dir: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<(), ArtifactError>;

    /// A session on a node as root with the lab's key, for the executor: one
    /// attempt of at most `timeout`.
    fn connect(
        &self,
        node: &str,
        address: Ipv4Addr,
        key: &KeyPair,
        timeout: Duration,
    ) -> Result<Box<dyn Host>, HostError>;

    /// Waits until the cluster serves Services and DNS to the host, steadily, or
    /// until `abandon` is set.
    fn prove_ready(
        &self,
        network: &NetworkPlan,
        time_scale: u32,
        abandon: &AtomicBool,
    ) -> Result<Steady, ReadinessError>;

    /// Fails, naming the address, unless every one of `addresses` is routed onto
    /// `bridge`: `lab status` asks nothing of an address that would leave elsewhere.
    fn verify_routes(&self, bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), String>;

    /// The API's answer to `GET url` (its `/healthz` through the virtual IP) with
    /// the lab CA and the admin's certificate from `pki_dir`, within `timeout`.
    fn api_health(&self, url: &str, pki_dir: &Path, timeout: Duration) -> Result<ApiHealth, String>;
}

/// This host: the real preflight, artifact build, SSH and readiness probes.
pub struct Real {
    /// The workspace whose `dns/` crate the lab-dns image is built from.
    pub workspace_dir: std::path::PathBuf,
}

impl Surroundings for Real {
    fn preflight(
        &self,
        topology: &Topology,
        state_dir: &Path,
        cache_dir: &Path,
        requirements: &[Requirement],
    ) -> Report {
        let mut report = preflight::run(topology, state_dir, cache_dir, requirements);
        report.findings.extend(preflight::build_findings(topology, cache_dir));
        report.findings.push(preflight::nextest_finding());
        report
    }

    fn set_up_host(&self, report: &Report, say: &dyn Fn(&str)) -> Result<HostSetup, PreflightError> {
        preflight::set_up_host(report, say)
    }

    fn ensure_artifacts(
        &self,
        topology: &Topology,
        cache_dir: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<(), ArtifactError> {
        build::ensure(topology, cache_dir, &self.workspace_dir, progress).map(|_| ())
    }

    fn connect(
        &self,
        node: &str,
        address: Ipv4Addr,
        key: &KeyPair,
        timeout: Duration,
    ) -> Result<Box<dyn Host>, HostError> {
        Ok(Box::new(SshHost::connect(node, address, key, timeout)?))
    }

    fn prove_ready(
        &self,
        network: &NetworkPlan,
        time_scale: u32,
        abandon: &AtomicBool,
    ) -> Result<Steady, ReadinessError> {
        readiness::wait_until_steady(network, time_scale, abandon)
    }

    fn verify_routes(&self, bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), String> {
        hostnet::verify_on_bridge(bridge, addresses).map_err(|error| error.to_string())
    }

    fn api_health(&self, url: &str, pki_dir: &Path, timeout: Duration) -> Result<ApiHealth, String> {
        super::probes::healthz(url, pki_dir, timeout)
    }
}
