//! The libvirt backend: every node is a QEMU virtual machine run by libvirtd
//! (through the `virt` crate, `qemu:///system`), on an isolated libvirt network of
//! the lab's own. KVM where it really runs guests, QEMU's software emulation (TCG)
//! elsewhere, or as `[machines] acceleration` says.
//!
//! The machines boot the node image that nspawn uses, in its VM form
//! (`vm_image`): the image's kernel and initrd directly, the root filesystem from a
//! qcow2 overlay of the shared base disk in `STATE/machines/NODE/disk.qcow2`, and
//! the node's identity from its config disk `STATE/machines/NODE/config.img`. The
//! serial console is logged to `STATE/machines/NODE/console.log`.
//!
//! Domains and the network are transient: they exist while they run, and `lab
//! down` leaves only the disks, exactly as for nspawn. Every start renders the
//! domain again from the topology, so an edited topology needs no redefinition.
//!
//! Everything the lab makes in libvirt is tagged twice: its name starts with
//! `lab-LAB-` (domains `lab-LAB-NODE`, the network `lab-LAB-net`), and its
//! `<metadata>` names the lab, the node and the state directory in the lab's XML
//! namespace. `destroy` sweeps libvirt for both, removes what this state directory
//! made, and reports (never touches) a same-named object of another one.
//!
//! The network is isolated: no `<forward>` element (so libvirt neither routes nor
//! NATs it), no DHCP, DNS switched off. Its bridge is named like nspawn's
//! (`lab-LAB`) and holds the topology's gateway address; the lab's routes onto it
//! are the same `hostnet` adds for nspawn. Where no service manager runs libvirt
//! (this project's machines), the backend starts `virtlogd` and `libvirtd` itself,
//! but never while libvirt would then start a forwarding network of its own. The
//! network's XML and the daemons' start are the Vagrant backend's too (`libvirt_host`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::network::Network;

use super::hostnet;
use super::libvirt_host::{self, xml_escape, URI};
use super::vm_image::{self, Accelerator, VmImage};
use super::{
    LabSpec, Leftover, MachineError, MachineSize, MachineState, Machines, NodeImage, NodeSpec, Requirement,
    StartOutcome, StopOutcome,
};
use crate::plan::HostRoute;
use crate::system;
use crate::topology::Backend;

/// The XML namespace of the lab's `<metadata>` element in domains and networks.
pub const METADATA_NAMESPACE: &str = "urn:k8s-lab:libvirt:1";

/// How long a VM may take to power off after the ACPI power button. systemd stops
/// each unit within 10 s (the lab's `DefaultTimeoutStopSec`); under software
/// emulation everything takes many times longer than on KVM.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// The files of one node in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePaths {
    dir: PathBuf,
    /// The node's root disk: a qcow2 overlay of the VM image's base.
    disk: PathBuf,
    /// Which VM image (its directory) the disk was made from: the node boots that
    /// image's kernel forever, whose modules are the ones on its disk.
    image: PathBuf,
    console: PathBuf,
}

/// An open connection to libvirtd, closed when dropped.
struct Session(Connect);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

pub struct Libvirt {
    spec: LabSpec,
    /// The accelerator, once decided (probing KVM boots a guest kernel).
    accelerator: Mutex<Option<Accelerator>>,
}

impl Libvirt {
    pub fn new(spec: LabSpec) -> Libvirt {
        // The virt crate's default error handler prints every libvirt error on
        // stderr, including lookups of domains that do not exist yet; the errors
        // are returned anyway and reported with their context.
        virt::error::clear_error_callback();
        Libvirt { spec, accelerator: Mutex::new(None) }
    }

    /// The domain of a node: `lab-LAB-NODE`.
    pub fn domain_name(&self, node: &str) -> String {
        format!("lab-{}-{node}", self.spec.lab)
    }

    /// The lab's libvirt network: `lab-LAB-net`.
    pub fn network_name(&self) -> String {
        format!("lab-{}-net", self.spec.lab)
    }

    /// The prefix of every libvirt object of the lab.
    fn object_prefix(&self) -> String {
        format!("lab-{}-", self.spec.lab)
    }

