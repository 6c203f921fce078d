//! What the nodes run that does not come from Debian packages in the node image:
//! the Kubernetes binaries and the container images, all made locally.
//!
//! `Artifacts` is the manifest the planner reads: paths only, no I/O. Building and
//! caching the files it names is the job of `artifacts::build`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::topology::Topology;

pub mod build;
mod cache;
mod commands;
mod image_archives;
mod kubernetes;
pub mod oci;
mod release;

/// The Kubernetes binaries every lab installs.
pub const KUBERNETES_BINARIES: [&str; 6] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"];

/// A container image archive and the reference pods use for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageArchive {
    /// e.g. `registry.k8s.io/pause:3.2`; pods use it with `imagePullPolicy: Never`.
    pub reference: String,
    /// An OCI or docker archive for `ctr -n k8s.io images import`.
    pub path: PathBuf,
}

/// Image references the stages use, in one place.
pub mod images {
    /// The sandbox (pause) image containerd starts every pod with.
    pub const PAUSE: &str = "registry.k8s.io/pause:3.2";
    /// A small web server for NodePort and pod-to-pod checks.
    pub const WEB: &str = "k8s-lab.local/web:1";
    /// The port the web image's httpd listens on; `GET /` answers with the pod's hostname.
    pub const WEB_PORT: u16 = 8080;
    /// The lab's own cluster DNS server.
    pub const LAB_DNS: &str = "k8s-lab.local/lab-dns:1";
    /// BIND's DNS tools with the C library's resolver, for checks from inside a pod.
    pub const DNSUTILS: &str = "k8s-lab.local/dnsutils:1";
}

/// Where every artifact of one lab is (or will be) in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct Artifacts {
    pub kubernetes_version: String,
    /// By binary name (see `KUBERNETES_BINARIES`).
    pub binaries: BTreeMap<String, PathBuf>,
    pub images: Vec<ImageArchive>,
}

impl Artifacts {
    /// The manifest for `topology` with everything under `cache_dir`. Pure: the files
    /// need not exist yet (`lab plan` works before anything is built).
    pub fn expected(topology: &Topology, cache_dir: &Path) -> Self {
        let version = &topology.kubernetes.version;
        let bin_dir = match &topology.kubernetes.dir {
            Some(dir) if topology.kubernetes.source == crate::topology::ArtifactSource::Dir => dir.clone(),
            _ => cache::kubernetes_dir(topology, cache_dir).join("bin"),
        };
        let binaries = KUBERNETES_BINARIES.iter().map(|name| (name.to_string(), bin_dir.join(name))).collect();
        let image_dir = cache_dir.join("images");
        let images = [images::PAUSE, images::WEB, images::LAB_DNS, images::DNSUTILS]
            .iter()
            .map(|reference| ImageArchive {
                reference: reference.to_string(),
                path: image_dir.join(format!("{}.tar", archive_stem(reference))),
            })
            .collect();
        Artifacts { kubernetes_version: version.clone(), binaries, images }
    }

    pub fn binary(&self, name: &str) -> &Path {
        self.binaries.get(name).unwrap_or_else(|| panic!("no Kubernetes binary named {name} in the manifest"))
    }
}

/// A file-name-safe stem for an image reference: `k8s-lab.local/web:1` -> `web-1`.
fn archive_stem(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.replace(':', "-")
}

/// What the build modules' tests share: the default topology and a progress sink.
#[cfg(test)]
mod test_support {
    use std::cell::RefCell;
    use std::path::Path;

    use crate::topology::Topology;

    pub fn topology() -> Topology {
        Topology::parse(include_str!("../../../lab.toml"), Path::new("lab.toml")).unwrap().topology
    }

    /// Collects progress lines for assertions.
    #[derive(Default)]
    pub struct Recorder(RefCell<Vec<String>>);

    impl Recorder {
        pub fn record(&self, line: &str) {
            self.0.borrow_mut().push(line.to_string());
        }

        pub fn lines(self) -> Vec<String> {
            self.0.into_inner()
        }
    }
}
