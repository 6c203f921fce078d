//! Host checks: what `lab doctor` reports and what `lab up` verifies before it
//! creates anything.
//!
//! Each check gives a `Finding`: ok, a warning (the lab can start, something will
//! be slower or limited), or a failure (the lab must not start), with the exact
//! command that fixes it. The machine backend says what it needs itself (its
//! programs, root, kernel links); this module adds what every lab needs from the
//! host: disk, memory, bridged traffic through iptables, and above all lab ranges
//! that no existing host route already uses. A lab range that overlaps a host
//! route could send lab traffic out of the host's own interfaces, which the lab
//! must never do.
//!
//! `build_findings` adds what `lab up` needs to build its artifacts on the host:
//! the Debian packages of the offline Kubernetes build, a deb-src entry for
//! `apt-get source kubernetes`, and cargo for the lab-dns server. A cache that
//! already holds the Kubernetes binaries makes the build's packages unnecessary.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::artifacts::build;
use crate::machines::{NodeSpec, Requirement};
use crate::topology::{Backend, DnsAddon, Problem, Topology};

/// The node image, the Kubernetes build and the container images in the cache.
pub const CACHE_BYTES: u64 = 4 << 30;
/// One node's writable copy of the image, its container images and logs.
pub const NODE_DISK_BYTES: u64 = 1 << 30;
/// What one node (systemd, etcd or the control plane, containerd) uses at rest.
pub const NODE_MEMORY_BYTES: u64 = 1 << 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The lab can start; something may be slow or limited.
    Warn,
    /// The lab cannot start until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One checked thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, e.g. `free disk (state)` or `systemd-nspawn (runs the nodes)`.
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The exact command or change that fixes it (only when not ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The Debian package that provides what is missing, for `install_missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding { check: check.to_string(), status: Status::Ok, detail: detail.into(), fix: None, package: None }
    }

    fn problem(check: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check: check.to_string(), status, detail: detail.into(), fix: Some(fix.into()), package: None }
    }

    /// A backend's requirement as a finding; an unmet one fails.
    pub fn from_requirement(requirement: &Requirement) -> Finding {
        if requirement.met {
            return Finding {
                check: requirement.what.clone(),
                status: Status::Ok,
                detail: "present".into(),
                fix: None,
                package: None,
            };
        }
        let (detail, fix) = match &requirement.package {
            Some(package) => (format!("missing (Debian package {package})"), install_command(&[package.as_str()])),
            None => ("missing".to_string(), requirement.fix.clone()),
        };
        Finding {
            check: requirement.what.clone(),
            status: Status::Fail,
            detail,
            fix: Some(fix),
            package: requirement.package.clone(),
        }
    }
}

/// Every finding of one preflight run, in the order they were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst status of all findings.
    pub fn status(&self) -> Status {
        self.findings.iter().map(|finding| finding.status).max().unwrap_or(Status::Ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> + '_ {
        self.findings.iter().filter(|finding| finding.status == Status::Fail)
    }

    /// The Debian packages that would fix failed findings, each once.
    pub fn missing_packages(&self) -> Vec<String> {
        missing_packages(&self.findings)
    }

    /// Whether `apt-get source kubernetes` needs the deb-src entry `add_deb_src_entry` writes.
    pub fn deb_src_missing(&self) -> bool {
        self.failures().any(|finding| finding.check == DEB_SRC_CHECK)
    }
}

/// Why installing packages did not work.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("installing {packages} needs root; run `sudo {command}`")]
    NotRoot { packages: String, command: String },
    #[error("apt-get is not on this host; install {packages} with the host's package manager")]
    NoApt { packages: String },
    #[error("`{command}` failed: {message}")]
    Apt { command: String, message: String },
    #[error("adding the deb-src entry for bookworm needs root; as root run: {command}")]
    DebSrcNotRoot { command: String },
    #[error("cannot write the deb-src entry to {path}: {message}")]
    WriteDebSrc { path: String, message: String },
}

/// Runs every host check for `topology`, with `requirements` from its machine
/// backend. Safe to run at any time: it creates nothing that outlives the call
/// (the backend's own probes clean up after themselves) and only loads the
/// `br_netfilter` kernel module when that is missing.
pub fn run(topology: &Topology, state_dir: &Path, cache_dir: &Path, requirements: &[Requirement]) -> Report {
    let mut findings: Vec<Finding> = requirements.iter().map(Finding::from_requirement).collect();
    let nodes = topology.nodes.len() as u64;
    findings.extend(disk_findings(state_dir, cache_dir, nodes));
    let (memory_needed, memory_basis) = memory_need(topology);
    findings.push(memory_finding(available_memory(), memory_needed, &memory_basis));
    findings.push(bridge_netfilter_finding());
    findings.extend(route_findings(topology));
    Report { findings }
}

/// The lab's address ranges, each with the topology field it comes from.
pub fn lab_ranges(topology: &Topology) -> Vec<(&'static str, Ipv4Net)> {
    let network = &topology.network;
    vec![
        ("network.node_subnet", network.node_subnet),
        ("network.vip", Ipv4Net::from(network.vip)),
        ("network.pod_cidr", network.pod_cidr),
        ("network.service_cidr", network.service_cidr),
    ]
}

// ---------------------------------------------------------------------------
// Routes

/// One IPv4 route of the host, as `ip -j route show table all` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRouteEntry {
    pub destination: Ipv4Net,
    /// `unicast` unless `ip` says otherwise (`local`, `broadcast`, `blackhole`, ...).
    pub kind: String,
    pub gateway: Option<Ipv4Addr>,
    pub device: Option<String>,
    /// `main` unless `ip` says otherwise.
    pub table: String,
}

impl fmt::Display for HostRouteEntry {
    /// In `ip route`'s own words, so the user can find it in `ip route show table all`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != "unicast" {
            write!(f, "{} ", self.kind)?;
        }
        write!(f, "{}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(device) = &self.device {
            write!(f, " dev {device}")?;
        }
        write!(f, " table {}", self.table)
    }
}

/// Why `ip -j route` output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteListError {
    #[error("`ip -4 -j route show table all` failed: {0}")]
    Command(String),
    #[error("cannot parse `ip -j route` output: {0}")]
    Parse(String),
}

/// The fields of one `ip -j route` object that matter here.
#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    gateway: Option<String>,
    dev: Option<String>,
    table: Option<String>,
    /// A multipath route names its devices here instead of in `dev`.
    #[serde(default)]
    nexthops: Vec<RawNextHop>,
}

#[derive(Deserialize)]
struct RawNextHop {
    dev: Option<String>,
}

/// Parses the JSON of `ip -4 -j route show table all`. `default` is 0.0.0.0/0 and
/// a bare address is a /32; IPv6 entries, should any appear, are skipped.
pub fn parse_ip_routes(json: &str) -> Result<Vec<HostRouteEntry>, RouteListError> {
    let raw: Vec<RawRoute> = serde_json::from_str(json).map_err(|error| RouteListError::Parse(error.to_string()))?;
    let mut routes = Vec::new();
    for route in raw {
        let bad_destination = |error: String| RouteListError::Parse(format!("destination {:?}: {error}", route.dst));
        let destination = match route.dst.as_str() {
            "default" => Ipv4Net::default(),
            text if text.contains(':') => continue,
            text if text.contains('/') => {
                text.parse::<Ipv4Net>().map_err(|error| bad_destination(error.to_string()))?
            }
            text => Ipv4Net::from(text.parse::<Ipv4Addr>().map_err(|error| bad_destination(error.to_string()))?),
        };
        let gateway = match route.gateway {
            Some(gateway) if gateway.contains(':') => None,
            Some(gateway) => {
                Some(gateway.parse().map_err(|error| RouteListError::Parse(format!("gateway {gateway:?}: {error}")))?)
            }
            None => None,
        };
        // A multipath route is on a device when every next hop is (the lab's service
        // range over all its kube-proxy nodes, say).
        let device = route.dev.or_else(|| {
            let first = route.nexthops.first()?.dev.clone()?;
            route.nexthops.iter().all(|hop| hop.dev.as_ref() == Some(&first)).then_some(first)
        });
        routes.push(HostRouteEntry {
            destination,
            kind: route.kind.unwrap_or_else(|| "unicast".into()),
            gateway,
            device,
            table: route.table.unwrap_or_else(|| "main".into()),
        });
    }
    Ok(routes)
}

/// The host's IPv4 routes in every table.
pub fn host_routes() -> Result<Vec<HostRouteEntry>, RouteListError> {
    let output = Command::new("ip")
        .args(["-4", "-j", "route", "show", "table", "all"])
        .output()
        .map_err(|error| RouteListError::Command(format!("{error} (apt-get install -y iproute2)")))?;
    if !output.status.success() {
        return Err(RouteListError::Command(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    parse_ip_routes(&String::from_utf8_lossy(&output.stdout))
}

/// Every pair of a lab range and a host route that share addresses, except routes
/// on the lab's own bridge (the lab made them) and default routes.
///
/// A default route matches everything but is the least specific route there is:
/// routing the lab's ranges onto the bridge makes them more specific, so lab
/// traffic never follows it. Any other overlapping route means the host already
/// sends some lab addresses elsewhere (or will, for the part the lab's routes do
/// not cover), so the lab refuses to start rather than guess.
pub fn overlapping_routes(
    host_routes: &[HostRouteEntry],
    lab_ranges: &[(&str, Ipv4Net)],
    lab_bridge: &str,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (field, range) in lab_ranges {
        for route in host_routes {
            if route.destination.prefix_len() == 0 || route.device.as_deref() == Some(lab_bridge) {
                continue;
            }
            // Two CIDR blocks share addresses exactly when one contains the other.
            let overlaps = range.contains(&route.destination.network()) || route.destination.contains(&range.network());
            if overlaps {
                problems.push(Problem {
                    field: field.to_string(),
                    value: range.to_string(),
                    message: format!("overlaps the host route `{route}`, which is not on the lab bridge {lab_bridge}"),
                });
            }
        }
    }
    problems
}

fn route_findings(topology: &Topology) -> Vec<Finding> {
    const CHECK: &str = "lab ranges free of host routes";
    let routes = match host_routes() {
        Ok(routes) => routes,
        Err(error) => {
            return vec![Finding::problem(CHECK, Status::Fail, error.to_string(), "apt-get install -y iproute2")]
        }
    };
    let bridge = crate::plan::bridge_name(&topology.name);
    let ranges = lab_ranges(topology);
    let problems = overlapping_routes(&routes, &ranges, &bridge);
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

// ---------------------------------------------------------------------------
// Disk, memory, bridged traffic

/// Free space for the state directory (machine disks) and the cache (image and
/// builds), counted once when both are on the same filesystem.
fn disk_findings(state_dir: &Path, cache_dir: &Path, nodes: u64) -> Vec<Finding> {
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
fn memory_need(topology: &Topology) -> (u64, String) {
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
fn memory_finding(available: Option<u64>, need: u64, basis: &str) -> Finding {
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
fn bridge_netfilter_finding() -> Finding {
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

fn available_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?;
    Some(kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

// ---------------------------------------------------------------------------
// Building the artifacts

/// The name of the finding about `apt-get source kubernetes`.
pub const DEB_SRC_CHECK: &str = "deb-src for bookworm";

/// A Debian package that `build::ensure` needs on the host for one topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BuildPackage {
    name: &'static str,
    /// Needed only to build the Kubernetes binaries and pause, which a filled
    /// cache already holds.
    for_kubernetes: bool,
    /// The build works without it, with a larger result.
    optional: bool,
}

/// Every package whose programs `build::ensure` runs for `topology`, in the order
/// the build uses them: `build::required_packages` (the Kubernetes and pause
/// build), apt and dpkg for `apt-get source`, `apt-get download busybox-static`
/// and `dpkg-deb`, and with the lab-dns server, libc-bin for `ldd` and binutils for
/// `strip`. The busybox-static package itself is downloaded, never installed.
fn build_packages(topology: &Topology) -> Vec<BuildPackage> {
    let package = |name, for_kubernetes, optional| BuildPackage { name, for_kubernetes, optional };
    let mut packages = vec![package("apt", false, false), package("dpkg", false, false)];
    packages.extend(build::required_packages(topology).into_iter().map(|name| package(name, true, false)));
    if topology.addons.dns == DnsAddon::LabDns {
        packages.extend([package("libc-bin", false, false), package("binutils", false, true)]);
    }
    packages
}

/// What the build uses a package for, to name its check.
fn package_purpose(package: &str) -> &'static str {
    match package {
        "apt" => "apt-get fetches Debian's kubernetes source and busybox-static",
        "dpkg" => "dpkg-deb unpacks busybox-static for the web image",
        "dpkg-dev" => "dpkg-source unpacks Debian's kubernetes source",
        "gcc" => "compiles the static pause binary",
        "libc6-dev" => "the static C library of the pause binary",
        "golang-go" => "compiles Kubernetes",
        "make" | "rsync" | "jq" => "runs Kubernetes' own build",
        "libc-bin" => "ldd finds the lab-dns server's libraries",
        "binutils" => "strip shrinks the lab-dns server",
        _ => "builds the lab's artifacts",
    }
}

/// What `lab up` needs from the host to build the artifacts of `topology` into
/// `cache_dir`: its Debian packages, Debian's kubernetes source and cargo. Asks
/// dpkg-query and `apt-get source --print-uris`, which download nothing.
pub fn build_findings(topology: &Topology, cache_dir: &Path) -> Vec<Finding> {
    // The pause binary lives beside the Kubernetes binaries, but `dir` binaries
    // count as cached without it, and it is built from the same source tree.
    let kubernetes_dir = build::kubernetes_dir(topology, cache_dir);
    let cached = build::kubernetes_cached(topology, cache_dir) && build::pause_binary(topology, cache_dir).is_file();
    let cached_in = cached.then_some(kubernetes_dir.as_path());
    let names: Vec<&str> = build_packages(topology).iter().map(|package| package.name).collect();
    let cargo = (topology.addons.dns == DnsAddon::LabDns).then(cargo_path);
    build_findings_from(topology, cached_in, &installed_packages(&names), print_kubernetes_source_uris, cargo)
}

/// The findings of `build_findings` from what was measured: the directory that
/// holds the cached Kubernetes binaries if any, the installed packages (or why
/// dpkg-query could not tell), the deb-src probe (run only when the source is
/// needed), and for the lab-dns server where cargo is.
fn build_findings_from(
    topology: &Topology,
    cached_in: Option<&Path>,
    installed: &Result<BTreeSet<String>, String>,
    print_source_uris: impl FnOnce() -> Result<(), String>,
    cargo: Option<Option<PathBuf>>,
) -> Vec<Finding> {
    let mut findings: Vec<Finding> =
        build_packages(topology).iter().map(|package| package_finding(package, installed, cached_in)).collect();
    findings.push(deb_src_finding(cached_in, print_source_uris));
    if let Some(cargo) = cargo {
        findings.push(cargo_finding(cargo));
    }
    findings
}

fn package_finding(
    package: &BuildPackage,
    installed: &Result<BTreeSet<String>, String>,
    cached_in: Option<&Path>,
) -> Finding {
    let check = format!("package {} ({})", package.name, package_purpose(package.name));
    let missing = match installed {
        Ok(installed) if installed.contains(package.name) => return Finding::ok(&check, "installed"),
        Ok(_) => "not installed".to_string(),
        Err(error) => format!("cannot tell whether it is installed: {error}"),
    };
    if let Some(dir) = cached_in.filter(|_| package.for_kubernetes) {
        return Finding::ok(&check, format!("{missing}; not needed while {} holds the built binaries", dir.display()));
    }
    let (status, detail) = if package.optional {
        (Status::Warn, format!("{missing}; the lab-dns server goes into its image with its symbols"))
    } else {
        (Status::Fail, missing)
    };
    Finding {
        package: Some(package.name.to_string()),
        ..Finding::problem(&check, status, detail, install_command(&[package.name]))
    }
}

/// The packages among `names` that dpkg has installed.
fn installed_packages(names: &[&str]) -> Result<BTreeSet<String>, String> {
    // dpkg-query exits 1 when it knows one of the names not at all, but still
    // lists the others, so its output counts rather than its exit status.
    let output = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Package} ${db:Status-Status}\n"])
        .args(names)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run dpkg-query: {error}"))?;
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&output.stdout)))
}

/// The installed packages in lines of `PACKAGE STATUS`; a package whose status is
/// not `installed` (removed with its configuration kept, half installed) counts as
/// missing.
fn parse_dpkg_status(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "installed")
        .map(|(package, _)| package.to_string())
        .collect()
}

/// `apt-get source kubernetes` needs a deb-src entry that the default apt
/// sources of Debian 12 lack; it is needed for every Kubernetes source, since the
/// pause binary is compiled from the same tree.
fn deb_src_finding(cached_in: Option<&Path>, print_source_uris: impl FnOnce() -> Result<(), String>) -> Finding {
    if let Some(dir) = cached_in {
        return Finding::ok(DEB_SRC_CHECK, format!("not needed while {} holds the built binaries", dir.display()));
    }
    match print_source_uris() {
        Ok(()) => Finding::ok(DEB_SRC_CHECK, "apt-get source finds Debian's kubernetes source package"),
        Err(error) => Finding::problem(
            DEB_SRC_CHECK,
            Status::Fail,
            format!("`apt-get source --print-uris kubernetes` failed: {error}"),
            deb_src_command(),
        ),
    }
}

/// Asks apt where Debian's kubernetes source package is; this reads apt's lists
/// and downloads nothing.
fn print_kubernetes_source_uris() -> Result<(), String> {
    let output = Command::new("apt-get")
        .args(["source", "--print-uris", "kubernetes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run apt-get: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").trim().to_string())
}

/// The shell command that does what `add_deb_src_entry` does.
fn deb_src_command() -> String {
    format!("printf '{}' > {} && apt-get update", build::DEB_SRC_ENTRY.replace('\n', "\\n"), build::DEB_SRC_LIST_PATH)
}

/// Writes `build::DEB_SRC_ENTRY` to `build::DEB_SRC_LIST_PATH` and runs `apt-get
/// update`, saying so on stderr, so that `apt-get source kubernetes` works.
pub fn add_deb_src_entry() -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::DebSrcNotRoot { command: deb_src_command() });
    }
    eprintln!("adding a deb-src entry for bookworm in {} and running apt-get update", build::DEB_SRC_LIST_PATH);
    fs::write(build::DEB_SRC_LIST_PATH, build::DEB_SRC_ENTRY).map_err(|error| PreflightError::WriteDebSrc {
        path: build::DEB_SRC_LIST_PATH.to_string(),
        message: error.to_string(),
    })?;
    apt(&["update"], "apt-get update")
}

