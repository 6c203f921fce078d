//! Helpers shared by the integration tests that need host tools: a private containerd
//! that lives only as long as the test, and the checks that decide whether to skip;
//! `lab`, a lab of one node on a real machine backend; `vm`, the smoke test of the VM
//! backends.

#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

pub mod lab;
pub mod vm;

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why the containerd tests cannot run here, if they cannot.
pub fn containerd_unavailable() -> Option<String> {
    if fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX) != 0 {
        return Some("not running as root (containerd needs root)".to_string());
    }
    ["containerd", "ctr"]
        .into_iter()
        .find(|command| on_path(command).is_none())
        .map(|command| format!("`{command}` is not installed (apt-get install containerd)"))
}

pub fn on_path(command: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(command)).find(|path| path.is_file())
}

/// A containerd of the test's own: root, state and socket in a temporary directory and
/// the CRI plugin disabled, so it neither touches nor sees the host's containerd.
/// Dropping it removes its containers and kills it, also when the test panics.
pub struct PrivateContainerd {
    process: Child,
    pub socket: PathBuf,
    directory: tempfile::TempDir,
    /// Containers started through `run_detached`, removed on drop.
    containers: Vec<(String, String)>,
}

impl PrivateContainerd {
    pub fn start() -> Self {
        let directory = tempfile::Builder::new().prefix("lab-ctd-").tempdir().expect("temporary directory");
        let base = directory.path();
        let socket = base.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = base.join("root"),
            state = base.join("state"),
            socket = socket.display(),
        );
        let config_path = base.join("config.toml");
        fs::write(&config_path, config).expect("write the containerd config");
        let log = fs::File::create(base.join("containerd.log")).expect("containerd log");
        let process = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("containerd log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = PrivateContainerd { process, socket, directory, containers: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr("default", &["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not answer within 30 s:\n{}", containerd.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        containerd
    }

    /// Runs `ctr --address SOCKET -n NAMESPACE ARGS...`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Like `ctr` but panics with ctr's output unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let output = self.ctr(namespace, args);
        assert!(
            output.status.success(),
            "ctr {} failed: {}{}\ncontainerd log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a container from an imported image in the background (its own network
    /// namespace, which has only loopback), to be removed on drop.
    pub fn run_detached(&mut self, namespace: &str, image: &str, id: &str) {
        self.ctr_ok(namespace, &["run", "-d", image, id]);
        self.containers.push((namespace.to_string(), id.to_string()));
    }

    /// The shim processes serving this containerd: their command line names its socket.
    fn shims(&self) -> Vec<u32> {
        let socket = self.socket.to_string_lossy().into_owned();
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != self.process.id())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(socket.as_str()))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.directory.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        // Tasks first: their shims outlive containerd otherwise.
        for (namespace, id) in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&namespace, &["task", "kill", "-s", "SIGKILL", &id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.ctr(&namespace, &["task", "delete", &id]).status.success() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.ctr(&namespace, &["container", "delete", &id]);
        }
        // A shim exits on its own shortly after its task is deleted; one that has not
        // within a few seconds is killed, so that no process of the test outlives it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shims().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in self.shims() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        // Snapshots of removed containers are unmounted by containerd; anything still
        // mounted under the temporary root would make its removal fail, so unmount it.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let base = self.directory.path().to_string_lossy().into_owned();
            for mount_point in mounts.lines().filter_map(|line| line.split(' ').nth(1)).filter(|m| m.starts_with(&base))
            {
                let _ = Command::new("umount").arg("-l").arg(mount_point).status();
            }
        }
    }
}
