//! Fixing what the checks found, for `lab doctor` and `lab up` alike: the deb-src
//! entry `apt-get source kubernetes` needs, the missing Debian packages, and
//! cargo-nextest for the conformance suite.
//!
//! apt never removes a package of the user's on the lab's behalf. Every install is
//! simulated first (`apt-get -s`); when apt would remove a package to make room (on
//! this workplace's hosts, `qemu-system-x86` from Debian 12 displaced a newer
//! `qemu-utils` from backports and left the host without `qemu-img`), the package
//! is installed at the version of the release being installed instead, saying so,
//! and when that cannot be done the install is refused with the exact command.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{apt_sources, nextest, Finding, PreflightError, Report, Status};
use crate::artifacts::build;
use crate::system::{LocalSystem, System};

/// What `set_up_host` changed on the host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostSetup {
    /// The deb-src entry's file, when this run wrote it.
    pub deb_src_added: Option<String>,
    /// The Debian packages installed, as given to apt (`name` or `name=version`).
    pub installed: Vec<String>,
    /// Packages apt would have removed, installed at a matching version instead:
    /// `name old -> new`.
    pub replaced: Vec<String>,
    /// The cargo-nextest version installed, when this run installed it.
    pub nextest_installed: Option<String>,
}

impl HostSetup {
    pub fn changed_anything(&self) -> bool {
        self.deb_src_added.is_some() || !self.installed.is_empty() || self.nextest_installed.is_some()
    }
}

/// Applies every fix in `report` that can be applied without a person: the deb-src
/// entry, then the missing packages, then cargo-nextest; `say` hears each before it
/// starts. Needs root and apt-get for the first two.
pub fn set_up_host(report: &Report, say: &dyn Fn(&str)) -> Result<HostSetup, PreflightError> {
    let mut setup = HostSetup::default();
    if report.deb_src_missing() {
        add_deb_src_entry(say)?;
        setup.deb_src_added = Some(build::DEB_SRC_LIST_PATH.to_string());
    }
    let packages = report.missing_packages();
    if !packages.is_empty() {
        let plan = plan_install(&packages, simulate_install, available_versions, installed_version)?;
        for replacement in &plan.replaced {
            say(&format!(
                "a package of the host's stands in the way of these (apt would remove it, or finds no solution \
                 with it); installing it at the version of the release being installed instead: {replacement}"
            ));
        }
        say(&format!("installing {} with apt-get", plan.arguments.join(" ")));
        let mut arguments = vec!["install", "-y", "--no-install-recommends"];
        if !plan.replaced.is_empty() {
            arguments.push("--allow-downgrades");
        }
        arguments.extend(plan.arguments.iter().map(String::as_str));
        apt(&arguments, &install_command(&plan.arguments.iter().map(String::as_str).collect::<Vec<_>>()))?;
        setup.installed = plan.arguments;
        setup.replaced = plan.replaced;
    }
    if report.findings.iter().any(|finding| finding.check == nextest::CHECK && finding.status != Status::Ok) {
        setup.nextest_installed = Some(nextest::install(say)?);
    }
    Ok(setup)
}

/// Whether `set_up_host` would change something for `report`.
pub(super) fn fixable(report: &Report) -> bool {
    report.deb_src_missing()
        || !report.missing_packages().is_empty()
        || report.findings.iter().any(|finding| finding.check == nextest::CHECK && finding.status != Status::Ok)
}

/// The Debian packages that would fix `findings`, each once, sorted.
pub(super) fn missing_packages(findings: &[Finding]) -> Vec<String> {
    let packages: BTreeSet<&str> = findings
        .iter()
        .filter(|finding| finding.status != Status::Ok)
        .filter_map(|finding| finding.package.as_deref())
        .collect();
    packages.into_iter().map(str::to_string).collect()
}

/// The apt-get command line that installs `packages`.
pub(super) fn install_command(packages: &[&str]) -> String {
    format!("apt-get install -y --no-install-recommends {}", packages.join(" "))
}

/// How the missing packages get installed: what to hand apt-get, and the packages
/// that are pinned to a version so that apt removes nothing.
#[derive(Debug, PartialEq, Eq)]
struct InstallPlan {
    arguments: Vec<String>,
    replaced: Vec<String>,
}

