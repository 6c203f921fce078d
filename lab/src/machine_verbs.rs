//! The machine verbs: `lab up --until machines`, `lab down`, `lab destroy`,
//! `lab status` and `lab ssh`. They drive a `provisioner::machines` backend and
//! print one progress line per step, with the time since the verb started.
//!
//! A state directory belongs to one lab: the first `lab up` records the topology in
//! `STATE/topology.toml`, and `down`, `destroy`, `status` and `ssh` work from that
//! record, so they act on the machines that exist even after lab.toml changed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use provisioner::artifacts::Artifacts;
use provisioner::machines::{
    self, hostnet, LabSpec, MachineState, Machines, NodeImage, NodeSpec, StartOutcome, StopOutcome,
};
use provisioner::preflight;
use provisioner::ssh::{self, KeyPair};
use provisioner::topology::{Role, Topology};
use serde_json::json;

use crate::{verbs, Exit, Failure, Paths};

/// How long every node together may take from start to answering SSH. A node
/// answers in about two seconds; a loaded host may need many times that.
const SSH_TIMEOUT: Duration = Duration::from_secs(180);

/// One connection attempt within `SSH_TIMEOUT`: short, so a node whose machine
/// died is noticed between attempts instead of after the whole timeout.
const SSH_ATTEMPT: Duration = Duration::from_secs(5);

