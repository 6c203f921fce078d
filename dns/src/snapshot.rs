//! The cluster state that DNS answers are built from: every Service joined with its Endpoints.
//!
//! Kubernetes objects carry far more than DNS needs, and their optional fields would turn every
//! lookup into a chain of `Option`s. This module reduces them once per change, when the watch
//! sees one, to a small immutable model: a ClusterIP Service keeps its virtual IPs and named
//! ports, a headless Service keeps the endpoint addresses DNS may publish, and an ExternalName
//! Service keeps its alias. The record builder in `records.rs` is then a pure function of a
//! [`Snapshot`] and a question, which tests can feed without a cluster.
//!
//! The reduction from Kubernetes objects ([`Snapshot::from_kubernetes`]) is pure as well; it is
//! where the specification's definition of a *ready* endpoint lives.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointPort, EndpointSubset, Endpoints, Service as KubeService, ServicePort};

/// The annotation that older clusters used instead of `spec.publishNotReadyAddresses`; the
/// specification still counts endpoints of a Service carrying it as ready.
const TOLERATE_UNREADY_ANNOTATION: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// Where the server reads the current snapshot: `None` until the first full sync with the
/// cluster, which is also what the readiness probe reports.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;

/// Where the watch (or a test) publishes each new snapshot.
pub type SnapshotSender = tokio::sync::watch::Sender<Option<Arc<Snapshot>>>;

/// A channel for snapshots that starts out unsynced.
pub fn channel() -> (SnapshotSender, SnapshotReceiver) {
    tokio::sync::watch::channel(None)
}

/// An immutable view of all Services, indexed for the two ways DNS looks them up: by
/// namespace and name for forward names, and by address for reverse (PTR) names.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    serial: u32,
    services: BTreeMap<(String, String), Service>,
    owners_by_address: HashMap<IpAddr, Vec<AddressOwner>>,
}

/// One Service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
}

/// What a Service's name resolves to; each kind carries only the data its records need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per IP family, balanced by kube-proxy; SRV records point at the Service name.
    ClusterIp { addresses: Vec<IpAddr>, ports: Vec<NamedPort> },
    /// No virtual IP: the name resolves to the ready endpoints themselves, each of which also
    /// gets a name of its own under the Service.
    Headless { endpoints: Vec<Endpoint> },
    /// An alias for a name outside the cluster, answered with a CNAME record.
    ExternalName { target: String },
}

/// A ready endpoint address of a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The endpoint's `hostname` field (set for StatefulSet pods through a Service's subdomain).
    pub hostname: Option<String>,
    /// The ports of the endpoint's subset: for a headless Service clients connect to the pods
    /// directly, so SRV records must carry the pods' (target) ports, not the Service's ports.
    pub ports: Vec<NamedPort>,
}

/// A named port; unnamed ports have no SRV record, so they are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: PortProtocol,
    pub port: u16,
}

/// The transport protocol of a port, spelled in SRV names as `_tcp`, `_udp` or `_sctp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

/// The Service (and, for headless Services, the endpoint) that an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwner {
    pub namespace: String,
    pub service: String,
    /// The endpoint's DNS label under the Service for a headless endpoint, `None` for a ClusterIP.
    pub endpoint_label: Option<String>,
}

impl PortProtocol {
    /// The protocol's label in an SRV name, without the leading underscore.
    pub fn label(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }

    /// Parses a Kubernetes `protocol` field, where an absent value means TCP.
    fn from_kubernetes(protocol: Option<&str>) -> Option<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(PortProtocol::Tcp),
            "UDP" => Some(PortProtocol::Udp),
            "SCTP" => Some(PortProtocol::Sctp),
            _ => None,
        }
    }
}

