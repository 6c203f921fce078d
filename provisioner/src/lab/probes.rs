//! What `lab status` asks a running lab: the API's `/healthz` through the virtual IP
//! from the host, and one command per running node over SSH (the same sessions
//! `lab up` uses) that prints the node's stage records, its addresses on a load
//! balancer and its etcd member's view of the leader. The nodes are asked all at
//! once, and every answer is waited for at most `PROBE_TIMEOUT` (scaled like every
//! lab timeout): a node that does not answer in time makes its findings `Unknown`,
//! it never holds the status up. Nothing is written anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::status::{ApiHealth, NodeStatus, Probed, Probes};
use super::Lab;
use crate::executor::{APPLIED_DIR, PENDING_DIR};
use crate::host::{shell_quote, Host};
use crate::machines::MachineState;
use crate::paths::{self, pki_files};
use crate::pki;
use crate::plan::{self, Stage, StagePlan};
use crate::ssh::KeyPair;
use crate::stages::etcd::CLIENT_PORT;
use crate::topology::Role;

/// How long the probes may take together on machines at the host's speed: the API's
/// answer, and each node's connection and answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Marks the status query so fakes can answer it.
pub const STATUS_QUERY: &str = "# lab: status\n";

/// What one node answered.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NodeView {
    /// The stages recorded as applied on the node.
    applied: BTreeSet<Stage>,
    /// The stages whose run on the node stopped half way.
    pending: BTreeSet<Stage>,
    /// The node's IPv4 addresses (load balancers only).
    addresses: Vec<Ipv4Addr>,
    /// The etcd member's view (etcd members only).
    etcd: Option<Result<EtcdView, String>>,
}

/// One etcd member's own ID and the ID of the leader it follows (0: none known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EtcdView {
    member: u64,
    leader: u64,
}

/// Each node's answer, or why there is none, by node name.
type Views = BTreeMap<String, Result<NodeView, String>>;

impl Lab {
    /// Asks the lab's running nodes and its API what they are doing now (see the
    /// module's documentation). `nodes` are the machines' states just read.
    pub(super) fn probe(&self, nodes: &[NodeStatus], time_scale: u32) -> Probes {
        let budget = PROBE_TIMEOUT * time_scale.max(1);
        let deadline = Instant::now() + budget;
        let network = &self.topology.network;
        let bridge = plan::bridge_name(&self.topology.name);
        let running = |node: &NodeStatus| node.state == MachineState::Running;

        // Nothing is sent to a lab address unless the kernel sends it to the lab bridge.
        let mut addresses = vec![network.vip];
        addresses.extend(nodes.iter().filter(|node| running(node)).map(|node| node.address));
        if let Err(reason) = self.surroundings.verify_routes(&bridge, &addresses) {
            return Probes::unknown(&reason);
        }
        let key = existing_key_pair(&self.state.ssh_private_key());
        let url = format!("{}/healthz", self.api_url());
        let pki_dir = self.state.pki_dir();

        let (api, views) = std::thread::scope(|scope| {
            let api = scope.spawn(|| self.surroundings.api_health(&url, &pki_dir, budget));
            let asked: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let key = &key;
                    scope.spawn(move || {
                        if !running(node) {
                            return Err(format!("{} is {}", node.name, node.state));
                        }
                        let key = key.as_ref().map_err(Clone::clone)?;
                        let script = node_script(&node.roles, time_scale);
                        self.ask(&node.name, node.address, key, script, deadline).map(|stdout| parse_node_view(&stdout))
                    })
                })
                .collect();
            let views: Views = nodes
                .iter()
                .zip(asked)
                .map(|(node, handle)| {
                    let view = handle.join().unwrap_or_else(|_| Err("the probe panicked".to_string()));
                    (node.name.clone(), view)
                })
                .collect();
            let api = api.join().unwrap_or_else(|_| Err("the probe panicked".to_string()));
            (api, views)
        });

        let with_role =
            |role: Role| -> Vec<String> { self.topology.nodes_with(role).map(|node| node.name.clone()).collect() };
        Probes {
            api: api.map_or_else(Probed::Unknown, Probed::Known),
            vip_holders: vip_holders(network.vip, &with_role(Role::Lb), &views),
            etcd_leader: etcd_leader(&with_role(Role::Etcd), &views),
            converged_stage: match self.plan_shape() {
                Ok(stages) => converged_stage(&stages, &views),
                Err(reason) => Probed::Unknown(reason),
            },
        }
    }

    /// The API's URL through the virtual IP.
    pub(super) fn api_url(&self) -> String {
        format!("https://{}:{}", self.topology.network.vip, self.topology.network.api_port)
    }

    /// Runs `script` on the node and returns what it printed, or why it did not
    /// answer by `deadline`. The command runs on a thread of its own that is left
    /// behind if the node never answers: a session cannot be interrupted, and the
    /// status must not wait for it.
    fn ask(
        &self,
        node: &str,
        address: Ipv4Addr,
        key: &KeyPair,
        script: String,
        deadline: Instant,
    ) -> Result<String, String> {
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let host: Box<dyn Host> =
            self.surroundings.connect(node, address, key, remaining()).map_err(|error| error.to_string())?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(host.run(&script));
        });
        match receiver.recv_timeout(remaining()) {
            Ok(Ok(output)) => Ok(output.stdout),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("{node} did not answer in time")),
        }
    }

    /// The lab's stages and the nodes each one touches, from a plan made with
    /// throw-away certificates: which node a stage touches does not depend on them,
    /// and the lab's own PKI is neither read nor written (loading it may renew
    /// certificates, and the status changes nothing).
    fn plan_shape(&self) -> Result<Vec<StagePlan>, String> {
        let bundle =
            pki::issue_in_memory(&pki::specs(&self.topology)).map_err(|error| format!("cannot plan: {error}"))?;
        let plan = plan::build(&plan::PlanInputs {
            topology: &self.topology,
            pki: &bundle,
            artifacts: &self.artifacts(),
            state_dir: self.paths.state_dir.clone(),
        });
        Ok(plan.stages)
    }
}

