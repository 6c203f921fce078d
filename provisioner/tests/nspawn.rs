//! Boots one real node of a tiny lab with the nspawn backend, talks to it over SSH,
//! stops and starts it again, destroys it, and checks that the lab left nothing
//! behind on the host: no interface, route, mount, cgroup or process.
//!
//! It runs where the host can run nodes (root, systemd-nspawn, mmdebstrap) and
//! otherwise says why and passes. The node image comes from the same cache as
//! `lab up` (built there on the first run, about a minute). The lab uses its own
//! name, bridge and ranges (10.249.0.0/24 and neighbours), so it never touches the
//! default lab.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use provisioner::artifacts::Artifacts;
use provisioner::host::Host;
use provisioner::machines::{self, LabSpec, MachineState, Machines, StartOutcome, StopOutcome};
use provisioner::pki;
use provisioner::plan::{self, PlanInputs};
use provisioner::ssh;
use provisioner::topology::Topology;

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

/// Why nodes cannot be booted here, if they cannot.
fn unavailable() -> Option<String> {
    if fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX) != 0 {
        return Some("not running as root".into());
    }
    ["systemd-nspawn", "mmdebstrap", "ssh-keygen", "ip"]
        .into_iter()
        .find(|program| !machines::system::program_exists(program))
        .map(|program| format!("`{program}` is not installed (`lab doctor` installs it)"))
}

/// The cache `lab up` uses, so the image is built once for both.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("k8s-lab")
}

/// Destroys the lab when the test ends, also when it panics half way.
struct DestroyOnDrop<'a>(&'a dyn Machines);

impl Drop for DestroyOnDrop<'_> {
    fn drop(&mut self) {
        for leftover in self.0.destroy() {
            eprintln!("cleanup after the test left: {leftover}");
        }
    }
}

fn elapsed(started: Instant) -> String {
    format!("{:.1} s", started.elapsed().as_secs_f64())
}

#[test]
fn a_node_boots_answers_ssh_survives_a_restart_and_leaves_nothing_when_destroyed() {
    if let Some(reason) = unavailable() {
        eprintln!("skipping the nspawn test: {reason}");
        return;
    }
    let state = tempfile::Builder::new().prefix("lab-nspawn-").tempdir().expect("temporary state directory");
    let topology = Topology::parse(TOPOLOGY, Path::new("nspawn-test.toml")).expect("valid topology").topology;
    let bundle = pki::Store::new(state.path()).load_or_issue(&pki::specs(&topology)).expect("lab PKI");
    let artifacts = Artifacts::expected(&topology, &cache_dir());
    let plan = plan::build(&PlanInputs {
        topology: &topology,
        pki: &bundle,
        artifacts: &artifacts,
        state_dir: state.path().into(),
    });
    let spec = LabSpec::from_topology(&topology, state.path(), &cache_dir());
    let bridge = spec.bridge.clone();
    let node = spec.nodes[0].clone();
    let backend = machines::for_lab(topology.machines.backend, spec).expect("nspawn backend");
    let unmet: Vec<String> = backend
        .requirements()
        .into_iter()
        .filter(|requirement| !requirement.met)
        .map(|requirement| format!("{} (fix: {})", requirement.what, requirement.fix))
        .collect();
    assert!(unmet.is_empty(), "host requirements not met: {unmet:?}");
    machines::claim_state_dir(state.path(), &topology).expect("claim the state dir");

    let started = Instant::now();
    let image = backend.ensure_image(&|line| eprintln!("image: {line}")).expect("node image");
    eprintln!("image {} ({}) in {}", image.key, if image.from_cache { "cached" } else { "built" }, elapsed(started));

    let guard = DestroyOnDrop(backend.as_ref());
    let key = ssh::ensure_keypair(state.path()).expect("lab key pair");
    let network = backend.ensure_network(&plan.network.host_routes).expect("lab network");
    assert!(network.routes.iter().any(|route| route.starts_with("10.248.0.0/24 via 10.249.0.11")), "{network:?}");

    let started = Instant::now();
    let outcome = backend.create_or_start(&node, &image, &key.public_line).expect("create the node");
    assert_eq!(outcome, StartOutcome::Started { created: true });
    let host = ssh::wait_until_reachable(NODE, node.address, &key, Duration::from_secs(60)).expect("SSH to the node");
    eprintln!("node answered SSH {} after the start", elapsed(started));
    assert_eq!(backend.status(NODE).expect("status"), MachineState::Running);
    assert_eq!(
        backend.create_or_start(&node, &image, &key.public_line).expect("start again"),
        StartOutcome::AlreadyRunning,
        "a running node is left alone"
    );

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
    let ports = machines::hostnet::bridge_ports(&bridge);
    assert_eq!(ports.len(), 1, "one node, one port on {bridge}: {ports:?}");
    drop(host);

    // `lab down` and `lab up`: the disk survives, the node comes back.
    let started = Instant::now();
    assert_eq!(backend.stop(NODE).expect("stop"), StopOutcome::Stopped);
    eprintln!("node stopped in {}", elapsed(started));
    assert_eq!(backend.status(NODE).expect("status"), MachineState::Stopped);
    let root = state.path().join("machines").join(NODE).join("root");
    assert!(!machines::system::is_mount_point(&root).expect("mount table"), "a stopped node's disk is unmounted");
    let started = Instant::now();
    let outcome = backend.create_or_start(&node, &image, &key.public_line).expect("start after stop");
    assert_eq!(outcome, StartOutcome::Started { created: false });
    let host = ssh::wait_until_reachable(NODE, node.address, &key, Duration::from_secs(60)).expect("SSH again");
    eprintln!("node answered SSH {} after the restart", elapsed(started));
    assert_eq!(
        host.read_file("/root/lab-test.txt").expect("read after restart").as_deref(),
        Some(&b"kept across a restart\n"[..])
    );
    drop(host);

    let started = Instant::now();
    std::mem::forget(guard);
    let leftovers = backend.destroy();
    eprintln!("lab destroyed in {}", elapsed(started));
    assert!(leftovers.is_empty(), "destroy left: {leftovers:?}");
    assert_nothing_left(&bridge, &ports, state.path());
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
    let mounts = machines::system::mounts_under(state).expect("mount table");
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
