//! A virtual machine whose boot hangs, found from its console and reset, as a person
//! watching the console would press the reset button.
//!
//! Under software emulation (TCG) a guest kernel now and then stops for good early in
//! its boot. It was seen on this project's CI host: the second boot of the Vagrant
//! smoke test's VM printed its last console line one second into the kernel ("NET:
//! Registered PF_INET protocol family") and nothing more for nine minutes, until the
//! test runner killed the test. A booting machine's console is never quiet for long
//! (the kernel's lines, then systemd's), so a console that has not grown for the
//! backend's `Machines::hung_boot_after` while the machine runs and does not answer
//! SSH yet means the boot hung, and a reset is what brings the machine up.
//!
//! `lab up` and the VM backends' smoke test look at each booting node's console with
//! a `BootWatch` between their SSH attempts. A reset is reported, never silent, and
//! there are at most `MAX_RESETS` per boot: a machine that hangs every time is an
//! error for the SSH timeout to report, with its console.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{MachineState, Machines};
use crate::text;

/// How many times one boot of a machine is reset before the watch gives up.
pub const MAX_RESETS: u32 = 2;

/// The watch over one node's boot.
pub struct BootWatch<'a> {
    machines: &'a dyn Machines,
    node: &'a str,
    quiet_limit: Duration,
    /// The console's length when last seen, and since when it has had that length.
    console: Option<(u64, Instant)>,
    resets: u32,
}

impl<'a> BootWatch<'a> {
    /// A watch over the boot of `node`, or `None` where the backend's boots do not
    /// hang that way (containers share the host's kernel).
    pub fn new(machines: &'a dyn Machines, node: &'a str) -> Option<BootWatch<'a>> {
        let quiet_limit = machines.hung_boot_after()?;
        Some(BootWatch { machines, node, quiet_limit, console: None, resets: 0 })
    }

    /// Looks at the console once, at `now`. When it has been quiet for the backend's
    /// limit while the machine runs, and it does not show a login prompt (the boot
    /// finished; a node that then does not answer SSH has another problem), resets
    /// the machine and returns the line that says so.
    pub fn check(&mut self, now: Instant) -> Option<String> {
        let Some(path) = self.machines.console_log(self.node) else {
            self.console = None;
            return None;
        };
        let length = std::fs::metadata(&path).map_or(0, |metadata| metadata.len());
        let quiet_since = match self.console {
            Some((seen, since)) if seen == length => since,
            _ => {
                self.console = Some((length, now));
                return None;
            }
        };
        let quiet = now.saturating_duration_since(quiet_since);
        if quiet < self.quiet_limit || self.resets >= MAX_RESETS {
            return None;
        }
        let last_line = last_console_line(&path).unwrap_or_default();
        if last_line.contains("login:") {
            return None;
        }
        // A machine that is not running (not started yet, or stopped on purpose)
        // is not hanging: its quiet time starts again.
        self.console = Some((length, now));
        if !matches!(self.machines.status(self.node), Ok(MachineState::Running)) {
            return None;
        }
        self.resets += 1;
        let what =
            format!("{}: console quiet for {} s after \"{last_line}\": the boot hung", self.node, quiet.as_secs());
        Some(match self.machines.reset(self.node) {
            Ok(()) => format!("{what}; reset the machine ({} of at most {MAX_RESETS})", self.resets),
            Err(error) => format!("{what}; the reset failed: {error}"),
        })
    }
}

