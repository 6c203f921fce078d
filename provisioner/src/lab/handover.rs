//! A master powered off hands its leader leases over first.
//!
//! kube-controller-manager and kube-scheduler elect a leader through a Lease
//! (`stages::kube_controller_manager`). A 1.20 component that stops leaves the lease
//! naming it (client-go can release it on a clean stop, but neither component asks it
//! to), and another takes a lease that names a holder only once it has watched it
//! unrenewed for a whole lease duration, 15 s: a standby on a master that stays up, or,
//! after a whole-lab restart, the components of the same masters, which come back with
//! new identities. No controller runs and nothing is scheduled meanwhile, and `lab up`
//! after `lab down` spent those 15 s in its leader checks.
//!
//! So `lab down` stops both components on every master it powers off, and then clears
//! the holder of each lease that still names one of those masters: a standby takes it
//! at its next try (1 s), and after a whole-lab restart the first component to start
//! takes it at once. Best effort, like the cordon: with no API to ask, the machines
//! power off all the same, with a warning.

use std::time::Instant;

use super::cordon::run;
use super::reporter::{Event, Reporter};
use super::Lab;
use crate::host::Host;
use crate::machines::MachineState;
use crate::stages;
use crate::topology::Role;

impl Lab {
    /// Stops the leader-elected components on the running masters among `leaving` and
    /// clears the leases they held, through the first of them.
    pub(super) fn hand_over_leases(&self, leaving: &[String], reporter: &dyn Reporter) {
        let Ok(machines) = self.machines() else { return };
        let masters: Vec<&str> = self
            .topology
            .nodes_with(Role::Master)
            .filter(|master| leaving.contains(&master.name))
            .filter(|master| matches!(machines.status(&master.name), Ok(MachineState::Running)))
            .map(|master| master.name.as_str())
            .collect();
        if masters.is_empty() {
            return;
        }
        let started = Instant::now();
        let released = self.stop_and_release(&masters);
        match released {
            Ok(leases) if leases.is_empty() => reporter.report(Event::Progress(&format!(
                "{}: leader-elected components stopped; no leader lease named {} ({:.1} s)",
                masters.join(", "),
                if masters.len() == 1 { "it" } else { "them" },
                started.elapsed().as_secs_f64()
            ))),
            Ok(leases) => reporter.report(Event::Progress(&format!(
                "{}: leader-elected components stopped and the {} lease{} released, so that the next leader need \
                 not wait for {} to run out ({:.1} s)",
                masters.join(", "),
                leases.join(" and "),
                if leases.len() == 1 { "" } else { "s" },
                if leases.len() == 1 { "it" } else { "them" },
                started.elapsed().as_secs_f64()
            ))),
            Err(reason) => reporter.report(Event::Warning(&format!(
                "leader leases not released before {} power{} off ({reason}): the next leader takes over once they \
                 run out",
                masters.join(", "),
                if masters.len() == 1 { "s" } else { "" }
            ))),
        }
    }

    /// Stops the components on each of `masters`, then clears their leases; the
    /// leases cleared.
    fn stop_and_release(&self, masters: &[&str]) -> Result<Vec<String>, String> {
        let mut first: Option<Box<dyn Host>> = None;
        for name in masters {
            let node = self.topology.node(name).ok_or_else(|| format!("no node {name}"))?;
            let session = self.session_on(node)?;
            run(session.as_ref(), &stages::stop_leader_elected())?;
            first.get_or_insert(session);
        }
        let first = first.ok_or_else(|| "no master to release the leases through".to_string())?;
        let released = run(first.as_ref(), &stages::release_leases(masters))?;
        Ok(released.split_whitespace().map(str::to_string).collect())
    }
}
