//! `lab render DIR`: every node's planned files written under `DIR/NODE/`, so a
//! learner can read exactly what each machine will get.

use std::path::{Path, PathBuf};

use crate::plan::{Content, Plan};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What a secret file holds in a rendering, in place of its content.
pub const SECRET_LEFT_OUT: &str = "<secret: left out>\n";

/// Writes each node's files to `dir/NODE/PATH` with their planned modes. Secret files
/// (private keys, kubeconfigs with keys, the Secrets' encryption key) hold
/// `SECRET_LEFT_OUT`: no secret leaves the state directory, not for a learner's copy
/// and not in a log bundle, which leaves the host with CI's evidence. Artifacts are
/// listed in `dir/NODE/ARTIFACTS`, not copied. Returns the number of files written.
pub fn render(plan: &Plan, dir: &Path) -> Result<usize, RenderError> {
    let mut written = 0;
    let mut artifact_lists: std::collections::BTreeMap<String, String> = Default::default();
    for stage in &plan.stages {
        for actions in &stage.nodes {
            let node_dir = dir.join(&actions.node);
            for file in &actions.files {
                let target = node_dir.join(file.path.trim_start_matches('/'));
                let bytes = match &file.content {
                    Content::Text(text) => text.as_bytes(),
                    Content::Secret(_) => SECRET_LEFT_OUT.as_bytes(),
                    Content::Artifact { path } => {
                        let list = artifact_lists.entry(actions.node.clone()).or_default();
                        list.push_str(&format!("{} <- {}\n", file.path, path.display()));
                        continue;
                    }
                };
                write(&target, bytes, file.mode)?;
                written += 1;
            }
        }
    }
    for (node, list) in artifact_lists {
        write(&dir.join(node).join("ARTIFACTS"), list.as_bytes(), 0o644)?;
        written += 1;
    }
    Ok(written)
}

fn write(target: &Path, bytes: &[u8], mode: u32) -> Result<(), RenderError> {
    let error = |source| RenderError::Write { path: target.to_owned(), source };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    crate::system::write_atomically(target, bytes, mode).map_err(error)
}
