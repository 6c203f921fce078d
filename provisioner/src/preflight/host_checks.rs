//! The checks every lab needs from the host: lab ranges that no host route uses,
//! free disk and memory, and bridged traffic through iptables.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{lab_ranges, Finding, Status, CACHE_BYTES, NODE_DISK_BYTES, NODE_MEMORY_BYTES};
use crate::machines::hostnet::routes;
use crate::machines::NodeSpec;
use crate::system::System;
use crate::topology::{Backend, Topology};

/// The lab's ranges against the routes of `system`: one ok finding, or a failure
/// for every lab range and host route that overlap.
pub(super) fn route_findings(system: &dyn System, topology: &Topology) -> Vec<Finding> {
    const CHECK: &str = "lab ranges free of host routes";
    let routes = match routes::host_routes(system) {
        Ok(routes) => routes,
        Err(error) => {
            return vec![Finding::problem(CHECK, Status::Fail, error.to_string(), "apt-get install -y iproute2")]
        }
    };
    let bridge = crate::plan::bridge_name(&topology.name);
    let ranges = lab_ranges(topology);
    let problems = routes::overlapping_routes(&routes, &ranges, &bridge);
    if problems.is_empty() {
        let listed: Vec<String> = ranges.iter().map(|(_, range)| range.to_string()).collect();
        return vec![Finding::ok(
            CHECK,
            format!("{} do not overlap any of {} host routes", listed.join(", "), routes.len()),
        )];
    }
    problems
        .iter()
        .map(|problem| {
            Finding::problem(
                CHECK,
                Status::Fail,
                problem.to_string(),
                format!("choose another range for {} in the topology file, one no host route uses", problem.field),
            )
        })
        .collect()
}

/// Free space for the state directory (machine disks) and the cache (image and
/// builds), counted once when both are on the same filesystem.
pub(super) fn disk_findings(state_dir: &Path, cache_dir: &Path, nodes: u64) -> Vec<Finding> {
    let state_space = filesystem_space(&existing_ancestor(state_dir));
    let cache_space = filesystem_space(&existing_ancestor(cache_dir));
    let (state, cache) = (state_dir.display().to_string(), cache_dir.display().to_string());
    let need_state = nodes * NODE_DISK_BYTES;
    match (state_space, cache_space) {
        (Ok(state_space), Ok(cache_space)) if state_space.device == cache_space.device => vec![disk_finding(
            "free disk (state and cache)",
            &format!("{state} and {cache}"),
            state_space.free,
            need_state + CACHE_BYTES,
            nodes,
        )],
        (state_space, cache_space) => vec![
            match state_space {
                Ok(space) => disk_finding("free disk (state)", &state, space.free, need_state, nodes),
                Err(error) => unknown_disk("free disk (state)", &state, &error),
            },
            match cache_space {
                Ok(space) => disk_finding("free disk (cache)", &cache, space.free, CACHE_BYTES, 0),
                Err(error) => unknown_disk("free disk (cache)", &cache, &error),
            },
        ],
    }
}

/// Too little disk is a failure: an image copy or a build half written to a full
/// disk fails late and confusingly.
/// `place` names the directories the space is for; they need not exist yet (their
/// closest existing parent was measured).
fn disk_finding(check: &str, place: &str, free: u64, need: u64, nodes: u64) -> Finding {
    let why = match nodes {
        0 => format!("{} for the image and builds", gib(CACHE_BYTES)),
        _ if need > nodes * NODE_DISK_BYTES => {
            format!("{} for the image and builds + {} per node x {nodes}", gib(CACHE_BYTES), gib(NODE_DISK_BYTES))
        }
        _ => format!("{} per node x {nodes}", gib(NODE_DISK_BYTES)),
    };
    let detail = format!("{} free for {place}, need about {} ({why})", gib(free), gib(need));
    if free >= need {
        Finding::ok(check, detail)
    } else {
        Finding::problem(
            check,
            Status::Fail,
            detail,
            format!("free {} for {place} or point LAB_DIR / XDG_CACHE_HOME at a larger disk", gib(need - free)),
        )
    }
}

fn unknown_disk(check: &str, place: &str, error: &str) -> Finding {
    Finding::problem(
        check,
        Status::Warn,
        format!("cannot measure the free space for {place}: {error}"),
        "check `df -h`",
    )
}

