//! `Lab::up`'s whole sequence against a fake machines backend and recording hosts:
//! what is done once, in which order, and what a refusal leaves behind (nothing).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::host::{Call, Host, HostError, Output, RecordingHost};
use crate::machines::{hostnet, NodeImage, NodeSpec, StartOutcome, StopOutcome};
use crate::plan::{HostRoute, NetworkPlan, Stage};
use crate::preflight::{Finding, HostSetup, PreflightError, Report, Status};
use crate::readiness::{ReadinessError, Steady};
use crate::ssh::KeyPair;
use crate::stages::kubelet;

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

/// Machines that exist only in memory, whose consoles are files in `console_dir`.
struct FakeMachines {
    journal: Arc<Journal>,
    running: Mutex<BTreeMap<String, bool>>,
    console_dir: PathBuf,
    /// A node that fails to start, with what its console says.
    broken: Option<String>,
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
        let routes: Vec<String> = routes
            .iter()
            .map(|route| {
                let via: Vec<String> = route.via.iter().map(ToString::to_string).collect();
                format!("{} via [{}]", route.destination, via.join(" "))
            })
            .collect();
        self.journal.note(format!("machines: network {}", routes.join(", ")));
        Ok(hostnet::NetworkReport { bridge_created: true, routes: Vec::new() })
    }

    fn create_or_start(&self, node: &NodeSpec, _: &NodeImage, key: &str) -> Result<StartOutcome, MachineError> {
        assert!(key.starts_with("ssh-ed25519 "), "the lab's public key goes to every node");
        self.journal.note(format!("machines: start {}", node.name));
        let preload: Vec<&str> = node.preload.iter().map(|file| file.path.as_str()).collect();
        self.journal.note(format!("preload on {}: {}", node.name, preload.join(" ")));
        if self.broken.as_deref() == Some(node.name.as_str()) {
            std::fs::create_dir_all(&self.console_dir).unwrap();
            std::fs::write(self.console_dir.join(&node.name), "Kernel panic - not syncing\n").unwrap();
            return Err(MachineError::Node { node: node.name.clone(), message: "exited at once".into() });
        }
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

    fn console_log(&self, node: &str) -> Option<PathBuf> {
        Some(self.console_dir.join(node)).filter(|path| path.exists())
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
    /// The latest session to each node.
    hosts: Arc<Mutex<BTreeMap<String, Arc<RecordingHost>>>>,
    failing: Mutex<Vec<Finding>>,
    installable: bool,
    /// Canned replies: (node, script prefix, what the script returns).
    replies: Vec<(String, String, Output)>,
    artifacts_fail: bool,
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
        if self.artifacts_fail {
            return Err(ArtifactError::DirNotSet);
        }
        Ok(())
    }

    fn connect(&self, node: &str, _: Ipv4Addr, _: &KeyPair, _: Duration) -> Result<Box<dyn Host>, HostError> {
        self.journal.note(format!("connect {node}"));
        let host = Arc::new(RecordingHost::new(node));
        for (_, prefix, output) in self.replies.iter().filter(|(name, ..)| name == node) {
            host.reply(prefix, output.clone());
        }
        self.hosts.lock().unwrap().insert(node.to_string(), Arc::clone(&host));
        Ok(Box::new(SharedHost(host)))
    }

    fn prove_ready(&self, _: &NetworkPlan, _: u32, _: &AtomicBool) -> Result<Steady, ReadinessError> {
        self.journal.note("ready");
        Ok(Steady { rounds: 10, failures: 0, elapsed: Duration::from_millis(1) })
    }

    fn verify_routes(&self, bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), String> {
        self.journal.note(format!("routes {bridge} {addresses:?}"));
        Ok(())
    }

    fn api_health(&self, url: &str, _: &Path, _: Duration) -> Result<ApiHealth, String> {
        self.journal.note(format!("GET {url}"));
        Ok(ApiHealth { healthy: true, answer: "ok".into() })
    }
}

/// The events a verb reported, by kind.
#[derive(Default)]
struct Recorder {
    /// The stages that passed, in the order they did.
    stages: Mutex<Vec<Stage>>,
    /// Each stage as it started, with the stages that had passed by then.
    started: Mutex<Vec<(Stage, Vec<Stage>)>>,
}