/// The lab-dns server is built with the cargo that runs the lab (`CARGO` under
/// `cargo run`), else the one on PATH.
fn cargo_path() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return Some(PathBuf::from(cargo));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("cargo")).find(|candidate| candidate.is_file())
}

fn cargo_finding(cargo: Option<PathBuf>) -> Finding {
    const CHECK: &str = "cargo (builds the lab-dns server)";
    match cargo {
        Some(cargo) => Finding::ok(CHECK, cargo.display().to_string()),
        None => Finding::problem(
            CHECK,
            Status::Fail,
            "not found (neither CARGO nor PATH names it)",
            "install Rust with rustup (Debian 12's cargo is older than dns/Cargo.toml's rust-version)",
        ),
    }
}

// ---------------------------------------------------------------------------
// Installing packages

fn missing_packages(findings: &[Finding]) -> Vec<String> {
    let packages: BTreeSet<&str> = findings
        .iter()
        .filter(|finding| finding.status != Status::Ok)
        .filter_map(|finding| finding.package.as_deref())
        .collect();
    packages.into_iter().map(str::to_string).collect()
}

fn install_command(packages: &[&str]) -> String {
    format!("apt-get install -y --no-install-recommends {}", packages.join(" "))
}

/// Installs the Debian packages that fix `findings` with apt-get (after one
/// `apt-get update`), saying on stderr what it installs; apt's own output goes to
/// stderr too, so `lab doctor --json` keeps stdout for the JSON. Returns the
/// packages installed, none when nothing was missing.
pub fn install_missing(findings: &[Finding]) -> Result<Vec<String>, PreflightError> {
    let packages = missing_packages(findings);
    if packages.is_empty() {
        return Ok(packages);
    }
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    let install = install_command(&names);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot { packages: names.join(" "), command: install });
    }
    if !crate::system::program_exists("apt-get") {
        return Err(PreflightError::NoApt { packages: names.join(" ") });
    }
    eprintln!("installing {} with apt-get", names.join(" "));
    apt(&["update"], "apt-get update")?;
    let mut arguments = vec!["install", "-y", "--no-install-recommends"];
    arguments.extend(&names);
    apt(&arguments, &install)?;
    Ok(packages)
}

