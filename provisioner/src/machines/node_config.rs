//! What makes a machine one particular node, whatever kind of machine it is: its
//! hostname, its static address on the lab bridge, the lab's SSH key for root, its
//! own SSH host keys, and the systemd settings every node shares.
//!
//! Backends differ only in how the files get there. nspawn writes them into the
//! node's mounted disk before the boot (`nspawn::configure`); a VM's disk is never
//! mounted on the host, so the VM backends put the same files on a small config disk
//! that the image's `lab-machine-config` unit copies in early at boot
//! (`vm_image::write_config_disk`). One list, here, serves both.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::NodeSpec;
use crate::system;

/// When a backend writes a file into the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// On every start: the machines layer owns these, and a topology edit (a new
    /// address) must reach the node.
    EveryStart,
    /// Only while the node does not have its own copy yet: the stages own the file
    /// afterwards (e.g. /etc/hosts, which the hosts stage rewrites).
    FirstBoot,
    /// Each line is added unless the node's file has it already; lines someone else
    /// added stay (keys a learner put into root's authorized_keys).
    AppendLines,
}

/// One file of the node's configuration, relative to the node's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: &'static str,
    pub mode: u32,
    pub content: String,
    pub when: When,
}

/// The node's systemd manager settings. Its default stop timeout of 90 s outlasts the
/// backends' own shutdown timeouts: a pod's process that runs as PID 1 of its
/// container ignores SIGTERM, so every worker with pods would be killed instead of
/// powered off.
pub const SYSTEMD_MANAGER_SETTINGS: &str = "# Written by the k8s lab's machines layer.
# Power off in seconds: pods' processes ignore SIGTERM, and nothing here needs 90 s.
[Manager]
DefaultTimeoutStopSec=10s
";

/// Where root's authorized keys live in a node.
pub const AUTHORIZED_KEYS: &str = "root/.ssh/authorized_keys";

/// Every file that makes `node` itself, for a node subnet of `prefix` bits, with
/// `authorized_key` (one `authorized_keys` line) allowed to log in as root. The SSH
/// host keys are not here: they are made with `make_host_keys`, once per node.
pub fn node_files(node: &NodeSpec, prefix: u8, authorized_key: &str) -> Vec<NodeFile> {
    let name = &node.name;
    vec![
        NodeFile { path: "etc/hostname", mode: 0o644, content: format!("{name}\n"), when: When::EveryStart },
        NodeFile {
            path: "etc/systemd/system.conf.d/90-k8s-lab.conf",
            mode: 0o644,
            content: SYSTEMD_MANAGER_SETTINGS.to_string(),
            when: When::EveryStart,
        },
        NodeFile {
            path: "etc/systemd/network/10-host0.network",
            mode: 0o644,
            content: network_file(node, prefix),
            when: When::EveryStart,
        },
        NodeFile {
            path: "etc/hosts",
            mode: 0o644,
            content: format!(
                "127.0.0.1\tlocalhost\n{}\t{name}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
                node.address
            ),
            when: When::FirstBoot,
        },
        NodeFile {
            path: AUTHORIZED_KEYS,
            mode: 0o600,
            content: format!("{}\n", authorized_key.trim()),
            when: When::AppendLines,
        },
    ]
}

/// The node's systemd-networkd file: its static address on `host0` and nothing
/// learned from the network: no link-local addresses and no router advertisements,
/// so the node has no route but its own subnet until the stages add the pod routes.
/// `host0` is nspawn's name for the node end of its link; in a VM the image's
/// `.link` file gives the virtio NIC the same name, so the stages name one interface.
pub fn network_file(node: &NodeSpec, prefix: u8) -> String {
    format!(
        "# Written by the lab's machines layer: the node's static address on the lab bridge.\n\
         [Match]\nName=host0\n\n[Network]\nAddress={}/{prefix}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
        node.address
    )
}

/// `text` with every line of `lines` that it lacks appended, or `None` when it has
/// them all.
pub fn append_missing_lines(text: &str, lines: &str) -> Option<String> {
    let missing: Vec<&str> = lines
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !text.lines().any(|present| present.trim() == *line))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut merged = text.to_string();
    if !merged.is_empty() && !merged.ends_with('\n') {
        merged.push('\n');
    }
    for line in missing {
        merged.push_str(line);
        merged.push('\n');
    }
    Some(merged)
}

