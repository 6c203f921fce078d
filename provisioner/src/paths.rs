//! Where things live on a node. One place, so that stages, checks and the
//! conformance suite agree on every path.

/// Kubernetes and etcd binaries installed by the hosts stage.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Every lab-made Kubernetes file (configs, kubeconfigs).
pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
/// Kubernetes certificates and keys.
pub const KUBERNETES_PKI_DIR: &str = "/etc/kubernetes/pki";
/// etcd certificates and keys.
pub const ETCD_PKI_DIR: &str = "/etc/etcd/pki";
/// etcd's data directory.
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// Unit files the lab writes (they take precedence over packaged units).
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";
/// Image archives copied to workers before `ctr images import`.
pub const IMAGES_DIR: &str = "/var/lib/k8s-lab/images";
/// Manifests applied with kubectl from the first master.
pub const MANIFESTS_DIR: &str = "/etc/kubernetes/manifests-lab";
/// The admin kubeconfig on masters (also written to the host's state directory).
pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.kubeconfig";

/// kubectl as the cluster admin, for commands run on a master.
pub fn admin_kubectl() -> String {
    format!("{BIN_DIR}/kubectl --kubeconfig {ADMIN_KUBECONFIG}")
}
/// CNI configuration and plugins.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Path of a Kubernetes PKI file, e.g. `kubernetes_pki("apiserver.pem")`.
pub fn kubernetes_pki(file: &str) -> String {
    format!("{KUBERNETES_PKI_DIR}/{file}")
}

/// Path of an etcd PKI file, e.g. `etcd_pki("server.pem")`.
pub fn etcd_pki(file: &str) -> String {
    format!("{ETCD_PKI_DIR}/{file}")
}

/// Path of a Kubernetes binary on the nodes, e.g. `kubernetes_binary("kubelet")`.
pub fn kubernetes_binary(name: &str) -> String {
    format!("{BIN_DIR}/{name}")
}

/// Path of a kubeconfig, e.g. `kubeconfig("kube-scheduler")`.
pub fn kubeconfig(component: &str) -> String {
    format!("{KUBERNETES_DIR}/{component}.kubeconfig")
}

/// Path of a unit file, e.g. `unit("etcd.service")`.
pub fn unit(name: &str) -> String {
    format!("{SYSTEMD_DIR}/{name}")
}

/// File names of the certificates and keys inside `ETCD_PKI_DIR` and `KUBERNETES_PKI_DIR`.
/// The PKI stage writes these files and the component stages point their flags at them,
/// so both sides take the names from here, e.g. `etcd_pki(pki_files::ETCD_SERVER_CERT)`.
pub mod pki_files {
    /// In `KUBERNETES_PKI_DIR`, the cluster CA's certificate; in `ETCD_PKI_DIR`, etcd's
    /// own CA's, the only one etcd trusts (as kubeadm's `etcd/ca.crt`).
    pub const CA_CERT: &str = "ca.pem";
    /// In `KUBERNETES_PKI_DIR` on masters: etcd's CA, which the apiserver checks the
    /// members' certificates against.
    pub const ETCD_CA_CERT: &str = "etcd-ca.pem";
    /// The cluster CA private key: masters only, for the controller-manager's CSR signer.
    pub const CA_KEY: &str = "ca-key.pem";

    /// In `ETCD_PKI_DIR`: the member's serving certificate for clients (port 2379).
    pub const ETCD_SERVER_CERT: &str = "server.pem";
    pub const ETCD_SERVER_KEY: &str = "server-key.pem";
    /// In `ETCD_PKI_DIR`: the member's certificate towards the other members (port 2380).
    pub const ETCD_PEER_CERT: &str = "peer.pem";
    pub const ETCD_PEER_KEY: &str = "peer-key.pem";

    /// In `KUBERNETES_PKI_DIR`: kube-apiserver's serving certificate.
    pub const APISERVER_CERT: &str = "apiserver.pem";
    pub const APISERVER_KEY: &str = "apiserver-key.pem";
    /// In `KUBERNETES_PKI_DIR`: kube-apiserver's client certificate towards etcd.
    pub const APISERVER_ETCD_CLIENT_CERT: &str = "apiserver-etcd-client.pem";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "apiserver-etcd-client-key.pem";
    /// In `KUBERNETES_PKI_DIR`: kube-apiserver's client certificate towards kubelets.
    pub const APISERVER_KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.pem";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client-key.pem";
    /// In `KUBERNETES_PKI_DIR`: the service-account key pair (public key as `service-account.pem`).
    pub const SERVICE_ACCOUNT_PUBLIC_KEY: &str = "service-account.pem";
    pub const SERVICE_ACCOUNT_PRIVATE_KEY: &str = "service-account-key.pem";
    /// In `KUBERNETES_PKI_DIR` on workers: the kubelet's certificate, which serves its
    /// port 10250 and authenticates it to the apiserver as system:node:NAME.
    pub const KUBELET_CERT: &str = "kubelet.pem";
    pub const KUBELET_KEY: &str = "kubelet-key.pem";
}

/// root's default kubeconfig on masters, so that a plain `kubectl` works there.
pub const ROOT_KUBECONFIG: &str = "/root/.kube/config";

/// The network interface a node's address lives on. systemd-nspawn with
/// `--network-bridge` names the container's side of the veth pair `host0`; a libvirt
/// backend would use its guest's name (e.g. `ens3`), so keepalived and anything else
/// that names the interface takes it from here.
pub const NODE_INTERFACE: &str = "host0";

/// etcd and etcdctl come from Debian's etcd-server and etcd-client packages in the node image.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// How the apiservers encrypt Secrets in etcd; holds the key (CIS 1.2.32-1.2.33).
pub const ENCRYPTION_CONFIG: &str = "/etc/kubernetes/encryption-config.yaml";
/// Which requests the apiservers write to their audit log, and how much of each.
pub const AUDIT_POLICY: &str = "/etc/kubernetes/audit-policy.yaml";
/// Each apiserver's audit log (CIS 1.2.21), rotated by the apiserver itself.
pub const AUDIT_LOG: &str = "/var/log/kubernetes/audit.log";
/// HAProxy's configuration, read by Debian's haproxy.service.
pub const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
/// keepalived's configuration, read by Debian's keepalived.service.
pub const KEEPALIVED_CONFIG: &str = "/etc/keepalived/keepalived.conf";
