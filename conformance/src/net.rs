//! Where the suite may send packets, and TCP probes.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::Ipv4Net;
use provisioner::topology::Network;

/// Why an address may not be sent to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UnsafeTarget {
    #[error("{address} is not in the lab's ranges ({ranges}); the suite sends nothing there")]
    OutsideLab { address: IpAddr, ranges: String },
    #[error("{address} would leave through `{route}`, not the lab bridge {bridge}; the suite sends nothing there")]
    OffBridge { address: IpAddr, route: String, bridge: String },
    #[error("cannot ask the host's routes for {address} (`ip route get`): {message}")]
    RouteUnknown { address: IpAddr, message: String },
}

/// The lab's address ranges and bridge, with the addresses already checked.
pub struct Targets {
    bridge: String,
    ranges: Vec<Ipv4Net>,
    checked: Mutex<BTreeSet<IpAddr>>,
}

impl Targets {
    pub fn new(bridge: &str, network: &Network) -> Self {
        Targets {
            bridge: bridge.to_string(),
            // The virtual IP lies inside the node subnet (the topology checks that).
            ranges: vec![network.node_subnet, network.pod_cidr, network.service_cidr],
            checked: Mutex::new(BTreeSet::new()),
        }
    }

    /// Allows loopback, and a lab address whose route (`ip route get`) goes out through the
    /// lab's bridge. Each address is asked once.
    pub fn allow(&self, address: IpAddr) -> Result<(), UnsafeTarget> {
        if address.is_loopback() {
            return Ok(());
        }
        let inside = match address {
            IpAddr::V4(v4) => self.ranges.iter().any(|range| range.contains(&v4)),
            IpAddr::V6(_) => false,
        };
        if !inside {
            let ranges = self.ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(UnsafeTarget::OutsideLab { address, ranges });
        }
        let mut checked = self.checked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if checked.contains(&address) {
            return Ok(());
        }
        let route = route_to(address)?;
        if output_device(&route) != Some(self.bridge.as_str()) {
            return Err(UnsafeTarget::OffBridge { address, route, bridge: self.bridge.clone() });
        }
        checked.insert(address);
        Ok(())
    }
}

/// The first line of `ip route get ADDRESS`, e.g. `10.32.0.10 via 10.240.0.21 dev lab-k8s src 10.240.0.1 uid 0`.
fn route_to(address: IpAddr) -> Result<String, UnsafeTarget> {
    let unknown = |message: String| UnsafeTarget::RouteUnknown { address, message };
    let output = Command::new("ip")
        .args(["route", "get", &address.to_string()])
        .output()
        .map_err(|error| unknown(format!("cannot run ip: {error}")))?;
    if !output.status.success() {
        return Err(unknown(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().next().unwrap_or_default().trim().to_string())
}

/// The word after `dev` in a route.
fn output_device(route: &str) -> Option<&str> {
    let mut words = route.split_whitespace();
    words.find(|word| *word == "dev")?;
    words.next()
}

/// What one TCP connection attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// The handshake completed: something listens, and nothing filters it.
    Open,
    /// The node's TCP stack answered with a reset: nothing listens, but the packet got
    /// through every filter.
    Refused,
    /// A filter rejected the packet (firewalld answers with ICMP "administratively
    /// prohibited", which connect(2) reports as "no route to host").
    Rejected,
    /// No answer within the timeout: dropped somewhere, or the node is gone.
    TimedOut,
}

impl PortState {
    /// Whether the packet got past every filter to the node's TCP stack.
    pub fn reached_node(self) -> bool {
        matches!(self, PortState::Open | PortState::Refused)
    }
}

pub(crate) async fn probe_tcp(address: Ipv4Addr, port: u16, timeout: Duration) -> PortState {
    let target = SocketAddr::from((address, port));
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_stream)) => PortState::Open,
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => PortState::Refused,
        Ok(Err(_)) => PortState::Rejected,
        Err(_) => PortState::TimedOut,
    }
}

/// A listening TCP socket on a node, as `ss -ltnpH` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The local address as `ss` shows it, without brackets or an interface suffix:
    /// `127.0.0.1`, `::1`, `10.240.0.21`, `0.0.0.0`, `::`, or `*` (every address).
    pub address: String,
    pub port: u16,
    /// The processes holding the socket (`kubelet (pid 812)`), empty if `ss` did not say.
    pub process: String,
}

