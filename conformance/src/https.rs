//! HTTPS with the lab's CA and client certificates, for etcd, the apiservers and the
//! kubelets, which all require mutual TLS; plain HTTP for NodePorts and health ports.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use provisioner::pki::Store;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

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

/// Why a request got no HTTP answer.
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
    #[error("{method} {url}: {message}")]
    Request { method: &'static str, url: String, message: String },
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A client for one identity; see `Lab::https`.
pub struct HttpsClient<'a> {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(&pki.cert_path("ca"))? {
            roots.add(certificate)?;
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
        // No idle connections are kept: every request is a new connection, so a probe
        // never rides on a connection made before the thing it checks changed.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Ok(HttpsClient { client, timeout, targets })
    }

    pub async fn get(&self, url: impl AsRef<str>) -> Result<Reply, HttpsError> {
        self.send("GET", url.as_ref(), Bytes::new()).await
    }

    /// POSTs a JSON body, as etcd's gRPC gateway expects.
    pub async fn post_json(&self, url: impl AsRef<str>, body: &str) -> Result<Reply, HttpsError> {
        self.send("POST", url.as_ref(), Bytes::copy_from_slice(body.as_bytes())).await
    }

    async fn send(&self, method: &'static str, url: &str, body: Bytes) -> Result<Reply, HttpsError> {
        let request_error = |message: String| HttpsError::Request { method, url: url.to_string(), message };
        let uri: hyper::Uri = url.parse().map_err(|error: hyper::http::uri::InvalidUri| HttpsError::Url {
            url: url.to_string(),
            message: error.to_string(),
        })?;
        let host = uri.host().unwrap_or_default();
        let address: IpAddr = host
            .parse()
            .map_err(|_| HttpsError::Url { url: url.to_string(), message: format!("{host:?} is not an IP address") })?;
        self.targets.allow(address)?;

        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|error| request_error(error.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| request_error(error_chain(&error)))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|error| request_error(error.to_string()))?;
            Ok(Reply { status, body: String::from_utf8_lossy(&body.to_bytes()).into_owned() })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| HttpsError::Timeout {
            method,
            url: url.to_string(),
            timeout: self.timeout,
        })?
    }
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

/// An error with its sources, since hyper's own message ("client error (Connect)") hides
/// the reason (a refused connection, a TLS alert).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
