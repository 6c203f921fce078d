//! The host's routes as the lab reads and writes them: the whole routing table (to
//! find host routes that overlap a lab range), the routes on the lab's bridge, and
//! the `ip route` arguments of the lab's own routes.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::plan::HostRoute;
use crate::system::System;
use crate::topology::Problem;

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
    /// The gateways of a multipath route (none for a route with one next hop).
    pub next_hops: Vec<Ipv4Addr>,
}

impl HostRouteEntry {
    /// Whether this is the route `ip route replace` makes for `route` on `bridge`:
    /// the same destination in the main table, on the bridge, over the same next hops.
    pub fn installs(&self, route: &HostRoute, bridge: &str) -> bool {
        let mut hops: Vec<Ipv4Addr> = self.gateway.iter().chain(&self.next_hops).copied().collect();
        let mut planned = route.via.clone();
        hops.sort();
        planned.sort();
        self.kind == "unicast"
            && self.table == "main"
            && self.device.as_deref() == Some(bridge)
            && self.destination == route.destination.trunc()
            && hops == planned
    }
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
    gateway: Option<String>,
    dev: Option<String>,
}

fn parse_gateway(gateway: Option<String>) -> Result<Option<Ipv4Addr>, RouteListError> {
    match gateway {
        Some(gateway) if gateway.contains(':') => Ok(None),
        Some(gateway) => {
            Ok(Some(gateway.parse().map_err(|error| RouteListError::Parse(format!("gateway {gateway:?}: {error}")))?))
        }
        None => Ok(None),
    }
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
        let gateway = parse_gateway(route.gateway)?;
        // A multipath route is on a device when every next hop is (the lab's service
        // range over all its kube-proxy nodes, say).
        let device = route.dev.or_else(|| {
            let first = route.nexthops.first()?.dev.clone()?;
            route.nexthops.iter().all(|hop| hop.dev.as_ref() == Some(&first)).then_some(first)
        });
        let mut next_hops = Vec::new();
        for hop in route.nexthops {
            next_hops.extend(parse_gateway(hop.gateway)?);
        }
        routes.push(HostRouteEntry {
            destination,
            kind: route.kind.unwrap_or_else(|| "unicast".into()),
            gateway,
            device,
            table: route.table.unwrap_or_else(|| "main".into()),
            next_hops,
        });
    }
    Ok(routes)
}

/// The host's IPv4 routes in every table.
pub fn host_routes(system: &dyn System) -> Result<Vec<HostRouteEntry>, RouteListError> {
    let listing = system
        .run("ip", &["-4", "-j", "route", "show", "table", "all"])
        .map_err(|failure| RouteListError::Command(failure.message))?;
    parse_ip_routes(&listing)
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

/// The `inet ADDRESS/PREFIX` entries of `ip -4 -o addr show` output.
pub(super) fn parse_addresses(listing: &str) -> Vec<Ipv4Net> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet")?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// The destinations of `ip -4 -o route show dev BRIDGE` output, with each line.
pub(super) fn parse_route_destinations(listing: &str) -> Vec<(Ipv4Net, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let first = line.split_whitespace().next()?;
            let destination = match first.parse::<Ipv4Net>() {
                Ok(net) => net,
                Err(_) => Ipv4Net::from(first.parse::<Ipv4Addr>().ok()?),
            };
            Some((destination, line.trim().to_string()))
        })
        .collect()
}

/// The arguments of `ip route replace` that install `route` on `bridge`. `None` for
/// the bridge's own subnet (`on_link`): the kernel routed it when the gateway address
/// was added.
///
/// `onlink` lets a route exist while no node is attached yet (the bridge has no
/// carrier then); traffic still goes to the bridge.
pub(super) fn route_arguments(bridge: &str, on_link: Ipv4Net, route: &HostRoute) -> Option<Vec<String>> {
    let destination = route.destination.to_string();
    let hop = |via: &Ipv4Addr| ["via".to_string(), via.to_string(), "dev".into(), bridge.into(), "onlink".into()];
    match route.via.as_slice() {
        [] if route.destination.trunc() == on_link => None,
        [] => Some(vec![destination, "dev".into(), bridge.into()]),
        [via] => Some([vec![destination], hop(via).to_vec()].concat()),
        hops => {
            let mut arguments = vec![destination];
            for via in hops {
                arguments.push("nexthop".into());
                arguments.extend(hop(via));
            }
            Some(arguments)
        }
    }
}

/// The device of an `ip route get` answer.
pub(super) fn parse_route_get_device(answer: &str) -> Option<String> {
    let mut words = answer.split_whitespace();
    words.find(|word| *word == "dev")?;
    words.next().map(str::to_string)
}

