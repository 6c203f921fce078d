//! The catalogue itself: one entry per fault, grouped by handbook chapter. Each fault
//! breaks one property that a conformance test names, and as little else as the
//! property allows: a flag in one unit, one mode, one route, one member. Stopping a
//! whole service is used only where "the service runs" is the property.

use super::{DefaultNode, Fault, FaultContext, Proof, Scope, Step};
use crate::plan::Stage;
use crate::stages::{
    container_runtime, dns_addon, etcd, firewall, keepalived, kube_apiserver, kube_controller_manager, kube_proxy,
    kube_scheduler, kubelet, kubelet_certificates, load_balancer, pod_network,
};
use crate::topology::{Node, Role};
use crate::{paths, pki};

/// etcdctl on an etcd member, talking to its own member with the member's peer
/// certificate (etcd's CA signs it for client use too).
fn etcdctl() -> String {
    format!("{} --endpoints=https://127.0.0.1:{}", etcdctl_without_endpoints(), etcd::CLIENT_PORT)
}

fn etcdctl_without_endpoints() -> String {
    format!(
        "ETCDCTL_API=3 {} --cacert={} --cert={} --key={}",
        paths::ETCDCTL_BIN,
        paths::etcd_pki(paths::pki_files::CA_CERT),
        paths::etcd_pki(paths::pki_files::ETCD_PEER_CERT),
        paths::etcd_pki(paths::pki_files::ETCD_PEER_KEY),
    )
}

fn on_each(nodes: &[&Node], script: &str) -> Vec<Step> {
    nodes.iter().map(|node| Step::on(node, script)).collect()
}

fn nothing(_: &FaultContext, _: &[&Node]) -> Vec<Step> {
    Vec::new()
}

fn stop(unit: &str) -> String {
    format!("systemctl stop {unit}")
}

fn inactive(unit: &str) -> String {
    format!("! systemctl is-active --quiet {unit}")
}

/// Something listens on TCP `port` on this node.
fn listening(port: u16) -> String {
    format!("ss -ltnH 'sport = :{port}' | grep -q .")
}

/// Replaces `from` by `to` in `file` and restarts `unit`; fails when `from` is not
/// there, so a fault never reports success without having changed anything.
fn edit_and_restart(file: &str, from: &str, to: &str, unit: &str) -> String {
    format!("{} && systemctl daemon-reload && systemctl restart {unit}", edit(file, from, to))
}

/// Replaces `from` by `to` in `file`; fails when `from` is not there.
fn edit(file: &str, from: &str, to: &str) -> String {
    let sed_from = sed_pattern(from);
    let sed_to = to.replace('\\', "\\\\").replace('|', "\\|").replace('&', "\\&");
    format!(
        "{{ grep -qF -- '{from}' {file} || {{ echo '{file} has no `{from}`' >&2; exit 1; }}; }} && \
         sed -i 's|{sed_from}|{sed_to}|' {file}"
    )
}

/// Deletes the line of `file` that holds `setting` (each flag of a unit is a line of its
/// own, never the last, so the unit's command line stays whole); fails when there is
/// none.
fn delete_line(file: &str, setting: &str) -> String {
    format!(
        "{{ grep -qF -- '{setting}' {file} || {{ echo '{file} has no `{setting}`' >&2; exit 1; }}; }} && \
         sed -i '/{setting}/d' {file}"
    )
}

/// Moves the `identity` provider in front of `aescbc` in the EncryptionConfiguration:
/// the first provider encrypts what is written, and both still decrypt. Fails when the
/// file does not end its providers with `identity`, as the plan writes it.
fn identity_provider_first() -> String {
    let file = paths::ENCRYPTION_CONFIG;
    let identity = "      - identity: {}";
    let providers = kube_apiserver::ENCRYPTION_PROVIDERS_LINE;
    format!(
        "{{ grep -qxF -- '{identity}' {file} || {{ echo '{file} lists no `{identity}`' >&2; exit 1; }}; }} && \
         sed -i -e '/^{identity}$/d' -e 's/^{providers}$/&\\n{identity}/' {file}"
    )
}

/// Where the `etcd-data-on-tmpfs` fault keeps each member's data: /run is a tmpfs,
/// emptied when the machine stops.
const TMPFS_ETCD_DATA: &str = "/run/etcd-data-by-fault";

/// Where the `etcd-data-dir-moved` fault points etcd: a directory nothing is in.
const EMPTY_ETCD_DATA_DIR: &str = "/var/lib/etcd-moved-by-fault";

/// The link to the kubelet's current serving certificate in its certificate directory,
/// which the `kubelet-serving-cert-self-signed` fault points at the certificate it makes.
const KUBELET_SERVING_CURRENT: &str = "kubelet-server-current.pem";
/// Where that fault keeps the kubelet's own link while the fake one is in force.
const KUBELET_SERVING_KEPT: &str = "kubelet-server-current.pem.before-fault";

/// `text` as a literal sed pattern (basic regular expression, `|` as the delimiter).
fn sed_pattern(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('.', "\\.")
        .replace('*', "\\*")
        .replace('[', "\\[")
        .replace('^', "\\^")
        .replace('$', "\\$")
}

/// The running kubelet on each node (its configuration as the first master's apiserver
/// shows it, as the tests read it) lacks `setting`; a false setting is left out of the
/// JSON.
fn kubelet_configz_lacks(context: &FaultContext, nodes: &[&Node], setting: &str) -> Vec<Step> {
    nodes
        .iter()
        .map(|node| {
            Step::on(
                context.first(Role::Master),
                format!(
                    "configz=$({kubectl} get --raw /api/v1/nodes/{name}/proxy/configz) && \
                     ! echo \"$configz\" | grep -qF '{setting}'",
                    kubectl = paths::admin_kubectl(),
                    name = node.name
                ),
            )
        })
        .collect()
}

/// The kubelet holds logind's delay lock on the node's shutdown (graceful node shutdown).
const SHUTDOWN_DELAYED_BY_KUBELET: &str =
    "systemd-inhibit --list --no-legend --no-pager | grep -Eq '^kubelet .* shutdown .* delay$'";

/// The kubelet's unit and API are back after a restart: the fault is its setting, not
/// the restart.
fn kubelet_serves(_: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
    on_each(nodes, &format!("{} && {}", listening(kubelet::API_PORT), listening(kubelet::HEALTHZ_PORT)))
}

fn apiserver_serves(context: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
    on_each(nodes, &listening(context.topology.network.apiserver_port))
}

/// The lease of `component` was last renewed longer ago than it lasts: no leader.
fn lease_expired(context: &FaultContext, component: &str) -> Vec<Step> {
    let master = context.first(Role::Master);
    vec![Step::on(
        master,
        format!(
            "set -- $({kubectl} --namespace kube-system get lease {component} \
             -o jsonpath='{{.spec.renewTime}} {{.spec.leaseDurationSeconds}}') && \
             [ $(( $(date +%s) - $(date -d \"$1\" +%s) )) -gt \"$2\" ]",
            kubectl = paths::admin_kubectl()
        ),
    )]
}

/// Deletes the lease of `component`, whose holders are all stopped. A process that
/// finds a lease held by someone else waits a whole lease duration from the moment it
/// first read it, however long ago the holder stopped renewing it (client-go's leader
/// election trusts no clock but its own), so without this the restore would wait 15 s
/// more for a lease nobody holds; with no lease, the first process to start creates it.
fn forget_lease(context: &FaultContext, component: &str) -> Vec<Step> {
    vec![Step::on(
        context.first(Role::Master),
        format!(
            "{kubectl} --namespace kube-system delete lease {component} --ignore-not-found",
            kubectl = paths::admin_kubectl()
        ),
    )]
}

/// Deletes the lines of `unit`'s file that hold `settings`, and restarts it.
fn restart_without(unit: &str, settings: &[&str]) -> String {
    let file = paths::unit(unit);
    let deletions: Vec<String> = settings.iter().map(|setting| delete_line(&file, setting)).collect();
    format!("{} && systemctl daemon-reload && systemctl restart {unit}", deletions.join(" && "))
}

