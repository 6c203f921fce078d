//! The user's own kubeconfig: `lab kubeconfig --merge` adds the lab to it as a
//! cluster, a user and a context that are all named `lab-NAME` (as kind adds
//! `kind-NAME`), and `lab destroy` takes exactly those three out again.
//!
//! The file belongs to the user and to every tool that writes it, so only the lab's
//! entries are touched: the others keep their content and order. It is read and
//! written as a whole YAML document, so comments and formatting do not survive a
//! change, as they do not survive one by kubectl either; a file that needs no change
//! is not written at all. The entries embed the lab's admin key, as the lab's own
//! admin kubeconfig does: merging it is what `--merge` asks for, and nothing here
//! ever prints an entry.
//!
//! The pure functions take the files' text and return the new text; `merge_into` and
//! `remove_from` read and write the file. Neither reads the environment: the caller
//! finds the file with `user_file`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_yaml_ng::{Mapping, Value};

/// The three kinds of named entries a kubeconfig lists, each as (list, body key).
const SECTIONS: [(&str, &str); 3] = [("clusters", "cluster"), ("users", "user"), ("contexts", "context")];

/// The name of the lab's cluster, user and context in the user's kubeconfig.
pub fn entry_name(lab: &str) -> String {
    format!("lab-{lab}")
}

/// The file kubectl reads first: the first entry of `$KUBECONFIG` (given as
/// `kubeconfig_env`), else `HOME/.kube/config`. `None` without either.
pub fn user_file(kubeconfig_env: Option<&OsStr>, home: Option<&Path>) -> Option<PathBuf> {
    let listed = kubeconfig_env.and_then(|list| std::env::split_paths(list).find(|path| !path.as_os_str().is_empty()));
    listed.or_else(|| home.map(|home| home.join(".kube").join("config")))
}

/// What merging the lab into a kubeconfig gives.
#[derive(Debug, PartialEq, Eq)]
pub struct Merge {
    /// The file's new text; `None` when the file already holds exactly these entries.
    pub text: Option<String>,
    /// Whether the lab's context became the current context (there was none).
    pub current_context_set: bool,
}

/// `existing` (the user's kubeconfig, `None` when there is none yet) with the cluster
/// and user of `admin` (the lab's admin kubeconfig) added as `name`, and a context
/// `name` for the two. Entries named `name` already are replaced in place, so merging
/// again changes nothing. The current context is set only where none is.
pub fn merged(existing: Option<&str>, admin: &str, name: &str) -> anyhow::Result<Merge> {
    let admin = parse(admin).context("the lab's admin kubeconfig")?;
    let mut config = match existing {
        Some(text) => parse(text)?,
        None => Mapping::new(),
    };
    let before = config.clone();
    if config.is_empty() {
        config.insert("apiVersion".into(), "v1".into());
        config.insert("kind".into(), "Config".into());
    }

    let mut context = Mapping::new();
    context.insert("cluster".into(), name.into());
    context.insert("user".into(), name.into());
    let bodies =
        [first_body(&admin, "clusters", "cluster")?, first_body(&admin, "users", "user")?, Value::Mapping(context)];
    for ((list, body_key), body) in SECTIONS.into_iter().zip(bodies) {
        let mut entry = Mapping::new();
        entry.insert("name".into(), name.into());
        entry.insert(body_key.into(), body);
        let entries = entries_mut(&mut config, list)?;
        match entries.iter_mut().find(|existing| entry_named(existing, name)) {
            Some(existing) => *existing = Value::Mapping(entry),
            None => entries.push(Value::Mapping(entry)),
        }
    }

    let current_context_set = current_context(&config).is_none();
    if current_context_set {
        config.insert("current-context".into(), name.into());
    }
    let text = (config != before).then(|| serde_yaml_ng::to_string(&config)).transpose()?;
    Ok(Merge { text, current_context_set })
}

/// `existing` without the cluster, user and context named `name`; a current context
/// of `name` is unset (kubectl's empty string). `None` when none of them is there.
pub fn without(existing: &str, name: &str) -> anyhow::Result<Option<String>> {
    let mut config = parse(existing)?;
    let before = config.clone();
    for (list, _) in SECTIONS {
        if let Some(Value::Sequence(entries)) = config.get_mut(list) {
            entries.retain(|entry| !entry_named(entry, name));
        }
    }
    if current_context(&config) == Some(name) {
        config.insert("current-context".into(), "".into());
    }
    if config == before {
        return Ok(None);
    }
    Ok(Some(serde_yaml_ng::to_string(&config)?))
}

