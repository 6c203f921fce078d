//! The node image: a Debian 12 root filesystem with everything the handbook's nodes
//! run, made from Debian packages only, built once and shared by every lab.
//!
//! `mmdebstrap` installs the packages; the customisation below then turns the
//! generic Debian root into a lab node: services the stages configure start only
//! when the provisioner enables them, networking is systemd-networkd with a static
//! file written per node, sshd accepts root by key only, and the four fixes kubelet
//! needs inside systemd-nspawn are in place (see the shared notes).
//!
//! The image lives in `CACHE/images/node-HASH/rootfs`, where HASH covers the
//! release, the package list and every customised file, so any change to the recipe
//! builds a new image beside the old one and never changes an image that nodes use
//! as their lower layer. A build happens in `node-HASH.partial-PID` and is renamed
//! into place only when complete: an interrupted build is never mistaken for an
//! image, and the next run removes its remains.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::{MachineError, NodeImage};
use crate::debian::{MIRROR as DEFAULT_MIRROR, RELEASE};
use crate::system;

/// Packages on top of Debian's `minbase` variant: systemd as PID 1, SSH, and every
/// program of the handbook that Debian packages (Kubernetes itself is copied in by
/// the stages), plus the few tools a learner reaches for when looking around.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "openssh-server",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "keepalived",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "firewalld",
    "nftables",
    "iptables",
    "conntrack",
    "socat",
    "ipset",
    "curl",
    "dnsutils",
    "ca-certificates",
    "kmod",
    "procps",
    "psmisc",
    "less",
    // VMs boot the image's own kernel (nspawn nodes run the host's and never load
    // it): one image for every backend keeps all nodes on the same package versions,
    // where a separate VM image would be a second mmdebstrap run at another moment.
    // udev names the VM's network card and makes its disks' device units; an nspawn
    // node, whose /sys is read-only, never starts it.
    "linux-image-amd64",
    "udev",
    // The QEMU guest agent tells the host a VM's addresses through a virtio channel:
    // Vagrant learns the node's static address from it (the lab network has no DHCP).
    // udev starts it only where that channel exists, so never in nspawn.
    "qemu-guest-agent",
];

/// Bumped when the customisation *code* changes in a way its file list and unit
/// lists below do not show (they are hashed themselves).
const RECIPE_VERSION: u32 = 1;

/// How long mmdebstrap may be quiet before the build says it is still at work.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// dpkg filters that keep documentation and translations out of the image: nodes
/// are read through SSH and journals, and the image is copied for every lab.
const DPKG_OPTIONS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// What to build: the release, the packages and the mirror to fetch them from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    pub release: String,
    pub packages: Vec<String>,
    /// Not part of the cache key: every Debian mirror serves the same packages.
    pub mirror: String,
}

impl Default for ImageRecipe {
    fn default() -> Self {
        ImageRecipe {
            release: RELEASE.to_string(),
            packages: PACKAGES.iter().map(|package| package.to_string()).collect(),
            mirror: DEFAULT_MIRROR.to_string(),
        }
    }
}

impl ImageRecipe {
    /// The cache key: `node-` and the first 16 hex digits of the recipe's hash.
    pub fn key(&self) -> String {
        let digest = Sha256::digest(self.describe().as_bytes());
        format!("node-{}", &hex::encode(digest)[..16])
    }

    /// Everything that decides the image's content, as text: hashed for the key
    /// and kept beside the image as `recipe.txt`.
    pub fn describe(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let customisation = customisation();
        let mut text = format!("recipe-version {RECIPE_VERSION}\nrelease {}\nvariant minbase\n", self.release);
        let _ = writeln!(text, "packages {}", packages.join(","));
        for option in DPKG_OPTIONS {
            let _ = writeln!(text, "dpkg-option {option}");
        }
        for (verb, units) in
            [("disable", customisation.disable), ("mask", customisation.mask), ("enable", customisation.enable)]
        {
            let _ = writeln!(text, "{verb} {}", units.join(" "));
        }
        for path in customisation.remove {
            let _ = writeln!(text, "remove {path}");
        }
        for prefix in customisation.remove_prefixed {
            let _ = writeln!(text, "remove-prefixed {prefix}");
        }
        for file in &customisation.files {
            let _ = writeln!(
                text,
                "file {} {:04o} sha256:{}",
                file.path,
                file.mode,
                hex::encode(Sha256::digest(file.content))
            );
        }
        text
    }
}

