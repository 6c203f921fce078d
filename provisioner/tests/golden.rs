//! Golden tests: every text file the plan renders for the default lab and the two
//! examples, compared with `tests/golden/TOPOLOGY/NODE/PATH`.
//!
//! Certificates and keys differ on every run, so PEM blocks and base64 `*-data:`
//! values are replaced by placeholders before comparing; secrets are not rendered.
//! After an intended change, refresh the files with `UPDATE_GOLDEN=1 cargo test -p
//! provisioner --test golden` and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use provisioner::artifacts::Artifacts;
use provisioner::pki;
use provisioner::plan::{self, Content, PlanInputs};
use provisioner::topology::Topology;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Replaces what changes between runs (key material) with stable placeholders.
fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut in_pem = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("-----BEGIN ") {
            in_pem = true;
            out.push_str(&line.replace(trimmed, "<PEM>"));
            out.push('\n');
            continue;
        }
        if in_pem {
            if trimmed.starts_with("-----END ") {
                in_pem = false;
            }
            continue;
        }
        match line.split_once("-data: ") {
            Some((key, _)) => out.push_str(&format!("{key}-data: <BASE64>\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Every rendered text file of one topology: relative path -> normalized content.
fn rendered(topology_file: &str) -> BTreeMap<PathBuf, String> {
    let path = repository().join(topology_file);
    let topology = Topology::load(&path).expect("topology loads").topology;
    let bundle = pki::issue_in_memory(&pki::specs(&topology)).expect("pki issues");
    let artifacts = Artifacts::expected(&topology, Path::new("/cache/k8s-lab"));
    let plan = plan::build(&PlanInputs {
        topology: &topology,
        pki: &bundle,
        artifacts: &artifacts,
        state_dir: PathBuf::from("/lab-state"),
    });
    let mut files = BTreeMap::new();
    for stage in &plan.stages {
        for actions in &stage.nodes {
            for file in &actions.files {
                // Certificates are checked by tests/pki.rs; here they would be noise.
                if file.path.ends_with(".pem") {
                    continue;
                }
                if let Content::Text(text) = &file.content {
                    let relative = Path::new(&actions.node).join(file.path.trim_start_matches('/'));
                    files.insert(relative, normalize(text));
                }
            }
        }
    }
    files
}

fn check(topology_file: &str, golden_name: &str) {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(golden_name);
    let files = rendered(topology_file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden_dir);
        for (relative, content) in &files {
            let target = golden_dir.join(relative);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
        }
        return;
    }
    let mut problems = Vec::new();
    for (relative, content) in &files {
        match std::fs::read_to_string(golden_dir.join(relative)) {
            Ok(expected) if &expected == content => {}
            Ok(_) => problems.push(format!("{} differs from its golden file", relative.display())),
            Err(_) => problems.push(format!("{} has no golden file", relative.display())),
        }
    }
    let mut stale = Vec::new();
    collect_files(&golden_dir, &golden_dir, &mut stale);
    for relative in stale {
        if !files.contains_key(&relative) {
            problems.push(format!("golden file {} is no longer rendered", relative.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "{golden_name}: {} problem(s); if intended, run UPDATE_GOLDEN=1 cargo test -p provisioner --test golden\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
}

#[test]
fn default_lab_matches_golden_files() {
    check("lab.toml", "default");
}

#[test]
fn separate_etcd_example_matches_golden_files() {
    check("examples/separate-etcd.toml", "separate-etcd");
}

#[test]
fn minimal_example_matches_golden_files() {
    check("examples/minimal.toml", "minimal");
}
