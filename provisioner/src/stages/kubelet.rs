//! Handbook 000 section 9.1: the kubelet on every worker.
//!
//! The kubelet is the node agent: it registers its node with the API, watches for the
//! pods bound to it, has the container runtime start them, probes them and reports
//! their status. It is the one component on a worker that the control plane talks to,
//! so it is locked down as the handbook's secure setup asks:
//!
//! - It logs in to the API through the virtual IP with its own certificate
//!   (`system:node:NAME` in group `system:nodes`), so the apiserver's Node authorizer
//!   lets it see and change only its own node and the pods bound to it.
//! - Its own API (port 10250, used by `kubectl logs/exec` through the apiserver)
//!   serves a certificate the lab CA signed for its name and address, which the
//!   kubelet asks for through the API, refuses anonymous requests, accepts client
//!   certificates signed by the lab CA, and asks the apiserver whether each caller may
//!   do what it asks (`authorization: Webhook`). The unauthenticated read-only port
//!   10255 is off.
//! - It renews both certificates through the API before they expire (CIS 4.2.11,
//!   4.2.12); `kubelet_certificates` sets up the signing and approval on the masters.
//! - Pods get the cluster DNS Service as their resolver, with the cluster domain as
//!   search suffix.
//!
//! Running a kubelet inside a systemd-nspawn container needs a few things a virtual
//! machine would not (each was a hard failure when missing, see the lab's findings);
//! `lab-kubelet-prep.service` does them before every kubelet start:
//!
//! - /dev/kmsg must exist (the kubelet's cAdvisor watches it for OOM kills); a link to
//!   /dev/console is enough, and journald is told not to read it.
//! - /proc/sys must be writable: the node sets the kernel settings the kubelet
//!   expects (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...; the list
//!   is `KERNEL_SETTINGS`), and the kubelet, with `protectKernelDefaults` (CIS 4.2.6),
//!   refuses to start when one differs instead of changing it itself. The kernel is
//!   the host's, so these settings change the host too, as they do under kind.
//! - The nodes share the host's cgroup tree, so each kubelet gets its own cgroup root
//!   (`cgroupRoot`); with the default root every worker would manage the same
//!   `/kubepods` and kill the other workers' pods as orphans.
//! - /etc/resolv.conf must exist, because pods that use the node's DNS settings get a
//!   copy of it; a node without upstream DNS gets one with no server in it.
//!
//! Disk figures inside a container are those of the host's disk, shared by every node,
//! and no image can be pulled again once deleted, so disk-pressure eviction and image
//! garbage collection are switched off (as kind does).
//!
//! The node only turns Ready once the pod network is in place (in flannel mode that
//! needs kube-proxy too); the firewall stage, the last, checks that every worker is
//! Ready, this one that the kubelet is healthy.
//!
//! On the first master the stage records each worker's pod range from the plan in its
//! Node object (`spec.podCIDR`), where `kubectl get nodes` shows it and flannel reads
//! it; the controller manager does not allocate node ranges in this lab. In flannel mode
//! it also applies the flannel manifest, now that the API is up.

