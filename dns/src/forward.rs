//! Forwarding of names outside the cluster's zones to upstream resolvers.
//!
//! Kubelet points every pod's resolv.conf at the cluster DNS, so names outside the cluster
//! domain must reach a real resolver when the lab has one. The forwarder relays the client's
//! query bytes unchanged to each configured upstream in turn, over the transport the client
//! used, and hands back the first well-formed answer. Relaying the same bytes keeps the
//! client's message ID, flags and EDNS options, so the upstream sizes its answer for the
//! client: an answer too big for UDP comes back truncated, the client retries over TCP, and so
//! does the forwarder. It keeps no cache of its own; the upstream's cache serves that purpose
//! and its answers stay as fresh as the upstream's.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one upstream gets to answer before the next one is asked. Resolvers in pods give
/// up after 5 s per attempt (glibc's default), so two upstreams still fit into one attempt.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest DNS message over either transport (TCP's length prefix is 16 bits).
const MAX_MESSAGE_SIZE: usize = 65535;

/// The transport a query arrived on, and so the one used upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The upstream resolvers, asked in the order given.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
}

/// Why an upstream gave no usable answer.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("upstream {upstream} did not answer within {UPSTREAM_TIMEOUT:?}")]
    Timeout { upstream: SocketAddr },
    #[error("talking to upstream {upstream}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream} sent a malformed answer")]
    Malformed { upstream: SocketAddr },
}

impl Forwarder {
    /// A forwarder to `upstreams`, or `None` when there are none (the server then refuses names
    /// outside its zones, which is the offline default).
    pub fn new(upstreams: Vec<SocketAddr>) -> Option<Self> {
        (!upstreams.is_empty()).then_some(Forwarder { upstreams })
    }

    /// Asks each upstream in turn for the answer to `query` (the raw bytes of the client's
    /// message, whose ID is `id`) and returns the first answer; the error of the last upstream
    /// if none answered.
    pub async fn forward(&self, query: &[u8], id: u16, transport: Transport) -> Result<Message, ForwardError> {
        let mut last_error = ForwardError::NoUpstream;
        for upstream in &self.upstreams {
            let exchange = async {
                match transport {
                    Transport::Udp => exchange_udp(*upstream, query, id).await,
                    Transport::Tcp => exchange_tcp(*upstream, query).await,
                }
            };
            let bytes = match timeout(UPSTREAM_TIMEOUT, exchange).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(source)) => {
                    last_error = ForwardError::Io { upstream: *upstream, source };
                    continue;
                }
                Err(_) => {
                    last_error = ForwardError::Timeout { upstream: *upstream };
                    continue;
                }
            };
            match Message::from_vec(&bytes) {
                Ok(answer) if answer.metadata.id == id && answer.metadata.message_type == MessageType::Response => {
                    return Ok(answer);
                }
                _ => last_error = ForwardError::Malformed { upstream: *upstream },
            }
        }
        Err(last_error)
    }
}

/// One UDP exchange from a fresh socket on an ephemeral port: a connected socket only accepts
/// datagrams from the upstream, and datagrams with another message ID (late answers to an
/// earlier query) are skipped, which makes spoofed answers harder to slip in.
async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; MAX_MESSAGE_SIZE];
    loop {
        let length = socket.recv(&mut buffer).await?;
        if length >= 2 && u16::from_be_bytes([buffer[0], buffer[1]]) == id {
            buffer.truncate(length);
            return Ok(buffer);
        }
    }
}

/// One TCP exchange: each message is preceded by its length as two bytes (RFC 1035 4.2.2).
async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let answer_length = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(answer_length)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
