//! Items of the CIS Kubernetes Benchmark (profile `cis-1.20`, as kube-bench numbers
//! them), each checked by what the component does, not only by its flag. Each test's
//! name starts with the CIS numbers it covers.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine, BASE64_STANDARD};
use conformance::{flag, lab, HttpsError, Identity, TestNamespace, TlsPolicy};
use provisioner::paths;
use provisioner::pki::names;
use provisioner::stages::{
    etcd, kube_apiserver, kube_controller_manager, kube_scheduler, kubelet, kubelet_certificates,
};
use provisioner::topology::{Node, Role};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long an apiserver may take to write a request's event to its audit log. The log
/// backend writes each event as the request is answered; this is for a loaded host.
const AUDIT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request through an apiserver's node proxy to a kubelet may take.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);
/// The label the NodeRestriction check puts on nodes and removes again.
const PROBE_LABEL: &str = "conformance.k8s-lab.local/node-restriction-probe";
/// Where Go's profiler answers when a component serves it.
const PROFILING_PATH: &str = "/debug/pprof/";

/// CIS 1.1.11: every etcd member's data directory is 0700, so only its owner can list
/// or read the database (Debian's etcd package makes it so, and etcd keeps it so).
///
/// Turn it red: `cargo lab break etcd-data-dir-readable-by-all` (one member's data
/// directory at 0755).
#[test]
fn cis_1_1_11_etcd_data_directories_are_private() {
    let lab = lab();
    let problems: Vec<String> = lab
        .nodes_with(Role::Etcd)
        .iter()
        .filter_map(|member| {
            let mode = lab.sh(&member.name, &format!("stat -c '%a' {}", paths::ETCD_DATA_DIR));
            (mode.trim() != "700").then(|| format!("{}: {} is {}", member.name, paths::ETCD_DATA_DIR, mode.trim()))
        })
        .collect();
    assert!(problems.is_empty(), "etcd data directories not 0700:\n{}", problems.join("\n"));
}

/// CIS 1.1.12: every etcd member runs as the `etcd` user, which owns its data directory
/// and everything in it, so a flaw in etcd gives the database and not the node. The
/// check reads the user of the unit's running process, not the unit file.
///
/// Turn it red: `cargo lab break etcd-runs-as-root` (one member's unit without `User=`).
#[test]
fn cis_1_1_12_etcd_runs_as_its_own_user_and_owns_its_data() {
    let lab = lab();
    let script = format!(
        "pid=$(systemctl show --property MainPID --value {unit}); \
         echo \"process $(ps -o user= -p \"$pid\")\"; \
         echo \"directory $(stat -c %U:%G {dir})\"; \
         find {dir} ! -user {user} -printf 'foreign %u %p\\n' | head -3",
        unit = etcd::UNIT,
        dir = paths::ETCD_DATA_DIR,
        user = etcd::USER
    );
    let expected = [format!("process {}", etcd::USER), format!("directory {0}:{0}", etcd::USER)];
    let mut problems = Vec::new();
    for member in lab.nodes_with(Role::Etcd) {
        let report = lab.sh(&member.name, &script);
        let lines: Vec<&str> = report.lines().map(str::trim).collect();
        for want in &expected {
            if !lines.contains(&want.as_str()) {
                problems.push(format!("{}: expected `{want}`, found {lines:?}", member.name));
            }
        }
        problems.extend(
            lines.iter().filter(|line| line.starts_with("foreign ")).map(|line| format!("{}: {line}", member.name)),
        );
    }
    assert!(problems.is_empty(), "etcd not run by {} owning its data:\n{}", etcd::USER, problems.join("\n"));
}