/// How often a slow start, or a node that does not answer SSH yet, gets a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Prints progress lines `[  12.3s] text` on stderr, timed from the verb's start.
struct Progress {
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress { started: Instant::now() }
    }

    fn say(&self, text: &str) {
        eprintln!("[{:>6.1}s] {text}", self.started.elapsed().as_secs_f64());
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

fn failure(error: anyhow::Error) -> Failure {
    Failure { exit: Exit::Failure, error }
}

/// The topology this state directory's lab was made from, else lab.toml's. A
/// `--backend` other than the recorded lab's is refused: its machines are where
/// that backend put them.
fn lab_topology(paths: &Paths) -> Result<Topology, Failure> {
    match machines::recorded_topology(&paths.state_dir)? {
        Some(topology) => {
            if let Some(backend) = paths.backend.filter(|backend| *backend != topology.machines.backend) {
                return Err(Failure {
                    exit: Exit::Usage,
                    error: anyhow!(
                        "lab {} in {} runs on the {} backend, not {backend}; leave out --backend \
                         (or `lab destroy` it first)",
                        topology.name,
                        paths.state_dir.display(),
                        topology.machines.backend
                    ),
                });
            }
            Ok(topology)
        }
        None => Ok(verbs::load_topology(paths)?.topology),
    }
}

fn backend_for(paths: &Paths, topology: &Topology) -> Result<Box<dyn Machines>, Failure> {
    let spec = LabSpec::from_topology(topology, &paths.state_dir, &paths.cache_dir);
    Ok(machines::for_lab(topology.machines.backend, spec)?)
}

/// Where `ssh::ensure_keypair` keeps the lab's private key.
fn private_key_path(paths: &Paths) -> PathBuf {
    paths.state_dir.join("ssh").join("id_ed25519")
}

/// `lab up --until machines`: preflight, node image, lab network, every node
/// created or started in parallel, and every node answering SSH. Returns the
/// machines' time scale (`Machines::time_scale`) for the stages' timeouts.
pub fn up_machines(paths: &Paths) -> Result<u32, Failure> {
    let progress = Progress::new();
    let topology = verbs::load_topology(paths)?.topology;
    machines::check_state_dir(&paths.state_dir, &topology)?;
    let backend = backend_for(paths, &topology)?;

    let step = Instant::now();
    let report = preflight::run(&topology, &paths.state_dir, &paths.cache_dir, &backend.requirements());
    refuse_unless_ready(&report)?;
    let warnings = report.findings.iter().filter(|finding| finding.status == preflight::Status::Warn).count();
    progress.say(&format!(
        "preflight: the host can run {} nodes ({} checks, {warnings} warnings, {})",
        backend.backend(),
        report.findings.len(),
        seconds(step)
    ));

    machines::claim_state_dir(&paths.state_dir, &topology)?;
    let plan = verbs::make_plan_with(paths, &topology, &Artifacts::expected(&topology, &paths.cache_dir))?;
    let key = ssh::ensure_keypair(&paths.state_dir).context("the lab's SSH key pair")?;

    let step = Instant::now();
    let image = backend.ensure_image(&|line| progress.say(&format!("image: {line}")))?;
    if image.from_cache {
        progress.say(&format!("image: used the cached {} ({})", image.root.display(), seconds(step)));
    } else {
        progress.say(&format!("image: built {} ({})", image.root.display(), seconds(step)));
    }

    let step = Instant::now();
    let network = backend.ensure_network(&plan.network.host_routes)?;
    progress.say(&format!(
        "network: bridge {} {} with {} ({})",
        plan.network.bridge,
        if network.bridge_created { "created" } else { "ready" },
        plan.network.gateway,
        seconds(step)
    ));
    for route in &network.routes {
        progress.say(&format!("network: route {route}"));
    }

    let nodes: Vec<NodeSpec> = topology.nodes.iter().map(NodeSpec::of).collect();
    start_nodes(backend.as_ref(), &nodes, &image, &key, &progress)?;
    wait_for_ssh(backend.as_ref(), &nodes, &key, &progress)?;
    progress.say(&format!("machines: {} nodes answer SSH as root with {}", nodes.len(), key.private.display()));
    Ok(backend.time_scale())
}

/// Prints the preflight's warnings, and refuses with every failure and its exact
/// fix at once when the host cannot run the lab. Nothing has been created yet.
fn refuse_unless_ready(report: &preflight::Report) -> Result<(), Failure> {
    for finding in report.findings.iter().filter(|finding| finding.status == preflight::Status::Warn) {
        let fix = finding.fix.as_deref().map(|fix| format!(" (fix: {fix})")).unwrap_or_default();
        eprintln!("warning: {}: {}{fix}", finding.check, finding.detail);
    }
    let failures: Vec<String> = report
        .failures()
        .map(|finding| {
            let fix = finding.fix.as_deref().map(|fix| format!("\n      fix: {fix}")).unwrap_or_default();
            format!("  - {}: {}{fix}", finding.check, finding.detail)
        })
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    Err(failure(anyhow!(
        "the host cannot run the lab yet; nothing was created:\n{}\n`lab doctor` checks the host and installs \
         missing packages",
        failures.join("\n")
    )))
}

/// Creates or starts every node at once; reports every node that failed, not the first.
fn start_nodes(
    backend: &dyn Machines,
    nodes: &[NodeSpec],
    image: &NodeImage,
    key: &KeyPair,
    progress: &Progress,
) -> Result<(), Failure> {
    let started = Instant::now();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                scope.spawn(move || {
                    let step = Instant::now();
                    let outcome = backend.create_or_start(node, image, &key.public_line)?;
                    let what = match outcome {
                        StartOutcome::AlreadyRunning => "already running",
                        StartOutcome::Started { created: true } => "created and started",
                        StartOutcome::Started { created: false } => "started",
                    };
                    progress.say(&format!("{}: {what} at {} ({})", node.name, node.address, seconds(step)));
                    Ok::<(), machines::MachineError>(())
                })
            })
            .collect();
        // A VM backend may take minutes to start its machines (Vagrant uploads its
        // box first): a long start is never silent.
        let mut next_report = started + PROGRESS_EVERY;
        while handles.iter().any(|handle| !handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            if Instant::now() >= next_report {
                let starting = handles.iter().filter(|handle| !handle.is_finished()).count();
                let doing = backend.activity().map(|line| format!("; {line}")).unwrap_or_default();
                progress.say(&format!("machines: starting {starting} nodes ({}){doing}", seconds(started)));
                next_report += PROGRESS_EVERY;
            }
        }
        handles
            .into_iter()
            .filter_map(|handle| match handle.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("a node's start panicked".to_string()),
            })
            .collect()
    });
    if errors.is_empty() {
        return Ok(());
    }
    Err(failure(anyhow!("{} of {} nodes did not start:\n  {}", errors.len(), nodes.len(), errors.join("\n  "))))
}

