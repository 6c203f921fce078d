//! The `lab` binary as a user and a script meet it: exit codes, messages, what goes
//! to stdout and what to stderr. Every test has its own state directory, cache and
//! home in a temporary directory, and none builds or touches a lab: the "labs" here
//! are a recorded topology and stand-in files, and no verb that acts on machines runs
//! against one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use provisioner::artifacts::Artifacts;
use provisioner::plan::Stage;
use provisioner::topology::Topology;

/// The lab name of the stand-in labs; no real lab is called that, so that a verb that
/// reached for machines would find none of another lab's.
const LAB: &str = "clitest";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_owned()
}

/// One test's surroundings: a temporary directory with the state directory (`lab`,
/// not made), the cache home (`cache`), a home (`home`) and the stand-in lab's
/// topology.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup { dir: tempfile::tempdir().expect("a temporary directory") };
        std::fs::create_dir(setup.home()).unwrap();
        let minimal = std::fs::read_to_string(repository().join("examples/minimal.toml")).unwrap();
        std::fs::write(setup.topology_file(), minimal.replace("name = \"k8smin\"", &format!("name = \"{LAB}\"")))
            .unwrap();
        setup
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    /// What XDG_CACHE_HOME says.
    fn cache_home(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_home().join("k8s-lab")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The minimal example renamed to `LAB`.
    fn topology_file(&self) -> PathBuf {
        self.dir.path().join("topology.toml")
    }

    /// `lab` in the temporary directory, with its state directory, cache and home there
    /// and no KUBECONFIG or RUST_LOG from the caller.
    fn lab(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
        command
            .current_dir(self.dir.path())
            .env("LAB_DIR", self.state_dir())
            .env("XDG_CACHE_HOME", self.cache_home())
            .env("HOME", self.home())
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG");
        command
    }

    /// `lab` on the stand-in lab's topology file.
    fn lab_on_topology(&self) -> Command {
        let mut command = self.lab();
        command.arg("--topology").arg(self.topology_file());
        command
    }

    /// A state directory as `lab up` leaves it before its machines: the recorded
    /// topology, and with `admin_kubeconfig`, the admin kubeconfig too.
    fn record_lab(&self, admin_kubeconfig: bool) -> Topology {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        std::fs::copy(self.topology_file(), self.state_dir().join("topology.toml")).unwrap();
        if admin_kubeconfig {
            std::fs::write(self.state_dir().join("admin.kubeconfig"), ADMIN_KUBECONFIG).unwrap();
        }
        Topology::load(&self.topology_file()).expect("the renamed example is valid").topology
    }

    /// A stand-in for the lab's kubectl in the cache: prints its arguments and exits
    /// with `code`.
    fn fake_kubectl(&self, topology: &Topology, code: u8) {
        let artifacts = Artifacts::expected(topology, &self.cache_dir());
        let kubectl = artifacts.binary("kubectl");
        std::fs::create_dir_all(kubectl.parent().unwrap()).unwrap();
        std::fs::write(kubectl, format!("#!/bin/sh\necho \"$@\"\nexit {code}\n")).unwrap();
        std::fs::set_permissions(kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// An admin kubeconfig in the shape the lab writes, with a stand-in key.
const ADMIN_KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: \"clitest\"
  cluster:
    certificate-authority-data: Q0E=
    server: \"https://10.242.0.100:8443\"
users:
- name: \"admin\"
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: U0VDUkVUS0VZ
contexts:
- name: \"admin@clitest\"
  context:
    cluster: \"clitest\"
    user: \"admin\"
current-context: \"admin@clitest\"
preferences: {}
";

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 on stdout")
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 on stderr")
}

#[test]
fn help_and_version_exit_0_and_help_names_the_environment() {
    let setup = Setup::new();
    setup
        .lab()
        .arg("--help")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("[env: LAB_DIR="))
        .stdout(predicate::str::contains("[env: XDG_CACHE_HOME="))
        .stdout(predicate::str::contains("--verbose"))
        .stdout(predicate::str::contains("--quiet"))
        .stdout(predicate::str::contains("kubeconfig"));
    setup.lab().arg("--version").assert().code(0).stdout(predicate::str::starts_with("lab "));
    setup.lab().args(["kubeconfig", "--help"]).assert().code(0).stdout(predicate::str::contains("--merge"));
}

#[test]
fn a_wrong_command_line_exits_2() {
    let setup = Setup::new();
    for args in [
        &[][..],
        &["frobnicate"],
        &["plan", "--bogus"],
        &["ssh"],
        &["plan", "--backend", "nope"],
        &["-q", "-v", "plan"],
        &["logs", "--lines", "many"],
    ] {
        setup.lab().args(args).assert().code(2).stdout("");
    }
    assert!(!setup.state_dir().exists(), "nothing is written");
}

#[test]
fn a_wrong_argument_is_one_line_naming_it_and_the_valid_values() {
    let setup = Setup::new();
    for (args, names) in [
        (
            &["up", "--until", "etcdd"][..],
            "invalid value 'etcdd' for '--until <STAGE>'; possible values: machines, hosts,",
        ),
        (&["up", "--only"][..], "a value is required for '--only <STAGE>'"),
        (&["explain", "nope"][..], "invalid value 'nope' for '[STAGE]'; possible values: hosts,"),
        (&["check", "nope"][..], "invalid value 'nope' for '<STAGE>'"),
        (&["diff", "nope"][..], "invalid value 'nope' for '[STAGE]'"),
        (&["plan", "--bogus"][..], "unexpected argument '--bogus' found"),
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
    ] {
        let output = setup.lab().args(args).assert().code(2).stdout("").get_output().clone();
        let stderr = stderr_of(&output);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(names), "{args:?}: {stderr}");
    }
    let output = setup.lab().args(["up", "--until", "etcdd"]).assert().code(2).get_output().clone();
    assert!(stderr_of(&output).contains("tip: a similar value exists: 'etcd'"), "clap's tip is kept");
}

