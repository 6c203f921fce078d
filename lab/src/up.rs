//! `lab up`: preflight, artifacts, machines, then every stage of the plan in
//! handbook order, with live progress and a closing summary.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use provisioner::executor::{ExecError, Executor, Progress, StageReport};
use provisioner::host::Host;
use provisioner::plan::{Plan, Stage};
use provisioner::readiness;
use provisioner::ssh::{self, SshHost};

use crate::{doctor, machine_verbs, verbs, Exit, Failure, Paths};

/// Where `--until` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Machines,
    Stage(Stage),
    Everything,
}

impl Until {
    pub fn parse(text: Option<&str>) -> Result<Until, Failure> {
        match text {
            None => Ok(Until::Everything),
            Some("machines") => Ok(Until::Machines),
            Some(name) => Stage::from_name(name).map(Until::Stage).ok_or_else(|| Failure {
                exit: Exit::Usage,
                error: anyhow::anyhow!(
                    "--until {name}: no such stage; use `machines` or one of: {}",
                    Stage::ALL.iter().map(|stage| stage.name()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
}

pub fn up(paths: &Paths, until: Until) -> Result<(), Failure> {
    let started = Instant::now();
    let topology = verbs::load_topology(paths)?.topology;
    doctor::preflight(paths, &topology)?;
    let time_scale = machine_verbs::up_machines(paths)?;
    if until == Until::Machines {
        println!("machines are up ({:.1} s); `lab up` continues with the stages", started.elapsed().as_secs_f64());
        return Ok(());
    }

    let progress_line = |text: &str| eprintln!("[{:>6.1}s] {text}", started.elapsed().as_secs_f64());
    // The lab-dns image is built from this workspace's dns/ crate.
    let workspace_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent");
    let artifacts = provisioner::artifacts::build::ensure(&topology, &paths.cache_dir, workspace_dir, &progress_line)
        .context("building the lab's artifacts")?;
    let plan = verbs::make_plan_with(paths, &topology, &artifacts)?;

    let key = ssh::ensure_keypair(&paths.state_dir).context("the lab's SSH key")?;
    let hosts = connect_all(&plan, &key)?;
    let executor = Executor::new(hosts.iter().map(|host| host as &dyn Host)).with_timeout_scale(time_scale);

    // The stages this run goes through.
    let stages = match until {
        Until::Stage(last) => {
            let count = plan.stages.iter().position(|stage| stage.stage == last).map_or(plan.stages.len(), |i| i + 1);
            &plan.stages[..count]
        }
        _ => &plan.stages[..],
    };

    // One query per node says which stages are converged where. A lab that matches
    // its whole plan only has its checks run, all nodes at once.
    let survey = executor.survey(stages).map_err(|error| Failure { exit: Exit::Failure, error: error.into() })?;
    if survey.covers(stages) {
        progress_line("every node matches the plan: running the checks");
        let display = StageProgress::checks();
        // Nothing changes on a converged lab, so the host-side proof runs alongside
        // the nodes' checks instead of after them.
        let (checked, ready) = std::thread::scope(|scope| {
            let ready = (until == Until::Everything).then(|| scope.spawn(|| prove_ready(&plan, time_scale)));
            let checked = executor.check_all(stages, &display);
            (checked, ready.map(|handle| handle.join().expect("readiness thread panicked")))
        });
        match checked {
            Ok(reports) => {
                display.finish_all(&reports);
                ready.unwrap_or(Ok(()))?;
                print_summary(paths, &reports, started.elapsed());
                write_timings(paths, &reports, started.elapsed())?;
                return Ok(());
            }
            Err(error) => {
                display.fail();
                progress_line(&format!("a check failed on a lab that matched its plan ({error}); running every stage"));
            }
        }
    }

    let mut reports: Vec<StageReport> = Vec::new();
    let total = stages.len();
    for (index, stage) in stages.iter().enumerate() {
        let display = StageProgress::new(index + 1, total, stage.stage);
        let result = executor.run_stage_surveyed(stage, &survey, &display);
        match result {
            Ok(report) => {
                display.finish(&report);
                reports.push(report);
            }
            Err(error) => {
                display.fail();
                let bundle = write_log_bundle(paths, &plan, &hosts, &error);
                let mut message = format!("{error}");
                match bundle {
                    Ok(dir) => message.push_str(&format!("\nlog bundle: {}", dir.display())),
                    Err(bundle_error) => message.push_str(&format!("\n(no log bundle: {bundle_error:#})")),
                }
                return Err(Failure { exit: Exit::Failure, error: anyhow::anyhow!(message) });
            }
        }
    }
    if until == Until::Everything {
        prove_ready(&plan, time_scale)?;
    }
    print_summary(paths, &reports, started.elapsed());
    write_timings(paths, &reports, started.elapsed())?;
    Ok(())
}

/// The host-side proof that the finished lab serves and keeps serving
/// (`provisioner::readiness`).
fn prove_ready(plan: &Plan, time_scale: u32) -> Result<(), Failure> {
    let label = format!("{:<30}", "[ready]");
    eprintln!("{label} started: Services and cluster DNS from the host, {} times in a row", readiness::STREAK);
    match readiness::wait_until_steady(&plan.network, time_scale) {
        Ok(steady) => {
            eprintln!(
                "{label} done in {:>5.1} s: {} rounds, {} failed before the streak",
                steady.elapsed.as_secs_f64(),
                steady.rounds,
                steady.failures
            );
            Ok(())
        }
        Err(error) => Err(Failure { exit: Exit::Failure, error: error.into() }),
    }
}

/// One SSH session per node, opened in parallel.
fn connect_all(plan: &Plan, key: &ssh::KeyPair) -> Result<Vec<SshHost>, Failure> {
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .nodes
            .iter()
            .map(|node| scope.spawn(move || SshHost::connect(&node.name, node.address, key, Duration::from_secs(60))))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("connect thread panicked")).collect()
    });
    results.into_iter().collect::<Result<Vec<_>, _>>().map_err(Failure::from)
}

/// Live progress of one stage: a spinner on a terminal, plain lines otherwise.
struct StageProgress {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
}

impl StageProgress {
    fn new(number: usize, total: usize, stage: Stage) -> Self {
        StageProgress::labelled(format!("[{number:>2}/{total}] {:<24}", stage.name()))
    }

    /// The converged lab's checks of every stage, shown as one step.
    fn checks() -> Self {
        StageProgress::labelled(format!("{:<30}", "[checks]"))
    }

    fn labelled(label: String) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}").expect("valid template"),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() {
            eprintln!("{label} started");
        }
        StageProgress { bar, label, started: Instant::now() }
    }