use crate::paths::{self, pki_files};
use crate::pki;
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan};
use crate::stages::{
    container_runtime, dns_addon, install_kubernetes_unit, install_unit, keepalived, kubelet_certificates, pod_network,
    TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use crate::topology::{Node, PodNetwork, Role};

/// The unit this stage writes and starts on every worker.
pub const UNIT: &str = "kubelet.service";
/// The oneshot unit that prepares the node before each kubelet start.
pub const PREP_UNIT: &str = "lab-kubelet-prep.service";
/// The kubelet's KubeletConfiguration file.
pub const CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// Where the kubelet keeps the certificates it got through the API (its default
/// `--cert-dir`).
pub const CERTIFICATE_DIR: &str = "/var/lib/kubelet/pki";
/// The script `lab-kubelet-prep.service` runs.
const PREP_SCRIPT: &str = "/usr/local/libexec/k8s-lab/kubelet-prep";
/// The kernel settings the kubelet checks at start, applied by the prep script.
pub const KERNEL_SETTINGS_FILE: &str = "/etc/sysctl.d/90-kubelet.conf";
/// What a kubelet with `protectKernelDefaults: true` requires of the kernel (Kubernetes
/// 1.20's container manager): memory overcommit on, no panic on an OOM, and a reboot 10
/// seconds after a panic, which an oops also causes; key quotas for the containers.
const KERNEL_SETTINGS: &[(&str, &str)] = &[
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];
/// How long the kubelet may hold a shutdown of its node back to stop its pods: the
/// pods of no critical priority class get the first 5 s, the critical ones the last
/// `SHUTDOWN_GRACE_CRITICAL_SECS`.
pub const SHUTDOWN_GRACE_SECS: u64 = 10;

/// The critical pods' share of `SHUTDOWN_GRACE_SECS`: the cluster DNS's lame duck, in
/// which a stopping server still answers while the Service's clients move to the
/// others.
pub const SHUTDOWN_GRACE_CRITICAL_SECS: u64 = dns_addon::LAME_DUCK_SECS;

/// The kubelet's plain-HTTP health endpoint, on loopback.
pub const HEALTHZ_PORT: u16 = 10248;
/// The kubelet's HTTPS API, reached by the apiservers.
pub const API_PORT: u16 = 10250;

/// The label `lab down --node` puts on a worker that it cordons before powering the
/// machine off, so that powering it on again uncordons that node and no other: a node
/// cordoned by hand stays cordoned.
pub const CORDONED_FOR_POWER_OFF: &str = "k8s-lab/cordoned-for-power-off";

/// How long each request of a cordon or uncordon may wait for the API.
const CORDON_REQUEST_TIMEOUT_SECS: u64 = 5;
/// How long the check that no worker is left cordoned polls.
const CORDON_CHECK_TIMEOUT_SECS: u64 = 20;

/// The admin's kubectl, each request bounded.
fn kubectl_bounded() -> String {
    format!("{} --request-timeout={CORDON_REQUEST_TIMEOUT_SECS}s", paths::admin_kubectl())
}

/// Cordons each of `workers` that is schedulable, and labels it as cordoned for a
/// power-off. A 1.20 kubelet that shuts its node down marks its pods Failed at once but
/// reports the node NotReady only at its next status update, and meanwhile their
/// replacements may be scheduled onto the node that is going away (1.21's kubelet
/// refuses them itself). Run on a master.
pub fn cordon_for_power_off(workers: &[&str]) -> String {
    let kubectl = kubectl_bounded();
    let each: Vec<String> = workers
        .iter()
        .map(|name| {
            format!(
                "if [ \"$({kubectl} get node {name} -o jsonpath='{{.spec.unschedulable}}')\" != true ]; then \
                 {kubectl} label node {name} {CORDONED_FOR_POWER_OFF}=true --overwrite && {kubectl} cordon {name}; fi"
            )
        })
        .collect();
    each.join(" && ")
}

/// Uncordons the workers that `lab down --node` cordoned, and takes their label off.
/// Run on a master once their machines run again.
pub fn uncordon_after_power_on() -> String {
    let kubectl = kubectl_bounded();
    format!(
        "nodes=$({kubectl} get nodes -l {CORDONED_FOR_POWER_OFF} -o jsonpath='{{.items[*].metadata.name}}') && \
         if [ -n \"$nodes\" ]; then {kubectl} uncordon $nodes && {kubectl} label node $nodes {CORDONED_FOR_POWER_OFF}-; fi"
    )
}

/// How long a kubelet may take to start and answer /healthz.
const READY_TIMEOUT_SECS: u64 = 120;
/// How long the first master waits for a worker to register its Node.
const REGISTRATION_TIMEOUT_SECS: u64 = 120;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;

    let ca = paths::kubernetes_pki(pki_files::CA_CERT);
    let cert = paths::kubernetes_pki(pki_files::KUBELET_CERT);
    let key = paths::kubernetes_pki(pki_files::KUBELET_KEY);
    let kubeconfig_path = paths::kubeconfig("kubelet");

    for worker in topology.nodes_with(Role::Worker) {
        let cgroup_root = format!("lab-{}-{}", topology.name, worker.name);
        // The certificate and key are the files the pki stage installed: with them
        // embedded, the kubelet would take them for bootstrap credentials and ask for
        // new ones at its first start (see `kubelet_certificates`).
        let kubeconfig = pki::kubeconfig_with_files(
            &topology.name,
            &context.api_server_url,
            &context.pki.ca.cert_pem,
            &format!("system:node:{}", worker.name),
            &cert,
            &key,
        );
        let actions = stage.node(&worker.name);
        actions.files.push(FileSpec::text(PREP_SCRIPT, 0o755, prep_script(&cgroup_root)));
        actions.files.push(FileSpec::text(KERNEL_SETTINGS_FILE, 0o644, kernel_settings()));
        install_unit(actions, PREP_UNIT, prep_unit(), &[PREP_SCRIPT, KERNEL_SETTINGS_FILE]);
        actions.files.push(FileSpec::text(CONFIG, 0o644, config(context, worker, &cgroup_root)));
        actions.files.push(FileSpec::text(&kubeconfig_path, 0o600, kubeconfig));
        install_kubernetes_unit(
            actions,
            UNIT,
            "kubelet",
            unit(worker, &kubeconfig_path),
            &[CONFIG, &kubeconfig_path, &ca, &cert, &key],
        );
        actions.checks.push(CheckSpec {
            description: format!("kubelet on {} answers /healthz", worker.name),
            script: format!("curl --silent --fail --max-time 5 http://127.0.0.1:{HEALTHZ_PORT}/healthz"),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }

    if let Some(first_master) = topology.nodes_with(Role::Master).next() {
        let kubectl = paths::admin_kubectl();
        let mut commands = Vec::new();
        if topology.network.pod_network == PodNetwork::Flannel {
            commands.push(CommandSpec {
                description: "apply the flannel DaemonSet".to_string(),
                script: format!("{kubectl} apply -f {}", pod_network::flannel_manifest_path()),
                when: RunWhen::Always,
            });
        }
        // Powering a worker on uncordons it (`lab up`, `Lab::uncordon_powered_on`); a
        // worker still cordoned for its power-off means that did not happen.
        commands.push(CommandSpec {
            description: "uncordon the workers that `lab down --node` cordoned".to_string(),
            script: uncordon_after_power_on(),
            when: RunWhen::Always,
        });
        stage.node(&first_master.name).checks.push(CheckSpec {
            description: "no worker is left cordoned by `lab down --node`".to_string(),
            script: format!(
                "nodes=$({} get nodes -l {CORDONED_FOR_POWER_OFF} -o name) && [ -z \"$nodes\" ]",
                kubectl_bounded()
            ),
            timeout_secs: CORDON_CHECK_TIMEOUT_SECS,
        });
        for worker in topology.nodes_with(Role::Worker) {
            let pod_cidr = context.pod_cidrs[&worker.name];
            // The kubelets register in parallel with this command, so it waits for the
            // Node first. spec.podCIDR can be set once; if it already holds another
            // range, the patch fails and names the node.
            commands.push(CommandSpec {
                description: format!("record {pod_cidr} as the pod range of node {}", worker.name),
                script: format!(
                    "give_up=$(($(date +%s) + {REGISTRATION_TIMEOUT_SECS})); \
                     until {kubectl} get node {name} >/dev/null 2>&1 || [ $(date +%s) -ge $give_up ]; do \
                     sleep 0.2; done; \
                     [ \"$({kubectl} get node {name} -o jsonpath='{{.spec.podCIDR}}')\" = {pod_cidr} ] || \
                     {kubectl} patch node {name} --type merge \
                     -p '{{\"spec\":{{\"podCIDR\":\"{pod_cidr}\",\"podCIDRs\":[\"{pod_cidr}\"]}}}}'",
                    name = worker.name,
                ),
                when: RunWhen::Always,
            });
        }
        stage.node(&first_master.name).commands.extend(commands);
    }
    kubelet_certificates::plan(context, stage);
}

/// The KubeletConfiguration (kubelet.config.k8s.io/v1beta1, as read by 1.20).
fn config(context: &Context<'_>, worker: &Node, cgroup_root: &str) -> String {
    let network = &context.topology.network;
    format!(
        r#"# Written by the k8s lab; `lab up` overwrites local changes.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The kubelet API (port {API_PORT}) on the node's address only.
address: {address}
port: {API_PORT}
# CIS 4.2.10-4.2.12: the kubelet asks the API for its serving certificate, signed by the
# lab CA for its name and address, at its first start (the lab approves the request) and
# again before it expires; it keeps it in {certificate_dir}. It renews its client
# certificate (its kubeconfig's) the same way. No tlsCertFile: with one, the kubelet
# would go on serving that file's certificate to every client that connects by address.
rotateCertificates: true
serverTLSBootstrap: true
# CIS 4.2.13: TLS 1.2 or newer and strong ciphers only.
tlsMinVersion: {tls_min_version}
tlsCipherSuites: [{tls_cipher_suites}]
# No unauthenticated read-only port.
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  # Bearer tokens are checked with the apiserver (TokenReview).
  webhook:
    enabled: true
  # Client certificates must be signed by the lab CA (the apiservers' is).
  x509:
    clientCAFile: {ca}
# Every request is authorized by the apiserver (SubjectAccessReview).
authorization:
  mode: Webhook
healthzBindAddress: 127.0.0.1
healthzPort: {HEALTHZ_PORT}
# Pods resolve names through the cluster DNS Service.
clusterDomain: {domain}
clusterDNS:
- {cluster_dns}
# The node's /24 of the pod range (the CNI configuration is built from the same plan).
podCIDR: {pod_cidr}
resolvConf: /etc/resolv.conf
# The same driver as containerd's runc; pods go under this node's own cgroup root,
# because the nodes share the host's cgroup tree.
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
# A container cannot turn the host's swap off.
failSwapOn: false
# CIS 4.2.6: the kubelet checks the kernel settings it needs and refuses to start
# when one differs, instead of changing the kernel itself; the node sets them first
# ({kernel_settings_file}).
protectKernelDefaults: true
# Disk figures are the host's, shared by all nodes: no disk-pressure eviction.
evictionHard:
  memory.available: 100Mi
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
# Images cannot be pulled again once deleted: never garbage-collect them.
imageGCHighThresholdPercent: 100
runtimeRequestTimeout: 15m
# A new kubelet reports its status as soon as its Node has a pod range, which is before
# its first look at the runtime's pods, so that report says NotReady; the next one says
# Ready. Every 4 s rather than every 10 s: a worker joins in a few seconds instead of
# waiting 10. The kubelet then still writes its Node only when the status changed or
# 5 min passed (the lease is its heartbeat), as with the defaults.
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 5m
# Graceful node shutdown (alpha in 1.20, on by default from 1.21). When the node powers
# off through logind (its power button, `systemctl poweroff`, `lab down --node`), the
# kubelet holds the shutdown back for up to {SHUTDOWN_GRACE_SECS} s and stops its pods first. It marks
# each pod Failed before stopping it, so the Services take the pod out of their
# endpoints while it still answers; it reports the node NotReady at its next status
# update, so nothing new is scheduled there. Pods of the critical priority classes (the
# cluster DNS, the pod network) stop in the last {SHUTDOWN_GRACE_CRITICAL_SECS} s. Without this a stopped
# worker's pods stay in the Services until the controller manager marks the silent
# node NotReady, 40 s later, and the requests sent to them fail meanwhile.
featureGates:
  GracefulNodeShutdown: true
shutdownGracePeriod: {SHUTDOWN_GRACE_SECS}s
shutdownGracePeriodCriticalPods: {SHUTDOWN_GRACE_CRITICAL_SECS}s
"#,
        address = worker.address,
        certificate_dir = CERTIFICATE_DIR,
        ca = paths::kubernetes_pki(pki_files::CA_CERT),
        domain = network.cluster_domain,
        cluster_dns = network.cluster_dns,
        pod_cidr = context.pod_cidrs[&worker.name],
        tls_min_version = TLS_MIN_VERSION,
        tls_cipher_suites = TLS_CIPHER_SUITES.join(", "),
        kernel_settings_file = KERNEL_SETTINGS_FILE,
    )
}

/// The kubelet's unit: started after containerd and the node preparation.
fn unit(worker: &Node, kubeconfig_path: &str) -> String {
    let flags = [
        format!("--config={CONFIG}"),
        format!("--kubeconfig={kubeconfig_path}"),
        // containerd over CRI rather than the built-in Docker support.
        "--container-runtime=remote".to_string(),
        format!("--container-runtime-endpoint=unix://{}", container_runtime::SOCKET),
        // Nodes have no default route, from which the kubelet would otherwise guess.
        format!("--node-ip={}", worker.address),
        // The name in the kubelet's certificate, whatever the machine calls itself.
        format!("--hostname-override={}", worker.name),
        "--register-node=true".to_string(),
        "--v=2".to_string(),
    ];
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description=Kubernetes kubelet on {name}
Documentation=https://v1-20.docs.kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
# Wants rather than Requires: the kubelet reconnects to a restarted containerd by
# itself and need not restart with it.
Wants=containerd.service
Requires={PREP_UNIT}
After=containerd.service {PREP_UNIT}

[Service]
{environment}ExecStart={binary} \\\n  {flags}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
",
        name = worker.name,
        binary = paths::kubernetes_binary("kubelet"),
        flags = flags.join(" \\\n  "),
        environment = keepalived::client_environment(),
    )
}

/// The check that `worker` is Ready in the API: its kubelet, runtime and pod network
/// are (in flannel mode only after flannel's pod, which needs kube-proxy, wrote the
/// CNI configuration). The kubelet's own credentials may read its Node (the Node
/// authorizer). The firewall stage, the last, runs it (see there).
pub fn ready_in_the_api(worker: &Node) -> CheckSpec {
    CheckSpec {
        description: format!("{} is Ready in the API", worker.name),
        script: format!(
            "test \"$({}/kubectl --kubeconfig {} --request-timeout=5s get node {} \
             -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}')\" = True",
            paths::BIN_DIR,
            paths::kubeconfig("kubelet"),
            worker.name
        ),
        timeout_secs: READY_TIMEOUT_SECS,
    }
}

/// The oneshot unit that runs the preparation script before the kubelet.
fn prep_unit() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description=Prepare the node for the kubelet (k8s lab)
Before={UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={PREP_SCRIPT}

[Install]
WantedBy=multi-user.target
"
    )
}

