//! The host kernel limits that every node counts against. nspawn nodes share the
//! host's kernel and its root user, so a per-user kernel limit is shared by every
//! node of every lab on the host.

use std::path::Path;

use crate::system::System;

/// How many inotify instances one user may hold. Each node's systemd, containerd,
/// kubelet (cAdvisor, its plugin watcher) and kube-proxy take some: the default lab
/// of eight nodes held 86 of them (measured 2026-12-07), and the kernel's default of
/// 128 left no room for a second lab, whose kubelets then stopped at "Failed to start
/// cAdvisor inotify_init: too many open files".
pub(super) const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

/// Room for about ten such labs; the kind project advises 512 for a few clusters.
pub(super) const INOTIFY_INSTANCES_WANTED: u64 = 1024;

/// Raises the host's inotify instance limit to `INOTIFY_INSTANCES_WANTED` when it is
/// lower, and leaves a higher one (the administrator's choice) alone. Returns the old
/// value when it raised it, for the log.
pub(super) fn make_room_for_inotify(system: &dyn System) -> Result<Option<u64>, String> {
    let path = Path::new(INOTIFY_INSTANCES);
    let current = system.read_file(path).map_err(|error| format!("cannot read {INOTIFY_INSTANCES}: {error}"))?;
    let current: u64 = current
        .trim()
        .parse()
        .map_err(|error| format!("{INOTIFY_INSTANCES} holds {:?}, not a number: {error}", current.trim()))?;
    if current >= INOTIFY_INSTANCES_WANTED {
        return Ok(None);
    }
    system.write_in_place(path, INOTIFY_INSTANCES_WANTED.to_string().as_bytes()).map_err(|error| {
        format!("cannot raise {INOTIFY_INSTANCES} from {current} to {INOTIFY_INSTANCES_WANTED}: {error}")
    })?;
    Ok(Some(current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::RecordingSystem;

    #[test]
    fn a_limit_below_what_the_nodes_need_is_raised() {
        let system = RecordingSystem::new();
        system.seed_file(INOTIFY_INSTANCES, "128\n");
        assert_eq!(make_room_for_inotify(&system), Ok(Some(128)));
        assert_eq!(system.file(INOTIFY_INSTANCES), Some(b"1024".to_vec()));
    }

    #[test]
    fn a_higher_limit_is_left_as_the_administrator_set_it() {
        let system = RecordingSystem::new();
        system.seed_file(INOTIFY_INSTANCES, "8192\n");
        assert_eq!(make_room_for_inotify(&system), Ok(None));
        assert_eq!(system.file(INOTIFY_INSTANCES), Some(b"8192\n".to_vec()));
    }

    #[test]
    fn an_unreadable_limit_is_an_error_naming_the_setting() {
        let system = RecordingSystem::new();
        let error = make_room_for_inotify(&system).expect_err("nothing to read");
        assert!(error.contains(INOTIFY_INSTANCES), "{error}");
    }
}
