//! The workers as the API sees them (handbook 000 sections 6 and 9): registered by their
//! kubelets, Ready, with the pod range the plan gave them and their own address.

use conformance::lab;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use provisioner::topology::Role;

/// Every worker's Node is Ready, has `spec.podCIDR` equal to its planned /24 of the pod
/// range (the workers get consecutive /24s in topology order), and reports the topology's
/// address as its InternalIP.
///
/// Turn it red: `cargo lab break containerd-stopped` (a worker without its container
/// runtime turns NotReady).
#[test]
fn every_worker_is_ready_with_its_planned_pod_range_and_address() {
    let lab = lab();
    let nodes: Api<Node> = Api::all(lab.kube());
    let planned = lab.planned_pod_cidrs();
    let mut problems = Vec::new();
    for worker in lab.nodes_with(Role::Worker) {
        let node = match lab.block_on(nodes.get_opt(&worker.name)) {
            Ok(Some(node)) => node,
            Ok(None) => {
                problems.push(format!("{}: not registered", worker.name));
                continue;
            }
            Err(error) => panic!("cannot read node {}: {error}", worker.name),
        };
        let status = node.status.unwrap_or_default();
        let ready = status.conditions.iter().flatten().find(|condition| condition.type_ == "Ready");
        match ready {
            Some(condition) if condition.status == "True" => {}
            Some(condition) => problems.push(format!(
                "{}: Ready={} ({})",
                worker.name,
                condition.status,
                condition.message.as_deref().unwrap_or_default()
            )),
            None => problems.push(format!("{}: no Ready condition", worker.name)),
        }

        let pod_cidr = node.spec.unwrap_or_default().pod_cidr.unwrap_or_default();
        let expected = planned[&worker.name].to_string();
        if pod_cidr != expected {
            problems.push(format!("{}: spec.podCIDR is {pod_cidr:?}, the plan gives it {expected}", worker.name));
        }

        let internal: Vec<String> = status
            .addresses
            .iter()
            .flatten()
            .filter(|address| address.type_ == "InternalIP")
            .map(|address| address.address.clone())
            .collect();
        if internal != [worker.address.to_string()] {
            problems.push(format!("{}: InternalIP {internal:?}, the topology says {}", worker.name, worker.address));
        }
    }
    assert!(problems.is_empty(), "workers that differ from the plan:\n{}", problems.join("\n"));
}
