//! The lab's state directory on the host (`LAB_DIR`, `.lab` by default): the one
//! place that knows its layout, so the CLI, the provisioner, the backends and the
//! conformance suite agree on every file in it.
//!
//! Everything secret the lab makes (the PKI, the SSH key, the admin kubeconfig, the
//! nodes' disks) lives here and nowhere else on the host.

use std::path::{Path, PathBuf};

/// A lab's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The topology the lab was made from, recorded by its first `lab up`: it says
    /// which lab this directory belongs to.
    pub fn topology_record(&self) -> PathBuf {
        self.root.join("topology.toml")
    }

    /// The lab's CA and every certificate and key it issued.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// The lab's SSH key pair and the nodes' host keys.
    pub fn ssh_dir(&self) -> PathBuf {
        self.root.join("ssh")
    }

    /// The private key every node accepts for root.
    pub fn ssh_private_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }

    pub fn ssh_public_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519.pub")
    }

    /// Every node's host key, recorded on first contact.
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }

    /// The admin kubeconfig that `cargo lab kubectl` and the suite use.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }

    /// The machines' disks and runtime files, one directory per node.
    pub fn machines_dir(&self) -> PathBuf {
        self.root.join("machines")
    }

    /// Seconds and changes per stage of the last `lab up`, written last.
    pub fn timings(&self) -> PathBuf {
        self.root.join("timings.json")
    }

    /// The log bundles of failed runs.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The faults `lab break` injected and no `lab restore` undid yet.
    pub fn faults(&self) -> PathBuf {
        self.root.join("faults.json")
    }

    /// The exercise in progress (`lab exercise`).
    pub fn exercise(&self) -> PathBuf {
        self.root.join("exercise.json")
    }

    /// When each failover drill of the conformance suite stopped and restored a
    /// component, so that checks of the lab's history can leave those windows out.
    pub fn drills_log(&self) -> PathBuf {
        self.root.join("drills.log")
    }

    /// The `lab status` the conformance tests of one nextest run share, with the run's
    /// id.
    pub fn suite_status(&self) -> PathBuf {
        self.root.join("suite-status.json")
    }

    /// What each drill measured the last time it ran: `NAME.json`, one
    /// `provisioner::drills::DrillRecord` each.
    pub fn drill_records(&self) -> PathBuf {
        self.root.join("drills")
    }
}
