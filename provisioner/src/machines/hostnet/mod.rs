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
//!
//! Each step acts on the host through a `System` (the `_with` functions), so its
//! decisions are tested against `RecordingSystem` without root; the functions
//! without the suffix act on this machine. The host's routing table and the lab's
//! route arguments are read and written in `routes`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use sha2::Digest as _;

use super::{Leftover, MachineError};
use crate::plan::HostRoute;
use crate::system::{CommandFailure, LocalSystem, System};
use routes::{
    parse_addresses, parse_route_destinations, parse_route_get_device, probe_address, route_arguments, HostRouteEntry,
};

pub mod routes;

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

fn interface_path(bridge: &str, below: &str) -> String {
    match below {
        "" => format!("/sys/class/net/{bridge}"),
        _ => format!("/sys/class/net/{bridge}/{below}"),
    }
}

fn bridge_alias(system: &dyn System, bridge: &str) -> String {
    system.read_file(Path::new(&interface_path(bridge, "ifalias"))).unwrap_or_default().trim().to_string()
}

fn interface_exists(system: &dyn System, bridge: &str) -> bool {
    system.exists(Path::new(&interface_path(bridge, "")))
}

fn is_bridge(system: &dyn System, bridge: &str) -> bool {
    system.exists(Path::new(&interface_path(bridge, "bridge")))
}

/// `ensure_with` on this host.
pub fn ensure(
    bridge: &str,
    owner: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
) -> Result<NetworkReport, MachineError> {
    ensure_with(&LocalSystem, bridge, owner, gateway, routes)
}