/// An address inside `range` to ask the kernel about: its first host address that
/// is not the host's own `gateway` (which the kernel answers as local).
pub(super) fn probe_address(range: Ipv4Net, gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    range.hosts().find(|address| *address != gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, device: &str) -> HostRouteEntry {
        HostRouteEntry {
            destination: destination.parse().unwrap(),
            kind: "unicast".into(),
            gateway: None,
            device: Some(device.into()),
            table: "main".into(),
            next_hops: Vec::new(),
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
        assert_eq!(routes[4].next_hops, [Ipv4Addr::new(10, 240, 0, 11), Ipv4Addr::new(10, 240, 0, 21)]);
        assert!(parse_ip_routes(r#"[{"dst":"10.0.0.300/8"}]"#).is_err());
        assert_eq!(parse_ip_routes("[]").expect("empty"), []);
    }

    #[test]
    fn a_route_installs_a_planned_route_with_the_same_next_hops_in_any_order() {
        let planned = HostRoute {
            destination: "10.32.0.0/24".parse().unwrap(),
            via: vec![Ipv4Addr::new(10, 240, 0, 21), Ipv4Addr::new(10, 240, 0, 11)],
        };
        let mut multipath = route("10.32.0.0/24", "lab-k8s");
        multipath.next_hops = vec![Ipv4Addr::new(10, 240, 0, 11), Ipv4Addr::new(10, 240, 0, 21)];
        assert!(multipath.installs(&planned, "lab-k8s"));
        assert!(!multipath.installs(&planned, "lab-other"));
        multipath.next_hops.pop();
        assert!(!multipath.installs(&planned, "lab-k8s"), "a next hop is missing");
    }

    #[test]
    fn addresses_are_read_from_ip_addr_output() {
        let listing = "7: lab-k8s    inet 10.240.0.1/24 scope global lab-k8s\\       valid_lft forever\n\
                       7: lab-k8s    inet 10.9.0.1/16 scope global lab-k8s\\       valid_lft forever\n";
        assert_eq!(
            parse_addresses(listing),
            vec!["10.240.0.1/24".parse::<Ipv4Net>().unwrap(), "10.9.0.1/16".parse().unwrap()]
        );
    }

    #[test]
    fn route_destinations_accept_plain_addresses_as_host_routes() {
        let listing = "10.200.0.0/24 via 10.240.0.21 onlink \n\
                       10.240.0.0/24 proto kernel scope link src 10.240.0.1 linkdown \n\
                       10.240.0.100 via 10.240.0.11 onlink \n";
        let parsed: Vec<String> =
            parse_route_destinations(listing).into_iter().map(|(net, _)| net.to_string()).collect();
        assert_eq!(parsed, ["10.200.0.0/24", "10.240.0.0/24", "10.240.0.100/32"]);
    }

    #[test]
    fn routes_become_ip_route_arguments_with_every_next_hop() {
        let on_link: Ipv4Net = "10.240.0.0/24".parse().unwrap();
        let route = |destination: &str, via: &[&str]| HostRoute {
            destination: destination.parse().unwrap(),
            via: via.iter().map(|hop| hop.parse().unwrap()).collect(),
        };
        assert_eq!(route_arguments("lab-k8s", on_link, &route("10.240.0.0/24", &[])), None);
        assert_eq!(
            route_arguments("lab-k8s", on_link, &route("10.240.0.100/32", &[])).unwrap().join(" "),
            "10.240.0.100/32 dev lab-k8s"
        );
        assert_eq!(
            route_arguments("lab-k8s", on_link, &route("10.200.0.0/24", &["10.240.0.21"])).unwrap().join(" "),
            "10.200.0.0/24 via 10.240.0.21 dev lab-k8s onlink"
        );
        assert_eq!(
            route_arguments("lab-k8s", on_link, &route("10.32.0.0/24", &["10.240.0.11", "10.240.0.21"]))
                .unwrap()
                .join(" "),
            "10.32.0.0/24 nexthop via 10.240.0.11 dev lab-k8s onlink nexthop via 10.240.0.21 dev lab-k8s onlink"
        );
    }

    #[test]
    fn route_get_answer_names_the_device() {
        let answer = "10.240.0.11 dev lab-k8s src 10.240.0.1 uid 0 \\    cache ";
        assert_eq!(parse_route_get_device(answer).as_deref(), Some("lab-k8s"));
        let default = "10.240.0.11 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \\    cache ";
        assert_eq!(parse_route_get_device(default).as_deref(), Some("eth0"));
        assert_eq!(parse_route_get_device("local 10.240.0.1 dev lo table local src 10.240.0.1"), Some("lo".into()));
    }

    #[test]
    fn probe_addresses_fall_inside_the_range() {
        let gateway = Ipv4Addr::new(10, 240, 0, 1);
        assert_eq!(probe_address("10.200.1.0/24".parse().unwrap(), gateway), Some(Ipv4Addr::new(10, 200, 1, 1)));
        assert_eq!(probe_address("10.240.0.0/24".parse().unwrap(), gateway), Some(Ipv4Addr::new(10, 240, 0, 2)));
        assert_eq!(probe_address("10.240.0.100/32".parse().unwrap(), gateway), Some(Ipv4Addr::new(10, 240, 0, 100)));
    }
}
