//! The machine verbs: `lab down`, `lab destroy`, `lab status`, `lab ssh` and
//! `lab kubeconfig`. They work on the lab this state directory holds
//! (`Lab::existing`); without one they fail with "no lab".

use anyhow::{anyhow, Context as _};
use provisioner::lab::Event;

use crate::{kubeconfig, terminal};
use crate::{Exit, Failure, Paths};

/// `lab down [--node NODE]...`: stops every machine (or only those named), keeping
/// disks, state, bridge and routes.
pub fn down(paths: &Paths, nodes: &[String], json: bool) -> Result<(), Failure> {
    Ok(paths.existing_lab()?.down(nodes, terminal::reporter(json).as_ref())?)
}

/// `lab destroy`: removes machines, disks, bridge, routes and state; caches stay.
/// Then it takes the lab's entries out of the user's kubeconfig, which `lab
/// kubeconfig --merge` put there; a kubeconfig it cannot change is only a warning,
/// since the lab itself is gone.
pub fn destroy(paths: &Paths, json: bool) -> Result<(), Failure> {
    let lab = paths.existing_lab()?;
    let reporter = terminal::reporter(json);
    lab.destroy(reporter.as_ref())?;
    let Some(file) = &paths.user_kubeconfig else { return Ok(()) };
    let name = kubeconfig::entry_name(&lab.topology().name);
    match kubeconfig::remove_from(file, &name) {
        Ok(true) => reporter
            .report(Event::Progress(&format!("cluster, user and context {name} removed from {}", file.display()))),
        Ok(false) => {}
        Err(error) => reporter.report(Event::Warning(&format!("cannot remove {name} from {error:#}"))),
    }
    Ok(())
}

/// `lab kubeconfig [--merge] [--json]`: the admin kubeconfig's path on stdout, for
/// `export KUBECONFIG=$(lab kubeconfig)`; with `--merge`, the lab is also added to the
/// user's kubeconfig (`crate::kubeconfig`), which stderr reports.
pub fn kubeconfig(paths: &Paths, merge: bool, json: bool) -> Result<(), Failure> {
    let lab = paths.existing_lab()?;
    let admin = lab.state().admin_kubeconfig();
    if !admin.exists() {
        return Err(Failure {
            exit: Exit::Failure,
            error: anyhow!(
                "lab {} has no admin kubeconfig at {} yet: `lab up` writes it",
                lab.topology().name,
                admin.display()
            ),
        });
    }
    let mut merged = serde_json::Value::Null;
    if merge {
        let file = paths.user_kubeconfig.as_ref().ok_or_else(|| {
            anyhow!("--merge: neither KUBECONFIG nor HOME is set, so there is no kubeconfig of yours to merge into")
        })?;
        let name = kubeconfig::entry_name(&lab.topology().name);
        let outcome = kubeconfig::merge_into(file, &admin, &name)
            .with_context(|| format!("cannot merge lab {} into {}", lab.topology().name, file.display()))?;
        if !terminal::quiet() && !json {
            let current = if outcome.current_context_set { " (now the current context)" } else { "" };
            let what = if outcome.text.is_some() { "merged into" } else { "already in" };
            eprintln!("context {name}{current}: cluster, user and context {what} {}", file.display());
        }
        merged = serde_json::json!({
            "file": file,
            "context": name,
            "changed": outcome.text.is_some(),
            "current_context_set": outcome.current_context_set,
        });
    }
    if json {
        let output = serde_json::json!({ "lab": lab.topology().name, "kubeconfig": admin, "merged": merged });
        return print_stdout(&serde_json::to_string_pretty(&output).context("serialize the kubeconfig's path")?);
    }
    print_stdout(&admin.display().to_string())
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

/// `lab list`: every lab on the host, from the bridges the labs tag and the state
/// directory that `--lab-dir`/`LAB_DIR` names (the default one).
pub fn list(paths: &Paths, json: bool) -> Result<(), Failure> {
    let listing = provisioner::lab::labs_on_host(std::slice::from_ref(&paths.state_dir), &paths.cache_dir, &|| {
        crate::surroundings() as Box<dyn provisioner::lab::Surroundings>
    });
    if json {
        return print_stdout(&serde_json::to_string_pretty(&listing).context("serialize the list of labs")?);
    }
    print_stdout(&listing_text(&listing))
}

/// The labs as a table, then the stray bridges with what to do about them.
fn listing_text(listing: &provisioner::lab::Listing) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if listing.labs.is_empty() {
        text.push_str("no lab on this host (`lab up` makes one)\n");
    } else {
        let _ = writeln!(text, "{:<10} {:<8} {:<24} {:<28} state directory", "lab", "backend", "nodes", "API");
        for lab in &listing.labs {
            let backend = serde_json::to_value(lab.backend).ok().and_then(|value| value.as_str().map(str::to_owned));
            let _ = writeln!(
                text,
                "{:<10} {:<8} {:<24} {:<28} {}",
                lab.lab,
                backend.unwrap_or_default(),
                lab.node_summary(),
                lab.api_server_url,
                lab.state_dir.display()
            );
        }
    }
    for stray in &listing.strays {
        let owner = stray.state_dir.as_ref().map_or("a state directory".to_string(), |dir| dir.display().to_string());
        let _ = writeln!(
            text,
            "stray bridge {}: tagged by {owner}, which holds no lab (`ip link del {}` removes it)",
            stray.bridge, stray.bridge
        );
    }
    text.trim_end().to_string()
}

/// Prints `text` and a newline; a reader that went away (`lab status --json | head`)
/// is not an error.
pub(crate) fn print_stdout(text: &str) -> Result<(), Failure> {
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
