//! The lab's PKI: every certificate of the default lab parsed back with x509-parser
//! (subject, SANs, key usages, CA flag, signature by the CA), the on-disk store
//! (modes, reuse, targeted re-issue), kubeconfigs, and which node receives which key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::prelude::{Engine, BASE64_STANDARD};
use provisioner::artifacts::Artifacts;
use provisioner::paths;
use provisioner::pki::{self, names, Authority, Bundle, CertificateSpec, Issued, PkiError, Store, Usage};
use provisioner::plan::{self, Content, Plan, PlanInputs, Stage};
use provisioner::topology::{Role, Topology};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{parse_x509_certificate, parse_x509_pem, X509Certificate};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn default_topology() -> Topology {
    Topology::load(&repository().join("lab.toml")).expect("lab.toml loads").topology
}

fn der(pem: &str) -> Vec<u8> {
    let (_, parsed) = parse_x509_pem(pem.as_bytes()).expect("PEM parses");
    assert_eq!(parsed.label, "CERTIFICATE");
    parsed.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    parse_x509_certificate(der).expect("certificate parses").1
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|text| text.to_string()).collect()
}

/// What a parsed certificate says about itself.
#[derive(Debug, PartialEq)]
struct Identity {
    common_name: String,
    organization: Option<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    server_auth: bool,
    client_auth: bool,
}

fn identity(cert: &X509Certificate<'_>) -> Identity {
    let common_names: Vec<_> = cert.subject().iter_common_name().map(|value| value.as_str().unwrap()).collect();
    assert_eq!(common_names.len(), 1, "exactly one CN");
    let organizations: Vec<_> = cert.subject().iter_organization().map(|value| value.as_str().unwrap()).collect();
    assert!(organizations.len() <= 1, "at most one O");
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Some(extension) = cert.subject_alternative_name().unwrap() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns_name) => dns_names.push(dns_name.to_string()),
                GeneralName::IPAddress(bytes) => {
                    ip_addresses.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("IPv4 SAN")))
                }
                other => panic!("unexpected SAN {other:?}"),
            }
        }
    }
    let extended = cert.extended_key_usage().unwrap().map(|extension| extension.value.clone());
    Identity {
        common_name: common_names[0].to_string(),
        organization: organizations.first().map(|value| value.to_string()),
        dns_names,
        ip_addresses,
        server_auth: extended.as_ref().is_some_and(|usage| usage.server_auth),
        client_auth: extended.as_ref().is_some_and(|usage| usage.client_auth),
    }
}

fn expected(
    common_name: &str,
    organization: Option<&str>,
    dns_names: &[&str],
    ip_addresses: &[&str],
    server_auth: bool,
    client_auth: bool,
) -> Identity {
    Identity {
        common_name: common_name.to_string(),
        organization: organization.map(str::to_string),
        dns_names: strings(dns_names),
        ip_addresses: ip_addresses.iter().map(|text| ip(text)).collect(),
        server_auth,
        client_auth,
    }
}

