//! The conformance suite's support code: the running lab, and real clients for it.
//!
//! Every test starts with [`lab()`]. It reads the lab's public state once per test binary
//! (`cargo lab status --json`, run in the workspace root, so `LAB_DIR` selects the lab
//! exactly as it does for `cargo lab`), checks that every node runs and that the lab's
//! addresses are routed onto the lab's own bridge, and hands out:
//!
//! - a Kubernetes client with the admin kubeconfig ([`Lab::kube`]) and a shared tokio
//!   runtime to drive it ([`Lab::block_on`]);
//! - HTTPS with the lab's CA and any of its client certificates, or none ([`Lab::https`]),
//!   for etcd, the apiservers and the kubelets;
//! - a resolver that asks only the cluster DNS, over UDP or TCP ([`Lab::resolver`]);
//! - TCP probes that tell an open port from a refused and a filtered one ([`Lab::probe`]);
//! - a shell on every node over SSH with the lab's key ([`Lab::sh`]), and what listens on
//!   each node's TCP ports ([`Lab::listeners`]);
//! - the TLS versions and ciphers a server accepts, asked on its own node
//!   ([`Lab::tls_policy_problems`]).
//!
//! When no lab is running, every test fails with one line saying how to start one.
//!
//! Timeouts: every timeout the suite names is how long a wait may take on machines that run
//! at the host's own speed (nspawn containers, KVM guests). The lab stretches each by its
//! time scale ([`Lab::patience`]): 5 for VMs under software emulation (TCG), where every
//! guest runs about 13 times slower, so that a slow machine is not mistaken for a broken
//! one.
//!
//! Network safety: the suite sends packets only to loopback and to the lab's own ranges
//! (node subnet with the virtual IP, pod range, service range), and only once `ip route get`
//! has shown that the address leaves through the lab's bridge. Every client above goes
//! through that check ([`Lab::allow`]); an address that would follow the host's default
//! route is refused before anything is sent.

mod https;
mod kubernetes;
mod net;
mod resolver;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use provisioner::host::{Host, HostError, Output};
use provisioner::lab::{LabStatus, NodeStatus};
use provisioner::machines::MachineState;
use provisioner::pki::Store;
use provisioner::ssh::{KeyPair, SshHost};
use provisioner::state_dir::StateDir;
use provisioner::topology::{Node, Role, Topology};

pub use https::{HttpsClient, HttpsError, Identity, Reply};
pub use kubernetes::{
    eventually, kubectl, pod_is_ready, pod_may_run, ready_pods, web_deployment, web_service_endpoints, ServiceKind,
    TestNamespace, WebService, WEB_LABEL,
};
pub use net::{Listener, PortState, Targets, UnsafeTarget};
pub use resolver::{ClusterResolver, Lookup, RecordType, Transport};
pub use tls::TlsPolicy;

/// How long an SSH connection to a running node may take to come up.
const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the suite cannot run against a lab. Its message is the one line every test fails with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error("no lab is running (LAB_DIR={lab_dir}, {reason}): start one with `cargo lab up`")]
    NotRunning { lab_dir: String, reason: String },
    #[error("refusing to test the lab (LAB_DIR={lab_dir}): {reason}")]
    Unsafe { lab_dir: String, reason: String },
}

/// The running lab with its clients. One per test binary, from [`lab()`].
pub struct Lab {
    pub status: LabStatus,
    /// The topology the lab was made from (recorded in its state directory): the source of
    /// every expectation (roles, ports, planned pod ranges).
    pub topology: Topology,
    targets: Targets,
    runtime: tokio::runtime::Runtime,
    kube: kube::Client,
    ssh_key: KeyPair,
    /// One SSH session per node, opened on first use.
    sessions: Mutex<BTreeMap<String, Arc<SshHost>>>,
}

/// The running lab, loaded on first use. Panics with one line when there is none, so that
/// every test says the same thing: how to start a lab.
pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Result<Lab, NotReady>> = OnceLock::new();
    match LAB.get_or_init(Lab::load) {
        Ok(lab) => lab,
        Err(not_ready) => panic!("{not_ready}"),
    }
}

/// The workspace root, where `cargo lab` finds its default topology and state directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives inside the workspace").to_path_buf()
}

/// The value `LAB_DIR` has for messages; `cargo lab` uses `.lab/` when it is unset.
fn lab_dir_for_messages() -> String {
    std::env::var("LAB_DIR").unwrap_or_else(|_| ".lab (default)".to_string())
}