fn apt(arguments: &[&str], command: &str) -> Result<(), PreflightError> {
    let status = Command::new("apt-get")
        .args(arguments)
        // No questions: doctor runs unattended, and in CI without a terminal.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|error| PreflightError::Apt { command: command.to_string(), message: error.to_string() })?;
    if !status.success() {
        return Err(PreflightError::Apt { command: command.to_string(), message: format!("{status}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ArtifactSource;

    fn route(destination: &str, device: &str) -> HostRouteEntry {
        HostRouteEntry {
            destination: destination.parse().unwrap(),
            kind: "unicast".into(),
            gateway: None,
            device: Some(device.into()),
            table: "main".into(),
        }
    }

    fn lab() -> Vec<(&'static str, Ipv4Net)> {
        vec![
            ("network.node_subnet", "10.240.0.0/24".parse().unwrap()),
            ("network.vip", "10.240.0.100/32".parse().unwrap()),
            ("network.pod_cidr", "10.200.0.0/16".parse().unwrap()),
            ("network.service_cidr", "10.32.0.0/24".parse().unwrap()),
        ]
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|problem| problem.field.as_str()).collect()
    }

    #[test]
    fn a_route_inside_a_lab_range_overlaps() {
        let problems = overlapping_routes(&[route("10.200.5.0/24", "docker0")], &lab(), "lab-k8s");
        assert_eq!(fields(&problems), ["network.pod_cidr"]);
        assert_eq!(
            problems[0].to_string(),
            "network.pod_cidr = 10.200.0.0/16: overlaps the host route `10.200.5.0/24 dev docker0 table main`, \
             which is not on the lab bridge lab-k8s"
        );
    }

    #[test]
    fn a_route_containing_a_lab_range_overlaps() {
        let problems = overlapping_routes(&[route("10.32.0.0/16", "tun0")], &lab(), "lab-k8s");
        assert_eq!(fields(&problems), ["network.service_cidr"]);
    }

    #[test]
    fn the_vip_overlaps_as_a_single_address() {
        // 10.240.0.96/28 covers the VIP (and so the node subnet), but nothing else.
        let problems = overlapping_routes(&[route("10.240.0.96/28", "eth1")], &lab(), "lab-k8s");
        assert_eq!(fields(&problems), ["network.node_subnet", "network.vip"]);
        let problems = overlapping_routes(&[route("10.240.0.128/25", "eth1")], &lab(), "lab-k8s");
        assert_eq!(fields(&problems), ["network.node_subnet"], "the VIP .100 is outside .128/25");
    }

    #[test]
    fn routes_on_the_lab_bridge_and_default_routes_do_not_count() {
        let mut local = route("10.240.0.1/32", "lab-k8s");
        local.kind = "local".into();
        local.table = "local".into();
        let mut default = route("0.0.0.0/0", "eth0");
        default.gateway = Some(Ipv4Addr::new(192, 0, 2, 1));
        let routes = [
            route("10.240.0.0/24", "lab-k8s"),
            route("10.200.1.0/24", "lab-k8s"),
            local,
            default,
            route("192.0.2.0/24", "eth0"),
        ];
        assert_eq!(overlapping_routes(&routes, &lab(), "lab-k8s"), []);
        // The same routes on another lab's bridge are someone else's.
        assert_eq!(
            fields(&overlapping_routes(&routes[..1], &lab(), "lab-other")),
            ["network.node_subnet", "network.vip"]
        );
    }

    #[test]
    fn a_blackhole_route_without_a_device_overlaps() {
        let mut blackhole = route("10.200.0.0/16", "unused");
        blackhole.device = None;
        blackhole.kind = "blackhole".into();
        let problems = overlapping_routes(&[blackhole], &lab(), "lab-k8s");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("`blackhole 10.200.0.0/16 table main`"), "{}", problems[0].message);
    }

    #[test]
    fn parses_ip_json_route_output() {
        let json = r#"[
            {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
            {"type":"local","dst":"192.0.2.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host",
             "prefsrc":"192.0.2.2","flags":[]},
            {"type":"blackhole","dst":"10.9.0.0/16","flags":[]},
            {"dst":"10.32.0.0/24","flags":[],"nexthops":[{"gateway":"10.240.0.11","dev":"lab-k8s","weight":1},
             {"gateway":"10.240.0.21","dev":"lab-k8s","weight":1}]},
            {"dst":"10.33.0.0/24","flags":[],"nexthops":[{"gateway":"10.240.0.11","dev":"lab-k8s"},
             {"gateway":"192.0.2.9","dev":"eth0"}]},
            {"dst":"fe80::/64","dev":"eth0","flags":[]}
        ]"#;
        let routes = parse_ip_routes(json).expect("parse");
        let shown: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0/0 via 192.0.2.1 dev eth0 table main",
                "192.0.2.0/24 dev eth0 table main",
                "local 192.0.2.2/32 dev eth0 table local",
                "blackhole 10.9.0.0/16 table main",
                "10.32.0.0/24 dev lab-k8s table main",
                "10.33.0.0/24 table main",
            ]
        );
        assert!(parse_ip_routes(r#"[{"dst":"10.0.0.300/8"}]"#).is_err());
        assert_eq!(parse_ip_routes("[]").expect("empty"), []);
    }

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
            Topology::parse(include_str!("../../examples/minimal.toml"), Path::new("examples/minimal.toml"))
                .expect("examples/minimal.toml")
                .topology;
        assert_eq!(memory_need(&topology), (2 << 30, "1.0 GiB per node x 2".to_string()));
        topology.machines.backend = Backend::Libvirt;
        assert_eq!(memory_need(&topology), (5 << 30, "the VMs' memory, 3.0 GiB + 2.0 GiB".to_string()));
    }

    fn lab_topology() -> Topology {
        Topology::parse(include_str!("../../lab.toml"), Path::new("lab.toml")).expect("lab.toml").topology
    }

    /// Each check's name without its purpose in parentheses.
    fn checks(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|finding| finding.check.split(" (").next().unwrap_or_default()).collect()
    }

    fn installed(names: &[&str]) -> Result<BTreeSet<String>, String> {
        Ok(names.iter().map(|name| name.to_string()).collect())
    }

    fn no_probe() -> Result<(), String> {
        panic!("the deb-src probe runs only when the source is needed")
    }

    #[test]
    fn build_findings_follow_the_source_and_the_dns_addon() {
        let mut topology = lab_topology();
        let cargo = Some(Some(PathBuf::from("/root/.cargo/bin/cargo")));
        let findings = build_findings_from(&topology, None, &installed(&[]), || Ok(()), cargo.clone());
        assert_eq!(
            checks(&findings),
            [
                "package apt",
                "package dpkg",
                "package dpkg-dev",
                "package gcc",
                "package golang-go",
                "package jq",
                "package libc6-dev",
                "package make",
                "package rsync",
                "package libc-bin",
                "package binutils",
                "deb-src for bookworm",
                "cargo",
            ]
        );
        topology.kubernetes.source = ArtifactSource::Release;
        topology.addons.dns = DnsAddon::Coredns;
        let findings = build_findings_from(&topology, None, &installed(&[]), || Ok(()), None);
        assert_eq!(
            checks(&findings),
            [
                "package apt",
                "package dpkg",
                "package dpkg-dev",
                "package gcc",
                "package libc6-dev",
                "deb-src for bookworm"
            ]
        );
    }

    #[test]
    fn missing_build_packages_fail_with_their_package_unless_optional_or_cached() {
        let topology = lab_topology();
        let have = installed(&["apt", "dpkg", "gcc", "libc-bin"]);
        let findings = build_findings_from(&topology, None, &have, || Ok(()), Some(None));
        let report = Report { findings };
        assert_eq!(
            report.missing_packages(),
            ["binutils", "dpkg-dev", "golang-go", "jq", "libc6-dev", "make", "rsync"]
        );
        let golang = report.findings.iter().find(|finding| finding.check.starts_with("package golang-go")).unwrap();
        assert_eq!(golang.check, "package golang-go (compiles Kubernetes)");
        assert_eq!(golang.status, Status::Fail);
        assert_eq!(golang.fix.as_deref(), Some("apt-get install -y --no-install-recommends golang-go"));
        let binutils = report.findings.iter().find(|finding| finding.check.starts_with("package binutils")).unwrap();
        assert_eq!(binutils.status, Status::Warn);
        let cargo = report.findings.last().unwrap();
        assert_eq!((cargo.status, cargo.package.as_deref()), (Status::Fail, None));

        // With the binaries cached, only what the images need is still required.
        let cache = Path::new("/cache/kubernetes/debian-source-v1.20.2");
        let findings = build_findings_from(&topology, Some(cache), &have, no_probe, None);
        let report = Report { findings };
        assert_eq!(report.missing_packages(), ["binutils"]);
        let go = report.findings.iter().find(|finding| finding.check.starts_with("package golang-go")).unwrap();
        assert_eq!(
            go.detail,
            "not installed; not needed while /cache/kubernetes/debian-source-v1.20.2 holds the built binaries"
        );
        assert!(!report.deb_src_missing());
    }

    #[test]
    fn a_missing_deb_src_entry_fails_with_the_entry_to_write() {
        let failed = deb_src_finding(None, || Err("E: You must put some 'deb-src' URIs in your sources.list".into()));
        assert_eq!(failed.status, Status::Fail);
        assert_eq!(failed.package, None);
        assert_eq!(
            failed.fix.as_deref(),
            Some(
                "printf 'Types: deb-src\\nURIs: http://deb.debian.org/debian\\nSuites: bookworm\\nComponents: main\\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' > \
                 /etc/apt/sources.list.d/k8s-lab-debian-src.sources && apt-get update"
            )
        );
        assert!(Report { findings: vec![failed] }.deb_src_missing());
        assert_eq!(deb_src_finding(None, || Ok(())).status, Status::Ok);
        let json = serde_json::to_value(deb_src_finding(Some(Path::new("/cache/k")), no_probe)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"check": "deb-src for bookworm", "status": "ok",
                               "detail": "not needed while /cache/k holds the built binaries"})
        );
    }

    #[test]
    fn dpkg_status_counts_only_installed_packages() {
        let listing = "gcc installed\nmake config-files\njq not-installed\nlibc6-dev installed\n";
        assert_eq!(parse_dpkg_status(listing), BTreeSet::from(["gcc".to_string(), "libc6-dev".to_string()]));
        let unknown = Err("cannot run dpkg-query: No such file or directory (os error 2)".to_string());
        let package = BuildPackage { name: "gcc", for_kubernetes: true, optional: false };
        let finding = package_finding(&package, &unknown, None);
        assert_eq!(finding.status, Status::Fail);
        assert_eq!(finding.package.as_deref(), Some("gcc"));
    }

    #[test]
    fn unmet_requirements_name_their_package_once() {
        let requirement = |what: &str, met: bool, package: Option<&str>| Requirement {
            what: what.into(),
            met,
            package: package.map(str::to_string),
            fix: "apt-get install x".into(),
        };
        let report = Report {
            findings: vec![
                Finding::from_requirement(&requirement("ssh-keygen", false, Some("openssh-client"))),
                Finding::from_requirement(&requirement("ssh", false, Some("openssh-client"))),
                Finding::from_requirement(&requirement("ip", true, Some("iproute2"))),
                Finding::from_requirement(&requirement("root", false, None)),
            ],
        };
        assert_eq!(report.missing_packages(), ["openssh-client"]);
        assert_eq!(report.status(), Status::Fail);
        assert_eq!(
            report.findings[0].fix.as_deref(),
            Some("apt-get install -y --no-install-recommends openssh-client")
        );
        assert_eq!(report.findings[3].fix.as_deref(), Some("apt-get install x"));
        let json = serde_json::to_value(&report.findings[2]).expect("json");
        assert_eq!(json, serde_json::json!({"check": "ip", "status": "ok", "detail": "present"}));
    }
}
