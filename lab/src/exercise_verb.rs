//! `lab exercise`: diagnose a fault from its symptom. Without a flag it breaks a fault
//! of the catalogue picked at random (or `--fault NAME`) and says only what a user of
//! the cluster would notice; `--hint` names the chapter it is in; `--check` runs the
//! conformance tests the fault turns red and says solved once they pass; `--give-up`
//! restores the lab and tells what it was. `provisioner::lab::exercise` keeps the
//! exercise in the state directory; the tests run as `lab bench` runs its own.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use provisioner::benchmark::TestOutcome;
use provisioner::lab::exercise::checks;
use provisioner::lab::Exercise;

use crate::fault_verbs::existing;
use crate::terminal::{JsonLines, Terminal};
use crate::{Exit, Failure, Paths};

/// The nextest profile the checks run with (`.config/nextest.toml`).
const PROFILE: &str = "exercise";

/// What `lab exercise` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Hint,
    Check,
    GiveUp,
}

pub fn exercise(paths: &Paths, action: Action, fault: Option<&str>, json: bool) -> Result<(), Failure> {
    if let Some(name) = fault {
        provisioner::faults::find(name).map_err(|error| Failure { exit: Exit::Usage, error: error.into() })?;
    }
    let lab = existing(paths)?;
    match action {
        Action::Start => {
            // The pick only needs to differ from one exercise to the next.
            let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|time| time.as_nanos() as u64).unwrap_or(0);
            let exercise = lab.start_exercise(fault, seed)?;
            if json {
                return print_json(&serde_json::json!({ "symptom": exercise.symptom, "since": exercise.since }));
            }
            print(&format!(
                "exercise started: something in the lab is broken.\nsymptom: {}\n\nFind the cause and fix it \
                 with your own commands (`lab status`, `lab logs`, `lab ssh`, `lab kubectl`, `lab check`).\n  \
                 lab exercise --hint      # the chapter it is in\n  lab exercise --check     # solved yet?\n  \
                 lab exercise --give-up   # restore the lab and say what it was",
                exercise.symptom
            ))
        }
        Action::Hint => {
            let exercise = lab.current_exercise()?;
            let stage = exercise.stage;
            if json {
                return print_json(&serde_json::json!({
                    "symptom": exercise.symptom,
                    "stage": stage.name(),
                    "handbook_section": stage.handbook_section(),
                }));
            }
            print(&format!(
                "symptom: {}\nhint: it is in chapter {}, {} ({}).\n`lab explain {}` tells what the chapter sets \
                 up; `lab check {}` compares its nodes with the plan.",
                exercise.symptom,
                stage.position() + 1,
                stage.name(),
                stage.handbook_section(),
                stage.name(),
                stage.name()
            ))
        }
        Action::Check => {
            let exercise = lab.current_exercise()?;
            let tests = checks(exercise.fault());
            let outcomes = crate::suite_run::run_conformance(
                paths,
                PROFILE,
                &crate::suite_run::filter_of(&tests),
                "the exercise's checks",
            )?;
            let failing: Vec<(&str, String)> = tests
                .iter()
                .filter_map(|test| match outcomes.get(*test) {
                    Some(TestOutcome::Passed | TestOutcome::NotApplicable(_)) => None,
                    Some(TestOutcome::Failed(reason)) => Some((*test, reason.clone())),
                    None => Some((*test, "did not run".to_string())),
                })
                .collect();
            let solved = failing.is_empty();
            if solved {
                lab.solved(&exercise)?;
            }
            if json {
                let failing: Vec<_> = failing
                    .iter()
                    .map(|(test, reason)| serde_json::json!({ "test": test, "reason": reason }))
                    .collect();
                let mut output = serde_json::json!({ "solved": solved, "checks": tests.len(), "failing": failing });
                if solved {
                    output["fault"] = exercise.fault.clone().into();
                }
                print_json(&output)?;
            } else if solved {
                print(&format!("solved: {}", answer(&exercise)))?;
            } else {
                let mut text = format!("not solved yet: {} of {} checks fail", failing.len(), tests.len());
                for (test, reason) in &failing {
                    text.push_str(&format!("\n  {test}: {reason}"));
                }
                print(&text)?;
            }
            if solved {
                Ok(())
            } else {
                Err(Failure { exit: Exit::Failure, error: anyhow!("the exercise is not solved yet") })
            }
        }
        Action::GiveUp => {
            let (exercise, restored) =
                if json { lab.give_up(&JsonLines::new())? } else { lab.give_up(&Terminal::new())? };
            if json {
                return print_json(&serde_json::json!({
                    "fault": exercise.fault,
                    "summary": exercise.summary,
                    "stage": exercise.stage.name(),
                    "seconds": restored.elapsed.as_secs_f64(),
                }));
            }
            print(&format!("restored. {}", answer(&exercise)))
        }
    }
}

/// What the exercise was: the fault, what it changed, and where to read about it.
fn answer(exercise: &Exercise) -> String {
    let fault = exercise.fault();
    let summary = exercise.summary.clone().unwrap_or_else(|| fault.summary.replace("{nodes}", "a node"));
    format!(
        "it was {} ({summary}), in chapter {}; `lab explain {}` tells that chapter and `lab faults` the others.",
        fault.name,
        exercise.stage.name(),
        exercise.stage.name()
    )
}

fn print(text: &str) -> Result<(), Failure> {
    crate::machine_verbs::print_stdout(text)
}

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    print(&serde_json::to_string(value).context("serialize the exercise")?)
}
