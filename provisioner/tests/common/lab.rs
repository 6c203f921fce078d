//! A lab of one node on a real machine backend, for the tests that boot machines
//! (`nspawn.rs`, `libvirt.rs`): whether they can run here, the lab up to its node
//! image, and the steps of a node's life that every backend goes through the same way.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use provisioner::artifacts::Artifacts;
use provisioner::machines::boot_watch::BootWatch;
use provisioner::machines::hostnet::NetworkReport;
use provisioner::machines::{self, LabSpec, MachineState, Machines, NodeImage, NodeSpec, StartOutcome, StopOutcome};
use provisioner::pki;
use provisioner::plan::{self, Plan, PlanInputs};
use provisioner::ssh::{self, KeyPair, SshHost};
use provisioner::topology::Topology;

/// Why machines cannot be booted here when the test does not run as root.
pub fn not_root() -> Option<String> {
    let uid = fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX);
    (uid != 0).then(|| "not running as root".into())
}

/// Why machines cannot be booted here when one of `programs` is not installed.
pub fn missing_program(programs: &[&str]) -> Option<String> {
    programs
        .iter()
        .find(|program| !provisioner::system::program_exists(program))
        .map(|program| format!("`{program}` is not installed (`lab doctor` installs it)"))
}

/// The cache `lab up` uses, so the image is built once for both.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("k8s-lab")
}

pub fn elapsed(started: Instant) -> String {
    format!("{:.1} s", started.elapsed().as_secs_f64())
}

/// A lab of one node, in a temporary state directory of its own, on the backend its
/// topology names. Dropping it destroys the lab unless `destroy` did, so that a test
/// that panics half way leaves nothing behind either.
pub struct TestLab {
    pub state: tempfile::TempDir,
    pub plan: Plan,
    /// The lab's bridge on the host.
    pub bridge: String,
    /// The lab's one node.
    pub node: NodeSpec,
    pub backend: Box<dyn Machines>,
    pub image: NodeImage,
    /// The lab's key pair, which may log in to the node as root.
    pub key: KeyPair,
    destroyed: bool,
}

impl TestLab {
    /// The lab of `topology` (the text of a topology file): planned, its backend's host
    /// requirements checked, its state directory claimed, its node image and key pair
    /// made. `kind` names the backend in the state directory's name and in messages.
    pub fn new(kind: &str, topology: &str) -> TestLab {
        let state =
            tempfile::Builder::new().prefix(&format!("lab-{kind}-")).tempdir().expect("temporary state directory");
        // Under vagrant-libvirt QEMU runs as libvirt-qemu and opens the disks in the
        // state directory, so other users may pass through it (not list or read it), as
        // `lab doctor --backend vagrant` asks of a real lab's state directory.
        fs::set_permissions(state.path(), fs::Permissions::from_mode(0o711)).expect("open the state directory");
        let file = format!("{kind}-test.toml");
        let topology = Topology::parse(topology, Path::new(&file)).expect("valid topology").topology;
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
        let backend = machines::for_lab(topology.machines.backend, spec)
            .unwrap_or_else(|error| panic!("{kind} backend: {error}"));
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
        eprintln!(
            "image {} ({}) in {}",
            image.key,
            if image.from_cache { "cached" } else { "built" },
            elapsed(started)
        );
        let key = ssh::ensure_keypair(state.path()).expect("lab key pair");
        TestLab { state, plan, bridge, node, backend, image, key, destroyed: false }
    }

    /// The lab network, with the plan's routes onto it.
    pub fn ensure_network(&self) -> NetworkReport {
        self.backend.ensure_network(&self.plan.network.host_routes).expect("lab network")
    }

    /// Starts the node, from a new disk when `created` and from its kept one
    /// otherwise, and waits up to `timeout` until it answers SSH.
    pub fn start(&self, created: bool, timeout: Duration) -> SshHost {
        let (start, connect, after) = if created {
            ("create the node", "SSH to the node", "start")
        } else {
            ("start after stop", "SSH again", "restart")
        };
        let started = Instant::now();
        let deadline = started + timeout;
        // As `lab up` does: a boot that hangs under emulation is reset (`BootWatch`),
        // during the start (Vagrant waits for SSH in it) and while waiting for SSH.
        let mut watch = BootWatch::new(&*self.backend, &self.node.name);
        let look = |watch: &mut Option<BootWatch<'_>>| {
            if let Some(line) = watch.as_mut().and_then(|watch| watch.check(Instant::now())) {
                eprintln!("{line}");
            }
        };
        let outcome = std::thread::scope(|scope| {
            let starting = scope.spawn(|| self.backend.create_or_start(&self.node, &self.image, &self.key.public_line));
            while !starting.is_finished() {
                std::thread::sleep(Duration::from_millis(500));
                look(&mut watch);
            }
            starting.join().expect("the start panicked")
        });
        assert_eq!(outcome.expect(start), StartOutcome::Started { created });
        let host = loop {
            look(&mut watch);
            let attempt = Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now()));
            match ssh::wait_until_reachable(&self.node.name, self.node.address, &self.key, attempt) {
                Ok(host) => break host,
                Err(error) if Instant::now() >= deadline => panic!("{connect}: {error}"),
                Err(_) => continue,
            }
        };
        eprintln!("node answered SSH {} after the {after}", elapsed(started));
        host
    }

    /// Checks that the backend sees the node running and leaves it alone when asked to
    /// start it again.
    pub fn assert_running(&self) {
        assert_eq!(self.backend.status(&self.node.name).expect("status"), MachineState::Running);
        assert_eq!(
            self.backend.create_or_start(&self.node, &self.image, &self.key.public_line).expect("start again"),
            StartOutcome::AlreadyRunning,
            "a running node is left alone"
        );
    }

    /// Stops the node as `lab down` does; `how` says how it went down, for the log.
    pub fn stop(&self, how: &str) {
        let started = Instant::now();
        assert_eq!(self.backend.stop(&self.node.name).expect("stop"), StopOutcome::Stopped);
        eprintln!("node {how} in {}", elapsed(started));
        assert_eq!(self.backend.status(&self.node.name).expect("status"), MachineState::Stopped);
    }

    /// Destroys the lab as `lab destroy` does and checks that the backend could remove
    /// everything it made.
    pub fn destroy(&mut self) {
        let started = Instant::now();
        self.destroyed = true;
        let leftovers = self.backend.destroy();
        eprintln!("lab destroyed in {}", elapsed(started));
        assert!(leftovers.is_empty(), "destroy left: {leftovers:?}");
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        for leftover in self.backend.destroy() {
            eprintln!("cleanup after the test left: {leftover}");
        }
    }
}
