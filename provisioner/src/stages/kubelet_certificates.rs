//! Part of handbook 000 section 9.1: the kubelets renew their own certificates
//! through the API (CIS 1.3.6, 4.2.11 and 4.2.12).
//!
//! The lab issues each kubelet its client certificate (how it logs in to the API) for a
//! year. With `rotateCertificates` on (the kubelet stage's configuration), the kubelet
//! asks for a new one on its own when most of that year has passed: it sends a
//! CertificateSigningRequest for its own identity, waits until the request is approved
//! and signed, and switches to the new certificate without a restart. With
//! `serverTLSBootstrap` on, it does the same for its serving certificate (its port
//! 10250), and asks for the first one at its first start: the lab does not issue it.
//!
//! Three things must be in place; the controller manager's stage does the first, this
//! module the other two:
//!
//! - **Signing.** kube-controller-manager signs approved requests with the cluster CA
//!   (`--cluster-signing-cert-file`, see its stage), the CA the apiservers trust for
//!   clients and for kubelets.
//! - **Approval of client certificates.** kube-controller-manager approves by itself a
//!   request from a node for a client certificate in that node's own name, but only
//!   when RBAC lets the node ask for one. The ClusterRoleBinding below grants that to
//!   the group `system:nodes` (kubeadm makes the same binding).
//! - **Approval of serving certificates.** Kubernetes 1.20 approves none by itself,
//!   and for good reason: the signer accepts any DNS name or address a node asks for,
//!   so a node broken into could ask for a certificate valid for
//!   `kubernetes.default.svc` and pose as the apiserver to every pod. On every master
//!   a systemd timer runs a small approver every 30 s: it approves a pending request
//!   only when the requesting node asks in its own name (`system:node:NAME`, group
//!   `system:nodes`) for exactly the names the plan gives that node (its name and
//!   address), and leaves every other request alone
//!   for a person to look at (`kubectl get csr`). Three masters run it so that
//!   approval does not depend on one; approving twice is harmless. A new kubelet does
//!   not wait for the timer: this stage's check on the first master runs the approver
//!   until every kubelet serves a certificate of the lab CA.

use crate::paths;
use crate::pki;
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, NodeActions, RunWhen, StagePlan, UnitSpec};
use crate::stages::kubelet;
use crate::topology::{Node, Role};

/// The binding that lets every node ask for its own client certificate.
pub const CLIENT_RENEWAL_BINDING: &str = "k8s-lab:nodes-renew-their-client-certificates";
/// The oneshot service that approves the kubelets' serving certificate requests.
pub const APPROVER_SERVICE: &str = "lab-kubelet-serving-approver.service";
/// The timer that runs `APPROVER_SERVICE`.
pub const APPROVER_TIMER: &str = "lab-kubelet-serving-approver.timer";
/// The approver's script.
pub const APPROVER_SCRIPT: &str = "/usr/local/libexec/k8s-lab/approve-kubelet-serving-certificates";
/// The line of the approver that compares the names asked for with the plan's: the
/// fault catalogue edits exactly this line.
pub const APPROVER_NAME_CHECK: &str = "[ \"$names\" = \"$planned\" ] || continue";
/// How often the approver looks for requests. A kubelet retries a request that is not
/// approved within 15 minutes, so anything well below that is enough.
const APPROVER_PERIOD_SECS: u64 = 30;
/// How long a new kubelet may take to register, ask for its serving certificate and
/// serve it once approved.
const SERVING_TIMEOUT_SECS: u64 = 120;

/// Where the first master keeps the binding's manifest.
pub fn client_renewal_manifest_path() -> String {
    format!("{}/kubelet-client-renewal.yaml", paths::MANIFESTS_DIR)
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let workers: Vec<&Node> = topology.nodes_with(Role::Worker).collect();
    for (index, master) in topology.nodes_with(Role::Master).enumerate() {
        let actions = stage.node(&master.name);
        if index == 0 {
            actions.files.push(FileSpec::text(client_renewal_manifest_path(), 0o644, client_renewal_manifest()));
            // `apply` changes only what differs, so it is safe to run every time.
            actions.commands.push(CommandSpec {
                description: "let the nodes renew their client certificates".to_string(),
                script: format!("{} apply -f {}", paths::admin_kubectl(), client_renewal_manifest_path()),
                when: RunWhen::Always,
            });
            for worker in &workers {
                actions.checks.push(serves_a_certificate_of_the_lab_ca(worker));
            }
        }
        install_approver(actions, &workers);
    }
}

/// The check that `worker`'s kubelet serves a certificate of the lab CA, which runs the
/// approver first so that a new kubelet's request is approved at once. The first master
/// reaches the kubelet port, as every apiserver does; connected to by address, the
/// kubelet shows the certificate it serves to the apiservers.
fn serves_a_certificate_of_the_lab_ca(worker: &Node) -> CheckSpec {
    CheckSpec {
        description: format!("the kubelet on {} serves a certificate of the lab CA", worker.name),
        script: format!(
            "systemctl start {APPROVER_SERVICE} && \
             timeout 5 openssl s_client -connect {address}:{port} </dev/null 2>/dev/null | openssl x509 -noout -issuer \
             | grep -qxF 'issuer=CN = {ca}'",
            address = worker.address,
            port = kubelet::API_PORT,
            ca = pki::CA_COMMON_NAME,
        ),
        timeout_secs: SERVING_TIMEOUT_SECS,
    }
}

