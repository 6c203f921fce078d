//! `lab up`: builds the lab through `provisioner::lab::Lab::up` and prints the
//! closing summary.

use std::io::{IsTerminal as _, Write as _};

use provisioner::lab::{Until, UpOptions, UpReport};
use provisioner::plan::Stage;

use crate::step::Stepper;
use crate::terminal::{JsonLines, Terminal};
use crate::{Failure, Paths};

pub fn up(paths: &Paths, options: UpOptions, json: bool) -> Result<(), Failure> {
    let lab = paths.lab_from_file()?;
    if json {
        let lines = JsonLines::new();
        let report = lab.up(options, &lines)?;
        // After `--until STAGE`, where the lab stopped and which stage comes next.
        let (stopped_after, next) = match report.until {
            Until::Stage(stage) => (Some(stage.name()), stage.next().map(Stage::name)),
            Until::Machines => (Some("machines"), Stage::ALL.first().map(|stage| stage.name())),
            Until::Everything => (None, None),
        };
        lines.emit(
            "done",
            serde_json::json!({
                "total_seconds": report.elapsed.as_secs_f64(),
                "changed_files": report.changed_files(),
                "changed_units": report.changed_units(),
                "removed": report.removed(),
                "stopped_after": stopped_after,
                "next_stage": next,
            }),
        );
        return Ok(());
    }
    let report = if options.step && std::io::stdin().is_terminal() {
        let chapters = provisioner::explain::chapters(lab.plan()?);
        lab.up(options, &Stepper::new(chapters, std::io::BufReader::new(std::io::stdin())))?
    } else {
        if options.step && !crate::terminal::quiet() {
            eprintln!("warning: --step: the input is no terminal to answer on; running every stage without pausing");
        }
        lab.up(UpOptions { step: false, ..options }, &Terminal::new())?
    };
    // The lab is up whether or not anyone still reads (`lab up | head`): a closed
    // stdout changes neither the outcome nor the exit code.
    let mut stdout = std::io::stdout().lock();
    if options.until == Until::Machines {
        let _ = writeln!(
            stdout,
            "machines are up ({:.1} s); `lab up` continues with the stages",
            report.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let _ = write!(stdout, "{}", summary(&report, &lab.state().admin_kubeconfig(), &paths.lab_options));
    Ok(())
}

/// The closing table: seconds and changes per stage, and how to use the cluster.
/// `lab_options` are the user's options that reach this lab, for the commands shown.
fn summary(report: &UpReport, kubeconfig: &std::path::Path, lab_options: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "\n{:<26} {:>8} {:>6} {:>6}", "stage", "seconds", "files", "units");
    for stage in &report.stages {
        let _ = writeln!(
            out,
            "{:<26} {:>8.1} {:>6} {:>6}",
            stage.stage.name(),
            stage.elapsed.as_secs_f64(),
            stage.changed_files(),
            stage.changed_units()
        );
    }
    let (files, units) = (report.changed_files(), report.changed_units());
    let _ = writeln!(out, "{:<26} {:>8.1} {:>6} {:>6}", "total", report.elapsed.as_secs_f64(), files, units);
    if report.removed() > 0 {
        let _ = writeln!(out, "\nfiles and units removed because the plan no longer has them: {}", report.removed());
    }
    if files == 0 && units == 0 && report.removed() == 0 {
        let _ = writeln!(out, "\nthe lab already matched the plan: changed files and units: 0");
    }
    match report.until {
        Until::Stage(stage) => {
            let _ = write!(out, "\n{}", continue_after(Some(stage), lab_options));
            return out;
        }
        // A pause of `--step` stopped before the first stage.
        Until::Machines => {
            let _ = write!(out, "\n{}", continue_after(None, lab_options));
            return out;
        }
        Until::Everything => {}
    }
    let _ = writeln!(
        out,
        "\nuse the cluster:\n  cargo lab{lab_options} kubectl get nodes\n  export KUBECONFIG={}\n  \
         kubectl get componentstatuses\n  (or `cargo lab{lab_options} kubeconfig --merge` for a context in ~/.kube/config)",
        kubeconfig.display()
    );
    out
}

/// After `--until STAGE` (or `q` at a pause of `--step`): where the lab stands and how
/// to go on, one stage at a time or to the end. `None`: stopped before the first stage.
/// The commands carry `lab_options`, so that they reach the same lab.
fn continue_after(stage: Option<Stage>, lab_options: &str) -> String {
    let (done, next) = match stage {
        Some(stage) => (
            format!("stopped after stage {} of {}, {}, as asked", stage.position() + 1, Stage::ALL.len(), stage.name()),
            stage.next(),
        ),
        None => ("stopped before the first stage, as asked".to_string(), Stage::ALL.first().copied()),
    };
    match next {
        Some(next) => {
            let one_more = format!("cargo lab{lab_options} up --until {}", next.name());
            let the_rest = format!("cargo lab{lab_options} up");
            format!(
                "{done}; the stages after it did not run.\nnext: {}, {}\n  {one_more}  # one more stage\n  \
                 {:<width$}  # the rest, then the proof that the cluster serves\n",
                next.name(),
                next.handbook_section(),
                the_rest,
                width = one_more.len()
            )
        }
        None => format!(
            "{done}: every stage ran, but the final proof that the cluster serves did not.\n  \
             cargo lab{lab_options} up  # runs it\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_early_names_the_next_stage_and_how_to_continue() {
        let text = continue_after(Some(Stage::Etcd), "");
        assert!(text.starts_with("stopped after stage 3 of"), "{text}");
        assert!(text.contains("next: admin-kubeconfig, Handbook 000 section 5"), "{text}");
        assert!(text.contains("cargo lab up --until admin-kubeconfig"), "{text}");
        let last = Stage::ALL[Stage::ALL.len() - 1];
        assert!(continue_after(Some(last), "").contains("the final proof that the cluster serves did not"));
        assert!(continue_after(None, "").contains("next: hosts,"));
    }

    #[test]
    fn the_commands_shown_reach_the_same_lab() {
        let options = " --topology 'my labs/lab.toml' --lab-dir /var/lib/lab2";
        let text = continue_after(Some(Stage::Etcd), options);
        assert!(
            text.contains(
                "cargo lab --topology 'my labs/lab.toml' --lab-dir /var/lib/lab2 up --until admin-kubeconfig"
            ),
            "{text}"
        );
        assert!(text.contains("cargo lab --topology 'my labs/lab.toml' --lab-dir /var/lib/lab2 up "), "{text}");
    }
}
