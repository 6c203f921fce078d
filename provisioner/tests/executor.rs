//! The executor's intended calls for one stage, seen through the recording fake of
//! the Host seam: what a fresh node gets, what a converged node gets (nothing
//! written, nothing restarted), and how a failed readiness check is reported.

use std::sync::Mutex;
use std::time::Duration;

use provisioner::executor::{
    file_state_script, ExecError, Executor, Progress, Silent, APPLIED_DIR, FILE_STATE_QUERY, PENDING_DIR, SURVEY_QUERY,
    UNIT_STATE_QUERY,
};
use provisioner::host::{Call, Host, Output, RecordingHost};
use provisioner::plan::{CheckSpec, CommandSpec, Content, FileSpec, RunWhen, Stage, StagePlan, UnitSpec};
use sha2::{Digest, Sha256};

const UNIT: &str = "/etc/systemd/system/etcd.service";
const CONFIG: &str = "/etc/etcd/etcd.env";

fn etcd_like_stage() -> StagePlan {
    let mut stage = StagePlan::new(Stage::Etcd, "test chapter");
    let node = stage.node("master1");
    node.files.push(FileSpec::text(UNIT, 0o644, "[Service]\nExecStart=/usr/bin/etcd\n"));
    node.files.push(FileSpec::secret(CONFIG, "ETCD_NAME=master1\n"));
    node.commands.push(CommandSpec {
        description: "create the data directory".into(),
        script: "install -d -m 0700 /var/lib/etcd".into(),
        when: RunWhen::FilesChanged,
    });
    node.commands.push(CommandSpec {
        description: "always idempotent".into(),
        script: "true # always".into(),
        when: RunWhen::Always,
    });
    node.units.push(UnitSpec {
        name: "etcd.service".into(),
        restart_when_changed: vec![UNIT.into(), CONFIG.into()],
        ..UnitSpec::default()
    });
    node.checks.push(CheckSpec {
        description: "etcd is healthy".into(),
        script: "etcdctl endpoint health".into(),
        timeout_secs: 0,
    });
    stage
}

