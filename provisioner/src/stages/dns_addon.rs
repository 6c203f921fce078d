//! Handbook 000 section 10: the cluster DNS addon (kube-dns in the handbook).
//!
//! Pods find Services by name: the kubelet writes the DNS Service's ClusterIP into every
//! pod's resolv.conf, and a DNS server behind that Service answers for
//! `SERVICE.NAMESPACE.svc.DOMAIN` from what it watches in the API (the Kubernetes
//! DNS-Based Service Discovery specification). Like the handbook's kube-dns, the addon
//! is itself a Deployment in kube-system behind a Service with the fixed ClusterIP the
//! kubelets were given, applied with kubectl and the admin credentials from the first
//! master.
//!
//! The Service keeps the name, label (`k8s-app=kube-dns`), address and port names
//! (`dns` UDP 53, `dns-tcp` TCP 53) that clients and tools expect, whichever server is
//! behind it:
//!
//! - `lab-dns` (the default, offline): the workspace's own DNS server (`dns/`), from an
//!   image the lab built and imported, so `imagePullPolicy: Never`. It only lists and
//!   watches Services and Endpoints, so its ClusterRole allows only that. It is
//!   authoritative for the cluster domain and for the reverse names of the Service range,
//!   and refuses every other name: the lab is offline, so it has no upstream resolver.
//! - `coredns`: the official CoreDNS image, for hosts that can pull it, configured like
//!   the upstream addon with a Corefile.
//!
//! Two replicas, spread over the workers (at most one more on a worker than on any
//! other, so that a one-worker lab still runs both). The DNS pods themselves use the node's
//! resolver (`dnsPolicy: Default`), not their own Service. They are marked
//! `system-cluster-critical` so that they are the last pods to be evicted.

use std::fmt::Write as _;

use ipnet::Ipv4Net;

use crate::artifacts::images;
use crate::paths;
use crate::plan::{CheckSpec, CommandSpec, Context, FileSpec, RunWhen, StagePlan};
use crate::topology::{DnsAddon, Network, Role};

/// Name of the Deployment, the Service and the ServiceAccount, and the value of the
/// `k8s-app` label, as the handbook's kube-dns (and CoreDNS's addon) use them.
pub const NAME: &str = "kube-dns";
/// Replicas of the DNS server.
pub const REPLICAS: u32 = 2;
/// Port of the lab DNS server's /healthz (alive) and /readyz (first full sync done).
pub const LAB_DNS_PROBE_PORT: u16 = 8080;
/// TTL of the answers, short so that a new or deleted Service shows within seconds.
const TTL_SECS: u32 = 5;
/// How long a stopping DNS server goes on answering after SIGTERM, while kube-proxy on
/// every node takes its pod out of the Service.
pub const LAME_DUCK_SECS: u64 = 5;
/// The CoreDNS image of the Kubernetes 1.20 release.
const COREDNS_IMAGE: &str = "k8s.gcr.io/coredns:1.7.0";

/// How long the DNS pods may take to be scheduled, started and ready.
const READY_TIMEOUT_SECS: u64 = 180;

/// Where the first master keeps the addon's manifest.
pub fn manifest_path() -> String {
    format!("{}/{NAME}.yaml", paths::MANIFESTS_DIR)
}

pub fn plan(context: &Context<'_>, stage: &mut StagePlan) {
    let Some(first_master) = context.topology.nodes_with(Role::Master).next() else { return };
    let network = &context.topology.network;
    let kubectl = paths::admin_kubectl();

    let manifest = match context.topology.addons.dns {
        DnsAddon::LabDns => lab_dns_manifest(network),
        DnsAddon::Coredns => coredns_manifest(network),
    };
    let actions = stage.node(&first_master.name);
    actions.files.push(FileSpec::text(manifest_path(), 0o644, manifest));
    // `apply` changes only what differs, so running it every time is safe, and it puts
    // back anything edited by hand.
    actions.commands.push(CommandSpec {
        description: "apply the cluster DNS addon".to_string(),
        script: format!("{kubectl} apply -f {}", manifest_path()),
        when: RunWhen::Always,
    });
    // Ready, and every pod of the current template: while a rollout replaces the pods,
    // the old ones count as ready too, and the stage would be done before they are gone.
    actions.checks.push(CheckSpec {
        description: format!("{REPLICAS} cluster DNS pods are ready, all of the applied manifest"),
        script: format!(
            "set -- $({kubectl} --namespace kube-system get deployment {NAME} -o jsonpath='{{.status.readyReplicas}} \
             {{.status.updatedReplicas}} {{.status.replicas}} {{.status.observedGeneration}} {{.metadata.generation}}') \
             && [ \"$1 $2 $3\" = \"{REPLICAS} {REPLICAS} {REPLICAS}\" ] && [ \"$4\" = \"$5\" ]"
        ),
        timeout_secs: READY_TIMEOUT_SECS,
    });
}

