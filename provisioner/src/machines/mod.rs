//! The lab's machines: the computers the stages provision, made on this host.
//!
//! A backend turns the topology's nodes into running machines on a lab network and
//! takes them away again. `Machines` is what every backend offers: `nspawn`
//! (systemd-nspawn containers booting a Debian image with systemd as PID 1, no KVM
//! needed) and, built with the `libvirt` feature, `libvirt` (QEMU VMs booting the
//! same image, `vm_image`, on an isolated libvirt network), and `vagrant` (the same
//! VMs made by Vagrant with vagrant-libvirt). What both VM backends need of the
//! host's libvirt is `libvirt_host`, built without the feature. What makes a machine
//! one particular node is the same for all of them (`node_config`).
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
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::plan::HostRoute;
use crate::state_dir::StateDir;
use crate::system;
use crate::topology::{Acceleration, Backend, Node, Role, Topology};

pub mod boot_watch;
pub mod hostnet;
pub mod image;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod libvirt_host;
pub mod node_config;
pub mod nspawn;
pub mod vagrant;
pub mod vm_image;

/// One machine to make: the node's name (also its hostname), its address on the
/// node subnet, its roles, and its size where the backend gives machines a size of
/// their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub address: Ipv4Addr,
    /// The topology's roles of the node; Vagrant passes them to the Vagrantfile.
    pub roles: Vec<Role>,
    /// What a VM gets; nspawn nodes share the host's CPUs and memory and ignore it.
    pub size: MachineSize,
    /// Files of the artifact cache the plan puts on this node (the Kubernetes binaries,
    /// the container image archives). A backend that can make them part of a new
    /// machine's disk at no cost does so, the way kind's node image carries its
    /// binaries: nspawn lays hard links to them in an overlay layer of their own. The
    /// stages still compare every file with the plan and write what differs, so a
    /// backend that ignores this list (the VM backends) only makes the first `up` copy
    /// them over SSH.
    pub preload: Vec<PreloadedFile>,
}

/// A file of the artifact cache, where the plan puts it on a node and with which mode
/// (owned by root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadedFile {
    /// Absolute path on the node.
    pub path: String,
    pub mode: u32,
    /// The file in the host's artifact cache.
    pub source: PathBuf,
}

impl NodeSpec {
    /// A worker node of the default worker size.
    pub fn new(name: &str, address: Ipv4Addr) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            address,
            roles: vec![Role::Worker],
            size: MachineSize::WORKER,
            preload: Vec::new(),
        }
    }

    /// The machine for a topology node: its `[node.resources]`, else the default size
    /// for its roles.
    pub fn of(node: &Node) -> NodeSpec {
        let controller = node.roles.iter().any(|role| matches!(role, Role::Etcd | Role::Master | Role::Lb));
        let default = if controller { MachineSize::CONTROLLER } else { MachineSize::WORKER };
        let resources = node.resources.as_ref();
        NodeSpec {
            name: node.name.clone(),
            address: node.address,
            roles: node.roles.clone(),
            size: MachineSize {
                cpus: resources.and_then(|resources| resources.cpus).unwrap_or(default.cpus),
                memory_mib: resources.and_then(|resources| resources.memory_mib).unwrap_or(default.memory_mib),
            },
            preload: Vec::new(),
        }
    }
}

/// Virtual CPUs and memory of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSize {
    pub cpus: u32,
    pub memory_mib: u32,
}

