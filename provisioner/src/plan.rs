//! The pure planner: from a validated topology, the lab's PKI and the artifacts
//! manifest it computes every address, certificate, file, unit and command per node,
//! in handbook stage order.
//!
//! Invariant: nothing in this module (or in `stages`) does I/O. The executor makes
//! reality match a `Plan` and has no choices left to make.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::pki::{Bundle, CertificateSpec};
use crate::stages;
use crate::topology::{Role, Topology};

/// The handbook's chapters, in the order `lab up` runs them. Each has one row, at the
/// same position, in `stages::REGISTRY`, which gives its name, handbook section and
/// plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Hosts,
    Pki,
    Etcd,
    AdminKubeconfig,
    PodNetwork,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    LoadBalancer,
    Keepalived,
    ContainerRuntime,
    Kubelet,
    KubeProxy,
    DnsAddon,
    Firewall,
}

impl Stage {
    /// Every stage, in the registry's (and so the handbook's) order.
    pub const ALL: [Stage; stages::REGISTRY.len()] = {
        let mut all = [Stage::Hosts; stages::REGISTRY.len()];
        let mut index = 0;
        while index < all.len() {
            all[index] = stages::REGISTRY[index].stage;
            index += 1;
        }
        all
    };

    /// The kebab-case name used on the command line (`--until kube-apiserver`).
    pub fn name(self) -> &'static str {
        stages::entry(self).name
    }

    /// The handbook chapter and section this stage follows.
    pub fn handbook_section(self) -> &'static str {
        stages::entry(self).handbook_section
    }

    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }

    /// Where the stage comes in handbook order, from 0.
    pub fn position(self) -> usize {
        Stage::ALL.iter().position(|stage| *stage == self).expect("every stage is in Stage::ALL")
    }

    /// The stage after this one in handbook order, if any.
    pub fn next(self) -> Option<Stage> {
        Stage::ALL.get(self.position() + 1).copied()
    }

    /// The earlier stages this one builds on directly (`StageEntry::needs`).
    pub fn needs(self) -> &'static [Stage] {
        stages::entry(self).needs
    }

    /// Every stage this one builds on, directly or through another.
    pub fn all_needs(self) -> BTreeSet<Stage> {
        let mut all = BTreeSet::new();
        let mut next: Vec<Stage> = self.needs().to_vec();
        while let Some(stage) = next.pop() {
            if all.insert(stage) {
                next.extend_from_slice(stage.needs());
            }
        }
        all
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything `lab up` will do, computed ahead of time.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub lab: String,
    pub network: NetworkPlan,
    pub nodes: Vec<NodeSummary>,
    /// Every certificate the lab issues, with its subject and SANs.
    pub certificates: Vec<CertificateSpec>,
    pub stages: Vec<StagePlan>,
}

/// The lab's addresses as the host sees them.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    /// Name of the lab bridge on the host.
    pub bridge: String,
    /// The host's address on the bridge, with the node subnet's prefix.
    pub gateway: Ipv4Net,
    pub vip: Ipv4Addr,
    pub api_server_url: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_dns_ip: Ipv4Addr,
    pub cluster_domain: String,
    /// Routes the host installs onto the bridge before sending anything to a lab range.
    pub host_routes: Vec<HostRoute>,
}

/// A host route that keeps a lab range on the lab's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRoute {
    pub destination: Ipv4Net,
    /// Next hops on the bridge: none for a range that is on-link (the node subnet),
    /// one for a worker's pod range, several for the service range (a multipath
    /// route: the kernel spreads flows over them and skips a node that stopped
    /// answering ARP).
    pub via: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<Role>,
    pub aliases: Vec<String>,
    /// The node's /24 of the cluster pod range (workers only).
    pub pod_cidr: Option<Ipv4Net>,
}

/// One handbook chapter: what it puts on each node, then how it proves it worked.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: Stage,
    /// Which handbook section this stage follows.
    pub chapter: &'static str,
    /// The earlier stages that must have passed before this one starts (`Stage::needs`).
    pub needs: &'static [Stage],
    /// Per node, in topology order; nodes the stage does not touch are absent.
    pub nodes: Vec<NodeActions>,
    /// Files the stage writes on the host, under the lab state directory.
    pub local_files: Vec<FileSpec>,
}

