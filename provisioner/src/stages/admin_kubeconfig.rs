//! Handbook 000 section 5: kubectl and the admin kubeconfig

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::AdminKubeconfig, "Handbook 000 section 5: kubectl and the admin kubeconfig")
}
