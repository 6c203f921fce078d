//! `SshHost` against a real OpenSSH server on loopback.
//!
//! Each test starts its own `sshd` on a free port of 127.0.0.1 with a throwaway
//! host key and the test's own lab key pair, so nothing leaves the machine. sshd
//! needs root (it switches to the logged-in user) and the `openssh-server` package;
//! without them the tests say why and return early.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provisioner::host::{Host, HostError};
use provisioner::ssh::{ensure_keypair, KeyPair, SshHost};
use sha2::{Digest, Sha256};

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on loopback, killed when dropped.
struct Sshd {
    child: Child,
    address: SocketAddrV4,
    key: KeyPair,
    directory: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // sshd forks one process per connection; end those first (they are this
        // test's own children's children), then the listener.
        for child in session_processes(self.child.id()) {
            let _ = Command::new("kill").arg(child.to_string()).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn connect(&self) -> SshHost {
        SshHost::connect_to("loopback", self.address, &self.key, Duration::from_secs(20)).expect("connect to sshd")
    }

    /// A fresh path inside the test's temporary directory.
    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }
}

/// The PIDs of the per-connection processes of the sshd with PID `listener`.
fn session_processes(listener: u32) -> Vec<u32> {
    let children = fs::read_to_string(format!("/proc/{listener}/task/{listener}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|pid| pid.parse().ok()).collect()
}

/// Starts sshd, or says why this host cannot and returns `None`.
fn start_sshd() -> Option<Sshd> {
    if fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX) != 0 {
        eprintln!("skipped: sshd needs root to log a user in");
        return None;
    }
    if !Path::new(SSHD).exists() {
        eprintln!("skipped: {SSHD} is missing (apt-get install -y openssh-server)");
        return None;
    }
    // Debian's sshd refuses to start without its privilege separation directory,
    // which normally only the packaged service creates.
    fs::create_dir_all("/run/sshd").expect("create /run/sshd");

    let directory = tempfile::tempdir().expect("temporary directory");
    let host_key = directory.path().join("ssh_host_ed25519_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .expect("run ssh-keygen");
    assert!(keygen.success(), "ssh-keygen for the host key");
    let key = ensure_keypair(&directory.path().join("state")).expect("lab key pair");
    let authorized_keys = directory.path().join("authorized_keys");
    fs::write(&authorized_keys, format!("{}\n", key.public_line)).expect("write authorized_keys");
    fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o600)).expect("chmod authorized_keys");

    // A free port: bind port 0, note the port and let it go for sshd.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        // An empty configuration keeps the host's own sshd_config out of the test.
        .args(["-f", "/dev/null", "-p", &port.to_string(), "-o", "ListenAddress=127.0.0.1", "-h"])
        .arg(&host_key)
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", authorized_keys.display()))
        .args(["-o", "PidFile=none", "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no"])
        // The temporary directory sits in world-writable /tmp, which StrictModes rejects.
        .args(["-o", "StrictModes=no", "-o", "LogLevel=ERROR"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sshd");
    Some(Sshd { child, address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), key, directory })
}

#[test]
fn run_reports_status_stdout_and_stderr() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    assert_eq!(host.name(), "loopback");

    let output = host.run("echo out; echo err >&2; exit 7").expect("run");
    assert_eq!((output.status, output.stdout.as_str(), output.stderr.as_str()), (7, "out\n", "err\n"));

    // The script runs under sh, quoted as one word whatever it contains.
    let output = host.run("printf '%s\\n' \"it's $((6 * 7))\"").expect("run quoting");
    assert!(output.success(), "{output:?}");
    assert_eq!(output.stdout, "it's 42\n");

    // A command reading stdin sees end of file instead of hanging.
    let output = host.run("cat; echo done").expect("run cat");
    assert_eq!(output.stdout, "done\n");
}

/// Waits, at most 20 s, until a command running on the test's sshd (on this host)
/// has created `marker`, its sign that it has started.
fn wait_until_started(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command that creates {} never started", marker.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stages that run at once on one node run their commands at once: a command that
/// waits for another's effect sees it, instead of holding the node's only session
/// until it gives up while the other waits behind it.
#[test]
fn commands_on_one_node_run_side_by_side() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    let (started, flag) = (sshd.path("started"), sshd.path("flag"));
    let waiter_script = format!(
        "touch {started}; timeout 20 sh -c 'until [ -e {flag} ]; do sleep 0.1; done'",
        started = started.display(),
        flag = flag.display()
    );
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| host.run(&waiter_script).expect("run the waiter"));
        wait_until_started(&started);
        let touched = host.run(&format!("touch {}", flag.display())).expect("run beside the waiter");
        assert!(touched.success(), "{touched:?}");
        let waited = waiter.join().expect("waiter thread");
        assert!(waited.success(), "the waiter never saw the other command's file: {waited:?}");
    });
}

/// A node that refuses another connection still serves the session it has: a second
/// command waits for it instead of failing. The listener is killed after the first
/// connection, so every new one is refused while the first session lives on.
#[test]
fn a_command_waits_for_a_busy_session_when_no_other_can_be_opened() {
    let Some(mut sshd) = start_sshd() else { return };
    let host = sshd.connect();
    sshd.child.kill().expect("stop the listener");
    sshd.child.wait().expect("reap the listener");
    let started = sshd.path("started");
    let first_script = format!("touch {}; sleep 1; echo first", started.display());
    std::thread::scope(|scope| {
        let first = scope.spawn(|| host.run(&first_script).expect("run on the only session"));
        wait_until_started(&started);
        let second = host.run("echo second").expect("the second command waits for the session");
        assert_eq!(second.stdout, "second\n");
        assert_eq!(first.join().expect("first thread").stdout, "first\n");
    });
}

