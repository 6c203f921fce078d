//! The node image as virtual machines boot it: a qcow2 base disk, kernel and initrd,
//! all made from the one node image that nspawn uses too, and the small per-node
//! config disk that makes a VM one particular node.
//!
//! The base disk is the image's root directory as an ext4 filesystem with no
//! partition table (`mkfs.ext4 -d ROOT`, then `qemu-img convert -O qcow2`), so the
//! VM boots the kernel directly (`root=/dev/vda`) with no boot loader. It is cached
//! beside the root it was made from, `CACHE/images/node-HASH/vm/`:
//! - `base.qcow2`: the root filesystem, 20 GiB virtual, about 1 GiB on disk;
//! - `vmlinuz` and `initrd.img`: copied from the image's own `/boot`;
//! - `kernel-version`: the kernel's release, whose modules are in the root.
//!
//! The directory is written as `vm.partial-PID` and renamed into place when
//! complete, like the image itself. Nodes get copy-on-write overlays of the base
//! (`create_overlay`), so the base is never written after it is made.
//!
//! A VM's disk is never mounted on the host. What nspawn writes into a node's disk
//! before it boots (`node_config::node_files`, and SSH host keys) goes instead on a
//! config disk, an ext4 filesystem labelled `lab-config`, attached as the second
//! disk; the image's `lab-machine-config` unit (`ConditionVirtualization=vm`) copies
//! it in early at every boot, before networkd and sshd start.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::libvirt_host;
use super::node_config::{self, When};
use super::{MachineError, NodeImage, NodeSpec, Requirement};
use crate::system;
use crate::topology::Acceleration;

/// The kernel command line of every lab VM:
/// - the root filesystem is the whole first virtio disk, writable from the start;
/// - the console is the first serial port, which the backends log to a file;
/// - cgroup v1, as the nspawn nodes have it: kubelet 1.20 and its container
///   manager expect the v1 hierarchies;
/// - `net.ifnames=0`: the kernel's own `eth0` until the image's `.link` file renames
///   the NIC `host0` (the name every stage uses), with no predictable name between;
/// - `panic=10`: a kernel panic reboots after ten seconds instead of hanging with
///   the VM looking alive.
pub const KERNEL_COMMAND_LINE: &str =
    "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=0 net.ifnames=0 panic=10";

/// The config disk's filesystem label, which the image's unit waits for.
pub const CONFIG_DISK_LABEL: &str = "lab-config";

/// The virtual size of the root disk. Overlays grow as the node writes (Kubernetes
/// binaries, container images, etcd's data, journals), a few GiB at most.
const ROOT_DISK_SIZE: &str = "20G";

/// The config disk's size: a few kilobytes of files, and ext4's minimum overhead.
const CONFIG_DISK_SIZE: &str = "8M";

/// How long a KVM probe guest may take to print its first kernel line. A working
/// KVM needs well under a second; a KVM that cannot run guests prints nothing.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The script the image runs at boot in a VM (`lab-machine-config.service`). The
/// directories of the config disk are the `When` rules of `node_config`.
pub const MACHINE_CONFIG_SCRIPT: &str = r#"#!/bin/sh
# Lab (VMs only): makes this machine one particular node, from the config disk the
# lab's VM backend writes on the host before every start (a VM's disk is never
# mounted on the host). Its directories follow the machines layer's rules:
#   every-start/   copied over on every boot (hostname, address, systemd settings);
#   first-boot/    copied until the node has been configured once (/etc/hosts, host keys);
#   append-lines/  each line added to the node's file unless it is there (root's keys).
set -eu
disk=/dev/disk/by-label/lab-config
mnt=/run/lab-config
marker=/var/lib/lab-machine/configured
mkdir -p "$mnt"
mount -o ro "$disk" "$mnt"
trap 'cd / && umount "$mnt"' EXIT
# --no-overwrite-dir: directories the node has already keep their owner and mode.
copy() { tar -C "$1" -cf - . | tar -C / -xpf - --no-overwrite-dir; }
copy "$mnt/every-start"
if [ ! -e "$marker" ]; then
  copy "$mnt/first-boot"
