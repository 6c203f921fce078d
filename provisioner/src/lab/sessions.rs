//! One SSH session per running node of a lab, opened once for all of a verb's scripts
//! (`lab break`, `lab restore`, `lab check`, `lab diff`), after the host's routes have
//! shown that every node's address leads to the lab bridge.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::probes::existing_key_pair;
use super::{Lab, LabError};
use crate::host::Host;
use crate::machines::MachineState;
use crate::plan;
use crate::ssh::KeyPair;
use crate::topology::Node;

/// One connection attempt to a node, on machines at the host's speed.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What opening sessions does about a node of the topology that has no machine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MissingMachine {
    /// Every node must run (a verb about the whole lab).
    IsAnError,
    /// The node is new in an edited topology and simply has nothing to connect to yet.
    IsLeftOut,
}

pub(super) struct Sessions {
    pub(super) hosts: BTreeMap<String, Box<dyn Host>>,
    /// How much slower than the host the machines run (`Machines::time_scale`).
    pub(super) time_scale: u32,
}

impl Sessions {
    /// Connects to every node; every node must run.
    pub(super) fn open(lab: &Lab) -> Result<Sessions, LabError> {
        Sessions::open_some(lab, MissingMachine::IsAnError)
    }

    /// Connects to every node that has a machine; a node without one (new in the
    /// topology) is left out. Every node that has a machine must run.
    pub(super) fn open_existing(lab: &Lab) -> Result<Sessions, LabError> {
        Sessions::open_some(lab, MissingMachine::IsLeftOut)
    }

    fn open_some(lab: &Lab, missing: MissingMachine) -> Result<Sessions, LabError> {
        let machines = lab.machines()?;
        let time_scale = machines.time_scale().max(1);
        let bridge = plan::bridge_name(&lab.topology.name);
        let mut addresses: Vec<(String, Ipv4Addr)> = Vec::new();
        for node in &lab.topology.nodes {
            let state = machines.status(&node.name)?;
            if missing == MissingMachine::IsLeftOut && state == MachineState::Missing {
                continue;
            }
            if state != MachineState::Running {
                return Err(LabError::NodeNotRunning { node: node.name.clone(), state });
            }
            addresses.push((node.name.clone(), node.address));
        }
        // Nothing is sent to a lab address unless the kernel sends it to the lab bridge.
        let only: Vec<Ipv4Addr> = addresses.iter().map(|(_, address)| *address).collect();
        lab.surroundings.verify_routes(&bridge, &only).map_err(|reason| LabError::NotRouted { reason })?;
        let key: KeyPair = existing_key_pair(&lab.state.ssh_private_key())
            .map_err(|_| LabError::NoKey { path: lab.state.ssh_private_key() })?;
        let hosts = std::thread::scope(|scope| {
            let handles: Vec<_> = addresses
                .iter()
                .map(|(name, address)| {
                    let key = &key;
                    scope.spawn(move || {
                        lab.surroundings
                            .connect(name, *address, key, CONNECT_TIMEOUT * time_scale)
                            .map(|host| (name.clone(), host))
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("connect worker panicked")).collect::<Result<_, _>>()
        })?;
        Ok(Sessions { hosts, time_scale })
    }
}

impl Lab {
    /// One session on `node`, for a verb that asks a node or two while others power off
    /// or on (`lab down --node`, `lab up`'s start of stopped machines).
    pub(super) fn session_on(&self, node: &Node) -> Result<Box<dyn Host>, String> {
        // Nothing is sent to a lab address unless the kernel sends it to the lab bridge.
        self.surroundings.verify_routes(&plan::bridge_name(&self.topology.name), &[node.address])?;
        let key = existing_key_pair(&self.state.ssh_private_key())
            .map_err(|_| format!("no SSH key at {}", self.state.ssh_private_key().display()))?;
        self.surroundings.connect(&node.name, node.address, &key, CONNECT_TIMEOUT).map_err(|error| error.to_string())
    }
}
