//! Handbook 000 section 2: environment variables and /etc/hosts

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Hosts, "Handbook 000 section 2: environment variables and /etc/hosts")
}
