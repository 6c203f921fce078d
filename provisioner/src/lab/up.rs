//! `Lab::up`: preflight, artifacts, machines, then every stage of the plan in
//! handbook order, and the proof that the cluster serves. Each part is done once:
//! the topology, the preflight, the PKI and plan, the key pair and one SSH session
//! per node.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::rejoin;
use super::reporter::Steps;
use super::{Event, Lab, LabError, Reporter, Resume};
use crate::executor::{ExecError, Executor, Progress, StageReport, Survey};
use crate::host::Host;
use crate::machines::boot_watch::{last_console_line, BootWatch};
use crate::machines::{self, MachineState, NodeImage, NodeSpec, PreloadedFile, StartOutcome};
use crate::plan::{Content, Plan, Stage, StagePlan};
use crate::preflight::{PreflightError, Report, Status};
use crate::readiness;
use crate::ssh::KeyPair;
use crate::text;
use crate::topology::{self, Node, Role};
use crate::{paths, pki};

/// How long every node together may take from start to answering SSH. A node
/// answers in about two seconds; a loaded host may need many times that.
const SSH_TIMEOUT: Duration = Duration::from_secs(180);

/// One connection attempt within `SSH_TIMEOUT`: short, so a node whose machine
/// died is noticed between attempts instead of after the whole timeout.
const SSH_ATTEMPT: Duration = Duration::from_secs(5);

/// How often a slow start, or a node that does not answer SSH yet, gets a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where `lab up` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once every machine answers SSH.
    Machines,
    /// After this stage passed its checks.
    Stage(Stage),
    /// After the whole plan, and the proof that the cluster serves.
    Everything,
}

/// How `lab up` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpOptions {
    pub until: Until,
    /// The first stage to run (`--from`, `--only`); the stages before it must already
    /// match the plan on every node, or nothing runs. `None` runs every stage.
    pub from: Option<Stage>,
    /// Pause before each stage (`lab up --step`): the reporter decides whether to run
    /// it or stop there. A converged lab goes through its stages one by one too.
    pub step: bool,
    /// Install what the host lacks (Debian packages, the deb-src entry,
    /// cargo-nextest) before the preflight decides; without it a host that lacks
    /// something is refused with the fixes, as `lab doctor --check` reports them.
    pub set_up_host: bool,
}

impl From<Until> for UpOptions {
    /// `lab up` to `until` on a host that is already set up.
    fn from(until: Until) -> Self {
        UpOptions { until, from: None, step: false, set_up_host: false }
    }
}

/// What a finished `lab up` did.
#[derive(Debug)]
pub struct UpReport {
    /// The stages that ran (or, on a lab that matched its plan, were checked).
    pub stages: Vec<StageReport>,
    pub elapsed: Duration,
    pub until: Until,
}

impl UpReport {
    pub fn changed_files(&self) -> usize {
        self.stages.iter().map(StageReport::changed_files).sum()
    }

    pub fn changed_units(&self) -> usize {
        self.stages.iter().map(StageReport::changed_units).sum()
    }

    /// Files and units the plan no longer has, removed from the nodes.
    pub fn removed(&self) -> usize {
        self.stages.iter().map(StageReport::removed).sum()
    }
}

impl Lab {
    /// Installs what `report` found missing, saying first in one block what and
    /// why, and returns the host's report afterwards. Without root or apt the host
    /// is left as it is and the unchanged report refuses the lab with the fixes.
    fn set_up_host(&self, report: Report, reporter: &dyn Reporter) -> Result<Report, LabError> {
        let say = |text: &str| reporter.report(Event::Progress(text));
        say("preflight: the host lacks what the lab needs; installing it (`lab up --no-install` refuses instead):");
        for finding in report.findings.iter().filter(|finding| finding.status != Status::Ok && finding.fix.is_some()) {
            say(&format!("  - {}: {}", finding.check, finding.detail));
        }
        match self.surroundings.set_up_host(&report, &say) {
            Ok(_) => Ok(self.host_report()),
            Err(
                PreflightError::NotRoot { .. } | PreflightError::NoApt { .. } | PreflightError::DebSrcNotRoot { .. },
            ) => Ok(report),
            Err(error) => Err(LabError::HostSetup(error)),
        }
    }

    /// Builds the lab as far as `options.until`, converging from whatever state it finds. Once the
    /// state directory is claimed, `STATE/timings.json` records every step and stage
    /// of the run, failed or not, and a failure leaves a log bundle where there are
    /// nodes to collect from.
    pub fn up(&self, options: UpOptions, reporter: &dyn Reporter) -> Result<UpReport, LabError> {
        let started = Instant::now();
        let timeline = Timeline::default();
        let outcome = self.run_up(options, reporter, &timeline);
        if !timeline.claimed() {
            return outcome.map(|(stages, until)| UpReport { stages, elapsed: started.elapsed(), until });
        }
        let written = self.write_timings(&timeline, started.elapsed(), outcome.is_err());
        match outcome {
            Ok((stages, until)) => {
                written?;
                Ok(UpReport { stages, elapsed: started.elapsed(), until })
            }
            // The run's own error is the one to report; the timings are evidence.
            Err(error) => Err(error),
        }
    }

