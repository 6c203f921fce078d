//! What `lab explain` tells a learner about each handbook chapter, assembled from what
//! the lab already knows: the stage module's own documentation (what the chapter sets up
//! and why, and where the lab departs from the handbook), the plan (the files, units,
//! commands and checks on each node) and the fault catalogue (what can go wrong in it).
//! The prose is the module's `//!` comment itself, so the explanation and the code it
//! explains are read from one place and cannot drift apart. Pure, like the plan.

use serde::Serialize;

use crate::faults::CATALOGUE;
use crate::lab::Probed;
use crate::plan::{Content, Plan, RunWhen, Stage, StagePlan};
use crate::stages;

/// One chapter, as `lab explain STAGE` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chapter {
    /// Its place in handbook order, from 1.
    pub number: usize,
    pub stage: Stage,
    pub handbook_section: &'static str,
    /// The stage module's documentation, block by block.
    pub about: Vec<Block>,
    /// What the chapter does on each node it touches, in topology order.
    pub nodes: Vec<NodeWork>,
    /// The faults of the catalogue that undo this chapter's work.
    pub faults: Vec<FaultLine>,
}

/// A block of the module's documentation: a paragraph or one item of a list, its
/// lines joined into one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "text")]
pub enum Block {
    Paragraph(String),
    ListItem(String),
}

/// What one chapter does on one node, in the order `lab up` does it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeWork {
    pub node: String,
    pub files: Vec<FileLine>,
    pub units: Vec<UnitLine>,
    pub commands: Vec<CommandLine>,
    pub checks: Vec<CheckLine>,
}

