//! `kubectl get componentstatuses` (handbook 000 section 7.4): the apiserver's own view of
//! the scheduler, the controller manager and every etcd member.
//!
//! In Kubernetes 1.20 the apiserver that serves the request asks the scheduler and the
//! controller manager on its own node (plain HTTP on loopback ports 10251 and 10252,
//! which HAProxy answers by asking the components' HTTPS ports, `load_balancer`) and
//! every etcd server it was given (`etcd-0`, `etcd-1`, ... in `--etcd-servers` order).

use conformance::lab;
use k8s_openapi::api::core::v1::ComponentStatus;
use kube::api::ListParams;
use kube::Api;
use provisioner::topology::Role;

/// scheduler, controller-manager and `etcd-0` .. `etcd-N` all report Healthy.
///
/// Turn it red: `cargo lab break etcd-member-stopped` (every apiserver then reports that
/// member unhealthy), or `cargo lab break scheduler-stopped`.
#[test]
fn scheduler_controller_manager_and_every_etcd_member_are_healthy() {
    let lab = lab();
    let statuses = lab
        .block_on(Api::<ComponentStatus>::all(lab.kube()).list(&ListParams::default()))
        .unwrap_or_else(|error| panic!("cannot list componentstatuses: {error}"));

    let mut expected: Vec<String> = vec!["controller-manager".to_string(), "scheduler".to_string()];
    expected.extend((0..lab.nodes_with(Role::Etcd).len()).map(|index| format!("etcd-{index}")));
    expected.sort();
    let mut listed: Vec<String> = statuses.items.iter().filter_map(|status| status.metadata.name.clone()).collect();
    listed.sort();
    assert_eq!(listed, expected, "componentstatuses lists other components than the topology has");

    let unhealthy: Vec<String> = statuses
        .items
        .iter()
        .filter(|status| {
            !status
                .conditions
                .iter()
                .flatten()
                .any(|condition| condition.type_ == "Healthy" && condition.status == "True")
        })
        .map(|status| {
            let why: Vec<String> = status
                .conditions
                .iter()
                .flatten()
                .map(|condition| {
                    format!(
                        "{}={} {}",
                        condition.type_,
                        condition.status,
                        condition.error.as_deref().or(condition.message.as_deref()).unwrap_or_default()
                    )
                })
                .collect();
            format!("{}: {}", status.metadata.name.as_deref().unwrap_or("?"), why.join("; "))
        })
        .collect();
    assert!(unhealthy.is_empty(), "unhealthy components:\n{}", unhealthy.join("\n"));
}
