//! One lab as a typed API: `Lab` owns the loaded topology, the state directory, the
//! plan (with its PKI), the SSH key pair and the machines backend, each made once per
//! command, and offers the verbs `up`, `down`, `destroy` and `status`. The CLI parses
//! arguments, calls these and prints what they report; nothing else.
//!
//! A state directory belongs to one lab: the first `lab up` records the topology in
//! it, and the other verbs work from that record (`Lab::existing`), so they act on
//! the machines that exist even after lab.toml changed. `lab up` records it before it
//! makes anything, so a state directory without the record holds no lab.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::artifacts::build::ArtifactError;
use crate::artifacts::Artifacts;
use crate::executor::ExecError;
use crate::faults::FaultError;
use crate::host::HostError;
use crate::machines::{self, hostnet, LabSpec, Leftover, MachineError, MachineState, Machines, Requirement};
use crate::pki::{self, PkiError};
use crate::plan::{self, Plan, PlanInputs, Stage};
use crate::preflight::{Finding, PreflightError, Report, Status};
use crate::readiness::ReadinessError;
use crate::ssh::{self, KeyPair, SshError};
use crate::state_dir::StateDir;
use crate::topology::{Backend, Topology, TopologyError};

mod cordon;
pub mod exercise;
mod faults;
mod handover;
mod inspect;
mod list;
mod probes;
mod rejoin;
mod reporter;
mod sessions;
mod status;
mod surroundings;
#[cfg(test)]
mod tests;
mod up;

pub use exercise::Exercise;
pub use faults::{Broken, Restore, Restored};
pub use inspect::{PlanDiff, StageInspection};
pub use list::{labs_on_host, ListedLab, ListedNode, Listing, NodeState, StrayBridge};
pub use reporter::{Event, Reporter, Resume, Silent};
pub use status::{ApiHealth, LabStatus, NodeStatus, Probed, Probes};
pub use surroundings::{Real, Surroundings};
pub use up::{Until, UpOptions, UpReport};

/// Where a lab's files are on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPaths {
    /// The topology file (`lab.toml`) that `lab up` builds.
    pub topology: PathBuf,
    pub state_dir: PathBuf,
    /// Built once and shared by every lab: node image, binaries, images.
    pub cache_dir: PathBuf,
}