/// Plans the install of `packages` so that apt removes nothing: `simulate` runs
/// `apt-get -s install` (with `--allow-downgrades` when asked) and returns its
/// output, also when apt found no solution; `versions` lists the versions apt can
/// install of a package, `installed` the version the host has.
///
/// A package of the host that stands in the way shows in one of two ways: apt plans
/// to remove it (`Remv`), or, when other packages of the install hold on to it (as
/// vagrant-libvirt does with qemu-utils), apt gives up and names the `Breaks` it could
/// not satisfy. Either way the package is wanted at the version the install brings
/// of its source (qemu-system-x86 and qemu-utils share their version).
fn plan_install(
    packages: &[String],
    simulate: impl Fn(&[String], bool) -> Result<String, PreflightError>,
    versions: impl Fn(&str) -> Vec<String>,
    installed: impl Fn(&str) -> Option<String>,
) -> Result<InstallPlan, PreflightError> {
    let simulated = simulate(packages, false)?;
    let removed = removals(&simulated);
    let held = unsatisfied_breaks(&simulated);
    if removed.is_empty() && held.is_empty() {
        return match unresolved(&simulated) {
            Some(report) => Err(cannot_resolve(packages, &report)),
            None => Ok(InstallPlan { arguments: packages.to_vec(), replaced: Vec::new() }),
        };
    }
    let mut incoming: Vec<String> = installs(&simulated)
        .into_iter()
        .filter(|(name, _)| packages.contains(name))
        .map(|(_, version)| version)
        .collect();
    incoming.extend(held.iter().map(|(_, version)| version.clone()));
    let mut in_the_way: Vec<(String, String)> = removed.clone();
    for (name, _) in &held {
        if !in_the_way.iter().any(|(other, _)| other == name) {
            in_the_way.push((name.clone(), installed(name).unwrap_or_else(|| "(installed)".to_string())));
        }
    }
    let mut arguments = packages.to_vec();
    let mut replaced = Vec::new();
    for (name, old) in &in_the_way {
        let available = versions(name);
        let Some(version) = incoming.iter().find(|version| available.contains(version)) else {
            return Err(would_remove(packages, &in_the_way));
        };
        arguments.push(format!("{name}={version}"));
        replaced.push(format!("{name} {old} -> {version}"));
    }
    let pinned = simulate(&arguments, true)?;
    if !removals(&pinned).is_empty() || !unsatisfied_breaks(&pinned).is_empty() {
        return Err(would_remove(packages, &in_the_way));
    }
    if let Some(report) = unresolved(&pinned) {
        return Err(cannot_resolve(&arguments, &report));
    }
    Ok(InstallPlan { arguments, replaced })
}

fn cannot_resolve(packages: &[String], report: &str) -> PreflightError {
    PreflightError::Apt { command: format!("apt-get -s install {}", packages.join(" ")), message: report.to_string() }
}

fn would_remove(packages: &[String], removed: &[(String, String)]) -> PreflightError {
    PreflightError::WouldRemove {
        packages: packages.join(" "),
        removed: removed.iter().map(|(name, version)| format!("{name} {version}")).collect::<Vec<_>>().join(", "),
        command: format!("apt-get install --no-install-recommends {}", packages.join(" ")),
    }
}

