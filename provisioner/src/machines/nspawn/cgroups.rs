//! The node's cgroups where the lab supervises nspawn itself: `lab-LAB/NODE` in every
//! hierarchy of the host, made before the node starts and removed, with anything
//! still in them killed, after it stopped.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Nspawn;
use crate::machines::Leftover;
use crate::system;

impl Nspawn {
    /// Every cgroup hierarchy of the host: each cgroup v1 controller mount, the
    /// named systemd hierarchy and the cgroup2 mount, or on a cgroup2-only host the
    /// one hierarchy at /sys/fs/cgroup.
    pub(super) fn cgroup_hierarchies() -> Result<Vec<PathBuf>, String> {
        let mounts = system::mount_table().map_err(|error| format!("cannot read the mount table: {error}"))?;
        let mut hierarchies: Vec<PathBuf> = mounts
            .into_iter()
            .filter(|mount| {
                (mount.fstype == "cgroup" || mount.fstype == "cgroup2") && mount.point.starts_with("/sys/fs/cgroup")
            })
            .map(|mount| mount.point)
            .collect();
        hierarchies.sort();
        hierarchies.dedup();
        if hierarchies.is_empty() {
            return Err("no cgroup hierarchy is mounted under /sys/fs/cgroup".into());
        }
        Ok(hierarchies)
    }

    pub(super) fn node_cgroups(&self, node: &str) -> Result<Vec<PathBuf>, String> {
        Ok(Nspawn::cgroup_hierarchies()?
            .into_iter()
            .map(|hierarchy| hierarchy.join(self.lab_cgroup()).join(node))
            .collect())
    }

    /// Makes `lab-LAB/NODE` in every hierarchy and returns each one's
    /// `cgroup.procs`. In the cpuset hierarchy a cgroup accepts no process until it
    /// has CPUs and memory nodes, so those are copied down from the parent.
    pub(super) fn prepare_cgroups(&self, node: &str) -> Result<Vec<PathBuf>, String> {
        let mut procs = Vec::new();
        for hierarchy in Nspawn::cgroup_hierarchies()? {
            let lab = hierarchy.join(self.lab_cgroup());
            let machine = lab.join(node);
            fs::create_dir_all(&machine).map_err(|error| format!("cannot create {}: {error}", machine.display()))?;
            for (parent, child) in [(&hierarchy, &lab), (&lab, &machine)] {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let (source, target) = (parent.join(file), child.join(file));
                    if !source.exists() {
                        continue;
                    }
                    let current = fs::read_to_string(&target).unwrap_or_default();
                    if current.trim().is_empty() {
                        let value = fs::read_to_string(&source)
                            .map_err(|error| format!("cannot read {}: {error}", source.display()))?;
                        fs::write(&target, value.trim())
                            .map_err(|error| format!("cannot write {}: {error}", target.display()))?;
                    }
                }
            }
            procs.push(machine.join("cgroup.procs"));
        }
        Ok(procs)
    }

    /// Kills whatever is still in the node's cgroups and removes them (deepest
    /// first: the node's own systemd made cgroups inside them).
    pub(super) fn remove_node_cgroups(&self, node: &str) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        if let Some(pid) = self.foreign_process(node) {
            return vec![Leftover::new(
                format!("cgroups {}/{node}", self.lab_cgroup()),
                format!("in use by machine {} of another lab (PID {pid}); left alone", self.machine_name(node)),
            )];
        }
        let cgroups = match self.node_cgroups(node) {
            Ok(cgroups) => cgroups,
            Err(message) => return vec![Leftover::new(format!("cgroups of {node}"), message)],
        };
        for cgroup in &cgroups {
            kill_cgroup_tree(cgroup);
        }
        for cgroup in &cgroups {
            if let Err(message) = remove_cgroup_tree(cgroup) {
                leftovers.push(Leftover::new(format!("cgroup {}", cgroup.display()), message));
            }
        }
        leftovers
    }
}

/// Sends SIGKILL to every process in `cgroup` and the cgroups below it.
pub(super) fn kill_cgroup_tree(cgroup: &Path) {
    let Ok(entries) = fs::read_dir(cgroup) else { return };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            kill_cgroup_tree(&entry.path());
        }
    }
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|line| line.trim().parse::<u32>().ok()) {
        let _ = system::send_signal(pid, "KILL");
    }
}

/// Removes `cgroup` and every cgroup below it, deepest first. A cgroup directory is
/// removed with rmdir alone (its files are the kernel's), and only once empty of
/// processes, which may take a moment after they were killed.
pub(super) fn remove_cgroup_tree(cgroup: &Path) -> Result<(), String> {
    if !cgroup.exists() {
        return Ok(());
    }
    let entries = fs::read_dir(cgroup).map_err(|error| error.to_string())?;
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(cgroup = %cgroup.display(), %error, "cgroup busy, retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<&str> = procs.lines().collect();
                return Err(if pids.is_empty() {
                    error.to_string()
                } else {
                    format!("{error}; processes still in it: {}", pids.join(" "))
                });
            }
        }
    }
}
