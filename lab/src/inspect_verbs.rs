//! `lab check STAGE` and `lab diff [STAGE]`: how the running lab stands against its
//! plan, for a learner doing a chapter by hand. `check` compares every node of the
//! chapter with the plan and runs the chapter's checks once, and prints PASS or FAIL
//! per node with what is wrong and where to look; `diff` only compares, for one chapter
//! or all. Neither changes anything. Both exit 1 when something differs or fails, as
//! diff(1) does when files differ.

use anyhow::{anyhow, Context as _};
use provisioner::executor::Difference;
use provisioner::lab::StageInspection;
use provisioner::plan::Stage;

use crate::{Exit, Failure, Paths};

/// `lab check STAGE [--node NODE] [--json]`.
pub fn check(paths: &Paths, stage: Stage, node: Option<&str>, json: bool) -> Result<(), Failure> {
    let lab = crate::fault_verbs::existing(paths)?;
    let inspections = lab.inspect(&[stage], node, true)?;
    let passed = inspections.iter().all(StageInspection::passed);
    if json {
        print_json(&inspections)?;
    } else {
        crate::machine_verbs::print_stdout(&check_text(&inspections, node))?;
    }
    if passed {
        Ok(())
    } else {
        Err(Failure {
            exit: Exit::Failure,
            error: anyhow!("{stage} does not pass on {}", failing_nodes(&inspections).join(", ")),
        })
    }
}

/// `lab diff [STAGE] [--node NODE] [--json]`.
pub fn diff(paths: &Paths, stage: Option<Stage>, node: Option<&str>, json: bool) -> Result<(), Failure> {
    let lab = crate::fault_verbs::existing(paths)?;
    let stages: Vec<Stage> = match stage {
        Some(stage) => vec![stage],
        None => Stage::ALL.to_vec(),
    };
    let inspections = lab.inspect(&stages, node, false)?;
    let same = inspections.iter().all(StageInspection::passed);
    if json {
        print_json(&inspections)?;
    } else {
        crate::machine_verbs::print_stdout(&diff_text(&inspections))?;
    }
    if same {
        Ok(())
    } else {
        Err(Failure {
            exit: Exit::Failure,
            error: anyhow!("the lab differs from its plan on {}", failing_nodes(&inspections).join(", ")),
        })
    }
}

/// `lab plan --diff`: what `lab up` with this topology file would change on the lab
/// of the state directory, changing nothing.
pub fn plan_diff(paths: &Paths, json: bool) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    let diff = lab.plan_diff()?;
    if json {
        crate::machine_verbs::print_stdout(&serde_json::to_string_pretty(&diff).context("serialize the change")?)?;
    } else {
        crate::machine_verbs::print_stdout(&plan_diff_text(&diff))?;
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(Failure { exit: Exit::Failure, error: anyhow!("`lab up` would change the lab (see above)") })
    }
}

fn plan_diff_text(diff: &provisioner::lab::PlanDiff) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if let Some(reason) = &diff.refused {
        let _ = writeln!(text, "`lab up` would refuse this topology: {reason}");
        return text.trim_end().to_string();
    }
    for node in &diff.added {
        let _ = writeln!(text, "add {node}: a new machine, its certificates issued, joins as a worker");
    }
    for node in &diff.removed {
        let _ = writeln!(text, "remove {node}: drained, deleted from the API, its machine and certificates removed");
    }
    if diff.stages.is_empty() {
        if text.is_empty() {
            return "`lab up` would change nothing: every node matches the plan".to_string();
        }
    } else {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&diff_text(&diff.stages));
    }
    text.trim_end().to_string()
}

fn print_json(inspections: &[StageInspection]) -> Result<(), Failure> {
    crate::machine_verbs::print_stdout(&serde_json::to_string_pretty(inspections).context("serialize the inspection")?)
}

/// `NODE (STAGE)` for every node that differs or failed a check.
fn failing_nodes(inspections: &[StageInspection]) -> Vec<String> {
    inspections
        .iter()
        .flat_map(|inspection| {
            inspection
                .nodes
                .iter()
                .filter(|node| !node.passed())
                .map(move |node| format!("{} ({})", node.node, inspection.stage))
        })
        .collect()
}

/// Per node of the chapter: PASS, or FAIL with each difference and failed check, each
/// with a hint; then what to do next.
fn check_text(inspections: &[StageInspection], node: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for inspection in inspections {
        let stage = inspection.stage;
        if inspection.nodes.is_empty() {
            let _ = writeln!(text, "{stage} does nothing on {}: nothing to check", node.unwrap_or("any node"));
            continue;
        }
        for node in &inspection.nodes {
            let verdict = if node.passed() { "PASS" } else { "FAIL" };
            let _ = writeln!(text, "{verdict} {stage} on {}", node.node);
            for difference in &node.differences {
                let _ = writeln!(text, "  - {difference}");
                let _ = writeln!(text, "    hint: {}", hint(stage, &node.node, difference));
            }
            for check in &node.checks {
                let mark = if check.passed { "pass" } else { "FAIL" };
                let _ = writeln!(text, "  {mark}: {}", check.description);
                for line in check.output.lines() {
                    let _ = writeln!(text, "      | {line}");
                }
            }
        }
        if !inspection.passed() {
            let _ = writeln!(
                text,
                "\n`lab explain {stage}` shows what the chapter plans on each node and the commands of its \
                 checks; `lab up --until {stage}` makes the lab match it."
            );
        }
    }
    text.trim_end().to_string()
}

