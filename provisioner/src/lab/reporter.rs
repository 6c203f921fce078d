//! How a `Lab` tells its caller what it is doing. The library never prints: the
//! CLI turns these events into spinners, plain lines or JSON.

use std::time::Duration;

use crate::executor::StageReport;
use crate::plan::Stage;
use crate::readiness::Steady;

/// One thing a lab verb did or is doing.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step of the lab as a whole: `preflight: ...`, `image: ...`, `network: ...`,
    /// `master1: created and started ...`. One line of text.
    Progress(&'a str),
    /// Something the user should know that does not stop the verb.
    Warning(&'a str),
    /// A stage starts: the `number`th of `total` this run goes through.
    StageStarted {
        number: usize,
        total: usize,
        stage: Stage,
    },
    /// A step on a node within the running stage, e.g. `writing 3 files`.
    Step {
        stage: Stage,
        node: &'a str,
        step: &'a str,
    },
    /// The running stage passed its checks.
    StageDone {
        report: &'a StageReport,
    },
    /// The running stage failed after `elapsed`.
    StageFailed {
        stage: Stage,
        elapsed: Duration,
    },
    /// The lab matched its plan: every stage's checks run at once, nothing else.
    ChecksStarted,
    ChecksDone {
        stages: usize,
        elapsed: Duration,
    },
    ChecksFailed,
    /// The host-side proof that the cluster serves starts: `streak` rounds in a row.
    ReadinessStarted {
        streak: u32,
    },
    ReadinessDone {
        steady: &'a Steady,
    },
}

/// What `lab up --step` does at its pause before a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Run the stage.
    Run,
    /// Stop before it, with the lab as the stages before it left it: converged so far.
    Stop,
}

/// Receives a lab verb's events, from any of its threads, and decides at the pauses
/// of `lab up --step`.
pub trait Reporter: Sync {
    fn report(&self, event: Event<'_>);

    /// Asked before each stage when `lab up` runs with `UpOptions::step`, once the
    /// stages before it passed their checks. The default runs every stage.
    fn pause(&self, _stage: Stage) -> Resume {
        Resume::Run
    }
}

/// A reporter that drops every event (tests, and callers that want only the result).
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _event: Event<'_>) {}
}

/// The executor's per-step progress, passed on as `Event::Step`.
pub(super) struct Steps<'a>(pub &'a dyn Reporter);

impl crate::executor::Progress for Steps<'_> {
    fn step(&self, stage: Stage, node: &str, step: &str) {
        self.0.report(Event::Step { stage, node, step });
    }
}