/// The default lab's certificates exactly as issue 2 lists them, in the order `specs` gives.
fn expected_default_lab() -> Vec<(String, Identity)> {
    let every_etcd_name = ["master1", "etcd3", "master2", "etcd1", "master3", "etcd2"];
    let mut list = Vec::new();
    for (node, alias, address) in
        [("master1", "etcd3", "10.240.0.11"), ("master2", "etcd1", "10.240.0.12"), ("master3", "etcd2", "10.240.0.13")]
    {
        // Own names first, then every other member (kubernetes#83028 / etcd#9949).
        let mut server_dns = vec![node, alias, "localhost"];
        server_dns.extend(every_etcd_name.iter().filter(|name| ![node, alias].contains(name)));
        let mut server_ips = vec![address, "127.0.0.1"];
        server_ips.extend(["10.240.0.11", "10.240.0.12", "10.240.0.13"].iter().filter(|ip| **ip != address));
        list.push((names::etcd_server(node), expected(node, None, &server_dns, &server_ips, true, true)));
        list.push((
            names::etcd_peer(node),
            expected(node, None, &[node, alias, "localhost"], &[address, "127.0.0.1"], true, true),
        ));
    }
    list.push((
        names::APISERVER_ETCD_CLIENT.to_string(),
        expected("kube-apiserver-etcd-client", None, &[], &[], false, true),
    ));
    list.push((
        names::APISERVER.to_string(),
        expected(
            "kube-apiserver",
            None,
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
                "master1",
                "master2",
                "master3",
            ],
            &["10.240.0.100", "10.240.0.11", "10.240.0.12", "10.240.0.13", "10.32.0.1", "127.0.0.1"],
            true,
            false,
        ),
    ));
    list.push((
        names::APISERVER_KUBELET_CLIENT.to_string(),
        expected("kube-apiserver-kubelet-client", Some("system:masters"), &[], &[], false, true),
    ));
    list.push((names::ADMIN.to_string(), expected("admin", Some("system:masters"), &[], &[], false, true)));
    list.push((
        names::CONTROLLER_MANAGER.to_string(),
        expected("system:kube-controller-manager", None, &[], &[], false, true),
    ));
    list.push((names::SCHEDULER.to_string(), expected("system:kube-scheduler", None, &[], &[], false, true)));
    list.push((names::KUBE_PROXY.to_string(), expected("system:kube-proxy", None, &[], &[], false, true)));
    // Client certificates only: each kubelet asks the API for its serving certificate.
    for node in ["worker1", "worker2"] {
        list.push((
            names::kubelet(node),
            expected(&format!("system:node:{node}"), Some("system:nodes"), &[], &[], false, true),
        ));
    }
    list
}

fn assert_key_matches(cert: &X509Certificate<'_>, key_pem: &str, name: &str) {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap_or_else(|error| panic!("{name}: key parses: {error}"));
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw(), "{name}: key matches");
}

#[test]
fn specs_list_exactly_the_certificates_of_the_issue_in_order() {
    let specs = pki::specs(&default_topology());
    let expected = expected_default_lab();
    let spec_names: Vec<_> = specs.iter().map(|spec| spec.name.as_str()).collect();
    let expected_names: Vec<_> = expected.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(spec_names, expected_names);
    assert_eq!(pki::specs(&default_topology()), specs, "specs are deterministic");
}

/// Checks that `issued` is a self-signed CA called `common_name` that lives about ten
/// years and goes with its key.
fn assert_is_a_ca(issued: &pki::Issued, common_name: &str) {
    let ca_der = der(&issued.cert_pem);
    let ca = parse(&ca_der);
    assert!(ca.is_ca(), "{common_name} is a CA");
    assert_eq!(ca.subject(), ca.issuer(), "{common_name} is self-signed");
    ca.verify_signature(None).expect("the CA's self-signature verifies");
    let ca_usage = ca.key_usage().unwrap().expect("the CA has key usage").value;
    assert!(ca_usage.key_cert_sign() && ca_usage.crl_sign() && ca_usage.digital_signature());
    assert_eq!(ca.subject().iter_common_name().next().unwrap().as_str().unwrap(), common_name);
    assert_key_matches(&ca, &issued.key_pem, common_name);
    let ca_lifetime = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
    assert!(ca_lifetime > 9 * 365 * 86_400, "{common_name} lives about ten years");
}

