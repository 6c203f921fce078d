//! A node powered off in a running lab leaves the host's route for the service range
//! first, and a node powered on again takes Service traffic from the host only once its
//! kube-proxy serves it.
//!
//! The host routes the service range over every node running kube-proxy (`plan::build`),
//! and the kernel picks a multipath route's next hop from the addresses alone (the
//! default `fib_multipath_hash_policy`): every query from the host to the cluster DNS
//! takes the same node. A node that stopped is skipped once its ARP entry fails
//! (`machines::hostnet`), which takes seconds after its network went away; and a node
//! that boots answers ARP within a second or two, long before its kube-proxy has
//! written its rules. When it is the node the hash picks, every Service address fails
//! from the host meanwhile: the worker drill lost 2 s of cluster DNS queries (90%
//! answered) right after `lab up --until machines` started its worker again.
//!
//! So `lab down --node` takes the node out of the service route before it powers the
//! machine off, and `lab up` keeps it out while it starts the machine, waits until the
//! node answers for Services itself (the check the firewall stage uses,
//! `kube_proxy::serves_services`), and then puts the whole route back. A whole lab
//! starting at once has no node that serves yet: the route keeps them all, and the
//! proof of readiness waits for them.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::reporter::{Event, Reporter};
use super::{Lab, LabError};
use crate::host::Host;
use crate::machines::{MachineState, Machines};
use crate::plan::{HostRoute, NetworkPlan};
use crate::stages::kube_proxy;
use crate::topology::Node;

/// How long a node powered on again may take to serve Services, at the host's speed
/// (scaled by the backend's time scale): its boot, kube-proxy's start after firewalld
/// and its first sync.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two asks.
const INTERVAL: Duration = Duration::from_millis(500);

impl Lab {
    /// The nodes running kube-proxy whose machine is stopped, when another node running
    /// kube-proxy runs: those start again beside nodes that serve Services already.
    pub(super) fn rejoining(&self, machines: &dyn Machines) -> Vec<&Node> {
        let mut any_running = false;
        let mut stopped = Vec::new();
        for node in self.topology.nodes.iter().filter(|node| kube_proxy::runs_on(node)) {
            match machines.status(&node.name) {
                Ok(MachineState::Running) => any_running = true,
                Ok(MachineState::Stopped) => stopped.push(node),
                _ => {}
            }
        }
        if any_running {
            stopped
        } else {
            Vec::new()
        }
    }

    /// Routes the service range over the nodes running kube-proxy that stay up, before
    /// the machines of `leaving` power off. Best effort: the kernel skips a stopped
    /// node by itself once its ARP entry fails.
    pub(super) fn leave_service_route(&self, leaving: &[String], reporter: &dyn Reporter) {
        let leaving: Vec<&Node> = self.topology.nodes.iter().filter(|node| leaving.contains(&node.name)).collect();
        if !leaving.iter().any(|node| kube_proxy::runs_on(node)) {
            return;
        }
        let routed = self.plan().and_then(|plan| {
            let routes = routes_without(&plan.network, &leaving);
            self.machines()?.ensure_network(&routes)?;
            Ok(plan.network.service_cidr)
        });
        match routed {
            Ok(service_cidr) => {
                let names: Vec<&str> = leaving.iter().map(|node| node.name.as_str()).collect();
                reporter.report(Event::Progress(&format!(
                    "network: {service_cidr} no longer routed over {}, which powers off",
                    names.join(", ")
                )));
            }
            Err(error) => reporter.report(Event::Warning(&format!(
                "the service range is still routed over the nodes powering off ({error})"
            ))),
        }
    }

    /// Waits until each of `rejoining` serves Services, then routes the service range
    /// over every node again. A node that does not serve in time is routed to all the
    /// same, with a warning: the stages that follow (or the next `lab up`) repair it.
    pub(super) fn rejoin_service_route(
        &self,
        network: &NetworkPlan,
        machines: &dyn Machines,
        hosts: &[Box<dyn Host>],
        rejoining: &[&Node],
        reporter: &dyn Reporter,
    ) -> Result<(), LabError> {
        let started = Instant::now();
        let deadline = started + SERVING_TIMEOUT * machines.time_scale().max(1);
        let script = kube_proxy::serves_services(&self.topology.network);
        for node in rejoining {
            let Some(host) = hosts.iter().find(|host| host.name() == node.name) else { continue };
            if let Err(last) = wait_until_serving(host.as_ref(), &script, deadline) {
                reporter.report(Event::Warning(&format!(
                    "{} did not serve Services within {} s ({last}); routing the service range over it all the same",
                    node.name,
                    (deadline - started).as_secs()
                )));
            }
        }
        machines.ensure_network(&network.host_routes)?;
        let names: Vec<&str> = rejoining.iter().map(|node| node.name.as_str()).collect();
        reporter.report(Event::Progress(&format!(
            "network: {} serve{} Services: route {} over every node running kube-proxy again ({:.1} s)",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" },
            network.service_cidr,
            started.elapsed().as_secs_f64()
        )));
        Ok(())
    }
}

/// `network`'s host routes with the service range routed over every node but
/// `rejoining` (all of them when none would be left).
pub(super) fn routes_without(network: &NetworkPlan, rejoining: &[&Node]) -> Vec<HostRoute> {
    let leaving: Vec<Ipv4Addr> = rejoining.iter().map(|node| node.address).collect();
    network
        .host_routes
        .iter()
        .map(|route| {
            let kept: Vec<Ipv4Addr> = route.via.iter().copied().filter(|hop| !leaving.contains(hop)).collect();
            if route.destination == network.service_cidr && !kept.is_empty() {
                HostRoute { destination: route.destination, via: kept }
            } else {
                route.clone()
            }
        })
        .collect()
}

/// Runs `script` on `host` until it passes or `deadline` passes; the last failure.
fn wait_until_serving(host: &dyn Host, script: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let last = match host.run(script) {
            Ok(output) if output.success() => return Ok(()),
            Ok(output) => format!("exit {}", output.status),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(INTERVAL);
    }
}
