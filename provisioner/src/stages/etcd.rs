//! Handbook 000 section 4: a static etcd cluster with mutual TLS.
//!
//! etcd is the only place where Kubernetes keeps state: every object the apiservers
//! accept ends up here, so losing etcd means losing the cluster. The handbook builds a
//! *static* cluster: every member is told the full member list up front
//! (`--initial-cluster`) instead of discovering its peers, and all members are started
//! together. A member only becomes ready once a majority (quorum) of the members
//! listed there have found each other, which is why the executor starting the nodes
//! of a stage in parallel matters here: started one after another, the first member
//! would wait forever for peers that are not started yet.
//!
//! Both of etcd's ports use mutual TLS with etcd's own CA (CIS 2.7: a CA that signs
//! nothing but etcd's members and their clients, so that no kubelet's or other
//! cluster certificate opens the database): clients (kube-apiserver, etcdctl) talk to
//! port 2379 and must present a client certificate (`--client-cert-auth`); members
//! replicate over port 2380 and must present their peer certificate
//! (`--peer-client-cert-auth`). The PKI stage has already put each member's
//! own certificates in place; this stage writes the unit that starts the member, and
//! checks that it answers as healthy, which also proves the cluster has quorum.
//!
//! The handbook leaves etcd's raft timing at its defaults: a leader sends a heartbeat
//! every 100 ms and a follower that hears none for 1 s calls an election. Those
//! defaults assume members on their own machines. The lab's members share a small
//! host with every other node (on this project's 2-core machines, eight nodes and the
//! conformance suite), where a member can be off the CPU, or waiting for its disk, for
//! longer than a second; each such stall cost an election, and each election failed
//! every watch the apiservers had open ("etcdserver: no leader"). So the lab gives
//! the members more slack (`EtcdTiming`): heartbeats every 250 ms and elections after
//! 2.5 s of silence, five times that where the machines may be emulated, and
//! pre-vote, so a member that was starved and comes back asks before it disrupts a
//! healthy leader. The price: a leader that really dies is replaced after 2.5 to 5 s
//! (etcd randomises each follower's timeout between one and two election timeouts)
//! instead of 1 to 2 s.
//!
//! Debian's etcd-server package ships its own `etcd.service` (a single local member)
//! and the user `etcd`, which owns the data directory; the lab's unit of the same name
//! in /etc/systemd/system takes precedence over the package's. The handbook runs etcd
//! as root; the lab runs it as `etcd` (CIS 1.1.12), so a flaw in etcd gives an
//! attacker the database and not the node. The member's private keys stay root's alone
//! on disk, as every key of the lab: systemd hands etcd a copy of each at every start
//! (`LoadCredential=`, under /run/credentials/etcd.service/, readable by `etcd` only).
//! A member that once ran as root (a lab made by an older version) left files in its
//! data directory that `etcd` cannot write, so the stage gives them back to `etcd`
//! before the member starts.

use crate::paths::{self, pki_files};
use crate::plan::{CheckSpec, CommandSpec, Context, RunWhen, StagePlan};
use crate::stages::{credential_path, install_unit, service_unit, RunAs, ServiceUnit, TLS_CIPHER_SUITES};
use crate::topology::Role;

/// The port clients (kube-apiserver, etcdctl) use.
pub const CLIENT_PORT: u16 = 2379;
/// The port members replicate over.
pub const PEER_PORT: u16 = 2380;
/// The unit this stage writes and starts on every member.
pub const UNIT: &str = "etcd.service";
/// The user etcd runs as: Debian's etcd-server package makes it.
pub const USER: &str = "etcd";
/// The names under which etcd finds its private keys among its unit's credentials.
const SERVER_KEY_CREDENTIAL: &str = "server-key.pem";
const PEER_KEY_CREDENTIAL: &str = "peer-key.pem";

/// How long a member may take to find its peers and report healthy.
const READY_TIMEOUT_SECS: u64 = 120;

/// The members' election timeout on machines at full speed, in milliseconds (see the
/// module's prose for why it is not etcd's 1 s).
pub const ELECTION_TIMEOUT_MS: u32 = 2500;

/// etcd's raft timing, in milliseconds (see the module's prose for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdTiming {
    pub heartbeat_interval_ms: u32,
    pub election_timeout_ms: u32,
}

impl EtcdTiming {
    pub fn for_topology(topology: &crate::topology::Topology) -> EtcdTiming {
        // etcd's guidance: the election timeout at least ten heartbeats.
        let scale = if topology.machines.may_be_emulated() { 5 } else { 1 };
        EtcdTiming {
            heartbeat_interval_ms: ELECTION_TIMEOUT_MS / 10 * scale,
            election_timeout_ms: ELECTION_TIMEOUT_MS * scale,
        }
    }
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;