impl Lab {
    fn load() -> Result<Lab, NotReady> {
        let not_running = |reason: String| NotReady::NotRunning { lab_dir: lab_dir_for_messages(), reason };
        let status = read_status().map_err(not_running)?;
        let down: Vec<&NodeStatus> = status.nodes.iter().filter(|node| node.state != MachineState::Running).collect();
        if status.nodes.is_empty() {
            return Err(not_running("its topology has no nodes".to_string()));
        }
        if !down.is_empty() {
            let reason = if down.len() == status.nodes.len() && down.iter().all(|node| node.state == down[0].state) {
                format!("all {} nodes are {}", down.len(), down[0].state)
            } else {
                down.iter().map(|node| format!("{} is {}", node.name, node.state)).collect::<Vec<_>>().join(", ")
            };
            return Err(not_running(reason));
        }
        let topology = provisioner::machines::recorded_topology(&status.state_dir)
            .map_err(|error| not_running(error.to_string()))?
            .ok_or_else(|| not_running(format!("{} records no topology", status.state_dir.display())))?;

        // Refuse before the first packet if the lab's addresses would not go to its bridge.
        let unsafe_target =
            |error: UnsafeTarget| NotReady::Unsafe { lab_dir: lab_dir_for_messages(), reason: error.to_string() };
        let targets = Targets::new(&status.bridge, &topology.network);
        targets.allow(status.vip.into()).map_err(unsafe_target)?;
        targets.allow(status.cluster_dns_ip.into()).map_err(unsafe_target)?;
        for pod_range in status.nodes.iter().filter_map(|node| node.pod_cidr) {
            let first_pod = pod_range.hosts().next().expect("a /24 has hosts");
            targets.allow(first_pod.into()).map_err(unsafe_target)?;
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| not_running(format!("cannot start a tokio runtime: {error}")))?;
        let kube = runtime
            .block_on(kubernetes::admin_client(&status.kubeconfig, &targets, status.time_scale))
            .map_err(|error| not_running(error.to_string()))?;
        let ssh_key = lab_key(&status.ssh_key).map_err(not_running)?;
        Ok(Lab { status, topology, targets, runtime, kube, ssh_key, sessions: Mutex::new(BTreeMap::new()) })
    }

    /// How long a wait that takes at most `timeout` at the host's speed may take on this
    /// lab's machines (see the crate's documentation on timeouts).
    pub fn patience(&self, timeout: Duration) -> Duration {
        timeout * self.status.time_scale
    }

    /// Runs `future` on the lab's runtime, where the Kubernetes client lives.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Starts `future` on the lab's runtime, to run while the calling thread does other work
    /// (such as stopping a unit over SSH).
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// A Kubernetes client with the admin credentials, through the virtual IP.
    pub fn kube(&self) -> kube::Client {
        self.kube.clone()
    }

    /// The nodes with `role`, in topology order.
    pub fn nodes_with(&self, role: Role) -> Vec<&Node> {
        self.topology.nodes_with(role).collect()
    }

    /// Whether the lab's topology has at least `needed` nodes with `role`, for the checks
    /// that only mean something with more than one (a failover needs somewhere to fail over
    /// to). When it has fewer, says on standard error that the check does not apply and why,
    /// and the test returns without checking, as Kubernetes' own e2e suite skips its HA
    /// tests on a single-master cluster. On the default HA topology every check applies.
    pub fn applies(&self, check: &str, role: Role, needed: usize) -> bool {
        let have = self.topology.nodes_with(role).count();
        if have >= needed {
            return true;
        }
        eprintln!("not applicable: {check} needs {needed} nodes with role {role}; this topology has {have}");
        false
    }

    /// The node called `name`; panics if the topology has none.
    pub fn node(&self, name: &str) -> &Node {
        self.topology.node(name).unwrap_or_else(|| panic!("the topology has no node {name}"))
    }

    /// Where the lab keeps the certificate `stem` (`STATE/pki/STEM.pem`) and its key.
    pub fn pki(&self) -> Store {
        Store::new(&self.status.state_dir)
    }

    /// Each worker's planned /24 of the pod range, by name.
    /// The lab's state directory, as `lab status` names it.
    pub fn state(&self) -> StateDir {
        StateDir::new(&self.status.state_dir)
    }

    pub fn planned_pod_cidrs(&self) -> BTreeMap<String, Ipv4Net> {
        self.status.nodes.iter().filter_map(|node| Some((node.name.clone(), node.pod_cidr?))).collect()
    }