#[test]
fn run_reads_large_stdout_and_stderr_without_deadlock() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    // 4 MiB is twice libssh2's default receive window (2 MiB): with stderr first, a
    // reader that let the window fill up while it waited on stdout would stall here.
    const SIZE: usize = 4 << 20;
    for script in [
        "yes e | head -c 4194304 >&2; yes o | head -c 4194304",
        "yes o | head -c 4194304; yes e | head -c 4194304 >&2",
        "(yes o | head -c 4194304) & (yes e | head -c 4194304 >&2) & wait",
    ] {
        let started = Instant::now();
        let output = host.run(script).expect("run large output");
        assert!(output.success(), "{script}: status {}", output.status);
        assert_eq!(output.stdout.len(), SIZE, "{script}: stdout");
        assert_eq!(output.stderr.len(), SIZE, "{script}: stderr");
        assert!(output.stdout.bytes().all(|byte| byte == b'o' || byte == b'\n'));
        assert!(output.stderr.bytes().all(|byte| byte == b'e' || byte == b'\n'));
        eprintln!("{script}: {:?}", started.elapsed());
    }
}

#[test]
fn put_file_writes_atomically_with_mode_and_owner() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    let path = sshd.path("new/dir/secret.pem");
    let remote = path.to_str().expect("utf-8 path");

    host.put_file(remote, 0o640, "nobody", b"first\n").expect("put_file");
    assert_eq!(fs::read(&path).expect("read back"), b"first\n");
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    let nobody = host.run("id -u nobody").expect("id").stdout.trim().parse::<u32>().expect("uid of nobody");
    assert_eq!(meta.uid(), nobody);

    // Replacing goes through a rename: the old inode is never truncated in place,
    // and no temporary file is left behind.
    let before = meta.ino();
    host.put_file(remote, 0o600, "root:root", b"second\n").expect("put_file again");
    let meta = fs::metadata(&path).expect("stat again");
    assert_ne!(meta.ino(), before, "written through a new file and renamed");
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (0, 0o600));
    assert_eq!(fs::read(&path).expect("read back"), b"second\n");
    let leftovers: Vec<_> = fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["secret.pem"]);
}

#[test]
fn copy_file_streams_a_large_file() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    const SIZE: usize = 50 << 20;
    // Incompressible-looking content, so the measure does not flatter the transport.
    let mut content = Vec::with_capacity(SIZE);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while content.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        content.extend_from_slice(&state.to_le_bytes());
    }
    let local = sshd.path("kubelet.local");
    fs::write(&local, &content).expect("write local file");
    let remote = sshd.path("usr/local/bin/kubelet");

    let started = Instant::now();
    host.copy_file(remote.to_str().expect("utf-8"), 0o755, "root", &local).expect("copy_file");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("copy_file: {} MB in {seconds:.2} s = {:.0} MB/s", SIZE >> 20, (SIZE >> 20) as f64 / seconds);

    let remote_digest = host.run(&format!("sha256sum {}", remote.display())).expect("sha256sum").stdout;
    assert_eq!(remote_digest.split_whitespace().next(), Some(hex::encode(Sha256::digest(&content)).as_str()));
    assert_eq!(fs::metadata(&remote).expect("stat").permissions().mode() & 0o7777, 0o755);
}

#[test]
fn read_file_returns_content_or_none() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();
    let path = sshd.path("binary");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    fs::write(&path, &bytes).expect("write");
    assert_eq!(host.read_file(path.to_str().expect("utf-8")).expect("read"), Some(bytes));
    assert_eq!(host.read_file(sshd.path("missing").to_str().expect("utf-8")).expect("read missing"), None);
}

#[test]
fn errors_name_the_node_and_what_failed() {
    let Some(sshd) = start_sshd() else { return };
    let host = sshd.connect();

    let directory = sshd.path("");
    let error = host.read_file(directory.to_str().expect("utf-8")).expect_err("a directory is not a file");
    let message = error.to_string();
    assert!(matches!(error, HostError::Read { .. }), "{message}");
    assert!(message.starts_with("loopback: cannot read ") && message.contains("Is a directory"), "{message}");

    let error = host.put_file("/proc/lab-test/file", 0o644, "root", b"x").expect_err("/proc takes no directories");
    let message = error.to_string();
    assert!(message.starts_with("loopback: cannot write /proc/lab-test/file: exit status"), "{message}");

    // A session whose server side went away: the command never ran.
    for session in session_processes(sshd.child.id()) {
        Command::new("kill").arg(session.to_string()).status().expect("kill session process");
    }
    let error = host.run("echo unreachable").expect_err("the session is gone");
    let message = error.to_string();
    assert!(message.starts_with("loopback: `echo unreachable` failed to run: "), "{message}");
}

#[test]
fn connect_gives_up_after_the_timeout_naming_node_and_address() {
    let Some(sshd) = start_sshd() else { return };
    // A port nobody listens on: connection refused on every attempt until the deadline.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, closed);
    let started = Instant::now();
    let error = SshHost::connect_to("master1", address, &sshd.key, Duration::from_secs(2)).err().expect("refused");
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(message.starts_with(&format!("master1: cannot connect to 127.0.0.1:{closed}: ")), "{message}");
    assert!(elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(6), "retried for {elapsed:?}");

    // The host key of a reachable node ends up in the lab's known_hosts.
    drop(sshd.connect());
    drop(sshd.connect());
    let known_hosts = fs::read_to_string(sshd.key.known_hosts()).expect("known_hosts");
    let port = sshd.address.port();
    assert!(known_hosts.starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 ")), "{known_hosts}");
    assert_eq!(known_hosts.lines().count(), 1, "one line per address, even after reconnecting");
}
