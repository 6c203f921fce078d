//! Handbook 000 sections 7.2 and 8.4: kube-controller-manager with leader election.
//!
//! The controller manager is the cluster's watchdog: dozens of control loops
//! (Deployments, ReplicaSets, endpoints, service accounts, node lifecycle, ...) watch
//! the desired state through the apiserver and act until reality matches it. It also
//! signs certificate requests with the cluster CA and mints service-account tokens.
//!
//! Every master runs one, but two copies acting at once would fight each other, so
//! they elect a leader through a lease object in the API (`--leader-elect`): one is
//! active, the others wait and take over within seconds if it stops. That is all the
//! HA it needs (section 8.4), so each instance talks only to its own master's apiserver
//! over loopback: it does not depend on the virtual IP, and a master whose apiserver is
//! down simply loses the election.

use std::net::Ipv4Addr;

use crate::paths::{self, pki_files};
use crate::pki::{self, names};
use crate::plan::{Context, FileSpec, StagePlan};
use crate::stages::{
    install_kubernetes_unit, kubernetes_unit, leader_check, loopback_health_check, KubernetesUnit, LeaderElection,
    TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use crate::topology::Role;

/// The unit this stage writes and starts on every master.
pub const UNIT: &str = "kube-controller-manager.service";
/// The user name its certificate carries (CN), which Kubernetes' built-in RBAC knows.
const USER: &str = "system:kube-controller-manager";
/// HTTPS port for health and metrics, with authentication (the 1.20 default).
pub const SECURE_PORT: u16 = 10257;
/// The plain HTTP port `kubectl get componentstatuses` in 1.20 asks for the
/// controller manager's health (`http://127.0.0.1:10252/healthz` on the apiserver's
/// node). The controller manager serves no plain HTTP (CIS 1.3.7): HAProxy answers
/// this port on loopback and passes /healthz to the HTTPS port (`load_balancer`).
pub const COMPONENTSTATUS_PORT: u16 = 10252;

/// How long the controller manager may take to start serving health checks.
const READY_TIMEOUT_SECS: u64 = 60;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;

    let kubeconfig_path = paths::kubeconfig("kube-controller-manager");
    let kubeconfig = pki::kubeconfig(
        &topology.name,
        &context.apiserver_url_of(Ipv4Addr::LOCALHOST),
        &context.pki.ca.cert_pem,
        USER,
        context.pki.get(names::CONTROLLER_MANAGER),
    );
    let ca = paths::kubernetes_pki(pki_files::CA_CERT);
    let ca_key = paths::kubernetes_pki(pki_files::CA_KEY);
    let service_account_private = paths::kubernetes_pki(pki_files::SERVICE_ACCOUNT_PRIVATE_KEY);

    let mut flags = vec![
        // Health and metrics on loopback only: nothing outside the master needs them.
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={SECURE_PORT}"),
        // The same TLS as the apiserver's (CIS 1.2.34 asks it of the apiserver): Go's
        // defaults would also take TLS 1.0 and CBC ciphers with SHA-1.
        format!("--tls-min-version={TLS_MIN_VERSION}"),
        format!("--tls-cipher-suites={}", TLS_CIPHER_SUITES.join(",")),
        // No plain HTTP port (CIS 1.3.7): it would serve health and metrics to anything
        // on the master without authentication.
        "--port=0".to_string(),
        // The plan gives every worker a fixed /24 of the pod range, and the pod network
        // (routes and CNI configuration) is built from those. If the controller manager
        // allocated node CIDRs itself, it would hand them out in registration order and
        // they could disagree with the plan, so allocation stays off (and with it
        // `--cluster-cidr`, which only that allocation reads).
        "--allocate-node-cidrs=false".to_string(),
        format!("--cluster-name={}", topology.name),
        // Signs the certificates that CertificateSigningRequests ask for.
        format!("--cluster-signing-cert-file={ca}"),
        format!("--cluster-signing-key-file={ca_key}"),
        format!("--kubeconfig={kubeconfig_path}"),
        // Health and metrics requests are checked against the apiserver with the same
        // credentials.
        format!("--authentication-kubeconfig={kubeconfig_path}"),
        format!("--authorization-kubeconfig={kubeconfig_path}"),
        // CIS 1.3.2: no /debug/pprof, which would show the controller manager's inner
        // workings to anyone allowed to read it.
        "--profiling=false".to_string(),
    ];
    // `LeaderElection` says why the timing is what it is.
    let election = LeaderElection::for_topology(topology);
    flags.extend(election.flags());
    flags.extend([
        // Put into every service account's token secret so pods can verify the apiserver.
        format!("--root-ca-file={ca}"),
        format!("--service-account-private-key-file={service_account_private}"),
        format!("--service-cluster-ip-range={}", topology.network.service_cidr),
        // Each controller acts with its own service account, so RBAC grants each only
        // what it needs instead of everything the controller manager may do.
        "--use-service-account-credentials=true".to_string(),
        "--v=2".to_string(),
    ]);
    for master in topology.nodes_with(Role::Master) {
        let unit = kubernetes_unit(&KubernetesUnit {
            component: "kube-controller-manager",
            description: &format!("Kubernetes controller manager on {}", master.name),
            flags: &flags,
            ..KubernetesUnit::default()
        });

        let actions = stage.node(&master.name);
        // The kubeconfig embeds the controller manager's private key.
        actions.files.push(FileSpec::secret(&kubeconfig_path, &kubeconfig));
        install_kubernetes_unit(
            actions,
            UNIT,
            "kube-controller-manager",
            unit,
            &[&kubeconfig_path, &ca, &ca_key, &service_account_private],
        );
        actions.checks.push(loopback_health_check(
            "kube-controller-manager",
            &master.name,
            SECURE_PORT,
            READY_TIMEOUT_SECS,
        ));
    }
    // One of them must lead, asked once, through the first master.
    if let Some(first) = topology.nodes_with(Role::Master).next() {
        let check =
            leader_check("kube-controller-manager", &first.name, &kubeconfig_path, election, READY_TIMEOUT_SECS);
        stage.node(&first.name).checks.push(check);
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Content;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, flag, stage_for, stage_for_topology, topology};
    use crate::topology::{Acceleration, Backend};

    const UNIT_PATH: &str = "/etc/systemd/system/kube-controller-manager.service";

    #[test]
    fn elects_a_leader_and_uses_its_own_kubeconfig() {
        let stage = stage_for("lab.toml", Stage::KubeControllerManager);
        assert_eq!(stage.nodes.len(), 3);
        let unit = file(&stage, "master2", UNIT_PATH);
        assert_eq!(flag(unit, "leader-elect"), "true");
        for kubeconfig_flag in ["kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"] {
            assert_eq!(flag(unit, kubeconfig_flag), "/etc/kubernetes/kube-controller-manager.kubeconfig");
        }
        assert_eq!(flag(unit, "allocate-node-cidrs"), "false");
        assert_eq!(flag(unit, "service-cluster-ip-range"), "10.32.0.0/24");
        assert_eq!(flag(unit, "cluster-signing-key-file"), "/etc/kubernetes/pki/ca-key.pem");
    }

    #[test]
    fn leader_election_gets_more_time_where_machines_may_be_emulated() {
        let unit = |backend: Backend, acceleration: Acceleration| {
            let mut topology = topology("examples/minimal.toml");
            topology.machines.backend = backend;
            topology.machines.acceleration = acceleration;
            file(&stage_for_topology(&topology, Stage::KubeControllerManager), "master1", UNIT_PATH).to_string()
        };
        for native in [unit(Backend::Nspawn, Acceleration::Auto), unit(Backend::Libvirt, Acceleration::Kvm)] {
            assert_eq!(flag(&native, "leader-elect-lease-duration"), "15s", "Kubernetes' default");
            assert_eq!(flag(&native, "leader-elect-renew-deadline"), "10s", "Kubernetes' default");
            assert_eq!(flag(&native, "leader-elect-retry-period"), "1s", "a standby notices sooner");
        }
        let emulated = unit(Backend::Libvirt, Acceleration::Auto);
        assert_eq!(flag(&emulated, "leader-elect-lease-duration"), "120s");
        assert_eq!(flag(&emulated, "leader-elect-renew-deadline"), "90s");
        assert_eq!(flag(&emulated, "leader-elect-retry-period"), "10s");
    }

    #[test]
    fn kubeconfig_is_secret_and_targets_the_local_apiserver() {
        let stage = stage_for("lab.toml", Stage::KubeControllerManager);
        let kubeconfig = stage.nodes[0]
            .files
            .iter()
            .find(|file| file.path == "/etc/kubernetes/kube-controller-manager.kubeconfig")
            .expect("kubeconfig is planned");
        assert_eq!(kubeconfig.mode, 0o600);
        let Content::Secret(text) = &kubeconfig.content else { panic!("kubeconfig must be secret") };
        assert!(text.contains("https://127.0.0.1:6443"), "{text}");
    }

    #[test]
    fn serves_health_on_loopback_only_and_over_https_only() {
        let stage = stage_for("lab.toml", Stage::KubeControllerManager);
        let unit = file(&stage, "master1", UNIT_PATH);
        assert_eq!(flag(unit, "bind-address"), "127.0.0.1");
        assert_eq!(flag(unit, "port"), "0", "no plain HTTP port");
        let health: Vec<&str> = stage.nodes.iter().map(|actions| actions.checks[0].script.as_str()).collect();
        assert!(health.iter().all(|script| script.contains("https://127.0.0.1:10257/")), "{health:?}");
    }

    #[test]
    fn the_first_master_waits_until_one_of_them_leads() {
        let stage = stage_for("lab.toml", Stage::KubeControllerManager);
        let asking: Vec<&str> = stage
            .nodes
            .iter()
            .filter(|actions| {
                actions.checks.iter().any(|check| check.script.contains("get lease kube-controller-manager "))
            })
            .map(|actions| actions.node.as_str())
            .collect();
        assert_eq!(asking, ["master1"]);
    }
}
