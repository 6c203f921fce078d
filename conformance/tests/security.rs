//! Secure by default: no anonymous access anywhere, authorization on every API, mutual TLS
//! between etcd members, private keys and kubeconfigs readable by root only, health and
//! metrics ports on loopback only (firewall.rs) and with strong TLS, and the CA key only
//! where the controller manager signs with it.
//!
//! Where it can, each test checks behaviour from the outside (the answer a request gets)
//! and not only the flag that should cause it.

use std::net::Ipv4Addr;
use std::time::Duration;

use conformance::{flag, lab, HttpsError, Identity, TlsPolicy};
use provisioner::paths;
use provisioner::pki::names;
use provisioner::stages::{etcd, kube_apiserver, kube_controller_manager, kube_proxy, kube_scheduler, kubelet};
use provisioner::topology::Role;

const TIMEOUT: Duration = Duration::from_secs(3);
/// The kubelet's unauthenticated read-only port, which the lab switches off.
const KUBELET_READ_ONLY_PORT: u16 = 10255;

/// Every apiserver, directly and through the virtual IP, answers a request without a
/// client certificate with 401 Unauthorized (`--anonymous-auth=false`).
///
/// Turn it red: `cargo lab break apiserver-anonymous-auth` (an apiserver with
/// `--anonymous-auth=true` answers 403, not 401).
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
        .filter_map(|url| match lab.block_on(anonymous.get_unless_timeout(url)) {
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
/// Turn it red: `cargo lab break apiserver-node-authorizer-off` (`Node` dropped from an
/// apiserver's `--authorization-mode`).
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
    let reply = lab
        .block_on(proxy.get_unless_timeout(format!("{api}/api/v1/secrets")))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(reply.status, 403, "kube-proxy listing every Secret must be forbidden: {}", reply.body);

    if let Some(worker) = lab.nodes_with(Role::Worker).first() {
        let kubelet = lab.https(Identity::Certificate(&names::kubelet(&worker.name)), TIMEOUT);
        let reply = lab
            .block_on(kubelet.get_unless_timeout(format!("{api}/api/v1/nodes/{}", worker.name)))
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
/// own peer certificate, is answered there. A refusal is the server ending the TLS
/// handshake with an alert: a timeout or a closed port would say nothing about
/// certificates.
///
/// Turn it red: `cargo lab break etcd-peer-cert-auth-off` (a member with
/// `--peer-client-cert-auth=false`), or `cargo lab break etcd-client-cert-auth-off`.
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
        match lab.block_on(anonymous.get_unless_timeout(&url)) {
            Err(HttpsError::TlsRejected { .. }) => {}
            Ok(reply) => panic!(
                "{}'s peer port answered a client without a certificate: HTTP {} {}",
                member.name,
                reply.status,
                reply.body.trim()
            ),
            Err(error) => panic!(
                "{}'s peer port did not refuse a client without a certificate with a TLS alert: {error}",
                member.name
            ),
        }
    }
}

/// Every kubelet refuses anonymous requests (401) and asks the apiserver whether an
/// authenticated user may do what it asks (webhook authorization: kube-proxy's identity
/// gets 403, the apiservers' kubelet client certificate 200).
///
/// Turn it red: `cargo lab break kubelet-anonymous-auth` (a kubelet with
/// `authentication.anonymous.enabled: true`).
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
            let reply = lab
                .block_on(client.get_unless_timeout(&url))
                .unwrap_or_else(|error| panic!("{} ({who}): {error}", worker.name));
            assert_eq!(reply.status, expected, "{}'s kubelet answered {who} with: {}", worker.name, reply.body.trim());
        }
    }
}