impl Reporter for Recorder {
    fn report(&self, event: Event<'_>) {
        match event {
            Event::StageDone { report } => self.stages.lock().unwrap().push(report.stage),
            Event::StageStarted { stage, .. } => {
                let passed = self.stages.lock().unwrap().clone();
                self.started.lock().unwrap().push((stage, passed));
            }
            _ => {}
        }
    }
}

struct Fixture {
    lab: Lab,
    journal: Arc<Journal>,
    hosts: Arc<Mutex<BTreeMap<String, Arc<RecordingHost>>>>,
    _dirs: tempfile::TempDir,
}

/// The minimal example lab on fakes, in a temporary state and cache directory whose
/// artifacts are tiny stand-in files.
fn fixture(failing: Vec<Finding>) -> Fixture {
    fixture_with(failing, Vec::new(), Broken::Nothing)
}

/// `fixture` on a host where installing fixes what is `failing` when `installable`.
fn fixture_on(failing: Vec<Finding>, installable: bool) -> Fixture {
    fixture_of(failing, installable, Vec::new(), Broken::Nothing)
}

/// What fails in a fixture besides what its hosts reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Broken<'a> {
    Nothing,
    /// This node does not start.
    Node(&'a str),
    Artifacts,
}

/// `fixture` whose nodes give the canned `replies` (node, script prefix, output), with
/// one part `broken`.
fn fixture_with(failing: Vec<Finding>, replies: Vec<(String, String, Output)>, broken: Broken<'_>) -> Fixture {
    fixture_of(failing, false, replies, broken)
}

/// Every fixture: the host's `failing` checks (fixed by installing when
/// `installable`), the nodes' canned `replies` and one part `broken`.
fn fixture_of(
    failing: Vec<Finding>,
    installable: bool,
    replies: Vec<(String, String, Output)>,
    broken: Broken<'_>,
) -> Fixture {
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
    let machines = FakeMachines {
        journal: Arc::clone(&journal),
        running: Mutex::new(BTreeMap::new()),
        console_dir: dirs.path().join("consoles"),
        broken: match broken {
            Broken::Node(node) => Some(node.to_string()),
            _ => None,
        },
    };
    let hosts = Arc::new(Mutex::new(BTreeMap::new()));
    let surroundings = FakeSurroundings {
        journal: Arc::clone(&journal),
        hosts: Arc::clone(&hosts),
        failing: Mutex::new(failing),
        installable,
        replies,
        artifacts_fail: broken == Broken::Artifacts,
    };
    let lab = Lab::with_parts(topology, paths, Box::new(machines), Box::new(surroundings));
    Fixture { lab, journal, hosts, _dirs: dirs }
}

