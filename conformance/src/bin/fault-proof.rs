//! The proof that every conformance test can fail for the property it names. For each
//! fault of the catalogue (`lab faults --json`) that applies to the running lab, it
//! breaks the fault (`lab break`), runs the conformance tests the fault names and
//! requires each to fail, restores the lab (`lab restore`, which converges it and
//! waits until it serves), runs the same tests again and requires each to pass.
//! Before that it checks that every test of the suite is named by some fault and that
//! every name in the catalogue is a test that exists.
//!
//! Faults the catalogue marks `after-others` (one setting, mode, file or port that only
//! their own tests look at) are proven in series, to spend one restore on many: each is
//! broken while the ones before it are still in force, once its tests have been seen to
//! pass with those in force (they run beside the previous fault's red run), and the
//! series is restored with one `lab restore --all` and its tests run green together. A
//! fault whose tests did not pass before it, or share a test with the series, starts a
//! new series after the restore. Faults marked `alone` are broken with nothing else in
//! force.
//!
//! ```sh
//! cargo lab up
//! cargo run -p conformance --bin fault-proof [-- FAULT...] [--json FILE] [--lab DIR...]
//! ```
//!
//! With `--lab` given more than once, the proof runs on several labs of the same
//! topology at once (`examples/twin-lab.toml` is the default lab's twin): each lab
//! takes the next piece of work (the series, or one fault proven alone) as it is
//! free, so each fault still has its own red and green runs, on one lab, while the
//! labs share the catalogue's time. The faults whose tests are drills come after all
//! the others on every lab, as on one.
//!
//! A failover drill that fails its first run after a restore runs once more, and the
//! second outcome counts; the table names every drill that needed it ("green on a
//! second run"), so a drill that flakes right after restores is seen, while a fault the
//! restore did not undo still fails both runs.
//!
//! It prints a table (fault, tests red, restored in N s, tests green again) and exits
//! non-zero when a named test stayed green, a fault could not be broken or restored,
//! or a test is named by no fault. `LAB_DIR` selects the lab, as for the suite, unless
//! `--lab` names the labs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// One row of `lab faults --json`.
#[derive(Debug, Deserialize)]
struct Fault {
    name: String,
    not_applicable: Option<String>,
    breaks: Vec<String>,
    proof: ProofKind,
}

/// How the catalogue lets the proof break a fault (`provisioner::faults::Proof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ProofKind {
    Alone,
    AfterOthers,
}

/// The drills that power machines off: the longest pieces of work, taken first among
/// the drills.
const MACHINE_DRILLS: [&str; 2] = [
    "failover::every_object_and_pod_is_back_after_a_full_restart",
    "failover::services_move_off_a_worker_whose_machine_stops",
];

/// One lab the proof breaks faults in.
struct ProofLab {
    /// The `lab` binary.
    binary: PathBuf,
    /// Its state directory, given to `lab` and to the suite's tests as `LAB_DIR`; none
    /// leaves them the proof's own `LAB_DIR`.
    dir: Option<PathBuf>,
    /// What starts its lines in the log: its directory when there are several labs.
    prefix: String,
}

impl ProofLab {
    /// `lab ARGS` for this lab.
    fn lab(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(args);
        if let Some(dir) = &self.dir {
            command.env("LAB_DIR", dir);
        }
        command
    }

    /// A row for `fault`, proven on this lab.
    fn row(&self, fault: &Fault) -> Row {
        let lab = if self.prefix.is_empty() { None } else { self.dir.as_ref().map(|dir| dir.display().to_string()) };
        Row { fault: fault.name.clone(), lab, ..Row::default() }
    }
}

