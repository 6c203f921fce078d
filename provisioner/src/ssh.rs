//! The SSH transport: `Host` on a real node, over libssh2 (the `ssh2` crate).
//!
//! Every lab has its own key pair in `STATE/ssh/`, made once and reused; the
//! machine backends put its public half into each node's `authorized_keys` for
//! root. A `SshHost` keeps the authenticated sessions it opened to its node, and runs
//! each command on a session no other command is using: libssh2 runs one call at a
//! time per session, and stages that run at once on one node (the controller
//! manager's, the scheduler's and HAProxy's on a master) would otherwise wait for
//! each other's commands, a wait for a unit's start included. A node gets as many
//! sessions as commands ever ran on it at once, a handful.
//!
//! Only connection set-up is retried (a node that is still booting refuses or
//! drops connections); a command, once started, runs exactly once.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ssh2::{BlockDirections, Channel, Session};

use crate::host::{shell_quote, Host, HostError, Output};

/// The user every lab connection logs in as.
const USER: &str = "root";

/// The port sshd listens on in every node.
const SSH_PORT: u16 = 22;

/// How long one TCP connection attempt may take before it counts as a timeout
/// and is retried; a booting node on the lab's bridge answers far faster.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between two connection attempts while a node boots.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The chunk size for streaming local files to a node: large enough that the
/// per-write overhead of libssh2 disappears next to the data.
const COPY_BUFFER: usize = 1 << 20;

/// The exit status `read_file`'s script uses to say the file does not exist, chosen
/// outside what `cat` and the shell return on their own.
const MISSING_STATUS: i32 = 66;

/// Why the lab's key pair could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot prepare {path}: {message}")]
    Io { path: String, message: String },
    #[error("ssh-keygen cannot make {path}: {message}")]
    Keygen { path: String, message: String },
}

/// The lab's own SSH key pair (ed25519, no passphrase), kept in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The private key, mode 0600.
    pub private: PathBuf,
    pub public: PathBuf,
    /// The public key as one `authorized_keys` line (`ssh-ed25519 AAAA... comment`).
    pub public_line: String,
}

impl KeyPair {
    /// The lab's `known_hosts`, beside the key pair, where every node's host key is
    /// recorded on first contact (plain OpenSSH can use it with `UserKnownHostsFile`).
    pub fn known_hosts(&self) -> PathBuf {
        self.private.with_file_name("known_hosts")
    }
}

/// Makes the lab's key pair in `STATE/ssh/id_ed25519{,.pub}` unless it is already
/// there, and returns it. The directory is 0700 and the private key 0600.
pub fn ensure_keypair(state_dir: &Path) -> Result<KeyPair, SshError> {
    let state = crate::state_dir::StateDir::new(state_dir);
    let directory = state.ssh_dir();
    let io_error =
        |path: &Path, error: io::Error| SshError::Io { path: path.display().to_string(), message: error.to_string() };
    fs::create_dir_all(&directory).map_err(|error| io_error(&directory, error))?;
    fs::set_permissions(&directory, fs::Permissions::from_mode(0o700)).map_err(|error| io_error(&directory, error))?;

    let private = state.ssh_private_key();
    let public = state.ssh_public_key();
    if !private.exists() || !public.exists() {
        // ssh-keygen refuses to overwrite silently, and a half-made pair (one file
        // without the other) is useless: start from nothing.
        for stale in [&private, &public] {
            if stale.exists() {
                fs::remove_file(stale).map_err(|error| io_error(stale, error))?;
            }
        }
        let keygen_error = |message: String| SshError::Keygen { path: private.display().to_string(), message };
        let output = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "k8s-lab", "-f"])
            .arg(&private)
            .output()
            .map_err(|error| keygen_error(format!("{error} (install openssh-client)")))?;
        if !output.status.success() {
            return Err(keygen_error(String::from_utf8_lossy(&output.stderr).trim().to_string()));
        }
    }
    // The key may come from an older run or a copied state directory: enforce the
    // mode every time, since OpenSSH refuses a private key others can read.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).map_err(|error| io_error(&private, error))?;
    let public_line = fs::read_to_string(&public).map_err(|error| io_error(&public, error))?.trim().to_string();
    Ok(KeyPair { private, public, public_line })
}

