//! Handbook 000 section 9: kube-proxy on every worker

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::KubeProxy, "Handbook 000 section 9: kube-proxy on every worker")
}
