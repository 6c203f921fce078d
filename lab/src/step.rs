//! `lab up --step`: the lab built one handbook chapter at a time. Before each stage it
//! shows what the chapter is about and what it will do (the summary of `lab explain
//! STAGE`) and waits: Enter runs the stage, `s` runs it and the rest without pausing,
//! `q` stops there with the lab converged so far. After each stage it shows what
//! changed on which node and the checks that proved it. Everything else is `lab up`'s
//! own progress, drawn by the terminal reporter this one wraps.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use provisioner::executor::StageReport;
use provisioner::explain::{Block, Chapter};
use provisioner::lab::{Event, Reporter, Resume};
use provisioner::plan::Stage;

use crate::explain_verb::fill;
use crate::terminal::Terminal;

/// The terminal reporter of `lab up`, pausing before each stage.
pub struct Stepper<Input> {
    terminal: Terminal,
    chapters: Vec<Chapter>,
    /// Cleared by `s`: the remaining stages run without pausing.
    pausing: AtomicBool,
    input: Mutex<Input>,
}

impl<Input: BufRead + Send> Stepper<Input> {
    /// A stepper through `chapters` (the plan's, from `explain::chapters`) that reads
    /// the learner's answers from `input`.
    pub fn new(chapters: Vec<Chapter>, input: Input) -> Self {
        Stepper { terminal: Terminal::new(), chapters, pausing: AtomicBool::new(true), input: Mutex::new(input) }
    }

    fn chapter(&self, stage: Stage) -> Option<&Chapter> {
        self.chapters.iter().find(|chapter| chapter.stage == stage)
    }
}

impl<Input: BufRead + Send> Reporter for Stepper<Input> {
    fn report(&self, event: Event<'_>) {
        let done = match &event {
            Event::StageDone { report } => Some(*report),
            _ => None,
        };
        self.terminal.report(event);
        if let Some(report) = done {
            eprint!("{}", after_stage(report, self.chapter(report.stage)));
        }
    }

    fn pause(&self, stage: Stage) -> Resume {
        if !self.pausing.load(Ordering::Relaxed) {
            return Resume::Run;
        }
        if let Some(chapter) = self.chapter(stage) {
            eprint!("{}", before_stage(chapter, self.chapters.len()));
        }
        loop {
            eprint!("[Enter] run it   s: run it and the rest without pausing   q: stop here > ");
            let mut answer = String::new();
            // A closed input (Ctrl-D) stops as `q` does: nobody is left to answer.
            match self.input.lock().expect("input lock").read_line(&mut answer) {
                Ok(0) | Err(_) => {
                    eprintln!();
                    return Resume::Stop;
                }
                Ok(_) => {}
            }
            match answer.trim() {
                "" => return Resume::Run,
                "s" => {
                    self.pausing.store(false, Ordering::Relaxed);
                    return Resume::Run;
                }
                "q" => return Resume::Stop,
                other => eprintln!("{other:?}: answer with Enter, s or q"),
            }
        }
    }
}

/// What the learner reads before a stage: its number, name and handbook section, the
/// first paragraph of what it sets up and why, and what it does on which nodes.
fn before_stage(chapter: &Chapter, total: usize) -> String {
    use std::fmt::Write as _;
    let mut text = format!("\n== stage {} of {total}: {} ==\n", chapter.number, chapter.stage.name());
    let _ = writeln!(text, "{}", fill(chapter.handbook_section, "", ""));
    if let Some(Block::Paragraph(first) | Block::ListItem(first)) = chapter.about.first() {
        let _ = writeln!(text, "\n{}", fill(first, "", ""));
    }
    text.push('\n');
    for work in &chapter.nodes {
        let mut parts = Vec::new();
        if !work.files.is_empty() {
            parts.push(count(work.files.len(), "file"));
        }
        if !work.units.is_empty() {
            let units: Vec<&str> = work.units.iter().map(|unit| unit.name.as_str()).collect();
            parts.push(format!("{} {}", if units.len() == 1 { "unit" } else { "units" }, units.join(", ")));
        }
        if !work.commands.is_empty() {
            parts.push(count(work.commands.len(), "command"));
        }
        if !work.checks.is_empty() {
            parts.push(count(work.checks.len(), "check"));
        }
        let _ = writeln!(text, "{}", fill(&format!("{}: {}", work.node, parts.join(", ")), "  ", "    "));
    }
    let _ = writeln!(text, "`lab explain {}` tells the whole chapter.", chapter.stage.name());
    text
}