    fn paths(&self, node: &str) -> NodePaths {
        let dir = self.spec.machines_dir().join(node);
        NodePaths { disk: dir.join("disk.qcow2"), image: dir.join("image"), console: dir.join("console.log"), dir }
    }

    /// `STATE/machines/accelerator`: what `acceleration = "auto"` chose for this
    /// lab, so the KVM probe runs once per lab rather than on every start.
    fn accelerator_record(&self) -> PathBuf {
        self.spec.machines_dir().join("accelerator")
    }

    fn node_error(&self, node: &str, message: impl Into<String>) -> MachineError {
        MachineError::Node { node: node.to_string(), message: message.into() }
    }

    /// The `<metadata>` element of the lab's libvirt objects.
    fn metadata(&self, node: Option<&str>) -> String {
        metadata_xml(&self.spec.lab, node, &self.spec.state_dir)
    }

    /// Whether an object's XML carries this state directory's tag.
    fn owns(&self, xml: &str) -> bool {
        owned_by(xml, &self.spec.lab, &self.spec.state_dir)
    }

    fn connect(&self) -> Result<Session, MachineError> {
        libvirt_host::ensure_libvirtd()?;
        Connect::open(Some(URI))
            .map(Session)
            .map_err(|error| MachineError::Host { message: format!("cannot connect to libvirt at {URI}: {error}") })
    }

    /// The node's domain, if libvirt has one of that name.
    fn lookup_domain(&self, session: &Session, node: &str) -> Result<Option<Domain>, MachineError> {
        match Domain::lookup_by_name(&session.0, &self.domain_name(node)) {
            Ok(domain) => Ok(Some(domain)),
            Err(error) if error.code() == ErrorNumber::NoDomain => Ok(None),
            Err(error) => Err(self.node_error(node, format!("libvirt: {error}"))),
        }
    }

    /// The node's domain when it is this state directory's; an error naming the
    /// other lab's domain otherwise.
    fn own_domain(&self, session: &Session, node: &str) -> Result<Option<Domain>, MachineError> {
        let Some(domain) = self.lookup_domain(session, node)? else { return Ok(None) };
        let xml = domain.get_xml_desc(0).map_err(|error| self.node_error(node, format!("libvirt: {error}")))?;
        if self.owns(&xml) {
            Ok(Some(domain))
        } else {
            Err(self.node_error(
                node,
                format!(
                    "libvirt domain {} belongs to another lab or state directory; destroy that lab first",
                    self.domain_name(node)
                ),
            ))
        }
    }

    /// The accelerator for this lab's VMs, decided once (see `accelerator_record`).
    fn accelerator(&self, vm: &VmImage) -> Result<Accelerator, MachineError> {
        let mut decided = self.accelerator.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(accelerator) = *decided {
            return Ok(accelerator);
        }
        let accelerator = vm_image::decide_acceleration(self.spec.acceleration, vm, &self.accelerator_record())?;
        *decided = Some(accelerator);
        Ok(accelerator)
    }

    /// The VM image the node's disk was made from. A node keeps it: its overlay
    /// only makes sense on that base, and its kernel's modules are on that disk.
    fn node_image(&self, node: &str, paths: &NodePaths, current: &VmImage) -> Result<VmImage, MachineError> {
        let dir = super::disk_image(&paths.image, &current.dir).map_err(|message| self.node_error(node, message))?;
        if dir == current.dir {
            return Ok(current.clone());
        }
        let image = NodeImage {
            key: dir
                .parent()
                .and_then(Path::file_name)
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            root: dir.with_file_name("rootfs"),
            from_cache: true,
        };
        let kept = VmImage::paths(&image);
        if kept.disk.is_file() && kept.kernel.is_file() && kept.initrd.is_file() {
            tracing::info!(node, image = %dir.display(), "node keeps the VM image its disk was made from");
            return Ok(kept);
        }
        Err(self.node_error(
            node,
            format!(
                "its disk was made from the VM image {}, which is no longer in the cache; \
                 `lab destroy` and `lab up` make new machines from the current image",
                dir.display()
            ),
        ))
    }

