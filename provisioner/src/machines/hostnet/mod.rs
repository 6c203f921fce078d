//! The lab's network on the host: one Linux bridge named after the lab, holding the
//! host's gateway address, and a route onto that bridge for every lab range.
//!
//! The network rule of the project is that nothing the lab sends may follow the
//! host's default route. So `ensure` does not only add routes: it then asks the
//! kernel where each lab address would go (`ip route get`) and fails unless the
//! answer is the lab's bridge. Callers must not send anything to the lab before
//! `ensure` returned, and `lab ssh` checks `address_is_on_bridge` first.
//!
//! Everything is idempotent: `ensure` converges a missing, half-made or stale
//! bridge to the plan, and `teardown` removes whatever of it is there.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use sha2::Digest as _;

use super::{Leftover, MachineError};
use crate::plan::HostRoute;
use crate::system::{self, CommandFailure};

/// Linux limits interface names to 15 bytes (IFNAMSIZ minus the terminating NUL).
const INTERFACE_NAME_MAX: usize = 15;

/// What `ensure` changed, for progress output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    /// The bridge did not exist and was made.
    pub bridge_created: bool,
    /// Each route as `DESTINATION via NEXT-HOP dev BRIDGE` (or `on-link`), in plan order.
    pub routes: Vec<String>,
}

fn network_error(message: impl Into<String>) -> MachineError {
    MachineError::Network { message: message.into() }
}

fn from_command(failure: CommandFailure) -> MachineError {
    network_error(failure.to_string())
}

/// The bridge's alias (`ip link set BRIDGE alias ...`) naming the state directory of
/// the lab that owns it: two labs of the same name in different state directories
/// would otherwise share, and tear down, one bridge.
pub fn owner_tag(state_dir: &Path) -> String {
    let tag = format!("k8s-lab {}", state_dir.display());
    // The kernel keeps at most 255 bytes of alias.
    if tag.len() <= 255 {
        tag
    } else {
        format!("k8s-lab sha256:{}", hex::encode(sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes())))
    }
}

fn bridge_alias(bridge: &str) -> String {
    fs::read_to_string(format!("/sys/class/net/{bridge}/ifalias")).unwrap_or_default().trim().to_string()
}

/// Makes the bridge, its gateway address and every route of `routes` exist, then
/// proves with the kernel's own route lookup that each lab range leaves by the bridge.
/// `owner` is `owner_tag` of the lab's state directory.
pub fn ensure(
    bridge: &str,
    owner: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
) -> Result<NetworkReport, MachineError> {
    if bridge.is_empty() || bridge.len() > INTERFACE_NAME_MAX {
        return Err(network_error(format!(
            "bridge name {bridge:?} must be 1 to {INTERFACE_NAME_MAX} bytes (shorten the lab's name)"
        )));
    }
    check_ranges_free(bridge, gateway, routes)?;
    let mut report = NetworkReport::default();
    if bridge_exists(bridge) {
        if !Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists() {
            return Err(network_error(format!(
                "{bridge} exists on the host but is not a bridge; remove it (`ip link del {bridge}`) or rename the lab"
            )));
        }
        let alias = bridge_alias(bridge);
        if !alias.is_empty() && alias != owner {
            return Err(network_error(format!(
                "bridge {bridge} belongs to another lab ({alias:?}); destroy that lab or rename this one"
            )));
        }
    } else {
        system::run_program("ip", ["link", "add", "name", bridge, "type", "bridge"]).map_err(from_command)?;
        report.bridge_created = true;
    }
    system::run_program("ip", ["link", "set", "dev", bridge, "alias", owner]).map_err(from_command)?;
    // The lab speaks IPv4 only. Without IPv6 on the bridge the host sends no router
    // solicitations or multicast listener reports into the lab.
    let ipv6_switch = format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6");
    if Path::new(&ipv6_switch).exists() {
        fs::write(&ipv6_switch, "1").map_err(|error| network_error(format!("cannot write {ipv6_switch}: {error}")))?;
    }
    converge_address(bridge, gateway)?;
    system::run_program("ip", ["link", "set", "dev", bridge, "up"]).map_err(from_command)?;
    converge_routes(bridge, gateway, routes, &mut report)?;

    let mut probes: Vec<Ipv4Addr> = Vec::new();
    for route in routes {
        probes.extend(probe_address(route.destination, gateway.addr()));
        probes.extend(route.via.iter().copied());
    }
    verify_on_bridge(bridge, &probes)?;
    Ok(report)
}