/// Waits until every node answers SSH with the lab's key, in parallel. A node whose
/// machine stopped fails at once with the place of its console log.
fn wait_for_ssh(backend: &dyn Machines, nodes: &[NodeSpec], key: &KeyPair, progress: &Progress) -> Result<(), Failure> {
    let deadline = Instant::now() + SSH_TIMEOUT * backend.time_scale();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                scope.spawn(move || -> Result<(), String> {
                    let step = Instant::now();
                    let mut next_report = step + PROGRESS_EVERY;
                    loop {
                        // A VM under software emulation takes half a minute or more to
                        // boot: say how far it got, from its console.
                        if Instant::now() >= next_report {
                            let seen = backend
                                .console_log(&node.name)
                                .and_then(|path| last_console_line(&path))
                                .map(|line| format!("; console: {line}"))
                                .unwrap_or_default();
                            progress.say(&format!("{}: waiting for SSH ({}){seen}", node.name, seconds(step)));
                            next_report += PROGRESS_EVERY;
                        }
                        match ssh::wait_until_reachable(&node.name, node.address, key, SSH_ATTEMPT) {
                            Ok(_) => {
                                progress.say(&format!("{}: answers SSH ({})", node.name, seconds(step)));
                                return Ok(());
                            }
                            Err(error) => {
                                let console = backend
                                    .console_log(&node.name)
                                    .map(|path| format!("; console: {}", path.display()))
                                    .unwrap_or_default();
                                if !matches!(backend.status(&node.name), Ok(MachineState::Running)) {
                                    return Err(format!("{}: the machine stopped while booting{console}", node.name));
                                }
                                if Instant::now() >= deadline {
                                    return Err(format!("{error}{console}"));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| match handle.join() {
                Ok(Ok(())) => None,
                Ok(Err(message)) => Some(message),
                Err(_) => Some("waiting for a node panicked".to_string()),
            })
            .collect()
    });
    if errors.is_empty() {
        return Ok(());
    }
    Err(failure(anyhow!("{} of {} nodes do not answer SSH:\n  {}", errors.len(), nodes.len(), errors.join("\n  "))))
}

/// The last line with text in a console log, without terminal control sequences,
/// shortened for a progress line.
fn last_console_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(4096))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().rev().map(strip_control).find(|line| !line.trim().is_empty())?;
    let line = line.trim();
    Some(match line.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    })
}