/// Makes SSH host keys of every type under `root/etc/ssh` (as `ssh-keygen -A` does
/// for a host), commented with the node's name. Keys already there are kept.
pub fn make_host_keys(root: &Path, node: &str) -> Result<(), String> {
    let ssh_dir = root.join("etc/ssh");
    fs::create_dir_all(&ssh_dir).map_err(|error| format!("cannot create {}: {error}", ssh_dir.display()))?;
    system::run(Command::new("ssh-keygen").args(["-q", "-A", "-f"]).arg(root))
        .map_err(|failure| failure.to_string())?;
    rename_host_key_comments(&ssh_dir, node).map_err(|error| format!("cannot rewrite {}: {error}", ssh_dir.display()))
}

/// ssh-keygen -A comments each host key with the host's `root@HOSTNAME`; the keys
/// belong to the node, so they should say so.
pub fn rename_host_key_comments(ssh_dir: &Path, node: &str) -> std::io::Result<()> {
    for entry in fs::read_dir(ssh_dir)?.filter_map(Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !(file_name.starts_with("ssh_host_") && file_name.ends_with(".pub")) {
            continue;
        }
        let text = fs::read_to_string(entry.path())?;
        let mut words: Vec<&str> = text.split_whitespace().take(2).collect();
        let comment = format!("root@{node}");
        words.push(&comment);
        fs::write(entry.path(), format!("{}\n", words.join(" ")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn worker() -> NodeSpec {
        NodeSpec::new("worker1", Ipv4Addr::new(10, 240, 0, 21))
    }

    #[test]
    fn the_network_file_gives_a_static_address_and_nothing_else() {
        let text = network_file(&worker(), 24);
        assert!(text.contains("[Match]\nName=host0\n"));
        assert!(text.contains("Address=10.240.0.21/24\n"));
        assert!(text.contains("LinkLocalAddressing=no\n"));
        assert!(text.contains("IPv6AcceptRA=no\n"));
        assert!(!text.contains("Gateway"), "a node has no default route: {text}");
    }

    #[test]
    fn the_file_list_names_every_piece_of_identity_once() {
        let files = node_files(&worker(), 24, "ssh-ed25519 AAAA lab\n");
        let paths: Vec<&str> = files.iter().map(|file| file.path).collect();
        assert_eq!(
            paths,
            [
                "etc/hostname",
                "etc/systemd/system.conf.d/90-k8s-lab.conf",
                "etc/systemd/network/10-host0.network",
                "etc/hosts",
                "root/.ssh/authorized_keys"
            ]
        );
        let by_path = |path: &str| files.iter().find(|file| file.path == path).expect("listed");
        assert_eq!(by_path("etc/hostname").content, "worker1\n");
        assert_eq!(by_path("etc/hosts").when, When::FirstBoot);
        assert!(by_path("etc/hosts").content.contains("10.240.0.21\tworker1\n"));
        let keys = by_path(AUTHORIZED_KEYS);
        assert_eq!((keys.mode, keys.when, keys.content.as_str()), (0o600, When::AppendLines, "ssh-ed25519 AAAA lab\n"));
        assert!(files.iter().all(|file| !file.path.starts_with('/')), "paths are relative to the node's root");
    }

    #[test]
    fn appending_keeps_other_lines_and_adds_each_missing_one_once() {
        assert_eq!(append_missing_lines("", "key-a\n"), Some("key-a\n".to_string()));
        assert_eq!(append_missing_lines("learner", "key-a\n"), Some("learner\nkey-a\n".to_string()));
        assert_eq!(append_missing_lines("learner\nkey-a\n", "key-a\n"), None);
        assert_eq!(append_missing_lines("key-a  \n", " key-a"), None);
    }

    #[test]
    fn host_key_comments_name_the_node() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        fs::write(scratch.path().join("ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAAC3 root@buildhost\n").unwrap();
        fs::write(scratch.path().join("ssh_host_ed25519_key"), "private").unwrap();
        rename_host_key_comments(scratch.path(), "master1").expect("rename");
        assert_eq!(
            fs::read_to_string(scratch.path().join("ssh_host_ed25519_key.pub")).unwrap(),
            "ssh-ed25519 AAAAC3 root@master1\n"
        );
        assert_eq!(fs::read_to_string(scratch.path().join("ssh_host_ed25519_key")).unwrap(), "private");
    }
}
