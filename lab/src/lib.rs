//! The lab CLI. `main` parses arguments, runs one verb and maps its outcome to an
//! exit code; each verb is a function in `verbs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Parser, Subcommand};
use provisioner::lab::{Lab, LabError, LabPaths, Real, UpOptions};
use provisioner::topology::Backend;

mod doctor;
mod machine_verbs;
mod terminal;
mod up;
mod verbs;

/// Builds the handbook's HA Kubernetes cluster from scratch on local machines.
#[derive(Debug, Parser)]
#[command(name = "lab", version, about, long_about = None)]
pub struct Cli {
    /// Topology file (default: lab.toml at the repository root).
    #[arg(long, global = true, value_name = "FILE")]
    topology: Option<PathBuf>,

    /// Machine backend, instead of the topology's `[machines] backend`.
    #[arg(long, global = true, value_name = "BACKEND", value_parser = backend_parser())]
    backend: Option<Backend>,

    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Build the lab: preflight, machines, then every stage in handbook order.
    Up {
        /// Stop after this stage (`machines` or a stage name from `lab plan`).
        #[arg(long, value_name = "STAGE")]
        until: Option<String>,
        /// Progress as JSON lines on stdout, the last one `{"event": "done", ...}`.
        #[arg(long)]
        json: bool,
        /// Refuse, with the fixes, when the host lacks something, instead of
        /// installing it (packages, the deb-src entry, cargo-nextest) as `doctor` does.
        #[arg(long)]
        no_install: bool,
    },
    /// Stop the machines, keeping disks and state.
    Down {
        /// Progress as JSON lines on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove machines, bridge, routes and state (caches stay).
    Destroy {
        /// Progress as JSON lines on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show the lab's nodes and their state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show what `up` will do: nodes, addresses, certificates, stages.
    Plan {
        /// The whole plan as JSON (secrets redacted).
        #[arg(long)]
        json: bool,
    },
    /// Write every node's planned files under DIR/NODE/.
    Render {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Open a shell on a node, or run a command there.
    Ssh {
        node: String,
        /// Command to run instead of an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run the lab's kubectl with the admin kubeconfig.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the journals of the lab's units (every node, or one).
    Logs {
        node: Option<String>,
        /// Only this unit, e.g. `etcd` or `kube-apiserver.service`.
        #[arg(long)]
        unit: Option<String>,
        /// Lines per unit.
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
    /// Check the host, and install the Debian packages the lab needs.
    Doctor {
        #[arg(long)]
        json: bool,
        /// Only check; install nothing.
        #[arg(long)]
        check: bool,
    },
}

/// How `lab` ends; scripts may rely on these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Something failed while running (a stage, a command, the host).
    Failure = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The topology file is unreadable or invalid.
    InvalidTopology = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        let error = error.into();
        let exit = match error.downcast_ref::<LabError>() {
            Some(lab_error) if lab_error.is_topology() => Exit::InvalidTopology,
            Some(lab_error) if lab_error.is_usage() => Exit::Usage,
            _ if error.downcast_ref::<provisioner::topology::TopologyError>().is_some() => Exit::InvalidTopology,
            _ => Exit::Failure,
        };
        Failure { exit, error }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => Exit::Success.into(),
        Err(failure) => {
            eprintln!("error: {}", describe(&failure.error));
            failure.exit.into()
        }
    }
}

/// The error and its causes on one line. Library errors often name their cause in
/// their own message already; a cause is added only when its text is not there yet.
fn describe(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// `--backend`: one of the backends' names, checked by clap (which lists them).
fn backend_parser() -> impl clap::builder::TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(["nspawn", "libvirt", "vagrant"]).map(|name| match name.as_str() {
        "libvirt" => Backend::Libvirt,
        "vagrant" => Backend::Vagrant,
        _ => Backend::Nspawn,
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let mut paths = Paths::resolve(cli.topology.as_deref());
    paths.backend = cli.backend;
    match cli.verb {
        Verb::Plan { json } => verbs::plan(&paths, json),
        Verb::Render { dir } => verbs::render(&paths, &dir),
        Verb::Up { until, json, no_install } => {
            let options = UpOptions { until: up::parse_until(until.as_deref())?, set_up_host: !no_install };
            up::up(&paths, options, json)
        }
        Verb::Down { json } => machine_verbs::down(&paths, json),
        Verb::Destroy { json } => machine_verbs::destroy(&paths, json),
        Verb::Status { json } => machine_verbs::status(&paths, json),
        Verb::Ssh { node, command } => machine_verbs::ssh(&paths, &node, &command),
        Verb::Kubectl { args } => verbs::kubectl(&paths, &args),
        Verb::Logs { node, unit, lines } => verbs::logs(&paths, node.as_deref(), unit.as_deref(), lines),
        Verb::Doctor { json, check } => doctor::doctor(&paths, json, !check),
    }
}

/// Where the topology, the lab state and the caches are.
pub struct Paths {
    pub topology: PathBuf,
    /// The lab state directory: PKI, SSH keys, machine disks, kubeconfig.
    pub state_dir: PathBuf,
    /// Built once and shared by every lab: node image, binaries, images.
    pub cache_dir: PathBuf,
    /// `--backend`, which replaces the topology's `[machines] backend`.
    pub backend: Option<Backend>,
}

impl Paths {
    fn resolve(topology: Option<&Path>) -> Self {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_owned();
        let state_dir = std::env::var_os("LAB_DIR").map(PathBuf::from).unwrap_or_else(|| repository.join(".lab"));
        let cache_dir = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"))
            .join("k8s-lab");
        Paths {
            topology: topology.map(Path::to_owned).unwrap_or_else(|| repository.join("lab.toml")),
            state_dir: absolute(state_dir),
            cache_dir: absolute(cache_dir),
            backend: None,
        }
    }
}

impl Paths {
    fn lab_paths(&self) -> LabPaths {
        LabPaths {
            topology: self.topology.clone(),
            state_dir: self.state_dir.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    /// The lab of the topology file (`lab up`, `plan`, `render`), its validation
    /// warnings printed.
    pub(crate) fn lab_from_file(&self) -> Result<Lab, Failure> {
        let lab = Lab::from_file(self.lab_paths(), self.backend, surroundings())?;
        for warning in lab.warnings() {
            eprintln!("warning: {}: {warning}", self.topology.display());
        }
        Ok(lab)
    }

    /// The lab this state directory holds (`down`, `destroy`, `status`, `ssh`).
    pub(crate) fn existing_lab(&self) -> Result<Lab, Failure> {
        Ok(Lab::existing(self.lab_paths(), self.backend, surroundings())?)
    }
}

/// This host; the lab-dns image is built from this workspace's dns/ crate.
fn surroundings() -> Box<Real> {
    let workspace_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_owned();
    Box::new(Real { workspace_dir })
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
