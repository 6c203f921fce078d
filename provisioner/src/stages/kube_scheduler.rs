//! Handbook 000 sections 7.3 and 8.4: kube-scheduler with leader election.
//!
//! The scheduler decides where pods run: it watches for pods without a node, filters
//! the nodes that can take them (resources, taints, affinity) and binds each pod to the
//! best one. Kubelets then start what is bound to them.
//!
//! Like the controller manager, it runs on every master and elects a leader through
//! the API, so only one instance schedules at a time and another takes over if it stops
//! (section 8.4). Each instance talks to its own master's apiserver over loopback.
//! Since Kubernetes 1.19 the scheduler is configured with a KubeSchedulerConfiguration
//! file (API version `kubescheduler.config.k8s.io/v1beta1` in 1.20) rather than flags.

use std::net::Ipv4Addr;

use crate::paths;
use crate::pki::{self, names};
use crate::plan::{Context, FileSpec, StagePlan};
use crate::stages::{
    install_kubernetes_unit, kubernetes_unit, loopback_health_checks, KubernetesUnit, LeaderElection,
    TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use crate::topology::Role;

/// The unit this stage writes and starts on every master.
pub const UNIT: &str = "kube-scheduler.service";
/// The user name its certificate carries (CN), which Kubernetes' built-in RBAC knows.
const USER: &str = "system:kube-scheduler";
/// HTTPS port for health and metrics, with authentication (the 1.20 default).
pub const SECURE_PORT: u16 = 10259;
/// Plain HTTP health port, bound to loopback only: `kubectl get componentstatuses` in
/// 1.20 asks `http://127.0.0.1:10251/healthz` on the apiserver's node.
pub const INSECURE_PORT: u16 = 10251;

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
    // With a configuration file, the plain HTTP health and metrics listeners are set
    // here rather than with the deprecated `--address`/`--port` flags. Both default to
    // every address; the lab keeps them on loopback. Profiling is off here too (CIS
    // 1.4.1, as for the apiserver): the `--profiling` flag is ignored next to a
    // configuration file.
    let timing = LeaderElection::for_topology(topology);
    let leader_election = format!(
        "  leaseDuration: {}s\n  renewDeadline: {}s\n  retryPeriod: {}s\n",
        timing.lease_duration, timing.renew_deadline, timing.retry_period
    );
    let config = format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {kubeconfig_path}
leaderElection:
  leaderElect: true
{leader_election}healthzBindAddress: 127.0.0.1:{INSECURE_PORT}
metricsBindAddress: 127.0.0.1:{INSECURE_PORT}
enableProfiling: false
"
    );
    let flags = vec![
        format!("--config={}", paths::KUBE_SCHEDULER_CONFIG),
        // Health and metrics requests on the HTTPS port are checked against the apiserver
        // with the scheduler's own credentials.
        format!("--authentication-kubeconfig={kubeconfig_path}"),
        format!("--authorization-kubeconfig={kubeconfig_path}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={SECURE_PORT}"),
        // The same TLS as the apiserver's (CIS 1.2.34 asks it of the apiserver): Go's
        // defaults would also take TLS 1.0 and CBC ciphers with SHA-1.
        format!("--tls-min-version={TLS_MIN_VERSION}"),
        format!("--tls-cipher-suites={}", TLS_CIPHER_SUITES.join(",")),
        "--v=2".to_string(),
    ];
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
        actions.files.push(FileSpec::text(paths::KUBE_SCHEDULER_CONFIG, 0o644, &config));
        install_kubernetes_unit(
            actions,
            UNIT,
            "kube-scheduler",
            unit,
            &[paths::KUBE_SCHEDULER_CONFIG, &kubeconfig_path],
        );
        actions.checks.extend(loopback_health_checks(
            "kube-scheduler",
            &master.name,
            SECURE_PORT,
            INSECURE_PORT,
            READY_TIMEOUT_SECS,
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Content;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, flag, stage_for};

    #[test]
    fn configuration_elects_a_leader_with_the_scheduler_kubeconfig() {
        let stage = stage_for("lab.toml", Stage::KubeScheduler);
        assert_eq!(stage.nodes.len(), 3);
        let config = file(&stage, "master3", "/etc/kubernetes/kube-scheduler.yaml");
        assert!(config.contains("apiVersion: kubescheduler.config.k8s.io/v1beta1\n"));
        assert!(config.contains("  kubeconfig: /etc/kubernetes/kube-scheduler.kubeconfig\n"));
        assert!(config.contains("leaderElection:\n  leaderElect: true\n"));
        let unit = file(&stage, "master3", "/etc/systemd/system/kube-scheduler.service");
        assert_eq!(flag(unit, "config"), "/etc/kubernetes/kube-scheduler.yaml");
        assert_eq!(flag(unit, "bind-address"), "127.0.0.1");
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
}
