//! The executor: makes each node match one stage of the `Plan`, through `Host` only.
//!
//! It has no choices left to make. For every node of a stage, in parallel, it:
//! 1. asks the node for the digest, mode and owner of every planned file in one
//!    command and writes only the files that differ;
//! 2. reloads systemd if a unit file changed;
//! 3. runs the stage's commands (`FilesChanged` ones only if a file changed);
//! 4. enables every unit, restarts it if one of its inputs changed while it ran,
//!    starts it if it is not running, and waits until systemd has done so (no job
//!    left for the unit);
//! 5. retries each readiness check until it passes or its timeout runs out.
//!
//! Once a stage has passed its checks on a node, the executor records there
//! (`APPLIED_DIR/STAGE`) a digest of what the stage planned for the node and the
//! `stat` signature (size, inode, modification time, mode, owner) and the planned
//! identity (mode, owner and content digest) of each file it wrote.
//! `survey` asks every node, in one command, for those records, the files' current
//! signatures, the pending markers and whether the units run. A stage whose digest
//! matches, whose files were not touched since (a hand edit changes the signature)
//! and whose units are active is converged on that node: `run_stage_surveyed` skips
//! its files, commands and units and only runs its checks, and when the whole plan is
//! converged `check_all` runs every check of every node at once. A no-op `lab up`
//! therefore costs one query per node and the checks. A stage that is not converged
//! (its plan changed for one file) still does not read again the files that are as it
//! left them and still planned so: only the others are compared.
//!
//! The record also lists the units the stage ran on the node. A file or unit that a
//! record lists but that no stage of the plan has on that node any more (the topology
//! or the lab changed) is retired: the survey reports it, and the stage that recorded
//! it, which is then not converged, stops and disables the unit and removes the file
//! before it applies the rest. A stage that plans nothing on a node any more, but left
//! a record there, retires all it recorded there (what another stage plans aside) and
//! the record. Only what a record lists is ever removed, so a file the lab never wrote
//! is never touched.
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

use crate::host::{shell_quote, Host, HostError};
use crate::plan::{CheckSpec, Content, FileSpec, NodeActions, RunWhen, Stage, StagePlan};
use crate::text::tail;

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
    /// Files an earlier run wrote that the plan no longer has, removed.
    pub removed_files: Vec<String>,
    /// Units an earlier run started that the plan no longer has, stopped and disabled.
    pub disabled_units: Vec<String>,
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

    /// Retired files removed and retired units disabled, on every node.
    pub fn removed(&self) -> usize {
        self.nodes.iter().map(|node| node.removed_files.len() + node.disabled_units.len()).sum()
    }
}

/// Receives progress while a stage runs; the CLI draws it, tests ignore it.
pub trait Progress: Sync {
    /// A step on a node started, e.g. `writing 3 files` or `waiting: etcd is healthy`.
    fn step(&self, stage: Stage, node: &str, step: &str);

    /// `node` has made every change `stage` plans for it (files, commands, units and
    /// their jobs), or had none to make: only the stage's checks remain there, and
    /// they change nothing.
    fn applied(&self, _stage: Stage, _node: &str) {}
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _stage: Stage, _node: &str, _step: &str) {}
}

/// The pause between two attempts of a readiness check on machines at the host's
/// speed: most checks pass within a second or two of their unit's start, and every
/// stage waits for its slowest check, so a long pause adds up over fifteen stages.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long the units a stage restarted or started on a node may take to be running,
/// on machines at the host's speed: an etcd member waits for its peers' quorum.
const UNIT_JOBS_TIMEOUT_SECS: u64 = 120;

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
    /// The files each node had written in this run, by every stage so far. A unit
    /// restarts when one of its inputs changed in an earlier stage too: the PKI stage
    /// writes the certificates that etcd's and the apiservers' units read.
    written: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Every file path and unit the whole plan has on each node, beyond the stages a
    /// run surveys (`--until`): what is planned anywhere on a node is never retired.
    planned: BTreeMap<String, Planned>,
}

/// The file paths and unit names planned on one node.
#[derive(Debug, Default, Clone)]
struct Planned {
    files: BTreeSet<String>,
    units: BTreeSet<String>,
}

impl Planned {
    fn add(&mut self, actions: &NodeActions) {
        self.files.extend(actions.files.iter().map(|file| file.path.clone()));
        self.units.extend(actions.units.iter().map(|unit| unit.name.clone()));
    }
}

impl<'a> Executor<'a> {
    pub fn new(hosts: impl IntoIterator<Item = &'a dyn Host>) -> Self {
        Executor {
            hosts: hosts.into_iter().map(|host| (host.name().to_string(), host)).collect(),
            digests: DigestCache::default(),
            check_interval: CHECK_INTERVAL,
            timeout_scale: 1,
            written: Mutex::default(),
            planned: BTreeMap::new(),
        }
    }

    /// Tells the executor the whole plan, when a run surveys only some of its stages,
    /// so that a file or unit that moved to a later stage is not retired.
    pub fn with_whole_plan(mut self, stages: &[StagePlan]) -> Self {
        for (node, planned) in by_node(stages) {
            let entry = self.planned.entry(node.to_string()).or_default();
            for (_, actions) in planned {
                entry.add(actions);
            }
        }
        self
    }

    /// Multiplies every readiness check's timeout, and the pause between its attempts,
    /// by `scale` (at least 1).
    pub fn with_timeout_scale(mut self, scale: u32) -> Self {
        self.timeout_scale = scale.max(1);
        self.check_interval = CHECK_INTERVAL * self.timeout_scale;
        self
    }

