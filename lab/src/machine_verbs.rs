//! The machine verbs: `lab down`, `lab destroy`, `lab status` and `lab ssh`. They
//! work on the lab this state directory holds (`Lab::existing`).

use anyhow::{anyhow, Context as _};

use crate::terminal;
use crate::{Failure, Paths};

/// `lab down`: stops every machine, keeping disks, state, bridge and routes.
pub fn down(paths: &Paths, json: bool) -> Result<(), Failure> {
    Ok(paths.existing_lab()?.down(terminal::reporter(json).as_ref())?)
}

/// `lab destroy`: removes machines, disks, bridge, routes and state; caches stay.
/// With nothing recorded (an `up` that failed before its first record, or no lab at
/// all), lab.toml names the bridge and machines such a run may have made.
pub fn destroy(paths: &Paths, json: bool) -> Result<(), Failure> {
    Ok(paths.existing_lab()?.destroy(terminal::reporter(json).as_ref())?)
}

/// `lab status [--json]`: every node's state, the lab's addresses and files, and what
/// the running lab answers (API, virtual IP, etcd leader, converged stages). The JSON
/// form is a public contract (`provisioner::lab::LabStatus`). No lab in the state
/// directory is an error (exit code 1).
pub fn status(paths: &Paths, json: bool) -> Result<(), Failure> {
    let status = paths.existing_lab()?.status()?;
    if json {
        return print_stdout(&serde_json::to_string_pretty(&status).context("serialize the status")?);
    }
    print_stdout(&status.to_text())
}

/// Prints `text` and a newline; a reader that went away (`lab status --json | head`)
/// is not an error.
fn print_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::from(anyhow!("cannot write to standard output: {error}")))
        }
        _ => Ok(()),
    }
}

/// `lab ssh NODE [-- COMMAND...]`: becomes the system's `ssh` to the node as root
/// with the lab's key. Without a command it is an interactive login; with one,
/// stdin is passed through and `lab` exits with the command's status (ssh's own).
/// On success this function does not return: the process is replaced by ssh.
pub fn ssh(paths: &Paths, node: &str, command: &[String]) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt as _;

    let lab = paths.existing_lab()?;
    let (address, key) = lab.ssh_target(node)?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-i")
        .arg(&key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o"])
        .arg(format!("UserKnownHostsFile={}", lab.state().known_hosts().display()))
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
        // ssh reads options after the destination too, unless `--` came first: with
        // it, a command such as `ls -l` reaches the node intact. ssh joins the
        // command's words with spaces for the node's shell, as `ssh HOST CMD...` does.
        .arg("--")
        .arg(format!("root@{address}"))
        .args(command);
    let error = ssh.exec();
    Err(Failure::from(anyhow!("cannot run ssh: {error} (apt-get install openssh-client)")))
}
