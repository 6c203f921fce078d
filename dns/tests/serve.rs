//! The real server on 127.0.0.1, fed a fixed set of Services and Endpoints instead of a
//! cluster, queried with hickory-resolver over UDP and, separately, over TCP.
//!
//! The snapshots go through the same channel the Kubernetes watch publishes on, so everything
//! but the watch itself runs as in the cluster. Only loopback addresses are used: the server
//! binds 127.0.0.1 on an ephemeral port, and the forwarding test's upstream is a second
//! instance of the server on loopback too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lab_dns::forward::Forwarder;
use lab_dns::records::ZoneConfig;
use lab_dns::server::{DnsServer, Handler};
use lab_dns::snapshot::{self, Snapshot, SnapshotSender};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TTL: u32 = 5;

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// A server running on loopback, with the sender that feeds it snapshots.
struct RunningServer {
    address: SocketAddr,
    snapshots: SnapshotSender,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), lab_dns::Error>>,
}

impl RunningServer {
    async fn start(domain: &str, snapshot: Option<Snapshot>, upstreams: Vec<SocketAddr>) -> Self {
        let zone = ZoneConfig::new(&Name::from_ascii(domain).unwrap(), TTL, vec!["10.32.0.0/24".parse().unwrap()]);
        let (snapshots, receiver) = snapshot::channel();
        snapshots.send_replace(snapshot.map(Arc::new));
        let handler = Handler::new(zone, receiver, Forwarder::new(upstreams));
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler).await.expect("binding on loopback");
        let address = server.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        RunningServer { address, snapshots, stop, task }
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

/// A resolver that asks only `server`, only over `transport`, and caches nothing, so every
/// lookup reaches the server and sees the latest snapshot.
fn resolver(server: SocketAddr, transport: Transport) -> TokioResolver {
    let mut connection = match transport {
        Transport::Udp => ConnectionConfig::udp(),
        Transport::Tcp => ConnectionConfig::tcp(),
    };
    connection.port = server.port();
    let name_server = NameServerConfig::new(server.ip(), true, vec![connection]);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(3);
    Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![name_server]), TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .unwrap()
}

fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() }
}

fn service_port(name: &str, protocol: &str, port: i32) -> ServicePort {
    ServicePort { name: Some(name.into()), protocol: Some(protocol.into()), port, ..ServicePort::default() }
}