impl StagePlan {
    pub fn new(stage: Stage, chapter: &'static str) -> Self {
        StagePlan { stage, chapter, needs: stage.needs(), nodes: Vec::new(), local_files: Vec::new() }
    }

    /// The actions for `node`, created empty on first use so stage code can add to it.
    pub fn node(&mut self, node: &str) -> &mut NodeActions {
        if let Some(index) = self.nodes.iter().position(|actions| actions.node == node) {
            return &mut self.nodes[index];
        }
        self.nodes.push(NodeActions { node: node.to_string(), ..NodeActions::default() });
        self.nodes.last_mut().expect("just pushed")
    }
}

/// What one stage does on one node, in this order: files, units, commands, checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeActions {
    pub node: String,
    pub files: Vec<FileSpec>,
    pub units: Vec<UnitSpec>,
    pub commands: Vec<CommandSpec>,
    pub checks: Vec<CheckSpec>,
}

/// A file with its exact bytes, mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub path: String,
    #[serde(serialize_with = "serialize_mode")]
    pub mode: u32,
    pub owner: String,
    pub content: Content,
}

impl FileSpec {
    /// A root-owned text file.
    pub fn text(path: impl Into<String>, mode: u32, content: impl Into<String>) -> Self {
        FileSpec { path: path.into(), mode, owner: "root".into(), content: Content::Text(content.into()) }
    }

    /// A root-owned file whose content must never be printed (private keys, tokens).
    pub fn secret(path: impl Into<String>, content: impl Into<String>) -> Self {
        FileSpec { path: path.into(), mode: 0o600, owner: "root".into(), content: Content::Secret(content.into()) }
    }
}

fn serialize_mode<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{mode:04o}"))
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Content {
    Text(String),
    /// Like `Text`, but redacted whenever a plan is printed.
    #[serde(serialize_with = "serialize_redacted")]
    Secret(String),
    /// A local file from the artifacts cache (binaries, image archives), by path (the executor hashes it).
    Artifact {
        path: PathBuf,
    },
}

fn serialize_redacted<S: serde::Serializer>(_secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<redacted>")
}

/// A systemd unit the stage wants enabled and running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitSpec {
    /// e.g. `etcd.service`.
    pub name: String,
    /// Paths (from this or earlier stages) whose change means the unit must restart.
    pub restart_when_changed: Vec<String>,
    /// Units listed before it in the same stage whose start means it must restart
    /// too, when the stage starts one that was stopped: firewalld flushes kube-proxy's
    /// rules whenever it starts, whatever made it stop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_after_starting: Vec<String>,
}

/// A shell command run on the node with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    /// What the command does, for progress output and errors.
    pub description: String,
    pub script: String,
    pub when: RunWhen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunWhen {
    /// Every time the stage runs; the script itself must be idempotent.
    Always,
    /// Only when one of the stage's files on this node changed.
    FilesChanged,
}

/// A readiness check: the script is retried until it exits 0 or the timeout passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckSpec {
    pub description: String,
    pub script: String,
    pub timeout_secs: u64,
}

/// What the planner needs besides the topology. Built by the caller; pure data.
pub struct PlanInputs<'a> {
    pub topology: &'a Topology,
    pub pki: &'a Bundle,
    pub artifacts: &'a Artifacts,
    /// Absolute path of the lab state directory, for files written on the host.
    pub state_dir: PathBuf,
}

/// Derived facts every stage uses: computed once so stages agree on them.
pub struct Context<'a> {
    pub topology: &'a Topology,
    pub pki: &'a Bundle,
    pub artifacts: &'a Artifacts,
    pub state_dir: PathBuf,
    /// Each worker's /24 of the pod range, by node name.
    pub pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// `https://VIP:API_PORT`, the address every client uses.
    pub api_server_url: String,
}

/// The handbook's pod range plan: the workers, in topology order, get consecutive
/// /24s of the cluster pod range (worker1 10.200.0.0/24, worker2 10.200.1.0/24).
pub fn pod_cidrs(topology: &Topology) -> BTreeMap<String, Ipv4Net> {
    let base = u32::from(topology.network.pod_cidr.network());
    topology
        .nodes_with(Role::Worker)
        .enumerate()
        .map(|(index, node)| {
            let network = Ipv4Addr::from(base + ((index as u32) << 8));
            (node.name.clone(), Ipv4Net::new(network, 24).expect("24 is a valid prefix"))
        })
        .collect()
}