/// How much memory the nodes want, and how that adds up: a container uses about
/// 1 GiB, a VM takes its whole size from the host.
pub(super) fn memory_need(topology: &Topology) -> (u64, String) {
    let nodes = topology.nodes.len() as u64;
    if topology.machines.backend == Backend::Nspawn {
        return (nodes * NODE_MEMORY_BYTES, format!("{} per node x {nodes}", gib(NODE_MEMORY_BYTES)));
    }
    let sizes: Vec<u64> =
        topology.nodes.iter().map(|node| u64::from(NodeSpec::of(node).size.memory_mib) << 20).collect();
    let sum: Vec<String> = sizes.iter().map(|&size| gib(size)).collect();
    (sizes.iter().sum(), format!("the VMs' memory, {}", sum.join(" + ")))
}

/// Memory is only a warning: nodes do not reserve it, and a small topology or an
/// idle cluster may get by with less.
pub(super) fn memory_finding(available: Option<u64>, need: u64, basis: &str) -> Finding {
    const CHECK: &str = "free memory";
    match available {
        None => Finding::problem(CHECK, Status::Warn, "cannot read MemAvailable from /proc/meminfo", "check `free -h`"),
        Some(available) if available >= need => {
            Finding::ok(CHECK, format!("{} available, need about {} ({basis})", gib(available), gib(need)))
        }
        Some(available) => Finding::problem(
            CHECK,
            Status::Warn,
            format!(
                "{} available, the lab wants about {} ({basis}); nodes may be killed when memory runs out",
                gib(available),
                gib(need)
            ),
            "use a topology with fewer nodes (examples/minimal.toml) or free memory",
        ),
    }
}

/// kube-proxy's iptables rules see traffic between pods on one worker's bridge only
/// when the kernel passes bridged frames through iptables (`br_netfilter`).
/// Without it Services reached from a pod on the same node break, but the rest of
/// the lab works, so this is a warning.
pub(super) fn bridge_netfilter_finding() -> Finding {
    const CHECK: &str = "bridged traffic through iptables (br_netfilter)";
    const SYSCTLS: &str = "/proc/sys/net/bridge";
    if Path::new(SYSCTLS).exists() {
        return Finding::ok(CHECK, format!("{SYSCTLS} exists"));
    }
    let loaded = Command::new("modprobe")
        .arg("br_netfilter")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map(|output| (output.status.success(), String::from_utf8_lossy(&output.stderr).trim().to_string()));
    match loaded {
        Ok(_) if Path::new(SYSCTLS).exists() => Finding::ok(CHECK, "loaded the br_netfilter module"),
        Ok((_, message)) => Finding::problem(
            CHECK,
            Status::Warn,
            format!("{SYSCTLS} is missing and `modprobe br_netfilter` did not add it: {message}"),
            "modprobe br_netfilter (as root, on a kernel with CONFIG_BRIDGE_NETFILTER)",
        ),
        Err(error) => Finding::problem(
            CHECK,
            Status::Warn,
            format!("{SYSCTLS} is missing and modprobe cannot run: {error}"),
            "apt-get install -y kmod && modprobe br_netfilter",
        ),
    }
}

struct Space {
    free: u64,
    device: u64,
}

/// The free bytes on the filesystem holding `path`, and its device. `f_bavail`
/// leaves out the blocks ext4 reserves for root: the lab runs as root and could use
/// them, but a host whose disk is down to its reserve is already in trouble.
fn filesystem_space(path: &Path) -> Result<Space, String> {
    let device = fs::metadata(path).map_err(|error| error.to_string())?.dev();
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|error| error.to_string())?;
    // SAFETY: statvfs only writes into the zeroed struct we own, given a valid C string.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(Space { free: stats.f_bavail as u64 * stats.f_frsize as u64, device })
}

/// The directory itself, or the closest parent that exists (the state and cache
/// directories are made by the first `lab up`).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors().find(|ancestor| ancestor.exists()).unwrap_or(Path::new("/")).to_path_buf()
}

