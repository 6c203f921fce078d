//! The cluster DNS addon (handbook 000 section 10), asked from the host at the DNS Service's
//! ClusterIP (the host routes the service range to a worker, whose kube-proxy forwards it
//! to a DNS pod), and from inside a pod, the way applications use it.
//!
//! Turn every test red: `cargo lab break dns-scaled-to-zero` (no DNS pods left).

use std::time::Duration;

use conformance::{
    eventually, kubectl, lab, ready_pods, web_deployment, Lookup, RecordType, TestNamespace, Transport, WEB_LABEL,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use provisioner::artifacts::images;
use provisioner::stages::dns_addon;
use provisioner::topology::Role;
use serde_json::json;

/// How long a new Service may take to appear in DNS.
const NEW_SERVICE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a test pod may take to be scheduled, started and ready.
const POD_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `NAME.DOMAIN.`, fully qualified.
fn fqdn(name: &str) -> String {
    format!("{name}.{}.", lab().status.cluster_domain)
}

fn answers(lookup: Lookup, what: &str) -> Vec<String> {
    match lookup {
        Lookup::Answers(records) => records,
        other => panic!("{what}: {other:?}"),
    }
}

/// The `kubernetes` Service: an A record with the first address of the service range and an
/// SRV record for its named port `https` (443), over UDP and over TCP.
#[test]
fn the_kubernetes_service_has_a_and_srv_records() {
    let lab = lab();
    let name = fqdn("kubernetes.default.svc");
    for transport in [Transport::Udp, Transport::Tcp] {
        let resolver = lab.resolver(transport);
        let a = answers(lab.block_on(resolver.lookup(&name, RecordType::A)), &format!("A {name} over {transport:?}"));
        assert_eq!(a, [lab.kubernetes_service_ip().to_string()], "A {name} over {transport:?}");
        let srv_name = fqdn("_https._tcp.kubernetes.default.svc");
        let srv = answers(lab.block_on(resolver.lookup(&srv_name, RecordType::SRV)), &format!("SRV {srv_name}"));
        assert_eq!(srv, [format!("0 100 443 {name}")], "SRV {srv_name} over {transport:?}");
    }
}

/// kube-dns itself: its A record is the cluster DNS address the kubelets hand to pods, and
/// its named ports `dns` (UDP) and `dns-tcp` (TCP) have SRV records for port 53.
#[test]
fn kube_dns_has_a_and_srv_records() {
    let lab = lab();
    let resolver = lab.resolver(Transport::Udp);
    let name = fqdn(&format!("{}.kube-system.svc", dns_addon::NAME));
    let a = answers(lab.block_on(resolver.lookup(&name, RecordType::A)), &format!("A {name}"));
    assert_eq!(a, [lab.status.cluster_dns_ip.to_string()], "A {name}");
    for (port_name, protocol) in [("dns", "udp"), ("dns-tcp", "tcp")] {
        let srv_name = fqdn(&format!("_{port_name}._{protocol}.{}.kube-system.svc", dns_addon::NAME));
        let srv = answers(lab.block_on(resolver.lookup(&srv_name, RecordType::SRV)), &format!("SRV {srv_name}"));
        assert_eq!(srv, [format!("0 100 53 {name}")], "SRV {srv_name}");
    }
}

/// A Service created by the test, with two named ports, has its A record and an SRV record
/// per port within 5 seconds of its creation.
#[test]
fn a_new_service_with_named_ports_resolves_within_seconds() {
    let lab = lab();
    let client = lab.kube();
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "dns-service").await;
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": "named-ports" },
            "spec": { "ports": [
                { "name": "http", "protocol": "TCP", "port": 80 },
                { "name": "syslog", "protocol": "UDP", "port": 514 },
            ]},
        }))
        .expect("a valid Service");
        let created = Api::<Service>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &service)
            .await
            .unwrap_or_else(|error| panic!("cannot create the Service: {error}"));
        let cluster_ip = created.spec.and_then(|spec| spec.cluster_ip).expect("the Service got a ClusterIP");

        let resolver = lab.resolver(Transport::Udp);
        let name = fqdn(&format!("named-ports.{}.svc", namespace.name()));
        let expectations = [
            (name.clone(), RecordType::A, cluster_ip.clone()),
            (
                fqdn(&format!("_http._tcp.named-ports.{}.svc", namespace.name())),
                RecordType::SRV,
                format!("0 100 80 {name}"),
            ),
            (
                fqdn(&format!("_syslog._udp.named-ports.{}.svc", namespace.name())),
                RecordType::SRV,
                format!("0 100 514 {name}"),
            ),
        ];
        for (query, record_type, expected) in expectations {
            eventually(&format!("{record_type} {query} answers {expected}"), NEW_SERVICE_DEADLINE, || async {
                match resolver.lookup(&query, record_type).await {
                    Lookup::Answers(records) if records == [expected.clone()] => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }

        Api::<Service>::namespaced(client.clone(), namespace.name())
            .delete("named-ports", &DeleteParams::default())
            .await
            .unwrap_or_else(|error| panic!("cannot delete the Service: {error}"));
        eventually(&format!("A {name} is NXDOMAIN after the Service is deleted"), NEW_SERVICE_DEADLINE, || async {
            match resolver.lookup(&name, RecordType::A).await {
                Lookup::NxDomain => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        namespace.delete().await;
    });
}

/// A headless Service (no ClusterIP) has one A record per ready pod behind it, the pods' own
/// addresses, and an SRV record per named port whose targets are the pods' names under the
/// Service.
#[test]
fn a_headless_service_has_an_a_record_per_ready_pod() {
    let lab = lab();
    let client = lab.kube();
    let replicas = lab.nodes_with(Role::Worker).len().clamp(1, 2);
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "dns-headless").await;
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &web_deployment(replicas, false))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let (label_key, label_value) = WEB_LABEL.split_once('=').expect("KEY=VALUE");
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": "headless" },
            "spec": {
                "clusterIP": "None",
                "selector": { label_key: label_value },
                "ports": [{ "name": "http", "protocol": "TCP", "port": images::WEB_PORT }],
            },
        }))
        .expect("a valid Service");
        Api::<Service>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &service)
            .await
            .unwrap_or_else(|error| panic!("cannot create the headless Service: {error}"));
        let pods = ready_pods(&client, namespace.name(), WEB_LABEL, replicas, POD_READY_TIMEOUT).await;
        let mut pod_ips: Vec<String> = pods
            .iter()
            .map(|pod| pod.status.as_ref().and_then(|status| status.pod_ip.clone()).expect("ready pods have an IP"))
            .collect();
        pod_ips.sort();

        let resolver = lab.resolver(Transport::Tcp);
        let name = fqdn(&format!("headless.{}.svc", namespace.name()));
        eventually(&format!("A {name} answers the pod addresses {pod_ips:?}"), NEW_SERVICE_DEADLINE, || async {
            match resolver.lookup(&name, RecordType::A).await {
                Lookup::Answers(mut records) => {
                    records.sort();
                    if records == pod_ips {
                        Ok(())
                    } else {
                        Err(format!("answers {records:?}"))
                    }
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let srv_name = fqdn(&format!("_http._tcp.headless.{}.svc", namespace.name()));
        let srv = answers(resolver.lookup(&srv_name, RecordType::SRV).await, &format!("SRV {srv_name}"));
        assert_eq!(srv.len(), replicas, "SRV {srv_name}: one record per pod, got {srv:?}");
        for record in &srv {
            let target = record.split_whitespace().last().unwrap_or_default();
            assert!(
                record.starts_with(&format!("0 100 {} ", images::WEB_PORT)) && target.ends_with(&format!(".{name}")),
                "SRV {srv_name}: {record} does not point at a pod name under {name}"
            );
        }
        namespace.delete().await;
    });
}

/// A name in the cluster domain that no Service has is NXDOMAIN.
#[test]
fn a_missing_name_is_nxdomain() {
    let lab = lab();
    let resolver = lab.resolver(Transport::Udp);
    for name in [fqdn("no-such-service.default.svc"), fqdn("kubernetes.no-such-namespace.svc")] {
        assert_eq!(lab.block_on(resolver.lookup(&name, RecordType::A)), Lookup::NxDomain, "A {name}");
    }
}

/// An existing name asked for a type it does not have (AAAA: the cluster is IPv4 only)
/// answers NOERROR without records, not NXDOMAIN.
#[test]
fn a_missing_type_of_an_existing_name_is_nodata() {
    let lab = lab();
    let name = fqdn("kubernetes.default.svc");
    assert_eq!(
        lab.block_on(lab.resolver(Transport::Udp).lookup(&name, RecordType::AAAA)),
        Lookup::NoData,
        "AAAA {name}"
    );
}

/// The `kubernetes` Service's address has a PTR record with the Service's name.
#[test]
fn the_kubernetes_service_address_has_a_ptr_record() {
    let lab = lab();
    let octets = lab.kubernetes_service_ip().octets();
    let reverse = format!("{}.{}.{}.{}.in-addr.arpa.", octets[3], octets[2], octets[1], octets[0]);
    let ptr = answers(
        lab.block_on(lab.resolver(Transport::Udp).lookup(&reverse, RecordType::PTR)),
        &format!("PTR {reverse}"),
    );
    assert_eq!(ptr, [fqdn("kubernetes.default.svc")], "PTR {reverse}");
}

/// Inside a pod, the kubelet's resolv.conf names the cluster DNS and the cluster's search
/// path (`NAMESPACE.svc.DOMAIN svc.DOMAIN DOMAIN` with `ndots:5`), and `nslookup
/// kubernetes.default` finds the `kubernetes` Service through it, as the handbook and the
/// Kubernetes DNS debugging guide do. The pod runs the lab's dnsutils image: BIND's
/// nslookup applies the search path as the C library does, where busybox's applies it to
/// dotless names only.
///
/// Turn it red: `cargo lab break dns-scaled-to-zero`, or `cargo lab break
/// kubelet-cluster-dns-wrong` (a kubelet that gives its pods another DNS address).
#[test]
fn pods_resolve_service_names() {
    let lab = lab();
    let client = lab.kube();
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "dns-pod").await;
        namespace.create_pod(&dnsutils_pod()).await;
        ready_pods(&client, namespace.name(), DNSUTILS_LABEL, 1, POD_READY_TIMEOUT).await;
        let domain = &lab.status.cluster_domain;
        let in_pod = |command: &[&str]| {
            let mut args: Vec<String> = ["exec", "-n", namespace.name(), "dnsutils", "--"].map(String::from).to_vec();
            args.extend(command.iter().map(|word| word.to_string()));
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                kubectl(&args).await.unwrap_or_else(|error| panic!("{error}"))
            }
        };

        let resolv_conf = in_pod(&["cat", "/etc/resolv.conf"]).await;
        let expected_lines = [
            format!("nameserver {}", lab.status.cluster_dns_ip),
            format!("search {}.svc.{domain} svc.{domain} {domain}", namespace.name()),
            "options ndots:5".to_string(),
        ];
        for expected in &expected_lines {
            assert!(
                resolv_conf.lines().any(|line| line.split_whitespace().eq(expected.split_whitespace())),
                "the pod's resolv.conf lacks `{expected}`:\n{resolv_conf}"
            );
        }

        let nslookup = in_pod(&["nslookup", "kubernetes.default"]).await;
        let service_ip = lab.kubernetes_service_ip().to_string();
        let full_name = format!("kubernetes.default.svc.{domain}");
        let lines: Vec<&str> = nslookup.lines().map(str::trim).collect();
        assert!(
            lines.contains(&format!("Name:\t{full_name}").as_str())
                && lines.contains(&format!("Address: {service_ip}").as_str()),
            "`nslookup kubernetes.default` in the pod did not find {full_name} at {service_ip}:\n{nslookup}"
        );
        namespace.delete().await;
    });
}

/// The label of the dnsutils pod.
const DNSUTILS_LABEL: &str = "app=dnsutils";

/// A pod of the lab's dnsutils image that sleeps until it is deleted.
fn dnsutils_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "dnsutils", "labels": { "app": "dnsutils" } },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "dnsutils",
                "image": images::DNSUTILS,
                // The lab imported the image on every worker; there is no registry.
                "imagePullPolicy": "Never",
            }],
        },
    }))
    .expect("a valid Pod")
}
