//! cargo-nextest, which runs the README's second command (`cargo nextest run -p
//! conformance`). The lab does not need it to build a cluster, so a missing or old
//! nextest is a warning; `lab doctor` and `lab up` install it, at the version that
//! `.config/nextest.toml` requires (`nextest-version`), so the two stay in step.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{build_checks::cargo_path, Finding, PreflightError, Status};

/// The name of the finding.
pub const CHECK: &str = "cargo-nextest (runs the conformance suite)";

/// The workspace's nextest configuration, whose `nextest-version` is the version
/// the suite is run with.
const NEXTEST_CONFIG: &str = include_str!("../../../.config/nextest.toml");

/// The version `.config/nextest.toml` requires.
pub fn required_version() -> String {
    let config: toml::Table = toml::from_str(NEXTEST_CONFIG).expect(".config/nextest.toml is valid TOML");
    match config.get("nextest-version") {
        Some(toml::Value::String(version)) => version.clone(),
        other => panic!(".config/nextest.toml: nextest-version must be a version string, found {other:?}"),
    }
}

/// Whether the cargo that runs the lab has a recent enough `cargo nextest`.
pub fn finding() -> Finding {
    let installed = cargo_path().and_then(|cargo| installed_version(&cargo));
    finding_for(installed.as_deref(), &required_version())
}

fn finding_for(installed: Option<&str>, required: &str) -> Finding {
    let fix = install_command(required);
    match installed {
        Some(version) if at_least(version, required) => Finding::ok(CHECK, version),
        Some(version) => Finding::problem(CHECK, Status::Warn, format!("{version}, older than {required}"), fix),
        None => Finding::problem(CHECK, Status::Warn, "missing", fix),
    }
}

fn install_command(version: &str) -> String {
    format!("cargo install --locked cargo-nextest --version {version}")
}

/// `cargo nextest --version` prints `cargo-nextest 0.9.143 (60fa45f63 2026-08-04)`.
fn installed_version(cargo: &Path) -> Option<String> {
    let output = Command::new(cargo).args(["nextest", "--version"]).stdin(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).split_whitespace().nth(1).map(str::to_string)
}

/// Whether dotted version `version` is at least `required`, number by number.
fn at_least(version: &str, required: &str) -> bool {
    let numbers =
        |text: &str| -> Vec<u64> { text.split(['.', '-', '+']).map_while(|part| part.parse().ok()).collect() };
    numbers(version) >= numbers(required)
}

/// Installs the required cargo-nextest with the cargo that runs the lab, saying so
/// first; returns the version installed. Cargo's output goes to stderr.
pub(super) fn install(say: &dyn Fn(&str)) -> Result<String, PreflightError> {
    let version = required_version();
    let command = install_command(&version);
    let cargo = cargo_path()
        .ok_or_else(|| PreflightError::Cargo { command: command.clone(), message: "cargo is not on PATH".into() })?;
    say(&format!("installing cargo-nextest {version} for the conformance suite: {command} (a few minutes)"));
    let status = Command::new(cargo)
        .args(["install", "--locked", "cargo-nextest", "--version", &version])
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|error| PreflightError::Cargo { command: command.clone(), message: error.to_string() })?;
    if !status.success() {
        return Err(PreflightError::Cargo { command, message: status.to_string() });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_required_version_is_read_from_the_workspace_config() {
        let version = required_version();
        assert!(at_least(&version, "0.9.0"), "{version}");
    }

    #[test]
    fn a_missing_or_older_nextest_is_a_warning_with_the_install_command() {
        assert_eq!(finding_for(Some("0.9.143"), "0.9.143").status, Status::Ok);
        assert_eq!(finding_for(Some("0.10.0"), "0.9.143").status, Status::Ok);
        let old = finding_for(Some("0.9.99"), "0.9.143");
        assert_eq!((old.status, old.detail.as_str()), (Status::Warn, "0.9.99, older than 0.9.143"));
        let missing = finding_for(None, "0.9.143");
        assert_eq!(missing.fix.as_deref(), Some("cargo install --locked cargo-nextest --version 0.9.143"));
        assert_eq!(missing.package, None, "apt does not install it");
    }
}