#[test]
fn every_certificate_has_its_subject_sans_and_usages_and_verifies_against_its_ca_only() {
    let topology = default_topology();
    let specs = pki::specs(&topology);
    let bundle = pki::issue_in_memory(&specs).expect("pki issues");
    assert_is_a_ca(&bundle.ca, pki::CA_COMMON_NAME);
    assert_is_a_ca(&bundle.etcd_ca, pki::ETCD_CA_COMMON_NAME);
    let cluster_der = der(&bundle.ca.cert_pem);
    let cluster = parse(&cluster_der);
    let etcd_der = der(&bundle.etcd_ca.cert_pem);
    let etcd = parse(&etcd_der);

    // etcd's CA signs etcd's members and the apiservers' client towards etcd, nothing
    // else (CIS 2.7); the cluster CA signs everything else.
    let by_etcd_ca: Vec<&str> =
        specs.iter().filter(|spec| spec.authority == Authority::Etcd).map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        by_etcd_ca,
        [
            "etcd-server-master1",
            "etcd-peer-master1",
            "etcd-server-master2",
            "etcd-peer-master2",
            "etcd-server-master3",
            "etcd-peer-master3",
            names::APISERVER_ETCD_CLIENT
        ]
    );

    let expected = expected_default_lab();
    assert_eq!(bundle.certificates.len(), expected.len());
    for (name, identity_wanted) in expected {
        let issued = bundle.get(&name);
        let leaf_der = der(&issued.cert_pem);
        let leaf = parse(&leaf_der);
        assert_eq!(identity(&leaf), identity_wanted, "{name}");
        assert!(!leaf.is_ca(), "{name} is not a CA");
        let usage = leaf.key_usage().unwrap().unwrap_or_else(|| panic!("{name} has key usage")).value;
        assert!(usage.digital_signature() && usage.key_encipherment(), "{name}: key usage");
        assert!(!usage.key_cert_sign(), "{name} cannot sign certificates");
        let (ca, other) = match specs.iter().find(|spec| spec.name == name).unwrap().authority {
            Authority::Cluster => (&cluster, &etcd),
            Authority::Etcd => (&etcd, &cluster),
        };
        assert_eq!(leaf.issuer(), ca.subject(), "{name}: issuer");
        leaf.verify_signature(Some(ca.public_key()))
            .unwrap_or_else(|error| panic!("{name} does not verify against its CA: {error}"));
        assert!(leaf.verify_signature(Some(other.public_key())).is_err(), "{name} verifies against the other CA");
        assert_key_matches(&leaf, &issued.key_pem, &name);
        let now = x509_parser::time::ASN1Time::now().timestamp();
        assert!(leaf.validity().not_before.timestamp() < now, "{name} is valid already");
        let lifetime = leaf.validity().not_after.timestamp() - now;
        assert!((360 * 86_400..=366 * 86_400).contains(&lifetime), "{name} lives about a year");
    }
}

