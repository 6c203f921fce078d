//! The lab's PKI (handbook chapter 3, done with rcgen instead of CFSSL).
//!
//! `specs` is pure: it lists every certificate the topology needs, with subject, SANs
//! and usages. `Store::load_or_issue` is the only part that does I/O: it keeps the CA,
//! the certificates and the service-account key pair in the lab state directory
//! (private keys mode 0600), makes what is missing and reuses what is there, so the
//! lab keeps one identity across `up`, `down` and re-runs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::topology::{first_service_ip, Role, Topology};

/// What a certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    ServerAuth,
    ClientAuth,
}

/// One certificate the lab issues from its CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSpec {
    /// File stem in the state directory and the key of `Bundle::certificates`,
    /// e.g. `etcd-server-master1`.
    pub name: String,
    pub common_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usages: Vec<Usage>,
}

/// Names of the certificates, shared by the PKI and the stages that install them.
pub mod names {
    pub const APISERVER: &str = "apiserver";
    pub const APISERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";
    pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
    pub const ADMIN: &str = "admin";
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    pub const SCHEDULER: &str = "kube-scheduler";
    pub const KUBE_PROXY: &str = "kube-proxy";

    pub fn etcd_server(node: &str) -> String {
        format!("etcd-server-{node}")
    }
    pub fn etcd_peer(node: &str) -> String {
        format!("etcd-peer-{node}")
    }
    pub fn kubelet(node: &str) -> String {
        format!("kubelet-{node}")
    }
}

/// Every certificate the topology needs, in a stable order. Pure.
pub fn specs(topology: &Topology) -> Vec<CertificateSpec> {
    let _ = (topology, first_service_ip, Role::Etcd);
    todo!("pki::specs: the helper implementing issue 2's PKI fills this in")
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The lab's whole PKI, loaded into memory for the planner.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca: Issued,
    /// By `CertificateSpec::name`.
    pub certificates: BTreeMap<String, Issued>,
    /// The service-account signing key pair: (public PEM, private PEM).
    pub service_account: Issued,
}

impl Bundle {
    /// The issued certificate `name`. Panics if the bundle was made from other specs,
    /// which is a programming error: bundles are always issued from `specs(topology)`.
    pub fn get(&self, name: &str) -> &Issued {
        self.certificates.get(name).unwrap_or_else(|| panic!("no certificate named {name} in the lab PKI"))
    }
}

/// Why the PKI could not be loaded or issued.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot issue certificate {name}: {source}")]
    Issue { name: String, source: rcgen::Error },
    #[error("cannot load {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// The PKI directory inside the lab state directory.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store { dir: state_dir.join("pki") }
    }

    /// Loads the CA and every certificate in `specs`, issuing what is missing or
    /// whose stored subject/SANs no longer match its spec.
    pub fn load_or_issue(&self, specs: &[CertificateSpec]) -> Result<Bundle, PkiError> {
        let _ = specs;
        todo!("pki::Store::load_or_issue")
    }
}

/// Issues a fresh bundle in memory (tests, and `lab plan` before any state exists).
pub fn issue_in_memory(specs: &[CertificateSpec]) -> Result<Bundle, PkiError> {
    let _ = specs;
    todo!("pki::issue_in_memory")
}

/// A kubeconfig with embedded credentials for one user against `server`.
pub fn kubeconfig(cluster: &str, server: &str, ca_pem: &str, user: &str, credentials: &Issued) -> String {
    let _ = (cluster, server, ca_pem, user, credentials);
    todo!("pki::kubeconfig")
}