/// One file the customisation writes, relative to the image root.
struct ImageFile {
    path: &'static str,
    mode: u32,
    content: &'static str,
}

/// How a generic Debian root becomes a lab node.
struct Customisation {
    /// Enabled by their packages, but the stages configure and enable them: etcd
    /// would otherwise start as a one-member cluster and keepalived would float
    /// addresses before it has a configuration. containerd runs on workers only, and
    /// there first with the container-runtime stage's configuration, so that stage
    /// starts it once instead of restarting one that booted with Debian's.
    disable: &'static [&'static str],
    /// Useless or harmful in a container without a real disk, console or network
    /// to the outside (apt timers would try to reach mirrors).
    mask: &'static [&'static str],
    enable: &'static [&'static str],
    /// Files that must not be shared by every node made from the image.
    remove: &'static [&'static str],
    remove_prefixed: &'static [&'static str],
    files: Vec<ImageFile>,
}

fn customisation() -> Customisation {
    Customisation {
        disable: &["etcd.service", "haproxy.service", "keepalived.service", "firewalld.service", "containerd.service"],
        mask: &[
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "e2scrub_all.timer",
            "e2scrub_reap.service",
            "fstrim.timer",
            "getty@tty1.service",
            "systemd-pstore.service",
        ],
        enable: &["systemd-networkd.service", "lab-api-rw.service", "lab-machine-config.service"],
        remove: &[
            // ifupdown's unit would wait for interfaces networkd manages.
            "etc/systemd/system/multi-user.target.wants/networking.service",
            "var/lib/dbus/machine-id",
        ],
        // Host keys are made per node, so two nodes never share one.
        remove_prefixed: &["etc/ssh/ssh_host_"],
        files: vec![
            // No name server leaves the lab: cluster DNS is reached through the
            // node's own resolver configuration, set by the stages.
            ImageFile { path: "etc/resolv.conf", mode: 0o644, content: "nameserver 127.0.0.1\n" },
            ImageFile { path: "etc/ssh/sshd_config.d/lab.conf", mode: 0o644, content: SSHD_CONFIG },
            // nspawn gives each boot a fresh /dev, so the link is made at boot;
            // kubelet refuses to start without /dev/kmsg.
            ImageFile {
                path: "etc/tmpfiles.d/lab-kmsg.conf",
                mode: 0o644,
                content: "L /dev/kmsg - - - - /dev/console\n",
            },
            ImageFile { path: "usr/local/sbin/lab-api-rw", mode: 0o755, content: API_RW_SCRIPT },
            ImageFile { path: "etc/systemd/system/lab-api-rw.service", mode: 0o644, content: API_RW_UNIT },
            // VMs only: their identity comes from a config disk, and their network
            // card is named host0 as in nspawn (see vm_image.rs).
            ImageFile {
                path: "usr/local/sbin/lab-machine-config",
                mode: 0o755,
                content: super::vm_image::MACHINE_CONFIG_SCRIPT,
            },
            ImageFile {
                path: "etc/systemd/system/lab-machine-config.service",
                mode: 0o644,
                content: super::vm_image::MACHINE_CONFIG_UNIT,
            },
            ImageFile {
                path: "etc/systemd/network/10-lab-vm.link",
                mode: 0o644,
                content: super::vm_image::NIC_LINK_FILE,
            },
            // An empty machine-id in the image; each node gets its own.
            ImageFile { path: "etc/machine-id", mode: 0o444, content: "" },
            ImageFile { path: "etc/hostname", mode: 0o644, content: "node\n" },
        ],
    }
}