/// Lets `unit`'s HTTPS port take TLS 1.0 and Go's default ciphers, and restarts it.
fn old_tls_and_weak_ciphers(unit: &str) -> String {
    let file = paths::unit(unit);
    format!(
        "{} && {} && systemctl daemon-reload && systemctl restart {unit}",
        edit(&file, "--tls-min-version=VersionTLS12", "--tls-min-version=VersionTLS10"),
        delete_line(&file, "--tls-cipher-suites="),
    )
}

/// The apiserver flag of `apiserver-etcd-first-member-only`.
fn only_first_etcd_member(context: &FaultContext) -> String {
    format!("--etcd-servers=https://{}:{}", context.first(Role::Etcd).address, etcd::CLIENT_PORT)
}

/// The lease of `component` was renewed within its duration: a leader leads again.
fn lease_renewed(context: &FaultContext, component: &str) -> Vec<Step> {
    let mut steps = lease_expired(context, component);
    for step in &mut steps {
        step.script = format!("! {{ {}; }}", step.script);
    }
    steps
}

/// Each node's Ready condition is `True` (`ready`) or anything else (`!ready`), as the
/// API says.
fn node_ready(context: &FaultContext, nodes: &[&Node], ready: bool) -> Vec<Step> {
    let master = context.first(Role::Master);
    let test = if ready { "=" } else { "!=" };
    nodes
        .iter()
        .map(|node| {
            Step::on(
                master,
                format!(
                    "[ \"$({kubectl} get node {name} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}')\" {test} True ]",
                    kubectl = paths::admin_kubectl(),
                    name = node.name
                ),
            )
        })
        .collect()
}

/// kube-proxy's health check answers 200: it has written its rules since it started.
fn kube_proxy_synced(_: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
    on_each(nodes, &format!("curl -sf http://127.0.0.1:{}/healthz", kube_proxy::HEALTHZ_PORT))
}

