//! The host-side tools the machine backends, the preflight and the artifact builds
//! drive: running a program and saying exactly what failed, the mount table,
//! processes by PID, writing a file atomically, and removing a directory tree
//! without ever descending into something mounted inside it.
//!
//! `System` is the seam of the host network and the preflight, as `host::Host` is
//! for nodes: `LocalSystem` acts on this machine through the functions below, and
//! `RecordingSystem` records calls and answers from a script, for unit tests.
//!
//! Everything here shells out to the standard Debian tools (`ip`, `mount`, `kill`)
//! rather than calling the kernel directly: the commands are the ones a learner
//! would type, and their error messages are the ones the host's documentation
//! explains.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A program that ran and failed, or could not be started at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// The command line as a person would type it.
    pub command: String,
    /// Its standard error (or why it could not start), trimmed.
    pub message: String,
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.message)
    }
}

/// Whether this process runs with an effective UID of 0.
pub fn running_as_root() -> bool {
    // The effective UID is the second number of the `Uid:` line.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    effective.as_deref() == Some("0")
}

/// The command line of `command`, for messages.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` to completion with no input and returns its standard output.
/// A non-zero exit is a failure carrying the program's standard error.
pub fn run(command: &mut Command) -> Result<String, CommandFailure> {
    let line = command_line(command);
    let output = command.stdin(Stdio::null()).output().map_err(|error| CommandFailure {
        command: line.clone(),
        message: match error.kind() {
            io::ErrorKind::NotFound => "the program is not installed (run `lab doctor`)".to_string(),
            _ => error.to_string(),
        },
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let message = match (output.status.code(), stderr.is_empty()) {
        (Some(code), true) => format!("exit status {code}"),
        (Some(code), false) => format!("exit status {code}: {stderr}"),
        (None, _) => format!("killed by a signal: {stderr}"),
    };
    Err(CommandFailure { command: line, message })
}

/// `run` for a program and its arguments.
pub fn run_program<I, S>(program: &str, args: I) -> Result<String, CommandFailure>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(program).args(args))
}

/// Whether `program` is found on the PATH.
pub fn program_exists(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|directory| directory.join(program).is_file())
}

/// One line of the mount table: where something is mounted, and its filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// Every mount of this mount namespace, in the order the kernel lists them.
pub fn mount_table() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts in a `/proc/self/mountinfo` text: the fifth field of each line (with
/// the kernel's octal escapes for space, tab, newline and backslash undone), and the
/// filesystem type, the first field after the ` - ` separator.
fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let point = line.split(' ').nth(4)?;
            let fstype = line.split_once(" - ")?.1.split(' ').next()?;
            Some(Mount { point: PathBuf::from(unescape_mount(point)), fstype: fstype.to_string() })
        })
        .collect()
}

fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|_| bytes[index] == b'\\');
        match escape.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(mount_table()?.into_iter().map(|mount| mount.point).collect())
}

/// Mount points at or below `path`, deepest first (the order to unmount them in).
pub fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_points()?.into_iter().filter(|mount| mount.starts_with(path)).collect();
    found.sort_by_key(|mount| std::cmp::Reverse(mount.components().count()));
    found.dedup();
    Ok(found)
}

pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_points()?.iter().any(|mount| mount == path))
}

