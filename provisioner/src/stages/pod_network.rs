//! Handbook 000 section 6: the pod network (flannel in the handbook).
//!
//! Kubernetes asks for one flat network: every pod can reach every other pod, and every
//! node every pod, by the pod's own address, without NAT. The plan gives each worker a
//! /24 of the cluster's pod range (`Context::pod_cidrs`); on a worker, the CNI `bridge`
//! plugin puts each new pod on the `cni0` bridge with an address from that /24 (the
//! `host-local` IPAM plugin hands them out), with `cni0` as the pod's gateway. What
//! remains is to carry traffic between the /24s of different workers. The topology's
//! `network.pod_network` picks how:
//!
//! - `routes` (the default, offline): all nodes share one subnet, so a plain route per
//!   worker is enough: "10.200.1.0/24 via worker2's address". A oneshot unit,
//!   `lab-pod-routes.service`, installs them at every boot.
//! - `vxlan` (offline): what flannel's vxlan backend does, written down statically.
//!   Each worker gets a `vxlan0` device; a route sends another worker's /24 into it,
//!   a permanent neighbour entry gives that worker's tunnel MAC, and a forwarding entry
//!   says which node address the MAC lives behind. The kernel then wraps each pod
//!   packet in UDP (port 4789) to that node. Pods get an MTU of 1450 because the
//!   wrapping costs 50 bytes. Nothing here needs flannel's daemon or etcd.
//! - `flannel`: the handbook's choice, for hosts that can pull its images. flanneld
//!   runs as a DaemonSet, reads each node's `spec.podCIDR` (the kubelet stage records
//!   the plan's /24 there), and programs the vxlan tunnel itself. Its manifest is
//!   written here onto the first master, but applied by the kubelet stage, because the
//!   API does not exist yet at this point of the handbook's order.
//!
//! Masters run no pods, but kube-apiserver calls pods (webhooks, `kubectl proxy` to a
//! pod), so in every mode each master gets a plain route to each worker's /24.
//!
//! No pod traffic is masqueraded. The Kubernetes model forbids NAT between pods, so
//! the bridge plugin's `ipMasq` (which would also rewrite traffic to pods on other
//! workers) is off. Traffic from a pod to a node or to the host needs no NAT either:
//! every machine of the lab, the host included, routes each worker's pod range, so
//! answers find their way back. And there is nowhere else for a pod to go, by
//! design: the lab never lets traffic leave its own bridge.
//!
//! containerd reads only the first file in /etc/cni/net.d (its `max_conf_num` is 1) and
//! sets up each pod's loopback interface itself, so no separate loopback configuration
//! is written.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::paths;
use crate::plan::{CheckSpec, Context, FileSpec, NodeActions, StagePlan};
use crate::stages::install_unit;
use crate::topology::{Node, PodNetwork, Role};

/// The oneshot unit that installs routes (and, in vxlan mode, the tunnel) at boot.
pub const ROUTES_UNIT: &str = "lab-pod-routes.service";
/// The oneshot unit that adds the masquerading rule for traffic leaving the pod range.
/// The bridge the CNI bridge plugin (and flannel's delegate) connects pods to.
pub const BRIDGE: &str = "cni0";
/// The tunnel device of the static VXLAN overlay.
pub const VXLAN_DEVICE: &str = "vxlan0";
/// UDP port of the static VXLAN overlay (the IANA port).
pub const VXLAN_PORT: u16 = 4789;
/// UDP port of flannel's vxlan backend (the Linux kernel's historical default).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;
/// VXLAN network identifier of the static overlay.
const VXLAN_ID: u32 = 1;
/// An Ethernet MTU of 1500 minus the 50 bytes of VXLAN, UDP, IP and Ethernet headers.
const VXLAN_MTU: u16 = 1450;
/// The flannel images, pulled from Docker Hub (flannel mode only).
const FLANNEL_IMAGE: &str = "docker.io/flannel/flannel:v0.22.0";
const FLANNEL_CNI_PLUGIN_IMAGE: &str = "docker.io/flannel/flannel-cni-plugin:v1.1.2";

