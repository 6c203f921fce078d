//! Handbook 000 section 10.1: turn the firewall (firewalld) back on.
//!
//! The handbook switches firewalld off at the start so that nothing gets in the way
//! while the cluster is being built, and turns it back on as the last step, opening
//! only what each role needs. This stage does the same on every node, last.
//!
//! The rules come from one table, `port_table`: every port with the role that needs it,
//! the component behind it and why. The zone files are rendered from it, README shows
//! it, and the conformance suite probes exactly these ports (and checks that others
//! are filtered). Ports that only the node itself uses stay on loopback and need no
//! rule: the controller manager's and scheduler's HTTPS ports (10257, 10259) and
//! HAProxy's answers to componentstatuses' probes of them (10252, 10251), the
//! kubelet's /healthz (10248), kube-proxy's metrics (10249) and HAProxy's monitor.
//! firewalld never filters loopback.
//!
//! Three zones are involved:
//!
//! - `k8s-lab`, the default zone, holds the node interface: everything arriving from
//!   the node subnet (other nodes and the host) is rejected unless `port_table` opens
//!   it for this node's roles. ICMP stays allowed, so ping works.
//! - `trusted` (workers only) holds the pod bridge `cni0` and, as a source, the whole
//!   pod range: pod traffic is accepted wherever it arrives (pods on other workers come
//!   in through the node interface with their own addresses). firewalld's ACCEPT target
//!   also forwards such traffic, which is what makes pod-to-pod traffic work.
//! - The policy `k8s-lab-to-pods` (workers only) lets the node subnet reach pods
//!   directly (the host, or a master's apiserver calling a webhook), which the
//!   Kubernetes network model requires.
//!
//! Services need no extra rule: kube-proxy translates a Service or NodePort address
//! into a pod's address (DNAT) before filtering happens, and firewalld accepts
//! translated connections in forwarding (`ct status dnat`). The NodePort range is still
//! opened on workers, as the handbook does, for traffic that ends on the node itself.
//!
//! How the two rule sets coexist: Debian 12's `iptables` is iptables-nft, so kube-proxy's
//! and the pod network's rules live in nftables tables named `ip nat` and `ip filter`,
//! while firewalld 1.3 (FirewallBackend=nftables) keeps its rules in its own table
//! `inet firewalld`. A packet must be accepted by every table whose chains it passes,
//! which the zones above ensure for pod, node and Service traffic. But Debian 12's
//! firewalld 1.3.3 still flushes every iptables table (its "direct" backends) whenever
//! it starts or reloads; firewalld learned to skip that flush when no direct rules
//! exist only in later releases. Each start therefore wipes kube-proxy's rules, and
//! kube-proxy notices only at its next periodic check, up to 30 s later. So kube-proxy
//! must start after firewalld has finished loading, which its drop-in below ensures,
//! and the stage's check proves that kube-proxy's rules exist after the last flush.
//!
//! /etc/firewalld/firewalld.conf is Debian's default with one change, `DefaultZone`.

use std::fmt;
use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan, UnitSpec};
use crate::stages::{etcd, kube_proxy, kubelet, pod_network};
use crate::topology::{Network, Node, PodNetwork, Role};

/// The zone of the node interface, and the default zone.
pub const ZONE: &str = "k8s-lab";
/// firewalld's unit, as Debian packages it.
pub const UNIT: &str = "firewalld.service";
/// The policy that lets the node subnet reach pods (workers only).
const POLICY: &str = "k8s-lab-to-pods";
const CONFIG: &str = "/etc/firewalld/firewalld.conf";

/// A transport protocol a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// What a rule lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Opening {
    /// A port, or an inclusive range of ports, of one transport protocol.
    Ports { first: u16, last: u16, transport: Transport },
    /// A whole IP protocol by its /etc/protocols name; VRRP, for one, has no ports.
    Protocol { name: &'static str },
}

impl Opening {
    fn port(port: u16, transport: Transport) -> Self {
        Opening::Ports { first: port, last: port, transport }
    }
}