impl Fixture {
    /// The scripts run in the latest session to `node`.
    fn scripts_on(&self, node: &str) -> Vec<String> {
        let hosts = self.hosts.lock().unwrap();
        let calls = hosts.get(node).map(|host| host.calls()).unwrap_or_default();
        calls
            .into_iter()
            .filter_map(|call| match call {
                Call::Run(script) => Some(script),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn up_runs_every_part_once_and_every_stage_after_the_stages_it_needs() {
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
    assert!(position("artifacts") < position("machines: start"), "new disks are made with the artifacts");
    let preloaded = |node: &str| calls.iter().find(|call| call.starts_with(&format!("preload on {node}:"))).unwrap();
    let worker = preloaded("worker1");
    for path in ["/usr/local/bin/kubelet", "/usr/local/bin/kube-proxy", "/var/lib/k8s-lab/images/pause-3.2.tar"] {
        assert!(worker.contains(path), "{path} missing from {worker}");
    }
    assert!(!worker.contains("kube-apiserver"), "a worker gets only what its plan puts on it: {worker}");
    assert!(preloaded("master1").contains("/usr/local/bin/kube-apiserver"));

    let plan_order: Vec<Stage> = fixture.lab.plan().unwrap().stages.iter().map(|stage| stage.stage).collect();
    let mut passed = recorder.stages.lock().unwrap().clone();
    passed.sort();
    assert_eq!(passed, plan_order, "every stage passed once");
    for (stage, passed_before) in recorder.started.lock().unwrap().iter() {
        for need in stage.needs() {
            assert!(passed_before.contains(need), "{stage} started before {need}, which it needs, had passed");
        }
    }
    let reported: Vec<Stage> = report.stages.iter().map(|stage| stage.stage).collect();
    assert_eq!(reported, plan_order, "the report lists the stages in handbook order");
    let timings = timings(&fixture.lab);
    assert_eq!(timings["outcome"], "succeeded", "timings.json is written last");
    assert_eq!(timings["failed"], serde_json::Value::Null);
    assert_eq!(
        steps(&timings),
        ["preflight", "artifacts", "image", "network", "machines", "boot", "survey", "readiness"]
    );
    assert_eq!(timings["stages"].as_array().unwrap().len(), plan_order.len());
    assert!(fixture.lab.state().topology_record().exists(), "the state directory is claimed");
}

/// The steps of a run as timings.json lists them, in the order they ended, but for the
/// artifacts and the node image: they run side by side and may end in either order, so
/// they are listed in that order wherever they ended.
fn steps(timings: &serde_json::Value) -> Vec<&str> {
    let ended: Vec<&str> = timings["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    let side_by_side = ["artifacts", "image"];
    let mut steps: Vec<&str> = Vec::new();
    for step in &ended {
        if side_by_side.contains(step) {
            if !steps.contains(&side_by_side[0]) {
                steps.extend(side_by_side.iter().filter(|step| ended.contains(step)));
            }
        } else {
            steps.push(step);
        }
    }
    steps
}

#[test]
fn up_until_machines_stops_before_the_artifacts_and_stages() {
    let fixture = fixture(Vec::new());
    let report = fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    assert!(report.stages.is_empty());
    assert_eq!(fixture.journal.count("artifacts"), 0);
    assert_eq!(fixture.journal.count("ready"), 0);
    assert_eq!(fixture.journal.count("machines: start "), 2);
    assert!(fixture
        .journal
        .calls()
        .iter()
        .filter(|call| call.starts_with("preload on "))
        .all(|call| call.ends_with(": ")));
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
    let options = UpOptions { until: Until::Machines, from: None, step: false, set_up_host: true };
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

    fixture.lab.down(&[], &Silent).expect("down");
    assert_eq!(fixture.journal.count("machines: stop "), 2);
    assert!(fixture.lab.status().unwrap().nodes.iter().all(|node| node.state == MachineState::Stopped));
}

#[test]
fn down_with_nodes_stops_only_those_and_an_unknown_name_stops_none() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let error = fixture.lab.down(&["worker1".to_string(), "worker9".to_string()], &Silent).expect_err("refused");
    assert!(error.is_usage(), "{error}");
    assert_eq!(error.to_string(), "lab k8smin has no node \"worker9\"; its nodes are master1, worker1");
    assert_eq!(fixture.journal.count("machines: stop "), 0, "nothing stops when a name is wrong");

    fixture.lab.down(&["worker1".to_string()], &Silent).expect("down worker1");
    assert_eq!(fixture.journal.count("machines: stop "), 1);
    let states: Vec<(String, MachineState)> =
        fixture.lab.status().unwrap().nodes.into_iter().map(|node| (node.name, node.state)).collect();
    assert_eq!(
        states,
        [("master1".to_string(), MachineState::Running), ("worker1".to_string(), MachineState::Stopped)]
    );
}

#[test]
fn a_worker_taken_down_alone_is_cordoned_first_and_uncordoned_when_it_runs_again() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    fixture.lab.down(&["worker1".to_string()], &Silent).expect("down worker1");
    let cordon = kubelet::cordon_for_power_off(&["worker1"]);
    assert!(cordon.contains(" cordon worker1"), "{cordon}");
    assert!(cordon.contains(&format!(" label node worker1 {}=true", kubelet::CORDONED_FOR_POWER_OFF)), "{cordon}");
    assert_eq!(fixture.scripts_on("master1"), [cordon], "through the master that stays up");
    let calls = fixture.journal.calls();
    let position = |call: &str| calls.iter().position(|noted| noted == call).unwrap_or_else(|| panic!("{calls:?}"));
    assert!(position("connect master1") < position("machines: stop worker1"), "cordoned before the power-off");

    fixture.lab.up(Until::Machines.into(), &Silent).expect("worker1 runs again");
    let uncordon = kubelet::uncordon_after_power_on();
    assert!(uncordon.contains(" uncordon $nodes && "), "{uncordon}");
    assert!(fixture.scripts_on("master1").contains(&uncordon), "{:?}", fixture.scripts_on("master1"));

    // With every machine running, `up` has no worker to uncordon; taking the whole lab
    // down cordons nothing (no pod has anywhere else to go).
    fixture.lab.up(Until::Machines.into(), &Silent).expect("nothing to start");
    assert!(!fixture.scripts_on("master1").contains(&uncordon));
    fixture.lab.down(&[], &Silent).expect("down");
    assert!(!fixture.scripts_on("master1").iter().any(|script| script.contains(" cordon ")));
}

#[test]
fn a_master_powered_off_stops_its_leader_elected_components_and_releases_their_leases_first() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let (stop, release) = (crate::stages::stop_leader_elected(), crate::stages::release_leases(&["master1"]));
    fixture.lab.down(&["worker1".to_string()], &Silent).expect("down worker1");
    assert!(!fixture.scripts_on("master1").iter().any(|script| *script == stop || *script == release));

    fixture.lab.up(Until::Machines.into(), &Silent).expect("worker1 runs again");
    let before = fixture.journal.calls().len();
    fixture.lab.down(&[], &Silent).expect("down");
    let scripts = fixture.scripts_on("master1");
    let at = |wanted: &str| scripts.iter().position(|script| script == wanted);
    assert!(at(&stop).is_some() && at(&stop) < at(&release), "stopped, then released: {scripts:?}");
    let calls = fixture.journal.calls().split_off(before);
    let position = |call: &str| calls.iter().position(|noted| noted == call).unwrap_or_else(|| panic!("{calls:?}"));
    assert!(position("connect master1") < position("machines: stop master1"), "before the power-off: {calls:?}");
}

#[test]
fn a_node_leaves_the_service_route_before_its_power_off_and_rejoins_once_it_serves() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let network = &fixture.lab.plan().expect("a plan").network;
    let address = |name: &str| fixture.lab.topology().node(name).expect("in the topology").address.to_string();
    let every_node = format!("{} via [{} {}]", network.service_cidr, address("master1"), address("worker1"));
    let without_worker1 = format!("{} via [{}]", network.service_cidr, address("master1"));
    let routes_at = |call: &str| call.strip_prefix("machines: network ").map(str::to_string);
    assert!(fixture
        .journal
        .calls()
        .iter()
        .filter_map(|call| routes_at(call))
        .all(|routes| routes.contains(&every_node)));

    let before = fixture.journal.calls().len();
    fixture.lab.down(&["worker1".to_string()], &Silent).expect("down worker1");
    let calls = fixture.journal.calls().split_off(before);
    let narrowed =
        calls.iter().position(|call| routes_at(call).is_some_and(|routes| routes.contains(&without_worker1)));
    let stopped = calls.iter().position(|call| call == "machines: stop worker1");
    assert!(narrowed.is_some() && narrowed < stopped, "out of the route before its power-off: {calls:?}");

    let before = fixture.journal.calls().len();
    fixture.lab.up(Until::Machines.into(), &Silent).expect("worker1 runs again");
    let calls = fixture.journal.calls().split_off(before);
    let networks: Vec<(usize, String)> =
        calls.iter().enumerate().filter_map(|(at, call)| routes_at(call).map(|routes| (at, routes))).collect();
    let started = calls.iter().position(|call| call == "machines: start worker1").expect("worker1 started");
    assert_eq!(networks.len(), 2, "{calls:?}");
    assert!(networks[0].0 < started && networks[0].1.contains(&without_worker1), "{networks:?}");
    assert!(networks[1].0 > started && networks[1].1.contains(&every_node), "{networks:?}");
    assert!(
        fixture
            .scripts_on("worker1")
            .contains(&crate::stages::kube_proxy::serves_services(&fixture.lab.topology().network)),
        "worker1 was asked whether it serves Services"
    );

    // A whole lab starting at once has no node that serves yet: the route keeps them all.
    fixture.lab.down(&[], &Silent).expect("down");
    let before = fixture.journal.calls().len();
    fixture.lab.up(Until::Machines.into(), &Silent).expect("up again");
    let calls = fixture.journal.calls().split_off(before);
    let networks: Vec<String> = calls.iter().filter_map(|call| routes_at(call)).collect();
    assert_eq!(networks.len(), 1, "{calls:?}");
    assert!(networks[0].contains(&every_node), "{networks:?}");
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

    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let lab = Lab::existing(paths, None, Box::new(Real { workspace_dir: PathBuf::new() })).expect("the recorded lab");
    assert_eq!(lab.topology().name, "k8smin");
}

/// What a node answers to `lab status`'s query when every stage is recorded on it.
fn converged_answer(extra: &str) -> String {
    let stages: Vec<&str> = Stage::ALL.iter().map(|stage| stage.name()).collect();
    format!("== applied\n{}\n== pending\n{extra}", stages.join("\n"))
}

#[test]
fn status_asks_every_running_node_once_and_the_api_through_the_vip() {
    let member_id = 10276657743932975437u64;
    let master = converged_answer(&format!(
        "== addresses\n2: host0    inet 10.242.0.11/24 brd 10.242.0.255 scope global host0\n\
         2: host0    inet 10.242.0.100/32 scope global host0\n== etcd\n\
         [{{\"Endpoint\":\"https://127.0.0.1:2379\",\"Status\":{{\"header\":{{\"member_id\":{member_id}}},\
         \"leader\":{member_id}}}}}]\n"
    ));
    let answer = |node: &str, stdout: String| {
        (node.to_string(), probes::STATUS_QUERY.to_string(), Output { status: 0, stdout, stderr: String::new() })
    };
    let answers = vec![answer("master1", master), answer("worker1", converged_answer(""))];
    let fixture = fixture_with(Vec::new(), answers, Broken::Nothing);
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let connected = fixture.journal.count("connect ");

    let status = fixture.lab.status().expect("status");
    let probes = status.probes.clone().expect("a running lab is probed");
    assert_eq!(probes.api, Probed::Known(ApiHealth { healthy: true, answer: "ok".into() }));
    assert_eq!(probes.vip_holders, Probed::Known(vec!["master1".to_string()]));
    assert_eq!(probes.etcd_leader, Probed::Known(Some("master1".to_string())));
    assert_eq!(probes.converged_stage, Probed::Known(Stage::ALL.last().copied()));
    assert_eq!(fixture.journal.count("connect "), connected + 2, "one session per node");
    assert_eq!(fixture.journal.count("GET https://10.242.0.100:8443/healthz"), 1);
    let calls = fixture.journal.calls();
    let routes = calls.iter().position(|call| call.starts_with("routes ")).expect("the routes are checked");
    assert!(calls[routes].contains("10.242.0.100"), "{}", calls[routes]);
    assert!(routes < calls.iter().rposition(|call| call.starts_with("connect ")).unwrap(), "routes first");

    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["probes"]["etcd_leader"]["known"], "master1");
    assert_eq!(json["probes"]["converged_stage"]["known"], "firewall");
    assert_eq!(serde_json::from_value::<LabStatus>(json).unwrap(), status, "the suite reads what status writes");
    let text = status.to_text();
    assert!(text.contains("vip         10.242.0.100 on master1\n"), "{text}");
    assert!(text.contains("converged   through firewall (15 of 15 in handbook order)\n"), "{text}");
}

