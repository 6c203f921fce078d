//! `Lab::up`'s whole sequence against a fake machines backend and recording hosts:
//! what is done once, in which order, and what a refusal leaves behind (nothing).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::host::{Host, HostError, Output, RecordingHost};
use crate::machines::{hostnet, NodeImage, NodeSpec, StartOutcome, StopOutcome};
use crate::plan::{HostRoute, NetworkPlan, Stage};
use crate::preflight::{Finding, HostSetup, PreflightError, Report, Status};
use crate::readiness::{ReadinessError, Steady};
use crate::ssh::KeyPair;

/// Everything the fakes were asked, in order.
#[derive(Default)]
struct Journal {
    calls: Mutex<Vec<String>>,
}

impl Journal {
    fn note(&self, call: impl Into<String>) {
        self.calls.lock().unwrap().push(call.into());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.calls().iter().filter(|call| call.starts_with(prefix)).count()
    }
}

/// Machines that exist only in memory.
struct FakeMachines {
    journal: Arc<Journal>,
    running: Mutex<BTreeMap<String, bool>>,
}

impl Machines for FakeMachines {
    fn backend(&self) -> Backend {
        Backend::Nspawn
    }

    fn requirements(&self) -> Vec<Requirement> {
        Vec::new()
    }

    fn ensure_image(&self, _progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
        self.journal.note("machines: image");
        Ok(NodeImage { key: "node-test".into(), root: PathBuf::from("/images/node-test"), from_cache: true })
    }

    fn ensure_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
        self.journal.note(format!("machines: network with {} routes", routes.len()));
        Ok(hostnet::NetworkReport { bridge_created: true, routes: Vec::new() })
    }

    fn create_or_start(&self, node: &NodeSpec, _: &NodeImage, key: &str) -> Result<StartOutcome, MachineError> {
        assert!(key.starts_with("ssh-ed25519 "), "the lab's public key goes to every node");
        self.journal.note(format!("machines: start {}", node.name));
        self.running.lock().unwrap().insert(node.name.clone(), true);
        Ok(StartOutcome::Started { created: true })
    }

    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError> {
        self.journal.note(format!("machines: stop {node}"));
        self.running.lock().unwrap().insert(node.to_string(), false);
        Ok(StopOutcome::Stopped)
    }

    fn status(&self, node: &str) -> Result<MachineState, MachineError> {
        Ok(match self.running.lock().unwrap().get(node) {
            Some(true) => MachineState::Running,
            Some(false) => MachineState::Stopped,
            None => MachineState::Missing,
        })
    }

    fn known_nodes(&self) -> Vec<String> {
        self.running.lock().unwrap().keys().cloned().collect()
    }

    fn console_log(&self, _node: &str) -> Option<PathBuf> {
        None
    }

    fn destroy(&self) -> Vec<Leftover> {
        self.journal.note("machines: destroy");
        Vec::new()
    }
}

/// A recording host the test can still read after the executor dropped its box.
struct SharedHost(Arc<RecordingHost>);

impl Host for SharedHost {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn run(&self, script: &str) -> Result<Output, HostError> {
        self.0.run(script)
    }
    fn put_file(&self, path: &str, mode: u32, owner: &str, content: &[u8]) -> Result<(), HostError> {
        self.0.put_file(path, mode, owner, content)
    }
    fn copy_file(&self, path: &str, mode: u32, owner: &str, local: &Path) -> Result<(), HostError> {
        self.0.copy_file(path, mode, owner, local)
    }
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.0.read_file(path)
    }
}

/// A host that passes every check it is given (or fails the ones in `failing`,
/// until it is set up when `installable`).
struct FakeSurroundings {
    journal: Arc<Journal>,
    hosts: Mutex<BTreeMap<String, Arc<RecordingHost>>>,
    failing: Mutex<Vec<Finding>>,
    installable: bool,
}

impl Surroundings for FakeSurroundings {
    fn preflight(&self, _: &Topology, _: &Path, _: &Path, _: &[Requirement]) -> Report {
        self.journal.note("preflight");
        Report { findings: self.failing.lock().unwrap().clone() }
    }

    fn set_up_host(&self, report: &Report, _: &dyn Fn(&str)) -> Result<HostSetup, PreflightError> {
        self.journal.note("set up host");
        let packages = report.missing_packages();
        if !self.installable {
            return Err(PreflightError::NotRoot { packages: packages.join(" "), command: "apt-get install".into() });
        }
        self.failing.lock().unwrap().clear();
        Ok(HostSetup { installed: packages, ..HostSetup::default() })
    }

