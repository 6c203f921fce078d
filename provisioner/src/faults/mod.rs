//! The fault catalogue: what can be broken in a lab on purpose, one property at a
//! time, and which conformance tests must turn red while it is. It serves three users:
//! `lab break`/`lab restore` (a learner or a developer breaks one thing and puts it
//! back), the CI proof that every conformance test can fail for the property it names
//! (`cargo run -p conformance --bin fault-proof`), and the exercises of the learning
//! sandbox.
//!
//! Everything here is pure: a fault is data plus functions from the topology to shell
//! scripts; `lab::faults` runs them over the lab's SSH sessions. A fault's restore is
//! its `undo` (for what it changed outside the plan: an etcd member, a route, a
//! runtime firewall rule, a scaled Deployment) followed by `lab up`, which finds every
//! planned file, mode and unit the fault changed and converges them back, then proves
//! the cluster serves.

mod catalogue;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use catalogue::CATALOGUE;

use crate::plan::{self, Stage};
use crate::topology::{Node, Role, Topology};

/// One fault of the catalogue.
pub struct Fault {
    /// The name `lab break` takes, in kebab case.
    pub name: &'static str,
    /// The handbook chapter whose work the fault undoes.
    pub stage: Stage,
    /// Which nodes the fault is injected on.
    pub scope: Scope,
    /// What is wrong, for a learner: `{nodes}` is replaced by the nodes it is on.
    pub summary: &'static str,
    /// What a user of the cluster notices, without naming the cause.
    pub symptom: &'static str,
    /// The conformance tests that must fail while the fault is in force, as
    /// `BINARY::TEST` (nextest's binary name and the test function).
    pub breaks: &'static [&'static str],
    /// Whether the CI proof may break it while other faults are in force.
    pub proof: Proof,
    /// The scripts that inject the fault, run in order on their nodes.
    inject: fn(&FaultContext, &[&Node]) -> Vec<Step>,
    /// What `lab up` cannot see and so cannot put back, undone before it runs.
    undo: fn(&FaultContext, &[&Node]) -> Vec<Step>,
    /// Conditions that hold once the fault is in force (a lease ran out, a node turned
    /// NotReady), each polled on its node until it holds; `lab break` returns then, so
    /// that the tests that follow see the fault and not the moment of its injection.
    in_force: fn(&FaultContext, &[&Node]) -> Vec<Step>,
    /// Conditions that hold once the lab has recovered after `lab up` converged it (a
    /// new leader took the lease, the node is Ready again), polled like `in_force`:
    /// `lab restore` returns only then.
    healed: fn(&FaultContext, &[&Node]) -> Vec<Step>,
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The nodes a fault is injected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One node with the role: `--node` picks it, else `default`. `needs` nodes with
    /// the role must exist (a pod route needs another worker to lead to).
    One { role: Role, default: DefaultNode, needs: usize },
    /// Every node with the role.
    Every { role: Role },
    /// Every node with the role but the first: with three etcd members, two stopped
    /// take the quorum.
    AllButFirst { role: Role, needs: usize },
    /// The cluster as a whole, through the tools on the first node with the role
    /// (kubectl with the admin kubeconfig on the first master, etcdctl on the first
    /// etcd member).
    Cluster { via: Role, needs: usize },
}

/// How the CI proof (`fault-proof`) may break a fault. A fault is proven when its tests
/// fail while it is in force, having passed just before with everything else as it
/// was, and pass again after the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proof {
    /// With no other fault in force: it disturbs more than the property its tests
    /// check (a stopped service, a lost quorum, a member more or a leader moved), or its
    /// tests are failover drills, which stop parts of the lab themselves.
    Alone,
    /// While the faults proven before it are still in force, once its tests have been
    /// seen to pass with them in force: it changes one setting, mode, file or port that
    /// only its own tests look at. The proof then restores the whole series with one
    /// `lab restore --all`, which restarts each unit once instead of once per fault.
    AfterOthers,
}

/// Which node a one-node fault picks when `--node` does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultNode {
    /// The last node with the role: never the first etcd member, whose stop one
    /// failover drill is about, nor the first master, which applies the addons.
    Last,
    /// The first load balancer that does not hold the virtual IP now.
    NotHoldingTheVip,
}

/// A script to run on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub node: String,
    pub script: String,
}

impl Step {
    fn on(node: &Node, script: impl Into<String>) -> Step {
        Step { node: node.name.clone(), script: script.into() }
    }
}

/// What the fault scripts are made from: the topology and what the planner derives
/// from it.
pub struct FaultContext<'a> {
    pub topology: &'a Topology,
    /// Each worker's pod range, as the planner gives it.
    pub pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// The cluster CA's certificate (PEM), which a fault can make etcd trust.
    pub cluster_ca_pem: String,
}

impl<'a> FaultContext<'a> {
    pub fn new(topology: &'a Topology, cluster_ca_pem: String) -> FaultContext<'a> {
        FaultContext { topology, pod_cidrs: plan::pod_cidrs(topology), cluster_ca_pem }
    }

    fn first(&self, role: Role) -> &'a Node {
        self.topology.nodes_with(role).next().expect("the scope's `needs` guarantees a node with the role")
    }

    /// The prefix length of the node subnet, which the virtual IP shares.
    fn vip_with_prefix(&self) -> String {
        format!("{}/{}", self.topology.network.vip, self.topology.network.node_subnet.prefix_len())
    }
}

/// How long an `in_force` condition may take to hold on machines at the host's speed.
pub const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(60);

/// A fault that `lab break` injected, as `STATE/faults.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    pub fault: String,
    pub nodes: Vec<String>,
    /// What is wrong, with the nodes filled in.
    pub summary: String,
    /// When it was injected, in seconds since the epoch.
    pub since: u64,
}

