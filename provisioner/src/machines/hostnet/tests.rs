//! The host network's set-up and teardown against a scripted host: what they run,
//! what they refuse and what they report, without root.

use std::path::PathBuf;

use super::*;
use crate::system::{RecordingSystem, SystemCall};

const BRIDGE: &str = "lab-k8s";
const OWNER: &str = "k8s-lab /var/lib/lab";

fn gateway() -> Ipv4Net {
    "10.240.0.1/24".parse().unwrap()
}

fn route(destination: &str, via: &[&str]) -> HostRoute {
    HostRoute { destination: destination.parse().unwrap(), via: via.iter().map(|hop| hop.parse().unwrap()).collect() }
}

/// The plan's host routes for lab.toml: the node subnet (which holds the VIP) on the
/// link, the service range over every node that runs kube-proxy, and each worker's
/// share of the pod range.
fn lab_routes() -> Vec<HostRoute> {
    vec![
        route("10.240.0.0/24", &[]),
        route("10.32.0.0/24", &["10.240.0.11", "10.240.0.12", "10.240.0.13", "10.240.0.21", "10.240.0.22"]),
        route("10.200.0.0/24", &["10.240.0.21"]),
        route("10.200.1.0/24", &["10.240.0.22"]),
    ]
}

/// The routes of a host with one uplink, as `ip -4 -j route show table all` prints them.
const UPLINK_ROUTES: &str = r#"[
    {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
    {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]}
]"#;

/// A host whose kernel routes every lab address onto the bridge once asked.
fn host(routes_json: &str) -> RecordingSystem {
    let system = RecordingSystem::new();
    system.reply("ip -4 -j route show table all", routes_json);
    system.reply("ip -4 -o route get", &format!("10.240.0.2 dev {BRIDGE} src 10.240.0.1 uid 0"));
    system
}

/// A host where the lab's bridge already exists, tagged as this lab's.
fn seed_bridge(system: &RecordingSystem, owner: &str) {
    system.seed_file(&format!("/sys/class/net/{BRIDGE}/ifalias"), &format!("{owner}\n"));
    system.seed_file(&format!("/sys/class/net/{BRIDGE}/bridge/bridge_id"), "8000.000000000000\n");
}

/// The commands that create or change something on the host.
fn changes(system: &RecordingSystem) -> Vec<String> {
    let creating = ["ip link add", "ip addr add", "ip addr del", "ip route replace", "ip route del", "ip link del"];
    system.commands().into_iter().filter(|line| creating.iter().any(|prefix| line.starts_with(prefix))).collect()
}

fn writes(system: &RecordingSystem) -> Vec<PathBuf> {
    system
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            SystemCall::Write { path, .. } => Some(path),
            _ => None,
        })
        .collect()
}

#[test]
fn every_lab_range_gets_a_route_onto_the_bridge() {
    let system = host(UPLINK_ROUTES);
    system.seed_file(MULTIPATH_USE_NEIGH, "0\n");
    let report = ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()).expect("ensure");
    assert!(report.bridge_created);
    assert_eq!(
        changes(&system),
        [
            "ip link add name lab-k8s type bridge",
            "ip addr add 10.240.0.1/24 dev lab-k8s",
            "ip route replace 10.32.0.0/24 nexthop via 10.240.0.11 dev lab-k8s onlink nexthop via 10.240.0.12 dev \
             lab-k8s onlink nexthop via 10.240.0.13 dev lab-k8s onlink nexthop via 10.240.0.21 dev lab-k8s onlink \
             nexthop via 10.240.0.22 dev lab-k8s onlink",
            "ip route replace 10.200.0.0/24 via 10.240.0.21 dev lab-k8s onlink",
            "ip route replace 10.200.1.0/24 via 10.240.0.22 dev lab-k8s onlink",
        ]
    );
    assert_eq!(
        report.routes,
        [
            "10.240.0.0/24 dev lab-k8s (on-link)",
            "10.32.0.0/24 via 10.240.0.11, 10.240.0.12, 10.240.0.13, 10.240.0.21, 10.240.0.22 dev lab-k8s",
            "10.200.0.0/24 via 10.240.0.21 dev lab-k8s",
            "10.200.1.0/24 via 10.240.0.22 dev lab-k8s",
        ]
    );
    assert_eq!(system.file(MULTIPATH_USE_NEIGH).as_deref(), Some(&b"1"[..]), "dead next hops are skipped");
    // The kernel is asked about an address of every range (the node subnet's covers
    // the VIP) and every next hop.
    let lookups: Vec<String> = system
        .commands()
        .iter()
        .filter_map(|line| line.strip_prefix("ip -4 -o route get ").map(str::to_string))
        .collect();
    for probe in ["10.240.0.2", "10.32.0.1", "10.200.0.1", "10.200.1.1", "10.240.0.11", "10.240.0.22"] {
        assert!(lookups.iter().any(|address| address == probe), "{probe} not looked up in {lookups:?}");
    }
}

