//! The nspawn backend: every node is a systemd-nspawn container booting the node
//! image with systemd as its PID 1, on the lab's bridge. No KVM is needed.
//!
//! Each node's disk is an overlay: the shared, read-only node image below, and the
//! node's own changes in `STATE/machines/NODE/upper` above, mounted at
//! `STATE/machines/NODE/root` (a few milliseconds instead of copying half a
//! gigabyte). containerd's overlay snapshotter cannot run on an overlay, so
//! `/var/lib/containerd` is a plain host directory, `STATE/machines/NODE/containerd`,
//! bound into the node.
//!
//! How a machine runs depends on the host's PID 1:
//! - where it is systemd, each machine is a transient unit `lab-LAB-NODE.service`
//!   made with `systemd-run`, so `systemctl` and the journal see it like any service;
//! - elsewhere (containers, CI runners, this project's own build machines) the lab
//!   supervises the processes itself: nspawn runs in its own session with its PID in
//!   `STATE/machines/NODE/pid`, in a cgroup `lab-LAB/NODE` made in every hierarchy,
//!   and writes its console to `STATE/machines/NODE/console.log`.
//!
//! The machine's name on the host is `LAB-NODE` (lab names are at most 8
//! characters), so two labs can both have a `master1`. nspawn names the host end of
//! a node's network link `vb-` and the machine name; when that is longer than an
//! interface name may be (machine names over 12 characters) nspawn shortens it with
//! a hash and gives the link the long name as its alternative name. The node's
//! hostname is always its plain node name.
//!
//! The nspawn options are the ones the shared notes found necessary for kubelet:
//! all capabilities, the mount, keyring and bpf system calls, and no registration
//! with machined (which a host without systemd does not run). The cgroup
//! hierarchies are *not* bound into the node: the node gets its own cgroups below
//! `lab-LAB/NODE`, and the image's `lab-api-rw` unit makes them writable at boot.
//!
//! The parts: `process` starts, finds and stops a node's nspawn (as a unit or a
//! supervised process), `cgroups` makes and removes the node's cgroups where the
//! lab supervises it, and `host_limits` raises the host's inotify limit, which all
//! nodes share, before a node starts.

mod cgroups;
mod host_limits;
mod process;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use self::cgroups::remove_cgroup_tree;

use super::hostnet;
use super::node_config::{self, When};
use super::{
    LabSpec, Leftover, MachineError, MachineState, Machines, NodeImage, NodeSpec, PreloadedFile, Requirement,
    StartOutcome, StopOutcome,
};
use crate::plan::HostRoute;
use crate::system::{self, CommandFailure};
use crate::topology::Backend;

/// How a node is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// A clean power-off, for `lab down`: the disks are kept and used again.
    PowerOff,
    /// At once, for `lab destroy`: the disks are thrown away, so nothing inside
    /// needs to shut down cleanly.
    Kill,
}

/// Who keeps the machines' processes running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervisor {
    /// PID 1 is systemd: each machine is a transient service unit.
    SystemdUnits,
    /// PID 1 is something else: the lab starts, records and stops the processes.
    Processes,
}

impl Supervisor {
    /// systemd is PID 1 when it says so in /run/systemd/system (what
    /// `sd_booted()` checks) and PID 1 is indeed called systemd (a container can
    /// inherit the directory from its host).
    pub fn detect() -> Supervisor {
        let booted = Path::new("/run/systemd/system").is_dir();
        let init = fs::read_to_string("/proc/1/comm").unwrap_or_default();
        if booted && init.trim() == "systemd" {
            Supervisor::SystemdUnits
        } else {
            Supervisor::Processes
        }
    }
}

/// The files of one node in the state directory.
#[derive(Debug, Clone)]
struct NodePaths {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    root: PathBuf,
    containerd: PathBuf,
    console: PathBuf,
    pid: PathBuf,
    /// Which image the node's disk was made from: its lower layer forever.
    image: PathBuf,
    /// The node's artifact files (`NodeSpec::preload`), an overlay layer above the
    /// image made when the disk is made and kept with it.
    preloaded: PathBuf,
}

