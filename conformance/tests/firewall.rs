//! The firewall (handbook 000 section 10.1): firewalld runs on every node and lets in from
//! the node subnet exactly the ports of the lab's port table for the node's roles
//! (`provisioner::stages::firewall::open_ports`). Behind it, the health and metrics ports
//! that no other machine needs listen on loopback only, so that they stay private on a
//! node whose firewall is down.
//!
//! The host probes TCP ports only: a UDP probe cannot tell a filtered port from a quiet one.
//! VRRP, the one non-TCP opening on masters, is exercised by the virtual IP tests.

use std::time::Duration;

use conformance::{lab, Listener, PortState};
use futures::future::join_all;
use provisioner::stages::firewall::{self, Opening, Transport};
use provisioner::stages::{etcd, kube_proxy, kubelet};
use provisioner::topology::Node;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A port no component uses, probed on every node.
const UNUSED_PORT: u16 = 12345;
/// Ports that listen on loopback only (the controller manager's and scheduler's HTTPS
/// ports and HAProxy's answers to componentstatuses' probes of them, the kubelet's and
/// kube-proxy's health and metrics): from the node subnet they must be filtered like
/// any other, and on the node nothing may listen on them on another address.
const LOOPBACK_ONLY_PORTS: [u16; 6] = [10248, 10249, 10251, 10252, 10257, 10259];

/// firewalld is running on every node, with the lab's zone as the default.
///
/// Turn it red: `cargo lab break firewalld-stopped`.
#[test]
fn firewalld_runs_on_every_node() {
    let lab = lab();
    // Every node at once: each `firewall-cmd` starts Python, about 0.3 s.
    let answers: Vec<(String, String)> = std::thread::scope(|scope| {
        let asks: Vec<_> = lab
            .topology
            .nodes
            .iter()
            .map(|node| {
                scope.spawn(move || {
                    let output = lab
                        .try_sh(&node.name, "firewall-cmd --state 2>&1; firewall-cmd --get-default-zone 2>&1")
                        .unwrap_or_else(|error| panic!("{error}"));
                    (node.name.clone(), output.stdout)
                })
            })
            .collect();
        asks.into_iter().map(|ask| ask.join().expect("a node's question panicked")).collect()
    });
    let mut problems = Vec::new();
    for (node, stdout) in &answers {
        let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
        if lines != ["running", firewall::ZONE] {
            problems.push(format!("{node}: {}", lines.join(" / ")));
        }
    }
    assert!(
        problems.is_empty(),
        "firewalld is not running with the {} zone on:\n{}",
        firewall::ZONE,
        problems.join("\n")
    );
}

/// What a probe of one port must find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A documented port with a listener behind it: the handshake completes.
    Listening,
    /// A documented port in the NodePort range: it reaches the node, where a port no Service
    /// uses answers with a reset.
    Reachable,
    /// Any other port: the firewall rejects it before the node's TCP stack sees it.
    Filtered,
}

impl Expect {
    fn accepts(self, state: PortState) -> bool {
        match self {
            Expect::Listening => state == PortState::Open,
            Expect::Reachable => state.reached_node(),
            Expect::Filtered => matches!(state, PortState::Rejected | PortState::TimedOut),
        }
    }
}

/// The probes for one node: each TCP opening of its roles (single ports, and the first and
/// last port of a range), then the ports other roles open, the loopback-only ports and an
/// unused one, wherever the node's own table does not open them.
fn probes_for(node: &Node) -> Vec<(u16, Expect)> {
    let network = &lab().topology.network;
    let node_ports = network.node_port_range.first..=network.node_port_range.last;
    let mut probes = Vec::new();
    let mut open = Vec::new();
    for rule in firewall::open_ports(node, network) {
        if let Opening::Ports { first, last, transport: Transport::Tcp } = rule.opening {
            open.push(first..=last);
            for port in if first == last { vec![first] } else { vec![first, last] } {
                probes.push((port, if node_ports.contains(&port) { Expect::Reachable } else { Expect::Listening }));
            }
        }
    }
    let mut others = vec![
        etcd::CLIENT_PORT,
        etcd::PEER_PORT,
        network.apiserver_port,
        network.api_port,
        kubelet::API_PORT,
        kube_proxy::HEALTHZ_PORT,
        network.node_port_range.first,
        UNUSED_PORT,
    ];
    others.extend(LOOPBACK_ONLY_PORTS);
    others.sort_unstable();
    others.dedup();
    for port in others {
        if !open.iter().any(|range| range.contains(&port)) {
            probes.push((port, Expect::Filtered));
        }
    }
    probes
}

