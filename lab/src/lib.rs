//! The lab CLI. `main` parses arguments, runs one verb and maps its outcome to an
//! exit code; each verb is a function in `verbs`, `machine_verbs`, `up`, `doctor`,
//! `fault_verbs`, `drill_verb`, `bench_verb`, `explain_verb` or `inspect_verbs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::{OsStringValueParser, PossibleValuesParser, TypedValueParser as _};
use clap::{ArgAction, Parser, Subcommand};
use provisioner::lab::{Lab, LabError, LabPaths, Real, Until, UpOptions};
use provisioner::plan::Stage;
use provisioner::topology::Backend;

mod bench_verb;
mod doctor;
mod drill_verb;
mod exercise_verb;
mod explain_verb;
mod fault_verbs;
mod inspect_verbs;
mod kubeconfig;
mod machine_verbs;
mod step;
mod suite_run;
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

    /// Lab state directory: PKI, SSH keys, machine disks, admin kubeconfig (default:
    /// .lab/ at the repository root).
    // Read as a string so that an empty one means the default, as an empty
    // XDG_CACHE_HOME does by the XDG rules, rather than a usage error.
    #[arg(long, global = true, value_name = "DIR", env = "LAB_DIR", value_parser = OsStringValueParser::new())]
    lab_dir: Option<OsString>,

    /// Base directory of the caches, which live in its k8s-lab/ and are shared by
    /// every lab (default: ~/.cache).
    #[arg(long, global = true, value_name = "DIR", env = "XDG_CACHE_HOME", value_parser = OsStringValueParser::new())]
    cache_home: Option<OsString>,

    /// Say more on stderr: -v the provisioner's info messages, -vv debug, -vvv trace
    /// (RUST_LOG, when set, chooses instead).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Only errors on stderr: no progress lines, no warnings.
    #[arg(short, long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Build the lab: preflight, machines, then every stage in handbook order.
    Up {
        /// Stop after this stage (`machines` or a stage name from `lab plan`).
        #[arg(long, value_name = "STAGE", value_parser = until_parser(), conflicts_with = "only")]
        until: Option<Until>,
        /// Start at this stage: the stages before it must already match the plan on
        /// every node (`lab diff` shows where they do not), or no stage runs.
        #[arg(long, value_name = "STAGE", value_parser = stage_parser(), conflicts_with = "only")]
        from: Option<Stage>,
        /// Run this stage alone: `--from STAGE --until STAGE`.
        #[arg(long, value_name = "STAGE", value_parser = stage_parser())]
        only: Option<Stage>,
        /// Pause before each stage to tell what it does: Enter runs it, `s` runs the
        /// rest without pausing, `q` stops there. Without a terminal, no pauses.
        #[arg(long, conflicts_with = "json")]
        step: bool,
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
        /// Only this machine, as if its power were cut (repeatable); the others run on,
        /// and `lab up` starts it again.
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
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
    /// List every lab on this host (found from the bridges the labs tag, and the state
    /// directory): name, state directory, backend, nodes' states, API URL.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show what `up` will do: nodes, addresses, certificates, stages.
    Plan {
        /// The whole plan as JSON (secrets redacted).
        #[arg(long)]
        json: bool,
        /// What `lab up` would change on the running lab, without changing it: the
        /// workers the topology adds or removes (or why it refuses the edit) and every
        /// existing node that differs from the plan. Exit 1 when something would change.
        #[arg(long)]
        diff: bool,
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
    /// Run the lab's kubectl with the admin kubeconfig; exits with kubectl's code.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the path of the lab's admin kubeconfig.
    Kubeconfig {
        /// Also add the lab as cluster, user and context `lab-NAME` to the first file
        /// of $KUBECONFIG, else ~/.kube/config; `lab destroy` takes them out again.
        #[arg(long)]
        merge: bool,
        /// The path (and what was merged) as JSON.
        #[arg(long)]
        json: bool,
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
    /// Explain the handbook's chapters as the lab builds them: without a stage, each
    /// chapter with where the lab stands; with one, what it sets up and why, its files,
    /// units, commands and checks per node, and its faults.
    Explain {
        /// The chapter (a stage name of `lab plan`).
        #[arg(value_name = "STAGE", value_parser = stage_parser())]
        stage: Option<Stage>,
        /// Only what the chapter does on this node.
        #[arg(long, value_name = "NODE", requires = "stage")]
        node: Option<String>,
        /// The chapters, or the chapter, as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check one chapter on the running lab, changing nothing: every node it touches
    /// compared with the plan (files, modes, owners, units) and its checks run once;
    /// PASS or FAIL per node with what is wrong and a hint. Exit 1 on FAIL.
    Check {
        /// The chapter (a stage name of `lab plan`).
        #[arg(value_name = "STAGE", value_parser = stage_parser())]
        stage: Stage,
        /// Only this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show how the running lab's nodes differ from the plan (files, modes, owners,
    /// units), for one chapter or all, changing nothing. Exit 1 when any differs.
    Diff {
        /// Only this chapter (a stage name of `lab plan`).
        #[arg(value_name = "STAGE", value_parser = stage_parser())]
        stage: Option<Stage>,
        /// Only this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Diagnose a fault from its symptom: breaks one of the catalogue at random
    /// without naming it; `--hint`, `--check` and `--give-up` go on from there.
    Exercise {
        /// Break this fault instead of one picked at random.
        #[arg(long, value_name = "FAULT", conflicts_with_all = ["hint", "check", "give_up"])]
        fault: Option<String>,
        /// Name the chapter the fault is in.
        #[arg(long, conflicts_with_all = ["check", "give_up"])]
        hint: bool,
        /// Run the conformance tests the fault turns red: solved when they pass (exit 1
        /// while they do not).
        #[arg(long, conflicts_with = "give_up")]
        check: bool,
        /// Restore the lab, end the exercise and say what the fault was.
        #[arg(long)]
        give_up: bool,
        /// The outcome as one JSON object on stdout (the fault only once it is over).
        #[arg(long)]
        json: bool,
    },
    /// List the fault catalogue: what `lab break` can break, where, and which
    /// conformance tests must then fail.
    Faults {
        #[arg(long)]
        json: bool,
    },
    /// Break one thing in the running lab on purpose (see `lab faults`); `lab
    /// status` shows it and `lab restore` undoes it.
    Break {
        /// The fault's name from `lab faults`.
        fault: String,
        /// The node, for faults that go to one node (default: the catalogue's choice).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// The outcome as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the failover drills against the lab (conformance tests, from the source
    /// checkout) and print what each measured against its bound.
    Drill {
        /// Only this drill (default: every one).
        name: Option<String>,
        /// The table as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check the running lab against the CIS Kubernetes Benchmark (the conformance
    /// suite's CIS checks, from the source checkout): PASS, FAIL, WARN or INFO per
    /// recommendation, as kube-bench reports it.
    Bench {
        /// The report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Undo injected faults and converge the lab to its plan; returns once the
    /// cluster serves again.
    Restore {
        /// Only this fault (default: every fault in force).
        #[arg(conflicts_with = "all")]
        fault: Option<String>,
        /// Every fault in force (the default without FAULT).
        #[arg(long)]
        all: bool,
        /// Progress as JSON lines, then the outcome as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// How `lab` ends; scripts may rely on these numbers. `lab kubectl` is the one
/// exception: it exits with kubectl's own code once kubectl ran.
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return command_line_error(error),
    };
    terminal::init(cli.verbose, cli.quiet, std::env::var("RUST_LOG").ok().as_deref());
    match run(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", describe(&failure.error));
            failure.exit.into()
        }
    }
}

/// Help and version go out as clap prints them. A wrong command line is one line on
/// stderr, exit 2: what was wrong, the valid values and clap's tip, so that a script's
/// log and a learner's terminal show the whole reason in one place.
fn command_line_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can fail only on a closed stdout, where nothing is left to say.
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(Exit::Usage as u8))
        }
        _ => {
            eprintln!("{}", one_line(&error.render().to_string()));
            Exit::Usage.into()
        }
    }
}

/// clap's several-line message as one line: its lines joined with "; ", without the
/// pointer to `--help` and the brackets around the valid values.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .map(|line| line.strip_prefix('[').and_then(|line| line.strip_suffix(']')).unwrap_or(line))
        .collect::<Vec<_>>()
        .join("; ")
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

/// `--until`: `machines` or a stage name of `lab plan`, checked by clap (which lists them).
fn until_parser() -> impl clap::builder::TypedValueParser<Value = Until> {
    PossibleValuesParser::new(std::iter::once("machines").chain(Stage::ALL.map(Stage::name)))
        .map(|name| Stage::from_name(&name).map_or(Until::Machines, Until::Stage))
}

/// A stage name of `lab plan`, checked by clap (which lists them).
fn stage_parser() -> impl clap::builder::TypedValueParser<Value = Stage> {
    PossibleValuesParser::new(Stage::ALL.map(Stage::name))
        .map(|name| Stage::from_name(&name).expect("clap let through only the stages' names"))
}

/// Runs the verb; the exit code of a verb that did not fail.
fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let paths = Paths::resolve(&cli);
    let done = match cli.verb {
        Verb::Plan { json, diff: false } => verbs::plan(&paths, json),
        Verb::Plan { json, diff: true } => crate::inspect_verbs::plan_diff(&paths, json),
        Verb::Render { dir } => verbs::render(&paths, &dir),
        Verb::Up { until, from, only, step, json, no_install } => {
            let options = UpOptions {
                until: only.map(Until::Stage).or(until).unwrap_or(Until::Everything),
                from: only.or(from),
                step,
                set_up_host: !no_install,
            };
            up::up(&paths, options, json)
        }
        Verb::Down { nodes, json } => machine_verbs::down(&paths, &nodes, json),
        Verb::Destroy { json } => machine_verbs::destroy(&paths, json),
        Verb::Status { json } => machine_verbs::status(&paths, json),
        Verb::List { json } => machine_verbs::list(&paths, json),
        Verb::Ssh { node, command } => machine_verbs::ssh(&paths, &node, &command),
        Verb::Kubectl { args } => return verbs::kubectl(&paths, &args),
        Verb::Kubeconfig { merge, json } => machine_verbs::kubeconfig(&paths, merge, json),
        Verb::Logs { node, unit, lines } => verbs::logs(&paths, node.as_deref(), unit.as_deref(), lines),
        Verb::Doctor { json, check } => doctor::doctor(&paths, json, !check),
        Verb::Faults { json } => fault_verbs::list(&paths, json),
        Verb::Break { fault, node, json } => fault_verbs::break_fault(&paths, &fault, node.as_deref(), json),
        Verb::Restore { fault, all: _, json } => fault_verbs::restore(&paths, fault.as_deref(), json),
        Verb::Exercise { fault, hint, check, give_up, json } => {
            let action = match (hint, check, give_up) {
                (true, _, _) => exercise_verb::Action::Hint,
                (_, true, _) => exercise_verb::Action::Check,
                (_, _, true) => exercise_verb::Action::GiveUp,
                _ => exercise_verb::Action::Start,
            };
            exercise_verb::exercise(&paths, action, fault.as_deref(), json)
        }
        Verb::Drill { name, json } => drill_verb::drill(&paths, name.as_deref(), json),
        Verb::Bench { json } => bench_verb::bench(&paths, json),
        Verb::Explain { stage, node, json } => explain_verb::explain(&paths, stage, node.as_deref(), json),
        Verb::Check { stage, node, json } => inspect_verbs::check(&paths, stage, node.as_deref(), json),
        Verb::Diff { stage, node, json } => inspect_verbs::diff(&paths, stage, node.as_deref(), json),
    };
    done.map(|()| Exit::Success.into())
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
    /// The user's own kubeconfig (`$KUBECONFIG`'s first file, else
    /// `~/.kube/config`), for `lab kubeconfig --merge` and `lab destroy`.
    pub user_kubeconfig: Option<PathBuf>,
    /// The options of this command line that a follow-up command needs to reach the
    /// same lab (`--topology`, `--lab-dir`, `--backend`), each with a leading space, for
    /// the commands a verb suggests next.
    pub lab_options: String,
}

impl Paths {
    /// The paths of the command line; clap has read `LAB_DIR` and `XDG_CACHE_HOME`
    /// into their options already.
    fn resolve(cli: &Cli) -> Self {
        // An installed `lab` whose checkout is gone works in the current directory,
        // the way `vagrant` reads the Vagrantfile there: `lab.toml` and `.lab/`.
        let repository = source_checkout().unwrap_or_else(|| PathBuf::from("."));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let given = |option: &Option<OsString>| option.clone().filter(|path| !path.is_empty()).map(PathBuf::from);
        let state_dir = given(&cli.lab_dir).unwrap_or_else(|| repository.join(".lab"));
        let cache_dir = given(&cli.cache_home)
            .or_else(|| home.as_ref().map(|home| home.join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"))
            .join("k8s-lab");
        let kubeconfig_env: Option<OsString> = std::env::var_os("KUBECONFIG");
        let mut lab_options = String::new();
        if let Some(topology) = &cli.topology {
            lab_options += &format!(" --topology {}", provisioner::host::shell_quote(&topology.to_string_lossy()));
        }
        if let Some(lab_dir) = given(&cli.lab_dir) {
            lab_options += &format!(" --lab-dir {}", provisioner::host::shell_quote(&lab_dir.to_string_lossy()));
        }
        if let Some(backend) = cli.backend {
            lab_options += &format!(" --backend {backend}");
        }
        Paths {
            topology: cli.topology.clone().unwrap_or_else(|| repository.join("lab.toml")),
            state_dir: absolute(state_dir),
            cache_dir: absolute(cache_dir),
            backend: cli.backend,
            user_kubeconfig: kubeconfig::user_file(kubeconfig_env.as_deref(), home.as_deref()),
            lab_options,
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
        if !terminal::quiet() {
            for warning in lab.warnings() {
                eprintln!("warning: {}: {warning}", self.topology.display());
            }
        }
        Ok(lab)
    }

    /// The lab this state directory holds (`down`, `destroy`, `status`, `ssh`,
    /// `kubectl`, `kubeconfig`, `logs`); a "no lab" error without one.
    pub(crate) fn existing_lab(&self) -> Result<Lab, Failure> {
        Ok(Lab::existing(self.lab_paths(), self.backend, surroundings())?)
    }
}

/// The checkout this `lab` was built from, while it is still there: under `cargo lab`
/// always; after `cargo install --path lab` only until the checkout is removed.
pub(crate) fn source_checkout() -> Option<PathBuf> {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    repository.join("lab.toml").is_file().then(|| repository.to_owned())
}

/// This host; the lab-dns image is built from the checkout's dns/ crate (without a
/// checkout the artifact build says so when it needs the source).
pub(crate) fn surroundings() -> Box<Real> {
    let workspace_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_owned();
    Box::new(Real { workspace_dir })
}

/// `path` made absolute, with its `.` and `..` resolved by name. The lab recognises
/// its machines' processes by the state directory's path in their command lines, so
/// one directory must have one spelling: `--lab-dir examples/../.lab` found every
/// machine of `.lab` stopped.
fn absolute(path: PathBuf) -> PathBuf {
    let path = std::path::absolute(&path).unwrap_or(path);
    let mut resolved = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            other => resolved.push(other),
        }
    }
    resolved
}