pub struct Nspawn {
    spec: LabSpec,
    supervisor: Supervisor,
}

impl Nspawn {
    pub fn new(spec: LabSpec) -> Nspawn {
        Nspawn::with_supervisor(spec, Supervisor::detect())
    }

    pub fn with_supervisor(spec: LabSpec, supervisor: Supervisor) -> Nspawn {
        Nspawn { spec, supervisor }
    }

    /// The machine's name on the host: `LAB-NODE`.
    pub fn machine_name(&self, node: &str) -> String {
        format!("{}-{node}", self.spec.lab)
    }

    /// The host end of the node's network link, as nspawn names it: `vb-` and the
    /// machine name. Where that is longer than an interface name may be, nspawn
    /// shortens the name with a hash and keeps this one as the link's alternative
    /// name, by which `ip` finds it all the same.
    fn host_link_name(&self, node: &str) -> String {
        format!("vb-{}", self.machine_name(node))
    }

    /// Deletes the host end of a link that a killed machine left behind. The kernel
    /// tears down a dead machine's network namespace, and the link with it, only
    /// some time later; until then nspawn cannot create the link again and the
    /// machine dies at once with "File exists". Deleting one end of a veth pair
    /// deletes both.
    fn remove_stale_link(&self, node: &str) -> Result<(), MachineError> {
        let link = self.host_link_name(node);
        let link_exists = || system::run_program("ip", ["link", "show", "dev", &link]).is_ok();
        if !link_exists() {
            return Ok(());
        }
        match system::run_program("ip", ["link", "delete", "dev", &link]) {
            Ok(_) => Ok(()),
            // The kernel may finish tearing the namespace down, and the link with it,
            // between the check above and `ip link delete`: gone is what we wanted.
            Err(_) if !link_exists() => Ok(()),
            Err(failure) => Err(self.node_error(node, format!("cannot remove the stale link {link}: {failure}"))),
        }
    }

    /// The transient unit of a node on a systemd host.
    pub fn unit_name(&self, node: &str) -> String {
        format!("lab-{}-{node}.service", self.spec.lab)
    }

    /// The cgroup (relative to each hierarchy's root) holding all of the lab's nodes.
    fn lab_cgroup(&self) -> String {
        format!("lab-{}", self.spec.lab)
    }

    /// nspawn's own runtime directory for the machine on the host.
    fn propagate_dir(&self, node: &str) -> PathBuf {
        Path::new("/run/systemd/nspawn/propagate").join(self.machine_name(node))
    }

    fn paths(&self, node: &str) -> NodePaths {
        let dir = self.spec.machines_dir().join(node);
        NodePaths {
            upper: dir.join("upper"),
            work: dir.join("work"),
            root: dir.join("root"),
            containerd: dir.join("containerd"),
            console: dir.join("console.log"),
            pid: dir.join("pid"),
            image: dir.join("image"),
            preloaded: dir.join("preloaded"),
            dir,
        }
    }

    fn node_error(&self, node: &str, message: impl Into<String>) -> MachineError {
        MachineError::Node { node: node.to_string(), message: message.into() }
    }

    /// The systemd-nspawn arguments that boot `node` from its mounted disk.
    fn nspawn_arguments(&self, node: &NodeSpec, paths: &NodePaths) -> Vec<OsString> {
        let mut arguments: Vec<OsString> = vec![
            format!("--directory={}", paths.root.display()).into(),
            "--boot".into(),
            format!("--machine={}", self.machine_name(&node.name)).into(),
            format!("--hostname={}", node.name).into(),
            format!("--network-bridge={}", self.spec.bridge).into(),
            // kubelet, containerd and runc manage mounts, cgroups, namespaces and
            // BPF device filters inside the node.
            "--capability=all".into(),
            "--system-call-filter=@mount @keyring bpf".into(),
            // No machined registration (a host without systemd has none), and no new
            // scope: the machine stays in the cgroup or unit it was started in.
            "--register=no".into(),
            "--keep-unit".into(),
            "--console=read-only".into(),
            // The image's own resolv.conf and time zone, nothing of the host's; no
            // journal shared with the host; no stray .nspawn file applies.
            "--resolv-conf=off".into(),
            "--timezone=off".into(),
            "--link-journal=no".into(),
            "--settings=no".into(),
        ];
        let mut bind = OsString::from("--bind=");
        bind.push(&paths.containerd);
        bind.push(":/var/lib/containerd");
        arguments.push(bind);
        arguments
    }