    /// Ends the display of the converged lab's checks.
    fn finish_all(&self, reports: &[StageReport]) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{} done in {:>5.1} s: the checks of {} stages passed, nothing changed",
            self.label,
            self.started.elapsed().as_secs_f64(),
            reports.len()
        );
    }

    fn finish(&self, report: &StageReport) {
        let line = format!(
            "{} done in {:>5.1} s: {} files and {} units changed",
            self.label,
            report.elapsed.as_secs_f64(),
            report.changed_files(),
            report.changed_units()
        );
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{line}");
    }

    fn fail(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
        eprintln!("{} FAILED after {:.1} s", self.label, self.started.elapsed().as_secs_f64());
    }
}

impl Progress for StageProgress {
    fn step(&self, _stage: Stage, node: &str, step: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{node}: {step}")),
            None => eprintln!("{} {:>6.1}s {node}: {step}", self.label, self.started.elapsed().as_secs_f64()),
        }
    }
}

fn print_summary(paths: &Paths, reports: &[StageReport], elapsed: Duration) {
    let files: usize = reports.iter().map(StageReport::changed_files).sum();
    let units: usize = reports.iter().map(StageReport::changed_units).sum();
    println!("\n{:<26} {:>8} {:>6} {:>6}", "stage", "seconds", "files", "units");
    for report in reports {
        println!(
            "{:<26} {:>8.1} {:>6} {:>6}",
            report.stage.name(),
            report.elapsed.as_secs_f64(),
            report.changed_files(),
            report.changed_units()
        );
    }
    println!("{:<26} {:>8.1} {:>6} {:>6}", "total", elapsed.as_secs_f64(), files, units);
    if files == 0 && units == 0 {
        println!("\nthe lab already matched the plan: changed files and units: 0");
    }
    println!(
        "\nuse the cluster:\n  cargo lab kubectl get nodes\n  kubectl --kubeconfig {} get componentstatuses",
        paths.state_dir.join("admin.kubeconfig").display()
    );
}

/// Writes `STATE/timings.json`: seconds and changes per stage of the last `lab up`,
/// for scripts (the nightly job keeps it as an artifact).
fn write_timings(paths: &Paths, reports: &[StageReport], elapsed: Duration) -> Result<(), Failure> {
    let stages: Vec<serde_json::Value> = reports
        .iter()
        .map(|report| {
            serde_json::json!({
                "stage": report.stage.name(),
                "seconds": report.elapsed.as_secs_f64(),
                "changed_files": report.changed_files(),
                "changed_units": report.changed_units(),
            })
        })
        .collect();
    let document = serde_json::json!({ "total_seconds": elapsed.as_secs_f64(), "stages": stages });
    let path = paths.state_dir.join("timings.json");
    let text = serde_json::to_string_pretty(&document).context("serialize the timings")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Every lab unit's journal and the rendered files, per node, under the state
/// directory, so a failed run can be read after the machines are gone.
fn write_log_bundle(paths: &Paths, plan: &Plan, hosts: &[SshHost], error: &ExecError) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = paths.state_dir.join("logs").join(format!("bundle-{stamp}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("error.txt"), error.to_string())?;
    provisioner::render::render(plan, &dir.join("rendered"))?;
    for host in hosts {
        let units: Vec<&str> = plan
            .stages
            .iter()
            .flat_map(|stage| &stage.nodes)
            .filter(|actions| actions.node == host.name())
            .flat_map(|actions| actions.units.iter().map(|unit| unit.name.as_str()))
            .collect();
        let node_dir = dir.join(host.name());
        std::fs::create_dir_all(&node_dir)?;
        for unit in units {
            let script = format!("journalctl --no-pager --lines 500 --unit {unit}; systemctl status --no-pager {unit}");
            let text = match host.run(&script) {
                Ok(output) => output.stdout + &output.stderr,
                Err(error) => format!("cannot read the journal: {error}"),
            };
            std::fs::write(node_dir.join(format!("{unit}.log")), text)?;
        }
    }
    Ok(dir)
}
