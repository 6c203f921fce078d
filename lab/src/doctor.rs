//! `lab doctor`: checks the host for the topology's lab, both to build its
//! artifacts and to run its machines, and installs the Debian packages it lacks.
//!
//! Installing is the default, because a new user's next step after "mmdebstrap is
//! missing" is always to install it; `--check` only reports. Installing also adds
//! the deb-src entry `apt-get source kubernetes` needs, before the packages. Either way the table
//! shows the host as it is at the end, and the exit code is non-zero while any
//! check still fails.

use std::fmt::Write as _;

use anyhow::{anyhow, Context as _};
use provisioner::artifacts::build;
use provisioner::preflight::{self, Finding, Report, Status};
use serde::Serialize;

use crate::{Exit, Failure, Paths};

/// What `lab doctor --json` prints.
#[derive(Serialize)]
struct DoctorOutput<'a> {
    /// The worst status of all checks: `ok`, `warn` or `fail`.
    status: Status,
    /// The Debian packages this run installed.
    installed: &'a [String],
    findings: &'a [Finding],
}

/// Checks the host; with `install`, adds the deb-src entry and installs missing
/// packages first, then checks again.
pub fn doctor(paths: &Paths, json: bool, install: bool) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    let check = || lab.host_report();
    let mut report = check();
    let mut installed = Vec::new();
    let mut added_deb_src = false;
    if install && fixable(&report) {
        // Progress goes to stderr, with apt's own output, so that `--json` keeps
        // stdout for the JSON.
        let say = |line: &str| eprintln!("{line}");
        if report.deb_src_missing() {
            preflight::add_deb_src_entry(&say)?;
            added_deb_src = true;
        }
        installed = preflight::install_missing(&report.findings, &say)?;
        report = check();
    }

    if json {
        let output = DoctorOutput { status: report.status(), installed: &installed, findings: &report.findings };
        println!("{}", serde_json::to_string_pretty(&output).context("serialize the findings")?);
    } else {
        if added_deb_src {
            println!("added the deb-src entry {} and ran apt-get update", build::DEB_SRC_LIST_PATH);
        }
        if !installed.is_empty() {
            println!("installed: {}\n", installed.join(" "));
        }
        print!("{}", table(&report));
    }

    let failed: Vec<&str> = report.failures().map(|finding| finding.check.as_str()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let hint =
        if install || !fixable(&report) { "" } else { " (`lab doctor` installs packages and adds the deb-src entry)" };
    Err(Failure {
        exit: Exit::Failure,
        error: anyhow!("{} host check(s) failed: {}{hint}", failed.len(), failed.join("; ")),
    })
}

/// Whether installing would change something: a missing package or deb-src entry.
fn fixable(report: &Report) -> bool {
    report.deb_src_missing() || !report.missing_packages().is_empty()
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
