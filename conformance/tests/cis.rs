//! Items of the CIS Kubernetes Benchmark (profile `cis-1.20`, as kube-bench numbers
//! them), each checked by what the component does, not only by its flag. Each test's
//! name starts with the CIS numbers it covers.

use std::time::Duration;

use conformance::{lab, Identity};
use provisioner::pki::names;
use provisioner::stages::{kube_controller_manager, kube_scheduler};
use provisioner::topology::Role;

const TIMEOUT: Duration = Duration::from_secs(3);
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