/// CIS 1.1.9-1.1.10, 1.1.13-1.1.21 and 4.1.1-4.1.10: every file of the lab's
/// configuration on every node (kubeconfigs, certificates and keys, unit files and their
/// drop-ins, the CNI configuration, kubelet's and kube-proxy's configuration files) is
/// owned by root:root and mode 644 or stricter: no user but root can change what the
/// components run with or whom they trust. (Private keys and kubeconfigs are held to
/// 0600 by `security::private_keys_and_kubeconfigs_are_readable_by_root_only`.)
///
/// Turn it red: `cargo lab break cni-config-writable-by-all` (one worker's CNI
/// configuration at 0666).
#[test]
fn cis_1_1_and_4_1_configuration_files_are_owned_by_root_and_mode_644_or_stricter() {
    let lab = lab();
    let places = [
        paths::KUBERNETES_DIR,
        "/etc/etcd",
        paths::CNI_CONF_DIR,
        paths::SYSTEMD_DIR,
        "/var/lib/kube-proxy",
        "/var/lib/kubelet/config.yaml",
    ];
    // Files that are not root's, or that anyone but root may write, or that are
    // executable: 644 or stricter means none of the bits 0133. Not every node has every
    // place (a worker has no /etc/etcd), so find's complaints about those are dropped.
    let script = format!(
        "find {places} -type f -printf . 2>/dev/null | wc -c; \
         find {places} -type f \\( ! -user root -o ! -group root -o -perm /0133 \\) -printf '%m %u:%g %p\\n' 2>/dev/null; \
         true",
        places = places.join(" ")
    );
    let mut problems = Vec::new();
    for node in &lab.topology.nodes {
        let report = lab.sh(&node.name, &script);
        let mut lines = report.lines();
        let checked: usize = lines.next().and_then(|count| count.trim().parse().ok()).unwrap_or(0);
        if checked == 0 {
            problems.push(format!("{}: no configuration file found at all", node.name));
        }
        problems.extend(lines.filter(|line| !line.trim().is_empty()).map(|line| format!("{}: {line}", node.name)));
    }
    assert!(
        problems.is_empty(),
        "configuration files not root:root at 644 or stricter (mode owner path):\n{}",
        problems.join("\n")
    );
}

/// How long `lab plan --json` may take (it builds nothing: the lab is up).
const PLAN_TIMEOUT: Duration = Duration::from_secs(120);

/// CIS 1.1.9-1.1.10, 1.1.13-1.1.21 and 4.1.1-4.1.10, against the plan: every file
/// `lab plan --json` puts on a node is there with the mode and owner the plan gives it
/// (keys and kubeconfigs 0600, the rest root's at 644 or stricter, as the provisioner's
/// own test keeps the plan). One `stat` per node of every planned path.
///
/// Turn it red: `cargo lab break cni-config-writable-by-all` (0666 where the plan says
/// 0644), or `cargo lab break kubeconfig-world-readable` (0644 where it says 0600).
#[test]
fn cis_1_1_and_4_1_every_planned_file_has_its_planned_mode_and_owner() {
    let lab = lab();
    let completed = conformance::run_within(&mut conformance::cargo_lab_for_the_lab(&["plan", "--json"]), PLAN_TIMEOUT)
        .unwrap_or_else(|error| panic!("cannot run `cargo lab plan --json`: {error}"))
        .unwrap_or_else(|| panic!("`cargo lab plan --json` did not finish within {PLAN_TIMEOUT:?}"));
    assert!(completed.status.success(), "`cargo lab plan --json` failed: {}", completed.stderr);
    let plan: Value = serde_json::from_str(&completed.stdout).expect("`lab plan --json` prints JSON");
    // Per node, every planned path with its "MODE OWNER" (a later stage's file wins).
    let mut planned: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        std::collections::BTreeMap::new();
    for stage in plan["stages"].as_array().expect("the plan has stages") {
        for actions in stage["nodes"].as_array().into_iter().flatten() {
            let node = actions["node"].as_str().expect("a node's actions name it").to_string();
            for file in actions["files"].as_array().into_iter().flatten() {
                let (path, mode, owner) = (file["path"].as_str(), file["mode"].as_str(), file["owner"].as_str());
                let (Some(path), Some(mode), Some(owner)) = (path, mode, owner) else {
                    panic!("a planned file without path, mode or owner: {file}");
                };
                let mode = u32::from_str_radix(mode, 8).unwrap_or_else(|_| panic!("{path}: mode {mode:?}"));
                planned.entry(node.clone()).or_default().insert(path.to_string(), format!("{mode:o} {owner}"));
            }
        }
    }
    assert!(!planned.is_empty(), "the plan puts no file on any node");
    let mut problems = Vec::new();
    for (node, files) in &planned {
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        let found = lab.sh(node, &format!("stat -c '%a %U %n' {} 2>&1; true", paths.join(" ")));
        let actual: std::collections::BTreeMap<&str, &str> = found
            .lines()
            .filter_map(|line| {
                let (mode_owner, path) = line.rsplit_once(' ')?;
                Some((path, mode_owner))
            })
            .collect();
        for (path, want) in files {
            match actual.get(path.as_str()) {
                Some(have) if have == want => {}
                Some(have) => problems.push(format!("{node}: {path} is {have}, planned {want}")),
                None => problems.push(format!("{node}: {path} is missing, planned {want}")),
            }
        }
    }
    assert!(problems.is_empty(), "planned files differ in mode or owner:\n{}", problems.join("\n"));
}

