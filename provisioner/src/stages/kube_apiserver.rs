//! Handbook 000 sections 7.1 and 8.3: kube-apiserver on every master.
//!
//! The apiserver is the front door of the cluster: kubectl, the other control plane
//! components, kubelets and kube-proxy all talk only to it, and it is the only
//! component that talks to etcd. Every request passes three steps, as the handbook
//! explains: authentication (here only client certificates signed by the lab CA and
//! service-account tokens; anonymous requests are refused), authorization (`Node` for
//! kubelets, `RBAC` for everyone else) and admission control.
//!
//! The handbook first builds one master and then makes it highly available (section
//! 8.3). The apiserver is stateless, so HA needs no coordination between apiservers:
//! every master runs an identical one against the same etcd cluster, each
//! advertising its own address, and HAProxy plus keepalived (later stages) put one
//! virtual IP in front of them. The `kubernetes` Service's endpoints list every live
//! apiserver thanks to the lease endpoint reconciler.
//!
//! Two more files make the apiserver one a security review accepts (CIS Kubernetes
//! Benchmark 1.2.21-1.2.24 and 1.2.32-1.2.33). An audit log records who did what
//! through the API and when, which is how an administrator finds out what happened to
//! a cluster; the policy leaves out the heartbeats every component sends every few
//! seconds and logs every other request's metadata, never a body, so no Secret ends up
//! in the log. And Secrets are encrypted before they reach etcd, with a key the lab
//! makes and keeps with its PKI: a copy of etcd's data directory or a backup of it
//! does not give away every password and token in the cluster.
//!
//! The apiserver also calls kubelets (logs, exec, port-forward) with its
//! apiserver-kubelet-client certificate. The PKI issues it with O=system:masters, as
//! kubeadm does, so RBAC already allows those calls and no extra ClusterRoleBinding is
//! needed (kubernetes-the-hard-way, whose certificate lacks that group, binds one).

use std::net::Ipv4Addr;

use crate::paths::{self, pki_files};
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan};
use crate::stages::{
    install_kubernetes_unit, kubernetes_unit, KubernetesUnit, StopTimeout, TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use crate::topology::Role;

/// The unit this stage writes and starts on every master.
pub const UNIT: &str = "kube-apiserver.service";

/// How long the apiserver may take to stop before systemd kills it, and why it is not
/// the node's default (10 s), which every restart of an apiserver used to spend waiting
/// to be killed (measured 10.1-10.2 s on each master, 2026-12-05). The watch
/// termination grace period of Kubernetes 1.27 ends open watches on shutdown; 1.20 has
/// none.
const STOP_TIMEOUT_SECS: u32 = 3;
const STOP_TIMEOUT_WHY: &str = "Kubernetes 1.20's apiserver stops listening at once on SIGTERM, then waits for
every open watch to end, which none does before the 60 s request timeout
(kubernetes#103296): past the short requests in flight there is nothing to wait for.";

/// How long an apiserver may take to connect to etcd and report healthy.
const READY_TIMEOUT_SECS: u64 = 120;

/// Admission plugins, as in the handbook plus NodeRestriction, which limits each kubelet
/// to its own Node and the pods bound to it.
const ADMISSION_PLUGINS: &str =
    "NamespaceLifecycle,NodeRestriction,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota";

/// CIS 1.2.22-1.2.24: the audit log is rotated at 100 MB, and rotated files are kept
/// for 30 days, at most 10 of them.
const AUDIT_LOG_MAX_SIZE_MB: u32 = 100;
const AUDIT_LOG_MAX_AGE_DAYS: u32 = 30;
const AUDIT_LOG_MAX_BACKUPS: u32 = 10;

/// The name of the Secrets' encryption key in the EncryptionConfiguration, which the
/// apiserver writes in front of every value it encrypts (`k8s:enc:aescbc:v1:key1:`).
pub const ENCRYPTION_KEY_NAME: &str = "key1";
/// The line of the EncryptionConfiguration that lists its providers; the first one
/// encrypts what is written, and every one listed can decrypt what is read.
pub const ENCRYPTION_PROVIDERS_LINE: &str = "    providers:";

/// Secrets are encrypted with AES-CBC (the `aescbc` provider CIS 1.2.33 names) before
/// they are written to etcd. `identity` comes second so that Secrets written before
/// encryption was turned on (by an older lab) can still be read; they are encrypted
/// when next written.
fn encryption_config(key: &str) -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# CIS 1.2.32-1.2.33: Secrets are encrypted before they are written to etcd.
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
{ENCRYPTION_PROVIDERS_LINE}
      - aescbc:
          keys:
            - name: {ENCRYPTION_KEY_NAME}
              secret: {key}
      - identity: {{}}
"
    )
}

