//! The failover drills: what each one does to the lab, what it measures and the bound it
//! must stay within. The drills themselves are conformance tests (the `failover` group,
//! run one at a time); this table is what they and `lab drill` share, so that a bound is
//! written once. Each drill writes a [`DrillRecord`] into the state directory when it has
//! its figure; `lab drill` runs the tests and prints those records.
//!
//! Bounds are for machines at full speed; the drills stretch them by the lab's time
//! scale (emulated VMs), as every other deadline of the suite.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One drill of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drill {
    /// A short kebab-case name, as `lab drill NAME` takes it.
    pub name: &'static str,
    /// The conformance test that runs it, as `BINARY::TEST`.
    pub test: &'static str,
    /// What the drill does to the lab, for a learner.
    pub action: &'static str,
    /// What it measures, the figure its record holds.
    pub measures: &'static str,
    /// What the figure must keep within.
    pub bound: Bound,
}

/// A drill's bound: a time the figure may not exceed, or a share of requests that must
/// have been answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    AtMost(Duration),
    AnsweredAtLeastPercent(f64),
}

impl Bound {
    /// The unit the figure and the bound are written in.
    pub fn unit(&self) -> &'static str {
        match self {
            Bound::AtMost(_) => "s",
            Bound::AnsweredAtLeastPercent(_) => "%",
        }
    }

    /// The bound as a number in its unit, time bounds stretched by `time_scale`.
    pub fn value(&self, time_scale: f64) -> f64 {
        match self {
            Bound::AtMost(duration) => duration.as_secs_f64() * time_scale,
            Bound::AnsweredAtLeastPercent(percent) => *percent,
        }
    }

    /// Whether `figure` (in the bound's unit) keeps within a bound of `bound`.
    pub fn holds(&self, figure: f64, bound: f64) -> bool {
        match self {
            Bound::AtMost(_) => figure <= bound,
            Bound::AnsweredAtLeastPercent(_) => figure >= bound,
        }
    }
}

impl Drill {
    /// The test's function name, without its binary.
    pub fn test_name(&self) -> &'static str {
        self.test.split_once("::").map_or(self.test, |(_, name)| name)
    }
}

/// Every drill, in the order `lab drill` runs them.
pub const DRILLS: &[Drill] = &[
    Drill {
        name: "keepalived-stopped-on-vip-holder",
        test: "failover::keepalived_moves_the_virtual_ip_when_its_holder_stops",
        action: "stops keepalived on the load balancer holding the virtual IP",
        measures: "the longest API outage through the virtual IP",
        bound: Bound::AtMost(Duration::from_secs(5)),
    },
    Drill {
        name: "haproxy-stopped-on-vip-holder",
        test: "failover::keepalived_moves_the_virtual_ip_when_haproxy_stops_on_its_holder",
        action: "stops HAProxy on the load balancer holding the virtual IP; keepalived stays up",
        measures: "the longest API outage through the virtual IP, until keepalived's check moved it",
        bound: Bound::AtMost(Duration::from_secs(5)),
    },
    Drill {
        name: "apiserver-stopped",
        test: "failover::the_api_keeps_answering_when_one_apiserver_stops",
        action: "stops the apiserver on the master holding the virtual IP",
        measures: "the longest API outage through the virtual IP",
        bound: Bound::AtMost(Duration::from_secs(5)),
    },
    Drill {
        name: "etcd-leader-killed",
        test: "failover::writes_resume_and_none_is_lost_when_the_etcd_leader_is_killed",
        action: "kills (SIGKILL) the etcd leader while a writer creates a ConfigMap every 100 ms",
        measures: "the longest time writes through the virtual IP failed (none acknowledged may be lost)",
        // A follower calls an election one to two election timeouts after the leader's
        // last heartbeat, and the apiserver's next try goes to the new leader: 2.5 to 5 s
        // and a second. (With etcd's default 1 s timeout it would be 1 to 2 s; the lab
        // waits longer so that a member starved of CPU on a shared host does not cause
        // elections, see `stages::etcd`.)
        bound: Bound::AtMost(Duration::from_millis(2 * crate::stages::etcd::ELECTION_TIMEOUT_MS as u64 + 1000)),
    },
    Drill {
        name: "first-etcd-member-stopped",
        test: "failover::the_api_keeps_answering_when_the_first_etcd_member_stops",
        action: "stops the etcd member listed first in the apiservers' --etcd-servers",
        measures: "the longest outage of reads through each apiserver and the virtual IP",
        bound: Bound::AtMost(Duration::from_secs(5)),
    },
    Drill {
        name: "etcd-quorum-lost",
        test: "failover::writes_and_watches_recover_after_etcd_loses_its_quorum",
        action: "stops two of the three etcd members until etcd ends the apiservers' watches",
        measures: "how long writes took to resume after the members started",
        bound: Bound::AtMost(Duration::from_secs(30)),
    },
    Drill {
        name: "dns-pod-deleted",
        test: "failover::cluster_dns_keeps_answering_when_one_of_its_pods_is_deleted",
        action: "deletes one cluster DNS pod while the host asks the cluster DNS 10 times a second",
        measures: "the share of queries answered, from before the deletion until the pod is gone and replaced",
        bound: Bound::AnsweredAtLeastPercent(99.0),
    },
    Drill {
        name: "control-plane-leaders-killed",
        test: "failover::another_master_leads_when_the_controller_manager_and_scheduler_leaders_are_killed",
        action: "kills (SIGKILL) the kube-controller-manager and kube-scheduler holding their leases",
        measures: "how long until another master held both leases",
        bound: Bound::AtMost(Duration::from_secs(20)),
    },
    Drill {
        name: "worker-machine-stopped",
        test: "failover::services_move_off_a_worker_whose_machine_stops",
        action: "powers off the machine of a worker running a cluster DNS pod and a NodePort Service's pod \
                 (`lab down --node`) while the host asks the cluster DNS and the node port on every other node \
                 10 times a second, then starts it again (`lab up --until machines`)",
        measures: "the share of queries and of requests answered (the lower), from the stop until the worker \
                   was Ready again",
        // The worker's kubelet takes its pods out of their Services before they stop
        // (graceful node shutdown), and the cluster DNS pod answers through its lame duck
        // meanwhile.
        bound: Bound::AnsweredAtLeastPercent(99.0),
    },
    Drill {
        name: "full-restart",
        test: "failover::every_object_and_pod_is_back_after_a_full_restart",
        action: "stops every machine (`lab down`) and starts the lab again (`lab up`), after making a ConfigMap, \
                 a Secret and a Deployment",
        measures: "how long from the start of `lab up` until the objects read back unchanged and the \
                   Deployment's pods ran again",
        // `lab up` after `lab down` took 27 s on the default lab (README, Measured,
        // 2026-12-07); the bound leaves room for a shared, noisy host.
        bound: Bound::AtMost(Duration::from_secs(150)),
    },
];