/// The file state query's answer of a node whose files are exactly `etcd_like_stage`'s.
fn planned_file_state() -> Output {
    let stdout = format!(
        "{} 644 root {UNIT}\n{} 600 root {CONFIG}\n",
        sha("[Service]\nExecStart=/usr/bin/etcd\n"),
        sha("ETCD_NAME=master1\n")
    );
    Output { status: 0, stdout, stderr: String::new() }
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn fresh_node_gets_files_reload_commands_restart_and_check_in_order() {
    let host = RecordingHost::new("master1");
    host.reply("systemctl enable", Output { status: 0, stdout: "restarted\n".into(), stderr: String::new() });
    let stage = etcd_like_stage();
    let executor = Executor::new([&host as &dyn Host]);

    let report = executor.run_stage(&stage, &Silent).expect("stage runs");

    let calls = host.calls();
    let files: Vec<&FileSpec> = stage.nodes[0].files.iter().collect();
    assert_eq!(calls[0], Call::Run(file_state_script(Stage::Etcd, &files, &["etcd.service"])));
    assert_eq!(calls[1], Call::Run(format!("mkdir -p {PENDING_DIR} && touch {PENDING_DIR}/etcd")));
    assert!(matches!(&calls[2], Call::Put { path, mode: 0o644, .. } if path == UNIT));
    assert!(matches!(&calls[3], Call::Put { path, mode: 0o600, .. } if path == CONFIG));
    assert_eq!(calls[4], Call::Run("systemctl daemon-reload".into()));
    assert_eq!(calls[5], Call::Run("install -d -m 0700 /var/lib/etcd".into()));
    assert_eq!(calls[6], Call::Run("true # always".into()));
    assert!(
        matches!(&calls[7], Call::Run(script) if script.contains("systemctl restart --no-block etcd.service")),
        "a changed input restarts the unit: {:?}",
        calls[7]
    );
    assert!(
        matches!(&calls[7], Call::Run(script) if script.starts_with("systemctl enable --quiet --no-reload etcd.service ")),
        "enabling the unit makes systemd re-read nothing (the reload above did): {:?}",
        calls[7]
    );
    assert!(
        matches!(&calls[8], Call::Run(script) if script.contains("systemctl list-jobs --no-legend etcd.service")),
        "the checks wait until the restart has happened, not against the old process: {:?}",
        calls[8]
    );
    assert_eq!(calls[9], Call::Run(format!("rm -f {PENDING_DIR}/etcd")));
    assert_eq!(calls[10], Call::Run("etcdctl endpoint health".into()));
    assert!(
        matches!(&calls[11], Call::Run(script) if script.starts_with(&format!("mkdir -p {APPLIED_DIR} && {{ echo 'digest "))),
        "a stage that passed is recorded: {:?}",
        calls[11]
    );
    assert_eq!(calls.len(), 12);
    assert_eq!(report.changed_files(), 2);
    assert_eq!(report.changed_units(), 1);
}

#[test]
fn converged_node_writes_nothing_and_restarts_nothing() {
    let host = RecordingHost::new("master1");
    host.reply(FILE_STATE_QUERY, planned_file_state());
    let executor = Executor::new([&host as &dyn Host]);

    let report = executor.run_stage(&etcd_like_stage(), &Silent).expect("stage runs");

    let calls = host.calls();
    assert!(calls.iter().all(|call| !matches!(call, Call::Put { .. } | Call::Copy { .. })), "{calls:?}");
    assert!(!calls.contains(&Call::Run("systemctl daemon-reload".into())));
    assert!(!calls.contains(&Call::Run("install -d -m 0700 /var/lib/etcd".into())), "FilesChanged command skipped");
    assert!(calls.contains(&Call::Run("true # always".into())), "Always command still runs");
    assert!(calls.iter().any(|call| matches!(call, Call::Run(s) if s.contains("is-active --quiet etcd.service"))));
    assert!(calls.iter().all(|call| !matches!(call, Call::Run(s) if s.contains("systemctl restart"))));
    assert_eq!((report.changed_files(), report.changed_units()), (0, 0));
}

/// A unit that was not running before the stage wrote its inputs reads them when it
/// starts: it is started (if a command of the stage has not started it already), never
/// started and then restarted.
#[test]
fn a_unit_stopped_before_its_inputs_changed_is_started_not_restarted() {
    let host = RecordingHost::new("master1");
    host.reply(
        FILE_STATE_QUERY,
        Output { status: 0, stdout: "stopped-unit etcd.service\n".into(), stderr: String::new() },
    );
    host.reply("systemctl enable", Output { status: 0, stdout: "started\n".into(), stderr: String::new() });

    let report = Executor::new([&host as &dyn Host]).run_stage(&etcd_like_stage(), &Silent).expect("stage runs");

    let calls = host.calls();
    let unit_call = calls
        .iter()
        .find_map(|call| match call {
            Call::Run(script) if script.starts_with("systemctl enable") => Some(script),
            _ => None,
        })
        .expect("the unit is enabled and started");
    assert!(!unit_call.contains("systemctl restart"), "{unit_call}");
    assert!(unit_call.contains("systemctl is-active --quiet etcd.service"), "{unit_call}");
    assert_eq!((report.changed_files(), report.changed_units()), (2, 1));
}

/// firewalld flushes kube-proxy's rules whenever it starts: a stage that starts a
/// stopped firewalld restarts kube-proxy after it though no file changed, and one that
/// finds firewalld running leaves kube-proxy alone.
#[test]
fn a_unit_restarts_after_the_start_of_a_unit_it_follows() {
    let firewall_like_stage = || {
        let mut stage = etcd_like_stage();
        let node = &mut stage.nodes[0];
        node.units = vec![
            UnitSpec {
                name: "firewalld.service".into(),
                restart_when_changed: vec![CONFIG.into()],
                ..UnitSpec::default()
            },
            UnitSpec {
                name: "kube-proxy.service".into(),
                restart_when_changed: vec![UNIT.into()],
                restart_after_starting: vec!["firewalld.service".into()],
            },
        ];
        stage
    };
    let unit_calls = |stopped: &str| {
        let host = RecordingHost::new("master1");
        let mut state = planned_file_state();
        state.stdout.push_str(stopped);
        host.reply(FILE_STATE_QUERY, state);
        Executor::new([&host as &dyn Host]).run_stage(&firewall_like_stage(), &Silent).expect("stage runs");
        host.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Run(script) if script.starts_with("systemctl enable") => Some(script),
                _ => None,
            })
            .collect::<Vec<_>>()
    };

    let started = unit_calls("stopped-unit firewalld.service\n");
    assert!(started[0].contains("systemctl start --no-block firewalld.service"), "{started:?}");
    assert!(started[1].contains("systemctl restart --no-block kube-proxy.service"), "{started:?}");

    let running = unit_calls("");
    assert!(running.iter().all(|script| !script.contains("systemctl restart")), "{running:?}");
}

