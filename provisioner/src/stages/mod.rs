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

/// The leader election timing of the controller manager and the scheduler, in
/// seconds: how long a leader's lease lasts, how long the leader keeps trying to renew
/// it, and how often the others try to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderElection {
    pub lease_duration: u32,
    pub renew_deadline: u32,
    pub retry_period: u32,
}

impl LeaderElection {
    /// Kubernetes' defaults (15 s, 10 s, 2 s) where the machines run at the host's
    /// speed, which the plan leaves unwritten; 120 s, 90 s and 10 s where they may run
    /// under software emulation. A renewal is one API request, a loaded apiserver in a
    /// TCG guest can take longer than 10 s to answer it, and a leader that misses its
    /// deadline exits: the controller manager would restart again and again, loading
    /// the apiserver further, and never get its work done. A 40 s deadline was not
    /// enough: a TCG controller under the lab's own readiness checks stalled its
    /// apiserver for over 40 s, and both leaders exited at once.
    pub fn for_topology(topology: &crate::topology::Topology) -> Option<LeaderElection> {
        topology.machines.may_be_emulated().then_some(LeaderElection {
            lease_duration: 120,
            renew_deadline: 90,
            retry_period: 10,
        })
    }
}

/// What differs between the lab's daemon units; everything else is shared.
pub struct ServiceUnit<'a> {
    pub description: &'a str,
    pub documentation: &'a str,
    /// `Type=notify` for daemons that tell systemd when they are ready.
    pub notify: bool,
    /// Absolute path of the binary.
    pub command: &'a str,
    /// `--flag=value` arguments, one per line in the unit for readability.
    pub flags: &'a [String],
}

/// A systemd service for one of the lab's long-running daemons (etcd and the control
/// plane components): started once the network is up, restarted five seconds after a
/// crash, and enabled at boot, so that a node restart or `lab down` + `lab up` brings
/// the component back on its own.
pub fn service_unit(unit: &ServiceUnit<'_>) -> String {
    let mut exec_start = unit.command.to_string();
    for flag in unit.flags {
        exec_start.push_str(" \\\n  ");
        exec_start.push_str(flag);
    }
    let service_type = if unit.notify { "notify" } else { "simple" };
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description={description}
Documentation={documentation}
Wants=network-online.target
After=network-online.target

[Service]
Type={service_type}
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# Every client watch is an open connection.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
        description = unit.description,
        documentation = unit.documentation,
    )
}
