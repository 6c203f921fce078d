//! etcd (handbook 000 section 5): a three-member cluster that speaks only mutual TLS.
//!
//! The suite asks each member's client port (2379) directly with the certificate the
//! apiservers use (`apiserver-etcd-client`), through etcd's gRPC gateway (JSON over HTTPS).

use std::time::Duration;

use conformance::{lab, HttpsError, Identity, TlsPolicy};
use futures::future::join_all;
use provisioner::paths::{self, pki_files};
use provisioner::pki::names;
use provisioner::stages::etcd::{CLIENT_PORT, PEER_PORT};
use provisioner::topology::Role;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(3);

fn client_url(address: std::net::Ipv4Addr, path: &str) -> String {
    format!("https://{address}:{CLIENT_PORT}{path}")
}

/// The gRPC gateway prints 64-bit ids as strings; older releases as numbers.
fn id(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Every member answers `/health` with `{"health":"true"}` over mutual TLS.
///
/// Turn it red: `cargo lab break etcd-member-stopped` (etcd stopped on one member).
#[test]
fn every_member_is_healthy_over_mutual_tls() {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let members = lab.nodes_with(Role::Etcd);
    let replies = lab.block_on(join_all(members.iter().map(|node| client.get(client_url(node.address, "/health")))));
    let problems: Vec<String> = members
        .iter()
        .zip(replies)
        .filter_map(|(node, reply)| match reply {
            Ok(reply) if reply.status == 200 && reply.body.contains(r#""health":"true""#) => None,
            Ok(reply) => Some(format!("{}: HTTP {} {}", node.name, reply.status, reply.body.trim())),
            Err(error) => Some(format!("{}: {error}", node.name)),
        })
        .collect();
    assert!(problems.is_empty(), "unhealthy etcd members:\n{}", problems.join("\n"));
}

/// The member list equals the topology's etcd nodes: same names, and each member's peer
/// and client URLs on its node's address.
///
/// Turn it red: `cargo lab break etcd-ghost-member` (a learner member that no node of the
/// topology is).
#[test]
fn member_list_equals_the_topology() {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let first = lab.nodes_with(Role::Etcd)[0];
    let reply = lab
        .block_on(client.post_json(&client_url(first.address, "/v3/cluster/member/list"), "{}"))
        .unwrap_or_else(|error| panic!("member list from {}: {error}", first.name));
    assert_eq!(reply.status, 200, "member list from {}: {}", first.name, reply.body);
    let list: Value = serde_json::from_str(&reply.body).expect("the member list is JSON");

    let mut actual: Vec<(String, Vec<String>, Vec<String>)> = list["members"]
        .as_array()
        .expect("the member list has members")
        .iter()
        .map(|member| {
            let urls = |field: &str| -> Vec<String> {
                member[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|url| url.as_str().map(String::from))
                    .collect()
            };
            (member["name"].as_str().unwrap_or_default().to_string(), urls("peerURLs"), urls("clientURLs"))
        })
        .collect();
    actual.sort();
    let mut expected: Vec<(String, Vec<String>, Vec<String>)> = lab
        .nodes_with(Role::Etcd)
        .iter()
        .map(|node| {
            (
                node.name.clone(),
                vec![format!("https://{}:{}", node.address, provisioner::stages::etcd::PEER_PORT)],
                vec![client_url(node.address, "")],
            )
        })
        .collect();
    expected.sort();
    assert_eq!(actual, expected, "etcd members (name, peer URLs, client URLs) differ from the topology");
}

/// Every member answers its status, names the same leader, and exactly one member is that
/// leader.
///
/// Turn it red: `cargo lab break etcd-quorum-lost` (etcd stopped on a majority of the
/// members: the rest report no leader).
#[test]
fn exactly_one_leader() {
    let lab = lab();
    let client = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let members = lab.nodes_with(Role::Etcd);
    let replies = lab.block_on(join_all(
        members.iter().map(|node| client.post_json(client_url(node.address, "/v3/maintenance/status"), "{}")),
    ));
    let mut problems = Vec::new();
    // (node, its member id, the leader id it reports; "0" while it knows no leader)
    let mut views: Vec<(&str, String, String)> = Vec::new();
    for (node, reply) in members.iter().zip(replies) {
        match reply {
            Ok(reply) if reply.status == 200 => {
                let status: Value = serde_json::from_str(&reply.body).expect("the status is JSON");
                views.push((&node.name, id(&status["header"]["member_id"]), id(&status["leader"])));
            }
            Ok(reply) => problems.push(format!("{}: HTTP {} {}", node.name, reply.status, reply.body.trim())),
            Err(error) => problems.push(format!("{}: {error}", node.name)),
        }
    }
    for (name, _, leader) in &views {
        if matches!(leader.as_str(), "0" | "null") {
            problems.push(format!("{name} knows no leader"));
        }
    }
    let leaders: std::collections::BTreeSet<&str> = views.iter().map(|(_, _, leader)| leader.as_str()).collect();
    if leaders.len() > 1 {
        problems.push(format!("the members name different leaders: {views:?}"));
    }
    let leading: Vec<&str> =
        views.iter().filter(|(_, member, leader)| member == leader).map(|(name, ..)| *name).collect();
    if leading.len() != 1 {
        problems.push(format!("{} members lead: {leading:?}", leading.len()));
    }
    assert!(problems.is_empty(), "etcd has not exactly one leader:\n{}", problems.join("\n"));
    eprintln!("etcd leader: {}", leading[0]);
}

/// A client without a certificate is refused by every member, while the same member
/// answers the lab's client certificate (so a member that is simply down does not pass).
/// A refusal is the member ending the TLS handshake with an alert; a timeout, a closed
/// port or an unreachable address is no refusal.
///
/// Turn it red: `cargo lab break etcd-client-cert-auth-off` (a member with
/// `--client-cert-auth=false`).
#[test]
fn clients_without_a_certificate_are_refused() {
    let lab = lab();
    let with_certificate = lab.https(Identity::Certificate(names::APISERVER_ETCD_CLIENT), TIMEOUT);
    let anonymous = lab.https(Identity::Anonymous, TIMEOUT);
    let mut refusals = Vec::new();
    for node in lab.nodes_with(Role::Etcd) {
        let url = client_url(node.address, "/health");
        let reply = lab.block_on(with_certificate.get(&url));
        assert!(
            matches!(&reply, Ok(reply) if reply.status == 200),
            "{} must answer the lab's client certificate first: {reply:?}",
            node.name
        );
        match lab.block_on(anonymous.get_unless_timeout(&url)) {
            Err(HttpsError::TlsRejected { alert, .. }) => refusals.push(format!("{} {alert:?}", node.name)),
            Ok(reply) => panic!(
                "{} answered a client without a certificate: HTTP {} {}",
                node.name,
                reply.status,
                reply.body.trim()
            ),
            Err(error) => {
                panic!("{} did not refuse a client without a certificate with a TLS alert: {error}", node.name)
            }
        }
    }
    eprintln!("TLS alerts to a client without a certificate: {}", refusals.join(", "));
}

/// How long after a drill ended an election still counts as the drill's: a member that was
/// stopped catches up, and a leader that was stopped is replaced within two election
/// timeouts.
const DRILL_AFTERMATH: Duration = Duration::from_secs(15);

/// etcd elects a leader only when one is really gone: since the last `lab up` finished, no
/// member saw a new leader outside the failover drills (and their aftermath). Each election
/// fails every watch the apiservers hold; a lab whose members elect again and again under
/// load stops delivering events to the controllers. Elections are read from the members'
/// journals (`elected leader ... at term N`, one term per election).
///
/// nextest runs this check after every read-only test and before the drills
/// (.config/nextest.toml), so it judges the lab while the suite loaded it.
///
/// Turn it red: `cargo lab break etcd-leader-moved` (the leadership moved to another
/// member: an election no drill explains).
#[test]
fn etcd_elected_no_leader_outside_the_failover_drills() {
    let lab = lab();
    let since = lab.converged_at().duration_since(std::time::UNIX_EPOCH).expect("after the epoch").as_secs_f64();
    let drills = lab.drill_windows();
    let aftermath = lab.patience(DRILL_AFTERMATH).as_secs_f64();
    let in_a_drill = |time: f64| drills.iter().any(|drill| drill.started <= time && time <= drill.ended + aftermath);

    // The first time any member saw each term's leader. The whole journal is read, not
    // only what came after `since`: a member that restarts logs the current term's
    // leader again, and that is no new election.
    let mut elections: std::collections::BTreeMap<u64, (f64, String)> = std::collections::BTreeMap::new();
    for member in lab.nodes_with(Role::Etcd) {
        let journal = lab.sh(
            &member.name,
            &format!(
                "journalctl --no-pager --output=short-unix --unit {unit} | grep 'elected leader' || true",
                unit = provisioner::stages::etcd::UNIT
            ),
        );
        for line in journal.lines() {
            let Some(time) = line.split_whitespace().next().and_then(|word| word.parse::<f64>().ok()) else {
                continue;
            };
            let Some(term) = line
                .split("at term ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse::<u64>().ok())
            else {
                continue;
            };
            let entry = elections.entry(term).or_insert((time, member.name.clone()));
            if time < entry.0 {
                *entry = (time, member.name.clone());
            }
        }
    }
    let recent: Vec<(&u64, &(f64, String))> = elections.iter().filter(|(_, (time, _))| *time >= since).collect();
    let unexplained: Vec<String> = recent
        .iter()
        .filter(|(_, (time, _))| !in_a_drill(*time))
        .map(|(term, (time, member))| {
            format!("term {term}: {member} saw a new leader {:.0} s after `lab up` finished", time - since)
        })
        .collect();
    println!(
        "etcd elections since `lab up` finished: {} ({} during or right after {} recorded drills)",
        recent.len(),
        recent.len() - unexplained.len(),
        drills.len()
    );
    assert!(
        unexplained.is_empty(),
        "etcd elected a leader with no drill running; its members' journals say why (`cargo lab logs NODE --unit etcd.service`):\n{}",
        unexplained.join("\n")
    );
}

/// Both of each member's ports speak strong ciphers only (`--cipher-suites`, what CIS
/// 1.2.34 asks of the apiserver): TLS 1.2 with a CBC cipher is refused, TLS 1.2 with
/// AES-GCM accepted. etcd 3.4 requires TLS 1.2 whatever it is told (it has no setting
/// for it), so there is no TLS 1.1 check that could fail. Asked on each member with its
/// own certificates, since both ports require one.
///
/// Turn it red: `cargo lab break etcd-weak-ciphers` (one member without
/// `--cipher-suites`, on Go's defaults).
#[test]
fn every_member_refuses_weak_ciphers() {
    let lab = lab();
    let certificate = |file: &str| paths::etcd_pki(file);
    let client = (certificate(pki_files::ETCD_SERVER_CERT), certificate(pki_files::ETCD_SERVER_KEY));
    let peer = (certificate(pki_files::ETCD_PEER_CERT), certificate(pki_files::ETCD_PEER_KEY));
    let mut problems = Vec::new();
    for member in lab.nodes_with(Role::Etcd) {
        for (port, (cert, key)) in [(CLIENT_PORT, &client), (PEER_PORT, &peer)] {
            let client = Some((cert.as_str(), key.as_str()));
            problems.extend(lab.tls_policy_problems(
                &member.name,
                member.address,
                port,
                client,
                TlsPolicy::StrongCiphers,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
