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

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::hostnet;
use super::vm_image::{self, Accelerator, VmImage};
use super::{
    LabSpec, Leftover, MachineError, MachineState, Machines, NodeImage, NodeSpec, Requirement, StartOutcome,
    StopOutcome,
};
use crate::plan::HostRoute;
use crate::system;
use crate::topology::{Backend, Topology};

/// The system instance of libvirt, where vagrant-libvirt makes root's machines.
const URI: &str = "qemu:///system";

/// The XML namespace of the tag on the lab network, naming the state directory.
const METADATA_NAMESPACE: &str = "urn:k8s-lab:vagrant:1";

/// libvirt writes a MAC address list here for every network a domain starts on, and
/// fails to start the domain when the directory is missing (it is, on a host whose
/// libvirtd was started by hand and not by its package's service).
const LIBVIRT_DNSMASQ_DIR: &str = "/var/lib/libvirt/dnsmasq";

/// How many lines of Vagrant's output an error message carries.
const LOG_TAIL_LINES: usize = 15;

/// How much of the end of Vagrant's log a progress report reads: enough for the last
/// line even behind a run of redrawn upload progress.
const ACTIVITY_TAIL_BYTES: u64 = 16 * 1024;

pub struct Vagrant {
    spec: LabSpec,
    /// The result of the one `vagrant up` that starts every node at once, per node.
    /// `create_or_start` is called for each node in parallel; the first call runs
    /// Vagrant (which boots the machines in parallel itself) and the others wait here.
    started: Mutex<Option<Result<BTreeMap<String, StartOutcome>, String>>>,
}

