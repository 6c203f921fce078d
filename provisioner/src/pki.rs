//! The lab's PKI (handbook chapter 3, done with rcgen instead of CFSSL).
//!
//! `specs` is pure: it lists every certificate the topology needs, with subject, SANs,
//! usages and the CA that signs it. `Store::load_or_issue` is the only part that does
//! I/O: it keeps the CAs, the certificates and the service-account key pair in the lab
//! state directory (private keys mode 0600), makes what is missing and reuses what is
//! there, so the lab keeps one identity across `up`, `down` and re-runs.
//!
//! There are two CAs (CIS 2.7). The cluster CA signs the apiservers', the kubelets' and
//! every Kubernetes client's certificates; etcd's own CA signs only the etcd members'
//! certificates and the apiservers' client certificate towards etcd, and etcd trusts
//! nothing else. With one CA for both, any certificate of the cluster (a kubelet's, on
//! a worker anyone may break into) would open etcd, and with it every object of the
//! cluster, to its holder. The etcd CA's key never leaves the host.
//!
//! Every key is ECDSA P-256. Kubernetes 1.20 and etcd 3.4 are Go programs whose TLS
//! stack accepts ECDSA certificates everywhere, and rcgen's default `ring` backend can
//! generate ECDSA keys but not RSA ones.

use std::collections::BTreeMap;
use std::fs::{self, Permissions};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::prelude::{Engine, BASE64_STANDARD};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::topology::{first_service_ip, Node, Role, Topology};

/// What a certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    ServerAuth,
    ClientAuth,
}

/// Which of the lab's CAs signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Authority {
    /// The cluster CA: the apiservers, the kubelets, every client of the API.
    Cluster,
    /// etcd's own CA: the members and their clients, nothing else.
    Etcd,
}

/// One certificate the lab issues from one of its CAs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSpec {
    /// File stem in the state directory and the key of `Bundle::certificates`,
    /// e.g. `etcd-server-master1`.
    pub name: String,
    /// The CA that signs it.
    pub authority: Authority,
    pub common_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usages: Vec<Usage>,
}

/// Names of the certificates, shared by the PKI and the stages that install them.
pub mod names {
    pub const APISERVER: &str = "apiserver";
    pub const APISERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";
    pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
    pub const ADMIN: &str = "admin";
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    pub const SCHEDULER: &str = "kube-scheduler";
    pub const KUBE_PROXY: &str = "kube-proxy";

    pub fn etcd_server(node: &str) -> String {
        format!("etcd-server-{node}")
    }
    pub fn etcd_peer(node: &str) -> String {
        format!("etcd-peer-{node}")
    }
    pub fn kubelet(node: &str) -> String {
        format!("kubelet-{node}")
    }
}

/// Subject common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "k8s-lab CA";
/// Subject common name of etcd's CA.
pub const ETCD_CA_COMMON_NAME: &str = "k8s-lab etcd CA";

/// File stems in the PKI directory besides the certificates named by their spec.
pub const CA_STEM: &str = "ca";
pub const ETCD_CA_STEM: &str = "etcd-ca";
const SERVICE_ACCOUNT_STEM: &str = "service-account";

/// The CA outlives any lab by far, so re-running `lab up` years later still trusts
/// the certificates it issued.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificates live one year, like kubeadm's. A lab is short-lived, and
/// `Store::load_or_issue` renews a leaf that is close to expiry on the next run, so
/// a short lifetime costs nothing and limits what a leaked key is worth.
const LEAF_VALIDITY: Duration = Duration::days(365);
/// How long before expiry `Store::load_or_issue` renews a leaf.
const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates are valid from a little before they were made, so that a node whose
/// clock lags the host's does not reject them as "not yet valid".
const CLOCK_SKEW: Duration = Duration::hours(1);

