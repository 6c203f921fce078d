//! The Kubernetes side: the admin client, a namespace per test, the test app, waiting.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use provisioner::artifacts::images;
use serde_json::json;

use crate::net::Targets;

/// The label every object of the test app carries, as `KEY=VALUE` for selectors.
pub const WEB_LABEL: &str = "app=web";

/// How often `eventually` tries again. Short, since most waits end in well under a second.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one `cargo lab kubectl` run may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new namespace may take to be ready for pods (its ServiceAccount token).
const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin client from the lab's kubeconfig, with bounded timeouts (stretched by the
/// lab's `time_scale`). Its server (the virtual IP) must pass the network guard first.
pub(crate) async fn admin_client(path: &Path, targets: &Targets, time_scale: u32) -> Result<kube::Client, String> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|error| format!("cannot read the admin kubeconfig {}: {error}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|error| format!("cannot use the admin kubeconfig {}: {error}", path.display()))?;
    let host = config.cluster_url.host().unwrap_or_default().to_string();
    let address: IpAddr =
        host.parse().map_err(|_| format!("the admin kubeconfig's server {host:?} is not an IP address"))?;
    targets.allow(address).map_err(|error| error.to_string())?;
    // A proxy from the environment (HTTPS_PROXY) would carry the lab's traffic elsewhere.
    config.proxy_url = None;
    config.connect_timeout = Some(Duration::from_secs(3) * time_scale);
    config.read_timeout = Some(Duration::from_secs(15) * time_scale);
    config.reset_reader_on_write = true;
    config.write_timeout = Some(Duration::from_secs(15) * time_scale);
    kube::Client::try_from(config).map_err(|error| format!("cannot build the Kubernetes client: {error}"))
}

/// Tries `attempt` every 200 ms until it returns `Ok` or `timeout` (stretched by
/// `Lab::patience`) passes; then panics with `what` and the last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let timeout = crate::lab().patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}: {last}"),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A namespace of its own for one test, named `conformance-TEST-RANDOM`. `delete` removes
/// it at the end of a successful test; after a failure it stays for inspection.
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    deleted: bool,
}

impl TestNamespace {
    /// A namespace ready for pods.
    pub async fn create(client: &kube::Client, test: &str) -> TestNamespace {
        let namespace = TestNamespace::create_without_pods(client, test).await;
        let name = namespace.name();
        // Kubernetes 1.20 refuses a pod until the token controller has given the namespace's
        // `default` ServiceAccount a token; controllers retry, a test creating a bare pod would
        // not. Waiting here makes every test's namespace ready for pods.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
        eventually(&format!("the default ServiceAccount of {name} has a token"), NAMESPACE_READY_TIMEOUT, || async {
            match accounts.get_opt("default").await.map_err(|error| error.to_string())? {
                Some(account) if account.secrets.as_ref().is_some_and(|secrets| !secrets.is_empty()) => Ok(()),
                Some(_) => Err("it has no token yet".to_string()),
                None => Err("it does not exist yet".to_string()),
            }
        })
        .await;
        namespace
    }

    /// A namespace for objects other than pods, returned at once: it does not wait for
    /// the token controller, which has no leader for a while after a controller
    /// manager restarts (a wait of 56 s was seen in the fault proof).
    pub async fn create_without_pods(client: &kube::Client, test: &str) -> TestNamespace {
        let suffix = RandomState::new().build_hasher().finish() & 0xff_ffff;
        let name = format!("conformance-{}-{suffix:06x}", test.replace('_', "-"));
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "k8s-lab/conformance": "true" } }
        }))
        .expect("a valid Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("cannot create namespace {name}: {error}"));
        TestNamespace { name, client: client.clone(), deleted: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates a bare pod in the namespace. The ServiceAccount admission of 1.20 looks
    /// for the `default` ServiceAccount's token Secret in the cache of the apiserver
    /// that takes the request, which may lag behind the ServiceAccount that `create`
    /// waited for: it then refuses the pod with a ServerTimeout to be retried ("No API
    /// token found ... retry after the token is automatically created"), as it did once
    /// in the suite right after a fresh `lab up`. Controllers retry such a refusal; so
    /// does this. Any other error fails the test at once.
    pub async fn create_pod(&self, pod: &Pod) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.name);
        let what = format!("pod {} is created in {}", pod.metadata.name.as_deref().unwrap_or("?"), self.name);
        eventually(&what, NAMESPACE_READY_TIMEOUT, || async {
            match pods.create(&PostParams::default(), pod).await {
                Ok(created) => Ok(created),
                Err(kube::Error::Api(refusal)) if refusal.code == 500 && refusal.reason == "ServerTimeout" => {
                    Err(refusal.message)
                }
                Err(error) => panic!("{what}: {error}"),
            }
        })
        .await
    }

    /// Deletes the namespace and everything in it, without waiting for it to be gone.
    pub async fn delete(mut self) {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .unwrap_or_else(|error| panic!("cannot delete namespace {}: {error}", self.name));
        self.deleted = true;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !self.deleted {
            eprintln!(
                "kept namespace {name} for inspection; remove it with `cargo lab kubectl delete namespace {name}`",
                name = self.name
            );
        }
    }
}