    /// The first address of the service range, which the `kubernetes` Service always has.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        provisioner::topology::first_service_ip(self.topology.network.service_cidr)
    }

    /// The guard every client uses before sending anything.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Refuses `address` unless it is the lab's and routed onto its bridge (or loopback).
    pub fn allow(&self, address: Ipv4Addr) -> Result<(), UnsafeTarget> {
        self.targets.allow(address.into())
    }

    /// An HTTPS (and plain HTTP) client that trusts the lab CA and presents `identity`.
    /// Every request has `timeout` (stretched by [`Lab::patience`]) and opens a fresh connection, so a probe always sees the
    /// current state of what it asks.
    pub fn https(&self, identity: Identity, timeout: Duration) -> HttpsClient<'_> {
        HttpsClient::new(&self.pki(), identity, self.patience(timeout), &self.targets)
            .unwrap_or_else(|error| panic!("cannot set up HTTPS with the lab's PKI: {error}"))
    }

    /// A resolver that asks only the cluster DNS Service, over `transport`, caching nothing.
    pub fn resolver(&self, transport: Transport) -> ClusterResolver {
        ClusterResolver::new(self.status.cluster_dns_ip, transport, self.patience(resolver::QUERY_TIMEOUT))
    }

    /// A resolver that asks one DNS pod directly at `pod_ip` (in the pod range, which
    /// the host routes onto the lab bridge), each query waiting at most `timeout`
    /// (stretched by [`Lab::patience`]).
    pub fn pod_resolver(&self, pod_ip: Ipv4Addr, timeout: Duration) -> ClusterResolver {
        if let Err(error) = self.allow(pod_ip) {
            panic!("{error}");
        }
        ClusterResolver::new(pod_ip, Transport::Udp, self.patience(timeout))
    }

    /// Connects to `address:port` once, within `timeout` (stretched by [`Lab::patience`]),
    /// and says what happened.
    pub async fn probe(&self, address: Ipv4Addr, port: u16, timeout: Duration) -> PortState {
        if let Err(error) = self.allow(address) {
            panic!("{error}");
        }
        net::probe_tcp(address, port, self.patience(timeout)).await
    }

    /// Runs `script` with `sh -c` on `node` as root and returns what it did.
    pub fn try_sh(&self, node: &str, script: &str) -> Result<Output, HostError> {
        self.session(node)?.run(script)
    }

    /// Runs `script` on `node` and returns its standard output, or an error that names
    /// the node and the script and holds the standard error if it exits non-zero.
    pub fn try_stdout(&self, node: &str, script: &str) -> Result<String, String> {
        let output = self.try_sh(node, script).map_err(|error| error.to_string())?;
        if output.status != 0 {
            return Err(format!("on {node}, `{script}` exited with {}: {}", output.status, output.stderr.trim()));
        }
        Ok(output.stdout)
    }

    /// Runs `script` on `node` and returns its standard output; panics with the node, the
    /// script and its standard error if it exits non-zero.
    pub fn sh(&self, node: &str, script: &str) -> String {
        self.try_stdout(node, script).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Every TCP socket listening on `node` (`ss -ltnpH`), with the processes holding it.
    pub fn listeners(&self, node: &str) -> Vec<Listener> {
        net::parse_listeners(&self.sh(node, "ss -ltnpH")).unwrap_or_else(|error| panic!("on {node}: {error}"))
    }

    /// The command line the running `unit` was started with on `node`, one argument per
    /// element; panics if the unit has no running main process.
    pub fn command_line(&self, node: &str, unit: &str) -> Vec<String> {
        let script = format!(
            "pid=$(systemctl show --property=MainPID --value {unit}); \
             if [ \"${{pid:-0}}\" -eq 0 ]; then echo '{unit} is not running' >&2; exit 1; fi; \
             tr '\\0' '\\n' < /proc/$pid/cmdline"
        );
        self.sh(node, &script).lines().map(str::to_string).collect()
    }

    fn session(&self, node: &str) -> Result<Arc<SshHost>, HostError> {
        let address = self.node(node).address;
        if let Err(error) = self.allow(address) {
            panic!("{error}");
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(session) = sessions.get(node) {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(SshHost::connect(node, address, &self.ssh_key, self.patience(SSH_CONNECT_TIMEOUT))?);
        sessions.insert(node.to_string(), Arc::clone(&session));
        Ok(session)
    }
}

/// A drill in progress: from `Lab::drill` until dropped, the lab is broken on purpose.
pub struct Drill {
    name: String,
    started: SystemTime,
    log: PathBuf,
}

impl Drop for Drill {
    fn drop(&mut self) {
        use std::io::Write as _;
        let seconds = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let line = format!("{:.3} {:.3} {}\n", seconds(self.started), seconds(SystemTime::now()), self.name);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            eprintln!("cannot record the drill {} in {}: {error}", self.name, self.log.display());
        }
    }
}

/// When a drill broke the lab: seconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillWindow {
    pub started: f64,
    pub ended: f64,
    pub name: String,
}

