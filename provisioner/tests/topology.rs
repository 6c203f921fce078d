//! Tests of the topology parser and validator.
//!
//! Every validation rule of issue 2 has a test here: each starts from `BASE`, a
//! valid one-master-one-worker lab, breaks one thing with `edit`, and checks that
//! the message names the field and the bad value, because that is what a user
//! needs to find the line to fix. The shipped topologies (lab.toml and
//! examples/*.toml) must load with no error and no warning.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use provisioner::topology::{Problem, Role, Topology, TopologyError, Validated};

/// A valid lab with one master (etcd, master, lb) and one worker. Each value that
/// a test edits appears once, so that `edit` changes exactly the intended line.
const BASE: &str = r#"name = "t"

[network]
node_subnet = "10.240.0.0/24"
gateway = "10.240.0.1"
vip = "10.240.0.100"
pod_cidr = "10.200.0.0/16"
service_cidr = "10.32.0.0/24"
cluster_dns = "10.32.0.10"

[[node]]
name = "master1"
address = "10.240.0.11"
roles = ["etcd", "master", "lb"]

[[node]]
name = "worker1"
address = "10.240.0.21"
roles = ["worker"]
"#;

/// `BASE` with the one occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    edits(&[(from, to)])
}

/// `BASE` with several replacements, each of a text that occurs exactly once.
fn edits(replacements: &[(&str, &str)]) -> String {
    replacements.iter().fold(BASE.to_string(), |text, (from, to)| {
        assert_eq!(text.matches(from).count(), 1, "{from:?} must occur exactly once in:\n{text}");
        text.replacen(from, to, 1)
    })
}

fn parse(text: &str) -> Result<Validated, TopologyError> {
    Topology::parse(text, Path::new("lab.toml"))
}

/// The full message of a syntax error (the whole Display, as the CLI prints it).
fn syntax_error(text: &str) -> String {
    match parse(text) {
        Err(error @ TopologyError::Syntax { .. }) => error.to_string(),
        other => panic!("expected a syntax error, got {other:?} for:\n{text}"),
    }
}

/// The problems of a topology that parses but breaks rules.
fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(TopologyError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?} for:\n{text}"),
    }
}

/// Asserts that `text` fails validation with exactly one problem, on `field` with
/// `value`, whose message contains `message`.
fn assert_only_problem(text: &str, field: &str, value: &str, message: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    assert_problem(&found[0], field, value, message);
}

fn assert_problem(problem: &Problem, field: &str, value: &str, message: &str) {
    assert_eq!(problem.field, field, "{problem:#?}");
    assert_eq!(problem.value, value, "{problem:#?}");
    assert!(problem.message.contains(message), "message {:?} lacks {message:?}", problem.message);
}

/// Asserts that `message` contains every one of `parts`.
fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "message lacks {part:?}:\n{message}");
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf()
}

fn load_clean(path: &Path) -> Topology {
    let validated = Topology::load(path).unwrap_or_else(|error| panic!("{error}"));
    assert!(validated.warnings.is_empty(), "{}: warnings {:#?}", path.display(), validated.warnings);
    validated.topology
}

fn names_with(topology: &Topology, role: Role) -> Vec<&str> {
    topology.nodes_with(role).map(|node| node.name.as_str()).collect()
}

// ---- The shipped topologies --------------------------------------------------------------

#[test]
fn base_is_valid_without_warnings() {
    let validated = parse(BASE).expect("BASE is valid");
    assert!(validated.warnings.is_empty(), "{:#?}", validated.warnings);
    assert_eq!(validated.topology.nodes.len(), 2);
}

