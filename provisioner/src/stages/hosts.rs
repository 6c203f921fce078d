//! Handbook 000 sections 1 and 2: the environment (env.sh) and /etc/hosts.
//!
//! Before any component is installed, the handbook gives every server the same view of
//! the cluster: `env.sh` holds the addresses and ranges every later chapter uses, and
//! `setup-env.sh` adds the etcd members' names (etcd1..3) to /etc/hosts so that
//! certificates and flags can name them. This stage does the same on every node, and
//! the groundwork the later chapters take for granted:
//!
//! - /etc/hostname and the running hostname are the node's name. A kubelet registers
//!   under this name and its certificate says `system:node:NAME`, so they must agree.
//! - /etc/hosts lists every node with its aliases. The node's own name resolves to its
//!   real address, never to Debian's usual `127.0.1.1`, so that a component resolving
//!   its own name gets an address other nodes can reach.
//! - /etc/kubernetes/env.sh carries the handbook's variables with the lab's values,
//!   for the learner's shell (`. /etc/kubernetes/env.sh`); no lab unit reads it, every
//!   value a unit needs is written into that unit.
//! - Sysctls: IP forwarding (a node routes pod and service traffic) and
//!   `bridge-nf-call-iptables` (so that traffic between two pods on the same bridge
//!   still passes kube-proxy's iptables rules; without it a pod that reaches a Service
//!   whose endpoint sits on the same node gets the reply from the wrong address). A
//!   virtual machine loads br_netfilter for it; a container has the host's kernel's.
//! - Swap off, as the kubelet expects. In a container the swap belongs to the host's
//!   kernel, so the stage leaves it alone there (and the kubelet is told to tolerate it).
//! - The Kubernetes binaries each role runs, built by the artifacts step, in
//!   /usr/local/bin. etcd, containerd, HAProxy, keepalived and firewalld come from
//!   Debian packages already in the node image.

use std::fmt::Write as _;

use crate::artifacts::Artifacts;
use crate::paths;
use crate::plan::{CheckSpec, CommandSpec, Content, Context, FileSpec, RunWhen, StagePlan};
use crate::topology::{first_service_ip, Node, Role, Topology};

/// The handbook's environment file, for learners.
pub const ENV_FILE: &str = "/etc/kubernetes/env.sh";
/// The lab's kernel settings.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-k8s-lab.conf";

/// Binaries a master runs (kubectl too, so that a learner can use the cluster there).
const MASTER_BINARIES: [&str; 5] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"];
/// Binaries a worker runs.
const WORKER_BINARIES: [&str; 3] = ["kubelet", "kube-proxy", "kubectl"];

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let hosts = etc_hosts(topology);

    for node in &topology.nodes {
        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text("/etc/hostname", 0o644, format!("{}\n", node.name)));
        actions.files.push(FileSpec::text("/etc/hosts", 0o644, hosts.clone()));
        actions.files.push(FileSpec::text(ENV_FILE, 0o644, env_sh(context, node)));
        actions.files.push(FileSpec::text(SYSCTL_FILE, 0o644, SYSCTLS));
        actions.files.extend(binaries(context.artifacts, node));

        // `hostname` sets the running name; /etc/hostname only takes effect at boot.
        actions.commands.push(CommandSpec {
            description: format!("set the running hostname to {}", node.name),
            script: format!("[ \"$(hostname)\" = {name} ] || hostname {name}", name = node.name),
            when: RunWhen::Always,
        });
        // A virtual machine runs its own kernel, which loads br_netfilter only when
        // asked (a container shares the host's, where the preflight loaded it). Every
        // run, so a VM that was powered off and started again has it too.
        actions.commands.push(CommandSpec {
            description: "load br_netfilter (virtual machines only)".to_string(),
            script: "systemd-detect-virt --container --quiet || modprobe br_netfilter".to_string(),
            when: RunWhen::Always,
        });
        // Only the lab's own file: `sysctl --system` would also replay every packaged
        // file in /usr/lib/sysctl.d, whose kernel.* keys are read-only in a container.
        // `-e` skips keys this kernel does not have (bridge-nf-call-iptables exists
        // only where the br_netfilter module is loaded).
        actions.commands.push(CommandSpec {
            description: "apply the lab's sysctls".to_string(),
            script: format!("sysctl -e -q -p {SYSCTL_FILE}"),
            when: RunWhen::FilesChanged,
        });
        // A container shares the host's kernel and so its swap devices: `swapoff -a`
        // there would try to switch off the host's swap. Only a virtual machine's own
        // swap is the node's to turn off.
        actions.commands.push(CommandSpec {
            description: "turn swap off (virtual machines only)".to_string(),
            script: "systemd-detect-virt --container --quiet || swapoff -a".to_string(),
            when: RunWhen::Always,
        });
        actions.checks.push(CheckSpec {
            description: format!("{} knows itself by its name", node.name),
            script: format!("test \"$(hostname)\" = {}", node.name),
            timeout_secs: 5,
        });
    }
}

