//! Fixing what the checks found: installing the missing Debian packages with
//! apt-get and adding the deb-src entry `apt-get source kubernetes` needs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Finding, PreflightError, Status};
use crate::artifacts::build;
use crate::system::{LocalSystem, System};

/// The Debian packages that would fix `findings`, each once, sorted.
pub(super) fn missing_packages(findings: &[Finding]) -> Vec<String> {
    let packages: BTreeSet<&str> = findings
        .iter()
        .filter(|finding| finding.status != Status::Ok)
        .filter_map(|finding| finding.package.as_deref())
        .collect();
    packages.into_iter().map(str::to_string).collect()
}

/// The apt-get command line that installs `packages`.
pub(super) fn install_command(packages: &[&str]) -> String {
    format!("apt-get install -y --no-install-recommends {}", packages.join(" "))
}

/// Installs the Debian packages that fix `findings` with apt-get (after one
/// `apt-get update`), telling `say` what it installs before it starts; apt's own
/// output goes to stderr, so `lab doctor --json` keeps stdout for the JSON. Returns
/// the packages installed, none when nothing was missing.
pub fn install_missing(findings: &[Finding], say: &dyn Fn(&str)) -> Result<Vec<String>, PreflightError> {
    let packages = missing_packages(findings);
    if packages.is_empty() {
        return Ok(packages);
    }
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    let install = install_command(&names);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot { packages: names.join(" "), command: install });
    }
    if !crate::system::program_exists("apt-get") {
        return Err(PreflightError::NoApt { packages: names.join(" ") });
    }
    say(&format!("installing {} with apt-get", names.join(" ")));
    apt(&["update"], "apt-get update")?;
    let mut arguments = vec!["install", "-y", "--no-install-recommends"];
    arguments.extend(&names);
    apt(&arguments, &install)?;
    Ok(packages)
}

fn apt(arguments: &[&str], command: &str) -> Result<(), PreflightError> {
    let status = Command::new("apt-get")
        .args(arguments)
        // No questions: doctor runs unattended, and in CI without a terminal.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|error| PreflightError::Apt { command: command.to_string(), message: error.to_string() })?;
    if !status.success() {
        return Err(PreflightError::Apt { command: command.to_string(), message: format!("{status}") });
    }
    Ok(())
}

/// The shell command that does what `add_deb_src_entry` does.
pub(super) fn deb_src_command() -> String {
    format!("printf '{}' > {} && apt-get update", build::DEB_SRC_ENTRY.replace('\n', "\\n"), build::DEB_SRC_LIST_PATH)
}

/// Writes `build::DEB_SRC_ENTRY` to `build::DEB_SRC_LIST_PATH` and runs `apt-get
/// update`, telling `say` so first, so that `apt-get source kubernetes` works.
pub fn add_deb_src_entry(say: &dyn Fn(&str)) -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::DebSrcNotRoot { command: deb_src_command() });
    }
    say(&format!("adding a deb-src entry for bookworm in {} and running apt-get update", build::DEB_SRC_LIST_PATH));
    // apt reads every file in sources.list.d: a half-written entry would break each
    // apt-get until it is removed.
    LocalSystem.write_atomically(Path::new(build::DEB_SRC_LIST_PATH), build::DEB_SRC_ENTRY.as_bytes(), 0o644).map_err(
        |error| PreflightError::WriteDebSrc { path: build::DEB_SRC_LIST_PATH.to_string(), message: error.to_string() },
    )?;
    apt(&["update"], "apt-get update")
}