impl Lab {
    /// Marks the start of a drill named `name`; the returned guard records its window in
    /// the lab's state directory when dropped.
    pub fn drill(&self, name: &str) -> Drill {
        Drill { name: name.to_string(), started: SystemTime::now(), log: self.state().drills_log() }
    }

    /// The drill of `provisioner::drills::DRILLS` that the test `test_name` runs, and its
    /// time bound stretched by the lab's patience (panics for a drill bounded otherwise).
    pub fn drill_of(&self, test_name: &str) -> (&'static provisioner::drills::Drill, Duration) {
        let drill = provisioner::drills::by_test(test_name)
            .unwrap_or_else(|| panic!("{test_name} is in no row of provisioner::drills::DRILLS"));
        match drill.bound {
            provisioner::drills::Bound::AtMost(bound) => (drill, self.patience(bound)),
            other => panic!("the drill {} is bounded by {other:?}, not by a time", drill.name),
        }
    }

    /// Writes what `drill` measured (`value` in its bound's unit: seconds, or percent
    /// answered) into `STATE/drills/NAME.json`, for `lab drill`, and says whether it kept
    /// within the drill's bound (time bounds stretched by the lab's patience).
    pub fn record_drill_value(&self, drill: &provisioner::drills::Drill, value: f64, detail: &str) -> bool {
        let bound = drill.bound.value(f64::from(self.status.time_scale));
        let record = provisioner::drills::DrillRecord {
            drill: drill.name.to_string(),
            value,
            unit: drill.bound.unit().to_string(),
            bound,
            pass: drill.bound.holds(value, bound),
            detail: detail.to_string(),
            at: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
        };
        let dir = self.state().drill_records();
        let path = dir.join(format!("{}.json", drill.name));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, serde_json::to_string_pretty(&record).expect("a record serializes")));
        if let Err(error) = written {
            eprintln!("cannot record the drill {} in {}: {error}", drill.name, path.display());
        }
        record.pass
    }

    /// `record_drill_value` for a drill bounded by a time.
    pub fn record_drill(&self, drill: &provisioner::drills::Drill, figure: Duration, detail: &str) -> bool {
        self.record_drill_value(drill, figure.as_secs_f64(), detail)
    }

    /// Every drill window recorded for this lab, oldest first.
    pub fn drill_windows(&self) -> Vec<DrillWindow> {
        let text = std::fs::read_to_string(self.state().drills_log()).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut words = line.splitn(3, ' ');
                Some(DrillWindow {
                    started: words.next()?.parse().ok()?,
                    ended: words.next()?.parse().ok()?,
                    name: words.next()?.to_string(),
                })
            })
            .collect()
    }

    /// When the last `lab up` finished (it writes `STATE/timings.json` last).
    pub fn converged_at(&self) -> SystemTime {
        let timings = self.state().timings();
        std::fs::metadata(&timings)
            .and_then(|metadata| metadata.modified())
            .unwrap_or_else(|error| panic!("cannot tell when `lab up` finished ({}: {error})", timings.display()))
    }
}

/// The value of `--NAME=VALUE` in a command line (see `Lab::command_line`), or `true` for
/// a bare `--NAME`.
pub fn flag(command_line: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}");
    command_line.iter().find_map(|argument| match argument.strip_prefix(&prefix)? {
        "" => Some("true".to_string()),
        rest => rest.strip_prefix('=').map(str::to_string),
    })
}