#[test]
fn a_lab_range_on_the_uplinks_network_is_refused_before_anything_is_created() {
    let uplink_on_lab = r#"[
        {"dst":"default","gateway":"10.240.0.254","dev":"eth0","flags":[]},
        {"dst":"10.240.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","flags":[]}
    ]"#;
    let system = host(uplink_on_lab);
    let error = ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()).expect_err("must refuse");
    assert_eq!(
        error.to_string(),
        "lab network: refusing to touch the host's routes: 10.240.0.0/24 overlaps the host route `10.240.0.0/16 dev \
         eth0 table main`, which is not on the lab bridge lab-k8s; 10.240.0.0/24 overlaps the host route \
         `10.240.0.0/16 dev eth0 table main`, which is not on the lab bridge lab-k8s; change the lab's ranges in \
         lab.toml"
    );
    assert_eq!(system.commands(), ["ip -4 -j route show table all"], "nothing but the listing ran");
    assert_eq!(writes(&system), Vec::<PathBuf>::new());
}

#[test]
fn a_lab_range_routed_out_of_another_interface_is_refused() {
    let vpn = r#"[{"dst":"10.200.0.0/16","dev":"tun0","scope":"link","flags":[]}]"#;
    let system = host(vpn);
    let error = check_ranges_free_with(&system, BRIDGE, gateway(), &lab_routes()).expect_err("must refuse");
    let message = error.to_string();
    assert!(message.contains("10.200.0.0/24 overlaps the host route `10.200.0.0/16 dev tun0 table main`"), "{message}");
    assert!(message.contains("10.200.1.0/24 overlaps the host route `10.200.0.0/16 dev tun0 table main`"), "{message}");
    assert!(!message.contains("10.32.0.0/24"), "{message}");
    let system = host(vpn);
    assert!(ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()).is_err());
    assert_eq!(changes(&system), Vec::<String>::new());
}

/// The host as the lab's `ensure` left it: the bridge, its address, every route.
fn converged_host() -> RecordingSystem {
    let routes = r#"[
        {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
        {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","flags":[]},
        {"dst":"10.32.0.0/24","flags":[],"nexthops":[
            {"gateway":"10.240.0.11","dev":"lab-k8s","weight":1,"flags":["onlink"]},
            {"gateway":"10.240.0.12","dev":"lab-k8s","weight":1,"flags":["onlink"]},
            {"gateway":"10.240.0.13","dev":"lab-k8s","weight":1,"flags":["onlink"]},
            {"gateway":"10.240.0.21","dev":"lab-k8s","weight":1,"flags":["onlink"]},
            {"gateway":"10.240.0.22","dev":"lab-k8s","weight":1,"flags":["onlink"]}]},
        {"dst":"10.200.0.0/24","gateway":"10.240.0.21","dev":"lab-k8s","flags":["onlink"]},
        {"dst":"10.200.1.0/24","gateway":"10.240.0.22","dev":"lab-k8s","flags":["onlink"]},
        {"dst":"10.240.0.0/24","dev":"lab-k8s","protocol":"kernel","scope":"link","prefsrc":"10.240.0.1",
         "flags":[]},
        {"type":"local","dst":"10.240.0.1","dev":"lab-k8s","table":"local","protocol":"kernel","scope":"host",
         "prefsrc":"10.240.0.1","flags":[]}
    ]"#;
    let system = host(routes);
    seed_bridge(&system, OWNER);
    system.seed_file(&format!("/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6"), "1\n");
    system.seed_file(MULTIPATH_USE_NEIGH, "1\n");
    system.reply("ip -4 -o addr show dev lab-k8s", "7: lab-k8s    inet 10.240.0.1/24 scope global lab-k8s\n");
    system.reply(
        "ip -4 -o route show dev lab-k8s",
        "10.200.0.0/24 via 10.240.0.21 onlink \n\
         10.200.1.0/24 via 10.240.0.22 onlink \n\
         10.240.0.0/24 proto kernel scope link src 10.240.0.1 \n",
    );
    system
}

#[test]
fn a_multipath_route_on_the_lab_bridge_is_the_labs_own() {
    let system = converged_host();
    check_ranges_free_with(&system, BRIDGE, gateway(), &lab_routes()).expect("the lab's routes are no conflict");
}

#[test]
fn set_up_on_a_host_where_everything_exists_creates_nothing() {
    let system = converged_host();
    let report = ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()).expect("ensure");
    assert!(!report.bridge_created);
    assert_eq!(report.routes.len(), 4);
    assert_eq!(changes(&system), Vec::<String>::new());
    assert_eq!(writes(&system), Vec::<PathBuf>::new());
}