/// `GET url` with the lab CA and the admin's certificate from `pki_dir` (the API's
/// `/healthz`), all of it within `timeout`. Kubernetes answers `ok`, or lists the
/// checks that failed (`[-]etcd failed: reason withheld`).
pub(super) fn healthz(url: &str, pki_dir: &Path, timeout: Duration) -> Result<ApiHealth, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let store = pki::Store { dir: pki_dir.to_path_buf() };
    let read = |path: &Path| std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()));
    let unreadable = |path: &Path, error: ureq::Error| format!("{} is not PEM: {error}", path.display());
    let (ca, cert, key) =
        (store.cert_path("ca"), store.cert_path(pki::names::ADMIN), store.key_path(pki::names::ADMIN));
    let ca_pem = Certificate::from_pem(&read(&ca)?).map_err(|error| unreadable(&ca, error))?;
    let cert_pem = Certificate::from_pem(&read(&cert)?).map_err(|error| unreadable(&cert, error))?;
    let key_pem = PrivateKey::from_pem(&read(&key)?).map_err(|error| unreadable(&key, error))?;
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&[ca_pem]))
        .client_cert(Some(ClientCert::new_with_certs(&[cert_pem], key_pem)))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|error| match error {
        ureq::Error::Timeout(_) => format!("GET {url}: no answer within {:.1} s", timeout.as_secs_f64()),
        error => format!("GET {url}: {error}"),
    })?;
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
    Ok(health_of(status, &body))
}

/// What an answer to `/healthz` says.
fn health_of(status: u16, body: &str) -> ApiHealth {
    if status == 200 && body.trim() == "ok" {
        return ApiHealth { healthy: true, answer: "ok".to_string() };
    }
    let failed: Vec<&str> = body.lines().map(str::trim).filter(|line| line.starts_with("[-]")).collect();
    let said = if failed.is_empty() { crate::text::one_line_tail(body.lines(), 2) } else { failed.join(", ") };
    ApiHealth { healthy: false, answer: format!("HTTP {status}: {}", said.trim()) }
}

impl Probes {
    /// Every probe unknown for one reason.
    fn unknown(reason: &str) -> Probes {
        let unknown = || reason.to_string();
        Probes {
            api: Probed::Unknown(unknown()),
            vip_holders: Probed::Unknown(unknown()),
            etcd_leader: Probed::Unknown(unknown()),
            converged_stage: Probed::Unknown(unknown()),
        }
    }
}

