//! `lab up --step` as a learner meets it: at a terminal (a pseudo-terminal here), on a
//! fresh lab of its own, it pauses before each of the fifteen stages with the
//! chapter's summary, runs each on Enter, and finishes with the lab converged (a
//! second `lab up` changes nothing); `q` at a pause stops cleanly.
//!
//! It builds a real two-node lab (the minimal example under its own name, bridge and
//! ranges, 10.245.0.0/24 and neighbours, so it never touches another lab) with the
//! nspawn backend and the same caches as `lab up`, and destroys it at the end. It runs
//! where the host can run nodes (root, systemd-nspawn, mmdebstrap) and otherwise says
//! why and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use provisioner::plan::Stage;

const LAB: &str = "steptest";

/// How long one stage may take to come to its pause, or the last to finish. The first
/// pause comes after the artifacts, which a host with empty caches builds first
/// (Kubernetes and the DNS server, minutes).
const STAGE_TIMEOUT_MS: u64 = 900_000;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_owned()
}

/// Why nodes cannot be booted here, if they cannot.
fn unavailable() -> Option<String> {
    let root = std::fs::metadata("/proc/self").map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0);
    if !root.unwrap_or(false) {
        return Some("not running as root".into());
    }
    ["systemd-nspawn", "mmdebstrap", "ip"]
        .into_iter()
        .find(|program| !provisioner::system::program_exists(program))
        .map(|program| format!("{program} is not installed (`cargo lab doctor` installs it)"))
}

/// The test's lab: its state directory and topology in a temporary directory, destroyed
/// when the test ends however it ends.
struct StepLab {
    dir: tempfile::TempDir,
}

impl StepLab {
    fn new() -> StepLab {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The state directory holds the nodes' disks, which the nodes' services read
        // as other users: it must be reachable (0711), as LAB_DIR must be.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let minimal = std::fs::read_to_string(repository().join("examples/minimal.toml")).unwrap();
        let topology = minimal
            .replace("name = \"k8smin\"", &format!("name = \"{LAB}\""))
            .replace("10.242.0.", "10.245.0.")
            .replace("10.202.0.0/16", "10.205.0.0/16")
            .replace("10.34.0.", "10.37.0.");
        std::fs::write(dir.path().join("topology.toml"), topology).unwrap();
        StepLab { dir }
    }

    /// `lab --topology FILE` with the test's state directory.
    fn lab(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
        command
            .current_dir(repository())
            .arg("--topology")
            .arg(self.dir.path().join("topology.toml"))
            .env("LAB_DIR", self.dir.path().join("lab"))
            .env_remove("RUST_LOG");
        command
    }
}

impl Drop for StepLab {
    fn drop(&mut self) {
        let destroyed = self.lab().arg("destroy").status();
        if !matches!(destroyed, Ok(status) if status.success()) {
            eprintln!(
                "`lab destroy` of {LAB} failed: {destroyed:?}; destroy it by hand (LAB_DIR={})",
                self.dir.path().display()
            );
        }
    }
}

#[test]
fn up_step_pauses_before_every_stage_and_finishes_converged() {
    if let Some(reason) = unavailable() {
        eprintln!("SKIPPED: the step test needs a host that runs nodes: {reason}");
        return;
    }
    let lab = StepLab::new();
    let mut up = lab.lab();
    up.args(["up", "--step"]);
    let mut learner =
        rexpect::session::spawn_command(up, Some(STAGE_TIMEOUT_MS)).expect("lab up --step starts in a pty");
    for stage in Stage::ALL {
        let title = format!("== stage {} of {}: {} ==", stage.position() + 1, Stage::ALL.len(), stage.name());
        learner.exp_string(&title).unwrap_or_else(|error| panic!("no pause before {stage}: {error}"));
        learner.exp_string(&format!("`lab explain {}` tells the whole chapter.", stage.name())).unwrap();
        learner.exp_string("q: stop here > ").unwrap();
        learner.send_line("").unwrap();
        learner.exp_string(" done in ").unwrap_or_else(|error| panic!("{stage} did not finish: {error}"));
    }
    learner.exp_string("use the cluster:").expect("the lab is finished and proven to serve");
    learner.exp_eof().expect("lab up --step exits");
    let status = learner.process_mut().wait().expect("lab up --step's status");
    assert!(matches!(status, rexpect::process::WaitStatus::Exited(_, 0)), "{status:?}");

    // Converged: another `lab up` finds nothing to change.
    let again = lab.lab().args(["up", "--json"]).output().expect("lab up");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let stdout = String::from_utf8_lossy(&again.stdout);
    let done: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a done line")).unwrap();
    assert_eq!((done["changed_files"].as_u64(), done["changed_units"].as_u64()), (Some(0), Some(0)), "{done}");

    // `q` at the first pause stops there, cleanly, and says how to go on.
    let mut up = lab.lab();
    up.args(["up", "--step"]);
    let mut learner = rexpect::session::spawn_command(up, Some(STAGE_TIMEOUT_MS)).unwrap();
    learner.exp_string("== stage 1 of").unwrap();
    learner.exp_string("q: stop here > ").unwrap();
    learner.send_line("q").unwrap();
    learner.exp_string("stopped before the first stage, as asked").unwrap();
    learner.exp_eof().unwrap();
}
