//! Boots one real VM of a tiny lab with the libvirt backend, talks to it over SSH,
//! powers it off and starts it again from its kept disk, destroys it, and checks
//! that libvirt and the host kept nothing: no domain, network, bridge, route or disk.
//!
//! Built with the `libvirt` feature only. It runs where libvirtd answers (the lab
//! starts libvirtd itself, but a test does not start daemons on a host) and says why
//! and passes otherwise. The node image comes from the same cache as `lab up`. Under
//! software emulation (no KVM) the VM boots in about a minute, so the test takes a
//! few. The lab uses its own name, bridge and ranges (10.246.0.0/24 and neighbours).
#![cfg(feature = "libvirt")]

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::lab::{missing_program, not_root, TestLab};
use provisioner::host::Host;
use provisioner::machines;
use provisioner::ssh;

const NODE: &str = "solo";

const TOPOLOGY: &str = r#"
name = "lvtest"
[machines]
backend = "libvirt"
[network]
node_subnet = "10.246.0.0/24"
gateway = "10.246.0.1"
vip = "10.246.0.100"
pod_cidr = "10.206.0.0/16"
service_cidr = "10.38.0.0/24"
cluster_dns = "10.38.0.10"
[[node]]
name = "solo"
address = "10.246.0.11"
roles = ["etcd", "master", "lb", "worker"]
"#;

/// How long the VM may take to answer SSH: a minute under TCG on an idle host, more
/// on a busy one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why VMs cannot be booted here, if they cannot.
fn unavailable() -> Option<String> {
    not_root()
        .or_else(|| {
            UnixStream::connect("/run/libvirt/libvirt-sock")
                .is_err()
                .then(|| "libvirtd is not running (`libvirtd -d`, or `lab up` with backend libvirt starts it)".into())
        })
        .or_else(|| {
            missing_program(&["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "mmdebstrap", "ssh-keygen", "ip", "virsh"])
        })
}

#[test]
fn a_vm_boots_answers_ssh_survives_a_power_off_and_leaves_nothing_when_destroyed() {
    if let Some(reason) = unavailable() {
        eprintln!("skipping the libvirt test: {reason}");
        return;
    }
    let mut lab = TestLab::new("libvirt", TOPOLOGY);
    let network = lab.ensure_network();
    assert!(network.bridge_created, "the libvirt network is new: {network:?}");
    assert!(network.routes.iter().any(|route| route.starts_with("10.206.0.0/24 via 10.246.0.11")), "{network:?}");

    let host = lab.start(true, BOOT_TIMEOUT);
    lab.assert_running();

    let run = |host: &ssh::SshHost, script: &str| {
        let output = host.run(script).unwrap_or_else(|error| panic!("{script}: {error}"));
        assert_eq!(output.status, 0, "{script}: {}{}", output.stdout, output.stderr);
        output.stdout.trim().to_string()
    };
    assert_eq!(run(&host, "hostname"), NODE);
    assert!(run(&host, "ip -4 -brief address show host0").contains("10.246.0.11/24"), "the NIC is host0");
    assert_eq!(run(&host, "systemd-detect-virt --vm"), "qemu");
    assert!(run(&host, "cat /proc/cmdline").contains("systemd.unified_cgroup_hierarchy=0"));
    assert!(run(&host, "ls /sys/fs/cgroup").contains("memory"), "cgroup v1 controllers are mounted");
    assert_eq!(run(&host, "ip -4 route show default"), "", "a node has no default route");
    let booted = host.run("systemctl is-system-running --wait").expect("run systemctl");
    let failed = run(&host, "systemctl --failed --no-legend");
    assert_eq!(booted.stdout.trim(), "running", "failed units: {failed}");
    let machine_id = run(&host, "cat /etc/machine-id");
    let host_key = run(&host, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert!(host_key.ends_with(&format!("root@{NODE}")), "{host_key}");
    host.put_file("/root/lab-test.txt", 0o640, "root", b"kept across a power-off\n").expect("put a file");
    drop(host);

    // `lab down` and `lab up`: the disk survives, the node comes back as itself.
    lab.stop("powered off");
    let host = lab.start(false, BOOT_TIMEOUT);
    assert_eq!(run(&host, "cat /root/lab-test.txt"), "kept across a power-off");
    assert_eq!(run(&host, "cat /etc/machine-id"), machine_id, "the node keeps its machine ID");
    assert_eq!(run(&host, "cat /etc/ssh/ssh_host_ed25519_key.pub"), host_key, "the node keeps its host key");
    drop(host);

    lab.destroy();
    assert_nothing_left(&lab.bridge, lab.state.path());
}

fn assert_nothing_left(bridge: &str, state: &Path) {
    assert!(!machines::hostnet::bridge_exists(bridge), "bridge {bridge} is still there");
    let routes = Command::new("ip").args(["-4", "route", "show", "table", "all"]).output().expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    for needle in [bridge, "10.246.0.", "10.206.", "10.38.0."] {
        assert!(!routes.contains(needle), "a route of the lab is left ({needle}):\n{routes}");
    }
    assert!(!state.join("machines").exists(), "the machines' disks are left");
    for (what, list) in [("domain", "list"), ("network", "net-list")] {
        let output =
            Command::new("virsh").args(["-c", "qemu:///system", list, "--all", "--name"]).output().expect("virsh");
        let names = String::from_utf8_lossy(&output.stdout);
        assert!(!names.contains("lab-lvtest-"), "a libvirt {what} of the lab is left:\n{names}");
    }
}
