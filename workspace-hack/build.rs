// Cargo applies a package's build-dependencies only when it has a build script, and
// the unified build-dependencies (syn, memchr) are half of what this crate is for.
fn main() {}