/// `line` without ANSI escape sequences (systemd colours its status lines) and
/// other control characters.
fn strip_control(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `lab down`: stops every machine, keeping disks, state, bridge and routes (so
/// lab addresses still lead only to the lab bridge), in parallel.
pub fn down(paths: &Paths) -> Result<(), Failure> {
    let progress = Progress::new();
    let topology = lab_topology(paths)?;
    let backend = backend_for(paths, &topology)?;
    let backend = backend.as_ref();
    let nodes = backend.known_nodes();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let progress = &progress;
                scope.spawn(move || {
                    let step = Instant::now();
                    let outcome = backend.stop(node)?;
                    let what = match outcome {
                        StopOutcome::Stopped => "stopped",
                        StopOutcome::Killed => "killed (it did not power off in time)",
                        StopOutcome::NotRunning => "was not running",
                    };
                    progress.say(&format!("{node}: {what} ({})", seconds(step)));
                    Ok::<(), machines::MachineError>(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| match handle.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("stopping a node panicked".to_string()),
            })
            .collect()
    });
    if !errors.is_empty() {
        return Err(failure(anyhow!("{} nodes did not stop:\n  {}", errors.len(), errors.join("\n  "))));
    }
    progress.say(&format!(
        "lab {} is down; disks and state are kept in {} (`lab up` brings it back)",
        topology.name,
        paths.state_dir.display()
    ));
    Ok(())
}

/// `lab destroy`: removes machines, disks, bridge, routes, cgroups and the state
/// directory; caches stay. Lists everything it could not remove.
pub fn destroy(paths: &Paths) -> Result<(), Failure> {
    let progress = Progress::new();
    // With nothing recorded (an `up` that failed before its first record, or no lab
    // at all), lab.toml names the bridge and machines such a run may have made.
    let topology = lab_topology(paths)?;
    let backend = backend_for(paths, &topology)?;
    let mut leftovers = backend.destroy();
    progress.say(&format!("lab {}: machines, disks, bridge and routes removed", topology.name));
    if leftovers.is_empty() {
        match provisioner::system::remove_tree(&paths.state_dir) {
            Ok(()) => progress.say(&format!("state directory {} removed", paths.state_dir.display())),
            Err(message) => leftovers
                .push(machines::Leftover::new(format!("state directory {}", paths.state_dir.display()), message)),
        }
    }
    if leftovers.is_empty() {
        progress.say(&format!("lab {} destroyed (caches kept in {})", topology.name, paths.cache_dir.display()));
        return Ok(());
    }
    let list: Vec<String> = leftovers.iter().map(|leftover| format!("  - {leftover}")).collect();
    Err(failure(anyhow!(
        "`lab destroy` could not remove {} things (the state directory is kept while they exist):\n{}",
        leftovers.len(),
        list.join("\n")
    )))
}

/// `lab status [--json]`: every node's state and the lab's addresses and files.
/// The JSON form is a public contract: its field names stay; fields may be added.
pub fn status(paths: &Paths, json: bool) -> Result<(), Failure> {
    let topology = lab_topology(paths)?;
    let backend = backend_for(paths, &topology)?;
    let mut states = Vec::new();
    for node in &topology.nodes {
        states.push(backend.status(&node.name)?);
    }
    let memory: Vec<Option<u64>> = topology.nodes.iter().map(|node| backend.memory_bytes(&node.name)).collect();
    // The lab's total only when every node's is known.
    let lab_memory: Option<u64> = memory.iter().copied().sum();
    let network = &topology.network;
    let api_server_url = format!("https://{}:{}", network.vip, network.api_port);
    let kubeconfig = paths.state_dir.join("admin.kubeconfig");
    let ssh_key = private_key_path(paths);
    if json {
        let nodes: Vec<_> = topology
            .nodes
            .iter()
            .zip(&states)
            .zip(&memory)
            .map(|((node, state), memory)| {
                json!({
                    "name": node.name,
                    "address": node.address,
                    "roles": node.roles,
                    "state": state,
                    "memory_bytes": memory,
                })
            })
            .collect();
        let document = json!({
            "lab": topology.name,
            "backend": topology.machines.backend.to_string(),
            "state_dir": paths.state_dir,
            "bridge": provisioner::plan::bridge_name(&topology.name),
            "gateway": network.gateway,
            "nodes": nodes,
            "vip": network.vip,
            "api_server_url": api_server_url,
            "pod_cidr": network.pod_cidr,
            "service_cidr": network.service_cidr,
            "cluster_dns_ip": network.cluster_dns,
            "cluster_domain": network.cluster_domain,
            "kubeconfig": kubeconfig,
            "ssh_key": ssh_key,
            "ssh_user": "root",
            "time_scale": backend.time_scale(),
            "memory_bytes": lab_memory,
        });
        return print_stdout(&serde_json::to_string_pretty(&document).context("serialize the status")?);
    }
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "lab {} ({} backend, state in {})",
        topology.name,
        topology.machines.backend,
        paths.state_dir.display()
    );
    let _ = writeln!(text, "  {:<10} {:<15} {:<8} roles", "node", "address", "state");
    for (node, state) in topology.nodes.iter().zip(&states) {
        let roles = node.roles.iter().map(Role::to_string).collect::<Vec<_>>().join(",");
        let _ = writeln!(text, "  {:<10} {:<15} {:<8} {roles}", node.name, node.address, state.to_string());
    }
    if let Some(bytes) = lab_memory {
        let _ = writeln!(text, "memory      {:.2} GiB (the nodes' working sets)", bytes as f64 / (1u64 << 30) as f64);
    }
    let _ = writeln!(text, "api server  {api_server_url}");
    let _ = writeln!(text, "kubeconfig  {}", kubeconfig.display());
    let _ = write!(text, "ssh key     {} (user root; or `lab ssh NODE`)", ssh_key.display());
    print_stdout(&text)
}

