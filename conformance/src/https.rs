//! HTTPS with the lab's CA and client certificates, for etcd, the apiservers and the
//! kubelets, which all require mutual TLS; plain HTTP for NodePorts and health ports.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use provisioner::pki::{self, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tower_service::Service;

use crate::net::{Targets, UnsafeTarget};

/// Who the client says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// No client certificate at all.
    Anonymous,
    /// The lab's certificate with this file stem (`STATE/pki/STEM.pem`, `STEM-key.pem`),
    /// e.g. `provisioner::pki::names::ADMIN`.
    Certificate(&'a str),
}

/// Why a request got no HTTP answer. A server that refuses a client shows it in one of two
/// ways only: an HTTP status (401, 403), which is an answer, or a TLS alert that aborts the
/// handshake ([`HttpsError::TlsRejected`]). A timeout, a refused connection or an
/// unreachable host says nothing about whom the server would accept, so each has a variant
/// of its own that no check may take for a refusal.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("cannot read {path}: {message}")]
    Pki { path: String, message: String },
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Unsafe(#[from] UnsafeTarget),
    #[error("{url} is not a URL with an IPv4 address: {message}")]
    Url { url: String, message: String },
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout { method: &'static str, url: String, timeout: Duration },
    /// The address answered with a TCP reset: nothing listens on the port.
    #[error("{method} {url}: connection refused (nothing listens there)")]
    ConnectionRefused { method: &'static str, url: String },
    /// No route, or a firewall rejected the connection (ICMP "administratively prohibited").
    #[error("{method} {url}: unreachable: {message}")]
    Unreachable { method: &'static str, url: String, message: String },
    /// The server ended the TLS handshake with an alert, as a server that requires a client
    /// certificate does when it gets none (`certificate_required` in TLS 1.3,
    /// `bad_certificate` or `handshake_failure` in TLS 1.2).
    #[error("{method} {url}: the server rejected the TLS handshake with the alert {alert:?}")]
    TlsRejected { method: &'static str, url: String, alert: rustls::AlertDescription },
    /// Anything else: a TLS error on the client's side (an untrusted server certificate),
    /// a reset connection, a malformed answer.
    #[error("{method} {url}: {message}")]
    Request { method: &'static str, url: String, message: String },
}

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// How many times `get_unless_timeout` asks before it reports the timeout.
pub const REFUSAL_ATTEMPTS: usize = 3;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A client for one identity; see `Lab::https`.
pub struct HttpsClient<'a> {
    connector: HttpsConnector<HttpConnector>,
    timeout: Duration,
    targets: &'a Targets,
}

impl<'a> HttpsClient<'a> {
    pub(crate) fn new(
        pki: &Store,
        identity: Identity<'_>,
        timeout: Duration,
        targets: &'a Targets,
    ) -> Result<Self, HttpsError> {
        // Servers are checked against both of the lab's CAs: the cluster's (apiservers,
        // kubelets) and etcd's own (its members). What each server accepts from the
        // client is what the tests look at.
        let mut roots = RootCertStore::empty();
        for stem in [pki::CA_STEM, pki::ETCD_CA_STEM] {
            for certificate in read_certificates(&pki.cert_path(stem))? {
                roots.add(certificate)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match identity {
            Identity::Anonymous => builder.with_no_client_auth(),
            Identity::Certificate(stem) => {
                let key_path = pki.key_path(stem);
                let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| HttpsError::Pki {
                    path: key_path.display().to_string(),
                    message: error.to_string(),
                })?;
                builder.with_client_auth_cert(read_certificates(&pki.cert_path(stem))?, key)?
            }
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpsClient { connector, timeout, targets })
    }

    pub async fn get(&self, url: impl AsRef<str>) -> Result<Reply, HttpsError> {
        self.send("GET", url.as_ref(), JSON, Bytes::new()).await
    }

    /// GETs `url` until the outcome is not a timeout, at most `REFUSAL_ATTEMPTS` times,
    /// for checks that require a refusal: a timeout is never taken for one, but on a
    /// loaded host a handshake can miss its deadline, and that says nothing either way.
    pub async fn get_unless_timeout(&self, url: impl AsRef<str>) -> Result<Reply, HttpsError> {
        let mut outcome = self.get(url.as_ref()).await;
        for _ in 1..REFUSAL_ATTEMPTS {
            if !matches!(outcome, Err(HttpsError::Timeout { .. })) {
                break;
            }
            outcome = self.get(url.as_ref()).await;
        }
        outcome
    }

    /// POSTs a JSON body, as etcd's gRPC gateway expects.
    pub async fn post_json(&self, url: impl AsRef<str>, body: &str) -> Result<Reply, HttpsError> {
        self.send("POST", url.as_ref(), JSON, Bytes::copy_from_slice(body.as_bytes())).await
    }

    pub async fn delete(&self, url: impl AsRef<str>) -> Result<Reply, HttpsError> {
        self.send("DELETE", url.as_ref(), JSON, Bytes::new()).await
    }

    /// PATCHes an object of the Kubernetes API with a JSON merge patch.
    pub async fn merge_patch(&self, url: impl AsRef<str>, patch: &str) -> Result<Reply, HttpsError> {
        self.send("PATCH", url.as_ref(), MERGE_PATCH, Bytes::copy_from_slice(patch.as_bytes())).await
    }

    async fn send(
        &self,
        method: &'static str,
        url: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Reply, HttpsError> {
        let uri: hyper::Uri = url.parse().map_err(|error: hyper::http::uri::InvalidUri| HttpsError::Url {
            url: url.to_string(),
            message: error.to_string(),
        })?;
        let host = uri.host().unwrap_or_default();
        let address: IpAddr = host
            .parse()
            .map_err(|_| HttpsError::Url { url: url.to_string(), message: format!("{host:?} is not an IP address") })?;
        self.targets.allow(address)?;

        // Origin form with a Host header: the request goes over a connection of its own,
        // not through a client that would rewrite it.
        let authority = uri.authority().map(|authority| authority.to_string()).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |path| path.as_str()).to_string();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|error| HttpsError::Request { method, url: url.to_string(), message: error.to_string() })?;
        let failed = |error: &(dyn std::error::Error + 'static)| classify(method, url, self.timeout, error);
        let exchange = async {
            // Every request is a new connection, so a probe never rides on a connection made
            // before the thing it checks changed.
            let mut connector = self.connector.clone();
            std::future::poll_fn(|context| connector.poll_ready(context)).await.map_err(|error| failed(&*error))?;
            let stream = connector.call(uri).await.map_err(|error| failed(&*error))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(stream).await.map_err(|error| failed(&error))?;
            let mut connection = ConnectionTask(tokio::spawn(connection));
            let reply = async {
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?;
                Ok::<_, hyper::Error>(Reply { status, body: String::from_utf8_lossy(&body.to_bytes()).into_owned() })
            }
            .await;
            // Without its sender the connection closes once it is idle, and its task ends.
            drop(sender);
            match reply {
                Ok(reply) => Ok(reply),
                // A TLS 1.3 server checks the client's certificate after the client has
                // finished its side of the handshake, so its alert arrives while the request
                // is on its way: the request fails only with "connection closed", and the
                // reason (the alert) is the connection's own error.
                Err(request_error) => match (&mut connection.0).await {
                    Ok(Err(connection_error)) => Err(failed(&connection_error)),
                    _ => Err(failed(&request_error)),
                },
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| HttpsError::Timeout {
            method,
            url: url.to_string(),
            timeout: self.timeout,
        })?
    }
}

/// The task that drives one request's connection. It is aborted when the request ends, so
/// that a server that never answers does not keep the task and its socket after the
/// request has timed out.
struct ConnectionTask(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Says why a request failed, from the causes hyper's error wraps (its own message, such
/// as "connection error", hides them): a TLS alert from the server anywhere in the chain
/// makes it a rejection; otherwise the socket's error kind tells a refused connection, an
/// unreachable host and a connect timeout apart.
fn classify(
    method: &'static str,
    url: &str,
    timeout: Duration,
    error: &(dyn std::error::Error + 'static),
) -> HttpsError {
    let url = url.to_string();
    let chain = causes(error);
    let alert = chain.iter().find_map(|cause| match cause.downcast_ref::<rustls::Error>() {
        Some(&rustls::Error::AlertReceived(alert)) => Some(alert),
        _ => None,
    });
    if let Some(alert) = alert {
        return HttpsError::TlsRejected { method, url, alert };
    }
    let mut messages: Vec<String> = chain.iter().map(ToString::to_string).collect();
    // An io::Error that wraps an error shows that error's message as its own.
    messages.dedup();
    let message = messages.join(": ");
    let kind = chain.iter().find_map(|cause| cause.downcast_ref::<io::Error>().map(io::Error::kind));
    match kind {
        Some(io::ErrorKind::TimedOut) => HttpsError::Timeout { method, url, timeout },
        Some(io::ErrorKind::ConnectionRefused) => HttpsError::ConnectionRefused { method, url },
        Some(io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable) => {
            HttpsError::Unreachable { method, url, message }
        }
        _ => HttpsError::Request { method, url, message },
    }
}

/// `error` and every error it wraps, outermost first. An `io::Error` that wraps another
/// error reports that error's source as its own, skipping the wrapped error itself (which
/// is where rustls puts its alerts), so the walk steps into it with `get_ref` instead.
fn causes<'a>(error: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
    // Far deeper than any chain hyper, hyper-rustls and rustls build; it bounds the walk.
    const DEEPEST: usize = 16;
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next.filter(|_| chain.len() < DEEPEST) {
        chain.push(current);
        next = match current.downcast_ref::<io::Error>() {
            Some(io_error) => io_error.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    chain
}

fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let pki_error = |message: String| HttpsError::Pki { path: path.display().to_string(), message };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pki_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pki_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(pki_error("no certificate in it".to_string()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    //! The classification against real servers on loopback: a TLS server that requires a
    //! client certificate, a port nothing listens on, and one that accepts and stays silent.

    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener};
    use std::thread::JoinHandle;

    use provisioner::pki::{Authority, CertificateSpec, Usage};
    use rustls::server::WebPkiClientVerifier;
    use rustls::version::{TLS12, TLS13};
    use rustls::{AlertDescription, ServerConfig, ServerConnection, StreamOwned, SupportedProtocolVersion};

    use super::*;

    const SERVER: &str = "server";
    const CLIENT: &str = "client";
    /// How long a test request may take; every server here is on loopback.
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, issued into a
    /// temporary state directory the way the lab issues its own.
    fn pki() -> (tempfile::TempDir, Store) {
        let state = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(state.path());
        let spec = |name: &str, usage: Usage| CertificateSpec {
            name: name.to_string(),
            authority: Authority::Cluster,
            common_name: name.to_string(),
            organization: None,
            dns_names: Vec::new(),
            ip_addresses: vec![Ipv4Addr::LOCALHOST.into()],
            usages: vec![usage],
        };
        store.load_or_issue(&[spec(SERVER, Usage::ServerAuth), spec(CLIENT, Usage::ClientAuth)]).expect("a test PKI");
        (state, store)
    }

    fn targets() -> Targets {
        let text = std::fs::read_to_string(crate::workspace_root().join("lab.toml")).expect("lab.toml is readable");
        let topology = provisioner::topology::Topology::parse(&text, "lab.toml".as_ref()).expect("lab.toml parses");
        Targets::new("lab-k8s", &topology.topology.network)
    }

    /// A TLS server on a loopback port that speaks only `version`, requires a client
    /// certificate signed by the test CA, and answers a request it accepts with `200 ok`.
    /// It serves `connections` connections, then its thread ends.
    fn serve_requiring_client_certificates(
        store: &Store,
        version: &'static SupportedProtocolVersion,
        connections: usize,
    ) -> (u16, JoinHandle<()>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(&store.cert_path("ca")).expect("the test CA") {
            roots.add(certificate).expect("a valid CA certificate");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .expect("a client certificate verifier");
        let key = PrivateKeyDer::from_pem_file(store.key_path(SERVER)).expect("the server key");
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("a supported TLS version")
            .with_client_cert_verifier(verifier)
            .with_single_cert(read_certificates(&store.cert_path(SERVER)).expect("the server certificate"), key)
            .expect("a server configuration");
        let config = Arc::new(config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port");
        let port = listener.local_addr().expect("a bound port").port();
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(TIMEOUT)).expect("a read timeout");
                let connection = ServerConnection::new(Arc::clone(&config)).expect("a server connection");
                let mut tls = StreamOwned::new(connection, stream);
                // Reading drives the handshake. Without a client certificate it fails here,
                // and rustls writes its alert to the client before it returns the error.
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                let head_complete = |request: &[u8]| request.windows(4).any(|window| window == b"\r\n\r\n");
                while !head_complete(&request) {
                    match tls.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                if head_complete(&request) {
                    // The client may be gone already; the test then says so itself.
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        (port, server)
    }

    #[test]
    fn a_server_that_requires_a_client_certificate_rejects_one_without_it_with_an_alert() {
        let (_state, store) = pki();
        let targets = targets();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        for version in [&TLS13, &TLS12] {
            let (port, server) = serve_requiring_client_certificates(&store, version, 2);
            let url = format!("https://127.0.0.1:{port}/health");

            // With the client certificate the same server answers, so the rejection below is
            // about the certificate and nothing else.
            let client = HttpsClient::new(&store, Identity::Certificate(CLIENT), TIMEOUT, &targets).expect("a client");
            let reply = runtime.block_on(client.get(&url)).unwrap_or_else(|error| panic!("{version:?}: {error}"));
            assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{version:?}");

            let anonymous = HttpsClient::new(&store, Identity::Anonymous, TIMEOUT, &targets).expect("a client");
            match runtime.block_on(anonymous.get(&url)) {
                Err(HttpsError::TlsRejected { alert, .. }) => assert!(
                    matches!(alert, AlertDescription::CertificateRequired | AlertDescription::BadCertificate),
                    "{version:?}: an unexpected alert {alert:?}"
                ),
                other => panic!("{version:?}: not a TLS rejection: {other:?}"),
            }
            server.join().expect("the test server ran to its end");
        }
    }

    #[test]
    fn a_port_nothing_listens_on_is_a_refused_connection_not_a_rejection() {
        let (_state, store) = pki();
        let targets = targets();
        // A port that was just free: bound, then released.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port").local_addr().unwrap().port();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let anonymous = HttpsClient::new(&store, Identity::Anonymous, TIMEOUT, &targets).expect("a client");
        let reply = runtime.block_on(anonymous.get(format!("https://127.0.0.1:{port}/health")));
        assert!(matches!(reply, Err(HttpsError::ConnectionRefused { .. })), "{reply:?}");
    }

    #[test]
    fn a_server_that_never_answers_is_a_timeout_not_a_rejection() {
        let (_state, store) = pki();
        let targets = targets();
        // The kernel completes the handshake for the listening socket; nobody reads.
        let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port");
        let port = silent.local_addr().expect("a bound port").port();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let timeout = Duration::from_millis(300);
        let anonymous = HttpsClient::new(&store, Identity::Anonymous, timeout, &targets).expect("a client");
        let reply = runtime.block_on(anonymous.get(format!("https://127.0.0.1:{port}/health")));
        assert!(matches!(reply, Err(HttpsError::Timeout { .. })), "{reply:?}");
    }
}