#[test]
fn default_lab_is_the_handbooks_ha_cluster() {
    let lab = load_clean(&repo_root().join("lab.toml"));
    assert_eq!(names_with(&lab, Role::Master), ["master1", "master2", "master3"]);
    assert_eq!(names_with(&lab, Role::Etcd), ["master1", "master2", "master3"]);
    assert_eq!(names_with(&lab, Role::Lb), ["master1", "master2", "master3"]);
    assert_eq!(names_with(&lab, Role::Worker), ["worker1", "worker2"]);
    assert_eq!(lab.nodes.len(), 5);
    for master in lab.nodes_with(Role::Master) {
        assert_eq!(master.roles, [Role::Etcd, Role::Master, Role::Lb], "{}", master.name);
    }
    let aliases: BTreeSet<&str> = lab.nodes.iter().flat_map(|node| &node.aliases).map(String::as_str).collect();
    assert_eq!(aliases, BTreeSet::from(["etcd1", "etcd2", "etcd3"]));
    assert_eq!(lab.network.vip.to_string(), "10.240.0.100");
    assert_eq!(lab.network.node_subnet.to_string(), "10.240.0.0/24");
}

#[test]
fn separate_etcd_example_has_its_own_etcd_tier() {
    let lab = load_clean(&repo_root().join("examples/separate-etcd.toml"));
    assert_eq!(names_with(&lab, Role::Etcd), ["etcd1", "etcd2", "etcd3"]);
    assert_eq!(names_with(&lab, Role::Master), ["master1", "master2", "master3"]);
    assert_eq!(names_with(&lab, Role::Lb), ["master1", "master2", "master3"]);
    assert_eq!(names_with(&lab, Role::Worker), ["worker1", "worker2"]);
    assert_eq!(lab.nodes.len(), 8);
    assert!(lab.nodes_with(Role::Etcd).all(|node| node.roles == [Role::Etcd]));
}

#[test]
fn minimal_example_has_one_controller_and_one_worker() {
    let lab = load_clean(&repo_root().join("examples/minimal.toml"));
    assert_eq!(names_with(&lab, Role::Etcd), ["master1"]);
    assert_eq!(names_with(&lab, Role::Master), ["master1"]);
    assert_eq!(names_with(&lab, Role::Lb), ["master1"]);
    assert_eq!(names_with(&lab, Role::Worker), ["worker1"]);
    assert_eq!(lab.nodes.len(), 2);
}

#[test]
fn every_example_loads_without_errors_or_warnings() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/ exists") {
        let path = entry.expect("readable examples/").path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            load_clean(&path);
            loaded += 1;
        }
    }
    assert!(loaded >= 3, "expected at least the three documented examples, found {loaded}");
}

/// Every shipped topology can run beside every other on one host (the fault proof runs
/// the default lab and its twin at once): no two share a name (hence bridge and machine
/// names) or overlap in a range, as `lab up` requires of two labs at once.
#[test]
fn no_two_shipped_topologies_share_a_name_or_a_range() {
    let mut shipped = vec![(PathBuf::from("lab.toml"), load_clean(&repo_root().join("lab.toml")))];
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/ exists") {
        let path = entry.expect("readable examples/").path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            let topology = load_clean(&path);
            shipped.push((path, topology));
        }
    }
    let ranges = |lab: &Topology| {
        let network = &lab.network;
        [network.node_subnet, network.pod_cidr, network.service_cidr]
    };
    for (index, (path, lab)) in shipped.iter().enumerate() {
        for (other_path, other) in &shipped[index + 1..] {
            let pair = format!("{} and {}", path.display(), other_path.display());
            assert_ne!(lab.name, other.name, "{pair}");
            for mine in ranges(lab) {
                for theirs in ranges(other) {
                    let apart = !mine.contains(&theirs.network()) && !theirs.contains(&mine.network());
                    assert!(apart, "{pair}: {mine} overlaps {theirs}");
                }
            }
        }
    }
}