/// Why a lab verb failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Machines(#[from] MachineError),
    #[error("no lab in {}: `lab up` makes one (LAB_DIR or --lab-dir selects another state directory)", .state_dir.display())]
    NoLab { state_dir: PathBuf },
    #[error("lab {lab} has no node {node:?}; its nodes are {nodes}")]
    NoSuchNode { lab: String, node: String, nodes: String },
    #[error(
        "the host cannot run the lab yet; nothing was created:\n{}\nas root, `lab up` (without --no-install) \
         and `lab doctor` install what is missing",
        .failures.iter().map(|finding| {
            let fix = finding.fix.as_deref().map(|fix| format!("\n      fix: {fix}")).unwrap_or_default();
            format!("  - {}: {}{fix}", finding.check, finding.detail)
        }).collect::<Vec<_>>().join("\n")
    )]
    HostNotReady { failures: Vec<Finding> },
    #[error("setting up the host: {0}")]
    HostSetup(#[from] PreflightError),
    #[error("lab PKI in {}: {source}", .dir.display())]
    Pki { dir: PathBuf, source: PkiError },
    #[error("the lab's SSH key: {0}")]
    Key(#[from] SshError),
    #[error("building the lab's artifacts: {source}\n{bundle}")]
    Artifacts { source: ArtifactError, bundle: String },
    #[error("{} of {total} nodes did not start:\n  {}\n{bundle}", .errors.len(), .errors.join("\n  "))]
    NotStarted { total: usize, errors: Vec<String>, bundle: String },
    #[error("{} of {total} nodes do not answer SSH:\n  {}\n{bundle}", .errors.len(), .errors.join("\n  "))]
    NoSsh { total: usize, errors: Vec<String>, bundle: String },
    #[error(transparent)]
    Connect(#[from] HostError),
    #[error("{source}\n{bundle}")]
    Stage { source: Box<ExecError>, bundle: String },
    /// `lab check` or `lab diff` could not ask a node.
    #[error(transparent)]
    Inspect(Box<ExecError>),
    #[error("{source}\n{bundle}")]
    NotReady { source: ReadinessError, bundle: String },
    #[error(
        "--from {}: stage {} before it is not done on {nodes}, so no stage ran \
         (`lab diff {}` shows what differs, `lab up --until {}` does it)",
        .from.name(), .stage.name(), .stage.name(), .stage.name()
    )]
    EarlierStageNotDone { from: Stage, stage: Stage, nodes: String },
    #[error("--from {} comes after --until {}: no stage is left to run", .from.name(), .until)]
    FromAfterUntil { from: Stage, until: String },
    #[error("{} nodes did not stop:\n  {}", .errors.len(), .errors.join("\n  "))]
    NotStopped { errors: Vec<String> },
    #[error(
        "`lab destroy` could not remove {} things (the state directory is kept while they exist):\n{}",
        .leftovers.len(),
        .leftovers.iter().map(|leftover| format!("  - {leftover}")).collect::<Vec<_>>().join("\n")
    )]
    Leftovers { leftovers: Vec<Leftover> },
    #[error(transparent)]
    TopologyChange(#[from] crate::topology::change::ChangeRefused),
    #[error(
        "{} removed from the topology, but the {backend} backend cannot remove one machine from a lab yet; \
         nothing was changed (`lab destroy` then `lab up` makes the lab without it)",
        .nodes.join(", ")
    )]
    CannotRemoveNodes { nodes: Vec<String>, backend: Backend },
    #[error("removing {node}, which the topology no longer has: {message}")]
    NodeRemoval { node: String, message: String },
    #[error("{node} is {state}; `lab up --until machines` starts it")]
    NodeNotRunning { node: String, state: MachineState },
    #[error(
        "refusing to connect: {address} ({node}) is not routed onto the lab bridge {bridge}; \
         `lab up --until machines` sets the lab's routes"
    )]
    NotOnBridge { node: String, address: Ipv4Addr, bridge: String },
    #[error("refusing to connect: {reason}; `lab up --until machines` sets the lab's routes")]
    NotRouted { reason: String },
    #[error("the lab has no SSH key at {}; `lab up` makes it", .path.display())]
    NoKey { path: PathBuf },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error("fault {fault} on {node}: {message}; `lab restore` undoes what was done")]
    FaultStep { fault: String, node: String, message: String },
    #[error("an exercise is in progress: `lab exercise --check` says whether it is solved, `lab exercise --give-up` ends it")]
    ExerciseInProgress,
    #[error("no exercise is in progress: `lab exercise` starts one")]
    NoExercise,
    #[error("faults are in force ({faults}): an exercise starts on a whole lab; `lab restore` undoes them")]
    FaultsInForce { faults: String },
    #[error("fault {fault} is seen by failover drills only, which make no exercise; `lab break {fault}` breaks it")]
    NotAnExercise { fault: &'static str },
    #[error("no fault of the catalogue applies to this lab's topology")]
    NoExercisableFault,
    #[error("cannot read the record {}: {message}", .path.display())]
    Record { path: PathBuf, message: String },
}

impl LabError {
    /// Whether the command line asked for something that does not exist (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LabError::Machines(MachineError::OtherBackend { .. })
                | LabError::NoSuchNode { .. }
                | LabError::Fault(_)
                | LabError::FromAfterUntil { .. }
                | LabError::ExerciseInProgress
                | LabError::NoExercise
                | LabError::FaultsInForce { .. }
                | LabError::NotAnExercise { .. }
        )
    }

    /// Whether the topology file is unreadable or invalid (exit code 3).
    pub fn is_topology(&self) -> bool {
        matches!(self, LabError::Topology(_) | LabError::TopologyChange(_) | LabError::CannotRemoveNodes { .. })
    }
}

/// One lab and everything a verb needs of it, each made once.
pub struct Lab {
    topology: Topology,
    /// The topology's validation warnings (only for a topology read from its file).
    warnings: Vec<String>,
    paths: LabPaths,
    state: StateDir,
    /// `None` when this build lacks the topology's backend (libvirt without the
    /// feature): the verbs that need no machines (`plan`, `render`) still work.
    machines: Option<Box<dyn Machines>>,
    surroundings: Box<dyn Surroundings>,
    plan: OnceLock<Plan>,
}

impl Lab {
    /// The lab in the topology file, for `lab up`, `plan` and `render`. `backend`
    /// replaces the topology's `[machines] backend`.
    pub fn from_file(
        paths: LabPaths,
        backend: Option<Backend>,
        surroundings: Box<dyn Surroundings>,
    ) -> Result<Lab, LabError> {
        let validated = Topology::load(&paths.topology)?;
        let mut topology = validated.topology;
        if let Some(backend) = backend {
            topology.machines.backend = backend;
        }
        let warnings = validated.warnings.iter().map(ToString::to_string).collect();
        let machines = real_machines(&topology, &paths);
        Ok(Lab::assemble(topology, warnings, paths, machines, surroundings))
    }