    /// Makes the lab's isolated network exist and run, with the gateway address.
    /// True when it was created now.
    fn ensure_libvirt_network(&self, session: &Session) -> Result<bool, MachineError> {
        let name = self.network_name();
        let network_error = |message: String| MachineError::Network { message };
        match Network::lookup_by_name(&session.0, &name) {
            Ok(network) => {
                let xml = network.get_xml_desc(0).map_err(|error| network_error(format!("libvirt: {error}")))?;
                if !self.owns(&xml) {
                    return Err(network_error(format!(
                        "libvirt network {name} belongs to another lab or state directory; destroy that lab first"
                    )));
                }
                let active = network.is_active().map_err(|error| network_error(format!("libvirt: {error}")))?;
                if active && libvirt_host::isolated_with_gateway(&xml, self.spec.gateway) {
                    return Ok(false);
                }
                // Stopped, or made for another gateway (the topology changed):
                // replaced by the network the topology describes now.
                tracing::info!(network = %name, "replacing the lab's libvirt network");
                if active {
                    network.destroy().map_err(|error| network_error(format!("cannot stop {name}: {error}")))?;
                }
                if network.is_persistent().unwrap_or(false) {
                    network.undefine().map_err(|error| network_error(format!("cannot undefine {name}: {error}")))?;
                }
            }
            Err(error) if error.code() == ErrorNumber::NoNetwork => {}
            Err(error) => return Err(network_error(format!("libvirt: {error}"))),
        }
        if hostnet::bridge_exists(&self.spec.bridge) {
            // A bridge of that name that libvirt does not know: nspawn's, of a lab
            // of the same name, or this lab's own from before it used libvirt.
            return Err(network_error(format!(
                "bridge {} already exists on the host but is not the libvirt network {name}; \
                 destroy the lab that made it (`lab destroy` with that lab's LAB_DIR and backend)",
                self.spec.bridge
            )));
        }
        let xml = libvirt_host::network_xml(&name, &self.spec.bridge, self.spec.gateway, &self.metadata(None));
        Network::create_xml(&session.0, &xml)
            .map_err(|error| network_error(format!("cannot start the libvirt network {name}: {error}")))?;
        Ok(true)
    }

    /// Kills the node's domain at once, when it is this lab's.
    fn kill_domain(&self, session: &Session, node: &str) -> Result<(), MachineError> {
        if let Some(domain) = self.own_domain(session, node)? {
            remove_domain(&domain).map_err(|message| self.node_error(node, message))?;
        }
        Ok(())
    }

    /// Removes every domain and network with the lab's prefix that this state
    /// directory made; lists the others, and whatever could not be removed.
    fn sweep(&self, session: &Session) -> Vec<Leftover> {
        let prefix = self.object_prefix();
        let mut leftovers = Vec::new();
        match session.0.list_all_domains(0) {
            Ok(domains) => {
                for domain in domains {
                    let Ok(name) = domain.get_name() else { continue };
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    let xml = domain.get_xml_desc(0).unwrap_or_default();
                    if !self.owns(&xml) {
                        leftovers.push(Leftover::new(
                            format!("libvirt domain {name}"),
                            "it belongs to another lab or state directory; left alone",
                        ));
                        continue;
                    }
                    if let Err(message) = remove_domain(&domain) {
                        leftovers.push(Leftover::new(format!("libvirt domain {name}"), message));
                    }
                }
            }
            Err(error) => leftovers.push(Leftover::new("libvirt domains", format!("cannot list them: {error}"))),
        }
        match session.0.list_all_networks(0) {
            Ok(networks) => {
                for network in networks {
                    let Ok(name) = network.get_name() else { continue };
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    let xml = network.get_xml_desc(0).unwrap_or_default();
                    if !self.owns(&xml) {
                        leftovers.push(Leftover::new(
                            format!("libvirt network {name}"),
                            "it belongs to another lab or state directory; left alone",
                        ));
                        continue;
                    }
                    if network.is_active().unwrap_or(false) {
                        if let Err(error) = network.destroy() {
                            leftovers.push(Leftover::new(format!("libvirt network {name}"), error.to_string()));
                            continue;
                        }
                    }
                    if network.is_persistent().unwrap_or(false) {
                        if let Err(error) = network.undefine() {
                            leftovers.push(Leftover::new(format!("libvirt network {name}"), error.to_string()));
                        }
                    }
                }
            }
            Err(error) => leftovers.push(Leftover::new("libvirt networks", format!("cannot list them: {error}"))),
        }
        leftovers
    }
}