/// One node reached over SSH as root with the lab's key.
pub struct SshHost {
    node: String,
    address: SocketAddrV4,
    key: KeyPair,
    /// The key the node proved itself with on the first session; every later one
    /// must show the same.
    host_key: Vec<u8>,
    sessions: Mutex<Sessions>,
    /// Signalled whenever a session is given back or dropped.
    returned: Condvar,
}

/// A node's authenticated sessions.
struct Sessions {
    /// The sessions no command is using now.
    idle: Vec<Session>,
    /// How many there are, idle or running a command.
    open: usize,
}

impl SshHost {
    /// Connects to `address` port 22 as root, retrying while the node refuses or
    /// does not answer yet, for at most `timeout`.
    pub fn connect(node: &str, address: Ipv4Addr, key: &KeyPair, timeout: Duration) -> Result<SshHost, HostError> {
        SshHost::connect_to(node, SocketAddrV4::new(address, SSH_PORT), key, timeout)
    }

    /// Like `connect`, on any port (tests run sshd on a free loopback port).
    pub fn connect_to(
        node: &str,
        address: SocketAddrV4,
        key: &KeyPair,
        timeout: Duration,
    ) -> Result<SshHost, HostError> {
        let deadline = Instant::now() + timeout;
        let connect_error =
            |message: String| HostError::Connect { node: node.to_string(), address: address.to_string(), message };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match open_session(address, deadline) {
                Ok(session) => {
                    let host_key = record_host_key(&key.known_hosts(), address, &session).map_err(connect_error)?;
                    authenticate(&session, key).map_err(connect_error)?;
                    // The handshake had a deadline; commands do not, since a stage's
                    // command may legitimately run for minutes (the executor bounds
                    // checks itself).
                    session.set_timeout(0);
                    return Ok(SshHost {
                        node: node.to_string(),
                        address,
                        key: key.clone(),
                        host_key,
                        sessions: Mutex::new(Sessions { idle: vec![session], open: 1 }),
                        returned: Condvar::new(),
                    });
                }
                Err(error) if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(node, %address, attempts, %error, "node not reachable yet, retrying");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(error) => {
                    return Err(connect_error(format!("{error} (gave up after {attempts} attempts in {timeout:?})")))
                }
            }
        }
    }

    /// Runs `script` on a session of its own and returns its exit status and raw
    /// output. A session that failed is dropped, not reused.
    fn exec(&self, script: &str, stdin: Option<&mut dyn Read>) -> Result<RawOutput, ExecError> {
        let session = self.take_session()?;
        let outcome = SshHost::exec_on(&session, script, stdin);
        let mut sessions = self.lock_sessions();
        match outcome {
            Ok(_) => sessions.idle.push(session),
            Err(_) => sessions.open -= 1,
        }
        self.returned.notify_all();
        outcome
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle session, or a new one when every session is running a command. A node
    /// that refuses another connection (sshd's limits, a passing hiccup) still serves
    /// the sessions it has: then the command waits for one of them.
    fn take_session(&self) -> Result<Session, ExecError> {
        let mut sessions = self.lock_sessions();
        if let Some(session) = sessions.idle.pop() {
            return Ok(session);
        }
        sessions.open += 1;
        drop(sessions);
        let error = match self.open_another() {
            Ok(session) => return Ok(session),
            Err(error) => error,
        };
        let mut sessions = self.lock_sessions();
        sessions.open -= 1;
        loop {
            if let Some(session) = sessions.idle.pop() {
                return Ok(session);
            }
            if sessions.open == 0 {
                return Err(error);
            }
            sessions = self.returned.wait(sessions).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// A new authenticated session that shows the first one's host key.
    fn open_another(&self) -> Result<Session, ExecError> {
        let session = open_session(self.address, Instant::now() + ATTEMPT_TIMEOUT).map_err(ExecError::Connect)?;
        let (host_key, _) = session.host_key().ok_or_else(|| ExecError::Connect("the node sent no host key".into()))?;
        if host_key != self.host_key.as_slice() {
            return Err(ExecError::Connect("the node's host key changed since its first session".into()));
        }
        authenticate(&session, &self.key).map_err(ExecError::Connect)?;
        session.set_timeout(0);
        Ok(session)
    }

    /// Runs `script` on `session` and returns its exit status and raw output.
    fn exec_on(session: &Session, script: &str, stdin: Option<&mut dyn Read>) -> Result<RawOutput, ExecError> {
        let mut channel = session.channel_session().map_err(ExecError::Ssh)?;
        // exec hands the string to the login shell of root; wrapping the script in
        // `sh -c` makes it run under POSIX sh whatever that shell is.
        channel.exec(&format!("sh -c {}", shell_quote(script))).map_err(ExecError::Ssh)?;
        let mut stdin_error = None;
        if let Some(input) = stdin {
            if let Err(error) = copy_stream(input, &mut channel) {
                // The remote side may have stopped reading because the script failed;
                // its stderr says why, so collect the outputs before reporting.
                stdin_error = Some(error);
            }
        }
        channel.send_eof().map_err(ExecError::Ssh)?;

        let (stdout, stderr) = read_both_streams(session, &mut channel).map_err(ExecError::Io)?;
        channel.wait_close().map_err(ExecError::Ssh)?;
        let status = channel.exit_status().map_err(ExecError::Ssh)?;
        if let Some(error) = stdin_error {
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(ExecError::Stdin(format!("{error}; exit status {status}: {}", stderr.trim())));
        }
        Ok(RawOutput { status, stdout, stderr })
    }

    /// Writes `input` to `path` through a temporary file beside it, then sets mode
    /// and owner and renames it into place, so readers never see a partial file.
    fn write_atomically(&self, path: &str, mode: u32, owner: &str, input: &mut dyn Read) -> Result<(), HostError> {
        let put_error = |message: String| HostError::Put { node: self.node.clone(), path: path.to_string(), message };
        let temporary = format!("{path}.lab-tmp");
        let directory = Path::new(path).parent().map(|parent| parent.display().to_string()).unwrap_or_default();
        let script = format!(
            "set -e\ntrap 'rm -f {temporary}' EXIT\nmkdir -p {directory}\ncat > {temporary}\n\
             chmod {mode:o} {temporary}\nchown {owner} {temporary}\nmv -f {temporary} {path}\n",
            temporary = shell_quote(&temporary),
            directory = shell_quote(if directory.is_empty() { "/" } else { &directory }),
            owner = shell_quote(owner),
            path = shell_quote(path),
        );
        let output = self.exec(&script, Some(input)).map_err(|error| put_error(error.to_string()))?;
        if output.status != 0 {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(put_error(format!("exit status {}: {}", output.status, stderr.trim())));
        }
        Ok(())
    }
}

/// Connects with `ssh -i KEY root@ADDRESS` semantics until it works or `timeout`
/// passes: the machine backends call this after booting a node.
pub fn wait_until_reachable(
    node: &str,
    address: Ipv4Addr,
    key: &KeyPair,
    timeout: Duration,
) -> Result<SshHost, HostError> {
    SshHost::connect(node, address, key, timeout)
}

impl Host for SshHost {
    fn name(&self) -> &str {
        &self.node
    }

    fn run(&self, script: &str) -> Result<Output, HostError> {
        let output = self.exec(script, None).map_err(|error| HostError::Run {
            node: self.node.clone(),
            command: script.to_string(),
            message: error.to_string(),
        })?;
        Ok(Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn put_file(&self, path: &str, mode: u32, owner: &str, content: &[u8]) -> Result<(), HostError> {
        self.write_atomically(path, mode, owner, &mut io::Cursor::new(content))
    }

    fn copy_file(&self, path: &str, mode: u32, owner: &str, local: &Path) -> Result<(), HostError> {
        let mut file = fs::File::open(local)
            .map_err(|error| HostError::Local { path: local.display().to_string(), message: error.to_string() })?;
        self.write_atomically(path, mode, owner, &mut file)
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, HostError> {
        let read_error = |message: String| HostError::Read { node: self.node.clone(), path: path.to_string(), message };
        let quoted = shell_quote(path);
        let script = format!("if [ ! -e {quoted} ]; then exit {MISSING_STATUS}; fi\nexec cat {quoted}\n");
        let output = self.exec(&script, None).map_err(|error| read_error(error.to_string()))?;
        match output.status {
            0 => Ok(Some(output.stdout)),
            MISSING_STATUS => Ok(None),
            status => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                Err(read_error(format!("exit status {status}: {}", stderr.trim())))
            }
        }
    }
}

/// A finished command's status and its output as bytes (files need not be text).
struct RawOutput {
    status: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Why a command could not be run to its end over the session.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("another session: {0}")]
    Connect(String),
    #[error("ssh: {0}")]
    Ssh(ssh2::Error),
    #[error("reading output: {0}")]
    Io(io::Error),
    #[error("sending input: {0}")]
    Stdin(String),
}

/// One TCP connection and SSH handshake, bounded by `deadline`.
fn open_session(address: SocketAddrV4, deadline: Instant) -> Result<Session, String> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let attempt = remaining.min(ATTEMPT_TIMEOUT).max(Duration::from_millis(100));
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(address), attempt).map_err(|error| error.to_string())?;
    stream.set_nodelay(true).map_err(|error| error.to_string())?;
    let mut session = Session::new().map_err(|error| error.to_string())?;
    session.set_tcp_stream(stream);
    // A booting sshd may accept the connection and then stall or drop it before its
    // host keys exist; the handshake gets the same bound as the connection.
    session.set_timeout(u32::try_from(attempt.as_millis()).unwrap_or(u32::MAX));
    session.handshake().map_err(|error| format!("ssh handshake: {error}"))?;
    Ok(session)
}

fn authenticate(session: &Session, key: &KeyPair) -> Result<(), String> {
    session
        .userauth_pubkey_file(USER, Some(&key.public), &key.private, None)
        .map_err(|error| format!("public key authentication as {USER} with {}: {error}", key.private.display()))?;
    if !session.authenticated() {
        return Err(format!("{USER} was not authenticated with {}", key.private.display()));
    }
    Ok(())
}

/// Serialises updates of the lab's `known_hosts`: nodes connect in parallel.
static KNOWN_HOSTS: Mutex<()> = Mutex::new(());

/// Records the node's host key in the lab's `known_hosts`, replacing any earlier
/// key for the same address, and returns it (the node's later sessions must show it).
///
/// Any host key is accepted. The trade-off: the lab's nodes live only on its own
/// bridge, inside network namespaces the lab created on this host, so nobody else
/// can sit between the host and a node; and a node re-created by `lab destroy` and
/// `lab up` legitimately presents a new key. Recording the key still lets plain
/// OpenSSH (`lab ssh`, scripts) check later connections against it.
fn record_host_key(known_hosts: &Path, address: SocketAddrV4, session: &Session) -> Result<Vec<u8>, String> {
    let (blob, _) = session.host_key().ok_or("the node sent no host key")?;
    let algorithm = key_algorithm(blob).ok_or("the node's host key has no algorithm name")?;
    let host = if address.port() == SSH_PORT {
        address.ip().to_string()
    } else {
        format!("[{}]:{}", address.ip(), address.port())
    };
    let line = format!("{host} {algorithm} {}", base64::engine::general_purpose::STANDARD.encode(blob));

    let _guard = KNOWN_HOSTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let existing = match fs::read_to_string(known_hosts) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("cannot read {}: {error}", known_hosts.display())),
    };
    if existing.lines().any(|known| known == line) {
        return Ok(blob.to_vec());
    }
    let mut text: String = existing
        .lines()
        .filter(|known| known.split_whitespace().next() != Some(host.as_str()))
        .map(|known| format!("{known}\n"))
        .collect();
    text.push_str(&line);
    text.push('\n');
    let temporary = known_hosts.with_extension("lab-tmp");
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(text.as_bytes())?;
        fs::rename(&temporary, known_hosts)
    };
    write().map_err(|error| format!("cannot write {}: {error}", known_hosts.display()))?;
    Ok(blob.to_vec())
}