    /// The lab whose machines this state directory holds (its recorded topology): for
    /// the verbs that act on a lab `lab up` made. Without a record there is no such
    /// lab, whatever the topology file says. A `backend` other than the recorded
    /// lab's is refused.
    pub fn existing(
        paths: LabPaths,
        backend: Option<Backend>,
        surroundings: Box<dyn Surroundings>,
    ) -> Result<Lab, LabError> {
        let state = StateDir::new(&paths.state_dir);
        match machines::recorded_topology(state.root())? {
            Some(topology) => {
                // The same check as `lab up`'s: a backend other than the recorded
                // one would look for machines that backend never made.
                if let Some(requested) = backend {
                    machines::check_state_dir(state.root(), &topology.name, requested)?;
                }
                let machines = real_machines(&topology, &paths);
                Ok(Lab::assemble(topology, Vec::new(), paths, machines, surroundings))
            }
            None => Err(LabError::NoLab { state_dir: paths.state_dir }),
        }
    }

    /// A lab of `topology` on the given machines and surroundings (tests give fakes).
    pub fn with_parts(
        topology: Topology,
        paths: LabPaths,
        machines: Box<dyn Machines>,
        surroundings: Box<dyn Surroundings>,
    ) -> Lab {
        Lab::assemble(topology, Vec::new(), paths, Some(machines), surroundings)
    }