fi
cd "$mnt/append-lines"
find . -type f | while read -r file; do
  target="/${file#./}"
  # The only such file is root's authorized_keys: a new directory is private.
  [ -d "$(dirname "$target")" ] || mkdir -p -m 0700 "$(dirname "$target")"
  if [ -s "$target" ] && [ -n "$(tail -c 1 "$target")" ]; then echo >> "$target"; fi
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    grep -qxF -- "$line" "$target" 2>/dev/null || printf '%s\n' "$line" >> "$target"
  done < "$file"
  chmod --reference="$file" "$target"
done
mkdir -p "$(dirname "$marker")"
touch "$marker"
hostname -F /etc/hostname
"#;

/// The unit that runs `MACHINE_CONFIG_SCRIPT`: in VMs only, once the root is
/// writable and the config disk is there, before the network, sshd and everything
/// else of sysinit.target.
pub const MACHINE_CONFIG_UNIT: &str = "\
[Unit]
Description=Lab: hostname, address and SSH keys from the config disk (VMs)
DefaultDependencies=no
ConditionVirtualization=vm
Wants=dev-disk-by\\x2dlabel-lab\\x2dconfig.device
After=dev-disk-by\\x2dlabel-lab\\x2dconfig.device systemd-remount-fs.service
Before=sysinit.target systemd-networkd.service systemd-hostnamed.service ssh.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-machine-config

[Install]
WantedBy=sysinit.target
";

/// Names the VM's network card `host0`, the name nspawn gives a node's end of its
/// link, so that every stage (keepalived, firewalld's zone, the pod routes) names the
/// same interface on every kind of machine. nspawn nodes run no udev, and the match
/// on `Virtualization=vm` keeps it out of containers anyway.
pub const NIC_LINK_FILE: &str = "\
# Lab (VMs): the node's network card is host0, as in an nspawn node.
[Match]
Virtualization=vm
Driver=virtio_net

[Link]
Name=host0
";

/// The VM form of a node image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImage {
    /// The node image's key (`node-HASH`): the VM image is made from that root.
    pub key: String,
    /// `CACHE/images/node-HASH/vm`.
    pub dir: PathBuf,
    /// The qcow2 base disk: the root filesystem, no partition table.
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's release, e.g. `6.1.0-28-amd64`.
    pub kernel_version: String,
    /// True when the cache already had it.
    pub from_cache: bool,
}

