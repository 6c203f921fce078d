//! The Vagrant backend: Vagrant with the vagrant-libvirt provider makes the machines,
//! from the repository's top-level `Vagrantfile`, and the lab provisions them over SSH
//! exactly as it does every other kind of machine.
//!
//! `lab` decides everything and Vagrant carries it out. Before each `vagrant up`, the
//! lab writes its resolved topology to `STATE/vagrant/topology.json` (nodes, addresses,
//! sizes, MACs, the box, the network, the storage pool, the SSH key); the Vagrantfile
//! only reads it. Vagrant runs with the repository as `VAGRANT_CWD`, its machine records
//! in `STATE/vagrant/dot` (`VAGRANT_DOTFILE_PATH`) and no check for updates, so it
//! never needs the internet.
//!
//! What the lab makes for Vagrant, all named after the lab and removed by `destroy`:
//! - the box `k8s-lab-LAB/node-HASH`, a libvirt box made from the node image's VM disk
//!   (`vm_image`): `box.img` (the qcow2 root filesystem), `metadata.json` and a
//!   `Vagrantfile`. The name carries the lab because vagrant-libvirt finds a box's
//!   volume by name in *any* storage pool, and a lab must never build on another's;
//! - the storage pool `lab-LAB-pool`, a directory `STATE/vagrant/pool`, into which
//!   vagrant-libvirt uploads the box and makes each machine's copy-on-write volume,
//!   and where the lab puts each node's config disk (`NODE-config.img`);
//! - the isolated network `lab-LAB-net` (no `<forward>`, no DHCP, no DNS) on the lab
//!   bridge `lab-LAB`, Vagrant's management network: vagrant-libvirt finds it and
//!   creates no network of its own;
//! - copies of the image's kernel and initrd in `STATE/vagrant/boot`, since libvirt
//!   runs these machines' QEMU as `libvirt-qemu`, which may not read root's cache.
//!
//! The machines are the domains `lab-LAB-NODE`, tagged by their description. After
//! `vagrant up`, `vagrant ssh-config` must name exactly the address, port, user and key
//! the provisioner uses, so the lab and Vagrant provably talk to the same machines.
//!
//! The parts: `cli` runs Vagrant (and packs and adds the box), `topology_file` is what
//! the Vagrantfile reads, and `libvirt_objects` are the pool, network and domains the
//! lab keeps track of in libvirt itself.

mod cli;
mod libvirt_objects;
mod topology_file;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::hostnet;
use super::libvirt_host::{self, virsh};
use super::vm_image::{self, VmImage};
use super::{
    LabSpec, Leftover, MachineError, MachineState, Machines, NodeDone, NodeImage, NodeOutcomes, NodeSpec, Requirement,
    StartOutcome, StopOutcome,
};
use crate::plan::HostRoute;
use crate::system;
use crate::topology::Backend;

/// libvirt writes a MAC address list here for every network a domain starts on, and
/// fails to start the domain when the directory is missing (it is, on a host whose
/// libvirtd was started by hand and not by its package's service).
const LIBVIRT_DNSMASQ_DIR: &str = "/var/lib/libvirt/dnsmasq";

pub struct Vagrant {
    spec: LabSpec,
    /// Held while `vagrant up` runs. Vagrant refuses to work on a machine another run
    /// of it is working on, so starts of single nodes (`create_or_start`) asked for at
    /// once wait here; the later ones find their machines running.
    up: Mutex<()>,
}

impl Vagrant {
    pub fn new(spec: LabSpec) -> Vagrant {
        Vagrant { spec, up: Mutex::new(()) }
    }

    /// `STATE/vagrant`: everything of Vagrant's in the state directory.
    fn dir(&self) -> PathBuf {
        self.spec.state_dir.join("vagrant")
    }

    fn topology_path(&self) -> PathBuf {
        self.dir().join("topology.json")
    }

    fn dotfile_dir(&self) -> PathBuf {
        self.dir().join("dot")
    }

    fn pool_dir(&self) -> PathBuf {
        self.dir().join("pool")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("vagrant.log")
    }

    /// `STATE/vagrant/image`: the node image the lab's machines were made from.
    fn image_record(&self) -> PathBuf {
        self.dir().join("image")
    }

    /// `STATE/vagrant/accelerator`: what `acceleration = "auto"` chose, so the KVM
    /// probe (a guest kernel boot) runs once per lab.
    fn accelerator_record(&self) -> PathBuf {
        self.dir().join("accelerator")
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.spec.machines_dir().join(node)
    }

    fn console_path(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("console.log")
    }

