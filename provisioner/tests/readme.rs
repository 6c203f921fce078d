//! README.md documents the firewall's port table; this keeps it the one the
//! firewall stage actually opens for the default lab.

use std::path::Path;

use provisioner::stages::firewall::port_table_markdown;
use provisioner::topology::Topology;

#[test]
fn readme_port_table_is_the_firewall_stage_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let topology = Topology::load(&root.join("lab.toml")).unwrap().topology;
    let table = port_table_markdown(&topology.network);
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&table), "README.md's port table is out of date; replace it with:\n{table}");
}
