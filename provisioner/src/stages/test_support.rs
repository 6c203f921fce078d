//! What the stages' unit tests share: repository topologies, a PKI bundle of
//! placeholders, one stage's plan for a topology, and ways to read that plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::artifacts::Artifacts;
use crate::pki::{Bundle, Issued};
use crate::plan::{Content, Context, NodeActions, PlanInputs, Stage, StagePlan};
use crate::topology::Topology;

/// A topology from the repository (`lab.toml` or one under `examples/`).
pub fn topology(file: &str) -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    Topology::load(&path).expect("repository topology is valid").topology
}

/// Placeholder PEM text: these stages only place paths and names, never parse keys.
fn placeholder(name: &str) -> Issued {
    Issued { cert_pem: format!("CERT {name}\n"), key_pem: format!("KEY {name}\n") }
}

/// A bundle with a placeholder certificate under every name the topology's PKI issues.
fn bundle(topology: &Topology) -> Bundle {
    let certificates: BTreeMap<String, Issued> =
        crate::pki::specs(topology).into_iter().map(|spec| (spec.name.clone(), placeholder(&spec.name))).collect();
    Bundle {
        ca: placeholder("ca"),
        etcd_ca: placeholder("etcd-ca"),
        certificates,
        service_account: placeholder("service-account"),
        secrets_encryption_key: "c2VjcmV0cy1lbmNyeXB0aW9uLWtleS1wbGFjZWhvbGRlcg==".to_string(),
    }
}

/// One stage's plan for a repository topology.
pub fn stage_for(file: &str, stage: Stage) -> StagePlan {
    stage_for_topology(&topology(file), stage)
}

/// One stage's plan for `topology`, with placeholder certificates and the artifacts of
/// a cache in `/cache`.
pub fn stage_for_topology(topology: &Topology, stage: Stage) -> StagePlan {
    let bundle = bundle(topology);
    let artifacts = Artifacts::expected(topology, Path::new("/cache"));
    let inputs = PlanInputs { topology, pki: &bundle, artifacts: &artifacts, state_dir: PathBuf::from("/state") };
    super::plan_stage(stage, &Context::new(&inputs))
}

/// The whole plan of the repository's `lab.toml`, with placeholder certificates.
pub fn default_plan() -> crate::plan::Plan {
    let topology = topology("lab.toml");
    let bundle = bundle(&topology);
    let artifacts = Artifacts::expected(&topology, Path::new("/cache"));
    crate::plan::build(&PlanInputs {
        topology: &topology,
        pki: &bundle,
        artifacts: &artifacts,
        state_dir: PathBuf::from("/state"),
    })
}

/// The names of the nodes the stage touches, in plan order.
pub fn planned_nodes(stage: &StagePlan) -> Vec<&str> {
    stage.nodes.iter().map(|actions| actions.node.as_str()).collect()
}

/// What the stage does on `node`.
pub fn actions_on<'a>(stage: &'a StagePlan, node: &str) -> &'a NodeActions {
    stage.nodes.iter().find(|actions| actions.node == node).expect("node is in the stage")
}

/// The text of the file at `path` on `node`.
pub fn file<'a>(stage: &'a StagePlan, node: &str, path: &str) -> &'a str {
    let file = actions_on(stage, node).files.iter().find(|file| file.path == path).expect("file is planned");
    match &file.content {
        Content::Text(text) | Content::Secret(text) => text,
        Content::Artifact { .. } => panic!("{path} is an artifact"),
    }
}

/// The value of `--flag=` in a unit's ExecStart.
pub fn flag<'a>(unit: &'a str, flag: &str) -> &'a str {
    let prefix = format!("--{flag}=");
    unit.lines()
        .map(|line| line.trim().trim_end_matches(" \\"))
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("unit has no --{flag}"))
}