/// Refuses before changing anything when a host route that is not the lab's own
/// covers part of a lab range (the node subnet, which `gateway` is in, and each of
/// `routes`): `ip route replace` would take that route over (or a more specific one
/// would keep lab traffic off the bridge), and either way the lab and whatever the
/// host uses that range for would fight. The check is the preflight's (`lab up` ran
/// it before creating anything); it runs again here, right before the host's routes
/// change, with the exact ranges to be routed.
pub fn check_ranges_free(bridge: &str, gateway: Ipv4Net, routes: &[HostRoute]) -> Result<(), MachineError> {
    let mut lab_ranges = vec![gateway.trunc()];
    lab_ranges.extend(routes.iter().map(|route| route.destination.trunc()));
    let host_routes = crate::preflight::host_routes().map_err(|error| network_error(error.to_string()))?;
    let named: Vec<(&str, Ipv4Net)> = lab_ranges.iter().map(|range| ("lab range", *range)).collect();
    let conflicts: Vec<String> = crate::preflight::overlapping_routes(&host_routes, &named, bridge)
        .iter()
        .map(|problem| format!("{} {}", problem.value, problem.message))
        .collect();
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(network_error(format!(
        "refusing to touch the host's routes: {}; change the lab's ranges in lab.toml",
        conflicts.join("; ")
    )))
}

/// Keeps exactly the gateway address (with the node subnet's prefix) on the bridge.
/// Any other IPv4 address there came from an older topology of this lab.
fn converge_address(bridge: &str, gateway: Ipv4Net) -> Result<(), MachineError> {
    let listing = system::run_program("ip", ["-4", "-o", "addr", "show", "dev", bridge]).map_err(from_command)?;
    let present = parse_addresses(&listing);
    for stale in present.iter().filter(|address| **address != gateway) {
        system::run_program("ip", ["addr", "del", &stale.to_string(), "dev", bridge]).map_err(from_command)?;
    }
    if !present.contains(&gateway) {
        system::run_program("ip", ["addr", "add", &gateway.to_string(), "dev", bridge]).map_err(from_command)?;
    }
    Ok(())
}

/// The `inet ADDRESS/PREFIX` entries of `ip -4 -o addr show` output.
fn parse_addresses(listing: &str) -> Vec<Ipv4Net> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet")?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// Installs each planned route with `ip route replace` (idempotent), and removes
/// routes on the bridge that the plan no longer has.
fn converge_routes(
    bridge: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
    report: &mut NetworkReport,
) -> Result<(), MachineError> {
    let on_link = gateway.trunc();
    for route in routes {
        let destination = route.destination.to_string();
        if let Some(via) = route.via.iter().find(|via| !on_link.contains(*via)) {
            return Err(network_error(format!(
                "route {destination} via {via}: the next hop is not in the bridge's subnet {on_link}"
            )));
        }
        if let Some(arguments) = route_arguments(bridge, on_link, route) {
            let mut command = vec!["route", "replace"];
            command.extend(arguments.iter().map(String::as_str));
            system::run_program("ip", command).map_err(from_command)?;
        }
        let hops = route.via.iter().map(ToString::to_string).collect::<Vec<_>>();
        report.routes.push(match hops.len() {
            0 => format!("{destination} dev {bridge} (on-link)"),
            _ => format!("{destination} via {} dev {bridge}", hops.join(", ")),
        });
    }
    if routes.iter().any(|route| route.via.len() > 1) {
        skip_dead_next_hops()?;
    }
    let planned: Vec<Ipv4Net> = routes.iter().map(|route| route.destination.trunc()).collect();
    for (destination, line) in bridge_routes(bridge).map_err(from_command)? {
        if destination != on_link && !planned.contains(&destination) {
            tracing::info!(bridge, route = %line, "removing a route the plan no longer has");
            delete_route(bridge, destination).map_err(from_command)?;
        }
    }
    Ok(())
}

