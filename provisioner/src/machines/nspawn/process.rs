//! How a node's nspawn runs and stops: as a transient systemd unit where systemd is
//! PID 1, else as a process the lab supervises itself, in its own session and
//! cgroups with its PID recorded. Either way a process counts as a node's only when
//! its command line names the node's machine and this state directory's disk.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cgroups::kill_cgroup_tree;
use super::{Halt, NodePaths, Nspawn, Supervisor};
use crate::machines::{MachineError, NodeSpec, StopOutcome};
use crate::system;
use crate::text;

/// How long a node may take to power off before it is killed. A clean shutdown takes
/// about two seconds; a worker's kubelet holds it back for up to its
/// `shutdownGracePeriod` (10 s) while it stops its pods.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a launched nspawn may take to record its PID and be running.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The shell that starts nspawn when the lab supervises it: it writes its own PID
/// into the node's cgroup in every hierarchy and into the PID file, then becomes
/// nspawn (same PID), so everything nspawn starts is in the node's cgroups from the
/// first instruction. Arguments: PID_FILE CGROUP_PROCS... -- COMMAND...
const LAUNCH_SCRIPT: &str = r#"pid_file=$1; shift
while [ "$1" != -- ]; do echo $$ > "$1" || { echo "lab: cannot join cgroup $1" >&2; exit 125; }; shift; done
shift
echo $$ > "$pid_file.tmp" && mv -f "$pid_file.tmp" "$pid_file" || exit 125
exec "$@"
"#;

impl Nspawn {
    /// The `systemd-run` command that starts `node` as a transient unit.
    fn systemd_run_command(&self, node: &NodeSpec, paths: &NodePaths) -> Command {
        let mut command = Command::new("systemd-run");
        command
            .arg(format!("--unit={}", self.unit_name(&node.name)))
            .arg(format!("--description=k8s lab {}: node {}", self.spec.lab, node.name))
            // Notify: the unit is started when nspawn says the container is.
            .arg("--service-type=notify")
            // A failed unit is forgotten, so the next start can reuse the name.
            .arg("--collect")
            // nspawn manages the node's cgroups below the unit's own.
            .arg("--property=Delegate=yes")
            // SIGTERM to nspawn alone (it powers the node off), SIGKILL to all at the end.
            .arg("--property=KillMode=mixed")
            .arg(format!("--property=TimeoutStopSec={}", STOP_TIMEOUT.as_secs()))
            .arg("--property=TasksMax=16384")
            .arg(format!("--property=StandardOutput=append:{}", paths.console.display()))
            .arg(format!("--property=StandardError=append:{}", paths.console.display()))
            .arg("systemd-nspawn")
            .args(self.nspawn_arguments(node, paths));
        command
    }

    /// Whether `arguments` (a process's command line) are this node's nspawn.
    fn is_node_process(&self, arguments: &[String], node: &str) -> bool {
        let paths = self.paths(node);
        let machine = format!("--machine={}", self.machine_name(node));
        let directory = format!("--directory={}", paths.root.display());
        arguments.first().is_some_and(|program| program.rsplit('/').next() == Some("systemd-nspawn"))
            && arguments.contains(&machine)
            && arguments.contains(&directory)
    }

    /// The PID of the node's running nspawn when the lab supervises it: the PID
    /// file's, if that process is the node's, else any process that is (a lost or
    /// stale PID file must not make a running machine look stopped).
    fn running_pid(&self, node: &str) -> Option<u32> {
        let recorded = fs::read_to_string(self.paths(node).pid).ok().and_then(|text| text.trim().parse::<u32>().ok());
        let is_node = |pid: u32| {
            system::process_alive(pid)
                && system::process_arguments(pid).is_some_and(|arguments| self.is_node_process(&arguments, node))
        };
        if let Some(pid) = recorded.filter(|pid| is_node(*pid)) {
            return Some(pid);
        }
        all_pids().into_iter().find(|pid| is_node(*pid))
    }