/// Every certificate the topology needs, in a stable order. Pure.
pub fn specs(topology: &Topology) -> Vec<CertificateSpec> {
    let network = &topology.network;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let etcd_members: Vec<&Node> = topology.nodes_with(Role::Etcd).collect();
    let mut specs = Vec::new();

    for member in &etcd_members {
        let mut own_dns_names = vec![member.name.clone()];
        own_dns_names.extend(member.aliases.iter().cloned());
        own_dns_names.push("localhost".to_string());
        let own_ip_addresses = vec![IpAddr::V4(member.address), localhost];

        // The serving certificate also names every other member. The etcd 3.4 client
        // inside kube-apiserver 1.20 may pin the TLS server name to the first entry of
        // --etcd-servers and then check every member against it (kubernetes#83028,
        // etcd#9949); when that first member is down, failover to the others only works
        // if each member's certificate is valid for the others' names and addresses.
        let mut server_dns_names = own_dns_names.clone();
        let mut server_ip_addresses = own_ip_addresses.clone();
        for other in &etcd_members {
            push_unique(&mut server_dns_names, other.name.clone());
            for alias in &other.aliases {
                push_unique(&mut server_dns_names, alias.clone());
            }
            push_unique(&mut server_ip_addresses, IpAddr::V4(other.address));
        }
        specs.push(CertificateSpec {
            name: names::etcd_server(&member.name),
            authority: Authority::Etcd,
            common_name: member.name.clone(),
            organization: None,
            dns_names: server_dns_names,
            ip_addresses: server_ip_addresses,
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
        });

        // The peer certificate names only this member: the other members check it
        // against the peer URL they were given for exactly this member.
        specs.push(CertificateSpec {
            name: names::etcd_peer(&member.name),
            authority: Authority::Etcd,
            common_name: member.name.clone(),
            organization: None,
            dns_names: own_dns_names,
            ip_addresses: own_ip_addresses,
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
        });
    }

    specs.push(CertificateSpec {
        authority: Authority::Etcd,
        ..client(names::APISERVER_ETCD_CLIENT, "kube-apiserver-etcd-client", None)
    });

    let masters: Vec<&Node> = topology.nodes_with(Role::Master).collect();
    let mut apiserver_ips = vec![IpAddr::V4(network.vip)];
    for master in &masters {
        push_unique(&mut apiserver_ips, IpAddr::V4(master.address));
    }
    push_unique(&mut apiserver_ips, IpAddr::V4(first_service_ip(network.service_cidr)));
    push_unique(&mut apiserver_ips, localhost);
    let mut apiserver_dns: Vec<String> = [
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{}", network.cluster_domain),
        "localhost".to_string(),
    ]
    .into();
    for master in &masters {
        push_unique(&mut apiserver_dns, master.name.clone());
    }
    specs.push(CertificateSpec {
        name: names::APISERVER.to_string(),
        authority: Authority::Cluster,
        common_name: "kube-apiserver".to_string(),
        organization: None,
        dns_names: apiserver_dns,
        ip_addresses: apiserver_ips,
        usages: vec![Usage::ServerAuth],
    });

    specs.push(client(names::APISERVER_KUBELET_CLIENT, "kube-apiserver-kubelet-client", Some("system:masters")));
    specs.push(client(names::ADMIN, "admin", Some("system:masters")));
    specs.push(client(names::CONTROLLER_MANAGER, "system:kube-controller-manager", None));
    specs.push(client(names::SCHEDULER, "system:kube-scheduler", None));
    specs.push(client(names::KUBE_PROXY, "system:kube-proxy", None));

    // The Node authorizer recognises a kubelet by CN system:node:NAME in group
    // system:nodes. The kubelet's serving certificate is not the lab's to issue: the
    // kubelet asks the API for it (see the kubelet_certificates stage module).
    for worker in topology.nodes_with(Role::Worker) {
        let common_name = format!("system:node:{}", worker.name);
        specs.push(client(&names::kubelet(&worker.name), &common_name, Some("system:nodes")));
    }
    specs
}