    // Every member gets the same member list: `NAME=https://ADDRESS:2380,...`.
    let initial_cluster = topology
        .nodes_with(Role::Etcd)
        .map(|member| format!("{}=https://{}:{PEER_PORT}", member.name, member.address))
        .collect::<Vec<_>>()
        .join(",");

    let ca = paths::etcd_pki(pki_files::CA_CERT);
    let server_cert = paths::etcd_pki(pki_files::ETCD_SERVER_CERT);
    let server_key = paths::etcd_pki(pki_files::ETCD_SERVER_KEY);
    let peer_cert = paths::etcd_pki(pki_files::ETCD_PEER_CERT);
    let peer_key = paths::etcd_pki(pki_files::ETCD_PEER_KEY);

    let timing = EtcdTiming::for_topology(topology);
    for member in topology.nodes_with(Role::Etcd) {
        let address = member.address;
        let flags = vec![
            format!("--name={}", member.name),
            format!("--data-dir={}", paths::ETCD_DATA_DIR),
            // Clients: the member's own address for the apiservers, and loopback for
            // etcdctl on the node itself. Both are in the serving certificate's SANs.
            format!("--listen-client-urls=https://{address}:{CLIENT_PORT},https://127.0.0.1:{CLIENT_PORT}"),
            format!("--advertise-client-urls=https://{address}:{CLIENT_PORT}"),
            format!("--listen-peer-urls=https://{address}:{PEER_PORT}"),
            format!("--initial-advertise-peer-urls=https://{address}:{PEER_PORT}"),
            format!("--initial-cluster={initial_cluster}"),
            // Only read when the data directory is empty: a restarted member rejoins
            // with the membership it has stored.
            "--initial-cluster-state=new".to_string(),
            // A token unique to the lab, so members of two labs can never join each other.
            format!("--initial-cluster-token={}", topology.name),
            format!("--heartbeat-interval={}", timing.heartbeat_interval_ms),
            format!("--election-timeout={}", timing.election_timeout_ms),
            "--pre-vote=true".to_string(),
            "--client-cert-auth=true".to_string(),
            format!("--trusted-ca-file={ca}"),
            format!("--cert-file={server_cert}"),
            format!("--key-file={}", credential_path(UNIT, SERVER_KEY_CREDENTIAL)),
            "--peer-client-cert-auth=true".to_string(),
            format!("--peer-trusted-ca-file={ca}"),
            format!("--peer-cert-file={peer_cert}"),
            format!("--peer-key-file={}", credential_path(UNIT, PEER_KEY_CREDENTIAL)),
            // Strong ciphers only, for clients and peers (as CIS 1.2.34 asks of the
            // apiserver): etcd 3.4 has no minimum TLS version, and with these suites a
            // TLS 1.0 or 1.1 client finds none it can use.
            format!("--cipher-suites={}", TLS_CIPHER_SUITES.join(",")),
            // etcd 3.4's default logger is deprecated and says so at every start.
            "--logger=zap".to_string(),
        ];
        // `Type=notify`: etcd tells systemd it is ready only once it has joined a cluster
        // with quorum, so `systemctl start` on the first member blocks until enough
        // members run. The executor starts the units of all members in parallel, so
        // they find each other; the start timeout and `Restart=on-failure` cover a
        // member that waits too long.
        let unit = service_unit(&ServiceUnit {
            description: &format!("etcd member {} of the {} lab", member.name, topology.name),
            documentation: "https://etcd.io/docs/v3.4/op-guide/clustering/",
            notify: true,
            command: paths::ETCD_BIN,
            flags: &flags,
            stop_timeout: None,
            run_as: Some(RunAs {
                user: USER,
                credentials: &[(SERVER_KEY_CREDENTIAL, server_key.clone()), (PEER_KEY_CREDENTIAL, peer_key.clone())],
            }),
            environment: "",
        });

        let actions = stage.node(&member.name);
        actions.commands.push(CommandSpec {
            description: format!("give {} to the {USER} user", paths::ETCD_DATA_DIR),
            script: format!(
                "install -d -o {USER} -g {USER} -m 0700 {dir} && chown -R {USER}:{USER} {dir}",
                dir = paths::ETCD_DATA_DIR
            ),
            when: RunWhen::Always,
        });
        install_unit(actions, UNIT, unit, &[&ca, &server_cert, &server_key, &peer_cert, &peer_key]);
        // `endpoint health` reads a key through raft, so it succeeds only when the
        // cluster has a leader and quorum, not merely when this process is up. The
        // server certificate doubles as the client certificate: it carries both usages.
        actions.checks.push(CheckSpec {
            description: format!("etcd member {} is healthy and the cluster has quorum", member.name),
            script: format!(
                "ETCDCTL_API=3 {etcdctl} --endpoints=https://127.0.0.1:{CLIENT_PORT} --cacert={ca} \
                 --cert={server_cert} --key={server_key} endpoint health",
                etcdctl = paths::ETCDCTL_BIN,
            ),
            timeout_secs: READY_TIMEOUT_SECS,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{actions_on, file, flag, planned_nodes, stage_for, topology};

    #[test]
    fn every_member_lists_all_three_members() {
        let stage = stage_for("lab.toml", Stage::Etcd);
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["master1", "master2", "master3"]);
        for node in nodes {
            let unit = file(&stage, node, "/etc/systemd/system/etcd.service");
            assert_eq!(
                flag(unit, "initial-cluster"),
                "master1=https://10.240.0.11:2380,master2=https://10.240.0.12:2380,master3=https://10.240.0.13:2380"
            );
            assert_eq!(flag(unit, "name"), node);
            assert_eq!(flag(unit, "initial-cluster-token"), "k8s");
        }
    }

    #[test]
    fn member_listens_on_its_own_address_with_mutual_tls() {
        let stage = stage_for("lab.toml", Stage::Etcd);
        let unit = file(&stage, "master2", "/etc/systemd/system/etcd.service");
        assert_eq!(flag(unit, "listen-client-urls"), "https://10.240.0.12:2379,https://127.0.0.1:2379");
        assert_eq!(flag(unit, "advertise-client-urls"), "https://10.240.0.12:2379");
        assert_eq!(flag(unit, "listen-peer-urls"), "https://10.240.0.12:2380");
        assert_eq!(flag(unit, "client-cert-auth"), "true");
        assert_eq!(flag(unit, "peer-client-cert-auth"), "true");
        assert_eq!(flag(unit, "cert-file"), "/etc/etcd/pki/server.pem");
        assert_eq!(flag(unit, "cipher-suites"), TLS_CIPHER_SUITES.join(","));
        assert!(unit.contains("Type=notify\n") && unit.contains("Restart=on-failure\n"));
    }

    /// CIS 1.1.12: etcd runs as `etcd`, and reads its root-only keys as systemd's
    /// credentials; the data directory is given to `etcd` before the unit starts.
    #[test]
    fn member_runs_as_etcd_with_its_keys_as_credentials() {
        let stage = stage_for("lab.toml", Stage::Etcd);
        let unit = file(&stage, "master2", "/etc/systemd/system/etcd.service");
        assert!(unit.contains("User=etcd\nGroup=etcd\n"), "{unit}");
        assert!(unit.contains("LoadCredential=server-key.pem:/etc/etcd/pki/server-key.pem\n"), "{unit}");
        assert!(unit.contains("LoadCredential=peer-key.pem:/etc/etcd/pki/peer-key.pem\n"), "{unit}");
        assert_eq!(flag(unit, "key-file"), "/run/credentials/etcd.service/server-key.pem");
        assert_eq!(flag(unit, "peer-key-file"), "/run/credentials/etcd.service/peer-key.pem");
        assert!(actions_on(&stage, "master2").commands[0].script.contains("chown -R etcd:etcd /var/lib/etcd"));
    }

    #[test]
    fn raft_timing_leaves_room_for_a_loaded_host_and_more_for_emulation() {
        let stage = stage_for("lab.toml", Stage::Etcd);
        let unit = file(&stage, "master1", "/etc/systemd/system/etcd.service");
        assert_eq!(flag(unit, "heartbeat-interval"), "250");
        assert_eq!(flag(unit, "election-timeout"), "2500");
        assert_eq!(flag(unit, "pre-vote"), "true");
        let mut emulated = topology("examples/minimal.toml");
        emulated.machines.backend = crate::topology::Backend::Libvirt;
        let timing = EtcdTiming::for_topology(&emulated);
        assert_eq!((timing.heartbeat_interval_ms, timing.election_timeout_ms), (1250, 12500));
    }

    #[test]
    fn unit_restarts_when_its_certificates_change() {
        let stage = stage_for("lab.toml", Stage::Etcd);
        let unit = &stage.nodes[0].units[0];
        assert_eq!(unit.name, "etcd.service");
        for path in ["/etc/systemd/system/etcd.service", "/etc/etcd/pki/ca.pem", "/etc/etcd/pki/peer-key.pem"] {
            assert!(unit.restart_when_changed.iter().any(|changed| changed == path), "{path}");
        }
    }

    #[test]
    fn separate_etcd_tier_runs_etcd_only_on_etcd_nodes() {
        let stage = stage_for("examples/separate-etcd.toml", Stage::Etcd);
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["etcd1", "etcd2", "etcd3"]);
    }

    #[test]
    fn single_member_lists_only_itself() {
        let stage = stage_for("examples/minimal.toml", Stage::Etcd);
        let unit = file(&stage, "master1", "/etc/systemd/system/etcd.service");
        assert_eq!(flag(unit, "initial-cluster"), "master1=https://10.242.0.11:2380");
    }
}
