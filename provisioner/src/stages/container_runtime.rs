//! Handbook 000 section 9: container runtime (docker in the handbook, containerd here)

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(
        Stage::ContainerRuntime,
        "Handbook 000 section 9: container runtime (docker in the handbook, containerd here)",
    )
}
