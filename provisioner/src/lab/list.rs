//! The labs on this host, for `lab list`. Every lab's bridge carries in its alias the
//! state directory of the lab that made it (`hostnet::owner_tag`), whatever the
//! backend, so the bridges are where labs are found, not one state directory. The
//! state directories the caller names (the default one) are looked at as well, for a
//! lab whose bridge is not there (stopped before `lab up` made it, or removed by hand).
//! Reading the host and the state directories is all this does: nothing is changed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Lab, LabError, LabPaths, Surroundings};
use crate::machines::{hostnet, MachineState};
use crate::state_dir::StateDir;
use crate::topology::Backend;

/// Where the kernel lists the host's network interfaces.
const INTERFACES: &str = "/sys/class/net";

/// The labs on the host and what looks like the remains of one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    pub labs: Vec<ListedLab>,
    /// Bridges tagged by a lab whose state directory holds no lab any more.
    pub strays: Vec<StrayBridge>,
}

/// One lab: its name, where its state lives, its machines and where its API answers.
#[derive(Debug, Clone, Serialize)]
pub struct ListedLab {
    pub lab: String,
    pub state_dir: PathBuf,
    pub backend: Backend,
    /// The lab's bridge, when it exists on the host.
    pub bridge: Option<String>,
    pub api_server_url: String,
    pub nodes: Vec<ListedNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListedNode {
    pub name: String,
    /// The machine's state, or why the backend could not tell.
    #[serde(flatten)]
    pub state: NodeState,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    State(MachineState),
    Unknown(String),
}

/// A bridge whose alias names a lab's state directory that holds no lab.
#[derive(Debug, Clone, Serialize)]
pub struct StrayBridge {
    pub bridge: String,
    /// The state directory the alias names, unless the alias holds only its digest
    /// (a path longer than an alias may be).
    pub state_dir: Option<PathBuf>,
}

impl ListedLab {
    /// "3 running, 2 stopped": the nodes' states counted, for one line of text.
    pub fn node_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for node in &self.nodes {
            let state = match &node.state {
                NodeState::State(state) => state.to_string(),
                NodeState::Unknown(_) => "unknown".to_string(),
            };
            match counts.iter_mut().find(|(name, _)| *name == state) {
                Some((_, count)) => *count += 1,
                None => counts.push((state, 1)),
            }
        }
        counts.iter().map(|(state, count)| format!("{count} {state}")).collect::<Vec<_>>().join(", ")
    }
}

/// Every lab on the host: those the bridges name, then those of `named` state
/// directories that are not among them. `surroundings` makes what each lab needs to
/// be opened; `cache_dir` is the shared cache.
pub fn labs_on_host(named: &[PathBuf], cache_dir: &Path, surroundings: &dyn Fn() -> Box<dyn Surroundings>) -> Listing {
    let mut listing = Listing::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    for (bridge, alias) in tagged_bridges() {
        let Some(state_dir) = alias.strip_prefix(OWNER_PREFIX).filter(|path| path.starts_with('/')) else {
            listing.strays.push(StrayBridge { bridge, state_dir: None });
            continue;
        };
        let state_dir = PathBuf::from(state_dir);
        match open(&state_dir, cache_dir, surroundings) {
            Some(lab) => listing.labs.push(listed(&lab, Some(bridge))),
            None => listing.strays.push(StrayBridge { bridge, state_dir: Some(state_dir.clone()) }),
        }
        seen.push(state_dir);
    }
    for state_dir in named {
        if seen.contains(state_dir) {
            continue;
        }
        if let Some(lab) = open(state_dir, cache_dir, surroundings) {
            listing.labs.push(listed(&lab, None));
        }
    }
    listing.labs.sort_by(|a, b| (&a.lab, &a.state_dir).cmp(&(&b.lab, &b.state_dir)));
    listing
}

/// What `hostnet::owner_tag` puts before the state directory.
const OWNER_PREFIX: &str = "k8s-lab ";

/// The host's interfaces whose alias is a lab's owner tag, by name, in name order.
fn tagged_bridges() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(INTERFACES) else { return Vec::new() };
    let mut bridges: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let alias = std::fs::read_to_string(entry.path().join("ifalias")).ok()?;
            let alias = alias.trim();
            alias
                .starts_with(OWNER_PREFIX)
                .then(|| (entry.file_name().to_string_lossy().into_owned(), alias.to_owned()))
        })
        .collect();
    bridges.sort();
    bridges
}

/// The lab recorded in `state_dir`, if there is one that this build can open.
fn open(state_dir: &Path, cache_dir: &Path, surroundings: &dyn Fn() -> Box<dyn Surroundings>) -> Option<Lab> {
    let record = StateDir::new(state_dir).topology_record();
    let paths = LabPaths { topology: record, state_dir: state_dir.to_owned(), cache_dir: cache_dir.to_owned() };
    Lab::existing(paths, None, surroundings()).ok()
}

fn listed(lab: &Lab, bridge: Option<String>) -> ListedLab {
    let topology = lab.topology();
    let nodes = topology
        .nodes
        .iter()
        .map(|node| ListedNode {
            name: node.name.clone(),
            state: match lab.machines().and_then(|machines| machines.status(&node.name).map_err(LabError::from)) {
                Ok(state) => NodeState::State(state),
                Err(error) => NodeState::Unknown(error.to_string()),
            },
        })
        .collect();
    // A lab found through its state directory may still have its bridge.
    let bridge = bridge.or_else(|| {
        let name = crate::plan::bridge_name(&topology.name);
        hostnet::bridge_exists(&name).then_some(name)
    });
    ListedLab {
        lab: topology.name.clone(),
        state_dir: lab.paths().state_dir.clone(),
        backend: topology.machines.backend,
        bridge,
        api_server_url: lab.api_url(),
        nodes,
    }
}