/// Makes the bridge, its gateway address and every route of `routes` exist, then
/// proves with the kernel's own route lookup that each lab range leaves by the bridge.
/// `owner` is `owner_tag` of the lab's state directory. What already exists as
/// planned is left as it is.
pub fn ensure_with(
    system: &dyn System,
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
    let host_routes = refuse_overlaps(system, bridge, gateway, routes)?;
    let mut report = NetworkReport::default();
    if interface_exists(system, bridge) {
        if !is_bridge(system, bridge) {
            return Err(network_error(format!(
                "{bridge} exists on the host but is not a bridge; remove it (`ip link del {bridge}`) or rename the lab"
            )));
        }
        let alias = bridge_alias(system, bridge);
        if !alias.is_empty() && alias != owner {
            return Err(network_error(format!(
                "bridge {bridge} belongs to another lab ({alias:?}); destroy that lab or rename this one"
            )));
        }
    } else {
        system.run("ip", &["link", "add", "name", bridge, "type", "bridge"]).map_err(from_command)?;
        report.bridge_created = true;
    }
    system.run("ip", &["link", "set", "dev", bridge, "alias", owner]).map_err(from_command)?;
    // The lab speaks IPv4 only. Without IPv6 on the bridge the host sends no router
    // solicitations or multicast listener reports into the lab.
    set_kernel_switch(system, &format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"), false)?;
    converge_address(system, bridge, gateway)?;
    system.run("ip", &["link", "set", "dev", bridge, "up"]).map_err(from_command)?;
    converge_routes(system, bridge, gateway, routes, &host_routes, &mut report)?;

    let mut probes: Vec<Ipv4Addr> = Vec::new();
    for route in routes {
        probes.extend(probe_address(route.destination, gateway.addr()));
        probes.extend(route.via.iter().copied());
    }
    verify_on_bridge_with(system, bridge, &probes)?;
    Ok(report)
}

/// Turns the kernel switch at `path` on unless it is already. With `required`, a
/// switch that cannot be read is an error; otherwise a missing one is left alone.
fn set_kernel_switch(system: &dyn System, path: &str, required: bool) -> Result<(), MachineError> {
    let switch = Path::new(path);
    if !required && !system.exists(switch) {
        return Ok(());
    }
    match system.read_file(switch) {
        Ok(value) if value.trim() == "1" => Ok(()),
        Ok(_) => {
            system.write_in_place(switch, b"1").map_err(|error| network_error(format!("cannot write {path}: {error}")))
        }
        Err(error) => Err(network_error(format!("cannot read {path}: {error}"))),
    }
}

/// `check_ranges_free_with` on this host.
pub fn check_ranges_free(bridge: &str, gateway: Ipv4Net, routes: &[HostRoute]) -> Result<(), MachineError> {
    check_ranges_free_with(&LocalSystem, bridge, gateway, routes)
}

/// Refuses before changing anything when a host route that is not the lab's own
/// covers part of a lab range (the node subnet, which `gateway` is in, and each of
/// `routes`): `ip route replace` would take that route over (or a more specific one
/// would keep lab traffic off the bridge), and either way the lab and whatever the
/// host uses that range for would fight. The check is the preflight's (`lab up` ran
/// it before creating anything); it runs again here, right before the host's routes
/// change, with the exact ranges to be routed.
pub fn check_ranges_free_with(
    system: &dyn System,
    bridge: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
) -> Result<(), MachineError> {
    refuse_overlaps(system, bridge, gateway, routes).map(drop)
}

/// `check_ranges_free_with`, returning the host's routes it read.
fn refuse_overlaps(
    system: &dyn System,
    bridge: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
) -> Result<Vec<HostRouteEntry>, MachineError> {
    let mut lab_ranges = vec![gateway.trunc()];
    lab_ranges.extend(routes.iter().map(|route| route.destination.trunc()));
    let host_routes = routes::host_routes(system).map_err(|error| network_error(error.to_string()))?;
    let named: Vec<(&str, Ipv4Net)> = lab_ranges.iter().map(|range| ("lab range", *range)).collect();
    let conflicts: Vec<String> = routes::overlapping_routes(&host_routes, &named, bridge)
        .iter()
        .map(|problem| format!("{} {}", problem.value, problem.message))
        .collect();
    if conflicts.is_empty() {
        return Ok(host_routes);
    }
    Err(network_error(format!(
        "refusing to touch the host's routes: {}; change the lab's ranges in lab.toml",
        conflicts.join("; ")
    )))
}

/// Keeps exactly the gateway address (with the node subnet's prefix) on the bridge.
/// Any other IPv4 address there came from an older topology of this lab.
fn converge_address(system: &dyn System, bridge: &str, gateway: Ipv4Net) -> Result<(), MachineError> {
    let listing = system.run("ip", &["-4", "-o", "addr", "show", "dev", bridge]).map_err(from_command)?;
    let present = parse_addresses(&listing);
    for stale in present.iter().filter(|address| **address != gateway) {
        system.run("ip", &["addr", "del", &stale.to_string(), "dev", bridge]).map_err(from_command)?;
    }
    if !present.contains(&gateway) {
        system.run("ip", &["addr", "add", &gateway.to_string(), "dev", bridge]).map_err(from_command)?;
    }
    Ok(())
}

/// Installs each planned route that `host_routes` (the host's routes before any
/// change) lacks with `ip route replace`, and removes routes on the bridge that the
/// plan no longer has.
fn converge_routes(
    system: &dyn System,
    bridge: &str,
    gateway: Ipv4Net,
    routes: &[HostRoute],
    host_routes: &[HostRouteEntry],
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
        let installed = host_routes.iter().any(|existing| existing.installs(route, bridge));
        if let Some(arguments) = route_arguments(bridge, on_link, route).filter(|_| !installed) {
            let mut command = vec!["route", "replace"];
            command.extend(arguments.iter().map(String::as_str));
            system.run("ip", &command).map_err(from_command)?;
        }
        let hops = route.via.iter().map(ToString::to_string).collect::<Vec<_>>();
        report.routes.push(match hops.len() {
            0 => format!("{destination} dev {bridge} (on-link)"),
            _ => format!("{destination} via {} dev {bridge}", hops.join(", ")),
        });
    }
    if routes.iter().any(|route| route.via.len() > 1) {
        skip_dead_next_hops(system)?;
    }
    let planned: Vec<Ipv4Net> = routes.iter().map(|route| route.destination.trunc()).collect();
    for (destination, line) in bridge_routes(system, bridge).map_err(from_command)? {
        if destination != on_link && !planned.contains(&destination) {
            tracing::info!(bridge, route = %line, "removing a route the plan no longer has");
            delete_route(system, bridge, destination).map_err(from_command)?;
        }
    }
    Ok(())
}

/// Where the kernel decides whether a multipath route may use a next hop whose
/// neighbour entry failed.
const MULTIPATH_USE_NEIGH: &str = "/proc/sys/net/ipv4/fib_multipath_use_neigh";

/// A multipath route over nodes on one bridge never loses a next hop by itself: the
/// bridge stays up when a node stops. With this switch on, the kernel skips a next
/// hop whose ARP entry has failed, so a stopped node's share of new flows goes to the
/// others. It only changes how multipath routes choose, and the lab's are the only
/// multipath routes on a host that runs it. A kernel without multipath routing
/// refused the route already, so the switch must be there.
fn skip_dead_next_hops(system: &dyn System) -> Result<(), MachineError> {
    set_kernel_switch(system, MULTIPATH_USE_NEIGH, true)
}