/// Unmounts `path` (every mount stacked on it), retrying briefly while it is busy:
/// a machine that just stopped may still be releasing its files.
pub fn unmount(path: &Path) -> Result<(), CommandFailure> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match is_mount_point(path) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(error) => {
                return Err(CommandFailure { command: "read /proc/self/mountinfo".into(), message: error.to_string() })
            }
        }
        match run(Command::new("umount").arg(path)) {
            Ok(_) => {}
            Err(failure) if Instant::now() < deadline => {
                tracing::debug!(%failure, "unmount failed, retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// Removes the directory tree at `path` (nothing to do when it is absent).
///
/// It refuses when anything is mounted at or below `path`: removing through a mount
/// would delete the mounted filesystem's files (a node image, or the host's own /dev
/// if an interrupted image build left its bind mounts behind).
pub fn remove_tree(path: &Path) -> Result<(), String> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let mounted = mounts_under(path).map_err(|error| format!("cannot read the mount table: {error}"))?;
    if !mounted.is_empty() {
        let list = mounted.iter().map(|mount| mount.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(format!("still mounted inside it: {list}"));
    }
    fs::remove_dir_all(path).map_err(|error| error.to_string())
}

/// Unmounts everything at or below `path`, deepest first, then removes the tree.
pub fn unmount_and_remove_tree(path: &Path) -> Result<(), String> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let mounted = mounts_under(path).map_err(|error| format!("cannot read the mount table: {error}"))?;
    for mount in mounted {
        unmount(&mount).map_err(|failure| failure.to_string())?;
    }
    remove_tree(path)
}

/// The names of the directories in `dir`, sorted; none when it cannot be read.
pub fn subdirectories(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether process `pid` exists and has not exited. A zombie (exited, not yet
/// reaped by its parent) counts as gone: it holds no resources but its PID.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_state(&stat).is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line: the field after the command name,
/// which is in parentheses and may itself contain spaces and parentheses.
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The arguments process `pid` was started with; `None` when it is gone.
pub fn process_arguments(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|byte| *byte == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

/// Live processes whose command line mentions `path` (a build still writing there).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && process_alive(*pid))
        .filter(|pid| {
            process_arguments(*pid).is_some_and(|arguments| arguments.iter().any(|argument| argument.contains(&needle)))
        })
        .collect()
}

/// Sends `signal` (a name such as `TERM`) to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) -> Result<(), CommandFailure> {
    run_program("kill", ["-s", signal, &pid.to_string()]).map(drop)
}

/// Waits until `pid` has exited, for at most `timeout`; true when it did.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Writes `content` to `path` through a temporary file beside it and a rename, so
/// a crash never leaves a half-written file.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.lab-tmp", std::process::id()));
    // A temporary file left by an interrupted run may have another mode: start anew,
    // so that the file is created with `mode` and a key is never readable by others,
    // not even for a moment.
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
    // The umask may have removed bits from `mode` (never added any); set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)
}

/// What the host network and the preflight need from the machine this process runs
/// on, so that their decisions can be tested without root against `RecordingSystem`.
pub trait System: Send + Sync {
    /// Runs `program` with `args` to completion (as `run_program` does) and returns its
    /// standard output.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandFailure>;

    /// Whether anything (file or directory) is at `path`.
    fn exists(&self, path: &Path) -> bool;

    fn read_file(&self, path: &Path) -> io::Result<String>;

    /// Writes `content` into the existing file at `path`. Kernel settings under
    /// /proc/sys take only this: a file cannot be created or renamed there.
    fn write_in_place(&self, path: &Path, content: &[u8]) -> io::Result<()>;

    /// Writes `content` to `path` as `write_atomically` does.
    fn write_atomically(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()>;
}

/// The machine this process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSystem;

impl System for LocalSystem {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandFailure> {
        run_program(program, args)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write_in_place(&self, path: &Path, content: &[u8]) -> io::Result<()> {
        fs::write(path, content)
    }

    fn write_atomically(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        write_atomically(path, content, mode)
    }
}

/// One recorded call on a `RecordingSystem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemCall {
    /// A command line, as `command_line` writes it.
    Run(String),
    Exists(PathBuf),
    Read(PathBuf),
    Write {
        path: PathBuf,
        content: Vec<u8>,
    },
}

/// A fake `System` that records every call and answers from a script.
///
/// A command is answered by the first registered reply whose prefix its command line
/// starts with; an unmatched command succeeds with no output. Files exist when they
/// were seeded or written, and a path exists when a file is at or below it (so a
/// seeded `/sys/class/net/br0/ifalias` makes `/sys/class/net/br0` exist).
#[derive(Default)]
pub struct RecordingSystem {
    calls: Mutex<Vec<SystemCall>>,
    replies: Mutex<Vec<(String, Result<String, String>)>>,
    removals: Mutex<Vec<(String, PathBuf)>>,
    files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
}

impl RecordingSystem {
    pub fn new() -> Self {
        RecordingSystem::default()
    }

    /// Answers commands starting with `prefix` with `stdout`.
    pub fn reply(&self, prefix: &str, stdout: &str) {
        self.replies.lock().expect("replies lock").push((prefix.to_string(), Ok(stdout.to_string())));
    }

    /// Fails commands starting with `prefix`, with `message` as their error.
    pub fn fail(&self, prefix: &str, message: &str) {
        self.replies.lock().expect("replies lock").push((prefix.to_string(), Err(message.to_string())));
    }

    /// Makes `path` and everything below it vanish when a command starting with
    /// `prefix` succeeds, as `ip link del` removes an interface's /sys entries.
    pub fn remove_when_run(&self, prefix: &str, path: &str) {
        self.removals.lock().expect("removals lock").push((prefix.to_string(), PathBuf::from(path)));
    }

    /// Pretends `path` already holds `content`.
    pub fn seed_file(&self, path: &str, content: &str) {
        self.files.lock().expect("files lock").insert(PathBuf::from(path), content.as_bytes().to_vec());
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<SystemCall> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// The command lines run so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                SystemCall::Run(line) => Some(line),
                _ => None,
            })
            .collect()
    }

    /// The content of the file at `path`, when one was seeded or written.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files.lock().expect("files lock").get(Path::new(path)).cloned()
    }

    fn record(&self, call: SystemCall) {
        self.calls.lock().expect("calls lock").push(call);
    }
}