/// Where the first master keeps the flannel manifest (flannel mode only).
pub fn flannel_manifest_path() -> String {
    format!("{}/flannel.yaml", paths::MANIFESTS_DIR)
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let kind = topology.network.pod_network;
    let workers: Vec<Worker> = topology
        .nodes_with(Role::Worker)
        .map(|node| Worker { node, pod_cidr: context.pod_cidrs[&node.name] })
        .collect();

    for node in &topology.nodes {
        let actions = stage.node(&node.name);
        if let Some(this) = workers.iter().find(|worker| worker.node.name == node.name) {
            let others: Vec<&Worker> = workers.iter().filter(|other| other.node.name != node.name).collect();
            match kind {
                PodNetwork::Routes => {
                    bridge_network(actions, this, None);
                    routes(actions, &others);
                }
                PodNetwork::Vxlan => {
                    bridge_network(actions, this, Some(VXLAN_MTU));
                    vxlan(actions, this, &others);
                }
                PodNetwork::Flannel => actions.files.push(FileSpec::text(
                    format!("{}/10-flannel.conflist", paths::CNI_CONF_DIR),
                    0o644,
                    flannel_cni_config(),
                )),
            }
        } else if node.has(Role::Master) {
            routes(actions, &workers.iter().collect::<Vec<_>>());
        }
    }

    if kind == PodNetwork::Flannel {
        if let Some(first_master) = topology.nodes_with(Role::Master).next() {
            stage.node(&first_master.name).files.push(FileSpec::text(
                flannel_manifest_path(),
                0o644,
                flannel_manifest(context),
            ));
        }
    }
    // A stage lists only the nodes it touches; etcd-only nodes get nothing here.
    stage.nodes.retain(|actions| !actions.files.is_empty());
}

/// A worker and its share of the pod range.
struct Worker<'a> {
    node: &'a Node,
    pod_cidr: Ipv4Net,
}

/// The CNI configuration of the bridge plugin for this worker's /24.
///
/// The bridge plugin puts each pod on `cni0` (`isGateway`: the bridge gets the /24's
/// first address and is every pod's default gateway), masquerades nothing (`ipMasq`
/// off, see the module doc) and lets a pod reach
/// itself through a Service address (`hairpinMode`). `host-local` hands out the /24's
/// addresses. The `portmap` plugin serves a container's `hostPort` on the node.
fn bridge_network(actions: &mut NodeActions, this: &Worker<'_>, mtu: Option<u16>) {
    let mtu = mtu.map(|mtu| format!("\n      \"mtu\": {mtu},")).unwrap_or_default();
    let config = format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "k8s-lab",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,{mtu}
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{subnet}" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}]
      }}
    }},
    {{
      "type": "portmap",
      "capabilities": {{ "portMappings": true }}
    }}
  ]
}}
"#,
        subnet = this.pod_cidr,
    );
    actions.files.push(FileSpec::text(format!("{}/10-bridge.conflist", paths::CNI_CONF_DIR), 0o644, config));
}

