//! The verbs that read the plan: `plan` and `render` of the topology file's lab, and
//! `kubectl` and `logs` of the lab this state directory holds. Each prints for a
//! person or, with `--json`, for a script.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use provisioner::plan::{self, Content, Plan};
use provisioner::topology::Role;

use crate::{Exit, Failure, Paths};

pub fn plan(paths: &Paths, json: bool) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    let plan = lab.plan()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan).context("serialize the plan")?);
        return Ok(());
    }
    print!("{}", summary(plan));
    Ok(())
}

/// The readable form of a plan: what a learner wants to see before `lab up`.
fn summary(plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let network = &plan.network;
    let _ = writeln!(out, "lab {}", plan.lab);
    let _ = writeln!(out, "\nnetwork");
    let _ = writeln!(out, "  bridge        {} (host address {})", network.bridge, network.gateway);
    let _ = writeln!(out, "  api server    {} (VIP {})", network.api_server_url, network.vip);
    let _ = writeln!(out, "  pod range     {}", network.pod_cidr);
    let _ = writeln!(out, "  service range {}", network.service_cidr);
    let _ = writeln!(out, "  cluster DNS   {} ({})", network.cluster_dns_ip, network.cluster_domain);
    for route in &network.host_routes {
        if route.via.is_empty() {
            let _ = writeln!(out, "  host route    {} on the bridge", route.destination);
        } else {
            let hops = route.via.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let _ = writeln!(out, "  host route    {} via {hops}", route.destination);
        }
    }
    let _ = writeln!(out, "\nnodes");
    for node in &plan.nodes {
        let roles = node.roles.iter().map(Role::to_string).collect::<Vec<_>>().join(",");
        let mut extra = String::new();
        if !node.aliases.is_empty() {
            let _ = write!(extra, "  aliases {}", node.aliases.join(","));
        }
        if let Some(pods) = node.pod_cidr {
            let _ = write!(extra, "  pods {pods}");
        }
        let _ = writeln!(out, "  {:<10} {:<15} {:<16}{extra}", node.name, node.address, roles);
    }
    let _ = writeln!(out, "\ncertificates ({}; `lab plan --json` lists subjects and SANs)", plan.certificates.len());
    for spec in &plan.certificates {
        let _ = writeln!(out, "  {:<28} CN={}", spec.name, spec.common_name);
    }
    let _ = writeln!(out, "\nstages (in handbook order; `lab up` runs each once the stages it needs passed)");
    for (index, stage) in plan.stages.iter().enumerate() {
        let count = |f: fn(&plan::NodeActions) -> usize| stage.nodes.iter().map(f).sum::<usize>();
        let nodes = stage.nodes.iter().map(|actions| actions.node.as_str()).collect::<Vec<_>>();
        let _ = writeln!(
            out,
            "  {:>2}. {:<24} {:>3} files {:>2} units {:>2} commands {:>2} checks  on {}",
            index + 1,
            stage.stage.name(),
            count(|actions| actions.files.len()) + stage.local_files.len(),
            count(|actions| actions.units.len()),
            count(|actions| actions.commands.len()),
            count(|actions| actions.checks.len()),
            match (nodes.is_empty(), stage.local_files.is_empty()) {
                (false, _) => nodes.join(","),
                (true, false) => "the host".to_string(),
                (true, true) => "no node".to_string(),
            },
        );
        let _ = writeln!(out, "      {}", stage.chapter);
        // `lab up` starts a stage once these passed, so stages that do not need each
        // other run at once.
        let needs: Vec<&str> = stage.needs.iter().map(|need| need.name()).collect();
        if !needs.is_empty() {
            let _ = writeln!(out, "      runs once {} passed", needs.join(", "));
        }
    }
    out
}

pub fn render(paths: &Paths, dir: &Path) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    let plan = lab.plan()?;
    let written = provisioner::render::render(plan, dir)?;
    let secrets = plan
        .stages
        .iter()
        .flat_map(|stage| &stage.nodes)
        .flat_map(|actions| &actions.files)
        .filter(|file| matches!(file.content, Content::Secret(_)))
        .count();
    println!(
        "wrote {written} files for {} nodes under {} ({secrets} of them secret, written as `{}`)",
        plan.nodes.len(),
        dir.display(),
        provisioner::render::SECRET_LEFT_OUT.trim_end()
    );
    Ok(())
}

/// `lab kubectl ARGS`: the lab's own kubectl build with the admin kubeconfig. Once
/// kubectl ran, `lab` exits with its code, as kubectl itself would; kubectl has said
/// what went wrong, so `lab` adds nothing.
pub fn kubectl(paths: &Paths, args: &[String]) -> Result<ExitCode, Failure> {
    let lab = paths.existing_lab()?;
    let artifacts = lab.artifacts();
    let kubectl = artifacts.binary("kubectl");
    let kubeconfig = lab.state().admin_kubeconfig();
    for (what, path) in [("kubectl", kubectl), ("admin kubeconfig", kubeconfig.as_path())] {
        if !path.exists() {
            return Err(Failure {
                exit: Exit::Failure,
                error: anyhow::anyhow!("no {what} at {}: run `cargo lab up` first", path.display()),
            });
        }
    }
    let status = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", kubectl.display()))?;
    Ok(exit_code_of(status))
}

/// `lab logs [NODE] [--unit U]`: the journals of the units the plan puts on each node.
pub fn logs(paths: &Paths, node: Option<&str>, unit: Option<&str>, lines: u32) -> Result<(), Failure> {
    let lab = paths.existing_lab()?;
    let key = lab.key_pair()?;
    for (name, address, mut units) in lab.units_by_node(node)? {
        if let Some(wanted) = unit {
            units.retain(|name| name == wanted || name.trim_end_matches(".service") == wanted);
        }
        if units.is_empty() {
            continue;
        }
        let host = provisioner::ssh::SshHost::connect(&name, address, &key, std::time::Duration::from_secs(5))?;
        let unit_flags: String = units.iter().map(|name| format!(" --unit {name}")).collect();
        let output = provisioner::host::Host::run(
            &host,
            &format!("journalctl --no-pager --output short-precise --lines {lines}{unit_flags}"),
        )?;
        println!("==> {name} ({})", units.join(", "));
        print!("{}{}", output.stdout, output.stderr);
    }
    Ok(())
}

/// A child's exit code; killed by a signal, 128 plus its number, as a shell reports it.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status.code().or_else(|| status.signal().map(|signal| 128 + signal));
    ExitCode::from(code.and_then(|code| u8::try_from(code).ok()).unwrap_or(Exit::Failure as u8))
}