/// A client-only certificate of the cluster CA without SANs.
fn client(name: &str, common_name: &str, organization: Option<&str>) -> CertificateSpec {
    CertificateSpec {
        name: name.to_string(),
        authority: Authority::Cluster,
        common_name: common_name.to_string(),
        organization: organization.map(str::to_string),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        usages: vec![Usage::ClientAuth],
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The lab's whole PKI, loaded into memory for the planner.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The cluster CA.
    pub ca: Issued,
    /// etcd's CA: the plan uses its certificate only; its key stays on the host.
    pub etcd_ca: Issued,
    /// By `CertificateSpec::name`.
    pub certificates: BTreeMap<String, Issued>,
    /// The service-account signing key pair: (public PEM, private PEM).
    pub service_account: Issued,
    /// The AES key the apiservers encrypt Secrets in etcd with (CIS 1.2.33): 32 random
    /// bytes, base64, as an EncryptionConfiguration names it.
    pub secrets_encryption_key: String,
}

impl Bundle {
    /// The issued certificate `name`. Panics if the bundle was made from other specs,
    /// which is a programming error: bundles are always issued from `specs(topology)`.
    pub fn get(&self, name: &str) -> &Issued {
        self.certificates.get(name).unwrap_or_else(|| panic!("no certificate named {name} in the lab PKI"))
    }
}

/// Why the PKI could not be loaded or issued.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot issue certificate {name}: {source}")]
    Issue { name: String, source: rcgen::Error },
    #[error("cannot load {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// A CA's certificate and key, ready to sign.
struct Signer {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn stem(self) -> &'static str {
        match self {
            Authority::Cluster => CA_STEM,
            Authority::Etcd => ETCD_CA_STEM,
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            Authority::Cluster => CA_COMMON_NAME,
            Authority::Etcd => ETCD_CA_COMMON_NAME,
        }
    }
}

impl Signer {
    /// A fresh self-signed CA.
    fn generate(authority: Authority, now: OffsetDateTime) -> Result<Signer, PkiError> {
        let issue_error = |source| PkiError::Issue { name: authority.stem().to_string(), source };
        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = CertificateParams::default();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.distinguished_name = distinguished_name(authority.common_name(), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert_pem = params.self_signed(&key).map_err(issue_error)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Signer { issued: Issued { cert_pem, key_pem }, issuer: Issuer::new(params, key) })
    }

