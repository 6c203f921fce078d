//! The lab's typed topology: what `lab.toml` may say, and the rules it must obey.
//!
//! Parsing is strict (`deny_unknown_fields`) so that a typo is an error with a line
//! number rather than a silently ignored setting. Semantic validation then checks
//! the relations between fields (addresses inside the subnet, CIDRs that do not
//! overlap, at least one member of each role, ...) and reports every problem at
//! once, each naming the field and the bad value.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A whole lab: its machines, network, Kubernetes build and nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Short name of the lab; prefixes every host-side object (bridge, machines).
    pub name: String,
    #[serde(default)]
    pub machines: Machines,
    #[serde(default)]
    pub kubernetes: Kubernetes,
    pub network: Network,
    #[serde(default)]
    pub addons: Addons,
    /// The nodes, in the order stages visit them.
    #[serde(rename = "node", default)]
    pub nodes: Vec<Node>,
}

/// Which kind of machine carries the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machines {
    #[serde(default)]
    pub backend: Backend,
    /// libvirt only: whether guests use KVM or software emulation.
    #[serde(default)]
    pub acceleration: Acceleration,
}

impl Default for Machines {
    fn default() -> Self {
        Machines { backend: Backend::Nspawn, acceleration: Acceleration::Auto }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// systemd-nspawn containers: no KVM needed.
    #[default]
    Nspawn,
    /// libvirt domains through the `virt` crate.
    Libvirt,
    /// Vagrant with the vagrant-libvirt provider.
    Vagrant,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nspawn => "nspawn",
            Backend::Libvirt => "libvirt",
            Backend::Vagrant => "vagrant",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acceleration {
    /// KVM when /dev/kvm runs a guest, software emulation otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Which Kubernetes build the nodes run, and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Version without the leading `v`, e.g. `1.20.2`.
    #[serde(default = "default_kubernetes_version")]
    pub version: String,
    #[serde(default)]
    pub source: ArtifactSource,
    /// With `source = "dir"`: the directory holding the binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

fn default_kubernetes_version() -> String {
    "1.20.2".to_string()
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes { version: default_kubernetes_version(), source: ArtifactSource::default(), dir: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactSource {
    /// Built offline from Debian's `kubernetes` source package with Debian's Go.
    #[default]
    DebianSource,
    /// Official release archives, checksums verified (needs internet access).
    Release,
    /// Prebuilt binaries in `kubernetes.dir`.
    Dir,
}

impl fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactSource::DebianSource => "debian-source",
            ArtifactSource::Release => "release",
            ArtifactSource::Dir => "dir",
        })
    }
}

/// Every address range of the lab. All of them are routed onto the lab's own bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The subnet the nodes live on, e.g. `10.240.0.0/24`.
    pub node_subnet: Ipv4Net,
    /// The host's address on the lab bridge.
    pub gateway: Ipv4Addr,
    /// keepalived's virtual IP in front of the apiservers.
    pub vip: Ipv4Addr,
    /// Port HAProxy listens on at the VIP.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Port every kube-apiserver listens on at its own address.
    #[serde(default = "default_apiserver_port")]
    pub apiserver_port: u16,
    /// Cluster-wide pod range; each worker gets a /24 of it.
    pub pod_cidr: Ipv4Net,
    /// Service ClusterIP range.
    pub service_cidr: Ipv4Net,
    /// ClusterIP of the DNS addon's Service.
    pub cluster_dns: Ipv4Addr,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// NodePort range, `FIRST-LAST`.
    #[serde(default)]
    pub node_port_range: PortRange,
    #[serde(default)]
    pub pod_network: PodNetwork,
}

fn default_api_port() -> u16 {
    8443
}
fn default_apiserver_port() -> u16 {
    6443
}
fn default_cluster_domain() -> String {
    "cluster.local".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodNetwork {
    /// Static routes between the nodes' pod ranges with the CNI bridge plugin (offline).
    #[default]
    Routes,
    /// A static VXLAN overlay between nodes (offline).
    Vxlan,
    /// flannel, for hosts that can pull its image.
    Flannel,
}

/// An inclusive port range written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { first: 30000, last: 32767 }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (first, last) =
            text.split_once('-').ok_or_else(|| format!("port range {text:?} is not of the form FIRST-LAST"))?;
        let parse = |part: &str| {
            part.trim().parse::<u16>().map_err(|_| format!("port range {text:?}: {part:?} is not a port number"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first == 0 || first > last {
            return Err(format!("port range {text:?} must be FIRST-LAST with 0 < FIRST <= LAST"));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Cluster add-ons.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addons {
    #[serde(default)]
    pub dns: DnsAddon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsAddon {
    /// The workspace's own DNS server, built into a local image (offline).
    #[default]
    LabDns,
    /// The official CoreDNS image, for hosts that can pull images.
    Coredns,
}

/// One machine of the lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<Role>,
    /// Extra names for /etc/hosts on every node (the handbook's etcd1..3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

impl Node {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs an etcd member.
    Etcd,
    /// Runs kube-apiserver, kube-controller-manager and kube-scheduler.
    Master,
    /// Runs HAProxy and keepalived in front of the apiservers (needs `master`).
    Lb,
    /// Runs containerd, kubelet and kube-proxy.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Etcd => "etcd",
            Role::Master => "master",
            Role::Lb => "lb",
            Role::Worker => "worker",
        })
    }
}

/// Optional machine sizing; backends that cannot limit resources ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
}

/// Why a topology could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid topology {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid topology {path}:\n{}", format_problems(.problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|problem| format!("  - {problem}")).collect::<Vec<_>>().join("\n")
}

/// One broken rule: the field, its value and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Dotted path of the field, e.g. `node[2].address` or `network.vip`.
    pub field: String,
    /// The offending value as written.
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.message)
    }
}

