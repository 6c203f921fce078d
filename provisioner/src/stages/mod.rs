//! One module per handbook chapter, in the order `lab up` runs them. Each module's
//! `plan` reads the shared `Context` and fills in that chapter's files, units,
//! commands and readiness checks per node. Pure: no module here does I/O.
//!
//! `REGISTRY` is the one list of chapters: their order, command-line names, handbook
//! sections and plan functions all come from it. Adding a chapter takes a module here,
//! a variant in `plan::Stage` and a row in `REGISTRY`, at the same position.

use crate::paths;
use crate::plan::{CheckSpec, Context, FileSpec, NodeActions, Stage, StagePlan, UnitSpec};

pub mod admin_kubeconfig;
pub mod container_runtime;
pub mod dns_addon;
pub mod etcd;
pub mod firewall;
pub mod hosts;
pub mod keepalived;
pub mod kube_apiserver;
pub mod kube_controller_manager;
pub mod kube_proxy;
pub mod kube_scheduler;
pub mod kubelet;
pub mod kubelet_certificates;
pub mod load_balancer;
pub mod pki;
pub mod pod_network;
#[cfg(test)]
pub(crate) mod test_support;

/// One handbook chapter as `lab up` knows it.
pub struct StageEntry {
    pub stage: Stage,
    /// The kebab-case name used on the command line (`--until kube-apiserver`); the
    /// same as the stage's serde name.
    pub name: &'static str,
    /// Which handbook section the stage follows, shown by `lab plan`.
    pub handbook_section: &'static str,
    /// Fills in the stage's plan, which starts out empty.
    pub plan: fn(&Context<'_>, &mut StagePlan),
    /// The stage module's source, whose `//!` comment `lab explain` shows: the
    /// explanation is the module's own documentation.
    pub source: &'static str,
    /// The earlier stages whose work this one builds on. `lab up` starts a stage once
    /// these have passed (their own needs with them), so that chapters that do not
    /// depend on each other run at once: the workers' container runtime while the
    /// control plane starts, the controller manager, scheduler and HAProxy together.
    /// A stage that writes an input of a later stage's unit must be among its needs
    /// (`tests::a_stage_needs_every_stage_that_writes_its_units_inputs`).
    pub needs: &'static [Stage],
}

/// Every stage, in handbook order, which is the order `lab up` runs them and the order
/// of `Stage`'s variants.
pub static REGISTRY: [StageEntry; 15] = [
    StageEntry {
        stage: Stage::Hosts,
        name: "hosts",
        handbook_section: "Handbook 000 sections 1 and 2: env.sh and /etc/hosts",
        plan: hosts::plan,
        source: include_str!("hosts.rs"),
        needs: &[],
    },
    StageEntry {
        stage: Stage::Pki,
        name: "pki",
        handbook_section: "Handbook 000 section 3: certificates (CFSSL in the handbook, rcgen here)",
        plan: pki::plan,
        source: include_str!("pki.rs"),
        needs: &[Stage::Hosts],
    },
    StageEntry {
        stage: Stage::Etcd,
        name: "etcd",
        handbook_section: "Handbook 000 section 4: static etcd cluster with mutual TLS",
        plan: etcd::plan,
        source: include_str!("etcd.rs"),
        needs: &[Stage::Pki],
    },
    StageEntry {
        stage: Stage::AdminKubeconfig,
        name: "admin-kubeconfig",
        handbook_section: "Handbook 000 section 5: kubectl and the admin kubeconfig",
        plan: admin_kubeconfig::plan,
        source: include_str!("admin_kubeconfig.rs"),
        needs: &[Stage::Pki],
    },
    StageEntry {
        stage: Stage::PodNetwork,
        name: "pod-network",
        handbook_section: "Handbook 000 section 6: pod network (flannel in the handbook)",
        plan: pod_network::plan,
        source: include_str!("pod_network.rs"),
        needs: &[Stage::Hosts],
    },
    StageEntry {
        stage: Stage::KubeApiserver,
        name: "kube-apiserver",
        handbook_section: "Handbook 000 section 7.1 and 8.3: kube-apiserver on every master",
        plan: kube_apiserver::plan,
        source: include_str!("kube_apiserver.rs"),
        // Its checks ask the API with the admin kubeconfig; the pod routes are there
        // before anything reaches a pod through it (logs, exec, webhooks).
        needs: &[Stage::Etcd, Stage::AdminKubeconfig, Stage::PodNetwork],
    },
    StageEntry {
        stage: Stage::KubeControllerManager,
        name: "kube-controller-manager",
        handbook_section: "Handbook 000 section 7.2 and 8.4: kube-controller-manager with leader election",
        plan: kube_controller_manager::plan,
        source: include_str!("kube_controller_manager.rs"),
        // It talks to its own master's apiserver over loopback, not the virtual IP.
        needs: &[Stage::KubeApiserver],
    },
    StageEntry {
        stage: Stage::KubeScheduler,
        name: "kube-scheduler",
        handbook_section: "Handbook 000 section 7.3 and 8.4: kube-scheduler with leader election",
        plan: kube_scheduler::plan,
        source: include_str!("kube_scheduler.rs"),
        // It talks to its own master's apiserver over loopback, not the virtual IP.
        needs: &[Stage::KubeApiserver],
    },
    StageEntry {
        stage: Stage::LoadBalancer,
        name: "load-balancer",
        handbook_section: "Handbook 000 section 8.1.1: HAProxy on every master",
        plan: load_balancer::plan,
        source: include_str!("load_balancer.rs"),
        needs: &[Stage::KubeApiserver],
    },
    StageEntry {
        stage: Stage::Keepalived,
        name: "keepalived",
        handbook_section: "Handbook 000 section 8.2: keepalived and the virtual IP",
        plan: keepalived::plan,
        source: include_str!("keepalived.rs"),
        // Its health check asks HAProxy, and its own check the API on the virtual IP.
        needs: &[Stage::LoadBalancer],
    },
    StageEntry {
        stage: Stage::ContainerRuntime,
        name: "container-runtime",
        handbook_section: "Handbook 000 section 9: container runtime (docker in the handbook, containerd here)",
        plan: container_runtime::plan,
        source: include_str!("container_runtime.rs"),
        // Only the workers' own files and the pod network's CNI configuration: the
        // runtime is set up while the control plane starts.
        needs: &[Stage::PodNetwork],
    },
    StageEntry {
        stage: Stage::Kubelet,
        name: "kubelet",
        handbook_section: "Handbook 000 section 9.1: kubelet on every worker",
        plan: kubelet::plan,
        source: include_str!("kubelet.rs"),
        // It registers through the virtual IP, and its pods need the controllers.
        needs: &[Stage::ContainerRuntime, Stage::Keepalived, Stage::KubeControllerManager, Stage::KubeScheduler],
    },
    StageEntry {
        stage: Stage::KubeProxy,
        name: "kube-proxy",
        handbook_section: "Handbook 000 section 9: kube-proxy on every worker (and master)",
        plan: kube_proxy::plan,
        source: include_str!("kube_proxy.rs"),
        // On a worker it takes its node's address from the Node object the kubelet
        // registers, and is not healthy before (started beside the kubelet, it took
        // 9.9 s instead of 2.1 s after it: nothing gained).
        needs: &[Stage::Kubelet],
    },
    StageEntry {
        stage: Stage::DnsAddon,
        name: "dns-addon",
        handbook_section: "Handbook 000 section 10: cluster DNS addon (kube-dns)",
        plan: dns_addon::plan,
        source: include_str!("dns_addon.rs"),
        // Its pods reach the API through the kubernetes Service, which kube-proxy makes.
        needs: &[Stage::KubeProxy],
    },
    StageEntry {
        stage: Stage::Firewall,
        name: "firewall",
        handbook_section: "Handbook 000 section 10.1: enable the firewall (firewalld)",
        plan: firewall::plan,
        source: include_str!("firewall.rs"),
        // The firewall is switched on at the end, over a cluster that works.
        needs: &[Stage::DnsAddon],
    },
];

// `Stage::name` and friends find a stage's row by its position, so a row out of place
// must not build. (That every variant has a row is checked by `tests::registry_*`: a
// constant cannot list an enum's variants.)
const _: () = {
    let mut index = 0;
    while index < REGISTRY.len() {
        assert!(REGISTRY[index].stage as usize == index, "REGISTRY rows must follow the order of Stage's variants");
        index += 1;
    }
};

/// The registry's row for `stage`.
pub fn entry(stage: Stage) -> &'static StageEntry {
    &REGISTRY[stage as usize]
}