    /// Shortens the pause between check attempts (tests).
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Runs one stage: host-side files first, then every node in parallel.
    pub fn run_stage(&self, stage: &StagePlan, progress: &dyn Progress) -> Result<StageReport, ExecError> {
        self.run_stage_surveyed(stage, &Survey::default(), progress)
    }

    /// Like `run_stage`, but a node on which `survey` found the stage converged only
    /// runs the stage's checks.
    pub fn run_stage_surveyed(
        &self,
        stage: &StagePlan,
        survey: &Survey,
        progress: &dyn Progress,
    ) -> Result<StageReport, ExecError> {
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
                .map(|actions| {
                    let converged =
                        survey.is_converged(stage.stage, &actions.node) && self.earlier_writes_for(actions).is_empty();
                    let retired = survey.retired(stage.stage, &actions.node);
                    let unchanged = survey.unchanged_files(stage.stage, &actions.node);
                    scope.spawn(move || {
                        if converged {
                            self.check_node(stage.stage, actions, progress)
                        } else {
                            self.run_on_node(stage.stage, actions, retired, unchanged, progress)
                        }
                    })
                })
                .chain(survey.orphaned(stage.stage).map(|(node, retired)| {
                    scope.spawn(move || self.retire_orphan(stage.stage, node, retired, progress))
                }))
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
        retired: &Retired,
        unchanged: &BTreeSet<String>,
        progress: &dyn Progress,
    ) -> Result<NodeReport, ExecError> {
        let node = actions.node.as_str();
        let host = self.host(stage, node)?;
        let host_error = |source| ExecError::Host { stage, source };
        let mut report = NodeReport { node: node.to_string(), ..NodeReport::default() };

        // 1. Files: one query for the state of all of them, then write what differs.
        // A file the survey found as the last run left it, and still planned so, is
        // not read: reading the Kubernetes binaries on every node costs seconds.
        let marker = pending_marker(stage);
        let mut interrupted = false;
        let mut stopped_before = BTreeSet::new();
        if !actions.files.is_empty() {
            let to_compare: Vec<&FileSpec> =
                actions.files.iter().filter(|file| !unchanged.contains(&file.path)).collect();
            progress.step(
                stage,
                node,
                &match actions.files.len() - to_compare.len() {
                    0 => format!("comparing {} files", to_compare.len()),
                    known => format!("comparing {} files ({known} more as recorded)", to_compare.len()),
                },
            );
            let units: Vec<&str> = actions.units.iter().map(|unit| unit.name.as_str()).collect();
            let current = query_file_state(host, stage, &to_compare, &units).map_err(host_error)?;
            interrupted = current.pending;
            stopped_before = current.stopped_units;
            let mut to_write = Vec::new();
            for file in to_compare {
                let as_planned = match current.files.get(&file.path) {
                    None => false,
                    Some(found) => {
                        found.mode == file.mode
                            && found.owner == file.owner
                            && self.holds_planned_content(found, file).map_err(host_error)?
                    }
                };
                if !as_planned {
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
        // What an earlier run applied and the plan no longer has: its units stop before
        // their unit files go, and systemd re-reads its units below.
        self.retire(host, stage, retired, &mut report, progress)?;

        // An interrupted earlier run may have written any of the files: redo all
        // that depends on them.
        let changed: BTreeSet<&str> = if interrupted {
            progress.step(stage, node, "finishing an interrupted run");
            actions.files.iter().map(|file| file.path.as_str()).collect()
        } else {
            report.changed_files.iter().map(String::as_str).collect()
        };

        // 2. systemd must re-read unit files before they are (re)started.
        self.reload_units_if_among(
            host,
            stage,
            changed.iter().copied().chain(report.removed_files.iter().map(String::as_str)),
        )?;

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
        // start together; the readiness checks do the waiting. `enable --no-reload`:
        // enabling only adds the symlinks that start the unit at boot, and by default
        // it makes systemd re-read every unit file even when the unit was enabled
        // already, which on a busy node takes a second and holds up every other
        // systemctl there. Changed unit files were re-read above.
        let earlier = self.earlier_writes_for(actions);
        let mut acted_on = Vec::new();
        for unit in &actions.units {
            let inputs_changed = unit
                .restart_when_changed
                .iter()
                .any(|path| changed.contains(path.as_str()) || earlier.contains(path.as_str()));
            // A unit that must follow the start of another (kube-proxy after firewalld,
            // which flushes its rules) restarts when that one was stopped before the
            // stage, which has started it by now (it comes earlier in the list).
            let follows_a_start =
                unit.restart_after_starting.iter().any(|other| stopped_before.contains(other.as_str()));
            // A unit that was not running before the stage wrote anything reads the new
            // inputs when it starts, whether a command of the stage started it (the
            // container runtime, to import images) or the start below does: a restart
            // would only pay for its start twice. This holds because only the stage
            // that plans a unit, or a later one, starts it.
            let restart = (inputs_changed || follows_a_start) && !stopped_before.contains(unit.name.as_str());
            let script = format!(
                "systemctl enable --quiet --no-reload {name} && {action}",
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
                acted_on.push(unit.name.as_str());
            }
        }
        // A restart queued with `--no-block` may not have begun yet, and a unit being
        // stopped still serves until its process exits (an etcd leader first tries to hand
        // its leadership over, for up to 10 s while its peers restart too): the checks
        // must not pass against the old process. So wait until systemd has no job left
        // for these units, which means the new processes run (and a `Type=notify` one
        // said it is ready).
        if !acted_on.is_empty() {
            let timeout_secs = UNIT_JOBS_TIMEOUT_SECS * u64::from(self.timeout_scale);
            let script = format!(
                "timeout {timeout_secs} sh -c 'while systemctl list-jobs --no-legend {units} | grep -q .; do sleep 0.2; done'",
                units = acted_on.join(" ")
            );
            let output = host.run(&script).map_err(host_error)?;
            if !output.success() {
                return Err(ExecError::Unit {
                    stage,
                    node: node.to_string(),
                    unit: acted_on.join(", "),
                    status: output.status,
                    journal: format!(
                        "systemd still had a job for it after {timeout_secs} s\n{}",
                        journal(host, &acted_on.iter().map(|unit| unit.to_string()).collect::<Vec<_>>())
                    ),
                });
            }
        }

        if !changed.is_empty() {
            self.run_command(host, stage, "clear the in-progress mark", &format!("rm -f {marker}"))?;
            let mut written = self.written.lock().expect("written files lock");
            written.entry(node.to_string()).or_default().extend(changed.iter().map(|path| path.to_string()));
        }

        // 5. Readiness.
        progress.applied(stage, node);
        for check in &actions.checks {
            progress.step(stage, node, &format!("waiting: {}", check.description));
            self.wait_for(host, stage, check, actions)?;
        }

        // 6. The record that lets the next run skip this stage here.
        let identities = planned_identities(actions).map_err(host_error)?;
        let digest = stage_digest(actions, &identities);
        let record = record_script(stage, actions, &identities, &digest);
        self.run_command(host, stage, "record what the stage applied", &record)?;
        Ok(report)
    }

    /// Has systemd on `host` re-read its unit files when `paths` (written or removed)
    /// hold one, so that what starts next starts as planned.
    fn reload_units_if_among<'p>(
        &self,
        host: &dyn Host,
        stage: Stage,
        mut paths: impl Iterator<Item = &'p str>,
    ) -> Result<(), ExecError> {
        if paths.any(|path| path.starts_with("/etc/systemd/")) {
            self.run_command(host, stage, "systemctl daemon-reload", "systemctl daemon-reload")?;
        }
        Ok(())
    }

    /// Stops and disables `retired`'s units, then removes its files, on `host`.
    fn retire(
        &self,
        host: &dyn Host,
        stage: Stage,
        retired: &Retired,
        report: &mut NodeReport,
        progress: &dyn Progress,
    ) -> Result<(), ExecError> {
        let node = host.name();
        for unit in &retired.units {
            progress.step(stage, node, &format!("stopping and disabling {unit}, which the plan no longer has"));
            let unit = shell_quote(unit);
            let script = format!("systemctl disable --now --quiet {unit} 2>/dev/null || systemctl stop {unit} || true");
            self.run_command(host, stage, "stop and disable a unit the plan no longer has", &script)?;
        }
        report.disabled_units.extend(retired.units.iter().cloned());
        if !retired.files.is_empty() {
            progress.step(stage, node, &format!("removing {} files the plan no longer has", retired.files.len()));
            let paths: Vec<String> = retired.files.iter().map(|path| shell_quote(path)).collect();
            self.run_command(
                host,
                stage,
                "remove files the plan no longer has",
                &format!("rm -f -- {}", paths.join(" ")),
            )?;
            report.removed_files.extend(retired.files.iter().cloned());
        }
        Ok(())
    }

    /// A node on which `stage` plans nothing any more but left a record: what it
    /// recorded and no stage plans is retired, and the record goes with it.
    fn retire_orphan(
        &self,
        stage: Stage,
        node: &str,
        retired: &Retired,
        progress: &dyn Progress,
    ) -> Result<NodeReport, ExecError> {
        let host = self.host(stage, node)?;
        let mut report = NodeReport { node: node.to_string(), ..NodeReport::default() };
        self.retire(host, stage, retired, &mut report, progress)?;
        self.reload_units_if_among(host, stage, report.removed_files.iter().map(String::as_str))?;
        let record = format!("{APPLIED_DIR}/{}", stage.name());
        self.run_command(
            host,
            stage,
            "remove the record of a stage the node no longer has",
            &format!("rm -f -- {record}"),
        )?;
        progress.applied(stage, node);
        Ok(report)
    }

    /// The inputs of `actions`' units that an earlier stage of this run wrote on its node.
    fn earlier_writes_for(&self, actions: &NodeActions) -> BTreeSet<String> {
        let written = self.written.lock().expect("written files lock");
        let Some(on_node) = written.get(&actions.node) else {
            return BTreeSet::new();
        };
        actions
            .units
            .iter()
            .flat_map(|unit| &unit.restart_when_changed)
            .filter(|path| on_node.contains(path.as_str()))
            .cloned()
            .collect()
    }

    /// Whether a node's file, as the file state query `found` it, has `file`'s planned
    /// content. The very source of an artifact has it without reading either side.
    fn holds_planned_content(&self, found: &FileState, file: &FileSpec) -> Result<bool, HostError> {
        Ok(match &found.content {
            FoundContent::SourceItself => true,
            FoundContent::Digest(sha256) => *sha256 == self.digests.of(&file.content)?,
        })
    }

    /// The connected host called `node`; `stage` is what the error names.
    fn host(&self, stage: Stage, node: &str) -> Result<&'a dyn Host, ExecError> {
        self.hosts.get(node).copied().ok_or_else(|| ExecError::UnknownNode { stage, node: node.to_string() })
    }

    /// A converged node: only the stage's checks, which report no change.
    fn check_node(
        &self,
        stage: Stage,
        actions: &NodeActions,
        progress: &dyn Progress,
    ) -> Result<NodeReport, ExecError> {
        let node = actions.node.as_str();
        let host = self.host(stage, node)?;
        progress.applied(stage, node);
        for check in &actions.checks {
            progress.step(stage, node, &format!("checking: {}", check.description));
            self.wait_for(host, stage, check, actions)?;
        }
        Ok(NodeReport { node: node.to_string(), ..NodeReport::default() })
    }

    /// Asks every node, in one command each and all nodes in parallel, which of
    /// `stages` are converged there (see the module's documentation).
    pub fn survey(&self, stages: &[StagePlan]) -> Result<Survey, ExecError> {
        let by_node = by_node(stages);
        let first_stage = stages.first().map(|stage| stage.stage).unwrap_or(Stage::Hosts);
        let no_stage = Vec::new();
        let mut outcomes: Vec<Result<Survey, ExecError>> = Vec::new();
        std::thread::scope(|scope| {
            // Every connected node, also one that none of `stages` plans anything on:
            // a record of a stage that plans nothing there any more is found too.
            let handles: Vec<_> = self
                .hosts
                .keys()
                .map(|node| {
                    let planned = by_node.get(node.as_str()).unwrap_or(&no_stage);
                    let unplanned: Vec<Stage> = stages
                        .iter()
                        .map(|stage| stage.stage)
                        .filter(|stage| !planned.iter().any(|(planned, _)| planned == stage))
                        .collect();
                    scope.spawn(move || -> Result<Survey, ExecError> {
                        let host = self.host(first_stage, node)?;
                        let output = host
                            .run(&survey_script(planned, &unplanned))
                            .map_err(|source| ExecError::Host { stage: first_stage, source })?;
                        let found = parse_survey(&output.stdout);
                        let mut on_node = self.planned.get(node.as_str()).cloned().unwrap_or_default();
                        for (_, actions) in planned {
                            on_node.add(actions);
                        }
                        let mut survey = Survey::default();
                        // What a stage recorded on a node it no longer plans anything on
                        // is all retired there, with the record itself.
                        for stage in &unplanned {
                            if let Some(state) = found.get(stage).filter(|state| state.has_record()) {
                                survey.orphaned.insert((*stage, node.clone()), state.retired(&on_node));
                            }
                        }
                        for (stage, actions) in planned {
                            let identities = planned_identities(actions)
                                .map_err(|source| ExecError::Host { stage: *stage, source })?;
                            let digest = stage_digest(actions, &identities);
                            let Some(state) = found.get(stage) else { continue };
                            let key = (*stage, node.clone());
                            let retired = state.retired(&on_node);
                            if retired.is_empty() && state.is_converged(actions, &digest) {
                                survey.converged.insert(key);
                                continue;
                            }
                            if !retired.is_empty() {
                                survey.retired.insert(key.clone(), retired);
                            }
                            survey.unchanged.insert(key, state.unchanged_files(actions, &identities));
                        }
                        Ok(survey)
                    })
                })
                .collect();
            outcomes = handles.into_iter().map(|handle| handle.join().expect("survey worker panicked")).collect();
        });
        let mut survey = Survey::default();
        for outcome in outcomes {
            let node = outcome?;
            survey.converged.extend(node.converged);
            survey.retired.extend(node.retired);
            survey.unchanged.extend(node.unchanged);
            survey.orphaned.extend(node.orphaned);
        }
        Ok(survey)
    }

    /// Runs every check of `stages` on every node, the nodes in parallel and each
    /// node's checks in stage order: the whole work of `lab up` on a converged lab.
    pub fn check_all(&self, stages: &[StagePlan], progress: &dyn Progress) -> Result<Vec<StageReport>, ExecError> {
        let by_node = by_node(stages);
        let timings: Mutex<BTreeMap<Stage, Duration>> = Mutex::new(BTreeMap::new());
        let mut outcomes: Vec<Result<(), ExecError>> = Vec::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = by_node
                .values()
                .map(|planned| {
                    let timings = &timings;
                    scope.spawn(move || -> Result<(), ExecError> {
                        for (stage, actions) in planned {
                            let started = Instant::now();
                            self.check_node(*stage, actions, progress)?;
                            let mut timings = timings.lock().expect("timings lock");
                            let longest = timings.entry(*stage).or_default();
                            *longest = (*longest).max(started.elapsed());
                        }
                        Ok(())
                    })
                })
                .collect();
            outcomes = handles.into_iter().map(|handle| handle.join().expect("check worker panicked")).collect();
        });
        outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
        let timings = timings.into_inner().expect("timings lock");
        Ok(stages
            .iter()
            .map(|stage| StageReport {
                stage: stage.stage,
                nodes: stage
                    .nodes
                    .iter()
                    .map(|actions| NodeReport { node: actions.node.clone(), ..NodeReport::default() })
                    .collect(),
                changed_local_files: Vec::new(),
                elapsed: timings.get(&stage.stage).copied().unwrap_or_default(),
            })
            .collect())
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

/// How one node stands against one stage's plan, as `Executor::inspect` found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInspection {
    pub node: String,
    /// What `lab up` would change on the node: files, units, an unfinished run.
    pub differences: Vec<Difference>,
    /// Each readiness check of the stage, run once (none when only compared).
    pub checks: Vec<CheckOutcome>,
}

