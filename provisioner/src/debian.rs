//! The Debian the lab is made of: the release the node image is built from and the
//! mirror its packages, and those of the images the artifacts build extracts, are
//! fetched from. One place for both, so that the machines and the artifacts never
//! disagree about which Debian they mean, and neither has to import the other.

/// The Debian release every node runs and every extracted package comes from.
pub const RELEASE: &str = "bookworm";

/// Where packages come from when the caller does not name another mirror.
pub const MIRROR: &str = "http://deb.debian.org/debian";