/// One stage's plan.
pub fn plan_stage(stage: Stage, context: &Context<'_>) -> StagePlan {
    let entry = entry(stage);
    let mut plan = StagePlan::new(stage, entry.handbook_section);
    (entry.plan)(context, &mut plan);
    plan
}

/// Every stage's plan, in handbook order.
pub fn plan_all(context: &Context<'_>) -> Vec<StagePlan> {
    REGISTRY.iter().map(|entry| plan_stage(entry.stage, context)).collect()
}

/// The leader election timing of the controller manager and the scheduler, in
/// seconds: how long a leader's lease lasts, how long the leader keeps trying to renew
/// it, and how often the others try to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderElection {
    pub lease_duration: u32,
    pub renew_deadline: u32,
    pub retry_period: u32,
}

impl LeaderElection {
    /// Where the machines run at the host's speed, Kubernetes' lease duration and renew
    /// deadline (15 s, 10 s) with a retry period of 1 s instead of 2 s. A standby trusts
    /// only its own clock: it counts the lease duration from when it last *read* a
    /// renewal, and it reads every retry period plus up to 120% jitter (client-go). With
    /// 2 s, a standby took over 15 to 24 s after its leader died, around the 20 s the lab
    /// promises (the control-plane-leaders-killed drill); with 1 s, 15 to 20 s at worst
    /// and 16 to 17 s as a rule, for one more API request a second per standby.
    ///
    /// Where the machines may run under software emulation: 120 s, 90 s and 10 s. A
    /// renewal is one API request, a loaded apiserver in a TCG guest can take longer
    /// than 10 s to answer it, and a leader that misses its deadline exits: the
    /// controller manager would restart again and again, loading the apiserver further,
    /// and never get its work done. A 40 s deadline was not enough: a TCG controller
    /// under the lab's own readiness checks stalled its apiserver for over 40 s, and
    /// both leaders exited at once.
    pub fn for_topology(topology: &crate::topology::Topology) -> LeaderElection {
        if topology.machines.may_be_emulated() {
            LeaderElection { lease_duration: 120, renew_deadline: 90, retry_period: 10 }
        } else {
            LeaderElection { lease_duration: 15, renew_deadline: 10, retry_period: 1 }
        }
    }