impl fmt::Display for Opening {
    /// firewalld's notation: `22/tcp`, `30000-32767/udp`, `vrrp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Opening::Ports { first, last, transport } if first == last => write!(f, "{first}/{transport}"),
            Opening::Ports { first, last, transport } => write!(f, "{first}-{last}/{transport}"),
            Opening::Protocol { name } => f.write_str(name),
        }
    }
}

/// Which nodes a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    AllNodes,
    Role(Role),
    /// Every node that runs kube-proxy (masters and workers).
    KubeProxy,
}

impl Scope {
    fn covers(self, node: &Node) -> bool {
        match self {
            Scope::AllNodes => true,
            Scope::Role(role) => node.has(role),
            Scope::KubeProxy => kube_proxy::runs_on(node),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::AllNodes => f.write_str("all nodes"),
            Scope::Role(role) => write!(f, "{role}"),
            Scope::KubeProxy => f.write_str("master, worker"),
        }
    }
}

/// One line of the port table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortRule {
    pub scope: Scope,
    pub opening: Opening,
    /// The program that listens.
    pub component: &'static str,
    /// Who connects, and what for.
    pub reason: &'static str,
}

/// Every port the lab opens, by role: the single source of the zone files, README's
/// table and the conformance suite's probes.
pub fn port_table(network: &Network) -> Vec<PortRule> {
    use Transport::{Tcp, Udp};
    let rule = |scope, opening, component, reason| PortRule { scope, opening, component, reason };
    let worker = Scope::Role(Role::Worker);
    let node_ports = |transport| Opening::Ports {
        first: network.node_port_range.first,
        last: network.node_port_range.last,
        transport,
    };

    let mut table = vec![
        rule(Scope::AllNodes, Opening::port(22, Tcp), "sshd", "the provisioner and `lab ssh` from the host"),
        rule(
            Scope::Role(Role::Etcd),
            Opening::port(etcd::CLIENT_PORT, Tcp),
            "etcd",
            "client API for the apiservers and etcdctl",
        ),
        rule(Scope::Role(Role::Etcd), Opening::port(etcd::PEER_PORT, Tcp), "etcd", "replication between members"),
        rule(
            Scope::Role(Role::Master),
            Opening::port(network.apiserver_port, Tcp),
            "kube-apiserver",
            "each apiserver, reached by HAProxy on every load balancer",
        ),
        rule(
            Scope::Role(Role::Lb),
            Opening::port(network.api_port, Tcp),
            "HAProxy",
            "the API on the virtual IP, for every client",
        ),
        rule(
            Scope::Role(Role::Lb),
            Opening::Protocol { name: "vrrp" },
            "keepalived",
            "VRRP adverts that decide which load balancer holds the virtual IP",
        ),
        rule(
            worker,
            Opening::port(kubelet::API_PORT, Tcp),
            "kubelet",
            "logs, exec and port-forward requests from the apiservers",
        ),
        rule(Scope::KubeProxy, node_ports(Tcp), "kube-proxy", "NodePort Services"),
        rule(Scope::KubeProxy, node_ports(Udp), "kube-proxy", "NodePort Services"),
        rule(
            Scope::KubeProxy,
            Opening::port(kube_proxy::HEALTHZ_PORT, Tcp),
            "kube-proxy",
            "health check for load balancers in front of NodePorts",
        ),
    ];
    match network.pod_network {
        PodNetwork::Routes => {}
        PodNetwork::Vxlan => table.push(rule(
            worker,
            Opening::port(pod_network::VXLAN_PORT, Udp),
            "kernel VXLAN",
            "the static pod overlay between workers",
        )),
        PodNetwork::Flannel => table.push(rule(
            worker,
            Opening::port(pod_network::FLANNEL_VXLAN_PORT, Udp),
            "flannel",
            "flannel's vxlan overlay between workers",
        )),
    }
    table
}

/// The rules that apply to `node`, each opening once, in table order.
pub fn open_ports(node: &Node, network: &Network) -> Vec<PortRule> {
    let mut open: Vec<PortRule> = Vec::new();
    for rule in port_table(network) {
        if rule.scope.covers(node) && open.iter().all(|existing| existing.opening != rule.opening) {
            open.push(rule);
        }
    }
    open
}

