//! The lab's cluster DNS server: Kubernetes DNS-Based Service Discovery on hickory-server.
//!
//! No cluster DNS image can be pulled on the lab's machines and Debian packages none, so the
//! lab builds its own. The server answers for the cluster domain (and the reverse names of
//! Service and endpoint addresses) from an in-memory snapshot of Services and Endpoints, and
//! forwards other names to configured upstreams or refuses them when there are none.
//!
//! The parts are kept apart so each can be understood and tested on its own:
//! - [`snapshot`]: the reduced, immutable view of Services joined with their Endpoints;
//! - [`records`]: the pure function from a snapshot and a question to an answer;
//! - [`server`]: hickory-server's UDP and TCP handling around `records`;
//! - [`forward`]: relaying out-of-zone queries to upstream resolvers;
//! - [`watch`]: the kube-rs watch that publishes a new snapshot after every change;
//! - [`probe`]: the liveness and readiness endpoints for kubelet.

pub mod forward;
pub mod probe;
pub mod records;
pub mod server;
pub mod snapshot;
pub mod watch;

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hickory_proto::rr::Name;
use ipnet::Ipv4Net;
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::forward::Forwarder;
use crate::records::ZoneConfig;
use crate::server::{DnsServer, Handler};

/// The command line of `lab-dns`.
#[derive(Debug, Parser)]
#[command(name = "lab-dns", version, about = "Cluster DNS for the lab's Kubernetes: service discovery from the API")]
pub struct Options {
    /// The cluster domain the server is authoritative for.
    #[arg(long, default_value = "cluster.local")]
    pub domain: Name,
    /// The address for DNS over both UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// The TTL of answers, and of negative answers (the SOA minimum), in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// An upstream resolver (IP:PORT) for names outside the cluster; repeatable, tried in order.
    /// Without one, such names are refused.
    #[arg(long = "upstream", value_name = "IP:PORT")]
    pub upstreams: Vec<SocketAddr>,
    /// A network whose reverse names are all answered here, so unknown addresses in it are
    /// NXDOMAIN instead of forwarded (normally the Service range); repeatable.
    #[arg(long = "reverse-cidr", value_name = "CIDR")]
    pub reverse_networks: Vec<Ipv4Net>,
    /// The address of the HTTP probe endpoints /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub probe_listen: SocketAddr,
    /// A kubeconfig file; without it the client is inferred from KUBECONFIG, ~/.kube/config or
    /// the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds to keep answering after SIGTERM before stopping (a lame duck): kubelet sends
    /// SIGTERM when the pod is deleted, and kube-proxy on every node still sends queries
    /// here until it has seen the pod leave the Service's endpoints, about a second later.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub lame_duck: u64,
}

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum Error {
    #[error("binding DNS sockets on {address}")]
    DnsBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS server stopped")]
    DnsServe(#[source] hickory_server::net::NetError),
    #[error("binding the probe listener on {address}")]
    ProbeBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding a Kubernetes client configuration (kubeconfig or in-cluster service account)")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("the watch of {0} ended")]
    WatchEnded(&'static str),
    #[error("installing the termination signal handler")]
    Signal(#[source] std::io::Error),
}

/// Runs the server with the process's command line and environment; the exit code says
/// whether it stopped cleanly (on SIGTERM or SIGINT).
pub fn main() -> ExitCode {
    let options = Options::parse();
    // hickory-server logs every query at info level, which would drown the server's own lines.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    // Logs go to stderr, in colour only on a terminal: in the cluster they end up in files.
    let stderr_is_terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(stderr_is_terminal).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "starting the async runtime failed");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = %error_chain(&error), "lab-dns stopped");
            ExitCode::FAILURE
        }
    }
}

/// Serves DNS and the probes while watching the cluster, until a termination signal.
pub async fn run(options: Options) -> Result<(), Error> {
    let zone = ZoneConfig::new(&options.domain, options.ttl, options.reverse_networks);
    let client = watch::client(options.kubeconfig.as_deref()).await?;
    let (publisher, snapshots) = snapshot::channel();
    let handler = Handler::new(zone, snapshots.clone(), Forwarder::new(options.upstreams));
    let dns = DnsServer::bind(options.listen, handler).await?;
    let probe_listener = TcpListener::bind(options.probe_listen)
        .await
        .map_err(|source| Error::ProbeBind { address: options.probe_listen, source })?;
    let shutdown = termination_signal(Duration::from_secs(options.lame_duck))?;
    info!(dns = %dns.local_addr(), probes = %options.probe_listen, domain = %options.domain, "serving");
    tokio::select! {
        result = dns.serve(shutdown) => result,
        result = watch::run(client, publisher) => result.map(|never: Infallible| match never {}),
        never = probe::serve(probe_listener, snapshots) => match never {},
    }
}

/// A future that completes `lame_duck` after SIGTERM (what kubelet sends to stop a pod),
/// or at once on SIGINT (a person at a terminal).
fn termination_signal(lame_duck: Duration) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {
                info!(seconds = lame_duck.as_secs(), "SIGTERM received, answering a while longer before shutting down");
                tokio::select! {
                    () = tokio::time::sleep(lame_duck) => info!("shutting down"),
                    _ = interrupt.recv() => info!("SIGINT received, shutting down"),
                }
            }
            _ = interrupt.recv() => info!("SIGINT received, shutting down"),
        }
    })
}

/// An error with its chain of causes, for the one log line a failed run ends with.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