#[test]
fn a_stopped_lab_is_not_probed_and_no_lab_is_an_error() {
    let fixture = fixture(Vec::new());
    let error = fixture.lab.status().expect_err("no lab yet");
    assert_eq!(
        error.to_string(),
        format!(
            "no lab in {}: `lab up` makes one (LAB_DIR or --lab-dir selects another state directory)",
            fixture.lab.paths().state_dir.display()
        )
    );

    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    fixture.lab.down(&[], &Silent).expect("down");
    let connected = fixture.journal.count("connect ");
    let status = fixture.lab.status().expect("status of a stopped lab");
    assert_eq!(status.probes, None);
    assert_eq!(fixture.journal.count("connect "), connected, "no session to a stopped lab");
    assert_eq!(fixture.journal.count("GET "), 0);
    assert!(status.to_text().contains("machines    none runs, so nothing was asked"), "{}", status.to_text());
}

/// A host whose commands never end.
struct HangingHost(String);

impl Host for HangingHost {
    fn name(&self) -> &str {
        &self.0
    }
    fn run(&self, _script: &str) -> Result<Output, HostError> {
        std::thread::sleep(Duration::from_secs(600));
        Ok(Output::default())
    }
    fn put_file(&self, _: &str, _: u32, _: &str, _: &[u8]) -> Result<(), HostError> {
        Ok(())
    }
    fn copy_file(&self, _: &str, _: u32, _: &str, _: &Path) -> Result<(), HostError> {
        Ok(())
    }
    fn read_file(&self, _: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(None)
    }
}