    /// Mounts the node's overlay disk at `root` unless it is mounted already: its own
    /// upper layer on its preloaded artifacts (where it has them) on the image.
    fn mount_disk(&self, node: &str, paths: &NodePaths, image: &Path) -> Result<(), MachineError> {
        let mounted = system::is_mount_point(&paths.root)
            .map_err(|error| self.node_error(node, format!("cannot read the mount table: {error}")))?;
        if mounted {
            return Ok(());
        }
        // Mount options are comma-separated and the overlay's layer lists are
        // colon-separated: a path with either would be read as something else.
        let mut lowers = Vec::new();
        if paths.preloaded.is_dir() {
            lowers.push(paths.preloaded.as_path());
        }
        lowers.push(image);
        for path in lowers.iter().copied().chain([paths.upper.as_path(), paths.work.as_path()]) {
            let text = path.to_string_lossy();
            if text.contains(',') || text.contains(':') {
                return Err(self.node_error(
                    node,
                    format!(
                        "{} contains ',' or ':', which overlay mounts cannot name; move the state or cache dir",
                        text
                    ),
                ));
            }
        }
        let lowers: Vec<String> = lowers.iter().map(|path| path.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            paths.upper.display(),
            paths.work.display()
        );
        let mut command = Command::new("mount");
        command.args(["-t", "overlay", "overlay", "-o", &options]).arg(&paths.root);
        system::run(&mut command).map_err(|failure| self.node_error(node, failure.to_string()))?;
        Ok(())
    }

    /// The image the node's disk is made from. A node keeps the image it was made
    /// from: the overlay's upper layer only makes sense on top of that exact lower
    /// layer, so a newer image serves only new nodes.
    fn lower_layer(&self, node: &str, paths: &NodePaths, image: &NodeImage) -> Result<PathBuf, MachineError> {
        let recorded =
            super::disk_image(&paths.image, &image.root).map_err(|message| self.node_error(node, message))?;
        if recorded == image.root || recorded.is_dir() {
            if recorded != image.root {
                tracing::info!(node, image = %recorded.display(), "node keeps the image its disk was made from");
            }
            return Ok(recorded);
        }
        Err(self.node_error(
            node,
            format!(
                "its disk was made from the image {}, which is no longer in the cache; \
                 `lab destroy` and `lab up` make new machines from the current image",
                recorded.display()
            ),
        ))
    }

    /// Makes the node's preloaded layer: its artifact files at their paths on the
    /// node, as hard links into the artifact cache where the cache file already has
    /// the planned mode (no copy, no space), else as copies. The cache replaces a file
    /// by renaming a new one into place, never by rewriting it, so a link keeps the
    /// content the node was made with. Runs before the node's upper layer exists: a
    /// layer left by an interrupted creation is made again, and a disk, once made,
    /// always mounts on the same layers.
    fn lay_preloaded(&self, node: &NodeSpec, paths: &NodePaths) -> Result<(), MachineError> {
        let name = &node.name;
        let staging = paths.dir.join("preloaded.partial");
        for leftover in [&paths.preloaded, &staging] {
            system::remove_tree(leftover)
                .map_err(|message| self.node_error(name, format!("cannot remove {}: {message}", leftover.display())))?;
        }
        if node.preload.is_empty() {
            return Ok(());
        }
        for file in &node.preload {
            let target = staging.join(file.path.trim_start_matches('/'));
            preload_file(&staging, &target, file).map_err(|message| {
                self.node_error(name, format!("cannot preload {} from {}: {message}", file.path, file.source.display()))
            })?;
        }
        fs::rename(&staging, &paths.preloaded)
            .map_err(|error| self.node_error(name, format!("cannot rename {} into place: {error}", staging.display())))
    }

