//! The host programs the artifact builds run: which Debian package installs each,
//! short commands through `system::run`, and long builds whose output goes to a log
//! while a progress line reports every 15 s that they are still alive.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::build::{ArtifactError, Result};
use super::cache::io_error;
use crate::system::{self, CommandFailure};

/// How often a long build reports that it is still alive.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);

/// A command the build runs, and the Debian package that installs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tool {
    pub(super) command: &'static str,
    pub(super) package: &'static str,
}

pub(super) const APT_GET: Tool = Tool { command: "apt-get", package: "apt" };
pub(super) const DPKG_SOURCE: Tool = Tool { command: "dpkg-source", package: "dpkg-dev" };
pub(super) const DPKG_DEB: Tool = Tool { command: "dpkg-deb", package: "dpkg" };
pub(super) const GCC: Tool = Tool { command: "gcc", package: "gcc" };
pub(super) const GO: Tool = Tool { command: "go", package: "golang-go" };
pub(super) const LDD: Tool = Tool { command: "ldd", package: "libc-bin" };
pub(super) const MMDEBSTRAP: Tool = Tool { command: "mmdebstrap", package: "mmdebstrap" };
/// Optional: without it the lab-dns binary goes into its image with its symbols.
pub(super) const STRIP: Tool = Tool { command: "strip", package: "binutils" };

/// Fails with the package to install when `tool` is not on the PATH.
pub(super) fn require(step: &'static str, tool: Tool) -> Result<()> {
    if system::program_exists(tool.command) {
        return Ok(());
    }
    Err(ArtifactError::MissingTool { step, what: format!("the command `{}`", tool.command), package: tool.package })
}

/// Runs a short command to completion and returns its standard output.
pub(super) fn run(step: &'static str, command: &mut Command) -> Result<String> {
    system::run(command).map_err(|failure| ArtifactError::Command { step, failure })
}

/// Starts `log` empty, for the `run_logged` commands of one build.
pub(super) fn start_log(step: &'static str, log: &Path) -> Result<()> {
    fs::File::create(log).map(drop).map_err(io_error(step, log))
}

/// Runs a long command with its output going to `log`, reporting every 15 s how
/// long it has run and the last line it logged. The command line and its output are
/// appended, so that the several commands of one build share a log (see `start_log`).
pub(super) fn run_logged(
    step: &'static str,
    command: &mut Command,
    log: &Path,
    label: &str,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let line = system::command_line(command);
    // The log keeps the whole command line; an error names it shortened, since some
    // (openapi-gen's list of packages, the linker's version stamps) run to kilobytes.
    let shown = shortened(&line, 300);
    let failed =
        |message: String| ArtifactError::Command { step, failure: CommandFailure { command: shown.clone(), message } };
    let mut file = fs::OpenOptions::new().create(true).append(true).open(log).map_err(io_error(step, log))?;
    writeln!(file, "$ {line}").map_err(io_error(step, log))?;
    let stderr = file.try_clone().map_err(io_error(step, log))?;
    let mut child =
        command.stdin(Stdio::null()).stdout(file).stderr(stderr).spawn().map_err(|error| failed(error.to_string()))?;
    let started = Instant::now();
    let mut last_report = started;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|error| failed(error.to_string()))? {
            break status;
        }
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            last_report = Instant::now();
            let line = last_log_line(log).unwrap_or_else(|| "(nothing logged yet)".to_string());
            progress(&format!("{label}: {} elapsed; {line}", format_elapsed(started.elapsed())));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        let tail = fs::read_to_string(log).map(|text| last_lines(&text, 15)).unwrap_or_default();
        return Err(failed(format!("{status}; the whole log is {}{tail}", log.display())));
    }
    Ok(())
}

/// The last `count` non-empty lines of `text`, indented, after a newline.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    tail.iter().map(|line| format!("\n  {line}")).collect()
}

/// The last non-empty line of a log file, shortened for a progress line.
fn last_log_line(log: &Path) -> Option<String> {
    let mut file = fs::File::open(log).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|line| !line.is_empty())?;
    Some(shortened(line, 120))
}

/// `text` cut to its first `limit` characters, with `...` when it was longer.
fn shortened(text: &str, limit: usize) -> String {
    let mut short: String = text.chars().take(limit).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// `95 s` -> `1m35s`.
pub(super) fn format_elapsed(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_builds_report_time_and_the_last_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        fs::write(&log, "+++ Building go targets\n    cmd/kubelet\n\n").unwrap();
        assert_eq!(last_log_line(&log).as_deref(), Some("cmd/kubelet"));
        assert_eq!(format_elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(format_elapsed(Duration::from_secs(415)), "6m55s");

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo compiling; echo 'broken: no such package' >&2; exit 3"]);
        let error = run_logged("building", &mut failing, &log, "building", &|_| {}).unwrap_err().to_string();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains(&format!("the whole log is {}", log.display())), "{error}");
        assert!(error.contains("broken: no such package"), "{error}");

        let mut long = Command::new("sh");
        long.args(["-c", "exit 1", &"x".repeat(400)]);
        let error = run_logged("building", &mut long, &log, "building", &|_| {}).unwrap_err().to_string();
        assert!(error.starts_with(&format!("building: `sh -c exit 1 {}...` failed: ", "x".repeat(287))), "{error}");
        assert!(fs::read_to_string(&log).unwrap().contains(&"x".repeat(400)), "the log keeps the whole command");

        // The commands of one build share its log, each after its command line.
        start_log("building", &log).unwrap();
        let mut first = Command::new("echo");
        first.arg("generated");
        run_logged("building", &mut first, &log, "building", &|_| {}).unwrap();
        let mut second = Command::new("echo");
        second.arg("linked");
        run_logged("building", &mut second, &log, "building", &|_| {}).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "$ echo generated\ngenerated\n$ echo linked\nlinked\n");
    }

    #[test]
    fn a_missing_command_names_its_package() {
        let error = require("building Kubernetes", Tool { command: "lab-no-such-command", package: "lab-pkg" })
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "building Kubernetes needs the command `lab-no-such-command`, which is not installed (apt-get install lab-pkg)"
        );
    }
}