/// Stops a domain at once and removes its definition, if it has one.
fn remove_domain(domain: &Domain) -> Result<(), String> {
    if domain.is_active().unwrap_or(false) {
        if let Err(error) = domain.destroy() {
            // It may have shut down between the two calls.
            if domain.is_active().unwrap_or(false) {
                return Err(format!("cannot stop it: {error}"));
            }
        }
    }
    // A transient domain is gone once stopped; one defined by hand is undefined too.
    if domain.is_persistent().unwrap_or(false) {
        domain.undefine().map_err(|error| format!("cannot undefine it: {error}"))?;
    }
    Ok(())
}

impl Machines for Libvirt {
    fn backend(&self) -> Backend {
        Backend::Libvirt
    }

    fn requirements(&self) -> Vec<Requirement> {
        let mut requirements = vec![Requirement::root()];
        requirements.extend(vm_image::host_requirements());
        requirements
    }

    fn ensure_image(&self, progress: &dyn Fn(&str)) -> Result<NodeImage, MachineError> {
        vm_image::ensure_node_image(&self.spec.cache_dir, progress)
    }

    fn ensure_network(&self, routes: &[HostRoute]) -> Result<hostnet::NetworkReport, MachineError> {
        // Before libvirt adds the node subnet's route: a range the host uses
        // elsewhere is refused with nothing changed.
        hostnet::check_ranges_free(&self.spec.bridge, self.spec.gateway, routes)?;
        let session = self.connect()?;
        let created = self.ensure_libvirt_network(&session)?;
        let mut report = self.spec.ensure_host_network(routes)?;
        report.bridge_created = created;
        Ok(report)
    }

    fn create_or_start(
        &self,
        node: &NodeSpec,
        image: &NodeImage,
        authorized_key: &str,
    ) -> Result<StartOutcome, MachineError> {
        let name = &node.name;
        let session = self.connect()?;
        if let Some(domain) = self.own_domain(&session, name)? {
            if domain.is_active().map_err(|error| self.node_error(name, format!("libvirt: {error}")))? {
                return Ok(StartOutcome::AlreadyRunning);
            }
            remove_domain(&domain).map_err(|message| self.node_error(name, message))?;
        }
        // Only root may look inside: QEMU runs as root for that reason (`domain_xml`).
        self.spec.create_machines_dir().map_err(|message| self.node_error(name, message))?;
        let paths = self.paths(name);
        fs::create_dir_all(&paths.dir)
            .map_err(|error| self.node_error(name, format!("cannot create {}: {error}", paths.dir.display())))?;

        let current = vm_image::ensure(image, &|_| {})?;
        let vm = self.node_image(name, &paths, &current)?;
        let created =
            vm_image::create_overlay(&vm.disk, &paths.disk).map_err(|message| self.node_error(name, message))?;
        let config = vm_image::write_config_disk(&paths.dir, node, self.spec.gateway.prefix_len(), authorized_key)
            .map_err(|message| self.node_error(name, format!("config disk: {message}")))?;
        let accelerator = self.accelerator(&vm)?;
        let xml = domain_xml(&DomainConfig {
            name: &self.domain_name(name),
            metadata: &self.metadata(Some(name)),
            accelerator,
            size: node.size,
            kernel: &vm.kernel,
            initrd: &vm.initrd,
            command_line: vm_image::KERNEL_COMMAND_LINE,
            disk: &paths.disk,
            config_disk: &config,
            console: &paths.console,
            network: &self.network_name(),
            mac: &vm_image::mac_address(&self.spec.lab, name),
        });
        Domain::create_xml(&session.0, &xml, 0).map_err(|error| {
            self.node_error(name, format!("libvirt cannot start {}: {error}", self.domain_name(name)))
        })?;
        Ok(StartOutcome::Started { created })
    }