/// Surroundings whose nodes accept a session and then never answer.
struct Hanging;

impl Surroundings for Hanging {
    fn preflight(&self, _: &Topology, _: &Path, _: &Path, _: &[Requirement]) -> Report {
        Report { findings: Vec::new() }
    }
    fn set_up_host(&self, _: &Report, _: &dyn Fn(&str)) -> Result<HostSetup, PreflightError> {
        Ok(HostSetup::default())
    }
    fn ensure_artifacts(&self, _: &Topology, _: &Path, _: &dyn Fn(&str)) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn connect(&self, node: &str, _: Ipv4Addr, _: &KeyPair, _: Duration) -> Result<Box<dyn Host>, HostError> {
        Ok(Box::new(HangingHost(node.to_string())))
    }
    fn prove_ready(&self, _: &NetworkPlan, _: u32, _: &AtomicBool) -> Result<Steady, ReadinessError> {
        Ok(Steady { rounds: 10, failures: 0, elapsed: Duration::from_millis(1) })
    }
    fn verify_routes(&self, _: &str, _: &[Ipv4Addr]) -> Result<(), String> {
        Ok(())
    }
    fn api_health(&self, _: &str, _: &Path, timeout: Duration) -> Result<ApiHealth, String> {
        Err(format!("no answer within {timeout:?}"))
    }
}