/// A run killed after writing the files but before restarting the unit left the
/// stage's marker; the next run finds the files up to date and must still reload,
/// rerun the `FilesChanged` commands and restart, then clear the marker.
/// A new nspawn node's Kubernetes binaries are hard links into the artifact cache:
/// the file state query knows them by inode, size and modification time and reads
/// neither them nor their source, while a copy, however alike, is hashed; and a
/// node whose file is the source itself gets nothing written.
#[test]
fn an_artifacts_source_itself_is_known_without_reading_it() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let source = directory.path().join("kubelet");
    std::fs::write(&source, "the kubelet\n").expect("write the source");
    let (linked, copied) = (directory.path().join("linked"), directory.path().join("copied"));
    std::fs::hard_link(&source, &linked).expect("link");
    std::fs::copy(&source, &copied).expect("copy");
    let artifact = |path: &std::path::Path| FileSpec {
        path: path.display().to_string(),
        mode: 0o644,
        owner: "root".into(),
        content: Content::Artifact { path: source.clone() },
    };
    let files = [artifact(&linked), artifact(&copied)];
    let script = file_state_script(Stage::Hosts, &files.iter().collect::<Vec<_>>(), &[]);
    let output = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("run the query here");
    let stdout = String::from_utf8(output.stdout).expect("text");
    let line_of = |path: &std::path::Path| {
        let suffix = format!(" {}", path.display());
        stdout.lines().find(|line| line.ends_with(&suffix)).unwrap_or_else(|| panic!("no line for {suffix}: {stdout}"))
    };
    assert!(line_of(&linked).starts_with("source-itself "), "{stdout}");
    assert!(line_of(&copied).starts_with(&sha("the kubelet\n")), "{stdout}");

    let host = RecordingHost::new("master1");
    let answer = format!("source-itself 644 root {}\n", linked.display());
    host.reply(FILE_STATE_QUERY, Output { status: 0, stdout: answer, stderr: String::new() });
    let mut stage = StagePlan::new(Stage::Hosts, "test chapter");
    stage.node("master1").files.push(artifact(&linked));
    let report = Executor::new([&host as &dyn Host]).run_stage(&stage, &Silent).expect("stage runs");
    assert_eq!(report.changed_files(), 0, "{:#?}", host.calls());
}

#[test]
fn an_interrupted_run_is_finished_by_the_next_one() {
    let host = RecordingHost::new("master1");
    let state = format!(
        "pending\n{} 644 root {UNIT}\n{} 600 root {CONFIG}\n",
        sha("[Service]\nExecStart=/usr/bin/etcd\n"),
        sha("ETCD_NAME=master1\n")
    );
    host.reply(FILE_STATE_QUERY, Output { status: 0, stdout: state, stderr: String::new() });
    let report = Executor::new([&host as &dyn Host]).run_stage(&etcd_like_stage(), &Silent).unwrap();

    let calls = host.calls();
    assert!(calls.iter().all(|call| !matches!(call, Call::Put { .. })), "nothing to write: {calls:?}");
    assert!(calls.contains(&Call::Run("systemctl daemon-reload".into())));
    assert!(calls.contains(&Call::Run("install -d -m 0700 /var/lib/etcd".into())));
    assert!(calls
        .iter()
        .any(|call| matches!(call, Call::Run(s) if s.contains("systemctl restart --no-block etcd.service"))));
    assert_eq!(calls.iter().filter(|call| matches!(call, Call::Run(s) if s.starts_with("rm -f"))).count(), 1);
    assert_eq!(report.changed_files(), 0);
}

#[test]
fn a_wrong_mode_alone_rewrites_the_file() {
    let host = RecordingHost::new("master1");
    let state = format!(
        "{} 644 root {UNIT}\n{} 644 root {CONFIG}\n",
        sha("[Service]\nExecStart=/usr/bin/etcd\n"),
        sha("ETCD_NAME=master1\n")
    );
    host.reply(FILE_STATE_QUERY, Output { status: 0, stdout: state, stderr: String::new() });
    let report = Executor::new([&host as &dyn Host]).run_stage(&etcd_like_stage(), &Silent).unwrap();
    assert_eq!(report.nodes[0].changed_files, vec![CONFIG.to_string()]);
}