    /// The command-line flags that elect a leader with this timing.
    pub fn flags(self) -> Vec<String> {
        vec![
            "--leader-elect=true".to_string(),
            format!("--leader-elect-lease-duration={}s", self.lease_duration),
            format!("--leader-elect-renew-deadline={}s", self.renew_deadline),
            format!("--leader-elect-retry-period={}s", self.retry_period),
        ]
    }
}

/// The TLS cipher suites the lab's servers accept (CIS 1.2.34 and 4.2.13): ECDHE key
/// exchange for forward secrecy and AEAD ciphers only, as CIS lists them, in Go's names,
/// which the apiservers, kubelets and etcd all take. Every lab certificate has an ECDSA
/// key; the RSA suites are there for certificates a user brings. A TLS 1.0 or 1.1
/// client finds no suite here it can use, and TLS 1.3's suites are not configurable in
/// Go and all strong.
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// The oldest TLS version the lab's Kubernetes servers speak, in their flags' terms
/// (etcd 3.4 has no such flag: its cipher suites alone keep TLS 1.0 and 1.1 out).
pub const TLS_MIN_VERSION: &str = "VersionTLS12";

/// What differs between the lab's daemon units; everything else is shared.
pub struct ServiceUnit<'a> {
    pub description: &'a str,
    pub documentation: &'a str,
    /// `Type=notify` for daemons that tell systemd when they are ready.
    pub notify: bool,
    /// Absolute path of the binary.
    pub command: &'a str,
    /// `--flag=value` arguments, one per line in the unit for readability.
    pub flags: &'a [String],
    /// How long systemd lets the daemon shut down after SIGTERM before it kills it,
    /// where the node's default (10 s) does not suit it.
    pub stop_timeout: Option<StopTimeout<'a>>,
    /// The user the daemon runs as, where not root.
    pub run_as: Option<RunAs<'a>>,
    /// `Environment=` lines with their comments, or nothing.
    pub environment: &'a str,
}

/// A daemon that runs as a user of its own (`User=`, `Group=`) and reads root-only
/// files through systemd's credentials (`LoadCredential=`): at each start systemd
/// copies each file to `/run/credentials/UNIT/NAME`, readable by that user only, so
/// the files on disk stay root's alone.
pub struct RunAs<'a> {
    pub user: &'a str,
    /// (credential name, root-only file it is loaded from).
    pub credentials: &'a [(&'a str, String)],
}

/// Where a unit's process finds the credential `name` that `LoadCredential=` loaded.
pub fn credential_path(unit: &str, name: &str) -> String {
    format!("/run/credentials/{unit}/{name}")
}

/// A daemon's own stop timeout and why it has one, which the unit says in a comment.
#[derive(Clone, Copy)]
pub struct StopTimeout<'a> {
    pub seconds: u32,
    pub why: &'a str,
}