/// The kernel settings file: every setting `KERNEL_SETTINGS` names.
fn kernel_settings() -> String {
    let mut text = String::from(
        "# Written by the k8s lab; `lab up` overwrites local changes.\n\
         # What the kubelet (protectKernelDefaults: true) requires of the kernel; the\n\
         # kubelet's prep unit applies it before every kubelet start. On an nspawn node\n\
         # the kernel is the host's: these settings are the host's too.\n",
    );
    for (key, value) in KERNEL_SETTINGS {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

/// What the kubelet needs from a container node; every step but the kernel settings is
/// a no-op on a VM.
fn prep_script(cgroup_root: &str) -> String {
    format!(
        r#"#!/bin/sh
# Written by the k8s lab; `lab up` overwrites local changes.
# Prepares the node for the kubelet; lab-kubelet-prep.service runs it at every boot.
set -eu

# The kubelet's cAdvisor watches kernel messages for OOM kills and will not start
# without /dev/kmsg, which systemd-nspawn does not create (the node image links it
# to the console at boot). journald must not read that link: a journald restarted
# after it was made reads the node's console as kernel messages, and spun at 55% of
# a CPU when the console went away (seen 2026-12-06).
[ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
if [ -L /dev/kmsg ]; then
  mkdir -p /run/systemd/journald.conf.d
  printf '[Journal]\nReadKMsg=no\n' > /run/systemd/journald.conf.d/lab-no-kmsg.conf
fi

# The kernel settings the kubelet checks at start; systemd-nspawn mounts /proc/sys
# read-only. Writing a value back unchanged shows whether it is writable.
sysctl -q -w vm.overcommit_memory="$(sysctl -n vm.overcommit_memory)" 2>/dev/null ||
    mount -o remount,rw /proc/sys
sysctl -q -p {KERNEL_SETTINGS_FILE}

# Pods with the node's DNS settings get a copy of /etc/resolv.conf; without the file
# the kubelet cannot start them. A node without upstream DNS gets an empty one.
if [ ! -e /etc/resolv.conf ]; then
    rm -f /etc/resolv.conf
    echo '# Written by the k8s lab: this node has no upstream DNS server.' >/etc/resolv.conf
fi

# The kubelet's cgroup root must exist in every hierarchy before it starts.
root={cgroup_root}
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p "/sys/fs/cgroup/$root"
else
    for hierarchy in /sys/fs/cgroup/*/; do
        if [ -f "${{hierarchy}}cgroup.procs" ]; then mkdir -p "$hierarchy$root"; fi
    done
    # A new cpuset cgroup has no CPUs and no memory nodes until given its parent's.
    cpuset=/sys/fs/cgroup/cpuset
    if [ -d "$cpuset/$root" ]; then
        cat "$cpuset/cpuset.cpus" >"$cpuset/$root/cpuset.cpus"
        cat "$cpuset/cpuset.mems" >"$cpuset/$root/cpuset.mems"
    fi
fi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, flag, stage_for};

    #[test]
    fn kubelet_api_is_authenticated_and_authorized_by_the_apiserver() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        let config = file(&stage, "worker1", CONFIG);
        assert!(config.contains("authentication:\n  anonymous:\n    enabled: false\n"));
        assert!(config.contains("  webhook:\n    enabled: true\n"));
        assert!(config.contains("    clientCAFile: /etc/kubernetes/pki/ca.pem\n"));
        assert!(config.contains("authorization:\n  mode: Webhook\n"));
        assert!(config.contains("readOnlyPort: 0\n"));
        assert!(!config.contains("\ntlsCertFile:"), "a serving certificate file would hide the renewed one");
        assert!(config.contains("rotateCertificates: true\n"));
        assert!(config.contains("serverTLSBootstrap: true\n"));
        assert!(config.contains("tlsMinVersion: VersionTLS12\n"));
        assert!(config.contains(&format!("tlsCipherSuites: [{}]\n", crate::stages::TLS_CIPHER_SUITES.join(", "))));
    }

    #[test]
    fn kubelet_checks_the_kernel_settings_that_the_node_applies_before_it_starts() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        assert!(file(&stage, "worker1", CONFIG).contains("protectKernelDefaults: true\n"));
        let settings = file(&stage, "worker1", KERNEL_SETTINGS_FILE);
        for (key, value) in KERNEL_SETTINGS {
            assert!(settings.contains(&format!("\n{key} = {value}\n")), "{key} missing from:\n{settings}");
        }
        assert!(file(&stage, "worker1", PREP_SCRIPT).contains(&format!("sysctl -q -p {KERNEL_SETTINGS_FILE}\n")));
    }

    #[test]
    fn a_worker_powering_off_stops_its_pods_first_and_its_dns_pod_last() {
        let config = file(&stage_for("lab.toml", Stage::Kubelet), "worker1", CONFIG).to_string();
        assert!(config.contains("featureGates:\n  GracefulNodeShutdown: true\n"), "{config}");
        assert!(config.contains("\nshutdownGracePeriod: 10s\n"), "{config}");
        assert!(config.contains("\nshutdownGracePeriodCriticalPods: 5s\n"), "{config}");
        // The cluster DNS is critical: it stops in the last 5 s, its lame duck.
        let dns = file(&stage_for("lab.toml", Stage::DnsAddon), "master1", &dns_addon::manifest_path()).to_string();
        assert!(dns.contains("priorityClassName: system-cluster-critical"));
        assert!(dns.contains("- --lame-duck=5\n"), "{dns}");
    }

    #[test]
    fn config_carries_the_nodes_network_and_its_own_cgroup_root() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        let config = file(&stage, "worker2", CONFIG);
        assert!(config.contains("clusterDNS:\n- 10.32.0.10\n"));
        assert!(config.contains("clusterDomain: cluster.local\n"));
        assert!(config.contains("podCIDR: 10.200.1.0/24\n"));
        assert!(config.contains("address: 10.240.0.22\n"));
        assert!(config.contains("cgroupRoot: /lab-k8s-worker2\n"));
        assert!(file(&stage, "worker2", PREP_SCRIPT).contains("root=lab-k8s-worker2\n"));
    }

    #[test]
    fn kubelet_registers_through_the_virtual_ip_as_its_node() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        let kubeconfig = file(&stage, "worker1", "/etc/kubernetes/kubelet.kubeconfig");
        assert!(kubeconfig.contains("server: \"https://10.240.0.100:8443\""), "{kubeconfig}");
        assert!(kubeconfig.contains("- name: \"system:node:worker1\""));
        let unit = file(&stage, "worker1", "/etc/systemd/system/kubelet.service");
        assert_eq!(flag(unit, "node-ip"), "10.240.0.21");
        assert_eq!(flag(unit, "hostname-override"), "worker1");
        assert_eq!(flag(unit, "container-runtime-endpoint"), "unix:///run/containerd/containerd.sock");
        assert!(unit.contains("Requires=lab-kubelet-prep.service\n"));
    }

    #[test]
    fn first_master_records_every_workers_pod_range() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        let master = actions_on(&stage, "master1");
        let pod_ranges: Vec<&str> = master
            .commands
            .iter()
            .filter(|command| command.description.contains("as the pod range of node"))
            .map(|command| command.script.as_str())
            .collect();
        assert_eq!(pod_ranges.len(), 2);
        assert!(pod_ranges[1].contains(
            "patch node worker2 --type merge -p '{\"spec\":{\"podCIDR\":\"10.200.1.0/24\",\"podCIDRs\":[\"10.200.1.0/24\"]}}'"
        ));
        assert!(actions_on(&stage, "master2").commands.is_empty());
    }
}