impl VmImage {
    /// Where the VM image of `image` is (or will be) cached.
    pub fn paths(image: &NodeImage) -> VmImage {
        let dir = image.root.parent().unwrap_or(&image.root).join("vm");
        VmImage {
            key: image.key.clone(),
            disk: dir.join("base.qcow2"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            kernel_version: fs::read_to_string(dir.join("kernel-version")).unwrap_or_default().trim().to_string(),
            dir,
            from_cache: true,
        }
    }

    fn complete(&self) -> bool {
        [&self.disk, &self.kernel, &self.initrd].iter().all(|path| path.is_file()) && !self.kernel_version.is_empty()
    }
}

fn image_error(key: &str, message: impl Into<String>) -> MachineError {
    MachineError::Image { key: key.to_string(), message: message.into() }
}

/// The node image with its VM form (`Machines::ensure_image` of the VM backends),
/// each made first if the cache does not have it; `from_cache` only when neither was.
pub fn ensure_node_image(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
    let image = super::image::ensure(cache_dir, &super::image::ImageRecipe::default(), progress)?;
    let vm = ensure(&image, progress)?;
    Ok(NodeImage { from_cache: image.from_cache && vm.from_cache, ..image })
}

/// The VM image of `image`, made first if the cache does not have it.
pub fn ensure(image: &NodeImage, progress: &dyn Fn(&str)) -> Result<VmImage, MachineError> {
    let cached = VmImage::paths(image);
    if cached.complete() {
        return Ok(cached);
    }
    let key = &image.key;
    let parent = cached.dir.parent().unwrap_or(&cached.dir).to_owned();
    remove_abandoned_builds(&parent, key)?;
    let partial = parent.join(format!("vm.partial-{}", std::process::id()));
    system::remove_tree(&partial)
        .map_err(|message| image_error(key, format!("cannot clear {}: {message}", partial.display())))?;
    fs::create_dir_all(&partial)
        .map_err(|error| image_error(key, format!("cannot create {}: {error}", partial.display())))?;
    let started = Instant::now();
    if let Err(error) = build(&image.root, &partial, key, progress) {
        let _ = system::remove_tree(&partial);
        return Err(error);
    }
    // A directory left by an interrupted rename, or an incomplete one from an older
    // version of this code, is replaced.
    system::remove_tree(&cached.dir)
        .map_err(|message| image_error(key, format!("cannot replace {}: {message}", cached.dir.display())))?;
    fs::rename(&partial, &cached.dir).map_err(|error| {
        image_error(key, format!("cannot rename {} to {}: {error}", partial.display(), cached.dir.display()))
    })?;
    progress(&format!("made the VM disk, kernel and initrd of {key} in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(VmImage { from_cache: false, ..VmImage::paths(image) })
}

/// Removes `vm.partial-PID` directories whose building process is gone.
fn remove_abandoned_builds(parent: &Path, key: &str) -> Result<(), MachineError> {
    let Ok(entries) = fs::read_dir(parent) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("vm.partial-").and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && system::process_alive(pid) {
            continue;
        }
        system::remove_tree(&entry.path()).map_err(|message| {
            image_error(key, format!("cannot remove the interrupted build {}: {message}", entry.path().display()))
        })?;
    }
    Ok(())
}

/// The newest kernel in `root/boot` that has an initrd beside it: its release.
fn kernel_release(root: &Path) -> Result<String, String> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|error| format!("cannot list {}: {error}", boot.display()))?;
    let mut releases: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|release| boot.join(format!("initrd.img-{release}")).is_file())
        .collect();
    releases.sort_by(|a, b| compare_versions(a, b));
    releases.pop().ok_or_else(|| {
        format!("{} has no kernel with an initrd; the image's packages must include linux-image-amd64", boot.display())
    })
}

/// Orders kernel releases by their numbers (`6.1.0-10` after `6.1.0-9`).
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |text: &str| -> Vec<(u64, String)> {
        text.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|part| (part.parse::<u64>().unwrap_or(0), part.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

fn build(root: &Path, partial: &Path, key: &str, progress: &dyn Fn(&str)) -> Result<(), MachineError> {
    let release = kernel_release(root).map_err(|message| image_error(key, message))?;
    for (source, target) in [(format!("vmlinuz-{release}"), "vmlinuz"), (format!("initrd.img-{release}"), "initrd.img")]
    {
        let (source, target) = (root.join("boot").join(source), partial.join(target));
        fs::copy(&source, &target).map_err(|error| {
            image_error(key, format!("cannot copy {} to {}: {error}", source.display(), target.display()))
        })?;
    }
    fs::write(partial.join("kernel-version"), format!("{release}\n"))
        .map_err(|error| image_error(key, format!("cannot write the kernel version: {error}")))?;

    progress(&format!("making the VM root disk from {} (kernel {release})", root.display()));
    let raw = partial.join("base.raw");
    // Lazy initialisation: the inode tables and journal of a fresh file read as
    // zeros anyway, and writing them would only make qemu-img skip them again.
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", "lab-root", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d"])
        .arg(root)
        .arg(&raw)
        .arg(ROOT_DISK_SIZE);
    system::run(&mut mkfs).map_err(|failure| image_error(key, failure.to_string()))?;
    let disk = partial.join("base.qcow2");
    let mut convert = Command::new("qemu-img");
    convert.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&disk);
    system::run(&mut convert).map_err(|failure| image_error(key, failure.to_string()))?;
    fs::remove_file(&raw).map_err(|error| image_error(key, format!("cannot remove {}: {error}", raw.display())))?;
    // The base is the shared lower layer of every node's disk: nothing may write it.
    set_mode(&disk, 0o444).map_err(|message| image_error(key, message))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot set the mode of {}: {error}", path.display()))
}