/// A systemd service for one of the lab's long-running daemons (etcd and the control
/// plane components): started once the network is up, restarted five seconds after a
/// crash, and enabled at boot, so that a node restart or `lab down` + `lab up` brings
/// the component back on its own.
pub fn service_unit(unit: &ServiceUnit<'_>) -> String {
    let mut exec_start = unit.command.to_string();
    for flag in unit.flags {
        exec_start.push_str(" \\\n  ");
        exec_start.push_str(flag);
    }
    let service_type = if unit.notify { "notify" } else { "simple" };
    let run_as = unit.run_as.as_ref().map_or(String::new(), |run_as| {
        let mut settings = format!("User={user}\nGroup={user}\n", user = run_as.user);
        for (name, file) in run_as.credentials {
            settings.push_str(&format!("LoadCredential={name}:{file}\n"));
        }
        settings
    });
    let stop_timeout = unit.stop_timeout.as_ref().map_or(String::new(), |stop| {
        let why: String = stop.why.lines().map(|line| format!("# {}\n", line.trim())).collect();
        format!("{why}TimeoutStopSec={}s\n", stop.seconds)
    });
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
[Unit]
Description={description}
Documentation={documentation}
Wants=network-online.target
After=network-online.target

[Service]
Type={service_type}
{run_as}{environment}ExecStart={exec_start}
Restart=on-failure
RestartSec=5
{stop_timeout}# Every client watch is an open connection.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
        description = unit.description,
        documentation = unit.documentation,
        environment = unit.environment,
    )
}

/// What differs between the units of the Kubernetes daemons that share the lab's
/// daemon unit (all but the kubelet, whose unit orders it after the container
/// runtime).
#[derive(Default)]
pub struct KubernetesUnit<'a> {
    /// The binary's name, as `kube-scheduler`: it names the command-line reference too.
    pub component: &'a str,
    pub description: &'a str,
    pub flags: &'a [String],
    pub stop_timeout: Option<StopTimeout<'a>>,
    /// `Environment=` lines with their comments, or nothing.
    pub environment: &'a str,
}

/// The unit of one of the Kubernetes daemons from the lab's binaries, documented by its
/// command-line reference for the lab's Kubernetes version.
pub fn kubernetes_unit(unit: &KubernetesUnit<'_>) -> String {
    service_unit(&ServiceUnit {
        description: unit.description,
        documentation: &format!(
            "https://v1-20.docs.kubernetes.io/docs/reference/command-line-tools-reference/{}/",
            unit.component
        ),
        notify: false,
        command: &paths::kubernetes_binary(unit.component),
        flags: unit.flags,
        stop_timeout: unit.stop_timeout,
        run_as: None,
        environment: unit.environment,
    })
}

/// Installs the unit `name` of the Kubernetes daemon `component` (its `content`, from
/// `kubernetes_unit` or the kubelet's own) the way `install_unit` does, restarted also
/// when the lab installs a new build of the component's binary: a unit that did not
/// would keep running the old build after `lab up` copied the new one.
pub fn install_kubernetes_unit(
    actions: &mut NodeActions,
    name: &str,
    component: &str,
    content: String,
    inputs: &[&str],
) {
    let binary = paths::kubernetes_binary(component);
    let mut inputs_with_binary = vec![binary.as_str()];
    inputs_with_binary.extend_from_slice(inputs);
    install_unit(actions, name, content, &inputs_with_binary);
}

/// Puts the systemd unit `name` on the node and asks for it enabled and running,
/// restarted whenever its unit file or one of `inputs` (the binary it runs where the
/// lab installs it, certificates, configuration files, kubeconfigs it reads) changes.
pub fn install_unit(actions: &mut NodeActions, name: &str, content: String, inputs: &[&str]) {
    let unit_path = paths::unit(name);
    let mut restart_when_changed = vec![unit_path.clone()];
    restart_when_changed.extend(inputs.iter().map(|input| input.to_string()));
    actions.files.push(FileSpec::text(unit_path, 0o644, content));
    actions.units.push(UnitSpec { name: name.to_string(), restart_when_changed, ..UnitSpec::default() });
}

/// The readiness check of a control plane component that elects a leader (the
/// controller manager and the scheduler) on one master: its HTTPS port answers
/// /healthz. /healthz is exempt from authorization by default and anonymous requests
/// are authenticated as system:anonymous, so no credentials are needed. The serving
/// certificate is self-signed at startup, hence `--insecure` on loopback.
pub fn loopback_health_check(component: &str, node: &str, secure_port: u16, timeout_secs: u64) -> CheckSpec {
    CheckSpec {
        description: format!("{component} on {node} answers /healthz"),
        script: format!(
            "curl --silent --show-error --fail --max-time 5 --insecure https://127.0.0.1:{secure_port}/healthz"
        ),
        timeout_secs,
    }
}