/// CIS 1.2.5 and 4.2.10: every apiserver reaches every kubelet, through the node proxy
/// that `kubectl logs` and `kubectl exec` also take, and each kubelet serves the
/// certificate the lab CA issued for it (`tlsCertFile`), which the apiserver checks
/// against that CA (`--kubelet-certificate-authority`). The refusal is the other half:
/// a kubelet that serves any other certificate cannot be reached, which the fault below
/// shows (an apiserver that did not check would reach it as before).
///
/// Turn it red: `cargo lab break kubelet-serving-cert-self-signed` (one kubelet serves a
/// certificate for its name and address that it signed itself; the apiservers answer 500
/// with `x509: certificate signed by unknown authority`).
#[test]
fn cis_1_2_5_and_4_2_10_apiservers_reach_kubelets_by_their_lab_certificates_only() {
    let lab = lab();
    let admin = lab.https(Identity::Certificate(names::ADMIN), PROXY_TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        for worker in lab.nodes_with(Role::Worker) {
            let url = format!("https://{}:{port}/api/v1/nodes/{}/proxy/healthz", master.address, worker.name);
            match lab.block_on(admin.get(&url)) {
                Ok(reply) if reply.status == 200 && reply.body.trim() == "ok" => {}
                Ok(reply) => problems.push(format!("GET {url}: HTTP {}: {}", reply.status, reply.body.trim())),
                Err(error) => problems.push(error.to_string()),
            }
        }
    }
    assert!(problems.is_empty(), "an apiserver cannot reach a kubelet it should trust:\n{}", problems.join("\n"));
}