#[test]
fn a_node_that_never_answers_makes_the_status_unknown_not_late() {
    let fixture = fixture(Vec::new());
    fixture.lab.up(Until::Machines.into(), &Silent).expect("machines come up");
    let topology = fixture.lab.topology().clone();
    let machines = FakeMachines {
        journal: Arc::new(Journal::default()),
        running: Mutex::new(topology.nodes.iter().map(|node| (node.name.clone(), true)).collect()),
        console_dir: PathBuf::from("/nonexistent"),
        broken: None,
    };
    let lab = Lab::with_parts(topology, fixture.lab.paths().clone(), Box::new(machines), Box::new(Hanging));

    let started = std::time::Instant::now();
    let probes = lab.status().expect("status").probes.expect("probed");
    let took = started.elapsed();
    assert!(took < probes::PROBE_TIMEOUT + Duration::from_millis(500), "took {took:?}");
    let unknown = |probed: &Probed<Option<String>>| matches!(probed, Probed::Unknown(reason) if reason.contains("did not answer in time"));
    assert!(unknown(&probes.etcd_leader), "{:?}", probes.etcd_leader);
    assert!(matches!(probes.converged_stage, Probed::Unknown(_)), "{:?}", probes.converged_stage);
    assert!(matches!(probes.api, Probed::Unknown(_)));
}

/// Every file under `dir`, with its text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
    files
}

/// The one log bundle a failed run left.
fn only_bundle(lab: &Lab) -> PathBuf {
    let bundles: Vec<PathBuf> =
        std::fs::read_dir(lab.state().logs_dir()).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    bundles[0].clone()
}

fn timings(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(lab.state().timings()).expect("timings.json")).unwrap()
}