/// The drill named `name`.
pub fn by_name(name: &str) -> Option<&'static Drill> {
    DRILLS.iter().find(|drill| drill.name == name)
}

/// The drill that `test` (`BINARY::TEST` or the bare test name) runs.
pub fn by_test(test: &str) -> Option<&'static Drill> {
    DRILLS.iter().find(|drill| drill.test == test || drill.test_name() == test)
}

/// What one run of a drill measured, as it writes it to `STATE/drills/NAME.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    pub drill: String,
    /// The figure, in `unit`.
    pub value: f64,
    /// `s` (seconds) or `%` (of requests answered).
    pub unit: String,
    /// The bound the figure was held to, in `unit`; time bounds stretched by the lab's
    /// time scale.
    pub bound: f64,
    pub pass: bool,
    /// The drill's own one-line account (counts, per-node times).
    pub detail: String,
    /// When the record was written, in seconds since the epoch.
    pub at: f64,
}

/// The record `drill` left in `records_dir`, if any.
pub fn read_record(records_dir: &Path, drill: &Drill) -> Option<DrillRecord> {
    let text = std::fs::read_to_string(records_dir.join(format!("{}.json", drill.name))).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_names_are_unique_kebab_case_and_tests_are_failover_tests() {
        let mut names: Vec<&str> = DRILLS.iter().map(|drill| drill.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DRILLS.len(), "duplicate drill names");
        for drill in DRILLS {
            assert!(drill.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", drill.name);
            assert!(drill.test.starts_with("failover::"), "{} runs {}", drill.name, drill.test);
            assert!(drill.bound.value(1.0) > 0.0);
        }
    }

    #[test]
    fn time_bounds_stretch_and_hold_below_share_bounds_hold_above() {
        let time = Bound::AtMost(Duration::from_secs(5));
        assert_eq!(time.value(2.0), 10.0);
        assert!(time.holds(10.0, 10.0) && !time.holds(10.1, 10.0));
        let share = Bound::AnsweredAtLeastPercent(99.0);
        assert_eq!(share.value(2.0), 99.0);
        assert!(share.holds(99.5, 99.0) && !share.holds(98.9, 99.0));
        assert_eq!((time.unit(), share.unit()), ("s", "%"));
    }

    #[test]
    fn a_drill_is_found_by_name_and_by_test() {
        let drill = by_name("etcd-leader-killed").expect("the etcd leader drill");
        assert_eq!(by_test(drill.test), Some(drill));
        assert_eq!(by_test(drill.test_name()), Some(drill));
        assert_eq!(by_name("no-such-drill"), None);
    }

    #[test]
    fn a_record_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let drill = &DRILLS[0];
        assert_eq!(read_record(dir.path(), drill), None);
        let record = DrillRecord {
            drill: drill.name.to_string(),
            value: 1.5,
            unit: "s".to_string(),
            bound: 5.0,
            pass: true,
            detail: "0 of 40 requests failed".to_string(),
            at: 1.0,
        };
        std::fs::write(dir.path().join(format!("{}.json", drill.name)), serde_json::to_string(&record).unwrap())
            .unwrap();
        assert_eq!(read_record(dir.path(), drill), Some(record));
    }
}