/// The lab's key pair as `lab up` left it, read without making or changing it.
pub(super) fn existing_key_pair(private: &Path) -> Result<KeyPair, String> {
    let public = private.with_extension("pub");
    let public_line = std::fs::read_to_string(&public)
        .map_err(|error| format!("no SSH key: cannot read {}: {error}", public.display()))?
        .trim()
        .to_string();
    if !private.exists() {
        return Err(format!("no SSH key at {}", private.display()));
    }
    Ok(KeyPair { private: private.to_path_buf(), public, public_line })
}

/// The one command a node answers: its stage records and marks, its addresses if it
/// is a load balancer, its etcd member's status if it runs one. Each part prints a
/// `== PART` line first. etcdctl, which waits for a member that hangs, gets half the
/// probe's time, so that the rest of the node's answer still arrives in time.
pub(super) fn node_script(roles: &[Role], time_scale: u32) -> String {
    let mut script = String::from(STATUS_QUERY);
    script.push_str(&format!(
        "echo '== applied'; ls -1 {APPLIED_DIR} 2>/dev/null; echo '== pending'; ls -1 {PENDING_DIR} 2>/dev/null; "
    ));
    if roles.contains(&Role::Lb) {
        script.push_str("echo '== addresses'; ip -4 -o address show; ");
    }
    if roles.contains(&Role::Etcd) {
        let seconds = (PROBE_TIMEOUT.as_secs() * u64::from(time_scale.max(1)) / 2).max(1);
        let pki = |file: &str| shell_quote(&paths::etcd_pki(file));
        script.push_str(&format!(
            "echo '== etcd'; ETCDCTL_API=3 timeout {seconds} {etcdctl} --endpoints=https://127.0.0.1:{CLIENT_PORT} \
             --cacert={ca} --cert={cert} --key={key} --dial-timeout={seconds}s --command-timeout={seconds}s \
             endpoint status --write-out=json 2>&1 || echo \"exited with status $?\"; ",
            etcdctl = paths::ETCDCTL_BIN,
            ca = pki(pki_files::CA_CERT),
            cert = pki(pki_files::ETCD_SERVER_CERT),
            key = pki(pki_files::ETCD_SERVER_KEY),
        ));
    }
    script.push_str("true");
    script
}

/// Reads a node's answer to `node_script`.
pub(super) fn parse_node_view(stdout: &str) -> NodeView {
    let mut view = NodeView::default();
    let mut part = "";
    let mut etcd_lines: Vec<&str> = Vec::new();
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            part = name;
            continue;
        }
        match part {
            // Other names in the directories (a record being written) are not stages.
            "applied" => view.applied.extend(Stage::from_name(line.trim())),
            "pending" => view.pending.extend(Stage::from_name(line.trim())),
            "addresses" => view.addresses.extend(inet_address(line)),
            "etcd" => etcd_lines.push(line),
            _ => {}
        }
    }
    if stdout.lines().any(|line| line == "== etcd") {
        view.etcd = Some(parse_etcd_status(&etcd_lines));
    }
    view
}

/// The address of one line of `ip -4 -o address show`:
/// `2: host0    inet 10.240.0.11/24 brd 10.240.0.255 scope global host0\ ...`.
fn inet_address(line: &str) -> Option<Ipv4Addr> {
    let mut words = line.split_whitespace();
    words.find(|word| *word == "inet")?;
    let (address, _prefix) = words.next()?.split_once('/')?;
    address.parse().ok()
}

/// One member's view from `etcdctl endpoint status --write-out=json`: a JSON list
/// with one endpoint whose `Status` carries `header.member_id` and `leader`. Without
/// it, etcdctl's messages (not its JSON log lines) are the reason it could not tell.
fn parse_etcd_status(lines: &[&str]) -> Result<EtcdView, String> {
    let json = lines.iter().find(|line| line.trim_start().starts_with('['));
    let Some(json) = json else {
        let messages = lines.iter().map(|line| line.trim()).filter(|line| !line.is_empty() && !line.starts_with('{'));
        let reason = crate::text::one_line_tail(messages, 2);
        return Err(format!("etcdctl: {}", if reason.is_empty() { "no answer" } else { &reason }));
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("etcdctl printed something unexpected: {error}"))?;
    let status = &value[0]["Status"];
    let id = |value: &serde_json::Value| value.as_u64().or_else(|| value.as_str()?.parse().ok());
    match (id(&status["header"]["member_id"]), id(&status["leader"])) {
        (Some(member), Some(leader)) => Ok(EtcdView { member, leader }),
        _ => Err("etcdctl's status names no member ID and leader".to_string()),
    }
}