#[test]
fn up_until_from_or_only_an_unknown_stage_exits_2_and_lists_the_stages() {
    let setup = Setup::new();
    for flag in ["--until", "--from", "--only"] {
        let output = setup.lab_on_topology().args(["up", flag, "nope"]).assert().code(2).get_output().clone();
        let stderr = stderr_of(&output);
        assert!(stderr.starts_with(&format!("error: invalid value 'nope' for '{flag} <STAGE>'")), "{stderr}");
        for name in Stage::ALL.iter().map(|stage| stage.name()) {
            assert!(stderr.contains(name), "{name} is missing from: {stderr}");
        }
        assert_eq!(stderr.contains("machines"), flag == "--until", "{stderr}");
    }
    assert!(!setup.state_dir().exists(), "nothing is written");
}

#[test]
fn up_with_stages_that_leave_nothing_to_run_or_flags_that_exclude_each_other_exits_2() {
    let setup = Setup::new();
    for args in [&["--from", "kubelet", "--until", "etcd"][..], &["--from", "pki", "--until", "machines"][..]] {
        let output = setup.lab_on_topology().arg("up").args(args).assert().code(2).get_output().clone();
        let stderr = stderr_of(&output);
        assert!(stderr.contains("comes after --until") && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
    for args in [&["--only", "etcd", "--until", "pki"][..], &["--only", "etcd", "--from", "pki"], &["--step", "--json"]]
    {
        setup.lab_on_topology().arg("up").args(args).assert().code(2);
    }
    assert!(!setup.state_dir().exists(), "nothing is written");
}

#[test]
fn an_invalid_topology_file_exits_3_and_names_the_problem() {
    let setup = Setup::new();
    let minimal = std::fs::read_to_string(setup.topology_file()).unwrap();
    let cases = [
        ("not-toml.toml", "name = \"x\"\n[network\n".to_string(), "not-toml.toml"),
        ("unknown-field.toml", minimal.replace("[network]", "[network]\nbridge_mtu = 9000"), "bridge_mtu"),
    ];
    for (file, text, named) in cases {
        std::fs::write(setup.dir.path().join(file), text).unwrap();
        for verb in [&["plan"][..], &["plan", "--json"], &["render", "out"]] {
            setup
                .lab()
                .args(verb)
                .args(["--topology", file])
                .assert()
                .code(3)
                .stdout("")
                .stderr(predicate::str::starts_with("error: ").and(predicate::str::contains(named)));
        }
    }
    setup
        .lab()
        .args(["plan", "--topology", "missing.toml"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("missing.toml"));
    assert!(!setup.dir.path().join("out").exists(), "render wrote nothing");
}

#[test]
fn the_verbs_of_an_existing_lab_say_no_lab_and_exit_1_on_an_empty_state_dir() {
    let setup = Setup::new();
    let verbs: [&[&str]; 11] = [
        &["status"],
        &["status", "--json"],
        &["down"],
        &["down", "--json"],
        &["destroy"],
        &["ssh", "master1"],
        &["logs"],
        &["kubectl", "--", "get", "nope"],
        &["kubectl", "get", "nodes"],
        &["kubeconfig"],
        &["kubeconfig", "--merge", "--json"],
    ];
    let expected = format!("error: no lab in {}: `lab up` makes one", setup.state_dir().display());
    for verb in verbs {
        // The topology file names a lab too; it is not the one a state directory holds.
        setup
            .lab_on_topology()
            .args(verb)
            .assert()
            .code(1)
            .stdout("")
            .stderr(predicate::str::starts_with(expected.as_str()));
    }
    assert!(!setup.state_dir().exists(), "nothing is written");
    assert!(!setup.home().join(".kube").exists(), "nothing is merged");
}

#[test]
fn a_backend_or_node_the_lab_does_not_have_exits_2() {
    let setup = Setup::new();
    setup.record_lab(false);
    setup
        .lab()
        .args(["status", "--backend", "vagrant"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("use `--backend nspawn`"));
    setup
        .lab()
        .args(["ssh", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error: lab clitest has no node \"nope\"; its nodes are master1, worker1"));
}

#[test]
fn plan_json_is_one_json_document_without_key_material() {
    let setup = Setup::new();
    let output = setup.lab().args(["plan", "--json", "-vv"]).assert().code(0).get_output().clone();
    let stdout = stdout_of(&output);
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(plan["lab"], "k8s");
    assert!(stderr_of(&output).contains("issuing certificate"), "the log went to stderr");

    for marker in ["PRIVATE KEY", "client-key-data"] {
        assert!(!stdout.contains(marker), "{marker} in the plan");
    }
    // Not one line of any key the plan was made with, in any encoding the plan uses.
    let mut keys = 0;
    for entry in std::fs::read_dir(setup.state_dir().join("pki")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("PRIVATE KEY") {
            continue;
        }
        keys += 1;
        // An EC key's last PEM line is mostly its public key, which its certificate
        // carries too and, one time in three, at the same base64 alignment: a line that
        // is in the certificate is public.
        let certificate = std::fs::read_to_string(path.to_string_lossy().replace("-key.pem", ".pem"))
            .map(|pem| pem.lines().filter(|line| !line.starts_with("-----")).collect::<String>())
            .unwrap_or_default();
        for line in text.lines().filter(|line| !line.starts_with("-----") && !certificate.contains(line)) {
            assert!(!stdout.contains(line), "a line of {} is in the plan", path.display());
        }
        let encoded = provisioner::pki::kubeconfig(
            "c",
            "s",
            "",
            "u",
            &provisioner::pki::Issued { cert_pem: String::new(), key_pem: text.clone() },
        );
        let base64 = encoded.lines().find_map(|line| line.trim().strip_prefix("client-key-data: ")).unwrap();
        assert!(!stdout.contains(&base64[..40]), "a key in base64 is in the plan");
    }
    assert!(keys > 10, "the plan's PKI was issued ({keys} keys)");
    let encryption_key = std::fs::read_to_string(setup.state_dir().join("pki/secrets-encryption.key")).unwrap();
    assert!(!stdout.contains(encryption_key.trim()), "the Secrets' encryption key is in the plan");
}

#[test]
fn explain_tells_every_chapter_and_one_chapter_without_a_secret() {
    let setup = Setup::new();
    let output = setup.lab().args(["explain", "--json"]).assert().code(0).get_output().clone();
    let overview: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("stdout is one JSON document");
    let chapters = overview["chapters"].as_array().expect("a list of chapters");
    assert_eq!(chapters.len(), Stage::ALL.len());
    assert_eq!(chapters[2]["stage"], "etcd");
    assert_eq!(chapters[2]["standing"]["state"], "not-built", "no lab in the state directory");

    let output = setup.lab().args(["explain", "pki"]).assert().code(0).get_output().clone();
    let text = stdout_of(&output);
    assert!(text.starts_with("2. pki: not built\n"), "{text}");
    assert!(text.contains("<secret>") && text.contains("0600 root"), "{text}");
    for marker in ["PRIVATE KEY", "client-key-data"] {
        assert!(!text.contains(marker), "{marker} in the explanation");
    }
    let encryption_key = std::fs::read_to_string(setup.state_dir().join("pki/secrets-encryption.key")).unwrap();
    assert!(!text.contains(encryption_key.trim()), "the Secrets' encryption key is in the explanation");

    let output = setup.lab().args(["explain", "etcd", "--node", "worker1"]).assert().code(0).get_output().clone();
    assert!(stdout_of(&output).contains("This chapter does nothing on worker1."));
}

#[test]
fn explain_refuses_a_wrong_stage_or_node_with_exit_2() {
    let setup = Setup::new();
    let output = setup.lab().args(["explain", "nope"]).assert().code(2).get_output().clone();
    let stderr = stderr_of(&output);
    for name in Stage::ALL.iter().map(|stage| stage.name()) {
        assert!(stderr.contains(name), "{name} is missing from: {stderr}");
    }
    setup
        .lab()
        .args(["explain", "etcd", "--node", "nobody"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error: --node nobody: no such node in lab k8s; the nodes are: master1,"));
}

#[test]
fn check_and_diff_refuse_a_wrong_stage_or_no_lab_with_exit_2() {
    let setup = Setup::new();
    let output = setup.lab().args(["check", "nope"]).assert().code(2).get_output().clone();
    assert!(stderr_of(&output).contains("kube-apiserver"), "the valid stages are listed");
    setup.lab().args(["check"]).assert().code(2);
    setup.lab().args(["diff", "nope"]).assert().code(2);
    for args in [&["check", "etcd"][..], &["diff"][..], &["diff", "etcd", "--json"][..]] {
        let output = setup.lab().args(args).assert().code(2).get_output().clone();
        let stderr = stderr_of(&output);
        assert!(stderr.starts_with("error: no lab in ") && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
}

#[test]
fn render_writes_every_file_but_no_secret() {
    let setup = Setup::new();
    setup.lab().args(["render", "out"]).assert().code(0).stdout(predicate::str::contains("secret, written as"));
    let encryption_key = std::fs::read_to_string(setup.state_dir().join("pki/secrets-encryption.key")).unwrap();
    let out = setup.dir.path().join("out");
    let mut files = 0;
    let mut left_out = 0;
    let mut pending = vec![out.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in ["PRIVATE KEY", "client-key-data", encryption_key.trim()] {
                assert!(!text.contains(marker), "{} holds {marker:?}", path.display());
            }
            left_out += usize::from(text == provisioner::render::SECRET_LEFT_OUT);
        }
    }
    assert!(files > 50 && left_out > 10, "{files} files, {left_out} of them secret");
    let config = out.join("master1/etc/kubernetes/encryption-config.yaml");
    assert_eq!(std::fs::read_to_string(config).unwrap(), provisioner::render::SECRET_LEFT_OUT);
}

#[test]
fn plan_works_from_any_current_directory() {
    let setup = Setup::new();
    let minimal = repository().join("examples/minimal.toml");
    setup
        .lab()
        .arg("plan")
        .arg("--topology")
        .arg(&minimal)
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with("lab k8smin\n"));
    // A relative path is relative to the current directory, as for any program.
    setup
        .lab()
        .current_dir(repository().join("examples"))
        .args(["plan", "--topology", "minimal.toml"])
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with("lab k8smin\n"));
    // Without --topology: lab.toml at the repository root, wherever `lab` runs.
    setup.lab().arg("plan").assert().code(0).stdout(predicate::str::starts_with("lab k8s\n"));
}

#[test]
fn verbose_quiet_and_rust_log_choose_what_reaches_stderr() {
    // Each run issues a fresh PKI (its own state directory): the provisioner logs that
    // at info.
    let run = |args: &[&str], rust_log: Option<&str>| {
        let setup = Setup::new();
        let mut command = setup.lab();
        if let Some(directives) = rust_log {
            command.env("RUST_LOG", directives);
        }
        let output = command.args(args).assert().code(0).get_output().clone();
        (stdout_of(&output), stderr_of(&output))
    };
    let (stdout, stderr) = run(&["plan"], None);
    assert!(stdout.starts_with("lab k8s\n"));
    assert!(!stderr.contains("issuing certificate"), "warnings only by default: {stderr}");
    let (_, stderr) = run(&["plan", "-v"], None);
    assert!(stderr.contains("INFO") && stderr.contains("issuing certificate"), "{stderr}");
    let (_, stderr) = run(&["-v", "plan"], Some("error"));
    assert!(!stderr.contains("issuing certificate"), "RUST_LOG wins over -v: {stderr}");
    let (_, stderr) = run(&["plan"], Some("provisioner::pki=info"));
    assert!(stderr.contains("issuing certificate"), "RUST_LOG wins over the default: {stderr}");
    let (stdout, stderr) = run(&["plan", "--quiet"], None);
    assert!(stdout.starts_with("lab k8s\n"), "the verb's output stays");
    assert_eq!(stderr, "", "-q: nothing but errors");
}

#[test]
fn kubectl_exits_with_kubectls_own_code() {
    let setup = Setup::new();
    let topology = setup.record_lab(true);
    for code in [0, 1, 7] {
        setup.fake_kubectl(&topology, code);
        let kubeconfig = setup.state_dir().join("admin.kubeconfig");
        setup
            .lab()
            .args(["kubectl", "--", "get", "nope"])
            .assert()
            .code(i32::from(code))
            .stdout(format!("--kubeconfig {} get nope\n", kubeconfig.display()))
            .stderr("");
    }
}

#[test]
fn kubectl_without_its_binary_or_kubeconfig_exits_1() {
    let setup = Setup::new();
    let topology = setup.record_lab(false);
    setup
        .lab()
        .args(["kubectl", "get", "nodes"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("error: no kubectl at "));
    setup.fake_kubectl(&topology, 0);
    setup
        .lab()
        .args(["kubectl", "get", "nodes"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("error: no admin kubeconfig at "));
}

#[test]
fn kubeconfig_prints_the_admin_kubeconfigs_path() {
    let setup = Setup::new();
    setup.record_lab(false);
    setup.lab().arg("kubeconfig").assert().code(1).stderr(predicate::str::contains(format!(
        "error: lab clitest has no admin kubeconfig at {} yet",
        setup.state_dir().join("admin.kubeconfig").display()
    )));

    setup.record_lab(true);
    let path = setup.state_dir().join("admin.kubeconfig");
    setup.lab().arg("kubeconfig").assert().code(0).stdout(format!("{}\n", path.display())).stderr("");
    let output = setup.lab().args(["kubeconfig", "--json"]).assert().code(0).get_output().clone();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["kubeconfig"], path.to_str().unwrap());
    assert_eq!(json["lab"], LAB);
    assert!(json["merged"].is_null());
    assert!(!setup.home().join(".kube").exists(), "nothing merged without --merge");
}

#[test]
fn kubeconfig_merge_adds_the_lab_to_the_users_kubeconfig_once() {
    let setup = Setup::new();
    setup.record_lab(true);
    let user_file = setup.home().join(".kube/config");

    let output = setup.lab().args(["kubeconfig", "--merge"]).assert().code(0).get_output().clone();
    assert_eq!(stdout_of(&output), format!("{}\n", setup.state_dir().join("admin.kubeconfig").display()));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("context lab-clitest (now the current context)"), "{stderr}");
    assert!(!stderr.contains("U0VDUkVUS0VZ"), "no key on stderr");
    assert_eq!(std::fs::metadata(&user_file).unwrap().permissions().mode() & 0o777, 0o600);
    let merged = std::fs::read_to_string(&user_file).unwrap();
    let config: serde_json::Value = serde_yaml_ng::from_str(&merged).unwrap();
    assert_eq!(config["current-context"], "lab-clitest");
    assert_eq!(config["users"][0]["name"], "lab-clitest");
    assert_eq!(config["users"][0]["user"]["client-key-data"], "U0VDUkVUS0VZ");

    let output = setup.lab().args(["kubeconfig", "--merge", "--json"]).assert().code(0).get_output().clone();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["merged"]["context"], "lab-clitest");
    assert_eq!(json["merged"]["changed"], false);
    assert_eq!(json["merged"]["file"], user_file.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&user_file).unwrap(), merged, "merging again changes nothing");
    assert!(!stdout_of(&output).contains("U0VDUkVUS0VZ"), "no key on stdout");
}

#[test]
fn kubeconfig_merge_writes_kubeconfigs_first_file() {
    let setup = Setup::new();
    setup.record_lab(true);
    let first = setup.dir.path().join("first");
    let second = setup.dir.path().join("second");
    std::fs::write(&first, "apiVersion: v1\nkind: Config\ncurrent-context: mine\n").unwrap();
    setup
        .lab()
        .env("KUBECONFIG", format!("{}:{}", first.display(), second.display()))
        .args(["-q", "kubeconfig", "--merge"])
        .assert()
        .code(0)
        .stderr("");
    let config: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    assert_eq!(config["current-context"], "mine", "a current context is kept");
    assert_eq!(config["contexts"][0]["name"], "lab-clitest");
    assert!(!second.exists() && !setup.home().join(".kube").exists());
}

#[test]
fn the_state_and_cache_directories_come_from_the_flags_else_the_environment() {
    let setup = Setup::new();
    let flag_dir = setup.dir.path().join("flag");
    setup
        .lab()
        .arg("status")
        .arg("--lab-dir")
        .arg(&flag_dir)
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(format!("error: no lab in {}: ", flag_dir.display())));
    // A relative LAB_DIR is relative to the current directory.
    setup.lab().env("LAB_DIR", "relative").arg("status").assert().code(1).stderr(predicate::str::starts_with(format!(
        "error: no lab in {}: ",
        setup.dir.path().join("relative").display()
    )));
    // One directory has one spelling: the lab finds its machines by it.
    setup.lab().env("LAB_DIR", "./other/../relative").arg("status").assert().code(1).stderr(
        predicate::str::starts_with(format!("error: no lab in {}: ", setup.dir.path().join("relative").display())),
    );

    // The plan names the cache's files: XDG_CACHE_HOME/k8s-lab, an empty one counting
    // as unset (HOME/.cache), and --cache-home over both.
    let cache_in_plan = |command: &mut Command| {
        let output = command.args(["plan", "--json"]).assert().code(0).get_output().clone();
        let stdout = stdout_of(&output);
        let cache = ["cache/k8s-lab", "home/.cache/k8s-lab", "flag-cache/k8s-lab"]
            .into_iter()
            .filter(|cache| stdout.contains(&format!("{}/{cache}/", setup.dir.path().display())))
            .collect::<Vec<_>>();
        assert_eq!(cache.len(), 1, "{cache:?}");
        cache[0]
    };
    assert_eq!(cache_in_plan(&mut setup.lab()), "cache/k8s-lab");
    assert_eq!(cache_in_plan(setup.lab().env("XDG_CACHE_HOME", "")), "home/.cache/k8s-lab");
    let flag_cache = setup.dir.path().join("flag-cache");
    assert_eq!(cache_in_plan(setup.lab().arg("--cache-home").arg(&flag_cache)), "flag-cache/k8s-lab");
}

#[test]
fn faults_json_lists_the_catalogue_with_the_tests_each_fault_turns_red() {
    let setup = Setup::new();
    let output = setup.lab_on_topology().args(["faults", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let faults: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("one JSON document");
    let faults = faults.as_array().expect("a list");
    assert!(faults.len() >= 20, "{} faults", faults.len());
    for fault in faults {
        assert!(fault["name"].is_string() && fault["stage"].is_string(), "{fault}");
        assert!(!fault["breaks"].as_array().unwrap().is_empty(), "{fault}");
    }
    // The stand-in lab is the minimal topology: one etcd member has no quorum to lose.
    let quorum = faults.iter().find(|fault| fault["name"] == "etcd-quorum-lost").unwrap();
    assert!(quorum["not_applicable"].as_str().unwrap().contains("needs 3 etcd nodes"), "{quorum}");
}

#[test]
fn drill_refuses_a_wrong_drill_or_no_lab_with_exit_2() {
    let setup = Setup::new();
    setup.lab().args(["drill", "no-such-drill"]).assert().code(2).stderr(predicate::str::contains(
        "error: no drill named \"no-such-drill\"; the drills are: keepalived-stopped-on-vip-holder,",
    ));
    setup.lab().args(["drill", "etcd-leader-killed"]).assert().code(2).stderr(predicate::str::contains("no lab in"));
}

#[test]
fn bench_without_a_lab_is_one_line_and_exit_2() {
    let setup = Setup::new();
    let output = setup.lab().args(["bench", "--json"]).assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: no lab in ") && stderr.lines().count() == 1, "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout without a report");
}

#[test]
fn break_and_restore_refuse_a_wrong_fault_or_node_or_no_lab_with_exit_2() {
    let setup = Setup::new();
    setup.lab().args(["break", "no-such-fault"]).assert().code(2).stderr(predicate::str::contains(
        "error: no fault \"no-such-fault\"; `lab faults` lists them: etcd-member-stopped,",
    ));
    setup.lab().args(["restore", "no-such-fault"]).assert().code(2);
    // A real fault, but no lab in the state directory.
    setup
        .lab()
        .args(["break", "kubelet-read-only-port"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no lab in"));

    setup.record_lab(false);
    setup
        .lab()
        .args(["break", "kubelet-read-only-port", "--node", "nobody"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("\"nobody\" is not one: pick one of worker1"));
    setup
        .lab()
        .args(["break", "keepalived-stopped", "--node", "master1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("takes no --node"));
    setup
        .lab()
        .args(["break", "etcd-quorum-lost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs 3 etcd nodes; lab clitest has 1"));
    // Nothing was recorded by the refusals.
    assert!(!setup.state_dir().join("faults.json").exists());
}

#[test]
fn exercise_refuses_a_wrong_fault_no_lab_or_no_exercise_in_one_line_with_exit_2() {
    let setup = Setup::new();
    let one_line = |args: &[&str], expected: &str| {
        let output = setup.lab().args(args).assert().code(2).get_output().clone();
        let stderr = stderr_of(&output);
        assert!(stderr.contains(expected) && stderr.lines().count() == 1, "{args:?}: {stderr}");
    };
    one_line(&["exercise", "--fault", "no-such-fault"], "error: no fault \"no-such-fault\"");
    for args in [&["exercise"][..], &["exercise", "--hint"], &["exercise", "--check"], &["exercise", "--give-up"]] {
        one_line(args, "error: no lab in ");
    }
    setup.lab().args(["exercise", "--hint", "--check"]).assert().code(2);
    setup.lab().args(["exercise", "--fault", "etcd-member-stopped", "--give-up"]).assert().code(2);

    setup.record_lab(false);
    for args in [&["exercise", "--hint"][..], &["exercise", "--check"], &["exercise", "--give-up", "--json"]] {
        one_line(args, "error: no exercise is in progress: `lab exercise` starts one");
    }
    // The minimal lab has one etcd member: a fault that needs three is refused, and a
    // fault only the failover drills see makes no exercise.
    one_line(&["exercise", "--fault", "etcd-quorum-lost"], "needs 3 etcd nodes; lab clitest has 1");
    one_line(&["exercise", "--fault", "dns-one-replica"], "is seen by failover drills only");
    assert!(!setup.state_dir().join("exercise.json").exists());
    assert!(!setup.state_dir().join("faults.json").exists());
}

#[test]
fn list_shows_the_lab_of_the_state_directory_with_its_machines_and_api() {
    let setup = Setup::new();
    // Other labs may run on this host (another test's, or a user's): only this one is
    // looked for.
    let output = setup.lab().args(["list", "--json"]).assert().code(0).get_output().clone();
    let listing: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("one JSON document");
    let state_dir = setup.state_dir().display().to_string();
    let mine = |listing: &serde_json::Value| {
        listing["labs"].as_array().expect("labs").iter().find(|lab| lab["state_dir"] == state_dir.as_str()).cloned()
    };
    assert!(mine(&listing).is_none(), "an empty state directory holds no lab: {listing}");

    setup.record_lab(false);
    let output = setup.lab().args(["list", "--json"]).assert().code(0).get_output().clone();
    let listing: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("one JSON document");
    let lab = mine(&listing).unwrap_or_else(|| panic!("the recorded lab is listed: {listing}"));
    assert_eq!(lab["lab"], LAB);
    assert_eq!(lab["backend"], "nspawn");
    assert_eq!(lab["api_server_url"], "https://10.242.0.100:8443");
    assert_eq!(lab["nodes"][0], serde_json::json!({ "name": "master1", "state": "missing" }), "{lab}");
    let text = stdout_of(&setup.lab().arg("list").assert().code(0).get_output().clone());
    let line = text.lines().find(|line| line.starts_with(LAB)).unwrap_or_else(|| panic!("no line for {LAB}: {text}"));
    assert!(line.contains("2 missing") && line.ends_with(&state_dir), "{line}");
}

#[test]
fn plan_diff_names_what_up_would_refuse_without_touching_the_lab() {
    let setup = Setup::new();
    let output = setup.lab_on_topology().args(["plan", "--diff"]).assert().code(1).get_output().clone();
    assert!(stderr_of(&output).starts_with("error: no lab in "), "{}", stderr_of(&output));

    setup.record_lab(false);
    let record = std::fs::read(setup.state_dir().join("topology.toml")).unwrap();
    let edited = std::fs::read_to_string(setup.topology_file())
        .unwrap()
        .replace("address = \"10.242.0.11\"", "address = \"10.242.0.12\"");
    std::fs::write(setup.topology_file(), edited).unwrap();
    let output = setup.lab_on_topology().args(["plan", "--diff"]).assert().code(1).get_output().clone();
    let stdout = stdout_of(&output);
    assert!(stdout.starts_with("`lab up` would refuse this topology:"), "{stdout}");
    assert!(stdout.contains("master1's address changed from 10.242.0.11 to 10.242.0.12"), "{stdout}");
    let output = setup.lab_on_topology().args(["plan", "--diff", "--json"]).assert().code(1).get_output().clone();
    let diff: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("one JSON document");
    assert!(diff["refused"].as_str().is_some_and(|reason| reason.contains("master1's address")), "{diff}");
    assert_eq!(std::fs::read(setup.state_dir().join("topology.toml")).unwrap(), record, "the record is untouched");
    let output = setup.lab_on_topology().arg("up").arg("--no-install").assert().code(3).get_output().clone();
    assert!(stderr_of(&output).contains("master1's address changed"), "up refuses the same: {}", stderr_of(&output));
    assert_eq!(std::fs::read(setup.state_dir().join("topology.toml")).unwrap(), record, "up changed nothing");
}