impl System for RecordingSystem {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandFailure> {
        let line = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        self.record(SystemCall::Run(line.clone()));
        let reply = self
            .replies
            .lock()
            .expect("replies lock")
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, reply)| reply.clone())
            .unwrap_or_else(|| Ok(String::new()));
        match reply {
            Ok(stdout) => {
                let removals = self.removals.lock().expect("removals lock");
                let mut files = self.files.lock().expect("files lock");
                for (_, gone) in removals.iter().filter(|(prefix, _)| line.starts_with(prefix.as_str())) {
                    files.retain(|path, _| !path.starts_with(gone));
                }
                Ok(stdout)
            }
            Err(message) => Err(CommandFailure { command: line, message }),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        self.record(SystemCall::Exists(path.to_path_buf()));
        self.files.lock().expect("files lock").keys().any(|file| file.starts_with(path))
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        self.record(SystemCall::Read(path.to_path_buf()));
        match self.files.lock().expect("files lock").get(path) {
            Some(content) => Ok(String::from_utf8_lossy(content).into_owned()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))),
        }
    }

    fn write_in_place(&self, path: &Path, content: &[u8]) -> io::Result<()> {
        self.record(SystemCall::Write { path: path.to_path_buf(), content: content.to_vec() });
        let mut files = self.files.lock().expect("files lock");
        match files.get_mut(path) {
            Some(existing) => {
                *existing = content.to_vec();
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))),
        }
    }

    fn write_atomically(&self, path: &Path, content: &[u8], _mode: u32) -> io::Result<()> {
        self.record(SystemCall::Write { path: path.to_path_buf(), content: content.to_vec() });
        self.files.lock().expect("files lock").insert(path.to_path_buf(), content.to_vec());
        Ok(())
    }
}

/// The ID of the host's group `name`, from `/etc/group` (where Debian's packages make
/// their system groups, such as `kvm`).
pub fn group_id(name: &str) -> Option<u32> {
    group_id_in(&fs::read_to_string("/etc/group").ok()?, name)
}

/// `name`'s ID in the text of a group file: `NAME:PASSWORD:GID:MEMBERS` lines.
fn group_id_in(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The `cargo` that ran this program, for a cargo command of its own (the lab-dns build,
/// `lab drill`'s test run, the conformance suite's `cargo lab`).
///
/// Cargo gives a test (and `cargo run` a program) the variables of the package it built
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ..., and `OUT_DIR` when the package has a
/// build script, as the provisioner has). They must not reach the inner cargo: ring's
/// build script watches them, so the inner cargo would rebuild half the tree (ring,
/// rustls, kube: 45 s for lab-dns), and the next build from another package (the
/// provisioner's tests, then `cargo lab up`) would rebuild it back.
pub fn inner_cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    for name in per_package_variables(std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned())) {
        command.env_remove(name);
    }
    command
}

