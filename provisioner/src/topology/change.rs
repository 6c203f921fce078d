//! What changes when the topology of a lab that exists is edited: the workers added
//! and removed, and the edits `lab up` refuses because they would change the control
//! plane's membership or the addresses and ranges the running machines were made
//! with. Pure: two topologies in, the change or every reason it is refused out.

use super::{Role, Topology};

/// The nodes an edited topology adds to or removes from the lab it was recorded for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyChange {
    /// Workers the edited topology has and the recorded one does not.
    pub added: Vec<String>,
    /// Workers the recorded topology has and the edited one does not.
    pub removed: Vec<String>,
}

impl TopologyChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Why an edited topology cannot be applied to the running lab: every reason found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the topology changed in a way `lab up` does not apply to an existing lab: {}; nothing was changed \
     (`lab destroy` then `lab up` builds the lab anew from the edited topology)",
    .reasons.join("; ")
)]
pub struct ChangeRefused {
    pub reasons: Vec<String>,
}

/// The change from `recorded` (what the lab was made from) to `edited`, or every
/// reason it is refused. Workers may come and go; etcd members, masters and load
/// balancers, every node's address and roles, and the network stay as they are.
pub fn change(recorded: &Topology, edited: &Topology) -> Result<TopologyChange, ChangeRefused> {
    let mut reasons = Vec::new();
    if recorded.network != edited.network {
        reasons.push("[network] changed: a running lab keeps its addresses and ranges".to_string());
    }
    let mut change = TopologyChange::default();
    let only_worker = |roles: &[Role]| roles.iter().all(|role| *role == Role::Worker);
    let roles = |roles: &[Role]| roles.iter().map(|role| role.to_string()).collect::<Vec<_>>().join(", ");
    for old in &recorded.nodes {
        match edited.nodes.iter().find(|node| node.name == old.name) {
            None if only_worker(&old.roles) => change.removed.push(old.name.clone()),
            None => reasons.push(format!(
                "{} ({}) was removed: the control plane's membership does not change under a running lab",
                old.name,
                roles(&old.roles)
            )),
            Some(new) => {
                if new.address != old.address {
                    reasons.push(format!(
                        "{}'s address changed from {} to {}: a node keeps its address (a worker may be removed and \
                         another added under a new name)",
                        old.name, old.address, new.address
                    ));
                }
                if new.roles != old.roles {
                    reasons.push(format!(
                        "{}'s roles changed from [{}] to [{}]: a node keeps its roles",
                        old.name,
                        roles(&old.roles),
                        roles(&new.roles)
                    ));
                }
            }
        }
    }
    // Each worker's pod range follows the workers' order (`plan::pod_cidrs`), and a
    // Node's pod range never changes once the API has it.
    let (before, after) = (crate::plan::pod_cidrs(recorded), crate::plan::pod_cidrs(edited));
    for (worker, range) in &before {
        if let Some(moved) = after.get(worker).filter(|moved| *moved != range) {
            reasons.push(format!(
                "{worker}'s pod range would move from {range} to {moved}: the ranges follow the workers' order, so \
                 workers are added after the others and only the last ones removed"
            ));
        }
    }
    for new in &edited.nodes {
        if recorded.nodes.iter().any(|node| node.name == new.name) {
            continue;
        }
        if only_worker(&new.roles) {
            change.added.push(new.name.clone());
        } else {
            reasons.push(format!(
                "{} ({}) was added: the control plane's membership does not change under a running lab",
                new.name,
                roles(&new.roles)
            ));
        }
    }
    if reasons.is_empty() {
        Ok(change)
    } else {
        Err(ChangeRefused { reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::test_support::topology;
    use crate::topology::Node;

    /// The minimal example (master1 with etcd, master and lb; worker1), with
    /// `workers` more workers after worker1.
    fn lab(workers: usize) -> Topology {
        let mut lab = topology("examples/minimal.toml");
        for number in 2..workers + 2 {
            lab.nodes.push(Node {
                name: format!("worker{number}"),
                address: format!("10.242.0.{}", 20 + number).parse().unwrap(),
                roles: vec![Role::Worker],
                aliases: Vec::new(),
                resources: None,
            });
        }
        lab
    }

    #[test]
    fn a_worker_may_be_added_and_removed() {
        let added = change(&lab(0), &lab(1)).expect("a worker may be added");
        assert_eq!(added, TopologyChange { added: vec!["worker2".into()], removed: vec![] });
        let removed = change(&lab(1), &lab(0)).expect("a worker may be removed");
        assert_eq!(removed, TopologyChange { added: vec![], removed: vec!["worker2".into()] });
        assert!(change(&lab(1), &lab(1)).expect("no change").is_empty());
    }

    #[test]
    fn control_plane_address_role_order_and_network_changes_are_refused_with_every_reason() {
        let recorded = lab(0);
        let mut edited = lab(0);
        edited.nodes.push(Node { name: "master2".into(), roles: vec![Role::Master], ..edited.nodes[0].clone() });
        edited.nodes[2].address = "10.242.0.12".parse().unwrap();
        edited.nodes[0].address = "10.242.0.13".parse().unwrap();
        edited.nodes[1].roles.push(Role::Lb);
        edited.network.cluster_domain = "lab.local".into();
        let message = change(&recorded, &edited).expect_err("refused").to_string();
        for needle in [
            "[network] changed",
            "master1's address changed from 10.242.0.11 to 10.242.0.13",
            "worker1's roles changed from [worker] to [worker, lb]",
            "master2 (master) was added",
            "nothing was changed",
        ] {
            assert!(message.contains(needle), "{needle:?} missing from: {message}");
        }
        let mut first_worker_gone = lab(1);
        first_worker_gone.nodes.remove(1);
        let refused = change(&lab(1), &first_worker_gone).expect_err("refused").to_string();
        assert!(refused.contains("worker2's pod range would move from 10.202.1.0/24 to 10.202.0.0/24"), "{refused}");
        let mut without_master = lab(0);
        without_master.nodes.remove(0);
        let refused = change(&recorded, &without_master).expect_err("refused").to_string();
        assert!(refused.contains("master1 (etcd, master, lb) was removed"), "{refused}");
    }
}