    fn ensure_artifacts(&self, _: &Topology, _: &Path, _: &dyn Fn(&str)) -> Result<(), ArtifactError> {
        self.journal.note("artifacts");
        Ok(())
    }

    fn connect(&self, node: &str, _: Ipv4Addr, _: &KeyPair, _: Duration) -> Result<Box<dyn Host>, HostError> {
        self.journal.note(format!("connect {node}"));
        let host = Arc::new(RecordingHost::new(node));
        self.hosts.lock().unwrap().insert(node.to_string(), Arc::clone(&host));
        Ok(Box::new(SharedHost(host)))
    }

    fn prove_ready(&self, _: &NetworkPlan, _: u32) -> Result<Steady, ReadinessError> {
        self.journal.note("ready");
        Ok(Steady { rounds: 10, failures: 0, elapsed: Duration::from_millis(1) })
    }
}

/// The events a verb reported, by kind.
#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<Stage>>,
}

impl Reporter for Recorder {
    fn report(&self, event: Event<'_>) {
        if let Event::StageDone { report } = event {
            self.stages.lock().unwrap().push(report.stage);
        }
    }
}

struct Fixture {
    lab: Lab,
    journal: Arc<Journal>,
    _dirs: tempfile::TempDir,
}

/// The minimal example lab on fakes, in a temporary state and cache directory whose
/// artifacts are tiny stand-in files.
fn fixture(failing: Vec<Finding>) -> Fixture {
    fixture_on(failing, false)
}

/// `fixture` on a host where installing fixes what is `failing` when `installable`.
fn fixture_on(failing: Vec<Finding>, installable: bool) -> Fixture {
    let dirs = tempfile::tempdir().expect("temporary directory");
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("a workspace");
    let paths = LabPaths {
        topology: repository.join("examples/minimal.toml"),
        state_dir: dirs.path().join("state"),
        cache_dir: dirs.path().join("cache"),
    };
    let topology = Topology::load(&paths.topology).expect("the example is valid").topology;
    let artifacts = Artifacts::expected(&topology, &paths.cache_dir);
    for path in artifacts.binaries.values().chain(artifacts.images.iter().map(|image| &image.path)) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"stand-in").unwrap();
    }
    let journal = Arc::new(Journal::default());
    let machines = FakeMachines { journal: Arc::clone(&journal), running: Mutex::new(BTreeMap::new()) };
    let surroundings = FakeSurroundings {
        journal: Arc::clone(&journal),
        hosts: Mutex::new(BTreeMap::new()),
        failing: Mutex::new(failing),
        installable,
    };
    let lab = Lab::with_parts(topology, paths, Box::new(machines), Box::new(surroundings));
    Fixture { lab, journal, _dirs: dirs }
}

#[test]
fn up_runs_every_part_once_and_every_stage_in_handbook_order() {
    let fixture = fixture(Vec::new());
    let recorder = Recorder::default();
    let report = fixture.lab.up(Until::Everything.into(), &recorder).expect("up succeeds on fakes");

    let journal = &fixture.journal;
    assert_eq!(journal.count("preflight"), 1, "{:?}", journal.calls());
    assert_eq!(journal.count("machines: image"), 1);
    assert_eq!(journal.count("machines: network"), 1);
    assert_eq!(journal.count("machines: start "), 2);
    assert_eq!(journal.count("connect "), 2, "one session per node, kept for the stages");
    assert_eq!(journal.count("artifacts"), 1);
    assert_eq!(journal.count("ready"), 1);
    let calls = journal.calls();
    let position = |call: &str| calls.iter().position(|seen| seen.starts_with(call)).expect(call);
    assert!(position("preflight") < position("machines: image"), "nothing is made before the preflight");
    assert!(position("machines: network") < position("machines: start"), "routes exist before any node runs");
    assert!(position("connect") < position("artifacts"));

    let plan_order: Vec<Stage> = fixture.lab.plan().unwrap().stages.iter().map(|stage| stage.stage).collect();
    assert_eq!(*recorder.stages.lock().unwrap(), plan_order);
    assert_eq!(report.stages.len(), plan_order.len());
    assert!(fixture.lab.state().timings().exists(), "timings.json is written last");
    assert!(fixture.lab.state().topology_record().exists(), "the state directory is claimed");
}

#[test]
fn up_until_machines_stops_before_the_artifacts_and_stages() {
    let fixture = fixture(Vec::new());
    let report = fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    assert!(report.stages.is_empty());
    assert_eq!(fixture.journal.count("artifacts"), 0);
    assert_eq!(fixture.journal.count("ready"), 0);
    assert_eq!(fixture.journal.count("machines: start "), 2);
}