    /// The stages that ran, and where the run stopped: `options.until`, or earlier
    /// when a pause of `--step` said to stop.
    fn run_up(
        &self,
        options: UpOptions,
        reporter: &dyn Reporter,
        timeline: &Timeline,
    ) -> Result<(Vec<StageReport>, Until), LabError> {
        let until = options.until;
        if let Some(from) = options.from {
            let past_until = match until {
                Until::Machines => Some("machines".to_string()),
                Until::Stage(last) if from.position() > last.position() => Some(last.name().to_string()),
                _ => None,
            };
            if let Some(until) = past_until {
                return Err(LabError::FromAfterUntil { from, until });
            }
        }
        let say = |text: &str| reporter.report(Event::Progress(text));
        let machines = self.machines()?;
        machines::check_state_dir(&self.paths.state_dir, &self.topology.name, self.topology.machines.backend)?;
        let removed = self.removed_workers(reporter)?;

        let step = Instant::now();
        let mut report = self.host_report();
        if options.set_up_host && report.fixable() {
            report = self.set_up_host(report, reporter)?;
        }
        let warnings: Vec<_> = report.findings.iter().filter(|finding| finding.status == Status::Warn).collect();
        for finding in &warnings {
            let fix = finding.fix.as_deref().map(|fix| format!(" (fix: {fix})")).unwrap_or_default();
            reporter.report(Event::Warning(&format!("{}: {}{fix}", finding.check, finding.detail)));
        }
        let failures: Vec<_> = report.failures().cloned().collect();
        // A refused run claims no state directory, so its timings are never written.
        timeline.record_step("preflight", step.elapsed(), failures.is_empty());
        if !failures.is_empty() {
            return Err(LabError::HostNotReady { failures });
        }
        say(&format!(
            "preflight: the host can run {} nodes ({} checks, {} warnings, {})",
            machines.backend(),
            report.findings.len(),
            warnings.len(),
            seconds(step)
        ));

        machines::claim_state_dir(&self.paths.state_dir, &self.topology)?;
        timeline.claim();
        let plan = self.plan()?;
        let key = self.key_pair()?;
        // The artifacts come before the machines, so that a new node's disk can be made
        // with them in place (`NodeSpec::preload`). The node image does not depend on
        // them: on a fresh host it is built meanwhile (mmdebstrap mostly waits on the
        // disk and dpkg while the Kubernetes build keeps the CPUs busy).
        let artifacts_ready = until != Until::Machines;
        let (image, artifacts) = std::thread::scope(|scope| {
            let image = scope.spawn(|| ensure_image(machines, reporter, timeline));
            let artifacts = artifacts_ready.then(|| {
                timeline.step("artifacts", || {
                    self.surroundings.ensure_artifacts(&self.topology, &self.paths.cache_dir, &say)
                })
            });
            (image.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), artifacts)
        });
        if let Some(Err(source)) = artifacts {
            let bundle = match self.write_log_bundle(plan, &[], &source) {
                Ok(dir) => format!("log bundle: {}", dir.display()),
                Err(bundle_error) => format!("(no log bundle: {bundle_error})"),
            };
            return Err(LabError::Artifacts { bundle, source });
        }
        // `lab down --node` cordoned the workers it powered off; powering them on
        // uncordons them. A worker with no machine yet has never been cordoned.
        let powering_on_a_worker = self
            .topology
            .nodes_with(Role::Worker)
            .any(|worker| matches!(machines.status(&worker.name), Ok(MachineState::Stopped)));
        let MachinesUp { hosts, rejoining } =
            self.up_machines(plan, &image?, artifacts_ready, &key, reporter, timeline)?;
        if powering_on_a_worker {
            self.uncordon_powered_on(&hosts, until == Until::Machines, reporter);
        }
        if !rejoining.is_empty() {
            self.rejoin_service_route(&plan.network, machines, &hosts, &rejoining, reporter)?;
        }
        if until == Until::Machines {
            return Ok((Vec::new(), until));
        }
        if !removed.is_empty() {
            if until == Until::Everything && options.from.is_none() {
                timeline.step("remove nodes", || self.remove_workers(&removed, &hosts, reporter))?;
            } else {
                reporter.report(Event::Warning(&format!(
                    "{} no longer in the topology: a whole `lab up` removes them",
                    removed.join(", ")
                )));
            }
        }