    /// Signs a fresh key pair for `spec`.
    fn issue(&self, spec: &CertificateSpec, now: OffsetDateTime) -> Result<Issued, PkiError> {
        let issue_error = |source| PkiError::Issue { name: spec.name.clone(), source };
        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = CertificateParams::default();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        params.distinguished_name = distinguished_name(&spec.common_name, spec.organization.as_deref());
        for dns_name in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(dns_name.as_str().try_into().map_err(issue_error)?));
        }
        params.subject_alt_names.extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = spec
            .usages
            .iter()
            .map(|usage| match usage {
                Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        params.use_authority_key_identifier_extension = true;
        let cert_pem = params.signed_by(&key, &self.issuer).map_err(issue_error)?.pem();
        Ok(Issued { cert_pem, key_pem: key.serialize_pem() })
    }
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

/// A fresh service-account key pair: (public PEM, private PEM).
///
/// ECDSA P-256, so kube-apiserver signs tokens with ES256: Kubernetes 1.20 accepts EC
/// keys for --service-account-key-file and --service-account-signing-key-file, and
/// rcgen's `ring` backend cannot generate RSA keys.
fn generate_service_account() -> Result<Issued, PkiError> {
    let key =
        KeyPair::generate().map_err(|source| PkiError::Issue { name: SERVICE_ACCOUNT_STEM.to_string(), source })?;
    Ok(Issued { cert_pem: key.public_key_pem(), key_pem: key.serialize_pem() })
}

/// The PKI directory inside the lab state directory.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store { dir: crate::state_dir::StateDir::new(state_dir).pki_dir() }
    }

    /// Where the certificate with file stem `stem` lives.
    pub fn cert_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.pem"))
    }

    /// Removes the certificate and key of `stem` (a node's, once the topology no longer
    /// has the node); what is not there is no error.
    pub fn remove(&self, stem: &str) -> Result<(), PkiError> {
        for path in [self.cert_path(stem), self.key_path(stem)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(PkiError::Io { path, source }),
            }
        }
        Ok(())
    }

    /// Where the private key of `stem` lives.
    pub fn key_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}-key.pem"))
    }

    /// Loads both CAs and every certificate in `specs`, issuing what is missing or
    /// whose stored subject/SANs no longer match its spec.
    ///
    /// A leaf is also re-issued when it is unreadable, not signed by its spec's CA
    /// (a lab made before etcd had a CA of its own), does not match its key, or
    /// expires within `RENEW_BEFORE`. A CA is never replaced while its certificate
    /// exists: a CA certificate without a usable key is an error, because a new CA
    /// would silently invalidate every running node.
    pub fn load_or_issue(&self, specs: &[CertificateSpec]) -> Result<Bundle, PkiError> {
        self.prepare_dir()?;
        let now = OffsetDateTime::now_utc();
        let cluster = self.load_or_create_signer(Authority::Cluster, now)?;
        let etcd = self.load_or_create_signer(Authority::Etcd, now)?;
        let cluster_der = pem_to_der(&cluster.issued.cert_pem, &self.cert_path(CA_STEM))?;
        let cluster_cert = parse_der(&cluster_der, &self.cert_path(CA_STEM))?;
        let etcd_der = pem_to_der(&etcd.issued.cert_pem, &self.cert_path(ETCD_CA_STEM))?;
        let etcd_cert = parse_der(&etcd_der, &self.cert_path(ETCD_CA_STEM))?;

        let mut certificates = BTreeMap::new();
        for spec in specs {
            let (signer, signer_cert) = match spec.authority {
                Authority::Cluster => (&cluster, &cluster_cert),
                Authority::Etcd => (&etcd, &etcd_cert),
            };
            let issued = match self.load_leaf(spec, signer_cert.public_key(), now)? {
                Ok(issued) => issued,
                Err(reason) => {
                    tracing::info!(certificate = %spec.name, %reason, "issuing certificate");
                    let issued = signer.issue(spec, now)?;
                    // Key first: if the run stops between the two writes, the old
                    // certificate no longer matches the new key and is re-issued next time.
                    write_atomically(&self.key_path(&spec.name), &issued.key_pem, 0o600)?;
                    write_atomically(&self.cert_path(&spec.name), &issued.cert_pem, 0o644)?;
                    issued
                }
            };
            certificates.insert(spec.name.clone(), issued);
        }

        let service_account = self.load_or_create_service_account()?;
        let secrets_encryption_key = self.load_or_create_secrets_encryption_key()?;
        Ok(Bundle { ca: cluster.issued, etcd_ca: etcd.issued, certificates, service_account, secrets_encryption_key })
    }

    /// Creates the PKI directory readable by its owner only, and tightens it if an
    /// earlier run or a person loosened it.
    fn prepare_dir(&self) -> Result<(), PkiError> {
        let io_error = |source| PkiError::Io { path: self.dir.clone(), source };
        if let Some(state_dir) = self.dir.parent() {
            fs::create_dir_all(state_dir).map_err(|source| PkiError::Io { path: state_dir.to_path_buf(), source })?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(error) if error.kind() != ErrorKind::AlreadyExists => return Err(io_error(error)),
            _ => {}
        }
        fs::set_permissions(&self.dir, Permissions::from_mode(0o700)).map_err(io_error)
    }

    fn load_or_create_signer(&self, authority: Authority, now: OffsetDateTime) -> Result<Signer, PkiError> {
        let cert_path = self.cert_path(authority.stem());
        let key_path = self.key_path(authority.stem());
        let Some(cert_pem) = read_optional(&cert_path)? else {
            tracing::info!(path = %cert_path.display(), "creating the {}", authority.common_name());
            let signer = Signer::generate(authority, now)?;
            write_atomically(&key_path, &signer.issued.key_pem, 0o600)?;
            write_atomically(&cert_path, &signer.issued.cert_pem, 0o644)?;
            return Ok(signer);
        };
        let key_pem = read_secret(&key_path)?.ok_or_else(|| PkiError::Load {
            path: key_path.clone(),
            message: format!(
                "the CA private key is missing although {} exists; restore it, or remove {} to start a new CA",
                cert_path.display(),
                self.dir.display()
            ),
        })?;
        let load_error = |path: &Path, message: String| PkiError::Load { path: path.to_path_buf(), message };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|error| load_error(&key_path, format!("not a PKCS#8 private key: {error}")))?;
        let ca_der = pem_to_der(&cert_pem, &cert_path)?;
        let ca_cert = parse_der(&ca_der, &cert_path)?;
        if !ca_cert.is_ca() {
            return Err(load_error(&cert_path, "is not a CA certificate".to_string()));
        }
        if ca_cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(load_error(&key_path, format!("does not belong to the CA in {}", cert_path.display())));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|error| load_error(&cert_path, format!("cannot sign with this CA: {error}")))?;
        Ok(Signer { issued: Issued { cert_pem, key_pem }, issuer })
    }

    /// The stored certificate and key for `spec`, or why they must be re-issued.
    fn load_leaf(
        &self,
        spec: &CertificateSpec,
        ca_public_key: &SubjectPublicKeyInfo<'_>,
        now: OffsetDateTime,
    ) -> Result<Result<Issued, String>, PkiError> {
        let cert_path = self.cert_path(&spec.name);
        let key_path = self.key_path(&spec.name);
        let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert_path)?, read_secret(&key_path)?) else {
            return Ok(Err("certificate or key missing".to_string()));
        };
        let Ok(key) = KeyPair::from_pem(&key_pem) else {
            return Ok(Err(format!("{} is not a private key", key_path.display())));
        };
        let Ok(der) = pem_to_der(&cert_pem, &cert_path) else {
            return Ok(Err(format!("{} is not a PEM certificate", cert_path.display())));
        };
        let Ok(cert) = parse_der(&der, &cert_path) else {
            return Ok(Err(format!("{} is not an X.509 certificate", cert_path.display())));
        };
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Ok(Err("certificate and key do not belong together".to_string()));
        }
        if cert.verify_signature(Some(ca_public_key)).is_err() {
            return Ok(Err(format!("not signed by the {}", spec.authority.common_name())));
        }
        if cert.validity().not_after.timestamp() < (now + RENEW_BEFORE).unix_timestamp() {
            return Ok(Err("expires soon".to_string()));
        }
        match describe(&spec.name, spec.authority, &cert) {
            Some(stored) if same_identity(&stored, spec) => Ok(Ok(Issued { cert_pem, key_pem })),
            _ => Ok(Err("subject, SANs or usages changed".to_string())),
        }
    }

    fn load_or_create_service_account(&self) -> Result<Issued, PkiError> {
        let public_path = self.cert_path(SERVICE_ACCOUNT_STEM);
        let key_path = self.key_path(SERVICE_ACCOUNT_STEM);
        let service_account = match read_secret(&key_path)? {
            // A damaged key is an error rather than replaced: a new key would
            // invalidate every service-account token the cluster has handed out.
            Some(key_pem) => {
                let key = KeyPair::from_pem(&key_pem).map_err(|error| PkiError::Load {
                    path: key_path.clone(),
                    message: format!("not a PKCS#8 private key: {error}"),
                })?;
                Issued { cert_pem: key.public_key_pem(), key_pem }
            }
            None => {
                let service_account = generate_service_account()?;
                write_atomically(&key_path, &service_account.key_pem, 0o600)?;
                service_account
            }
        };
        if read_optional(&public_path)?.as_deref() != Some(service_account.cert_pem.as_str()) {
            write_atomically(&public_path, &service_account.cert_pem, 0o644)?;
        }
        Ok(service_account)
    }

    /// Where the Secrets' encryption key is kept.
    pub fn secrets_encryption_key_path(&self) -> PathBuf {
        self.dir.join(SECRETS_ENCRYPTION_KEY_FILE)
    }

    fn load_or_create_secrets_encryption_key(&self) -> Result<String, PkiError> {
        let path = self.secrets_encryption_key_path();
        match read_secret(&path)? {
            // A damaged key is an error rather than replaced: with a new key, every
            // Secret the cluster has stored would be unreadable.
            Some(text) => {
                let key = text.trim();
                match BASE64_STANDARD.decode(key) {
                    Ok(bytes) if bytes.len() == SECRETS_ENCRYPTION_KEY_BYTES => Ok(key.to_string()),
                    _ => Err(PkiError::Load {
                        path,
                        message: format!("not {SECRETS_ENCRYPTION_KEY_BYTES} bytes in base64"),
                    }),
                }
            }
            None => {
                let key = generate_secrets_encryption_key()?;
                write_atomically(&path, &format!("{key}\n"), 0o600)?;
                Ok(key)
            }
        }
    }
}