/// A piece of the proof that one lab does from start to end.
enum Work<'a> {
    /// The faults proven in series (`prove_in_series`).
    Series(Vec<&'a Fault>),
    /// One fault proven with nothing else in force (`prove`).
    Alone(&'a Fault),
}

/// What the proof found for one fault.
#[derive(Debug, Default, serde::Serialize)]
struct Row {
    fault: String,
    /// The lab it was proven on, when the proof used several (its state directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    lab: Option<String>,
    /// The named tests that failed while the fault was in force.
    red: Vec<String>,
    /// The named tests that passed while the fault was in force: the finding.
    stayed_green: Vec<String>,
    break_seconds: f64,
    /// How long the named tests took to run while the fault was in force.
    red_seconds: f64,
    restore_seconds: f64,
    /// How long they took to run again after the restore.
    green_seconds: f64,
    /// The named tests that failed after the restore.
    still_red: Vec<String>,
    /// Failover drills that failed their first run after the restore and passed the
    /// second (see `run_green`): shown in the table, so a drill that only passes on a
    /// second try is seen.
    green_on_retry: Vec<String>,
    /// The faults in force when this one was broken, with which its tests had passed.
    broken_after: Vec<String>,
    /// The other faults restored by the same `lab restore --all`.
    restored_with: Vec<String>,
    error: Option<String>,
}

impl Row {
    /// Sorts the fault's tests, run while it was in force, into red and stayed green.
    fn sort_red(&mut self, fault: &Fault, results: &BTreeMap<String, bool>) {
        for test in &fault.breaks {
            match results.get(test) {
                Some(false) => self.red.push(test.clone()),
                _ => self.stayed_green.push(test.clone()),
            }
        }
    }

    fn proven(&self) -> bool {
        self.error.is_none() && self.stayed_green.is_empty() && self.still_red.is_empty() && !self.red.is_empty()
    }
}

fn main() -> ExitCode {
    let mut only = Vec::new();
    let mut json_file: Option<PathBuf> = None;
    let mut lab_dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" | "--lab" => {
                let Some(value) = args.next() else {
                    eprintln!("fault-proof: {arg} needs a value");
                    return ExitCode::from(2);
                };
                if arg == "--json" {
                    json_file = Some(PathBuf::from(value));
                } else {
                    lab_dirs.push(PathBuf::from(value));
                }
            }
            "-h" | "--help" => {
                println!("usage: fault-proof [FAULT...] [--json FILE] [--lab DIR...]");
                return ExitCode::SUCCESS;
            }
            _ => only.push(arg),
        }
    }
    match run(&only, json_file, &lab_dirs) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fault-proof: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(only: &[String], json_file: Option<PathBuf>, lab_dirs: &[PathBuf]) -> Result<bool, String> {
    let started = Instant::now();
    let labs = proof_labs(lab_binary()?, lab_dirs)?;
    let catalogue = same_catalogue(&labs)?;
    if let Some(unknown) = only.iter().find(|name| !catalogue.iter().any(|fault| &fault.name == *name)) {
        return Err(format!("no fault {unknown:?} in the catalogue"));
    }

    // Coverage first: a test no fault names is a check nobody has seen fail, and a
    // name that is no test is a catalogue that drifted from the suite.
    let tests = suite_tests()?;
    let named: BTreeSet<&str> = catalogue.iter().flat_map(|fault| fault.breaks.iter().map(String::as_str)).collect();
    let uncovered: Vec<&String> = tests.keys().filter(|test| !named.contains(test.as_str())).collect();
    let unknown: Vec<&str> = named.iter().copied().filter(|name| !tests.contains_key(*name)).collect();
    for test in &uncovered {
        println!("finding: no fault turns {test} red");
    }
    for name in &unknown {
        println!("finding: the catalogue names {name}, which is not a test of the suite");
    }

    let chosen: Vec<&Fault> = catalogue
        .iter()
        .filter(|fault| only.is_empty() || only.contains(&fault.name))
        .filter(|fault| match &fault.not_applicable {
            Some(reason) => {
                println!("{}: skipped, {reason}", fault.name);
                false
            }
            None => true,
        })
        .collect();
    let (in_series, mut alone): (Vec<&Fault>, Vec<&Fault>) =
        chosen.into_iter().partition(|fault| fault.proof == ProofKind::AfterOthers);
    // Faults whose tests are drills come last: a drill leaves a window that the etcd
    // election check leaves out, and `etcd-leader-moved` must not fall in it. Each lab
    // takes work in this order, so on each lab too no other fault follows a drill.
    // Among those, the ones whose drills power machines off (40-60 s a run, the others
    // 10-25 s) go first, so that the short ones even out when the labs finish.
    for test in MACHINE_DRILLS.iter().filter(|test| !tests.contains_key(**test)) {
        println!("warning: {test} is no test of the suite; the proof's order no longer takes it first");
    }
    alone.sort_by_key(|fault| {
        let drills = fault.breaks.iter().any(|test| test.starts_with("failover::"));
        let powers_off = fault.breaks.iter().any(|test| MACHINE_DRILLS.contains(&test.as_str()));
        (drills, !powers_off)
    });
    let mut work = VecDeque::new();
    if !in_series.is_empty() {
        work.push_back(Work::Series(in_series));
    }
    work.extend(alone.into_iter().map(Work::Alone));
    let mut rows = prove_on(&labs, work, &tests);
    let order = |row: &Row| catalogue.iter().position(|fault| fault.name == row.fault);
    rows.sort_by_key(order);

    println!("\n{}", table(&rows));
    let proven = rows.iter().filter(|row| row.proven()).count();
    println!(
        "{proven} of {} faults proven, {} tests of {} named by no fault, {} names that are no test; {:.0} s",
        rows.len(),
        uncovered.len(),
        tests.len(),
        unknown.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = json_file {
        let report = serde_json::json!({
            "rows": rows,
            "uncovered": uncovered,
            "unknown": unknown,
            "seconds": started.elapsed().as_secs_f64(),
        });
        std::fs::write(&file, serde_json::to_vec_pretty(&report).expect("the report serializes"))
            .map_err(|error| format!("cannot write {}: {error}", file.display()))?;
    }
    Ok(proven == rows.len() && uncovered.is_empty() && unknown.is_empty())
}

/// The labs named by `--lab` (each must hold a lab), or the one `LAB_DIR` names.
fn proof_labs(binary: PathBuf, dirs: &[PathBuf]) -> Result<Vec<ProofLab>, String> {
    if dirs.is_empty() {
        return Ok(vec![ProofLab { binary, dir: None, prefix: String::new() }]);
    }
    let mut labs: Vec<ProofLab> = Vec::new();
    for dir in dirs {
        // Absolute, because `lab` reads `LAB_DIR` from the current directory and the
        // suite's tests from the workspace root; canonical, so that one lab named two
        // ways is seen named twice (two workers on one lab break each other's faults).
        let no_lab = || {
            format!("--lab {}: no lab there; start one with `cargo lab up --lab-dir {}`", dir.display(), dir.display())
        };
        let dir = std::fs::canonicalize(dir).map_err(|_| no_lab())?;
        if !provisioner::state_dir::StateDir::new(&dir).topology_record().is_file() {
            return Err(no_lab());
        }
        if labs.iter().any(|lab| lab.dir.as_ref() == Some(&dir)) {
            return Err(format!("--lab {}: named twice", dir.display()));
        }
        let prefix = if dirs.len() > 1 { format!("[{}] ", short_name(&dir)) } else { String::new() };
        labs.push(ProofLab { binary: binary.clone(), dir: Some(dir), prefix });
    }
    Ok(labs)
}

/// The last part of a lab's directory, for the log.
fn short_name(dir: &std::path::Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// The catalogue as the labs see it (`lab faults --json`), which must be the same on
/// each: a fault that applies to one lab and not to another would be proven, or
/// skipped, depending on which lab took it.
fn same_catalogue(labs: &[ProofLab]) -> Result<Vec<Fault>, String> {
    let mut catalogues = Vec::new();
    for lab in labs {
        let catalogue: Vec<Fault> = serde_json::from_str(&capture(&mut lab.lab(&["faults", "--json"]))?)
            .map_err(|error| format!("`lab faults --json` is not the catalogue: {error}"))?;
        catalogues.push(catalogue);
    }
    let first = catalogues.remove(0);
    for (lab, other) in labs.iter().skip(1).zip(&catalogues) {
        for fault in &first {
            let there = other.iter().find(|theirs| theirs.name == fault.name);
            if there.map(|theirs| theirs.not_applicable.is_some()) != Some(fault.not_applicable.is_some()) {
                return Err(format!(
                    "the labs differ: fault {} applies to {} and not to {} (or the other way); \
                     prove on labs of one topology, such as lab.toml and examples/twin-lab.toml",
                    fault.name,
                    labs[0].dir.as_ref().map_or_else(String::new, |dir| dir.display().to_string()),
                    lab.dir.as_ref().map_or_else(String::new, |dir| dir.display().to_string()),
                ));
            }
        }
    }
    Ok(first)
}

/// Does `work` on the labs, each lab taking the next piece as soon as it is free, and
/// returns every row.
fn prove_on(labs: &[ProofLab], work: VecDeque<Work>, suite: &BTreeMap<String, SuiteTest>) -> Vec<Row> {
    let work = Mutex::new(work);
    std::thread::scope(|scope| {
        let workers: Vec<_> = labs
            .iter()
            .map(|lab| {
                let work = &work;
                scope.spawn(move || {
                    let mut rows = Vec::new();
                    loop {
                        let next = work.lock().expect("no worker panics holding the queue").pop_front();
                        match next {
                            None => return rows,
                            Some(Work::Series(faults)) => rows.extend(prove_in_series(lab, faults, suite)),
                            Some(Work::Alone(fault)) => {
                                let row = prove(lab, fault, suite);
                                report(lab, &row, fault.breaks.len());
                                rows.push(row);
                            }
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("a lab's worker panicked")).collect()
    })
}

fn report(lab: &ProofLab, row: &Row, named: usize) {
    let with = if row.restored_with.is_empty() {
        String::new()
    } else {
        format!(" with {} other fault(s)", row.restored_with.len())
    };
    println!(
        "{}{}: {} (red {}/{named}, restored in {:.1} s{with})",
        lab.prefix,
        row.fault,
        if row.proven() { "proven" } else { "NOT PROVEN" },
        row.red.len(),
        row.restore_seconds
    );
}

/// Proves `faults` in series (see the module's documentation): each is broken while
/// the series before it is in force, once its tests passed with that series in force.
fn prove_in_series(lab: &ProofLab, faults: Vec<&Fault>, suite: &BTreeMap<String, SuiteTest>) -> Vec<Row> {
    let mut pending = faults;
    let mut rows = Vec::new();
    let mut series: Vec<(&Fault, Row)> = Vec::new();
    // The results of the next fault's tests, run with the series in force.
    let mut seen_before: Option<(String, BTreeMap<String, bool>)> = None;
    while !pending.is_empty() {
        let in_series: BTreeSet<&str> =
            series.iter().flat_map(|(fault, _)| fault.breaks.iter().map(String::as_str)).collect();
        let Some(next) = pending.iter().position(|fault| disjoint(fault, &in_series)) else {
            rows.extend(restore_series(lab, &mut series, suite));
            continue;
        };
        let fault = pending[next];
        if !series.is_empty() {
            let passed = match &seen_before {
                Some((name, results)) if *name == fault.name => {
                    fault.breaks.iter().all(|test| results.get(test) == Some(&true))
                }
                _ => false,
            };
            if !passed {
                // Its tests fail with the series in force: it starts a series of its own.
                rows.extend(restore_series(lab, &mut series, suite));
                seen_before = None;
                continue;
            }
        }
        pending.remove(next);
        let mut row =
            Row { broken_after: series.iter().map(|(fault, _)| fault.name.clone()).collect(), ..lab.row(fault) };
        let broke = Instant::now();
        let broken = capture(&mut lab.lab(&["break", &fault.name, "--json"]));
        row.break_seconds = broke.elapsed().as_secs_f64();
        if let Err(error) = broken {
            row.error = Some(format!("break: {error}"));
            series.push((fault, row));
            rows.extend(restore_series(lab, &mut series, suite));
            continue;
        }
        // The fault after this one, whose tests must pass with this one in force too:
        // they run beside this fault's tests.
        let mut with_this = in_series.clone();
        with_this.extend(fault.breaks.iter().map(String::as_str));
        let after = pending.iter().find(|other| disjoint(other, &with_this));
        let mut tests = fault.breaks.clone();
        tests.extend(after.iter().flat_map(|other| other.breaks.iter().cloned()));
        let testing = Instant::now();
        let results = run_tests(lab, &tests, suite);
        row.red_seconds = testing.elapsed().as_secs_f64();
        match results {
            Ok(results) => {
                row.sort_red(fault, &results);
                seen_before = after.map(|other| (other.name.clone(), results));
            }
            Err(error) => {
                row.error = Some(format!("tests while broken: {error}"));
                seen_before = None;
            }
        }
        series.push((fault, row));
    }
    rows.extend(restore_series(lab, &mut series, suite));
    rows
}

fn disjoint(fault: &Fault, tests: &BTreeSet<&str>) -> bool {
    fault.breaks.iter().all(|test| !tests.contains(test.as_str()))
}

/// Restores every fault of the series with one `lab restore --all` and runs all their
/// tests, which must pass again; returns the series' rows and leaves it empty.
fn restore_series(lab: &ProofLab, series: &mut Vec<(&Fault, Row)>, suite: &BTreeMap<String, SuiteTest>) -> Vec<Row> {
    if series.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = series.iter().map(|(fault, _)| fault.name.clone()).collect();
    let restoring = Instant::now();
    let restored = capture(&mut lab.lab(&["restore", "--all", "--json"]));
    let restore_seconds = restoring.elapsed().as_secs_f64();
    let tests: Vec<String> = series
        .iter()
        .flat_map(|(fault, _)| fault.breaks.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let testing = Instant::now();
    let mut retried = Vec::new();
    let results = restored.map_err(|error| format!("restore: {error}")).and_then(|_| {
        run_green(lab, &tests, suite, &mut retried).map_err(|error| format!("tests after the restore: {error}"))
    });
    let green_seconds = testing.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (fault, mut row) in series.drain(..) {
        row.restore_seconds = restore_seconds;
        row.green_seconds = green_seconds;
        row.restored_with = names.iter().filter(|name| **name != fault.name).cloned().collect();
        row.green_on_retry = retried.iter().filter(|test| fault.breaks.contains(test)).cloned().collect();
        match &results {
            Ok(results) => {
                row.still_red = fault.breaks.iter().filter(|test| results.get(*test) != Some(&true)).cloned().collect()
            }
            Err(error) => {
                row.error.get_or_insert(error.clone());
            }
        }
        report(lab, &row, fault.breaks.len());
        rows.push(row);
    }
    rows
}

/// Breaks, tests red, restores, tests green.
fn prove(lab: &ProofLab, fault: &Fault, suite: &BTreeMap<String, SuiteTest>) -> Row {
    let mut row = lab.row(fault);
    let broke = Instant::now();
    let broken = capture(&mut lab.lab(&["break", &fault.name, "--json"]));
    row.break_seconds = broke.elapsed().as_secs_f64();
    if let Err(error) = broken {
        row.error = Some(format!("break: {error}"));
    } else {
        let testing = Instant::now();
        let results = run_tests(lab, &fault.breaks, suite);
        row.red_seconds = testing.elapsed().as_secs_f64();
        match results {
            Ok(results) => row.sort_red(fault, &results),
            Err(error) => row.error = Some(format!("tests while broken: {error}")),
        }
    }
    let restoring = Instant::now();
    let restored = capture(&mut lab.lab(&["restore", &fault.name, "--json"]))
        .or_else(|_| capture(&mut lab.lab(&["restore", "--all", "--json"])));
    row.restore_seconds = restoring.elapsed().as_secs_f64();
    if let Err(error) = restored {
        row.error.get_or_insert(format!("restore: {error}"));
        return row;
    }
    let testing = Instant::now();
    let results = run_green(lab, &fault.breaks, suite, &mut row.green_on_retry);
    row.green_seconds = testing.elapsed().as_secs_f64();
    match results {
        Ok(results) => {
            row.still_red = fault.breaks.iter().filter(|test| results.get(*test) != Some(&true)).cloned().collect()
        }
        Err(error) => {
            row.error.get_or_insert(format!("tests after the restore: {error}"));
        }
    }
    row
}

/// One test of the conformance suite, as nextest lists it.
struct SuiteTest {
    binary: String,
    binary_path: PathBuf,
    /// The directory nextest runs the test in (the package's).
    cwd: PathBuf,
    name: String,
    /// Left out of the suite's default run (a drill that restarts the whole lab).
    ignored: bool,
}

impl SuiteTest {
    /// A test that has not finished within this long is stopped with everything it
    /// started, and counts as failed: some tests wait, while a fault is in force, for
    /// what never comes. The drills left out of the default run restart the whole lab
    /// and take longer.
    fn timeout(&self) -> Duration {
        if self.ignored {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(120)
        }
    }
}

/// The tests after a restore: `run_tests`, then once more for each failover drill that
/// failed, whose outcome then counts (its name goes to `retried`). A drill measures
/// timing against a bound right after the restore returned, while components the
/// restore or the drill before restarted are still settling (a lease changing hands, a
/// pod just in its Service's endpoints); a fault that was not undone fails both runs.
/// Checks that are not drills get no second run.
fn run_green(
    lab: &ProofLab,
    tests: &[String],
    suite: &BTreeMap<String, SuiteTest>,
    retried: &mut Vec<String>,
) -> Result<BTreeMap<String, bool>, String> {
    let mut results = run_tests(lab, tests, suite)?;
    let failed_drills: Vec<String> = results
        .iter()
        .filter(|(test, passed)| !**passed && test.starts_with("failover::"))
        .map(|(test, _)| test.clone())
        .collect();
    if !failed_drills.is_empty() {
        for (test, passed) in run_tests(lab, &failed_drills, suite)? {
            if passed {
                retried.push(test.clone());
            }
            results.insert(test, passed);
        }
    }
    Ok(results)
}

/// Runs the named tests (`BINARY::TEST`) and returns whether each passed. Each runs in
/// a process of its own, as under nextest, straight from the binary nextest listed: a
/// `cargo nextest run` per fault would spend seconds on cargo and on listing the suite
/// each time. The named tests run side by side, except when one is a failover drill:
/// those stop parts of the lab and run one at a time, as in the suite.
fn run_tests(
    lab: &ProofLab,
    tests: &[String],
    suite: &BTreeMap<String, SuiteTest>,
) -> Result<BTreeMap<String, bool>, String> {
    let chosen: Vec<&SuiteTest> = tests
        .iter()
        .map(|test| suite.get(test).ok_or_else(|| format!("{test} is not a test of the suite")))
        .collect::<Result<_, _>>()?;
    let one_at_a_time = chosen.iter().any(|test| test.binary == "failover");
    let results: Vec<(String, Result<bool, String>)> = if one_at_a_time {
        chosen.iter().map(|test| (format!("{}::{}", test.binary, test.name), run_test(lab, test))).collect()
    } else {
        std::thread::scope(|scope| {
            let running: Vec<_> = chosen
                .iter()
                .map(|test| (format!("{}::{}", test.binary, test.name), scope.spawn(|| run_test(lab, test))))
                .collect();
            running
                .into_iter()
                .map(|(name, handle)| (name, handle.join().unwrap_or_else(|_| Err("the runner panicked".to_string()))))
                .collect()
        })
    };
    results.into_iter().map(|(name, passed)| passed.map(|passed| (name, passed))).collect()
}

/// Runs one test in its own process (and process group); a test that outlives its
/// timeout is killed with what it started, and failed. An error means the test could
/// not be run at all.
fn run_test(lab: &ProofLab, test: &SuiteTest) -> Result<bool, String> {
    let mut command = Command::new(&test.binary_path);
    if let Some(dir) = &lab.dir {
        command.env("LAB_DIR", dir);
    }
    command.args(["--exact", &test.name, "--test-threads", "1", "--include-ignored"]).current_dir(&test.cwd);
    // The tests of the whole proof share one `lab status`: no fault changes what they
    // read from it (the machines, addresses and files), and asking cargo for it cost
    // each test about 0.3 s.
    command.env(conformance::SUITE_RUN_VARIABLE, proof_run());
    let Some(completed) = conformance::run_within(&mut command, test.timeout())? else {
        println!("  {}{}::{} failed: did not finish within {:?}", lab.prefix, test.binary, test.name, test.timeout());
        return Ok(false);
    };
    // A filter that matched nothing passes too: that is no result.
    if !completed.stdout.contains("running 1 test") {
        return Err(format!("{} ran no test named {}", test.binary_path.display(), test.name));
    }
    let passed = completed.status.success();
    if !passed {
        // Why it failed, in the log: a red run shows the property that broke, and a
        // drill that needs a second run after a restore shows what it ran into.
        let output = format!("{}\n{}", completed.stdout, completed.stderr);
        println!("  {}{}::{} failed: {}", lab.prefix, test.binary, test.name, panic_message(&output));
    }
    Ok(passed)
}

/// This proof's name for its run of the suite's tests.
fn proof_run() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("fault-proof-{}-{}", std::process::id(), started.as_nanos())
    })
}

/// The first line of a test's panic message (libtest prints `thread '...' panicked at
/// FILE:LINE:COLUMN:` and the message on the next line, in the test's captured output),
/// at most 1000 characters (a drill's message carries its figures).
fn panic_message(output: &str) -> String {
    let mut lines = output.lines().skip_while(|line| !line.contains("panicked at"));
    let message = lines.nth(1).map(str::trim).unwrap_or("no panic message (see the test's output)");
    message.chars().take(1000).collect()
}

/// Every test of the conformance suite by `BINARY::TEST`. Listing builds the suite.
fn suite_tests() -> Result<BTreeMap<String, SuiteTest>, String> {
    let listed = capture(conformance::inner_cargo().args([
        "nextest",
        "list",
        "-p",
        "conformance",
        // The default profile leaves the failover drills out of the suite's run; the
        // proof needs every test.
        "--ignore-default-filter",
        "--locked",
        "--message-format",
        "json",
    ]))?;
    let list: Value = serde_json::from_str(&listed).map_err(|error| format!("nextest's list is not JSON: {error}"))?;
    let mut tests = BTreeMap::new();
    for suite in list["rust-suites"].as_object().into_iter().flat_map(|suites| suites.values()) {
        // The library's own unit tests check the suite's helpers, not the lab.
        if suite["kind"] == "lib" {
            continue;
        }
        let binary = suite["binary-name"].as_str().unwrap_or_default();
        let (Some(binary_path), Some(cwd)) = (suite["binary-path"].as_str(), suite["cwd"].as_str()) else {
            return Err(format!("nextest's list gives no binary path or directory for {binary}"));
        };
        for (name, case) in suite["testcases"].as_object().into_iter().flatten() {
            tests.insert(
                format!("{binary}::{name}"),
                SuiteTest {
                    binary: binary.to_string(),
                    binary_path: PathBuf::from(binary_path),
                    cwd: PathBuf::from(cwd),
                    name: name.clone(),
                    ignored: case["ignored"] == true,
                },
            );
        }
    }
    Ok(tests)
}

fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    // The lab column only when the proof used several labs.
    let labs = rows.iter().any(|row| row.lab.is_some());
    let lab_of = |row: &Row| match &row.lab {
        Some(dir) if labs => format!("{:<12} ", short_name(std::path::Path::new(dir))),
        _ => String::new(),
    };
    let header = if labs { format!("{:<12} ", "lab") } else { String::new() };
    let mut text =
        format!("{header}{:<36} {:<9} {:>10} {:>12}  {}\n", "fault", "red", "restored", "green again", "finding");
    for row in rows {
        let finding = match (&row.error, row.stayed_green.is_empty(), row.still_red.is_empty()) {
            (Some(error), _, _) => error.clone(),
            (None, false, _) => format!("stayed green: {}", row.stayed_green.join(", ")),
            (None, true, false) => format!("still red: {}", row.still_red.join(", ")),
            (None, true, true) if !row.green_on_retry.is_empty() => {
                format!("green on a second run: {}", row.green_on_retry.join(", "))
            }
            (None, true, true) => String::new(),
        };
        let named = row.red.len() + row.stayed_green.len();
        let green_again = named - row.still_red.len().min(named);
        let _ = writeln!(
            text,
            "{}{:<36} {:<9} {:>8.1} s {:>12}  {finding}",
            lab_of(row),
            row.fault,
            format!("{}/{named}", row.red.len()),
            row.restore_seconds,
            format!("{green_again}/{named}")
        );
    }
    text
}

/// The `lab` binary built beside this one, built again first: one left from older
/// sources would break and restore faults from an older catalogue than this program's.
fn lab_binary() -> Result<PathBuf, String> {
    let here = std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let lab = here.with_file_name("lab");
    let built = conformance::inner_cargo().args(["build", "--locked", "-p", "lab"]).status();
    match built {
        Ok(status) if status.success() && lab.is_file() => Ok(lab),
        _ => Err(format!("no lab binary at {}; `cargo build -p lab` makes it", lab.display())),
    }
}

/// Runs a command and returns its stdout, or its stderr's last lines as the error.
fn capture(command: &mut Command) -> Result<String, String> {
    let output = command.stderr(Stdio::piped()).output().map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).rev().take(3).collect();
    Err(tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
}
