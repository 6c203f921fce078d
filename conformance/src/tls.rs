//! Which TLS versions and cipher suites a server of the lab accepts, asked with
//! OpenSSL's `s_client` on the server's own node (the node image has OpenSSL through
//! ca-certificates). The suite's own TLS, rustls, speaks neither TLS 1.1 nor the CBC
//! ciphers with SHA-1 that the lab's servers must refuse, and from the server's own
//! node no probe leaves the lab.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::Lab;

/// What a server's TLS settings must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// TLS 1.2 or newer, strong ciphers only: the Kubernetes servers, whose minimum
    /// version is a setting (`--tls-min-version`, `tlsMinVersion`).
    Tls12AndStrongCiphers,
    /// Strong ciphers only: etcd 3.4, which requires TLS 1.2 whatever it is told, so
    /// that a TLS 1.1 check could never fail there.
    StrongCiphers,
}

/// One handshake, and whether the lab's TLS policy accepts it.
struct Handshake {
    what: &'static str,
    options: &'static str,
    accepted: bool,
    /// Whether the handshake says anything about a server with this policy.
    applies: fn(TlsPolicy) -> bool,
}

/// Refused: TLS 1.1 (OpenSSL 3 itself offers it only at security level 0), and TLS 1.2
/// with a CBC cipher and SHA-1 MACs, which Go accepts unless told otherwise. Accepted:
/// TLS 1.2 with AES-GCM, which shows that the refusals come from the policy and not
/// from a server that refuses everything. Each cipher is offered for ECDSA and RSA
/// keys: the lab's certificates are ECDSA, the ones the controller managers and
/// schedulers make themselves at start are RSA.
const HANDSHAKES: [Handshake; 3] = [
    Handshake {
        what: "TLS 1.1",
        options: "-tls1_1 -cipher DEFAULT:@SECLEVEL=0",
        accepted: false,
        applies: |policy| policy == TlsPolicy::Tls12AndStrongCiphers,
    },
    Handshake {
        what: "TLS 1.2 with ECDHE-ECDSA-AES128-SHA or ECDHE-RSA-AES128-SHA (CBC, SHA-1)",
        options: "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0",
        accepted: false,
        applies: |_| true,
    },
    Handshake {
        what: "TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256 or ECDHE-RSA-AES128-GCM-SHA256",
        options: "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        accepted: true,
        applies: |_| true,
    },
];

/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `timeout`'s exit status when the time ran out.
const TIMED_OUT: i32 = 124;

impl Lab {
    /// On `node`, tries each handshake of `policy` with the server at `address:port`
    /// and names every one that ended otherwise than the policy says.
    /// `client` is a certificate and its key on the node, for servers that require one
    /// (etcd). A handshake that times out is a problem, never taken for a refusal.
    pub fn tls_policy_problems(
        &self,
        node: &str,
        address: Ipv4Addr,
        port: u16,
        client: Option<(&str, &str)>,
        policy: TlsPolicy,
    ) -> Vec<String> {
        let credentials = client.map(|(cert, key)| format!(" -cert {cert} -key {key}")).unwrap_or_default();
        let timeout = self.patience(HANDSHAKE_TIMEOUT).as_secs().max(1);
        HANDSHAKES
            .iter()
            .filter(|handshake| (handshake.applies)(policy))
            .filter_map(|handshake| {
                let script = format!(
                    "timeout {timeout} openssl s_client -connect {address}:{port} {}{credentials} \
                     </dev/null >/dev/null 2>&1",
                    handshake.options
                );
                let status = self.try_sh(node, &script).unwrap_or_else(|error| panic!("{error}")).status;
                let accepted = status == 0;
                match status {
                    TIMED_OUT => Some(format!(
                        "{node}: {address}:{port} did not finish a {} handshake within {timeout}s",
                        handshake.what
                    )),
                    _ if accepted == handshake.accepted => None,
                    _ => Some(format!(
                        "{node}: {address}:{port} {} {}",
                        if accepted { "accepted" } else { "refused" },
                        handshake.what
                    )),
                }
            })
            .collect()
    }
}
