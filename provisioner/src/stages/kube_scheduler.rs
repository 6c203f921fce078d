//! Handbook 000 sections 7.3 and 8.4: kube-scheduler with leader election.
//!
//! The scheduler decides where pods run: it watches for pods without a node, filters
//! the nodes that can take them (resources, taints, affinity) and binds each pod to the
//! best one. Kubelets then start what is bound to them.
//!
//! Like the controller manager, it runs on every master and elects a leader through
//! the API, so only one instance schedules at a time and another takes over if it stops
//! (section 8.4). Each instance talks to its own master's apiserver over loopback.
//!
//! Kubernetes 1.19 introduced a KubeSchedulerConfiguration file (API version
//! `kubescheduler.config.k8s.io/v1beta1` in 1.20) in place of most flags, but in 1.20
//! that file cannot turn off the scheduler's plain HTTP port: its health and metrics
//! addresses must have a port from 1 to 65535 (left out, they take 0.0.0.0:10251), and
//! next to a file the `--port` flag is ignored. The lab wants no plain HTTP port (CIS
//! 1.4.2), so the scheduler runs on flags, as kubeadm 1.20 runs it.

use std::net::Ipv4Addr;

use crate::paths;
use crate::pki::{self, names};
use crate::plan::{Context, FileSpec, StagePlan};
use crate::stages::{
    install_kubernetes_unit, kubernetes_unit, leader_check, loopback_health_check, KubernetesUnit, LeaderElection,
    TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use crate::topology::Role;

/// The unit this stage writes and starts on every master.
pub const UNIT: &str = "kube-scheduler.service";
/// The user name its certificate carries (CN), which Kubernetes' built-in RBAC knows.
const USER: &str = "system:kube-scheduler";
/// HTTPS port for health and metrics, with authentication (the 1.20 default).
pub const SECURE_PORT: u16 = 10259;
/// The plain HTTP port `kubectl get componentstatuses` in 1.20 asks for the
/// scheduler's health (`http://127.0.0.1:10251/healthz` on the apiserver's node). The
/// scheduler serves no plain HTTP (CIS 1.4.2): HAProxy answers this port on loopback
/// and passes /healthz to the HTTPS port (`load_balancer`).
pub const COMPONENTSTATUS_PORT: u16 = 10251;

/// How long the scheduler may take to start serving health checks.
const READY_TIMEOUT_SECS: u64 = 60;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;

    let kubeconfig_path = paths::kubeconfig("kube-scheduler");
    let kubeconfig = pki::kubeconfig(
        &topology.name,
        &context.apiserver_url_of(Ipv4Addr::LOCALHOST),
        &context.pki.ca.cert_pem,
        USER,
        context.pki.get(names::SCHEDULER),
    );
    let mut flags = vec![
        format!("--kubeconfig={kubeconfig_path}"),
        // Health and metrics requests on the HTTPS port are checked against the apiserver
        // with the scheduler's own credentials.
        format!("--authentication-kubeconfig={kubeconfig_path}"),
        format!("--authorization-kubeconfig={kubeconfig_path}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={SECURE_PORT}"),
        // No plain HTTP port (CIS 1.4.2): it would serve health and metrics to anything
        // on the master without authentication.
        "--port=0".to_string(),
        // The same TLS as the apiserver's (CIS 1.2.34 asks it of the apiserver): Go's
        // defaults would also take TLS 1.0 and CBC ciphers with SHA-1.
        format!("--tls-min-version={TLS_MIN_VERSION}"),
        format!("--tls-cipher-suites={}", TLS_CIPHER_SUITES.join(",")),
        // CIS 1.4.1: no /debug/pprof, which would show the scheduler's inner workings
        // to anyone allowed to read it.
        "--profiling=false".to_string(),
    ];
    // `LeaderElection` says why the timing is what it is.
    let election = LeaderElection::for_topology(topology);
    flags.extend(election.flags());
    flags.push("--v=2".to_string());
    for master in topology.nodes_with(Role::Master) {
        let unit = kubernetes_unit(&KubernetesUnit {
            component: "kube-scheduler",
            description: &format!("Kubernetes scheduler on {}", master.name),
            flags: &flags,
            ..KubernetesUnit::default()
        });

        let actions = stage.node(&master.name);
        // The kubeconfig embeds the scheduler's private key.
        actions.files.push(FileSpec::secret(&kubeconfig_path, &kubeconfig));
        install_kubernetes_unit(actions, UNIT, "kube-scheduler", unit, &[&kubeconfig_path]);
        actions.checks.push(loopback_health_check("kube-scheduler", &master.name, SECURE_PORT, READY_TIMEOUT_SECS));
    }
    // One of them must lead, asked once, through the first master.
    if let Some(first) = topology.nodes_with(Role::Master).next() {
        let check = leader_check("kube-scheduler", &first.name, &kubeconfig_path, election, READY_TIMEOUT_SECS);
        stage.node(&first.name).checks.push(check);
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Content;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, flag, stage_for};

    #[test]
    fn elects_a_leader_with_its_kubeconfig_and_serves_https_only_on_loopback() {
        let stage = stage_for("lab.toml", Stage::KubeScheduler);
        assert_eq!(stage.nodes.len(), 3);
        let unit = file(&stage, "master3", "/etc/systemd/system/kube-scheduler.service");
        assert_eq!(flag(unit, "kubeconfig"), "/etc/kubernetes/kube-scheduler.kubeconfig");
        assert_eq!(flag(unit, "leader-elect"), "true");
        assert_eq!(flag(unit, "leader-elect-lease-duration"), "15s");
        assert_eq!(flag(unit, "bind-address"), "127.0.0.1");
        assert_eq!(flag(unit, "port"), "0", "no plain HTTP port");
        assert_eq!(flag(unit, "profiling"), "false");
        assert!(!unit.contains("--config"), "a configuration file would bring the plain HTTP port back");
        let health: Vec<_> = stage.nodes.iter().map(|actions| &actions.checks[0]).collect();
        assert!(health.iter().all(|check| check.script.contains("https://127.0.0.1:10259/")), "{health:?}");
    }

    #[test]
    fn kubeconfig_is_secret_and_targets_the_local_apiserver() {
        let stage = stage_for("examples/minimal.toml", Stage::KubeScheduler);
        let kubeconfig = stage.nodes[0]
            .files
            .iter()
            .find(|file| file.path == "/etc/kubernetes/kube-scheduler.kubeconfig")
            .expect("kubeconfig is planned");
        assert_eq!(kubeconfig.mode, 0o600);
        let Content::Secret(text) = &kubeconfig.content else { panic!("kubeconfig must be secret") };
        assert!(text.contains("https://127.0.0.1:6443"), "{text}");
    }

    #[test]
    fn the_first_master_waits_until_one_of_them_leads() {
        let stage = stage_for("lab.toml", Stage::KubeScheduler);
        let asking: Vec<&str> = stage
            .nodes
            .iter()
            .filter(|actions| actions.checks.iter().any(|check| check.script.contains("get lease kube-scheduler ")))
            .map(|actions| actions.node.as_str())
            .collect();
        assert_eq!(asking, ["master1"]);
    }
}
