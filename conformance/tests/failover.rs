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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conformance::{
    eventually, flag, lab, pod_is_ready, pod_may_run, ready_pods, web_deployment, web_service_endpoints, Drill,
    HttpsClient, Identity, Lookup, RecordType, ServiceKind, TestNamespace, Transport, WebService, WEB_LABEL,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Node as KubeNode, Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use provisioner::paths::NODE_INTERFACE;
use provisioner::pki::names;
use provisioner::stages::{
    dns_addon, etcd, keepalived, kube_apiserver, kube_controller_manager, kube_proxy, kube_scheduler, load_balancer,
};
use provisioner::topology::{Node, Role};
use serde_json::json;

/// One failover at a time, also under `cargo test`, which runs a binary's tests in threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How often the request stream asks, and how long one request may take.
const REQUEST_INTERVAL: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a request stream runs: a test that fails before it finishes its stream
/// leaves no requests running for long.
const STREAM_LIMIT: Duration = Duration::from_secs(120);
/// How many answers in a row show that a stream is answered again: 2 s of requests.
const STEADY_ANSWERS: usize = 20;
/// How many answers in a row show that the API answers before a drill starts.
const ANSWERS_BEFORE: usize = 3;
/// How often a wait looks again at what it waits for.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a stopped unit, started again, may take to be healthy.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long HAProxy may take to mark a stopped apiserver DOWN: two failed checks 2 s
/// apart (`check inter 2s fall 2` in the load balancer stage), and a check's own time.
const HAPROXY_TAKES_OUT: Duration = Duration::from_secs(6);
/// How long HAProxy may take to bring an apiserver back that answers again: two good
/// checks 2 s apart (`rise 2`), after up to 2 s to the next check.
const HAPROXY_BRINGS_BACK: Duration = Duration::from_secs(10);

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
        let stopped = StoppedUnit::stop_without_waiting(node, unit, ready);
        lab().sh(node, &format!("systemctl stop {unit}"));
        stopped
    }

    /// Kills the unit's processes with SIGKILL, as a crash would, and keeps systemd from
    /// starting it again until the drill restores it.
    fn kill(node: &str, unit: &'static str, ready: impl Fn() -> Result<(), String> + 'static) -> StoppedUnit {
        let drill = lab().drill(&format!("{unit} killed on {node}"));
        let killed =
            StoppedUnit { node: node.to_string(), unit, ready: Box::new(ready), restored: false, _drill: drill };
        lab().sh(node, &format!("systemctl kill --signal=SIGKILL {unit} && systemctl stop {unit}"));
        killed
    }

    /// Asks systemd to stop the unit and returns at once, while the unit may still be
    /// stopping (`wait_until_stopped` waits for the rest).
    fn stop_without_waiting(
        node: &str,
        unit: &'static str,
        ready: impl Fn() -> Result<(), String> + 'static,
    ) -> StoppedUnit {
        let drill = lab().drill(&format!("{unit} stopped on {node}"));
        let stopped =
            StoppedUnit { node: node.to_string(), unit, ready: Box::new(ready), restored: false, _drill: drill };
        lab().sh(node, &format!("systemctl stop --no-block {unit}"));
        stopped
    }

    /// Waits, at most `timeout`, until the unit is no longer active or stopping.
    fn wait_until_stopped(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let state = lab().sh(&self.node, &format!("systemctl is-active {} || true", self.unit));
            if matches!(state.trim(), "inactive" | "failed") {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{} on {} still {} {timeout:?} after `systemctl stop`",
                self.unit,
                self.node,
                state.trim()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts the unit and waits until it is ready; returns how long that took.
    fn restore(&mut self) -> Result<Duration, String> {
        self.restored = true;
        let timeout = lab().patience(RESTORE_TIMEOUT);
        let started = Instant::now();
        lab().sh(&self.node, &format!("systemctl start {}", self.unit));
        loop {
            match (self.ready)() {
                Ok(()) => return Ok(started.elapsed()),
                Err(error) if started.elapsed() > timeout => {
                    return Err(format!(
                        "{} on {} not ready {timeout:?} after its start: {error}",
                        self.unit, self.node
                    ))
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
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

/// One request of a stream, sent when the stream calls for it: whether it succeeded.
type Request = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// When a stream sends its next request.
#[derive(Clone, Copy)]
enum Pacing {
    /// 100 ms after the last one was sent, once it has been answered or has failed.
    OneAtATime,
    /// 100 ms after the last one was sent, whatever became of it.
    FixedRate,
}

/// One request of a stream: when it was sent, relative to the stream's start, and whether
/// it was answered with 200.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    ok: bool,
}

/// GETs `url` every 100 ms, each on a new connection, until told to stop, dropped, or
/// `STREAM_LIMIT` (stretched by the lab's patience) has passed.
struct RequestStream {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl RequestStream {
    fn start(client: HttpsClient<'static>, url: String) -> RequestStream {
        let client = Arc::new(client);
        RequestStream::start_requests(move |_| {
            let (client, url) = (Arc::clone(&client), url.clone());
            Box::pin(async move { matches!(client.get(&url).await, Ok(reply) if reply.status == 200) })
        })
    }

    /// Sends `request(n)` for n = 0, 1, 2, ... every 100 ms (one at a time: a request that
    /// takes longer delays the next); each says whether it succeeded. Sample n of the
    /// stream is request n.
    fn start_requests(request: impl Fn(usize) -> Request + Send + 'static) -> RequestStream {
        RequestStream::run(request, Pacing::OneAtATime)
    }

    /// `start_requests`, but request n goes out n × 100 ms after the start whether or not
    /// the ones before it were answered, as from clients at a fixed rate: a request that
    /// waits out its timeout holds none back, so every sample stands for as much time.
    fn start_at_fixed_rate(request: impl Fn(usize) -> Request + Send + 'static) -> RequestStream {
        RequestStream::run(request, Pacing::FixedRate)
    }

    fn run(request: impl Fn(usize) -> Request + Send + 'static, pacing: Pacing) -> RequestStream {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let limit = lab().patience(STREAM_LIMIT);
        let task = lab().spawn({
            let stop = Arc::clone(&stop);
            let samples = Arc::clone(&samples);
            async move {
                let mut in_flight = Vec::new();
                let mut index: u32 = 0;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    let (samples, answered) = (Arc::clone(&samples), request(index as usize));
                    let at = started.elapsed();
                    let record = async move {
                        let ok = answered.await;
                        lock(&samples).push(Sample { at, ok });
                    };
                    index += 1;
                    match pacing {
                        Pacing::OneAtATime => {
                            record.await;
                            tokio::time::sleep_until((started + at + REQUEST_INTERVAL).into()).await;
                        }
                        Pacing::FixedRate => {
                            in_flight.push(tokio::spawn(record));
                            tokio::time::sleep_until((started + REQUEST_INTERVAL * index).into()).await;
                        }
                    }
                }
                for request in in_flight {
                    let _ = request.await;
                }
            }
        });
        RequestStream { stop, samples, task: Some(task), started }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the requests sent `since` (on the stream's clock) or later end in
    /// `count` answers in a row, or until `within` has passed; says whether they did.
    fn wait_for_answers(&self, since: Duration, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let answered = {
                // In the order they were sent: a fixed-rate stream's answers come in
                // whenever each request ends.
                let mut recent: Vec<Sample> =
                    lock(&self.samples).iter().filter(|sample| sample.at >= since).copied().collect();
                recent.sort_by_key(|sample| sample.at);
                recent.len() >= count && recent[recent.len() - count..].iter().all(|sample| sample.ok)
            };
            if answered {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(REQUEST_INTERVAL);
        }
    }

    fn finish(self) -> Summary {
        Summary::of(&self.finish_with_samples())
    }

    /// Stops the stream and returns every sample, in the order the requests were sent.
    fn finish_with_samples(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            lab().block_on(task).expect("the request stream ran to its end");
        }
        let mut samples = lock(&self.samples).clone();
        samples.sort_by_key(|sample| sample.at);
        samples
    }
}

impl Drop for RequestStream {
    /// A test that fails before `finish` stops its requests here.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The samples, also after a test thread panicked while it held them.
fn lock(samples: &Mutex<Vec<Sample>>) -> std::sync::MutexGuard<'_, Vec<Sample>> {
    samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// How long after a move of the virtual IP every client connection through it may still
/// go to the former holder: a silent connection is pinged after
/// `keepalived::CLIENT_READ_IDLE_SECS`, dropped when the ping is not answered within
/// `keepalived::CLIENT_PING_TIMEOUT_SECS`, and the client then connects again; plus 5 s
/// for a busy node.
const CLIENTS_FOLLOW: Duration =
    Duration::from_secs(keepalived::CLIENT_READ_IDLE_SECS + keepalived::CLIENT_PING_TIMEOUT_SECS + 5);

/// The open connections of the nodes to the virtual IP's API port that the load balancer
/// holding the virtual IP does not have: connections left with a former holder, which
/// can no longer answer them, so that a watch through one hears nothing. Each is
/// `NODE PROCESS ADDRESS:PORT`.
fn connections_left_behind() -> Result<Vec<String>, String> {
    let lab = lab();
    let holder = match vip_holders().as_slice() {
        [holder] => holder.clone(),
        holders => return Err(format!("load balancers holding the virtual IP: {holders:?}")),
    };
    let (vip, port) = (lab.status.vip, lab.topology.network.api_port);
    // With a state filter, ss leaves the State column out: Recv-Q, Send-Q, local
    // address, peer, process.
    let accepted = lab.try_stdout(&holder, &format!("ss -tnH state established src {vip}:{port}"))?;
    let accepted: Vec<&str> = accepted.lines().filter_map(|line| line.split_whitespace().nth(3)).collect();
    let mut left_behind = Vec::new();
    for node in &lab.topology.nodes {
        let opened = lab.try_stdout(&node.name, &format!("ss -tnpH state established dst {vip}:{port}"))?;
        for line in opened.lines() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(process)) = (columns.get(2), columns.get(4)) else { continue };
            if !accepted.contains(local) {
                let process = process.split('"').nth(1).unwrap_or(process);
                left_behind.push(format!("{} {process} {local}", node.name));
            }
        }
    }
    Ok(left_behind)
}

/// Waits until every client connection to the virtual IP reaches its holder (see
/// [`connections_left_behind`]), and returns how long after `since` that was; panics
/// `CLIENTS_FOLLOW` (stretched by the lab's patience) after `since`, naming the
/// connections left.
fn clients_follow_the_vip(when: &str, since: Instant) -> Duration {
    let lab = lab();
    let deadline = since + lab.patience(CLIENTS_FOLLOW);
    loop {
        let last = match connections_left_behind() {
            Ok(left) if left.is_empty() => return since.elapsed(),
            Ok(left) => format!("connections through a former holder: {}", left.join(", ")),
            Err(error) => error,
        };
        assert!(
            Instant::now() < deadline,
            "{when}: the clients of the virtual IP did not follow it within {:?}: {last} \
             (`cargo lab ssh NODE -- ss -tnp dst {}`)",
            lab.patience(CLIENTS_FOLLOW),
            lab.status.vip
        );
        std::thread::sleep(POLL_INTERVAL);
    }
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
/// address over, and the API through the virtual IP must come back within 5 s and keep
/// answering. Every node's connections to the virtual IP must then reach the new holder
/// within 15 s: the kubelets and kube-proxy drop a connection left with the former holder
/// when it stops answering their pings. Prints how long the move took, how many of the
/// requests sent through the virtual IP every 100 ms failed, and when the nodes followed.
///
/// Turn it red: `cargo lab break keepalived-standbys-stopped` (keepalived stopped on every
/// load balancer but the holder, so that nobody can take over), or
/// `cargo lab break vip-clients-never-ping` (one worker's watches stay with the former
/// holder).
#[test]
fn keepalived_moves_the_virtual_ip_when_its_holder_stops() {
    the_virtual_ip_moves_when_a_unit_stops_on_its_holder(
        "keepalived_moves_the_virtual_ip_when_its_holder_stops",
        keepalived::UNIT,
    );
}

/// Stops HAProxy on the load balancer holding the virtual IP, leaving keepalived running:
/// keepalived's check of HAProxy must give the address up, another load balancer must take
/// it over, the API through the virtual IP must come back within 5 s, and every node's
/// connections must follow within 15 s (they do at once: HAProxy's exit closes them).
/// Prints the same figures as the keepalived drill.
///
/// Turn it red: `cargo lab break keepalived-standbys-stopped` (nobody can take over).
#[test]
fn keepalived_moves_the_virtual_ip_when_haproxy_stops_on_its_holder() {
    the_virtual_ip_moves_when_a_unit_stops_on_its_holder(
        "keepalived_moves_the_virtual_ip_when_haproxy_stops_on_its_holder",
        load_balancer::UNIT,
    );
}

/// The virtual IP drills: stops `unit` on the load balancer holding the virtual IP while
/// requests go through it every 100 ms, waits until another one holds it, and checks the
/// outage clients saw against the drill's bound.
fn the_virtual_ip_moves_when_a_unit_stops_on_its_holder(test_name: &str, unit: &'static str) {
    if !lab().applies("a virtual IP failover", Role::Lb, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let (drill, longest_outage) = lab.drill_of(test_name);
    let holders = vip_holders();
    assert_eq!(holders.len(), 1, "exactly one load balancer must hold the virtual IP before the test: {holders:?}");
    let holder = holders[0].clone();
    let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
    let stream = RequestStream::start(client, through_vip("/healthz"));
    assert!(
        stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, longest_outage),
        "the API did not answer through the virtual IP before the drill"
    );

    let stopped_at = stream.elapsed();
    let mut stopped = StoppedUnit::stop(&holder, unit, {
        let holder = holder.clone();
        move || match lab.try_sh(&holder, &format!("systemctl is-active {unit}")) {
            Ok(output) if output.status == 0 => Ok(()),
            Ok(output) => Err(output.stdout.trim().to_string()),
            Err(error) => Err(error.to_string()),
        }
    });
    let deadline = Instant::now() + longest_outage * 2;
    let new_holder = loop {
        let holders = vip_holders();
        if let [single] = holders.as_slice() {
            if *single != holder {
                break single.clone();
            }
        }
        assert!(Instant::now() < deadline, "no other load balancer took the virtual IP over: holders {holders:?}");
        std::thread::sleep(REQUEST_INTERVAL);
    };
    let moved_at = stream.elapsed();
    let moved = Instant::now();
    let moved_after = moved_at - stopped_at;
    // The stream shows whether clients got through again; the assertions below say how.
    stream.wait_for_answers(moved_at, STEADY_ANSWERS, longest_outage + REQUEST_INTERVAL * STEADY_ANSWERS as u32);
    let summary = stream.finish();
    // A watch through the former holder hears nothing, whatever the stream says.
    let followed_after = clients_follow_the_vip("after the move", moved);
    let restored_in = stopped.restore().unwrap_or_else(|error| panic!("{error}"));

    let detail = format!(
        "{unit} stopped on {holder}: {new_holder} held the virtual IP {moved_after:.1?} later; through the virtual \
         IP {summary}; every node's connection reached {new_holder} {followed_after:.1?} after the move"
    );
    println!("{detail}; {unit} on {holder} active again after {restored_in:.1?}");
    let within = lab.record_drill(drill, summary.longest_outage, &detail);
    assert!(summary.answering_at_the_end, "the API did not answer through the virtual IP after the move: {summary}");
    assert!(within, "clients saw too long an outage (bound {longest_outage:?}): {summary}");
    let holders = vip_holders();
    assert_eq!(holders.len(), 1, "exactly one load balancer must hold the virtual IP afterwards: {holders:?}");
}

/// Stops the apiserver on the master that holds the virtual IP: HAProxy on every load
/// balancer must take it out of its backend (its health check marks it DOWN) within 6 s,
/// and requests through the virtual IP must keep being answered. Prints how many failed
/// and when each HAProxy took the apiserver out.
///
/// HAProxy retries a refused connection on another apiserver (`option redispatch`), so
/// clients see no failure even where its health check never takes the stopped apiserver
/// out; the drill asks HAProxy itself (its statistics) whether it did.
///
/// Turn it red: `cargo lab break haproxy-blind-to-apiservers` (HAProxy without `check`
/// on its apiserver backends: it never marks the stopped one DOWN).
#[test]
fn the_api_keeps_answering_when_one_apiserver_stops() {
    if !lab().applies("an apiserver failover", Role::Master, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let holders = vip_holders();
    let victim = lab.node(holders.first().expect("a load balancer holds the virtual IP"));
    // A DOWN that HAProxy never left cannot be seen again: right after the apiserver
    // restarted (an earlier drill, `lab up`), its health check may not have it back yet.
    if let Err(error) = wait_for_haproxy(&victim.name, "UP", lab.patience(HAPROXY_BRINGS_BACK)) {
        panic!("before the drill: {error}");
    }
    let (drill, longest_outage) = lab.drill_of("the_api_keeps_answering_when_one_apiserver_stops");
    let client = lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT);
    let stream = RequestStream::start(client, through_vip("/healthz"));
    assert!(
        stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, longest_outage),
        "the API did not answer through the virtual IP before the drill"
    );

    // `systemctl stop` would return only once the apiserver has drained (about 10 s), but
    // it stops listening at once: HAProxy is watched while the unit stops.
    let victim_ready = {
        let (up, name) = (answers(directly(victim.address, "/healthz")), victim.name.clone());
        move || up().and_then(|()| haproxy_states(&name, "UP"))
    };
    let mut stopped = StoppedUnit::stop_without_waiting(&victim.name, kube_apiserver::UNIT, victim_ready);
    let taken_out = wait_for_haproxy(&victim.name, "DOWN", lab.patience(HAPROXY_TAKES_OUT));
    stopped.wait_until_stopped(lab.patience(RESTORE_TIMEOUT));
    let direct = lab.block_on(
        lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT).get(directly(victim.address, "/healthz")),
    );
    assert!(direct.is_err(), "the apiserver on {} still answers after `systemctl stop`: {direct:?}", victim.name);
    let checked_at = stream.elapsed();
    stream.wait_for_answers(checked_at, STEADY_ANSWERS, longest_outage + REQUEST_INTERVAL * STEADY_ANSWERS as u32);
    let summary = stream.finish();
    let restored_in = stopped.restore().unwrap_or_else(|error| panic!("{error}"));

    let taken_out = taken_out.unwrap_or_else(|error| panic!("{error}"));
    let taken_out: Vec<String> = taken_out.iter().map(|(node, after)| format!("{node} {after:.1?}")).collect();
    println!(
        "kube-apiserver stopped on {}: HAProxy marked it DOWN after (by load balancer) {}; through the virtual IP \
         {summary}; it answered again, and every HAProxy had it UP, {restored_in:.1?} after its start",
        victim.name,
        taken_out.join(", ")
    );
    let within = lab.record_drill(
        drill,
        summary.longest_outage,
        &format!("HAProxy took it out after {}; through the virtual IP {summary}", taken_out.join(", ")),
    );
    assert!(summary.answering_at_the_end, "the API stopped answering through the virtual IP: {summary}");
    assert!(within, "clients saw too long an outage (bound {longest_outage:?}): {summary}");
}

/// Watches HAProxy's statistics on every load balancer (every `POLL_INTERVAL`) until
/// each shows `server` in the apiserver backend as `state`, for at most `within`.
/// Returns how long each load balancer took; or says which did not get there and what
/// they show instead.
fn wait_for_haproxy(server: &str, state: &str, within: Duration) -> Result<Vec<(String, Duration)>, String> {
    let lab = lab();
    let started = Instant::now();
    let mut reached: Vec<(String, Duration)> = Vec::new();
    loop {
        let mut elsewhere = Vec::new();
        for node in lab.nodes_with(Role::Lb) {
            if reached.iter().any(|(name, _)| *name == node.name) {
                continue;
            }
            match haproxy_status(&node.name, server) {
                Ok(status) if status == state => reached.push((node.name.clone(), started.elapsed())),
                Ok(status) => elsewhere.push(format!("{}: {status}", node.name)),
                Err(error) => elsewhere.push(format!("{}: {error}", node.name)),
            }
        }
        let late: Vec<String> = reached
            .iter()
            .filter(|(_, after)| *after > within)
            .map(|(node, after)| format!("{node}: after {after:.1?}"))
            .collect();
        if elsewhere.is_empty() && late.is_empty() {
            return Ok(reached);
        }
        elsewhere.extend(late);
        if started.elapsed() >= within {
            return Err(format!(
                "HAProxy's health check did not have {}/{server} {state} within {within:?} on {} (`cargo lab ssh \
                 NODE -- curl -s '{}'`)",
                load_balancer::BACKEND,
                elsewhere.join(", "),
                load_balancer::STATS_CSV_URL
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Ok if HAProxy on every load balancer shows `server` as `state` now.
fn haproxy_states(server: &str, state: &str) -> Result<(), String> {
    let elsewhere: Vec<String> = lab()
        .nodes_with(Role::Lb)
        .into_iter()
        .filter_map(|node| match haproxy_status(&node.name, server) {
            Ok(status) if status == state => None,
            Ok(status) => Some(format!("{}: {status}", node.name)),
            Err(error) => Some(format!("{}: {error}", node.name)),
        })
        .collect();
    if elsewhere.is_empty() {
        Ok(())
    } else {
        Err(format!("HAProxy's health check does not have {server} {state} on {}", elsewhere.join(", ")))
    }
}

/// The status HAProxy's health check gives `server` of the apiserver backend on `node`
/// (`UP`, `DOWN`, `no check`, ...), from its statistics as CSV.
fn haproxy_status(node: &str, server: &str) -> Result<String, String> {
    let script = format!("curl --silent --show-error --fail --max-time 2 '{}'", load_balancer::STATS_CSV_URL);
    let output = lab().try_sh(node, &script).map_err(|error| error.to_string())?;
    if output.status != 0 {
        return Err(format!("its statistics do not answer: {}", output.stderr.trim()));
    }
    let mut lines = output.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|field| *field == name);
    let (Some(proxy), Some(name), Some(status)) = (column("pxname"), column("svname"), column("status")) else {
        return Err(format!("its statistics have no pxname, svname and status columns: {header:?}"));
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .find(|fields| fields.get(proxy) == Some(&load_balancer::BACKEND) && fields.get(name) == Some(&server))
        .and_then(|fields| fields.get(status).map(|status| status.to_string()))
        .ok_or_else(|| format!("{server} is not in its {} backend", load_balancer::BACKEND))
}

/// Waits until `unit`'s journal on every one of `nodes` has a line containing `text`
/// logged at or after `since`, looking until `within` after `since` (and at least once).
/// Returns, for each node, how long after `since` the first such line was logged; or the
/// nodes whose journal has none.
fn wait_for_journal(
    nodes: &[&Node],
    unit: &str,
    text: &str,
    since: SystemTime,
    within: Duration,
) -> Result<Vec<(String, Duration)>, Vec<String>> {
    let lab = lab();
    let since_epoch = since.duration_since(UNIX_EPOCH).expect("after the epoch");
    let script = format!(
        "journalctl --no-pager --output=short-unix --unit {unit} --since @{since} | grep -F '{text}' || true",
        since = since_epoch.as_secs(),
    );
    let deadline = since + within;
    loop {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for node in nodes {
            match first_time_since(&lab.sh(&node.name, &script), since_epoch) {
                Some(after) => found.push((node.name.clone(), after)),
                None => missing.push(node.name.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        if SystemTime::now() >= deadline {
            return Err(missing);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// What the apiservers on `masters` logged about their etcd watches since `since`, and
/// whether journald dropped lines: what a failed quorum drill reports to say why.
fn watch_errors_since(masters: &[String], since: SystemTime) -> String {
    let since = since.duration_since(UNIX_EPOCH).expect("after the epoch").as_secs();
    let script = format!(
        "journalctl --no-pager --output=cat --unit {unit} --since @{since} | grep -o 'watch chan error: .*' \
         | sort | uniq -c | sort -rn | head -3; journalctl --no-pager --output=cat --since @{since} \
         | grep -i 'suppressed' | head -2; true",
        unit = kube_apiserver::UNIT
    );
    masters
        .iter()
        .map(|master| {
            let seen = lab().try_stdout(master, &script).unwrap_or_else(|error| error);
            let seen: Vec<&str> = seen.lines().map(str::trim).collect();
            format!("{master}: {}", if seen.is_empty() { "no watch error".to_string() } else { seen.join(" | ") })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long after `since` (on the epoch's clock) the first of these journal lines
/// (`journalctl --output=short-unix`) logged at or after `since` was logged.
fn first_time_since(lines: &str, since: Duration) -> Option<Duration> {
    lines
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<f64>().ok())
        .map(|at| at - since.as_secs_f64())
        .find(|after| *after >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Stops the etcd member listed first in the apiservers' `--etcd-servers`, the one the
/// etcd 3.4 client of Kubernetes 1.20 is known to pin its TLS server name to: every
/// apiserver must keep answering reads that go to etcd, directly and through the virtual
/// IP, and a write must succeed. Prints how many reads failed.
///
/// Turn it red: `cargo lab break apiserver-etcd-first-member-only` (every apiserver with only
/// the first member in `--etcd-servers`: once that member stops, no read reaches etcd).
#[test]
fn the_api_keeps_answering_when_the_first_etcd_member_stops() {
    // Two of three members keep a quorum; one of two would not.
    if !lab().applies("an etcd member failover", Role::Etcd, 3) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let masters = lab.nodes_with(Role::Master);
    // The drill measures whether the apiservers move to the other members: they must be
    // connected to them first.
    wait_for_apiservers_on_every_etcd_member();
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
    let (drill, longest_outage) = lab.drill_of("the_api_keeps_answering_when_the_first_etcd_member_stops");
    for (name, stream) in &streams {
        assert!(
            stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, longest_outage),
            "reads through {name} were not answered before the drill"
        );
    }

    let mut stopped = StoppedUnit::stop(&member.name, etcd::UNIT, etcd_healthy(member));
    // Every stream must be answered again, steadily, after the stop; the assertions below
    // say how long the outage was if one is not.
    let stopped_at: Vec<Duration> = streams.iter().map(|(_, stream)| stream.elapsed()).collect();
    let deadline = Instant::now() + longest_outage + REQUEST_INTERVAL * STEADY_ANSWERS as u32;
    for ((_, stream), since) in streams.iter().zip(stopped_at) {
        stream.wait_for_answers(since, STEADY_ANSWERS, deadline.saturating_duration_since(Instant::now()));
    }
    let client = lab.kube();
    lab.block_on(async {
        let namespace = TestNamespace::create_without_pods(&client, "etcd-failover").await;
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
    let longest = summaries.iter().map(|(_, summary)| summary.longest_outage).max().unwrap_or_default();
    let detail: Vec<String> = summaries.iter().map(|(name, summary)| format!("through {name}: {summary}")).collect();
    lab.record_drill(drill, longest, &format!("etcd stopped on {}; reads {}", member.name, detail.join("; ")));
    for (name, summary) in &summaries {
        assert!(summary.answering_at_the_end, "reads through {name} failed at the end: {summary}");
        assert!(summary.longest_outage <= longest_outage, "reads through {name} saw too long an outage: {summary}");
    }
}

/// Kills (SIGKILL) the etcd leader while a writer creates a numbered ConfigMap through the
/// virtual IP every 100 ms: the remaining members elect a new leader, and writes must
/// fail for at most two of the lab's election timeouts and a second (6 s; see
/// `provisioner::drills`); afterwards every ConfigMap the API acknowledged (HTTP 201)
/// must exist. Prints the outage and the counts.
///
/// Turn it red: `cargo lab break etcd-member-stopped` first (with one member down, the
/// kill leaves etcd without a quorum, and writes stop until the drill restores the
/// leader).
#[test]
fn writes_resume_and_none_is_lost_when_the_etcd_leader_is_killed() {
    if !lab().applies("an etcd leader failover", Role::Etcd, 3) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let (drill, longest_outage) = lab.drill_of("writes_resume_and_none_is_lost_when_the_etcd_leader_is_killed");
    let client = lab.kube();
    let namespace = lab.block_on(TestNamespace::create_without_pods(&client, "etcd-leader"));
    // Killing the leader while the apiservers are still waiting out gRPC's backoff to
    // reconnect to the other members would measure that backoff, not etcd's failover.
    wait_for_apiservers_on_every_etcd_member();
    let leader = etcd_leader().unwrap_or_else(|error| panic!("{error}"));

    let writer = Arc::new(lab.https(Identity::Certificate(names::ADMIN), REQUEST_TIMEOUT));
    let url = through_vip(&format!("/api/v1/namespaces/{}/configmaps", namespace.name()));
    let stream = RequestStream::start_requests(move |index| {
        let (writer, url) = (Arc::clone(&writer), url.clone());
        Box::pin(async move {
            let body = format!(r#"{{"metadata":{{"name":"write-{index}"}}}}"#);
            matches!(writer.post_json(&url, &body).await, Ok(reply) if reply.status == 201)
        })
    });
    assert!(
        stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, longest_outage),
        "writes through the virtual IP did not succeed before the drill"
    );

    let killed_at = stream.elapsed();
    let mut killed = StoppedUnit::kill(&leader.name, etcd::UNIT, etcd_healthy(leader));
    stream.wait_for_answers(killed_at, STEADY_ANSWERS, longest_outage * 2 + REQUEST_INTERVAL * STEADY_ANSWERS as u32);
    let samples = stream.finish_with_samples();
    let new_leader = etcd_leader();
    let restored_in = killed.restore().unwrap_or_else(|error| panic!("{error}"));

    let acknowledged: Vec<String> =
        samples.iter().enumerate().filter(|(_, sample)| sample.ok).map(|(index, _)| format!("write-{index}")).collect();
    let stored: std::collections::BTreeSet<String> = lab
        .block_on(Api::<ConfigMap>::namespaced(client.clone(), namespace.name()).list(&Default::default()))
        .unwrap_or_else(|error| panic!("cannot list the drill's ConfigMaps: {error}"))
        .items
        .into_iter()
        .filter_map(|configmap| configmap.metadata.name)
        .collect();
    lab.block_on(namespace.delete());
    let lost: Vec<&String> = acknowledged.iter().filter(|name| !stored.contains(*name)).collect();
    let summary = Summary::of(&samples);
    let new_leader = new_leader.map(|node| node.name.clone()).unwrap_or_else(|error| error);
    let detail = format!(
        "etcd killed on its leader {}; new leader {new_leader}; writes through the virtual IP {summary}; {} \
         acknowledged, {} lost",
        leader.name,
        acknowledged.len(),
        lost.len()
    );
    println!("{detail}; etcd on {} healthy again {restored_in:.1?} after its start", leader.name);
    let within = lab.record_drill(drill, summary.longest_outage, &detail);
    assert!(lost.is_empty(), "writes the API acknowledged are gone after the etcd leader was killed: {lost:?}");
    assert!(summary.answering_at_the_end, "writes did not succeed again after the etcd leader was killed: {summary}");
    assert!(within, "writes failed for too long (bound {longest_outage:?}): {summary}");
}

/// The etcd member that is the leader now, asked of every member through etcd's gRPC
/// gateway (`/v3/maintenance/status`: each answers its own ID and the leader's).
fn etcd_leader() -> Result<&'static Node, String> {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), REQUEST_TIMEOUT);
    let mut answers = Vec::new();
    for member in lab.nodes_with(Role::Etcd) {
        let url = format!("https://{}:{}/v3/maintenance/status", member.address, etcd::CLIENT_PORT);
        let Ok(reply) = lab.block_on(client.post_json(&url, "{}")) else { continue };
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&reply.body) else { continue };
        let own = status["header"]["member_id"].as_str().unwrap_or_default().to_string();
        let leader = status["leader"].as_str().unwrap_or_default().to_string();
        if !own.is_empty() && own == leader {
            return Ok(member);
        }
        answers.push(format!("{}: {}", member.name, reply.body.trim()));
    }
    Err(format!("no etcd member says it is the leader: {answers:?}"))
}

/// A readiness check: `member`'s etcd answers /health with `"health":"true"`. The
/// apiservers come back to it a few seconds later (`apiservers_on_every_etcd_member`):
/// the etcd drills wait for that before they start, the others do not need it.
fn etcd_healthy(member: &Node) -> impl Fn() -> Result<(), String> {
    let health = format!("https://{}:{}/health", member.address, etcd::CLIENT_PORT);
    move || {
        let lab = lab();
        let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), REQUEST_TIMEOUT);
        match lab.block_on(client.get(&health)) {
            Ok(reply) if reply.status == 200 && reply.body.contains(r#""health":"true""#) => Ok(()),
            Ok(reply) => Err(reply.body),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// How long the apiservers may take to connect again to etcd members that started again.
/// gRPC retries a lost connection after a backoff that grows with the time it was lost
/// (1 s, then 1.6 times longer each try, up to 2 minutes); after a member's 10 to 20 s
/// stop, the apiservers were back on it 3 to 7 s after its start (2026-12-07).
const APISERVERS_BACK_ON_ETCD: Duration = Duration::from_secs(60);

/// Whether every apiserver holds as many connections to each etcd member as to the
/// others, and some: each member of its `--etcd-servers` that serves now. Each of an
/// apiserver's etcd clients keeps one connection per member (75 each on the default lab). A member that started again is healthy at once, but the
/// apiservers come back to it only after gRPC's reconnect backoff: until then, an etcd
/// drill would measure that backoff (killing the leader leaves the apiservers with no
/// member to talk to) instead of etcd's failover.
fn apiservers_on_every_etcd_member() -> Result<(), String> {
    let lab = lab();
    // Only the members that serve now: a drill run with a member stopped on purpose (a
    // fault) must go on and fail for what it checks, not wait for that member here.
    let serving: Vec<String> = lab
        .nodes_with(Role::Etcd)
        .into_iter()
        .filter(|member| etcd_healthy(member)().is_ok())
        .map(|member| format!("https://{}:{}", member.address, etcd::CLIENT_PORT))
        .collect();
    let mut uneven = Vec::new();
    for master in lab.nodes_with(Role::Master) {
        // The members this apiserver is configured with, as it runs now.
        let servers = flag(&lab.command_line(&master.name, kube_apiserver::UNIT), "etcd-servers").unwrap_or_default();
        let members: Vec<&str> = servers
            .split(',')
            .filter(|url| serving.iter().any(|serving| serving == url))
            .filter_map(|url| url.strip_prefix("https://")?.rsplit_once(':').map(|(address, _)| address))
            .collect();
        let sockets = lab.sh(&master.name, &format!("ss -tnpH state established '( dport = :{} )'", etcd::CLIENT_PORT));
        // With a state filter, `ss` prints: Recv-Q Send-Q Local:Port Peer:Port Process.
        let peers: Vec<&str> = sockets
            .lines()
            .filter(|line| line.contains("\"kube-apiserver\""))
            .filter_map(|line| line.split_whitespace().nth(3)?.rsplit_once(':').map(|(address, _)| address))
            .collect();
        let counts: Vec<usize> =
            members.iter().map(|member| peers.iter().filter(|peer| *peer == member).count()).collect();
        if counts.iter().any(|count| *count == 0 || *count != counts[0]) {
            let each: Vec<String> =
                members.iter().zip(&counts).map(|(member, count)| format!("{count} to {member}")).collect();
            uneven.push(format!("{}'s apiserver: {}", master.name, each.join(", ")));
        }
    }
    if uneven.is_empty() {
        Ok(())
    } else {
        Err(format!("etcd connections {}", uneven.join("; ")))
    }
}

/// Waits until every apiserver is connected to every etcd member, as an etcd drill must
/// find the lab: an earlier drill or fault may have restarted a member moments ago.
fn wait_for_apiservers_on_every_etcd_member() {
    let within = lab().patience(APISERVERS_BACK_ON_ETCD);
    let started = Instant::now();
    let mut first_seen = None;
    while let Err(uneven) = apiservers_on_every_etcd_member() {
        assert!(
            started.elapsed() < within,
            "the apiservers are not back on every etcd member within {within:?}: {uneven}"
        );
        first_seen.get_or_insert(uneven);
        std::thread::sleep(POLL_INTERVAL);
    }
    if let Some(uneven) = first_seen {
        println!("waited {:.1?} for the apiservers to be back on every etcd member ({uneven})", started.elapsed());
    }
}

/// How long the query stream of the DNS drill goes on after the deleted pod went silent.
const DNS_DRILL_AFTER_READY: Duration = Duration::from_secs(3);
/// How long kube-proxy may take to write an endpoints change into its rules (its
/// `iptables-min-sync-period` is 1 s).
const KUBE_PROXY_SYNC: Duration = Duration::from_secs(2);
/// How long the deleted DNS pod's replacement may take to be ready.
const DNS_REPLACEMENT_READY: Duration = Duration::from_secs(60);

/// Deletes one of the cluster DNS pods while the host asks the cluster DNS for the
/// `kubernetes` Service's address 10 times a second: at least 99% of the queries must be
/// answered, from before the deletion until the deleted pod stopped answering and its
/// replacement is ready, and another pod must have been ready all along (the Deployment
/// runs two).
/// kube-proxy takes a deleted pod out of the Service as soon as it is deleted, and the
/// pod keeps answering for 5 s after its SIGTERM (lab-dns's lame duck) for a node that is
/// slower. Prints the counts.
///
/// Turn it red: `cargo lab break dns-one-replica` (the cluster DNS then hangs on one pod).
#[test]
fn cluster_dns_keeps_answering_when_one_of_its_pods_is_deleted() {
    if !lab().applies("a cluster DNS pod failover", Role::Worker, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let drill = provisioner::drills::by_test("cluster_dns_keeps_answering_when_one_of_its_pods_is_deleted")
        .expect("the DNS drill is in provisioner::drills");
    // A kubelet or kube-proxy still talking to a former holder of the virtual IP (a VIP
    // drill just ran) would learn of the deletion late, which is not what this measures.
    clients_follow_the_vip("before the drill", Instant::now());
    let _window = lab.drill("a cluster DNS pod deleted");
    let resolver = Arc::new(lab.resolver(Transport::Udp));
    let name = format!("kubernetes.default.svc.{}.", lab.status.cluster_domain);
    let asked = name.clone();
    let expected = vec![lab.kubernetes_service_ip().to_string()];
    let stream = RequestStream::start_requests(move |_| {
        let (resolver, name, expected) = (Arc::clone(&resolver), name.clone(), expected.clone());
        Box::pin(async move { resolver.lookup(&name, RecordType::A).await == Lookup::Answers(expected) })
    });
    assert!(
        stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, lab.patience(Duration::from_secs(5))),
        "the cluster DNS did not answer before the drill"
    );

    let client = lab.kube();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let selector = format!("k8s-app={}", dns_addon::NAME);
    // Pods of an earlier drill may still be terminating, or have stopped with their
    // worker's machine: they are not counted.
    let before: Vec<Pod> = lab
        .block_on(pods.list(&ListParams::default().labels(&selector)))
        .unwrap_or_else(|error| panic!("cannot list the cluster DNS pods: {error}"))
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && pod_may_run(pod))
        .collect();
    // One pod alone makes the cluster DNS depend on it; the drill does not delete it.
    assert!(
        before.len() >= 2,
        "the cluster DNS runs {} pod(s): deleting one would leave it to a lame duck and a pod still starting; \
         the Deployment asks for {}",
        before.len(),
        dns_addon::REPLICAS
    );
    // Every pod must serve before one is deleted: ready, and in the Service's endpoints,
    // which kube-proxy sends queries to. A pod that a restore or an earlier drill has
    // just started is Ready a moment before kube-proxy knows it; deleting the other
    // then leaves the Service with no endpoint for that moment, which is no failover.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "kube-system");
    lab.block_on(eventually("every cluster DNS pod in the Service's endpoints", DNS_REPLACEMENT_READY, || async {
        let mut pod_ips = Vec::new();
        for name in before.iter().filter_map(|pod| pod.metadata.name.as_deref()) {
            let pod = pods.get(name).await.map_err(|error| error.to_string())?;
            pod_ips.extend(pod.status.and_then(|status| status.pod_ip));
        }
        let listed = endpoints.get(dns_addon::NAME).await.map_err(|error| error.to_string())?;
        let ready: Vec<String> = listed
            .subsets
            .unwrap_or_default()
            .into_iter()
            .flat_map(|subset| subset.addresses.unwrap_or_default())
            .map(|address| address.ip)
            .collect();
        if pod_ips.len() == before.len() && pod_ips.iter().all(|ip| ready.contains(ip)) {
            Ok(())
        } else {
            Err(format!("endpoints {ready:?}, pods {pod_ips:?}"))
        }
    }));
    std::thread::sleep(KUBE_PROXY_SYNC);
    let victim = before.first().and_then(|pod| pod.metadata.name.clone()).expect("a cluster DNS pod runs");
    let victim_ip: std::net::Ipv4Addr = before[0]
        .status
        .as_ref()
        .and_then(|status| status.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("the cluster DNS pod {victim} has no IPv4 address"));
    let deleted_at = Instant::now();
    lab.block_on(pods.delete(&victim, &DeleteParams::default()))
        .unwrap_or_else(|error| panic!("cannot delete the cluster DNS pod {victim}: {error}"));
    // The deleted pod stays Ready while it terminates: wait for as many ready pods as
    // before that are not going away.
    let wanted = before.len();
    let replaced = lab.block_on(eventually(
        &format!("{wanted} ready cluster DNS pods besides the deleted {victim}"),
        DNS_REPLACEMENT_READY,
        || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(|error| error.to_string())?;
            let staying: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|pod| pod.metadata.deletion_timestamp.is_none() && pod_is_ready(pod))
                .collect();
            if staying.len() == wanted {
                Ok(staying)
            } else {
                Err(format!("{} ready", staying.len()))
            }
        },
    ));
    let replaced_after = deleted_at.elapsed();
    // The stream goes on until the deleted pod has stopped answering (its lame duck over,
    // its process gone), and a little longer: the moment it stops is when a node still
    // sending it queries fails. Its own address says when, whatever the API shows yet:
    // the kubelet's report that the pod is gone can lag behind by a minute when its
    // connection to the API is being replaced (seen 2026-12-06), which is no DNS outage.
    let direct = lab.pod_resolver(victim_ip, Duration::from_secs(1));
    lab.block_on(eventually(
        &format!("the deleted {victim} stopped answering at {victim_ip}"),
        DNS_REPLACEMENT_READY,
        || async {
            match direct.lookup(&asked, RecordType::A).await {
                Lookup::Answers(_) => Err("still answering".to_string()),
                _ => Ok(()),
            }
        },
    ));
    let gone_after = deleted_at.elapsed();
    std::thread::sleep(DNS_DRILL_AFTER_READY);
    let samples = stream.finish_with_samples();

    let answered = samples.iter().filter(|sample| sample.ok).count();
    let percent = 100.0 * answered as f64 / samples.len().max(1) as f64;
    let replacements: Vec<String> = replaced
        .iter()
        .filter_map(|pod| pod.metadata.name.clone())
        .filter(|pod| before.iter().all(|old| old.metadata.name.as_ref() != Some(pod)))
        .collect();
    let detail = format!(
        "deleted {victim}; {replacements:?} ready {replaced_after:.1?} later, {victim} silent after {gone_after:.1?}; \
         {answered} of {} queries answered ({percent:.1}%)",
        samples.len()
    );
    println!("{detail}");
    let within = lab.record_drill_value(drill, percent, &detail);
    assert!(within, "the cluster DNS answered too few queries while one of its pods was replaced: {detail}");
}

/// How long a lease may be without a leader before the leader drill starts: a restarted
/// leader waits out its old lease (15 s) and tries every 2 s.
const LEASE_HELD: Duration = Duration::from_secs(30);

/// How long past its bound the leader drill keeps watching the leases.
const LEADER_OVER_BOUND: Duration = Duration::from_secs(5);

/// The components that elect a leader through a Lease in kube-system, with their units.
const LEADER_ELECTED: [(&str, &str); 2] =
    [("kube-controller-manager", kube_controller_manager::UNIT), ("kube-scheduler", kube_scheduler::UNIT)];

/// Kills (SIGKILL) the kube-controller-manager and the kube-scheduler that hold their
/// leases: another master must hold each lease within 20 s (the lease lasts 15 s, and a
/// standby tries every 2 s). Prints who took over and when.
///
/// Turn it red: `cargo lab break controller-manager-stopped --node NODE` and
/// `cargo lab break scheduler-stopped --node NODE` on every other master first (no
/// standby is left to take over).
#[test]
fn another_master_leads_when_the_controller_manager_and_scheduler_leaders_are_killed() {
    if !lab().applies("a leader failover", Role::Master, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let (drill, bound) =
        lab.drill_of("another_master_leads_when_the_controller_manager_and_scheduler_leaders_are_killed");
    // A leader that restarted (after the quorum drill, or this drill run before) waits
    // for its old lease to expire before it leads again.
    let holders: Vec<String> = LEADER_ELECTED
        .iter()
        .map(|(lease, _)| {
            lab.block_on(eventually(&format!("a master leads {lease} before the drill"), LEASE_HELD, || async {
                lease_holder_now(lease).await
            }))
        })
        .collect();
    let started = Instant::now();
    let mut killed: Vec<StoppedUnit> = LEADER_ELECTED
        .iter()
        .zip(&holders)
        .map(|((_, unit), holder)| {
            let (node, unit) = (holder.clone(), *unit);
            StoppedUnit::kill(holder, unit, move || match lab.try_sh(&node, &format!("systemctl is-active {unit}")) {
                Ok(output) if output.status == 0 => Ok(()),
                Ok(output) => Err(output.stdout.trim().to_string()),
                Err(error) => Err(error.to_string()),
            })
        })
        .collect();
    // Long enough past the bound to tell a slow takeover from none; no longer, since a
    // fault that leaves no standby makes the drill wait it out.
    let deadline = bound + lab.patience(LEADER_OVER_BOUND);
    let mut taken_over: Vec<Option<(String, Duration)>> = vec![None; LEADER_ELECTED.len()];
    while taken_over.iter().any(Option::is_none) && started.elapsed() < deadline {
        for (((lease, _), holder), taken) in LEADER_ELECTED.iter().zip(&holders).zip(taken_over.iter_mut()) {
            if taken.is_none() {
                if let Ok(now) = lease_holder(lease) {
                    if now != *holder {
                        *taken = Some((now, started.elapsed()));
                    }
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    for unit in &mut killed {
        unit.restore().unwrap_or_else(|error| panic!("{error}"));
    }

    let accounts: Vec<String> = LEADER_ELECTED
        .iter()
        .zip(&holders)
        .zip(&taken_over)
        .map(|(((lease, _), holder), taken)| match taken {
            Some((now, after)) => format!("{lease}: {holder} killed, {now} leading {after:.1?} later"),
            None => format!("{lease}: {holder} killed, no other master leading after {deadline:?}"),
        })
        .collect();
    let detail = accounts.join("; ");
    println!("{detail}");
    let slowest = taken_over.iter().map(|taken| taken.as_ref().map_or(deadline, |(_, after)| *after)).max();
    let within = lab.record_drill(drill, slowest.unwrap_or_default(), &detail);
    assert!(within, "another master did not take every lease over within {bound:?}: {detail}");
}

/// The master whose component holds the Lease kube-system/`lease` and renewed it within
/// its duration.
fn lease_holder(lease: &str) -> Result<String, String> {
    lab().block_on(lease_holder_now(lease))
}

/// `lease_holder`, for use inside the lab's runtime.
async fn lease_holder_now(lease: &str) -> Result<String, String> {
    let found = Api::<Lease>::namespaced(lab().kube(), "kube-system")
        .get(lease)
        .await
        .map_err(|error| format!("cannot read the lease kube-system/{lease}: {error}"))?;
    let spec = found.spec.unwrap_or_default();
    // Leader election writes `NODE_UUID` as the holder's identity.
    let holder = spec.holder_identity.unwrap_or_default();
    let node = holder.split('_').next().unwrap_or_default().to_string();
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or_default()) * 1000;
    let renewed_ms = spec.renew_time.map(|time| time.0.as_millisecond()).unwrap_or_default();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64;
    if node.is_empty() || now_ms - renewed_ms > duration_ms {
        return Err(format!(
            "nobody leads kube-system/{lease} (holder {holder:?}, renewed {} ms ago)",
            now_ms - renewed_ms
        ));
    }
    Ok(node)
}

/// What an apiserver logs when etcd ends one of its watches because it has no leader
/// (Kubernetes 1.20 asks etcd for watches that require a leader), the event Kubernetes
/// 1.20's apiserver is known to recover from badly (kubernetes#97294).
const WATCH_ENDED_WITHOUT_LEADER: &str = "watch chan error: etcdserver: no leader";
/// How many of etcd's election timeouts may pass from the quorum loss until every
/// apiserver has had a watch ended with "no leader": the surviving member notices the
/// lost leader after one to two election timeouts, and cancels the watches it serves once
/// it has had no leader at three checks one election timeout apart (up to four).
const ELECTION_TIMEOUTS_UNTIL_NO_LEADER: u32 = 6;
/// What the apiservers' logging and the journal may add to that.
const JOURNAL_DELAY: Duration = Duration::from_secs(5);
/// How long a new Service may take to get its Endpoints once writes work again. The
/// controller manager cannot renew its lease while etcd has no quorum; past its renew
/// deadline (10 s) it exits, systemd starts it again 5 s later, and it waits for the old
/// lease to expire (15 s) before its controllers start and sync: about 30 s in all, as in
/// any cluster. A watch that never recovers keeps the Endpoints away for good.
const ENDPOINTS_DEADLINE: Duration = Duration::from_secs(40);

/// Stops two of the three etcd members until etcd has ended a watch of every apiserver with
/// "no leader" (their journals say so): writes through the API must fail meanwhile (etcd
/// has no quorum), work again within 30 s of the members' start, and the cluster's watches
/// must have recovered: a NodePort Service created afterwards gets its Endpoints (the
/// controller manager's informers, whose watches etcd's "no leader" ended) within 40 s,
/// and then answers on its node port on every node running kube-proxy and by name in the
/// cluster DNS within 75 s each (their own watches; see `PROXY_SYNC_TIMEOUT`). Prints how
/// long the loss lasted, how long writes took to resume, and each of those delays.
///
/// Turn it red: `cargo lab break etcd-data-dir-moved`; or give every controller manager a
/// leader lease that outlasts the Endpoints deadline (`--leader-elect-lease-duration=120s
/// --leader-elect-renew-deadline=5s --leader-elect-retry-period=2s`); or drop
/// `--watch-cache=false` from the apiservers (Kubernetes 1.20's watch cache then leaves
/// the masters' kube-proxy watches silent for 5 to 10 minutes: seen 2026-12-04).
#[test]
fn writes_and_watches_recover_after_etcd_loses_its_quorum() {
    if !lab().applies("an etcd quorum loss", Role::Etcd, 3) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let (drill, writes_resume) = lab.drill_of("writes_and_watches_recover_after_etcd_loses_its_quorum");
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
    // Were the survivor's apiserver connections still in gRPC's backoff, an apiserver
    // could have no watch on it for etcd to end.
    wait_for_apiservers_on_every_etcd_member();
    let members = lab.nodes_with(Role::Etcd);
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
        members[1..].iter().map(|member| StoppedUnit::stop(&member.name, etcd::UNIT, etcd_healthy(member))).collect();
    let lost_at = SystemTime::now();
    let during = write("during-the-loss");
    assert!(
        !matches!(during, Ok(Ok(_))),
        "a write succeeded while two of three etcd members were stopped: etcd kept no quorum rule"
    );
    // The lab's election timeout is already stretched where its machines may be emulated.
    let election_timeout =
        Duration::from_millis(etcd::EtcdTiming::for_topology(&lab.topology).election_timeout_ms.into());
    let no_leader_within = election_timeout * ELECTION_TIMEOUTS_UNTIL_NO_LEADER + lab.patience(JOURNAL_DELAY);
    let masters = lab.nodes_with(Role::Master);
    let watches_ended =
        wait_for_journal(&masters, kube_apiserver::UNIT, WATCH_ENDED_WITHOUT_LEADER, lost_at, no_leader_within);
    let watches_ended = watches_ended.unwrap_or_else(|missing| {
        panic!(
            "the apiservers on {missing:?} logged no `{WATCH_ENDED_WITHOUT_LEADER}` within {no_leader_within:?} of \
             the quorum loss: the drill did not end their watches ({})",
            watch_errors_since(&missing, lost_at)
        )
    });
    let lost_for = lost_at.elapsed().unwrap_or_default();
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
            started.elapsed() < writes_resume,
            "writes did not resume within {writes_resume:?} of the etcd members' start"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for mut unit in stopped {
        unit.restore().unwrap_or_else(|error| panic!("{error}"));
    }
    lab.record_drill(
        drill,
        resumed_after,
        &format!(
            "etcd without quorum for {lost_for:.1?}; writes failed meanwhile and resumed after the members' start"
        ),
    );

    let service = lab.block_on(web_service_endpoints(
        &client,
        namespace.name(),
        &pod_ip,
        ENDPOINTS_DEADLINE,
        ServiceKind::NodePort,
    ));
    // The controller manager is one watcher of Services; kube-proxy on every node and the
    // cluster DNS server are others, each on its own watch that etcd's "no leader" ended.
    let proxies_after = every_proxy_serves(&service);
    let dns_after = cluster_dns_answers(&service, namespace.name());
    lab.block_on(namespace.delete());
    let watches_ended: Vec<String> =
        watches_ended.iter().map(|(master, after)| format!("{master} {after:.1?}")).collect();
    println!(
        "etcd without quorum for {lost_for:.1?} (apiservers' watches ended with \"no leader\" after {}): writes failed \
         meanwhile and resumed {resumed_after:.1?} after the members' start; a new Service had its Endpoints \
         {:.1?} after its creation, answered on its node port on every node running kube-proxy {proxies_after:.1?} \
         and in the cluster DNS {dns_after:.1?} after that",
        watches_ended.join(", "),
        service.endpoints_after
    );
}

/// How long `lab down` may take to stop every machine.
const LAB_DOWN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `lab up` may run after `lab down` before the drill stops it. The drill's
/// bound is tighter; this only keeps an `up` that hangs from holding the drill.
const LAB_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the objects and pods may take to be back once `lab up` has returned.
const BACK_AFTER_UP: Duration = Duration::from_secs(90);

#[test]
#[ignore = "restarts every machine of the lab: `cargo lab drill full-restart` runs it"]
fn every_object_and_pod_is_back_after_a_full_restart() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let (drill, bound) = lab.drill_of("every_object_and_pod_is_back_after_a_full_restart");
    let client = lab.kube();
    // A value nothing else has, so that reading it back proves this Secret survived.
    let token = format!("{:x}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    let configmap: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "kept" }, "data": { "made": "before the restart" }
    }))
    .expect("a valid ConfigMap");
    let secret: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "kept" }, "stringData": { "token": token } }))
            .expect("a valid Secret");
    let namespace = lab.block_on(async {
        let namespace = TestNamespace::create(&client, "full-restart").await;
        let params = PostParams::default();
        Api::<ConfigMap>::namespaced(client.clone(), namespace.name())
            .create(&params, &configmap)
            .await
            .unwrap_or_else(|error| panic!("cannot create the ConfigMap: {error}"));
        Api::<Secret>::namespaced(client.clone(), namespace.name())
            .create(&params, &secret)
            .await
            .unwrap_or_else(|error| panic!("cannot create the Secret: {error}"));
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&params, &web_deployment(2, false))
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        ready_pods(&client, namespace.name(), WEB_LABEL, 2, Duration::from_secs(60)).await;
        namespace
    });

    let window = lab.drill("full restart: lab down, lab up");
    run_lab("down", lab.patience(LAB_DOWN_TIMEOUT)).unwrap_or_else(|error| panic!("{error}"));
    let started = Instant::now();
    run_lab("up", lab.patience(LAB_UP_TIMEOUT)).unwrap_or_else(|error| panic!("{error}"));
    let up_took = started.elapsed();
    drop(window);
    let name = namespace.name().to_string();
    lab.block_on(async {
        // The client's connections died with the machines: each try makes new ones, and
        // only an API that does not answer is waited for. An answer without the object
        // is final: what etcd lost does not come back.
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &name);
        let kept = eventually("the API answers for the ConfigMap made before the restart", BACK_AFTER_UP, || async {
            configmaps.get_opt("kept").await.map_err(|error| error.to_string())
        })
        .await
        .unwrap_or_else(|| panic!("the ConfigMap made before the restart is gone: etcd lost what was written"));
        assert_eq!(kept.data, configmap.data, "the ConfigMap changed across the restart");
        let secrets = Api::<Secret>::namespaced(client.clone(), &name);
        let kept = eventually("the API answers for the Secret made before the restart", BACK_AFTER_UP, || async {
            secrets.get_opt("kept").await.map_err(|error| error.to_string())
        })
        .await
        .unwrap_or_else(|| panic!("the Secret made before the restart is gone: etcd lost what was written"));
        let value = kept.data.as_ref().and_then(|data| data.get("token")).map(|bytes| bytes.0.clone());
        assert_eq!(value, Some(token.into_bytes()), "the Secret's value changed across the restart");
        ready_pods(&client, &name, WEB_LABEL, 2, BACK_AFTER_UP).await;
    });
    let back_after = started.elapsed();
    lab.block_on(namespace.delete());
    let detail = format!(
        "`lab up` took {up_took:.1?}; the ConfigMap and Secret read back unchanged and both pods were ready \
         {back_after:.1?} after its start"
    );
    println!("{detail}");
    let within = lab.record_drill(drill, back_after, &detail);
    assert!(within, "the lab took longer than {bound:?} to be back after a full restart: {detail}");
}

/// Runs `cargo lab VERB` for the lab under test and waits at most `timeout` for it; its
/// output's last lines are the error when it fails.
fn run_lab(verb: &str, timeout: Duration) -> Result<(), String> {
    run_lab_with(&[verb], timeout)
}

/// `run_lab` with arguments after the verb.
fn run_lab_with(args: &[&str], timeout: Duration) -> Result<(), String> {
    let shown = args.join(" ");
    let completed = conformance::run_within(&mut conformance::cargo_lab_for_the_lab(args), timeout)?
        .ok_or_else(|| format!("`cargo lab {shown}` did not finish within {timeout:?}"))?;
    if completed.status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = completed.stderr.lines().rev().take(5).collect();
    Err(format!(
        "`cargo lab {shown}` failed ({}): {}",
        completed.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// How long the controller manager waits for a silent node before it marks it NotReady
/// (`--node-monitor-grace-period`, 40 s in Kubernetes 1.20), and what its endpoints
/// controller and kube-proxy add before the node's pods leave every Service.
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(40);
/// How long the stopped worker's pods may stay in their Services once `lab down --node`
/// has powered its machine off: graceful node shutdown takes them out before the
/// power-off, and this only leaves time for the Endpoints to be read.
const PODS_LEAVE_SERVICES: Duration = Duration::from_secs(10);
/// How long the stopped worker's pods may take to run again elsewhere once it is NotReady.
const PODS_REPLACED: Duration = Duration::from_secs(60);
/// How long the worker may take to be Ready again once `lab up` has returned.
const NODE_BACK: Duration = Duration::from_secs(60);

/// A worker machine the drill stopped; dropping it starts it again (`cargo lab up`),
/// so a failing drill leaves the lab whole.
struct StoppedMachine {
    node: String,
    restarted: bool,
    _window: Drill,
}

impl StoppedMachine {
    fn stop(node: &str) -> StoppedMachine {
        let window = lab().drill(&format!("machine of {node} stopped"));
        run_lab_with(&["down", "--node", node], lab().patience(LAB_DOWN_TIMEOUT))
            .unwrap_or_else(|error| panic!("{error}"));
        StoppedMachine { node: node.to_string(), restarted: false, _window: window }
    }

    /// Starts the machine again, as powering it on would (`cargo lab up --until
    /// machines`: its units start by themselves, and no stage runs that could mend what a
    /// fault in force broke); returns how long that took.
    fn start(&mut self) -> Duration {
        self.restarted = true;
        let started = Instant::now();
        run_lab_with(&["up", "--until", "machines"], lab().patience(LAB_UP_TIMEOUT))
            .unwrap_or_else(|error| panic!("{error}"));
        started.elapsed()
    }
}

impl Drop for StoppedMachine {
    fn drop(&mut self) {
        if !self.restarted {
            if let Err(error) = run_lab_with(&["up", "--until", "machines"], lab().patience(LAB_UP_TIMEOUT)) {
                eprintln!("{error}; `cargo lab up` starts {} again", self.node);
            }
        }
    }
}

/// Whether the Node `name` has its Ready condition True.
async fn node_ready(nodes: &Api<KubeNode>, name: &str) -> Result<bool, String> {
    let node = nodes.get(name).await.map_err(|error| error.to_string())?;
    let conditions = node.status.and_then(|status| status.conditions).unwrap_or_default();
    Ok(conditions.iter().any(|condition| condition.type_ == "Ready" && condition.status == "True"))
}

/// The node a pod runs on.
fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// Powers off the machine of a worker that runs a cluster DNS pod and a pod of a
/// NodePort Service, as its power button would (`lab down --node`), while the host asks
/// the cluster DNS and sends GETs to the Service's node port on every other node running
/// kube-proxy, each 10 times a second whether or not the last one was answered. At least
/// 99% of each must be answered from the stop until the worker is Ready again after its
/// start (`lab up --until machines`). The worker's kubelet holds the power-off back and
/// takes its pods out of their Services before they stop (graceful node shutdown,
/// `stages::kubelet`): the Service must list none of them within 10 s of the power-off,
/// which ends the drill at once when graceful shutdown is off (`cargo lab break
/// kubelet-graceful-shutdown-off`) instead of measuring 40 s of failures. The kubelet
/// then reports the node NotReady; the Service's pods must run on the other workers
/// within 60 s of the NotReady, and the worker must be Ready again within 60 s of its
/// start. Prints each delay, the failures per 10 s and the shares answered.
///
/// A power cut is another matter, which this drill does not measure: nothing then takes
/// the pods out of the Services until the controller manager marks the silent node
/// NotReady, 40 s later, and about half of the requests fail meanwhile.
///
/// Turn it red: `cargo lab break dns-one-replica` (the cluster DNS then runs on the
/// stopped worker alone, and nothing answers until its replacement is ready elsewhere).
#[test]
#[ignore = "stops a worker's machine: `cargo lab drill worker-machine-stopped` runs it"]
fn services_move_off_a_worker_whose_machine_stops() {
    if !lab().applies("a worker failover", Role::Worker, 2) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = lab();
    let drill = provisioner::drills::by_test("services_move_off_a_worker_whose_machine_stops")
        .expect("the worker drill is in provisioner::drills");
    let client = lab.kube();
    let workers = lab.nodes_with(Role::Worker);
    let namespace = lab.block_on(TestNamespace::create(&client, "worker-stopped"));
    // One pod per worker where the scheduler can (preferred, not required, so that the
    // stopped worker's pod can run beside another), and gone from an unreachable node at
    // once rather than after Kubernetes' default 300 s.
    let mut app = serde_json::to_value(web_deployment(workers.len(), false)).expect("a Deployment serializes");
    let (label_key, label_value) = WEB_LABEL.split_once('=').expect("KEY=VALUE");
    app["spec"]["template"]["spec"]["affinity"] = json!({ "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 100, "podAffinityTerm": {
            "labelSelector": { "matchLabels": { label_key: label_value } },
            "topologyKey": "kubernetes.io/hostname",
        }}]
    }});
    // A server that stops at once on SIGTERM (busybox httpd does) fails the requests
    // that kube-proxy on the other nodes sends it until they learn that its pod left the
    // Service, about a second. Services wait that out with a preStop pause, as the
    // cluster DNS does with its lame duck; so does this one.
    app["spec"]["template"]["spec"]["containers"][0]["lifecycle"] =
        json!({ "preStop": { "exec": { "command": ["/bin/busybox", "sleep", "2"] } } });
    app["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(5);
    app["spec"]["template"]["spec"]["tolerations"] = json!([
        { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0 },
        { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0 },
    ]);
    let app: Deployment = serde_json::from_value(app).expect("a valid Deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace.name());
    let (web_pods, service) = lab.block_on(async {
        Api::<Deployment>::namespaced(client.clone(), namespace.name())
            .create(&PostParams::default(), &app)
            .await
            .unwrap_or_else(|error| panic!("cannot create the test app: {error}"));
        let ready = ready_pods(&client, namespace.name(), WEB_LABEL, workers.len(), Duration::from_secs(60)).await;
        let pod_ip = ready[0].status.as_ref().and_then(|status| status.pod_ip.clone()).expect("a ready pod has an IP");
        let service =
            web_service_endpoints(&client, namespace.name(), &pod_ip, Duration::from_secs(30), ServiceKind::NodePort)
                .await;
        (ready, service)
    });
    // The cluster DNS pods where they will stay: one being deleted (an earlier drill's,
    // or a fault's) would make its worker look like a DNS server's.
    let dns: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let selector = format!("k8s-app={}", dns_addon::NAME);
    let dns_pods = lab.block_on(eventually("no cluster DNS pod being deleted", DNS_REPLACEMENT_READY, || async {
        let list = dns.list(&ListParams::default().labels(&selector)).await.map_err(|error| error.to_string())?;
        match list.items.iter().filter(|pod| pod.metadata.deletion_timestamp.is_some()).count() {
            0 => Ok(list.items.into_iter().filter(pod_may_run).collect::<Vec<_>>()),
            deleted => Err(format!("{deleted} being deleted")),
        }
    }));
    let runs_one_of = |pods: &[Pod], worker: &Node| pods.iter().any(|pod| node_of(pod) == Some(worker.name.as_str()));
    let victim = *workers
        .iter()
        .find(|worker| runs_one_of(&web_pods, worker) && runs_one_of(&dns_pods, worker))
        .unwrap_or_else(|| panic!("no worker runs both a cluster DNS pod and a pod of the test app: nothing to drill"));

    // The host's two streams: the cluster DNS, and the node port on every other node
    // running kube-proxy in turn.
    let resolver = Arc::new(lab.resolver(Transport::Udp));
    let name = format!("kubernetes.default.svc.{}.", lab.status.cluster_domain);
    let expected = vec![lab.kubernetes_service_ip().to_string()];
    let queries = RequestStream::start_at_fixed_rate(move |_| {
        let (resolver, name, expected) = (Arc::clone(&resolver), name.clone(), expected.clone());
        Box::pin(async move { resolver.lookup(&name, RecordType::A).await == Lookup::Answers(expected) })
    });
    let node_port = service.node_port.expect("a NodePort Service has a node port");
    let urls: Vec<String> = lab
        .topology
        .nodes
        .iter()
        .filter(|node| kube_proxy::runs_on(node) && node.name != victim.name)
        .map(|node| format!("http://{}:{node_port}/", node.address))
        .collect();
    let http = Arc::new(lab.https(Identity::Anonymous, REQUEST_TIMEOUT));
    let requests = RequestStream::start_at_fixed_rate(move |index| {
        let (http, url) = (Arc::clone(&http), urls[index % urls.len()].clone());
        Box::pin(async move { matches!(http.get(&url).await, Ok(reply) if reply.status == 200) })
    });
    for (what, stream) in [("the cluster DNS", &queries), ("the node port", &requests)] {
        assert!(
            stream.wait_for_answers(Duration::ZERO, ANSWERS_BEFORE, lab.patience(Duration::from_secs(5))),
            "{what} did not answer before the drill"
        );
    }

    let stopped_at = Instant::now();
    let (queries_since, requests_since) = (queries.elapsed(), requests.elapsed());
    let mut machine = StoppedMachine::stop(&victim.name);
    // Graceful node shutdown stopped the worker's pods, and so took them out of their
    // Services, before the machine powered off; without it they stay listed until the
    // node is NotReady, 40 s later, and part of the requests go to them meanwhile.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace.name());
    let left_service_after = lab.block_on(eventually(
        &format!("the test app's Service without {}'s pod once its machine is off", victim.name),
        PODS_LEAVE_SERVICES,
        || async {
            let listed = endpoints.get(&service.name).await.map_err(|error| error.to_string())?;
            let on_victim = listed
                .subsets
                .iter()
                .flatten()
                .flat_map(|subset| subset.addresses.iter().flatten())
                .filter(|address| address.node_name.as_deref() == Some(victim.name.as_str()))
                .count();
            match on_victim {
                0 => Ok(stopped_at.elapsed()),
                listed => Err(format!(
                    "{listed} ready address(es) on {} still listed: did its kubelet stop its pods before the \
                     power-off (graceful node shutdown)?",
                    victim.name
                )),
            }
        },
    ));
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let not_ready_after = lab.block_on(eventually(
        &format!("{} NotReady after its machine stopped", victim.name),
        NODE_MONITOR_GRACE + PODS_REPLACED,
        || async {
            match node_ready(&nodes, &victim.name).await? {
                true => Err("still Ready".to_string()),
                false => Ok(stopped_at.elapsed()),
            }
        },
    ));
    let replaced_after = lab.block_on(eventually(
        &format!("{} ready pods of the test app on workers other than {}", workers.len(), victim.name),
        PODS_REPLACED,
        || async {
            let list = pods.list(&ListParams::default().labels(WEB_LABEL)).await.map_err(|error| error.to_string())?;
            let elsewhere = list
                .items
                .iter()
                .filter(|pod| pod.metadata.deletion_timestamp.is_none() && pod_is_ready(pod))
                .filter(|pod| node_of(pod) != Some(victim.name.as_str()))
                .count();
            if elsewhere == workers.len() {
                Ok(stopped_at.elapsed())
            } else {
                Err(format!("{elsewhere} ready elsewhere"))
            }
        },
    ));
    let up_took = machine.start();
    let up_returned = Instant::now();
    lab.block_on(eventually(&format!("{} Ready again", victim.name), NODE_BACK, || async {
        match node_ready(&nodes, &victim.name).await? {
            true => Ok(()),
            false => Err("not Ready".to_string()),
        }
    }));
    let ready_after_up = up_returned.elapsed();
    // Answered again for good, or the stream's end is where its failures stop counting.
    for stream in [&queries, &requests] {
        stream.wait_for_answers(stream.elapsed(), STEADY_ANSWERS, lab.patience(NODE_BACK));
    }
    let query_samples = queries.finish_with_samples();
    let request_samples = requests.finish_with_samples();
    lab.block_on(namespace.delete());

    // From the stop to the end of the drill, the worker Ready again.
    let answered_share = |samples: &[Sample], since: Duration| {
        let window: Vec<&Sample> = samples.iter().filter(|sample| sample.at >= since).collect();
        100.0 * window.iter().filter(|sample| sample.ok).count() as f64 / window.len().max(1) as f64
    };
    let failing_until = |samples: &[Sample], since: Duration| {
        let failed = samples.iter().filter(|sample| sample.at >= since && !sample.ok);
        failed.map(|sample| sample.at - since).max().unwrap_or_default()
    };
    // Failures in each 10 s after the stop: when the cluster stopped sending to the
    // stopped worker, and whether anything failed after its NotReady.
    let per_ten_seconds = |samples: &[Sample], since: Duration| {
        let mut counts = Vec::new();
        for sample in samples.iter().filter(|sample| sample.at >= since && !sample.ok) {
            let bucket = ((sample.at - since).as_secs() / 10) as usize;
            counts.resize(counts.len().max(bucket + 1), 0);
            counts[bucket] += 1;
        }
        counts
    };
    println!(
        "failures per 10 s after the stop: cluster DNS {:?} (last {:.1?}), node port {:?} (last {:.1?})",
        per_ten_seconds(&query_samples, queries_since),
        failing_until(&query_samples, queries_since),
        per_ten_seconds(&request_samples, requests_since),
        failing_until(&request_samples, requests_since),
    );
    let (dns_share, node_port_share) =
        (answered_share(&query_samples, queries_since), answered_share(&request_samples, requests_since));
    let detail = format!(
        "powered {}'s machine off; its pod out of the test app's Service {left_service_after:.1?} after the \
         stop's start, NotReady {not_ready_after:.1?}, the test app's pods ready on the other workers after \
         {replaced_after:.1?}; `lab up --until machines` started it again in {up_took:.1?}, and it was \
         Ready {ready_after_up:.1?} after that; from the stop to then the cluster DNS answered {dns_share:.1}% of {} \
         queries, the node port on the other nodes {node_port_share:.1}% of {} requests",
        victim.name,
        query_samples.iter().filter(|sample| sample.at >= queries_since).count(),
        request_samples.iter().filter(|sample| sample.at >= requests_since).count(),
    );
    println!("{detail}");
    let within = lab.record_drill_value(drill, dns_share.min(node_port_share), &detail);
    assert!(within, "too few queries or requests through the other nodes were answered: {detail}");
    for (what, samples) in [("the cluster DNS", &query_samples), ("the node port", &request_samples)] {
        assert!(
            samples.last().is_some_and(|sample| sample.ok),
            "{what} did not answer at the end of the drill: {detail}"
        );
    }
}

/// How long kube-proxy may take, after a quorum loss, to program a Service whose Endpoints
/// exist. etcd's "no leader" ended its watches, and its lists failed while etcd had no
/// leader; client-go's reflector waits between failed lists with a backoff that doubles
/// up to 30 s, with up to as much again of jitter, so its next list may come up to 60 s
/// after quorum returned (44 s measured, 2026-12-04).
const PROXY_SYNC_TIMEOUT: Duration = Duration::from_secs(75);
/// How long the cluster DNS server may take to answer for a new Service after a quorum
/// loss: its watch requests last 30 s (`lab_dns::watch`) and kube-rs backs off failed
/// ones up to 30 s as well (19 s measured, 2026-12-04).
const DNS_SYNC_TIMEOUT: Duration = Duration::from_secs(75);

/// Waits until `service`'s node port answers 200 on every node that runs kube-proxy, at
/// most `PROXY_SYNC_TIMEOUT` (stretched by the lab's patience) for each; returns how long
/// it took for all.
fn every_proxy_serves(service: &WebService) -> Duration {
    let lab = lab();
    let node_port = service.node_port.expect("a NodePort Service has a node port");
    let started = Instant::now();
    let http = lab.https(Identity::Anonymous, REQUEST_TIMEOUT);
    for node in lab.topology.nodes.iter().filter(|node| kube_proxy::runs_on(node)) {
        let url = format!("http://{}:{node_port}/", node.address);
        lab.block_on(eventually(
            &format!(
                "kube-proxy on {} serves the Service created after the quorum loss (GET {url}; its Service watch \
                 did not recover: `cargo lab logs {} --unit {}`)",
                node.name,
                node.name,
                kube_proxy::UNIT
            ),
            PROXY_SYNC_TIMEOUT,
            || async {
                match http.get(&url).await {
                    Ok(reply) if reply.status == 200 => Ok(()),
                    Ok(reply) => Err(format!("HTTP {}", reply.status)),
                    Err(error) => Err(error.to_string()),
                }
            },
        ));
    }
    started.elapsed()
}

/// Waits until the cluster DNS server answers `service`'s name in `namespace` with its
/// cluster IP, at most `DNS_SYNC_TIMEOUT` (stretched by the lab's patience); returns how
/// long.
fn cluster_dns_answers(service: &WebService, namespace: &str) -> Duration {
    let lab = lab();
    let started = Instant::now();
    let name = format!("{}.{namespace}.svc.{}.", service.name, lab.status.cluster_domain);
    let resolver = lab.resolver(Transport::Udp);
    lab.block_on(eventually(
        &format!(
            "the cluster DNS server answers A {name} with {} (its Service watch did not recover: `kubectl -n \
             kube-system logs deployment/{}`)",
            service.cluster_ip,
            dns_addon::NAME
        ),
        DNS_SYNC_TIMEOUT,
        || async {
            match resolver.lookup(&name, RecordType::A).await {
                Lookup::Answers(records) if records == [service.cluster_ip.clone()] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    ));
    started.elapsed()
}
