//! The HTTP endpoints kubelet probes: `/healthz` for liveness and `/readyz` for readiness.
//!
//! Liveness only says the process is running and serving, so kubelet restarts it when it hangs
//! or dies. Readiness waits for the first full sync of Services and Endpoints: until then the
//! server would answer from an empty view of the cluster, so the kube-dns Service must not send
//! it queries yet. hyper serves the two paths because kube's HTTP client already brings it in,
//! and it handles the parsing corners of HTTP (partial reads, keep-alive) that a hand-written
//! responder would have to get right itself.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::snapshot::SnapshotReceiver;

/// The pause after a failed accept, so a persistent failure does not spin the CPU.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves the probe endpoints on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, snapshots: SnapshotReceiver) -> Infallible {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Accepting fails transiently (out of file descriptors, a connection reset
                // before it was accepted); a failed probe is retried by kubelet anyway.
                warn!(%error, "accepting a probe connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let synced = snapshots.borrow().is_some();
                async move { Ok::<_, Infallible>(respond(request.method(), request.uri().path(), synced)) }
            });
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, %error, "probe connection failed");
            }
        });
    }
}

/// The response to one probe request; `synced` says whether the first full sync is done.
fn respond(method: &Method, path: &str, synced: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if synced => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first sync of services and endpoints\n")
        }
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "not found\n"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_always_passes_and_readiness_waits_for_the_first_sync() {
        assert_eq!(respond(&Method::GET, "/healthz", false).status(), StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/readyz", false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&Method::GET, "/readyz", true).status(), StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/metrics", true).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/healthz", true).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
