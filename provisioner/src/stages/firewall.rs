//! Handbook 000 section 10.1: enable the firewall

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Firewall, "Handbook 000 section 10.1: enable the firewall")
}
