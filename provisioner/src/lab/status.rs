//! `LabStatus`: what `lab status --json` prints and the conformance suite reads. One
//! type for both sides, so they cannot drift. Its field names are a public contract:
//! they stay; fields may be added (with a serde default, so older output still reads).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::faults::InForce;
use crate::machines::MachineState;
use crate::plan::Stage;
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
    /// What the running lab answered when asked; `None` when no node runs, so
    /// nothing was asked.
    #[serde(default)]
    pub probes: Option<Probes>,
    /// The faults `lab break` injected and no `lab restore` undid yet.
    #[serde(default)]
    pub faults: Vec<InForce>,
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

/// What one probe found, or why it cannot tell: `{"known": VALUE}` or
/// `{"unknown": "REASON"}` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probed<T> {
    Known(T),
    /// The probe could not tell (a node that did not answer in time, a missing
    /// certificate, a route that does not lead to the lab bridge), and why.
    Unknown(String),
}

/// What `lab status` asked the running lab. Every probe is bounded in time and
/// fails alone: one that cannot tell is `Unknown` with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// `GET /healthz` through the virtual IP, with the admin's certificate.
    pub api: Probed<ApiHealth>,
    /// The load balancers whose interface holds the virtual IP now: normally one,
    /// none while it moves, two in a split brain.
    pub vip_holders: Probed<Vec<String>>,
    /// The etcd member the cluster follows; `None` when no member knows a leader.
    pub etcd_leader: Probed<Option<String>>,
    /// The last stage in handbook order up to which every node of every stage holds
    /// the record a stage leaves once its checks passed there (and no mark of a run
    /// that stopped half way); `None` before the first stage. The records are read,
    /// not re-checked: `lab up` compares them with the plan.
    pub converged_stage: Probed<Option<Stage>>,
}

/// The API's answer to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiHealth {
    /// Whether it answered 200 `ok`.
    pub healthy: bool,
    /// What it answered: `ok`, or the HTTP status and the checks that failed.
    pub answer: String,
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
        match &self.probes {
            Some(probes) => self.write_probes(&mut text, probes),
            None => {
                let _ = writeln!(text, "api server  {}", self.api_server_url);
                let _ = writeln!(text, "machines    none runs, so nothing was asked (`lab up` starts them)");
            }
        }
        let time_scale = match self.time_scale {
            1 => "1 (the machines run at the host's speed)".to_string(),
            scale => format!("{scale} (emulated machines: the lab's timeouts are {scale} times longer)"),
        };
        let _ = writeln!(text, "time scale  {time_scale}");
        if self.faults.is_empty() {
            let _ = writeln!(text, "faults      none in force");
        }
        for (index, fault) in self.faults.iter().enumerate() {
            let label = if index == 0 { "faults" } else { "" };
            let _ = writeln!(
                text,
                "{label:<11} {}: {} (`lab restore {}` undoes it)",
                fault.fault, fault.summary, fault.fault
            );
        }
        let _ = writeln!(text, "kubeconfig  {}", self.kubeconfig.display());
        let _ = write!(text, "ssh key     {} (user {}; or `lab ssh NODE`)", self.ssh_key.display(), self.ssh_user);
        text
    }

    fn write_probes(&self, text: &mut String, probes: &Probes) {
        use std::fmt::Write as _;
        let api = show(&probes.api, |health| {
            let verdict = if health.healthy { "healthy" } else { "unhealthy" };
            format!("{verdict} ({})", health.answer)
        });
        let _ = writeln!(text, "api server  {}: {api}", self.api_server_url);
        let holders = show(&probes.vip_holders, |holders| match holders.as_slice() {
            [] => "held by no node".to_string(),
            [holder] => format!("on {holder}"),
            several => format!("on {} at once (split brain)", several.join(" and ")),
        });
        let _ = writeln!(text, "vip         {} {holders}", self.vip);
        let leader = show(&probes.etcd_leader, |leader| match leader {
            Some(member) => member.clone(),
            None => "none (no member knows a leader)".to_string(),
        });
        let _ = writeln!(text, "etcd leader {leader}");
        let converged = show(&probes.converged_stage, |stage| match stage {
            Some(stage) => {
                let number = Stage::ALL.iter().position(|known| known == stage).map_or(0, |index| index + 1);
                format!("through {} ({number} of {} in handbook order)", stage.name(), Stage::ALL.len())
            }
            None => "no stage yet".to_string(),
        });
        let _ = writeln!(text, "converged   {converged}");
    }
}

/// A probe's finding in words, or `unknown: REASON`.
fn show<T>(probed: &Probed<T>, known: impl Fn(&T) -> String) -> String {
    match probed {
        Probed::Known(value) => known(value),
        Probed::Unknown(reason) => format!("unknown: {reason}"),
    }
}