#[test]
fn failed_check_names_stage_node_check_and_shows_the_journal() {
    let host = RecordingHost::new("master1");
    host.reply("etcdctl", Output { status: 1, stdout: String::new(), stderr: "connection refused\n".into() });
    host.reply("journalctl", Output { status: 0, stdout: "etcd[42]: bad flag --nope\n".into(), stderr: String::new() });
    let executor = Executor::new([&host as &dyn Host]).with_check_interval(Duration::from_millis(1));

    let error = executor.run_stage(&etcd_like_stage(), &Silent).unwrap_err();

    assert!(matches!(error, ExecError::Check { .. }));
    let message = error.to_string();
    for expected in ["stage etcd", "on master1", "etcd is healthy", "connection refused", "bad flag --nope"] {
        assert!(message.contains(expected), "{expected:?} missing from: {message}");
    }
}

#[test]
fn a_stage_for_an_unknown_node_is_an_error_naming_it() {
    let host = RecordingHost::new("worker9");
    let error = Executor::new([&host as &dyn Host]).run_stage(&etcd_like_stage(), &Silent).unwrap_err();
    assert_eq!(error.to_string(), "stage etcd on master1: no machine named master1 is connected");
}

/// The digest a first run records for `etcd_like_stage` on master1.
fn recorded_digest() -> String {
    recorded_digest_of(&etcd_like_stage())
}

/// The digest a first run records for `stage` on master1.
fn recorded_digest_of(stage: &StagePlan) -> String {
    let host = RecordingHost::new("master1");
    Executor::new([&host as &dyn Host]).run_stage(stage, &Silent).expect("stage runs");
    host.calls()
        .iter()
        .find_map(|call| match call {
            Call::Run(script) => script.split("echo 'digest ").nth(1).map(|rest| rest[..64].to_string()),
            _ => None,
        })
        .expect("the run recorded its digest")
}

/// What a node answers to the survey for `etcd_like_stage`, with `now` as the signature
/// of the unit file today and `inactive` units.
fn survey_answer(digest: &str, unit_now: &str, inactive: &[&str]) -> Output {
    let mut stdout = format!(
        "stage etcd\ndigest {digest}\nfile {UNIT} 40 11 1700000000 644 root\nfile {CONFIG} 18 12 1700000000 600 root\n\
         now {UNIT} {unit_now}\nnow {CONFIG} 18 12 1700000000 600 root\n"
    );
    for unit in inactive {
        stdout.push_str(&format!("inactive {unit}\n"));
    }
    Output { status: 0, stdout, stderr: String::new() }
}

#[test]
fn a_surveyed_converged_node_only_runs_the_checks() {
    let digest = recorded_digest();
    let host = RecordingHost::new("master1");
    host.reply(SURVEY_QUERY, survey_answer(&digest, "40 11 1700000000 644 root", &[]));
    let executor = Executor::new([&host as &dyn Host]);
    let stage = etcd_like_stage();

    let survey = executor.survey(std::slice::from_ref(&stage)).expect("survey runs");
    assert!(survey.covers(std::slice::from_ref(&stage)));
    let report = executor.run_stage_surveyed(&stage, &survey, &Silent).expect("stage runs");

    let calls = host.calls();
    assert!(matches!(&calls[0], Call::Run(script) if script.starts_with(SURVEY_QUERY)));
    assert_eq!(calls[1..], [Call::Run("etcdctl endpoint health".into())], "only the check runs");
    assert_eq!((report.changed_files(), report.changed_units()), (0, 0));
}

#[test]
fn a_hand_edited_file_or_a_stopped_unit_makes_the_stage_run_again() {
    let digest = recorded_digest();
    let stage = etcd_like_stage();
    for answer in [
        // The unit file was written after the record: another size, inode and time.
        survey_answer(&digest, "52 99 1700000500 644 root", &[]),
        survey_answer(&digest, "40 11 1700000000 644 root", &["etcd.service"]),
        // The plan changed since the record.
        survey_answer(&"0".repeat(64), "40 11 1700000000 644 root", &[]),
    ] {
        let host = RecordingHost::new("master1");
        host.reply(SURVEY_QUERY, answer);
        let executor = Executor::new([&host as &dyn Host]);
        let survey = executor.survey(std::slice::from_ref(&stage)).expect("survey runs");
        assert!(!survey.is_converged(Stage::Etcd, "master1"));
        executor.run_stage_surveyed(&stage, &survey, &Silent).expect("stage runs");
        assert!(
            host.calls().iter().any(|call| matches!(call, Call::Run(script) if script.starts_with(FILE_STATE_QUERY))),
            "the stage compares its files again"
        );
    }
}

