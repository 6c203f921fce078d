//! The lab's machines: the computers the stages provision, made on this host.
//!
//! A backend turns the topology's nodes into running machines on a lab network and
//! takes them away again. `Machines` is what every backend offers; today there is
//! one, `nspawn` (systemd-nspawn containers booting a Debian image with systemd as
//! PID 1, no KVM needed). libvirt and Vagrant can join by implementing the trait.
//!
//! Every operation converges: `create_or_start` finishes whatever an interrupted run
//! left half made, `stop` keeps the disks, and `destroy` removes everything the lab
//! made on the host and lists, never hides, what it could not remove.
//!
//! The lab's state directory holds the machines in `STATE/machines/NODE/` and the
//! topology the lab was made from in `STATE/topology.toml`: one state directory
//! belongs to one lab, and `destroy` works from that record rather than from a
//! `lab.toml` that may have changed since.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::plan::HostRoute;
use crate::topology::{Backend, Topology};

pub mod hostnet;
pub mod image;
pub mod nspawn;
pub mod system;

/// The file in the state directory that names the lab it belongs to.
pub const TOPOLOGY_RECORD: &str = "topology.toml";

/// One machine to make: the node's name (also its hostname) and its address on the
/// node subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub address: Ipv4Addr,
}

/// What a backend needs to know about the lab as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab's name; every host-side object is named after it.
    pub lab: String,
    pub state_dir: PathBuf,
    /// Shared by every lab: node images live in `CACHE/images/`.
    pub cache_dir: PathBuf,
    /// The host bridge the nodes attach to.
    pub bridge: String,
    /// The host's address on the bridge, with the node subnet's prefix.
    pub gateway: Ipv4Net,
    pub nodes: Vec<NodeSpec>,
}

impl LabSpec {
    pub fn from_topology(topology: &Topology, state_dir: &Path, cache_dir: &Path) -> LabSpec {
        let network = &topology.network;
        LabSpec {
            lab: topology.name.clone(),
            state_dir: state_dir.to_owned(),
            cache_dir: cache_dir.to_owned(),
            bridge: crate::plan::bridge_name(&topology.name),
            gateway: Ipv4Net::new(network.gateway, network.node_subnet.prefix_len()).expect("prefix of a valid net"),
            nodes: topology
                .nodes
                .iter()
                .map(|node| NodeSpec { name: node.name.clone(), address: node.address })
                .collect(),
        }
    }

    /// `STATE/machines`, where every node's disk and runtime files are.
    pub fn machines_dir(&self) -> PathBuf {
        self.state_dir.join("machines")
    }
}

/// A built node image, ready to be the lower layer of node disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImage {
    /// `node-HASH`: names the recipe the image was built from.
    pub key: String,
    /// The image's root filesystem.
    pub root: PathBuf,
    /// True when the cache already had it and nothing was built.
    pub from_cache: bool,
}

/// Where a machine is, as `lab status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Booted (or booting): the machine's process is alive.
    Running,
    /// Its disk exists but nothing runs it (after `lab down`).
    Stopped,
    /// There is no such machine (before `lab up`, after `lab destroy`).
    Missing,
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachineState::Running => "running",
            MachineState::Stopped => "stopped",
            MachineState::Missing => "missing",
        })
    }
}

/// What `create_or_start` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The machine was running already; nothing was touched.
    AlreadyRunning,
    /// The machine was started; `created` when its disk was made now.
    Started { created: bool },
}

/// What `stop` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The machine shut down cleanly.
    Stopped,
    /// It did not shut down in time and was killed.
    Killed,
    /// Nothing was running.
    NotRunning,
}

/// One thing the host must have for a backend to work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// What is needed and why, e.g. "systemd-nspawn (runs the nodes)".
    pub what: String,
    pub met: bool,
    /// The Debian package that provides it, when one does.
    pub package: Option<String>,
    /// The exact fix when it is not met.
    pub fix: String,
}

/// Something `destroy` (or `stop`) could not remove, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// The object, e.g. "mount /var/lib/lab/machines/master1/root".
    pub object: String,
    pub reason: String,
}

impl Leftover {
    pub fn new(object: impl Into<String>, reason: impl Into<String>) -> Leftover {
        Leftover { object: object.into(), reason: reason.into() }
    }
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// Why a machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("the {backend} backend is not available in this build; set backend = \"nspawn\" in [machines]")]
    Unsupported { backend: Backend },
    #[error("state dir {} holds lab {lab}; run `lab destroy` or set LAB_DIR", .state_dir.display())]
    StateDirTaken { state_dir: PathBuf, lab: String },
    #[error("recorded topology {}: {message}", .path.display())]
    Record { path: PathBuf, message: String },
    #[error("node image {key}: {message}")]
    Image { key: String, message: String },
    #[error("lab network: {message}")]
    Network { message: String },
    #[error("{node}: {message}")]
    Node { node: String, message: String },
    #[error("{message}")]
    Host { message: String },
}

/// What every machine backend offers. All methods converge from whatever state
/// they find and may be called again after a failure or an interrupted run.
pub trait Machines: Send + Sync {
    fn backend(&self) -> Backend;

    /// What the host must have; the preflight refuses to start when one is unmet.
    fn requirements(&self) -> Vec<Requirement>;