    /// Stops a node the way `halt` says, then cleans up its cgroups and unmounts
    /// its disk.
    fn halt(&self, node: &str, halt: Halt) -> Result<StopOutcome, MachineError> {
        let outcome = match self.supervisor {
            Supervisor::SystemdUnits => self.stop_unit(node, halt)?,
            Supervisor::Processes => {
                let outcome = self.stop_process(node, halt)?;
                if let Some(leftover) = self.remove_node_cgroups(node).first() {
                    return Err(self.node_error(node, leftover.to_string()));
                }
                // The lab's parent cgroup goes with its last node; while other nodes
                // run it is busy, which is fine.
                if let Ok(hierarchies) = Nspawn::cgroup_hierarchies() {
                    for hierarchy in hierarchies {
                        let _ = fs::remove_dir(hierarchy.join(self.lab_cgroup()));
                    }
                }
                outcome
            }
        };
        let paths = self.paths(node);
        system::unmount(&paths.root).map_err(|failure| self.node_error(node, failure.to_string()))?;
        let _ = fs::remove_file(&paths.pid);
        // nspawn keeps a directory per machine for `machinectl bind` and removes it
        // on exit only where /run is a tmpfs; elsewhere it is left, empty.
        system::remove_tree(&self.propagate_dir(node)).map_err(|message| {
            self.node_error(node, format!("cannot remove {}: {message}", self.propagate_dir(node).display()))
        })?;
        Ok(outcome)
    }

    /// Writes what makes a node itself into its mounted disk: the files of
    /// `node_config::node_files` (hostname, static address, the lab's key for root,
    /// /etc/hosts), a machine ID and SSH host keys. Identity that must stay stable
    /// (machine ID, host keys, /etc/hosts, which the hosts stage owns afterwards) is
    /// written only when the node's own layer lacks it; hostname and address are the
    /// machines layer's and rewritten on every start.
    fn configure(&self, node: &NodeSpec, paths: &NodePaths, authorized_key: &str) -> Result<(), MachineError> {
        let name = &node.name;
        let root = &paths.root;
        let io = |path: &Path, error: std::io::Error| {
            self.node_error(name, format!("cannot write {}: {error}", path.display()))
        };
        let write = |relative: &str, mode: u32, content: &str| -> Result<(), MachineError> {
            let path = root.join(relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|error| io(parent, error))?;
            }
            system::write_atomically(&path, content.as_bytes(), mode).map_err(|error| io(&path, error))
        };

        let ssh_dir = root.join("root/.ssh");
        fs::create_dir_all(&ssh_dir).map_err(|error| io(&ssh_dir, error))?;
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).map_err(|error| io(&ssh_dir, error))?;
        for file in node_config::node_files(node, self.spec.gateway.prefix_len(), authorized_key) {
            match file.when {
                When::EveryStart => write(file.path, file.mode, &file.content)?,
                When::FirstBoot => {
                    if !paths.upper.join(file.path).exists() {
                        write(file.path, file.mode, &file.content)?;
                    }
                }
                When::AppendLines => {
                    let existing = fs::read_to_string(root.join(file.path)).unwrap_or_default();
                    if let Some(merged) = node_config::append_missing_lines(&existing, &file.content) {
                        write(file.path, file.mode, &merged)?;
                    }
                }
            }
        }
        let machine_id = fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
        if machine_id.trim().is_empty() {
            let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")
                .map_err(|error| self.node_error(name, format!("cannot read a random UUID: {error}")))?;
            write("etc/machine-id", 0o444, &format!("{}\n", uuid.trim().replace('-', "")))?;
        }
        if !root.join("etc/ssh/ssh_host_ed25519_key").exists() {
            node_config::make_host_keys(root, name).map_err(|message| self.node_error(name, message))?;
        }
        Ok(())
    }

    /// Stops one node and removes its disk and runtime files.
    fn destroy_node(&self, node: &str) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        if let Err(error) = self.halt(node, Halt::Kill) {
            leftovers.push(Leftover::new(format!("machine {}", self.machine_name(node)), error.to_string()));
        }
        if let Err(error) = self.remove_stale_link(node) {
            leftovers.push(Leftover::new(format!("link of {}", self.machine_name(node)), error.to_string()));
        }
        if self.supervisor == Supervisor::SystemdUnits {
            let _ = system::run_program("systemctl", ["reset-failed", &self.unit_name(node)]);
        }
        let directory = self.paths(node).dir;
        if let Err(message) = system::remove_tree(&directory) {
            leftovers.push(Leftover::new(format!("disk {}", directory.display()), message));
        }
        leftovers
    }
}

