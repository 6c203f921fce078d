//! The fault verbs: `lab faults` lists the catalogue (`provisioner::faults`), `lab
//! break` injects one fault into the running lab and `lab restore` undoes faults and
//! converges the lab. A wrong fault or node, or no lab at all, is the caller's mistake:
//! one line, exit code 2, nothing changed.

use anyhow::Context as _;
use provisioner::faults::{self, CATALOGUE};
use provisioner::lab::{Lab, LabError, Restore};

use crate::terminal::{JsonLines, Terminal};
use crate::{Exit, Failure, Paths};

/// `lab faults [--json]`: every fault with its chapter, where it goes in this lab's
/// topology (or why it does not apply), what it breaks and the tests that must fail.
pub fn list(paths: &Paths, json: bool) -> Result<(), Failure> {
    // The catalogue is shown against the running lab's topology, else lab.toml's.
    let lab = paths.existing_lab().or_else(|_| paths.lab_from_file())?;
    let in_force = lab.faults_in_force().unwrap_or_default();
    let rows: Vec<serde_json::Value> = CATALOGUE
        .iter()
        .map(|fault| {
            let applies = fault.applies_to(lab.topology());
            serde_json::json!({
                "name": fault.name,
                "stage": fault.stage.name(),
                "handbook": fault.stage.handbook_section(),
                "summary": fault.summary,
                "symptom": fault.symptom,
                "nodes": applies.as_ref().ok(),
                "not_applicable": applies.as_ref().err().map(ToString::to_string),
                "takes_node": matches!(fault.scope, faults::Scope::One { .. }),
                "breaks": fault.breaks,
                "proof": fault.proof,
                "in_force": in_force.iter().any(|record| record.fault == fault.name),
            })
        })
        .collect();
    if json {
        return print(&serde_json::to_string_pretty(&rows).context("serialize the catalogue")?);
    }
    use std::fmt::Write as _;
    let mut text = String::new();
    for fault in CATALOGUE {
        let applies = match fault.applies_to(lab.topology()) {
            Ok(nodes) => nodes,
            Err(error) => format!("not applicable: {error}"),
        };
        let mark = if in_force.iter().any(|record| record.fault == fault.name) { " (IN FORCE)" } else { "" };
        let _ = writeln!(text, "{}{mark}  [{}; on {applies}]", fault.name, fault.stage.name());
        let _ = writeln!(text, "    {}", fault.summary.replace("{nodes}", "NODE"));
        let _ = writeln!(text, "    breaks: {}", fault.breaks.join(", "));
    }
    let _ = write!(
        text,
        "{} faults; `lab break FAULT [--node NODE]` injects one, `lab restore` undoes it",
        CATALOGUE.len()
    );
    print(&text)
}

/// `lab break FAULT [--node NODE] [--json]`.
pub fn break_fault(paths: &Paths, name: &str, node: Option<&str>, json: bool) -> Result<(), Failure> {
    // Checked before the lab is looked for, so a typo is named as such with or
    // without a lab.
    faults::find(name).map_err(usage)?;
    let lab = existing(paths)?;
    let broken = if json {
        lab.break_fault(name, node, &JsonLines::new())?
    } else {
        lab.break_fault(name, node, &Terminal::new())?
    };
    if json {
        let output = serde_json::json!({
            "fault": broken.fault,
            "nodes": broken.nodes,
            "summary": broken.summary,
            "already_in_force": broken.already,
            "seconds": broken.elapsed.as_secs_f64(),
        });
        return print(&serde_json::to_string(&output).context("serialize the fault")?);
    }
    if broken.already {
        return print(&format!("{} is in force already, nothing changed: {}", broken.fault, broken.summary));
    }
    print(&format!(
        "{} in force ({:.1} s): {}\n`lab restore {}` undoes it",
        broken.fault,
        broken.elapsed.as_secs_f64(),
        broken.summary,
        broken.fault
    ))
}

/// `lab restore [FAULT | --all] [--json]`: without a fault, every one in force.
pub fn restore(paths: &Paths, name: Option<&str>, json: bool) -> Result<(), Failure> {
    if let Some(name) = name {
        faults::find(name).map_err(usage)?;
    }
    let lab = existing(paths)?;
    let which = name.map_or(Restore::All, Restore::One);
    let restored = if json { lab.restore(which, &JsonLines::new())? } else { lab.restore(which, &Terminal::new())? };
    if json {
        let output = serde_json::json!({
            "restored": restored.faults,
            "changed_files": restored.up.changed_files(),
            "changed_units": restored.up.changed_units(),
            "seconds": restored.elapsed.as_secs_f64(),
        });
        return print(&serde_json::to_string(&output).context("serialize the restore")?);
    }
    let what =
        if restored.faults.is_empty() { "no fault was in force".to_string() } else { restored.faults.join(", ") };
    print(&format!(
        "restored: {what}; the lab matches its plan and serves ({:.1} s, {} files and {} units changed)",
        restored.elapsed.as_secs_f64(),
        restored.up.changed_files(),
        restored.up.changed_units()
    ))
}

/// The lab of this state directory; without one, the fault verbs have nothing to act
/// on, which is a usage error like a wrong fault name.
pub(crate) fn existing(paths: &Paths) -> Result<Lab, Failure> {
    paths.existing_lab().map_err(|failure| match failure.error.downcast_ref::<LabError>() {
        Some(LabError::NoLab { .. }) => Failure { exit: Exit::Usage, error: failure.error },
        _ => failure,
    })
}

fn usage(error: faults::FaultError) -> Failure {
    Failure { exit: Exit::Usage, error: error.into() }
}

fn print(text: &str) -> Result<(), Failure> {
    crate::machine_verbs::print_stdout(text)
}
