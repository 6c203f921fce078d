//! `lab doctor`: checks the host for the topology's lab, both to build its
//! artifacts and to run its machines, and installs the Debian packages it lacks.
//!
//! Installing is the default, because a new user's next step after "mmdebstrap is
//! missing" is always to install it; `--check` only reports. Installing also adds
//! the deb-src entry `apt-get source kubernetes` needs, before the packages, and
//! cargo-nextest after them (`preflight::set_up_host`, which `lab up` uses too).
//! Either way the table
//! shows the host as it is at the end, and the exit code is non-zero while any
//! check still fails.

use std::fmt::Write as _;

use anyhow::{anyhow, Context as _};
use provisioner::preflight::{self, Finding, HostSetup, Report, Status};
use serde::Serialize;

use crate::{Exit, Failure, Paths};

/// What `lab doctor --json` prints.
#[derive(Serialize)]
struct DoctorOutput<'a> {
    /// The worst status of all checks: `ok`, `warn` or `fail`.
    status: Status,
    /// The Debian packages this run installed (`name` or `name=version`).
    installed: &'a [String],
    /// Packages apt would have removed, installed at a matching version instead.
    replaced: &'a [String],
    /// The cargo-nextest version this run installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    nextest_installed: Option<&'a str>,
    findings: &'a [Finding],
}

/// Checks the host; with `install`, adds the deb-src entry and installs missing
/// packages first, then checks again.
pub fn doctor(paths: &Paths, json: bool, install: bool) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    let check = || lab.host_report();
    let mut report = check();
    let mut setup = HostSetup::default();
    if install && report.fixable() {
        // Progress goes to stderr, with apt's own output, so that `--json` keeps
        // stdout for the JSON.
        setup = preflight::set_up_host(&report, &|line: &str| eprintln!("{line}"))?;
        report = check();
    }

    if json {
        let output = DoctorOutput {
            status: report.status(),
            installed: &setup.installed,
            replaced: &setup.replaced,
            nextest_installed: setup.nextest_installed.as_deref(),
            findings: &report.findings,
        };
        println!("{}", serde_json::to_string_pretty(&output).context("serialize the findings")?);
    } else {
        if let Some(path) = &setup.deb_src_added {
            println!("added the deb-src entry {path} and ran apt-get update");
        }
        if !setup.installed.is_empty() {
            println!("installed: {}", setup.installed.join(" "));
        }
        for replacement in &setup.replaced {
            println!("installed at the version of the release installed, so that apt removed nothing: {replacement}");
        }
        if let Some(version) = &setup.nextest_installed {
            println!("installed cargo-nextest {version}");
        }
        if setup.changed_anything() {
            println!();
        }
        print!("{}", table(&report));
    }

    let failed: Vec<&str> = report.failures().map(|finding| finding.check.as_str()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let hint = if install || !report.fixable() {
        ""
    } else {
        " (`lab doctor` installs packages, adds the deb-src entry and installs cargo-nextest)"
    };
    Err(Failure {
        exit: Exit::Failure,
        error: anyhow!("{} host check(s) failed: {}{hint}", failed.len(), failed.join("; ")),
    })
}

/// The readable form: one line per check, the fix indented under each problem.
fn table(report: &Report) -> String {
    let width = report.findings.iter().map(|finding| finding.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for finding in &report.findings {
        let _ = writeln!(out, "{:<4}  {:<width$}  {}", finding.status.to_string(), finding.check, finding.detail);
        if let Some(fix) = &finding.fix {
            let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        match report.status() {
            Status::Ok => "the host is ready for the lab",
            Status::Warn => "the host can run the lab (see the warnings)",
            Status::Fail => "the host cannot run the lab yet: apply the fixes above",
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_checks_and_puts_fixes_under_problems() {
        let report = Report {
            findings: vec![
                Finding {
                    check: "root".into(),
                    status: Status::Ok,
                    detail: "present".into(),
                    fix: None,
                    package: None,
                },
                Finding {
                    check: "mmdebstrap (builds the node image)".into(),
                    status: Status::Fail,
                    detail: "missing (Debian package mmdebstrap)".into(),
                    fix: Some("apt-get install -y --no-install-recommends mmdebstrap".into()),
                    package: Some("mmdebstrap".into()),
                },
            ],
        };
        assert_eq!(
            table(&report),
            "ok    root                                present\n\
             FAIL  mmdebstrap (builds the node image)  missing (Debian package mmdebstrap)\n\
             \x20                                         fix: apt-get install -y --no-install-recommends mmdebstrap\n\
             \n\
             the host cannot run the lab yet: apply the fixes above\n"
        );
    }
}