#[test]
fn the_service_account_key_pair_belongs_together() {
    let bundle = pki::issue_in_memory(&[]).expect("pki issues");
    let key = rcgen::KeyPair::from_pem(&bundle.service_account.key_pem).expect("private key parses");
    assert!(bundle.service_account.cert_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(key.public_key_pem(), bundle.service_account.cert_pem);
}

#[test]
fn a_kubeconfig_with_files_names_the_certificate_and_key_and_embeds_no_key() {
    let bundle = pki::issue_in_memory(&pki::specs(&default_topology())).expect("pki issues");
    let text = pki::kubeconfig_with_files(
        "k8s",
        "https://10.240.0.100:8443",
        &bundle.ca.cert_pem,
        "system:node:worker1",
        "/etc/kubernetes/pki/kubelet.pem",
        "/etc/kubernetes/pki/kubelet-key.pem",
    );
    assert!(text.contains("    client-certificate: \"/etc/kubernetes/pki/kubelet.pem\"\n"), "{text}");
    assert!(text.contains("    client-key: \"/etc/kubernetes/pki/kubelet-key.pem\"\n"), "{text}");
    assert!(!text.contains("client-key-data") && !text.contains("PRIVATE KEY"), "{text}");
    assert!(text.contains("current-context: \"system:node:worker1@k8s\"\n"), "{text}");
}

#[test]
fn kubeconfig_embeds_the_ca_and_credentials() {
    let bundle = pki::issue_in_memory(&pki::specs(&default_topology())).expect("pki issues");
    let credentials = bundle.get(&names::kubelet("worker1"));
    let text =
        pki::kubeconfig("k8s", "https://10.240.0.100:8443", &bundle.ca.cert_pem, "system:node:worker1", credentials);
    let value_of = |key: &str| -> String {
        let prefix = format!("{key}: ");
        let line = text.lines().map(str::trim).find(|line| line.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {key} in\n{text}"))[prefix.len()..].to_string()
    };
    let decode = |key: &str| {
        use base64::prelude::{Engine, BASE64_STANDARD};
        String::from_utf8(BASE64_STANDARD.decode(value_of(key)).expect("base64")).expect("utf-8")
    };
    assert!(text.starts_with("apiVersion: v1\nkind: Config\n"));
    assert_eq!(value_of("server"), "\"https://10.240.0.100:8443\"");
    assert_eq!(value_of("current-context"), "\"system:node:worker1@k8s\"");
    assert_eq!(value_of("user"), "\"system:node:worker1\"");
    assert_eq!(value_of("cluster"), "\"k8s\"");
    assert_eq!(decode("certificate-authority-data"), bundle.ca.cert_pem);
    assert_eq!(decode("client-certificate-data"), credentials.cert_pem);
    assert_eq!(decode("client-key-data"), credentials.key_pem);
    for line in text.lines() {
        assert!(!line.contains('\t'), "YAML has no tabs: {line:?}");
    }
}

/// Every file in the PKI directory: name -> bytes.
fn snapshot(store: &Store) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(&store.dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().into_string().unwrap(), std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn load(store: &Store, specs: &[CertificateSpec]) -> Bundle {
    store.load_or_issue(specs).expect("pki loads")
}

#[test]
fn the_store_keeps_everything_private_and_reuses_it() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::new(state.path());
    let specs = pki::specs(&default_topology());
    let first = load(&store, &specs);

    assert_eq!(store.dir, state.path().join("pki"));
    assert_eq!(mode(&store.dir), 0o700, "the PKI directory is private");
    let files = snapshot(&store);
    let mut stems: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    stems.extend(["ca".to_string(), "etcd-ca".to_string(), "service-account".to_string()]);
    let mut expected_files: BTreeSet<String> =
        stems.iter().flat_map(|stem| [format!("{stem}.pem"), format!("{stem}-key.pem")]).collect();
    expected_files.insert("secrets-encryption.key".to_string());
    assert_eq!(files.keys().cloned().collect::<BTreeSet<_>>(), expected_files, "no temporary files left");
    for name in files.keys() {
        let wanted = if name.ends_with("-key.pem") || name.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&store.dir.join(name)), wanted, "mode of {name}");
    }
    assert_eq!(files["ca.pem"], first.ca.cert_pem.as_bytes());
    assert_eq!(files["ca-key.pem"], first.ca.key_pem.as_bytes());
    assert_eq!(files["etcd-ca.pem"], first.etcd_ca.cert_pem.as_bytes());
    assert_eq!(files["etcd-ca-key.pem"], first.etcd_ca.key_pem.as_bytes());
    assert_eq!(files["service-account.pem"], first.service_account.cert_pem.as_bytes());
    assert_eq!(files["service-account-key.pem"], first.service_account.key_pem.as_bytes());
    assert_eq!(files["apiserver.pem"], first.get(names::APISERVER).cert_pem.as_bytes());
    assert_eq!(files["secrets-encryption.key"], format!("{}\n", first.secrets_encryption_key).as_bytes());
    let key = BASE64_STANDARD.decode(&first.secrets_encryption_key).expect("base64");
    assert_eq!(key.len(), 32, "AES-256");

    let second = load(&store, &specs);
    assert_eq!(snapshot(&store), files, "a second run rewrites nothing");
    assert_eq!(second.ca, first.ca);
    assert_eq!(second.etcd_ca, first.etcd_ca);
    assert_eq!(second.certificates, first.certificates);
    assert_eq!(second.service_account, first.service_account);
    assert_eq!(second.secrets_encryption_key, first.secrets_encryption_key, "the key is kept: Secrets stay readable");
}