/// Makes `overlay` a qcow2 disk whose unwritten blocks read from `base`, unless it
/// exists already (a node keeps its disk). True when it was made now.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<bool, String> {
    if overlay.exists() {
        return Ok(false);
    }
    let partial = overlay.with_extension("qcow2.partial");
    let mut command = Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(base).arg(&partial);
    system::run(&mut command).map_err(|failure| failure.to_string())?;
    fs::rename(&partial, overlay)
        .map_err(|error| format!("cannot rename {} to {}: {error}", partial.display(), overlay.display()))?;
    Ok(true)
}

/// The files of a node's config disk, by directory of the disk: `every-start`,
/// `first-boot` and `append-lines` (see `MACHINE_CONFIG_SCRIPT`). Host keys are
/// not here: they are made once per node and added as `first-boot` files.
pub fn config_disk_files(node: &NodeSpec, prefix: u8, authorized_key: &str) -> Vec<(String, u32, String)> {
    node_config::node_files(node, prefix, authorized_key)
        .into_iter()
        .map(|file| {
            let directory = match file.when {
                When::EveryStart => "every-start",
                When::FirstBoot => "first-boot",
                When::AppendLines => "append-lines",
            };
            (format!("{directory}/{}", file.path), file.mode, file.content)
        })
        .collect()
}

