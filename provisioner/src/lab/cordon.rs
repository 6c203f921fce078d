//! The Kubernetes side of taking a worker's machine out of a running lab and putting it
//! back: `lab down --node` cordons the worker before it powers the machine off, and
//! `lab up` uncordons it once the machine runs again.
//!
//! The machine itself powers off as its power button would have it, and its kubelet
//! takes its pods out of their Services before they stop (graceful node shutdown,
//! `stages::kubelet`). What a 1.20 kubelet does not do is keep new pods off its node
//! meanwhile: it reports the node NotReady only at its next status update, and the
//! replacements of the pods it stopped may be scheduled onto the node that is going
//! away. Kubernetes 1.21's kubelet refuses them itself; here the cordon does.
//!
//! Both are best effort: with no API to ask, the machine is powered off or on all the
//! same, with a warning, and the kubelet stage's check finds a worker left cordoned.

use std::time::Instant;

use super::reporter::{Event, Reporter};
use super::Lab;
use crate::host::Host;
use crate::machines::MachineState;
use crate::stages::kubelet;
use crate::text;
use crate::topology::Role;

impl Lab {
    /// Cordons the workers among `leaving` through the first master that stays up.
    pub(super) fn cordon_for_power_off(&self, leaving: &[String], reporter: &dyn Reporter) {
        let workers: Vec<&str> = self
            .topology
            .nodes_with(Role::Worker)
            .filter(|worker| leaving.contains(&worker.name))
            .map(|worker| worker.name.as_str())
            .collect();
        if workers.is_empty() {
            return;
        }
        let started = Instant::now();
        let cordoned = self
            .staying_master(leaving)
            .and_then(|master| run(master.as_ref(), &kubelet::cordon_for_power_off(&workers)).map(drop));
        match cordoned {
            Ok(()) => reporter.report(Event::Progress(&format!(
                "{} cordoned, so that no pod is scheduled there while it powers off ({:.1} s)",
                workers.join(", "),
                started.elapsed().as_secs_f64()
            ))),
            Err(reason) => reporter.report(Event::Warning(&format!(
                "{} not cordoned before the power-off ({reason}): pods may be scheduled there while it shuts down",
                workers.join(", ")
            ))),
        }
    }

    /// Uncordons the workers that `lab down --node` cordoned, through the first master
    /// of `hosts` (sessions on every node, the machines just started). With no API to
    /// ask yet (every master is starting too), `warn` says whether to say so: a whole
    /// `lab up` leaves it to the kubelet stage.
    pub(super) fn uncordon_powered_on(&self, hosts: &[Box<dyn Host>], warn: bool, reporter: &dyn Reporter) {
        let first_master = self.topology.nodes_with(Role::Master).next();
        let Some(master) = first_master.and_then(|master| hosts.iter().find(|host| host.name() == master.name)) else {
            return;
        };
        if let Err(reason) = run(master.as_ref(), &kubelet::uncordon_after_power_on()) {
            if warn {
                reporter.report(Event::Warning(&format!(
                    "cannot ask the API yet whether `lab down --node` left workers cordoned ({reason}); `lab up` \
                     uncordons any"
                )));
            }
        }
    }

    /// A session on the first master whose machine runs and is not among `leaving`.
    fn staying_master(&self, leaving: &[String]) -> Result<Box<dyn Host>, String> {
        let machines = self.machines().map_err(|error| error.to_string())?;
        let master = self
            .topology
            .nodes_with(Role::Master)
            .filter(|master| !leaving.contains(&master.name))
            .find(|master| matches!(machines.status(&master.name), Ok(MachineState::Running)))
            .ok_or_else(|| "no master runs to ask the API".to_string())?;
        self.session_on(master)
    }
}

/// Runs `script` on `host`: what it printed, or its output when it fails.
pub(super) fn run(host: &dyn Host, script: &str) -> Result<String, String> {
    let output = host.run(script).map_err(|error| error.to_string())?;
    if output.success() {
        Ok(output.stdout)
    } else {
        let said = if output.stderr.trim().is_empty() { &output.stdout } else { &output.stderr };
        Err(format!("on {}: exit {}: {}", host.name(), output.status, text::one_line_tail(said.lines(), 3)))
    }
}