/// The load balancers that hold `vip`. Known when a holder answered or every load
/// balancer did; otherwise the ones that did not answer might hold it.
pub(super) fn vip_holders(vip: Ipv4Addr, balancers: &[String], views: &Views) -> Probed<Vec<String>> {
    let mut holders = Vec::new();
    let mut silent = Vec::new();
    for name in balancers {
        match views.get(name) {
            Some(Ok(view)) if view.addresses.contains(&vip) => holders.push(name.clone()),
            Some(Ok(_)) => {}
            Some(Err(reason)) => silent.push(reason.clone()),
            None => silent.push(format!("{name} was not asked")),
        }
    }
    if holders.is_empty() && !silent.is_empty() {
        return Probed::Unknown(format!("no load balancer that answered holds it; {}", silent.join("; ")));
    }
    Probed::Known(holders)
}

/// The member the answering members follow: the one whose own ID is the leader ID
/// they name. `None` when every member that answered knows no leader.
pub(super) fn etcd_leader(members: &[String], views: &Views) -> Probed<Option<String>> {
    let mut answers: Vec<(&str, EtcdView)> = Vec::new();
    let mut silent = Vec::new();
    for name in members {
        match views.get(name) {
            Some(Ok(NodeView { etcd: Some(Ok(view)), .. })) => answers.push((name, *view)),
            Some(Ok(NodeView { etcd: Some(Err(reason)), .. })) => silent.push(format!("{name}: {reason}")),
            Some(Ok(NodeView { etcd: None, .. })) => silent.push(format!("{name} printed no etcd status")),
            Some(Err(reason)) => silent.push(reason.clone()),
            None => silent.push(format!("{name} was not asked")),
        }
    }
    if answers.is_empty() {
        return Probed::Unknown(if silent.is_empty() {
            "the lab has no etcd member".into()
        } else {
            silent.join("; ")
        });
    }
    let named: BTreeSet<u64> = answers.iter().map(|(_, view)| view.leader).filter(|leader| *leader != 0).collect();
    let leader = match named.len() {
        0 => return Probed::Known(None),
        1 => *named.first().expect("one leader"),
        _ => {
            let views: Vec<String> =
                answers.iter().map(|(name, view)| format!("{name} follows {:x}", view.leader)).collect();
            return Probed::Unknown(format!("the members name different leaders ({})", views.join(", ")));
        }
    };
    match answers.iter().find(|(_, view)| view.member == leader) {
        Some((name, _)) => Probed::Known(Some(name.to_string())),
        None => Probed::Unknown(format!("the members follow {leader:x}, which did not answer; {}", silent.join("; "))),
    }
}

