//! What the lab keeps track of in libvirt itself for Vagrant's machines: the storage
//! pool, the lab network Vagrant uses as its management network, and the domains.
//! Each is this state directory's only when it says so (the pool by its path, the
//! network by its tag, a domain by its description); another one of the same name is
//! refused, and left alone by `destroy`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::Vagrant;
use crate::machines::libvirt_host::{self, virsh, xml_escape};
use crate::machines::{hostnet, Leftover, MachineError, MachineState, Machines as _};

/// The XML namespace of the tag on the lab network, naming the state directory.
const METADATA_NAMESPACE: &str = "urn:k8s-lab:vagrant:1";

/// The network's tag naming the state directory, as libvirt prints it back.
fn state_dir_tag(state_dir: &Path) -> String {
    format!("<lab:state-dir>{}</lab:state-dir>", xml_escape(&state_dir.to_string_lossy()))
}

/// The lab network's `<metadata>` element: its tag naming the state directory.
fn network_metadata(state_dir: &Path) -> String {
    format!(
        "<metadata><lab:vagrant xmlns:lab=\"{METADATA_NAMESPACE}\">{}</lab:vagrant></metadata>",
        state_dir_tag(state_dir)
    )
}

impl Vagrant {
    /// The state of the node's domain, as libvirt has it; `Missing` when there is none.
    pub(super) fn domain_state(&self, node: &str) -> MachineState {
        match virsh(&["domstate", &self.domain_name(node)]) {
            Ok(output) => libvirt_host::parse_domain_state(&output),
            Err(_) => MachineState::Missing,
        }
    }

    /// Whether the node's domain is this state directory's (its description says so).
    pub(super) fn owns_domain(&self, node: &str) -> bool {
        virsh(&["desc", &self.domain_name(node)]).is_ok_and(|description| description.trim() == self.description())
    }