impl NodeInspection {
    /// Whether the node matches the plan and passed every check that ran.
    pub fn passed(&self) -> bool {
        self.differences.is_empty() && self.checks.iter().all(|check| check.passed)
    }
}

/// One way a node differs from a stage's plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Difference {
    /// A planned file is not on the node.
    MissingFile { path: String },
    /// A planned file holds other content than the plan's.
    Content { path: String },
    /// A planned file has another mode (both in octal).
    Mode { path: String, planned: String, found: String },
    /// A planned file belongs to another user.
    Owner { path: String, planned: String, found: String },
    /// A planned unit is not running; `state` is what `systemctl is-active` says.
    UnitNotActive { unit: String, state: String },
    /// A `lab up` was interrupted in this stage on the node and has not finished it.
    Interrupted,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::MissingFile { path } => write!(f, "{path} is missing"),
            Difference::Content { path } => write!(f, "{path} differs from the plan"),
            Difference::Mode { path, planned, found } => write!(f, "{path} has mode {found}, the plan says {planned}"),
            Difference::Owner { path, planned, found } => {
                write!(f, "{path} belongs to {found}, the plan says {planned}")
            }
            Difference::UnitNotActive { unit, state } => write!(f, "{unit} is not running ({state})"),
            Difference::Interrupted => f.write_str("a `lab up` stopped half way through this stage"),
        }
    }
}