/// The IPv4 routes that leave by `bridge` (main table), with each one's text.
fn bridge_routes(system: &dyn System, bridge: &str) -> Result<Vec<(Ipv4Net, String)>, CommandFailure> {
    let listing = system.run("ip", &["-4", "-o", "route", "show", "dev", bridge])?;
    Ok(parse_route_destinations(&listing))
}

fn delete_route(system: &dyn System, bridge: &str, destination: Ipv4Net) -> Result<(), CommandFailure> {
    system.run("ip", &["route", "del", &destination.to_string(), "dev", bridge]).map(drop)
}

/// The interface the kernel would send a packet for `address` out of, as
/// `ip route get` answers it (a lookup only: nothing is sent).
fn route_device(system: &dyn System, address: Ipv4Addr) -> Result<Option<String>, MachineError> {
    match system.run("ip", &["-4", "-o", "route", "get", &address.to_string()]) {
        Ok(answer) => Ok(parse_route_get_device(&answer)),
        // "Network is unreachable": no route at all, so nothing would be sent.
        Err(failure) if failure.message.contains("unreachable") => Ok(None),
        Err(failure) => Err(from_command(failure)),
    }
}

/// Whether traffic to `address` would leave by `bridge`.
pub fn address_is_on_bridge(bridge: &str, address: Ipv4Addr) -> Result<bool, MachineError> {
    Ok(route_device(&LocalSystem, address)?.as_deref() == Some(bridge))
}

/// `verify_on_bridge_with` on this host.
pub fn verify_on_bridge(bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), MachineError> {
    verify_on_bridge_with(&LocalSystem, bridge, addresses)
}

/// Fails, naming the address and where it would go instead, unless every one of
/// `addresses` is routed onto `bridge`. A lab address that is local to the host
/// (`dev lo`) fails too: the host would answer in the node's place.
pub fn verify_on_bridge_with(system: &dyn System, bridge: &str, addresses: &[Ipv4Addr]) -> Result<(), MachineError> {
    for address in addresses {
        match route_device(system, *address)?.as_deref() {
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
    interface_exists(&LocalSystem, bridge)
}

/// The interfaces attached to `bridge` (the nodes' host-side veth ends).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    fs::read_dir(interface_path(bridge, "brif"))
        .map(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// `teardown_with` on this host.
pub fn teardown(bridge: &str, owner: &str) -> Vec<Leftover> {
    teardown_with(&LocalSystem, bridge, owner)
}

/// Removes the lab's routes and bridge. Deleting the bridge takes its routes with
/// it; they are deleted one by one first so that a failure names the route.
pub fn teardown_with(system: &dyn System, bridge: &str, owner: &str) -> Vec<Leftover> {
    let mut leftovers = Vec::new();
    if !interface_exists(system, bridge) {
        return leftovers;
    }
    if !is_bridge(system, bridge) {
        leftovers.push(Leftover::new(
            format!("interface {bridge}"),
            "it is not a bridge, so the lab did not make it; left alone",
        ));
        return leftovers;
    }
    let alias = bridge_alias(system, bridge);
    if !alias.is_empty() && alias != owner {
        leftovers.push(Leftover::new(
            format!("bridge {bridge}"),
            format!("it belongs to another lab ({alias:?}); left alone"),
        ));
        return leftovers;
    }
    match bridge_routes(system, bridge) {
        Ok(routes) => {
            let kernel_made: Vec<Ipv4Net> =
                parse_addresses(&system.run("ip", &["-4", "-o", "addr", "show", "dev", bridge]).unwrap_or_default())
                    .iter()
                    .map(Ipv4Net::trunc)
                    .collect();
            for (destination, line) in routes {
                if kernel_made.contains(&destination) {
                    continue;
                }
                if let Err(failure) = delete_route(system, bridge, destination) {
                    leftovers.push(Leftover::new(format!("route {line}"), failure.to_string()));
                }
            }
        }
        Err(failure) => leftovers.push(Leftover::new(format!("routes on {bridge}"), failure.to_string())),
    }
    if let Err(failure) = system.run("ip", &["link", "del", "dev", bridge]) {
        leftovers.push(Leftover::new(format!("bridge {bridge}"), failure.to_string()));
    } else if interface_exists(system, bridge) {
        leftovers.push(Leftover::new(format!("bridge {bridge}"), "still present after `ip link del`"));
    }
    leftovers
}

#[cfg(test)]
mod tests;
