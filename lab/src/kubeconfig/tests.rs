use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// The lab's admin kubeconfig in the shape `provisioner::pki::kubeconfig` writes.
fn admin(key: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: \"k8s\"
  cluster:
    certificate-authority-data: Q0E=
    server: \"https://10.240.0.100:8443\"
users:
- name: \"admin\"
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: {key}
contexts:
- name: \"admin@k8s\"
  context:
    cluster: \"k8s\"
    user: \"admin\"
current-context: \"admin@k8s\"
preferences: {{}}
"
    )
}

/// A user's kubeconfig with another cluster, as kubectl writes it.
const OTHER: &str = "# my clusters
apiVersion: v1
clusters:
- cluster:
    server: https://example.invalid:6443
  name: work
contexts:
- context:
    cluster: work
    user: me
  name: work
current-context: work
kind: Config
preferences: {}
users:
- name: me
  user:
    token: abc
";

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("valid YAML")
}

fn names(config: &Value, list: &str) -> Vec<String> {
    config[list].as_sequence().unwrap().iter().map(|entry| entry["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_user_file_is_kubeconfigs_first_entry_else_the_one_in_home() {
    let home = Some(Path::new("/home/me"));
    assert_eq!(user_file(Some(OsStr::new("/a:/b")), home), Some(PathBuf::from("/a")));
    assert_eq!(user_file(Some(OsStr::new(":/b")), home), Some(PathBuf::from("/b")));
    assert_eq!(user_file(Some(OsStr::new("")), home), Some(PathBuf::from("/home/me/.kube/config")));
    assert_eq!(user_file(None, home), Some(PathBuf::from("/home/me/.kube/config")));
    assert_eq!(user_file(None, None), None);
}

#[test]
fn merging_into_nothing_makes_a_kubeconfig_whose_current_context_is_the_lab() {
    let merge = merged(None, &admin("S0VZ"), "lab-k8s").unwrap();
    assert!(merge.current_context_set);
    let config = yaml(merge.text.as_deref().unwrap());
    assert_eq!(config["apiVersion"], "v1");
    assert_eq!(config["kind"], "Config");
    assert_eq!(config["current-context"], "lab-k8s");
    for list in ["clusters", "users", "contexts"] {
        assert_eq!(names(&config, list), ["lab-k8s"], "{list}");
    }
    let admin = yaml(&admin("S0VZ"));
    assert_eq!(config["clusters"][0]["cluster"], admin["clusters"][0]["cluster"]);
    assert_eq!(config["users"][0]["user"], admin["users"][0]["user"]);
    assert_eq!(config["contexts"][0]["context"]["cluster"], "lab-k8s");
    assert_eq!(config["contexts"][0]["context"]["user"], "lab-k8s");
}

#[test]
fn merging_keeps_the_other_entries_and_the_current_context() {
    let merge = merged(Some(OTHER), &admin("S0VZ"), "lab-k8s").unwrap();
    assert!(!merge.current_context_set);
    let config = yaml(merge.text.as_deref().unwrap());
    let other = yaml(OTHER);
    assert_eq!(config["current-context"], "work");
    assert_eq!(config["preferences"], other["preferences"]);
    for (list, theirs) in [("clusters", "work"), ("users", "me"), ("contexts", "work")] {
        assert_eq!(names(&config, list), [theirs, "lab-k8s"], "{list}");
        assert_eq!(config[list][0], other[list][0], "{list}: the other entry is unchanged");
    }
}

#[test]
fn merging_again_changes_nothing_and_a_new_key_replaces_the_entry_in_place() {
    let once = merged(Some(OTHER), &admin("S0VZ"), "lab-k8s").unwrap().text.unwrap();
    assert_eq!(
        merged(Some(&once), &admin("S0VZ"), "lab-k8s").unwrap(),
        Merge { text: None, current_context_set: false }
    );

    let renewed = merged(Some(&once), &admin("TkVX"), "lab-k8s").unwrap().text.unwrap();
    let config = yaml(&renewed);
    assert_eq!(names(&config, "users"), ["me", "lab-k8s"]);
    assert_eq!(config["users"][1]["user"]["client-key-data"], "TkVX");
}

#[test]
fn removing_takes_out_exactly_the_labs_entries() {
    let with_lab = merged(Some(OTHER), &admin("S0VZ"), "lab-k8s").unwrap().text.unwrap();
    let without_lab = without(&with_lab, "lab-k8s").unwrap().expect("the lab's entries were there");
    assert_eq!(yaml(&without_lab), yaml(OTHER), "everything else is as it was");
    assert_eq!(without(OTHER, "lab-k8s").unwrap(), None, "nothing to take out");
}

#[test]
fn removing_the_current_context_unsets_it() {
    let only_lab = merged(None, &admin("S0VZ"), "lab-k8s").unwrap().text.unwrap();
    let config = yaml(&without(&only_lab, "lab-k8s").unwrap().unwrap());
    assert_eq!(config["current-context"], "");
    for list in ["clusters", "users", "contexts"] {
        assert!(config[list].as_sequence().unwrap().is_empty(), "{list}");
    }
    // Merged again, the lab becomes the current context once more.
    let again = merged(Some(&serde_yaml_ng::to_string(&config).unwrap()), &admin("S0VZ"), "lab-k8s").unwrap();
    assert!(again.current_context_set);
}

#[test]
fn a_file_that_is_no_kubeconfig_is_refused_without_quoting_it() {
    let error = merged(Some("- just\n- a list\n"), &admin("S0VZ"), "lab-k8s").unwrap_err();
    assert_eq!(error.to_string(), "not a kubeconfig: its top level is not a mapping");
    let error = merged(Some("clusters: {}\n"), &admin("S0VZ"), "lab-k8s").unwrap_err();
    assert_eq!(error.to_string(), "`clusters` is not a list");
    let broken = "users:\n- name: me\n  user:\n    client-key-data: U0VDUkVU\n  - [\n";
    let error = format!("{:#}", without(broken, "lab-k8s").unwrap_err());
    assert!(!error.contains("U0VDUkVU"), "{error}");
    assert!(error.contains("line"), "{error}");
}

#[test]
fn merge_into_creates_a_private_file_and_remove_from_leaves_it_as_it_was() {
    let home = tempfile::tempdir().unwrap();
    let admin_file = home.path().join("admin.kubeconfig");
    std::fs::write(&admin_file, admin("S0VZ")).unwrap();
    let file = user_file(None, Some(home.path())).unwrap();

    let merge = merge_into(&file, &admin_file, "lab-k8s").unwrap();
    assert!(merge.current_context_set);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(merge_into(&file, &admin_file, "lab-k8s").unwrap().text.is_none());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written, "merging again writes nothing");

    assert!(remove_from(&file, "lab-k8s").unwrap());
    assert!(!remove_from(&file, "lab-k8s").unwrap(), "removing again finds nothing");
    assert!(!remove_from(&home.path().join("missing"), "lab-k8s").unwrap());
}

#[test]
fn an_existing_file_keeps_its_mode_and_is_not_rewritten_without_the_lab() {
    let home = tempfile::tempdir().unwrap();
    let admin_file = home.path().join("admin.kubeconfig");
    std::fs::write(&admin_file, admin("S0VZ")).unwrap();
    let file = home.path().join("config");
    std::fs::write(&file, OTHER).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();

    assert!(remove_from(&file, "lab-k8s").is_ok_and(|removed| !removed));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), OTHER, "comments and all");

    merge_into(&file, &admin_file, "lab-k8s").unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(remove_from(&file, "lab-k8s").unwrap());
    assert_eq!(yaml(&std::fs::read_to_string(&file).unwrap()), yaml(OTHER));
}