/// A topology that parsed and passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Validated {
    pub topology: Topology,
    pub warnings: Vec<Problem>,
}

impl Topology {
    /// Reads, parses and validates a topology file.
    pub fn load(path: &Path) -> Result<Validated, TopologyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Validated, TopologyError> {
        let topology: Topology = toml::from_str(text)
            .map_err(|error| TopologyError::Syntax { path: path.to_owned(), message: error.to_string() })?;
        let (problems, warnings) = topology.check();
        if problems.is_empty() {
            Ok(Validated { topology, warnings })
        } else {
            Err(TopologyError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// The nodes that carry `role`, in topology order.
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().filter(move |node| node.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Applies every semantic rule and returns `(errors, warnings)`.
    pub fn check(&self) -> (Vec<Problem>, Vec<Problem>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let problem = |list: &mut Vec<Problem>, field: String, value: String, message: String| {
            list.push(Problem { field, value, message });
        };
        let net = &self.network;

        if !is_dns_label(&self.name) || self.name.len() > 8 {
            problem(
                &mut errors,
                "name".into(),
                quoted(&self.name),
                "must be 1-8 lowercase letters, digits or '-' (it prefixes host interface names)".into(),
            );
        }

        // Address ranges: each must be sane on its own, then none may overlap another.
        let ranges = [
            ("network.node_subnet", net.node_subnet),
            ("network.pod_cidr", net.pod_cidr),
            ("network.service_cidr", net.service_cidr),
        ];
        for (field, range) in ranges {
            if range.addr() != range.network() {
                problem(
                    &mut errors,
                    field.into(),
                    quoted(&range.to_string()),
                    format!("has host bits set; did you mean {}?", range.trunc()),
                );
            }
        }
        for (index, (field_a, a)) in ranges.iter().enumerate() {
            for (field_b, b) in &ranges[index + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    problem(
                        &mut errors,
                        field_b.to_string(),
                        quoted(&b.to_string()),
                        format!("overlaps {field_a} {a}"),
                    );
                }
            }
        }
        if net.node_subnet.prefix_len() > 29 {
            problem(
                &mut errors,
                "network.node_subnet".into(),
                quoted(&net.node_subnet.to_string()),
                "is too small for a gateway, a VIP and nodes (use /29 or larger)".into(),
            );
        }
        if net.pod_cidr.prefix_len() > 23 {
            problem(
                &mut errors,
                "network.pod_cidr".into(),
                quoted(&net.pod_cidr.to_string()),
                "must hold at least two /24 node ranges (use /23 or larger)".into(),
            );
        } else {
            let capacity = 1usize << (24 - net.pod_cidr.prefix_len());
            let workers = self.nodes_with(Role::Worker).count();
            if workers > capacity {
                problem(
                    &mut errors,
                    "network.pod_cidr".into(),
                    quoted(&net.pod_cidr.to_string()),
                    format!("holds {capacity} node /24 ranges but the lab has {workers} workers"),
                );
            }
        }
        let usable = |address: Ipv4Addr| {
            net.node_subnet.contains(&address)
                && address != net.node_subnet.network()
                && address != net.node_subnet.broadcast()
        };
        if !usable(net.gateway) {
            problem(
                &mut errors,
                "network.gateway".into(),
                quoted(&net.gateway.to_string()),
                format!("must be a host address inside network.node_subnet {}", net.node_subnet),
            );
        }
        if !usable(net.vip) {
            problem(
                &mut errors,
                "network.vip".into(),
                quoted(&net.vip.to_string()),
                format!("must be a host address inside network.node_subnet {}", net.node_subnet),
            );
        } else if net.vip == net.gateway {
            problem(&mut errors, "network.vip".into(), quoted(&net.vip.to_string()), "equals network.gateway".into());
        }
        if !net.service_cidr.contains(&net.cluster_dns)
            || net.cluster_dns == net.service_cidr.network()
            || net.cluster_dns == net.service_cidr.broadcast()
        {
            problem(
                &mut errors,
                "network.cluster_dns".into(),
                quoted(&net.cluster_dns.to_string()),
                format!("must be a host address inside network.service_cidr {}", net.service_cidr),
            );
        } else if net.cluster_dns == first_service_ip(net.service_cidr) {
            problem(
                &mut errors,
                "network.cluster_dns".into(),
                quoted(&net.cluster_dns.to_string()),
                "is the first service IP, which the `kubernetes` Service takes".into(),
            );
        }
        if !net.cluster_domain.split('.').all(is_dns_label) {
            problem(
                &mut errors,
                "network.cluster_domain".into(),
                quoted(&net.cluster_domain),
                "must be a DNS name of lowercase labels".into(),
            );
        }
        if net.api_port == 0 || net.apiserver_port == 0 {
            problem(
                &mut errors,
                "network.api_port".into(),
                format!("{}/{}", net.api_port, net.apiserver_port),
                "ports must not be 0".into(),
            );
        }
        for (field, port) in [("network.api_port", net.api_port), ("network.apiserver_port", net.apiserver_port)] {
            if (net.node_port_range.first..=net.node_port_range.last).contains(&port) {
                problem(
                    &mut errors,
                    field.into(),
                    port.to_string(),
                    format!("lies inside network.node_port_range {}", net.node_port_range),
                );
            }
        }
        if net.api_port == net.apiserver_port {
            problem(
                &mut errors,
                "network.api_port".into(),
                net.api_port.to_string(),
                "must differ from network.apiserver_port: HAProxy and kube-apiserver share the masters".into(),
            );
        }

        if self.kubernetes.source == ArtifactSource::Dir && self.kubernetes.dir.is_none() {
            problem(
                &mut errors,
                "kubernetes.dir".into(),
                "(missing)".into(),
                "is required when kubernetes.source = \"dir\"".into(),
            );
        }
        if self.kubernetes.version.starts_with('v') || self.kubernetes.version.split('.').count() != 3 {
            problem(
                &mut errors,
                "kubernetes.version".into(),
                quoted(&self.kubernetes.version),
                "must be MAJOR.MINOR.PATCH without a leading v, e.g. \"1.20.2\"".into(),
            );
        }

        // Nodes.
        if self.nodes.is_empty() {
            problem(&mut errors, "node".into(), "[]".into(), "the lab has no node; add [[node]] tables".into());
        }
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let field = |name: &str| format!("node[{index}].{name}");
            if !is_dns_label(&node.name) {
                problem(
                    &mut errors,
                    field("name"),
                    quoted(&node.name),
                    "must be a lowercase DNS label (letters, digits, '-')".into(),
                );
            }
            if !names.insert(node.name.clone()) {
                problem(&mut errors, field("name"), quoted(&node.name), "is used by another node".into());
            }
            for alias in &node.aliases {
                if !is_dns_label(alias) {
                    problem(&mut errors, field("aliases"), quoted(alias), "must be a lowercase DNS label".into());
                }
                if !names.insert(alias.clone()) {
                    problem(&mut errors, field("aliases"), quoted(alias), "is used by another node or alias".into());
                }
            }
            let address = node.address;
            if !addresses.insert(address) {
                problem(&mut errors, field("address"), quoted(&address.to_string()), "is used by another node".into());
            }
            if !usable(address) {
                problem(
                    &mut errors,
                    field("address"),
                    quoted(&address.to_string()),
                    format!("lies outside network.node_subnet {}", net.node_subnet),
                );
            } else if address == net.gateway {
                problem(
                    &mut errors,
                    field("address"),
                    quoted(&address.to_string()),
                    "equals network.gateway (the host's address on the lab bridge)".into(),
                );
            } else if address == net.vip {
                problem(&mut errors, field("address"), quoted(&address.to_string()), "equals network.vip".into());
            }
            if node.roles.is_empty() {
                problem(
                    &mut errors,
                    field("roles"),
                    "[]".into(),
                    "a node needs at least one of etcd, master, lb, worker".into(),
                );
            }
            if node.has(Role::Lb) && !node.has(Role::Master) {
                problem(
                    &mut errors,
                    field("roles"),
                    format!("{:?}", node.roles.iter().map(Role::to_string).collect::<Vec<_>>()),
                    "lb needs master on the same node: HAProxy balances the masters' apiservers".into(),
                );
            }
        }

        let etcd_members = self.nodes_with(Role::Etcd).count();
        if !self.nodes.is_empty() {
            for (role, what) in [(Role::Etcd, "etcd member"), (Role::Master, "master"), (Role::Worker, "worker")] {
                if self.nodes_with(role).count() == 0 {
                    problem(
                        &mut errors,
                        "node[].roles".into(),
                        format!("(no {role})"),
                        format!("the lab needs at least one {what}"),
                    );
                }
            }
            if etcd_members > 0 && etcd_members % 2 == 0 {
                problem(
                    &mut warnings,
                    "node[].roles".into(),
                    format!("({etcd_members} etcd members)"),
                    "an even number of etcd members tolerates no more failures than one fewer".into(),
                );
            }
            if self.nodes_with(Role::Lb).count() == 0 && self.nodes_with(Role::Master).count() > 0 {
                problem(
                    &mut errors,
                    "node[].roles".into(),
                    "(no lb)".into(),
                    "the lab needs at least one lb node to carry network.vip".into(),
                );
            }
        }
        (errors, warnings)
    }
}

/// The first address of the service range, which the `kubernetes` Service always takes.
pub fn first_service_ip(service_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.network()) + 1)
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}