/// The file in the PKI directory that holds the Secrets' encryption key.
const SECRETS_ENCRYPTION_KEY_FILE: &str = "secrets-encryption.key";
/// AES-256: the longest key the `aescbc` provider takes.
const SECRETS_ENCRYPTION_KEY_BYTES: usize = 32;

/// A fresh key for the `aescbc` provider, from the kernel's random source.
fn generate_secrets_encryption_key() -> Result<String, PkiError> {
    let source = Path::new("/dev/urandom");
    let mut key = [0u8; SECRETS_ENCRYPTION_KEY_BYTES];
    fs::File::open(source)
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut key))
        .map_err(|source_error| PkiError::Io { path: source.to_path_buf(), source: source_error })?;
    Ok(BASE64_STANDARD.encode(key))
}

/// The identity a stored certificate carries, in the shape of a spec (signed by
/// `authority`, which the caller checked), or `None` if its extensions cannot be read.
fn describe(name: &str, authority: Authority, cert: &X509Certificate<'_>) -> Option<CertificateSpec> {
    let attribute = |mut values: Vec<Option<&str>>| -> Option<Option<String>> {
        match values.len() {
            0 => Some(None),
            1 => values.pop().flatten().map(|value| Some(value.to_string())),
            _ => None,
        }
    };
    let subject = cert.subject();
    let common_name = attribute(subject.iter_common_name().map(|value| value.as_str().ok()).collect())??;
    let organization = attribute(subject.iter_organization().map(|value| value.as_str().ok()).collect())?;

    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Some(extension) = cert.subject_alternative_name().ok()? {
        for general_name in &extension.value.general_names {
            match general_name {
                GeneralName::DNSName(dns_name) => dns_names.push(dns_name.to_string()),
                GeneralName::IPAddress(bytes) => ip_addresses.push(ip_from_bytes(bytes)?),
                _ => return None,
            }
        }
    }
    let mut usages = Vec::new();
    if let Some(extension) = cert.extended_key_usage().ok()? {
        if extension.value.server_auth {
            usages.push(Usage::ServerAuth);
        }
        if extension.value.client_auth {
            usages.push(Usage::ClientAuth);
        }
    }
    Some(CertificateSpec {
        name: name.to_string(),
        authority,
        common_name,
        organization,
        dns_names,
        ip_addresses,
        usages,
    })
}