/// The port table as a Markdown table, for README.
pub fn port_table_markdown(network: &Network) -> String {
    let mut table = String::from("| Nodes | Port | Component | Why |\n|---|---|---|---|\n");
    for rule in port_table(network) {
        writeln!(table, "| {} | {} | {} | {} |", rule.scope, rule.opening, rule.component, rule.reason)
            .expect("writing to a String");
    }
    table
}

/// kube-proxy's drop-in that makes it start after firewalld has loaded its rules.
const KUBE_PROXY_DROP_IN: &str = "/etc/systemd/system/kube-proxy.service.d/after-firewalld.conf";

fn kube_proxy_drop_in() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# firewalld flushes kube-proxy's iptables rules when it starts: see the firewall stage.
[Unit]
After={UNIT}

[Service]
ExecStartPre=/bin/sh -c 'systemctl is-enabled --quiet {UNIT} || exit 0; \
  for second in $(seq 60); do firewall-cmd --state >/dev/null 2>&1 && exit 0; sleep 1; done'
"
    )
}

/// An nftables table that only makes the node track connections, loaded before
/// firewalld starts. A node without kube-proxy (a separate etcd member) tracks no
/// connections until firewalld loads its rules. But while firewalld starts, it drops
/// every packet that does not belong to a tracked, established connection, and on a
/// loaded host its start takes seconds: an etcd member's streams to its peers, never
/// tracked, went silent for longer than an election timeout, the leader stepped down
/// and every apiserver watch failed with it. A `ct state` match in the node's own
/// namespace makes the kernel track from then on, and a second of heartbeats in both
/// directions makes those streams established before firewalld starts. The table
/// accepts everything and stays; reloading it replaces it.
const TRACK_OPEN_CONNECTIONS: &str = "table inet k8s_lab_conntrack
delete table inet k8s_lab_conntrack
table inet k8s_lab_conntrack {
  chain prerouting { type filter hook prerouting priority -300; policy accept; ct state invalid counter; }
  chain output { type filter hook output priority -300; policy accept; ct state invalid counter; }
}
";

/// Where the firewall stage's connection-tracking setting lives.
const CONNTRACK_SYSCTL: &str = "/etc/sysctl.d/91-k8s-lab-conntrack.conf";