    /// The prefix of the lab's domains, network and pool: `lab-LAB-`.
    fn object_prefix(&self) -> String {
        format!("lab-{}-", self.spec.lab)
    }

    pub fn domain_name(&self, node: &str) -> String {
        format!("{}{node}", self.object_prefix())
    }

    pub fn network_name(&self) -> String {
        format!("{}net", self.object_prefix())
    }

    pub fn pool_name(&self) -> String {
        format!("{}pool", self.object_prefix())
    }

    /// Every box this lab adds starts with this.
    fn box_prefix(&self) -> String {
        format!("k8s-lab-{}/", self.spec.lab)
    }

    /// The box the machines are made from: the topology's `vagrant_box` (a box
    /// Vagrant fetches itself), else the lab's own, made from the node image.
    pub fn box_name(&self, image_key: &str, public_box: Option<&str>) -> String {
        match public_box {
            Some(name) => name.to_string(),
            None => format!("{}{image_key}", self.box_prefix()),
        }
    }

    /// The description of the lab's domains, which tags them as this state directory's.
    pub fn description(&self) -> String {
        format!("k8s-lab vagrant machine of lab {} in {}", self.spec.lab, self.spec.state_dir.display())
    }

    fn node_error(&self, node: &str, message: impl Into<String>) -> MachineError {
        MachineError::Node { node: node.to_string(), message: message.into() }
    }

    /// Starts every node of the lab with one `vagrant up`, after writing what the
    /// Vagrantfile reads: the topology file, the kernel, and each node's config disk in
    /// the pool. Returns each node's outcome by name.
    fn up(&self, image: &NodeImage, authorized_key: &str) -> Result<BTreeMap<String, StartOutcome>, MachineError> {
        let _running = self.up.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let host_error = |message: String| MachineError::Host { message };
        let before: BTreeMap<String, MachineState> =
            self.spec.nodes.iter().map(|node| (node.name.clone(), self.domain_state(&node.name))).collect();
        let outcome = |state: &MachineState| match state {
            MachineState::Running => StartOutcome::AlreadyRunning,
            MachineState::Stopped => StartOutcome::Started { created: false },
            MachineState::Missing => StartOutcome::Started { created: true },
        };
        let outcomes = before.iter().map(|(node, state)| (node.clone(), outcome(state))).collect();
        if before.values().all(|state| *state == MachineState::Running) {
            return Ok(outcomes);
        }
        for (node, state) in &before {
            if *state != MachineState::Missing && !self.owns_domain(node) {
                return Err(self.node_error(
                    node,
                    format!(
                        "libvirt domain {} belongs to another lab or state directory; destroy that lab first",
                        self.domain_name(node)
                    ),
                ));
            }
        }

        let vm = self.lab_image(image)?;
        let accelerator = vm_image::decide_acceleration(self.spec.acceleration, &vm, &self.accelerator_record())?;
        if self.spec.vagrant_box.is_none() {
            self.ensure_box(&vm)?;
        }
        let boot = self.copy_boot_files(&vm)?;
        self.ensure_pool()?;
        self.spec.create_machines_dir().map_err(host_error)?;
        for node in &self.spec.nodes {
            // A running node has read its config disk at boot; it is left alone.
            if before[&node.name] != MachineState::Running {
                self.write_config_disk(node, authorized_key)?;
            }
        }
        virsh(&["pool-refresh", &self.pool_name()]).map_err(|failure| host_error(failure.to_string()))?;

        let record = self.topology_record(&vm, accelerator, boot);
        let json = serde_json::to_string_pretty(&record).map_err(|error| host_error(error.to_string()))?;
        system::write_atomically(&self.topology_path(), format!("{json}\n").as_bytes(), 0o644)
            .map_err(|error| host_error(format!("cannot write {}: {error}", self.topology_path().display())))?;

        // `--no-provision`: the lab provisions the machines itself, over SSH.
        self.run_logged(&["up", "--provider=libvirt", "--no-provision", "--parallel"]).map_err(host_error)?;
        self.check_ssh_config()?;
        Ok(outcomes)
    }

    /// `node`'s outcome of `up`: its own, or the failure of the whole `vagrant up`.
    fn outcome(
        &self,
        node: &str,
        up: &Result<BTreeMap<String, StartOutcome>, MachineError>,
    ) -> Result<StartOutcome, MachineError> {
        match up {
            Ok(outcomes) => {
                outcomes.get(node).copied().ok_or_else(|| self.node_error(node, "not a node of the lab's topology"))
            }
            Err(error) => Err(self.node_error(node, error.to_string())),
        }
    }

