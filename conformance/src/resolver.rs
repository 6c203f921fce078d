//! A DNS client that asks the cluster DNS and nothing else.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
pub use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Resolver, TokioResolver};

/// How long one query may wait for its answer at the host's speed; the lab answers in
/// milliseconds.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which transport the queries use. Pods use UDP first and TCP for long answers, so the
/// suite checks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The answer section's records, as text (`10.32.0.1`, `0 100 443 kubernetes.default.svc.cluster.local.`).
    Answers(Vec<String>),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// NOERROR with no answer: the name exists, but has no record of that type.
    NoData,
    /// Anything else: another response code, or no answer at all.
    Failed(String),
}

/// A resolver for `Lab::resolver`.
pub struct ClusterResolver {
    resolver: TokioResolver,
}

impl ClusterResolver {
    /// `timeout` is how long one query may wait for its answer.
    pub(crate) fn new(server: Ipv4Addr, transport: Transport, timeout: Duration) -> Self {
        let mut name_server = match transport {
            Transport::Udp => NameServerConfig::udp(IpAddr::V4(server)),
            Transport::Tcp => NameServerConfig::tcp(IpAddr::V4(server)),
        };
        name_server.trust_negative_responses = true;
        let mut options = ResolverOpts::default();
        // Every query reaches the server, so a test sees what the server answers now; and
        // the host's /etc/hosts plays no part.
        options.cache_size = 0;
        options.attempts = 1;
        options.timeout = timeout;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![name_server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .expect("a resolver with one name server and no system configuration");
        ClusterResolver { resolver }
    }

    /// Asks for `name`'s records of `record_type`. Give names fully qualified (ending in
    /// a dot): the resolver has no search list.
    pub async fn lookup(&self, name: &str, record_type: RecordType) -> Lookup {
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => Lookup::Answers(lookup.answers().iter().map(|record| record.data.to_string()).collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => match no_records.response_code {
                ResponseCode::NXDomain => Lookup::NxDomain,
                ResponseCode::NoError => Lookup::NoData,
                code => Lookup::Failed(format!("response code {code}")),
            },
            Err(error) => Lookup::Failed(error.to_string()),
        }
    }
}