/// /etc/hosts: loopback as Debian writes it, then every node with its aliases.
fn etc_hosts(topology: &Topology) -> String {
    let mut hosts = String::from(
        "# Written by the k8s lab; `lab up` overwrites local changes.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters

# The lab's nodes, with the handbook's etcd names as aliases.
",
    );
    for node in &topology.nodes {
        let names = std::iter::once(node.name.as_str()).chain(node.aliases.iter().map(String::as_str));
        writeln!(hosts, "{}\t{}", node.address, names.collect::<Vec<_>>().join(" ")).expect("writing to a String");
    }
    hosts
}

/// The handbook's env.sh with the lab's values, for one node.
fn env_sh(context: &Context<'_>, node: &Node) -> String {
    let network = &context.topology.network;
    let mut env = format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# The handbook's env.sh for {name}: the addresses and ranges every chapter uses.
# Load it into a shell with `. {ENV_FILE}`; the lab's units do not read it.
export NODE_NAME={name}
export NODE_IP={address}
# keepalived's virtual IP and the API endpoint HAProxy serves on it.
export MASTER_VIP={vip}
export KUBE_APISERVER={api_server_url}
# The Service range, its first address (the `kubernetes` Service) and the DNS Service.
export SERVICE_CIDR={service_cidr}
export CLUSTER_KUBERNETES_SVC_IP={kubernetes_ip}
export CLUSTER_DNS_SVC_IP={cluster_dns}
export CLUSTER_DNS_DOMAIN={domain}
# The pod range; each worker routes a /24 of it.
export CLUSTER_CIDR={pod_cidr}
export NODE_PORT_RANGE={node_ports}
export ETCD_ENDPOINTS={etcd_endpoints}
export PATH={bin}:$PATH
",
        name = node.name,
        address = node.address,
        vip = network.vip,
        api_server_url = context.api_server_url,
        service_cidr = network.service_cidr,
        kubernetes_ip = first_service_ip(network.service_cidr),
        cluster_dns = network.cluster_dns,
        domain = network.cluster_domain,
        pod_cidr = network.pod_cidr,
        node_ports = network.node_port_range,
        etcd_endpoints = context.etcd_client_urls(),
        bin = paths::BIN_DIR,
    );
    if let Some(pod_cidr) = context.pod_cidrs.get(&node.name) {
        writeln!(env, "# This worker's share of the pod range.\nexport NODE_POD_CIDR={pod_cidr}")
            .expect("writing to a String");
    }
    if node.has(Role::Master) {
        writeln!(
            env,
            "# kubectl on a master uses the admin credentials.\nexport KUBECONFIG={}",
            paths::ADMIN_KUBECONFIG
        )
        .expect("writing to a String");
    }
    env
}

const SYSCTLS: &str = "# Written by the k8s lab; `lab up` overwrites local changes.
# Nodes route pod and Service traffic between their interfaces.
net.ipv4.ip_forward = 1
# Bridged pod-to-pod traffic passes iptables, where kube-proxy translates Service
# addresses (ignored where the kernel has no br_netfilter).
net.bridge.bridge-nf-call-iptables = 1
";