/// Until firewalld loads its rules, a master's network namespace tracks no
/// connections at all. The firewall then meets long-lived connections (kube-proxy's
/// and kubelet's watches through HAProxy) in mid-stream, without the window scaling
/// their handshake announced, classes their larger segments as out of window, and
/// its `ct state invalid drop` rule silently kills them: the watch never ends and
/// never delivers again. Liberal window tracking keeps such connections working,
/// as kube-proxy itself recommends for conntrack trouble.
const CONNTRACK_SETTINGS: &str = "# Written by the k8s lab; `lab up` overwrites local changes.
# Keep connections opened before the firewall started: see the firewall stage.
net.netfilter.nf_conntrack_tcp_be_liberal = 1
";

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let network = &context.topology.network;
    let zone_path = format!("/etc/firewalld/zones/{ZONE}.xml");
    let trusted_path = "/etc/firewalld/zones/trusted.xml".to_string();
    let policy_path = format!("/etc/firewalld/policies/{POLICY}.xml");

    for node in &context.topology.nodes {
        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text(CONNTRACK_SYSCTL, 0o644, CONNTRACK_SETTINGS));
        // Before firewalld starts, so the connections that are open now survive it. A
        // node that runs kube-proxy has tracked its connections since kube-proxy loaded
        // its NAT rules (NAT needs connection tracking), so only a node without it
        // waits the second in which its open streams become tracked.
        let settle = if kube_proxy::runs_on(node) { "" } else { "sleep 1\n" };
        actions.commands.push(CommandSpec {
            description: "let connection tracking adopt open connections".to_string(),
            script: format!(
                "sysctl -q -p {CONNTRACK_SYSCTL} && nft -f - <<'EOF'\n{TRACK_OPEN_CONNECTIONS}EOF\n{settle}"
            ),
            when: RunWhen::FilesChanged,
        });
        actions.files.push(FileSpec::text(CONFIG, 0o644, firewalld_conf()));
        actions.files.push(FileSpec::text(&zone_path, 0o644, zone(node, network)));
        // One `firewall-cmd` call (each costs a Python start, about 0.3 s): it fails
        // unless firewalld runs, and lists each active zone with its interfaces and
        // sources, which must show the node interface in the lab's zone and, on workers,
        // the pod range in `trusted`.
        let mut expected = vec![format!(
            "zone == \"{ZONE}\" && $1 == \"interfaces:\" && index($0 \" \", \" {} \") {{ found++ }}",
            crate::paths::NODE_INTERFACE
        )];
        if node.has(Role::Worker) {
            actions.files.push(FileSpec::text(&trusted_path, 0o644, trusted_zone(network)));
            actions.files.push(FileSpec::text(&policy_path, 0o644, policy()));
            expected.push(format!(
                "zone == \"trusted\" && $1 == \"sources:\" && index($0 \" \", \" {} \") {{ found++ }}",
                network.pod_cidr
            ));
        }
        let check = format!(
            "firewall-cmd --get-active-zones | awk '/^[^ ]/ {{ zone = $1 }} {} END {{ exit found < {} }}'",
            expected.join(" "),
            expected.len()
        );

        // A running firewalld only reads changed zone files on reload; a stopped one
        // reads them when the unit below starts it.
        actions.commands.push(CommandSpec {
            description: "reload firewalld's zones".to_string(),
            script: format!("if systemctl is-active --quiet {UNIT}; then firewall-cmd --reload; fi"),
            when: RunWhen::FilesChanged,
        });
        actions.units.push(UnitSpec {
            name: UNIT.to_string(),
            restart_when_changed: vec![CONFIG.to_string()],
            ..UnitSpec::default()
        });
        actions.checks.push(CheckSpec {
            description: format!("firewalld on {} runs with the {ZONE} zone", node.name),
            script: check,
            timeout_secs: 30,
        });
        if kube_proxy::runs_on(node) {
            // Starting or reloading firewalld flushes every iptables table (see the
            // module's documentation), kube-proxy's rules with them. firewalld reports
            // its unit started as soon as it owns its D-Bus name, before it loads (and
            // flushes) anything, so ordering the units is not enough: kube-proxy's
            // drop-in waits until firewalld says it is running, and kube-proxy is
            // restarted after firewalld here (when the firewall's files changed, or when
            // firewalld was stopped and this stage starts it) and whenever the node
            // boots.
            actions.files.push(FileSpec::text(KUBE_PROXY_DROP_IN, 0o644, kube_proxy_drop_in()));
            let firewall_files = actions.files.iter().map(|file| file.path.clone()).collect();
            actions.units.push(UnitSpec {
                name: kube_proxy::UNIT.to_string(),
                restart_when_changed: firewall_files,
                restart_after_starting: vec![UNIT.to_string()],
            });
            // Proof that the rules are back and stay back (`kube_proxy::serves_services`).
            actions.checks.push(CheckSpec {
                description: format!("Services work on {} with the firewall on", node.name),
                script: kube_proxy::serves_services(network),
                timeout_secs: 90,
            });
        }
        // `lab up` returns only when every worker is Ready, so that a workload applied
        // right after it can land on each, a worker just added included; with the
        // firewall on, which must not cut a kubelet off the apiservers. Checked here,
        // last, rather than when kube-proxy has started: a new kubelet's first status
        // says NotReady (it is posted before its first look at the runtime's pods), the
        // next comes 4 s later (`nodeStatusUpdateFrequency`), and that wait now passes
        // while firewalld starts instead of before. The cluster DNS stage in between
        // needs no Ready check of its own: its pods are ready only on Ready workers.
        if node.has(Role::Worker) {
            actions.checks.push(kubelet::ready_in_the_api(node));
        }
    }
}

