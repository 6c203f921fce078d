//! The host's libvirt as both VM backends use it: the libvirt backend through the
//! `virt` crate, Vagrant through vagrant-libvirt and `virsh`. Built without the
//! `libvirt` feature, since the Vagrant backend needs none of libvirt's library.
//!
//! - `ensure_libvirtd` starts the daemons where no service manager did, but never
//!   while libvirt would then start a forwarding network of its own;
//! - `network_xml` is the lab's isolated network: no `<forward>` (libvirt neither
//!   routes nor NATs it), no DHCP, no DNS, the host's gateway address on the lab
//!   bridge;
//! - `virsh` and the parsers of its output, for the Vagrant backend.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::nspawn::Supervisor;
use super::{MachineError, MachineState, Requirement};
use crate::system::{self, CommandFailure};

/// The system instance of libvirt's QEMU driver (root's VMs, bridges and taps).
pub const URI: &str = "qemu:///system";

/// libvirtd's socket, as Debian's libvirt-daemon-system places it.
const LIBVIRT_SOCKET: &str = "/run/libvirt/libvirt-sock";
const VIRTLOGD_SOCKET: &str = "/run/libvirt/virtlogd-sock";

/// Where libvirt keeps each network's dnsmasq files and MAC lists.
const DNSMASQ_STATE_DIR: &str = "/var/lib/libvirt/dnsmasq";

/// Where libvirt keeps the networks it starts along with itself.
const AUTOSTART_NETWORKS: &str = "/etc/libvirt/qemu/networks/autostart";

