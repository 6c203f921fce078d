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

    fn toml_network() -> Network {
        let text = std::fs::read_to_string(crate::workspace_root().join("lab.toml")).unwrap();
        let topology = provisioner::topology::Topology::parse(&text, "lab.toml".as_ref()).unwrap().topology;
        topology.network
    }
}