pub static CATALOGUE: &[Fault] = &[
    // --- etcd (handbook 000 section 5) ---
    Fault {
        name: "etcd-member-stopped",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} is stopped",
        symptom: "componentstatuses shows an etcd member unhealthy",
        // With one member gone, killing the leader leaves no quorum: the leader drill fails.
        breaks: &[
            "etcd::every_member_is_healthy_over_mutual_tls",
            "componentstatuses::scheduler_controller_manager_and_every_etcd_member_are_healthy",
            "failover::writes_resume_and_none_is_lost_when_the_etcd_leader_is_killed",
        ],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(etcd::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &inactive(etcd::UNIT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-client-cert-auth-off",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} serves clients without a certificate (no --client-cert-auth, no --trusted-ca-file)",
        symptom: "anyone who reaches port 2379 can read and write the cluster's whole state",
        breaks: &[
            "etcd::clients_without_a_certificate_are_refused",
            "security::etcd_requires_client_and_peer_certificates",
        ],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            let unit = paths::unit(etcd::UNIT);
            // etcd asks for client certificates whenever it has a CA to check them
            // with, so the flag alone changes nothing a client sees: the CA goes too.
            let trusted_ca = format!("  --trusted-ca-file={} \\", paths::etcd_pki(paths::pki_files::CA_CERT));
            on_each(
                nodes,
                &format!(
                    "{} && {}",
                    edit(&unit, "  --client-cert-auth=true", "  --client-cert-auth=false"),
                    edit_and_restart(&unit, &trusted_ca, "  --trusted-ca-file= \\", etcd::UNIT)
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(etcd::CLIENT_PORT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-weak-ciphers",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} runs without --cipher-suites",
        symptom: "one etcd member accepts CBC ciphers with SHA-1 from clients and peers",
        breaks: &["etcd::every_member_refuses_weak_ciphers"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &restart_without(etcd::UNIT, &["--cipher-suites="])),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(etcd::CLIENT_PORT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-trusts-the-cluster-ca",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} trusts the cluster CA besides its own, so any certificate of the \
                  cluster opens it",
        symptom: "a kubelet's or the admin's certificate reads and writes every object straight from that member",
        breaks: &["cis::cis_2_7_etcd_trusts_only_its_own_ca"],
        proof: Proof::AfterOthers,
        // The cluster CA joins etcd's own in the file etcd reads its trusted CAs from.
        inject: |context, nodes| {
            on_each(
                nodes,
                &format!(
                    "printf '%s\\n' '{pem}' >> {trusted} && systemctl restart {unit}",
                    pem = context.cluster_ca_pem.trim(),
                    trusted = paths::etcd_pki(paths::pki_files::CA_CERT),
                    unit = etcd::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(etcd::CLIENT_PORT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-data-dir-readable-by-all",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd data directory on {nodes} is mode 0755, so every user of the node can list it",
        symptom: "nothing visible: any process on that node can see the database's files and their sizes",
        breaks: &["cis::cis_1_1_11_etcd_data_directories_are_private"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &format!("chmod 0755 {}", paths::ETCD_DATA_DIR)),
        // The etcd stage makes the directory 0700 when it runs, but a converged stage
        // does not run, and its survey looks at planned files only: `lab up` would not
        // see the mode.
        undo: |_, nodes| on_each(nodes, &format!("chmod 0700 {}", paths::ETCD_DATA_DIR)),
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "etcd-runs-as-root",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} runs as root instead of its own user",
        symptom: "nothing visible: a flaw in that etcd would give an attacker the node, not only the database",
        breaks: &["cis::cis_1_1_12_etcd_runs_as_its_own_user_and_owns_its_data"],
        proof: Proof::AfterOthers,
        // Only `User=` and `Group=` go: etcd still reads its keys from the credentials,
        // which root can read too. The files it writes as root are given back to `etcd`
        // by the stage when `lab up` restores the unit.
        inject: |_, nodes| {
            let (user, group) = (format!("User={}", etcd::USER), format!("Group={}", etcd::USER));
            on_each(nodes, &restart_without(etcd::UNIT, &[&user, &group]))
        },
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "etcd-peer-cert-auth-off",
        stage: Stage::Etcd,
        scope: Scope::One { role: Role::Etcd, default: DefaultNode::Last, needs: 1 },
        summary: "the etcd member on {nodes} accepts peers without a certificate (--peer-client-cert-auth=false)",
        symptom: "anything that reaches port 2380 can join the etcd cluster's raft traffic",
        breaks: &["security::etcd_requires_client_and_peer_certificates"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            let unit = paths::unit(etcd::UNIT);
            on_each(
                nodes,
                &edit_and_restart(&unit, "--peer-client-cert-auth=true", "--peer-client-cert-auth=false", etcd::UNIT),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(etcd::PEER_PORT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-ghost-member",
        stage: Stage::Etcd,
        scope: Scope::Cluster { via: Role::Etcd, needs: 1 },
        summary: "etcd lists a member `ghost` that no node runs (added through {nodes})",
        symptom: "etcd's member list has more members than the lab has etcd nodes",
        breaks: &["etcd::member_list_equals_the_topology"],
        proof: Proof::Alone,
        // etcd refuses a new member ("unhealthy cluster") until every member has been
        // connected for 5 s, as right after a member restarted (a restore does that):
        // the add is tried again for up to 30 s while that is the reason.
        inject: |context, nodes| {
            let ghost = ghost_address(context);
            on_each(
                nodes,
                &format!(
                    "{etcdctl} member list | grep -qF ', https://{ghost}:{port},' || {{ i=0; \
                     until out=$({etcdctl} member add ghost --learner --peer-urls=https://{ghost}:{port} 2>&1); do \
                     case \"$out\" in *'unhealthy cluster'*) ;; *) echo \"$out\" >&2; exit 1;; esac; \
                     i=$((i+1)); [ $i -lt 30 ] || {{ echo \"$out\" >&2; exit 1; }}; sleep 1; done; }}",
                    etcdctl = etcdctl(),
                    port = etcd::PEER_PORT
                ),
            )
        },
        // A member that never started has no name in the list yet: it is found by
        // its peer address.
        undo: |context, nodes| {
            on_each(
                nodes,
                &format!(
                    "for id in $({etcdctl} member list | grep -F ', https://{ghost}:{port},' | cut -d, -f1); do \
                     {etcdctl} member remove $id; done",
                    etcdctl = etcdctl(),
                    ghost = ghost_address(context),
                    port = etcd::PEER_PORT
                ),
            )
        },
        in_force: nothing,
        healed: nothing,
    },
    // Listed before the faults whose tests are drills, because the fault proof goes in
    // this order: the election check this fault turns red leaves out every election
    // up to 15 s after a drill, and the proof would break this fault seconds after
    // such a drill passed.
    Fault {
        name: "etcd-leader-moved",
        stage: Stage::Etcd,
        scope: Scope::Cluster { via: Role::Etcd, needs: 2 },
        summary: "etcd elected a new leader on a healthy cluster (leadership moved through {nodes})",
        symptom: "every watch of the apiservers broke once, for no failure anyone can see",
        breaks: &["etcd::etcd_elected_no_leader_outside_the_failover_drills"],
        proof: Proof::Alone,
        // `move-leader` must be sent to the leader: every member is asked which one
        // it is (`endpoint status`: endpoint, ID, version, size, is leader, is
        // learner, ...), and the leadership goes to the first voting member that is not.
        inject: |context, nodes| {
            let endpoints = context
                .topology
                .nodes_with(Role::Etcd)
                .map(|node| format!("https://{}:{}", node.address, etcd::CLIENT_PORT))
                .collect::<Vec<_>>()
                .join(",");
            on_each(
                nodes,
                &format!(
                    "status=$({etcdctl} --endpoints={endpoints} endpoint status -w simple) || exit 1; \
                     leader=$(printf '%s\\n' \"$status\" | awk -F', ' '$5 == \"true\" {{print $1; exit}}'); \
                     target=$(printf '%s\\n' \"$status\" | awk -F', ' '$5 == \"false\" && $6 == \"false\" {{print $2; exit}}'); \
                     [ -n \"$leader\" ] && [ -n \"$target\" ] || {{ echo \"no leader or no follower: $status\" >&2; exit 1; }}; \
                     {etcdctl} --endpoints=\"$leader\" move-leader \"$target\"",
                    etcdctl = etcdctl_without_endpoints()
                ),
            )
        },
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "etcd-quorum-lost",
        stage: Stage::Etcd,
        scope: Scope::AllButFirst { role: Role::Etcd, needs: 3 },
        summary: "the etcd members on {nodes} are stopped, so the others have no quorum",
        symptom: "every write to the API hangs and fails",
        breaks: &["etcd::exactly_one_leader"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(etcd::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &inactive(etcd::UNIT)),
        healed: nothing,
    },
    Fault {
        name: "etcd-data-dir-moved",
        stage: Stage::Etcd,
        scope: Scope::AllButFirst { role: Role::Etcd, needs: 3 },
        summary: "the etcd units on {nodes} point at an empty data directory, which takes effect at their next start",
        symptom: "nothing, until two etcd members restart: then they cannot rejoin and the quorum never returns",
        breaks: &["failover::writes_and_watches_recover_after_etcd_loses_its_quorum"],
        proof: Proof::Alone,
        // Only the unit file changes (and systemd rereads it): the running members keep
        // their data until the next start, which is the moment the property is about.
        // The empty directory is made for etcd's user, who could not make it in /var/lib.
        inject: |_, nodes| {
            let unit = paths::unit(etcd::UNIT);
            let from = format!("--data-dir={}", paths::ETCD_DATA_DIR);
            on_each(
                nodes,
                &format!(
                    "install -d -o {user} -g {user} -m 0700 {EMPTY_ETCD_DATA_DIR} && {}; systemctl daemon-reload",
                    edit(&unit, &from, &format!("--data-dir={EMPTY_ETCD_DATA_DIR}")),
                    user = etcd::USER
                ),
            )
        },
        undo: |_, nodes| on_each(nodes, &format!("rm -rf {EMPTY_ETCD_DATA_DIR}")),
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "etcd-data-on-tmpfs",
        stage: Stage::Etcd,
        scope: Scope::Every { role: Role::Etcd },
        summary: "every etcd member ({nodes}) keeps its data in memory (a copy on tmpfs mounted over its data \
                  directory), so a restart of the machines loses what was written since",
        symptom: "after `lab down` and `lab up`, objects made before the restart are gone",
        breaks: &["failover::every_object_and_pod_is_back_after_a_full_restart"],
        proof: Proof::Alone,
        // Every member is stopped before any is copied, so that the disks keep one
        // moment of the cluster: a member copied, started and copied again later would
        // come back after the restart with less than it had acknowledged to its peers,
        // which raft does not allow for, and the members could then disagree about the
        // data (the first version of this fault did that, and once left kube-proxy on
        // master1 without Services for minutes). The API has no etcd for those seconds, as
        // in `etcd-quorum-lost`. The machines' restart unmounts the copies, so etcd
        // comes back with what it had at the fault. Members start without waiting
        // (`--no-block`): one alone has no quorum and would not report ready.
        inject: |_, nodes| {
            let mut steps = on_each(nodes, &stop(etcd::UNIT));
            steps.extend(on_each(
                nodes,
                &format!(
                    "rm -rf {TMPFS_ETCD_DATA} && cp -a {data} {TMPFS_ETCD_DATA} && mount --bind {TMPFS_ETCD_DATA} {data}",
                    data = paths::ETCD_DATA_DIR
                ),
            ));
            steps.extend(on_each(nodes, &format!("systemctl start --no-block {}", etcd::UNIT)));
            steps.extend(on_each(
                nodes,
                &format!(
                    "i=0; until {etcdctl} endpoint health >/dev/null 2>&1; do \
                     i=$((i+1)); [ $i -lt 60 ] || {{ echo 'etcd is not healthy 60 s after its start' >&2; exit 1; }}; \
                     sleep 1; done",
                    etcdctl = etcdctl()
                ),
            ));
            steps
        },
        // While the copy is still mounted (no restart since the fault), it is the
        // member's newest data: it goes back to the disk before the member starts again.
        undo: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "if mountpoint -q {data}; then {stop} && umount {data} && rm -rf {data}/member && \
                     cp -a {TMPFS_ETCD_DATA}/member {data}/ && systemctl start {unit}; fi && rm -rf {TMPFS_ETCD_DATA}",
                    stop = stop(etcd::UNIT),
                    data = paths::ETCD_DATA_DIR,
                    unit = etcd::UNIT
                ),
            )
        },
        in_force: |_, nodes| {
            on_each(nodes, &format!("mountpoint -q {} && systemctl is-active --quiet {}", paths::ETCD_DATA_DIR, etcd::UNIT))
        },
        healed: nothing,
    },
    // --- kube-apiserver (handbook 000 section 7) ---
    Fault {
        name: "apiserver-stopped",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} is stopped",
        symptom: "one master's API address refuses connections",
        breaks: &["control_plane::every_apiserver_answers_directly"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(kube_apiserver::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &inactive(kube_apiserver::UNIT)),
        healed: nothing,
    },
    Fault {
        name: "apiserver-anonymous-auth",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} authenticates requests without credentials as system:anonymous",
        symptom: "a request with no certificate or token is answered 403 by one apiserver, not 401",
        breaks: &["security::apiservers_refuse_anonymous_requests"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_apiserver::UNIT),
                    "--anonymous-auth=false",
                    "--anonymous-auth=true",
                    kube_apiserver::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-profiling-on",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} serves Go's profiler at /debug/pprof/",
        symptom: "anyone allowed to read every path can take CPU and memory profiles of one apiserver",
        breaks: &["cis::cis_1_2_20_apiservers_serve_no_profiles"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_apiserver::UNIT),
                    "--profiling=false",
                    "--profiling=true",
                    kube_apiserver::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-insecure-port-unset",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} runs without --insecure-port=0",
        symptom: "nothing on Kubernetes 1.20, which serves no insecure port anyway; kube-bench reports 1.2.19 \
                  failed for that master",
        breaks: &["cis::cis_1_2_18_and_1_2_19_apiservers_serve_no_insecure_port"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "{} && systemctl daemon-reload && systemctl restart {}",
                    delete_line(&paths::unit(kube_apiserver::UNIT), "--insecure-port=0"),
                    kube_apiserver::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-node-restriction-off",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} runs without the NodeRestriction admission plugin",
        symptom: "through one apiserver, a kubelet's credentials can relabel any node and so draw any pod onto it",
        breaks: &["cis::cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_apiserver::UNIT),
                    ",NodeRestriction,",
                    ",",
                    kube_apiserver::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-audit-log-off",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} runs with an empty `--audit-log-path`: it writes no audit log",
        symptom: "requests served by one apiserver leave no record of who made them",
        breaks: &["cis::cis_1_2_21_to_24_apiservers_write_an_audit_log"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_apiserver::UNIT),
                    &format!("--audit-log-path={}", paths::AUDIT_LOG),
                    "--audit-log-path=",
                    kube_apiserver::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "secrets-stored-in-clear",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} lists the identity provider first: it writes Secrets to etcd unencrypted",
        symptom: "Secrets written through one apiserver can be read by anyone with a copy of etcd's data; \
                  it still reads the encrypted ones, so nothing else shows it",
        breaks: &["cis::cis_1_2_32_and_33_apiservers_encrypt_secrets_in_etcd"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(nodes, &format!("{} && systemctl restart {}", identity_provider_first(), kube_apiserver::UNIT))
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-old-tls-and-weak-ciphers",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} runs with --tls-min-version=VersionTLS10 and without --tls-cipher-suites",
        symptom: "one apiserver accepts TLS 1.0 and 1.1 and CBC ciphers with SHA-1, which an attacker in the path can weaken",
        breaks: &["cis::cis_1_2_34_apiservers_refuse_old_tls_and_weak_ciphers"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &old_tls_and_weak_ciphers(kube_apiserver::UNIT)),
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-node-authorizer-off",
        stage: Stage::KubeApiserver,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-apiserver on {nodes} authorizes with RBAC only, without the Node authorizer",
        symptom: "kubelets are forbidden to read their own Node through one apiserver",
        breaks: &["security::apiservers_authorize_with_node_and_rbac"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_apiserver::UNIT),
                    "--authorization-mode=Node,RBAC",
                    "--authorization-mode=RBAC",
                    kube_apiserver::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: apiserver_serves,
        healed: nothing,
    },
    Fault {
        name: "apiserver-etcd-first-member-only",
        stage: Stage::KubeApiserver,
        scope: Scope::Every { role: Role::Master },
        summary: "every kube-apiserver ({nodes}) knows only the first etcd member (--etcd-servers)",
        symptom: "the API stops when one etcd member stops, though etcd keeps its quorum",
        breaks: &["failover::the_api_keeps_answering_when_the_first_etcd_member_stops"],
        proof: Proof::Alone,
        inject: |context, nodes| {
            let members: Vec<String> = context
                .topology
                .nodes_with(Role::Etcd)
                .map(|node| format!("https://{}:{}", node.address, etcd::CLIENT_PORT))
                .collect();
            // All of them restart side by side (`--no-block`), in the time one takes:
            // the API is down for those seconds, and `lab break` returns once each
            // serves again with the new flag.
            on_each(
                nodes,
                &format!(
                    "{} && systemctl daemon-reload && systemctl restart --no-block {}",
                    edit(
                        &paths::unit(kube_apiserver::UNIT),
                        &format!("--etcd-servers={}", members.join(",")),
                        &only_first_etcd_member(context),
                    ),
                    kube_apiserver::UNIT
                ),
            )
        },
        undo: nothing,
        // Each apiserver serves again, and it is the restarted one: its command line
        // names only the first member.
        in_force: |context, nodes| {
            on_each(
                nodes,
                &format!(
                    "tr '\\0' '\\n' < /proc/$(systemctl show --property MainPID --value {unit})/cmdline \
                     | grep -qxF -- '{flag}' && {serves}",
                    unit = kube_apiserver::UNIT,
                    flag = only_first_etcd_member(context),
                    serves = listening(context.topology.network.apiserver_port)
                ),
            )
        },
        healed: nothing,
    },
    // --- kube-controller-manager and kube-scheduler (handbook 000 sections 7.3, 7.4) ---
    Fault {
        name: "controller-manager-stopped",
        stage: Stage::KubeControllerManager,
        scope: Scope::Every { role: Role::Master },
        summary: "kube-controller-manager is stopped on every master ({nodes})",
        symptom: "Deployments stop making pods and new Services get no endpoints",
        breaks: &["control_plane::one_controller_manager_holds_the_leader_lease"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(kube_controller_manager::UNIT)),
        undo: |context, _| forget_lease(context, "kube-controller-manager"),
        in_force: |context, _| lease_expired(context, "kube-controller-manager"),
        healed: |context, _| lease_renewed(context, "kube-controller-manager"),
    },
    Fault {
        name: "endpoints-controller-off",
        stage: Stage::KubeControllerManager,
        scope: Scope::Every { role: Role::Master },
        summary: "kube-controller-manager on {nodes} runs without its endpoints controllers",
        symptom: "a new Service never gets endpoints, though its pods are ready",
        breaks: &[
            "control_plane::a_new_service_gets_its_endpoints_within_seconds",
            "dns::a_headless_service_has_an_a_record_per_ready_pod",
        ],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_controller_manager::UNIT),
                    "--leader-elect=true \\",
                    "--leader-elect=true --controllers=*,-endpoint,-endpointslice \\",
                    kube_controller_manager::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &format!("systemctl is-active --quiet {}", kube_controller_manager::UNIT)),
        healed: nothing,
    },
    Fault {
        name: "scheduler-stopped",
        stage: Stage::KubeScheduler,
        scope: Scope::Every { role: Role::Master },
        summary: "kube-scheduler is stopped on every master ({nodes})",
        symptom: "new pods stay Pending",
        breaks: &[
            "control_plane::one_scheduler_holds_the_leader_lease",
            "componentstatuses::scheduler_controller_manager_and_every_etcd_member_are_healthy",
        ],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(kube_scheduler::UNIT)),
        undo: |context, _| forget_lease(context, "kube-scheduler"),
        in_force: |context, _| lease_expired(context, "kube-scheduler"),
        healed: |context, _| lease_renewed(context, "kube-scheduler"),
    },
    Fault {
        name: "leader-standbys-stopped",
        stage: Stage::KubeControllerManager,
        scope: Scope::Every { role: Role::Master },
        summary: "kube-controller-manager and kube-scheduler run only where they hold their leases (stopped on the \
                  other masters of {nodes})",
        symptom: "nothing seems wrong until a leader fails; then nobody takes its work over",
        breaks: &["failover::another_master_leads_when_the_controller_manager_and_scheduler_leaders_are_killed"],
        proof: Proof::Alone,
        // Leader election names the holder `HOSTNAME_UUID`, and a node's hostname is its name.
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "for pair in kube-controller-manager:{controller_manager} kube-scheduler:{scheduler}; do \
                     lease=${{pair%%:*}}; unit=${{pair#*:}}; \
                     holder=$({kubectl} --namespace kube-system get lease $lease -o jsonpath='{{.spec.holderIdentity}}') \
                     || exit 1; \
                     case \"$holder\" in \"$(hostname)\"_*) ;; *) systemctl stop $unit ;; esac; done",
                    controller_manager = kube_controller_manager::UNIT,
                    scheduler = kube_scheduler::UNIT,
                    kubectl = paths::admin_kubectl()
                ),
            )
        },
        undo: nothing,
        in_force: nothing,
        // The leaders that the drill killed and restarted wait out their old leases.
        healed: |context, _| {
            let mut steps = lease_renewed(context, "kube-controller-manager");
            steps.extend(lease_renewed(context, "kube-scheduler"));
            steps
        },
    },
    Fault {
        name: "controller-manager-old-tls-and-weak-ciphers",
        stage: Stage::KubeControllerManager,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-controller-manager on {nodes} runs with --tls-min-version=VersionTLS10 and without --tls-cipher-suites",
        symptom: "its HTTPS port on loopback accepts TLS 1.0 and 1.1 and CBC ciphers with SHA-1",
        breaks: &["security::controller_managers_and_schedulers_refuse_old_tls_and_weak_ciphers"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &old_tls_and_weak_ciphers(kube_controller_manager::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(kube_controller_manager::SECURE_PORT)),
        healed: nothing,
    },
    Fault {
        name: "scheduler-old-tls-and-weak-ciphers",
        stage: Stage::KubeScheduler,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-scheduler on {nodes} runs with --tls-min-version=VersionTLS10 and without --tls-cipher-suites",
        symptom: "its HTTPS port on loopback accepts TLS 1.0 and 1.1 and CBC ciphers with SHA-1",
        breaks: &["security::controller_managers_and_schedulers_refuse_old_tls_and_weak_ciphers"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &old_tls_and_weak_ciphers(kube_scheduler::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(kube_scheduler::SECURE_PORT)),
        healed: nothing,
    },
    Fault {
        name: "controller-manager-profiling-on",
        stage: Stage::KubeControllerManager,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-controller-manager on {nodes} serves Go's profiler at /debug/pprof/",
        symptom: "anything on that master can take profiles of the controller manager without credentials",
        breaks: &["cis::cis_1_3_2_controller_managers_serve_no_profiles"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_controller_manager::UNIT),
                    "--profiling=false",
                    "--profiling=true",
                    kube_controller_manager::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(kube_controller_manager::SECURE_PORT)),
        healed: nothing,
    },
    Fault {
        name: "scheduler-profiling-on",
        stage: Stage::KubeScheduler,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-scheduler on {nodes} serves Go's profiler at /debug/pprof/",
        symptom: "anything on that master can take profiles of the scheduler without credentials",
        breaks: &["cis::cis_1_4_1_schedulers_serve_no_profiles"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_scheduler::UNIT),
                    "--profiling=false",
                    "--profiling=true",
                    kube_scheduler::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(kube_scheduler::SECURE_PORT)),
        healed: nothing,
    },
    Fault {
        name: "controller-manager-plain-http-port",
        stage: Stage::KubeControllerManager,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-controller-manager on {nodes} serves plain HTTP on port 10262 (--port=10262)",
        symptom: "anything that reaches port 10262 of that master (on every address: only the firewall keeps the others out) reads the controller manager's health and metrics without credentials",
        breaks: &["cis::cis_1_3_7_and_1_4_2_controller_managers_and_schedulers_serve_no_plain_http"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    &paths::unit(kube_controller_manager::UNIT),
                    "--port=0",
                    "--port=10262",
                    kube_controller_manager::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(10262)),
        healed: nothing,
    },
    Fault {
        name: "scheduler-plain-http-port",
        stage: Stage::KubeScheduler,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "kube-scheduler on {nodes} serves plain HTTP on port 10261 (--port=10261)",
        symptom: "anything that reaches port 10261 of that master (on every address: only the firewall keeps the others out) reads the scheduler's health and metrics without credentials",
        breaks: &["cis::cis_1_3_7_and_1_4_2_controller_managers_and_schedulers_serve_no_plain_http"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(&paths::unit(kube_scheduler::UNIT), "--port=0", "--port=10261", kube_scheduler::UNIT),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(10261)),
        healed: nothing,
    },
    // --- HAProxy and keepalived (handbook 000 section 8) ---
    Fault {
        name: "haproxy-blind-to-apiservers",
        stage: Stage::LoadBalancer,
        scope: Scope::Every { role: Role::Lb },
        summary: "HAProxy on {nodes} does not health-check the apiservers, so it never takes a stopped one out",
        symptom: "a stopped apiserver stays in HAProxy's backend; connections to it are refused and saved only by retries",
        breaks: &["failover::the_api_keeps_answering_when_one_apiserver_stops"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "grep -qF -- '    default-server check ' {config} || {{ echo '{config} has no health check' >&2; exit 1; }}; \
                     sed -i 's/^    default-server check /    default-server /' {config} && systemctl restart {unit}",
                    config = paths::HAPROXY_CONFIG,
                    unit = load_balancer::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: |context, nodes| on_each(nodes, &listening(context.topology.network.api_port)),
        healed: nothing,
    },
    Fault {
        name: "keepalived-stopped",
        stage: Stage::Keepalived,
        scope: Scope::Every { role: Role::Lb },
        summary: "keepalived is stopped on every load balancer ({nodes}), so none holds the virtual IP",
        symptom: "the API address in every kubeconfig does not answer",
        breaks: &["control_plane::the_api_answers_through_the_virtual_ip"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(keepalived::UNIT)),
        undo: nothing,
        in_force: |context, nodes| {
            on_each(nodes, &format!("! {}", super::holds_address(context.topology.network.vip)))
        },
        healed: nothing,
    },
    Fault {
        name: "keepalived-standbys-stopped",
        stage: Stage::Keepalived,
        scope: Scope::Every { role: Role::Lb },
        summary: "keepalived runs only on the load balancer holding the virtual IP (stopped on the others of {nodes})",
        symptom: "nothing seems wrong until the virtual IP's holder fails; then the API is gone",
        breaks: &[
            "failover::keepalived_moves_the_virtual_ip_when_its_holder_stops",
            "failover::keepalived_moves_the_virtual_ip_when_haproxy_stops_on_its_holder",
        ],
        proof: Proof::Alone,
        inject: |context, nodes| {
            on_each(
                nodes,
                &format!(
                    "{} || {}",
                    super::holds_address(context.topology.network.vip),
                    stop(keepalived::UNIT)
                ),
            )
        },
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "vip-clients-never-ping",
        stage: Stage::Keepalived,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet and kube-proxy on {nodes} never ping a silent connection through the virtual IP \
                  (client-go's health check off)",
        symptom: "after the virtual IP moves, {nodes} hears nothing from the API for minutes: a pod deleted there \
                  keeps running, and its Services keep sending to gone pods",
        // Not the HAProxy drill: HAProxy's exit closes the clients' connections itself.
        breaks: &["failover::keepalived_moves_the_virtual_ip_when_its_holder_stops"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            let setting = format!("HTTP2_READ_IDLE_TIMEOUT_SECONDS={}", keepalived::CLIENT_READ_IDLE_SECS);
            let never = "HTTP2_READ_IDLE_TIMEOUT_SECONDS=0";
            on_each(
                nodes,
                &format!(
                    "{} && {} && systemctl daemon-reload && systemctl restart {} {}",
                    edit(&paths::unit(kubelet::UNIT), &setting, never),
                    edit(&paths::unit(kube_proxy::UNIT), &setting, never),
                    kubelet::UNIT,
                    kube_proxy::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: |context, nodes| {
            let mut steps = kubelet_serves(context, nodes);
            steps.extend(kube_proxy_synced(context, nodes));
            steps
        },
        healed: nothing,
    },
    Fault {
        name: "vip-on-two-lbs",
        stage: Stage::Keepalived,
        scope: Scope::One { role: Role::Lb, default: DefaultNode::NotHoldingTheVip, needs: 2 },
        summary: "the virtual IP is also on {nodes}, which keepalived did not elect (split brain)",
        symptom: "API requests through the virtual IP go to two load balancers at random",
        breaks: &["control_plane::exactly_one_master_holds_the_virtual_ip"],
        proof: Proof::Alone,
        inject: |context, nodes| {
            let vip = context.vip_with_prefix();
            on_each(
                nodes,
                &format!(
                    "{holds} && exit 0; dev=$(ip -4 -o addr show | awk '$4 ~ /^{address}\\// {{print $2; exit}}'); \
                     ip addr add {vip} dev \"$dev\"",
                    holds = super::holds_address(context.topology.network.vip),
                    address = nodes[0].address,
                ),
            )
        },
        undo: |context, nodes| {
            let vip = context.vip_with_prefix();
            on_each(
                nodes,
                &format!(
                    "dev=$(ip -4 -o addr show | awk '$4 ~ /^{address}\\// {{print $2; exit}}'); \
                     ip addr del {vip} dev \"$dev\" 2>/dev/null; true",
                    address = nodes[0].address
                ),
            )
        },
        in_force: nothing,
        healed: nothing,
    },
    // --- the pod network (handbook 000 section 10) ---
    Fault {
        name: "pod-route-deleted",
        stage: Stage::PodNetwork,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 2 },
        summary: "{nodes} has no route to the pod range of the other workers",
        symptom: "pods on one worker cannot reach pods on the others",
        breaks: &["nodeport::pods_reach_pods_on_other_workers"],
        proof: Proof::Alone,
        inject: |context, nodes| {
            let node = nodes[0];
            let others: Vec<String> = context
                .pod_cidrs
                .iter()
                .filter(|(name, _)| **name != node.name)
                .map(|(_, cidr)| format!("ip route del {cidr} 2>/dev/null"))
                .collect();
            vec![Step::on(node, format!("{}; true", others.join("; ")))]
        },
        undo: |_, nodes| on_each(nodes, &format!("systemctl restart {}", pod_network::ROUTES_UNIT)),
        in_force: nothing,
        healed: nothing,
    },
    // --- containerd and the kubelet (handbook 000 section 9) ---
    Fault {
        name: "containerd-stopped",
        stage: Stage::ContainerRuntime,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "containerd on {nodes} is stopped, so its kubelet reports the node NotReady",
        symptom: "one node is NotReady and new pods are not started there",
        breaks: &["nodes::every_worker_is_ready_with_its_planned_pod_range_and_address"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(container_runtime::UNIT)),
        undo: nothing,
        in_force: |context, nodes| node_ready(context, nodes, false),
        healed: |context, nodes| node_ready(context, nodes, true),
    },
    Fault {
        name: "kubelet-read-only-port",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} serves its unauthenticated read-only port 10255",
        symptom: "anyone who reaches the node can list its pods and their environment without credentials",
        breaks: &["security::kubelets_serve_no_read_only_port"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &edit_and_restart(kubelet::CONFIG, "readOnlyPort: 0", "readOnlyPort: 10255", kubelet::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &listening(10255)),
        healed: nothing,
    },
    Fault {
        name: "kubelet-old-tls-and-weak-ciphers",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} runs with tlsMinVersion VersionTLS10 and without tlsCipherSuites",
        symptom: "one kubelet's API accepts TLS 1.0 and 1.1 and CBC ciphers with SHA-1",
        breaks: &["cis::cis_4_2_13_kubelets_refuse_old_tls_and_weak_ciphers"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "{} && {}",
                    delete_line(kubelet::CONFIG, "tlsCipherSuites:"),
                    edit_and_restart(
                        kubelet::CONFIG,
                        "tlsMinVersion: VersionTLS12",
                        "tlsMinVersion: VersionTLS10",
                        kubelet::UNIT
                    )
                ),
            )
        },
        undo: nothing,
        in_force: kubelet_serves,
        healed: nothing,
    },
    Fault {
        name: "kubelet-serving-cert-self-signed",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} serves a certificate for its own name and address that it signed itself, \
                  not one of the lab CA's",
        symptom: "`kubectl logs` and `kubectl exec` fail for that node's pods with `x509: certificate signed by \
                  unknown authority`",
        breaks: &[
            "cis::cis_1_2_5_and_4_2_10_apiservers_reach_kubelets_by_their_lab_certificates_only",
            "security::kubelets_refuse_anonymous_requests_and_authorize_through_the_apiserver",
        ],
        proof: Proof::AfterOthers,
        // Everything but the issuer is right (the node's name and address, its group, a
        // server key usage), so that only checking the CA can tell it from the lab's
        // own, and the kubelet, finding all it would ask for, asks for no other. It
        // takes the place of the kubelet's current serving certificate, which is kept
        // aside (once: a second break must not keep the fake one) and put back by undo.
        inject: |_, nodes| {
            nodes
                .iter()
                .map(|node| {
                    Step::on(
                        node,
                        format!(
                            "cd {dir} && [ -e {current} ] && {{ [ -L {kept} ] || cp -P {current} {kept}; }} && \
                             openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                             -keyout self-signed.key -out self-signed.crt -days 1 \
                             -subj '/O=system:nodes/CN=system:node:{name}' \
                             -addext 'subjectAltName=DNS:{name},IP:{address}' -addext 'extendedKeyUsage=serverAuth' \
                             2>/dev/null && cat self-signed.crt self-signed.key > self-signed.pem && \
                             ln -sfn {dir}/self-signed.pem {current} && systemctl restart {unit}",
                            dir = kubelet::CERTIFICATE_DIR,
                            current = KUBELET_SERVING_CURRENT,
                            kept = KUBELET_SERVING_KEPT,
                            name = node.name,
                            address = node.address,
                            unit = kubelet::UNIT
                        ),
                    )
                })
                .collect()
        },
        undo: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "cd {dir} && {{ [ ! -L {kept} ] || mv -f {kept} {current}; }} && \
                     rm -f self-signed.crt self-signed.key self-signed.pem && systemctl restart {unit}",
                    dir = kubelet::CERTIFICATE_DIR,
                    current = KUBELET_SERVING_CURRENT,
                    kept = KUBELET_SERVING_KEPT,
                    unit = kubelet::UNIT
                ),
            )
        },
        // The certificate on the kubelet's port (on the node's address) is one the lab
        // CA did not issue.
        in_force: |_, nodes| {
            nodes
                .iter()
                .map(|node| {
                    Step::on(
                        node,
                        format!(
                            "issuer=$(openssl s_client -connect {address}:{port} </dev/null 2>/dev/null \
                             | openssl x509 -noout -issuer) && [ -n \"$issuer\" ] && ! echo \"$issuer\" | grep -qF '{ca}'",
                            address = node.address,
                            port = kubelet::API_PORT,
                            ca = pki::CA_COMMON_NAME
                        ),
                    )
                })
                .collect()
        },
        healed: nothing,
    },
    Fault {
        name: "kubelet-changes-kernel-settings",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} runs with protectKernelDefaults: false",
        symptom: "nothing visible: that kubelet would change kernel settings it disagrees with instead of refusing \
                  to start",
        breaks: &["cis::cis_4_2_6_kubelets_protect_kernel_defaults"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    kubelet::CONFIG,
                    "protectKernelDefaults: true",
                    "protectKernelDefaults: false",
                    kubelet::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |context, nodes| kubelet_configz_lacks(context, nodes, "\"protectKernelDefaults\":true"),
        healed: nothing,
    },
    Fault {
        name: "kubelet-graceful-shutdown-off",
        stage: Stage::Kubelet,
        scope: Scope::Every { role: Role::Worker },
        summary: "the kubelets on {nodes} run with shutdownGracePeriod 0s (graceful node shutdown off): a worker \
                  powering off does not stop its pods first",
        symptom: "while a worker is powered off for maintenance, part of the cluster DNS queries and of the \
                  requests to its Services fail, for about 40 s",
        breaks: &["failover::services_move_off_a_worker_whose_machine_stops"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                // The critical pods' share must fit in the period, so it goes to 0 too.
                &format!(
                    "{} && {}",
                    edit(
                        kubelet::CONFIG,
                        &format!("shutdownGracePeriodCriticalPods: {}s", kubelet::SHUTDOWN_GRACE_CRITICAL_SECS),
                        "shutdownGracePeriodCriticalPods: 0s"
                    ),
                    edit_and_restart(
                        kubelet::CONFIG,
                        &format!("shutdownGracePeriod: {}s", kubelet::SHUTDOWN_GRACE_SECS),
                        "shutdownGracePeriod: 0s",
                        kubelet::UNIT,
                    )
                ),
            )
        },
        undo: nothing,
        // With no grace period the kubelet takes no delay lock on the node's shutdown.
        in_force: |context, nodes| {
            let mut steps = kubelet_serves(context, nodes);
            steps.extend(on_each(nodes, &format!("! {}", SHUTDOWN_DELAYED_BY_KUBELET)));
            steps
        },
        healed: |_, nodes| on_each(nodes, SHUTDOWN_DELAYED_BY_KUBELET),
    },
    Fault {
        name: "kubelet-client-certificate-rotation-off",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} runs with rotateCertificates: false",
        symptom: "nothing until its client certificate expires; then that node drops out of the cluster",
        breaks: &["cis::cis_4_2_11_and_4_2_12_kubelets_renew_their_certificates_through_the_api"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(kubelet::CONFIG, "rotateCertificates: true", "rotateCertificates: false", kubelet::UNIT),
            )
        },
        undo: nothing,
        in_force: |context, nodes| kubelet_configz_lacks(context, nodes, "\"rotateCertificates\":true"),
        healed: nothing,
    },
    Fault {
        name: "kubelet-serving-certificate-rotation-off",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} runs with serverTLSBootstrap: false",
        symptom: "nothing until its serving certificate expires; then `kubectl logs` and `kubectl exec` fail for \
                  that node's pods",
        breaks: &["cis::cis_4_2_11_and_4_2_12_kubelets_renew_their_certificates_through_the_api"],
        proof: Proof::AfterOthers,
        // Without serverTLSBootstrap and without a certificate file, the kubelet would
        // make itself a self-signed certificate, which no apiserver would accept; given
        // its current certificate as a file, it serves the same certificate as before,
        // and only the setting differs.
        inject: |_, nodes| {
            let current = format!("{}/{KUBELET_SERVING_CURRENT}", kubelet::CERTIFICATE_DIR);
            on_each(
                nodes,
                &format!(
                    "{} && printf 'tlsCertFile: %s\\ntlsPrivateKeyFile: %s\\n' {current} {current} >> {config} && \
                     systemctl restart {unit}",
                    edit(kubelet::CONFIG, "serverTLSBootstrap: true", "serverTLSBootstrap: false"),
                    config = kubelet::CONFIG,
                    unit = kubelet::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: |context, nodes| kubelet_configz_lacks(context, nodes, "\"serverTLSBootstrap\":true"),
        healed: nothing,
    },
    Fault {
        name: "node-client-renewals-not-approved",
        stage: Stage::Kubelet,
        scope: Scope::Cluster { via: Role::Master, needs: 1 },
        summary: "the nodes may no longer ask for their own client certificates (the ClusterRoleBinding \
                  k8s-lab:nodes-renew-their-client-certificates is deleted through {nodes})",
        symptom: "nothing until a kubelet's client certificate is due for renewal; its request then stays \
                  pending and the node drops out when the certificate expires",
        breaks: &["cis::cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "{} delete clusterrolebinding {}",
                    paths::admin_kubectl(),
                    kubelet_certificates::CLIENT_RENEWAL_BINDING
                ),
            )
        },
        undo: |_, nodes| {
            on_each(
                nodes,
                &format!("{} apply -f {}", paths::admin_kubectl(), kubelet_certificates::client_renewal_manifest_path()),
            )
        },
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "kubelet-serving-approver-approves-any-name",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "the approver on {nodes} approves a kubelet's serving certificate request whatever names it asks \
                  for",
        symptom: "nothing visible: a node broken into could get a certificate for kubernetes.default.svc and pose \
                  as the apiserver to every pod",
        breaks: &["cis::cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit(
                    kubelet_certificates::APPROVER_SCRIPT,
                    kubelet_certificates::APPROVER_NAME_CHECK,
                    ": any names will do",
                ),
            )
        },
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "kubelet-serving-approver-stopped",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Master, default: DefaultNode::Last, needs: 1 },
        summary: "the timer that approves the kubelets' serving certificate renewals is stopped on {nodes}",
        symptom: "nothing until a kubelet's serving certificate is due for renewal; its request then stays \
                  pending and `kubectl logs` and `kubectl exec` fail for that node's pods once it expires",
        breaks: &["cis::cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &stop(kubelet_certificates::APPROVER_TIMER)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &inactive(kubelet_certificates::APPROVER_TIMER)),
        healed: nothing,
    },
    Fault {
        name: "kubelet-anonymous-auth",
        stage: Stage::Kubelet,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the kubelet on {nodes} lets requests without credentials in as system:anonymous",
        symptom: "the kubelet API answers 403 instead of 401 to a request without a certificate",
        breaks: &["security::kubelets_refuse_anonymous_requests_and_authorize_through_the_apiserver"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "grep -qF -- '  anonymous:' {config} || {{ echo '{config} has no anonymous section' >&2; exit 1; }}; \
                     sed -i '/^  anonymous:$/{{n;s/enabled: false/enabled: true/}}' {config} && systemctl restart {unit}",
                    config = kubelet::CONFIG,
                    unit = kubelet::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: kubelet_serves,
        healed: nothing,
    },
    Fault {
        name: "kubelet-cluster-dns-wrong",
        stage: Stage::Kubelet,
        scope: Scope::Every { role: Role::Worker },
        summary: "the kubelets on {nodes} give new pods a name server that is not the cluster DNS",
        symptom: "new pods cannot resolve Service names, while the cluster DNS answers the host",
        breaks: &["dns::pods_resolve_service_names"],
        proof: Proof::Alone,
        inject: |context, nodes| {
            let network = &context.topology.network;
            // The `kubernetes` Service's address: inside the service range, routed, and
            // with no DNS server behind it.
            let wrong = network.service_cidr.hosts().next().expect("the service range has addresses");
            on_each(
                nodes,
                &edit_and_restart(
                    kubelet::CONFIG,
                    &format!("- {}", network.cluster_dns),
                    &format!("- {wrong}"),
                    kubelet::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: kubelet_serves,
        healed: nothing,
    },
    Fault {
        name: "kubeconfig-world-readable",
        stage: Stage::KubeProxy,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "kube-proxy's kubeconfig on {nodes}, which embeds its private key, is readable by every user",
        symptom: "any process on the node can act as kube-proxy against the API",
        breaks: &[
            "security::private_keys_and_kubeconfigs_are_readable_by_root_only",
            "cis::cis_1_1_and_4_1_every_planned_file_has_its_planned_mode_and_owner",
        ],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &format!("chmod 0644 {}", paths::kubeconfig("kube-proxy"))),
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "cni-config-writable-by-all",
        stage: Stage::PodNetwork,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "the CNI configuration on {nodes} is mode 0666, so any user of the node can rewrite its pod network",
        symptom: "nothing visible, until someone rewrites the pod network of that node",
        breaks: &[
            "cis::cis_1_1_and_4_1_configuration_files_are_owned_by_root_and_mode_644_or_stricter",
            "cis::cis_1_1_and_4_1_every_planned_file_has_its_planned_mode_and_owner",
        ],
        proof: Proof::AfterOthers,
        // Whichever pod network the lab runs, its configuration is the one list there.
        inject: |_, nodes| on_each(nodes, &format!("chmod 0666 {}/*.conflist", paths::CNI_CONF_DIR)),
        undo: nothing,
        in_force: nothing,
        healed: nothing,
    },
    Fault {
        name: "ca-key-on-worker",
        stage: Stage::Pki,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "{nodes} has a file named like the CA's private key",
        symptom: "a worker that is broken into could mint any cluster identity",
        breaks: &["security::workers_have_no_ca_private_key"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &format!("touch {}", paths::kubernetes_pki(paths::pki_files::CA_KEY))),
        undo: |_, nodes| on_each(nodes, &format!("rm -f {}", paths::kubernetes_pki(paths::pki_files::CA_KEY))),
        in_force: nothing,
        healed: nothing,
    },
    // --- kube-proxy (handbook 000 section 9.4) ---
    Fault {
        name: "kube-proxy-nodeports-loopback-only",
        stage: Stage::KubeProxy,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "kube-proxy on {nodes} serves NodePorts on loopback only (nodePortAddresses: 127.0.0.0/8)",
        symptom: "a NodePort Service answers on every node but one",
        breaks: &["nodeport::a_node_port_answers_on_every_node_running_kube_proxy"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "grep -q '^nodePortAddresses:' {config} || printf 'nodePortAddresses: [\"127.0.0.0/8\"]\\n' >> {config}; \
                     systemctl restart {unit}",
                    config = kube_proxy::CONFIG,
                    unit = kube_proxy::UNIT
                ),
            )
        },
        undo: nothing,
        in_force: kube_proxy_synced,
        healed: kube_proxy_synced,
    },
    Fault {
        name: "loopback-port-on-all-addresses",
        stage: Stage::KubeProxy,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "kube-proxy on {nodes} serves its metrics on every address, not only on loopback",
        symptom: "nothing, until the firewall is off: then port 10249 answers anyone",
        breaks: &["firewall::health_and_metrics_ports_listen_on_loopback_only"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| {
            on_each(
                nodes,
                &edit_and_restart(
                    kube_proxy::CONFIG,
                    "metricsBindAddress: 127.0.0.1:10249",
                    "metricsBindAddress: 0.0.0.0:10249",
                    kube_proxy::UNIT,
                ),
            )
        },
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, "ss -ltnH 'sport = :10249' | grep -q '0.0.0.0:10249\\|\\*:10249'"),
        healed: nothing,
    },
    // --- the DNS addon (handbook 000 section 11) ---
    Fault {
        name: "dns-one-replica",
        stage: Stage::DnsAddon,
        scope: Scope::Cluster { via: Role::Master, needs: 1 },
        summary: "the cluster DNS Deployment runs one replica instead of two (through {nodes})",
        symptom: "nothing seems wrong until that pod or its node fails; then no name resolves",
        breaks: &["failover::cluster_dns_keeps_answering_when_one_of_its_pods_is_deleted"],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "{kubectl} --namespace kube-system scale deployment {name} --replicas=1 && \
                     {kubectl} --namespace kube-system rollout status deployment {name} --timeout=120s",
                    kubectl = paths::admin_kubectl(),
                    name = dns_addon::NAME
                ),
            )
        },
        undo: |_, nodes| on_each(nodes, &format!("{} apply -f {}", paths::admin_kubectl(), dns_addon::manifest_path())),
        in_force: nothing,
        healed: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "{} --namespace kube-system rollout status deployment {} --timeout=120s",
                    paths::admin_kubectl(),
                    dns_addon::NAME
                ),
            )
        },
    },
    Fault {
        name: "dns-scaled-to-zero",
        stage: Stage::DnsAddon,
        scope: Scope::Cluster { via: Role::Master, needs: 1 },
        summary: "the cluster DNS Deployment is scaled to 0 replicas (through {nodes})",
        symptom: "no name resolves at the cluster DNS address, from pods or the host",
        breaks: &[
            "dns::the_kubernetes_service_has_a_and_srv_records",
            "dns::kube_dns_has_a_and_srv_records",
            "dns::a_new_service_with_named_ports_resolves_within_seconds",
            "dns::a_headless_service_has_an_a_record_per_ready_pod",
            "dns::a_missing_name_is_nxdomain",
            "dns::a_missing_type_of_an_existing_name_is_nodata",
            "dns::the_kubernetes_service_address_has_a_ptr_record",
            "dns::pods_resolve_service_names",
        ],
        proof: Proof::Alone,
        inject: |_, nodes| {
            on_each(nodes, &format!("{} --namespace kube-system scale deployment {} --replicas=0", paths::admin_kubectl(), dns_addon::NAME))
        },
        undo: |_, nodes| on_each(nodes, &format!("{} apply -f {}", paths::admin_kubectl(), dns_addon::manifest_path())),
        // In force once the Service has no endpoints and no DNS pod is left running.
        // Empty endpoints alone are not enough: a node's kube-proxy may not have
        // dropped its rules yet, and a pod in its lame-duck seconds still answers what
        // those rules send it (one CI run saw four of these tests stay green so).
        // Pods that stopped with their worker (phase Failed) never go away by
        // themselves, so they are left out.
        in_force: |_, nodes| {
            on_each(
                nodes,
                &format!(
                    "[ -z \"$({kubectl} --namespace kube-system get endpoints {name} -o jsonpath='{{.subsets}}')\" ] && \
                     [ -z \"$({kubectl} --namespace kube-system get pods --selector k8s-app={name} \
                     --field-selector=status.phase!=Failed,status.phase!=Succeeded -o name)\" ]",
                    kubectl = paths::admin_kubectl(),
                    name = dns_addon::NAME
                ),
            )
        },
        healed: nothing,
    },
    // --- the firewall (handbook 000 section 12) ---
    Fault {
        name: "firewalld-stopped",
        stage: Stage::Firewall,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "firewalld on {nodes} is stopped",
        symptom: "every port of one node is open to the node network",
        breaks: &["firewall::firewalld_runs_on_every_node"],
        proof: Proof::Alone,
        inject: |_, nodes| on_each(nodes, &stop(firewall::UNIT)),
        undo: nothing,
        in_force: |_, nodes| on_each(nodes, &inactive(firewall::UNIT)),
        healed: nothing,
    },
    Fault {
        name: "unlisted-port-open",
        stage: Stage::Firewall,
        scope: Scope::One { role: Role::Worker, default: DefaultNode::Last, needs: 1 },
        summary: "{nodes}'s firewall lets the node network reach port 12345/tcp, which is in no port table",
        symptom: "a port that only the node itself should use answers from other machines",
        breaks: &["firewall::reachable_ports_equal_the_port_table"],
        proof: Proof::AfterOthers,
        inject: |_, nodes| on_each(nodes, &format!("firewall-cmd --zone={} --add-port=12345/tcp", firewall::ZONE)),
        undo: |_, nodes| on_each(nodes, &format!("firewall-cmd --zone={} --remove-port=12345/tcp", firewall::ZONE)),
        in_force: nothing,
        healed: nothing,
    },
];