/// What the apiservers write to their audit logs (CIS 1.2.21 wants a log; kube-bench
/// reads only that a policy is given). Metadata level logs who made a request, what it
/// was, when, from where and the answer's status, never a request or response body:
/// Secrets never reach the log.
fn audit_policy() -> String {
    r#"# Written by the k8s lab; `lab up` overwrites local changes.
apiVersion: audit.k8s.io/v1
kind: Policy
# One event per request, when the answer starts or the request fails; not also when
# it was received.
omitStages:
  - RequestReceived
rules:
  # The heartbeats: leader election (leases, and the endpoints locks of Kubernetes
  # 1.20's controller manager and scheduler), node leases and node status, renewed
  # every few seconds by every component. They would fill the log with nothing anyone
  # asks about.
  - level: None
    verbs: ["get", "update", "patch"]
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
  - level: None
    users: ["system:kube-controller-manager", "system:kube-scheduler"]
    verbs: ["get", "update"]
    namespaces: ["kube-system"]
    resources:
      - group: ""
        resources: ["endpoints"]
  - level: None
    userGroups: ["system:nodes"]
    verbs: ["get", "patch", "update"]
    resources:
      - group: ""
        resources: ["nodes", "nodes/status"]
  # The control plane's own reading: the apiservers' reconcilers, and the watches the
  # controller manager, the scheduler and kube-proxy open again and again.
  - level: None
    users: ["system:apiserver"]
    verbs: ["get", "list", "watch"]
  - level: None
    users: ["system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy"]
    verbs: ["watch"]
  # Health checks and events.
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version"]
  - level: None
    resources:
      - group: ""
        resources: ["events"]
      - group: events.k8s.io
        resources: ["events"]
  # Everything else: who, what, when and the answer.
  - level: Metadata
"#
    .to_string()
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let network = &topology.network;

    let ca = paths::kubernetes_pki(pki_files::CA_CERT);
    let etcd_ca = paths::kubernetes_pki(pki_files::ETCD_CA_CERT);
    let serving_cert = paths::kubernetes_pki(pki_files::APISERVER_CERT);
    let serving_key = paths::kubernetes_pki(pki_files::APISERVER_KEY);
    let etcd_client_cert = paths::kubernetes_pki(pki_files::APISERVER_ETCD_CLIENT_CERT);
    let etcd_client_key = paths::kubernetes_pki(pki_files::APISERVER_ETCD_CLIENT_KEY);
    let kubelet_client_cert = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_CERT);
    let kubelet_client_key = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_KEY);
    let service_account_public = paths::kubernetes_pki(pki_files::SERVICE_ACCOUNT_PUBLIC_KEY);
    let service_account_private = paths::kubernetes_pki(pki_files::SERVICE_ACCOUNT_PRIVATE_KEY);

    for master in topology.nodes_with(Role::Master) {
        let flags = vec![
            format!("--advertise-address={}", master.address),
            // All addresses, so that both the node's own address (HAProxy's backends)
            // and loopback (the controller-manager and scheduler on this master) work.
            "--bind-address=0.0.0.0".to_string(),
            format!("--secure-port={}", network.apiserver_port),
            // CIS 1.2.19: no unauthenticated plain HTTP port. Kubernetes 1.20 serves none
            // whatever this says (it accepts only 0 and calls the flag deprecated); it is
            // set so that whoever reads the command line, kube-bench among them, sees
            // the port off.
            "--insecure-port=0".to_string(),
            "--allow-privileged=true".to_string(),
            "--anonymous-auth=false".to_string(),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--client-ca-file={ca}"),
            format!("--enable-admission-plugins={ADMISSION_PLUGINS}"),
            // etcd's certificates come from etcd's own CA (CIS 2.7), as does the
            // client certificate below: no other certificate of the cluster opens etcd.
            format!("--etcd-cafile={etcd_ca}"),
            format!("--etcd-certfile={etcd_client_cert}"),
            format!("--etcd-keyfile={etcd_client_key}"),
            format!("--etcd-servers={}", context.etcd_client_urls()),
            // Kubelets serve with their lab certificates, so the apiserver verifies them.
            format!("--kubelet-certificate-authority={ca}"),
            format!("--kubelet-client-certificate={kubelet_client_cert}"),
            format!("--kubelet-client-key={kubelet_client_key}"),
            // The nodes are not in any DNS; their addresses are in their certificates.
            "--kubelet-preferred-address-types=InternalIP,Hostname".to_string(),
            // Tokens are signed with the private key (by this apiserver for bound tokens,
            // by the controller-manager for legacy ones) and verified with the public key.
            format!("--service-account-key-file={service_account_public}"),
            format!("--service-account-signing-key-file={service_account_private}"),
            format!("--service-account-issuer=https://kubernetes.default.svc.{}", network.cluster_domain),
            format!("--service-cluster-ip-range={}", network.service_cidr),
            format!("--service-node-port-range={}", network.node_port_range),
            format!("--tls-cert-file={serving_cert}"),
            format!("--tls-private-key-file={serving_key}"),
            // CIS 1.2.34: TLS 1.2 or newer and strong ciphers only; Go's defaults would
            // also take TLS 1.0 and CBC ciphers with SHA-1.
            format!("--tls-min-version={TLS_MIN_VERSION}"),
            format!("--tls-cipher-suites={}", TLS_CIPHER_SUITES.join(",")),
            // Each apiserver keeps a lease in etcd and the `kubernetes` endpoints list
            // exactly the apiservers whose lease is live (the default since 1.11; the
            // older `--apiserver-count` is only read by the master-count reconciler).
            "--endpoint-reconciler-type=lease".to_string(),
            // CIS 1.2.20: no /debug/pprof. Profiles show how the server spends its time
            // and memory to anyone allowed to ask, and taking one costs the server CPU;
            // nobody needs them on a lab's apiserver.
            "--profiling=false".to_string(),
            // CIS 1.2.21-1.2.24: an audit log, rotated by size and kept for a while.
            format!("--audit-policy-file={}", paths::AUDIT_POLICY),
            format!("--audit-log-path={}", paths::AUDIT_LOG),
            format!("--audit-log-maxage={AUDIT_LOG_MAX_AGE_DAYS}"),
            format!("--audit-log-maxbackup={AUDIT_LOG_MAX_BACKUPS}"),
            format!("--audit-log-maxsize={AUDIT_LOG_MAX_SIZE_MB}"),
            // CIS 1.2.32-1.2.33: Secrets encrypted in etcd.
            format!("--encryption-provider-config={}", paths::ENCRYPTION_CONFIG),
            // Kubernetes 1.20's watch cache has a race (kubernetes#116122, fixed in 1.27):
            // after etcd ends its watches with "no leader", a client watch that comes back
            // while the cache is re-listing is accepted and then sent nothing until it
            // times out, 5 to 10 minutes for kube-proxy. Without the cache every client
            // watch is an etcd watch, which etcd ends and the client resumes; a lab's
            // etcd serves that many watches without strain.
            "--watch-cache=false".to_string(),
            "--v=2".to_string(),
        ];
        let unit = kubernetes_unit(&KubernetesUnit {
            component: "kube-apiserver",
            description: &format!("Kubernetes API server on {}", master.name),
            flags: &flags,
            stop_timeout: Some(StopTimeout { seconds: STOP_TIMEOUT_SECS, why: STOP_TIMEOUT_WHY }),
            ..KubernetesUnit::default()
        });

        let actions = stage.node(&master.name);
        actions
            .files
            .push(FileSpec::secret(paths::ENCRYPTION_CONFIG, encryption_config(&context.pki.secrets_encryption_key)));
        actions.files.push(FileSpec::text(paths::AUDIT_POLICY, 0o600, audit_policy()));
        // The log holds who did what in the cluster: root's only.
        actions.commands.push(CommandSpec {
            description: "make the audit log's directory".to_string(),
            script: format!("install -d -m 0700 {}", audit_log_dir()),
            when: RunWhen::Always,
        });
        install_kubernetes_unit(
            actions,
            UNIT,
            "kube-apiserver",
            unit,
            &[
                paths::ENCRYPTION_CONFIG,
                paths::AUDIT_POLICY,
                &ca,
                &etcd_ca,
                &serving_cert,
                &serving_key,
                &etcd_client_cert,
                &etcd_client_key,
                &kubelet_client_cert,
                &kubelet_client_key,
                &service_account_public,
                &service_account_private,
            ],
        );
        // With anonymous auth off even /healthz needs a client certificate; any
        // certificate signed by the lab CA will do, because RBAC lets every
        // authenticated user read /healthz. The apiserver's kubelet client certificate
        // is on every master. Loopback is in the serving certificate's SANs.
        actions.checks.push(CheckSpec {
            description: format!("kube-apiserver on {} answers /healthz", master.name),
            script: format!(
                "curl --silent --show-error --fail --max-time 5 --cacert {ca} --cert {kubelet_client_cert} \
                 --key {kubelet_client_key} {}/healthz",
                context.apiserver_url_of(Ipv4Addr::LOCALHOST),
            ),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }
}

/// The directory of the audit log.
fn audit_log_dir() -> &'static str {
    paths::AUDIT_LOG.rsplit_once('/').map_or("/", |(dir, _)| dir)
}

