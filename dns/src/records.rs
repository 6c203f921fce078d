//! Record building: from a [`Snapshot`] and one question to the sections of the answer.
//!
//! This is the whole of the Kubernetes DNS-Based Service Discovery specification, kept apart
//! from sockets and from the API watch so that it is a pure function: the same snapshot and
//! question always give the same answer, and the unit tests below check it against the
//! specification's own examples without a server or a cluster.
//!
//! The module first decides whether a name is in one of the server's zones at all (the cluster
//! domain, or the reverse names of Service and endpoint addresses); names outside them are
//! [`Resolution::OutOfZone`], which the server forwards or refuses. For a name inside, it
//! collects every record at that name (`None` when the name does not exist), then filters by
//! the question's type. That order gives the DNS distinction between NXDOMAIN (no such name)
//! and NODATA (the name exists, without records of the asked type) in one place, and both
//! negative answers carry the zone's SOA so resolvers know how long to cache them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::Ipv4Net;

use crate::snapshot::{Endpoint, NamedPort, Service, ServiceKind, Snapshot};

/// The version of the specification this server implements, served as `dns-version.DOMAIN` TXT.
pub const SCHEMA_VERSION: &str = "1.0.1";

/// SRV priority and weight: the specification leaves them open, and every target of a Service
/// is equally good, so all get the same priority and weight.
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 100;

/// SOA timers for secondaries; nothing transfers these zones, so they only need to be sane.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// The zones this server answers for and how long answers may be cached.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local.` (fully qualified, lower case).
    domain: Name,
    /// The TTL of every record, and the SOA minimum, which is the TTL of negative answers.
    ttl: u32,
    /// Address ranges whose reverse names are all this server's (normally the Service range),
    /// so an unknown address in them is NXDOMAIN rather than forwarded.
    reverse_networks: Vec<Ipv4Net>,
}

/// How the server should answer a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name is in one of the server's zones; this is the authoritative answer.
    Authoritative(Answer),
    /// The name is not in the server's zones: forward it upstream, or refuse it.
    OutOfZone,
}

/// The response code and record sections of an authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl ZoneConfig {
    /// A zone for the cluster `domain` (e.g. `cluster.local`) with the given TTL in seconds.
    pub fn new(domain: &Name, ttl: u32, reverse_networks: Vec<Ipv4Net>) -> Self {
        let mut domain = domain.to_lowercase();
        domain.set_fqdn(true);
        ZoneConfig { domain, ttl, reverse_networks }
    }
}

/// Answers the question (`name`, `query_type`) from `snapshot`.
pub fn resolve(zone: &ZoneConfig, snapshot: &Snapshot, name: &Name, query_type: RecordType) -> Resolution {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    let builder = RecordBuilder { zone, snapshot };
    if zone.domain.zone_of(&name) {
        let records = builder.forward_records(&name);
        Resolution::Authoritative(builder.answer(records, query_type, builder.soa(&zone.domain)))
    } else if let Some(records) = builder.reverse_records(&name) {
        Resolution::Authoritative(builder.answer(records, query_type, builder.soa(&reverse_apex())))
    } else {
        Resolution::OutOfZone
    }
}

/// The apex of the IPv4 reverse tree; negative reverse answers carry its SOA, as CoreDNS's do.
fn reverse_apex() -> Name {
    Name::from_ascii("in-addr.arpa.").expect("a valid constant name")
}

/// The reverse name of an IPv4 address, e.g. `1.0.32.10.in-addr.arpa.` for 10.32.0.1.
fn reverse_name_of(address: Ipv4Addr) -> Name {
    let [a, b, c, d] = address.octets();
    Name::from_ascii(format!("{d}.{c}.{b}.{a}.in-addr.arpa.")).expect("octets make valid labels")
}

