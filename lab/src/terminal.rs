//! How `lab` shows a lab verb's progress: a spinner per stage on a terminal, plain
//! lines otherwise, every line timed from the verb's start, on stderr.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use provisioner::lab::{Event, Reporter};

/// The terminal side of `provisioner::lab::Reporter`.
pub struct Terminal {
    started: Instant,
    /// The display of the stage (or the converged lab's checks) running now.
    current: Mutex<Option<StepDisplay>>,
}

/// One running step: its label, its spinner on a terminal, and when it started.
struct StepDisplay {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Terminal {
    pub fn new() -> Terminal {
        Terminal { started: Instant::now(), current: Mutex::new(None) }
    }

    /// A progress line `[  12.3s] text`.
    fn line(&self, text: &str) {
        eprintln!("[{:>6.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    fn begin(&self, label: String) {
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
        *self.current.lock().expect("display lock") = Some(StepDisplay { label, bar, started: Instant::now() });
    }

    /// Ends the running step's display with `outcome` after its label.
    fn end(&self, outcome: impl FnOnce(&StepDisplay) -> String, failed: bool) {
        let Some(display) = self.current.lock().expect("display lock").take() else { return };
        if let Some(bar) = &display.bar {
            if failed {
                bar.abandon();
            } else {
                bar.finish_and_clear();
            }
        }
        eprintln!("{} {}", display.label, outcome(&display));
    }
}

impl Reporter for Terminal {
    fn report(&self, event: Event<'_>) {
        match event {
            Event::Progress(text) => self.line(text),
            Event::Warning(text) => eprintln!("warning: {text}"),
            Event::StageStarted { number, total, stage } => {
                self.begin(format!("[{number:>2}/{total}] {:<24}", stage.name()))
            }
            Event::Step { node, step, .. } => {
                let current = self.current.lock().expect("display lock");
                match current.as_ref() {
                    Some(StepDisplay { bar: Some(bar), .. }) => bar.set_message(format!("{node}: {step}")),
                    Some(display) => {
                        eprintln!("{} {:>6.1}s {node}: {step}", display.label, display.started.elapsed().as_secs_f64())
                    }
                    None => self.line(&format!("{node}: {step}")),
                }
            }
            Event::StageDone { report } => self.end(
                |_| {
                    format!(
                        "done in {:>5.1} s: {} files and {} units changed",
                        report.elapsed.as_secs_f64(),
                        report.changed_files(),
                        report.changed_units()
                    )
                },
                false,
            ),
            Event::StageFailed { elapsed, .. } => {
                self.end(|_| format!("FAILED after {:.1} s", elapsed.as_secs_f64()), true)
            }
            Event::ChecksStarted => self.begin(format!("{:<30}", "[checks]")),
            Event::ChecksDone { stages, elapsed } => self.end(
                |_| {
                    format!(
                        "done in {:>5.1} s: the checks of {stages} stages passed, nothing changed",
                        elapsed.as_secs_f64()
                    )
                },
                false,
            ),
            Event::ChecksFailed => {
                self.end(|display| format!("FAILED after {:.1} s", display.started.elapsed().as_secs_f64()), true)
            }
            Event::ReadinessStarted { streak } => {
                eprintln!("{:<30} started: Services and cluster DNS from the host, {streak} times in a row", "[ready]")
            }
            Event::ReadinessDone { steady } => eprintln!(
                "{:<30} done in {:>5.1} s: {} rounds, {} failed before the streak",
                "[ready]",
                steady.elapsed.as_secs_f64(),
                steady.rounds,
                steady.failures
            ),
        }
    }
}
