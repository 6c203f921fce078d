//! Handbook 000 section 9: kube-proxy on every worker, and here on every master too.
//!
//! The handbook runs kube-proxy on workers only. The lab also runs it on the masters,
//! as kubeadm does, so that a NodePort answers on every node's address and Service
//! IPs work from the masters (which already route to every worker's pods).
//!
//! A Service's ClusterIP belongs to no machine: kube-proxy makes it work on each node
//! by watching Services and their endpoints and writing iptables rules that rewrite
//! (DNAT) a packet for `ClusterIP:port`, or for `NODE_ADDRESS:nodePort`, into one for
//! a ready pod behind it, picked at random. Traffic that enters from outside the pod
//! range is also masqueraded, so the answer comes back through the same node and gets
//! translated back. `clusterCIDR` tells kube-proxy which sources count as pods.
//!
//! kube-proxy logs in through the virtual IP as `system:kube-proxy`, which Kubernetes'
//! built-in RBAC (the `system:node-proxier` role) allows to read Services, endpoints
//! and nodes.
//!
//! kube-proxy normally also tunes the kernel's connection tracking. Inside a container
//! the size of the tracking table belongs to the host's kernel and is read-only, and
//! kube-proxy fails at start trying to raise it, so it is told to leave all of these
//! settings as they are (zero means "do not set", as kind configures it).

use crate::paths;
use crate::pki::{self, names};
use crate::plan::{CheckSpec, Context, FileSpec, StagePlan};
use crate::stages::{install_kubernetes_unit, install_unit, keepalived, kubernetes_unit, KubernetesUnit};
use crate::topology::{Network, Node, Role};

/// The unit this stage writes and starts on every worker.
pub const UNIT: &str = "kube-proxy.service";
/// kube-proxy's KubeProxyConfiguration file.
pub const CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
/// Health endpoint (plain HTTP); load balancers and the lab's checks ask it.
pub const HEALTHZ_PORT: u16 = 10256;
/// Metrics endpoint, on loopback only.
const METRICS_PORT: u16 = 10249;
/// The user name in kube-proxy's certificate, which the built-in RBAC knows.
const USER: &str = "system:kube-proxy";

/// How long kube-proxy may take to sync its rules and report healthy.
const READY_TIMEOUT_SECS: u64 = 60;

/// The oneshot unit that routes the service range onto the node interface.
pub const SERVICE_ROUTE_UNIT: &str = "lab-service-route.service";

fn service_route_unit(service_cidr: ipnet::Ipv4Net) -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description=Route the Service range onto the node interface (k8s lab)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=ip route replace {service_cidr} dev {interface}

[Install]
WantedBy=multi-user.target
",
        interface = paths::NODE_INTERFACE,
    )
}

/// Whether `node` runs kube-proxy: every master and every worker.
pub fn runs_on(node: &Node) -> bool {
    node.has(Role::Master) || node.has(Role::Worker)
}

/// The script that passes once kube-proxy on the node it runs on serves Services:
/// its canary chain, which a flush of the tables removes, exists, and the cluster DNS
/// answers for the `kubernetes` Service through its Service address from the node,
/// three times in a row. Used after firewalld starts (the firewall stage) and when a
/// machine powered on again is to take Service traffic from the host (`lab up`).
pub fn serves_services(network: &Network) -> String {
    let query = format!(
        "dig +short +time=1 +tries=1 @{dns} kubernetes.default.svc.{domain} | grep -qx {kubernetes}",
        dns = network.cluster_dns,
        domain = network.cluster_domain,
        kubernetes = crate::topology::first_service_ip(network.service_cidr),
    );
    format!(
        "for attempt in 1 2 3; do iptables -w 5 -t nat -nL KUBE-PROXY-CANARY >/dev/null 2>&1 && {query} \
         || exit 1; sleep 0.2; done"
    )
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;

    let kubeconfig_path = paths::kubeconfig("kube-proxy");
    let kubeconfig = pki::kubeconfig(
        &topology.name,
        &context.api_server_url,
        &context.pki.ca.cert_pem,
        USER,
        context.pki.get(names::KUBE_PROXY),
    );

    for node in topology.nodes.iter().filter(|node| runs_on(node)) {
        let config = format!(
            "# Written by the k8s lab; `lab up` overwrites local changes.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig_path}
# The Node object this kube-proxy belongs to, and its address.
hostnameOverride: {name}
bindAddress: {address}
mode: iptables
# Sources inside the pod range are pods; anything else reaching a Service is masqueraded.
clusterCIDR: {pod_cidr}
healthzBindAddress: 0.0.0.0:{HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:{METRICS_PORT}
# Leave connection tracking as the kernel has it (zero: do not set); the table size
# belongs to the host's kernel and is read-only in a container.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
            name = node.name,
            address = node.address,
            pod_cidr = topology.network.pod_cidr,
        );
        let unit = kubernetes_unit(&KubernetesUnit {
            component: "kube-proxy",
            description: &format!("Kubernetes kube-proxy on {}", node.name),
            flags: &[format!("--config={CONFIG}"), "--v=2".to_string()],
            environment: &keepalived::client_environment(),
            ..KubernetesUnit::default()
        });

        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text(CONFIG, 0o644, config));
        actions.files.push(FileSpec::secret(&kubeconfig_path, &kubeconfig));
        install_kubernetes_unit(actions, UNIT, "kube-proxy", unit, &[CONFIG, &kubeconfig_path]);
        // A process on the node sending to a Service address needs a route for it
        // before kube-proxy's rules can rewrite the destination to a pod. Nodes here
        // have no default route (nothing may leave the lab), so the service range
        // gets its own route onto the node interface.
        install_unit(actions, SERVICE_ROUTE_UNIT, service_route_unit(topology.network.service_cidr), &[]);
        actions.checks.push(CheckSpec {
            description: format!("kube-proxy on {} answers /healthz", node.name),
            script: format!("curl --silent --fail --max-time 5 http://127.0.0.1:{HEALTHZ_PORT}/healthz"),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, flag, planned_nodes, stage_for};

    #[test]
    fn runs_in_iptables_mode_and_leaves_conntrack_alone() {
        let stage = stage_for("lab.toml", Stage::KubeProxy);
        let config = file(&stage, "worker2", CONFIG);
        assert!(config.contains("mode: iptables\n"));
        assert!(config.contains("clusterCIDR: 10.200.0.0/16\n"));
        assert!(config.contains("hostnameOverride: worker2\n"));
        assert!(config.contains("bindAddress: 10.240.0.22\n"));
        assert!(config.contains("  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n"));
        assert!(config.contains("healthzBindAddress: 0.0.0.0:10256\n"));
        assert!(config.contains("metricsBindAddress: 127.0.0.1:10249\n"));
        assert_eq!(flag(file(&stage, "worker2", "/etc/systemd/system/kube-proxy.service"), "config"), CONFIG);
    }

    #[test]
    fn logs_in_through_the_virtual_ip_as_kube_proxy() {
        let stage = stage_for("lab.toml", Stage::KubeProxy);
        let kubeconfig = file(&stage, "worker1", "/etc/kubernetes/kube-proxy.kubeconfig");
        assert!(kubeconfig.contains("server: \"https://10.240.0.100:8443\""));
        assert!(kubeconfig.contains("- name: \"system:kube-proxy\""));
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["master1", "master2", "master3", "worker1", "worker2"]);
    }
}
