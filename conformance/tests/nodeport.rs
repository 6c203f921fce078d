//! Services and the pod network (handbook 000 sections 6 and 9): a NodePort Service reaches
//! the test app from outside the cluster, and pods on different workers reach each other
//! directly by their pod addresses.
//!
//! The NodePort is checked on every node that runs kube-proxy
//! (`provisioner::stages::kube_proxy::runs_on`: the masters and the workers), since any of
//! them forwards a node port to the pods, wherever those run.

use std::collections::BTreeSet;
use std::time::Duration;

use conformance::{eventually, kubectl, lab, ready_pods, web_deployment, Identity, TestNamespace, WEB_LABEL};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::PostParams;
use kube::Api;
use provisioner::artifacts::images;
use provisioner::stages::kube_proxy;
use provisioner::topology::{Node, Role};
use serde_json::json;

const POD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long kube-proxy may take to program a new Service and its endpoints on every node;
/// requests go to a pod picked at random, so this also bounds the tries until each pod answered.
const PROXY_SYNC_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The test app (one pod per worker, at most two) behind a NodePort Service answers on the
/// address of every node that runs kube-proxy, at the node port, and each of those nodes
/// spreads requests over all the pods, wherever they run.
///
/// Turn it red: `cargo lab break kube-proxy-nodeports-loopback-only` (one worker's
/// kube-proxy with `nodePortAddresses: ["127.0.0.0/8"]`: its node port does not answer on
/// the worker's address).
#[test]
fn a_node_port_answers_on_every_node_running_kube_proxy() {
    let lab = lab();
    let client = lab.kube();
    let replicas = lab.nodes_with(Role::Worker).len().min(2);
    let proxies: Vec<&Node> = lab.topology.nodes.iter().filter(|node| kube_proxy::runs_on(node)).collect();
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "nodeport").await;
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &web_deployment(replicas, true))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let (label_key, label_value) = WEB_LABEL.split_once('=').expect("KEY=VALUE");
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": "web" },
            "spec": {
                "type": "NodePort",
                "selector": { label_key: label_value },
                "ports": [{ "name": "http", "port": 80, "targetPort": images::WEB_PORT }],
            },
        }))
        .expect("a valid Service");
        let created = Api::<Service>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &service)
            .await
            .unwrap_or_else(|error| panic!("cannot create the NodePort Service: {error}"));
        let node_port = created
            .spec
            .and_then(|spec| spec.ports)
            .and_then(|ports| ports.first().and_then(|port| port.node_port))
            .expect("the Service got a node port");
        let pods = ready_pods(&client, namespace.name(), WEB_LABEL, replicas, POD_READY_TIMEOUT).await;
        let pod_names: BTreeSet<String> = pods.iter().filter_map(|pod| pod.metadata.name.clone()).collect();

        let http = lab.https(Identity::Anonymous, REQUEST_TIMEOUT);
        for node in &proxies {
            let url = format!("http://{}:{node_port}/", node.address);
            // kube-proxy on each node programs the Service and each new endpoint as it sees
            // them, so every pod must answer within a short while, not at once.
            let answered = std::cell::RefCell::new(BTreeSet::new());
            eventually(&format!("every pod answers GET {url}"), PROXY_SYNC_TIMEOUT, || async {
                let reply = http.get(&url).await.map_err(|error| error.to_string())?;
                if reply.status != 200 {
                    return Err(format!("HTTP {}: {}", reply.status, reply.body.trim()));
                }
                let mut answered = answered.borrow_mut();
                answered.insert(reply.body.trim().to_string());
                if *answered == pod_names {
                    Ok(())
                } else {
                    Err(format!("only {answered:?} of {pod_names:?} answered"))
                }
            })
            .await;
        }
        let answered_on: Vec<&str> = proxies.iter().map(|node| node.name.as_str()).collect();
        eprintln!(
            "node port {node_port} answered on {answered_on:?} (every node with kube-proxy) from pods {pod_names:?}"
        );
        namespace.delete().await;
    });
}

/// A pod on one worker reaches a pod on another worker at its pod address (the pod network's
/// routes between the workers' /24s), in both directions.
///
/// Turn it red: `cargo lab break pod-route-deleted` (a worker without its route to another
/// worker's pod range).
#[test]
fn pods_reach_pods_on_other_workers() {
    let lab = lab();
    let client = lab.kube();
    if !lab.applies("pod traffic between workers", Role::Worker, 2) {
        return;
    }
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "pod-to-pod").await;
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &web_deployment(2, true))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let pods = ready_pods(&client, namespace.name(), WEB_LABEL, 2, POD_READY_TIMEOUT).await;
        let describe = |pod: &Pod| {
            let name = pod.metadata.name.clone().expect("pods have names");
            let spec = pod.spec.as_ref().expect("pods have a spec");
            let status = pod.status.as_ref().expect("ready pods have a status");
            (name, spec.node_name.clone().unwrap_or_default(), status.pod_ip.clone().unwrap_or_default())
        };
        let (first, second) = (describe(&pods[0]), describe(&pods[1]));
        assert_ne!(first.1, second.1, "the two pods must run on different workers");

        for ((from, from_node, _), (to, to_node, to_ip)) in [(&first, &second), (&second, &first)] {
            let url = format!("http://{to_ip}:{}/", images::WEB_PORT);
            // busybox's own `wget -T` crashes (Debian's busybox 1.35); its `timeout` applet bounds it.
            let wget = ["/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-q", "-O", "-", &url];
            let body =
                kubectl(&[&["exec", "-n", namespace.name(), from, "--"][..], &wget[..]].concat()).await.unwrap_or_else(
                    |error| panic!("{from} on {from_node} cannot reach {to} on {to_node} at {url}: {error}"),
                );
            assert_eq!(body.trim(), to, "{from} on {from_node} asked {url} ({to} on {to_node})");
        }
        namespace.delete().await;
    });
}
