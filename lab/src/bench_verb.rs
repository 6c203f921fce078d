//! `lab bench [--json]`: the CIS Kubernetes Benchmark report of the running lab, in the
//! manner of kube-bench: `[PASS]`, `[FAIL]`, `[WARN]` or `[INFO]` per recommendation
//! (`provisioner::benchmark`), with a one-line reason, and a summary.
//!
//! The checks are the conformance tests the table names, run by `suite_run` with the
//! nextest profile `cis-bench`, so the report and the suite cannot disagree.

use anyhow::{anyhow, Context as _};
use provisioner::benchmark::{
    self, assess, unlisted_tests, Assessment, Status, TestOutcome, BENCHMARK_BINARIES, RECOMMENDATIONS,
};

use crate::{Exit, Failure, Paths};

/// The nextest profile the checks run with (`.config/nextest.toml`).
const PROFILE: &str = "cis-bench";

pub fn bench(paths: &Paths, json: bool) -> Result<(), Failure> {
    // The checks need a lab; without one this is a usage error, as for `lab break`.
    crate::fault_verbs::existing(paths)?;
    let outcomes = crate::suite_run::run_conformance(paths, PROFILE, &filter_expression(), "the benchmark's checks")?;
    let rows: Vec<Assessment> =
        RECOMMENDATIONS.iter().map(|recommendation| assess(recommendation, &outcomes)).collect();
    let unlisted = unlisted_tests(&outcomes);
    print_report(&rows, &unlisted, json)?;

    let failed: Vec<&str> =
        rows.iter().filter(|row| row.status == Status::Fail).map(|row| row.recommendation.numbers).collect();
    if !unlisted.is_empty() {
        return Err(Failure {
            exit: Exit::Failure,
            error: anyhow!(
                "tests of the benchmark's binaries that no recommendation names: {} (add them to \
                 provisioner::benchmark)",
                unlisted.join(", ")
            ),
        });
    }
    if !failed.is_empty() {
        return Err(Failure { exit: Exit::Failure, error: anyhow!("CIS checks failed: {}", failed.join("; ")) });
    }
    Ok(())
}

/// The nextest filter: every test the table names, and every test of the benchmark's
/// own binaries (so that one missing from the table is seen).
fn filter_expression() -> String {
    let others: Vec<&str> = benchmark::tests()
        .into_iter()
        .filter(|test| test.split_once("::").is_none_or(|(binary, _)| !BENCHMARK_BINARIES.contains(&binary)))
        .collect();
    let mut terms: Vec<String> = BENCHMARK_BINARIES.iter().map(|binary| format!("binary(={binary})")).collect();
    if !others.is_empty() {
        terms.push(crate::suite_run::filter_of(&others));
    }
    terms.join(" | ")
}

fn print_report(rows: &[Assessment], unlisted: &[String], json: bool) -> Result<(), Failure> {
    let count = |status: Status| rows.iter().filter(|row| row.status == status).count();
    if json {
        let recommendations: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let tests: Vec<serde_json::Value> = row
                    .tests
                    .iter()
                    .map(|(name, outcome)| {
                        let (result, reason) = match outcome {
                            None => ("not-run", None),
                            Some(TestOutcome::Passed) => ("pass", None),
                            Some(TestOutcome::NotApplicable(reason)) => ("not-applicable", Some(reason)),
                            Some(TestOutcome::Failed(reason)) => ("fail", Some(reason)),
                        };
                        serde_json::json!({ "test": name, "result": result, "reason": reason })
                    })
                    .collect();
                serde_json::json!({
                    "numbers": row.recommendation.numbers,
                    "title": row.recommendation.title,
                    "status": row.status.label(),
                    "reason": row.reason,
                    "tests": tests,
                })
            })
            .collect();
        let report = serde_json::json!({
            "benchmark": "cis-1.20",
            "recommendations": recommendations,
            "unlisted_tests": unlisted,
            "summary": {
                "pass": count(Status::Pass),
                "fail": count(Status::Fail),
                "info": count(Status::Info),
            },
        });
        return crate::machine_verbs::print_stdout(
            &serde_json::to_string_pretty(&report).context("serialize the report")?,
        );
    }
    crate::machine_verbs::print_stdout(&text_report(rows, unlisted))
}

