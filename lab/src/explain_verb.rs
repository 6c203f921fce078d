//! `lab explain [STAGE] [--node NODE] [--json]`: the handbook's chapters as the lab
//! builds them, for a learner. Without a stage, every chapter in order with where the
//! lab stands in it; with one, what the chapter sets up and why (its stage module's own
//! documentation), then its files, units, commands and checks per node and the faults
//! that undo it. `provisioner::explain` assembles a chapter; this verb finds where the
//! lab stands and prints, at 80 columns.

use anyhow::{anyhow, Context as _};
use provisioner::explain::{self, Block, Chapter, NodeWork, Standing};
use provisioner::plan::{RunWhen, Stage};

use crate::{Exit, Failure, Paths};

/// The width the text is wrapped to, so that it reads in an 80-column terminal.
const WIDTH: usize = 78;

pub fn explain(paths: &Paths, stage: Option<Stage>, node: Option<&str>, json: bool) -> Result<(), Failure> {
    // The running lab's chapters, else those of the topology file (as `lab faults`).
    let (lab, built) = match paths.existing_lab() {
        Ok(lab) => (lab, true),
        Err(_) => (paths.lab_from_file()?, false),
    };
    let plan = lab.plan()?;
    if let Some(node) = node {
        if !plan.nodes.iter().any(|planned| planned.name == node) {
            return Err(Failure {
                exit: Exit::Usage,
                error: anyhow!(
                    "--node {node}: no such node in lab {}; the nodes are: {}",
                    plan.lab,
                    plan.nodes.iter().map(|planned| planned.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let standings = if built { lab.standings() } else { vec![Standing::NotBuilt; Stage::ALL.len()] };
    let text = match stage {
        None => {
            if json {
                let rows: Vec<serde_json::Value> = Stage::ALL
                    .iter()
                    .zip(&standings)
                    .map(|(stage, standing)| {
                        serde_json::json!({
                            "number": stage.position() + 1,
                            "stage": stage,
                            "handbook_section": stage.handbook_section(),
                            "standing": standing,
                        })
                    })
                    .collect();
                serde_json::to_string_pretty(&serde_json::json!({ "lab": plan.lab, "chapters": rows }))
                    .context("serialize the chapters")?
            } else {
                overview(&plan.lab, &standings)
            }
        }
        Some(stage) => {
            let mut chapter = explain::chapter(plan, stage).ok_or_else(|| anyhow!("the plan has no stage {stage}"))?;
            if let Some(node) = node {
                chapter.nodes.retain(|work| work.node == node);
            }
            let standing = &standings[stage.position()];
            if json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "lab": plan.lab,
                    "chapter": chapter,
                    "standing": standing,
                }))
                .context("serialize the chapter")?
            } else {
                chapter_text(&chapter, standing, node)
            }
        }
    };
    crate::machine_verbs::print_stdout(&text)
}

/// Every chapter in order: number, name and standing, then its handbook section.
fn overview(lab: &str, standings: &[Standing]) -> String {
    use std::fmt::Write as _;
    let mut text = format!("lab {lab}: the handbook's chapters, in the order `lab up` builds them\n\n");
    for (stage, standing) in Stage::ALL.iter().zip(standings) {
        let _ = writeln!(text, "{:>2}. {:<24} {}", stage.position() + 1, stage.name(), standing);
        let _ = writeln!(text, "{}", fill(stage.handbook_section(), "    ", "    "));
    }
    text.push_str(
        "\n`lab explain STAGE` tells one chapter: what it sets up and why, its files,\nunits, commands and \
         checks; `lab up --until STAGE` builds the lab up to it.",
    );
    text
}

/// One chapter: title and standing, its module's prose, then what it does per node
/// (nodes that do the same are shown once) and its faults.
fn chapter_text(chapter: &Chapter, standing: &Standing, node: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(text, "{}. {}: {}", chapter.number, chapter.stage.name(), standing);
    let _ = writeln!(text, "{}\n", fill(chapter.handbook_section, "", ""));
    for block in &chapter.about {
        match block {
            Block::Paragraph(paragraph) => {
                let _ = writeln!(text, "{}\n", fill(paragraph, "", ""));
            }
            Block::ListItem(item) => {
                let _ = writeln!(text, "{}", fill(item, "  - ", "    "));
            }
        }
    }
    if !text.ends_with("\n\n") {
        text.push('\n');
    }
    if chapter.nodes.is_empty() {
        let _ = writeln!(text, "This chapter does nothing on {}.\n", node.unwrap_or("any node"));
    }
    for (nodes, work) in grouped(&chapter.nodes) {
        let each = if nodes.len() > 1 { " (NODE below is each of them)" } else { "" };
        let _ = writeln!(text, "{}", fill(&format!("On {}{each}:", nodes.join(", ")), "", "  "));
        write_work(&mut text, &work);
        text.push('\n');
    }
    if chapter.faults.is_empty() {
        text.push_str("No fault of the catalogue belongs to this chapter.");
    } else {
        text.push_str("Faults of this chapter, to break it on purpose (`lab break FAULT`):\n");
        for fault in &chapter.faults {
            let _ = writeln!(text, "{}", fill(&format!("{}: {}", fault.name, fault.summary), "  - ", "    "));
        }
    }
    text.trim_end().to_string()
}

/// The nodes' work, nodes that do the same taken together, in the order of their first
/// node. Work is the same when it differs only by the node's own name, which a group
/// of several nodes shows as `NODE`.
fn grouped(work: &[NodeWork]) -> Vec<(Vec<&str>, NodeWork)> {
    let mut groups: Vec<(Vec<&str>, NodeWork)> = Vec::new();
    for node in work {
        let general = generalized(node);
        match groups.iter_mut().find(|(_, first)| *first == general) {
            Some((nodes, _)) => nodes.push(&node.node),
            None => groups.push((vec![&node.node], general)),
        }
    }
    groups
        .into_iter()
        .map(|(nodes, general)| {
            let shown = match nodes.as_slice() {
                [only] => work.iter().find(|node| node.node == *only).cloned().unwrap_or(general),
                _ => general,
            };
            (nodes, shown)
        })
        .collect()
}

/// `work` with its node's name written `NODE` wherever it appears.
fn generalized(work: &NodeWork) -> NodeWork {
    let general = |text: &str| text.replace(&work.node, "NODE");
    let mut copy = work.clone();
    copy.node = "NODE".to_string();
    for file in &mut copy.files {
        file.path = general(&file.path);
    }
    for unit in &mut copy.units {
        unit.name = general(&unit.name);
        for path in &mut unit.restart_when_changed {
            *path = general(path);
        }
    }
    for command in &mut copy.commands {
        command.description = general(&command.description);
        command.script = general(&command.script);
    }
    for check in &mut copy.checks {
        check.description = general(&check.description);
        check.script = general(&check.script);
    }
    copy
}

fn write_work(text: &mut String, work: &NodeWork) {
    use std::fmt::Write as _;
    if !work.files.is_empty() {
        text.push_str("  files (mode, owner, path):\n");
        for file in &work.files {
            let secret = if file.secret { "  <secret>" } else { "" };
            let _ = writeln!(text, "    {} {:<5} {}{secret}", file.mode, file.owner, file.path);
        }
    }
    if !work.units.is_empty() {
        text.push_str("  units, enabled and running:\n");
        for unit in &work.units {
            let _ = writeln!(text, "    {}", unit.name);
            if !unit.restart_when_changed.is_empty() {
                let restart = format!("restarted when one changes: {}", unit.restart_when_changed.join(", "));
                let _ = writeln!(text, "{}", fill(&restart, "      ", "      "));
            }
        }
    }
    if !work.commands.is_empty() {
        text.push_str("  commands, in order:\n");
        for (index, command) in work.commands.iter().enumerate() {
            let when = match command.when {
                RunWhen::Always => "every run",
                RunWhen::FilesChanged => "when its files changed",
            };
            let _ = writeln!(
                text,
                "{}",
                fill(&format!("{}. {} ({when})", index + 1, command.description), "    ", "       ")
            );
            write_script(text, &command.script);
        }
    }
    if !work.checks.is_empty() {
        text.push_str("  checks, each retried until it passes:\n");
        for check in &work.checks {
            let line = format!("- {} (within {} s)", check.description, check.timeout_secs);
            let _ = writeln!(text, "{}", fill(&line, "    ", "      "));
            write_script(text, &check.script);
        }
    }
}

/// A script as it runs, each line after `$ `, unwrapped so that it can be copied.
fn write_script(text: &mut String, script: &str) {
    use std::fmt::Write as _;
    for line in script.trim().lines() {
        let _ = writeln!(text, "       $ {line}");
    }
}

/// `text` wrapped to `WIDTH`, its first line after `first`, the others after `rest`.
pub(crate) fn fill(text: &str, first: &str, rest: &str) -> String {
    // Lines break at spaces only: a flag or a path split at its hyphen would read as two.
    let options = textwrap::Options::new(WIDTH)
        .initial_indent(first)
        .subsequent_indent(rest)
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    textwrap::fill(text, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioner::explain::{CheckLine, CommandLine, FaultLine, FileLine, UnitLine};

    fn work(node: &str, path: &str) -> NodeWork {
        NodeWork {
            node: node.to_string(),
            files: vec![FileLine { path: path.to_string(), mode: "0600".into(), owner: "root".into(), secret: true }],
            units: vec![UnitLine { name: "etcd.service".into(), restart_when_changed: vec![path.to_string()] }],
            commands: vec![CommandLine {
                description: "reload systemd".into(),
                script: "systemctl daemon-reload".into(),
                when: RunWhen::FilesChanged,
            }],
            checks: vec![CheckLine {
                description: format!("etcd member {node} answers"),
                script: "etcdctl endpoint health".into(),
                timeout_secs: 60,
            }],
        }
    }

    fn chapter(nodes: Vec<NodeWork>) -> Chapter {
        Chapter {
            number: 3,
            stage: Stage::Etcd,
            handbook_section: "Handbook 000 section 4: static etcd cluster with mutual TLS",
            about: vec![
                Block::Paragraph("etcd is the only place where Kubernetes keeps state: every object the apiservers accept ends up here, so losing etcd means losing the cluster.".into()),
                Block::ListItem("an item that is long enough to be wrapped onto a second line at the width of an eighty column terminal".into()),
            ],
            nodes,
            faults: vec![FaultLine {
                name: "etcd-member-stopped",
                summary: "the etcd member on NODE is stopped".into(),
                symptom: "",
            }],
        }
    }

    #[test]
    fn a_chapter_reads_at_80_columns_with_its_prose_work_and_faults_and_no_secret() {
        let text = chapter_text(
            &chapter(vec![work("master1", "/etc/etcd/a.key"), work("master2", "/etc/etcd/a.key")]),
            &Standing::Done,
            None,
        );
        assert!(text.starts_with("3. etcd: done\nHandbook 000 section 4"), "{text}");
        for line in text.lines().filter(|line| !line.trim_start().starts_with('$')) {
            assert!(line.len() <= 80, "wider than 80 columns: {line:?}");
        }
        assert!(text.contains("\n  - an item that is long"), "{text}");
        assert!(
            text.contains(
                "On master1, master2 (NODE below is each of them):\n  files (mode, owner, path):\n    0600 root  \
                 /etc/etcd/a.key  <secret>"
            ),
            "{text}"
        );
        assert!(text.contains("- etcd member NODE answers (within 60 s)"), "{text}");
        assert!(
            text.contains("1. reload systemd (when its files changed)\n       $ systemctl daemon-reload"),
            "{text}"
        );

        assert!(text.ends_with("  - etcd-member-stopped: the etcd member on NODE is stopped"), "{text}");
    }

    #[test]
    fn a_long_flag_or_path_is_never_split_at_its_hyphen() {
        let filled =
            fill(&format!("{} --client-cert-auth and /etc/etcd/pki/server-key.pem", "word ".repeat(13)), "", "");
        assert!(filled.lines().all(|line| !line.ends_with('-')), "{filled}");
    }

    #[test]
    fn nodes_that_do_different_work_are_shown_apart_and_a_node_without_work_says_so() {
        let text = chapter_text(
            &chapter(vec![work("master1", "/etc/etcd/one.key"), work("master2", "/etc/etcd/two.key")]),
            &Standing::Pending,
            None,
        );
        assert!(text.contains("On master1:") && text.contains("On master2:"), "{text}");
        assert!(text.contains("- etcd member master2 answers"), "a node alone keeps its name: {text}");
        let text = chapter_text(&chapter(Vec::new()), &Standing::NotBuilt, Some("worker1"));
        assert!(text.starts_with("3. etcd: not built"), "{text}");
        assert!(text.contains("This chapter does nothing on worker1."), "{text}");
    }

    #[test]
    fn the_overview_lists_every_chapter_with_its_standing() {
        let mut standings = vec![Standing::Done; Stage::ALL.len()];
        standings[2] = Standing::Faulty(vec!["etcd-member-stopped".into()]);
        standings[14] = Standing::Pending;
        let text = overview("k8s", &standings);
        assert!(text.contains(" 1. hosts                    done\n    Handbook 000"), "{text}");
        assert!(text.contains(" 3. etcd                     faulty (etcd-member-stopped in force)"), "{text}");
        assert!(text.contains("15. firewall                 pending"), "{text}");
        assert!(text.lines().all(|line| line.len() <= 80), "{text}");
    }
}