/// Writes the node's config disk, `NODE_DIR/config.img`, from a fresh
/// `NODE_DIR/config/` tree. The node's SSH host keys are made once, in
/// `NODE_DIR/host-keys/`, and go on every config disk after that, so a node keeps
/// its keys across starts.
pub fn write_config_disk(
    node_dir: &Path,
    node: &NodeSpec,
    prefix: u8,
    authorized_key: &str,
) -> Result<PathBuf, String> {
    let keys = node_dir.join("host-keys");
    if !keys.join("etc/ssh/ssh_host_ed25519_key").exists() {
        node_config::make_host_keys(&keys, &node.name)?;
    }
    let tree = node_dir.join("config");
    system::remove_tree(&tree).map_err(|message| format!("cannot clear {}: {message}", tree.display()))?;
    for directory in ["every-start", "first-boot", "append-lines"] {
        let path = tree.join(directory);
        fs::create_dir_all(&path).map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    }
    let mut files = config_disk_files(node, prefix, authorized_key);
    let key_dir = keys.join("etc/ssh");
    let entries = fs::read_dir(&key_dir).map_err(|error| format!("cannot list {}: {error}", key_dir.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("ssh_host_") {
            continue;
        }
        let content = fs::read_to_string(entry.path())
            .map_err(|error| format!("cannot read {}: {error}", entry.path().display()))?;
        let mode = if name.ends_with(".pub") { 0o644 } else { 0o600 };
        files.push((format!("first-boot/etc/ssh/{name}"), mode, content));
    }
    for (relative, mode, content) in &files {
        let path = tree.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        system::write_atomically(&path, content.as_bytes(), *mode)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    let image = node_dir.join("config.img");
    let partial = node_dir.join("config.img.partial");
    let _ = fs::remove_file(&partial);
    // No journal: the disk is written once here and only read in the VM.
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", CONFIG_DISK_LABEL, "-O", "^has_journal", "-d"])
        .arg(&tree)
        .arg(&partial)
        .arg(CONFIG_DISK_SIZE);
    system::run(&mut mkfs).map_err(|failure| failure.to_string())?;
    fs::rename(&partial, &image)
        .map_err(|error| format!("cannot rename {} to {}: {error}", partial.display(), image.display()))?;
    Ok(image)
}

/// The MAC address of a node's network card: QEMU's locally administered prefix
/// 52:54:00 and three bytes of a hash of lab and node, so it is the same on every
/// start and differs between nodes and labs.
pub fn mac_address(lab: &str, node: &str) -> String {
    let digest = Sha256::digest(format!("k8s-lab mac {lab} {node}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", digest[0], digest[1], digest[2])
}

/// How a VM backend runs guests, decided from the topology's `acceleration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    /// QEMU's software emulation (TCG): no KVM needed, about 13 times slower.
    Tcg,
}

impl Accelerator {
    /// The word libvirt's `<domain type=...>` and vagrant-libvirt's `driver` use.
    pub fn domain_type(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "qemu",
        }
    }

    pub fn parse(text: &str) -> Option<Accelerator> {
        match text.trim() {
            "kvm" => Some(Accelerator::Kvm),
            "qemu" | "tcg" => Some(Accelerator::Tcg),
            _ => None,
        }
    }

    /// How many times the host's time a wait on such a guest may take
    /// (`Machines::time_scale`). Under TCG a guest's CPU-bound work runs about 13 times
    /// slower than on the host, but the plan's timeouts leave a good margin already, so
    /// 5 times them suffices (measured: `lab up` of the minimal lab under TCG).
    pub fn time_scale(self) -> u32 {
        match self {
            Accelerator::Kvm => 1,
            Accelerator::Tcg => 5,
        }
    }
}

/// The lab's accelerator, decided once: `acceleration = "auto"` probes KVM (a guest
/// kernel boot) on first use and records the answer in `record`, so that later runs
/// and `time_scale` agree with the machines already made.
pub fn decide_acceleration(
    acceleration: Acceleration,
    vm: &VmImage,
    record: &Path,
) -> Result<Accelerator, MachineError> {
    if acceleration != Acceleration::Auto {
        return resolve_acceleration(acceleration, vm);
    }
    if let Some(recorded) = decided_acceleration(acceleration, record) {
        return Ok(recorded);
    }
    let probed = resolve_acceleration(Acceleration::Auto, vm)?;
    fs::write(record, format!("{}\n", probed.domain_type()))
        .map_err(|error| MachineError::Host { message: format!("cannot write {}: {error}", record.display()) })?;
    Ok(probed)
}

/// The accelerator `decide_acceleration` chose, without probing: `None` while `auto`
/// has not been decided yet.
pub fn decided_acceleration(acceleration: Acceleration, record: &Path) -> Option<Accelerator> {
    match acceleration {
        Acceleration::Tcg => Some(Accelerator::Tcg),
        Acceleration::Kvm => Some(Accelerator::Kvm),
        Acceleration::Auto => fs::read_to_string(record).ok().as_deref().and_then(Accelerator::parse),
    }
}

/// `Machines::time_scale` of the VM backends: the decided accelerator's, and
/// software emulation's while `auto` has not been decided yet.
pub fn time_scale(acceleration: Acceleration, record: &Path) -> u32 {
    decided_acceleration(acceleration, record).map_or(Accelerator::Tcg.time_scale(), Accelerator::time_scale)
}

/// How long a VM's console may stay quiet while it boots before the boot counts as
/// hung (`boot_watch`): half a minute under KVM, scaled like every other wait. The
/// longest quiet stretch of a normal boot is a few seconds.
pub fn hung_boot_after(time_scale: u32) -> Duration {
    Duration::from_secs(30) * time_scale
}

/// `acceleration` resolved: `tcg` as asked, `kvm` only when a KVM guest really runs
/// here (refused with the probe's answer otherwise), and `auto` KVM exactly then.
pub fn resolve_acceleration(acceleration: Acceleration, vm: &VmImage) -> Result<Accelerator, MachineError> {
    match acceleration {
        Acceleration::Tcg => Ok(Accelerator::Tcg),
        Acceleration::Kvm => match probe_kvm(vm) {
            Ok(()) => Ok(Accelerator::Kvm),
            Err(reason) => Err(MachineError::Host {
                message: format!(
                    "[machines] acceleration = \"kvm\", but KVM cannot run a guest here ({reason}); \
                     set acceleration = \"tcg\" or \"auto\""
                ),
            }),
        },
        Acceleration::Auto => Ok(match probe_kvm(vm) {
            Ok(()) => Accelerator::Kvm,
            Err(reason) => {
                tracing::info!(%reason, "KVM does not run guests here; VMs use software emulation (TCG)");
                Accelerator::Tcg
            }
        }),
    }
}

/// Whether KVM really runs a guest: /dev/kvm may exist and open on a host whose
/// KVM cannot run an ordinary kernel (nested virtualisation without the features
/// it needs), so the image's own kernel is booted under KVM with no disk, and must
/// print its first line within `KVM_PROBE_TIMEOUT`. It panics without a root
/// filesystem and, with `-no-reboot`, QEMU then exits.
pub fn probe_kvm(vm: &VmImage) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm does not exist".into());
    }
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "pc", "-cpu", "qemu64", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(&vm.kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run qemu-system-x86_64: {error}"))?;
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Linux version") {
                    let _ = sender.send(());
                    return;
                }
            }
        });
    }
    let answered = receiver.recv_timeout(KVM_PROBE_TIMEOUT).is_ok();
    let _ = child.kill();
    let output = child.wait_with_output().map(|output| output.stderr).unwrap_or_default();
    if answered {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output).trim().to_string();
    Err(if stderr.is_empty() {
        format!("a guest kernel printed nothing in {} s", KVM_PROBE_TIMEOUT.as_secs())
    } else {
        format!("a guest kernel printed nothing in {} s: {stderr}", KVM_PROBE_TIMEOUT.as_secs())
    })
}

