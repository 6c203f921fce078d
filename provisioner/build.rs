//! With the `libvirt` feature, finds the host's libvirt and links it.
//!
//! virt-sys finds libvirt too, but ignores a failed probe (so that its docs build
//! without libvirt) and never runs again: a build tried before libvirt-dev was
//! installed leaves it without its link line, and every later build fails to link
//! (`undefined symbol: virNetworkCreateXML`) until `cargo clean -p virt-sys`. This
//! script fails such a build at once with the fix, and links libvirt itself once it
//! is there, so a build after the install links whatever virt-sys remembered.

fn main() {
    // Without this cargo would run the script again whenever any file of the crate
    // changes; a failed run is always run again, and pkg-config names the variables
    // that matter to it.
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "libvirt")]
    if let Err(error) = pkg_config::Config::new().atleast_version("6.0.0").probe("libvirt") {
        eprintln!(
            "error: the libvirt backend (cargo feature `libvirt`) needs libvirt's development files: \
             run `cargo lab doctor --backend libvirt` or `apt-get install libvirt-dev pkg-config` \
             as root, then build again.\n{error}"
        );
        std::process::exit(1);
    }
}