/// Puts one artifact file at `target` inside the layer `layer`. Every directory it
/// makes is 0755 whatever the umask: a layer's directories show through on the node
/// (/usr/local/bin, /var/lib), so they must be what the image has there.
fn preload_file(layer: &Path, target: &Path, file: &PreloadedFile) -> Result<(), String> {
    let parent = target.parent().ok_or("no parent directory")?;
    let relative = parent.strip_prefix(layer).map_err(|_| "outside the layer")?;
    let mut directory = layer.to_path_buf();
    let mut directories = vec![directory.clone()];
    for part in relative.components() {
        directory.push(part);
        directories.push(directory.clone());
    }
    for directory in directories {
        if !directory.is_dir() {
            fs::create_dir(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
        }
        fs::set_permissions(&directory, fs::Permissions::from_mode(0o755))
            .map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    let source = fs::metadata(&file.source).map_err(|error| error.to_string())?;
    let linkable = source.permissions().mode() & 0o7777 == file.mode && source.uid() == 0;
    if linkable && fs::hard_link(&file.source, target).is_ok() {
        return Ok(());
    }
    // Another filesystem, or another mode: a copy of its own.
    fs::copy(&file.source, target).map_err(|error| error.to_string())?;
    fs::set_permissions(target, fs::Permissions::from_mode(file.mode)).map_err(|error| error.to_string())
}

impl Machines for Nspawn {
    fn backend(&self) -> Backend {
        Backend::Nspawn
    }

    fn requirements(&self) -> Vec<Requirement> {
        let mut requirements = vec![Requirement::root()];
        let mut programs = vec![
            ("systemd-nspawn", "runs the nodes", "systemd-container"),
            ("mmdebstrap", "builds the node image", "mmdebstrap"),
            ("systemctl", "prepares the image's units", "systemd"),
            ("ip", "makes the lab bridge and routes", "iproute2"),
            ("ssh-keygen", "makes SSH keys", "openssh-client"),
            ("ssh", "`lab ssh`", "openssh-client"),
            ("mount", "mounts node disks", "mount"),
        ];
        match self.supervisor {
            Supervisor::SystemdUnits => programs.push(("systemd-run", "starts node units", "systemd")),
            Supervisor::Processes => {
                programs.push(("setsid", "starts nodes in their own session", "util-linux"));
                programs.push(("kill", "stops nodes", "procps"));
            }
        }
        requirements
            .extend(programs.into_iter().map(|(program, why, package)| Requirement::program(program, why, package)));
        let overlay = fs::read_to_string("/proc/filesystems").is_ok_and(|text| text.contains("\toverlay"));
        requirements.push(Requirement {
            what: "overlay filesystem (node disks on the shared image)".into(),
            met: overlay,
            package: None,
            fix: "modprobe overlay (a kernel with CONFIG_OVERLAY_FS)".into(),
        });
        requirements.push(link_support(&self.spec.lab));
        if self.supervisor == Supervisor::Processes {
            let hierarchies = Nspawn::cgroup_hierarchies();
            requirements.push(Requirement {
                what: "cgroups mounted under /sys/fs/cgroup (each node gets its own)".into(),
                met: hierarchies.is_ok(),
                package: None,
                fix: "mount cgroup2 on /sys/fs/cgroup (`mount -t cgroup2 none /sys/fs/cgroup`)".into(),
            });
        }
        requirements
    }

    fn ensure_image(&self, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
        super::image::ensure(&self.spec.cache_dir, &super::image::ImageRecipe::default(), progress)
    }

    fn ensure_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
        self.spec.ensure_host_network(routes)
    }

    fn create_or_start(
        &self,
        node: &NodeSpec,
        image: &NodeImage,
        authorized_key: &str,
    ) -> Result<StartOutcome, MachineError> {
        let name = &node.name;
        // Before the running check too: a running lab's kubelets keep restarting
        // until the limit is raised, and `lab up` must converge them.
        match host_limits::make_room_for_inotify(&system::LocalSystem) {
            Ok(Some(old)) => tracing::info!(
                old,
                new = host_limits::INOTIFY_INSTANCES_WANTED,
                "raised {} so that the nodes of more than one lab can start",
                host_limits::INOTIFY_INSTANCES
            ),
            Ok(None) => {}
            Err(message) => return Err(self.node_error(name, message)),
        }
        if self.is_running(name) {
            return Ok(StartOutcome::AlreadyRunning);
        }
        if let Some(pid) = self.foreign_process(name) {
            return Err(self.node_error(
                name,
                format!(
                    "machine {} already runs from another state directory (PID {pid}); \
                     two labs of the same name cannot run at once",
                    self.machine_name(name)
                ),
            ));
        }
        let paths = self.paths(name);
        let created = !paths.upper.exists();
        self.spec.create_machines_dir().map_err(|message| self.node_error(name, message))?;
        fs::create_dir_all(&paths.dir)
            .map_err(|error| self.node_error(name, format!("cannot create {}: {error}", paths.dir.display())))?;
        let lower = self.lower_layer(name, &paths, image)?;
        if created {
            self.lay_preloaded(node, &paths)?;
        }
        for directory in [&paths.upper, &paths.work, &paths.root, &paths.containerd] {
            fs::create_dir_all(directory)
                .map_err(|error| self.node_error(name, format!("cannot create {}: {error}", directory.display())))?;
        }
        self.mount_disk(name, &paths, &lower)?;
        self.configure(node, &paths, authorized_key)?;
        self.remove_stale_link(name)?;
        match self.supervisor {
            Supervisor::SystemdUnits => self.launch_unit(node, &paths)?,
            Supervisor::Processes => {
                // Cgroups left by a machine that crashed would still hold its
                // node's old sub-cgroups; start from empty ones.
                let leftovers = self.remove_node_cgroups(name);
                if let Some(leftover) = leftovers.first() {
                    return Err(self.node_error(name, leftover.to_string()));
                }
                self.launch_process(node, &paths)?
            }
        }
        Ok(StartOutcome::Started { created })
    }

    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError> {
        self.halt(node, Halt::PowerOff)
    }

    fn memory_bytes(&self, node: &str) -> Option<u64> {
        // The node's cgroup in the memory controller's hierarchy (cgroup v1), or in the
        // unified one (cgroup v2), whichever the host has.
        self.node_cgroups(node).ok()?.into_iter().find_map(|cgroup| {
            let read = |name: &str| fs::read_to_string(cgroup.join(name)).ok();
            let usage = read("memory.usage_in_bytes").or_else(|| read("memory.current"))?;
            super::working_set(&usage, &read("memory.stat")?)
        })
    }

    fn status(&self, node: &str) -> Result<MachineState, MachineError> {
        if self.is_running(node) {
            return Ok(MachineState::Running);
        }
        Ok(if self.paths(node).upper.is_dir() { MachineState::Stopped } else { MachineState::Missing })
    }

    fn known_nodes(&self) -> Vec<String> {
        self.spec.known_nodes(self.spec.nodes_on_disk())
    }

    fn console_log(&self, node: &str) -> Option<PathBuf> {
        Some(self.paths(node).console).filter(|path| path.exists())
    }

    fn removes_nodes(&self) -> bool {
        true
    }

    fn remove_node(&self, node: &str) -> Vec<Leftover> {
        self.destroy_node(node)
    }

    fn destroy(&self) -> Vec<Leftover> {
        let nodes = self.known_nodes();
        // Nodes go in parallel: each one's power-off takes a second or two.
        let mut leftovers: Vec<Leftover> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes.iter().map(|node| scope.spawn(move || self.destroy_node(node))).collect();
            handles
                .into_iter()
                .flat_map(|handle| {
                    handle.join().unwrap_or_else(|_| vec![Leftover::new("a machine", "destroying it panicked")])
                })
                .collect()
        });
        let machines = self.spec.machines_dir();
        if let Err(message) = system::remove_tree(&machines) {
            leftovers.push(Leftover::new(format!("directory {}", machines.display()), message));
        }
        for (node, pid) in self.surviving_processes(&nodes) {
            leftovers
                .push(Leftover::new(format!("process {pid} (machine {})", self.machine_name(&node)), "still running"));
        }
        if self.supervisor == Supervisor::Processes {
            if let Ok(hierarchies) = Nspawn::cgroup_hierarchies() {
                for hierarchy in hierarchies {
                    // Each node's processes were killed with its own cgroups above;
                    // anything still here is not this lab's to kill, so rmdir alone.
                    let lab = hierarchy.join(self.lab_cgroup());
                    if let Err(message) = remove_cgroup_tree(&lab) {
                        leftovers.push(Leftover::new(format!("cgroup {}", lab.display()), message));
                    }
                }
            }
        }
        leftovers.extend(hostnet::teardown(&self.spec.bridge, &hostnet::owner_tag(&self.spec.state_dir)));
        leftovers
    }
}