/// Plain routes to each worker's /24 through that worker's address on the node subnet.
fn routes(actions: &mut NodeActions, targets: &[&Worker<'_>]) {
    if targets.is_empty() {
        return;
    }
    let commands: Vec<String> = targets
        .iter()
        .map(|target| format!("ip route replace {} via {}", target.pod_cidr, target.node.address))
        .collect();
    oneshot_unit(actions, ROUTES_UNIT, "Routes to the workers' pod ranges (k8s lab pod network)", &[], &commands, &[]);
    let checks: Vec<String> = targets
        .iter()
        .map(|target| format!("ip route show {} | grep -q 'via {} '", target.pod_cidr, target.node.address))
        .collect();
    actions.checks.push(CheckSpec {
        description: format!("{} routes every other worker's pod range", actions.node),
        script: checks.join(" && "),
        timeout_secs: 10,
    });
}

/// The static VXLAN overlay: one tunnel device, and per other worker a forwarding
/// entry, a neighbour entry and a route.
fn vxlan(actions: &mut NodeActions, this: &Worker<'_>, others: &[&Worker<'_>]) {
    let mut commands = vec![
        format!(
            "ip link add {VXLAN_DEVICE} address {} type vxlan id {VXLAN_ID} dstport {VXLAN_PORT} local {} nolearning",
            tunnel_mac(this.node.address),
            this.node.address
        ),
        format!("ip link set {VXLAN_DEVICE} mtu {VXLAN_MTU} up"),
        // Like flannel, the tunnel end owns the /24's network address, so that traffic
        // from this node to a remote pod leaves with a pod-range source address and the
        // answer comes back through the tunnel.
        format!("ip address replace {}/32 dev {VXLAN_DEVICE}", this.pod_cidr.network()),
    ];
    for other in others {
        let mac = tunnel_mac(other.node.address);
        let gateway = other.pod_cidr.network();
        commands.push(format!("bridge fdb replace {mac} dev {VXLAN_DEVICE} dst {} self permanent", other.node.address));
        commands.push(format!("ip neigh replace {gateway} lladdr {mac} dev {VXLAN_DEVICE} nud permanent"));
        commands.push(format!("ip route replace {} via {gateway} dev {VXLAN_DEVICE} onlink", other.pod_cidr));
    }
    oneshot_unit(
        actions,
        ROUTES_UNIT,
        "Static VXLAN overlay to the other workers' pod ranges (k8s lab pod network)",
        // Starting from a fresh device drops entries for workers no longer in the topology.
        &[format!("-ip link delete {VXLAN_DEVICE}")],
        &commands,
        &[format!("ip link delete {VXLAN_DEVICE}")],
    );
    let mut check = format!("ip -d link show {VXLAN_DEVICE} | grep -q 'vxlan id {VXLAN_ID} '");
    for other in others {
        write!(check, " && ip route show {} | grep -q 'dev {VXLAN_DEVICE}'", other.pod_cidr)
            .expect("writing to a String");
    }
    actions.checks.push(CheckSpec {
        description: format!("{} tunnels every other worker's pod range", actions.node),
        script: check,
        timeout_secs: 10,
    });
}

/// A stable, locally administered MAC for a node's tunnel end: `0a:58` and the four
/// bytes of its address (the prefix the CNI plugins use for generated MACs).
fn tunnel_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Writes a oneshot unit that runs `commands` at every boot, and asks for it to be
/// enabled, started, and restarted whenever the unit file changes.
fn oneshot_unit(
    actions: &mut NodeActions,
    name: &str,
    description: &str,
    before: &[String],
    commands: &[String],
    stop: &[String],
) {
    let mut unit = format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description={description}
Wants=network-online.target
After=network-online.target
# Pods must not start before their traffic has a way out.
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
"
    );
    for line in before {
        writeln!(unit, "ExecStartPre={line}").expect("writing to a String");
    }
    for line in commands {
        writeln!(unit, "ExecStart={line}").expect("writing to a String");
    }
    for line in stop {
        writeln!(unit, "ExecStop={line}").expect("writing to a String");
    }
    unit.push_str(
        "# Early in boot the node's address may not be configured yet: try again
# (a rule or route that fails now succeeds a few seconds later).
Restart=on-failure
RestartSec=3

[Install]
WantedBy=multi-user.target
",
    );
    install_unit(actions, name, unit, &[]);
}

