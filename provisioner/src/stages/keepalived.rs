//! Handbook 000 section 8.2: keepalived and the virtual IP.
//!
//! HAProxy runs on every `lb` node, but clients need one address. keepalived gives
//! them one: the `lb` nodes speak VRRP with each other, elect one of them master, and
//! the master adds the virtual IP (VIP) to its interface and announces it with
//! gratuitous ARP. When keepalived on the master stops, it tells the others and the
//! next in line takes the VIP over within a second; when only its HAProxy dies, it
//! gives the VIP up after two failed checks, within about three seconds. Either way kubectl,
//! kubelets and kube-proxy, which all use `https://VIP:API_PORT`, keep working.
//!
//! A move leaves the clients' open connections behind: the old holder can no longer
//! send from the VIP, and the new one never heard of them. A client that only listens
//! (a watch) notices when it next sends, so the kubelets and kube-proxy ping a silent
//! connection after 5 s and drop it when the ping goes unanswered for 5 s more
//! ([`client_environment`]).
//!
//! Choices, each for a reason:
//! - Every node starts as BACKUP with a distinct priority (first `lb` node highest).
//!   At startup the node whose wait for a master runs out first takes the VIP; when the
//!   holder fails, the node with the highest priority left takes over. Distinct
//!   priorities mean two nodes never tie.
//! - `nopreempt`: a node that comes back does not take the VIP back from a healthy
//!   holder. Every move of the VIP breaks the open connections (watches) through it,
//!   so it moves only when it has to.
//! - Unicast VRRP to the other `lb` nodes' addresses rather than multicast: it needs
//!   nothing from the bridge and sends nothing to any other host. A single `lb` node
//!   has no peer to name, so it keeps keepalived's default link-local multicast
//!   (224.0.0.18), which no router forwards off the lab's bridge.
//! - No `authentication` block: VRRPv2's password travels in clear text in every
//!   advertisement, so it stops only accidents, which unicast peers already rule out.
//!   The firewall stage limits VRRP to the lab's nodes.
//! - A check script asks HAProxy's loopback monitor URL every second; when it fails
//!   twice, keepalived enters FAULT state and releases the VIP to a node whose HAProxy
//!   works. (Every two seconds, as before 2026-12-04, made the move take up to 4.7 s,
//!   measured, against the 5 s a client may be without the API.) The check may take a while (curl 5 s, the script 10 s) before it
//!   counts as failed: a VM under software emulation can need seconds just to start
//!   curl, and a lone `lb` node in FAULT takes the API away. A dead HAProxy refuses
//!   the connection at once, so failover is no slower for it.

use crate::paths;
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan, UnitSpec};
use crate::stages::load_balancer;
use crate::topology::Role;

/// Debian's unit for keepalived, which reads `paths::KEEPALIVED_CONFIG`.
pub const UNIT: &str = "keepalived.service";
/// The VRRP router ID. It only has to be unique among the routers that hear each
/// other; unicast advertisements reach only this lab's `lb` nodes, so a constant does.
const VIRTUAL_ROUTER_ID: u8 = 51;
/// The priority of the first `lb` node; the others count down from it.
const TOP_PRIORITY: u32 = 150;
/// The usual step between priorities, shrunk if there are too many `lb` nodes to fit.
const PRIORITY_STEP: u32 = 10;

/// How long a client of the API through the VIP lets its connection be silent before
/// it pings the other end: client-go's `HTTP2_READ_IDLE_TIMEOUT_SECONDS`, 30 by default.
pub const CLIENT_READ_IDLE_SECS: u64 = 5;
/// How long that client waits for the answer to its ping before it drops the connection
/// and opens another: client-go's `HTTP2_PING_TIMEOUT_SECONDS`, 15 by default.
pub const CLIENT_PING_TIMEOUT_SECS: u64 = 5;

