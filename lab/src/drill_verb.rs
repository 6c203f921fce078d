//! `lab drill [NAME] [--json]`: runs the failover drills (`provisioner::drills`) against
//! the running lab and prints what each measured against its bound.
//!
//! The drills are conformance tests, so this runs them with cargo-nextest from the
//! checkout, one at a time (their test group), and then reads the record each drill
//! wrote into the state directory. A drill that failed before it had its figure has no
//! fresh record and shows as failed without one; nextest's output above the table says
//! why.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use provisioner::drills::{self, Drill, DrillRecord, DRILLS};
use provisioner::state_dir::StateDir;

use crate::{Exit, Failure, Paths};

/// One row of the table: a drill and what its latest run recorded, if it recorded
/// anything in this run.
struct Outcome {
    drill: &'static Drill,
    record: Option<DrillRecord>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.record.as_ref().is_some_and(|record| record.pass)
    }
}

pub fn drill(paths: &Paths, name: Option<&str>, json: bool) -> Result<(), Failure> {
    let chosen: Vec<&'static Drill> = match name {
        Some(name) => vec![drills::by_name(name).ok_or_else(|| Failure {
            exit: Exit::Usage,
            error: anyhow!(
                "no drill named {name:?}; the drills are: {}",
                DRILLS.iter().map(|drill| drill.name).collect::<Vec<_>>().join(", ")
            ),
        })?],
        None => DRILLS.iter().collect(),
    };
    // The drills need a lab; without one this is a usage error, as for `lab break`.
    crate::fault_verbs::existing(paths)?;
    let checkout = crate::source_checkout().ok_or_else(|| Failure {
        exit: Exit::Usage,
        error: anyhow!("the drills are conformance tests: run `lab drill` from the lab's source checkout"),
    })?;
    let started = SystemTime::now();
    let filter = chosen.iter().map(|drill| format!("test(={})", drill.test_name())).collect::<Vec<_>>().join(" | ");
    // nextest's own progress goes to stderr, so that stdout holds only the table or JSON.
    let status = provisioner::system::inner_cargo()
        .current_dir(&checkout)
        .env("LAB_DIR", &paths.state_dir)
        // The profile of the drills (`.config/nextest.toml`), and the drills that restart
        // a machine or the whole lab, which even that profile leaves out.
        .args(["nextest", "run", "--no-fail-fast", "--profile", "drills", "--run-ignored", "all", "-p", "conformance"])
        .args(["-E", &filter])
        .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned().context("duplicate stderr")?))
        .status()
        .context("cannot run cargo nextest (install it with `cargo install cargo-nextest --locked`)")?;

    let records = StateDir::new(&paths.state_dir).drill_records();
    let since = started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let outcomes: Vec<Outcome> = chosen
        .into_iter()
        .map(|drill| Outcome {
            drill,
            record: drills::read_record(&records, drill).filter(|record| record.at >= since),
        })
        .collect();
    let all_passed = status.success() && outcomes.iter().all(Outcome::passed);
    if json {
        let rows: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|outcome| {
                serde_json::json!({
                    "drill": outcome.drill.name,
                    "action": outcome.drill.action,
                    "measures": outcome.drill.measures,
                    "value": outcome.record.as_ref().map(|record| record.value),
                    "unit": outcome.drill.bound.unit(),
                    // A drill stretches a time bound by the lab's time scale when it records.
                    "bound": outcome
                        .record
                        .as_ref()
                        .map_or(outcome.drill.bound.value(1.0), |record| record.bound),
                    "pass": outcome.passed(),
                    "detail": outcome.record.as_ref().map(|record| record.detail.clone()),
                })
            })
            .collect();
        crate::machine_verbs::print_stdout(&serde_json::to_string_pretty(&rows).context("serialize the drills")?)?;
    } else {
        crate::machine_verbs::print_stdout(&table(&outcomes))?;
    }
    if all_passed {
        Ok(())
    } else {
        let failed: Vec<&str> =
            outcomes.iter().filter(|outcome| !outcome.passed()).map(|outcome| outcome.drill.name).collect();
        Err(Failure {
            exit: Exit::Failure,
            error: anyhow!("drills failed: {} (the test output above says why)", failed.join(", ")),
        })
    }
}

/// The table: drill, figure, bound, PASS or FAIL, and what the figure is.
fn table(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|outcome| outcome.drill.name.len()).max().unwrap_or(5).max(5);
    let mut lines = vec![format!("{:width$}  {:>8}  {:>6}  result  measures", "drill", "figure", "bound")];
    for outcome in outcomes {
        let (figure, bound, result) = match &outcome.record {
            Some(record) => (
                format!("{:.1} {}", record.value, record.unit),
                format!("{:.0} {}", record.bound, record.unit),
                if record.pass { "PASS" } else { "FAIL" },
            ),
            None => (
                "-".to_string(),
                format!("{:.0} {}", outcome.drill.bound.value(1.0), outcome.drill.bound.unit()),
                "FAIL",
            ),
        };
        lines.push(format!(
            "{:width$}  {figure:>8}  {bound:>6}  {result:6}  {}",
            outcome.drill.name, outcome.drill.measures
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_figures_bounds_and_drills_without_a_record_as_failed() {
        let record = DrillRecord {
            drill: DRILLS[0].name.to_string(),
            value: 2.34,
            unit: "s".to_string(),
            bound: 5.0,
            pass: true,
            detail: String::new(),
            at: 0.0,
        };
        let outcomes =
            [Outcome { drill: &DRILLS[0], record: Some(record) }, Outcome { drill: &DRILLS[1], record: None }];
        let text = table(&outcomes);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("drill "), "{text}");
        assert!(lines[1].starts_with(DRILLS[0].name) && lines[1].contains("2.3 s") && lines[1].contains("PASS"));
        assert!(lines[2].starts_with(DRILLS[1].name) && lines[2].contains(" -  ") && lines[2].contains("FAIL"));
    }
}
