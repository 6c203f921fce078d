//! Handbook 000 section 8.1.1: HAProxy in front of every kube-apiserver.
//!
//! The apiservers are identical and stateless, so making the API highly available
//! means giving clients one address that reaches whichever apiservers are alive.
//! HAProxy does the reaching: it accepts TCP connections on the API port and passes
//! each one, still encrypted, to one of the masters' apiservers in turn, skipping any
//! that fails its health check. TLS stays end to end between the client and the
//! apiserver, so client certificates keep working through the proxy.
//!
//! Every node with the `lb` role runs HAProxy, and keepalived (next stage) moves one
//! virtual IP between them. HAProxy listens on all addresses, so it serves the virtual
//! IP on whichever node holds it at the moment, without a restart when it moves.
//!
//! The node also gets a small HTTP endpoint on loopback that answers as long as HAProxy
//! runs; keepalived uses it to give up the virtual IP when HAProxy is gone.

use std::net::Ipv4Addr;

use crate::paths::{self, pki_files};
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan, UnitSpec};
use crate::topology::Role;

/// Debian's unit for HAProxy, which reads `paths::HAPROXY_CONFIG`.
pub const UNIT: &str = "haproxy.service";
/// Loopback URL that answers 200 while HAProxy runs (HAProxy's `monitor-uri`).
pub const MONITOR_URL: &str = "http://127.0.0.1:9000/healthz";
const MONITOR_BIND: &str = "127.0.0.1:9000";
const MONITOR_PATH: &str = "/healthz";

/// How long HAProxy may take to (re)start and find a healthy apiserver.
const READY_TIMEOUT_SECS: u64 = 60;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let network = &topology.network;

    let backends: String = topology
        .nodes_with(Role::Master)
        .map(|master| format!("    server {} {}:{}\n", master.name, master.address, network.apiserver_port))
        .collect();
    let config = format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# HAProxy in front of every kube-apiserver (handbook 000 section 8.1.1).

global
    log /dev/log local0 notice
    # Debian's unit makes /dev/log available inside the chroot.
    chroot /var/lib/haproxy
    user haproxy
    group haproxy

defaults
    log global
    # TCP passthrough: TLS and client certificates go straight to the apiservers.
    mode tcp
    option tcplog
    option dontlognull
    timeout connect 5s
    # Watches and `kubectl exec`/`logs -f` keep a connection open for a long time.
    timeout client 1h
    timeout server 1h

frontend kube-apiserver
    # All addresses, so it serves the virtual IP on whichever node holds it.
    bind *:{api_port}
    default_backend kube-apiserver

backend kube-apiserver
    balance roundrobin
    # A refused connection is retried on another apiserver at once, so clients do not
    # notice an apiserver that stopped before the health check has taken it out.
    option redispatch 1
    retries 2
    # A TCP connect check every 2 s; 2 failures take a server out, 2 successes bring it
    # back. An HTTP check of /healthz would need a client certificate, because
    # anonymous requests are refused; a closed port is what a stopped apiserver shows.
    default-server check inter 2s fall 2 rise 2
{backends}
# Loopback only: answers while HAProxy runs, for keepalived's check.
frontend monitor
    mode http
    bind {MONITOR_BIND}
    monitor-uri {MONITOR_PATH}
",
        api_port = network.api_port,
    );

    let ca = paths::kubernetes_pki(pki_files::CA_CERT);
    let client_cert = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_CERT);
    let client_key = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_KEY);
    let through_haproxy = format!("https://{}:{}", Ipv4Addr::LOCALHOST, network.api_port);

    for node in topology.nodes_with(Role::Lb) {
        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text(paths::HAPROXY_CONFIG, 0o644, &config));
        // A configuration error should fail the stage with HAProxy's own message, before
        // the restart that would take the running proxy down.
        actions.commands.push(CommandSpec {
            description: "check the HAProxy configuration".to_string(),
            script: format!("/usr/sbin/haproxy -c -f {}", paths::HAPROXY_CONFIG),
            when: RunWhen::FilesChanged,
        });
        actions
            .units
            .push(UnitSpec { name: UNIT.to_string(), restart_when_changed: vec![paths::HAPROXY_CONFIG.to_string()] });
        actions.checks.push(CheckSpec {
            description: format!("HAProxy on {} answers its monitor URL", node.name),
            script: format!("curl --silent --show-error --fail --max-time 5 {MONITOR_URL}"),
            timeout_secs: READY_TIMEOUT_SECS,
        });
        // An `lb` node is always a master, so it has a certificate signed by the lab CA
        // to pass the apiserver's authentication (any such certificate may read
        // /healthz), and loopback is in the apiserver's serving certificate.
        actions.checks.push(CheckSpec {
            description: format!("HAProxy on {} forwards the API port to an apiserver", node.name),
            script: format!(
                "curl --silent --show-error --fail --max-time 5 --cacert {ca} --cert {client_cert} \
                 --key {client_key} {through_haproxy}/healthz"
            ),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, planned_nodes, stage_for};

    #[test]
    fn balances_over_all_three_masters() {
        let stage = stage_for("lab.toml", Stage::LoadBalancer);
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["master1", "master2", "master3"]);
        let config = file(&stage, "master2", "/etc/haproxy/haproxy.cfg");
        for server in ["master1 10.240.0.11:6443", "master2 10.240.0.12:6443", "master3 10.240.0.13:6443"] {
            assert!(config.contains(&format!("    server {server}\n")), "{server} missing:\n{config}");
        }
        assert!(config.contains("    bind *:8443\n"));
        assert!(config.contains("    mode tcp\n"));
        assert!(config.contains("default-server check "));
    }

    #[test]
    fn monitor_endpoint_is_on_loopback_only() {
        let stage = stage_for("lab.toml", Stage::LoadBalancer);
        let config = file(&stage, "master1", "/etc/haproxy/haproxy.cfg");
        assert!(config.contains("    bind 127.0.0.1:9000\n    monitor-uri /healthz\n"));
        assert_eq!(MONITOR_URL, format!("http://{MONITOR_BIND}{MONITOR_PATH}"));
    }

    #[test]
    fn restarts_haproxy_when_its_configuration_changes() {
        let stage = stage_for("lab.toml", Stage::LoadBalancer);
        let unit = &stage.nodes[0].units[0];
        assert_eq!(unit.name, "haproxy.service");
        assert_eq!(unit.restart_when_changed, ["/etc/haproxy/haproxy.cfg"]);
    }

    #[test]
    fn separate_etcd_tier_is_not_a_backend() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::LoadBalancer);
        let config = file(&stage, "master1", "/etc/haproxy/haproxy.cfg");
        assert_eq!(config.matches("    server ").count(), 3);
        assert!(!config.contains("etcd"));
    }
}
