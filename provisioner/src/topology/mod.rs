//! The lab's typed topology: what `lab.toml` may say, and the rules it must obey.
//!
//! Parsing is strict (`deny_unknown_fields`) so that a typo is an error with a line
//! number rather than a silently ignored setting. Semantic validation then checks
//! the relations between fields (addresses inside the subnet, CIDRs that do not
//! overlap, at least one member of each role, ...) and reports every problem at
//! once, each naming the field and the bad value (`validate`).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod change;
mod validate;

pub use validate::{first_service_ip, Problem, TopologyError, Validated};

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
    /// vagrant only: a box to use instead of the one `lab` builds from the node image,
    /// e.g. one published on Vagrant Cloud (`vagrant` fetches it, so it needs the
    /// internet). It must boot by itself and carry what the lab's image carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vagrant_box: Option<String>,
}

impl Machines {
    /// Whether the nodes may run under software emulation, many times slower than
    /// the host: VMs not forced onto KVM. Components with tight timing (leader
    /// election) are given more time on them.
    pub fn may_be_emulated(&self) -> bool {
        self.backend != Backend::Nspawn && self.acceleration != Acceleration::Kvm
    }
}

impl Default for Machines {
    fn default() -> Self {
        Machines { backend: Backend::Nspawn, acceleration: Acceleration::Auto, vagrant_box: None }
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
    #[serde(deserialize_with = "deserialize_cidr")]
    pub node_subnet: Ipv4Net,
    /// The host's address on the lab bridge.
    #[serde(deserialize_with = "deserialize_address")]
    pub gateway: Ipv4Addr,
    /// keepalived's virtual IP in front of the apiservers.
    #[serde(deserialize_with = "deserialize_address")]
    pub vip: Ipv4Addr,
    /// Port HAProxy listens on at the VIP.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Port every kube-apiserver listens on at its own address.
    #[serde(default = "default_apiserver_port")]
    pub apiserver_port: u16,
    /// Cluster-wide pod range; each worker gets a /24 of it.
    #[serde(deserialize_with = "deserialize_cidr")]
    pub pod_cidr: Ipv4Net,
    /// Service ClusterIP range.
    #[serde(deserialize_with = "deserialize_cidr")]
    pub service_cidr: Ipv4Net,
    /// ClusterIP of the DNS addon's Service.
    #[serde(deserialize_with = "deserialize_address")]
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
    #[serde(deserialize_with = "deserialize_address")]
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

/// Reads an IPv4 address, with a message that shows the text and the expected form.
fn deserialize_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ipv4Addr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IPv4 address (four numbers 0-255 joined by dots, e.g. \"10.240.0.11\")"
        ))
    })
}

/// Reads an IPv4 CIDR. ipnet's own message ("invalid IP address syntax") says neither
/// which part is wrong nor what the right form is, so each part is checked here.
fn deserialize_cidr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ipv4Net, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_cidr(&text).map_err(serde::de::Error::custom)
}

fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR: expected ADDRESS/PREFIX, e.g. \"10.240.0.0/24\""))?;
    let address: Ipv4Addr =
        address.parse().map_err(|_| format!("{text:?} is not a CIDR: {address:?} is not an IPv4 address"))?;
    let prefix =
        prefix.parse::<u8>().ok().filter(|length| *length <= 32).ok_or_else(|| {
            format!("{text:?} is not a CIDR: the prefix length {prefix:?} must be a number from 0 to 32")
        })?;
    Ipv4Net::new(address, prefix).map_err(|error| format!("{text:?} is not a CIDR: {error}"))
}