        let bundle = |error: &dyn std::fmt::Display| match self.write_log_bundle(plan, &hosts, error) {
            Ok(dir) => format!("log bundle: {}", dir.display()),
            Err(bundle_error) => format!("(no log bundle: {bundle_error})"),
        };
        let through = match until {
            Until::Stage(last) => {
                let count =
                    plan.stages.iter().position(|stage| stage.stage == last).map_or(plan.stages.len(), |i| i + 1);
                &plan.stages[..count]
            }
            _ => &plan.stages[..],
        };
        let first = options.from.map_or(0, |from| through.iter().take_while(|stage| stage.stage != from).count());
        let (before, stages) = through.split_at(first);
        let time_scale = machines.time_scale();
        let executor = Executor::new(hosts.iter().map(|host| host.as_ref()))
            .with_timeout_scale(time_scale)
            .with_whole_plan(&plan.stages);

        // One query per node says which stages are converged where. A lab that
        // matches its whole plan only has its checks run, all nodes at once, and the
        // host-side proof alongside them: nothing changes on a converged lab.
        let survey = timeline
            .step("survey", || executor.survey(through))
            .map_err(|source| LabError::Stage { bundle: bundle(&source), source: Box::new(source) })?;
        // `--from` builds on the stages before it as they are, so they must be done:
        // a stage started on a half-built lab fails in ways that teach nothing.
        if let Some(undone) = survey.first_not_converged(before) {
            return Err(LabError::EarlierStageNotDone {
                from: stages.first().map_or(undone.0, |stage| stage.stage),
                stage: undone.0,
                nodes: undone.1.join(", "),
            });
        }
        if !options.step && survey.covers(stages) {
            say("every node matches the plan: running the checks");
            reporter.report(Event::ChecksStarted);
            let checks_started = Instant::now();
            let abandon = AtomicBool::new(false);
            let (checked, ready) = std::thread::scope(|scope| {
                let ready = (until == Until::Everything).then(|| {
                    scope.spawn(|| {
                        let proof_started = Instant::now();
                        let proof = self.prove_ready(plan, reporter, &abandon);
                        (proof, proof_started.elapsed())
                    })
                });
                let checked = executor.check_all(stages, &Steps(reporter));
                // A failed check means every stage runs next: the proof of this state
                // is not worth waiting for.
                abandon.store(checked.is_err(), Ordering::Relaxed);
                (checked, ready.map(|handle| handle.join().expect("readiness thread panicked")))
            });
            timeline.record_step("checks", checks_started.elapsed(), checked.is_ok());
            if let Some((proof, took)) = &ready {
                timeline.record_step("readiness", *took, proof.is_ok());
            }
            match checked {
                Ok(reports) => {
                    reporter.report(Event::ChecksDone { stages: reports.len(), elapsed: checks_started.elapsed() });
                    if let Some((Err(source), _)) = ready {
                        return Err(LabError::NotReady { bundle: bundle(&source), source });
                    }
                    for report in &reports {
                        timeline.record_stage(report.stage, report.elapsed, Some(report));
                    }
                    return Ok((reports, until));
                }
                Err(error) => {
                    reporter.report(Event::ChecksFailed);
                    say(&format!("a check failed on a lab that matched its plan ({error}); running every stage"));
                }
            }
        }