    /// The node image the lab's machines are made from: the one recorded when they
    /// were first made (their disks and kernel modules belong to it), else `image`.
    fn lab_image(&self, image: &NodeImage) -> Result<VmImage, MachineError> {
        let current = vm_image::ensure(image, &|_| {})?;
        let record = self.image_record();
        let recorded = fs::read_to_string(&record).ok().map(|text| text.trim().to_string());
        let machines_exist = self.spec.nodes.iter().any(|node| self.domain_state(&node.name) != MachineState::Missing);
        match recorded {
            Some(key) if key != current.key && machines_exist => {
                let kept = VmImage::paths(&NodeImage {
                    key: key.clone(),
                    root: current.dir.parent().and_then(Path::parent).unwrap_or(&current.dir).join(&key).join("rootfs"),
                    from_cache: true,
                });
                if kept.disk.is_file() && kept.kernel.is_file() && kept.initrd.is_file() {
                    return Ok(kept);
                }
                Err(MachineError::Image {
                    key,
                    message: "the lab's machines were made from this image, which is no longer in the cache; \
                              `lab destroy` and `lab up` make new machines from the current image"
                        .into(),
                })
            }
            _ => {
                fs::create_dir_all(self.dir())
                    .and_then(|()| system::write_atomically(&record, format!("{}\n", current.key).as_bytes(), 0o644))
                    .map_err(|error| MachineError::Host {
                        message: format!("cannot write {}: {error}", record.display()),
                    })?;
                Ok(current)
            }
        }
    }

    /// Copies the image's kernel and initrd to `STATE/vagrant/boot/KEY`, where the
    /// machines' QEMU (user libvirt-qemu) may read them; returns (kernel, initrd).
    fn copy_boot_files(&self, vm: &VmImage) -> Result<(PathBuf, PathBuf), MachineError> {
        let boot = self.dir().join("boot").join(&vm.key);
        let error = |message: String| MachineError::Image { key: vm.key.clone(), message };
        fs::create_dir_all(&boot).map_err(|failure| error(format!("cannot create {}: {failure}", boot.display())))?;
        let mut copies = Vec::new();
        for source in [&vm.kernel, &vm.initrd] {
            let target = boot.join(source.file_name().unwrap_or_default());
            let same =
                fs::metadata(&target).ok().map(|meta| meta.len()) == fs::metadata(source).ok().map(|meta| meta.len());
            if !same {
                fs::copy(source, &target).map_err(|failure| {
                    error(format!("cannot copy {} to {}: {failure}", source.display(), target.display()))
                })?;
            }
            copies.push(target);
        }
        // The directories up to the state directory must let libvirt-qemu through.
        for directory in [self.dir(), self.dir().join("boot"), boot.clone()] {
            fs::set_permissions(&directory, fs::Permissions::from_mode(0o755))
                .map_err(|failure| error(format!("cannot open {} to QEMU: {failure}", directory.display())))?;
        }
        Ok((copies[0].clone(), copies[1].clone()))
    }

    /// Writes the node's config disk (`vm_image::write_config_disk`) and copies it
    /// into the pool, where the Vagrantfile attaches it.
    fn write_config_disk(&self, node: &NodeSpec, authorized_key: &str) -> Result<(), MachineError> {
        let dir = self.node_dir(&node.name);
        fs::create_dir_all(&dir)
            .map_err(|error| self.node_error(&node.name, format!("cannot create {}: {error}", dir.display())))?;
        let disk = vm_image::write_config_disk(&dir, node, self.spec.gateway.prefix_len(), authorized_key)
            .map_err(|message| self.node_error(&node.name, format!("config disk: {message}")))?;
        let target = self.pool_dir().join(config_disk_name(&node.name));
        fs::copy(&disk, &target).map(drop).map_err(|error| {
            self.node_error(&node.name, format!("cannot copy {} to {}: {error}", disk.display(), target.display()))
        })
    }

