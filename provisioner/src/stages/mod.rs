//! One module per handbook chapter, in the order `lab up` runs them. Each module's
//! `plan` reads the shared `Context` and returns that chapter's files, units,
//! commands and readiness checks per node. Pure: no module here does I/O.

use crate::plan::{Context, StagePlan};

pub mod admin_kubeconfig;
pub mod container_runtime;
pub mod dns_addon;
pub mod etcd;
pub mod firewall;
pub mod hosts;
pub mod keepalived;
pub mod kube_apiserver;
pub mod kube_controller_manager;
pub mod kube_proxy;
pub mod kube_scheduler;
pub mod kubelet;
pub mod load_balancer;
pub mod pki;
pub mod pod_network;

/// Every stage's plan, in handbook order.
pub fn plan_all(context: &Context<'_>) -> Vec<StagePlan> {
    vec![
        hosts::plan(context),
        pki::plan(context),
        etcd::plan(context),
        admin_kubeconfig::plan(context),
        pod_network::plan(context),
        kube_apiserver::plan(context),
        kube_controller_manager::plan(context),
        kube_scheduler::plan(context),
        load_balancer::plan(context),
        keepalived::plan(context),
        container_runtime::plan(context),
        kubelet::plan(context),
        kube_proxy::plan(context),
        dns_addon::plan(context),
        firewall::plan(context),
    ]
}
