//! `lab break` and `lab restore`: the fault catalogue (`crate::faults`) applied to a
//! running lab. A fault is recorded in `STATE/faults.json` before its first script
//! runs, so that a break interrupted half way is still restored; a restore runs the
//! faults' `undo` scripts, forgets them, and then converges the lab with `lab up`,
//! which writes back every planned file and mode a fault changed, starts every unit
//! it stopped and proves that the cluster serves before it returns.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::sessions::Sessions;
use super::up::{Until, UpOptions, UpReport};
use super::{Event, Lab, LabError, Reporter};
use crate::faults::{self, Fault, FaultContext, FaultError, InForce, Step, Targets, IN_FORCE_TIMEOUT};
use crate::pki;
use crate::text;
use crate::topology::Node;

/// What `lab break` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub fault: &'static str,
    pub nodes: Vec<String>,
    pub summary: String,
    /// The fault was in force already, and nothing was changed.
    pub already: bool,
    pub elapsed: Duration,
}

/// What `lab restore` did.
#[derive(Debug)]
pub struct Restored {
    /// The faults taken out of force.
    pub faults: Vec<String>,
    /// The `lab up` that converged the lab afterwards.
    pub up: UpReport,
    pub elapsed: Duration,
}

/// Which faults `lab restore` undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore<'a> {
    One(&'a str),
    All,
}

impl Lab {
    /// The faults `lab break` injected and no restore has undone yet.
    pub fn faults_in_force(&self) -> Result<Vec<InForce>, LabError> {
        let path = self.state.faults();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|error| LabError::Record { path, message: error.to_string() })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(LabError::Record { path, message: error.to_string() }),
        }
    }

    pub(super) fn record_faults(&self, faults: &[InForce]) -> Result<(), LabError> {
        let path = self.state.faults();
        if faults.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(LabError::Write { path, source: error })
                }
                _ => Ok(()),
            };
        }
        let json = serde_json::to_vec_pretty(faults).expect("fault records serialize");
        crate::system::write_atomically(&path, &json, 0o644).map_err(|source| LabError::Write { path, source })
    }

    /// Injects the fault `name` (on `node`, where the fault takes one) and returns once
    /// it is in force. An unknown fault or a node it does not apply to changes
    /// nothing; a fault already in force is left as it is.
    pub fn break_fault(&self, name: &str, node: Option<&str>, reporter: &dyn Reporter) -> Result<Broken, LabError> {
        let started = Instant::now();
        let fault = faults::find(name)?;
        if !self.state.topology_record().exists() {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        }
        let targets = fault.targets(&self.topology, node)?;
        let mut in_force = self.faults_in_force()?;
        if let Some(record) = in_force.iter().find(|record| record.fault == fault.name) {
            return Ok(Broken {
                fault: fault.name,
                nodes: record.nodes.clone(),
                summary: record.summary.clone(),
                already: true,
                elapsed: started.elapsed(),
            });
        }
        let sessions = Sessions::open(self)?;
        let nodes: Vec<&Node> = match targets {
            Targets::Nodes(nodes) => nodes,
            Targets::FirstOf { candidates, probe } => {
                let chosen = candidates.iter().find(|candidate| {
                    sessions.run(&Step { node: candidate.name.clone(), script: probe.clone() }).is_ok()
                });
                match chosen {
                    Some(chosen) => vec![*chosen],
                    None => {
                        return Err(LabError::FaultStep {
                            fault: fault.name.to_string(),
                            node: candidates.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", "),
                            message: "no candidate node qualifies (does every load balancer hold the virtual IP?)"
                                .to_string(),
                        })
                    }
                }
            }
        };
        let summary = fault.summary_for(&nodes);
        reporter.report(Event::Progress(&format!("breaking {}: {summary}", fault.name)));
        // Recorded first: a break that stops half way is restored like a whole one.
        in_force.push(InForce {
            fault: fault.name.to_string(),
            nodes: nodes.iter().map(|node| node.name.clone()).collect(),
            summary: summary.clone(),
            since: SystemTime::now().duration_since(UNIX_EPOCH).map(|time| time.as_secs()).unwrap_or_default(),
        });
        self.record_faults(&in_force)?;

        let context = self.fault_context()?;
        for step in fault.inject_steps(&context, &nodes) {
            sessions.run(&step).map_err(|message| step_error(fault, &step, message))?;
        }
        let timeout = IN_FORCE_TIMEOUT * sessions.time_scale;
        for step in fault.in_force_steps(&context, &nodes) {
            reporter.report(Event::Progress(&format!("{}: waiting until the fault is in force", step.node)));
            let poll = Step { node: step.node.clone(), script: faults::poll_script(&step.script, timeout) };
            sessions.run(&poll).map_err(|message| step_error(fault, &step, message))?;
        }
        Ok(Broken {
            fault: fault.name,
            nodes: nodes.iter().map(|node| node.name.clone()).collect(),
            summary,
            already: false,
            elapsed: started.elapsed(),
        })
    }

    /// Takes `which` faults out of force (their `undo` scripts, then their records)
    /// and converges the lab with `lab up`, which returns once the cluster serves.
    /// With no fault in force it only converges: the lab's plan is the cure for any
    /// hand-made change too.
    pub fn restore(&self, which: Restore, reporter: &dyn Reporter) -> Result<Restored, LabError> {
        let started = Instant::now();
        if !self.state.topology_record().exists() {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        }
        let in_force = self.faults_in_force()?;
        let (chosen, kept): (Vec<InForce>, Vec<InForce>) = match which {
            Restore::All => (in_force, Vec::new()),
            Restore::One(name) => {
                faults::find(name)?;
                if !in_force.iter().any(|record| record.fault == name) {
                    let names: Vec<&str> = in_force.iter().map(|record| record.fault.as_str()).collect();
                    return Err(FaultError::NotInForce {
                        fault: name.to_string(),
                        in_force: if names.is_empty() { "none".to_string() } else { names.join(", ") },
                    }
                    .into());
                }
                in_force.into_iter().partition(|record| record.fault == name)
            }
        };
        let context = self.fault_context()?;
        let sessions = if chosen.is_empty() { None } else { Some(Sessions::open(self)?) };
        let nodes_of = |record: &InForce| -> Vec<&Node> {
            record.nodes.iter().filter_map(|name| self.topology.node(name)).collect()
        };
        if let Some(sessions) = &sessions {
            for record in &chosen {
                let fault = faults::find(&record.fault)?;
                reporter.report(Event::Progress(&format!("restoring {}: {}", fault.name, record.summary)));
                for step in fault.undo_steps(&context, &nodes_of(record)) {
                    sessions.run(&step).map_err(|message| step_error(fault, &step, message))?;
                }
            }
        }
        self.record_faults(&kept)?;
        let up = self.up(UpOptions::from(Until::Everything), reporter)?;
        if let Some(sessions) = &sessions {
            let timeout = IN_FORCE_TIMEOUT * sessions.time_scale;
            for record in &chosen {
                let fault = faults::find(&record.fault)?;
                for step in fault.healed_steps(&context, &nodes_of(record)) {
                    reporter
                        .report(Event::Progress(&format!("{}: waiting until {} has healed", step.node, fault.name)));
                    let poll = Step { node: step.node.clone(), script: faults::poll_script(&step.script, timeout) };
                    sessions.run(&poll).map_err(|message| step_error(fault, &step, message))?;
                }
            }
        }
        Ok(Restored { faults: chosen.into_iter().map(|record| record.fault).collect(), up, elapsed: started.elapsed() })
    }
}