/// The readiness check that a component electing a leader has one: its lease
/// (`kube-system/COMPONENT`) names a holder and was renewed within the lease duration,
/// asked on `node` with the component's own kubeconfig (`kubeconfig`: its RBAC role may
/// read its lease, and it reaches the local apiserver; the admin's goes through the
/// load balancer, which `--step` has not built yet). A component answering /healthz on
/// every master is not enough:
/// after a full restart the lease still names a holder from before, and the new
/// processes wait a whole lease duration before one of them takes it over; until then
/// no controller runs (a new Service gets no endpoints) and nothing is scheduled.
pub fn leader_check(
    component: &str,
    node: &str,
    kubeconfig: &str,
    election: LeaderElection,
    timeout_secs: u64,
) -> CheckSpec {
    let duration = election.lease_duration;
    CheckSpec {
        description: format!("a {component} holds its leader lease (asked on {node})"),
        script: format!(
            "lease=$({bin}/kubectl --kubeconfig {kubeconfig} --request-timeout=5s --namespace kube-system get lease {component} \
             --output jsonpath='{{.spec.holderIdentity}} {{.spec.renewTime}}') || exit 1; \
             set -- $lease; \
             if [ $# -eq 2 ] && [ $(( $(date +%s) - $(date --date \"$2\" +%s) )) -le {duration} ]; then exit 0; fi; \
             echo \"the {component} lease names ${{1:-no holder}}, renewed ${{2:-never}}: \
             none renewed it within its {duration} s\"; exit 1",
            bin = paths::BIN_DIR,
        ),
        // Enough for a lease left from before a restart to run out and be taken.
        timeout_secs: timeout_secs + 2 * u64::from(duration),
    }
}

/// The components that elect a leader through a lease of their own name in
/// kube-system, with their units.
pub const LEADER_ELECTED: [(&str, &str); 2] =
    [("kube-controller-manager", kube_controller_manager::UNIT), ("kube-scheduler", kube_scheduler::UNIT)];

/// Stops the leader-elected components on the node it runs on, before its machine
/// powers off: once they are stopped, none of them renews a lease again, and the leases
/// they held can be cleared (`release_leases`).
/// A lab stopped before the control plane's stages has no such units to stop.
pub fn stop_leader_elected() -> String {
    let units: Vec<&str> = LEADER_ELECTED.iter().map(|(_, unit)| *unit).collect();
    format!(
        "set -e; for unit in {}; do if systemctl cat \"$unit\" >/dev/null 2>&1; then systemctl stop \"$unit\"; fi; done",
        units.join(" ")
    )
}

