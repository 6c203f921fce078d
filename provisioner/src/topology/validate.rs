//! The rules a topology must obey beyond its schema, and the errors that name the
//! field and value that break one: syntax errors with line, column and field, then
//! every semantic problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::*;

/// Why a topology could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not TOML or does not fit the schema; `message` names the line,
    /// the field and the problem, and quotes the offending line.
    #[error("invalid topology {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid topology {path}:\n{}", format_problems(.problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|problem| format!("  - {problem}")).collect::<Vec<_>>().join("\n")
}

/// Turns a toml error into a message that leads with the place and the field.
///
/// toml's own text gives the line and quotes it, but for an unknown key it does not
/// say which table the key was found in ("unknown field `foo`" could be at the top,
/// in [network] or in the fifth [[node]]), and for a bad value it names no key at
/// all. The field is recovered from the text: the nearest table header above the
/// error line, plus the key on that line.
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |newline| newline + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |newline| start + newline);
    let line_number = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..line_end].trim_end_matches('\r');

    let place = match field_at(&text[..line_start], line) {
        Some(field) => format!("line {line_number}, column {column}, {field}"),
        None => format!("line {line_number}, column {column}"),
    };
    // Underline the span like toml does, but never past the end of the quoted line.
    let width = text[start..span.end.clamp(start, line_end)].chars().count().max(1);
    let gutter = " ".repeat(line_number.to_string().len());
    let underline = format!("{}{}", " ".repeat(column - 1), "^".repeat(width));
    format!("{place}: {message}\n{gutter} |\n{line_number} | {line}\n{gutter} | {underline}")
}

/// The dotted field (`network.vip`, `node[2].roles`) that `line` sets, given the
/// document text before it; `None` when no table or key can be told.
fn field_at(before: &str, line: &str) -> Option<String> {
    let mut table = Vec::<String>::new();
    let mut array_counts = BTreeMap::<String, usize>::new();
    let mut enter = |header: &str, table: &mut Vec<String>| -> bool {
        // A comment may follow the header; a malformed header (the error itself) is skipped.
        let header = header.split('#').next().unwrap_or_default().trim();
        let (name, is_array) = match header.strip_prefix("[[").and_then(|rest| rest.strip_suffix("]]")) {
            Some(name) => (name, true),
            None => match header.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                Some(name) => (name, false),
                None => return false,
            },
        };
        if name.contains(['[', ']']) {
            return false;
        }
        let name: String = name.split('.').map(|part| part.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
        if is_array {
            *array_counts.entry(name.clone()).or_default() += 1;
        }
        // Each prefix that names an array of tables gets the index of its latest entry,
        // so a [node.resources] after the third [[node]] reads node[2].resources.
        table.clear();
        let mut prefix = String::new();
        for part in name.split('.') {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(part);
            match array_counts.get(&prefix) {
                Some(count) => table.push(format!("{part}[{}]", count - 1)),
                None => table.push(part.to_string()),
            }
        }
        true
    };
    for earlier in before.lines() {
        if earlier.trim_start().starts_with('[') {
            enter(earlier, &mut table);
        }
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') {
        return None;
    }
    if trimmed.starts_with('[') && !trimmed.contains('=') {
        // The error is about the table itself: a missing field in it, or a broken header
        // that names no table yet.
        if !enter(line, &mut table) {
            return None;
        }
    } else if let Some((key, _)) = line.split_once('=') {
        table.push(key.trim().trim_matches('"').to_string());
    }
    (!table.is_empty()).then(|| table.join("."))
}

/// One broken rule: the field, its value and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Dotted path of the field, e.g. `node[2].address` or `network.vip`.
    pub field: String,
    /// The offending value as written.
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.message)
    }
}

/// A topology that parsed and passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Validated {
    pub topology: Topology,
    pub warnings: Vec<Problem>,
}

/// Collects the problems of one validation run.
#[derive(Default)]
struct Findings {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Findings {
    fn error(&mut self, field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem { field: field.into(), value: value.into(), message: message.into() });
    }