    /// The node image, built into the cache unless it is there already.
    fn ensure_image(&self, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError>;

    /// The lab network on the host, with every route of `routes` onto it. Nothing
    /// may be sent to a lab address before this returned successfully.
    fn ensure_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError>;

    /// Makes `node` exist and run, from `image`, with `authorized_key` (one
    /// `authorized_keys` line) allowed to log in as root.
    fn create_or_start(
        &self,
        node: &NodeSpec,
        image: &NodeImage,
        authorized_key: &str,
    ) -> Result<StartOutcome, MachineError>;

    /// Shuts `node` down, keeping its disk.
    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError>;

    fn status(&self, node: &str) -> Result<MachineState, MachineError>;

    /// Every node the lab has: the topology's, and any other with a disk in the
    /// state directory (a node since removed from the topology).
    fn known_nodes(&self) -> Vec<String>;

    /// The node's console output of its current or last boot, when the backend keeps one.
    fn console_log(&self, node: &str) -> Option<PathBuf>;

    /// Removes every machine, their disks and runtime files, and the lab network.
    /// Returns what could not be removed (empty when everything went).
    fn destroy(&self) -> Vec<Leftover>;
}

/// The backend the topology asks for.
pub fn for_lab(backend: Backend, spec: LabSpec) -> Result<Box<dyn Machines>, MachineError> {
    match backend {
        Backend::Nspawn => Ok(Box::new(nspawn::Nspawn::new(spec))),
        Backend::Libvirt | Backend::Vagrant => Err(MachineError::Unsupported { backend }),
    }
}

/// The topology recorded in `state_dir` by the first `lab up`; `None` when the
/// directory holds no lab.
pub fn recorded_topology(state_dir: &Path) -> Result<Option<Topology>, MachineError> {
    let path = state_dir.join(TOPOLOGY_RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MachineError::Record { path, message: error.to_string() }),
    };
    Topology::parse(&text, &path)
        .map(|validated| Some(validated.topology))
        .map_err(|error| MachineError::Record { path, message: error.to_string() })
}

/// Refuses when `state_dir` holds a lab other than `topology`'s. Writes nothing.
pub fn check_state_dir(state_dir: &Path, topology: &Topology) -> Result<(), MachineError> {
    match recorded_lab_name(&state_dir.join(TOPOLOGY_RECORD))? {
        Some(lab) if lab != topology.name => Err(MachineError::StateDirTaken { state_dir: state_dir.to_owned(), lab }),
        _ => Ok(()),
    }
}

/// Claims `state_dir` for `topology`'s lab: refuses when it holds another lab, and
/// records the topology (again, so the record follows topology edits of the same lab).
pub fn claim_state_dir(state_dir: &Path, topology: &Topology) -> Result<(), MachineError> {
    check_state_dir(state_dir, topology)?;
    let path = state_dir.join(TOPOLOGY_RECORD);
    let record_error = |message: String| MachineError::Record { path: path.clone(), message };
    fs::create_dir_all(state_dir).map_err(|error| record_error(format!("cannot create the state dir: {error}")))?;
    let text = toml::to_string_pretty(topology).map_err(|error| record_error(error.to_string()))?;
    let header = "# Written by `lab up`: the topology this state directory's lab was made from.\n\
                  # `lab destroy` reads it; edit lab.toml, not this file.\n\n";
    system::write_atomically(&path, format!("{header}{text}").as_bytes(), 0o644)
        .map_err(|error| record_error(error.to_string()))
}

/// The lab name in a topology record, read leniently: a record written by another
/// version of the lab may no longer validate, but its name still says whose it is.
fn recorded_lab_name(path: &Path) -> Result<Option<String>, MachineError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MachineError::Record { path: path.to_owned(), message: error.to_string() }),
    };
    let table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| MachineError::Record { path: path.to_owned(), message: error.to_string() })?;
    match table.get("name").and_then(toml::Value::as_str) {
        Some(name) => Ok(Some(name.to_string())),
        None => {
            Err(MachineError::Record { path: path.to_owned(), message: "it names no lab (`name` is missing)".into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(name: &str) -> Topology {
        let text = format!(
            r#"name = "{name}"
[network]
node_subnet = "10.249.0.0/24"
gateway = "10.249.0.1"
vip = "10.249.0.100"
pod_cidr = "10.248.0.0/16"
service_cidr = "10.247.0.0/24"
cluster_dns = "10.247.0.10"
[[node]]
name = "solo"
address = "10.249.0.11"
roles = ["etcd", "master", "lb", "worker"]
"#
        );
        Topology::parse(&text, Path::new("test.toml")).expect("valid topology").topology
    }

    #[test]
    fn a_state_dir_belongs_to_one_lab() {
        let state = tempfile::tempdir().expect("temporary directory");
        assert_eq!(recorded_topology(state.path()).expect("no record yet"), None);

        let first = topology("one");
        claim_state_dir(state.path(), &first).expect("first claim");
        claim_state_dir(state.path(), &first).expect("the same lab claims again");
        assert_eq!(recorded_topology(state.path()).expect("record"), Some(first));

        let error = claim_state_dir(state.path(), &topology("two")).expect_err("another lab must be refused");
        assert_eq!(
            error.to_string(),
            format!("state dir {} holds lab one; run `lab destroy` or set LAB_DIR", state.path().display())
        );
    }

    #[test]
    fn lab_spec_names_the_bridge_after_the_lab() {
        let spec = LabSpec::from_topology(&topology("tiny"), Path::new("/state"), Path::new("/cache"));
        assert_eq!(spec.bridge, "lab-tiny");
        assert_eq!(spec.gateway.to_string(), "10.249.0.1/24");
        assert_eq!(spec.nodes, vec![NodeSpec { name: "solo".into(), address: Ipv4Addr::new(10, 249, 0, 11) }]);
        assert_eq!(spec.machines_dir(), Path::new("/state/machines"));
    }

    #[test]
    fn other_backends_are_refused_with_the_fix() {
        let spec = LabSpec::from_topology(&topology("tiny"), Path::new("/state"), Path::new("/cache"));
        let error = for_lab(Backend::Libvirt, spec).err().expect("libvirt is not built");
        assert!(error.to_string().contains("backend = \"nspawn\""), "{error}");
    }
}