/// Clears the holder of each leader lease that one of `masters` holds (their
/// components stopped first, `stop_leader_elected`), through the admin kubeconfig;
/// prints the leases it cleared. A 1.20 component does not release its lease when it
/// stops, and a standby (or the same master's component after a boot) takes a lease
/// that names a holder only after watching it unrenewed for a whole lease duration; one
/// with no holder it takes at its next try. A holder is `NODE_` and a random suffix;
/// the patch removes it only if it is still the one read. A lab whose control plane
/// was never built has no admin kubeconfig and no lease: nothing to clear.
pub fn release_leases(masters: &[&str]) -> String {
    let holders: Vec<String> = masters.iter().map(|master| format!("{master}_*")).collect();
    let mut script = format!(
        "set -e; [ -f {admin} ] || exit 0; \
         kubectl='{kubectl} --request-timeout=5s --namespace kube-system'; released=; ",
        admin = paths::ADMIN_KUBECONFIG,
        kubectl = paths::admin_kubectl()
    );
    for (lease, _) in LEADER_ELECTED {
        script.push_str(&format!(
            "holder=$($kubectl get lease {lease} --ignore-not-found --output jsonpath='{{.spec.holderIdentity}}'); \
             case \"$holder\" in {holders}) \
             $kubectl patch lease {lease} --type json --patch \
             '[{{\"op\":\"test\",\"path\":\"/spec/holderIdentity\",\"value\":\"'\"$holder\"'\"}},\
             {{\"op\":\"remove\",\"path\":\"/spec/holderIdentity\"}}]' >/dev/null; \
             released=\"$released {lease}\";; esac; ",
            holders = holders.join("|")
        ));
    }
    script.push_str("echo $released");
    script
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::path::Path;

    use serde::de::{self, Deserialize, Deserializer, Visitor};

    use super::*;

    /// `Stage`'s variants in declaration order, under their serde names: serde's derive
    /// hands exactly that list to `deserialize_enum`, where this deserializer keeps it.
    fn stage_variant_names() -> &'static [&'static str] {
        struct VariantRecorder<'a>(&'a mut &'static [&'static str]);

        /// The only outcome of deserializing from a `VariantRecorder`.
        #[derive(Debug)]
        struct Recorded;

        impl fmt::Display for Recorded {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("variant names recorded")
            }
        }

        impl std::error::Error for Recorded {}

        impl de::Error for Recorded {
            fn custom<T: fmt::Display>(_message: T) -> Self {
                Recorded
            }
        }

        impl<'de> Deserializer<'de> for VariantRecorder<'_> {
            type Error = Recorded;

            fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Recorded> {
                Err(Recorded)
            }

            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _name: &'static str,
                variants: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Recorded> {
                *self.0 = variants;
                Err(Recorded)
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
                ignored_any
            }
        }

        let mut names: &'static [&'static str] = &[];
        let _ = Stage::deserialize(VariantRecorder(&mut names));
        names
    }

    /// CIS 1.1.9-1.1.10, 1.1.13-1.1.21 and 4.1.1-4.1.10 ask of every configuration
    /// file (kubeconfigs, certificates and keys, unit files, the CNI configuration,
    /// kubelet's and kube-proxy's configuration): owned by root, mode 644 or stricter.
    /// The conformance suite checks the nodes against the plan; this keeps the plan so.
    #[test]
    fn every_planned_configuration_file_is_roots_at_644_or_stricter() {
        let places = ["/etc/", "/var/lib/kubelet/", "/var/lib/kube-proxy/"];
        for lab in ["lab.toml", "examples/minimal.toml", "examples/separate-etcd.toml"] {
            let topology = test_support::topology(lab);
            for stage in Stage::ALL {
                let plan = test_support::stage_for_topology(&topology, stage);
                for actions in &plan.nodes {
                    for file in
                        actions.files.iter().filter(|file| places.iter().any(|place| file.path.starts_with(place)))
                    {
                        assert!(
                            file.owner == "root" && file.mode & 0o133 == 0,
                            "{lab}: {} on {} is {} {:o}",
                            file.path,
                            actions.node,
                            file.owner,
                            file.mode
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_stage_needs_only_earlier_stages() {
        for stage in Stage::ALL {
            for need in stage.needs() {
                assert!(need < &stage, "{stage} needs {need}, which comes after it in the handbook");
            }
        }
    }

    /// The topologies the repository ships, each with the plans of all its stages.
    fn shipped_plans() -> Vec<(&'static str, crate::topology::Topology, Vec<StagePlan>)> {
        [
            "lab.toml",
            "examples/minimal.toml",
            "examples/separate-etcd.toml",
            "examples/second-lab.toml",
            "examples/twin-lab.toml",
        ]
        .into_iter()
        .map(|lab| {
            let topology = test_support::topology(lab);
            let plans = Stage::ALL.iter().map(|stage| test_support::stage_for_topology(&topology, *stage)).collect();
            (lab, topology, plans)
        })
        .collect()
    }

    /// The executor restarts a unit after the start of another only if that one is
    /// started before it on the same node in the same stage; a name that is not (a
    /// typo, a unit of another stage) would never trigger the restart.
    #[test]
    fn a_unit_follows_only_the_start_of_a_unit_listed_before_it() {
        let mut checked = 0;
        for (lab, _, plans) in shipped_plans() {
            for plan in &plans {
                for actions in &plan.nodes {
                    for (index, unit) in actions.units.iter().enumerate() {
                        for other in &unit.restart_after_starting {
                            checked += 1;
                            assert!(
                                actions.units[..index].iter().any(|earlier| &earlier.name == other),
                                "{lab}: {} on {} in {:?} restarts after {other} starts, which is not a unit listed \
                                 before it there",
                                unit.name,
                                actions.node,
                                plan.stage
                            );
                        }
                    }
                }
            }
        }
        assert!(checked > 0, "no unit restarts after another's start");
    }

    /// Stages that do not need each other run at the same time, so a stage that writes
    /// a file another stage's unit restarts for, or the same file as another stage,
    /// must be among that stage's needs: else the restart could be missed or the file
    /// written twice at once.
    #[test]
    fn a_stage_needs_every_stage_that_writes_its_units_inputs() {
        for (lab, _, plans) in shipped_plans() {
            let writers = |node: &str, path: &str| -> Vec<Stage> {
                plans
                    .iter()
                    .filter(|plan| {
                        plan.nodes
                            .iter()
                            .any(|actions| actions.node == node && actions.files.iter().any(|file| file.path == path))
                    })
                    .map(|plan| plan.stage)
                    .collect()
            };
            for plan in &plans {
                let needs = plan.stage.all_needs();
                for actions in &plan.nodes {
                    let inputs = actions.units.iter().flat_map(|unit| &unit.restart_when_changed);
                    let own = actions.files.iter().map(|file| &file.path);
                    for path in inputs.chain(own) {
                        for writer in writers(&actions.node, path) {
                            assert!(
                                writer >= plan.stage || needs.contains(&writer),
                                "{lab}: {writer} writes {path} on {}, which {} reads, but {} does not need {writer}",
                                actions.node,
                                plan.stage,
                                plan.stage
                            );
                        }
                    }
                }
            }
        }
    }

    /// A unit restarts when the lab installs a new build of the binary it runs (a
    /// rebuilt cache, another Kubernetes build): a binary replaced on disk changes
    /// nothing in the process that runs the old one.
    #[test]
    fn every_unit_restarts_when_the_binary_it_runs_changes() {
        for (lab, _, plans) in shipped_plans() {
            let mut checked = 0;
            for plan in &plans {
                for actions in &plan.nodes {
                    let installed: Vec<&str> = plans
                        .iter()
                        .flat_map(|plan| plan.nodes.iter().filter(|other| other.node == actions.node))
                        .flat_map(|other| &other.files)
                        .filter(|file| matches!(file.content, crate::plan::Content::Artifact { .. }))
                        .map(|file| file.path.as_str())
                        .collect();
                    for unit in &actions.units {
                        let Some(unit_file) = actions.files.iter().find(|file| file.path == paths::unit(&unit.name))
                        else {
                            continue;
                        };
                        let crate::plan::Content::Text(text) = &unit_file.content else { continue };
                        let Some(exec_start) = text.lines().find_map(|line| line.strip_prefix("ExecStart=")) else {
                            continue;
                        };
                        let program = exec_start.split_whitespace().next().unwrap_or_default();
                        if installed.contains(&program) {
                            checked += 1;
                            assert!(
                                unit.restart_when_changed.iter().any(|input| input == program),
                                "{lab}: {} on {} runs {program}, which the lab installs, but does not restart \
                                 when it changes: {:?}",
                                unit.name,
                                actions.node,
                                unit.restart_when_changed
                            );
                        }
                    }
                }
            }
            assert!(checked > 0, "{lab}: no unit runs a binary the lab installs");
        }
    }

    /// Every daemon whose kubeconfig points at the virtual IP pings its silent
    /// connections, so that it follows the address when it moves; the daemons that talk
    /// to their own master's apiserver need not.
    #[test]
    fn every_client_of_the_virtual_ip_and_no_other_unit_pings_its_connections() {
        for (lab, topology, plans) in shipped_plans() {
            let vip_url = format!("server: \"https://{}:{}\"", topology.network.vip, topology.network.api_port);
            let mut clients = 0;
            for plan in &plans {
                for actions in &plan.nodes {
                    let text_of = |path: &str| {
                        actions.files.iter().find(|file| file.path == path).map(|file| match &file.content {
                            crate::plan::Content::Text(text) | crate::plan::Content::Secret(text) => text.clone(),
                            crate::plan::Content::Artifact { .. } => String::new(),
                        })
                    };
                    for unit in &actions.units {
                        let Some(unit_text) = text_of(&paths::unit(&unit.name)) else { continue };
                        let through_vip = unit
                            .restart_when_changed
                            .iter()
                            .any(|input| text_of(input).is_some_and(|text| text.contains(&vip_url)));
                        clients += usize::from(through_vip);
                        assert_eq!(
                            unit_text.contains(&keepalived::client_environment()),
                            through_vip,
                            "{lab}: {} on {} reaches the API through the virtual IP: {through_vip}; its unit:\n{unit_text}",
                            unit.name,
                            actions.node
                        );
                    }
                }
            }
            assert!(clients > 0, "{lab}: no unit reaches the API through the virtual IP");
        }
    }

    #[test]
    fn registry_has_one_row_per_variant_in_variant_order() {
        let variants = stage_variant_names();
        assert!(!variants.is_empty(), "serde passed no variant names");
        let rows: Vec<&str> = REGISTRY.iter().map(|entry| entry.name).collect();
        assert_eq!(rows, variants, "REGISTRY must list every Stage variant once, in order, under its serde name");
        assert_eq!(Stage::ALL.map(Stage::name), variants);
    }

    #[test]
    fn every_stage_is_found_by_its_name() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
            assert_eq!(stage.to_string(), stage.name());
        }
        assert_eq!(Stage::from_name("kube_apiserver"), None);
    }

    /// The registry's handbook section and the first line of the stage module's
    /// documentation name the same sections of the same handbook.
    #[test]
    fn handbook_sections_agree_with_the_stage_modules() {
        fn sections(text: &str) -> &str {
            let after = text.strip_prefix("Handbook 000 ").unwrap_or_else(|| panic!("{text:?} names no handbook"));
            let numbers = after.split(':').next().expect("split yields one part");
            numbers.trim_start_matches("sections ").trim_start_matches("section ")
        }
        for entry in &REGISTRY {
            let module = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/stages")
                .join(format!("{}.rs", entry.name.replace('-', "_")));
            let source =
                std::fs::read_to_string(&module).unwrap_or_else(|error| panic!("{}: {error}", module.display()));
            let first_line = source.lines().next().unwrap_or_default().trim_start_matches("//! ");
            assert_eq!(sections(entry.handbook_section), sections(first_line), "{}", module.display());
            assert_eq!(entry.stage.handbook_section(), entry.handbook_section);
        }
    }

    #[test]
    fn every_stage_plan_carries_its_stage_and_handbook_section() {
        for stage in Stage::ALL {
            let plan = test_support::stage_for("lab.toml", stage);
            assert_eq!((plan.stage, plan.chapter), (stage, stage.handbook_section()));
        }
    }

    /// The leader check, run by `sh` with kubectl answering `lease` (holder and renew
    /// time) for a lease of 15 s.
    fn leader_check_passes_with(lease: &str) -> bool {
        let election = LeaderElection { lease_duration: 15, renew_deadline: 10, retry_period: 1 };
        let kubeconfig = paths::kubeconfig("kube-scheduler");
        let check = leader_check("kube-scheduler", "master1", &kubeconfig, election, 60);
        assert_eq!(check.timeout_secs, 90, "time for a lease left from before a restart to run out");
        let kubectl = format!("{}/kubectl --kubeconfig {kubeconfig}", paths::BIN_DIR);
        assert!(check.script.contains(&kubectl), "{}", check.script);
        let script = check.script.replace(&kubectl, &format!("printf '{lease}'; true"));
        std::process::Command::new("sh").args(["-c", &script]).status().expect("sh runs").success()
    }

    #[test]
    fn a_lease_is_released_only_while_it_names_a_master_that_powers_off() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let patches = dir.path().join("patches");
        // A kubectl that answers `get lease NAME` from the holders below and notes each
        // patch it is asked for.
        let kubectl = dir.path().join("kubectl");
        std::fs::write(
            &kubectl,
            format!(
                "#!/bin/sh\ncase \"$*\" in\n*'get lease kube-controller-manager'*) printf master1_0f3a ;;\n\
                 *'get lease kube-scheduler'*) printf master2_9c1e ;;\n*patch*) echo \"$*\" >> {} ;;\nesac\n",
                patches.display()
            ),
        )
        .expect("the fake kubectl is written");
        std::fs::set_permissions(&kubectl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("executable");
        let script = release_leases(&["master1", "master3"])
            .replace(&paths::admin_kubectl(), &kubectl.display().to_string())
            .replace(&format!("[ -f {} ]", paths::ADMIN_KUBECONFIG), "true");
        let output = std::process::Command::new("sh").args(["-c", &script]).output().expect("sh runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "kube-controller-manager");
        let patched = std::fs::read_to_string(&patches).expect("one patch");
        assert_eq!(patched.lines().count(), 1, "the scheduler's lease names master2, which stays: {patched}");
        assert!(patched.contains("patch lease kube-controller-manager --type json"), "{patched}");
        assert!(
            patched.contains(r#"{"op":"test","path":"/spec/holderIdentity","value":"master1_0f3a"},{"op":"remove""#),
            "removed only if still the holder read: {patched}"
        );
        assert!(stop_leader_elected().contains("kube-controller-manager.service kube-scheduler.service"));
    }

    #[test]
    fn a_leader_is_one_that_renewed_its_lease_within_the_lease_duration() {
        let ago = |seconds: i64| {
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds as u64);
            let since_epoch = when.duration_since(std::time::UNIX_EPOCH).expect("after the epoch").as_secs();
            let output = std::process::Command::new("date")
                .args(["--utc", &format!("--date=@{since_epoch}"), "+%Y-%m-%dT%H:%M:%S.123456Z"])
                .output()
                .expect("date runs");
            String::from_utf8(output.stdout).expect("date prints text").trim().to_string()
        };
        assert!(leader_check_passes_with(&format!("master2_1b2c {}", ago(3))));
        assert!(!leader_check_passes_with(&format!("master2_1b2c {}", ago(40))), "a holder from before a restart");
        assert!(!leader_check_passes_with(&format!(" {}", ago(3))), "no holder");
        assert!(!leader_check_passes_with("master2_1b2c "), "never renewed");
    }
}