impl<'a> Context<'a> {
    pub fn new(inputs: &PlanInputs<'a>) -> Self {
        let topology = inputs.topology;
        let pod_cidrs = pod_cidrs(topology);
        let api_server_url = format!("https://{}:{}", topology.network.vip, topology.network.api_port);
        Context {
            topology,
            pki: inputs.pki,
            artifacts: inputs.artifacts,
            state_dir: inputs.state_dir.clone(),
            pod_cidrs,
            api_server_url,
        }
    }

    /// `https://ADDRESS:APISERVER_PORT` of one master's own apiserver.
    pub fn apiserver_url_of(&self, address: Ipv4Addr) -> String {
        format!("https://{}:{}", address, self.topology.network.apiserver_port)
    }

    /// `https://ADDRESS:2379` for every etcd member, comma-separated, in topology order.
    pub fn etcd_client_urls(&self) -> String {
        self.topology
            .nodes_with(Role::Etcd)
            .map(|node| format!("https://{}:2379", node.address))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Computes the whole plan. Pure: same inputs, same plan.
pub fn build(inputs: &PlanInputs<'_>) -> Plan {
    let context = Context::new(inputs);
    let topology = inputs.topology;
    let network = &topology.network;

    let mut host_routes = vec![
        HostRoute { destination: network.node_subnet, via: Vec::new() },
        // The service range has no owner node: every node running kube-proxy answers
        // for it. Routing it over all of them keeps Services reachable from the host
        // when one node is stopped or its kube-proxy is rebuilding its rules.
        HostRoute {
            destination: network.service_cidr,
            via: topology
                .nodes
                .iter()
                .filter(|node| stages::kube_proxy::runs_on(node))
                .map(|node| node.address)
                .collect(),
        },
    ];
    for node in topology.nodes_with(Role::Worker) {
        host_routes.push(HostRoute { destination: context.pod_cidrs[&node.name], via: vec![node.address] });
    }

    let nodes = topology
        .nodes
        .iter()
        .map(|node| NodeSummary {
            name: node.name.clone(),
            address: node.address,
            roles: node.roles.clone(),
            aliases: node.aliases.clone(),
            pod_cidr: context.pod_cidrs.get(&node.name).copied(),
        })
        .collect();

    Plan {
        lab: topology.name.clone(),
        network: NetworkPlan {
            bridge: bridge_name(&topology.name),
            gateway: Ipv4Net::new(network.gateway, network.node_subnet.prefix_len()).expect("prefix from a net"),
            vip: network.vip,
            api_server_url: context.api_server_url.clone(),
            pod_cidr: network.pod_cidr,
            service_cidr: network.service_cidr,
            cluster_dns_ip: network.cluster_dns,
            cluster_domain: network.cluster_domain.clone(),
            host_routes,
        },
        nodes,
        certificates: crate::pki::specs(topology),
        stages: stages::plan_all(&context),
    }
}

/// The host bridge's name: interface names are at most 15 bytes.
pub fn bridge_name(lab: &str) -> String {
    format!("lab-{lab}")
}

#[cfg(test)]
mod tests {
    //! The guard of the module's invariant: the planner's source never names a module
    //! that reaches the machines, the network or the file system.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// What the planner must not use: the host-side modules and the standard library's
    /// processes, files, sockets and threads.
    const FORBIDDEN: [&str; 9] = [
        "crate::machines",
        "crate::ssh",
        "crate::executor",
        "crate::system",
        "crate::host",
        "std::process",
        "std::fs",
        "std::net::TcpStream",
        "std::thread",
    ];

    /// The planner's source files with their module paths: this file and every stage
    /// module.
    fn planner_sources() -> Vec<(PathBuf, String)> {
        let source_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut sources = vec![(source_dir.join("plan.rs"), "crate::plan".to_string())];
        let stages_dir = source_dir.join("stages");
        for entry in std::fs::read_dir(&stages_dir).expect("stages directory is readable") {
            let path = entry.expect("stages directory entry").path();
            let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) else { continue };
            if path.extension().is_some_and(|extension| extension == "rs") {
                let module = if stem == "mod" { "crate::stages".to_string() } else { format!("crate::stages::{stem}") };
                sources.push((path.clone(), module));
            }
        }
        sources.sort();
        sources
    }

    /// The part of a source file that is built outside tests: everything before a
    /// trailing `#[cfg(test)] mod tests` block, which must be the file's last item so
    /// that no code hides after it.
    fn non_test_code<'a>(source: &'a str, file: &Path) -> &'a str {
        let Some(start) = source.find("\n#[cfg(test)]\nmod tests {\n") else { return source };
        let block = &source[start + 1..];
        let last_item =
            block.lines().skip(2).filter(|line| !line.is_empty() && !line.starts_with(' ')).collect::<Vec<_>>();
        assert_eq!(last_item, ["}"], "{}: the test module must be the last item", file.display());
        &source[..start]
    }

    /// `source` without `//` comments, which may name anything.
    fn without_comments(source: &str) -> String {
        source.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    /// The paths a `use` tree names: `std::{fs, net::TcpStream as Socket}` names
    /// `std::fs` and `std::net::TcpStream`. Each comes with the name it binds.
    fn expand_use_tree(tree: &str) -> Vec<(String, String)> {
        let tree = tree.trim();
        let Some(open) = tree.find('{') else {
            let (path, alias) = match tree.split_once(" as ") {
                Some((path, alias)) => (path.trim(), alias.trim()),
                None => (tree, tree.rsplit("::").next().unwrap_or(tree)),
            };
            return vec![(path.to_string(), alias.to_string())];
        };
        let close = tree.rfind('}').expect("a use group is closed");
        let prefix = tree[..open].trim_end_matches("::");
        let mut depth = 0;
        let mut parts = Vec::new();
        let mut part_start = open + 1;
        for (offset, character) in tree[open + 1..close].char_indices() {
            let index = open + 1 + offset;
            match character {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&tree[part_start..index]);
                    part_start = index + 1;
                }
                _ => {}
            }
        }
        parts.push(&tree[part_start..close]);
        parts
            .into_iter()
            .filter(|part| !part.trim().is_empty())
            .flat_map(expand_use_tree)
            .map(|(path, alias)| match path.as_str() {
                "self" => (prefix.to_string(), prefix.rsplit("::").next().unwrap_or(prefix).to_string()),
                _ => (format!("{prefix}::{path}"), alias),
            })
            .collect()
    }

    /// `path` made absolute: `self::` and `super::` resolved from `module`, a leading
    /// `::` dropped.
    fn absolute(path: &str, module: &str) -> String {
        let mut path = path.trim_start_matches("::");
        let mut base = module.to_string();
        let mut relative = false;
        loop {
            if let Some(rest) = path.strip_prefix("super::") {
                base = base.rsplit_once("::").map(|(parent, _)| parent.to_string()).unwrap_or_default();
                path = rest;
                relative = true;
            } else if let Some(rest) = path.strip_prefix("self::") {
                path = rest;
                relative = true;
            } else {
                break;
            }
        }
        if relative {
            format!("{base}::{path}")
        } else {
            path.to_string()
        }
    }

    /// Every absolute path the code names: each `use` declaration, and each `a::b`
    /// path written inline, its first segment resolved through the `use`s.
    fn named_paths(code: &str, module: &str) -> Vec<String> {
        let mut imported = BTreeMap::new();
        let mut paths = Vec::new();
        for declaration in use_declarations(code) {
            for (path, alias) in expand_use_tree(&declaration) {
                let path = absolute(&path, module);
                imported.insert(alias, path.clone());
                paths.push(path);
            }
        }
        for inline in inline_paths(code) {
            let (first, tail) = inline.split_once("::").expect("an inline path has two segments");
            match imported.get(first) {
                Some(full) => paths.push(format!("{full}::{tail}")),
                None => paths.push(absolute(&inline, module)),
            }
        }
        paths
    }

    /// The trees of the code's `use` declarations (`std::{fs, thread}` for
    /// `pub(crate) use std::{fs, thread};`), each starting a line and possibly spanning
    /// several.
    fn use_declarations(code: &str) -> Vec<String> {
        let mut declarations = Vec::new();
        let mut open: Option<String> = None;
        for line in code.lines() {
            let line = line.trim();
            let tree = match open.take() {
                Some(mut tree) => {
                    tree.push_str(line);
                    tree
                }
                None => {
                    let unqualified = match line.strip_prefix("pub") {
                        Some(rest) if rest.starts_with('(') => rest.split_once(')').map_or(rest, |(_, rest)| rest),
                        Some(rest) => rest,
                        None => line,
                    };
                    match unqualified.trim_start().strip_prefix("use ") {
                        Some(tree) => tree.to_string(),
                        None => continue,
                    }
                }
            };
            match tree.split_once(';') {
                Some((tree, _)) => declarations.push(tree.to_string()),
                None => open = Some(tree),
            }
        }
        declarations
    }

    /// Every `a::b::c` path in the code, outside `use` declarations or in them.
    fn inline_paths(code: &str) -> Vec<String> {
        let is_path_char = |character: char| character.is_alphanumeric() || character == '_' || character == ':';
        code.split(|character: char| !is_path_char(character))
            .map(|token| token.trim_matches(':'))
            .filter(|token| token.contains("::"))
            .map(str::to_string)
            .collect()
    }

    /// The forbidden paths `source` names, as `(path, forbidden prefix)`.
    fn forbidden_uses(source: &str, module: &str, file: &Path) -> Vec<(String, &'static str)> {
        let code = without_comments(non_test_code(source, file));
        let mut found: Vec<(String, &'static str)> = named_paths(&code, module)
            .into_iter()
            .filter_map(|path| {
                let forbidden = FORBIDDEN
                    .into_iter()
                    .find(|forbidden| path == *forbidden || path.starts_with(&format!("{forbidden}::")))?;
                Some((path, forbidden))
            })
            .collect();
        found.dedup();
        found
    }

    #[test]
    fn planner_and_stages_never_reach_io() {
        let mut violations = Vec::new();
        for (file, module) in planner_sources() {
            let source = std::fs::read_to_string(&file).expect("source file is readable");
            for (path, forbidden) in forbidden_uses(&source, &module, &file) {
                violations.push(format!("{}: uses `{path}` ({forbidden} does I/O)", file.display()));
            }
        }
        assert!(
            violations.is_empty(),
            "the planner must stay pure (see provisioner/src/plan.rs):\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn guard_sees_imports_in_every_form() {
        let file = Path::new("stages/example.rs");
        let module = "crate::stages::example";
        let found = |source: &str| -> Vec<String> {
            forbidden_uses(source, module, file).into_iter().map(|(path, _)| path).collect()
        };
        assert_eq!(found("use std::fs;\n"), ["std::fs"]);
        assert_eq!(found("use std::{collections::BTreeMap, net::{Ipv4Addr, TcpStream}};\n"), ["std::net::TcpStream"]);
        assert_eq!(found("use crate::{plan, ssh::Session as Remote};\n"), ["crate::ssh::Session"]);
        assert_eq!(found("use super::super::executor;\n"), ["crate::executor"]);
        assert_eq!(found("pub(crate) use crate::machines::Backend;\n"), ["crate::machines::Backend"]);
        assert_eq!(found("fn f() { std::thread::sleep(d); }\n"), ["std::thread::sleep"]);
        assert_eq!(found("use std::process;\nfn f() { process::Command::new(\"ls\"); }\n").len(), 2);
        assert_eq!(found("use std::net;\nfn f() { net::TcpStream::connect(a); }\n"), ["std::net::TcpStream::connect"]);
        assert_eq!(found("fn f() { let _ = ::std::fs::read(p); }\n"), ["std::fs::read"]);
    }

    #[test]
    fn guard_lets_pure_code_and_tests_through() {
        let file = Path::new("stages/example.rs");
        let found = |source: &str| forbidden_uses(source, "crate::stages::example", file);
        assert!(found("use std::net::Ipv4Addr;\nuse crate::hosts_file;\nuse crate::topology::Role;\n").is_empty());
        assert!(found("// std::fs would be wrong here.\nfn f() {} // so would crate::ssh\n").is_empty());
        assert!(found("fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use std::fs;\n}\n").is_empty());
    }
}
