//! Ready means ready: the last thing `lab up` does is prove, from the host, that the
//! cluster serves what its users reach first, and keeps serving it.
//!
//! Every stage has its own readiness checks, run on the nodes. They say that each
//! component came up, not that the whole path from the host works and stays working:
//! a firewall start that flushes kube-proxy's rules after the check, or a node whose
//! kube-proxy is still syncing, shows only as Services that time out now and then for
//! a minute after `lab up` returned. So `wait_until_steady` asks, many times in a row,
//! the cluster DNS server for the `kubernetes` Service through the service range, and
//! opens a TCP connection to that Service's address, and returns once every probe of a
//! whole streak has passed. Each probe goes over the host's route for the service
//! range, the multipath route through every kube-proxy node.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::machines::hostnet;
use crate::plan::NetworkPlan;

/// How many probe rounds in a row must pass.
pub const STREAK: u32 = 10;
/// The pause between two rounds.
const INTERVAL: Duration = Duration::from_millis(300);
/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the whole wait may take at the host's speed; scaled by `time_scale`.
const DEADLINE: Duration = Duration::from_secs(90);

/// Why the cluster was not proven ready.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("readiness: {0}")]
    Route(#[from] crate::machines::MachineError),
    #[error(
        "readiness: Services did not answer {STREAK} times in a row from the host within {seconds} s \
         ({failures} of {rounds} rounds failed; last failure: {last})"
    )]
    NotSteady { seconds: u64, rounds: u32, failures: u32, last: String },
    #[error("readiness: given up after {rounds} rounds, because the run failed elsewhere")]
    Abandoned { rounds: u32 },
}

/// What the wait saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steady {
    /// Rounds probed in all, the passing streak included.
    pub rounds: u32,
    /// Rounds that failed before the streak.
    pub failures: u32,
    pub elapsed: Duration,
}

/// Probes until `STREAK` rounds in a row pass, or the deadline (`DEADLINE` times
/// `time_scale`) passes, or `abandon` is set (the run it proves failed anyway).
/// Refuses to send anything unless the probed addresses leave the host by the lab's
/// bridge.
pub fn wait_until_steady(
    network: &NetworkPlan,
    time_scale: u32,
    abandon: &AtomicBool,
) -> Result<Steady, ReadinessError> {
    let kubernetes = crate::topology::first_service_ip(network.service_cidr);
    hostnet::verify_on_bridge(&network.bridge, &[network.cluster_dns_ip, kubernetes])?;
    let name = format!("kubernetes.default.svc.{}.", network.cluster_domain);
    let started = Instant::now();
    let deadline = DEADLINE * time_scale.max(1);
    let (mut rounds, mut failures, mut streak) = (0u32, 0u32, 0u32);
    let mut last = String::new();
    while streak < STREAK {
        if abandon.load(Ordering::Relaxed) {
            return Err(ReadinessError::Abandoned { rounds });
        }
        if started.elapsed() > deadline {
            return Err(ReadinessError::NotSteady { seconds: deadline.as_secs(), rounds, failures, last });
        }
        rounds += 1;
        let outcome = resolve(network.cluster_dns_ip, &name, kubernetes)
            .and_then(|()| connect(SocketAddr::from((kubernetes, 443))));
        match outcome {
            Ok(()) => streak += 1,
            Err(reason) => {
                failures += 1;
                streak = 0;
                last = reason;
            }
        }
        if streak < STREAK {
            std::thread::sleep(INTERVAL);
        }
    }
    Ok(Steady { rounds, failures, elapsed: started.elapsed() })
}

/// One A query for `name` to `server`, which must answer `expected`.
fn resolve(server: Ipv4Addr, name: &str, expected: Ipv4Addr) -> Result<(), String> {
    let fqdn = Name::from_ascii(name).map_err(|error| format!("bad name {name}: {error}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(fqdn, RecordType::A));
    let bytes = query.to_vec().map_err(|error| format!("cannot encode a DNS query: {error}"))?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|error| format!("udp socket: {error}"))?;
    socket.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|error| format!("udp socket: {error}"))?;
    socket.connect((server, 53)).map_err(|error| format!("DNS {server}: {error}"))?;
    socket.send(&bytes).map_err(|error| format!("DNS {server}: {error}"))?;
    let mut buffer = [0u8; 1500];
    let length = socket.recv(&mut buffer).map_err(|error| format!("DNS {server}: no answer ({error})"))?;
    let answer = Message::from_vec(&buffer[..length]).map_err(|error| format!("DNS {server}: {error}"))?;
    if answer.metadata.id != query.metadata.id {
        return Err(format!("DNS {server}: an answer to another query"));
    }
    let addresses: Vec<Ipv4Addr> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(address) => Some(address.0),
            _ => None,
        })
        .collect();
    if addresses.contains(&expected) {
        Ok(())
    } else {
        Err(format!("DNS {server}: {name} is {addresses:?}, not {expected}"))
    }
}

/// One TCP connection, closed at once.
fn connect(address: SocketAddr) -> Result<(), String> {
    TcpStream::connect_timeout(&address, PROBE_TIMEOUT).map(drop).map_err(|error| format!("TCP {address}: {error}"))
}