/// An address in the node subnet that no node, the gateway nor the virtual IP has:
/// the ghost member's peer address, which nothing answers.
fn ghost_address(context: &FaultContext) -> std::net::Ipv4Addr {
    let network = &context.topology.network;
    let taken: Vec<std::net::Ipv4Addr> =
        context.topology.nodes.iter().map(|node| node.address).chain([network.gateway, network.vip]).collect();
    network
        .node_subnet
        .hosts()
        .rev()
        .find(|address| !taken.contains(address))
        .expect("a node subnet has addresses that no node uses")
}

#[cfg(test)]
mod tests {
    use super::edit;

    /// The edit runs in a real `sh` with the host's sed: a pattern with regular
    /// expression characters and a trailing backslash is replaced literally, once.
    #[test]
    fn an_edit_replaces_the_text_literally_and_fails_when_it_is_missing() {
        let dir = std::env::temp_dir().join(format!("lab-fault-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("unit");
        let original =
            "  --leader-elect=true \\\n  --x=1.2.3.4 \\\n  --client-cert-auth=true\n  --peer-client-cert-auth=true\n";
        std::fs::write(&file, original).unwrap();
        let path = file.to_str().unwrap();
        let run = |script: String| std::process::Command::new("sh").arg("-c").arg(script).status().unwrap().success();

        assert!(run(edit(path, "--leader-elect=true \\", "--leader-elect=true --controllers=*,-endpoint \\")));
        assert!(run(edit(path, "  --client-cert-auth=true", "  --client-cert-auth=false")));
        assert!(run(edit(path, "--x=1.2.3.4", "--x=a|b&c")));
        let edited = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            edited,
            "  --leader-elect=true --controllers=*,-endpoint \\\n  --x=a|b&c \\\n  --client-cert-auth=false\n  \
             --peer-client-cert-auth=true\n"
        );
        assert!(!run(edit(path, "--x=1.2.3.4", "--x=5")), "a missing text must fail the fault");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