/// Whether the kernel makes bridges and veth pairs, tried for real: the modules may
/// be built in (then /sys/module does not list them) and /lib/modules may be absent.
fn link_support(lab: &str) -> Requirement {
    let probe = format!("lprobe-{lab}");
    let peer = format!("lprobp-{lab}");
    let veth = system::run_program("ip", ["link", "add", &probe, "type", "veth", "peer", "name", &peer]);
    let _ = system::run_program("ip", ["link", "del", &probe]);
    let bridge_probe = format!("lbrprb-{lab}");
    let bridge = system::run_program("ip", ["link", "add", &bridge_probe, "type", "bridge"]);
    let _ = system::run_program("ip", ["link", "del", &bridge_probe]);
    let failure = [veth.err(), bridge.err()].into_iter().flatten().map(|failure: CommandFailure| failure.to_string());
    let failures: Vec<String> = failure.collect();
    Requirement {
        what: "bridge and veth network links".into(),
        met: failures.is_empty(),
        package: Some("iproute2".into()),
        fix: if failures.is_empty() {
            "modprobe bridge veth".into()
        } else {
            format!("modprobe bridge veth ({})", failures.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    pub(super) fn backend(supervisor: Supervisor) -> Nspawn {
        Nspawn::with_supervisor(
            LabSpec {
                lab: "k8s".into(),
                state_dir: PathBuf::from("/srv/lab"),
                cache_dir: PathBuf::from("/cache"),
                bridge: "lab-k8s".into(),
                gateway: "10.240.0.1/24".parse().unwrap(),
                acceleration: crate::topology::Acceleration::Auto,
                vagrant_box: None,
                nodes: vec![NodeSpec::new("master1", Ipv4Addr::new(10, 240, 0, 11))],
            },
            supervisor,
        )
    }

    pub(super) fn strings(arguments: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>) -> Vec<String> {
        arguments.into_iter().map(|argument| argument.as_ref().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn host_side_names_carry_the_lab_name() {
        let nspawn = backend(Supervisor::Processes);
        assert_eq!(nspawn.machine_name("master1"), "k8s-master1");
        assert_eq!(nspawn.unit_name("master1"), "lab-k8s-master1.service");
        assert_eq!(nspawn.lab_cgroup(), "lab-k8s");
        let paths = nspawn.paths("master1");
        assert_eq!(paths.root, Path::new("/srv/lab/machines/master1/root"));
        assert_eq!(paths.pid, Path::new("/srv/lab/machines/master1/pid"));
    }

    #[test]
    fn a_new_disk_gets_its_artifacts_as_links_or_as_copies_of_the_planned_mode() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let cache = scratch.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        let binary = cache.join("kubelet");
        fs::write(&binary, b"a binary").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let archive = cache.join("pause.tar");
        fs::write(&archive, b"an archive").unwrap();
        fs::set_permissions(&archive, fs::Permissions::from_mode(0o600)).unwrap();
        let mut nspawn = backend(Supervisor::Processes);
        nspawn.spec.state_dir = scratch.path().join("state");
        let mut node = NodeSpec::new("worker1", Ipv4Addr::new(10, 240, 0, 21));
        node.preload = vec![
            PreloadedFile { path: "/usr/local/bin/kubelet".into(), mode: 0o755, source: binary.clone() },
            PreloadedFile { path: "/var/lib/k8s-lab/images/pause.tar".into(), mode: 0o644, source: archive.clone() },
        ];
        let paths = nspawn.paths("worker1");
        // What an interrupted creation left: made again from scratch.
        fs::create_dir_all(paths.dir.join("preloaded.partial/stale")).unwrap();

        nspawn.lay_preloaded(&node, &paths).expect("the layer is made");

        let linked = fs::metadata(paths.preloaded.join("usr/local/bin/kubelet")).unwrap();
        let source = fs::metadata(&binary).unwrap();
        // Only a root-owned cache file is linked: a node must not see another owner.
        assert_eq!(linked.ino() == source.ino(), source.uid() == 0);
        assert_eq!(linked.permissions().mode() & 0o7777, 0o755);
        let copied = fs::metadata(paths.preloaded.join("var/lib/k8s-lab/images/pause.tar")).unwrap();
        assert_ne!(copied.ino(), fs::metadata(&archive).unwrap().ino(), "another mode: a copy, the cache untouched");
        assert_eq!(copied.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs::metadata(&archive).unwrap().permissions().mode() & 0o7777, 0o600);
        for directory in ["", "usr", "usr/local", "usr/local/bin", "var/lib/k8s-lab/images"] {
            let mode = fs::metadata(paths.preloaded.join(directory)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{directory}");
        }
        assert!(!paths.dir.join("preloaded.partial").exists());

        node.preload.clear();
        nspawn.lay_preloaded(&node, &paths).expect("no layer");
        assert!(!paths.preloaded.exists(), "a node with nothing to preload mounts the image alone");
    }

    #[test]
    fn nspawn_gets_the_options_kubelet_needs_and_no_cgroup_bind() {
        let nspawn = backend(Supervisor::Processes);
        let node = &nspawn.spec.nodes[0];
        let arguments = strings(nspawn.nspawn_arguments(node, &nspawn.paths("master1")));
        for expected in [
            "--directory=/srv/lab/machines/master1/root",
            "--boot",
            "--machine=k8s-master1",
            "--hostname=master1",
            "--network-bridge=lab-k8s",
            "--capability=all",
            "--system-call-filter=@mount @keyring bpf",
            "--register=no",
            "--keep-unit",
            "--bind=/srv/lab/machines/master1/containerd:/var/lib/containerd",
        ] {
            assert!(arguments.iter().any(|argument| argument == expected), "{expected} missing from {arguments:?}");
        }
        assert!(!arguments.iter().any(|argument| argument.contains("/sys/fs/cgroup")), "{arguments:?}");
    }
}