impl MachineSize {
    /// etcd, kube-apiserver, the controller manager, the scheduler, HAProxy and
    /// keepalived (and kube-proxy) together use a little over 1 GiB; the rest is page
    /// cache for etcd and room for the kubelet's images on a node that is both.
    pub const CONTROLLER: MachineSize = MachineSize { cpus: 2, memory_mib: 3072 };
    /// containerd, kubelet, kube-proxy and the lab's few small pods.
    pub const WORKER: MachineSize = MachineSize { cpus: 2, memory_mib: 2048 };
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
    /// VM backends only: KVM, software emulation, or whichever works.
    pub acceleration: Acceleration,
    /// Vagrant only: the public box the machines are made from (the topology's
    /// `vagrant_box`); `None` for the lab's own box, made from the node image.
    pub vagrant_box: Option<String>,
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
            acceleration: topology.machines.acceleration,
            vagrant_box: topology.machines.vagrant_box.clone(),
            nodes: topology.nodes.iter().map(NodeSpec::of).collect(),
        }
    }

    /// `STATE/machines`, where every node's disk and runtime files are.
    pub fn machines_dir(&self) -> PathBuf {
        StateDir::new(&self.state_dir).machines_dir()
    }

    /// Makes the lab bridge (tagged with this state directory) and routes every lab
    /// range onto it, then proves that every node's address goes there: every node is
    /// reached by its address on the bridge, whatever kind of machine it is.
    pub fn ensure_host_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
        let report = hostnet::ensure(&self.bridge, &hostnet::owner_tag(&self.state_dir), self.gateway, routes)?;
        let addresses: Vec<_> = self.nodes.iter().map(|node| node.address).collect();
        hostnet::verify_on_bridge(&self.bridge, &addresses)?;
        Ok(report)
    }

    /// Makes `STATE/machines` and lets only root into it: the node directories hold
    /// the nodes' private keys. The error is a message for the caller's context.
    pub fn create_machines_dir(&self) -> Result<PathBuf, String> {
        let machines = self.machines_dir();
        fs::create_dir_all(&machines).map_err(|error| format!("cannot create {}: {error}", machines.display()))?;
        fs::set_permissions(&machines, fs::Permissions::from_mode(0o700))
            .map_err(|error| format!("cannot restrict {}: {error}", machines.display()))?;
        Ok(machines)
    }

    /// The nodes with a directory in `STATE/machines`, sorted.
    pub fn nodes_on_disk(&self) -> Vec<String> {
        system::subdirectories(&self.machines_dir())
    }

    /// Every node of the lab (`Machines::known_nodes`): the topology's, in its order,
    /// then those of `on_disk` that the topology does not name (any more).
    pub fn known_nodes(&self, on_disk: Vec<String>) -> Vec<String> {
        let mut nodes: Vec<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        for node in on_disk {
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        nodes
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

impl Requirement {
    /// Root: the backends make machines, bridges, routes and mounts.
    pub fn root() -> Requirement {
        Requirement {
            what: "root (machines, bridges, routes and mounts need it)".into(),
            met: system::running_as_root(),
            package: None,
            fix: "run as root, e.g. `sudo -E cargo lab up`".into(),
        }
    }

    /// A program the backend runs, found on the PATH, from the Debian package
    /// `package`; `why` says what the backend uses it for.
    pub fn program(program: &str, why: &str, package: &str) -> Requirement {
        Requirement {
            what: format!("{program} ({why})"),
            met: system::program_exists(program),
            package: Some(package.to_string()),
            fix: format!("apt-get install {package}"),
        }
    }
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
    #[error(
        "the libvirt backend is not built into this `lab`: build it with `--features libvirt` \
         (e.g. `cargo lab-libvirt up`, which is `cargo run --package lab --features libvirt -- up`; \
         it needs the Debian packages libvirt-dev and pkg-config), or use another backend"
    )]
    LibvirtNotBuilt,
    #[error(
        "state dir {} holds lab {lab}, not {requested}; to work on {lab}, pass its topology \
         (`--topology {}` is the copy `lab up` recorded), else run `lab destroy` or set LAB_DIR",
        .state_dir.display(),
        StateDir::new(.state_dir).topology_record().display()
    )]
    StateDirTaken { state_dir: PathBuf, lab: String, requested: String },
    #[error(
        "lab {lab} in {} runs on the {recorded} backend, not {requested}; use `--backend {recorded}` \
         (or `lab destroy` it first)",
        .state_dir.display()
    )]
    OtherBackend { state_dir: PathBuf, lab: String, recorded: String, requested: Backend },
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

    /// Makes every node of `nodes` exist and run (`create_or_start`), all at once,
    /// and calls `done` for each node as it finishes. Returns every node's outcome in
    /// the order of `nodes`, failures included: one node's failure stops no other.
    fn start_all(
        &self,
        nodes: &[NodeSpec],
        image: &NodeImage,
        authorized_key: &str,
        done: &NodeDone<'_, StartOutcome>,
    ) -> NodeOutcomes<StartOutcome> {
        for_each_node(
            nodes.iter().map(|node| node.name.as_str()),
            |name| {
                let node = nodes.iter().find(|node| node.name == name).expect("a node of `nodes`");
                self.create_or_start(node, image, authorized_key)
            },
            done,
        )
    }

    /// Shuts `node` down, keeping its disk.
    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError>;

    /// Shuts every node of `nodes` down (`stop`), all at once, calling `done` for each
    /// as it finishes; every node's outcome in the order of `nodes`.
    fn stop_all(&self, nodes: &[String], done: &NodeDone<'_, StopOutcome>) -> NodeOutcomes<StopOutcome> {
        for_each_node(nodes.iter().map(String::as_str), |name| self.stop(name), done)
    }

    fn status(&self, node: &str) -> Result<MachineState, MachineError>;

    /// Every node the lab has: the topology's, and any other with a disk in the
    /// state directory (a node since removed from the topology).
    fn known_nodes(&self) -> Vec<String>;

    /// The node's console output of its current or last boot, when the backend keeps one.
    fn console_log(&self, node: &str) -> Option<PathBuf>;

    /// What the backend is doing right now, in one line, for the progress reports of
    /// a long start; `None` where it has nothing to add to "starting".
    fn activity(&self) -> Option<String> {
        None
    }

    /// Whether `remove_node` can take one machine out of a running lab.
    fn removes_nodes(&self) -> bool {
        false
    }

    /// Removes the machine of `node`, which the topology no longer has: powered off,
    /// its disk and runtime files gone. Returns what could not be removed. Only called
    /// where `removes_nodes` says it can.
    fn remove_node(&self, node: &str) -> Vec<Leftover> {
        vec![Leftover::new(
            format!("machine {node}"),
            format!("the {} backend cannot remove one machine", self.backend()),
        )]
    }

    /// Removes every machine, their disks and runtime files, and the lab network.
    /// Returns what could not be removed (empty when everything went).
    fn destroy(&self) -> Vec<Leftover>;

    /// How many times slower than the host itself these machines run: the
    /// factor for every timeout that waits on a node (booting, readiness checks).
    fn time_scale(&self) -> u32 {
        1
    }

    /// How long a machine's console may stay quiet while it boots before the boot
    /// counts as hung (`boot_watch`); `None` where boots do not hang that way.
    fn hung_boot_after(&self) -> Option<Duration> {
        None
    }

    /// Resets the running machine of `node` at once, as its reset button would: for
    /// a boot that hung. Only called where `hung_boot_after` is `Some`.
    fn reset(&self, node: &str) -> Result<(), MachineError> {
        Err(MachineError::Node {
            node: node.into(),
            message: format!("the {} backend cannot reset a machine", self.backend()),
        })
    }

    /// The memory `node` uses now, in bytes: its working set (what it could not give
    /// back without swapping), or `None` where the backend cannot tell.
    fn memory_bytes(&self, _node: &str) -> Option<u64> {
        None
    }
}

