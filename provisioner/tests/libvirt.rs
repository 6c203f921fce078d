//! The libvirt backend's smoke test (`common::vm`): one real VM boots the node image,
//! answers SSH, survives a power-off, and `destroy` leaves nothing in libvirt or on
//! the host.
//!
//! Built with the `libvirt` feature only; `.ci/run` runs it after `cargo lab doctor
//! --backend libvirt` installed libvirt and QEMU on a host where they were never set
//! up by hand. Without root or those programs it says why and passes. The node image
//! comes from the same cache as `lab up`; under software emulation (no KVM) the VM
//! boots in about a minute, so the test takes a few.
#![cfg(feature = "libvirt")]

mod common;

use common::vm;

#[test]
fn a_vm_boots_answers_ssh_survives_a_power_off_and_leaves_nothing_when_destroyed() {
    if let Some(reason) = vm::unavailable(&[]) {
        eprintln!("skipping the libvirt test: {reason}");
        return;
    }
    vm::boots_survives_a_power_off_and_leaves_nothing("libvirt", "lvtest");
}