/// One readiness check, run once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckOutcome {
    pub description: String,
    pub passed: bool,
    /// The last lines it printed, when it failed.
    pub output: String,
}

/// How long one attempt of a readiness check may take in `inspect`, on machines at
/// the host's speed: the checks' own timeouts are for retrying, not for one try.
const CHECK_ATTEMPT_SECS: u64 = 20;

/// Marks the unit state query so fakes can answer it.
pub const UNIT_STATE_QUERY: &str = "# lab: unit state\n";

impl Executor<'_> {
    /// Compares every node of `stage` with its plan (file contents, modes and owners,
    /// units running, an unfinished run) and, with `run_checks`, runs each of its
    /// readiness checks once; the nodes in parallel. Changes nothing: this is `lab
    /// check` and `lab diff`, for a learner who did a chapter by hand.
    pub fn inspect(&self, stage: &StagePlan, run_checks: bool) -> Result<Vec<NodeInspection>, ExecError> {
        let mut outcomes: Vec<Result<NodeInspection, ExecError>> = Vec::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = stage
                .nodes
                .iter()
                .map(|actions| scope.spawn(move || self.inspect_node(stage.stage, actions, run_checks)))
                .collect();
            outcomes = handles.into_iter().map(|handle| handle.join().expect("inspect worker panicked")).collect();
        });
        outcomes.into_iter().collect()
    }

    fn inspect_node(&self, stage: Stage, actions: &NodeActions, run_checks: bool) -> Result<NodeInspection, ExecError> {
        let host = self.host(stage, &actions.node)?;
        let host_error = |source| ExecError::Host { stage, source };
        let mut differences = Vec::new();

        let files: Vec<&FileSpec> = actions.files.iter().collect();
        let current = query_file_state(host, stage, &files, &[]).map_err(host_error)?;
        if current.pending {
            differences.push(Difference::Interrupted);
        }
        for file in &actions.files {
            let path = file.path.clone();
            let Some(found) = current.files.get(&file.path) else {
                differences.push(Difference::MissingFile { path });
                continue;
            };
            if !self.holds_planned_content(found, file).map_err(host_error)? {
                differences.push(Difference::Content { path: path.clone() });
            }
            if found.mode != file.mode {
                let (planned, found) = (format!("{:04o}", file.mode), format!("{:04o}", found.mode));
                differences.push(Difference::Mode { path: path.clone(), planned, found });
            }
            if found.owner != file.owner {
                differences.push(Difference::Owner { path, planned: file.owner.clone(), found: found.owner.clone() });
            }
        }

        if !actions.units.is_empty() {
            let units: Vec<String> = actions.units.iter().map(|unit| shell_quote(&unit.name)).collect();
            let script = format!(
                "{UNIT_STATE_QUERY}for u in {}; do printf '%s %s\\n' \"$u\" \"$(systemctl is-active \"$u\")\"; done; true",
                units.join(" ")
            );
            let output = host.run(&script).map_err(host_error)?;
            let states: HashMap<&str, &str> = output.stdout.lines().filter_map(|line| line.split_once(' ')).collect();
            for unit in &actions.units {
                let state = states.get(unit.name.as_str()).copied().unwrap_or("unknown");
                if state != "active" {
                    differences.push(Difference::UnitNotActive { unit: unit.name.clone(), state: state.to_string() });
                }
            }
        }

        let mut checks = Vec::new();
        if run_checks {
            let attempt = CHECK_ATTEMPT_SECS * u64::from(self.timeout_scale);
            for check in &actions.checks {
                let script = format!("timeout {attempt} sh -c {}", shell_quote(&check.script));
                let output = host.run(&script).map_err(host_error)?;
                // `timeout` exits with 124 when it stopped the check.
                let said = match output.status {
                    0 => String::new(),
                    124 => format!("no answer within {attempt} s"),
                    _ => tail(&format!("{}{}", output.stdout, output.stderr), 10),
                };
                checks.push(CheckOutcome {
                    description: check.description.clone(),
                    passed: output.success(),
                    output: said,
                });
            }
        }
        Ok(NodeInspection { node: actions.node.clone(), differences, checks })
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

/// The state of a file on a node that decides whether it must be written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    content: FoundContent,
    mode: u32,
    owner: String,
}