/// How long libvirtd may take to answer after it was started.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts virtlogd and libvirtd unless libvirtd answers already: with systemctl
/// where systemd is PID 1, as daemons of their own elsewhere. Refuses while libvirt
/// would start a forwarding network along with itself.
pub fn ensure_libvirtd() -> Result<(), MachineError> {
    // libvirt writes each network's MAC list into its dnsmasq state directory when a
    // domain attaches to the network, and refuses to start the domain without it. A
    // fresh host may lack the directory (seen on Debian 12 where PID 1 is not systemd
    // and the lab starts libvirtd itself), even for a network without dnsmasq.
    fs::create_dir_all(DNSMASQ_STATE_DIR).map_err(|error| MachineError::Host {
        message: format!("cannot create libvirt's dnsmasq state directory {DNSMASQ_STATE_DIR}: {error}"),
    })?;
    open_kvm_to_its_group()?;
    if daemon_answers(LIBVIRT_SOCKET) {
        return Ok(());
    }
    let forwarding = forwarding_autostart_networks();
    if !forwarding.is_empty() {
        return Err(MachineError::Host {
            message: format!(
                "libvirtd is not running, and starting it would also start the network(s) {}, which forward \
                 traffic out of this host; the lab never starts such a network. {}",
                forwarding.join(", "),
                forwarding_fix(&forwarding)
            ),
        });
    }
    let host_error = |message: String| MachineError::Host { message };
    match Supervisor::detect() {
        Supervisor::SystemdUnits => {
            system::run_program("systemctl", ["start", "virtlogd.socket", "libvirtd.service"])
                .map_err(|failure| host_error(failure.to_string()))?;
        }
        Supervisor::Processes => {
            if !daemon_answers(VIRTLOGD_SOCKET) {
                system::run_program("virtlogd", ["-d"]).map_err(|failure| host_error(failure.to_string()))?;
            }
            system::run_program("libvirtd", ["-d"]).map_err(|failure| host_error(failure.to_string()))?;
        }
    }
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    while !daemon_answers(LIBVIRT_SOCKET) {
        if Instant::now() >= deadline {
            return Err(host_error(format!(
                "libvirtd was started but does not answer on {LIBVIRT_SOCKET} after {} s \
                 (see /var/log/libvirt/libvirtd.log)",
                DAEMON_START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Gives `/dev/kvm` the group and mode udev's default rules give it (`GROUP="kvm",
/// MODE="0660"`), where no udev did and it is root's alone.
///
/// libvirtd probes QEMU's capabilities as root, where QEMU finds KVM, and checks the
/// cached result against what its QEMU user (libvirt-qemu, of group kvm) may open.
/// With `/dev/kvm` at 0600 the two disagree ("KVM was enabled when probing, but it is
/// not available now"), so libvirtd throws the cache away and probes again, about 20
/// QEMU runs, before every domain is defined or started: 60 s each under emulation on
/// this project's hosts, three times per machine for Vagrant. Whether the VMs then use
/// KVM is still the lab's own decision (`acceleration`, and the probe of a guest
/// kernel under KVM).
fn open_kvm_to_its_group() -> Result<(), MachineError> {
    const KVM: &str = "/dev/kvm";
    let Ok(metadata) = fs::metadata(KVM) else { return Ok(()) };
    let Some(group) = system::group_id("kvm") else { return Ok(()) };
    if metadata.gid() == group && metadata.mode() & 0o060 == 0o060 {
        return Ok(());
    }
    let failed = |error: std::io::Error| MachineError::Host {
        message: format!("cannot give {KVM} to group kvm at mode 0660, as udev does: {error}"),
    };
    std::os::unix::fs::chown(KVM, None, Some(group)).map_err(failed)?;
    fs::set_permissions(KVM, fs::Permissions::from_mode(0o660)).map_err(failed)?;
    tracing::info!("gave {KVM} to group kvm at mode 0660, as udev's rules do, so libvirtd keeps its QEMU capabilities");
    Ok(())
}

/// That libvirtd, when `ensure_libvirtd` starts it, starts no forwarding network
/// with it. A running libvirtd has started its networks already, so it passes.
pub fn no_forwarding_network() -> Requirement {
    let forwarding = if daemon_answers(LIBVIRT_SOCKET) { Vec::new() } else { forwarding_autostart_networks() };
    Requirement {
        what: "libvirt starts no forwarding network along with libvirtd (nothing may leave the lab)".into(),
        met: forwarding.is_empty(),
        package: None,
        fix: forwarding_fix(&forwarding),
    }
}

/// Whether a daemon listens on `socket`.
fn daemon_answers(socket: &str) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// The networks libvirt would start along with libvirtd that forward traffic out
/// of the host (Debian's `default` NAT network, once marked for autostart).
fn forwarding_autostart_networks() -> Vec<String> {
    let Ok(entries) = fs::read_dir(AUTOSTART_NETWORKS) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| fs::read_to_string(entry.path()).is_ok_and(|xml| xml.contains("<forward")))
        .filter_map(|entry| entry.path().file_stem().map(|stem| stem.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

fn forwarding_fix(networks: &[String]) -> String {
    let links: Vec<String> = networks.iter().map(|name| format!("{AUTOSTART_NETWORKS}/{name}.xml")).collect();
    format!("stop autostarting them: rm {}", links.join(" "))
}

/// The lab's network: isolated (no `<forward>`: libvirt neither routes nor NATs
/// it), no DHCP, no DNS, the host's gateway address on the lab bridge, and the
/// backend's tag (`metadata`, a `<metadata>` element). The address is written with
/// `netmask`, not `prefix`, because that is what vagrant-libvirt reads when it looks
/// for an existing management network.
pub fn network_xml(name: &str, bridge: &str, gateway: Ipv4Net, metadata: &str) -> String {
    format!(
        "<network>\n  <name>{}</name>\n  {metadata}\n  <bridge name='{}' stp='off' delay='0'/>\n  \
         <dns enable='no'/>\n  <ip address='{}' netmask='{}'/>\n</network>\n",
        xml_escape(name),
        xml_escape(bridge),
        gateway.addr(),
        gateway.netmask()
    )
}

/// Whether a network's XML, as libvirt prints it back, is isolated and holds
/// `gateway`. libvirt prints the address in the form it was given: `netmask`, as
/// `network_xml` writes it, or `prefix`, as the libvirt backend wrote it before.
pub fn isolated_with_gateway(xml: &str, gateway: Ipv4Net) -> bool {
    let with_netmask = format!("<ip address='{}' netmask='{}'", gateway.addr(), gateway.netmask());
    let with_prefix = format!("<ip address='{}' prefix='{}'", gateway.addr(), gateway.prefix_len());
    (xml.contains(&with_netmask) || xml.contains(&with_prefix)) && !xml.contains("<forward")
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// Runs `virsh ARGS` on the system instance and returns what it printed.
pub fn virsh(args: &[&str]) -> Result<String, CommandFailure> {
    system::run_program("virsh", ["-c", URI].iter().chain(args))
}

/// `virsh domstate` output as a machine state: a domain that exists but does not run
/// (shut off, crashed) is stopped; running, paused or shutting down ones are running.
pub fn parse_domain_state(output: &str) -> MachineState {
    match output.trim() {
        "shut off" | "crashed" | "pmsuspended" => MachineState::Stopped,
        "" => MachineState::Missing,
        _ => MachineState::Running,
    }
}

/// The volume names of `virsh vol-list` output (a table: a header, a rule, then
/// `NAME PATH` rows).
pub fn parse_volume_list(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_isolated_with_the_gateway_and_no_dhcp_or_dns() {
        let gateway: Ipv4Net = "10.243.0.1/24".parse().unwrap();
        let xml = network_xml("lab-vmmin-net", "lab-vmmin", gateway, "<metadata/>");
        assert!(!xml.contains("<forward"), "an isolated network has no forward element: {xml}");
        assert!(!xml.contains("<dhcp"), "{xml}");
        assert!(xml.contains("<dns enable='no'/>"), "{xml}");
        assert!(xml.contains("<bridge name='lab-vmmin' stp='off' delay='0'/>"), "{xml}");
        assert!(xml.contains("<ip address='10.243.0.1' netmask='255.255.255.0'/>"), "{xml}");
        assert!(xml.contains("<name>lab-vmmin-net</name>"), "{xml}");
        assert!(xml.contains("<metadata/>"), "{xml}");
        assert!(isolated_with_gateway(&xml, gateway));
        assert!(isolated_with_gateway("<ip address='10.243.0.1' prefix='24'/>", gateway));
        assert!(!isolated_with_gateway(&xml, "10.243.0.1/16".parse().unwrap()));
        assert!(!isolated_with_gateway(&xml.replace("<dns", "<forward mode='nat'/><dns"), gateway));
    }

    #[test]
    fn the_fix_for_a_forwarding_network_names_its_autostart_link() {
        assert_eq!(
            forwarding_fix(&["default".to_string()]),
            "stop autostarting them: rm /etc/libvirt/qemu/networks/autostart/default.xml"
        );
    }

    #[test]
    fn domain_states_follow_virsh() {
        assert_eq!(parse_domain_state("running\n\n"), MachineState::Running);
        assert_eq!(parse_domain_state("in shutdown\n"), MachineState::Running);
        assert_eq!(parse_domain_state("shut off\n\n"), MachineState::Stopped);
        assert_eq!(parse_domain_state(""), MachineState::Missing);
    }

    #[test]
    fn volume_lists_give_the_names() {
        let output = " Name                   Path\n----------------------------------\n \
                      lab-vagmin-master1.img   /srv/lab/vagrant/pool/lab-vagmin-master1.img\n \
                      master1-config.img       /srv/lab/vagrant/pool/master1-config.img\n\n";
        assert_eq!(parse_volume_list(output), ["lab-vagmin-master1.img", "master1-config.img"]);
        assert!(parse_volume_list("").is_empty());
    }
}