    fn warning(&mut self, field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem { field: field.into(), value: value.into(), message: message.into() });
    }
}

impl Topology {
    /// Reads, parses and validates a topology file.
    pub fn load(path: &Path) -> Result<Validated, TopologyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Validated, TopologyError> {
        let topology: Topology = toml::from_str(text)
            .map_err(|error| TopologyError::Syntax { path: path.to_owned(), message: syntax_message(text, &error) })?;
        let (problems, warnings) = topology.check();
        if problems.is_empty() {
            Ok(Validated { topology, warnings })
        } else {
            Err(TopologyError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// The nodes that carry `role`, in topology order.
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().filter(move |node| node.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Applies every semantic rule and returns `(errors, warnings)`. Every rule runs,
    /// so that one pass over the file shows the user everything to fix.
    pub fn check(&self) -> (Vec<Problem>, Vec<Problem>) {
        let mut findings = Findings::default();
        if !is_dns_label(&self.name) || self.name.len() > 8 {
            findings.error(
                "name",
                quoted(&self.name),
                "must be 1-8 lowercase letters, digits or '-' (it prefixes host interface names)",
            );
        }
        self.check_ranges(&mut findings);
        self.check_network_addresses(&mut findings);
        self.check_ports(&mut findings);
        self.check_kubernetes(&mut findings);
        self.check_nodes(&mut findings);
        self.check_roles(&mut findings);
        self.check_vagrant_box(&mut findings);
        (findings.errors, findings.warnings)
    }

    /// A box name is `NAME` or `ORGANISATION/NAME`, as Vagrant Cloud spells them, and
    /// only the vagrant backend uses one.
    fn check_vagrant_box(&self, findings: &mut Findings) {
        let Some(name) = &self.machines.vagrant_box else { return };
        let valid_part = |part: &str| {
            !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte))
        };
        if name.split('/').count() > 2 || !name.split('/').all(valid_part) {
            findings.error(
                "machines.vagrant_box",
                quoted(name),
                "must be a Vagrant box name such as \"NAME\" or \"ORGANISATION/NAME\"",
            );
        }
        if self.machines.backend != Backend::Vagrant {
            findings.warning(
                "machines.vagrant_box",
                quoted(name),
                format!("is used by the vagrant backend only; the {} backend ignores it", self.machines.backend),
            );
        }
    }

    /// The three address ranges: each must be sane on its own, and none may overlap another.
    fn check_ranges(&self, findings: &mut Findings) {
        let net = &self.network;
        let ranges = [
            ("network.node_subnet", net.node_subnet),
            ("network.pod_cidr", net.pod_cidr),
            ("network.service_cidr", net.service_cidr),
        ];
        for (field, range) in ranges {
            if range.addr() != range.network() {
                findings.error(
                    field,
                    quoted(&range.to_string()),
                    format!("has host bits set; did you mean {}?", range.trunc()),
                );
            }
        }
        for (index, (field_a, a)) in ranges.iter().enumerate() {
            for (field_b, b) in &ranges[index + 1..] {
                // Two CIDRs overlap exactly when one holds the other's first address.
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    findings.error(
                        *field_b,
                        quoted(&b.to_string()),
                        format!("overlaps {field_a} {a}; the ranges must be disjoint"),
                    );
                }
            }
        }
        if net.node_subnet.prefix_len() > 29 {
            findings.error(
                "network.node_subnet",
                quoted(&net.node_subnet.to_string()),
                "is too small for a gateway, a VIP and nodes (use /29 or larger)",
            );
        }
        if net.pod_cidr.prefix_len() > 23 {
            findings.error(
                "network.pod_cidr",
                quoted(&net.pod_cidr.to_string()),
                "must hold at least two /24 node ranges (use /23 or larger)",
            );
        } else {
            let capacity = 1usize << (24 - net.pod_cidr.prefix_len());
            let workers = self.nodes_with(Role::Worker).count();
            if workers > capacity {
                findings.error(
                    "network.pod_cidr",
                    quoted(&net.pod_cidr.to_string()),
                    format!("holds {capacity} node /24 ranges but the lab has {workers} workers"),
                );
            }
        }
        let dns = net.cluster_dns;
        if let Some(reason) = host_address_problem(net.service_cidr, dns) {
            findings.error(
                "network.cluster_dns",
                quoted(&dns.to_string()),
                format!("{reason} network.service_cidr {}", net.service_cidr),
            );
        } else if dns == first_service_ip(net.service_cidr) {
            findings.error(
                "network.cluster_dns",
                quoted(&dns.to_string()),
                "is the first service IP, which the `kubernetes` Service takes; pick another address",
            );
        }
        if !net.cluster_domain.split('.').all(is_dns_label) {
            findings.error(
                "network.cluster_domain",
                quoted(&net.cluster_domain),
                "must be a DNS name of lowercase labels, e.g. \"cluster.local\"",
            );
        }
    }

    /// The gateway and the VIP live on the node subnet next to the nodes.
    fn check_network_addresses(&self, findings: &mut Findings) {
        let net = &self.network;
        for (field, address) in [("network.gateway", net.gateway), ("network.vip", net.vip)] {
            if let Some(reason) = host_address_problem(net.node_subnet, address) {
                findings.error(
                    field,
                    quoted(&address.to_string()),
                    format!("{reason} network.node_subnet {}", net.node_subnet),
                );
            }
        }
        if net.vip == net.gateway {
            findings.error(
                "network.vip",
                quoted(&net.vip.to_string()),
                "equals network.gateway (the host's address on the lab bridge)",
            );
        }
    }

    fn check_ports(&self, findings: &mut Findings) {
        let net = &self.network;
        for (field, port) in [("network.api_port", net.api_port), ("network.apiserver_port", net.apiserver_port)] {
            if port == 0 {
                findings.error(field, port.to_string(), "must be a port number from 1 to 65535");
            }
            if (net.node_port_range.first..=net.node_port_range.last).contains(&port) {
                findings.error(
                    field,
                    port.to_string(),
                    format!("lies inside network.node_port_range {}", net.node_port_range),
                );
            }
        }
        if net.api_port == net.apiserver_port {
            findings.error(
                "network.api_port",
                net.api_port.to_string(),
                "must differ from network.apiserver_port: HAProxy and kube-apiserver share the masters",
            );
        }
    }

    fn check_kubernetes(&self, findings: &mut Findings) {
        let kubernetes = &self.kubernetes;
        if kubernetes.source == ArtifactSource::Dir && kubernetes.dir.is_none() {
            findings.error(
                "kubernetes.dir",
                "(missing)",
                "is required when kubernetes.source = \"dir\": set it to the directory holding the binaries",
            );
        }
        let parts: Vec<&str> = kubernetes.version.split('.').collect();
        let numeric = |part: &&str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
        if parts.len() != 3 || !parts.iter().all(numeric) {
            findings.error(
                "kubernetes.version",
                quoted(&kubernetes.version),
                "must be MAJOR.MINOR.PATCH without a leading v, e.g. \"1.20.2\"",
            );
        }
    }

    /// Each node on its own: its name, aliases, address and role combination.
    fn check_nodes(&self, findings: &mut Findings) {
        let net = &self.network;
        if self.nodes.is_empty() {
            findings.error("node", "[]", "the lab has no node; add [[node]] tables");
        }
        // Who took each name and address first, so that a duplicate can say where the other one is.
        let mut names = BTreeMap::<&str, String>::new();
        let mut addresses = BTreeMap::<Ipv4Addr, String>::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let field = |name: &str| format!("node[{index}].{name}");
            let owner = format!("node[{index}] ({})", node.name);
            if !is_dns_label(&node.name) {
                findings.error(
                    field("name"),
                    quoted(&node.name),
                    "must be a lowercase DNS label (letters, digits, '-')",
                );
            }
            if let Some(first) = names.get(node.name.as_str()) {
                findings.error(field("name"), quoted(&node.name), format!("is already used by {first}"));
            } else {
                names.insert(&node.name, owner.clone());
            }
            for alias in &node.aliases {
                if !is_dns_label(alias) {
                    findings.error(field("aliases"), quoted(alias), "must be a lowercase DNS label");
                }
                if let Some(first) = names.get(alias.as_str()) {
                    findings.error(field("aliases"), quoted(alias), format!("is already used by {first}"));
                } else {
                    names.insert(alias, owner.clone());
                }
            }

            let address = node.address;
            if let Some(first) = addresses.get(&address) {
                findings.error(field("address"), quoted(&address.to_string()), format!("is already used by {first}"));
            } else {
                addresses.insert(address, owner);
            }
            if let Some(reason) = host_address_problem(net.node_subnet, address) {
                findings.error(
                    field("address"),
                    quoted(&address.to_string()),
                    format!("{reason} network.node_subnet {}", net.node_subnet),
                );
            } else if address == net.gateway {
                findings.error(
                    field("address"),
                    quoted(&address.to_string()),
                    "equals network.gateway (the host's address on the lab bridge)",
                );
            } else if address == net.vip {
                findings.error(
                    field("address"),
                    quoted(&address.to_string()),
                    "equals network.vip (keepalived's floating address)",
                );
            }

            if node.roles.is_empty() {
                findings.error(field("roles"), "[]", "a node needs at least one of etcd, master, lb, worker");
            }
            if node.has(Role::Lb) && !node.has(Role::Master) {
                findings.error(
                    field("roles"),
                    roles_value(&node.roles),
                    "lb needs master on the same node: HAProxy balances the masters' apiservers",
                );
            }
        }
    }