/// Why a fault cannot be broken or restored as asked. Each is the user's choice
/// (exit code 2), and nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("no fault {name:?}; `lab faults` lists them: {valid}")]
    Unknown { name: String, valid: String },
    #[error("fault {fault} acts on {what}, so it takes no --node")]
    NodeNotTaken { fault: String, what: String },
    #[error("fault {fault} applies to {role} nodes; {node:?} is not one: pick one of {valid}")]
    WrongNode { fault: String, node: String, role: Role, valid: String },
    #[error("fault {fault} needs {needs} {role} nodes; lab {lab} has {has}")]
    NotApplicable { fault: String, role: Role, needs: usize, has: usize, lab: String },
    #[error("fault {fault} is not in force; in force: {in_force}")]
    NotInForce { fault: String, in_force: String },
}

/// The fault called `name`.
pub fn find(name: &str) -> Result<&'static Fault, FaultError> {
    CATALOGUE.iter().find(|fault| fault.name == name).ok_or_else(|| FaultError::Unknown {
        name: name.to_string(),
        valid: CATALOGUE.iter().map(|fault| fault.name).collect::<Vec<_>>().join(", "),
    })
}

/// Where a fault goes: its nodes, or the one node still to be picked at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets<'a> {
    Nodes(Vec<&'a Node>),
    /// The first of these candidates for which the probe script succeeds.
    FirstOf {
        candidates: Vec<&'a Node>,
        probe: String,
    },
}

impl Fault {
    /// The nodes `lab break NAME [--node NODE]` acts on in `topology`.
    pub fn targets<'a>(&self, topology: &'a Topology, node: Option<&str>) -> Result<Targets<'a>, FaultError> {
        let with = |role: Role| topology.nodes_with(role).collect::<Vec<_>>();
        let enough = |role: Role, needs: usize| {
            let has = with(role).len();
            if has < needs {
                return Err(FaultError::NotApplicable {
                    fault: self.name.to_string(),
                    role,
                    needs,
                    has,
                    lab: topology.name.clone(),
                });
            }
            Ok(())
        };
        let no_node = |what: String| match node {
            Some(_) => Err(FaultError::NodeNotTaken { fault: self.name.to_string(), what }),
            None => Ok(()),
        };
        match self.scope {
            Scope::One { role, default, needs } => {
                enough(role, needs.max(1))?;
                let candidates = with(role);
                if let Some(name) = node {
                    return match candidates.iter().find(|candidate| candidate.name == name) {
                        Some(found) => Ok(Targets::Nodes(vec![found])),
                        None => Err(FaultError::WrongNode {
                            fault: self.name.to_string(),
                            node: name.to_string(),
                            role,
                            valid: names(&candidates),
                        }),
                    };
                }
                match default {
                    DefaultNode::Last => Ok(Targets::Nodes(vec![candidates[candidates.len() - 1]])),
                    DefaultNode::NotHoldingTheVip => {
                        Ok(Targets::FirstOf { candidates, probe: format!("! {}", holds_address(topology.network.vip)) })
                    }
                }
            }
            Scope::Every { role } => {
                no_node(format!("every {role} node"))?;
                enough(role, 1)?;
                Ok(Targets::Nodes(with(role)))
            }
            Scope::AllButFirst { role, needs } => {
                no_node(format!("every {role} node but the first"))?;
                enough(role, needs)?;
                Ok(Targets::Nodes(with(role).into_iter().skip(1).collect()))
            }
            Scope::Cluster { via, needs } => {
                no_node("the cluster as a whole".to_string())?;
                enough(via, needs.max(1))?;
                Ok(Targets::Nodes(vec![with(via)[0]]))
            }
        }
    }

    /// The summary with the nodes filled in.
    pub fn summary_for(&self, nodes: &[&Node]) -> String {
        self.summary.replace("{nodes}", &names(nodes))
    }

    pub fn inject_steps(&self, context: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
        (self.inject)(context, nodes)
    }

    pub fn undo_steps(&self, context: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
        (self.undo)(context, nodes)
    }

    pub fn in_force_steps(&self, context: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
        (self.in_force)(context, nodes)
    }

    pub fn healed_steps(&self, context: &FaultContext, nodes: &[&Node]) -> Vec<Step> {
        (self.healed)(context, nodes)
    }

    /// What `lab faults` shows of a fault for `topology`: the nodes it would go to by
    /// default, or why it does not apply.
    pub fn applies_to(&self, topology: &Topology) -> Result<String, FaultError> {
        Ok(match self.targets(topology, None)? {
            Targets::Nodes(nodes) => match self.scope {
                Scope::Cluster { .. } => "the cluster".to_string(),
                _ => names(&nodes),
            },
            Targets::FirstOf { candidates, .. } => {
                format!("one of {} not holding the virtual IP", names(&candidates))
            }
        })
    }
}

fn names(nodes: &[&Node]) -> String {
    nodes.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// A shell condition: this node holds `address` on one of its interfaces.
fn holds_address(address: Ipv4Addr) -> String {
    format!("ip -4 -o addr show | grep -qF ' {address}/'")
}

/// A script that polls `condition` every half second until it holds, at most
/// `timeout`: one SSH round trip however long it takes, bounded in time and count.
pub fn poll_script(condition: &str, timeout: Duration) -> String {
    let attempts = (timeout.as_millis() / 500).max(1);
    format!(
        "i=0; while [ $i -lt {attempts} ]; do if {{ {condition}; }} >/dev/null 2>&1; then exit 0; fi; \
         i=$((i+1)); sleep 0.5; done; echo 'still not true after {seconds} s: {quoted}' >&2; exit 1",
        seconds = timeout.as_secs(),
        quoted = condition.replace('\'', "")
    )
}

#[cfg(test)]
mod tests;