/// What `STATE/vagrant/topology.json` holds: everything the Vagrantfile uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VagrantTopology {
    pub lab: String,
    pub state_dir: PathBuf,
    /// Each machine's domain is this prefix and the node name.
    pub domain_prefix: String,
    /// The description of every domain: it names the lab and the state directory.
    pub description: String,
    pub network: NetworkRecord,
    pub storage_pool: PoolRecord,
    pub ssh: SshRecord,
    pub machine: MachineRecord,
    #[serde(rename = "box")]
    pub vm_box: BoxRecord,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkRecord {
    /// The libvirt network, Vagrant's management network.
    pub name: String,
    pub bridge: String,
    /// The node subnet, e.g. `10.244.0.0/24`.
    pub subnet: Ipv4Net,
    /// The host's address on the bridge.
    pub gateway: std::net::Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolRecord {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshRecord {
    pub username: String,
    pub private_key: PathBuf,
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineRecord {
    /// vagrant-libvirt's `driver`: `kvm`, or `qemu` for software emulation.
    pub driver: String,
    pub cpu_mode: String,
    pub cpu_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxRecord {
    pub name: String,
    /// Whether the lab made the box from its node image (else Vagrant fetches it).
    pub local: bool,
    /// Direct kernel boot, for the lab's own box (it has no boot loader).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmd_line: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub roles: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The MAC address of the node's one network card.
    pub mac: String,
    /// The config disk's file name in the storage pool.
    pub config_disk: String,
    pub console_log: PathBuf,
}

/// One `Host` block of `vagrant ssh-config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SshEndpoint {
    /// The machine's name (`Host`).
    pub machine: String,
    pub host_name: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
}

impl Vagrant {
    pub fn new(spec: LabSpec) -> Vagrant {
        Vagrant { spec, started: Mutex::new(None) }
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

    /// A `vagrant` command with the lab's environment: the repository's Vagrantfile,
    /// the machine records in the state directory, the topology file, and nothing that
    /// would reach the internet.
    pub fn vagrant_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("vagrant");
        command
            .args(args)
            .env("VAGRANT_CWD", repository_root())
            .env("VAGRANT_DOTFILE_PATH", self.dotfile_dir())
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("LIBVIRT_DEFAULT_URI", URI)
            .env("LAB_VAGRANT_TOPOLOGY", self.topology_path())
            .env("LAB_DIR", &self.spec.state_dir);
        command
    }

    /// Runs `vagrant ARGS`, its output appended to `STATE/vagrant/vagrant.log`; a
    /// failure carries the last lines Vagrant printed.
    fn run_logged(&self, args: &[&str]) -> Result<(), String> {
        let log_path = self.log_path();
        fs::create_dir_all(self.dir()).map_err(|error| format!("cannot create {}: {error}", self.dir().display()))?;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
        let start = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let mut command = self.vagrant_command(args.iter().chain(&["--no-color"]));
        let _ = writeln!(log, "$ {}", system::command_line(&command));
        let output = log.try_clone().map_err(|error| format!("cannot share {}: {error}", log_path.display()))?;
        let stderr = log.try_clone().map_err(|error| format!("cannot share {}: {error}", log_path.display()))?;
        let started = Instant::now();
        let status = command
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .status()
            .map_err(|error| format!("cannot run vagrant: {error} (run `lab doctor`)"))?;
        let _ = writeln!(log, "# {status} after {:.1} s", started.elapsed().as_secs_f64());
        if status.success() {
            return Ok(());
        }
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&log_path) {
            let _ = file.seek(SeekFrom::Start(start));
            let _ = file.read_to_string(&mut text);
        }
        Err(format!(
            "`vagrant {}` failed ({status}): {} (full output: {})",
            args.join(" "),
            output_tail(&text, LOG_TAIL_LINES),
            log_path.display()
        ))
    }

    /// Runs `vagrant ARGS` and returns what it printed.
    fn run_captured(&self, args: &[&str]) -> Result<String, String> {
        system::run(&mut self.vagrant_command(args.iter().chain(&["--no-color"])))
            .map_err(|failure| failure.to_string())
    }

    /// The state of the node's domain, as libvirt has it; `Missing` when there is none.
    fn domain_state(&self, node: &str) -> MachineState {
        match system::run_program("virsh", ["-c", URI, "domstate", &self.domain_name(node)]) {
            Ok(output) => parse_domain_state(&output),
            Err(_) => MachineState::Missing,
        }
    }

    /// Whether the node's domain is this state directory's (its description says so).
    fn owns_domain(&self, node: &str) -> bool {
        system::run_program("virsh", ["-c", URI, "desc", &self.domain_name(node)])
            .is_ok_and(|description| description.trim() == self.description())
    }

    /// Starts every node with one `vagrant up`, after writing what the Vagrantfile
    /// reads: the topology file, the kernel, and each node's config disk in the pool.
    fn up_all(&self, image: &NodeImage, authorized_key: &str) -> Result<BTreeMap<String, StartOutcome>, MachineError> {
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

        // The topology `lab up` recorded in the state directory: roles and the box.
        let topology = super::recorded_topology(&self.spec.state_dir)?;
        let public_box = topology.as_ref().and_then(|topology| topology.machines.vagrant_box.clone());
        let vm = self.lab_image(image)?;
        let accelerator = vm_image::decide_acceleration(self.spec.acceleration, &vm, &self.accelerator_record())?;
        if public_box.is_none() {
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
        system::run_program("virsh", ["-c", URI, "pool-refresh", &self.pool_name()])
            .map_err(|failure| host_error(failure.to_string()))?;

        let record = self.topology_record(topology.as_ref(), &vm, accelerator, boot);
        let json = serde_json::to_string_pretty(&record).map_err(|error| host_error(error.to_string()))?;
        system::write_atomically(&self.topology_path(), format!("{json}\n").as_bytes(), 0o644)
            .map_err(|error| host_error(format!("cannot write {}: {error}", self.topology_path().display())))?;

        // `--no-provision`: the lab provisions the machines itself, over SSH.
        self.run_logged(&["up", "--provider=libvirt", "--no-provision", "--parallel"]).map_err(host_error)?;
        self.check_ssh_config()?;
        Ok(outcomes)
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

    /// Adds the lab's box made from `vm` unless Vagrant has it already.
    fn ensure_box(&self, vm: &VmImage) -> Result<(), MachineError> {
        let name = self.box_name(&vm.key, None);
        let box_error = |message: String| MachineError::Image { key: vm.key.clone(), message };
        let listing = self.run_captured(&["box", "list", "--machine-readable"]).map_err(box_error)?;
        if parse_box_list(&listing).iter().any(|(listed, provider)| *listed == name && provider == "libvirt") {
            return Ok(());
        }
        let build = self.dir().join("box");
        system::remove_tree(&build).map_err(box_error)?;
        fs::create_dir_all(&build).map_err(|error| box_error(format!("cannot create {}: {error}", build.display())))?;
        let virtual_size = virtual_size_gib(&vm.disk).map_err(box_error)?;
        let metadata =
            format!("{{\"provider\": \"libvirt\", \"format\": \"qcow2\", \"virtual_size\": {virtual_size}}}\n");
        for (file, content) in [("metadata.json", metadata.as_str()), ("Vagrantfile", BOX_VAGRANTFILE)] {
            fs::write(build.join(file), content).map_err(|error| box_error(format!("cannot write {file}: {error}")))?;
        }
        // A box is a tar archive of those two files and the disk as `box.img`; plain
        // tar, since compressing a gigabyte only to unpack it at once costs a minute.
        let archive = build.join("node.box");
        let mut tar = Command::new("tar");
        tar.arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&build)
            .args(["metadata.json", "Vagrantfile", "-C"])
            .arg(&vm.dir)
            .args(["--transform=s,^base.qcow2$,box.img,", "base.qcow2"]);
        system::run(&mut tar).map_err(|failure| box_error(failure.to_string()))?;
        let archive_text = archive.to_string_lossy().into_owned();
        self.run_logged(&["box", "add", "--force", "--name", &name, "--provider", "libvirt", &archive_text])
            .map_err(box_error)?;
        system::remove_tree(&build).map_err(box_error)
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

    /// Makes the lab's storage pool exist and run: a directory pool in the state
    /// directory, transient (libvirt forgets it when it stops; the next `lab up` makes
    /// it again).
    fn ensure_pool(&self) -> Result<(), MachineError> {
        let name = self.pool_name();
        let path = self.pool_dir();
        let host_error = |message: String| MachineError::Host { message };
        match system::run_program("virsh", ["-c", URI, "pool-dumpxml", &name]) {
            Ok(xml) => {
                if !xml.contains(&format!("<path>{}</path>", xml_escape(&path.to_string_lossy()))) {
                    return Err(host_error(format!(
                        "libvirt storage pool {name} belongs to another lab or state directory; destroy that lab first"
                    )));
                }
                if system::run_program("virsh", ["-c", URI, "pool-info", &name])
                    .is_ok_and(|info| info.lines().any(|line| line.starts_with("State:") && line.contains("running")))
                {
                    return Ok(());
                }
                system::run_program("virsh", ["-c", URI, "pool-start", &name])
                    .map(drop)
                    .map_err(|failure| host_error(failure.to_string()))
            }
            Err(_) => {
                fs::create_dir_all(&path)
                    .map_err(|error| host_error(format!("cannot create {}: {error}", path.display())))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|error| host_error(format!("cannot open {} to QEMU: {error}", path.display())))?;
                let target = path.to_string_lossy().into_owned();
                system::run_program("virsh", ["-c", URI, "pool-create-as", &name, "dir", "--target", &target])
                    .map(drop)
                    .map_err(|failure| host_error(failure.to_string()))
            }
        }
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

    /// What the Vagrantfile reads, for the lab's `topology` (roles and box).
    fn topology_record(
        &self,
        topology: Option<&Topology>,
        vm: &VmImage,
        accelerator: Accelerator,
        (kernel, initrd): (PathBuf, PathBuf),
    ) -> VagrantTopology {
        let key = lab_key_paths(&self.spec.state_dir);
        let roles: BTreeMap<&str, Vec<String>> = topology
            .map(|topology| {
                topology
                    .nodes
                    .iter()
                    .map(|node| (node.name.as_str(), node.roles.iter().map(ToString::to_string).collect()))
                    .collect()
            })
            .unwrap_or_default();
        let public_box = topology.and_then(|topology| topology.machines.vagrant_box.as_deref());
        let local = public_box.is_none();
        VagrantTopology {
            lab: self.spec.lab.clone(),
            state_dir: self.spec.state_dir.clone(),
            domain_prefix: self.object_prefix(),
            description: self.description(),
            network: NetworkRecord {
                name: self.network_name(),
                bridge: self.spec.bridge.clone(),
                subnet: self.spec.gateway.trunc(),
                gateway: self.spec.gateway.addr(),
            },
            storage_pool: PoolRecord { name: self.pool_name(), path: self.pool_dir() },
            ssh: SshRecord { username: "root".into(), private_key: key.0, public_key: key.1 },
            machine: match accelerator {
                Accelerator::Kvm => {
                    MachineRecord { driver: "kvm".into(), cpu_mode: "host-passthrough".into(), cpu_model: None }
                }
                Accelerator::Tcg => {
                    MachineRecord { driver: "qemu".into(), cpu_mode: "custom".into(), cpu_model: Some("qemu64".into()) }
                }
            },
            vm_box: BoxRecord {
                name: self.box_name(&vm.key, public_box),
                local,
                kernel: local.then_some(kernel),
                initrd: local.then_some(initrd),
                cmd_line: local.then(|| vm_image::KERNEL_COMMAND_LINE.to_string()),
            },
            nodes: self
                .spec
                .nodes
                .iter()
                .map(|node| NodeRecord {
                    name: node.name.clone(),
                    address: node.address,
                    roles: roles.get(node.name.as_str()).cloned().unwrap_or_default(),
                    cpus: node.size.cpus,
                    memory_mib: node.size.memory_mib,
                    mac: vm_image::mac_address(&self.spec.lab, &node.name),
                    config_disk: config_disk_name(&node.name),
                    console_log: self.console_path(&node.name),
                })
                .collect(),
        }
    }

    /// Asks Vagrant how it reaches each machine and refuses unless that is exactly how
    /// the provisioner reaches the node: its topology address, port 22, root, the
    /// lab's key.
    fn check_ssh_config(&self) -> Result<(), MachineError> {
        let text = self.run_captured(&["ssh-config"]).map_err(|message| MachineError::Host { message })?;
        let endpoints = parse_ssh_config(&text);
        let (private_key, _) = lab_key_paths(&self.spec.state_dir);
        for node in &self.spec.nodes {
            let Some(endpoint) = endpoints.iter().find(|endpoint| endpoint.machine == node.name) else {
                return Err(self.node_error(&node.name, "`vagrant ssh-config` does not list this machine"));
            };
            let expected = SshEndpoint {
                machine: node.name.clone(),
                host_name: node.address.to_string(),
                port: 22,
                user: "root".into(),
                identity_files: vec![private_key.clone()],
            };
            if *endpoint != expected {
                return Err(self.node_error(
                    &node.name,
                    format!(
                        "Vagrant reaches this machine as {}@{}:{} with {:?}, but the lab uses root@{}:22 with {}",
                        endpoint.user,
                        endpoint.host_name,
                        endpoint.port,
                        endpoint.identity_files,
                        node.address,
                        private_key.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Nodes with a directory in `STATE/machines` or a Vagrant machine record.
    fn nodes_on_disk(&self) -> Vec<String> {
        let mut nodes = self.spec.nodes_on_disk();
        nodes.extend(system::subdirectories(&self.dotfile_dir().join("machines")));
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The lab network: isolated, tagged with the state directory, on the lab bridge.
    fn ensure_libvirt_network(&self) -> Result<bool, MachineError> {
        let name = self.network_name();
        let network_error = |message: String| MachineError::Network { message };
        let expected = network_xml(&name, &self.spec.bridge, self.spec.gateway, &self.spec.state_dir);
        if let Ok(xml) = system::run_program("virsh", ["-c", URI, "net-dumpxml", &name]) {
            if !xml.contains(&state_dir_tag(&self.spec.state_dir)) {
                return Err(network_error(format!(
                    "libvirt network {name} belongs to another lab or state directory; destroy that lab first"
                )));
            }
            let address =
                format!("<ip address='{}' netmask='{}'", self.spec.gateway.addr(), self.spec.gateway.netmask());
            let active = system::run_program("virsh", ["-c", URI, "net-info", &name])
                .is_ok_and(|info| info.lines().any(|line| line.starts_with("Active:") && line.contains("yes")));
            if active && xml.contains(&address) && !xml.contains("<forward") {
                return Ok(false);
            }
            // Made for another gateway (the topology changed): replaced.
            let _ = system::run_program("virsh", ["-c", URI, "net-destroy", &name]);
            let _ = system::run_program("virsh", ["-c", URI, "net-undefine", &name]);
        }
        if hostnet::bridge_exists(&self.spec.bridge) {
            return Err(network_error(format!(
                "bridge {} already exists on the host but is not the libvirt network {name}; \
                 destroy the lab that made it (`lab destroy` with that lab's LAB_DIR and backend)",
                self.spec.bridge
            )));
        }
        let file = self.dir().join("network.xml");
        fs::create_dir_all(self.dir())
            .and_then(|()| fs::write(&file, expected))
            .map_err(|error| network_error(format!("cannot write {}: {error}", file.display())))?;
        let file_text = file.to_string_lossy().into_owned();
        system::run_program("virsh", ["-c", URI, "net-create", &file_text])
            .map_err(|failure| network_error(format!("cannot start the libvirt network {name}: {failure}")))?;
        Ok(true)
    }

    /// Removes the lab's pool with every volume in it (the box copy, the machines'
    /// disks, the config disks), then its directory.
    fn destroy_pool(&self) -> Vec<Leftover> {
        let name = self.pool_name();
        let mut leftovers = Vec::new();
        if let Ok(xml) = system::run_program("virsh", ["-c", URI, "pool-dumpxml", &name]) {
            if !xml.contains(&format!("<path>{}</path>", xml_escape(&self.pool_dir().to_string_lossy()))) {
                return vec![Leftover::new(
                    format!("libvirt storage pool {name}"),
                    "it belongs to another lab or state directory; left alone",
                )];
            }
            let volumes = system::run_program("virsh", ["-c", URI, "vol-list", "--pool", &name]).unwrap_or_default();
            for volume in parse_volume_list(&volumes) {
                if let Err(failure) = system::run_program("virsh", ["-c", URI, "vol-delete", "--pool", &name, &volume])
                {
                    leftovers.push(Leftover::new(format!("libvirt volume {volume}"), failure.to_string()));
                }
            }
            if let Err(failure) = system::run_program("virsh", ["-c", URI, "pool-destroy", &name]) {
                leftovers.push(Leftover::new(format!("libvirt storage pool {name}"), failure.to_string()));
            }
            // A pool someone made persistent by hand is forgotten too.
            let _ = system::run_program("virsh", ["-c", URI, "pool-undefine", &name]);
        }
        leftovers
    }

    /// Removes the lab's network, when it is this state directory's.
    fn destroy_network(&self) -> Vec<Leftover> {
        let name = self.network_name();
        let Ok(xml) = system::run_program("virsh", ["-c", URI, "net-dumpxml", &name]) else {
            return Vec::new();
        };
        if !xml.contains(&state_dir_tag(&self.spec.state_dir)) {
            return vec![Leftover::new(
                format!("libvirt network {name}"),
                "it belongs to another lab or state directory; left alone",
            )];
        }
        let _ = system::run_program("virsh", ["-c", URI, "net-destroy", &name]);
        let _ = system::run_program("virsh", ["-c", URI, "net-undefine", &name]);
        match system::run_program("virsh", ["-c", URI, "net-info", &name]) {
            Ok(_) => vec![Leftover::new(format!("libvirt network {name}"), "still present after net-destroy")],
            Err(_) => Vec::new(),
        }
    }

    /// Removes the boxes this lab added.
    fn remove_boxes(&self) -> Vec<Leftover> {
        let Ok(listing) = self.run_captured(&["box", "list", "--machine-readable"]) else {
            return Vec::new();
        };
        let prefix = self.box_prefix();
        let mut leftovers = Vec::new();
        let mut names: Vec<String> = parse_box_list(&listing)
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(&prefix))
            .collect();
        names.dedup();
        for name in names {
            if let Err(message) = self.run_logged(&["box", "remove", "--force", "--all", &name]) {
                leftovers.push(Leftover::new(format!("vagrant box {name}"), message));
            }
        }
        leftovers
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
        vm_image::ensure_libvirtd()?;
        fs::create_dir_all(LIBVIRT_DNSMASQ_DIR)
            .map_err(|error| MachineError::Host { message: format!("cannot create {LIBVIRT_DNSMASQ_DIR}: {error}") })?;
        let created = self.ensure_libvirt_network()?;
        let mut report = self.spec.ensure_host_network(routes)?;
        report.bridge_created = created;
        Ok(report)
    }

    fn create_or_start(
        &self,
        node: &NodeSpec,
        image: &NodeImage,
        authorized_key: &str,
    ) -> Result<StartOutcome, MachineError> {
        let mut started = self.started.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result =
            started.get_or_insert_with(|| self.up_all(image, authorized_key).map_err(|error| error.to_string()));
        match result {
            Ok(outcomes) => outcomes
                .get(&node.name)
                .copied()
                .ok_or_else(|| self.node_error(&node.name, "not a node of the lab's topology")),
            Err(message) => Err(self.node_error(&node.name, message.clone())),
        }
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
        last_output_line(&file_tail(&self.log_path(), ACTIVITY_TAIL_BYTES)?)
    }

    fn time_scale(&self) -> u32 {
        vm_image::time_scale(self.spec.acceleration, &self.accelerator_record())
    }

    fn destroy(&self) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        let libvirt = vm_image::ensure_libvirtd();
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
            for node in self.known_nodes() {
                if self.domain_state(&node) == MachineState::Missing {
                    continue;
                }
                let domain = self.domain_name(&node);
                if !self.owns_domain(&node) {
                    leftovers.push(Leftover::new(
                        format!("libvirt domain {domain}"),
                        "it belongs to another lab or state directory; left alone",
                    ));
                    continue;
                }
                let _ = system::run_program("virsh", ["-c", URI, "destroy", &domain]);
                if let Err(failure) = system::run_program("virsh", ["-c", URI, "undefine", &domain]) {
                    leftovers.push(Leftover::new(format!("libvirt domain {domain}"), failure.to_string()));
                }
            }
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

/// The box's own Vagrantfile. Vagrant reads it before the lab's; the lab's sets
/// everything, so this one only says what the box is.
const BOX_VAGRANTFILE: &str = "\
# A k8s-lab node box for vagrant-libvirt: box.img is the node image's root filesystem
# (ext4, no partition table, no boot loader). Boot it with the image's own kernel and
# initrd (libvirt.kernel/initrd, cmd_line \"root=/dev/vda rw ...\"), as the lab's
# Vagrantfile does, and give it the lab's config disk (label lab-config).
Vagrant.configure(\"2\") do |config|
end
";

/// The repository root, where the Vagrantfile is: the parent of this crate.
fn repository_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_owned()
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
    let directory = state_dir.join("ssh");
    (directory.join("id_ed25519"), directory.join("id_ed25519.pub"))
}

/// The config disk of `node` in the storage pool.
fn config_disk_name(node: &str) -> String {
    format!("{node}-config.img")
}

/// The network's tag naming the state directory, as libvirt prints it back.
fn state_dir_tag(state_dir: &Path) -> String {
    format!("<lab:state-dir>{}</lab:state-dir>", xml_escape(&state_dir.to_string_lossy()))
}

/// The lab network for Vagrant: isolated (no `<forward>`: libvirt neither routes nor
/// NATs it), no DHCP, no DNS, the host's gateway address on the lab bridge. The address
/// is written with `netmask`, not `prefix`, because that is what vagrant-libvirt reads
/// when it looks for an existing management network.
pub fn network_xml(name: &str, bridge: &str, gateway: Ipv4Net, state_dir: &Path) -> String {
    format!(
        "<network>\n  <name>{}</name>\n  <metadata><lab:vagrant xmlns:lab=\"{METADATA_NAMESPACE}\">{}</lab:vagrant></metadata>\n  \
         <bridge name='{}' stp='off' delay='0'/>\n  <dns enable='no'/>\n  <ip address='{}' netmask='{}'/>\n</network>\n",
        xml_escape(name),
        state_dir_tag(state_dir),
        xml_escape(bridge),
        gateway.addr(),
        gateway.netmask()
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// `virsh domstate` output as a machine state: a domain that exists but does not run
/// (shut off, crashed) is stopped; running, paused or shutting down ones are running.
pub fn parse_domain_state(output: &str) -> MachineState {
    match output.trim() {
        "shut off" | "crashed" | "pmsuspended" => MachineState::Stopped,
        "" => MachineState::Missing,
        _ => MachineState::Running,
    }
}

/// The (name, provider) pairs of `vagrant box list --machine-readable`, whose lines
/// are `TIME,TARGET,TYPE,DATA`: a `box-name` line, then its `box-provider`.
pub fn parse_box_list(output: &str) -> Vec<(String, String)> {
    let mut boxes = Vec::new();
    let mut name: Option<String> = None;
    for line in output.lines() {
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        match fields.as_slice() {
            [_, _, "box-name", value] => name = Some(value.trim().to_string()),
            [_, _, "box-provider", value] => {
                if let Some(name) = name.take() {
                    boxes.push((name, value.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    boxes
}

/// The `Host` blocks of `vagrant ssh-config` output.
pub fn parse_ssh_config(output: &str) -> Vec<SshEndpoint> {
    let mut endpoints: Vec<SshEndpoint> = Vec::new();
    for line in output.lines() {
        let Some((key, value)) = line.trim().split_once(char::is_whitespace) else { continue };
        let value = value.trim().trim_matches('"');
        if key == "Host" {
            endpoints.push(SshEndpoint { machine: value.to_string(), ..SshEndpoint::default() });
            continue;
        }
        let Some(endpoint) = endpoints.last_mut() else { continue };
        match key {
            "HostName" => endpoint.host_name = value.to_string(),
            "Port" => endpoint.port = value.parse().unwrap_or(0),
            "User" => endpoint.user = value.to_string(),
            "IdentityFile" => endpoint.identity_files.push(PathBuf::from(value)),
            _ => {}
        }
    }
    endpoints
}

/// The volume names of `virsh vol-list` output (a table: a header, a rule, then
/// `NAME PATH` rows).
pub fn parse_volume_list(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The last `lines` lines of Vagrant's output for an error message, without the
/// upload progress it redraws with carriage returns, and without Ruby's stack trace.
pub fn output_tail(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text
        .split(['\n', '\r'])
        .map(|line| line.trim_end_matches("\u{1b}[K").trim())
        .filter(|line| !line.is_empty() && !line.contains("Progress:") && !line.starts_with("from /"))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join(" | ")
}

/// Vagrant's latest line of output, the upload progress it redraws in place
/// ("Progress: 42%") included.
pub fn last_output_line(text: &str) -> Option<String> {
    text.split(['\n', '\r']).map(|line| line.replace("\u{1b}[K", "").trim().to_string()).rfind(|line| !line.is_empty())
}

/// The last `bytes` bytes of a file, as text.
fn file_tail(path: &Path, bytes: u64) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(bytes))).ok()?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// A disk's virtual size in whole GiB, rounded up, as a box's metadata gives it.
fn virtual_size_gib(disk: &Path) -> Result<u64, String> {
    let mut command = Command::new("qemu-img");
    command.args(["info", "--output=json", "-U"]).arg(disk);
    let text = system::run(&mut command).map_err(|failure| failure.to_string())?;
    let info: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| format!("cannot read `qemu-img info` output: {error}"))?;
    let bytes = info
        .get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("`qemu-img info` gives no virtual size for {}", disk.display()))?;
    Ok(bytes.div_ceil(1 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::MachineSize;
    use std::net::Ipv4Addr;

    fn backend() -> Vagrant {
        Vagrant::new(LabSpec {
            lab: "vagmin".into(),
            state_dir: PathBuf::from("/srv/lab"),
            cache_dir: PathBuf::from("/cache"),
            bridge: "lab-vagmin".into(),
            gateway: "10.244.0.1/24".parse().unwrap(),
            acceleration: crate::topology::Acceleration::Tcg,
            nodes: vec![
                NodeSpec {
                    name: "master1".into(),
                    address: Ipv4Addr::new(10, 244, 0, 11),
                    size: MachineSize::CONTROLLER,
                },
                NodeSpec::new("worker1", Ipv4Addr::new(10, 244, 0, 21)),
            ],
        })
    }

    fn lab_topology(vagrant_box: Option<&str>) -> Topology {
        let machines = match vagrant_box {
            Some(name) => format!("[machines]\nbackend = \"vagrant\"\nvagrant_box = \"{name}\"\n"),
            None => "[machines]\nbackend = \"vagrant\"\n".to_string(),
        };
        let text = format!(
            "name = \"vagmin\"\n{machines}[network]\nnode_subnet = \"10.244.0.0/24\"\ngateway = \"10.244.0.1\"\n\
             vip = \"10.244.0.100\"\npod_cidr = \"10.204.0.0/16\"\nservice_cidr = \"10.36.0.0/24\"\n\
             cluster_dns = \"10.36.0.10\"\n[[node]]\nname = \"master1\"\naddress = \"10.244.0.11\"\n\
             roles = [\"etcd\", \"master\", \"lb\"]\n[[node]]\nname = \"worker1\"\naddress = \"10.244.0.21\"\n\
             roles = [\"worker\"]\n"
        );
        Topology::parse(&text, Path::new("vagmin.toml")).expect("valid topology").topology
    }

    fn vm() -> VmImage {
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
    fn vagrant_runs_with_the_lab_environment_and_offline() {
        let command = backend().vagrant_command(["up", "--no-provision"]);
        assert_eq!(command.get_program(), "vagrant");
        let envs: BTreeMap<String, String> = command
            .get_envs()
            .filter_map(|(key, value)| {
                Some((key.to_string_lossy().into_owned(), value?.to_string_lossy().into_owned()))
            })
            .collect();
        assert_eq!(envs["VAGRANT_CWD"], repository_root().to_string_lossy());
        assert!(repository_root().join("Vagrantfile").is_file(), "the Vagrantfile is at the repository root");
        assert_eq!(envs["VAGRANT_DOTFILE_PATH"], "/srv/lab/vagrant/dot");
        assert_eq!(envs["VAGRANT_CHECKPOINT_DISABLE"], "1");
        assert_eq!(envs["VAGRANT_BOX_UPDATE_CHECK_DISABLE"], "1");
        assert_eq!(envs["LAB_VAGRANT_TOPOLOGY"], "/srv/lab/vagrant/topology.json");
        assert_eq!(envs["LIBVIRT_DEFAULT_URI"], "qemu:///system");
    }

    #[test]
    fn the_topology_file_says_everything_the_vagrantfile_reads() {
        let vagrant = backend();
        let boot = (
            PathBuf::from("/srv/lab/vagrant/boot/node-abc/vmlinuz"),
            PathBuf::from("/srv/lab/vagrant/boot/node-abc/initrd.img"),
        );
        let topology = lab_topology(None);
        let record = vagrant.topology_record(Some(&topology), &vm(), Accelerator::Tcg, boot);
        let json: serde_json::Value = serde_json::to_value(&record).expect("json");
        assert_eq!(json["lab"], "vagmin");
        assert_eq!(json["domain_prefix"], "lab-vagmin-");
        assert_eq!(json["network"]["name"], "lab-vagmin-net");
        assert_eq!(json["network"]["bridge"], "lab-vagmin");
        assert_eq!(json["network"]["subnet"], "10.244.0.0/24");
        assert_eq!(json["network"]["gateway"], "10.244.0.1");
        assert_eq!(json["storage_pool"]["name"], "lab-vagmin-pool");
        assert_eq!(json["storage_pool"]["path"], "/srv/lab/vagrant/pool");
        assert_eq!(json["ssh"]["username"], "root");
        assert_eq!(json["ssh"]["private_key"], "/srv/lab/ssh/id_ed25519");
        assert_eq!(json["ssh"]["public_key"], "/srv/lab/ssh/id_ed25519.pub");
        assert_eq!(json["machine"]["driver"], "qemu");
        assert_eq!(json["machine"]["cpu_model"], "qemu64");
        assert_eq!(json["box"]["name"], "k8s-lab-vagmin/node-abc");
        assert_eq!(json["box"]["kernel"], "/srv/lab/vagrant/boot/node-abc/vmlinuz");
        assert_eq!(json["box"]["cmd_line"], vm_image::KERNEL_COMMAND_LINE);
        let master = &json["nodes"][0];
        assert_eq!(master["name"], "master1");
        assert_eq!(master["address"], "10.244.0.11");
        assert_eq!(master["roles"], serde_json::json!(["etcd", "master", "lb"]));
        assert_eq!(master["cpus"], 2);
        assert_eq!(master["memory_mib"], 3072);
        assert_eq!(master["mac"], vm_image::mac_address("vagmin", "master1"));
        assert_eq!(master["config_disk"], "master1-config.img");
        assert_eq!(master["console_log"], "/srv/lab/machines/master1/console.log");
        assert_eq!(json["nodes"][1]["memory_mib"], 2048);
    }

    #[test]
    fn a_public_box_boots_by_itself() {
        let boot = (PathBuf::from("/k"), PathBuf::from("/i"));
        let topology = lab_topology(Some("org/box"));
        let record = backend().topology_record(Some(&topology), &vm(), Accelerator::Kvm, boot);
        assert_eq!(
            record.vm_box,
            BoxRecord { name: "org/box".into(), local: false, kernel: None, initrd: None, cmd_line: None }
        );
        assert_eq!(
            record.machine,
            MachineRecord { driver: "kvm".into(), cpu_mode: "host-passthrough".into(), cpu_model: None }
        );
    }

    #[test]
    fn the_network_is_isolated_tagged_and_written_with_a_netmask() {
        let xml = network_xml("lab-vagmin-net", "lab-vagmin", "10.244.0.1/24".parse().unwrap(), Path::new("/srv/lab"));
        assert!(!xml.contains("<forward"), "{xml}");
        assert!(!xml.contains("<dhcp"), "{xml}");
        assert!(xml.contains("<dns enable='no'/>"), "{xml}");
        assert!(xml.contains("<bridge name='lab-vagmin'"), "{xml}");
        assert!(xml.contains("<ip address='10.244.0.1' netmask='255.255.255.0'/>"), "{xml}");
        assert!(xml.contains(&state_dir_tag(Path::new("/srv/lab"))), "{xml}");
    }

    #[test]
    fn ssh_config_blocks_are_read_per_machine() {
        let output = "Host master1\n  HostName 10.244.0.11\n  User root\n  Port 22\n  UserKnownHostsFile /dev/null\n  \
                      StrictHostKeyChecking no\n  IdentityFile /srv/lab/ssh/id_ed25519\n  IdentitiesOnly yes\n\n\
                      Host worker1\n  HostName 10.244.0.21\n  User root\n  Port 2222\n  IdentityFile \"/a b/key\"\n";
        let endpoints = parse_ssh_config(output);
        assert_eq!(
            endpoints,
            vec![
                SshEndpoint {
                    machine: "master1".into(),
                    host_name: "10.244.0.11".into(),
                    port: 22,
                    user: "root".into(),
                    identity_files: vec![PathBuf::from("/srv/lab/ssh/id_ed25519")],
                },
                SshEndpoint {
                    machine: "worker1".into(),
                    host_name: "10.244.0.21".into(),
                    port: 2222,
                    user: "root".into(),
                    identity_files: vec![PathBuf::from("/a b/key")],
                },
            ]
        );
    }

    #[test]
    fn box_lists_pair_names_with_providers() {
        let output = "1700000000,,ui,info,k8s-lab-vagmin/node-abc (libvirt\\, 0)\n\
                      1700000000,,box-name,k8s-lab-vagmin/node-abc\n1700000000,,box-provider,libvirt\n\
                      1700000000,,box-version,0\n1700000000,,box-name,debian/bookworm64\n\
                      1700000000,,box-provider,virtualbox\n";
        assert_eq!(
            parse_box_list(output),
            vec![
                ("k8s-lab-vagmin/node-abc".to_string(), "libvirt".to_string()),
                ("debian/bookworm64".to_string(), "virtualbox".to_string())
            ]
        );
        assert!(parse_box_list("").is_empty());
    }

    #[test]
    fn domain_states_follow_virsh() {
        assert_eq!(parse_domain_state("running\n\n"), MachineState::Running);
        assert_eq!(parse_domain_state("in shutdown\n"), MachineState::Running);
        assert_eq!(parse_domain_state("shut off\n\n"), MachineState::Stopped);
        assert_eq!(parse_domain_state(""), MachineState::Missing);
    }

    #[test]
    fn volume_lists_give_the_names() {
        let output = " Name                   Path\n----------------------------------\n \
                      lab-vagmin-master1.img   /srv/lab/vagrant/pool/lab-vagmin-master1.img\n \
                      master1-config.img       /srv/lab/vagrant/pool/master1-config.img\n\n";
        assert_eq!(parse_volume_list(output), ["lab-vagmin-master1.img", "master1-config.img"]);
        assert!(parse_volume_list("").is_empty());
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

    #[test]
    fn error_tails_drop_progress_and_stack_traces() {
        let text = "==> master1: Uploading base box image\n\rProgress: 1%\rProgress: 100%\u{1b}[K\n\
                    ==> master1: Starting domain.\nan error happened\n\tfrom /usr/share/x.rb:1:in `call'\n";
        assert_eq!(output_tail(text, 2), "==> master1: Starting domain. | an error happened");
    }

    #[test]
    fn progress_reports_read_the_last_line_even_during_an_upload() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let log = scratch.path().join("vagrant.log");
        let upload = "\rProgress: 42%\u{1b}[K".repeat(5000);
        fs::write(&log, format!("$ vagrant up\n==> worker1: Uploading base box image as volume\n{upload}")).unwrap();
        let tail = file_tail(&log, ACTIVITY_TAIL_BYTES).expect("the log");
        assert!(tail.len() as u64 <= ACTIVITY_TAIL_BYTES);
        assert_eq!(last_output_line(&tail).as_deref(), Some("Progress: 42%"));
        fs::write(
            &log,
            format!("==> worker1: Uploading base box image as volume\n{upload}\n==> worker1: Starting domain.\n"),
        )
        .unwrap();
        let tail = file_tail(&log, ACTIVITY_TAIL_BYTES).unwrap();
        assert_eq!(last_output_line(&tail).as_deref(), Some("==> worker1: Starting domain."));
    }
}
