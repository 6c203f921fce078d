//! Handbook 000 section 9: the container runtime (Docker in the handbook, containerd here).
//!
//! The kubelet does not run containers itself: it asks a container runtime through the
//! Container Runtime Interface (CRI) to pull images, create each pod's sandbox and start
//! its containers. The handbook used Docker; Kubernetes 1.20 talks to containerd's
//! built-in CRI plugin directly, and Debian packages containerd 1.6 with runc.
//!
//! The configuration sets what the lab needs and leaves the rest at containerd's
//! defaults:
//!
//! - `sandbox_image`: every pod starts with a tiny "pause" container that holds its
//!   network namespace. No registry can be reached, so it names the pause image the
//!   lab imports below rather than one containerd would try to pull.
//! - `restrict_oom_score_adj`: inside an nspawn container the node may not lower a
//!   process's OOM score below its own; without this, runc fails every container
//!   ("failed to update /proc/self/oom_score_adj"), which the kubelet only reports as
//!   "can't get final child's PID from pipe".
//! - runc through `io.containerd.runc.v2` with cgroupfs (`SystemdCgroup = false`):
//!   the kubelet is configured with the same driver, and the cgroup tree the node sees
//!   is the host's (bound in by nspawn), not one that the node's systemd manages.
//! - the CNI directories: Debian's plugins in /usr/lib/cni and the pod network stage's
//!   configuration in /etc/cni/net.d.
//!
//! Then the images: pods can only use images that are already on the node, so each
//! archive the artifacts step built is copied to the worker and imported into the
//! `k8s.io` namespace, the one containerd's CRI plugin (and so the kubelet) sees. Pods
//! refer to them with `imagePullPolicy: Never`.

use crate::artifacts::{images, ImageArchive};
use crate::paths;
use crate::plan::{CheckSpec, CommandSpec, Content, Context, FileSpec, RunWhen, StagePlan, UnitSpec};
use crate::topology::Role;

/// containerd's configuration file (Debian's containerd.service reads it).
pub const CONFIG: &str = "/etc/containerd/config.toml";
/// Debian's unit, left as packaged.
pub const UNIT: &str = "containerd.service";
/// The socket the kubelet talks CRI over.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd's namespace for images and containers of the CRI plugin.
const CRI_NAMESPACE: &str = "k8s.io";

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let config = config();

    for worker in context.topology.nodes_with(Role::Worker) {
        let actions = stage.node(&worker.name);
        actions.files.push(FileSpec::text(CONFIG, 0o644, config.clone()));
        actions.units.push(UnitSpec {
            name: UNIT.to_string(),
            restart_when_changed: vec![CONFIG.to_string()],
            ..UnitSpec::default()
        });

        for image in &context.artifacts.images {
            let on_node = node_path(image);
            actions.files.push(FileSpec {
                path: on_node.clone(),
                mode: 0o644,
                owner: "root".to_string(),
                content: Content::Artifact { path: image.path.clone() },
            });
            // Commands run before the stage's units are started, so containerd is
            // started here if it is not running yet. Importing an image that is already
            // there only re-tags it, so this runs on every `lab up`: a run interrupted
            // after copying an archive still ends with the image imported, and a rebuilt
            // archive under the same reference replaces the old image.
            actions.commands.push(CommandSpec {
                description: format!("import {} into containerd", image.reference),
                script: format!(
                    "systemctl start {UNIT} && ctr --namespace {CRI_NAMESPACE} images import {on_node} >/dev/null"
                ),
                when: RunWhen::Always,
            });
        }

        actions.checks.push(CheckSpec {
            description: format!("containerd on {} has the pause image", worker.name),
            script: format!("ctr --namespace {CRI_NAMESPACE} images list --quiet | grep -qxF {}", images::PAUSE),
            timeout_secs: 30,
        });
    }
}

/// Where an image archive is copied to on a worker.
fn node_path(image: &ImageArchive) -> String {
    let file_name = image.path.file_name().expect("an image archive path names a file").to_string_lossy();
    format!("{}/{file_name}", paths::IMAGES_DIR)
}

/// containerd 1.6's configuration (format version 2).
fn config() -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"# Written by the k8s lab; `lab up` overwrites local changes.
# containerd 1.6 for the kubelet (handbook 000 section 9); unset keys keep their defaults.
version = 2

[{cri}]
  # The pod sandbox image, imported from the lab's archives (nothing is pulled).
  sandbox_image = "{pause}"
  # Inside a container the node cannot lower OOM scores below its own.
  restrict_oom_score_adj = true

[{cri}.containerd]
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  # cgroupfs, like the kubelet's cgroupDriver.
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"#,
        pause = images::PAUSE,
        cni_bin = paths::CNI_BIN_DIR,
        cni_conf = paths::CNI_CONF_DIR,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, planned_nodes, stage_for};

    #[test]
    fn config_names_the_imported_pause_image_and_the_nspawn_fix() {
        let stage = stage_for("lab.toml", Stage::ContainerRuntime);
        let config = file(&stage, "worker1", CONFIG);
        assert!(config.contains("sandbox_image = \"registry.k8s.io/pause:3.2\"\n"));
        assert!(config.contains("restrict_oom_score_adj = true\n"));
        assert!(config.contains("SystemdCgroup = false\n"));
        assert!(config.contains("bin_dir = \"/usr/lib/cni\"\n"));
        assert!(config.contains("conf_dir = \"/etc/cni/net.d\"\n"));
    }

    #[test]
    fn every_image_is_copied_and_imported_on_workers_only() {
        let stage = stage_for("lab.toml", Stage::ContainerRuntime);
        let nodes = planned_nodes(&stage);
        assert_eq!(nodes, ["worker1", "worker2"]);
        let actions = &stage.nodes[0];
        let archives: Vec<&str> = actions
            .files
            .iter()
            .filter(|file| matches!(file.content, Content::Artifact { .. }))
            .map(|file| file.path.as_str())
            .collect();
        assert_eq!(
            archives,
            [
                "/var/lib/k8s-lab/images/pause-3.2.tar",
                "/var/lib/k8s-lab/images/web-1.tar",
                "/var/lib/k8s-lab/images/lab-dns-1.tar",
                "/var/lib/k8s-lab/images/dnsutils-1.tar"
            ]
        );
        assert_eq!(actions.commands.len(), 4);
        assert!(actions.commands[0].script.ends_with("images import /var/lib/k8s-lab/images/pause-3.2.tar >/dev/null"));
        assert_eq!(actions.units[0].restart_when_changed, [CONFIG]);
    }
}