/// What a command run by [`run_within`] printed, and how it exited.
pub struct Completed {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` in a process group of its own and waits at most `timeout` for it.
/// When the time is up, the whole group is killed (a test, or `cargo lab up` with the
/// `lab` it started) and the answer is `Ok(None)`. Its output is read while it runs, so
/// a command that prints more than a pipe holds does not stall.
pub fn run_within(command: &mut Command, timeout: Duration) -> Result<Option<Completed>, String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr is piped")));
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                return Ok(None);
            }
            Err(error) => return Err(format!("cannot wait for {command:?}: {error}")),
        }
    };
    Ok(Some(Completed { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }))
}

/// `cargo lab ARGS` in the workspace root, as a user would type it.
pub fn cargo_lab(args: &[&str]) -> Command {
    let mut command = inner_cargo();
    command.arg(lab_alias()).args(args).current_dir(workspace_root());
    command
}

/// The `cargo` that ran this program, without the variables of the package it built
/// (`provisioner::system::inner_cargo`).
pub use provisioner::system::inner_cargo;

/// `cargo lab ARGS --topology FILE` for the verbs that read a topology file (`plan`,
/// `up`, `down`): FILE is the topology the lab in `LAB_DIR` recorded when it was made,
/// so that they act on that lab and not on `lab.toml`'s (a lab of
/// `examples/minimal.toml` has no master2).
pub fn cargo_lab_for_the_lab(args: &[&str]) -> Command {
    let mut command = cargo_lab(args);
    let record = provisioner::state_dir::StateDir::new(state_dir()).topology_record();
    if record.is_file() {
        command.arg("--topology").arg(record);
    }
    command
}

/// The lab's state directory: `LAB_DIR`, relative to the workspace root where `cargo
/// lab` runs, or `.lab` there.
fn state_dir() -> PathBuf {
    workspace_root().join(std::env::var_os("LAB_DIR").unwrap_or_else(|| ".lab".into()))
}

/// The cargo alias that runs `lab` for the lab in `LAB_DIR`: `lab-libvirt`, the CLI
/// built with the libvirt backend (a cargo feature, so that hosts without libvirt-dev
/// still build `lab`), when the lab's recorded machines are libvirt's; `lab` otherwise.
fn lab_alias() -> &'static str {
    match provisioner::machines::recorded_topology(&state_dir()) {
        Ok(Some(topology)) if topology.machines.backend == provisioner::topology::Backend::Libvirt => "lab-libvirt",
        _ => "lab",
    }
}

/// The variable that names one run of the suite's tests for [`read_status`], for a
/// runner that starts the test processes itself (the fault proof); under nextest, its
/// run id (`NEXTEST_RUN_ID`) does.
pub const SUITE_RUN_VARIABLE: &str = "LAB_SUITE_RUN";

/// The lab's status, asked once per run of the suite. Each test is a process of its
/// own, and `cargo lab status --json` cost each of them about 0.3 s (cargo's freshness
/// check, then the status's probes of the running lab): a third of the checks' time on
/// a two-core host. The first test of a run asks and records the answer, with the run's
/// id, in the state directory; the other tests of that run read it. A status that
/// names a stopped node is not recorded, and a test outside a named run asks.
fn read_status() -> Result<LabStatus, String> {
    use std::io::{Read as _, Seek as _, Write as _};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Shared {
        run: String,
        status: LabStatus,
    }

    let Ok(run) = std::env::var(SUITE_RUN_VARIABLE).or_else(|_| std::env::var("NEXTEST_RUN_ID")) else {
        return ask_status();
    };
    let state = StateDir::new(state_dir());
    // No lab there, or a state directory this user cannot write: `lab status` says why,
    // and nothing is left in the directory.
    if !state.topology_record().is_file() {
        return ask_status();
    }
    let path = state.suite_status();
    let Ok(mut file) = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)
    else {
        return ask_status();
    };
    file.lock().map_err(|error| format!("cannot lock {}: {error}", path.display()))?;
    let mut recorded = String::new();
    if file.read_to_string(&mut recorded).is_ok() {
        if let Ok(shared) = serde_json::from_str::<Shared>(&recorded) {
            if shared.run == run {
                return Ok(shared.status);
            }
        }
    }
    let status = ask_status()?;
    if status.nodes.iter().all(|node| node.state == MachineState::Running) {
        let shared = serde_json::to_vec(&Shared { run, status: status.clone() }).map_err(|error| error.to_string())?;
        let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(&shared));
        written.map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    Ok(status)
}

/// Runs `cargo lab status --json` in the workspace root and parses it.
fn ask_status() -> Result<LabStatus, String> {
    let output = cargo_lab(&["status", "--json"])
        .output()
        .map_err(|error| format!("cannot run `cargo lab status --json`: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_line = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no message");
        return Err(format!("`cargo lab status --json` failed: {}", last_line.trim()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("`cargo lab status --json` printed something unexpected: {error}"))
}

/// The lab's SSH key pair as `lab status` names it, read without writing anything.
fn lab_key(private: &Path) -> Result<KeyPair, String> {
    let public = private.with_extension("pub");
    let public_line = std::fs::read_to_string(&public)
        .map_err(|error| format!("cannot read the lab's SSH key {}: {error}", public.display()))?
        .trim()
        .to_string();
    Ok(KeyPair { private: private.to_path_buf(), public, public_line })
}