/// What the file state query says of a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FoundContent {
    Digest(String),
    /// The file is the artifact's source file itself: an nspawn node's hard link into
    /// the cache, found by inode, size and modification time (`SOURCE_SIGNATURE`). Its
    /// content is the plan's by definition, and hashing Kubernetes' binaries on every
    /// new node, and on the host to compare, would cost seconds.
    SourceItself,
}

/// What the file state query prints instead of a digest for `FoundContent::SourceItself`.
const SOURCE_ITSELF: &str = "source-itself";

/// The `stat` format that tells an artifact's source file from any other: its size,
/// inode and modification time to the nanosecond. Not the device, which an nspawn
/// node's overlay root reports as its own for the same inode.
const SOURCE_SIGNATURE: &str = "%s %i %.9Y";

/// The signature (`SOURCE_SIGNATURE`) of `file`'s source on this host, if it is an
/// artifact that can be read.
fn source_signature(file: &FileSpec) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let Content::Artifact { path } = &file.content else {
        return None;
    };
    let metadata = std::fs::metadata(path).ok()?;
    let modified = metadata.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{} {} {}.{:09}", metadata.len(), metadata.ino(), modified.as_secs(), modified.subsec_nanos()))
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
/// `SHA256 MODE OWNER PATH` for every existing planned file (`source-itself` instead
/// of the digest for an artifact's source file itself), then `stopped-unit UNIT` for
/// each of `units` that is not running.
pub fn file_state_script(stage: Stage, files: &[&FileSpec], units: &[&str]) -> String {
    let mut script = String::from(FILE_STATE_QUERY);
    script.push_str(&format!("[ -e {} ] && echo {PENDING_LINE}; ", pending_marker(stage)));
    script.push_str(
        "h() { [ -f \"$1\" ] && printf '%s %s %s\\n' \"$(sha256sum < \"$1\" | cut -d' ' -f1)\" \"$(stat -c '%a %U' \"$1\")\" \"$1\"; }; ",
    );
    let mut hashed = Vec::new();
    let mut sourced = Vec::new();
    for file in files {
        match source_signature(file) {
            Some(signature) => sourced.push((file.path.as_str(), signature)),
            None => hashed.push(shell_quote(&file.path)),
        }
    }
    if !hashed.is_empty() {
        script.push_str(&format!("for f in {}; do h \"$f\"; done; ", hashed.join(" ")));
    }
    if !sourced.is_empty() {
        script.push_str(&format!(
            "a() {{ if [ \"$(stat -c '{SOURCE_SIGNATURE}' \"$1\" 2>/dev/null)\" = \"$2\" ]; then \
             printf '{SOURCE_ITSELF} %s %s\\n' \"$(stat -c '%a %U' \"$1\")\" \"$1\"; else h \"$1\"; fi; }}; "
        ));
        for (path, signature) in sourced {
            script.push_str(&format!("a {} '{signature}'; ", shell_quote(path)));
        }
    }
    if !units.is_empty() {
        script.push_str("for u in");
        for unit in units {
            script.push(' ');
            script.push_str(&shell_quote(unit));
        }
        script.push_str(&format!(
            "; do case \"$(systemctl is-active \"$u\")\" in inactive|failed) echo \"{STOPPED_UNIT_PREFIX}$u\";; esac; done; "
        ));
    }
    script.push_str("true");
    script
}

