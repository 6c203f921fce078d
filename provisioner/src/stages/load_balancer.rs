//! Handbook 000 section 8.1.1: HAProxy in front of every kube-apiserver.
//!
//! The apiservers are identical and stateless, so making the API highly available
//! means giving clients one address that reaches whichever apiservers are alive.
//! HAProxy does the reaching: it accepts TCP connections on the API port and passes
//! each one, still encrypted, to one of the masters' apiservers in turn, skipping any
//! that fails its health check. TLS stays end to end between the client and the
//! apiserver, so client certificates keep working through the proxy.
//!
//! Every node with the `lb` role balances the API so, and keepalived (next stage) moves one
//! virtual IP between them. HAProxy listens on all addresses, so it serves the virtual
//! IP on whichever node holds it at the moment, without a restart when it moves.
//!
//! The node also gets a small HTTP endpoint on loopback that answers as long as HAProxy
//! runs; keepalived uses it to give up the virtual IP when HAProxy is gone. The same
//! endpoint serves HAProxy's statistics, which say whether its health check has each
//! apiserver UP or DOWN: the stage is done only when every HAProxy has every apiserver
//! UP, so a client of the finished lab never meets a backend HAProxy has not yet
//! checked.
//!
//! HAProxy on every master, `lb` or not, also answers `kubectl get componentstatuses`.
//! In Kubernetes 1.20 the apiserver asks its own node's controller manager and
//! scheduler for `/healthz` in plain HTTP on loopback (ports 10252 and 10251), but
//! they serve only HTTPS, which checks who asks (CIS 1.3.7 and 1.4.2: no plain HTTP
//! port, where anything on the master could read their metrics). HAProxy listens on
//! those two ports on loopback and passes `GET /healthz`, and nothing else, to each
//! component's HTTPS port, so the handbook's check of the control plane still sees
//! the components themselves.

use std::net::Ipv4Addr;

use crate::paths::{self, pki_files};
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan, UnitSpec};
use crate::stages::{kube_controller_manager, kube_scheduler};
use crate::topology::Role;

/// Debian's unit for HAProxy, which reads `paths::HAPROXY_CONFIG`.
pub const UNIT: &str = "haproxy.service";
/// Loopback URL that answers 200 while HAProxy runs (HAProxy's `monitor-uri`).
pub const MONITOR_URL: &str = "http://127.0.0.1:9000/healthz";
const MONITOR_BIND: &str = "127.0.0.1:9000";
const MONITOR_PATH: &str = "/healthz";
/// Loopback URL of HAProxy's statistics as CSV: one row per server with its health
/// check's `status` (`UP`, `DOWN`, `no check`, ...) and `lastchg`, the seconds since it
/// last changed.
pub const STATS_CSV_URL: &str = "http://127.0.0.1:9000/stats;csv";
const STATS_PATH: &str = "/stats";
/// The backend of apiservers, as haproxy.cfg names it and HAProxy's statistics show it.
pub const BACKEND: &str = "kube-apiserver";

/// How long HAProxy may take to (re)start and find a healthy apiserver.
const READY_TIMEOUT_SECS: u64 = 60;