/// The node interface's zone with exactly the openings of this node's roles.
fn zone(node: &Node, network: &Network) -> String {
    let roles: Vec<String> = node.roles.iter().map(Role::to_string).collect();
    let mut zone = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<!-- Written by the k8s lab; `lab up` overwrites local changes. -->
<zone>
  <short>k8s lab</short>
  <description>The node subnet on {name} (roles: {roles}): only what these roles serve is open.</description>
  <interface name="{interface}"/>
"#,
        name = node.name,
        roles = roles.join(", "),
        interface = crate::paths::NODE_INTERFACE,
    );
    for rule in open_ports(node, network) {
        let element = match rule.opening {
            Opening::Ports { first, last, transport } if first == last => {
                format!(r#"<port port="{first}" protocol="{transport}"/>"#)
            }
            Opening::Ports { first, last, transport } => {
                format!(r#"<port port="{first}-{last}" protocol="{transport}"/>"#)
            }
            Opening::Protocol { name } => format!(r#"<protocol value="{name}"/>"#),
        };
        writeln!(zone, "  <!-- {}: {} -->\n  {element}", rule.component, rule.reason).expect("writing to a String");
    }
    zone.push_str(
        "  <!-- Forwarding between nodes, e.g. Service traffic that one worker passes to another. -->
  <forward/>
</zone>
",
    );
    zone
}

/// firewalld's `trusted` zone, holding the pods.
fn trusted_zone(network: &Network) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<!-- Written by the k8s lab; `lab up` overwrites local changes. -->
<zone target="ACCEPT">
  <short>Trusted</short>
  <description>All network connections are accepted. The k8s lab puts its pods here: the pod bridge, and the pod range as a source, wherever its packets arrive.</description>
  <interface name="{bridge}"/>
  <source address="{pod_cidr}"/>
  <forward/>
</zone>
"#,
        bridge = pod_network::BRIDGE,
        pod_cidr = network.pod_cidr,
    )
}

/// The policy that lets the node subnet reach the pods.
fn policy() -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<!-- Written by the k8s lab; `lab up` overwrites local changes. -->
<policy target="ACCEPT">
  <short>k8s lab: nodes to pods</short>
  <description>The node subnet (the host, the masters) may reach every pod, as the Kubernetes network model requires.</description>
  <ingress-zone name="{ZONE}"/>
  <egress-zone name="trusted"/>
</policy>
"#
    )
}

