//! The executor: makes each node match one stage of the `Plan`, through `Host` only.
//!
//! It has no choices left to make. For every node of a stage, in parallel, it:
//! 1. asks the node for the digest, mode and owner of every planned file in one
//!    command and writes only the files that differ;
//! 2. reloads systemd if a unit file changed;
//! 3. runs the stage's commands (`FilesChanged` ones only if a file changed);
//! 4. enables every unit, restarts it if one of its inputs changed, starts it if it
//!    is not running;
//! 5. retries each readiness check until it passes or its timeout runs out.
//!
//! A converged node therefore costs one query, the `Always` commands, one unit
//! command per unit and the checks, and reports zero changes.
//!
//! A run can be interrupted between writing a file and restarting the unit that
//! reads it; the next run would then find the file up to date and never restart the
//! unit. So before writing anything, the executor leaves a marker on the node
//! (`PENDING_DIR/STAGE`) and removes it only once the stage's commands and units are
//! done. A stage that finds its marker treats every file as changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::host::{Host, HostError};
use crate::plan::{CheckSpec, Content, FileSpec, NodeActions, RunWhen, Stage, StagePlan};

/// Why a stage failed on a node. Every variant names node and stage.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("stage {stage}: {source}")]
    Host { stage: Stage, source: HostError },
    #[error("stage {stage} on {node}: no machine named {node} is connected")]
    UnknownNode { stage: Stage, node: String },
    #[error("stage {stage} on {node}: {description} exited with {status}\n{output}")]
    Command { stage: Stage, node: String, description: String, status: i32, output: String },
    #[error("stage {stage} on {node}: unit {unit} did not start (exit {status})\n{journal}")]
    Unit { stage: Stage, node: String, unit: String, status: i32, journal: String },
    #[error("stage {stage} on {node}: {description} did not pass within {timeout_secs} s; last output:\n{output}\n{journal}")]
    Check { stage: Stage, node: String, description: String, timeout_secs: u64, output: String, journal: String },
    #[error("stage {stage}: cannot write {path} on the host: {source}")]
    Local { stage: Stage, path: PathBuf, source: std::io::Error },
}

impl ExecError {
    /// The node the failure happened on, if it was on a node.
    pub fn node(&self) -> Option<&str> {
        match self {
            ExecError::Command { node, .. }
            | ExecError::Unit { node, .. }
            | ExecError::Check { node, .. }
            | ExecError::UnknownNode { node, .. } => Some(node),
            ExecError::Host { .. } | ExecError::Local { .. } => None,
        }
    }
}

/// What a stage changed on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub node: String,
    pub changed_files: Vec<String>,
    /// Units restarted or started because they were changed or not running.
    pub changed_units: Vec<String>,
    pub commands_run: usize,
}

/// What a stage changed, node by node, and how long it took.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub stage: Stage,
    pub nodes: Vec<NodeReport>,
    pub changed_local_files: Vec<String>,
    pub elapsed: Duration,
}

impl StageReport {
    pub fn changed_files(&self) -> usize {
        self.nodes.iter().map(|node| node.changed_files.len()).sum::<usize>() + self.changed_local_files.len()
    }

    pub fn changed_units(&self) -> usize {
        self.nodes.iter().map(|node| node.changed_units.len()).sum()
    }
}

/// Receives progress while a stage runs; the CLI draws it, tests ignore it.
pub trait Progress: Sync {
    /// A step on a node started, e.g. `writing 3 files` or `waiting: etcd is healthy`.
    fn step(&self, stage: Stage, node: &str, step: &str);
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _stage: Stage, _node: &str, _step: &str) {}
}

/// Runs stages against connected hosts.
pub struct Executor<'a> {
    hosts: BTreeMap<String, &'a dyn Host>,
    digests: DigestCache,
    /// How long to wait between two attempts of a readiness check.
    check_interval: Duration,
    /// Every check's timeout is multiplied by this: the plan's timeouts are for
    /// machines at the host's speed, and a VM under software emulation is many
    /// times slower (`Machines::time_scale`).
    timeout_scale: u32,
}