/// No kubelet serves its unauthenticated read-only port (`readOnlyPort: 0`): on every
/// worker nothing listens on port 10255, and a connection to it from the worker itself, to
/// its own address and to 127.0.0.1, is refused. The check runs inside the worker because
/// the firewall rejects 10255 from the node subnet whatever the kubelet serves.
///
/// Turn it red: `cargo lab break kubelet-read-only-port` (a kubelet with
/// `readOnlyPort: 10255`).
#[test]
fn kubelets_serve_no_read_only_port() {
    let lab = lab();
    let connect_timeout = lab.patience(TIMEOUT).as_secs().max(1);
    let mut problems = Vec::new();
    for worker in lab.nodes_with(Role::Worker) {
        for listener in lab.listeners(&worker.name).iter().filter(|listener| listener.port == KUBELET_READ_ONLY_PORT) {
            problems.push(format!("{}: listening on {listener}", worker.name));
        }
        // bash's /dev/tcp connects and nothing else; `timeout` bounds a connection that
        // neither completes nor is refused.
        let script = format!(
            "for address in {address} 127.0.0.1; do \
               if timeout {connect_timeout} bash -c \"exec 3<>/dev/tcp/$address/{KUBELET_READ_ONLY_PORT}\" 2>/dev/null; \
               then echo \"$address:{KUBELET_READ_ONLY_PORT} accepts connections\"; fi; \
             done",
            address = worker.address
        );
        problems.extend(lab.sh(&worker.name, &script).lines().map(|line| format!("{}: {line}", worker.name)));
    }
    assert!(
        problems.is_empty(),
        "kubelet read-only port {KUBELET_READ_ONLY_PORT} served from inside the workers:\n{}",
        problems.join("\n")
    );
}

/// Every file under the lab's configuration directories that holds a private key or the
/// credentials of a kubeconfig is mode 0600 and owned by root, on every node: PEM keys
/// (`PRIVATE KEY`), kubeconfigs that embed a client key (`client-key-data`, base64, which
/// never reads `PRIVATE KEY`), and any file named like a key (`*-key.pem`, `*.key`) or a
/// kubeconfig (`*kubeconfig*`, `/root/.kube/config`) whatever it holds.
///
/// Turn it red: `cargo lab break kubeconfig-world-readable` (one kubeconfig at 0644).
#[test]
fn private_keys_and_kubeconfigs_are_readable_by_root_only() {
    let lab = lab();
    let script = "for dir in /etc/kubernetes /etc/etcd /var/lib/kubelet /var/lib/kube-proxy /root/.kube; do \
                  [ -d \"$dir\" ] || continue; \
                  grep -rlZ -e 'PRIVATE KEY' -e 'client-key-data' \"$dir\"; \
                  find \"$dir\" -type f \\( -name '*-key.pem' -o -name '*.key' -o -name '*kubeconfig*' \
                  -o -path /root/.kube/config \\) -print0; \
                  done | sort -zu | xargs -0 -r stat -c '%a %U %n'";
    let kube_proxy_kubeconfig = paths::kubeconfig("kube-proxy");
    let mut problems = Vec::new();
    for node in &lab.topology.nodes {
        let files = lab.sh(&node.name, script);
        if files.trim().is_empty() {
            problems.push(format!("{}: no private key found at all", node.name));
        }
        // A kubeconfig every node with kube-proxy has: the search must find it.
        if kube_proxy::runs_on(node) && !files.lines().any(|line| line.ends_with(&format!(" {kube_proxy_kubeconfig}")))
        {
            problems.push(format!("{}: {kube_proxy_kubeconfig} was not found", node.name));
        }
        for line in files.lines().filter(|line| !line.starts_with("600 root ")) {
            problems.push(format!("{}: {line}", node.name));
        }
    }
    assert!(
        problems.is_empty(),
        "private keys and kubeconfigs not 0600 root (mode owner path):\n{}",
        problems.join("\n")
    );
}

/// No worker has the CA's private key, under its usual name or any other: a worker that
/// is broken into must not be able to mint cluster identities.
///
/// Turn it red: `cargo lab break ca-key-on-worker` (the CA's private key on a worker).
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

/// The controller managers' and schedulers' HTTPS ports (health and metrics, on
/// loopback) speak TLS 1.2 or newer with strong ciphers only, as the apiservers do:
/// asked on each master with OpenSSL, as for CIS 1.2.34.
///
/// Turn it red: `cargo lab break controller-manager-old-tls-and-weak-ciphers` or
/// `cargo lab break scheduler-old-tls-and-weak-ciphers`.
#[test]
fn controller_managers_and_schedulers_refuse_old_tls_and_weak_ciphers() {
    let lab = lab();
    let problems: Vec<String> = lab
        .nodes_with(Role::Master)
        .iter()
        .flat_map(|master| {
            [kube_controller_manager::SECURE_PORT, kube_scheduler::SECURE_PORT].into_iter().flat_map(|port| {
                lab.tls_policy_problems(&master.name, Ipv4Addr::LOCALHOST, port, None, TlsPolicy::Tls12AndStrongCiphers)
            })
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