/// What the learner reads after a stage: what changed on each node, and the checks
/// that passed.
fn after_stage(report: &StageReport, chapter: Option<&Chapter>) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for node in &report.nodes {
        if node.changed_files.is_empty()
            && node.changed_units.is_empty()
            && node.removed_files.is_empty()
            && node.disabled_units.is_empty()
        {
            continue;
        }
        let mut parts = Vec::new();
        if !node.changed_files.is_empty() {
            parts.push(format!("wrote {}", node.changed_files.join(", ")));
        }
        if !node.changed_units.is_empty() {
            parts.push(format!("(re)started {}", node.changed_units.join(", ")));
        }
        if !node.disabled_units.is_empty() {
            parts.push(format!("stopped and disabled {} (no longer planned)", node.disabled_units.join(", ")));
        }
        if !node.removed_files.is_empty() {
            parts.push(format!("removed {} (no longer planned)", node.removed_files.join(", ")));
        }
        let _ = writeln!(text, "{}", fill(&format!("{}: {}", node.node, parts.join("; ")), "  ", "    "));
    }
    if text.is_empty() {
        text.push_str("  nothing changed: every node already matched the plan\n");
    }
    let mut checks: Vec<&str> = chapter
        .into_iter()
        .flat_map(|chapter| chapter.nodes.iter())
        .flat_map(|work| work.checks.iter().map(|check| check.description.as_str()))
        .collect();
    checks.sort_unstable();
    checks.dedup();
    if !checks.is_empty() {
        text.push_str("  checks passed:\n");
        for check in checks {
            let _ = writeln!(text, "{}", fill(check, "    - ", "      "));
        }
    }
    text
}

fn count(number: usize, what: &str) -> String {
    format!("{number} {what}{}", if number == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use provisioner::executor::NodeReport;
    use provisioner::explain::{CheckLine, FileLine, NodeWork, UnitLine};

    use super::*;

    fn chapter() -> Chapter {
        Chapter {
            number: 3,
            stage: Stage::Etcd,
            handbook_section: "Handbook 000 section 4: etcd",
            about: vec![Block::Paragraph("Three members that trust one another.".into())],
            nodes: vec![NodeWork {
                node: "master1".into(),
                files: vec![FileLine {
                    path: "/etc/etcd/etcd.env".into(),
                    mode: "0644".into(),
                    owner: "root".into(),
                    secret: false,
                }],
                units: vec![UnitLine { name: "etcd.service".into(), restart_when_changed: Vec::new() }],
                commands: Vec::new(),
                checks: vec![CheckLine {
                    description: "the member is healthy".into(),
                    script: "etcdctl endpoint health".into(),
                    timeout_secs: 30,
                }],
            }],
            faults: Vec::new(),
        }
    }

    #[test]
    fn the_pause_before_a_stage_tells_the_chapter_in_short() {
        let text = before_stage(&chapter(), 15);
        assert!(text.contains("== stage 3 of 15: etcd =="), "{text}");
        assert!(text.contains("Handbook 000 section 4: etcd"), "{text}");
        assert!(text.contains("Three members that trust one another."), "{text}");
        assert!(text.contains("  master1: 1 file, unit etcd.service, 1 check"), "{text}");
        assert!(text.contains("`lab explain etcd`"), "{text}");
    }

    #[test]
    fn after_a_stage_it_shows_what_changed_and_the_checks_that_passed() {
        let report = StageReport {
            stage: Stage::Etcd,
            nodes: vec![
                NodeReport {
                    node: "master1".into(),
                    changed_files: vec!["/etc/etcd/etcd.env".into()],
                    changed_units: vec!["etcd.service".into()],
                    removed_files: vec!["/etc/etcd/old.env".into()],
                    ..NodeReport::default()
                },
                NodeReport { node: "master2".into(), ..NodeReport::default() },
            ],
            changed_local_files: Vec::new(),
            elapsed: Duration::from_secs(3),
        };
        let text = after_stage(&report, Some(&chapter()));
        assert!(text.contains("master1: wrote /etc/etcd/etcd.env; (re)started etcd.service; removed\n"), "{text}");
        assert!(text.contains("    /etc/etcd/old.env (no longer planned)"), "{text}");
        assert!(!text.contains("master2"), "{text}");
        assert!(text.contains("checks passed:\n    - the member is healthy"), "{text}");
        let unchanged = StageReport { nodes: vec![NodeReport::default()], ..report };
        assert!(after_stage(&unchanged, None).contains("nothing changed"));
    }

    #[test]
    fn enter_runs_s_runs_the_rest_q_and_a_closed_input_stop() {
        let stepper = Stepper::new(vec![chapter()], &b"\nwhat\ns\n"[..]);
        assert_eq!(stepper.pause(Stage::Etcd), Resume::Run, "Enter");
        assert_eq!(stepper.pause(Stage::Etcd), Resume::Run, "an unknown answer asks again, then s");
        assert_eq!(stepper.pause(Stage::Etcd), Resume::Run, "no more pauses after s");
        assert_eq!(Stepper::new(Vec::new(), &b"q\n"[..]).pause(Stage::Etcd), Resume::Stop);
        assert_eq!(Stepper::new(Vec::new(), &b""[..]).pause(Stage::Etcd), Resume::Stop, "Ctrl-D");
    }
}