    /// Nodes with a directory in `STATE/machines` or a Vagrant machine record.
    fn nodes_on_disk(&self) -> Vec<String> {
        let mut nodes = self.spec.nodes_on_disk();
        nodes.extend(system::subdirectories(&self.dotfile_dir().join("machines")));
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

impl Machines for Vagrant {
    fn backend(&self) -> Backend {
        Backend::Vagrant
    }

    fn requirements(&self) -> Vec<Requirement> {
        let mut requirements = vec![Requirement::root()];
        requirements.extend(vm_image::host_requirements());
        let vagrant = Requirement::program("vagrant", "makes the machines from the Vagrantfile", "vagrant");
        // Debian's package installs the plugin system-wide; `vagrant plugin list`
        // shows it as "(system)".
        let plugin = vagrant.met
            && system::run(Command::new("vagrant").args(["plugin", "list"]).env("VAGRANT_CHECKPOINT_DISABLE", "1"))
                .is_ok_and(|listing| listing.contains("vagrant-libvirt"));
        requirements.push(vagrant);
        requirements.push(Requirement {
            what: "vagrant-libvirt (Vagrant's libvirt provider)".into(),
            met: plugin,
            package: Some("vagrant-libvirt".into()),
            fix: "apt-get install vagrant-libvirt".into(),
        });
        // vagrant-libvirt gives no way to run QEMU as root, so QEMU (user libvirt-qemu)
        // opens the pool's disks and the kernel itself, in the state directory.
        let closed = closed_ancestor(&self.spec.state_dir);
        requirements.push(Requirement {
            what: "the state directory is reachable for QEMU, which runs as libvirt-qemu".into(),
            met: closed.is_none(),
            package: None,
            fix: match closed {
                Some(directory) => format!(
                    "chmod o+x {} (or set LAB_DIR to a directory outside it, e.g. /var/lib/k8s-lab)",
                    directory.display()
                ),
                None => String::new(),
            },
        });
        requirements.push(Requirement::program("tar", "packs the lab's box", "tar"));
        requirements
    }

    fn ensure_image(&self, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
        vm_image::ensure_node_image(&self.spec.cache_dir, progress)
    }

    fn ensure_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
        // Before libvirt adds the node subnet's route: a range the host uses
        // elsewhere is refused with nothing changed.
        hostnet::check_ranges_free(&self.spec.bridge, self.spec.gateway, routes)?;
        libvirt_host::ensure_libvirtd()?;
        fs::create_dir_all(LIBVIRT_DNSMASQ_DIR)
            .map_err(|error| MachineError::Host { message: format!("cannot create {LIBVIRT_DNSMASQ_DIR}: {error}") })?;
        let created = self.ensure_libvirt_network()?;
        let mut report = self.spec.ensure_host_network(routes)?;
        report.bridge_created = created;
        Ok(report)
    }

    /// One `vagrant up` starts the node and every other node of the lab with it.
    fn create_or_start(
        &self,
        node: &NodeSpec,
        image: &NodeImage,
        authorized_key: &str,
    ) -> Result<StartOutcome, MachineError> {
        self.outcome(&node.name, &self.up(image, authorized_key))
    }

    /// Vagrant boots the machines in parallel itself: one `vagrant up` for the lab,
    /// and every node is done when it is.
    fn start_all(
        &self,
        nodes: &[NodeSpec],
        image: &NodeImage,
        authorized_key: &str,
        done: &NodeDone<'_, StartOutcome>,
    ) -> NodeOutcomes<StartOutcome> {
        let started = Instant::now();
        let outcomes = self.up(image, authorized_key);
        let took = started.elapsed();
        nodes
            .iter()
            .map(|node| {
                let outcome = self.outcome(&node.name, &outcomes);
                done(&node.name, &outcome, took);
                (node.name.clone(), outcome)
            })
            .collect()
    }

    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError> {
        if self.domain_state(node) != MachineState::Running {
            return Ok(StopOutcome::NotRunning);
        }
        // A clean shutdown over SSH, and a forced power-off if that takes longer than
        // Vagrant's graceful halt timeout.
        self.run_logged(&["halt", node]).map_err(|message| self.node_error(node, message))?;
        match self.domain_state(node) {
            MachineState::Running => Err(self.node_error(node, "still running after `vagrant halt`")),
            _ => Ok(StopOutcome::Stopped),
        }
    }

    fn status(&self, node: &str) -> Result<MachineState, MachineError> {
        Ok(self.domain_state(node))
    }

    fn known_nodes(&self) -> Vec<String> {
        self.spec.known_nodes(self.nodes_on_disk())
    }

    fn console_log(&self, node: &str) -> Option<PathBuf> {
        Some(self.console_path(node)).filter(|path| path.exists())
    }

    /// `vagrant up` makes every machine in one run of several minutes under TCG (the
    /// box upload alone takes minutes): its latest line of output says how far it got.
    fn activity(&self) -> Option<String> {
        self.latest_output()
    }

    fn time_scale(&self) -> u32 {
        vm_image::time_scale(self.spec.acceleration, &self.accelerator_record())
    }

    fn hung_boot_after(&self) -> Option<Duration> {
        Some(vm_image::hung_boot_after(self.time_scale()))
    }

    /// `vagrant up` goes on waiting for SSH after the reset.
    fn reset(&self, node: &str) -> Result<(), MachineError> {
        virsh(&["reset", &self.domain_name(node)])
            .map(drop)
            .map_err(|failure| self.node_error(node, failure.to_string()))
    }

    fn destroy(&self) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        let libvirt = libvirt_host::ensure_libvirtd();
        if let Err(error) = &libvirt {
            leftovers.push(Leftover::new("the lab's libvirt domains, pool and network", error.to_string()));
        }
        if libvirt.is_ok() && self.dotfile_dir().exists() && system::program_exists("vagrant") {
            // Vagrant removes its machines and their volumes; a missing topology file
            // (an interrupted first `lab up`) leaves the sweep below to do it.
            if self.topology_path().exists() {
                if let Err(message) = self.run_logged(&["destroy", "--force"]) {
                    tracing::warn!(%message, "vagrant destroy failed; removing the domains directly");
                }
            }
        }
        if libvirt.is_ok() {
            leftovers.extend(self.destroy_domains());
            leftovers.extend(self.destroy_pool());
            leftovers.extend(self.destroy_network());
        }
        if system::program_exists("vagrant") {
            leftovers.extend(self.remove_boxes());
        }
        leftovers.extend(hostnet::teardown(&self.spec.bridge, &hostnet::owner_tag(&self.spec.state_dir)));
        for dir in [self.spec.machines_dir(), self.dir()] {
            if let Err(message) = system::remove_tree(&dir) {
                leftovers.push(Leftover::new(format!("directory {}", dir.display()), message));
            }
        }
        leftovers
    }
}