#[cfg(test)]
mod tests {
    use super::ENCRYPTION_PROVIDERS_LINE;
    use crate::paths;
    use crate::plan::{Content, Stage};
    use crate::stages::test_support::{actions_on, file, flag, planned_nodes, stage_for, topology};

    const UNIT_PATH: &str = "/etc/systemd/system/kube-apiserver.service";

    #[test]
    fn runs_on_every_master_advertising_its_own_address() {
        let stage = stage_for("lab.toml", Stage::KubeApiserver);
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["master1", "master2", "master3"]);
        assert_eq!(flag(file(&stage, "master3", UNIT_PATH), "advertise-address"), "10.240.0.13");
    }

    #[test]
    fn is_secure_by_default() {
        let stage = stage_for("lab.toml", Stage::KubeApiserver);
        let unit = file(&stage, "master1", UNIT_PATH);
        assert_eq!(flag(unit, "anonymous-auth"), "false");
        assert_eq!(flag(unit, "authorization-mode"), "Node,RBAC");
        assert_eq!(flag(unit, "client-ca-file"), "/etc/kubernetes/pki/ca.pem");
        assert_eq!(flag(unit, "kubelet-certificate-authority"), "/etc/kubernetes/pki/ca.pem");
        assert!(flag(unit, "enable-admission-plugins").split(',').any(|plugin| plugin == "NodeRestriction"));
        assert_eq!(flag(unit, "tls-min-version"), "VersionTLS12");
        let suites = flag(unit, "tls-cipher-suites");
        assert!(suites.split(',').all(|suite| suite.starts_with("TLS_ECDHE_") && !suite.contains("CBC")), "{suites}");
    }

    #[test]
    fn keeps_an_audit_log_and_encrypts_secrets_with_the_lab_key() {
        let stage = stage_for("lab.toml", Stage::KubeApiserver);
        let unit = file(&stage, "master1", UNIT_PATH);
        assert_eq!(flag(unit, "audit-policy-file"), paths::AUDIT_POLICY);
        assert_eq!(flag(unit, "audit-log-path"), paths::AUDIT_LOG);
        assert_eq!(
            [flag(unit, "audit-log-maxage"), flag(unit, "audit-log-maxbackup"), flag(unit, "audit-log-maxsize")],
            ["30", "10", "100"]
        );
        assert_eq!(flag(unit, "encryption-provider-config"), paths::ENCRYPTION_CONFIG);

        let actions = actions_on(&stage, "master1");
        let config = actions.files.iter().find(|file| file.path == paths::ENCRYPTION_CONFIG).unwrap();
        assert!(matches!(config.content, Content::Secret(_)), "the key is never shown");
        assert_eq!((config.mode, config.owner.as_str()), (0o600, "root"));
        let text = file(&stage, "master1", paths::ENCRYPTION_CONFIG);
        let aescbc = text.find("- aescbc:").expect("aescbc");
        assert!(aescbc < text.find("- identity: {}").expect("identity"), "aescbc writes, identity only reads");
        assert!(text.contains(&format!("{ENCRYPTION_PROVIDERS_LINE}\n      - aescbc:")), "the fault edits this");
        assert!(text.contains("secret: c2VjcmV0cy1lbmNyeXB0aW9uLWtleS1wbGFjZWhvbGRlcg=="));
        let restarts = &actions.units[0].restart_when_changed;
        assert!(restarts.iter().any(|path| path == paths::ENCRYPTION_CONFIG));
        assert!(restarts.iter().any(|path| path == paths::AUDIT_POLICY));
        assert!(actions.commands.iter().any(|command| command.script == "install -d -m 0700 /var/log/kubernetes"));
    }

    #[test]
    fn talks_to_all_three_etcd_members_over_tls() {
        let stage = stage_for("lab.toml", Stage::KubeApiserver);
        let unit = file(&stage, "master2", UNIT_PATH);
        assert_eq!(
            flag(unit, "etcd-servers"),
            "https://10.240.0.11:2379,https://10.240.0.12:2379,https://10.240.0.13:2379"
        );
        assert_eq!(flag(unit, "etcd-certfile"), "/etc/kubernetes/pki/apiserver-etcd-client.pem");
        assert_eq!(flag(unit, "etcd-keyfile"), "/etc/kubernetes/pki/apiserver-etcd-client-key.pem");
    }

    #[test]
    fn uses_the_topology_ranges() {
        let stage = stage_for("examples/minimal.toml", Stage::KubeApiserver);
        let unit = file(&stage, "master1", UNIT_PATH);
        assert_eq!(flag(unit, "service-cluster-ip-range"), "10.34.0.0/24");
        assert_eq!(flag(unit, "service-node-port-range"), "30000-32767");
        assert_eq!(flag(unit, "secure-port"), "6443");
        assert_eq!(flag(unit, "service-account-issuer"), "https://kubernetes.default.svc.cluster.local");
    }

    #[test]
    fn separate_etcd_tier_is_reached_from_the_masters() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::KubeApiserver);
        let unit = file(&stage, "master1", UNIT_PATH);
        assert_eq!(
            flag(unit, "etcd-servers"),
            "https://10.241.0.31:2379,https://10.241.0.32:2379,https://10.241.0.33:2379"
        );
        assert!(stage.nodes.iter().all(|actions| actions.node.starts_with("master")));
    }

    /// The module doc relies on this: without the group, the apiserver would need an
    /// RBAC binding to reach the kubelets.
    #[test]
    fn kubelet_client_certificate_is_in_system_masters() {
        let specs = crate::pki::specs(&topology("lab.toml"));
        let spec = specs
            .iter()
            .find(|spec| spec.name == crate::pki::names::APISERVER_KUBELET_CLIENT)
            .expect("the PKI issues the kubelet client certificate");
        assert_eq!(spec.organization.as_deref(), Some("system:masters"));
    }
}