/// `examples/twin-lab.toml` is the default lab under another name and other ranges:
/// moved back onto lab.toml's name and ranges it is lab.toml, node for node, so every
/// fault and check that applies to one applies to the other.
#[test]
fn the_twin_lab_is_the_default_lab_under_another_name_and_ranges() {
    let default = load_clean(&repo_root().join("lab.toml"));
    let twin = load_clean(&repo_root().join("examples/twin-lab.toml"));
    let moved = |address: std::net::Ipv4Addr, from: ipnet::Ipv4Net, to: ipnet::Ipv4Net| {
        assert!(from.contains(&address), "{address} is outside {from}");
        std::net::Ipv4Addr::from(u32::from(to.network()) + (u32::from(address) - u32::from(from.network())))
    };
    let (from, to) = (twin.network.clone(), default.network.clone());
    let mut back = twin.clone();
    back.name = default.name.clone();
    back.network.node_subnet = to.node_subnet;
    back.network.gateway = moved(from.gateway, from.node_subnet, to.node_subnet);
    back.network.vip = moved(from.vip, from.node_subnet, to.node_subnet);
    back.network.pod_cidr = to.pod_cidr;
    back.network.service_cidr = to.service_cidr;
    back.network.cluster_dns = moved(from.cluster_dns, from.service_cidr, to.service_cidr);
    for node in &mut back.nodes {
        node.address = moved(node.address, from.node_subnet, to.node_subnet);
    }
    assert_eq!(from.pod_cidr.prefix_len(), to.pod_cidr.prefix_len());
    assert_eq!(from.service_cidr.prefix_len(), to.service_cidr.prefix_len());
    assert_eq!(from.node_subnet.prefix_len(), to.node_subnet.prefix_len());
    assert_eq!(back, default);
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_path() {
    let path = repo_root().join("no-such-topology.toml");
    let error = Topology::load(&path).expect_err("the file does not exist");
    assert!(matches!(error, TopologyError::Read { .. }), "{error:?}");
    assert_mentions(&error.to_string(), &["cannot read topology", "no-such-topology.toml"]);
}

// ---- Syntax and schema errors (reported by the TOML parser, with a line number) ----------

#[test]
fn broken_toml_names_the_line() {
    let message = syntax_error(&edit("[[node]]\nname = \"worker1\"", "[[node]\nname = \"worker1\""));
    assert_mentions(&message, &["invalid topology lab.toml: line 16, column 7", "invalid table header", "[[node]"]);

    let message = syntax_error(&edit("gateway = \"10.240.0.1\"", "gateway = \"10.240.0.1"));
    assert_mentions(&message, &["line 5,", "gateway = \"10.240.0.1"]);
}

#[test]
fn unknown_key_at_top_level_is_named_with_its_line() {
    let message = syntax_error(&edit("name = \"t\"", "name = \"t\"\nnmae = \"x\""));
    assert_mentions(&message, &["line 2, column 1, nmae:", "unknown field `nmae`", "expected one of `name`"]);
}

#[test]
fn unknown_key_in_network_is_named_with_its_table() {
    let message = syntax_error(&edit("vip = ", "vip_address = \"10.240.0.100\"\nvip = "));
    assert_mentions(&message, &["line 6, column 1, network.vip_address:", "unknown field `vip_address`"]);
}

#[test]
fn unknown_key_in_a_node_is_named_with_the_node_index() {
    let message = syntax_error(&edit("roles = [\"worker\"]", "roles = [\"worker\"]\nrole = \"worker\""));
    assert_mentions(&message, &["line 20, column 1, node[1].role:", "unknown field `role`", "`roles`"]);
}

#[test]
fn unknown_keys_in_the_other_tables_are_named() {
    for (table, key, field) in [
        ("[machines]", "backnd = \"nspawn\"", "machines.backnd"),
        ("[kubernetes]", "verison = \"1.20.2\"", "kubernetes.verison"),
        ("[addons]", "dns_kind = \"coredns\"", "addons.dns_kind"),
    ] {
        let message = syntax_error(&edit("name = \"t\"\n", &format!("name = \"t\"\n{table}\n{key}\n")));
        assert_mentions(&message, &["line 3, column 1", field, "unknown field"]);
    }
    let message =
        syntax_error(&edit("roles = [\"worker\"]", "roles = [\"worker\"]\nresources = { cpus = 2, ram = 4 }"));
    assert_mentions(&message, &["line 20", "node[1].resources:", "unknown field `ram`", "`memory_mib`"]);
}

#[test]
fn a_missing_required_field_names_the_table() {
    let message = syntax_error(&edit("vip = \"10.240.0.100\"\n", ""));
    assert_mentions(&message, &["line 3, column 1, network:", "missing field `vip`"]);
}

#[test]
fn an_address_that_is_not_an_ip_names_the_key() {
    let message = syntax_error(&edit("\"10.240.0.21\"", "\"10.240.0.x\""));
    assert_mentions(
        &message,
        &["line 18, column 11, node[1].address:", "\"10.240.0.x\" is not an IPv4 address", "address = \"10.240.0.x\""],
    );

    for (field, from) in [
        ("network.gateway", "\"10.240.0.1\""),
        ("network.vip", "\"10.240.0.100\""),
        ("network.cluster_dns", "\"10.32.0.10\""),
    ] {
        let message = syntax_error(&edit(from, "\"10.240.0.256\""));
        assert_mentions(&message, &[field, "\"10.240.0.256\" is not an IPv4 address"]);
    }
}

#[test]
fn malformed_cidrs_name_the_field_and_the_value() {
    for (field, from, line) in [
        ("network.node_subnet", "\"10.240.0.0/24\"", 4),
        ("network.pod_cidr", "\"10.200.0.0/16\"", 7),
        ("network.service_cidr", "\"10.32.0.0/24\"", 8),
    ] {
        let message = syntax_error(&edit(from, "\"10.0.0.0/33\""));
        let place = format!("line {line}, column");
        assert_mentions(&message, &[&place, field, "\"10.0.0.0/33\" is not a CIDR", "prefix length \"33\""]);

        let message = syntax_error(&edit(from, "\"banana\""));
        assert_mentions(&message, &[&place, field, "\"banana\" is not a CIDR", "ADDRESS/PREFIX"]);

        let message = syntax_error(&edit(from, "\"10.0.0/16\""));
        assert_mentions(&message, &[field, "\"10.0.0\" is not an IPv4 address"]);
    }
}

#[test]
fn an_unknown_role_names_the_variant() {
    let message = syntax_error(&edit("[\"worker\"]", "[\"wroker\"]"));
    assert_mentions(
        &message,
        &["line 19, column 10, node[1].roles:", "unknown variant `wroker`", "`etcd`, `master`, `lb`, `worker`"],
    );
}

#[test]
fn an_invalid_node_port_range_names_the_field() {
    for range in ["32767-30000", "0-100", "30000", "30000-99999", "low-high"] {
        let message = syntax_error(&edit("cluster_dns", &format!("node_port_range = \"{range}\"\ncluster_dns")));
        assert_mentions(&message, &["line 9, column 19, network.node_port_range:", &format!("{range:?}")]);
    }
}

// ---- Validation rules (every problem collected, each naming field and value) -------------

#[test]
fn problems_are_all_reported_at_once() {
    let text =
        edits(&[("\"10.240.0.21\"", "\"10.9.9.9\""), ("cluster_dns = \"10.32.0.10\"", "cluster_dns = \"10.33.0.10\"")]);
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_problem(
        &found[0],
        "network.cluster_dns",
        "\"10.33.0.10\"",
        "lies outside network.service_cidr 10.32.0.0/24",
    );
    assert_problem(&found[1], "node[1].address", "\"10.9.9.9\"", "lies outside network.node_subnet 10.240.0.0/24");

    let message = parse(&text).expect_err("two problems").to_string();
    assert_eq!(
        message,
        "invalid topology lab.toml:\n  \
         - network.cluster_dns = \"10.33.0.10\": lies outside network.service_cidr 10.32.0.0/24\n  \
         - node[1].address = \"10.9.9.9\": lies outside network.node_subnet 10.240.0.0/24"
    );
}

#[test]
fn duplicate_node_names_are_refused() {
    assert_only_problem(
        &edit("name = \"worker1\"", "name = \"master1\""),
        "node[1].name",
        "\"master1\"",
        "is already used by node[0] (master1)",
    );
}

#[test]
fn an_alias_may_not_repeat_a_name() {
    assert_only_problem(
        &edit("roles = [\"worker\"]", "roles = [\"worker\"]\naliases = [\"master1\"]"),
        "node[1].aliases",
        "\"master1\"",
        "is already used by node[0] (master1)",
    );
}

#[test]
fn duplicate_node_addresses_are_refused() {
    assert_only_problem(
        &edit("\"10.240.0.21\"", "\"10.240.0.11\""),
        "node[1].address",
        "\"10.240.0.11\"",
        "is already used by node[0] (master1)",
    );
}

#[test]
fn a_node_address_outside_the_node_subnet_is_refused() {
    assert_only_problem(
        &edit("\"10.240.0.21\"", "\"10.9.9.9\""),
        "node[1].address",
        "\"10.9.9.9\"",
        "lies outside network.node_subnet 10.240.0.0/24",
    );
}

#[test]
fn a_node_address_must_be_a_host_address_of_the_subnet() {
    for (address, message) in
        [("10.240.0.0", "is the network address of"), ("10.240.0.255", "is the broadcast address of")]
    {
        assert_only_problem(
            &edit("\"10.240.0.21\"", &format!("{address:?}")),
            "node[1].address",
            &format!("{address:?}"),
            &format!("{message} network.node_subnet 10.240.0.0/24"),
        );
    }
}

#[test]
fn a_node_address_may_not_be_the_gateway_or_the_vip() {
    assert_only_problem(
        &edit("\"10.240.0.21\"", "\"10.240.0.1\""),
        "node[1].address",
        "\"10.240.0.1\"",
        "equals network.gateway",
    );
    assert_only_problem(
        &edit("\"10.240.0.21\"", "\"10.240.0.100\""),
        "node[1].address",
        "\"10.240.0.100\"",
        "equals network.vip",
    );
}

#[test]
fn the_vip_must_lie_inside_the_node_subnet() {
    assert_only_problem(
        &edit("\"10.240.0.100\"", "\"10.241.0.100\""),
        "network.vip",
        "\"10.241.0.100\"",
        "lies outside network.node_subnet 10.240.0.0/24",
    );
}

#[test]
fn the_gateway_must_lie_inside_the_node_subnet() {
    assert_only_problem(
        &edit("\"10.240.0.1\"", "\"192.168.1.1\""),
        "network.gateway",
        "\"192.168.1.1\"",
        "lies outside network.node_subnet 10.240.0.0/24",
    );
}

#[test]
fn the_vip_may_not_be_the_gateway() {
    assert_only_problem(
        &edit("\"10.240.0.100\"", "\"10.240.0.1\""),
        "network.vip",
        "\"10.240.0.1\"",
        "equals network.gateway",
    );
}

#[test]
fn a_cidr_with_host_bits_suggests_the_network() {
    assert_only_problem(
        &edit("\"10.32.0.0/24\"", "\"10.32.0.5/24\""),
        "network.service_cidr",
        "\"10.32.0.5/24\"",
        "has host bits set; did you mean 10.32.0.0/24?",
    );
}

#[test]
fn the_pod_cidr_may_not_overlap_the_node_subnet() {
    assert_only_problem(
        &edit("\"10.200.0.0/16\"", "\"10.240.0.0/16\""),
        "network.pod_cidr",
        "\"10.240.0.0/16\"",
        "overlaps network.node_subnet 10.240.0.0/24",
    );
}

#[test]
fn the_service_cidr_may_not_overlap_the_node_subnet() {
    let text = edits(&[("\"10.32.0.0/24\"", "\"10.240.0.0/16\""), ("\"10.32.0.10\"", "\"10.240.1.10\"")]);
    assert_only_problem(
        &text,
        "network.service_cidr",
        "\"10.240.0.0/16\"",
        "overlaps network.node_subnet 10.240.0.0/24",
    );
}

#[test]
fn the_service_cidr_may_not_overlap_the_pod_cidr() {
    let text = edits(&[("\"10.32.0.0/24\"", "\"10.200.7.0/24\""), ("\"10.32.0.10\"", "\"10.200.7.10\"")]);
    assert_only_problem(&text, "network.service_cidr", "\"10.200.7.0/24\"", "overlaps network.pod_cidr 10.200.0.0/16");
}

#[test]
fn the_cluster_dns_must_lie_inside_the_service_cidr() {
    assert_only_problem(
        &edit("\"10.32.0.10\"", "\"10.32.1.10\""),
        "network.cluster_dns",
        "\"10.32.1.10\"",
        "lies outside network.service_cidr 10.32.0.0/24",
    );
}

#[test]
fn the_cluster_dns_may_not_take_the_kubernetes_service_ip() {
    assert_only_problem(
        &edit("\"10.32.0.10\"", "\"10.32.0.1\""),
        "network.cluster_dns",
        "\"10.32.0.1\"",
        "is the first service IP",
    );
}

#[test]
fn a_lab_without_nodes_is_refused() {
    let text = BASE.split("[[node]]").next().expect("BASE has a network part").to_string();
    assert_only_problem(&text, "node", "[]", "the lab has no node");
}

#[test]
fn a_lab_needs_an_etcd_member() {
    assert_only_problem(
        &edit("[\"etcd\", \"master\", \"lb\"]", "[\"master\", \"lb\"]"),
        "node[*].roles",
        "(no node has etcd)",
        "the lab needs at least one etcd member",
    );
}

#[test]
fn an_even_etcd_count_is_a_warning_not_an_error() {
    let validated = parse(&edit("[\"worker\"]", "[\"etcd\", \"worker\"]")).expect("an even count is allowed");
    assert_eq!(validated.warnings.len(), 1, "{:#?}", validated.warnings);
    assert_problem(&validated.warnings[0], "node[*].roles", "(2 etcd members)", "tolerates no more failures than 1");
}

#[test]
fn a_lab_needs_a_master() {
    assert_only_problem(
        &edit("[\"etcd\", \"master\", \"lb\"]", "[\"etcd\"]"),
        "node[*].roles",
        "(no node has master)",
        "the lab needs at least one master",
    );
}

#[test]
fn a_lab_needs_a_worker() {
    assert_only_problem(
        &edit("[\"worker\"]", "[\"etcd\"]"),
        "node[*].roles",
        "(no node has worker)",
        "the lab needs at least one worker",
    );
}

#[test]
fn a_lab_with_masters_needs_an_lb_node_for_the_vip() {
    assert_only_problem(
        &edit("[\"etcd\", \"master\", \"lb\"]", "[\"etcd\", \"master\"]"),
        "node[*].roles",
        "(no node has lb)",
        "at least one lb node to carry network.vip",
    );
}

#[test]
fn lb_without_master_on_the_same_node_is_refused() {
    assert_only_problem(
        &edit("[\"worker\"]", "[\"worker\", \"lb\"]"),
        "node[1].roles",
        "[\"worker\", \"lb\"]",
        "lb needs master on the same node",
    );
}

#[test]
fn a_node_without_roles_is_refused() {
    let found = problems(&edit("[\"worker\"]", "[]"));
    assert_problem(&found[0], "node[1].roles", "[]", "a node needs at least one of etcd, master, lb, worker");
    assert_problem(&found[1], "node[*].roles", "(no node has worker)", "at least one worker");
}

#[test]
fn source_dir_needs_a_dir() {
    let with_source = |lines: &str| edit("name = \"t\"\n", &format!("name = \"t\"\n[kubernetes]\n{lines}\n"));
    assert_only_problem(
        &with_source("source = \"dir\""),
        "kubernetes.dir",
        "(missing)",
        "is required when kubernetes.source = \"dir\"",
    );
    let validated = parse(&with_source("source = \"dir\"\ndir = \"/opt/kubernetes/bin\"")).expect("dir is given");
    assert_eq!(validated.topology.kubernetes.dir, Some(PathBuf::from("/opt/kubernetes/bin")));
}

#[test]
fn the_kubernetes_version_has_three_numbers_and_no_v() {
    for version in ["v1.20.2", "1.20", "1.20.x"] {
        let text = edit("name = \"t\"\n", &format!("name = \"t\"\n[kubernetes]\nversion = \"{version}\"\n"));
        assert_only_problem(&text, "kubernetes.version", &format!("{version:?}"), "must be MAJOR.MINOR.PATCH");
    }
}

#[test]
fn the_lab_name_is_short_and_lowercase() {
    for name in ["toolongname", "Lab", "", "-x"] {
        assert_only_problem(
            &edit("name = \"t\"", &format!("name = {name:?}")),
            "name",
            &format!("{name:?}"),
            "1-8 lowercase",
        );
    }
}

#[test]
fn node_names_and_aliases_are_dns_labels() {
    assert_only_problem(&edit("\"worker1\"", "\"Worker_1\""), "node[1].name", "\"Worker_1\"", "lowercase DNS label");
    assert_only_problem(
        &edit("roles = [\"worker\"]", "roles = [\"worker\"]\naliases = [\"etcd.1\"]"),
        "node[1].aliases",
        "\"etcd.1\"",
        "lowercase DNS label",
    );
}

#[test]
fn the_cluster_domain_is_a_dns_name() {
    let text = edit("cluster_dns", "cluster_domain = \"Cluster..local\"\ncluster_dns");
    assert_only_problem(&text, "network.cluster_domain", "\"Cluster..local\"", "must be a DNS name");
}

#[test]
fn api_ports_stay_out_of_the_node_port_range_and_apart() {
    let text = edit("cluster_dns", "api_port = 30080\ncluster_dns");
    assert_only_problem(&text, "network.api_port", "30080", "lies inside network.node_port_range 30000-32767");

    let text = edit("cluster_dns", "api_port = 6443\ncluster_dns");
    assert_only_problem(&text, "network.api_port", "6443", "must differ from network.apiserver_port");

    let text = edit("cluster_dns", "apiserver_port = 0\ncluster_dns");
    assert_only_problem(&text, "network.apiserver_port", "0", "must be a port number from 1 to 65535");
}

#[test]
fn small_ranges_are_refused() {
    let text = edits(&[
        ("\"10.240.0.0/24\"", "\"10.240.0.0/30\""),
        ("\"10.240.0.1\"", "\"10.240.0.2\""),
        ("\"10.240.0.100\"", "\"10.240.0.1\""),
    ]);
    let found = problems(&text);
    assert_problem(&found[0], "network.node_subnet", "\"10.240.0.0/30\"", "is too small");

    assert_only_problem(
        &edit("\"10.200.0.0/16\"", "\"10.200.0.0/24\""),
        "network.pod_cidr",
        "\"10.200.0.0/24\"",
        "must hold at least two /24 node ranges",
    );

    let three_workers = edit(
        "roles = [\"worker\"]",
        "roles = [\"worker\"]\n\n[[node]]\nname = \"worker2\"\naddress = \"10.240.0.22\"\nroles = [\"worker\"]\n\n\
         [[node]]\nname = \"worker3\"\naddress = \"10.240.0.23\"\nroles = [\"worker\"]",
    );
    let text = three_workers.replace("\"10.200.0.0/16\"", "\"10.200.0.0/23\"");
    assert_only_problem(
        &text,
        "network.pod_cidr",
        "\"10.200.0.0/23\"",
        "holds 2 node /24 ranges but the lab has 3 workers",
    );
}

#[test]
fn a_sub_table_of_a_node_is_named_with_the_node_index() {
    let text = edit("roles = [\"worker\"]", "roles = [\"worker\"]\n\n[node.resources] # sizing\ncpus = 2\nram = 4");
    let message = syntax_error(&text);
    assert_mentions(&message, &["line 23, column 1, node[1].resources.ram:", "unknown field `ram`"]);
}

#[test]
fn a_vagrant_box_must_be_a_box_name_and_is_for_the_vagrant_backend() {
    let vagrant = |name: &str| {
        edit("name = \"t\"\n", &format!("name = \"t\"\n[machines]\nbackend = \"vagrant\"\nvagrant_box = \"{name}\"\n"))
    };
    let valid = parse(&vagrant("debian/bookworm64")).expect("a valid box name");
    assert_eq!(valid.topology.machines.vagrant_box.as_deref(), Some("debian/bookworm64"));
    assert!(valid.warnings.is_empty(), "{:?}", valid.warnings);
    assert_only_problem(
        &vagrant("a box"),
        "machines.vagrant_box",
        "\"a box\"",
        "must be a Vagrant box name such as \"NAME\" or \"ORGANISATION/NAME\"",
    );
    let elsewhere = edit("name = \"t\"\n", "name = \"t\"\n[machines]\nvagrant_box = \"debian/bookworm64\"\n");
    let warnings = parse(&elsewhere).expect("only a warning").warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_problem(
        &warnings[0],
        "machines.vagrant_box",
        "\"debian/bookworm64\"",
        "is used by the vagrant backend only; the nspawn backend ignores it",
    );
}