#[test]
fn a_host_that_cannot_run_the_lab_is_refused_before_anything_is_made() {
    let failing = vec![Finding {
        check: "systemd-nspawn (runs the nodes)".into(),
        status: Status::Fail,
        detail: "not installed".into(),
        fix: Some("apt-get install systemd-container".into()),
        package: Some("systemd-container".into()),
    }];
    let fixture = fixture(failing);
    let error = fixture.lab.up(Until::Everything.into(), &Silent).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "the host cannot run the lab yet; nothing was created:\n  - systemd-nspawn (runs the nodes): not \
         installed\n      fix: apt-get install systemd-container\nas root, `lab up` (without --no-install) and \
         `lab doctor` install what is missing"
    );
    assert_eq!(fixture.journal.calls(), vec!["preflight".to_string()]);
    assert!(!fixture.lab.state().root().exists(), "no state directory is made");
}

#[test]
fn up_installs_what_the_host_lacks_then_goes_on_unless_told_not_to() {
    let missing = Finding {
        check: "mmdebstrap (builds the node image)".into(),
        status: Status::Fail,
        detail: "missing (Debian package mmdebstrap)".into(),
        fix: Some("apt-get install -y --no-install-recommends mmdebstrap".into()),
        package: Some("mmdebstrap".into()),
    };
    let fixture = fixture_on(vec![missing.clone()], true);
    let options = UpOptions { until: Until::Machines, set_up_host: true };
    fixture.lab.up(options, &Silent).expect("the host is set up, then the machines come up");
    let calls = fixture.journal.calls();
    assert_eq!(calls[..3], ["preflight", "set up host", "preflight"], "checked again after the install: {calls:?}");

    // Without root the host is left alone and the lab is refused with the fixes.
    let fixture = fixture_on(vec![missing.clone()], false);
    let error = fixture.lab.up(options, &Silent).expect_err("refused");
    assert!(error.to_string().contains("fix: apt-get install -y --no-install-recommends mmdebstrap"), "{error}");
    assert_eq!(fixture.journal.calls(), ["preflight", "set up host"]);

    // `--no-install`: nothing is installed, even where it could be.
    let fixture = fixture_on(vec![missing], true);
    fixture.lab.up(Until::Machines.into(), &Silent).expect_err("refused");
    assert_eq!(fixture.journal.calls(), ["preflight"]);
    assert!(!fixture.lab.state().root().exists(), "no state directory is made");
}

#[test]
fn status_takes_pod_ranges_from_the_plan_and_down_stops_every_node() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let status = fixture.lab.status().expect("status");
    let worker = status.nodes.iter().find(|node| node.name == "worker1").unwrap();
    assert_eq!(worker.pod_cidr, Some("10.202.0.0/24".parse().unwrap()));
    assert!(status.nodes.iter().all(|node| node.state == MachineState::Running));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["backend"], "nspawn");
    assert_eq!(json["nodes"][0]["state"], "running");
    assert_eq!(serde_json::from_value::<LabStatus>(json).unwrap(), status, "the suite reads what status writes");

    fixture.lab.down(&Silent).expect("down");
    assert_eq!(fixture.journal.count("machines: stop "), 2);
    assert!(fixture.lab.status().unwrap().nodes.iter().all(|node| node.state == MachineState::Stopped));
}

#[test]
fn another_backend_than_the_recorded_one_is_a_usage_error() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let paths = fixture.lab.paths().clone();
    let error = Lab::existing(paths, Some(Backend::Vagrant), Box::new(Real { workspace_dir: PathBuf::new() }))
        .err()
        .expect("refused");
    assert!(error.is_usage(), "{error}");
    assert!(error.to_string().starts_with("lab k8smin in "), "{error}");
    assert!(error.to_string().ends_with("use `--backend nspawn` (or `lab destroy` it first)"), "{error}");
}

#[test]
fn a_state_directory_without_a_record_holds_no_lab_whatever_the_topology_file_says() {
    let fixture = fixture(Vec::new());
    let paths = fixture.lab.paths().clone();
    let error =
        Lab::existing(paths.clone(), None, Box::new(Real { workspace_dir: PathBuf::new() })).err().expect("no lab");
    assert!(matches!(error, LabError::NoLab { .. }), "{error}");
    assert!(!error.is_usage() && !error.is_topology(), "{error}");
    assert!(error.to_string().starts_with(&format!("no lab in {}: ", paths.state_dir.display())), "{error}");
    assert!(!paths.state_dir.exists(), "asking writes nothing");

    fixture.lab.up(Until::Machines, &Silent).expect("machines come up");
    let lab = Lab::existing(paths, None, Box::new(Real { workspace_dir: PathBuf::new() })).expect("the recorded lab");
    assert_eq!(lab.topology().name, "k8smin");
}