    fn assemble(
        topology: Topology,
        warnings: Vec<String>,
        paths: LabPaths,
        machines: Option<Box<dyn Machines>>,
        surroundings: Box<dyn Surroundings>,
    ) -> Lab {
        let state = StateDir::new(&paths.state_dir);
        Lab { topology, warnings, paths, state, machines, surroundings, plan: OnceLock::new() }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The topology file's validation warnings, for the caller to show.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// The artifacts where the cache holds (or will hold) them. Pure.
    pub fn artifacts(&self) -> Artifacts {
        Artifacts::expected(&self.topology, &self.paths.cache_dir)
    }

    /// The machines backend, or why this build has none for the topology.
    pub fn machines(&self) -> Result<&dyn Machines, LabError> {
        self.machines.as_deref().ok_or(LabError::Machines(MachineError::LibvirtNotBuilt))
    }

    /// The lab's plan, with its PKI loaded or issued: made once per `Lab`.
    pub fn plan(&self) -> Result<&Plan, LabError> {
        if let Some(plan) = self.plan.get() {
            return Ok(plan);
        }
        let store = pki::Store::new(self.state.root());
        let bundle = store
            .load_or_issue(&pki::specs(&self.topology))
            .map_err(|source| LabError::Pki { dir: store.dir.clone(), source })?;
        let plan = plan::build(&PlanInputs {
            topology: &self.topology,
            pki: &bundle,
            artifacts: &self.artifacts(),
            state_dir: self.paths.state_dir.clone(),
        });
        Ok(self.plan.get_or_init(|| plan))
    }

    /// The lab's SSH key pair, made unless it exists.
    pub fn key_pair(&self) -> Result<KeyPair, LabError> {
        Ok(ssh::ensure_keypair(&self.paths.state_dir)?)
    }

    /// Every host check for this lab: what its backend needs, the host-wide checks
    /// and what building its artifacts needs. A backend this build lacks is itself a
    /// failed check, and what building and running it needs is checked all the same,
    /// so that the next build works.
    pub fn host_report(&self) -> Report {
        let (requirements, backend_problem): (Vec<Requirement>, _) = match self.machines() {
            Ok(machines) => (machines.requirements(), None),
            Err(error) => {
                let mut requirements = libvirt_build_requirements();
                requirements.extend(machines::vm_image::host_requirements());
                let fix = "cargo run --package lab --features libvirt -- VERB (or `cargo lab-libvirt VERB`)";
                (requirements, Some((error.to_string(), fix.to_string())))
            }
        };
        let mut report =
            self.surroundings.preflight(&self.topology, &self.paths.state_dir, &self.paths.cache_dir, &requirements);
        if let Some((problem, fix)) = backend_problem {
            report.findings.insert(
                0,
                Finding {
                    check: format!("machine backend {}", self.topology.machines.backend),
                    status: Status::Fail,
                    detail: problem,
                    fix: Some(fix),
                    package: None,
                },
            );
        }
        report
    }

    /// `lab down`: stops every machine, keeping disks, state, bridge and routes (so
    /// lab addresses still lead only to the lab bridge), all at once. Each machine
    /// powers off as its power button would have it, so a worker's kubelet first stops
    /// its pods (graceful node shutdown). With `only`, it stops those machines alone,
    /// cordoning the workers among them first (`cordon`), and `lab up` starts them
    /// again; a name the lab does not have stops nothing. A running master stops its
    /// kube-controller-manager and kube-scheduler first, and the leader leases they
    /// held are released (`handover`), so that the next leader need not wait 15 s.
    pub fn down(&self, only: &[String], reporter: &dyn Reporter) -> Result<(), LabError> {
        for name in only {
            self.require_node(name)?;
        }
        let machines = self.machines()?;
        let nodes = if only.is_empty() { machines.known_nodes() } else { only.to_vec() };
        if !only.is_empty() {
            self.cordon_for_power_off(only, reporter);
            self.leave_service_route(only, reporter);
        }
        self.hand_over_leases(&nodes, reporter);
        let outcomes = machines.stop_all(&nodes, &|node, outcome, took| {
            if let Ok(outcome) = outcome {
                let what = match outcome {
                    machines::StopOutcome::Stopped => "stopped",
                    machines::StopOutcome::Killed => "killed (it did not power off in time)",
                    machines::StopOutcome::NotRunning => "was not running",
                };
                reporter.report(Event::Progress(&format!("{node}: {what} ({:.1} s)", took.as_secs_f64())));
            }
        });
        let errors: Vec<String> =
            outcomes.into_iter().filter_map(|(_, outcome)| outcome.err().map(|error| error.to_string())).collect();
        if !errors.is_empty() {
            return Err(LabError::NotStopped { errors });
        }
        let message = if only.is_empty() {
            format!(
                "lab {} is down; disks and state are kept in {} (`lab up` brings it back)",
                self.topology.name,
                self.paths.state_dir.display()
            )
        } else {
            format!(
                "{} down, the rest of lab {} runs on (`lab up` starts it again)",
                nodes.join(", "),
                self.topology.name
            )
        };
        reporter.report(Event::Progress(&message));
        Ok(())
    }

    /// `lab destroy`: removes machines, disks, bridge, routes, cgroups and the state
    /// directory; caches stay. Lists everything it could not remove.
    pub fn destroy(&self, reporter: &dyn Reporter) -> Result<(), LabError> {
        let mut leftovers = self.machines()?.destroy();
        reporter.report(Event::Progress(&format!(
            "lab {}: machines, disks, bridge and routes removed",
            self.topology.name
        )));
        if leftovers.is_empty() {
            match crate::system::remove_tree(&self.paths.state_dir) {
                Ok(()) => reporter
                    .report(Event::Progress(&format!("state directory {} removed", self.paths.state_dir.display()))),
                Err(message) => leftovers
                    .push(Leftover::new(format!("state directory {}", self.paths.state_dir.display()), message)),
            }
        }
        if !leftovers.is_empty() {
            return Err(LabError::Leftovers { leftovers });
        }
        reporter.report(Event::Progress(&format!(
            "lab {} destroyed (caches kept in {})",
            self.topology.name,
            self.paths.cache_dir.display()
        )));
        Ok(())
    }

    /// Where this built lab stands in each chapter, in handbook order (`lab explain`):
    /// from the stage records on its nodes, asked as `lab status` asks them, and the
    /// faults in force.
    pub fn standings(&self) -> Vec<crate::explain::Standing> {
        let converged = match self.status() {
            Ok(LabStatus { probes: Some(probes), .. }) => probes.converged_stage,
            Ok(_) => Probed::Unknown("no machine runs (`lab up` starts them)".to_string()),
            Err(error) => Probed::Unknown(error.to_string()),
        };
        let in_force: Vec<String> =
            self.faults_in_force().unwrap_or_default().into_iter().map(|record| record.fault).collect();
        crate::explain::standings(&converged, &in_force)
    }

    /// `lab status`: every node's state, the lab's addresses and files, and, when a
    /// node runs, what the lab answers now (`Probes`: the API through the virtual
    /// IP, the node holding it, the etcd leader, how far the stages converged), each
    /// probe bounded in time. Changes nothing. A state directory that holds no lab is
    /// an error.
    pub fn status(&self) -> Result<LabStatus, LabError> {
        if !self.state.topology_record().exists() {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        }
        let machines = self.machines()?;
        let network = &self.topology.network;
        let pod_cidrs = plan::pod_cidrs(&self.topology);
        let mut nodes = Vec::new();
        for node in &self.topology.nodes {
            nodes.push(NodeStatus {
                name: node.name.clone(),
                address: node.address,
                roles: node.roles.clone(),
                state: machines.status(&node.name)?,
                memory_bytes: machines.memory_bytes(&node.name),
                pod_cidr: pod_cidrs.get(&node.name).copied(),
            });
        }
        let time_scale = machines.time_scale();
        let probes =
            nodes.iter().any(|node| node.state == MachineState::Running).then(|| self.probe(&nodes, time_scale));
        Ok(LabStatus {
            lab: self.topology.name.clone(),
            backend: self.topology.machines.backend,
            state_dir: self.paths.state_dir.clone(),
            bridge: plan::bridge_name(&self.topology.name),
            gateway: network.gateway,
            // The lab's total only when every node's is known.
            memory_bytes: nodes.iter().map(|node| node.memory_bytes).sum(),
            nodes,
            vip: network.vip,
            api_server_url: self.api_url(),
            pod_cidr: network.pod_cidr,
            service_cidr: network.service_cidr,
            cluster_dns_ip: network.cluster_dns,
            cluster_domain: network.cluster_domain.clone(),
            kubeconfig: self.state.admin_kubeconfig(),
            ssh_key: self.state.ssh_private_key(),
            ssh_user: "root".into(),
            time_scale,
            probes,
            faults: self.faults_in_force()?,
        })
    }

    /// Where `lab ssh NODE` goes: the node's address, once it is known to run and
    /// to be routed onto the lab bridge, with the lab's key.
    pub fn ssh_target(&self, node: &str) -> Result<(Ipv4Addr, PathBuf), LabError> {
        let target = self.require_node(node)?;
        let state = self.machines()?.status(node)?;
        if state != MachineState::Running {
            return Err(LabError::NodeNotRunning { node: node.to_string(), state });
        }
        // Nothing goes to a lab address unless the kernel sends it to the lab bridge.
        let bridge = plan::bridge_name(&self.topology.name);
        if !hostnet::address_is_on_bridge(&bridge, target.address)? {
            return Err(LabError::NotOnBridge { node: node.to_string(), address: target.address, bridge });
        }
        let key = self.state.ssh_private_key();
        if !key.exists() {
            return Err(LabError::NoKey { path: key });
        }
        Ok((target.address, key))
    }

    /// The topology's node `name`, else the error that lists its nodes.
    pub(crate) fn require_node(&self, name: &str) -> Result<&crate::topology::Node, LabError> {
        match self.topology.node(name) {
            Some(node) => Ok(node),
            None => Err(LabError::NoSuchNode {
                lab: self.topology.name.clone(),
                node: name.to_string(),
                nodes: self.topology.nodes.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The nodes `lab logs` reads: every node (or the one named) with the lab units
    /// the plan puts on it.
    pub fn units_by_node(&self, only: Option<&str>) -> Result<Vec<(String, Ipv4Addr, Vec<String>)>, LabError> {
        let plan = self.plan()?;
        if let Some(name) = only {
            self.require_node(name)?;
        }
        Ok(plan
            .nodes
            .iter()
            .filter(|summary| only.is_none_or(|name| name == summary.name))
            .map(|summary| (summary.name.clone(), summary.address, plan_units(plan, &summary.name)))
            .collect())
    }
}

/// The lab units the plan puts on `node`, in stage order, each once.
fn plan_units(plan: &Plan, node: &str) -> Vec<String> {
    let mut units: Vec<String> = Vec::new();
    for unit in plan
        .stages
        .iter()
        .flat_map(|stage| &stage.nodes)
        .filter(|actions| actions.node == node)
        .flat_map(|actions| &actions.units)
    {
        if !units.contains(&unit.name) {
            units.push(unit.name.clone());
        }
    }
    units
}

fn real_spec(topology: &Topology, paths: &LabPaths) -> LabSpec {
    LabSpec::from_topology(topology, &paths.state_dir, &paths.cache_dir)
}

/// The topology's backend as this build has it; `None` for libvirt without the feature.
fn real_machines(topology: &Topology, paths: &LabPaths) -> Option<Box<dyn Machines>> {
    machines::for_lab(topology.machines.backend, real_spec(topology, paths)).ok()
}

/// What building `lab` with `--features libvirt` needs: the virt crate links
/// libvirt, found through pkg-config.
fn libvirt_build_requirements() -> Vec<Requirement> {
    let libvirt_dev = std::process::Command::new("pkg-config")
        .args(["--exists", "libvirt"])
        .status()
        .is_ok_and(|status| status.success());
    vec![
        Requirement::program("pkg-config", "finds libvirt when building the libvirt backend", "pkg-config"),
        Requirement {
            what: "libvirt-dev (the libvirt backend links libvirt)".into(),
            met: libvirt_dev,
            package: Some("libvirt-dev".into()),
            fix: "apt-get install libvirt-dev".into(),
        },
    ]
}
