//! Handbook 000 section 7.3 and 8.4: kube-scheduler with leader election

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::KubeScheduler, "Handbook 000 section 7.3 and 8.4: kube-scheduler with leader election")
}
