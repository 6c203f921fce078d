use std::collections::BTreeSet;

use super::*;
use crate::plan::{Content, StagePlan};
use crate::stages::test_support;

fn default_lab() -> Topology {
    test_support::topology("lab.toml")
}

fn plan_of(topology: &Topology) -> Vec<StagePlan> {
    Stage::ALL.iter().map(|stage| test_support::stage_for_topology(topology, *stage)).collect()
}

fn nodes_of<'a>(fault: &Fault, topology: &'a Topology) -> Vec<&'a Node> {
    match fault.targets(topology, None).expect("the fault applies to the default lab") {
        Targets::Nodes(nodes) => nodes,
        Targets::FirstOf { candidates, .. } => vec![candidates[0]],
    }
}

#[test]
fn the_catalogue_has_at_least_twenty_faults_with_unique_kebab_case_names() {
    assert!(CATALOGUE.len() >= 20, "{} faults", CATALOGUE.len());
    let mut seen = BTreeSet::new();
    for fault in CATALOGUE {
        assert!(seen.insert(fault.name), "{} twice", fault.name);
        assert!(
            fault.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{} is not kebab case",
            fault.name
        );
        assert!(!fault.breaks.is_empty(), "{} breaks no test", fault.name);
        for test in fault.breaks {
            let (binary, name) = test.split_once("::").unwrap_or_else(|| panic!("{test}: not BINARY::TEST"));
            assert!(!binary.is_empty() && !name.is_empty() && !name.contains("::"), "{test}");
        }
    }
}

#[test]
fn one_node_faults_default_to_the_last_node_and_name_the_valid_ones_for_a_wrong_node() {
    let topology = default_lab();
    let fault = find("kubelet-read-only-port").unwrap();
    assert_eq!(fault.targets(&topology, None).unwrap(), Targets::Nodes(vec![topology.node("worker2").unwrap()]));
    assert_eq!(
        fault.targets(&topology, Some("worker1")).unwrap(),
        Targets::Nodes(vec![topology.node("worker1").unwrap()])
    );
    let error = fault.targets(&topology, Some("master1")).unwrap_err().to_string();
    assert_eq!(
        error,
        "fault kubelet-read-only-port applies to worker nodes; \"master1\" is not one: pick one of worker1, worker2"
    );
}

#[test]
fn faults_on_every_node_or_the_cluster_take_no_node() {
    let topology = default_lab();
    let error = find("keepalived-stopped").unwrap().targets(&topology, Some("master1")).unwrap_err();
    assert_eq!(error.to_string(), "fault keepalived-stopped acts on every lb node, so it takes no --node");
    let error = find("dns-scaled-to-zero").unwrap().targets(&topology, Some("master1")).unwrap_err();
    assert!(matches!(error, FaultError::NodeNotTaken { .. }), "{error}");
}

#[test]
fn an_unknown_fault_lists_the_catalogue() {
    let error = find("nope").unwrap_err().to_string();
    assert!(error.starts_with("no fault \"nope\"; `lab faults` lists them: etcd-member-stopped, "), "{error}");
}

#[test]
fn faults_that_need_more_nodes_do_not_apply_to_the_minimal_lab() {
    let topology = test_support::topology("examples/minimal.toml");
    let error = find("etcd-quorum-lost").unwrap().targets(&topology, None).unwrap_err();
    assert!(matches!(error, FaultError::NotApplicable { needs: 3, has: 1, .. }), "{error}");
    let error = find("pod-route-deleted").unwrap().targets(&topology, None).unwrap_err();
    assert!(matches!(error, FaultError::NotApplicable { needs: 2, has: 1, .. }), "{error}");
}

