//! Handbook 000 section 3: certificates (CFSSL in the handbook, rcgen here)

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Pki, "Handbook 000 section 3: certificates (CFSSL in the handbook, rcgen here)")
}