/// The algorithm name at the start of an SSH public key blob (a length-prefixed
/// string, e.g. `ssh-ed25519`).
fn key_algorithm(blob: &[u8]) -> Option<&str> {
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + length)?).ok()
}

/// Reads stdout and stderr of a command to their ends, whichever comes first.
///
/// Both streams share one receive window. Reading one of them to its end before
/// the other deadlocks as soon as the command writes more than a window's worth
/// (2 MiB) to the other one first: libssh2 stops opening the window, sshd stops
/// sending, and the command blocks on a full pipe. So the session goes
/// non-blocking and both streams are drained in turn, waiting on the socket only
/// when neither had anything.
fn read_both_streams(session: &Session, channel: &mut Channel) -> io::Result<(Vec<u8>, Vec<u8>)> {
    session.set_blocking(false);
    let result = drain_streams(session, channel);
    session.set_blocking(true);
    result
}

fn drain_streams(session: &Session, channel: &mut Channel) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut stdout_open, mut stderr_open) = (true, true);
    while stdout_open || stderr_open {
        let mut progressed = false;
        if stdout_open {
            match read_available(channel, &mut buffer, &mut stdout)? {
                Some(0) => stdout_open = false,
                Some(_) => progressed = true,
                None => {}
            }
        }
        if stderr_open {
            match read_available(&mut channel.stderr(), &mut buffer, &mut stderr)? {
                Some(0) => stderr_open = false,
                Some(_) => progressed = true,
                None => {}
            }
        }
        if !progressed && (stdout_open || stderr_open) {
            wait_for_socket(session)?;
        }
    }
    Ok((stdout, stderr))
}

