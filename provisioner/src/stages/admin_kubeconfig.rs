//! Handbook 000 section 5: kubectl and the admin kubeconfig.
//!
//! The handbook sets up `kubectl` with the admin certificate (O=system:masters, so
//! RBAC lets it do anything) and points it at the API. The lab writes that kubeconfig
//! twice: on the host in the lab state directory, where `cargo lab kubectl` uses it,
//! and on every master, both at the lab's path and as root's default kubeconfig so
//! that a plain `kubectl` works there. It targets the virtual IP, so it keeps working
//! whichever master holds it.

use crate::paths;
use crate::pki::{self, names};
use crate::plan::{Context, FileSpec, StagePlan};
use crate::state_dir::StateDir;
use crate::topology::Role;

/// The user name the kubeconfig gives the admin credentials.
const ADMIN_USER: &str = "admin";

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let kubeconfig = pki::kubeconfig(
        &context.topology.name,
        &context.api_server_url,
        &context.pki.ca.cert_pem,
        ADMIN_USER,
        context.pki.get(names::ADMIN),
    );

    stage
        .local_files
        .push(FileSpec::secret(StateDir::new(&context.state_dir).admin_kubeconfig().to_string_lossy(), &kubeconfig));
    for master in context.topology.nodes_with(Role::Master) {
        let actions = stage.node(&master.name);
        actions.files.push(FileSpec::secret(paths::ADMIN_KUBECONFIG, &kubeconfig));
        actions.files.push(FileSpec::secret(paths::ROOT_KUBECONFIG, &kubeconfig));
    }
}
