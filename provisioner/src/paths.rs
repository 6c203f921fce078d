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

/// Path of a kubeconfig, e.g. `kubeconfig("kube-scheduler")`.
pub fn kubeconfig(component: &str) -> String {
    format!("{KUBERNETES_DIR}/{component}.kubeconfig")
}

/// Path of a unit file, e.g. `unit("etcd.service")`.
pub fn unit(name: &str) -> String {
    format!("{SYSTEMD_DIR}/{name}")
}
