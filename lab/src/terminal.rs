//! How `lab` shows a lab verb's progress: a spinner per stage on a terminal, plain
//! lines otherwise, every line timed from the verb's start, on stderr; and how much
//! it says there besides (`-v`, `-q`, the provisioner's log through `tracing`).

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use provisioner::lab::{Event, Reporter};
use provisioner::plan::Stage;
use tracing_subscriber::EnvFilter;

/// Whether `-q` was given. It is set once, before the verb runs, and is process-wide
/// like the tracing subscriber it goes with, so that every reporter and warning of
/// the verb honours it wherever it is made.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets how much `lab` says on stderr: `-q` only errors, no progress lines and no
/// warnings; by default warnings and progress; each `-v` one more level of the
/// provisioner's log. `RUST_LOG` (`rust_log`), when set, chooses the log's levels
/// instead.
pub fn init(verbose: u8, quiet: bool, rust_log: Option<&str>) {
    QUIET.store(quiet, Ordering::Relaxed);
    let filter = match EnvFilter::try_new(log_directives(verbose, quiet, rust_log)) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("warning: RUST_LOG: {error}; using the levels of -v and -q");
            EnvFilter::new(log_directives(verbose, quiet, None))
        }
    };
    // The log goes to stderr with everything else `lab` says to a person, so that
    // stdout stays the verb's output (one JSON document or JSON lines with `--json`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether `-q` asked for errors only.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The log filter: `RUST_LOG` if set, else the provisioner's and lab's own messages
/// at the level of `-v` (warn, info, debug, trace) and other crates' at warn; `-q`
/// errors only.
fn log_directives(verbose: u8, quiet: bool, rust_log: Option<&str>) -> String {
    if let Some(directives) = rust_log.filter(|directives| !directives.trim().is_empty()) {
        return directives.to_string();
    }
    if quiet {
        return "error".to_string();
    }
    let level = ["warn", "info", "debug", "trace"][usize::from(verbose.min(3))];
    format!("warn,provisioner={level},lab={level}")
}

/// The reporter of a verb with or without `--json`.
pub fn reporter(json: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(JsonLines::new())
    } else {
        Box::new(Terminal::new())
    }
}

/// The terminal side of `provisioner::lab::Reporter`. Under `-q` it shows nothing:
/// the verb's error or closing summary is all that is printed.
pub struct Terminal {
    quiet: bool,
    started: Instant,
    /// The displays of the stages (or the converged lab's checks, under `None`) running
    /// now: stages that do not need each other run at once.
    running: Mutex<Vec<(Option<Stage>, StepDisplay)>>,
    /// Where the spinners are drawn, one line each, with finished lines above them.
    bars: MultiProgress,
    spinners: bool,
}

/// One running step: its label, its spinner on a terminal, and when it started.
struct StepDisplay {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
}

/// Writes one progress line to stderr. Progress is for whoever watches: a reader that
/// went away (`lab up 2>&1 | head`) ends nothing, and the verb goes on, as
/// `JsonLines::emit` does for stdout. `eprintln!` would panic there, with a display
/// lock held, and take every stage's thread with it.
fn to_stderr(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

impl Terminal {
    pub fn new() -> Terminal {
        Terminal {
            quiet: quiet(),
            started: Instant::now(),
            running: Mutex::new(Vec::new()),
            bars: MultiProgress::new(),
            spinners: std::io::stderr().is_terminal(),
        }
    }

    /// Prints one finished line above the spinners (or on its own without them).
    fn print(&self, text: &str) {
        if !self.spinners || self.bars.println(text).is_err() {
            to_stderr(text);
        }
    }

    /// A progress line `[  12.3s] text`.
    fn line(&self, text: &str) {
        self.print(&format!("[{:>6.1}s] {text}", self.started.elapsed().as_secs_f64()));
    }

    fn begin(&self, key: Option<Stage>, label: String) {
        let bar = self.spinners.then(|| {
            let bar = self.bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}").expect("valid template"),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() {
            to_stderr(&format!("{label} started"));
        }
        self.running.lock().expect("display lock").push((key, StepDisplay { label, bar, started: Instant::now() }));
    }

    /// Ends the display of `key` with `outcome` after its label.
    fn end(&self, key: Option<Stage>, outcome: impl FnOnce(&StepDisplay) -> String, failed: bool) {
        let display = {
            let mut running = self.running.lock().expect("display lock");
            let Some(position) = running.iter().position(|(running, _)| *running == key) else { return };
            running.remove(position).1
        };
        if let Some(bar) = &display.bar {
            if failed {
                bar.abandon();
            } else {
                bar.finish_and_clear();
            }
            self.bars.remove(bar);
        }
        self.print(&format!("{} {}", display.label, outcome(&display)));
    }
}

impl Reporter for Terminal {
    fn report(&self, event: Event<'_>) {
        if self.quiet {
            return;
        }
        match event {
            Event::Progress(text) => self.line(text),
            Event::Warning(text) => self.print(&format!("warning: {text}")),
            Event::StageStarted { number, total, stage } => {
                self.begin(Some(stage), format!("[{number:>2}/{total}] {:<24}", stage.name()))
            }
            Event::Step { stage, node, step } => {
                let running = self.running.lock().expect("display lock");
                // The converged lab's checks run every stage's checks under one display.
                let display = running
                    .iter()
                    .find(|(key, _)| *key == Some(stage))
                    .or_else(|| running.iter().find(|(key, _)| key.is_none()))
                    .map(|(_, display)| display);
                match display {
                    Some(StepDisplay { bar: Some(bar), .. }) => bar.set_message(format!("{node}: {step}")),
                    Some(display) => {
                        let elapsed = display.started.elapsed().as_secs_f64();
                        to_stderr(&format!("{} {elapsed:>6.1}s {node}: {step}", display.label))
                    }
                    None => {
                        drop(running);
                        self.line(&format!("{node}: {step}"))
                    }
                }
            }
            Event::StageDone { report } => self.end(
                Some(report.stage),
                |_| {
                    let removed = match report.removed() {
                        0 => String::new(),
                        removed => format!(", {removed} no longer planned removed"),
                    };
                    format!(
                        "done in {:>5.1} s: {} files and {} units changed{removed}",
                        report.elapsed.as_secs_f64(),
                        report.changed_files(),
                        report.changed_units()
                    )
                },
                false,
            ),
            Event::StageFailed { stage, elapsed } => {
                self.end(Some(stage), |_| format!("FAILED after {:.1} s", elapsed.as_secs_f64()), true)
            }
            Event::ChecksStarted => self.begin(None, format!("{:<30}", "[checks]")),
            Event::ChecksDone { stages, elapsed } => self.end(
                None,
                |_| {
                    format!(
                        "done in {:>5.1} s: the checks of {stages} stages passed, nothing changed",
                        elapsed.as_secs_f64()
                    )
                },
                false,
            ),
            Event::ChecksFailed => {
                self.end(None, |display| format!("FAILED after {:.1} s", display.started.elapsed().as_secs_f64()), true)
            }
            Event::ReadinessStarted { streak } => self.print(&format!(
                "{:<30} started: Services and cluster DNS from the host, {streak} times in a row",
                "[ready]"
            )),
            Event::ReadinessDone { steady } => self.print(&format!(
                "{:<30} done in {:>5.1} s: {} rounds, {} failed before the streak",
                "[ready]",
                steady.elapsed.as_secs_f64(),
                steady.rounds,
                steady.failures
            )),
        }
    }
}

/// `--json`: one JSON object per event on stdout, each on its own line, for scripts.
/// Every object has `event` (its kind) and `seconds` (since the verb started).
pub struct JsonLines {
    started: Instant,
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines { started: Instant::now() }
    }

    /// Prints `fields` with the event's kind and time; a reader that went away ends
    /// nothing: the verb goes on (its outcome is in the exit code).
    pub fn emit(&self, event: &str, mut fields: serde_json::Value) {
        use std::io::Write as _;
        fields["event"] = event.into();
        fields["seconds"] = self.started.elapsed().as_secs_f64().into();
        let _ = writeln!(std::io::stdout().lock(), "{fields}");
    }
}