/// The objects both servers share: service account, role binding, Service.
fn common(network: &Network, role_rules: &str, server: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: {NAME}
  namespace: kube-system
  labels:
    k8s-app: {NAME}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: k8s-lab:{NAME}
  labels:
    k8s-app: {NAME}
rules:
{role_rules}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: k8s-lab:{NAME}
  labels:
    k8s-app: {NAME}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: k8s-lab:{NAME}
subjects:
- kind: ServiceAccount
  name: {NAME}
  namespace: kube-system
---
apiVersion: v1
kind: Service
metadata:
  name: {NAME}
  namespace: kube-system
  labels:
    k8s-app: {NAME}
    kubernetes.io/name: "{server}"
spec:
  selector:
    k8s-app: {NAME}
  # The address every kubelet writes into pods' resolv.conf.
  clusterIP: {cluster_dns}
  ports:
  - name: dns
    port: 53
    protocol: UDP
  - name: dns-tcp
    port: 53
    protocol: TCP
"#,
        cluster_dns = network.cluster_dns,
    )
}

/// The Deployment's pod-level settings both servers share.
///
/// The replicas' spread is a rule rather than a preference: at most one more on a
/// worker than on any other. With a preferred anti-affinity, a deleted DNS pod's
/// successor could go beside the other replica, because the deleted pod, still
/// terminating on its worker, counted as much as a running one; after a few
/// replacements both replicas ran on one worker, and losing that worker took the
/// cluster DNS down (seen 2026-12-07). A required anti-affinity fixed that but made the
/// successor wait until the deleted pod was gone (its lame duck, then the kubelet's
/// next status sync: 16 s), so a deletion left one replica for 27 s. The scheduler's
/// spread rule does not count terminating pods: the successor starts at once on the
/// worker it replaces, and a one-worker lab still runs both replicas.
fn pod_spec_common() -> String {
    format!(
        "      serviceAccountName: {NAME}
      priorityClassName: system-cluster-critical
      # The DNS server resolves through the node, not through itself.
      dnsPolicy: Default
      tolerations:
      - key: CriticalAddonsOnly
        operator: Exists
      # One replica per worker while there are workers enough.
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels:
            k8s-app: {NAME}
"
    )
}

/// The container ports both servers serve DNS on; the list stays open for more ports.
const DNS_CONTAINER_PORTS: &str = "        ports:
        - name: dns
          containerPort: 53
          protocol: UDP
        - name: dns-tcp
          containerPort: 53
          protocol: TCP
";

/// The container settings both servers share after their ports: resources and least
/// privilege (the securityContext mapping stays open for more settings).
const CONTAINER_LIMITS: &str = "        resources:
          requests:
            cpu: 50m
            memory: 32Mi
          limits:
            memory: 170Mi
        # Port 53 is the only privilege the server needs.
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities:
            add: [\"NET_BIND_SERVICE\"]
            drop: [\"ALL\"]
";

/// The Deployment's header up to the pod spec. Its rollout replaces one replica at a
/// time, the old one first: the pods of a lab made before the spread rule carry a
/// required anti-affinity, which keeps a surge pod off every worker that runs one.
fn deployment_header() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {NAME}
  namespace: kube-system
  labels:
    k8s-app: {NAME}
spec:
  replicas: {REPLICAS}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 0
      maxUnavailable: 1
  selector:
    matchLabels:
      k8s-app: {NAME}
  template:
    metadata:
      labels:
        k8s-app: {NAME}
    spec:
"
    )
}