        // `--step` pauses between chapters, so it runs them one at a time in handbook
        // order; otherwise each stage starts as soon as the stages it needs passed.
        let reports = if options.step {
            let mut reports = Vec::new();
            let total = stages.len();
            for (index, stage) in stages.iter().enumerate() {
                if reporter.pause(stage.stage) == Resume::Stop {
                    // Stopped before this stage: the lab stands after the one before it.
                    let done = through[..first + index].last();
                    return Ok((reports, done.map_or(Until::Machines, |stage| Until::Stage(stage.stage))));
                }
                reporter.report(Event::StageStarted { number: index + 1, total, stage: stage.stage });
                let stage_started = Instant::now();
                match executor.run_stage_surveyed(stage, &survey, &Steps(reporter)) {
                    Ok(report) => {
                        reporter.report(Event::StageDone { report: &report });
                        timeline.record_stage(report.stage, report.elapsed, Some(&report));
                        reports.push(report);
                    }
                    Err(source) => {
                        reporter.report(Event::StageFailed { stage: stage.stage, elapsed: stage_started.elapsed() });
                        timeline.record_stage(stage.stage, stage_started.elapsed(), None);
                        return Err(LabError::Stage { bundle: bundle(&source), source: Box::new(source) });
                    }
                }
            }
            if until == Until::Everything {
                let never = AtomicBool::new(false);
                timeline
                    .step("readiness", || self.prove_ready(plan, reporter, &never))
                    .map_err(|source| LabError::NotReady { bundle: bundle(&source), source })?;
            }
            reports
        } else {
            // The host-side proof runs beside the last stages' checks, from the moment
            // every node has made every change: the checks change nothing, so its
            // streak of passing rounds still begins after the last change.
            let changes = ChangesMade::new(
                stages.iter().map(|stage| stage.nodes.len() + survey.orphaned(stage.stage).count()).sum(),
            );
            let abandon = AtomicBool::new(false);
            let (ran, ready) = std::thread::scope(|scope| {
                let ready = (until == Until::Everything).then(|| {
                    scope.spawn(|| {
                        changes.wait().then(|| {
                            let proof_started = Instant::now();
                            (self.prove_ready(plan, reporter, &abandon), proof_started.elapsed())
                        })
                    })
                });
                let progress = ApplyProgress { steps: Steps(reporter), changes: &changes };
                let ran = run_by_needs(&executor, stages, &survey, reporter, &progress, timeline);
                abandon.store(ran.is_err(), Ordering::Relaxed);
                changes.end(ran.is_ok());
                (ran, ready.and_then(|handle| handle.join().expect("readiness thread panicked")))
            });
            let reports =
                ran.map_err(|source| LabError::Stage { bundle: bundle(&source), source: Box::new(source) })?;
            if let Some((proof, took)) = ready {
                timeline.record_step("readiness", took, proof.is_ok());
                proof.map_err(|source| LabError::NotReady { bundle: bundle(&source), source })?;
            }
            reports
        };
        Ok((reports, until))
    }

    /// Lab network, every node created or started at once from `image`, and every node
    /// answering SSH: one session per node, kept for the stages. The service range is
    /// routed around the nodes powered on again beside running ones (`rejoin`).
    fn up_machines(
        &self,
        plan: &Plan,
        image: &NodeImage,
        artifacts_ready: bool,
        key: &KeyPair,
        reporter: &dyn Reporter,
        timeline: &Timeline,
    ) -> Result<MachinesUp<'_>, LabError> {
        let say = |text: &str| reporter.report(Event::Progress(text));
        let machines = self.machines()?;
        let step = Instant::now();
        // A node powered on again beside nodes that serve Services takes the host's
        // Service traffic only once it serves it too (`rejoin`).
        let rejoining = self.rejoining(machines);
        let routes = rejoin::routes_without(&plan.network, &rejoining);
        let network = timeline.step("network", || machines.ensure_network(&routes))?;
        say(&format!(
            "network: bridge {} {} with {} ({})",
            plan.network.bridge,
            if network.bridge_created { "created" } else { "ready" },
            plan.network.gateway,
            seconds(step)
        ));
        for route in &network.routes {
            say(&format!("network: route {route}"));
        }

        // A node that did not start or boot leaves its console behind: the bundle
        // keeps it with the error, though there is no session to read journals over.
        let bundle = |error: &dyn std::fmt::Display| match self.write_log_bundle(plan, &[], error) {
            Ok(dir) => format!("log bundle: {}", dir.display()),
            Err(bundle_error) => format!("(no log bundle: {bundle_error})"),
        };
        let nodes: Vec<NodeSpec> = self
            .topology
            .nodes
            .iter()
            .map(|node| NodeSpec {
                preload: if artifacts_ready { preloaded_files(plan, &node.name) } else { Vec::new() },
                ..NodeSpec::of(node)
            })
            .collect();
        timeline.step("machines", || self.start_nodes(&nodes, image, key, reporter)).map_err(|errors| {
            LabError::NotStarted { total: nodes.len(), bundle: bundle(&errors.join("\n")), errors }
        })?;
        let hosts = timeline
            .step("boot", || self.wait_for_ssh(&nodes, key, reporter))
            .map_err(|errors| LabError::NoSsh { total: nodes.len(), bundle: bundle(&errors.join("\n")), errors })?;
        say(&format!("machines: {} nodes answer SSH as root with {}", nodes.len(), key.private.display()));
        Ok(MachinesUp { hosts, rejoining })
    }

    /// The workers this run removes: those the recorded topology has and the edited one
    /// does not, and any machine an interrupted earlier run left of one. An edit that
    /// is not a worker coming or going is refused here, before anything changes.
    fn removed_workers(&self, reporter: &dyn Reporter) -> Result<Vec<String>, LabError> {
        let say = |text: &str| reporter.report(Event::Progress(text));
        let machines = self.machines()?;
        let mut removed = Vec::new();
        if let Some(recorded) = machines::recorded_topology(&self.paths.state_dir)? {
            let change = topology::change::change(&recorded, &self.topology)?;
            for node in &change.added {
                say(&format!("topology: {node} is new: its machine is made, its certificates issued, and it joins"));
            }
            removed = change.removed;
        }
        for node in machines.known_nodes() {
            if self.topology.node(&node).is_none() && !removed.contains(&node) {
                removed.push(node);
            }
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        if !machines.removes_nodes() {
            return Err(LabError::CannotRemoveNodes { nodes: removed, backend: machines.backend() });
        }
        for node in &removed {
            say(&format!(
                "topology: {node} is no longer in it: it is drained, deleted from the API, and its machine, routes and \
                 certificates removed"
            ));
        }
        Ok(removed)
    }

    /// Takes each worker of `removed` out of the cluster as kubespray's remove-node
    /// does: drained (its pods move to the other workers), deleted from the API, then
    /// its machine and its certificates removed. The routes to its pod range went with
    /// the network's convergence already.
    fn remove_workers(
        &self,
        removed: &[String],
        hosts: &[Box<dyn Host>],
        reporter: &dyn Reporter,
    ) -> Result<(), LabError> {
        let first_master = self.topology.nodes_with(Role::Master).next().map(|node| node.name.as_str());
        let master = hosts.iter().find(|host| Some(host.name()) == first_master);
        let machines = self.machines()?;
        let store = pki::Store::new(self.state.root());
        for node in removed {
            let failed = |message: String| LabError::NodeRemoval { node: node.clone(), message };
            let started = Instant::now();
            if let Some(master) = master {
                reporter.report(Event::Progress(&format!("{node}: draining it and deleting it from the API")));
                let output = master.run(&remove_from_api_script(node)).map_err(|error| failed(error.to_string()))?;
                if !output.success() {
                    return Err(failed(format!(
                        "on {}: {}",
                        master.name(),
                        text::tail(&format!("{}{}", output.stdout, output.stderr), 10)
                    )));
                }
            }
            let leftovers = machines.remove_node(node);
            if !leftovers.is_empty() {
                let what: Vec<String> = leftovers.iter().map(ToString::to_string).collect();
                return Err(failed(format!("left {}", what.join("; "))));
            }
            store.remove(&pki::names::kubelet(node)).map_err(|error| failed(error.to_string()))?;
            reporter.report(Event::Progress(&format!(
                "{node}: removed: drained, deleted from the API, machine and certificates gone ({})",
                seconds(started)
            )));
        }
        Ok(())
    }

    /// Creates or starts every node at once; names every node that failed, not the first.
    fn start_nodes(
        &self,
        nodes: &[NodeSpec],
        image: &NodeImage,
        key: &KeyPair,
        reporter: &dyn Reporter,
    ) -> Result<(), Vec<String>> {
        let machines = self.machines().map_err(|error| vec![error.to_string()])?;
        let started = Instant::now();
        let outcomes = std::thread::scope(|scope| {
            let all = scope.spawn(|| {
                machines.start_all(nodes, image, &key.public_line, &|node, outcome, took| {
                    let what = match outcome {
                        Ok(StartOutcome::AlreadyRunning) => "already running",
                        Ok(StartOutcome::Started { created: true }) => "created and started",
                        Ok(StartOutcome::Started { created: false }) => "started",
                        Err(_) => return,
                    };
                    let address = nodes.iter().find(|spec| spec.name == node).map(|spec| spec.address);
                    let at = address.map(|address| format!(" at {address}")).unwrap_or_default();
                    reporter.report(Event::Progress(&format!("{node}: {what}{at} ({:.1} s)", took.as_secs_f64())));
                })
            });
            // A VM backend may take minutes to start its machines (Vagrant uploads its
            // box first): a long start is never silent. Vagrant waits for SSH itself,
            // so a boot that hangs is watched for here.
            let mut watches: Vec<BootWatch<'_>> =
                nodes.iter().filter_map(|node| BootWatch::new(machines, &node.name)).collect();
            let mut next_report = started + PROGRESS_EVERY;
            while !all.is_finished() {
                std::thread::sleep(Duration::from_millis(200));
                for watch in &mut watches {
                    if let Some(line) = watch.check(Instant::now()) {
                        reporter.report(Event::Progress(&line));
                    }
                }
                if Instant::now() >= next_report {
                    let doing = machines.activity().map(|line| format!("; {line}")).unwrap_or_default();
                    reporter.report(Event::Progress(&format!(
                        "machines: starting {} nodes ({}){doing}",
                        nodes.len(),
                        seconds(started)
                    )));
                    next_report += PROGRESS_EVERY;
                }
            }
            all.join().expect("starting the nodes panicked")
        });
        let errors: Vec<String> =
            outcomes.into_iter().filter_map(|(_, outcome)| outcome.err().map(|error| error.to_string())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Waits until every node answers SSH with the lab's key, in parallel, and keeps
    /// each node's session. A node whose machine stopped fails at once with the place
    /// of its console log. Names every node that does not answer.
    fn wait_for_ssh(
        &self,
        nodes: &[NodeSpec],
        key: &KeyPair,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Box<dyn Host>>, Vec<String>> {
        let machines = self.machines().map_err(|error| vec![error.to_string()])?;
        let deadline = Instant::now() + SSH_TIMEOUT * machines.time_scale();
        let console = |node: &str| machines.console_log(node);
        let outcomes: Vec<Result<Box<dyn Host>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| {
                    scope.spawn(move || {
                        let step = Instant::now();
                        let mut next_report = step + PROGRESS_EVERY;
                        let mut watch = BootWatch::new(machines, &node.name);
                        loop {
                            if let Some(line) = watch.as_mut().and_then(|watch| watch.check(Instant::now())) {
                                reporter.report(Event::Progress(&line));
                            }
                            // A VM under software emulation takes half a minute or more
                            // to boot: say how far it got, from its console.
                            if Instant::now() >= next_report {
                                let seen = console(&node.name)
                                    .and_then(|path| last_console_line(&path))
                                    .map(|line| format!("; console: {line}"))
                                    .unwrap_or_default();
                                reporter.report(Event::Progress(&format!(
                                    "{}: waiting for SSH ({}){seen}",
                                    node.name,
                                    seconds(step)
                                )));
                                next_report += PROGRESS_EVERY;
                            }
                            match self.surroundings.connect(&node.name, node.address, key, SSH_ATTEMPT) {
                                Ok(host) => {
                                    reporter.report(Event::Progress(&format!(
                                        "{}: answers SSH ({})",
                                        node.name,
                                        seconds(step)
                                    )));
                                    return Ok(host);
                                }
                                Err(error) => {
                                    let console = console(&node.name)
                                        .map(|path| format!("; console: {}", path.display()))
                                        .unwrap_or_default();
                                    if !matches!(machines.status(&node.name), Ok(MachineState::Running)) {
                                        return Err(format!(
                                            "{}: the machine stopped while booting{console}",
                                            node.name
                                        ));
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
                .map(|handle| handle.join().unwrap_or_else(|_| Err("waiting for a node panicked".to_string())))
                .collect()
        });
        let mut hosts = Vec::new();
        let mut errors = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(host) => hosts.push(host),
                Err(message) => errors.push(message),
            }
        }
        if errors.is_empty() {
            Ok(hosts)
        } else {
            Err(errors)
        }
    }

    /// The host-side proof that the finished lab serves and keeps serving
    /// (`crate::readiness`).
    fn prove_ready(
        &self,
        plan: &Plan,
        reporter: &dyn Reporter,
        abandon: &AtomicBool,
    ) -> Result<(), readiness::ReadinessError> {
        reporter.report(Event::ReadinessStarted { streak: readiness::STREAK });
        let time_scale = self.machines.as_deref().map_or(1, |machines| machines.time_scale());
        let steady = self.surroundings.prove_ready(&plan.network, time_scale, abandon)?;
        reporter.report(Event::ReadinessDone { steady: &steady });
        Ok(())
    }

    /// Writes `STATE/timings.json`: the run's outcome, the step or stage that failed,
    /// and the seconds of every step (preflight, image, network, machines, boot,
    /// artifacts, survey, checks, readiness) and stage it went through, for scripts;
    /// the nightly job keeps it.
    fn write_timings(&self, timeline: &Timeline, elapsed: Duration, failed: bool) -> Result<(), LabError> {
        let path = self.state.timings();
        let document = timeline.document(elapsed, failed);
        let text = serde_json::to_string_pretty(&document).expect("JSON values serialize") + "\n";
        std::fs::write(&path, text).map_err(|source| LabError::Write { path, source })
    }

    /// Every lab unit's journal on each node with a session, every node's console,
    /// and the rendered files without their secrets, under the state directory, so a
    /// failed run can be read after the machines are gone (and CI can keep it).
    fn write_log_bundle(
        &self,
        plan: &Plan,
        hosts: &[Box<dyn Host>],
        error: &dyn std::fmt::Display,
    ) -> std::io::Result<PathBuf> {
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let dir = self.state.logs_dir().join(format!("bundle-{stamp}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("error.txt"), error.to_string())?;
        crate::render::render(plan, &dir.join("rendered")).map_err(std::io::Error::other)?;
        for host in hosts {
            let node_dir = dir.join(host.name());
            std::fs::create_dir_all(&node_dir)?;
            for unit in super::plan_units(plan, host.name()) {
                let script =
                    format!("journalctl --no-pager --lines 500 --unit {unit}; systemctl status --no-pager {unit}");
                let text = match host.run(&script) {
                    Ok(output) => output.stdout + &output.stderr,
                    Err(error) => format!("cannot read the journal: {error}"),
                };
                std::fs::write(node_dir.join(format!("{unit}.log")), text)?;
            }
        }
        if let Ok(machines) = self.machines() {
            for node in &self.topology.nodes {
                let Some(console) =
                    machines.console_log(&node.name).and_then(|path| text::file_tail(&path, CONSOLE_TAIL))
                else {
                    continue;
                };
                let node_dir = dir.join(&node.name);
                std::fs::create_dir_all(&node_dir)?;
                std::fs::write(node_dir.join("console.log"), console)?;
            }
        }
        Ok(dir)
    }
}

/// How much of a node's console a log bundle keeps: its boot and last messages
/// fit; a console that ran for days does not fill the disk.
const CONSOLE_TAIL: u64 = 1 << 20;

/// Runs `stages` (in handbook order), each as soon as the stages it needs among them
/// have passed (`Stage::needs`), so that chapters that do not depend on each other run
/// at once. After a failure no stage starts; the running ones finish (each is bounded
/// by its checks' timeouts) and the first failure is returned. The reports are in
/// handbook order.
fn run_by_needs(
    executor: &Executor<'_>,
    stages: &[StagePlan],
    survey: &Survey,
    reporter: &dyn Reporter,
    progress: &dyn Progress,
    timeline: &Timeline,
) -> Result<Vec<StageReport>, ExecError> {
    let total = stages.len();
    let selected: BTreeSet<Stage> = stages.iter().map(|stage| stage.stage).collect();
    let mut started: BTreeSet<Stage> = BTreeSet::new();
    let mut passed: BTreeSet<Stage> = BTreeSet::new();
    let mut reports: Vec<StageReport> = Vec::new();
    let mut failure: Option<ExecError> = None;
    std::thread::scope(|scope| {
        let (finished, finishes) = std::sync::mpsc::channel();
        let mut running = 0_usize;
        loop {
            if failure.is_none() {
                for (index, stage) in stages.iter().enumerate() {
                    // A need outside `stages` comes before `--from`, and the survey
                    // found it done.
                    let ready = !started.contains(&stage.stage)
                        && stage.stage.needs().iter().all(|need| passed.contains(need) || !selected.contains(need));
                    if !ready {
                        continue;
                    }
                    started.insert(stage.stage);
                    running += 1;
                    reporter.report(Event::StageStarted { number: index + 1, total, stage: stage.stage });
                    let finished = finished.clone();
                    scope.spawn(move || {
                        let began = Instant::now();
                        // A panic comes back as the outcome, to be raised again below:
                        // a thread that died without sending would leave this loop
                        // waiting for it for ever.
                        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            executor.run_stage_surveyed(stage, survey, progress)
                        }));
                        // The receiver outlives every stage's thread.
                        let _ = finished.send((stage.stage, began.elapsed(), outcome));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let (stage, took, outcome) = finishes.recv().expect("a running stage reports its outcome");
            running -= 1;
            // The scope joins the other stages' threads before the panic goes on.
            match outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
                Ok(report) => {
                    reporter.report(Event::StageDone { report: &report });
                    timeline.record_stage(stage, report.elapsed, Some(&report));
                    passed.insert(stage);
                    reports.push(report);
                }
                Err(error) => {
                    reporter.report(Event::StageFailed { stage, elapsed: took });
                    timeline.record_stage(stage, took, None);
                    failure.get_or_insert(error);
                }
            }
        }
    });
    if let Some(error) = failure {
        return Err(error);
    }
    reports.sort_by_key(|report| report.stage);
    Ok(reports)
}

/// What `up_machines` leaves: a session on every node, and the nodes powered on again
/// that join the host's route for the service range once they serve (`rejoin`).
struct MachinesUp<'lab> {
    hosts: Vec<Box<dyn Host>>,
    rejoining: Vec<&'lab Node>,
}

/// Opens once every node of every stage in a run has made its changes (its
/// `Progress::applied`), or when the run passed without that count being reached;
/// stays shut for good when the run failed. The proof of readiness waits behind it.
struct ChangesMade {
    state: Mutex<Gate>,
    moved: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// This many nodes, counted once per stage, have changes still to make.
    Waiting(usize),
    Open,
    Shut,
}

impl ChangesMade {
    fn new(nodes: usize) -> ChangesMade {
        let gate = if nodes == 0 { Gate::Open } else { Gate::Waiting(nodes) };
        ChangesMade { state: Mutex::new(gate), moved: Condvar::new() }
    }

    fn set(&self, change: impl FnOnce(Gate) -> Gate) {
        let mut state = self.state.lock().expect("gate lock");
        *state = change(*state);
        self.moved.notify_all();
    }

    /// One node made the changes of one stage.
    fn node_applied(&self) {
        self.set(|gate| match gate {
            Gate::Waiting(1) => Gate::Open,
            Gate::Waiting(left) => Gate::Waiting(left - 1),
            done => done,
        });
    }

    /// The run is over, and `passed` says how.
    fn end(&self, passed: bool) {
        self.set(|gate| match gate {
            Gate::Waiting(_) if passed => Gate::Open,
            _ if !passed => Gate::Shut,
            done => done,
        });
    }

    /// Whether the gate opened; false once it is shut.
    fn wait(&self) -> bool {
        let state = self.state.lock().expect("gate lock");
        let state = self.moved.wait_while(state, |gate| matches!(gate, Gate::Waiting(_))).expect("gate lock");
        *state == Gate::Open
    }
}

/// The stages' progress, shown as steps, and counted into `changes`.
struct ApplyProgress<'a> {
    steps: Steps<'a>,
    changes: &'a ChangesMade,
}

impl Progress for ApplyProgress<'_> {
    fn step(&self, stage: Stage, node: &str, step: &str) {
        self.steps.step(stage, node, step);
    }

    fn applied(&self, _stage: Stage, _node: &str) {
        self.changes.node_applied();
    }
}

/// What one run of `lab up` went through, entry by entry, for `STATE/timings.json`.
#[derive(Default)]
struct Timeline {
    /// Whether the run claimed the state directory: only then is there one to write to.
    claimed: std::sync::atomic::AtomicBool,
    steps: Mutex<Vec<serde_json::Value>>,
    stages: Mutex<Vec<serde_json::Value>>,
    /// The first step or stage that failed.
    failed: Mutex<Option<String>>,
}

impl Timeline {
    fn claim(&self) {
        self.claimed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn claimed(&self) -> bool {
        self.claimed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one step of the run and records how long it took and whether it failed.
    fn step<T, E>(&self, name: &str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let outcome = work();
        self.record_step(name, started.elapsed(), outcome.is_ok());
        outcome
    }

    fn record_step(&self, name: &str, took: Duration, ok: bool) {
        self.note_failure(name, ok);
        self.steps.lock().expect("timeline lock").push(serde_json::json!({
            "step": name,
            "seconds": took.as_secs_f64(),
            "outcome": outcome(ok),
        }));
    }

    /// A stage that passed (with its report) or failed (without one).
    fn record_stage(&self, stage: Stage, took: Duration, report: Option<&StageReport>) {
        self.note_failure(stage.name(), report.is_some());
        let mut entry = serde_json::json!({
            "stage": stage.name(),
            "seconds": took.as_secs_f64(),
            "outcome": outcome(report.is_some()),
        });
        if let Some(report) = report {
            entry["changed_files"] = report.changed_files().into();
            entry["changed_units"] = report.changed_units().into();
            entry["removed"] = report.removed().into();
        }
        self.stages.lock().expect("timeline lock").push(entry);
    }

    fn note_failure(&self, name: &str, ok: bool) {
        let mut failed = self.failed.lock().expect("timeline lock");
        if !ok && failed.is_none() {
            *failed = Some(name.to_string());
        }
    }

    /// The whole record. A run can fail between steps (its PKI, its key): then it
    /// failed with no entry to name.
    fn document(&self, elapsed: Duration, failed: bool) -> serde_json::Value {
        let failed_entry = self.failed.lock().expect("timeline lock").clone();
        serde_json::json!({
            "outcome": if failed || failed_entry.is_some() { "failed" } else { "succeeded" },
            "failed": failed_entry,
            "total_seconds": elapsed.as_secs_f64(),
            "steps": *self.steps.lock().expect("timeline lock"),
            "stages": *self.stages.lock().expect("timeline lock"),
        })
    }
}

/// The node image, built or found in the cache, with its progress and its step in the
/// timeline.
fn ensure_image(
    machines: &dyn machines::Machines,
    reporter: &dyn Reporter,
    timeline: &Timeline,
) -> Result<NodeImage, LabError> {
    let say = |text: &str| reporter.report(Event::Progress(text));
    let step = Instant::now();
    let image = timeline.step("image", || machines.ensure_image(&|line| say(&format!("image: {line}"))))?;
    let verb = if image.from_cache { "used the cached" } else { "built" };
    say(&format!("image: {verb} {} ({})", image.root.display(), seconds(step)));
    Ok(image)
}

/// The files of the artifact cache that the plan puts on `node`, root's, in stage order.
fn preloaded_files(plan: &Plan, node: &str) -> Vec<PreloadedFile> {
    plan.stages
        .iter()
        .flat_map(|stage| stage.nodes.iter().filter(|actions| actions.node == node))
        .flat_map(|actions| &actions.files)
        .filter_map(|file| match &file.content {
            Content::Artifact { path } if file.owner == "root" => {
                Some(PreloadedFile { path: file.path.clone(), mode: file.mode, source: path.clone() })
            }
            _ => None,
        })
        .collect()
}

fn outcome(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// How long the API may take to answer after the machines started (after `lab down`,
/// the apiservers start with them), and how long a drain may take before the node is
/// deleted anyway (deleting a Node makes the cluster remove its pods).
const API_WAIT_SECS: u32 = 120;
const DRAIN_TIMEOUT_SECS: u32 = 60;

/// The script, run on the first master with the admin kubeconfig, that drains `node`
/// and deletes it from the API; a node the API no longer has (an interrupted earlier
/// run) is no error.
fn remove_from_api_script(node: &str) -> String {
    let kubectl = paths::admin_kubectl();
    format!(
        "timeout {API_WAIT_SECS} sh -c 'until {kubectl} get --raw /readyz >/dev/null 2>&1; do sleep 1; done' && \
         if {kubectl} get node {node} >/dev/null 2>&1; then \
         {kubectl} drain {node} --ignore-daemonsets --delete-emptydir-data --force --timeout={DRAIN_TIMEOUT_SECS}s \
         || echo 'the drain did not finish: the node is deleted anyway'; \
         {kubectl} delete node {node} --ignore-not-found; fi"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_lines_lose_colours_and_long_ones_are_cut() {
        let scratch = tempfile::NamedTempFile::new().expect("temporary file");
        let long = "x".repeat(150);
        std::fs::write(scratch.path(), format!("first\n\u{1b}[0;32m{long}\u{1b}[0m\n\n")).unwrap();
        let line = super::last_console_line(scratch.path()).expect("a line");
        assert_eq!(line, format!("{}...", "x".repeat(100)));
    }
}
