//! `lab check` and `lab diff`: how the running lab stands against chapters of its plan,
//! node by node, without changing anything. A learner who builds a chapter by hand
//! (after `lab up --until` the chapter before) sees exactly what is missing: a file
//! absent or different from the plan, a mode or owner, a unit not running, a check
//! that does not pass.

use super::sessions::Sessions;
use super::{Lab, LabError};
use crate::executor::{Executor, NodeInspection};
use crate::plan::Stage;

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

impl Lab {
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