/// Prints `text` and a newline; a reader that went away (`lab status --json | head`)
/// is not an error.
fn print_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(failure(anyhow!("cannot write to standard output: {error}")))
        }
        _ => Ok(()),
    }
}

/// `lab ssh NODE [-- COMMAND...]`: becomes the system's `ssh` to the node as root
/// with the lab's key. Without a command it is an interactive login; with one,
/// stdin is passed through and `lab` exits with the command's status (ssh's own).
/// On success this function does not return: the process is replaced by ssh.
pub fn ssh(paths: &Paths, node: &str, command: &[String]) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt as _;

    let topology = lab_topology(paths)?;
    let Some(target) = topology.node(node) else {
        let names: Vec<&str> = topology.nodes.iter().map(|node| node.name.as_str()).collect();
        return Err(Failure {
            exit: Exit::Usage,
            error: anyhow!("lab {} has no node {node:?}; its nodes are {}", topology.name, names.join(", ")),
        });
    };
    let backend = backend_for(paths, &topology)?;
    let state = backend.status(node)?;
    if state != MachineState::Running {
        return Err(failure(anyhow!("{node} is {state}; `lab up --until machines` starts it")));
    }
    // Nothing goes to a lab address unless the kernel sends it to the lab bridge.
    let bridge = provisioner::plan::bridge_name(&topology.name);
    if !hostnet::address_is_on_bridge(&bridge, target.address)? {
        return Err(failure(anyhow!(
            "refusing to connect: {} ({node}) is not routed onto the lab bridge {bridge}; \
             `lab up --until machines` sets the lab's routes",
            target.address
        )));
    }
    let key = private_key_path(paths);
    if !key.exists() {
        return Err(failure(anyhow!("the lab has no SSH key at {}; `lab up` makes it", key.display())));
    }
    let known_hosts = key.with_file_name("known_hosts");
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-i")
        .arg(&key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
        // ssh reads options after the destination too, unless `--` came first: with
        // it, a command such as `ls -l` reaches the node intact. ssh joins the
        // command's words with spaces for the node's shell, as `ssh HOST CMD...` does.
        .arg("--")
        .arg(format!("root@{}", target.address))
        .args(command);
    let error = ssh.exec();
    Err(failure(anyhow!("cannot run ssh: {error} (apt-get install openssh-client)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_colours_and_long_ones_are_cut() {
        assert_eq!(
            strip_control("[\u{1b}[0;32m  OK  \u{1b}[0m] Started ssh.service\r"),
            "[  OK  ] Started ssh.service"
        );
        let scratch = std::env::temp_dir().join(format!("lab-console-test-{}", std::process::id()));
        std::fs::write(&scratch, format!("first\n{}\n\n", "x".repeat(150))).unwrap();
        let line = last_console_line(&scratch).expect("a line");
        std::fs::remove_file(&scratch).unwrap();
        assert_eq!(line, format!("{}...", "x".repeat(100)));
    }
}