#[test]
fn a_failed_stage_leaves_timings_that_name_it_and_a_bundle_without_secrets() {
    let failing_record = Output { status: 1, stdout: String::new(), stderr: "disk full".into() };
    let replies = vec![("worker1".to_string(), format!("mkdir -p {}", crate::executor::APPLIED_DIR), failing_record)];
    let fixture = fixture_with(Vec::new(), replies, Broken::Nothing);
    let error = fixture.lab.up(Until::Everything.into(), &Silent).expect_err("the hosts stage fails on worker1");
    assert!(error.to_string().contains("log bundle: "), "{error}");

    let timings = timings(&fixture.lab);
    assert_eq!(timings["outcome"], "failed");
    assert_eq!(timings["failed"], "hosts");
    let stages = timings["stages"].as_array().unwrap();
    assert_eq!(stages.last().unwrap()["stage"], "hosts");
    assert_eq!(stages.last().unwrap()["outcome"], "failed");
    assert_eq!(steps(&timings), ["preflight", "artifacts", "image", "network", "machines", "boot", "survey"]);

    let rendered = files_under(&only_bundle(&fixture.lab).join("rendered"));
    assert!(rendered.iter().any(|(_, text)| text.contains("BEGIN CERTIFICATE")), "certificates are kept");
    for (path, text) in &rendered {
        assert!(!text.contains("PRIVATE KEY"), "{} holds a private key", path.display());
    }
    let key = rendered.iter().find(|(path, _)| path.ends_with("etc/etcd/pki/server-key.pem")).expect("a key file");
    assert_eq!(key.1, crate::render::SECRET_LEFT_OUT);
    let encryption_key =
        std::fs::read_to_string(crate::pki::Store::new(fixture.lab.state().root()).secrets_encryption_key_path())
            .expect("the Secrets' encryption key is kept with the PKI");
    for (path, text) in &rendered {
        assert!(!text.contains(encryption_key.trim()), "{} holds the Secrets' encryption key", path.display());
    }
    let config = rendered.iter().find(|(path, _)| path.ends_with("etc/kubernetes/encryption-config.yaml"));
    assert_eq!(config.expect("the encryption config").1, crate::render::SECRET_LEFT_OUT);
}

/// The proof that the cluster serves starts once every node has made every change,
/// beside the last checks; a run that fails before that, here on a unit of the last
/// stage, is not proven at all: it fails at once, naming the stage.
#[test]
fn a_run_that_fails_before_its_last_change_is_not_proven_ready() {
    let failing_unit = Output { status: 1, stdout: String::new(), stderr: "Unit firewalld.service not found.".into() };
    let replies = vec![(
        "worker1".to_string(),
        "systemctl enable --quiet --no-reload firewalld.service".to_string(),
        failing_unit,
    )];
    let fixture = fixture_with(Vec::new(), replies, Broken::Nothing);
    let error = fixture.lab.up(Until::Everything.into(), &Silent).expect_err("the firewall stage fails on worker1");
    assert!(error.to_string().contains("firewall"), "{error}");
    assert_eq!(fixture.journal.count("ready"), 0, "{:?}", fixture.journal.calls());
    let timings = timings(&fixture.lab);
    assert_eq!(timings["failed"], "firewall");
    assert!(!steps(&timings).contains(&"readiness"), "{timings}");
}

#[test]
fn a_node_that_does_not_start_leaves_its_console_in_a_bundle_and_timings() {
    let fixture = fixture_with(Vec::new(), Vec::new(), Broken::Node("worker1"));
    let error = fixture.lab.up(Until::Everything.into(), &Silent).expect_err("worker1 does not start");
    assert!(error.to_string().starts_with("1 of 2 nodes did not start:\n  worker1: exited at once\nlog bundle: "));
    let bundle = only_bundle(&fixture.lab);
    assert_eq!(std::fs::read_to_string(bundle.join("worker1/console.log")).unwrap(), "Kernel panic - not syncing\n");
    assert_eq!(std::fs::read_to_string(bundle.join("error.txt")).unwrap(), "worker1: exited at once");

    let timings = timings(&fixture.lab);
    assert_eq!(timings["failed"], "machines");
    assert_eq!(timings["steps"].as_array().unwrap().last().unwrap()["outcome"], "failed");
}