impl Lab {
    /// What the fault scripts are made from, with the cluster CA's certificate from the
    /// lab's PKI directory.
    fn fault_context(&self) -> Result<FaultContext<'_>, LabError> {
        let store = pki::Store::new(self.state.root());
        let path = store.cert_path(pki::CA_STEM);
        let cluster_ca_pem = std::fs::read_to_string(&path)
            .map_err(|source| LabError::Pki { dir: store.dir.clone(), source: pki::PkiError::Io { path, source } })?;
        Ok(FaultContext::new(&self.topology, cluster_ca_pem))
    }
}

fn step_error(fault: &Fault, step: &Step, message: String) -> LabError {
    LabError::FaultStep { fault: fault.name.to_string(), node: step.node.clone(), message }
}

impl Sessions {
    /// Runs one step; a non-zero exit is an error with the tail of what it printed.
    fn run(&self, step: &Step) -> Result<(), String> {
        let host = self.hosts.get(&step.node).ok_or_else(|| format!("no session to {}", step.node))?;
        let output = host.run(&step.script).map_err(|error| error.to_string())?;
        if output.success() {
            return Ok(());
        }
        let said = text::one_line_tail(output.stderr.lines().chain(output.stdout.lines()), 3);
        Err(format!("`{}` exited with {}: {}", shortened(&step.script), output.status, said.trim()))
    }
}

/// A script as an error message quotes it: its start, enough to recognise it.
fn shortened(script: &str) -> String {
    const LONGEST: usize = 100;
    let line = script.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(LONGEST) {
        Some((end, _)) => format!("{} ...", &line[..end]),
        None => line,
    }
}