/// The last line with text of a console log, without control characters and cut to
/// 100 characters, for one-line progress reports.
pub fn last_console_line(path: &Path) -> Option<String> {
    let tail = text::file_tail(path, 4096)?;
    let line = tail.lines().rev().map(text::strip_control).find(|line| !line.trim().is_empty())?;
    let line = line.trim();
    Some(match line.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::{
        hostnet, Leftover, MachineError, NodeImage, NodeSpec, Requirement, StartOutcome, StopOutcome,
    };
    use crate::plan::HostRoute;
    use crate::topology::Backend;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// A VM backend of one node whose console is a file the test writes, and which
    /// records its resets.
    struct Vm {
        console: PathBuf,
        running: bool,
        resets: Mutex<u32>,
    }

    impl Machines for Vm {
        fn backend(&self) -> Backend {
            Backend::Libvirt
        }
        fn requirements(&self) -> Vec<Requirement> {
            Vec::new()
        }
        fn ensure_image(&self, _: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
            unreachable!("the watch needs no image")
        }
        fn ensure_network(&self, _: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
            unreachable!("the watch needs no network")
        }
        fn create_or_start(&self, _: &NodeSpec, _: &NodeImage, _: &str) -> Result<StartOutcome, MachineError> {
            unreachable!("the watch starts nothing")
        }
        fn stop(&self, _: &str) -> Result<StopOutcome, MachineError> {
            unreachable!("the watch stops nothing")
        }
        fn status(&self, _: &str) -> Result<MachineState, MachineError> {
            Ok(if self.running { MachineState::Running } else { MachineState::Stopped })
        }
        fn known_nodes(&self) -> Vec<String> {
            vec!["vm1".into()]
        }
        fn console_log(&self, _: &str) -> Option<PathBuf> {
            Some(self.console.clone()).filter(|path| path.exists())
        }
        fn hung_boot_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(150))
        }
        fn reset(&self, _: &str) -> Result<(), MachineError> {
            *self.resets.lock().unwrap() += 1;
            Ok(())
        }
        fn destroy(&self) -> Vec<Leftover> {
            Vec::new()
        }
    }

    fn vm(console: &str, running: bool) -> (tempfile::TempDir, Vm) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, console).unwrap();
        (dir, Vm { console: path, running, resets: Mutex::new(0) })
    }

    const HUNG: &str =
        "[    1.009125] NET: Registered PF_INET protocol family\n[    1.010801] IP idents hash table entries: 65536\n";

    #[test]
    fn a_console_quiet_past_the_limit_resets_a_running_machine_at_most_twice() {
        let (_dir, machine) = vm(HUNG, true);
        let mut watch = BootWatch::new(&machine, "vm1").unwrap();
        let start = Instant::now();
        assert_eq!(watch.check(start), None, "the first look only notes the console");
        assert_eq!(watch.check(start + Duration::from_secs(149)), None, "quiet, but not for long enough");
        let said = watch.check(start + Duration::from_secs(151)).expect("a reset is reported");
        assert!(said.starts_with("vm1: console quiet for 151 s after \"[    1.010801] IP idents"), "{said}");
        assert!(said.ends_with("reset the machine (1 of at most 2)"), "{said}");
        assert_eq!(*machine.resets.lock().unwrap(), 1);
        assert_eq!(watch.check(start + Duration::from_secs(200)), None, "the quiet time starts again at the reset");
        assert!(watch.check(start + Duration::from_secs(302)).is_some());
        assert_eq!(watch.check(start + Duration::from_secs(1000)), None, "no third reset");
        assert_eq!(*machine.resets.lock().unwrap(), 2);
    }

    #[test]
    fn a_growing_console_a_login_prompt_or_a_stopped_machine_is_not_a_hung_boot() {
        let (_dir, machine) = vm(HUNG, true);
        let mut watch = BootWatch::new(&machine, "vm1").unwrap();
        let start = Instant::now();
        watch.check(start);
        std::fs::write(&machine.console, format!("{HUNG}[    1.2] TCP established hash table entries\n")).unwrap();
        assert_eq!(watch.check(start + Duration::from_secs(151)), None, "the console grew");
        assert_eq!(watch.check(start + Duration::from_secs(300)), None, "quiet for 149 s since it grew");

        let (_dir, booted) = vm(&format!("{HUNG}\nDebian GNU/Linux 12 solo ttyS0\n\nsolo login: "), true);
        let mut watch = BootWatch::new(&booted, "solo").unwrap();
        watch.check(start);
        assert_eq!(watch.check(start + Duration::from_secs(600)), None, "the boot finished");

        let (_dir, stopped) = vm(HUNG, false);
        let mut watch = BootWatch::new(&stopped, "vm1").unwrap();
        watch.check(start);
        assert_eq!(watch.check(start + Duration::from_secs(600)), None, "a stopped machine does not hang");
        assert_eq!(*booted.resets.lock().unwrap() + *stopped.resets.lock().unwrap(), 0);
    }
}
