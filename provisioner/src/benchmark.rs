//! The CIS Kubernetes Benchmark as the lab meets it: one row per recommendation (or
//! group of recommendations that one check proves), in the numbering of kube-bench's
//! `cis-1.20` profile (Kubernetes 1.19-1.21), with the conformance tests that check it
//! by behaviour. `lab bench` runs those tests and prints a kube-bench-style report from
//! this table, so the report and the suite share one implementation of each check.
//!
//! A recommendation the lab does not follow is a row too, with the reason, so that the
//! report says so rather than leaving it out.

use std::collections::BTreeMap;

/// One row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The benchmark's numbers, as `1.2.21-1.2.24` or `1.2.5, 4.2.10`.
    pub numbers: &'static str,
    /// What it asks for, in the benchmark's terms.
    pub title: &'static str,
    /// The conformance tests (`BINARY::TEST`) that must all pass; each is proven able to
    /// fail by a fault of the catalogue.
    pub checked_by: &'static [&'static str],
}

/// The recommendations, in the benchmark's order.
pub const RECOMMENDATIONS: &[Recommendation] = &[
    Recommendation {
        numbers: "1.1.9-1.1.10, 1.1.13-1.1.21, 4.1.1-4.1.10",
        title: "configuration files, certificates and keys are owned by root, 644 or stricter, keys and \
                kubeconfigs 600",
        checked_by: &[
            "cis::cis_1_1_and_4_1_configuration_files_are_owned_by_root_and_mode_644_or_stricter",
            "cis::cis_1_1_and_4_1_every_planned_file_has_its_planned_mode_and_owner",
            "security::private_keys_and_kubeconfigs_are_readable_by_root_only",
        ],
    },
    Recommendation {
        numbers: "1.1.11",
        title: "the etcd data directory is 700 or stricter",
        checked_by: &["cis::cis_1_1_11_etcd_data_directories_are_private"],
    },
    Recommendation {
        numbers: "1.1.12",
        title: "the etcd data directory is owned by etcd:etcd (etcd runs as etcd)",
        checked_by: &["cis::cis_1_1_12_etcd_runs_as_its_own_user_and_owns_its_data"],
    },
    Recommendation {
        numbers: "1.2.1",
        title: "kube-apiserver --anonymous-auth=false",
        checked_by: &["security::apiservers_refuse_anonymous_requests"],
    },
    Recommendation {
        numbers: "1.2.5, 4.2.10",
        title: "kube-apiserver --kubelet-certificate-authority; kubelet serves a certificate the lab CA signed",
        checked_by: &["cis::cis_1_2_5_and_4_2_10_apiservers_reach_kubelets_by_their_lab_certificates_only"],
    },
    Recommendation {
        numbers: "1.2.7-1.2.9",
        title: "kube-apiserver --authorization-mode includes Node and RBAC, not AlwaysAllow",
        checked_by: &["security::apiservers_authorize_with_node_and_rbac"],
    },
    Recommendation {
        numbers: "1.2.16",
        title: "the NodeRestriction admission plugin is on",
        checked_by: &["cis::cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node"],
    },
    Recommendation {
        numbers: "1.2.18-1.2.19",
        title: "kube-apiserver has no insecure port (--insecure-bind-address unset, --insecure-port=0)",
        checked_by: &["cis::cis_1_2_18_and_1_2_19_apiservers_serve_no_insecure_port"],
    },
    Recommendation {
        numbers: "1.2.20",
        title: "kube-apiserver --profiling=false",
        checked_by: &["cis::cis_1_2_20_apiservers_serve_no_profiles"],
    },
    Recommendation {
        numbers: "1.2.21-1.2.24",
        title: "kube-apiserver writes an audit log, kept 30 days, 10 files of at most 100 MB",
        checked_by: &["cis::cis_1_2_21_to_24_apiservers_write_an_audit_log"],
    },
    Recommendation {
        numbers: "1.2.32-1.2.33",
        title: "Secrets are encrypted at rest (--encryption-provider-config with aescbc)",
        checked_by: &["cis::cis_1_2_32_and_33_apiservers_encrypt_secrets_in_etcd"],
    },
    Recommendation {
        numbers: "1.2.34",
        title: "strong TLS cipher suites only, on kube-apiserver (and on etcd, the controller managers and \
                the schedulers)",
        checked_by: &[
            "cis::cis_1_2_34_apiservers_refuse_old_tls_and_weak_ciphers",
            "etcd::every_member_refuses_weak_ciphers",
            "security::controller_managers_and_schedulers_refuse_old_tls_and_weak_ciphers",
        ],
    },
    Recommendation {
        numbers: "1.3.2",
        title: "kube-controller-manager --profiling=false",
        checked_by: &["cis::cis_1_3_2_controller_managers_serve_no_profiles"],
    },
    Recommendation {
        numbers: "1.3.6, 4.2.11-4.2.12",
        title: "kubelet certificate rotation (RotateKubeletServerCertificate, --rotate-certificates)",
        checked_by: &[
            "cis::cis_4_2_11_and_4_2_12_kubelets_renew_their_certificates_through_the_api",
            "cis::cis_1_3_6_kubelet_renewals_are_signed_for_the_nodes_own_names_only",
        ],
    },
    Recommendation {
        numbers: "1.3.7, 1.4.2",
        title: "kube-controller-manager and kube-scheduler --bind-address=127.0.0.1",
        checked_by: &["firewall::health_and_metrics_ports_listen_on_loopback_only"],
    },
    Recommendation {
        numbers: "1.3.7, 1.4.2 (insecure ports)",
        title: "kube-controller-manager and kube-scheduler serve no plain HTTP port (--port=0)",
        checked_by: &[
            "cis::cis_1_3_7_and_1_4_2_controller_managers_and_schedulers_serve_no_plain_http",
            "componentstatuses::scheduler_controller_manager_and_every_etcd_member_are_healthy",
        ],
    },
    Recommendation {
        numbers: "1.4.1",
        title: "kube-scheduler --profiling=false",
        checked_by: &["cis::cis_1_4_1_schedulers_serve_no_profiles"],
    },
    Recommendation {
        numbers: "2.1-2.2, 2.4-2.5",
        title: "etcd serves clients and peers over TLS and requires their certificates",
        checked_by: &[
            "etcd::clients_without_a_certificate_are_refused",
            "security::etcd_requires_client_and_peer_certificates",
        ],
    },
    Recommendation {
        numbers: "2.7",
        title: "etcd has a CA of its own",
        checked_by: &["cis::cis_2_7_etcd_trusts_only_its_own_ca"],
    },
    Recommendation {
        numbers: "4.2.1-4.2.2",
        title: "kubelet --anonymous-auth=false, --authorization-mode=Webhook",
        checked_by: &["security::kubelets_refuse_anonymous_requests_and_authorize_through_the_apiserver"],
    },
    Recommendation {
        numbers: "4.2.4",
        title: "kubelet --read-only-port=0",
        checked_by: &["security::kubelets_serve_no_read_only_port"],
    },
    Recommendation {
        numbers: "4.2.6",
        title: "kubelet --protect-kernel-defaults=true",
        checked_by: &["cis::cis_4_2_6_kubelets_protect_kernel_defaults"],
    },
    Recommendation {
        numbers: "4.2.13",
        title: "kubelet strong TLS cipher suites only",
        checked_by: &["cis::cis_4_2_13_kubelets_refuse_old_tls_and_weak_ciphers"],
    },
];

