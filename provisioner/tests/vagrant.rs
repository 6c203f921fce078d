//! The Vagrant backend's smoke test (`common::vm`): Vagrant and vagrant-libvirt make
//! one real VM from a box packed from the node image; it answers SSH, survives `vagrant
//! halt` and `vagrant up`, and `destroy` leaves no domain, network, pool, volume, box or
//! bridge.
//!
//! `.ci/run` runs it after `cargo lab doctor --backend vagrant` installed Vagrant,
//! vagrant-libvirt, libvirt and QEMU on a host where they were never set up by hand.
//! Without root or those programs it says why and passes.

mod common;

use std::process::Command;

use common::vm;

#[test]
fn a_vagrant_vm_boots_answers_ssh_survives_a_halt_and_leaves_nothing_when_destroyed() {
    if let Some(reason) = vm::unavailable(&["vagrant"]) {
        eprintln!("skipping the Vagrant test: {reason}");
        return;
    }
    vm::boots_survives_a_power_off_and_leaves_nothing("vagrant", "vgtest");
    let boxes = Command::new("vagrant").args(["box", "list"]).env("VAGRANT_CHECKPOINT_DISABLE", "1").output();
    let boxes = String::from_utf8_lossy(&boxes.expect("vagrant box list").stdout).into_owned();
    assert!(!boxes.contains("k8s-lab-vgtest/"), "the lab's box is left:\n{boxes}");
}