/// The scripts `host` was asked to run, in order.
fn scripts_run(host: &RecordingHost) -> Vec<String> {
    host.calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Run(script) => Some(script),
            _ => None,
        })
        .collect()
}

/// Where the first script containing `needle` comes among `scripts`.
fn position_of(scripts: &[String], needle: &str) -> usize {
    scripts.iter().position(|script| script.contains(needle)).unwrap_or_else(|| panic!("no {needle}: {scripts:#?}"))
}

/// What an earlier run recorded for the etcd-like stage with one more file and one
/// more unit, which the plan has since dropped.
fn survey_answer_with_retired(digest: &str, extra: &str) -> Output {
    let mut answer = survey_answer(digest, "40 11 1700000000 644 root", &[]);
    answer.stdout.push_str(&format!(
        "file /etc/etcd/old.conf 9 13 1700000000 644 root\nfile {extra} 9 14 1700000000 644 root\n\
         unit etcd.service\nunit etcd-defrag.timer\n"
    ));
    answer
}

/// The `wanted PATH IDENTITY` lines a first run of `stage` records on master1, as the
/// survey prints them back.
fn recorded_wanted_of(stage: &StagePlan) -> String {
    let host = RecordingHost::new("master1");
    Executor::new([&host as &dyn Host]).run_stage(stage, &Silent).expect("stage runs");
    let record = host
        .calls()
        .into_iter()
        .find_map(|call| match call {
            Call::Run(script) if script.contains(&format!("{APPLIED_DIR}/etcd.tmp")) => Some(script),
            _ => None,
        })
        .expect("the run recorded the stage");
    record
        .split("echo 'wanted ")
        .skip(1)
        .map(|rest| format!("wanted {}\n", &rest[..rest.find('\'').unwrap()]))
        .collect()
}

/// Only the config's planned content changed: the stage runs, but the unit file, as it
/// was left (same signature) and still wanted as it was, is not read again, while the
/// config is compared and rewritten.
#[test]
fn a_stage_whose_plan_changed_reads_only_the_files_that_may_differ() {
    let before = etcd_like_stage();
    let mut after = etcd_like_stage();
    after.nodes[0].files[1] = FileSpec::secret(CONFIG, "ETCD_NAME=master1\nETCD_DEBUG=1\n");
    let host = RecordingHost::new("master1");
    let mut answer = survey_answer(&recorded_digest_of(&before), "40 11 1700000000 644 root", &[]);
    answer.stdout.push_str(&recorded_wanted_of(&before));
    host.reply(SURVEY_QUERY, answer);
    host.reply(FILE_STATE_QUERY, planned_file_state());
    let executor = Executor::new([&host as &dyn Host]);

    let survey = executor.survey(std::slice::from_ref(&after)).expect("survey runs");
    assert!(!survey.is_converged(Stage::Etcd, "master1"));
    assert_eq!(survey.unchanged_files(Stage::Etcd, "master1").iter().collect::<Vec<_>>(), [UNIT]);
    let report = executor.run_stage_surveyed(&after, &survey, &Silent).expect("stage runs");

    let query = host
        .calls()
        .into_iter()
        .find_map(|call| match call {
            Call::Run(script) if script.starts_with(FILE_STATE_QUERY) => Some(script),
            _ => None,
        })
        .expect("the stage compares files");
    assert!(query.contains(CONFIG) && !query.contains(UNIT), "only the config is read: {query}");
    assert_eq!(report.nodes[0].changed_files, [CONFIG]);

    // A hand edit of the unit file (another signature) makes it compared again.
    let host = RecordingHost::new("master1");
    let mut answer = survey_answer(&recorded_digest_of(&before), "52 99 1700000500 644 root", &[]);
    answer.stdout.push_str(&recorded_wanted_of(&before));
    host.reply(SURVEY_QUERY, answer);
    let survey = Executor::new([&host as &dyn Host]).survey(std::slice::from_ref(&after)).expect("survey runs");
    assert!(survey.unchanged_files(Stage::Etcd, "master1").is_empty());
}

