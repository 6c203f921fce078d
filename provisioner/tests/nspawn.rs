//! Boots one real node of a tiny lab with the nspawn backend, talks to it over SSH,
//! stops and starts it again, destroys it, and checks that the lab left nothing
//! behind on the host: no interface, route, mount, cgroup or process.
//!
//! It runs where the host can run nodes (root, systemd-nspawn, mmdebstrap) and
//! otherwise says why and passes. The node image comes from the same cache as
//! `lab up` (built there on the first run, about a minute). The lab uses its own
//! name, bridge and ranges (10.249.0.0/24 and neighbours), so it never touches the
//! default lab.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lab::{missing_program, not_root, TestLab};
use provisioner::executor::{Executor, Silent};
use provisioner::host::Host;
use provisioner::machines;
use provisioner::plan::{FileSpec, Stage, StagePlan, UnitSpec};

const LAB: &str = "nsptest";
const NODE: &str = "solo";

const TOPOLOGY: &str = r#"
name = "nsptest"
[network]
node_subnet = "10.249.0.0/24"
gateway = "10.249.0.1"
vip = "10.249.0.100"
pod_cidr = "10.248.0.0/16"
service_cidr = "10.247.0.0/24"
cluster_dns = "10.247.0.10"
[[node]]
name = "solo"
address = "10.249.0.11"
roles = ["etcd", "master", "lb", "worker"]
"#;

/// How long a node may take to answer SSH.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why nodes cannot be booted here, if they cannot.
fn unavailable() -> Option<String> {
    not_root().or_else(|| missing_program(&["systemd-nspawn", "mmdebstrap", "ssh-keygen", "ip"]))
}

#[test]
fn a_node_boots_answers_ssh_survives_a_restart_and_leaves_nothing_when_destroyed() {
    if let Some(reason) = unavailable() {
        eprintln!("skipping the nspawn test: {reason}");
        return;
    }
    let mut lab = TestLab::new("nspawn", TOPOLOGY);
    let network = lab.ensure_network();
    assert!(network.routes.iter().any(|route| route.starts_with("10.248.0.0/24 via 10.249.0.11")), "{network:?}");

    let host = lab.start(true, BOOT_TIMEOUT);
    lab.assert_running();

    let hostname = host.run("hostname").expect("run hostname");
    assert_eq!((hostname.status, hostname.stdout.trim()), (0, NODE));
    let booted = host.run("systemctl is-system-running --wait").expect("run systemctl");
    let failed = host.run("systemctl --failed --no-legend").expect("list failed units");
    assert_eq!(booted.stdout.trim(), "running", "failed units: {}", failed.stdout);
    host.put_file("/root/lab-test.txt", 0o640, "root", b"kept across a restart\n").expect("put a file");
    assert_eq!(
        host.read_file("/root/lab-test.txt").expect("read it back").as_deref(),
        Some(&b"kept across a restart\n"[..])
    );
    let mode = host.run("stat -c %a /root/lab-test.txt").expect("stat");
    assert_eq!(mode.stdout.trim(), "640");
    let ports = machines::hostnet::bridge_ports(&lab.bridge);
    assert_eq!(ports.len(), 1, "one node, one port on {}: {ports:?}", lab.bridge);
    what_the_plan_drops_is_removed_and_nothing_else(&host);
    drop(host);

    // `lab down` and `lab up`: the disk survives, the node comes back.
    lab.stop("stopped");
    let root = lab.state.path().join("machines").join(NODE).join("root");
    assert!(!provisioner::system::is_mount_point(&root).expect("mount table"), "a stopped node's disk is unmounted");
    let host = lab.start(false, BOOT_TIMEOUT);
    assert_eq!(
        host.read_file("/root/lab-test.txt").expect("read after restart").as_deref(),
        Some(&b"kept across a restart\n"[..])
    );
    drop(host);

    lab.destroy();
    assert_nothing_left(&lab.bridge, &ports, lab.state.path());
}