#[test]
fn a_failed_artifact_build_makes_no_machine_and_leaves_a_bundle_and_timings() {
    let fixture = fixture_with(Vec::new(), Vec::new(), Broken::Artifacts);
    let error = fixture.lab.up(Until::Everything.into(), &Silent).expect_err("the artifacts fail");
    assert!(error.to_string().starts_with("building the lab's artifacts: kubernetes.dir must be set"), "{error}");
    assert!(error.to_string().contains("\nlog bundle: "), "{error}");
    let bundle = only_bundle(&fixture.lab);
    assert!(bundle.join("error.txt").exists());
    assert_eq!(fixture.journal.count("machines: start "), 0, "the artifacts come before any machine");
    let timings = timings(&fixture.lab);
    assert_eq!(timings["failed"], "artifacts");
    assert_eq!(timings["stages"], serde_json::json!([]));
}

#[test]
fn up_from_a_stage_refuses_while_a_stage_before_it_is_not_done_and_runs_none() {
    let fixture = fixture(Vec::new());
    let recorder = Recorder::default();
    let options =
        UpOptions { until: Until::Everything, from: Some(Stage::KubeApiserver), step: false, set_up_host: false };
    let error = fixture.lab.up(options, &recorder).expect_err("the new lab has no stage done");
    assert!(
        error.to_string().starts_with(
            "--from kube-apiserver: stage hosts before it is not done on master1, worker1, so no stage ran"
        ),
        "{error}"
    );
    assert!(recorder.stages.lock().unwrap().is_empty(), "no stage started");
    assert_eq!(fixture.journal.count("ready"), 0);
}

#[test]
fn up_from_a_stage_after_the_until_stage_is_refused_before_anything_is_made() {
    let fixture = fixture(Vec::new());
    for until in [Until::Machines, Until::Stage(Stage::Etcd)] {
        let options = UpOptions { until, from: Some(Stage::KubeApiserver), step: false, set_up_host: false };
        let error = fixture.lab.up(options, &Silent).expect_err("nothing is left to run");
        assert!(error.is_usage(), "{error}");
        assert!(error.to_string().starts_with("--from kube-apiserver comes after --until "), "{error}");
    }
    assert!(fixture.journal.calls().is_empty(), "{:?}", fixture.journal.calls());
}

/// A learner at `lab up --step` who answers `q` at the pause before `stop_at`.
struct Learner {
    stop_at: Stage,
    paused_before: Mutex<Vec<Stage>>,
    ran: Mutex<Vec<Stage>>,
}

impl Reporter for Learner {
    fn report(&self, event: Event<'_>) {
        if let Event::StageStarted { stage, .. } = event {
            self.ran.lock().unwrap().push(stage);
        }
    }

    fn pause(&self, stage: Stage) -> Resume {
        self.paused_before.lock().unwrap().push(stage);
        if stage == self.stop_at {
            Resume::Stop
        } else {
            Resume::Run
        }
    }
}

#[test]
fn up_step_pauses_before_every_stage_and_stops_cleanly_where_the_learner_says() {
    let fixture = fixture(Vec::new());
    let learner = Learner { stop_at: Stage::Etcd, paused_before: Mutex::default(), ran: Mutex::default() };
    let options = UpOptions { until: Until::Everything, from: None, step: true, set_up_host: false };
    let report = fixture.lab.up(options, &learner).expect("stopping at a pause is no failure");
    assert_eq!(*learner.paused_before.lock().unwrap(), [Stage::Hosts, Stage::Pki, Stage::Etcd]);
    assert_eq!(*learner.ran.lock().unwrap(), [Stage::Hosts, Stage::Pki]);
    assert_eq!(report.until, Until::Stage(Stage::Pki), "the lab stands after the last stage that ran");
    assert_eq!(fixture.journal.count("ready"), 0, "no proof that the cluster serves: it is not built");

    let first = Learner { stop_at: Stage::Hosts, paused_before: Mutex::default(), ran: Mutex::default() };
    let report = fixture.lab.up(options, &first).unwrap();
    assert_eq!(report.until, Until::Machines);
    assert!(first.ran.lock().unwrap().is_empty());
}