/// A lab made before etcd had a CA of its own: its etcd certificates, signed by the
/// cluster CA, are issued again from a new etcd CA; nothing else changes.
#[test]
fn certificates_signed_by_the_wrong_ca_are_issued_again_by_theirs() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::new(state.path());
    let specs = pki::specs(&default_topology());
    let cluster_signed: Vec<CertificateSpec> =
        specs.iter().map(|spec| CertificateSpec { authority: Authority::Cluster, ..spec.clone() }).collect();
    load(&store, &cluster_signed);
    std::fs::remove_file(store.cert_path("etcd-ca")).unwrap();
    std::fs::remove_file(store.key_path("etcd-ca")).unwrap();
    let before = snapshot(&store);

    let bundle = load(&store, &specs);
    let after = snapshot(&store);
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|(name, bytes)| before.get(*name) != Some(bytes))
        .map(|(name, _)| name.trim_end_matches(".pem").trim_end_matches("-key").to_string())
        .collect();
    let mut expected: BTreeSet<String> =
        specs.iter().filter(|spec| spec.authority == Authority::Etcd).map(|spec| spec.name.clone()).collect();
    expected.insert("etcd-ca".to_string());
    assert_eq!(changed, expected);
    let etcd_der = der(&bundle.etcd_ca.cert_pem);
    let etcd = parse(&etcd_der);
    let client_der = der(&bundle.get(names::APISERVER_ETCD_CLIENT).cert_pem);
    parse(&client_der).verify_signature(Some(etcd.public_key())).expect("signed by etcd's CA");
}

#[test]
fn a_topology_change_reissues_only_the_affected_certificates() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::new(state.path());
    let topology = default_topology();
    let old_specs = pki::specs(&topology);
    load(&store, &old_specs);
    let before = snapshot(&store);

    let mut moved = topology.clone();
    moved.nodes.iter_mut().find(|node| node.name == "master1").unwrap().address = Ipv4Addr::new(10, 240, 0, 14);
    let new_specs = pki::specs(&moved);
    let bundle = load(&store, &new_specs);
    let after = snapshot(&store);

    let affected: BTreeSet<String> =
        new_specs.iter().filter(|spec| !old_specs.contains(spec)).map(|spec| spec.name.clone()).collect();
    assert_eq!(
        affected,
        BTreeSet::from(
            ["etcd-server-master1", "etcd-server-master2", "etcd-server-master3", "etcd-peer-master1", "apiserver"]
                .map(String::from)
        ),
        "every etcd server names every member; the apiserver names every master"
    );
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|(name, bytes)| before.get(*name) != Some(bytes))
        .map(|(name, _)| name.trim_end_matches(".pem").trim_end_matches("-key").to_string())
        .collect();
    assert_eq!(changed, affected);

    let ca_der = der(&bundle.ca.cert_pem);
    let ca = parse(&ca_der);
    let apiserver_der = der(&bundle.get(names::APISERVER).cert_pem);
    let apiserver = parse(&apiserver_der);
    apiserver.verify_signature(Some(ca.public_key())).expect("the re-issued certificate is signed by the same CA");
    assert!(identity(&apiserver).ip_addresses.contains(&ip("10.240.0.14")));
}

#[test]
fn a_missing_or_damaged_leaf_is_reissued_and_a_loosened_key_is_tightened() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::new(state.path());
    let specs = pki::specs(&default_topology());
    load(&store, &specs);
    let before = snapshot(&store);

    std::fs::remove_file(store.cert_path(names::ADMIN)).unwrap();
    std::fs::write(store.key_path(names::SCHEDULER), "not a key").unwrap();
    let proxy_key = store.key_path(names::KUBE_PROXY);
    std::fs::set_permissions(&proxy_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    load(&store, &specs);
    let after = snapshot(&store);

    let changed: BTreeSet<&str> =
        after.keys().filter(|name| before.get(*name) != after.get(*name)).map(String::as_str).collect();
    assert_eq!(changed, BTreeSet::from(["admin.pem", "admin-key.pem", "kube-scheduler.pem", "kube-scheduler-key.pem"]));
    assert_eq!(mode(&proxy_key), 0o600);
}

#[test]
fn a_ca_certificate_without_its_key_is_an_error_naming_the_key() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::new(state.path());
    let specs = pki::specs(&default_topology());
    load(&store, &specs);
    let ca_key = store.key_path("ca");

    std::fs::remove_file(&ca_key).unwrap();
    match store.load_or_issue(&specs) {
        Err(error @ PkiError::Load { .. }) => {
            assert!(error.to_string().contains(&ca_key.display().to_string()), "{error}")
        }
        other => panic!("expected a load error, got {other:?}"),
    }

    std::fs::write(&ca_key, "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n").unwrap();
    let error = store.load_or_issue(&specs).expect_err("a corrupt CA key is an error");
    assert!(error.to_string().contains(&ca_key.display().to_string()), "{error}");
    assert!(store.cert_path("ca").exists(), "the CA certificate is left alone");
}

