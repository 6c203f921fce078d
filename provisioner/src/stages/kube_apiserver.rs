//! Handbook 000 section 7.1 and 8.3: kube-apiserver on every master

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::KubeApiserver, "Handbook 000 section 7.1 and 8.3: kube-apiserver on every master")
}