#[test]
fn a_file_or_unit_dropped_from_the_plan_is_removed_and_nothing_else() {
    let digest = recorded_digest();
    let stage = etcd_like_stage();
    let host = RecordingHost::new("master1");
    // The other stage of the plan still has /etc/kubernetes/kept.conf on this node.
    const KEPT: &str = "/etc/kubernetes/kept.conf";
    host.reply(SURVEY_QUERY, survey_answer_with_retired(&digest, KEPT));
    host.reply(FILE_STATE_QUERY, planned_file_state());
    let mut later = StagePlan::new(Stage::KubeApiserver, "test chapter");
    later.node("master1").files.push(FileSpec::text(KEPT, 0o644, "kept\n"));
    let executor = Executor::new([&host as &dyn Host]).with_whole_plan(&[stage.clone(), later]);

    let survey = executor.survey(std::slice::from_ref(&stage)).expect("survey runs");
    assert!(!survey.is_converged(Stage::Etcd, "master1"), "a stage with something retired is not converged");
    let retired = survey.retired(Stage::Etcd, "master1");
    assert_eq!(retired.files, ["/etc/etcd/old.conf"], "only the file no stage plans is retired");
    assert_eq!(retired.units, ["etcd-defrag.timer"]);
    let report = executor.run_stage_surveyed(&stage, &survey, &Silent).expect("stage runs");

    let scripts = scripts_run(&host);
    let position = |needle: &str| position_of(&scripts, needle);
    let disabled = position("systemctl disable --now --quiet etcd-defrag.timer");
    let removed = position("rm -f -- /etc/etcd/old.conf");
    assert!(disabled < removed, "the unit stops before its files go");
    assert!(!scripts.iter().any(|script| script.contains("rm -f") && script.contains(KEPT)), "{scripts:#?}");
    assert!(!scripts.iter().any(|script| script.contains("disable --now --quiet etcd.service")), "{scripts:#?}");
    assert_eq!(report.nodes[0].removed_files, ["/etc/etcd/old.conf"]);
    assert_eq!(report.nodes[0].disabled_units, ["etcd-defrag.timer"]);
    assert_eq!(report.removed(), 2);
    let record = scripts
        .iter()
        .rfind(|script| script.contains(&format!("{APPLIED_DIR}/etcd.tmp")))
        .expect("the stage is recorded");
    assert!(record.contains("echo 'unit etcd.service'"), "the record lists the stage's units: {record}");
    assert!(!record.contains("old.conf"), "the new record no longer lists the removed file: {record}");
}

/// The etcd stage plans nothing on master1 any more (its member moved), but master1
/// still has the stage's record: everything the record lists that no stage plans there
/// is retired, unit first, and the record goes too; a file another stage plans stays.
/// Progress that notes how many calls the host had seen each time a node said its
/// changes were made.
struct CallsWhenApplied<'h> {
    host: &'h RecordingHost,
    seen: Mutex<Vec<usize>>,
}

impl Progress for CallsWhenApplied<'_> {
    fn step(&self, _: Stage, _: &str, _: &str) {}

    fn applied(&self, _: Stage, _: &str) {
        self.seen.lock().unwrap().push(self.host.calls().len());
    }
}

/// `lab up` starts proving from the host that the lab serves as soon as every node
/// has said its changes are made, while the last checks still run; so a node says so
/// after its last change (the restarted unit's job done, the in-progress mark gone)
/// and before its checks. A converged node, which changes nothing, says so before
/// its checks too.
#[test]
fn a_node_says_its_changes_are_made_after_the_last_one_and_before_its_checks() {
    let host = RecordingHost::new("master1");
    host.reply("systemctl enable", Output { status: 0, stdout: "restarted\n".into(), stderr: String::new() });
    let progress = CallsWhenApplied { host: &host, seen: Mutex::default() };
    Executor::new([&host as &dyn Host]).run_stage(&etcd_like_stage(), &progress).expect("stage runs");
    let calls = host.calls();
    let seen = progress.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one stage on one node: {seen:?}");
    let (changes, rest) = calls.split_at(seen[0]);
    assert_eq!(changes.last(), Some(&Call::Run(format!("rm -f {PENDING_DIR}/etcd"))), "{calls:#?}");
    assert_eq!(rest.first(), Some(&Call::Run("etcdctl endpoint health".into())), "{calls:#?}");

    let stage = etcd_like_stage();
    let host = RecordingHost::new("master1");
    host.reply(SURVEY_QUERY, survey_answer(&recorded_digest(), "40 11 1700000000 644 root", &[]));
    let executor = Executor::new([&host as &dyn Host]);
    let survey = executor.survey(std::slice::from_ref(&stage)).expect("survey runs");
    let progress = CallsWhenApplied { host: &host, seen: Mutex::default() };
    executor.run_stage_surveyed(&stage, &survey, &progress).expect("stage runs");
    assert_eq!(*progress.seen.lock().unwrap(), [1], "only the survey came before: {:#?}", host.calls());
    assert_eq!(host.calls()[1], Call::Run("etcdctl endpoint health".into()));
}

