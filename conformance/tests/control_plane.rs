//! The highly available control plane (handbook 000 sections 7 and 8): three apiservers,
//! HAProxy on every master behind one keepalived virtual IP, and one active controller
//! manager and scheduler chosen by leader election.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conformance::{
    lab, ready_pods, web_deployment, web_service_endpoints, Identity, ServiceKind, TestNamespace, WEB_LABEL,
};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use kube::Api;
use provisioner::paths::NODE_INTERFACE;
use provisioner::pki::names;
use provisioner::topology::Role;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Every master's own apiserver answers `/healthz` with `ok` on its address and the
/// apiserver port, with the admin certificate.
///
/// Turn it red: `cargo lab break apiserver-stopped` (one apiserver stopped).
#[test]
fn every_apiserver_answers_directly() {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let port = lab.topology.network.apiserver_port;
    let masters = lab.nodes_with(Role::Master);
    let replies = lab
        .block_on(join_all(masters.iter().map(|node| client.get(format!("https://{}:{port}/healthz", node.address)))));
    let problems: Vec<String> = masters
        .iter()
        .zip(replies)
        .filter_map(|(node, reply)| match reply {
            Ok(reply) if reply.status == 200 && reply.body == "ok" => None,
            Ok(reply) => Some(format!("{}: HTTP {} {}", node.name, reply.status, reply.body.trim())),
            Err(error) => Some(format!("{}: {error}", node.name)),
        })
        .collect();
    assert!(problems.is_empty(), "apiservers that do not answer:\n{}", problems.join("\n"));
}

/// The API answers `/healthz` through the virtual IP and HAProxy's port, which is the
/// address in every kubeconfig.
///
/// Turn it red: `cargo lab break keepalived-stopped` (keepalived stopped on every load
/// balancer: the virtual IP disappears).
#[test]
fn the_api_answers_through_the_virtual_ip() {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::ADMIN), TIMEOUT);
    let url = format!("{}/healthz", lab.status.api_server_url);
    let reply = lab.block_on(client.get(&url)).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "GET {url}");
}

/// Exactly one load balancer has the virtual IP on its interface.
///
/// Turn it red: `cargo lab break vip-on-two-lbs` (the virtual IP added by hand on a second
/// load balancer).
#[test]
fn exactly_one_master_holds_the_virtual_ip() {
    let lab = lab();
    let vip = format!("{}/", lab.status.vip);
    let holders: Vec<&str> = lab
        .nodes_with(Role::Lb)
        .into_iter()
        .filter(|node| {
            let addresses = lab.sh(&node.name, &format!("ip -brief address show {NODE_INTERFACE}"));
            addresses.split_whitespace().any(|address| address.starts_with(&vip))
        })
        .map(|node| node.name.as_str())
        .collect();
    assert_eq!(holders.len(), 1, "load balancers holding {}: {holders:?}", lab.status.vip);
    eprintln!("{} holds the virtual IP {}", holders[0], lab.status.vip);
}

/// The controller manager's leader lease (kube-system/kube-controller-manager; 1.20 elects
/// through Leases) is held by a master and was renewed within its duration.
///
/// Turn it red: `cargo lab break controller-manager-stopped` (no controller manager runs,
/// and its lease expires).
#[test]
fn one_controller_manager_holds_the_leader_lease() {
    check_leader_lease("kube-controller-manager");
}

/// The scheduler's leader lease (kube-system/kube-scheduler) is held by a master and was
/// renewed within its duration.
///
/// Turn it red: `cargo lab break scheduler-stopped` (no scheduler runs, and its lease
/// expires).
#[test]
fn one_scheduler_holds_the_leader_lease() {
    check_leader_lease("kube-scheduler");
}

fn check_leader_lease(component: &str) {
    let lab = lab();
    let lease = lab
        .block_on(Api::<Lease>::namespaced(lab.kube(), "kube-system").get(component))
        .unwrap_or_else(|error| panic!("cannot read the lease kube-system/{component}: {error}"));
    let spec = lease.spec.unwrap_or_default();
    // Leader election writes `NODE_UUID` as the holder's identity.
    let holder = spec.holder_identity.unwrap_or_default();
    let holder_node = holder.split('_').next().unwrap_or_default();
    let masters: Vec<&str> = lab.nodes_with(Role::Master).iter().map(|node| node.name.as_str()).collect();
    assert!(masters.contains(&holder_node), "the {component} lease is held by {holder:?}, not by one of {masters:?}");

    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or_default()) * 1000;
    let renewed_ms = spec.renew_time.map(|time| time.0.as_millisecond()).unwrap_or_default();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64;
    assert!(
        now_ms - renewed_ms <= duration_ms,
        "the {component} lease of {holder_node} was last renewed {} ms ago, longer than its {duration_ms} ms: no {component} is leading",
        now_ms - renewed_ms
    );
    eprintln!("{component} leader: {holder_node} (renewed {} ms ago)", now_ms - renewed_ms);
}

/// How long the endpoints controller may take to list a ready pod behind a new Service.
const ENDPOINTS_DEADLINE: Duration = Duration::from_secs(5);
/// How long a test pod may take to be scheduled, started and ready.
const POD_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Service created now, in front of a pod that is already ready, gets an Endpoints object
/// with that pod's address within 5 s: the controller manager's endpoints controller (on
/// whichever master leads) is alive and watching. Prints how long it took.
///
/// Turn it red: `cargo lab break endpoints-controller-off` (the controller managers run
/// without their endpoints controllers).
#[test]
fn a_new_service_gets_its_endpoints_within_seconds() {
    let lab = lab();
    let client = lab.kube();
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "endpoints").await;
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &web_deployment(1, false))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let pods = ready_pods(&client, namespace.name(), WEB_LABEL, 1, POD_READY_TIMEOUT).await;
        let pod_ip = pods[0].status.as_ref().and_then(|status| status.pod_ip.clone()).expect("a ready pod has an IP");

        let service =
            web_service_endpoints(&client, namespace.name(), &pod_ip, ENDPOINTS_DEADLINE, ServiceKind::ClusterIp).await;
        let took = service.endpoints_after;
        println!("the Endpoints of a new Service listed its ready pod {took:.1?} after the Service was created");
        namespace.delete().await;
    });
}