/// From the host (on the node subnet), each node lets through exactly its documented TCP
/// ports: every documented port reaches the node (single ports must have their listener;
/// in the NodePort range a reset from an unused port counts), and every other port probed
/// is rejected by the firewall, not merely closed.
///
/// The probed ports are the node's own openings and, for every other port, a sample: the
/// ports the other roles open, the loopback-only ports and one unused port (12345). A port
/// opened in the zone by hand is seen only if it is one of those.
///
/// Turn it red: `cargo lab break unlisted-port-open` (a port of that sample opened in
/// firewalld's zone on one node), or `cargo lab break firewalld-stopped` (the node's closed
/// ports then answer with resets instead of being rejected).
#[test]
fn reachable_ports_equal_the_port_table() {
    let lab = lab();
    let probes: Vec<(&Node, u16, Expect)> = lab
        .topology
        .nodes
        .iter()
        .flat_map(|node| probes_for(node).into_iter().map(move |(port, expect)| (node, port, expect)))
        .collect();
    let states =
        lab.block_on(join_all(probes.iter().map(|(node, port, _)| lab.probe(node.address, *port, PROBE_TIMEOUT))));

    let problems: Vec<String> = probes
        .iter()
        .zip(states)
        .filter(|((_, _, expect), state)| !expect.accepts(*state))
        .map(|((node, port, expect), state)| format!("{} port {port}: {state:?}, expected {expect:?}", node.name))
        .collect();
    assert!(problems.is_empty(), "ports that differ from the firewall's table:\n{}", problems.join("\n"));
    eprintln!("probed {} TCP ports on {} nodes", probes.len(), lab.topology.nodes.len());
}

/// On every node, nothing listens on a loopback-only port (`LOOPBACK_ONLY_PORTS`) on any
/// address but loopback: the components bind them to 127.0.0.1 (`--bind-address`,
/// `healthzBindAddress`, `metricsBindAddress`), so they stay private even where the
/// firewall is down. Read from `ss` on the node, since from the node subnet the firewall
/// hides a wrong binding.
///
/// Turn it red: `cargo lab break loopback-port-on-all-addresses` (e.g. one kube-proxy with
/// `metricsBindAddress: 0.0.0.0:10249`).
#[test]
fn health_and_metrics_ports_listen_on_loopback_only() {
    let lab = lab();
    let listening: Vec<(&str, Vec<Listener>)> = std::thread::scope(|scope| {
        let asks: Vec<_> = lab
            .topology
            .nodes
            .iter()
            .map(|node| scope.spawn(move || (node.name.as_str(), lab.listeners(&node.name))))
            .collect();
        asks.into_iter().map(|ask| ask.join().expect("a node's question panicked")).collect()
    });
    let mut problems = Vec::new();
    let mut on_loopback = Vec::new();
    for (node, listeners) in &listening {
        // SSH listens on every node (the suite asked through it): an empty list means `ss`
        // showed nothing, and the check below would pass without looking.
        if listeners.is_empty() {
            problems.push(format!("{node}: `ss -ltnpH` lists no listening socket at all"));
        }
        for listener in listeners.iter().filter(|listener| LOOPBACK_ONLY_PORTS.contains(&listener.port)) {
            if listener.on_loopback_only() {
                on_loopback.push(format!("{node} {}", listener.port));
            } else {
                problems.push(format!("{node}: port {} listens on {listener}", listener.port));
            }
        }
    }
    assert!(problems.is_empty(), "loopback-only ports reachable from other machines:\n{}", problems.join("\n"));
    eprintln!("loopback-only ports listening on loopback: {}", on_loopback.join(", "));
}