pub(super) fn available_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?;
    Some(kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::tests::lab_topology;
    use crate::system::RecordingSystem;

    #[test]
    fn disk_findings_say_what_the_space_is_for() {
        let fail = disk_finding("free disk (state)", "/srv/lab", 2 << 30, 5 << 30, 5);
        assert_eq!(fail.status, Status::Fail);
        assert_eq!(fail.detail, "2.0 GiB free for /srv/lab, need about 5.0 GiB (1.0 GiB per node x 5)");
        assert_eq!(
            fail.fix.as_deref(),
            Some("free 3.0 GiB for /srv/lab or point LAB_DIR / XDG_CACHE_HOME at a larger disk")
        );
        let both = disk_finding("free disk (state and cache)", "/srv/lab and /var/cache", 20 << 30, 9 << 30, 5);
        assert_eq!(both.status, Status::Ok);
        assert!(both.detail.ends_with("(4.0 GiB for the image and builds + 1.0 GiB per node x 5)"), "{}", both.detail);
    }

    #[test]
    fn little_memory_is_a_warning() {
        assert_eq!(memory_finding(Some(8 << 30), 5 << 30, "1.0 GiB per node x 5").status, Status::Ok);
        assert_eq!(memory_finding(Some(2 << 30), 5 << 30, "1.0 GiB per node x 5").status, Status::Warn);
        assert_eq!(memory_finding(None, 5 << 30, "1.0 GiB per node x 5").status, Status::Warn);
    }

    #[test]
    fn vms_need_their_whole_size_and_containers_about_a_gibibyte() {
        let mut topology =
            Topology::parse(include_str!("../../../examples/minimal.toml"), Path::new("examples/minimal.toml"))
                .expect("examples/minimal.toml")
                .topology;
        assert_eq!(memory_need(&topology), (2 << 30, "1.0 GiB per node x 2".to_string()));
        topology.machines.backend = Backend::Libvirt;
        assert_eq!(memory_need(&topology), (5 << 30, "the VMs' memory, 3.0 GiB + 2.0 GiB".to_string()));
    }

    fn routes_host(json: &str) -> RecordingSystem {
        let system = RecordingSystem::new();
        system.reply("ip -4 -j route show table all", json);
        system
    }

    #[test]
    fn lab_ranges_clear_of_host_routes_pass_and_the_labs_multipath_route_is_its_own() {
        let system = routes_host(
            r#"[
            {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","flags":[]},
            {"dst":"10.32.0.0/24","flags":[],"nexthops":[{"gateway":"10.240.0.11","dev":"lab-k8s"},
             {"gateway":"10.240.0.21","dev":"lab-k8s"}]}
        ]"#,
        );
        let findings = route_findings(&system, &lab_topology());
        assert_eq!(
            findings,
            [Finding::ok(
                "lab ranges free of host routes",
                "10.240.0.0/24, 10.240.0.100/32, 10.200.0.0/16, 10.32.0.0/24 do not overlap any of 3 host routes"
            )]
        );
        assert_eq!(system.commands(), ["ip -4 -j route show table all"]);
    }

    #[test]
    fn a_lab_range_under_a_host_route_fails_naming_both() {
        let system = routes_host(
            r#"[
            {"dst":"default","gateway":"10.240.0.254","dev":"eth0","flags":[]},
            {"dst":"10.240.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","flags":[]},
            {"dst":"10.32.0.0/24","flags":[],"nexthops":[{"gateway":"10.240.0.11","dev":"lab-k8s"},
             {"gateway":"192.0.2.9","dev":"eth1"}]}
        ]"#,
        );
        let findings = route_findings(&system, &lab_topology());
        let failures: Vec<(&str, Option<&str>)> =
            findings.iter().map(|finding| (finding.detail.as_str(), finding.fix.as_deref())).collect();
        assert_eq!(
            failures,
            [
                (
                    "network.node_subnet = 10.240.0.0/24: overlaps the host route `10.240.0.0/16 dev eth0 table \
                     main`, which is not on the lab bridge lab-k8s",
                    Some("choose another range for network.node_subnet in the topology file, one no host route uses")
                ),
                (
                    "network.vip = 10.240.0.100/32: overlaps the host route `10.240.0.0/16 dev eth0 table main`, \
                     which is not on the lab bridge lab-k8s",
                    Some("choose another range for network.vip in the topology file, one no host route uses")
                ),
                (
                    "network.service_cidr = 10.32.0.0/24: overlaps the host route `10.32.0.0/24 table main`, which \
                     is not on the lab bridge lab-k8s",
                    Some("choose another range for network.service_cidr in the topology file, one no host route uses")
                ),
            ]
        );
        assert!(findings.iter().all(|finding| finding.status == Status::Fail));
    }

    #[test]
    fn unreadable_routes_fail_the_check() {
        let system = RecordingSystem::new();
        system.fail("ip -4 -j route show table all", "exit status 1: Error: ipv4: FIB table does not exist.");
        let findings = route_findings(&system, &lab_topology());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Fail);
        assert_eq!(
            findings[0].detail,
            "`ip -4 -j route show table all` failed: exit status 1: Error: ipv4: FIB table does not exist."
        );
        let system = routes_host("not json");
        assert!(route_findings(&system, &lab_topology())[0].detail.starts_with("cannot parse `ip -j route` output"));
    }
}