/// What the file state query prints before each of the stage's units that is not
/// running (systemd says `inactive` or `failed`; one that is starting or stopping
/// counts as running, since its process may have read the old files).
const STOPPED_UNIT_PREFIX: &str = "stopped-unit ";

/// What a node has of a stage's files, whether the stage was interrupted there, and
/// which of its units were not running.
struct NodeFiles {
    files: HashMap<String, FileState>,
    pending: bool,
    stopped_units: BTreeSet<String>,
}

fn query_file_state(
    host: &dyn Host,
    stage: Stage,
    files: &[&FileSpec],
    units: &[&str],
) -> Result<NodeFiles, HostError> {
    let output = host.run(&file_state_script(stage, files, units))?;
    let mut state = HashMap::new();
    let mut pending = false;
    let mut stopped_units = BTreeSet::new();
    for line in output.stdout.lines() {
        if line == PENDING_LINE {
            pending = true;
            continue;
        }
        if let Some(unit) = line.strip_prefix(STOPPED_UNIT_PREFIX) {
            stopped_units.insert(unit.to_string());
            continue;
        }
        let mut fields = line.splitn(4, ' ');
        let (Some(sha256), Some(mode), Some(owner), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(mode) = u32::from_str_radix(mode, 8) else { continue };
        let content = match sha256 {
            SOURCE_ITSELF => FoundContent::SourceItself,
            digest => FoundContent::Digest(digest.to_string()),
        };
        state.insert(path.to_string(), FileState { content, mode, owner: owner.to_string() });
    }
    Ok(NodeFiles { files: state, pending, stopped_units })
}

/// Where a node keeps, per stage, what the stage last applied there.
pub const APPLIED_DIR: &str = "/var/lib/k8s-lab/applied";

/// Marks the survey so fakes can answer it.
pub const SURVEY_QUERY: &str = "# lab: survey\n";

/// The `stat` format of a file's signature: changes whenever the file is written
/// (size, modification time to the nanosecond), replaced (inode), or has its mode or
/// owner changed. Not the change time: nspawn nodes share their Kubernetes binaries and
/// images with the cache as hard links, and making or removing another node changes
/// the shared inode's change time, which would find every node's files edited.
const SIGNATURE_FORMAT: &str = "%n %s %i %.9Y %a %U";

/// Which stages are converged on which nodes, from `Executor::survey`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    converged: BTreeSet<(Stage, String)>,
    /// What each stage applied on a node that the plan no longer has there.
    retired: BTreeMap<(Stage, String), Retired>,
    /// Of a stage that is not converged on a node, the files that are as it left them
    /// and still planned so: the stage does not read them again.
    unchanged: BTreeMap<(Stage, String), BTreeSet<String>>,
    /// Stages that recorded work on a node they no longer plan anything on (a
    /// topology or lab change): what they recorded there and no stage plans.
    orphaned: BTreeMap<(Stage, String), Retired>,
}