/// The workspace's own DNS server.
fn lab_dns_manifest(network: &Network) -> String {
    // Kubernetes 1.20 serves no discovery.k8s.io/v1 EndpointSlices, so the server
    // watches core/v1 Endpoints (as kube-dns did) and needs nothing else.
    let rules = r#"- apiGroups: [""]
  resources: ["services", "endpoints"]
  verbs: ["list", "watch"]
"#;
    let mut manifest = header("lab-dns, the workspace's own DNS server");
    manifest.push_str(&common(network, rules, "LabDNS"));
    manifest.push_str("---\n");
    manifest.push_str(&deployment_header());
    manifest.push_str(&pod_spec_common());
    write!(
        manifest,
        r#"      containers:
      - name: lab-dns
        image: {image}
        # Built and imported by the lab: there is no registry to pull from.
        imagePullPolicy: Never
        # No --upstream: the lab is offline, so names outside the cluster are refused.
        args:
        - --domain={domain}
        - --listen=0.0.0.0:53
        - --probe-listen=0.0.0.0:{LAB_DNS_PROBE_PORT}
        # Unknown addresses of the Service range are NXDOMAIN here, not forwarded.
        - --reverse-cidr={service_cidr}
        - --ttl={TTL_SECS}
        # Answers for 5 s after SIGTERM, while kube-proxy on every node takes a deleted
        # pod out of the Service (CoreDNS's `lameduck`).
        - --lame-duck={LAME_DUCK_SECS}
        livenessProbe:
          httpGet:
            path: /healthz
            port: {LAB_DNS_PROBE_PORT}
          initialDelaySeconds: 10
          periodSeconds: 10
          failureThreshold: 5
        # Ready only after the first full sync of Services and endpoints.
        readinessProbe:
          httpGet:
            path: /readyz
            port: {LAB_DNS_PROBE_PORT}
          periodSeconds: 2
"#,
        image = images::LAB_DNS,
        domain = network.cluster_domain,
        service_cidr = network.service_cidr,
    )
    .expect("writing to a String");
    manifest.push_str(DNS_CONTAINER_PORTS);
    write!(
        manifest,
        "        - name: probes
          containerPort: {LAB_DNS_PROBE_PORT}
          protocol: TCP
"
    )
    .expect("writing to a String");
    manifest.push_str(CONTAINER_LIMITS);
    manifest.push_str(
        "          # Root, but with NET_BIND_SERVICE as its only capability: containerd puts added
          # capabilities into every set but the ambient one, so a non-root user's process
          # would lose them when it starts and could not bind port 53.
          runAsUser: 0
",
    );
    manifest
}

/// CoreDNS as the Kubernetes 1.20 addon runs it.
fn coredns_manifest(network: &Network) -> String {
    // CoreDNS 1.7 also watches namespaces, to answer NXDOMAIN for names in namespaces
    // that do not exist.
    let rules = r#"- apiGroups: [""]
  resources: ["services", "endpoints", "namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
"#;
    let mut manifest = header("CoreDNS");
    manifest.push_str(&common(network, rules, "CoreDNS"));
    write!(
        manifest,
        r#"---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {{
        errors
        health {{
            lameduck {LAME_DUCK_SECS}s
        }}
        ready
        kubernetes {domain} {reverse_zone} {{
            fallthrough in-addr.arpa
            ttl {TTL_SECS}
        }}
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
        loadbalance
    }}
---
"#,
        domain = network.cluster_domain,
        reverse_zone = reverse_zone(network.service_cidr),
    )
    .expect("writing to a String");
    manifest.push_str(&deployment_header());
    manifest.push_str(&pod_spec_common());
    write!(
        manifest,
        r#"      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: IfNotPresent
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts:
        - name: config-volume
          mountPath: /etc/coredns
          readOnly: true
        livenessProbe:
          httpGet:
            path: /health
            port: 8080
          initialDelaySeconds: 60
          periodSeconds: 10
          failureThreshold: 5
        readinessProbe:
          httpGet:
            path: /ready
            port: 8181
          periodSeconds: 2
"#
    )
    .expect("writing to a String");
    manifest.push_str(DNS_CONTAINER_PORTS);
    manifest.push_str(CONTAINER_LIMITS);
    manifest.push_str(
        "      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items:
          - key: Corefile
            path: Corefile
",
    );
    manifest
}