/// One non-blocking read into `output`: `Some(0)` at the end of the stream, `None`
/// when nothing has arrived yet.
fn read_available(stream: &mut dyn Read, buffer: &mut [u8], output: &mut Vec<u8>) -> io::Result<Option<usize>> {
    match stream.read(buffer) {
        Ok(read) => {
            output.extend_from_slice(&buffer[..read]);
            Ok(Some(read))
        }
        Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Sleeps until the session's socket is ready in the direction libssh2 waits for.
fn wait_for_socket(session: &Session) -> io::Result<()> {
    // The timeout only bounds one wait; the loop around it waits as long as the
    // command runs.
    let (events, timeout_ms) = match session.block_directions() {
        BlockDirections::Inbound => (libc::POLLIN, 1000),
        BlockDirections::Outbound => (libc::POLLOUT, 1000),
        BlockDirections::Both => (libc::POLLIN | libc::POLLOUT, 1000),
        // libssh2 did not block on the socket (it found only the other stream's
        // data): check again shortly rather than spin.
        BlockDirections::None => (libc::POLLIN, 10),
    };
    let mut descriptor = libc::pollfd { fd: session.as_raw_fd(), events, revents: 0 };
    // SAFETY: `descriptor` is one valid pollfd that lives across the call.
    let ready = unsafe { libc::poll(&mut descriptor, 1, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

/// Streams `input` into the channel's stdin in large chunks.
///
/// This happens in blocking mode before any output is read, which is safe for the
/// scripts that take input here (`cat > FILE`): they print nothing unless they
/// fail, far less than the receive window.
fn copy_stream(input: &mut dyn Read, channel: &mut Channel) -> io::Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        channel.write_all(&buffer[..read])?;
        total += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_algorithm_reads_the_length_prefixed_name() {
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        assert_eq!(key_algorithm(&blob), Some("ssh-ed25519"));
        assert_eq!(key_algorithm(&[0, 0, 0, 50, b'x']), None);
    }

    #[test]
    fn ensure_keypair_makes_a_private_key_once() {
        let state = tempfile::tempdir().expect("temporary directory");
        let first = ensure_keypair(state.path()).expect("key pair");
        assert!(first.public_line.starts_with("ssh-ed25519 "), "{}", first.public_line);
        let mode = fs::metadata(&first.private).expect("private key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let directory_mode = fs::metadata(state.path().join("ssh")).expect("ssh dir").permissions().mode() & 0o777;
        assert_eq!(directory_mode, 0o700);
        let second = ensure_keypair(state.path()).expect("key pair again");
        assert_eq!(first, second, "the key pair is reused");
    }
}
