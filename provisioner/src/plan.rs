//! The pure planner: from a validated topology, the lab's PKI and the artifacts
//! manifest it computes every address, certificate, file, unit and command per node,
//! in handbook stage order.
//!
//! Invariant: nothing in this module (or in `stages`) does I/O. The executor makes
//! reality match a `Plan` and has no choices left to make.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::pki::{Bundle, CertificateSpec};
use crate::stages;
use crate::topology::{Role, Topology};

/// The handbook's chapters, in the order `lab up` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Hosts,
    Pki,
    Etcd,
    AdminKubeconfig,
    PodNetwork,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    LoadBalancer,
    Keepalived,
    ContainerRuntime,
    Kubelet,
    KubeProxy,
    DnsAddon,
    Firewall,
}

impl Stage {
    pub const ALL: [Stage; 15] = [
        Stage::Hosts,
        Stage::Pki,
        Stage::Etcd,
        Stage::AdminKubeconfig,
        Stage::PodNetwork,
        Stage::KubeApiserver,
        Stage::KubeControllerManager,
        Stage::KubeScheduler,
        Stage::LoadBalancer,
        Stage::Keepalived,
        Stage::ContainerRuntime,
        Stage::Kubelet,
        Stage::KubeProxy,
        Stage::DnsAddon,
        Stage::Firewall,
    ];

    /// The kebab-case name used on the command line (`--until kube-apiserver`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Hosts => "hosts",
            Stage::Pki => "pki",
            Stage::Etcd => "etcd",
            Stage::AdminKubeconfig => "admin-kubeconfig",
            Stage::PodNetwork => "pod-network",
            Stage::KubeApiserver => "kube-apiserver",
            Stage::KubeControllerManager => "kube-controller-manager",
            Stage::KubeScheduler => "kube-scheduler",
            Stage::LoadBalancer => "load-balancer",
            Stage::Keepalived => "keepalived",
            Stage::ContainerRuntime => "container-runtime",
            Stage::Kubelet => "kubelet",
            Stage::KubeProxy => "kube-proxy",
            Stage::DnsAddon => "dns-addon",
            Stage::Firewall => "firewall",
        }
    }

    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything `lab up` will do, computed ahead of time.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub lab: String,
    pub network: NetworkPlan,
    pub nodes: Vec<NodeSummary>,
    /// Every certificate the lab issues, with its subject and SANs.
    pub certificates: Vec<CertificateSpec>,
    pub stages: Vec<StagePlan>,
}

/// The lab's addresses as the host sees them.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    /// Name of the lab bridge on the host.
    pub bridge: String,
    /// The host's address on the bridge, with the node subnet's prefix.
    pub gateway: Ipv4Net,
    pub vip: Ipv4Addr,
    pub api_server_url: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_dns_ip: Ipv4Addr,
    pub cluster_domain: String,
    /// Routes the host installs onto the bridge before sending anything to a lab range.
    pub host_routes: Vec<HostRoute>,
}

/// A host route that keeps a lab range on the lab's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRoute {
    pub destination: Ipv4Net,
    /// Next hops on the bridge: none for a range that is on-link (the node subnet),
    /// one for a worker's pod range, several for the service range (a multipath
    /// route: the kernel spreads flows over them and skips a node that stopped
    /// answering ARP).
    pub via: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<Role>,
    pub aliases: Vec<String>,
    /// The node's /24 of the cluster pod range (workers only).
    pub pod_cidr: Option<Ipv4Net>,
}

/// One handbook chapter: what it puts on each node, then how it proves it worked.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: Stage,
    /// Which handbook section this stage follows.
    pub chapter: &'static str,
    /// Per node, in topology order; nodes the stage does not touch are absent.
    pub nodes: Vec<NodeActions>,
    /// Files the stage writes on the host, under the lab state directory.
    pub local_files: Vec<FileSpec>,
}

impl StagePlan {
    pub fn new(stage: Stage, chapter: &'static str) -> Self {
        StagePlan { stage, chapter, nodes: Vec::new(), local_files: Vec::new() }
    }

    /// The actions for `node`, created empty on first use so stage code can add to it.
    pub fn node(&mut self, node: &str) -> &mut NodeActions {
        if let Some(index) = self.nodes.iter().position(|actions| actions.node == node) {
            return &mut self.nodes[index];
        }
        self.nodes.push(NodeActions { node: node.to_string(), ..NodeActions::default() });
        self.nodes.last_mut().expect("just pushed")
    }
}

/// What one stage does on one node, in this order: files, units, commands, checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeActions {
    pub node: String,
    pub files: Vec<FileSpec>,
    pub units: Vec<UnitSpec>,
    pub commands: Vec<CommandSpec>,
    pub checks: Vec<CheckSpec>,
}

/// A file with its exact bytes, mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub path: String,
    #[serde(serialize_with = "serialize_mode")]
    pub mode: u32,
    pub owner: String,
    pub content: Content,
}

impl FileSpec {
    /// A root-owned text file.
    pub fn text(path: impl Into<String>, mode: u32, content: impl Into<String>) -> Self {
        FileSpec { path: path.into(), mode, owner: "root".into(), content: Content::Text(content.into()) }
    }

    /// A root-owned file whose content must never be printed (private keys, tokens).
    pub fn secret(path: impl Into<String>, content: impl Into<String>) -> Self {
        FileSpec { path: path.into(), mode: 0o600, owner: "root".into(), content: Content::Secret(content.into()) }
    }
}