impl Listener {
    /// Whether only the node itself can connect: the address is a loopback address.
    pub fn on_loopback_only(&self) -> bool {
        self.address.parse::<IpAddr>().is_ok_and(|address| address.to_canonical().is_loopback())
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let process = if self.process.is_empty() { "process unknown" } else { self.process.as_str() };
        write!(f, "{}:{} ({process})", self.address, self.port)
    }
}

/// Parses the output of `ss -ltnpH` (no header), e.g.
/// `LISTEN 0 4096 127.0.0.1:10248 0.0.0.0:* users:(("kubelet",pid=812,fd=21))`.
pub(crate) fn parse_listeners(output: &str) -> Result<Vec<Listener>, String> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let unexpected = || format!("unexpected line from `ss -ltnpH`: {line:?}");
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(3).ok_or_else(unexpected)?;
            let (address, port) = local.rsplit_once(':').ok_or_else(unexpected)?;
            let port = port.parse().map_err(|_| unexpected())?;
            // `127.0.0.53%lo`, `[fe80::1]%host0`: the interface a socket is bound to.
            let address = address.split('%').next().unwrap_or_default();
            let address = address.trim_start_matches('[').trim_end_matches(']').to_string();
            let process = fields.get(5..).map(|rest| processes(&rest.join(" "))).unwrap_or_default();
            Ok(Listener { address, port, process })
        })
        .collect()
}

/// `kubelet (pid 812)` from `users:(("kubelet",pid=812,fd=21))`, comma-separated when
/// several processes share the socket.
fn processes(users: &str) -> String {
    users
        .split("(\"")
        .skip(1)
        .filter_map(|entry| {
            let (name, rest) = entry.split_once('"')?;
            let pid = rest.split("pid=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?;
            Some(format!("{name} (pid {pid})"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_the_word_after_dev() {
        let route = "10.32.0.10 via 10.240.0.21 dev lab-k8s src 10.240.0.1 uid 0";
        assert_eq!(output_device(route), Some("lab-k8s"));
        assert_eq!(output_device("local 127.0.0.1 dev lo table local src 127.0.0.1"), Some("lo"));
        assert_eq!(output_device("unreachable 10.1.2.3"), None);
    }

    #[test]
    fn addresses_outside_the_lab_are_refused_without_asking_the_routes() {
        let network: Network = toml_network();
        let targets = Targets::new("lab-k8s", &network);
        let error = targets.allow("192.0.2.1".parse().unwrap()).unwrap_err();
        assert!(matches!(error, UnsafeTarget::OutsideLab { .. }), "{error}");
        assert!(targets.allow("127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn listeners_are_parsed_from_ss_with_their_address_and_process() {
        let output = "LISTEN 0      4096   127.0.0.1:10248 0.0.0.0:* users:((\"kubelet\",pid=812,fd=21))\n\
                      LISTEN 0      4096           *:10249       *:* users:((\"kube-proxy\",pid=90,fd=9))\n\
                      LISTEN 0      128         [::]:22       [::]:* users:((\"sshd\",pid=94,fd=4),(\"sshd\",pid=95,fd=4))\n\
                      LISTEN 0      4096       [::1]:10257    [::]:*\n\
                      LISTEN 0      4096 127.0.0.53%lo:53    0.0.0.0:*\n";
        let listeners = parse_listeners(output).unwrap();
        let seen: Vec<(&str, u16, &str, bool)> = listeners
            .iter()
            .map(|listener| {
                (listener.address.as_str(), listener.port, listener.process.as_str(), listener.on_loopback_only())
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("127.0.0.1", 10248, "kubelet (pid 812)", true),
                ("*", 10249, "kube-proxy (pid 90)", false),
                ("::", 22, "sshd (pid 94), sshd (pid 95)", false),
                ("::1", 10257, "", true),
                ("127.0.0.53", 53, "", true),
            ]
        );
        assert!(parse_listeners("LISTEN 0 4096").is_err());
        assert!(!Listener { address: "0.0.0.0".into(), port: 1, process: String::new() }.on_loopback_only());
        assert!(!Listener { address: "10.240.0.21".into(), port: 1, process: String::new() }.on_loopback_only());
    }

    fn toml_network() -> Network {
        let text = std::fs::read_to_string(crate::workspace_root().join("lab.toml")).unwrap();
        let topology = provisioner::topology::Topology::parse(&text, "lab.toml".as_ref()).unwrap().topology;
        topology.network
    }
}
