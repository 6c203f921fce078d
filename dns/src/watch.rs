//! Keeping the snapshot in step with the cluster through the Kubernetes API.
//!
//! Two kube-rs reflectors list and then watch Services and core/v1 Endpoints in all namespaces
//! (Kubernetes 1.20 has no discovery.k8s.io/v1 EndpointSlices, and Endpoints are what kube-dns
//! and CoreDNS read on such clusters). Each reflector keeps an in-memory store of its objects
//! and re-lists on its own, with backoff, when a watch breaks or expires. After any change the
//! whole snapshot is rebuilt from both stores and published: rebuilding is cheap at a lab's
//! scale, and it keeps the joining of Services with their Endpoints in one pure function
//! (`Snapshot::from_kubernetes`) instead of spread over incremental updates. Nothing is
//! published until both stores have completed their first full list, which is what readiness
//! waits for.
//!
//! The server only needs `list` and `watch` on `services` and `endpoints` in the core API group.

use std::convert::Infallible;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::snapshot::{Snapshot, SnapshotSender};
use crate::Error;

/// A client from `kubeconfig`, or else inferred: `KUBECONFIG` or `~/.kube/config` when present,
/// otherwise the in-cluster service account that a pod of the DNS Deployment runs with.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.to_owned(), source })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig { path: path.to_owned(), source })?
        }
        None => Config::infer().await.map_err(Error::InferConfig)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// How long one watch request lasts before the server ends it and the watcher asks again
/// from the last resource version it saw. Kubernetes 1.20's apiserver can leave a watch
/// open but silent after etcd lost its quorum (kubernetes#97294, #116122); asking again
/// gets the changes it missed, so this bounds how long names can be stale after such an
/// outage. One request per kind every 30 s is nothing for an apiserver.
const WATCH_TIMEOUT_SECS: u32 = 30;

/// Watches Services and Endpoints and publishes a new snapshot after every change. Returns
/// only if a watch stream ends, which kube-rs's watchers do not do on their own.
pub async fn run(client: Client, publisher: SnapshotSender) -> Result<Infallible, Error> {
    let (services, service_writer) = reflector::store::<Service>();
    let (endpoints, endpoints_writer) = reflector::store::<Endpoints>();
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let service_events =
        watcher(Api::<Service>::all(client.clone()), config.clone()).default_backoff().reflect(service_writer);
    let endpoint_events = watcher(Api::<Endpoints>::all(client), config).default_backoff().reflect(endpoints_writer);
    // One permit coalesces any number of changes that happen while a snapshot is being built.
    let changed = Notify::new();
    tokio::select! {
        () = note_changes(service_events, "services", &changed) => Err(Error::WatchEnded("services")),
        () = note_changes(endpoint_events, "endpoints", &changed) => Err(Error::WatchEnded("endpoints")),
        never = publish_snapshots(services, endpoints, publisher, &changed) => Ok(never),
    }
}

/// Drives one reflector's event stream, which is what updates its store, and wakes the
/// publisher after each event.
async fn note_changes<K: Debug>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: &'static str,
    changed: &Notify,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            // The backoff wrapper retries by itself; the error is only worth a log line.
            Err(error) => warn!(kind, %error, "watch failed, retrying"),
        }
    }
}

async fn publish_snapshots(
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    publisher: SnapshotSender,
    changed: &Notify,
) -> Infallible {
    // The writers live as long as the event streams, which outlive this future in `run`.
    let _ = services.wait_until_ready().await;
    let _ = endpoints.wait_until_ready().await;
    info!(services = services.len(), endpoints = endpoints.len(), "first sync with the API server complete");
    let mut serial: u32 = 0;
    loop {
        serial = serial.wrapping_add(1);
        let (service_objects, endpoint_objects) = (services.state(), endpoints.state());
        let snapshot = Snapshot::from_kubernetes(
            serial,
            service_objects.iter().map(Arc::as_ref),
            endpoint_objects.iter().map(Arc::as_ref),
        );
        publisher.send_replace(Some(Arc::new(snapshot)));
        changed.notified().await;
    }
}
