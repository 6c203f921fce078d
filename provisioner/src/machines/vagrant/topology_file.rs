//! `STATE/vagrant/topology.json`: everything the Vagrantfile reads, written by the lab
//! before each `vagrant up`. The Vagrantfile decides nothing itself.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::{config_disk_name, lab_key_paths, Vagrant};
use crate::machines::vm_image::{self, Accelerator, VmImage};

/// What `STATE/vagrant/topology.json` holds: everything the Vagrantfile uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VagrantTopology {
    pub lab: String,
    pub state_dir: PathBuf,
    /// Each machine's domain is this prefix and the node name.
    pub domain_prefix: String,
    /// The description of every domain: it names the lab and the state directory.
    pub description: String,
    pub network: NetworkRecord,
    pub storage_pool: PoolRecord,
    pub ssh: SshRecord,
    pub machine: MachineRecord,
    #[serde(rename = "box")]
    pub vm_box: BoxRecord,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkRecord {
    /// The libvirt network, Vagrant's management network.
    pub name: String,
    pub bridge: String,
    /// The node subnet, e.g. `10.244.0.0/24`.
    pub subnet: Ipv4Net,
    /// The host's address on the bridge.
    pub gateway: std::net::Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolRecord {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshRecord {
    pub username: String,
    pub private_key: PathBuf,
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineRecord {
    /// vagrant-libvirt's `driver`: `kvm`, or `qemu` for software emulation.
    pub driver: String,
    pub cpu_mode: String,
    pub cpu_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxRecord {
    pub name: String,
    /// Whether the lab made the box from its node image (else Vagrant fetches it).
    pub local: bool,
    /// Direct kernel boot, for the lab's own box (it has no boot loader).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmd_line: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub roles: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The MAC address of the node's one network card.
    pub mac: String,
    /// The config disk's file name in the storage pool.
    pub config_disk: String,
    pub console_log: PathBuf,
}

impl Vagrant {
    /// What the Vagrantfile reads: the lab's nodes with their roles and sizes, and the
    /// box made from `vm` unless the lab names a public one.
    pub(super) fn topology_record(
        &self,
        vm: &VmImage,
        accelerator: Accelerator,
        (kernel, initrd): (PathBuf, PathBuf),
    ) -> VagrantTopology {
        let key = lab_key_paths(&self.spec.state_dir);
        let public_box = self.spec.vagrant_box.as_deref();
        let local = public_box.is_none();
        VagrantTopology {
            lab: self.spec.lab.clone(),
            state_dir: self.spec.state_dir.clone(),
            domain_prefix: self.object_prefix(),
            description: self.description(),
            network: NetworkRecord {
                name: self.network_name(),
                bridge: self.spec.bridge.clone(),
                subnet: self.spec.gateway.trunc(),
                gateway: self.spec.gateway.addr(),
            },
            storage_pool: PoolRecord { name: self.pool_name(), path: self.pool_dir() },
            ssh: SshRecord { username: "root".into(), private_key: key.0, public_key: key.1 },
            machine: match accelerator {
                Accelerator::Kvm => {
                    MachineRecord { driver: "kvm".into(), cpu_mode: "host-passthrough".into(), cpu_model: None }
                }
                Accelerator::Tcg => {
                    MachineRecord { driver: "qemu".into(), cpu_mode: "custom".into(), cpu_model: Some("qemu64".into()) }
                }
            },
            vm_box: BoxRecord {
                name: self.box_name(&vm.key, public_box),
                local,
                kernel: local.then_some(kernel),
                initrd: local.then_some(initrd),
                cmd_line: local.then(|| vm_image::KERNEL_COMMAND_LINE.to_string()),
            },
            nodes: self
                .spec
                .nodes
                .iter()
                .map(|node| NodeRecord {
                    name: node.name.clone(),
                    address: node.address,
                    roles: node.roles.iter().map(ToString::to_string).collect(),
                    cpus: node.size.cpus,
                    memory_mib: node.size.memory_mib,
                    mac: vm_image::mac_address(&self.spec.lab, &node.name),
                    config_disk: config_disk_name(&node.name),
                    console_log: self.console_path(&node.name),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backend, vm};
    use super::*;

    #[test]
    fn the_topology_file_says_everything_the_vagrantfile_reads() {
        let vagrant = backend();
        let boot = (
            PathBuf::from("/srv/lab/vagrant/boot/node-abc/vmlinuz"),
            PathBuf::from("/srv/lab/vagrant/boot/node-abc/initrd.img"),
        );
        let record = vagrant.topology_record(&vm(), Accelerator::Tcg, boot);
        let json: serde_json::Value = serde_json::to_value(&record).expect("json");
        assert_eq!(json["lab"], "vagmin");
        assert_eq!(json["domain_prefix"], "lab-vagmin-");
        assert_eq!(json["network"]["name"], "lab-vagmin-net");
        assert_eq!(json["network"]["bridge"], "lab-vagmin");
        assert_eq!(json["network"]["subnet"], "10.244.0.0/24");
        assert_eq!(json["network"]["gateway"], "10.244.0.1");
        assert_eq!(json["storage_pool"]["name"], "lab-vagmin-pool");
        assert_eq!(json["storage_pool"]["path"], "/srv/lab/vagrant/pool");
        assert_eq!(json["ssh"]["username"], "root");
        assert_eq!(json["ssh"]["private_key"], "/srv/lab/ssh/id_ed25519");
        assert_eq!(json["ssh"]["public_key"], "/srv/lab/ssh/id_ed25519.pub");
        assert_eq!(json["machine"]["driver"], "qemu");
        assert_eq!(json["machine"]["cpu_model"], "qemu64");
        assert_eq!(json["box"]["name"], "k8s-lab-vagmin/node-abc");
        assert_eq!(json["box"]["kernel"], "/srv/lab/vagrant/boot/node-abc/vmlinuz");
        assert_eq!(json["box"]["cmd_line"], vm_image::KERNEL_COMMAND_LINE);
        let master = &json["nodes"][0];
        assert_eq!(master["name"], "master1");
        assert_eq!(master["address"], "10.244.0.11");
        assert_eq!(master["roles"], serde_json::json!(["etcd", "master", "lb"]));
        assert_eq!(master["cpus"], 2);
        assert_eq!(master["memory_mib"], 3072);
        assert_eq!(master["mac"], vm_image::mac_address("vagmin", "master1"));
        assert_eq!(master["config_disk"], "master1-config.img");
        assert_eq!(master["console_log"], "/srv/lab/machines/master1/console.log");
        assert_eq!(json["nodes"][1]["memory_mib"], 2048);
    }

    #[test]
    fn a_public_box_boots_by_itself() {
        let boot = (PathBuf::from("/k"), PathBuf::from("/i"));
        let mut vagrant = backend();
        vagrant.spec.vagrant_box = Some("org/box".into());
        let record = vagrant.topology_record(&vm(), Accelerator::Kvm, boot);
        assert_eq!(
            record.vm_box,
            BoxRecord { name: "org/box".into(), local: false, kernel: None, initrd: None, cmd_line: None }
        );
        assert_eq!(
            record.machine,
            MachineRecord { driver: "kvm".into(), cpu_mode: "host-passthrough".into(), cpu_model: None }
        );
    }
}