/// Which of `names` cargo sets for one package only.
fn per_package_variables(names: impl Iterator<Item = String>) -> Vec<String> {
    let per_package = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    names.filter(|name| name.starts_with("CARGO_PKG_") || per_package.contains(&name.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_found_by_its_name_in_a_group_file() {
        let groups = "root:x:0:\nkvm:x:107:\nlibvirt:x:108:alice\nkvmx:x:200:\n";
        assert_eq!(group_id_in(groups, "kvm"), Some(107));
        assert_eq!(group_id_in(groups, "libvirt"), Some(108));
        assert_eq!(group_id_in(groups, "kv"), None);
        assert_eq!(group_id_in("broken line\n", "broken line"), None);
    }

    #[test]
    fn the_inner_cargo_gets_none_of_the_outer_packages_variables() {
        let names = ["OUT_DIR", "CARGO_PKG_NAME", "CARGO_MANIFEST_DIR", "CARGO", "CARGO_HOME", "PATH", "RUSTFLAGS"];
        let removed = per_package_variables(names.iter().map(|name| name.to_string()));
        assert_eq!(removed, ["OUT_DIR", "CARGO_PKG_NAME", "CARGO_MANIFEST_DIR"]);
    }

    #[test]
    fn mount_points_undo_the_kernel_escapes() {
        let mountinfo = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                         90 22 0:50 / /srv/my\\040lab/root rw - overlay overlay rw,lowerdir=/a\n";
        assert_eq!(
            parse_mountinfo(mountinfo),
            vec![
                Mount { point: PathBuf::from("/proc"), fstype: "proc".into() },
                Mount { point: PathBuf::from("/srv/my lab/root"), fstype: "overlay".into() },
            ]
        );
    }

    #[test]
    fn process_state_skips_a_command_name_with_parentheses() {
        assert_eq!(process_state("4242 (a (weird) name) S 1 4242"), Some('S'));
        assert_eq!(process_state("7 (sh) Z 1 7"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
    }

    #[test]
    fn run_reports_the_command_line_and_its_stderr() {
        let failure = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).expect_err("must fail");
        assert_eq!(failure.command, "sh -c echo broken >&2; exit 3");
        assert_eq!(failure.message, "exit status 3: broken");
        let missing = run(&mut Command::new("no-such-program-for-the-lab")).expect_err("must fail");
        assert!(missing.message.contains("not installed"), "{missing}");
    }

    #[test]
    fn remove_tree_removes_plain_directories_and_ignores_missing_ones() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let tree = scratch.path().join("a/b");
        fs::create_dir_all(&tree).expect("create tree");
        fs::write(tree.join("file"), "x").expect("write");
        remove_tree(&scratch.path().join("a")).expect("remove");
        assert!(!scratch.path().join("a").exists());
        remove_tree(&scratch.path().join("a")).expect("absent is fine");
    }

    #[test]
    fn remove_tree_refuses_a_tree_with_a_mount_inside() {
        // /proc is always mounted: asking to remove a tree that contains it must
        // refuse before touching anything.
        let error = remove_tree(Path::new("/proc")).expect_err("must refuse");
        assert!(error.contains("still mounted"), "{error}");
    }

    #[test]
    fn the_recording_system_answers_from_its_script_and_records_every_call() {
        let system = RecordingSystem::new();
        system.reply("ip link show", "7: br0: <BROADCAST>");
        system.fail("ip link del", "Operation not permitted");
        system.seed_file("/sys/class/net/br0/ifalias", "owner\n");
        system.remove_when_run("ip link set", "/sys/class/net/br0");
        assert_eq!(system.run("ip", &["link", "show", "br0"]).expect("scripted"), "7: br0: <BROADCAST>");
        assert_eq!(system.run("true", &[]).expect("unscripted"), "");
        let failure = system.run("ip", &["link", "del", "br0"]).expect_err("scripted failure");
        assert_eq!(failure.to_string(), "`ip link del br0` failed: Operation not permitted");
        assert!(system.exists(Path::new("/sys/class/net/br0")), "a file below makes the directory exist");
        assert_eq!(system.read_file(Path::new("/sys/class/net/br0/ifalias")).expect("seeded"), "owner\n");
        system.run("ip", &["link", "set", "br0", "down"]).expect("unscripted");
        assert!(!system.exists(Path::new("/sys/class/net/br0")));
        assert!(system.write_in_place(Path::new("/proc/sys/missing"), b"1").is_err(), "no file to write into");
        system.write_atomically(Path::new("/etc/new"), b"x", 0o644).expect("write");
        assert_eq!(system.file("/etc/new").as_deref(), Some(&b"x"[..]));
        assert_eq!(system.commands(), ["ip link show br0", "true", "ip link del br0", "ip link set br0 down"]);
        assert_eq!(system.calls().len(), 9, "four commands, two existence checks, a read and two writes");
    }
}