fn header(server: &str) -> String {
    format!(
        "# Written by the k8s lab; `lab up` overwrites local changes.
# The cluster DNS addon ({server}), applied from the first master with kubectl.
"
    )
}

/// The in-addr.arpa zone that holds the PTR records of a range's addresses, at whole
/// octets: 10.32.0.0/24 -> `0.32.10.in-addr.arpa`, 10.96.0.0/12 -> `10.in-addr.arpa`.
fn reverse_zone(range: Ipv4Net) -> String {
    let whole_octets = usize::from(range.prefix_len() / 8);
    let mut labels: Vec<String> = range.network().octets()[..whole_octets].iter().map(u8::to_string).collect();
    labels.reverse();
    labels.push("in-addr.arpa".to_string());
    labels.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Stage;
    use crate::stages::test_support::{file, stage_for, stage_for_topology, topology};

    const MANIFEST: &str = "/etc/kubernetes/manifests-lab/kube-dns.yaml";

    #[test]
    fn service_sits_at_the_cluster_dns_address_with_named_ports() {
        let stage = stage_for("lab.toml", Stage::DnsAddon);
        let manifest = file(&stage, "master1", MANIFEST);
        let service = manifest.split("---\n").find(|document| document.contains("kind: Service\n")).unwrap();
        assert!(service.contains("  clusterIP: 10.32.0.10\n"));
        assert!(service.contains("  - name: dns\n    port: 53\n    protocol: UDP\n"));
        assert!(service.contains("  - name: dns-tcp\n    port: 53\n    protocol: TCP\n"));
        assert!(service.contains("    k8s-app: kube-dns\n"));
    }

    #[test]
    fn lab_dns_runs_two_local_replicas_with_least_privilege() {
        let stage = stage_for("lab.toml", Stage::DnsAddon);
        let manifest = file(&stage, "master1", MANIFEST);
        assert!(manifest.contains("  replicas: 2\n"));
        assert!(manifest.contains("        image: k8s-lab.local/lab-dns:1\n        # Built"));
        assert!(manifest.contains("        imagePullPolicy: Never\n"));
        assert!(manifest.contains("  resources: [\"services\", \"endpoints\"]\n  verbs: [\"list\", \"watch\"]\n---\n"));
        assert!(!manifest.contains("\"get\""), "the DNS server needs no single-object reads");
        assert!(!manifest.contains("secrets") && !manifest.contains("endpointslices"));
        assert!(manifest.contains("          runAsUser: 0\n"));
        assert!(manifest.contains("          readOnlyRootFilesystem: true\n"));
        assert!(manifest.contains("            add: [\"NET_BIND_SERVICE\"]\n            drop: [\"ALL\"]\n"));
        assert!(manifest.contains("priorityClassName: system-cluster-critical"));
    }

    #[test]
    fn replicas_spread_by_a_rule_that_leaves_terminating_pods_out() {
        // The scheduler's spread rule does not count a terminating pod, so a deleted
        // pod's successor starts at once; a required anti-affinity would count it.
        for path in ["lab.toml", "examples/minimal.toml"] {
            let stage = stage_for(path, Stage::DnsAddon);
            let manifest = file(&stage, "master1", MANIFEST);
            assert!(
                manifest.contains(
                    "      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        \
                     whenUnsatisfiable: DoNotSchedule\n        labelSelector:\n          matchLabels:\n            \
                     k8s-app: kube-dns\n"
                ),
                "{path}: {manifest}"
            );
            assert!(!manifest.contains("podAntiAffinity"), "{path}");
            assert!(manifest.contains("      maxSurge: 0\n      maxUnavailable: 1\n"), "{path}");
        }
    }

    #[test]
    fn lab_dns_arguments_and_probes_match_the_server() {
        let stage = stage_for("lab.toml", Stage::DnsAddon);
        let manifest = file(&stage, "master1", MANIFEST);
        let args: Vec<&str> = manifest
            .lines()
            .skip_while(|line| *line != "        args:")
            .skip(1)
            .filter(|line| !line.trim_start().starts_with('#'))
            .take_while(|line| line.starts_with("        - "))
            .map(|line| line.trim_start_matches("        - "))
            .collect();
        assert_eq!(
            args,
            [
                "--domain=cluster.local",
                "--listen=0.0.0.0:53",
                "--probe-listen=0.0.0.0:8080",
                "--reverse-cidr=10.32.0.0/24",
                "--ttl=5",
                "--lame-duck=5"
            ]
        );
        assert!(!manifest.contains("- --upstream"), "the offline lab has no upstream resolver");
        assert!(manifest.contains("            path: /healthz\n            port: 8080\n"));
        assert!(manifest.contains("            path: /readyz\n            port: 8080\n"));
        assert!(manifest.contains(
            "        - name: dns\n          containerPort: 53\n          protocol: UDP\n\
             \x20       - name: dns-tcp\n          containerPort: 53\n          protocol: TCP\n\
             \x20       - name: probes\n          containerPort: 8080\n          protocol: TCP\n"
        ));
    }

    #[test]
    fn applied_and_checked_from_the_first_master_only() {
        let stage = stage_for("lab.toml", Stage::DnsAddon);
        assert_eq!(stage.nodes.len(), 1);
        let actions = &stage.nodes[0];
        assert_eq!(actions.node, "master1");
        assert_eq!(
            actions.commands[0].script,
            "/usr/local/bin/kubectl --kubeconfig /etc/kubernetes/admin.kubeconfig apply -f \
             /etc/kubernetes/manifests-lab/kube-dns.yaml"
        );
        assert!(actions.checks[0].script.contains("get deployment kube-dns -o jsonpath='{.status.readyReplicas} "));
    }

    /// The check, run by `sh` with kubectl answering `status` (ready, updated and total
    /// replicas, observed generation, generation).
    fn check_passes_with(status: &str) -> bool {
        let stage = stage_for("lab.toml", Stage::DnsAddon);
        let script =
            stage.nodes[0].checks[0].script.replace(&paths::admin_kubectl(), &format!("printf '{status}'; true"));
        std::process::Command::new("sh").args(["-c", &script]).status().expect("sh runs").success()
    }

    #[test]
    fn the_check_waits_for_every_pod_of_the_applied_manifest() {
        assert!(check_passes_with("2 2 2 7 7"));
        assert!(!check_passes_with("1 1 1 7 7"), "a pod not ready");
        assert!(!check_passes_with("2 1 3 7 7"), "an old pod still running beside a new one, mid-rollout");
        assert!(!check_passes_with("2 2 2 6 7"), "the status not yet of the applied manifest");
        assert!(!check_passes_with(" 2 2 7 7"), "no ready replica at all (the field left out)");
    }

    #[test]
    fn coredns_keeps_the_service_and_serves_the_reverse_zone() {
        let mut topology = topology("lab.toml");
        topology.addons.dns = DnsAddon::Coredns;
        let stage = stage_for_topology(&topology, Stage::DnsAddon);
        let manifest = file(&stage, "master1", MANIFEST);
        assert!(manifest.contains("image: k8s.gcr.io/coredns:1.7.0"));
        assert!(manifest.contains("kubernetes cluster.local 0.32.10.in-addr.arpa {"));
        assert!(manifest.contains("  clusterIP: 10.32.0.10\n"));
        assert!(manifest.contains(
            "  name: kube-dns\n  namespace: kube-system\n  labels:\n    k8s-app: kube-dns\nspec:\n  replicas: 2"
        ));
    }

    #[test]
    fn reverse_zones_stop_at_whole_octets() {
        assert_eq!(reverse_zone("10.32.0.0/24".parse().unwrap()), "0.32.10.in-addr.arpa");
        assert_eq!(reverse_zone("10.96.0.0/12".parse().unwrap()), "10.in-addr.arpa");
        assert_eq!(reverse_zone("172.16.0.0/16".parse().unwrap()), "16.172.in-addr.arpa");
    }
}
