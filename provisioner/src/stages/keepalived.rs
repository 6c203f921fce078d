//! Handbook 000 section 8.2: keepalived and the virtual IP

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Keepalived, "Handbook 000 section 8.2: keepalived and the virtual IP")
}
