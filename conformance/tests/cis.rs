//! Items of the CIS Kubernetes Benchmark (profile `cis-1.20`, as kube-bench numbers
//! them), each checked by what the component does, not only by its flag. Each test's
//! name starts with the CIS numbers it covers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine, BASE64_STANDARD};
use conformance::{flag, lab, Identity, TestNamespace, TlsPolicy};
use provisioner::paths;
use provisioner::pki::names;
use provisioner::stages::{etcd, kube_apiserver, kube_controller_manager, kube_scheduler, kubelet};
use provisioner::topology::Role;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long an apiserver may take to write a request's event to its audit log. The log
/// backend writes each event as the request is answered; this is for a loaded host.
const AUDIT_DEADLINE: Duration = Duration::from_secs(10);
/// Where Go's profiler answers when a component serves it.
const PROFILING_PATH: &str = "/debug/pprof/";

/// CIS 1.2.20: no apiserver serves profiles (`--profiling=false`). Asked with the admin's
/// certificate, which may read every path, so that only a server without the profiler
/// answers 404.
///
/// Turn it red: `cargo lab break apiserver-profiling-on` (one apiserver with
/// `--profiling=true` answers 200).
#[test]
fn cis_1_2_20_apiservers_serve_no_profiles() {
    let lab = lab();
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let problems: Vec<String> = lab
        .nodes_with(Role::Master)
        .iter()
        .filter_map(|master| {
            let url = format!("https://{}:{port}{PROFILING_PATH}", master.address);
            match lab.block_on(admin.get(&url)) {
                Ok(reply) if reply.status == 404 => None,
                Ok(reply) => Some(format!("GET {url} as admin: HTTP {} instead of 404", reply.status)),
                Err(error) => Some(error.to_string()),
            }
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.3.2: no controller manager serves profiles (`--profiling=false`). Its plain
/// HTTP port on loopback needs no credentials, so the question is asked on each master.
///
/// Turn it red: `cargo lab break controller-manager-profiling-on`.
#[test]
fn cis_1_3_2_controller_managers_serve_no_profiles() {
    assert_no_profiles("kube-controller-manager", kube_controller_manager::INSECURE_PORT);
}

/// CIS 1.4.1: no scheduler serves profiles (`enableProfiling: false` in its
/// configuration file).
///
/// Turn it red: `cargo lab break scheduler-profiling-on`.
#[test]
fn cis_1_4_1_schedulers_serve_no_profiles() {
    assert_no_profiles("kube-scheduler", kube_scheduler::INSECURE_PORT);
}

/// On every master, the component on `port` (plain HTTP, loopback) answers its health
/// check, which shows that it is the one asked, and 404 for the profiler's path.
fn assert_no_profiles(component: &str, port: u16) {
    let lab = lab();
    let status = |node: &str, path: &str| {
        lab.sh(
            node,
            &format!("curl --silent --output /dev/null --write-out '%{{http_code}}' --max-time 5 http://127.0.0.1:{port}{path}"),
        )
    };
    let problems: Vec<String> = lab
        .nodes_with(Role::Master)
        .iter()
        .filter_map(|master| {
            let health = status(&master.name, "/healthz");
            if health != "200" {
                return Some(format!(
                    "{}: {component} answers /healthz on port {port} with {health}, not 200",
                    master.name
                ));
            }
            let profiles = status(&master.name, PROFILING_PATH);
            (profiles != "404").then(|| {
                format!(
                    "{}: {component} answers {PROFILING_PATH} on port {port} with HTTP {profiles}, not 404",
                    master.name
                )
            })
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.2.21-1.2.24: every apiserver writes an audit log by a policy, rotated by size
/// (100 MB) and kept 30 days, 10 files at most. Each apiserver is asked, directly, for
/// a path nobody else asks for; the request must appear in that apiserver's log within
/// seconds. Rotation cannot be watched in a test, so its flags are read from each
/// apiserver's command line.
///
/// Turn it red: `cargo lab break apiserver-audit-log-off` (one apiserver started with an
/// empty `--audit-log-path` writes no log).
#[test]
fn cis_1_2_21_to_24_apiservers_write_an_audit_log() {
    let lab = lab();
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let marker = unique("conformance-audit");
    let deadline = lab.patience(AUDIT_DEADLINE);
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        let command_line = lab.command_line(&master.name, kube_apiserver::UNIT);
        for (name, wanted) in [
            ("audit-policy-file", paths::AUDIT_POLICY),
            ("audit-log-path", paths::AUDIT_LOG),
            ("audit-log-maxage", "30"),
            ("audit-log-maxbackup", "10"),
            ("audit-log-maxsize", "100"),
        ] {
            let actual = flag(&command_line, name);
            if actual.as_deref() != Some(wanted) {
                problems.push(format!("{}: kube-apiserver --{name} is {actual:?}, not {wanted:?}", master.name));
            }
        }
        // A namespace that does not exist: the answer is 404, and the request is logged.
        let path = format!("/api/v1/namespaces/{marker}-{}", master.name);
        let url = format!("https://{}:{port}{path}", master.address);
        if let Err(error) = lab.block_on(admin.get(&url)) {
            problems.push(format!("GET {url}: {error}"));
            continue;
        }
        let logged = lab
            .try_sh(
                &master.name,
                &format!(
                    "timeout {} sh -c 'until grep -qsF -- {path} {log}; do sleep 0.2; done'",
                    deadline.as_secs().max(1),
                    log = paths::AUDIT_LOG
                ),
            )
            .unwrap_or_else(|error| panic!("{error}"));
        if logged.status != 0 {
            problems.push(format!(
                "{}: GET {path} is not in {} within {deadline:?} of its answer",
                master.name,
                paths::AUDIT_LOG
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.2.32-1.2.33: Secrets are encrypted before they reach etcd (`aescbc`, with the
/// lab's key). A Secret is created through each apiserver directly, and its value read
/// back raw from etcd (its gRPC gateway, as the etcd checks do) must start with
/// `k8s:enc:aescbc:v1:key1:` and must not contain the Secret's data.
///
/// Turn it red: `cargo lab break secrets-stored-in-clear` (one apiserver lists the
/// `identity` provider first: it writes Secrets in clear, and still reads them all).
#[test]
fn cis_1_2_32_and_33_apiservers_encrypt_secrets_in_etcd() {
    let lab = lab();
    let client = lab.kube();
    let namespace = lab.block_on(TestNamespace::create(&client, "secrets-encryption"));
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let etcd_client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let member = lab.nodes_with(Role::Etcd)[0];
    let port = lab.topology.network.apiserver_port;
    let encrypted_prefix = format!("k8s:enc:aescbc:v1:{}:", kube_apiserver::ENCRYPTION_KEY_NAME);
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        let name = format!("encrypted-through-{}", master.name);
        let plaintext = unique(&format!("conformance-plaintext-{}", master.name));
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": name },
            "stringData": { "value": plaintext },
        });
        let url = format!("https://{}:{port}/api/v1/namespaces/{}/secrets", master.address, namespace.name());
        match lab.block_on(admin.post_json(&url, &secret.to_string())) {
            Ok(reply) if reply.status == 201 => {}
            Ok(reply) => {
                problems.push(format!("POST {url}: HTTP {} {}", reply.status, reply.body.trim()));
                continue;
            }
            Err(error) => {
                problems.push(format!("POST {url}: {error}"));
                continue;
            }
        }
        let key = format!("/registry/secrets/{}/{name}", namespace.name());
        let range = json!({ "key": BASE64_STANDARD.encode(&key) });
        let etcd_url = format!("https://{}:{}/v3/kv/range", member.address, etcd::CLIENT_PORT);
        let reply = lab
            .block_on(etcd_client.post_json(&etcd_url, &range.to_string()))
            .unwrap_or_else(|error| panic!("reading {key} from etcd on {}: {error}", member.name));
        let answer: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|error| panic!("etcd's answer for {key} is not JSON ({error}): {}", reply.body));
        let Some(value) = answer["kvs"][0]["value"].as_str() else {
            problems.push(format!("etcd on {} has no {key}: {}", member.name, reply.body.trim()));
            continue;
        };
        let raw = BASE64_STANDARD.decode(value).expect("etcd's gateway answers values in base64");
        let starts = String::from_utf8_lossy(&raw[..raw.len().min(encrypted_prefix.len())]).into_owned();
        if starts != encrypted_prefix {
            problems.push(format!(
                "{key}, written through {}, starts with {starts:?} in etcd, not {encrypted_prefix:?}",
                master.name
            ));
        }
        if raw.windows(plaintext.len()).any(|window| window == plaintext.as_bytes()) {
            problems.push(format!("{key}, written through {}, holds its data in clear in etcd", master.name));
        }
    }
    lab.block_on(namespace.delete());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.2.34: every apiserver speaks TLS 1.2 or newer with strong ciphers only
/// (`--tls-min-version`, `--tls-cipher-suites`). On each master, a TLS 1.1 handshake and
/// a TLS 1.2 one with a CBC cipher are refused, and a TLS 1.2 one with AES-GCM accepted.
///
/// Turn it red: `cargo lab break apiserver-old-tls-and-weak-ciphers` (one apiserver with
/// `--tls-min-version=VersionTLS10` and no `--tls-cipher-suites`: it accepts both).
#[test]
fn cis_1_2_34_apiservers_refuse_old_tls_and_weak_ciphers() {
    let lab = lab();
    let port = lab.topology.network.apiserver_port;
    let problems: Vec<String> = lab
        .nodes_with(Role::Master)
        .iter()
        .flat_map(|master| {
            lab.tls_policy_problems(&master.name, master.address, port, None, TlsPolicy::Tls12AndStrongCiphers)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 4.2.13: every kubelet's API speaks TLS 1.2 or newer with strong ciphers only
/// (`tlsMinVersion`, `tlsCipherSuites`), asked as for the apiservers.
///
/// Turn it red: `cargo lab break kubelet-old-tls-and-weak-ciphers`.
#[test]
fn cis_4_2_13_kubelets_refuse_old_tls_and_weak_ciphers() {
    let lab = lab();
    let problems: Vec<String> = lab
        .nodes_with(Role::Worker)
        .iter()
        .flat_map(|worker| {
            let port = kubelet::API_PORT;
            lab.tls_policy_problems(&worker.name, worker.address, port, None, TlsPolicy::Tls12AndStrongCiphers)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `prefix` and the time in nanoseconds: a name no other request or test uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{nanos:x}")
}