/// The nearest existing directory at or above `path` that other users may not enter
/// (no `x` bit for others), when there is one.
fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .filter_map(|directory| fs::metadata(directory).ok().map(|metadata| (directory, metadata)))
        .find(|(_, metadata)| metadata.is_dir() && metadata.permissions().mode() & 0o001 == 0)
        .map(|(directory, _)| directory.to_owned())
}

/// The lab's key pair, as `ssh::ensure_keypair` makes it: (private, public).
fn lab_key_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let state = crate::state_dir::StateDir::new(state_dir);
    (state.ssh_private_key(), state.ssh_public_key())
}

/// The config disk of `node` in the storage pool.
fn config_disk_name(node: &str) -> String {
    format!("{node}-config.img")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::MachineSize;
    use crate::topology::Role;
    use std::net::Ipv4Addr;

    /// A lab of two nodes on the lab's own box; the tests of the parts use it too.
    pub(super) fn backend() -> Vagrant {
        Vagrant::new(LabSpec {
            lab: "vagmin".into(),
            state_dir: PathBuf::from("/srv/lab"),
            cache_dir: PathBuf::from("/cache"),
            bridge: "lab-vagmin".into(),
            gateway: "10.244.0.1/24".parse().unwrap(),
            acceleration: crate::topology::Acceleration::Tcg,
            vagrant_box: None,
            nodes: vec![
                NodeSpec {
                    name: "master1".into(),
                    address: Ipv4Addr::new(10, 244, 0, 11),
                    roles: vec![Role::Etcd, Role::Master, Role::Lb],
                    size: MachineSize::CONTROLLER,
                    preload: Vec::new(),
                },
                NodeSpec::new("worker1", Ipv4Addr::new(10, 244, 0, 21)),
            ],
        })
    }

    pub(super) fn vm() -> VmImage {
        VmImage::paths(&NodeImage {
            key: "node-abc".into(),
            root: "/cache/images/node-abc/rootfs".into(),
            from_cache: true,
        })
    }

    #[test]
    fn every_object_is_named_after_the_lab() {
        let vagrant = backend();
        assert_eq!(vagrant.domain_name("master1"), "lab-vagmin-master1");
        assert_eq!(vagrant.network_name(), "lab-vagmin-net");
        assert_eq!(vagrant.pool_name(), "lab-vagmin-pool");
        assert_eq!(vagrant.box_name("node-abc", None), "k8s-lab-vagmin/node-abc");
        assert_eq!(vagrant.box_name("node-abc", Some("debian/bookworm64")), "debian/bookworm64");
        assert_eq!(vagrant.description(), "k8s-lab vagrant machine of lab vagmin in /srv/lab");
    }

    #[test]
    fn a_state_directory_below_a_closed_directory_is_found() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let closed = scratch.path().join("home");
        fs::create_dir_all(closed.join("lab")).unwrap();
        fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(closed_ancestor(&closed.join("lab/not-yet-made")), Some(closed.clone()));
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(closed_ancestor(&closed.join("lab")), None);
    }
}