impl Endpoint {
    /// The endpoint's DNS label under its Service. The specification asks for the endpoint's
    /// hostname, or else a unique identifier of the implementation's choosing; like CoreDNS,
    /// this uses the address with its dots (or colons) replaced by dashes, which is stable for
    /// as long as the endpoint exists and needs no state to generate.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(hostname) => hostname.clone(),
            None => self.address.to_string().replace(['.', ':'], "-"),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot from already reduced Services. The serial becomes the SOA serial, so
    /// it should grow with every change.
    pub fn new(serial: u32, services: impl IntoIterator<Item = Service>) -> Self {
        let services: BTreeMap<_, _> =
            services.into_iter().map(|service| ((service.namespace.clone(), service.name.clone()), service)).collect();
        let mut owners_by_address: HashMap<IpAddr, Vec<AddressOwner>> = HashMap::new();
        for service in services.values() {
            let owned: Vec<(IpAddr, Option<String>)> = match &service.kind {
                ServiceKind::ClusterIp { addresses, .. } => addresses.iter().map(|address| (*address, None)).collect(),
                ServiceKind::Headless { endpoints } => {
                    endpoints.iter().map(|endpoint| (endpoint.address, Some(endpoint.label()))).collect()
                }
                ServiceKind::ExternalName { .. } => Vec::new(),
            };
            for (address, endpoint_label) in owned {
                let owner = AddressOwner {
                    namespace: service.namespace.clone(),
                    service: service.name.clone(),
                    endpoint_label,
                };
                let owners = owners_by_address.entry(address).or_default();
                // An endpoint in several subsets (one per set of ports) still owns its address once.
                if !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        Snapshot { serial, services, owners_by_address }
    }

    /// Reduces the Services and Endpoints of the cluster to a snapshot. Services whose cluster
    /// IP has not been allocated yet, or whose fields are malformed, are left out: their names
    /// will exist once the API server completes them.
    pub fn from_kubernetes<'a>(
        serial: u32,
        services: impl IntoIterator<Item = &'a KubeService>,
        endpoints: impl IntoIterator<Item = &'a Endpoints>,
    ) -> Self {
        let endpoints_by_service: HashMap<(&str, &str), &Endpoints> = endpoints
            .into_iter()
            .filter_map(|endpoints| {
                let metadata = &endpoints.metadata;
                Some(((metadata.namespace.as_deref()?, metadata.name.as_deref()?), endpoints))
            })
            .collect();
        let reduced = services.into_iter().filter_map(|service| {
            let namespace = service.metadata.namespace.as_deref()?;
            let name = service.metadata.name.as_deref()?;
            let endpoints = endpoints_by_service.get(&(namespace, name)).copied();
            Some(Service {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                kind: reduce_service_kind(service, endpoints)?,
            })
        });
        Snapshot::new(serial, reduced.collect::<Vec<_>>())
    }

    /// The SOA serial of this snapshot.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The Service `name` in `namespace`, if there is one.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Whether any Service lives in `namespace`; this decides whether `NS.svc.DOMAIN` exists,
    /// since the server does not watch Namespaces themselves.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.services.range((namespace.to_owned(), String::new())..).next().is_some_and(|((ns, _), _)| ns == namespace)
    }

    /// The Services (and headless endpoints) that own `address`.
    pub fn owners_of(&self, address: IpAddr) -> &[AddressOwner] {
        self.owners_by_address.get(&address).map(Vec::as_slice).unwrap_or_default()
    }
}

fn reduce_service_kind(service: &KubeService, endpoints: Option<&Endpoints>) -> Option<ServiceKind> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(ServiceKind::ExternalName { target: spec.external_name.clone()? });
    }
    let cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if cluster_ips.first() == Some(&"None") {
        let annotations = service.metadata.annotations.as_ref();
        let tolerates_unready =
            annotations.and_then(|a| a.get(TOLERATE_UNREADY_ANNOTATION)).map(String::as_str) == Some("true");
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true) || tolerates_unready;
        let subsets = endpoints.and_then(|e| e.subsets.as_deref()).unwrap_or_default();
        let endpoints = subsets.iter().flat_map(|subset| ready_endpoints(subset, publish_not_ready)).collect();
        return Some(ServiceKind::Headless { endpoints });
    }
    let addresses: Vec<IpAddr> = cluster_ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if addresses.is_empty() {
        return None;
    }
    let ports = spec.ports.as_deref().unwrap_or_default().iter().filter_map(named_service_port).collect();
    Some(ServiceKind::ClusterIp { addresses, ports })
}