    fn stop(&self, node: &str) -> Result<StopOutcome, MachineError> {
        let session = self.connect()?;
        let Some(domain) = self.own_domain(&session, node)? else {
            return Ok(StopOutcome::NotRunning);
        };
        if !domain.is_active().unwrap_or(false) {
            return Ok(StopOutcome::NotRunning);
        }
        // The ACPI power button: the node's systemd powers off cleanly.
        if let Err(error) = domain.shutdown() {
            if domain.is_active().unwrap_or(false) {
                return Err(self.node_error(node, format!("libvirt cannot shut it down: {error}")));
            }
            return Ok(StopOutcome::Stopped);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            // A transient domain disappears when it has stopped.
            match self.lookup_domain(&session, node)? {
                Some(domain) if domain.is_active().unwrap_or(false) => std::thread::sleep(Duration::from_millis(500)),
                _ => return Ok(StopOutcome::Stopped),
            }
        }
        tracing::warn!(node, "the VM did not power off in time; killing it");
        self.kill_domain(&session, node)?;
        Ok(StopOutcome::Killed)
    }

    fn status(&self, node: &str) -> Result<MachineState, MachineError> {
        let session = self.connect()?;
        if let Some(domain) = self.own_domain(&session, node)? {
            if domain.is_active().unwrap_or(false) {
                return Ok(MachineState::Running);
            }
        }
        Ok(if self.paths(node).disk.is_file() { MachineState::Stopped } else { MachineState::Missing })
    }

    fn known_nodes(&self) -> Vec<String> {
        self.spec.known_nodes(self.spec.nodes_on_disk())
    }

    fn console_log(&self, node: &str) -> Option<PathBuf> {
        Some(self.paths(node).console).filter(|path| path.exists())
    }

    fn time_scale(&self) -> u32 {
        vm_image::time_scale(self.spec.acceleration, &self.accelerator_record())
    }

    fn hung_boot_after(&self) -> Option<Duration> {
        Some(vm_image::hung_boot_after(self.time_scale()))
    }

    fn reset(&self, node: &str) -> Result<(), MachineError> {
        let session = self.connect()?;
        let domain = self.own_domain(&session, node)?.ok_or_else(|| self.node_error(node, "no domain to reset"))?;
        domain.reset().map(drop).map_err(|error| self.node_error(node, format!("cannot reset its domain: {error}")))
    }

    fn destroy(&self) -> Vec<Leftover> {
        let mut leftovers = match self.connect() {
            Ok(session) => {
                let mut leftovers = self.sweep(&session);
                // What the sweep could not remove, it listed; check that nothing of
                // this lab survived it unlisted.
                if leftovers.is_empty() {
                    for survivor in self.sweep_survivors(&session) {
                        leftovers.push(Leftover::new(survivor, "still present after `lab destroy`"));
                    }
                }
                leftovers
            }
            Err(error) => vec![Leftover::new("libvirt domains and network of the lab", error.to_string())],
        };
        leftovers.extend(hostnet::teardown(&self.spec.bridge, &hostnet::owner_tag(&self.spec.state_dir)));
        let machines = self.spec.machines_dir();
        if let Err(message) = system::remove_tree(&machines) {
            leftovers.push(Leftover::new(format!("directory {}", machines.display()), message));
        }
        leftovers
    }
}

impl Libvirt {
    /// The lab's domains and networks libvirt still has, by name.
    fn sweep_survivors(&self, session: &Session) -> Vec<String> {
        let prefix = self.object_prefix();
        let domains = session.0.list_all_domains(0).unwrap_or_default();
        let networks = session.0.list_all_networks(0).unwrap_or_default();
        let mut survivors: Vec<String> = domains
            .iter()
            .filter_map(|domain| domain.get_name().ok())
            .filter(|name| name.starts_with(&prefix))
            .map(|name| format!("libvirt domain {name}"))
            .collect();
        survivors.extend(
            networks
                .iter()
                .filter_map(|network| network.get_name().ok())
                .filter(|name| name.starts_with(&prefix))
                .map(|name| format!("libvirt network {name}")),
        );
        survivors
    }
}