/// The packages an `apt-get -s` run would remove, with their installed versions:
/// its `Remv NAME [VERSION]` lines.
fn removals(simulated: &str) -> Vec<(String, String)> {
    simulated
        .lines()
        .filter_map(|line| line.strip_prefix("Remv "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let version = rest.trim().strip_prefix('[')?.split(']').next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// What apt printed about unmet dependencies when it found no solution, if it did not
/// find one.
fn unresolved(simulated: &str) -> Option<String> {
    let start = simulated.find("The following packages have unmet dependencies:")?;
    Some(crate::text::tail(&simulated[start..], 8))
}

/// The installed packages whose `Breaks` apt could not satisfy, each with the version
/// of the package it breaks that apt meant to install:
/// ` qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~) but 1:7.2+dfsg-7 is to be installed`.
fn unsatisfied_breaks(simulated: &str) -> Vec<(String, String)> {
    simulated
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(" : Breaks: ")?;
            let version = rest.split_once(" but ")?.1.strip_suffix(" is to be installed")?;
            Some((name.trim().to_string(), version.trim().to_string()))
        })
        .collect()
}

/// The packages an `apt-get -s` run would install, with the versions it would
/// install: `Inst NAME [OLD] (NEW RELEASE [ARCH])`.
fn installs(simulated: &str) -> Vec<(String, String)> {
    simulated
        .lines()
        .filter_map(|line| line.strip_prefix("Inst "))
        .filter_map(|rest| {
            let name = rest.split_whitespace().next()?;
            let version = rest.split_once('(')?.1.split_whitespace().next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

fn simulate_install(packages: &[String], allow_downgrades: bool) -> Result<String, PreflightError> {
    let mut command = Command::new("apt-get");
    command.args(["-s", "install", "-y", "--no-install-recommends"]);
    if allow_downgrades {
        command.arg("--allow-downgrades");
    }
    let output =
        command.args(packages).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).output().map_err(
            |error| PreflightError::Apt { command: "apt-get -s install".into(), message: error.to_string() },
        )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // apt's report of a problem it could not solve is on stdout; `plan_install` reads it.
    if !output.status.success() && unresolved(&stdout).is_none() {
        let message = crate::text::tail(&String::from_utf8_lossy(&output.stderr), 5);
        return Err(PreflightError::Apt { command: format!("apt-get -s install {}", packages.join(" ")), message });
    }
    Ok(stdout)
}

/// The version of `package` the host has installed, from `dpkg-query`.
fn installed_version(package: &str) -> Option<String> {
    let output =
        Command::new("dpkg-query").args(["-W", "-f=${Version}", package]).stdin(Stdio::null()).output().ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !version.is_empty()).then_some(version)
}

/// The versions apt knows of `package`, from `apt-cache madison` (`NAME | VERSION | SOURCE`).
fn available_versions(package: &str) -> Vec<String> {
    let Ok(output) = Command::new("apt-cache").args(["madison", package]).stdin(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split('|').nth(1))
        .map(|version| version.trim().to_string())
        .collect()
}

fn apt(arguments: &[&str], command: &str) -> Result<(), PreflightError> {
    let status = Command::new("apt-get")
        .args(arguments)
        // No questions: doctor runs unattended, and in CI without a terminal.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        // apt's output goes to stderr, so that `--json` keeps stdout for JSON.
        .stdout(std::io::stderr())
        .status()
        .map_err(|error| PreflightError::Apt { command: command.to_string(), message: error.to_string() })?;
    if !status.success() {
        return Err(PreflightError::Apt { command: command.to_string(), message: format!("{status}") });
    }
    Ok(())
}

/// The shell command that writes `entry` where `add_deb_src_entry` does.
pub(super) fn deb_src_command(entry: &str) -> String {
    format!("printf '{}' > {} && apt-get update", entry.replace('\n', "\\n"), build::DEB_SRC_LIST_PATH)
}

/// Writes the deb-src entry for the host's own Debian mirror to
/// `build::DEB_SRC_LIST_PATH` and runs `apt-get update`, so that `apt-get source
/// kubernetes` works.
fn add_deb_src_entry(say: &dyn Fn(&str)) -> Result<(), PreflightError> {
    let path = Path::new(build::DEB_SRC_LIST_PATH);
    let entry = apt_sources::host_deb_src_entry(path).map_err(PreflightError::NoDebianSource)?;
    if !crate::system::running_as_root() {
        return Err(PreflightError::DebSrcNotRoot { command: deb_src_command(&entry) });
    }
    say(&format!(
        "adding a deb-src entry for the host's Debian mirror in {} and running apt-get update",
        path.display()
    ));
    // apt reads every file in sources.list.d: a half-written entry would break each
    // apt-get until it is removed.
    LocalSystem.write_atomically(path, entry.as_bytes(), 0o644).map_err(|error| PreflightError::WriteDebSrc {
        path: build::DEB_SRC_LIST_PATH.to_string(),
        message: error.to_string(),
    })?;
    apt(&["update"], "apt-get update")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// What `apt-get -s install qemu-system-x86` printed on a host with qemu-utils
    /// from bookworm-backports (shortened).
    const REMOVES_QEMU_UTILS: &str = "NOTE: This is only a simulation!\n\
        0 upgraded, 27 newly installed, 1 to remove and 80 not upgraded.\n\
        Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
        Inst ipxe-qemu (1.0.0+git-20190125.36a4c85-5.1 Debian:12.14/oldstable [all])\n\
        Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n\
        Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n\
        Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n";
    /// The same with `qemu-utils=1:7.2+dfsg-7+deb12u18+b2 --allow-downgrades`.
    const DOWNGRADES_QEMU_UTILS: &str = "0 upgraded, 27 newly installed, 1 downgraded, 0 to remove.\n\
        Inst qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1] (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n\
        Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n";

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn simulated_output_is_read_for_removals_and_incoming_versions() {
        assert_eq!(
            removals(REMOVES_QEMU_UTILS),
            [("qemu-utils".to_string(), "1:10.0.2+ds-2+deb13u1~bpo12+1".to_string())]
        );
        let incoming = installs(REMOVES_QEMU_UTILS);
        assert_eq!(incoming[2], ("qemu-system-x86".to_string(), "1:7.2+dfsg-7+deb12u18+b2".to_string()));
        assert_eq!(installs(DOWNGRADES_QEMU_UTILS)[0].1, "1:7.2+dfsg-7+deb12u18+b2");
        assert!(removals(DOWNGRADES_QEMU_UTILS).is_empty());
    }

    #[test]
    fn a_package_apt_would_remove_is_installed_at_the_incoming_release_instead() {
        let calls = RefCell::new(Vec::new());
        let simulate = |packages: &[String], downgrades: bool| {
            calls.borrow_mut().push((packages.to_vec(), downgrades));
            Ok(if downgrades { DOWNGRADES_QEMU_UTILS } else { REMOVES_QEMU_UTILS }.to_string())
        };
        let versions = |package: &str| {
            assert_eq!(package, "qemu-utils");
            strings(&["1:10.0.2+ds-2+deb13u1~bpo12+1", "1:7.2+dfsg-7+deb12u18+b2", "1:7.2+dfsg-7+deb12u15"])
        };
        let plan = plan_install(&strings(&["qemu-system-x86"]), simulate, versions, |_| None).expect("a plan");
        assert_eq!(plan.arguments, ["qemu-system-x86", "qemu-utils=1:7.2+dfsg-7+deb12u18+b2"]);
        assert_eq!(plan.replaced, ["qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 -> 1:7.2+dfsg-7+deb12u18+b2"]);
        assert_eq!(calls.borrow().len(), 2, "the pinned install is simulated again before it is done");
    }

    #[test]
    fn an_install_that_would_still_remove_something_is_refused_with_the_command() {
        let always_removes = |_: &[String], _: bool| Ok(REMOVES_QEMU_UTILS.to_string());
        let error = plan_install(
            &strings(&["qemu-system-x86"]),
            always_removes,
            |_| strings(&["1:7.2+dfsg-7+deb12u18+b2"]),
            |_| None,
        )
        .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "installing qemu-system-x86 would make apt remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1, and the lab \
             removes nothing of the host's; decide yourself, e.g. `apt-get install --no-install-recommends \
             qemu-system-x86` and then reinstall what it removed"
        );
        let no_matching_version = |_: &[String], _: bool| Ok(REMOVES_QEMU_UTILS.to_string());
        assert!(plan_install(&strings(&["qemu-system-x86"]), no_matching_version, |_| Vec::new(), |_| None).is_err());
    }

    /// What `apt-get -s install libvirt-daemon-system qemu-system-x86 vagrant
    /// vagrant-libvirt` printed on the same host: with vagrant-libvirt in the install,
    /// apt gives up instead of removing qemu-utils.
    const HELD_BY_QEMU_UTILS: &str = "Some packages could not be installed. This may mean that you have\n\
        requested an impossible situation or if you are using the unstable\n\
        The following information may help to resolve the situation:\n\
        \n\
        The following packages have unmet dependencies:\n \
        qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~) but 1:7.2+dfsg-7+deb12u18+b3 is to be installed\n";

    #[test]
    fn a_package_whose_breaks_stop_apt_is_installed_at_the_incoming_release_instead() {
        assert_eq!(
            unsatisfied_breaks(HELD_BY_QEMU_UTILS),
            [("qemu-utils".to_string(), "1:7.2+dfsg-7+deb12u18+b3".to_string())]
        );
        let simulate = |packages: &[String], downgrades: bool| {
            Ok(if downgrades {
                assert!(packages.contains(&"qemu-utils=1:7.2+dfsg-7+deb12u18+b3".to_string()), "{packages:?}");
                DOWNGRADES_QEMU_UTILS
            } else {
                HELD_BY_QEMU_UTILS
            }
            .to_string())
        };
        let versions = |_: &str| strings(&["1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u15"]);
        let installed = |package: &str| (package == "qemu-utils").then(|| "1:10.0.2+ds-2+deb13u1~bpo12+1".to_string());
        let wanted = strings(&["qemu-system-x86", "vagrant-libvirt"]);
        let plan = plan_install(&wanted, simulate, versions, installed).expect("a plan");
        assert_eq!(plan.arguments, ["qemu-system-x86", "vagrant-libvirt", "qemu-utils=1:7.2+dfsg-7+deb12u18+b3"]);
        assert_eq!(plan.replaced, ["qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 -> 1:7.2+dfsg-7+deb12u18+b3"]);

        let unsolvable =
            "The following packages have unmet dependencies:\n foo : Depends: bar but it is not installable\n";
        let error = plan_install(&strings(&["foo"]), |_, _| Ok(unsolvable.to_string()), |_| Vec::new(), |_| None)
            .expect_err("no solution");
        assert!(error.to_string().contains("foo : Depends: bar"), "{error}");
    }

    #[test]
    fn an_install_that_removes_nothing_is_planned_as_asked() {
        let clean = |_: &[String], _: bool| Ok("Inst rsync (3.2.7-1 Debian:12.14/oldstable [amd64])\n".to_string());
        let plan =
            plan_install(&strings(&["rsync"]), clean, |_| panic!("no versions needed"), |_| None).expect("a plan");
        assert_eq!(plan, InstallPlan { arguments: strings(&["rsync"]), replaced: Vec::new() });
    }
}