/// A planned file without its content: a secret's content is never part of an
/// explanation, only that it is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileLine {
    pub path: String,
    /// The mode in octal, as `ls` and `chmod` write it (`0600`).
    pub mode: String,
    pub owner: String,
    /// A private key, a kubeconfig with one, or another file whose content stays in the
    /// state directory.
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitLine {
    pub name: String,
    /// The files whose change restarts it.
    pub restart_when_changed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLine {
    pub description: String,
    pub script: String,
    pub when: RunWhen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    pub description: String,
    pub script: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultLine {
    pub name: &'static str,
    /// What is wrong, with `NODE` for the node it is on.
    pub summary: String,
    /// What a user of the cluster notices.
    pub symptom: &'static str,
}

/// Where the lab stands in one chapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Standing {
    /// No lab in the state directory: the chapter is the topology file's plan.
    NotBuilt,
    /// Every node the chapter touches holds its record: its checks passed there.
    Done,
    /// `lab up` has not finished it yet.
    Pending,
    /// Faults of the catalogue that undo this chapter are in force (their names).
    Faulty(Vec<String>),
    /// The lab cannot tell (its machines are stopped, a node does not answer), and why.
    Unknown(String),
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Standing::NotBuilt => f.write_str("not built"),
            Standing::Done => f.write_str("done"),
            Standing::Pending => f.write_str("pending"),
            Standing::Faulty(faults) => write!(f, "faulty ({} in force)", faults.join(", ")),
            Standing::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Where a built lab stands in each chapter, in handbook order: `converged` is the last
/// stage every node holds the record of (`lab status`), `in_force` the names of the
/// faults `lab break` injected. A chapter with a fault in force is faulty whatever its
/// records say.
pub fn standings(converged: &Probed<Option<Stage>>, in_force: &[String]) -> Vec<Standing> {
    Stage::ALL
        .iter()
        .map(|stage| {
            let faults: Vec<String> = in_force
                .iter()
                .filter(|name| CATALOGUE.iter().any(|fault| fault.name == name.as_str() && fault.stage == *stage))
                .cloned()
                .collect();
            if !faults.is_empty() {
                return Standing::Faulty(faults);
            }
            match converged {
                Probed::Known(Some(last)) if stage <= last => Standing::Done,
                Probed::Known(_) => Standing::Pending,
                Probed::Unknown(why) => Standing::Unknown(why.clone()),
            }
        })
        .collect()
}

/// Every chapter of `plan`, in handbook order.
pub fn chapters(plan: &Plan) -> Vec<Chapter> {
    plan.stages.iter().map(chapter_of).collect()
}

/// The chapter of `stage` in `plan`.
pub fn chapter(plan: &Plan, stage: Stage) -> Option<Chapter> {
    plan.stages.iter().find(|planned| planned.stage == stage).map(chapter_of)
}

fn chapter_of(planned: &StagePlan) -> Chapter {
    let stage = planned.stage;
    Chapter {
        number: stage.position() + 1,
        stage,
        handbook_section: stage.handbook_section(),
        about: about(stage),
        nodes: planned.nodes.iter().map(node_work).collect(),
        faults: CATALOGUE
            .iter()
            .filter(|fault| fault.stage == stage)
            .map(|fault| FaultLine {
                name: fault.name,
                summary: fault.summary.replace("{nodes}", "NODE"),
                symptom: fault.symptom,
            })
            .collect(),
    }
}

fn node_work(actions: &crate::plan::NodeActions) -> NodeWork {
    NodeWork {
        node: actions.node.clone(),
        files: actions
            .files
            .iter()
            .map(|file| FileLine {
                path: file.path.clone(),
                mode: format!("{:04o}", file.mode),
                owner: file.owner.clone(),
                secret: matches!(file.content, Content::Secret(_)),
            })
            .collect(),
        units: actions
            .units
            .iter()
            .map(|unit| UnitLine { name: unit.name.clone(), restart_when_changed: unit.restart_when_changed.clone() })
            .collect(),
        commands: actions
            .commands
            .iter()
            .map(|command| CommandLine {
                description: command.description.clone(),
                script: command.script.clone(),
                when: command.when,
            })
            .collect(),
        checks: actions
            .checks
            .iter()
            .map(|check| CheckLine {
                description: check.description.clone(),
                script: check.script.clone(),
                timeout_secs: check.timeout_secs,
            })
            .collect(),
    }
}

/// The stage module's documentation, without its first paragraph (the handbook
/// section, which `Chapter::handbook_section` carries).
pub fn about(stage: Stage) -> Vec<Block> {
    let mut blocks = module_documentation(stages::entry(stage).source);
    if matches!(blocks.first(), Some(Block::Paragraph(title)) if title.starts_with("Handbook ")) {
        blocks.remove(0);
    }
    blocks
}

/// The blocks of a source file's leading `//!` comment: paragraphs end at a blank
/// line, and a line starting `- ` starts a list item, which its indented lines
/// continue.
fn module_documentation(source: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    let lines = source.lines().map_while(|line| line.strip_prefix("//!"));
    for line in lines {
        let text = line.strip_prefix(' ').unwrap_or(line);
        if text.trim().is_empty() {
            blocks.extend(current.take());
        } else if let Some(item) = text.strip_prefix("- ") {
            blocks.extend(current.take());
            current = Some(Block::ListItem(item.trim().to_string()));
        } else {
            match &mut current {
                Some(Block::Paragraph(joined) | Block::ListItem(joined)) => {
                    joined.push(' ');
                    joined.push_str(text.trim());
                }
                None => current = Some(Block::Paragraph(text.trim().to_string())),
            }
        }
    }
    blocks.extend(current);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::test_support;

    #[test]
    fn module_documentation_joins_paragraphs_and_list_items_and_stops_at_the_code() {
        let source = "//! Handbook 000 section 1: a title.\n//!\n//! A paragraph that goes\n//! on.\n//! - an item\n//!   continued\n//! - another\n//!\n//! Last.\n\nuse std::fs;\n//! not documentation\n";
        assert_eq!(
            module_documentation(source),
            vec![
                Block::Paragraph("Handbook 000 section 1: a title.".into()),
                Block::Paragraph("A paragraph that goes on.".into()),
                Block::ListItem("an item continued".into()),
                Block::ListItem("another".into()),
                Block::Paragraph("Last.".into()),
            ]
        );
    }

    #[test]
    fn every_chapter_explains_itself_without_its_title() {
        for stage in Stage::ALL {
            let about = about(stage);
            assert!(!about.is_empty(), "{stage}: its module says nothing");
            assert!(
                !matches!(&about[0], Block::Paragraph(text) if text.starts_with("Handbook ")),
                "{stage}: the title is the handbook section, not a paragraph"
            );
        }
    }

    #[test]
    fn the_etcd_chapter_lists_its_files_units_checks_and_faults_and_no_secret() {
        let plan = test_support::default_plan();
        let etcd = chapter(&plan, Stage::Etcd).expect("the plan has the etcd stage");
        assert_eq!(etcd.number, 3);
        assert!(etcd.handbook_section.contains("section 4"));
        assert!(
            etcd.about.iter().any(|block| matches!(block, Block::Paragraph(text) if text.contains("quorum"))),
            "{:?}",
            etcd.about
        );
        let master1 = etcd.nodes.iter().find(|work| work.node == "master1").expect("etcd runs on master1");
        assert!(master1.units.iter().any(|unit| unit.name == "etcd.service"), "{master1:?}");
        assert!(!master1.checks.is_empty(), "{master1:?}");
        assert!(etcd.faults.iter().any(|fault| fault.name == "etcd-member-stopped"), "{:?}", etcd.faults);
        assert!(etcd.faults.iter().all(|fault| !fault.summary.contains("{nodes}")));
        // The placeholder bundle's keys read `KEY NAME`, its encryption key is below.
        let json = serde_json::to_string(&chapters(&plan)).expect("chapters serialize");
        assert!(!json.contains("KEY ") && !json.contains("client-key-data"), "a secret's content leaked");
        assert!(!json.contains("c2VjcmV0cy1lbmNyeXB0aW9uLWtleS1wbGFjZWhvbGRlcg=="), "the encryption key leaked");
        let pki = chapter(&plan, Stage::Pki).expect("the plan has the PKI stage");
        let keys: Vec<&FileLine> = pki.nodes.iter().flat_map(|work| &work.files).filter(|file| file.secret).collect();
        assert!(!keys.is_empty() && keys.iter().all(|key| key.mode == "0600"), "{keys:?}");
    }

    #[test]
    fn chapters_up_to_the_converged_one_are_done_and_a_fault_makes_its_own_faulty() {
        let after_etcd = standings(&Probed::Known(Some(Stage::Etcd)), &["kubelet-read-only-port".to_string()]);
        assert_eq!(&after_etcd[..4], &[Standing::Done, Standing::Done, Standing::Done, Standing::Pending]);
        assert_eq!(after_etcd[Stage::Kubelet as usize], Standing::Faulty(vec!["kubelet-read-only-port".into()]));
        assert_eq!(after_etcd[Stage::Kubelet as usize].to_string(), "faulty (kubelet-read-only-port in force)");
        assert!(standings(&Probed::Known(None), &[]).iter().all(|standing| *standing == Standing::Pending));
        let unknown = standings(&Probed::Unknown("master1 did not answer".into()), &[]);
        assert_eq!(unknown[0].to_string(), "unknown: master1 did not answer");
    }

    #[test]
    fn every_stage_is_a_chapter_in_handbook_order() {
        let plan = test_support::default_plan();
        let numbers: Vec<usize> = chapters(&plan).iter().map(|chapter| chapter.number).collect();
        assert_eq!(numbers, (1..=Stage::ALL.len()).collect::<Vec<_>>());
    }
}