/// Debian's firewalld.conf for firewalld 1.3, with the lab's zone as default.
fn firewalld_conf() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# Debian's defaults for firewalld 1.3, except DefaultZone.
DefaultZone={ZONE}
CleanupOnExit=yes
CleanupModulesOnExit=no
Lockdown=no
IPv6_rpfilter=yes
IndividualCalls=no
LogDenied=off
# Rules in firewalld's own nftables table; kube-proxy's iptables-nft tables stay untouched.
FirewallBackend=nftables
FlushAllOnReload=yes
RFC3964_IPv4=yes
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, stage_for, topology};

    fn openings(node: &str) -> Vec<String> {
        let topology = topology("lab.toml");
        let node = topology.node(node).expect("node exists");
        open_ports(node, &topology.network).iter().map(|rule| rule.opening.to_string()).collect()
    }

    #[test]
    fn workers_open_kubelet_and_node_ports_but_not_etcd() {
        assert_eq!(openings("worker1"), ["22/tcp", "10250/tcp", "30000-32767/tcp", "30000-32767/udp", "10256/tcp"]);
        let stage = stage_for("lab.toml", Stage::Firewall);
        let zone = file(&stage, "worker1", "/etc/firewalld/zones/k8s-lab.xml");
        assert!(zone.contains(r#"<port port="10250" protocol="tcp"/>"#));
        assert!(zone.contains(r#"<port port="30000-32767" protocol="udp"/>"#));
        assert!(!zone.contains("2379"));
        assert!(zone.contains(r#"<interface name="host0"/>"#));
    }

    #[test]
    fn controllers_open_etcd_apiserver_haproxy_and_vrrp() {
        assert_eq!(
            openings("master1"),
            [
                "22/tcp",
                "2379/tcp",
                "2380/tcp",
                "6443/tcp",
                "8443/tcp",
                "vrrp",
                "30000-32767/tcp",
                "30000-32767/udp",
                "10256/tcp"
            ]
        );
        let stage = stage_for("lab.toml", Stage::Firewall);
        let zone = file(&stage, "master1", "/etc/firewalld/zones/k8s-lab.xml");
        assert!(zone.contains(r#"<protocol value="vrrp"/>"#));
        assert!(!zone.contains("10250"));
        for loopback_only in ["10251", "10252", "10257", "10259"] {
            assert!(!zone.contains(loopback_only));
        }
    }

    #[test]
    fn pods_are_trusted_on_workers_only() {
        let stage = stage_for("lab.toml", Stage::Firewall);
        let trusted = file(&stage, "worker2", "/etc/firewalld/zones/trusted.xml");
        assert!(trusted.contains(r#"<source address="10.200.0.0/16"/>"#));
        assert!(trusted.contains(r#"<interface name="cni0"/>"#));
        let master = actions_on(&stage, "master1");
        assert!(master.files.iter().all(|file| !file.path.ends_with("trusted.xml")));
        assert!(file(&stage, "worker2", "/etc/firewalld/firewalld.conf").contains("\nDefaultZone=k8s-lab\n"));
    }

    #[test]
    fn overlay_modes_open_their_tunnel_port() {
        let mut topology = topology("lab.toml");
        topology.network.pod_network = PodNetwork::Vxlan;
        let worker = topology.node("worker1").unwrap();
        assert!(open_ports(worker, &topology.network).iter().any(|rule| rule.opening.to_string() == "4789/udp"));
        topology.network.pod_network = PodNetwork::Flannel;
        let worker = topology.node("worker1").unwrap();
        assert!(open_ports(worker, &topology.network).iter().any(|rule| rule.opening.to_string() == "8472/udp"));
    }

    /// The second in which open streams become tracked is waited for only where
    /// nothing tracks them yet: on a separate etcd member, whose peers' streams would
    /// otherwise meet firewalld untracked and be dropped. Everywhere else it would only
    /// slow the stage, and adding a worker, by a second.
    #[test]
    fn only_nodes_without_kube_proxy_wait_for_open_connections_to_be_tracked() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::Firewall);
        for (node, waits) in [("etcd1", true), ("master1", false), ("worker1", false)] {
            let adopt = actions_on(&stage, node)
                .commands
                .iter()
                .find(|command| command.description == "let connection tracking adopt open connections")
                .expect("the firewall stage adopts open connections on every node");
            assert_eq!(adopt.script.lines().any(|line| line == "sleep 1"), waits, "{node}: {}", adopt.script);
        }
    }

    #[test]
    fn the_stage_passes_on_a_worker_only_once_the_worker_is_ready() {
        let stage = stage_for("lab.toml", Stage::Firewall);
        let ready_checks = |node: &str| -> Vec<String> {
            actions_on(&stage, node)
                .checks
                .iter()
                .filter(|check| check.description.ends_with("is Ready in the API"))
                .map(|check| check.script.clone())
                .collect()
        };
        let worker = ready_checks("worker2");
        assert_eq!(worker.len(), 1);
        assert!(worker[0].contains("--kubeconfig /etc/kubernetes/kubelet.kubeconfig"), "{}", worker[0]);
        assert!(worker[0].contains("get node worker2 "), "{}", worker[0]);
        assert!(worker[0].contains(r#"?(@.type=="Ready")].status}')" = True"#), "{}", worker[0]);
        assert!(ready_checks("master1").is_empty(), "a master runs no kubelet");
        let worker_checks = &actions_on(&stage, "worker2").checks;
        assert_eq!(
            worker_checks.last().map(|check| check.description.as_str()),
            Some("worker2 is Ready in the API"),
            "the last check of the last stage"
        );
    }

    #[test]
    fn markdown_table_lists_every_rule() {
        let topology = topology("lab.toml");
        let table = port_table_markdown(&topology.network);
        assert!(table.contains("| etcd | 2380/tcp | etcd | replication between members |\n"));
        assert!(table.contains("| all nodes | 22/tcp | sshd |"));
        assert_eq!(table.lines().count(), 2 + port_table(&topology.network).len());
    }
}