    fn unit_active(&self, node: &str) -> bool {
        // `is-active` prints the state and exits 0 only for active units; activating
        // and deactivating units are running machines too.
        let output = Command::new("systemctl").args(["is-active", &self.unit_name(node)]).stdin(Stdio::null()).output();
        output.is_ok_and(|output| {
            let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
            matches!(state.as_str(), "active" | "activating" | "deactivating" | "reloading")
        })
    }

    /// The main PID of the node's unit, when it has one.
    fn unit_main_pid(&self, node: &str) -> Option<u32> {
        let output = system::run_program("systemctl", ["show", "--property=MainPID", "--value", &self.unit_name(node)]);
        output.ok()?.trim().parse::<u32>().ok().filter(|pid| *pid != 0)
    }

    pub(super) fn is_running(&self, node: &str) -> bool {
        match self.supervisor {
            // The unit name is the lab's and the node's; the process must also be
            // this state directory's node, not a same-named lab's from elsewhere.
            Supervisor::SystemdUnits => {
                self.unit_active(node)
                    && self
                        .unit_main_pid(node)
                        .and_then(system::process_arguments)
                        .is_some_and(|arguments| self.is_node_process(&arguments, node))
            }
            Supervisor::Processes => self.running_pid(node).is_some(),
        }
    }

    /// A live systemd-nspawn running this node's machine name from another state
    /// directory: a second lab of the same name, whose cgroups, unit and network
    /// link names collide with this one's.
    pub(super) fn foreign_process(&self, node: &str) -> Option<u32> {
        let flag = format!("--machine={}", self.machine_name(node));
        all_pids().into_iter().find(|pid| {
            system::process_alive(*pid)
                && system::process_arguments(*pid).is_some_and(|arguments| {
                    arguments.first().is_some_and(|program| program.rsplit('/').next() == Some("systemd-nspawn"))
                        && arguments.contains(&flag)
                        && !self.is_node_process(&arguments, node)
                })
        })
    }

