//! Handbook 000 section 9.1: kubelet on every worker

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Kubelet, "Handbook 000 section 9.1: kubelet on every worker")
}