fn default_plan() -> (Topology, Bundle, Plan) {
    let topology = default_topology();
    let bundle = pki::issue_in_memory(&pki::specs(&topology)).expect("pki issues");
    let artifacts = Artifacts::expected(&topology, Path::new("/cache/k8s-lab"));
    let plan = plan::build(&PlanInputs {
        topology: &topology,
        pki: &bundle,
        artifacts: &artifacts,
        state_dir: PathBuf::from("/lab-state"),
    });
    (topology, bundle, plan)
}

#[test]
fn no_worker_ever_receives_the_ca_key_no_node_etcds_ca_key_and_every_key_is_secret() {
    let (topology, bundle, plan) = default_plan();
    for stage in &plan.stages {
        for actions in &stage.nodes {
            let node = topology.node(&actions.node).expect("planned node exists");
            for file in &actions.files {
                if let Content::Text(text) | Content::Secret(text) = &file.content {
                    assert!(
                        !text.contains(bundle.etcd_ca.key_pem.trim()),
                        "stage {} gives {} etcd's CA key in {}",
                        stage.stage,
                        node.name,
                        file.path
                    );
                }
                let carries_ca_key = match &file.content {
                    Content::Text(text) | Content::Secret(text) => text.contains(bundle.ca.key_pem.trim()),
                    Content::Artifact { .. } => false,
                };
                if carries_ca_key {
                    assert!(
                        node.has(Role::Master) && !node.has(Role::Worker),
                        "stage {} gives {} the CA key in {}",
                        stage.stage,
                        node.name,
                        file.path
                    );
                }
                if let Content::Text(text) = &file.content {
                    assert!(
                        !text.contains("PRIVATE KEY"),
                        "{} on {} holds a key in a non-secret file",
                        file.path,
                        node.name
                    );
                }
                if matches!(file.content, Content::Secret(_)) {
                    assert_eq!(file.mode, 0o600, "{} on {}", file.path, node.name);
                }
            }
        }
    }
}

#[test]
fn the_pki_stage_gives_each_node_what_its_roles_need() {
    let (topology, bundle, plan) = default_plan();
    let stage = plan.stages.iter().find(|stage| stage.stage == Stage::Pki).expect("pki stage");
    let files_of = |node: &str| -> BTreeMap<String, (u32, Content)> {
        let actions = stage.nodes.iter().find(|actions| actions.node == node).expect("node planned");
        actions.files.iter().map(|file| (file.path.clone(), (file.mode, file.content.clone()))).collect()
    };
    let certificate = |pem: &str| (0o644, Content::Text(pem.to_string()));
    let secret = |pem: &str| (0o600, Content::Secret(pem.to_string()));
    let pair = |files: &mut BTreeMap<String, (u32, Content)>, issued: &Issued, cert: String, key: String| {
        files.insert(cert, certificate(&issued.cert_pem));
        files.insert(key, secret(&issued.key_pem));
    };

    let etcd = paths::etcd_pki;
    let kubernetes = paths::kubernetes_pki;
    use paths::pki_files::*;
    let mut master1 = BTreeMap::new();
    master1.insert(etcd(CA_CERT), certificate(&bundle.etcd_ca.cert_pem));
    pair(&mut master1, bundle.get("etcd-server-master1"), etcd(ETCD_SERVER_CERT), etcd(ETCD_SERVER_KEY));
    pair(&mut master1, bundle.get("etcd-peer-master1"), etcd(ETCD_PEER_CERT), etcd(ETCD_PEER_KEY));
    master1.insert(kubernetes(CA_CERT), certificate(&bundle.ca.cert_pem));
    master1.insert(kubernetes(CA_KEY), secret(&bundle.ca.key_pem));
    master1.insert(kubernetes(ETCD_CA_CERT), certificate(&bundle.etcd_ca.cert_pem));
    pair(&mut master1, bundle.get(names::APISERVER), kubernetes(APISERVER_CERT), kubernetes(APISERVER_KEY));
    pair(
        &mut master1,
        bundle.get(names::APISERVER_ETCD_CLIENT),
        kubernetes(APISERVER_ETCD_CLIENT_CERT),
        kubernetes(APISERVER_ETCD_CLIENT_KEY),
    );
    pair(
        &mut master1,
        bundle.get(names::APISERVER_KUBELET_CLIENT),
        kubernetes(APISERVER_KUBELET_CLIENT_CERT),
        kubernetes(APISERVER_KUBELET_CLIENT_KEY),
    );
    pair(
        &mut master1,
        &bundle.service_account,
        kubernetes(SERVICE_ACCOUNT_PUBLIC_KEY),
        kubernetes(SERVICE_ACCOUNT_PRIVATE_KEY),
    );
    assert_eq!(files_of("master1"), master1);

    let mut worker2 = BTreeMap::new();
    worker2.insert(kubernetes(CA_CERT), certificate(&bundle.ca.cert_pem));
    pair(&mut worker2, bundle.get("kubelet-worker2"), kubernetes(KUBELET_CERT), kubernetes(KUBELET_KEY));
    assert_eq!(files_of("worker2"), worker2);

    assert_eq!(stage.nodes.len(), topology.nodes.len(), "every node gets the CA");
    assert!(stage.local_files.is_empty());
}