/// The lab's `<metadata>` element: lab, node (domains only) and state directory.
pub fn metadata_xml(lab: &str, node: Option<&str>, state_dir: &Path) -> String {
    let node = node.map(|node| format!("<lab:node>{}</lab:node>", xml_escape(node))).unwrap_or_default();
    format!(
        "<metadata><lab:machine xmlns:lab=\"{METADATA_NAMESPACE}\"><lab:lab>{}</lab:lab>{node}\
         <lab:state-dir>{}</lab:state-dir></lab:machine></metadata>",
        xml_escape(lab),
        xml_escape(&state_dir.to_string_lossy())
    )
}

/// Whether an object's XML, as libvirt returns it, carries the tag of `lab` in
/// `state_dir`.
pub fn owned_by(xml: &str, lab: &str, state_dir: &Path) -> bool {
    xml.contains(METADATA_NAMESPACE)
        && xml.contains(&format!("<lab:lab>{}</lab:lab>", xml_escape(lab)))
        && xml.contains(&format!("<lab:state-dir>{}</lab:state-dir>", xml_escape(&state_dir.to_string_lossy())))
}

/// Everything a lab domain is made of.
#[derive(Debug, Clone, Copy)]
pub struct DomainConfig<'a> {
    pub name: &'a str,
    pub metadata: &'a str,
    pub accelerator: Accelerator,
    pub size: MachineSize,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub command_line: &'a str,
    pub disk: &'a Path,
    pub config_disk: &'a Path,
    pub console: &'a Path,
    pub network: &'a str,
    pub mac: &'a str,
}

