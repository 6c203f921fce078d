//! The smoke test every VM backend passes (`libvirt.rs`, `vagrant.rs`): one VM of a
//! lab of one node boots the node image, answers SSH, runs commands, keeps its disk,
//! machine ID and host key across a power-off, and `destroy` leaves nothing of it in
//! libvirt or on the host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::lab::{missing_program, not_root, TestLab};
use provisioner::host::Host;
use provisioner::machines::{self, libvirt_host};
use provisioner::ssh;

/// How long the VM may take to answer SSH: a minute under TCG on an idle host, more
/// on a busy one, and 150 s more when its boot hangs and is reset. Two boots must end
/// within the test runner's limit of 600 s (`.config/nextest.toml`), so that a boot
/// that never answers fails the test, which then removes its lab.
const BOOT_TIMEOUT: Duration = Duration::from_secs(270);

/// The lab's ranges, which nothing may route once it is destroyed.
const RANGES: [&str; 3] = ["10.246.0.", "10.206.", "10.38.0."];

/// The topology of the smoke test's lab on `backend`: its own name, bridge and ranges
/// (10.246.0.0/24 and neighbours), so it never touches another lab.
pub fn topology(name: &str, backend: &str) -> String {
    format!(
        r#"
name = "{name}"
[machines]
backend = "{backend}"
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
"#
    )
}

/// Why VMs cannot be booted here, if they cannot: not root, or a program missing
/// that `cargo lab doctor --backend libvirt` (or `vagrant`) installs.
pub fn unavailable(extra_programs: &[&str]) -> Option<String> {
    let mut programs = vec![
        "libvirtd",
        "virtlogd",
        "virsh",
        "qemu-system-x86_64",
        "qemu-img",
        "mkfs.ext4",
        "mmdebstrap",
        "ssh-keygen",
        "ip",
    ];
    programs.extend_from_slice(extra_programs);
    not_root().or_else(|| missing_program(&programs))
}

/// Boots the lab's one VM and checks it as `lab up` needs it, powers it off and starts
/// it again from its kept disk, then destroys the lab and checks that nothing is left.
/// libvirtd is started the way `lab up` starts it (`ensure_libvirtd`), so a host where
/// libvirt was never set up by hand goes through the lab's own set-up.
pub fn boots_survives_a_power_off_and_leaves_nothing(kind: &str, lab_name: &str) {
    libvirt_host::ensure_libvirtd().expect("libvirtd starts as `lab up` starts it");
    let mut lab = TestLab::new(kind, &topology(lab_name, kind));
    let network = lab.ensure_network();
    assert!(network.routes.iter().any(|route| route.starts_with("10.206.0.0/24 via 10.246.0.11")), "{network:?}");

    let host = lab.start(true, BOOT_TIMEOUT);
    lab.assert_running();
    let run = |host: &ssh::SshHost, script: &str| {
        let output = host.run(script).unwrap_or_else(|error| panic!("{script}: {error}"));
        assert_eq!(output.status, 0, "{script}: {}{}", output.stdout, output.stderr);
        output.stdout.trim().to_string()
    };
    assert_eq!(run(&host, "hostname"), lab.node.name);
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
    assert!(host_key.ends_with(&format!("root@{}", lab.node.name)), "{host_key}");
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
    assert_nothing_left(lab_name, &lab.bridge, lab.state.path());
}

/// No bridge, route, disk, libvirt domain, network, storage pool or volume of the lab
/// `lab_name` is left.
fn assert_nothing_left(lab_name: &str, bridge: &str, state: &Path) {
    assert!(!machines::hostnet::bridge_exists(bridge), "bridge {bridge} is still there");
    let routes = Command::new("ip").args(["-4", "route", "show", "table", "all"]).output().expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    for needle in std::iter::once(bridge).chain(RANGES) {
        assert!(!routes.contains(needle), "a route of the lab is left ({needle}):\n{routes}");
    }
    assert!(!state.join("machines").exists(), "the machines' disks are left");
    let prefix = format!("lab-{lab_name}-");
    for (what, list) in [("domain", "list"), ("network", "net-list"), ("storage pool", "pool-list")] {
        let names = virsh(&[list, "--all", "--name"]);
        assert!(!names.contains(&prefix), "a libvirt {what} of the lab is left:\n{names}");
    }
    for pool in virsh(&["pool-list", "--all", "--name"]).lines().map(str::trim).filter(|pool| !pool.is_empty()) {
        let volumes = virsh(&["vol-list", "--pool", pool]);
        assert!(
            !volumes.contains(&prefix) && !volumes.contains("solo"),
            "a volume of the lab is left in {pool}:\n{volumes}"
        );
    }
}

fn virsh(arguments: &[&str]) -> String {
    let output = Command::new("virsh").args(["-c", libvirt_host::URI]).args(arguments).output().expect("virsh");
    assert!(output.status.success(), "virsh {arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