/// The plain HTTP probes of `kubectl get componentstatuses` that HAProxy answers on
/// every master: the component, the port the apiserver asks, and the component's
/// HTTPS port that HAProxy passes `/healthz` to.
pub const COMPONENTSTATUS_PROBES: [(&str, u16, u16); 2] = [
    ("kube-controller-manager", kube_controller_manager::COMPONENTSTATUS_PORT, kube_controller_manager::SECURE_PORT),
    ("kube-scheduler", kube_scheduler::COMPONENTSTATUS_PORT, kube_scheduler::SECURE_PORT),
];

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let network = &topology.network;

    let backends: String = topology
        .nodes_with(Role::Master)
        .map(|master| format!("    server {} {}:{}\n", master.name, master.address, network.apiserver_port))
        .collect();
    let header = "# Written by the k8s lab; `lab up` overwrites local changes.

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
";
    let api = format!(
        "
# HAProxy in front of every kube-apiserver (handbook 000 section 8.1.1).
frontend kube-apiserver
    # All addresses, so it serves the virtual IP on whichever node holds it.
    bind *:{api_port}
    default_backend {BACKEND}

backend {BACKEND}
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
# Loopback only: answers while HAProxy runs, for keepalived's check, and shows (read
# only) which apiservers the health check has UP, for the lab's own checks.
listen monitor
    mode http
    bind {MONITOR_BIND}
    monitor-uri {MONITOR_PATH}
    stats enable
    stats uri {STATS_PATH}
",
        api_port = network.api_port,
    );
    let probes: String = COMPONENTSTATUS_PROBES
        .iter()
        .map(|&(component, port, secure_port)| componentstatus_probe(component, port, secure_port))
        .collect();

    let ca = paths::kubernetes_pki(pki_files::CA_CERT);
    let client_cert = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_CERT);
    let client_key = paths::kubernetes_pki(pki_files::APISERVER_KUBELET_CLIENT_KEY);
    let through_haproxy = format!("https://{}:{}", Ipv4Addr::LOCALHOST, network.api_port);

    for node in topology.nodes_with(Role::Master) {
        let balances = node.has(Role::Lb);
        let config = format!("{header}{}{probes}", if balances { api.as_str() } else { "" });
        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text(paths::HAPROXY_CONFIG, 0o644, config));
        // A configuration error should fail the stage with HAProxy's own message, before
        // the restart that would take the running proxy down.
        actions.commands.push(CommandSpec {
            description: "check the HAProxy configuration".to_string(),
            script: format!("/usr/sbin/haproxy -c -f {}", paths::HAPROXY_CONFIG),
            when: RunWhen::FilesChanged,
        });
        actions.units.push(UnitSpec {
            name: UNIT.to_string(),
            restart_when_changed: vec![paths::HAPROXY_CONFIG.to_string()],
            ..UnitSpec::default()
        });
        // The components start beside HAProxy (their stages run at once): the check
        // waits for them.
        for (component, port, _) in COMPONENTSTATUS_PROBES {
            actions.checks.push(CheckSpec {
                description: format!("HAProxy on {} answers componentstatuses' probe of {component}", node.name),
                script: format!("curl --silent --show-error --fail --max-time 5 http://127.0.0.1:{port}/healthz"),
                timeout_secs: READY_TIMEOUT_SECS,
            });
        }
        if !balances {
            continue;
        }
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
        // HAProxy starts with every server UP and takes one out only after failed checks,
        // and an apiserver restarted by an earlier stage may still be DOWN here: wait
        // until the health check has brought every one back.
        actions.checks.push(CheckSpec {
            description: format!("HAProxy on {} has every apiserver UP", node.name),
            script: every_apiserver_up(topology.nodes_with(Role::Master).map(|master| master.name.as_str())),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }
}

/// The part of haproxy.cfg that answers componentstatuses' plain HTTP probe of
/// `component` on loopback `port`, by its HTTPS port `secure_port` on loopback.
fn componentstatus_probe(component: &str, port: u16, secure_port: u16) -> String {
    format!(
        "
# `kubectl get componentstatuses` asks for {component}'s health here, in plain HTTP.
# {component} serves HTTPS only: pass GET /healthz to it, refuse everything else.
# Its serving certificate is made up at its start (self-signed), so it is not
# verified: both ends are on loopback.
frontend {component}-healthz
    mode http
    bind 127.0.0.1:{port}
    http-request deny unless {{ method GET }} {{ path /healthz }}
    default_backend {component}-healthz

backend {component}-healthz
    mode http
    server {component} 127.0.0.1:{secure_port} ssl verify none
"
    )
}