/// The conformance test binaries whose every test belongs to some row: a test there that
/// no row names is reported as a finding.
pub const BENCHMARK_BINARIES: &[&str] = &["cis"];

/// Every test the rows name, `BINARY::TEST`, each once, in the table's order.
pub fn tests() -> Vec<&'static str> {
    let mut tests: Vec<&'static str> = Vec::new();
    for recommendation in RECOMMENDATIONS {
        for name in recommendation.checked_by {
            if !tests.contains(name) {
                tests.push(name);
            }
        }
    }
    tests
}

/// What one conformance test did, as its run reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    Passed,
    /// It passed without checking: the topology lacks what it needs, and why.
    NotApplicable(String),
    /// It failed, and its message.
    Failed(String),
}

/// A recommendation's place in the report, as kube-bench names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Info,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Info => "INFO",
        }
    }
}

/// One recommendation, assessed from its tests' outcomes.
#[derive(Debug)]
pub struct Assessment {
    pub recommendation: &'static Recommendation,
    pub status: Status,
    /// One line: the failing test and its message, what checked it, or the reason.
    pub reason: String,
    /// Each named test with its outcome (`None`: it did not run).
    pub tests: Vec<(&'static str, Option<TestOutcome>)>,
}

/// Assesses `recommendation` from the outcomes of the tests that ran, by `BINARY::TEST`.
/// A named test that did not run fails it: nothing checked it. A recommendation all of
/// whose tests did not apply to the topology is `Info`.
pub fn assess(recommendation: &'static Recommendation, outcomes: &BTreeMap<String, TestOutcome>) -> Assessment {
    let names = recommendation.checked_by;
    let tests: Vec<(&'static str, Option<TestOutcome>)> =
        names.iter().map(|name| (*name, outcomes.get(*name).cloned())).collect();
    let failures: Vec<String> = tests
        .iter()
        .filter_map(|(name, outcome)| match outcome {
            None => Some(format!("{name} did not run")),
            Some(TestOutcome::Failed(reason)) => Some(format!("{name}: {reason}")),
            Some(_) => None,
        })
        .collect();
    let not_applicable: Vec<&str> = tests
        .iter()
        .filter_map(|(_, outcome)| match outcome {
            Some(TestOutcome::NotApplicable(reason)) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    let (status, reason) = if let Some(first) = failures.first() {
        (Status::Fail, first.clone())
    } else if not_applicable.len() == tests.len() {
        (Status::Info, format!("not applicable: {}", not_applicable[0]))
    } else {
        let names: Vec<&str> = names.iter().map(|name| name.split_once("::").map_or(*name, |(_, name)| name)).collect();
        (Status::Pass, format!("checked by {}", names.join(", ")))
    };
    Assessment { recommendation, status, reason, tests }
}

/// The tests of the benchmark's binaries among `outcomes` that no recommendation names.
pub fn unlisted_tests(outcomes: &BTreeMap<String, TestOutcome>) -> Vec<String> {
    let named = tests();
    outcomes
        .keys()
        .filter(|test| test.split_once("::").is_some_and(|(binary, _)| BENCHMARK_BINARIES.contains(&binary)))
        .filter(|test| !named.contains(&test.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_test_is_binary_and_name_and_every_cis_binary_test_carries_its_number() {
        for test in tests() {
            let (binary, name) = test.split_once("::").unwrap_or_else(|| panic!("{test} is not BINARY::TEST"));
            assert!(!binary.is_empty() && !name.is_empty() && !name.contains("::"), "{test}");
            if BENCHMARK_BINARIES.contains(&binary) {
                assert!(name.starts_with("cis_"), "{test}: the cis tests' names carry their CIS numbers");
            }
        }
    }

    #[test]
    fn every_row_has_numbers_a_title_and_a_check() {
        for recommendation in RECOMMENDATIONS {
            assert!(recommendation.numbers.starts_with(|c: char| c.is_ascii_digit()), "{recommendation:?}");
            assert!(!recommendation.title.is_empty(), "{recommendation:?}");
            assert!(!recommendation.checked_by.is_empty(), "{recommendation:?}");
        }
    }
    fn row(numbers: &str) -> &'static Recommendation {
        RECOMMENDATIONS.iter().find(|row| row.numbers == numbers).expect("a row of the table")
    }

    fn outcomes() -> BTreeMap<String, TestOutcome> {
        BTreeMap::from([
            ("cis::cis_1_1_11_etcd_data_directories_are_private".to_string(), TestOutcome::Passed),
            (
                "cis::cis_1_2_20_apiservers_serve_no_profiles".to_string(),
                TestOutcome::Failed("master2: GET /debug/pprof/ answered 200, not 404".into()),
            ),
            (
                "cis::cis_1_2_16_apiservers_let_a_kubelet_modify_only_its_own_node".to_string(),
                TestOutcome::NotApplicable("it needs 2 workers; this topology has 1".into()),
            ),
        ])
    }

    #[test]
    fn a_recommendation_passes_fails_or_is_not_applicable_by_its_tests() {
        let outcomes = outcomes();
        let passed = assess(row("1.1.11"), &outcomes);
        assert_eq!(passed.status, Status::Pass, "{passed:?}");
        assert_eq!(passed.reason, "checked by cis_1_1_11_etcd_data_directories_are_private");
        let failed = assess(row("1.2.20"), &outcomes);
        assert_eq!(failed.status, Status::Fail);
        assert!(failed.reason.contains("cis_1_2_20") && failed.reason.contains("answered 200"), "{failed:?}");
        let not_applicable = assess(row("1.2.16"), &outcomes);
        assert_eq!(not_applicable.status, Status::Info);
        assert_eq!(not_applicable.reason, "not applicable: it needs 2 workers; this topology has 1");
        // A named test that did not run fails its row: nothing checked it.
        let not_run = assess(row("4.2.6"), &outcomes);
        assert_eq!(not_run.status, Status::Fail);
        assert!(not_run.reason.ends_with("did not run"), "{not_run:?}");
    }

    #[test]
    fn a_test_of_the_benchmark_binaries_that_no_row_names_is_a_finding() {
        let mut outcomes = outcomes();
        assert!(unlisted_tests(&outcomes).is_empty());
        outcomes.insert("cis::cis_9_9_9_something_new".into(), TestOutcome::Passed);
        outcomes.insert("nodes::every_node_is_ready".into(), TestOutcome::Passed);
        assert_eq!(unlisted_tests(&outcomes), vec!["cis::cis_9_9_9_something_new".to_string()]);
    }
}
