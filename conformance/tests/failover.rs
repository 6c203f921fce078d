//! Failover (handbook 000 section 8): the control plane keeps answering when one of its
//! redundant parts stops. Each test stops one unit on one node, measures what clients see
//! through the virtual IP (and directly), prints the figures, and starts the unit again,
//! also when the test fails (a guard does it on drop), waiting until it is healthy.
//!
//! These tests break the lab on purpose, so nextest runs them one at a time and alone (the
//! `failover` test group in .config/nextest.toml); under `cargo test` a lock keeps them
//! apart from each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance::{
    flag, lab, ready_pods, web_deployment, web_service_endpoints, Drill, HttpsClient, Identity, TestNamespace,
    WEB_LABEL,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;
use provisioner::paths::NODE_INTERFACE;
use provisioner::pki::names;
use provisioner::stages::{etcd, keepalived, kube_apiserver};
use provisioner::topology::Role;
use serde_json::json;

/// One failover at a time, also under `cargo test`, which runs a binary's tests in threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How often the request stream asks, and how long one request may take.
const REQUEST_INTERVAL: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopped unit, started again, may take to be healthy.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest outage a client may see: VRRP notices a stopped keepalived at once, and
/// HAProxy's health check takes a stopped apiserver out after 2 x 2 s.
const LONGEST_OUTAGE: Duration = Duration::from_secs(5);

/// A unit stopped by a test. Dropping it starts the unit again and waits until `ready` says
/// it is healthy, so a failing test leaves the lab as it found it.
struct StoppedUnit {
    node: String,
    unit: &'static str,
    ready: Box<dyn Fn() -> Result<(), String>>,
    restored: bool,
    /// Records the drill's window when the unit is back (declared last: dropped last).
    _drill: Drill,
}

impl StoppedUnit {
    fn stop(node: &str, unit: &'static str, ready: impl Fn() -> Result<(), String> + 'static) -> StoppedUnit {
        let drill = lab().drill(&format!("{unit} stopped on {node}"));
        let stopped =
            StoppedUnit { node: node.to_string(), unit, ready: Box::new(ready), restored: false, _drill: drill };
        lab().sh(node, &format!("systemctl stop {unit}"));
        stopped
    }