/// Files and units a stage applied on a node in an earlier run that no stage of the
/// plan has on that node now: the stage removes them when it runs there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    pub files: Vec<String>,
    pub units: Vec<String>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.units.is_empty()
    }
}

/// Nothing retired, for stages that were not surveyed.
static NOTHING_RETIRED: Retired = Retired { files: Vec::new(), units: Vec::new() };
/// No file known to be unchanged, for stages that were not surveyed.
static NOTHING_UNCHANGED: BTreeSet<String> = BTreeSet::new();

impl Survey {
    pub fn is_converged(&self, stage: Stage, node: &str) -> bool {
        self.converged.contains(&(stage, node.to_string()))
    }

    /// What `stage` applied on `node` that the plan no longer has there.
    pub fn retired(&self, stage: Stage, node: &str) -> &Retired {
        self.retired.get(&(stage, node.to_string())).unwrap_or(&NOTHING_RETIRED)
    }

    /// The files of `stage` on `node` that need not be read again (see `Survey`).
    pub fn unchanged_files(&self, stage: Stage, node: &str) -> &BTreeSet<String> {
        self.unchanged.get(&(stage, node.to_string())).unwrap_or(&NOTHING_UNCHANGED)
    }

    /// Whether every node of every one of `stages` is converged, and none of them left
    /// a record on a node it no longer plans anything on.
    pub fn covers(&self, stages: &[StagePlan]) -> bool {
        self.first_not_converged(stages).is_none()
            && !stages.iter().any(|stage| self.orphaned.keys().any(|(orphan, _)| *orphan == stage.stage))
    }

    /// The nodes on which `stage` left a record but plans nothing now, with what it
    /// recorded there that no stage plans.
    pub fn orphaned(&self, stage: Stage) -> impl Iterator<Item = (&str, &Retired)> {
        self.orphaned
            .iter()
            .filter(move |((orphan, _), _)| *orphan == stage)
            .map(|((_, node), retired)| (node.as_str(), retired))
    }

    /// The first of `stages` that is not converged on every node, with the nodes
    /// where it is not.
    pub fn first_not_converged(&self, stages: &[StagePlan]) -> Option<(Stage, Vec<String>)> {
        stages.iter().find_map(|stage| {
            let nodes: Vec<String> = stage
                .nodes
                .iter()
                .filter(|actions| !self.is_converged(stage.stage, &actions.node))
                .map(|actions| actions.node.clone())
                .collect();
            (!nodes.is_empty()).then_some((stage.stage, nodes))
        })
    }
}

/// What a node reported of one stage.
#[derive(Debug, Default)]
struct StageState {
    pending: bool,
    digest: Option<String>,
    /// Signatures recorded when the stage last passed, by path.
    recorded: HashMap<String, String>,
    /// The units the stage ran when it last passed.
    recorded_units: Vec<String>,
    /// `planned_identity` of each file when the stage last passed, by path.
    recorded_wanted: HashMap<String, String>,
    /// Signatures now, by path.
    current: HashMap<String, String>,
    inactive_units: Vec<String>,
}

impl StageState {
    /// What the record lists that `planned` (everything the plan has on the node)
    /// does not, in a stable order.
    fn retired(&self, planned: &Planned) -> Retired {
        let mut files: Vec<String> =
            self.recorded.keys().filter(|path| !planned.files.contains(*path)).cloned().collect();
        files.sort();
        let mut units: Vec<String> =
            self.recorded_units.iter().filter(|unit| !planned.units.contains(*unit)).cloned().collect();
        units.sort();
        Retired { files, units }
    }

    /// Whether the node has a record of the stage (not only its files' signatures).
    fn has_record(&self) -> bool {
        self.digest.is_some()
    }

    /// The files of `actions` that are as the stage last left them (same signature)
    /// and that the plan still wants as it did then: they need not be read again.
    fn unchanged_files(&self, actions: &NodeActions, identities: &PlannedIdentities) -> BTreeSet<String> {
        let mut unchanged = BTreeSet::new();
        for file in &actions.files {
            let recorded = self.recorded.get(&file.path);
            if recorded.is_some()
                && recorded == self.current.get(&file.path)
                && self.recorded_wanted.get(&file.path) == identities.get(&file.path)
            {
                unchanged.insert(file.path.clone());
            }
        }
        unchanged
    }

    fn is_converged(&self, actions: &NodeActions, digest: &str) -> bool {
        !self.pending
            && self.digest.as_deref() == Some(digest)
            && self.inactive_units.is_empty()
            && actions.files.iter().all(|file| {
                let recorded = self.recorded.get(&file.path);
                recorded.is_some() && recorded == self.current.get(&file.path)
            })
    }
}

/// Each node's part of every one of `stages`, in stage order.
fn by_node(stages: &[StagePlan]) -> BTreeMap<&str, Vec<(Stage, &NodeActions)>> {
    let mut by_node: BTreeMap<&str, Vec<(Stage, &NodeActions)>> = BTreeMap::new();
    for stage in stages {
        for actions in &stage.nodes {
            by_node.entry(actions.node.as_str()).or_default().push((stage.stage, actions));
        }
    }
    by_node
}

/// The command that prints `LABEL PATH SIGNATURE` for each of `files` that exists.
fn signatures(label: &str, files: &[FileSpec]) -> String {
    let paths: Vec<String> = files.iter().map(|file| shell_quote(&file.path)).collect();
    format!("stat -c '{label} {SIGNATURE_FORMAT}' -- {} 2>/dev/null", paths.join(" "))
}

