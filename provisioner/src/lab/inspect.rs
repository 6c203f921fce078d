//! `lab check` and `lab diff`: how the running lab stands against chapters of its plan,
//! node by node, without changing anything. A learner who builds a chapter by hand
//! (after `lab up --until` the chapter before) sees exactly what is missing: a file
//! absent or different from the plan, a mode or owner, a unit not running, a check
//! that does not pass.

use super::sessions::Sessions;
use super::{Lab, LabError};
use crate::executor::{Executor, NodeInspection};
use crate::machines;
use crate::plan::Stage;
use crate::topology::change::{self, TopologyChange};

/// One chapter's inspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageInspection {
    pub stage: Stage,
    pub nodes: Vec<NodeInspection>,
}

impl StageInspection {
    /// Whether every node matches the plan and passed every check that ran.
    pub fn passed(&self) -> bool {
        self.nodes.iter().all(NodeInspection::passed)
    }
}

/// What `lab up` would change on the running lab (`lab plan --diff`): the nodes the
/// topology adds or removes, and per chapter every existing node that differs from
/// the plan. Nothing is changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanDiff {
    /// The workers added and removed; `None` without a lab in the state directory.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Why `lab up` would refuse the edited topology, when it would.
    pub refused: Option<String>,
    /// The chapters with a node that differs from the plan (new nodes differ wholly
    /// and are not listed here).
    pub stages: Vec<StageInspection>,
}

impl PlanDiff {
    /// Whether `lab up` would change nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.refused.is_none() && self.stages.is_empty()
    }
}

impl Lab {
    /// `lab plan --diff`: this lab's topology (from its file) against what the state
    /// directory's lab is and what its running nodes hold.
    pub fn plan_diff(&self) -> Result<PlanDiff, LabError> {
        let Some(recorded) = machines::recorded_topology(&self.paths.state_dir)? else {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        };
        let (change, refused) = match change::change(&recorded, &self.topology) {
            Ok(change) => (change, None),
            Err(refused) => (TopologyChange::default(), Some(refused.to_string())),
        };
        let mut diff = PlanDiff { added: change.added, removed: change.removed, refused, stages: Vec::new() };
        if diff.refused.is_some() {
            return Ok(diff);
        }
        let plan = self.plan()?;
        let sessions = Sessions::open_existing(self)?;
        let executor =
            Executor::new(sessions.hosts.values().map(|host| host.as_ref())).with_timeout_scale(sessions.time_scale);
        for stage in &plan.stages {
            let mut planned = stage.clone();
            planned.nodes.retain(|actions| sessions.hosts.contains_key(&actions.node));
            let nodes = executor.inspect(&planned, false).map_err(|source| LabError::Inspect(Box::new(source)))?;
            let inspection = StageInspection { stage: stage.stage, nodes };
            if !inspection.passed() {
                diff.stages.push(StageInspection {
                    stage: inspection.stage,
                    nodes: inspection.nodes.into_iter().filter(|node| !node.passed()).collect(),
                });
            }
        }
        Ok(diff)
    }

    /// Inspects `stages` of the running lab (`lab check` with `run_checks`, `lab diff`
    /// without): each node the stage touches, or only `node`, compared with the plan,
    /// and each readiness check run once. Every node must run. A node that is not in
    /// the topology is the caller's mistake (`LabError::NoSuchNode`).
    pub fn inspect(
        &self,
        stages: &[Stage],
        node: Option<&str>,
        run_checks: bool,
    ) -> Result<Vec<StageInspection>, LabError> {
        if let Some(node) = node {
            self.require_node(node)?;
        }
        let plan = self.plan()?;
        let sessions = Sessions::open(self)?;
        let executor =
            Executor::new(sessions.hosts.values().map(|host| host.as_ref())).with_timeout_scale(sessions.time_scale);
        let mut inspections = Vec::new();
        for stage in plan.stages.iter().filter(|planned| stages.contains(&planned.stage)) {
            let mut planned = stage.clone();
            if let Some(node) = node {
                planned.nodes.retain(|actions| actions.node == node);
            }
            let nodes = executor.inspect(&planned, run_checks).map_err(|source| LabError::Inspect(Box::new(source)))?;
            inspections.push(StageInspection { stage: stage.stage, nodes });
        }
        Ok(inspections)
    }
}