/// The unit lines of a daemon that reaches the API through the VIP (the kubelet and
/// kube-proxy), so that it follows the VIP when it moves. With client-go's defaults a
/// watch through the old holder stayed silent for up to 29 s after a move (measured
/// 2026-12-06): kube-proxy kept sending Service traffic to a deleted pod, and a kubelet
/// learned late that its pod was deleted. Pings every 5 s of silence cost a few bytes.
pub fn client_environment() -> String {
    format!(
        "# Follow the virtual IP when it moves: ping a connection silent for \
         {CLIENT_READ_IDLE_SECS} s and drop it\n\
         # when the ping is not answered within {CLIENT_PING_TIMEOUT_SECS} s (client-go's defaults are 30 and 15).\n\
         Environment=HTTP2_READ_IDLE_TIMEOUT_SECONDS={CLIENT_READ_IDLE_SECS} \
         HTTP2_PING_TIMEOUT_SECONDS={CLIENT_PING_TIMEOUT_SECS}\n"
    )
}

/// How long the VIP may take to appear and reach an apiserver through HAProxy.
const VIP_TIMEOUT_SECS: u64 = 60;
const ACTIVE_TIMEOUT_SECS: u64 = 30;

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let topology = context.topology;
    let network = &topology.network;
    let balancers: Vec<_> = topology.nodes_with(Role::Lb).collect();
    let priority_step = ((TOP_PRIORITY - 1) / balancers.len().max(1) as u32).clamp(1, PRIORITY_STEP);

    for (index, node) in balancers.iter().enumerate() {
        let priority = TOP_PRIORITY - priority_step * index as u32;
        let peers: String = balancers
            .iter()
            .filter(|peer| peer.name != node.name)
            .map(|peer| format!("        {}\n", peer.address))
            .collect();
        let unicast = if peers.is_empty() {
            String::new()
        } else {
            format!("    unicast_src_ip {}\n    unicast_peer {{\n{peers}    }}\n", node.address)
        };
        let config = format!(
            "# Written by the k8s lab; `lab up` overwrites local changes.
# keepalived: one virtual IP for the Kubernetes API (handbook 000 section 8.2).

global_defs {{
    router_id {name}
    # Run the check as root, and refuse scripts that others could modify.
    enable_script_security
    script_user root
}}

# Healthy while HAProxy answers its loopback monitor URL.
vrrp_script haproxy_alive {{
    script \"/usr/bin/curl --silent --fail --max-time 5 --output /dev/null {monitor_url}\"
    interval 1
    timeout 10
    fall 2
    rise 2
}}

vrrp_instance kube_apiserver {{
    state BACKUP
    interface {interface}
    virtual_router_id {VIRTUAL_ROUTER_ID}
    priority {priority}
    advert_int 1
    nopreempt
{unicast}    virtual_ipaddress {{
        {vip}/{prefix} dev {interface}
    }}
    track_script {{
        haproxy_alive
    }}
}}
",
            name = node.name,
            monitor_url = load_balancer::MONITOR_URL,
            interface = paths::NODE_INTERFACE,
            vip = network.vip,
            prefix = network.node_subnet.prefix_len(),
        );

        let actions = stage.node(&node.name);
        actions.files.push(FileSpec::text(paths::KEEPALIVED_CONFIG, 0o644, config));
        // A configuration error should fail the stage with keepalived's own message,
        // before the restart that would drop the VIP.
        actions.commands.push(CommandSpec {
            description: "check the keepalived configuration".to_string(),
            script: format!("/usr/sbin/keepalived --config-test --use-file={}", paths::KEEPALIVED_CONFIG),
            when: RunWhen::FilesChanged,
        });
        actions.units.push(UnitSpec {
            name: UNIT.to_string(),
            restart_when_changed: vec![paths::KEEPALIVED_CONFIG.to_string()],
            ..UnitSpec::default()
        });
        actions.checks.push(CheckSpec {
            description: format!("keepalived runs on {}", node.name),
            script: "systemctl is-active --quiet keepalived.service".to_string(),
            timeout_secs: ACTIVE_TIMEOUT_SECS,
        });
    }

    // Whichever node holds the VIP, the API must answer there. The admin kubeconfig
    // points at the VIP, so this is exactly the path kubectl users will take.
    if let Some(first) = balancers.first() {
        stage.node(&first.name).checks.push(CheckSpec {
            description: format!("the API answers on the virtual IP {}", context.api_server_url),
            script: format!("{} --request-timeout=5s get --raw /healthz", paths::admin_kubectl()),
            timeout_secs: VIP_TIMEOUT_SECS,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, stage_for, stage_for_topology, topology};

    const CONFIG: &str = "/etc/keepalived/keepalived.conf";

    /// The value after `key ` on the first line that starts with it.
    fn setting<'a>(config: &'a str, key: &str) -> &'a str {
        let prefix = format!("{key} ");
        config
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key} in:\n{config}"))
    }

    #[test]
    fn priorities_are_distinct_and_descending() {
        let stage = stage_for("lab.toml", Stage::Keepalived);
        let priorities: Vec<&str> = ["master1", "master2", "master3"]
            .iter()
            .map(|node| setting(file(&stage, node, CONFIG), "priority"))
            .collect();
        assert_eq!(priorities, ["150", "140", "130"]);
        for node in ["master1", "master2", "master3"] {
            let config = file(&stage, node, CONFIG);
            assert_eq!(setting(config, "state"), "BACKUP");
            assert_eq!(setting(config, "interface"), "host0");
            assert_eq!(setting(config, "virtual_router_id"), "51");
        }
    }

    #[test]
    fn every_node_floats_the_same_single_vip() {
        let stage = stage_for("lab.toml", Stage::Keepalived);
        for node in ["master1", "master2", "master3"] {
            let config = file(&stage, node, CONFIG);
            let block = config.split("virtual_ipaddress {\n").nth(1).expect("has a VIP block");
            let addresses: Vec<&str> = block.lines().take_while(|line| line.trim() != "}").map(str::trim).collect();
            assert_eq!(addresses, ["10.240.0.100/24 dev host0"]);
        }
    }

    #[test]
    fn peers_are_the_other_balancers() {
        let stage = stage_for("lab.toml", Stage::Keepalived);
        let config = file(&stage, "master2", CONFIG);
        assert_eq!(setting(config, "unicast_src_ip"), "10.240.0.12");
        assert!(config.contains("    unicast_peer {\n        10.240.0.11\n        10.240.0.13\n    }\n"), "{config}");
    }

    #[test]
    fn single_balancer_has_no_peers() {
        let stage = stage_for("examples/minimal.toml", Stage::Keepalived);
        let config = file(&stage, "master1", CONFIG);
        assert!(!config.contains("unicast"), "{config}");
        assert_eq!(setting(config, "priority"), "150");
    }

    #[test]
    fn tracks_haproxy_and_checks_the_vip_once() {
        let stage = stage_for("lab.toml", Stage::Keepalived);
        let config = file(&stage, "master3", CONFIG);
        assert!(config.contains(load_balancer::MONITOR_URL));
        assert!(config.contains("    track_script {\n        haproxy_alive\n    }\n"));
        let vip_checks =
            stage.nodes.iter().flat_map(|actions| &actions.checks).filter(|check| check.script.contains("kubectl"));
        assert_eq!(vip_checks.count(), 1);
    }

    #[test]
    fn many_balancers_still_get_distinct_priorities() {
        let mut topology = topology("lab.toml");
        let template = topology.nodes[0].clone();
        topology.nodes = (0..40u8)
            .map(|index| crate::topology::Node {
                name: format!("lb{index}"),
                address: std::net::Ipv4Addr::new(10, 240, 0, 150 + index),
                ..template.clone()
            })
            .collect();
        let stage = stage_for_topology(&topology, Stage::Keepalived);
        let mut priorities: Vec<u32> = stage
            .nodes
            .iter()
            .map(|actions| setting(file(&stage, &actions.node, CONFIG), "priority").parse().unwrap())
            .collect();
        priorities.dedup();
        assert_eq!(priorities.len(), 40);
        assert!(priorities.iter().all(|priority| (1..=150).contains(priority)));
    }
}