/// flannel's CNI configuration: its plugin reads the node's /24 from
/// /run/flannel/subnet.env (written by flanneld) and hands the pod to the bridge plugin.
fn flannel_cni_config() -> String {
    r#"{
  "cniVersion": "0.3.1",
  "name": "cbr0",
  "plugins": [
    {
      "type": "flannel",
      "delegate": { "hairpinMode": true, "isDefaultGateway": true }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
"#
    .to_string()
}

/// flannel's DaemonSet and what it needs, after flannel's own kube-flannel.yml.
///
/// Differences from upstream: the CNI configuration comes from this stage rather than
/// from an init container; the flannel CNI binary goes to Debian's plugin directory,
/// where containerd looks; flanneld reaches the API through the virtual IP, which does
/// not depend on kube-proxy; and `--iface` names the node interface, because the nodes
/// have no default route for flannel to guess from.
fn flannel_manifest(context: &Context<'_>) -> String {
    let network = &context.topology.network;
    format!(
        r#"# Written by the k8s lab; `lab up` overwrites local changes.
# flannel for the pod network (handbook 000 section 6); the kubelet stage applies it.
apiVersion: v1
kind: Namespace
metadata:
  name: kube-flannel
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: flannel
  namespace: kube-flannel
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: flannel
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["nodes/status"]
  verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: flannel
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flannel
subjects:
- kind: ServiceAccount
  name: flannel
  namespace: kube-flannel
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  net-conf.json: |
    {{
      "Network": "{pod_cidr}",
      "Backend": {{ "Type": "vxlan" }}
    }}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
  labels:
    app: flannel
spec:
  selector:
    matchLabels:
      app: flannel
  template:
    metadata:
      labels:
        app: flannel
    spec:
      hostNetwork: true
      priorityClassName: system-node-critical
      serviceAccountName: flannel
      tolerations:
      - operator: Exists
        effect: NoSchedule
      initContainers:
      - name: install-cni-plugin
        image: {FLANNEL_CNI_PLUGIN_IMAGE}
        command: ["cp", "-f", "/flannel", "/opt/cni/bin/flannel"]
        volumeMounts:
        - name: cni-plugin
          mountPath: /opt/cni/bin
      containers:
      - name: kube-flannel
        image: {FLANNEL_IMAGE}
        command: ["/opt/bin/flanneld"]
        args: ["--ip-masq", "--kube-subnet-mgr", "--iface={interface}"]
        resources:
          requests:
            cpu: 100m
            memory: 50Mi
        securityContext:
          privileged: false
          capabilities:
            add: ["NET_ADMIN", "NET_RAW"]
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: KUBERNETES_SERVICE_HOST
          value: "{vip}"
        - name: KUBERNETES_SERVICE_PORT
          value: "{api_port}"
        - name: EVENT_QUEUE_DEPTH
          value: "5000"
        volumeMounts:
        - name: run
          mountPath: /run/flannel
        - name: flannel-cfg
          mountPath: /etc/kube-flannel/
        - name: xtables-lock
          mountPath: /run/xtables.lock
      volumes:
      - name: run
        hostPath:
          path: /run/flannel
      - name: cni-plugin
        hostPath:
          path: {cni_bin}
      - name: flannel-cfg
        configMap:
          name: kube-flannel-cfg
      - name: xtables-lock
        hostPath:
          path: /run/xtables.lock
          type: FileOrCreate
"#,
        pod_cidr = network.pod_cidr,
        interface = paths::NODE_INTERFACE,
        vip = network.vip,
        api_port = network.api_port,
        cni_bin = paths::CNI_BIN_DIR,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, stage_for, stage_for_topology, topology};

    fn cni_subnet(stage: &StagePlan, node: &str) -> String {
        let config: serde_json::Value =
            serde_json::from_str(file(stage, node, "/etc/cni/net.d/10-bridge.conflist")).expect("valid JSON");
        config["plugins"][0]["ipam"]["ranges"][0][0]["subnet"].as_str().expect("a subnet").to_string()
    }

    /// The stage for the default lab with another pod network kind.
    fn stage_with(kind: PodNetwork) -> StagePlan {
        let mut topology = topology("lab.toml");
        topology.network.pod_network = kind;
        stage_for_topology(&topology, Stage::PodNetwork)
    }

    #[test]
    fn each_workers_cni_subnet_is_its_planned_pod_cidr() {
        let stage = stage_for("lab.toml", Stage::PodNetwork);
        assert_eq!(cni_subnet(&stage, "worker1"), "10.200.0.0/24");
        assert_eq!(cni_subnet(&stage, "worker2"), "10.200.1.0/24");
        let config: serde_json::Value =
            serde_json::from_str(file(&stage, "worker1", "/etc/cni/net.d/10-bridge.conflist")).unwrap();
        assert_eq!(config["plugins"][0]["ipMasq"], false, "pod-to-pod traffic must not be masqueraded");
        assert_eq!(config["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn workers_route_the_other_workers_and_masters_route_all() {
        let stage = stage_for("lab.toml", Stage::PodNetwork);
        let unit = |node| file(&stage, node, "/etc/systemd/system/lab-pod-routes.service");
        assert!(unit("worker1").contains("ExecStart=ip route replace 10.200.1.0/24 via 10.240.0.22\n"));
        assert!(!unit("worker1").contains("10.200.0.0/24"), "a worker has no route to its own range");
        for master in ["master1", "master2", "master3"] {
            assert!(unit(master).contains("ExecStart=ip route replace 10.200.0.0/24 via 10.240.0.21\n"));
            assert!(unit(master).contains("ExecStart=ip route replace 10.200.1.0/24 via 10.240.0.22\n"));
        }
    }

    #[test]
    fn etcd_only_nodes_are_not_part_of_the_pod_network() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::PodNetwork);
        assert!(stage.nodes.iter().all(|actions| !actions.node.starts_with("etcd")));
    }

    #[test]
    fn single_worker_needs_no_routes_of_its_own() {
        let stage = stage_for("examples/minimal.toml", Stage::PodNetwork);
        let worker = actions_on(&stage, "worker1");
        assert!(worker.units.iter().all(|unit| unit.name != ROUTES_UNIT));
        assert!(file(&stage, "master1", "/etc/systemd/system/lab-pod-routes.service")
            .contains("ExecStart=ip route replace 10.202.0.0/24 via 10.242.0.21\n"));
    }

    #[test]
    fn vxlan_tunnels_to_the_other_worker() {
        let stage = stage_with(PodNetwork::Vxlan);
        let unit = file(&stage, "worker1", "/etc/systemd/system/lab-pod-routes.service");
        assert!(unit.contains(
            "ExecStart=ip link add vxlan0 address 0a:58:0a:f0:00:15 type vxlan id 1 dstport 4789 local 10.240.0.21 nolearning\n"
        ));
        assert!(
            unit.contains("ExecStart=bridge fdb replace 0a:58:0a:f0:00:16 dev vxlan0 dst 10.240.0.22 self permanent\n")
        );
        assert!(
            unit.contains("ExecStart=ip neigh replace 10.200.1.0 lladdr 0a:58:0a:f0:00:16 dev vxlan0 nud permanent\n")
        );
        assert!(unit.contains("ExecStart=ip route replace 10.200.1.0/24 via 10.200.1.0 dev vxlan0 onlink\n"));
        let config: serde_json::Value =
            serde_json::from_str(file(&stage, "worker1", "/etc/cni/net.d/10-bridge.conflist")).unwrap();
        assert_eq!(config["plugins"][0]["mtu"], 1450);
        // Masters reach pods over the node subnet in every mode.
        assert!(file(&stage, "master1", "/etc/systemd/system/lab-pod-routes.service")
            .contains("ExecStart=ip route replace 10.200.1.0/24 via 10.240.0.22\n"));
    }

    #[test]
    fn flannel_gets_its_cni_config_and_a_manifest_on_the_first_master() {
        let stage = stage_with(PodNetwork::Flannel);
        let config = file(&stage, "worker1", "/etc/cni/net.d/10-flannel.conflist");
        assert!(config.contains("\"type\": \"flannel\""));
        let manifest = file(&stage, "master1", "/etc/kubernetes/manifests-lab/flannel.yaml");
        assert!(manifest.contains("\"Network\": \"10.200.0.0/16\""));
        assert!(manifest.contains("--iface=host0"));
        let master2 = actions_on(&stage, "master2");
        assert!(master2.files.iter().all(|file| !file.path.ends_with("flannel.yaml")));
    }
}