/// The endpoints of one subset that DNS publishes: its ready addresses, plus the not-ready ones
/// when the Service asks for them to be published anyway.
fn ready_endpoints(subset: &EndpointSubset, publish_not_ready: bool) -> Vec<Endpoint> {
    let ports: Vec<NamedPort> =
        subset.ports.as_deref().unwrap_or_default().iter().filter_map(named_endpoint_port).collect();
    let ready = subset.addresses.as_deref().unwrap_or_default();
    let not_ready = if publish_not_ready { subset.not_ready_addresses.as_deref().unwrap_or_default() } else { &[] };
    ready
        .iter()
        .chain(not_ready)
        .filter_map(|address| {
            Some(Endpoint {
                address: address.ip.parse().ok()?,
                hostname: address.hostname.clone().filter(|hostname| !hostname.is_empty()),
                ports: ports.clone(),
            })
        })
        .collect()
}

fn named_service_port(port: &ServicePort) -> Option<NamedPort> {
    named_port(port.name.as_deref(), port.protocol.as_deref(), port.port)
}

fn named_endpoint_port(port: &EndpointPort) -> Option<NamedPort> {
    named_port(port.name.as_deref(), port.protocol.as_deref(), port.port)
}

fn named_port(name: Option<&str>, protocol: Option<&str>, port: i32) -> Option<NamedPort> {
    let name = name.filter(|name| !name.is_empty())?;
    Some(NamedPort {
        name: name.to_owned(),
        protocol: PortProtocol::from_kubernetes(protocol)?,
        port: u16::try_from(port).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn metadata(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() }
    }

    fn headless_service(publish_not_ready: bool) -> KubeService {
        KubeService {
            metadata: metadata("default", "web"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(publish_not_ready),
                ..ServiceSpec::default()
            }),
            ..KubeService::default()
        }
    }

    fn web_endpoints() -> Endpoints {
        let address = |ip: &str, hostname: Option<&str>| EndpointAddress {
            ip: ip.into(),
            hostname: hostname.map(Into::into),
            ..EndpointAddress::default()
        };
        Endpoints {
            metadata: metadata("default", "web"),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![address("10.200.1.5", Some("web-0"))]),
                not_ready_addresses: Some(vec![address("10.200.1.6", None)]),
                ports: Some(vec![
                    EndpointPort { name: Some("http".into()), port: 8080, ..EndpointPort::default() },
                    EndpointPort { name: None, port: 9090, ..EndpointPort::default() },
                ]),
            }]),
        }
    }

    #[test]
    fn headless_services_publish_only_ready_addresses_with_the_endpoint_ports() {
        let snapshot = Snapshot::from_kubernetes(1, &[headless_service(false)], &[web_endpoints()]);
        let ServiceKind::Headless { endpoints } = &snapshot.service("default", "web").unwrap().kind else {
            panic!("expected a headless service");
        };
        assert_eq!(
            endpoints,
            &[Endpoint {
                address: "10.200.1.5".parse().unwrap(),
                hostname: Some("web-0".into()),
                ports: vec![NamedPort { name: "http".into(), protocol: PortProtocol::Tcp, port: 8080 }],
            }]
        );
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_address_ready() {
        let snapshot = Snapshot::from_kubernetes(1, &[headless_service(true)], &[web_endpoints()]);
        let ServiceKind::Headless { endpoints } = &snapshot.service("default", "web").unwrap().kind else {
            panic!("expected a headless service");
        };
        assert_eq!(endpoints.iter().map(Endpoint::label).collect::<Vec<_>>(), ["web-0", "10-200-1-6"]);
    }

    #[test]
    fn services_without_an_allocated_cluster_ip_are_left_out() {
        let pending = KubeService {
            metadata: metadata("default", "pending"),
            spec: Some(ServiceSpec::default()),
            ..KubeService::default()
        };
        let snapshot = Snapshot::from_kubernetes(1, &[pending], &[]);
        assert!(snapshot.service("default", "pending").is_none());
        assert!(!snapshot.has_namespace("default"));
    }
}