/// The approver's script, service and timer on one master.
fn install_approver(actions: &mut NodeActions, workers: &[&Node]) {
    actions.files.push(FileSpec::text(APPROVER_SCRIPT, 0o755, approver_script(workers)));
    // The service is started by its timer only (and by hand), so it is a file and not
    // a unit the executor starts; the script is read afresh at every run.
    actions.files.push(FileSpec::text(paths::unit(APPROVER_SERVICE), 0o644, approver_service()));
    let timer_path = paths::unit(APPROVER_TIMER);
    actions.files.push(FileSpec::text(&timer_path, 0o644, approver_timer()));
    actions.units.push(UnitSpec {
        name: APPROVER_TIMER.to_string(),
        restart_when_changed: vec![timer_path, paths::unit(APPROVER_SERVICE)],
        ..UnitSpec::default()
    });
}

fn client_renewal_manifest() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# kube-controller-manager approves a node's request for a client certificate in its
# own name when the node may create such requests (CIS 4.2.11).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {CLIENT_RENEWAL_BINDING}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
"
    )
}

/// The approver: one `case` branch per worker with the names the plan gives it (its
/// name and address, as the kubelet asks for them), in the form `openssl req -text`
/// prints a request's subjectAltName (DNS names first, as the kubelet writes them).
fn approver_script(workers: &[&Node]) -> String {
    let planned: String = workers
        .iter()
        .map(|worker| {
            format!(
                "        system:node:{name}) planned='DNS:{name}, IP Address:{address}' ;;\n",
                name = worker.name,
                address = worker.address
            )
        })
        .collect();
    format!(
        r#"#!/bin/sh
# Written by the k8s lab; `lab up` overwrites local changes.
# Approves a kubelet's request for a serving certificate when the node asks in its own
# name for exactly the names the lab planned for it; leaves every other request alone.
set -eu
kubectl="{kubectl} --request-timeout=10s"

# Pending requests to the kubelet-serving signer: name, requesting user, conditions.
$kubectl get certificatesigningrequests -o jsonpath='{{range .items[?(@.spec.signerName=="kubernetes.io/kubelet-serving")]}}{{.metadata.name}} {{.spec.username}} {{.status.conditions[*].type}}{{"\n"}}{{end}}' |
while read -r request user conditions; do
    [ -z "$conditions" ] || continue
    case "$user" in
{planned}        *) continue ;;
    esac
    # A request that cannot be read is left alone, like any other that does not match.
    pem=$($kubectl get certificatesigningrequests "$request" -o jsonpath='{{.spec.request}}' | base64 -d) || continue
    subject=$(printf '%s\n' "$pem" | openssl req -noout -subject) || continue
    names=$(printf '%s\n' "$pem" | openssl req -noout -text |
        sed -n '/X509v3 Subject Alternative Name:/{{n;s/^ *//p;}}') || continue
    [ "$subject" = "subject=O = system:nodes, CN = $user" ] || continue
    {APPROVER_NAME_CHECK}
    $kubectl certificate approve "$request"
done
"#,
        kubectl = paths::admin_kubectl(),
    )
}

fn approver_service() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description=Approve the kubelets' serving certificate renewals (k8s lab)

[Service]
Type=oneshot
ExecStart={APPROVER_SCRIPT}
"
    )
}

fn approver_timer() -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description=Approve the kubelets' serving certificate renewals every {APPROVER_PERIOD_SECS} s (k8s lab)

[Timer]
OnActiveSec={APPROVER_PERIOD_SECS}s
OnUnitActiveSec={APPROVER_PERIOD_SECS}s
AccuracySec=1s

[Install]
WantedBy=timers.target
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, stage_for};

    #[test]
    fn every_master_approves_serving_renewals_for_the_planned_names_only() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        for master in ["master1", "master2", "master3"] {
            let script = file(&stage, master, APPROVER_SCRIPT);
            assert!(
                script.contains("system:node:worker2) planned='DNS:worker2, IP Address:10.240.0.22' ;;"),
                "{script}"
            );
            assert!(script.contains(APPROVER_NAME_CHECK));
            assert!(script.contains("\"subject=O = system:nodes, CN = $user\""));
            let actions = actions_on(&stage, master);
            assert!(actions.units.iter().any(|unit| unit.name == APPROVER_TIMER));
            assert!(actions.units.iter().all(|unit| unit.name != APPROVER_SERVICE), "only the timer starts it");
        }
    }

    #[test]
    fn the_first_master_lets_nodes_renew_their_client_certificates() {
        let stage = stage_for("lab.toml", Stage::Kubelet);
        let manifest = file(&stage, "master1", &client_renewal_manifest_path());
        assert!(manifest.contains("name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient\n"));
        assert!(manifest.contains("  kind: Group\n  name: system:nodes\n"));
        assert!(actions_on(&stage, "master1")
            .commands
            .iter()
            .any(|command| command.script.ends_with("kubelet-client-renewal.yaml")));
        assert!(actions_on(&stage, "master2").commands.is_empty());
    }
}