/// The reverse zone of a network, rounded out to whole octets: 10.32.0.0/24 owns
/// `0.32.10.in-addr.arpa.`, and 10.32.0.0/12 owns `10.in-addr.arpa.`.
fn reverse_zone_of(network: Ipv4Net) -> Name {
    let whole_octets = usize::from(network.prefix_len() / 8);
    let mut zone = reverse_apex();
    for octet in &network.network().octets()[..whole_octets] {
        zone = zone.prepend_label(octet.to_string()).expect("an octet makes a valid label");
    }
    zone
}

struct RecordBuilder<'a> {
    zone: &'a ZoneConfig,
    snapshot: &'a Snapshot,
}

/// Every record at one existing name; an empty list is a name that exists without records of
/// its own (an "empty non-terminal" such as `svc.DOMAIN`).
type NodeRecords = Vec<Record>;

impl RecordBuilder<'_> {
    /// Turns the records at a name into the answer to a question of `query_type`.
    fn answer(&self, records: Option<NodeRecords>, query_type: RecordType, soa: Record) -> Answer {
        let Some(records) = records else {
            return Answer::negative(ResponseCode::NXDomain, soa);
        };
        // A name with a CNAME has no other records, and the CNAME answers every type: the
        // resolver follows it to the target itself.
        let is_alias = records.iter().any(|record| record.record_type() == RecordType::CNAME);
        let answers: Vec<Record> = records
            .into_iter()
            .filter(|record| is_alias || query_type == RecordType::ANY || record.record_type() == query_type)
            .collect();
        if answers.is_empty() {
            return Answer::negative(ResponseCode::NoError, soa);
        }
        let additionals = answers.iter().flat_map(|record| self.additional_records_for(record)).collect();
        Answer { response_code: ResponseCode::NoError, answers, authorities: Vec::new(), additionals }
    }

    /// The address records of an SRV target, which the specification allows in the additional
    /// section to save the client a second query.
    fn additional_records_for(&self, record: &Record) -> Vec<Record> {
        let RData::SRV(srv) = &record.data else {
            return Vec::new();
        };
        if !self.zone.domain.zone_of(&srv.target) {
            return Vec::new();
        }
        let target_records = self.forward_records(&srv.target).unwrap_or_default();
        target_records.into_iter().filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA)).collect()
    }

    fn soa(&self, apex: &Name) -> Record {
        let domain = &self.zone.domain;
        let primary = Name::from_ascii("ns.dns").and_then(|n| n.append_domain(domain));
        let mailbox = Name::from_ascii("hostmaster").and_then(|n| n.append_domain(domain));
        let soa = SOA::new(
            primary.expect("a valid name under the cluster domain"),
            mailbox.expect("a valid name under the cluster domain"),
            self.snapshot.serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.zone.ttl,
        );
        Record::from_rdata(apex.clone(), self.zone.ttl, RData::SOA(soa))
    }

    fn record(&self, name: &Name, data: RData) -> Record {
        Record::from_rdata(name.clone(), self.zone.ttl, data)
    }

    fn address_record(&self, name: &Name, address: IpAddr) -> Record {
        match address {
            IpAddr::V4(v4) => self.record(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(name, RData::AAAA(AAAA(v6))),
        }
    }

    /// `SERVICE.NAMESPACE.svc.DOMAIN.`, and with `label`, the name of an endpoint under it.
    fn service_name(&self, namespace: &str, service: &str, label: Option<&str>) -> Name {
        let relative = match label {
            Some(label) => format!("{label}.{service}.{namespace}.svc"),
            None => format!("{service}.{namespace}.svc"),
        };
        Name::from_ascii(relative)
            .and_then(|name| name.append_domain(&self.zone.domain))
            .expect("Kubernetes object names are valid DNS labels")
    }

    /// The records at a name under the cluster domain, or `None` if the name does not exist.
    fn forward_records(&self, name: &Name) -> Option<NodeRecords> {
        let relative_labels = usize::from(name.num_labels() - self.zone.domain.num_labels());
        // Labels from the domain outwards: `kubernetes.default.svc` gives svc, default, kubernetes.
        let labels: Vec<String> =
            name.iter().take(relative_labels).rev().map(|label| String::from_utf8_lossy(label).into_owned()).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [] => Some(vec![self.soa(&self.zone.domain)]),
            ["dns-version"] => Some(vec![self.record(name, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])))]),
            ["svc"] | ["pod"] => Some(Vec::new()),
            ["svc", namespace] | ["pod", namespace] => self.snapshot.has_namespace(namespace).then(Vec::new),
            ["svc", namespace, service, rest @ ..] => {
                let service = self.snapshot.service(namespace, service)?;
                self.service_records(name, service, rest)
            }
            ["pod", namespace, dashed_address] if self.snapshot.has_namespace(namespace) => {
                self.pod_records(name, dashed_address)
            }
            _ => None,
        }
    }

    /// The records at `name`, which is `rest` (labels from the outside in) under a Service's name.
    fn service_records(&self, name: &Name, service: &Service, rest: &[&str]) -> Option<NodeRecords> {
        match (&service.kind, rest) {
            // A headless Service without ready endpoints has no records, and the specification
            // asks for NXDOMAIN then rather than an empty name.
            (ServiceKind::Headless { endpoints }, _) if endpoints.is_empty() => None,
            (ServiceKind::ClusterIp { addresses, .. }, []) => {
                Some(addresses.iter().map(|address| self.address_record(name, *address)).collect())
            }
            (ServiceKind::Headless { endpoints }, []) => Some(
                unique_addresses(endpoints.iter())
                    .into_iter()
                    .map(|address| self.address_record(name, address))
                    .collect(),
            ),
            (ServiceKind::ExternalName { target }, []) => {
                let mut alias = Name::from_ascii(target).ok()?;
                alias.set_fqdn(true);
                Some(vec![self.record(name, RData::CNAME(CNAME(alias)))])
            }
            (_, [protocol_label, port_labels @ ..]) if protocol_label.starts_with('_') => {
                self.srv_records(name, service, protocol_label, port_labels)
            }
            (ServiceKind::Headless { endpoints }, [endpoint_label]) => {
                let named = endpoints.iter().filter(|endpoint| endpoint.label() == *endpoint_label);
                let records: Vec<Record> =
                    unique_addresses(named).into_iter().map(|address| self.address_record(name, address)).collect();
                (!records.is_empty()).then_some(records)
            }
            _ => None,
        }
    }

    /// The records at `_PORT._PROTO.SERVICE...` (or at the branch `_PROTO.SERVICE...` when
    /// `port_labels` is empty): one SRV per target that serves a port of that name and protocol.
    fn srv_records(
        &self,
        name: &Name,
        service: &Service,
        protocol_label: &str,
        port_labels: &[&str],
    ) -> Option<NodeRecords> {
        let protocol = protocol_label.strip_prefix('_')?;
        let targets: Vec<(Name, &NamedPort)> =
            self.srv_targets(service).into_iter().filter(|(_, port)| port.protocol.label() == protocol).collect();
        match port_labels {
            [] => (!targets.is_empty()).then(Vec::new),
            [port_label] => {
                let port_name = port_label.strip_prefix('_')?;
                let records: Vec<Record> = targets
                    .into_iter()
                    .filter(|(_, port)| port.name == port_name)
                    .map(|(target, port)| {
                        self.record(name, RData::SRV(SRV::new(SRV_PRIORITY, SRV_WEIGHT, port.port, target)))
                    })
                    .collect();
                (!records.is_empty()).then_some(records)
            }
            _ => None,
        }
    }

    /// Every (target name, port) pair a Service's SRV records can point at: the Service name
    /// with the Service's ports for a ClusterIP Service, and each endpoint's own name with its
    /// ports for a headless one.
    fn srv_targets<'s>(&self, service: &'s Service) -> Vec<(Name, &'s NamedPort)> {
        let (namespace, service_name) = (&service.namespace, &service.name);
        match &service.kind {
            ServiceKind::ClusterIp { ports, .. } => {
                let target = self.service_name(namespace, service_name, None);
                ports.iter().map(|port| (target.clone(), port)).collect()
            }
            ServiceKind::Headless { endpoints } => endpoints
                .iter()
                .flat_map(|endpoint| {
                    let target = self.service_name(namespace, service_name, Some(&endpoint.label()));
                    endpoint.ports.iter().map(move |port| (target.clone(), port))
                })
                .collect(),
            ServiceKind::ExternalName { .. } => Vec::new(),
        }
    }

    /// `A-B-C-D.NAMESPACE.pod.DOMAIN`: the specification's deprecated pod records, which resolve
    /// any dashed IPv4 address in a namespace to itself (CoreDNS's `pods insecure` mode).
    fn pod_records(&self, name: &Name, dashed_address: &str) -> Option<NodeRecords> {
        let address: Ipv4Addr = dashed_address.replace('-', ".").parse().ok()?;
        Some(vec![self.record(name, RData::A(A(address)))])
    }

    /// The records at a reverse name, or `None` when the name is not this server's to answer.
    /// A known Service or endpoint address is always answered; any other name is answered
    /// (with NXDOMAIN or NODATA) only inside a configured reverse network.
    fn reverse_records(&self, name: &Name) -> Option<Option<NodeRecords>> {
        let apex = reverse_apex();
        if !apex.zone_of(name) {
            return None;
        }
        let in_reverse_network =
            self.zone.reverse_networks.iter().any(|network| reverse_zone_of(*network).zone_of(name));
        let Some(address) = reverse_address(name) else {
            // A shorter name (`0.32.10.in-addr.arpa.`) exists as a branch of the tree.
            let is_branch = name.num_labels() < apex.num_labels() + 4
                && name.iter().take(usize::from(name.num_labels() - apex.num_labels())).all(is_octet_label);
            return in_reverse_network.then(|| is_branch.then(Vec::new));
        };
        let owners = self.snapshot.owners_of(IpAddr::V4(address));
        if owners.is_empty() {
            let in_network = self.zone.reverse_networks.iter().any(|network| network.contains(&address));
            return in_network.then_some(None);
        }
        let records = owners
            .iter()
            .map(|owner| {
                let target = self.service_name(&owner.namespace, &owner.service, owner.endpoint_label.as_deref());
                self.record(name, RData::PTR(PTR(target)))
            })
            .collect();
        Some(Some(records))
    }
}