    /// Starts the unit and waits until it is ready; returns how long that took.
    fn restore(&mut self) -> Result<Duration, String> {
        self.restored = true;
        let started = Instant::now();
        lab().sh(&self.node, &format!("systemctl start {}", self.unit));
        loop {
            match (self.ready)() {
                Ok(()) => return Ok(started.elapsed()),
                Err(error) if started.elapsed() > RESTORE_TIMEOUT => {
                    return Err(format!(
                        "{} on {} not ready {RESTORE_TIMEOUT:?} after its start: {error}",
                        self.unit, self.node
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for StoppedUnit {
    fn drop(&mut self) {
        if !self.restored {
            match self.restore() {
                Ok(took) => eprintln!("restored {} on {} ({took:.1?})", self.unit, self.node),
                Err(error) => eprintln!(
                    "{error}; check it with `cargo lab ssh {node} -- systemctl status {unit}`",
                    node = self.node,
                    unit = self.unit
                ),
            }
        }
    }
}

/// One request of a stream: when it was sent, relative to the stream's start, and whether
/// it was answered with 200.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    ok: bool,
}

/// GETs `url` every 100 ms, each on a new connection, until told to stop.
struct RequestStream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
    started: Instant,
}

impl RequestStream {
    fn start(client: HttpsClient<'static>, url: String) -> RequestStream {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let task = lab().spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok = matches!(client.get(&url).await, Ok(reply) if reply.status == 200);
                    samples.push(Sample { at: sent - started, ok });
                    tokio::time::sleep_until((sent + REQUEST_INTERVAL).into()).await;
                }
                samples
            }
        });
        RequestStream { stop, task, started }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn finish(self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        let samples = lab().block_on(self.task).expect("the request stream ran to its end");
        Summary::of(&samples)
    }
}

/// What a stream of requests saw.
#[derive(Debug)]
struct Summary {
    sent: usize,
    failed: usize,
    /// From the first failed request of the longest run of failures to the next success.
    longest_outage: Duration,
    /// Whether the last request succeeded, so that no outage lasted to the end.
    answering_at_the_end: bool,
}

impl Summary {
    fn of(samples: &[Sample]) -> Summary {
        let mut longest_outage = Duration::ZERO;
        let mut outage_start: Option<Duration> = None;
        for sample in samples {
            match (sample.ok, outage_start) {
                (false, None) => outage_start = Some(sample.at),
                (true, Some(start)) => {
                    longest_outage = longest_outage.max(sample.at - start);
                    outage_start = None;
                }
                _ => {}
            }
        }
        let end = samples.last().map(|sample| sample.at).unwrap_or_default();
        if let Some(start) = outage_start {
            longest_outage = longest_outage.max(end - start);
        }
        Summary {
            sent: samples.len(),
            failed: samples.iter().filter(|sample| !sample.ok).count(),
            longest_outage,
            answering_at_the_end: samples.last().is_some_and(|sample| sample.ok),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} requests failed, longest outage {:.1?}", self.failed, self.sent, self.longest_outage)
    }
}

/// The load balancers that have the virtual IP on their interface right now.
fn vip_holders() -> Vec<String> {
    let lab = lab();
    let vip = format!("{}/", lab.status.vip);
    lab.nodes_with(Role::Lb)
        .into_iter()
        .filter(|node| {
            lab.sh(&node.name, &format!("ip -brief address show {NODE_INTERFACE}"))
                .split_whitespace()
                .any(|address| address.starts_with(&vip))
        })
        .map(|node| node.name.clone())
        .collect()
}

fn through_vip(path: &str) -> String {
    format!("{}{path}", lab().status.api_server_url)
}

fn directly(address: std::net::Ipv4Addr, path: &str) -> String {
    format!("https://{address}:{}{path}", lab().topology.network.apiserver_port)
}

/// An HTTPS GET that must answer 200, as a readiness check.
fn answers(url: String) -> impl Fn() -> Result<(), String> {
    move || {
        let client = lab().https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
        match lab().block_on(client.get(&url)) {
            Ok(reply) if reply.status == 200 => Ok(()),
            Ok(reply) => Err(format!("GET {url}: HTTP {}", reply.status)),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Stops keepalived on the load balancer holding the virtual IP: another one must take the
/// address over, and the API through the virtual IP must come back within 5 s. Prints how
/// long the move took and how many of the requests sent through the virtual IP every 100 ms
/// failed.
///
/// Turn it red: stop keepalived on the other masters first (`cargo lab ssh master2 --
/// systemctl stop keepalived`, the same on master3), so that nobody can take over.
#[test]
fn keepalived_moves_the_virtual_ip_when_its_holder_stops() {
    if !lab().applies("a virtual IP failover", Role::Lb, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let holders = vip_holders();
    assert_eq!(holders.len(), 1, "exactly one load balancer must hold the virtual IP before the test: {holders:?}");
    let holder = holders[0].clone();
    let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
    let stream = RequestStream::start(client, through_vip("/healthz"));
    std::thread::sleep(Duration::from_millis(300));

    let stopped_at = stream.elapsed();
    let mut stopped = StoppedUnit::stop(&holder, keepalived::UNIT, {
        let holder = holder.clone();
        move || match lab.try_sh(&holder, &format!("systemctl is-active {}", keepalived::UNIT)) {
            Ok(output) if output.status == 0 => Ok(()),
            Ok(output) => Err(output.stdout.trim().to_string()),
            Err(error) => Err(error.to_string()),
        }
    });
    let deadline = Instant::now() + LONGEST_OUTAGE * 2;
    let new_holder = loop {
        let holders = vip_holders();
        if let [single] = holders.as_slice() {
            if *single != holder {
                break single.clone();
            }
        }
        assert!(Instant::now() < deadline, "no other load balancer took the virtual IP over: holders {holders:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let moved_after = stream.elapsed() - stopped_at;
    // Let the stream show whether clients got through again.
    std::thread::sleep(Duration::from_secs(2));
    let summary = stream.finish();
    let restored_in = stopped.restore().unwrap_or_else(|error| panic!("{error}"));

    println!(
        "keepalived stopped on {holder}: {new_holder} held the virtual IP {:.1?} later; through the virtual IP {summary}; \
         keepalived on {holder} active again after {restored_in:.1?}",
        moved_after
    );
    assert!(summary.answering_at_the_end, "the API did not answer through the virtual IP after the move: {summary}");
    assert!(summary.longest_outage <= LONGEST_OUTAGE, "clients saw too long an outage: {summary}");
    let holders = vip_holders();
    assert_eq!(holders.len(), 1, "exactly one load balancer must hold the virtual IP afterwards: {holders:?}");
}

/// Stops the apiserver on the master that holds the virtual IP: HAProxy must send requests
/// to the other apiservers, so that requests through the virtual IP keep being answered.
/// Prints how many failed.
///
/// Turn it red: stop the apiservers of the two masters that do not hold the virtual IP
/// first (`cargo lab ssh master2 -- systemctl stop kube-apiserver`, the same on master3 when
/// master1 holds it), so that HAProxy has nowhere left to send requests.
#[test]
fn the_api_keeps_answering_when_one_apiserver_stops() {
    if !lab().applies("an apiserver failover", Role::Master, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let holders = vip_holders();
    let victim = lab.node(holders.first().expect("a load balancer holds the virtual IP"));
    let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
    let stream = RequestStream::start(client, through_vip("/healthz"));
    std::thread::sleep(Duration::from_millis(300));

    // `systemctl stop` returns once the apiserver has drained (about 10 s); it stops
    // listening at once, so the stream sees the whole outage meanwhile.
    let stop_issued = Instant::now();
    let mut stopped =
        StoppedUnit::stop(&victim.name, kube_apiserver::UNIT, answers(directly(victim.address, "/healthz")));
    let direct = lab.block_on(
        lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT).get(directly(victim.address, "/healthz")),
    );
    assert!(direct.is_err(), "the apiserver on {} still answers after `systemctl stop`: {direct:?}", victim.name);
    // Long enough for HAProxy's check (every 2 s, 2 failures) to take it out.
    std::thread::sleep((LONGEST_OUTAGE + Duration::from_secs(1)).saturating_sub(stop_issued.elapsed()));
    let summary = stream.finish();
    let restored_in = stopped.restore().unwrap_or_else(|error| panic!("{error}"));

    println!(
        "kube-apiserver stopped on {}: through the virtual IP {summary}; it answered again {restored_in:.1?} after its start",
        victim.name
    );
    assert!(summary.answering_at_the_end, "the API stopped answering through the virtual IP: {summary}");
    assert!(summary.longest_outage <= LONGEST_OUTAGE, "clients saw too long an outage: {summary}");
}

/// Stops the etcd member listed first in the apiservers' `--etcd-servers`, the one the
/// etcd 3.4 client of Kubernetes 1.20 is known to pin its TLS server name to: every
/// apiserver must keep answering reads that go to etcd, directly and through the virtual
/// IP, and a write must succeed. Prints how many reads failed.
///
/// Turn it red: stop a second member first (`cargo lab ssh master2 -- systemctl stop etcd`):
/// once the test stops the first one, etcd has no quorum and the write fails.
#[test]
fn the_api_keeps_answering_when_the_first_etcd_member_stops() {
    // Two of three members keep a quorum; one of two would not.
    if !lab().applies("an etcd member failover", Role::Etcd, 3) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let masters = lab.nodes_with(Role::Master);
    let servers = flag(&lab.command_line(&masters[0].name, kube_apiserver::UNIT), "etcd-servers")
        .expect("kube-apiserver runs with --etcd-servers");
    let first_url = servers.split(',').next().unwrap_or_default().to_string();
    let member = lab
        .nodes_with(Role::Etcd)
        .into_iter()
        .find(|node| first_url == format!("https://{}:{}", node.address, etcd::CLIENT_PORT))
        .unwrap_or_else(|| panic!("the first --etcd-servers entry {first_url} is no etcd node of the topology"));

    // A namespaced read without resourceVersion is served from etcd, not from a cache.
    let read = "/api/v1/namespaces/kube-system";
    let mut streams: Vec<(String, RequestStream)> = masters
        .iter()
        .map(|master| {
            let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
            (format!("{} directly", master.name), RequestStream::start(client, directly(master.address, read)))
        })
        .collect();
    let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
    streams.push(("the virtual IP".to_string(), RequestStream::start(client, through_vip(read))));
    std::thread::sleep(Duration::from_millis(300));

    let health = format!("https://{}:{}/health", member.address, etcd::CLIENT_PORT);
    let mut stopped = StoppedUnit::stop(&member.name, etcd::UNIT, move || {
        let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), REQUEST_TIMEOUT);
        match lab.block_on(client.get(&health)) {
            Ok(reply) if reply.status == 200 && reply.body.contains(r#""health":"true""#) => Ok(()),
            Ok(reply) => Err(reply.body),
            Err(error) => Err(error.to_string()),
        }
    });
    std::thread::sleep(LONGEST_OUTAGE);
    let client = lab.kube();
    lab.block_on(async {
        let namespace = TestNamespace::create(&client, "etcd-failover").await;
        namespace.delete().await;
    });
    let summaries: Vec<(String, Summary)> = streams.into_iter().map(|(name, stream)| (name, stream.finish())).collect();
    let restored_in = stopped.restore().unwrap_or_else(|error| panic!("{error}"));

    println!("etcd stopped on {} (first in --etcd-servers, {first_url}):", member.name);
    for (name, summary) in &summaries {
        println!("  reads through {name}: {summary}");
    }
    println!(
        "  a namespace was created and deleted meanwhile; etcd on {} healthy {restored_in:.1?} after its start",
        member.name
    );
    for (name, summary) in &summaries {
        assert!(summary.answering_at_the_end, "reads through {name} failed at the end: {summary}");
        assert!(summary.longest_outage <= LONGEST_OUTAGE, "reads through {name} saw too long an outage: {summary}");
    }
}

/// How long etcd stays without quorum in the quorum drill: longer than three election
/// timeouts (3 x 2.5 s), after which etcd cancels every watch with "no leader", the event
/// that Kubernetes 1.20's apiserver is known to recover from badly (kubernetes#97294).
const QUORUM_LOSS: Duration = Duration::from_secs(10);
/// How long writes may take to work again once the members are back.
const WRITES_RESUME: Duration = Duration::from_secs(30);
/// How long a new Service may take to get its Endpoints once writes work again. The
/// controller manager cannot renew its lease while etcd has no quorum; past its renew
/// deadline (10 s) it exits, systemd starts it again 5 s later, and it waits for the old
/// lease to expire (15 s) before its controllers start and sync: about 30 s in all, as in
/// any cluster. A watch that never recovers keeps the Endpoints away for good.
const ENDPOINTS_DEADLINE: Duration = Duration::from_secs(40);

/// Stops two of the three etcd members for 10 s: writes through the API must fail (etcd
/// has no quorum), work again within 30 s of the members' start, and the cluster's watches
/// must have recovered: a Service created afterwards gets its Endpoints (the controller
/// manager's informers, fed by the apiservers' watch caches, which etcd's "no leader"
/// ended) within 40 s. Prints how long writes took to resume and the Endpoints to appear.
///
/// Turn it red: stop all three members (`cargo lab ssh masterN -- systemctl stop etcd` on
/// the one the test leaves running, while it runs), so that writes never resume.
#[test]
fn writes_and_watches_recover_after_etcd_loses_its_quorum() {
    if !lab().applies("an etcd quorum loss", Role::Etcd, 3) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let client = lab.kube();
    // A ready pod to put a Service in front of, made while the lab is whole.
    let (namespace, pod_ip) = lab.block_on(async {
        let namespace = TestNamespace::create(&client, "quorum-loss").await;
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &web_deployment(1, false))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let pods = ready_pods(&client, namespace.name(), WEB_LABEL, 1, Duration::from_secs(60)).await;
        let pod_ip = pods[0].status.as_ref().and_then(|status| status.pod_ip.clone()).expect("a ready pod has an IP");
        (namespace, pod_ip)
    });
    let members = lab.nodes_with(Role::Etcd);
    let etcd_health = |member: &provisioner::topology::Node| {
        let health = format!("https://{}:{}/health", member.address, etcd::CLIENT_PORT);
        move || {
            let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), REQUEST_TIMEOUT);
            match lab.block_on(client.get(&health)) {
                Ok(reply) if reply.status == 200 && reply.body.contains(r#""health":"true""#) => Ok(()),
                Ok(reply) => Err(reply.body),
                Err(error) => Err(error.to_string()),
            }
        }
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace.name());
    let write = |name: &str| {
        let configmap: ConfigMap =
            serde_json::from_value(json!({ "metadata": { "name": name } })).expect("a valid ConfigMap");
        // The timer needs the runtime's reactor: made inside the future, not before it.
        lab.block_on(async {
            let params = PostParams::default();
            tokio::time::timeout(lab.patience(Duration::from_secs(15)), configmaps.create(&params, &configmap)).await
        })
    };

    let mut stopped: Vec<StoppedUnit> =
        members[1..].iter().map(|member| StoppedUnit::stop(&member.name, etcd::UNIT, etcd_health(member))).collect();
    let lost_at = Instant::now();
    let during = write("during-the-loss");
    assert!(
        !matches!(during, Ok(Ok(_))),
        "a write succeeded while two of three etcd members were stopped: etcd kept no quorum rule"
    );
    std::thread::sleep(lab.patience(QUORUM_LOSS).saturating_sub(lost_at.elapsed()));
    for unit in &mut stopped {
        lab.sh(&unit.node, &format!("systemctl start --no-block {}", unit.unit));
    }
    let started = Instant::now();
    let mut attempt = 0;
    let resumed_after = loop {
        attempt += 1;
        if matches!(write(&format!("after-the-loss-{attempt}")), Ok(Ok(_))) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < lab.patience(WRITES_RESUME),
            "writes did not resume within {WRITES_RESUME:?} of the etcd members' start"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for mut unit in stopped {
        unit.restore().unwrap_or_else(|error| panic!("{error}"));
    }

    let endpoints_after = lab.block_on(web_service_endpoints(&client, namespace.name(), &pod_ip, ENDPOINTS_DEADLINE));
    lab.block_on(namespace.delete());
    println!(
        "etcd without quorum for {:.1?}: writes failed meanwhile and resumed {resumed_after:.1?} after the members' start; \
         a new Service had its Endpoints {endpoints_after:.1?} after its creation",
        lab.patience(QUORUM_LOSS)
    );
}
