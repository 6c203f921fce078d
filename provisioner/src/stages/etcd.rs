//! Handbook 000 section 4: static etcd cluster with mutual TLS

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::Etcd, "Handbook 000 section 4: static etcd cluster with mutual TLS")
}
