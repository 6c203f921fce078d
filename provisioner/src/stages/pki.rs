//! Handbook 000 section 3: certificates (CFSSL in the handbook, rcgen here).
//!
//! The handbook makes every certificate on one machine with CFSSL and copies them to
//! the servers with `scp`. The lab does the same: `pki::Store` has already issued the
//! whole PKI on the host, and this stage only distributes it. Each node receives only
//! what its roles need, so a compromised worker holds no key that could mint new
//! identities (never the CA key) and no key of another node:
//!
//! - an etcd member: etcd's CA certificate and its own serving and peer certificates;
//! - a master: the cluster CA certificate and key (kube-controller-manager signs kubelet
//!   certificate requests with them), etcd's CA certificate, kube-apiserver's serving
//!   certificate, its client certificates towards etcd and the kubelets, and the
//!   service-account key pair;
//! - a worker: the cluster CA certificate and its own kubelet certificate.
//!
//! etcd's CA is a CA of its own (CIS 2.7, see `pki`), and its key stays on the host.
//!
//! Private keys are mode 0600, certificates 0644, all owned by root: the Kubernetes
//! components run as root, and etcd, which runs as a user of its own, is handed copies
//! of its keys by systemd at each start (see the etcd stage), so no other user needs to
//! read them. Kubeconfigs are written by the stage of the component that uses
//! them.

use crate::paths::{self, pki_files};
use crate::pki::{names, Issued};
use crate::plan::{Context, FileSpec, NodeActions, StagePlan};
use crate::topology::Role;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let pki = context.pki;

    for node in &context.topology.nodes {
        let actions = stage.node(&node.name);

        if node.has(Role::Etcd) {
            actions.files.push(certificate(paths::etcd_pki(pki_files::CA_CERT), &pki.etcd_ca.cert_pem));
            install(
                actions,
                pki.get(&names::etcd_server(&node.name)),
                paths::etcd_pki(pki_files::ETCD_SERVER_CERT),
                paths::etcd_pki(pki_files::ETCD_SERVER_KEY),
            );
            install(
                actions,
                pki.get(&names::etcd_peer(&node.name)),
                paths::etcd_pki(pki_files::ETCD_PEER_CERT),
                paths::etcd_pki(pki_files::ETCD_PEER_KEY),
            );
        }

        if node.has(Role::Master) || node.has(Role::Worker) {
            actions.files.push(certificate(paths::kubernetes_pki(pki_files::CA_CERT), &pki.ca.cert_pem));
        }

        if node.has(Role::Master) {
            actions.files.push(FileSpec::secret(paths::kubernetes_pki(pki_files::CA_KEY), &pki.ca.key_pem));
            actions.files.push(certificate(paths::kubernetes_pki(pki_files::ETCD_CA_CERT), &pki.etcd_ca.cert_pem));
            install(
                actions,
                pki.get(names::APISERVER),
                paths::kubernetes_pki(pki_files::APISERVER_CERT),
                paths::kubernetes_pki(pki_files::APISERVER_KEY),
            );
            install(
                actions,
                pki.get(names::APISERVER_ETCD_CLIENT),
                paths::kubernetes_pki(pki_files::APISERVER_ETCD_CLIENT_CERT),
                paths::kubernetes_pki(pki_files::APISERVER_ETCD_CLIENT_KEY),
            );
            install(
                actions,
                pki.get(names::APISERVER_KUBELET_CLIENT),
                paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_CERT),
                paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_KEY),
            );
            // The public half is not secret: kube-apiserver verifies tokens with it.
            install(
                actions,
                &pki.service_account,
                paths::kubernetes_pki(pki_files::SERVICE_ACCOUNT_PUBLIC_KEY),
                paths::kubernetes_pki(pki_files::SERVICE_ACCOUNT_PRIVATE_KEY),
            );
        }

        if node.has(Role::Worker) {
            install(
                actions,
                pki.get(&names::kubelet(&node.name)),
                paths::kubernetes_pki(pki_files::KUBELET_CERT),
                paths::kubernetes_pki(pki_files::KUBELET_KEY),
            );
        }
    }
}

/// A certificate (or public key) file: readable by everyone, like CFSSL's output.
fn certificate(path: String, pem: &str) -> FileSpec {
    FileSpec::text(path, 0o644, pem)
}

/// Installs a certificate and its private key side by side.
fn install(actions: &mut NodeActions, issued: &Issued, cert_path: String, key_path: String) {
    actions.files.push(certificate(cert_path, &issued.cert_pem));
    actions.files.push(FileSpec::secret(key_path, &issued.key_pem));
}