/// Equal subjects, SANs in the same order, and the same set of usages.
fn same_identity(stored: &CertificateSpec, spec: &CertificateSpec) -> bool {
    stored.common_name == spec.common_name
        && stored.organization == spec.organization
        && stored.dns_names == spec.dns_names
        && stored.ip_addresses == spec.ip_addresses
        && stored.usages.len() == spec.usages.len()
        && spec.usages.iter().all(|usage| stored.usages.contains(usage))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn pem_to_der(pem: &str, path: &Path) -> Result<Vec<u8>, PkiError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| PkiError::Load { path: path.to_path_buf(), message: format!("not a PEM file: {error}") })?;
    Ok(parsed.contents)
}

fn parse_der<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| PkiError::Load {
        path: path.to_path_buf(),
        message: format!("not an X.509 certificate: {error}"),
    })?;
    Ok(cert)
}

/// The file's text, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io { path: path.to_path_buf(), source }),
    }
}

/// Like `read_optional`, for a private key: also resets its mode to 0600 in case it
/// was loosened since the lab wrote it.
fn read_secret(path: &Path) -> Result<Option<String>, PkiError> {
    let text = read_optional(path)?;
    if text.is_some() {
        fs::set_permissions(path, Permissions::from_mode(0o600))
            .map_err(|source| PkiError::Io { path: path.to_path_buf(), source })?;
    }
    Ok(text)
}