/// Every guard `grep -qF -- 'TEXT' FILE` in a fault's scripts names text that the
/// plan really writes into FILE on that node: a fault edits the lab's own files, so
/// a change of the plan that a fault no longer matches fails here, not at `lab break`.
#[test]
fn every_text_a_fault_edits_is_in_the_planned_file_it_edits() {
    for file in ["lab.toml", "examples/separate-etcd.toml"] {
        let topology = test_support::topology(file);
        let plan = plan_of(&topology);
        let context = FaultContext::new(&topology, CLUSTER_CA_PEM.to_string());
        for fault in CATALOGUE {
            let nodes = nodes_of(fault, &topology);
            for step in fault.inject_steps(&context, &nodes) {
                for (text, path) in guards(&step.script) {
                    let planned = plan
                        .iter()
                        .flat_map(|stage| &stage.nodes)
                        .filter(|actions| actions.node == step.node)
                        .flat_map(|actions| &actions.files)
                        .find(|planned| planned.path == path)
                        .unwrap_or_else(|| panic!("{file}: {}: {path} is not planned on {}", fault.name, step.node));
                    let Content::Text(content) = &planned.content else { panic!("{path} is not text") };
                    assert!(content.contains(&text), "{file}: {}: {path} on {} has no {text:?}", fault.name, step.node);
                }
            }
        }
    }
}

/// `(TEXT, FILE)` of every `grep -qF -- 'TEXT' FILE` in a script.
fn guards(script: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = script;
    while let Some(start) = rest.find("grep -qF -- '") {
        let after = &rest[start + "grep -qF -- '".len()..];
        let end = after.find('\'').expect("a closing quote");
        let text = after[..end].to_string();
        let path = after[end + 1..].split_whitespace().next().unwrap_or_default().to_string();
        found.push((text, path));
        rest = &after[end..];
    }
    found
}

#[test]
fn every_fault_makes_its_scripts_for_the_default_lab_and_only_for_its_nodes() {
    let topology = default_lab();
    let context = FaultContext::new(&topology, CLUSTER_CA_PEM.to_string());
    let names: BTreeSet<&str> = topology.nodes.iter().map(|node| node.name.as_str()).collect();
    for fault in CATALOGUE {
        let nodes = nodes_of(fault, &topology);
        let inject = fault.inject_steps(&context, &nodes);
        assert!(!inject.is_empty(), "{} injects nothing", fault.name);
        for step in inject
            .iter()
            .chain(&fault.undo_steps(&context, &nodes))
            .chain(&fault.in_force_steps(&context, &nodes))
            .chain(&fault.healed_steps(&context, &nodes))
        {
            assert!(names.contains(step.node.as_str()), "{}: a step on {}", fault.name, step.node);
            assert!(!step.script.trim().is_empty(), "{}: an empty script", fault.name);
        }
        assert!(!fault.summary_for(&nodes).contains("{nodes}"), "{}", fault.name);
    }
}

#[test]
fn the_ghost_member_gets_an_address_that_nothing_in_the_lab_has() {
    let topology = default_lab();
    let context = FaultContext::new(&topology, CLUSTER_CA_PEM.to_string());
    let ghost = catalogue_ghost(&context);
    assert!(topology.network.node_subnet.contains(&ghost));
    assert!(topology.nodes.iter().all(|node| node.address != ghost));
    assert_ne!(ghost, topology.network.vip);
    assert_ne!(ghost, topology.network.gateway);
}

fn catalogue_ghost(context: &FaultContext) -> Ipv4Addr {
    let fault = find("etcd-ghost-member").unwrap();
    let nodes = nodes_of(fault, context.topology);
    let script = &fault.inject_steps(context, &nodes)[0].script;
    let url = script.split("--peer-urls=https://").nth(1).expect("a peer URL");
    url.split(':').next().unwrap().parse().expect("an address")
}

#[test]
fn a_poll_is_bounded_in_count_and_says_what_did_not_hold() {
    let script = poll_script("test -e /x", Duration::from_secs(60));
    assert!(script.contains("-lt 120"), "{script}");
    assert!(script.contains("still not true after 60 s: test -e /x"), "{script}");
}

/// What the faults get as the cluster CA's certificate: only its place in a script matters.
const CLUSTER_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

/// A fault proven while others are in force must disturb nothing but its property: it
/// acts on one node and names no failover drill (drills stop parts of the lab
/// themselves and need it whole).
#[test]
fn faults_proven_after_others_act_on_one_node_and_name_no_drill() {
    let after_others: Vec<&Fault> = CATALOGUE.iter().filter(|fault| fault.proof == Proof::AfterOthers).collect();
    assert!(!after_others.is_empty());
    for fault in after_others {
        assert!(matches!(fault.scope, Scope::One { .. }), "{} acts on more than one node", fault.name);
        assert!(
            fault.breaks.iter().all(|test| !test.starts_with("failover::")),
            "{} names a failover drill",
            fault.name
        );
    }
}