    /// Starts nspawn for `node` in its own session and cgroups, and waits until it
    /// runs (its PID recorded and its command line nspawn's).
    pub(super) fn launch_process(&self, node: &NodeSpec, paths: &NodePaths) -> Result<(), MachineError> {
        let name = &node.name;
        let cgroup_procs = self.prepare_cgroups(name).map_err(|message| self.node_error(name, message))?;
        let _ = fs::remove_file(&paths.pid);
        let console = fs::File::create(&paths.console)
            .map_err(|error| self.node_error(name, format!("cannot create {}: {error}", paths.console.display())))?;
        let console_err = console
            .try_clone()
            .map_err(|error| self.node_error(name, format!("cannot share {}: {error}", paths.console.display())))?;
        // `setsid --fork`: nspawn runs in a new session with no terminal, so no
        // hang-up reaches it when the shell that ran `lab up` closes, and it is not
        // this process's child, so it outlives `lab` and is reaped by init.
        let mut command = Command::new("setsid");
        command
            .args(["--fork", "sh", "-c", LAUNCH_SCRIPT, "lab-launch"])
            .arg(&paths.pid)
            .args(&cgroup_procs)
            .args(["--", "systemd-nspawn"])
            .args(self.nspawn_arguments(node, paths))
            .stdout(console)
            .stderr(console_err);
        system::run(&mut command).map_err(|failure| self.node_error(name, failure.to_string()))?;

        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            let recorded = fs::read_to_string(&paths.pid).ok().and_then(|text| text.trim().parse::<u32>().ok());
            if let Some(pid) = recorded {
                if !system::process_alive(pid) {
                    return Err(self.node_error(
                        name,
                        format!("systemd-nspawn exited at once: {}", console_tail(&paths.console, 10)),
                    ));
                }
                if system::process_arguments(pid).is_some_and(|arguments| self.is_node_process(&arguments, name)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.node_error(
                    name,
                    format!(
                        "systemd-nspawn did not start within {LAUNCH_TIMEOUT:?}: {}",
                        console_tail(&paths.console, 10)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn launch_unit(&self, node: &NodeSpec, paths: &NodePaths) -> Result<(), MachineError> {
        let name = &node.name;
        // A unit that failed before `--collect` existed on this host, or one left
        // loaded for any reason, would make systemd-run refuse the name.
        let _ = system::run_program("systemctl", ["reset-failed", &self.unit_name(name)]);
        fs::write(&paths.console, b"")
            .map_err(|error| self.node_error(name, format!("cannot create {}: {error}", paths.console.display())))?;
        system::run(&mut self.systemd_run_command(node, paths)).map_err(|failure| {
            self.node_error(name, format!("{failure}; console: {}", console_tail(&paths.console, 10)))
        })?;
        Ok(())
    }

    pub(super) fn stop_process(&self, node: &str, halt: Halt) -> Result<StopOutcome, MachineError> {
        let Some(pid) = self.running_pid(node) else {
            return Ok(StopOutcome::NotRunning);
        };
        if halt == Halt::PowerOff {
            if self.powered_off_by_its_own_os(node, pid) {
                return Ok(StopOutcome::Stopped);
            }
            // nspawn answers SIGTERM by having the node's systemd power off at once.
            system::send_signal(pid, "TERM").map_err(|failure| self.node_error(node, failure.to_string()))?;
            if system::wait_for_exit(pid, STOP_TIMEOUT) {
                return Ok(StopOutcome::Stopped);
            }
            tracing::warn!(node, pid, "the node did not power off in time; killing it");
        }
        let _ = system::send_signal(pid, "KILL");
        if let Ok(cgroups) = self.node_cgroups(node) {
            cgroups.iter().for_each(|cgroup| kill_cgroup_tree(cgroup));
        }
        if system::wait_for_exit(pid, Duration::from_secs(10)) {
            Ok(StopOutcome::Killed)
        } else {
            Err(self.node_error(node, format!("systemd-nspawn (PID {pid}) survived SIGKILL")))
        }
    }

    pub(super) fn stop_unit(&self, node: &str, halt: Halt) -> Result<StopOutcome, MachineError> {
        if !self.unit_active(node) {
            return Ok(StopOutcome::NotRunning);
        }
        if halt == Halt::Kill {
            let _ = system::run_program("systemctl", ["kill", "--signal=KILL", &self.unit_name(node)]);
        }
        if halt == Halt::PowerOff {
            if let Some(pid) = self.unit_main_pid(node) {
                // Once the node is off, stopping its unit only collects it.
                self.powered_off_by_its_own_os(node, pid);
            }
        }
        system::run_program("systemctl", ["stop", &self.unit_name(node)])
            .map_err(|failure| self.node_error(node, failure.to_string()))?;
        Ok(StopOutcome::Stopped)
    }

    /// Powers the node whose nspawn is `nspawn_pid` off the way `poweroff` typed on the
    /// node would, and waits for it to be off; false when it could not be asked or did
    /// not go off in time.
    ///
    /// The node's systemd is asked through its logind, which first tells the programs
    /// holding a delay inhibitor and waits for them, as it does for a machine's power
    /// button. The kubelet holds one (graceful node shutdown, `stages::kubelet`): it
    /// takes the node's pods out of their Services before they stop, so that the
    /// cluster stops sending them work. SIGTERM to nspawn would have the node's systemd
    /// power off at once, without logind, and the Services would go on sending half
    /// their traffic to the stopped node until the controller manager marks it
    /// NotReady, 40 s later.
    fn powered_off_by_its_own_os(&self, node: &str, nspawn_pid: u32) -> bool {
        let Some(init) = child_process(nspawn_pid) else {
            return false;
        };
        let target = init.to_string();
        let asked = system::run_program(
            "nsenter",
            ["--target", &target, "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl", "poweroff"],
        );
        if let Err(failure) = asked {
            tracing::warn!(node, %failure, "the node's systemd could not be asked to power off; stopping it from outside");
            return false;
        }
        if system::wait_for_exit(nspawn_pid, STOP_TIMEOUT) {
            return true;
        }
        tracing::warn!(node, "the node did not power off in time");
        false
    }

    /// Processes of this lab's machines that are still alive (by command line, so a
    /// lost PID file cannot hide one).
    pub(super) fn surviving_processes(&self, nodes: &[String]) -> Vec<(String, u32)> {
        let mut survivors = Vec::new();
        for pid in all_pids() {
            let Some(arguments) = system::process_arguments(pid) else { continue };
            if let Some(node) = nodes.iter().find(|node| self.is_node_process(&arguments, node)) {
                if system::process_alive(pid) {
                    survivors.push((node.clone(), pid));
                }
            }
        }
        survivors
    }
}

/// The last `lines` lines of a console log, joined for an error message.
fn console_tail(path: &Path, lines: usize) -> String {
    let end = text::file_tail(path, 8192).unwrap_or_default();
    match text::one_line_tail(end.lines().filter(|line| !line.trim().is_empty()), lines) {
        empty if empty.is_empty() => format!("(nothing in {})", path.display()),
        joined => format!("{joined} (console: {})", path.display()),
    }
}

/// The first child of `pid`: nspawn's is the node's init.
fn child_process(pid: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Every process ID on the host.
fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backend, strings};
    use super::*;

    #[test]
    fn on_a_systemd_host_a_node_is_a_transient_unit() {
        let nspawn = backend(Supervisor::SystemdUnits);
        let node = &nspawn.spec.nodes[0];
        let command = nspawn.systemd_run_command(node, &nspawn.paths("master1"));
        assert_eq!(command.get_program(), "systemd-run");
        let arguments = strings(command.get_args());
        let nspawn_at = arguments.iter().position(|argument| argument == "systemd-nspawn").expect("nspawn command");
        let (run_options, nspawn_options) = arguments.split_at(nspawn_at);
        for expected in [
            "--unit=lab-k8s-master1.service",
            "--service-type=notify",
            "--property=Delegate=yes",
            "--property=KillMode=mixed",
            "--property=StandardOutput=append:/srv/lab/machines/master1/console.log",
        ] {
            assert!(run_options.iter().any(|argument| argument == expected), "{expected} missing from {run_options:?}");
        }
        assert!(nspawn_options.iter().any(|argument| argument == "--keep-unit"));
    }

    #[test]
    fn a_node_process_is_recognised_by_machine_and_directory() {
        let nspawn = backend(Supervisor::Processes);
        let node = &nspawn.spec.nodes[0];
        let mut arguments = vec!["systemd-nspawn".to_string()];
        arguments.extend(strings(nspawn.nspawn_arguments(node, &nspawn.paths("master1"))));
        assert!(nspawn.is_node_process(&arguments, "master1"));
        assert!(!nspawn.is_node_process(&arguments, "master2"));
        // The same machine name run from another state directory is not ours.
        let other: Vec<String> =
            arguments.iter().map(|argument| argument.replace("/srv/lab/", "/srv/other/")).collect();
        assert!(!nspawn.is_node_process(&other, "master1"));
        // Nor is the launching shell before it becomes nspawn.
        let mut shell = vec!["sh".to_string(), "-c".to_string()];
        shell.extend(arguments.iter().cloned());
        assert!(!nspawn.is_node_process(&shell, "master1"));
    }

    #[test]
    fn the_launch_script_joins_cgroups_records_its_pid_and_becomes_the_command() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let pid_file = scratch.path().join("pid");
        let procs = scratch.path().join("cgroup.procs");
        let output = Command::new("sh")
            .args(["-c", LAUNCH_SCRIPT, "lab-launch"])
            .arg(&pid_file)
            .arg(&procs)
            .args(["--", "sh", "-c", "echo $$"])
            .output()
            .expect("run the launch script");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let exec_pid = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert_eq!(fs::read_to_string(&pid_file).unwrap().trim(), exec_pid, "the PID survives exec");
        assert_eq!(fs::read_to_string(&procs).unwrap().trim(), exec_pid);
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let log = scratch.path().join("console.log");
        fs::write(&log, "one\ntwo\n\nthree\n").unwrap();
        assert!(console_tail(&log, 2).starts_with("two | three (console: "));
        assert!(console_tail(&scratch.path().join("absent"), 2).starts_with("(nothing in "));
    }
}