/// The arguments of `ip route replace` that install `route` on `bridge`. `None` for
/// the bridge's own subnet (`on_link`): the kernel routed it when the gateway address
/// was added.
///
/// `onlink` lets a route exist while no node is attached yet (the bridge has no
/// carrier then); traffic still goes to the bridge.
fn route_arguments(bridge: &str, on_link: Ipv4Net, route: &HostRoute) -> Option<Vec<String>> {
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

/// Where the kernel decides whether a multipath route may use a next hop whose
/// neighbour entry failed.
const MULTIPATH_USE_NEIGH: &str = "/proc/sys/net/ipv4/fib_multipath_use_neigh";

/// A multipath route over nodes on one bridge never loses a next hop by itself: the
/// bridge stays up when a node stops. With this switch on, the kernel skips a next
/// hop whose ARP entry has failed, so a stopped node's share of new flows goes to the
/// others. It only changes how multipath routes choose, and the lab's are the only
/// multipath routes on a host that runs it.
fn skip_dead_next_hops() -> Result<(), MachineError> {
    match fs::read_to_string(MULTIPATH_USE_NEIGH) {
        Ok(value) if value.trim() == "1" => Ok(()),
        Ok(_) => fs::write(MULTIPATH_USE_NEIGH, "1")
            .map_err(|error| network_error(format!("cannot write {MULTIPATH_USE_NEIGH}: {error}"))),
        // A kernel without multipath routing refused the route already.
        Err(error) => Err(network_error(format!("cannot read {MULTIPATH_USE_NEIGH}: {error}"))),
    }
}

/// The IPv4 routes that leave by `bridge` (main table), with each one's text.
fn bridge_routes(bridge: &str) -> Result<Vec<(Ipv4Net, String)>, CommandFailure> {
    let listing = system::run_program("ip", ["-4", "-o", "route", "show", "dev", bridge])?;
    Ok(parse_route_destinations(&listing))
}

fn parse_route_destinations(listing: &str) -> Vec<(Ipv4Net, String)> {
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

fn delete_route(bridge: &str, destination: Ipv4Net) -> Result<(), CommandFailure> {
    system::run_program("ip", ["route", "del", &destination.to_string(), "dev", bridge]).map(drop)
}

/// An address inside `range` to ask the kernel about: its first host address that
/// is not the host's own `gateway` (which the kernel answers as local).
fn probe_address(range: Ipv4Net, gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    range.hosts().find(|address| *address != gateway)
}

/// The interface the kernel would send a packet for `address` out of, as
/// `ip route get` answers it (a lookup only: nothing is sent).
pub fn route_device(address: Ipv4Addr) -> Result<Option<String>, MachineError> {
    match system::run_program("ip", ["-4", "-o", "route", "get", &address.to_string()]) {
        Ok(answer) => Ok(parse_route_get_device(&answer)),
        // "Network is unreachable": no route at all, so nothing would be sent.
        Err(failure) if failure.message.contains("unreachable") => Ok(None),
        Err(failure) => Err(from_command(failure)),
    }
}

fn parse_route_get_device(answer: &str) -> Option<String> {
    let mut words = answer.split_whitespace();
    words.find(|word| *word == "dev")?;
    words.next().map(str::to_string)
}

/// Whether traffic to `address` would leave by `bridge`.
pub fn address_is_on_bridge(bridge: &str, address: Ipv4Addr) -> Result<bool, MachineError> {
    Ok(route_device(address)?.as_deref() == Some(bridge))
}

/// Fails, naming the address and where it would go instead, unless every one of
/// `addresses` is routed onto `bridge`. A lab address that is local to the host
/// (`dev lo`) fails too: the host would answer in the node's place.
pub fn verify_on_bridge(bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), MachineError> {
    for address in addresses {
        match route_device(*address)?.as_deref() {
            Some(device) if device == bridge => {}
            Some(device) => {
                return Err(network_error(format!(
                    "refusing to continue: traffic to {address} would leave by {device}, not the lab bridge \
                     {bridge} (another route on the host covers this lab range; see `ip route get {address}`)"
                )))
            }
            None => return Err(network_error(format!("no route to {address} after adding the lab's routes"))),
        }
    }
    Ok(())
}

pub fn bridge_exists(bridge: &str) -> bool {
    Path::new(&format!("/sys/class/net/{bridge}")).exists()
}

/// The interfaces attached to `bridge` (the nodes' host-side veth ends).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Removes the lab's routes and bridge. Deleting the bridge takes its routes with
/// it; they are deleted one by one first so that a failure names the route.
pub fn teardown(bridge: &str, owner: &str) -> Vec<Leftover> {
    let mut leftovers = Vec::new();
    if !bridge_exists(bridge) {
        return leftovers;
    }
    if !Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists() {
        leftovers.push(Leftover::new(
            format!("interface {bridge}"),
            "it is not a bridge, so the lab did not make it; left alone",
        ));
        return leftovers;
    }
    let alias = bridge_alias(bridge);
    if !alias.is_empty() && alias != owner {
        leftovers.push(Leftover::new(
            format!("bridge {bridge}"),
            format!("it belongs to another lab ({alias:?}); left alone"),
        ));
        return leftovers;
    }
    match bridge_routes(bridge) {
        Ok(routes) => {
            let kernel_made: Vec<Ipv4Net> = parse_addresses(
                &system::run_program("ip", ["-4", "-o", "addr", "show", "dev", bridge]).unwrap_or_default(),
            )
            .iter()
            .map(Ipv4Net::trunc)
            .collect();
            for (destination, line) in routes {
                if kernel_made.contains(&destination) {
                    continue;
                }
                if let Err(failure) = delete_route(bridge, destination) {
                    leftovers.push(Leftover::new(format!("route {line}"), failure.to_string()));
                }
            }
        }
        Err(failure) => leftovers.push(Leftover::new(format!("routes on {bridge}"), failure.to_string())),
    }
    if let Err(failure) = system::run_program("ip", ["link", "del", "dev", bridge]) {
        leftovers.push(Leftover::new(format!("bridge {bridge}"), failure.to_string()));
    } else if bridge_exists(bridge) {
        leftovers.push(Leftover::new(format!("bridge {bridge}"), "still present after `ip link del`"));
    }
    leftovers
}

#[cfg(test)]
mod tests {
    use super::*;

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
