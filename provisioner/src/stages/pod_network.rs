//! Handbook 000 section 6: the pod network (flannel in the handbook)

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::PodNetwork, "Handbook 000 section 6: the pod network (flannel in the handbook)")
}