#[test]
fn a_separate_etcd_tier_gets_only_etcd_files() {
    let topology = Topology::load(&repository().join("examples/separate-etcd.toml")).expect("example loads").topology;
    let bundle = pki::issue_in_memory(&pki::specs(&topology)).expect("pki issues");
    let artifacts = Artifacts::expected(&topology, Path::new("/cache/k8s-lab"));
    let plan = plan::build(&PlanInputs {
        topology: &topology,
        pki: &bundle,
        artifacts: &artifacts,
        state_dir: PathBuf::from("/lab-state"),
    });
    let stage = plan.stages.iter().find(|stage| stage.stage == Stage::Pki).unwrap();
    for member in topology.nodes_with(Role::Etcd).filter(|node| !node.has(Role::Master)) {
        let actions = stage.nodes.iter().find(|actions| actions.node == member.name).unwrap();
        for file in &actions.files {
            assert!(file.path.starts_with(paths::ETCD_PKI_DIR), "{} on {}", file.path, member.name);
        }
        assert_eq!(actions.files.len(), 5, "{}: CA plus server and peer pairs", member.name);
    }
}

#[test]
fn the_admin_kubeconfig_goes_to_the_host_and_every_master() {
    let (topology, bundle, plan) = default_plan();
    let stage = plan.stages.iter().find(|stage| stage.stage == Stage::AdminKubeconfig).unwrap();
    let kubeconfig = pki::kubeconfig(
        &topology.name,
        "https://10.240.0.100:8443",
        &bundle.ca.cert_pem,
        "admin",
        bundle.get(names::ADMIN),
    );

    assert_eq!(stage.local_files.len(), 1);
    let local = &stage.local_files[0];
    assert_eq!(local.path, "/lab-state/admin.kubeconfig");
    assert_eq!((local.mode, &local.content), (0o600, &Content::Secret(kubeconfig.clone())));

    let masters: Vec<&str> = topology.nodes_with(Role::Master).map(|node| node.name.as_str()).collect();
    assert_eq!(stage.nodes.iter().map(|actions| actions.node.as_str()).collect::<Vec<_>>(), masters);
    for actions in &stage.nodes {
        let paths: Vec<&str> = actions.files.iter().map(|file| file.path.as_str()).collect();
        assert_eq!(paths, [paths::ADMIN_KUBECONFIG, paths::ROOT_KUBECONFIG]);
        for file in &actions.files {
            assert_eq!((file.mode, &file.content), (0o600, &Content::Secret(kubeconfig.clone())));
        }
    }
}

#[test]
fn a_client_certificate_spec_has_no_sans() {
    for spec in pki::specs(&default_topology()) {
        if spec.usages == [Usage::ClientAuth] {
            assert!(spec.dns_names.is_empty() && spec.ip_addresses.is_empty(), "{}", spec.name);
        }
    }
}
