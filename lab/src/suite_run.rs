//! The conformance tests that a verb reports on (`lab bench`, `lab exercise --check`),
//! run with cargo-nextest from the checkout, as `lab drill` runs the drills, so that
//! the verb and the suite cannot disagree. nextest writes each test's outcome and
//! output to a JUnit report (the profile's `junit` in `.config/nextest.toml`), which
//! this reads afterwards.

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::process::Stdio;

use anyhow::{anyhow, Context as _};
use provisioner::benchmark::TestOutcome;

use crate::{Exit, Failure, Paths};

/// Where nextest keeps its reports: its default store, relative to the workspace and
/// not to cargo's target directory (`.config/nextest.toml` does not move it).
const NEXTEST_STORE: &str = "target/nextest";
/// The package the conformance tests are in.
const SUITE_PACKAGE: &str = "conformance";
/// The longest reason a test's outcome carries; the test output above has the rest.
const REASON_WIDTH: usize = 160;

/// Runs the conformance tests that the nextest filter `filter` selects, with nextest
/// profile `profile` (which must write a JUnit report), against the lab of `paths`,
/// and returns each test's outcome by `BINARY::TEST`. nextest's own progress and the
/// failing tests' output go to stderr, so that stdout stays the verb's. `what` names
/// the tests in the error when there is no checkout to run them from.
pub fn run_conformance(
    paths: &Paths,
    profile: &str,
    filter: &str,
    what: &str,
) -> Result<BTreeMap<String, TestOutcome>, Failure> {
    let checkout = crate::source_checkout().ok_or_else(|| Failure {
        exit: Exit::Usage,
        error: anyhow!("{what} are conformance tests: run this from the lab's source checkout"),
    })?;
    let report = checkout.join(NEXTEST_STORE).join(profile).join("junit.xml");
    // A report of an earlier run must not stand in for this one.
    match std::fs::remove_file(&report) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow!("cannot remove the earlier report {}: {error}", report.display()).into())
        }
        _ => {}
    }
    let status = provisioner::system::inner_cargo()
        .current_dir(&checkout)
        .env("LAB_DIR", &paths.state_dir)
        .args(["nextest", "run", "--no-fail-fast", "--profile", profile, "-p", SUITE_PACKAGE])
        .args(["-E", filter])
        .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned().context("duplicate stderr")?))
        .status()
        .context("cannot run cargo nextest (install it with `cargo install cargo-nextest --locked`)")?;
    let junit = std::fs::read_to_string(&report).map_err(|error| {
        anyhow!("cargo nextest ({status}) wrote no report at {}: {error}; its output above says why", report.display())
    })?;
    Ok(parse_junit(&junit).with_context(|| format!("read {}", report.display()))?)
}

/// The nextest filter that selects exactly `tests`, each `BINARY::TEST`.
pub fn filter_of(tests: &[&str]) -> String {
    tests
        .iter()
        .map(|test| {
            let (binary, name) = test.split_once("::").unwrap_or(("", test));
            format!("(binary(={binary}) & test(={name}))")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Every test case of a nextest JUnit report, by `BINARY::TEST`.
pub fn parse_junit(junit: &str) -> anyhow::Result<BTreeMap<String, TestOutcome>> {
    let document = roxmltree::Document::parse(junit).context("not XML")?;
    let mut outcomes = BTreeMap::new();
    for case in document.descendants().filter(|node| node.has_tag_name("testcase")) {
        let name = case.attribute("name").context("a testcase without a name")?;
        let class = case.attribute("classname").context("a testcase without a classname")?;
        // nextest names the binary `PACKAGE::BINARY`.
        let binary = class.strip_prefix(&format!("{SUITE_PACKAGE}::")).unwrap_or(class);
        let output: String = case
            .descendants()
            .filter(|node| node.is_text())
            .filter_map(|node| node.text())
            .collect::<Vec<_>>()
            .join("\n");
        let failed = case.children().any(|child| child.has_tag_name("failure") || child.has_tag_name("error"));
        let outcome = if failed {
            TestOutcome::Failed(
                panic_message(&output).unwrap_or_else(|| "failed; the test output above says why".into()),
            )
        } else {
            match output.lines().find_map(|line| line.trim().strip_prefix("not applicable: ")) {
                Some(reason) => TestOutcome::NotApplicable(reason.to_string()),
                None => TestOutcome::Passed,
            }
        };
        outcomes.insert(format!("{binary}::{name}"), outcome);
    }
    Ok(outcomes)
}

/// The message of the panic that failed a test: the line after `panicked at FILE:LINE:`
/// (the message's first line, and its second when the first ends in a colon and
/// introduces it).
fn panic_message(output: &str) -> Option<String> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at ") {
            let mut message = lines.next()?.trim().to_string();
            if message.ends_with(':') {
                if let Some(detail) = lines.next().map(str::trim).filter(|detail| !detail.is_empty()) {
                    message = format!("{message} {detail}");
                }
            }
            return (!message.is_empty()).then(|| one_line(&message));
        }
    }
    None
}

fn one_line(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(REASON_WIDTH) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