/// A script that fails, naming the apiservers and their states, unless HAProxy's
/// statistics show every one of `masters` UP in the apiserver backend (column 18 of
/// the CSV is the server's `status`).
fn every_apiserver_up<'a>(masters: impl Iterator<Item = &'a str>) -> String {
    let masters: Vec<&str> = masters.collect();
    let script = r#"stats=$(curl --silent --show-error --fail --max-time 5 'STATS') || exit 1
not_up=
for master in MASTERS; do
    status=$(printf '%s\n' "$stats" | awk -F, -v server="$master" '$1 == "BACKEND" && $2 == server { print $18 }')
    [ "$status" = UP ] || not_up="$not_up $master (${status:-not in the backend})"
done
[ -z "$not_up" ] || { echo "not UP in HAProxy's health check:$not_up" >&2; exit 1; }"#;
    script.replace("STATS", STATS_CSV_URL).replace("MASTERS", &masters.join(" ")).replace("BACKEND", BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, planned_nodes, stage_for, stage_for_topology, topology};

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
    fn every_master_answers_componentstatuses_probes_on_loopback_and_only_lb_masters_balance() {
        let mut topology = topology("lab.toml");
        let master3 = topology.nodes.iter_mut().find(|node| node.name == "master3").unwrap();
        master3.roles.retain(|role| *role != Role::Lb);
        let stage = stage_for_topology(&topology, Stage::LoadBalancer);
        assert_eq!(planned_nodes(&stage), ["master1", "master2", "master3"]);
        for master in ["master1", "master3"] {
            let config = file(&stage, master, "/etc/haproxy/haproxy.cfg");
            for (component, port, secure_port) in
                [("kube-controller-manager", 10252, 10257), ("kube-scheduler", 10251, 10259)]
            {
                let expected = format!(
                    "frontend {component}-healthz\n    mode http\n    bind 127.0.0.1:{port}\n    \
                     http-request deny unless {{ method GET }} {{ path /healthz }}\n"
                );
                assert!(config.contains(&expected), "{master}: {expected}\n{config}");
                let server = format!("    server {component} 127.0.0.1:{secure_port} ssl verify none\n");
                assert!(config.contains(&server), "{master}: {server}\n{config}");
                let check = format!("http://127.0.0.1:{port}/healthz");
                assert!(
                    actions_on(&stage, master).checks.iter().any(|c| c.script.contains(&check)),
                    "{master}: {check}"
                );
            }
        }
        let balancer = file(&stage, "master1", "/etc/haproxy/haproxy.cfg");
        assert!(balancer.contains("frontend kube-apiserver\n"));
        let probes_only = file(&stage, "master3", "/etc/haproxy/haproxy.cfg");
        assert!(!probes_only.contains("kube-apiserver") && !probes_only.contains("monitor"), "{probes_only}");
        assert!(actions_on(&stage, "master3").checks.iter().all(|check| !check.script.contains(MONITOR_URL)));
    }

    #[test]
    fn monitor_endpoint_is_on_loopback_only() {
        let stage = stage_for("lab.toml", Stage::LoadBalancer);
        let config = file(&stage, "master1", "/etc/haproxy/haproxy.cfg");
        assert!(config.contains("    bind 127.0.0.1:9000\n    monitor-uri /healthz\n"));
        assert_eq!(MONITOR_URL, format!("http://{MONITOR_BIND}{MONITOR_PATH}"));
        assert!(config.contains("    stats enable\n    stats uri /stats\n"));
        assert_eq!(STATS_CSV_URL, format!("http://{MONITOR_BIND}{STATS_PATH};csv"));
    }

    /// Runs the "every apiserver UP" check against `csv` served by a stand-in `curl`.
    fn every_apiserver_up_against(csv: &str) -> std::process::Output {
        let bin = tempfile::tempdir().unwrap();
        let csv_file = bin.path().join("stats.csv");
        std::fs::write(&csv_file, csv).unwrap();
        let curl = bin.path().join("curl");
        std::fs::write(&curl, format!("#!/bin/sh\ncat {}\n", csv_file.display())).unwrap();
        std::fs::set_permissions(&curl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
        let script = every_apiserver_up(["master1", "master2", "master3"].into_iter());
        std::process::Command::new("sh").arg("-c").arg(script).env("PATH", path).output().unwrap()
    }

    #[test]
    fn the_stage_waits_for_every_apiserver_up_in_haproxys_health_check() {
        let header = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n";
        let row =
            |server: &str, status: &str| format!("kube-apiserver,{server},0,0,0,0,,0,0,0,,0,,0,0,0,0,{status},1\n");
        let frontend = "kube-apiserver,FRONTEND,,,0,0,2000,0,0,0,0,0,0,,,,,OPEN,\n";
        let all_up =
            format!("{header}{frontend}{}{}{}", row("master1", "UP"), row("master2", "UP"), row("master3", "UP"));
        assert!(every_apiserver_up_against(&all_up).status.success());

        let one_down =
            all_up.replace("master2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP", "master2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN");
        let output = every_apiserver_up_against(&one_down);
        assert!(!output.status.success());
        assert_eq!(String::from_utf8_lossy(&output.stderr), "not UP in HAProxy's health check: master2 (DOWN)\n");

        let unchecked = all_up.replace(",UP,", ",no check,");
        let output = every_apiserver_up_against(&unchecked);
        assert!(String::from_utf8_lossy(&output.stderr).contains("master1 (no check) master2 (no check)"));

        let missing = format!("{header}{}", row("master1", "UP"));
        let output = every_apiserver_up_against(&missing);
        assert!(String::from_utf8_lossy(&output.stderr).contains("master3 (not in the backend)"));
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
        let apiservers = config.lines().filter(|line| line.starts_with("    server ") && line.ends_with(":6443"));
        assert_eq!(apiservers.count(), 3, "{config}");
        assert!(!config.contains("etcd"));
    }
}