fn cluster_ip_service(namespace: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: metadata(namespace, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The objects of a small cluster: the API server's Service, kube-dns itself, and a headless
/// Service with a StatefulSet pod (hostname `web-0`), a pod without hostname, and a pod that
/// is not ready yet.
fn cluster_objects() -> (Vec<Service>, Vec<Endpoints>) {
    let services = vec![
        cluster_ip_service("default", "kubernetes", "10.32.0.1", vec![service_port("https", "TCP", 443)]),
        cluster_ip_service(
            "kube-system",
            "kube-dns",
            "10.32.0.10",
            vec![service_port("dns", "UDP", 53), service_port("dns-tcp", "TCP", 53)],
        ),
        Service {
            metadata: metadata("default", "web"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![service_port("http", "TCP", 80)]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
    ];
    let address = |ip: &str, hostname: Option<&str>| EndpointAddress {
        ip: ip.into(),
        hostname: hostname.map(Into::into),
        ..EndpointAddress::default()
    };
    let endpoints = vec![Endpoints {
        metadata: metadata("default", "web"),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![address("10.200.1.5", Some("web-0")), address("10.200.2.7", None)]),
            not_ready_addresses: Some(vec![address("10.200.3.9", None)]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        }]),
    }];
    (services, endpoints)
}

fn cluster_snapshot(serial: u32, extra_services: &[Service]) -> Snapshot {
    let (mut services, endpoints) = cluster_objects();
    services.extend_from_slice(extra_services);
    Snapshot::from_kubernetes(serial, &services, &endpoints)
}

/// The data of every answer record, as text.
async fn lookup(resolver: &TokioResolver, name: &str, record_type: RecordType) -> Vec<String> {
    let lookup =
        resolver.lookup(name, record_type).await.unwrap_or_else(|error| panic!("{name} {record_type}: {error}"));
    lookup.answers().iter().map(|record| record.data.to_string()).collect()
}

/// The response code of a negative answer, after checking that it carries the zone's SOA with
/// the configured negative TTL.
async fn negative(resolver: &TokioResolver, name: &str, record_type: RecordType) -> ResponseCode {
    match resolver.lookup(name, record_type).await {
        Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => {
            let soa = no_records.soa.unwrap_or_else(|| panic!("{name} {record_type}: negative answer without SOA"));
            assert_eq!(soa.data.minimum, TTL, "{name}: the SOA minimum is the negative TTL");
            no_records.response_code
        }
        other => panic!("{name} {record_type}: expected a negative answer, got {other:?}"),
    }
}

async fn error_code(resolver: &TokioResolver, name: &str, record_type: RecordType) -> ResponseCode {
    match resolver.lookup(name, record_type).await {
        Err(NetError::Dns(DnsError::ResponseCode(code))) => code,
        other => panic!("{name} {record_type}: expected an error response code, got {other:?}"),
    }
}

/// Every record kind the server serves, asked over one transport.
async fn check_every_record_kind(server: &RunningServer, transport: Transport) {
    let resolver = resolver(server.address, transport);

    // A records of ClusterIP Services, including kube-dns itself.
    assert_eq!(lookup(&resolver, "kubernetes.default.svc.cluster.local.", RecordType::A).await, ["10.32.0.1"]);
    assert_eq!(lookup(&resolver, "kube-dns.kube-system.svc.cluster.local.", RecordType::A).await, ["10.32.0.10"]);

    // SRV for named ports of a ClusterIP Service, with the Service's A record as additional.
    let srv = resolver.lookup("_https._tcp.kubernetes.default.svc.cluster.local.", RecordType::SRV).await.unwrap();
    let srv_data: Vec<String> = srv.answers().iter().map(|record| record.data.to_string()).collect();
    assert_eq!(srv_data, ["0 100 443 kubernetes.default.svc.cluster.local."]);
    let additionals: Vec<String> = srv.additionals().iter().map(|record| record.data.to_string()).collect();
    assert_eq!(additionals, ["10.32.0.1"]);
    assert_eq!(
        lookup(&resolver, "_dns._udp.kube-dns.kube-system.svc.cluster.local.", RecordType::SRV).await,
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    assert_eq!(
        lookup(&resolver, "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.", RecordType::SRV).await,
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );

    // A headless Service: one A per ready endpoint, a name per endpoint, and SRV per endpoint
    // carrying the pods' port.
    assert_eq!(lookup(&resolver, "web.default.svc.cluster.local.", RecordType::A).await, ["10.200.1.5", "10.200.2.7"]);
    assert_eq!(lookup(&resolver, "web-0.web.default.svc.cluster.local.", RecordType::A).await, ["10.200.1.5"]);
    assert_eq!(
        lookup(&resolver, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).await,
        ["0 100 8080 web-0.web.default.svc.cluster.local.", "0 100 8080 10-200-2-7.web.default.svc.cluster.local."]
    );

    // PTR for a Service IP and for a headless endpoint.
    assert_eq!(
        lookup(&resolver, "1.0.32.10.in-addr.arpa.", RecordType::PTR).await,
        ["kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(
        lookup(&resolver, "5.1.200.10.in-addr.arpa.", RecordType::PTR).await,
        ["web-0.web.default.svc.cluster.local."]
    );

    // The schema version.
    assert_eq!(lookup(&resolver, "dns-version.cluster.local.", RecordType::TXT).await, ["1.0.1"]);

    // NODATA for a type an existing name lacks, NXDOMAIN for missing names; both with the SOA.
    assert_eq!(
        negative(&resolver, "kubernetes.default.svc.cluster.local.", RecordType::AAAA).await,
        ResponseCode::NoError
    );
    assert_eq!(negative(&resolver, "nothing.default.svc.cluster.local.", RecordType::A).await, ResponseCode::NXDomain);
    assert_eq!(
        negative(&resolver, "10-200-3-9.web.default.svc.cluster.local.", RecordType::A).await,
        ResponseCode::NXDomain,
        "a not-ready endpoint has no name"
    );
    assert_eq!(negative(&resolver, "99.0.32.10.in-addr.arpa.", RecordType::PTR).await, ResponseCode::NXDomain);

    // Names outside the cluster's zones are refused when no upstream is configured.
    assert_eq!(error_code(&resolver, "example.com.", RecordType::A).await, ResponseCode::Refused);
}

#[tokio::test]
async fn serves_every_record_kind_over_udp_and_tcp() {
    let server = RunningServer::start("cluster.local", Some(cluster_snapshot(1, &[])), Vec::new()).await;
    check_every_record_kind(&server, Transport::Udp).await;
    check_every_record_kind(&server, Transport::Tcp).await;
    server.stop().await;
}

#[tokio::test]
async fn follows_services_added_and_removed_while_running() {
    let server = RunningServer::start("cluster.local", Some(cluster_snapshot(1, &[])), Vec::new()).await;
    let late = cluster_ip_service("default", "late", "10.32.0.77", vec![service_port("http", "TCP", 80)]);
    for transport in [Transport::Udp, Transport::Tcp] {
        let resolver = resolver(server.address, transport);
        let name = "late.default.svc.cluster.local.";
        assert_eq!(negative(&resolver, name, RecordType::A).await, ResponseCode::NXDomain);

        server.publish(cluster_snapshot(2, std::slice::from_ref(&late)));
        assert_eq!(lookup(&resolver, name, RecordType::A).await, ["10.32.0.77"]);
        assert_eq!(lookup(&resolver, "77.0.32.10.in-addr.arpa.", RecordType::PTR).await, [name]);

        server.publish(cluster_snapshot(3, &[]));
        assert_eq!(negative(&resolver, name, RecordType::A).await, ResponseCode::NXDomain);
        assert_eq!(negative(&resolver, "77.0.32.10.in-addr.arpa.", RecordType::PTR).await, ResponseCode::NXDomain);
    }
    server.stop().await;
}

#[tokio::test]
async fn answers_servfail_in_zone_until_the_first_sync() {
    let server = RunningServer::start("cluster.local", None, Vec::new()).await;
    let resolver = resolver(server.address, Transport::Udp);
    let name = "kubernetes.default.svc.cluster.local.";
    assert_eq!(error_code(&resolver, name, RecordType::A).await, ResponseCode::ServFail);
    server.publish(cluster_snapshot(1, &[]));
    assert_eq!(lookup(&resolver, name, RecordType::A).await, ["10.32.0.1"]);
    server.stop().await;
}

#[tokio::test]
async fn forwards_names_outside_the_cluster_to_the_upstreams() {
    // The upstream is a second server, for another domain, on loopback as well.
    let upstream = RunningServer::start("upstream.test", Some(cluster_snapshot(1, &[])), Vec::new()).await;
    let server = RunningServer::start("cluster.local", Some(cluster_snapshot(1, &[])), vec![upstream.address]).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let resolver = resolver(server.address, transport);
        assert_eq!(lookup(&resolver, "kubernetes.default.svc.upstream.test.", RecordType::A).await, ["10.32.0.1"]);
        assert_eq!(
            negative(&resolver, "missing.default.svc.upstream.test.", RecordType::A).await,
            ResponseCode::NXDomain
        );
        // The upstream has no upstream of its own, so its refusal comes back unchanged.
        assert_eq!(error_code(&resolver, "example.com.", RecordType::A).await, ResponseCode::Refused);
    }
    server.stop().await;
    upstream.stop().await;
}