/// Only the differences: a line per node that differs, none for one that matches.
fn diff_text(inspections: &[StageInspection]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for inspection in inspections {
        for node in inspection.nodes.iter().filter(|node| !node.differences.is_empty()) {
            let _ = writeln!(text, "{} on {}:", inspection.stage, node.node);
            for difference in &node.differences {
                let _ = writeln!(text, "  - {difference}");
            }
        }
    }
    if text.is_empty() {
        return "no node differs from the plan".to_string();
    }
    text.push_str("\n`lab render DIR` writes every planned file under DIR/NODE/ to compare with.");
    text
}

/// Where a learner looks next for one difference.
fn hint(stage: Stage, node: &str, difference: &Difference) -> String {
    match difference {
        Difference::MissingFile { path } | Difference::Content { path }
            if path.ends_with(".pem") && !path.ends_with("-key.pem") =>
        {
            format!(
                "`lab ssh {node} -- openssl x509 -noout -subject -ext subjectAltName -in {path}` shows its \
                 names; `lab plan --json` lists the planned subject and SANs"
            )
        }
        Difference::MissingFile { path } | Difference::Content { path } => {
            format!("`lab render DIR` writes the planned file to DIR/{node}{path}")
        }
        Difference::Mode { path, planned, .. } => format!("`lab ssh {node} -- chmod {planned} {path}`"),
        Difference::Owner { path, planned, .. } => format!("`lab ssh {node} -- chown {planned} {path}`"),
        Difference::UnitNotActive { unit, .. } => {
            format!("`lab logs {node} --unit {unit}` shows why; `lab ssh {node} -- systemctl start {unit}` starts it")
        }
        Difference::Interrupted => format!("`lab up --until {stage}` finishes the stage"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioner::executor::{CheckOutcome, NodeInspection};

    fn node(name: &str, differences: Vec<Difference>, checks: Vec<CheckOutcome>) -> NodeInspection {
        NodeInspection { node: name.to_string(), differences, checks }
    }

    fn inspections() -> Vec<StageInspection> {
        vec![StageInspection {
            stage: Stage::Etcd,
            nodes: vec![
                node(
                    "master1",
                    Vec::new(),
                    vec![CheckOutcome { description: "etcd is healthy".into(), passed: true, output: String::new() }],
                ),
                node(
                    "master2",
                    vec![
                        Difference::UnitNotActive { unit: "etcd.service".into(), state: "inactive".into() },
                        Difference::Content { path: "/etc/etcd/pki/server.pem".into() },
                        Difference::Mode {
                            path: "/etc/etcd/pki/server-key.pem".into(),
                            planned: "0600".into(),
                            found: "0644".into(),
                        },
                    ],
                    vec![CheckOutcome {
                        description: "etcd is healthy".into(),
                        passed: false,
                        output: "connection refused".into(),
                    }],
                ),
            ],
        }]
    }

    #[test]
    fn check_names_each_node_what_differs_and_the_failed_checks_with_hints() {
        let text = check_text(&inspections(), None);
        assert!(text.starts_with("PASS etcd on master1\n  pass: etcd is healthy\nFAIL etcd on master2\n"), "{text}");
        assert!(text
            .contains("  - etcd.service is not running (inactive)\n    hint: `lab logs master2 --unit etcd.service`"));
        assert!(text.contains("hint: `lab ssh master2 -- openssl x509 -noout -subject -ext subjectAltName -in /etc/etcd/pki/server.pem`"), "{text}");
        assert!(text.contains("hint: `lab ssh master2 -- chmod 0600 /etc/etcd/pki/server-key.pem`"), "{text}");
        assert!(text.contains("  FAIL: etcd is healthy\n      | connection refused"), "{text}");
        assert!(text.contains("`lab explain etcd`"), "{text}");
        assert_eq!(failing_nodes(&inspections()), ["master2 (etcd)"]);
    }

    #[test]
    fn diff_lists_only_the_nodes_that_differ_or_says_the_lab_matches() {
        let text = diff_text(&inspections());
        assert!(text.starts_with("etcd on master2:\n  - etcd.service is not running (inactive)\n"), "{text}");
        assert!(!text.contains("master1"), "{text}");
        let matching =
            vec![StageInspection { stage: Stage::Etcd, nodes: vec![node("master1", Vec::new(), Vec::new())] }];
        assert_eq!(diff_text(&matching), "no node differs from the plan");
    }

    #[test]
    fn a_chapter_without_work_on_the_node_says_so() {
        let empty = vec![StageInspection { stage: Stage::Etcd, nodes: Vec::new() }];
        assert_eq!(check_text(&empty, Some("worker1")), "etcd does nothing on worker1: nothing to check");
    }
}