/// The domain XML of a lab node.
///
/// - Under KVM the guest sees the host's CPU; under TCG a named model, qemu64
///   (`host` does not exist without KVM).
/// - QEMU runs as root without relabelling: the disks live in the lab's state
///   directory, which only root may enter, and the base disk in root's cache;
///   libvirt's usual `libvirt-qemu` user could open neither.
/// - A virtio RNG feeds the guest's entropy pool from the host's: sshd and the
///   TLS of every component want randomness early, and a VM has few other sources.
/// - No memory balloon, no graphics, no USB: nothing the lab uses.
pub fn domain_xml(config: &DomainConfig) -> String {
    let path = |path: &Path| xml_escape(&path.to_string_lossy());
    let cpu = match config.accelerator {
        Accelerator::Kvm => "<cpu mode='host-passthrough'/>".to_string(),
        Accelerator::Tcg => {
            "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>".to_string()
        }
    };
    format!(
        r#"<domain type='{domain_type}'>
  <name>{name}</name>
  {metadata}
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{command_line}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{config_disk}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='{network}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}' append='off'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        domain_type = config.accelerator.domain_type(),
        name = xml_escape(config.name),
        metadata = config.metadata,
        memory = config.size.memory_mib,
        cpus = config.size.cpus,
        kernel = path(config.kernel),
        initrd = path(config.initrd),
        command_line = xml_escape(config.command_line),
        disk = path(config.disk),
        config_disk = path(config.config_disk),
        mac = xml_escape(config.mac),
        network = xml_escape(config.network),
        console = path(config.console),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Libvirt {
        Libvirt::new(LabSpec {
            lab: "vmmin".into(),
            state_dir: PathBuf::from("/srv/lab & co"),
            cache_dir: PathBuf::from("/cache"),
            bridge: "lab-vmmin".into(),
            gateway: "10.243.0.1/24".parse().unwrap(),
            acceleration: crate::topology::Acceleration::Auto,
            vagrant_box: None,
            nodes: vec![NodeSpec::new("master1", std::net::Ipv4Addr::new(10, 243, 0, 11))],
        })
    }

    fn config<'a>(accelerator: Accelerator, metadata: &'a str) -> DomainConfig<'a> {
        DomainConfig {
            name: "lab-vmmin-master1",
            metadata,
            accelerator,
            size: MachineSize::CONTROLLER,
            kernel: Path::new("/cache/images/node-1/vm/vmlinuz"),
            initrd: Path::new("/cache/images/node-1/vm/initrd.img"),
            command_line: vm_image::KERNEL_COMMAND_LINE,
            disk: Path::new("/srv/lab/machines/master1/disk.qcow2"),
            config_disk: Path::new("/srv/lab/machines/master1/config.img"),
            console: Path::new("/srv/lab/machines/master1/console.log"),
            network: "lab-vmmin-net",
            mac: "52:54:00:12:34:56",
        }
    }

    #[test]
    fn every_libvirt_object_is_named_with_the_lab_prefix() {
        let libvirt = backend();
        assert_eq!(libvirt.domain_name("master1"), "lab-vmmin-master1");
        assert_eq!(libvirt.network_name(), "lab-vmmin-net");
        assert!(libvirt.domain_name("worker1").starts_with(&libvirt.object_prefix()));
        assert!(libvirt.network_name().starts_with(&libvirt.object_prefix()));
        let paths = libvirt.paths("master1");
        assert_eq!(paths.disk, Path::new("/srv/lab & co/machines/master1/disk.qcow2"));
        assert_eq!(paths.console, Path::new("/srv/lab & co/machines/master1/console.log"));
    }

    #[test]
    fn metadata_tags_lab_and_state_directory_and_only_those_own_the_object() {
        let libvirt = backend();
        let metadata = libvirt.metadata(Some("master1"));
        assert!(metadata.contains("xmlns:lab=\"urn:k8s-lab:libvirt:1\""), "{metadata}");
        assert!(metadata.contains("<lab:state-dir>/srv/lab &amp; co</lab:state-dir>"), "{metadata}");
        assert!(metadata.contains("<lab:node>master1</lab:node>"), "{metadata}");
        assert!(libvirt.owns(&domain_xml(&config(Accelerator::Tcg, &metadata))));
        let other_dir = metadata_xml("vmmin", Some("master1"), Path::new("/srv/other"));
        assert!(!libvirt.owns(&domain_xml(&config(Accelerator::Tcg, &other_dir))));
        let other_lab = metadata_xml("vmmax", Some("master1"), Path::new("/srv/lab & co"));
        assert!(!libvirt.owns(&other_lab));
        assert!(!libvirt.owns("<domain><name>lab-vmmin-master1</name></domain>"), "a name alone is no tag");
    }

    #[test]
    fn a_tcg_domain_boots_the_image_kernel_with_qemu64_on_the_lab_network() {
        let xml = domain_xml(&config(Accelerator::Tcg, "<metadata/>"));
        for expected in [
            "<domain type='qemu'>",
            "<name>lab-vmmin-master1</name>",
            "<memory unit='MiB'>3072</memory>",
            "<vcpu>2</vcpu>",
            "<kernel>/cache/images/node-1/vm/vmlinuz</kernel>",
            "<initrd>/cache/images/node-1/vm/initrd.img</initrd>",
            "<cmdline>root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=0",
            "<model fallback='forbid'>qemu64</model>",
            "<source file='/srv/lab/machines/master1/disk.qcow2'/>",
            "<target dev='vda' bus='virtio'/>",
            "<source file='/srv/lab/machines/master1/config.img'/>",
            "<target dev='vdb' bus='virtio'/>",
            "<readonly/>",
            "<mac address='52:54:00:12:34:56'/>",
            "<source network='lab-vmmin-net'/>",
            "<model type='virtio'/>",
            "<source path='/srv/lab/machines/master1/console.log' append='off'/>",
            "<label>+0:+0</label>",
        ] {
            assert!(xml.contains(expected), "{expected} missing from\n{xml}");
        }
        assert!(!xml.contains("host-passthrough"), "{xml}");
        assert!(!xml.contains("<graphics"), "{xml}");
    }

    #[test]
    fn a_kvm_domain_passes_the_host_cpu_through() {
        let xml = domain_xml(&config(Accelerator::Kvm, "<metadata/>"));
        assert!(xml.contains("<domain type='kvm'>"), "{xml}");
        assert!(xml.contains("<cpu mode='host-passthrough'/>"), "{xml}");
        assert!(!xml.contains("qemu64"), "{xml}");
    }

    #[test]
    fn paths_in_the_domain_are_escaped() {
        let mut odd = config(Accelerator::Tcg, "<metadata/>");
        odd.disk = Path::new("/srv/a'b&c/disk.qcow2");
        let xml = domain_xml(&odd);
        assert!(xml.contains("<source file='/srv/a&apos;b&amp;c/disk.qcow2'/>"), "{xml}");
    }
}
