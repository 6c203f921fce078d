//! The archives `artifacts::oci` writes are what containerd imports: a private
//! containerd (its own root, state and socket, no CRI plugin) imports one with
//! `ctr images import` and lists it under the archive's reference and manifest digest.
//! Skipped, with the reason printed, where containerd is not installed or the test
//! does not run as root.

mod common;

use provisioner::artifacts::oci::{self, ImageSpec, LayerFile};

#[test]
fn containerd_imports_the_archive_under_its_reference() {
    if let Some(reason) = common::containerd_unavailable() {
        eprintln!("skipping containerd_imports_the_archive_under_its_reference: {reason}");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let archive = directory.path().join("sample.tar");
    let mut spec = ImageSpec::new("k8s-lab.local/import-test:1");
    spec.entrypoint = vec!["/bin/sample".into()];
    spec.files = vec![
        LayerFile::bytes("/bin/sample", 0o755, "#!/bin/sh\necho sample\n"),
        LayerFile::symlink("/bin/alias", "/bin/sample"),
    ];
    let digests = oci::write_archive(&spec, &archive).unwrap();

    let containerd = common::PrivateContainerd::start();
    let import = containerd.ctr_ok("test", &["images", "import", archive.to_str().unwrap()]);
    eprintln!("{import}");
    let listing = containerd.ctr_ok("test", &["images", "ls"]);
    let line = listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(spec.reference.as_str()))
        .unwrap_or_else(|| panic!("{} is not listed after the import:\n{listing}", spec.reference));
    assert!(line.contains(&digests.manifest), "listed with another digest than {}:\n{line}", digests.manifest);

    // The import unpacks the layer into a snapshot, which containerd does only when the
    // uncompressed layer matches the config's diff_id.
    assert!(import.contains("unpacking") && import.contains("done"), "the image was not unpacked:\n{import}");
    let check = containerd.ctr_ok("test", &["images", "check"]);
    assert!(check.contains("complete"), "the imported image is not complete:\n{check}");
}
