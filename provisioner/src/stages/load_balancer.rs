//! Handbook 000 section 8.1.1: HAProxy on every master

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::LoadBalancer, "Handbook 000 section 8.1.1: HAProxy on every master")
}