/// Called as each node's part of a lab-wide operation ends: the node, its outcome
/// and how long it took.
pub type NodeDone<'a, T> = dyn Fn(&str, &Result<T, MachineError>, Duration) + Sync + 'a;

/// Every node's outcome of a lab-wide operation, by node name, in the order asked.
pub type NodeOutcomes<T> = Vec<(String, Result<T, MachineError>)>;

/// Runs `operation` for every node in a thread of its own and calls `done` with
/// each outcome and how long it took as soon as it is known.
fn for_each_node<'a, T: Send>(
    nodes: impl Iterator<Item = &'a str>,
    operation: impl Fn(&str) -> Result<T, MachineError> + Sync,
    done: &NodeDone<'_, T>,
) -> NodeOutcomes<T> {
    let operation = &operation;
    std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .map(|name| {
                let handle = scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let outcome = operation(name);
                    done(name, &outcome, started.elapsed());
                    outcome
                });
                (name, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                let outcome = handle.join().unwrap_or_else(|_| {
                    Err(MachineError::Node { node: name.to_string(), message: "its operation panicked".into() })
                });
                (name.to_string(), outcome)
            })
            .collect()
    })
}

/// A cgroup's working set in bytes, as kubelet reckons it: the memory charged to the
/// cgroup less the file cache it could drop at once (`total_inactive_file` in cgroup
/// v1's `memory.stat`, `inactive_file` in v2's). `usage` is `memory.usage_in_bytes`
/// (v1) or `memory.current` (v2).
pub fn working_set(usage: &str, stat: &str) -> Option<u64> {
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = stat
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == "total_inactive_file" || *key == "inactive_file")
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// The backend the topology asks for.
pub fn for_lab(backend: Backend, spec: LabSpec) -> Result<Box<dyn Machines>, MachineError> {
    match backend {
        Backend::Nspawn => Ok(Box::new(nspawn::Nspawn::new(spec))),
        #[cfg(feature = "libvirt")]
        Backend::Libvirt => Ok(Box::new(libvirt::Libvirt::new(spec))),
        #[cfg(not(feature = "libvirt"))]
        Backend::Libvirt => Err(MachineError::LibvirtNotBuilt),
        // Vagrant drives libvirt through its own plugin and virsh: no feature needed.
        Backend::Vagrant => Ok(Box::new(vagrant::Vagrant::new(spec))),
    }
}