#[test]
fn set_up_replaces_a_route_whose_next_hops_changed_and_removes_one_the_plan_dropped() {
    let system = converged_host();
    // worker2's pod range moved to a new worker at .23.
    let mut routes = lab_routes();
    routes[3] = route("10.200.1.0/24", &["10.240.0.23"]);
    ensure_with(&system, BRIDGE, OWNER, gateway(), &routes).expect("ensure");
    assert_eq!(changes(&system), ["ip route replace 10.200.1.0/24 via 10.240.0.23 dev lab-k8s onlink"]);

    let system = converged_host();
    ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()[..3]).expect("ensure");
    assert_eq!(changes(&system), ["ip route del 10.200.1.0/24 dev lab-k8s"]);
}

#[test]
fn a_bridge_of_another_lab_is_refused_and_left_alone() {
    let system = host(UPLINK_ROUTES);
    seed_bridge(&system, "k8s-lab /srv/other");
    let error = ensure_with(&system, BRIDGE, OWNER, gateway(), &lab_routes()).expect_err("must refuse");
    assert!(error.to_string().contains("belongs to another lab"), "{error}");
    assert_eq!(
        teardown_with(&system, BRIDGE, OWNER),
        [Leftover::new("bridge lab-k8s", "it belongs to another lab (\"k8s-lab /srv/other\"); left alone")]
    );
    assert_eq!(changes(&system), Vec::<String>::new());
}

#[test]
fn teardown_removes_the_labs_routes_and_bridge() {
    let system = converged_host();
    system.remove_when_run("ip link del dev lab-k8s", "/sys/class/net/lab-k8s");
    assert_eq!(teardown_with(&system, BRIDGE, OWNER), []);
    // The node subnet's route is the kernel's, for the bridge's address; it goes with the bridge.
    assert_eq!(
        changes(&system),
        ["ip route del 10.200.0.0/24 dev lab-k8s", "ip route del 10.200.1.0/24 dev lab-k8s", "ip link del dev lab-k8s"]
    );
    assert!(!interface_exists(&system, BRIDGE));
}

#[test]
fn teardown_reports_what_it_could_not_remove_and_why() {
    let system = RecordingSystem::new();
    system.fail("ip route del 10.200.0.0/24", "RTNETLINK answers: Operation not permitted");
    system.fail("ip link del", "RTNETLINK answers: Device or resource busy");
    seed_bridge(&system, OWNER);
    system.reply("ip -4 -o addr show dev lab-k8s", "7: lab-k8s    inet 10.240.0.1/24 scope global lab-k8s\n");
    system.reply(
        "ip -4 -o route show dev lab-k8s",
        "10.200.0.0/24 via 10.240.0.21 onlink \n10.200.1.0/24 via 10.240.0.22 onlink \n",
    );
    assert_eq!(
        teardown_with(&system, BRIDGE, OWNER),
        [
            Leftover::new(
                "route 10.200.0.0/24 via 10.240.0.21 onlink",
                "`ip route del 10.200.0.0/24 dev lab-k8s` failed: RTNETLINK answers: Operation not permitted"
            ),
            Leftover::new(
                "bridge lab-k8s",
                "`ip link del dev lab-k8s` failed: RTNETLINK answers: Device or resource busy"
            ),
        ]
    );
    assert!(system.commands().contains(&"ip route del 10.200.1.0/24 dev lab-k8s".to_string()), "the rest is removed");
}

#[test]
fn teardown_without_a_bridge_does_nothing() {
    let system = host(UPLINK_ROUTES);
    assert_eq!(teardown_with(&system, BRIDGE, OWNER), []);
    assert_eq!(system.commands(), Vec::<String>::new());
}