/// The Kubernetes binaries the node's roles run, each once, executable.
fn binaries(artifacts: &Artifacts, node: &Node) -> Vec<FileSpec> {
    let mut names: Vec<&str> = Vec::new();
    if node.has(Role::Master) {
        names.extend(MASTER_BINARIES);
    }
    if node.has(Role::Worker) {
        names.extend(WORKER_BINARIES);
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(*name));
    names
        .into_iter()
        .map(|name| FileSpec {
            path: paths::kubernetes_binary(name),
            mode: 0o755,
            owner: "root".to_string(),
            content: Content::Artifact { path: artifacts.binary(name).to_path_buf() },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, stage_for};

    fn installed(stage: &StagePlan, node: &str) -> Vec<String> {
        let actions = actions_on(stage, node);
        actions
            .files
            .iter()
            .filter(|file| matches!(file.content, Content::Artifact { .. }))
            .map(|file| file.path.clone())
            .collect()
    }

    #[test]
    fn hosts_file_lists_every_node_with_its_aliases() {
        let stage = stage_for("lab.toml", Stage::Hosts);
        for node in ["master1", "worker2"] {
            let hosts = file(&stage, node, "/etc/hosts");
            assert!(hosts.contains("10.240.0.11\tmaster1 etcd3\n"), "{hosts}");
            assert!(hosts.contains("10.240.0.12\tmaster2 etcd1\n"));
            assert!(hosts.contains("10.240.0.13\tmaster3 etcd2\n"));
            assert!(hosts.contains("10.240.0.21\tworker1\n"));
            assert!(hosts.contains("10.240.0.22\tworker2\n"));
            assert!(!hosts.contains("127.0.1.1"), "a node's own name must resolve to its real address");
        }
        assert_eq!(file(&stage, "worker1", "/etc/hostname"), "worker1\n");
    }

    #[test]
    fn workers_get_no_control_plane_binaries() {
        let stage = stage_for("lab.toml", Stage::Hosts);
        assert_eq!(
            installed(&stage, "worker1"),
            ["/usr/local/bin/kubelet", "/usr/local/bin/kube-proxy", "/usr/local/bin/kubectl"]
        );
        assert_eq!(
            installed(&stage, "master1"),
            [
                "/usr/local/bin/kube-apiserver",
                "/usr/local/bin/kube-controller-manager",
                "/usr/local/bin/kube-scheduler",
                "/usr/local/bin/kube-proxy",
                "/usr/local/bin/kubectl"
            ]
        );
    }

    #[test]
    fn etcd_only_nodes_get_no_kubernetes_binaries() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::Hosts);
        assert!(installed(&stage, "etcd1").is_empty());
    }

    #[test]
    fn env_sh_carries_the_labs_addresses() {
        let stage = stage_for("lab.toml", Stage::Hosts);
        let env = file(&stage, "worker2", ENV_FILE);
        assert!(env.contains("export NODE_IP=10.240.0.22\n"));
        assert!(env.contains("export KUBE_APISERVER=https://10.240.0.100:8443\n"));
        assert!(env.contains("export CLUSTER_DNS_SVC_IP=10.32.0.10\n"));
        assert!(env.contains("export CLUSTER_KUBERNETES_SVC_IP=10.32.0.1\n"));
        assert!(env.contains("export NODE_POD_CIDR=10.200.1.0/24\n"));
        assert!(!env.contains("KUBECONFIG"), "workers have no admin kubeconfig");
        assert!(file(&stage, "master1", ENV_FILE).contains("export KUBECONFIG=/etc/kubernetes/admin.kubeconfig\n"));
    }

    #[test]
    fn sysctls_are_applied_only_from_the_labs_file() {
        let stage = stage_for("lab.toml", Stage::Hosts);
        let actions = &stage.nodes[0];
        let sysctl = actions.commands.iter().find(|command| command.script.starts_with("sysctl")).unwrap();
        assert_eq!(sysctl.script, "sysctl -e -q -p /etc/sysctl.d/90-k8s-lab.conf");
        assert_eq!(sysctl.when, RunWhen::FilesChanged);
        assert!(file(&stage, "master1", SYSCTL_FILE).contains("net.ipv4.ip_forward = 1\n"));
    }
}