impl Reporter for JsonLines {
    fn report(&self, event: Event<'_>) {
        use serde_json::json;
        match event {
            Event::Progress(text) => self.emit("progress", json!({ "text": text })),
            Event::Warning(text) => self.emit("warning", json!({ "text": text })),
            Event::StageStarted { number, total, stage } => {
                self.emit("stage_started", json!({ "stage": stage.name(), "number": number, "total": total }))
            }
            Event::Step { stage, node, step } => {
                self.emit("step", json!({ "stage": stage.name(), "node": node, "step": step }))
            }
            Event::StageDone { report } => self.emit(
                "stage_done",
                json!({
                    "stage": report.stage.name(),
                    "stage_seconds": report.elapsed.as_secs_f64(),
                    "changed_files": report.changed_files(),
                    "changed_units": report.changed_units(),
                    "removed": report.removed(),
                }),
            ),
            Event::StageFailed { stage, elapsed } => {
                self.emit("stage_failed", json!({ "stage": stage.name(), "stage_seconds": elapsed.as_secs_f64() }))
            }
            Event::ChecksStarted => self.emit("checks_started", json!({})),
            Event::ChecksDone { stages, elapsed } => {
                self.emit("checks_done", json!({ "stages": stages, "checks_seconds": elapsed.as_secs_f64() }))
            }
            Event::ChecksFailed => self.emit("checks_failed", json!({})),
            Event::ReadinessStarted { streak } => self.emit("ready_started", json!({ "streak": streak })),
            Event::ReadinessDone { steady } => self.emit(
                "ready_done",
                json!({
                    "ready_seconds": steady.elapsed.as_secs_f64(),
                    "rounds": steady.rounds,
                    "failures": steady.failures,
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_log_levels_follow_v_and_q_unless_rust_log_is_set() {
        assert_eq!(log_directives(0, false, None), "warn,provisioner=warn,lab=warn");
        assert_eq!(log_directives(1, false, None), "warn,provisioner=info,lab=info");
        assert_eq!(log_directives(2, false, None), "warn,provisioner=debug,lab=debug");
        assert_eq!(log_directives(7, false, None), "warn,provisioner=trace,lab=trace");
        assert_eq!(log_directives(0, true, None), "error");
        assert_eq!(log_directives(2, true, Some("provisioner::pki=info")), "provisioner::pki=info");
        assert_eq!(log_directives(1, false, Some(" ")), "warn,provisioner=info,lab=info", "an empty RUST_LOG is unset");
    }

    #[test]
    fn a_quiet_terminal_shows_no_step() {
        let stage = Stage::ALL[0];
        let quiet = Terminal { quiet: true, ..Terminal::new() };
        quiet.report(Event::StageStarted { number: 1, total: 15, stage });
        assert!(quiet.running.lock().unwrap().is_empty());

        let normal = Terminal { quiet: false, ..Terminal::new() };
        normal.report(Event::StageStarted { number: 1, total: 15, stage });
        assert_eq!(normal.running.lock().unwrap().len(), 1);
    }
}