/// Writes a PKI file atomically with its final mode (`crate::system::write_atomically`).
fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    crate::system::write_atomically(path, contents.as_bytes(), mode)
        .map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

/// Issues a fresh bundle in memory (tests, and `lab plan` before any state exists).
pub fn issue_in_memory(specs: &[CertificateSpec]) -> Result<Bundle, PkiError> {
    let now = OffsetDateTime::now_utc();
    let cluster = Signer::generate(Authority::Cluster, now)?;
    let etcd = Signer::generate(Authority::Etcd, now)?;
    let certificates = specs
        .iter()
        .map(|spec| {
            let signer = match spec.authority {
                Authority::Cluster => &cluster,
                Authority::Etcd => &etcd,
            };
            Ok((spec.name.clone(), signer.issue(spec, now)?))
        })
        .collect::<Result<_, PkiError>>()?;
    Ok(Bundle {
        ca: cluster.issued,
        etcd_ca: etcd.issued,
        certificates,
        service_account: generate_service_account()?,
        secrets_encryption_key: generate_secrets_encryption_key()?,
    })
}

/// A kubeconfig with embedded credentials for one user against `server`.
pub fn kubeconfig(cluster: &str, server: &str, ca_pem: &str, user: &str, credentials: &Issued) -> String {
    let user_fields = format!(
        "client-certificate-data: {}\n    client-key-data: {}",
        BASE64_STANDARD.encode(&credentials.cert_pem),
        BASE64_STANDARD.encode(&credentials.key_pem)
    );
    kubeconfig_with(cluster, server, ca_pem, user, &user_fields)
}

/// A kubeconfig whose user's certificate and key are files on the node, so that the
/// program using it sees a renewed certificate that replaced them. The kubelet needs
/// this: given embedded credentials, it treats them as bootstrap credentials and asks
/// for new ones at once.
pub fn kubeconfig_with_files(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_path: &str,
    key_path: &str,
) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let user_fields = format!("client-certificate: {}\n    client-key: {}", quote(cert_path), quote(key_path));
    kubeconfig_with(cluster, server, ca_pem, user, &user_fields)
}

/// A kubeconfig for one user against `server`, with `user_fields` as the user's
/// credentials.
///
/// Strings are written as double-quoted YAML scalars (JSON string syntax, which YAML
/// accepts) because user names such as `system:node:worker1` contain colons.
fn kubeconfig_with(cluster: &str, server: &str, ca_pem: &str, user: &str, user_fields: &str) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let context = format!("{user}@{cluster}");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    certificate-authority-data: {ca}
    server: {server}
users:
- name: {user}
  user:
    {user_fields}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user}
current-context: {context}
preferences: {{}}
",
        cluster = quote(cluster),
        server = quote(server),
        user = quote(user),
        context = quote(&context),
        ca = BASE64_STANDARD.encode(ca_pem),
    )
}
