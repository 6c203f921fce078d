//! Vagrant's command line as the lab runs it: with the lab's environment and offline,
//! its output in `STATE/vagrant/vagrant.log`; and what the lab asks of it besides
//! `up`, `halt` and `destroy`: the lab's box, and how it reaches each machine.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{lab_key_paths, Vagrant};
use crate::machines::libvirt_host::URI;
use crate::machines::vm_image::VmImage;
use crate::machines::{Leftover, MachineError};
use crate::system;
use crate::text;

/// How many lines of Vagrant's output an error message carries.
const LOG_TAIL_LINES: usize = 15;

/// How much of the end of Vagrant's log a progress report reads: enough for the last
/// line even behind a run of redrawn upload progress.
const ACTIVITY_TAIL_BYTES: u64 = 16 * 1024;

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
    pub(super) fn run_logged(&self, args: &[&str]) -> Result<(), String> {
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
    pub(super) fn run_captured(&self, args: &[&str]) -> Result<String, String> {
        system::run(&mut self.vagrant_command(args.iter().chain(&["--no-color"])))
            .map_err(|failure| failure.to_string())
    }

    /// Adds the lab's box made from `vm` unless Vagrant has it already.
    pub(super) fn ensure_box(&self, vm: &VmImage) -> Result<(), MachineError> {
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

    /// Asks Vagrant how it reaches each machine and refuses unless that is exactly how
    /// the provisioner reaches the node: its topology address, port 22, root, the
    /// lab's key.
    pub(super) fn check_ssh_config(&self) -> Result<(), MachineError> {
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

    /// Removes the boxes this lab added.
    pub(super) fn remove_boxes(&self) -> Vec<Leftover> {
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

    /// Vagrant's latest line of output, from the end of its log.
    pub(super) fn latest_output(&self) -> Option<String> {
        last_output_line(&text::file_tail(&self.log_path(), ACTIVITY_TAIL_BYTES)?)
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

/// The last `lines` lines of Vagrant's output for an error message, without the
/// upload progress it redraws with carriage returns, and without Ruby's stack trace.
pub fn output_tail(text: &str, lines: usize) -> String {
    let kept = text
        .split(['\n', '\r'])
        .map(|line| line.trim_end_matches("\u{1b}[K").trim())
        .filter(|line| !line.is_empty() && !line.contains("Progress:") && !line.starts_with("from /"));
    text::one_line_tail(kept, lines)
}

/// Vagrant's latest line of output, the upload progress it redraws in place
/// ("Progress: 42%") included.
pub fn last_output_line(text: &str) -> Option<String> {
    text.split(['\n', '\r']).map(|line| line.replace("\u{1b}[K", "").trim().to_string()).rfind(|line| !line.is_empty())
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
    use super::super::tests::backend;
    use super::*;
    use std::collections::BTreeMap;

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
        let tail = text::file_tail(&log, ACTIVITY_TAIL_BYTES).expect("the log");
        assert!(tail.len() as u64 <= ACTIVITY_TAIL_BYTES);
        assert_eq!(last_output_line(&tail).as_deref(), Some("Progress: 42%"));
        fs::write(
            &log,
            format!("==> worker1: Uploading base box image as volume\n{upload}\n==> worker1: Starting domain.\n"),
        )
        .unwrap();
        let tail = text::file_tail(&log, ACTIVITY_TAIL_BYTES).unwrap();
        assert_eq!(last_output_line(&tail).as_deref(), Some("==> worker1: Starting domain."));
    }
}