/// The test app: `replicas` pods of the lab's web image, which answers `GET /` on its port
/// with the pod's name. With `one_per_worker`, no two pods share a node (required, so the
/// test fails rather than passing on one node).
pub fn web_deployment(replicas: usize, one_per_worker: bool) -> Deployment {
    let (label_key, label_value) = WEB_LABEL.split_once('=').expect("KEY=VALUE");
    let affinity = if one_per_worker {
        json!({ "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": { "matchLabels": { label_key: label_value } },
            "topologyKey": "kubernetes.io/hostname",
        }]}})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": { "name": "web", "labels": { label_key: label_value } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { label_key: label_value } },
            "template": {
                "metadata": { "labels": { label_key: label_value } },
                "spec": {
                    "affinity": affinity,
                    // busybox httpd exits at once on SIGTERM; no need to wait for it.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": images::WEB,
                        // The lab imported the image on every worker; there is no registry.
                        "imagePullPolicy": "Never",
                        "ports": [{ "name": "http", "containerPort": images::WEB_PORT }],
                        "readinessProbe": {
                            "httpGet": { "path": "/", "port": images::WEB_PORT },
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

/// Waits until `count` pods matching `selector` in `namespace` are Ready, and returns them.
pub async fn ready_pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("{count} ready pods with {selector} in {namespace}");
    eventually(&what, timeout, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|error| error.to_string())?;
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_is_ready).collect();
        if ready.len() == count {
            Ok(ready)
        } else {
            Err(format!("{} ready", ready.len()))
        }
    })
    .await
}

/// Whether the pod's Ready condition is True.
/// Whether `pod` runs or may run again: not Failed or Succeeded. A worker's kubelet marks
/// its pods Failed (reason `Shutdown`) when its machine powers off, and they stay listed.
pub fn pod_may_run(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
    !matches!(phase, Some("Failed" | "Succeeded"))
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|status| status.conditions.as_ref()).is_some_and(|conditions| {
        conditions.iter().any(|condition| condition.type_ == "Ready" && condition.status == "True")
    })
}

/// Runs `cargo lab kubectl -- ARGS` in the workspace root (kubectl 1.20 with the admin
/// kubeconfig) and returns its standard output, or its standard error on failure.
pub async fn kubectl(args: &[&str]) -> Result<String, String> {
    let mut command = crate::cargo_lab(&["kubectl", "--"]);
    command.args(args);
    let command = tokio::process::Command::from(command).kill_on_drop(true).output();
    let shown = format!("kubectl {}", args.join(" "));
    let timeout = crate::lab().patience(KUBECTL_TIMEOUT);
    let output = tokio::time::timeout(timeout, command)
        .await
        .map_err(|_| format!("`{shown}` did not finish within {timeout:?}"))?
        .map_err(|error| format!("cannot run `cargo lab {shown}`: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// What kind of Service `web_service_endpoints` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    /// Also answers on a node port on every node that runs kube-proxy.
    NodePort,
}

/// The Service `web_service_endpoints` made.
#[derive(Debug, Clone)]
pub struct WebService {
    pub name: String,
    pub cluster_ip: String,
    pub node_port: Option<u16>,
    /// How long its Endpoints took to list the pod, from the Service's creation.
    pub endpoints_after: Duration,
}

/// Creates the Service `web` in `namespace` in front of the pods labelled `WEB_LABEL`
/// and waits until its Endpoints list `pod_ip` as ready, within `deadline` (stretched by
/// the lab's patience). The Endpoints' delay is the controller manager's endpoints
/// controller, fed by watches through the apiservers, at work.
pub async fn web_service_endpoints(
    client: &kube::Client,
    namespace: &str,
    pod_ip: &str,
    deadline: Duration,
    kind: ServiceKind,
) -> WebService {
    let (label_key, label_value) = WEB_LABEL.split_once('=').expect("KEY=VALUE");
    let service_type = match kind {
        ServiceKind::ClusterIp => "ClusterIP",
        ServiceKind::NodePort => "NodePort",
    };
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "type": service_type,
            "selector": { label_key: label_value },
            "ports": [{ "name": "http", "protocol": "TCP", "port": 80, "targetPort": images::WEB_PORT }],
        },
    }))
    .expect("a valid Service");
    let created = Instant::now();
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|error| panic!("cannot create the Service: {error}"));
    let spec = service.spec.unwrap_or_default();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("the Endpoints of Service web list {pod_ip}"), deadline, || async {
        let found = endpoints.get_opt("web").await.map_err(|error| error.to_string())?;
        let addresses: Vec<String> = found
            .and_then(|endpoints| endpoints.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|subset| subset.addresses.unwrap_or_default())
            .map(|address| address.ip)
            .collect();
        if addresses.iter().any(|address| address == pod_ip) {
            Ok(())
        } else {
            Err(format!("addresses {addresses:?}"))
        }
    })
    .await;
    WebService {
        name: "web".to_string(),
        cluster_ip: spec.cluster_ip.expect("a Service gets a cluster IP"),
        node_port: spec.ports.and_then(|ports| ports.first().and_then(|port| port.node_port)).map(|port| port as u16),
        endpoints_after: created.elapsed(),
    }
}