/// Merges the lab's admin kubeconfig (the file `admin`) into `file` as `name`,
/// creating `file` (mode 0600, its directory 0700) if it is missing.
pub fn merge_into(file: &Path, admin: &Path, name: &str) -> anyhow::Result<Merge> {
    let admin_text = std::fs::read_to_string(admin).with_context(|| format!("cannot read {}", admin.display()))?;
    let existing = read_if_present(file)?;
    let merge = merged(existing.as_deref(), &admin_text, name).with_context(|| file.display().to_string())?;
    if let Some(text) = &merge.text {
        write(file, text, existing.is_some())?;
    }
    Ok(merge)
}

/// Takes the lab's entries named `name` out of `file`; whether there were any. A
/// missing file has none.
pub fn remove_from(file: &Path, name: &str) -> anyhow::Result<bool> {
    let Some(existing) = read_if_present(file)? else { return Ok(false) };
    match without(&existing, name).with_context(|| file.display().to_string())? {
        Some(text) => write(file, &text, true).map(|()| true),
        None => Ok(false),
    }
}

fn read_if_present(file: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow!("cannot read {}: {error}", file.display())),
    }
}

/// Replaces `file` atomically. An existing file keeps its mode and owner (a symlink,
/// its target's); a new one is 0600, as it holds a private key.
fn write(file: &Path, text: &str, exists: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let target = if exists { std::fs::canonicalize(file)? } else { file.to_owned() };
    let metadata = exists.then(|| std::fs::metadata(&target)).transpose()?;
    if let Some(directory) = target.parent().filter(|directory| !directory.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
    }
    let mode = metadata.as_ref().map_or(0o600, |metadata| metadata.mode() & 0o7777);
    provisioner::system::write_atomically(&target, text.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", target.display()))?;
    if let Some(metadata) = metadata {
        let written = std::fs::metadata(&target)?;
        if (written.uid(), written.gid()) != (metadata.uid(), metadata.gid()) {
            std::os::unix::fs::chown(&target, Some(metadata.uid()), Some(metadata.gid()))
                .with_context(|| format!("cannot give {} back to its owner", target.display()))?;
        }
    }
    Ok(())
}

/// A kubeconfig's top level; an empty file is an empty mapping.
fn parse(text: &str) -> anyhow::Result<Mapping> {
    // Only the parser's own message (line and column) is kept: the YAML error types
    // never quote a value, so no key material reaches an error.
    match serde_yaml_ng::from_str::<Value>(text)? {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(mapping) => Ok(mapping),
        _ => bail!("not a kubeconfig: its top level is not a mapping"),
    }
}

/// The body (`cluster`, `user`) of the first entry of `list` in the admin kubeconfig.
fn first_body(admin: &Mapping, list: &str, body_key: &str) -> anyhow::Result<Value> {
    admin
        .get(list)
        .and_then(Value::as_sequence)
        .and_then(|entries| entries.first())
        .and_then(|entry| entry.get(body_key))
        .cloned()
        .ok_or_else(|| anyhow!("no {body_key} in `{list}`"))
}

/// The list `list` of `config`, made if it is missing (or null, as kubectl writes
/// an empty one).
fn entries_mut<'a>(config: &'a mut Mapping, list: &str) -> anyhow::Result<&'a mut Vec<Value>> {
    let value = config.entry(list.into()).or_insert(Value::Sequence(Vec::new()));
    if value.is_null() {
        *value = Value::Sequence(Vec::new());
    }
    value.as_sequence_mut().ok_or_else(|| anyhow!("`{list}` is not a list"))
}

fn entry_named(entry: &Value, name: &str) -> bool {
    entry.get("name").and_then(Value::as_str) == Some(name)
}

/// The current context, if one is set (kubectl writes an unset one as "").
fn current_context(config: &Mapping) -> Option<&str> {
    config.get("current-context").and_then(Value::as_str).filter(|context| !context.is_empty())
}

#[cfg(test)]
mod tests;