/// The report as kube-bench prints it: a status, the numbers and title, the reason on
/// the next line, then the summary.
fn text_report(rows: &[Assessment], unlisted: &[String]) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("CIS Kubernetes Benchmark (kube-bench profile cis-1.20)\n");
    for row in rows {
        let _ = writeln!(text, "[{}] {} {}", row.status.label(), row.recommendation.numbers, row.recommendation.title);
        let _ = writeln!(text, "       {}", row.reason);
    }
    for test in unlisted {
        let _ = writeln!(text, "[FAIL] {test} is a benchmark test that no recommendation names");
    }
    let _ = writeln!(text, "\n== Summary ==");
    for status in [Status::Pass, Status::Fail, Status::Info] {
        let _ = writeln!(text, "{} checks {}", rows.iter().filter(|row| row.status == status).count(), status.label());
    }
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::suite_run::parse_junit;

    /// A report as nextest writes it: one test passed, two failed with a panic, one
    /// passed without checking (not applicable), one of another binary.
    const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="5" failures="2" errors="0">
    <testsuite name="conformance::cis" tests="4" disabled="0" errors="0" failures="2">
        <testcase name="cis_1_1_11_etcd_data_directories_are_private" classname="conformance::cis" time="0.4">
            <system-out>running 1 test
test cis_1_1_11_etcd_data_directories_are_private ... ok
</system-out>
        </testcase>
        <testcase name="cis_1_2_20_apiservers_serve_no_profiles" classname="conformance::cis" time="0.5">
            <failure type="test failure with exit code 101">thread &apos;cis_1_2_20_apiservers_serve_no_profiles&apos; panicked at conformance/tests/cis.rs:300:5:
master2: GET /debug/pprof/ answered 200, not 404
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace</failure>
        </testcase>
        <testcase name="cis_1_2_21_to_24_apiservers_write_an_audit_log" classname="conformance::cis" time="0.5">
            <failure type="test failure with exit code 101">thread &apos;cis_1_2_21_to_24_apiservers_write_an_audit_log&apos; panicked at conformance/tests/cis.rs:400:9:
requests missing from the audit logs:
  master1: GET /unique-path
</failure>
        </testcase>
        <testcase name="cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node" classname="conformance::cis" time="0.1">
            <system-err>not applicable: NodeRestriction needs 2 nodes with role worker; this topology has 1
</system-err>
        </testcase>
    </testsuite>
    <testsuite name="conformance::security" tests="1" disabled="0" errors="0" failures="0">
        <testcase name="kubelets_serve_no_read_only_port" classname="conformance::security" time="0.3"/>
    </testsuite>
</testsuites>"#;

    fn outcomes() -> BTreeMap<String, TestOutcome> {
        parse_junit(JUNIT).expect("the sample report parses")
    }

    #[test]
    fn the_junit_report_gives_each_test_its_outcome_and_the_panic_message() {
        let outcomes = outcomes();
        assert_eq!(outcomes["cis::cis_1_1_11_etcd_data_directories_are_private"], TestOutcome::Passed);
        assert_eq!(
            outcomes["cis::cis_1_2_20_apiservers_serve_no_profiles"],
            TestOutcome::Failed("master2: GET /debug/pprof/ answered 200, not 404".into())
        );
        assert_eq!(
            outcomes["cis::cis_1_2_21_to_24_apiservers_write_an_audit_log"],
            TestOutcome::Failed("requests missing from the audit logs: master1: GET /unique-path".into()),
            "a first line that ends in a colon takes the next one with it"
        );
        assert_eq!(
            outcomes["cis::cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node"],
            TestOutcome::NotApplicable("NodeRestriction needs 2 nodes with role worker; this topology has 1".into())
        );
        assert_eq!(outcomes["security::kubelets_serve_no_read_only_port"], TestOutcome::Passed);
        assert!(parse_junit("<testsuites><testcase/></testsuites>").is_err(), "a testcase without a name");
    }

    #[test]
    fn the_filter_runs_the_benchmark_binaries_and_the_other_named_tests_only() {
        let filter = filter_expression();
        assert!(filter.starts_with("binary(=cis) | "), "{filter}");
        assert!(filter.contains("(binary(=security) & test(=kubelets_serve_no_read_only_port))"), "{filter}");
        assert!(!filter.contains("test(=cis_"), "the cis binary is run whole: {filter}");
    }

    #[test]
    fn the_text_report_has_a_line_per_recommendation_and_a_summary() {
        let outcomes = outcomes();
        let rows: Vec<Assessment> = RECOMMENDATIONS.iter().map(|row| assess(row, &outcomes)).collect();
        let text = text_report(&rows, &["cis::cis_9_9_9_something_new".to_string()]);
        assert!(text.contains("[PASS] 1.1.11 the etcd data directory is 700 or stricter"), "{text}");
        assert!(text.contains("[FAIL] 1.2.20 kube-apiserver --profiling=false"), "{text}");
        assert!(text.contains("[FAIL] cis::cis_9_9_9_something_new is a benchmark test"), "{text}");
        let summary: Vec<&str> = text.lines().skip_while(|line| *line != "== Summary ==").collect();
        assert_eq!(summary.len(), 4, "{text}");
        assert!(summary[1].ends_with("checks PASS") && summary[3].ends_with("checks INFO"), "{text}");
    }
}
