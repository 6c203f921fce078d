//! `LabStatus`: what `lab status --json` prints and the conformance suite reads. One
//! type for both sides, so they cannot drift. Its field names are a public contract:
//! they stay; fields may be added (with a serde default, so older output still reads).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::machines::MachineState;
use crate::topology::{Backend, Role};

/// The lab's public state: its nodes, addresses and the files a user needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub lab: String,
    pub backend: Backend,
    pub state_dir: PathBuf,
    /// The host bridge every lab address is routed onto.
    pub bridge: String,
    /// The host's address on the bridge.
    pub gateway: Ipv4Addr,
    pub nodes: Vec<NodeStatus>,
    pub vip: Ipv4Addr,
    pub api_server_url: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_dns_ip: Ipv4Addr,
    pub cluster_domain: String,
    pub kubeconfig: PathBuf,
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    /// How many times slower than the host the lab's machines run (1 unless emulated).
    #[serde(default = "host_speed")]
    pub time_scale: u32,
    /// The nodes' working sets together, when every node's is known.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// One node in `LabStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<Role>,
    pub state: MachineState,
    /// The node's working set, where the backend can tell.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// The node's pod range as the plan gives it (workers only).
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Net>,
}

/// The time scale of a lab whose status does not say: machines at the host's speed.
fn host_speed() -> u32 {
    1
}

impl LabStatus {
    /// The lab's text form, as `lab status` prints it.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(text, "lab {} ({} backend, state in {})", self.lab, self.backend, self.state_dir.display());
        let _ = writeln!(text, "  {:<10} {:<15} {:<8} roles", "node", "address", "state");
        for node in &self.nodes {
            let roles = node.roles.iter().map(Role::to_string).collect::<Vec<_>>().join(",");
            let _ = writeln!(text, "  {:<10} {:<15} {:<8} {roles}", node.name, node.address, node.state.to_string());
        }
        if let Some(bytes) = self.memory_bytes {
            let _ =
                writeln!(text, "memory      {:.2} GiB (the nodes' working sets)", bytes as f64 / (1u64 << 30) as f64);
        }
        let _ = writeln!(text, "api server  {}", self.api_server_url);
        let _ = writeln!(text, "kubeconfig  {}", self.kubeconfig.display());
        let _ = write!(text, "ssh key     {} (user {}; or `lab ssh NODE`)", self.ssh_key.display(), self.ssh_user);
        text
    }
}