#[test]
fn a_stage_that_plans_nothing_on_a_node_any_more_retires_what_it_left_there() {
    const KEPT: &str = "/etc/kubernetes/kept.conf";
    let host = RecordingHost::new("master1");
    let answer = format!(
        "stage etcd\ndigest {}\nfile {UNIT} 40 11 1700000000 644 root\nfile {KEPT} 9 14 1700000000 644 root\n\
         unit etcd.service\n",
        "0".repeat(64)
    );
    host.reply(SURVEY_QUERY, Output { status: 0, stdout: answer, stderr: String::new() });
    let etcd = StagePlan::new(Stage::Etcd, "test chapter");
    let mut later = StagePlan::new(Stage::KubeApiserver, "test chapter");
    later.node("master1").files.push(FileSpec::text(KEPT, 0o644, "kept\n"));
    let executor = Executor::new([&host as &dyn Host]).with_whole_plan(&[etcd.clone(), later]);

    let survey = executor.survey(std::slice::from_ref(&etcd)).expect("survey runs");
    assert!(!survey.covers(std::slice::from_ref(&etcd)), "a stage with an orphaned record is not converged");
    let orphaned: Vec<_> = survey.orphaned(Stage::Etcd).collect();
    assert_eq!(orphaned.len(), 1);
    assert_eq!(orphaned[0].0, "master1");
    assert_eq!(orphaned[0].1.files, [UNIT], "the file another stage plans is not retired");
    assert_eq!(orphaned[0].1.units, ["etcd.service"]);
    let report = executor.run_stage_surveyed(&etcd, &survey, &Silent).expect("stage runs");

    let scripts = scripts_run(&host);
    let position = |needle: &str| position_of(&scripts, needle);
    assert!(
        scripts[0].starts_with(SURVEY_QUERY) && scripts[0].contains(&format!("cat {APPLIED_DIR}/etcd ")),
        "the survey asks master1 for the record of a stage that plans nothing there: {}",
        scripts[0]
    );
    assert!(position("systemctl disable --now --quiet etcd.service") < position(&format!("rm -f -- {UNIT}")));
    assert!(position(&format!("rm -f -- {UNIT}")) < position("systemctl daemon-reload"));
    assert!(position("systemctl daemon-reload") < position(&format!("rm -f -- {APPLIED_DIR}/etcd")));
    assert!(!scripts.iter().any(|script| script.contains("rm -f") && script.contains(KEPT)), "{scripts:#?}");
    assert_eq!(report.removed(), 2);
    assert_eq!(report.nodes[0].removed_files, [UNIT]);
}

#[test]
fn a_converged_record_retires_nothing() {
    let digest = recorded_digest();
    let stage = etcd_like_stage();
    let host = RecordingHost::new("master1");
    let mut answer = survey_answer(&digest, "40 11 1700000000 644 root", &[]);
    answer.stdout.push_str("unit etcd.service\n");
    host.reply(SURVEY_QUERY, answer);
    let executor = Executor::new([&host as &dyn Host]);
    let survey = executor.survey(std::slice::from_ref(&stage)).expect("survey runs");
    assert!(survey.is_converged(Stage::Etcd, "master1"));
    assert!(survey.retired(Stage::Etcd, "master1").is_empty());
}

/// A certificate the PKI stage writes is an input of etcd's unit, which the etcd stage
/// owns: the etcd stage restarts etcd although its own files did not change, even on a
/// node the survey found converged. etcd reads its trusted CAs only when it starts.
#[test]
fn a_unit_restarts_when_an_earlier_stage_wrote_one_of_its_inputs() {
    const CA: &str = "/etc/etcd/pki/ca.pem";
    let mut pki = StagePlan::new(Stage::Pki, "test chapter");
    pki.node("master1").files.push(FileSpec::text(CA, 0o644, "CA\n"));
    let mut etcd = etcd_like_stage();
    etcd.nodes[0].units[0].restart_when_changed.push(CA.into());

    let digest = recorded_digest_of(&etcd);
    let host = RecordingHost::new("master1");
    host.reply(SURVEY_QUERY, survey_answer(&digest, "40 11 1700000000 644 root", &[]));
    let converged_files = format!(
        "{} 644 root {UNIT}\n{} 600 root {CONFIG}\n",
        sha("[Service]\nExecStart=/usr/bin/etcd\n"),
        sha("ETCD_NAME=master1\n")
    );
    host.reply(FILE_STATE_QUERY, Output { status: 0, stdout: converged_files, stderr: String::new() });
    host.reply("systemctl enable", Output { status: 0, stdout: "restarted\n".into(), stderr: String::new() });
    let executor = Executor::new([&host as &dyn Host]);
    let survey = executor.survey(std::slice::from_ref(&etcd)).expect("survey runs");
    assert!(survey.is_converged(Stage::Etcd, "master1"), "etcd's own files are as recorded");

    executor.run_stage(&pki, &Silent).expect("the PKI stage runs");
    let report = executor.run_stage_surveyed(&etcd, &survey, &Silent).expect("the etcd stage runs");

    assert!(
        host.calls().iter().any(
            |call| matches!(call, Call::Run(script) if script.contains("systemctl restart --no-block etcd.service"))
        ),
        "etcd restarts for the new CA: {:?}",
        host.calls()
    );
    assert_eq!((report.changed_files(), report.changed_units()), (0, 1));
}