    /// The lab as a whole: every role must be present, and etcd wants an odd quorum.
    fn check_roles(&self, findings: &mut Findings) {
        if self.nodes.is_empty() {
            // "no node" already says it all; a missing role per role would only repeat it.
            return;
        }
        for (role, what) in [(Role::Etcd, "etcd member"), (Role::Master, "master"), (Role::Worker, "worker")] {
            if self.nodes_with(role).count() == 0 {
                findings.error(
                    "node[*].roles",
                    format!("(no node has {role})"),
                    format!("the lab needs at least one {what}; add \"{role}\" to a node's roles"),
                );
            }
        }
        let etcd_members = self.nodes_with(Role::Etcd).count();
        if etcd_members > 0 && etcd_members.is_multiple_of(2) {
            findings.warning(
                "node[*].roles",
                format!("({etcd_members} etcd members)"),
                format!(
                    "an even number of etcd members tolerates no more failures than {}; use an odd count",
                    etcd_members - 1
                ),
            );
        }
        if self.nodes_with(Role::Master).count() > 0 && self.nodes_with(Role::Lb).count() == 0 {
            findings.error(
                "node[*].roles",
                "(no node has lb)",
                "the lab needs at least one lb node to carry network.vip; add \"lb\" to a master's roles",
            );
        }
    }
}

/// Why `address` cannot be a host on `subnet`, as the start of a sentence ending in
/// the subnet's field name; `None` when it can.
fn host_address_problem(subnet: Ipv4Net, address: Ipv4Addr) -> Option<&'static str> {
    if !subnet.contains(&address) {
        Some("lies outside")
    } else if address == subnet.network() {
        Some("is the network address of")
    } else if address == subnet.broadcast() {
        Some("is the broadcast address of")
    } else {
        None
    }
}

/// The first address of the service range, which the `kubernetes` Service always takes.
pub fn first_service_ip(service_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.network()) + 1)
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// Roles as written in TOML, e.g. `["lb", "worker"]`.
fn roles_value(roles: &[Role]) -> String {
    format!("[{}]", roles.iter().map(|role| quoted(&role.to_string())).collect::<Vec<_>>().join(", "))
}
