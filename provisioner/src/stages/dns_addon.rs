//! Handbook 000 section 10.3: the cluster DNS addon (kube-dns)

use crate::plan::{Context, Stage, StagePlan};

pub fn plan(context: &Context<'_>) -> StagePlan {
    let _ = context;
    StagePlan::new(Stage::DnsAddon, "Handbook 000 section 10.3: the cluster DNS addon (kube-dns)")
}