fn serialize_mode<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{mode:04o}"))
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Content {
    Text(String),
    /// Like `Text`, but redacted whenever a plan is printed.
    #[serde(serialize_with = "serialize_redacted")]
    Secret(String),
    /// A local file from the artifacts cache (binaries, image archives), by path (the executor hashes it).
    Artifact {
        path: PathBuf,
    },
}

fn serialize_redacted<S: serde::Serializer>(_secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<redacted>")
}

/// A systemd unit the stage wants enabled and running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitSpec {
    /// e.g. `etcd.service`.
    pub name: String,
    /// Paths (from this or earlier stages) whose change means the unit must restart.
    pub restart_when_changed: Vec<String>,
}

/// A shell command run on the node with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    /// What the command does, for progress output and errors.
    pub description: String,
    pub script: String,
    pub when: RunWhen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunWhen {
    /// Every time the stage runs; the script itself must be idempotent.
    Always,
    /// Only when one of the stage's files on this node changed.
    FilesChanged,
}

/// A readiness check: the script is retried until it exits 0 or the timeout passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckSpec {
    pub description: String,
    pub script: String,
    pub timeout_secs: u64,
}

/// What the planner needs besides the topology. Built by the caller; pure data.
pub struct PlanInputs<'a> {
    pub topology: &'a Topology,
    pub pki: &'a Bundle,
    pub artifacts: &'a Artifacts,
    /// Absolute path of the lab state directory, for files written on the host.
    pub state_dir: PathBuf,
}

/// Derived facts every stage uses: computed once so stages agree on them.
pub struct Context<'a> {
    pub topology: &'a Topology,
    pub pki: &'a Bundle,
    pub artifacts: &'a Artifacts,
    pub state_dir: PathBuf,
    /// Each worker's /24 of the pod range, by node name.
    pub pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// `https://VIP:API_PORT`, the address every client uses.
    pub api_server_url: String,
}

/// The handbook's pod range plan: the workers, in topology order, get consecutive
/// /24s of the cluster pod range (worker1 10.200.0.0/24, worker2 10.200.1.0/24).
pub fn pod_cidrs(topology: &Topology) -> BTreeMap<String, Ipv4Net> {
    let base = u32::from(topology.network.pod_cidr.network());
    topology
        .nodes_with(Role::Worker)
        .enumerate()
        .map(|(index, node)| {
            let network = Ipv4Addr::from(base + ((index as u32) << 8));
            (node.name.clone(), Ipv4Net::new(network, 24).expect("24 is a valid prefix"))
        })
        .collect()
}

impl<'a> Context<'a> {
    pub fn new(inputs: &PlanInputs<'a>) -> Self {
        let topology = inputs.topology;
        let pod_cidrs = pod_cidrs(topology);
        let api_server_url = format!("https://{}:{}", topology.network.vip, topology.network.api_port);
        Context {
            topology,
            pki: inputs.pki,
            artifacts: inputs.artifacts,
            state_dir: inputs.state_dir.clone(),
            pod_cidrs,
            api_server_url,
        }
    }

    /// `https://ADDRESS:APISERVER_PORT` of one master's own apiserver.
    pub fn apiserver_url_of(&self, address: Ipv4Addr) -> String {
        format!("https://{}:{}", address, self.topology.network.apiserver_port)
    }

    /// `https://ADDRESS:2379` for every etcd member, comma-separated, in topology order.
    pub fn etcd_client_urls(&self) -> String {
        self.topology
            .nodes_with(Role::Etcd)
            .map(|node| format!("https://{}:2379", node.address))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Computes the whole plan. Pure: same inputs, same plan.
pub fn build(inputs: &PlanInputs<'_>) -> Plan {
    let context = Context::new(inputs);
    let topology = inputs.topology;
    let network = &topology.network;

    let mut host_routes = vec![
        HostRoute { destination: network.node_subnet, via: Vec::new() },
        // The service range has no owner node: every node running kube-proxy answers
        // for it. Routing it over all of them keeps Services reachable from the host
        // when one node is stopped or its kube-proxy is rebuilding its rules.
        HostRoute {
            destination: network.service_cidr,
            via: topology
                .nodes
                .iter()
                .filter(|node| stages::kube_proxy::runs_on(node))
                .map(|node| node.address)
                .collect(),
        },
    ];
    for node in topology.nodes_with(Role::Worker) {
        host_routes.push(HostRoute { destination: context.pod_cidrs[&node.name], via: vec![node.address] });
    }

    let nodes = topology
        .nodes
        .iter()
        .map(|node| NodeSummary {
            name: node.name.clone(),
            address: node.address,
            roles: node.roles.clone(),
            aliases: node.aliases.clone(),
            pod_cidr: context.pod_cidrs.get(&node.name).copied(),
        })
        .collect();

    Plan {
        lab: topology.name.clone(),
        network: NetworkPlan {
            bridge: bridge_name(&topology.name),
            gateway: Ipv4Net::new(network.gateway, network.node_subnet.prefix_len()).expect("prefix from a net"),
            vip: network.vip,
            api_server_url: context.api_server_url.clone(),
            pod_cidr: network.pod_cidr,
            service_cidr: network.service_cidr,
            cluster_dns_ip: network.cluster_dns,
            cluster_domain: network.cluster_domain.clone(),
            host_routes,
        },
        nodes,
        certificates: crate::pki::specs(topology),
        stages: stages::plan_all(&context),
    }
}

/// The host bridge's name: interface names are at most 15 bytes.
pub fn bridge_name(lab: &str) -> String {
    format!("lab-{lab}")
}