impl<'a> Executor<'a> {
    pub fn new(hosts: impl IntoIterator<Item = &'a dyn Host>) -> Self {
        Executor {
            hosts: hosts.into_iter().map(|host| (host.name().to_string(), host)).collect(),
            digests: DigestCache::default(),
            check_interval: Duration::from_secs(1),
            timeout_scale: 1,
        }
    }

    /// Multiplies every readiness check's timeout by `scale` (at least 1).
    pub fn with_timeout_scale(mut self, scale: u32) -> Self {
        self.timeout_scale = scale.max(1);
        self
    }

    /// Shortens the pause between check attempts (tests).
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Runs one stage: host-side files first, then every node in parallel.
    pub fn run_stage(&self, stage: &StagePlan, progress: &dyn Progress) -> Result<StageReport, ExecError> {
        let started = Instant::now();
        let mut changed_local_files = Vec::new();
        for file in &stage.local_files {
            if write_local(file).map_err(|source| ExecError::Local {
                stage: stage.stage,
                path: PathBuf::from(&file.path),
                source,
            })? {
                changed_local_files.push(file.path.clone());
            }
        }

        let mut outcomes: Vec<Result<NodeReport, ExecError>> = Vec::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = stage
                .nodes
                .iter()
                .map(|actions| scope.spawn(move || self.run_on_node(stage.stage, actions, progress)))
                .collect();
            outcomes = handles.into_iter().map(|handle| handle.join().expect("node worker panicked")).collect();
        });
        let nodes = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(StageReport { stage: stage.stage, nodes, changed_local_files, elapsed: started.elapsed() })
    }

    fn run_on_node(
        &self,
        stage: Stage,
        actions: &NodeActions,
        progress: &dyn Progress,
    ) -> Result<NodeReport, ExecError> {
        let node = actions.node.as_str();
        let host = *self.hosts.get(node).ok_or_else(|| ExecError::UnknownNode { stage, node: node.to_string() })?;
        let host_error = |source| ExecError::Host { stage, source };
        let mut report = NodeReport { node: node.to_string(), ..NodeReport::default() };

        // 1. Files: one query for the state of all of them, then write what differs.
        let marker = pending_marker(stage);
        let mut interrupted = false;
        if !actions.files.is_empty() {
            progress.step(stage, node, &format!("comparing {} files", actions.files.len()));
            let current = query_file_state(host, stage, &actions.files).map_err(host_error)?;
            interrupted = current.pending;
            let mut to_write = Vec::new();
            for file in &actions.files {
                let wanted = FileState {
                    sha256: self.digests.of(&file.content).map_err(host_error)?,
                    mode: file.mode,
                    owner: file.owner.clone(),
                };
                if current.files.get(&file.path) != Some(&wanted) {
                    to_write.push(file);
                }
            }
            if !to_write.is_empty() && !interrupted {
                let script = format!("mkdir -p {PENDING_DIR} && touch {marker}");
                self.run_command(host, stage, "mark the stage as in progress", &script)?;
            }
            for file in to_write {
                progress.step(stage, node, &format!("writing {}", file.path));
                match &file.content {
                    Content::Text(text) | Content::Secret(text) => {
                        host.put_file(&file.path, file.mode, &file.owner, text.as_bytes()).map_err(host_error)?
                    }
                    Content::Artifact { path } => {
                        host.copy_file(&file.path, file.mode, &file.owner, path).map_err(host_error)?
                    }
                }
                report.changed_files.push(file.path.clone());
            }
        }
        // An interrupted earlier run may have written any of the files: redo all
        // that depends on them.
        let changed: BTreeSet<&str> = if interrupted {
            progress.step(stage, node, "finishing an interrupted run");
            actions.files.iter().map(|file| file.path.as_str()).collect()
        } else {
            report.changed_files.iter().map(String::as_str).collect()
        };

        // 2. systemd must re-read unit files before they are (re)started.
        if changed.iter().any(|path| path.starts_with("/etc/systemd/")) {
            self.run_command(host, stage, "systemctl daemon-reload", "systemctl daemon-reload")?;
        }

        // 3. Commands.
        for command in &actions.commands {
            if command.when == RunWhen::FilesChanged && changed.is_empty() {
                continue;
            }
            progress.step(stage, node, &command.description);
            self.run_command(host, stage, &command.description, &command.script)?;
            report.commands_run += 1;
        }

        // 4. Units. `--no-block` lets members that wait for each other (etcd's quorum)
        // start together; the readiness checks do the waiting.
        for unit in &actions.units {
            let restart = unit.restart_when_changed.iter().any(|path| changed.contains(path.as_str()));
            let script = format!(
                "systemctl enable --quiet {name} && {action}",
                name = unit.name,
                action = if restart {
                    format!("systemctl restart --no-block {} && echo restarted", unit.name)
                } else {
                    format!(
                        "if ! systemctl is-active --quiet {name}; then systemctl start --no-block {name} && echo started; fi",
                        name = unit.name
                    )
                }
            );
            let output = host.run(&script).map_err(host_error)?;
            if !output.success() {
                return Err(ExecError::Unit {
                    stage,
                    node: node.to_string(),
                    unit: unit.name.clone(),
                    status: output.status,
                    journal: format!(
                        "{}{}{}",
                        output.stdout,
                        output.stderr,
                        journal(host, std::slice::from_ref(&unit.name))
                    ),
                });
            }
            if !output.stdout.trim().is_empty() {
                progress.step(stage, node, &format!("{} {}", output.stdout.trim(), unit.name));
                report.changed_units.push(unit.name.clone());
            }
        }

        if !changed.is_empty() {
            self.run_command(host, stage, "clear the in-progress mark", &format!("rm -f {marker}"))?;
        }

        // 5. Readiness.
        for check in &actions.checks {
            progress.step(stage, node, &format!("waiting: {}", check.description));
            self.wait_for(host, stage, check, actions)?;
        }
        Ok(report)
    }

    fn run_command(&self, host: &dyn Host, stage: Stage, description: &str, script: &str) -> Result<(), ExecError> {
        let output = host.run(script).map_err(|source| ExecError::Host { stage, source })?;
        if output.success() {
            return Ok(());
        }
        Err(ExecError::Command {
            stage,
            node: host.name().to_string(),
            description: description.to_string(),
            status: output.status,
            output: tail(&format!("{}{}", output.stdout, output.stderr), 30),
        })
    }

    fn wait_for(
        &self,
        host: &dyn Host,
        stage: Stage,
        check: &CheckSpec,
        actions: &NodeActions,
    ) -> Result<(), ExecError> {
        let timeout_secs = check.timeout_secs * u64::from(self.timeout_scale);
        let deadline = Instant::now() + Duration::from_secs(timeout_secs);
        loop {
            let output = host.run(&check.script).map_err(|source| ExecError::Host { stage, source })?;
            if output.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let units: Vec<String> = actions.units.iter().map(|unit| unit.name.clone()).collect();
                return Err(ExecError::Check {
                    stage,
                    node: host.name().to_string(),
                    description: check.description.clone(),
                    timeout_secs,
                    output: tail(&format!("{}{}", output.stdout, output.stderr), 20),
                    journal: journal(host, &units),
                });
            }
            std::thread::sleep(self.check_interval);
        }
    }
}