/// CIS 1.2.16: the NodeRestriction admission plugin limits each kubelet to its own Node
/// object. On every apiserver, with the first worker's own credentials, a label on its
/// own Node is accepted and one on the second worker's Node is refused (403, by the
/// admission plugin, since the Node authorizer lets any kubelet write nodes): without
/// it, a kubelet broken into could label other nodes to draw workloads with their
/// secrets onto itself. The labels are removed again with the admin's credentials.
///
/// Turn it red: `cargo lab break apiserver-node-restriction-off` (one apiserver without
/// the plugin lets the first worker label the second).
#[test]
fn cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node() {
    let lab = lab();
    if !lab.applies("a kubelet modifying another node", Role::Worker, 2) {
        return;
    }
    let workers = lab.nodes_with(Role::Worker);
    let (own, other) = (workers[0], workers[1]);
    let kubelet = lab.https(Identity::Certificate(&names::kubelet(&own.name)), TIMEOUT);
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        let node_url = |node: &str| format!("https://{}:{port}/api/v1/nodes/{node}", master.address);
        let patch = |client: &conformance::HttpsClient, node: &str, value: Value| {
            let body = json!({ "metadata": { "labels": { PROBE_LABEL: value } } }).to_string();
            lab.block_on(client.merge_patch(node_url(node), &body))
        };
        match patch(&kubelet, &own.name, json!(master.name)) {
            Ok(reply) if reply.status == 200 => {}
            Ok(reply) => problems.push(format!(
                "{}: {} may not label its own node: HTTP {}: {}",
                master.name,
                own.name,
                reply.status,
                status_message(&reply.body)
            )),
            Err(error) => problems.push(format!("{}: {error}", master.name)),
        }
        match patch(&kubelet, &other.name, json!(master.name)) {
            Ok(reply) if reply.status == 403 && reply.body.contains("not allowed to modify node") => {}
            Ok(reply) => problems.push(format!(
                "{}: {} labelling {}: HTTP {} instead of 403 from NodeRestriction: {}",
                master.name,
                own.name,
                other.name,
                reply.status,
                status_message(&reply.body)
            )),
            Err(error) => problems.push(format!("{}: {error}", master.name)),
        }
        for node in [own, other] {
            if let Err(error) = patch(&admin, &node.name, Value::Null) {
                problems.push(format!(
                    "{}: the admin cannot remove the probe label from {}: {error}",
                    master.name, node.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What an API reply says in a line: a Status's message, or that an object came back.
fn status_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(reply) if reply["kind"] == "Status" => reply["message"].as_str().unwrap_or_default().to_string(),
        Ok(reply) => format!("the {} came back changed", reply["kind"].as_str().unwrap_or("object")),
        Err(_) => body.chars().take(200).collect(),
    }
}

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

/// CIS 1.3.2: no controller manager serves profiles (`--profiling=false`). Its HTTPS
/// port is on loopback, so the question is asked on each master, with the admin's
/// certificate (which may read every path), so that only a server without the
/// profiler answers 404.
///
/// Turn it red: `cargo lab break controller-manager-profiling-on`.
#[test]
fn cis_1_3_2_controller_managers_serve_no_profiles() {
    assert_no_profiles("kube-controller-manager", kube_controller_manager::SECURE_PORT);
}

/// CIS 1.4.1: no scheduler serves profiles (`--profiling=false`), asked as for the
/// controller managers.
///
/// Turn it red: `cargo lab break scheduler-profiling-on`.
#[test]
fn cis_1_4_1_schedulers_serve_no_profiles() {
    assert_no_profiles("kube-scheduler", kube_scheduler::SECURE_PORT);
}

/// On every master, the component on its HTTPS `port` on loopback answers its health
/// check, which shows that it is the one asked, and 404 for the profiler's path to
/// the admin. The admin's certificate and key come from the master's admin kubeconfig
/// into a directory only root can read, removed after.
fn assert_no_profiles(component: &str, port: u16) {
    let lab = lab();
    let script = format!(
        "set -e; dir=$(mktemp -d); trap 'rm -rf \"$dir\"' EXIT; umask 077; \
         sed -n 's/^ *client-certificate-data: //p' {kubeconfig} | base64 -d > \"$dir/cert\"; \
         sed -n 's/^ *client-key-data: //p' {kubeconfig} | base64 -d > \"$dir/key\"; \
         for path in /healthz {PROFILING_PATH}; do \
           curl --silent --insecure --cert \"$dir/cert\" --key \"$dir/key\" --output /dev/null \
             --write-out '%{{http_code}} ' --max-time 5 \"https://127.0.0.1:{port}$path\"; \
         done",
        kubeconfig = paths::ADMIN_KUBECONFIG,
    );
    let problems: Vec<String> = lab
        .nodes_with(Role::Master)
        .iter()
        .filter_map(|master| {
            let answers = lab.sh(&master.name, &script);
            match answers.split_whitespace().collect::<Vec<_>>()[..] {
                ["200", "404"] => None,
                ["200", profiles] => Some(format!(
                    "{}: {component} answers {PROFILING_PATH} on port {port} with HTTP {profiles}, not 404",
                    master.name
                )),
                _ => Some(format!(
                    "{}: {component} on port {port} answers /healthz and {PROFILING_PATH} with `{}`, not 200 and 404",
                    master.name,
                    answers.trim()
                )),
            }
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.2.18 and 1.2.19: no apiserver serves the unauthenticated insecure port. Each
/// listens on its secure port alone, and its command line has `--insecure-port=0` and
/// no `--insecure-bind-address`, as kube-bench reads them (Kubernetes 1.20 accepts no
/// other port and serves none, so only the command line can be wrong).
///
/// Turn it red: `cargo lab break apiserver-insecure-port-unset`.
#[test]
fn cis_1_2_18_and_1_2_19_apiservers_serve_no_insecure_port() {
    let lab = lab();
    let secure_port = lab.topology.network.apiserver_port;
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        let listening = lab.sh(&master.name, "ss -ltnpH");
        let sockets: Vec<&str> = listening
            .lines()
            .filter(|line| line.contains("((\"kube-apiserver\","))
            .filter_map(|line| line.split_whitespace().nth(3))
            .collect();
        if sockets.is_empty() || sockets.iter().any(|socket| !socket.ends_with(&format!(":{secure_port}"))) {
            problems.push(format!(
                "{}: kube-apiserver listens on {sockets:?}, not on port {secure_port} alone",
                master.name
            ));
        }
        let command_line = lab.command_line(&master.name, kube_apiserver::UNIT);
        if flag(&command_line, "insecure-port").as_deref() != Some("0") {
            problems.push(format!("{}: kube-apiserver runs without --insecure-port=0", master.name));
        }
        if let Some(address) = flag(&command_line, "insecure-bind-address") {
            problems.push(format!("{}: kube-apiserver runs with --insecure-bind-address={address}", master.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 1.3.7 and 1.4.2: the controller managers and the schedulers serve no plain
/// HTTP, where anything on the master could read their health and metrics without
/// credentials: each listens on its HTTPS port on loopback and on no other port.
/// `kubectl get componentstatuses` still reads their health (the componentstatuses
/// test) through HAProxy, which passes only `GET /healthz` on to the HTTPS ports.
///
/// Turn it red: `cargo lab break controller-manager-plain-http-port` (`--port=10262`
/// on one master), `cargo lab break scheduler-plain-http-port`.
#[test]
fn cis_1_3_7_and_1_4_2_controller_managers_and_schedulers_serve_no_plain_http() {
    let lab = lab();
    let components = [
        ("kube-controller-manager", kube_controller_manager::SECURE_PORT),
        ("kube-scheduler", kube_scheduler::SECURE_PORT),
    ];
    let mut problems = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        // `ss -p` names each listening socket's process as users:(("NAME",pid=...)), by
        // its command name, which Linux cuts to 15 characters ("kube-controller").
        let listening = lab.sh(&master.name, "ss -ltnpH");
        for (component, secure_port) in components {
            let command_name = &component[..component.len().min(15)];
            let sockets: Vec<&str> = listening
                .lines()
                .filter(|line| line.contains(&format!("((\"{command_name}\",")))
                .filter_map(|line| line.split_whitespace().nth(3))
                .collect();
            if sockets != [format!("127.0.0.1:{secure_port}")] {
                problems.push(format!(
                    "{}: {component} listens on {sockets:?}, not on 127.0.0.1:{secure_port} alone",
                    master.name
                ));
            }
        }
    }
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
    let namespace = lab.block_on(TestNamespace::create_without_pods(&client, "secrets-encryption"));
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

/// CIS 2.7: etcd trusts its own CA only. On every member, the client port refuses the
/// admin's certificate, which the cluster CA signed and which the apiservers let do
/// anything (a TLS alert, not an HTTP answer), and accepts the apiservers' client
/// certificate from etcd's CA; the peer port refuses a kubelet's certificate.
///
/// Turn it red: `cargo lab break etcd-trusts-the-cluster-ca` (one member trusts the
/// cluster CA besides its own and answers the admin's certificate).
#[test]
fn cis_2_7_etcd_trusts_only_its_own_ca() {
    let lab = lab();
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let apiserver = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let worker = lab.nodes_with(Role::Worker).first().map(|worker| names::kubelet(&worker.name));
    let kubelet = worker.as_deref().map(|stem| lab.https(Identity::Certificate(stem), TIMEOUT));
    let mut problems = Vec::new();
    for member in lab.nodes_with(Role::Etcd) {
        let client_url = format!("https://{}:{}/version", member.address, etcd::CLIENT_PORT);
        match lab.block_on(admin.get_unless_timeout(&client_url)) {
            Err(HttpsError::TlsRejected { .. }) => {}
            Ok(reply) => problems.push(format!(
                "{}: the client port answers the admin's certificate from the cluster CA: HTTP {}",
                member.name, reply.status
            )),
            Err(error) => problems.push(format!("{}: no TLS refusal of the admin's certificate: {error}", member.name)),
        }
        match lab.block_on(apiserver.get(&client_url)) {
            Ok(reply) if reply.status == 200 => {}
            Ok(reply) => {
                problems.push(format!("{}: the apiservers' certificate gets HTTP {}", member.name, reply.status))
            }
            Err(error) => problems.push(format!("{}: the apiservers' certificate: {error}", member.name)),
        }
        if let Some(kubelet) = &kubelet {
            let peer_url = format!("https://{}:{}/version", member.address, etcd::PEER_PORT);
            match lab.block_on(kubelet.get_unless_timeout(&peer_url)) {
                Err(HttpsError::TlsRejected { .. }) => {}
                Ok(reply) => problems.push(format!(
                    "{}: the peer port answers a kubelet's certificate: HTTP {}",
                    member.name, reply.status
                )),
                Err(error) => {
                    problems.push(format!("{}: no TLS refusal of a kubelet's certificate: {error}", member.name))
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// CIS 4.2.6: every kubelet runs with `protectKernelDefaults: true`, as its own
/// configuration endpoint reports it (`/configz`, through the apiserver's node proxy):
/// it checks the kernel settings it needs and refuses to start when one differs, rather
/// than changing the kernel. The node set them (`kubelet::KERNEL_SETTINGS_FILE`), so
/// each must hold on the node, or the kubelet would not be running.
///
/// Turn it red: `cargo lab break kubelet-changes-kernel-settings` (one kubelet with
/// `protectKernelDefaults: false`).
#[test]
fn cis_4_2_6_kubelets_protect_kernel_defaults() {
    let lab = lab();
    let mut problems = Vec::new();
    for worker in lab.nodes_with(Role::Worker) {
        match running_kubelet_config(worker) {
            Ok(config) => {
                let protect = config["protectKernelDefaults"].as_bool();
                if protect != Some(true) {
                    problems.push(format!("{}: the kubelet runs with protectKernelDefaults {protect:?}", worker.name));
                }
            }
            Err(problem) => problems.push(problem),
        }
        let differing = lab.sh(
            &worker.name,
            &format!(
                "grep -E '^[a-z]' {file} | while read -r key _ value; do \
                   actual=$(sysctl -n \"$key\"); [ \"$actual\" = \"$value\" ] || echo \"$key is $actual, not $value\"; \
                 done",
                file = kubelet::KERNEL_SETTINGS_FILE
            ),
        );
        if !differing.trim().is_empty() {
            problems.push(format!("{}: {}", worker.name, differing.trim().replace('\n', "; ")));
        }
    }
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

/// The configuration `worker`'s kubelet runs with, as it reports it through the first
/// master's apiserver (`configz`): what it does, not what its file says. A setting that
/// is false is left out.
fn running_kubelet_config(worker: &Node) -> Result<Value, String> {
    let lab = lab();
    let admin = lab.https(Identity::Certificate(names::ADMIN), PROXY_TIMEOUT);
    let master = lab.nodes_with(Role::Master)[0];
    let port = lab.topology.network.apiserver_port;
    let url = format!("https://{}:{port}/api/v1/nodes/{}/proxy/configz", master.address, worker.name);
    match lab.block_on(admin.get(&url)) {
        Ok(reply) if reply.status == 200 => serde_json::from_str::<Value>(&reply.body)
            .map(|configz| configz["kubeletconfig"].clone())
            .map_err(|error| format!("GET {url}: not JSON: {error}")),
        Ok(reply) => Err(format!("GET {url}: HTTP {}: {}", reply.status, reply.body.trim())),
        Err(error) => Err(error.to_string()),
    }
}

/// CIS 4.2.11 and 4.2.12: every kubelet renews its client certificate
/// (`rotateCertificates`) and gets and renews its serving certificate
/// (`serverTLSBootstrap`, with the RotateKubeletServerCertificate feature on, as 1.20
/// has it by default) through the API, read from the running kubelet's configuration.
/// `cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only` checks that
/// such requests are answered.
///
/// Turn it red: `cargo lab break kubelet-client-certificate-rotation-off` or
/// `cargo lab break kubelet-serving-certificate-rotation-off`.
#[test]
fn cis_4_2_11_and_4_2_12_kubelets_renew_their_certificates_through_the_api() {
    let lab = lab();
    let mut problems = Vec::new();
    for worker in lab.nodes_with(Role::Worker) {
        let config = match running_kubelet_config(worker) {
            Ok(config) => config,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        for setting in ["rotateCertificates", "serverTLSBootstrap"] {
            if config[setting].as_bool() != Some(true) {
                problems.push(format!("{}: the kubelet runs without {setting}", worker.name));
            }
        }
        if config["featureGates"]["RotateKubeletServerCertificate"].as_bool() == Some(false) {
            problems.push(format!("{}: the kubelet runs with RotateKubeletServerCertificate off", worker.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// How long the cluster may take to approve and sign a renewal request.
const RENEWAL_DEADLINE: Duration = Duration::from_secs(10);

/// CIS 1.3.6: a kubelet's renewal requests are signed by the lab CA, and a serving
/// certificate only for the node's own names. With the first worker's own credentials
/// the test asks for
/// - a client certificate in its name, which kube-controller-manager approves by
///   itself (the nodes' ClusterRoleBinding) and signs within 10 s;
/// - a serving certificate for the node's name and address, which the lab's approver
///   approves (every master runs it from a timer; the test starts it on each master at
///   once instead of waiting) and kube-controller-manager signs within 10 s;
/// - a serving certificate that also names `kubernetes.default.svc`, which no approver
///   approves: with it, the node could pose as the apiserver to every pod.
///
/// The timer must be running on every master. The requests are deleted afterwards.
///
/// Turn it red: `cargo lab break node-client-renewals-not-approved`,
/// `kubelet-serving-approver-approves-any-name` or `kubelet-serving-approver-stopped`.
#[test]
fn cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only() {
    let lab = lab();
    let worker = lab.nodes_with(Role::Worker)[0];
    let masters = lab.nodes_with(Role::Master);
    let base = format!(
        "https://{}:{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
        masters[0].address, lab.topology.network.apiserver_port
    );
    let node = lab.https(Identity::Certificate(&names::kubelet(&worker.name)), TIMEOUT);
    let admin = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let user = format!("system:node:{}", worker.name);
    let own_names = [worker.name.as_str()];
    let extra_names = [worker.name.as_str(), "kubernetes.default.svc"];
    let own_address = [IpAddr::V4(worker.address)];
    // Name, signer, DNS names, addresses, usage; the first two must be signed.
    let requests = [
        (
            unique("conformance-client-renewal"),
            "kubernetes.io/kube-apiserver-client-kubelet",
            &[][..],
            &[][..],
            "client auth",
        ),
        (
            unique("conformance-serving-renewal"),
            "kubernetes.io/kubelet-serving",
            &own_names[..],
            &own_address[..],
            "server auth",
        ),
        (
            unique("conformance-serving-foreign-name"),
            "kubernetes.io/kubelet-serving",
            &extra_names[..],
            &own_address[..],
            "server auth",
        ),
    ];

    let mut problems = Vec::new();
    for (name, signer, dns_names, ip_addresses, usage) in &requests {
        let body = json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": { "name": name },
            "spec": {
                "request": BASE64_STANDARD.encode(certificate_request(&user, dns_names, ip_addresses)),
                "signerName": signer,
                "usages": ["digital signature", "key encipherment", usage],
            },
        });
        match lab.block_on(node.post_json(&base, &body.to_string())) {
            Ok(reply) if reply.status == 201 => {}
            Ok(reply) => problems.push(format!(
                "{user} may not ask for {name}: HTTP {}: {}",
                reply.status,
                status_message(&reply.body)
            )),
            Err(error) => problems.push(error.to_string()),
        }
    }
    for master in &masters {
        let timer = kubelet_certificates::APPROVER_TIMER;
        if let Err(error) = lab.try_stdout(&master.name, &format!("systemctl is-active --quiet {timer}")) {
            problems.push(format!("{}: {timer} is not running: {error}", master.name));
        }
        if let Err(error) =
            lab.try_stdout(&master.name, &format!("systemctl start {}", kubelet_certificates::APPROVER_SERVICE))
        {
            problems.push(format!("{}: the approver failed: {error}", master.name));
        }
    }

    let ca = lab.pki().cert_path(provisioner::pki::CA_STEM);
    let ca_pem = std::fs::read_to_string(&ca).unwrap_or_else(|error| panic!("cannot read {}: {error}", ca.display()));
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("the lab CA is PEM");
    let ca_cert = ca_pem.parse_x509().expect("the lab CA is X.509");
    let give_up = Instant::now() + lab.patience(RENEWAL_DEADLINE);
    for (index, (name, _, _, _, _)) in requests.iter().enumerate() {
        let must_be_signed = index < 2;
        let status = loop {
            let status = match lab.block_on(admin.get(format!("{base}/{name}"))) {
                Ok(reply) if reply.status == 200 => {
                    serde_json::from_str::<Value>(&reply.body).unwrap_or_default()["status"].clone()
                }
                _ => Value::Null,
            };
            let signed = status["certificate"].as_str().is_some_and(|certificate| !certificate.is_empty());
            if !must_be_signed || signed || Instant::now() >= give_up {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let approved = status["conditions"]
            .as_array()
            .is_some_and(|conditions| conditions.iter().any(|condition| condition["type"] == "Approved"));
        if !must_be_signed {
            if approved {
                problems.push(format!("{name}, a serving certificate for {extra_names:?}, was approved"));
            }
            continue;
        }
        let Some(certificate) = status["certificate"].as_str().filter(|certificate| !certificate.is_empty()) else {
            problems
                .push(format!("{name} was not signed within {RENEWAL_DEADLINE:?} (approved: {approved}): {status}"));
            continue;
        };
        let pem = BASE64_STANDARD.decode(certificate).unwrap_or_default();
        match x509_parser::pem::parse_x509_pem(&pem) {
            Ok((_, pem)) => match pem.parse_x509() {
                Ok(issued) => {
                    if issued.verify_signature(Some(ca_cert.public_key())).is_err() {
                        problems.push(format!("{name} is not signed by the lab CA"));
                    }
                    let subject = issued.subject().to_string();
                    if !subject.contains(&format!("CN={user}")) {
                        problems.push(format!("{name} was issued for {subject}, not {user}"));
                    }
                }
                Err(error) => problems.push(format!("{name}: the issued certificate is not X.509: {error}")),
            },
            Err(error) => problems.push(format!("{name}: the issued certificate is not PEM: {error}")),
        }
    }

    for (name, _, _, _, _) in &requests {
        if let Err(error) = lab.block_on(admin.delete(format!("{base}/{name}"))) {
            eprintln!("cannot delete {name}: {error}");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A PEM certificate request in a node's name (`user`, group `system:nodes`) for these
/// names, with a fresh key that nothing keeps: the test needs the answer, not the key.
fn certificate_request(user: &str, dns_names: &[&str], ip_addresses: &[IpAddr]) -> String {
    let key = rcgen::KeyPair::generate().expect("an ECDSA key");
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::OrganizationName, "system:nodes");
    subject.push(rcgen::DnType::CommonName, user);
    params.distinguished_name = subject;
    for name in dns_names {
        params.subject_alt_names.push(rcgen::SanType::DnsName((*name).try_into().expect("a DNS name")));
    }
    params.subject_alt_names.extend(ip_addresses.iter().copied().map(rcgen::SanType::IpAddress));
    params.serialize_request(&key).and_then(|request| request.pem()).expect("a certificate request")
}

/// `prefix` and the time in nanoseconds: a name no other request or test uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{nanos:x}")
}