    /// Makes the lab's storage pool exist and run: a directory pool in the state
    /// directory, transient (libvirt forgets it when it stops; the next `lab up` makes
    /// it again).
    pub(super) fn ensure_pool(&self) -> Result<(), MachineError> {
        let name = self.pool_name();
        let path = self.pool_dir();
        let host_error = |message: String| MachineError::Host { message };
        match virsh(&["pool-dumpxml", &name]) {
            Ok(xml) => {
                if !xml.contains(&format!("<path>{}</path>", xml_escape(&path.to_string_lossy()))) {
                    return Err(host_error(format!(
                        "libvirt storage pool {name} belongs to another lab or state directory; destroy that lab first"
                    )));
                }
                if virsh(&["pool-info", &name])
                    .is_ok_and(|info| info.lines().any(|line| line.starts_with("State:") && line.contains("running")))
                {
                    return Ok(());
                }
                virsh(&["pool-start", &name]).map(drop).map_err(|failure| host_error(failure.to_string()))
            }
            Err(_) => {
                fs::create_dir_all(&path)
                    .map_err(|error| host_error(format!("cannot create {}: {error}", path.display())))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|error| host_error(format!("cannot open {} to QEMU: {error}", path.display())))?;
                let target = path.to_string_lossy().into_owned();
                virsh(&["pool-create-as", &name, "dir", "--target", &target])
                    .map(drop)
                    .map_err(|failure| host_error(failure.to_string()))
            }
        }
    }

    /// The lab network: isolated, tagged with the state directory, on the lab bridge.
    pub(super) fn ensure_libvirt_network(&self) -> Result<bool, MachineError> {
        let name = self.network_name();
        let network_error = |message: String| MachineError::Network { message };
        let expected = libvirt_host::network_xml(
            &name,
            &self.spec.bridge,
            self.spec.gateway,
            &network_metadata(&self.spec.state_dir),
        );
        if let Ok(xml) = virsh(&["net-dumpxml", &name]) {
            if !xml.contains(&state_dir_tag(&self.spec.state_dir)) {
                return Err(network_error(format!(
                    "libvirt network {name} belongs to another lab or state directory; destroy that lab first"
                )));
            }
            let active = virsh(&["net-info", &name])
                .is_ok_and(|info| info.lines().any(|line| line.starts_with("Active:") && line.contains("yes")));
            if active && libvirt_host::isolated_with_gateway(&xml, self.spec.gateway) {
                return Ok(false);
            }
            // Made for another gateway (the topology changed): replaced.
            let _ = virsh(&["net-destroy", &name]);
            let _ = virsh(&["net-undefine", &name]);
        }
        if hostnet::bridge_exists(&self.spec.bridge) {
            return Err(network_error(format!(
                "bridge {} already exists on the host but is not the libvirt network {name}; \
                 destroy the lab that made it (`lab destroy` with that lab's LAB_DIR and backend)",
                self.spec.bridge
            )));
        }
        let file = self.dir().join("network.xml");
        fs::create_dir_all(self.dir())
            .and_then(|()| fs::write(&file, expected))
            .map_err(|error| network_error(format!("cannot write {}: {error}", file.display())))?;
        let file_text = file.to_string_lossy().into_owned();
        virsh(&["net-create", &file_text])
            .map_err(|failure| network_error(format!("cannot start the libvirt network {name}: {failure}")))?;
        Ok(true)
    }

    /// Removes the lab's pool with every volume in it (the box copy, the machines'
    /// disks, the config disks), then its directory.
    pub(super) fn destroy_pool(&self) -> Vec<Leftover> {
        let name = self.pool_name();
        let mut leftovers = Vec::new();
        if let Ok(xml) = virsh(&["pool-dumpxml", &name]) {
            if !xml.contains(&format!("<path>{}</path>", xml_escape(&self.pool_dir().to_string_lossy()))) {
                return vec![Leftover::new(
                    format!("libvirt storage pool {name}"),
                    "it belongs to another lab or state directory; left alone",
                )];
            }
            let volumes = virsh(&["vol-list", "--pool", &name]).unwrap_or_default();
            for volume in libvirt_host::parse_volume_list(&volumes) {
                if let Err(failure) = virsh(&["vol-delete", "--pool", &name, &volume]) {
                    leftovers.push(Leftover::new(format!("libvirt volume {volume}"), failure.to_string()));
                }
            }
            if let Err(failure) = virsh(&["pool-destroy", &name]) {
                leftovers.push(Leftover::new(format!("libvirt storage pool {name}"), failure.to_string()));
            }
            // A pool someone made persistent by hand is forgotten too.
            let _ = virsh(&["pool-undefine", &name]);
        }
        leftovers
    }

    /// Removes the lab's network, when it is this state directory's.
    pub(super) fn destroy_network(&self) -> Vec<Leftover> {
        let name = self.network_name();
        let Ok(xml) = virsh(&["net-dumpxml", &name]) else {
            return Vec::new();
        };
        if !xml.contains(&state_dir_tag(&self.spec.state_dir)) {
            return vec![Leftover::new(
                format!("libvirt network {name}"),
                "it belongs to another lab or state directory; left alone",
            )];
        }
        let _ = virsh(&["net-destroy", &name]);
        let _ = virsh(&["net-undefine", &name]);
        match virsh(&["net-info", &name]) {
            Ok(_) => vec![Leftover::new(format!("libvirt network {name}"), "still present after net-destroy")],
            Err(_) => Vec::new(),
        }
    }

    /// Removes the lab's domains that Vagrant left (an interrupted first `lab up`, or a
    /// failed `vagrant destroy`), when they are this state directory's.
    pub(super) fn destroy_domains(&self) -> Vec<Leftover> {
        // Which domains exist is asked once, so that a libvirtd that stopped answering
        // is reported as what it is: a domain that may still be defined (seen after a
        // libvirtd started by `destroy` died at once), not a domain that is gone.
        let defined = match virsh(&["list", "--all", "--name"]) {
            Ok(names) => names.lines().map(|name| name.trim().to_owned()).collect::<Vec<_>>(),
            Err(failure) => {
                return vec![Leftover::new("the lab's libvirt domains", format!("cannot list them: {failure}"))];
            }
        };
        let mut leftovers = Vec::new();
        for node in self.known_nodes() {
            let domain = self.domain_name(&node);
            if !defined.contains(&domain) {
                continue;
            }
            if !self.owns_domain(&node) {
                leftovers.push(Leftover::new(
                    format!("libvirt domain {domain}"),
                    "it belongs to another lab or state directory; left alone",
                ));
                continue;
            }
            let _ = virsh(&["destroy", &domain]);
            if let Err(failure) = virsh(&["undefine", &domain]) {
                leftovers.push(Leftover::new(format!("libvirt domain {domain}"), failure.to_string()));
            }
        }
        leftovers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_isolated_tagged_and_written_with_a_netmask() {
        let metadata = network_metadata(Path::new("/srv/lab"));
        let xml =
            libvirt_host::network_xml("lab-vagmin-net", "lab-vagmin", "10.244.0.1/24".parse().unwrap(), &metadata);
        assert!(!xml.contains("<forward"), "{xml}");
        assert!(!xml.contains("<dhcp"), "{xml}");
        assert!(xml.contains("<dns enable='no'/>"), "{xml}");
        assert!(xml.contains("<bridge name='lab-vagmin'"), "{xml}");
        assert!(xml.contains("<ip address='10.244.0.1' netmask='255.255.255.0'/>"), "{xml}");
        assert!(xml.contains(&state_dir_tag(Path::new("/srv/lab"))), "{xml}");
        assert!(xml.contains("<lab:vagrant xmlns:lab=\"urn:k8s-lab:vagrant:1\">"), "{xml}");
    }
}