/// The topology recorded in `state_dir` by the first `lab up`; `None` when the
/// directory holds no lab.
pub fn recorded_topology(state_dir: &Path) -> Result<Option<Topology>, MachineError> {
    let path = StateDir::new(state_dir).topology_record();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MachineError::Record { path, message: error.to_string() }),
    };
    Topology::parse(&text, &path)
        .map(|validated| Some(validated.topology))
        .map_err(|error| MachineError::Record { path, message: error.to_string() })
}

/// Refuses when `state_dir` holds a lab other than `lab`, or `lab` on another
/// backend than `backend` (its machines are that backend's). Writes nothing.
pub fn check_state_dir(state_dir: &Path, lab: &str, backend: Backend) -> Result<(), MachineError> {
    match recorded_lab(&StateDir::new(state_dir).topology_record())? {
        Some((recorded_lab, _)) if recorded_lab != lab => Err(MachineError::StateDirTaken {
            state_dir: state_dir.to_owned(),
            lab: recorded_lab,
            requested: lab.to_string(),
        }),
        Some((lab, recorded)) if recorded != backend.to_string() => {
            Err(MachineError::OtherBackend { state_dir: state_dir.to_owned(), lab, recorded, requested: backend })
        }
        _ => Ok(()),
    }
}

/// Claims `state_dir` for `topology`'s lab: refuses when it holds another lab, and
/// records the topology (again, so the record follows topology edits of the same lab).
pub fn claim_state_dir(state_dir: &Path, topology: &Topology) -> Result<(), MachineError> {
    check_state_dir(state_dir, &topology.name, topology.machines.backend)?;
    let path = StateDir::new(state_dir).topology_record();
    let record_error = |message: String| MachineError::Record { path: path.clone(), message };
    fs::create_dir_all(state_dir).map_err(|error| record_error(format!("cannot create the state dir: {error}")))?;
    let text = toml::to_string_pretty(topology).map_err(|error| record_error(error.to_string()))?;
    let header = "# Written by `lab up`: the topology this state directory's lab was made from.\n\
                  # `lab destroy` reads it; edit lab.toml, not this file.\n\n";
    system::write_atomically(&path, format!("{header}{text}").as_bytes(), 0o644)
        .map_err(|error| record_error(error.to_string()))
}

/// The image a node's disk was made from, as `record` names it (a path on one line);
/// where there is no record yet, `current`, recorded now. A node keeps that image for
/// good: its disk only makes sense on top of it. The error is a message for the
/// caller's context.
fn disk_image(record: &Path, current: &Path) -> Result<PathBuf, String> {
    match fs::read_to_string(record) {
        Ok(recorded) => Ok(PathBuf::from(recorded.trim())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            system::write_atomically(record, format!("{}\n", current.display()).as_bytes(), 0o644)
                .map_err(|error| format!("cannot write {}: {error}", record.display()))?;
            Ok(current.to_owned())
        }
        Err(error) => Err(format!("cannot read {}: {error}", record.display())),
    }
}

