//! Secure by default: no anonymous access anywhere, authorization on every API, mutual TLS
//! between etcd members, private keys readable by root only, and the CA key only where the
//! controller manager signs with it.
//!
//! Where it can, each test checks behaviour from the outside (the answer a request gets)
//! and not only the flag that should cause it.

use std::time::Duration;

use conformance::{flag, lab, Identity, PortState};
use provisioner::paths;
use provisioner::pki::names;
use provisioner::stages::{etcd, kube_apiserver, kubelet};
use provisioner::topology::Role;

const TIMEOUT: Duration = Duration::from_secs(3);
/// The kubelet's unauthenticated read-only port, which the lab switches off.
const KUBELET_READ_ONLY_PORT: u16 = 10255;

/// Every apiserver, directly and through the virtual IP, answers a request without a
/// client certificate with 401 Unauthorized (`--anonymous-auth=false`).
///
/// Turn it red: stop one apiserver (`cargo lab ssh master1 -- systemctl stop
/// kube-apiserver`; it then answers nothing), or set `--anonymous-auth=true` in its unit.
#[test]
fn apiservers_refuse_anonymous_requests() {
    let lab = lab();
    let anonymous = lab.https(Identity::Anonymous, TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let mut urls: Vec<String> =
        lab.nodes_with(Role::Master).iter().map(|node| format!("https://{}:{port}/api", node.address)).collect();
    urls.push(format!("{}/api", lab.status.api_server_url));
    let problems: Vec<String> = urls
        .iter()
        .filter_map(|url| match lab.block_on(anonymous.get(url)) {
            Ok(reply) if reply.status == 401 => None,
            Ok(reply) => Some(format!("GET {url}: HTTP {} instead of 401: {}", reply.status, reply.body.trim())),
            Err(error) => Some(error.to_string()),
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every running apiserver has `--authorization-mode` with Node and RBAC, and both decide:
/// kube-proxy's identity may not list Secrets (RBAC), while a kubelet's identity may read
/// its own Node, which only the Node authorizer grants (RBAC binds `system:node` to nobody).
///
/// Turn it red: stop one apiserver (`cargo lab ssh master2 -- systemctl stop
/// kube-apiserver`), or drop `Node` from `--authorization-mode` in its unit.
#[test]
fn apiservers_authorize_with_node_and_rbac() {
    let lab = lab();
    for master in lab.nodes_with(Role::Master) {
        let command_line = lab.command_line(&master.name, kube_apiserver::UNIT);
        let modes = flag(&command_line, "authorization-mode").unwrap_or_default();
        let modes: Vec<&str> = modes.split(',').collect();
        assert!(
            modes.contains(&"Node") && modes.contains(&"RBAC"),
            "kube-apiserver on {} runs with --authorization-mode={modes:?}, not Node and RBAC",
            master.name
        );
    }

    let api = &lab.status.api_server_url;
    let proxy = lab.https(Identity::Certificate(names::KUBE_PROXY), TIMEOUT);
    let reply = lab.block_on(proxy.get(format!("{api}/api/v1/secrets"))).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(reply.status, 403, "kube-proxy listing every Secret must be forbidden: {}", reply.body);

    if let Some(worker) = lab.nodes_with(Role::Worker).first() {
        let kubelet = lab.https(Identity::Certificate(&names::kubelet(&worker.name)), TIMEOUT);
        let reply = lab
            .block_on(kubelet.get(format!("{api}/api/v1/nodes/{}", worker.name)))
            .unwrap_or_else(|error| panic!("{error}"));
        // 404 means authorized but not registered yet; 403 means the Node authorizer is missing.
        assert!(
            matches!(reply.status, 200 | 404),
            "{}'s kubelet must be allowed to read its Node: HTTP {} {}",
            worker.name,
            reply.status,
            reply.body
        );
    }
}

/// Every etcd member runs with `--client-cert-auth` and `--peer-client-cert-auth`, and its
/// peer port refuses a connection without a certificate, while another member, with its
/// own peer certificate, is answered there.
///
/// Turn it red: stop etcd on master3 (`cargo lab ssh master3 -- systemctl stop etcd`), or
/// set `--peer-client-cert-auth=false` in its unit.
#[test]
fn etcd_requires_client_and_peer_certificates() {
    let lab = lab();
    let anonymous = lab.https(Identity::Anonymous, TIMEOUT);
    let members = lab.nodes_with(Role::Etcd);
    for (index, member) in members.iter().enumerate() {
        let command_line = lab.command_line(&member.name, etcd::UNIT);
        for name in ["client-cert-auth", "peer-client-cert-auth"] {
            assert_eq!(
                flag(&command_line, name).as_deref(),
                Some("true"),
                "etcd on {} must run with --{name}=true",
                member.name
            );
        }

        // etcd also checks that a peer certificate names the address it connects from, so
        // only a member can make the accepted connection; the host makes the refused one.
        let url = format!("https://{}:{}/members", member.address, etcd::PEER_PORT);
        let neighbour = members[(index + 1) % members.len()];
        let as_peer = format!(
            "curl --http1.1 --silent --show-error --fail --max-time 3 --cacert {ca} --cert {cert} --key {key} {url}",
            ca = paths::etcd_pki(paths::pki_files::CA_CERT),
            cert = paths::etcd_pki(paths::pki_files::ETCD_PEER_CERT),
            key = paths::etcd_pki(paths::pki_files::ETCD_PEER_KEY),
        );
        lab.sh(&neighbour.name, &as_peer);
        let reply = lab.block_on(anonymous.get(&url));
        assert!(reply.is_err(), "{}'s peer port answered a client without a certificate: {reply:?}", member.name);
    }
}

/// Every kubelet refuses anonymous requests (401), asks the apiserver whether an
/// authenticated user may do what it asks (webhook authorization: kube-proxy's identity
/// gets 403, the apiservers' kubelet client certificate 200), and has no read-only port.
///
/// Turn it red: stop the kubelet on worker1 (`cargo lab ssh worker1 -- systemctl stop
/// kubelet`), or set `authentication.anonymous.enabled: true` in
/// /var/lib/kubelet/config.yaml and restart it.
#[test]
fn kubelets_refuse_anonymous_requests_and_authorize_through_the_apiserver() {
    let lab = lab();
    let anonymous = lab.https(Identity::Anonymous, TIMEOUT);
    let stranger = lab.https(Identity::Certificate(names::KUBE_PROXY), TIMEOUT);
    let apiserver = lab.https(Identity::Certificate(names::APISERVER_KUBELET_CLIENT), TIMEOUT);
    for worker in lab.nodes_with(Role::Worker) {
        let url = format!("https://{}:{}/pods", worker.address, kubelet::API_PORT);
        for (who, client, expected) in
            [("no certificate", &anonymous, 401), ("kube-proxy", &stranger, 403), ("the apiserver", &apiserver, 200)]
        {
            let reply =
                lab.block_on(client.get(&url)).unwrap_or_else(|error| panic!("{} ({who}): {error}", worker.name));
            assert_eq!(reply.status, expected, "{}'s kubelet answered {who} with: {}", worker.name, reply.body.trim());
        }
        let read_only = lab.block_on(lab.probe(worker.address, KUBELET_READ_ONLY_PORT, TIMEOUT));
        assert_ne!(
            read_only,
            PortState::Open,
            "{}'s kubelet read-only port {KUBELET_READ_ONLY_PORT} is open",
            worker.name
        );
    }
}

/// Every file under the lab's configuration directories that holds a private key (PEM keys
/// and kubeconfigs that embed one) is mode 0600 and owned by root, on every node.
///
/// Turn it red: `cargo lab ssh master1 -- chmod 0644 /etc/etcd/pki/server-key.pem`
/// (`chmod 0600` restores it).
#[test]
fn private_keys_are_readable_by_root_only() {
    let lab = lab();
    let script = "for dir in /etc/kubernetes /etc/etcd /var/lib/kubelet /var/lib/kube-proxy /root/.kube; do \
                  [ -d \"$dir\" ] && grep -rl --null -e 'PRIVATE KEY' \"$dir\"; done \
                  | xargs -0 -r stat -c '%a %U %n'";
    let mut problems = Vec::new();
    for node in &lab.topology.nodes {
        let files = lab.sh(&node.name, script);
        if files.trim().is_empty() {
            problems.push(format!("{}: no private key found at all", node.name));
        }
        for line in files.lines().filter(|line| !line.starts_with("600 root ")) {
            problems.push(format!("{}: {line}", node.name));
        }
    }
    assert!(problems.is_empty(), "private keys not 0600 root (mode owner path):\n{}", problems.join("\n"));
}

/// No worker has the CA's private key, under its usual name or any other: a worker that
/// is broken into must not be able to mint cluster identities.
///
/// Turn it red: `cargo lab ssh worker1 -- touch /etc/kubernetes/pki/ca-key.pem` (remove it
/// afterwards).
#[test]
fn workers_have_no_ca_private_key() {
    let lab = lab();
    let ca_key = std::fs::read_to_string(lab.pki().key_path("ca")).expect("the lab's CA key is readable on the host");
    // One line of the key's base64 body finds copies under any name.
    let fingerprint = ca_key.lines().nth(1).expect("a PEM key has a body");
    let script = format!(
        "find / -xdev -name ca-key.pem 2>/dev/null; \
         grep -rl -F -e '{fingerprint}' /etc /root /tmp /var/lib/kubelet /var/lib/kube-proxy 2>/dev/null; true"
    );
    for worker in lab.nodes_with(Role::Worker) {
        let found = lab.sh(&worker.name, &script);
        assert!(found.trim().is_empty(), "{} holds the CA private key: {}", worker.name, found.trim());
    }
}