/// The last lines of each unit's journal, for error messages. Best effort: a node
/// that cannot answer still lets the original error through.
fn journal(host: &dyn Host, units: &[String]) -> String {
    let mut out = String::new();
    for unit in units {
        let script = format!(
            "journalctl --no-pager --lines 25 --unit {unit} 2>&1; systemctl status --no-pager --lines 0 {unit} 2>&1"
        );
        if let Ok(output) = host.run(&script) {
            out.push_str(&format!("--- journal of {unit} on {}:\n{}", host.name(), output.stdout));
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The state of a file on a node that decides whether it must be written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    sha256: String,
    mode: u32,
    owner: String,
}

/// Marks the query so fakes can answer it.
pub const FILE_STATE_QUERY: &str = "# lab: file state\n";

/// Where a node keeps the markers of stages whose run was interrupted.
pub const PENDING_DIR: &str = "/var/lib/k8s-lab/pending";

/// The line the state query prints when the stage's marker exists.
const PENDING_LINE: &str = "pending";

fn pending_marker(stage: Stage) -> String {
    format!("{PENDING_DIR}/{}", stage.name())
}

/// The script that prints `pending` if the stage was interrupted, then
/// `SHA256 MODE OWNER PATH` for every existing planned file.
pub fn file_state_script(stage: Stage, files: &[FileSpec]) -> String {
    let mut script = String::from(FILE_STATE_QUERY);
    script.push_str(&format!("[ -e {} ] && echo {PENDING_LINE}; ", pending_marker(stage)));
    script.push_str("for f in");
    for file in files {
        script.push(' ');
        script.push_str(&shell_quote(&file.path));
    }
    script.push_str(
        "; do [ -f \"$f\" ] && printf '%s %s %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" \"$(stat -c '%a %U' \"$f\")\" \"$f\"; done; true",
    );
    script
}

/// What a node has of a stage's files, and whether the stage was interrupted there.
struct NodeFiles {
    files: HashMap<String, FileState>,
    pending: bool,
}

fn query_file_state(host: &dyn Host, stage: Stage, files: &[FileSpec]) -> Result<NodeFiles, HostError> {
    let output = host.run(&file_state_script(stage, files))?;
    let mut state = HashMap::new();
    let mut pending = false;
    for line in output.stdout.lines() {
        if line == PENDING_LINE {
            pending = true;
            continue;
        }
        let mut fields = line.splitn(4, ' ');
        let (Some(sha256), Some(mode), Some(owner), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(mode) = u32::from_str_radix(mode, 8) else { continue };
        state.insert(path.to_string(), FileState { sha256: sha256.to_string(), mode, owner: owner.to_string() });
    }
    Ok(NodeFiles { files: state, pending })
}

/// Quotes a string for `sh`.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:=+,@".contains(&b)) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Digests of file contents; artifacts are large, so each local file is hashed once
/// per run (keyed by path, size and modification time).
#[derive(Default)]
struct DigestCache {
    artifacts: Mutex<HashMap<PathBuf, (u64, std::time::SystemTime, String)>>,
}

impl DigestCache {
    fn of(&self, content: &Content) -> Result<String, HostError> {
        match content {
            Content::Text(text) | Content::Secret(text) => Ok(hex::encode(Sha256::digest(text.as_bytes()))),
            Content::Artifact { path } => self.of_local(path),
        }
    }

    fn of_local(&self, path: &Path) -> Result<String, HostError> {
        let error = |message: String| HostError::Local { path: path.display().to_string(), message };
        let metadata = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
        let modified = metadata.modified().map_err(|e| error(e.to_string()))?;
        if let Some((size, time, digest)) = self.artifacts.lock().expect("digest lock").get(path) {
            if *size == metadata.len() && *time == modified {
                return Ok(digest.clone());
            }
        }
        let mut file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| error(e.to_string()))?;
        let digest = hex::encode(hasher.finalize());
        self.artifacts.lock().expect("digest lock").insert(path.to_owned(), (metadata.len(), modified, digest.clone()));
        Ok(digest)
    }
}

/// Writes a host-side file if its content or mode differs; returns whether it did.
fn write_local(file: &FileSpec) -> std::io::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bytes = match &file.content {
        Content::Text(text) | Content::Secret(text) => text.as_bytes(),
        Content::Artifact { .. } => {
            return Err(std::io::Error::other("artifacts are never written to the host"));
        }
    };
    let path = Path::new(&file.path);
    if let Ok(existing) = std::fs::read(path) {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        if existing == bytes && mode == file.mode {
            return Ok(false);
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Created with its final mode, then renamed over the old file, so a key is never
    // readable by others and a reader never sees half a file.
    let temporary = path.with_extension("lab-tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(file.mode).open(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(file.mode))?;
    std::fs::rename(&temporary, path)?;
    Ok(true)
}