/// The IPv4 address a full reverse name (`D.C.B.A.in-addr.arpa.`) stands for.
fn reverse_address(name: &Name) -> Option<Ipv4Addr> {
    if name.num_labels() != reverse_apex().num_labels() + 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (index, label) in name.iter().take(4).enumerate() {
        octets[3 - index] = std::str::from_utf8(label).ok()?.parse().ok()?;
    }
    let address = Ipv4Addr::from(octets);
    // Only the canonical spelling: `01.0.32.10` is not the reverse name of 10.32.0.1.
    (reverse_name_of(address) == *name).then_some(address)
}

/// Whether a label is an octet in canonical decimal (`7`, not `07` or `x`).
fn is_octet_label(label: &[u8]) -> bool {
    std::str::from_utf8(label)
        .ok()
        .and_then(|text| text.parse::<u8>().ok())
        .is_some_and(|octet| octet.to_string().as_bytes() == label)
}

/// The endpoints' addresses, each once and in order: an address shows up once per Endpoints
/// subset, and it is in several subsets when its pod serves different sets of ports.
fn unique_addresses<'e>(endpoints: impl Iterator<Item = &'e Endpoint>) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    endpoints.map(|endpoint| endpoint.address).filter(|address| seen.insert(*address)).collect()
}

impl Answer {
    /// NXDOMAIN or NODATA: no answers, and the zone's SOA in the authority section, whose
    /// minimum field tells resolvers how long to cache the negative answer (RFC 2308).
    fn negative(response_code: ResponseCode, soa: Record) -> Self {
        Answer { response_code, answers: Vec::new(), authorities: vec![soa], additionals: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::PortProtocol;

    const TTL: u32 = 5;

    fn port(name: &str, protocol: PortProtocol, number: u16) -> NamedPort {
        NamedPort { name: name.into(), protocol, port: number }
    }

    fn endpoint(address: &str, hostname: Option<&str>, ports: Vec<NamedPort>) -> Endpoint {
        Endpoint { address: address.parse().unwrap(), hostname: hostname.map(Into::into), ports }
    }

    /// The specification's example cluster: `kubernetes` at 10.3.0.1 with a named https port,
    /// a headless Service with two named pets and one unnamed endpoint, one with no ready
    /// endpoints, and an ExternalName alias.
    fn snapshot() -> Snapshot {
        let https = || vec![port("https", PortProtocol::Tcp, 443)];
        Snapshot::new(
            7,
            [
                Service {
                    namespace: "default".into(),
                    name: "kubernetes".into(),
                    kind: ServiceKind::ClusterIp {
                        addresses: vec!["10.3.0.1".parse().unwrap()],
                        ports: vec![port("https", PortProtocol::Tcp, 443), port("dns", PortProtocol::Udp, 53)],
                    },
                },
                Service {
                    namespace: "default".into(),
                    name: "headless".into(),
                    kind: ServiceKind::Headless {
                        endpoints: vec![
                            endpoint("10.3.0.100", Some("my-pet"), https()),
                            endpoint("10.3.0.101", Some("my-pet-2"), https()),
                            endpoint("10.3.0.102", None, https()),
                        ],
                    },
                },
                Service {
                    namespace: "default".into(),
                    name: "idle".into(),
                    kind: ServiceKind::Headless { endpoints: Vec::new() },
                },
                Service {
                    namespace: "default".into(),
                    name: "foo".into(),
                    kind: ServiceKind::ExternalName { target: "www.example.com".into() },
                },
            ],
        )
    }

    fn zone() -> ZoneConfig {
        ZoneConfig::new(&Name::from_ascii("cluster.local").unwrap(), TTL, vec!["10.3.0.0/24".parse().unwrap()])
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn ask(query: &str, query_type: RecordType) -> Answer {
        match resolve(&zone(), &snapshot(), &name(query), query_type) {
            Resolution::Authoritative(answer) => answer,
            Resolution::OutOfZone => panic!("{query} should be in the server's zones"),
        }
    }

    /// The answer section as `(name, type, data)` text triples, easy to compare with the
    /// specification's examples.
    fn texts(records: &[Record]) -> Vec<(String, RecordType, String)> {
        records.iter().map(|r| (r.name.to_string(), r.record_type(), r.data.to_string())).collect()
    }

    fn assert_negative(answer: &Answer, response_code: ResponseCode, soa_owner: &str) {
        assert_eq!(answer.response_code, response_code);
        assert!(answer.answers.is_empty());
        let [soa] = answer.authorities.as_slice() else { panic!("expected one SOA: {answer:?}") };
        assert_eq!(soa.name, name(soa_owner));
        let RData::SOA(data) = &soa.data else { panic!("expected an SOA record: {soa:?}") };
        assert_eq!((data.minimum, data.serial, soa.ttl), (TTL, 7, TTL));
    }

    #[test]
    fn cluster_ip_service_has_an_a_record_with_the_configured_ttl() {
        let answer = ask("kubernetes.default.svc.cluster.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(
            texts(&answer.answers),
            [("kubernetes.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.1".into())]
        );
        assert_eq!(answer.answers[0].ttl, TTL);
        assert!(answer.authorities.is_empty());
    }

    #[test]
    fn questions_are_case_insensitive() {
        let answer = ask("Kubernetes.DEFAULT.svc.Cluster.Local.", RecordType::A);
        assert_eq!(texts(&answer.answers)[0].2, "10.3.0.1");
    }

    #[test]
    fn cluster_ip_srv_points_at_the_service_name_with_its_a_record_additional() {
        let answer = ask("_https._tcp.kubernetes.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            texts(&answer.answers),
            [(
                "_https._tcp.kubernetes.default.svc.cluster.local.".into(),
                RecordType::SRV,
                "0 100 443 kubernetes.default.svc.cluster.local.".into()
            )]
        );
        assert_eq!(
            texts(&answer.additionals),
            [("kubernetes.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.1".into())]
        );
        let udp = ask("_dns._udp.kubernetes.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(texts(&udp.answers)[0].2, "0 100 53 kubernetes.default.svc.cluster.local.");
    }

    #[test]
    fn srv_names_need_the_port_protocol_to_match() {
        let answer = ask("_https._udp.kubernetes.default.svc.cluster.local.", RecordType::SRV);
        assert_negative(&answer, ResponseCode::NXDomain, "cluster.local.");
        // `_tcp.SERVICE` exists as a branch above the SRV names, without records of its own.
        let branch = ask("_tcp.kubernetes.default.svc.cluster.local.", RecordType::SRV);
        assert_negative(&branch, ResponseCode::NoError, "cluster.local.");
    }

    #[test]
    fn headless_service_has_one_a_record_per_ready_endpoint() {
        let answer = ask("headless.default.svc.cluster.local.", RecordType::A);
        let addresses: Vec<String> = texts(&answer.answers).into_iter().map(|(_, _, data)| data).collect();
        assert_eq!(addresses, ["10.3.0.100", "10.3.0.101", "10.3.0.102"]);
    }

    #[test]
    fn headless_endpoints_have_names_from_their_hostname_or_address() {
        let pet = ask("my-pet.headless.default.svc.cluster.local.", RecordType::A);
        assert_eq!(
            texts(&pet.answers),
            [("my-pet.headless.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.100".into())]
        );
        let unnamed = ask("10-3-0-102.headless.default.svc.cluster.local.", RecordType::A);
        assert_eq!(texts(&unnamed.answers)[0].2, "10.3.0.102");
        let missing = ask("my-cat.headless.default.svc.cluster.local.", RecordType::A);
        assert_negative(&missing, ResponseCode::NXDomain, "cluster.local.");
    }

    #[test]
    fn headless_srv_has_one_record_per_endpoint_with_address_additionals() {
        let answer = ask("_https._tcp.headless.default.svc.cluster.local.", RecordType::SRV);
        let targets: Vec<String> = texts(&answer.answers).into_iter().map(|(_, _, data)| data).collect();
        assert_eq!(
            targets,
            [
                "0 100 443 my-pet.headless.default.svc.cluster.local.",
                "0 100 443 my-pet-2.headless.default.svc.cluster.local.",
                "0 100 443 10-3-0-102.headless.default.svc.cluster.local.",
            ]
        );
        assert_eq!(
            texts(&answer.additionals),
            [
                ("my-pet.headless.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.100".into()),
                ("my-pet-2.headless.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.101".into()),
                ("10-3-0-102.headless.default.svc.cluster.local.".into(), RecordType::A, "10.3.0.102".into()),
            ]
        );
    }

    #[test]
    fn an_endpoint_in_several_subsets_has_its_address_and_ptr_once() {
        let http = port("http", PortProtocol::Tcp, 80);
        let metrics = port("metrics", PortProtocol::Tcp, 9100);
        let snapshot = Snapshot::new(
            1,
            [Service {
                namespace: "default".into(),
                name: "split".into(),
                kind: ServiceKind::Headless {
                    endpoints: vec![
                        endpoint("10.3.0.50", Some("pod-a"), vec![http]),
                        endpoint("10.3.0.50", Some("pod-a"), vec![metrics]),
                    ],
                },
            }],
        );
        let ask = |query: &str, query_type| match resolve(&zone(), &snapshot, &name(query), query_type) {
            Resolution::Authoritative(answer) => texts(&answer.answers),
            Resolution::OutOfZone => panic!("{query} should be in the server's zones"),
        };
        assert_eq!(ask("split.default.svc.cluster.local.", RecordType::A).len(), 1);
        assert_eq!(ask("pod-a.split.default.svc.cluster.local.", RecordType::A).len(), 1);
        assert_eq!(ask("50.0.3.10.in-addr.arpa.", RecordType::PTR).len(), 1);
        assert_eq!(ask("_metrics._tcp.split.default.svc.cluster.local.", RecordType::SRV).len(), 1);
    }

    #[test]
    fn headless_service_without_ready_endpoints_is_nxdomain() {
        let answer = ask("idle.default.svc.cluster.local.", RecordType::A);
        assert_negative(&answer, ResponseCode::NXDomain, "cluster.local.");
    }

    #[test]
    fn ptr_records_name_the_service_or_the_headless_endpoint() {
        let service = ask("1.0.3.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            texts(&service.answers),
            [("1.0.3.10.in-addr.arpa.".into(), RecordType::PTR, "kubernetes.default.svc.cluster.local.".into())]
        );
        let pet = ask("100.0.3.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(texts(&pet.answers)[0].2, "my-pet.headless.default.svc.cluster.local.");
    }

    #[test]
    fn reverse_names_in_the_service_network_are_authoritative_and_others_are_not() {
        let unknown = ask("9.0.3.10.in-addr.arpa.", RecordType::PTR);
        assert_negative(&unknown, ResponseCode::NXDomain, "in-addr.arpa.");
        let branch = ask("0.3.10.in-addr.arpa.", RecordType::PTR);
        assert_negative(&branch, ResponseCode::NoError, "in-addr.arpa.");
        let outside = resolve(&zone(), &snapshot(), &name("1.1.168.192.in-addr.arpa."), RecordType::PTR);
        assert_eq!(outside, Resolution::OutOfZone);
    }

    #[test]
    fn an_existing_name_without_the_type_is_nodata_with_the_soa() {
        let answer = ask("kubernetes.default.svc.cluster.local.", RecordType::AAAA);
        assert_negative(&answer, ResponseCode::NoError, "cluster.local.");
        let namespace = ask("default.svc.cluster.local.", RecordType::A);
        assert_negative(&namespace, ResponseCode::NoError, "cluster.local.");
    }

    #[test]
    fn a_missing_name_is_nxdomain_with_the_soa() {
        for missing in
            ["nothing.default.svc.cluster.local.", "kubernetes.nowhere.svc.cluster.local.", "x.cluster.local."]
        {
            assert_negative(&ask(missing, RecordType::A), ResponseCode::NXDomain, "cluster.local.");
        }
    }

    #[test]
    fn names_outside_the_cluster_domain_are_out_of_zone_for_forwarding_or_refusal() {
        for outside in ["example.com.", "local.", "kubernetes.default.svc.cluster.example."] {
            assert_eq!(resolve(&zone(), &snapshot(), &name(outside), RecordType::A), Resolution::OutOfZone);
        }
    }

    #[test]
    fn schema_version_soa_external_names_and_pods() {
        let version = ask("dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(texts(&version.answers)[0].2, SCHEMA_VERSION);
        let apex = ask("cluster.local.", RecordType::SOA);
        assert_eq!(texts(&apex.answers)[0].1, RecordType::SOA);
        let alias = ask("foo.default.svc.cluster.local.", RecordType::A);
        assert_eq!(
            texts(&alias.answers),
            [("foo.default.svc.cluster.local.".into(), RecordType::CNAME, "www.example.com.".into())]
        );
        let pod = ask("10-200-1-5.default.pod.cluster.local.", RecordType::A);
        assert_eq!(texts(&pod.answers)[0].2, "10.200.1.5");
    }

    #[test]
    fn reverse_zones_round_networks_out_to_whole_octets() {
        assert_eq!(reverse_zone_of("10.32.0.0/24".parse().unwrap()), name("0.32.10.in-addr.arpa."));
        assert_eq!(reverse_zone_of("10.32.0.0/12".parse().unwrap()), name("10.in-addr.arpa."));
    }
}