/// What a host needs to run the lab's VMs through libvirt, whichever backend
/// drives it: the daemons, QEMU, the disk tools, tap devices, and no forwarding
/// network that libvirtd would start along with itself.
pub fn host_requirements() -> Vec<Requirement> {
    let programs = [
        ("libvirtd", "runs the VMs", "libvirt-daemon-system"),
        ("virtlogd", "libvirt's log daemon", "libvirt-daemon-system"),
        ("qemu-system-x86_64", "emulates the VMs", "qemu-system-x86"),
        ("qemu-img", "makes the VM disks", "qemu-utils"),
        ("mkfs.ext4", "makes the VM root and config disks", "e2fsprogs"),
        ("mmdebstrap", "builds the node image", "mmdebstrap"),
        ("systemctl", "prepares the image's units", "systemd"),
        ("ip", "routes the lab ranges onto the lab bridge", "iproute2"),
        ("ssh-keygen", "makes SSH keys", "openssh-client"),
        ("ssh", "`lab ssh`", "openssh-client"),
    ];
    let mut requirements: Vec<Requirement> =
        programs.into_iter().map(|(program, why, package)| Requirement::program(program, why, package)).collect();
    requirements.push(Requirement {
        what: "/dev/net/tun (the VMs' network cards)".into(),
        met: Path::new("/dev/net/tun").exists(),
        package: None,
        fix: "modprobe tun".into(),
    });
    requirements.push(libvirt_host::no_forwarding_network());
    requirements
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_command_line_boots_the_whole_disk_with_cgroup_v1_and_a_serial_console() {
        let words: Vec<&str> = KERNEL_COMMAND_LINE.split_whitespace().collect();
        for expected in ["root=/dev/vda", "rw", "console=ttyS0", "systemd.unified_cgroup_hierarchy=0"] {
            assert!(words.contains(&expected), "{expected} missing from {KERNEL_COMMAND_LINE}");
        }
    }

    #[test]
    fn the_vm_image_lives_beside_the_root_it_is_made_from() {
        let image =
            NodeImage { key: "node-abc".into(), root: "/cache/images/node-abc/rootfs".into(), from_cache: true };
        let vm = VmImage::paths(&image);
        assert_eq!(vm.dir, Path::new("/cache/images/node-abc/vm"));
        assert_eq!(vm.disk, Path::new("/cache/images/node-abc/vm/base.qcow2"));
        assert_eq!(vm.kernel, Path::new("/cache/images/node-abc/vm/vmlinuz"));
        assert_eq!(vm.initrd, Path::new("/cache/images/node-abc/vm/initrd.img"));
        assert!(!vm.complete());
    }

    #[test]
    fn the_newest_kernel_with_an_initrd_is_chosen() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let boot = scratch.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        assert!(kernel_release(scratch.path()).unwrap_err().contains("linux-image-amd64"));
        for name in ["vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64"] {
            fs::write(boot.join(name), "").unwrap();
        }
        assert_eq!(kernel_release(scratch.path()).unwrap(), "6.1.0-9-amd64", "6.1.0-10 has no initrd");
        fs::write(boot.join("initrd.img-6.1.0-10-amd64"), "").unwrap();
        assert_eq!(kernel_release(scratch.path()).unwrap(), "6.1.0-10-amd64");
    }

    #[test]
    fn config_disk_files_follow_the_shared_list() {
        let node = NodeSpec::new("worker1", Ipv4Addr::new(10, 243, 0, 21));
        let files = config_disk_files(&node, 24, "ssh-ed25519 AAAA lab");
        let paths: Vec<&str> = files.iter().map(|(path, _, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "every-start/etc/hostname",
                "every-start/etc/systemd/system.conf.d/90-k8s-lab.conf",
                "every-start/etc/systemd/network/10-host0.network",
                "first-boot/etc/hosts",
                "append-lines/root/.ssh/authorized_keys"
            ]
        );
        let shared: Vec<String> =
            node_config::node_files(&node, 24, "ssh-ed25519 AAAA lab").into_iter().map(|file| file.content).collect();
        let contents: Vec<String> = files.into_iter().map(|(_, _, content)| content).collect();
        assert_eq!(contents, shared);
    }

    #[test]
    fn the_boot_script_reads_every_directory_the_host_writes() {
        for directory in ["every-start", "first-boot", "append-lines"] {
            assert!(MACHINE_CONFIG_SCRIPT.contains(&format!("$mnt/{directory}")), "{directory}");
        }
        assert!(MACHINE_CONFIG_SCRIPT.contains(&format!("/dev/disk/by-label/{CONFIG_DISK_LABEL}")));
        // systemd escapes '-' in unit names as \x2d.
        let escaped = CONFIG_DISK_LABEL.replace('-', "\\x2d");
        assert!(MACHINE_CONFIG_UNIT.contains(&format!("After=dev-disk-by\\x2dlabel-{escaped}.device")));
        assert!(MACHINE_CONFIG_UNIT.contains("ConditionVirtualization=vm"));
    }

    #[test]
    fn mac_addresses_are_stable_local_and_differ_between_nodes_and_labs() {
        let mac = mac_address("vmmin", "master1");
        assert_eq!(mac, mac_address("vmmin", "master1"));
        assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
        assert_ne!(mac, mac_address("vmmin", "worker1"));
        assert_ne!(mac, mac_address("other", "master1"));
    }

    #[test]
    fn kernel_versions_compare_by_number() {
        assert_eq!(compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64"), std::cmp::Ordering::Greater);
        assert_eq!(compare_versions("6.1.0-9-amd64", "6.1.0-9-amd64"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn accelerators_name_libvirt_domain_types() {
        assert_eq!(Accelerator::Kvm.domain_type(), "kvm");
        assert_eq!(Accelerator::Tcg.domain_type(), "qemu");
        assert_eq!(Accelerator::parse("qemu"), Some(Accelerator::Tcg));
        assert_eq!(Accelerator::parse("kvm\n"), Some(Accelerator::Kvm));
        assert_eq!(Accelerator::parse("xen"), None);
    }

    #[test]
    fn a_config_disk_holds_the_node_files_and_its_host_keys() {
        let programs = ["mkfs.ext4", "ssh-keygen", "debugfs"];
        if let Some(missing) = programs.iter().find(|program| !system::program_exists(program)) {
            eprintln!("{missing} is not installed; skipping the config disk test");
            return;
        }
        let scratch = tempfile::tempdir().expect("temporary directory");
        let node = NodeSpec::new("worker1", Ipv4Addr::new(10, 243, 0, 21));
        let image = write_config_disk(scratch.path(), &node, 24, "ssh-ed25519 AAAA lab").expect("config disk");
        let listing = |path: &str| {
            system::run(Command::new("debugfs").args(["-R", &format!("ls -p {path}")]).arg(&image)).expect("debugfs")
        };
        assert!(listing("/every-start/etc/systemd/network").contains("10-host0.network"));
        assert!(listing("/first-boot/etc/ssh").contains("ssh_host_ed25519_key.pub"));
        let first_key = fs::read(scratch.path().join("host-keys/etc/ssh/ssh_host_ed25519_key")).unwrap();
        write_config_disk(scratch.path(), &node, 24, "ssh-ed25519 AAAA lab").expect("again");
        let second_key = fs::read(scratch.path().join("host-keys/etc/ssh/ssh_host_ed25519_key")).unwrap();
        assert_eq!(first_key, second_key, "a node keeps its host keys");
        let label = system::run(Command::new("e2label").arg(&image)).expect("e2label");
        assert_eq!(label.trim(), CONFIG_DISK_LABEL);
    }
}
