//! The DNS protocol side: hickory-server's sockets and message handling around `records.rs`.
//!
//! hickory-server parses requests, runs the UDP and TCP listeners and encodes responses
//! (truncating UDP answers that do not fit the client's buffer). This module adds what is
//! specific to a cluster DNS server: it takes the current [`Snapshot`] for each question,
//! answers names in the cluster's zones from `records.rs`, and sends every other name to the
//! upstream resolvers or refuses it. It never learns where snapshots come from: the watch of
//! the Kubernetes API publishes them in production, and the integration test publishes fixed
//! ones through the same channel, so both run this exact code.

use std::future::Future;
use std::iter;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tracing::warn;

use crate::forward::{Forwarder, Transport};
use crate::records::{self, Answer, Resolution, ZoneConfig};
use crate::snapshot::{Snapshot, SnapshotReceiver};
use crate::Error;

/// How long a TCP connection may stay idle between queries before the server closes it.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many responses may queue on one TCP connection (hickory-server's own default).
const TCP_RESPONSE_BUFFER: usize = 32;

/// How many times to look for an ephemeral port that is free for both UDP and TCP.
const EPHEMERAL_PORT_ATTEMPTS: usize = 20;

/// The request handler: answers from the latest snapshot, forwards or refuses the rest.
pub struct Handler {
    zone: ZoneConfig,
    snapshots: SnapshotReceiver,
    forwarder: Option<Forwarder>,
}

/// A bound DNS server, listening on one port for both UDP and TCP.
pub struct DnsServer {
    server: Server<Handler>,
    local_addr: SocketAddr,
}

impl Handler {
    /// A handler answering for `zone` from the snapshots published on `snapshots`, forwarding
    /// other names to `forwarder` or refusing them when there is none.
    pub fn new(zone: ZoneConfig, snapshots: SnapshotReceiver, forwarder: Option<Forwarder>) -> Self {
        Handler { zone, snapshots, forwarder }
    }

    /// Answers a well-formed standard query with one question.
    async fn answer_query<R: ResponseHandler>(
        &self,
        request: &Request,
        response_edns: Option<&Edns>,
        response_handle: R,
    ) -> ResponseInfo {
        let query = match request.request_info() {
            Ok(info) => info.query,
            Err(_) => return send_error(request, ResponseCode::FormErr, response_edns, response_handle).await,
        };
        if query.query_class() != DNSClass::IN {
            return send_error(request, ResponseCode::Refused, response_edns, response_handle).await;
        }
        // Clone the Arc so the channel is not locked while the answer is built and sent.
        let published = self.snapshots.borrow().clone();
        let unsynced = Snapshot::default();
        let snapshot = published.as_deref().unwrap_or(&unsynced);
        match records::resolve(&self.zone, snapshot, &query.name().into(), query.query_type()) {
            // Before the first full sync an empty snapshot would give false NXDOMAINs, which
            // resolvers cache; SERVFAIL makes them try again (or try another replica).
            Resolution::Authoritative(_) if published.is_none() => {
                send_error(request, ResponseCode::ServFail, response_edns, response_handle).await
            }
            Resolution::Authoritative(answer) => {
                self.send_answer(request, answer, response_edns, response_handle).await
            }
            Resolution::OutOfZone => match &self.forwarder {
                Some(forwarder) => self.forward(forwarder, request, response_edns, response_handle).await,
                None => send_error(request, ResponseCode::Refused, response_edns, response_handle).await,
            },
        }
    }

    async fn send_answer<R: ResponseHandler>(
        &self,
        request: &Request,
        answer: Answer,
        response_edns: Option<&Edns>,
        response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = self.forwarder.is_some();
        metadata.response_code = answer.response_code;
        let response = MessageResponseBuilder::new(&request.queries, response_edns).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            iter::empty(),
            answer.additionals.iter(),
        );
        send(request, response_handle, response).await
    }

    async fn forward<R: ResponseHandler>(
        &self,
        forwarder: &Forwarder,
        request: &Request,
        response_edns: Option<&Edns>,
        response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let upstream_answer: Message = match forwarder.forward(request.as_slice(), request.metadata.id, transport).await
        {
            Ok(answer) => answer,
            Err(error) => {
                warn!(error = %error, "forwarding failed");
                return send_error(request, ResponseCode::ServFail, response_edns, response_handle).await;
            }
        };
        let response = MessageResponseBuilder::new(&request.queries, upstream_answer.edns.as_ref()).build(
            upstream_answer.metadata,
            upstream_answer.answers.iter(),
            upstream_answer.authorities.iter(),
            iter::empty(),
            upstream_answer.additionals.iter(),
        );
        send(request, response_handle, response).await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        // Answer with EDNS when asked with it, accepting the client's buffer size (RFC 6891).
        let response_edns = request.edns.as_ref().map(|request_edns| {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().max(512));
            edns
        });
        let response_edns = response_edns.as_ref();
        match (request.metadata.message_type, request.metadata.op_code) {
            (MessageType::Query, OpCode::Query) => self.answer_query(request, response_edns, response_handle).await,
            (MessageType::Query, _) => send_error(request, ResponseCode::NotImp, response_edns, response_handle).await,
            (MessageType::Response, _) => {
                send_error(request, ResponseCode::FormErr, response_edns, response_handle).await
            }
        }
    }
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    response_code: ResponseCode,
    response_edns: Option<&Edns>,
    response_handle: R,
) -> ResponseInfo {
    let response =
        MessageResponseBuilder::new(&request.queries, response_edns).error_msg(&request.metadata, response_code);
    send(request, response_handle, response).await
}

async fn send<'a, R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(error = %error, client = %request.src(), "sending a response failed");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
        }
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `listen`. Port 0 picks one ephemeral port free for both, which is
    /// what tests use; a fixed port (53 in the cluster) must be free for both.
    pub async fn bind(listen: SocketAddr, handler: Handler) -> Result<Self, Error> {
        let (udp, tcp) = bind_sockets(listen).await.map_err(|source| Error::DnsBind { address: listen, source })?;
        let local_addr = udp.local_addr().map_err(|source| Error::DnsBind { address: listen, source })?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(DnsServer { server, local_addr })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting queries and returns once the
    /// queries in flight are answered.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let token = self.server.shutdown_token().clone();
        let trigger = tokio::spawn(async move {
            shutdown.await;
            token.cancel();
        });
        let result = self.server.block_until_done().await;
        trigger.abort();
        result.map_err(Error::DnsServe)
    }
}

async fn bind_sockets(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        return Ok((UdpSocket::bind(listen).await?, TcpListener::bind(listen).await?));
    }
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Another process holds this port for TCP only; try another ephemeral port.
            Err(_) if attempt < EPHEMERAL_PORT_ATTEMPTS => attempt += 1,
            Err(error) => return Err(error),
        }
    }
}