/// The last stage of `stages` (handbook order) up to which every node each stage
/// touches holds its record and no pending mark. A stage that touches no node
/// neither ends nor extends the run.
pub(super) fn converged_stage(stages: &[StagePlan], views: &Views) -> Probed<Option<Stage>> {
    let mut last: Option<Stage> = None;
    for stage in stages {
        for actions in &stage.nodes {
            let view = match views.get(&actions.node) {
                Some(Ok(view)) => view,
                Some(Err(reason)) => {
                    return Probed::Unknown(match last {
                        Some(stage) => format!("converged through {} at least; {reason}", stage.name()),
                        None => reason.clone(),
                    })
                }
                None => return Probed::Unknown(format!("{} was not asked", actions.node)),
            };
            if !view.applied.contains(&stage.stage) || view.pending.contains(&stage.stage) {
                return Probed::Known(last);
            }
        }
        if !stage.nodes.is_empty() {
            last = Some(stage.stage);
        }
    }
    Probed::Known(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Output, RecordingHost};
    use crate::plan::NodeActions;

    fn ok(stdout: &str) -> Output {
        Output { status: 0, stdout: stdout.to_string(), stderr: String::new() }
    }

    /// A node's whole answer, as the recording fake of a host gives it back.
    fn answer(roles: &[Role], stdout: &str) -> NodeView {
        let host = RecordingHost::new("master1");
        host.reply(STATUS_QUERY, ok(stdout));
        let output = host.run(&node_script(roles, 1)).expect("the fake answers");
        parse_node_view(&output.stdout)
    }

    const MASTER_ANSWER: &str = "== applied\nhosts\npki\netcd\netcd.tmp\n== pending\n== addresses\n\
        1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
        2: host0    inet 10.240.0.11/24 brd 10.240.0.255 scope global host0\\       valid_lft forever\n\
        2: host0    inet 10.240.0.100/32 scope global host0\\       valid_lft forever preferred_lft forever\n\
        == etcd\n[{\"Endpoint\":\"https://127.0.0.1:2379\",\"Status\":{\"header\":{\"cluster_id\":\
        14841639068965178418,\"member_id\":10276657743932975437,\"revision\":9,\"raft_term\":2},\
        \"version\":\"3.4.23\",\"dbSize\":20480,\"leader\":10276657743932975437,\"raftIndex\":12,\
        \"raftTerm\":2}}]\n";

    #[test]
    fn a_node_answer_gives_its_records_addresses_and_etcd_view() {
        let view = answer(&[Role::Etcd, Role::Master, Role::Lb], MASTER_ANSWER);
        assert_eq!(view.applied, BTreeSet::from([Stage::Hosts, Stage::Pki, Stage::Etcd]), "etcd.tmp is no stage");
        assert!(view.pending.is_empty());
        assert_eq!(
            view.addresses,
            ["127.0.0.1", "10.240.0.11", "10.240.0.100"].map(|address| address.parse::<Ipv4Addr>().unwrap())
        );
        let leader = 10276657743932975437;
        assert_eq!(view.etcd, Some(Ok(EtcdView { member: leader, leader })));
    }

    #[test]
    fn the_script_asks_only_what_the_node_runs_and_bounds_etcdctl() {
        let worker = node_script(&[Role::Worker], 1);
        assert!(worker.starts_with(STATUS_QUERY));
        assert!(!worker.contains("ip -4") && !worker.contains("etcdctl"), "{worker}");
        let member = node_script(&[Role::Etcd], 3);
        assert!(member.contains(&format!("timeout 3 {}", paths::ETCDCTL_BIN)), "{member}");
        assert!(member.contains("--command-timeout=3s"), "{member}");
        assert!(member.contains("--key=/etc/etcd/pki/server-key.pem"), "{member}");
    }

    #[test]
    fn an_etcd_member_that_cannot_answer_says_why() {
        let view = answer(
            &[Role::Etcd],
            "== applied\n== pending\n== etcd\n{\"level\":\"warn\",\"msg\":\"retrying\"}\n\
             Failed to get the status of endpoint https://127.0.0.1:2379 (context deadline exceeded)\n\
             exited with status 1\n",
        );
        let reason = "etcdctl: Failed to get the status of endpoint https://127.0.0.1:2379 (context deadline \
                      exceeded) | exited with status 1";
        assert_eq!(view.etcd, Some(Err(reason.to_string())));
    }

    #[test]
    fn an_unhealthy_api_names_the_checks_that_failed() {
        assert_eq!(health_of(200, "ok"), ApiHealth { healthy: true, answer: "ok".into() });
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start ok\n\
                    healthz check failed\n";
        assert_eq!(
            health_of(500, body),
            ApiHealth { healthy: false, answer: "HTTP 500: [-]etcd failed: reason withheld".into() }
        );
        assert_eq!(health_of(403, "forbidden\n").answer, "HTTP 403: forbidden");
    }

    fn views(entries: Vec<(&str, Result<NodeView, String>)>) -> Views {
        entries.into_iter().map(|(name, view)| (name.to_string(), view)).collect()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(ToString::to_string).collect()
    }

    fn member(member: u64, leader: u64) -> Result<NodeView, String> {
        Ok(NodeView { etcd: Some(Ok(EtcdView { member, leader })), ..NodeView::default() })
    }

    #[test]
    fn the_leader_is_the_member_whose_id_the_others_follow() {
        let members = names(&["master1", "master2", "master3"]);
        let found = views(vec![("master1", member(1, 2)), ("master2", member(2, 2)), ("master3", member(3, 2))]);
        assert_eq!(etcd_leader(&members, &found), Probed::Known(Some("master2".into())));

        let leaderless = views(vec![
            ("master1", member(1, 0)),
            ("master2", Err("master2 is stopped".into())),
            ("master3", Err("master3 is stopped".into())),
        ]);
        assert_eq!(etcd_leader(&members, &leaderless), Probed::Known(None), "a member without quorum");

        let split = views(vec![("master1", member(1, 1)), ("master2", member(2, 2)), ("master3", member(3, 2))]);
        assert!(matches!(etcd_leader(&members, &split), Probed::Unknown(reason) if reason.contains("different")));

        let leader_silent =
            views(vec![("master1", member(1, 3)), ("master2", member(2, 3)), ("master3", Err("timed out".into()))]);
        assert_eq!(
            etcd_leader(&members, &leader_silent),
            Probed::Unknown("the members follow 3, which did not answer; timed out".into())
        );
    }

    fn with_addresses(addresses: &[&str]) -> Result<NodeView, String> {
        Ok(NodeView { addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(), ..NodeView::default() })
    }

    #[test]
    fn the_vip_holder_is_the_balancer_with_the_address() {
        let vip: Ipv4Addr = "10.240.0.100".parse().unwrap();
        let balancers = names(&["master1", "master2"]);
        let one = views(vec![
            ("master1", with_addresses(&["10.240.0.11"])),
            ("master2", with_addresses(&["10.240.0.12", "10.240.0.100"])),
        ]);
        assert_eq!(vip_holders(vip, &balancers, &one), Probed::Known(vec!["master2".into()]));

        let none = views(vec![("master1", with_addresses(&["10.240.0.11"])), ("master2", with_addresses(&[]))]);
        assert_eq!(vip_holders(vip, &balancers, &none), Probed::Known(vec![]));

        let silent =
            views(vec![("master1", with_addresses(&["10.240.0.11"])), ("master2", Err("master2 timed out".into()))]);
        assert_eq!(
            vip_holders(vip, &balancers, &silent),
            Probed::Unknown("no load balancer that answered holds it; master2 timed out".into())
        );
    }

    fn stage(stage: Stage, nodes: &[&str]) -> StagePlan {
        let mut plan = StagePlan::new(stage, "");
        plan.nodes =
            nodes.iter().map(|node| NodeActions { node: node.to_string(), ..NodeActions::default() }).collect();
        plan
    }

    fn records(applied: &[Stage], pending: &[Stage]) -> Result<NodeView, String> {
        Ok(NodeView {
            applied: applied.iter().copied().collect(),
            pending: pending.iter().copied().collect(),
            ..NodeView::default()
        })
    }

    #[test]
    fn converged_is_the_last_stage_every_node_of_every_stage_before_recorded() {
        let stages = [
            stage(Stage::Hosts, &["master1", "worker1"]),
            stage(Stage::Etcd, &["master1"]),
            stage(Stage::AdminKubeconfig, &[]),
            stage(Stage::Kubelet, &["worker1"]),
        ];
        let all = views(vec![
            ("master1", records(&[Stage::Hosts, Stage::Etcd], &[])),
            ("worker1", records(&[Stage::Hosts, Stage::Kubelet], &[])),
        ]);
        assert_eq!(converged_stage(&stages, &all), Probed::Known(Some(Stage::Kubelet)));

        let etcd_half_done = views(vec![
            ("master1", records(&[Stage::Hosts, Stage::Etcd], &[Stage::Etcd])),
            ("worker1", records(&[Stage::Hosts, Stage::Kubelet], &[])),
        ]);
        assert_eq!(converged_stage(&stages, &etcd_half_done), Probed::Known(Some(Stage::Hosts)));

        let worker_behind = views(vec![
            ("master1", records(&[Stage::Hosts, Stage::Etcd], &[])),
            ("worker1", records(&[Stage::Hosts], &[])),
        ]);
        assert_eq!(
            converged_stage(&stages, &worker_behind),
            Probed::Known(Some(Stage::Etcd)),
            "a stage without nodes is not the last converged one"
        );

        let fresh = views(vec![("master1", records(&[], &[])), ("worker1", records(&[], &[]))]);
        assert_eq!(converged_stage(&stages, &fresh), Probed::Known(None));

        let silent = views(vec![("master1", records(&[Stage::Hosts], &[])), ("worker1", Err("timed out".into()))]);
        assert_eq!(converged_stage(&stages, &silent), Probed::Unknown("timed out".into()));
        let later = [stage(Stage::Hosts, &["master1"]), stage(Stage::Kubelet, &["worker1"])];
        assert_eq!(
            converged_stage(&later, &silent),
            Probed::Unknown("converged through hosts at least; timed out".into())
        );
    }
}
