//! Handbook 000 section 7.2 and 8.4: kube-controller-manager with leader election

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(
        Stage::KubeControllerManager,
        "Handbook 000 section 7.2 and 8.4: kube-controller-manager with leader election",
    )
}
