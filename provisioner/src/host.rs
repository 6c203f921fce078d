//! The single side-effect seam: everything the provisioner does to a node goes
//! through `Host`. The SSH implementation talks to real machines; `RecordingHost`
//! records calls and answers from a script, for unit tests of the executor.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Why a call on a host failed to happen at all (a command that ran and exited
/// non-zero is not an error here: it is an `Output` with a status).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{node}: cannot connect to {address}: {message}")]
    Connect { node: String, address: String, message: String },
    #[error("{node}: `{command}` failed to run: {message}")]
    Run { node: String, command: String, message: String },
    #[error("{node}: cannot write {path}: {message}")]
    Put { node: String, path: String, message: String },
    #[error("{node}: cannot read {path}: {message}")]
    Read { node: String, path: String, message: String },
    #[error("cannot read local file {path}: {message}")]
    Local { path: String, message: String },
}

/// A machine the provisioner can act on.
pub trait Host: Send + Sync {
    /// The node's name, for messages.
    fn name(&self) -> &str;

    /// Runs `script` with `sh -c` as root and waits for it.
    fn run(&self, script: &str) -> Result<Output, HostError>;

    /// Writes `content` to `path` atomically (temporary file and rename), creating
    /// parent directories, with the given mode and owner.
    fn put_file(&self, path: &str, mode: u32, owner: &str, content: &[u8]) -> Result<(), HostError>;

    /// Like `put_file`, streaming a local file (large binaries and image archives).
    fn copy_file(&self, path: &str, mode: u32, owner: &str, local: &Path) -> Result<(), HostError>;

    /// Reads a whole file; `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, HostError>;
}

/// Quotes `text` as one word for a node's `sh`: as it is when it needs no quoting
/// (paths, names), so that logged commands stay readable; else in single quotes.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:=+,@".contains(&b)) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One recorded call on a `RecordingHost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run(String),
    Put { path: String, mode: u32, owner: String, content: Vec<u8> },
    Copy { path: String, mode: u32, owner: String, local: String },
    Read(String),
}

/// A fake host that records every call and answers `run` from canned replies.
///
/// Replies are matched by the first registered prefix of the script; an unmatched
/// script succeeds with empty output. Files put on it can be read back.
#[derive(Default)]
pub struct RecordingHost {
    name: String,
    calls: Mutex<Vec<Call>>,
    replies: Mutex<Vec<(String, Output)>>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl RecordingHost {
    pub fn new(name: &str) -> Self {
        RecordingHost { name: name.to_string(), ..RecordingHost::default() }
    }

    /// Answers scripts starting with `prefix` with `output`.
    pub fn reply(&self, prefix: &str, output: Output) {
        self.replies.lock().expect("replies lock").push((prefix.to_string(), output));
    }

    /// Pretends `path` already holds `content` on the node.
    pub fn seed_file(&self, path: &str, content: &[u8]) {
        self.files.lock().expect("files lock").insert(path.to_string(), content.to_vec());
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().expect("calls lock").push(call);
    }
}

impl Host for RecordingHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, script: &str) -> Result<Output, HostError> {
        self.record(Call::Run(script.to_string()));
        let replies = self.replies.lock().expect("replies lock");
        Ok(replies
            .iter()
            .find(|(prefix, _)| script.starts_with(prefix.as_str()))
            .map(|(_, output)| output.clone())
            .unwrap_or_default())
    }

    fn put_file(&self, path: &str, mode: u32, owner: &str, content: &[u8]) -> Result<(), HostError> {
        self.record(Call::Put { path: path.into(), mode, owner: owner.into(), content: content.to_vec() });
        self.files.lock().expect("files lock").insert(path.to_string(), content.to_vec());
        Ok(())
    }

    fn copy_file(&self, path: &str, mode: u32, owner: &str, local: &Path) -> Result<(), HostError> {
        self.record(Call::Copy { path: path.into(), mode, owner: owner.into(), local: local.display().to_string() });
        Ok(())
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.record(Call::Read(path.to_string()));
        Ok(self.files.lock().expect("files lock").get(path).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_quote_leaves_plain_words_and_survives_single_quotes() {
        assert_eq!(shell_quote("/etc/kubernetes/admin.kubeconfig"), "/etc/kubernetes/admin.kubeconfig");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b;c"), "'a b;c'");
        assert_eq!(shell_quote(""), "''");
    }
}