/// The command that records, after a stage passed on a node, its digest and the
/// signature of each of its files.
fn record_script(stage: Stage, actions: &NodeActions, identities: &PlannedIdentities, digest: &str) -> String {
    let record = format!("{APPLIED_DIR}/{}", stage.name());
    let mut script = format!("mkdir -p {APPLIED_DIR} && {{ echo 'digest {digest}'; ");
    if !actions.files.is_empty() {
        // A file that is gone is left out of the record, so the next survey finds the
        // stage unconverged instead of this run failing.
        script.push_str(&format!("{} || true; ", signatures("file", &actions.files)));
    }
    // What the plan wanted of each file, so that a later run whose plan changed
    // elsewhere in the stage knows this file is still as planned without reading it.
    for (path, identity) in identities {
        script.push_str(&format!("echo {}; ", shell_quote(&format!("wanted {path} {identity}"))));
    }
    for unit in &actions.units {
        script.push_str(&format!("echo {}; ", shell_quote(&format!("unit {}", unit.name))));
    }
    script.push_str(&format!("}} > {record}.tmp && mv -f {record}.tmp {record}"));
    script
}

/// The one command per node that `Executor::survey` runs: for each stage, its
/// pending marker, its record, its files' signatures now and its units that do not
/// run; for each stage that plans nothing on the node, its record.
fn survey_script(planned: &[(Stage, &NodeActions)], unplanned: &[Stage]) -> String {
    let mut script = String::from(SURVEY_QUERY);
    for stage in unplanned {
        let name = stage.name();
        script.push_str(&format!("echo 'stage {name}'; cat {APPLIED_DIR}/{name} 2>/dev/null; "));
    }
    for (stage, actions) in planned {
        let name = stage.name();
        script.push_str(&format!(
            "echo 'stage {name}'; [ -e {PENDING_DIR}/{name} ] && echo {PENDING_LINE}; cat {APPLIED_DIR}/{name} 2>/dev/null; "
        ));
        if !actions.files.is_empty() {
            script.push_str(&format!("{}; ", signatures("now", &actions.files)));
        }
        for unit in &actions.units {
            script.push_str(&format!(
                "systemctl is-active --quiet {unit} || echo 'inactive {unit}'; ",
                unit = shell_quote(&unit.name)
            ));
        }
    }
    script.push_str("true");
    script
}

fn parse_survey(stdout: &str) -> HashMap<Stage, StageState> {
    let mut stages: HashMap<Stage, StageState> = HashMap::new();
    let mut current: Option<Stage> = None;
    for line in stdout.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "stage" {
            current = Stage::from_name(rest);
            continue;
        }
        let Some(stage) = current else { continue };
        let state = stages.entry(stage).or_default();
        match word {
            PENDING_LINE => state.pending = true,
            "digest" => state.digest = Some(rest.to_string()),
            "file" | "now" => {
                let (path, signature) = rest.split_once(' ').unwrap_or((rest, ""));
                let map = if word == "file" { &mut state.recorded } else { &mut state.current };
                map.insert(path.to_string(), signature.to_string());
            }
            "wanted" => {
                let (path, identity) = rest.rsplit_once(' ').unwrap_or((rest, ""));
                state.recorded_wanted.insert(path.to_string(), identity.to_string());
            }
            "inactive" => state.inactive_units.push(rest.to_string()),
            "unit" => state.recorded_units.push(rest.to_string()),
            _ => {}
        }
    }
    stages
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

/// What the stage plans for one node, as one digest: every file's path and planned
/// identity, every unit and every command.
fn stage_digest(actions: &NodeActions, identities: &PlannedIdentities) -> String {
    let mut hasher = Sha256::new();
    let mut field = |text: &str| {
        hasher.update(text.len().to_le_bytes());
        hasher.update(text.as_bytes());
    };
    for file in &actions.files {
        field(&file.path);
        field(identities.get(&file.path).map_or("", String::as_str));
    }
    for unit in &actions.units {
        field(&unit.name);
        field(&unit.restart_when_changed.join(" "));
        // Only where set, so that the records of the other units stay as they were.
        if !unit.restart_after_starting.is_empty() {
            field(&unit.restart_after_starting.join(" "));
        }
    }
    for command in &actions.commands {
        field(&command.script);
        field(&format!("{:?}", command.when));
    }
    hex::encode(hasher.finalize())
}

/// `planned_identity` of each file of one stage on one node, by path.
type PlannedIdentities = BTreeMap<String, String>;

/// The planned identities of `actions`' files, worked out once per stage and node for
/// its digest, its record and the comparison with what was recorded.
fn planned_identities(actions: &NodeActions) -> Result<PlannedIdentities, HostError> {
    actions.files.iter().map(|file| Ok((file.path.clone(), planned_identity(file)?))).collect()
}

/// What the plan wants of one file, cheaply: its mode, owner and content, where an
/// artifact's content counts by its local path, size and modification time, so no
/// large file is read for it.
fn planned_identity(file: &FileSpec) -> Result<String, HostError> {
    let content = match &file.content {
        Content::Text(text) | Content::Secret(text) => hex::encode(Sha256::digest(text.as_bytes())),
        Content::Artifact { path } => {
            let metadata = std::fs::metadata(path)
                .map_err(|e| HostError::Local { path: path.display().to_string(), message: e.to_string() })?;
            let modified = metadata
                .modified()
                .ok()
                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            format!("{} {} {}", path.display(), metadata.len(), modified.as_nanos())
        }
    };
    Ok(hex::encode(Sha256::digest(format!("{:o} {} {content}", file.mode, file.owner).as_bytes())))
}

/// Writes a host-side file if its content or mode differs; returns whether it did.
fn write_local(file: &FileSpec) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
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
    crate::system::write_atomically(path, bytes, file.mode)?;
    Ok(true)
}