/// The lab name and backend in a topology record, read leniently: a record written
/// by another version of the lab may no longer validate, but its name still says
/// whose it is.
fn recorded_lab(path: &Path) -> Result<Option<(String, String)>, MachineError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MachineError::Record { path: path.to_owned(), message: error.to_string() }),
    };
    let table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| MachineError::Record { path: path.to_owned(), message: error.to_string() })?;
    let backend = table
        .get("machines")
        .and_then(|machines| machines.get("backend"))
        .and_then(toml::Value::as_str)
        .unwrap_or("nspawn")
        .to_string();
    match table.get("name").and_then(toml::Value::as_str) {
        Some(name) => Ok(Some((name.to_string(), backend))),
        None => {
            Err(MachineError::Record { path: path.to_owned(), message: "it names no lab (`name` is missing)".into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_set_leaves_out_the_inactive_file_cache() {
        let v1 = "cache 600\nrss 300\ntotal_cache 600\ntotal_inactive_file 250\n";
        assert_eq!(working_set("1000\n", v1), Some(750));
        assert_eq!(working_set("1000", "anon 400\nfile 600\ninactive_file 100\n"), Some(900));
        assert_eq!(working_set("100", "total_inactive_file 250\n"), Some(0));
        assert_eq!(working_set("max", ""), None);
    }

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
            format!(
                "state dir {} holds lab one, not two; to work on one, pass its topology (`--topology {}` is \
                 the copy `lab up` recorded), else run `lab destroy` or set LAB_DIR",
                state.path().display(),
                StateDir::new(state.path()).topology_record().display()
            )
        );

        let mut on_vms = topology("one");
        on_vms.machines.backend = Backend::Libvirt;
        let error = check_state_dir(state.path(), &on_vms.name, on_vms.machines.backend)
            .expect_err("the same lab on another backend");
        assert_eq!(
            error.to_string(),
            format!(
                "lab one in {} runs on the nspawn backend, not libvirt; use `--backend nspawn` \
                 (or `lab destroy` it first)",
                state.path().display()
            )
        );
    }

    #[test]
    fn lab_spec_names_the_bridge_after_the_lab() {
        let spec = LabSpec::from_topology(&topology("tiny"), Path::new("/state"), Path::new("/cache"));
        assert_eq!(spec.bridge, "lab-tiny");
        assert_eq!(spec.gateway.to_string(), "10.249.0.1/24");
        assert_eq!(
            spec.nodes,
            vec![NodeSpec {
                name: "solo".into(),
                address: Ipv4Addr::new(10, 249, 0, 11),
                roles: vec![Role::Etcd, Role::Master, Role::Lb, Role::Worker],
                size: MachineSize::CONTROLLER,
                preload: Vec::new(),
            }]
        );
        assert_eq!(spec.machines_dir(), Path::new("/state/machines"));
    }

    #[cfg(not(feature = "libvirt"))]
    #[test]
    fn without_the_feature_libvirt_is_refused_with_the_build_command() {
        let spec = LabSpec::from_topology(&topology("tiny"), Path::new("/state"), Path::new("/cache"));
        let error = for_lab(Backend::Libvirt, spec).err().expect("libvirt is not built");
        assert!(error.to_string().contains("--features libvirt"), "{error}");
    }

    #[test]
    fn machine_sizes_follow_roles_unless_the_topology_sets_them() {
        let mut lab = topology("tiny");
        lab.nodes[0].roles = vec![Role::Worker];
        assert_eq!(NodeSpec::of(&lab.nodes[0]).size, MachineSize::WORKER);
        lab.nodes[0].roles = vec![Role::Etcd];
        assert_eq!(NodeSpec::of(&lab.nodes[0]).size, MachineSize::CONTROLLER);
        lab.nodes[0].resources = Some(crate::topology::Resources { cpus: Some(4), memory_mib: None });
        assert_eq!(NodeSpec::of(&lab.nodes[0]).size, MachineSize { cpus: 4, memory_mib: 3072 });
    }
}