#[test]
fn check_all_runs_every_check_and_nothing_else() {
    let host = RecordingHost::new("master1");
    let stages = [etcd_like_stage()];
    let reports = Executor::new([&host as &dyn Host]).check_all(&stages, &Silent).expect("checks pass");
    assert_eq!(host.calls(), [Call::Run("etcdctl endpoint health".into())]);
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].changed_files(), reports[0].changed_units()), (0, 0));
}

#[test]
fn inspect_finds_a_matching_node_matching_and_changes_nothing() {
    let host = RecordingHost::new("master1");
    host.reply(FILE_STATE_QUERY, planned_file_state());
    host.reply(UNIT_STATE_QUERY, Output { status: 0, stdout: "etcd.service active\n".into(), stderr: String::new() });

    let inspected = Executor::new([&host as &dyn Host]).inspect(&etcd_like_stage(), true).expect("inspect runs");

    assert_eq!(inspected.len(), 1);
    assert_eq!(inspected[0].node, "master1");
    assert!(inspected[0].differences.is_empty(), "{:?}", inspected[0].differences);
    assert_eq!(inspected[0].checks.len(), 1);
    assert!(inspected[0].checks[0].passed && inspected[0].passed());
    let calls = host.calls();
    assert!(calls.iter().all(|call| matches!(call, Call::Run(_))), "nothing written: {calls:?}");
    for script in calls.iter().filter_map(|call| match call {
        Call::Run(script) => Some(script),
        _ => None,
    }) {
        for changing in ["systemctl enable", "systemctl restart", "systemctl start", "mkdir", "rm -f", "install -d"] {
            assert!(!script.contains(changing), "inspect changed the node with {script:?}");
        }
    }
    assert!(
        calls.contains(&Call::Run("timeout 20 sh -c 'etcdctl endpoint health'".into())),
        "each check runs once, bounded: {calls:?}"
    );
}

#[test]
fn inspect_names_every_file_unit_and_check_that_differs_from_the_plan() {
    let host = RecordingHost::new("master1");
    // The unit file has another content and mode, the config is missing, the stage was
    // interrupted, the unit is stopped and the check fails.
    let state = format!("pending\n{} 666 etcd {UNIT}\n", sha("[Service]\nExecStart=/bin/false\n"));
    host.reply(FILE_STATE_QUERY, Output { status: 0, stdout: state, stderr: String::new() });
    host.reply(UNIT_STATE_QUERY, Output { status: 0, stdout: "etcd.service inactive\n".into(), stderr: String::new() });
    host.reply("timeout ", Output { status: 1, stdout: String::new(), stderr: "connection refused\n".into() });

    let inspected = Executor::new([&host as &dyn Host]).inspect(&etcd_like_stage(), true).expect("inspect runs");

    let found: Vec<String> = inspected[0].differences.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "a `lab up` stopped half way through this stage".to_string(),
            format!("{UNIT} differs from the plan"),
            format!("{UNIT} has mode 0666, the plan says 0644"),
            format!("{UNIT} belongs to etcd, the plan says root"),
            format!("{CONFIG} is missing"),
            "etcd.service is not running (inactive)".to_string(),
        ]
    );
    assert!(!inspected[0].checks[0].passed);
    assert_eq!(inspected[0].checks[0].output, "connection refused");
    assert!(!inspected[0].passed());

    // Without checks, only the comparison runs.
    let compared = Executor::new([&host as &dyn Host]).inspect(&etcd_like_stage(), false).expect("inspect runs");
    assert!(compared[0].checks.is_empty() && compared[0].differences.len() == 6);
}