const SSHD_CONFIG: &str = "\
# Lab: root logs in with the lab's key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
";

const API_RW_SCRIPT: &str = r#"#!/bin/sh
# Lab: nspawn mounts /proc/sys and the cgroup v1 controllers read-only; kubelet must
# write to them (vm.overcommit_memory, kernel.panic*, its own cgroups). A bind
# remount changes only this mount's flag (a plain remount of a cgroup v1 mount fails
# with EBUSY).
for m in /proc/sys /sys/fs/cgroup/*; do
  mountpoint -q "$m" || continue
  if findmnt -no OPTIONS "$m" | grep -q '^ro'; then
    mount -o remount,bind,rw "$m" && echo "made $m writable"
  fi
done
exit 0
"#;

const API_RW_UNIT: &str = "\
[Unit]
Description=Lab: make /proc/sys and cgroup controllers writable (kubelet)
DefaultDependencies=no
Before=sysinit.target systemd-sysctl.service
ConditionVirtualization=container

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-api-rw
RemainAfterExit=yes

[Install]
WantedBy=sysinit.target
";

fn image_error(key: &str, message: impl Into<String>) -> MachineError {
    MachineError::Image { key: key.to_string(), message: message.into() }
}

/// The image for `recipe` in `cache_dir`, built first if the cache does not have it.
/// `progress` receives one line per build step (mmdebstrap's own `I:` lines).
pub fn ensure(cache_dir: &Path, recipe: &ImageRecipe, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
    let key = recipe.key();
    let images = cache_dir.join("images");
    let finished = images.join(&key);
    if finished.join("rootfs").is_dir() {
        return Ok(NodeImage { key, root: finished.join("rootfs"), from_cache: true });
    }
    fs::create_dir_all(&images)
        .map_err(|error| image_error(&key, format!("cannot create {}: {error}", images.display())))?;
    remove_abandoned_builds(&images, &key)?;

    let partial = images.join(format!("{key}.partial-{}", std::process::id()));
    system::unmount_and_remove_tree(&partial)
        .map_err(|message| image_error(&key, format!("cannot clear {}: {message}", partial.display())))?;
    fs::create_dir_all(&partial)
        .map_err(|error| image_error(&key, format!("cannot create {}: {error}", partial.display())))?;
    let started = Instant::now();
    let result = build(&partial, recipe, &key, progress);
    if let Err(error) = result {
        // Keep the log of a failed build, and only the log: the half-made root is
        // hundreds of megabytes and never usable.
        let log = partial.join("build.log");
        let kept = images.join(format!("{key}.failed.log"));
        let _ = fs::rename(&log, &kept);
        let _ = system::unmount_and_remove_tree(&partial);
        return Err(match error {
            MachineError::Image { key, message } => {
                MachineError::Image { key, message: format!("{message} (build log: {})", kept.display()) }
            }
            other => other,
        });
    }
    match fs::rename(&partial, &finished) {
        Ok(()) => {}
        // Another `lab up` finished the same image first; theirs is as good.
        Err(_) if finished.join("rootfs").is_dir() => {
            let _ = system::unmount_and_remove_tree(&partial);
        }
        Err(error) => {
            return Err(image_error(
                &key,
                format!("cannot rename {} to {}: {error}", partial.display(), finished.display()),
            ))
        }
    }
    // The log of an earlier failed attempt describes a problem that is now gone.
    let _ = fs::remove_file(images.join(format!("{key}.failed.log")));
    progress(&format!("built image {key} in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(NodeImage { key, root: finished.join("rootfs"), from_cache: false })
}

/// Removes `KEY.partial-PID` directories whose building process is gone (an
/// interrupted run). A build still in progress is left alone: its `lab` process is
/// alive, or an orphaned mmdebstrap is still writing into it.
fn remove_abandoned_builds(images: &Path, key: &str) -> Result<(), MachineError> {
    let prefix = format!("{key}.partial-");
    let entries =
        fs::read_dir(images).map_err(|error| image_error(key, format!("cannot list {}: {error}", images.display())))?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && system::process_alive(pid) {
            continue;
        }
        if let Some(writer) = system::processes_mentioning(&entry.path()).first() {
            return Err(image_error(
                key,
                format!("process {writer} is still building in {}; wait for it or stop it", entry.path().display()),
            ));
        }
        system::unmount_and_remove_tree(&entry.path()).map_err(|message| {
            image_error(key, format!("cannot remove the interrupted build {}: {message}", entry.path().display()))
        })?;
    }
    Ok(())
}

/// mmdebstrap into `partial/rootfs`, then the customisation, then the recipe text.
fn build(partial: &Path, recipe: &ImageRecipe, key: &str, progress: &dyn Fn(&str)) -> Result<(), MachineError> {
    let root = partial.join("rootfs");
    let log_path = partial.join("build.log");
    let mut log = fs::File::create(&log_path)
        .map_err(|error| image_error(key, format!("cannot create {}: {error}", log_path.display())))?;
    let mut command = Command::new("mmdebstrap");
    command.args(["--variant=minbase", "--mode=root", "--format=directory"]);
    command.arg(format!("--include={}", recipe.packages.join(",")));
    for option in DPKG_OPTIONS {
        command.arg(format!("--dpkgopt={option}"));
    }
    command.arg(&recipe.release).arg(&root).arg(&recipe.mirror);
    let line = system::command_line(&command);
    let _ = writeln!(log, "$ {line}");
    progress(&format!("building image {key} with mmdebstrap ({} packages, about a minute)", recipe.packages.len()));

    let stdout_log =
        log.try_clone().map_err(|error| image_error(key, format!("cannot share {}: {error}", log_path.display())))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout_log)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| image_error(key, format!("cannot run mmdebstrap: {error} (run `lab doctor`)")))?;
    let mut last_lines: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        // mmdebstrap says nothing for minutes while it installs packages inside the
        // chroot, so its lines come through a channel and a quiet spell of
        // `HEARTBEAT` gets a line of its own: how long, and the step it is in.
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(text).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut step = String::from("starting");
        loop {
            match received.recv_timeout(HEARTBEAT) {
                Ok(text) => {
                    let _ = writeln!(log, "{text}");
                    if let Some(announced) = text.strip_prefix("I: ") {
                        progress(&format!("mmdebstrap: {announced}"));
                        step = announced.trim_end_matches("...").to_string();
                    }
                    last_lines.push(text);
                    if last_lines.len() > 5 {
                        last_lines.remove(0);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    progress(&format!("mmdebstrap: {} s elapsed; {step}", started.elapsed().as_secs()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    let status = child.wait().map_err(|error| image_error(key, format!("mmdebstrap: {error}")))?;
    if !status.success() {
        return Err(image_error(key, format!("`{line}` failed ({status}): {}", last_lines.join(" | "))));
    }

    progress("customising the image for lab nodes");
    customise(&root, key)?;
    let recipe_path = partial.join("recipe.txt");
    fs::write(&recipe_path, recipe.describe())
        .map_err(|error| image_error(key, format!("cannot write {}: {error}", recipe_path.display())))
}

/// Applies `customisation()` to the root at `root`.
fn customise(root: &Path, key: &str) -> Result<(), MachineError> {
    let customisation = customisation();
    for file in &customisation.files {
        let path = root.join(file.path);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            // A package may ship the path as a symlink (resolv.conf often is one):
            // replace the link itself instead of writing through it.
            if fs::symlink_metadata(&path).is_ok() {
                fs::remove_file(&path)?;
            }
            fs::write(&path, file.content)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
        };
        write().map_err(|error| image_error(key, format!("cannot write {}: {error}", path.display())))?;
    }
    for relative in customisation.remove {
        let path = root.join(relative);
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path)
                .map_err(|error| image_error(key, format!("cannot remove {}: {error}", path.display())))?;
        }
    }
    for prefix in customisation.remove_prefixed {
        let path = root.join(prefix);
        let (Some(directory), Some(stem)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let stem = stem.to_string_lossy().into_owned();
        let entries = fs::read_dir(directory)
            .map_err(|error| image_error(key, format!("cannot list {}: {error}", directory.display())))?;
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(&stem) {
                fs::remove_file(entry.path())
                    .map_err(|error| image_error(key, format!("cannot remove {}: {error}", entry.path().display())))?;
            }
        }
    }
    // `systemctl --root` edits the unit links offline, reading each unit's
    // [Install] section, exactly as `systemctl enable` would on a running node.
    let root_option = format!("--root={}", root.display());
    for (verb, units) in
        [("disable", customisation.disable), ("mask", customisation.mask), ("enable", customisation.enable)]
    {
        let mut command = Command::new("systemctl");
        command.arg(&root_option).arg(verb).args(units);
        system::run(&mut command).map_err(|failure| image_error(key, failure.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_packages_and_release_but_not_with_the_mirror() {
        let base = ImageRecipe::default();
        let key = base.key();
        assert!(key.starts_with("node-") && key.len() == "node-".len() + 16, "{key}");

        let mirror = ImageRecipe { mirror: "http://mirror.example/debian".into(), ..base.clone() };
        assert_eq!(mirror.key(), key, "the mirror does not change what is installed");

        let mut reordered = base.clone();
        reordered.packages.reverse();
        assert_eq!(reordered.key(), key, "package order does not matter");

        let mut more = base.clone();
        more.packages.push("strace".into());
        assert_ne!(more.key(), key);

        let trixie = ImageRecipe { release: "trixie".into(), ..base };
        assert_ne!(trixie.key(), key);
    }

    #[test]
    fn the_recipe_lists_every_customised_file() {
        let text = ImageRecipe::default().describe();
        for file in customisation().files {
            assert!(text.contains(&format!("file {} ", file.path)), "{} missing from\n{text}", file.path);
        }
        assert!(text.contains("disable etcd.service haproxy.service keepalived.service firewalld.service"));
    }

    #[test]
    fn customisation_writes_files_and_removes_shared_identity() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let root = scratch.path();
        fs::create_dir_all(root.join("etc/ssh")).expect("etc/ssh");
        fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").expect("host key");
        fs::write(root.join("etc/ssh/ssh_config"), "keep").expect("ssh_config");
        std::os::unix::fs::symlink("../run/resolv.conf", root.join("etc/resolv.conf")).expect("symlink");
        // systemctl --root refuses to disable or enable a unit it cannot find: give it
        // stand-ins for the packaged units the customisation touches.
        let units = root.join("usr/lib/systemd/system");
        fs::create_dir_all(&units).expect("units dir");
        for unit in customisation().disable.iter().chain(&["systemd-networkd.service"]) {
            fs::write(units.join(unit), "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
                .expect("unit");
        }
        if !system::program_exists("systemctl") {
            eprintln!("systemctl is not installed; skipping the customisation test");
            return;
        }
        customise(root, "node-test").expect("customise");
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(root.join("etc/ssh/ssh_config").exists());
        assert_eq!(fs::read_to_string(root.join("etc/resolv.conf")).unwrap(), "nameserver 127.0.0.1\n");
        assert!(!fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap().file_type().is_symlink());
        let mode = fs::metadata(root.join("usr/local/sbin/lab-api-rw")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        // Unit links point at absolute paths inside the image, so look at the link itself.
        assert!(fs::symlink_metadata(root.join("etc/systemd/system/sysinit.target.wants/lab-api-rw.service")).is_ok());
        assert!(fs::read_link(root.join("etc/systemd/system/apt-daily.timer"))
            .is_ok_and(|target| target == Path::new("/dev/null")));
    }
}
