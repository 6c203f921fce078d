//! The lab's provisioner: topology, pure planner, PKI, artifacts, the Host seam and
//! the executor. See ARCHITECTURE.md for the map and the invariants.

pub mod artifacts;
pub mod benchmark;
pub mod debian;
pub mod drills;
pub mod executor;
pub mod explain;
pub mod faults;
pub mod host;
pub mod lab;
pub mod machines;
pub mod paths;
pub mod pki;
pub mod plan;
pub mod preflight;
pub mod readiness;
pub mod render;
pub mod ssh;
pub mod stages;
pub mod state_dir;
pub mod system;
pub mod text;
pub mod topology;