/// The executor on a real node: a stage applied with two files and a unit, then
/// applied again from a plan without one file and without the unit, removes exactly
/// those (the unit stopped and disabled first) and leaves a file it never wrote; then
/// from a plan with nothing on the node, removes the rest of what it wrote there.
fn what_the_plan_drops_is_removed_and_nothing_else(host: &dyn Host) {
    const KEPT: &str = "/etc/lab-prune-test/kept.conf";
    const DROPPED: &str = "/etc/lab-prune-test/dropped.conf";
    const UNIT_FILE: &str = "/etc/systemd/system/lab-prune-test.service";
    const UNIT: &str = "lab-prune-test.service";
    const MINE: &str = "/etc/lab-prune-test/written-by-hand.conf";
    let stage = |with_dropped: bool| {
        let mut stage = StagePlan::new(Stage::Hosts, "prune test");
        let node = stage.node(NODE);
        node.files.push(FileSpec::text(KEPT, 0o644, "kept\n"));
        if with_dropped {
            node.files.push(FileSpec::text(DROPPED, 0o644, "dropped\n"));
            node.files.push(FileSpec::text(
                UNIT_FILE,
                0o644,
                "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
            ));
            node.units.push(UnitSpec {
                name: UNIT.into(),
                restart_when_changed: vec![UNIT_FILE.into()],
                ..UnitSpec::default()
            });
        }
        stage
    };
    let apply = |stage: &StagePlan| {
        let executor = Executor::new([host]).with_whole_plan(std::slice::from_ref(stage));
        let survey = executor.survey(std::slice::from_ref(stage)).expect("survey");
        executor.run_stage_surveyed(stage, &survey, &Silent).expect("stage runs on the node")
    };
    let exists = |path: &str| host.read_file(path).expect("read a file").is_some();
    apply(&stage(true));
    host.put_file(MINE, 0o644, "root", b"not the lab's\n").expect("a file the lab did not write");
    assert!(exists(DROPPED) && exists(UNIT_FILE));
    assert_eq!(host.run(&format!("systemctl is-active {UNIT}")).expect("systemctl").stdout.trim(), "active");

    let report = apply(&stage(false));
    assert_eq!(report.nodes[0].removed_files, [DROPPED, UNIT_FILE]);
    assert_eq!(report.nodes[0].disabled_units, [UNIT]);
    assert!(!exists(DROPPED) && !exists(UNIT_FILE), "what the plan dropped is gone");
    assert!(exists(KEPT) && exists(MINE), "what the plan has and what the lab never wrote stay");
    let active = host.run(&format!("systemctl is-active {UNIT}")).expect("systemctl is-active");
    assert_ne!(active.stdout.trim(), "active", "the unit the plan dropped was stopped");
    let enabled = host.run(&format!("systemctl is-enabled {UNIT}")).expect("systemctl is-enabled");
    assert!(!enabled.success(), "the unit the plan dropped is no longer enabled: {}", enabled.stdout);
    let again = Executor::new([host]);
    let survey = again.survey(std::slice::from_ref(&stage(false))).expect("survey");
    assert!(survey.is_converged(Stage::Hosts, NODE), "the pruned stage is converged");

    // Then the stage plans nothing on the node at all: what it left there goes, with
    // its record, and the file the lab never wrote stays.
    let nothing = StagePlan::new(Stage::Hosts, "prune test");
    let report = apply(&nothing);
    assert_eq!(report.nodes.len(), 1, "the node the stage no longer plans is visited: {report:?}");
    assert_eq!(report.nodes[0].removed_files, [KEPT]);
    assert!(!exists(KEPT) && exists(MINE), "what the stage left goes, what the lab never wrote stays");
    assert!(!exists("/var/lib/k8s-lab/applied/hosts"), "the stage's record is gone");
    let survey = Executor::new([host]).survey(std::slice::from_ref(&nothing)).expect("survey");
    assert!(survey.covers(std::slice::from_ref(&nothing)), "nothing is left to retire");
    host.run("rm -rf /etc/lab-prune-test /var/lib/k8s-lab").expect("clean up");
}

fn assert_nothing_left(bridge: &str, ports: &[String], state: &Path) {
    assert!(!machines::hostnet::bridge_exists(bridge), "bridge {bridge} is still there");
    for port in ports {
        assert!(!Path::new("/sys/class/net").join(port).exists(), "the node's link {port} is still there");
    }
    let routes = Command::new("ip").args(["-4", "route", "show", "table", "all"]).output().expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    for needle in [bridge, "10.249.0.", "10.248.", "10.247.0."] {
        assert!(!routes.contains(needle), "a route of the lab is left ({needle}):\n{routes}");
    }
    let mounts = provisioner::system::mounts_under(state).expect("mount table");
    assert!(mounts.is_empty(), "mounts left under the state dir: {mounts:?}");
    assert!(!state.join("machines").exists(), "the machines' state is left");
    let cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(format!("lab-{LAB}")))
        .chain([PathBuf::from(format!("/sys/fs/cgroup/lab-{LAB}"))])
        .filter(|path| path.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let propagate = Path::new("/run/systemd/nspawn/propagate").join(format!("{LAB}-{NODE}"));
    assert!(!propagate.exists(), "nspawn's runtime directory {} is left", propagate.display());
    let machine_flag = format!("--machine={LAB}-{NODE}");
    let survivors: Vec<String> = fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|command| command.contains(&machine_flag))
        .collect();
    assert!(survivors.is_empty(), "processes of the lab are still running: {survivors:?}");
}
